"""`s3 train`: RL training of the searcher (PPO or GRPO with the GBR reward).

With no question files (neither ``--questions`` nor ``train.questions``), it trains on the
embedded default: the synthetic world of `s3 demo` (generated and indexed under ``--world``), the
``embedded`` preset (SmolLM2-135M-Instruct as searcher and generator on CPU) and a few small steps.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any


def plain_help(doc: str) -> str:
    """A module docstring as terminal help: reStructuredText literals (````x````) and interpreted
    text (```x```) lose their backticks; commands in single backticks are quoted."""
    doc = re.sub(r"``(.+?)``", r"\1", doc, flags=re.S)
    return re.sub(r"`([^`\n]+)`", r"'\1'", doc)


def plain_flags(p: argparse.ArgumentParser) -> None:
    """:func:`plain_help` on every flag's help of ``p``."""
    for a in p._actions:
        if a.help and a.help is not argparse.SUPPRESS:
            a.help = plain_help(a.help)


def _config(args: argparse.Namespace) -> Any:
    from s3core.config import load_config

    train: dict[str, Any] = {}
    for flag, key in (("steps", "steps"), ("train_batch_size", "batch_size"), ("checkpoint_dir", "checkpoint_dir"),
                      ("learner", "learner"), ("searcher", "searcher"), ("generator", "generator"),
                      ("retriever", "retriever"), ("seed", "seed"), ("save_every", "save_every"),
                      ("val_every", "val_every"), ("val_limit", "val_limit"), ("val_batch_size", "val_batch_size")):
        value = getattr(args, flag, None)
        if value is not None:
            train[key] = value
    if args.questions:
        train["questions"] = list(args.questions)
    if args.no_filter:
        train["filter"] = False
    if args.val_questions:
        train["val_questions"] = list(args.val_questions)
    if args.val_before_train is not None:
        train["val_before_train"] = args.val_before_train
    overrides: dict[str, Any] = {"train": train} if train else {}
    rl = {k: v for k, v in (("algorithm", args.algorithm), ("device", args.device)) if v is not None}
    if rl:
        overrides["rl"] = rl
    if args.model:
        overrides["learner"] = {"model": args.model}
    presets = list(args.preset or [])
    cfg = load_config(args.config, presets=presets, overrides=overrides)
    embedded = not cfg.train.questions
    if embedded and "embedded" not in presets:
        cfg = load_config(args.config, presets=[*presets, "embedded"], overrides=overrides)
    return cfg, embedded


def _embedded_world(root: Path, seed: int) -> tuple[list[str], str]:
    from s3core.data.synth import synthesize
    from s3core.retrieval.index import build_index

    data = root / "data"
    if not (data / "manifest.json").is_file():
        synthesize(data, seed=seed)
    index = root / "index-bm25"
    if not (index / "manifest.json").is_file():
        build_index(data / "corpus.jsonl", "bm25", index)
    return [str(data / "synth_1hop.jsonl"), str(data / "synth_2hop.jsonl")], str(index)


def cmd_train(args: argparse.Namespace) -> int:
    import sys

    from rich.console import Console
    from rich.table import Table

    from s3core.train.run import TrainJob, run_training

    # a log file gets the whole table, not rich's 80-column default for non-terminals
    console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 140)  # whole table in a log
    cfg, embedded = _config(args)
    from s3core.train.data import check_outputs, check_question_files

    resume = bool(args.resume or cfg.train.learner)
    check_outputs(cfg, resume)  # before the world, the metrics port, Redis or any service
    if not embedded:
        if not (cfg.train.retriever or cfg.train.searcher):
            from s3core.eval.job import check_index_dir

            check_index_dir(args.index or cfg.retriever.index)
        check_question_files(cfg)
    if not args.quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # per-checkpoint "Writing model shards" bars would bury the run's own
    if args.metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(args.metrics_port, addr=args.metrics_host)
        console.print(f"training metrics (s3_train_*) on http://{args.metrics_host}:{args.metrics_port}/metrics")
    index = args.index or cfg.retriever.index
    if embedded:
        questions, world_index = _embedded_world(Path(args.world), args.world_seed)
        cfg.train.questions = questions
        index = index or world_index
        check_question_files(cfg)  # the world's files, and any --val-questions
        console.print(f"embedded default: training on the synthetic world in {args.world} "
                      f"({cfg.train.steps} steps x {cfg.train.batch_size} questions, {cfg.rl.algorithm})")
    ckdir = Path(cfg.train.checkpoint_dir)
    job = TrainJob(config=cfg, config_path=args.config or "", index=index, resume=resume,
                   show_progress=not args.quiet, redis_url=args.redis_url or "")
    summary = run_training(job)
    t = Table(title=f"s3 train ({cfg.rl.algorithm}) — {summary.checkpoint_dir}")
    cols = ("step", "reward", "GBR", "ctx acc", "KL", "entropy", "rollout s", "reward s", "update s", "tok/s")
    for col in cols:
        t.add_column(col, justify="right")
    for r in summary.history:
        t.add_row(str(r["step"]), f"{r['reward_mean']:+.3f}", f"{r['gbr_mean']:+.3f}", f"{r['context_acc_mean']:.3f}",
                  f"{r.get('kl', 0.0):.4f}", f"{r.get('entropy', 0.0):.3f}", f"{r['rollout_seconds']:.1f}",
                  f"{r['reward_seconds']:.1f}", f"{r['update_seconds']:.1f}", f"{r['tokens_per_second']:.0f}")
    console.print(t)
    console.print(f"trained {summary.train_questions} questions (of {summary.filtered_from} before the filter); "
                  f"step {summary.steps}, policy version {summary.version}")
    if summary.last_checkpoint:
        console.print(f"last checkpoint: {summary.last_checkpoint}")
    if summary.validations:
        v = Table(title="validation (held-out, eval temperature)")
        for col in ("step", "version", "n", "GBR", "95% CI", "s3 GenAcc", "naive GenAcc"):
            v.add_column(col, justify="right")
        for r in summary.validations:
            v.add_row(str(r["step"]), str(r["version"]), str(r["val_n"]), f"{r['val_gbr']:+.3f}",
                      f"[{r['val_gbr_ci95_lo']:+.3f}, {r['val_gbr_ci95_hi']:+.3f}]", f"{r['val_s3_genacc']:.3f}",
                      f"{r['val_naive_genacc']:.3f}")
        console.print(v)
    if summary.best:
        b = summary.best
        console.print(f"best by validation: step {b['step']} (GBR {b['val_gbr']:+.3f}, 95% CI "
                      f"[{b['ci95'][0]:+.3f}, {b['ci95'][1]:+.3f}]): {b['policy_path']}; "
                      f"validation curve: {ckdir / 'val_curve.png'}")
    console.print(f"reward curve: {ckdir / 'reward_curve.png'}; metrics: {ckdir / 'metrics.jsonl'}; "
                  f"TensorBoard: {cfg.train.log_dir or ckdir / 'tb'}")
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("train", help="train the searcher with RL (PPO/GRPO, GBR reward) through the services",
                       description=plain_help(__doc__ or ""), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML config (sections rl, train, search, reward, generator, searcher, ...)")
    p.add_argument("--preset", action="append", default=[], help="config preset (repeatable), e.g. embedded, gpu")
    p.add_argument("--questions", action="append", metavar="JSONL",
                   help="training question file (repeatable; config train.questions)")
    p.add_argument("--index", help="retriever index directory, when a retriever is started for the run")
    p.add_argument("--steps", type=int, help="RL steps (config train.steps)")
    p.add_argument("--batch-size", dest="train_batch_size", type=int, help="questions per step (train.batch_size)")
    p.add_argument("--algorithm", choices=["ppo", "grpo"], help="config rl.algorithm")
    p.add_argument("--model", "--init-from", dest="model",
                   help="initial policy, e.g. the policy/ folder of `s3 sft` (config learner.model, else searcher.model)")
    p.add_argument("--device", help="learner device: cpu, cuda, cuda:1 (config rl.device)")
    p.add_argument("--checkpoint-dir", help="checkpoints, published policies, metrics.jsonl, reward_curve.png")
    p.add_argument("--save-every", type=int, help="steps between checkpoints (train.save_every)")
    p.add_argument("--resume", action="store_true", help="continue the run in --checkpoint-dir from its newest "
                                                         "valid checkpoint")
    p.add_argument("--no-filter", action="store_true", help="train on every question (no naive-RAG filter)")
    p.add_argument("--seed", type=int, help="config train.seed")
    p.add_argument("--val-questions", action="append", metavar="FILE",
                   help="held-out validation question file (repeatable; train.val_questions); never a training "
                        "question, never filtered")
    p.add_argument("--val-every", type=int, help="validate after every N steps (train.val_every; 0 = only "
                                                  "before/after training)")
    p.add_argument("--val-before-train", action=argparse.BooleanOptionalAction, default=None,
                   help="validate the initial policy before step 1 (train.val_before_train)")
    p.add_argument("--val-limit", type=int, help="first N questions of each validation file (train.val_limit; 0 = all)")
    p.add_argument("--val-batch-size", type=int, help="validation questions per searcher call (train.val_batch_size)")
    p.add_argument("--learner", metavar="ADDR", help="learner service host:port (default: update in this process)")
    p.add_argument("--searcher", metavar="ADDR", help="searcher service host:port (default: start one)")
    p.add_argument("--generator", metavar="ADDR", help="generator service host:port (default: start one)")
    p.add_argument("--retriever", metavar="ADDR", help="retriever service host:port (default: start one)")
    p.add_argument("--redis-url", help="baseline cache (default: redis.url, else a local redis-server)")
    p.add_argument("--world", default="runs/demo",
                   help="embedded default: where the synthetic world lives (shared with `s3 demo`)")
    p.add_argument("--world-seed", type=int, default=0, help="embedded default: seed of the synthetic world")
    p.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics (s3_train_*) on this port while "
                                                     "training in process")
    p.add_argument("--metrics-host", default="127.0.0.1", help="address for --metrics-port (default 127.0.0.1)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)
    plain_flags(p)
