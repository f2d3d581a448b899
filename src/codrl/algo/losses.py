"""Token-level policy-gradient losses (docs/method.md, section 4).

Conventions: ``logprobs``, ``old_logprobs``, ``ref_logprobs`` and ``mask`` are ``[B, T]`` tensors
over the same token positions (the next-token positions of :func:`token_logprobs`); ``mask`` is 1
on the model's own sampled tokens and 0 elsewhere. ``advantages`` is ``[B, T]`` or one value per
sequence (``[B]``). Losses are token means: the sum of per-token losses over masked tokens divided
by the number of masked tokens, or by a caller-supplied ``num_tokens`` (the global count when a
batch is split into micro-batches for gradient accumulation).

Variants (``ratio = exp(logprobs - old_logprobs)``, ``A`` the token's advantage):

* ``ppo_clip``: ``loss_t = -min(ratio * A, clip(ratio, 1 - eps_low, 1 + eps_high) * A)``.
* ``rec_oneside_nois`` (REC one-side, no importance sampling): ``loss_t = -A * logprobs * keep``
  where ``keep`` is a detached 0/1 factor, so the gradient is ``-A * keep * grad(logprobs)``, with
  no ratio weighting. ``keep = 0`` when the ratio has left the trust region in the direction the
  advantage pushes it: ``A > 0`` and ``ratio > 1 + eps_high``, or ``A < 0`` and
  ``ratio < 1 - eps_low``. Tokens with ``A = 0`` carry no gradient either way.

These are exactly the tokens whose PPO-clip gradient is zero, which is what ``clip_frac`` counts
for both variants.

* ``opd`` (on-policy distillation, :mod:`codrl.algo.distill`): the REC one-side loss on per-token
  advantages ``A_t = log p_teacher - log p_student`` of the sampled tokens (docs/distillation.md).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

KLEstimator = Literal["k1", "k2", "k3"]

_LOG_RATIO_CLAMP = 20.0  # bounds the exponent of the k3 estimator


class PolicyLossConfig(BaseModel):
    """Settings of :func:`policy_loss` (see the module docstring for the formulas)."""

    model_config = ConfigDict(extra="forbid")

    variant: Literal["rec_oneside_nois", "ppo_clip", "opd"] = "rec_oneside_nois"
    clip_eps_low: float = Field(default=0.2, ge=0.0, le=1.0)
    clip_eps_high: float = Field(default=0.2, ge=0.0)
    kl_coef: float = Field(default=0.0, ge=0.0)
    """Weight of the KL penalty against a reference policy (needs ``ref_logprobs`` when > 0)."""
    kl_estimator: KLEstimator = "k3"
    opd_coef: float = Field(default=0.0, ge=0.0)
    """Weight of the teachers' distillation term added to the RL advantages (the mixed form,
    :mod:`codrl.algo.distill`; needs ``teachers``); 0 under ``variant: opd``, where it is the whole advantage."""


def selective_log_softmax(logits: Tensor, targets: Tensor, temperature: float = 1.0) -> Tensor:
    """``log_softmax(logits / temperature)[target]`` without a full log-softmax tensor.

    ``logits`` is ``[..., V]``, ``targets`` ``[...]`` (token ids); the result has the shape of
    ``targets``, float32, differentiable w.r.t. ``logits``. Computed as
    ``logit[target] / temperature - logsumexp(logits / temperature)``: the only vocabulary-sized
    temporaries are the float32 (scaled) logits, which the caller keeps small by passing a
    chunk of positions at a time.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    scaled = logits.float()
    if temperature != 1.0:
        scaled = scaled / temperature
    picked = scaled.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(scaled, dim=-1)


@torch.no_grad()
def token_entropy(logits: Tensor) -> Tensor:
    """Entropy ``-sum_v p(v) log p(v)`` of each ``[..., V]`` row of logits, float32, no gradient."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def token_logprobs(logits: Tensor, input_ids: Tensor, temperature: float = 1.0) -> Tensor:
    """Log-probability of every next token: ``out[b, t] = log p(input_ids[b, t+1] | ids[b, :t+1])``.

    ``logits`` is ``[B, T, V]`` (or ``[T, V]``), ``input_ids`` ``[B, T]`` (or ``[T]``); the result
    is ``[B, T-1]`` (or ``[T-1]``), float32, differentiable w.r.t. ``logits``. Computed with
    :func:`selective_log_softmax` one sequence at a time, so the only vocabulary-sized
    temporaries are one sequence's float32 copy of the logits. The trainer does not call this on
    full logits: :func:`codrl.train.scoring.score_tokens` scores from hidden states, chunk by chunk.
    To mask it, drop the first column of a ``[B, T]`` loss mask (``loss_mask[:, 1:]``).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if logits.dim() == 2:
        return token_logprobs(logits.unsqueeze(0), input_ids.unsqueeze(0), temperature)[0]
    if logits.shape[:2] != input_ids.shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not match ids {tuple(input_ids.shape)}")
    rows = [selective_log_softmax(row_logits, row_ids, temperature)
            for row_logits, row_ids in zip(logits[:, :-1], input_ids[:, 1:], strict=True)]
    if not rows:
        return logits.new_zeros((0, max(logits.shape[1] - 1, 0)), dtype=torch.float32)
    return torch.stack(rows)


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, estimator: KLEstimator = "k3") -> Tensor:
    """Per-token estimate of ``KL(policy || reference)`` from sampled-token logprobs.

    With ``d = logprobs - ref_logprobs``:

    * ``k1 = d``
    * ``k2 = 0.5 * d^2``
    * ``k3 = exp(-d) - (-d) - 1`` (= ``exp(ref - lp) - (ref - lp) - 1``; ``-d`` clamped to +-20)
    """
    diff = logprobs - ref_logprobs
    if estimator == "k1":
        return diff
    if estimator == "k2":
        return 0.5 * diff.square()
    if estimator == "k3":
        log_ratio = (-diff).clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
        return torch.exp(log_ratio) - log_ratio - 1.0
    raise ValueError(f"unknown KL estimator {estimator!r}; allowed: 'k1', 'k2', 'k3'")


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """``sum(values * mask) / sum(mask)``; 0 when the mask is empty."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def trust_region_violation(ratio: Tensor, advantages: Tensor, cfg: PolicyLossConfig) -> Tensor:
    """Bool mask of tokens pushed past the trust region in their advantage's direction.

    ``(A > 0 and ratio > 1 + eps_high) or (A < 0 and ratio < 1 - eps_low)``: the tokens PPO-clip
    gives no gradient and REC one-side drops.
    """
    too_high = (advantages > 0) & (ratio > 1.0 + cfg.clip_eps_high)
    too_low = (advantages < 0) & (ratio < 1.0 - cfg.clip_eps_low)
    return too_high | too_low


def policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    cfg: PolicyLossConfig | None = None,
    num_tokens: float | Tensor | None = None,
    ref_logprobs: Tensor | None = None,
    token_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Token-mean policy loss and its metrics.

    ``loss = (sum_t mask_t * (w_t * pg_t + kl_coef * kl_t)) / num_tokens`` with ``pg_t`` the
    variant's per-token loss (module docstring), ``w_t`` the detached ``token_weights`` of an
    off-policy correction (:mod:`codrl.algo.offpolicy`; none: 1), ``kl_t = kl_penalty(logprobs,
    ref_logprobs)`` and ``num_tokens`` defaulting to ``mask.sum()`` (clamped to at least 1).

    Metrics (over this call's masked tokens): ``pg_loss`` (token mean), ``clip_frac`` (share of
    tokens in :func:`trust_region_violation`), ``approx_kl`` (mean k3 of old vs new policy),
    ``ratio_mean``, ``num_tokens``, and ``kl`` when a reference is used.
    """
    cfg = cfg or PolicyLossConfig()
    if advantages.dim() == logprobs.dim() - 1:
        advantages = advantages.unsqueeze(-1)
    advantages = advantages.to(logprobs.dtype).expand_as(logprobs)
    old_logprobs = old_logprobs.to(logprobs.dtype)
    weights = mask.to(logprobs.dtype)
    if num_tokens is None:
        denom = weights.sum().clamp(min=1.0)
    else:
        denom = torch.as_tensor(num_tokens, dtype=weights.dtype, device=weights.device)
        denom = denom.clamp(min=1.0)

    ratio = torch.exp(logprobs - old_logprobs)
    violated = trust_region_violation(ratio.detach(), advantages, cfg)
    if cfg.variant == "ppo_clip":
        clipped = ratio.clamp(1.0 - cfg.clip_eps_low, 1.0 + cfg.clip_eps_high)
        per_token = -torch.minimum(ratio * advantages, clipped * advantages)
    elif cfg.variant in ("rec_oneside_nois", "opd"):
        keep = (~violated).to(logprobs.dtype)
        per_token = -advantages * logprobs * keep
    else:  # pragma: no cover - guarded by the config's Literal
        raise ValueError(f"unknown policy loss variant {cfg.variant!r}")
    if token_weights is not None:
        per_token = per_token * token_weights.detach().to(per_token.dtype)

    loss = (per_token * weights).sum() / denom
    metrics: dict[str, float] = {}
    if cfg.kl_coef > 0:
        if ref_logprobs is None:
            raise ValueError("kl_coef > 0 needs ref_logprobs")
        kl = kl_penalty(logprobs, ref_logprobs.to(logprobs.dtype), cfg.kl_estimator)
        loss = loss + cfg.kl_coef * (kl * weights).sum() / denom
        metrics["kl"] = masked_mean(kl.detach(), weights).item()

    with torch.no_grad():
        metrics.update(
            {
                "pg_loss": masked_mean(per_token, weights).item(),
                "clip_frac": masked_mean(violated.to(weights.dtype), weights).item(),
                "approx_kl": masked_mean(kl_penalty(logprobs, old_logprobs, "k3"), weights).item(),
                "ratio_mean": masked_mean(ratio, weights).item(),
                "num_tokens": weights.sum().item(),
            }
        )
    return loss, metrics


@torch.no_grad()
def entropy_from_logits(logits: Tensor, mask: Tensor) -> Tensor:
    """Masked mean entropy ``H_t = -sum_v p_t(v) * log p_t(v)`` of the next-token distributions.

    ``logits`` is ``[B, T, V]``, ``mask`` ``[B, T]`` aligned with the logits positions. A logged
    metric: no gradient; entropies are computed one sequence at a time and only at masked
    positions, in float32. Returns a 0-dim tensor (0 for an empty mask).
    """
    if logits.dim() == 2:
        logits, mask = logits.unsqueeze(0), mask.unsqueeze(0)
    total = torch.zeros((), dtype=torch.float32, device=logits.device)
    count = 0
    for row_logits, row_mask in zip(logits, mask.bool(), strict=True):
        selected = row_logits[row_mask]
        if selected.numel() == 0:
            continue
        total += token_entropy(selected).sum()
        count += selected.shape[0]
    return total / max(count, 1)
