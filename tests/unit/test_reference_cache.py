"""Importing the s3 reference implementation's naive-RAG cache file (issue 15 §5): its entries
become our baselines under the key our own precompute would use, with today's scoring version;
entries that do not match the question files or our scoring are refused, naming file:line:column."""

from __future__ import annotations

import json
from pathlib import Path

import fakeredis
import pytest

from s3core.cache.baseline import BaselineCache
from s3core.cache.keys import SCORING_VERSION, judge_id, key_factory
from s3core.errors import DataError
from s3core.eval.reference_cache import ReferenceKeyParts, convert_reference_cache, read_reference_cache
from s3core.types import Question

QS = {
    "nq": [
        Question(id="nq-1", question="who wrote the tragedy hamlet", golden_answers=("William Shakespeare",), dataset="nq"),
        Question(id="nq-2", question="what is the capital of france", golden_answers=("Paris",), dataset="nq"),
        Question(id="nq-3", question="largest planet in the solar system", golden_answers=("Jupiter",), dataset="nq"),
    ],
    "hotpotqa": [
        Question(id="hp-1", question="Which river flows to the Black Sea?", golden_answers=("Danube",), dataset="hotpotqa"),
    ],
}
PARTS = ReferenceKeyParts(index_fingerprint="dense-0123", k=3, generator_model="vllm/Qwen/Qwen2.5-14B-Instruct",
                          prompt_version="s3-gen-v1", judge=True)

GOOD = {
    "nq": {
        # the reference appends "?" to questions that lack one
        "who wrote the tragedy hamlet?": {"answer": "It was William Shakespeare.", "score": 1, "em_score": 0},
        "what is the capital of france?": {"answer": "The city of Lyon", "score": 0, "em_score": 0},
        "largest planet in the solar system?": {"answer": "the gas giant", "score": 1, "em_score": 0},
    },
    "hotpotqa": {"Which river flows to the Black Sea?": {"answer": "Danube", "score": 1, "em_score": 1}},
}


def _write(tmp_path: Path, doc: object, indent: int | None = None) -> Path:
    p = tmp_path / "rag_cache.json"
    p.write_text(json.dumps(doc, indent=indent), encoding="utf-8")
    return p


def _convert(tmp_path: Path, doc: object, parts: ReferenceKeyParts = PARTS, **kw: object):
    p = _write(tmp_path, doc)
    return convert_reference_cache(read_reference_cache(p), QS, parts, path=str(p), **kw)


def test_entries_become_the_baselines_precompute_would_look_up(tmp_path: Path) -> None:
    res = _convert(tmp_path, GOOD)
    assert res.total == len(res.entries) == 4
    got = {k.question: (k, r) for k, r in res.entries}
    make = key_factory(PARTS.index_fingerprint, 3, PARTS.generator_model, PARTS.prompt_version,
                       judge_id(True, PARTS.generator_model))
    for qs in QS.values():
        for q in qs:
            key, rec = got[q.question]
            assert key.redis_key() == make(q).redis_key()  # the key of our own precompute for this question
            assert key.scoring_version == SCORING_VERSION and rec.question_id == q.id and rec.doc_ids == ()
    # span match: correct without the judge; span miss: the reference's score is the judge's verdict
    hamlet = got["who wrote the tragedy hamlet"][1]
    assert (hamlet.span, hamlet.judge, hamlet.genacc, hamlet.em) == (True, None, True, False)
    paris = got["what is the capital of france"][1]
    assert (paris.span, paris.judge, paris.genacc) == (False, False, False)
    jupiter = got["largest planet in the solar system"][1]
    assert (jupiter.span, jupiter.judge, jupiter.genacc) == (False, True, True)
    assert got["Which river flows to the Black Sea?"][1].em is True
    assert res.per_dataset["nq"] == {"entries": 3, "converted": 3, "genacc": 2, "reference_score": 2, "judged": 2}
    # into Redis and looked up with precompute's keys
    cache = BaselineCache(fakeredis.FakeRedis())
    assert cache.put_many(res.entries) == 4
    assert [r.genacc for r in cache.get_many([make(q) for q in QS["nq"]])] == [True, False, True]  # type: ignore[union-attr]


def test_span_only_keys_score_the_answers_alone(tmp_path: Path) -> None:
    parts = ReferenceKeyParts(**{**PARTS.__dict__, "judge": False})
    res = _convert(tmp_path, GOOD, parts)
    recs = {k.question: r for k, r in res.entries}
    assert all(k.judge_id == "span-only" for k, _ in res.entries)
    assert recs["largest planet in the solar system"].genacc is False  # the reference's judge said yes; span-only: no
    assert recs["largest planet in the solar system"].judge is None


def test_export_file_round_trips(tmp_path: Path) -> None:
    res = _convert(tmp_path, GOOD)
    out = tmp_path / "export.json"
    assert BaselineCache.write_export(out, res.entries) == 4
    back = BaselineCache.read_export(out)
    assert sorted((k.redis_key(), r) for k, r in back) == sorted((k.redis_key(), r) for k, r in res.entries)


@pytest.mark.parametrize("entry, message", [
    ({"answer": None, "score": 0, "em_score": 0}, "answer is null"),
    ({"answer": "Paris", "score": 0, "em_score": 1}, "reference score 0, but the answer 'Paris' matches a gold"),
    ({"answer": "Paris", "score": 1, "em_score": 0}, "reference em_score 0 but our exact match is 1"),
    ({"answer": "Paris", "score": 2}, "'score' must be 0 or 1"),
    ({"answer": "Paris"}, "misses 'answer' or 'score'"),
    ("Paris", "entry must be an object"),
])
def test_bad_entries_are_refused_naming_where(tmp_path: Path, entry: object, message: str) -> None:
    doc = {"nq": {**GOOD["nq"], "what is the capital of france?": entry}}
    p = _write(tmp_path, doc, indent=2)  # one entry per line: the line number says which
    line = next(i for i, t in enumerate(p.read_text().splitlines(), 1) if "capital of france" in t)
    with pytest.raises(DataError, match="1 of 3 entries refused, nothing imported") as ei:
        convert_reference_cache(read_reference_cache(p), QS, PARTS, path=str(p))
    assert f"{p}:{line}:5: " in str(ei.value) and message in str(ei.value)


def test_unmatched_questions_are_refused_or_skipped(tmp_path: Path) -> None:
    doc = {**GOOD, "nq": {**GOOD["nq"], "who founded rome?": {"answer": "Romulus", "score": 1, "em_score": 1}},
           "triviaqa": {"q?": {"answer": "x", "score": 0, "em_score": 0}}}
    p = _write(tmp_path, doc)  # json.dump's layout: one line, so the column locates the entry
    text = p.read_text()
    with pytest.raises(DataError) as ei:
        convert_reference_cache(read_reference_cache(p), QS, PARTS, path=str(p))
    msg = str(ei.value)
    assert "2 of 6 entries refused" in msg
    col = text.index('"who founded rome?"') + 1
    assert f"{p}:1:{col}: question 'who founded rome?' is not in the 'nq' question file" in msg
    assert "dataset 'triviaqa' is not among the question files (hotpotqa, nq)" in msg
    res = convert_reference_cache(read_reference_cache(p), QS, PARTS, path=str(p), skip_unmatched=True)
    assert (len(res.entries), res.unmatched) == (4, 2) and len(res.unmatched_examples) == 2


def test_verdicts_our_rule_cannot_take_over_are_refused(tmp_path: Path) -> None:
    qs = {"medqa": [Question(id="m1", question="Which drug?\nOptions:\nA: aspirin\nB: insulin\n", golden_answers=("B",),
                             dataset="medqa")],
          "nq": [Question(id="e1", question="what is empty", golden_answers=("the",), dataset="nq")]}
    doc = {"medqa": {"Which drug?\nOptions:\nA: aspirin\nB: insulin\n": {"answer": "A", "score": 0, "em_score": 0}},
           "nq": {"what is empty?": {"answer": "anything", "score": 1, "em_score": 0}}}
    p = _write(tmp_path, doc)
    with pytest.raises(DataError) as ei:
        convert_reference_cache(read_reference_cache(p), qs, PARTS, path=str(p))
    assert "a multiple-choice row" in str(ei.value) and "a gold normalises to nothing" in str(ei.value)
    # span-only keys need no judge verdict: both are scored from the answers (the MC row by its choice)
    parts = ReferenceKeyParts(**{**PARTS.__dict__, "judge": False})
    res = convert_reference_cache(read_reference_cache(p), qs, parts, path=str(p))
    assert [(r.genacc, r.span) for _, r in res.entries] == [(False, False), (False, False)]


def test_duplicates_after_normalising(tmp_path: Path) -> None:
    same = {"answer": "The city of Lyon", "score": 0, "em_score": 0}
    res = _convert(tmp_path, {"nq": {"what is the capital of france?": same, "What is the capital of France": same}})
    assert (len(res.entries), res.duplicates) == (1, 1)
    other = {"answer": "Paris", "score": 1, "em_score": 1}
    with pytest.raises(DataError, match="the same question as .* with another verdict"):
        _convert(tmp_path, {"nq": {"what is the capital of france?": same, "What is the capital of France": other}})


@pytest.mark.parametrize("text, message", [
    ('{"nq": {"q?": {"answer": "x", "score": 0}', "rag_cache.json:1:"),
    ('[{"question": "q"}]', "a JSON list, not the reference's naive-RAG cache"),
    ('{"nq": ["q"]}', "must be a JSON object"),
    ('{"format": "s3-baseline-cache", "version": 1, "records": []}', "one of our own exports"),
    ('{"nq": {}} trailing', "extra data after the object"),
])
def test_malformed_files(tmp_path: Path, text: str, message: str) -> None:
    p = tmp_path / "rag_cache.json"
    p.write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=message.replace("[", r"\[").replace("(", r"\(")):
        read_reference_cache(p)


def test_key_parts_the_file_lacks_are_required(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="prompt version must be given"):
        _convert(tmp_path, GOOD, ReferenceKeyParts(**{**PARTS.__dict__, "prompt_version": ""}))
