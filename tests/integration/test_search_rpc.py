"""The searcher's gRPC ``Search`` RPC (the search agent as a service, next to ``POST /search``): real retriever,
generator and searcher subprocesses on loopback, SmolLM2-135M on hf, a BM25 index over a synthetic world.
The RPC and the HTTP endpoint share their checks and their answer (s3core.search.agent), so the same question
gives the same context both ways (greedy), and bad input is INVALID_ARGUMENT naming the field."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from s3.v1 import searcher_pb2, searcher_pb2_grpc
from s3core.data.io import load_questions

SEARCH = {"initial_k": 2, "retrieve_k": 2, "max_turns": 1, "max_new_tokens": 32}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from s3core.data.synth import synthesize
    from s3core.retrieval.index import build_index

    root = tmp_path_factory.mktemp("search-rpc-world")
    synthesize(root / "data", seed=11, n_questions=6)
    build_index(root / "data" / "corpus.jsonl", "bm25", root / "idx", show_progress=False)
    cfg = root / "cfg.yaml"
    cfg.write_text(json.dumps({"search": SEARCH}))
    return {"index": root / "idx", "cfg": cfg, "questions": list(load_questions(root / "data" / "synth_1hop.jsonl"))}


@pytest.fixture(scope="module")
def searcher(world: dict[str, Any], service_runner: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with service_runner("s3_retriever", ["--index", str(world["index"])], tmp_path_factory.mktemp("rr")) as ret, \
            service_runner("s3_generator", ["--config", str(world["cfg"])], tmp_path_factory.mktemp("rg"),
                           timeout=900) as gen, \
            service_runner("s3_searcher", ["--config", str(world["cfg"]), "--retriever", ret.grpc_target,
                                           "--generator", gen.grpc_target, "--threads", "1"],
                           tmp_path_factory.mktemp("rs"), timeout=900) as srch:
        yield srch


@pytest.fixture(scope="module")
def stub(searcher: Any) -> Iterator[searcher_pb2_grpc.SearcherStub]:
    ch = grpc.insecure_channel(searcher.grpc_target)
    yield searcher_pb2_grpc.SearcherStub(ch)
    ch.close()


def post_search(svc: Any, body: dict[str, Any]) -> Any:
    req = urllib.request.Request(svc.http_base + "/search", data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=900) as resp:
        return json.loads(resp.read())


def test_search_rpc_returns_the_context_like_post_search(stub: Any, searcher: Any, world: dict[str, Any]) -> None:
    q = world["questions"][0]
    resp = stub.Search(searcher_pb2.SearchAgentRequest(question=q.question), timeout=900)
    assert resp.question == q.question and resp.policy_version == 0 and resp.turns >= 1 and resp.seconds > 0
    assert resp.context and all(d.id and d.text for d in resp.context)
    assert not resp.HasField("answer")  # not asked for
    http = post_search(searcher, {"question": q.question})
    assert [{"id": d.id, "title": d.title, "text": d.text} for d in resp.context] == http["context"]
    assert list(resp.queries) == http["queries"] and resp.turns == http["turns"]


def test_search_rpc_with_answer(stub: Any, world: dict[str, Any]) -> None:
    # (a valid preset is checked in tests/unit/test_search_agent.py: a 3-turn preset is minutes of CPU here)
    q = world["questions"][1]
    resp = stub.Search(searcher_pb2.SearchAgentRequest(question=q.question, answer=True), timeout=900)
    assert resp.HasField("answer") and resp.answer.strip()
    assert resp.context and resp.policy_version == 0


@pytest.mark.parametrize("request_kwargs, needle", [
    ({}, "question"),
    ({"question": "   "}, "question"),
    ({"question": "x" * 9000}, "question is 9000 characters"),
    ({"question": "x", "preset": "9-9-9"}, "preset"),
])
def test_search_rpc_bad_input_is_invalid_argument(stub: Any, request_kwargs: dict[str, Any], needle: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        stub.Search(searcher_pb2.SearchAgentRequest(**request_kwargs), timeout=60)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in (err.value.details() or ""), err.value.details()


def test_searcher_client_search_gives_domain_types(stub: Any, searcher: Any, world: dict[str, Any]) -> None:
    """SearcherClient.search: a Question in, a SearchAgentResult of Doc objects out, equal to the raw RPC."""
    from s3core.errors import InvalidArgument
    from s3core.rpc.clients import SearchAgentResult, SearcherClient
    from s3core.types import Doc

    q = world["questions"][0]
    client = SearcherClient(searcher.grpc_target, timeout=900)
    try:
        out = client.search(q)
        assert isinstance(out, SearchAgentResult) and out.question == q.question and out.answer is None
        assert out.context and all(isinstance(d, Doc) and d.id and d.text for d in out.context)
        raw = stub.Search(searcher_pb2.SearchAgentRequest(question=q.question), timeout=900)
        assert [d.id for d in out.context] == [d.id for d in raw.context]
        assert out.queries == list(raw.queries) and out.turns == raw.turns and out.policy_version == 0
        with pytest.raises(InvalidArgument, match="preset"):
            client.search("x", preset="9-9-9")
    finally:
        client.close()
