"""The one place where domain errors become gRPC status codes (and back, on the client side)."""

from __future__ import annotations

import grpc

from s3core.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted, S3Error, Unavailable

_TO_CODE: list[tuple[type[BaseException], grpc.StatusCode]] = [
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),  # before its base class Unavailable
    (Unavailable, grpc.StatusCode.UNAVAILABLE),
    (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
]


def status_for(exc: BaseException) -> grpc.StatusCode:
    for cls, code in _TO_CODE:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL


def from_rpc_error(err: grpc.RpcError, what: str) -> S3Error:
    """Turn a client-side ``grpc.RpcError`` into a domain error with a readable message."""
    code = err.code() if hasattr(err, "code") else None
    details = err.details() if hasattr(err, "details") else str(err)
    msg = f"{what}: {details}"
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgument(msg)
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFound(msg)
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return FailedPrecondition(msg)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" not in (details or ""):
        # overload (a concurrency cap, a full queue): worth retrying; an oversized message is not
        return ResourceExhausted(f"{msg} (RESOURCE_EXHAUSTED)")
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return Unavailable(f"{msg} ({code.name})")
    return S3Error(f"{msg} ({code.name if code else 'unknown'})")
