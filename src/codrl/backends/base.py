"""The small generation interface that rollouts and algorithms talk to.

Every engine (a local transformers model, a tiny torch policy built as a transformers model, vLLM,
an OpenAI-compatible server) implements :class:`Backend`: a batch of chat requests in, one
:class:`GenResult` per request out, with the exact sampled token ids and their logprobs where the
engine exposes them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

Message = dict[str, str]  # {"role": "system"|"user"|"assistant", "content": str}


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings of one request. Requests with equal params are batched together."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    #: Generation ends right after the first of these strings (kept in the completion).
    stop: tuple[str, ...] = ()


@dataclass
class GenRequest:
    """A chat to continue. ``reply_prefix`` is prefilled into the assistant reply (not sampled)."""

    messages: list[Message]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    reply_prefix: str = ""
    #: The conversation this request continues (one live lifecycle). Engines that reuse KV caches
    #: keep the session's latest sequence until :meth:`Backend.release`; others ignore it.
    session: str | None = None
    #: Seed of this request's random stream; None draws one from the global torch RNG.
    seed: int | None = None
    #: A context window below the engine's own for this request (``rollout.max_context``); None: the engine's.
    max_context: int | None = None
    #: The exact prompt ids to condition on instead of encoding ``messages`` (chat template and reply
    #: prefix already in them), e.g. a conversation that holds earlier sampled ids verbatim. Engines
    #: that encode prompts themselves (the transformers backend) honour it; None: encode ``messages``.
    prompt_ids: list[int] | None = None


@dataclass
class GenResult:
    """One sampled reply.

    ``text`` is the sampled completion only (the reply prefix is not part of it).
    ``prompt_ids`` is the exact token sequence the model was conditioned on (chat template and
    reply prefix included); ``completion_ids`` are the sampled tokens (an end-of-turn token
    included when sampled) and ``logprobs`` their log-probabilities under the sampling
    distribution. Both are empty for engines that do not expose tokens (``token_exact`` False).
    """

    text: str
    prompt_ids: list[int] = field(default_factory=list)
    completion_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish_reason: str = "stop"  # "stop" | "length" | "error" | "overflow" (not sent: over the context window)
    token_exact: bool = True


def overflow_result() -> GenResult:
    """The answer to a request that was not sampled because it would pass the context window."""
    return GenResult(text="", finish_reason="overflow")


@dataclass
class BackendStats:
    """Counters a backend keeps (used by benchmarks and the batching test)."""

    generate_calls: int = 0  # batched engine calls
    forward_calls: int = 0  # model forward passes (decode steps) where known
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prefill_tokens: int = 0  # prompt tokens actually computed (not served from a KV cache)
    cached_tokens: int = 0  # prompt tokens served from a KV cache
    prefill_slots: int = 0  # padded positions of prefill passes (prefill_tokens + padding)
    decode_rows: int = 0  # rows computed over all decode steps (finished-but-not-dropped rows included)


class Backend(ABC):
    """A generation engine. ``max_batch_size`` caps how many requests one engine call takes.

    ``chat_template_kwargs`` are extra arguments of the model's chat template (e.g.
    ``{"enable_thinking": False}`` for Qwen3): engines that render the template themselves pass
    them to ``apply_chat_template``; an OpenAI-compatible endpoint receives them as the request's
    ``chat_template_kwargs``.
    """

    max_batch_size: int = 32
    #: True when results carry exact token ids and logprobs (required for training).
    token_exact: bool = True
    #: The model's context window in tokens (prompt + reply), None where the engine does not know it.
    context_window: int | None = None

    def __init__(self, chat_template_kwargs: Mapping[str, Any] | None = None) -> None:
        self.stats = BackendStats()
        self.chat_template_kwargs: dict[str, Any] = dict(chat_template_kwargs or {})

    @abstractmethod
    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        """Sample one reply per request, in order."""

    def serve(self, pending: dict[Hashable, GenRequest],
              on_result: Callable[[Hashable, GenResult], dict[Hashable, GenRequest]]) -> None:
        """Serve ``pending`` requests and their follow-ups until none is left.

        ``on_result(key, result)`` is called as each request finishes and returns the requests it
        triggers (the same lifecycle's next call, newly admitted lifecycles), keyed like
        ``pending``. This default plays rounds: all pending requests in one :meth:`generate` call,
        then their follow-ups. Engines that batch continuously (the transformers backend) override
        it to start follow-ups while other requests are still decoding.
        """
        while pending:
            keys = list(pending)
            outs = self.generate([pending[k] for k in keys])
            if len(outs) != len(keys):
                raise RuntimeError(f"backend returned {len(outs)} results for {len(keys)} requests")
            pending = {}
            for k, out in zip(keys, outs, strict=True):
                pending.update(on_result(k, out))

    def overflows(self, prompt_tokens: int, request: GenRequest) -> bool:
        """Whether a prompt of ``prompt_tokens`` tokens plus ``request``'s reply budget passes the
        window: :attr:`context_window` or ``request.max_context``, the smaller (none known: never).
        Engines that encode prompts themselves check it there and answer an over-long request with
        :func:`overflow_result` instead of sampling it."""
        windows = [n for n in (self.context_window, request.max_context) if n]
        return bool(windows) and prompt_tokens + request.sampling.max_new_tokens > min(windows)

    def release(self, session: str) -> None:  # noqa: B027 - optional hook
        """Forget what is cached for ``session`` (its lifecycle is over)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (servers, GPU memory)."""


def end_of_sequence_ids(tokenizer: Any, generation_eos: int | list[int] | None) -> list[int]:
    """End-of-sequence ids of a model: the tokenizer's and its generation config's (either may be unset)."""
    eos: set[int] = set()
    if tokenizer.eos_token_id is not None:
        eos.add(int(tokenizer.eos_token_id))
    if isinstance(generation_eos, int):
        eos.add(generation_eos)
    elif generation_eos:
        eos.update(int(e) for e in generation_eos)
    if not eos:
        raise ValueError("tokenizer has no end-of-sequence token")
    return sorted(eos)


def cut_at_stop(text: str, stop: tuple[str, ...]) -> str | None:
    """``text`` up to and including its first stop string, or None when none occurs.

    For engines that return text: the stop string is kept, as the transformers backend keeps it
    (parsers expect a closing answer tag). The OpenAI backend cuts here rather than sending the
    API's ``stop``, since servers drop a matched stop sequence and an end-of-sequence stop could
    not be told from it.
    """
    hits = [(i, s) for s in stop if s and (i := text.find(s)) >= 0]
    if not hits:
        return None
    i, s = min(hits)
    return text[: i + len(s)]
