"""DynamicBatcher: concurrent searches coalesce into few backend calls, each request gets its own k,
a backend error fails only its batch, window 0 passes through, and the queue is bounded.

The backend is a real BM25 index over a small synthetic world; a thin wrapper counts its calls and
can hold a call open (a gate) so that a test decides which requests end up in which batch.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from s3core.errors import InvalidArgument, Unavailable
from s3core.retrieval.batching import BatchObserver, DynamicBatcher, QueueFull
from s3core.types import Doc


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from s3core.data.synth import synthesize
    from s3core.retrieval import build_index, load_index

    root = tmp_path_factory.mktemp("batcher")
    synthesize(root / "w", seed=4, n_entities=40, n_questions=4)
    build_index(root / "w" / "corpus.jsonl", "bm25", root / "idx", show_progress=False)
    r = load_index(root / "idx")
    yield r
    r.close()


QUERIES = [f"{w} river city band founder" for w in ("north", "old", "new", "grand", "little", "upper", "lower",
                                                     "east", "west", "saint", "port", "lake")]


class Backend:
    """The index's search, counted; ``gate`` (when set) holds every call until it is released;
    a query containing ``fail_on`` makes the call raise."""

    def __init__(self, index: Any, fail_on: str | None = None) -> None:
        self.index = index
        self.calls: list[tuple[list[str], int]] = []
        self.threads: list[str] = []
        self.gate: threading.Event | None = None
        self.entered = threading.Event()
        self.fail_on = fail_on
        self._lock = threading.Lock()

    def __call__(self, queries: list[str], k: int) -> list[list[Doc]]:
        with self._lock:
            self.calls.append((list(queries), k))
            self.threads.append(threading.current_thread().name)
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(30), "gate never released"
        if self.fail_on is not None and any(self.fail_on in q for q in queries):
            raise RuntimeError(f"backend failed on a batch of {len(queries)}")
        return self.index.search(queries, k)


def ids(results: Sequence[Sequence[Doc]]) -> list[list[str]]:
    return [[d.id for d in r] for r in results]


def _hold(backend: Backend, batcher: DynamicBatcher, queries: list[str], k: int = 3) -> Any:
    """Submit one request and wait until the worker is inside the backend with it (held by the gate)."""
    backend.gate = threading.Event()
    backend.entered.clear()
    fut = batcher.submit(queries, k)
    assert backend.entered.wait(10)
    return fut


def test_concurrent_requests_coalesce(index: Any) -> None:
    backend = Backend(index)
    b = DynamicBatcher(backend, window_s=0.05, max_queries=512, name="t")
    n = 48
    start = threading.Barrier(n)

    def one(i: int) -> tuple[int, list[list[str]]]:
        qs = [QUERIES[i % len(QUERIES)], QUERIES[(i + 5) % len(QUERIES)]][: 1 + i % 2]
        start.wait()
        return i, ids(b.search(qs, 3 + i % 5))

    try:
        with ThreadPoolExecutor(n) as ex:
            got = list(ex.map(one, range(n)))
    finally:
        b.close()
    assert len(backend.calls) <= n // 4, f"{len(backend.calls)} backend calls for {n} concurrent requests"
    assert b.backend_calls == len(backend.calls)
    for i, res in got:  # every request got exactly what searching it alone gives
        qs = [QUERIES[i % len(QUERIES)], QUERIES[(i + 5) % len(QUERIES)]][: 1 + i % 2]
        assert res == ids(index.search(qs, 3 + i % 5))
    # identical queries in one batch are searched once, with the batch's largest k
    for queries, k in backend.calls:
        assert len(queries) == len(set(queries)) and k <= 7
    assert all(t.startswith("s3-batcher-t") for t in backend.threads)  # on the batcher's own worker


def test_each_request_gets_its_own_k(index: Any) -> None:
    backend = Backend(index)
    b = DynamicBatcher(backend, window_s=0.2, max_queries=8, name="k")
    try:
        first = _hold(backend, b, [QUERIES[0]], 2)
        futs = [(k, b.submit([QUERIES[k]], k)) for k in (1, 4, 9, 2)]  # 4 queries: one batch after the gate
        backend.gate.set()
        assert ids(first.result(10)) == ids(index.search([QUERIES[0]], 2))
        for k, f in futs:
            res = f.result(10)
            assert len(res) == 1 and len(res[0]) == k
            assert ids(res) == ids(index.search([QUERIES[k]], k))
    finally:
        b.close()
    assert len(backend.calls) == 2 and backend.calls[1][1] == 9  # k of the batch = its largest k


def test_error_fails_only_its_batch(index: Any) -> None:
    backend = Backend(index, fail_on="boom")
    b = DynamicBatcher(backend, window_s=0.2, max_queries=64, name="err")
    try:
        ok_before = _hold(backend, b, [QUERIES[1]])
        bad = b.submit(["boom city"], 3)
        bad_neighbour = b.submit([QUERIES[2]], 3)  # coalesced with the bad one
        backend.gate.set()
        assert ids(ok_before.result(10)) == ids(index.search([QUERIES[1]], 3))
        errors = []
        for f in (bad, bad_neighbour):
            with pytest.raises(RuntimeError, match="backend failed") as ei:
                f.result(10)
            errors.append(ei.value)
        assert errors[0] is errors[1]  # the same error for the whole batch
        backend.gate = None
        assert ids(b.search([QUERIES[3]], 3)) == ids(index.search([QUERIES[3]], 3))  # the worker lives on
    finally:
        b.close()
    assert len(backend.calls) == 3


def test_window_zero_is_passthrough(index: Any) -> None:
    backend = Backend(index)
    b = DynamicBatcher(backend, window_s=0, name="off")
    assert not b.enabled
    n = 16
    with ThreadPoolExecutor(8, thread_name_prefix="caller") as ex:
        got = list(ex.map(lambda i: ids(b.search([QUERIES[i % len(QUERIES)]], 3)), range(n)))
    assert len(backend.calls) == n  # one backend call per request
    assert all(t.startswith("caller") for t in backend.threads)  # in the callers' threads
    assert got == [ids(index.search([QUERIES[i % len(QUERIES)]], 3)) for i in range(n)]
    bad = DynamicBatcher(Backend(index, fail_on="boom"), window_s=0)
    with pytest.raises(RuntimeError, match="backend failed"):
        bad.search(["boom"], 3)


def test_queue_bound(index: Any) -> None:
    backend = Backend(index)
    rejected: list[int] = []

    class Obs(BatchObserver):
        def rejected(self, queries: int) -> None:
            rejected.append(queries)

    b = DynamicBatcher(backend, window_s=0.001, max_queries=4, max_queue_queries=4, name="bound", observer=Obs())
    try:
        running = _hold(backend, b, QUERIES[:2])  # taken by the worker: no longer queued
        waiting = [b.submit(QUERIES[2:4], 3), b.submit(QUERIES[4:6], 3)]  # 4 queries wait: the bound
        with pytest.raises(QueueFull, match="overloaded"):
            b.submit([QUERIES[6]], 3)
        assert rejected == [1]
        backend.gate.set()
        for f in [running, *waiting]:
            assert len(f.result(10)) == 2
        backend.gate = None
        assert len(b.search(QUERIES[:9], 3)) == 9  # bigger than the bound, but the queue is empty: accepted
    finally:
        b.close()
    assert [len(q) for q, _ in backend.calls[:2]] == [2, 4]  # the waiting two coalesced, within max_queries
    assert len(backend.calls[-1][0]) == 9  # a request bigger than max_queries runs alone, unsplit


def test_async_callers_coalesce_and_cancel(index: Any) -> None:
    backend = Backend(index)
    b = DynamicBatcher(backend, window_s=0.05, max_queries=512, name="aio")

    async def main() -> list[list[list[str]]]:
        results = await asyncio.gather(*(b.search_async([QUERIES[i % 12]], 1 + i % 4) for i in range(64)))
        # a request cancelled while it waits is dropped from its batch
        backend.gate = threading.Event()
        backend.entered.clear()
        held = asyncio.ensure_future(b.search_async([QUERIES[0]], 1))
        await asyncio.to_thread(backend.entered.wait, 10)
        gone = asyncio.ensure_future(b.search_async(["never searched"], 1))
        await asyncio.sleep(0.01)
        gone.cancel()
        await asyncio.sleep(0.05)  # the cancellation reaches the batcher's future
        backend.gate.set()
        await held
        return [ids(r) for r in results]

    try:
        got = asyncio.run(main())
    finally:
        b.close()
    assert got == [ids(index.search([QUERIES[i % 12]], 1 + i % 4)) for i in range(64)]
    assert len(backend.calls) <= 1 + 64 // 8 + 1
    assert not any("never searched" in q for qs, _ in backend.calls for q in qs)


def test_close_fails_waiting_requests(index: Any) -> None:
    backend = Backend(index)
    b = DynamicBatcher(backend, window_s=0.05, name="close")
    running = _hold(backend, b, [QUERIES[0]])
    waiting = b.submit([QUERIES[1]], 3)
    closer = threading.Thread(target=b.close)
    closer.start()
    time.sleep(0.05)
    backend.gate.set()
    closer.join(10)
    assert len(running.result(10)[0]) == 3  # the batch in progress finishes
    with pytest.raises(Unavailable, match="shut down"):
        waiting.result(10)
    with pytest.raises(Unavailable):
        b.submit([QUERIES[2]], 3)


def test_bad_settings() -> None:
    for kw in ({"window_s": -1}, {"max_queries": 0}, {"max_queue_queries": 0}):
        with pytest.raises(InvalidArgument):
            DynamicBatcher(lambda q, k: [], **kw)  # type: ignore[arg-type]


def test_config_keys(tmp_path: Path) -> None:
    from s3core.config import load_config
    from s3core.errors import ConfigError

    cfg = load_config(None, overrides={"retriever": {"batch_window_ms": 0, "batch_max_queries": 64}})
    assert cfg.retriever.batch_window_ms == 0 and cfg.retriever.batch_max_queries == 64
    for bad in ({"batch_window_ms": -1}, {"batch_max_queries": 0}):
        with pytest.raises(ConfigError, match="retriever.batch_"):
            load_config(None, overrides={"retriever": bad})
