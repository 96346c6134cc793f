"""Shared pieces of the deploy checks (imported by the tests and conftest.py): the chart rendered by Helm
(helm-sdkpy in the Python >= 3.12 venv that ``make setup`` creates), the profiles, and a skip-or-fail rule
for missing tools."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "s3"
HELM_VENV = REPO / ".venv" / "helm"
RENDERER = Path(__file__).with_name("helm_render.py")
RELEASE, NAMESPACE = "s3", "s3"
# values files of each profile, on top of the chart's values.yaml
PROFILES: dict[str, list[str]] = {"default": [], "cpu": ["values-cpu.yaml"], "gpu": ["values-gpu.yaml"]}
COMPONENTS = ("retriever", "generator", "searcher", "learner", "controller")


def missing_tool(reason: str) -> None:
    """Skip, or fail under CI=true (CI must run every check)."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true requires it; `make setup` installs it)")
    pytest.skip(reason)


def helm_python() -> Path:
    py = Path(os.environ.get("S3_HELM_PYTHON", HELM_VENV / "bin" / "python"))
    if not py.is_file():
        missing_tool(f"no Helm renderer: {py} is missing (helm-sdkpy needs Python >= 3.12; `make setup` creates "
                     "it from pyenv's 3.12, or set HELM_PY to a python3.12 and run `make deploy-tools`)")
    return py


class Rendered:
    """One rendering: the manifest Helm produced, its documents, the NOTES, and what Helm POSTed."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.manifest: str = data["manifest"]
        self.notes: str = data["notes"]
        self.objects: list[dict[str, Any]] = data["objects"]
        self.helm: str = data["helm"]
        self.docs: list[dict[str, Any]] = [d for d in yaml.safe_load_all(self.manifest) if d]
        # hook objects (the `helm test` ConfigMap and Pod): rendered, not installed
        self.hooks: list[dict[str, Any]] = [d for h in data.get("hooks", []) for d in yaml.safe_load_all(h["manifest"])
                                            if d]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        for d in self.docs:
            if d["kind"] == kind and d["metadata"]["name"] == name:
                return d
        raise KeyError(f"no {kind} {name} in the rendering")

    def deployment(self, component: str) -> dict[str, Any]:
        return self.get("Deployment", f"{RELEASE}-{component}")


class RenderError(Exception):
    pass


def run_renderer(values_files: list[str] | tuple[str, ...] = (), set_values: dict[str, Any] | None = None,
                 existing: list[dict[str, Any]] | None = None, tmp: Path | None = None) -> Rendered:
    """Render the chart with Helm (see helm_render.py); RenderError with Helm's message on failure."""
    py = helm_python()
    args = [str(py), str(RENDERER), str(CHART), "--release", RELEASE, "--namespace", NAMESPACE]
    for f in values_files:
        args += ["-f", str(CHART / f)]
    if set_values:
        args += ["--set-json", json.dumps(set_values)]
    fd, name = tempfile.mkstemp(prefix="render-", suffix=".json", dir=tmp)
    os.close(fd)
    out = Path(name)
    if existing:
        seed = out.with_suffix(".existing.yaml")
        seed.write_text(yaml.safe_dump_all(existing))
        args += ["--existing", str(seed)]
    proc = subprocess.run([*args, "--json", str(out)], capture_output=True, text=True, timeout=180)
    if proc.returncode != 0:
        raise RenderError(proc.stderr.strip() or proc.stdout.strip())
    try:
        return Rendered(json.loads(out.read_text()))
    finally:
        out.unlink(missing_ok=True)
        out.with_suffix(".existing.yaml").unlink(missing_ok=True)
