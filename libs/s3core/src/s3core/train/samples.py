"""Scored trajectories (:class:`~s3core.search.scored.ScoredTrajectory`): what the driver sends the learner,
and their algorithm view (:class:`Sample`).  Their wire form is :mod:`s3core.rpc.convert_learner`'s ``scored_to_pb`` /
``scored_from_pb``."""

from __future__ import annotations

import math
from typing import Any

from s3core.cache.keys import baseline_dataset
from s3core.errors import InvalidArgument
from s3core.rpc.convert_learner import scored_from_pb, scored_to_pb  # noqa: F401  (the learner's wire form, re-exported)
from s3core.search.scored import ScoredTrajectory
from s3core.search.trajectory import Trajectory

__all__ = ["ScoredTrajectory", "group_key", "scored_from_pb", "scored_to_pb", "to_sample"]


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
