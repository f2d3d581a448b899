"""KV-cache reuse for the transformers backend: a prefix store and a preallocated batch cache.

Lifecycle rollouts repeat most of their prompt tokens: every request of a pack starts with the same
system prompt, turn t+1 of a solve episode is turn t's prompt plus its reply plus feedback, and the
repeats of a pack share their first prompt exactly. :class:`PrefixStore` keeps the key/value states
of sequences already computed and serves the longest cached prefix of a new prompt, so only the new
tokens are prefilled.

Exactness: in a causal decoder the key/value states of a token depend only on the tokens before it
and on its position, so the states of a prefix are the same whatever follows. Reuse is decided by
comparing token ids (never text), so a re-tokenized reply that differs from the sampled tokens just
shortens the reused prefix.

Memory: entries are whole sequences; a session (one live lifecycle) holds at most one entry, which
each new request of the session replaces and :meth:`PrefixStore.release` frees. Everything else is
evicted least recently used once the store exceeds its byte budget.

:class:`BatchKV` is the cache of one batched forward: a single preallocated tensor per batch, written
in place (transformers' default cache concatenates, copying the whole cache every decode step).
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers.cache_utils import DynamicCache, DynamicLayer


@dataclass(eq=False)
class _Entry:
    ids: np.ndarray  # int64 token ids of the cached sequence
    kv: torch.Tensor  # [layers, 2, kv_heads, len, head_dim]
    session: str | None
    last_used: int


@dataclass
class StoreStats:
    """Counters of a :class:`PrefixStore` (tokens served from cache, evictions)."""

    lookups: int = 0
    hit_tokens: int = 0
    evictions: int = 0
    peak_bytes: int = 0


def common_prefix(a: np.ndarray | Sequence[int], b: np.ndarray | Sequence[int]) -> int:
    """Length of the longest common prefix of two token sequences (arrays or lists of ids)."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    neq = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(neq[0]) if len(neq) else n


def cache_argument(model: Any) -> str:
    """Name of the forward argument taking a KV cache (``cache`` in recent transformers, else
    ``past_key_values``), looked up on the model under any peft wrapper."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    params = inspect.signature(type(base).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


class PrefixStore:
    """Cached key/value states of token sequences, looked up by longest common prefix.

    ``budget_bytes`` bounds the memory of all entries together (0 disables the store: nothing is
    kept, every lookup misses).
    """

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self._entries: list[_Entry] = []
        self._clock = itertools.count()
        self.stats = StoreStats()

    @property
    def enabled(self) -> bool:
        return self.budget_bytes > 0

    @property
    def nbytes(self) -> int:
        return sum(e.kv.nbytes for e in self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, ids: np.ndarray, limit: int) -> tuple[int, torch.Tensor | None]:
        """Longest cached prefix of ``ids`` (at most ``limit`` tokens) and a view of its states."""
        self.stats.lookups += 1
        best, best_entry = 0, None
        for e in self._entries:
            n = common_prefix(e.ids, ids)
            if n > best:
                best, best_entry = n, e
        best = min(best, limit)
        if best_entry is None or best == 0:
            return 0, None
        best_entry.last_used = next(self._clock)
        self.stats.hit_tokens += best
        return best, best_entry.kv[:, :, :, :best]

    def covered(self, ids: np.ndarray) -> int:
        """How many leading tokens of ``ids`` are cached (no bookkeeping)."""
        return max((common_prefix(e.ids, ids) for e in self._entries), default=0)

    def put(self, ids: np.ndarray, kv: torch.Tensor, session: str | None = None) -> None:
        """Keep the states ``kv`` of sequence ``ids``; a session's previous entry is replaced."""
        if not self.enabled or len(ids) == 0:
            return
        if session is not None:
            self.release(session)
        else:
            for e in self._entries:  # already covered by a cached sequence: keep that one fresh
                if common_prefix(e.ids, ids) == len(ids):
                    e.last_used = next(self._clock)
                    return
        self._entries.append(_Entry(np.asarray(ids, dtype=np.int64), kv, session, next(self._clock)))
        self._evict()

    def release(self, session: str) -> None:
        """Free the entry of ``session`` (its lifecycle is over)."""
        self._entries = [e for e in self._entries if e.session != session]

    def clear(self) -> None:
        """Drop everything (e.g. after the weights changed: cached states would be stale)."""
        self._entries.clear()

    def _evict(self) -> None:
        total = self.nbytes
        self.stats.peak_bytes = max(self.stats.peak_bytes, total)
        while total > self.budget_bytes and self._entries:
            victim = min(self._entries, key=lambda e: e.last_used)
            self._entries.remove(victim)
            total -= victim.kv.nbytes
            self.stats.evictions += 1


def shared_prefixes(seqs: list[np.ndarray], store: PrefixStore, min_tokens: int,
                    keep_last: bool = True) -> list[np.ndarray]:
    """Prefixes that several of ``seqs`` share beyond what ``store`` already holds.

    Computing such a prefix once and caching it serves every sequence that starts with it (the
    system prompt in a batch of fresh lifecycles, or the whole first prompt of a pack's repeats).
    A prefix is proposed only when it adds at least ``min_tokens`` cached tokens. With ``keep_last``
    it never covers a sequence's last token (that one must be computed to get the next-token logits).
    """
    if len(seqs) < 2:
        return []
    order = sorted(range(len(seqs)), key=lambda i: tuple(seqs[i].tolist()))
    best = [0] * len(seqs)
    for a, b in itertools.pairwise(order):  # in sorted order a sequence's best partner is a neighbour
        n = common_prefix(seqs[a], seqs[b])
        best[a], best[b] = max(best[a], n), max(best[b], n)
    out: dict[tuple[int, ...], np.ndarray] = {}
    for seq, n in zip(seqs, best, strict=True):
        n = min(n, len(seq) - 1) if keep_last else n
        if n - store.covered(seq[:n]) >= min_tokens:
            out.setdefault(tuple(seq[:n].tolist()), seq[:n])
    return list(out.values())


class _BufferLayer(DynamicLayer):
    """One decoder layer's view into a :class:`BatchKV` buffer, written in place."""

    def __init__(self, owner: BatchKV, index: int) -> None:
        super().__init__()
        self.owner, self.index = owner, index
        self.length = owner.length
        self.is_initialized = True
        self._views()

    def _views(self) -> None:
        buf = self.owner.buf
        self.keys = buf[self.index, 0, :, :, : self.length]
        self.values = buf[self.index, 1, :, :, : self.length]
        self.device = buf.device

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        pass

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
               ) -> tuple[torch.Tensor, torch.Tensor]:
        n = key_states.shape[-2]
        buf = self.owner.buf
        if self.length + n > buf.shape[4]:
            raise RuntimeError(f"KV buffer full: {self.length} + {n} > {buf.shape[4]}")
        buf[self.index, 0, :, :, self.length: self.length + n] = key_states
        buf[self.index, 1, :, :, self.length: self.length + n] = value_states
        self.length += n
        self._views()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length


@dataclass
class BatchKV:
    """Preallocated key/value states of a batch: ``buf`` is [layers, 2, batch, kv_heads, capacity, head_dim].

    Columns ``[0, length)`` are filled; each row's own tokens are a contiguous or masked subset of
    them (rows are left-padded). :meth:`cache` wraps the buffer for transformers forward passes.
    The layers point to this object and not the other way round: no reference cycle keeps a
    finished batch's buffer alive until the garbage collector runs.
    """

    buf: torch.Tensor
    length: int = 0

    @classmethod
    def allocate(cls, n_layers: int, batch: int, kv_heads: int, capacity: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device) -> BatchKV:
        buf = torch.zeros(n_layers, 2, batch, kv_heads, capacity, head_dim, dtype=dtype, device=device)
        return cls(buf)

    def cache(self) -> DynamicCache:
        """A transformers cache whose layers write into this buffer from column ``length`` on."""
        cache = DynamicCache()
        cache.layers = [_BufferLayer(self, i) for i in range(self.buf.shape[0])]
        cache.layer_class_to_replicate = None
        return cache

    def sync_length(self, cache: DynamicCache) -> None:
        """Take the filled length from ``cache``'s layers after a forward pass."""
        self.length = cache.layers[0].length


def model_kv_shape(model: Any) -> tuple[int, int, int]:
    """(layers, kv_heads, head_dim) of a transformers decoder, from its config."""
    cfg = model.config
    cfg = getattr(cfg, "text_config", None) or cfg
    heads = cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    return cfg.num_hidden_layers, kv_heads, head_dim
