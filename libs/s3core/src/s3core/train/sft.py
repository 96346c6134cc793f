"""An `s3 sft` run: teacher trajectories -> action-token NLL fine-tuning -> a policy folder.

:func:`run_sft` loads the student (``s3core.rl.sft.SFTTrainer.from_pretrained``: ``rl.*`` options such
as LoRA and ``train_top_layers`` apply), gets the teacher trajectories -- from ``sft.trajectories``
files (:func:`s3core.train.teacher.load_trajectory_file`) or from a ``teacher`` callable given the
student's tokenizer (:func:`synth_teacher`, the synthetic world's metadata teacher) -- lays each one
out with the student's tokenizer (:func:`s3core.search.replay.replay_tokens`, checked against
``search.*``), trains, and writes into ``sft.out``:

* ``teacher_trajectories.jsonl`` -- what it trained on, in ``s3 eval``'s format (``s3 show`` reads it);
* ``sft_metrics.jsonl`` -- one line per optimiser step (loss, action tokens, grad norm, seconds);
* ``policy/`` -- the fine-tuned policy as a Hugging Face folder (the RL checkpoints' layout), for
  ``s3 train --init-from`` / ``--model`` and ``s3 eval --searcher-model``;
* ``sft_summary.json`` -- counts, first / last epoch mean loss, seconds.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

from s3core.config import Config
from s3core.errors import InvalidArgument
from s3core.io import check_output_dir, write_json, write_jsonl
from s3core.search.trajectory import Trajectory

__all__ = ["SFTResult", "run_sft", "synth_teacher", "METRICS_FILE", "POLICY_DIR", "TEACHER_FILE", "SUMMARY_FILE"]

logger = logging.getLogger(__name__)

METRICS_FILE = "sft_metrics.jsonl"
POLICY_DIR = "policy"
TEACHER_FILE = "teacher_trajectories.jsonl"
SUMMARY_FILE = "sft_summary.json"

Teacher = Callable[[Any, Config], Sequence[Trajectory]]  # (student tokenizer, config) -> trajectories


@dataclass
class SFTResult:
    out: str
    policy: str
    model: str
    examples: int  # trajectories trained on
    skipped_no_action: int  # trajectories dropped: no action token (every turn empty)
    action_tokens: int
    tokens: int
    steps: int
    epochs: int
    loss_first_epoch: float
    loss_last_epoch: float
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list, repr=False)

    def summary(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("history")
        return d


def synth_teacher(question_files: Sequence[str], index: str, *, limit: int = 0) -> Teacher:
    """A ``teacher`` for :func:`run_sft`: the synthetic world's metadata teacher over ``question_files``
    (rows of ``s3 data synth``), searching the index at ``index`` in process."""
    if not question_files:
        raise InvalidArgument("the synthetic-world teacher needs question files (--questions)")
    if not index:
        raise InvalidArgument("the synthetic-world teacher needs an index (--index)")

    def build(tokenizer: Any, cfg: Config) -> list[Trajectory]:
        from s3core.data.io import load_questions
        from s3core.retrieval.index import load_index
        from s3core.train.teacher import synth_teacher_trajectories

        questions = [q for f in question_files for q in load_questions(f)]
        if limit:
            questions = questions[:limit]
        retriever = load_index(index, threads=cfg.retriever.threads)
        try:
            return synth_teacher_trajectories(questions, retriever.search, tokenizer, cfg.search)
        finally:
            retriever.close()

    return build


def _epoch_mean(history: list[dict[str, float]], epoch: int) -> float:
    rows = [h for h in history if int(h["epoch"]) == epoch]
    tok = sum(h["action_tokens"] for h in rows)
    return sum(h["loss"] * h["action_tokens"] for h in rows) / tok if tok else float("nan")


def run_sft(cfg: Config, *, model: str = "", teacher: Teacher | None = None,
            trajectories: Sequence[Trajectory] | None = None, show_progress: bool = False) -> SFTResult:
    """Fine-tune ``model`` (default ``learner.model``, else ``searcher.model``) on teacher trajectories.

    Exactly one source: ``trajectories`` (already loaded), ``teacher(tokenizer, cfg)`` (e.g.
    :func:`synth_teacher`), or the files in ``cfg.sft.trajectories``.
    """
    from s3core.eval.report import trajectory_record
    from s3core.rl.sft import SFTTrainer, sft_samples
    from s3core.search.replay import replay_trajectory
    from s3core.train.teacher import load_trajectory_files

    sources = sum(x is not None and x != [] for x in (trajectories, teacher, cfg.sft.trajectories or None))
    if sources != 1:
        raise InvalidArgument("s3 sft needs exactly one teacher source: trajectory files (sft.trajectories / "
                              "--trajectories) or the synthetic-world teacher (--synth-teacher)")
    out = check_output_dir(cfg.sft.out, "sft.out (--out)")
    model = model or cfg.learner.model or cfg.searcher.model
    t0 = time.perf_counter()
    if cfg.sft.trajectories and trajectories is None and teacher is None:
        trajectories = load_trajectory_files(cfg.sft.trajectories, only_correct=cfg.sft.only_correct)
    trainer = SFTTrainer.from_pretrained(model, cfg.rl, cfg.sft)
    if teacher is not None:
        trajectories = list(teacher(trainer.tokenizer, cfg))
    assert trajectories is not None
    usable = [t for t in trajectories if any(turn.raw_text for turn in t.turns)]
    skipped = len(trajectories) - len(usable)
    if cfg.sft.max_examples and len(usable) > cfg.sft.max_examples:  # a seeded sample, in source order
        pick = sorted(random.Random(cfg.sft.seed).sample(range(len(usable)), cfg.sft.max_examples))
        usable = [usable[i] for i in pick]
    kept = [replay_trajectory(t, trainer.tokenizer, cfg.search) for t in usable]
    if skipped:
        logger.warning("skipped %d trajectories with no action token", skipped)
    if not kept:
        raise InvalidArgument("no teacher trajectory to train on (after only_correct / empty-turn filtering)")
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / TEACHER_FILE, (trajectory_record(t.question.dataset, t.question.id, "sft-teacher", t,
                                                       [d.id for d in t.context]) for t in kept))
    samples = sft_samples(kept, trainer.tokenizer)  # already laid out for the student
    metrics = out / METRICS_FILE
    metrics.unlink(missing_ok=True)
    history = trainer.fit(samples, metrics_path=metrics, show_progress=show_progress)
    policy = trainer.export_policy(out / POLICY_DIR)
    profiles = {t.prompt_profile for t in kept}  # the layout(s) the student was trained on (replay's)
    if len(profiles) == 1 and "" not in profiles:
        from s3core.search.profiles import write_profile_record

        write_profile_record(policy, profiles.pop())
    result = SFTResult(
        out=str(out), policy=str(policy), model=model, examples=len(kept), skipped_no_action=skipped,
        action_tokens=sum(sum(s.action_mask) for s in samples), tokens=sum(len(s.token_ids) for s in samples),
        steps=len(history), epochs=cfg.sft.epochs, loss_first_epoch=_epoch_mean(history, 1),
        loss_last_epoch=_epoch_mean(history, cfg.sft.epochs), seconds=round(time.perf_counter() - t0, 2),
        history=history,
    )
    write_json(out / SUMMARY_FILE, result.summary())
    return result
