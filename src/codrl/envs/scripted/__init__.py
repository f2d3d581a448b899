"""Scripted agents of every built-in environment: random, oracle and feedback learner.

Each module ``codrl.envs.scripted.<env>`` defines three agent factories with the signature of
:data:`codrl.envs.scripted.base.AgentFactory`: ``random_agent``, ``oracle_agent`` (reads the hidden
world) and ``learner_agent`` (uses only observations, feedback and its own hints text).
:func:`agents_for` finds them by environment name (hard variants share their base's module).
"""

from __future__ import annotations

import importlib
from typing import NamedTuple

from codrl.envs.scripted.base import AgentFactory
from codrl.errors import bad_choice

#: Environment name -> module of its scripted agents.
MODULES: dict[str, str] = {
    "frozenlake": "frozenlake", "frozenlake_hard": "frozenlake",
    "alchemy": "alchemy", "alchemy_hard": "alchemy",
    "terminal": "terminal",
    "gridnav": "gridnav", "gridnav_hard": "gridnav",
    "control": "control", "control_hard": "control",
    "pde": "pde", "pde_hard": "pde",
    "diagnosis": "diagnosis",
    "code": "code", "code_hard": "code",
    "secret_table": "secret_table",
}


class Agents(NamedTuple):
    """The three scripted agents of one environment."""

    random: AgentFactory
    oracle: AgentFactory
    learner: AgentFactory


def agents_for(env_name: str) -> Agents:
    """The scripted agents of a built-in environment."""
    if env_name not in MODULES:
        raise bad_choice("env", env_name, sorted(MODULES))
    mod = importlib.import_module(f"codrl.envs.scripted.{MODULES[env_name]}")
    return Agents(mod.random_agent, mod.oracle_agent, mod.learner_agent)
