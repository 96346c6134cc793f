"""The reward: Gain Beyond RAG (spec §5).

``GBR(q) = Acc(G(q, context_s3)) − Acc(G(q, context_RAG))``.  The second term comes from the
naive-RAG baseline cache (:mod:`s3core.cache`).  A missing baseline either fails loudly
(:class:`MissingBaseline`) or is computed on the spot by a caller-supplied callback — never replaced
by anything else (the reference code silently fell back to a closed-book answer).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

from s3core.cache.baseline import BaselineCache, BaselineRecord
from s3core.cache.keys import BaselineKey, KeyFn
from s3core.config import RewardConfig
from s3core.errors import InvalidArgument, S3Error
from s3core.types import Question

__all__ = [
    "REWARD_MODES",
    "ComputeFn",
    "MissingBaseline",
    "RewardComputer",
    "RewardMode",
    "gbr_reward",
    "needs_baseline",
]

RewardMode = Literal["gbr", "gbr_plus_acc", "acc"]
REWARD_MODES: tuple[str, ...] = ("gbr", "gbr_plus_acc", "acc")
ON_MISSING = ("fail", "compute")

# Computes naive-RAG baselines for questions missing from the cache (same order, same length).
ComputeFn = Callable[[Sequence[Question]], Sequence[BaselineRecord]]


class MissingBaseline(S3Error):
    """A naive-RAG baseline the reward needs is not in the cache."""

    def __init__(self, message: str, question_ids: Sequence[str] = ()) -> None:
        self.question_ids = list(question_ids)
        super().__init__(message)

    @classmethod
    def for_ids(cls, ids: Sequence[str], hint: str = "") -> "MissingBaseline":
        shown = ", ".join(repr(i) for i in ids[:5])
        more = f" and {len(ids) - 5} more" if len(ids) > 5 else ""
        msg = f"{len(ids)} naive-RAG baseline(s) missing from the cache (question ids {shown}{more})"
        if hint:
            msg += f"; {hint}"
        return cls(msg, ids)


def _check_mode(mode: str) -> None:
    if mode not in REWARD_MODES:
        raise InvalidArgument(f"unknown reward mode {mode!r} (known: {', '.join(REWARD_MODES)})")


def needs_baseline(mode: str) -> bool:
    """True for the modes that subtract the naive-RAG accuracy (``gbr``, ``gbr_plus_acc``)."""
    _check_mode(mode)
    return mode != "acc"


def _check_acc(name: str, v: float) -> float:
    if isinstance(v, bool):
        v = float(v)
    if not isinstance(v, (int, float)) or not math.isfinite(v) or not 0.0 <= v <= 1.0:
        raise InvalidArgument(f"{name} must be a number in [0, 1], got {v!r}")
    return float(v)


def gbr_reward(context_acc: float, baseline_acc: float | None, mode: str = "gbr") -> float:
    """The reward of one episode.

    * ``gbr``: ``ctx − rag`` (the paper, in [−1, 1]);
    * ``gbr_plus_acc``: ``2·ctx − rag`` (what the authors' released code computes);
    * ``acc``: ``ctx`` (baseline ignored, may be None).

    ``baseline_acc=None`` with a mode that needs it raises :class:`MissingBaseline`.
    """
    _check_mode(mode)
    ctx = _check_acc("context_acc", context_acc)
    if mode == "acc":
        return ctx
    if baseline_acc is None:
        raise MissingBaseline(f"reward mode {mode!r} needs the naive-RAG baseline accuracy, got None")
    rag = _check_acc("baseline_acc", baseline_acc)
    return ctx - rag if mode == "gbr" else 2.0 * ctx - rag


class RewardComputer:
    """Rewards for a batch of episodes, reading baselines from the cache.

    ``on_missing="fail"`` raises :class:`MissingBaseline` listing the missing questions (run
    ``s3 precompute`` first); ``"compute"`` calls ``compute(missing_questions)``, stores the results
    in the cache, and uses them.
    """

    def __init__(self, cache: BaselineCache | None, key_fn: KeyFn | None, mode: str = "gbr",
                 on_missing: str = "fail", compute: ComputeFn | None = None) -> None:
        _check_mode(mode)
        if on_missing not in ON_MISSING:
            raise InvalidArgument(f"on_missing must be one of {', '.join(ON_MISSING)}, got {on_missing!r}")
        if needs_baseline(mode):
            if cache is None or key_fn is None:
                raise InvalidArgument(f"reward mode {mode!r} needs a baseline cache and a key function")
            if on_missing == "compute" and compute is None:
                raise InvalidArgument("on_missing='compute' needs a compute callback")
        self.cache = cache
        self.key_fn = key_fn
        self.mode = mode
        self.on_missing = on_missing
        self.compute = compute
        self.computed = 0  # baselines computed on the spot so far

    @classmethod
    def from_config(cls, cfg: RewardConfig, cache: BaselineCache | None, key_fn: KeyFn | None,
                    compute: ComputeFn | None = None) -> "RewardComputer":
        return cls(cache, key_fn, mode=cfg.mode, on_missing=cfg.on_missing_baseline, compute=compute)

    def baselines(self, questions: Sequence[Question]) -> list[BaselineRecord]:
        """The baseline of every question (looked up, else computed and stored, else raise)."""
        assert self.cache is not None and self.key_fn is not None
        keys: list[BaselineKey] = [self.key_fn(q) for q in questions]
        found = self.cache.get_many(keys)
        missing = [i for i, r in enumerate(found) if r is None]
        if missing:
            ids = [questions[i].id for i in missing]
            if self.on_missing == "fail":
                raise MissingBaseline.for_ids(ids, "run `s3 precompute` on this question set, or set "
                                                   "reward.on_missing_baseline: compute")
            assert self.compute is not None
            # one computation per distinct key (duplicated questions in a batch share it)
            first: dict[str, int] = {}
            for i in missing:
                first.setdefault(keys[i].digest(), i)
            todo = list(first.values())
            recs = list(self.compute([questions[i] for i in todo]))
            if len(recs) != len(todo):
                raise S3Error(f"baseline compute callback returned {len(recs)} records for {len(todo)} questions")
            for r in recs:
                if not isinstance(r, BaselineRecord):
                    raise S3Error(f"baseline compute callback returned {type(r).__name__}, not BaselineRecord")
            self.cache.put_many([(keys[i], r) for i, r in zip(todo, recs)])
            self.computed += len(recs)
            by_digest = {keys[i].digest(): r for i, r in zip(todo, recs)}
            for i in missing:
                found[i] = by_digest[keys[i].digest()]
        return [r for r in found if r is not None]

    def rewards(self, questions: Sequence[Question], context_accs: Sequence[float]) -> list[float]:
        """One reward per (question, GenAcc of the generator on the searcher's context)."""
        if len(questions) != len(context_accs):
            raise InvalidArgument(f"{len(questions)} questions but {len(context_accs)} context accuracies")
        if not needs_baseline(self.mode):
            return [gbr_reward(a, None, self.mode) for a in context_accs]
        base = self.baselines(questions)
        return [gbr_reward(a, b.acc, self.mode) for a, b in zip(context_accs, base)]
