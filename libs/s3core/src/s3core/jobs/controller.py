"""The controller's logic, without gRPC: submit, register, cancel, and the reconcile loop.

``reconcile_once`` is idempotent and safe to run from several controllers at once (every change is
an atomic, fenced transition in the job store).  Each round it

1. checks every running job: its worker's liveness (by the backend: pid and host, or the Kubernetes
   object), its heartbeats (timed with this controller's own clock), its timeout and cancel request;
   a dead or lost worker fails the attempt -- retried while ``run.max_attempts`` allows -- and a
   worker that ignores a cancel for ``cancel_grace_s`` is killed;
2. claims pending jobs of its backend, oldest first, up to ``max_running``, and launches them.

A restarted controller starts with no memory: it finds the running jobs in Redis, re-attaches to
their workers (noting it in each job's log), and gives each a full heartbeat timeout before
judging it.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import yaml

from s3core.errors import ConfigError, InvalidArgument, S3Error, Unavailable
from s3core.jobs.backends import Backend, WorkerStatus
from s3core.jobs.model import BACKENDS, FAILED, FINAL_STATES, KINDS, PENDING, RUNNING, JobRecord
from s3core.jobs.spec import JobSpec, parse_spec, validate_labels
from s3core.jobs.store import JobStore

logger = logging.getLogger(__name__)


@dataclass
class ControllerSettings:
    max_running: int = 4  # running attempts of this controller's backend at once (0 = no limit)
    heartbeat_timeout_s: float = 30.0  # no heartbeat for this long -> the worker is lost (or hung: killed)
    start_timeout_s: float = 120.0  # a launched worker must send its first heartbeat within this
    cancel_grace_s: float = 60.0  # after SIGTERM / delete, how long a worker may take to stop
    reconcile_interval_s: float = 1.0


class ControllerHooks:
    """Observers of what the controller does (the service maps them to Prometheus metrics)."""

    def submitted(self, kind: str, result: str) -> None:  # result: created | duplicate | invalid | validated
        pass

    def transition(self, kind: str, state: str) -> None:
        pass

    def launched(self, backend: str, ok: bool) -> None:
        pass

    def worker_lost(self, kind: str) -> None:
        pass

    def counts(self, counts: dict[tuple[str, str], int]) -> None:
        pass

    def redis(self, up: bool) -> None:
        pass

    def reconciled(self, seconds: float) -> None:
        pass


def metric_kind(spec_yaml: str, kind: str = "") -> str:
    """The ``kind`` label a rejected submission is counted under: the request's kind, else the spec's
    top-level ``kind:`` -- when it is one of the job kinds -- else ``"unknown"`` (a missing, misspelled
    or unreadable kind; the label's values stay bounded whatever clients send)."""
    if kind in KINDS:
        return kind
    try:
        data = yaml.safe_load(spec_yaml) if spec_yaml and spec_yaml.strip() else None
    except yaml.YAMLError:
        return "unknown"
    spec_kind = data.get("kind") if isinstance(data, dict) else None
    return spec_kind if isinstance(spec_kind, str) and spec_kind in KINDS else "unknown"


def new_job_id(kind: str) -> str:
    return f"{kind}-{secrets.token_hex(4)}"


class JobController:
    def __init__(self, store: JobStore, backend: Backend, settings: ControllerSettings | None = None,
                 hooks: ControllerHooks | None = None, controller_id: str = "") -> None:
        self.store = store
        self.backend = backend
        self.settings = settings or ControllerSettings()
        self.hooks = hooks or ControllerHooks()
        self.id = controller_id or f"controller {socket.gethostname()}:{os.getpid()}"
        self.wake = threading.Event()
        # job id -> (attempt, heartbeat_seq, monotonic time the pair last changed)
        self._seen: dict[str, tuple[int, int, float]] = {}
        self._stop_sent: dict[tuple[str, int], float] = {}
        self._running_kinds: dict[str, str] = {}

    # -- requests ----------------------------------------------------------------------------------------
    def submit(self, spec_yaml: str, kind: str = "", labels: dict[str, str] | None = None, request_id: str = "",
               workdir: str = "", validate_only: bool = False) -> tuple[JobRecord, bool]:
        """Validate and store a pending job.  Returns ``(job, created)``; a known ``request_id``
        returns its job with ``created=False``.  ``validate_only`` stores nothing (job id "")."""
        if request_id and not validate_only:
            existing = self.store.find_request(request_id)
            if existing is not None:
                self.hooks.submitted(existing.kind, "duplicate")
                return existing, False
        try:
            labels = validate_labels(dict(labels or {}))
            spec = parse_spec(spec_yaml, kind)
            workdir = os.path.abspath(workdir) if workdir else os.getcwd()
            self.backend.validate(spec, workdir)
        except InvalidArgument:
            self.hooks.submitted(metric_kind(spec_yaml, kind), "invalid")
            raise
        rec = JobRecord(id="", kind=spec.kind, state=PENDING, spec_yaml=spec_yaml, labels=labels,
                        max_attempts=spec.run.max_attempts, created_at=time.time(), backend=self.backend.name,
                        request_id=request_id, workdir=workdir, timeout_s=spec.run.timeout_s,
                        retry_delay_s=spec.run.retry_delay_s, reason="submitted")
        if validate_only:
            self.hooks.submitted(spec.kind, "validated")
            return rec, False
        for _ in range(5):
            rec.id = new_job_id(spec.kind)
            try:
                stored, created = self.store.create(rec)
                break
            except S3Error as exc:
                if "already exists" not in str(exc):
                    raise
        else:  # pragma: no cover - 2^32 ids
            raise S3Error("could not allocate a job id")
        self.hooks.submitted(stored.kind, "created" if created else "duplicate")
        if created:
            self.hooks.transition(stored.kind, PENDING)
            logger.info("job %s (%s) submitted", stored.id, stored.kind)
            self.wake.set()
        return stored, created

    def register(self, spec_yaml: str, kind: str = "", labels: dict[str, str] | None = None, request_id: str = "",
                 worker: str = "", backend: str = "", workdir: str = "") -> JobRecord:
        backend = backend or "external"
        if backend not in BACKENDS or backend == "local":
            raise InvalidArgument(f"backend of a registered job must be kubernetes or external, got {backend!r}")
        if not request_id:
            raise InvalidArgument("request_id is required to register a job (e.g. the Kubernetes Job's uid)")
        if not worker:
            raise InvalidArgument("worker is required: who runs the job (e.g. 'pod s3/eval-job-x7k2p')")
        try:
            labels = validate_labels(dict(labels or {}))
            spec = parse_spec(spec_yaml, kind)
        except InvalidArgument:
            self.hooks.submitted(metric_kind(spec_yaml, kind), "invalid")
            raise
        rec = JobRecord(id=new_job_id(spec.kind), kind=spec.kind, spec_yaml=spec_yaml, labels=labels,
                        max_attempts=spec.run.max_attempts, created_at=time.time(), backend=backend,
                        request_id=request_id, workdir=workdir, timeout_s=spec.run.timeout_s,
                        retry_delay_s=spec.run.retry_delay_s)
        job, created = self.store.register(rec, worker)
        self.hooks.submitted(job.kind, "registered" if created else "re-registered")
        self.hooks.transition(job.kind, RUNNING)
        logger.info("job %s (%s) %s by %s, attempt %d", job.id, job.kind, "registered" if created else "re-claimed",
                    worker, job.attempts)
        return job

    def cancel(self, job_id: str, reason: str = "") -> JobRecord:
        job = self.store.request_cancel(job_id, reason or "cancelled by request")
        if job.state in FINAL_STATES and job.finished_at and time.time() - job.finished_at < 1:
            self.hooks.transition(job.kind, job.state)
        self.wake.set()
        return job

    # -- the loop ------------------------------------------------------------------------------------------
    def reconcile_once(self) -> None:
        t0 = time.perf_counter()
        reap = getattr(self.backend, "reap", None)
        if callable(reap):  # exited workers are collected every pass, running jobs or not: no zombies
            reap()
        running_ids = self.store.ids_in_state(RUNNING)
        mine_running = 0
        now_running: dict[str, str] = {}
        for job in self.store.get_many(running_ids):  # pipelined: one round trip per 500 jobs
            if job.state != RUNNING:
                continue
            now_running[job.id] = job.kind
            if self._check_running(job) and job.backend == self.backend.name:
                mine_running += 1
        self._observe_finished(now_running)
        for job in self.store.get_many(self.store.ids_in_state(PENDING)):
            job_id = job.id
            if job.state != PENDING:
                continue
            if job.launcher != "controller":
                self._check_self_launched(job)
                continue
            if self.settings.max_running and mine_running >= self.settings.max_running:
                continue
            if job.backend != self.backend.name or job.not_before > time.time():
                continue
            claimed = self.store.claim(job_id, self.id)
            if claimed is None:
                continue  # another controller was faster
            self.hooks.transition(claimed.kind, RUNNING)
            self._running_kinds[claimed.id] = claimed.kind
            if self._launch(claimed):
                mine_running += 1
        self.hooks.counts(self.store.counts())
        self.hooks.reconciled(time.perf_counter() - t0)

    def _check_self_launched(self, job: JobRecord) -> None:
        """A registered job waiting for its launcher (e.g. Kubernetes restarting the pod) to register
        its next attempt; given up on after ``start_timeout_s``."""
        waited = time.time() - max(job.not_before, job.updated_at)
        if waited > self.settings.start_timeout_s:
            done = self.store.fail_pending(job.id, f"{job.reason}; its launcher did not start attempt "
                                                   f"{job.attempts + 1} within {self.settings.start_timeout_s:g}s")
            if done is not None:
                self.hooks.transition(job.kind, done.state)

    def _observe_finished(self, now_running: dict[str, str]) -> None:
        for job_id, kind in list(self._running_kinds.items()):
            if job_id in now_running:
                continue
            del self._running_kinds[job_id]
            self._seen.pop(job_id, None)
            try:
                job = self.store.get(job_id)
            except S3Error:
                continue
            self.hooks.transition(kind, job.state)
            forget = getattr(self.backend, "forget", None)
            if callable(forget):
                forget(job.id, job.attempts)
        self._running_kinds.update(now_running)

    def _launch(self, job: JobRecord) -> bool:
        try:
            spec: JobSpec = parse_spec(job.spec_yaml, job.kind)
            info = self.backend.launch(job, spec)
        except (ConfigError, InvalidArgument) as exc:
            self.hooks.launched(self.backend.name, False)
            self._finish(job, f"could not start a worker: {exc}", retryable=False)
            return False
        except Exception as exc:  # noqa: BLE001 - the API server or the OS refused; try again later
            self.hooks.launched(self.backend.name, False)
            logger.exception("launching job %s failed", job.id)
            self._finish(job, f"could not start a worker: {type(exc).__name__}: {exc}", retryable=True)
            return False
        self.hooks.launched(self.backend.name, True)
        self.store.set_worker(job.id, job.attempts, worker=info.desc, ref=info.ref, host=info.host, pid=info.pid,
                              start=info.start, artifacts=info.artifacts, note=f"launched {info.desc}")
        self._seen[job.id] = (job.attempts, 0, time.monotonic())
        return True

    def _finish(self, job: JobRecord, reason: str, retryable: bool) -> JobRecord | None:
        done = self.store.finish(job.id, job.attempts, FAILED, reason, retryable=retryable)
        if done is not None:
            logger.warning("job %s attempt %d: %s -> %s", job.id, job.attempts, reason, done.state)
            self.hooks.transition(job.kind, done.state)
            self._running_kinds.pop(job.id, None)
        return done

    def _status(self, job: JobRecord) -> WorkerStatus:
        if job.backend != self.backend.name:
            return WorkerStatus(None)
        try:
            return self.backend.check(job)
        except Exception as exc:  # noqa: BLE001 - treat as "cannot tell"; heartbeats still decide
            logger.warning("checking the worker of %s failed: %s", job.id, exc)
            return WorkerStatus(None)

    def _check_running(self, job: JobRecord) -> bool:
        """Judge one running job; True while it stays running."""
        s = self.settings
        mono = time.monotonic()
        status = self._status(job)
        seen = self._seen.get(job.id)
        if seen is None or seen[0] != job.attempts or seen[1] != job.heartbeat_seq:
            if seen is None and job.owner and job.owner != self.id and status.alive:
                self.store.add_note(job.id, f"{self.id} re-attached to worker {job.worker}")
                logger.info("re-attached to job %s (%s)", job.id, job.worker)
            seen = (job.attempts, job.heartbeat_seq, mono)
            self._seen[job.id] = seen
        quiet = mono - seen[2]
        key = (job.id, job.attempts)

        if status.alive is False:
            fresh = self.store.get(job.id)
            if fresh.state != RUNNING or fresh.attempts != job.attempts:
                return False  # it reported its end after we read it
            self._cleanup(job)
            self.hooks.worker_lost(job.kind)
            self._finish(job, status.reason, retryable=True)
            return False

        if job.cancel_requested:
            sent = self._stop_sent.get(key)
            if sent is None:
                if self._stop(job, force=False):
                    self._stop_sent[key] = mono
                    self.store.add_note(job.id, f"{self.id} asked the worker to stop ({job.worker})")
                else:
                    self._stop_sent[key] = mono  # not ours to signal: the worker sees the request itself
            elif mono - sent > s.cancel_grace_s:
                self._stop(job, force=True)
                self._cleanup(job)
                self._finish(job, f"the worker did not stop within {s.cancel_grace_s:g}s; killed", retryable=False)
                return False
            return True

        if job.timeout_s and job.attempt_started_at and time.time() - job.attempt_started_at > job.timeout_s:
            self.store.request_cancel(job.id, f"timeout: attempt {job.attempts} ran longer than "
                                              f"run.timeout_s = {job.timeout_s:g}s")
            self.wake.set()
            return True

        limit = s.heartbeat_timeout_s if job.heartbeat_seq else max(s.start_timeout_s, s.heartbeat_timeout_s)
        if quiet > limit:
            if status.alive:
                self._stop(job, force=True)
                self._cleanup(job)
                why = f"no heartbeat for {quiet:.0f}s (worker {job.worker} hung); killed"
            elif job.heartbeat_seq:
                why = f"no heartbeat for {quiet:.0f}s: worker {job.worker or '(unknown)'} lost"
            else:
                why = f"the worker never reported within {quiet:.0f}s of its start"
            self.hooks.worker_lost(job.kind)
            self._finish(job, why, retryable=True)
            return False
        return True

    def _stop(self, job: JobRecord, force: bool) -> bool:
        if job.backend != self.backend.name:
            return False
        try:
            return self.backend.stop(job, force=force)
        except Exception as exc:  # noqa: BLE001
            logger.warning("stopping the worker of %s failed: %s", job.id, exc)
            return False

    def _cleanup(self, job: JobRecord) -> None:
        if job.backend != self.backend.name:
            return
        try:
            self.backend.cleanup(job)
        except Exception as exc:  # noqa: BLE001
            logger.warning("cleaning up after the worker of %s failed: %s", job.id, exc)

    def run_forever(self, stop: threading.Event, on_redis: Callable[[bool], None] | None = None) -> None:
        """Reconcile every ``reconcile_interval_s`` (or at once when woken) until ``stop`` is set.
        Redis outages are reported through ``hooks.redis`` and ``on_redis`` and waited out."""
        up = None

        def report(value: bool) -> None:
            self.hooks.redis(value)
            if on_redis is not None:
                on_redis(value)

        while not stop.is_set():
            try:
                self.store.ping()
                if up is not True:
                    up = True
                    report(True)
                    logger.info("job store at %s reachable", self.store.url)
                self.reconcile_once()
            except S3Error as exc:
                if up is not False:
                    logger.error("reconcile: %s", exc)
                if isinstance(exc, Unavailable):
                    if up is not False:
                        up = False
                        report(False)
            except Exception:  # noqa: BLE001 - the loop must survive anything
                logger.exception("reconcile failed")
            self.wake.wait(self.settings.reconcile_interval_s)
            self.wake.clear()
