"""CoD environments: the interface (:mod:`codrl.envs.base`) and the registry of names.

:func:`make_env` builds an environment from a built-in name, an import path
``package.module:ClassName`` or a plug-in name (entry-point group ``codrl.envs``); see
:mod:`codrl.envs.registry`.
"""

from __future__ import annotations

from codrl.envs.base import SPLITS, CoDEnv, Episode, Pack, StepResult, Task, expand_ralph, ralph_pack
from codrl.envs.registry import BUILTIN, ENTRY_POINT_GROUP, check_name, describe, env_names, make_env

__all__ = ["BUILTIN", "ENTRY_POINT_GROUP", "SPLITS", "CoDEnv", "Episode", "Pack", "StepResult", "Task",
           "check_name", "describe", "env_names", "expand_ralph", "make_env", "ralph_pack"]
