"""Naive-RAG baseline precompute: cold (empty cache) vs warm (every baseline cached), same questions.

Synthesizes a fictional world (``--n-questions`` per 1-hop / 2-hop file, so 2×N questions), builds a
BM25 index, and starts a real redis-server, the retriever service and the generator service on
loopback (embedded SmolLM2 on CPU unless ``--backend/--model`` say otherwise).  Then:

* cold: ``precompute`` on an empty cache namespace — retrieve, generate, score, judge, store;
* warm: ``precompute`` again on the same set, ``--warm-rounds`` times (best round kept) — every
  baseline is a cache hit, no generator call.

Both timings include resolving the key setup from the services (ListIndexes, ModelInfo).  The last
line printed is ``ratio=X.X`` = cold seconds / warm seconds (goal ≥ 50).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--n-questions", type=int, default=20, help="questions per synthetic file (two files; default 20)")
    p.add_argument("--seed", type=int, default=3, help="synthetic world seed")
    p.add_argument("--k", type=int, default=3, help="naive-RAG top-k (initial_k)")
    p.add_argument("--batch-size", type=int, default=8, help="questions per generator request")
    p.add_argument("--no-judge", action="store_true", help="span match only (no judge calls)")
    p.add_argument("--warm-rounds", type=int, default=5, help="warm runs; the best is kept")
    p.add_argument("--backend", default="", help="generator backend (default: the config's, hf)")
    p.add_argument("--model", default="", help="generator model (default: the embedded SmolLM2-135M)")
    p.add_argument("--startup-timeout", type=float, default=600.0, help="seconds to wait for each service")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.n_questions < 20:
        p.error("--n-questions must be >= 20 (the bench runs on at least 40 questions)")
    if args.warm_rounds < 1 or args.batch_size < 1 or args.k < 1:
        p.error("--warm-rounds, --batch-size and --k must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from s3core.cache.baseline import BaselineCache, connect
    from s3core.data import load_questions
    from s3core.data.synth import synthesize
    from s3core.eval.precompute import precompute
    from s3core.retrieval.index import build_index
    from s3core.rpc.clients import GeneratorClient, RetrieverClient
    from s3core.runtime.local import LocalStack

    with tempfile.TemporaryDirectory(prefix="s3-bench-precompute-") as tmp:
        root = Path(tmp)
        synthesize(root / "data", seed=args.seed, n_questions=args.n_questions)
        build_index(root / "data" / "corpus.jsonl", "bm25", root / "idx", show_progress=False)
        sets = {name: load_questions(root / "data" / f"{name}.jsonl") for name in ("synth_1hop", "synth_2hop")}
        n = sum(len(v) for v in sets.values())

        stack = LocalStack(root / "state", detach=False)
        try:
            rinfo = stack.start_redis()
            url = f"redis://127.0.0.1:{rinfo.grpc_port}/0"
            ret_addr = stack.start_service("retriever", "s3_retriever", ["--index", str(root / "idx")],
                                           timeout=args.startup_timeout).address
            gen_args: list[str] = []
            if args.backend:
                gen_args += ["--backend", args.backend]
            if args.model:
                gen_args += ["--model", args.model]
            gen_addr = stack.start_service("generator", "s3_generator", gen_args, timeout=args.startup_timeout).address
            ret, gen = RetrieverClient(ret_addr), GeneratorClient(gen_addr)
            ret.wait_ready(args.startup_timeout)
            gen.wait_ready(args.startup_timeout)
            info = gen.model_info()
            cache = BaselineCache(connect(url), namespace="bench", url=url)
            cache.clear()

            def run(show: bool):  # noqa: ANN202
                t = time.perf_counter()
                s = precompute(sets, ret, gen, cache, k=args.k, judge=not args.no_judge, batch_size=args.batch_size,
                               show_progress=show)
                return time.perf_counter() - t, s

            print(f"questions={n} k={args.k} batch={args.batch_size} judge={not args.no_judge} "
                  f"generator={info.backend}/{info.model} prompt={info.prompt_version}")
            cold_s, cold = run(not args.quiet)
            if cold.misses != n or cold.hits != 0:
                print(f"cold run was not cold: {cold.hits} hits, {cold.misses} misses", file=sys.stderr)
                return 1
            warm_times = []
            for _ in range(args.warm_rounds):
                warm_s, warm = run(False)
                if warm.hits != n or warm.misses != 0:
                    print(f"warm run was not warm: {warm.hits} hits, {warm.misses} misses", file=sys.stderr)
                    return 1
                warm_times.append(warm_s)
            warm_s = min(warm_times)
            print(f"cold: {cold_s:.2f} s  ({n / cold_s:.2f} q/s; {cold.written} baselines written; "
                  f"GenAcc {100 * cold.genacc:.1f}%, EM {100 * cold.em:.1f}%)")
            print(f"warm: {1000 * warm_s:.1f} ms  ({n / warm_s:.0f} q/s; best of {args.warm_rounds}; "
                  f"{warm.hits} hits)")
            print(f"ratio={cold_s / warm_s:.1f}")
            ret.close()
            gen.close()
        finally:
            stack.down()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
