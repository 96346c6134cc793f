"""Search-R1-compatible HTTP endpoint: ``POST /retrieve`` on the service's side HTTP server.

Request ``{"queries": [str, ...], "topk": int, "return_scores": bool, "index": str?}``; response
``{"result": [[{"document": {...}, "score": float}, ...], ...]}`` -- or, with ``return_scores``
false, each item is the document dict itself.  A document is ``{"id", "title", "text",
"contents"}`` (``contents`` in the wiki-18 layout Search-R1 parses).  Validation is the gRPC
Search's; a bad request is answered 400 with the message.  Searches are batched with the gRPC ones
(one queue per index); a full queue is answered 429.
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


def make_retrieve_handler(core: RetrieverCore):
    def retrieve(body: Any) -> tuple[int, Any]:
        queries, topk, return_scores, index = parse_request(body)
        try:
            _, results = core.search(queries, topk, index)
        except QueueFull as exc:
            return 429, {"error": str(exc)}
        if return_scores:
            out = [[{"document": doc_json(d), "score": float(d.score)} for d in docs] for docs in results]
        else:
            out = [[doc_json(d) for d in docs] for docs in results]
        return 200, {"result": out}

    return retrieve


def setup_http(core: RetrieverCore, side: SideServer) -> None:
    side.route("POST", "/retrieve", make_retrieve_handler(core))
