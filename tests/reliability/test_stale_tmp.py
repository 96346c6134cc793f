"""A SIGKILLed build leaves nothing behind for good (issue 17 item 10): the hidden ``.NAME.*.tmp`` an
index build was writing (GBs at wiki scale) is swept by the next build of that output, while the
temp dir of a build still running is left alone.  Real processes, a real BM25 build."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from s3core.io import sweep_stale_dirs

HOLD = """
import sys, time
from pathlib import Path
from s3core.io import atomic_dir
with atomic_dir(sys.argv[1]) as tmp:
    (tmp / "big.bin").write_bytes(b"x" * 4096)
    print(tmp, flush=True)
    time.sleep(600)
"""


def _holder(target: Path) -> tuple[subprocess.Popen, Path]:
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(target)], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    return p, Path(p.stdout.readline().strip())


def test_next_build_sweeps_a_killed_builds_temp_dir(tmp_path: Path) -> None:
    from s3core.data.synth import synthesize
    from s3core.retrieval.index import build_index

    synthesize(tmp_path / "data", seed=7, n_entities=30, n_questions=2)
    out = tmp_path / "idx"
    killed, killed_tmp = _holder(out)
    live, live_tmp = _holder(tmp_path / "other")
    try:
        killed.send_signal(signal.SIGKILL)
        killed.wait(10)
        assert killed_tmp.is_dir() and killed_tmp.name.startswith(".idx.") and killed_tmp.name.endswith(".tmp")
        build_index(tmp_path / "data" / "corpus.jsonl", "bm25", out, show_progress=False)
        assert not killed_tmp.exists()  # swept by the next build of the same output
        assert (out / "manifest.json").is_file()
        assert sweep_stale_dirs(tmp_path / "other") == [] and live_tmp.is_dir()  # its builder is alive
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == [live_tmp.name]
    finally:
        live.kill()
        live.wait()
    assert sweep_stale_dirs(tmp_path / "other") == [live_tmp]


def test_files_and_dirs_follow_the_umask(tmp_path: Path) -> None:
    import os

    from s3core.io import atomic_dir, write_json

    old = os.umask(0o022)
    try:
        write_json(tmp_path / "results.json", {"a": 1})
        with atomic_dir(tmp_path / "index") as d:
            (d / "x").write_text("x")
        os.umask(0o077)
        write_json(tmp_path / "private.json", {})
    finally:
        os.umask(old)
    assert (tmp_path / "results.json").stat().st_mode & 0o777 == 0o644  # mkstemp alone gives 0600
    assert (tmp_path / "index").stat().st_mode & 0o777 == 0o755  # mkdtemp alone gives 0700
    assert (tmp_path / "private.json").stat().st_mode & 0o777 == 0o600
