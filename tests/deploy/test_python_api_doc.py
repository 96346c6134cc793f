"""docs/python-api.md: every Python block runs as written, and prints what its comments say it prints."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from deploykit import REPO

DOC = REPO / "docs" / "python-api.md"


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def _expected(block: str) -> list[str]:
    """The `# value` comments of the print() lines, in order (text up to the first ':' of a comment)."""
    out = []
    for line in block.splitlines():
        if line.lstrip().startswith("print(") and "#" in line:
            out.append(line.split("#", 1)[1].strip().split(":", 1)[0].strip())
    return out


def test_the_doc_has_two_examples() -> None:
    assert len(_blocks()) == 2


@pytest.mark.parametrize("index", [0, 1])
def test_each_example_runs_and_prints_what_it_says(index: int, tmp_path: Path) -> None:
    block = _blocks()[index]
    script = tmp_path / "example.py"
    script.write_text(block)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    printed = proc.stdout.strip().splitlines()
    assert printed == _expected(block), proc.stdout
