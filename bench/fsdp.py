"""Sharded learner memory: per-rank parameter + gradient + optimiser bytes with FSDP2 over N ranks vs one process.

Builds a random Qwen2-style causal LM locally (``--hidden-size``/``--layers``/...; no hub download) or takes
``--model``, then runs the same ``--steps`` RL steps on the same synthetic batches
(:func:`s3core.rl.fsdp.synthetic_samples`) twice, each in fresh processes (``torch.multiprocessing`` spawn):

* one process: the plain :class:`~s3core.rl.trainer.RLTrainer` (whole policy, critic and reference);
* ``--ranks`` processes (gloo on loopback, FileStore rendezvous; nothing listens beyond ``lo``): the
  :class:`~s3core.rl.fsdp.FSDPTrainer` (``rl.strategy: fsdp``), policy, critic and reference sharded.

Memory is :func:`s3core.rl.fsdp.resident_bytes`: the bytes of every parameter (a rank's shards under FSDP),
gradient and AdamW state tensor a rank holds, counted from the tensors after each step (the gradients of
the last micro-batch are still there), the largest over the steps. The transient all-gathered weights of
the one layer that is running are not in it; the process's peak RSS (libraries and activations included)
is printed for information.

Printed: per run the bytes (params / grads / optimiser), RSS and step time; ``max_abs_diff=`` the largest
absolute difference of any updated policy/critic parameter between rank 0's gathered FSDP model and the one
process (0 would be bit-identical; float reassociation across ranks gives ~1e-7 after a few AdamW steps);
last ``ratio=`` = the largest rank's bytes / the one process's bytes (goal <= 0.6 at 2 ranks).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--ranks", type=int, default=2, help="FSDP ranks (processes) (default: %(default)s)")
    p.add_argument("--model", default="",
                   help="a Hugging Face causal LM folder (default: a random Qwen2 built from the flags below)")
    p.add_argument("--hidden-size", type=int, default=512, help="built model: hidden size (default: %(default)s)")
    p.add_argument("--layers", type=int, default=10, help="built model: decoder layers (default: %(default)s)")
    p.add_argument("--heads", type=int, default=8, help="built model: attention heads (default: %(default)s)")
    p.add_argument("--intermediate-size", type=int, default=1408,
                   help="built model: MLP width (default: %(default)s; 512/10/1408 is ~32M parameters)")
    p.add_argument("--algorithm", choices=["ppo", "grpo"], default="ppo",
                   help="ppo trains policy + critic and keeps a reference (the paper's setting) (default: %(default)s)")
    p.add_argument("--steps", type=int, default=2, help="RL steps per run (default: %(default)s)")
    p.add_argument("--batch", type=int, default=8, help="trajectories per step (default: %(default)s)")
    p.add_argument("--max-len", type=int, default=48, help="longest synthetic trajectory (default: %(default)s)")
    p.add_argument("--micro-batch-size", type=int, default=2, help="rows per micro-batch (default: %(default)s)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                   help="rl.dtype; bfloat16 = bf16 compute, fp32 master weights (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process (default: %(default)s)")
    p.add_argument("--json", default="", help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    if args.ranks < 2:
        p.error("--ranks must be >= 2 (one process is the baseline it is compared with)")
    if min(args.steps, args.batch, args.micro_batch_size, args.threads) < 1 or args.max_len < 8:
        p.error("--steps, --batch, --micro-batch-size and --threads must be >= 1, --max-len >= 8")
    return args


def _cfg(args: argparse.Namespace) -> Any:
    from s3core.config import RLConfig

    return RLConfig(algorithm=args.algorithm, actor_lr=1e-4, critic_lr=1e-4, kl_coef=0.01, group_size=4,
                    micro_batch_size=args.micro_batch_size, mini_batch_size=max(1, args.batch // 2),
                    dtype=args.dtype, device="cpu", threads=args.threads, strategy="fsdp", seed=3)


def _full(t: Any) -> Any:
    return (t.full_tensor() if hasattr(t, "full_tensor") else t).detach().clone()


def _params(trainer: Any) -> dict[str, Any]:
    """Every trained parameter, full (gathered from the shards under FSDP: collective)."""
    out = {f"policy.{n}": _full(p) for n, p in trainer.policy.named_parameters()}
    if trainer.critic is not None:
        out.update({f"critic.{n}": _full(p) for n, p in trainer.critic.named_parameters()})
    return out


def _worker(rank: int, world: int, model: str, store: str, out: str, args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    if world > 1:
        import torch.distributed as dist

        os.environ["GLOO_SOCKET_IFNAME"] = "lo"
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        from s3core.rl.fsdp import resident_bytes, synthetic_samples
        from s3core.rl.trainer import RLTrainer

        trainer = RLTrainer.from_pretrained(model, _cfg(args))
        initial = _params(trainer) if world == 1 else {}
        peak: dict[str, int] = {}
        seconds = []
        for s in range(args.steps):
            t0 = time.perf_counter()
            trainer.step(synthetic_samples(s, args.batch, trainer.vocab_size, seed=11, max_len=args.max_len))
            seconds.append(time.perf_counter() - t0)
            now = resident_bytes(trainer)
            if now["total"] > peak.get("total", -1):
                peak = now
        params = _params(trainer)
        result = {"rank": rank, "world": world, "trainer": type(trainer).__name__, "bytes": peak,
                  "rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "step_seconds": seconds, "params": params if rank == 0 else {}, "initial": initial}
        torch.save(result, Path(out) / f"w{world}-rank{rank}.pt")
        if world > 1:
            torch.distributed.barrier()
    finally:
        if world > 1:
            torch.distributed.destroy_process_group()


def _run(world: int, model: str, root: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    import torch
    import torch.multiprocessing as mp

    out = root / f"out-{world}"
    out.mkdir()
    mp.spawn(_worker, args=(world, model, str(root / f"store-{world}"), str(out), args), nprocs=world, join=True)
    return [torch.load(out / f"w{world}-rank{r}.pt", weights_only=False) for r in range(world)]


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from s3core.rl.tiny import build_tiny_model

    with tempfile.TemporaryDirectory(prefix="s3-bench-fsdp-") as tmp:
        root = Path(tmp)
        model = args.model or str(build_tiny_model(root / "model", seed=0, hidden_size=args.hidden_size,
                                                   num_layers=args.layers, num_heads=args.heads,
                                                   intermediate_size=args.intermediate_size))
        t0 = time.perf_counter()
        single = _run(1, model, root, args)[0]
        ranks = _run(args.ranks, model, root, args)
        wall = time.perf_counter() - t0
    if single["trainer"] != "RLTrainer" or any(r["trainer"] != "FSDPTrainer" for r in ranks):
        print(f"unexpected trainers: one process {single['trainer']}, ranks {[r['trainer'] for r in ranks]}",
              file=sys.stderr)
        return 1
    ref, got = single["params"], ranks[0]["params"]
    if ref.keys() != got.keys():
        print("the FSDP model's parameter names differ from the one process's", file=sys.stderr)
        return 1
    n_params = sum(t.numel() for t in ref.values())
    diff = max(float((got[k].float() - ref[k].float()).abs().max()) for k in ref)
    moved = max(float((ref[k] - single["initial"][k]).abs().max()) for k in ref)
    worst = max(ranks, key=lambda r: r["bytes"]["total"])
    ratio = worst["bytes"]["total"] / single["bytes"]["total"]
    figures = {
        "model": args.model or f"qwen2 hidden {args.hidden_size} x {args.layers} layers "
                               f"(mlp {args.intermediate_size}, {args.heads} heads)",
        "trained_parameters": n_params, "algorithm": args.algorithm, "dtype": args.dtype, "ranks": args.ranks,
        "steps": args.steps, "batch": args.batch,
        "one_process": {"bytes": single["bytes"], "rss_bytes": single["rss_bytes"],
                        "step_seconds": single["step_seconds"]},
        "fsdp_ranks": [{"bytes": r["bytes"], "rss_bytes": r["rss_bytes"], "step_seconds": r["step_seconds"]}
                       for r in ranks],
        "max_abs_diff": diff, "max_update": moved, "ratio": ratio, "rss_ratio": max(r["rss_bytes"] for r in ranks) / single["rss_bytes"],
        "wall_seconds": wall,
    }
    print(f"model: {figures['model']}; {n_params / 1e6:.1f}M trained parameters (policy + critic), "
          f"{args.algorithm}, {args.dtype}, {args.steps} steps of {args.batch} trajectories")
    for name, r in [("one process", single), *((f"fsdp rank {r['rank']}/{args.ranks}", r) for r in ranks)]:
        b = r["bytes"]
        print(f"{name:>16}: params {_mb(b['params'])}  grads {_mb(b['grads'])}  optimiser {_mb(b['optimizer'])}  "
              f"total {_mb(b['total'])}  peak RSS {_mb(r['rss_bytes'])}  "
              f"step {sum(r['step_seconds']) / len(r['step_seconds']):.1f} s")
    print(f"rss_ratio={figures['rss_ratio']:.2f} (information: process peak RSS, libraries and activations included)")
    print(f"goal ratio <= 0.6 at 2 ranks: {'met' if ratio <= 0.6 else 'NOT met'}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    print(f"largest parameter change of the one process over its steps: {moved:.3g}")
    print(f"max_abs_diff={diff:.3g}")
    print(f"ratio={ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
