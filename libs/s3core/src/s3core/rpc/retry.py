"""Bounded retries with exponential backoff for idempotent calls (retriever searches).

A call that fails with :class:`~s3core.errors.Unavailable` (the client maps ``UNAVAILABLE`` and
``DEADLINE_EXCEEDED`` to it) is retried up to ``retries`` times, sleeping ``backoff_s``, then twice
that, ... capped at ``max_backoff_s``, with ±20 % jitter.  Any other error is raised at once: a bad
request does not get better by repeating it.  After the last retry the last error is raised.

:class:`RetryingSearch` wraps a :class:`~s3core.rpc.clients.RetrieverClient` as an episode
:data:`~s3core.search.episode.SearchFn` so a slow or restarted retriever costs time, not episodes.
After a failure it opens a fresh channel (``client_factory``), so a restarted server is reached as
soon as it listens again instead of after the old channel's reconnect backoff.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Any, Callable, Sequence, TypeVar

from s3core.errors import Unavailable
from s3core.types import Doc

__all__ = ["RetryPolicy", "call_with_retry", "RetryingSearch"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class RetryPolicy:
    """How often and how patiently to retry."""

    def __init__(self, retries: int = 8, backoff_s: float = 0.25, max_backoff_s: float = 4.0,
                 jitter: float = 0.2, retry_on: tuple[type[BaseException], ...] = (Unavailable,)) -> None:
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self.retries = int(retries)
        self.backoff_s = float(backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        self.jitter = float(jitter)
        self.retry_on = retry_on

    def delay(self, attempt: int) -> float:
        """Seconds to sleep before retry number ``attempt`` (1-based)."""
        base = min(self.max_backoff_s, self.backoff_s * (2 ** (attempt - 1)))
        return max(0.0, base * (1.0 + random.uniform(-self.jitter, self.jitter)))


def call_with_retry(
    fn: Callable[[], T],
    policy: RetryPolicy,
    *,
    what: str = "call",
    on_retry: Callable[[int, BaseException], None] | None = None,
    sleep: Callable[[float], Any] = time.sleep,
) -> T:
    """``fn()``, retried per ``policy`` on its ``retry_on`` errors; ``on_retry(attempt, error)`` runs
    before each retry's sleep."""
    attempt = 0
    while True:
        try:
            return fn()
        except policy.retry_on as exc:
            attempt += 1
            if attempt > policy.retries:
                raise
            delay = policy.delay(attempt)
            logger.warning("%s failed (%s); retry %d/%d in %.2fs", what, exc, attempt, policy.retries, delay)
            if on_retry is not None:
                on_retry(attempt, exc)
            sleep(delay)


class RetryingSearch:
    """``(queries, k) -> docs per query`` over a retriever client, with retries on ``Unavailable``.

    ``client_factory()`` builds a client with a ``search(queries, k)`` method and a ``close()``; one
    is kept and reused, and replaced by a fresh one after a failed call.  Queries go out in requests
    of at most ``max_batch`` (each retried on its own), which keeps every request under the
    retriever's ``max_queries`` and its deadline meaningful.  Thread-safe.
    """

    def __init__(self, client_factory: Callable[[], Any], policy: RetryPolicy | None = None,
                 on_retry: Callable[[int, BaseException], None] | None = None, max_batch: int = 256) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.max_batch = int(max_batch)
        self._factory = client_factory
        self.policy = policy or RetryPolicy()
        self._on_retry = on_retry
        self._client: Any = None
        self._lock = threading.Lock()
        self.retries = 0  # retries made so far (all calls)

    def _get(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = self._factory()
            return self._client

    def _drop(self, client: Any) -> None:
        with self._lock:
            if self._client is client:
                self._client = None
            else:
                return
        try:
            client.close()
        except Exception:  # noqa: BLE001 - closing a broken channel must not mask the real error
            pass

    def _once(self, queries: list[str], k: int) -> list[list[Doc]]:
        client = self._get()
        try:
            return client.search(queries, k)
        except self.policy.retry_on:
            self._drop(client)
            raise

    def __call__(self, queries: Sequence[str], k: int) -> list[list[Doc]]:
        qs = list(queries)

        def retried(attempt: int, exc: BaseException) -> None:
            self.retries += 1
            if self._on_retry is not None:
                self._on_retry(attempt, exc)

        out: list[list[Doc]] = []
        for start in range(0, len(qs), self.max_batch):
            chunk = qs[start:start + self.max_batch]
            out.extend(call_with_retry(lambda c=chunk: self._once(c, k), self.policy,
                                       what=f"search of {len(chunk)} queries", on_retry=retried))
        return out

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()
