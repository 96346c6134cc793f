"""Learner update throughput: ``RLTrainer.step`` vs a bare torch loop on the same model and batch.

Builds one fixed synthetic batch (``--batch`` trajectories of ``--seq-len`` tokens: a prompt, then
action segments interleaved with observation segments, 0/1 rewards, groups of 4) and times, step by
step and interleaved so both see the same machine load:

* bare: the minimum a policy-gradient update needs -- per micro-batch a forward, log-softmax
  log-probabilities of the next tokens, an advantage-weighted masked token-mean loss, backward;
  then gradient clipping and one AdamW step.  PPO adds what any PPO needs for its critic (a
  backbone + linear value head): a no-grad pass for the values GAE is computed from, then a
  forward/backward of a squared error and its own AdamW step;
* learner: ``RLTrainer.step`` with ``kl_coef 0``, ``ppo_epochs 1``, one mini-batch -- the
  like-for-like comparison (validation, collation, advantages, statistics included);
* learner + ref: the same with ``kl_coef 0.001`` (reward mode), i.e. also the no-grad passes of the
  current policy and the frozen reference (reported, not part of the ratio).

tokens/s counts every non-pad token of the batch per step (median step time over ``--steps``).
The last line is ``ratio=X.XX`` = learner tokens/s / bare tokens/s; the goal is >= 0.9.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--device", choices=["cpu", "cuda"], default="", help="default: cuda when available, else cpu")
    p.add_argument("--model", default="",
                   help="policy model folder (default: a random Qwen2 of --hidden-size/--layers/--vocab-size, "
                        "built in a temp dir)")
    p.add_argument("--hidden-size", type=int, default=256, help="built model: hidden size (default: %(default)s)")
    p.add_argument("--layers", type=int, default=4, help="built model: layers (default: %(default)s)")
    p.add_argument("--vocab-size", type=int, default=0,
                   help="built model: vocabulary (default: 0 = its tiny tokenizer's, ~500; a real model's is ~150k)")
    p.add_argument("--algorithm", choices=["grpo", "ppo"], default="grpo", help="default: %(default)s")
    p.add_argument("--batch", type=int, default=8, help="trajectories per step (default: %(default)s)")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per trajectory (default: %(default)s)")
    p.add_argument("--micro-batch-size", type=int, default=0,
                   help="trajectories per forward/backward (default: 0 = the whole batch)")
    p.add_argument("--steps", type=int, default=5, help="timed steps of each variant (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first (default: %(default)s)")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                   help="rl.dtype: auto = bf16 autocast on CUDA, fp32 on CPU (default: %(default)s)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: 0 = library default)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic batch (default: %(default)s)")
    args = p.parse_args(argv)
    if min(args.batch, args.steps) < 1 or args.seq_len < 8 or args.warmup < 0 or args.micro_batch_size < 0:
        p.error("--batch and --steps must be >= 1, --seq-len >= 8, --warmup and --micro-batch-size >= 0")
    return args


def build_model(root: Path, hidden: int, layers: int, vocab: int) -> str:
    """A random Qwen2 (heads of 64 dims) with the tiny tokenizer; the embeddings grown to ``vocab`` rows."""
    from s3core.rl.tiny import build_tiny_model

    path = build_tiny_model(root / "tiny", hidden_size=hidden, num_layers=layers, num_heads=max(1, hidden // 64))
    if vocab:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(path)
        model.resize_token_embeddings(vocab, mean_resizing=False)
        path = root / f"tiny-v{vocab}"
        model.save_pretrained(path)
        AutoTokenizer.from_pretrained(root / "tiny").save_pretrained(path)
    return str(path)


def synthetic_batch(n: int, seq_len: int, vocab: int, seed: int) -> list[Any]:
    """Trajectories of exactly ``seq_len`` tokens: a quarter prompt, then action/observation segments."""
    from s3core.rl.batch import Sample

    rng = random.Random(seed)
    out = []
    for i in range(n):
        mask = [0] * (seq_len // 4)
        action = True
        while len(mask) < seq_len:
            k = min(seq_len - len(mask), rng.randint(8, 48) if action else rng.randint(16, 96))
            mask += [int(action)] * k
            action = not action
        ids = [rng.randrange(3, vocab) for _ in range(seq_len)]
        out.append(Sample(ids, mask, float(rng.random() < 0.5), group=f"q{i // 4}"))
    return out


class BareLoop:
    """The reference: the same forward/backward/optimiser work in a few lines of plain torch."""

    def __init__(self, path: str, cfg: Any, device: Any, samples: list[Any]) -> None:
        import torch
        from transformers import AutoModel, AutoModelForCausalLM

        from s3core.rl.batch import collate
        from s3core.rl.models import autocast_dtype

        self.torch = torch
        self.cfg = cfg
        self.device = device
        self.amp = autocast_dtype(cfg.dtype, device)
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device).train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.actor_lr, weight_decay=cfg.weight_decay)
        self.critic = self.head = self.critic_opt = None
        if cfg.algorithm == "ppo":
            self.critic = AutoModel.from_pretrained(path, dtype=torch.float32).to(device).train()
            self.head = torch.nn.Linear(self.critic.config.hidden_size, 1).to(device)
            self.critic_opt = torch.optim.AdamW([*self.critic.parameters(), *self.head.parameters()],
                                                lr=cfg.critic_lr, weight_decay=cfg.weight_decay)
        b = collate(samples, pad_id=0)
        self.ids = b["input_ids"].to(device)
        self.mask = b["action_mask"][:, 1:].to(device, torch.float32)
        self.adv = (b["rewards"] - b["rewards"].mean()).to(device)[:, None] * self.mask
        self.n_tok = self.mask.sum()

    def _values(self, ids: Any) -> Any:
        torch = self.torch
        with torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
            hidden = self.critic(input_ids=ids, use_cache=False).last_hidden_state
        return self.head(hidden.float()).squeeze(-1)[:, :-1]

    def step(self) -> None:
        torch = self.torch
        micro = torch.arange(self.ids.shape[0], device=self.device).split(self.cfg.micro_batch_size)
        targets = self.adv
        if self.critic is not None:
            with torch.no_grad():
                targets = self.adv + torch.cat([self._values(self.ids[rows]) for rows in micro])
        self.opt.zero_grad(set_to_none=True)
        if self.critic_opt is not None:
            self.critic_opt.zero_grad(set_to_none=True)
        for rows in micro:
            ids, m, adv = self.ids[rows], self.mask[rows], self.adv[rows]
            with torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
                logits = self.model(input_ids=ids, use_cache=False).logits
            logp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
            (-(adv * logp * m).sum() / self.n_tok).backward()
            del logits, logp
            if self.critic is not None:
                values = self._values(ids)
                (0.5 * ((values - targets[rows]) ** 2 * m).sum() / self.n_tok).backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.max_grad_norm)
        self.opt.step()
        if self.critic_opt is not None:
            torch.nn.utils.clip_grad_norm_([*self.critic.parameters(), *self.head.parameters()],
                                           self.cfg.max_grad_norm)
            self.critic_opt.step()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from s3core.config import RLConfig
    from s3core.rl.models import resolve_device
    from s3core.rl.trainer import RLTrainer

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    micro = args.micro_batch_size or args.batch
    with tempfile.TemporaryDirectory(prefix="s3-bench-learner-") as tmp:
        path = args.model or build_model(Path(tmp), args.hidden_size, args.layers, args.vocab_size)
        base = {"algorithm": args.algorithm, "actor_lr": 1e-6, "critic_lr": 1e-5, "ppo_epochs": 1,
                "mini_batch_size": 0, "micro_batch_size": micro, "group_size": 4, "dtype": args.dtype,
                "device": str(device), "seed": args.seed}
        learner = RLTrainer.from_pretrained(path, RLConfig(**{**base, "kl_coef": 0.0}))
        with_ref = RLTrainer.from_pretrained(path, RLConfig(**{**base, "kl_coef": 0.001, "kl_mode": "reward"}))
        samples = synthetic_batch(args.batch, args.seq_len, learner.vocab_size, args.seed)
        bare = BareLoop(path, learner.cfg, device, samples)

        def timed(fn: Callable[[], Any]) -> float:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            return time.perf_counter() - t0

        runs: dict[str, Callable[[], Any]] = {
            "bare torch loop": bare.step,
            "RLTrainer.step": lambda: learner.step(samples),
            "RLTrainer.step + ref KL": lambda: with_ref.step(samples),
        }
        times: dict[str, list[float]] = {k: [] for k in runs}
        for i in range(args.warmup + args.steps):
            step_times = {name: timed(fn) for name, fn in runs.items()}  # interleaved: same machine load
            if i >= args.warmup:
                for name, t in step_times.items():
                    times[name].append(t)
            print(f"step {i + 1}/{args.warmup + args.steps}{' (warm-up)' if i < args.warmup else ''}: "
                  + ", ".join(f"{k} {t:.3f}s" for k, t in step_times.items()), file=sys.stderr)

    tokens = args.batch * args.seq_len
    med = {k: statistics.median(v) for k, v in times.items()}
    tps = {k: tokens / v for k, v in med.items()}
    model_name = args.model or (f"random Qwen2 (hidden {args.hidden_size}, {args.layers} layers, "
                                f"vocabulary {args.vocab_size or 'tiny'})")
    print(f"learner update: {args.algorithm}, batch {args.batch} x {args.seq_len} tokens, micro-batch {micro}, "
          f"{device}, dtype {args.dtype}, model {model_name}")
    width = max(len(k) for k in runs)
    print(f"{'variant':<{width}}  {'s/step':>8}  {'tokens/s':>10}  {'vs bare':>7}")
    for k in runs:
        print(f"{k:<{width}}  {med[k]:8.3f}  {tps[k]:10.0f}  {tps[k] / tps['bare torch loop']:7.2f}")
    print(f"ratio={tps['RLTrainer.step'] / tps['bare torch loop']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
