"""Baseline-cache keys: stable across processes, equal for trivially different questions, different
whenever anything a baseline depends on changes."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from s3core.cache.keys import BaselineKey, baseline_dataset, index_fingerprint, judge_id, key_factory
from s3core.errors import InvalidArgument
from s3core.retrieval.base import IndexInfo
from s3core.types import Question

BASE = BaselineKey(
    dataset="nq",
    question="Who wrote the novel Moby-Dick?",
    index_fingerprint="bm25-0123456789abcdef0123456789abcdef",
    k=3,
    generator_model="hf/embedded:smollm2-135m-instruct",
    prompt_version="s3-gen-v1",
    judge_id="llm:hf/embedded:smollm2-135m-instruct",
)
# Regression vector: computed once from BASE.  The properties below are what matters; this pins the
# layout so that a refactor that silently changes every key (and orphans shared caches) fails here.
# Changed on purpose once: the scoring version (SCORING_VERSION "2") joined the key; the layout before
# it gave LEGACY (baselines stored then are never reused under today's scoring, test_scoring_version).
EXPECTED = "s3:baseline:v1:ecc2e75fc1ce2da18912d6cd10c005366216ce286a1d8376753991be189946f7"
LEGACY = "s3:baseline:v1:6fddabc8a052def4f73d53cc765802732e76e9ea08449a0a9ee8a3d9381eb747"


def test_regression_vector() -> None:
    assert BASE.redis_key() == EXPECTED


def test_format_and_namespace() -> None:
    key = BASE.redis_key()
    prefix, digest = key.rsplit(":", 1)
    assert prefix == "s3:baseline:v1"
    assert len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)
    assert BASE.redis_key("other") == "other:baseline:v1:" + digest


def test_same_key_in_another_process() -> None:
    # no builtin hash(): a fresh interpreter (different hash seed) gives the same key
    code = (
        "from s3core.cache.keys import BaselineKey; import json,sys; "
        "print(BaselineKey(**json.loads(sys.argv[1])).redis_key())"
    )
    out = subprocess.run([sys.executable, "-c", code, json.dumps(BASE.to_dict())], capture_output=True, text=True,
                         check=True, env={"PYTHONHASHSEED": "12345", "PATH": ""})
    assert out.stdout.strip() == BASE.redis_key()


@pytest.mark.parametrize("variant", [
    "who wrote the novel moby-dick?",
    "WHO WROTE THE NOVEL MOBY-DICK",
    "  Who   wrote the\tnovel Moby-Dick ? ",
    "Who wrote novel Moby-Dick",  # article and ASCII punctuation dropped
    "Who wrote a novel, Moby-Dick!",
])
def test_question_normalisation_keeps_the_key(variant: str) -> None:
    assert dataclasses.replace(BASE, question=variant).redis_key() == BASE.redis_key()


@pytest.mark.parametrize("field,value", [
    ("dataset", "hotpotqa"),
    ("question", "Who wrote the novel Typee?"),
    ("index_fingerprint", "bm25-ffffffffffffffffffffffffffffffff"),
    ("k", 5),
    ("generator_model", "vllm/Qwen/Qwen2.5-14B-Instruct-GPTQ-Int4"),
    ("prompt_version", "s3-gen-v2"),
    ("judge_id", "span-only"),
    ("scoring_version", "3"),
])
def test_any_other_change_changes_the_key(field: str, value: object) -> None:
    assert dataclasses.replace(BASE, **{field: value}).redis_key() != BASE.redis_key()


def test_curly_quotes_are_not_ascii_punctuation() -> None:
    # spec §4: only string.punctuation is removed, so these are different questions
    a = dataclasses.replace(BASE, question="Who sang “Hello”?")
    b = dataclasses.replace(BASE, question="Who sang Hello?")
    assert a.redis_key() != b.redis_key()


def test_dict_round_trip_and_validation() -> None:
    assert BaselineKey.from_dict(BASE.to_dict()) == BASE
    with pytest.raises(InvalidArgument, match="k must be"):
        dataclasses.replace(BASE, k=0)
    with pytest.raises(InvalidArgument, match="generator_model must not be empty"):
        dataclasses.replace(BASE, generator_model=" ")
    with pytest.raises(InvalidArgument, match="misses field"):
        BaselineKey.from_dict({"dataset": "nq"})
    with pytest.raises(InvalidArgument, match="unknown field"):
        BaselineKey.from_dict({**BASE.to_dict(), "extra": 1})


def _pb_like(**over: object) -> dict[str, object]:
    d: dict[str, object] = {"name": "wiki", "backend": "bm25", "num_documents": 3000, "corpus_sha256": "ab" * 32,
                            "encoder": "", "params_json": json.dumps({"k1": 1.5, "b": 0.75, "method": "lucene"})}
    d.update(over)
    return d


def test_index_fingerprint_properties() -> None:
    fp = index_fingerprint(_pb_like())
    assert fp.startswith("bm25-")
    # the name does not matter, nor the key order of params_json
    assert index_fingerprint(_pb_like(name="renamed")) == fp
    assert index_fingerprint(_pb_like(params_json='{"method": "lucene", "b": 0.75, "k1": 1.5}')) == fp
    # the same index described by s3core's IndexInfo (params as a dict) gives the same fingerprint
    info = IndexInfo(name="x", backend="bm25", num_documents=3000, corpus_sha256="ab" * 32,
                     params={"k1": 1.5, "b": 0.75, "method": "lucene"})
    assert index_fingerprint(info) == fp
    for over in ({"backend": "dense"}, {"corpus_sha256": "cd" * 32}, {"num_documents": 2999},
                 {"encoder": "e5"}, {"params_json": json.dumps({"k1": 1.2, "b": 0.75, "method": "lucene"})}):
        assert index_fingerprint(_pb_like(**over)) != fp, over
    with pytest.raises(InvalidArgument):
        index_fingerprint(_pb_like(params_json="{not json"))
    with pytest.raises(InvalidArgument):
        index_fingerprint(_pb_like(corpus_sha256=""))


def test_judge_id_and_key_factory() -> None:
    assert judge_id(False) == "span-only"
    assert judge_id(True, "m") == "llm:m"
    with pytest.raises(InvalidArgument):
        judge_id(True, "")
    make = key_factory("bm25-x", 3, "hf/m", "v1", "span-only")
    q = Question(id="1", question="Q?", golden_answers=("a",), dataset="nq")
    assert make(q) == BaselineKey("nq", "Q?", "bm25-x", 3, "hf/m", "v1", "span-only")
    # a filtered training file keeps the source dataset in metadata
    moved = Question(id="1", question="Q?", golden_answers=("a",), dataset="train_filtered",
                     metadata={"source_dataset": "nq"})
    assert baseline_dataset(moved) == "nq" and make(moved) == make(q)
    with pytest.raises(InvalidArgument, match="no dataset"):
        make(Question(id="2", question="Q?", golden_answers=("a",)))
