"""Scoring answers (spec §4), in one place: EM, F1, span match, and GenAcc = span match, else the
judge (asked only for the answers span match missed).  Used by `s3 eval`, `s3 score`, the naive-RAG
baseline precompute and the training reward, so every path scores a row identically.

Multiple-choice rows (the question text ends with an ``Options:`` block and the gold is one of its
letters, :func:`s3core.metrics.mc_gold`) are scored by the option the prediction chose
(:func:`s3core.metrics.extract_choice`): ``choice`` is that letter (None: no option or two),
``span`` is ``choice == gold``, ``em`` is "the reply is nothing but the gold option"
(:func:`s3core.metrics.mc_exact`), ``f1`` is token F1 against the gold option's text when the choice
is right (1.0 on EM) and 0 when it is wrong (the text "no" after a wrong letter earns nothing),
and the judge, when asked, sees the question with its options and the gold option line
(``"B: text"``).

Judge modes: ``"fallback"`` (GenAcc = span, else the judge: the paper's), ``"only"`` (GenAcc = the
judge's verdict on every row, as the reference scores MIRAGE), or no judge (``judge=None``: span
only).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Sequence

from s3core import metrics
from s3core.errors import S3Error

# (question, response, golds) per item -> one verdict per item
JudgeFn = Callable[[Sequence[tuple[str, str, Sequence[str]]]], Sequence[bool]]
JudgeMode = Literal["fallback", "only"]


@dataclass
class Score:
    em: bool
    f1: float
    span: bool
    judge: bool | None  # None when the judge was not asked (span matched, or judging is off)
    genacc: bool
    mc: bool = False  # scored as multiple choice
    choice: str | None = None  # multiple choice: the option letter the prediction chose (None: none or two)


def score_one(question: str, pred: str, golds: Sequence[str], mc: bool = True) -> tuple[Score, list[str]]:
    """Score one row without the judge; also returns the golds a judge should see (for a
    multiple-choice row: the gold option line)."""
    gold_list = list(golds)
    m = metrics.mc_gold(question, gold_list) if mc else None
    if m is not None:
        options, gold = m
        choice = metrics.extract_choice(pred, options)
        em = metrics.mc_exact(pred, options, gold)
        ok = choice == gold
        f1 = 1.0 if em else metrics.f1_score(pred, [options[gold]]) if ok else 0.0
        return Score(em=em, f1=f1, span=ok, judge=None, genacc=ok, mc=True, choice=choice), [f"{gold}: {options[gold]}"]
    span = metrics.span_match(pred, gold_list)
    return Score(em=metrics.exact_match(pred, gold_list), f1=metrics.f1_score(pred, gold_list), span=span,
                 judge=None, genacc=span), gold_list


def score_answers(items: Sequence[tuple[str, str, Sequence[str]]], judge: JudgeFn | None = None, *,
                  judge_mode: JudgeMode = "fallback", mc: bool = True) -> list[Score]:
    """Score ``(question, prediction, golds)`` items; one batched judge call for the rows it must see
    (the span misses, or every row with ``judge_mode="only"``).  ``mc=False`` scores
    multiple-choice rows as open text."""
    if judge_mode not in ("fallback", "only"):
        raise ValueError(f"judge_mode must be 'fallback' or 'only', got {judge_mode!r}")
    scored = [score_one(q, pred, golds, mc) for q, pred, golds in items]
    scores = [s for s, _ in scored]
    todo = [i for i, s in enumerate(scores) if judge_mode == "only" or not s.span]
    if judge is not None and todo:
        verdicts = list(judge([(items[i][0], items[i][1], scored[i][1]) for i in todo]))
        if len(verdicts) != len(todo):
            raise S3Error(f"judge returned {len(verdicts)} verdicts for {len(todo)} items")
        for i, v in zip(todo, verdicts):
            scores[i].judge = bool(v)
            scores[i].genacc = bool(v)
    return scores
