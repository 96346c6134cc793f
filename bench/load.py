"""Load on the five services: N concurrent clients for a bounded time.

Builds a synthetic world, its BM25 index and the tiny Qwen2 test model (``s3core.rl.tiny``) in a
temp dir, starts the real services on loopback (``python -m s3_retriever`` / ``s3_generator`` /
``s3_searcher``, port 0, ready files), then, one service at a time, runs ``--concurrency`` grpc.aio
clients in a closed loop for ``--seconds``:

* retriever ``Search``: 8 queries x k=3 (a rollout turn's batch);
* generator ``Answer``: one question with two documents, 8 new tokens;
* searcher ``Rollout``: one question, one search turn, 16 new tokens (the searcher calls the retriever);
* learner (GRPO, the tiny model): ``Status`` from N clients while one driver runs ``--learner-steps``
  serial ``Update`` steps (8 trajectories of 64 tokens, no checkpoint), each sent as
  ``--dup`` concurrent copies (a client retrying while its first request is still in flight) and
  followed by one stale retry of the step before.  Every copy must return the same step and
  policy version, the stale one ``FAILED_PRECONDITION``, and the learner must end at the number of
  steps sent (no step trained twice); ``Update`` latency is the copies';
* controller (real redis-server, local backend, ``--max-running 1``): ``GetJob`` (a random job),
  ``ListJobs`` (50), ``WatchJob`` (the history of a random job, a stream) over ``--jobs`` seeded
  jobs, then ``SubmitJob`` (a new index job per call, so pending jobs pile up behind one worker).

Reported per service: requests/s, error rate with the status codes, p50 / p99 latency, and the
server process's RSS after a warm-up, halfway and at the end (growth, and growth in the second half:
warm-up vs a steady leak).  The last line is
``ratio=X.XXXX`` = the retriever's success rate (1.0 = no request failed).  Channels come from
:func:`s3core.rpc.tls.open_aio_channel`, so ``S3_TLS_*`` / ``S3_AUTH_TOKEN`` apply to the services
and the clients alike.

    .venv/bin/python bench/load.py --concurrency 64 --seconds 60
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psutil

from s3.v1 import (
    common_pb2,
    controller_pb2,
    controller_pb2_grpc,
    generator_pb2,
    generator_pb2_grpc,
    learner_pb2,
    learner_pb2_grpc,
    retriever_pb2,
    retriever_pb2_grpc,
    searcher_pb2,
    searcher_pb2_grpc,
)
from s3core.rpc.auth import auth_metadata, load_token
from s3core.rpc.tls import open_aio_channel


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--concurrency", type=int, default=16, help="concurrent clients per service (default 16)")
    p.add_argument("--seconds", type=float, default=10.0, help="timed seconds per service (default 10)")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of load before timing (default 2)")
    p.add_argument("--services", default="retriever,generator,searcher,learner,controller",
                   help="comma-separated subset")
    p.add_argument("--learner-steps", type=int, default=0,
                   help="learner Update steps (default 0 = as many as fit in --seconds)")
    p.add_argument("--dup", type=int, default=4, help="concurrent copies of each learner Update (default 4)")
    p.add_argument("--jobs", type=int, default=200, help="controller jobs seeded before GetJob/ListJobs/WatchJob "
                                                        "(default 200)")
    p.add_argument("--timeout", type=float, default=60.0, help="deadline of one request in seconds")
    p.add_argument("--json", help="also write the figures here")
    return p.parse_args(argv)


@dataclass
class Proc:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    http_port: int = 0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


@contextlib.contextmanager
def service(module: str, args: list[str], work: Path, timeout: float = 180.0) -> Iterator[Proc]:
    work.mkdir(parents=True, exist_ok=True)
    ready, log = work / "ready.json", work / "service.log"
    cmd = [sys.executable, "-m", module, *args, "--host", "127.0.0.1", "--port", "0", "--http-port", "0",
           "--ready-file", str(ready)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "S3_LOG_LEVEL": "WARNING"}
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + timeout
        while not ready.is_file():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{module} did not start:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.05)
        time.sleep(0.05)
        info = json.loads(ready.read_text())
        yield Proc(proc, int(info["grpc_port"]), log, int(info["http_port"]))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Result:
    name: str
    latencies: list[float] = field(default_factory=list)
    codes: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    rss_start_mb: float = 0.0
    rss_end_mb: float = 0.0
    rss_mid_mb: float = 0.0  # halfway through the timed part: end - mid tells warm-up from a steady leak

    @property
    def n(self) -> int:
        return sum(self.codes.values())

    @property
    def ok_rate(self) -> float:
        return self.codes["OK"] / self.n if self.n else 0.0

    def pct(self, q: float) -> float:
        xs = sorted(self.latencies)
        return xs[min(len(xs) - 1, int(q * len(xs)))] * 1000 if xs else float("nan")

    def row(self) -> dict[str, Any]:
        errors = {k: v for k, v in self.codes.items() if k != "OK"}
        return {"service": self.name, "requests": self.n, "rps": self.n / self.seconds if self.seconds else 0.0,
                "error_rate": 1 - self.ok_rate, "errors": errors, "p50_ms": self.pct(0.50), "p99_ms": self.pct(0.99),
                "rss_start_mb": self.rss_start_mb, "rss_end_mb": self.rss_end_mb,
                "rss_growth_mb": self.rss_end_mb - self.rss_start_mb,
                "rss_growth_2nd_half_mb": self.rss_end_mb - self.rss_mid_mb}


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


async def rss_at_half(pid: int, seconds: float, results: list[Result]) -> None:
    await asyncio.sleep(seconds / 2)
    mid = rss_mb(pid)
    for r in results:
        r.rss_mid_mb = mid


async def drive(name: str, target: str, pid: int, make_call: Callable[[grpc.aio.Channel], Callable[[], Any]],
                concurrency: int, seconds: float, warmup: float, timeout: float) -> Result:
    res = Result(name)
    async with open_aio_channel(target) as ch:
        call = make_call(ch)
        phase = {"timed": False}
        stop_at = time.monotonic() + warmup + seconds

        async def client() -> None:
            while time.monotonic() < stop_at:
                t0 = time.perf_counter()
                try:
                    await call(timeout=timeout)
                    code = "OK"
                except grpc.aio.AioRpcError as exc:
                    code = exc.code().name
                if phase["timed"]:
                    res.codes[code] += 1
                    if code == "OK":
                        res.latencies.append(time.perf_counter() - t0)

        tasks = [asyncio.create_task(client()) for _ in range(concurrency)]
        await asyncio.sleep(warmup)
        res.rss_start_mb = rss_mb(pid)
        phase["timed"] = True
        t_start = time.monotonic()
        await asyncio.gather(*tasks, rss_at_half(pid, seconds, [res]))
        res.seconds = time.monotonic() - t_start
        res.rss_end_mb = rss_mb(pid)
    return res


def metadata() -> tuple[tuple[str, str], ...]:
    """``authorization`` metadata when ``$S3_AUTH_TOKEN`` / ``$S3_AUTH_TOKEN_FILE`` configure a token."""
    return tuple(auth_metadata(load_token()))


# --- learner -------------------------------------------------------------------------------------------

def update_request(step: int, n: int = 8, seq_len: int = 64, vocab: int = 400) -> learner_pb2.UpdateRequest:
    """A valid GRPO update: ``n`` trajectories (groups of 4 per question) of ``seq_len`` tokens, a
    prompt quarter then action / observation segments, 0/1 rewards; deterministic per step."""
    import random

    rng = random.Random(step)
    trajs = []
    for i in range(n):
        mask = [0] * (seq_len // 4)
        action = True
        while len(mask) < seq_len:
            k = min(seq_len - len(mask), rng.randint(4, 12))
            mask += [int(action)] * k
            action = not action
        q = common_pb2.Question(id=f"q{i // 4}", question=f"question {i // 4}", golden_answers=["x"])
        t = searcher_pb2.Trajectory(question=q, token_ids=[rng.randrange(3, vocab) for _ in range(seq_len)],
                                    action_mask=mask, prompt_length=seq_len // 4, group_index=i % 4)
        reward = float(i % 2)
        trajs.append(learner_pb2.ScoredTrajectory(trajectory=t, reward=reward, gbr=reward, context_acc=reward))
    return learner_pb2.UpdateRequest(trajectories=trajs, step=step, checkpoint=False,
                                     run_state_json=f'{{"cursor": {step}}}')


@dataclass
class LearnerCheck:
    steps: int = 0
    inconsistent: int = 0  # duplicate copies answering another step / version than the first
    stale_ok: int = 0  # stale retries that were not FAILED_PRECONDITION
    final_step: int = -1


async def drive_learner(target: str, pid: int, args: argparse.Namespace) -> tuple[Result, Result, LearnerCheck]:
    status, update, check = Result("learner Status"), Result(f"learner Update x{args.dup}"), LearnerCheck()
    md = metadata()
    async with open_aio_channel(target) as ch:
        stub = learner_pb2_grpc.LearnerStub(ch)
        start = (await stub.Status(learner_pb2.LearnerStatusRequest(), metadata=md, timeout=args.timeout)).step
        await stub.Update(update_request(start + 1), metadata=md, timeout=600)  # warm: the first step builds state
        start += 1
        phase = {"timed": False}
        stop_at = time.monotonic() + args.warmup + args.seconds

        async def status_client() -> None:
            while time.monotonic() < stop_at:
                t0 = time.perf_counter()
                try:
                    await stub.Status(learner_pb2.LearnerStatusRequest(), metadata=md, timeout=args.timeout)
                    code = "OK"
                except grpc.aio.AioRpcError as exc:
                    code = exc.code().name
                if phase["timed"]:
                    status.codes[code] += 1
                    if code == "OK":
                        status.latencies.append(time.perf_counter() - t0)

        async def one_update(req: learner_pb2.UpdateRequest) -> tuple[str, Any]:
            t0 = time.perf_counter()
            try:
                resp = await stub.Update(req, metadata=md, timeout=600)
            except grpc.aio.AioRpcError as exc:
                update.codes[exc.code().name] += 1
                return exc.code().name, None
            update.codes["OK"] += 1
            update.latencies.append(time.perf_counter() - t0)
            return "OK", resp

        async def driver() -> None:
            step = start
            while time.monotonic() < stop_at and (not args.learner_steps or check.steps < args.learner_steps):
                if not phase["timed"]:
                    await asyncio.sleep(0.05)
                    continue
                step += 1
                req = update_request(step)
                answers = await asyncio.gather(*(one_update(req) for _ in range(args.dup)))
                check.steps += 1
                firsts = [(r.step, r.policy_version, r.policy_path) for code, r in answers if code == "OK"]
                check.inconsistent += sum(1 for x in firsts if x != (step, firsts[0][1], firsts[0][2])) + \
                    (args.dup - len(firsts))
                try:  # the retry of a step the learner has moved past
                    await stub.Update(update_request(step - 1), metadata=md, timeout=600)
                    check.stale_ok += 1
                except grpc.aio.AioRpcError as exc:
                    check.stale_ok += exc.code() != grpc.StatusCode.FAILED_PRECONDITION

        tasks = [asyncio.create_task(status_client()) for _ in range(args.concurrency)]
        drv = asyncio.create_task(driver())
        await asyncio.sleep(args.warmup)
        status.rss_start_mb = update.rss_start_mb = rss_mb(pid)
        phase["timed"] = True
        t_start = time.monotonic()
        await asyncio.gather(*tasks, drv, rss_at_half(pid, args.seconds, [status, update]))
        status.seconds = update.seconds = time.monotonic() - t_start
        status.rss_end_mb = update.rss_end_mb = rss_mb(pid)
        check.final_step = (await stub.Status(learner_pb2.LearnerStatusRequest(), metadata=md,
                                              timeout=args.timeout)).step - start
    return status, update, check


# --- controller ----------------------------------------------------------------------------------------

def index_spec(n: int) -> str:
    import yaml

    return yaml.safe_dump({"kind": "index", "presets": ["embedded"],
                           "job": {"corpus": "world/corpus.jsonl", "out": f"idx-{n}"}}, sort_keys=False)


def controller_calls(ch: grpc.aio.Channel, ids: list[str], workdir: str) -> dict[str, Callable[..., Any]]:
    import random

    stub = controller_pb2_grpc.ControllerStub(ch)
    md = metadata()
    rng = random.Random(0)
    seq = iter(range(10**9))

    def get(timeout: float) -> Any:
        return stub.GetJob(controller_pb2.GetJobRequest(id=rng.choice(ids)), metadata=md, timeout=timeout)

    def list_(timeout: float) -> Any:
        return stub.ListJobs(controller_pb2.ListJobsRequest(limit=50), metadata=md, timeout=timeout)

    async def watch(timeout: float) -> None:
        call = stub.WatchJob(controller_pb2.WatchJobRequest(id=rng.choice(ids), history_only=True), metadata=md,
                             timeout=timeout)
        async for _ in call:
            pass

    def submit(timeout: float) -> Any:
        req = controller_pb2.SubmitJobRequest(spec_yaml=index_spec(next(seq) + len(ids)), workdir=workdir,
                                              labels={"bench": "load"})
        return stub.SubmitJob(req, metadata=md, timeout=timeout)

    return {"GetJob": get, "ListJobs": list_, "WatchJob": watch, "SubmitJob": submit}


def reconcile_totals(http_port: int) -> tuple[float, float]:
    """(seconds, rounds) of the controller's reconcile loop so far, from its /metrics."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=30) as r:
        text = r.read().decode()
    got = {s.name: s.value for fam in text_string_to_metric_families(text) for s in fam.samples
           if s.name in ("s3_controller_reconcile_seconds_sum", "s3_controller_reconcile_seconds_count")}
    return got.get("s3_controller_reconcile_seconds_sum", 0.0), got.get("s3_controller_reconcile_seconds_count", 0.0)


def run_controller(root: Path, args: argparse.Namespace) -> list[Result]:
    from s3core.jobs.client import ControllerClient
    from s3core.jobs.store import JobStore
    from s3core.runtime.local import LocalStack

    stack = LocalStack(root / "redis-state", detach=False)
    url = f"redis://127.0.0.1:{stack.start_redis().grpc_port}/0"
    results: list[Result] = []
    try:
        ctl_args = ["--redis-url", url, "--state-dir", str(root / "ctl-state"), "--max-running", "1",
                    "--worker-threads", "1"]
        with service("s3_controller", ctl_args, root / "controller", timeout=60) as ctl:
            with ControllerClient(ctl.target, timeout=30) as c:
                ids = [c.submit(index_spec(i), workdir=str(root)).id for i in range(args.jobs)]
            for method in ("GetJob", "ListJobs", "WatchJob", "SubmitJob"):
                print(f"controller {method}: {args.concurrency} clients for {args.seconds:g} s ...", flush=True)
                s0, n0 = reconcile_totals(ctl.http_port)
                res = asyncio.run(drive(f"controller {method}", ctl.target, ctl.proc.pid,
                                        lambda ch, m=method: controller_calls(ch, ids, str(root))[m],
                                        args.concurrency, args.seconds, args.warmup, args.timeout))
                if ctl.proc.poll() is not None:
                    res.codes["SERVER_DIED"] += 1
                results.append(res)
                s1, n1 = reconcile_totals(ctl.http_port)
                print(f"  reconcile rounds during it: {n1 - n0:g}, mean {(s1 - s0) / max(n1 - n0, 1):.3f} s",
                      flush=True)
            store = JobStore.from_url(url)
            pending = len(store.ids_in_state("pending"))
            print(f"controller: {pending} jobs pending after the run (one worker at a time)", flush=True)
            for job in store.list(state="running", limit=100):
                if job.worker_pid:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(job.worker_pid, 9)
    finally:
        stack.down()
    return results


def build_world(root: Path, n_questions: int = 32) -> dict[str, Any]:
    from s3core.data.io import load_questions
    from s3core.data.synth import synthesize
    from s3core.retrieval.index import build_index
    from s3core.rl.tiny import build_tiny_model

    synthesize(root / "world", seed=0, n_entities=max(200, n_questions), n_questions=n_questions)
    build_index(root / "world" / "corpus.jsonl", "bm25", root / "idx", show_progress=False)
    build_tiny_model(root / "tiny")
    questions = list(load_questions(root / "world" / "synth_1hop.jsonl"))
    return {"root": root, "index": root / "idx", "model": root / "tiny", "questions": questions,
            "qfile": root / "world" / "synth_1hop.jsonl"}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wanted = [s.strip() for s in args.services.split(",") if s.strip()]
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="s3-load-") as tmp:
        root = Path(tmp)
        w = build_world(root)
        qs = [q.question for q in w["questions"]]
        with contextlib.ExitStack() as stack:
            ret = stack.enter_context(service("s3_retriever", ["--index", str(w["index"]), "--threads", "1"],
                                              root / "retriever"))
            procs: dict[str, Proc] = {"retriever": ret}
            if "generator" in wanted:
                procs["generator"] = stack.enter_context(service("s3_generator", ["--model", str(w["model"])],
                                                                 root / "generator"))
            if "searcher" in wanted:
                procs["searcher"] = stack.enter_context(service(
                    "s3_searcher", ["--retriever", ret.target, "--model", str(w["model"]), "--threads", "1",
                                    "--max-batch-size", "16"], root / "searcher"))
            if "learner" in wanted:
                procs["learner"] = stack.enter_context(service(
                    "s3_learner", ["--checkpoint-dir", str(root / "ckpt"), "--model", str(w["model"]), "--algorithm",
                                   "grpo", "--device", "cpu", "--threads", "1"], root / "learner"))
            counter = iter(range(10**9))
            md = metadata()

            def retriever_call(ch: grpc.aio.Channel) -> Callable[..., Any]:
                stub = retriever_pb2_grpc.RetrieverStub(ch)

                def call(timeout: float) -> Any:
                    i = next(counter)
                    batch = [qs[(i * 8 + j) % len(qs)] for j in range(8)]
                    return stub.Search(retriever_pb2.SearchRequest(queries=batch, k=3), metadata=md, timeout=timeout)
                return call

            def generator_call(ch: grpc.aio.Channel) -> Callable[..., Any]:
                stub = generator_pb2_grpc.GeneratorStub(ch)
                docs = [common_pb2.Document(id="1", title="Maple Bridge", text="Maple Bridge was designed by Hale."),
                        common_pb2.Document(id="2", title="Ardle", text="The Ardle is a river.")]

                def call(timeout: float) -> Any:
                    q = qs[next(counter) % len(qs)]
                    item = generator_pb2.AnswerItem(question=q, documents=docs)
                    return stub.Answer(generator_pb2.AnswerRequest(items=[item], max_new_tokens=8), metadata=md,
                                       timeout=timeout)
                return call

            def searcher_call(ch: grpc.aio.Channel) -> Callable[..., Any]:
                stub = searcher_pb2_grpc.SearcherStub(ch)
                knobs = searcher_pb2.SearchKnobs(initial_k=2, retrieve_k=2, select_max=2, max_turns=1,
                                                 max_new_tokens=16, max_obs_tokens=256)

                def call(timeout: float) -> Any:
                    q = w["questions"][next(counter) % len(qs)]
                    pq = common_pb2.Question(id=q.id, question=q.question, golden_answers=list(q.golden_answers))
                    return stub.Rollout(searcher_pb2.RolloutRequest(questions=[pq], knobs=knobs), metadata=md,
                                        timeout=timeout)
                return call

            calls = {"retriever": retriever_call, "generator": generator_call, "searcher": searcher_call}
            for name in wanted:
                if name == "controller":
                    results += run_controller(root, args)
                    continue
                p = procs[name]
                print(f"{name}: {args.concurrency} clients for {args.seconds:g} s ...", flush=True)
                if name == "learner":
                    st, up, check = asyncio.run(drive_learner(p.target, p.proc.pid, args))
                    print(f"learner: {check.steps} steps x {args.dup} concurrent copies -> inconsistent answers "
                          f"{check.inconsistent}, stale retries not refused {check.stale_ok}, learner advanced "
                          f"{check.final_step} steps (expected {check.steps})", flush=True)
                    if check.inconsistent or check.stale_ok or check.final_step != check.steps:
                        up.codes["IDEMPOTENCY_VIOLATION"] += 1
                    new = [st, up]
                else:
                    new = [asyncio.run(drive(name, p.target, p.proc.pid, calls[name], args.concurrency,
                                             args.seconds, args.warmup, args.timeout))]
                if p.proc.poll() is not None:
                    new[-1].codes["SERVER_DIED"] += 1
                results += new

    rows = [r.row() for r in results]
    print(f"\nconcurrency {args.concurrency}, {args.seconds:g} s per service, loopback, {os.cpu_count()} CPUs")
    print(f"{'service':<22} {'requests':>8} {'req/s':>8} {'errors':>7} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'RSS MB':>7} {'growth':>7} {'2nd half':>8}  error codes")
    for r in rows:
        print(f"{r['service']:<22} {r['requests']:>8} {r['rps']:>8.1f} {r['error_rate']:>7.2%} {r['p50_ms']:>8.1f} "
              f"{r['p99_ms']:>8.1f} {r['rss_end_mb']:>7.0f} {r['rss_growth_mb']:>+7.1f} "
              f"{r['rss_growth_2nd_half_mb']:>+8.1f}  {r['errors'] or '-'}")
    if args.json:
        Path(args.json).write_text(json.dumps({"concurrency": args.concurrency, "seconds": args.seconds,
                                               "results": rows}, indent=1))
    ret_rows = [r for r in results if r.name == "retriever"]
    print(f"ratio={ret_rows[0].ok_rate:.4f}" if ret_rows else "ratio=nan")
    return 0


if __name__ == "__main__":
    sys.exit(main())
