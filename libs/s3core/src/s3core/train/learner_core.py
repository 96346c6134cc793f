"""The learner's state machine, shared by the learner service and in-process training.

A :class:`LearnerCore` owns the :class:`~s3core.rl.trainer.RLTrainer` (policy, critic, reference,
optimisers) and the :class:`~s3core.rl.checkpoint.CheckpointManager`.  Each :meth:`update` is one RL
step: it must carry step = current step + 1 (a retried request for the step just applied returns the
same result instead of training twice; any other step is refused), then it publishes the new policy
version as a Hugging Face folder the searcher's ``LoadPolicy`` reads: the checkpoint's ``policy/``
when the step is checkpointed, else ``<checkpoint_dir>/policies/step-N`` (the last two kept).

On start the core resumes from the newest checkpoint that verifies (a corrupt or partial one is
skipped, see :meth:`CheckpointManager.latest`), so a learner killed mid-step loses at most the step
in flight.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from s3core.config import Config
from s3core.errors import FailedPrecondition, InvalidArgument

logger = logging.getLogger(__name__)

__all__ = ["LearnerCore", "UpdateResult"]

KEEP_EXPORTS = 2


@dataclass
class UpdateResult:
    step: int
    version: int
    stats: dict[str, float] = field(default_factory=dict)
    checkpoint_path: str = ""
    policy_path: str = ""


class LearnerCore:
    """RL updates, checkpoints and published policy versions of one training run."""

    def __init__(self, cfg: Config, model_path: str, checkpoint_dir: str | Path, *, resume: bool = True,
                 device: str | None = None, trainer: Any = None) -> None:
        from s3core.rl.checkpoint import CheckpointManager
        from s3core.rl.trainer import RLTrainer

        self.cfg = cfg
        self.model_path = str(model_path)
        self.root = Path(checkpoint_dir).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        total = cfg.rl.total_steps or cfg.train.steps
        # the update trains softmax(logits / T) at the temperature the searcher sampled with (on-policy)
        self.trainer = trainer or RLTrainer.from_pretrained(self.model_path, cfg.rl, device=device or cfg.rl.device
                                                            or None, total_steps=total,
                                                            temperature=cfg.search.temperature_train)
        from s3core.search.profiles import get_profile

        self.trainer.prompt_profile = get_profile(cfg.searcher.prompt_profile).tag
        self.checkpoints = CheckpointManager(self.root, keep_last=cfg.train.keep_last, keep_best=True)
        self.step = 0
        self.run_state: dict[str, Any] = {}
        self.last_checkpoint = ""
        self.policy_path = ""  # "" = the initial model (version 0)
        self.last_result: UpdateResult | None = None
        if resume:
            latest = self.checkpoints.latest()
            if latest is not None:
                self.restore(latest)

    def restore(self, path: str | Path) -> None:
        """Load checkpoint ``path`` (verified) into the trainer and take its step and run state."""
        self.run_state = dict(self.checkpoints.load(path, self.trainer) or {})
        self.step = int(self.trainer.step_count)
        self.last_checkpoint = str(path)
        self.policy_path = str(Path(path) / "policy")
        logger.info("learner resumed from %s (step %d)", path, self.step)

    @property
    def version(self) -> int:
        return self.step

    @property
    def algorithm(self) -> str:
        return self.cfg.rl.algorithm

    def update(self, samples: Sequence[Any], step: int, run_state: dict[str, Any] | None = None, *,
               checkpoint: bool = True, metric: float | None = None) -> UpdateResult:
        """Apply RL step ``step`` (= current + 1) and publish its policy."""
        with self._lock:
            if self.last_result is not None and step == self.step == self.last_result.step:
                logger.info("update for step %d already applied; returning its result", step)
                return self.last_result
            if step != self.step + 1:
                raise FailedPrecondition(f"update for step {step}, but the learner is at step {self.step} "
                                         f"(expects step {self.step + 1}); resume the driver from the learner's state")
            if not samples:
                raise InvalidArgument("update has no trajectories")
            t0 = time.perf_counter()
            stats = dict(self.trainer.step(list(samples)))
            self.step = int(self.trainer.step_count)
            if self.step != step:
                raise FailedPrecondition(f"trainer reports step {self.step} after update {step}")
            self.run_state = dict(run_state or {})
            ckpt = ""
            if checkpoint:
                t1 = time.perf_counter()
                path = self.checkpoints.save(self.step, self.trainer, extra=self.run_state, metric=metric)
                ckpt = str(path)
                self.last_checkpoint = ckpt
                policy = str(Path(path) / "policy")
                stats["checkpoint_seconds"] = time.perf_counter() - t1
            else:
                t1 = time.perf_counter()
                policy = str(self._export(self.step))
                stats["export_seconds"] = time.perf_counter() - t1
            self.policy_path = policy
            stats["learner_seconds"] = time.perf_counter() - t0
            self.last_result = UpdateResult(self.step, self.version, stats, ckpt, policy)
            return self.last_result

    def _export(self, step: int) -> Path:
        exports = self.root / "policies"
        out = exports / f"step-{step:06d}"
        self.trainer.export_policy(out)
        if not getattr(self.trainer, "is_main_process", True):  # data parallel: rank 0 writes and prunes
            return out
        old = sorted(p for p in exports.glob("step-*") if p.is_dir())
        for p in old[:-KEEP_EXPORTS]:
            shutil.rmtree(p, ignore_errors=True)
        return out

    def save(self, metric: float | None = None) -> str:
        """Checkpoint now (``SaveCheckpoint``); returns the path."""
        with self._lock:
            path = self.checkpoints.save(self.step, self.trainer, extra=self.run_state, metric=metric)
            self.last_checkpoint = str(path)
            return self.last_checkpoint

    def status(self) -> dict[str, Any]:
        return {"step": self.step, "policy_version": self.version, "algorithm": self.algorithm,
                "last_checkpoint": self.last_checkpoint, "run_state_json": json.dumps(self.run_state),
                "model": self.model_path, "policy_path": self.policy_path}
