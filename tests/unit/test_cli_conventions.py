"""Small conventions of the `s3` command: --version, and help on every flag of the core command groups
(s3cli.data, index, evaluate, baselines, stack, doctor; the other modules have their own tests)."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from s3cli.main import build_parser

# the modules of the command groups checked here (one module per command group)
CORE_MODULES = {f"s3cli.{m}" for m in ("data", "index", "evaluate", "baselines", "stack", "doctor")}


def _defined_elsewhere(sp: argparse.ArgumentParser) -> bool:
    """A subcommand of another module (s3cli.train, s3cli.jobs, s3cli.infer, ...): its own tests check it."""
    funcs = [sp._defaults.get("func")]
    for a in sp._actions:
        if isinstance(a, argparse._SubParsersAction):
            funcs += [c._defaults.get("func") for c in a.choices.values()]
    return any(f is not None and f.__module__ not in CORE_MODULES for f in funcs)


def _walk(p: argparse.ArgumentParser, path: list[str]) -> list[tuple[str, argparse.Action]]:
    out = []
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            for name, sp in a.choices.items():
                if _defined_elsewhere(sp):
                    continue
                out += _walk(sp, [*path, name])
        elif a.option_strings:
            out.append((" ".join(path), a))
    return out


def test_every_flag_has_help() -> None:
    actions = _walk(build_parser(), ["s3"])
    assert len(actions) > 60
    bare = [f"{cmd} {a.option_strings[0]}" for cmd, a in actions if not a.help]
    assert not bare, f"flags without help: {bare}"


def test_version() -> None:
    from importlib.metadata import version

    proc = subprocess.run([sys.executable, "-m", "s3cli", "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"s3 {version('s3cli')} (s3core {version('s3core')})"
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["--version"])
    assert exc.value.code == 0
