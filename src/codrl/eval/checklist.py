"""The checks that prove an environment is a CoD environment, measured with scripted agents.

A CoD environment must hide reusable knowledge in its world and reveal it through feedback, so
that notes written after one task pay off in later tasks of the same pack. Four scripted agents
(:mod:`codrl.envs.scripted`) measure that without any model:

* **random**: replies drawn at random from the valid action space: the chance level;
* **oracle**: reads the hidden world (``pack.world``): the attainable level;
* **feedback learner**: sees only what a model would see (observations, feedback, its own hints
  text, and the task's reward only where the environment shows it to the model) and writes what
  it learned into the hints; it must score higher at the last pack position than at position 0;
* the same learner **without memory** (the ``nohint`` context: every task starts with empty
  hints): it must not improve.

Every lifecycle is played by the real :class:`~codrl.rollout.lifecycle.LifecycleRunner` over a
:class:`~codrl.backends.scripted.ScriptedBackend` (:func:`play_pack`), with a fresh agent per task:
the only memory that crosses tasks is the hints text, just as for a model. The figures are the
environment's own rewards (``env_reward``: no length or turn penalty).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from codrl.backends.scripted import ScriptedBackend
from codrl.envs.base import CoDEnv, Pack
from codrl.envs.scripted.base import AgentFactory
from codrl.rollout.config import RolloutConfig
from codrl.rollout.lifecycle import Job, LifecycleRunner


def checklist_config(env: CoDEnv, pack_size: int, use_hints: bool = True) -> RolloutConfig:
    """How the checklist plays ``env``: the ``cod`` context (``nohint`` without hints), replies sent as the
    agent writes them, every hints block taken as written, at most ``env.max_turns + 2`` replies per task
    (a guard against an episode that never ends; hitting it scores the task 0), environment errors raised."""
    return RolloutConfig(pack_size=pack_size, repeats=1, mode="cod" if use_hints else "nohint",
                         use_reply_prefix=False, hint_min_chars=0, max_turns_cap=max(1, env.max_turns) + 2,
                         on_env_error="raise", max_concurrent=1)


def play_pack(env: CoDEnv, pack: Pack, make_agent: AgentFactory, rng: np.random.Generator,
              use_hints: bool = True) -> list[float]:
    """Play one lifecycle of ``pack`` with scripted agents; return the environment's reward of each task.

    ``use_hints=False`` is the memoryless control (the ``nohint`` context).
    """
    cfg = checklist_config(env, len(pack.tasks), use_hints)
    [result] = LifecycleRunner(ScriptedBackend(make_agent, pack, rng), cfg).run([Job(env, pack, 0)], seeds=[0])
    return [float(ep.env_reward) for ep in result.episodes]


def reward_matrix(env: CoDEnv, make_agent: AgentFactory, packs: int = 50, pack_size: int = 4,
                  split: str = "test", seed: int = 0, use_hints: bool = True) -> np.ndarray:
    """Rewards of ``packs`` packs, shape ``(packs, pack_size)``; deterministic in ``seed``."""
    out = np.zeros((packs, pack_size))
    for i in range(packs):
        pack = env.sample_pack(split, seed, i, pack_size)
        out[i] = play_pack(env, pack, make_agent, np.random.default_rng([seed, i, 7919]), use_hints=use_hints)
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
