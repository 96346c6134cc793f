"""Learner checkpoints: atomic, self-verifying, pruned.

Layout under ``root``::

    step-000012/
        trainer.pt      torch.save(RLTrainer.state_dict())
        rng.pt          python random, numpy, torch CPU and CUDA RNG states
        extra.json      {"step", "metric", "extra"}: the caller's run state (data cursor, ...)
        policy/         the exported HF model folder (what the searcher loads)
        manifest.json   sha256 + size of every other file; written last
    latest.json         {"name", "step"} of the newest checkpoint (written atomically)
    best.json           {"name", "step", "metric"} of the best one (never pruned)

A checkpoint directory is built under a temporary dot-name and renamed into place, and its manifest
is written last, so a crash leaves either nothing or a complete directory.  :meth:`latest` still
recomputes the checksums and falls back to the previous checkpoint when one does not verify
(a disk that lost data, a hand-copied partial directory).  One writer per ``root``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from s3core.errors import DataError, NotFound
from s3core.io import atomic_dir, write_json

if TYPE_CHECKING:
    from s3core.rl.trainer import RLTrainer

__all__ = ["CheckpointManager", "capture_rng", "restore_rng", "verify_checkpoint"]

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
_NAME = re.compile(r"^step-(\d{6,})$")
_FORMAT = 1


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def capture_rng() -> dict[str, Any]:
    """The process's random states: python ``random``, numpy's global generator, torch CPU and CUDA."""
    import numpy as np
    import torch

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.copy()), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Restore :func:`capture_rng`'s states (CUDA only when this process has as many GPUs)."""
    import numpy as np
    import torch

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy(), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:
            logger.warning("checkpoint has CUDA RNG states of %d devices, this process sees %d: not restored",
                           len(cuda), torch.cuda.device_count())


def verify_checkpoint(path: str | os.PathLike[str], *, checksums: bool = True) -> None:
    """Check a checkpoint directory against its manifest; raise :class:`DataError` saying what is wrong.

    ``checksums=False`` checks presence and sizes only (fast on multi-GB checkpoints).
    """
    root = Path(path)
    if not root.is_dir():
        raise NotFound(f"checkpoint {root} does not exist")
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise DataError(str(root), None, f"no {MANIFEST}: the checkpoint is incomplete")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
        files = manifest["files"]
        if not isinstance(files, dict) or not files:
            raise ValueError("'files' must be a non-empty mapping")
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(str(mpath), None, f"unreadable manifest: {e}") from None
    for rel, meta in files.items():
        f = root / rel
        if not f.is_file():
            raise DataError(str(root), None, f"{rel} is listed in the manifest but missing")
        size = f.stat().st_size
        if size != meta.get("size"):
            raise DataError(str(f), None, f"size {size} != {meta.get('size')} recorded in the manifest")
        if checksums and _sha256(f) != meta.get("sha256"):
            raise DataError(str(f), None, "sha256 does not match the manifest (the file is corrupt)")


class CheckpointManager:
    """Save, find, verify, load and prune learner checkpoints under ``root``.

    ``keep_last``: how many of the newest checkpoints survive pruning; with ``keep_best`` the one with
    the highest metric is kept as well (recorded in ``best.json``).
    """

    def __init__(self, root: str | os.PathLike[str], keep_last: int = 3, keep_best: bool = True) -> None:
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {keep_last}")
        self.root = Path(root)
        self.keep_last = int(keep_last)
        self.keep_best = bool(keep_best)

    @staticmethod
    def name(step: int) -> str:
        return f"step-{int(step):06d}"

    def checkpoints(self) -> list[tuple[int, Path]]:
        """``(step, path)`` of every ``step-*`` directory (complete or not), oldest first."""
        if not self.root.is_dir():
            return []
        found = []
        for p in self.root.iterdir():
            m = _NAME.match(p.name)
            if m and p.is_dir():
                found.append((int(m.group(1)), p))
        return sorted(found)

    # --- writing ------------------------------------------------------------------------------

    def save(self, step: int, trainer: RLTrainer, extra: dict[str, Any] | None = None,
             metric: float | None = None) -> Path:
        """Write checkpoint ``step`` (replacing one of the same step), update the pointers and prune.

        ``extra`` must be JSON-serialisable; ``metric`` (higher is better) ranks the best checkpoint.
        Under data-parallel ``torch.distributed`` only rank 0 writes; the others return the path.
        """
        import torch

        if step < 0:
            raise ValueError(f"checkpoint step must be >= 0, got {step}")
        payload = {"step": int(step), "metric": metric, "extra": extra if extra is not None else {}}
        try:
            extra_text = json.dumps(payload, indent=2, ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise ValueError(f"checkpoint extra/metric must be JSON-serialisable (finite numbers): {e}") from None
        target = self.root / self.name(step)
        if getattr(trainer, "sharded", False):  # FSDP: every rank writes its shards (s3core.rl.fsdp)
            from s3core.rl.fsdp import save_sharded_checkpoint

            return save_sharded_checkpoint(self, target, step, trainer, extra_text, metric)
        from s3core.rl.distributed import is_main_process

        if not is_main_process():  # data parallel: the replicas are identical and rank 0 writes
            return target
        self._remove_stale_temps()
        t0 = time.perf_counter()
        with atomic_dir(target) as tmp:
            torch.save(trainer.state_dict(), tmp / "trainer.pt")
            torch.save(capture_rng(), tmp / "rng.pt")
            (tmp / "extra.json").write_text(extra_text + "\n", encoding="utf-8")
            trainer.export_policy(tmp / "policy")
            files: dict[str, dict[str, Any]] = {}
            for f in sorted(p for p in tmp.rglob("*") if p.is_file()):
                _fsync(f)
                files[f.relative_to(tmp).as_posix()] = {"sha256": _sha256(f), "size": f.stat().st_size}
            write_json(tmp / MANIFEST, {"format": _FORMAT, "step": int(step), "created": time.time(),
                                        "files": files})
            for d in [tmp, *(p for p in tmp.rglob("*") if p.is_dir())]:
                _fsync(d)
        _fsync(self.root)
        write_json(self.root / "latest.json", {"name": target.name, "step": int(step)})
        if self.keep_best and metric is not None:
            best = self._best_record()
            if best is None or not (self.root / best["name"]).is_dir() or metric > best["metric"]:
                write_json(self.root / "best.json", {"name": target.name, "step": int(step), "metric": metric})
        self.prune()
        logger.info("checkpoint %s written in %.1fs", target, time.perf_counter() - t0)
        return target

    def _remove_stale_temps(self) -> None:
        """Delete temp directories a crashed save left behind (``.step-NNNNNN.*.tmp``)."""
        if not self.root.is_dir():
            return
        for p in self.root.iterdir():
            if p.is_dir() and p.name.startswith(".step-") and (p.name.endswith(".tmp") or ".old-" in p.name):
                logger.warning("removing %s left by an interrupted checkpoint save", p)
                shutil.rmtree(p, ignore_errors=True)

    def prune(self) -> None:
        """Keep the newest ``keep_last`` complete checkpoints and the best one; delete older ones.

        Directories newer than the newest complete checkpoint are left alone.
        """
        complete = [(s, p) for s, p in self.checkpoints() if (p / MANIFEST).is_file()]
        keep = {p.name for _, p in complete[-self.keep_last:]}
        best = self._best_record() if self.keep_best else None
        if best is not None:
            keep.add(best["name"])
        if not complete:
            return
        newest = complete[-1][0]
        for s, p in self.checkpoints():
            if p.name not in keep and s < newest:
                shutil.rmtree(p, ignore_errors=True)
                logger.info("pruned checkpoint %s", p)

    # --- reading ------------------------------------------------------------------------------

    def _best_record(self) -> dict[str, Any] | None:
        path = self.root / "best.json"
        if not path.is_file():
            return None
        try:
            rec = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(rec, dict) and "name" not in rec and "step" in rec:
                return None  # the driver's record of a best policy with no checkpoint of its own (step 0)
            if not isinstance(rec.get("name"), str) or not isinstance(rec.get("metric"), (int, float)):
                raise ValueError("needs a name and a numeric metric")
            return rec
        except ValueError as e:
            logger.warning("ignoring unreadable %s: %s", path, e)
            return None

    def best(self) -> Path | None:
        """The best checkpoint's directory (highest metric), when recorded and present."""
        rec = self._best_record()
        if rec is None or not (self.root / rec["name"]).is_dir():
            return None
        return self.root / rec["name"]

    def latest(self, *, checksums: bool = True) -> Path | None:
        """The newest checkpoint that verifies against its manifest, or None when there is none.

        Incomplete or corrupt ones are skipped with a warning.  ``checksums=False`` verifies sizes only.
        """
        for _, path in reversed(self.checkpoints()):
            try:
                verify_checkpoint(path, checksums=checksums)
            except DataError as e:
                logger.warning("skipping checkpoint: %s", e)
                continue
            return path
        return None

    def load(self, path: str | os.PathLike[str], trainer: RLTrainer) -> dict[str, Any]:
        """Verify checkpoint ``path``, restore ``trainer`` and the process RNG states; return its ``extra``.

        Raises:
            NotFound: no such directory.
            DataError: the checkpoint does not verify or its files are unreadable.
        """
        import torch

        root = Path(path)
        verify_checkpoint(root)
        if getattr(trainer, "sharded", False) or (root / "shards").is_dir():  # FSDP (s3core.rl.fsdp)
            from s3core.rl.fsdp import load_sharded_checkpoint

            return load_sharded_checkpoint(root, trainer)
        try:
            state = torch.load(root / "trainer.pt", map_location="cpu", weights_only=True)
            rng = torch.load(root / "rng.pt", map_location="cpu", weights_only=True)
            payload = json.loads((root / "extra.json").read_text(encoding="utf-8"))
        except (OSError, RuntimeError, ValueError) as e:
            raise DataError(str(root), None, f"cannot read the checkpoint: {e}") from None
        trainer.load_state_dict(state)
        restore_rng(rng)
        logger.info("resumed from %s (step %d)", root, trainer.step_count)
        return dict(payload.get("extra") or {})
