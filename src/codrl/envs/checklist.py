"""Scripted agents and the checks that prove an environment is a CoD environment.

A CoD environment must hide reusable knowledge in its world and reveal it through feedback, so
that notes written after one task pay off in later tasks of the same pack. Four scripted agents
measure that without any model:

* **random**: replies drawn at random from the valid action space: the chance level;
* **oracle**: reads the hidden world (``pack.world``): the attainable level;
* **feedback learner**: sees only what a model would see (observations, feedback, its own hints
  text, and the task's reward only where the environment shows it to the model) and writes what
  it learned into the hints; it must score higher at the last pack position than at position 0;
* the same learner **without memory** (its hints are always empty): it must not improve.

:func:`play_scripted` plays one lifecycle with a scripted agent, exactly as the lifecycle runner
would (one lifecycle state, one episode per task, the hints carried between tasks as text);
:func:`reward_matrix` plays many packs; :func:`levels` summarises the four agents.

Every task is played by a *fresh* agent from ``make_agent(pack, rng)``: the only memory that
crosses tasks is the hints string, just as for a model. An honest learner's factory ignores
``pack`` (the oracle's is the one that reads ``pack.world``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from codrl.envs.base import CoDEnv, Pack


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


AgentFactory = Callable[[Pack, np.random.Generator], ScriptedAgent]


def play_scripted(env: CoDEnv, pack: Pack, make_agent: AgentFactory, rng: np.random.Generator,
                  use_hints: bool = True, max_turns: int | None = None) -> list[float]:
    """Play one lifecycle of ``pack`` with scripted agents; return the reward of each task.

    ``use_hints=False`` is the memoryless control: every task starts with empty hints.
    ``max_turns`` caps replies per task (default ``env.max_turns`` + 2, a guard against an
    environment that never ends an episode; hitting it scores the task 0).
    """
    cap = max_turns if max_turns is not None else max(1, env.max_turns) + 2
    state = env.new_state(pack)
    hints = ""
    rewards: list[float] = []
    for task in pack.tasks:
        agent = make_agent(pack, rng)
        episode = env.start(pack, task, state)
        observation = episode.reset()
        transcript: list[TurnText] = []
        reward = 0.0
        for _ in range(cap):
            reply = agent.act(hints, observation)
            step = episode.step(reply)
            transcript.append(TurnText(observation, reply, step.feedback))
            if step.done:
                reward = step.reward
                break
            observation = step.observation or step.feedback
        rewards.append(float(reward))
        if use_hints:
            hints = agent.write_hints(hints, transcript, reward if env.reward_visible else None)
    return rewards


def reward_matrix(env: CoDEnv, make_agent: AgentFactory, packs: int = 50, pack_size: int = 4,
                  split: str = "test", seed: int = 0, use_hints: bool = True) -> np.ndarray:
    """Rewards of ``packs`` packs, shape ``(packs, pack_size)``; deterministic in ``seed``."""
    out = np.zeros((packs, pack_size))
    for i in range(packs):
        pack = env.sample_pack(split, seed, i, pack_size)
        rng = np.random.default_rng([seed, i, 7919])
        out[i] = play_scripted(env, pack, make_agent, rng, use_hints=use_hints)
    return out


@dataclass(frozen=True)
class Levels:
    """Mean reward of the scripted agents on one environment (the checklist's numbers)."""

    env: str
    chance: float
    oracle: float
    learner_first: float
    learner_last: float
    memoryless_first: float
    memoryless_last: float
    packs: int
    pack_size: int

    def row(self) -> str:
        """One markdown table row: env | chance | oracle | learner pos 0 -> last | memoryless."""
        return (f"| {self.env} | {self.chance:.3f} | {self.oracle:.3f} | {self.learner_first:.3f} -> "
                f"{self.learner_last:.3f} | {self.memoryless_first:.3f} -> {self.memoryless_last:.3f} |")


def levels(env: CoDEnv, random_agent: AgentFactory, oracle: AgentFactory, learner: AgentFactory,
           packs: int = 50, pack_size: int = 4, split: str = "test", seed: int = 0) -> Levels:
    """Play the four scripted agents on the same packs and summarise them."""
    rnd = reward_matrix(env, random_agent, packs, pack_size, split, seed)
    ora = reward_matrix(env, oracle, packs, pack_size, split, seed)
    lrn = reward_matrix(env, learner, packs, pack_size, split, seed)
    mem = reward_matrix(env, learner, packs, pack_size, split, seed, use_hints=False)
    return Levels(env=env.name, chance=float(rnd.mean()), oracle=float(ora.mean()),
                  learner_first=float(lrn[:, 0].mean()), learner_last=float(lrn[:, -1].mean()),
                  memoryless_first=float(mem[:, 0].mean()), memoryless_last=float(mem[:, -1].mean()),
                  packs=packs, pack_size=pack_size)
