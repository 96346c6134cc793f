"""The Redis job store on fakeredis: idempotent create, the state machine, fencing, retries, cancel,
events, listing and concurrent claims.  (The real redis-server runs in tests/integration.)"""

from __future__ import annotations

import threading
import time

import fakeredis
import pytest

from s3core.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from s3core.jobs.model import JobRecord, check_transition
from s3core.jobs.store import JobStore


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


def _store(server: fakeredis.FakeServer) -> JobStore:
    return JobStore(fakeredis.FakeRedis(server=server, decode_responses=True), url="fake")


@pytest.fixture
def store(server: fakeredis.FakeServer) -> JobStore:
    return _store(server)


def _job(job_id: str = "eval-1", kind: str = "eval", **kw) -> JobRecord:
    return JobRecord(id=job_id, kind=kind, spec_yaml="job: {}", created_at=kw.pop("created_at", time.time()), **kw)


def test_create_is_idempotent_by_request_id(store: JobStore):
    a, created = store.create(_job("eval-1", request_id="r1", labels={"team": "x"}))
    b, again = store.create(_job("eval-2", request_id="r1"))
    assert created and not again and b.id == "eval-1" and b.labels == {"team": "x"}
    with pytest.raises(NotFound):
        store.get("eval-2")
    with pytest.raises(FailedPrecondition, match="already exists"):
        store.create(_job("eval-1"))
    assert store.find_request("r1").id == "eval-1"
    assert store.find_request("nope") is None


def test_lifecycle_events_and_fencing(store: JobStore):
    store.create(_job(max_attempts=1))
    job = store.claim("eval-1", "ctl-a")
    assert job.state == "running" and job.attempts == 1 and job.owner == "ctl-a"
    assert store.claim("eval-1", "ctl-b") is None  # not pending any more
    assert store.set_worker("eval-1", 1, worker="pid 1", host="h", pid=1, start="7") is not None
    assert store.heartbeat("eval-1", 1) == (True, "")
    assert store.heartbeat("eval-1", 2) == (False, "")  # another attempt: fenced out
    assert store.progress("eval-1", 1, 0.5, "half")
    assert not store.progress("eval-1", 2, 0.9)
    assert store.log("eval-1", 1, "hello")
    assert not store.log("eval-1", 2, "stale worker")
    done = store.finish("eval-1", 1, "succeeded", artifacts={"out": "/o"}, run_record={"cost": {"wall_s": 1}})
    assert done.state == "succeeded" and done.progress == 1.0 and done.artifacts == {"out": "/o"}
    assert done.finished_at > 0 and done.run_record["cost"]["wall_s"] == 1
    assert store.finish("eval-1", 1, "failed", "late") is None  # finished: fenced out
    events = store.events("eval-1")
    kinds = [(e.type, e.state or e.message) for e in events]
    assert kinds == [("state", "pending"), ("state", "running"), ("log", "worker: pid 1"), ("progress", "half"),
                     ("log", "hello"), ("state", "succeeded")]
    assert store.events("eval-1", after=events[2].id)[0].message == "half"
    assert store.get("eval-1").heartbeat_seq == 1


def test_failed_attempts_are_retried_until_max_attempts(store: JobStore):
    store.create(_job(max_attempts=2))
    store.claim("eval-1", "c")
    back = store.finish("eval-1", 1, "failed", "worker pid 9 was killed by SIGKILL")
    assert back.state == "pending" and "retrying (attempt 2 of 2)" in back.reason and "SIGKILL" in back.reason
    job = store.claim("eval-1", "c")
    assert job.attempts == 2
    final = store.finish("eval-1", 2, "failed", "boom")
    assert final.state == "failed" and final.reason == "attempt 2 of 2 failed: boom"


def test_permanent_failure_is_not_retried(store: JobStore):
    store.create(_job(max_attempts=3))
    store.claim("eval-1", "c")
    assert store.finish("eval-1", 1, "failed", "bad input", retryable=False).state == "failed"


def test_cancel_pending_running_and_finished(store: JobStore):
    store.create(_job("eval-p"))
    assert store.request_cancel("eval-p", "no longer needed").state == "cancelled"
    assert store.get("eval-p").reason == "no longer needed"
    store.create(_job("eval-r", max_attempts=3))
    store.claim("eval-r", "c")
    flagged = store.request_cancel("eval-r")
    assert flagged.state == "running" and flagged.cancel_requested == "user: cancelled by request"
    assert store.heartbeat("eval-r", 1) == (True, "user: cancelled by request")
    # the worker reports its SIGTERM as a failure; the request turns it into cancelled, with no retry
    done = store.finish("eval-r", 1, "failed", "worker stopped by SIGTERM")
    assert done.state == "cancelled" and "cancelled by request" in done.reason
    assert store.request_cancel("eval-r").state == "cancelled"  # finished: unchanged


def test_timeout_cancel_ends_failed(store: JobStore):
    store.create(_job(max_attempts=3))
    store.claim("eval-1", "c")
    store.request_cancel("eval-1", "timeout: ran longer than run.timeout_s = 5s")
    done = store.finish("eval-1", 1, "failed", "worker stopped by SIGTERM")
    assert done.state == "failed" and done.reason.startswith("ran longer than run.timeout_s")


def test_transitions_outside_the_state_machine_are_refused():
    check_transition("j", "pending", "running")
    for old, new in (("succeeded", "running"), ("pending", "succeeded"), ("cancelled", "pending")):
        with pytest.raises(FailedPrecondition):
            check_transition("j", old, new)


def test_list_filters_and_order(store: JobStore):
    t = time.time()
    store.create(_job("index-1", "index", created_at=t - 3, labels={"team": "a"}))
    store.create(_job("eval-1", "eval", created_at=t - 2, labels={"team": "b"}))
    store.create(_job("eval-2", "eval", created_at=t - 1, labels={"team": "a", "run": "x"}))
    store.claim("eval-1", "c")
    assert [j.id for j in store.list()] == ["eval-2", "eval-1", "index-1"]
    assert [j.id for j in store.list(kind="eval")] == ["eval-2", "eval-1"]
    assert [j.id for j in store.list(state="running")] == ["eval-1"]
    assert [j.id for j in store.list(labels={"team": "a"})] == ["eval-2", "index-1"]
    assert [j.id for j in store.list(labels={"team": "a", "run": "x"})] == ["eval-2"]
    assert [j.id for j in store.list(limit=1)] == ["eval-2"]
    assert store.ids_in_state("pending") == ["index-1", "eval-2"]  # FIFO
    counts = store.counts()
    assert counts[("eval", "running")] == 1 and counts[("eval", "pending")] == 1 and counts[("index", "pending")] == 1


def test_register_creates_then_reclaims(store: JobStore):
    job, created = store.register(_job("train-1", "train", request_id="k8s-uid-1"), "pod a")
    assert created and job.state == "running" and job.attempts == 1 and job.worker == "pod a"
    again, created2 = store.register(_job("train-2", "train", request_id="k8s-uid-1"), "pod b")
    assert not created2 and again.id == "train-1" and again.attempts == 2 and again.worker == "pod b"
    assert store.heartbeat("train-1", 1) == (False, "")  # the first pod is fenced out
    store.finish("train-1", 2, "succeeded")
    with pytest.raises(FailedPrecondition, match="already succeeded"):
        store.register(_job("train-3", "train", request_id="k8s-uid-1"), "pod c")
    with pytest.raises(InvalidArgument, match="request_id is required"):
        store.register(_job("train-4", "train"), "pod d")


def test_concurrent_claims_have_one_winner(server: fakeredis.FakeServer):
    stores = [_store(server) for _ in range(8)]
    stores[0].create(_job())
    wins: list[JobRecord] = []
    barrier = threading.Barrier(len(stores))

    def claim(s: JobStore, i: int) -> None:
        barrier.wait()
        got = s.claim("eval-1", f"ctl-{i}")
        if got is not None:
            wins.append(got)

    threads = [threading.Thread(target=claim, args=(s, i)) for i, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and stores[0].get("eval-1").attempts == 1
    assert [e.state for e in stores[0].events("eval-1") if e.type == "state"] == ["pending", "running"]


def test_delete_only_finished_jobs(store: JobStore):
    store.create(_job("eval-1", request_id="r"))
    with pytest.raises(FailedPrecondition):
        store.delete(["eval-1"])
    store.request_cancel("eval-1")
    assert store.delete(["eval-1"]) == 1
    assert store.list() == [] and store.find_request("r") is None


def test_unreachable_redis_is_unavailable():
    store = JobStore.from_url("redis://127.0.0.1:1/0")
    with pytest.raises(Unavailable, match="redis at redis://127.0.0.1:1/0 unreachable"):
        store.get("eval-1")
    with pytest.raises(InvalidArgument):
        JobStore.from_url("")


def test_get_many_reads_in_pipelined_chunks_and_skips_missing(store) -> None:
    from s3core.jobs.model import JobRecord

    ids = []
    for i in range(7):
        rec = JobRecord(id=f"eval-{i:08x}", kind="eval", spec_yaml="kind: eval\n")
        store.create(rec)
        ids.append(rec.id)
    asked = [ids[3], "eval-gone", ids[0], *ids[4:]]
    got = [r.id for r in store.get_many(asked, chunk=2)]
    assert got == [ids[3], ids[0], *ids[4:]]
    assert list(store.get_many([])) == []
