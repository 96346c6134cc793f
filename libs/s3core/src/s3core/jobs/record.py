"""The run record of a job attempt: what ran, on what, with which code, and what it cost.

``{"job_id", "kind", "attempt", "outcome", "spec" (fully resolved: config, job, run, kubernetes),
"inputs" {name: {path, sha256 | corpus_sha256, bytes, ...}}, "models" {role: {name, path, sha256?}},
"seeds", "code" {s3core, git, python, host}, "cost" {wall_s, cpu_s, max_rss_mb, gpu_s},
"counters" {...}, "results" {...}, "started_at", "finished_at"}``.

Hashes are computed "where cheap": files up to :data:`HASH_LIMIT_BYTES` are hashed; bigger ones
are recorded with size and mtime and ``"sha256": null``.  An index directory is identified by the
corpus sha256 its manifest already holds and the sha256 of the manifest itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HASH_LIMIT_BYTES = 256 * 1024 * 1024


def sha256_file(path: str | os.PathLike[str], limit: int = HASH_LIMIT_BYTES) -> str | None:
    p = Path(path)
    if p.stat().st_size > limit:
        return None
    h = hashlib.sha256()
    with p.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def describe_input(path: str | os.PathLike[str], root: str | os.PathLike[str] = ".") -> dict[str, Any]:
    """``{path, exists, bytes, mtime, sha256}`` of a file, or an index directory's identity."""
    raw = Path(path).expanduser()
    p = raw if raw.is_absolute() else Path(root) / raw
    out: dict[str, Any] = {"path": str(path)}
    try:
        if p.is_dir():
            manifest = p / "manifest.json"
            if manifest.is_file():
                m = json.loads(manifest.read_text(encoding="utf-8"))
                out.update(kind="index", backend=m.get("backend"), name=m.get("name"),
                           num_documents=m.get("num_documents"), corpus_sha256=m.get("corpus_sha256"),
                           encoder=m.get("encoder") or "", manifest_sha256=sha256_file(manifest))
            else:
                out.update(kind="directory")
            return out
        st = p.stat()
        out.update(kind="file", bytes=st.st_size, mtime=st.st_mtime, sha256=sha256_file(p))
        if out["sha256"] is None:
            out["note"] = f"not hashed (larger than {HASH_LIMIT_BYTES >> 20} MiB)"
    except (OSError, ValueError) as exc:
        out.update(error=f"{type(exc).__name__}: {exc}")
    return out


def describe_model(name: str, root: str | os.PathLike[str] = ".") -> dict[str, Any]:
    """A model by name: embedded ids name a wheel-shipped file (hashed when small enough), local
    folders are identified by the sha256 of their config.json and the sizes of their weight files."""
    out: dict[str, Any] = {"name": name}
    if not name:
        return out
    if name.startswith("embedded:"):
        try:
            from s3core.generation.models import embedded_gguf_path

            gguf = Path(embedded_gguf_path(name))
            out.update(path=str(gguf), bytes=gguf.stat().st_size)
        except Exception as exc:  # noqa: BLE001 - a record, not a check
            out["error"] = f"{type(exc).__name__}: {exc}"
        return out
    p = Path(name).expanduser()
    p = p if p.is_absolute() else Path(root) / p
    if p.is_dir():
        cfg = p / "config.json"
        weights = sorted(f for f in p.iterdir() if f.suffix in (".safetensors", ".bin", ".gguf", ".pt"))
        out.update(path=str(p), config_sha256=sha256_file(cfg) if cfg.is_file() else None,
                   weights={f.name: f.stat().st_size for f in weights})
    else:
        out["source"] = "hub or remote endpoint (not hashed)"
    return out


_CODE_VERSION: dict[str, Any] | None = None


def code_version() -> dict[str, Any]:
    """s3core's package version, ``git describe`` of the checkout it runs from (when it is one), Python."""
    global _CODE_VERSION
    if _CODE_VERSION is not None:
        return dict(_CODE_VERSION)
    from s3core import __version__

    src = Path(__file__).resolve().parent
    git = ""
    try:
        res = subprocess.run(["git", "describe", "--always", "--dirty", "--tags"], cwd=src, capture_output=True,
                             text=True, timeout=5)
        if res.returncode == 0:
            git = res.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    _CODE_VERSION = {"s3core": __version__, "git": git or os.environ.get("S3_CODE_VERSION", ""),
                     "python": platform.python_version(), "host": socket.gethostname()}
    return dict(_CODE_VERSION)


class CostMeter:
    """Wall time and CPU seconds of this process and its waited-for children (the services a job
    starts for its run are stopped and reaped before the meter is read)."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.started_at = time.time()
        self.cpu0 = self._cpu()

    @staticmethod
    def _cpu() -> float:
        s = resource.getrusage(resource.RUSAGE_SELF)
        c = resource.getrusage(resource.RUSAGE_CHILDREN)
        return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime

    def read(self) -> dict[str, Any]:
        s = resource.getrusage(resource.RUSAGE_SELF)
        c = resource.getrusage(resource.RUSAGE_CHILDREN)
        rss_kb = max(s.ru_maxrss, c.ru_maxrss)
        out: dict[str, Any] = {
            "wall_s": round(time.monotonic() - self.t0, 3),
            "cpu_s": round(self._cpu() - self.cpu0, 3),
            "max_rss_mb": round(rss_kb / 1024.0, 1) if sys.platform != "darwin" else round(rss_kb / 2**20, 1),
            "gpu_s": None,
        }
        gpus = _visible_gpus()
        if gpus:
            out["gpu_s"] = round(out["wall_s"] * gpus, 3)
            out["gpu_note"] = f"wall time x {gpus} visible GPU(s) held by the job"
        return out


def _visible_gpus() -> int:
    torch = sys.modules.get("torch")  # only when the job body already imported it
    try:
        return int(torch.cuda.device_count()) if torch is not None and torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001
        return 0
