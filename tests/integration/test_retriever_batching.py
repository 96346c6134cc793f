"""Dynamic batching in the real retriever service (``python -m s3_retriever`` on loopback, BM25 over a
synthetic world): concurrent Searches coalesce (server metrics), answer exactly what the same server
with batching off answers, the HTTP ``POST /retrieve`` shim shares the batcher, and an overflowing
queue is answered RESOURCE_EXHAUSTED while the server keeps serving.
"""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request
from collections import Counter
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from s3.v1 import retriever_pb2, retriever_pb2_grpc


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from s3core.data.synth import synthesize
    from s3core.retrieval import build_index

    root = tmp_path_factory.mktemp("batching-world")
    synthesize(root / "data", seed=2, n_entities=60, n_questions=4)
    build_index(root / "data" / "corpus.jsonl", "bm25", root / "idx", show_progress=False)
    return root / "idx"


@pytest.fixture(scope="module")
def servers(index: Any, service_runner: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    common = ["--index", str(index), "--threads", "1"]
    with service_runner("s3_retriever", [*common, "--batch-window-ms", "0"], tmp_path_factory.mktemp("off")) as off, \
            service_runner("s3_retriever", [*common, "--batch-window-ms", "20"], tmp_path_factory.mktemp("on")) as on, \
            service_runner("s3_retriever", [*common, "--batch-window-ms", "20", "--batch-max-queries", "1"],
                           tmp_path_factory.mktemp("tiny")) as tiny:
        yield {"off": off, "on": on, "tiny": tiny}


WORDS = "river city founder band album university engineer bridge north old grand lake port".split()


def _requests(n: int) -> list[retriever_pb2.SearchRequest]:
    return [retriever_pb2.SearchRequest(queries=[f"{WORDS[i % 13]} {WORDS[(i * 7) % 13]}",
                                                 f"{WORDS[(i * 3) % 13]} {WORDS[(i + 4) % 13]} {i}"][: 1 + i % 2],
                                        k=1 + i % 10) for i in range(n)]


async def _burst(target: str, reqs: list[retriever_pb2.SearchRequest]) -> list[Any]:
    async with grpc.aio.insecure_channel(target) as ch:
        stub = retriever_pb2_grpc.RetrieverStub(ch)

        async def one(r: retriever_pb2.SearchRequest) -> Any:
            try:
                return await stub.Search(r, timeout=60)
            except grpc.aio.AioRpcError as exc:
                return exc.code().name

        return await asyncio.gather(*(one(r) for r in reqs))


def _metric(svc: Any, name: str) -> float:
    with urllib.request.urlopen(svc.http_base + "/metrics", timeout=10) as resp:
        m = re.search(rf"^{name} ([0-9.e+-]+)$", resp.read().decode(), re.MULTILINE)
    return float(m.group(1)) if m else 0.0


def _ranked(resp: Any) -> list[list[tuple[str, float]]]:
    return [[(d.id, round(d.score, 4)) for d in h.documents] for h in resp.results]


def test_concurrent_searches_coalesce_with_the_same_answers(servers: dict[str, Any]) -> None:
    reqs = _requests(200)
    name = "s3_retriever_batcher_requests_per_batch"
    before = (_metric(servers["on"], f"{name}_count"), _metric(servers["on"], f"{name}_sum"))
    on = asyncio.run(_burst(servers["on"].grpc_target, reqs))
    off = asyncio.run(_burst(servers["off"].grpc_target, reqs))
    assert all(not isinstance(r, str) for r in on + off), Counter(r for r in on + off if isinstance(r, str))
    for r, a, b in zip(reqs, on, off):
        # BM25 returns at most k: only documents sharing a term with the query (no score-0 padding)
        assert len(a.results) == len(r.queries) and all(len(h.documents) <= r.k for h in a.results)
        assert _ranked(a) == _ranked(b)
    assert sum(len(h.documents) == r.k for r, a in zip(reqs, on) for h in a.results) >= len(reqs) // 2
    calls = _metric(servers["on"], f"{name}_count") - before[0]
    batched = _metric(servers["on"], f"{name}_sum") - before[1]
    assert batched == len(reqs)
    assert calls <= len(reqs) / 4, f"{calls} backend searches for {len(reqs)} concurrent requests"
    # batching off: one backend search per request
    assert _metric(servers["off"], f"{name}_count") == _metric(servers["off"], f"{name}_sum") >= len(reqs)


def test_http_retrieve_goes_through_the_batcher(servers: dict[str, Any]) -> None:
    body = json.dumps({"queries": ["river city", "band album"], "topk": 4, "return_scores": True}).encode()
    name = "s3_retriever_batcher_requests_per_batch_sum"
    before = _metric(servers["on"], name)
    req = urllib.request.Request(servers["on"].http_base + "/retrieve", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        out = json.loads(resp.read())
    assert [len(r) for r in out["result"]] == [4, 4]
    assert _metric(servers["on"], name) == before + 1


def test_full_queue_is_resource_exhausted_and_the_server_keeps_serving(servers: dict[str, Any]) -> None:
    # batch_max_queries 1: at most 64 queries may wait; 600 requests at once overflow it
    long_query = " ".join(WORDS * 20)
    reqs = [retriever_pb2.SearchRequest(queries=[f"{long_query} {i}"], k=100) for i in range(600)]
    codes = Counter("OK" if not isinstance(r, str) else r for r in asyncio.run(_burst(servers["tiny"].grpc_target,
                                                                                     reqs)))
    assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED"}, codes
    assert codes["RESOURCE_EXHAUSTED"] >= 1 and codes["OK"] >= 64, codes
    assert _metric(servers["tiny"], "s3_retriever_batcher_rejected_total") == codes["RESOURCE_EXHAUSTED"]
    (after,) = asyncio.run(_burst(servers["tiny"].grpc_target, _requests(1)))
    assert not isinstance(after, str) and len(after.results) == 1
