"""Bearer-token auth on all five services, and the token never in a log.

Every service is started with ``$S3_AUTH_TOKEN`` set (and DEBUG logging).  Each of its methods
answers ``UNAUTHENTICATED`` without a token, with a wrong one, and to malformed bytes without a
token; a normal request with the token is served; the health service stays open (probes).  After
all that, the token appears in no service's log.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from s3.v1 import controller_pb2, generator_pb2, learner_pb2, retriever_pb2, searcher_pb2

TOKEN = "s3-secret-token-9c1e5b7d"  # noqa: S105 - a test value
WRONG = "s3-wrong-token-0000"

SERVICES = {
    "retriever": retriever_pb2.DESCRIPTOR.services_by_name["Retriever"],
    "generator": generator_pb2.DESCRIPTOR.services_by_name["Generator"],
    "searcher": searcher_pb2.DESCRIPTOR.services_by_name["Searcher"],
    "learner": learner_pb2.DESCRIPTOR.services_by_name["Learner"],
    "controller": controller_pb2.DESCRIPTOR.services_by_name["Controller"],
}
NORMAL: dict[str, tuple[str, Any]] = {
    "retriever": ("Search", retriever_pb2.SearchRequest(queries=["bridge"], k=2)),
    "generator": ("ModelInfo", generator_pb2.ModelInfoRequest()),
    "searcher": ("PolicyInfo", searcher_pb2.PolicyInfoRequest()),
    "learner": ("Status", learner_pb2.LearnerStatusRequest()),
    "controller": ("ListJobs", controller_pb2.ListJobsRequest(limit=5)),
}


@pytest.fixture(scope="module")
def authed(world: dict[str, Any], redis_url: str, service_runner: Any,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    dbg = ["--log-level", "DEBUG"]
    with pytest.MonkeyPatch.context() as mp, contextlib.ExitStack() as stack:
        mp.setenv("S3_AUTH_TOKEN", TOKEN)

        def start(name: str, args: list[str]) -> Any:
            return stack.enter_context(service_runner(f"s3_{name}", [*args, *dbg],
                                                      tmp_path_factory.mktemp(f"auth-{name}"), 180))

        out = {"retriever": start("retriever", ["--index", str(world["index"]), "--threads", "1"])}
        out["generator"] = start("generator", ["--model", str(world["model"])])
        out["searcher"] = start("searcher", ["--retriever", out["retriever"].grpc_target, "--model",
                                             str(world["model"]), "--threads", "1"])
        ck = tmp_path_factory.mktemp("auth-ckpt")
        out["learner"] = start("learner", ["--checkpoint-dir", str(ck), "--model", str(world["model"]),
                                           "--algorithm", "grpo", "--device", "cpu", "--threads", "1"])
        out["controller"] = start("controller", ["--redis-url", redis_url, "--state-dir",
                                                 str(tmp_path_factory.mktemp("auth-state")), "--worker-threads", "1"])
        yield out


def _code(ch: grpc.Channel, svc: str, method: str, payload: Any, token: str | None, raw: bool = False) -> str:
    desc = SERVICES[svc]
    path = f"/{desc.full_name}/{method}"
    ser = None if raw else (lambda m: m.SerializeToString())
    md = [("authorization", f"Bearer {token}")] if token else None
    try:
        if desc.methods_by_name[method].server_streaming:
            for _ in ch.unary_stream(path, request_serializer=ser)(payload, metadata=md, timeout=5):
                pass
        else:
            ch.unary_unary(path, request_serializer=ser)(payload, metadata=md, timeout=60)
        return "OK"
    except grpc.RpcError as exc:
        return exc.code().name


@pytest.mark.timeout(600)
@pytest.mark.parametrize("svc", list(SERVICES))
def test_every_method_needs_the_token(authed: dict[str, Any], svc: str) -> None:
    from google.protobuf import message_factory

    with grpc.insecure_channel(authed[svc].grpc_target) as ch:
        for m in SERVICES[svc].methods:
            empty = message_factory.GetMessageClass(m.input_type)()
            assert _code(ch, svc, m.name, empty, None) == "UNAUTHENTICATED", m.name
            assert _code(ch, svc, m.name, empty, WRONG) == "UNAUTHENTICATED", m.name
            assert _code(ch, svc, m.name, b"\xff\xfe\x00garbage", None, raw=True) == "UNAUTHENTICATED", m.name
            # with the token the request reaches the servicer: whatever it says, it is not an auth failure
            assert _code(ch, svc, m.name, b"\xff\xfe", TOKEN, raw=True) == "INVALID_ARGUMENT", m.name
        method, req = NORMAL[svc]
        assert _code(ch, svc, method, req, TOKEN) == "OK"
        health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=30)  # no token
        assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_token_never_logged(authed: dict[str, Any]) -> None:
    for name, svc in authed.items():
        text = svc.log.read_text(errors="replace")
        assert text, f"{name} wrote no log"
        assert TOKEN not in text, f"the auth token appears in the {name} log"
        assert WRONG not in text, f"a presented (wrong) token appears in the {name} log"
