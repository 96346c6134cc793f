"""Fault injection against real processes: a generator SIGKILLed during `s3 precompute`, Redis
SIGKILLed and shut down under the controller and the baseline cache.

* **generator killed mid-precompute**: the real ``s3 precompute`` CLI runs against the retriever and
  generator services (tiny Qwen2 generator, batches of 2) and a real redis-server; once two batches
  are stored the generator is SIGKILLed (the next batch is in flight, or about to be sent).  The CLI
  fails with the generator UNAVAILABLE; the generator is restarted on the same port and the CLI
  rerun.  Then the baseline keys in Redis are exactly those of the question set (none missing, none
  extra, one per question), every entry stored before the kill is byte-identical (``created_at``
  included: not recomputed), the rerun reports them as hits, and the new generator answered only
  the rest (its Answer RPC count, from /metrics).
* **Redis restarted with AOF** (``appendfsync everysec``, as ``s3 up`` and the Helm chart run it):
  jobs submitted through the real controller service (run to completion by real workers) and
  baseline-cache entries; Redis SIGKILLed right after the last acknowledged write, then restarted
  on the same port and data dir: the whole keyspace is identical (every key, its type and value,
  byte for byte), the controller answered UNAVAILABLE (health NOT_SERVING) while Redis was down and
  serves again after.  The same after a clean ``SHUTDOWN``.  everysec is enough for a killed
  *process*: Redis write()s the AOF buffer to the kernel before it replies, only the fsync is
  deferred (an OS crash or power loss can lose up to ~1-2 s; ``always`` closes that at the price of
  an fsync per write).
"""

from __future__ import annotations

import contextlib
import json
import math
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
import pytest
import redis
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from s3core.runtime.redis_server import RedisProcess

N_QUESTIONS = 24
BATCH = 2
NAMESPACE = "faults"


# --- helpers ---------------------------------------------------------------------------------------

class Proc:
    """A service process on a fixed port (so a restart keeps its address), ready-file based."""

    def __init__(self, module: str, args: list[str], work: Path, port: int = 0) -> None:
        self.module, self.args, self.work = module, args, work
        self.port = port
        self.http_port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, timeout: float = 180.0) -> "Proc":
        self.starts += 1
        ready = self.work / f"ready-{self.starts}.json"
        log = self.work / f"service-{self.starts}.log"
        cmd = [sys.executable, "-m", self.module, *self.args, "--host", "127.0.0.1", "--port", str(self.port),
               "--http-port", "0", "--ready-file", str(ready)]
        with log.open("wb") as fh:
            self.proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT,
                                         env={**os.environ, "S3_LOG_LEVEL": "INFO"})
        deadline = time.monotonic() + timeout
        info = None
        while info is None:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{self.module} did not start:\n{log.read_text(errors='replace')[-3000:]}")
            if ready.is_file():
                with contextlib.suppress(json.JSONDecodeError):
                    info = json.loads(ready.read_text())
            time.sleep(0.05)
        self.port, self.http_port = int(info["grpc_port"]), int(info["http_port"])
        return self

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def keyspace(r: redis.Redis) -> dict[bytes, tuple[bytes, Any]]:
    """Every key with its type and its whole value, byte for byte (``DUMP`` would also compare the
    internal encoding, e.g. a hash's field order, which an AOF reload may change)."""
    read: dict[bytes, Callable[[bytes], Any]] = {
        b"string": r.get, b"hash": r.hgetall, b"zset": lambda k: r.zrange(k, 0, -1, withscores=True),
        b"stream": lambda k: r.xrange(k), b"set": r.smembers, b"list": lambda k: r.lrange(k, 0, -1)}
    out = {}
    for k in r.scan_iter(count=1000):
        kind = r.type(k)
        out[k] = (kind, read[kind](k))
    return out


def handled(http_port: int, service: str, method: str) -> float:
    """Completed RPCs of ``service/method`` from a service's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    total = 0.0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if (s.name == "grpc_server_handled_total" and s.labels.get("grpc_service") == service
                    and s.labels.get("grpc_method") == method):
                total += s.value
    return total


def wait_for(fn: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


# --- fixtures --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fworld(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from s3core.data.synth import synthesize
    from s3core.retrieval.index import build_index
    from s3core.rl.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("faults-world")
    synthesize(root / "world", seed=5, n_entities=60, n_questions=N_QUESTIONS)
    build_index(root / "world" / "corpus.jsonl", "bm25", root / "idx", show_progress=False)
    build_tiny_model(root / "tiny")
    # the CLI's batches of BATCH questions; 32 new tokens keep a batch in flight long enough to hit
    (root / "s3.yaml").write_text(yaml.safe_dump({"eval": {"batch_size": BATCH},
                                                  "generator": {"max_new_tokens": 32}}))
    return {"root": root, "questions": root / "world" / "synth_1hop.jsonl", "index": root / "idx",
            "model": root / "tiny", "config": root / "s3.yaml"}


# --- generator killed during precompute ------------------------------------------------------------

@pytest.mark.timeout(600)
def test_generator_killed_during_precompute(fworld: dict[str, Path], redis_url: str,
                                            tmp_path_factory: pytest.TempPathFactory) -> None:
    from s3core.cache.baseline import BaselineCache
    from s3core.data import load_questions
    from s3core.eval.precompute import resolve_setup
    from s3core.rpc.clients import GeneratorClient, RetrieverClient

    questions = load_questions(fworld["questions"], limit=N_QUESTIONS)
    assert len(questions) == N_QUESTIONS
    ret = Proc("s3_retriever", ["--index", str(fworld["index"]), "--threads", "1"],
               tmp_path_factory.mktemp("faults-retriever"))
    gen = Proc("s3_generator", ["--model", str(fworld["model"]), "--config", str(fworld["config"])],
               tmp_path_factory.mktemp("faults-generator"))
    cache = BaselineCache.from_url(redis_url, namespace=NAMESPACE)
    work = tmp_path_factory.mktemp("faults-precompute")
    cli = [sys.executable, "-m", "s3cli", "precompute", "--questions", str(fworld["questions"]), "--limit",
           str(N_QUESTIONS), "--redis-url", redis_url, "--namespace", NAMESPACE, "--config", str(fworld["config"]),
           "--quiet"]
    try:
        ret.start()
        gen.start()
        with RetrieverClient(ret.target) as rc, GeneratorClient(gen.target) as gc:
            setup = resolve_setup(rc, gc, k=3, judge=True)
        expected = {cache.redis_key(setup.key_fn()(q)) for q in questions}
        assert len(expected) == N_QUESTIONS  # one baseline per question: the exact check below means something

        # run 1: SIGKILL the generator once two batches are stored (the third is then in flight)
        run1 = subprocess.Popen([*cli, "--retriever", ret.target, "--generator", gen.target,
                                 "--summary-out", str(work / "run1.json")],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: cache.count() >= 2 * BATCH or run1.poll() is not None, 300, "two stored batches", 0.005)
        gen.kill()
        out1, err1 = run1.communicate(timeout=300)
        assert run1.returncode == 2, f"precompute did not fail on the dead generator:\n{out1}\n{err1}"
        assert "generator" in err1 and "UNAVAILABLE" in err1, err1
        assert not (work / "run1.json").exists()

        r = cache.client
        stored = sorted(k.decode() for k in r.scan_iter(match=f"{NAMESPACE}:*"))
        assert set(stored) <= expected
        assert 2 * BATCH <= len(stored) < N_QUESTIONS
        assert len(stored) % BATCH == 0, "a batch was stored in part"  # one MULTI/EXEC per batch
        before = dict(zip(stored, r.mget(stored)))

        # run 2: the generator restarted on the same port; the rerun computes only the rest
        gen.start()
        assert gen.port == int(gen.target.rsplit(":", 1)[1])
        run2 = subprocess.run([*cli, "--retriever", ret.target, "--generator", gen.target,
                               "--summary-out", str(work / "run2.json")],
                              capture_output=True, text=True, timeout=300)
        assert run2.returncode == 0, run2.stdout + run2.stderr
        summary = json.loads((work / "run2.json").read_text())
        done = len(stored)
        assert (summary["hits"], summary["misses"], summary["written"]) == (done, N_QUESTIONS - done,
                                                                            N_QUESTIONS - done)
        answers = handled(gen.http_port, "s3.v1.Generator", "Answer")
        assert answers == math.ceil((N_QUESTIONS - done) / BATCH)  # the restarted generator did only the rest

        after = sorted(k.decode() for k in r.scan_iter(match=f"{NAMESPACE}:*"))
        assert set(after) == expected and len(after) == N_QUESTIONS  # none missing, none extra
        for k, raw in before.items():
            assert r.get(k) == raw, f"{k} changed after the rerun"  # byte-identical: not recomputed
        records = cache.get_many([setup.key_fn()(q) for q in questions])
        assert [x.question_id for x in records if x is not None] == [q.id for q in questions]
        print(f"generator SIGKILLed after {done}/{N_QUESTIONS} baselines; rerun: {summary['hits']} hits, "
              f"{summary['written']} written, {answers:g} Answer RPCs")
    finally:
        gen.stop()
        ret.stop()


# --- Redis restarted under the controller ----------------------------------------------------------

def _index_spec(out: str) -> str:
    return yaml.safe_dump({"kind": "index", "presets": ["embedded"],
                           "job": {"corpus": "world/corpus.jsonl", "out": out}}, sort_keys=False)


def _serving(target: str) -> bool:
    with grpc.insecure_channel(target) as ch:
        try:
            return health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service="s3.v1.Controller"), timeout=5).status \
                == health_pb2.HealthCheckResponse.SERVING
        except grpc.RpcError:
            return False


def _clean_shutdown(rp: RedisProcess) -> None:
    assert rp.shutdown(timeout=30) == 0


@pytest.fixture
def aof_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    """A real redis-server with the AOF settings ``s3 up`` and the chart use."""
    rp = RedisProcess(tmp_path)
    cmd = rp.command()
    assert cmd[cmd.index("--appendonly") + 1] == "yes" and cmd[cmd.index("--appendfsync") + 1] == "everysec"
    rp.start(timeout=30)
    try:
        yield rp
    finally:
        rp.stop()


@pytest.mark.timeout(600)
def test_redis_killed_and_shut_down_under_the_controller(fworld: dict[str, Path], aof_redis: RedisProcess,
                                                          tmp_path_factory: pytest.TempPathFactory) -> None:
    from s3core.cache.baseline import BaselineCache, BaselineRecord
    from s3core.cache.keys import BaselineKey
    from s3core.errors import Unavailable
    from s3core.jobs.client import ControllerClient

    ctl = Proc("s3_controller", ["--redis-url", aof_redis.url, "--state-dir",
                                 str(tmp_path_factory.mktemp("faults-ctl-state")), "--worker-threads", "1",
                                 "--reconcile-interval", "0.25", "--heartbeat-interval", "0.5"],
               tmp_path_factory.mktemp("faults-controller"))
    def entries(tag: str, n: int) -> list[tuple[BaselineKey, BaselineRecord]]:
        return [(BaselineKey(dataset="faults", question=f"{tag} question {i}", index_fingerprint="f" * 16, k=3,
                             generator_model="tiny", prompt_version="v1", judge_id="none"),
                 BaselineRecord(question_id=f"{tag}-{i}", answer=f"answer {i}", genacc=i % 2 == 0, em=False,
                                f1=0.5, span=i % 2 == 0, judge=None, doc_ids=(str(i),)))
                for i in range(n)]

    def restart_and_check(how: str, stop: Callable[[], None], client: ControllerClient, jobs: dict[str, str]) -> None:
        snapshot = keyspace(aof_redis.client())
        stop()
        with pytest.raises(Unavailable, match="UNAVAILABLE"):
            client.get(next(iter(jobs)))
        wait_for(lambda: not _serving(ctl.target), 30, f"health NOT_SERVING with Redis down ({how})")
        aof_redis.start()
        wait_for(lambda: _serving(ctl.target), 30, f"health SERVING with Redis back ({how})")
        assert keyspace(aof_redis.client()) == snapshot, f"the keyspace changed across the Redis {how}"
        assert {j.id: j.state for j in client.list(limit=1000)} == jobs

    try:
        ctl.start(60)
        with ControllerClient(ctl.target) as c:
            c.wait_ready(30)
            ids = [c.submit(_index_spec(f"idx-job-{i}"), labels={"n": str(i)}, workdir=str(fworld["root"])).id
                   for i in range(3)]
            wait_for(lambda: all(c.get(i).state == "succeeded" for i in ids), 240, "the index jobs", 0.25)
            jobs = {i: "succeeded" for i in ids}
            assert BaselineCache(aof_redis.client(), namespace=NAMESPACE).put_many(entries("a", 500)) == 500
            # SIGKILL right after the last acknowledged write: no fsync window waited out
            restart_and_check("SIGKILL", aof_redis.kill, c, jobs)
            assert BaselineCache(aof_redis.client(), namespace=NAMESPACE).count() == 500

            # the controller writes again after the restart: one more job, more entries; then a clean SHUTDOWN
            more = c.submit(_index_spec("idx-job-3"), labels={"n": "3"}, workdir=str(fworld["root"])).id
            wait_for(lambda: c.get(more).state == "succeeded", 240, "the job after the restart", 0.25)
            jobs[more] = "succeeded"
            b = entries("b", 500)
            assert BaselineCache(aof_redis.client(), namespace=NAMESPACE).put_many(b) == 500
            restart_and_check("SHUTDOWN", lambda: _clean_shutdown(aof_redis), c, jobs)
            cache = BaselineCache(aof_redis.client(), namespace=NAMESPACE)
            assert cache.count() == 1000
            assert cache.get(b[-1][0]) == b[-1][1]
    finally:
        ctl.stop()
        with contextlib.suppress(Exception):
            from s3core.jobs.store import JobStore

            for job in JobStore.from_url(aof_redis.url).list(state="running", limit=100):
                if job.worker_pid:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(job.worker_pid, signal.SIGKILL)
