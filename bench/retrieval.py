"""Retriever-service throughput vs in-process BM25 search (``make bench``).

Builds a BM25 index of the corpus in a temp dir, starts the real retriever service
(``python -m s3_retriever`` on loopback, port 0, ready file), then times on the same queries:

* in-process: ``s3core`` BM25 retriever ``search`` at ``--batch`` queries per call;
* service: the gRPC ``Search`` RPC at ``--batch`` queries per request.

Both sides use the same number of bm25s search threads (``--threads``) so the comparison is fair on
a small machine where client and server share the cores.  After a warm-up, every batch is run
both ways back to back (so background load hits both alike), for ``--rounds`` rounds; the best
round of each is kept.  The last line printed is
``ratio=X.XX`` = service q/s / in-process q/s.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CORPUS = REPO / ".." / "shared" / "data" / "wiki_corpus.jsonl"
DEFAULT_QUERIES = str(REPO / ".." / "shared" / "data" / "wiki_qa" / "*.dev.jsonl")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--corpus", default=str(DEFAULT_CORPUS), help="jsonl corpus (default: %(default)s)")
    p.add_argument("--queries", default=DEFAULT_QUERIES,
                   help="glob of FlashRAG question files whose questions are the queries (default: %(default)s)")
    p.add_argument("--batch", type=int, default=32, help="queries per search call / request")
    p.add_argument("--n-queries", type=int, default=2048, help="queries per timed round")
    p.add_argument("--k", type=int, default=10, help="documents per query")
    p.add_argument("--threads", type=int, default=0,
                   help="bm25s search threads, same in-process and in the service (0 = sequential)")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds (each round runs every batch both ways)")
    p.add_argument("--batch-window-ms", type=float, default=None,
                   help="the service's dynamic batch window (default: the service's, 2 ms; 0 = batching off)")
    p.add_argument("--startup-timeout", type=float, default=120.0, help="seconds to wait for the service")
    return p.parse_args(argv)


def load_queries(pattern: str, n: int) -> list[str]:
    files = sorted(glob.glob(pattern))
    if not files:
        raise SystemExit(f"no question files match {pattern}")
    qs: list[str] = []
    for f in files:
        with open(f, encoding="utf-8") as fh:
            qs.extend(json.loads(line)["question"] for line in fh if line.strip())
    random.Random(0).shuffle(qs)  # mix the datasets
    while len(qs) < n:
        qs = qs + qs
    return qs[:n]


def start_service(index_dir: Path, threads: int, ready: Path, timeout: float,
                  batch_window_ms: float | None = None) -> tuple[subprocess.Popen, dict]:
    env = dict(os.environ, S3_LOG_LEVEL="WARNING")
    cmd = [sys.executable, "-m", "s3_retriever", "--index", str(index_dir), "--host", "127.0.0.1", "--port", "0",
           "--http-port", "0", "--ready-file", str(ready), "--threads", str(threads)]
    if batch_window_ms is not None:
        cmd += ["--batch-window-ms", str(batch_window_ms)]
    proc = subprocess.Popen(cmd, env=env)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"retriever service exited with code {proc.returncode}")
        if ready.exists():
            try:
                return proc, json.loads(ready.read_text())
            except json.JSONDecodeError:
                pass
        time.sleep(0.05)
    proc.terminate()
    raise SystemExit(f"retriever service not ready after {timeout:.0f} s")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import grpc

    from s3.v1 import retriever_pb2, retriever_pb2_grpc
    from s3core.retrieval import build_index, load_index
    from s3core.rpc.convert import docs_from_pb

    queries = load_queries(args.queries, args.n_queries)
    batches = [queries[i:i + args.batch] for i in range(0, len(queries), args.batch)]

    with tempfile.TemporaryDirectory(prefix="s3-bench-") as tmp:
        index_dir = Path(tmp) / "bm25"
        t0 = time.perf_counter()
        manifest = build_index(args.corpus, "bm25", index_dir, show_progress=False)
        build_s = time.perf_counter() - t0
        retriever = load_index(index_dir, threads=args.threads)
        proc, ready = start_service(index_dir, args.threads, Path(tmp) / "ready.json", args.startup_timeout,
                                    args.batch_window_ms)
        channel = grpc.insecure_channel(f"127.0.0.1:{ready['grpc_port']}",
                                        options=[("grpc.max_receive_message_length", 64 << 20)])
        stub = retriever_pb2_grpc.RetrieverStub(channel)
        try:
            def search_rpc(b: list[str], to_docs: bool = False) -> None:
                resp = stub.Search(retriever_pb2.SearchRequest(queries=b, k=args.k))
                if to_docs:
                    [docs_from_pb(h.documents) for h in resp.results]

            def timed_round() -> tuple[float, float, float]:
                """Each batch in-process, then over gRPC, then over gRPC + conversion to Doc,
                alternating which goes first: background load hits all three alike."""
                spent = [0.0, 0.0, 0.0]
                calls = [lambda b: retriever.search(b, args.k), search_rpc, lambda b: search_rpc(b, True)]
                for i, b in enumerate(batches):
                    order = (0, 1, 2) if i % 2 == 0 else (2, 1, 0)
                    for j in order:
                        t = time.perf_counter()
                        calls[j](b)
                        spent[j] += time.perf_counter() - t
                return len(queries) / spent[0], len(queries) / spent[1], len(queries) / spent[2]

            # sanity: same ranking both ways
            local = retriever.search(batches[0], args.k)
            remote = stub.Search(retriever_pb2.SearchRequest(queries=batches[0], k=args.k))
            same = all([d.id for d in a] == [d.id for d in b.documents] for a, b in zip(local, remote.results))
            # warm-up (page cache, allocator, channel, thread pools)
            for b in batches[:8]:
                retriever.search(b, args.k)
                search_rpc(b)
            inproc, rpc, rpc_docs = [], [], []
            for _ in range(args.rounds):
                a, b, c = timed_round()
                inproc.append(a)
                rpc.append(b)
                rpc_docs.append(c)
        finally:
            channel.close()
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
            retriever.close()

    best_in, best_rpc, best_docs = max(inproc), max(rpc), max(rpc_docs)
    print(f"corpus: {manifest['num_documents']} docs (BM25 build {build_s:.1f} s); {len(queries)} queries, "
          f"batch {args.batch}, k {args.k}, threads {args.threads}, {args.rounds} rounds (best of each), "
          f"service batch window {'default' if args.batch_window_ms is None else f'{args.batch_window_ms:g} ms'}")
    print(f"same rankings in-process and over gRPC: {'yes' if same else 'NO'}")
    print(f"{'path':<36}{'q/s (best)':>12}{'q/s (all rounds)':>36}")
    rows = [("in-process BM25Retriever.search", best_in, inproc),
            ("gRPC Search (service)", best_rpc, rpc),
            ("gRPC Search + protos -> Doc", best_docs, rpc_docs)]
    for name, best, allr in rows:
        print(f"{name:<36}{best:>12.0f}{' '.join(f'{x:.0f}' for x in allr):>36}")
    print(f"ratio={best_rpc / best_in:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
