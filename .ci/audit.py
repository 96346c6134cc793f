"""Dependency audit of the venv (``make audit``): pip-audit against PyPI's vulnerability data.

Runs ``pip-audit --vulnerability-service pypi --skip-editable`` over the packages installed in the
interpreter running this script (the project's ``.venv``; the project's own editable packages are
not on PyPI and are skipped), then reads its JSON report:

* a known vulnerability (not in ``ACCEPTED`` below) -> listed, exit 1;
* packages PyPI does not know at that version are listed as "not audited"; a CPU/CUDA build with a
  local version label (``torch 2.13.0+cpu``) is audited again as its public version (``2.13.0``);
* no vulnerability data at all -- the service could not be reached, or it answered for no package
  (a registry mirror without PyPI's JSON API) -- exit 3, or, with ``--offline-ok`` (CI), a warning
  and exit 0: an unreachable advisory service must not fail a build, a found vulnerability must.

Extra arguments go to pip-audit.  ``ACCEPTED`` holds known vulnerabilities we accept, each with its
reason; they are passed as ``--ignore-vuln``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

# vulnerability id -> why it is accepted (package, where the vulnerable code path is not reachable, until when)
ACCEPTED: dict[str, str] = {}

NO_DATA = 3


def pip_audit(args: list[str], report: Path) -> tuple[int, str]:
    cmd = [sys.executable, "-m", "pip_audit", "--vulnerability-service", "pypi", "--progress-spinner", "off",
           "--format", "json", "--output", str(report), *(f"--ignore-vuln={v}" for v in ACCEPTED), *args]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        return 124, "pip-audit timed out after 900 s"
    return out.returncode, (out.stderr or out.stdout).strip()


def load(report: Path) -> list[dict[str, Any]]:
    try:
        return list(json.loads(report.read_text()).get("dependencies", []))
    except (OSError, ValueError):
        return []


def main(argv: list[str]) -> int:
    offline_ok = "--offline-ok" in argv
    extra = [a for a in argv if a != "--offline-ok"]
    with tempfile.TemporaryDirectory(prefix="s3-audit-") as tmp:
        report = Path(tmp) / "report.json"
        rc, err = pip_audit(["--skip-editable", *extra], report)
        deps = load(report)
        # local builds (torch 2.13.0+cpu): audit the public version they were built from
        local = [d for d in deps if "skip_reason" in d and "+" in d.get("skip_reason", "")]
        pins = []
        for d in local:
            version = d["skip_reason"].rsplit("(", 1)[-1].rstrip(")").split("+", 1)[0]
            pins.append(f"{d['name']}=={version}")
        if pins:
            reqs = Path(tmp) / "local-builds.txt"
            reqs.write_text("\n".join(pins) + "\n")
            again = Path(tmp) / "local-builds.json"
            pip_audit(["-r", str(reqs), "--no-deps", "--disable-pip"], again)
            redone = {d["name"].lower(): d for d in load(again) if "skip_reason" not in d}
            deps = [redone.get(d["name"].lower(), d) if d in local else d for d in deps]

    audited = [d for d in deps if "skip_reason" not in d]
    skipped = [d for d in deps if "skip_reason" in d]
    found = [(d, v) for d in audited for v in d.get("vulns", [])]
    for d, v in found:
        fix = ", ".join(v.get("fix_versions") or []) or "none yet"
        print(f"VULNERABLE {d['name']} {d['version']}: {v['id']} ({', '.join(v.get('aliases') or []) or '-'}); "
              f"fixed in: {fix}")
    if found:
        print(f"audit: {len(found)} known vulnerabilities in {len({d['name'] for d, _ in found})} packages "
              f"({len(audited)} audited)")
        return 1
    if not audited:
        why = err.splitlines()[-1] if err else f"pip-audit exit {rc}"
        if skipped:
            why = f"the advisory service answered for none of {len(skipped)} packages ({skipped[0]['skip_reason']})"
        msg = f"audit: no vulnerability data -- {why}"
        if offline_ok:
            print(f"WARNING: {msg}; not failing (--offline-ok)")
            return 0
        print(msg, file=sys.stderr)
        return NO_DATA
    if skipped:
        print(f"audit: not audited ({len(skipped)}): " + ", ".join(f"{d['name']} ({d['skip_reason']})"
                                                                   for d in skipped))
    accepted = f"; accepted: {', '.join(ACCEPTED)}" if ACCEPTED else ""
    print(f"audit: {len(audited)} packages audited, no known vulnerabilities{accepted}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
