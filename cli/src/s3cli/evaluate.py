"""`s3 eval`, `s3 show` and `s3 demo`: evaluation through the services, a saved episode, the whole pipeline."""

from __future__ import annotations

import argparse
from typing import Any

from s3cli.common import _common_config, _console, _generator_flags, _load_config


def _print_results(results: list[dict[str, Any]], out: str | None = None) -> None:
    from pathlib import Path

    from rich.table import Table

    from s3core.eval.report import PLOT_FILE, TRAJECTORIES_FILE, table_rows

    header, rows = table_rows(results)
    t = Table(title="GenAcc (EM), %", show_lines=False)
    for h in header:
        t.add_column(h, justify="left" if h == "Method" else "right")
    for r in rows:
        t.add_row(*r)
    c = _console()
    c.print(t)
    for res in results:
        recall = {d: r.get("answer_recall@k") for d, r in res["datasets"].items()}
        if any(v is not None for v in recall.values()):
            k = res["config"]["k"]
            c.print(f"{res['method']}: answer_recall@{k} " + ", ".join(f"{d} {100 * v:.1f}%" for d, v in recall.items() if v is not None),
                    markup=False)
    if out is not None:
        root = Path(out)
        if (root / PLOT_FILE).is_file():
            c.print(f"plot: {root / PLOT_FILE}", markup=False)
        trajs = sorted(root.glob(f"**/{TRAJECTORIES_FILE}"))
        if trajs:
            c.print(f"trajectories: {', '.join(map(str, trajs))} (view one with `s3 show FILE --index N`)", markup=False)


def cmd_eval(args: argparse.Namespace) -> int:
    from s3core.eval.job import EvalJob, run_eval_job

    judge_only = args.judge == "only"
    if judge_only:
        args.judge = "model"  # the generator judges every row (EvalJob.judge_only)
    cfg = _load_config(args)
    methods: list[str] = []
    for m in args.method:
        methods += [x.strip() for x in m.split(",") if x.strip()]
    job = EvalJob(
        questions=args.questions, methods=methods, out=args.out, index=args.index or "",
        k=args.k if args.k is not None else cfg.eval.k, limit=args.limit if args.limit is not None else cfg.eval.limit,
        retriever=args.retriever or "", generator=args.generator or "", config=cfg,
        config_path=args.config or "", show_progress=not args.quiet,
        searcher=args.searcher or "", searcher_model=args.searcher_model or "", baseline_llm=args.baseline_llm or "",
        seed=args.seed, ircot_steps=args.ircot_steps, mc=args.mc, judge_only=judge_only,
        sample=args.sample or 0, sample_seed=args.seed, restart=args.restart,
    )
    results = run_eval_job(job)
    _print_results(results, args.out)
    _console().print(f"results in {args.out}", markup=False)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from s3cli.show import show

    show(args.file, qid=args.id, index=args.index, full=args.full)  # its own console: long texts wrap
    return 0


# --- demo ----------------------------------------------------------------------------------------

def cmd_demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from s3core.data.synth import synthesize
    from s3core.eval.job import EvalJob, run_eval_job
    from s3core.retrieval.index import build_index

    c = _console()
    root = Path(args.out)
    data = root / "data"
    c.rule("1/3  synthesize a fictional world (corpus + 1-hop and 2-hop questions)")
    if not (data / "manifest.json").is_file():
        synthesize(data, seed=args.seed)
    c.print(f"data in {data}")
    c.rule("2/3  build a BM25 index")
    index = root / "index-bm25"
    if not (index / "manifest.json").is_file():
        build_index(data / "corpus.jsonl", "bm25", index)
    c.print(f"index in {index}")
    c.rule("3/3  evaluate no-retrieval and naive-RAG through the gRPC services")
    if not args.preset and not args.config:
        args.preset = ["embedded"]
    cfg = _load_config(args)
    job = EvalJob(
        questions=[str(data / "synth_1hop.jsonl"), str(data / "synth_2hop.jsonl")],
        methods=["no-retrieval", "naive-rag"], out=str(root / "eval"), index=str(index), k=3,
        limit=args.limit, config=cfg, config_path=args.config or "",
    )
    results = run_eval_job(job)
    _print_results(results)
    c.print(f"results: {root / 'eval'} (results.md, <method>/results.json, <method>/predictions.jsonl)")
    return 0


def add_parsers(sub: Any) -> None:
    """`eval`, `show` and `demo`."""
    p = sub.add_parser("eval", help="evaluate a method on question sets through the services")
    p.add_argument("--questions", nargs="+", required=True, metavar="FILE", help="FlashRAG-format question files")
    p.add_argument("--index", help="index directory (for methods that retrieve)")
    p.add_argument("--method", action="append", required=True,
                   help="no-retrieval | naive-rag | s3 | s3-no-selection | s3-no-initial | s3-no-selection-no-initial"
                        " | deepretrieval | ircot | search-r1 | search-r1-context | search-o1 | cot (repeat or"
                        " comma-separate for several; the s3 variants share one trajectory per question)")
    p.add_argument("--k", type=int, default=None,
                   help="documents per retrieval for naive-rag and the baselines (default 3); s3 uses the search"
                        " knobs (--preset 8-3-3, config `search:`)")
    p.add_argument("--limit", type=int, default=None, help="first N questions of each file")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--retriever", help="host:port of a running retriever, or host:port,host:port,... for the shard "
                   "servers of a sharded index (default: start one)")
    p.add_argument("--generator", help="host:port of a running generator (default: start one)")
    p.add_argument("--searcher", help="host:port of a running searcher for the s3 methods (default: start one)")
    p.add_argument("--searcher-model", help="searcher policy model when one is started (default: the service's)")
    p.add_argument("--baseline-llm", metavar="ADDR",
                   help="host:port of a generator service whose LLM runs deepretrieval / ircot / search-r1"
                        " (e.g. one serving the searcher model; default: the --generator itself)")
    p.add_argument("--ircot-steps", type=int, default=3, help="most chain-of-thought steps of ircot (default 3)")
    p.add_argument("--seed", type=int, default=0, help="rollout seed for the s3 methods and the --sample seed (default 0)")
    p.add_argument("--sample", type=int, metavar="N", help="N questions of each file drawn at random with --seed "
                   "(kept in file order; instead of --limit)")
    p.add_argument("--mc", choices=["auto", "on", "off"], default="auto",
                   help="multiple-choice scoring: auto = rows with options (metadata.options, FlashRAG choices, an "
                        "'Options:' block) are scored by the chosen option; on = every row must have options; "
                        "off = score every row as open text")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--restart", action="store_true",
                   help="evaluate from scratch; by default a rerun with the same questions, models and settings "
                        "skips finished methods and resumes the one interrupted, batch by batch")
    _common_config(p)
    _generator_flags(p, judge_only=True)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("show", help="render one saved s3 episode (a trajectories.jsonl of `s3 eval`)")
    p.add_argument("file", metavar="TRAJECTORY", help="trajectories.jsonl written by `s3 eval`")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--id", help="question id (or DATASET/ID)")
    which.add_argument("--index", type=int, help="0-based position in the file (default 0)")
    p.add_argument("--full", action="store_true", help="show whole document texts (default: cut)")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("demo", help="the whole pipeline on the embedded default (synth → index → eval)")
    p.add_argument("--out", default="runs/demo", help="working directory (default runs/demo)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic world and the rollouts (default 0)")
    p.add_argument("--limit", type=int, default=50, help="questions per dataset (default 50)")
    _common_config(p)
    _generator_flags(p)
    p.set_defaults(func=cmd_demo)
