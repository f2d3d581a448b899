"""Scripted Alchemy-Random agents: random pairs, the oracle, and a recipe learner.

All three read the target, the tiers and the inventory from the observation text. The learner
keeps ``a + b -> c`` lines (recipes found) and ``a + b -> nothing`` lines (pairs that failed) in its
hints; it fills them from feedback such as "fira + zek -> dova (new!)" and "nothing happened: no
recipe for fira + lumo". It crafts the target along a plan over the recipes it knows; when it knows
none, it tries untested pairs one tier below an element it still needs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from codrl.envs.alchemy import plan_crafts
from codrl.envs.base import Pack
from codrl.envs.scripted.base import TurnText

_TARGET_RE = re.compile(r"Target: make ([a-z]+) \(a tier (\d+) element\)")
_TIER_RE = re.compile(r"^\s*tier (\d+)(?: \(base\))?: (.*)$", re.MULTILINE)
_INVENTORY_RE = re.compile(r"^Inventory \(([^)]*)\): (.*)$", re.MULTILINE)
_MADE_RE = re.compile(r"\b([a-z]+) \+ ([a-z]+) -> ([a-z]+)")
_NOTHING_RE = re.compile(r"no recipe for ([a-z]+) \+ ([a-z]+)")
NOTHING = "nothing"


def _answer(a: str, b: str) -> str:
    return f"<answer>{a} + {b}</answer>"


def _key(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a <= b else (b, a)


@dataclass
class View:
    """What an observation shows: target, its tier, the tiers, the inventory (None = unlimited)."""

    target: str
    target_tier: int
    tiers: list[list[str]]
    inventory: dict[str, int | None]
    #: Whether the inventory shows counts (limited materials).
    limited: bool = field(init=False)
    #: Elements at hand (unlimited, or at least one unit left).
    have: set[str] = field(init=False)
    _tier: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._tier = {e: t for t, es in enumerate(self.tiers) for e in es}
        self.limited = any(c is not None for c in self.inventory.values())
        self.have = {e for e, c in self.inventory.items() if c is None or c > 0}

    def tier_of(self, e: str) -> int:
        """The tier an element is listed in (-1 if it is not listed)."""
        return self._tier.get(e, -1)

    def valid_pairs(self) -> list[tuple[str, str]]:
        """Every unordered pair the inventory can pay for, in inventory order."""
        have = [e for e in self.inventory if e in self.have]
        return [(x, y) for i, x in enumerate(have) for y in have[i:]
                if x != y or self.inventory[x] is None or (self.inventory[x] or 0) >= 2]


def parse_view(observation: str) -> View | None:
    """Read the target, tiers and inventory from an observation, or None if they are missing."""
    target = _TARGET_RE.search(observation)
    inventory = _INVENTORY_RE.search(observation)
    if target is None or inventory is None:
        return None
    tiers: list[list[str]] = []
    for t, names in _TIER_RE.findall(observation):
        if int(t) == len(tiers):
            tiers.append([n.strip() for n in names.split(",") if n.strip()])
    inv: dict[str, int | None] = {}
    for item in inventory.group(2).split(","):
        parts = item.split()
        if len(parts) == 2 and parts[1].startswith("x") and parts[1][1:].isdigit():
            inv[parts[0]] = int(parts[1][1:])
        elif len(parts) == 1:
            inv[parts[0]] = None
    return View(target.group(1), int(target.group(2)), tiers, inv)


class RandomAgent:
    """A uniformly random pair the inventory can pay for: Alchemy-Random's chance level."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def act(self, hints: str, observation: str) -> str:
        view = parse_view(observation)
        pairs = view.valid_pairs() if view is not None else []
        if not pairs:
            return _answer("a", "b")
        return _answer(*pairs[int(self.rng.integers(len(pairs)))])

    def write_hints(self, hints: str, transcript: list[TurnText], reward: float) -> str:
        return hints


class OracleAgent:
    """Crafts the target along the shortest plan over the world's true recipes."""

    def __init__(self, rng: np.random.Generator, recipes: list[list[str]]) -> None:
        self.rng = rng
        self.recipes = [tuple(r) for r in recipes]

    def act(self, hints: str, observation: str) -> str:
        view = parse_view(observation)
        if view is None:
            return _answer("a", "b")
        plan = plan_crafts(self.recipes, view.inventory, view.target, view.limited)
        if plan:
            return _answer(plan[0][0], plan[0][1])
        pairs = view.valid_pairs()
        return _answer(*pairs[int(self.rng.integers(len(pairs)))]) if pairs else _answer("a", "b")

    def write_hints(self, hints: str, transcript: list[TurnText], reward: float) -> str:
        return hints


class LearnerAgent:
    """Learns recipes and failed pairs from feedback text; plans with what it knows, else explores."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.made: dict[tuple[str, str], str] = {}
        self.failed: set[tuple[str, str]] = set()
        self._hints_read: str | None = None

    def _learn(self, text: str) -> None:
        for a, b, r in _MADE_RE.findall(text):
            if r == NOTHING:
                self.failed.add(_key(a, b))
            else:
                self.made[_key(a, b)] = r
        for a, b in _NOTHING_RE.findall(text):
            self.failed.add(_key(a, b))

    def _explore_tiers(self, view: View) -> list[int]:
        """Tiers (highest first) whose pairs may make an element the target still needs."""
        by_result: dict[str, list[tuple[str, str]]] = {}
        for pair, r in self.made.items():
            by_result.setdefault(r, []).append(pair)
        tiers: set[int] = set()
        todo, seen = [view.target], set()
        while todo:
            e = todo.pop()
            if e in seen or e in view.have:
                continue
            seen.add(e)
            if e in by_result:
                todo.extend(x for pair in by_result[e] for x in pair)
            else:
                tiers.add(view.tier_of(e) - 1)
        return sorted((t for t in tiers if t >= 0), reverse=True)

    def _tested(self, a: str, b: str) -> bool:
        return _key(a, b) in self.made or _key(a, b) in self.failed

    def act(self, hints: str, observation: str) -> str:
        if hints != self._hints_read:
            self._learn(hints)
            self._hints_read = hints
        self._learn(observation)
        view = parse_view(observation)
        if view is None:
            return _answer("a", "b")
        known = [(a, b, r) for (a, b), r in sorted(self.made.items())]
        plan = plan_crafts(known, view.inventory, view.target, view.limited)
        if plan:
            return _answer(plan[0][0], plan[0][1])
        pairs = view.valid_pairs()
        untested = [p for p in pairs if not self._tested(*p)
                    and view.tier_of(p[0]) == view.tier_of(p[1]) < view.target_tier]
        tiers = self._explore_tiers(view)
        tiers += [t for t in range(view.target_tier - 1, -1, -1) if t not in tiers]
        for t in tiers:
            pool = [p for p in untested if view.tier_of(p[0]) == t]
            if pool:
                return _answer(*pool[int(self.rng.integers(len(pool)))])
            # No untested pair of tier t at hand: make a tier-t element (by a known recipe) that
            # opens one, e.g. a second unit of x to try x + x, or an element not yet in stock.
            steps = []
            for e in view.tiers[t] if t < len(view.tiers) else ():
                if all(self._tested(e, x) for x in view.tiers[t] if x == e or x in view.have):
                    continue
                step = plan_crafts(known, view.inventory, e, view.limited)
                if step:
                    steps.append(step[0])
            if steps:
                a, b, _ = steps[int(self.rng.integers(len(steps)))]
                return _answer(a, b)
        return _answer(*pairs[int(self.rng.integers(len(pairs)))]) if pairs else _answer("a", "b")

    def write_hints(self, hints: str, transcript: list[TurnText], reward: float) -> str:
        self._learn(hints + "\n" + "\n".join(t.feedback for t in transcript))
        lines = [f"{a} + {b} -> {r}" for (a, b), r in sorted(self.made.items())]
        lines += [f"{a} + {b} -> {NOTHING}" for a, b in sorted(self.failed)]
        return "\n".join(lines)


def random_agent(pack: Pack, rng: np.random.Generator) -> RandomAgent:
    return RandomAgent(rng)


def oracle_agent(pack: Pack, rng: np.random.Generator) -> OracleAgent:
    return OracleAgent(rng, pack.world["recipes"])


def learner_agent(pack: Pack, rng: np.random.Generator) -> LearnerAgent:
    return LearnerAgent(rng)
