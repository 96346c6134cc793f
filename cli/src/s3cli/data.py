"""`s3 data`: the synthetic world (`synth`) and the training-set filter (`filter`, with the baselines)."""

from __future__ import annotations

import argparse
from typing import Any

from s3cli.common import _console


def cmd_data_synth(args: argparse.Namespace) -> int:
    from s3core.data.synth import synthesize

    info = synthesize(args.out, seed=args.seed, n_entities=args.n_entities, n_questions=args.n_questions)
    c = _console()
    c.print(f"[green]wrote[/green] synthetic world to {args.out}")
    for k, v in info.items():
        if not isinstance(v, dict):
            c.print(f"  {k}: {v}")
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("data", help="datasets")
    dsub = p.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    q = dsub.add_parser("synth", help="generate the embedded default's fictional world (corpus + QA)")
    q.add_argument("--out", required=True, help="output directory")
    q.add_argument("--seed", type=int, default=0, help="random seed of the world (default 0)")
    q.add_argument("--n-entities", type=int, default=300, help="fictional entities in the corpus (default 300)")
    q.add_argument("--n-questions", type=int, default=100, help="questions per hop file")
    q.set_defaults(func=cmd_data_synth)

    from s3cli.baselines import add_filter_parser

    add_filter_parser(dsub)
