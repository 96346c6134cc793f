"""The training questions and the data cursor.

Questions are served in epochs; each epoch is a seeded permutation (``random.Random(seed, epoch)``)
of the whole set, and a batch never straddles two epochs' duplicates: it takes the rest of the
current epoch, then continues with the next.  The cursor (epoch, position) is part of every
checkpoint, so a resumed run draws exactly the batches the uninterrupted run would have drawn.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from s3core.errors import InvalidArgument
from s3core.types import Question

__all__ = ["TrainData", "check_question_files", "check_outputs", "RUN_OUTPUTS"]


@dataclass
class TrainData:
    questions: Sequence[Question]
    seed: int = 0
    epoch: int = 0
    pos: int = 0

    def __post_init__(self) -> None:
        if not self.questions:
            raise InvalidArgument("no training questions")
        self._order: list[int] = []
        self._order_epoch = -1

    def _perm(self) -> list[int]:
        if self._order_epoch != self.epoch:
            self._order = list(range(len(self.questions)))
            random.Random(f"{self.seed}/{self.epoch}").shuffle(self._order)
            self._order_epoch = self.epoch
        return self._order

    def next_batch(self, n: int) -> list[Question]:
        if n < 1:
            raise InvalidArgument(f"batch size must be >= 1, got {n}")
        out: list[Question] = []
        while len(out) < n:
            order = self._perm()
            take = order[self.pos : self.pos + (n - len(out))]
            out += [self.questions[i] for i in take]
            self.pos += len(take)
            if self.pos >= len(order):
                self.epoch += 1
                self.pos = 0
        return out

    def state(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "pos": self.pos, "seed": self.seed, "size": len(self.questions)}

    def restore(self, state: dict[str, Any]) -> None:
        if not state:
            return
        if int(state.get("size", len(self.questions))) != len(self.questions):
            raise InvalidArgument(f"the checkpoint's data cursor is for {state.get('size')} questions, but the "
                                  f"training set has {len(self.questions)}")
        self.epoch, self.pos = int(state.get("epoch", 0)), int(state.get("pos", 0))


# --- checks before any work ---------------------------------------------------------------------------

#: what a run writes into its checkpoint dir besides ``step-*`` checkpoints; a fresh run (not
#: ``--resume``) refuses a directory holding any of them instead of overwriting or mixing with it
RUN_OUTPUTS = ("metrics.jsonl", "train_questions.jsonl", "latest.json", "best.json", "train_summary.json")


def check_question_files(cfg: Any) -> dict[str, int]:
    """Parse every line of ``train.questions`` and ``train.val_questions`` (the first ``val_limit``
    of each validation file) before any service starts: a missing, empty or malformed file fails
    here with its name (and line), not after Redis, the retriever and the models are up.  Returns
    questions per file (``{path: n}``)."""
    from s3core.eval.job import load_question_sets

    tc = cfg.train
    counts: dict[str, int] = {}
    for key, paths, limit in (("train.questions", tc.questions, 0), ("train.val_questions", tc.val_questions,
                                                                       tc.val_limit)):
        for p in paths:
            if not Path(p).is_file():
                raise InvalidArgument(f"{key}: {p}: " + ("is a directory, not a question file" if Path(p).is_dir()
                                                         else "no such file"))
        # DataError names the file and line; an empty file or two files of one dataset name are refused
        for p, qs in zip(paths, load_question_sets(paths, limit=limit).values()):
            counts[p] = len(qs)
    return counts


def _writable_dir(key: str, path: Path) -> None:
    """``path`` is a writable directory, or can be made one (its nearest existing ancestor is a
    writable directory); nothing is created."""
    if path.exists() and not path.is_dir():
        raise InvalidArgument(f"{key}: {path} is a file, not a directory")
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise InvalidArgument(f"{key}: {path} cannot be created: {probe} is a file, not a directory")
    try:  # os.access lies for root and on read-only mounts; a real file tells the truth
        import tempfile

        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        where = "" if probe == path else f" (its parent {probe})"
        raise InvalidArgument(f"{key}: {path}{where} is not writable: {e.strerror or e}") from None


def check_outputs(cfg: Any, resume: bool) -> Path:
    """Check where the run writes before any work: ``train.checkpoint_dir`` (and ``train.log_dir``)
    must be writable directories or creatable, and a fresh run (``resume`` false) must not write over
    an earlier run's checkpoints or outputs (:data:`RUN_OUTPUTS`).  Returns the checkpoint dir."""
    tc = cfg.train
    ckdir = Path(tc.checkpoint_dir).expanduser()
    _writable_dir("train.checkpoint_dir", ckdir)
    if tc.log_dir:
        _writable_dir("train.log_dir", Path(tc.log_dir).expanduser())
    if not resume and ckdir.is_dir():
        found = sorted(p.name for p in ckdir.glob("step-*") if p.is_dir())[:1]
        found += [name for name in RUN_OUTPUTS if (ckdir / name).exists()]
        if found:
            raise InvalidArgument(f"train.checkpoint_dir: {ckdir} holds an earlier run ({', '.join(found)}): continue "
                                  "it with --resume, or choose another checkpoint dir")
    return ckdir
