"""mypy with a baseline: fail only on findings that are not in the committed baseline.

``make lint`` runs this.  mypy runs with ``mypy.ini`` (s3core, the services, the CLI); each error is
reduced to ``path: [code] message`` (no line number, so edits above a known finding do not make it
new) and compared, as a multiset, with ``.ci/mypy-baseline.txt``.  A finding beyond the baseline's
count for its key fails the gate and is printed with its line; findings that went away are reported
so the baseline can shrink (``--update`` rewrites it from the current findings).

Usage: python .ci/mypy_gate.py [--update] [--baseline PATH]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASELINE = ROOT / ".ci" / "mypy-baseline.txt"
ERROR = re.compile(r"^(?P<path>[^:\n]+):(?P<line>\d+)(?::\d+)?: error: (?P<msg>.*?)(?:\s+\[(?P<code>[a-z0-9-]+)\])?$")


def findings(output: str) -> list[tuple[str, str]]:
    """(key, the original line) for every error line of mypy's output."""
    out = []
    for line in output.splitlines():
        m = ERROR.match(line.strip())
        if m:
            key = f"{m['path']}: [{m['code'] or 'misc'}] {m['msg']}"
            out.append((key, line.strip()))
    return out


def run_mypy(python: str) -> tuple[int, str]:
    proc = subprocess.run([python, "-m", "mypy", "--config-file", str(ROOT / "mypy.ini")], cwd=ROOT,
                          capture_output=True, text=True)
    return proc.returncode, proc.stdout + proc.stderr


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--update", action="store_true", help="rewrite the baseline from the current findings")
    ap.add_argument("--baseline", type=Path, default=BASELINE, help="baseline file (default: %(default)s)")
    ap.add_argument("--python", default=sys.executable, help="the interpreter that has mypy (default: this one)")
    args = ap.parse_args(argv)

    rc, output = run_mypy(args.python)
    found = findings(output)
    if rc not in (0, 1) or (rc == 1 and not found):  # 2: mypy itself failed (config, syntax, crash)
        print(output, file=sys.stderr)
        print(f"mypy_gate: mypy exited {rc} without type findings to compare", file=sys.stderr)
        return 2
    if args.update:
        args.baseline.write_text("".join(f"{k}\n" for k in sorted(k for k, _ in found)), encoding="utf-8")
        print(f"mypy_gate: baseline {args.baseline} written ({len(found)} findings)")
        return 0
    known = Counter(line for line in args.baseline.read_text(encoding="utf-8").splitlines() if line.strip()) \
        if args.baseline.exists() else Counter()
    seen: Counter[str] = Counter()
    new = []
    for key, line in found:
        seen[key] += 1
        if seen[key] > known[key]:
            new.append(line)
    gone = sum((known - seen).values())
    if new:
        print("\n".join(new))
        print(f"mypy_gate: {len(new)} new finding(s) not in {args.baseline} "
              f"(fix them; a deliberate exception: add `# type: ignore[code]` with a reason)", file=sys.stderr)
        return 1
    note = f"; {gone} baseline finding(s) fixed, shrink it with --update" if gone else ""
    print(f"mypy_gate: no new findings ({len(found)} known{note})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
