"""Prometheus metrics of a training run (``s3_train_*``), set by whichever process holds the step's
numbers: the learner service on each ``Update``, or ``s3 train`` when it updates in process."""

from __future__ import annotations

from typing import Mapping

from prometheus_client import Counter, Gauge

STEP = Gauge("s3_train_step", "Last completed RL step.")
POLICY_VERSION = Gauge("s3_train_policy_version", "Policy version published by the learner.")
STEPS = Counter("s3_train_steps_total", "RL steps completed by this process.")
TRAJECTORIES = Counter("s3_train_trajectories_total", "Trajectories trained on.")
TOKENS = Counter("s3_train_tokens_total", "Tokens (prompt, actions and observations) in trained trajectories.")
STAT = Gauge("s3_train_stat", "Per-step training statistic of the last step (reward_mean, gbr_mean, kl, entropy, "
             "clip_fraction, value_loss, tokens_per_second, ...).", ["name"])
PHASE_SECONDS = Gauge("s3_train_phase_seconds", "Seconds spent in each phase of the last step.", ["phase"])

PHASES = ("rollout", "reward", "update", "publish")


def publish(step: int, version: int, stats: Mapping[str, float], trajectories: int = 0) -> None:
    STEP.set(step)
    POLICY_VERSION.set(version)
    STEPS.inc()
    TRAJECTORIES.inc(trajectories)
    TOKENS.inc(float(stats.get("tokens", 0.0)))
    for name, value in stats.items():
        if name.endswith("_seconds") and name[: -len("_seconds")] in PHASES:
            PHASE_SECONDS.labels(name[: -len("_seconds")]).set(value)
        else:
            STAT.labels(name).set(value)
