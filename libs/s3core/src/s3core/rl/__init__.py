"""The RL update of the searcher (spec §6): PPO with a critic, or GRPO, in plain torch.

* :mod:`s3core.rl.algos` -- the tensor maths (log-probs, GAE over action tokens, GRPO advantages,
  clipped losses, KL estimators);
* :mod:`s3core.rl.batch` -- :class:`Sample` (one trajectory) and :func:`collate`;
* :mod:`s3core.rl.models` -- policy / LoRA / critic / reference construction;
* :mod:`s3core.rl.trainer` -- :class:`RLTrainer` (``step``, state, ``export_policy``);
* :mod:`s3core.rl.checkpoint` -- :class:`CheckpointManager` (atomic, verified, pruned checkpoints);
* :mod:`s3core.rl.tiny` -- a tiny random model for tests and benchmarks.

Importing this package does not import torch: the names below load their module on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from s3core.rl.batch import Sample, collate
    from s3core.rl.checkpoint import CheckpointManager
    from s3core.rl.models import ValueModel
    from s3core.rl.tiny import build_tiny_model
    from s3core.rl.trainer import RLTrainer

__all__ = ["CheckpointManager", "RLTrainer", "Sample", "ValueModel", "build_tiny_model", "collate"]

_LAZY = {
    "Sample": "s3core.rl.batch",
    "collate": "s3core.rl.batch",
    "CheckpointManager": "s3core.rl.checkpoint",
    "ValueModel": "s3core.rl.models",
    "build_tiny_model": "s3core.rl.tiny",
    "RLTrainer": "s3core.rl.trainer",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 's3core.rl' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
