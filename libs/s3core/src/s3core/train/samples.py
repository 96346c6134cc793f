"""Scored trajectories: what the driver sends the learner, and their algorithm view (:class:`Sample`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from s3.v1 import learner_pb2
from s3core.cache.keys import baseline_dataset
from s3core.errors import InvalidArgument
from s3core.rpc.convert import trajectory_from_pb, trajectory_to_pb
from s3core.search.trajectory import Trajectory

__all__ = ["ScoredTrajectory", "group_key", "scored_from_pb", "scored_to_pb", "to_sample"]


@dataclass
class ScoredTrajectory:
    trajectory: Trajectory
    reward: float  # placed on the last action token
    gbr: float = 0.0  # context_acc - baseline_acc (logged whatever the reward mode)
    context_acc: float = 0.0
    baseline_acc: float = 0.0


def group_key(t: Trajectory) -> str:
    """GRPO group of a trajectory: its question (dataset and id)."""
    return f"{baseline_dataset(t.question)}/{t.question.id}"


def to_sample(s: ScoredTrajectory, index: int = 0) -> Any:
    from s3core.rl.batch import Sample

    t = s.trajectory
    if not math.isfinite(s.reward):
        raise InvalidArgument(f"trajectory {index} (question {t.question.id!r}): reward is not finite ({s.reward})")
    if len(t.token_ids) != len(t.action_mask):
        raise InvalidArgument(f"trajectory {index} (question {t.question.id!r}): {len(t.token_ids)} token ids but "
                              f"{len(t.action_mask)} mask values")
    return Sample(token_ids=list(t.token_ids), action_mask=list(t.action_mask), reward=float(s.reward),
                  group=group_key(t))


def scored_to_pb(s: ScoredTrajectory) -> learner_pb2.ScoredTrajectory:
    return learner_pb2.ScoredTrajectory(trajectory=trajectory_to_pb(s.trajectory), reward=s.reward, gbr=s.gbr,
                                        context_acc=s.context_acc, baseline_acc=s.baseline_acc)


def scored_from_pb(p: learner_pb2.ScoredTrajectory) -> ScoredTrajectory:
    return ScoredTrajectory(trajectory_from_pb(p.trajectory), float(p.reward), float(p.gbr), float(p.context_acc),
                            float(p.baseline_acc))
