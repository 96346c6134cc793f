"""Prometheus metrics of the learner service (``s3_learner_*``).  The training run's own numbers (reward, KL,
step, policy version, ...) are the ``s3_train_*`` metrics of :mod:`s3core.train.metrics`, set on each Update."""

from __future__ import annotations

from prometheus_client import Histogram

from s3core.telemetry.metrics import LATENCY_BUCKETS

UPDATE_SECONDS = Histogram(
    "s3_learner_update_seconds",
    "Time of one successful Update: the RL step, its checkpoint and the exported policy.",
    buckets=(*LATENCY_BUCKETS, 300.0, 600.0, 1800.0, 3600.0),
)
