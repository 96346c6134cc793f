"""`s3 sft` end to end: a real synthetic world, a real BM25 index, the tiny model, the real CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from s3core.data.synth import synthesize
    from s3core.retrieval.index import build_index
    from s3core.rl.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("sft")
    synthesize(root / "world", seed=11, n_entities=40, n_questions=6)
    build_index(root / "world" / "corpus.jsonl", "bm25", root / "idx", show_progress=False)
    return {"root": root, "world": root / "world", "index": root / "idx", "model": build_tiny_model(root / "tiny")}


def test_sft_synth_teacher_end_to_end(setup: dict[str, Path]) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from s3cli.main import main
    from s3core.train.teacher import load_trajectory_file

    out = setup["root"] / "run"
    cmd = [sys.executable, "-m", "s3cli", "sft", "--synth-teacher",
           "--questions", str(setup["world"] / "synth_1hop.jsonl"), "--questions", str(setup["world"] / "synth_2hop.jsonl"),
           "--index", str(setup["index"]), "--model", str(setup["model"]), "--out", str(out), "--device", "cpu",
           "--epochs", "2", "--lr", "5e-3", "--batch-size", "4", "--micro-batch-size", "4", "--max-examples", "4",
           "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)  # generous: the CPU time is ~15 s, a loaded machine stretches it
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "fine-tuned" in proc.stdout and f"s3 train --init-from {out / 'policy'}" in proc.stdout

    rows = [json.loads(line) for line in (out / "sft_metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and [r["epoch"] for r in rows] == [1, 2]
    summary = json.loads((out / "sft_summary.json").read_text())
    assert summary["examples"] == 4 and summary["steps"] == 2
    model = AutoModelForCausalLM.from_pretrained(out / "policy")
    tok = AutoTokenizer.from_pretrained(out / "policy")
    base = AutoModelForCausalLM.from_pretrained(setup["model"])
    teach = load_trajectory_file(out / "teacher_trajectories.jsonl")
    assert len(teach) == 4
    ids = torch.tensor([teach[0].token_ids[:64]])
    with torch.no_grad():  # trained: the weights moved
        assert not torch.allclose(model(input_ids=ids).logits, base(input_ids=ids).logits)
    prompt = tok.decode(teach[0].token_ids[: teach[0].prompt_length])
    assert '<information block="0">' in prompt and '<information block="1"' not in prompt
    from s3core.data.io import load_questions

    golds = {q.id: q.metadata["gold_passage_ids"] for f in ("synth_1hop.jsonl", "synth_2hop.jsonl")
             for q in load_questions(setup["world"] / f)}  # the trajectory records carry no metadata
    for t in teach:  # teacher turns are well-formed and select gold passages only
        assert all(turn.valid_action for turn in t.turns)
        assert {d.id for d in t.context} <= set(golds[t.question.id])

    # the written trajectories are a teacher source themselves (the `s3 eval --method s3` format)
    out2 = setup["root"] / "run2"
    rc = main(["sft", "--trajectories", str(out / "teacher_trajectories.jsonl"), "--model", str(out / "policy"),
               "--out", str(out2), "--device", "cpu", "--epochs", "1", "--batch-size", "4", "--quiet"])
    assert rc == 0
    assert len((out2 / "sft_metrics.jsonl").read_text().splitlines()) == 1
    assert (out2 / "policy" / "model.safetensors").is_file()


def test_sft_errors(setup: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    from s3cli.main import build_parser, main

    bad = setup["root"] / "bad.jsonl"
    bad.write_text('{"trajectory": {}}\n{oops\n')
    assert main(["sft", "--trajectories", str(bad), "--model", str(setup["model"]), "--out",
                 str(setup["root"] / "x"), "--quiet"]) == 2
    assert f"{bad}:1:" in capsys.readouterr().err  # an empty trajectory: no turn, no block
    bad.write_text("")
    assert main(["sft", "--trajectories", str(bad), "--model", str(setup["model"]), "--quiet",
                 "--out", str(setup["root"] / "x")]) == 2
    assert "no trajectories" in capsys.readouterr().err
    assert main(["sft", "--model", str(setup["model"])]) == 2
    assert "no teacher" in capsys.readouterr().err
    assert main(["sft", "--index", str(setup["index"]), "--trajectories", str(bad)]) == 2
    assert "--synth-teacher" in capsys.readouterr().err
    assert main(["sft", "--synth-teacher", "--trajectories", str(bad)]) == 2
    assert "not both" in capsys.readouterr().err
    assert build_parser().parse_args(["train", "--init-from", "runs/sft/policy"]).model == "runs/sft/policy"
