"""Validation during training: held-out GBR of the policy the searcher serves, with a bootstrap CI.

A validation runs the *current* policy (the version the searcher serves) at the evaluation
temperature (``search.temperature_eval``) through the searcher service on the held-out questions of
``train.val_questions``, has the generator answer from each trajectory's s3 context, scores GenAcc
with :func:`score_contexts` (the very function the training reward uses) and subtracts the cached
naive-RAG GenAcc of the same question (spec §5): per-question GBR = s3 GenAcc − naive GenAcc.
The result carries the mean GBR, both GenAccs, ``n`` and a seeded percentile-bootstrap 95 % CI of
the mean GBR over questions.

Reusable pieces (benchmarks import them):

* :func:`bootstrap_ci` — percentile bootstrap CI of a mean;
* :func:`paired_bootstrap_ci` — CI of ``mean(a - b)`` for paired per-question values (resampling
  questions, so both systems see the same resample);
* :func:`check_no_overlap` — refuse validation questions that are also training questions;
* :class:`BestPolicy` — ``best.json`` and the copies of the best-by-validation policy.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from s3core.errors import InvalidArgument, S3Error
from s3core.io import write_json

logger = logging.getLogger(__name__)

__all__ = [
    "BEST_FILE",
    "BEST_POLICIES",
    "BestPolicy",
    "ValidationResult",
    "bootstrap_ci",
    "check_no_overlap",
    "paired_bootstrap_ci",
    "run_validation",
    "score_contexts",
]

BEST_FILE = "best.json"
BEST_POLICIES = "best-policies"
N_RESAMPLES = 2000


# --- bootstrap ------------------------------------------------------------------------------------

def bootstrap_ci(values: Sequence[float], seed: int = 0, n_resamples: int = N_RESAMPLES,
                 confidence: float = 0.95) -> tuple[float, float]:
    """Percentile-bootstrap CI of ``mean(values)``: ``n_resamples`` resamples of the values with
    replacement from ``numpy.random.default_rng(seed)``.  One value gives ``(v, v)``; none raises."""
    import numpy as np

    x = np.asarray([float(v) for v in values], dtype=np.float64)
    if x.size == 0:
        raise InvalidArgument("bootstrap_ci needs at least one value")
    if not 0.0 < confidence < 1.0:
        raise InvalidArgument(f"confidence must be in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise InvalidArgument(f"n_resamples must be >= 1, got {n_resamples}")
    if not np.all(np.isfinite(x)):
        raise InvalidArgument("bootstrap_ci: values must be finite")
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples, dtype=np.float64)
    chunk = max(1, min(n_resamples, (1 << 22) // x.size))  # bounded memory on large sets
    for lo in range(0, n_resamples, chunk):
        hi = min(n_resamples, lo + chunk)
        idx = rng.integers(0, x.size, size=(hi - lo, x.size))
        means[lo:hi] = x[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    q_lo, q_hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(q_lo), float(q_hi)


def paired_bootstrap_ci(a: Sequence[float], b: Sequence[float], seed: int = 0, n_resamples: int = N_RESAMPLES,
                        confidence: float = 0.95) -> tuple[float, float]:
    """Percentile-bootstrap CI of ``mean(a) - mean(b)`` for *paired* values (``a[i]``, ``b[i]`` are
    the same question under two systems): questions are resampled, keeping each pair together."""
    if len(a) != len(b):
        raise InvalidArgument(f"paired_bootstrap_ci: {len(a)} values against {len(b)}; pairs must line up")
    return bootstrap_ci([float(x) - float(y) for x, y in zip(a, b)], seed=seed, n_resamples=n_resamples,
                        confidence=confidence)


# --- questions ------------------------------------------------------------------------------------

def _norm(text: str) -> str:
    from s3core.metrics import normalize_answer

    return normalize_answer(text)


def check_no_overlap(val_sets: Mapping[str, Sequence[Any]], train_questions: Sequence[Any],
                     train_name: str = "the training set") -> None:
    """Raise :class:`InvalidArgument` naming a shared question when any validation question is also a
    training question (same question text after answer normalisation: case, punctuation, articles,
    whitespace)."""
    seen = {_norm(q.question): q for q in train_questions}
    for ds, qs in val_sets.items():
        for q in qs:
            t = seen.get(_norm(q.question))
            if t is not None:
                raise InvalidArgument(
                    f"train.val_questions: validation question {ds}/{q.id} ({q.question!r}) is also in {train_name} "
                    f"(as {t.id!r}); validation questions must be held out from training")


# --- scoring ----------------------------------------------------------------------------------------

def score_contexts(trajs: Sequence[Any], gen: Any, judge: bool, batch: int = 64) -> list[float]:
    """GenAcc (0/1) of the generator answering from each trajectory's s3 context (the training reward's
    scoring and validation's)."""
    from s3core.eval.scoring import score_answers

    items = [(t.question.question, list(t.context)) for t in trajs]
    answers: list[str] = []
    for i in range(0, len(items), batch):
        answers += list(gen.answer(items[i : i + batch]).answers)
    if len(answers) != len(items):
        raise S3Error(f"generator returned {len(answers)} answers for {len(items)} contexts")

    def judge_fn(x: Sequence[tuple[str, str, Sequence[str]]]) -> list[bool]:
        return list(gen.judge(x).correct)

    scores = score_answers([(t.question.question, a, t.question.golden_answers) for t, a in zip(trajs, answers)],
                           judge_fn if judge else None)
    return [1.0 if s.genacc else 0.0 for s in scores]


@dataclass
class ValidationResult:
    step: int
    version: int
    n: int
    gbr: float
    s3_genacc: float
    naive_genacc: float
    ci95: tuple[float, float]
    seconds: float = 0.0
    per_dataset: dict[str, dict[str, float]] = field(default_factory=dict)
    gbrs: list[float] = field(default_factory=list)  # per question, in question order (not logged)
    is_best: bool = False  # it became the best so far when it was run

    def row(self) -> dict[str, Any]:
        """The ``metrics.jsonl`` fields (besides ``step`` and ``kind``)."""
        return {"version": self.version, "val_n": self.n, "val_gbr": self.gbr, "val_s3_genacc": self.s3_genacc,
                "val_naive_genacc": self.naive_genacc, "val_gbr_ci95": [self.ci95[0], self.ci95[1]],
                "val_gbr_ci95_lo": self.ci95[0], "val_gbr_ci95_hi": self.ci95[1], "val_seconds": self.seconds,
                "val_per_dataset": self.per_dataset}

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> "ValidationResult":
        ci = row.get("val_gbr_ci95") or [row["val_gbr_ci95_lo"], row["val_gbr_ci95_hi"]]
        return cls(step=int(row["step"]), version=int(row["version"]), n=int(row["val_n"]),
                   gbr=float(row["val_gbr"]), s3_genacc=float(row["val_s3_genacc"]),
                   naive_genacc=float(row["val_naive_genacc"]), ci95=(float(ci[0]), float(ci[1])),
                   seconds=float(row.get("val_seconds", 0.0)), per_dataset=dict(row.get("val_per_dataset") or {}))


def run_validation(questions: Sequence[Any], searcher: Any, gen: Any, cache: Any, key_fn: Any,
                   knobs: Mapping[str, Any], *, step: int, version: int, judge: bool, seed: int = 0,
                   batch_size: int = 64, ci_seed: int = 0) -> ValidationResult:
    """Validate the policy version ``version`` the searcher serves on ``questions`` (``knobs`` carry the
    eval temperature); naive-RAG GenAcc comes from the baseline cache (every baseline must be there:
    precompute them first)."""
    if not questions:
        raise InvalidArgument("validation has no questions")
    t0 = time.perf_counter()
    bases = cache.get_many([key_fn(q) for q in questions])
    missing = [q.id for q, b in zip(questions, bases) if b is None]
    if missing:
        raise S3Error(f"validation: {len(missing)} questions have no cached naive-RAG baseline (first: "
                      f"{missing[:3]}); they are precomputed before training")
    accs: list[float] = []
    for i in range(0, len(questions), batch_size):
        chunk = list(questions[i : i + batch_size])
        trajs = searcher.rollout(chunk, knobs, n=1, seed=seed + i, expect_version=version)
        if len(trajs) != len(chunk):
            raise S3Error(f"searcher returned {len(trajs)} trajectories for {len(chunk)} validation questions")
        for t, q in zip(trajs, chunk):
            if t.policy_version != version:
                raise S3Error(f"validation rollout ran policy version {t.policy_version}, expected {version}")
            if t.question.id != q.id:
                raise S3Error(f"searcher returned validation trajectories out of order ({t.question.id!r} for {q.id!r})")
            t.question = q
        accs += score_contexts(trajs, gen, judge)
    naive = [b.acc for b in bases]
    gbrs = [a - b for a, b in zip(accs, naive)]
    per: dict[str, dict[str, float]] = {}
    for q, a, b in zip(questions, accs, naive):
        d = per.setdefault(q.dataset, {"n": 0, "s3_genacc": 0.0, "naive_genacc": 0.0})
        d["n"] += 1
        d["s3_genacc"] += a
        d["naive_genacc"] += b
    for d in per.values():
        d["s3_genacc"] /= d["n"]
        d["naive_genacc"] /= d["n"]
        d["gbr"] = d["s3_genacc"] - d["naive_genacc"]
    n = len(questions)
    return ValidationResult(step=step, version=version, n=n, gbr=sum(gbrs) / n, s3_genacc=sum(accs) / n,
                            naive_genacc=sum(naive) / n, ci95=bootstrap_ci(gbrs, seed=ci_seed),
                            seconds=time.perf_counter() - t0, per_dataset=per, gbrs=gbrs)


# --- the best policy ---------------------------------------------------------------------------------

def _copy_dir_atomic(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    old = dst.with_name(f".{dst.name}.old")
    if dst.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dst, old)
    os.replace(tmp, dst)
    shutil.rmtree(old, ignore_errors=True)


class BestPolicy:
    """``<checkpoint_dir>/best.json`` and ``<checkpoint_dir>/best-policies/step-NNNNNN/`` (the driver's).

    When a validation beats the best so far, the validated policy folder (exactly the one the searcher
    served) is copied to ``best-policies/step-NNNNNN/`` (built under a temporary name, renamed into
    place) and then ``best.json`` is rewritten atomically to point at it.  Copies are kept for the best
    so far and for the best recorded in the newest checkpoint's run state (a crash resumes there), all
    others are deleted; :meth:`reconcile` (on resume) drops copies from steps the crash lost.

    ``best.json`` also carries ``name`` (the step's checkpoint directory, when that step was
    checkpointed) and ``metric`` (= ``val_gbr``), the fields :class:`~s3core.rl.checkpoint.CheckpointManager`
    reads to keep the best checkpoint through ``keep_last`` pruning.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.dir = self.root / BEST_POLICIES
        self.best: ValidationResult | None = None
        self.keep_step: int | None = None  # best step recorded in the newest checkpoint's run state

    def policy_dir(self, step: int) -> Path:
        return self.dir / f"step-{int(step):06d}"

    def record(self) -> dict[str, Any] | None:
        p = self.root / BEST_FILE
        if not p.is_file():
            return None
        try:
            rec = json.loads(p.read_text(encoding="utf-8"))
        except ValueError:
            return None
        return rec if isinstance(rec, dict) and "val_gbr" in rec else None

    def _write(self, res: ValidationResult) -> None:
        name = f"step-{res.step:06d}"
        rec = {"step": res.step, "version": res.version, "val_gbr": res.gbr, "ci95": [res.ci95[0], res.ci95[1]],
               "val_s3_genacc": res.s3_genacc, "val_naive_genacc": res.naive_genacc, "val_n": res.n,
               "policy_path": str(self.policy_dir(res.step)), "policy": f"{BEST_POLICIES}/{name}",
               "metric": res.gbr}
        if (self.root / name / "manifest.json").is_file():
            rec["name"] = name  # its checkpoint survives keep_last pruning
        write_json(self.root / BEST_FILE, rec)

    def summary(self) -> dict[str, Any]:
        if self.best is None:
            return {}
        return {"step": self.best.step, "version": self.best.version, "val_gbr": self.best.gbr,
                "ci95": [self.best.ci95[0], self.best.ci95[1]], "policy_path": str(self.policy_dir(self.best.step))}

    def offer(self, res: ValidationResult, policy_path: str | os.PathLike[str]) -> bool:
        """Make ``res`` the best when its GBR beats the best so far (ties keep the earlier); copy
        ``policy_path`` first.  Returns whether it became the best."""
        if self.best is not None and not res.gbr > self.best.gbr:
            return False
        src = Path(policy_path)
        if not (src / "config.json").is_file():
            raise S3Error(f"validated policy {src} is not a model folder (no config.json); cannot keep it as the best")
        _copy_dir_atomic(src, self.policy_dir(res.step))
        self.best = res
        self._write(res)
        self._prune()
        return True

    def checkpointed(self, history: Sequence[ValidationResult]) -> None:
        """The newest checkpoint holds ``history``: its best is the one a crash would resume to."""
        b = best_of(history)
        self.keep_step = None if b is None else b.step
        if self.best is not None:
            self._write(self.best)  # the best step's checkpoint may exist now ("name")
        self._prune()

    def _prune(self) -> None:
        keep = {s for s in (self.keep_step, None if self.best is None else self.best.step) if s is not None}
        if not self.dir.is_dir():
            return
        for p in self.dir.iterdir():
            if p.name.startswith("."):
                shutil.rmtree(p, ignore_errors=True)
                continue
            try:
                s = int(p.name.split("-", 1)[1])
            except (IndexError, ValueError):
                continue
            if s not in keep:
                shutil.rmtree(p, ignore_errors=True)

    def reconcile(self, history: Sequence[ValidationResult], checkpointed: Sequence[ValidationResult] = ()) -> None:
        """On (re)start: the best of ``history`` (the validations the run state and the resumed step
        hold) is the best; copies and a ``best.json`` from steps a crash lost are dropped.
        ``checkpointed``: the validations the newest checkpoint's run state holds."""
        b = best_of(history)
        self.best = b
        kb = best_of(checkpointed)
        self.keep_step = None if kb is None else kb.step
        if b is None:
            (self.root / BEST_FILE).unlink(missing_ok=True)
        elif not (self.policy_dir(b.step) / "config.json").is_file():
            logger.warning("the best validated policy (step %d) has no copy under %s", b.step, self.dir)
            self._write(b)
        else:
            self._write(b)
        self._prune()


def best_of(history: Sequence[ValidationResult]) -> ValidationResult | None:
    best: ValidationResult | None = None
    for r in history:
        if best is None or r.gbr > best.gbr:
            best = r
    return best
