"""Server-side dynamic batching of retriever searches.

Under rollout concurrency a retriever gets hundreds of small Search requests at once (1-3 queries
each).  Searched one by one, every request pays a full encoder pass and a faiss call; coalesced,
one encoder pass and one faiss search serve them all.  :class:`DynamicBatcher` does that:

* requests for one index that arrive within ``window_s`` of the oldest waiting one are coalesced,
  up to ``max_queries`` queries per backend call (a request bigger than that runs alone; requests
  are never split);
* the window is waited only when there is concurrency to wait for: a request that arrived while
  another was still in flight, more than one request waiting, or a previous batch that coalesced
  several.  A lone request after lone requests (one client searching in a loop: each arrives after the
  answer to the one before) runs at once -- it would wait the whole window for nobody;
* the backend call runs on the batcher's own worker thread with ``k`` = the largest ``k`` of the
  batch; every request gets its own queries' lists cut to its own ``k`` (the top-``k`` of a ranked
  list is a prefix of its top-``K`` for ``K >= k``); identical query strings in one batch are
  searched once;
* while the worker is busy, new requests queue up and form the next batch at once (the window
  counts from a request's arrival, so a request that already waited a window is not held longer);
* if the backend raises, every request of that batch fails with that error, and only those;
* the queue is bounded (``max_queue_queries`` queries waiting): beyond it :meth:`submit` raises
  :class:`QueueFull` (the retriever answers ``RESOURCE_EXHAUSTED`` / HTTP 429);
* ``window_s == 0`` turns batching off: every request is searched on its own, in the caller's
  thread (or, from asyncio, a worker thread), exactly as without a batcher.

Nothing here imports gRPC or Prometheus: the service passes a :class:`BatchObserver` for metrics.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from s3core.errors import InvalidArgument, ResourceExhausted, Unavailable

logger = logging.getLogger(__name__)

T = TypeVar("T")
SearchFn = Callable[[list[str], int], list[list[Any]]]

DEFAULT_QUEUE_FACTOR = 64  # max_queue_queries defaults to this many full batches

__all__ = ["BatchObserver", "DynamicBatcher", "QueueFull"]


class QueueFull(ResourceExhausted):
    """Too many queries are waiting for the backend: the server is overloaded, try again later."""


class BatchObserver:
    """Hooks for metrics; the default does nothing.  Called from the worker / submitting threads."""

    def batch(self, requests: int, queries: int, unique_queries: int, seconds: float) -> None:
        """One backend call ran: ``requests`` coalesced, ``queries`` in all (``unique_queries`` searched)."""

    def queue_wait(self, seconds: float) -> None:
        """A request waited this long between submit and the start of its batch."""

    def queue_depth(self, queries: int) -> None:
        """Queries now waiting."""

    def rejected(self, queries: int) -> None:
        """A request was refused because the queue was full."""


@dataclass
class _Pending:
    queries: list[str]
    k: int
    future: Future = field(default_factory=Future)
    t_submit: float = field(default_factory=time.perf_counter)
    concurrent: bool = False  # another request was in flight when this one arrived


class DynamicBatcher(Generic[T]):
    """Coalesces concurrent ``search(queries, k)`` calls into fewer backend calls (see the module doc).

    ``search`` is the backend: ``(queries, k) -> one ranked list per query``.  ``name`` names the
    worker thread.  Call :meth:`close` to stop the worker (pending requests fail with Unavailable).
    """

    def __init__(self, search: SearchFn, *, window_s: float = 0.002, max_queries: int = 512,
                 max_queue_queries: int | None = None, name: str = "", observer: BatchObserver | None = None
                 ) -> None:
        if not window_s >= 0:
            raise InvalidArgument(f"window_s must be >= 0, got {window_s}")
        if max_queries < 1:
            raise InvalidArgument(f"max_queries must be >= 1, got {max_queries}")
        self._search = search
        self.window_s = float(window_s)
        self.max_queries = int(max_queries)
        self.max_queue_queries = int(max_queue_queries if max_queue_queries is not None
                                     else DEFAULT_QUEUE_FACTOR * self.max_queries)
        if self.max_queue_queries < 1:
            raise InvalidArgument(f"max_queue_queries must be >= 1, got {self.max_queue_queries}")
        self.name = name
        self.observer = observer or BatchObserver()
        self._queue: deque[_Pending] = deque()
        self._queued = 0  # queries waiting
        self._cv = threading.Condition()
        self._closed = False
        self.backend_calls = 0  # backend calls made (batches run), for tests and logs
        self._last_batch_requests = 0  # requests the previous batch coalesced (1: no concurrency seen)
        self._inflight = 0  # requests submitted and not yet answered
        self._thread: threading.Thread | None = None
        if self.enabled:
            self._thread = threading.Thread(target=self._run, name=f"s3-batcher-{name or 'index'}", daemon=True)
            self._thread.start()

    @property
    def enabled(self) -> bool:
        return self.window_s > 0

    # --- submitting ------------------------------------------------------------------------------

    def submit(self, queries: Sequence[str], k: int) -> Future:
        """Queue one request; the future resolves to its ranked lists (or the batch's error).

        Raises :class:`QueueFull` at once when the queue holds too many queries (an oversized request
        is still accepted when the queue is empty), and :class:`Unavailable` after :meth:`close`.
        With batching off the search runs here, in the caller's thread.
        """
        qs = list(queries)
        if not self.enabled:
            fut: Future = Future()
            fut.set_running_or_notify_cancel()
            try:
                fut.set_result(self._call([_Pending(qs, k, fut)])[0] if qs else [])
            except Exception as exc:  # noqa: BLE001 - delivered through the future, like a batch error
                fut.set_exception(exc)
            return fut
        p = _Pending(qs, k)
        if not qs:
            p.future.set_running_or_notify_cancel()
            p.future.set_result([])
            return p.future
        with self._cv:
            if self._closed:
                raise Unavailable(f"retriever batcher {self.name!r} is shut down")
            if self._queue and self._queued + len(qs) > self.max_queue_queries:
                self.observer.rejected(len(qs))
                raise QueueFull(f"retriever overloaded: {self._queued} queries already wait for index "
                                f"{self.name!r} (at most {self.max_queue_queries}); retry later")
            was_empty = not self._queue
            p.concurrent = self._inflight > 0
            self._inflight += 1
            self._queue.append(p)
            self._queued += len(qs)
            depth = self._queued
            # wake the worker only when it has something new to decide: a first request, or a full batch
            if was_empty or depth >= self.max_queries:
                self._cv.notify()
        self.observer.queue_depth(depth)
        return p.future

    def search(self, queries: Sequence[str], k: int) -> list[list[T]]:
        """Blocking :meth:`submit`."""
        return self.submit(queries, k).result()

    async def search_async(self, queries: Sequence[str], k: int) -> list[list[T]]:
        """:meth:`search` for asyncio callers: batched, or with batching off in a worker thread.
        Cancelling the awaiting task drops the request if its batch has not started yet."""
        if not self.enabled:
            return await asyncio.to_thread(self.search, queries, k)
        return await asyncio.wrap_future(self.submit(queries, k))

    # --- the worker ------------------------------------------------------------------------------

    def _take(self) -> list[_Pending] | None:
        """Wait for the next batch (``None`` once closed and drained)."""
        with self._cv:
            while not self._queue:
                if self._closed:
                    return None
                self._cv.wait()
            deadline = self._queue[0].t_submit + self.window_s
            # batch only when requests are actually waiting: a lone request after lone ones goes now
            concurrent = len(self._queue) > 1 or self._last_batch_requests > 1 or self._queue[0].concurrent
            while concurrent and not self._closed and self._queued < self.max_queries:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                self._cv.wait(remaining)
            batch: list[_Pending] = []
            n = 0
            while self._queue:
                nxt = self._queue[0]
                if batch and n + len(nxt.queries) > self.max_queries:
                    break
                self._queue.popleft()
                self._queued -= len(nxt.queries)
                if nxt.future.set_running_or_notify_cancel():  # False: cancelled while waiting
                    batch.append(nxt)
                    n += len(nxt.queries)
                else:
                    self._inflight -= 1
            depth = self._queued
            if batch:
                self._last_batch_requests = len(batch)
        self.observer.queue_depth(depth)
        return batch

    def _run(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            if not batch:
                continue
            try:
                results = self._call(batch)
            except BaseException as exc:  # noqa: BLE001 - the batch's requests get the error, the worker lives on
                self._answered(len(batch))
                for p in batch:
                    p.future.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
                continue
            self._answered(len(batch))  # before the results: a client's next request sees none in flight
            for p, res in zip(batch, results):
                p.future.set_result(res)

    def _answered(self, n: int) -> None:
        with self._cv:
            self._inflight -= n

    def _call(self, batch: list[_Pending]) -> list[list[list[Any]]]:
        """One backend call for ``batch``; one result (its lists cut to its k) per request."""
        start = time.perf_counter()
        for p in batch:
            self.observer.queue_wait(start - p.t_submit)
        uniq: dict[str, int] = {}
        slots = [[uniq.setdefault(q, len(uniq)) for q in p.queries] for p in batch]
        k = max(p.k for p in batch)
        found = self._search(list(uniq), k)
        self.backend_calls += 1
        if len(found) != len(uniq):
            raise Unavailable(f"retriever backend returned {len(found)} result lists for {len(uniq)} queries")
        n = sum(len(p.queries) for p in batch)
        self.observer.batch(len(batch), n, len(uniq), time.perf_counter() - start)
        return [[list(found[i][:p.k]) for i in idx] for p, idx in zip(batch, slots)]

    def close(self, timeout: float = 5.0) -> None:
        """Stop taking requests; the batch in progress finishes, waiting requests fail with Unavailable."""
        with self._cv:
            self._closed = True
            dropped = list(self._queue)
            self._queue.clear()
            self._queued = 0
            self._inflight -= len(dropped)
            self._cv.notify_all()
        for p in dropped:
            if p.future.set_running_or_notify_cancel():
                p.future.set_exception(Unavailable(f"retriever batcher {self.name!r} is shut down"))
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
