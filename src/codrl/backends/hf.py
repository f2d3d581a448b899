"""Local transformers backend: batched sampling with exact token ids and logprobs, and KV-cache reuse.

The engine is a plain decode loop over a transformers causal LM (``model(...)`` forward passes, no
``model.generate``), built for lifecycle rollouts, where most prompt tokens were seen before:

1. **Prefix reuse.** Each prompt starts from the longest prefix whose key/value states are cached
   (:class:`~codrl.backends.kv_cache.PrefixStore`): the same lifecycle's previous call (prompt and
   reply), or a prefix that several requests share (the system prompt; a pack's repeats share their
   whole first prompt), computed once per batch. Only the rest is prefilled.
2. **Length-grouped prefill.** Uncached parts are prefilled in chunks of similar length, so little
   compute goes to padding.
3. **Continuous batching.** All rows decode together in one preallocated cache; a finished
   request's follow-ups (``serve``) join the running batch, and finished rows are dropped, instead
   of every row waiting for, or being computed until, the longest reply of a round.

Sampling is reproducible per request (:mod:`codrl.backends.sampling`): a request's tokens do not
depend on its batch or on the cache, and the logprob of every sampled token is recorded under the
sampling distribution (temperature applied; top-p not renormalised, matching the trainer).

Cached states are only valid for the weights that computed them: the store is cleared whenever a
parameter of the model changes (detected from torch's in-place version counters), so in-place
training updates never serve stale states.
"""

from __future__ import annotations

import contextlib
import warnings
from collections import deque
from collections.abc import Callable, Hashable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from codrl.backends.base import (
    Backend,
    GenRequest,
    GenResult,
    SamplingParams,
    end_of_sequence_ids,
    overflow_result,
)
from codrl.backends.chat import completes_stop, encode_chat_prompt
from codrl.backends.kv_cache import BatchKV, PrefixStore, cache_argument, model_kv_shape, shared_prefixes
from codrl.backends.sampling import request_generator, sample_next
from codrl.errors import CodrlError

#: A shared prefix is cached for a batch only when it saves at least this many tokens.
MIN_SHARED_TOKENS = 16
#: Drop finished rows from the decode batch once this fraction of its rows has finished.
COMPACT_FRACTION = 0.25
#: Waiting requests join the decode batch once they number this fraction of its running rows.
ADMIT_FRACTION = 0.25
#: A prefill chunk only takes rows whose uncached part is at least this fraction of its longest.
PREFILL_FILL = 0.75


@dataclass
class _Row:
    """One request in the engine: its prompt, cached prefix and sampled completion."""

    key: Hashable  # the caller's key of this request
    prompt: np.ndarray
    generator: torch.Generator
    params: SamplingParams = field(default_factory=SamplingParams)
    session: str | None = None
    cached: int = 0  # prompt tokens served from the store
    cached_kv: torch.Tensor | None = None  # [layers, 2, kv_heads, cached, head_dim]
    new_kv: torch.Tensor | None = None  # states of the prefilled rest of the prompt
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish: str = ""
    offset: int = 0  # first buffer column of this row in the decode batch


@dataclass
class _Batch:
    """The running decode batch: its rows, their cache, attention mask and next positions."""

    rows: list[_Row]
    kv: BatchKV
    cache: Any
    mask: torch.Tensor
    pos: torch.Tensor




def model_context_window(model: Any, tokenizer: Any = None) -> int | None:
    """A transformers model's context window: its config's ``max_position_embeddings`` (the text
    config's for multimodal models), else the tokenizer's ``model_max_length`` when that is a real
    limit (tokenizers without one report a huge placeholder); None when neither says."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    cfg = getattr(base, "config", None)
    cfg = getattr(cfg, "text_config", None) or cfg
    n = getattr(cfg, "max_position_embeddings", None)
    if isinstance(n, int) and n > 0:
        return n
    n = getattr(tokenizer, "model_max_length", None)
    return n if isinstance(n, int) and 0 < n < 10_000_000 else None

@contextlib.contextmanager
def quiet_peft() -> Iterator[None]:
    """Around peft's own model wrapping: peft reads the base model's ``is_gradient_checkpointing``,
    which recent transformers deprecate with a FutureWarning on every run. The warning is about
    peft's call, not the caller's, so only that one is silenced, and only here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*`?is_gradient_checkpointing`? is deprecated", category=FutureWarning)
        yield


class HFBackend(Backend):
    """A transformers causal LM (optionally wrapped by peft) used in-process.

    The trainer updates ``self.model`` in place, so the next rollout samples from the new weights
    with no copy or sync step (cached key/value states of the old weights are dropped).

    ``kv_cache_mb`` bounds the memory kept for prefix reuse (0 turns reuse off: every prompt is
    prefilled in full); ``prefill_tokens`` bounds the padded tokens of one prefill forward pass;
    ``chat_template_kwargs`` go to every ``apply_chat_template`` call (e.g. ``enable_thinking``).
    """

    token_exact = True

    def __init__(self, model: Any, tokenizer: Any, max_batch_size: int = 32, kv_cache_mb: float = 1024,
                 prefill_tokens: int = 4096, chat_template_kwargs: Mapping[str, Any] | None = None) -> None:
        super().__init__(chat_template_kwargs)
        self.model = model
        self.tokenizer = tokenizer
        self.context_window = model_context_window(model, tokenizer)
        self.max_batch_size = max_batch_size
        self.prefill_tokens = prefill_tokens
        self.store = PrefixStore(int(kv_cache_mb * 2**20))
        self._weights_key: int | None = None
        self.eos_ids = end_of_sequence_ids(
            tokenizer, getattr(getattr(model, "generation_config", None), "eos_token_id", None))
        self._eos = frozenset(self.eos_ids)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]
        cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        if "sliding_attention" in (getattr(cfg, "layer_types", None) or []):
            raise CodrlError(f"{type(model).__name__} uses sliding-window attention, which the transformers "
                             "backend does not support; serve it through an OpenAI-compatible server (--endpoint)")
        self.kv_shape = model_kv_shape(model)
        self._cache_kwarg = cache_argument(model)

    @classmethod
    def from_pretrained(cls, model: str | None = None, *, device: str = "cpu", dtype: str = "float32",
                        max_batch_size: int = 32, kv_cache_mb: float = 1024,
                        chat_template_kwargs: Mapping[str, Any] | None = None) -> HFBackend:
        """Load a model folder (or the embedded default when ``model`` is None).

        A LoRA checkpoint's ``model/`` folder (a peft adapter: ``adapter_config.json``, no
        ``config.json``) is loaded onto its base model and merged, so trained LoRA checkpoints
        evaluate like full ones.
        """
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from codrl.backends.embedded import is_adapter_dir, resolve_model_path

        try:
            if model is not None and is_adapter_dir(model):
                from peft import PeftConfig, PeftModel

                base = PeftConfig.from_pretrained(model).base_model_name_or_path
                base_path = resolve_model_path(base)
                tok = AutoTokenizer.from_pretrained(model)
                lm = AutoModelForCausalLM.from_pretrained(base_path, dtype=getattr(torch, dtype))
                with quiet_peft():
                    lm = PeftModel.from_pretrained(lm, model).merge_and_unload()
            else:
                path = resolve_model_path(model)
                tok = AutoTokenizer.from_pretrained(path)
                lm = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
        except OSError as e:
            raise CodrlError(f"cannot load model {model!r}: {str(e).splitlines()[0]}") from None
        lm.to(device)
        lm.eval()
        return cls(lm, tok, max_batch_size=max_batch_size, kv_cache_mb=kv_cache_mb,
                   chat_template_kwargs=chat_template_kwargs)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    # -- prompts ---------------------------------------------------------------------------
    def encode_prompt(self, request: GenRequest) -> list[int]:
        """Token ids of the chat prompt with the generation prompt and the reply prefix (the request's
        own ``prompt_ids`` when it carries them)."""
        return encode_chat_prompt(self.tokenizer, request, self.chat_template_kwargs)

    # -- cache management ------------------------------------------------------------------
    def release(self, session: str) -> None:
        """Free the cached states of ``session`` (a finished lifecycle)."""
        self.store.release(session)

    def _check_weights(self) -> None:
        """Clear the prefix store if any parameter changed since it was filled."""
        key = hash(tuple((id(p), p._version) for p in self.model.parameters()))
        if key != self._weights_key:
            self.store.clear()
            self._weights_key = key

    # -- generation ------------------------------------------------------------------------
    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        results: dict[Hashable, GenResult] = {}

        def collect(key: Hashable, result: GenResult) -> dict[Hashable, GenRequest]:
            results[key] = result
            return {}

        self.serve(dict(enumerate(requests)), collect)
        return [results[i] for i in range(len(requests))]

    def serve(self, pending: dict[Hashable, GenRequest],
              on_result: Callable[[Hashable, GenResult], dict[Hashable, GenRequest]]) -> None:
        """Continuous batching: requests join the decode batch as others finish.

        A finished request's follow-ups (``on_result``) wait until enough rows have finished
        (a quarter of the batch) and then join together: their prompts are prefilled (mostly from
        the cache: a follow-up extends the sequence just finished) and the batch cache is rebuilt
        once with the unfinished rows and the new ones.
        """
        self._check_weights()
        was_training = self.model.training
        self.model.eval()
        self.stats.generate_calls += 1
        waiting: deque[_Row] = deque()
        self._enqueue(pending, waiting, on_result)
        batch: _Batch | None = None
        try:
            with torch.inference_mode():
                while True:
                    alive = [r for r in batch.rows if not r.finish] if batch else []
                    room = self.max_batch_size - len(alive)
                    if waiting and room > 0 and len(waiting) >= max(1, ADMIT_FRACTION * len(alive)):
                        new = [waiting.popleft() for _ in range(min(room, len(waiting)))]
                        self._start(new, on_result, waiting)
                        alive += [r for r in new if not r.finish]
                        batch = self._rebuild(alive, batch) if alive else None
                    elif batch and (not alive or len(batch.rows) - len(alive) >= COMPACT_FRACTION * len(batch.rows)):
                        batch = self._rebuild(alive, batch) if alive else None
                    if batch is None:
                        if waiting:
                            continue
                        break
                    self._step(batch, on_result, waiting)
        finally:
            if was_training:
                self.model.train()

    def _enqueue(self, requests: dict[Hashable, GenRequest], waiting: deque[_Row],
                 on_result: Callable[[Hashable, GenResult], dict[Hashable, GenRequest]]) -> None:
        """Encode requests and queue them; one seed per request from the global RNG, in order. A
        request over the context window (:meth:`~codrl.backends.base.Backend.overflows`) is answered
        at once with an ``overflow`` result, never sampled, and what it triggers is queued in turn."""
        if not requests:
            return
        seeds = torch.randint(0, 2**62, (len(requests),)).tolist()
        for (key, req), seed in zip(requests.items(), seeds, strict=True):
            prompt = np.asarray(self.encode_prompt(req), dtype=np.int64)
            if self.overflows(len(prompt), req):
                self._enqueue(on_result(key, overflow_result()), waiting, on_result)
                continue
            waiting.append(_Row(key, prompt, request_generator(seed if req.seed is None else req.seed), req.sampling,
                                req.session))
            self.stats.requests += 1

    def _result(self, row: _Row) -> GenResult:
        self.stats.prompt_tokens += len(row.prompt)
        self.stats.completion_tokens += len(row.tokens)
        text = self.tokenizer.decode(row.tokens, skip_special_tokens=True)
        return GenResult(text=text, prompt_ids=row.prompt.tolist(), completion_ids=list(row.tokens),
                         logprobs=list(row.logprobs), finish_reason=row.finish)

    def _start(self, rows: list[_Row], on_result: Callable[[Hashable, GenResult], dict[Hashable, GenRequest]],
               waiting: deque[_Row]) -> None:
        """Prefill new rows (cached prefixes first) and sample their first token."""
        if self.store.enabled:
            self._cache_shared([r.prompt for r in rows])
            for r in rows:
                r.cached, r.cached_kv = self.store.lookup(r.prompt, len(r.prompt) - 1)
            self.stats.cached_tokens += sum(r.cached for r in rows)
        logits = self._prefill(rows)
        self._sample(rows, logits, on_result, waiting, batch=None)

    def _sample(self, rows: list[_Row], logits: torch.Tensor,
                on_result: Callable[[Hashable, GenResult], dict[Hashable, GenRequest]], waiting: deque[_Row],
                batch: _Batch | None) -> None:
        """Sample the next token of every unfinished row; finish rows that end, queue their follow-ups."""
        tokens, lps = sample_next(logits, [r.params.temperature for r in rows], [r.params.top_p for r in rows],
                                  [r.generator for r in rows])
        for b, (r, t, lp) in enumerate(zip(rows, tokens.tolist(), lps.tolist(), strict=True)):
            if r.finish:
                continue
            r.tokens.append(t)
            r.logprobs.append(lp)
            if t in self._eos or (r.params.stop and self._hit_stop(r.tokens, r.params.stop)):
                r.finish = "stop"
            elif len(r.tokens) >= r.params.max_new_tokens:
                r.finish = "length"
            if r.finish:
                self._keep(r, batch, b)
                self._enqueue(on_result(r.key, self._result(r)), waiting, on_result)

    def _cache_shared(self, prompts: list[np.ndarray], depth: int = 0) -> None:
        """Compute and store prefixes shared by several prompts (shortest first, recursively)."""
        shared = shared_prefixes(prompts, self.store, MIN_SHARED_TOKENS, keep_last=depth == 0)
        if not shared or depth > 8:
            return
        self._cache_shared(shared, depth + 1)
        rows = [_Row(-1, p, torch.Generator()) for p in shared]
        for r in rows:
            r.cached, r.cached_kv = self.store.lookup(r.prompt, len(r.prompt))
        rows = [r for r in rows if r.cached < len(r.prompt)]
        if rows:
            self._prefill(rows)
        for r in rows:
            self.store.put(r.prompt, self._row_kv(r))

    @staticmethod
    def _row_kv(row: _Row) -> torch.Tensor:
        parts = [kv for kv in (row.cached_kv, row.new_kv) if kv is not None]
        return torch.cat(parts, dim=3) if len(parts) > 1 else parts[0].clone()

    # -- prefill ---------------------------------------------------------------------------
    def _prefill_chunks(self, rows: list[_Row]) -> list[list[_Row]]:
        """Rows grouped by uncached length (little padding), each chunk within the token budget."""
        order = sorted(rows, key=lambda r: len(r.prompt) - r.cached, reverse=True)
        chunks: list[list[_Row]] = []
        for r in order:
            n = len(r.prompt) - r.cached
            if chunks:
                head = chunks[-1][0]
                width = len(head.prompt) - head.cached
                if n >= PREFILL_FILL * width and (len(chunks[-1]) + 1) * width <= max(self.prefill_tokens, width):
                    chunks[-1].append(r)
                    continue
            chunks.append([r])
        return chunks

    def _prefill(self, rows: list[_Row]) -> torch.Tensor:
        """Prefill the uncached part of every row; set ``row.new_kv``; return last-token logits [rows, vocab]."""
        logits: list[torch.Tensor | None] = [None] * len(rows)
        pos_of = {id(r): i for i, r in enumerate(rows)}
        for chunk in self._prefill_chunks(rows):
            out = self._prefill_chunk(chunk)
            for r, lg in zip(chunk, out, strict=True):
                logits[pos_of[id(r)]] = lg
        return torch.stack([lg for lg in logits if lg is not None])

    def _prefill_chunk(self, rows: list[_Row]) -> torch.Tensor:
        """One forward pass: cached prefixes left-padded to width C, then new tokens left-padded to N."""
        layers, kv_heads, head_dim = self.kv_shape
        c = max(r.cached for r in rows)
        n = max(len(r.prompt) - r.cached for r in rows)
        kv = BatchKV.allocate(layers, len(rows), kv_heads, c + n, head_dim, self.dtype, self.device)
        ids = torch.full((len(rows), n), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), c + n), dtype=torch.long)
        pos = torch.zeros((len(rows), n), dtype=torch.long)
        for b, r in enumerate(rows):
            new = len(r.prompt) - r.cached
            if r.cached_kv is not None:
                kv.buf[:, :, b, :, c - r.cached: c] = r.cached_kv
            mask[b, c - r.cached: c] = 1
            mask[b, c + n - new:] = 1
            ids[b, n - new:] = torch.from_numpy(r.prompt[r.cached:])
            pos[b, n - new:] = torch.arange(r.cached, len(r.prompt))
        kv.length = c
        out = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                         position_ids=pos.to(self.device), use_cache=True, logits_to_keep=1,
                         **{self._cache_kwarg: kv.cache()})
        for b, r in enumerate(rows):
            r.new_kv = kv.buf[:, :, b, :, c + n - (len(r.prompt) - r.cached):]
        self.stats.forward_calls += 1
        self.stats.prefill_tokens += int(sum(len(r.prompt) - r.cached for r in rows))
        self.stats.prefill_slots += len(rows) * n
        return out.logits[:, -1]

    # -- decode ----------------------------------------------------------------------------
    def _rebuild(self, rows: list[_Row], old: _Batch | None) -> _Batch:
        """A fresh batch cache holding ``rows`` (left-padded), sized for their remaining budgets.

        Rows already decoding are copied from ``old``; new rows from their cached and prefilled
        states. Finished rows of ``old`` are dropped.
        """
        layers, kv_heads, head_dim = self.kv_shape
        fed = [len(r.prompt) + len(r.tokens) - 1 for r in rows]  # the last sampled token is fed next step
        width = max(fed)
        budget = max(r.params.max_new_tokens - len(r.tokens) for r in rows) + 1
        kv = BatchKV.allocate(layers, len(rows), kv_heads, width + budget, head_dim, self.dtype, self.device)
        mask = torch.zeros((len(rows), width + budget), dtype=torch.long)
        old_index = {id(r): b for b, r in enumerate(old.rows)} if old else {}
        for b, (r, n) in enumerate(zip(rows, fed, strict=True)):
            off = width - n
            if id(r) in old_index:
                assert old is not None
                kv.buf[:, :, b, :, off:width] = old.kv.buf[:, :, old_index[id(r)], :, r.offset: old.kv.length]
            else:
                if r.cached_kv is not None:
                    kv.buf[:, :, b, :, off: off + r.cached] = r.cached_kv
                kv.buf[:, :, b, :, off + r.cached: width] = r.new_kv
                r.cached_kv = r.new_kv = None  # the batch buffer holds them now
            mask[b, off:width] = 1
            r.offset = off
        kv.length = width
        return _Batch(rows, kv, kv.cache(), mask, torch.tensor(fed, dtype=torch.long))

    def _step(self, batch: _Batch, on_result: Callable[[Hashable, GenResult], dict[Hashable, GenRequest]],
              waiting: deque[_Row]) -> None:
        """One decode step: feed every row its last token (finished rows a masked pad), sample the next."""
        kv = batch.kv
        ids = torch.tensor([[r.tokens[-1] if not r.finish else self.pad_id] for r in batch.rows])
        batch.mask[:, kv.length] = torch.tensor([0 if r.finish else 1 for r in batch.rows])
        out = self.model(input_ids=ids.to(self.device), attention_mask=batch.mask[:, : kv.length + 1].to(self.device),
                         position_ids=batch.pos[:, None].to(self.device), use_cache=True, logits_to_keep=1,
                         **{self._cache_kwarg: batch.cache})
        kv.sync_length(batch.cache)
        batch.pos += 1
        self.stats.forward_calls += 1
        self.stats.decode_rows += len(batch.rows)
        self._sample(batch.rows, out.logits[:, -1], on_result, waiting, batch)

    def _hit_stop(self, tokens: list[int], stop: tuple[str, ...]) -> bool:
        """Whether the newest token completes a stop string (:func:`~codrl.backends.chat.completes_stop`)."""
        return completes_stop(tokens, stop, self.tokenizer.decode)

    def _keep(self, row: _Row, batch: _Batch | None, b: int) -> None:
        """Store a finished row's states (prompt + completion but its last token) for reuse."""
        if not self.store.enabled:
            return
        if batch is None:  # finished on its first token: the states are those of the prompt
            states = self._row_kv(row)
        else:
            states = batch.kv.buf[:, :, b, :, row.offset: batch.kv.length].clone()
        seq = np.concatenate([row.prompt, np.asarray(row.tokens[:-1], dtype=np.int64)])
        self.store.put(seq, states, row.session)
