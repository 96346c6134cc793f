"""The training driver's parts that need no model: the data cursor, Update validation, the metrics log."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from s3.v1 import learner_pb2, searcher_pb2
from s3core.config import load_config
from s3core.errors import ConfigError, InvalidArgument
from s3core.train.data import TrainData
from s3core.train.log import TrainLogger, plot_rewards, read_metrics
from s3core.types import Question


def _qs(n: int) -> list[Question]:
    return [Question(id=str(i), question=f"q{i}", golden_answers=[str(i)], dataset="d") for i in range(n)]


def test_batches_cover_each_epoch_once_and_reshuffle() -> None:
    d = TrainData(_qs(10), seed=3)
    first = [q.id for q in d.next_batch(4) + d.next_batch(4) + d.next_batch(2)]
    assert sorted(first, key=int) == [str(i) for i in range(10)]
    second = [q.id for q in d.next_batch(10)]
    assert sorted(second, key=int) == sorted(first, key=int) and second != first
    assert d.state() == {"epoch": 2, "pos": 0, "seed": 3, "size": 10}


def test_batch_straddles_epochs_and_resume_is_exact() -> None:
    a = TrainData(_qs(7), seed=1)
    a.next_batch(5)
    state = a.state()
    rest_a = [q.id for q in a.next_batch(5) + a.next_batch(3)]
    b = TrainData(_qs(7), seed=1)
    b.restore(state)
    assert [q.id for q in b.next_batch(5) + b.next_batch(3)] == rest_a
    with pytest.raises(InvalidArgument, match="cursor is for 7 questions"):
        TrainData(_qs(8), seed=1).restore(state)


def test_train_data_rejects_empty_and_bad_batch() -> None:
    with pytest.raises(InvalidArgument):
        TrainData([], seed=0)
    with pytest.raises(InvalidArgument, match="batch size"):
        TrainData(_qs(2)).next_batch(0)


def _scored(ids: list[int], mask: list[int], reward: float = 1.0) -> learner_pb2.ScoredTrajectory:
    q = searcher_pb2.Trajectory(token_ids=ids, action_mask=mask, prompt_length=1)
    q.question.id, q.question.question, q.question.dataset = "q1", "who?", "d"
    return learner_pb2.ScoredTrajectory(trajectory=q, reward=reward)


@pytest.mark.parametrize("traj, step, state, message", [
    ([], 1, "", "trajectories is empty"),
    ([_scored([1, 2, 3], [0, 1, 1])], 0, "", "step must be >= 1"),
    ([_scored([1, 2, 3], [0, 1])], 1, "", r"trajectories\[0\]: 3 token_ids but 2 action_mask"),
    ([_scored([1, 2, 3], [0, 0, 0])], 1, "", "no action token"),
    ([_scored([1, 2, 3], [0, 2, 1])], 1, "", "must be 0 or 1"),
    ([_scored([1, 2, 3], [0, 1, 1], float("nan"))], 1, "", "reward is not finite"),
    ([_scored([1, 2, 3], [0, 1, 1])], 1, "[1]", "must be a JSON object"),
    ([_scored([1, 2, 3], [0, 1, 1])], 1, "{", "not JSON"),
    ([_scored(list(range(50)), [1] * 50)], 1, "", "limit is 40"),
])
def test_update_validation(traj: list, step: int, state: str, message: str) -> None:
    from s3_learner.servicer import validate_update

    req = learner_pb2.UpdateRequest(trajectories=traj, step=step, run_state_json=state)
    with pytest.raises(InvalidArgument, match=message):
        validate_update(req, max_trajectories=8, max_tokens=40)


def test_update_validation_accepts_and_groups_by_question() -> None:
    from s3_learner.servicer import validate_update

    req = learner_pb2.UpdateRequest(trajectories=[_scored([5, 6, 7], [0, 1, 1], 0.5)] * 2, step=3,
                                    run_state_json=json.dumps({"data": {"pos": 4}}))
    samples, state = validate_update(req, 8, 40)
    assert [s.reward for s in samples] == [0.5, 0.5]
    assert samples[0].group == samples[1].group == "d/q1"
    assert state == {"data": {"pos": 4}}


def test_metrics_log_resume_drops_lost_steps_and_plots(tmp_path: Path) -> None:
    log = TrainLogger(tmp_path)
    for step in (1, 2, 3):
        log.log(step, {"reward_mean": 0.1 * step, "gbr_mean": 0.0, "reward_share_pos": 0.5})
    log.close()
    with (tmp_path / "metrics.jsonl").open("a") as fh:
        fh.write('{"step": 4, "rew')  # a torn line from a crash
    resumed = TrainLogger(tmp_path, start_step=2)  # the checkpoint was at step 2: step 3 is redone
    resumed.log(3, {"reward_mean": 0.9, "gbr_mean": 0.1, "reward_share_pos": 1.0})
    resumed.close()
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [(r["step"], r["reward_mean"]) for r in rows] == [(1, 0.1), (2, 0.2), (3, 0.9)]
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    png = plot_rewards(tmp_path / "metrics.jsonl", tmp_path / "curve.png")
    assert png is not None and png.read_bytes()[:4] == b"\x89PNG"


def test_rl_and_train_config_errors() -> None:
    for over, message in [
        ({"rl": {"algorithm": "a2c"}}, "rl.algorithm must be one of"),
        ({"rl": {"clip_ratio": 1.5}}, "rl.clip_ratio"),
        ({"rl": {"algorithm": "grpo", "group_size": 1}}, "group_size must be >= 2"),
        ({"rl": {"lora_target_modules": "q_proj"}}, "rl.lora_target_modules must be a list"),
        ({"rl": {"actor_lr": 0}}, "rl.actor_lr"),
        ({"train": {"steps": 0}}, "train.steps must be >= 1"),
        ({"train": {"questions": "a.jsonl"}}, "train.questions must be a list"),
        ({"train": {"bogus": 1}}, "unknown config key train.bogus"),
        ({"learner": {"port": 70000}}, "learner.port"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_config(overrides=over)
    cfg = load_config(presets=["embedded"])
    assert cfg.train.steps == 3 and cfg.rl.algorithm == "ppo"
    assert load_config().rl.actor_lr == 1e-6 and load_config().train.batch_size == 120  # the paper's setting


def test_shipped_training_configs_load() -> None:
    root = Path(__file__).resolve().parents[2] / "configs"
    files = sorted(root.glob("*.yaml"))
    assert files
    for f in files:
        cfg = load_config(f)
        assert cfg.train.questions and cfg.train.steps >= 1, f


def test_s3_train_rejects_bad_input_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from s3cli.main import main

    q = tmp_path / "q.jsonl"
    q.write_text('{"id": "1", "question": "who?", "golden_answers": ["x"]}\n')
    idx = tmp_path / "idx"
    cases = [
        (["--questions", str(q), "--steps", "0"], "train.steps must be >= 1"),
        (["--questions", str(q), "--algorithm", "grpo", "--config", str(tmp_path / "missing.yaml")], "no such config"),
        (["--questions", str(tmp_path / "nope.jsonl"), "--index", str(idx)], "not an index directory"),
    ]
    idx.mkdir()
    for argv, message in cases:
        assert main(["train", "--quiet", "--checkpoint-dir", str(tmp_path / "ck"), *argv]) == 2
        assert message in capsys.readouterr().err
    (idx / "manifest.json").write_text("{}")
    assert main(["train", "--quiet", "--checkpoint-dir", str(tmp_path / "ck"), "--index", str(idx),
                 "--questions", str(tmp_path / "nope.jsonl")]) == 2
    assert "nope.jsonl: no such file" in capsys.readouterr().err
    assert not (tmp_path / "ck").exists() or not any((tmp_path / "ck").glob("step-*"))


def test_float_knobs_accept_yaml_exponent_strings() -> None:
    import yaml

    # YAML 1.1 (PyYAML) reads 1e-06 -- how Helm and many tools write it -- as a string
    cfg = load_config(overrides=yaml.safe_load("rl: {actor_lr: 1e-06, critic_lr: 2.0e-5}"))
    assert cfg.rl.actor_lr == 1e-6 and cfg.rl.critic_lr == 2e-5
    with pytest.raises(ConfigError, match="rl.actor_lr must be a number, got 'fast'"):
        load_config(overrides={"rl": {"actor_lr": "fast"}})


def test_dynamic_sampling_keeps_only_groups_whose_rewards_differ() -> None:
    from types import SimpleNamespace

    from s3core.train.run import _informative_groups

    rewards = [0, 0, 1, 0, 1, 1, 0.5, 0.25, -1, -1]  # five groups of two
    scored = [SimpleNamespace(reward=r, i=i) for i, r in enumerate(rewards)]
    assert [s.i for s in _informative_groups(scored, 2)] == [2, 3, 6, 7]
    assert _informative_groups(scored[:2], 2) == []
    assert [s.i for s in _informative_groups(scored[:6], 3)] == [0, 1, 2, 3, 4, 5]  # (0,0,1) and (0,1,1)


def test_dynamic_sampling_config() -> None:
    cfg = load_config(overrides={"rl": {"algorithm": "grpo", "filter_groups": True, "filter_max_rounds": 4}})
    assert cfg.rl.filter_groups and cfg.rl.filter_max_rounds == 4
    with pytest.raises(ConfigError, match="rl.filter_max_rounds must be >= 1"):
        load_config(overrides={"rl": {"algorithm": "grpo", "filter_max_rounds": 0}})
    with pytest.raises(ConfigError, match="rl.filter_groups needs rl.algorithm: grpo"):
        load_config(overrides={"rl": {"algorithm": "ppo", "filter_groups": True}})
