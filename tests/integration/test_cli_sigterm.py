"""A terminated `s3` command stops the services it started for its run (no orphans)."""

import os
import signal
import subprocess
import sys
import time

import psutil

from s3core.data.synth import synthesize
from s3core.retrieval.index import build_index


def test_sigterm_during_eval_stops_its_services(tmp_path):
    synthesize(tmp_path / "data", seed=2, n_questions=10)
    build_index(tmp_path / "data" / "corpus.jsonl", "bm25", tmp_path / "idx", show_progress=False)
    proc = subprocess.Popen(
        [sys.executable, "-m", "s3cli", "eval", "--questions", str(tmp_path / "data" / "synth_1hop.jsonl"),
         "--index", str(tmp_path / "idx"), "--method", "naive-rag", "--out", str(tmp_path / "out"), "--quiet"],
        env={**os.environ, "S3_LOG_LEVEL": "WARNING"}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    parent = psutil.Process(proc.pid)
    deadline = time.monotonic() + 300
    children: list[psutil.Process] = []
    while time.monotonic() < deadline:  # wait until both services are up
        children = [c for c in parent.children() if "s3_" in " ".join(c.cmdline())]
        if len(children) >= 2:
            break
        time.sleep(0.2)
    assert len(children) >= 2, "the eval never started its services"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) != 0
    gone, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, f"services left running: {[c.cmdline() for c in alive]}"
    assert not (tmp_path / "out" / "results.json").exists()
