"""Supervised fine-tuning of the searcher on trajectories (the warm start of `s3 sft`).

The loss is the mean negative log-likelihood of the **action tokens** -- the tokens the policy
generated -- over a batch, with exactly the masks RL uses: a trajectory becomes a
:class:`~s3core.rl.batch.Sample` (``token_ids`` + ``action_mask``) and :func:`~s3core.rl.batch.collate`
pads it; prompt and observation tokens are context only.  Logits are computed only at the positions
that predict an action token (transformers' ``logits_to_keep`` with a tensor of positions), so the
vocabulary-wide LM head never runs on the prompt and the retrieved documents, which are most of an
episode.

The model comes from :func:`~s3core.rl.models.load_policy`, so every ``RLConfig`` option that shapes
the trained network applies (``lora_rank`` and friends, ``train_top_layers``,
``gradient_checkpointing``, ``dtype``, ``device``, ``threads``).  Optimiser: AdamW (``sft.lr``,
``rl.weight_decay``), one step per ``sft.batch_size`` trajectories accumulated over
``sft.micro_batch_size``-trajectory forward/backward passes (each micro-batch's summed NLL divided
by the batch's action-token count, so the accumulated gradient is the batch token-mean), gradient
clipping at ``sft.max_grad_norm``, and the trajectories shuffled every epoch by a generator seeded
from ``sft.seed``.  A batch is sorted by length before it is cut into micro-batches, which keeps
padding low without changing what a step sees.

:meth:`SFTTrainer.export_policy` writes the policy with :meth:`s3core.rl.trainer.RLTrainer.export_policy`
(LoRA merged, the source checkpoint's dtype), so ``s3 train --model`` / ``--init-from`` and
``s3 eval --searcher-model`` load the folder like any other policy.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from s3core.config import RLConfig, SearchConfig, SFTConfig
from s3core.errors import ConfigError, InvalidArgument
from s3core.rl import algos
from s3core.rl.batch import Sample, collate
from s3core.rl.models import autocast_dtype, is_lora, load_policy, resolve_device, trainable_parameters
from s3core.search.replay import replay_tokens
from s3core.search.trajectory import Trajectory

__all__ = ["SFTTrainer", "sft_samples", "source_dtype"]


def sft_samples(trajectories: Sequence[Trajectory], tokenizer: Any, cfg: SearchConfig | None = None) -> list[Sample]:
    """One :class:`Sample` per trajectory (reward 0, group = question id).

    With ``cfg`` each trajectory is first laid out again with ``tokenizer``
    (:func:`~s3core.search.replay.replay_tokens`) -- needed when it was recorded by another model;
    without, its own ``token_ids`` / ``action_mask`` are used as they are.
    """
    out: list[Sample] = []
    for t in trajectories:
        if cfg is not None:
            ids, mask, _ = replay_tokens(t, tokenizer, cfg)
        else:
            ids, mask = list(t.token_ids), list(t.action_mask)
        out.append(Sample(token_ids=ids, action_mask=mask, reward=0.0, group=t.question.id))
    return out


def source_dtype(path: str) -> torch.dtype:
    """The dtype the checkpoint at ``path`` declares (fp32 when it declares none we export)."""
    from transformers import AutoConfig

    dt = getattr(AutoConfig.from_pretrained(path), "dtype", None)
    if isinstance(dt, str):  # configs may carry the name ("bfloat16")
        dt = getattr(torch, dt, None)
    return dt if dt in (torch.float32, torch.bfloat16, torch.float16) else torch.float32


class SFTTrainer:
    """Action-token NLL training of a causal LM policy (module docstring).

    Build it with :meth:`from_pretrained`, or pass a loaded ``policy`` (causal LM or peft model) and
    its ``tokenizer``.  ``export_dtype`` is the dtype :meth:`export_policy` writes (default: that of
    the trainable weights).
    """

    def __init__(self, policy: nn.Module, tokenizer: Any, rl_cfg: RLConfig, sft_cfg: SFTConfig, *,
                 device: str | torch.device | None = None, export_dtype: torch.dtype | None = None) -> None:
        rl_cfg.validate("rl")
        sft_cfg.validate("sft")
        self.rl_cfg = rl_cfg
        self.cfg = sft_cfg
        self.device = device if isinstance(device, torch.device) else resolve_device(device or rl_cfg.device)
        if rl_cfg.threads:
            torch.set_num_threads(rl_cfg.threads)
        self._amp = autocast_dtype(rl_cfg.dtype, self.device)
        self.tokenizer = tokenizer
        self.policy = policy.to(self.device)
        pad = getattr(tokenizer, "pad_token_id", None)
        if pad is None:
            pad = getattr(tokenizer, "eos_token_id", None)
        self.pad_id = int(pad) if pad is not None else 0
        self.params = list(trainable_parameters(policy).values())
        if not self.params:
            raise InvalidArgument("the policy has no trainable parameter")
        self._export_dtype = export_dtype or self.params[0].dtype
        self.optimizer = torch.optim.AdamW(self.params, lr=sft_cfg.lr, weight_decay=rl_cfg.weight_decay)
        self.generator = torch.Generator().manual_seed(sft_cfg.seed)
        self.steps = 0

    @classmethod
    def from_pretrained(cls, model: str, rl_cfg: RLConfig, sft_cfg: SFTConfig, *,
                        device: str | None = None) -> SFTTrainer:
        """Load the policy from an HF folder, hub name or ``embedded:<id>`` through ``load_policy``."""
        from s3core.generation.models import resolve_model

        if not model:
            raise ConfigError("the model to fine-tune is empty (--model / searcher.model)")
        path = resolve_model(model)
        dev = resolve_device(device or rl_cfg.device)
        policy, tokenizer = load_policy(path, rl_cfg, dev)
        return cls(policy, tokenizer, rl_cfg, sft_cfg, device=dev, export_dtype=source_dtype(path))

    # --- the loss -----------------------------------------------------------------------------

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self._amp is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self._amp)

    def nll_sum(self, samples: Sequence[Sample]) -> tuple[torch.Tensor, int]:
        """Summed NLL of the action tokens of ``samples`` (one forward pass) and their count.

        Position ``t`` predicts token ``t + 1``; it is a loss position when token ``t + 1`` is an
        action (``action_mask[t + 1] == 1``).  Logits are computed at those positions only.
        """
        b = collate(list(samples), self.pad_id)
        ids = b["input_ids"].to(self.device)
        attn = b["attention_mask"]
        attn = None if bool(attn.all()) else attn.to(self.device)
        bi, ti = b["action_mask"][:, 1:].bool().nonzero(as_tuple=True)
        bi, ti = bi.to(self.device), ti.to(self.device)
        keep = torch.unique(ti)
        k = torch.searchsorted(keep, ti)
        with self._autocast():
            logits = self.policy(input_ids=ids, attention_mask=attn, use_cache=False, logits_to_keep=keep).logits
        rows = logits[bi, k]
        del logits
        lp, _ = algos.logprobs_of_rows(rows, ids[bi, ti + 1], 1.0)
        return -lp.sum(), int(bi.numel())

    @torch.no_grad()
    def nll(self, samples: Sequence[Sample], micro_batch_size: int | None = None) -> float:
        """Mean NLL per action token of ``samples`` under the current policy (no gradient)."""
        if not samples:
            raise InvalidArgument("nll of no samples")
        was = self.policy.training
        self.policy.eval()
        total, n = 0.0, 0
        size = micro_batch_size or self.cfg.micro_batch_size
        try:
            for i in range(0, len(samples), size):
                s, c = self.nll_sum(samples[i:i + size])
                total += float(s)
                n += c
        finally:
            self.policy.train(was)
        return total / max(n, 1)

    # --- training -----------------------------------------------------------------------------

    def step(self, samples: Sequence[Sample]) -> dict[str, float]:
        """One optimiser step on ``samples``: token-mean NLL accumulated over micro-batches."""
        if not samples:
            raise InvalidArgument("an SFT step needs at least one sample")
        t0 = time.perf_counter()
        self.policy.train()
        order = sorted(range(len(samples)), key=lambda i: -len(samples[i].token_ids))
        rows = [samples[i] for i in order]
        tokens = sum(sum(s.action_mask[1:]) for s in rows)
        if tokens < 1:
            raise InvalidArgument("an SFT batch has no action token")
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = 0.0
        seen = 0
        size = self.cfg.micro_batch_size
        for i in range(0, len(rows), size):
            part = rows[i:i + size]
            s, _ = self.nll_sum(part)
            (s / tokens).backward()
            loss_sum += float(s.detach())
            seen += sum(len(x.token_ids) for x in part)
        max_norm = self.cfg.max_grad_norm if self.cfg.max_grad_norm > 0 else float("inf")
        norm = float(torch.nn.utils.clip_grad_norm_(self.params, max_norm))
        skipped = not math.isfinite(norm)
        if skipped:
            self.optimizer.zero_grad(set_to_none=True)
        else:
            self.optimizer.step()
        self.steps += 1
        secs = time.perf_counter() - t0
        return {"loss": loss_sum / tokens, "action_tokens": float(tokens), "tokens": float(seen),
                "grad_norm": norm, "skipped": float(skipped), "lr": float(self.optimizer.param_groups[0]["lr"]),
                "seconds": secs, "tokens_per_second": seen / secs if secs > 0 else 0.0}

    def fit(self, samples: Sequence[Sample], *, epochs: int | None = None, metrics_path: str | Path | None = None,
            show_progress: bool = False, on_step: Callable[[dict[str, float]], None] | None = None
            ) -> list[dict[str, float]]:
        """``epochs`` (default ``sft.epochs``) passes over ``samples``, shuffled each epoch, in steps of
        ``sft.batch_size``.  Each step's record (:meth:`step`'s plus ``step`` and ``epoch``) is appended
        to ``metrics_path`` as one JSON line as soon as the step ends."""
        if not samples:
            raise InvalidArgument("SFT needs at least one trajectory")
        epochs = self.cfg.epochs if epochs is None else int(epochs)
        if epochs < 1:
            raise InvalidArgument(f"epochs must be >= 1, got {epochs}")
        bs = self.cfg.batch_size
        per_epoch = math.ceil(len(samples) / bs)
        history: list[dict[str, float]] = []
        fh = None
        if metrics_path is not None:
            Path(metrics_path).parent.mkdir(parents=True, exist_ok=True)
            fh = open(metrics_path, "a", encoding="utf-8")
        bar = None
        if show_progress:
            from tqdm import tqdm

            bar = tqdm(total=epochs * per_epoch, desc="sft", unit="step")
        try:
            for epoch in range(epochs):
                order = torch.randperm(len(samples), generator=self.generator).tolist()
                for j in range(per_epoch):
                    batch = [samples[i] for i in order[j * bs:(j + 1) * bs]]
                    rec = {"step": float(self.steps + 1), "epoch": float(epoch + 1), **self.step(batch)}
                    history.append(rec)
                    if fh is not None:
                        fh.write(json.dumps({k: (int(v) if k in ("step", "epoch") else v) for k, v in rec.items()})
                                 + "\n")
                        fh.flush()
                    if on_step is not None:
                        on_step(rec)
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(epoch=epoch + 1, loss=f"{rec['loss']:.3f}")
        finally:
            if bar is not None:
                bar.close()
            if fh is not None:
                fh.close()
        return history

    # --- export -------------------------------------------------------------------------------

    def export_policy(self, out_dir: str | Path) -> Path:
        """The policy as a Hugging Face folder, written by :meth:`RLTrainer.export_policy` (same layout
        as RL checkpoints' ``policy/``; LoRA adapters merged)."""
        from s3core.rl.trainer import RLTrainer

        cfg = dataclasses.replace(self.rl_cfg, algorithm="grpo", kl_coef=0.0, group_size=max(2, self.rl_cfg.group_size),
                                  lr_schedule="constant", actor_lr=self.cfg.lr)
        exporter = RLTrainer(self.policy, self.tokenizer, cfg, device=self.device, export_dtype=self._export_dtype)
        was = self.policy.training
        self.policy.eval()
        try:
            return exporter.export_policy(out_dir)
        finally:
            self.policy.train(was)

    @property
    def lora(self) -> bool:
        return is_lora(self.policy)
