"""The interface of a scripted agent: what it sees of one task, and how it is made.

A scripted agent plays one task from the text a model would see (the current hints and each
observation) and, after the task, writes the next task's hints from that task's transcript. It is
played through the real lifecycle runner by :class:`codrl.backends.scripted.ScriptedBackend`;
:mod:`codrl.eval.checklist` uses it to measure environments.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from codrl.envs.base import Pack


@dataclass(frozen=True)
class TurnText:
    """One turn as text: what the agent saw, what it replied, what the environment answered."""

    observation: str
    reply: str
    feedback: str


class ScriptedAgent(Protocol):
    """A rule-based player of one task."""

    def act(self, hints: str, observation: str) -> str:
        """The full reply (answer tags included) to the current observation."""

    def write_hints(self, hints: str, transcript: list[TurnText], reward: float | None) -> str:
        """The hints for the next task, from the old hints and this task's transcript.

        ``reward`` is the task's reward, or None where the environment hides it from the model
        (:attr:`~codrl.envs.base.CoDEnv.reward_visible` False): a learner sees what a model sees.
        """


#: Makes the agent of one task: ``make_agent(pack, rng)``. Only an oracle reads ``pack.world``.
AgentFactory = Callable[[Pack, np.random.Generator], ScriptedAgent]
