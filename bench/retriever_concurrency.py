"""Retriever under rollout concurrency, with and without server-side dynamic batching.

Builds a synthetic world (``s3core.data.synth``) and a dense index of it with the embedded encoder
(all-MiniLM-L6-v2, faiss flat) in a temp dir, then runs the real retriever service on loopback
(``python -m s3_retriever``, port 0, ready file) twice over the same index:

* ``off``: ``--batch-window-ms 0`` -- every Search is its own encoder pass + faiss search;
* ``on``:  ``--batch-window-ms W`` -- concurrent Searches are coalesced (``retriever.batch_*``).

Each time, ``--concurrency`` closed-loop grpc.aio clients (spread over ``--channels`` channels) send
rollout-like Search requests -- 1 to 3 queries (questions and query-like rewrites of them), k from
3 to 10 -- for ``--seconds`` after ``--warmup``.  Reported per mode: requests, error rate with the
status codes (goal 0), requests/s, queries/s, p50 / p99 latency, and from the server's /metrics the
mean number of requests per backend search and the share of the asked queries the backend actually
searched (identical queries coalesced into one batch are searched once).  The last line is ``ratio=X.XX`` = requests/s with
batching / requests/s without.

    .venv/bin/python bench/retriever_concurrency.py                 # 256 clients, 30 s per mode
    .venv/bin/python bench/retriever_concurrency.py --seconds 10 --concurrency 64
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from load import service  # bench/ is on sys.path when a bench script runs


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--concurrency", type=int, default=256, help="concurrent closed-loop clients (default 256)")
    p.add_argument("--channels", type=int, default=16, help="gRPC channels the clients share (default 16)")
    p.add_argument("--seconds", type=float, default=30.0, help="timed seconds per mode (default 30)")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of load before timing (default 3)")
    p.add_argument("--window-ms", type=float, default=2.0, help="batch window of the 'on' mode (default 2)")
    p.add_argument("--max-batch-queries", type=int, default=512, help="retriever.batch_max_queries (default 512)")
    p.add_argument("--entities", type=int, default=400, help="synthetic world size (passages ~ 2.2x; default 400)")
    p.add_argument("--threads", type=int, default=1,
                   help="server torch / faiss threads (default 1: the clients share the cores; 0 = library default)")
    p.add_argument("--timeout", type=float, default=60.0, help="deadline of one request in seconds (default 60)")
    p.add_argument("--modes", default="off,on", help="which modes to run, in order (default off,on)")
    p.add_argument("--json", help="also write the figures here")
    return p.parse_args(argv)


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    grpc_port: int
    http_port: int

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/metrics", timeout=10) as resp:
            return resp.read().decode()


@contextlib.contextmanager
def retriever(index: Path, work: Path, extra: list[str], timeout: float = 300.0) -> Iterator[Server]:
    """The real retriever service on loopback (started and stopped as bench/load.py does)."""
    with service("s3_retriever", ["--index", str(index), *extra], work, timeout) as p:
        yield Server(p.proc, p.port, p.http_port)


@dataclass
class Result:
    mode: str
    latencies: list[float] = field(default_factory=list)
    codes: Counter[str] = field(default_factory=Counter)
    queries: int = 0
    seconds: float = 0.0
    backend_calls: float = 0.0
    batched_requests: float = 0.0
    searched_queries: float = 0.0  # distinct queries the backend searched (identical ones in a batch: once)
    asked_queries: float = 0.0

    @property
    def n(self) -> int:
        return sum(self.codes.values())

    def pct(self, q: float) -> float:
        xs = sorted(self.latencies)
        return xs[min(len(xs) - 1, int(q * len(xs)))] * 1000 if xs else float("nan")

    def row(self) -> dict[str, Any]:
        errors = {k: v for k, v in self.codes.items() if k != "OK"}
        ok = self.codes["OK"]
        return {"mode": self.mode, "requests": self.n, "error_rate": (self.n - ok) / self.n if self.n else 1.0,
                "errors": errors, "rps": ok / self.seconds if self.seconds else 0.0,
                "qps": self.queries / self.seconds if self.seconds else 0.0,
                "p50_ms": self.pct(0.50), "p99_ms": self.pct(0.99),
                "requests_per_backend_call": (self.batched_requests / self.backend_calls
                                              if self.backend_calls else 1.0),
                "searched_per_asked": self.searched_queries / self.asked_queries if self.asked_queries else 1.0}


def _metric_sum(text: str, name: str) -> float:
    m = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.MULTILINE)
    return float(m.group(1)) if m else 0.0


def make_queries(questions: list[str], seed: int = 0) -> list[str]:
    """The questions plus query-like rewrites (what a searcher turn sends)."""
    rng = random.Random(seed)
    out = list(questions)
    for q in questions:
        words = [w.strip("?,.") for w in q.split() if len(w) > 3]
        if words:
            out.append(" ".join(rng.sample(words, min(len(words), rng.randint(2, 4)))))
    return out


async def drive(mode: str, server: Server, queries: list[str], args: argparse.Namespace) -> Result:
    import grpc

    from s3.v1 import retriever_pb2, retriever_pb2_grpc

    res = Result(mode)
    channels = [grpc.aio.insecure_channel(server.target) for _ in range(max(1, args.channels))]
    stubs = [retriever_pb2_grpc.RetrieverStub(ch) for ch in channels]
    timed = {"on": False}
    stop_at = time.monotonic() + args.warmup + args.seconds

    async def client(i: int) -> None:
        rng = random.Random(i)
        stub = stubs[i % len(stubs)]
        while time.monotonic() < stop_at:
            qs = rng.sample(queries, rng.randint(1, 3))
            req = retriever_pb2.SearchRequest(queries=qs, k=rng.randint(3, 10))
            t0 = time.perf_counter()
            try:
                await stub.Search(req, timeout=args.timeout)
                code = "OK"
            except grpc.aio.AioRpcError as exc:
                code = exc.code().name
            if timed["on"]:
                res.codes[code] += 1
                if code == "OK":
                    res.latencies.append(time.perf_counter() - t0)
                    res.queries += len(qs)

    tasks = [asyncio.create_task(client(i)) for i in range(args.concurrency)]
    await asyncio.sleep(args.warmup)
    before = await asyncio.to_thread(server.metrics)
    timed["on"] = True
    t_start = time.monotonic()
    await asyncio.gather(*tasks)
    res.seconds = time.monotonic() - t_start
    after = await asyncio.to_thread(server.metrics)
    for ch in channels:
        await ch.close()
    name = "s3_retriever_batcher_requests_per_batch"
    res.backend_calls = _metric_sum(after, f"{name}_count") - _metric_sum(before, f"{name}_count")
    res.batched_requests = _metric_sum(after, f"{name}_sum") - _metric_sum(before, f"{name}_sum")
    name = "s3_retriever_batcher_queries_per_batch_sum"
    res.searched_queries = _metric_sum(after, name) - _metric_sum(before, name)
    name = "s3_retriever_queries_total"
    res.asked_queries = _metric_sum(after, name) - _metric_sum(before, name)
    if server.proc.poll() is not None:
        res.codes["SERVER_DIED"] += 1
    return res


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from rich.console import Console
    from rich.table import Table

    from s3core.data.io import load_questions
    from s3core.data.synth import synthesize
    from s3core.retrieval import build_index

    console = Console(width=max(120, Console().width))
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in ("off", "on") for m in modes):
        raise SystemExit(f"--modes must list off and/or on, got {args.modes!r}")
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="s3-bench-conc-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        synthesize(root / "world", seed=0, n_entities=args.entities, n_questions=200)
        manifest = build_index(root / "world" / "corpus.jsonl", "dense", root / "idx", show_progress=False)
        build_s = time.perf_counter() - t0
        questions = [q.question for f in ("synth_1hop.jsonl", "synth_2hop.jsonl")
                     for q in load_questions(root / "world" / f)]
        queries = make_queries(questions)
        console.print(f"index: {manifest['num_documents']} passages, dense {manifest['encoder']} "
                      f"(built in {build_s:.0f} s); {len(queries)} distinct queries")
        for mode in modes:
            window = args.window_ms if mode == "on" else 0.0
            extra = ["--batch-window-ms", str(window), "--batch-max-queries", str(args.max_batch_queries),
                     "--threads", str(args.threads)]
            with retriever(root / "idx", root / f"srv-{mode}", extra) as server:
                console.print(f"[bold]{mode}[/] (batch window {window:g} ms): {args.concurrency} clients for "
                              f"{args.seconds:g} s ...")
                results.append(asyncio.run(drive(mode, server, queries, args)))

    rows = [r.row() for r in results]
    table = Table(title=f"retriever Search, {args.concurrency} concurrent clients, {args.seconds:g} s per mode, "
                        f"loopback, {os.cpu_count()} CPUs")
    for col in ("batching", "requests", "errors", "req/s", "queries/s", "p50 ms", "p99 ms", "req / backend call",
                "searched / asked", "error codes"):
        table.add_column(col, justify="left" if col in ("batching", "error codes") else "right")
    for r in rows:
        label = f"on ({args.window_ms:g} ms)" if r["mode"] == "on" else "off"
        table.add_row(label, str(r["requests"]), f"{r['error_rate']:.2%}", f"{r['rps']:.1f}", f"{r['qps']:.1f}",
                      f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}", f"{r['requests_per_backend_call']:.1f}",
                      f"{r['searched_per_asked']:.2f}", str(r["errors"] or "-"))
    console.print(table)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": rows}, indent=1))
    by = {r["mode"]: r for r in rows}
    if "on" in by and "off" in by and by["off"]["rps"] > 0:
        print(f"ratio={by['on']['rps'] / by['off']['rps']:.2f}")
    else:
        print("ratio=nan")
    return 0


if __name__ == "__main__":
    sys.exit(main())
