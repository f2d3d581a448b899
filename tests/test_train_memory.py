"""Memory-lean token scoring (codrl.train.scoring) against the straightforward full-logits computation.

A tiny random Llama-like model: the policy loss, its gradients, the logprobs and the entropy metric
from :func:`score_tokens` (hidden states, output head chunk by chunk, checkpointed) must equal
those from ``model(...).logits`` -> :func:`token_logprobs` -> :func:`policy_loss`, up to float32
rounding (:data:`RTOL`, :data:`ATOL`).
"""

from __future__ import annotations

import sys
import warnings

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from codrl.algo.losses import (
    PolicyLossConfig,
    entropy_from_logits,
    masked_mean,
    policy_loss,
    token_logprobs,
)
from codrl.train.memory import large_frees_to_os, set_mmap_threshold
from codrl.train.scoring import score_tokens

VOCAB = 97  # distinct from every other dimension, so vocabulary-sized tensors are recognisable
#: The lean path multiplies the output head chunk by chunk and sums gradients over chunks: other
#: matmul shapes and reduction orders than one full-logits pass, so float32 results agree to
#: rounding only (and differ with the CPU's kernels and thread count), never bit for bit.
RTOL = 1e-5
ATOL = 1e-6


def tiny_llama(tied: bool = True, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=64, tie_word_embeddings=tied))
    return model.train()


def batch(seed: int = 1) -> dict[str, torch.Tensor]:
    """Three right-padded rows with prompt positions, gaps (environment tokens) and padding unmasked."""
    g = torch.Generator().manual_seed(seed)
    lengths = [13, 9, 16]
    ids = torch.zeros(3, 16, dtype=torch.long)
    attn = torch.zeros(3, 16, dtype=torch.long)
    mask = torch.zeros(3, 15)
    for r, n in enumerate(lengths):
        ids[r, :n] = torch.randint(1, VOCAB, (n,), generator=g)
        attn[r, :n] = 1
        mask[r, 3:n - 1] = 1.0  # next-token positions: trained tokens are ids[r, 4:n]
    mask[0, 6:8] = 0.0  # an environment reply inside a merged multi-turn row
    mask[2, 10] = 0.0
    old = torch.randn(3, 15, generator=g) * 0.1 - 2.0
    adv = torch.tensor([1.0, -0.5, 0.25])
    return {"input_ids": ids, "attention_mask": attn, "mask": mask, "old_logprobs": old, "advantages": adv}


def loss_and_grads(model: nn.Module, b: dict[str, torch.Tensor], temperature: float, lean: bool,
                   cfg: PolicyLossConfig) -> tuple[torch.Tensor, float, list[torch.Tensor]]:
    """(logprobs, loss, grads) from score_tokens (lean) or from the full logits."""
    model.zero_grad(set_to_none=True)
    if lean:
        lp = score_tokens(model, b["input_ids"], b["attention_mask"], b["mask"], temperature, chunk_size=4).logprobs
    else:
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        lp = token_logprobs(logits, b["input_ids"], temperature)
    loss, _ = policy_loss(lp, b["old_logprobs"], b["advantages"], b["mask"], cfg, num_tokens=40)
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    return lp.detach(), float(loss.detach()), grads


def assert_same(model: nn.Module, b: dict[str, torch.Tensor], temperature: float, cfg: PolicyLossConfig) -> None:
    lp_ref, loss_ref, g_ref = loss_and_grads(model, b, temperature, lean=False, cfg=cfg)
    lp_new, loss_new, g_new = loss_and_grads(model, b, temperature, lean=True, cfg=cfg)
    scored = b["mask"].bool()
    assert torch.allclose(lp_new[scored], lp_ref[scored], rtol=RTOL, atol=ATOL)
    assert torch.all(lp_new[~scored] == 0)  # masked out: written as exact zeros
    assert loss_new == pytest.approx(loss_ref, rel=RTOL, abs=ATOL / 10)
    assert g_ref and len(g_new) == len(g_ref)
    for a, r in zip(g_new, g_ref, strict=True):
        assert torch.allclose(a, r, rtol=RTOL, atol=ATOL * float(r.abs().max()) + 1e-9)


@pytest.mark.parametrize("temperature", [1.0, 0.7, 1.6])
@pytest.mark.parametrize("variant", ["rec_oneside_nois", "ppo_clip"])
def test_full_finetune_loss_and_grads_match_full_logits(temperature: float, variant: str) -> None:
    model = tiny_llama(tied=True)
    assert_same(model, batch(), temperature, PolicyLossConfig(variant=variant))


def test_untied_head_loss_and_grads_match_full_logits() -> None:
    model = tiny_llama(tied=False, seed=3)
    assert_same(model, batch(seed=5), 0.8, PolicyLossConfig(variant="ppo_clip"))


@pytest.mark.parametrize("activation_checkpointing", [False, True])
def test_lora_loss_and_grads_match_full_logits(activation_checkpointing: bool) -> None:
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_llama(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                    task_type="CAUSAL_LM"))
    with torch.no_grad():  # non-zero adapters, so the adapted model differs from the base
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.1)
    if activation_checkpointing:  # model.gradient_checkpointing: true (the decoder's layers are checkpointed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            model.gradient_checkpointing_enable()
    model.train()
    assert_same(model, batch(), 0.7, PolicyLossConfig())


def test_entropy_matches_full_logits() -> None:
    model = tiny_llama()
    b = batch()
    with torch.no_grad():
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        expected = entropy_from_logits(logits[:, :-1], b["mask"])
        scores = score_tokens(model, b["input_ids"], b["attention_mask"], b["mask"], 0.5, chunk_size=3,
                              with_entropy=True)
    assert scores.entropy is not None and not scores.entropy.requires_grad
    # the metric is the entropy of the model's own distribution, whatever the sampling temperature
    assert float(masked_mean(scores.entropy, b["mask"])) == pytest.approx(float(expected), rel=RTOL)
    assert torch.all(scores.entropy[~b["mask"].bool()] == 0)
    # with gradients on, the entropy is still detached and the same
    scores = score_tokens(model, b["input_ids"], b["attention_mask"], b["mask"], 0.5, with_entropy=True)
    assert scores.logprobs.requires_grad and scores.entropy is not None and not scores.entropy.requires_grad
    assert float(masked_mean(scores.entropy, b["mask"])) == pytest.approx(float(expected), rel=RTOL)


def test_no_vocabulary_sized_tensor_is_kept_for_backward() -> None:
    model = tiny_llama()
    b = batch()
    saved: list[tuple[int, ...]] = []

    def keep(t: torch.Tensor) -> torch.Tensor:
        saved.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        lp = score_tokens(model, b["input_ids"], b["attention_mask"], b["mask"], 1.0, chunk_size=4).logprobs
    assert saved and not [s for s in saved if s and s[-1] == VOCAB], "logits were kept for backward"
    lp.sum().backward()  # and the checkpointed chunks still give gradients
    assert model.lm_head.weight.grad is not None and model.lm_head.weight.grad.abs().sum() > 0


def test_all_positions_without_mask_and_under_no_grad() -> None:
    model = tiny_llama()
    ids = torch.randint(0, VOCAB, (2, 7))
    attn = torch.ones_like(ids)
    with torch.no_grad():
        expected = token_logprobs(model(input_ids=ids, attention_mask=attn).logits, ids, 1.3)
        got = score_tokens(model, ids, attn, None, 1.3, chunk_size=5).logprobs
    assert torch.allclose(got, expected, rtol=RTOL, atol=ATOL)


def test_final_logit_softcapping_is_applied() -> None:
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    model = Gemma2ForCausalLM(Gemma2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                           head_dim=8, max_position_embeddings=64, final_logit_softcapping=2.0))
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(20.0)  # large logits, so that the cap matters
    b = batch()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the lean path is taken: no fallback warning
        assert_same(model, b, 0.9, PolicyLossConfig())


class ScaledLogits(LlamaForCausalLM):
    """A model whose forward does more than lm_head(decoder(x)): the lean path must not be used."""

    def forward(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        out = super().forward(*args, **kwargs)
        out.logits = out.logits * 0.5
        return out


def test_unknown_logit_transform_falls_back_to_full_logits() -> None:
    torch.manual_seed(0)
    model = ScaledLogits(tiny_llama().config).train()
    with pytest.warns(RuntimeWarning, match="full"):
        assert_same(model, batch(), 1.0, PolicyLossConfig())


def test_left_padding_keeps_the_attention_mask() -> None:
    model = tiny_llama()
    ids = torch.randint(1, VOCAB, (2, 8))
    attn = torch.ones_like(ids)
    attn[1, :3] = 0  # left padding: the mask matters for real tokens
    mask = torch.zeros(2, 7)
    mask[:, 4:] = 1
    with torch.no_grad():
        expected = token_logprobs(model(input_ids=ids, attention_mask=attn).logits, ids)
        got = score_tokens(model, ids, attn, mask).logprobs
    assert torch.allclose(got[:, 4:], expected[:, 4:], rtol=RTOL, atol=ATOL)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only")
def test_large_frees_to_os_tunes_glibc() -> None:
    with large_frees_to_os() as tuned:
        assert tuned == set_mmap_threshold(128 * 1024)
        x = torch.ones(1 << 20)  # 4 MiB: served by mmap inside the block
    assert float(x.sum()) == float(1 << 20)
