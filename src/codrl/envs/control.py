"""Optimal Control: steer a point with hidden linear dynamics by writing one policy expression.

Every pack shares two hidden numbers ``a`` and ``b``. A point on a line has position ``x`` and
velocity ``v``; at each step ``t = 0 .. H-1`` a control ``u`` is applied and

    u_applied = clip(u, -1, 1)
    v[t+1]    = a * v[t] + b * u_applied
    x[t+1]    = x[t] + v[t+1]

with ``a ~ U(a_range)`` (default 0.55-1.20) and ``|b| ~ U(b_range)`` (default 0.35-1.5) with a
random sign. A task gives a start ``(x0, v0)``, a target position ``x_target`` (the target velocity
``v_target`` is 0) and the horizon ``H``. The agent answers with ONE policy expression in the safe
language of :mod:`codrl.envs.expr` over the variables :data:`VARIABLES`; the environment evaluates
it at every step (it never runs model text as Python) and scores the end state::

    L = (x_H - x_target)^2 + 2 (v_H - v_target)^2 + 0.03 * sum_t u_applied[t]^2,   R = 1 / (1 + L)

The control cost uses the *applied* (clipped) controls, the same numbers the feedback table shows.
The feedback table lists every step (t, x, v, the policy's value and the applied u) and the end
state, L and R. Any two rows with independent ``(v[t], u[t])`` determine ``a`` and ``b``
(``v[t+1] = a v[t] + b u[t]``), so what carries over within a pack is the dynamics, above all
the sign of ``b``.

Turns: by default (``attempts=1``) a task is one reply: one expression, evaluated over the whole
horizon; the task's reward is its R. With ``attempts=k > 1`` the agent sees the table after each
attempt and may answer again, up to ``k`` replies; the reward is that of the last attempt.

Failures: a malformed reply (no single ``<answer>...</answer>`` pair, or an expression that the
language rejects) ends the task at once with reward ``malformed_reward`` (default 0; the reference
study uses -0.1) and ``valid=False`` (the scored failure of every codrl environment). A runtime
error (division by zero, a value beyond 1e6, ...) at some step scores 0 with ``valid=True``; the
feedback names the step and shows the table up to it.

Previous policy (``show_previous_policy=True``, as in the reference study's final runs): each
task's first observation also shows the policy of the lifecycle's latest earlier task that ran
over its whole horizon: its start, target and horizon, the expression, its reward and its signed
terminal residuals ``x_H - x_target`` and ``v_H - v_target``. It lives in the lifecycle's
:class:`ControlState` (from :meth:`OptimalControl.new_state`), so concurrent repeats of a pack
never see each other's policies.

World format: ``{"a": 0.8123, "b": -1.0734}`` (rounded to 4 decimals).
Task spec format: ``{"x0": 1.23, "v0": -0.45, "x_target": 4.1, "v_target": 0.0, "horizon": 12}``
(start and target rounded to 2 decimals).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, get_args

import numpy as np
from pydantic import Field

from codrl.envs.base import CoDEnv, EnvParams, Episode, Pack, Pair, StepResult, Task, answer_span, parse_params
from codrl.envs.expr import DEFAULT_LIMITS, FUNCTIONS, ExprError, Expression, parse

#: The variables a policy expression may read.
VARIABLES: tuple[str, ...] = ("x", "v", "t", "x_target", "v_target", "horizon", "remaining_steps")
Preset = Literal["easy", "medium", "hard"]
PRESETS: tuple[str, ...] = get_args(Preset)
#: Preset -> default task knobs (the reference study's numbers; "hard" is what the study used).
PRESET_DEFAULTS: dict[str, dict[str, Any]] = {
    "easy": {"horizon": 8, "x0_max": 1.0, "v0_max": 0.5, "target_max": 3.0},
    "medium": {"horizon": 12, "x0_max": 2.0, "v0_max": 1.0, "target_max": 5.0},
    "hard": {"horizon": 12, "x0_max": 2.0, "v0_max": 1.5, "target_max": 8.0},
}
#: Knobs common to every preset.
COMMON_DEFAULTS: dict[str, Any] = {"a_range": (0.55, 1.20), "b_range": (0.35, 1.5), "attempts": 1}
_MEDIUM = PRESET_DEFAULTS["medium"]
#: Mean reward of the scripted random agent (a random constant or a random linear feedback
#: expression, see ``codrl.envs.scripted.control``) with the preset's default knobs, measured with
#: ``codrl.eval.checklist.reward_matrix`` over 2000 packs of 4 test tasks (seed 0; standard error
#: about 0.003; "easy" and "medium" under the name ``control``, "hard" under ``control_hard``).
CHANCE_REWARD: dict[str, float] = {"easy": 0.1694, "medium": 0.1338, "hard": 0.1209}
VELOCITY_WEIGHT = 2.0
CONTROL_WEIGHT = 0.03
U_MAX = 1.0

_LEAD_RE = re.compile(r"^\s*(?:u(?:\s*\([^()]{0,60}\))?\s*=(?!=))", re.IGNORECASE)

FORMAT_HINT = ("Reply with exactly one policy expression as <answer>EXPRESSION</answer>, "
               "e.g. <answer>clip(0.5 * (x_target - x) - v, -1, 1)</answer>.")


def _fmt(value: float, digits: int = 4) -> str:
    """A number with fixed decimals and no negative zero."""
    text = f"{value:.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0.0 else text


def extract_answer(reply: Any, max_chars: int = DEFAULT_LIMITS.max_chars) -> str | tuple[None, str]:
    """The text inside ``reply``'s single ``<answer>...</answer>``, or ``(None, reason)``.

    Exactly one opening and one closing answer tag (any case, spaces before ``>`` allowed), in that
    order, with at most ``4 * max_chars`` characters between them (see
    :func:`~codrl.envs.base.answer_span`; the expression parser then bounds the expression itself
    by ``max_chars``); text outside the tags is ignored. Surrounding whitespace and backticks and a
    leading ``u =`` (or ``u(x, v, t) =``) are removed. Linear time on any input; never raises.
    """
    span = answer_span(reply, 4 * max_chars, f"the expression is too long (at most {max_chars} characters)")
    if isinstance(span, str):
        return None, span
    text = reply[span[0]:span[1]].strip()
    if len(text) >= 2 and text.startswith("`") and text.endswith("`"):
        text = text.strip("`").strip()
    m = _LEAD_RE.match(text)
    if m:
        text = text[m.end():].strip()
    return text


@dataclass(frozen=True)
class PolicyRecord:
    """A policy that ran over a whole task, as the next task's prompt shows it."""

    expression: str
    spec: dict[str, Any]
    reward: float
    x_residual: float  # x_H - x_target
    v_residual: float  # v_H - v_target


@dataclass
class ControlState:
    """One lifecycle's memory of the latest policy that ran over a whole task (``previous``).

    Created by :meth:`OptimalControl.new_state`, changed by the episodes of that lifecycle only.
    """

    pack_id: str
    previous: PolicyRecord | None = None


def render_previous(record: PolicyRecord) -> str:
    """The evidence block of ``show_previous_policy``: an earlier task's policy and how it ended."""
    s = record.spec
    return (
        "Evidence from an earlier task of this environment (another start and target, the same hidden a "
        "and b; it is not a result of the current task):\n"
        f"  earlier start x = {_fmt(s['x0'], 2)}, v = {_fmt(s['v0'], 2)}; target x_target = "
        f"{_fmt(s['x_target'], 2)}, v_target = {_fmt(s['v_target'], 2)}; horizon = {int(s['horizon'])}\n"
        f"  its policy: {record.expression}\n"
        f"  its reward: {record.reward:.4f}\n"
        f"  terminal residuals: x_end - x_target = {record.x_residual:+.4f}, v_end - v_target = "
        f"{record.v_residual:+.4f}\n"
        "Adapt that policy to the current task, or write a new one if it did poorly."
    )


@dataclass
class Rollout:
    """What one policy did over the horizon.

    ``rows`` holds ``(t, x_t, v_t, policy value, u_applied)`` for every step that ran; ``x_end`` and
    ``v_end`` the state after the last step that ran. ``error`` is the runtime error's message and
    ``error_step`` its step (both None when every step ran); ``loss`` and ``reward`` are None then.
    """

    rows: list[tuple[int, float, float, float, float]] = field(default_factory=list)
    x_end: float = 0.0
    v_end: float = 0.0
    loss: float | None = None
    reward: float | None = None
    error: str | None = None
    error_step: int | None = None


def task_loss(x_end: float, v_end: float, x_target: float, v_target: float, controls: Sequence[float]) -> float:
    """``(x_H - x*)^2 + 2 (v_H - v*)^2 + 0.03 sum u^2`` with the applied controls."""
    return ((x_end - x_target) ** 2 + VELOCITY_WEIGHT * (v_end - v_target) ** 2
            + CONTROL_WEIGHT * float(sum(u * u for u in controls)))


def simulate(a: float, b: float, spec: dict[str, Any], policy: Expression) -> Rollout:
    """Run ``policy`` for the task's horizon under dynamics ``(a, b)``. Never raises."""
    x, v = float(spec["x0"]), float(spec["v0"])
    xt, vt, horizon = float(spec["x_target"]), float(spec["v_target"]), int(spec["horizon"])
    out = Rollout(x_end=x, v_end=v)
    for t in range(horizon):
        values = {"x": x, "v": v, "t": float(t), "x_target": xt, "v_target": vt, "horizon": float(horizon),
                  "remaining_steps": float(horizon - t)}
        try:
            raw = policy.evaluate(values)
        except ExprError as e:
            out.error, out.error_step = str(e), t
            return out
        u = min(U_MAX, max(-U_MAX, raw))
        out.rows.append((t, x, v, raw, u))
        v = a * v + b * u
        x = x + v
        out.x_end, out.v_end = x, v
        if not (math.isfinite(x) and math.isfinite(v)):  # pragma: no cover - bounded by the knob limits
            out.error, out.error_step = "the state became non-finite", t
            return out
    out.loss = task_loss(x, v, xt, vt, [r[4] for r in out.rows])
    out.reward = 1.0 / (1.0 + out.loss)
    return out


def render_rollout(spec: dict[str, Any], roll: Rollout) -> str:
    """The feedback table of a rollout: every step, the end state, and L and R (or the error)."""
    lines = [" t |        x |        v |   policy |  u (applied)"]
    for t, x, v, raw, u in roll.rows:
        lines.append(f"{t:2d} | {_fmt(x):>8} | {_fmt(v):>8} | {_fmt(raw):>8} | {_fmt(u):>8}")
    xt, vt = float(spec["x_target"]), float(spec["v_target"])
    if roll.error is not None:
        step = roll.error_step
        lines.append(f"{step:2d} | {_fmt(roll.x_end):>8} | {_fmt(roll.v_end):>8} |    error |")
        lines.append(f"Runtime error at step t = {step}: {roll.error}. The policy must give a number at every "
                     "step. Reward 0.")
        return "\n".join(lines)
    horizon = int(spec["horizon"])
    lines.append(f"{horizon:2d} | {_fmt(roll.x_end):>8} | {_fmt(roll.v_end):>8} |  (end)   |")
    us = [r[4] for r in roll.rows]
    assert roll.loss is not None and roll.reward is not None
    pos = (roll.x_end - xt) ** 2
    vel = VELOCITY_WEIGHT * (roll.v_end - vt) ** 2
    ctl = CONTROL_WEIGHT * sum(u * u for u in us)
    lines.append(f"End state: x = {_fmt(roll.x_end)} (target {_fmt(xt, 2)}), v = {_fmt(roll.v_end)} "
                 f"(target {_fmt(vt, 2)}).")
    lines.append(f"Loss L = (x_end - x_target)^2 + 2*(v_end - v_target)^2 + 0.03*sum(u^2) = {pos:.4f} + {vel:.4f} + "
                 f"{ctl:.4f} = {roll.loss:.4f}. Reward R = 1/(1+L) = {roll.reward:.4f}.")
    return "\n".join(lines)


class OptimalControl(CoDEnv):
    """Optimal Control: steer hidden linear dynamics (v' = a v + b u, x' = x + v') with one policy expression.

    Parameters: the keywords of :class:`OptimalControl.Params` (one left out or None takes the
    preset's value; presets ``easy``, ``medium``, ``hard``, see :data:`PRESET_DEFAULTS`).
    Rewards: ``1 / (1 + L)``; ``malformed_reward`` for a malformed reply (which ends the task,
    ``valid=False``); 0 for a runtime error of the policy.
    """

    reply_prefix = "<answer>"
    stop_strings = ("</answer>",)
    #: A continuous reward: 1/(1+L) >= 0.9 means the final-state loss L is at most about 0.11.
    success_threshold = 0.9

    class Params(EnvParams):
        """Optimal Control's parameters: the knobs left out take the preset's value."""

        variant_field = "preset"
        variant_defaults = {p: {**PRESET_DEFAULTS[p], **COMMON_DEFAULTS} for p in PRESETS}
        name: str = Field("control", min_length=1, description="Name of the environment (pack ids, reports).")
        preset: Preset = Field("medium", description="Preset of the task knobs (see PRESET_DEFAULTS).")
        horizon: int = Field(_MEDIUM["horizon"], strict=True, ge=1, le=50, description="Steps per task, 1-50.")
        x0_max: float = Field(_MEDIUM["x0_max"], strict=True, ge=0.0, le=100.0,
                              description="Start positions are uniform in [-x0_max, x0_max]; 0-100.")
        v0_max: float = Field(_MEDIUM["v0_max"], strict=True, ge=0.0, le=100.0,
                              description="Start velocities are uniform in [-v0_max, v0_max]; 0-100.")
        target_max: float = Field(_MEDIUM["target_max"], strict=True, ge=0.0, le=100.0,
                                  description="Target positions are uniform in [-target_max, target_max]; 0-100.")
        a_range: Pair[Annotated[float, Field(strict=True, gt=0.0, le=1.5)]] = Field(
            COMMON_DEFAULTS["a_range"], description="Range (low, high) of the hidden a, 0 < low <= high <= 1.5.")
        b_range: Pair[Annotated[float, Field(strict=True, gt=0.0, le=10.0)]] = Field(
            COMMON_DEFAULTS["b_range"], description="Range (low, high) of |b| (its sign is random), "
                                                    "0 < low <= high <= 10.")
        attempts: int = Field(COMMON_DEFAULTS["attempts"], strict=True, ge=1, le=5,
                              description="Replies per task, 1-5; the last attempt's reward counts.")
        show_previous_policy: bool = Field(False, strict=True, description=(
            "Show each task the lifecycle's latest earlier policy that ran, its reward and terminal residuals."))
        malformed_reward: float = Field(0.0, strict=True, ge=-1.0, le=0.0,
                                        description="Reward of a malformed reply, -1-0 (the reference uses -0.1).")

    def __init__(self, **params: Any) -> None:
        p = parse_params(self.Params, params)
        self.name = p.name
        self.preset = p.preset
        self.horizon = p.horizon
        self.x0_max = p.x0_max
        self.v0_max = p.v0_max
        self.target_max = p.target_max
        self.a_range = p.a_range
        self.b_range = p.b_range
        self.attempts = p.attempts
        self.max_turns = self.attempts
        self.show_previous_policy = p.show_previous_policy
        self.malformed_reward = p.malformed_reward
        self.reward_range = (min(0.0, self.malformed_reward), 1.0)
        # The measured chance level holds only for the preset's own defaults (the random agent's
        # replies always parse, so malformed_reward does not change it).
        self.chance_reward = CHANCE_REWARD[p.preset] if p.at_defaults(*p.variant_defaults[p.preset]) else None
        self.system_prompt = self._build_system_prompt()

    def _build_system_prompt(self) -> str:
        attempts = ("You get one reply per task: the policy is run once over the whole horizon and scored."
                    if self.attempts == 1 else
                    f"You get up to {self.attempts} replies per task: after each one you see how your policy "
                    "did and may answer with a better one; the last reply's score counts.")
        return (
            "You are steering a point that moves along a line. Its state is its position x and velocity v. "
            "At every step t = 0, 1, ..., H-1 a control u is applied, and the system moves:\n"
            "  u_applied = clip(u, -1, 1)\n"
            "  v[t+1] = a * v[t] + b * u_applied\n"
            "  x[t+1] = x[t] + v[t+1]\n"
            "The numbers a and b are hidden (a > 0; b is not 0 and may be NEGATIVE, so pushing may move you "
            "backwards). They are the same in every task of this environment: work them out from the feedback "
            "and remember them, as that is the key to solving later tasks. Any two rows of the feedback table "
            "give two equations v[t+1] = a * v[t] + b * u[t] that you can solve for a and b.\n"
            "You do not choose u step by step. You write ONE policy expression; it is evaluated at every step "
            "to give u. It may use the variables x, v (the current state), t (the step, 0 to H-1), x_target, "
            "v_target, horizon (H) and remaining_steps (H - t); numbers; + - * / ** and unary -; comparisons "
            "< <= > >= == != (true is 1, false is 0); and, or, not; the conditional A if COND else B; and the "
            f"functions {', '.join(f for f in FUNCTIONS if f != 'where')} and where(COND, A, B) "
            "(clip(a, lo, hi), sign(a) is -1, 0 or 1, min and max take 2 or more arguments). Nothing else: no "
            "assignments, no other names or functions, no brackets [ ]. At most "
            f"{DEFAULT_LIMITS.max_chars} characters. A division by zero, an exponent beyond +-"
            f"{DEFAULT_LIMITS.max_exponent:g}, or any value beyond +-{DEFAULT_LIMITS.max_magnitude:,.0f} during "
            "evaluation is a runtime error and scores 0.\n"
            "Score: after the last step, L = (x_H - x_target)^2 + 2*(v_H - v_target)^2 + 0.03 * (sum of the "
            "applied u squared), and the reward is 1/(1+L): end at the target, at rest, with little control "
            "effort. After the task you see a table of every step (t, x, v, the policy's value, the applied u) "
            f"and the end state. {attempts}\n"
            "Answer with exactly one <answer>EXPRESSION</answer> and put only the expression inside it, e.g. "
            "<answer>clip(0.5 * (x_target - x) - v, -1, 1)</answer>. A reply that is not exactly one such "
            "answer, or whose expression is not allowed, scores 0."
        )

    # -- CoDEnv -------------------------------------------------------------------------------
    def sample_world(self, rng: np.random.Generator) -> dict[str, Any]:
        """Draw the hidden dynamics: ``{"a": a, "b": b}`` with a random sign of ``b``."""
        a = float(rng.uniform(*self.a_range))
        b = float(rng.uniform(*self.b_range)) * (1.0 if rng.random() < 0.5 else -1.0)
        return {"a": round(a, 4), "b": round(b, 4)}

    def sample_task(self, world: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        """Draw a start, a target (``v_target`` 0) and the horizon."""
        x0, v0, xt = (float(rng.uniform(-m, m)) for m in (self.x0_max, self.v0_max, self.target_max))
        return {"x0": round(x0, 2) + 0.0, "v0": round(v0, 2) + 0.0, "x_target": round(xt, 2) + 0.0,
                "v_target": 0.0, "horizon": self.horizon}

    def new_state(self, pack: Pack) -> ControlState:
        """A fresh lifecycle memory (no earlier policy yet) for one lifecycle of ``pack``."""
        return ControlState(pack_id=pack.pack_id)

    def start(self, pack: Pack, task: Task, state: Any = None) -> ControlEpisode:
        """Begin an episode of ``task`` under the dynamics of ``pack.world``; ``state`` is this
        lifecycle's :class:`ControlState` (None: a fresh one that lives only for this episode)."""
        world = pack.world if isinstance(pack.world, dict) else {}
        try:
            a, b = float(world["a"]), float(world["b"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{self.name}: world needs numbers 'a' and 'b', got {pack.world!r}") from None
        if state is None:
            state = ControlState(pack_id=pack.pack_id)
        elif not isinstance(state, ControlState) or state.pack_id != pack.pack_id:
            raise ValueError(f"{self.name}: state must be this pack's ControlState from new_state(), got {state!r}")
        return ControlEpisode(a, b, dict(task.spec), self.attempts, state=state,
                              show_previous=self.show_previous_policy, malformed_reward=self.malformed_reward)


class ControlEpisode(Episode):
    """One task: up to ``attempts`` policy expressions, each run over the whole horizon.

    ``info`` of each step holds ``event`` (``scored``, ``runtime_error``, ``invalid`` or ``over``;
    ``internal_error`` only if scoring itself failed, which the tests rule out),
    ``attempt``, ``expression`` (the extracted text, or None), and when the policy ran ``loss``,
    ``x_end``, ``v_end``, ``controls`` (applied), plus ``error``/``error_step`` for a runtime error.
    """

    def __init__(self, a: float, b: float, spec: dict[str, Any], attempts: int = 1, *,
                 state: ControlState | None = None, show_previous: bool = False,
                 malformed_reward: float = 0.0) -> None:
        self.a, self.b = a, b
        self.spec = spec
        self.attempts = attempts
        self.state = state if state is not None else ControlState(pack_id="")
        self.show_previous = show_previous
        self.malformed_reward = malformed_reward
        #: The earlier policy this task shows (read once, before this task can replace it).
        self.previous = self.state.previous if show_previous else None
        self.reset()

    def describe_task(self) -> str:
        s = self.spec
        h = int(s["horizon"])
        return (f"Task: start at x = {_fmt(s['x0'], 2)}, v = {_fmt(s['v0'], 2)}. Reach x_target = "
                f"{_fmt(s['x_target'], 2)} with v_target = {_fmt(s['v_target'], 2)} after horizon = {h} steps "
                f"(t = 0 to {h - 1}).\n"
                "Score: L = (x_end - x_target)^2 + 2*(v_end - v_target)^2 + 0.03*sum(u^2), reward 1/(1+L).\n"
                f"Variables: {', '.join(VARIABLES)}.\n{FORMAT_HINT}")

    def reset(self) -> str:
        """Start the task over and return its description."""
        self.attempt = 0
        self.done = False
        prefix = f"Attempt 1 of {self.attempts}. " if self.attempts > 1 else ""
        evidence = f"\n\n{render_previous(self.previous)}" if self.previous is not None else ""
        return prefix + self.describe_task() + evidence

    def step(self, reply: str) -> StepResult:
        """Parse ``reply``'s expression, run it over the horizon and score it. Never raises."""
        if self.done:
            return StepResult(None, 0.0, True, "The task is already over.", True,
                              {"event": "over", "attempt": self.attempt, "expression": None})
        self.attempt += 1
        try:
            return self._step(reply)
        except Exception as e:  # noqa: BLE001 # pragma: no cover - last guard: a reply must never crash a rollout
            self.done = True
            return StepResult(None, 0.0, True, f"Internal error while scoring the reply ({type(e).__name__}). "
                              "Reward 0.", False,
                              {"event": "internal_error", "attempt": self.attempt, "expression": None})

    def _step(self, reply: str) -> StepResult:
        text = extract_answer(reply)
        info: dict[str, Any] = {"attempt": self.attempt, "expression": None}
        if isinstance(text, tuple):
            return self._invalid(text[1], info)
        info["expression"] = text
        try:
            policy = parse(text, VARIABLES)
        except ExprError as e:
            return self._invalid(f"the expression is not allowed: {e}", info)
        roll = simulate(self.a, self.b, self.spec, policy)
        table = render_rollout(self.spec, roll)
        info.update(x_end=roll.x_end, v_end=roll.v_end, controls=[r[4] for r in roll.rows], loss=roll.loss)
        if roll.error is not None:
            info.update(event="runtime_error", error=roll.error, error_step=roll.error_step)
            reward = 0.0
        else:
            info["event"] = "scored"
            reward = float(roll.reward or 0.0)
            # the lifecycle's latest policy that ran over the whole horizon (shown to later tasks)
            self.state.previous = PolicyRecord(text, dict(self.spec), reward,
                                               roll.x_end - float(self.spec["x_target"]),
                                               roll.v_end - float(self.spec["v_target"]))
        feedback = f"Your policy: {text}\n{table}"
        last = self.attempt >= self.attempts
        if last:
            self.done = True
            return StepResult(None, reward, True, feedback + "\nThe task is over.", True, info)
        observation = (f"{feedback}\n\nAttempt {self.attempt + 1} of {self.attempts}: you may answer with a "
                       f"better policy; the last attempt's score counts.\n{self.describe_task()}")
        return StepResult(observation, 0.0, False, feedback, True, info)

    def _invalid(self, reason: str, info: dict[str, Any]) -> StepResult:
        self.done = True
        info["event"] = "invalid"
        reward = self.malformed_reward + 0.0
        feedback = f"Invalid answer: {reason}. {FORMAT_HINT} The task ended with reward {reward:g}."
        return StepResult(None, reward, True, feedback, False, info)
