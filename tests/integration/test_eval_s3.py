"""`s3 eval` with the s3 methods and the baselines, through real services on loopback.

`s3 eval` starts a real retriever, a real generator (embedded SmolLM2-135M; it also serves the
baselines' LLM calls) and, for the s3 methods, a real searcher for the run.  Knobs are cut down
(one search turn, short generations) to keep two CPU cores busy for seconds, not minutes.
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

ENV = {**os.environ, "S3_LOG_LEVEL": "WARNING"}
PNG = b"\x89PNG\r\n\x1a\n"

CONFIG = """\
search:
  initial_k: 3
  retrieve_k: 3
  select_max: 2
  max_turns: 1
  max_new_tokens: 48
eval:
  batch_size: 4
"""


def s3(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "s3cli", *map(str, args)], capture_output=True, text=True,
                          env=ENV, timeout=timeout)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("s3world")
    r = s3("data", "synth", "--out", root / "data", "--seed", 3, "--n-entities", 120, "--n-questions", 10)
    assert r.returncode == 0, r.stderr
    r = s3("index", "build", "--corpus", root / "data" / "corpus.jsonl", "--backend", "bm25", "--out", root / "idx",
           "--quiet")
    assert r.returncode == 0, r.stderr
    (root / "eval.yaml").write_text(CONFIG)
    return root


def _lines(path):
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


@pytest.mark.skipif(importlib.util.find_spec("s3_searcher") is None,
                    reason="the searcher service (services/searcher, package s3_searcher) is not installed yet")
def test_eval_s3_ablations_and_baselines(world, tmp_path):
    out = tmp_path / "out"
    methods = ["s3", "s3-no-selection", "naive-rag", "deepretrieval"]
    r = s3("eval", "--questions", world / "data" / "synth_1hop.jsonl", "--index", world / "idx",
           "--method", ",".join(methods), "--limit", 2, "--out", out, "--quiet",
           "--preset", "embedded", "--config", world / "eval.yaml")
    assert r.returncode == 0, r.stderr
    for m in methods:
        assert m in r.stdout
        res = json.loads((out / m / "results.json").read_text())
        assert set(res["datasets"]) == {"synth_1hop"} and res["datasets"]["synth_1hop"]["n"] == 2
        assert len(_lines(out / m / "predictions.jsonl")) == 2
    # the s3 variants: one trajectory per question, the very same episodes, different contexts
    t_s3 = _lines(out / "s3" / "trajectories.jsonl")
    t_nosel = _lines(out / "s3-no-selection" / "trajectories.jsonl")
    assert len(t_s3) == len(t_nosel) == 2
    assert [t["trajectory"] for t in t_s3] == [t["trajectory"] for t in t_nosel]
    for a, b in zip(t_s3, t_nosel):
        assert a["ablation"] == "none" and b["ablation"] == "no_selection"
        assert set(a["context_doc_ids"]) <= set(b["context_doc_ids"])
        assert a["trajectory"]["blocks"][0]["documents"], "block 0 (naive RAG) is always there"
        assert len(a["trajectory"]["turns"]) <= 2  # max_turns 1 + the final turn
    res = json.loads((out / "s3" / "results.json").read_text())
    assert res["config"]["search"]["max_turns"] == 1
    assert not (out / "naive-rag" / "trajectories.jsonl").exists()
    assert all(p["extra"]["query"] for p in _lines(out / "deepretrieval" / "predictions.jsonl"))
    table = (out / "results.md").read_text()
    for m in methods:
        assert f"| {m} |" in table
    assert (out / "results.png").read_bytes()[:8] == PNG

    r = s3("show", out / "s3" / "trajectories.jsonl", "--index", 1)
    assert r.returncode == 0, r.stderr
    assert t_s3[1]["trajectory"]["question"]["question"].split()[0] in r.stdout
    assert "Turn 1" in r.stdout and "prediction:" in r.stdout


def test_eval_llm_baselines_without_a_searcher(world, tmp_path):
    """The baselines that need only the retriever and an LLM (the generator's Complete RPC)."""
    out = tmp_path / "out"
    methods = ["ircot", "search-r1"]  # naive-rag and deepretrieval run in the test above
    r = s3("eval", "--questions", world / "data" / "synth_2hop.jsonl", "--index", world / "idx",
           "--method", ",".join(methods), "--limit", 2, "--k", 1, "--ircot-steps", 1, "--out", out, "--quiet",
           "--preset", "embedded", "--config", world / "eval.yaml")
    assert r.returncode == 0, r.stderr
    for m in methods:
        res = json.loads((out / m / "results.json").read_text())
        assert res["datasets"]["synth_2hop"]["n"] == 2
    preds = {m: _lines(out / m / "predictions.jsonl") for m in methods}
    assert all(p["answered_by"] == "method" for p in preds["search-r1"])
    assert all(p["answered_by"] == "generator" for p in preds["ircot"])
    assert all(len(p["extra"]["cot"]) <= 1 and len(p["doc_ids"]) <= 1 for p in preds["ircot"])  # k * steps
    cfg = json.loads((out / "search-r1" / "results.json").read_text())["config"]
    assert cfg["baseline_prompt_version"] and cfg["baseline_llm_model"]
    assert (out / "results.png").read_bytes()[:8] == PNG
    assert not list(out.glob("**/trajectories.jsonl"))


def test_s3_bad_inputs_give_one_clear_line(world, tmp_path):
    q = world / "data" / "synth_1hop.jsonl"
    for args, needle in [
        (["--method", "s3"], "--searcher ADDR"),
        (["--method", "s3,s3", "--searcher", "127.0.0.1:1"], "listed twice"),
        (["--method", "ircot", "--index", world / "idx", "--ircot-steps", 0], "--ircot-steps must be >= 1"),
    ]:
        r = s3("eval", "--questions", q, *args, "--out", tmp_path / "o")
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        lines = [ln for ln in r.stderr.splitlines() if ln.startswith("s3: error:")]
        assert len(lines) == 1 and needle in lines[0], r.stderr
    r = s3("show", tmp_path / "missing.jsonl")
    assert r.returncode == 2 and "no such file" in r.stderr
    assert not (tmp_path / "o").exists()
