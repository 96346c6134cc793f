"""s3core.retrieval: BM25 and dense indexes on a tiny in-test corpus, manifests, load errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from s3core.data import corpus_sha256
from s3core.errors import DataError, InvalidArgument, NotFound
from s3core.retrieval import FORMAT_VERSION, IndexInfo, build_index, load_index
from s3core.retrieval.dense import default_prefixes

ROWS = [
    {"id": "p1", "contents": '"Paris"\nParis is the capital and most populous city of France, on the Seine.'},
    {"id": "p2", "contents": '"Jupiter"\nJupiter is the fifth planet from the Sun and the largest in the Solar System.'},
    {"id": "p3", "title": "Hamlet", "text": "Hamlet is a tragedy written by William Shakespeare around 1600."},
    {"id": "p4", "title": "Mount Everest", "text": "Mount Everest is Earth's highest mountain above sea level."},
    {"id": 5, "contents": '"Photosynthesis"\nPhotosynthesis lets plants turn sunlight, water and carbon dioxide into sugar.'},
    {"id": "p6", "title": "Danube", "text": "The Danube is the second-longest river in Europe, flowing to the Black Sea."},
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "tiny.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def bm25_dir(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("idx") / "tiny-bm25"
    build_index(corpus, "bm25", out, show_progress=False)
    return out


@pytest.fixture(scope="module")
def dense_dir(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("idx") / "tiny-dense"
    build_index(corpus, "dense", out, show_progress=False)
    return out


def _check_ranked(hits: list, k: int) -> None:
    assert len(hits) == k
    scores = [d.score for d in hits]
    assert scores == sorted(scores, reverse=True)


# --- BM25 ------------------------------------------------------------------------------------------

def test_bm25_manifest(bm25_dir: Path, corpus: Path) -> None:
    m = json.loads((bm25_dir / "manifest.json").read_text())
    assert m["format_version"] == FORMAT_VERSION
    assert m["name"] == "tiny-bm25"
    assert m["backend"] == "bm25"
    assert m["num_documents"] == len(ROWS)
    assert m["corpus_sha256"] == corpus_sha256(corpus)
    assert m["corpus_path"] == str(corpus.resolve())
    assert m["encoder"] == ""
    assert m["params"]["k1"] == 1.5 and m["params"]["b"] == 0.75
    assert m["params"]["tokenizer"]["stemmer"] == "english"
    assert m["created_at"] and m["s3core_version"]
    info = load_index(bm25_dir).info()
    assert isinstance(info, IndexInfo)
    assert (info.name, info.backend, info.num_documents) == ("tiny-bm25", "bm25", len(ROWS))


def test_bm25_search_ranks_relevant_first(bm25_dir: Path) -> None:
    r = load_index(bm25_dir)
    res = r.search(["What is the capital of France?", "largest planet in the solar system",
                    "who wrote the tragedy Hamlet", "plants converting sunlight"], 3)
    assert [hits[0].id for hits in res] == ["p1", "p2", "p3", "5"]
    for hits in res:  # only documents sharing a term: between 1 and k, all scored above 0
        assert 1 <= len(hits) <= 3
        _check_ranked(hits, len(hits))
        assert all(d.score > 0 for d in hits)
    top = res[0][0]
    assert top.title == "Paris" and top.text.startswith("Paris is the capital")


def test_bm25_stemming_and_stopwords(bm25_dir: Path) -> None:
    r = load_index(bm25_dir)
    assert r.search(["mountains"], 1)[0][0].id == "p4"  # stemmed: mountains -> mountain
    # only stopwords / unknown words: no document shares a term, so nothing comes back (no padding)
    for q in ("the of and", "zzzqqq"):
        assert r.search([q], 2) == [[]]
    # mixed in a batch: the others are served as usual
    res = r.search(["zzzqqq", "mountains"], 2)
    assert res[0] == [] and [d.id for d in res[1]] == ["p4"]


def test_bm25_does_not_pad_with_unmatched_documents(bm25_dir: Path) -> None:
    """Fewer matching documents than k: only the matching ones, each with a positive score."""
    r = load_index(bm25_dir)
    hits = r.search(["Shakespeare tragedy"], 5)[0]
    assert [d.id for d in hits] == ["p3"] and hits[0].score > 0
    # two terms, each in one document: exactly those two
    hits = r.search(["Jupiter Danube"], 6)[0]
    assert sorted(d.id for d in hits) == ["p2", "p6"] and all(d.score > 0 for d in hits)


def test_bm25_k_clamp_empty_batch_and_bad_k(bm25_dir: Path) -> None:
    r = load_index(bm25_dir)
    hits = r.search(["river Europe the sun"], 100)[0]  # k clamped to the corpus; only matches come back
    assert [d.id for d in hits][:1] == ["p6"] and {d.id for d in hits} == {"p6", "p2"}
    assert len(r.search(["is"], 100)[0]) == 0  # a stopword matches nothing
    assert r.search([], 3) == []
    for bad in (0, -1):
        with pytest.raises(InvalidArgument, match="k must be >= 1"):
            r.search(["x"], bad)


def test_bm25_get_by_id(bm25_dir: Path) -> None:
    r = load_index(bm25_dir)
    docs = r.get(["p3", "5", "p1"])
    assert [d.id for d in docs] == ["p3", "5", "p1"]
    assert docs[1].title == "Photosynthesis" and docs[0].text.startswith("Hamlet is a tragedy")
    assert all(d.score == 0 for d in docs)
    with pytest.raises(NotFound, match="'nope'"):
        r.get(["p1", "nope"])


def test_bm25_concurrent_search_is_consistent(bm25_dir: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    r = load_index(bm25_dir, threads=2)
    want = r.search(["capital of France", "Black Sea river"], 2)
    with ThreadPoolExecutor(4) as ex:
        got = list(ex.map(lambda _: r.search(["capital of France", "Black Sea river"], 2), range(16)))
    assert all(g == want for g in got)


def test_build_limit_and_name(corpus: Path, tmp_path: Path) -> None:
    m = build_index(corpus, "bm25", tmp_path / "lim", show_progress=False, name="first3", limit=3)
    assert m["num_documents"] == 3 and m["name"] == "first3" and m["params"]["limit"] == 3
    r = load_index(tmp_path / "lim")
    assert r.info().name == "first3"
    hits = r.search(["Paris Jupiter Hamlet Everest photosynthesis Danube"], 10)[0]  # one term per row
    assert sorted(d.id for d in hits) == ["p1", "p2", "p3"]


# --- dense -----------------------------------------------------------------------------------------

def test_dense_build_and_search(dense_dir: Path, corpus: Path) -> None:
    m = json.loads((dense_dir / "manifest.json").read_text())
    assert m["backend"] == "dense" and m["encoder"] == "embedded:all-minilm-l6-v2"
    assert m["num_documents"] == len(ROWS) and m["corpus_sha256"] == corpus_sha256(corpus)
    assert m["params"]["dim"] == 384 and m["params"]["query_prefix"] == "" and m["params"]["passage_prefix"] == ""
    r = load_index(dense_dir)
    res = r.search(["Which city is the French capital?", "the biggest planet orbiting the sun",
                    "the tallest mountain on Earth"], 3)
    assert [hits[0].id for hits in res] == ["p1", "p2", "p4"]
    for hits in res:
        _check_ranked(hits, 3)
        assert -1.0 <= hits[-1].score <= hits[0].score <= 1.0 + 1e-5
    assert len(r.search(["river"], 50)[0]) == len(ROWS)
    assert [d.id for d in r.get(["p6"])] == ["p6"]


def test_e5_prefixes() -> None:
    assert default_prefixes("intfloat/e5-base-v2") == ("query: ", "passage: ")
    assert default_prefixes("embedded:all-minilm-l6-v2") == ("", "")


def test_unknown_embedded_encoder(corpus: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="unknown embedded encoder"):
        build_index(corpus, "dense", tmp_path / "x", encoder="embedded:nope", show_progress=False)
    assert not (tmp_path / "x").exists()


# --- errors and atomicity --------------------------------------------------------------------------

def test_load_missing_dir_and_manifest(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="does not exist"):
        load_index(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotFound, match="no manifest.json"):
        load_index(tmp_path / "empty")


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(src, dst)
    return dst


def test_load_corrupt_manifest(bm25_dir: Path, tmp_path: Path) -> None:
    d = _copy(bm25_dir, tmp_path)
    (d / "manifest.json").write_text("{not json")
    with pytest.raises(InvalidArgument, match="not valid JSON"):
        load_index(d)


def test_load_wrong_format_version(bm25_dir: Path, tmp_path: Path) -> None:
    d = _copy(bm25_dir, tmp_path)
    m = json.loads((d / "manifest.json").read_text())
    m["format_version"] = 999
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(InvalidArgument, match="format_version 999"):
        load_index(d)


@pytest.mark.parametrize("victim", ["bm25/vocab.index.json", "docs.jsonl", "docs.offsets.npy"])
def test_load_missing_files(bm25_dir: Path, tmp_path: Path, victim: str) -> None:
    d = _copy(bm25_dir, tmp_path)
    (d / victim).unlink()
    with pytest.raises(InvalidArgument, match=f"missing {victim}"):
        load_index(d)


def test_load_count_mismatch(bm25_dir: Path, tmp_path: Path) -> None:
    d = _copy(bm25_dir, tmp_path)
    m = json.loads((d / "manifest.json").read_text())
    m["num_documents"] = 7
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(InvalidArgument, match="manifest says 7 documents"):
        load_index(d)


def test_bad_corpus_line_leaves_no_partial_dir(corpus: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    lines = corpus.read_text().splitlines()
    bad.write_text("\n".join([*lines[:2], "{oops", *lines[2:]]) + "\n")
    out = tmp_path / "idx" / "bad-index"
    with pytest.raises(DataError, match=r"bad\.jsonl:3"):
        build_index(bad, "bm25", out, show_progress=False)
    assert not out.exists()
    assert list((tmp_path / "idx").iterdir()) == []  # no temp dir left behind


def test_failed_rebuild_keeps_existing_index(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "keep"
    build_index(corpus, "bm25", out, show_progress=False)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "contents": "ok"}\n{"id": "y"}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2"):
        build_index(bad, "bm25", out, show_progress=False)
    assert load_index(out).info().num_documents == len(ROWS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "keep"]


def test_build_rejects_bad_input(corpus: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="unknown index backend"):
        build_index(corpus, "splade", tmp_path / "a", show_progress=False)
    with pytest.raises(DataError, match="no such file"):
        build_index(tmp_path / "missing.jsonl", "bm25", tmp_path / "b", show_progress=False)
    dup = tmp_path / "dup.jsonl"
    dup.write_text('{"id": "a", "contents": "one"}\n{"id": "a", "contents": "two"}\n')
    with pytest.raises(InvalidArgument, match="duplicate document id 'a'"):
        build_index(dup, "bm25", tmp_path / "c", show_progress=False)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(InvalidArgument, match="no documents"):
        build_index(empty, "bm25", tmp_path / "d", show_progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dup.jsonl", "empty.jsonl"]
