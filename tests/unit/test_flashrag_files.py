"""FlashRAG files as FlashRAG means them (issue 15 §5): Parquet question and corpus files, corpus
rows ``{id, text}``, rows without ``id`` (numbered by position), the ``nq/dev.jsonl`` layout, and
seeded sub-sampling.  On the shared real data."""

from __future__ import annotations

import json
from itertools import islice
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from s3core.data import dataset_name, iter_corpus, load_questions
from s3core.errors import DataError, InvalidArgument
from s3core.retrieval import build_index, load_index


def _rows(path: Path, n: int) -> list[dict]:
    with path.open() as fh:
        return [json.loads(x) for x in islice(fh, n)]


def test_dataset_name_layouts(tmp_path: Path) -> None:
    assert dataset_name("data/popqa.dev.jsonl") == "popqa"
    assert dataset_name("FlashRAG_datasets/nq/dev.jsonl") == "nq"
    assert dataset_name("hub/nq/test.parquet") == "nq"
    assert dataset_name("x/train.jsonl") == "x"
    assert dataset_name(Path("mine.jsonl")) == "mine"


def test_parquet_questions_match_the_jsonl(shared_data: Path, tmp_path: Path) -> None:
    src = shared_data / "wiki_qa" / "hotpotqa.dev.jsonl"
    rows = _rows(src, 50)
    (tmp_path / "hotpotqa").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "hotpotqa" / "dev.parquet")
    got = load_questions(tmp_path / "hotpotqa" / "dev.parquet")
    want = load_questions(src, limit=50)
    assert [(q.id, q.question, q.golden_answers, q.dataset) for q in got] == \
        [(q.id, q.question, q.golden_answers, "hotpotqa") for q in want]
    assert got[0].metadata == want[0].metadata


def test_parquet_mirage_without_ids_and_with_choices(shared_data: Path, tmp_path: Path) -> None:
    """A FlashRAG-style MC file: no ids, ``choices`` lists, integer golds (an index into choices)."""
    src = [json.loads(x) for x in (shared_data / "mirage" / "mmlu.dev.jsonl").read_text().splitlines()][:30]
    rows = [{"question": r["metadata"]["question_stem"], "choices": list(r["metadata"]["options"].values()),
             "golden_answers": ["ABCD".index(r["golden_answers"][0])]} for r in src]
    p = tmp_path / "mmlu" / "test.parquet"
    p.parent.mkdir()
    pq.write_table(pa.Table.from_pylist(rows), p)
    qs = load_questions(p)
    assert [q.id for q in qs] == [str(i) for i in range(30)] and qs[0].dataset == "mmlu"
    assert [q.golden_answers[0] for q in qs] == [r["golden_answers"][0] for r in src]
    assert [q.metadata["options"] for q in qs] == [r["metadata"]["options"] for r in src]


def test_parquet_corpus_and_text_only_rows_index(shared_data: Path, tmp_path: Path) -> None:
    rows = _rows(shared_data / "wiki_corpus.jsonl", 200)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "wiki.parquet")
    docs = list(iter_corpus(tmp_path / "wiki.parquet"))
    want = list(islice(iter_corpus(shared_data / "wiki_corpus.jsonl"), 200))
    assert docs == want
    # FlashRAG {id, text} rows (no title), and rows without an id
    text_only = [{"text": d.text} for d in want]
    pq.write_table(pa.Table.from_pylist(text_only), tmp_path / "plain.parquet")
    plain = list(iter_corpus(tmp_path / "plain.parquet"))
    assert [(d.id, d.title, d.text) for d in plain[:2]] == [("0", "", want[0].text), ("1", "", want[1].text)]
    build_index(tmp_path / "wiki.parquet", "bm25", tmp_path / "idx", show_progress=False)
    r = load_index(tmp_path / "idx")
    hit = r.search([want[7].title + " " + " ".join(want[7].text.split()[:12])], 1)[0][0]
    assert hit.id == want[7].id


def test_parquet_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.parquet"
    bad.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="broken.parquet: not a readable Parquet file"):
        load_questions(bad)
    pq.write_table(pa.Table.from_pylist([{"question": "Q", "golden_answers": ["x"]}, {"question": "Q2"}]),
                   tmp_path / "q.parquet")
    with pytest.raises(DataError, match=r"q.parquet:2: missing 'golden_answers'"):
        load_questions(tmp_path / "q.parquet")
    misnamed = tmp_path / "q.jsonl"
    misnamed.write_bytes((tmp_path / "q.parquet").read_bytes())
    with pytest.raises(DataError, match="a Parquet file"):
        load_questions(misnamed)


def test_seeded_sample(shared_data: Path) -> None:
    src = shared_data / "wiki_qa" / "popqa.dev.jsonl"
    a = load_questions(src, sample=25, seed=3)
    b = load_questions(src, sample=25, seed=3)
    c = load_questions(src, sample=25, seed=4)
    every = load_questions(src)
    assert [q.id for q in a] == [q.id for q in b] and len(a) == 25
    assert [q.id for q in a] != [q.id for q in c]
    pos = {q.id: i for i, q in enumerate(every)}
    assert [pos[q.id] for q in a] == sorted(pos[q.id] for q in a)  # kept in file order
    assert [q.id for q in a] != [q.id for q in every[:25]]
    assert len(load_questions(src, sample=10_000)) == len(every)
    with pytest.raises(InvalidArgument, match="not both"):
        load_questions(src, sample=5, limit=5)
