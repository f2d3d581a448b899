"""A context of your own, in one file: a running list of one-line notes.

After every task the model writes ONE short note; the lifecycle keeps the last six, oldest first,
and the next task shows them under ``Hints:``. Nothing is ever rewritten or removed by the model,
unlike the built-in ``cod`` (free rewrite) and ``curator`` (edit operations) contexts.

Use it by import path wherever a context is named (this folder on ``PYTHONPATH``)::

    codrl eval --env frozenlake --contexts cod,notes_context:NotesContext
    codrl train -c configs/quickstart_cpu.yaml rollout.mode=notes_context:NotesContext
    codrl matrix -m embedded -e frozenlake/notes_context:NotesContext

Its results are named ``notes`` (``ralph-notes`` in a Ralph loop).
"""

from __future__ import annotations

from collections.abc import Sequence

from codrl.rollout.contexts import Context, ContextUpdate, Messages
from codrl.rollout.experience import Turn
from codrl.rollout.prompts import context_user_message

MAX_NOTES = 6
MAX_CHARS = 160


class NotesContext(Context):
    """Each update appends one note (the first line of the reply) to a list of at most six."""

    name = "notes"

    def update_request(self, system_prompt: str, observation: str, turns: Sequence[Turn], reward: float | None,
                       feedback: str) -> tuple[Messages, str]:
        text = context_user_message(system_prompt, "Your notes so far", self.hints, observation, list(turns), reward,
                                    feedback, "Write ONE short note (one line) that will help with the next task "
                                              "in this environment.", self.cfg.update_length_line)
        return [{"role": "user", "content": text}], "Note:"

    def apply(self, text: str, n_tokens: int) -> ContextUpdate:
        lines = text.strip().splitlines()
        note = lines[0].strip()[:MAX_CHARS] if lines else ""
        if len(note) < self.cfg.hint_min_chars:  # no usable note: the list stays as it was
            return ContextUpdate(False, self.own_reward(False, n_tokens))
        notes = [line for line in self.hints.splitlines() if line.strip()] + [f"- {note}"]
        self.hints = "\n".join(notes[-MAX_NOTES:])
        return ContextUpdate(True, self.own_reward(True, n_tokens))
