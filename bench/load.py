"""Load on the retriever, generator and searcher services: N concurrent clients for a bounded time.

Builds a synthetic world, its BM25 index and the tiny Qwen2 test model (``s3core.rl.tiny``) in a
temp dir, starts the real services on loopback (``python -m s3_retriever`` / ``s3_generator`` /
``s3_searcher``, port 0, ready files), then, one service at a time, runs ``--concurrency`` grpc.aio
clients in a closed loop for ``--seconds``:

* retriever ``Search``: 8 queries x k=3 (a rollout turn's batch);
* generator ``Answer``: one question with two documents, 8 new tokens;
* searcher ``Rollout``: one question, one search turn, 16 new tokens (the searcher calls the retriever).

Reported per service: requests/s, error rate with the status codes, p50 / p99 latency, and the
server process's RSS after a warm-up and at the end (growth).  The last line is
``ratio=X.XXXX`` = the retriever's success rate (1.0 = no request failed).

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
    generator_pb2,
    generator_pb2_grpc,
    retriever_pb2,
    retriever_pb2_grpc,
    searcher_pb2,
    searcher_pb2_grpc,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--concurrency", type=int, default=16, help="concurrent clients per service (default 16)")
    p.add_argument("--seconds", type=float, default=10.0, help="timed seconds per service (default 10)")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of load before timing (default 2)")
    p.add_argument("--services", default="retriever,generator,searcher", help="comma-separated subset")
    p.add_argument("--timeout", type=float, default=60.0, help="deadline of one request in seconds")
    p.add_argument("--json", help="also write the figures here")
    return p.parse_args(argv)


@dataclass
class Proc:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

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
        yield Proc(proc, int(json.loads(ready.read_text())["grpc_port"]), log)
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
                "rss_growth_mb": self.rss_end_mb - self.rss_start_mb}


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


async def drive(name: str, target: str, pid: int, make_call: Callable[[grpc.aio.Channel], Callable[[], Any]],
                concurrency: int, seconds: float, warmup: float, timeout: float) -> Result:
    res = Result(name)
    async with grpc.aio.insecure_channel(target) as ch:
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
        await asyncio.gather(*tasks)
        res.seconds = time.monotonic() - t_start
        res.rss_end_mb = rss_mb(pid)
    return res


def build_world(root: Path) -> dict[str, Any]:
    from s3core.data.io import load_questions
    from s3core.data.synth import synthesize
    from s3core.retrieval.index import build_index
    from s3core.rl.tiny import build_tiny_model

    synthesize(root / "world", seed=0, n_entities=200, n_questions=32)
    build_index(root / "world" / "corpus.jsonl", "bm25", root / "idx", show_progress=False)
    build_tiny_model(root / "tiny")
    questions = list(load_questions(root / "world" / "synth_1hop.jsonl"))
    return {"index": root / "idx", "model": root / "tiny", "questions": questions}


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
            counter = iter(range(10**9))

            def retriever_call(ch: grpc.aio.Channel) -> Callable[..., Any]:
                stub = retriever_pb2_grpc.RetrieverStub(ch)

                def call(timeout: float) -> Any:
                    i = next(counter)
                    batch = [qs[(i * 8 + j) % len(qs)] for j in range(8)]
                    return stub.Search(retriever_pb2.SearchRequest(queries=batch, k=3), timeout=timeout)
                return call

            def generator_call(ch: grpc.aio.Channel) -> Callable[..., Any]:
                stub = generator_pb2_grpc.GeneratorStub(ch)
                docs = [common_pb2.Document(id="1", title="Maple Bridge", text="Maple Bridge was designed by Hale."),
                        common_pb2.Document(id="2", title="Ardle", text="The Ardle is a river.")]

                def call(timeout: float) -> Any:
                    q = qs[next(counter) % len(qs)]
                    item = generator_pb2.AnswerItem(question=q, documents=docs)
                    return stub.Answer(generator_pb2.AnswerRequest(items=[item], max_new_tokens=8), timeout=timeout)
                return call

            def searcher_call(ch: grpc.aio.Channel) -> Callable[..., Any]:
                stub = searcher_pb2_grpc.SearcherStub(ch)
                knobs = searcher_pb2.SearchKnobs(initial_k=2, retrieve_k=2, select_max=2, max_turns=1,
                                                 max_new_tokens=16, max_obs_tokens=256)

                def call(timeout: float) -> Any:
                    q = w["questions"][next(counter) % len(qs)]
                    pq = common_pb2.Question(id=q.id, question=q.question, golden_answers=list(q.golden_answers))
                    return stub.Rollout(searcher_pb2.RolloutRequest(questions=[pq], knobs=knobs), timeout=timeout)
                return call

            calls = {"retriever": retriever_call, "generator": generator_call, "searcher": searcher_call}
            for name in wanted:
                p = procs[name]
                print(f"{name}: {args.concurrency} clients for {args.seconds:g} s ...", flush=True)
                res = asyncio.run(drive(name, p.target, p.proc.pid, calls[name], args.concurrency, args.seconds,
                                        args.warmup, args.timeout))
                if p.proc.poll() is not None:
                    res.codes["SERVER_DIED"] += 1
                results.append(res)

    rows = [r.row() for r in results]
    print(f"\nconcurrency {args.concurrency}, {args.seconds:g} s per service, loopback, {os.cpu_count()} CPUs")
    print(f"{'service':<10} {'requests':>8} {'req/s':>8} {'errors':>7} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'RSS MB':>7} {'growth':>7}  error codes")
    for r in rows:
        print(f"{r['service']:<10} {r['requests']:>8} {r['rps']:>8.1f} {r['error_rate']:>7.2%} {r['p50_ms']:>8.1f} "
              f"{r['p99_ms']:>8.1f} {r['rss_end_mb']:>7.0f} {r['rss_growth_mb']:>+7.1f}  {r['errors'] or '-'}")
    if args.json:
        Path(args.json).write_text(json.dumps({"concurrency": args.concurrency, "seconds": args.seconds,
                                               "results": rows}, indent=1))
    ret_rows = [r for r in results if r.name == "retriever"]
    print(f"ratio={ret_rows[0].ok_rate:.4f}" if ret_rows else "ratio=nan")
    return 0


if __name__ == "__main__":
    sys.exit(main())
