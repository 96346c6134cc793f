"""The training loop end to end against real services on loopback: a real redis-server, the
retriever over a BM25 index of the synthetic world, a generator and a searcher serving a tiny
Qwen2 model built for the test, and the learner either in process or as a real service.

* two PPO steps in process: versions published to the searcher, checkpoints that verify, logs;
* GRPO through the learner service, with the learner SIGKILLed mid-run: a restarted learner
  resumes from its last checkpoint and the driver's ``--resume`` finishes the run with every step
  logged once and the data cursor continued (not restarted).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from s3core.config import load_config
from s3core.data.io import load_questions
from s3core.errors import S3Error
from s3core.rpc.clients import LearnerClient, SearcherClient
from s3core.train.run import TrainJob, run_training

KNOBS = {"initial_k": 2, "retrieve_k": 2, "max_turns": 1, "max_new_tokens": 12, "max_obs_tokens": 200}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from s3core.data.synth import synthesize
    from s3core.retrieval.index import build_index
    from s3core.rl.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("train-world")
    synthesize(root / "data", seed=3, n_questions=12)
    build_index(root / "data" / "corpus.jsonl", "bm25", root / "idx", show_progress=False)
    model = build_tiny_model(root / "tiny", seed=1)
    return {"root": root, "index": root / "idx", "questions": root / "data" / "synth_1hop.jsonl", "model": model}


@pytest.fixture(scope="module")
def services(world: dict[str, Any], service_runner: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    model = str(world["model"])
    with service_runner("s3_retriever", ["--index", str(world["index"])], tmp_path_factory.mktemp("ret")) as ret, \
            service_runner("s3_generator", ["--backend", "hf", "--model", model],
                           tmp_path_factory.mktemp("gen")) as gen:
        yield {"retriever": ret.grpc_target, "generator": gen.grpc_target}


def _config(world: dict[str, Any], services: dict, ckdir: Path, **train: Any) -> Any:
    model = str(world["model"])
    return load_config(overrides={
        "search": KNOBS,
        "generator": {"judge": "none", "max_new_tokens": 8},
        "searcher": {"model": model},
        "reward": {"on_missing_baseline": "compute"},
        "rl": {"actor_lr": 1e-3, "critic_lr": 1e-3, "micro_batch_size": 2, **train.pop("rl", {})},
        "train": {"questions": [str(world["questions"])], "filter": False, "batch_size": 2,
                  "checkpoint_dir": str(ckdir), "retriever": services["retriever"],
                  "generator": services["generator"], **train},
    })


def _searcher(world: dict[str, Any], services: dict, service_runner: Any, workdir: Path) -> Any:
    workdir.mkdir(exist_ok=True)
    return service_runner("s3_searcher", ["--retriever", services["retriever"], "--model", str(world["model"]),
                                          "--threads", "1"], workdir)


def test_two_ppo_steps_in_process(world: dict[str, Any], services: dict, redis_url: str, service_runner: Any,
                                  tmp_path: Path) -> None:
    from s3core.rl.checkpoint import CheckpointManager

    ckdir = tmp_path / "ckpt"
    with _searcher(world, services, service_runner, tmp_path / "s") as s:
        cfg = _config(world, services, ckdir, steps=2, searcher=s.grpc_target)
        summary = run_training(TrainJob(config=cfg, show_progress=False, redis_url=redis_url, resume=False))
        assert (summary.steps, summary.version, summary.start_step) == (2, 2, 0)
        client = SearcherClient(s.grpc_target)
        info = client.policy_info()
        client.close()
        # the searcher serves the learner's last version, from the folder the learner published
        assert info.version == 2
        assert Path(info.checkpoint_path).resolve() == Path(summary.policy_path).resolve()
        assert (Path(summary.policy_path) / "config.json").is_file()
        rows = [json.loads(x) for x in (ckdir / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == [1, 2]
        for r in rows:
            assert r["trajectories"] == 2
            for key in ("reward_mean", "gbr_mean", "kl", "entropy", "value_loss", "clip_fraction", "tokens_per_second",
                        "rollout_seconds", "reward_seconds", "update_seconds", "approx_kl", "reward_std",
                        "advantage_mean", "skipped_updates", "value_grad_norm"):
                assert key in r, key
            assert abs(r["reward_share_neg"] + r["reward_share_zero"] + r["reward_share_pos"] - 1.0) < 1e-9
        assert (ckdir / "reward_curve.png").stat().st_size > 1000
        assert list((ckdir / "tb").glob("events.out.tfevents.*"))
        latest = CheckpointManager(ckdir).latest()
        assert latest is not None and latest.name.endswith("000002")
        state = json.loads((latest / "extra.json").read_text())["extra"]
        assert state["step"] == 2 and state["data"]["pos"] == 4  # two batches of two drawn
        # a fresh run into a used checkpoint dir is refused, a resumed one has nothing left to do
        with pytest.raises(S3Error, match="already holds checkpoints"):
            run_training(TrainJob(config=cfg, show_progress=False, redis_url=redis_url, resume=False))
        again = run_training(TrainJob(config=cfg, show_progress=False, redis_url=redis_url, resume=True))
        assert again.steps == 2 and again.start_step == 2


def test_grpo_dynamic_sampling_rolls_out_more_and_updates_on_informative_groups(
        world: dict[str, Any], services: dict, redis_url: str, service_runner: Any, tmp_path: Path) -> None:
    ckdir = tmp_path / "ckpt"
    with _searcher(world, services, service_runner, tmp_path / "s") as s:
        cfg = _config(world, services, ckdir, steps=2, searcher=s.grpc_target,
                      rl={"algorithm": "grpo", "group_size": 2, "filter_groups": True, "filter_max_rounds": 2})
        summary = run_training(TrainJob(config=cfg, show_progress=False, redis_url=redis_url, resume=False))
        assert summary.steps == 2 and summary.version == 2
    rows = [json.loads(x) for x in (ckdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    drawn = 0
    for r in rows:
        assert 1 <= r["rollout_rounds"] <= 2
        assert r["groups_seen"] == 2 * r["rollout_rounds"]  # batch_size questions a round
        assert r["trajectories"] == 2 * r["groups_seen"]  # every rollout is logged, filtered or not
        assert r["groups_informative"] <= r["groups_seen"]
        # the informative groups, at most a batch of them; none found: the first round's batch
        assert r["trajectories_updated"] == 2 * (min(2, r["groups_informative"]) or 2)
        if r["rollout_rounds"] == 1:  # stopped early only with a full batch of informative groups
            assert r["groups_informative"] >= 2 and r["reward_std"] > 0
        drawn += r["groups_seen"]
    from s3core.rl.checkpoint import CheckpointManager

    latest = CheckpointManager(ckdir).latest()
    assert latest is not None
    state = json.loads((latest / "extra.json").read_text())["extra"]
    assert state["data"]["pos"] + state["data"]["epoch"] * state["data"]["size"] == drawn  # the cursor saw all


def _learner(world: dict[str, Any], ckdir: Path, service_runner: Any, workdir: Path) -> Any:
    workdir.mkdir(exist_ok=True)
    (workdir / "ready.json").unlink(missing_ok=True)
    return service_runner("s3_learner", ["--checkpoint-dir", str(ckdir), "--model", str(world["model"]),
                                         "--algorithm", "grpo", "--device", "cpu", "--threads", "1"], workdir)


def test_grpo_with_learner_service_killed_mid_run(world: dict[str, Any], services: dict, redis_url: str,
                                                  service_runner: Any, tmp_path: Path) -> None:
    ckdir = tmp_path / "ckpt"
    with _searcher(world, services, service_runner, tmp_path / "s") as s:
        with _learner(world, ckdir, service_runner, tmp_path / "l1") as learner:
            cfg = _config(world, services, ckdir, steps=3, searcher=s.grpc_target, learner=learner.grpc_target,
                          rl={"algorithm": "grpo", "group_size": 2})
            errors: list[BaseException] = []

            def drive() -> None:
                try:
                    run_training(TrainJob(config=cfg, show_progress=False, redis_url=redis_url))
                except BaseException as exc:  # noqa: BLE001 - the failure is the point
                    errors.append(exc)

            th = threading.Thread(target=drive)
            th.start()
            deadline = time.monotonic() + 300
            metrics = ckdir / "metrics.jsonl"

            def logged() -> int:
                return len(metrics.read_text().splitlines()) if metrics.is_file() else 0

            while logged() < 1 and time.monotonic() < deadline and th.is_alive():
                time.sleep(0.02)
            assert logged() == 1, "the first step never finished"
            os.kill(learner.proc.pid, signal.SIGKILL)  # step 2 is in flight: its rollout or its update
            th.join(timeout=300)
            assert not th.is_alive()
        assert errors and isinstance(errors[0], S3Error), errors
        done = {int(p.name.split("-")[1]) for p in ckdir.glob("step-*")}
        assert 1 in done and 3 not in done
        assert [json.loads(x)["step"] for x in (ckdir / "metrics.jsonl").read_text().splitlines()] == [1]
        with _learner(world, ckdir, service_runner, tmp_path / "l2") as learner2:
            client = LearnerClient(learner2.grpc_target)
            resumed_at = client.status().step
            assert resumed_at == max(done)  # the newest checkpoint, nothing half-written
            cfg.train.learner = learner2.grpc_target
            from s3core.train import metrics as train_metrics

            train_metrics.PHASE_SECONDS.labels("publish").set(-1.0)
            summary = run_training(TrainJob(config=cfg, show_progress=False, redis_url=redis_url))
            # learner-service mode: the driver still exports the phase it owns (LoadPolicy on the searcher)
            assert train_metrics.PHASE_SECONDS.labels("publish")._value.get() >= 0.0
            assert summary.start_step == resumed_at and summary.steps == 3 and summary.version == 3
            st = client.status()
            client.close()
            assert st.step == 3 and st.algorithm == "grpo"
        info = SearcherClient(s.grpc_target).policy_info()
        assert info.version == 3
    rows = [json.loads(x) for x in (ckdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(r["trajectories"] == 4 for r in rows)  # 2 questions x group of 2
    # the data cursor continued: the three steps drew six distinct questions of the twelve
    state = json.loads(st.run_state_json)
    assert state["data"] == {"epoch": 0, "pos": 6, "seed": 0, "size": len(load_questions(world["questions"]))}
