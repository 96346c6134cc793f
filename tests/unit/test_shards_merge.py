"""Sharded retrieval: the top-k merge is exact against one index, and a shard set loads as one index.

* ``merge_topk`` over faiss flat shards of random vectors equals one faiss index over all of them
  (Hypothesis: corpus size, shard cuts, query count, k -- including k larger than a shard);
* the tie rule (score desc, global row asc) and the ragged-list form used by the client fan-out;
* ``ShardedRetriever`` over a real sharded dense build (embedded MiniLM, ``build_index(shards=3)``)
  returns exactly what the unsharded index of the same corpus returns, for many queries and k;
* incomplete, mixed and broken shard sets are refused with a message naming the shard.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s3core.errors import InvalidArgument, NotFound
from s3core.retrieval.shards import (
    ShardSetError,
    load_shard_set,
    logical_name,
    merge_ranked_lists,
    merge_topk,
    plan_index_dirs,
)
from s3core.types import Doc

NEAR_TIE = 1e-6
DENSE = {"max_seq_length": 64, "batch_size": 32}


def assert_same_ranking(ref_rows: np.ndarray, ref_scores: np.ndarray, rows: np.ndarray, scores: np.ndarray) -> None:
    """Equal scores (to float precision) and equal rows, except inside groups of (near-)equal scores,
    where only the set of rows is compared (the k-th place of a tie group is left out)."""
    assert rows.shape == ref_rows.shape
    np.testing.assert_allclose(scores, ref_scores, rtol=0, atol=NEAR_TIE)
    for q in range(ref_rows.shape[0]):
        rs, rr, gr = ref_scores[q], ref_rows[q].tolist(), rows[q].tolist()
        i = 0
        while i < len(rr):
            j = i + 1
            while j < len(rr) and abs(rs[j] - rs[j - 1]) <= NEAR_TIE:
                j += 1
            if j - i == 1:
                assert gr[i] == rr[i], (q, i, gr, rr)
            elif j < len(rr):  # a tie group inside the list: same members
                assert sorted(gr[i:j]) == sorted(rr[i:j]), (q, i, gr, rr)
            i = j


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 400), n_shards=st.integers(1, 6), nq=st.integers(1, 40), k=st.integers(1, 450),
       seed=st.integers(0, 2**31 - 1))
def test_merge_topk_equals_one_flat_index(n: int, n_shards: int, nq: int, k: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    d = 16
    x = rng.standard_normal((n, d)).astype(np.float32)
    qv = rng.standard_normal((nq, d)).astype(np.float32)
    n_shards = min(n_shards, n)
    cuts = [0, *sorted(rng.choice(np.arange(1, n), size=n_shards - 1, replace=False).tolist()), n] if n > 1 else [0, 1]
    whole = faiss.IndexFlatIP(d)
    whole.add(x)
    kk = min(k, n)
    ref_scores, ref_rows = whole.search(qv, kk)
    parts = []
    for a, b in zip(cuts, cuts[1:]):
        shard = faiss.IndexFlatIP(d)
        shard.add(x[a:b])
        parts.append(shard.search(qv, min(k, b - a)))  # each shard returns at most its size
    scores, rows = merge_topk(parts, k, cuts[:-1])
    assert scores.shape == (nq, kk) and rows.dtype == np.int64
    assert_same_ranking(ref_rows, ref_scores.astype(np.float64), rows, scores)


def test_merge_topk_tie_rule_and_misses() -> None:
    # shard 0 holds global rows 0..4, shard 1 rows 5..9; equal scores go to the lower global row
    s0 = (np.array([[0.9, 0.5, 0.5]]), np.array([[3, 4, 1]]))
    s1 = (np.array([[0.9, 0.5, 0.1]]), np.array([[0, 2, 4]]))
    scores, rows = merge_topk([s1, s0], 5, [5, 0])  # shard order in the call does not matter
    assert rows.tolist() == [[3, 5, 1, 4, 7]]
    assert scores.tolist() == [[0.9, 0.9, 0.5, 0.5, 0.5]]
    # faiss pads a short list with row -1: misses sort last and stay marked
    short = (np.array([[0.7, -3.4e38]]), np.array([[0, -1]]))
    scores, rows = merge_topk([short, (np.array([[0.8]]), np.array([[0]]))], 10, [0, 1])
    assert rows.tolist() == [[1, 0, -1]] and scores[0, :2].tolist() == [0.8, 0.7] and scores[0, 2] == -np.inf


def test_merge_topk_rejects_bad_input() -> None:
    with pytest.raises(InvalidArgument):
        merge_topk([(np.zeros((2, 3)), np.zeros((2, 3)))], 0, [0])
    with pytest.raises(InvalidArgument, match="row offsets"):
        merge_topk([(np.zeros((2, 3)), np.zeros((2, 3)))], 3, [0, 3])
    with pytest.raises(InvalidArgument, match="queries"):
        merge_topk([(np.zeros((2, 3)), np.zeros((2, 3))), (np.zeros((1, 3)), np.zeros((1, 3)))], 3, [0, 3])


def test_merge_ranked_lists_orders_by_score_then_shard_then_position() -> None:
    def docs(prefix: str, scores: list[float]) -> list[Doc]:
        return [Doc(id=f"{prefix}{i}", title="", text="", score=s) for i, s in enumerate(scores)]

    shard0 = [docs("a", [0.9, 0.4, 0.4]), docs("c", [0.2])]
    shard1 = [docs("b", [0.95, 0.4]), docs("d", [0.3, 0.2, 0.1])]
    out = merge_ranked_lists([shard0, shard1], 4, [0, 10])
    assert [d.id for d in out[0]] == ["b0", "a0", "a1", "a2"]
    assert [d.id for d in out[1]] == ["d0", "c0", "d1", "d2"]
    assert [d.id for d in merge_ranked_lists([shard0, shard1], 100, [0, 10])[1]] == ["d0", "c0", "d1", "d2"]
    with pytest.raises(InvalidArgument, match="holds only"):
        merge_ranked_lists([[docs("x", [1.0, 0.5])], [docs("y", [0.1])]], 2, [0, 1])


def test_logical_name() -> None:
    assert logical_name(["wiki", "wiki"]) == "wiki"
    assert logical_name(["wiki-shard-0", "wiki-shard-1"]) == "wiki"
    assert logical_name(["wiki_shard00-of-02", "wiki_shard01-of-02"]) == "wiki"
    assert logical_name(["a", "b"], "0123456789abcdef") == "shards-01234567"


# --- a real sharded dense build ------------------------------------------------------------------

@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from s3core.data.io import load_questions
    from s3core.data.synth import synthesize
    from s3core.retrieval import build_index, load_index

    root = tmp_path_factory.mktemp("shards")
    synthesize(root / "w", seed=11, n_entities=60, n_questions=15)
    corpus = root / "w" / "corpus.jsonl"
    build_index(corpus, "dense", root / "whole", show_progress=False, params=DENSE)
    build_index(corpus, "dense", root / "toy", show_progress=False, params=DENSE, shards=3)
    questions = [q.question for f in ("synth_1hop.jsonl", "synth_2hop.jsonl")
                 for q in load_questions(root / "w" / f)]
    whole = load_index(root / "whole")
    plan = plan_index_dirs([root / "toy"])
    sharded = load_shard_set(plan[0].dirs, manifests=plan[0].manifests)
    yield {"root": root, "whole": whole, "sharded": sharded, "set": root / "toy", "plan": plan,
           "questions": questions, "n": whole.num_docs}
    whole.close()
    sharded.close()


def test_sharded_dense_equals_one_index(built: dict[str, Any]) -> None:
    whole, sharded, qs, n = built["whole"], built["sharded"], built["questions"], built["n"]
    sizes = [b["row_end"] - b["row_start"] for b in sharded.blocks]
    assert len(sizes) == 3 and sum(sizes) == n
    for k in sorted({1, 5, sizes[0], sizes[0] + 1, n, n + 50}):  # k beyond a shard and beyond the corpus
        ref, got = whole.search(qs, k), sharded.search(qs, k)
        assert len(got) == len(qs)
        ref_scores = np.array([[d.score for d in r] for r in ref])
        got_scores = np.array([[d.score for d in r] for r in got])
        row = {d: i for i, d in enumerate(whole.store.ids)}
        assert_same_ranking(np.array([[row[d.id] for d in r] for r in ref]), ref_scores,
                            np.array([[row[d.id] for d in r] for r in got]), got_scores)
        for g in got:  # documents come back whole, from the right shard
            expect = {d.id: (d.title, d.text) for d in whole.get([x.id for x in g])}
            assert [(d.title, d.text) for d in g] == [expect[d.id] for d in g]


def test_sharded_retriever_info_get_and_shared_encoder(built: dict[str, Any]) -> None:
    sharded, whole = built["sharded"], built["whole"]
    info = sharded.info()
    assert info.name == "toy" and info.backend == "dense" and info.num_documents == built["n"]
    assert info.corpus_sha256 == whole.info().corpus_sha256
    assert info.params["shards"]["count"] == 3 and "shard" not in info.params
    assert info.params["dim"] == whole.info().params["dim"]
    assert all(s.encoder is sharded.shards[0].encoder for s in sharded.shards)  # one model, one encoder pass
    ids = [whole.store.ids[i] for i in (0, built["n"] - 1, built["n"] // 2, 0)]
    assert [d.id for d in sharded.get(ids)] == ids
    assert [d.text for d in sharded.get(ids)] == [d.text for d in whole.get(ids)]
    with pytest.raises(NotFound, match="nope"):
        sharded.get([ids[0], "nope"])
    assert sharded.search([], 3) == []


def _copy_set(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_incomplete_or_mixed_sets_are_refused(built: dict[str, Any], tmp_path: Path) -> None:
    dirs, ms = built["plan"][0].dirs, built["plan"][0].manifests
    with pytest.raises(ShardSetError, match="shard 1 of 3 is missing"):
        load_shard_set([dirs[0], dirs[2]], manifests=[ms[0], ms[2]])
    # two shard directories given one by one form one group; one alone is served as itself
    plan = plan_index_dirs([dirs[2], dirs[0]])
    assert len(plan) == 1 and plan[0].sharded and plan[0].dirs == [dirs[2], dirs[0]]
    assert not plan_index_dirs([dirs[1]])[0].sharded
    # a set directory with a shard gone: the listing says which
    gone = _copy_set(built["set"], tmp_path / "gone")
    shutil.rmtree(gone / Path(dirs[1]).name)
    plan = plan_index_dirs([gone])
    assert plan[0].sharded and len(plan[0].dirs) == 2 and plan[0].absent
    with pytest.raises(ShardSetError, match=r"shard 1 of 3 .*shard-00001-of-00003.*no manifest.json"):
        load_shard_set(plan[0].dirs, manifests=plan[0].manifests, absent=plan[0].absent)
    # a shard of another build (another set_id) does not complete the set
    other = _copy_set(Path(dirs[1]), tmp_path / "other-shard")
    m = json.loads((other / "manifest.json").read_text())
    m["shard"]["set_id"] = "f" * 64
    (other / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ShardSetError, match="set_id"):
        load_shard_set([dirs[0], other, dirs[2]])


def test_shard_that_fails_to_load_is_named(built: dict[str, Any], tmp_path: Path) -> None:
    broken = _copy_set(built["set"], tmp_path / "broken")
    (broken / "shard-00002-of-00003" / "faiss.index").write_bytes(b"not a faiss index")
    plan = plan_index_dirs([broken])
    with pytest.raises(ShardSetError, match=r"shard 2 of 3 \(.*shard-00002-of-00003\) failed to load"):
        load_shard_set(plan[0].dirs, manifests=plan[0].manifests)
