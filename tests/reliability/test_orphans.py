"""Nothing is orphaned (issue 17 item 3): services started for a run die with the process that started
them even when it is SIGKILLed (kill -9, the OOM killer, a CI timeout), and the temporary state of a
killed run is swept by the next one -- a service still running from it stopped first, a reused pid never.

Real processes: a child Python process opens ``local_services`` (the code path of ``s3 eval`` /
``s3 precompute`` / ``s3 data filter``) with a real retriever over a tiny BM25 index, and is SIGKILLed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from s3core.runtime.local import OWNER_FILE, LocalStack, run_state_dir, sweep_stale_runs

CHILD = """
import sys, time
from s3core.config import Config
from s3core.eval.job import local_services
with local_services(Config(), index=sys.argv[1], generator="127.0.0.1:1", need_retriever=True) as a:
    print(a.retriever, flush=True)
    time.sleep(600)
"""


def _gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.1)
    return False


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from s3core.data.synth import synthesize
    from s3core.retrieval.index import build_index

    root = tmp_path_factory.mktemp("orphans")
    synthesize(root / "data", seed=1, n_entities=30, n_questions=2)
    build_index(root / "data" / "corpus.jsonl", "bm25", root / "idx", show_progress=False)
    return root / "idx"


def test_services_die_with_a_sigkilled_parent_and_its_state_is_swept(index: Path, tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp), "S3_LOG_LEVEL": "WARNING"}
    parent = subprocess.Popen([sys.executable, "-c", CHILD, str(index)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        line = parent.stdout.readline()
        assert line.startswith("127.0.0.1:"), f"child did not start its retriever ({parent.poll()=})"
        runs = list(tmp.glob("s3-run-*"))
        assert len(runs) == 1
        owner = json.loads((runs[0] / OWNER_FILE).read_text())
        assert owner["pid"] == parent.pid
        rec = json.loads((runs[0] / "run" / "retriever.json").read_text())
        assert psutil.pid_exists(rec["pid"]) and rec["started"]
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        assert _gone(rec["pid"], 20), "the retriever outlived the process that started it"
        assert runs[0].exists()  # SIGKILL: no chance to clean up ...
        assert sweep_stale_runs(tmp) == [runs[0]]  # ... so the next run sweeps it
        assert not runs[0].exists()
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def test_sweep_stops_an_orphan_of_a_dead_run_but_keeps_live_and_unknown_dirs(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / "s3-run-stale"
    stack = LocalStack(stale, detach=True)  # as an older s3 left it: a service outliving its run
    redis = stack.start_redis()
    (stale / OWNER_FILE).write_text(json.dumps({"pid": dead.pid, "start": "1"}))
    live = tmp_path / "s3-run-live"
    live.mkdir()
    (live / OWNER_FILE).write_text(json.dumps({"pid": os.getpid(), "start": ""}))
    foreign = tmp_path / "s3-run-foreign"  # no owner record: not ours to judge
    foreign.mkdir()
    # a record whose pid now belongs to another process (this one) is never signalled
    reused = tmp_path / "s3-run-reused"
    (reused / "run").mkdir(parents=True)
    (reused / "run" / "generator.json").write_text(json.dumps({"name": "generator", "pid": os.getpid(),
                                                               "started": "1"}))
    (reused / OWNER_FILE).write_text(json.dumps({"pid": dead.pid, "start": "1"}))
    try:
        removed = sweep_stale_runs(tmp_path)
        assert sorted(removed) == sorted([stale, reused])
        assert _gone(redis.pid, 10), "the orphaned redis-server of the dead run is still running"
        assert live.is_dir() and foreign.is_dir()
    finally:
        stack.stop("redis")


def test_run_state_dir_records_its_owner_and_cleans_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    with run_state_dir() as d:
        assert d.parent == tmp_path and json.loads((d / OWNER_FILE).read_text())["pid"] == os.getpid()
        assert sweep_stale_runs(tmp_path) == []  # the owner is alive
    assert not d.exists()
