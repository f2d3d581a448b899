"""Scripted FrozenLake-Obscure agents: random codes, the oracle, and a code-mapping learner.

All three read the map from the observation text. The learner keeps ``code X = Direction`` lines
in its hints; it fills them from feedback such as "Action 3 moved you Down ..." and deduces the
last code when three are known.
"""

from __future__ import annotations

import re
from collections import deque

import numpy as np

from codrl.envs.base import Pack
from codrl.envs.frozenlake import CODES, DELTAS, DIRECTIONS
from codrl.envs.scripted.base import TurnText

_MOVED_RE = re.compile(r"Action ([1-4]) (?:moved you|tried to move) (Left|Down|Right|Up)")
_HINT_RE = re.compile(r"code ([1-4]) = (Left|Down|Right|Up)")


def _answer(code: str) -> str:
    return f"<answer>Direction {code}</answer>"


def parse_map(observation: str) -> tuple[list[list[str]], tuple[int, int], tuple[int, int]] | None:
    """(tiles, player, goal) from an observation's map drawing, or None if there is none."""
    if "Map (" not in observation:
        return None
    lines = observation.split("Map (", 1)[1].splitlines()[1:]
    grid: list[list[str]] = []
    for line in lines:
        cells = line.split()
        if not cells or any(len(c) != 1 or c not in "PSFHG" for c in cells):
            break
        grid.append(cells)
    player = next(((r, c) for r, row in enumerate(grid) for c, t in enumerate(row) if t == "P"), None)
    goal = next(((r, c) for r, row in enumerate(grid) for c, t in enumerate(row) if t == "G"), None)
    if not grid or player is None or goal is None:
        return None
    return grid, player, goal


def first_moves(grid: list[list[str]], start: tuple[int, int], goal: tuple[int, int]) -> list[str]:
    """Directions of first steps that begin a shortest hole-free walk from ``start`` to ``goal``."""
    n, m = len(grid), len(grid[0])
    dist = {goal: 0}
    queue = deque([goal])
    while queue:
        r, c = queue.popleft()
        for dr, dc in DELTAS.values():
            nr, nc = r + dr, c + dc
            if 0 <= nr < n and 0 <= nc < m and grid[nr][nc] != "H" and (nr, nc) not in dist:
                dist[(nr, nc)] = dist[(r, c)] + 1
                queue.append((nr, nc))
    best = []
    here = dist.get(start)
    for d in DIRECTIONS:
        dr, dc = DELTAS[d]
        nxt = (start[0] + dr, start[1] + dc)
        if here is not None and dist.get(nxt) == here - 1:
            best.append(d)
    return best


def _safe(grid: list[list[str]], pos: tuple[int, int], direction: str) -> bool:
    dr, dc = DELTAS[direction]
    r, c = pos[0] + dr, pos[1] + dc
    return not (0 <= r < len(grid) and 0 <= c < len(grid[0])) or grid[r][c] != "H"


class RandomAgent:
    """Uniform random codes: FrozenLake-Obscure's chance level."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def act(self, hints: str, observation: str) -> str:
        return _answer(str(self.rng.choice(CODES)))

    def write_hints(self, hints: str, transcript: list[TurnText], reward: float) -> str:
        return hints


class MappingAgent:
    """Walks a shortest path with the codes it knows; explores unknown codes where that is safe.

    The oracle is this agent given the true mapping; the learner starts from its hints.
    """

    def __init__(self, rng: np.random.Generator, mapping: dict[str, str] | None = None) -> None:
        self.rng = rng
        self.fixed = mapping
        self.known: dict[str, str] = dict(mapping or {})

    def _learn(self, text: str) -> None:
        for regex in (_HINT_RE, _MOVED_RE):
            for code, direction in regex.findall(text):
                self.known[code] = direction
        unknown = [c for c in CODES if c not in self.known]
        if len(unknown) == 1:
            (left,) = set(DIRECTIONS) - set(self.known.values()) or {None}
            if left is not None:
                self.known[unknown[0]] = left

    def act(self, hints: str, observation: str) -> str:
        if self.fixed is None:
            self._learn(hints + "\n" + observation)
        parsed = parse_map(observation)
        if parsed is None:
            return _answer(str(self.rng.choice(CODES)))
        grid, pos, goal = parsed
        by_dir = {d: c for c, d in self.known.items()}
        wanted = first_moves(grid, pos, goal)
        for d in wanted:
            if d in by_dir:
                return _answer(by_dir[d])
        unknown = [c for c in CODES if c not in self.known]
        missing_dirs = [d for d in DIRECTIONS if d not in by_dir]
        # An unknown code moves in one of the unmapped directions: try it only if none is a hole.
        if unknown and all(_safe(grid, pos, d) for d in missing_dirs):
            return _answer(str(self.rng.choice(unknown)))
        safe_known = [c for c, d in self.known.items() if _safe(grid, pos, d)]
        pool = safe_known or unknown or list(CODES)
        return _answer(str(self.rng.choice(pool)))

    def write_hints(self, hints: str, transcript: list[TurnText], reward: float) -> str:
        self._learn(hints + "\n" + "\n".join(t.feedback for t in transcript))
        return "\n".join(f"code {c} = {self.known[c]}" for c in CODES if c in self.known)


def random_agent(pack: Pack, rng: np.random.Generator) -> RandomAgent:
    return RandomAgent(rng)


def oracle_agent(pack: Pack, rng: np.random.Generator) -> MappingAgent:
    return MappingAgent(rng, mapping=dict(pack.world["mapping"]))


def learner_agent(pack: Pack, rng: np.random.Generator) -> MappingAgent:
    return MappingAgent(rng)
