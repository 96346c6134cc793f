"""Bearer-token auth for the platform's gRPC services.

Server side: :class:`BearerTokenInterceptor` checks ``authorization: Bearer <token>`` metadata on
every RPC (the standard health service stays open, so Kubernetes probes work) and answers
``UNAUTHENTICATED`` when it is missing or wrong.  Client side: :func:`with_token` wraps a channel so
every call sends the header.

Where the token comes from (:func:`load_token`): an explicit value, else the file named by
``--auth-token-file`` / ``$S3_AUTH_TOKEN_FILE`` (e.g. a mounted Kubernetes Secret), else
``$S3_AUTH_TOKEN``.  No token configured = no check.  :func:`start_server` enables the check on
every service when a token is configured this way, and the typed clients send it.
"""

from __future__ import annotations

import collections
import hmac
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import grpc

from s3core.errors import InvalidArgument

logger = logging.getLogger(__name__)

TOKEN_ENV = "S3_AUTH_TOKEN"
TOKEN_FILE_ENV = "S3_AUTH_TOKEN_FILE"
HEADER = "authorization"
# Services callable without a token: the standard health check (liveness / readiness probes).
DEFAULT_OPEN_SERVICES = ("grpc.health.v1.Health",)


def load_token(token: str | None = None, token_file: str | None = None) -> str:
    """The configured token, or "" when none is.  An unreadable or empty token file is an error."""
    if token:
        return token.strip()
    path = token_file or os.environ.get(TOKEN_FILE_ENV, "")
    if path:
        try:
            value = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise InvalidArgument(f"auth token file {path}: {exc.strerror or exc}") from None
        if not value:
            raise InvalidArgument(f"auth token file {path} is empty")
        return value
    return os.environ.get(TOKEN_ENV, "").strip()


def auth_metadata(token: str) -> list[tuple[str, str]]:
    return [(HEADER, f"Bearer {token}")] if token else []


def _check(metadata: Any, tokens: Sequence[bytes]) -> str:
    """"" when the metadata carries one of ``tokens``, else why not."""
    value = ""
    for key, v in metadata or ():
        if key.lower() == HEADER:
            value = v.decode() if isinstance(v, bytes) else str(v)
            break
    if not value:
        return "missing authorization metadata (expected 'authorization: Bearer <token>')"
    scheme, _, presented = value.partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        return "authorization metadata must be 'Bearer <token>'"
    got = presented.strip().encode()
    ok = False
    for t in tokens:  # compare against every token, in constant time each
        ok |= hmac.compare_digest(got, t)
    return "" if ok else "invalid bearer token"


def _abort_handler(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover - makes this an async generator

    kw = {"request_deserializer": handler.request_deserializer, "response_serializer": handler.response_serializer}
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(unary, **kw)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(stream, **kw)
    if handler.stream_unary is not None:
        async def stream_unary(it: Any, context: grpc.aio.ServicerContext) -> Any:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

        return grpc.stream_unary_rpc_method_handler(stream_unary, **kw)

    async def stream_stream(it: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover

    return grpc.stream_stream_rpc_method_handler(stream_stream, **kw)


class AuthResult(NamedTuple):
    service: str
    method: str
    ok: bool


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Rejects RPCs without ``authorization: Bearer <token>`` (one of ``tokens``) as UNAUTHENTICATED.

    ``open_services`` (full gRPC service names) need no token; by default the health service.
    ``on_result`` is called with every decision (metrics)."""

    def __init__(self, tokens: str | Sequence[str], open_services: Sequence[str] = DEFAULT_OPEN_SERVICES,
                 on_result: Callable[[AuthResult], None] | None = None) -> None:
        toks = [tokens] if isinstance(tokens, str) else list(tokens)
        toks = [t.strip() for t in toks if t and t.strip()]
        if not toks:
            raise InvalidArgument("BearerTokenInterceptor needs at least one non-empty token")
        self._tokens = [t.encode() for t in toks]
        self._open = tuple(open_services)
        self._on_result = on_result

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        full = handler_call_details.method.strip("/")
        service, _, method = full.partition("/")
        if service in self._open:
            return handler
        problem = _check(handler_call_details.invocation_metadata, self._tokens)
        if self._on_result is not None:
            self._on_result(AuthResult(service, method, not problem))
        if not problem:
            return handler
        logger.info("rejected %s: %s", handler_call_details.method, problem)
        return _abort_handler(handler, problem)


def interceptors_from_env() -> list[grpc.aio.ServerInterceptor]:
    """``[BearerTokenInterceptor]`` when ``$S3_AUTH_TOKEN`` / ``$S3_AUTH_TOKEN_FILE`` configure a token, else []."""
    token = load_token()
    return [BearerTokenInterceptor(token)] if token else []


# --- client side ---------------------------------------------------------------------------------

class _TokenClientInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                              grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    def __init__(self, token: str) -> None:
        self._md = tuple(auth_metadata(token))

    def _details(self, d: Any) -> Any:
        md = [m for m in (d.metadata or ()) if m[0].lower() != HEADER] + list(self._md)
        return _Details(d.method, d.timeout, md, d.credentials, getattr(d, "wait_for_ready", None),
                        getattr(d, "compression", None))

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return continuation(self._details(details), request_iterator)

    def intercept_stream_stream(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return continuation(self._details(details), request_iterator)


class _Details(collections.namedtuple("_Details", ("method", "timeout", "metadata", "credentials",
                                                   "wait_for_ready", "compression")), grpc.ClientCallDetails):
    pass


def with_token(channel: grpc.Channel, token: str | None = None) -> grpc.Channel:
    """``channel`` sending ``authorization: Bearer <token>`` on every call (``token`` None = the
    configured one, see :func:`load_token`); the channel itself when there is no token."""
    tok = load_token(token) if token is None else token
    if not tok:
        return channel
    return grpc.intercept_channel(channel, _TokenClientInterceptor(tok))
