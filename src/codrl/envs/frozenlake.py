"""FrozenLake-Obscure: a grid walk whose action codes hide their directions.

The agent walks on a small frozen lake from the start ``S`` to the goal ``G`` without stepping
into a hole ``H``. It acts with the codes 1-4; each code moves in one of the four directions, but
which code means which direction is a random permutation drawn once per *world* and shared by
every task of a pack. Working out that mapping and carrying it over in the hints is the reusable
knowledge that the Connect-the-Dots setting rewards.

Coordinates: ``(row, col)`` with row 0 the top row and col 0 the left column. ``Up`` decreases the
row, ``Down`` increases it, ``Left`` decreases the column, ``Right`` increases it. A move that would
leave the grid keeps the player in place (a *wall bump*) and still uses up a move.

World format: ``{"mapping": {"1": "Up", "2": "Left", "3": "Down", "4": "Right"}}``.
Task spec format: ``{"rows": ["SFFH", ...], "start": [r, c], "goal": [r, c], "shortest_path": d}``
(``rows`` alone determines the task; the other keys are derived from it, see :func:`make_spec`).
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Sequence
from typing import Annotated, Any

import numpy as np
from pydantic import Field

from codrl.envs.base import (CoDEnv, EnvParams, Episode, Pack, Pair, StepResult, Task, answer_span, at_least,
                             parse_params)

#: The four directions, in a fixed order (the world permutes them over the codes 1-4).
DIRECTIONS: tuple[str, ...] = ("Left", "Down", "Right", "Up")
#: Direction -> (row delta, col delta). Row 0 is the top row.
DELTAS: dict[str, tuple[int, int]] = {"Left": (0, -1), "Down": (1, 0), "Right": (0, 1), "Up": (-1, 0)}
#: The action codes, as they appear in replies and in the world mapping.
CODES: tuple[str, ...] = ("1", "2", "3", "4")
TILES = frozenset("SFHG")

FORMAT_HINT = ("Reply with your reasoning, then `<answer>Direction X</answer>` where X is one of 1, 2, 3, 4 "
               "(exactly one answer tag).")
INVALID_FEEDBACK = "Invalid answer. " + FORMAT_HINT + " The task ended with reward 0."

_ACTION_RE = re.compile(r"\s*direction\s*([1-4])\s*", re.IGNORECASE)


def parse_action(reply: str) -> str | None:
    """Return the code (``"1"``-``"4"``) of the reply's one ``<answer>...</answer>``, or None.

    The reply must hold exactly one opening and one closing answer tag, in that order (see
    :func:`~codrl.envs.base.answer_span`; a second tag, e.g. the format quoted while reasoning, is
    a format error, as in every codrl environment); the content must be ``Direction <code>`` (any
    case, surrounding whitespace allowed). Runs in linear time on arbitrarily long input.
    """
    span = answer_span(reply)
    if isinstance(span, str):
        return None
    m = _ACTION_RE.fullmatch(reply, *span)
    return m.group(1) if m else None


def shortest_path(rows: Sequence[str]) -> int | None:
    """Number of moves on the shortest S -> G walk avoiding holes, or None when G is unreachable."""
    n_rows, n_cols = len(rows), len(rows[0])
    start = _find(rows, "S")
    goal = _find(rows, "G")
    dist = {start: 0}
    queue = deque([start])
    while queue:
        r, c = queue.popleft()
        if (r, c) == goal:
            return dist[(r, c)]
        for dr, dc in DELTAS.values():
            nr, nc = r + dr, c + dc
            if 0 <= nr < n_rows and 0 <= nc < n_cols and rows[nr][nc] != "H" and (nr, nc) not in dist:
                dist[(nr, nc)] = dist[(r, c)] + 1
                queue.append((nr, nc))
    return None


def make_spec(rows: Sequence[str]) -> dict[str, Any]:
    """Validate a map (rows of ``S``/``F``/``H``/``G``) and build its task spec.

    Raises ``ValueError`` when the map is not a rectangle of known tiles with exactly one ``S``
    and one ``G``. ``shortest_path`` is None when the goal cannot be reached.
    """
    rows = [str(r) for r in rows]
    if not rows or not rows[0] or any(len(r) != len(rows[0]) for r in rows):
        raise ValueError(f"frozenlake map must be a non-empty rectangle of rows, got {rows!r}")
    text = "".join(rows)
    if set(text) - TILES:
        raise ValueError(f"frozenlake map has unknown tiles {sorted(set(text) - TILES)}; use S, F, H, G")
    if text.count("S") != 1 or text.count("G") != 1:
        raise ValueError("frozenlake map needs exactly one S and one G")
    return {"rows": rows, "start": list(_find(rows, "S")), "goal": list(_find(rows, "G")),
            "shortest_path": shortest_path(rows)}


def _find(rows: Sequence[str], tile: str) -> tuple[int, int]:
    for r, row in enumerate(rows):
        c = row.find(tile)
        if c >= 0:
            return r, c
    raise ValueError(f"frozenlake map has no {tile!r} tile")


def _check_mapping(world: dict[str, Any]) -> dict[str, str]:
    mapping = world.get("mapping") if isinstance(world, dict) else None
    if (not isinstance(mapping, dict) or sorted(mapping) != list(CODES)
            or sorted(mapping.values()) != sorted(DIRECTIONS)):
        raise ValueError(f"frozenlake world needs a mapping of codes 1-4 onto {DIRECTIONS}, got {world!r}")
    return {str(k): str(v) for k, v in mapping.items()}


class FrozenLakeObscure(CoDEnv):
    """FrozenLake with obscured action codes; the code -> direction permutation is the world.

    Parameters: the keywords of :class:`FrozenLakeObscure.Params`.
    Rewards: 1.0 for reaching ``G``; 0.0 for falling into ``H``, running out of moves
    (``max_env_steps``) or replies (``max_agent_steps``), or a malformed reply (which ends the
    episode at once).
    """

    reply_prefix = "<answer>Direction "
    stop_strings = ("</answer>",)

    class Params(EnvParams):
        """FrozenLake-Obscure's parameters."""

        name: str = Field("frozenlake", min_length=1, description="Name of the environment (pack ids, reports).")
        min_size: int = Field(4, strict=True, ge=2, description="Smallest map side, >= 2 (room for S and G).")
        max_size: Annotated[int, at_least("min_size")] = Field(5, strict=True, ge=2,
                                                               description="Largest map side, >= min_size.")
        safe_prob_range: Pair[Annotated[float, Field(strict=True, gt=0.0, le=1.0)]] = Field(
            (0.6, 0.7), description="Range (low, high) of a map's share of safe tiles, 0 < low <= high <= 1.")
        max_env_steps: int = Field(6, strict=True, ge=1, description="Moves per task, >= 1.")
        max_agent_steps: int = Field(8, strict=True, ge=1, description="Replies per task, >= 1.")
        max_sample_tries: int = Field(10_000, strict=True, ge=1,
                                      description="Map draws allowed to find a solvable map, >= 1.")

    def __init__(self, **params: Any) -> None:
        p = parse_params(self.Params, params)
        self.name = p.name
        self.min_size = p.min_size
        self.max_size = p.max_size
        self.safe_prob_range = p.safe_prob_range
        self.max_env_steps = p.max_env_steps
        self.max_agent_steps = p.max_agent_steps
        self.max_sample_tries = p.max_sample_tries
        self.max_turns = self.max_agent_steps
        self.chance_reward = None
        self.system_prompt = self._build_system_prompt()

    def _build_system_prompt(self) -> str:
        return (
            "You are playing FrozenLake. You walk on a frozen lake drawn as a grid of letters:\n"
            "  P = you (the player), S = start, G = goal, H = hole, F = frozen (safe) ice.\n"
            "Rows are numbered from 0 at the top, columns from 0 at the left.\n"
            "Goal: reach G without stepping into a hole H. Falling into a hole ends the task as a failure. "
            "A move that would leave the grid keeps you where you are but still counts as a move. "
            f"You have at most {self.max_env_steps} moves and {self.max_agent_steps} replies per task.\n"
            "Actions: each move is one of the codes 1, 2, 3, 4. Each code moves you one tile Left, Down, "
            "Right or Up, but WHICH code means which direction is unknown to you. The meaning of the "
            "codes stays the same for every task in this environment, so work it out from the feedback "
            "and remember it: that is the key to solving later tasks.\n"
            "Each turn, think briefly, then end your reply with exactly one action in the form "
            "<answer>Direction X</answer>, where X is 1, 2, 3 or 4."
        )

    # -- CoDEnv -------------------------------------------------------------------------------
    def sample_world(self, rng: np.random.Generator) -> dict[str, Any]:
        """Draw the hidden code -> direction permutation: ``{"mapping": {"1": dir, ..., "4": dir}}``."""
        perm = rng.permutation(len(DIRECTIONS))
        return {"mapping": {code: DIRECTIONS[int(i)] for code, i in zip(CODES, perm)}}

    def sample_task(self, world: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        """Draw a solvable map whose shortest S -> G walk fits in ``max_env_steps`` moves."""
        for _ in range(self.max_sample_tries):
            n = int(rng.integers(self.min_size, self.max_size + 1))
            p_safe = float(rng.uniform(*self.safe_prob_range))
            safe = rng.random((n, n)) < p_safe
            s, g = rng.choice(n * n, size=2, replace=False)
            grid = [["F" if ok else "H" for ok in row] for row in safe]
            grid[int(s) // n][int(s) % n] = "S"
            grid[int(g) // n][int(g) % n] = "G"
            rows = ["".join(row) for row in grid]
            d = shortest_path(rows)
            if d is not None and d <= self.max_env_steps:
                return make_spec(rows)
        raise RuntimeError(f"{self.name}: no solvable map within {self.max_env_steps} moves "
                           f"after {self.max_sample_tries} tries")

    def start(self, pack: Pack, task: Task, state: Any = None) -> FrozenLakeEpisode:
        """Begin an episode of ``task`` using the code mapping of ``pack.world``."""
        return FrozenLakeEpisode(task.spec["rows"], _check_mapping(pack.world),
                                 self.max_env_steps, self.max_agent_steps)


class FrozenLakeEpisode(Episode):
    """One walk on one map. ``info`` of each step holds ``event`` (``move``, ``wall``, ``hole``,
    ``goal``, ``timeout``, ``invalid`` or ``over``), ``code``, ``direction``, ``position``
    (``[row, col]``), ``env_steps``, ``agent_steps`` and, on a timeout, ``limit``
    (``"env_steps"`` or ``"agent_steps"``)."""

    def __init__(self, rows: Sequence[str], mapping: dict[str, str], max_env_steps: int,
                 max_agent_steps: int) -> None:
        spec = make_spec(rows)
        self.rows: list[str] = spec["rows"]
        self.start_pos: tuple[int, int] = tuple(spec["start"])  # type: ignore[assignment]
        self.goal: tuple[int, int] = tuple(spec["goal"])  # type: ignore[assignment]
        self.mapping = dict(mapping)
        self.max_env_steps = max_env_steps
        self.max_agent_steps = max_agent_steps
        self.reset()

    # -- helpers ------------------------------------------------------------------------------
    def _moves_left(self) -> int:
        return max(0, min(self.max_env_steps - self.env_steps, self.max_agent_steps - self.agent_steps))

    def render(self) -> str:
        """The map with the player drawn as ``P``, one row per line, tiles separated by spaces."""
        r0, c0 = self.pos
        return "\n".join(" ".join("P" if (r, c) == (r0, c0) else t for c, t in enumerate(row))
                         for r, row in enumerate(self.rows))

    def _observation(self) -> str:
        r, c = self.pos
        gr, gc = self.goal
        return (f"Map (row 0 is the top row, col 0 the left column):\n{self.render()}\n"
                f"You are at row {r}, col {c}. The goal G is at row {gr}, col {gc}.\n"
                f"Moves left: {self._moves_left()}.\n{FORMAT_HINT}")

    def _info(self, event: str, code: str | None = None, direction: str | None = None,
              **extra: Any) -> dict[str, Any]:
        return {"event": event, "code": code, "direction": direction, "position": list(self.pos),
                "env_steps": self.env_steps, "agent_steps": self.agent_steps, **extra}

    # -- Episode ------------------------------------------------------------------------------
    def reset(self) -> str:
        """Put the player back on ``S`` and return the first observation."""
        self.pos: tuple[int, int] = self.start_pos
        self.env_steps = 0
        self.agent_steps = 0
        self.done = False
        return self._observation()

    def step(self, reply: str) -> StepResult:
        """Parse ``reply``, apply the move and describe what happened. Never raises."""
        if self.done:
            return StepResult(None, 0.0, True, "The task is already over.", True, self._info("over"))
        self.agent_steps += 1
        code = parse_action(reply)
        if code is None:
            self.done = True
            return StepResult(None, 0.0, True, INVALID_FEEDBACK, False, self._info("invalid"))
        direction = self.mapping[code]
        self.env_steps += 1
        dr, dc = DELTAS[direction]
        r, c = self.pos[0] + dr, self.pos[1] + dc
        if not (0 <= r < len(self.rows) and 0 <= c < len(self.rows[0])):
            event = "wall"
            text = (f"Action {code} tried to move {direction} but you hit the wall and stayed at "
                    f"row {self.pos[0]}, col {self.pos[1]}.")
        else:
            self.pos = (r, c)
            tile = self.rows[r][c]
            if tile == "G":
                self.done = True
                return StepResult(None, 1.0, True,
                                  f"Action {code} moved you {direction} onto the goal at row {r}, col {c}. "
                                  "Task solved!", True, self._info("goal", code, direction))
            if tile == "H":
                self.done = True
                return StepResult(None, 0.0, True,
                                  f"Action {code} moved you {direction} into a hole at row {r}, col {c}. "
                                  "You fell in. Task failed.", True, self._info("hole", code, direction))
            event = "move"
            text = f"Action {code} moved you {direction} to row {r}, col {c}."
        limit = ("env_steps" if self.env_steps >= self.max_env_steps
                 else "agent_steps" if self.agent_steps >= self.max_agent_steps else None)
        if limit is not None:
            self.done = True
            used = (f"all {self.max_env_steps} moves" if limit == "env_steps"
                    else f"all {self.max_agent_steps} replies")
            text += f" Step limit reached: you used {used} without reaching the goal. Task failed."
            return StepResult(None, 0.0, True, text, True,
                              self._info("timeout", code, direction, limit=limit, last_event=event))
        return StepResult(f"{text}\n\n{self._observation()}", 0.0, False, text, True,
                          self._info(event, code, direction))
