"""Prompt texts of the lifecycle and the parsing/penalties of hints blocks.

The solve prompt carries the current hints block above the task observation; the update-context
prompt shows the previous hints, the last task's trajectory, its reward and the environment's
feedback, and asks for a rewritten ``Hints:`` block.
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


def context_user_message(env_system_prompt: str, context_label: str, context: str, first_observation: str,
                         turns: list[Turn], reward: float, feedback: str, instructions: str) -> str:
    """User message of a context step (hints rewrite or curator): the environment, the current
    context under ``context_label``, the last attempt, its reward and feedback, then ``instructions``."""
    return "\n".join([
        "Environment description:",
        env_system_prompt.strip(),
        "",
        f"{context_label}:",
        context.strip() if context else "(none yet)",
        "",
        trajectory_text(first_observation, turns),
        "",
        f"Reward of this task: {reward:g}",
        f"Final feedback: {feedback.strip()}",
        "",
        instructions,
    ])


def update_messages(env_system_prompt: str, hints: str, first_observation: str, turns: list[Turn],
                    reward: float, feedback: str) -> list[Message]:
    """Chat of an update-context episode."""
    user = context_user_message(env_system_prompt, "Previous hints", hints, first_observation, turns, reward,
                                feedback, UPDATE_INSTRUCTIONS)
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


def ramp(length: int, start: int, end: int) -> float:
    """Linear ramp: 0 up to ``start``, 1 from ``end`` on."""
    if length <= start:
        return 0.0
    if length >= end:
        return 1.0
    return (length - start) / (end - start)
