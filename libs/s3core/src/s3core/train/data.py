"""The training questions and the data cursor.

Questions are served in epochs; each epoch is a seeded permutation (``random.Random(seed, epoch)``)
of the whole set, and a batch never straddles two epochs' duplicates: it takes the rest of the
current epoch, then continues with the next.  The cursor (epoch, position) is part of every
checkpoint, so a resumed run draws exactly the batches the uninterrupted run would have drawn.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Sequence

from s3core.errors import InvalidArgument
from s3core.types import Question

__all__ = ["TrainData"]


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
