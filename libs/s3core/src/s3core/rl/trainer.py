"""The learner's update: one PPO or GRPO step on a batch of trajectories (spec §6).

:meth:`RLTrainer.step` takes the batch as :class:`~s3core.rl.batch.Sample` objects and

1. runs the no-grad passes, micro-batch by micro-batch: log-probabilities of the policy as it is
   now (``old``; skipped when the batch gets exactly one optimiser step, where they equal the
   current ones), of the frozen reference (when ``kl_coef > 0``) and the critic's values (PPO);
2. computes advantages -- PPO: the reward on the last action token minus ``kl_coef * KL`` per
   action token (``kl_mode: reward``), GAE over the action tokens, whitened over the batch;
   GRPO: group-normalised scores (minus ``kl_coef`` times the trajectory's summed KL in
   ``kl_mode: reward``) broadcast over the action tokens;
3. runs ``ppo_epochs`` passes of shuffled mini-batches (one optimiser step each), every mini-batch
   accumulated over micro-batches with each micro-batch's token-mean loss scaled by its share of the
   mini-batch's action tokens, so the accumulated gradient is the mini-batch token-mean gradient.

Logits are computed only at the loss positions (the action tokens; transformers'
``logits_to_keep``), one micro-batch at a time, so the vocabulary-wide LM head never runs on prompt
and observation tokens -- most of a search episode -- and memory is bounded by ``micro_batch_size``.
Mini-batch shuffling draws from a trainer-owned ``torch.Generator`` seeded from ``cfg.seed`` and
saved in :meth:`RLTrainer.state_dict`: a resumed run continues exactly as an uninterrupted one.

With ``torch.distributed`` initialised over several ranks the step is data parallel (each rank
scores and back-propagates its share of every mini-batch, gradients are summed across ranks; see
:mod:`s3core.rl.distributed`) and only rank 0 writes exports.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from s3core.config import RLConfig
from s3core.errors import ConfigError, InvalidArgument
from s3core.io import atomic_dir
from s3core.rl import algos, distributed
from s3core.rl.batch import Sample, collate
from s3core.rl.models import (
    ValueModel,
    autocast_dtype,
    build_reference,
    is_lora,
    load_critic,
    load_policy,
    resolve_device,
    trainable_parameters,
)

__all__ = ["LRSchedule", "RLTrainer"]

logger = logging.getLogger(__name__)

_STATE_FORMAT = 1


class LRSchedule:
    """Learning-rate factor per optimiser step: linear warm-up, then constant, linear or cosine decay.

    ``factor(s) = (s + 1) / warmup`` for ``s < warmup``; then with
    ``p = (s - warmup) / (horizon - warmup)`` clamped to [0, 1]: 1 (constant), ``1 - p`` (linear) or
    ``(1 + cos(pi * p)) / 2`` (cosine).  ``horizon`` (total optimiser steps) is set by the trainer
    at its first step.  A callable object rather than a function, so ``LambdaLR.state_dict`` saves
    its fields.
    """

    def __init__(self, kind: str, warmup: int) -> None:
        self.kind = kind
        self.warmup = int(warmup)
        self.horizon = 0

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        if self.kind == "constant":
            return 1.0
        span = max(1, self.horizon - self.warmup)
        p = min(1.0, max(0.0, (step - self.warmup) / span))
        return 1.0 - p if self.kind == "linear" else 0.5 * (1.0 + math.cos(math.pi * p))


@dataclass
class _Micro:
    """One micro-batch on the device: some rows of the batch, trimmed to their longest sequence."""

    rows: torch.Tensor  # [b] indices into the batch
    ids: torch.Tensor  # [b, W]
    attn: torch.Tensor | None  # [b, W]; None when no row is padded (the faster unmasked attention)
    mask: torch.Tensor  # [b, W-1] float loss mask
    positions: tuple[torch.Tensor, torch.Tensor]  # (row, column) of the loss mask's nonzeros
    tokens: int  # action tokens (= len(positions[0]))
    # a stand-in that keeps a sharded (FSDP) rank in step with the others: it runs its passes, its
    # results are dropped and its loss weighs 0 (see RLTrainer._rank_micro_batches)
    dummy: bool = False

    def keep_columns(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The distinct loss columns (sorted) and, per loss position, its index among them."""
        keep = torch.unique(self.positions[1])
        return keep, torch.searchsorted(keep, self.positions[1])

    def take(self, per_token: torch.Tensor) -> torch.Tensor:
        """This micro-batch's ``[b, W-1]`` slice of a batch-wide ``[B, T-1]`` tensor."""
        return per_token[self.rows, : self.ids.shape[1] - 1]


class _Batch:
    """One step's batch on the device plus the per-token tensors the update reads (all ``[B, T-1]``)."""

    def __init__(self, tensors: dict[str, torch.Tensor], device: torch.device) -> None:
        self.device = device
        self.input_ids = tensors["input_ids"].to(device)
        self.attention_mask = tensors["attention_mask"].to(device)
        self.mask_cpu = tensors["action_mask"][:, 1:].bool()
        self.mask = self.mask_cpu.to(device=device, dtype=torch.float32)
        self.lengths = tensors["lengths"].tolist()
        self.row_tokens = self.mask_cpu.sum(-1).tolist()  # action tokens per row
        self.rewards = tensors["rewards"].to(device)
        self.group_index = tensors["group_index"]
        self.size = len(self.lengths)
        shape = self.mask.shape
        self.old_logp: torch.Tensor | None = None
        self.ref_logp: torch.Tensor | None = None
        self.values = torch.zeros(shape, device=device)
        self.advantages = torch.zeros(shape, device=device)
        self.returns = torch.zeros(shape, device=device)

    def split(self, order: torch.Tensor, size: int, token_budget: int = 0) -> list[torch.Tensor]:
        """The row groups of :meth:`micro_batches`: ``size`` rows each, or with ``token_budget > 0``
        (``rl.micro_batch_tokens``, verl's dynamic batch size) rows taken longest first, as many per
        group as fit ``rows x longest row <= token_budget`` padded tokens (a longer row goes alone)."""
        if token_budget <= 0:
            return list(order.split(size))
        rows = sorted(order.tolist(), key=lambda i: -self.lengths[i])  # stable: ties keep their order
        groups: list[list[int]] = []
        for i in rows:
            if groups and (len(groups[-1]) + 1) * self.lengths[groups[-1][0]] <= token_budget:
                groups[-1].append(i)
            else:
                groups.append([i])
        return [torch.tensor(g, dtype=order.dtype) for g in groups]

    def micro_batches(self, order: torch.Tensor, size: int, token_budget: int = 0, pad_to: int = 0) -> list[_Micro]:
        """Split the rows ``order`` (a CPU index tensor) into micro-batches (:meth:`split`), followed by
        dummy ones (row 0, ``dummy=True``) up to ``pad_to`` micro-batches.

        Every index the micro-batches need goes to the device in one (pinned, asynchronous) copy: a
        copy per micro-batch from pageable memory would wait for the device's queue each time.
        """
        groups = self.split(order, size, token_budget) if len(order) else []
        n_real = len(groups)
        groups += [torch.zeros(1, dtype=torch.long)] * max(0, pad_to - n_real)
        if not groups:
            return []
        order = torch.cat(groups)
        parts, meta = [order], []
        for idx in groups:
            lens = [self.lengths[i] for i in idx.tolist()]
            width = max(lens)
            bi, ti = self.mask_cpu[idx, : width - 1].nonzero(as_tuple=True)
            parts += [bi, ti]
            meta.append((len(idx), width, min(lens) < width, len(bi)))
        flat = torch.cat(parts)
        if self.device.type == "cuda":
            flat = flat.pin_memory()
        flat = flat.to(self.device, non_blocking=True)
        out, r, p = [], 0, len(order)
        for k, (n, width, padded, n_pos) in enumerate(meta):
            rows = flat[r:r + n]
            out.append(_Micro(rows=rows, ids=self.input_ids[rows, :width],
                              attn=self.attention_mask[rows, :width] if padded else None,
                              mask=self.mask[rows, : width - 1],
                              positions=(flat[p:p + n_pos], flat[p + n_pos:p + 2 * n_pos]), tokens=n_pos,
                              dummy=k >= n_real))
            r, p = r + n, p + 2 * n_pos
        return out


class RLTrainer:
    """PPO (with a critic) or GRPO updates of a causal LM policy.

    Build it with :meth:`from_pretrained`, or pass already-built models: ``policy`` (a causal LM, or a
    peft LoRA model), its ``tokenizer``, and optionally ``critic`` (PPO; default: a
    :class:`~s3core.rl.models.ValueModel` on a copy of the policy's backbone) and ``reference``
    (default: a frozen copy of the policy when ``kl_coef > 0``; under LoRA the policy with adapters
    disabled).  The models are moved to ``device`` (default ``cfg.device``).

    ``temperature`` is the temperature the trajectories were sampled with (the policy trained is
    ``softmax(logits / temperature)``); ``total_steps`` (RL steps) overrides ``cfg.total_steps`` as
    the length of a linear/cosine schedule; ``export_dtype`` is the dtype :meth:`export_policy`
    writes (default: that of the trainable weights).
    """

    def __init__(self, policy: nn.Module, tokenizer: Any, cfg: RLConfig, *, critic: ValueModel | None = None,
                 reference: nn.Module | None = None, device: str | torch.device | None = None,
                 total_steps: int | None = None, temperature: float = 1.0,
                 export_dtype: torch.dtype | None = None) -> None:
        cfg.validate("rl")
        if not temperature > 0:
            raise ConfigError(f"sampling temperature must be > 0 for training, got {temperature}")
        self.cfg = cfg
        self.device = device if isinstance(device, torch.device) else resolve_device(device or cfg.device)
        self.temperature = float(temperature)
        self.total_steps = int(cfg.total_steps if total_steps is None else total_steps)
        if cfg.lr_schedule != "constant" and self.total_steps < 1:
            raise ConfigError(f"rl.lr_schedule {cfg.lr_schedule!r} needs the run length: set rl.total_steps "
                              "(or pass total_steps)")
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self._amp = autocast_dtype(cfg.dtype, self.device)
        self.tokenizer = tokenizer
        self.policy = self._to_device(policy)
        self.lora = is_lora(policy)
        self.vocab_size = int(policy.get_input_embeddings().num_embeddings)
        pad = getattr(tokenizer, "pad_token_id", None)
        if pad is None:
            pad = getattr(tokenizer, "eos_token_id", None)
        self.pad_id = int(pad) if pad is not None else 0
        params = list(trainable_parameters(policy).values())
        if not params:
            raise InvalidArgument("the policy has no trainable parameter")
        self._export_dtype = export_dtype or params[0].dtype

        self.critic: ValueModel | None = None
        if cfg.algorithm == "ppo":
            if critic is None:
                if self.lora:
                    raise InvalidArgument("PPO with LoRA needs a critic: build it with load_critic() or use "
                                          "RLTrainer.from_pretrained")
                critic = ValueModel.from_causal_lm(policy)
            critic_vocab = int(critic.backbone.get_input_embeddings().num_embeddings)
            if critic_vocab < self.vocab_size:
                raise ConfigError(f"rl.critic_model has a vocabulary of {critic_vocab} tokens, smaller than the "
                                  f"policy's {self.vocab_size}: the critic must share the policy's tokenizer")
            self.critic = self._to_device(critic)
        elif critic is not None:
            raise InvalidArgument("grpo trains no critic, but one was given")

        self.reference: nn.Module | None = None
        if cfg.kl_coef > 0 and not self.lora:
            self.reference = (reference if reference is not None else build_reference(policy, self._amp))
            self._to_device(self.reference).eval().requires_grad_(False)

        self.actor_optimizer = torch.optim.AdamW(params, lr=cfg.actor_lr, weight_decay=cfg.weight_decay)
        self.actor_scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.actor_optimizer, LRSchedule(cfg.lr_schedule, cfg.warmup_steps))
        self.critic_optimizer: torch.optim.Optimizer | None = None
        self.critic_scheduler: torch.optim.lr_scheduler.LambdaLR | None = None
        if self.critic is not None:
            self.critic_optimizer = torch.optim.AdamW(list(trainable_parameters(self.critic).values()),
                                                      lr=cfg.critic_lr, weight_decay=cfg.weight_decay)
            self.critic_scheduler = torch.optim.lr_scheduler.LambdaLR(
                self.critic_optimizer, LRSchedule(cfg.lr_schedule, cfg.warmup_steps))
        self.generator = torch.Generator().manual_seed(cfg.seed)
        # the searcher prompt profile the policy is trained on (name@version); exports record it so a
        # searcher serving them under another profile warns or refuses (s3core.search.profiles)
        self.prompt_profile = ""
        self._steps = 0
        self._rank, self._world = 0, 1  # data-parallel position during a step (see s3core.rl.distributed)

    @classmethod
    def from_pretrained(cls, model_path: str, cfg: RLConfig, *, device: str | None = None,
                        total_steps: int | None = None, temperature: float = 1.0) -> RLTrainer:
        """Load the policy (and critic, reference) from an HF folder, hub name or ``embedded:<id>``.

        The critic starts from ``cfg.critic_model`` or, when empty, the same weights as the policy.
        Exports are written in the dtype the source checkpoint declares.
        """
        from transformers import AutoConfig

        from s3core.generation.models import resolve_model

        cfg.validate("rl")
        if cfg.strategy == "fsdp" and cls is RLTrainer and distributed.world()[1] > 1:  # sharded: s3core.rl.fsdp
            from s3core.rl.fsdp import FSDPTrainer

            return FSDPTrainer.from_pretrained(model_path, cfg, device=device, total_steps=total_steps,
                                               temperature=temperature)
        if not model_path:
            raise ConfigError("the model the learner trains is empty (learner.model / searcher.model)")
        path = resolve_model(model_path)
        dev = resolve_device(device or cfg.device)
        source_dtype = getattr(AutoConfig.from_pretrained(path), "dtype", None)
        if isinstance(source_dtype, str):  # configs may carry the name ("bfloat16")
            source_dtype = getattr(torch, source_dtype, None)
        if source_dtype not in (torch.float32, torch.bfloat16, torch.float16):
            source_dtype = torch.float32
        policy, tokenizer = load_policy(path, cfg, dev)
        critic = None
        if cfg.algorithm == "ppo":
            critic = load_critic(resolve_model(cfg.critic_model) if cfg.critic_model else path, cfg, dev)
        reference = build_reference(policy, autocast_dtype(cfg.dtype, dev)) if cfg.kl_coef > 0 else None
        return cls(policy, tokenizer, cfg, critic=critic, reference=reference, device=dev,
                   total_steps=total_steps, temperature=temperature, export_dtype=source_dtype)

    # --- counters -----------------------------------------------------------------------------

    @property
    def step_count(self) -> int:
        """RL steps completed."""
        return self._steps

    @property
    def version(self) -> int:
        """The policy version: the number of completed steps (0 = the initial weights)."""
        return self._steps

    # --- forward helpers ----------------------------------------------------------------------

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self._amp is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self._amp)

    def _logits(self, model: nn.Module, ids: torch.Tensor, attn: torch.Tensor | None,
                keep: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``[b, W, V]``, or with ``keep`` (sorted column indices) ``[b, len(keep), V]``: the LM
        head then runs only on those positions (transformers' ``logits_to_keep``)."""
        with self._autocast():
            if keep is None:
                return model(input_ids=ids, attention_mask=attn, use_cache=False).logits
            return model(input_ids=ids, attention_mask=attn, use_cache=False, logits_to_keep=keep).logits

    def _next_token(self, mc: _Micro, *, reference: bool = False, entropy: str = "none"
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Log-probabilities ``[b, W-1]`` of the micro-batch's next tokens at its loss positions (0
        elsewhere), from logits computed at those positions only -- the vocabulary-wide LM head never
        runs on prompt and observation tokens, which are most of a search episode.

        ``entropy``: ``"none"``; ``"stat"`` (per-position entropy, no gradient); ``"grad"``
        (differentiable, for the entropy bonus).  ``reference``: the frozen reference policy.
        """
        bi, ti = mc.positions
        keep, k = mc.keep_columns()
        if reference and self.lora:
            with self.policy.disable_adapter():
                logits = self._logits(self.policy, mc.ids, mc.attn, keep)
        else:
            logits = self._logits(self.reference if reference else self.policy, mc.ids, mc.attn, keep)
        rows = logits[bi, k]
        del logits
        targets = mc.ids[bi, ti + 1]
        lp, ent = algos.logprobs_of_rows(rows, targets, self.temperature, with_entropy=entropy == "stat")
        zeros = torch.zeros(mc.ids.shape[0], mc.ids.shape[1] - 1, dtype=torch.float32, device=mc.ids.device)
        logp = zeros.index_put((bi, ti), lp)
        if entropy == "none":
            return logp, None
        if entropy == "grad":
            ent = algos.entropy_of_rows(rows, self.temperature)
        return logp, zeros.index_put((bi, ti), ent)

    def _values(self, ids: torch.Tensor, attn: torch.Tensor | None) -> torch.Tensor:
        assert self.critic is not None
        with self._autocast():
            return self.critic(ids, attn)[:, :-1]

    # --- the data-parallel strategy (overridden by s3core.rl.fsdp.FSDPTrainer) --------------------

    def _to_device(self, module: nn.Module) -> nn.Module:
        """``module`` on the trainer's device (a sharded strategy has placed its shards already)."""
        return module.to(self.device)

    def _rank_micro_batches(self, b: _Batch, rows: torch.Tensor) -> list[_Micro]:
        """This rank's micro-batches of ``rows`` (rows ``rank, rank + W, ...`` of it under data parallel;
        all of them in one process), by ``rl.micro_batch_size`` rows or ``rl.micro_batch_tokens``."""
        mine = rows[self._rank::self._world] if self._world > 1 else rows
        return b.micro_batches(mine, self.cfg.micro_batch_size, self.cfg.micro_batch_tokens)

    def _reduce_gradients(self) -> None:
        """Sum the gradients across the data-parallel ranks (replicas: one all-reduce per bucket)."""
        distributed.all_reduce_gradients(_optimizer_params(self.actor_optimizer))
        if self.critic_optimizer is not None:
            distributed.all_reduce_gradients(_optimizer_params(self.critic_optimizer))

    # --- the step -----------------------------------------------------------------------------

    def step(self, samples: list[Sample]) -> dict[str, float]:
        """One RL step on ``samples`` (one per trajectory); returns the step's statistics.

        Statistics: ``policy_loss``, ``value_loss`` (ppo), ``kl`` (policy vs reference, configured
        estimator, per action token), ``entropy`` (per action token), ``clip_fraction``,
        ``value_clip_fraction`` (ppo), ``approx_kl`` (policy drift within the step), ``grad_norm``
        (before clipping; ``value_grad_norm`` for the critic), ``lr``, ``reward_mean``,
        ``reward_std``, ``advantage_mean``, ``response_tokens`` (action tokens), ``tokens`` (all
        non-pad tokens), ``skipped_updates`` (optimiser steps skipped for a non-finite gradient),
        ``update_seconds`` and ``info/<name>`` means of the samples' ``info``.  Losses and
        fractions are means over the step's optimiser steps; ``grad_norm`` likewise.

        Under ``torch.distributed`` with several ranks, every rank calls this with the same full
        ``samples`` and does its share of the work (:mod:`s3core.rl.distributed`); the update and the
        statistics (``update_seconds`` aside) are those of a single process over the whole batch.
        """
        t0 = time.perf_counter()
        cfg = self.cfg
        tensors = collate(samples, self.pad_id)
        too_big = (tensors["input_ids"] >= self.vocab_size).any(-1).nonzero().flatten().tolist()
        if too_big:
            raise InvalidArgument(f"sample {too_big[0]}: token id {int(tensors['input_ids'][too_big[0]].max())} is "
                                  f"outside the policy's vocabulary of {self.vocab_size}")
        self._rank, self._world = distributed.world()
        if self._world > 1:
            self._sync_step(tensors)
        b = _Batch(tensors, self.device)
        mini = cfg.mini_batch_size if 0 < cfg.mini_batch_size < b.size else b.size
        n_mini = -(-b.size // mini)
        updates_per_step = cfg.ppo_epochs * n_mini
        self._set_horizon(updates_per_step)
        # With one optimiser step per batch, the policy the batch is scored under is the current one.
        single_update = updates_per_step == 1
        use_kl = cfg.kl_coef > 0
        need_old = not single_update or (use_kl and cfg.kl_mode == "reward")

        stats = self._score(b, need_old=need_old, need_ref=use_kl)
        self._advantages(b, use_kl)

        totals: dict[str, float] = {}
        for epoch in range(cfg.ppo_epochs):
            for mb in torch.randperm(b.size, generator=self.generator).split(mini):
                # without an old pass, the (single) update pass sees the start-of-step policy: stats there
                stats_pass = epoch == 0 and not need_old
                for k, v in self._update(b, mb, stats_pass=stats_pass, stats=stats).items():
                    totals[k] = totals.get(k, 0.0) + v
        stats.update({k: v / updates_per_step for k, v in totals.items() if k != "skipped_updates"})
        stats["skipped_updates"] = totals.get("skipped_updates", 0.0)

        n_act = float(sum(b.row_tokens))
        stats["entropy"] = stats.pop("_entropy_sum") / n_act
        stats["kl"] = stats.pop("_kl_sum") / n_act  # 0 without a reference
        rewards = tensors["rewards"]
        stats.update({
            "reward_mean": float(rewards.mean()),
            "reward_std": float(rewards.std(unbiased=False)),
            "advantage_mean": float(algos.masked_mean(b.advantages, b.mask)),
            "response_tokens": n_act,
            "tokens": float(sum(b.lengths)),
        })
        stats.update(_info_means(samples))
        self._steps += 1
        stats["update_seconds"] = time.perf_counter() - t0
        return stats

    @property
    def is_main_process(self) -> bool:
        """True where files are written: rank 0 of a data-parallel group, or a single process."""
        return distributed.is_main_process()

    def _sync_step(self, tensors: dict[str, torch.Tensor]) -> None:
        """Data parallel: refuse ranks holding different batches; take rank 0's shuffling RNG."""
        ids, mask = tensors["input_ids"], tensors["action_mask"]
        distributed.check_same_batch([
            int(ids.shape[0]), int(sum(tensors["lengths"].tolist())), int(ids.sum()), int(mask.sum()),
            int((ids * mask).sum()), int((tensors["rewards"].double() * 1e6).round().sum()),
            int(tensors["group_index"].sum())], self.device)
        state = self.generator.get_state().to(self.device)
        distributed.broadcast_tensor_(state, src=0)
        self.generator.set_state(state.cpu())

    def _set_horizon(self, updates_per_step: int) -> None:
        """Fix the schedules' length in optimiser steps at the first step (batches keep their size)."""
        for sched in (self.actor_scheduler, self.critic_scheduler):
            if sched is not None:
                fn = sched.lr_lambdas[0]
                if not fn.horizon:
                    fn.horizon = max(1, self.total_steps) * updates_per_step

    @torch.no_grad()
    def _score(self, b: _Batch, *, need_old: bool, need_ref: bool) -> dict[str, float]:
        """The no-grad pass: old / reference log-probs and values into ``b``; entropy and KL sums."""
        cfg = self.cfg
        out = {"_entropy_sum": 0.0, "_kl_sum": 0.0}
        if need_old:
            b.old_logp = torch.zeros_like(b.mask)
        if need_ref:
            b.ref_logp = torch.zeros_like(b.mask)
        if not (need_old or need_ref or self.critic is not None):
            return out
        self.policy.eval()
        if self.critic is not None:
            self.critic.eval()
        ent_sum = torch.zeros((), device=self.device)
        # data parallel: this rank scores rows rank, rank + W, ...; the others come in the sums below
        for mb in self._rank_micro_batches(b, torch.arange(b.size)):
            # a dummy (a sharded rank with no rows left) runs the same passes as the other ranks; nothing kept
            keep = not mb.dummy
            cols = slice(0, mb.ids.shape[1] - 1)
            if need_old:
                assert b.old_logp is not None
                lp, ent = self._next_token(mb, entropy="stat")
                assert ent is not None
                if keep:
                    b.old_logp[mb.rows, cols] = lp
                    ent_sum = ent_sum + ent.sum()  # 0 outside the mask
            if need_ref:
                assert b.ref_logp is not None
                lp = self._next_token(mb, reference=True)[0]
                if keep:
                    b.ref_logp[mb.rows, cols] = lp
            if self.critic is not None:
                values = self._values(mb.ids, mb.attn).float()
                if keep:
                    b.values[mb.rows, cols] = values
        if self._world > 1:  # each row was filled by one rank and is 0 on the others: the sums are exact
            for t in (b.old_logp, b.ref_logp, b.values if self.critic is not None else None):
                if t is not None:
                    distributed.all_reduce_tensor_(t)
            (ent_sum,) = distributed.all_reduce_sum([ent_sum], self.device)
        out["_entropy_sum"] = float(ent_sum)
        if need_old and need_ref:
            assert b.old_logp is not None and b.ref_logp is not None
            out["_kl_sum"] = float(algos.kl_estimate(b.old_logp, b.ref_logp, cfg.kl_estimator, b.mask).sum())
        return out

    @torch.no_grad()
    def _advantages(self, b: _Batch, use_kl: bool) -> None:
        cfg = self.cfg
        kl = None
        if use_kl and cfg.kl_mode == "reward":
            assert b.old_logp is not None and b.ref_logp is not None
            kl = algos.kl_estimate(b.old_logp, b.ref_logp, cfg.kl_estimator, b.mask)
        if cfg.algorithm == "ppo":
            token_rewards = algos.place_rewards(b.rewards, b.mask)
            if kl is not None:
                token_rewards = token_rewards - cfg.kl_coef * kl
            # GAE is a sequential scan over T: run it on the CPU (cheap there, launch-bound on a GPU).
            adv, ret = algos.gae(token_rewards.cpu(), b.values.cpu(), b.mask.cpu(), cfg.gamma, cfg.lam)
            b.returns = ret.to(self.device)
            b.advantages = algos.masked_whiten(adv.to(self.device), b.mask)
        else:
            scores = b.rewards.float()
            if kl is not None:
                scores = scores - cfg.kl_coef * kl.sum(-1)
            b.advantages = algos.grpo_advantages(scores, b.group_index, b.mask, cfg.grpo_norm_std)

    def _update(self, b: _Batch, mb: torch.Tensor, *, stats_pass: bool, stats: dict[str, float]) -> dict[str, float]:
        """One optimiser step (policy, and critic for PPO) on mini-batch rows ``mb``.

        ``stats_pass``: this pass sees the policy as it was at the start of the step (no ``old``
        pass ran), so the entropy / KL statistics are taken here.
        """
        cfg = self.cfg
        dp = self._world > 1
        # this rank's part of the mini-batch; losses are scaled by the mini-batch's global tokens
        micro = self._rank_micro_batches(b, mb)
        n_tok = sum(b.row_tokens[i] for i in mb.tolist())
        self.policy.train()
        self.actor_optimizer.zero_grad(set_to_none=True)
        if self.critic is not None:
            self.critic.train()
            assert self.critic_optimizer is not None
            self.critic_optimizer.zero_grad(set_to_none=True)
        zero = torch.zeros((), device=self.device)
        acc = {"policy_loss": zero, "clip_fraction": zero, "approx_kl": zero}
        if self.critic is not None:
            acc.update(value_loss=zero, value_clip_fraction=zero)
        ent_sum, kl_sum = zero, zero
        for mc in micro:
            m = mc.mask
            share = 0.0 if mc.dummy else mc.tokens / n_tok
            logp, ent = self._next_token(mc, entropy="grad" if cfg.entropy_coef > 0 else
                                         "stat" if stats_pass else "none")
            old = logp.detach() if b.old_logp is None else mc.take(b.old_logp)
            loss, pst = algos.policy_loss(logp, old, mc.take(b.advantages), m, cfg.clip_ratio)
            acc["policy_loss"] = acc["policy_loss"] + loss.detach() * share
            acc["clip_fraction"] = acc["clip_fraction"] + pst["clip_fraction"] * share
            acc["approx_kl"] = acc["approx_kl"] + pst["approx_kl"] * share
            if b.ref_logp is not None:
                ref = mc.take(b.ref_logp)
                if cfg.kl_mode == "loss":
                    loss = loss + cfg.kl_coef * algos.masked_mean(algos.kl_estimate(logp, ref, cfg.kl_estimator), m)
                if stats_pass and not mc.dummy:
                    kl_sum = kl_sum + algos.masked_sum(algos.kl_estimate(logp.detach(), ref, cfg.kl_estimator), m)
            if ent is not None:
                if cfg.entropy_coef > 0:
                    loss = loss - cfg.entropy_coef * algos.masked_mean(ent, m)
                if stats_pass and not mc.dummy:
                    ent_sum = ent_sum + ent.detach().sum()  # 0 outside the mask
            (loss * share).backward()
            del logp, loss, ent
            if self.critic is not None:
                values = self._values(mc.ids, mc.attn)
                vloss, vclip = algos.value_loss(values, mc.take(b.values), mc.take(b.returns), m, cfg.value_clip)
                (vloss * share).backward()
                acc["value_loss"] = acc["value_loss"] + vloss.detach() * share
                acc["value_clip_fraction"] = acc["value_clip_fraction"] + vclip * share
                del values, vloss
        if dp:  # gradients and statistics summed over the ranks: the single-process mini-batch's
            self._reduce_gradients()
            keys = list(acc)
            *sums, ent_total, kl_total = distributed.all_reduce_sum([*acc.values(), ent_sum, kl_sum], self.device)
            acc = dict(zip(keys, (torch.tensor(v) for v in sums)))
            ent_sum, kl_sum = torch.tensor(ent_total), torch.tensor(kl_total)
        if stats_pass:
            stats["_entropy_sum"] += float(ent_sum)
            stats["_kl_sum"] += float(kl_sum)
        out = {k: float(v) for k, v in acc.items()}
        out["lr"] = float(self.actor_optimizer.param_groups[0]["lr"])
        out["grad_norm"], skipped = _clip_and_step(self.actor_optimizer, cfg.max_grad_norm, "policy")
        self.actor_scheduler.step()
        out["skipped_updates"] = float(skipped)
        if self.critic is not None:
            assert self.critic_optimizer is not None and self.critic_scheduler is not None
            out["value_grad_norm"], vskipped = _clip_and_step(self.critic_optimizer, cfg.max_grad_norm, "critic")
            self.critic_scheduler.step()
            out["skipped_updates"] += float(vskipped)
        return out

    # --- state --------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything an exact resume needs: trainable weights of the policy (all of them, or the
        LoRA adapters) and the critic, optimisers, schedulers, the shuffling RNG and the step count.

        Tensors are references to the live ones: save the dict before the next :meth:`step`.
        The frozen parts (the reference, LoRA base weights) come from the model the trainer is built
        from and are not included.
        """
        state: dict[str, Any] = {
            "format": _STATE_FORMAT,
            "algorithm": self.cfg.algorithm,
            "lora": self.lora,
            "step": self._steps,
            "policy": {n: p.detach() for n, p in trainable_parameters(self.policy).items()},
            "actor_optimizer": self.actor_optimizer.state_dict(),
            "actor_scheduler": self.actor_scheduler.state_dict(),
            "generator": self.generator.get_state(),
        }
        if self.critic is not None:
            assert self.critic_optimizer is not None and self.critic_scheduler is not None
            state["critic"] = {n: p.detach() for n, p in trainable_parameters(self.critic).items()}
            state["critic_optimizer"] = self.critic_optimizer.state_dict()
            state["critic_scheduler"] = self.critic_scheduler.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` into a trainer built the same way (same model, config)."""
        if state.get("format") != _STATE_FORMAT:
            raise InvalidArgument(f"trainer state format {state.get('format')!r} is not {_STATE_FORMAT}")
        if state.get("algorithm") != self.cfg.algorithm:
            raise InvalidArgument(f"the state was written by a {state.get('algorithm')} trainer; this one runs "
                                  f"{self.cfg.algorithm}")
        if bool(state.get("lora")) != self.lora:
            raise InvalidArgument("the state and this trainer disagree on LoRA (adapters vs full weights): "
                                  f"state lora={bool(state.get('lora'))}, trainer lora={self.lora}")
        _load_params(self.policy, state["policy"], "policy")
        self.actor_optimizer.load_state_dict(state["actor_optimizer"])
        self.actor_scheduler.load_state_dict(state["actor_scheduler"])
        if self.critic is not None:
            assert self.critic_optimizer is not None and self.critic_scheduler is not None
            if "critic" not in state:
                raise InvalidArgument("the state has no critic, but this PPO trainer has one")
            _load_params(self.critic, state["critic"], "critic")
            self.critic_optimizer.load_state_dict(state["critic_optimizer"])
            self.critic_scheduler.load_state_dict(state["critic_scheduler"])
        self.generator.set_state(state["generator"])
        self._steps = int(state["step"])

    # --- export -------------------------------------------------------------------------------

    def export_policy(self, out_dir: str | Path) -> Path:
        """Write the current policy as a Hugging Face model folder (config, safetensors weights,
        generation config, tokenizer) that ``AutoModelForCausalLM.from_pretrained`` loads; LoRA
        adapters are merged into the weights.  Built under a temp name and renamed into place.
        Data parallel: only rank 0 writes (the replicas are identical); the others return ``out``."""
        out = Path(out_dir)
        if not self.is_main_process:  # data parallel: the replicas are identical; rank 0 writes
            return out
        dtype = self._export_dtype
        with torch.no_grad(), atomic_dir(out) as tmp:
            if self.lora:
                model = self.policy.get_base_model()
                state = _merged_state_dict(model)
            else:
                model = self.policy
                state = model.state_dict()
            state = {k: v.detach().to(device="cpu", dtype=dtype) if v.is_floating_point() else v.cpu()
                     for k, v in state.items()}
            saved_dtype = getattr(model.config, "dtype", None)
            model.config.dtype = dtype
            try:
                model.save_pretrained(tmp, state_dict=state)
            finally:
                model.config.dtype = saved_dtype
            self.tokenizer.save_pretrained(tmp)
            if self.prompt_profile:
                from s3core.search.profiles import write_profile_record

                write_profile_record(tmp, self.prompt_profile)
        return out


def _merged_state_dict(base: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of a LoRA-injected model with every adapter merged into its base weight, under the
    plain model's key names (``q_proj.base_layer.weight`` -> ``q_proj.weight``; adapter keys dropped)."""
    from peft.tuners.lora import LoraLayer

    state: dict[str, torch.Tensor] = {}
    for key, value in base.state_dict().items():
        if "lora_" not in key:
            state[key.replace(".base_layer.", ".")] = value
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer):
            weight = module.base_layer.weight
            delta = sum((module.get_delta_weight(a) for a in module.active_adapters if a in module.lora_A),
                        torch.zeros_like(weight, dtype=torch.float32))
            state[f"{name}.weight"] = weight.float() + delta.float()
    return state


def _load_params(model: nn.Module, saved: dict[str, torch.Tensor], what: str) -> None:
    params = trainable_parameters(model)
    missing = sorted(set(params) - set(saved))
    unexpected = sorted(set(saved) - set(params))
    if missing or unexpected:
        raise InvalidArgument(f"{what} state does not match this model: missing {missing[:3]}"
                              f"{'...' if len(missing) > 3 else ''}, unexpected {unexpected[:3]}"
                              f"{'...' if len(unexpected) > 3 else ''}")
    with torch.no_grad():
        for name, p in params.items():
            src = saved[name]
            if src.shape != p.shape:
                raise InvalidArgument(f"{what} state: {name} has shape {tuple(src.shape)}, the model "
                                      f"{tuple(p.shape)}")
            p.copy_(src)


def _optimizer_params(opt: torch.optim.Optimizer) -> list[nn.Parameter]:
    return [p for g in opt.param_groups for p in g["params"]]


def _clip_and_step(opt: torch.optim.Optimizer, max_norm: float, what: str) -> tuple[float, bool]:
    """Clip the gradient (``max_norm`` 0 = measure only) and step; skip the step on a non-finite norm.

    Returns ``(gradient norm before clipping, skipped)``.
    """
    grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
    if not grads:
        return 0.0, False
    norm = torch.nn.utils.get_total_norm(grads)
    value = float(norm)
    if not math.isfinite(value):
        logger.warning("%s gradient norm is %s: optimiser step skipped", what, value)
        opt.zero_grad(set_to_none=True)
        return value, True
    if max_norm > 0:
        torch.nn.utils.clip_grads_with_norm_(grads, max_norm, norm)
    opt.step()
    return value, False


def _info_means(samples: list[Sample]) -> dict[str, float]:
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for s in samples:
        for k, v in s.info.items():
            sums[k] = sums.get(k, 0.0) + float(v)
            counts[k] = counts.get(k, 0) + 1
    return {f"info/{k}": sums[k] / counts[k] for k in sums}
