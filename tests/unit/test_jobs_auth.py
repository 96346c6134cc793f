"""Bearer-token auth on a real in-process gRPC server (the controller servicer over fakeredis):
missing / malformed / wrong token -> UNAUTHENTICATED, the health check stays open, the client-side
helper sends the header, and the token comes from a file or the environment."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import fakeredis
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from s3.v1 import controller_pb2, controller_pb2_grpc
from s3_controller.servicer import SERVICE_NAME, ControllerServicer
from s3core.errors import InvalidArgument
from s3core.jobs.backends.local import LocalBackend
from s3core.jobs.client import ControllerClient, Unauthenticated
from s3core.jobs.controller import JobController
from s3core.jobs.store import JobStore
from s3core.rpc.auth import AuthResult, BearerTokenInterceptor, interceptors_from_env, load_token, with_token
from s3core.rpc.server import start_server

TOKEN = "s3cr3t-token"


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[int, list[AuthResult]]]:
    results: list[AuthResult] = []
    store = JobStore(fakeredis.FakeRedis(decode_responses=True), url="fake")
    ctl = JobController(store, LocalBackend("redis://unused", state_dir="/tmp/unused-s3"))
    servicer = ControllerServicer(ctl, ThreadPoolExecutor(4))
    loop = asyncio.new_event_loop()
    started: dict[str, object] = {}
    ready = threading.Event()

    async def main() -> None:
        running = await start_server(lambda s: controller_pb2_grpc.add_ControllerServicer_to_server(servicer, s),
                                     [SERVICE_NAME], "127.0.0.1:0",
                                     interceptors=[BearerTokenInterceptor(TOKEN, on_result=results.append)])
        await running.set_serving(True)
        started["running"] = running
        started["stop"] = asyncio.Event()
        ready.set()
        await started["stop"].wait()  # type: ignore[attr-defined]
        await running.stop(0.5)

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    yield started["running"].port, results  # type: ignore[attr-defined]
    loop.call_soon_threadsafe(started["stop"].set)  # type: ignore[attr-defined]
    thread.join(5)


def _get(port: int, metadata: list[tuple[str, str]] | None) -> grpc.StatusCode:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = controller_pb2_grpc.ControllerStub(ch)
        try:
            stub.GetJob(controller_pb2.GetJobRequest(id="eval-0"), metadata=metadata, timeout=10)
        except grpc.RpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


def test_missing_malformed_and_wrong_tokens_are_unauthenticated(server):
    port, results = server
    assert _get(port, None) == grpc.StatusCode.UNAUTHENTICATED
    assert _get(port, [("authorization", "Basic abc")]) == grpc.StatusCode.UNAUTHENTICATED
    assert _get(port, [("authorization", "Bearer wrong")]) == grpc.StatusCode.UNAUTHENTICATED
    # the right token gets through to the servicer: an unknown job is NOT_FOUND
    assert _get(port, [("authorization", f"Bearer {TOKEN}")]) == grpc.StatusCode.NOT_FOUND
    assert [r.ok for r in results[-4:]] == [False, False, False, True]
    assert results[-1].method == "GetJob"


def test_streams_are_checked_too_and_health_stays_open(server):
    port, _ = server
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        stream = controller_pb2_grpc.ControllerStub(ch).WatchJob(controller_pb2.WatchJobRequest(id="eval-0"),
                                                                 timeout=10)
        with pytest.raises(grpc.RpcError) as err:
            next(iter(stream))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_client_helpers_send_the_token(server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    port, _ = server
    with ControllerClient(f"127.0.0.1:{port}", token=TOKEN) as c:
        assert c.list() == []
        with pytest.raises(InvalidArgument, match="job.corpus is required"):
            c.submit("kind: index\njob: {out: idx}")
    with ControllerClient(f"127.0.0.1:{port}", token="wrong") as c, pytest.raises(Unauthenticated):
        c.list()
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    monkeypatch.delenv("S3_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("S3_AUTH_TOKEN_FILE", str(token_file))
    assert load_token() == TOKEN
    with ControllerClient(f"127.0.0.1:{port}") as c:  # token from $S3_AUTH_TOKEN_FILE
        assert c.list() == []
    ch = with_token(grpc.insecure_channel(f"127.0.0.1:{port}"))
    try:
        controller_pb2_grpc.ControllerStub(ch).ListJobs(controller_pb2.ListJobsRequest(), timeout=10)
    finally:
        ch.close()


def test_token_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("S3_AUTH_TOKEN_FILE", raising=False)
    monkeypatch.delenv("S3_AUTH_TOKEN", raising=False)
    assert load_token() == "" and interceptors_from_env() == []
    monkeypatch.setenv("S3_AUTH_TOKEN", " from-env ")
    assert load_token() == "from-env" and len(interceptors_from_env()) == 1
    assert load_token("explicit") == "explicit"
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(InvalidArgument, match="is empty"):
        load_token(token_file=str(empty))
    with pytest.raises(InvalidArgument, match="auth token file"):
        load_token(token_file=str(tmp_path / "missing"))
    with pytest.raises(InvalidArgument):
        BearerTokenInterceptor("  ")
