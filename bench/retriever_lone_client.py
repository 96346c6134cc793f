"""A lone client's Search latency with the dynamic batch window on and off (issue 17 item 11).

Starts retriever services over one BM25 index of the wiki corpus -- this tree's with the default
2 ms window, this tree's with ``--batch-window-ms 0``, and (with ``OLD_SRC=path/to/libs/s3core/src``)
an older s3core's with the default window -- and sends them the same sequential requests of
``--batch`` queries in alternating order, so background load hits all alike.  Prints the median and
mean latency of each; the window should cost a lone client (nearly) nothing.  The last line is
``ratio=X.XX`` = median latency with the window off / with it on (>= 0.9 is the goal).

    .venv/bin/python bench/retriever_lone_client.py --batch 1
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from retrieval import DEFAULT_CORPUS, DEFAULT_QUERIES, load_queries  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=1, help="queries per request (default 1)")
    p.add_argument("--requests", type=int, default=600, help="requests per service (first 50 are warm-up)")
    p.add_argument("--corpus", default=str(DEFAULT_CORPUS))
    args = p.parse_args()
    import grpc

    from s3.v1 import retriever_pb2, retriever_pb2_grpc
    from s3core.retrieval import build_index

    tmp = Path(tempfile.mkdtemp(prefix="s3-bench-lone-"))
    procs: list[subprocess.Popen] = []
    try:
        build_index(args.corpus, "bm25", tmp / "idx", show_progress=False)
        old = os.environ.get("OLD_SRC", "")
        variants = {"window 2 ms": ("", None), "window 0": ("", "0")}
        if old:
            variants["older s3core, 2 ms"] = (f"{old}:{HERE.parent / 'libs/s3core/src'}", None)
        stubs = {}
        for i, (name, (pythonpath, window)) in enumerate(variants.items()):
            ready = tmp / f"{i}.ready"
            cmd = [sys.executable, "-m", "s3_retriever", "--index", str(tmp / "idx"), "--port", "0",
                   "--http-port", "0", "--ready-file", str(ready)]
            if window is not None:
                cmd += ["--batch-window-ms", window]
            env = dict(os.environ, S3_LOG_LEVEL="WARNING", PYTHONPATH=pythonpath)
            procs.append(subprocess.Popen(cmd, env=env))
            while not ready.exists():
                if procs[-1].poll() is not None:
                    raise SystemExit(f"{name}: the service exited with {procs[-1].returncode}")
                time.sleep(0.1)
            time.sleep(0.2)
            port = json.loads(ready.read_text())["grpc_port"]
            stubs[name] = retriever_pb2_grpc.RetrieverStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        qs = load_queries(DEFAULT_QUERIES, args.requests * args.batch)
        lat: dict[str, list[float]] = {n: [] for n in stubs}
        for i in range(args.requests):
            req = retriever_pb2.SearchRequest(queries=qs[i * args.batch:(i + 1) * args.batch], k=10)
            order = list(stubs.items()) if i % 2 else list(reversed(stubs.items()))
            for name, stub in order:
                t = time.perf_counter()
                stub.Search(req)
                if i >= 50:
                    lat[name].append(time.perf_counter() - t)
        for name, xs in lat.items():
            print(f"batch {args.batch}  {name:<20} median {1000 * statistics.median(xs):7.2f} ms   "
                  f"mean {1000 * statistics.mean(xs):7.2f} ms")
        print(f"ratio={statistics.median(lat['window 0']) / statistics.median(lat['window 2 ms']):.2f}")
    finally:
        for proc in procs:
            proc.terminate()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
