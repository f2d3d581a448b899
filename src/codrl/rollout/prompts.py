"""Prompt texts of the lifecycle and the parsing/penalties of hints blocks.

The solve prompt carries the current hints block above the task observation; the update-context
prompt shows the previous hints, the last task's trajectory, its reward (only where the
environment lets the model see it, :attr:`~codrl.envs.base.CoDEnv.reward_visible`) and the
environment's feedback, and asks for rewritten hints: a ``Hints:`` block (the reply is prefilled
with ``Hints:``), or, with ``update_reasoning``, brief reasoning followed by the hints between
:data:`HINTS_START` and :data:`HINTS_END` (:func:`parse_hints_block`).
"""

from __future__ import annotations

import re

from codrl.backends.base import Message
from codrl.rollout.experience import Turn

UPDATE_SYSTEM = (
    "You keep a short set of notes about an environment you work in again and again. The same hidden "
    "rules hold in every task of this environment, so facts you learn now help with the next task."
)

UPDATE_INSTRUCTIONS = (
    "Rewrite the hints for the next task in this same environment. Keep what is still true, correct what "
    "turned out wrong, and add what this attempt revealed (for example what each action really does). "
    "Be brief and concrete. Answer with a block that starts with 'Hints:'."
)

#: Update instructions with ``update_reasoning``: brief reasoning, then a delimited block.
HINTS_START = "--- Start of updated hints ---"
HINTS_END = "--- End of updated hints ---"
UPDATE_REASONING_INSTRUCTIONS = (
    "Rewrite the hints for the next task in this same environment. Keep what is still true, correct what "
    "turned out wrong, and add what this attempt revealed (for example what each action really does). "
    "First reason briefly about what this attempt showed. Then end your reply with the updated hints, brief "
    f"and concrete, between these two lines:\n{HINTS_START}\n(the hints)\n{HINTS_END}\n"
    "Write nothing after the closing line."
)
#: The hints that replace an invalid block under ``on_hint_parse_failure: clear``.
NO_HINT = "no hint available"

_HINTS_RE = re.compile(r"hints\s*:\s*(.*)", re.IGNORECASE | re.DOTALL)
_HEADER_RE = re.compile(r"hints\s*:\s*", re.IGNORECASE)


def solve_user_message(hints: str, observation: str) -> str:
    """First user message of a solve episode: the hints block (if any) above the observation."""
    if not hints:
        return observation
    return f"Hints:\n{hints}\n\n{observation}"


def trajectory_text(first_observation: str, turns: list[Turn]) -> str:
    """The last task's attempt as text: the task, then each reply and what happened."""
    lines = [f"Task:\n{first_observation}", "", "Your attempt:"]
    for i, t in enumerate(turns, 1):
        lines.append(f"Step {i}. You answered: {t.reply.strip()}")
        lines.append(f"Result: {t.feedback.strip()}")
    return "\n".join(lines)


def length_line(max_tokens: int | None) -> str:
    """The response-length line of a context step (``""`` when ``max_tokens`` is None)."""
    return "" if max_tokens is None else f"Keep your whole reply within {max_tokens} tokens."


def context_user_message(env_system_prompt: str, context_label: str, context: str, first_observation: str,
                         turns: list[Turn], reward: float | None, feedback: str, instructions: str,
                         max_tokens: int | None = None) -> str:
    """User message of a context step (hints rewrite or curator): the environment, the current
    context under ``context_label``, the last attempt, its reward and feedback, then ``instructions``.

    ``reward`` None leaves the reward line out: the environment hides it from the model
    (:attr:`~codrl.envs.base.CoDEnv.reward_visible` False). ``max_tokens`` adds a response-length
    line after the instructions.
    """
    lines = [
        "Environment description:",
        env_system_prompt.strip(),
        "",
        f"{context_label}:",
        context.strip() if context else "(none yet)",
        "",
        trajectory_text(first_observation, turns),
        "",
    ]
    if reward is not None:
        lines.append(f"Reward of this task: {reward:g}")
    lines += [f"Final feedback: {feedback.strip()}", "", instructions]
    if max_tokens is not None:
        lines.append(length_line(max_tokens))
    return "\n".join(lines)


def update_messages(env_system_prompt: str, hints: str, first_observation: str, turns: list[Turn],
                    reward: float | None, feedback: str, *, reasoning: bool = False,
                    max_tokens: int | None = None) -> list[Message]:
    """Chat of an update-context episode (``reward`` None: not shown; see :func:`context_user_message`).

    ``reasoning`` asks for brief reasoning and the hints between :data:`HINTS_START` and
    :data:`HINTS_END` (parsed by :func:`parse_hints_block`) instead of a ``Hints:`` block.
    """
    instructions = UPDATE_REASONING_INSTRUCTIONS if reasoning else UPDATE_INSTRUCTIONS
    user = context_user_message(env_system_prompt, "Previous hints", hints, first_observation, turns, reward,
                                feedback, instructions, max_tokens)
    return [{"role": "system", "content": UPDATE_SYSTEM}, {"role": "user", "content": user}]


def parse_hints(reply: str) -> str | None:
    """Extract the hints text from a full update reply; None if there is no ``Hints:`` block."""
    m = _HINTS_RE.search(reply)
    if m is None:
        return None
    text = m.group(1).strip()
    while True:  # a model that repeats the header after the prefilled one
        again = _HEADER_RE.match(text)
        if again is None:
            return text
        text = text[again.end():].strip()


def parse_hints_block(reply: str) -> str | None:
    """The hints between the last :data:`HINTS_START` line and the :data:`HINTS_END` after it.

    None when the reply holds no such pair (a reasoning reply that quotes the format earlier
    and then writes its block is read from that final block). Surrounding whitespace and a
    leading ``Hints:`` header are removed.
    """
    start = reply.rfind(HINTS_START)
    while start >= 0:
        end = reply.find(HINTS_END, start + len(HINTS_START))
        if end >= 0:
            text = reply[start + len(HINTS_START):end].strip()
            header = _HEADER_RE.match(text)
            return text[header.end():].strip() if header else text
        start = reply.rfind(HINTS_START, 0, start)
    return None


def ramp(length: int, start: int, end: int) -> float:
    """Linear ramp: 0 up to ``start``, 1 from ``end`` on."""
    if length <= start:
        return 0.0
    if length >= end:
        return 1.0
    return (length - start) / (end - start)
