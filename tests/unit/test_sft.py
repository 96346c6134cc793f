"""Supervised warm start (s3core.rl.sft) with the tiny Qwen2 model: the loss, learning, export."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from s3core.config import RLConfig, SearchConfig, SFTConfig
from s3core.rl.batch import Sample
from s3core.rl.sft import SFTTrainer, sft_samples


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from s3core.rl.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "m", seed=0)


@pytest.fixture(scope="module")
def teacher(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Any]:
    from transformers import AutoTokenizer

    from s3core.data.io import load_questions
    from s3core.data.synth import synthesize
    from s3core.retrieval.index import build_index, load_index
    from s3core.train.teacher import synth_teacher_trajectories

    root = tmp_path_factory.mktemp("world")
    synthesize(root / "w", seed=5, n_entities=40, n_questions=4)
    build_index(root / "w" / "corpus.jsonl", "bm25", root / "idx", show_progress=False)
    qs = load_questions(root / "w" / "synth_1hop.jsonl") + load_questions(root / "w" / "synth_2hop.jsonl")
    tok = AutoTokenizer.from_pretrained(tiny)
    return synth_teacher_trajectories(qs, load_index(root / "idx").search, tok, SearchConfig(max_obs_tokens=200))


def _trainer(tiny: Path, **sft: Any) -> SFTTrainer:
    rl = RLConfig(device="cpu", **sft.pop("rl", {}))
    return SFTTrainer.from_pretrained(str(tiny), rl, SFTConfig(**{"micro_batch_size": 4, **sft}))


def _manual_nll(model: Any, s: Sample) -> float:
    ids = torch.tensor([s.token_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    terms = [-float(logp[t, s.token_ids[t + 1]]) for t in range(len(s.token_ids) - 1) if s.action_mask[t + 1]]
    return sum(terms) / len(terms)


def test_loss_counts_action_tokens_only(tiny: Path, teacher: list[Any]) -> None:
    tr = _trainer(tiny)
    s = sft_samples(teacher[:1], tr.tokenizer)[0]
    base = tr.nll([s])
    assert base == pytest.approx(_manual_nll(tr.policy, s), rel=1e-5)
    # tokens after the last action (an observation nobody predicts from) change nothing
    longer = Sample(s.token_ids + [5, 6, 7, 8], s.action_mask + [0, 0, 0, 0], 0.0)
    assert tr.nll([longer]) == pytest.approx(base, rel=1e-6)
    # a masked token's id after the last action, changed: same loss; unmasking it: a different loss
    changed = Sample(s.token_ids + [9, 10, 11, 12], s.action_mask + [0, 0, 0, 0], 0.0)
    assert tr.nll([changed]) == pytest.approx(base, rel=1e-6)
    unmasked = Sample(s.token_ids + [9], s.action_mask + [1], 0.0)
    assert tr.nll([unmasked]) != pytest.approx(base, rel=1e-6)
    # padding in a micro-batch with a shorter row changes nothing either
    short = Sample(s.token_ids[: s.action_mask.index(1) + 3], s.action_mask[: s.action_mask.index(1) + 3], 0.0)
    sum_pair, n_pair = tr.nll_sum([s, short])
    sum_a, n_a = tr.nll_sum([s])
    sum_b, n_b = tr.nll_sum([short])
    assert n_pair == n_a + n_b == sum(s.action_mask) + 3
    assert float(sum_pair.detach()) == pytest.approx(float(sum_a.detach()) + float(sum_b.detach()), rel=1e-5)


def test_sft_lowers_nll_of_teacher_actions_and_exports(tiny: Path, teacher: list[Any], tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    tr = _trainer(tiny, lr=1e-2, batch_size=4, micro_batch_size=2, epochs=3, seed=1)
    samples = sft_samples(teacher, tr.tokenizer, SearchConfig(max_obs_tokens=200))
    assert [s.token_ids for s in samples] == [t.token_ids for t in teacher]  # replay = the episodes' layout
    before = tr.nll(samples)
    metrics = tmp_path / "sft_metrics.jsonl"
    hist = tr.fit(samples, metrics_path=metrics)
    after = tr.nll(samples)
    assert after < 0.7 * before, (before, after)
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 3 * 2 + 1)) == [h["step"] for h in hist]
    assert all(r["grad_norm"] > 0 and r["action_tokens"] > 0 for r in rows)
    out = tr.export_policy(tmp_path / "policy")
    loaded = AutoModelForCausalLM.from_pretrained(out)
    assert (out / "tokenizer_config.json").is_file()
    ids = torch.tensor([samples[0].token_ids[:64]])
    tr.policy.eval()
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=ids).logits, tr.policy(input_ids=ids).logits, atol=1e-5)


def test_seeded_shuffling_is_reproducible(tiny: Path, teacher: list[Any]) -> None:
    runs = []
    for _ in range(2):
        tr = _trainer(tiny, lr=1e-3, batch_size=2, epochs=1, seed=7)
        hist = tr.fit(sft_samples(teacher[:4], tr.tokenizer))
        runs.append([h["loss"] for h in hist])
    assert runs[0] == runs[1]


@pytest.mark.parametrize("rl", [{"lora_rank": 4, "lora_target_modules": ["q_proj", "v_proj"]},
                                {"train_top_layers": 1}])
def test_sft_with_rl_options(tiny: Path, teacher: list[Any], tmp_path: Path, rl: dict[str, Any]) -> None:
    from transformers import AutoModelForCausalLM

    if "train_top_layers" in rl and not hasattr(RLConfig(), "train_top_layers"):
        pytest.skip("rl.train_top_layers not in this RLConfig")
    if "lora_rank" in rl:
        pytest.importorskip("peft")
    tr = _trainer(tiny, lr=5e-3, batch_size=4, epochs=1, rl=rl)
    samples = sft_samples(teacher[:4], tr.tokenizer)
    before = tr.nll(samples)
    tr.fit(samples)
    assert tr.nll(samples) < before
    out = tr.export_policy(tmp_path / "p")
    loaded = AutoModelForCausalLM.from_pretrained(out)
    ids = torch.tensor([samples[0].token_ids[:48]])
    tr.policy.eval()
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=ids).logits, tr.policy(input_ids=ids).logits, atol=1e-4)
