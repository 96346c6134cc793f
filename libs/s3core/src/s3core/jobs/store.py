"""The job store in Redis: one hash per job, an event stream per job, and sorted-set indexes.

Keys (``ns`` = the namespace, default ``s3``)::

    <ns>:job:<id>                 hash: the JobRecord fields (JSON for labels / artifacts / run_record)
    <ns>:job:<id>:events          stream: state changes, progress, log lines (XADD; WatchJob XREADs it)
    <ns>:jobs:all                 zset: id -> created_at
    <ns>:jobs:ks:<kind>:<state>   zset: id -> created_at, one per kind and state (listing, counts, queue)
    <ns>:jobs:req:<request_id>    string: the job id a request id created (idempotent submit)

Every change of a job is one ``WATCH``/``MULTI``/``EXEC`` transaction over its hash (retried when
another client changed the hash in between), so two controllers, a controller and a worker, or a
crash half-way never leave the hash, the indexes and the event stream disagreeing.  Writes of a
worker name the attempt they belong to and are refused (``False`` / ``None``) once the job is no
longer running that attempt.

Any Redis connection failure raises :class:`~s3core.errors.Unavailable` naming the URL; the client
reconnects by itself on the next call once Redis is back.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from s3core.errors import FailedPrecondition, InvalidArgument, NotFound, S3Error, Unavailable
from s3core.jobs.model import (
    CANCELLED,
    FAILED,
    FINAL_STATES,
    KINDS,
    MAX_RETRY_DELAY_S,
    PENDING,
    RUNNING,
    STATES,
    SUCCEEDED,
    JobEvent,
    JobRecord,
    check_transition,
)

EVENTS_MAXLEN = 10000  # events kept per job (approximate trimming)
MAX_LOG_CHARS = 4000
_REDIS_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


def connect_redis(url: str, timeout: float = 2.0) -> redis.Redis:
    """A decoded-string client for ``url`` with short timeouts (no PING: callers decide)."""
    if not url:
        raise InvalidArgument("redis URL is empty (e.g. redis://127.0.0.1:6390/0)")
    from s3core.runtime.redis_server import auth_kwargs

    try:
        return redis.Redis.from_url(
            url, decode_responses=True, socket_connect_timeout=timeout, socket_timeout=max(10.0, 4 * timeout),
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2), health_check_interval=15,
            **auth_kwargs(url),  # the embedded Redis' password when a token is configured
        )
    except ValueError as exc:
        raise InvalidArgument(f"invalid redis URL {url!r}: {exc}") from None


class JobStore:
    def __init__(self, client: Any, namespace: str = "s3", url: str = "") -> None:
        if not namespace or ":" in namespace or "*" in namespace:
            raise InvalidArgument(f"namespace must be a non-empty word without ':' or '*', got {namespace!r}")
        self.r = client
        self.ns = namespace
        self.url = url or "redis"

    @classmethod
    def from_url(cls, url: str, namespace: str = "s3") -> "JobStore":
        return cls(connect_redis(url), namespace=namespace, url=url)

    # -- keys -------------------------------------------------------------------------------------
    def job_key(self, job_id: str) -> str:
        return f"{self.ns}:job:{job_id}"

    def events_key(self, job_id: str) -> str:
        return f"{self.ns}:job:{job_id}:events"

    def _ks(self, kind: str, state: str) -> str:
        return f"{self.ns}:jobs:ks:{kind}:{state}"

    def _all(self) -> str:
        return f"{self.ns}:jobs:all"

    def _req(self, request_id: str) -> str:
        return f"{self.ns}:jobs:req:{request_id}"

    # -- plumbing -----------------------------------------------------------------------------------
    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except _REDIS_ERRORS as exc:
            raise Unavailable(f"redis at {self.url} unreachable: {exc} (during {what})") from None
        except redis.exceptions.RedisError as exc:
            raise S3Error(f"redis at {self.url}: {what} failed: {exc}") from None

    def ping(self) -> None:
        self._call("PING", self.r.ping)

    def _transact(self, what: str, watch: list[str], fn: Callable[[Any], Any]) -> Any:
        return self._call(what, self.r.transaction, fn, *watch, value_from_callable=True)

    def _read(self, pipe: Any, job_id: str) -> JobRecord:
        h = pipe.hgetall(self.job_key(job_id))
        if not h:
            raise NotFound(f"no job {job_id!r}")
        return JobRecord.from_hash(h)

    def _write(self, pipe: Any, old: JobRecord | None, new: JobRecord, event: JobEvent | None = None) -> None:
        """Queue (inside MULTI) the hash fields that changed, the index moves and the event."""
        new.updated_at = time.time()
        h_new = new.to_hash()
        h_old = old.to_hash() if old is not None else {}
        changed = {k: v for k, v in h_new.items() if h_old.get(k) != v}
        if changed:
            pipe.hset(self.job_key(new.id), mapping=changed)
        if old is None:
            pipe.zadd(self._all(), {new.id: new.created_at})
            pipe.zadd(self._ks(new.kind, new.state), {new.id: new.created_at})
        elif old.state != new.state:
            pipe.zrem(self._ks(old.kind, old.state), new.id)
            pipe.zadd(self._ks(new.kind, new.state), {new.id: new.created_at})
        if event is not None:
            pipe.xadd(self.events_key(new.id), event.to_fields(), maxlen=EVENTS_MAXLEN, approximate=True)

    @staticmethod
    def _state_event(rec: JobRecord, reason: str = "") -> JobEvent:
        return JobEvent(id="", job_id=rec.id, time=time.time(), type="state", state=rec.state, reason=reason,
                        attempt=rec.attempts)

    # -- create / read ------------------------------------------------------------------------------
    def create(self, rec: JobRecord) -> tuple[JobRecord, bool]:
        """Store a new pending job; with a ``request_id`` already used, return that job instead.

        Returns ``(job, created)``.  A clash of job ids raises :class:`FailedPrecondition`.
        """
        key = self.job_key(rec.id)
        watch = [key] + ([self._req(rec.request_id)] if rec.request_id else [])

        def run(pipe: Any) -> tuple[JobRecord, bool]:
            if rec.request_id:
                existing = pipe.get(self._req(rec.request_id))
                if existing:
                    h = pipe.hgetall(self.job_key(existing))
                    if h:
                        return JobRecord.from_hash(h), False
            if pipe.exists(key):
                raise FailedPrecondition(f"job id {rec.id} already exists")
            pipe.multi()
            if rec.request_id:
                pipe.set(self._req(rec.request_id), rec.id)
            self._write(pipe, None, rec, self._state_event(rec, rec.reason))
            return rec, True

        return self._transact("create job", watch, run)

    def get(self, job_id: str) -> JobRecord:
        if not job_id:
            raise InvalidArgument("job id is empty")
        h = self._call("HGETALL", self.r.hgetall, self.job_key(job_id))
        if not h:
            raise NotFound(f"no job {job_id!r}")
        return JobRecord.from_hash(h)

    def get_many(self, job_ids: list[str], chunk: int = 500) -> Iterator[JobRecord]:
        """The jobs of ``job_ids`` in that order, read in pipelined chunks (one round trip per ``chunk``
        jobs, not one per job); ids that no longer exist are skipped."""
        for start in range(0, len(job_ids), chunk):
            pipe = self.r.pipeline(transaction=False)
            for job_id in job_ids[start:start + chunk]:
                pipe.hgetall(self.job_key(job_id))
            for h in self._call("HGETALL", pipe.execute):
                if h:
                    yield JobRecord.from_hash(h)

    def find_request(self, request_id: str) -> JobRecord | None:
        job_id = self._call("GET", self.r.get, self._req(request_id))
        if not job_id:
            return None
        try:
            return self.get(job_id)
        except NotFound:
            return None

    def list(self, kind: str = "", state: str = "", labels: dict[str, str] | None = None,
             limit: int = 100) -> list[JobRecord]:
        """Jobs, newest first, filtered by kind, state and labels (every pair must match)."""
        kinds = [kind] if kind else list(KINDS)
        states = [state] if state else list(STATES)
        labels = labels or {}
        stop = -1 if labels else max(0, limit - 1)
        pipe = self.r.pipeline(transaction=False)
        for k in kinds:
            for s in states:
                pipe.zrevrange(self._ks(k, s), 0, stop, withscores=True)
        scored: dict[str, float] = {}
        for part in self._call("ZREVRANGE", pipe.execute):
            for job_id, score in part:
                scored[job_id] = score
        ids = sorted(scored, key=lambda i: (-scored[i], i))
        out: list[JobRecord] = []
        for rec in self.get_many(ids, chunk=200):
            if rec.kind not in kinds or rec.state not in states:
                continue  # moved since the index was read
            if any(rec.labels.get(k) != v for k, v in labels.items()):
                continue
            out.append(rec)
            if limit and len(out) >= limit:
                return out
        return out

    def ids_in_state(self, state: str) -> list[str]:
        """Ids of every job in ``state``, oldest first (the pending queue is FIFO)."""
        pipe = self.r.pipeline(transaction=False)
        for k in KINDS:
            pipe.zrange(self._ks(k, state), 0, -1, withscores=True)
        scored = [(score, job_id) for part in self._call("ZRANGE", pipe.execute) for job_id, score in part]
        return [job_id for _, job_id in sorted(scored)]

    def counts(self) -> dict[tuple[str, str], int]:
        pipe = self.r.pipeline(transaction=False)
        pairs = [(k, s) for k in KINDS for s in STATES]
        for k, s in pairs:
            pipe.zcard(self._ks(k, s))
        return dict(zip(pairs, (int(n) for n in self._call("ZCARD", pipe.execute))))

    # -- the state machine ----------------------------------------------------------------------------
    def claim(self, job_id: str, owner: str, now: float | None = None) -> JobRecord | None:
        """pending -> running as a new attempt owned by ``owner``; ``None`` when it is not pending."""
        key = self.job_key(job_id)

        def run(pipe: Any) -> JobRecord | None:
            old = self._read(pipe, job_id)
            if old.state != PENDING:
                return None
            t = now or time.time()
            new = replace(old, state=RUNNING, attempts=old.attempts + 1, owner=owner, attempt_started_at=t,
                          started_at=old.started_at or t, worker="", worker_ref="", worker_host="", worker_pid=0,
                          worker_start="",
                          heartbeat_at=0.0, heartbeat_seq=0, progress=0.0, progress_message="", reason="")
            pipe.multi()
            self._write(pipe, old, new, self._state_event(
                new, f"attempt {new.attempts} of {new.max_attempts} started by {owner}"))
            return new

        return self._transact("claim job", [key], run)

    def register(self, rec: JobRecord, worker: str, now: float | None = None) -> tuple[JobRecord, bool]:
        """A self-started worker's job: create it running (attempt 1), or claim a new attempt of the
        unfinished job its ``request_id`` names.  Returns ``(job, created)``."""
        if not rec.request_id:
            raise InvalidArgument("request_id is required to register a job (e.g. the Kubernetes Job's uid)")
        key = self.job_key(rec.id)
        req = self._req(rec.request_id)

        def run(pipe: Any) -> tuple[JobRecord, bool]:
            t = now or time.time()
            existing_id = pipe.get(req)
            if existing_id:
                pipe.watch(self.job_key(existing_id))
                old = self._read(pipe, existing_id)
                if old.final:
                    raise FailedPrecondition(f"job {old.id} (request {rec.request_id}) already {old.state}: "
                                             f"{old.reason or 'no reason recorded'}")
                attempt = old.attempts + 1
                new = replace(old, state=RUNNING, attempts=attempt, max_attempts=max(old.max_attempts, attempt),
                              attempt_started_at=t, worker=worker, owner="", worker_ref="", worker_host="", worker_pid=0,
                              worker_start="", heartbeat_at=0.0, heartbeat_seq=0, cancel_requested="",
                              progress=0.0, progress_message="")
                pipe.multi()
                self._write(pipe, old, new, self._state_event(new, f"attempt {attempt} registered by {worker}"))
                return new, False
            if pipe.exists(key):
                raise FailedPrecondition(f"job id {rec.id} already exists")
            new = replace(rec, state=RUNNING, attempts=1, max_attempts=max(1, rec.max_attempts), started_at=t,
                          attempt_started_at=t, worker=worker, launcher="worker")
            pipe.multi()
            pipe.set(req, rec.id)
            self._write(pipe, None, new, self._state_event(new, f"registered by {worker}"))
            return new, True

        return self._transact("register job", [key, req], run)

    def _fenced(self, what: str, job_id: str, attempt: int,
                change: Callable[[JobRecord], tuple[JobRecord, JobEvent | None] | None]) -> JobRecord | None:
        """Apply ``change`` when the job is running ``attempt``; ``None`` when it is not (fenced out)."""
        key = self.job_key(job_id)

        def run(pipe: Any) -> JobRecord | None:
            old = self._read(pipe, job_id)
            if old.state != RUNNING or old.attempts != attempt:
                return None
            res = change(old)
            if res is None:
                return None
            new, event = res
            pipe.multi()
            self._write(pipe, old, new, event)
            return new

        return self._transact(what, [key], run)

    def set_worker(self, job_id: str, attempt: int, *, worker: str, ref: str | None = None, host: str | None = None,
                   pid: int | None = None, start: str | None = None, artifacts: dict[str, str] | None = None,
                   note: str = "") -> JobRecord | None:
        """Record who runs ``attempt`` (fields left None keep their value); ``note`` goes to the log."""
        def change(old: JobRecord) -> tuple[JobRecord, JobEvent]:
            new = replace(old, worker=worker, artifacts={**old.artifacts, **(artifacts or {})})
            if ref is not None:
                new.worker_ref = ref
            if host is not None:
                new.worker_host = host
            if pid is not None:
                new.worker_pid = int(pid)
            if start is not None:
                new.worker_start = start
            ev = JobEvent(id="", job_id=job_id, time=time.time(), type="log", message=note or f"worker: {worker}",
                          attempt=attempt)
            return new, ev

        return self._fenced("set worker", job_id, attempt, change)

    def heartbeat(self, job_id: str, attempt: int, now: float | None = None) -> tuple[bool, str]:
        """Record a heartbeat; ``(still ours, cancel request or "")``.  ``(False, "")`` once fenced out."""
        def change(old: JobRecord) -> tuple[JobRecord, None]:
            return replace(old, heartbeat_at=now or time.time(), heartbeat_seq=old.heartbeat_seq + 1), None

        rec = self._fenced("heartbeat", job_id, attempt, change)
        return (rec is not None, rec.cancel_requested if rec is not None else "")

    def progress(self, job_id: str, attempt: int, value: float, message: str = "") -> bool:
        value = min(1.0, max(0.0, float(value)))

        def change(old: JobRecord) -> tuple[JobRecord, JobEvent]:
            new = replace(old, progress=value, progress_message=message[:500])
            ev = JobEvent(id="", job_id=job_id, time=time.time(), type="progress", progress=value,
                          message=message[:500], attempt=attempt)
            return new, ev

        return self._fenced("progress", job_id, attempt, change) is not None

    def log(self, job_id: str, attempt: int, line: str) -> bool:
        """Append a log line of ``attempt`` (dropped when the job has moved on)."""
        state, attempts = self._call("HMGET", self.r.hmget, self.job_key(job_id), ["state", "attempts"])
        if state != RUNNING or int(attempts or 0) != attempt:
            return False
        ev = JobEvent(id="", job_id=job_id, time=time.time(), type="log", message=line[:MAX_LOG_CHARS],
                      attempt=attempt)
        self._call("XADD", self.r.xadd, self.events_key(job_id), ev.to_fields(), maxlen=EVENTS_MAXLEN,
                   approximate=True)
        return True

    def add_note(self, job_id: str, line: str) -> None:
        """A log line from the controller itself (re-attached, cancel sent, ...), whatever the state."""
        ev = JobEvent(id="", job_id=job_id, time=time.time(), type="log", message=line[:MAX_LOG_CHARS])
        self._call("XADD", self.r.xadd, self.events_key(job_id), ev.to_fields(), maxlen=EVENTS_MAXLEN,
                   approximate=True)

    def finish(self, job_id: str, attempt: int, outcome: str, reason: str = "", *,
               artifacts: dict[str, str] | None = None, run_record: dict[str, Any] | None = None,
               retryable: bool = True, now: float | None = None) -> JobRecord | None:
        """End ``attempt``: succeeded, cancelled, or failed -- which goes back to pending when
        ``retryable`` and attempts are left.  A pending cancel request turns a failure into
        cancelled (or into failed with the timeout as the reason).  ``None`` when fenced out."""
        if outcome not in FINAL_STATES:
            raise InvalidArgument(f"outcome must be one of {', '.join(sorted(FINAL_STATES))}, got {outcome!r}")

        def change(old: JobRecord) -> tuple[JobRecord, JobEvent]:
            t = now or time.time()
            state, why = outcome, reason
            if old.cancel_requested and outcome != SUCCEEDED:
                timed_out = old.cancel_requested.startswith("timeout")
                state = FAILED if timed_out else CANCELLED
                why = old.cancel_requested.split(": ", 1)[-1] if old.cancel_requested else reason
                if reason and reason not in why:
                    why = f"{why} ({reason})"
                retry = False
            else:
                retry = outcome == FAILED and retryable and old.attempts < old.max_attempts
            new = replace(old, artifacts={**old.artifacts, **(artifacts or {})},
                          run_record=run_record if run_record is not None else old.run_record)
            if retry:
                delay = min(MAX_RETRY_DELAY_S, old.retry_delay_s * 2 ** max(0, old.attempts - 1))
                new.state = PENDING
                new.not_before = t + delay
                new.reason = (f"attempt {old.attempts} failed: {why}; retrying "
                              f"(attempt {old.attempts + 1} of {old.max_attempts}"
                              + (f", in {delay:g}s)" if delay else ")"))
                new.created_at = old.created_at
            else:
                new.state = state
                new.finished_at = t
                if state == FAILED and old.attempts > 1:
                    why = f"attempt {old.attempts} of {old.max_attempts} failed: {why}"
                new.reason = why
                if state == SUCCEEDED:
                    new.progress = 1.0
            check_transition(job_id, old.state, new.state)
            return new, self._state_event(new, new.reason)

        return self._fenced(f"finish job ({outcome})", job_id, attempt, change)

    def fail_pending(self, job_id: str, reason: str) -> JobRecord | None:
        """pending -> failed (a registered job whose launcher did not start its next attempt)."""
        key = self.job_key(job_id)

        def run(pipe: Any) -> JobRecord | None:
            old = self._read(pipe, job_id)
            if old.state != PENDING:
                return None
            new = replace(old, state=FAILED, reason=reason, finished_at=time.time())
            pipe.multi()
            self._write(pipe, old, new, self._state_event(new, reason))
            return new

        return self._transact("fail pending job", [key], run)

    def request_cancel(self, job_id: str, reason: str = "cancelled by request") -> JobRecord:
        """Cancel a pending job now; flag a running one (its worker or backend stops it); leave a
        finished one as it is."""
        key = self.job_key(job_id)

        def run(pipe: Any) -> JobRecord:
            old = self._read(pipe, job_id)
            if old.final:
                return old
            if old.state == PENDING:
                new = replace(old, state=CANCELLED, reason=reason.split(": ", 1)[-1], finished_at=time.time())
                pipe.multi()
                self._write(pipe, old, new, self._state_event(new, new.reason))
                return new
            if old.cancel_requested:
                return old
            tag = reason if reason.startswith(("timeout: ", "user: ")) else f"user: {reason}"
            new = replace(old, cancel_requested=tag)
            ev = JobEvent(id="", job_id=job_id, time=time.time(), type="log",
                          message=f"cancel requested: {tag.split(': ', 1)[-1]}", attempt=old.attempts)
            pipe.multi()
            self._write(pipe, old, new, ev)
            return new

        return self._transact("cancel job", [key], run)

    # -- events ---------------------------------------------------------------------------------------
    def events(self, job_id: str, after: str = "", block_ms: int = 0, count: int = 500) -> list[JobEvent]:
        """Events after the stream id ``after`` ("" = from the first); waits up to ``block_ms`` for
        new ones when there are none (0 = don't wait)."""
        key = self.events_key(job_id)
        kwargs: dict[str, Any] = {"count": count}
        if block_ms > 0:
            kwargs["block"] = int(block_ms)
        res = self._call("XREAD", self.r.xread, {key: after or "0-0"}, **kwargs)
        out: list[JobEvent] = []
        for _stream, entries in res or []:
            for event_id, fields in entries:
                out.append(JobEvent.from_fields(event_id, job_id, fields))
        return out

    def delete(self, job_ids: Iterable[str]) -> int:
        """Remove finished jobs entirely (hash, events, indexes, request key); returns how many."""
        n = 0
        for job_id in job_ids:
            key = self.job_key(job_id)

            def run(pipe: Any, job_id: str = job_id, key: str = key) -> bool:
                old = self._read(pipe, job_id)
                if not old.final:
                    raise FailedPrecondition(f"job {job_id} is {old.state}; only finished jobs can be deleted")
                pipe.multi()
                pipe.delete(key, self.events_key(job_id))
                pipe.zrem(self._all(), job_id)
                pipe.zrem(self._ks(old.kind, old.state), job_id)
                if old.request_id:
                    pipe.delete(self._req(old.request_id))
                return True

            if self._transact("delete job", [key], run):
                n += 1
        return n
