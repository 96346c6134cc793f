"""gRPC servicer of ``s3.v1.Retriever``: request validation + calls into an s3core Retriever.

Errors are raised as s3core domain errors; ``s3core.rpc.server``'s interceptor maps them to status
codes.  Searches go through a per-index :class:`~s3core.retrieval.batching.DynamicBatcher`
(``retriever.batch_window_ms`` > 0): concurrent requests are coalesced into one backend search on
the batcher's worker thread, and a full queue (64 x ``retriever.batch_max_queries`` queries waiting)
is answered ``RESOURCE_EXHAUSTED``.  With batching off they run in worker threads
(``asyncio.to_thread``).  Either way the event loop keeps answering health checks and other RPCs
while the CPU-bound search runs.  The same validation backs the HTTP
``POST /retrieve`` shim (:mod:`s3_retriever.http_shim`).

A lone shard of a sharded index lists its manifest's shard block in ``ListIndexes`` (under
``params_json["shard"]``), which is what the client-side fan-out
(:class:`s3core.rpc.sharded.ShardedRetrieverClient`) merges by.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from s3.v1 import retriever_pb2, retriever_pb2_grpc
from s3_retriever import metrics
from s3core.config import RetrieverConfig
from s3core.errors import InvalidArgument, NotFound, Unavailable
from s3core.retrieval import IndexInfo, Retriever
from s3core.retrieval.batching import BatchObserver, DynamicBatcher
from s3core.retrieval.shards import SHARD_KEY
from s3core.rpc.convert import doc_to_pb
from s3core.types import Doc

SERVICE_NAME = "s3.v1.Retriever"
INLINE_PB_HITS = 512  # responses with at most this many documents are built on the event loop


def search_response(results: list[list[Doc]], index: str) -> retriever_pb2.SearchResponse:
    """Build the response in place: ``add()`` on the repeated fields is ~3x faster than building
    ``Document`` messages first and copying them in (the copy dominates at 32 x 10 documents)."""
    resp = retriever_pb2.SearchResponse(index=index)
    new_hits = resp.results.add
    for docs in results:
        add = new_hits().documents.add
        for d in docs:
            add(id=d.id, title=d.title, text=d.text, score=d.score)
    return resp


def _pb_info(info: IndexInfo, shard: Mapping[str, Any] | None = None) -> retriever_pb2.IndexInfo:
    params = dict(info.params)
    if shard is not None and SHARD_KEY not in params:
        params[SHARD_KEY] = dict(shard)
    return retriever_pb2.IndexInfo(
        name=info.name, backend=info.backend, num_documents=info.num_documents,
        corpus_sha256=info.corpus_sha256, encoder=info.encoder,
        params_json=json.dumps(params, sort_keys=True, ensure_ascii=False),
    )


class IndexSet:
    """The indexes a server holds, by name; the first one added is the default."""

    def __init__(self) -> None:
        self._by_name: dict[str, Retriever] = {}
        self._shard: dict[str, dict[str, Any]] = {}
        self.default: str = ""
        self._lock = threading.Lock()

    def add(self, retriever: Retriever, shard: Mapping[str, Any] | None = None) -> None:
        """Add a loaded index; ``shard`` is its manifest's shard block when it is one shard of a set."""
        info = retriever.info()
        with self._lock:
            if info.name in self._by_name:
                raise InvalidArgument(f"two indexes are named {info.name!r}; index names must be unique")
            self._by_name[info.name] = retriever
            if shard is not None:
                self._shard[info.name] = dict(shard)
            if not self.default:
                self.default = info.name
        metrics.INDEX_DOCUMENTS.labels(info.backend, info.name).set(info.num_documents)

    def __len__(self) -> int:
        return len(self._by_name)

    def names(self) -> list[str]:
        return list(self._by_name)

    def shard(self, name: str) -> dict[str, Any] | None:
        return self._shard.get(name)

    def get(self, name: str) -> Retriever:
        if not self._by_name:
            raise Unavailable("no index is loaded yet")
        key = name or self.default
        r = self._by_name.get(key)
        if r is None:
            raise NotFound(f"unknown index {name!r} (loaded: {', '.join(self._by_name)})")
        return r


class _Metrics(BatchObserver):
    def __init__(self, index: str) -> None:
        self.depth = metrics.BATCHER_QUEUE_QUERIES.labels(index)

    def batch(self, requests: int, queries: int, unique_queries: int, seconds: float) -> None:
        metrics.BATCHER_REQUESTS.observe(requests)
        metrics.BATCHER_QUERIES.observe(unique_queries)

    def queue_wait(self, seconds: float) -> None:
        metrics.BATCHER_QUEUE_WAIT.observe(seconds)

    def queue_depth(self, queries: int) -> None:
        self.depth.set(queries)

    def rejected(self, queries: int) -> None:
        metrics.BATCHER_REJECTED.inc()


class RetrieverCore:
    """Validation + search, shared by the gRPC servicer and the HTTP shim."""

    def __init__(self, cfg: RetrieverConfig, indexes: IndexSet | None = None) -> None:
        self.cfg = cfg
        self.indexes = indexes if indexes is not None else IndexSet()
        self.not_serving_reason = ""  # set when the server will not serve (e.g. an incomplete shard set)
        self._batchers: dict[str, DynamicBatcher] = {}
        self._lock = threading.Lock()

    def validate(self, queries: Sequence[str], k: int) -> None:
        cfg = self.cfg
        n = len(queries)
        if n == 0:
            raise InvalidArgument("queries must not be empty")
        if n > cfg.max_queries:
            raise InvalidArgument(f"too many queries: {n} (at most {cfg.max_queries} per request)")
        if k < 1 or k > cfg.max_k:
            raise InvalidArgument(f"k must be between 1 and {cfg.max_k}, got {k}")
        for i, q in enumerate(queries):
            if not q.strip():
                raise InvalidArgument(f"queries[{i}] is empty or whitespace")
            if len(q) > cfg.max_query_chars:
                raise InvalidArgument(f"queries[{i}] is {len(q)} characters long (at most {cfg.max_query_chars})")

    def _index(self, index: str) -> Retriever:
        if self.not_serving_reason:
            raise Unavailable(f"retriever is not serving: {self.not_serving_reason}")
        return self.indexes.get(index)

    @staticmethod
    def _backend_search(retriever: Retriever, queries: list[str], k: int) -> list[list[Doc]]:
        start = time.perf_counter()
        results = retriever.search(queries, k)
        metrics.SEARCH_SECONDS.observe(time.perf_counter() - start)
        return results

    def batcher(self, retriever: Retriever) -> DynamicBatcher:
        """The index's batcher (created on first use; with ``batch_window_ms`` 0 a pass-through)."""
        name = retriever.info().name
        b = self._batchers.get(name)
        if b is None:
            with self._lock:
                b = self._batchers.get(name)
                if b is None:
                    cfg = self.cfg
                    b = DynamicBatcher(lambda qs, k, r=retriever: self._backend_search(r, qs, k),
                                       window_s=cfg.batch_window_ms / 1000.0, max_queries=cfg.batch_max_queries,
                                       name=name, observer=_Metrics(name))
                    self._batchers[name] = b
        return b

    @staticmethod
    def _count(queries: Sequence[str]) -> None:
        metrics.QUERIES.inc(len(queries))
        metrics.BATCH_SIZE.observe(len(queries))

    def search(self, queries: Sequence[str], k: int, index: str = "") -> tuple[str, list[list[Doc]]]:
        """Validate, pick the index, search; returns ``(index name, results)``.  Blocking.

        Raises :class:`~s3core.retrieval.batching.QueueFull` when the index's queue is full."""
        self.validate(queries, k)
        retriever = self._index(index)
        results = self.batcher(retriever).search(list(queries), k)
        self._count(queries)
        return retriever.info().name, results

    async def search_async(self, queries: Sequence[str], k: int, index: str = "") -> tuple[str, list[list[Doc]]]:
        """:meth:`search` for the event loop (batched, or in a worker thread with batching off)."""
        self.validate(queries, k)
        retriever = self._index(index)
        results = await self.batcher(retriever).search_async(list(queries), k)
        self._count(queries)
        return retriever.info().name, results

    def get_documents(self, ids: Sequence[str], index: str = "") -> list[Doc]:
        if len(ids) > self.cfg.max_queries * self.cfg.max_k:
            raise InvalidArgument(f"too many ids: {len(ids)} (at most {self.cfg.max_queries * self.cfg.max_k})")
        return self._index(index).get(list(ids))

    def close(self) -> None:
        with self._lock:
            batchers, self._batchers = list(self._batchers.values()), {}
        for b in batchers:
            b.close()


class RetrieverServicer(retriever_pb2_grpc.RetrieverServicer):
    def __init__(self, core: RetrieverCore) -> None:
        self.core = core

    async def Search(self, request: retriever_pb2.SearchRequest, context: Any) -> retriever_pb2.SearchResponse:
        # validate on the loop (cheap, no thread hop for bad input); the search is batched or threaded
        queries = list(request.queries)
        # a full queue raises QueueFull (a ResourceExhausted): the shared interceptor answers RESOURCE_EXHAUSTED
        name, results = await self.core.search_async(queries, request.k, request.index)
        if sum(len(r) for r in results) <= INLINE_PB_HITS:
            return search_response(results, name)
        return await asyncio.to_thread(search_response, results, name)

    async def GetDocuments(
        self, request: retriever_pb2.GetDocumentsRequest, context: object
    ) -> retriever_pb2.GetDocumentsResponse:
        docs = await asyncio.to_thread(self.core.get_documents, list(request.ids), request.index)
        return retriever_pb2.GetDocumentsResponse(documents=[doc_to_pb(d) for d in docs])

    async def ListIndexes(
        self, request: retriever_pb2.ListIndexesRequest, context: object
    ) -> retriever_pb2.ListIndexesResponse:
        if self.core.not_serving_reason:
            raise Unavailable(f"retriever is not serving: {self.core.not_serving_reason}")
        idx = self.core.indexes
        infos = [_pb_info(idx.get(n).info(), idx.shard(n)) for n in idx.names()]
        return retriever_pb2.ListIndexesResponse(indexes=infos, default_index=idx.default)
