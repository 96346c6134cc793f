"""Prometheus metrics of the controller service (the gRPC server metrics live in s3core.telemetry)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from s3core.jobs.controller import ControllerHooks
from s3core.jobs.model import KINDS, STATES
from s3core.rpc.auth import AuthResult
from s3core.telemetry.metrics import LATENCY_BUCKETS

JOBS = Gauge("s3_controller_jobs", "Jobs in the job store, by kind and state.", ["kind", "state"])
SUBMITS = Counter("s3_controller_submits_total",
                  "SubmitJob / RegisterJob requests by kind and result (created, duplicate, invalid, validated, "
                  "registered, re-registered).", ["kind", "result"])
TRANSITIONS = Counter("s3_controller_transitions_total",
                      "Job state changes this controller made or observed, by kind and new state.", ["kind", "state"])
LAUNCHES = Counter("s3_controller_launches_total", "Worker launches by backend and result.", ["backend", "result"])
WORKERS_LOST = Counter("s3_controller_workers_lost_total",
                       "Attempts failed because their worker died, hung or stopped sending heartbeats.", ["kind"])
REDIS_UP = Gauge("s3_controller_redis_up", "1 while the job store's Redis answers, else 0.")
RECONCILE_SECONDS = Histogram("s3_controller_reconcile_seconds", "Time of one reconcile round.",
                              buckets=LATENCY_BUCKETS)
AUTH_FAILURES = Counter("s3_controller_auth_failures_total", "RPCs rejected as UNAUTHENTICATED.", ["method"])

for _k in KINDS:  # every series exists from the start (dashboards show zeros, not gaps)
    WORKERS_LOST.labels(_k)
    for _s in STATES:
        JOBS.labels(_k, _s).set(0)


class MetricsHooks(ControllerHooks):
    def submitted(self, kind: str, result: str) -> None:
        SUBMITS.labels(kind, result).inc()

    def transition(self, kind: str, state: str) -> None:
        TRANSITIONS.labels(kind, state).inc()

    def launched(self, backend: str, ok: bool) -> None:
        LAUNCHES.labels(backend, "ok" if ok else "error").inc()

    def worker_lost(self, kind: str) -> None:
        WORKERS_LOST.labels(kind).inc()

    def counts(self, counts: dict[tuple[str, str], int]) -> None:
        for (kind, state), n in counts.items():
            JOBS.labels(kind, state).set(n)

    def redis(self, up: bool) -> None:
        REDIS_UP.set(1 if up else 0)

    def reconciled(self, seconds: float) -> None:
        RECONCILE_SECONDS.observe(seconds)


def auth_result(result: AuthResult) -> None:
    if not result.ok:
        AUTH_FAILURES.labels(result.method).inc()
