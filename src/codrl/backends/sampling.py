"""Next-token sampling with exact logprobs, reproducible per request.

Every request samples from its own random stream (a ``torch.Generator`` seeded per request), so the
tokens a request gets do not depend on which other requests share its batch, on their order, or on
whether its prompt came from a KV cache. Sampling is by inverse CDF on one uniform draw per step.

The recorded logprob is ``log_softmax(logits / temperature)`` of the sampled token: the top-p
truncation restricts the support but is not renormalised in the recorded value, matching how the
trainer scores tokens. Greedy decoding (temperature 0) records the temperature-1 logprob.
"""

from __future__ import annotations

import torch


def request_generator(seed: int) -> torch.Generator:
    """The CPU random stream of one request."""
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def sample_next(logits: torch.Tensor, temperature: float, top_p: float,
                generators: list[torch.Generator]) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one token per row of ``logits`` ([rows, vocab]); return (tokens, logprobs), both [rows].

    Row ``r`` draws one uniform number from ``generators[r]``.
    """
    logits = logits.float()
    if temperature <= 0:
        logp = torch.log_softmax(logits, dim=-1)
        tokens = logp.argmax(dim=-1)
        return tokens, logp.gather(1, tokens[:, None]).squeeze(1)
    logp = torch.log_softmax(logits / temperature, dim=-1)
    u = torch.cat([torch.rand(1, generator=g) for g in generators]).to(logits.device, torch.float32)
    probs = logp.exp()
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        before = sorted_p.cumsum(dim=-1) - sorted_p  # mass of the more likely tokens
        kept = torch.where(before < top_p, sorted_p, torch.zeros_like(sorted_p))
    else:
        kept, order = probs, None
    cdf = kept.cumsum(dim=-1)
    target = (u.clamp_min(1e-12) * cdf[:, -1]).unsqueeze(1)
    pos = torch.searchsorted(cdf, target).clamp_max(cdf.shape[1] - 1)
    tokens = (order.gather(1, pos) if order is not None else pos).squeeze(1)
    return tokens, logp.gather(1, tokens[:, None]).squeeze(1)
