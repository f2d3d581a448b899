"""Chat prompts and stop handling shared by every engine: the same messages give the same
prompt ids, and a reply ends on the same token, whichever engine samples it."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from codrl.backends.base import GenRequest


def encode_chat_prompt(tokenizer: Any, request: GenRequest,
                       chat_template_kwargs: Mapping[str, Any] | None = None) -> list[int]:
    """Token ids of ``request``'s chat prompt: the chat template with the generation prompt, then
    the reply prefix, tokenised without extra special tokens (``chat_template_kwargs`` go to
    ``apply_chat_template``). Every engine encodes prompts with this function, so prompt ids agree
    across engines and with the trainer. A request that carries its own ``prompt_ids`` (a
    conversation continued from ids sampled earlier, :mod:`codrl.serve.reencode`) is taken as it is."""
    if request.prompt_ids is not None:
        return list(request.prompt_ids)
    text = tokenizer.apply_chat_template(request.messages, tokenize=False, add_generation_prompt=True,
                                         **(chat_template_kwargs or {}))
    text += request.reply_prefix
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def completes_stop(tokens: Sequence[int], stop: Sequence[str], decode: Callable[[list[int]], str]) -> bool:
    """Whether the last of ``tokens`` completes a stop string: one occurs in the decoded text and
    did not before that token (checked on a short tail first, confirmed on the full decode: every
    token decodes to at least one character)."""
    window = max((len(s) for s in stop), default=0) + 4
    toks = list(tokens)
    if not toks or not any(s in decode(toks[-window:]) for s in stop):
        return False
    text, prev = decode(toks), decode(toks[:-1])
    return any(s in text and s not in prev for s in stop)


def cut_completion(token_ids: Sequence[int], stop: Sequence[str], eos_ids: Iterable[int],
                   decode: Callable[[list[int]], str]) -> tuple[list[int], bool]:
    """Cut tokens sampled by an engine that stops on its own terms where codrl stops: right after the first
    end-of-sequence token or the first token that completes a stop string (the stop string stays).

    Returns ``(tokens, stopped)``; ``stopped`` is True when such a token ends the kept tokens.
    ``decode`` turns token ids into text (the tokenizer's ``decode``).
    """
    eos = set(eos_ids)
    toks = list(token_ids)
    for t, tok in enumerate(toks):
        if tok in eos or (stop and completes_stop(toks[: t + 1], stop, decode)):
            return toks[: t + 1], True
    return toks, False
