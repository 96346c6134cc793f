"""The controller end to end: a REAL controller process and a REAL redis-server on loopback, real
worker processes running the jobs on the embedded default (synthetic world, 4 questions, BM25,
SmolLM2-135M generator, a tiny Qwen2 searcher policy), and the services those jobs start.

Covers: every job kind's lifecycle (index through the `s3 jobs` CLI; precompute, eval, infer and
a one-step train run through the typed client), a controller SIGKILLed and restarted mid-job (the jobs finish,
stay listed, the new controller re-attaches), workers SIGKILLed (retried per run.max_attempts, or
failed with the exit reason; nothing they started survives), cancel of a running and a pending job,
duplicate submits, a worker registering itself as `kubectl apply` would start it, bearer-token
auth (also enforced by every service the jobs start, since the workers inherit S3_AUTH_TOKEN),
invalid specs (INVALID_ARGUMENT naming the field, nothing stored), and Redis going away
(UNAVAILABLE, health NOT_SERVING) and coming back (the controller recovers, no job lost).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest
import yaml
from _services import start_service
from grpc_health.v1 import health_pb2, health_pb2_grpc

from s3.v1 import controller_pb2, controller_pb2_grpc
from s3core.cache.baseline import BaselineCache
from s3core.errors import InvalidArgument, Unavailable
from s3core.jobs.client import ControllerClient, Unauthenticated
from s3core.jobs.model import JobRecord
from s3core.jobs.store import JobStore
from s3core.runtime.local import LocalStack

TOKEN = "integration-token-7f3a"
N_QUESTIONS = 4


# --- fixtures ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The working directory of every job: a synthetic world, its BM25 index, a tiny searcher model."""
    from s3core.data.synth import synthesize
    from s3core.retrieval.index import build_index
    from s3core.rl.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("controller-world")
    synthesize(root / "world", seed=0, n_entities=60, n_questions=N_QUESTIONS)
    build_index(root / "world" / "corpus.jsonl", "bm25", root / "idx", show_progress=False)
    build_tiny_model(root / "tiny-policy")
    return root


@pytest.fixture(scope="module")
def redis_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalStack, int]]:
    stack = LocalStack(tmp_path_factory.mktemp("controller-redis"), detach=False)
    info = stack.start_redis()
    try:
        yield stack, info.grpc_port
    finally:
        stack.down()


@pytest.fixture(scope="module")
def redis_url(redis_stack: tuple[LocalStack, int]) -> str:
    return f"redis://127.0.0.1:{redis_stack[1]}/0"


class ControllerProc:
    """``python -m s3_controller`` on loopback; restartable; S3_AUTH_TOKEN in its (and its workers') env."""

    def __init__(self, workdir: Path, redis_url: str, extra: list[str] | None = None) -> None:
        self.workdir = workdir
        self.redis_url = redis_url
        self.extra = extra or []
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = self.http_port = 0
        self.starts = 0

    def start(self, timeout: float = 60.0) -> None:
        self.starts += 1
        args = ["--redis-url", self.redis_url, "--state-dir", str(self.workdir / "state"), "--heartbeat-interval", "0.5",
                "--heartbeat-timeout", "8", "--reconcile-interval", "0.25", "--cancel-grace", "30",
                "--worker-threads", "1", *self.extra]
        svc = start_service("s3_controller", args, self.workdir, timeout, env={**os.environ, "S3_AUTH_TOKEN": TOKEN},
                            ready=self.workdir / f"ready-{self.starts}.json",
                            log=self.workdir / f"controller-{self.starts}.log")
        self.proc, self.port, self.http_port = svc.proc, svc.grpc_port, svc.http_port

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self, token: str | None = TOKEN) -> ControllerClient:
        return ControllerClient(self.address, token=token or "")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill(signal.SIGTERM)


def _kill_leftover_workers(redis_url: str) -> None:
    store = JobStore.from_url(redis_url)
    for job in store.list(state="running", limit=1000):
        if job.worker_pid:
            try:
                os.killpg(job.worker_pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


@pytest.fixture(scope="module")
def controller(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[ControllerProc]:
    c = ControllerProc(tmp_path_factory.mktemp("controller"), redis_url)
    c.start()
    try:
        yield c
    finally:
        c.stop()
        try:
            _kill_leftover_workers(redis_url)
        except Exception:  # noqa: BLE001 - best effort (Redis may be the thing under test)
            pass


@pytest.fixture
def client(controller: ControllerProc) -> Iterator[ControllerClient]:
    with controller.client() as c:
        yield c


# --- helpers ----------------------------------------------------------------------------------------

def spec(kind: str, job: dict[str, Any], **extra: Any) -> str:
    """The embedded default, with short answers (8 new tokens) so the CPU generator is quick."""
    extra.setdefault("generator", {"max_new_tokens": 8})
    return yaml.safe_dump({"kind": kind, "presets": ["embedded"], "job": job, **extra}, sort_keys=False)


def wait_for(fn: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def wait_state(client: ControllerClient, job_id: str, states: tuple[str, ...], timeout: float) -> JobRecord:
    def check() -> JobRecord | None:
        job = client.get(job_id)
        return job if job.state in states else None

    try:
        return wait_for(check, timeout, f"job {job_id} to be {'/'.join(states)}", 0.2)
    except AssertionError:
        job = client.get(job_id)
        logs = "\n".join(e.message or f"-- {e.state} {e.reason}" for e in client.watch(job_id, history_only=True))
        raise AssertionError(f"job {job_id} is {job.state} ({job.reason}); events:\n{logs}") from None


def wait_worker_started(redis_url: str, job_id: str, timeout: float = 60.0) -> JobRecord:
    """Running, with a worker pid and at least one heartbeat (the worker is inside the job body).
    Read from the job store: the pid is not part of the API."""
    store = JobStore.from_url(redis_url)

    def started() -> JobRecord | None:
        j = store.get(job_id)
        return j if j.state == "running" and j.worker_pid and j.heartbeat_seq else None

    return wait_for(started, timeout, f"the worker of {job_id} to start", 0.1)


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group."""
    out = []
    for p in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                out.append(p.pid)
        except (ProcessLookupError, psutil.Error, OSError):
            continue
    return out


def history(client: ControllerClient, job_id: str) -> list[Any]:
    return list(client.watch(job_id, history_only=True))


def s3(*args: str, cwd: Path, token: str | None = TOKEN, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("S3_AUTH_TOKEN", "S3_AUTH_TOKEN_FILE")}
    if token:
        env["S3_AUTH_TOKEN"] = token
    env["COLUMNS"] = "200"
    return subprocess.run([sys.executable, "-m", "s3cli", *args], cwd=cwd, capture_output=True, text=True, env=env,
                          timeout=timeout)


# --- auth and bad input -----------------------------------------------------------------------------

def test_missing_or_wrong_token_is_unauthenticated(controller: ControllerProc):
    with grpc.insecure_channel(controller.address) as ch:
        stub = controller_pb2_grpc.ControllerStub(ch)
        for md in (None, [("authorization", "Bearer not-the-token")], [("authorization", TOKEN)]):
            with pytest.raises(grpc.RpcError) as err:
                stub.ListJobs(controller_pb2.ListJobsRequest(), metadata=md, timeout=10)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as err:
            stub.SubmitJob(controller_pb2.SubmitJobRequest(spec_yaml="kind: index"), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # probes need no token
        ok = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service="s3.v1.Controller"),
                                                  timeout=10)
        assert ok.status == health_pb2.HealthCheckResponse.SERVING
    with controller.client(token="wrong") as c, pytest.raises(Unauthenticated, match="UNAUTHENTICATED"):
        c.list()


def test_invalid_specs_name_the_field_and_start_nothing(client: ControllerClient, world: Path):
    before = len(client.list(limit=1000))
    cases = [
        (spec("eval", {"questions": ["world/synth_1hop.jsonl"], "methods": ["naive-rag"], "out": "o"}),
         "job.index is required"),
        (spec("eval", {"questions": ["world/missing.jsonl"], "methods": ["naive-rag"], "index": "idx", "out": "o"}),
         "job.questions[0]: no such file: world/missing.jsonl"),
        (spec("index", {"corpus": "world/corpus.jsonl", "out": "x", "shards": 4}), "unknown key job.shards"),
        (spec("index", {"corpus": "world/corpus.jsonl", "out": "x"}, search={"retrieve_k": 0}),
         "search.retrieve_k must be >= 1"),
        (spec("infer", {"questions": ["world/synth_1hop.jsonl"], "out": "o", "index": "tiny-policy"}),
         "job.index: tiny-policy is not an index directory"),
        ("kind: index\njob: {corpus: world/corpus.jsonl, out: x}\nrun: {max_attempts: 0}\n",
         "run.max_attempts must be in [1, 20]"),
    ]
    for text, needle in cases:
        with pytest.raises(InvalidArgument) as err:
            client.submit(text, workdir=str(world))
        assert needle in str(err.value), str(err.value)
    with pytest.raises(InvalidArgument, match="labels: label key 'bad key'"):
        client.submit(spec("index", {"corpus": "world/corpus.jsonl", "out": "x"}), labels={"bad key": "v"},
                      workdir=str(world))
    with pytest.raises(InvalidArgument, match="limit must be in"):
        client.list(limit=5000)
    ok = client.submit(spec("index", {"corpus": "world/corpus.jsonl", "out": "x"}), workdir=str(world),
                       validate_only=True)
    assert ok.id == "" and ok.kind == "index"
    assert len(client.list(limit=1000)) == before


# --- the lifecycle of each kind ---------------------------------------------------------------------

def test_index_job_through_the_cli(controller: ControllerProc, world: Path):
    spec_file = world / "index-job.yaml"
    spec_file.write_text(spec("index", {"corpus": "world/corpus.jsonl", "out": "idx-from-job"}))
    addr = ["--controller", controller.address]
    dry = s3("jobs", "submit", str(spec_file), "--dry-run", *addr, cwd=world)
    assert dry.returncode == 0 and "valid" in dry.stdout, dry.stderr
    run = s3("jobs", "submit", str(spec_file), "--watch", "--label", "team=search", "-q", *addr, cwd=world)
    assert run.returncode == 0, run.stdout + run.stderr
    job_id = [ln for ln in run.stdout.splitlines() if ln.startswith("index-")][0].strip()
    assert "succeeded" in run.stdout
    manifest = json.loads((world / "idx-from-job" / "manifest.json").read_text())

    with controller.client() as c:
        job = c.get(job_id)
    assert job.state == "succeeded" and job.progress == 1.0 and job.labels == {"team": "search"}
    assert job.artifacts["index"] == str(world / "idx-from-job")
    rec = job.run_record
    assert rec["outcome"] == "succeeded" and rec["counters"]["documents"] == manifest["num_documents"]
    assert rec["inputs"]["corpus"]["sha256"] == manifest["corpus_sha256"]
    assert rec["code"]["s3core"] and rec["cost"]["wall_s"] > 0 and rec["cost"]["cpu_s"] > 0
    assert rec["spec"]["job"]["out"] == "idx-from-job"

    got = s3("jobs", "get", job_id, *addr, cwd=world)
    assert got.returncode == 0 and "run record" in got.stdout and manifest["corpus_sha256"][:16] in got.stdout
    listed = s3("jobs", "list", "--kind", "index", "--label", "team=search", *addr, cwd=world)
    assert listed.returncode == 0 and job_id in listed.stdout and "succeeded" in listed.stdout
    logs = s3("jobs", "logs", job_id, *addr, cwd=world)
    assert logs.returncode == 0 and "worker started" in logs.stdout and "-- succeeded" in logs.stdout
    bad = s3("jobs", "submit", "-", "--kind", "index", *addr, cwd=world)
    assert bad.returncode == 2 and "job.corpus is required" in bad.stderr
    anon = s3("jobs", "list", *addr, cwd=world, token=None)
    assert anon.returncode == 2 and "UNAUTHENTICATED" in anon.stderr


def test_duplicate_submit_returns_the_first_job(client: ControllerClient, world: Path):
    text = spec("index", {"corpus": "world/corpus.jsonl", "out": "idx-dup"})
    first = client.submit(text, labels={"case": "dup"}, request_id="dup-request-1", workdir=str(world))
    second = client.submit(text, labels={"case": "dup"}, request_id="dup-request-1", workdir=str(world))
    assert second.id == first.id and second.request_id == "dup-request-1"
    assert [j.id for j in client.list(labels={"case": "dup"})] == [first.id]
    wait_state(client, first.id, ("succeeded",), 60)
    assert client.submit(text, request_id="dup-request-1", workdir=str(world)).id == first.id


def test_eval_and_precompute_survive_a_controller_restart(controller: ControllerProc, world: Path, redis_url: str):
    questions = ["world/synth_1hop.jsonl"]
    with controller.client() as c:
        ev = c.submit(spec("eval", {"questions": questions, "methods": ["naive-rag", "no-retrieval"], "index": "idx",
                                    "out": "eval-out", "limit": N_QUESTIONS}), workdir=str(world))
        pre = c.submit(spec("precompute", {"questions": questions, "index": "idx", "namespace": "ctltest",
                                           "summary_out": "precompute.json"}), workdir=str(world))
        started = wait_worker_started(redis_url, ev.id)
    controller.kill(signal.SIGKILL)  # no goodbye: the workers keep running, state stays in Redis
    assert psutil.pid_exists(started.worker_pid)
    controller.start()
    with controller.client() as c:
        done_ev = wait_state(c, ev.id, ("succeeded", "failed", "cancelled"), 240)
        done_pre = wait_state(c, pre.id, ("succeeded", "failed", "cancelled"), 240)
        assert done_ev.state == "succeeded", done_ev.reason
        assert done_pre.state == "succeeded", done_pre.reason
        assert done_ev.attempts == 1 and done_pre.attempts == 1  # re-attached, not re-run
        listed = {j.id for j in c.list(limit=1000)}
        assert {ev.id, pre.id} <= listed
        events = history(c, ev.id)
        states = [e.state for e in events if e.type == "state"]
        assert states == ["pending", "running", "succeeded"]
        assert any("re-attached to worker" in e.message for e in events)
        assert any(e.type == "progress" and "eval naive-rag" in e.message for e in events)
        assert any("starting a generator on loopback" in e.message for e in events)  # the body's own log lines

    results = {m: json.loads((world / "eval-out" / m / "results.json").read_text())
               for m in ("naive-rag", "no-retrieval")}
    assert results["naive-rag"]["datasets"]["synth_1hop"]["n"] == N_QUESTIONS
    rec = done_ev.run_record
    assert rec["counters"]["questions"] == N_QUESTIONS and rec["counters"]["methods"] == 2
    assert rec["results"]["naive-rag"]["average"]["genacc"] == results["naive-rag"]["average"]["genacc"]
    assert rec["inputs"]["index"]["corpus_sha256"] and rec["inputs"]["questions[0]"]["sha256"]
    assert rec["models"]["generator"]["name"] == "embedded:smollm2-135m-instruct"
    assert done_ev.artifacts["naive-rag/results.json"] == str(world / "eval-out" / "naive-rag" / "results.json")

    summary = json.loads((world / "precompute.json").read_text())
    cache = BaselineCache.from_url(redis_url, namespace="ctltest")
    assert cache.count() == summary["written"] == N_QUESTIONS
    assert done_pre.run_record["counters"]["cache_misses"] == N_QUESTIONS

    metrics = urllib.request.urlopen(f"http://127.0.0.1:{controller.http_port}/metrics", timeout=10).read().decode()
    assert 's3_controller_jobs{kind="eval",state="succeeded"}' in metrics
    assert "s3_controller_redis_up 1.0" in metrics


def test_killed_worker_is_retried(client: ControllerClient, world: Path, redis_url: str):
    text = spec("infer", {"questions": ["world/synth_1hop.jsonl"], "index": "idx", "out": "infer-out",
                          "searcher_model": "tiny-policy", "limit": N_QUESTIONS},
                search={"max_turns": 1, "max_new_tokens": 16}, run={"max_attempts": 2, "retry_delay_s": 0})
    job = client.submit(text, workdir=str(world))
    first = wait_worker_started(redis_url, job.id)
    time.sleep(0.5)  # inside the body: its retriever and searcher are starting
    os.kill(first.worker_pid, signal.SIGKILL)
    done = wait_state(client, job.id, ("succeeded", "failed", "cancelled"), 180)
    assert done.state == "succeeded" and done.attempts == 2, done.reason
    reasons = [e.reason for e in history(client, job.id) if e.type == "state"]
    assert any(f"worker pid {first.worker_pid} was killed by SIGKILL" in r and "retrying (attempt 2 of 2)" in r
               for r in reasons), reasons
    wait_for(lambda: not group_members(first.worker_pid), 15, "the killed worker's services to be gone")
    rows = [json.loads(ln) for ln in (world / "infer-out" / "contexts.jsonl").read_text().splitlines()]
    assert len(rows) == N_QUESTIONS and all(r["context_doc_ids"] for r in rows)
    assert len((world / "infer-out" / "trajectories.jsonl").read_text().splitlines()) == N_QUESTIONS
    assert done.run_record["counters"]["trajectories"] == N_QUESTIONS
    assert done.run_record["counters"]["generated_tokens"] > 0
    assert done.run_record["attempt"] == 2


def test_killed_worker_without_attempts_left_fails_with_the_reason(client: ControllerClient, world: Path,
                                                                  redis_url: str):
    job = client.submit(spec("eval", {"questions": ["world/synth_1hop.jsonl"], "methods": ["naive-rag"],
                                      "index": "idx", "out": "eval-killed", "limit": 2}), workdir=str(world))
    started = wait_worker_started(redis_url, job.id)
    time.sleep(1.0)
    os.kill(started.worker_pid, signal.SIGKILL)
    done = wait_state(client, job.id, ("failed", "succeeded"), 60)
    assert done.state == "failed" and done.reason == f"worker pid {started.worker_pid} was killed by SIGKILL"
    wait_for(lambda: not group_members(started.worker_pid), 15, "the killed worker's services to be gone")


def test_cancel_running_and_pending(client: ControllerClient, world: Path, redis_url: str):
    job = client.submit(spec("eval", {"questions": ["world/synth_1hop.jsonl"], "methods": ["naive-rag"],
                                      "index": "idx", "out": "eval-cancelled", "limit": 2}), workdir=str(world))
    started = wait_worker_started(redis_url, job.id)
    time.sleep(1.0)
    flagged = client.cancel(job.id, reason="not needed any more")
    assert flagged.state == "running" and flagged.cancel_requested
    done = wait_state(client, job.id, ("cancelled", "failed", "succeeded"), 60)
    assert done.state == "cancelled" and done.reason.startswith("not needed any more"), done.reason
    wait_for(lambda: not group_members(started.worker_pid), 20, "the cancelled worker and its services to stop")
    assert done.run_record["outcome"] == "failed"  # what the worker saw: SIGTERM; the store made it cancelled

    # a job queued for another backend stays pending under a local controller: cancelled at once
    store = JobStore.from_url(redis_url)
    store.create(JobRecord(id="train-queued", kind="train", backend="kubernetes", created_at=time.time(),
                           spec_yaml="kind: train\ntrain: {questions: [t.jsonl]}\njob: {index: i}\n"))
    time.sleep(0.5)
    assert client.get("train-queued").state == "pending"
    assert client.cancel("train-queued").state == "cancelled"
    assert client.cancel("train-queued").state == "cancelled"  # idempotent


def test_worker_registered_from_outside(controller: ControllerProc, world: Path, redis_url: str):
    spec_file = world / "registered.yaml"
    spec_file.write_text(spec("index", {"corpus": "world/corpus.jsonl", "out": "idx-registered"}))
    env = {**os.environ, "S3_JOBS_REDIS_URL": redis_url, "S3_AUTH_TOKEN": TOKEN, "S3_LOG_LEVEL": "INFO"}
    cmd = [sys.executable, "-m", "s3core.jobs.worker", "--register", "--controller", controller.address,
           "--kind", "index", "--spec", str(spec_file), "--request-id", "k8s-job-uid-42", "--label", "source=kubectl",
           "--state-dir", str(world / "registered-state"), "--heartbeat-interval", "0.5"]
    run = subprocess.run(cmd, cwd=world, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    with controller.client() as c:
        jobs = c.list(labels={"source": "kubectl"})
        assert len(jobs) == 1
        job = jobs[0]
        assert job.state == "succeeded" and job.backend == "external" and job.request_id == "k8s-job-uid-42"
        assert job.run_record["counters"]["documents"] > 0
    again = subprocess.run(cmd, cwd=world, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "already succeeded" in again.stderr
    wrong = subprocess.run([*cmd[:-4], "--request-id", "other"], cwd=world, capture_output=True, text=True,
                           env={**env, "S3_AUTH_TOKEN": "nope"}, timeout=120)
    assert wrong.returncode != 0 and "UNAUTHENTICATED" in wrong.stderr


def test_train_job(client: ControllerClient, world: Path):
    """One PPO step of a tiny Qwen2 policy (also the generator, for speed) through a train job."""
    text = spec("train", {"index": "idx", "model": "tiny-policy"},
                generator={"backend": "hf", "model": "tiny-policy", "max_new_tokens": 8, "judge": "none"},
                searcher={"model": "tiny-policy"},
                search={"initial_k": 2, "retrieve_k": 2, "max_turns": 1, "max_new_tokens": 12, "max_obs_tokens": 200},
                reward={"on_missing_baseline": "compute"},
                rl={"actor_lr": 1e-3, "critic_lr": 1e-3, "micro_batch_size": 2},
                train={"questions": ["world/synth_1hop.jsonl"], "filter": False, "batch_size": 2, "steps": 1,
                       "checkpoint_dir": "train-ckpt"})
    job = client.submit(text, workdir=str(world))
    done = wait_state(client, job.id, ("succeeded", "failed", "cancelled"), 240)
    assert done.state == "succeeded", done.reason
    rec = done.run_record
    assert rec["results"]["step"] == 1 and rec["results"]["policy_version"] == 1 and rec["counters"]["steps"] == 1
    assert rec["seeds"]["rl.seed"] == 0 and rec["models"]["policy"]["config_sha256"]
    assert Path(done.artifacts["checkpoints"]) == world / "train-ckpt"
    assert (Path(done.artifacts["policy"]) / "config.json").is_file()
    assert any(e.type == "progress" and e.message.startswith("step 1/1") for e in history(client, job.id))


# --- Redis away and back ----------------------------------------------------------------------------

def test_redis_down_is_unavailable_then_the_controller_recovers(controller: ControllerProc, world: Path,
                                                                redis_stack: tuple[LocalStack, int]):
    stack, port = redis_stack
    with controller.client() as c:
        before = {j.id: j.state for j in c.list(limit=1000)}
        assert before and all(s in ("succeeded", "failed", "cancelled") for s in before.values())
        stack.stop("redis")
        with pytest.raises(Unavailable, match="UNAVAILABLE"):
            c.get(next(iter(before)))
        with pytest.raises(Unavailable):
            c.submit(spec("index", {"corpus": "world/corpus.jsonl", "out": "x"}), workdir=str(world))
        with grpc.insecure_channel(controller.address) as ch:
            health = health_pb2_grpc.HealthStub(ch)

            def serving() -> bool:
                return health.Check(health_pb2.HealthCheckRequest(service="s3.v1.Controller"),
                                    timeout=10).status == health_pb2.HealthCheckResponse.SERVING

            wait_for(lambda: not serving(), 20, "health NOT_SERVING while Redis is down")
            stack.start_redis(port)
            wait_for(serving, 30, "health SERVING once Redis is back")
        after = {j.id: j.state for j in c.list(limit=1000)}
        assert after == before  # nothing lost (AOF)

