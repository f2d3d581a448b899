"""Grid Navigation: rook moves over a hidden cost map that is revealed as you go.

Every pack shares one hidden *cost map*: an ``N x N`` grid of integer costs 0-99 made of a few
smooth random hills (cheap valleys between steep hills). Each task gives a start cell, a goal cell
and an exact number of moves ``R``; the agent moves like a rook (any distance along its current
row or column) and must stand on the goal after exactly ``R`` moves. Every crossed cell and the
destination of a move are *entered*; the reward is ``1 - mean(entered costs) / 100``, so the agent
wants a route through cheap cells (long moves along a cheap valley even lower the mean).

Costs start hidden (``?``). Entering a cell reveals every cell within Chebyshev distance
``reveal_radius`` of it, and revealed cells stay revealed for the rest of the *lifecycle* (the
following tasks of the same pass through the pack). That reveal mask is the per-lifecycle state of
:meth:`GridNavigation.new_state`: each lifecycle gets its own :class:`RevealState`, so repeats of
one pack played at the same time never see each other's reveals.

With the default ``keep_reveals=True`` the observation itself carries the map into later tasks,
so an agent without hints also improves along the pack (see ``tests/test_gridnav.py``);
``keep_reveals=False`` hides the map again at every task, leaving the hints as the only carrier.

Coordinates: ``(row, col)``, row 0 the top row, col 0 the left column; a cell is written
``row,col``. A cell entered twice counts twice in the mean.

World format: ``{"size": N, "costs": [[c00, c01, ...], ...]}`` (``costs`` is ``N`` rows of ``N``
integers in 0..99).
Task spec format: ``{"start": [r, c], "goal": [r, c], "moves": R}`` (a random walk of exactly ``R``
rook moves leads from start to goal, so the goal is reachable in exactly ``R`` moves).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Annotated, Any, Literal, get_args

import numpy as np
from pydantic import Field

from codrl.envs.base import (CoDEnv, EnvParams, Episode, Pack, StepResult, Task, answer_span, at_least, parse_params)

Cell = tuple[int, int]

Variant = Literal["train", "hard"]
VARIANTS: tuple[str, ...] = get_args(Variant)
#: Variant -> default knobs (the reference study's numbers: 8-12 grids, 4 hills, 4-6 moves and
#: reveal radius 2 for training; 10-14 grids, 5 hills, 3-5 moves and radius 1 for the hard test).
VARIANT_DEFAULTS: dict[str, dict[str, int]] = {
    "train": {"min_size": 8, "max_size": 12, "n_bumps": 4, "min_moves": 4, "max_moves": 6, "reveal_radius": 2},
    "hard": {"min_size": 10, "max_size": 14, "n_bumps": 5, "min_moves": 3, "max_moves": 5, "reveal_radius": 1},
}
#: Mean reward of the scripted random agent (uniformly random rook moves inside the grid) with the
#: variant's default knobs, measured with ``codrl.eval.checklist.reward_matrix`` over 2000 packs of
#: 4 test tasks (seed 0). Almost zero: a random walk seldom ends on the goal after exactly R moves.
CHANCE_REWARD: dict[str, float] = {"train": 0.0078, "hard": 0.0056}
_TRAIN = VARIANT_DEFAULTS["train"]
MAX_COST = 99

FORMAT_HINT = ("Reply with exactly one `<answer>row,col</answer>` naming the cell to move to, "
               "e.g. <answer>3,5</answer>.")
INVALID_FEEDBACK = "Invalid answer. " + FORMAT_HINT + " The task ended with reward 0."

# Applied to the stripped tag content only (at most _MAX_CONTENT characters, see parse_move).
_MOVE_RE = re.compile(r"[(\[]?\s*([0-9]{1,3})\s*,\s*([0-9]{1,3})\s*[)\]]?")
_MAX_CONTENT = 40


def parse_move(reply: Any) -> Cell | None:
    """The ``(row, col)`` of the one ``<answer>row,col</answer>`` in ``reply``, or None.

    The reply must hold exactly one opening and one closing answer tag, in that order (see
    :func:`~codrl.envs.base.answer_span`; a second tag, e.g. from quoting the format, is a format
    error); tags are case-insensitive. The content, at most ``_MAX_CONTENT`` characters, is two
    non-negative integers (ASCII digits) separated by a comma, optionally in parentheses or
    brackets, with any spacing. Text before and after the tags is ignored. Never raises; linear
    time on any input.
    """
    span = answer_span(reply, _MAX_CONTENT)
    if isinstance(span, str):
        return None
    m = _MOVE_RE.fullmatch(reply[span[0]:span[1]].strip())
    return (int(m.group(1)), int(m.group(2))) if m else None


def cost_map(rng: np.random.Generator, size: int, n_bumps: int) -> np.ndarray:
    """A smooth random ``size x size`` map of integer costs 0..99.

    The sum of ``n_bumps`` rotated Gaussian hills (random centre, widths, angle and height) is
    scaled to [0, 1], squared (wide cheap valleys, steep hills), times 99 and rounded.
    """
    ys, xs = np.mgrid[0:size, 0:size].astype(float)
    field = np.zeros((size, size))
    for _ in range(n_bumps):
        cy, cx = rng.uniform(-0.5, size - 0.5, size=2)
        s1, s2 = rng.uniform(size / 8, size / 3, size=2)
        theta = rng.uniform(0.0, np.pi)
        height = rng.uniform(0.5, 1.0)
        u = np.cos(theta) * (xs - cx) + np.sin(theta) * (ys - cy)
        v = -np.sin(theta) * (xs - cx) + np.cos(theta) * (ys - cy)
        field += height * np.exp(-0.5 * ((u / s1) ** 2 + (v / s2) ** 2))
    lo, hi = float(field.min()), float(field.max())
    scaled = (field - lo) / (hi - lo) if hi > lo else np.zeros_like(field)
    return np.rint(scaled ** 2 * MAX_COST).astype(int)


def entered_cells(src: Cell, dst: Cell) -> list[Cell]:
    """The cells a rook move from ``src`` to ``dst`` enters: every crossed cell and ``dst``."""
    (r0, c0), (r1, c1) = src, dst
    if r0 == r1:
        step = 1 if c1 > c0 else -1
        return [(r0, c) for c in range(c0 + step, c1 + step, step)]
    step = 1 if r1 > r0 else -1
    return [(r, c0) for r in range(r0 + step, r1 + step, step)]


def rook_targets(size: int, pos: Cell) -> list[Cell]:
    """Every cell one rook move away from ``pos`` (same row or column, not ``pos`` itself)."""
    r, c = pos
    return [(r, j) for j in range(size) if j != c] + [(i, c) for i in range(size) if i != r]


def move_tables(costs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every pair of cells ``(a, b)`` (flat indices), the summed cost and the number of cells
    that the rook move ``a -> b`` enters; ``count`` is 0 where ``a -> b`` is not a rook move."""
    n = costs.shape[0]
    total = np.zeros((n, n, n, n))
    count = np.zeros((n, n, n, n), dtype=int)
    a, b = np.arange(n)[:, None], np.arange(n)[None, :]
    # lines[0, l] is row l, lines[1, l] is column l; pre[..., i] sums the first i cells of a line
    lines = np.stack([costs, costs.T]).astype(float)
    pre = np.concatenate([np.zeros((2, n, 1)), np.cumsum(lines, axis=2)], axis=2)
    # a -> b with b > a enters a+1..b; with b < a it enters b..a-1
    seg = np.where(b > a, pre[:, :, b + 1] - pre[:, :, a + 1], np.where(b < a, pre[:, :, a] - pre[:, :, b], 0.0))
    cnt = np.broadcast_to(np.abs(b - a), (n, n, n))
    line, a3, b3 = np.arange(n)[:, None, None], a[None], b[None]
    total[line, a3, line, b3] = seg[0]  # (line, a) -> (line, b) along a row
    count[line, a3, line, b3] = cnt
    total[a3, line, b3, line] = seg[1]  # (a, line) -> (b, line) along a column
    count[a3, line, b3, line] = cnt
    return total.reshape(n * n, n * n), count.reshape(n * n, n * n)


def best_path(costs: np.ndarray, start: Cell, goal: Cell, moves: int, spent: float = 0.0,
              entered: int = 0, tables: tuple[np.ndarray, np.ndarray] | None = None
              ) -> tuple[list[Cell], float] | None:
    """The route of exactly ``moves`` rook moves from ``start`` to ``goal`` with the lowest mean cost.

    ``spent`` and ``entered`` are the summed cost and the number of cells entered before
    ``start`` (they count in the mean). Returns (cells visited after ``start``, mean entered cost)
    or None when no such route exists. The mean is minimised exactly by Dinkelbach's method over
    a dynamic programme on (cell, moves left); ``costs`` may be floats (e.g. estimates).
    """
    n = costs.shape[0]
    if moves < 1:
        return ([], spent / entered if entered else 0.0) if start == goal else None
    total, count = tables if tables is not None else move_tables(np.asarray(costs, dtype=float))
    legal = count > 0
    s, g = start[0] * n + start[1], goal[0] * n + goal[1]
    lam = float(np.asarray(costs, dtype=float).mean()) if entered == 0 else spent / entered
    best: tuple[list[Cell], float] | None = None
    for _ in range(60):
        weight = np.where(legal, total - lam * count, np.inf)
        value = np.full(n * n, np.inf)
        value[g] = 0.0
        choice: list[np.ndarray] = []
        for _k in range(moves):  # value[a] = best weight of k moves from a to the goal
            options = weight + value[None, :]
            nxt = options.argmin(axis=1)
            choice.append(nxt)
            value = options[np.arange(n * n), nxt]
        if not np.isfinite(value[s]):
            return None
        path, here, s_sum, s_cnt = [], s, spent, entered
        for k in range(moves - 1, -1, -1):
            nxt_cell = int(choice[k][here])
            s_sum += float(total[here, nxt_cell])
            s_cnt += int(count[here, nxt_cell])
            here = nxt_cell
            path.append((here // n, here % n))
        mean = s_sum / s_cnt
        if best is not None and mean >= best[1] - 1e-9:
            break
        best = (path, mean)
        lam = mean
    return best


class RevealState:
    """One lifecycle's knowledge of the cost map: which cells are revealed (and which were entered).

    ``revealed`` is an ``N x N`` boolean array; ``entered`` the set of cells entered so far in
    this lifecycle. Created by :meth:`GridNavigation.new_state`, changed by the episodes.
    """

    def __init__(self, size: int, radius: int) -> None:
        self.size = size
        self.radius = radius
        self.revealed = np.zeros((size, size), dtype=bool)
        self.entered: set[Cell] = set()

    def enter(self, cells: Iterable[Cell]) -> None:
        """Mark ``cells`` entered and reveal everything within ``radius`` of them."""
        rad = self.radius
        for r, c in cells:
            self.entered.add((r, c))
            self.revealed[max(0, r - rad):r + rad + 1, max(0, c - rad):c + rad + 1] = True


def _check_world(world: Any) -> np.ndarray:
    costs = world.get("costs") if isinstance(world, dict) else None
    try:
        arr = np.asarray(costs, dtype=int)
    except (TypeError, ValueError):
        arr = np.zeros((0,))
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1] or arr.shape[0] < 2 or arr.min() < 0 or arr.max() > MAX_COST:
        raise ValueError("gridnav world needs 'costs': a square list of at least 2 rows of integers 0..99, "
                         f"got {str(world)[:200]}")
    return arr


def _check_cell(spec: dict[str, Any], key: str, size: int) -> Cell:
    val = spec.get(key) if isinstance(spec, dict) else None
    if (not isinstance(val, (list, tuple)) or len(val) != 2
            or not all(isinstance(x, (int, np.integer)) and not isinstance(x, bool) and 0 <= x < size for x in val)):
        raise ValueError(f"gridnav task needs {key!r} = [row, col] inside the {size} x {size} grid, got {val!r}")
    return int(val[0]), int(val[1])


class GridNavigation(CoDEnv):
    """Grid Navigation: rook moves over a hidden cost map that is revealed as you go.

    Knobs (the keywords of :class:`GridNavigation.Params`; defaults from ``variant``, ``"train"``
    or ``"hard"``): ``min_size``/``max_size`` (grid
    side N), ``n_bumps`` (hills in the cost map), ``min_moves``/``max_moves`` (R, the exact number
    of moves of a task), ``reveal_radius`` (Chebyshev radius revealed around each entered cell),
    ``keep_reveals`` (True: reveals last for the lifecycle, as specified; False: every task starts
    all hidden, so only the hints carry the map over), ``max_sample_tries``. Rewards:
    ``1 - mean(entered costs)/100`` on the goal after exactly R moves; 0 elsewhere, for an illegal
    move or for a malformed reply (both end the task at once).
    """

    reply_prefix = "<answer>"
    stop_strings = ("</answer>",)
    #: Standing on the goal after exactly R moves scores 1 - mean(entered costs)/100 > 0; else 0.
    success_threshold = 1e-6

    class Params(EnvParams):
        """Grid Navigation's parameters: the knobs left out take the variant's value.

        The bounds keep grids readable with two-digit headers and plans cheap.
        """

        variant_field = "variant"
        variant_defaults = VARIANT_DEFAULTS
        name: str = Field("gridnav", min_length=1, description="Name of the environment (pack ids, reports).")
        variant: Variant = Field("train", description="Preset of the knobs below (see VARIANT_DEFAULTS).")
        min_size: int = Field(_TRAIN["min_size"], strict=True, ge=2, le=30, description="Smallest grid side N, 2-30.")
        max_size: Annotated[int, at_least("min_size")] = Field(
            _TRAIN["max_size"], strict=True, ge=2, le=30, description="Largest grid side N, 2-30, >= min_size.")
        n_bumps: int = Field(_TRAIN["n_bumps"], strict=True, ge=1, le=50, description="Hills in the cost map, 1-50.")
        min_moves: int = Field(_TRAIN["min_moves"], strict=True, ge=1, le=20,
                               description="Fewest moves R of a task, 1-20.")
        max_moves: Annotated[int, at_least("min_moves")] = Field(
            _TRAIN["max_moves"], strict=True, ge=1, le=20, description="Most moves R of a task, 1-20, >= min_moves.")
        reveal_radius: int = Field(_TRAIN["reveal_radius"], strict=True, ge=0, le=30, description=(
            "Chebyshev radius revealed around each entered cell, 0-30."))
        keep_reveals: bool = Field(True, strict=True, description=(
            "Whether revealed cells stay revealed for the lifecycle (False: every task starts all hidden)."))
        max_sample_tries: int = Field(10_000, strict=True, ge=1, le=1_000_000,
                                      description="Task draws allowed to find a feasible one, 1-1000000.")

    def __init__(self, **params: Any) -> None:
        p = parse_params(self.Params, params)
        self.name = p.name
        self.variant = p.variant
        self.min_size = p.min_size
        self.max_size = p.max_size
        self.n_bumps = p.n_bumps
        self.min_moves = p.min_moves
        self.max_moves = p.max_moves
        self.reveal_radius = p.reveal_radius
        self.keep_reveals = p.keep_reveals
        self.max_sample_tries = p.max_sample_tries
        self.max_turns = self.max_moves
        defaults = p.at_defaults("keep_reveals", *VARIANT_DEFAULTS[p.variant])
        self.chance_reward = CHANCE_REWARD[p.variant] if defaults else None
        self.system_prompt = self._build_system_prompt()

    def _build_system_prompt(self) -> str:
        return (
            "You are playing Grid Navigation. You move on a square grid of cells, like a rook in chess. "
            "Every cell has a cost from 0 (cheap) to 99 (expensive). Rows are numbered from 0 at the top, "
            "columns from 0 at the left; a cell is written row,col.\n"
            "Each task gives you a start cell, a goal cell and an exact number of moves. Each turn you make "
            "one move: to any other cell in your current row or in your current column, at any distance. "
            "The cells you cross and the cell you stop on are 'entered'.\n"
            "After exactly the given number of moves you must stand on the goal. Then your reward is "
            "1 - (mean cost of all entered cells) / 100. Ending anywhere else gives 0. Reaching the goal "
            "early does not end the task: you still make every move. A move that leaves your row and "
            "column, leaves the grid or stays in place ends the task with 0.\n"
            "Costs are hidden ('?') until you come near: entering a cell reveals every cell within "
            f"{self.reveal_radius} step{'s' if self.reveal_radius != 1 else ''} of it (diagonals too). "
            + ("All tasks here share the same cost map, and revealed cells stay revealed in the next tasks, "
               "so cheap valleys and expensive hills stay where they are. "
               if self.keep_reveals else
               "All tasks here share the same cost map, but it is hidden again at the start of every task: "
               "cheap valleys and expensive hills stay where they are, so remember them. ")
            + "Long moves through cheap cells lower the mean.\n"
            "Each turn, reply with exactly one move in the form <answer>row,col</answer>, "
            "for example <answer>3,5</answer>."
        )

    # -- CoDEnv -------------------------------------------------------------------------------
    def sample_world(self, rng: np.random.Generator) -> dict[str, Any]:
        """Draw the grid side and the hidden cost map: ``{"size": N, "costs": [[...], ...]}``."""
        size = int(rng.integers(self.min_size, self.max_size + 1))
        costs = cost_map(rng, size, self.n_bumps)
        return {"size": size, "costs": [[int(x) for x in row] for row in costs]}

    def sample_task(self, world: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        """Draw a start and walk exactly R random rook moves to the goal (which must differ)."""
        size = int(_check_world(world).shape[0])
        for _ in range(self.max_sample_tries):
            moves = int(rng.integers(self.min_moves, self.max_moves + 1))
            start = (int(rng.integers(size)), int(rng.integers(size)))
            pos = start
            for _m in range(moves):
                targets = rook_targets(size, pos)
                pos = targets[int(rng.integers(len(targets)))]
            if pos != start:
                return {"start": list(start), "goal": list(pos), "moves": moves}
        raise RuntimeError(f"{self.name}: no task with a goal away from the start after "
                           f"{self.max_sample_tries} tries")

    def new_state(self, pack: Pack) -> RevealState:
        """A fresh, all-hidden reveal mask for one lifecycle of ``pack``."""
        return RevealState(int(_check_world(pack.world).shape[0]), self.reveal_radius)

    def start(self, pack: Pack, task: Task, state: Any = None) -> GridNavEpisode:
        """Begin ``task`` on the cost map of ``pack``; reveals go into ``state`` (this lifecycle's
        :class:`RevealState`; without one, a fresh mask that lives only for this episode)."""
        costs = _check_world(pack.world)
        size = costs.shape[0]
        if state is not None and (not isinstance(state, RevealState) or state.size != size):
            raise ValueError(f"{self.name}: state must be this pack's RevealState from new_state(), got {state!r}")
        if state is None or not self.keep_reveals:
            state = RevealState(size, self.reveal_radius)
        spec = task.spec
        moves = spec.get("moves") if isinstance(spec, dict) else None
        if isinstance(moves, bool) or not isinstance(moves, (int, np.integer)) or moves < 1:
            raise ValueError(f"{self.name}: task needs 'moves' >= 1, got {moves!r}")
        return GridNavEpisode(costs, _check_cell(spec, "start", size), _check_cell(spec, "goal", size),
                              int(moves), state)


class GridNavEpisode(Episode):
    """One task: exactly ``moves`` rook moves from ``start``, ending on ``goal``.

    ``info`` of each step holds ``event`` (``move``, ``goal`` (success), ``missed`` (last move not
    on the goal), ``illegal``, ``invalid`` or ``over``), ``position`` (``[row, col]``),
    ``moves_made``, ``entered`` (this move's cells), ``entered_total`` and ``mean_cost``.
    """

    def __init__(self, costs: np.ndarray, start: Cell, goal: Cell, moves: int, state: RevealState) -> None:
        self.costs = costs
        self.cost_rows: list[list[int]] = costs.tolist()
        self.size = int(costs.shape[0])
        self.start_pos = start
        self.goal = goal
        self.moves = moves
        self.state = state
        self.reset()

    # -- helpers ------------------------------------------------------------------------------
    def _mean(self) -> float:
        return self.spent / self.n_entered if self.n_entered else 0.0

    def render(self) -> str:
        """The grid with column and row headers: revealed costs, ``?`` hidden, ``@`` you, ``G`` goal."""
        lines = ["    " + "".join(f"{c:>3}" for c in range(self.size))]
        revealed = self.state.revealed.tolist()
        for r, (row, seen) in enumerate(zip(self.cost_rows, revealed)):
            cells = [f"{v:>3}" if ok else "  ?" for v, ok in zip(row, seen)]
            if r == self.goal[0]:
                cells[self.goal[1]] = "  G"
            if r == self.pos[0]:
                cells[self.pos[1]] = "  @"
            lines.append(f"{r:>4}" + "".join(cells))
        return "\n".join(lines)

    def _move_text(self, src: Cell, dst: Cell, cells: Sequence[Cell]) -> str:
        listed = " ".join(f"{r},{c}={int(self.costs[r, c])}" for r, c in cells)
        return (f"{src[0]},{src[1]} -> {dst[0]},{dst[1]} entered {len(cells)} "
                f"cell{'s' if len(cells) != 1 else ''}: {listed}.")

    def _observation(self) -> str:
        r, c = self.pos
        gr, gc = self.goal
        left = self.moves - self.made
        last = f"Last move (move {self.made}): {self.last_text}" if self.made else "Last move: none yet."
        running = (f"Running loss: mean cost {self._mean():.1f} over {self.n_entered} entered cells."
                   if self.n_entered else "Running loss: nothing entered yet.")
        lines = [(f"Round {self.made + 1}/{self.moves}: {left} move{'s' if left != 1 else ''} left; "
                  "after the last one you must be on the goal."),
                 last, running, f"You are at {r},{c}. The goal is at {gr},{gc}."]
        if self.pos == self.goal:
            lines.append("You are on the goal now, but you must still make every move.")
        lines += [(f"Cost map ({self.size} x {self.size}, rows and columns 0-{self.size - 1}; "
                   "? = not revealed yet, @ = you, G = goal):"), self.render(),
                  f"Your move: a cell in row {r} or in column {c}. {FORMAT_HINT}"]
        return "\n".join(lines)

    def _info(self, event: str, cells: Sequence[Cell] = (), **extra: Any) -> dict[str, Any]:
        return {"event": event, "position": list(self.pos), "moves_made": self.made,
                "entered": [list(x) for x in cells], "entered_total": self.n_entered,
                "mean_cost": self._mean(), **extra}

    def _illegal(self, target: Cell) -> str | None:
        r, c = target
        n = self.size
        if not (r < n and c < n):
            return f"{r},{c} is outside the grid (rows and columns go from 0 to {n - 1})"
        if target == self.pos:
            return f"{r},{c} is where you already are; a move must go to another cell"
        if r != self.pos[0] and c != self.pos[1]:
            return (f"{r},{c} is neither in your row {self.pos[0]} nor in your column {self.pos[1]}; "
                    "moves go straight along a row or a column")
        return None

    # -- Episode ------------------------------------------------------------------------------
    def reset(self) -> str:
        """Put the agent back on the start and return the first observation.

        Reveals already made in this lifecycle stay (they live in the lifecycle state)."""
        self.pos: Cell = self.start_pos
        self.made = 0
        self.spent = 0.0
        self.n_entered = 0
        self.last_text = ""
        self.done = False
        return self._observation()

    def step(self, reply: Any) -> StepResult:
        """Parse ``reply``, apply the move and describe what happened. Never raises."""
        if self.done:
            return StepResult(None, 0.0, True, "The task is already over.", True, self._info("over"))
        target = parse_move(reply)
        if target is None:
            self.done = True
            return StepResult(None, 0.0, True, INVALID_FEEDBACK, False, self._info("invalid"))
        why = self._illegal(target)
        if why is not None:
            self.done = True
            return StepResult(None, 0.0, True, f"Illegal move: {why}. The task ended with reward 0.", True,
                              self._info("illegal", target=list(target)))
        src = self.pos
        cells = entered_cells(src, target)
        self.made += 1
        self.pos = target
        self.spent += float(sum(int(self.costs[x]) for x in cells))
        self.n_entered += len(cells)
        self.state.enter(cells)
        self.last_text = self._move_text(src, target, cells)
        running = f"Running loss: mean cost {self._mean():.1f} over {self.n_entered} entered cells."
        if self.made < self.moves:
            return StepResult(self._observation(), 0.0, False, f"Move {self.made}: {self.last_text} {running}", True,
                              self._info("move", cells))
        self.done = True
        if self.pos == self.goal:
            reward = 1.0 - self._mean() / 100.0
            text = (f"Move {self.made}: {self.last_text} You reached the goal after exactly {self.moves} moves. "
                    f"Mean cost {self._mean():.1f} over {self.n_entered} entered cells: reward {reward:.3f}.")
            return StepResult(None, reward, True, text, True, self._info("goal", cells))
        text = (f"Move {self.made}: {self.last_text} After your last move you are at {self.pos[0]},{self.pos[1]}, "
                f"not on the goal {self.goal[0]},{self.goal[1]}. Task failed: reward 0.")
        return StepResult(None, 0.0, True, text, True, self._info("missed", cells))
