"""FlashRAG question loading and corpus reading (both layouts), including the shared real data."""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from s3core.data import (
    corpus_sha256,
    dataset_name,
    iter_corpus,
    load_corpus,
    load_questions,
    parse_contents,
)
from s3core.errors import DataError, InvalidArgument
from s3core.types import Doc, Question


def write_lines(path: Path, lines: list[Any]) -> Path:
    """Write rows (dicts become JSON, strings are written verbatim) one per line."""
    path.write_text(
        "".join((json.dumps(x) if not isinstance(x, str) else x) + "\n" for x in lines), encoding="utf-8"
    )
    return path


# ------------------------------------------------------------------------------------ questions


def test_load_questions_basic(tmp_path: Path) -> None:
    p = write_lines(
        tmp_path / "popqa.dev.jsonl",
        [
            {"id": "q1", "question": "Who?", "golden_answers": ["A", "B"], "metadata": {"k": 1}},
            "",
            "   ",
            {"id": 7, "question": "When?", "golden_answers": 1999},
            {"id": "q3", "question": "How many?", "golden_answers": [3, "three", 2.5]},
        ],
    )
    qs = load_questions(p)
    assert qs == [
        Question("q1", "Who?", ("A", "B"), "popqa"),
        Question("7", "When?", ("1999",), "popqa"),
        Question("q3", "How many?", ("3", "three", "2.5"), "popqa"),
    ]
    assert qs[0].metadata == {"k": 1}
    assert qs[1].metadata == {}


def test_golden_answers_string_is_wrapped(tmp_path: Path) -> None:
    p = write_lines(tmp_path / "x.jsonl", [{"id": "1", "question": "Q?", "golden_answers": "Paris"}])
    assert load_questions(p)[0].golden_answers == ("Paris",)


@pytest.mark.parametrize(
    ("name", "expected"),
    [("popqa.dev.jsonl", "popqa"), ("nq.jsonl", "nq"), ("2wikimultihopqa.dev.jsonl", "2wikimultihopqa"),
     ("plain", "plain")],
)
def test_dataset_name_from_file(tmp_path: Path, name: str, expected: str) -> None:
    p = write_lines(tmp_path / name, [{"id": "1", "question": "Q?", "golden_answers": ["a"]}])
    assert dataset_name(p) == expected
    assert load_questions(p)[0].dataset == expected
    assert load_questions(p, dataset="custom")[0].dataset == "custom"


def test_limit(tmp_path: Path) -> None:
    rows = [{"id": str(i), "question": f"Q{i}?", "golden_answers": ["a"]} for i in range(5)]
    p = write_lines(tmp_path / "d.jsonl", [*rows, "{not json"])
    assert [q.id for q in load_questions(p, limit=2)] == ["0", "1"]
    assert [q.id for q in load_questions(p, limit=5)] == ["0", "1", "2", "3", "4"]  # bad line 6 never read
    assert load_questions(p, limit=0) == []
    with pytest.raises(DataError):
        load_questions(p, limit=6)
    with pytest.raises(InvalidArgument):
        load_questions(p, limit=-1)


def test_bad_json_reports_line_number(tmp_path: Path) -> None:
    p = write_lines(
        tmp_path / "d.jsonl",
        [{"id": "1", "question": "Q?", "golden_answers": ["a"]}, "", '{"id": "2", "question": '],
    )
    with pytest.raises(DataError) as info:
        load_questions(p)
    err = info.value
    assert err.line == 3
    assert err.path == str(p)
    assert f"{p}:3:" in str(err)
    assert "invalid JSON" in str(err)


@pytest.mark.parametrize(
    ("row", "fragment"),
    [
        ({"id": "1", "golden_answers": ["a"]}, "missing 'question'"),
        ({"id": "1", "question": "  ", "golden_answers": ["a"]}, "'question'"),
        ({"id": "1", "question": 5, "golden_answers": ["a"]}, "'question'"),
        ({"id": "1", "question": "Q?"}, "missing 'golden_answers'"),
        ({"id": "1", "question": "Q?", "golden_answers": None}, "missing 'golden_answers'"),
        ({"id": "1", "question": "Q?", "golden_answers": []}, "empty"),
        ({"id": "1", "question": "Q?", "golden_answers": [{"x": 1}]}, "golden_answers"),
        ({"id": "1", "question": "Q?", "golden_answers": ["a"], "metadata": [1]}, "'metadata'"),
        ([1, 2, 3], "expected a JSON object"),
        ("\"just a string\"", "expected a JSON object"),
    ],
)
def test_bad_question_rows(tmp_path: Path, row: Any, fragment: str) -> None:
    good = {"id": "0", "question": "Fine?", "golden_answers": ["ok"]}
    p = write_lines(tmp_path / "d.jsonl", [good, row])
    with pytest.raises(DataError) as info:
        load_questions(p)
    assert info.value.line == 2
    assert fragment in info.value.message


def test_duplicate_ids_name_the_line(tmp_path: Path) -> None:
    row = {"id": "dup", "question": "Q?", "golden_answers": ["a"]}
    p = write_lines(tmp_path / "d.jsonl", [row, {"id": "x", "question": "Q?", "golden_answers": ["a"]}, row])
    with pytest.raises(DataError) as info:
        load_questions(p)
    assert info.value.line == 3
    assert "duplicate id 'dup'" in info.value.message
    assert "line 1" in info.value.message


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    for call in (lambda: load_questions(missing), lambda: list(iter_corpus(missing)),
                 lambda: corpus_sha256(missing), lambda: load_questions(missing, limit=0)):
        with pytest.raises(DataError) as info:
            call()
        assert info.value.line is None
        assert info.value.message == "no such file"
        assert str(missing) in str(info.value)


def test_invalid_utf8_reports_line(tmp_path: Path) -> None:
    p = tmp_path / "d.jsonl"
    p.write_bytes(b'{"id": "1", "question": "Q?", "golden_answers": ["a"]}\n{"id": "\xff"}\n')
    with pytest.raises(DataError) as info:
        load_questions(p)
    assert info.value.line == 2
    assert "UTF-8" in info.value.message


# ------------------------------------------------------------------------------------ corpus


def test_corpus_contents_layout(tmp_path: Path) -> None:
    p = write_lines(
        tmp_path / "c.jsonl",
        [
            {"id": 1, "contents": '"Mercury (planet)"\nMercury is the smallest planet.\nSecond line.'},
            {"id": "2", "contents": "Unquoted Title\nBody text."},
            {"id": "3", "contents": '"Only a title"'},
            {"id": "4", "contents": "just some body"},
            {"id": "5", "contents": '"Say "hi""\ntext'},
        ],
    )
    docs = load_corpus(p)
    assert docs[0] == Doc("1", "Mercury (planet)", "Mercury is the smallest planet.\nSecond line.")
    assert docs[1] == Doc("2", "Unquoted Title", "Body text.")
    assert docs[2] == Doc("3", "Only a title", "")
    assert docs[3] == Doc("4", "", "just some body")
    assert docs[4].title == 'Say "hi"'  # only the surrounding quotes go
    assert all(isinstance(d.id, str) for d in docs)


def test_corpus_title_text_layout(tmp_path: Path) -> None:
    p = write_lines(
        tmp_path / "c.jsonl",
        [{"id": "a", "title": "Paris", "text": "Paris is a city."}, {"id": 2, "title": "", "text": "x"}],
    )
    assert list(iter_corpus(p)) == [Doc("a", "Paris", "Paris is a city."), Doc("2", "", "x")]


def test_corpus_round_trips_doc_contents(tmp_path: Path) -> None:
    doc = Doc("9", "Title", "Body text here.")
    p = write_lines(tmp_path / "c.jsonl", [{"id": doc.id, "contents": doc.contents}])
    assert load_corpus(p) == [doc]
    assert parse_contents(doc.contents) == ("Title", "Body text here.")


@pytest.mark.parametrize(
    ("row", "fragment"),
    [
        ({"id": "1", "body": "x"}, "neither"),
        ({"id": "1", "title": "T"}, "neither"),
        ({"id": "1", "contents": 5}, "neither"),
        ({"id": "", "contents": "T\nx"}, "'id'"),
        ({"id": [1], "contents": "T\nx"}, "'id'"),
        ("[1]", "expected a JSON object"),
        ("{bad", "invalid JSON"),
    ],
)
def test_bad_corpus_rows(tmp_path: Path, row: Any, fragment: str) -> None:
    p = write_lines(tmp_path / "c.jsonl", [{"id": "0", "contents": "T\nfine"}, "", row])
    it = iter_corpus(p)
    assert next(it).id == "0"  # streaming: earlier rows come out before the error
    with pytest.raises(DataError) as info:
        next(it)
    assert info.value.line == 3
    assert fragment in info.value.message
    assert f"{p}:3:" in str(info.value)


def test_corpus_sha256(tmp_path: Path) -> None:
    p = write_lines(tmp_path / "c.jsonl", [{"id": "0", "contents": "T\nfine"}])
    assert corpus_sha256(p) == hashlib.sha256(p.read_bytes()).hexdigest()
    assert corpus_sha256(p, chunk_size=3) == corpus_sha256(p)


# ------------------------------------------------------------------------------------ real data


def test_real_popqa_and_wiki_corpus(shared_data: Path) -> None:
    qs = load_questions(shared_data / "wiki_qa" / "popqa.dev.jsonl")
    assert len(qs) > 100
    assert all(q.dataset == "popqa" and q.question and q.golden_answers for q in qs)
    assert len({q.id for q in qs}) == len(qs)
    assert "gold_passage_ids" in qs[0].metadata

    docs = list(itertools.islice(iter_corpus(shared_data / "wiki_corpus.jsonl"), 1000))
    assert len(docs) == 1000
    assert all(d.id and d.text for d in docs)
    assert not any(d.title.startswith('"') and d.title.endswith('"') for d in docs)
    assert sum(1 for d in docs if d.title) > 990


def test_real_question_files_all_load(shared_data: Path) -> None:
    files = sorted((shared_data / "wiki_qa").glob("*.jsonl")) + sorted((shared_data / "mirage").glob("*.jsonl"))
    assert files
    for f in files:
        qs = load_questions(f)
        assert qs, f
        assert qs[0].dataset == f.name.split(".")[0]
