"""PDE Discovery: identify the hidden reaction term of a reaction-diffusion equation.

Every pack shares one hidden law ``u_t = u_xx + f(u)`` on ``x, t in [0, 1]`` with ``u = 0`` at both
ends. The reaction term ``f(u)`` is a sparse combination of the 15-term library of
:mod:`codrl.envs.pde.library` (1-2 terms in training worlds, 1-3 in hard ones). Each task runs a
new *experiment*: a new initial profile ``u(x, 0)`` whose amplitude comes from its own stratum of
the amplitude range, so the tasks of a pack probe different ranges of ``u``.

Each turn the agent takes one action (see :data:`FORMAT_HINT`): it samples points ``(x, t)`` of the
current experiment (6 per task), asks for a summary of the evidence, runs a sparse regression on
the *pooled* points (everything sampled so far in this lifecycle), or commits an equation from
its last regression's table, which ends the task. The points of a lifecycle live in its
:class:`PDEState` (from :meth:`PDEDiscovery.new_state`), together with the simulated experiments;
two lifecycles never share them.

One regression looks at no more than ``regress_terms`` (default 3) library terms, so a task's
turns cannot check the whole library and still end in a combined fit: which terms matter is what
notes carry from task to task. Terms that look alike for small ``|u|`` (``u``, ``sin(u)``,
``tanh(u)``, ``u/(1+u^2)``, ...) are told apart only by points with large ``|u|``.

Reward (never shown to the model; the feedback after a commit only confirms it):
``loss = sum_terms |c_hat - c| / sum |c| + max(0, #committed terms - #true terms)`` and
``R = 1 / (1 + loss)``; 0 for a task never committed or for a malformed reply.

World format: ``{"template": i, "equation": {term: coef, ...}, "text": "1.2*u - 0.5*u^3"}``.
Task spec format: ``{"amplitude": A, "modes": [[k, w], ...], "stratum": s, "noise_seed": n}``: the
initial profile is ``A sin(pi x) sum_j w_j cos(k_j pi (x - 1/2))`` (see
:func:`~codrl.envs.pde.simulate.initial_profile`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, get_args

import numpy as np
from pydantic import AfterValidator, Field

from codrl.envs.base import CoDEnv, EnvParams, Episode, Pack, Pair, StepResult, Task, answer_span, parse_params
from codrl.envs.pde.library import (
    HARD_TEMPLATES,
    TERM_NAMES,
    TRAIN_TEMPLATES,
    Equation,
    EquationError,
    canonical,
    equation_support,
    evaluate,
    format_equation,
    parse_equation,
    parse_term_list,
)
from codrl.envs.pde.regression import Fit, refit, sparse_regression
from codrl.envs.pde.simulate import initial_profile, max_abs, simulate, x_grid

Variant = Literal["train", "hard"]
VARIANTS: tuple[str, ...] = get_args(Variant)
TEMPLATES = {"train": TRAIN_TEMPLATES, "hard": HARD_TEMPLATES}
#: Variant -> default knobs. Hard worlds have up to 3 terms, so the regression cap is 3.
VARIANT_DEFAULTS: dict[str, dict[str, Any]] = {
    "train": {"term_cap": 2},
    "hard": {"term_cap": 3},
}
#: Mean reward of the scripted random agent (a random action each turn; commits a random rank of
#: the last table) with the default knobs, measured with ``codrl.eval.checklist.reward_matrix`` over
#: 400 packs of 4 test tasks (seed 0): 0.0546 (train), 0.0533 (hard); per-task sd 0.14. Most random
#: tasks never commit; it rises over a pack (0.017 -> 0.08) because pooled points let early random
#: regressions succeed.
CHANCE_REWARD: dict[str, float] = {"train": 0.055, "hard": 0.053}
#: Sample grid: t is read at multiples of 1/T_STEPS (nt - 1 must be a multiple of it).
T_STEPS = 200
#: The world's stability check: |u| must stay below this from the largest initial profiles.
U_LIMIT = 3.0
#: Rows listed by a summary at most; equations listed by a regression.
SUMMARY_ROWS, TABLE_ROWS = 60, 5
#: Longest answer content parsed (characters); longer is a format error.
MAX_CONTENT = 1000

FORMAT_HINT = ("Reply with exactly one action inside <answer>...</answer>: 'sample X T; X T', 'summary', "
               "'regress TERM, TERM', 'regress candidates: EQUATION | EQUATION', 'commit EQUATION' or 'commit N'.")
INVALID_FEEDBACK = "Invalid answer ({why}). " + FORMAT_HINT + " The task ended with reward 0."

_NUM = r"[+-]?(?:\d{1,6}(?:\.\d{0,8})?|\.\d{1,8})"
_POINT_RE = re.compile(rf"[(\[]?\s*({_NUM})\s*(?:,\s*|\s+)({_NUM})\s*[)\]]?")
_RANK_RE = re.compile(r"#?\s*(\d{1,3})")


@dataclass(frozen=True)
class Action:
    """A parsed reply: ``kind`` is sample, summary, regress, candidates or commit."""

    kind: str
    points: tuple[tuple[float, float], ...] = ()
    terms: tuple[str, ...] = ()
    supports: tuple[tuple[str, ...], ...] = ()
    equation: Equation | None = None
    rank: int | None = None


def parse_action(reply: Any) -> tuple[Action | None, str]:
    """Parse a full reply into an :class:`Action`; on failure ``(None, reason)``. Never raises.

    The syntax is checked here (exactly one ``<answer>...</answer>`` pair with at most
    :data:`MAX_CONTENT` characters inside, see :func:`~codrl.envs.base.answer_span`; the verb,
    numbers, library terms, the equation grammar); the limits of an episode (points left, terms per
    regression, what may be committed) are checked by the episode, where breaking them only costs
    the turn.
    """
    try:
        return _parse_action(reply)
    except EquationError as e:
        return None, str(e)
    except (ValueError, OverflowError) as e:  # pragma: no cover - defensive: the parser checks its input
        return None, f"unreadable action: {e}"


def _parse_action(reply: Any) -> tuple[Action | None, str]:
    span = answer_span(reply, MAX_CONTENT)
    if isinstance(span, str):
        return None, span
    content = reply[span[0]:span[1]].strip()
    words = content.split(None, 1)
    verb, rest = (words[0].lower(), words[1].strip() if len(words) > 1 else "") if words else ("", "")
    if verb == "summary":
        return (Action("summary"), "") if not rest else (None, "'summary' takes nothing after it")
    if verb == "sample":
        items = [p.strip() for p in rest.split(";")]
        if items and not items[-1]:
            items.pop()  # a trailing ';'
        if not items or len(items) > 100:
            return None, "write the points as 'sample X T; X T', e.g. 'sample 0.5 0; 0.25 0.01'"
        points = []
        for item in items:
            m = _POINT_RE.fullmatch(item)
            if m is None:
                return None, f"cannot read the point {item[:30]!r}: write 'X T' with two numbers"
            points.append((float(m.group(1)), float(m.group(2))))
        return Action("sample", points=tuple(points)), ""
    if verb == "regress":
        low = rest.lower()
        if low.startswith("candidates"):
            body = rest[len("candidates"):].lstrip()
            if not body.startswith(":"):
                return None, "write 'regress candidates: EQUATION | EQUATION'"
            eqs = body[1:].split("|")
            if len(eqs) > len(TERM_NAMES):
                return None, f"at most {len(TERM_NAMES)} candidate equations"
            supports = []
            for text in eqs:
                eq = parse_equation(text)
                if not eq:
                    return None, "a candidate equation has no term"
                supports.append(equation_support(eq))
            return Action("candidates", supports=tuple(supports)), ""
        return Action("regress", terms=tuple(parse_term_list(rest, len(TERM_NAMES)))), ""
    if verb == "commit":
        m = _RANK_RE.fullmatch(rest)
        if m is not None:
            return Action("commit", rank=int(m.group(1))), ""
        eq = parse_equation(rest)
        return Action("commit", equation=eq), ""
    return None, f"unknown action {verb[:20]!r}"


def score_equation(committed: Equation, truth: Equation) -> float:
    """``1 / (1 + sum |c_hat - c| / sum |c| + max(0, extra terms))`` over the union of terms."""
    names = set(committed) | set(truth)
    err = sum(abs(committed.get(n, 0.0) - truth.get(n, 0.0)) for n in names)
    norm = sum(abs(c) for c in truth.values()) or 1.0
    extra = max(0, len(committed) - len(truth))
    return float(1.0 / (1.0 + err / norm + extra))


@dataclass
class PDEState:
    """One lifecycle's evidence: the pooled points and the simulated experiments.

    ``points`` holds ``(position, x, t, u, y)`` rows in the order they were sampled; ``trajectories``
    maps a task spec (as JSON) to its recorded trajectory (levels ``t = k / 200``, all x points).
    Created by :meth:`PDEDiscovery.new_state`, changed by the episodes of that lifecycle only.
    """

    pack_id: str
    points: list[tuple[int, float, float, float, float]] = field(default_factory=list)
    trajectories: dict[str, np.ndarray] = field(default_factory=dict)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The pooled ``(u, y)`` as arrays."""
        if not self.points:
            return np.zeros(0), np.zeros(0)
        data = np.asarray(self.points, dtype=float)
        return data[:, 3], data[:, 4]


def _nt_on_sample_grid(nt: int) -> int:
    if (nt - 1) % T_STEPS:
        raise ValueError(f"nt - 1 must be a multiple of {T_STEPS} (e.g. 201, 401, 2001)")
    return nt


class PDEDiscovery(CoDEnv):
    """PDE Discovery: sample a reaction-diffusion field and identify its hidden reaction term f(u).

    Knobs (the keywords of :class:`PDEDiscovery.Params`; defaults from ``variant``, ``"train"`` or
    ``"hard"``): ``term_cap`` (largest support a
    regression tries; 2 train, 3 hard), ``regress_terms`` (library terms one regression may use, 3),
    ``points_per_task`` (6), ``turns`` (replies per task, 6), ``amplitude_range`` ((1.0, 2.5): the
    peak |u(x, 0)|, stratified over a pack), ``magnitude_range`` ((0.5, 2.0): |coefficients| of f),
    ``nx``/``nt`` (grid: 257 x 2001), ``noise_u``/``noise_y`` (0.002, 0.0005: Gaussian noise of a sample).
    Templates (which terms and signs f has) come from the variant: 16 training templates with 1-2
    terms, 14 other hard ones with 1-3 terms.
    """

    reply_prefix = "<answer>"
    stop_strings = ("</answer>",)
    #: A continuous reward 1/(1 + loss): >= 0.9 means a coefficient error and extra terms of at most 0.11.
    success_threshold = 0.9
    #: The score compares the committed coefficients with the hidden ones: the model never sees it
    #: (not in the feedback, not in the context step after a task).
    reward_visible = False

    class Params(EnvParams):
        """PDE Discovery's parameters: ``term_cap`` left out takes the variant's value."""

        variant_field = "variant"
        variant_defaults = VARIANT_DEFAULTS
        name: str = Field("pde", min_length=1, description="Name of the environment (pack ids, reports).")
        variant: Variant = Field("train", description=(
            "Templates of f: train (16 templates, 1-2 terms) or hard (14 other templates, 1-3 terms)."))
        term_cap: int = Field(VARIANT_DEFAULTS["train"]["term_cap"], strict=True, ge=1, le=4,
                              description="Largest support a regression tries, 1-4 (train 2, hard 3).")
        regress_terms: int = Field(3, strict=True, ge=1, le=len(TERM_NAMES),
                                   description=f"Library terms one regression may use, 1-{len(TERM_NAMES)}.")
        points_per_task: int = Field(6, strict=True, ge=1, le=100, description="Sample points per task, 1-100.")
        turns: int = Field(6, strict=True, ge=2, le=50, description="Replies per task, 2-50.")
        amplitude_range: Pair[Annotated[float, Field(strict=True, gt=0.0, le=2.8)]] = Field(
            (1.0, 2.5), description="Range (low, high) of the peak |u(x, 0)|, stratified over a pack; "
                                    "0 < low <= high <= 2.8.")
        magnitude_range: Pair[Annotated[float, Field(strict=True, gt=0.0, le=5.0)]] = Field(
            (0.5, 2.0), description="Range (low, high) of the |coefficients| of f; 0 < low <= high <= 5.")
        nx: int = Field(257, strict=True, ge=9, le=2049, description="Grid points in x, 9-2049.")
        nt: Annotated[int, AfterValidator(_nt_on_sample_grid)] = Field(
            2001, strict=True, ge=T_STEPS + 1, le=100 * T_STEPS + 1,
            description=f"Grid points in t, {T_STEPS + 1}-{100 * T_STEPS + 1}, nt - 1 a multiple of {T_STEPS}.")
        noise_u: float = Field(0.002, strict=True, ge=0.0, le=1.0,
                               description="Standard deviation of the Gaussian noise of a sampled u, 0-1.")
        noise_y: float = Field(0.0005, strict=True, ge=0.0, le=1.0,
                               description="Standard deviation of the Gaussian noise of a sampled y = f(u), 0-1.")

    def __init__(self, **params: Any) -> None:
        p = parse_params(self.Params, params)
        self.name = p.name
        self.variant = p.variant
        self.templates = TEMPLATES[p.variant]
        self.term_cap = p.term_cap
        self.regress_terms = p.regress_terms
        self.points_per_task = p.points_per_task
        self.turns = p.turns
        self.amplitude_range = p.amplitude_range
        self.magnitude_range = p.magnitude_range
        self.nx = p.nx
        self.nt = p.nt
        self.noise_u = p.noise_u
        self.noise_y = p.noise_y
        self.max_turns = self.turns
        defaults = p.at_defaults("term_cap", "regress_terms", "points_per_task", "turns")
        self.chance_reward = CHANCE_REWARD[p.variant] if defaults else None
        self.system_prompt = self._build_system_prompt()

    # -- text ---------------------------------------------------------------------------------
    def _build_system_prompt(self) -> str:
        sizes = sorted({len(t) for t in self.templates})
        n_terms = f"{sizes[0]} to {sizes[-1]}" if len(sizes) > 1 else str(sizes[0])
        m, cap, p = self.regress_terms, self.term_cap, self.points_per_task
        return (
            "You are a scientist discovering a hidden law. A quantity u(x, t), for x and t between 0 and 1 "
            "(u = 0 at x = 0 and at x = 1), follows\n"
            "    u_t = u_xx + f(u)\n"
            f"where the reaction term f(u) is unknown: a sum of {n_terms} terms, each a coefficient times one "
            "of these 15 library terms:\n"
            f"    {', '.join(TERM_NAMES)}\n"
            "Every task here has the SAME f(u). Each task runs a new experiment (a new starting profile "
            "u(x, 0)); your job is to find f(u) and commit it.\n"
            "Evidence: sampling a point (x, t) of the experiment measures u there and y = f(u) there, both "
            "with a little noise. Points sampled in earlier tasks stay available: every regression uses all "
            "points sampled so far (the pooled data). |u| is largest near t = 0 and shrinks over time. "
            "Several terms look alike when |u| is small (u, sin(u), tanh(u), u/(1+u^2), ...); only points "
            "with large |u| tell them apart.\n"
            f"Each task allows {self.turns} turns and {p} sample points. Each turn, reply with exactly one "
            "action:\n"
            f"  <answer>sample X T; X T</answer>  measure points (x and t between 0 and 1), e.g. "
            "<answer>sample 0.5 0; 0.3 0.02</answer>\n"
            "  <answer>summary</answer>  list all pooled points (u, y)\n"
            f"  <answer>regress TERM, TERM, TERM</answer>  fit y = f(u) on the pooled points with up to {m} "
            f"library terms; every combination of up to {cap} of them is fitted and the best equations are "
            "listed with their residuals, e.g. <answer>regress u, u^3, sin(u)</answer>\n"
            f"  <answer>regress candidates: EQUATION | EQUATION</answer>  refit up to {m} candidate equations "
            f"(each with up to {cap} terms), e.g. <answer>regress candidates: u - u^3 | sin(u)</answer>\n"
            "  <answer>commit EQUATION</answer> or <answer>commit N</answer>  your final answer: an equation "
            "listed by your last regression (same terms; you may round the coefficients), or its rank N. "
            "This ends the task.\n"
            "Equations are written like 1.2*u - 0.5*u^3 + 0.8*(exp(u)-1): coefficient * library term, joined "
            "by + and -.\n"
            "Your score (not shown) is higher the closer your coefficients are to the true ones; extra terms "
            "cost. A task with no commit scores 0. An action that is not allowed at the moment (more points "
            "than are left, too many terms, a commit not from your last regression) is refused and uses up "
            "the turn. A reply without exactly one <answer>...</answer> pair, or with an action outside this "
            "format, ends the task with score 0."
        )

    # -- CoDEnv -------------------------------------------------------------------------------
    def sample_world(self, rng: np.random.Generator) -> dict[str, Any]:
        """Draw a template and magnitudes until a coarse run from the largest profiles keeps |u| < 3."""
        x = x_grid(33)
        peak = self.amplitude_range[1] * np.sin(np.pi * x)
        profiles = np.stack([peak, -peak], axis=1)
        lo, hi = self.magnitude_range
        for _ in range(10_000):
            i = int(rng.integers(len(self.templates)))
            eq = {name: sign * round(float(rng.uniform(lo, hi)), 2) for name, sign in self.templates[i]}
            eq = canonical({k: v for k, v in eq.items() if v != 0.0})
            if eq and max_abs(eq, profiles, nt=501, limit=U_LIMIT) < U_LIMIT:
                return {"template": i, "equation": eq, "text": format_equation(eq)}
        raise RuntimeError(f"{self.name}: no stable world after 10000 draws")  # pragma: no cover

    def _draw_task(self, rng: np.random.Generator, lo: float, hi: float, stratum: int) -> dict[str, Any]:
        amp = round(float(rng.uniform(lo, hi)), 2) * (1.0 if rng.random() < 0.5 else -1.0)
        if int(rng.integers(1, 3)) == 1:
            modes = [[int(rng.integers(0, 4)), 1.0]]
        else:
            k1, k2 = (int(k) for k in rng.choice(4, size=2, replace=False))
            w = round(float(rng.uniform(0.2, 0.8)), 2)
            modes = [[k1, w], [k2, round(1.0 - w, 2)]]
        return {"amplitude": amp, "modes": modes, "stratum": stratum,
                "noise_seed": int(rng.integers(0, 2 ** 31 - 1))}

    def sample_task(self, world: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        """Draw an experiment with an amplitude anywhere in ``amplitude_range`` (stratum -1)."""
        return self._draw_task(rng, *self.amplitude_range, stratum=-1)

    def sample_pack(self, split: str, seed: int, index: int, size: int) -> Pack:
        """Like the base method, but the task amplitudes are stratified: the amplitude range is cut
        into ``size`` equal strata and every task draws from its own (in a random order)."""
        rng = self.pack_rng(split, seed, index, size)
        world = self.sample_world(rng)
        strata = [int(s) for s in rng.permutation(size)]
        lo, hi = self.amplitude_range
        width = (hi - lo) / size
        specs: list[dict[str, Any]] = []
        for s in strata:
            for _ in range(100_000):
                spec = self._draw_task(rng, lo + s * width, lo + (s + 1) * width, stratum=s)
                if self.split_of(world, spec) == split:
                    specs.append(spec)
                    break
            else:  # pragma: no cover - 1 in 5 draws lands in the test split
                raise RuntimeError(f"{self.name}: could not draw a {split} task")
        return self.make_pack(split, seed, index, world, specs)

    def new_state(self, pack: Pack) -> PDEState:
        """A fresh, empty evidence store for one lifecycle of ``pack``."""
        return PDEState(pack_id=pack.pack_id)

    def start(self, pack: Pack, task: Task, state: Any = None) -> PDEEpisode:
        """Begin ``task`` in the world of ``pack``; sampled points go into ``state`` (this lifecycle's
        :class:`PDEState`; without one, a fresh store that lives only for this episode)."""
        truth = _check_world(pack.world)
        if state is None:
            state = PDEState(pack_id=pack.pack_id)
        elif not isinstance(state, PDEState) or state.pack_id != pack.pack_id:
            raise ValueError(f"{self.name}: state must be this pack's PDEState from new_state(), got {state!r}")
        _check_spec(task.spec)
        return PDEEpisode(self, truth, task, state)

    # -- experiments --------------------------------------------------------------------------
    def trajectory(self, truth: Equation, spec: dict[str, Any], state: PDEState) -> np.ndarray:
        """The recorded trajectory of an experiment (levels t = k/200), cached in the lifecycle state."""
        key = json.dumps({"equation": truth, "spec": spec, "nx": self.nx, "nt": self.nt}, sort_keys=True)
        traj = state.trajectories.get(key)
        if traj is None:
            u0 = initial_profile(x_grid(self.nx), spec["amplitude"], spec["modes"])
            traj = simulate(truth, u0, nt=self.nt, record_every=(self.nt - 1) // T_STEPS)
            state.trajectories[key] = traj
        return traj


def _check_world(world: Any) -> Equation:
    eq = world.get("equation") if isinstance(world, dict) else None
    if not isinstance(eq, dict) or not eq:
        raise ValueError(f"pde world needs 'equation': a dict of library term -> coefficient, got {str(world)[:200]}")
    try:
        return canonical({str(k): float(v) for k, v in eq.items()})
    except (EquationError, TypeError, ValueError):
        raise ValueError(f"pde world has an equation outside the library: {eq!r}") from None


def _check_spec(spec: Any) -> None:
    ok = (isinstance(spec, dict) and isinstance(spec.get("amplitude"), (int, float))
          and isinstance(spec.get("modes"), list) and spec["modes"]
          and all(isinstance(m, (list, tuple)) and len(m) == 2 for m in spec["modes"])
          and isinstance(spec.get("noise_seed"), int))
    if not ok:
        raise ValueError(f"pde task needs 'amplitude', 'modes' [[k, w], ...] and 'noise_seed', got {spec!r}")


def _fmt(v: float, digits: int = 4) -> str:
    return f"{v:.{digits}f}"


class PDEEpisode(Episode):
    """One task: sample, summarise, regress and finally commit an equation.

    ``info`` of each step holds ``event`` (``sample``, ``summary``, ``regress``, ``commit``,
    ``rejected`` (a well-formed action that is not allowed now: it costs the turn), ``timeout``,
    ``invalid`` or ``over``), ``turn``, ``points_left`` and ``pooled`` (points in the lifecycle).
    """

    def __init__(self, env: PDEDiscovery, truth: Equation, task: Task, state: PDEState) -> None:
        self.env = env
        self.truth = truth
        self.task = task
        self.spec = task.spec
        self.state = state
        self.x = x_grid(env.nx)
        self.reset()

    # -- helpers ------------------------------------------------------------------------------
    def _status(self) -> str:
        left = self.env.turns - self.turn
        last = " This is your last turn: commit now or the task fails." if left == 1 else ""
        return (f"Turn {self.turn + 1} of {self.env.turns}. Sample points left in this experiment: "
                f"{self.points_left}. Pooled points: {len(self.state.points)}.{last}")

    def _intro(self) -> str:
        u0 = initial_profile(x_grid(9), self.spec["amplitude"], self.spec["modes"])
        earlier = len({p[0] for p in self.state.points if p[0] != self.task.position})
        pooled = (f"The pooled data already holds {len(self.state.points)} points from {earlier} earlier "
                  "experiment(s) of this environment." if self.state.points else "No points sampled yet.")
        return (f"Experiment {self.task.position + 1}: a new starting profile. u(x, 0) at x = 0, 0.125, ..., 1:\n"
                f"  {' '.join(f'{v:.3f}' for v in u0)}\n{pooled}\n"
                f"One regression may use up to {self.env.regress_terms} library terms (it fits every combination of "
                f"up to {self.env.term_cap}); commit only an equation listed by your last regression.")

    def _info(self, event: str, **extra: Any) -> dict[str, Any]:
        return {"event": event, "turn": self.turn, "points_left": self.points_left,
                "pooled": len(self.state.points), **extra}

    def _go_on(self, text: str, event: str, **extra: Any) -> StepResult:
        if self.turn >= self.env.turns:
            self.done = True
            msg = f"{text}\nTurn limit reached without a commit: the task failed (reward 0)."
            return StepResult(None, 0.0, True, msg, True, self._info("timeout", last_event=event, **extra))
        return StepResult(f"{text}\n\n{self._status()}", 0.0, False, text, True, self._info(event, **extra))

    # -- actions ------------------------------------------------------------------------------
    def _sample(self, points: Sequence[tuple[float, float]]) -> StepResult:
        if self.points_left == 0:
            return self._go_on("Rejected: no sample points are left in this experiment.", "rejected")
        if len(points) > self.points_left:
            return self._go_on(f"Rejected: you asked for {len(points)} points but only {self.points_left} "
                               "are left in this experiment.", "rejected")
        bad = [p for p in points if not (0.0 <= p[0] <= 1.0 and 0.0 <= p[1] <= 1.0)]
        if bad:
            return self._go_on(f"Rejected: x and t must lie between 0 and 1 (got {bad[0][0]:g} {bad[0][1]:g}).",
                               "rejected")
        grid = [(round(x * (self.env.nx - 1)), round(t * T_STEPS)) for x, t in points]
        if any(k > 0 for _, k in grid):  # t = 0 needs no simulation: it is the starting profile
            levels = self.env.trajectory(self.truth, self.spec, self.state)
        else:
            levels = initial_profile(self.x, self.spec["amplitude"], self.spec["modes"])[None, :]
        rng = np.random.default_rng([int(self.spec["noise_seed"]), self.task.position, self.sampled])
        rows = []
        for i, k in grid:
            u_true = float(levels[k, i])
            y_true = float(evaluate(self.truth, np.array([u_true]))[0])
            u_obs = u_true + self.env.noise_u * float(rng.standard_normal())
            y_obs = y_true + self.env.noise_y * float(rng.standard_normal())
            xs, ts = i / (self.env.nx - 1), k / T_STEPS
            self.state.points.append((self.task.position, xs, ts, u_obs, y_obs))
            rows.append(f"  {xs:.4f}  {ts:.3f}  {u_obs:+.4f}  {y_obs:+.4f}")
        self.points_left -= len(points)
        self.sampled += len(points)
        text = (f"Sampled {len(points)} point{'s' if len(points) != 1 else ''} (x and t rounded to the grid: "
                f"x step 1/{self.env.nx - 1}, t step 1/{T_STEPS}):\n       x      t        u        y\n"
                + "\n".join(rows))
        return self._go_on(text, "sample", n=len(points))

    def _summary(self) -> StepResult:
        pts = self.state.points
        if not pts:
            return self._go_on("Pooled evidence: no points yet. Sample some first.", "summary")
        by_u = sorted(pts, key=lambda p: p[3])
        shown = by_u if len(by_u) <= SUMMARY_ROWS else by_u[:: -(-len(by_u) // SUMMARY_ROWS)]
        n_exp = len({p[0] for p in pts})
        head = (f"Pooled evidence: {len(pts)} points from {n_exp} experiment(s), u from {by_u[0][3]:+.3f} to "
                f"{by_u[-1][3]:+.3f}" + ("" if len(shown) == len(pts) else f" ({len(shown)} of them listed)")
                + ", sorted by u:\n         u        y")
        return self._go_on(head + "\n" + "\n".join(f"  {p[3]:+.4f}  {p[4]:+.4f}" for p in shown), "summary")

    def _regress(self, action: Action) -> StepResult:
        cap, m = self.env.term_cap, self.env.regress_terms
        if action.kind == "regress" and len(action.terms) > m:
            return self._go_on(f"Rejected: a regression may use at most {m} library terms, you listed "
                               f"{len(action.terms)}.", "rejected")
        if action.kind == "candidates":
            if len(action.supports) > m:
                return self._go_on(f"Rejected: at most {m} candidate equations per regression, you gave "
                                   f"{len(action.supports)}.", "rejected")
            big = [s for s in action.supports if len(s) > cap]
            if big:
                return self._go_on(f"Rejected: a candidate may have at most {cap} terms ({' + '.join(big[0])} "
                                   f"has {len(big[0])}).", "rejected")
        u, y = self.state.arrays()
        if u.size < 2:
            return self._go_on("Rejected: a regression needs at least 2 pooled points; sample first.", "rejected")
        if action.kind == "regress":
            fits = sparse_regression(u, y, action.terms, cap)
            what = (f"over {', '.join(action.terms)} (every combination of up to {min(cap, len(action.terms))} "
                    "of them)")
        else:
            fits = refit(u, y, list(dict.fromkeys(action.supports)))
            what = "of the candidate equations (coefficients refitted)"
        fits = fits[:TABLE_ROWS]
        if not fits:
            return self._go_on(f"Rejected: {u.size} pooled points are too few for these terms; sample more.",
                               "rejected")
        self.last_fits = fits
        rows = [f"  {r}. f(u) = {format_equation(f.equation)}    rms residual {f.rms:.2g}, max |residual| "
                f"{f.max_abs:.2g}" for r, f in enumerate(fits, 1)]
        text = (f"Regression on {u.size} pooled points (u from {u.min():+.3f} to {u.max():+.3f}) {what}; "
                "best first (ranked by residual, with a penalty for each term):\n" + "\n".join(rows)
                + "\nTo commit one: <answer>commit N</answer> (its rank) or <answer>commit EQUATION</answer>.")
        return self._go_on(text, "regress", fits=[format_equation(f.equation) for f in fits])

    def _commit(self, action: Action) -> StepResult:
        if not self.last_fits:
            return self._go_on("Rejected: commit an equation from a regression's table; run a regression first.",
                               "rejected")
        if action.rank is not None:
            if not 1 <= action.rank <= len(self.last_fits):
                return self._go_on(f"Rejected: rank {action.rank} is not in the last table (1-{len(self.last_fits)}).",
                                   "rejected")
            eq = self.last_fits[action.rank - 1].equation
        else:
            eq = action.equation or {}
            if equation_support(eq) not in {f.support for f in self.last_fits}:
                return self._go_on("Rejected: the committed equation must have the same terms as one listed by "
                                   "your last regression.", "rejected")
        self.done = True
        reward = score_equation(eq, self.truth)
        text = f"Committed f(u) = {format_equation(eq)}. The task is over (its score is not shown)."
        return StepResult(None, reward, True, text, True,
                          self._info("commit", committed=format_equation(eq), truth=format_equation(self.truth)))

    # -- Episode ------------------------------------------------------------------------------
    def reset(self) -> str:
        """Start the task over and return the first observation (pooled points of earlier tasks stay)."""
        self.turn = 0
        self.points_left = self.env.points_per_task
        self.sampled = 0
        self.last_fits: list[Fit] = []
        self.done = False
        return f"{self._intro()}\n\n{self._status()}\n{FORMAT_HINT}"

    def step(self, reply: Any) -> StepResult:
        """Parse ``reply`` and apply its action. Never raises."""
        if self.done:
            return StepResult(None, 0.0, True, "The task is already over.", True, self._info("over"))
        action, why = parse_action(reply)
        self.turn += 1
        if action is None:
            self.done = True
            return StepResult(None, 0.0, True, INVALID_FEEDBACK.format(why=why), False, self._info("invalid"))
        if action.kind == "sample":
            return self._sample(action.points)
        if action.kind == "summary":
            return self._summary()
        if action.kind in ("regress", "candidates"):
            return self._regress(action)
        return self._commit(action)
