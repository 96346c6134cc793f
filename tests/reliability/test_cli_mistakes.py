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
    assert "is a file, not a directory" in capsys.readouterr().err


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
