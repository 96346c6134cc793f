"""Dense index builds at scale: index types (recall vs exact), the resumable chunked build (a real
SIGKILL mid-build, then a rerun), sharded output and its manifest contract, load-time checks, CLI.

The ANN tests use clustered numpy vectors; the build tests use the real embedded encoder on small
synthetic corpora (short passages, ``max_seq_length`` 32) so that the whole file stays fast.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest

from s3core.data import corpus_sha256
from s3core.errors import InvalidArgument
from s3core.retrieval import ann
from s3core.retrieval.build import work_dir_for
from s3core.retrieval.index import build_index, check_shard_set, load_index, read_manifest, read_shard_set

ENC_PARAMS = {"max_seq_length": 32, "batch_size": 64}
TOPICS = ["river", "mountain", "violin", "comet", "harbor", "glacier", "volcano", "castle", "orchid", "railway",
          "desert", "falcon"]


# --- helpers ---------------------------------------------------------------------------------------

def clustered(n: int, d: int, k: int, seed: int, spread: float = 0.6) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((k, d)).astype(np.float32)
    x = centers[rng.integers(k, size=n)] + spread * rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def exact_top(x: np.ndarray, q: np.ndarray, k: int = 10) -> np.ndarray:
    return np.argsort(-(q @ x.T), axis=1)[:, :k]


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found.tolist(), truth.tolist())]))


def write_corpus(path: Path, n: int, seed: int = 0, start: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = [f"{a}{b}" for a in ("ka", "lo", "mi", "ne", "ru", "sa", "to", "vi") for b in ("bar", "den", "fis", "gol")]
    ids = []
    with path.open("w", encoding="utf-8") as fh:
        for i in range(start, start + n):
            t = TOPICS[i % len(TOPICS)]
            did = f"doc{i}"
            ids.append(did)
            fh.write(json.dumps({"id": did, "title": f"{t.title()} {i}",
                                 "text": f"The {t} " + " ".join(rng.choice(words) for _ in range(12))}) + "\n")
    return ids


def build(corpus: Path, out: Path, **kw: Any) -> dict[str, Any]:
    params = {**ENC_PARAMS, **kw.pop("params", {})}
    return build_index(corpus, "dense", out, show_progress=False, params=params, **kw)


def faiss_vectors(index_dir: Path) -> np.ndarray:
    index = faiss.read_index(str(index_dir / "faiss.index"))
    return index.reconstruct_n(0, index.ntotal)


def ids_of(index_dir: Path) -> list[str]:
    return json.loads((index_dir / "docs.ids.json").read_text())


def _rewrite(path: Path, **changes: Any) -> None:
    m = json.loads(path.read_text())
    for k, v in changes.items():
        if k.startswith("shard_"):
            m["shard"][k[6:]] = v
        elif k.startswith("params_"):
            m["params"][k[7:]] = v
        else:
            m[k] = v
    path.write_text(json.dumps(m))


# --- index types (numpy vectors) -------------------------------------------------------------------

@pytest.fixture(scope="module")
def vectors() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = clustered(4000, 64, 40, seed=1)
    rng = np.random.default_rng(2)  # queries: perturbed corpus points, so they follow the same mixture
    q = x[rng.choice(len(x), 200, replace=False)] + 0.3 * rng.standard_normal((200, 64)).astype(np.float32)
    q = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
    return x, q, exact_top(x, q)


@pytest.mark.parametrize(("index_type", "extra", "faiss_cls", "min_recall"), [
    ("flat", {}, "IndexFlatIP", 1.0),
    ("flat-fp16", {}, "IndexScalarQuantizer", 0.99),
    ("ivf-flat", {"nlist": 32, "nprobe": 8}, "IndexIVFFlat", 0.9),
    ("ivf-fp16", {"nlist": 32, "nprobe": 8}, "IndexIVFScalarQuantizer", 0.9),
    ("ivf-pq", {"nlist": 32, "nprobe": 8, "pq_m": 16, "train_size": 2000}, "IndexIVFPQ", 0.6),
    ("hnsw", {"hnsw_m": 16, "ef_search": 64}, "IndexHNSWFlat", 0.88),
    ("hnsw-fp16", {"hnsw_m": 16, "ef_search": 64}, "IndexHNSWSQ", 0.88),
    ("hnsw-sq8", {"hnsw_m": 16, "ef_search": 64}, "IndexHNSWSQ", 0.85),
])
def test_index_types_recall_vs_flat(vectors: tuple, index_type: str, extra: dict, faiss_cls: str,
                                    min_recall: float) -> None:
    x, q, truth = vectors
    p = ann.resolve_ann_params({"index_type": index_type, **extra}, x.shape[1], len(x))
    index = ann.new_index(p, x.shape[1])
    assert type(faiss.downcast_index(index)).__name__ == faiss_cls
    assert index.metric_type == faiss.METRIC_INNER_PRODUCT
    assert index.is_trained == (not ann.needs_training(index_type))
    ann.train(index, x[:p.get("train_size", len(x))])
    for s in range(0, len(x), 1000):  # added chunk by chunk, as the build does
        index.add(x[s:s + 1000])
    scores, found = index.search(q, 10)
    r = recall_at(found, truth)
    assert r >= min_recall, f"{index_type}: recall@10 {r:.3f} < {min_recall}"
    if index_type.startswith("ivf"):
        assert faiss.extract_index_ivf(index).nprobe == extra["nprobe"]
    if index_type.startswith("hnsw"):
        assert faiss.downcast_index(index).hnsw.efSearch == extra["ef_search"]
    if index_type == "flat":
        assert np.allclose(scores, np.sort(q @ x.T, axis=1)[:, ::-1][:, :10], atol=1e-5)


def test_ivf_search_params_matter(vectors: tuple) -> None:
    """nprobe=1 must recall less than nprobe=nlist (which is exhaustive): the knob is live."""
    x, q, truth = vectors
    p = ann.resolve_ann_params({"index_type": "ivf-flat", "nlist": 32, "nprobe": 1}, 64, len(x))
    index = ann.new_index(p, 64)
    ann.train(index, x)
    index.add(x)
    low = recall_at(index.search(q, 10)[1], truth)
    ann.apply_search_params(index, {"nprobe": 32})
    full = recall_at(index.search(q, 10)[1], truth)
    assert full == pytest.approx(1.0) and low < 0.9


def test_ann_param_errors() -> None:
    with pytest.raises(InvalidArgument, match=r"pq_m=100 does not divide the vector dimension 768; pick one of .*96"):
        ann.resolve_ann_params({"index_type": "ivf-pq", "pq_m": 100}, 768, 100_000)
    with pytest.raises(InvalidArgument, match=r"nlist=4096 is larger than the training sample of 1000 vectors"):
        ann.resolve_ann_params({"index_type": "ivf-flat", "nlist": 4096}, 64, 1000)
    with pytest.raises(InvalidArgument, match=r"nprobe=64 is larger than nlist=32"):
        ann.check_ann_params({"index_type": "ivf-flat", "nlist": 32, "nprobe": 64})
    with pytest.raises(InvalidArgument, match=r"unknown index type 'annoy' \(known: flat, flat-fp16"):
        ann.check_ann_params({"index_type": "annoy"})
    with pytest.raises(InvalidArgument, match=r"fp16 does not apply to index type ivf-pq"):
        ann.check_ann_params({"index_type": "ivf-pq", "fp16": True})
    with pytest.raises(InvalidArgument, match=r"nlist applies to index type\(s\) ivf-flat, ivf-fp16, ivf-pq, not hnsw"):
        ann.check_ann_params({"index_type": "hnsw", "nlist": 8})
    with pytest.raises(InvalidArgument, match=r"ivf-pq with pq_nbits=8 needs at least 256 training vectors"):
        ann.resolve_ann_params({"index_type": "ivf-pq", "nlist": 2, "pq_m": 8}, 64, 100)
    with pytest.raises(InvalidArgument, match=r"hnsw_m must be >= 1, got 0"):
        ann.check_ann_params({"index_type": "hnsw", "hnsw_m": 0})
    assert ann.canonical_type("flat", fp16=True) == "flat-fp16"
    assert ann.canonical_type("ivf-flat", fp16=True) == "ivf-fp16"
    p = ann.resolve_ann_params({"index_type": "ivf-pq"}, 768, 21_000_000)
    assert p["factory"] == "IVF16384,PQ96x8np" and p["nprobe"] == 256 and p["train_size"] == 16384 * 64


# --- the resumable build: SIGKILL mid-build, rerun ---------------------------------------------------

N_DOCS, CHUNK = 600, 50

KILL_SCRIPT = textwrap.dedent("""
    import logging, sys
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    from s3core.retrieval.index import build_index
    build_index(sys.argv[1], "dense", sys.argv[2], show_progress=False, chunk_size=int(sys.argv[3]),
                params={"max_seq_length": 32, "batch_size": 64})
""")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    return path, write_corpus(path, N_DOCS)


@pytest.fixture(scope="module")
def killed(corpus: tuple[Path, list[str]], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A build SIGKILLed after at least two chunk checkpoints; its work dir as the kill left it."""
    path, _ = corpus
    root = tmp_path_factory.mktemp("killed")
    out = root / "idx"
    chunks = work_dir_for(out) / "chunks"
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(path), str(out), str(CHUNK)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if chunks.is_dir() and len(list(chunks.glob("chunk-*"))) >= 2:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.01)
        rc = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = proc.stdout.read().decode() if proc.stdout else ""
    assert rc == -signal.SIGKILL, f"the build was not killed mid-way (rc={rc}):\n{log[-2000:]}"
    done = sorted(int(p.name.split("-")[1]) for p in chunks.glob("chunk-*"))
    assert 2 <= len(done) < N_DOCS // CHUNK, done
    assert not out.exists()
    # a copy of the interrupted work dir, for the corpus-change test
    spare, spare2 = root / "other", root / "other2"
    shutil.copytree(work_dir_for(out), work_dir_for(spare))
    shutil.copytree(work_dir_for(out), work_dir_for(spare2))
    return {"out": out, "done": done, "spare": spare, "spare2": spare2, "root": root}


def test_kill_and_resume_equals_uninterrupted(corpus: tuple[Path, list[str]], killed: dict[str, Any],
                                              tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path, ids = corpus
    out = killed["out"]
    with caplog.at_level(logging.INFO, logger="s3core.retrieval.build"):
        m = build(path, out, chunk_size=CHUNK)
    embedded = sorted(int(x) for x in re.findall(r"embedded chunk (\d+) ", caplog.text))
    n_chunks = N_DOCS // CHUNK
    # the finished chunks were not embedded again; exactly the others were
    assert embedded == sorted(set(range(n_chunks)) - set(killed["done"]))
    assert m["build"]["chunks_reused"] == len(killed["done"])
    assert m["build"]["chunks_embedded"] == n_chunks - len(killed["done"])
    assert not work_dir_for(out).exists()
    assert m["num_documents"] == N_DOCS and "shard" not in m

    ref = tmp_path / "ref"
    m_ref = build(path, ref, chunk_size=CHUNK)
    assert m_ref["build"]["chunks_reused"] == 0
    assert m["params"] == m_ref["params"] and m["corpus_sha256"] == m_ref["corpus_sha256"]
    assert ids_of(out) == ids_of(ref) == ids
    assert (out / "docs.jsonl").read_bytes() == (ref / "docs.jsonl").read_bytes()
    a, b = faiss_vectors(out), faiss_vectors(ref)
    assert a.shape == (N_DOCS, 384) and np.allclose(a, b, atol=1e-5)
    ra, rb = load_index(out), load_index(ref)
    queries = [f"the {t}" for t in TOPICS]
    assert [[d.id for d in hits] for hits in ra.search(queries, 10)] == \
           [[d.id for d in hits] for hits in rb.search(queries, 10)]


def test_corpus_change_is_refused_then_restart(corpus: tuple[Path, list[str]], killed: dict[str, Any]) -> None:
    path, _ = corpus
    changed = killed["root"] / "changed.jsonl"
    text = path.read_text().splitlines()
    text[7] = text[7].replace("The ", "A ", 1)
    changed.write_text("\n".join(text) + "\n")
    out = killed["spare"]
    with pytest.raises(InvalidArgument, match=r"holds an interrupted build of a different corpus.*corpus_sha256.*"
                                              r"delete .*other\.partial or pass --restart"):
        build(changed, out, chunk_size=CHUNK)
    assert work_dir_for(out).is_dir() and not out.exists()  # nothing was thrown away
    with pytest.raises(InvalidArgument, match=rf"chunk_size: {CHUNK} then, 300 now"):
        build(path, out, chunk_size=300)
    m = build(changed, out, chunk_size=CHUNK, restart=True)
    assert m["build"]["chunks_reused"] == 0 and m["corpus_sha256"] == corpus_sha256(changed)
    assert not work_dir_for(out).exists()


def test_changed_index_params_reuse_the_embedded_chunks(corpus: tuple[Path, list[str]], killed: dict[str, Any],
                                                        caplog: pytest.LogCaptureFixture) -> None:
    path, ids = corpus
    out = killed["spare2"]
    with caplog.at_level(logging.INFO, logger="s3core.retrieval.build"):
        m = build(path, out, chunk_size=CHUNK, params={"index_type": "ivf-flat", "nlist": 4, "nprobe": 4})
    assert m["build"]["chunks_reused"] == len(killed["done"])
    assert len(re.findall(r"embedded chunk \d+ ", caplog.text)) == N_DOCS // CHUNK - len(killed["done"])
    assert m["params"]["index_type"] == "ivf-flat" and ids_of(out) == ids
    index = faiss.read_index(str(out / "faiss.index"))
    assert type(index).__name__ == "IndexIVFFlat" and index.ntotal == N_DOCS


# --- sharded output ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sharded(corpus: tuple[Path, list[str]], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    path, _ = corpus
    out = tmp_path_factory.mktemp("sharded") / "wiki"
    # chunk 150: the shard boundaries (200, 400) fall inside chunks
    m = build(path, out, chunk_size=150, shards=3, params={"index_type": "ivf-flat", "nlist": 8, "nprobe": 3})
    return out, m


def test_sharded_layout_and_contract(sharded: tuple[Path, dict], corpus: tuple[Path, list[str]]) -> None:
    out, listing = sharded
    path, ids = corpus
    names = [f"shard-0000{i}-of-00003" for i in range(3)]
    assert sorted(p.name for p in out.iterdir()) == [*names, "shards.json"]
    assert not work_dir_for(out).exists()
    assert json.loads((out / "shards.json").read_text()) == listing
    assert [s["dir"] for s in listing["shards"]] == names and listing["count"] == 3
    listing2, manifests = read_shard_set(out)
    sha = corpus_sha256(path)
    all_ids: list[str] = []
    prev_end = 0
    for i, (name, m) in enumerate(zip(names, manifests)):
        assert m == read_manifest(out / name)
        s = m["shard"]
        assert set(s) == {"index", "count", "row_start", "row_end", "set_id"}
        assert (s["index"], s["count"], s["row_start"]) == (i, 3, prev_end)
        assert s["set_id"] == listing["set_id"] and re.fullmatch(r"[0-9a-f]{64}", s["set_id"])
        assert m["num_documents"] == s["row_end"] - s["row_start"] > 0
        assert m["corpus_sha256"] == sha
        assert m["params"]["dim"] == 384 and m["params"]["index_type"] == "ivf-flat"
        shard_ids = ids_of(out / name)
        assert len(shard_ids) == m["num_documents"]
        # global row = row_start + local row
        assert all(ids[s["row_start"] + j] == d for j, d in enumerate(shard_ids))
        all_ids += shard_ids
        prev_end = s["row_end"]
    assert all_ids == ids and prev_end == N_DOCS  # the union of the shards is the corpus, in order
    check_shard_set(manifests)
    check_shard_set(list(reversed(manifests)))  # order does not matter
    r = load_index(out / names[1])
    assert r.num_docs == manifests[1]["num_documents"]
    assert faiss.extract_index_ivf(r.index).nprobe == 3  # the search parameter from the manifest
    hits = r.search(["the castle"], 5)[0]
    assert len(hits) == 5 and all(d.id in set(ids_of(out / names[1])) for d in hits)
    with pytest.raises(InvalidArgument, match=r"is a sharded index set \(shards.json\)"):
        load_index(out)


def test_shard_set_errors(sharded: tuple[Path, dict]) -> None:
    out, _ = sharded
    _, ms = read_shard_set(out)

    def bad(manifests: list[dict], pattern: str) -> None:
        with pytest.raises(InvalidArgument, match=pattern):
            check_shard_set(manifests)

    bad([ms[0], ms[2]], r"^shard 1 of 3 is missing$")
    bad([ms[0]], r"^shards 1, 2 of 3 are missing$")
    bad([ms[0], ms[1], ms[1], ms[2]], r"shard 1 of 3 appears more than once")
    other = {**ms[2], "corpus_sha256": "f" * 64}
    bad([ms[0], ms[1], other], rf"shard 2 has corpus sha ffffffffffff… but shard 0 has {ms[0]['corpus_sha256'][:12]}…")
    bad([ms[0], ms[1], {**ms[2], "shard": {**ms[2]["shard"], "set_id": "0" * 64}}], r"shard 2 has set_id 000000000000…")
    bad([ms[0], {**ms[1], "params": {**ms[1]["params"], "dim": 768}}, ms[2]], r"shard 1 has dim 768 but shard 0 has 384")
    gap = {**ms[2], "num_documents": ms[2]["num_documents"] - 1,
           "shard": {**ms[2]["shard"], "row_start": ms[2]["shard"]["row_start"] + 1}}
    bad([ms[0], ms[1], gap], rf"shard 2 of 3 starts at row {gap['shard']['row_start']} but shard 1 ends at row "
                             rf"{ms[1]['shard']['row_end']}: the row ranges are not contiguous")
    bad([ms[0], {**ms[1], "shard": {**ms[1]["shard"], "index": 3}}, ms[2]], r"shard index 3 is out of range")
    bad([ms[0], {**ms[1], "num_documents": 5}, ms[2]], r"shard rows \[200, 400\) hold 200 documents but num_documents is 5")
    bad([{k: v for k, v in ms[0].items() if k != "shard"}, ms[1]], r"manifest #1 .* is not a shard")
    bad([], r"no shard manifests")


def _copy_set(out: Path, dst: Path) -> Path:
    shutil.copytree(out, dst)
    return dst


def test_removed_or_corrupt_shard_is_named(sharded: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = sharded
    d = _copy_set(out, tmp_path / "a")
    shutil.rmtree(d / "shard-00001-of-00003")
    with pytest.raises(InvalidArgument, match=r"shard-00001-of-00003: shard 1 of 3 is missing"):
        read_shard_set(d)
    d = _copy_set(out, tmp_path / "b")
    mpath = d / "shard-00002-of-00003" / "manifest.json"
    _rewrite(mpath, shard_index=5)
    with pytest.raises(InvalidArgument, match=rf"{re.escape(str(mpath))}: shard index 5 is out of range"):
        read_manifest(mpath.parent)
    _rewrite(mpath, shard_index=2, shard_row_end=10)
    with pytest.raises(InvalidArgument, match=rf"{re.escape(str(mpath))}: shard row range \[400, 10\) is not a valid"):
        load_index(mpath.parent)
    _rewrite(mpath, shard_row_end=N_DOCS, corpus_sha256="0" * 64)
    with pytest.raises(InvalidArgument, match=r"shard 2 has corpus sha 000000000000… but shard 0 has"):
        read_shard_set(d)


def test_wrong_dimension_or_count_refused_at_load(sharded: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = sharded
    d = _copy_set(out, tmp_path / "set") / "shard-00000-of-00003"
    fpath = d / "faiss.index"
    n = read_manifest(d)["num_documents"]
    # an index of another dimension (as if built with another encoder) under this manifest
    faiss.write_index(faiss.IndexFlatIP(128), str(fpath))
    other = faiss.read_index(str(fpath))
    other.add(clustered(n, 128, 4, seed=3))
    faiss.write_index(other, str(fpath))
    with pytest.raises(InvalidArgument, match=rf"{re.escape(str(fpath))} has vectors of dimension 128 but manifest.json "
                                              r"says dim=384"):
        load_index(d)
    # manifest and index agree with each other but not with the encoder
    _rewrite(d / "manifest.json", params_dim=128)
    with pytest.raises(InvalidArgument, match=r"dimension 128 but encoder 'embedded:all-minilm-l6-v2' gives 384"):
        load_index(d)
    # right dimension, wrong number of vectors
    short = faiss.IndexFlatIP(384)
    short.add(clustered(n - 3, 384, 4, seed=3))
    faiss.write_index(short, str(fpath))
    _rewrite(d / "manifest.json", params_dim=384)
    with pytest.raises(InvalidArgument, match=rf"{re.escape(str(fpath))} holds {n - 3} vectors but manifest.json says "
                                              rf"num_documents={n}"):
        load_index(d)


# --- build-time refusals ------------------------------------------------------------------------------

def test_duplicate_id_across_chunks(tmp_path: Path) -> None:
    path = tmp_path / "dup.jsonl"
    write_corpus(path, 260)
    lines = path.read_text().splitlines()
    lines[230] = lines[230].replace('"doc230"', '"doc7"')
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "idx"
    with pytest.raises(InvalidArgument, match=r"duplicate document id 'doc7' \(documents #8 and #231\)"):
        build(path, out, chunk_size=100)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dup.jsonl"]  # no index, no work dir


def test_bad_index_params_fail_before_embedding(corpus: tuple[Path, list[str]], tmp_path: Path) -> None:
    path, _ = corpus
    with pytest.raises(InvalidArgument, match=r"pq_m=100 does not divide the vector dimension 384"):
        build(path, tmp_path / "a", params={"index_type": "ivf-pq", "pq_m": 100})
    with pytest.raises(InvalidArgument, match=rf"nlist=5000 is larger than the training sample of {N_DOCS} vectors"):
        build(path, tmp_path / "b", params={"index_type": "ivf-flat", "nlist": 5000})
    with pytest.raises(InvalidArgument, match=r"unknown dense parameter\(s\): nlsit"):
        build(path, tmp_path / "c", params={"nlsit": 5})
    with pytest.raises(InvalidArgument, match=r"bm25 indexes cannot be sharded: each shard would compute its own IDF"):
        build_index(path, "bm25", tmp_path / "d", show_progress=False, shards=2)
    assert list(tmp_path.iterdir()) == []


def test_concurrent_build_of_the_same_out_is_refused(corpus: tuple[Path, list[str]], tmp_path: Path) -> None:
    from s3core.retrieval.build import _locked

    path, _ = corpus
    out = tmp_path / "idx"
    with _locked(work_dir_for(out)):  # as a running build holds it
        with pytest.raises(InvalidArgument, match=rf"another build is using .*idx\.partial \(pid {os.getpid()}\)"):
            build(path, out)
    assert not out.exists()


def test_cli_index_build_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from s3cli.main import build_parser, main

    path = tmp_path / "c.jsonl"
    write_corpus(path, 240)
    out = tmp_path / "hnsw"
    rc = main(["index", "build", "--corpus", str(path), "--backend", "dense", "--out", str(out), "--quiet",
               "--index-type", "hnsw", "--hnsw-m", "8", "--ef-search", "40", "--chunk-size", "100",
               "--params", '{"max_seq_length": 32}'])
    assert rc == 0, capsys.readouterr().err
    assert "built hnsw dense index of 240 documents" in capsys.readouterr().out
    m = read_manifest(out)
    assert (m["params"]["index_type"], m["params"]["hnsw_m"], m["params"]["ef_search"]) == ("hnsw", 8, 40)
    assert m["params"]["max_seq_length"] == 32 and m["build"]["chunks"] == 3
    r = load_index(out)
    assert faiss.downcast_index(r.index).hnsw.efSearch == 40
    assert rc == 0
    rc = main(["index", "build", "--corpus", str(path), "--backend", "bm25", "--out", str(tmp_path / "b"),
               "--shards", "2"])
    assert rc == 2 and "bm25 indexes cannot be sharded" in capsys.readouterr().err
    rc = main(["index", "build", "--corpus", str(path), "--backend", "bm25", "--out", str(tmp_path / "b"),
               "--nlist", "8"])
    assert rc == 2 and "--nlist applies to --backend dense only" in capsys.readouterr().err
    helptext = build_parser()._subparsers._group_actions[0].choices["index"]._subparsers._group_actions[0] \
        .choices["build"].format_help()
    for flag in ("--index-type", "--nlist", "--pq-m", "--hnsw-m", "--ef-search", "--nprobe", "--fp16", "--shards",
                 "--chunk-size", "--restart"):
        assert flag in helptext
    assert not (tmp_path / "b").exists() and not os.path.exists(str(out) + ".partial")


def test_faiss_gpus_on_a_cpu_faiss_is_a_clear_error() -> None:
    """retriever.faiss_gpus asks faiss-gpu to spread the index over local GPUs; faiss-cpu (CI, these
    machines) has none, and the load says so instead of searching on the CPU silently."""
    import faiss

    from s3core.errors import InvalidArgument
    from s3core.retrieval.dense import to_gpus

    index = faiss.IndexFlatIP(8)
    if hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0:
        pytest.skip("faiss sees a GPU here")
    with pytest.raises(InvalidArgument, match="faiss-gpu"):
        to_gpus(index, 1)


def test_retriever_gpu_knobs_are_validated() -> None:
    from s3core.config import ConfigError, load_config

    cfg = load_config(overrides={"retriever": {"device": "cuda:1", "faiss_gpus": -1}})
    assert cfg.retriever.device == "cuda:1" and cfg.retriever.faiss_gpus == -1
    with pytest.raises(ConfigError, match="faiss_gpus"):
        load_config(overrides={"retriever": {"faiss_gpus": -2}})
    with pytest.raises(ConfigError, match="retriever.device"):
        load_config(overrides={"retriever": {"device": "gpu0"}})
