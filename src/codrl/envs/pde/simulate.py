"""The solver of ``u_t = u_xx + f(u)`` on ``x, t in [0, 1]`` with ``u = 0`` at both ends.

Semi-implicit Euler on a uniform grid of ``nx`` points and ``nt`` time levels: the reaction is
explicit and the diffusion implicit,

    (u^{n+1} - u^n) / dt = D2 u^{n+1} + f(u^n),      D2 = the 3-point second difference,

so every step solves one tridiagonal system ``(I - dt D2) u^{n+1} = u^n + dt f(u^n)``. The matrix
is the same at every step: it is factored once (LAPACK ``gttrf``) and each step is one ``gttrs``
solve, vectorised over x (and over several initial profiles at once). One 257 x 2001 trajectory
takes a few tens of milliseconds.

The discrete residual ``(u^{n+1} - u^n)/dt - D2 u^{n+1}`` of this scheme equals ``f(u^n)`` up to
rounding, so the observed target of a sample at level n is ``f(u^n)`` (see :func:`residual`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy.linalg import lapack

from codrl.envs.pde.library import TERMS

#: Default grid: 257 x-points (dx = 1/256) and 2001 time levels (dt = 1/2000).
NX, NT = 257, 2001


def x_grid(nx: int) -> np.ndarray:
    """The ``nx`` grid points of [0, 1], both ends included."""
    return np.linspace(0.0, 1.0, nx)


def initial_profile(x: np.ndarray, amplitude: float, modes: Sequence[Sequence[float]]) -> np.ndarray:
    """``amplitude * sin(pi x) * m(x)`` with ``m(x) = sum_j w_j cos(k_j pi (x - 1/2))``.

    ``modes`` is a list of ``[k, w]`` pairs with integer ``k >= 0`` and weights ``w >= 0`` summing to 1,
    so ``m(1/2) = 1`` and ``|m| <= 1``: the profile peaks at ``amplitude`` in the middle and
    ``|u0| <= |amplitude| sin(pi x)`` everywhere (which is what the world's stability check bounds).
    """
    x = np.asarray(x, dtype=float)
    m = np.zeros_like(x)
    for k, w in modes:
        m = m + float(w) * np.cos(float(k) * np.pi * (x - 0.5))
    u0 = float(amplitude) * np.sin(np.pi * x) * m
    u0[0] = u0[-1] = 0.0
    return u0


def _reaction(eq: Mapping[str, float]):
    terms = [(float(c), TERMS[name]) for name, c in eq.items()]

    def f(u: np.ndarray) -> np.ndarray:
        if not terms:
            return np.zeros_like(u)
        c0, fn0 = terms[0]
        out = c0 * fn0(u)
        for c, fn in terms[1:]:
            out += c * fn(u)
        return out

    return f


def simulate(eq: Mapping[str, float], u0: np.ndarray, nt: int = NT, record_every: int = 1) -> np.ndarray:
    """Integrate from ``u0`` (shape ``(nx,)`` or ``(nx, batch)``) over ``nt`` levels on t in [0, 1].

    Returns the levels ``0, record_every, 2 record_every, ...`` (``record_every`` must divide
    ``nt - 1``): shape ``(1 + (nt - 1) // record_every, nx[, batch])``.
    """
    return _run(eq, u0, nt, record_every, None)[0]


def max_abs(eq: Mapping[str, float], profiles: np.ndarray, nt: int = NT, limit: float = np.inf) -> float:
    """The largest ``|u|`` reached from the profiles (columns of ``profiles``) at any time level.

    The run stops as soon as some ``|u|`` reaches ``limit`` or stops being finite; it then returns ``inf``.
    """
    return _run(eq, profiles, nt, nt - 1, limit)[1]


def _run(eq: Mapping[str, float], u0: np.ndarray, nt: int, record_every: int,
         limit: float | None) -> tuple[np.ndarray, float]:
    u0 = np.asarray(u0, dtype=float)
    nx = u0.shape[0] if u0.ndim else 0
    if nx < 3 or nt < 2 or record_every < 1 or (nt - 1) % record_every:
        raise ValueError(f"simulate: need nx >= 3, nt >= 2 and record_every dividing nt - 1, "
                         f"got nx={nx}, nt={nt}, record_every={record_every}")
    dt = 1.0 / (nt - 1)
    r = dt * (nx - 1) ** 2
    n_in = nx - 2
    dl, d, du, du2, ipiv, info = lapack.dgttrf(np.full(n_in - 1, -r), np.full(n_in, 1.0 + 2.0 * r),
                                               np.full(n_in - 1, -r))
    if info != 0:  # pragma: no cover - the matrix is diagonally dominant
        raise RuntimeError(f"simulate: tridiagonal factorisation failed (info={info})")
    f = _reaction(eq)
    out = np.zeros((1 + (nt - 1) // record_every,) + u0.shape)
    out[0, 1:-1] = u0[1:-1]
    u = np.array(out[0, 1:-1], order="F")
    peak = float(np.max(np.abs(u))) if u.size else 0.0
    for n in range(1, nt):
        u, info = lapack.dgttrs(dl, d, du, du2, ipiv, u + dt * f(u))
        if limit is not None:
            m = float(np.max(np.abs(u)))
            if not m < limit:  # also catches nan
                out[-(-n // record_every):] = np.inf
                return out, float("inf")
            peak = max(peak, m)
        if n % record_every == 0:
            out[n // record_every, 1:-1] = u
    if limit is None:
        peak = float(np.max(np.abs(out)))
    return out, peak


def residual(traj: np.ndarray, dt: float) -> np.ndarray:
    """The discrete residual ``(u^{n+1} - u^n)/dt - D2 u^{n+1}`` at the interior points.

    ``traj`` holds every time level (shape ``(nt, nx)``); the result has shape ``(nt - 1, nx - 2)``
    and row ``n`` belongs to level ``n`` (it equals ``f(u^n)`` for this scheme).
    """
    nx = traj.shape[1]
    dx2 = 1.0 / (nx - 1) ** 2
    nxt = traj[1:]
    lap = (nxt[:, :-2] - 2.0 * nxt[:, 1:-1] + nxt[:, 2:]) / dx2
    return (nxt[:, 1:-1] - traj[:-1, 1:-1]) / dt - lap
