"""Importing the s3 reference implementation's naive-RAG cache file into our baseline cache.

The reference's precompute step writes one JSON object
``{data_source: {question: {"answer": str | null, "score": 0 | 1, "em_score": 0 | 1}}}``: the
generator's answer from the naive top-k documents, its GenAcc (span match, else the LLM judge) and
its exact match.  The file carries none of what our baseline key holds besides the dataset and the
question -- not the index, k, the generator, its prompt version nor the judge -- so the user states
them (:class:`ReferenceKeyParts`), and every entry is checked against the user's question files
before anything is written:

* the entry's question must be one of the questions of its dataset (matched by normalised text,
  the way our keys match questions; the reference appends ``?``), else it is *unmatched*: an error,
  or skipped and counted with ``skip_unmatched``;
* the answer is scored again with our rule (:func:`s3core.eval.scoring.score_one`, today's
  :data:`~s3core.cache.keys.SCORING_VERSION`), so the record is what ``s3 precompute`` would have
  stored for that answer;
* the reference's verdicts must agree with ours where both rules decide the same thing: an answer
  our span rule matches must have ``score`` 1, and ``em_score`` (when present) must equal our EM --
  a disagreement means the golds (or the question) are not the ones the reference scored, and the
  entry is refused;
* with a judged key the reference's ``score`` is taken as the judge's verdict where our span rule
  misses -- except where its own span rule decided it (a gold that normalises to nothing matched
  everything under the old rule) and for multiple-choice rows (their judge saw the gold letter, ours
  sees the option line): those are refused, recompute them with ``s3 precompute``;
* a null answer (the reference writes one when it had no context or the generator failed), a
  non-object entry or a ``score`` other than 0/1 is refused.

Refusals name ``file:line:column`` of the entry's question (the reference writes the whole file on
one line, so the column is what locates it).  Nothing is written unless every entry passed (or was
skipped as unmatched, when asked).
"""

from __future__ import annotations

import bisect
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from s3core import metrics
from s3core.cache.baseline import EXPORT_FORMAT, BaselineRecord
from s3core.cache.keys import SCORING_VERSION, BaselineKey, judge_id
from s3core.errors import DataError, InvalidArgument
from s3core.eval.scoring import score_one
from s3core.types import Question

__all__ = ["ReferenceEntry", "ReferenceImport", "ReferenceKeyParts", "convert_reference_cache", "read_reference_cache"]

_WS = re.compile(r"[ \t\n\r]*")
_MAX_LISTED = 20  # refusals listed in an error message


@dataclass(frozen=True)
class ReferenceEntry:
    dataset: str
    question: str
    value: Any
    where: str  # file:line:column of the question key


@dataclass(frozen=True)
class ReferenceKeyParts:
    """What the reference file does not say and our key needs, as the user states it."""

    index_fingerprint: str
    k: int
    generator_model: str
    prompt_version: str
    judge: bool
    judge_model: str = ""  # default: the generator model (the reference judged with its generator)

    @property
    def judge_id(self) -> str:
        return judge_id(self.judge, self.judge_model or self.generator_model)


@dataclass
class ReferenceImport:
    """The entries that passed, as our cache's (key, record) pairs, and what was counted."""

    entries: list[tuple[BaselineKey, BaselineRecord]] = field(default_factory=list)
    total: int = 0
    unmatched: int = 0  # skipped (skip_unmatched): no such question in the question files
    duplicates: int = 0  # a second entry for the same key with the same verdict
    per_dataset: dict[str, dict[str, int]] = field(default_factory=dict)
    unmatched_examples: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"total": self.total, "converted": len(self.entries), "unmatched_skipped": self.unmatched,
                "duplicates": self.duplicates, "scoring_version": SCORING_VERSION,
                "per_dataset": self.per_dataset, "unmatched_examples": self.unmatched_examples}


# --- reading, with positions -------------------------------------------------------------------

class _Positions:
    def __init__(self, path: str, text: str) -> None:
        self.path = path
        self.starts = [0] + [m.end() for m in re.finditer("\n", text)]

    def at(self, pos: int) -> str:
        line = bisect.bisect_right(self.starts, pos)
        return f"{self.path}:{line}:{pos - self.starts[line - 1] + 1}"


def _ws(s: str, i: int) -> int:
    m = _WS.match(s, i)
    return m.end() if m else i


def _object_items(s: str, i: int, pos: _Positions, what: str,
                  value: Callable[[int], tuple[Any, int]]) -> tuple[list[tuple[str, int, Any]], int]:
    """The members of the object at ``s[i]`` as (key, key position, ``value(value position)``), and
    the position after the object."""
    if i >= len(s) or s[i] != "{":
        raise DataError(pos.at(i), None, f"{what} must be a JSON object")
    out: list[tuple[str, int, Any]] = []
    i = _ws(s, i + 1)
    if i < len(s) and s[i] == "}":
        return out, i + 1
    while True:
        if i >= len(s) or s[i] != '"':
            raise DataError(pos.at(i), None, f"invalid JSON: expected a string key in {what}")
        try:
            key, j = json.decoder.scanstring(s, i + 1)
        except json.JSONDecodeError as exc:
            raise DataError(pos.at(exc.pos), None, f"invalid JSON: {exc.msg}") from None
        j = _ws(s, j)
        if j >= len(s) or s[j] != ":":
            raise DataError(pos.at(j), None, "invalid JSON: expected ':'")
        v, end = value(_ws(s, j + 1))
        out.append((key, i, v))
        i = _ws(s, end)
        if i < len(s) and s[i] == ",":
            i = _ws(s, i + 1)
            continue
        if i < len(s) and s[i] == "}":
            return out, i + 1
        raise DataError(pos.at(i), None, f"invalid JSON: expected ',' or '}}' in {what}")


_DECODER = json.JSONDecoder()


def read_reference_cache(path: str | os.PathLike[str]) -> list[ReferenceEntry]:
    """Every ``(dataset, question, entry)`` of a reference cache file, with where it is."""
    p = Path(path)
    if not p.is_file():
        raise DataError(str(p), None, "no such file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(str(p), None, f"not valid UTF-8 ({exc.reason})") from None
    pos = _Positions(str(p), text)

    def scalar(i: int) -> tuple[Any, int]:
        try:
            v, end = _DECODER.raw_decode(text, i)
        except json.JSONDecodeError as exc:
            raise DataError(pos.at(exc.pos), None, f"invalid JSON: {exc.msg}") from None
        return v, int(end)

    def dataset(i: int) -> tuple[Any, int]:
        if i < len(text) and text[i] != "{":  # e.g. the "format" of one of our exports
            v, end = scalar(i)
            return ("value", v), end
        members, end = _object_items(text, i, pos, "a dataset's entries", scalar)
        return ("members", members), end

    start = _ws(text, 0)
    if start < len(text) and text[start] == "[":
        raise DataError(str(p), None, "a JSON list, not the reference's naive-RAG cache "
                        '({dataset: {question: {"answer", "score"}}})')
    datasets, end = _object_items(text, start, pos, "the file", dataset)
    if _ws(text, end) != len(text):
        raise DataError(pos.at(_ws(text, end)), None, "invalid JSON: extra data after the object")
    if any(ds == "format" and got == ("value", EXPORT_FORMAT) for ds, _, got in datasets):
        raise DataError(str(p), None, "this is one of our own exports: load it with `s3 cache import`")
    out: list[ReferenceEntry] = []
    for ds, ds_pos, (kind, members) in datasets:
        if kind != "members":
            raise DataError(pos.at(ds_pos), None, f"dataset {ds!r} must be a JSON object mapping questions to "
                            f"entries, got {type(members).__name__}")
        out.extend(ReferenceEntry(dataset=ds, question=q, value=v, where=pos.at(q_pos)) for q, q_pos, v in members)
    return out


# --- converting -------------------------------------------------------------------------------

def _verdict(v: Any, name: str) -> int | None:
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, int) and v in (0, 1):
        return v
    if isinstance(v, float) and v in (0.0, 1.0):
        return int(v)
    raise InvalidArgument(f"{name!r} must be 0 or 1, got {v!r}")


def _convert_one(e: ReferenceEntry, q: Question, parts: ReferenceKeyParts) -> BaselineRecord:
    v = e.value
    if not isinstance(v, dict):
        raise InvalidArgument(f"entry must be an object {{\"answer\", \"score\"}}, got {type(v).__name__}")
    if "answer" not in v or "score" not in v:
        raise InvalidArgument("entry misses 'answer' or 'score'")
    answer = v["answer"]
    if answer is None:
        raise InvalidArgument("answer is null (the reference writes null when it had no context or the "
                              "generator failed): no baseline to import, compute it with `s3 precompute`")
    if not isinstance(answer, str):
        raise InvalidArgument(f"'answer' must be a string, got {type(answer).__name__}")
    ref_score = _verdict(v["score"], "score")
    ref_em = _verdict(v["em_score"], "em_score") if "em_score" in v else None
    sc, _ = score_one(q.question, answer, q.golden_answers)
    golds = ", ".join(map(repr, q.golden_answers[:3]))
    if sc.span and ref_score == 0:
        raise InvalidArgument(f"reference score 0, but the answer {answer[:80]!r} matches a gold ({golds}) under our "
                              "span rule: the golds are not the ones the reference scored")
    if ref_em is not None and not sc.mc and bool(ref_em) != sc.em:
        raise InvalidArgument(f"reference em_score {ref_em} but our exact match is {int(sc.em)} for {answer[:80]!r} "
                              f"against {golds}: the golds are not the ones the reference scored")
    judge: bool | None = None
    genacc = sc.span
    if parts.judge and not sc.span:
        if sc.mc:
            raise InvalidArgument("a multiple-choice row: the reference's judge saw the gold letter, ours sees the "
                                  "option line; compute it with `s3 precompute`")
        if ref_score == 1 and any(not metrics.normalize_answer(g) for g in q.golden_answers):
            raise InvalidArgument("a gold normalises to nothing: the reference's score 1 came from its span rule "
                                  f"(such a gold matched everything), not from a judge; scoring version {SCORING_VERSION} "
                                  "never matches it")
        judge = bool(ref_score)
        genacc = judge
    return BaselineRecord(question_id=q.id, answer=answer, genacc=genacc, em=sc.em, f1=sc.f1, span=sc.span,
                          judge=judge, doc_ids=())


def convert_reference_cache(entries: Sequence[ReferenceEntry], questions: Mapping[str, Sequence[Question]],
                            parts: ReferenceKeyParts, *, skip_unmatched: bool = False,
                            path: str = "") -> ReferenceImport:
    """Map reference entries onto our (key, record) pairs; refuse (DataError listing ``file:line:col``
    of each) unless every entry passes.  ``questions``: dataset name -> its questions."""
    if isinstance(parts.k, bool) or not isinstance(parts.k, int) or parts.k < 1:
        raise InvalidArgument(f"k must be an integer >= 1, got {parts.k!r}")
    for name in ("index_fingerprint", "generator_model", "prompt_version"):
        if not str(getattr(parts, name)).strip():
            raise InvalidArgument(f"{name.replace('_', ' ')} must be given: the reference file does not record it")
    by_text: dict[str, dict[str, Question]] = {}
    for ds, qs in questions.items():
        m = by_text.setdefault(ds, {})
        for q in qs:
            m.setdefault(metrics.normalize_answer(q.question), q)
    res = ReferenceImport(total=len(entries))
    problems: list[str] = []
    seen: dict[str, tuple[str, bool]] = {}
    for e in entries:
        stats = res.per_dataset.setdefault(e.dataset, {"entries": 0, "converted": 0, "genacc": 0,
                                                       "reference_score": 0, "judged": 0})
        stats["entries"] += 1
        known = by_text.get(e.dataset)
        q = known.get(metrics.normalize_answer(e.question)) if known is not None else None
        if q is None:
            why = (f"dataset {e.dataset!r} is not among the question files ({', '.join(sorted(questions)) or 'none'})"
                   if known is None else f"question {e.question[:80]!r} is not in the {e.dataset!r} question file")
            if skip_unmatched:
                res.unmatched += 1
                if len(res.unmatched_examples) < _MAX_LISTED:
                    res.unmatched_examples.append(f"{e.where}: {why}")
                continue
            problems.append(f"{e.where}: {why}")
            continue
        try:
            rec = _convert_one(e, q, parts)
        except InvalidArgument as exc:
            problems.append(f"{e.where}: {exc}")
            continue
        key = BaselineKey(dataset=e.dataset, question=q.question, index_fingerprint=parts.index_fingerprint,
                          k=parts.k, generator_model=parts.generator_model, prompt_version=parts.prompt_version,
                          judge_id=parts.judge_id)
        digest = key.digest()
        if digest in seen:
            first, verdict = seen[digest]
            if verdict != rec.genacc:
                problems.append(f"{e.where}: the same question as {first} (after normalising) with another verdict")
            else:
                res.duplicates += 1
            continue
        seen[digest] = (e.where, rec.genacc)
        res.entries.append((key, rec))
        stats["converted"] += 1
        stats["genacc"] += int(rec.genacc)
        stats["reference_score"] += int(bool(e.value.get("score")))
        stats["judged"] += int(rec.judge is not None)
    if problems:
        more = f"\n... and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
        raise DataError(path or "reference cache", None,
                        f"{len(problems)} of {len(entries)} entries refused, nothing imported:\n"
                        + "\n".join(problems[:_MAX_LISTED]) + more)
    return res
