"""A trajectory with its reward: what the training driver sends the learner (a domain type; its wire form is
:mod:`s3core.rpc.convert_learner`, its algorithm view :func:`s3core.train.samples.to_sample`)."""

from __future__ import annotations

from dataclasses import dataclass

from s3core.search.trajectory import Trajectory

__all__ = ["ScoredTrajectory"]


@dataclass
class ScoredTrajectory:
    """A trajectory with its reward: what the training driver sends the learner (:mod:`s3core.train.samples`)."""

    trajectory: Trajectory
    reward: float  # placed on the last action token
    gbr: float = 0.0  # context_acc - baseline_acc (logged whatever the reward mode)
    context_acc: float = 0.0
    baseline_acc: float = 0.0
