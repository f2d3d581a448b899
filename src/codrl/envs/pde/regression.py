"""Sparse regression of ``y = f(u)`` over library terms: ridge screening, then least squares.

:func:`sparse_regression` tries every support (set of terms) of up to ``cap`` terms among the
candidate terms (first screened by a ridge fit when there are more than ``screen`` of them), fits
each support by least squares and ranks the fits by BIC, ``n ln(RSS/n) + k ln(n)``: a better fit
wins unless it needs more terms than the data justify. :func:`refit` fits given supports only
(the coefficients of candidate equations are refitted). Coefficients are rounded to 4 significant
digits, and the residuals reported are those of the rounded equation (what a commit would use).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np

from codrl.envs.pde.library import Equation, design_matrix, evaluate, order_terms

#: Floor of RSS/n in the score, so that an exact fit does not score minus infinity.
_VAR_FLOOR = 1e-12
#: Least score cost of a term (BIC charges ln n, too little for a handful of points).
TERM_PENALTY = 10.0


@dataclass(frozen=True)
class Fit:
    """One scored equation: rounded coefficients, its terms, residual statistics and BIC score."""

    equation: Equation
    support: tuple[str, ...]
    rms: float
    max_abs: float
    score: float


def round_sig(c: float, digits: int = 4) -> float:
    """``c`` rounded to ``digits`` significant digits."""
    return float(f"{float(c):.{digits}g}")


def fit_support(u: np.ndarray, y: np.ndarray, support: Sequence[str]) -> Fit:
    """Least-squares fit of ``y`` on the terms of ``support`` (needs more points than terms)."""
    support = order_terms(support)
    u = np.asarray(u, dtype=float).ravel()
    y = np.asarray(y, dtype=float).ravel()
    n, k = u.size, len(support)
    if k < 1 or n <= k:
        raise ValueError(f"fit_support: need 1 <= terms < points, got {k} terms and {n} points")
    theta = design_matrix(u, support)
    coef, *_ = np.linalg.lstsq(theta, y, rcond=None)
    eq = {name: round_sig(c) for name, c in zip(support, coef) if round_sig(c) != 0.0}
    res = y - evaluate(eq, u)
    rss = float(res @ res)
    score = n * float(np.log(max(rss / n, _VAR_FLOOR))) + k * max(float(np.log(n)), TERM_PENALTY)
    return Fit(equation=eq, support=support, rms=float(np.sqrt(rss / n)), max_abs=float(np.max(np.abs(res))),
               score=score)


def screen_terms(u: np.ndarray, y: np.ndarray, terms: Sequence[str], keep: int, alpha: float = 1e-3) -> list[str]:
    """The ``keep`` terms with the largest standardised ridge coefficients (all if there are few)."""
    terms = list(terms)
    if len(terms) <= keep:
        return terms
    theta = design_matrix(u, terms)
    scale = np.linalg.norm(theta, axis=0)
    scale[scale == 0.0] = 1.0
    z = theta / scale
    a = z.T @ z + alpha * np.eye(len(terms))
    w = np.linalg.solve(a, z.T @ np.asarray(y, dtype=float).ravel())
    best = np.argsort(-np.abs(w), kind="stable")[:keep]
    return [terms[i] for i in sorted(best)]


def sparse_regression(u: np.ndarray, y: np.ndarray, terms: Sequence[str], cap: int,
                      screen: int = 8) -> list[Fit]:
    """Every support of 1..``cap`` screened terms, fitted and ranked best first (ties: fewer terms)."""
    u = np.asarray(u, dtype=float).ravel()
    kept = screen_terms(u, y, terms, screen)
    fits = [fit_support(u, y, s) for k in range(1, min(cap, u.size - 1, len(kept)) + 1)
            for s in combinations(kept, k)]
    return sorted(fits, key=lambda f: (f.score, len(f.support)))


def refit(u: np.ndarray, y: np.ndarray, supports: Sequence[Sequence[str]]) -> list[Fit]:
    """Fit each given support (candidate equations' terms) and rank them best first."""
    u = np.asarray(u, dtype=float).ravel()
    fits = [fit_support(u, y, s) for s in supports if 0 < len(s) < u.size]
    return sorted(fits, key=lambda f: (f.score, len(f.support)))
