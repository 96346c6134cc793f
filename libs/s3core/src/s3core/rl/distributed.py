"""Data parallelism for :class:`~s3core.rl.trainer.RLTrainer` over an initialised ``torch.distributed``.

When the default process group has more than one rank, every rank holds a replica of the trainer
and receives the *same* full list of samples.  :meth:`RLTrainer.step` then

* scores its share of the rows (old / reference log-probs, values) and sums the per-token tensors
  across ranks (each row is filled by exactly one rank, the others add zeros: exact), so every rank
  computes the advantages -- batch whitening, GRPO group statistics -- over the full batch;
* splits every mini-batch across the ranks (rank ``r`` takes rows ``r, r + W, ...`` of it), scales
  each micro-batch's loss by its share of the mini-batch's *global* action tokens and sums the
  gradients across ranks (:func:`all_reduce_gradients`), so each optimiser step sees the
  single-process mini-batch gradient and every replica takes the same step;
* sums its statistics across ranks (:func:`all_reduce_sum`).

The shuffling generator is broadcast from rank 0 at each step and :func:`check_same_batch` refuses
ranks holding different batches.  Only rank 0 (:func:`is_main_process`) writes checkpoints and
policy exports.  Without an initialised process group (or with one rank) nothing here communicates.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.distributed as dist

__all__ = [
    "all_reduce_gradients",
    "all_reduce_sum",
    "broadcast_module_",
    "broadcast_tensor_",
    "check_same_batch",
    "is_main_process",
    "world",
]

# gradients travel in flat buckets of at most this many bytes (one collective each)
BUCKET_BYTES = 64 << 20


def world() -> tuple[int, int]:
    """``(rank, world size)`` of the default process group; ``(0, 1)`` when there is none."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """True on rank 0, and in a process without ``torch.distributed``: the one that writes files."""
    return world()[0] == 0


def all_reduce_sum(values: Sequence[float | torch.Tensor], device: torch.device) -> list[float]:
    """The sums over all ranks of a few scalars (one collective); float64 on the wire."""
    t = torch.stack([v.detach().to(device=device, dtype=torch.float64).reshape(())
                     if isinstance(v, torch.Tensor) else torch.tensor(float(v), dtype=torch.float64, device=device)
                     for v in values])
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def all_reduce_tensor_(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` across ranks in place."""
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_tensor_(t: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Overwrite ``t`` with rank ``src``'s (same shape and dtype on every rank)."""
    dist.broadcast(t, src=src)
    return t


def _buckets(tensors: Iterable[torch.Tensor], limit: int) -> list[list[torch.Tensor]]:
    """Consecutive groups of same-dtype, same-device tensors of at most ``limit`` bytes (a bigger
    tensor goes alone)."""
    out: list[list[torch.Tensor]] = []
    cur: list[torch.Tensor] = []
    size = 0
    for t in tensors:
        nbytes = t.numel() * t.element_size()
        if cur and (size + nbytes > limit or t.dtype != cur[0].dtype or t.device != cur[0].device):
            out.append(cur)
            cur, size = [], 0
        cur.append(t)
        size += nbytes
    if cur:
        out.append(cur)
    return out


def _all_reduce_flat(tensors: Sequence[torch.Tensor], bucket_bytes: int) -> None:
    """Sum every tensor across ranks in place, bucket by bucket."""
    for bucket in _buckets(tensors, bucket_bytes):
        if len(bucket) == 1:
            dist.all_reduce(bucket[0], op=dist.ReduceOp.SUM)
            continue
        flat = torch.cat([t.reshape(-1) for t in bucket])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        for t, part in zip(bucket, flat.split([t.numel() for t in bucket])):
            t.copy_(part.view_as(t))


def all_reduce_gradients(params: Sequence[torch.nn.Parameter], bucket_bytes: int = BUCKET_BYTES) -> None:
    """Sum the gradients of ``params`` across ranks (each rank's loss already carries its global share).

    A parameter that got a gradient on some rank but not on this one (this rank had no rows in the
    mini-batch, or none that reach it) takes part with zeros; one that got none anywhere keeps
    ``grad is None``, as in a single process (AdamW then leaves it alone).
    """
    if not params:
        return
    device = params[0].device
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=device)
    dist.all_reduce(has, op=dist.ReduceOp.SUM)
    live = []
    for p, n in zip(params, has.tolist()):
        if n > 0:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            live.append(p.grad)
    _all_reduce_flat(live, bucket_bytes)


def broadcast_module_(tensors: Sequence[torch.Tensor], src: int = 0, bucket_bytes: int = BUCKET_BYTES) -> None:
    """Overwrite ``tensors`` (parameters, buffers) with rank ``src``'s, bucket by bucket."""
    with torch.no_grad():
        for bucket in _buckets(tensors, bucket_bytes):
            if len(bucket) == 1:
                dist.broadcast(bucket[0].data, src=src)
                continue
            flat = torch.cat([t.detach().reshape(-1) for t in bucket])
            dist.broadcast(flat, src=src)
            for t, part in zip(bucket, flat.split([t.numel() for t in bucket])):
                t.data.copy_(part.view_as(t))


def check_same_batch(signature: Sequence[int], device: torch.device) -> None:
    """Raise when the ranks disagree on ``signature`` (a few integers describing the batch)."""
    t = torch.tensor([*signature, *(-v for v in signature)], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    n = len(signature)
    hi, neg_lo = t[:n].tolist(), t[n:].tolist()
    if any(h != -lo for h, lo in zip(hi, neg_lo)) or list(signature) != hi:
        raise RuntimeError(f"data-parallel ranks hold different batches (rank {dist.get_rank()} has "
                           f"{list(signature)}; max over ranks {hi}, min {[-x for x in neg_lo]}): every rank "
                           "must step on the same full list of samples")
