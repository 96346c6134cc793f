"""`s3 precompute`, `s3 cache ...` and `s3 data filter` through the CLI, against a real
redis-server and real services started for each command."""

import json
import os
import subprocess
import sys

import pytest

from s3core.data.synth import synthesize
from s3core.retrieval.index import build_index
from s3core.runtime.local import LocalStack

ENV = {**os.environ, "S3_LOG_LEVEL": "WARNING"}


def s3(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "s3cli", *map(str, args)], capture_output=True, text=True,
                          env=ENV, timeout=timeout)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("pre")
    synthesize(root / "data", seed=11, n_questions=10)
    build_index(root / "data" / "corpus.jsonl", "bm25", root / "idx", show_progress=False)
    stack = LocalStack(root / "state", detach=False)
    info = stack.start_redis()
    yield root, f"redis://127.0.0.1:{info.grpc_port}/0"
    stack.down()


def test_precompute_twice_then_export_import_and_filter(setup, tmp_path):
    root, url = setup
    q = root / "data" / "synth_1hop.jsonl"
    common = ["--questions", q, "--index", root / "idx", "--limit", 3, "--redis-url", url, "--preset", "embedded"]
    first = s3("precompute", *common, "--quiet", "--summary-out", tmp_path / "s1.json")
    assert first.returncode == 0, first.stderr
    s1 = json.loads((tmp_path / "s1.json").read_text())
    assert (s1["hits"], s1["misses"], s1["written"]) == (0, 3, 3)

    second = s3("precompute", *common, "--quiet", "--summary-out", tmp_path / "s2.json")
    assert second.returncode == 0, second.stderr
    s2 = json.loads((tmp_path / "s2.json").read_text())
    assert (s2["hits"], s2["misses"], s2["written"]) == (3, 0, 0)
    assert s2["genacc"] == s1["genacc"]

    stats = s3("cache", "stats", "--redis-url", url)
    assert "3 baselines" in stats.stdout, stats.stdout + stats.stderr
    exp = s3("cache", "export", "--out", tmp_path / "cache.json", "--redis-url", url)
    assert exp.returncode == 0 and "exported 3" in exp.stdout
    imp = s3("cache", "import", tmp_path / "cache.json", "--redis-url", url, "--namespace", "other")
    assert imp.returncode == 0 and "3 written" in imp.stdout, imp.stdout + imp.stderr

    out = tmp_path / "train.jsonl"
    flt = s3("data", "filter", *common, "--out", out)
    assert flt.returncode == 0, flt.stderr
    kept = [json.loads(x) for x in out.read_text().splitlines()]
    dropped_right = 3 - len(kept)
    assert f"kept {len(kept)} of 3" in flt.stdout
    assert f"{dropped_right} naive RAG already right" in flt.stdout


def test_filter_without_baselines_fails_loudly(setup, tmp_path):
    root, url = setup
    q = root / "data" / "synth_2hop.jsonl"
    out = tmp_path / "train.jsonl"
    r = s3("data", "filter", "--questions", q, "--index", root / "idx", "--limit", 2, "--redis-url", url,
           "--preset", "embedded", "--out", out)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "baseline" in r.stderr.lower()
    assert not out.exists()


def test_redis_down_is_one_line_and_nothing_written(setup, tmp_path):
    root, _ = setup
    r = s3("precompute", "--questions", root / "data" / "synth_1hop.jsonl", "--index", root / "idx",
           "--redis-url", "redis://127.0.0.1:1/0", "--summary-out", tmp_path / "s.json")
    assert r.returncode == 2 and "unreachable" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "s.json").exists()
