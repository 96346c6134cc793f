"""rl.strategy fsdp: 2 gloo ranks with FSDP2 on CPU end where one (unsharded) process ends.

The same discipline as test_rl_distributed: a single-process RLTrainer steps on fixed batches; two ranks
(``torch.multiprocessing`` spawn, FileStore rendezvous, gloo on ``lo``) each build an FSDPTrainer (policy,
critic and reference sharded) and step on the same full sample lists.  Final parameters (gathered) must
match the single process to float tolerance, statistics agree; a sharded checkpoint written after the
first step and loaded into a fresh FSDP trainer continues bit-exactly; only rank 0 writes exports.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

from s3core.config import RLConfig
from s3core.rl.tiny import build_tiny_model

# ~25 s of CPU time in all (parent and both ranks); wall 1m51-3m12 under nice 19 on 2 cores at load 4-12.
# Most of it is process start-up and model loading, not the steps
pytestmark = pytest.mark.timeout(600)

WORLD = 2
STEPS = 3
# ppo: several epochs, uneven mini-batches, micro-batches by a token budget, gradient checkpointing, KL in
# the reward; grpo_tiny: mini-batches of one row, so rank 1 runs a dummy micro-batch in every other one
CASES: dict[str, dict[str, Any]] = {
    "ppo": {"algorithm": "ppo", "ppo_epochs": 2, "mini_batch_size": 5, "micro_batch_tokens": 80, "kl_coef": 0.01,
            "kl_mode": "reward", "entropy_coef": 0.01, "max_grad_norm": 1.0, "gradient_checkpointing": True,
            "lr_schedule": "cosine", "warmup_steps": 1, "total_steps": STEPS},
    "grpo_tiny": {"algorithm": "grpo", "mini_batch_size": 1, "micro_batch_size": 1, "kl_coef": 0.02,
                  "kl_mode": "loss", "kl_estimator": "k3", "max_grad_norm": 0.5},
}


def make_cfg(case: str, strategy: str) -> RLConfig:
    base: dict[str, Any] = {"actor_lr": 5e-3, "critic_lr": 5e-3, "group_size": 4, "seed": 7, "device": "cpu",
                            "threads": 1, "strategy": strategy}
    return RLConfig(**{**base, **CASES[case]})


def batches(vocab: int) -> list[list[Any]]:
    from s3core.rl.fsdp import synthetic_samples

    return [synthetic_samples(s, 8, vocab, seed=5, min_len=6, max_len=30) for s in range(STEPS)]


def _full_params(trainer: Any) -> dict[str, torch.Tensor]:
    def full(t: torch.Tensor) -> torch.Tensor:
        return (t.full_tensor() if hasattr(t, "full_tensor") else t).detach().clone()

    out = {f"policy.{n}": full(p) for n, p in trainer.policy.named_parameters()}
    if trainer.critic is not None:
        out.update({f"critic.{n}": full(p) for n, p in trainer.critic.named_parameters()})
    return out


def _clean(stats: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in s.items() if k != "update_seconds"} for s in stats]


def _worker(rank: int, tiny: str, store: str, out: str) -> None:
    import torch.distributed as dist

    from s3core.rl.checkpoint import CheckpointManager
    from s3core.rl.fsdp import FSDPTrainer, resident_bytes
    from s3core.rl.trainer import RLTrainer

    torch.set_num_threads(1)
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        result: dict[str, Any] = {}
        for case in CASES:
            cfg = make_cfg(case, "fsdp")
            trainer = RLTrainer.from_pretrained(tiny, cfg)
            assert isinstance(trainer, FSDPTrainer)
            steps = batches(trainer.vocab_size)
            stats = [trainer.step(steps[0])]
            ckpt = CheckpointManager(Path(out) / f"ckpt-{case}").save(1, trainer, extra={"cursor": 1})
            stats += [trainer.step(b) for b in steps[1:]]
            resumed = RLTrainer.from_pretrained(tiny, cfg)
            extra = CheckpointManager(Path(out) / f"ckpt-{case}").load(ckpt, resumed)
            resumed_stats = [resumed.step(b) for b in steps[1:]]
            trainer.export_policy(Path(out) / f"export-{case}-rank{rank}")
            result[case] = {"params": _full_params(trainer), "resumed": _full_params(resumed), "stats": stats,
                            "resumed_stats": resumed_stats, "extra": extra, "checkpoint": str(ckpt),
                            "bytes": resident_bytes(trainer)["total"],
                            "sharded": type(trainer.policy.model.layers[0].mlp.up_proj.weight).__name__,
                            # the frozen reference's root group is resharded after its forwards too
                            "reference_root": type(trainer.reference.model.embed_tokens.weight).__name__}
        torch.save(result, Path(out) / f"rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import torch.multiprocessing as mp

    from s3core.rl.fsdp import resident_bytes
    from s3core.rl.trainer import RLTrainer

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("fsdp")
    tiny = str(build_tiny_model(root / "tiny", seed=0))
    single: dict[str, Any] = {}
    for case in CASES:
        trainer = RLTrainer.from_pretrained(tiny, make_cfg(case, "fsdp"))  # one process: the plain trainer
        assert type(trainer) is RLTrainer
        initial = _full_params(trainer)
        stats = [trainer.step(b) for b in batches(trainer.vocab_size)]
        trainer.export_policy(root / f"single-export-{case}")
        single[case] = {"params": _full_params(trainer), "stats": stats, "initial": initial,
                        "bytes": resident_bytes(trainer)["total"]}
    out = root / "out"
    out.mkdir()
    mp.spawn(_worker, args=(tiny, str(root / "store"), str(out)), nprocs=WORLD, join=True)
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    return {"single": single, "ranks": ranks, "out": out, "root": root}


@pytest.mark.parametrize("case", list(CASES))
def test_two_fsdp_ranks_end_where_one_process_ends(runs: dict[str, Any], case: str) -> None:
    single = runs["single"][case]
    r0, r1 = (r[case] for r in runs["ranks"])
    assert r0["sharded"] == r0["reference_root"] == "DTensor"
    assert r0["params"].keys() == single["params"].keys()
    for name, p in single["params"].items():
        assert torch.equal(r0["params"][name], r1["params"][name]), f"{name}: the ranks disagree"
        # the tolerance of test_rl_distributed after several AdamW steps
        torch.testing.assert_close(r0["params"][name], p, rtol=1e-4, atol=5e-5, msg=lambda m, n=name: f"{n}: {m}")
    assert any(not torch.equal(single["initial"][n], single["params"][n]) for n in single["params"])
    for a, b in zip(single["stats"], r0["stats"]):
        assert a.keys() == b.keys()
        for key, value in a.items():
            if key != "update_seconds":
                assert b[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    assert _clean(r0["stats"]) == _clean(r1["stats"])


@pytest.mark.parametrize("case", list(CASES))
def test_sharded_checkpoint_resumes_exactly(runs: dict[str, Any], case: str) -> None:
    from s3core.rl.checkpoint import verify_checkpoint

    r0 = runs["ranks"][0][case]
    ckpt = Path(r0["checkpoint"])
    verify_checkpoint(ckpt)
    assert (ckpt / "shards" / ".metadata").is_file() and (ckpt / "policy" / "config.json").is_file()
    assert {p.name for p in ckpt.glob("rng-rank*.pt")} == {"rng-rank0.pt", "rng-rank1.pt"}
    assert r0["extra"] == {"cursor": 1}
    for name, p in r0["params"].items():
        assert torch.equal(r0["resumed"][name], p), f"{name}: the resumed run diverged"
    assert _clean(r0["resumed_stats"]) == _clean(r0["stats"][1:])


def test_only_rank_zero_exports_and_the_export_loads(runs: dict[str, Any]) -> None:
    from transformers import AutoModelForCausalLM

    out = runs["out"]
    for case in CASES:
        assert not (out / f"export-{case}-rank1").exists()
        got = AutoModelForCausalLM.from_pretrained(out / f"export-{case}-rank0").state_dict()
        want = AutoModelForCausalLM.from_pretrained(runs["root"] / f"single-export-{case}").state_dict()
        assert got.keys() == want.keys()
        for k in want:
            torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=5e-5)


def test_each_rank_holds_about_half(runs: dict[str, Any]) -> None:
    for case in CASES:
        ratio = runs["ranks"][0][case]["bytes"] / runs["single"][case]["bytes"]
        assert ratio <= 0.6, f"{case}: rank 0 holds {ratio:.2f} of one process's parameter+optimiser bytes"


def test_fsdp_refuses_what_it_cannot_do() -> None:
    from s3core.errors import ConfigError
    from s3core.rl.fsdp import FSDPTrainer

    with pytest.raises(ConfigError, match="fsdp_cpu_offload needs rl.strategy: fsdp"):
        RLConfig(fsdp_cpu_offload=True).validate("rl")
    with pytest.raises(ConfigError, match="rl.strategy must be"):
        RLConfig(strategy="zero3").validate("rl")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=">= 2 ranks"):
        FSDPTrainer(torch.nn.Linear(2, 2), None, RLConfig(strategy="fsdp", device="cpu"))
