"""s3core.rl.algos and s3core.rl.batch: the tensor maths against hand-computed values."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from s3core.errors import InvalidArgument
from s3core.rl import algos
from s3core.rl.batch import Sample, collate


def test_import_does_not_load_torch() -> None:
    code = "import sys, s3core.rl; assert 'torch' not in sys.modules, 'torch imported'; s3core.rl.Sample"
    subprocess.run([sys.executable, "-c", code], check=True)


# --- log-probs and entropy ------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1 << 24, 7])  # the default, and a tiny chunk forcing many chunks
def test_token_logprobs_and_entropy_match_reference(monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    monkeypatch.setattr(algos, "_CHUNK_ELEMENTS", chunk)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 6, 5, generator=g, requires_grad=True)
    ids = torch.randint(0, 5, (3, 6), generator=g)
    lp = algos.token_logprobs(logits, ids, temperature=0.7)
    ref = torch.log_softmax(logits[:, :-1] / 0.7, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    assert lp.shape == (3, 5)
    torch.testing.assert_close(lp, ref)
    ent = algos.entropy_from_logits(logits[:, :-1], temperature=0.7)
    ref_ent = torch.distributions.Categorical(logits=logits[:, :-1] / 0.7).entropy()
    torch.testing.assert_close(ent, ref_ent)
    # gradients (the hand-written chunked backward of token_logprobs included) match autograd's
    weights = torch.randn(3, 5, generator=g)
    weights[1, 2:] = 0.0  # masked positions: exactly zero gradient
    grad, = torch.autograd.grad((lp * weights).sum() + ent.sum(), logits)
    ref_grad, = torch.autograd.grad((ref * weights).sum() + ref_ent.sum(), logits)
    torch.testing.assert_close(grad, ref_grad)
    lp_grad, = torch.autograd.grad((algos.token_logprobs(logits, ids, 0.7) * weights).sum(), logits)
    assert bool((lp_grad[1, 2:] == 0).all()) and bool((lp_grad[:, -1] == 0).all())


def test_masked_token_logprobs_and_entropy_compute_only_the_mask() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 7, 11, generator=g, requires_grad=True)
    ids = torch.randint(0, 11, (2, 7), generator=g)
    mask = torch.tensor([[0, 1, 1, 0, 0, 1], [1, 0, 0, 0, 1, 1]])
    full_lp, full_ent = algos.token_logprobs_and_entropy(logits, ids, 1.3)
    lp, ent = algos.token_logprobs_and_entropy(logits, ids, 1.3, mask=mask)
    assert not ent.requires_grad and lp.requires_grad
    torch.testing.assert_close(lp, full_lp * mask)
    torch.testing.assert_close(ent, full_ent * mask)
    torch.testing.assert_close(algos.entropy_from_logits(logits[:, :-1], 1.3, mask=mask), full_ent * mask)
    torch.testing.assert_close(algos.entropy_from_logits(logits[:, :-1], 1.3), full_ent)
    grad, = torch.autograd.grad(lp.sum(), logits)
    ref_grad, = torch.autograd.grad((full_lp * mask).sum(), logits)
    torch.testing.assert_close(grad, ref_grad)
    assert bool((grad[0, 0] == 0).all()) and bool((grad[1, 1:4] == 0).all())
    with pytest.raises(ValueError, match="mask"):
        algos.token_logprobs(logits, ids, mask=mask[:, :-1])


def test_token_logprobs_of_bf16_logits_is_float32() -> None:
    logits = torch.randn(2, 4, 8).to(torch.bfloat16)
    ids = torch.randint(0, 8, (2, 4))
    logits.requires_grad_(True)
    lp = algos.token_logprobs(logits, ids)
    assert lp.dtype == torch.float32
    ref = torch.log_softmax(logits.float()[:, :-1], -1).gather(-1, ids[:, 1:, None])[..., 0]
    torch.testing.assert_close(lp, ref)
    grad, = torch.autograd.grad(lp.sum(), logits)
    ref_grad, = torch.autograd.grad(ref.sum(), logits)
    assert grad.dtype == torch.bfloat16
    torch.testing.assert_close(grad, ref_grad)


# --- masked reductions ----------------------------------------------------------------------------


def test_masked_mean_sum_whiten() -> None:
    x = torch.tensor([[1.0, 2.0, float("nan")], [3.0, float("inf"), 5.0]])
    m = torch.tensor([[1, 1, 0], [1, 0, 1]])
    assert float(algos.masked_sum(x, m)) == 11.0
    assert float(algos.masked_mean(x, m)) == 11.0 / 4
    torch.testing.assert_close(algos.masked_mean(x, m, dim=1), torch.tensor([1.5, 4.0]))
    assert float(algos.masked_mean(x, torch.zeros_like(m))) == 0.0  # empty mask: 0, not NaN
    w = algos.masked_whiten(x, m)
    vals = w[m.bool()]
    assert abs(float(vals.mean())) < 1e-6
    assert abs(float((vals ** 2).mean()) - 1.0) < 1e-5
    assert float(w[0, 2]) == 0.0 and float(w[1, 1]) == 0.0


# --- KL estimators --------------------------------------------------------------------------------


def test_kl_estimators_hand_values() -> None:
    logp = torch.tensor([math.log(0.5)])
    ref = torch.tensor([math.log(0.25)])
    d = math.log(2.0)
    assert float(algos.kl_estimate(logp, ref, "k1")) == pytest.approx(d)
    assert float(algos.kl_estimate(logp, ref, "k2")) == pytest.approx(0.5 * d * d)
    assert float(algos.kl_estimate(logp, ref, "k3")) == pytest.approx(0.5 + d - 1.0)
    masked = algos.kl_estimate(torch.tensor([0.0, -1.0]), torch.tensor([-1.0, 0.0]), "k1", torch.tensor([0, 1]))
    assert masked.tolist() == [0.0, -1.0]
    with pytest.raises(ValueError, match="k1, k2 or k3"):
        algos.kl_estimate(logp, ref, "k4")  # type: ignore[arg-type]


def test_k1_and_k3_are_unbiased_kl_estimates() -> None:
    p = torch.tensor([0.5, 0.3, 0.2])
    q = torch.tensor([0.2, 0.2, 0.6])
    true_kl = float((p * (p / q).log()).sum())
    g = torch.Generator().manual_seed(0)
    x = torch.multinomial(p, 200_000, replacement=True, generator=g)
    logp, logq = p.log()[x], q.log()[x]
    for kind in ("k1", "k3"):
        assert float(algos.kl_estimate(logp, logq, kind).mean()) == pytest.approx(true_kl, abs=5e-3)
    assert bool((algos.kl_estimate(logp, logq, "k3") >= 0).all())


# --- rewards and advantages -----------------------------------------------------------------------


def test_place_rewards_on_last_action_token() -> None:
    m = torch.tensor([[0, 1, 1, 0, 1, 0], [0, 0, 1, 0, 0, 0]])
    out = algos.place_rewards(torch.tensor([2.0, -1.0]), m)
    assert out.tolist() == [[0, 0, 0, 0, 2.0, 0], [0, 0, -1.0, 0, 0, 0]]


def test_gae_skips_observation_tokens_hand_computed() -> None:
    gamma, lam = 0.9, 0.8
    # row 0: prompt, action, action, obs, obs, action, pad; row 1: a single action segment
    mask = torch.tensor([[0, 1, 1, 0, 0, 1, 0], [0, 0, 1, 1, 1, 0, 0]], dtype=torch.float32)
    rewards = torch.tensor([[0.0, -0.1, -0.1, 5.0, 5.0, 0.9, 0.0],  # 5.0 on observations must be ignored
                            [0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0]])
    values = torch.tensor([[9.0, 0.5, 0.6, 9.0, 9.0, 0.8, 9.0],  # 9.0 on non-actions must be ignored
                           [9.0, 9.0, 0.2, 0.3, 0.4, 9.0, 9.0]])
    adv, ret = algos.gae(rewards, values, mask, gamma, lam)
    # row 0, action tokens in order: (r, V) = (-0.1, .5), (-0.1, .6), (0.9, .8)
    a3 = 0.9 - 0.8
    a2 = (-0.1 + gamma * 0.8 - 0.6) + gamma * lam * a3
    a1 = (-0.1 + gamma * 0.6 - 0.5) + gamma * lam * a2
    # row 1: (0, .2), (0, .3), (1, .4)
    b3 = 1.0 - 0.4
    b2 = (gamma * 0.4 - 0.3) + gamma * lam * b3
    b1 = (gamma * 0.3 - 0.2) + gamma * lam * b2
    expected = torch.tensor([[0, a1, a2, 0, 0, a3, 0], [0, 0, b1, b2, b3, 0, 0]])
    torch.testing.assert_close(adv, expected)
    torch.testing.assert_close(ret, torch.where(mask.bool(), expected + values, torch.zeros(())))
    assert a1 == pytest.approx(0.00624) and b1 == pytest.approx(0.42424)


def test_gae_gamma_lambda_one_is_return_minus_value() -> None:
    mask = torch.tensor([[0, 1, 0, 1, 1]], dtype=torch.float32)
    rewards = algos.place_rewards(torch.tensor([1.0]), mask)
    values = torch.tensor([[0.0, 0.2, 0.0, 0.5, 0.7]])
    adv, ret = algos.gae(rewards, values, mask, 1.0, 1.0)
    torch.testing.assert_close(adv, torch.tensor([[0.0, 0.8, 0.0, 0.5, 0.3]]))
    torch.testing.assert_close(ret, mask)


def test_grpo_advantages_hand_computed() -> None:
    scores = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 2.0, 2.0])
    groups = ["a", "a", "a", "a", "b", "c", "c"]
    mask = torch.tensor([[0, 1, 1]] * 7)
    adv = algos.grpo_advantages(scores, groups, mask, norm_std=True, eps=1e-6)
    std_a = math.sqrt(4 * 0.25 / 3)  # sample std of (1, 0, 0, 1)
    per_traj = [0.5 / (std_a + 1e-6), -0.5 / (std_a + 1e-6), -0.5 / (std_a + 1e-6), 0.5 / (std_a + 1e-6),
                0.0,  # a group of one has no baseline
                0.0, 0.0]  # identical scores: zero, not NaN
    torch.testing.assert_close(adv, torch.tensor(per_traj)[:, None] * mask)
    plain = algos.grpo_advantages(scores, torch.tensor([0, 0, 0, 0, 1, 2, 2]), mask, norm_std=False)
    torch.testing.assert_close(plain[:, 1], torch.tensor([0.5, -0.5, -0.5, 0.5, 0.0, 0.0, 0.0]))


# --- losses ---------------------------------------------------------------------------------------


def test_policy_loss_is_unclipped_surrogate_at_ratio_one() -> None:
    logp = torch.tensor([[-1.0, -2.0, -0.5, -3.0]], requires_grad=True)
    adv = torch.tensor([[0.0, 1.5, -2.0, 7.0]])
    mask = torch.tensor([[0, 1, 1, 0]])
    loss, stats = algos.policy_loss(logp, logp.detach(), adv, mask, clip=0.2)
    assert float(loss.detach()) == pytest.approx(-(1.5 - 2.0) / 2)
    assert float(stats["clip_fraction"]) == 0.0 and float(stats["approx_kl"]) == 0.0
    loss.backward()
    # d/dlogp of -A * exp(logp - old) at ratio 1 = -A / n_tokens; masked tokens get exactly 0
    assert logp.grad.tolist() == [[0.0, -0.75, 1.0, 0.0]]


def test_policy_loss_clips() -> None:
    old = torch.zeros(1, 2)
    logp = torch.log(torch.tensor([[1.5, 0.5]])).requires_grad_(True)
    adv = torch.tensor([[1.0, -1.0]])
    loss, stats = algos.policy_loss(logp, old, adv, torch.ones(1, 2), clip=0.2)
    # token 0: ratio 1.5 > 1.2 with A > 0 -> clipped at 1.2; token 1: ratio 0.5 < 0.8 with A < 0 -> 0.8
    assert float(loss.detach()) == pytest.approx((-1.2 + 0.8) / 2)
    assert float(stats["clip_fraction"]) == 1.0
    loss.backward()
    assert logp.grad.tolist() == [[0.0, 0.0]]  # clipped tokens pass no gradient


def test_value_loss_clipped_and_plain() -> None:
    values = torch.tensor([[1.5, 1.0, 0.0]], requires_grad=True)
    old = torch.tensor([[1.0, 1.0, 0.0]])
    ret = torch.tensor([[2.0, 0.0, 9.0]])
    mask = torch.tensor([[1, 1, 0]])
    loss, frac = algos.value_loss(values, old, ret, mask, clip=0.2)
    # token 0: unclipped (1.5-2)^2 = .25, clipped V = 1.2 -> .64 (larger); token 1: both 1.0
    assert float(loss.detach()) == pytest.approx(0.5 * (0.64 + 1.0) / 2)
    assert float(frac) == 0.5
    plain, frac0 = algos.value_loss(values, old, ret, mask, clip=0.0)
    assert float(plain.detach()) == pytest.approx(0.5 * (0.25 + 1.0) / 2) and float(frac0) == 0.0


# --- batch ----------------------------------------------------------------------------------------


def test_collate_pads_right_and_numbers_groups() -> None:
    b = collate([Sample([5, 6, 7], [0, 1, 1], 1.0, group="q1"),
                 Sample([5, 8, 9, 10, 11], [0, 1, 0, 0, 1], 0.0, group="q2"),
                 Sample([4, 4], [0, 1], 0.5, group="q1")], pad_id=0)
    assert b["input_ids"].tolist() == [[5, 6, 7, 0, 0], [5, 8, 9, 10, 11], [4, 4, 0, 0, 0]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1] * 5, [1, 1, 0, 0, 0]]
    assert b["action_mask"].tolist() == [[0, 1, 1, 0, 0], [0, 1, 0, 0, 1], [0, 1, 0, 0, 0]]
    assert b["lengths"].tolist() == [3, 5, 2]
    assert b["group_index"].tolist() == [0, 1, 0]
    assert b["rewards"].tolist() == [1.0, 0.0, 0.5]


@pytest.mark.parametrize("bad, message", [
    (Sample([1, 2, 3], [0, 1], 1.0), "sample 1: token_ids has 3 tokens but action_mask has 2"),
    (Sample([1, 2], [0, 0], 1.0), "sample 1: has no action token"),
    (Sample([1, 2], [0, 2], 1.0), "sample 1: action_mask values must be the integers 0 or 1, found 2"),
    (Sample([1, 2], [1, 1], 1.0), "sample 1: the first token is marked as an action"),
    (Sample([1, -2], [0, 1], 1.0), "sample 1: token ids must be >= 0"),
    (Sample([1, 2], [0, 1], float("nan")), "sample 1: reward must be finite"),
    (Sample([1], [0], 1.0), "sample 1: needs at least 2 tokens"),
])
def test_collate_rejects_malformed_samples(bad: Sample, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        collate([Sample([1, 2], [0, 1], 0.0), bad], pad_id=0)


def test_collate_rejects_empty_batch() -> None:
    with pytest.raises(InvalidArgument, match="at least one sample"):
        collate([], pad_id=0)
