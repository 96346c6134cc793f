"""`s3 score`: score predictions (or contexts) made by any system with exactly the metrics of `s3 eval`.

    s3 score --questions Q.jsonl [...] --predictions P.jsonl --out DIR [--judge none|model|only]
    s3 score --questions Q.jsonl [...] --contexts C.jsonl --out DIR       # the generator answers

Predictions rows: {"id": ..., "prediction": "...", "dataset"?: ...}.  Contexts rows: {"id": ...,
"documents": [...], "dataset"?: ...} (a document: a string, {"contents"}, {"title", "text"}, or a
Search-R1 /retrieve hit).  Writes DIR/results.json (s3 eval's format, plus mc_accuracy for
multiple-choice sets), DIR/results.md and DIR/scored.jsonl (per row: id, dataset, em, f1, span,
genacc, and the extracted choice for multiple-choice rows).  A generator is started on loopback
(or give --generator ADDR) only for --contexts or a judge.
"""

from __future__ import annotations

import argparse
from typing import Any


def cmd_score(args: argparse.Namespace) -> int:
    from s3core.config import load_config
    from s3core.eval.external import ScoreJob, run_score_job

    overrides: dict[str, Any] = {}
    for flag, key in (("gen_backend", "backend"), ("gen_model", "model"), ("gen_base_url", "base_url")):
        if getattr(args, flag, None):
            overrides.setdefault("generator", {})[key] = getattr(args, flag)
    if args.batch_size:
        overrides["eval"] = {"batch_size": args.batch_size}
    cfg = load_config(args.config, presets=args.preset or [], overrides=overrides)
    job = ScoreJob(questions=args.questions, out=args.out, predictions=args.predictions or "",
                   contexts=args.contexts or "", name=args.name or "", judge=args.judge, mc=args.mc,
                   generator=args.generator or "", config=cfg, config_path=args.config or "",
                   show_progress=not args.quiet)
    res = run_score_job(job)
    from s3cli.common import _console
    from s3cli.evaluate import _print_results

    _print_results([res])
    for name, r in res["datasets"].items():
        if r.get("mc_accuracy") is not None:
            _console().print(f"{name}: multiple choice, accuracy {100 * r['mc_accuracy']:.1f}% of {r['mc']}",
                             markup=False)
        if r.get("empty_golds"):
            _console().print(f"{name}: {r['empty_golds']} gold answer(s) normalise to nothing and can never match "
                             f"({r['unmatchable']} question(s) with no matchable gold)", markup=False)
    _console().print(f"results in {args.out} (results.json, scored.jsonl)", markup=False)
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("score", help="score predictions or contexts from any system with s3 eval's metrics",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--questions", nargs="+", required=True, metavar="FILE", help="question files (jsonl or parquet)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--predictions", metavar="FILE", help="rows {id, prediction, dataset?} to score as they are")
    src.add_argument("--contexts", metavar="FILE", help="rows {id, documents, dataset?}: the generator answers from them")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--name", help="method name in results.json (default: the input file's name)")
    p.add_argument("--judge", choices=["none", "model", "only"], default="none",
                   help="GenAcc: span match / the chosen option only (none, default), else the generator as judge "
                        "(model), or the judge on every row (only: as the reference scores MIRAGE)")
    p.add_argument("--mc", choices=["auto", "on", "off"], default="auto",
                   help="multiple-choice scoring (see s3 eval --help); default auto: detected from the data")
    p.add_argument("--generator", metavar="ADDR", help="host:port of a running generator (default: start one when "
                   "needed)")
    p.add_argument("--gen-backend", choices=["hf", "openai", "vllm"], help="generator backend when one is started")
    p.add_argument("--gen-model", help="generator model when one is started")
    p.add_argument("--gen-base-url", help="OpenAI-compatible endpoint for --gen-backend openai")
    p.add_argument("--batch-size", type=int, help="questions per generator request")
    p.add_argument("--config", help="platform YAML config")
    p.add_argument("--preset", action="append", help="config preset (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_score)
