"""Search-R1-compatible HTTP endpoint: ``POST /retrieve`` on the service's side HTTP server.

Request ``{"queries": [str, ...], "topk": int, "return_scores": bool, "index": str?}``; response
``{"result": [[{"document": {...}, "score": float}, ...], ...]}`` -- or, with ``return_scores``
false, each item is the document dict itself.  A document is ``{"id", "title", "text",
"contents"}`` (``contents`` in the wiki-18 layout Search-R1 parses).  Validation is the gRPC
Search's; a bad request is answered 400 with the message.  Searches are batched with the gRPC ones
(one queue per index); a full queue is answered 429.

What Search-R1's own training loop sends, answered as its client expects (it reads ``result``):

* ``"queries": []`` → ``{"result": []}``;
* an empty or blank query (a turn whose ``<search>`` was empty) → ``[]`` in its place, the others
  served;
* more queries than ``retriever.max_queries`` (its default GRPO batch is 2,560) → split into
  chunks of that size internally and answered as one response;
* a BM25 index returns fewer than ``topk`` hits when fewer documents share a term with the query:
  documents that scored 0 are not padded in (the BM25 backend itself cuts them, for gRPC ``Search``
  too; the filter here is kept as a guard).
"""

from __future__ import annotations

from typing import Any

from s3_retriever.servicer import RetrieverCore
from s3core.errors import InvalidArgument
from s3core.retrieval.batching import QueueFull
from s3core.rpc.http import SideServer
from s3core.types import Doc

DEFAULT_TOPK = 3  # Search-R1's retrieval server default


def doc_json(d: Doc) -> dict[str, str]:
    return {"id": d.id, "title": d.title, "text": d.text, "contents": d.contents}


def parse_request(body: Any) -> tuple[list[str], int, bool, str]:
    if not isinstance(body, dict):
        raise InvalidArgument("request body must be a JSON object like {\"queries\": [...], \"topk\": 3}")
    queries = body.get("queries")
    if queries is None:
        raise InvalidArgument("missing 'queries' (a list of strings)")
    if not isinstance(queries, list):
        raise InvalidArgument(f"'queries' must be a list of strings, got {type(queries).__name__}")
    for i, q in enumerate(queries):
        if not isinstance(q, str):
            raise InvalidArgument(f"queries[{i}] must be a string, got {type(q).__name__}")
    topk = body.get("topk", DEFAULT_TOPK)
    if topk is None:
        topk = DEFAULT_TOPK
    if isinstance(topk, bool) or not isinstance(topk, int):
        raise InvalidArgument(f"'topk' must be an integer, got {topk!r}")
    return_scores = body.get("return_scores", False)
    if not isinstance(return_scores, bool):
        raise InvalidArgument(f"'return_scores' must be true or false, got {return_scores!r}")
    index = body.get("index", "") or ""
    if not isinstance(index, str):
        raise InvalidArgument(f"'index' must be a string, got {index!r}")
    return queries, topk, return_scores, index


def _no_zero_hits(results: list[list[Doc]]) -> list[list[Doc]]:
    """BM25: drop documents that scored 0 (they share no term with the query; only padding)."""
    return [[d for d in docs if d.score > 0.0] for docs in results]


def retrieve(core: RetrieverCore, queries: list[str], topk: int, index: str = "") -> list[list[Doc]]:
    """Search-R1 semantics over :meth:`RetrieverCore.search` (module docstring)."""
    if not queries:
        core.validate(["x"], topk)  # topk is still checked
        core._index(index)  # and the index (or 404 / 503)
        return []
    live = [i for i, q in enumerate(queries) if q.strip()]
    results: list[list[Doc]] = [[] for _ in queries]
    if not live:
        core.validate(["x"], topk)
        core._index(index)
        return results
    step = max(1, core.cfg.max_queries)
    backend = ""
    for start in range(0, len(live), step):
        chunk = live[start : start + step]
        name, found = core.search([queries[i] for i in chunk], topk, index)
        if not backend:
            backend = core.indexes.get(name).info().backend
        if backend == "bm25":
            found = _no_zero_hits(found)
        for i, docs in zip(chunk, found):
            results[i] = docs
    return results


def make_retrieve_handler(core: RetrieverCore):
    def handle(body: Any) -> tuple[int, Any]:
        queries, topk, return_scores, index = parse_request(body)
        try:
            results = retrieve(core, queries, topk, index)
        except QueueFull as exc:
            return 429, {"error": str(exc)}
        if return_scores:
            out = [[{"document": doc_json(d), "score": float(d.score)} for d in docs] for docs in results]
        else:
            out = [[doc_json(d) for d in docs] for docs in results]
        return 200, {"result": out}

    return handle


def setup_http(core: RetrieverCore, side: SideServer) -> None:
    side.route("POST", "/retrieve", make_retrieve_handler(core))
