"""``s3 infer``: run the (trained) searcher over question files and save the contexts it gathers.

    s3 infer --questions q.jsonl --out runs/infer                       # embedded default: world, index, searcher
    s3 infer --questions q.jsonl --out runs/infer --index runs/idx --searcher-model runs/ckpt/step-000003/policy
    s3 infer --questions q.jsonl --out runs/infer --searcher 127.0.0.1:50053          # a running searcher

Writes ``contexts.jsonl`` (per question: the context documents, their ids, the policy version, turns and
searches), ``trajectories.jsonl`` and ``summary.json`` into ``--out``.  It is the controller's ``infer`` job
(:func:`s3core.jobs.bodies.run_infer`) run in this process: the services it needs (a retriever on ``--index``
and a searcher) are started on loopback for the run and stopped after, unless ``--searcher`` /
``--retriever`` name running ones.  Without ``--index``, ``--retriever`` or ``--searcher`` it uses the
embedded default's synthetic world and BM25 index (built under ``.s3/embedded`` on first use).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import yaml


def add_parser(sub: Any) -> None:
    p = sub.add_parser("infer", help="run the searcher over question files; save its contexts (contexts.jsonl)",
                       description=__doc__.split("\n\n")[0], epilog=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--questions", nargs="+", required=True, help="FlashRAG question files (jsonl)")
    p.add_argument("--out", required=True, help="output folder (contexts.jsonl, trajectories.jsonl, summary.json)")
    p.add_argument("--index", help="index folder for a retriever started for the run")
    p.add_argument("--retriever", help="host:port of a running retriever")
    p.add_argument("--searcher", help="host:port of a running searcher (nothing is started)")
    p.add_argument("--searcher-model", help="policy of the searcher started for the run (a checkpoint's policy/)")
    p.add_argument("--limit", type=int, default=0, help="first N questions of each file (0 = all)")
    p.add_argument("--n", type=int, default=1, help="trajectories per question")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=32, help="questions per Rollout request")
    p.add_argument("--temperature", type=float, default=-1.0, help="sampling temperature (< 0: search.temperature_eval)")
    p.add_argument("--ablation", choices=["none", "no_selection", "no_initial", "both"], default="none")
    p.add_argument("--config", help="platform YAML config (see docs/configuration.md)")
    p.add_argument("--preset", action="append", help="config preset, e.g. 8-3-3 (repeatable)")
    p.set_defaults(func=cmd_infer)


def _embedded_index(root: Path) -> str:
    from s3core.data.synth import synthesize
    from s3core.retrieval.index import build_index

    data, index = root / "data", root / "index-bm25"
    if not (data / "manifest.json").is_file():
        synthesize(data, seed=0)
    if not (index / "manifest.json").is_file():
        build_index(data / "corpus.jsonl", "bm25", index, show_progress=False)
    return str(index)


def cmd_infer(args: argparse.Namespace) -> int:
    from s3core.jobs.bodies import JobContext, run_infer
    from s3core.jobs.spec import parse_spec

    job: dict[str, Any] = {"questions": list(args.questions), "out": args.out, "limit": args.limit, "n": args.n,
                           "seed": args.seed, "batch_size": args.batch_size, "temperature": args.temperature,
                           "ablation": args.ablation}
    for key in ("index", "retriever", "searcher", "searcher_model"):
        if getattr(args, key):
            job[key] = getattr(args, key)
    if not (args.index or args.retriever or args.searcher):
        job["index"] = _embedded_index(Path(".s3") / "embedded")
    spec_data: dict[str, Any] = {}
    if args.config:
        spec_data = yaml.safe_load(Path(args.config).read_text(encoding="utf-8")) or {}
    presets = list(spec_data.pop("presets", []) or []) + list(args.preset or [])
    spec_data.update(kind="infer", job=job, presets=presets)
    spec = parse_spec(yaml.safe_dump(spec_data))
    with tempfile.TemporaryDirectory(prefix="s3-infer-") as tmp:
        def report(value: float, message: str) -> None:
            print(f"[{value * 100:5.1f}%] {message}", flush=True)

        ctx = JobContext(job_id="local-infer", attempt=1, spec=spec, job_dir=Path(tmp), report=report)
        run_infer(ctx)
    summary = json.loads((Path(args.out) / "summary.json").read_text(encoding="utf-8"))
    print(f"{summary['questions']} questions, {summary['trajectories']} trajectories, policy versions "
          f"{summary['policy_versions']}: {Path(args.out) / 'contexts.jsonl'}")
    return 0
