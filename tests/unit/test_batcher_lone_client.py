"""The dynamic batch window costs a lone client nothing (issue 17 item 11): a request that arrives
when nobody else is waiting, after batches of one, runs at once instead of waiting the window; once
requests do arrive together the window applies again and they coalesce."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from s3core.retrieval.batching import DynamicBatcher


class Counting:
    def __init__(self) -> None:
        self.calls: list[int] = []
        self.lock = threading.Lock()

    def __call__(self, queries: list[str], k: int) -> list[list[str]]:
        with self.lock:
            self.calls.append(len(queries))
        time.sleep(0.002)
        return [[f"{q}#{i}" for i in range(k)] for q in queries]


def test_a_lone_client_does_not_wait_the_window() -> None:
    backend = Counting()
    b = DynamicBatcher(backend, window_s=0.25, name="lone")
    try:
        t0 = time.perf_counter()
        for i in range(8):
            assert b.search([f"q{i}"], 2) == [[f"q{i}#0", f"q{i}#1"]]
        elapsed = time.perf_counter() - t0
    finally:
        b.close()
    # waiting the window each time would take 8 x 0.25 s = 2 s
    assert elapsed < 0.8, f"8 lone searches took {elapsed:.2f} s with a 0.25 s window"
    assert backend.calls == [1] * 8


def test_the_window_still_coalesces_requests_that_arrive_together() -> None:
    backend = Counting()
    b = DynamicBatcher(backend, window_s=0.1, name="burst")
    n = 32
    start = threading.Barrier(n)

    def one(i: int) -> list[list[str]]:
        start.wait()
        return b.search([f"q{i}"], 1)

    try:
        b.search(["warm"], 1)  # a lone request first: the burst that follows must still coalesce
        with ThreadPoolExecutor(n) as ex:
            got = list(ex.map(one, range(n)))
    finally:
        b.close()
    assert got == [[[f"q{i}#0"]] for i in range(n)]
    assert len(backend.calls) - 1 <= 4, f"{len(backend.calls) - 1} backend calls for {n} requests at once"
