"""s3core.rl.trainer: learning a toy task, masking, exact resume, gradient accumulation, LoRA."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import pytest
import torch

from s3core.config import RLConfig
from s3core.errors import ConfigError, InvalidArgument
from s3core.rl.batch import Sample
from s3core.rl.checkpoint import CheckpointManager
from s3core.rl.models import trainable_parameters
from s3core.rl.tiny import build_tiny_model
from s3core.rl.trainer import LRSchedule, RLTrainer


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> str:
    torch.set_num_threads(1)  # tiny matrices: threads only add overhead on a shared 2-core box
    return str(build_tiny_model(tmp_path_factory.mktemp("rl") / "tiny", seed=0))


def make_cfg(algorithm: str, **kw: Any) -> RLConfig:
    base: dict[str, Any] = {"algorithm": algorithm, "actor_lr": 1e-3, "critic_lr": 1e-3, "kl_coef": 0.0,
                            "micro_batch_size": 4, "group_size": 4, "seed": 0, "device": "cpu"}
    base.update(kw)
    return RLConfig(**base)


def random_samples(step: int, n: int = 8, group_size: int = 4) -> list[Sample]:
    """Trajectories of varied length: prompt, action, observation, action (and sometimes more)."""
    rng = random.Random(step)
    out = []
    for i in range(n):
        segs = [(0, rng.randint(2, 5)), (1, rng.randint(1, 4)), (0, rng.randint(1, 4)), (1, rng.randint(1, 4))]
        if rng.random() < 0.5:
            segs += [(0, rng.randint(1, 3)), (1, rng.randint(1, 3))]
        mask = [m for m, k in segs for _ in range(k)]
        ids = [rng.randrange(3, 500) for _ in mask]
        out.append(Sample(ids, mask, float(rng.random() < 0.5), group=f"q{i // group_size}"))
    return out


# --- 1. a toy environment is learned ---------------------------------------------------------------

OBSERVATION = [300, 301, 302]  # what the "environment" inserts between the two action turns


def toy_rollout(policy: torch.nn.Module, prompts: list[list[int]], gen: torch.Generator,
                group_size: int) -> list[Sample]:
    """Two one-token action turns with an observation between them.  Reward 1 when the first action
    is in the lower half of the vocabulary and the second in the upper half (chance: ~1/4)."""
    def sample_next(ids: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(policy(input_ids=ids.to(device)).logits[:, -1].float(), -1).cpu()
        return torch.multinomial(probs, 1, generator=gen)

    device = next(policy.parameters()).device
    with torch.no_grad():
        policy.eval()
        ids = torch.tensor(prompts)
        ids = torch.cat([ids, sample_next(ids), torch.tensor([OBSERVATION] * len(prompts))], 1)
        ids = torch.cat([ids, sample_next(ids)], 1)
    n_prompt = len(prompts[0])
    mask = [0] * n_prompt + [1] + [0] * len(OBSERVATION) + [1]
    return [Sample(row, mask, float(row[n_prompt] < 256 and row[-1] >= 256), group=f"q{i // group_size}")
            for i, row in enumerate(ids.tolist())]


TOY_CASES = [
    ("ppo", {"kl_coef": 0.001}),
    ("grpo", {"kl_coef": 0.001, "kl_mode": "loss", "kl_estimator": "k3"}),
]


@pytest.mark.parametrize("algorithm, extra", TOY_CASES)
def test_toy_task_reward_rises_from_chance(tiny: str, algorithm: str, extra: dict[str, Any]) -> None:
    first, final = learn_toy_task(tiny, algorithm, extra)
    assert first < 0.45, f"initial reward {first} is not near chance (0.25)"
    assert final > 0.8, f"{algorithm}: mean reward {final} after training"


def learn_toy_task(tiny: str, algorithm: str, extra: dict[str, Any], seed: int = 0) -> tuple[float, float]:
    """Train on the toy task; return the first step's mean reward and the trained policy's mean reward."""
    steps, questions, group = 40, 8, 4
    cfg = make_cfg(algorithm, actor_lr=1e-2, critic_lr=1e-2, micro_batch_size=32, ppo_epochs=2,
                   mini_batch_size=16, lr_schedule="linear", total_steps=steps, **{"seed": seed, **extra})
    trainer = RLTrainer.from_pretrained(tiny, cfg)
    gen = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)

    def prompts(n: int, repeat: int) -> list[list[int]]:
        return [q for q in ([rng.randrange(10, 100) for _ in range(4)] for _ in range(n)) for _ in range(repeat)]

    first = None
    for _ in range(steps):
        stats = trainer.step(toy_rollout(trainer.policy, prompts(questions, group), gen, group))
        first = stats["reward_mean"] if first is None else first
    final = toy_rollout(trainer.policy, prompts(256, 1), gen, 1)
    assert first is not None and trainer.step_count == trainer.version == steps
    return first, sum(s.reward for s in final) / len(final)


# --- 2. masked tokens get exactly zero gradient ----------------------------------------------------


@pytest.mark.parametrize("algorithm, extra", [
    ("ppo", {"ppo_epochs": 2, "mini_batch_size": 4, "kl_mode": "reward"}),  # old-logprob pass, several updates
    ("grpo", {"kl_mode": "loss", "kl_estimator": "k3"}),  # one update: current log-probs are the old ones
])
def test_masked_tokens_get_exactly_zero_gradient(tiny: str, algorithm: str, extra: dict[str, Any]) -> None:
    cfg = make_cfg(algorithm, kl_coef=0.05, entropy_coef=0.01, micro_batch_size=3, **extra)
    trainer = RLTrainer.from_pretrained(tiny, cfg)
    samples = random_samples(7)
    by_ids = {tuple(s.token_ids): s for s in samples}
    inputs: list[torch.Tensor] = []
    captured: list[dict[str, torch.Tensor]] = []

    def remember_inputs(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        inputs.append(kwargs["input_ids"])

    def hook_logits(module: Any, args: Any, out: torch.Tensor) -> None:
        if out.requires_grad:
            entry = {"ids": inputs[-1]}
            out.register_hook(lambda g: entry.__setitem__("grad", g.detach().clone()))
            captured.append(entry)

    trainer.policy.register_forward_pre_hook(remember_inputs, with_kwargs=True)
    trainer.policy.get_output_embeddings().register_forward_hook(hook_logits)
    trainer.step(samples)

    assert captured and all("grad" in e for e in captured)
    checked_rows = 0
    for entry in captured:
        ids, grad = entry["ids"], entry["grad"]
        trained_rows = []
        for row in ids.tolist():
            s = next(by_ids[k] for k in by_ids if tuple(row[:len(k)]) == k and all(
                t == trainer.pad_id for t in row[len(k):]))
            trained_rows.append([t + 1 < len(s.token_ids) and s.action_mask[t + 1] == 1 for t in range(len(row))])
        # the LM head ran only on the columns some row of the micro-batch is trained at
        keep = sorted({t for tr in trained_rows for t, on in enumerate(tr) if on})
        assert grad.shape[1] == len(keep) < ids.shape[1]
        for r, trained in enumerate(trained_rows):
            for j, t in enumerate(keep):
                if trained[t]:
                    assert bool(grad[r, j].abs().sum() > 0), f"position {t} predicts an action but got no gradient"
                else:
                    assert bool((grad[r, j] == 0).all()), f"position {t} (target masked) got a nonzero gradient"
            checked_rows += 1
    assert checked_rows >= len(samples)


# --- 3. kill and resume is bit-identical -----------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["ppo", "grpo"])
def test_kill_and_resume_is_bit_identical(tiny: str, tmp_path: Path, algorithm: str) -> None:
    cfg = make_cfg(algorithm, ppo_epochs=2, mini_batch_size=4, micro_batch_size=3, warmup_steps=2,
                   lr_schedule="cosine", total_steps=4, kl_coef=0.01, entropy_coef=0.01, seed=3)
    full = RLTrainer.from_pretrained(tiny, cfg)
    full_stats = [full.step(random_samples(s)) for s in range(4)]

    first = RLTrainer.from_pretrained(tiny, cfg)
    for s in range(2):
        first.step(random_samples(s))
    manager = CheckpointManager(tmp_path / "ckpt")
    manager.save(first.step_count, first, extra={"cursor": 2})
    del first  # "killed"

    resumed = RLTrainer.from_pretrained(tiny, cfg)
    latest = manager.latest()
    assert latest is not None and latest.name == "step-000002"
    assert manager.load(latest, resumed) == {"cursor": 2}
    assert resumed.step_count == 2
    resumed_stats = [resumed.step(random_samples(s)) for s in range(2, 4)]

    def same(a: torch.nn.Module, b: torch.nn.Module) -> None:
        pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
        assert pa.keys() == pb.keys()
        for name in pa:
            assert torch.equal(pa[name], pb[name]), f"{name} differs after resume"

    same(full.policy, resumed.policy)
    if algorithm == "ppo":
        assert full.critic is not None and resumed.critic is not None
        same(full.critic, resumed.critic)
    for a, b in zip(full_stats[2:], resumed_stats):
        assert {k: v for k, v in a.items() if k != "update_seconds"} == \
               {k: v for k, v in b.items() if k != "update_seconds"}
    assert torch.equal(full.generator.get_state(), resumed.generator.get_state())


# --- 4. gradient accumulation == one batch ---------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["ppo", "grpo"])
def test_gradient_accumulation_equals_one_batch_gradient(tiny: str, algorithm: str) -> None:
    one = step_gradients(tiny, algorithm, micro_batch_size=8)
    accumulated = step_gradients(tiny, algorithm, micro_batch_size=1)
    assert_same_gradients(one, accumulated, algorithm, rtol=1e-4, atol=1e-6)


def step_gradients(tiny: str, algorithm: str, **kw: Any) -> dict[str, list[torch.Tensor]]:
    """The gradients each optimiser steps with (unclipped) in one trainer step on a fixed batch."""
    cfg = make_cfg(algorithm, max_grad_norm=0.0, kl_coef=0.02, kl_mode="loss", entropy_coef=0.01, **kw)
    trainer = RLTrainer.from_pretrained(tiny, cfg)
    got: dict[str, list[torch.Tensor]] = {}
    for name, opt in {"policy": trainer.actor_optimizer, "critic": trainer.critic_optimizer}.items():
        if opt is not None:
            opt.register_step_pre_hook(lambda o, args, kwargs, _name=name: got.__setitem__(
                _name, [p.grad.detach().cpu().clone() for g in o.param_groups for p in g["params"]]))
    trainer.step(random_samples(11))
    return got


def assert_same_gradients(a: dict[str, list[torch.Tensor]], b: dict[str, list[torch.Tensor]], algorithm: str,
                          **tol: float) -> None:
    assert a.keys() == b.keys() == ({"policy", "critic"} if algorithm == "ppo" else {"policy"})
    for name in a:
        assert len(a[name]) == len(b[name])
        for ga, gb in zip(a[name], b[name]):
            torch.testing.assert_close(gb, ga, **tol)
        assert any(bool(g.abs().sum() > 0) for g in a[name])


# --- 6. LoRA --------------------------------------------------------------------------------------


def test_lora_trains_only_adapters_and_exports_merged_model(tiny: str, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    cfg = make_cfg("grpo", lora_rank=4, lora_alpha=8, lora_target_modules=["q_proj", "v_proj"], actor_lr=1e-2,
                   kl_coef=0.05, kl_estimator="k3")
    trainer = RLTrainer.from_pretrained(tiny, cfg)
    assert trainer.lora and trainer.reference is None  # the reference is the policy without adapters
    before = {n: p.detach().clone() for n, p in trainer.policy.named_parameters()}
    stats = [trainer.step(random_samples(s)) for s in range(3)]
    after = dict(trainer.policy.named_parameters())
    adapters = [n for n in before if "lora_" in n]
    assert adapters and all(after[n].requires_grad for n in adapters)
    for name, value in before.items():
        if "lora_" in name:
            continue
        assert torch.equal(value, after[name]), f"base weight {name} changed"
    assert any(not torch.equal(before[n], after[n]) for n in adapters if "lora_B" in n)
    assert stats[0]["kl"] == 0.0 and stats[-1]["kl"] > 0  # adapters start as a no-op, then diverge

    out = trainer.export_policy(tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    ids = torch.tensor([random_samples(0)[0].token_ids])
    trainer.policy.eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, trainer.policy(input_ids=ids).logits,
                                   rtol=1e-4, atol=1e-5)

    # a state round trip holds only the adapters
    state = trainer.state_dict()
    assert set(state["policy"]) == set(adapters)


def test_lora_ppo_step_runs_with_lora_critic(tiny: str) -> None:
    cfg = make_cfg("ppo", lora_rank=4, lora_target_modules=["q_proj", "v_proj"], kl_coef=0.01)
    trainer = RLTrainer.from_pretrained(tiny, cfg)
    assert trainer.critic is not None
    head = trainer.critic.value_head.weight.detach().clone()
    stats = trainer.step(random_samples(1))
    assert stats["value_loss"] > 0 and not torch.equal(head, trainer.critic.value_head.weight)


# --- stats, schedule and validation ---------------------------------------------------------------


def test_step_statistics(tiny: str) -> None:
    trainer = RLTrainer.from_pretrained(tiny, make_cfg("ppo", kl_coef=0.01))
    samples = random_samples(2)
    samples[0].info = {"turns": 2.0}
    samples[1].info = {"turns": 4.0}
    stats = trainer.step(samples)
    for key in ("policy_loss", "value_loss", "kl", "entropy", "clip_fraction", "value_clip_fraction", "grad_norm",
                "lr", "reward_mean", "reward_std", "advantage_mean", "response_tokens", "tokens", "update_seconds"):
        assert key in stats, key
    assert stats["response_tokens"] == sum(sum(s.action_mask) for s in samples)
    assert stats["tokens"] == sum(len(s.token_ids) for s in samples)
    assert stats["reward_mean"] == pytest.approx(sum(s.reward for s in samples) / len(samples))
    assert stats["info/turns"] == 3.0
    assert stats["kl"] == 0.0  # policy == reference before the first update
    assert stats["clip_fraction"] == 0.0  # one update: ratio 1
    assert 0 < stats["entropy"] <= torch.log(torch.tensor(float(trainer.vocab_size))).item() + 1e-4


def test_rejects_token_outside_vocabulary(tiny: str) -> None:
    trainer = RLTrainer.from_pretrained(tiny, make_cfg("grpo"))
    samples = random_samples(0)
    samples[3].token_ids[2] = trainer.vocab_size + 5
    with pytest.raises(InvalidArgument, match="sample 3: token id .* outside the policy's vocabulary"):
        trainer.step(samples)
    assert trainer.step_count == 0


def test_schedule_needs_total_steps(tiny: str) -> None:
    with pytest.raises(ConfigError, match="total_steps"):
        RLTrainer.from_pretrained(tiny, make_cfg("grpo", lr_schedule="cosine"))


def test_lr_schedule_factors() -> None:
    s = LRSchedule("linear", warmup=2)
    s.horizon = 6
    assert [s(i) for i in range(7)] == [0.5, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0]
    c = LRSchedule("cosine", warmup=0)
    c.horizon = 4
    assert [round(c(i), 6) for i in range(5)] == [1.0, round((1 + 2 ** -0.5) / 2, 6), 0.5,
                                                  round((1 - 2 ** -0.5) / 2, 6), 0.0]
    assert LRSchedule("constant", warmup=4)(1) == 0.5


def test_state_from_other_algorithm_is_rejected(tiny: str) -> None:
    grpo = RLTrainer.from_pretrained(tiny, make_cfg("grpo"))
    ppo = RLTrainer.from_pretrained(tiny, make_cfg("ppo"))
    with pytest.raises(InvalidArgument, match="written by a grpo trainer"):
        ppo.load_state_dict(grpo.state_dict())


# --- CUDA (skipped on CPU-only machines; CI has no GPU) -------------------------------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
@pytest.mark.parametrize("algorithm, extra", TOY_CASES)
def test_cuda_bf16_autocast_learns_toy_task(tiny: str, algorithm: str, extra: dict[str, Any]) -> None:
    first, final = learn_toy_task(tiny, algorithm, {**extra, "device": "cuda", "dtype": "auto"})
    assert first < 0.45 and final > 0.8, (first, final)


@cuda
@pytest.mark.parametrize("algorithm", ["ppo", "grpo"])
def test_cuda_gradient_checkpointing_and_accumulation_keep_the_gradient(tiny: str, algorithm: str) -> None:
    base = step_gradients(tiny, algorithm, device="cuda", dtype="float32", micro_batch_size=8)
    other = step_gradients(tiny, algorithm, device="cuda", dtype="float32", micro_batch_size=3,
                           gradient_checkpointing=True)
    assert_same_gradients(base, other, algorithm, rtol=1e-3, atol=1e-5)


@cuda
def test_cuda_lora_bf16_base_trains_adapters_and_exports(tiny: str, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    cfg = make_cfg("ppo", device="cuda", dtype="auto", lora_rank=4, lora_target_modules=["q_proj", "v_proj"],
                   kl_coef=0.01, actor_lr=1e-2)
    trainer = RLTrainer.from_pretrained(tiny, cfg)
    params = dict(trainer.policy.named_parameters())
    assert all(p.dtype == (torch.float32 if "lora_" in n else torch.bfloat16) for n, p in params.items())
    before = {n: p.detach().clone() for n, p in params.items()}
    for s in range(2):
        stats = trainer.step(random_samples(s))
    assert all(torch.equal(before[n], p) for n, p in params.items() if "lora_" not in n)
    assert any(not torch.equal(before[n], p) for n, p in params.items() if "lora_B" in n)
    assert stats["kl"] != 0.0
    manager = CheckpointManager(tmp_path / "ckpt")
    path = manager.save(trainer.step_count, trainer)
    merged = AutoModelForCausalLM.from_pretrained(path / "policy").cuda().eval()
    ids = torch.tensor([random_samples(0)[0].token_ids], device="cuda")
    trainer.policy.eval()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        torch.testing.assert_close(merged(input_ids=ids).logits.float(), trainer.policy(input_ids=ids).logits.float(),
                                   rtol=0.05, atol=0.05)
    fresh = RLTrainer.from_pretrained(tiny, cfg)
    manager.load(path, fresh)
    assert all(torch.equal(p, dict(fresh.policy.named_parameters())[n]) for n, p in params.items())


@cuda
def test_cuda_token_logprobs_backward_keeps_no_fp32_copy_of_the_logits() -> None:
    from s3core.rl import algos

    batch, length, vocab = 2, 1024, 151_936
    logits = torch.randn(batch, length, vocab, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    ids = torch.randint(0, vocab, (batch, length), device="cuda")
    logits_bytes = logits.numel() * logits.element_size()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.memory_allocated()
    lp = algos.token_logprobs(logits, ids)
    lp.sum().backward()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - start
    # the gradient itself (one bf16 logits-sized tensor) plus chunk-sized temporaries; naive autograd
    # through log_softmax(logits.float()) needs >= 4x the bf16 logits on top
    assert extra < 1.5 * logits_bytes, f"peak {extra / 2**20:.0f} MiB for {logits_bytes / 2**20:.0f} MiB of logits"
    ref = torch.log_softmax(logits.detach()[:1, :64].float(), -1).gather(-1, ids[:1, 1:65, None]).squeeze(-1)
    torch.testing.assert_close(lp[:1, :64].detach(), ref)


# --- CPU-sized updates: only the top layers train; bf16 autocast on CPU ---------------------------------


@pytest.mark.parametrize("lora", [0, 4])
def test_train_top_layers_freezes_everything_below(tiny: str, lora: int) -> None:
    cfg = make_cfg("grpo", train_top_layers=1, lora_rank=lora)
    trainer = RLTrainer.from_pretrained(tiny, cfg)
    names = set(trainable_parameters(trainer.policy))
    assert names and all(".layers.1." in n or (not lora and n.endswith("model.norm.weight")) for n in names), names
    before = {n: p.detach().clone() for n, p in trainer.policy.named_parameters()}
    stats = trainer.step(random_samples(3))
    assert stats["grad_norm"] > 0
    after = dict(trainer.policy.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n].detach())}
    assert changed and changed <= names  # the top layer moved; embeddings, LM head, layer 0 did not
    assert not any(".layers.0." in n or "embed_tokens" in n for n in changed)


def test_train_top_layers_out_of_range_is_a_config_error(tiny: str) -> None:
    with pytest.raises(ConfigError, match="train_top_layers"):
        RLTrainer.from_pretrained(tiny, make_cfg("grpo", train_top_layers=3))  # the tiny model has 2 layers


def test_bfloat16_autocast_on_cpu_keeps_fp32_master_weights(tiny: str) -> None:
    cfg = make_cfg("grpo", dtype="bfloat16")
    trainer = RLTrainer.from_pretrained(tiny, cfg)
    assert trainer._amp == torch.bfloat16
    stats = trainer.step(random_samples(4))
    assert math.isfinite(stats["policy_loss"]) and stats["grad_norm"] > 0
    assert all(p.dtype == torch.float32 for p in trainable_parameters(trainer.policy).values())
