"""Overload: more concurrent RPCs than a server allows get RESOURCE_EXHAUSTED, never a crash or a hang.

``<service>.max_concurrent_rpcs`` (config; the controller: ``--max-concurrent-rpcs``) caps the
RPCs in flight; grpc answers the ones beyond it at once.  Without a cap, rollout-like concurrency
(64 clients at once) must not fail a single request.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from s3.v1 import retriever_pb2, retriever_pb2_grpc

CLIENTS = 64
LIMIT = 4


@pytest.fixture(scope="module")
def limited_retriever(world: dict[str, Any], service_runner: Any,
                      tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    work = tmp_path_factory.mktemp("rel-limited-retriever")
    (work / "cfg.yaml").write_text(f"retriever:\n  max_concurrent_rpcs: {LIMIT}\n")
    with service_runner("s3_retriever", ["--index", str(world["index"]), "--threads", "1", "--config",
                                      str(work / "cfg.yaml")], work) as svc:
        yield svc


def _heavy_request() -> retriever_pb2.SearchRequest:
    # ~0.1 s of BM25 per request on one core: enough to keep LIMIT of them in flight
    words = " ".join(f"city founder river {i} bridge engineer born" for i in range(30))
    return retriever_pb2.SearchRequest(queries=[f"{words} {i}" for i in range(256)], k=10)


async def _burst(target: str, n: int, timeout: float = 120.0) -> Counter[str]:
    req = _heavy_request()
    async with grpc.aio.insecure_channel(target) as ch:
        stub = retriever_pb2_grpc.RetrieverStub(ch)

        async def one() -> str:
            try:
                await stub.Search(req, timeout=timeout)
                return "OK"
            except grpc.aio.AioRpcError as exc:
                return exc.code().name

        codes = await asyncio.wait_for(asyncio.gather(*(one() for _ in range(n))), timeout + 30)
    return Counter(codes)


def _still_serving(svc: Any) -> None:
    assert svc.proc.poll() is None
    with grpc.insecure_channel(svc.grpc_target) as ch:
        health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=30)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        resp = retriever_pb2_grpc.RetrieverStub(ch).Search(retriever_pb2.SearchRequest(queries=["bridge"], k=2),
                                                           timeout=30)
        assert len(resp.results) == 1


@pytest.mark.timeout(300)
def test_over_the_limit_is_resource_exhausted(limited_retriever: Any) -> None:
    codes = asyncio.run(_burst(limited_retriever.grpc_target, CLIENTS))
    print(f"cap {LIMIT}, {CLIENTS} concurrent clients: {dict(codes)}")
    assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED"}, codes
    assert codes["RESOURCE_EXHAUSTED"] >= 1, codes
    assert codes["OK"] >= 1, codes
    _still_serving(limited_retriever)


@pytest.mark.timeout(300)
def test_no_limit_rollout_like_concurrency_fails_nothing(retriever: Any) -> None:
    codes = asyncio.run(_burst(retriever.grpc_target, CLIENTS))
    assert codes == Counter({"OK": CLIENTS}), codes
    _still_serving(retriever)


def test_negative_limit_is_a_config_error(tmp_path: Any) -> None:
    from s3core.config import load_config
    from s3core.errors import ConfigError

    for svc in ("retriever", "generator", "searcher", "learner"):
        (tmp_path / "bad.yaml").write_text(f"{svc}:\n  max_concurrent_rpcs: -1\n")
        with pytest.raises(ConfigError, match=f"{svc}.max_concurrent_rpcs"):
            load_config(tmp_path / "bad.yaml")


def test_controller_rejects_a_negative_limit() -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "s3_controller", "--max-concurrent-rpcs", "-1", "--redis-url",
                          "redis://127.0.0.1:1/0", "--port", "0", "--http-port", "0"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--max-concurrent-rpcs must be >= 0" in out.stderr
