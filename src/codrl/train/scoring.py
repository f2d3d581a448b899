"""Score sampled tokens under a causal LM without materialising ``[B, T, V]`` logits.

A transformers causal LM returns float32 logits for every position: for a 2,048-token micro-batch
of a 49,152-token vocabulary that is 400 MB, and its log-softmax, gradient and entropy each cost as
much again. The policy loss only needs ``log p(token)`` at the model's own sampled tokens, so
:func:`score_tokens` instead

1. runs the model body (``model.get_decoder()``, LoRA layers included) to the last hidden states
   ``[B, T, H]``;
2. keeps the hidden states of the scored positions only (``mask``), ``[N, H]``;
3. applies the output head (``model.get_output_embeddings()``, final logit softcapping included)
   ``chunk_size`` positions at a time, and scores each chunk with
   :func:`~codrl.algo.losses.selective_log_softmax`:
   ``logp_t = logit_t[target] / T - logsumexp(logit_t / T)``.

With gradients on, each chunk runs under :func:`torch.utils.checkpoint.checkpoint`: backward
recomputes that chunk's logits instead of keeping them, so at most a few ``[chunk_size, V]``
float32 tensors are alive at once. The entropy metric comes from the same chunk logits, under
``no_grad``. The numbers are those of the model's own forward (same ops on the same inputs, only
grouped differently); the first call per model checks that on a few tokens and falls back to the
model's full logits if its forward does something else after the head (e.g. a logit scale).
"""

from __future__ import annotations

import copy
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from codrl.algo.losses import selective_log_softmax, token_entropy
from codrl.backends.kv_cache import cache_argument
from codrl.train.batching import PrefixNode

#: Positions per output-head chunk: 256 x 49,152 float32 logits are 50 MB per temporary.
DEFAULT_CHUNK_SIZE = 256

_CHECK_TOKENS = 8  # tokens of the one-time check that head(decoder(x)) equals the model's logits


@dataclass
class TokenScores:
    """Per-token scores aligned with next-token positions (``[B, T-1]``, float32).

    ``logprobs[b, t] = log p(input_ids[b, t+1] | input_ids[b, :t+1])`` at the temperature asked
    for, differentiable; ``entropy`` (when asked for) is the entropy of the model's own next-token
    distribution (temperature 1), detached. Both are 0 at positions that were not scored.
    """

    logprobs: Tensor
    entropy: Tensor | None = None


@dataclass(frozen=True)
class _Head:
    """How to turn last hidden states into the model's logits."""

    decoder: nn.Module
    lm_head: nn.Module
    softcap: float | None


def _config_value(model: nn.Module, name: str) -> Any:
    """``config.<name>``, also looked up in a nested ``text_config`` (multimodal wrappers)."""
    config = getattr(model, "config", None)
    value = getattr(config, name, None)
    if value is None:
        value = getattr(getattr(config, "text_config", None), name, None)
    return value


def _head_logits(head: _Head, hidden: Tensor) -> Tensor:
    """The model's logits for ``hidden`` (``[..., H]`` last hidden states): lm_head, then softcap."""
    logits = head.lm_head(hidden)
    if head.softcap:
        logits = torch.tanh(logits / head.softcap) * head.softcap
    return logits


def _chunk_scores(hidden: Tensor, targets: Tensor, head: _Head | None, temperature: float,
                  with_entropy: bool) -> tuple[Tensor, Tensor | None]:
    """Logprobs (and entropies) of one chunk: ``hidden`` is ``[n, H]`` hidden states, or ``[n, V]``
    logits when ``head`` is None; ``targets`` ``[n]``."""
    logits = hidden if head is None else _head_logits(head, hidden)
    entropy = token_entropy(logits.detach()) if with_entropy else None
    return selective_log_softmax(logits, targets, temperature), entropy


# model -> its head path (None: score the model's full logits). Filled by the one-time check.
_HEADS: weakref.WeakKeyDictionary[nn.Module, _Head | None] = weakref.WeakKeyDictionary()


def _find_head(model: nn.Module, input_ids: Tensor, attention_mask: Tensor | None) -> _Head | None:
    """The decoder/head split of ``model`` if it reproduces the model's logits, else None (once per model).

    The check runs the first few tokens of the first row both ways in eval mode (no dropout) and
    compares the logits. A model whose forward does more than ``lm_head(decoder(x))`` and the
    final logit softcapping (a logit scale, hidden-state scaling, ...) fails it and is scored from
    its full logits instead, with a warning.
    """
    if model in _HEADS:
        return _HEADS[model]
    head: _Head | None = None
    get_decoder = getattr(model, "get_decoder", None)
    get_head = getattr(model, "get_output_embeddings", None)
    decoder = get_decoder() if callable(get_decoder) else None
    lm_head = get_head() if callable(get_head) else None
    if isinstance(decoder, nn.Module) and isinstance(lm_head, nn.Module) and decoder is not model:
        candidate = _Head(decoder, lm_head, _config_value(model, "final_logit_softcapping"))
        ids = input_ids[:1, :_CHECK_TOKENS]
        attn = None if attention_mask is None else attention_mask[:1, :_CHECK_TOKENS]
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                expected = model(input_ids=ids, attention_mask=attn, use_cache=False).logits.float()
                hidden = decoder(input_ids=ids, attention_mask=attn, use_cache=False).last_hidden_state
                got = _head_logits(candidate, hidden).float()
        finally:
            model.train(was_training)
        tol = 1e-4 if hidden.dtype == torch.float32 else 2e-2  # same ops either way: only rounding differs
        scale = float(expected.abs().max().nan_to_num(0.0)) + 1.0
        if got.shape == expected.shape and torch.allclose(got, expected, rtol=tol, atol=tol * scale, equal_nan=True):
            head = candidate
    if head is None:
        warnings.warn(f"{type(model).__name__}: its logits are not lm_head(decoder(x)); scoring tokens from the "
                      "full [B, T, V] logits (correct, but uses more memory)", RuntimeWarning, stacklevel=3)
    _HEADS[model] = head
    return head


def _right_padded(attention_mask: Tensor | None) -> bool:
    """Whether every row of a ``[B, T]`` 0/1 mask is ones then zeros (right padding, or none)."""
    if attention_mask is None:
        return False
    mask = attention_mask.bool()
    return bool((mask[:, 1:] <= mask[:, :-1]).all())


def can_share_prefix(model: nn.Module) -> bool:
    """Whether :func:`score_tokens` may run a shared prefix once for a batch (``prefix_len`` > 0).

    Not under gradient checkpointing: transformers turns the KV cache off there in training mode."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):  # new name first
        if hasattr(type(base), name) or name in vars(base):
            return not bool(getattr(base, name))
    return True


def _fork(cache: Any) -> Any:
    """A cache holding the same key/value tensors as ``cache`` that can grow (or be repeated over
    rows) without changing ``cache``: transformers' cache layers replace their tensors on update."""
    new = copy.copy(cache)
    new.layers = [copy.copy(layer) for layer in cache.layers]
    return new


class HeldPrefixes:
    """Top-level prefix caches held across the micro-batches of one update (one process).

    When a prefix tree's top node (say the system prompt all solve rows share) recurs in several
    micro-batches, it is computed once: :func:`score_tokens` keeps its key/value states, with
    autograd, under the node's tokens, and hands later micro-batches detached copies that collect
    their gradients. :meth:`backward` then runs the held prefixes' backward once, with those
    gradients summed, so the gradients are the same as recomputing the prefix per micro-batch.
    Only for ``keys`` known in advance to recur (:func:`codrl.train.batching.recurring_prefixes`),
    so that no other prefix's activations are held longer than its micro-batch.
    """

    def __init__(self, keys: set[tuple[int, ...]]) -> None:
        self.keys = keys
        self._held: dict[tuple[int, ...], tuple[list[Tensor], Any]] = {}

    def get(self, key: tuple[int, ...], compute: Callable[[], Any]) -> Any:
        """The cache of prefix ``key``: computed by ``compute`` once, then detached copies."""
        if key not in self.keys:
            return compute()
        if key not in self._held:
            cache = compute()
            leaf = _fork(cache)
            graph = []
            for layer in leaf.layers:
                graph += [layer.keys, layer.values]
                layer.keys = layer.keys.detach().requires_grad_(layer.keys.requires_grad)
                layer.values = layer.values.detach().requires_grad_(layer.values.requires_grad)
            self._held[key] = (graph, leaf)
        return _fork(self._held[key][1])

    def backward(self) -> None:
        """Backward of every held prefix with the gradients its copies collected; then forget them."""
        outs, grads = [], []
        for graph, leaf in self._held.values():
            for t, held in zip(graph, (x for layer in leaf.layers for x in (layer.keys, layer.values)), strict=True):
                if held.grad is not None:
                    outs.append(t)
                    grads.append(held.grad)
        self._held.clear()
        if outs:
            torch.autograd.backward(outs, grads)


def _tree_states(fn: nn.Module, input_ids: Tensor, lengths: list[int], plan: PrefixNode, scored: Tensor,
                 logits: bool, held: HeldPrefixes | None = None) -> Tensor:
    """Last hidden states (or logits) of ``fn`` at the scored positions, row-major (``[N, H]``),
    computing each node of the prefix tree ``plan`` once.

    A node's tokens run in one row on top of its parent's KV cache, kept with autograd; each
    batch of rows then runs its own tokens on top of a copy of the cache repeated over its rows.
    Every row's gradient reaches a shared prefix through its own copy, so the gradients are those
    of running every row in full. A top node's cache may come from ``held`` instead.
    """
    kwarg = cache_argument(fn)
    width = scored.shape[1]
    states: list[Tensor] = []
    keys: list[Tensor] = []  # flat index row * width + position of each state, to restore row-major order

    def first(ids: Tensor) -> Any:
        out = fn(input_ids=ids, use_cache=True)
        cache = getattr(out, kwarg, None)
        return out.past_key_values if cache is None else cache  # older transformers: past_key_values

    def visit(node: PrefixNode, cache: Any) -> None:
        if node.end > node.start:
            ids = input_ids[node.row: node.row + 1, node.start: node.end]
            if cache is None and held is not None:
                cache = held.get(tuple(ids[0].tolist()), lambda: first(ids))
            elif cache is None:
                cache = first(ids)
            else:
                cache = _fork(cache)
                fn(input_ids=ids, use_cache=True, **{kwarg: cache})
        for child in node.children:
            visit(child, cache)
        for rows in node.batches:
            stop = max(lengths[r] for r in rows)
            ids = input_ids[rows, node.end: stop]
            if cache is None:
                out = fn(input_ids=ids, use_cache=False)
            else:
                mine = _fork(cache)
                if len(rows) > 1:
                    mine.batch_repeat_interleave(len(rows))
                out = fn(input_ids=ids, use_cache=True, **{kwarg: mine})
            hidden = out.logits if logits else out.last_hidden_state
            sel = scored[rows, node.end: stop]
            hidden = hidden[:, : sel.shape[1]]
            states.append(hidden[sel])
            r, t = sel.nonzero(as_tuple=True)
            keys.append(torch.tensor(rows, device=sel.device)[r] * width + t + node.end)

    visit(plan, None)
    order = torch.argsort(torch.cat(keys))
    return torch.cat(states)[order]


def _check_plan(plan: PrefixNode, input_ids: Tensor, scored: Tensor) -> None:
    """Raise ValueError unless ``plan`` fits the batch: every row once, each node's tokens the same
    in all rows below it, unscored, and followed by at least one token."""
    rows = sorted(plan.rows())
    if rows != list(range(input_ids.shape[0])):
        raise ValueError(f"the prefix plan covers rows {rows}, the batch has {input_ids.shape[0]}")
    for node in plan.walk()[1:]:
        below = node.rows()
        if node.end >= input_ids.shape[1] or bool(scored[below, : node.end].any()):
            raise ValueError(f"prefix [{node.start}, {node.end}): a shared prefix must be unscored and shorter "
                             "than the rows")
        seg = input_ids[below, node.start: node.end]
        if bool((seg != input_ids[node.row, node.start: node.end]).any()):
            raise ValueError(f"prefix [{node.start}, {node.end}): the rows do not share these tokens")


def score_tokens(model: nn.Module, input_ids: Tensor, attention_mask: Tensor | None, mask: Tensor | None = None,
                 temperature: float = 1.0, *, chunk_size: int = DEFAULT_CHUNK_SIZE,
                 with_entropy: bool = False, prefix_len: int = 0, plan: PrefixNode | None = None,
                 held: HeldPrefixes | None = None) -> TokenScores:
    """Logprobs (and optionally entropies) of the next tokens at the positions of ``mask``.

    ``model`` is a causal LM (a transformers ``*ForCausalLM``, possibly peft-wrapped);
    ``input_ids`` and ``attention_mask`` are ``[B, T]``; ``mask`` is ``[B, T-1]`` over next-token
    positions (nonzero = score ``input_ids[b, t+1]``), default all. Returns :class:`TokenScores`
    of shape ``[B, T-1]``: ``token_logprobs(model(...).logits, input_ids, temperature)`` at the
    scored positions (equal up to float rounding) and 0 elsewhere. Differentiable when grad is
    enabled; memory beyond the model body's own activations is a few ``[chunk_size, V]`` float32
    tensors. A right-padded ``attention_mask`` is dropped (see the comment in the body).

    ``plan`` (:func:`codrl.train.batching.prefix_plan`) computes each prefix that several rows
    share once (it must be the same in those rows, unscored, and followed by at least one token in
    each; the rows right-padded or unpadded): the same scores and gradients, with a shared
    prefix's compute paid once instead of once per row. ``prefix_len`` > 0 is the plan with one
    prefix, the first ``prefix_len`` tokens of every row
    (:func:`codrl.train.batching.shared_prefix_len` finds it). ``held`` keeps top prefixes that
    recur in later calls (see :class:`HeldPrefixes`; its :meth:`~HeldPrefixes.backward` must run
    after the last of them).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    targets = input_ids[:, 1:]
    scored = torch.ones_like(targets, dtype=torch.bool) if mask is None else mask[:, : targets.shape[1]].bool()
    head = _find_head(model, input_ids, attention_mask)
    if prefix_len > 0 and plan is None:
        plan = PrefixNode(0, 0, -1, [PrefixNode(0, prefix_len, 0, [], [list(range(input_ids.shape[0]))])], [])
    lengths = [input_ids.shape[1]] * input_ids.shape[0]
    if _right_padded(attention_mask):
        # Causal attention: a real token only sees earlier positions, never the padding at the
        # end of its row, so the mask changes nothing that is scored. Without it, attention takes
        # the fused causal path: no [B, 1, T, T] mask, no key/value copies per query head.
        lengths = attention_mask.sum(1).tolist()
        attention_mask = None
    fn = head.decoder if head is not None else model
    if plan is not None:
        if attention_mask is not None:
            raise ValueError("a prefix plan needs right-padded (or unpadded) rows")
        _check_plan(plan, input_ids, scored)
        # [N, H] hidden states (or [N, V] logits) of the scored positions only, row-major
        states = _tree_states(fn, input_ids, lengths, plan, scored, logits=head is None, held=held)
    else:
        out = fn(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        full = out.logits if head is None else out.last_hidden_state
        states = full[:, :-1][scored]
        del full, out
    picked = targets[scored]
    logprobs, entropies = [], []
    for states_c, targets_c in zip(torch.split(states, chunk_size), torch.split(picked, chunk_size), strict=True):
        if torch.is_grad_enabled():
            lp, ent = checkpoint(_chunk_scores, states_c, targets_c, head, temperature, with_entropy,
                                 use_reentrant=False)
        else:
            lp, ent = _chunk_scores(states_c, targets_c, head, temperature, with_entropy)
        logprobs.append(lp)
        if ent is not None:
            entropies.append(ent)
    zeros = torch.zeros(targets.shape, dtype=torch.float32, device=input_ids.device)
    flat = torch.cat(logprobs) if logprobs else zeros.new_zeros(0)
    entropy = None
    if with_entropy:
        entropy = zeros.masked_scatter(scored, torch.cat(entropies) if entropies else zeros.new_zeros(0))
    return TokenScores(zeros.masked_scatter(scored, flat), entropy)
