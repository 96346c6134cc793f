"""s3core.rl.checkpoint: atomic, verified, pruned checkpoints and the exported policy folder."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from s3core.config import RLConfig
from s3core.errors import DataError, NotFound
from s3core.rl.batch import Sample
from s3core.rl.checkpoint import CheckpointManager, verify_checkpoint
from s3core.rl.tiny import build_tiny_model
from s3core.rl.trainer import RLTrainer


@pytest.fixture(scope="module")
def trainer(tmp_path_factory: pytest.TempPathFactory) -> RLTrainer:
    torch.set_num_threads(1)
    path = build_tiny_model(tmp_path_factory.mktemp("ckpt") / "tiny", seed=1)
    cfg = RLConfig(algorithm="grpo", actor_lr=1e-3, kl_coef=0.0, micro_batch_size=4, group_size=2, device="cpu")
    return RLTrainer.from_pretrained(str(path), cfg)


def batch(step: int) -> list[Sample]:
    rng = random.Random(step)
    return [Sample([rng.randrange(3, 500) for _ in range(6)], [0, 0, 1, 0, 1, 1], float(i % 2), group=f"q{i // 2}")
            for i in range(4)]


def flip_byte(path: Path, offset: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_layout_manifest_and_pointers(trainer: RLTrainer, tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path)
    trainer.step(batch(0))
    path = manager.save(trainer.step_count, trainer, extra={"cursor": 17, "seed": 3}, metric=0.5)
    assert path.name == f"step-{trainer.step_count:06d}"
    for rel in ("trainer.pt", "rng.pt", "extra.json", "manifest.json", "policy/config.json",
                "policy/model.safetensors", "policy/tokenizer.json", "policy/generation_config.json"):
        assert (path / rel).is_file(), rel
    manifest = json.loads((path / "manifest.json").read_text())
    assert set(manifest["files"]) >= {"trainer.pt", "rng.pt", "extra.json", "policy/model.safetensors"}
    assert "manifest.json" not in manifest["files"]
    assert json.loads((tmp_path / "latest.json").read_text()) == {"name": path.name, "step": trainer.step_count}
    assert json.loads((tmp_path / "best.json").read_text())["name"] == path.name
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left
    verify_checkpoint(path)


def test_corrupt_latest_falls_back_to_previous(trainer: RLTrainer, tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    manager = CheckpointManager(tmp_path, keep_last=3)
    first = manager.save(1, trainer)
    second = manager.save(2, trainer)
    assert manager.latest() == second
    flip_byte(second / "trainer.pt")
    with caplog.at_level(logging.WARNING, logger="s3core.rl.checkpoint"):
        assert manager.latest() == first
    assert "sha256 does not match" in caplog.text and "step-000002" in caplog.text
    with pytest.raises(DataError, match="sha256 does not match"):
        manager.load(second, trainer)
    assert manager.latest(checksums=False) == second  # same size: only the checksum catches it


def test_partial_directory_is_ignored(trainer: RLTrainer, tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path)
    good = manager.save(3, trainer)
    partial = tmp_path / "step-000004"
    partial.mkdir()
    (partial / "trainer.pt").write_bytes(b"half")
    assert manager.latest() == good
    with pytest.raises(DataError, match="no manifest.json"):
        manager.load(partial, trainer)
    with pytest.raises(NotFound):
        manager.load(tmp_path / "step-000099", trainer)
    truncated = manager.save(5, trainer)
    assert not partial.exists()  # older than the newest complete checkpoint and not kept: pruned
    (truncated / "rng.pt").write_bytes((truncated / "rng.pt").read_bytes()[:-10])
    assert manager.latest() == good


def test_keep_last_pruning_keeps_the_best(trainer: RLTrainer, tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path, keep_last=2)
    metrics = {1: 0.1, 2: 0.9, 3: 0.2, 4: 0.3, 5: None, 6: 0.4}
    for step, metric in metrics.items():
        manager.save(step, trainer, metric=metric)
    assert [p.name for _, p in manager.checkpoints()] == ["step-000002", "step-000005", "step-000006"]
    assert manager.best() == tmp_path / "step-000002"
    assert json.loads((tmp_path / "best.json").read_text())["metric"] == 0.9
    assert manager.latest() == tmp_path / "step-000006"


def test_load_restores_trainer_and_rng(trainer: RLTrainer, tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path)
    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    path = manager.save(trainer.step_count, trainer, extra={"cursor": 9})
    expected = (random.random(), float(np.random.rand()), float(torch.rand(())))
    saved = {n: p.detach().clone() for n, p in trainer.policy.named_parameters()}
    step = trainer.step_count
    trainer.step(batch(1))
    assert trainer.step_count == step + 1
    assert manager.load(path, trainer) == {"cursor": 9}
    assert trainer.step_count == step
    for n, p in trainer.policy.named_parameters():
        assert torch.equal(p, saved[n])
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == expected


def test_exported_policy_loads_and_gives_the_same_logits(trainer: RLTrainer, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    trainer.step(batch(2))
    path = CheckpointManager(tmp_path).save(trainer.step_count, trainer)
    model = AutoModelForCausalLM.from_pretrained(path / "policy")
    tokenizer = AutoTokenizer.from_pretrained(path / "policy")
    assert tokenizer.chat_template and len(tokenizer) == trainer.vocab_size
    ids = torch.tensor([batch(3)[0].token_ids, batch(4)[1].token_ids])
    trainer.policy.eval()
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, trainer.policy(input_ids=ids).logits)
