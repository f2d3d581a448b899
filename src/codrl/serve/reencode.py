"""Drift-free prompts: a conversation that holds an earlier reply as text is conditioned on that reply's sampled ids.

Re-tokenizing a reply's text need not give back the ids that were sampled (a word sampled in two
pieces encodes as one token; a special token drops out of the decoded text), so a prompt rebuilt
from text would train on a sequence the policy never produced. :func:`continued_prompt_ids` builds
the prompt as the earlier call's prompt ids, its sampled ids, then the encoding of only what the
chat template adds after that reply.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from codrl.backends.base import Message


def continued_prompt_ids(tokenizer: Any, messages: list[Message], *, prev_messages: list[Message],
                         prev_prompt_ids: list[int], prev_completion_ids: list[int], prev_text: str,
                         eos_ids: Collection[int], chat_template_kwargs: Mapping[str, Any] | None = None,
                         ) -> list[int] | None:
    """Prompt ids of ``messages`` that continue an earlier call verbatim, or None when the template
    does not render them as that call's prompt text followed by its reply.

    ``messages`` must be ``prev_messages``, then the reply message whose content is ``prev_text``
    (the earlier reply), then anything. The result is ``prev_prompt_ids + prev_completion_ids`` and the
    encoding of the rendered text after the reply; when the reply ended on an end-of-sequence token,
    the template's own end-of-turn text (and the whitespace before it) is that token, already there.
    """
    kwargs = dict(chat_template_kwargs or {})
    before = tokenizer.apply_chat_template(prev_messages, tokenize=False, add_generation_prompt=True, **kwargs)
    full = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs)
    if not full.startswith(before + prev_text):
        return None
    tail = full[len(before) + len(prev_text):]
    if prev_completion_ids and prev_completion_ids[-1] in eos_ids:
        end_text = tokenizer.convert_ids_to_tokens(prev_completion_ids[-1])
        tail = tail.lstrip()
        if not tail.startswith(end_text):
            return None
        tail = tail[len(end_text):]
    tail_ids = tokenizer(tail, add_special_tokens=False)["input_ids"] if tail else []
    return [*prev_prompt_ids, *prev_completion_ids, *tail_ids]
