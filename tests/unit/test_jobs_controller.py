"""The reconcile loop's decisions, with the job store on fakeredis and a scripted backend.

(Real worker processes, a real redis-server and the gRPC service: tests/integration/test_controller.py.)
"""

from __future__ import annotations

import fakeredis
import pytest

from s3core.errors import ConfigError
from s3core.jobs.backends import ALIVE, UNKNOWN, WorkerInfo, WorkerStatus
from s3core.jobs.controller import ControllerHooks, ControllerSettings, JobController, metric_kind
from s3core.jobs.model import JobRecord
from s3core.jobs.spec import JobSpec
from s3core.jobs.store import JobStore

SPEC = "kind: index\njob: {corpus: c.jsonl, out: idx}\nrun: {max_attempts: 2, retry_delay_s: 0}\n"


class ScriptedBackend:
    """Records calls; ``status`` says what ``check`` answers."""

    name = "local"

    def __init__(self) -> None:
        self.launched: list[tuple[str, int]] = []
        self.stopped: list[tuple[str, bool]] = []
        self.cleaned: list[str] = []
        self.status: WorkerStatus = ALIVE
        self.fail_launch: Exception | None = None

    def validate(self, spec: JobSpec, workdir: str) -> None:
        pass

    def launch(self, job: JobRecord, spec: JobSpec) -> WorkerInfo:
        if self.fail_launch is not None:
            raise self.fail_launch
        self.launched.append((job.id, job.attempts))
        return WorkerInfo(desc=f"fake {job.id}/{job.attempts}", ref="local:h", host="h", pid=100 + job.attempts,
                          start="1")

    def check(self, job: JobRecord) -> WorkerStatus:
        return self.status

    def stop(self, job: JobRecord, force: bool = False) -> bool:
        self.stopped.append((job.id, force))
        return True

    def cleanup(self, job: JobRecord) -> None:
        self.cleaned.append(job.id)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr("s3core.jobs.controller.time.monotonic", c)
    return c


@pytest.fixture
def setup() -> tuple[JobController, ScriptedBackend, JobStore]:
    store = JobStore(fakeredis.FakeRedis(decode_responses=True), url="fake")
    backend = ScriptedBackend()
    settings = ControllerSettings(max_running=2, heartbeat_timeout_s=10, start_timeout_s=20, cancel_grace_s=5)
    return JobController(store, backend, settings, controller_id="ctl-test"), backend, store


def test_submit_launches_and_a_dead_worker_is_retried(setup, clock):
    ctl, backend, store = setup
    job, created = ctl.submit(SPEC, labels={"team": "a"}, request_id="r1")
    assert created and job.state == "pending" and job.max_attempts == 2
    assert ctl.submit(SPEC, request_id="r1") == (store.get(job.id), False)
    ctl.reconcile_once()
    assert backend.launched == [(job.id, 1)]
    running = store.get(job.id)
    assert running.state == "running" and running.worker == f"fake {job.id}/1" and running.worker_pid == 101
    backend.status = WorkerStatus(False, "worker pid 101 was killed by SIGKILL")
    ctl.reconcile_once()  # fails attempt 1 (-> pending) and, with no retry delay, launches attempt 2
    assert backend.cleaned == [job.id]
    assert backend.launched[-1] == (job.id, 2)
    backend.status = WorkerStatus(False, "worker pid 102 exited with code 1")
    ctl.reconcile_once()
    final = store.get(job.id)
    assert final.state == "failed" and final.reason == "attempt 2 of 2 failed: worker pid 102 exited with code 1"
    reasons = [e.reason for e in store.events(job.id) if e.type == "state"]
    assert any("SIGKILL" in r and "retrying (attempt 2 of 2)" in r for r in reasons)


def test_validate_only_stores_nothing(setup):
    ctl, _, store = setup
    job, created = ctl.submit(SPEC, validate_only=True)
    assert not created and job.id == "" and job.kind == "index"
    assert store.list() == []
    with pytest.raises(ConfigError, match="job.out is required"):
        ctl.submit("kind: index\njob: {corpus: c}")
    assert store.list() == []


def test_max_running_bounds_launches(setup, clock):
    ctl, backend, store = setup
    ids = [ctl.submit(SPEC)[0].id for _ in range(3)]
    ctl.reconcile_once()
    assert [i for i, _ in backend.launched] == ids[:2]
    assert store.get(ids[2]).state == "pending"


def test_silent_worker_is_lost_and_a_hung_one_killed(setup, clock):
    ctl, backend, store = setup
    job = ctl.submit(SPEC)[0]
    backend.status = UNKNOWN  # e.g. another host's worker: only heartbeats tell
    ctl.reconcile_once()
    store.heartbeat(job.id, 1)
    clock.t += 5
    ctl.reconcile_once()  # heartbeat seen: timer restarts
    clock.t += 9
    ctl.reconcile_once()
    assert store.get(job.id).state == "running"
    clock.t += 2
    ctl.reconcile_once()  # lost: attempt 1 fails, attempt 2 starts
    assert store.get(job.id).attempts == 2
    assert any("no heartbeat for 11s" in e.reason for e in store.events(job.id) if e.type == "state")
    backend.status = ALIVE
    store.heartbeat(job.id, 2)
    ctl.reconcile_once()
    clock.t += 11
    ctl.reconcile_once()
    hung = store.get(job.id)
    assert hung.state == "failed" and "hung" in hung.reason and (job.id, True) in backend.stopped


def test_worker_that_never_reports_fails_after_the_start_timeout(setup, clock):
    ctl, backend, store = setup
    job = ctl.submit("kind: index\njob: {corpus: c.jsonl, out: idx}\n")[0]
    backend.status = UNKNOWN
    ctl.reconcile_once()
    clock.t += 15
    ctl.reconcile_once()
    assert store.get(job.id).state == "running"  # start timeout (20 s) > heartbeat timeout
    clock.t += 6
    ctl.reconcile_once()
    assert "never reported" in store.get(job.id).reason


def test_cancel_sends_stop_then_kills_after_the_grace(setup, clock):
    ctl, backend, store = setup
    job = ctl.submit(SPEC)[0]
    ctl.reconcile_once()
    store.heartbeat(job.id, 1)
    ctl.cancel(job.id, "changed my mind")
    ctl.reconcile_once()
    assert backend.stopped == [(job.id, False)]
    assert store.get(job.id).state == "running"
    clock.t += 6
    ctl.reconcile_once()
    done = store.get(job.id)
    assert backend.stopped[-1] == (job.id, True)
    assert done.state == "cancelled" and done.reason.startswith("changed my mind")
    assert any("asked the worker to stop" in e.message for e in store.events(job.id))


def test_timeout_requests_a_stop_and_ends_failed(setup, clock, monkeypatch):
    ctl, backend, store = setup
    job = ctl.submit("kind: index\njob: {corpus: c.jsonl, out: idx}\nrun: {timeout_s: 30, max_attempts: 3}\n")[0]
    ctl.reconcile_once()
    store.heartbeat(job.id, 1)
    real = store.get(job.id).attempt_started_at
    monkeypatch.setattr("s3core.jobs.controller.time.time", lambda: real + 31)
    ctl.reconcile_once()
    assert store.get(job.id).cancel_requested.startswith("timeout")
    ctl.reconcile_once()
    assert backend.stopped == [(job.id, False)]
    store.finish(job.id, 1, "failed", "worker stopped by SIGTERM")  # what the worker reports
    done = store.get(job.id)
    assert done.state == "failed" and "run.timeout_s = 30s" in done.reason  # no retry after a timeout


def test_restarted_controller_reattaches(setup, clock):
    ctl, backend, store = setup
    job = ctl.submit(SPEC)[0]
    ctl.reconcile_once()
    successor = JobController(store, backend, ctl.settings, controller_id="ctl-next")
    successor.reconcile_once()
    assert store.get(job.id).state == "running" and backend.launched == [(job.id, 1)]
    assert any("ctl-next re-attached to worker" in e.message for e in store.events(job.id))


def test_launch_errors_fail_or_retry(setup, clock):
    ctl, backend, store = setup
    job = ctl.submit(SPEC)[0]
    backend.fail_launch = OSError("fork failed")
    ctl.reconcile_once()
    assert "could not start a worker: OSError: fork failed" in store.get(job.id).reason
    assert store.get(job.id).state == "pending"  # retried
    backend.fail_launch = ConfigError("kubernetes.image is required")
    ctl.reconcile_once()
    assert store.get(job.id).state == "failed"


def test_other_backends_jobs_are_left_alone(setup, clock):
    ctl, backend, store = setup
    store.create(JobRecord(id="train-x", kind="train", backend="kubernetes", spec_yaml=SPEC, created_at=1.0))
    ctl.reconcile_once()
    assert backend.launched == [] and store.get("train-x").state == "pending"
    assert ctl.cancel("train-x").state == "cancelled"


def test_retries_wait_their_delay(setup, clock, monkeypatch):
    ctl, backend, store = setup
    job = ctl.submit("kind: index\njob: {corpus: c.jsonl, out: idx}\nrun: {max_attempts: 3, retry_delay_s: 30}\n")[0]
    ctl.reconcile_once()
    backend.status = WorkerStatus(False, "worker pid 101 exited with code 1")
    ctl.reconcile_once()
    waiting = store.get(job.id)
    assert waiting.state == "pending" and "in 30s" in waiting.reason
    ctl.reconcile_once()
    assert backend.launched == [(job.id, 1)]
    later = waiting.not_before + 1
    monkeypatch.setattr("s3core.jobs.controller.time.time", lambda: later)
    backend.status = ALIVE
    ctl.reconcile_once()
    assert backend.launched == [(job.id, 1), (job.id, 2)]


def test_registered_jobs_wait_for_their_launcher(setup, clock, monkeypatch):
    ctl, backend, store = setup
    job = ctl.register(SPEC, request_id="k8s-uid-1", worker="pod s3/train-x", backend="kubernetes")
    assert job.launcher == "worker" and job.state == "running"
    store.heartbeat(job.id, 1)
    store.finish(job.id, 1, "failed", "CUDA error")  # attempts left: back to pending ...
    ctl.reconcile_once()
    assert backend.launched == [] and store.get(job.id).state == "pending"  # ... but never launched here
    again = ctl.register(SPEC, request_id="k8s-uid-1", worker="pod s3/train-y", backend="kubernetes")
    assert again.id == job.id and again.attempts == 2 and again.worker == "pod s3/train-y"
    store.finish(job.id, 2, "failed", "CUDA error again")
    assert store.get(job.id).state == "failed"
    # a pending registered job nobody restarts is given up on after the start timeout
    other = ctl.register(SPEC, request_id="k8s-uid-2", worker="pod s3/train-z", backend="kubernetes")
    store.finish(other.id, 1, "failed", "node lost")
    later = store.get(other.id).updated_at + 21
    monkeypatch.setattr("s3core.jobs.controller.time.time", lambda: later)
    ctl.reconcile_once()
    gone = store.get(other.id)
    assert gone.state == "failed" and "its launcher did not start attempt 2 within 20s" in gone.reason


class RecordingHooks(ControllerHooks):
    def __init__(self) -> None:
        self.submits: list[tuple[str, str]] = []

    def submitted(self, kind: str, result: str) -> None:
        self.submits.append((kind, result))


@pytest.mark.parametrize("spec_yaml, kind, label", [
    ("kind: eval\njob: {questions: 7}\n", "", "eval"),  # the spec's kind, though the spec is invalid
    ("kind: index\nbogus_key: 1\n", "index", "index"),  # the request's kind
    ("kind: index\njob: {corpus: c.jsonl, out: idx}\n", "eval", "eval"),  # they disagree: the request's
    ("kind: evaluate\n", "", "unknown"),  # not a job kind: bounded label values
    ("kind: [eval]\n", "", "unknown"),
    ("job: {corpus: c.jsonl}\n", "", "unknown"),  # no kind anywhere
    ("kind: eval\njob: [unclosed\n", "", "unknown"),  # unreadable YAML
])
def test_rejected_submissions_are_counted_under_the_spec_kind(spec_yaml, kind, label):
    assert metric_kind(spec_yaml, kind) == label
    hooks = RecordingHooks()
    ctl = JobController(JobStore(fakeredis.FakeRedis(decode_responses=True), url="fake"), ScriptedBackend(),
                        hooks=hooks, controller_id="ctl-test")
    with pytest.raises(ConfigError):
        ctl.submit(spec_yaml, kind)
    with pytest.raises(ConfigError):
        ctl.register(spec_yaml, kind, request_id="uid-1", worker="pod s3/x", backend="kubernetes")
    assert hooks.submits == [(label, "invalid"), (label, "invalid")]
