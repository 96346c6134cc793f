"""``python -m s3core.jobs.worker``: run one attempt of one job and report it to the job store.

Started by a backend (local process, Kubernetes pod)::

    S3_JOBS_REDIS_URL=redis://... python -m s3core.jobs.worker --job-id eval-1a2b3c4d --attempt 1

or by hand / by ``kubectl apply`` (``--register``): the worker first registers its job with the
controller (``RegisterJob``), then runs it like any other::

    python -m s3core.jobs.worker --register --controller s3-controller:50055 --kind eval \\
        --spec /etc/s3/spec.yaml --request-id "$JOB_UID" --label team=search

While the body runs, a heartbeat thread writes to the job store every ``--heartbeat-interval``
seconds and watches for a cancel request; progress and log lines go to the job's event stream.
SIGTERM stops the body (the services it started are stopped on the way out) and the attempt ends
as cancelled when a cancel was requested, else as failed (retried when attempts are left).
Exit codes: 0 succeeded, 1 failed, 2 bad usage / invalid spec, 3 this attempt is no longer the
job's current one (nothing was written), 143 stopped by SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import os
import queue
import signal
import socket
import sys
import threading
import time
import traceback
import uuid
from pathlib import Path
from typing import Any, Callable, Sequence

from s3core.errors import FailedPrecondition, InvalidArgument, NotFound, S3Error, Unavailable
from s3core.jobs.backends.local import REDIS_URL_ENV, host_identity, process_start
from s3core.jobs.model import CANCELLED, FAILED, RUNNING, SUCCEEDED, JobRecord
from s3core.jobs.store import JobStore

logger = logging.getLogger("s3core.jobs.worker")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_STALE, EXIT_TERM = 0, 1, 2, 3, 143
# errors that another attempt would hit again: no retry
PERMANENT_ERRORS: tuple[type[BaseException], ...] = (InvalidArgument, NotFound, FailedPrecondition)


class Stopped(BaseException):
    """Raised in the main thread by SIGTERM: unwinds the body through its ``finally`` blocks."""


# --- log lines and heartbeats in the background -------------------------------------------------------

class _EventShipper(logging.Handler):
    """Log records -> the job's event stream, from a background thread (never blocks the job; when
    Redis is away, the oldest lines are dropped first)."""

    def __init__(self, store: JobStore, job_id: str, attempt: int, maxsize: int = 2000) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        self.store, self.job_id, self.attempt = store, job_id, attempt
        self.q: queue.Queue[str | None] = queue.Queue(maxsize)
        self._thread = threading.Thread(target=self._run, name="s3-job-logs", daemon=True)
        self._thread.start()

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(("redis", "urllib3")):
            return
        try:
            line = self.format(record)
        except Exception:  # noqa: BLE001
            return
        while True:
            try:
                self.q.put_nowait(line)
                return
            except queue.Full:
                try:
                    self.q.get_nowait()
                except queue.Empty:
                    pass

    def _run(self) -> None:
        while True:
            line = self.q.get()
            if line is None:
                return
            for _ in range(3):
                try:
                    self.store.log(self.job_id, self.attempt, line)
                    break
                except S3Error:
                    time.sleep(1.0)

    def close(self) -> None:
        try:
            self.q.put(None, timeout=1.0)
        except queue.Full:
            pass
        self._thread.join(timeout=5.0)
        super().close()


class _Heartbeat(threading.Thread):
    """Heartbeats; on a cancel request, or once the attempt is no longer the job's, SIGTERM to self."""

    def __init__(self, store: JobStore, job_id: str, attempt: int, interval: float) -> None:
        super().__init__(name="s3-job-heartbeat", daemon=True)
        self.store, self.job_id, self.attempt, self.interval = store, job_id, attempt, interval
        self.stop_event = threading.Event()
        self.signalled = ""

    def beat(self) -> None:
        ours, cancel = self.store.heartbeat(self.job_id, self.attempt)
        why = ""
        if not ours:
            why = "the job no longer runs this attempt (cancelled, timed out, or given up on by the controller)"
        elif cancel:
            why = f"cancel requested ({cancel.split(': ', 1)[-1]})"
        if why and not self.signalled:
            self.signalled = why
            logger.warning("stopping: %s", why)
            os.kill(os.getpid(), signal.SIGTERM)

    def run(self) -> None:
        while not self.stop_event.wait(self.interval):
            try:
                self.beat()
            except S3Error as exc:
                logger.warning("heartbeat failed: %s", exc)

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=self.interval + 15)


# --- one attempt ----------------------------------------------------------------------------------------

def _retry(what: str, fn: Callable[[], Any], deadline_s: float) -> Any:
    """Call ``fn`` until it stops raising Unavailable (Redis down) or ``deadline_s`` passes."""
    end = time.monotonic() + deadline_s
    delay = 0.5
    while True:
        try:
            return fn()
        except Unavailable as exc:
            if time.monotonic() > end:
                raise
            logger.warning("%s: %s; retrying in %.1fs", what, exc, delay)
            time.sleep(delay)
            delay = min(10.0, delay * 2)


def run_attempt(store: JobStore, job_id: str, attempt: int, *, state_dir: str = ".s3",
                heartbeat_interval: float = 2.0, redis_retry_s: float = 300.0) -> int:
    from s3core.jobs.bodies import BODIES, JobContext
    from s3core.jobs.record import CostMeter, code_version, describe_input
    from s3core.jobs.spec import parse_spec

    meter = CostMeter()
    job = _retry("reading the job", lambda: store.get(job_id), redis_retry_s)
    if job.state != RUNNING or job.attempts != attempt:
        logger.error("job %s is %s at attempt %d; attempt %d is not current: exiting", job_id, job.state,
                     job.attempts, attempt)
        return EXIT_STALE
    host = host_identity()
    pod = os.environ.get("POD_NAME", "")
    who = f"pid {os.getpid()} on {socket.gethostname()}" + (f" (pod {pod})" if pod else "")
    if job.worker and "kubernetes" in job.worker_ref:
        who = f"{job.worker}, {who}"
    if _retry("registering the worker", lambda: store.set_worker(
            job_id, attempt, worker=who, host=host, pid=os.getpid(), start=process_start(os.getpid()),
            note=f"worker started: {who}, in {os.getcwd()}"),
            redis_retry_s) is None:
        return EXIT_STALE

    shipper = _EventShipper(store, job_id, attempt)
    logging.getLogger().addHandler(shipper)
    beat = _Heartbeat(store, job_id, attempt, heartbeat_interval)
    state = {"in_body": False, "sigterm": False}

    def on_term(signum: int, frame: Any) -> None:
        if state["sigterm"]:
            return
        state["sigterm"] = True
        if state["in_body"]:
            raise Stopped()

    previous = signal.signal(signal.SIGTERM, on_term)
    outcome, reason, retryable = FAILED, "", True
    ctx = None
    try:
        spec = parse_spec(job.spec_yaml, job.kind)
        job_dir = Path(state_dir) / "jobs" / job_id / f"attempt-{attempt}"
        job_dir.mkdir(parents=True, exist_ok=True)

        def report(value: float, message: str) -> None:
            try:
                store.progress(job_id, attempt, value, message)
            except S3Error as exc:
                logger.debug("progress not recorded: %s", exc)

        ctx = JobContext(job_id=job_id, attempt=attempt, spec=spec, job_dir=job_dir,
                         redis_url=os.environ.get(REDIS_URL_ENV, store.url), report=report)
        logger.info("job %s (%s) attempt %d of %d starting in %s", job_id, job.kind, attempt, job.max_attempts,
                    os.getcwd())
        beat.beat()  # the first heartbeat at once: the controller knows the worker is up
        beat.start()
        state["in_body"] = True
        if state["sigterm"]:
            raise Stopped()
        BODIES[job.kind](ctx)
        state["in_body"] = False
        outcome, reason = SUCCEEDED, ""
        logger.info("job %s attempt %d succeeded", job_id, attempt)
    except Stopped:
        state["in_body"] = False
        outcome, reason = FAILED, beat.signalled or "worker stopped by SIGTERM"
    except PERMANENT_ERRORS as exc:
        state["in_body"] = False
        outcome, reason, retryable = FAILED, str(exc), False
        logger.error("job %s failed: %s", job_id, exc)
    except S3Error as exc:
        state["in_body"] = False
        outcome, reason = FAILED, str(exc)
        logger.error("job %s failed: %s", job_id, exc)
    except BaseException as exc:  # noqa: BLE001 - the worker reports every failure, including KeyboardInterrupt
        state["in_body"] = False
        outcome, reason = FAILED, f"{type(exc).__name__}: {exc}"
        logger.error("job %s crashed:\n%s", job_id, traceback.format_exc())
    finally:
        state["in_body"] = False
        beat.stop()

    spec_part: dict[str, Any] = {}
    if ctx is not None:
        spec_part = {"spec": ctx.spec.resolved(), "seeds": ctx.spec.seeds(),
                     "inputs": {name: describe_input(p) for name, p in ctx.spec.inputs().items()},
                     "models": ctx.models, "counters": ctx.counters, "results": ctx.results}
    record = {"job_id": job_id, "kind": job.kind, "attempt": attempt, "outcome": outcome, "reason": reason,
              **spec_part, "code": code_version(), "cost": meter.read(), "workdir": os.getcwd(),
              "started_at": meter.started_at, "finished_at": time.time()}
    artifacts = dict(ctx.artifacts) if ctx is not None else {}
    logging.getLogger().removeHandler(shipper)
    shipper.close()
    try:
        done = _retry("reporting the final state", lambda: store.finish(
            job_id, attempt, outcome, reason, artifacts=artifacts, run_record=record, retryable=retryable),
            redis_retry_s)
    except S3Error as exc:
        logger.error("could not record the final state of job %s: %s", job_id, exc)
        return EXIT_FAILED
    finally:
        signal.signal(signal.SIGTERM, previous)
    if done is None:
        logger.error("job %s moved on while attempt %d ran; its result was not recorded", job_id, attempt)
        return EXIT_STALE
    logger.info("job %s is %s%s", job_id, done.state, f": {done.reason}" if done.reason else "")
    if outcome == SUCCEEDED:
        return EXIT_OK
    if state["sigterm"] or done.state == CANCELLED:
        return EXIT_TERM
    return EXIT_FAILED


# --- registration (kubectl-launched and hand-started workers) --------------------------------------------

def _parse_labels(items: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise InvalidArgument(f"--label must be KEY=VALUE, got {item!r}")
        out[k] = v
    return out


def register(args: argparse.Namespace) -> JobRecord:
    from s3core.jobs.client import ControllerClient
    from s3core.jobs.spec import parse_spec

    spec_path = Path(args.spec)
    try:
        spec_yaml = spec_path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidArgument(f"--spec {spec_path}: {exc.strerror or exc}") from None
    parse_spec(spec_yaml, args.kind or "")  # fail here, with the field named, before calling anyone
    request_id = args.request_id or os.environ.get("S3_REQUEST_ID", "") or f"register-{uuid.uuid4().hex}"
    pod = os.environ.get("POD_NAME", "")
    ns = os.environ.get("POD_NAMESPACE", "")
    worker = args.worker_name or (f"pod {ns + '/' if ns else ''}{pod}" if pod
                                  else f"pid {os.getpid()} on {socket.gethostname()}")
    backend = args.backend or ("kubernetes" if os.environ.get("KUBERNETES_SERVICE_HOST") else "external")
    with ControllerClient(args.controller, token=args.token) as client:
        return _retry("registering with the controller", lambda: client.register(
            spec_yaml, kind=args.kind or "", labels=_parse_labels(args.label), request_id=request_id, worker=worker,
            backend=backend, workdir=os.getcwd()), args.connect_timeout)


# --- main ---------------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m s3core.jobs.worker",
        description="Run one attempt of an s3 job (index, precompute, eval, train, infer) and report its state, "
                    "progress, logs and run record to the job store in Redis.",
    )
    p.add_argument("--job-id", help="the job to run (started by the controller's backend)")
    p.add_argument("--attempt", type=int, help="the attempt the controller claimed for this worker")
    p.add_argument("--redis-url", help=f"job store URL (default ${REDIS_URL_ENV}, then $S3_REDIS_URL)")
    p.add_argument("--namespace", default="s3", help="key namespace of the job store (default s3)")
    p.add_argument("--state-dir", default=os.environ.get("S3_HOME", ".s3"),
                   help="per-attempt scratch: resolved config, summaries (default $S3_HOME or .s3)")
    p.add_argument("--heartbeat-interval", type=float, default=2.0, help="seconds between heartbeats (default 2)")
    p.add_argument("--redis-retry", type=float, default=300.0,
                   help="how long to keep retrying the job store while Redis is unreachable (default 300 s)")
    p.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING, ... (default $S3_LOG_LEVEL or INFO)")
    g = p.add_argument_group("registering a job started outside the controller (kubectl apply, by hand)")
    g.add_argument("--register", action="store_true", help="create or claim the job via the controller first")
    g.add_argument("--controller", default=os.environ.get("S3_CONTROLLER", ""),
                   help="controller address host:port (default $S3_CONTROLLER)")
    g.add_argument("--kind", choices=["index", "precompute", "eval", "train", "infer"],
                   help="job kind (or a top-level `kind:` in the spec)")
    g.add_argument("--spec", help="the job spec YAML file")
    g.add_argument("--label", action="append", default=[], metavar="KEY=VALUE", help="job label (repeatable)")
    g.add_argument("--request-id", help="idempotency key, e.g. the Kubernetes Job's uid: a restarted pod claims "
                                        "the same job again (default $S3_REQUEST_ID, else a fresh one)")
    g.add_argument("--worker-name", help="how the worker is shown (default: the pod, or pid and host)")
    g.add_argument("--backend", choices=["kubernetes", "external"],
                   help="recorded backend (default kubernetes inside a pod, else external)")
    g.add_argument("--token", default=None, help="bearer token (default $S3_AUTH_TOKEN / $S3_AUTH_TOKEN_FILE)")
    g.add_argument("--connect-timeout", type=float, default=120.0,
                   help="how long to wait for the controller (default 120 s)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from s3core.telemetry.logging import setup_logging

    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    url = args.redis_url or os.environ.get(REDIS_URL_ENV) or os.environ.get("S3_REDIS_URL", "")
    try:
        if not url:
            raise InvalidArgument(f"no job store: pass --redis-url or set {REDIS_URL_ENV}")
        if args.register:
            if not args.controller or not args.spec:
                raise InvalidArgument("--register needs --controller ADDR and --spec FILE")
            job = register(args)
            job_id, attempt = job.id, job.attempts
            logger.info("registered as job %s, attempt %d", job_id, attempt)
        else:
            if not args.job_id or not args.attempt:
                raise InvalidArgument("--job-id and --attempt are required (or --register)")
            job_id, attempt = args.job_id, args.attempt
        store = JobStore.from_url(url, namespace=args.namespace)
        return run_attempt(store, job_id, attempt, state_dir=args.state_dir,
                           heartbeat_interval=args.heartbeat_interval, redis_retry_s=args.redis_retry)
    except (InvalidArgument, NotFound, FailedPrecondition) as exc:
        print(f"s3 worker: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except S3Error as exc:
        print(f"s3 worker: error: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    raise SystemExit(main())
