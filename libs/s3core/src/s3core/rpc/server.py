"""Bootstrap shared by every gRPC server: aio server, health, reflection, metrics, error mapping.

A service's ``server.py`` builds its servicer from s3core objects, then calls :func:`start_server`.
Domain errors raised inside a handler are mapped to status codes by :class:`ErrorAndMetricsInterceptor`
so servicers never deal with status codes for expected failures; unexpected exceptions become
``INTERNAL`` (logged with a traceback) and the server keeps serving.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from s3core.errors import InvalidArgument, S3Error
from s3core.rpc.errors import status_for
from s3core.rpc.tls import ServerTLS, add_port, server_tls
from s3core.telemetry.metrics import GRPC_HANDLED, GRPC_HANDLING_SECONDS, GRPC_STARTED

logger = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


# Status details travel in the trailers, percent-encoded (a non-ASCII byte becomes three);
# clients refuse trailers over 8 KiB (and then report RESOURCE_EXHAUSTED / a lost stream instead of
# the real status), so an error message that echoes a huge input (a 10k-character path, a long
# query, a list of emoji ids) is clipped by its UTF-8 size: 1 KiB encodes to at most 3 KiB.
MAX_DETAILS_BYTES = 1024


def clip_details(message: str, limit: int = MAX_DETAILS_BYTES) -> str:
    data = message.encode("utf-8", errors="replace")
    if len(data) <= limit:
        return data.decode("utf-8")  # lone surrogates (from undecodable input) become "?"
    head = data[: max(limit - 48, 0)].decode("utf-8", errors="ignore")
    return f"{head}... ({len(message)} characters)"


def _split_method(full: str) -> tuple[str, str]:
    # "/s3.v1.Retriever/Search" -> ("s3.v1.Retriever", "Search")
    parts = full.strip("/").split("/")
    return (parts[0], parts[1]) if len(parts) == 2 else (full, "")


class _Malformed:
    """What a request that does not decode (bad protobuf, non-UTF-8 string) becomes: INVALID_ARGUMENT."""

    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    # grpc answers UNKNOWN when a request deserializer raises; hand the handler a marker instead
    if deserializer is None:
        return None

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # noqa: BLE001 - DecodeError, UnicodeDecodeError, ...
            return _Malformed(f"{type(exc).__name__}: {exc}")

    return deserialize


def _check_decoded(request: Any) -> None:
    if isinstance(request, _Malformed):
        raise InvalidArgument(f"malformed request: {request.error}")


class MalformedRequestInterceptor(grpc.aio.ServerInterceptor):
    """Innermost: a request that does not decode is INVALID_ARGUMENT (grpc itself would answer UNKNOWN).

    Its tolerant deserializer is what the outer interceptors' handlers reuse, so the auth check
    still runs first (an unauthenticated malformed request is UNAUTHENTICATED)."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        if handler.unary_unary is not None:
            inner = handler.unary_unary

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                _check_decoded(request)
                return await inner(request, context)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary, request_deserializer=_tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer)
        if handler.unary_stream is not None:
            inner_stream = handler.unary_stream

            async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
                _check_decoded(request)
                async for item in inner_stream(request, context):
                    yield item

            return grpc.unary_stream_rpc_method_handler(
                unary_stream, request_deserializer=_tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer)
        return handler


class _Measured:
    """One RPC's count, timing and status: how an error becomes a status, written once for unary and
    streaming handlers alike."""

    def __init__(self, service: str, method: str) -> None:
        self.service, self.method = service, method
        self.code = grpc.StatusCode.OK
        self.start = time.perf_counter()
        GRPC_STARTED.labels(service, method).inc()

    async def fail(self, exc: Exception, context: grpc.aio.ServicerContext) -> None:
        """Map ``exc`` (called from its ``except`` block) to a status and abort; always raises."""
        if isinstance(exc, grpc.aio.AbortError):  # the servicer aborted itself: keep its status
            self.code = context.code() or grpc.StatusCode.UNKNOWN
            raise exc
        if isinstance(exc, S3Error):
            self.code = status_for(exc)
            details = str(exc)
        else:  # anything unexpected
            self.code = grpc.StatusCode.INTERNAL
            logger.exception("%s/%s failed", self.service, self.method)
            details = f"internal error: {type(exc).__name__}: {exc}"
        await context.abort(self.code, clip_details(details))

    def done(self, context: grpc.aio.ServicerContext) -> None:
        ctx_code = context.code()
        if isinstance(ctx_code, grpc.StatusCode) and self.code == grpc.StatusCode.OK:
            self.code = ctx_code  # set by the servicer without raising
        GRPC_HANDLED.labels(self.service, self.method, self.code.name).inc()
        GRPC_HANDLING_SECONDS.labels(self.service, self.method).observe(time.perf_counter() - self.start)


class ErrorAndMetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts and times every RPC; maps domain errors to status codes (:class:`_Measured`)."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        service, method = _split_method(handler_call_details.method)
        if service.startswith("grpc."):
            return handler  # health and reflection: not ours to count

        if handler.unary_unary is not None:
            inner = handler.unary_unary

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                call = _Measured(service, method)
                try:
                    return await inner(request, context)
                except Exception as exc:  # noqa: BLE001 - every error gets a status
                    await call.fail(exc, context)
                finally:
                    call.done(context)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )

        if handler.unary_stream is not None:
            inner_stream = handler.unary_stream

            async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
                call = _Measured(service, method)
                try:
                    async for item in inner_stream(request, context):
                        yield item
                except Exception as exc:  # noqa: BLE001 - every error gets a status
                    await call.fail(exc, context)
                finally:
                    call.done(context)

            return grpc.unary_stream_rpc_method_handler(
                unary_stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


@dataclass
class RunningServer:
    """A started gRPC server plus its health servicer."""

    server: grpc.aio.Server
    port: int
    health: HealthServicer
    service_names: list[str] = field(default_factory=list)
    tls_mode: str = "plaintext"  # "plaintext", "tls" or "mtls" (s3core.rpc.tls)

    async def set_serving(self, serving: bool = True) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ["", *self.service_names]:
            await self.health.set(name, status)

    async def stop(self, grace: float = 2.0) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)


async def start_server(
    register: Callable[[grpc.aio.Server], None],
    service_names: list[str],
    bind: str = "127.0.0.1:0",
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    interceptors: list[grpc.aio.ServerInterceptor] | None = None,
    max_concurrent_rpcs: int = 0,
    tls: ServerTLS | None = None,
) -> RunningServer:
    """Create, register and start an aio server on ``bind`` (``host:port``; port 0 picks one).

    The health service starts NOT_SERVING for every name; call ``set_serving()`` once the
    service's index or model is loaded.  ``interceptors`` run inside the error/metrics one (so
    what they reject is counted); ``None`` = bearer-token auth when ``$S3_AUTH_TOKEN`` /
    ``$S3_AUTH_TOKEN_FILE`` configure a token (:mod:`s3core.rpc.auth`), else none.
    ``max_concurrent_rpcs`` > 0: RPCs in flight beyond it are answered ``RESOURCE_EXHAUSTED`` at
    once (grpc's ``maximum_concurrent_rpcs``; health checks count too); 0 = no limit.
    ``tls`` ``None`` = TLS when ``$S3_TLS_CERT_FILE`` / ``$S3_TLS_KEY_FILE`` (and, for client
    certificates, ``$S3_TLS_CLIENT_CA_FILE``) configure it, else plaintext (:mod:`s3core.rpc.tls`).
    """
    if max_concurrent_rpcs < 0:
        raise ValueError(f"max_concurrent_rpcs must be >= 0, got {max_concurrent_rpcs}")
    if interceptors is None:
        from s3core.rpc.auth import interceptors_from_env

        interceptors = interceptors_from_env()
    server = grpc.aio.server(
        interceptors=[ErrorAndMetricsInterceptor(), *interceptors, MalformedRequestInterceptor()],
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.so_reuseport", 0),
        ],
        maximum_concurrent_rpcs=max_concurrent_rpcs or None,
    )
    register(server)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        [*service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
        server,
    )
    tls = tls if tls is not None else server_tls()
    port = add_port(server, bind, tls)
    if port == 0:
        raise OSError(f"could not bind gRPC server to {bind}")
    if tls.enabled:
        logger.info("gRPC on %s with %s", bind, "mTLS (client certificates required)" if tls.mode == "mtls" else "TLS")
    running = RunningServer(server=server, port=port, health=health, service_names=list(service_names),
                            tls_mode=tls.mode)
    await running.set_serving(False)
    await server.start()
    return running
