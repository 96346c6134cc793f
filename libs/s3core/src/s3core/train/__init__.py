"""Training runs of the s3 searcher: the RL loop over the services (:mod:`.run`), the learner's
state (:mod:`.learner_core`), data cursor, scored trajectories, logging and metrics.

``run_training`` is imported lazily so ``import s3core.train`` stays light."""

from __future__ import annotations

from typing import Any

__all__ = ["TrainJob", "TrainSummary", "run_training"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from s3core.train import run

        return getattr(run, name)
    raise AttributeError(name)
