"""``rl.strategy: fsdp``: the RL update with policy, critic and reference sharded across the ranks (torch FSDP2).

With the default ``replicate`` strategy every rank holds whole models (:mod:`s3core.rl.distributed`). Here
:class:`FSDPTrainer` applies :func:`torch.distributed.fsdp.fully_shard` to every decoder layer and then to the
model root, for the policy, the critic (its value head as a group of its own, always fp32) and the frozen
reference, so a rank holds ``1/W`` of each model's parameters, gradients and AdamW state; a layer's full
weights exist only while it runs (all-gathered, then freed).

* **The step is the replicated one's.** Every rank gets the same full list of samples, takes rows
  ``rank, rank + W, ...`` of every mini-batch and scales each micro-batch's loss by its share of the
  mini-batch's global action tokens; FSDP reduce-scatters the gradients as a *sum*
  (``set_gradient_divide_factor(1)``), so the optimiser step is the single-process mini-batch step.
  FSDP's forwards are collectives, so every rank must run as many of them as the others: a rank with fewer
  micro-batches runs dummy ones (a real row whose results are dropped and whose loss weighs 0).
* **Mixed precision** (``rl.dtype``): with bf16 (``auto`` on CUDA, ``bfloat16`` anywhere) a
  ``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)``: sharded fp32 master weights and fp32
  gradient reduction, bf16 all-gathered weights and compute (no autocast on top). The reference is stored
  in bf16. fp32 otherwise.
* **Activation checkpointing**: ``rl.gradient_checkpointing`` (transformers' non-reentrant checkpointing
  inside each sharded layer).
* **CPU offload** (``rl.fsdp_cpu_offload``): ``CPUOffloadPolicy`` -- sharded parameters, gradients and the
  optimiser step in host memory. CUDA only: on a CPU-only torch, FSDP2's offload path asks for an
  accelerator (``RuntimeError: Cannot access accelerator device when none is available.``), so it is
  refused there with a clear error (checked on torch 2.13.0+cpu).
* **Micro-batches by tokens** (``rl.micro_batch_tokens``, both strategies): rows longest first, as many per
  micro-batch as fit the padded-token budget (:meth:`s3core.rl.trainer._Batch.split`).
* **Checkpoints** (:func:`save_sharded_checkpoint`, called by :class:`~s3core.rl.checkpoint.CheckpointManager`
  for a sharded trainer): ``shards/`` is a ``torch.distributed.checkpoint`` of the policy, critic and both
  optimisers, every rank writing its own shards (the checkpoint directory must be one file system for all
  ranks: one node, or a shared volume); rank 0 writes ``trainer_meta.pt`` (step, schedulers, shuffling RNG),
  ``extra.json``, the HF export ``policy/`` (full weights gathered to rank 0) and the manifest last. Each
  rank saves and restores its own process RNG states (``rng-rank<r>.pt``). Resume is exact; a checkpoint
  written by W ranks loads on any number of FSDP ranks (DCP reshards).
* **Exports** (:meth:`FSDPTrainer.export_policy`): the full state dict is gathered to rank 0 (on the
  host), and only rank 0 writes the Hugging Face folder.

A single process (world size 1) has nothing to shard: ``RLTrainer.from_pretrained`` then builds the plain
trainer. ``python -m s3core.rl.fsdp`` (under ``torchrun``) runs FSDP steps on synthetic samples -- the
one-node entry used by ``scripts/gpu_smoke_fsdp.sh`` (``bench/fsdp.py`` spawns its ranks itself). The full
loop is meant to run with ``rl.strategy: fsdp`` inside the Ray Train workers (``train.backend: ray``); that
path still broadcasts replicated parameters and resumes on rank 0 alone (``s3core.train.ray_backend``), so it
is not yet usable with this strategy (issue 14).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from s3core.config import RLConfig
from s3core.errors import ConfigError
from s3core.io import atomic_dir, write_json
from s3core.rl import distributed
from s3core.rl.models import (
    ValueModel,
    autocast_dtype,
    build_reference,
    is_lora,
    load_critic,
    load_policy,
    resolve_device,
)
from s3core.rl.trainer import RLTrainer, _Batch, _Micro

__all__ = [
    "FSDPTrainer",
    "load_sharded_checkpoint",
    "main",
    "resident_bytes",
    "save_sharded_checkpoint",
    "shard_model",
    "synthetic_samples",
]

logger = logging.getLogger(__name__)

CPU_OFFLOAD_NEEDS_CUDA = ("rl.fsdp_cpu_offload needs CUDA: FSDP2's CPUOffloadPolicy moves each shard to the "
                          "accelerator for its forward/backward, and torch without one fails with 'Cannot "
                          "access accelerator device when none is available.'")
_META_FORMAT = 1


def _decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The decoder layers of a causal LM (``model.model.layers``) or a bare backbone (``model.layers``)."""
    inner = getattr(model, "model", model)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, nn.ModuleList) or not len(layers):
        raise ConfigError(f"rl.strategy fsdp: cannot find the decoder layers of {type(model).__name__}")
    return list(layers)


def shard_model(model: nn.Module, mesh: Any, *, mp: Any = None, offload: bool = False,
                fp32: tuple[nn.Module, ...] = (), frozen: bool = False) -> nn.Module:
    """``fully_shard`` each decoder layer of ``model`` (under ``backbone`` for a critic), each module of
    ``fp32`` (its own group, fp32 parameters whatever ``mp`` says), then the root; gradients are reduced as
    sums (the trainer scales every rank's loss by its global share). The root group (embeddings, LM head,
    final norm) of a ``frozen`` model (the reference: forwards only) is resharded after every forward --
    FSDP's default keeps a root unsharded until its backward, which a frozen model never runs."""
    from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    kw = {"mesh": mesh, "mp_policy": mp or MixedPrecisionPolicy(),
          "offload_policy": CPUOffloadPolicy() if offload else OffloadPolicy()}
    body = model.backbone if isinstance(model, ValueModel) else model
    for layer in _decoder_layers(body):
        fully_shard(layer, **kw)
    for m in fp32:
        fully_shard(m, **{**kw, "mp_policy": MixedPrecisionPolicy(param_dtype=torch.float32,
                                                                  reduce_dtype=torch.float32)})
    fully_shard(model, **kw, reshard_after_forward=True if frozen else None)
    for m in model.modules():
        if isinstance(m, FSDPModule):
            # a plain SUM: with factor 1 FSDP would otherwise ask for ReduceOp.PREMUL_SUM(1.0), which gloo
            # refuses ("Cannot use ReduceOp.PREMUL_SUM with Gloo", torch 2.13.0 _get_gradient_divide_factors)
            m.set_gradient_divide_factor(1.0)
            m.set_force_sum_reduction_for_comms(True)
    return model


class FSDPTrainer(RLTrainer):
    """:class:`~s3core.rl.trainer.RLTrainer` with its models sharded by FSDP2 over the default process group.

    Same arguments as ``RLTrainer``; the models are given whole (on any device) and sharded here. Needs an
    initialised ``torch.distributed`` group of at least 2 ranks; full-parameter training only (no LoRA).
    """

    sharded = True

    def __init__(self, policy: nn.Module, tokenizer: Any, cfg: RLConfig, *, critic: ValueModel | None = None,
                 reference: nn.Module | None = None, device: str | torch.device | None = None,
                 total_steps: int | None = None, temperature: float = 1.0,
                 export_dtype: torch.dtype | None = None) -> None:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy

        cfg.validate("rl")
        rank, world = distributed.world()
        if world < 2:
            raise ConfigError("rl.strategy fsdp needs torch.distributed initialised over >= 2 ranks (Ray Train "
                              f"workers or torchrun); this process has world size {world}")
        if is_lora(policy):
            raise ConfigError("rl.strategy fsdp trains full parameters: set rl.lora_rank: 0 (LoRA runs "
                              "rl.strategy: replicate)")
        dev = device if isinstance(device, torch.device) else resolve_device(device or cfg.device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        if cfg.fsdp_cpu_offload and dev.type != "cuda":
            raise ConfigError(CPU_OFFLOAD_NEEDS_CUDA)
        amp = autocast_dtype(cfg.dtype, dev)
        # the models stay where they were given (from_pretrained: the host): fully_shard moves one group at a
        # time to the device and keeps only its shard there, so no whole model is ever on an accelerator
        if cfg.algorithm == "ppo" and critic is None:
            critic = ValueModel.from_causal_lm(policy)
        if cfg.kl_coef > 0 and reference is None:
            reference = build_reference(policy, amp)
        mesh = init_device_mesh(dev.type, (world,))
        mp = MixedPrecisionPolicy(param_dtype=amp, reduce_dtype=torch.float32) if amp is not None else None
        off = bool(cfg.fsdp_cpu_offload)
        shard_model(policy, mesh, mp=mp, offload=off)
        if critic is not None:
            shard_model(critic, mesh, mp=mp, offload=off, fp32=(critic.value_head,))
        if reference is not None:
            reference.eval().requires_grad_(False)
            shard_model(reference, mesh, mp=mp, offload=off, frozen=True)
        self.mesh = mesh
        super().__init__(policy, tokenizer, cfg, critic=critic, reference=reference, device=dev,
                         total_steps=total_steps, temperature=temperature, export_dtype=export_dtype)
        self._amp = None  # the compute dtype is the MixedPrecisionPolicy's: no autocast on top
        self._mixed = amp

    @classmethod
    def from_pretrained(cls, model_path: str, cfg: RLConfig, *, device: str | None = None,
                        total_steps: int | None = None, temperature: float = 1.0) -> FSDPTrainer:
        """Load the models as :meth:`RLTrainer.from_pretrained` does, whole but on the host of every rank, then
        shard them onto the device (see ``__init__``)."""
        from transformers import AutoConfig

        from s3core.generation.models import resolve_model

        cfg.validate("rl")
        if not model_path:
            raise ConfigError("the model the learner trains is empty (learner.model / searcher.model)")
        if cfg.lora_rank > 0:
            raise ConfigError("rl.strategy fsdp trains full parameters: set rl.lora_rank: 0 (LoRA runs "
                              "rl.strategy: replicate)")
        path = resolve_model(model_path)
        dev = resolve_device(device or cfg.device)
        source_dtype = getattr(AutoConfig.from_pretrained(path), "dtype", None)
        if isinstance(source_dtype, str):
            source_dtype = getattr(torch, source_dtype, None)
        if source_dtype not in (torch.float32, torch.bfloat16, torch.float16):
            source_dtype = torch.float32
        # whole models on the host only (a 7B policy + critic in fp32 would not fit on one 80 GB GPU
        # before sharding); FSDPTrainer shards them group by group onto the device
        load_on = torch.device("cpu")
        policy, tokenizer = load_policy(path, cfg, load_on)
        critic = None
        if cfg.algorithm == "ppo":
            critic = load_critic(resolve_model(cfg.critic_model) if cfg.critic_model else path, cfg, load_on)
        reference = build_reference(policy, autocast_dtype(cfg.dtype, dev)) if cfg.kl_coef > 0 else None
        return cls(policy, tokenizer, cfg, critic=critic, reference=reference, device=dev,
                   total_steps=total_steps, temperature=temperature, export_dtype=source_dtype)

    # --- the strategy hooks of RLTrainer --------------------------------------------------------

    def _to_device(self, module: nn.Module) -> nn.Module:
        return module  # sharded in place (and, with CPU offload, deliberately on the host)

    def _rank_micro_batches(self, b: _Batch, rows: torch.Tensor) -> list[_Micro]:
        """This rank's micro-batches, padded with dummies to the most any rank has (FSDP's forwards and
        backwards are collectives). Every rank holds the whole batch, so each computes all ranks' counts."""
        cfg, w = self.cfg, self._world
        counts = [len(b.split(rows[r::w], cfg.micro_batch_size, cfg.micro_batch_tokens)) if len(rows[r::w]) else 0
                  for r in range(w)]
        return b.micro_batches(rows[self._rank::w], cfg.micro_batch_size, cfg.micro_batch_tokens,
                               pad_to=max(counts))

    def _reduce_gradients(self) -> None:
        """Nothing: FSDP has reduce-scattered (summed) every micro-batch's gradients into the shards."""

    # --- state ------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        raise NotImplementedError("an FSDP trainer's state is sharded: save it with CheckpointManager.save "
                                  "(torch.distributed.checkpoint, every rank)")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        raise NotImplementedError("an FSDP trainer's state is sharded: load it with CheckpointManager.load")

    def _models(self) -> dict[str, tuple[nn.Module, torch.optim.Optimizer]]:
        out = {"policy": (self.policy, self.actor_optimizer)}
        if self.critic is not None:
            assert self.critic_optimizer is not None
            out["critic"] = (self.critic, self.critic_optimizer)
        return out

    def sharded_state(self) -> dict[str, Any]:
        """The DCP state (sharded): ``{policy, actor_optimizer[, critic, critic_optimizer]}``; collective."""
        from torch.distributed.checkpoint.state_dict import get_state_dict

        state: dict[str, Any] = {}
        for name, (model, opt) in self._models().items():
            msd, osd = get_state_dict(model, [opt])
            state[name] = msd
            state["actor_optimizer" if name == "policy" else "critic_optimizer"] = osd
        return state

    def load_sharded_state(self, state: dict[str, Any]) -> None:
        from torch.distributed.checkpoint.state_dict import set_state_dict

        for name, (model, opt) in self._models().items():
            key = "actor_optimizer" if name == "policy" else "critic_optimizer"
            set_state_dict(model, [opt], model_state_dict=state[name], optim_state_dict=state[key])

    def meta_state(self) -> dict[str, Any]:
        """The small, replicated rest of the state: format, algorithm, step, schedulers, shuffling RNG."""
        meta: dict[str, Any] = {"format": _META_FORMAT, "strategy": "fsdp", "algorithm": self.cfg.algorithm,
                                "world": self._world_size(), "step": self._steps,
                                "actor_scheduler": self.actor_scheduler.state_dict(),
                                "generator": self.generator.get_state()}
        if self.critic_scheduler is not None:
            meta["critic_scheduler"] = self.critic_scheduler.state_dict()
        return meta

    def load_meta_state(self, meta: dict[str, Any]) -> None:
        from s3core.errors import InvalidArgument

        if meta.get("format") != _META_FORMAT or meta.get("strategy") != "fsdp":
            raise InvalidArgument(f"not a sharded trainer state (format {meta.get('format')!r}, strategy "
                                  f"{meta.get('strategy')!r})")
        if meta.get("algorithm") != self.cfg.algorithm:
            raise InvalidArgument(f"the state was written by a {meta.get('algorithm')} trainer; this one runs "
                                  f"{self.cfg.algorithm}")
        self.actor_scheduler.load_state_dict(meta["actor_scheduler"])
        if self.critic_scheduler is not None:
            if "critic_scheduler" not in meta:
                raise InvalidArgument("the state has no critic, but this PPO trainer has one")
            self.critic_scheduler.load_state_dict(meta["critic_scheduler"])
        self.generator.set_state(meta["generator"])
        self._steps = int(meta["step"])

    @staticmethod
    def _world_size() -> int:
        return distributed.world()[1]

    # --- export -----------------------------------------------------------------------------------

    def full_policy_state(self) -> dict[str, torch.Tensor]:
        """The policy's full state dict on rank 0's host (empty on the others); collective."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(self.policy, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def export_policy(self, out_dir: str | Path) -> Path:
        """Gather the full policy to rank 0 (every rank must call this) and write it there as a Hugging Face
        folder in the export dtype; the other ranks write nothing and return ``out``."""
        out = Path(out_dir)
        state = self.full_policy_state()
        if not self.is_main_process:
            return out
        dtype = self._export_dtype
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
        model = self.policy
        with torch.no_grad(), atomic_dir(out) as tmp:
            saved_dtype = getattr(model.config, "dtype", None)
            model.config.dtype = dtype
            try:
                model.save_pretrained(tmp, state_dict=state)
            finally:
                model.config.dtype = saved_dtype
            self.tokenizer.save_pretrained(tmp)
            if getattr(self, "prompt_profile", ""):
                from s3core.search.profiles import write_profile_record

                write_profile_record(tmp, self.prompt_profile)
        return out


# --- sharded checkpoints (called by CheckpointManager for a sharded trainer) -------------------------------


def _barrier() -> None:
    import torch.distributed as dist

    dist.barrier()


def save_sharded_checkpoint(manager: Any, target: Path, step: int, trainer: FSDPTrainer, extra_text: str,
                            metric: float | None) -> Path:
    """Write checkpoint ``target`` of a sharded trainer; every rank calls this (collective).

    Built under ``.<name>.sharded.tmp`` next to it and renamed into place by rank 0 once every rank's shards
    are written and the manifest (checksums of every file) is complete: a crash leaves the old state.
    """
    import torch.distributed.checkpoint as dcp

    from s3core.rl.checkpoint import _FORMAT, MANIFEST, _fsync, _sha256, capture_rng

    rank = distributed.world()[0]
    root = manager.root
    tmp = root / f".{target.name}.sharded.tmp"
    t0 = time.perf_counter()
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        manager._remove_stale_temps()
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    _barrier()
    dcp.save(trainer.sharded_state(), checkpoint_id=str(tmp / "shards"))
    torch.save(capture_rng(), tmp / f"rng-rank{rank}.pt")
    trainer.export_policy(tmp / "policy")
    if rank == 0:
        torch.save(trainer.meta_state(), tmp / "trainer_meta.pt")
        (tmp / "extra.json").write_text(extra_text + "\n", encoding="utf-8")
    _barrier()  # every rank's files are in tmp
    if rank == 0:
        files: dict[str, dict[str, Any]] = {}
        for f in sorted(p for p in tmp.rglob("*") if p.is_file()):
            _fsync(f)
            files[f.relative_to(tmp).as_posix()] = {"sha256": _sha256(f), "size": f.stat().st_size}
        write_json(tmp / MANIFEST, {"format": _FORMAT, "step": int(step), "created": time.time(), "files": files,
                                    "strategy": "fsdp", "world": trainer._world_size()})
        for d in [tmp, *(p for p in tmp.rglob("*") if p.is_dir())]:
            _fsync(d)
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old-sharded")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        _fsync(root)
        write_json(root / "latest.json", {"name": target.name, "step": int(step)})
        if manager.keep_best and metric is not None:
            best = manager._best_record()
            if best is None or not (root / best["name"]).is_dir() or metric > best["metric"]:
                write_json(root / "best.json", {"name": target.name, "step": int(step), "metric": metric})
        manager.prune()
        logger.info("sharded checkpoint %s written in %.1fs", target, time.perf_counter() - t0)
    _barrier()  # nobody goes on before the checkpoint is in place
    return target


def load_sharded_checkpoint(root: Path, trainer: Any) -> dict[str, Any]:
    """Restore a (verified) sharded checkpoint into ``trainer``; every rank calls this. Returns ``extra``."""
    import torch.distributed.checkpoint as dcp

    from s3core.errors import DataError, InvalidArgument
    from s3core.rl.checkpoint import restore_rng

    if not getattr(trainer, "sharded", False):
        raise InvalidArgument(f"{root} is a sharded (rl.strategy fsdp) checkpoint: load it into an FSDP trainer "
                              "(rl.strategy: fsdp over >= 2 ranks)")
    try:
        state = trainer.sharded_state()
        dcp.load(state, checkpoint_id=str(root / "shards"))
        meta = torch.load(root / "trainer_meta.pt", map_location="cpu", weights_only=True)
        payload = json.loads((root / "extra.json").read_text(encoding="utf-8"))
    except (OSError, RuntimeError, ValueError) as e:
        raise DataError(str(root), None, f"cannot read the sharded checkpoint: {e}") from None
    trainer.load_sharded_state(state)
    trainer.load_meta_state(meta)
    rng = root / f"rng-rank{distributed.world()[0]}.pt"
    if rng.is_file():  # a checkpoint written by fewer ranks has none for this one
        restore_rng(torch.load(rng, map_location="cpu", weights_only=True))
    logger.info("resumed from sharded checkpoint %s (step %d)", root, trainer.step_count)
    return dict(payload.get("extra") or {})


# --- measuring, synthetic batches, the torchrun entry ----------------------------------------------------


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def resident_bytes(trainer: RLTrainer) -> dict[str, int]:
    """Bytes this rank holds for parameters (policy, critic, reference: its shards under FSDP), gradients
    and optimiser state, counted from the storages behind the tensors (each once, whole)."""
    seen: set[int] = set()

    def size(ts: Any) -> int:
        n = 0
        for t in ts:
            if t is None or not isinstance(t, torch.Tensor):
                continue
            loc = _local(t)
            if not loc.numel():
                continue
            storage = loc.untyped_storage()
            key = storage.data_ptr()
            if key in seen:
                continue
            seen.add(key)
            # the whole storage: FSDP2's sharded gradients are views into one reduce-scatter buffer per
            # group, its sharded parameters views of padded shards
            n += storage.nbytes()
        return n

    models = [m for m in (trainer.policy, trainer.critic, trainer.reference) if m is not None]
    params = size(p for m in models for p in m.parameters())
    grads = size(p.grad for m in models for p in m.parameters())
    optim = 0
    for opt in (trainer.actor_optimizer, trainer.critic_optimizer):
        if opt is not None:
            optim += size(v for st in opt.state.values() for v in st.values())
    return {"params": params, "grads": grads, "optimizer": optim, "total": params + grads + optim}


def synthetic_samples(step: int, n: int, vocab: int, *, seed: int = 0, min_len: int = 16, max_len: int = 64,
                      group: int = 4) -> list[Any]:
    """A deterministic batch of ``n`` fake trajectories (prompt, then alternating action / observation
    spans; varied lengths; 0/1 rewards) -- the same on every rank for the same arguments."""
    from s3core.rl.batch import Sample

    g = torch.Generator().manual_seed(seed * 100_003 + step)
    out = []
    for i in range(n):
        length = int(torch.randint(min_len, max_len + 1, (1,), generator=g))
        ids = torch.randint(3, vocab, (length,), generator=g).tolist()
        mask = [0] * length
        pos = max(2, length // 4)
        while pos < length:
            span = int(torch.randint(2, 8, (1,), generator=g))
            for j in range(pos, min(length, pos + span)):
                mask[j] = 1
            pos += span + int(torch.randint(2, 8, (1,), generator=g))
        if not any(mask):
            mask[-1] = 1
        reward = float(torch.rand((), generator=g) < 0.5)
        out.append(Sample(ids, mask, reward, group=f"q{i // group}"))
    return out


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m s3core.rl.fsdp",
        description="FSDP2 RL steps on synthetic samples, one process per rank: run it under torchrun "
                    "(torchrun --nproc-per-node N -m s3core.rl.fsdp ...). Loads --model (a Hugging Face folder, "
                    "or 'tiny' for a freshly built tiny Qwen2), shards policy, critic and reference, runs --steps "
                    "PPO/GRPO steps, optionally saves a sharded checkpoint, resumes it and exports the policy; prints "
                    "one JSON line per rank (stats, resident bytes, CUDA peak memory).")
    p.add_argument("--model", default="tiny", help="HF model folder, embedded:<id>, or 'tiny' (default)")
    p.add_argument("--tiny-hidden", type=int, default=64, help="hidden size of the 'tiny' model (default 64)")
    p.add_argument("--tiny-layers", type=int, default=2, help="decoder layers of the 'tiny' model (default 2)")
    p.add_argument("--algorithm", choices=["ppo", "grpo"], default="ppo", help="default ppo")
    p.add_argument("--steps", type=int, default=2, help="RL steps (default 2)")
    p.add_argument("--batch", type=int, default=8, help="trajectories per step (default 8)")
    p.add_argument("--max-len", type=int, default=64, help="longest synthetic trajectory in tokens (default 64)")
    p.add_argument("--micro-batch-size", type=int, default=2, help="rows per micro-batch (default 2)")
    p.add_argument("--micro-batch-tokens", type=int, default=0, help="padded-token budget per micro-batch (0 = rows)")
    p.add_argument("--device", default="", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto", help="rl.dtype (default auto)")
    p.add_argument("--gradient-checkpointing", action="store_true", help="rl.gradient_checkpointing")
    p.add_argument("--cpu-offload", action="store_true", help="rl.fsdp_cpu_offload (CUDA only)")
    p.add_argument("--strategy", choices=["fsdp", "replicate"], default="fsdp", help="default fsdp")
    p.add_argument("--out", default="", help="write a checkpoint, resume from it and export the policy here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """The torchrun entry (see ``--help``)."""
    import torch.distributed as dist

    args = _parse(argv)
    if "RANK" not in os.environ:
        print("python -m s3core.rl.fsdp: run me under torchrun (RANK/WORLD_SIZE are not set)", file=sys.stderr)
        return 2
    dev = resolve_device(args.device or None)
    if dev.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    try:
        rank, world = distributed.world()
        model = args.model
        if model == "tiny":
            from s3core.rl.tiny import build_tiny_model

            model = os.path.join(args.out or "/tmp", "s3-fsdp-tiny")
            if rank == 0:
                build_tiny_model(model, seed=0, hidden_size=args.tiny_hidden, num_layers=args.tiny_layers)
            dist.barrier()
        cfg = RLConfig(algorithm=args.algorithm, actor_lr=1e-4, critic_lr=1e-4, kl_coef=0.01, group_size=4,
                       micro_batch_size=args.micro_batch_size, micro_batch_tokens=args.micro_batch_tokens,
                       mini_batch_size=max(1, args.batch // 2), dtype=args.dtype, device=str(dev),
                       gradient_checkpointing=args.gradient_checkpointing, fsdp_cpu_offload=args.cpu_offload,
                       strategy=args.strategy, seed=3)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        trainer = RLTrainer.from_pretrained(model, cfg, device=str(dev))
        vocab = int(trainer.vocab_size)
        t0 = time.perf_counter()
        stats = [trainer.step(synthetic_samples(s, args.batch, vocab, max_len=args.max_len))
                 for s in range(args.steps)]
        seconds = time.perf_counter() - t0
        report: dict[str, Any] = {"rank": rank, "world": world, "strategy": type(trainer).__name__,
                                  "steps": args.steps, "step_seconds": seconds / max(1, args.steps),
                                  "policy_loss": [s["policy_loss"] for s in stats],
                                  "resident_bytes": resident_bytes(trainer)}
        if dev.type == "cuda":
            report["cuda_peak_bytes"] = int(torch.cuda.max_memory_allocated())
        if args.out:
            from s3core.rl.checkpoint import CheckpointManager

            ck = CheckpointManager(Path(args.out) / "ckpt").save(trainer.step_count, trainer)
            again = RLTrainer.from_pretrained(model, cfg, device=str(dev))
            CheckpointManager(Path(args.out) / "ckpt").load(ck, again)
            nxt = synthetic_samples(args.steps, args.batch, vocab, max_len=args.max_len)
            a, b = trainer.step(nxt), again.step(nxt)
            report["resume_exact"] = all(a[k] == b[k] for k in a if k != "update_seconds")
            trainer.export_policy(Path(args.out) / "export")
            report["export"] = str(Path(args.out) / "export") if rank == 0 else ""
        print(json.dumps(report), flush=True)
        return 0
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
