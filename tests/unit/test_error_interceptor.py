"""The shared error/metrics interceptor (s3core.rpc.server): one mapping for unary and streaming RPCs.

A real aio server on loopback with a searcher servicer whose methods raise; the same domain error gets
the same status, details and ``grpc_server_handled_total`` code on both kinds of RPC.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from s3.v1 import searcher_pb2, searcher_pb2_grpc
from s3core.errors import InvalidArgument, ResourceExhausted
from s3core.rpc.server import start_server
from s3core.telemetry.metrics import GRPC_HANDLED

SERVICE = "s3.v1.Searcher"


class _Raising(searcher_pb2_grpc.SearcherServicer):
    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    async def Rollout(self, request: Any, context: Any) -> Any:
        raise self.exc

    async def RolloutStream(self, request: Any, context: Any) -> Any:
        yield searcher_pb2.Trajectory()  # one item, then the error mid-stream
        raise self.exc


def _handled(method: str, code: str) -> float:
    return GRPC_HANDLED.labels(SERVICE, method, code)._value.get()


async def _call_both(exc: Exception) -> tuple[grpc.aio.AioRpcError, grpc.aio.AioRpcError, int]:
    running = await start_server(lambda s: searcher_pb2_grpc.add_SearcherServicer_to_server(_Raising(exc), s),
                                 [SERVICE], "127.0.0.1:0", interceptors=[])
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as ch:
            stub = searcher_pb2_grpc.SearcherStub(ch)
            with pytest.raises(grpc.aio.AioRpcError) as unary:
                await stub.Rollout(searcher_pb2.RolloutRequest(), timeout=10)
            got = 0
            with pytest.raises(grpc.aio.AioRpcError) as stream:
                async for _ in stub.RolloutStream(searcher_pb2.RolloutRequest(), timeout=10):
                    got += 1
        return unary.value, stream.value, got
    finally:
        await running.stop(grace=0.5)


@pytest.mark.parametrize(("exc", "code"), [
    (InvalidArgument("questions[0].question: empty"), grpc.StatusCode.INVALID_ARGUMENT),
    (ResourceExhausted("queue full: overloaded"), grpc.StatusCode.RESOURCE_EXHAUSTED),
    (ValueError("boom"), grpc.StatusCode.INTERNAL),
])
def test_unary_and_stream_map_errors_alike(exc: Exception, code: grpc.StatusCode) -> None:
    before = {m: _handled(m, code.name) for m in ("Rollout", "RolloutStream")}
    unary, stream, got = asyncio.run(_call_both(exc))
    assert unary.code() == code and stream.code() == code
    assert unary.details() == stream.details()
    assert str(exc) in unary.details()
    if code == grpc.StatusCode.INTERNAL:
        assert unary.details().startswith("internal error: ValueError")
    assert got == 1  # what the stream yielded before the error still arrived
    for m in ("Rollout", "RolloutStream"):
        assert _handled(m, code.name) == before[m] + 1, m
