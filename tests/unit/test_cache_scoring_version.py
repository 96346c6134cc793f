"""The baseline cache key carries the scoring version: a baseline scored under an older rule is
never reused under a new one (issue 15), and a change of the scoring rule without a new
SCORING_VERSION fails here."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import fakeredis

from s3core.cache.baseline import BaselineCache, BaselineRecord
from s3core.cache.keys import LEGACY_SCORING_VERSION, SCORING_VERSION, BaselineKey, canonical_json, key_factory
from s3core.eval.scoring import score_one
from s3core.types import Question

KEY = BaselineKey(dataset="medqa", question="Which drug? Options: A: x B: y", index_fingerprint="bm25-abc", k=3,
                  generator_model="hf/m", prompt_version="s3-gen-v1", judge_id="span-only")
REC = BaselineRecord(question_id="q1", answer="A", genacc=True, em=True, f1=1.0, span=True, judge=None)


def _legacy_redis_key(key: BaselineKey) -> str:
    """The Redis key as it was computed before the scoring version joined the key."""
    fields = key.canonical_fields()
    del fields["scoring_version"]
    return f"s3:baseline:v1:{hashlib.sha256(canonical_json(fields).encode()).hexdigest()}"


def test_key_factory_uses_todays_scoring_and_versions_differ() -> None:
    q = Question(id="1", question=KEY.question, golden_answers=("A",), dataset="medqa")
    make = key_factory("bm25-abc", 3, "hf/m", "s3-gen-v1", "span-only")
    assert make(q).scoring_version == SCORING_VERSION == KEY.scoring_version
    old = dataclasses.replace(KEY, scoring_version=LEGACY_SCORING_VERSION)
    assert old.redis_key() != KEY.redis_key() and KEY.redis_key() != _legacy_redis_key(KEY)


def test_an_entry_stored_under_the_old_layout_is_not_reused(tmp_path: Path) -> None:
    r = fakeredis.FakeRedis()
    cache = BaselineCache(r)
    # what a cache filled before the scoring version existed holds: the old digest, a key without the field
    old_key = {k: v for k, v in KEY.to_dict().items() if k != "scoring_version"}
    r.set(_legacy_redis_key(KEY), json.dumps({"key": old_key, **REC.to_dict()}))
    assert cache.count() == 1
    assert cache.get(KEY) is None  # a miss: recomputed under today's rule
    # exported and imported again, it keeps saying which rule scored it, and still does not match
    exported = tmp_path / "cache.json"
    assert cache.export_json(exported) == 1
    (key, rec), = BaselineCache.read_export(exported)
    assert key.scoring_version == LEGACY_SCORING_VERSION and rec == REC
    fresh = BaselineCache(fakeredis.FakeRedis())
    assert fresh.import_json(exported).written == 1
    assert fresh.get(KEY) is None
    assert fresh.get(dataclasses.replace(KEY, scoring_version=LEGACY_SCORING_VERSION)) == REC
    # today's entries round-trip with their version
    fresh.put(KEY, REC)
    assert fresh.get(KEY) == REC
    assert json.loads(fresh.client.get(KEY.redis_key()))["key"]["scoring_version"] == SCORING_VERSION


# Verdicts of the scoring rule on rows where the versions differ (and some where they agree).  If this
# fails, the rule changed: bump SCORING_VERSION in s3core.cache.keys (documenting what changed), then
# record the new fingerprint here.
ROWS = [
    ("who wrote x?", "Herman Melville wrote it", ["Herman Melville"]),
    ("who wrote x?", "Melville", ["Herman Melville"]),
    ("who wrote x?", "anything at all", ["---"]),
    ("who wrote x?", "a", ["A"]),
    ("Q?\nOptions:\nA: yes\nB: no\nC: maybe", "A: no", ["A"]),
    ("Q?\nOptions:\nA: yes\nB: no\nC: maybe", "The answer is (B).", ["B"]),
    ("Q?\nOptions:\nA: yes\nB: no\nC: maybe", "maybe", ["C"]),
    ("Q?\nOptions:\nA: yes\nB: no\nC: maybe", "I don't know", ["A"]),
    ("how many?", "There are 2018 of them.", ["1883"]),
    ("what city?", "The city of Paris, France", ["paris"]),
]
FINGERPRINTS = {"2": "a164289d"}


def _fingerprint() -> str:
    out = []
    for question, pred, golds in ROWS:
        s, judge_golds = score_one(question, pred, golds)
        out.append([s.em, round(s.f1, 6), s.span, s.genacc, s.mc, s.choice, judge_golds])
    return hashlib.sha256(json.dumps(out, sort_keys=True).encode()).hexdigest()[:8]


def test_scoring_rule_changes_need_a_new_scoring_version() -> None:
    assert FINGERPRINTS.get(SCORING_VERSION) == _fingerprint(), (
        "the scoring rule's verdicts changed: bump SCORING_VERSION (s3core.cache.keys) so stored baselines "
        f"are not reused, and record {_fingerprint()!r} for it here")
