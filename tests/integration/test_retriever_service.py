"""The retriever service end to end: a real `python -m s3_retriever` subprocess on loopback.

Fixtures (``retriever_indexes``, ``retriever_service``) live in tests/integration/conftest.py.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from s3.v1 import retriever_pb2, retriever_pb2_grpc
from s3core.config import RetrieverConfig

SERVICE_MAX_K = 50  # passed as --max-k: CLI flags override the config
KNOWN = ("Jeff Porcaro American drummer of Toto", "1", "Jeff Porcaro")  # query, id, title in the first passages


@pytest.fixture(scope="module")
def retriever_service(retriever_indexes: dict[str, Any], service_runner: Any,
                      tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """``python -m s3_retriever`` serving both indexes (BM25 is the default), on loopback."""
    workdir = tmp_path_factory.mktemp("retriever-service")
    args = ["--index", str(retriever_indexes["bm25"]), "--index", str(retriever_indexes["dense"]),
            "--max-k", str(SERVICE_MAX_K)]
    with service_runner("s3_retriever", args, workdir) as svc:
        yield svc


@pytest.fixture(scope="module")
def channel(retriever_service: Any) -> Iterator[grpc.Channel]:
    ch = grpc.insecure_channel(retriever_service.grpc_target)
    grpc.channel_ready_future(ch).result(timeout=10)
    yield ch
    ch.close()


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> retriever_pb2_grpc.RetrieverStub:
    return retriever_pb2_grpc.RetrieverStub(channel)


def _search(stub: retriever_pb2_grpc.RetrieverStub, queries: list[str], k: int, index: str = "") -> Any:
    return stub.Search(retriever_pb2.SearchRequest(queries=queries, k=k, index=index), timeout=30)


def _http(svc: Any, method: str, path: str, body: bytes | None = None) -> tuple[int, Any, str]:
    req = urllib.request.Request(svc.http_base + path, data=body, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            status, raw = resp.status, resp.read()
            ctype = resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as err:
        status, raw, ctype = err.code, err.read(), err.headers.get("Content-Type", "")
    text = raw.decode("utf-8")
    return status, (json.loads(text) if "json" in ctype else text), ctype


def _post(svc: Any, obj: Any) -> tuple[int, Any]:
    status, body, _ = _http(svc, "POST", "/retrieve", json.dumps(obj).encode())
    return status, body


def test_health_serving(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "s3.v1.Retriever"):
        resp = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_retriever(channel: grpc.Channel) -> None:
    refl = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert {"s3.v1.Retriever", "grpc.health.v1.Health"} <= names


def test_list_indexes(stub: retriever_pb2_grpc.RetrieverStub, retriever_indexes: dict[str, Any]) -> None:
    resp = stub.ListIndexes(retriever_pb2.ListIndexesRequest(), timeout=10)
    by_name = {i.name: i for i in resp.indexes}
    assert resp.default_index == "wiki-bm25"
    assert set(by_name) == {"wiki-bm25", "wiki-dense"}
    bm25, dense = by_name["wiki-bm25"], by_name["wiki-dense"]
    assert (bm25.backend, bm25.num_documents, bm25.encoder) == ("bm25", retriever_indexes["bm25_docs"], "")
    assert (dense.backend, dense.num_documents, dense.encoder) == (
        "dense", retriever_indexes["dense_docs"], "embedded:all-minilm-l6-v2")
    assert len(bm25.corpus_sha256) == 64
    assert json.loads(dense.params_json)["max_seq_length"] == 64


@pytest.mark.parametrize("index", ["", "wiki-bm25", "wiki-dense"])
def test_search_ranked_and_finds_known_passage(stub: retriever_pb2_grpc.RetrieverStub, index: str) -> None:
    queries = [KNOWN[0], "Danish plant ecologist who assisted a chemist", "who wrote the song lyrics"]
    resp = _search(stub, queries, 5, index)
    assert resp.index == (index or "wiki-bm25")
    assert len(resp.results) == len(queries)
    for hits in resp.results:
        scores = [d.score for d in hits.documents]
        assert len(scores) == 5 and scores == sorted(scores, reverse=True)
        assert all(d.id and d.text for d in hits.documents)
    top = resp.results[0].documents[0]
    assert (top.id, top.title) == KNOWN[1:]


def test_get_documents(stub: retriever_pb2_grpc.RetrieverStub) -> None:
    resp = stub.GetDocuments(retriever_pb2.GetDocumentsRequest(ids=["2", "1"]), timeout=10)
    assert [d.id for d in resp.documents] == ["2", "1"] and resp.documents[1].title == "Jeff Porcaro"
    with pytest.raises(grpc.RpcError) as err:
        stub.GetDocuments(retriever_pb2.GetDocumentsRequest(ids=["no-such-id"]), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "no-such-id" in err.value.details()


LIMITS = RetrieverConfig()


@pytest.mark.parametrize(
    ("queries", "k", "index", "code", "message"),
    [
        ([], 3, "", grpc.StatusCode.INVALID_ARGUMENT, "queries must not be empty"),
        (["fine", "   "], 3, "", grpc.StatusCode.INVALID_ARGUMENT, "queries[1] is empty"),
        (["fine", ""], 3, "", grpc.StatusCode.INVALID_ARGUMENT, "queries[1] is empty"),
        (["fine"], 0, "", grpc.StatusCode.INVALID_ARGUMENT, f"k must be between 1 and {SERVICE_MAX_K}, got 0"),
        (["fine"], SERVICE_MAX_K + 1, "", grpc.StatusCode.INVALID_ARGUMENT, f"got {SERVICE_MAX_K + 1}"),
        (["q"] * (LIMITS.max_queries + 1), 3, "", grpc.StatusCode.INVALID_ARGUMENT, "too many queries"),
        (["x" * (LIMITS.max_query_chars + 1)], 3, "", grpc.StatusCode.INVALID_ARGUMENT, "queries[0] is"),
        (["fine"], 3, "no-such-index", grpc.StatusCode.NOT_FOUND, "unknown index 'no-such-index'"),
    ],
    ids=["empty-list", "blank-query", "empty-query", "k-zero", "k-over-max", "too-many", "oversized", "unknown-index"],
)
def test_bad_requests(stub: retriever_pb2_grpc.RetrieverStub, queries: list[str], k: int, index: str,
                      code: grpc.StatusCode, message: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        _search(stub, queries, k, index)
    assert err.value.code() == code
    assert message in err.value.details()
    # the server keeps answering
    assert len(_search(stub, ["Toto"], 2).results[0].documents) == 2


def test_http_retrieve_matches_grpc(retriever_service: Any, stub: retriever_pb2_grpc.RetrieverStub) -> None:
    queries = [KNOWN[0], "Carsten Olsen plant ecologist"]
    grpc_resp = _search(stub, queries, 4)
    status, body = _post(retriever_service, {"queries": queries, "topk": 4, "return_scores": True})
    assert status == 200
    assert len(body["result"]) == 2
    for hits, items in zip(grpc_resp.results, body["result"], strict=True):
        assert [d.id for d in hits.documents] == [it["document"]["id"] for it in items]
        assert [d.score for d in hits.documents] == pytest.approx([it["score"] for it in items], rel=1e-6)
        for d, it in zip(hits.documents, items, strict=True):
            doc = it["document"]
            assert set(doc) == {"id", "title", "text", "contents"}
            assert (doc["title"], doc["text"]) == (d.title, d.text)
            assert doc["contents"] == f'"{d.title}"\n{d.text}'

    status, body = _post(retriever_service, {"queries": queries, "topk": 4, "return_scores": False})
    assert status == 200
    assert [[doc["id"] for doc in items] for items in body["result"]] == \
        [[d.id for d in hits.documents] for hits in grpc_resp.results]
    assert all(set(doc) == {"id", "title", "text", "contents"} for items in body["result"] for doc in items)

    status, body = _post(retriever_service, {"queries": [KNOWN[0]], "topk": 2, "index": "wiki-dense"})
    assert status == 200 and body["result"][0][0]["id"] == KNOWN[1]


@pytest.mark.parametrize(
    ("raw", "status", "message"),
    [
        (b"{not json", 400, "not valid JSON"),
        (json.dumps(["a list"]).encode(), 400, "JSON object"),
        (json.dumps({"topk": 3}).encode(), 400, "missing 'queries'"),
        (json.dumps({"queries": "one string"}).encode(), 400, "must be a list"),
        (json.dumps({"queries": ["ok", 3]}).encode(), 400, "queries[1] must be a string"),
        (json.dumps({"queries": ["ok"], "topk": 0}).encode(), 400, "k must be between"),
        (json.dumps({"queries": ["ok"], "topk": "3"}).encode(), 400, "'topk' must be an integer"),
        (json.dumps({"queries": ["ok"], "return_scores": "yes"}).encode(), 400, "return_scores"),
        (json.dumps({"queries": ["ok"], "index": "nope"}).encode(), 404, "unknown index"),
        (json.dumps({"queries": [], "index": "nope"}).encode(), 404, "unknown index"),
        # empty query lists and blank queries are answered (Search-R1 sends them): test_retrieve_search_r1.py
    ],
)
def test_http_retrieve_bad_requests(retriever_service: Any, raw: bytes, status: int, message: str) -> None:
    got, body, _ = _http(retriever_service, "POST", "/retrieve", raw)
    assert got == status
    assert message in body["error"]


def test_http_default_topk(retriever_service: Any) -> None:
    status, body = _post(retriever_service, {"queries": ["Toto band"]})
    assert status == 200 and len(body["result"][0]) == 3  # Search-R1's default topk


def test_healthz_and_metrics(retriever_service: Any, stub: retriever_pb2_grpc.RetrieverStub,
                             retriever_indexes: dict[str, Any]) -> None:
    _search(stub, ["metrics please"], 1)
    status, body, _ = _http(retriever_service, "GET", "/healthz")
    assert status == 200 and body["status"] == "ok"
    status, text, ctype = _http(retriever_service, "GET", "/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    assert "s3_retriever_queries_total" in text
    assert "s3_retriever_search_seconds_bucket" in text
    assert "s3_retriever_batch_size_bucket" in text
    for backend in ("bm25", "dense"):  # one series per loaded index, named
        n = float(retriever_indexes[f"{backend}_docs"])
        assert re.search(rf'^s3_retriever_index_documents\{{backend="{backend}",index="[^"]+"\}} {re.escape(str(n))}$',
                         text, re.M), backend
    assert 'grpc_server_handled_total{grpc_code="OK",grpc_method="Search",grpc_service="s3.v1.Retriever"}' in text


def test_bad_index_dir_fails_fast(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "s3_retriever", "--index", str(tmp_path / "missing"), "--port", "0",
                        "--http-port", "0"], check=False, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "does not exist" in r.stderr and "Traceback" not in r.stderr


def test_help() -> None:
    r = subprocess.run([sys.executable, "-m", "s3_retriever", "--help"], check=False, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "--index" in r.stdout and "--ready-file" in r.stdout
