"""Scripted Optimal Control agents: random policies, the oracle, and a dynamics-estimating learner.

The system is deterministic, so the best policy for a task is an open-loop control sequence: the
oracle solves the task's box-constrained least-squares problem (:func:`plan_controls`) with the
true ``a`` and ``b`` and answers with that sequence written as a chain of conditionals on ``t``
(:func:`sequence_expression`). The learner reads only text: on a task without hints it answers a
probe policy (push +0.5, then -0.5, then coast), after each task it fits ``a`` and ``b`` by least
squares to the feedback table's rows (``v[t+1] = a v[t] + b u[t]``) and writes them into its hints,
and on later tasks it plans with those estimates exactly as the oracle does.
"""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
from scipy.optimize import lsq_linear

from codrl.envs.base import Pack
from codrl.envs.control import CONTROL_WEIGHT, U_MAX, VARIABLES, VELOCITY_WEIGHT
from codrl.envs.expr import DEFAULT_LIMITS, ExprError, parse
from codrl.envs.scripted.base import TurnText

_NUM = r"(-?\d+(?:\.\d+)?)"
_TASK_RE = re.compile(rf"start at x = {_NUM}, v = {_NUM}\. Reach x_target = {_NUM} with v_target = {_NUM} "
                      r"after horizon = (\d+) steps")
_ROW_RE = re.compile(rf"^\s*(\d+) \|\s*{_NUM} \|\s*{_NUM} \|\s*{_NUM} \|\s*{_NUM}\s*$", re.MULTILINE)
_END_RE = re.compile(rf"^\s*(\d+) \|\s*{_NUM} \|\s*{_NUM} \|\s*\(end\)", re.MULTILINE)
_HINT_RE = re.compile(rf"a = {_NUM}, b = {_NUM}")

#: The learner's answer on a task it has no dynamics estimate for: two independent pushes, then coast.
PROBE = "0.5 if t < 1 else (-0.5 if t < 2 else 0)"


def _answer(expression: str) -> str:
    return f"<answer>{expression}</answer>"


def parse_task(observation: str) -> tuple[float, float, float, float, int] | None:
    """``(x0, v0, x_target, v_target, horizon)`` from a task description, or None."""
    m = _TASK_RE.search(observation)
    if m is None:
        return None
    return float(m.group(1)), float(m.group(2)), float(m.group(3)), float(m.group(4)), int(m.group(5))


def plan_controls(a: float, b: float, x0: float, v0: float, x_target: float, v_target: float,
                  horizon: int) -> np.ndarray:
    """The applied controls (each in [-1, 1]) that minimise the task loss under dynamics ``(a, b)``.

    The end state is affine in the controls, so the loss is a box-constrained linear least-squares
    problem; it is convex and solved exactly.
    """
    # v_k = a^k v0 + sum_{t<k} a^(k-1-t) b u_t ; x_H = x0 + sum_{k=1..H} v_k
    powers = a ** np.arange(horizon + 1)
    v_end_u = b * powers[horizon - 1 - np.arange(horizon)]
    x_end_u = np.array([b * powers[: horizon - t].sum() for t in range(horizon)])
    v_end_0 = powers[horizon] * v0
    x_end_0 = x0 + v0 * powers[1:].sum()
    w = np.sqrt(VELOCITY_WEIGHT)
    lhs = np.vstack([x_end_u, w * v_end_u, np.sqrt(CONTROL_WEIGHT) * np.eye(horizon)])
    rhs = np.concatenate([[x_target - x_end_0, w * (v_target - v_end_0)], np.zeros(horizon)])
    res = lsq_linear(lhs, rhs, bounds=(-U_MAX, U_MAX), method="bvls")
    return np.clip(res.x, -U_MAX, U_MAX)


def _num(value: float, digits: int) -> str:
    text = f"{value:.{digits}f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "", "-") else text


def sequence_expression(controls: np.ndarray | list[float], max_chars: int = DEFAULT_LIMITS.max_chars) -> str:
    """An open-loop policy ``c0 if t < 1 else c1 if t < 2 else ...`` for a control sequence.

    Runs of equal (rounded) values share one branch. When 4 decimals do not fit in ``max_chars``,
    fewer are used; as a last resort the tail of the sequence is dropped (0 there).
    """
    values = [float(c) for c in controls]
    for digits in (4, 3, 2, 1):
        for keep in range(len(values), 0, -1):
            nums = [_num(c, digits) for c in values[:keep]] + (["0"] if keep < len(values) else [])
            runs: list[tuple[str, int]] = []  # (value, end step exclusive)
            for i, s in enumerate(nums):
                if runs and runs[-1][0] == s:
                    runs[-1] = (s, i + 1)
                else:
                    runs.append((s, i + 1))
            text = runs[-1][0]
            for s, end in reversed(runs[:-1]):
                text = f"{s} if t < {end} else {text}"
            try:
                parse(text, VARIABLES, replace(DEFAULT_LIMITS, max_chars=max_chars))
            except ExprError:
                pass
            else:
                return text
            if digits > 1:
                break
    return "0"


class RandomAgent:
    """A random constant control, or a random linear feedback on the position error and velocity."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def act(self, hints: str, observation: str) -> str:
        if self.rng.random() < 0.5:
            return _answer(_num(float(self.rng.uniform(-1, 1)), 2))
        k1, k2 = (float(k) for k in self.rng.uniform(-1, 1, size=2))
        return _answer(f"{_num(k1, 2)} * (x_target - x) + {_num(k2, 2)} * v")

    def write_hints(self, hints: str, transcript: list[TurnText], reward: float) -> str:
        return hints


class PlanningAgent:
    """Plans open-loop controls with known (oracle) or estimated (learner) dynamics.

    Without dynamics it answers :data:`PROBE`. ``write_hints`` refits ``a`` and ``b`` to the
    feedback table of the task just played; when the table cannot determine both (too few rows or
    no independent pair), the previous estimate is kept.
    """

    def __init__(self, dynamics: tuple[float, float] | None = None) -> None:
        self.fixed = dynamics

    def _dynamics(self, hints: str) -> tuple[float, float] | None:
        if self.fixed is not None:
            return self.fixed
        m = _HINT_RE.search(hints)
        return (float(m.group(1)), float(m.group(2))) if m else None

    def act(self, hints: str, observation: str) -> str:
        dyn = self._dynamics(hints)
        task = parse_task(observation)
        if dyn is None or task is None or dyn[1] == 0.0:
            return _answer(PROBE)
        controls = plan_controls(dyn[0], dyn[1], *task)
        return _answer(sequence_expression(controls))

    def write_hints(self, hints: str, transcript: list[TurnText], reward: float) -> str:
        estimate = None
        for turn in transcript:
            found = estimate_dynamics(turn.feedback)
            estimate = found or estimate
        if estimate is None:
            return hints
        a, b = estimate
        return (f"Dynamics estimate: a = {a:.4f}, b = {b:.4f} (fitted to v[t+1] = a*v[t] + b*u[t] on the "
                "feedback table). Plan the controls with these values.")


def estimate_dynamics(feedback: str) -> tuple[float, float] | None:
    """Least-squares ``(a, b)`` from a feedback table's consecutive rows, or None if underdetermined."""
    states: dict[int, tuple[float, float | None]] = {}  # t -> (v_t, u_t applied; None on the end row)
    for m in _ROW_RE.finditer(feedback):
        states[int(m.group(1))] = (float(m.group(3)), float(m.group(5)))
    for m in _END_RE.finditer(feedback):
        states[int(m.group(1))] = (float(m.group(3)), None)
    rows, targets = [], []
    for t, (v, u) in states.items():
        if u is not None and t + 1 in states:
            rows.append((v, u))
            targets.append(states[t + 1][0])
    if len(rows) < 2:
        return None
    design = np.array(rows)
    if np.linalg.matrix_rank(design, tol=1e-3) < 2:
        return None
    (a, b), *_ = np.linalg.lstsq(design, np.array(targets), rcond=None)
    return float(a), float(b)


def random_agent(pack: Pack, rng: np.random.Generator) -> RandomAgent:
    return RandomAgent(rng)


def oracle_agent(pack: Pack, rng: np.random.Generator) -> PlanningAgent:
    return PlanningAgent(dynamics=(float(pack.world["a"]), float(pack.world["b"])))


def learner_agent(pack: Pack, rng: np.random.Generator) -> PlanningAgent:
    return PlanningAgent()
