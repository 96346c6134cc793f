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


VAL_GBR = Gauge("s3_train_val_gbr", "Held-out GBR (s3 GenAcc - naive-RAG GenAcc) of the last validated policy.")
VAL_S3_GENACC = Gauge("s3_train_val_s3_genacc", "Held-out GenAcc of the s3 context of the last validated policy.")
VAL_NAIVE_GENACC = Gauge("s3_train_val_naive_genacc", "Held-out naive-RAG GenAcc (baseline cache).")
VAL_N = Gauge("s3_train_val_questions", "Validation questions of the last validation.")
VAL_CI = Gauge("s3_train_val_gbr_ci95", "Bootstrap 95% CI bounds of the last held-out GBR.", ["bound"])
VAL_STEP = Gauge("s3_train_val_step", "RL step whose policy was validated last (0 = the initial policy).")
VAL_BEST_GBR = Gauge("s3_train_val_best_gbr", "Best held-out GBR so far (best.json).")
VAL_BEST_STEP = Gauge("s3_train_val_best_step", "RL step of the best validated policy.")
VALIDATIONS = Counter("s3_train_validations_total", "Validations run by this process.")


def publish_validation(step: int, gbr: float, s3_genacc: float, naive_genacc: float, n: int,
                       ci95: tuple[float, float], best_step: int | None, best_gbr: float | None) -> None:
    VAL_STEP.set(step)
    VAL_GBR.set(gbr)
    VAL_S3_GENACC.set(s3_genacc)
    VAL_NAIVE_GENACC.set(naive_genacc)
    VAL_N.set(n)
    VAL_CI.labels("lo").set(ci95[0])
    VAL_CI.labels("hi").set(ci95[1])
    VALIDATIONS.inc()
    if best_step is not None and best_gbr is not None:
        VAL_BEST_STEP.set(best_step)
        VAL_BEST_GBR.set(best_gbr)
