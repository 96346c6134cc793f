"""What the `s3` command groups share: the console, config from flags, the config and generator flags."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

DEFAULT_STATE = os.environ.get("S3_HOME", ".s3")


def _console() -> Any:
    from rich.console import Console

    # pipes and log files get whole tables, not rich's 80-column default for non-terminals
    return Console(soft_wrap=True, width=None if sys.stdout.isatty() else 140)


def _load_config(args: argparse.Namespace) -> Any:
    from s3core.config import load_config

    overrides: dict[str, Any] = {}
    if getattr(args, "judge", None):
        overrides.setdefault("generator", {})["judge"] = args.judge
    if getattr(args, "gen_backend", None):
        overrides.setdefault("generator", {})["backend"] = args.gen_backend
    if getattr(args, "gen_model", None):
        overrides.setdefault("generator", {})["model"] = args.gen_model
    if getattr(args, "gen_base_url", None):
        overrides.setdefault("generator", {})["base_url"] = args.gen_base_url
    if getattr(args, "batch_size", None):
        overrides.setdefault("eval", {})["batch_size"] = args.batch_size
    return load_config(getattr(args, "config", None), presets=getattr(args, "preset", None) or [], overrides=overrides)


def _common_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="platform YAML config (see docs/configuration.md)")
    p.add_argument("--preset", action="append", help="config preset, e.g. 8-3-3, embedded, gpu (repeatable)")


def _generator_flags(p: argparse.ArgumentParser, judge_only: bool = False) -> None:
    if judge_only:
        p.add_argument("--judge", choices=["model", "none", "only"],
                       help="GenAcc: span match (MC: the chosen option) else the generator as judge (model), span "
                            "match only (none), or the judge on every row (only: as the reference scores MIRAGE)")
    else:
        p.add_argument("--judge", choices=["model", "none"], help="GenAcc judge: the generator model, or span match only")
    p.add_argument("--gen-backend", choices=["hf", "openai", "vllm"], help="generator backend when one is started")
    p.add_argument("--gen-model", help="generator model when one is started (default: embedded SmolLM2-135M)")
    p.add_argument("--gen-base-url", help="OpenAI-compatible endpoint for --gen-backend openai")
    p.add_argument("--batch-size", type=int, help="questions per generator request")

