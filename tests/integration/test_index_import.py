"""`s3 index import` (issue 15 §5): a prebuilt faiss index and its corpus become a dense index
without re-embedding; it answers exactly as the index the vectors came from.  Real faiss, the
embedded MiniLM encoder, the shared wiki passages."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest

from s3core.errors import DataError, InvalidArgument
from s3core.retrieval import load_index
from s3core.retrieval.importing import describe_faiss_index, import_faiss_index

QUERIES = ["Jeff Porcaro American drummer of Toto", "Carsten Olsen plant ecologist", "a band from Los Angeles"]


@pytest.fixture(scope="module")
def prebuilt(retriever_indexes: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The 300-passage dense index's faiss file, handed over as if downloaded, with its corpus."""
    src = retriever_indexes["dense"]
    root = tmp_path_factory.mktemp("prebuilt")
    shutil.copyfile(src / "faiss.index", root / "e5_Flat.index")
    shutil.copyfile(src.parent / "wiki300.jsonl", root / "wiki-18.jsonl")
    return {"faiss": root / "e5_Flat.index", "corpus": root / "wiki-18.jsonl", "built": src}


def test_imported_index_answers_like_the_built_one(prebuilt: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "imported"
    r = subprocess.run([sys.executable, "-m", "s3cli", "index", "import", "--faiss", str(prebuilt["faiss"]),
                        "--corpus", str(prebuilt["corpus"]), "--encoder", "embedded:all-minilm-l6-v2",
                        "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    m = json.loads((out / "manifest.json").read_text())
    assert (m["backend"], m["num_documents"], m["params"]["index_type"], m["params"]["dim"]) == ("dense", 300, "flat", 384)
    assert m["params"]["imported"]["how"] in ("hardlink", "copy")
    assert m["params"]["imported"]["encoder_dim_checked"] is True  # the embedded encoder's files are here
    a, b = load_index(out), load_index(prebuilt["built"])
    for got, want in zip(a.search(QUERIES, 5), b.search(QUERIES, 5)):
        assert [d.id for d in got] == [d.id for d in want]
        assert [d.score for d in got] == pytest.approx([d.score for d in want], rel=1e-6)
        assert [(d.title, d.text) for d in got] == [(d.title, d.text) for d in want]
    assert describe_faiss_index(prebuilt["faiss"])["ntotal"] == 300  # the source is untouched


def test_import_refuses_what_does_not_belong_together(prebuilt: dict[str, Path], tmp_path: Path) -> None:
    short = tmp_path / "short.jsonl"
    short.write_text("".join(prebuilt["corpus"].read_text().splitlines(keepends=True)[:299]))
    with pytest.raises(InvalidArgument, match="300 vectors but .* has 299 passages"):
        import_faiss_index(prebuilt["faiss"], short, tmp_path / "a", "embedded:all-minilm-l6-v2")
    assert not (tmp_path / "a").exists()
    l2 = faiss.IndexFlatL2(4)
    l2.add(np.zeros((2, 4), dtype=np.float32))
    faiss.write_index(l2, str(tmp_path / "l2.index"))
    with pytest.raises(InvalidArgument, match="metric l2"):
        import_faiss_index(tmp_path / "l2.index", prebuilt["corpus"], tmp_path / "b", "embedded:all-minilm-l6-v2")
    (tmp_path / "junk.index").write_bytes(b"not an index")
    with pytest.raises(DataError, match="not a faiss index"):
        import_faiss_index(tmp_path / "junk.index", prebuilt["corpus"], tmp_path / "c", "embedded:all-minilm-l6-v2")
    # vectors of another dimension than the encoder makes: refused before anything is written
    ip8 = faiss.IndexFlatIP(8)
    ip8.add(np.zeros((300, 8), dtype=np.float32))
    faiss.write_index(ip8, str(tmp_path / "ip8.index"))
    with pytest.raises(InvalidArgument, match="dimension 8 but encoder 'embedded:all-minilm-l6-v2' makes 384-dim"):
        import_faiss_index(tmp_path / "ip8.index", prebuilt["corpus"], tmp_path / "e", "embedded:all-minilm-l6-v2")
    assert not (tmp_path / "e").exists()
    # an encoder whose files are not on this machine: imported, the manifest says the dimension is unchecked
    m = import_faiss_index(tmp_path / "ip8.index", prebuilt["corpus"], tmp_path / "f", "someone/not-downloaded-e5")
    assert m["params"]["imported"]["encoder_dim_checked"] is False and m["params"]["dim"] == 8
    with pytest.raises(InvalidArgument, match="unknown import parameter"):
        import_faiss_index(prebuilt["faiss"], prebuilt["corpus"], tmp_path / "d", "x", params={"nlist": 4})
