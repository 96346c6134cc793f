"""`s3 eval` SIGKILLed mid-run resumes (issue 17 item 4): the rerun skips the finished method, evaluates
only the batches of the interrupted one that are not in its progress file, and writes exactly what an
uninterrupted run writes.  Real services on loopback: a BM25 retriever and the tiny Qwen2 generator;
the CLI runs as a subprocess and is killed with SIGKILL."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

BATCH = 2


@pytest.fixture(scope="module")
def rworld(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from s3core.data.synth import synthesize
    from s3core.retrieval.index import build_index
    from s3core.rl.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("eval-resume")
    synthesize(root / "world", seed=8, n_entities=40, n_questions=6)
    build_index(root / "world" / "corpus.jsonl", "bm25", root / "idx", show_progress=False)
    build_tiny_model(root / "tiny")
    (root / "s3.yaml").write_text(yaml.safe_dump({"eval": {"batch_size": BATCH}, "generator": {"max_new_tokens": 8}}))
    return {"root": root, "q1": root / "world" / "synth_1hop.jsonl", "q2": root / "world" / "synth_2hop.jsonl",
            "index": root / "idx", "model": root / "tiny", "config": root / "s3.yaml"}


def _answers(http_port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(float(m) for m in re.findall(
        r'^grpc_server_handled_total\{grpc_code="OK",grpc_method="Answer",grpc_service="s3.v1.Generator"\} (\S+)$',
        text, re.MULTILINE))


def _cmd(w: dict[str, Path], ret: str, gen: str, out: Path) -> list[str]:
    return [sys.executable, "-m", "s3cli", "eval", "--questions", str(w["q1"]), str(w["q2"]),
            "--method", "no-retrieval,naive-rag", "--retriever", ret, "--generator", gen, "--config", str(w["config"]),
            "--judge", "none", "--out", str(out), "--quiet"]


def _lines(p: Path) -> int:
    try:
        return len(p.read_bytes().splitlines())
    except FileNotFoundError:
        return 0


@pytest.mark.timeout(600)
def test_sigkilled_eval_resumes_batch_by_batch(rworld: dict[str, Path], service_runner, tmp_path: Path) -> None:
    w = rworld
    (tmp_path / "r").mkdir()
    (tmp_path / "g").mkdir()
    with service_runner("s3_retriever", ["--index", str(w["index"]), "--threads", "1"], tmp_path / "r") as ret, \
            service_runner("s3_generator", ["--model", str(w["model"]), "--config", str(w["config"])],
                           tmp_path / "g") as gen:
        r_addr, g_addr = f"127.0.0.1:{ret.grpc_port}", f"127.0.0.1:{gen.grpc_port}"
        n_q = sum(1 for f in (w["q1"], w["q2"]) for line in f.read_text().splitlines() if line.strip())
        per_method = sum(-(-sum(1 for line in f.read_text().splitlines() if line.strip()) // BATCH)
                         for f in (w["q1"], w["q2"]))
        # an uninterrupted run, for reference
        a0 = _answers(gen.http_port)
        whole = tmp_path / "whole"
        subprocess.run(_cmd(w, r_addr, g_addr, whole), check=True, timeout=300, capture_output=True)
        assert _answers(gen.http_port) - a0 == 2 * per_method

        # the same run, SIGKILLed once naive-rag (the 2nd method) has a few batches on disk
        out = tmp_path / "killed"
        progress = out / "naive-rag" / ".progress.jsonl"
        a1 = _answers(gen.http_port)
        proc = subprocess.Popen(_cmd(w, r_addr, g_addr, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 240
        while _lines(progress) < 4 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        done = _lines(progress) - 1  # batches on disk (the header is line 1)
        assert 3 <= done < per_method, f"{done} of {per_method} batches done when killed"
        assert (out / "no-retrieval" / "results.json").is_file() and not (out / "naive-rag" / "results.json").exists()
        before_rerun = _answers(gen.http_port)
        assert before_rerun - a1 >= per_method + done

        r = subprocess.run(_cmd(w, r_addr, g_addr, out), timeout=300, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert "already evaluated" in r.stderr and "resuming from" in r.stderr
        # only the batches not on disk were evaluated again; the finished method not at all
        assert _answers(gen.http_port) - before_rerun == per_method - done
        assert not progress.exists()  # the job is complete: nothing left to resume
    for method in ("no-retrieval", "naive-rag"):
        got = [json.loads(x) for x in (out / method / "predictions.jsonl").read_text().splitlines()]
        ref = [json.loads(x) for x in (whole / method / "predictions.jsonl").read_text().splitlines()]
        assert got == ref and len(got) == n_q
        assert json.loads((out / method / "results.json").read_text())["datasets"] == \
            json.loads((whole / method / "results.json").read_text())["datasets"]
