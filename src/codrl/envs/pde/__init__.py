"""PDE Discovery: identify the hidden reaction term f(u) of u_t = u_xx + f(u) from sampled data.

:mod:`~codrl.envs.pde.library` holds the 15 library terms and the equation grammar,
:mod:`~codrl.envs.pde.simulate` the solver, :mod:`~codrl.envs.pde.regression` the sparse
regression and :mod:`~codrl.envs.pde.env` the environment itself.
"""

from __future__ import annotations

from codrl.envs.pde.env import PDEDiscovery, PDEEpisode, PDEState, parse_action, score_equation
from codrl.envs.pde.library import TERM_NAMES, EquationError, format_equation, parse_equation

__all__ = ["TERM_NAMES", "EquationError", "PDEDiscovery", "PDEEpisode", "PDEState", "format_equation",
           "parse_action", "parse_equation", "score_equation"]
