"""Terminal: file chores in a simulated shell (a local machine and a team server).

See :mod:`codrl.envs.terminal.env` for the environment, :mod:`~codrl.envs.terminal.shell` for the
simulated shell, :mod:`~codrl.envs.terminal.fs` for the in-memory file systems and
:mod:`~codrl.envs.terminal.tasks` for setups, tasks and goal checks. Nothing in this package runs a
process or touches the real file system.
"""

from __future__ import annotations

from codrl.envs.terminal.env import Terminal, TerminalEpisode, parse_command
from codrl.envs.terminal.tasks import TASK_KINDS

__all__ = ["TASK_KINDS", "Terminal", "TerminalEpisode", "parse_command"]
