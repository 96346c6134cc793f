"""``pip install ./libs/s3core`` from a fresh clone: the package build generates the gRPC code and typed stubs
(libs/s3core/setup.py), so the wheel holds ``s3.v1`` exactly as ``make protos`` writes it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from deploykit import REPO

GENERATED = REPO / "libs" / "s3core" / "src" / "s3"


def test_a_wheel_built_from_a_clone_carries_the_generated_grpc_code(tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    shutil.copytree(REPO / "protos", clone / "protos")
    # what git holds of libs/s3core: no generated s3/ package (it is ignored), no build leftovers
    shutil.copytree(REPO / "libs" / "s3core", clone / "libs" / "s3core",
                    ignore=shutil.ignore_patterns("s3", "*.egg-info", "__pycache__", "build"))
    assert not (clone / "libs" / "s3core" / "src" / "s3").exists()
    # no build isolation: the build requirements (setuptools, grpcio-tools, mypy-protobuf) are this venv's, so
    # the test needs no index
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                           "-w", str(tmp_path / "wheel"), str(clone / "libs" / "s3core")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = (tmp_path / "wheel").glob("s3core-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    protos = sorted(p.stem for p in (REPO / "protos" / "s3" / "v1").glob("*.proto"))
    assert len(protos) >= 6
    for stem in protos:
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi"):
            assert f"s3/v1/{stem}{suffix}" in names, f"{stem}{suffix} missing from {wheel.name}"
    assert {"s3/__init__.py", "s3/v1/__init__.py", "s3core/__init__.py"} <= names
    # byte for byte what `make protos` generated in this checkout
    with zipfile.ZipFile(wheel) as z:
        for stem in protos:
            built = z.read(f"s3/v1/{stem}_pb2_grpc.py")
            if GENERATED.is_dir():
                assert built == (GENERATED / "v1" / f"{stem}_pb2_grpc.py").read_bytes(), stem
    # and it imports: the wheel's s3.v1 on its own
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    check = subprocess.run([sys.executable, "-c", "import s3.v1.retriever_pb2_grpc as m, s3.v1.retriever_pb2 as p; "
                            "print(m.__file__); print(p.SearchRequest(queries=['q'], k=1).k)"],
                           capture_output=True, text=True, timeout=60, env={"PYTHONPATH": str(site)})
    assert check.returncode == 0 and check.stdout.split()[-1] == "1", check.stderr
    assert check.stdout.startswith(str(site)), check.stdout


def test_a_build_with_neither_protos_nor_stubs_says_why(tmp_path: Path) -> None:
    lib = tmp_path / "libs" / "s3core"
    shutil.copytree(REPO / "libs" / "s3core", lib,
                    ignore=shutil.ignore_patterns("s3", "*.egg-info", "__pycache__", "build"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                           "-w", str(tmp_path / "wheel"), str(lib)], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "no generated gRPC code" in proc.stdout + proc.stderr and "protos/" in proc.stdout + proc.stderr
