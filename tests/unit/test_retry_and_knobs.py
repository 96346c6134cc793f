"""Retry policy of the searcher's retrieval calls, and the SearchKnobs <-> SearchConfig converters."""

import pytest

from s3core.config import SearchConfig
from s3core.errors import InvalidArgument, Unavailable
from s3core.rpc.convert import search_knobs_from_pb, search_knobs_to_pb
from s3core.rpc.retry import RetryingSearch, RetryPolicy, call_with_retry
from s3core.types import Doc


def test_retries_unavailable_then_succeeds():
    calls, slept, seen = [], [], []

    def fn():
        calls.append(1)
        if len(calls) < 3:
            raise Unavailable("down")
        return "ok"

    out = call_with_retry(fn, RetryPolicy(retries=5, backoff_s=0.1, jitter=0.0), sleep=slept.append,
                          on_retry=lambda a, e: seen.append(a))
    assert out == "ok" and len(calls) == 3
    assert slept == [0.1, 0.2]  # exponential backoff
    assert seen == [1, 2]


def test_gives_up_after_retries_and_never_retries_bad_input():
    calls = []

    def down():
        calls.append(1)
        raise Unavailable("down")

    with pytest.raises(Unavailable):
        call_with_retry(down, RetryPolicy(retries=2, jitter=0.0), sleep=lambda s: None)
    assert len(calls) == 3

    bad = []

    def invalid():
        bad.append(1)
        raise InvalidArgument("k must be >= 1")

    with pytest.raises(InvalidArgument):
        call_with_retry(invalid, RetryPolicy(retries=5), sleep=lambda s: None)
    assert len(bad) == 1


def test_backoff_is_capped():
    p = RetryPolicy(backoff_s=1.0, max_backoff_s=3.0, jitter=0.0)
    assert [p.delay(a) for a in (1, 2, 3, 4, 5)] == [1.0, 2.0, 3.0, 3.0, 3.0]


class FlakyClient:
    instances = 0

    def __init__(self, fail_first: bool) -> None:
        FlakyClient.instances += 1
        self.fail_first = fail_first
        self.closed = False
        self.batches = []

    def search(self, queries, k):
        self.batches.append(len(queries))
        if self.fail_first:
            self.fail_first = False
            raise Unavailable("restarting")
        return [[Doc(q, q, q, 1.0)] * k for q in queries]

    def close(self):
        self.closed = True


def test_retrying_search_replaces_a_broken_client_and_chunks():
    made = []

    def factory():
        c = FlakyClient(fail_first=not made)
        made.append(c)
        return c

    rs = RetryingSearch(factory, RetryPolicy(retries=3, backoff_s=0.0, jitter=0.0), max_batch=4)
    out = rs([f"q{i}" for i in range(10)], 2)
    assert [d[0].id for d in out] == [f"q{i}" for i in range(10)]
    assert all(len(d) == 2 for d in out)
    assert rs.retries == 1
    assert made[0].closed and len(made) == 2  # a fresh client after the failure
    assert made[1].batches == [4, 4, 2]  # every request at most max_batch queries


def test_knobs_round_trip_and_defaults():
    cfg = SearchConfig(initial_k=2, retrieve_k=5, select_max=2, max_turns=4, max_new_tokens=64, max_obs_tokens=300)
    pb = search_knobs_to_pb(cfg, temperature=0.7, n=3, seed=9)
    back, temp, n, seed = search_knobs_from_pb(pb, SearchConfig())
    assert (back.initial_k, back.retrieve_k, back.select_max, back.max_turns) == (2, 5, 2, 4)
    assert (back.max_new_tokens, back.max_obs_tokens) == (64, 300)
    assert (temp, n, seed) == (pytest.approx(0.7), 3, 9)
    # knobs left at 0 take the server's defaults
    partial = search_knobs_to_pb({"retrieve_k": 3})
    back, temp, _, _ = search_knobs_from_pb(partial, SearchConfig(), train=True)
    assert back.retrieve_k == 3 and back.select_max == SearchConfig().select_max
    assert temp == pytest.approx(SearchConfig().temperature_train)


def test_bad_knobs_are_refused_before_any_rpc():
    with pytest.raises(InvalidArgument):
        search_knobs_to_pb({"select_max": 0})
    pb = search_knobs_to_pb({"retrieve_k": 3})
    pb.retrieve_k = -1
    with pytest.raises(InvalidArgument, match="retrieve_k"):
        search_knobs_from_pb(pb, SearchConfig())


def test_overload_is_retried_but_an_oversized_message_is_not() -> None:
    """RESOURCE_EXHAUSTED from a concurrency cap or a full queue is transient (a ResourceExhausted, which
    retry layers treat as Unavailable); the same code for a message over the size limit is not."""
    import grpc

    from s3core.errors import ResourceExhausted, S3Error, Unavailable
    from s3core.rpc.errors import from_rpc_error, status_for

    class _Err(grpc.RpcError):
        def __init__(self, code: grpc.StatusCode, details: str) -> None:
            self._c, self._d = code, details

        def code(self) -> grpc.StatusCode:
            return self._c

        def details(self) -> str:
            return self._d

    busy = from_rpc_error(_Err(grpc.StatusCode.RESOURCE_EXHAUSTED, "retriever overloaded"), "Search")
    assert isinstance(busy, ResourceExhausted) and isinstance(busy, Unavailable)
    big = from_rpc_error(_Err(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              "Received message larger than max (70000000 vs. 67108864)"), "Search")
    assert isinstance(big, S3Error) and not isinstance(big, Unavailable)
    assert status_for(ResourceExhausted("x")) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert status_for(Unavailable("x")) == grpc.StatusCode.UNAVAILABLE
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise busy
        return "ok"

    from s3core.rpc.retry import RetryPolicy, call_with_retry

    assert call_with_retry(flaky, RetryPolicy(retries=4, backoff_s=0.001, max_backoff_s=0.002), what="Search") == "ok"
    assert len(calls) == 3
