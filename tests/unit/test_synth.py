"""The seeded fictional-world generator: determinism, sizes, and the 1-hop / 2-hop guarantees."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from s3core.data import corpus_sha256, iter_corpus, load_questions
from s3core.data.synth import synthesize
from s3core.errors import InvalidArgument
from s3core.metrics import answer_in_docs, empty_golds, span_match
from s3core.types import Doc, Question

FILES = ("corpus.jsonl", "synth_1hop.jsonl", "synth_2hop.jsonl", "manifest.json")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("synth0")
    return out, synthesize(out, seed=0)


@pytest.fixture(scope="module")
def corpus(world: tuple[Path, dict[str, Any]]) -> dict[str, Doc]:
    return {d.id: d for d in iter_corpus(world[0] / "corpus.jsonl")}


@pytest.fixture(scope="module")
def by_title(corpus: dict[str, Doc]) -> dict[str, list[Doc]]:
    groups: dict[str, list[Doc]] = defaultdict(list)
    for d in corpus.values():
        groups[d.title].append(d)
    return groups


def _full(d: Doc) -> str:
    return f"{d.title}\n{d.text}"


def _questions(world: tuple[Path, dict[str, Any]], name: str) -> list[Question]:
    return load_questions(world[0] / f"{name}.jsonl")


def test_same_seed_is_byte_identical(world: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    out, manifest = world
    again = synthesize(tmp_path / "again", seed=0)
    assert again == manifest
    for name in FILES:
        assert (tmp_path / "again" / name).read_bytes() == (out / name).read_bytes(), name


def test_different_seed_differs(world: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    out, manifest = world
    other = synthesize(tmp_path / "s1", seed=1)
    for name in ("corpus.jsonl", "synth_1hop.jsonl", "synth_2hop.jsonl"):
        assert (tmp_path / "s1" / name).read_bytes() != (out / name).read_bytes(), name
        assert other["files"][name]["sha256"] != manifest["files"][name]["sha256"]
    assert other["seed"] == 1


def test_manifest(world: tuple[Path, dict[str, Any]], corpus: dict[str, Doc]) -> None:
    out, manifest = world
    assert json.loads((out / "manifest.json").read_text(encoding="utf-8")) == manifest
    assert manifest["seed"] == 0
    for name in ("corpus.jsonl", "synth_1hop.jsonl", "synth_2hop.jsonl"):
        assert manifest["files"][name]["sha256"] == corpus_sha256(out / name)
        assert manifest["files"][name]["bytes"] == (out / name).stat().st_size
    counts = manifest["counts"]
    assert counts["entities_total"] == sum(counts["entities"].values()) == 300
    assert set(counts["entities"]) == {"country", "city", "person", "company", "band", "river", "university"}
    assert counts["passages"] == len(corpus) == counts["entity_passages"] + counts["distractor_passages"]
    assert 600 <= len(corpus) <= 900
    assert counts["distractor_passages"] > 0
    assert counts["synth_1hop"] == len(_questions(world, "synth_1hop")) == 100
    assert counts["synth_2hop"] == len(_questions(world, "synth_2hop")) == 100
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temp files behind


def test_corpus_shape(corpus: dict[str, Doc], world: tuple[Path, dict[str, Any]]) -> None:
    rows = [json.loads(line) for line in (world[0] / "corpus.jsonl").read_text(encoding="utf-8").splitlines()]
    assert all(set(r) == {"id", "contents"} for r in rows)  # DPR layout
    assert len({r["id"] for r in rows}) == len(rows)
    for d in corpus.values():
        assert d.title and not d.title.startswith('"')
        assert 40 <= len(d.text.split()) <= 90, (d.title, d.text)


def test_entities_have_one_or_two_passages(by_title: dict[str, list[Doc]], world: tuple[Path, dict[str, Any]]) -> None:
    subjects = {q.metadata["subject"] for name in ("synth_1hop", "synth_2hop") for q in _questions(world, name)}
    for s in subjects:
        assert 1 <= len(by_title[s]) <= 2, s


def test_questions_well_formed(world: tuple[Path, dict[str, Any]], corpus: dict[str, Doc]) -> None:
    for name, hops in (("synth_1hop", 1), ("synth_2hop", 2)):
        qs = _questions(world, name)
        assert len({q.id for q in qs}) == len(qs)
        assert len({q.question for q in qs}) == len(qs)
        templates = {q.metadata["template"] for q in qs}
        assert len(templates) >= 10, templates  # balanced across many templates
        for q in qs:
            assert q.dataset == name
            assert q.golden_answers and all(g.strip() for g in q.golden_answers)
            assert empty_golds(q.golden_answers) == 0
            assert q.metadata["hops"] == hops
            assert len(q.metadata["gold_passage_ids"]) == hops
            assert all(pid in corpus for pid in q.metadata["gold_passage_ids"])
            assert span_match(q.question, q.metadata["subject"])


def test_one_hop_answer_in_gold_passage(world: tuple[Path, dict[str, Any]], corpus: dict[str, Doc]) -> None:
    for q in _questions(world, "synth_1hop"):
        (pid,) = q.metadata["gold_passage_ids"]
        gold = corpus[pid]
        assert gold.title == q.metadata["subject"]
        assert span_match(gold.text, q.golden_answers[0]), (q.question, q.golden_answers, gold.text)


def test_two_hop_structure(
    world: tuple[Path, dict[str, Any]], corpus: dict[str, Doc], by_title: dict[str, list[Doc]]
) -> None:
    for q in _questions(world, "synth_2hop"):
        subject, bridge = q.metadata["subject"], q.metadata["bridge"]
        first, second = (corpus[pid] for pid in q.metadata["gold_passage_ids"])
        # hop 1: the subject's passage names the bridge; hop 2: the bridge's passage holds the answer
        assert first.title == subject and span_match(first.text, bridge)
        assert second.title == bridge and span_match(second.text, q.golden_answers[0])
        # the answer is in no passage of the entity the question names ...
        assert not answer_in_docs(q.golden_answers, [_full(d) for d in by_title[subject]]), q.question
        # ... the answer's passages do not mention that entity, and the question hides the bridge
        assert not answer_in_docs([subject], [_full(d) for d in by_title[bridge]]), q.question
        assert not span_match(q.question, bridge)
        decomposition = q.metadata["decomposition"]
        assert [step["answer"] for step in decomposition] == [bridge, q.golden_answers[0]]


def test_small_world_and_bad_arguments(tmp_path: Path) -> None:
    manifest = synthesize(tmp_path / "small", seed=7, n_entities=30, n_questions=10)
    assert manifest["counts"]["entities_total"] == 30
    assert len(load_questions(tmp_path / "small" / "synth_2hop.jsonl")) == 10
    with pytest.raises(InvalidArgument):
        synthesize(tmp_path / "bad", n_entities=29)
    with pytest.raises(InvalidArgument):
        synthesize(tmp_path / "bad", n_questions=0)
    with pytest.raises(InvalidArgument):
        synthesize(tmp_path / "bad", n_entities=30, n_questions=10_000)
