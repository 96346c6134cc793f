"""`s3 train` checks its question files and its outputs before any work (issue 17 item 8): a bad
line, an empty file, a checkpoint dir that is a file or holds an earlier run fail with one line
naming the file (and line), and no service, Redis, metrics port or synthetic world is started."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from s3core.errors import S3Error

GOOD = '{"id": "%d", "question": "who founded x%d?", "golden_answers": ["y%d"]}\n'


class Reached(S3Error):
    pass


@pytest.fixture()
def guarded(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every way the command starts work records itself and stops there."""
    calls: list[str] = []

    def stop(name: str) -> Any:
        def f(*a: Any, **k: Any) -> Any:
            calls.append(name)
            raise Reached(f"reached {name}")
        return f

    import prometheus_client

    import s3core.data.synth
    import s3core.eval.job
    import s3core.runtime.local
    import s3core.train.run

    monkeypatch.setattr(s3core.train.run, "run_training", stop("run_training"))
    monkeypatch.setattr(s3core.eval.job, "local_services", stop("local_services"))
    monkeypatch.setattr(s3core.runtime.local.LocalStack, "start_redis", stop("start_redis"))
    monkeypatch.setattr(prometheus_client, "start_http_server", stop("metrics port"))
    monkeypatch.setattr(s3core.data.synth, "synthesize", stop("synthesize"))
    return calls


def _files(tmp_path: Path) -> tuple[Path, Path]:
    q = tmp_path / "train.jsonl"
    q.write_text("".join(GOOD % (i, i, i) for i in range(3)))
    idx = tmp_path / "idx"
    idx.mkdir()
    (idx / "manifest.json").write_text("{}")
    return q, idx


def _train(tmp_path: Path, *argv: str) -> int:
    from s3cli.main import main

    return main(["train", "--quiet", "--metrics-port", "0", *argv])


def test_bad_question_lines_fail_before_any_service(tmp_path: Path, guarded: list[str],
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    q, idx = _files(tmp_path)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(GOOD % (1, 1, 1) + GOOD % (2, 2, 2) + '{"id": "3", "question": "no golds"\n')
    val = tmp_path / "val.jsonl"
    val.write_text(GOOD % (7, 7, 7) + '{"id": "8", "question": "q", "golden_answers": []}\n')
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    ck = str(tmp_path / "ck")
    cases = [
        (["--questions", str(q), "--questions", str(bad)], f"{bad}:3:"),
        (["--questions", str(q), "--val-questions", str(val)], f"{val}:2:"),
        (["--questions", str(q), "--val-questions", str(empty)], f"{empty}: no questions"),
        (["--questions", str(tmp_path)], f"train.questions: {tmp_path}: is a directory"),
        (["--questions", str(q), "--val-questions", str(tmp_path / "nope.jsonl")], "nope.jsonl: no such file"),
    ]
    for argv, message in cases:
        assert _train(tmp_path, "--checkpoint-dir", ck, "--index", str(idx), *argv) == 2
        err = capsys.readouterr().err
        assert message in err, err
    assert guarded == []
    assert not (tmp_path / "ck").exists()
    # the good files get through the checks, to the run itself
    assert _train(tmp_path, "--checkpoint-dir", ck, "--index", str(idx), "--questions", str(q)) == 2
    assert guarded == ["metrics port"]


def test_outputs_checked_first_and_an_earlier_run_is_not_clobbered(tmp_path: Path, guarded: list[str],
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    q, idx = _files(tmp_path)
    afile = tmp_path / "afile"
    afile.write_text("user data\n")
    run = ["--index", str(idx), "--questions", str(q)]
    for ck, message in ((afile, f"train.checkpoint_dir: {afile} is a file"),
                        (afile / "ck", f"{afile / 'ck'} cannot be created: {afile} is a file")):
        assert _train(tmp_path, "--checkpoint-dir", str(ck), *run) == 2
        assert message in capsys.readouterr().err
        # the embedded default: refused before the synthetic world is generated
        assert _train(tmp_path, "--checkpoint-dir", str(ck), "--world", str(tmp_path / "world")) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "world").exists() and afile.read_text() == "user data\n"

    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "metrics.jsonl").write_text('{"step": 1, "kind": "train"}\n')
    assert _train(tmp_path, "--checkpoint-dir", str(earlier), *run) == 2
    err = capsys.readouterr().err
    assert f"{earlier} holds an earlier run (metrics.jsonl)" in err and "--resume" in err
    (earlier / "step-000002").mkdir()
    assert _train(tmp_path, "--checkpoint-dir", str(earlier), *run) == 2
    assert "(step-000002, metrics.jsonl)" in capsys.readouterr().err
    assert (earlier / "metrics.jsonl").read_text() == '{"step": 1, "kind": "train"}\n'
    assert guarded == []
    assert _train(tmp_path, "--checkpoint-dir", str(earlier), "--resume", *run) == 2  # resuming is allowed
    # a directory with unrelated files only is fine for a fresh run (nothing of it is overwritten)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("x")
    assert _train(tmp_path, "--checkpoint-dir", str(other), *run) == 2
    assert guarded == ["metrics port", "metrics port"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only directory")
def test_unwritable_checkpoint_dir(tmp_path: Path, guarded: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    q, idx = _files(tmp_path)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        assert _train(tmp_path, "--checkpoint-dir", str(ro / "ck"), "--index", str(idx), "--questions", str(q)) == 2
        assert f"{ro / 'ck'} (its parent {ro}) is not writable" in capsys.readouterr().err
    finally:
        ro.chmod(0o700)
    assert guarded == []


def test_unwritable_dir_found_by_writing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check writes a real temporary file (permission bits do not stop root; read-only mounts)."""
    import tempfile

    from s3core.config import load_config
    from s3core.errors import InvalidArgument
    from s3core.train.data import check_outputs

    def refuse(*a: Any, **k: Any) -> Any:
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    cfg = load_config(overrides={"train": {"checkpoint_dir": str(tmp_path / "ck"), "log_dir": str(tmp_path / "tb")}})
    with pytest.raises(InvalidArgument, match=r"train.checkpoint_dir: .*ck \(its parent .*\) is not writable: "
                                              "Read-only file system"):
        check_outputs(cfg, resume=False)
    monkeypatch.undo()
    assert check_outputs(cfg, resume=False) == tmp_path / "ck"
    assert not (tmp_path / "ck").exists()  # checking creates nothing


def test_train_and_sft_help_have_no_raw_markup() -> None:
    import subprocess
    import sys

    for cmd in ("train", "sft"):
        out = subprocess.run([sys.executable, "-m", "s3cli", cmd, "--help"], capture_output=True, text=True,
                             timeout=120, check=True).stdout
        assert "`" not in out, out
        assert "usage: s3 " + cmd in out
    out = subprocess.run([sys.executable, "-m", "s3cli", "train", "--help"], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert "--questions nor train.questions" in out and "'s3 demo'" in out
