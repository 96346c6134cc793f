"""`POST /retrieve` as Search-R1's own training loop calls it (issue 15 §6), on a real retriever
subprocess over the shared wiki passages: its client reads ``result`` and crashed on the 400s."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest

KNOWN = "Jeff Porcaro American drummer of Toto"  # passage "1" of the shared corpus


@pytest.fixture(scope="module")
def svc(retriever_indexes: dict[str, Any], service_runner: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    workdir = tmp_path_factory.mktemp("retrieve-sr1")
    args = ["--index", str(retriever_indexes["bm25"]), "--max-queries", "16"]
    with service_runner("s3_retriever", args, workdir) as s:
        yield s


def post(svc: Any, obj: Any) -> tuple[int, Any]:
    req = urllib.request.Request(svc.http_base + "/retrieve", data=json.dumps(obj).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_empty_query_list(svc: Any) -> None:
    assert post(svc, {"queries": [], "topk": 3, "return_scores": True}) == (200, {"result": []})
    status, body = post(svc, {"queries": [], "topk": 0})
    assert status == 400 and "k must be between" in body["error"]  # a bad topk is still named


def test_blank_queries_get_empty_lists_and_the_others_are_served(svc: Any) -> None:
    status, body = post(svc, {"queries": ["", KNOWN, "   "], "topk": 3, "return_scores": True})
    assert status == 200
    empty, hits, blank = body["result"]
    assert empty == [] and blank == []
    assert hits[0]["document"]["id"] == "1" and len(hits) == 3
    assert post(svc, {"queries": ["", ""], "topk": 2}) == (200, {"result": [[], []]})


def test_more_queries_than_max_queries_are_split(svc: Any) -> None:
    """--max-queries 16 here; Search-R1's GRPO batch of 2,560 is the same path at the default 1,024."""
    queries = [KNOWN, "Toto band", "Carsten Olsen plant ecologist", ""] * 10  # 40 > 16
    status, body = post(svc, {"queries": queries, "topk": 2, "return_scores": False})
    assert status == 200 and len(body["result"]) == 40
    one = post(svc, {"queries": queries[:4], "topk": 2, "return_scores": False})[1]["result"]
    assert body["result"] == one * 10  # every chunk answered as a request of its own would be


def test_bm25_does_not_pad_with_score_zero_documents(svc: Any) -> None:
    # one rare term (in one passage at most) and a word that is in no passage at all
    status, body = post(svc, {"queries": ["Porcaro", "qwxzzyv"], "topk": 10, "return_scores": True})
    assert status == 200
    rare, nothing = body["result"]
    assert 1 <= len(rare) < 10 and all(h["score"] > 0 for h in rare)
    assert nothing == []


def test_search_r1_grpo_batch_at_the_default_limit(retriever_indexes: dict[str, Any]) -> None:
    """2,560 queries (Search-R1's default GRPO batch) at the default max_queries of 1,024: three
    internal chunks, one answer per query, in order (the shim's own function over a real index)."""
    from s3_retriever.http_shim import retrieve
    from s3_retriever.servicer import IndexSet, RetrieverCore
    from s3core.config import RetrieverConfig
    from s3core.retrieval import load_index

    indexes = IndexSet()
    indexes.add(load_index(retriever_indexes["bm25"]))
    core = RetrieverCore(RetrieverConfig(), indexes)
    assert core.cfg.max_queries == 1024
    queries = [f"{KNOWN} {i}" if i % 7 else "" for i in range(2560)]
    results = retrieve(core, queries, 3)
    assert len(results) == 2560
    assert all((r == []) == (q == "") for q, r in zip(queries, results))
    assert {r[0].id for r in results if r} == {"1"}
