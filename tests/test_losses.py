"""Policy losses: values and gradients on tiny tensors, checked against hand computation."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from codrl.algo.losses import (
    PolicyLossConfig,
    entropy_from_logits,
    kl_penalty,
    policy_loss,
    token_logprobs,
)

# Six tokens, old logprobs 0, so ratio = exp(logprob):
#   ratio      1.5  0.5  1.0  1.1  0.5  1.5
#   advantage   1   -1    2   -1    1   -1
# With eps 0.2, tokens 0 (A>0, ratio>1.2) and 1 (A<0, ratio<0.8) have left the trust region.
RATIOS = [1.5, 0.5, 1.0, 1.1, 0.5, 1.5]
ADVS = [1.0, -1.0, 2.0, -1.0, 1.0, -1.0]


def tokens() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    logprobs = torch.tensor([[math.log(r) for r in RATIOS]], dtype=torch.float64)
    logprobs.requires_grad_(True)
    old = torch.zeros_like(logprobs)
    advantages = torch.tensor([ADVS], dtype=torch.float64)
    mask = torch.ones_like(old)
    return logprobs, old, advantages, mask


def test_config_validation() -> None:
    assert PolicyLossConfig().variant == "rec_oneside_nois"
    with pytest.raises(ValidationError):
        PolicyLossConfig(nope=True)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        PolicyLossConfig(variant="dpo")  # type: ignore[arg-type]


def test_ppo_clip_value_and_gradient() -> None:
    lp, old, a, mask = tokens()
    loss, metrics = policy_loss(lp, old, a, mask, PolicyLossConfig(variant="ppo_clip"))
    # -min(r A, clip(r) A) per token:
    #   -min(1.5, 1.2) = -1.2 ; -min(-0.5, -0.8) = 0.8 ; -2 ; -min(-1.1, -1.1) = 1.1 ;
    #   -min(0.5, 0.8) = -0.5 ; -min(-1.5, -1.2) = 1.5          sum -0.3, mean -0.05
    assert loss.item() == pytest.approx(-0.05)
    loss.backward()
    # d/dlp of -r A is -r A where unclipped, 0 where the clipped branch is active
    expected = torch.tensor([[0.0, 0.0, -2.0, 1.1, -0.5, 1.5]], dtype=torch.float64) / 6
    assert torch.allclose(lp.grad, expected)
    assert metrics["clip_frac"] == pytest.approx(2 / 6)
    assert metrics["ratio_mean"] == pytest.approx(sum(RATIOS) / 6)
    # k3 of old vs new with old = 0: exp(-lp) + lp - 1 = 1/r + ln r - 1
    k3 = [1 / r + math.log(r) - 1 for r in RATIOS]
    assert metrics["approx_kl"] == pytest.approx(sum(k3) / 6)
    assert metrics["num_tokens"] == 6


def test_rec_oneside_nois_value_gradient_and_dropped_tokens() -> None:
    lp, old, a, mask = tokens()
    loss, metrics = policy_loss(lp, old, a, mask, PolicyLossConfig())
    # keep = [0, 0, 1, 1, 1, 1]; loss_t = -A * lp * keep
    kept = [-A * math.log(r) for r, A in zip(RATIOS[2:], ADVS[2:])]
    assert loss.item() == pytest.approx(sum(kept) / 6)
    loss.backward()
    # gradient -A * keep / N: no ratio weighting (token 3 gets 1/6, not 1.1/6)
    expected = torch.tensor([[0.0, 0.0, -2.0, 1.0, -1.0, 1.0]], dtype=torch.float64) / 6
    assert torch.allclose(lp.grad, expected)
    assert metrics["clip_frac"] == pytest.approx(2 / 6)


def test_rec_drops_only_in_advantage_direction() -> None:
    # A>0 with a low ratio and A<0 with a high ratio stay in; zero advantage gives no gradient
    lp = torch.log(torch.tensor([[0.5, 1.5, 1.5]], dtype=torch.float64)).requires_grad_(True)
    a = torch.tensor([[1.0, -1.0, 0.0]], dtype=torch.float64)
    loss, metrics = policy_loss(lp, torch.zeros_like(lp), a, torch.ones_like(a))
    loss.backward()
    assert torch.allclose(lp.grad, torch.tensor([[-1.0, 1.0, 0.0]], dtype=torch.float64) / 3)
    assert metrics["clip_frac"] == 0.0


def test_asymmetric_clip_eps() -> None:
    # eps_high 0.6: ratio 1.5 with A>0 is kept; eps_low 0.2: ratio 0.5 with A<0 is dropped
    lp = torch.log(torch.tensor([[1.5, 0.5]], dtype=torch.float64)).requires_grad_(True)
    a = torch.tensor([[1.0, -1.0]], dtype=torch.float64)
    cfg = PolicyLossConfig(clip_eps_low=0.2, clip_eps_high=0.6)
    loss, _ = policy_loss(lp, torch.zeros_like(lp), a, torch.ones_like(a), cfg)
    loss.backward()
    assert torch.allclose(lp.grad, torch.tensor([[-0.5, 0.0]], dtype=torch.float64))


@pytest.mark.parametrize("variant", ["ppo_clip", "rec_oneside_nois"])
def test_masked_tokens_get_no_gradient(variant: str) -> None:
    lp, old, a, mask = tokens()
    mask[0, 2] = 0.0  # token 2 would otherwise have gradient -2 / N
    cfg = PolicyLossConfig(variant=variant)  # type: ignore[arg-type]
    loss, metrics = policy_loss(lp, old, a, mask, cfg)
    loss.backward()
    assert lp.grad[0, 2].item() == 0.0
    assert metrics["num_tokens"] == 5
    # the remaining tokens are normalised by the 5 masked-in tokens
    assert lp.grad[0, 3].item() == pytest.approx((1.1 if variant == "ppo_clip" else 1.0) / 5)


def test_num_tokens_override_for_micro_batches() -> None:
    lp, old, a, mask = tokens()
    full, _ = policy_loss(lp, old, a, mask, PolicyLossConfig(variant="ppo_clip"))
    half, _ = policy_loss(lp, old, a, mask, PolicyLossConfig(variant="ppo_clip"), num_tokens=12)
    assert half.item() == pytest.approx(full.item() / 2)


def test_per_sequence_advantages_broadcast() -> None:
    lp = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    a = torch.tensor([1.0, -2.0], dtype=torch.float64)
    loss, _ = policy_loss(lp, torch.zeros_like(lp), a, torch.ones(2, 3))
    loss.backward()
    expected = torch.tensor([[-1.0] * 3, [2.0] * 3], dtype=torch.float64) / 6
    assert torch.allclose(lp.grad, expected)


def test_empty_mask_gives_zero_loss() -> None:
    lp, old, a, mask = tokens()
    loss, metrics = policy_loss(lp, old, a, torch.zeros_like(mask))
    assert loss.item() == 0.0
    assert all(math.isfinite(v) for v in metrics.values())


def test_kl_estimators() -> None:
    lp = torch.tensor([0.0, -1.0])
    ref = torch.tensor([-1.0, 0.0])
    # d = lp - ref = [1, -1]
    assert torch.allclose(kl_penalty(lp, ref, "k1"), torch.tensor([1.0, -1.0]))
    assert torch.allclose(kl_penalty(lp, ref, "k2"), torch.tensor([0.5, 0.5]))
    # exp(ref - lp) - (ref - lp) - 1: e^-1 + 1 - 1 ; e^1 - 1 - 1
    expected = torch.tensor([math.exp(-1.0), math.e - 2.0])
    assert torch.allclose(kl_penalty(lp, ref, "k3"), expected)
    assert torch.allclose(kl_penalty(lp, lp, "k3"), torch.zeros(2))


def test_kl_term_in_loss() -> None:
    lp, old, a, mask = tokens()
    ref = torch.zeros_like(old)
    cfg = PolicyLossConfig(variant="ppo_clip", kl_coef=0.5, kl_estimator="k1")
    loss, metrics = policy_loss(lp, old, a, mask, cfg, ref_logprobs=ref)
    k1_mean = sum(math.log(r) for r in RATIOS) / 6
    assert loss.item() == pytest.approx(-0.05 + 0.5 * k1_mean)
    assert metrics["kl"] == pytest.approx(k1_mean)
    with pytest.raises(ValueError, match="ref_logprobs"):
        policy_loss(lp, old, a, mask, cfg)


def test_token_logprobs_matches_naive() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7, requires_grad=True)
    ids = torch.randint(0, 7, (2, 5))
    for temperature in (1.0, 0.7):
        got = token_logprobs(logits, ids, temperature)
        assert got.shape == (2, 4)
        for b in range(2):
            for t in range(4):
                naive = torch.log_softmax(logits[b, t] / temperature, dim=-1)[ids[b, t + 1]]
                assert got[b, t].item() == pytest.approx(naive.item(), abs=1e-5)
    got.sum().backward()
    assert logits.grad is not None and logits.grad[:, -1].abs().sum() == 0  # last unused


def test_token_logprobs_uniform_and_unbatched() -> None:
    logits = torch.zeros(3, 4)
    ids = torch.tensor([0, 1, 2])
    assert torch.allclose(token_logprobs(logits, ids), torch.full((2,), -math.log(4)))


def test_entropy_uniform_is_log_vocab() -> None:
    vocab = 49
    logits = torch.zeros(2, 3, vocab)
    logits[1, 2, 0] = 50.0  # nearly deterministic, but masked out
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    assert entropy_from_logits(logits, mask).item() == pytest.approx(math.log(vocab), rel=1e-5)


def test_entropy_hand_example_and_empty_mask() -> None:
    logits = torch.tensor([[[0.0, math.log(3.0)]]])  # p = [0.25, 0.75]
    expected = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert entropy_from_logits(logits, torch.ones(1, 1)).item() == pytest.approx(expected)
    assert entropy_from_logits(logits, torch.zeros(1, 1)).item() == 0.0
