"""`s3 sft`: supervised warm start of the searcher on teacher trajectories (before RL).

The loss is the negative log-likelihood of the searcher's own action tokens only (the masks RL
uses); prompt, retrieved documents and feedback are context.  Teacher sources:

  --trajectories FILE   trajectories.jsonl of `s3 eval --method s3` (any searcher, e.g. a bigger
                        one via --searcher-model); --only-correct keeps those whose context the
                        generator answered correctly (from predictions.jsonl next to the file)
  --synth-teacher       the synthetic world's own metadata (gold passages, bridge entity) drives a
                        scripted teacher through the real search loop over --index; with no
                        --questions/--index, the embedded world of `s3 demo` / `s3 train`

The fine-tuned policy is written to OUT/policy (a Hugging Face folder): continue with
`s3 train --init-from OUT/policy` or evaluate it with `s3 eval --searcher-model OUT/policy`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def _config(args: argparse.Namespace) -> Any:
    from s3core.config import load_config

    sft: dict[str, Any] = {}
    for flag, key in (("epochs", "epochs"), ("lr", "lr"), ("sft_batch_size", "batch_size"),
                      ("micro_batch_size", "micro_batch_size"), ("max_examples", "max_examples"), ("seed", "seed"),
                      ("out", "out")):
        value = getattr(args, flag, None)
        if value is not None:
            sft[key] = value
    if args.trajectories:
        sft["trajectories"] = list(args.trajectories)
    if args.only_correct:
        sft["only_correct"] = True
    overrides: dict[str, Any] = {"sft": sft} if sft else {}
    rl = {k: v for k, v in (("device", args.device), ("train_top_layers", args.train_top_layers),
                            ("lora_rank", args.lora_rank)) if v is not None}
    if rl:
        overrides["rl"] = rl
    presets = list(args.preset or [])
    if args.synth_teacher and not args.questions and "embedded" not in presets:
        presets.append("embedded")
    return load_config(args.config, presets=presets, overrides=overrides)


def cmd_sft(args: argparse.Namespace) -> int:
    import sys

    from rich.console import Console

    from s3core.errors import InvalidArgument
    from s3core.train.sft import run_sft, synth_teacher

    console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 140)
    if args.synth_teacher and args.trajectories:
        raise InvalidArgument("give either --trajectories or --synth-teacher, not both")
    if (args.questions or args.index) and not args.synth_teacher:
        raise InvalidArgument("--questions / --index are the synthetic-world teacher's inputs: add --synth-teacher")
    if args.only_correct and args.synth_teacher:
        raise InvalidArgument("--only-correct applies to --trajectories files")
    cfg = _config(args)
    if not args.synth_teacher and not cfg.sft.trajectories:
        raise InvalidArgument("no teacher: give --trajectories FILE (or sft.trajectories) or --synth-teacher")
    for f in cfg.sft.trajectories if not args.synth_teacher else []:
        if not Path(f).is_file():
            raise InvalidArgument(f"--trajectories {f}: no such file")
    teacher = None
    if args.synth_teacher:
        cfg.sft.trajectories = []
        questions, index = list(args.questions or []), args.index or cfg.retriever.index
        if not questions:
            from s3cli.train import _embedded_world

            questions, world_index = _embedded_world(Path(args.world), args.world_seed)
            index = index or world_index
            console.print(f"synthetic-world teacher on the embedded world in {args.world}")
        if not index:
            raise InvalidArgument("--synth-teacher needs --index (the index of the world's corpus)")
        for f in questions:
            if not Path(f).is_file():
                raise InvalidArgument(f"--questions {f}: no such file")
        teacher = synth_teacher(questions, index)
    if not args.quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    result = run_sft(cfg, model=args.model or "", teacher=teacher, show_progress=not args.quiet)
    console.print(f"fine-tuned {result.model} on {result.examples} teacher trajectories "
                  f"({result.action_tokens} action tokens of {result.tokens}); {result.steps} steps, "
                  f"{result.epochs} epochs, {result.seconds:.0f} s", markup=False)
    console.print(f"action-token NLL: {result.loss_first_epoch:.3f} (epoch 1 mean) -> "
                  f"{result.loss_last_epoch:.3f} (epoch {result.epochs} mean)", markup=False)
    if result.skipped_no_action:
        console.print(f"skipped {result.skipped_no_action} trajectories with no action token", markup=False)
    console.print(f"policy: {result.policy}  (s3 train --init-from {result.policy}; "
                  f"s3 eval --searcher-model {result.policy})", markup=False)
    console.print(f"metrics: {Path(result.out) / 'sft_metrics.jsonl'}", markup=False)
    return 0


def add_parser(sub: Any) -> None:
    from s3cli.train import plain_flags, plain_help

    p = sub.add_parser("sft", help="supervised warm start of the searcher on teacher trajectories (before RL)",
                       description=plain_help(__doc__ or ""), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML config (sections sft, rl, search, searcher, ...)")
    p.add_argument("--preset", action="append", default=[], help="config preset (repeatable), e.g. embedded")
    p.add_argument("--trajectories", action="append", metavar="JSONL",
                   help="trajectories.jsonl of `s3 eval --method s3` (repeatable; config sft.trajectories)")
    p.add_argument("--only-correct", action="store_true",
                   help="keep only trajectories whose context the generator answered correctly (sft.only_correct)")
    p.add_argument("--synth-teacher", action="store_true",
                   help="teacher from the synthetic world's metadata, run through the real search loop")
    p.add_argument("--questions", action="append", metavar="JSONL",
                   help="--synth-teacher: question files of `s3 data synth` (repeatable)")
    p.add_argument("--index", help="--synth-teacher: index of the world's corpus (config retriever.index)")
    p.add_argument("--model", help="policy to fine-tune (default: learner.model, else searcher.model)")
    p.add_argument("--out", help="output directory: policy/, sft_metrics.jsonl, ... (config sft.out)")
    p.add_argument("--epochs", type=int, help="passes over the trajectories (sft.epochs)")
    p.add_argument("--lr", type=float, help="AdamW learning rate (sft.lr)")
    p.add_argument("--batch-size", dest="sft_batch_size", type=int, help="trajectories per step (sft.batch_size)")
    p.add_argument("--micro-batch-size", type=int, help="trajectories per forward/backward (sft.micro_batch_size)")
    p.add_argument("--max-examples", type=int, help="most trajectories trained on, a seeded sample; 0 = all (sft.max_examples)")
    p.add_argument("--seed", type=int, help="shuffling seed (sft.seed)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (config rl.device)")
    p.add_argument("--train-top-layers", type=int, help="train only the top N decoder layers (rl.train_top_layers)")
    p.add_argument("--lora-rank", type=int, help="train LoRA adapters of this rank (rl.lora_rank)")
    p.add_argument("--world", default="runs/demo",
                   help="--synth-teacher without --questions: where the embedded synthetic world lives")
    p.add_argument("--world-seed", type=int, default=0, help="seed of the embedded synthetic world")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_sft)
    plain_flags(p)
