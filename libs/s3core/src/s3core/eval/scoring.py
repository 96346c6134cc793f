"""Scoring answers (spec §4), in one place: EM, F1, span match, and GenAcc = span match, else the
judge (asked only for the answers span match missed).  Used by `s3 eval` and by the naive-RAG
baseline precompute, so an evaluation row and a cached baseline are scored identically."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from s3core import metrics
from s3core.errors import S3Error

# (question, response, golds) per item -> one verdict per item
JudgeFn = Callable[[Sequence[tuple[str, str, Sequence[str]]]], Sequence[bool]]


@dataclass
class Score:
    em: bool
    f1: float
    span: bool
    judge: bool | None  # None when the judge was not asked (span matched, or judging is off)
    genacc: bool


def score_answers(items: Sequence[tuple[str, str, Sequence[str]]], judge: JudgeFn | None = None) -> list[Score]:
    """Score ``(question, prediction, golds)`` items; one batched judge call for the span misses."""
    scores = []
    for _, pred, golds in items:
        span = metrics.span_match(pred, list(golds))
        scores.append(Score(em=metrics.exact_match(pred, list(golds)), f1=metrics.f1_score(pred, list(golds)),
                            span=span, judge=None, genacc=span))
    todo = [i for i, s in enumerate(scores) if not s.span]
    if judge is not None and todo:
        verdicts = list(judge([(items[i][0], items[i][1], list(items[i][2])) for i in todo]))
        if len(verdicts) != len(todo):
            raise S3Error(f"judge returned {len(verdicts)} verdicts for {len(todo)} items")
        for i, v in zip(todo, verdicts):
            scores[i].judge = bool(v)
            scores[i].genacc = bool(v)
    return scores
