"""Off-policy correction: which logprobs an update takes as old, and how it reweights tokens that
a sampler other than the trainer drew (docs/method.md, "Off-policy correction").

Three logprobs of a sampled token meet here: the *behaviour* logprob ``mu`` that the sampler
recorded (vLLM, a reduced-precision engine, an agent sampling at its own temperature behind the
proxy, weights a few updates old), the trainer's logprob ``pi_old`` of the same token under the
weights the PPO ratio takes as old (recomputed, no gradient), and the trained logprob. With
``r = exp(pi_old - mu)`` the correction weights each token's loss term by a detached ``w``:

* ``none``: ``w = 1`` (no correction; the update is exactly the uncorrected one);
* ``tis`` (truncated importance sampling): ``w = min(r, cap)``;
* ``mis_token`` (masked, per token): ``w = 1`` where ``1/cap <= r <= cap``, else ``0``;
* ``mis_episode`` (masked, per training row: one episode, or one call of it whose turns do not
  merge): every token of the row gets ``w = 0`` when the row's geometric-mean ratio
  ``exp(mean_t log r_t)`` leaves ``[1/cap, cap]``, else ``w = 1``.

The masks are two-sided: a token the sampler found far likelier than the trainer does is as
suspect as the reverse. Mismatch statistics are kept per pack position as sums (so that ranks and
micro-batches add up) and turned into metrics by :func:`mismatch_metrics`: the mean k3 estimate
of ``KL(sampler || trainer)``, the standard deviation of ``r`` and the share of tokens whose
weight the cap or the mask changed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from codrl.algo.losses import kl_penalty
from codrl.errors import CodrlError

CorrectionMode = Literal["none", "tis", "mis_token", "mis_episode"]
OldLogprobs = Literal["auto", "rollout", "recompute"]

_LOG_RATIO_CLAMP = 20.0  # bounds exp() of a log-ratio in the statistics


class OffPolicyConfig(BaseModel):
    """How the update corrects for a sampler that is not the trainer (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    mode: CorrectionMode = Field("none", description="none | tis (truncated importance sampling) | mis_token "
                                 "(mask tokens whose ratio leaves [1/cap, cap]) | mis_episode (mask whole rows "
                                 "whose geometric-mean ratio leaves it); distributed.stale: correct uses tis "
                                 "when none is set")
    cap: float = Field(2.0, gt=1.0, description="truncation of tis, and bound [1/cap, cap] of the masks")
    target_temperature: float | None = Field(None, gt=0.0, description="temperature of the policy the update "
                                             "trains; null: the sampler's rollout.temperature. Another value "
                                             "makes every rollout off-policy (a sampler at its own temperature)")


@dataclass
class Correction:
    """Per-token importance weights (detached) and where the cap or the mask changed them."""

    weights: Tensor
    acted: Tensor


def correction_mode(cfg: OffPolicyConfig, old_logprobs: OldLogprobs, stale_kept: bool) -> CorrectionMode:
    """The correction an update applies: ``cfg.mode``, or ``tis`` when stale experiences are kept
    for correction (``distributed.stale: correct``) and no mode is set.

    A correction compares the sampler's logprobs with the trainer's own, so it refuses
    ``old_logprobs: rollout`` (which would make both the same).
    """
    mode: CorrectionMode = "tis" if cfg.mode == "none" and stale_kept else cfg.mode
    if mode != "none" and old_logprobs == "rollout":
        raise CodrlError(f"offpolicy.mode {mode!r} needs the trainer's own old logprobs: set old_logprobs to "
                         f"'auto' or 'recompute' (got 'rollout')")
    return mode


def rollout_logprobs_serve_as_old(mode: CorrectionMode, old_logprobs: OldLogprobs, sampler_is_trainer: bool) -> bool:
    """Whether the rollout's logprobs serve as the update's old logprobs (else they are recomputed).

    Never under a correction (the rollout's logprobs are then the behaviour logprobs). Otherwise
    ``old_logprobs`` decides; ``auto`` reuses them when ``sampler_is_trainer``: the rollouts ran the
    trainer's own model code at the temperature it trains.
    """
    if mode != "none":
        return False
    if old_logprobs != "auto":
        return old_logprobs == "rollout"
    return sampler_is_trainer


def recorded_temperature(sampler_temperature: float) -> float:
    """Temperature of the logprobs a sampler records: its own, or 1 for greedy sampling (0)."""
    return sampler_temperature if sampler_temperature > 0 else 1.0


def trainer_temperature(cfg: OffPolicyConfig, sampler_temperature: float) -> float:
    """Temperature of the policy the update trains: ``cfg.target_temperature``, else the one the
    sampler's logprobs are recorded at (:func:`recorded_temperature`)."""
    return cfg.target_temperature or recorded_temperature(sampler_temperature)


def importance_weights(old_logprobs: Tensor, behaviour_logprobs: Tensor, mask: Tensor, mode: CorrectionMode,
                       cap: float) -> Correction:
    """The detached weight of every token of ``[B, T]`` tensors (module docstring; 1 off the mask)."""
    on = mask.bool()
    log_ratio = torch.where(on, old_logprobs.detach() - behaviour_logprobs.detach(), 0.0)
    log_cap = math.log(cap)
    if mode == "none":
        acted = torch.zeros_like(on)
        weights = torch.ones_like(log_ratio)
    elif mode == "tis":
        acted = on & (log_ratio > log_cap)
        weights = log_ratio.clamp(max=log_cap).exp()
    elif mode == "mis_token":
        acted = on & (log_ratio.abs() > log_cap)
        weights = (~acted).to(log_ratio.dtype)
    elif mode == "mis_episode":
        row_mean = log_ratio.sum(-1) / on.sum(-1).clamp(min=1)
        acted = on & (row_mean.abs() > log_cap).unsqueeze(-1)
        weights = (~acted).to(log_ratio.dtype)
    else:
        raise ValueError(f"offpolicy.mode must be one of 'none', 'tis', 'mis_token', 'mis_episode', got {mode!r}")
    return Correction(torch.where(on, weights, 1.0), acted)


def add_mismatch_sums(sums: dict[str, float], old_logprobs: Tensor, behaviour_logprobs: Tensor, mask: Tensor,
                      positions: Tensor, acted: Tensor) -> None:
    """Add one micro-batch's per-position sums (tokens, k3, ratio, ratio squared, acted) to ``sums``.

    ``positions`` is ``[B]``: the pack position of each row.
    """
    on = mask.bool()
    with torch.no_grad():
        kl = kl_penalty(behaviour_logprobs, old_logprobs, "k3")
        ratio = (old_logprobs - behaviour_logprobs).clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP).exp()
        for p in positions.unique().tolist():
            sel = on & (positions == p).unsqueeze(-1)
            for name, values in (("tokens", sel), ("kl", kl), ("ratio", ratio), ("ratio_sq", ratio.square()),
                                 ("acted", acted)):
                key = f"pos{p}/{name}"
                sums[key] = sums.get(key, 0.0) + float(values.float()[sel].sum())


def mismatch_metrics(sums: dict[str, float], prefix: str = "offpolicy/") -> dict[str, float]:
    """Per-position metrics from :func:`add_mismatch_sums`' sums: ``kl`` (mean k3 estimate of
    ``KL(sampler || trainer)``), ``ratio_std`` and ``acted_frac`` (share of tokens capped or masked)."""
    out: dict[str, float] = {}
    for key, n in sums.items():
        if not key.endswith("/tokens") or n <= 0:
            continue
        pos = key.removesuffix("/tokens")
        mean = sums[f"{pos}/ratio"] / n
        out[f"{prefix}{pos}/kl"] = sums[f"{pos}/kl"] / n
        out[f"{prefix}{pos}/ratio_std"] = math.sqrt(max(sums[f"{pos}/ratio_sq"] / n - mean * mean, 0.0))
        out[f"{prefix}{pos}/acted_frac"] = sums[f"{pos}/acted"] / n
    return out
