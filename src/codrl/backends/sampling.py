"""Next-token sampling with exact logprobs, reproducible per request.

Every request samples from its own random stream (a ``torch.Generator`` seeded per request), so the
tokens a request gets do not depend on which other requests share its batch, on their order, or on
whether its prompt came from a KV cache. Sampling is by inverse CDF on one uniform draw per step.
Rows of one batch may have different temperatures and top-p values.

The recorded logprob is ``log_softmax(logits / temperature)`` of the sampled token: the top-p
truncation restricts the support but is not renormalised in the recorded value, matching how the
trainer scores tokens. Greedy rows (temperature 0) take the argmax, record the temperature-1
logprob and draw nothing from their stream.
"""

from __future__ import annotations

import torch


def request_generator(seed: int) -> torch.Generator:
    """The CPU random stream of one request."""
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def sample_next(logits: torch.Tensor, temperatures: list[float], top_ps: list[float],
                generators: list[torch.Generator]) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one token per row of ``logits`` ([rows, vocab]); return (tokens, logprobs), both [rows].

    Row ``r`` uses ``temperatures[r]`` and ``top_ps[r]`` and, unless greedy, draws one uniform
    number from ``generators[r]``.
    """
    logits = logits.float()
    dev = logits.device
    greedy = [t <= 0 for t in temperatures]
    scale = torch.tensor([1.0 if g else t for g, t in zip(greedy, temperatures, strict=True)], device=dev)
    logp = torch.log_softmax(logits / scale[:, None], dim=-1)
    tokens = logp.argmax(dim=-1)
    full = [r for r, g in enumerate(greedy) if not g and top_ps[r] >= 1.0]
    nucleus = [r for r, g in enumerate(greedy) if not g and top_ps[r] < 1.0]
    # Each row's inverse CDF runs over a fixed token order (vocabulary order, or by probability
    # under top-p), so what a row samples never depends on the other rows of the batch.
    for rows, truncate in ((full, False), (nucleus, True)):
        if not rows:
            continue
        idx = torch.tensor(rows, device=dev)
        probs = logp[idx].exp()
        order = None
        if truncate:
            probs, order = probs.sort(dim=-1, descending=True)
            top_p = torch.tensor([top_ps[r] for r in rows], device=dev)
            before = probs.cumsum(dim=-1) - probs  # mass of the more likely tokens
            probs = torch.where(before < top_p[:, None], probs, torch.zeros_like(probs))
        u = torch.cat([torch.rand(1, generator=generators[r]) for r in rows]).to(dev)
        cdf = probs.cumsum(dim=-1)
        target = (u.clamp_min(1e-12) * cdf[:, -1]).unsqueeze(1)
        pos = torch.searchsorted(cdf, target).clamp_max(cdf.shape[1] - 1)
        tokens[idx] = (order.gather(1, pos) if order is not None else pos).squeeze(1)
    return tokens, logp.gather(1, tokens[:, None]).squeeze(1)
