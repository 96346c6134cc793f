"""Validation pieces: the bootstrap CIs, the train/validation overlap check, the best-policy record
(best.json and its copies through checkpoints, pruning and a resume that lost steps), the
validation rows of metrics.jsonl and their curve."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from s3core.config import ConfigError, load_config
from s3core.errors import InvalidArgument
from s3core.train.log import TrainLogger, plot_rewards, plot_validation, read_metrics
from s3core.train.validate import BestPolicy, ValidationResult, bootstrap_ci, check_no_overlap, paired_bootstrap_ci
from s3core.types import Question


def test_bootstrap_ci_covers_a_known_mean() -> None:
    rng = np.random.default_rng(123)
    hits, widths = 0, []
    for rep in range(200):
        x = rng.binomial(1, 0.3, size=60).astype(float)  # GenAcc-like 0/1 values, true mean 0.3
        lo, hi = bootstrap_ci(x, seed=rep, n_resamples=1000)
        assert lo <= x.mean() <= hi
        hits += lo <= 0.3 <= hi
        widths.append(hi - lo)
    assert 0.88 <= hits / 200 <= 0.99, hits  # nominal 95 % (percentile bootstrap runs slightly under)
    # the width is about 2 x 1.96 x sd/sqrt(n) = 0.23
    assert 0.18 < float(np.mean(widths)) < 0.28


def test_bootstrap_ci_is_seeded_and_checks_its_input() -> None:
    x = [float(v) for v in np.random.default_rng(0).normal(size=25)]
    assert bootstrap_ci(x, seed=5) == bootstrap_ci(x, seed=5)
    assert bootstrap_ci(x, seed=5) != bootstrap_ci(x, seed=6)
    assert bootstrap_ci([0.4] * 9, seed=1) == (pytest.approx(0.4), pytest.approx(0.4))
    assert bootstrap_ci([0.7], seed=0) == (pytest.approx(0.7), pytest.approx(0.7))
    with pytest.raises(InvalidArgument, match="at least one value"):
        bootstrap_ci([], seed=0)
    with pytest.raises(InvalidArgument, match="finite"):
        bootstrap_ci([0.0, float("nan")], seed=0)


def test_paired_bootstrap_ci_resamples_pairs() -> None:
    rng = np.random.default_rng(7)
    base = rng.normal(0.0, 1.0, size=80)  # large per-question spread shared by both systems
    a = base + 0.2 + rng.normal(0.0, 0.05, size=80)
    lo, hi = paired_bootstrap_ci(a, base, seed=0)
    assert lo < 0.2 < hi and hi - lo < 0.05  # the shared spread cancels
    # unpaired, the same difference is lost in the spread
    ulo_a, uhi_a = bootstrap_ci(a, seed=0)
    assert uhi_a - ulo_a > 5 * (hi - lo)
    assert paired_bootstrap_ci([1.0, 0.0, 1.0], [1.0, 0.0, 1.0], seed=3) == (0.0, 0.0)
    with pytest.raises(InvalidArgument, match="pairs must line up"):
        paired_bootstrap_ci([1.0, 0.0], [1.0], seed=0)


def test_overlap_with_training_questions_is_refused() -> None:
    train = [Question(id="t1", question="Who wrote Hamlet?", golden_answers=["Shakespeare"]),
             Question(id="t2", question="Where is Paris?", golden_answers=["France"])]
    ok = {"dev": [Question(id="d1", question="Who wrote Faust?", golden_answers=["Goethe"])]}
    check_no_overlap(ok, train)
    bad = {"dev": [*ok["dev"], Question(id="d9", question="who wrote  hamlet", golden_answers=["x"])]}
    with pytest.raises(InvalidArgument, match=r"dev/d9 .*who wrote  hamlet.*'t1'"):
        check_no_overlap(bad, train)


def _res(step: int, gbr: float) -> ValidationResult:
    return ValidationResult(step=step, version=step, n=10, gbr=gbr, s3_genacc=0.5 + gbr, naive_genacc=0.5,
                            ci95=(gbr - 0.1, gbr + 0.1))


def _policy(root: Path, step: int) -> Path:
    p = root / "policies" / f"step-{step:06d}"
    p.mkdir(parents=True)
    (p / "config.json").write_text(json.dumps({"step": step}))
    (p / "model.safetensors").write_bytes(bytes([step]) * 100)
    return p


def test_best_policy_record_copies_and_pruning(tmp_path: Path) -> None:
    best = BestPolicy(tmp_path)
    assert best.offer(_res(0, 0.0), _policy(tmp_path, 0))
    assert not best.offer(_res(1, 0.0), _policy(tmp_path, 1))  # a tie keeps the earlier policy
    assert best.offer(_res(2, 0.3), _policy(tmp_path, 2))
    rec = json.loads((tmp_path / "best.json").read_text())
    assert rec["step"] == rec["version"] == 2 and rec["val_gbr"] == rec["metric"] == 0.3
    assert rec["ci95"] == [pytest.approx(0.2), pytest.approx(0.4)]
    copy = Path(rec["policy_path"])
    assert copy == tmp_path / "best-policies" / "step-000002"
    assert (copy / "model.safetensors").read_bytes() == bytes([2]) * 100  # exactly the validated policy
    assert "name" not in rec  # step 2 has no checkpoint
    # nothing checkpointed yet: only the current best is kept
    assert sorted(p.name for p in (tmp_path / "best-policies").iterdir()) == ["step-000002"]
    best.checkpointed([_res(0, 0.0), _res(1, 0.0), _res(2, 0.3)])
    assert best.offer(_res(3, 0.5), _policy(tmp_path, 3))
    # the best a crash would resume to (step 2, in the checkpoint) is kept beside the new best
    assert sorted(p.name for p in (tmp_path / "best-policies").iterdir()) == ["step-000002", "step-000003"]
    # the source folder being pruned later does not touch the copy
    import shutil

    shutil.rmtree(tmp_path / "policies")
    assert (tmp_path / "best-policies" / "step-000003" / "config.json").is_file()
    assert best.summary() == {"step": 3, "version": 3, "val_gbr": 0.5, "ci95": [0.4, 0.5 + 0.1],
                              "policy_path": str(tmp_path / "best-policies" / "step-000003")}
    # a crash lost step 3: the resumed run's history ends at step 2, so best.json and the copies follow it
    again = BestPolicy(tmp_path)
    history = [_res(0, 0.0), _res(1, 0.0), _res(2, 0.3)]
    again.reconcile(history, history)
    rec = json.loads((tmp_path / "best.json").read_text())
    assert rec["step"] == 2 and Path(rec["policy_path"]).is_dir()
    assert sorted(p.name for p in (tmp_path / "best-policies").iterdir()) == ["step-000002"]
    # a checkpointed best step is named for CheckpointManager's pruning
    (tmp_path / "step-000002").mkdir()
    (tmp_path / "step-000002" / "manifest.json").write_text("{}")
    again.checkpointed(history)
    assert json.loads((tmp_path / "best.json").read_text())["name"] == "step-000002"
    from s3core.rl.checkpoint import CheckpointManager

    assert CheckpointManager(tmp_path).best() == tmp_path / "step-000002"
    with pytest.raises(Exception, match="not a model folder"):
        again.offer(_res(4, 0.9), tmp_path / "nowhere")


def test_validation_rows_logged_resumed_and_plotted(tmp_path: Path) -> None:
    log = TrainLogger(tmp_path)
    log.log_validation(0, {**_res(0, 0.0).row(), "val_is_best": True})
    for step in (1, 2):
        log.log(step, {"reward_mean": 0.1 * step, "gbr_mean": 0.0})
        log.log_validation(step, _res(step, 0.1 * step).row())
    log.close()
    TrainLogger(tmp_path, start_step=1).close()  # resumed at step 1: step 2's rows were lost
    rows = read_metrics(tmp_path / "metrics.jsonl")
    # a run that validates its start step again drops that step's old validation row
    import shutil

    shutil.copy(tmp_path / "metrics.jsonl", tmp_path / "keep.jsonl")
    TrainLogger(tmp_path, start_step=1, keep_start_validation=False).close()
    assert [(r["kind"], r["step"]) for r in read_metrics(tmp_path / "metrics.jsonl")] == [("validation", 0),
                                                                                          ("train", 1)]
    shutil.copy(tmp_path / "keep.jsonl", tmp_path / "metrics.jsonl")
    assert [(r["kind"], r["step"]) for r in rows] == [("validation", 0), ("train", 1), ("validation", 1)]
    v = rows[2]
    assert v["val_gbr"] == pytest.approx(0.1) and v["val_gbr_ci95"] == [v["val_gbr_ci95_lo"], v["val_gbr_ci95_hi"]]
    assert ValidationResult.from_row(v).ci95 == (pytest.approx(0.0), pytest.approx(0.2))
    png = plot_validation(tmp_path / "metrics.jsonl", tmp_path / "val.png")
    assert png is not None and png.read_bytes()[:4] == b"\x89PNG"
    assert plot_rewards(tmp_path / "metrics.jsonl", tmp_path / "r.png") is not None  # skips validation rows
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for f in (tmp_path / "tb").glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(f))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    assert {"val/gbr", "val/s3_genacc", "val/naive_genacc", "val/n", "train/reward_mean"} <= tags


def test_validation_config_errors() -> None:
    cfg = load_config(overrides={"train": {"val_questions": ["dev.jsonl"], "val_every": 5, "val_limit": 100}})
    assert (cfg.train.val_every, cfg.train.val_limit, cfg.train.val_before_train) == (5, 100, False)
    for over, message in [({"val_every": -1}, "train.val_every must be >= 0"),
                          ({"val_limit": -2}, "train.val_limit must be >= 0"),
                          ({"val_batch_size": 0}, "train.val_batch_size must be >= 1"),
                          ({"val_questions": "dev.jsonl"}, "train.val_questions")]:
        with pytest.raises(ConfigError, match=message):
            load_config(overrides={"train": over})


def test_s3_train_validation_flags(tmp_path: Path) -> None:
    from s3cli.main import build_parser
    from s3cli.train import _config

    train = tmp_path / "train.jsonl"
    train.write_text('{"id": "1", "question": "q?", "golden_answers": ["a"]}\n')
    args = build_parser().parse_args(["train", "--questions", str(train), "--val-questions", "a.jsonl",
                                      "--val-questions", "b.jsonl", "--val-every", "3", "--val-before-train",
                                      "--val-limit", "50", "--val-batch-size", "16"])
    cfg, embedded = _config(args)
    assert not embedded
    t = cfg.train
    assert (t.val_questions, t.val_every, t.val_before_train, t.val_limit, t.val_batch_size) == (
        ["a.jsonl", "b.jsonl"], 3, True, 50, 16)
    cfg, _ = _config(build_parser().parse_args(["train", "--questions", str(train), "--no-val-before-train"]))
    assert cfg.train.val_before_train is False and cfg.train.val_questions == []
