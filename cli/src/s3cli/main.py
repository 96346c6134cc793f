"""`s3`: the command line of the s3 platform.

Each subcommand imports its heavy modules inside its function, so `s3 --help` stays instant.
Expected failures (bad input, missing files, unreachable services) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import Any, Sequence


def _version() -> str:
    """The installed s3cli and s3core versions (package metadata), e.g. "0.1.0 (s3core 0.1.0)"."""
    from importlib.metadata import PackageNotFoundError, version

    def v(pkg: str) -> str:
        try:
            return version(pkg)
        except PackageNotFoundError:
            return "not installed"

    return f"{v('s3cli')} (s3core {v('s3core')})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="s3", description="s3 platform: train and serve search agents for RAG.")
    parser.add_argument("--version", action="version", version=f"s3 {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    # the order of the commands in `s3 --help`
    from s3cli import baselines, data, doctor, evaluate, index, infer, jobs, score, sft, stack, train

    data.add_parser(sub)
    index.add_parser(sub)
    evaluate.add_parsers(sub)
    baselines.add_parsers(sub)
    stack.add_parsers(sub)
    train.add_parser(sub)
    score.add_parser(sub)
    sft.add_parser(sub)
    stack.add_serve_parser(sub)
    jobs.add_parser(sub)
    infer.add_parser(sub)
    doctor.add_parser(sub)
    return parser


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    # SystemExit unwinds through `finally` blocks, so services started for a run are stopped.
    raise SystemExit(128 + signum)


_QUIET_ENV = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1"}


def _quiet_progress() -> dict[str, str | None]:
    """`--quiet`: no progress bars at all, also the model-loading ones of transformers / huggingface_hub
    (in this process and in the services it starts).  Returns the environment it replaced."""
    saved = {k: os.environ.get(k) for k in _QUIET_ENV}
    os.environ.update(_QUIET_ENV)
    if "transformers" in sys.modules:  # read at its import (set above); already imported: tell it directly
        with contextlib.suppress(Exception):
            sys.modules["transformers"].utils.logging.disable_progress_bar()
    return saved


def _restore_env(saved: dict[str, str | None]) -> None:
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def main(argv: Sequence[str] | None = None) -> int:
    import signal

    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    saved = _quiet_progress() if getattr(args, "quiet", False) else {}
    from s3core.telemetry.logging import setup_logging

    setup_logging("WARNING" if os.environ.get("S3_LOG_LEVEL") is None else None)
    from s3core.errors import S3Error

    try:
        return int(args.func(args) or 0)
    except S3Error as exc:
        print(f"s3: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"s3: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("s3: interrupted", file=sys.stderr)
        return 130
    finally:
        _restore_env(saved)  # main() called in-process (tests, embedding) leaves the environment as it was


if __name__ == "__main__":
    sys.exit(main())
