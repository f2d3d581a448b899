"""Off-policy correction: weights, masks and caps on hand-computed tensors, per-position mismatch
metrics, which logprobs serve as old, and the update with and without a correction on a tiny model."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from codrl.algo.losses import PolicyLossConfig, policy_loss, token_logprobs
from codrl.algo.offpolicy import (OffPolicyConfig, add_mismatch_sums, correction_mode, importance_weights,
                                  mismatch_metrics, rollout_logprobs_serve_as_old, trainer_temperature)
from codrl.errors import CodrlError
from codrl.rollout.experience import Experience, ModelEpisode
from codrl.train.batching import collate, to_sequences
from codrl.train.config import TrainConfig
from codrl.train.update import PolicyUpdate

LN2 = math.log(2.0)


def lp_pair(log_ratios: list[list[float]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Trainer and behaviour logprobs whose difference is ``log_ratios``."""
    behaviour = torch.full((len(log_ratios), len(log_ratios[0])), -1.0)
    return behaviour + torch.tensor(log_ratios), behaviour


def test_tis_truncates_the_ratio_at_the_cap() -> None:
    old, beh = lp_pair([[0.0, LN2, math.log(3.0), -LN2]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    corr = importance_weights(old, beh, mask, "tis", cap=2.5)
    assert torch.allclose(corr.weights, torch.tensor([[1.0, 2.0, 2.5, 0.5]]))
    assert corr.acted.tolist() == [[False, False, True, False]]


def test_token_mask_is_two_sided_and_does_not_reweight() -> None:
    old, beh = lp_pair([[0.0, LN2 - 0.01, LN2 + 0.01, -LN2 - 0.01, -0.3]])
    mask = torch.ones(1, 5)
    corr = importance_weights(old, beh, mask, "mis_token", cap=2.0)
    assert corr.weights.tolist() == [[1.0, 1.0, 0.0, 0.0, 1.0]]
    assert corr.acted.tolist() == [[False, False, True, True, False]]


def test_episode_mask_drops_rows_whose_geometric_mean_ratio_leaves_the_bounds() -> None:
    # row 0: log-ratios 1.0 and -0.8 average 0.1 (kept despite a token beyond the cap);
    # row 1: 0.5 and 1.0 average 0.75 > ln 2 (dropped); the untrained third token counts for nothing
    old, beh = lp_pair([[1.0, -0.8, 5.0], [0.5, 1.0, 5.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    corr = importance_weights(old, beh, mask, "mis_episode", cap=2.0)
    assert corr.weights.tolist() == [[1.0, 1.0, 1.0], [0.0, 0.0, 1.0]]
    assert corr.acted.tolist() == [[False, False, False], [True, True, False]]


@pytest.mark.parametrize("mode", ["none", "tis", "mis_token", "mis_episode"])
def test_untrained_positions_keep_weight_one(mode: Any) -> None:
    old, beh = lp_pair([[3.0, -3.0]])
    corr = importance_weights(old, beh, torch.zeros(1, 2), mode, cap=2.0)
    assert corr.weights.tolist() == [[1.0, 1.0]] and not corr.acted.any()


def test_mismatch_metrics_per_position() -> None:
    old, beh = lp_pair([[LN2, -LN2, 0.0], [0.0, 0.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    corr = importance_weights(old, beh, mask, "tis", cap=1.5)
    sums: dict[str, float] = {}
    add_mismatch_sums(sums, old, beh, mask, torch.tensor([0, 2]), corr.acted)
    add_mismatch_sums(sums, old[1:], beh[1:], mask[1:], torch.tensor([2]), corr.acted[1:])  # a second micro-batch
    m = mismatch_metrics(sums)
    # position 0: ratios 2 and 1/2; k3 = r - 1 - log r per token, KL(sampler || trainer)
    k3 = ((2 - 1 - LN2) + (0.5 - 1 + LN2)) / 2
    assert m["offpolicy/pos0/kl"] == pytest.approx(k3)
    assert m["offpolicy/pos0/ratio_std"] == pytest.approx(0.75)  # population std of {2, 0.5}
    assert m["offpolicy/pos0/acted_frac"] == pytest.approx(0.5)  # the ratio 2 is capped
    assert m["offpolicy/pos2/kl"] == pytest.approx(0.0, abs=1e-7)
    assert m["offpolicy/pos2/ratio_std"] == pytest.approx(0.0, abs=1e-6)
    assert m["offpolicy/pos2/acted_frac"] == 0.0
    assert not any("pos1" in k for k in m)


def test_stale_experiences_kept_for_correction_use_tis() -> None:
    assert correction_mode(OffPolicyConfig(), "auto", stale_kept=False) == "none"
    assert correction_mode(OffPolicyConfig(), "auto", stale_kept=True) == "tis"
    assert correction_mode(OffPolicyConfig(mode="mis_token"), "recompute", stale_kept=True) == "mis_token"
    with pytest.raises(CodrlError, match="old_logprobs"):
        correction_mode(OffPolicyConfig(mode="tis"), "rollout", stale_kept=False)
    with pytest.raises(ValueError, match="mode"):
        OffPolicyConfig(mode="importance")
    with pytest.raises(ValueError, match="cap"):
        OffPolicyConfig(cap=1.0)


def test_which_logprobs_serve_as_old() -> None:
    assert rollout_logprobs_serve_as_old("none", "auto", sampler_is_trainer=True)
    assert not rollout_logprobs_serve_as_old("none", "auto", sampler_is_trainer=False)
    assert rollout_logprobs_serve_as_old("none", "rollout", sampler_is_trainer=False)
    assert not rollout_logprobs_serve_as_old("none", "recompute", sampler_is_trainer=True)
    assert not rollout_logprobs_serve_as_old("tis", "auto", sampler_is_trainer=True)
    assert trainer_temperature(OffPolicyConfig(), 0.0) == 1.0  # greedy samplers record temperature-1 logprobs
    assert trainer_temperature(OffPolicyConfig(), 1.3) == 1.3
    assert trainer_temperature(OffPolicyConfig(target_temperature=1.0), 1.3) == 1.0


def test_token_weights_scale_each_token_of_the_policy_loss() -> None:
    logprobs = torch.tensor([[-1.0, -2.0, -0.5]], requires_grad=True)
    old = logprobs.detach().clone()
    adv, mask = torch.tensor([1.0]), torch.ones(1, 3)
    loss, _ = policy_loss(logprobs, old, adv, mask, token_weights=torch.tensor([[2.0, 0.0, 1.0]]))
    loss.backward()
    assert logprobs.grad is not None
    assert torch.allclose(logprobs.grad, torch.tensor([[-2.0, 0.0, -1.0]]) / 3)


# -- the update on a tiny model ----------------------------------------------------------------
def tiny_model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
                                        initializer_range=0.5))  # sharp enough for temperature to matter


def episodes(model: LlamaForCausalLM, temperature: float) -> list[ModelEpisode]:
    """Episodes at positions 0 and 1 whose recorded logprobs are the model's at ``temperature``."""
    g = torch.Generator().manual_seed(1)
    out = []
    for i in range(6):
        ids = torch.randint(4, 32, (9,), generator=g)
        with torch.no_grad():
            lp = token_logprobs(model(input_ids=ids[None]).logits, ids[None], temperature)[0]
        prompt, completion = ids[:5].tolist(), ids[5:].tolist()
        call = Experience(pack_id="p", repeat=i, episode_type="solve", position=i % 2, turn=0, prompt_ids=prompt,
                          completion_ids=completion, logprobs=lp[4:].tolist(), text="")
        out.append(ModelEpisode("solve", i % 2, [call], own_reward=0.0, advantage=1.0 if i % 3 else -1.0))
    return out


def update_of(model: LlamaForCausalLM, **over: Any) -> PolicyUpdate:
    cfg = TrainConfig.model_validate({"envs": [{"name": "secret_table"}], "model": {"lora": None},
                                      "loss": {"variant": "ppo_clip"}, **over})
    return PolicyUpdate(cfg, model, torch.optim.SGD(model.parameters(), lr=0.1), pad_id=0)


def trained(over: dict[str, Any], rollout_logprobs: bool, temperature: float = 1.0) -> tuple[list[torch.Tensor],
                                                                                             dict[str, float]]:
    """Parameters after one update of a fresh tiny model, and the update's metrics."""
    model = tiny_model()
    metrics = update_of(model, **over)(episodes(model, temperature), step=0, rollout_logprobs=rollout_logprobs)
    return [p.detach().clone() for p in model.parameters()], metrics


def test_no_correction_trains_the_plain_policy_gradient() -> None:
    """Mode none: the update's gradient is the token-mean policy loss on the rollout's logprobs,
    computed here by hand, and it logs no mismatch."""
    model = tiny_model()
    eps = episodes(model, 1.0)
    rows = to_sequences(eps)
    update = update_of(model)
    model.zero_grad()
    update.accumulate(copy.deepcopy(rows))
    got = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    b = collate(rows, 0, torch.device("cpu"))
    lp = token_logprobs(model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits, b["input_ids"])
    loss, _ = policy_loss(lp, b["old_logprobs"], b["advantages"], b["mask"], PolicyLossConfig(variant="ppo_clip"))
    loss.backward()
    for a, e in zip(got, (p.grad for p in model.parameters()), strict=True):
        assert torch.allclose(a, e, atol=1e-6)
    _, metrics = trained({}, rollout_logprobs=True)
    assert not any(k.startswith("offpolicy/") for k in metrics)


def test_correction_of_a_sampler_that_is_the_trainer_changes_nothing() -> None:
    """Behaviour logprobs equal to the trainer's: every weight is 1, so each correction trains
    exactly what the uncorrected update with recomputed old logprobs trains; no mismatch."""
    plain, plain_metrics = trained({}, rollout_logprobs=False)
    assert plain_metrics["offpolicy/pos0/kl"] == pytest.approx(0.0, abs=1e-6)
    for mode in ("tis", "mis_token", "mis_episode"):
        params, metrics = trained({"offpolicy": {"mode": mode}}, rollout_logprobs=True)
        for a, b in zip(params, plain, strict=True):
            assert torch.allclose(a, b, atol=1e-6)
        for pos in (0, 1):
            assert metrics[f"offpolicy/pos{pos}/acted_frac"] == 0.0
            assert metrics[f"offpolicy/pos{pos}/kl"] == pytest.approx(0.0, abs=1e-6)


def test_a_hotter_sampler_is_seen_and_corrected() -> None:
    """A sampler at temperature 2 while the trainer trains temperature 1: the mismatch shows at
    every position, the weights are not all 1, and the corrected update differs from the plain one."""
    hot = {"rollout": {"temperature": 2.0}}
    target = {"target_temperature": 1.0, "cap": 1.5}
    plain, _ = trained({**hot, "offpolicy": target}, rollout_logprobs=False, temperature=2.0)
    for mode in ("tis", "mis_token"):
        params, metrics = trained({**hot, "offpolicy": {**target, "mode": mode}}, rollout_logprobs=False,
                                  temperature=2.0)
        for pos in (0, 1):
            assert metrics[f"offpolicy/pos{pos}/kl"] > 0.01
            assert metrics[f"offpolicy/pos{pos}/ratio_std"] > 0.01
        assert max(metrics[f"offpolicy/pos{pos}/acted_frac"] for pos in (0, 1)) > 0.0
        assert any(not torch.allclose(a, b, atol=1e-6) for a, b in zip(params, plain, strict=True))
