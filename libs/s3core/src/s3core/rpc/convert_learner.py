"""``s3.v1`` learner messages <-> :class:`~s3core.search.scored.ScoredTrajectory` (the trajectory itself
through :mod:`s3core.rpc.convert`)."""

from __future__ import annotations

from s3.v1 import learner_pb2
from s3core.rpc.convert import trajectory_from_pb, trajectory_to_pb
from s3core.search.scored import ScoredTrajectory


def scored_to_pb(s: ScoredTrajectory) -> learner_pb2.ScoredTrajectory:
    return learner_pb2.ScoredTrajectory(trajectory=trajectory_to_pb(s.trajectory), reward=s.reward, gbr=s.gbr,
                                        context_acc=s.context_acc, baseline_acc=s.baseline_acc)


def scored_from_pb(p: learner_pb2.ScoredTrajectory) -> ScoredTrajectory:
    return ScoredTrajectory(trajectory_from_pb(p.trajectory), float(p.reward), float(p.gbr), float(p.context_acc),
                            float(p.baseline_acc))
