"""`s3 cache import-reference` end to end on the shared data (issue 15 §5): a cache file in the s3
reference implementation's layout for real NQ and HotpotQA dev questions goes into a real
redis-server under exactly the keys `s3 precompute` looks up (index fingerprint as the retriever
service reports it, k, generator, prompt version, judge, today's scoring version); a file with an
entry that does not match is refused naming file:line:column, and nothing is written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ENV = {**os.environ, "S3_LOG_LEVEL": "WARNING"}
MODEL, PROMPT = "vllm/Qwen/Qwen2.5-14B-Instruct-GPTQ-Int4", "s3-gen-v1"


def s3(*args: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "s3cli", *map(str, args)], capture_output=True, text=True,
                          env=ENV, timeout=600)


def _rows(path: Path, n: int) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        if not any(g.lower() in ("yes", "no") for g in r["golden_answers"]):
            out.append(r)
        if len(out) == n:
            break
    return out


@pytest.fixture(scope="module")
def world(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from s3core.retrieval import build_index

    d = tmp_path_factory.mktemp("refcache")
    nq, hp = _rows(shared_data / "wiki_qa" / "nq.dev.jsonl", 4), _rows(shared_data / "wiki_qa" / "hotpotqa.dev.jsonl", 2)
    (d / "nq.dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in nq), encoding="utf-8")
    (d / "hotpotqa.dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in hp), encoding="utf-8")
    index = d / "idx"
    build_index(shared_data / "wiki_corpus.jsonl", "bm25", index, show_progress=False, limit=300)

    def ref_q(r: dict[str, Any]) -> str:  # the reference strips and appends "?"
        q = r["question"].strip()
        return q if q.endswith("?") else q + "?"

    # right answers (the gold in a sentence) and wrong ones, as the reference scores them
    cache = {
        "nq": {ref_q(r): ({"answer": f"I think it is {r['golden_answers'][0]}.", "score": 1, "em_score": 0} if i % 2 == 0
                          else {"answer": "I do not know.", "score": 0, "em_score": 0}) for i, r in enumerate(nq)},
        "hotpotqa": {ref_q(r): {"answer": r["golden_answers"][0], "score": 1, "em_score": 1} for r in hp},
    }
    ref = d / "rag_cache.json"
    ref.write_text(json.dumps(cache), encoding="utf-8")  # json.dump's layout: one line
    return {"dir": d, "index": index, "ref": ref, "nq": nq, "hp": hp, "cache": cache}


def _precompute_keys(world: dict[str, Any]) -> Any:
    """The keys `s3 precompute` would build against a retriever serving this index."""
    from s3_retriever.servicer import _pb_info
    from s3core.cache.keys import index_fingerprint, judge_id, key_factory
    from s3core.data import load_questions
    from s3core.retrieval import load_index

    fp = index_fingerprint(_pb_info(load_index(world["index"]).info()))  # what ListIndexes reports
    make = key_factory(fp, 3, MODEL, PROMPT, judge_id(True, MODEL))
    return [make(q) for name in ("nq", "hotpotqa") for q in load_questions(world["dir"] / f"{name}.dev.jsonl")]


def test_import_into_redis_under_precompute_keys(world: dict[str, Any], redis_url: str) -> None:
    from s3core.cache.baseline import BaselineCache

    cache = BaselineCache.from_url(redis_url, namespace="refimp")
    cache.clear()
    summary = world["dir"] / "summary.json"
    r = s3("cache", "import-reference", world["ref"], "--questions", world["dir"] / "nq.dev.jsonl",
           world["dir"] / "hotpotqa.dev.jsonl", "--index", world["index"], "--generator-model", MODEL,
           "--prompt-version", PROMPT, "--redis-url", redis_url, "--namespace", "refimp", "--summary-out", summary)
    assert r.returncode == 0, r.stderr
    assert "6 entries, 6 converted" in r.stdout and "6 written" in r.stdout
    recs = cache.get_many(_precompute_keys(world))
    assert all(x is not None for x in recs)
    assert [x.genacc for x in recs] == [True, False, True, False, True, True]  # type: ignore[union-attr]
    assert [x.question_id for x in recs] == [q["id"] for q in world["nq"] + world["hp"]]  # type: ignore[union-attr]
    s = json.loads(summary.read_text())
    assert s["converted"] == 6 and s["key"]["judge_id"] == f"llm:{MODEL}" and s["scoring_version"] == "2"
    # a second run without --overwrite keeps what is there
    r = s3("cache", "import-reference", world["ref"], "--questions", world["dir"] / "nq.dev.jsonl",
           world["dir"] / "hotpotqa.dev.jsonl", "--index", world["index"], "--generator-model", MODEL,
           "--prompt-version", PROMPT, "--redis-url", redis_url, "--namespace", "refimp")
    assert r.returncode == 0 and "0 written" in r.stdout and "6 already present" in r.stdout


def test_a_mismatching_entry_refuses_the_file(world: dict[str, Any], redis_url: str) -> None:
    from s3core.cache.baseline import BaselineCache

    cache = BaselineCache.from_url(redis_url, namespace="refbad")
    cache.clear()
    bad = json.loads(json.dumps(world["cache"]))
    q0 = next(iter(bad["nq"]))
    bad["nq"][q0]["score"] = 0  # the answer holds the gold, the reference says wrong: other golds
    bad["nq"]["a question nobody asked?"] = {"answer": "x", "score": 0, "em_score": 0}
    ref = world["dir"] / "bad_cache.json"
    text = json.dumps(bad)
    ref.write_text(text, encoding="utf-8")
    r = s3("cache", "import-reference", ref, "--questions", world["dir"] / "nq.dev.jsonl",
           world["dir"] / "hotpotqa.dev.jsonl", "--index", world["index"], "--generator-model", MODEL,
           "--prompt-version", PROMPT, "--redis-url", redis_url, "--namespace", "refbad")
    assert r.returncode != 0
    err = " ".join(r.stderr.split())
    assert "2 of 7 entries refused, nothing imported" in err
    assert f"{ref}:1:{text.index(json.dumps(q0)) + 1}: reference score 0" in err
    assert "'a question nobody asked?' is not in the 'nq' question file" in err
    assert cache.count() == 0
    # --skip-unmatched skips the stranger, the mismatch is still refused
    r = s3("cache", "import-reference", ref, "--questions", world["dir"] / "nq.dev.jsonl",
           world["dir"] / "hotpotqa.dev.jsonl", "--index", world["index"], "--generator-model", MODEL,
           "--prompt-version", PROMPT, "--redis-url", redis_url, "--namespace", "refbad", "--skip-unmatched")
    assert r.returncode != 0 and "1 of 7 entries refused" in " ".join(r.stderr.split())
    assert cache.count() == 0


def test_export_file_without_redis_and_required_key_parts(world: dict[str, Any], redis_url: str) -> None:
    from s3core.cache.baseline import BaselineCache

    out = world["dir"] / "baselines.json"
    r = s3("cache", "import-reference", world["ref"], "--questions", world["dir"] / "nq.dev.jsonl",
           world["dir"] / "hotpotqa.dev.jsonl", "--index", world["index"], "--generator-model", MODEL,
           "--prompt-version", PROMPT, "--judge", "none", "--out", out, "--redis-url", "redis://127.0.0.1:1/0")
    assert r.returncode == 0, r.stderr  # no Redis needed with --out
    entries = BaselineCache.read_export(out)
    assert len(entries) == 6 and all(k.judge_id == "span-only" for k, _ in entries)
    # then `s3 cache import` loads it
    r = s3("cache", "import", out, "--redis-url", redis_url, "--namespace", "refexp")
    assert r.returncode == 0 and "6 written" in r.stdout, r.stderr
    r = s3("cache", "import-reference", world["ref"], "--questions", world["dir"] / "nq.dev.jsonl",
           "--index", world["index"], "--out", world["dir"] / "x.json")
    assert r.returncode != 0 and "--generator-model and --prompt-version" in r.stderr
