"""Answer correctness metrics (spec §4): normalisation, EM, F1, span match, judge parsing, GenAcc."""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Sequence

import regex

__all__ = [
    "JudgeFn",
    "answer_in_docs",
    "empty_golds",
    "exact_match",
    "f1_score",
    "gen_acc",
    "judge_verdict",
    "normalize_answer",
    "span_match",
    "span_tokens",
]

JudgeFn = Callable[[str, Sequence[str]], bool]
"""A judge: ``(response, golds) -> True`` when some gold is contained in the response."""

_PUNCT_TABLE = str.maketrans("", "", string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_SPAN_TOKEN = regex.compile(r"[\p{L}\p{N}\p{M}]+|[^\p{Z}\p{C}]")


def _as_list(golds: str | Iterable[str]) -> list[str]:
    if isinstance(golds, str):
        return [golds]
    return [str(g) for g in golds]


def normalize_answer(s: str) -> str:
    """Lowercase, drop ASCII punctuation, replace the words a/an/the by a space, collapse whitespace."""
    s = s.lower().translate(_PUNCT_TABLE)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def exact_match(pred: str, golds: str | Sequence[str]) -> bool:
    """True if any gold equals the prediction after :func:`normalize_answer`."""
    p = normalize_answer(pred)
    return any(normalize_answer(g) == p for g in _as_list(golds))


def _f1(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    common = Counter(pred_tokens) & Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(pred_tokens)
    recall = same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def f1_score(pred: str, golds: str | Sequence[str]) -> float:
    """Token F1 on normalised, whitespace-split text; max over golds (0.0 with no golds)."""
    p = normalize_answer(pred).split()
    return max((_f1(p, normalize_answer(g).split()) for g in _as_list(golds)), default=0.0)


def span_tokens(s: str) -> list[str]:
    """Tokens used by span match: normalise, NFD, split on the spec's regex, lowercase."""
    text = unicodedata.normalize("NFD", normalize_answer(s))
    return [t.lower() for t in _SPAN_TOKEN.findall(text)]


def _contains(haystack: list[str], needle: list[str]) -> bool:
    if not needle:
        return True  # spec: a gold that normalises to nothing matches everything
    n = len(needle)
    first = needle[0]
    for i in range(len(haystack) - n + 1):
        if haystack[i] == first and haystack[i : i + n] == needle:
            return True
    return False


def span_match(pred: str, golds: str | Sequence[str]) -> bool:
    """True if any gold's token list is a contiguous sub-list of the prediction's tokens.

    A gold that normalises to nothing matches everything (see :func:`empty_golds`).
    """
    p = span_tokens(pred)
    return any(_contains(p, span_tokens(g)) for g in _as_list(golds))


def empty_golds(golds: str | Sequence[str]) -> int:
    """How many golds normalise to no span tokens (and therefore match any prediction)."""
    return sum(1 for g in _as_list(golds) if not span_tokens(g))


def judge_verdict(text: str) -> bool | None:
    """Parse a judge's output: "yes" anywhere → True, else "no" anywhere → False, else None.

    Matching is by substring on the lower-cased text, as the spec states.  On None the caller
    retries once and then scores 0.
    """
    low = text.lower()
    if "yes" in low:
        return True
    if "no" in low:
        return False
    return None


def gen_acc(pred: str, golds: str | Sequence[str], judge: JudgeFn | None = None) -> tuple[bool, str]:
    """GenAcc: span match, or, only when it fails, the judge.

    Returns ``(correct, how)`` with ``how`` one of ``"span"``, ``"judge"`` or ``"none"``.
    """
    gold_list = _as_list(golds)
    if span_match(pred, gold_list):
        return True, "span"
    if judge is not None and judge(pred, gold_list):
        return True, "judge"
    return False, "none"


def answer_in_docs(golds: str | Sequence[str], docs_texts: Iterable[str]) -> bool:
    """True if any gold span-matches any of the documents' texts (for answer_recall@k)."""
    gold_tokens = [span_tokens(g) for g in _as_list(golds)]
    if not gold_tokens:
        return False
    for text in docs_texts:
        d = span_tokens(text)
        if any(_contains(d, g) for g in gold_tokens):
            return True
    return False
