"""On-policy distillation: the per-token reverse-KL term against a teacher, and its metrics.

For a token ``y_t`` the student sampled, ``d_t = log p_student(y_t) - log p_teacher(y_t)`` is a
one-sample estimate of the reverse KL ``KL(student || teacher)`` at that position. The term
enters the policy loss as a per-token advantage, negated and detached (docs/distillation.md):

* ``loss.variant: opd``: ``A_t = -d_t`` (the RL advantage is not used);
* any other variant with ``loss.opd_coef > 0`` (the mixed form): ``A_t = A_rl - opd_coef * d_t``.

The variant's surrogate then applies as for any advantage (``opd`` uses the REC one-side one), so
the gradient of ``-A_t * log p_student(y_t)`` is ``d_t * grad log p_student(y_t)``: a step down
the per-token reverse KL. ``d_t`` uses the student's logprobs of the pass being trained, so with
teacher == student it is zero and so is the gradient.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from codrl.algo.losses import PolicyLossConfig


@torch.no_grad()
def reverse_kl_tokens(logprobs: Tensor, teacher_logprobs: Tensor) -> Tensor:
    """``d_t = log p_student - log p_teacher`` per token (``[B, T]``, detached)."""
    return logprobs.detach() - teacher_logprobs.to(logprobs.dtype)


def distill_advantages(advantages: Tensor, logprobs: Tensor, teacher_logprobs: Tensor,
                       cfg: PolicyLossConfig) -> Tensor:
    """Per-token advantages ``[B, T]`` with the distillation term (module docstring).

    ``advantages`` are the RL advantages, ``[B]`` or ``[B, T]``; ``logprobs`` the student's of the
    trained pass and ``teacher_logprobs`` the teacher's of the same tokens, ``[B, T]``.
    """
    term = -reverse_kl_tokens(logprobs, teacher_logprobs)
    if cfg.variant == "opd":
        return term
    rl = advantages.unsqueeze(-1) if advantages.dim() == logprobs.dim() - 1 else advantages
    return rl.to(term.dtype) + cfg.opd_coef * term


@torch.no_grad()
def add_kl_sums(sums: dict[str, float], kl: Tensor, mask: Tensor, positions: Tensor, envs: Sequence[str]) -> None:
    """Add one micro-batch's token counts and ``d_t`` sums to ``sums``, per pack position
    (``pos<p>/...``) and per environment and position (``<env>/pos<p>/...``).

    ``kl`` and ``mask`` are ``[B, T]``, ``positions`` ``[B]``, ``envs`` one name per row.
    """
    on = mask.bool()
    for r, env in enumerate(envs):
        p = int(positions[r])
        n, total = float(on[r].sum()), float(kl[r][on[r]].sum())
        for key in (f"pos{p}", f"{env}/pos{p}"):
            sums[f"{key}/tokens"] = sums.get(f"{key}/tokens", 0.0) + n
            sums[f"{key}/kl"] = sums.get(f"{key}/kl", 0.0) + total


def kl_metrics(sums: dict[str, float], prefix: str = "opd/") -> dict[str, float]:
    """``<prefix>pos<p>/kl`` and ``<prefix><env>/pos<p>/kl``: the mean student-teacher ``d_t`` over
    the sampled tokens, from :func:`add_kl_sums`' sums."""
    return {f"{prefix}{key.removesuffix('/tokens')}/kl": sums[key.removesuffix("/tokens") + "/kl"] / n
            for key, n in sums.items() if key.endswith("/tokens") and n > 0}
