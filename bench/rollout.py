"""End-to-end rollout time of a batch vs the time spent inside model and retrieval calls.

Synthesises a small world (``s3core.data.synth``), builds a BM25 index of it in a temp dir, starts
the real retriever and searcher services on loopback (``python -m s3_retriever`` /
``python -m s3_searcher``, port 0, ready files), warms the searcher up with a one-question rollout,
then sends one ``Rollout`` (or ``RolloutStream`` with ``--stream``) of ``--n-questions`` questions.

* wall: the client's time for the whole RPC (request, episodes, response, decoding to Trajectory);
* model / retrieval: the searcher's own account of the time inside its batched policy ``generate``
  calls and its retriever ``Search`` calls (retries included), sent back as trailing metadata.

Everything else (prompt rendering, tokenising observations, parsing, context assembly, protobuf,
gRPC) is overhead.  The last line printed is ``ratio=X.XX`` = wall / (model + retrieval); the goal is
<= 1.05.  ``--rounds`` > 1 repeats the timed rollout and keeps the round with the lowest ratio.
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
    p.add_argument("--n-questions", type=int, default=16, help="questions in the timed batch (default: %(default)s)")
    p.add_argument("--n", type=int, default=1, help="trajectories per question (default: %(default)s)")
    p.add_argument("--initial-k", type=int, default=3, help="docs of block 0 (default: %(default)s)")
    p.add_argument("--retrieve-k", type=int, default=3, help="docs per searcher query (default: %(default)s)")
    p.add_argument("--select-max", type=int, default=3, help="most docs selected per block (default: %(default)s)")
    p.add_argument("--max-turns", type=int, default=2, help="searching turns (default: %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens per turn (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="rollout seed (default: %(default)s)")
    p.add_argument("--world-seed", type=int, default=0, help="seed of the synthetic world (default: %(default)s)")
    p.add_argument("--model", default="", help="policy model (default: the searcher's, embedded SmolLM2-135M)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads in the searcher; 1 is fastest on a small shared box (default: %(default)s)")
    p.add_argument("--max-batch-size", type=int, default=16, help="sequences per forward batch (default: %(default)s)")
    p.add_argument("--stream", action="store_true", help="time RolloutStream instead of Rollout")
    p.add_argument("--rounds", type=int, default=1, help="timed rollouts; the best ratio is kept (default: %(default)s)")
    p.add_argument("--startup-timeout", type=float, default=600.0, help="seconds to wait for each service")
    args = p.parse_args(argv)
    if args.n_questions < 1 or args.rounds < 1 or args.n < 1:
        p.error("--n-questions, --n and --rounds must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from s3core.data.io import load_questions
    from s3core.data.synth import synthesize
    from s3core.retrieval.index import build_index
    from s3core.rpc.clients import SearcherClient
    from s3core.runtime.local import LocalStack

    knobs = {"initial_k": args.initial_k, "retrieve_k": args.retrieve_k, "select_max": args.select_max,
             "max_turns": args.max_turns, "max_new_tokens": args.max_new_tokens, "temperature": args.temperature}
    with tempfile.TemporaryDirectory(prefix="s3-bench-rollout-") as tmp:
        root = Path(tmp)
        per_file = (args.n_questions + 1) // 2
        synthesize(root / "data", seed=args.world_seed, n_questions=max(1, per_file))
        build_index(root / "data" / "corpus.jsonl", "bm25", root / "idx", show_progress=False)
        questions = (load_questions(root / "data" / "synth_1hop.jsonl")
                     + load_questions(root / "data" / "synth_2hop.jsonl"))[: args.n_questions]

        stack = LocalStack(root / "stack", detach=False)
        try:
            t0 = time.perf_counter()
            ret = stack.start_service("retriever", "s3_retriever", ["--index", str(root / "idx")],
                                      timeout=args.startup_timeout)
            s_args = ["--retriever", ret.address, "--threads", str(args.threads),
                      "--max-batch-size", str(args.max_batch_size)]
            if args.model:
                s_args += ["--model", args.model]
            srch = stack.start_service("searcher", "s3_searcher", s_args, timeout=args.startup_timeout)
            client = SearcherClient(srch.address, timeout=24 * 3600)
            client.wait_ready(timeout=args.startup_timeout)
            print(f"services up in {time.perf_counter() - t0:.1f}s (retriever {ret.address}, searcher {srch.address})",
                  file=sys.stderr)
            client.rollout(questions[:1], {**knobs, "max_turns": 1, "max_new_tokens": 4})  # warm-up

            best: dict[str, float] | None = None
            for r in range(args.rounds):
                t1 = time.perf_counter()
                if args.stream:
                    trajs = list(client.rollout_stream(questions, knobs, n=args.n, seed=args.seed))
                else:
                    trajs = client.rollout(questions, knobs, n=args.n, seed=args.seed)
                wall = time.perf_counter() - t1
                st = dict(client.last_stats)
                inside = st.get("generate_seconds", 0.0) + st.get("search_seconds", 0.0)
                row = {**st, "wall": wall, "inside": inside, "ratio": wall / inside if inside > 0 else float("inf"),
                       "episodes": float(len(trajs))}
                print(f"round {r + 1}/{args.rounds}: wall {wall:.2f}s, ratio {row['ratio']:.3f}", file=sys.stderr)
                if best is None or row["ratio"] < best["ratio"]:
                    best = row
            client.close()
        finally:
            stack.down()

    assert best is not None
    rpc = "RolloutStream" if args.stream else "Rollout"
    other = best["wall"] - best["inside"]
    lines = [
        (f"{rpc} of {args.n_questions} questions x {args.n}", ""),
        ("knobs", " ".join(f"{k}={v}" for k, v in knobs.items())),
        ("episodes returned", f"{best['episodes']:.0f}"),
        ("turns / searches", f"{best.get('turns', 0):.0f} / {best.get('searches', 0):.0f}"),
        ("generated tokens", f"{best.get('generated_tokens', 0):.0f}"),
        ("wall (client)", f"{best['wall']:.3f} s"),
        ("server rollout", f"{best.get('rollout_seconds', 0):.3f} s"),
        ("model (generate)", f"{best.get('generate_seconds', 0):.3f} s in {best.get('generate_calls', 0):.0f} calls"),
        ("retrieval (search)", f"{best.get('search_seconds', 0):.3f} s in {best.get('search_calls', 0):.0f} calls"),
        ("overhead", f"{other:.3f} s ({100 * other / best['wall']:.1f}% of wall)"),
        ("retrieval retries", f"{best.get('retrieval_retries', 0):.0f}"),
    ]
    width = max(len(k) for k, _ in lines)
    for k, v in lines:
        print(f"{k:<{width}}  {v}")
    print(f"ratio={best['ratio']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
