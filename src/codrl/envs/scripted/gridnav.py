"""Scripted Grid Navigation agents: random rook moves, the oracle, and a cost-map learner.

All three read the task (position, goal, moves left, grid side) from the observation text.

* random: a uniformly random rook move inside the grid each turn (the chance level);
* oracle: reads the cost map from ``pack.world`` and follows the route of exactly R moves with
  the lowest mean cost (:func:`codrl.envs.gridnav.best_path`);
* learner: plans the same way, replanning every turn, over the costs it knows (the revealed
  grid of the observation, the entered cells of the last move and the ``row,col=cost`` entries
  of its hints), with every unknown cell estimated at a low ``prior`` (so it explores unknown
  ground). Its hints are every cost it has seen, ``row,col=cost`` separated by spaces.

With the environment's default ``keep_reveals=True`` the observation already shows every cost
seen earlier in the lifecycle, so the learner's hints repeat what the grid shows and the
memoryless control (empty hints) improves just as much; with ``keep_reveals=False`` the hints
are the only way the map crosses tasks.
"""

from __future__ import annotations

import re

import numpy as np

from codrl.envs.base import Pack
from codrl.envs.gridnav import Cell, best_path, rook_targets
from codrl.envs.scripted.base import TurnText

_ROUND_RE = re.compile(r"Round (\d+)/(\d+)")
_AT_RE = re.compile(r"You are at (\d+),(\d+)\. The goal is at (\d+),(\d+)\.")
_SIZE_RE = re.compile(r"Cost map \((\d+) x \d+")
_MOVE_RE = re.compile(r"[Mm]ove (\d+)\)?: \d+,\d+ -> \d+,\d+ entered \d+ cells?: ([0-9,= ]+)\.")
_COST_RE = re.compile(r"(\d+),(\d+)=(\d+)")


def _answer(cell: Cell) -> str:
    return f"<answer>{cell[0]},{cell[1]}</answer>"


class Situation:
    """What one observation says: position, goal, moves left, grid side and the revealed costs."""

    def __init__(self, observation: str) -> None:
        at = _AT_RE.search(observation)
        rnd = _ROUND_RE.search(observation)
        size = _SIZE_RE.search(observation)
        self.ok = at is not None and rnd is not None and size is not None
        if not self.ok:
            return
        assert at is not None and rnd is not None and size is not None
        self.pos: Cell = (int(at.group(1)), int(at.group(2)))
        self.goal: Cell = (int(at.group(3)), int(at.group(4)))
        self.moves_left = int(rnd.group(2)) - int(rnd.group(1)) + 1
        self.size = int(size.group(1))
        self._text = observation
        self._grid_at = size.end()
        self._known: dict[Cell, int] | None = None

    @property
    def known(self) -> dict[Cell, int]:
        """Revealed costs shown in the grid (and the last move's cells, hidden under ``@``/``G``)."""
        if self._known is None:
            known: dict[Cell, int] = {}
            lines = self._text[self._grid_at:].splitlines()[2:2 + self.size]
            for r, line in enumerate(lines):
                for c, tok in enumerate(line.split()[1:1 + self.size]):
                    if tok.isdigit():
                        known[(r, c)] = int(tok)
            last = _MOVE_RE.search(self._text)
            if last is not None:
                for r, c, v in _COST_RE.findall(last.group(2)):
                    known[(int(r), int(c))] = int(v)
            self._known = known
        return self._known


class RandomAgent:
    """A uniformly random rook move inside the grid each turn: Grid Navigation's chance level."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def act(self, hints: str, observation: str) -> str:
        sit = Situation(observation)
        if not sit.ok:
            return _answer((0, 0))
        targets = rook_targets(sit.size, sit.pos)
        return _answer(targets[int(self.rng.integers(len(targets)))])

    def write_hints(self, hints: str, transcript: list[TurnText], reward: float) -> str:
        return hints


class PlanningAgent:
    """Follows the lowest-mean route of exactly the moves left, replanning every turn.

    The oracle plans on the true cost map; the learner on the costs it knows, where each unknown
    cell is estimated at ``prior`` (a low prior makes it explore unknown ground; 10 measured best
    of 0, 10 and 30). ``spent``/``entered`` sum this task's entered costs, read from the last-move
    line of each observation, so each plan minimises the mean of the whole task.
    """

    def __init__(self, rng: np.random.Generator, costs: np.ndarray | None = None, prior: float = 10.0) -> None:
        self.rng = rng
        self.costs = costs
        self.prior = prior
        self.spent = 0.0
        self.entered = 0
        self.tracked = 0  # moves of this task whose entered costs are summed in spent/entered

    def _track(self, observation: str) -> None:
        m = _MOVE_RE.search(observation)
        if m is not None and int(m.group(1)) > self.tracked:
            self.tracked = int(m.group(1))
            for _r, _c, v in _COST_RE.findall(m.group(2)):
                self.spent += int(v)
                self.entered += 1

    def estimate(self, sit: Situation, hints: str) -> np.ndarray:
        """The cost map the learner plans on: known costs, ``prior`` elsewhere."""
        est = np.full((sit.size, sit.size), float(self.prior))
        for r, c, v in _COST_RE.findall(hints):
            if int(r) < sit.size and int(c) < sit.size:
                est[int(r), int(c)] = int(v)
        for (r, c), v in sit.known.items():
            est[r, c] = v
        return est

    def act(self, hints: str, observation: str) -> str:
        self._track(observation)
        sit = Situation(observation)
        if not sit.ok:
            return _answer((0, 0))
        costs = self.costs if self.costs is not None else self.estimate(sit, hints)
        plan = best_path(np.asarray(costs, dtype=float), sit.pos, sit.goal, sit.moves_left,
                         self.spent, self.entered)
        if not plan or not plan[0]:
            targets = rook_targets(sit.size, sit.pos)
            return _answer(targets[int(self.rng.integers(len(targets)))])
        return _answer(plan[0][0])

    def write_hints(self, hints: str, transcript: list[TurnText], reward: float) -> str:
        known: dict[Cell, int] = {(int(r), int(c)): int(v) for r, c, v in _COST_RE.findall(hints)}
        for turn in transcript:
            for text in (turn.observation, turn.feedback):
                sit = Situation(text)
                if sit.ok:
                    known.update(sit.known)
                for m in _MOVE_RE.finditer(text):
                    for r, c, v in _COST_RE.findall(m.group(2)):
                        known[(int(r), int(c))] = int(v)
        return " ".join(f"{r},{c}={v}" for (r, c), v in sorted(known.items()))


def random_agent(pack: Pack, rng: np.random.Generator) -> RandomAgent:
    return RandomAgent(rng)


def oracle_agent(pack: Pack, rng: np.random.Generator) -> PlanningAgent:
    return PlanningAgent(rng, costs=np.asarray(pack.world["costs"], dtype=float))


def learner_agent(pack: Pack, rng: np.random.Generator) -> PlanningAgent:
    return PlanningAgent(rng)
