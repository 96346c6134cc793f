"""Fixtures for the retriever-service integration tests: real indexes, a real server subprocess (started by
:mod:`_services`, the one launcher)."""

from __future__ import annotations

from itertools import islice
from pathlib import Path
from typing import Any

import pytest
from _services import Service, run_service  # noqa: F401  (Service: for the tests' annotations)

BM25_DOCS = 3000
DENSE_DOCS = 300


def _head(src: Path, dst: Path, n: int) -> Path:
    with src.open("rb") as fin, dst.open("wb") as fout:
        fout.writelines(islice(fin, n))
    return dst


@pytest.fixture(scope="session")
def service_runner():  # noqa: ANN201 - the run_service context manager
    """``with service_runner("s3_retriever", [...args], workdir) as svc:`` -- a started service."""
    return run_service


@pytest.fixture(scope="session")
def retriever_indexes(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A BM25 index of the first 3000 wiki passages and a dense one (embedded MiniLM) of the first 300."""
    from s3core.retrieval import build_index

    root = tmp_path_factory.mktemp("retriever-indexes")
    corpus = shared_data / "wiki_corpus.jsonl"
    bm25_corpus = _head(corpus, root / "wiki3000.jsonl", BM25_DOCS)
    dense_corpus = _head(corpus, root / "wiki300.jsonl", DENSE_DOCS)
    build_index(bm25_corpus, "bm25", root / "wiki-bm25", show_progress=False)
    # short passages keep the CPU embedding of 300 docs to a few seconds
    build_index(dense_corpus, "dense", root / "wiki-dense", show_progress=False,
                params={"max_seq_length": 64, "batch_size": 32})
    return {"bm25": root / "wiki-bm25", "dense": root / "wiki-dense", "bm25_docs": BM25_DOCS,
            "dense_docs": DENSE_DOCS}
