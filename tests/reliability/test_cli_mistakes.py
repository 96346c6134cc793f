"""A hostile new user's mistakes (issue 17): no command destroys user data, mistakes fail fast with
one line, and nothing is started before the inputs and outputs are checked.

The CLI runs in-process (``s3cli.main.main``) over a tiny synthetic world; each test makes one of the
mistakes that used to lose data or work and checks the exit code, the message and what is left on disk.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from s3cli.main import main


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from s3core.data.synth import synthesize

    root = tmp_path_factory.mktemp("mistakes")
    synthesize(root / "data", seed=5, n_entities=30, n_questions=4)
    return {"root": root, "corpus": root / "data" / "corpus.jsonl", "q1": root / "data" / "synth_1hop.jsonl"}


def _tree(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _build(corpus: Path, out: Path | str, backend: str = "bm25", *extra: str) -> int:
    return main(["index", "build", "--corpus", str(corpus), "--backend", backend, "--out", str(out), "--quiet",
                 *extra])


# --- 1. `s3 index build --out` never destroys what is there ----------------------------------------

@pytest.mark.parametrize("backend", ["bm25", "dense"])
def test_index_build_refuses_a_directory_of_user_files(world: dict[str, Path], tmp_path: Path, backend: str,
                                                        capsys: Any) -> None:
    mine = tmp_path / "my-notes"
    (mine / "sub").mkdir(parents=True)
    (mine / "thesis.tex").write_text("years of work\n")
    (mine / "sub" / "data.csv").write_text("1,2,3\n")
    before = _tree(mine)
    assert _build(world["corpus"], mine, backend) == 2
    err = capsys.readouterr().err
    assert "is not an index directory" in err and str(mine) in err and "Traceback" not in err
    assert _tree(mine) == before  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my-notes"]  # no hidden .old / .tmp / .partial left


def test_index_build_refuses_a_file_and_swapped_arguments(world: dict[str, Path], tmp_path: Path,
                                                          capsys: Any) -> None:
    f = tmp_path / "results.json"
    f.write_text('{"keep": true}\n')
    assert _build(world["corpus"], f) == 2
    assert "is an existing file" in capsys.readouterr().err
    assert f.read_text() == '{"keep": true}\n' and sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]
    # --corpus and --out swapped: the corpus is the output
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_bytes(world["corpus"].read_bytes())
    assert _build(corpus, corpus) == 2
    assert "corpus" in capsys.readouterr().err
    assert corpus.read_bytes() == world["corpus"].read_bytes()
    # the corpus' own folder as --out
    assert _build(corpus, tmp_path) == 2
    assert "holds the corpus" in capsys.readouterr().err
    assert corpus.read_bytes() == world["corpus"].read_bytes()


def test_index_build_out_dot_and_bad_parent(world: dict[str, Path], tmp_path: Path, monkeypatch: Any,
                                            capsys: Any) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keep.txt").write_text("x")
    for out in (".", "..", str(tmp_path)):
        assert _build(world["corpus"], out) == 2, out
        err = capsys.readouterr().err
        assert "Traceback" not in err and ("current directory" in err or "must name" in err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
    # the output's parent is a file: refused before the corpus is read (dense: before the encoder loads)
    assert _build(world["corpus"], tmp_path / "keep.txt" / "idx", "dense") == 2
    assert "not a directory" in capsys.readouterr().err


def test_index_build_replaces_an_index_and_an_empty_dir(world: dict[str, Path], tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _build(world["corpus"], empty) == 0
    assert (empty / "manifest.json").is_file()
    first = json.loads((empty / "manifest.json").read_text())
    assert _build(world["corpus"], empty, "bm25", "--params", '{"k1": 1.2}') == 0  # an index is replaced
    second = json.loads((empty / "manifest.json").read_text())
    assert second["params"]["k1"] == 1.2 and first["params"]["k1"] != 1.2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


# --- 2, 8, 9: inputs and outputs are checked before any service starts -----------------------------

@pytest.fixture()
def no_services(monkeypatch: Any) -> None:
    """Starting a service (or Redis) fails the test: every refusal below must come before that."""
    from s3core.runtime.local import LocalStack

    def refuse(self: Any, *a: Any, **kw: Any) -> Any:
        raise AssertionError("a service was started before the mistake was found")

    monkeypatch.setattr(LocalStack, "start_service", refuse)
    monkeypatch.setattr(LocalStack, "start_redis", refuse)


def _index(world: dict[str, Path]) -> Path:
    idx = world["root"] / "idx"
    if not (idx / "manifest.json").is_file():
        assert _build(world["corpus"], idx) == 0
    return idx


def test_empty_question_file_is_refused(world: dict[str, Path], tmp_path: Path, no_services: None,
                                        capsys: Any) -> None:
    for text in ("", "\n\n"):
        empty = tmp_path / "nq.dev.jsonl"
        empty.write_text(text)
        rc = main(["eval", "--questions", str(world["q1"]), str(empty), "--method", "no-retrieval",
                   "--out", str(tmp_path / "ev"), "--quiet"])
        err = capsys.readouterr().err
        assert rc == 2 and str(empty) in err and "no questions" in err, err
    assert not (tmp_path / "ev").exists()
    rc = main(["precompute", "--questions", str(empty), "--index", str(_index(world)), "--quiet"])
    assert rc == 2 and "no questions" in capsys.readouterr().err


def test_eval_out_is_checked_before_the_services(world: dict[str, Path], tmp_path: Path, no_services: None,
                                                 capsys: Any) -> None:
    f = tmp_path / "results.json"
    f.write_text("keep\n")
    for out, msg in ((f, "is an existing file"), (f / "sub", "not a directory")):
        rc = main(["eval", "--questions", str(world["q1"]), "--method", "no-retrieval,naive-rag",
                   "--index", str(_index(world)), "--out", str(out), "--quiet"])
        err = capsys.readouterr().err
        assert rc == 2 and msg in err and "--out" in err, err
    (tmp_path / "ev").mkdir()
    (tmp_path / "ev" / "naive-rag").write_text("a file where a method's folder goes\n")
    rc = main(["eval", "--questions", str(world["q1"]), "--method", "no-retrieval,naive-rag",
               "--index", str(_index(world)), "--out", str(tmp_path / "ev"), "--quiet"])
    assert rc == 2 and "naive-rag" in capsys.readouterr().err
    assert f.read_text() == "keep\n"
    # precompute --summary-out / data filter --out at a directory: refused before Redis or services
    rc = main(["precompute", "--questions", str(world["q1"]), "--index", str(_index(world)),
               "--summary-out", str(tmp_path), "--quiet"])
    assert rc == 2 and "--summary-out" in capsys.readouterr().err
    rc = main(["data", "filter", "--questions", str(world["q1"]), "--index", str(_index(world)),
               "--out", str(tmp_path)])
    assert rc == 2 and "is a directory" in capsys.readouterr().err


def test_precompute_k_zero_is_refused_like_eval(world: dict[str, Path], no_services: None, capsys: Any) -> None:
    for cmd in (["precompute", "--quiet"], ["eval", "--method", "naive-rag", "--out", "unused", "--quiet"]):
        rc = main([*cmd, "--questions", str(world["q1"]), "--index", str(_index(world)), "--k", "0"])
        err = capsys.readouterr().err
        assert rc == 2 and "--k must be >= 1" in err, (cmd, err)


@pytest.mark.parametrize(("params", "needle"), [
    ('{"k1": "fast"}', "k1 must be a number"), ('{"k1": -1}', "k1 must be >= 0"), ('{"b": 7}', "b must be in [0, 1]"),
    ('{"method": "okapi"}', "method must be one of"), ('{"k1": true}', "k1 must be a number"),
    ('{"delta": 1}', "unknown bm25 parameter(s): delta"),
])
def test_bm25_params_are_validated_before_the_build(world: dict[str, Path], tmp_path: Path, params: str, needle: str,
                                                    capsys: Any) -> None:
    assert _build(world["corpus"], tmp_path / "idx", "bm25", "--params", params) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []  # nothing built, nothing left


def test_quiet_turns_off_the_model_loading_bars() -> None:
    """`--quiet` used to print transformers' "Loading weights: 100%|███|" bar (e.g. a dense build's
    encoder).  A fresh process: the switch must hold before transformers is first imported, and be
    inherited by the services the CLI starts (the environment)."""
    import subprocess
    import sys

    code = ("import os, sys\n"
            "import s3cli.main as m\n"
            "m._restore_env = lambda saved: None  # look at the state main() ran in\n"
            "main = m.main\n"
            "rc = main(['index', 'build', '--corpus', '/nonexistent.jsonl', '--backend', 'dense', '--out', "
            "'/nonexistent/idx', '--quiet'])\n"
            "import transformers.utils.logging as t\n"
            "from huggingface_hub.utils import are_progress_bars_disabled\n"
            "print(rc, t.is_progress_bar_enabled(), are_progress_bars_disabled(), os.environ['TQDM_DISABLE'])\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stdout.split() == ["2", "False", "True", "1"], (r.stdout, r.stderr)


def test_quiet_leaves_the_environment_as_it_was(world: dict[str, Path], tmp_path: Path, monkeypatch: Any) -> None:
    import os

    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert _build(world["corpus"], tmp_path / "idx") == 0  # --quiet, in-process
    assert "TQDM_DISABLE" not in os.environ
