"""CoD environments. ``ENVS`` maps a name to a factory; :func:`make_env` validates the name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from codrl.envs.base import SPLITS, CoDEnv, Episode, Pack, StepResult, Task, expand_ralph, ralph_pack
from codrl.errors import bad_choice


def _frozenlake(**kw: Any) -> CoDEnv:
    from codrl.envs.frozenlake import FrozenLakeObscure

    return FrozenLakeObscure(**kw)


def _frozenlake_hard(**kw: Any) -> CoDEnv:
    from codrl.envs.frozenlake import FrozenLakeObscure

    kw.setdefault("min_size", 6)
    kw.setdefault("max_size", 7)
    kw.setdefault("name", "frozenlake_hard")
    return FrozenLakeObscure(**kw)


def _secret_table(**kw: Any) -> CoDEnv:
    from codrl.envs.secret_table import SecretTable

    return SecretTable(**kw)


#: Environment name -> factory taking the environment's keyword parameters.
ENVS: dict[str, Callable[..., CoDEnv]] = {
    "frozenlake": _frozenlake,
    "frozenlake_hard": _frozenlake_hard,
    "secret_table": _secret_table,
}


def make_env(name: str, **params: Any) -> CoDEnv:
    """Build environment ``name`` (one of :data:`ENVS`) with its keyword parameters."""
    if name not in ENVS:
        raise bad_choice("env", name, sorted(ENVS))
    return ENVS[name](**params)


__all__ = ["ENVS", "SPLITS", "CoDEnv", "Episode", "Pack", "StepResult", "Task", "expand_ralph",
           "make_env", "ralph_pack"]
