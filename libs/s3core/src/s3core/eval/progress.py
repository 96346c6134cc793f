"""Per-batch progress of one method's evaluation, so an interrupted ``s3 eval`` resumes (issue 17 §4).

:class:`ProgressLog` appends one line per finished batch to a jsonl file and fsyncs it before the
next batch starts; a rerun with the same fingerprint reads it back and the runner evaluates only the
questions it does not hold.  Layout::

    {"progress_format": 1, "fingerprint": "<sha256 of what the evaluation depends on>"}
    {"dataset": D, "predictions": [Prediction...], "trajectories": [[id, base64 Trajectory proto, doc_ids]],
     "counters": {"recall_hits": .., "judge_calls": .., ...}}     one line per finished batch

A torn last line (a kill mid-write) is dropped; a different fingerprint (other questions, model, k,
config) starts the file over.  Nothing here knows how a row is scored: the runner hands over the
counters a batch added, and gets them back on resume.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

from s3core.rpc.convert import trajectory_from_bytes, trajectory_to_bytes
from s3core.search.trajectory import Trajectory

logger = logging.getLogger(__name__)

PROGRESS_FORMAT = 1
PROGRESS_FILE = ".progress.jsonl"


def fingerprint(obj: Any) -> str:
    """A stable sha256 of a JSON-able description of an evaluation."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str, ensure_ascii=False).encode()).hexdigest()


def _traj_to_b64(t: Trajectory) -> str:
    return base64.b64encode(trajectory_to_bytes(t)).decode("ascii")


def _traj_from_b64(b64: str) -> Trajectory:
    return trajectory_from_bytes(base64.b64decode(b64))


class ProgressLog:
    """See the module docstring.  ``batches[dataset]`` holds the batches read back, in order, each
    ``(prediction dicts, [(id, Trajectory, doc_ids)], counters)``."""

    def __init__(self, path: str | os.PathLike[str], fp: str) -> None:
        self.path = Path(path)
        self.fingerprint = fp
        self.batches: dict[str, list[tuple[list[dict[str, Any]], list[tuple[str, Trajectory, list[str]]],
                                           dict[str, int]]]] = {}
        self._fh: Any = None
        self._load()

    def done_ids(self, dataset: str) -> set[str]:
        return {p["id"] for preds, _, _ in self.batches.get(dataset, []) for p in preds}

    def __len__(self) -> int:
        return sum(len(preds) for bs in self.batches.values() for preds, _, _ in bs)

    def _load(self) -> None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return
        good = 0
        lines = raw.split(b"\n")
        for i, line in enumerate(lines[:-1]):  # what follows the last newline is torn (or empty)
            try:
                rec = json.loads(line)
                if i == 0:
                    if rec.get("fingerprint") != self.fingerprint or rec.get("progress_format") != PROGRESS_FORMAT:
                        logger.warning("%s holds the progress of a different evaluation: starting over", self.path)
                        self.batches = {}
                        self.path.unlink(missing_ok=True)
                        return
                else:
                    trajs = [(str(qid), _traj_from_b64(b64), list(ids)) for qid, b64, ids in rec["trajectories"]]
                    entry = (list(rec["predictions"]), trajs, {k: int(v) for k, v in rec["counters"].items()})
                    self.batches.setdefault(str(rec["dataset"]), []).append(entry)
            except (ValueError, KeyError, TypeError, AttributeError):
                break
            good += len(line) + 1
        if good < len(raw):
            with self.path.open("r+b") as fh:  # appends start on a line of their own
                fh.truncate(good)
        if self.batches:
            logger.warning("resuming from %s: %d question(s) already evaluated", self.path, len(self))

    def append(self, dataset: str, predictions: Sequence[dict[str, Any]],
               trajectories: Sequence[tuple[str, Trajectory, list[str]]], counters: dict[str, int]) -> None:
        """Record one finished batch, durably (fsync) before returning."""
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fresh = not self.path.is_file() or self.path.stat().st_size == 0
            self._fh = self.path.open("a", encoding="utf-8")
            if fresh:
                self._write({"progress_format": PROGRESS_FORMAT, "fingerprint": self.fingerprint})
        self._write({"dataset": dataset, "predictions": list(predictions),
                     "trajectories": [[qid, _traj_to_b64(t), list(ids)] for qid, t, ids in trajectories],
                     "counters": dict(counters)})

    def _write(self, obj: Any) -> None:
        self._fh.write(json.dumps(obj, ensure_ascii=False) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
