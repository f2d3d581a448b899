"""Alchemy-Random: craft a target element from a hidden, randomly drawn recipe graph.

Each *world* is a tiered graph of elements with invented lowercase names (3-5 letters). Tier 0
holds the base elements the agent starts with; every element of tier ``t > 0`` is made by
combining two elements of tier ``t - 1`` (an unordered pair; the same element twice is allowed; no
pair makes two things). Which pairs make which element is the hidden knowledge: it is shared by
every task of a pack, so recipes found and pairs that failed, written into the hints, make later
tasks quick.

Each task asks for one target element (never a base element; higher tiers are more likely). Each
turn the agent combines two elements of its inventory with ``<answer>A + B</answer>``; a pair with
a recipe adds its result to the inventory, any other pair does nothing. The task is solved when the
target is crafted, with reward ``1 - 0.1 * rounds_used / max_rounds``; running out of rounds (or of
materials), or a malformed reply, scores 0.

Variants (every knob can also be set on its own; a pair ``(low, high)`` is a range drawn from
uniformly, per world, or per task for ``stock_factor``):

============================  ==============  ================
knob                          ``easy``        ``hard``
============================  ==============  ================
``tiers`` (incl. tier 0)      3-4             3-4
``base_elements``             3-4             4-6
``shrink`` (tier size ratio)  0.4-0.6         0.4-0.8
``recipes_per_element``       1               1-2
``noise_fraction``            0               0-0.3
``limited_materials``         False           True
``stock_factor``              (unused)        1.5-2.0
``max_rounds``                8               15
============================  ==============  ================

*Noise* elements are dead ends: they have recipes of their own but are never an ingredient of
anything and never a target; the observation lists them among the others, unmarked. With *limited
materials* the inventory holds counts: every combination, successful or not, uses up one unit of
each input (two units of an element combined with itself), a successful one adds one unit of its
result, and each base element starts with ``ceil(f * max(1, need))`` units, where ``need`` is what
one cheapest solution path (:func:`plan_crafts`) consumes and ``f`` is drawn from
``stock_factor``. The task also fails once fewer than two units are left.

World format (tiers and noise sorted by name; recipes as ``[a, b, result]`` with ``a <= b``)::

    {"tiers": [["fira", "lumo", "zek"], ["dova", "kilu"], ["pemo"], ["velo"]],
     "recipes": [["fira", "zek", "dova"], ["lumo", "lumo", "kilu"], ...], "noise": []}

Task spec format: ``{"target": "velo"}``, plus ``"stock": {"fira": 3, ...}`` (one count per base
element) with limited materials.

The split is decided per world (a hash of the recipe graph), so a train pack and a test pack never
share a world, let alone a task; worlds are redrawn until one of the requested split comes up.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, get_args

import numpy as np
from pydantic import Field

from codrl.envs.base import (CoDEnv, EnvParams, Episode, Pack, StepResult, Task, ValueOrPair, answer_span,
                             parse_params)

Variant = Literal["easy", "hard"]
VARIANTS: tuple[str, ...] = get_args(Variant)

#: Knob defaults of each variant (ranges are inclusive ``(low, high)`` pairs).
VARIANT_DEFAULTS: dict[str, dict[str, Any]] = {
    "easy": {"tiers": (3, 4), "base_elements": (3, 4), "shrink": (0.4, 0.6), "recipes_per_element": (1, 1),
             "noise_fraction": (0.0, 0.0), "limited_materials": False, "stock_factor": (1.5, 2.0),
             "max_rounds": 8},
    "hard": {"tiers": (3, 4), "base_elements": (4, 6), "shrink": (0.4, 0.8), "recipes_per_element": (1, 2),
             "noise_fraction": (0.0, 0.3), "limited_materials": True, "stock_factor": (1.5, 2.0),
             "max_rounds": 15},
}

#: Mean reward of :func:`codrl.envs.scripted.alchemy.random_agent` (a uniformly random pair the
#: inventory can pay for, each round) with the variant's default knobs, measured with
#: ``checklist.reward_matrix(env, random_agent, packs=2000, pack_size=4, seed=0)`` on each split and
#: averaged (easy: test 0.228, train 0.225; hard: test 0.179, train 0.175; per-task standard
#: deviation 0.40 and 0.38, so about +-0.005 on each mean).
CHANCE_REWARD: dict[str, float] = {"easy": 0.227, "hard": 0.177}
_EASY = VARIANT_DEFAULTS["easy"]

#: Letters of invented names: consonant-vowel alternation keeps them pronounceable (``bakol``).
_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"
#: Short words of the prompts and feedback, and slurs, that an invented name must not spell.
RESERVED = frozenset(
    "a an and any are as at base be by can did each end for from gets go had has have if in into is it its "
    "left made make may more new none not of on one or out run same so the them then this tier to two up "
    "use used was what when with you your zero "
    "dago dik fag fagot fuk kike kok nazi paki pedo penis puta puto rape raped semen tit titi".split())

_PAIR_RE = re.compile(r"\s*([A-Za-z]+)\s*\+\s*([A-Za-z]+)\s*", re.ASCII)
#: Answer-tag contents longer than this are malformed (two names of 3-5 letters need far less).
_MAX_CONTENT = 200

FORMAT_HINT = ("Reply with exactly one combination as <answer>A + B</answer>, where A and B are two elements "
               "in your inventory (A and B may be the same element).")


def _invalid_feedback(reason: str) -> str:
    return (f"Invalid answer: {reason}. Expected exactly one <answer>A + B</answer> where A and B are elements "
            "in your inventory. The task ended with reward 0.")


def parse_pair(reply: Any) -> tuple[str, str] | str:
    """The two lowercased names of ``reply``'s single ``<answer>A + B</answer>``, or why it is malformed.

    Exactly one opening and one closing answer tag (any case, spaces before ``>`` allowed), in that
    order, with at most ``_MAX_CONTENT`` characters between them (see
    :func:`~codrl.envs.base.answer_span`), must enclose two names of ASCII letters joined by ``+``
    (whitespace around them is ignored). Returns ``(a, b)`` as written, lowercased, or a short
    reason string. Runs in linear time on arbitrarily long input.
    """
    span = answer_span(reply, _MAX_CONTENT, "the answer is too long to be two element names")
    if isinstance(span, str):
        return span
    m = _PAIR_RE.fullmatch(reply, *span)
    if m is None:
        return "the answer is not two element names joined by +"
    return m.group(1).lower(), m.group(2).lower()


def _pair_key(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a <= b else (b, a)


def plan_crafts(recipes: Sequence[Sequence[str]], inventory: Mapping[str, int | None], target: str,
                limited: bool) -> list[tuple[str, str, str]] | None:
    """A short sequence of crafts ``(a, b, result)`` that ends with ``target``, or None if none is known.

    ``recipes`` are ``(a, b, result)`` triples (the whole world's, or those an agent has found);
    ``inventory`` maps an element to its count, or to None for an unlimited supply; missing
    elements are absent. With ``limited`` every craft uses up its inputs, so an element needed
    twice is crafted twice; otherwise an element once made stays available. Recipes are chosen by
    the fewest crafts of their ingredient tree (ties: the order of ``recipes``), so the plan is the
    shortest one when every element has one recipe. Deterministic.
    """
    by_result: dict[str, list[tuple[str, str]]] = {}
    for a, b, r in recipes:
        by_result.setdefault(r, []).append((a, b))
    have = {e: c for e, c in inventory.items() if c is None or c > 0}
    cost_memo: dict[str, float] = {}

    def cost(e: str) -> float:
        """Crafts in the cheapest ingredient tree of ``e`` (inf if it cannot be made)."""
        if e in have:
            return 0.0
        if e not in cost_memo:
            cost_memo[e] = math.inf  # guards against cyclic (wrongly noted) recipes
            cost_memo[e] = min((1.0 + cost(a) + cost(b) for a, b in by_result.get(e, ())), default=math.inf)
        return cost_memo[e]

    counts: dict[str, int | None] = dict(have)
    plan: list[tuple[str, str, str]] = []

    def obtain(e: str, depth: int) -> bool:
        """Make one unit of ``e`` available (reserving it when limited); append needed crafts."""
        c = counts.get(e, 0)
        if c is None:
            return True
        if c > 0:
            counts[e] = c - 1 if limited else c
            return True
        return craft(e, depth)

    def craft(e: str, depth: int) -> bool:
        if depth > 64:
            return False
        options = sorted(by_result.get(e, ()), key=lambda ab: cost(ab[0]) + cost(ab[1]))
        for a, b in options:
            if cost(a) + cost(b) == math.inf:
                continue
            saved_counts, saved_len = dict(counts), len(plan)
            if obtain(a, depth + 1) and obtain(b, depth + 1):
                plan.append((a, b, e))
                if not limited:
                    counts[e] = None
                return True
            counts.clear()
            counts.update(saved_counts)
            del plan[saved_len:]
        return False

    return plan if craft(target, 0) else None


def _draw_name(rng: np.random.Generator, taken: set[str]) -> str:
    """A new invented name: 3-5 letters alternating consonant and vowel, uniform for its length."""
    while True:
        n = int(rng.integers(3, 6))
        alphabets = [_CONSONANTS if i % 2 == 0 else _VOWELS for i in range(n)]
        k = int(rng.integers(math.prod(len(a) for a in alphabets)))
        letters = []
        for alphabet in alphabets:
            k, i = divmod(k, len(alphabet))
            letters.append(alphabet[i])
        name = "".join(letters)
        if name not in taken and name not in RESERVED:
            taken.add(name)
            return name


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


class AlchemyRandom(CoDEnv):
    """Alchemy-Random: craft target elements from a hidden random recipe graph shared by a pack.

    Parameters: the keywords of :class:`AlchemyRandom.Params` (a knob left out or ``None`` takes the
    ``variant``'s value, see the module docstring; ranges are a number or an inclusive
    ``(low, high)`` pair). Rewards: ``1 - 0.1 * rounds_used / max_rounds`` for crafting
    the target; 0.0 for running out of rounds or materials, or for a malformed reply (which ends
    the episode at once).
    """

    reply_prefix = "<answer>"
    stop_strings = ("</answer>",)
    #: An easy world has only a handful of possible targets: the split is decided per world.
    split_by = "world"
    #: A crafted target scores 1 - 0.1 x rounds_used / max_rounds >= 0.9; a failure scores 0.
    success_threshold = 0.5

    class Params(EnvParams):
        """Alchemy-Random's parameters: the knobs left out take the variant's value."""

        variant_field = "variant"
        variant_defaults = VARIANT_DEFAULTS
        name: str = Field("alchemy", min_length=1, description="Name of the environment (pack ids, reports).")
        variant: Variant = Field("easy", description="Preset of the knobs below (see the module docstring).")
        tiers: ValueOrPair[Annotated[int, Field(strict=True, ge=2, le=8)]] = Field(
            _EASY["tiers"], description="Tiers per world, base tier included: a number or a (low, high) range, 2-8.")
        base_elements: ValueOrPair[Annotated[int, Field(strict=True, ge=1, le=12)]] = Field(
            _EASY["base_elements"], description="Base elements per world: a number or a range, 1-12.")
        shrink: ValueOrPair[Annotated[float, Field(strict=True, gt=0.0, le=1.0)]] = Field(
            _EASY["shrink"], description="Each tier holds about shrink x the previous one's elements (at least 1): "
                                         "a number or a range in (0, 1].")
        recipes_per_element: ValueOrPair[Annotated[int, Field(strict=True, ge=1, le=3)]] = Field(
            _EASY["recipes_per_element"], description="Recipes that make each element: a number or a range, 1-3.")
        noise_fraction: ValueOrPair[Annotated[float, Field(strict=True, ge=0.0, le=1.0)]] = Field(
            _EASY["noise_fraction"], description="Dead-end elements added, as a fraction of the needed ones: "
                                                 "a number or a range in [0, 1].")
        limited_materials: bool = Field(
            _EASY["limited_materials"], strict=True,
            description="Whether every combination uses up its inputs (inventory counts, dead ends matter).")
        stock_factor: ValueOrPair[Annotated[float, Field(strict=True, ge=1.0, le=10.0)]] = Field(
            _EASY["stock_factor"], description="Base stock per task, as a multiple of one cheapest path's needs "
                                               "(limited materials only): a number or a range in [1, 10].")
        max_rounds: int = Field(_EASY["max_rounds"], strict=True, ge=1, le=1000,
                                description="Combinations (turns) per task, 1-1000.")
        max_world_tries: int = Field(1000, strict=True, ge=1, le=10**9,
                                     description="World redraws allowed to land in the requested split.")

    def __init__(self, **params: Any) -> None:
        p = parse_params(self.Params, params)
        self.name = p.name
        self.variant = p.variant
        self.tiers = p.tiers
        self.base_elements = p.base_elements
        self.shrink = p.shrink
        self.recipes_per_element = p.recipes_per_element
        self.noise_fraction = p.noise_fraction
        self.stock_factor = p.stock_factor
        self.limited_materials = p.limited_materials
        self.max_rounds = p.max_rounds
        self.max_world_tries = p.max_world_tries
        self.max_turns = self.max_rounds
        # The measured chance level holds only for the variant's own defaults.
        self.chance_reward = CHANCE_REWARD[p.variant] if p.at_defaults(*VARIANT_DEFAULTS[p.variant]) else None
        self.system_prompt = self._build_system_prompt()

    def _build_system_prompt(self) -> str:
        if self.limited_materials:
            supply = ("Your materials are limited: the inventory shows how many units of each element you have. "
                      "Every combination, successful or not, uses up one unit of each of its two elements (two "
                      "units when you combine an element with itself); a successful one adds one unit of the new "
                      "element. If you run out of materials, the task fails. Some elements are dead ends that "
                      "are never needed.")
        else:
            supply = ("You have an unlimited supply of every element in your inventory; each element you make "
                      "is added to it.")
        return (
            "You are playing Alchemy. You make new elements by combining two elements you have.\n"
            "The elements have invented names and are sorted into tiers. Tier 0 holds the base elements you "
            "start with. Every element of a higher tier t is made by combining two elements of tier t-1 (an "
            "element may be combined with itself). Which pairs make which element is hidden, and many pairs "
            "make nothing. The recipes stay the same for every task in this environment, so remember the "
            "recipes you find and the pairs that made nothing: that is the key to solving later tasks quickly.\n"
            f"Goal: make the target element. Each round you try one combination; you have at most "
            f"{self.max_rounds} rounds. Making the target in fewer rounds scores higher. {supply}\n"
            "Each turn, answer with exactly one combination in the form <answer>A + B</answer>, where A and B "
            "are names of elements in your inventory. Write only one <answer> tag and put nothing else inside "
            "it. Any other reply, or an element you do not have, ends the task as a failure."
        )

    # -- CoDEnv -------------------------------------------------------------------------------
    def sample_world(self, rng: np.random.Generator) -> dict[str, Any]:
        """Draw a recipe graph: tier sizes, invented names, recipes and dead-end noise elements."""
        n_tiers = int(rng.integers(self.tiers[0], self.tiers[1] + 1))
        n_base = int(rng.integers(self.base_elements[0], self.base_elements[1] + 1))
        shrink = float(rng.uniform(*self.shrink))
        sizes = [n_base]
        for _ in range(1, n_tiers):
            sizes.append(max(1, _round_half_up(sizes[-1] * shrink)))
        frac = float(rng.uniform(*self.noise_fraction))
        n_noise = _round_half_up(frac * sum(sizes[1:]))
        noise_per_tier = [0] * n_tiers
        for _ in range(n_noise):
            noise_per_tier[int(rng.integers(1, n_tiers))] += 1
        taken: set[str] = set()
        core: list[list[str]] = [[_draw_name(rng, taken) for _ in range(n_base)]]
        tiers: list[list[str]] = [sorted(core[0])]
        noise: list[str] = []
        recipes: list[list[str]] = []
        for t in range(1, n_tiers):
            prev = sorted(core[t - 1])
            pairs = [(prev[i], prev[j]) for i in range(len(prev)) for j in range(i, len(prev))]
            order = [pairs[int(i)] for i in rng.permutation(len(pairs))]
            n_core = min(sizes[t], len(order))
            n_extra = min(noise_per_tier[t], len(order) - n_core)
            counts = [int(rng.integers(self.recipes_per_element[0], self.recipes_per_element[1] + 1))
                      for _ in range(n_core + n_extra)]
            while sum(counts) > len(order):  # not enough pairs: trim random elements down to 1 recipe
                over = [i for i, c in enumerate(counts) if c > 1]
                counts[over[int(rng.integers(len(over)))]] -= 1
            names = [_draw_name(rng, taken) for _ in range(n_core + n_extra)]
            core.append(names[:n_core])
            noise.extend(names[n_core:])
            tiers.append(sorted(names))
            k = 0
            for nm, c in zip(names, counts):
                recipes.extend([a, b, nm] for a, b in order[k:k + c])
                k += c
        tier_of = {e: t for t, es in enumerate(tiers) for e in es}
        recipes.sort(key=lambda r: (tier_of[r[2]], r[2], r[0], r[1]))
        return {"tiers": tiers, "recipes": recipes, "noise": sorted(noise)}

    def sample_task(self, world: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        """Draw a target (a tier ``t`` element with weight ``t``, spread over the tier's needed
        elements) and, with limited materials, the starting stock of every base element."""
        tiers, recipes, noise = _check_world(world)
        noise_set = set(noise)
        candidates = [[e for e in tiers[t] if e not in noise_set] for t in range(len(tiers))]
        weights = np.array([float(t) if candidates[t] else 0.0 for t in range(len(tiers))])
        t = int(rng.choice(len(tiers), p=weights / weights.sum()))
        target = candidates[t][int(rng.integers(len(candidates[t])))]
        spec: dict[str, Any] = {"target": target}
        if self.limited_materials:
            need = base_need(world, target)
            spec["stock"] = {b: int(math.ceil(float(rng.uniform(*self.stock_factor)) * max(1, need.get(b, 0))))
                             for b in tiers[0]}
        return spec

    def start(self, pack: Pack, task: Task, state: Any = None) -> AlchemyEpisode:
        """Begin an episode of ``task`` in the recipe graph of ``pack.world``."""
        tiers, recipes, _ = _check_world(pack.world)
        spec = task.spec if isinstance(task.spec, dict) else {}
        target = spec.get("target")
        if not isinstance(target, str) or target in tiers[0] or not any(target in ts for ts in tiers):
            raise ValueError(f"{self.name}: task target must be a non-base element of the world, got {target!r}")
        stock: dict[str, int] | None = None
        if self.limited_materials:
            raw = spec.get("stock")
            if (not isinstance(raw, dict) or sorted(raw) != sorted(tiers[0])
                    or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in raw.values())):
                raise ValueError(f"{self.name}: limited materials need a task stock of one count per base element "
                                 f"{tiers[0]}, got {raw!r}")
            stock = {str(k): int(v) for k, v in raw.items()}
        return AlchemyEpisode(tiers, recipes, target, stock, self.max_rounds)


def base_need(world: dict[str, Any], target: str) -> dict[str, int]:
    """Units of each base element that one cheapest solution path to ``target`` uses up (limited materials)."""
    tiers, recipes, _ = _check_world(world)
    plan = plan_crafts(recipes, {b: None for b in tiers[0]}, target, limited=True)
    need: dict[str, int] = {}
    for a, b, _ in plan or ():
        for x in (a, b):
            if x in tiers[0]:
                need[x] = need.get(x, 0) + 1
    return need


def _check_world(world: Any) -> tuple[list[list[str]], list[tuple[str, str, str]], list[str]]:
    """Validate a world dict; return (tiers, recipes, noise)."""
    try:
        tiers = [[str(e) for e in tier] for tier in world["tiers"]]
        recipes = [(str(a), str(b), str(r)) for a, b, r in world["recipes"]]
        noise = [str(e) for e in world.get("noise", [])]
        ok = len(tiers) >= 2 and all(tiers) and all(isinstance(t, list) for t in world["tiers"])
    except (TypeError, KeyError, ValueError, AttributeError):
        ok = False
    if not ok:
        raise ValueError(f"alchemy world needs 'tiers' (lists of names, base tier first) and 'recipes' "
                         f"([a, b, result] triples), got {world!r}")
    return tiers, recipes, noise


class AlchemyEpisode(Episode):
    """One attempt at crafting one target. ``info`` of each step holds ``event`` (``crafted``,
    ``nothing``, ``solved``, ``timeout``, ``exhausted``, ``invalid`` or ``over``), ``pair`` (the
    two names, or None), ``result`` (the crafted element, or None), ``rounds`` (rounds used) and
    ``inventory`` (element -> count, None meaning unlimited)."""

    def __init__(self, tiers: list[list[str]], recipes: Sequence[Sequence[str]], target: str,
                 stock: dict[str, int] | None, max_rounds: int) -> None:
        self.tiers = [list(t) for t in tiers]
        self.tier_of = {e: t for t, es in enumerate(self.tiers) for e in es}
        self.recipes = {_pair_key(a, b): r for a, b, r in recipes}
        self.target = target
        self.stock = None if stock is None else dict(stock)
        self.max_rounds = max_rounds
        self.reset()

    # -- helpers ------------------------------------------------------------------------------
    @property
    def limited(self) -> bool:
        return self.stock is not None

    def _inventory_text(self) -> str:
        if self.limited:
            items = ", ".join(f"{e} x{c}" for e, c in self.inventory.items())
            return f"Inventory (each combination uses up one unit of each input): {items}"
        return f"Inventory (unlimited supply of each): {', '.join(self.inventory)}"

    def _observation(self) -> str:
        lines = [f"Round {self.rounds + 1} of {self.max_rounds}. Target: make {self.target} "
                 f"(a tier {self.tier_of[self.target]} element).",
                 "Elements by tier (each element of tier t is made by combining two elements of tier t-1):"]
        lines += [f"  tier {t}{' (base)' if t == 0 else ''}: {', '.join(es)}" for t, es in enumerate(self.tiers)]
        lines.append(self._inventory_text())
        lines.append(f"Last outcome: {self.last}")
        lines.append(FORMAT_HINT)
        return "\n".join(lines)

    def _info(self, event: str, pair: tuple[str, str] | None = None, result: str | None = None) -> dict[str, Any]:
        return {"event": event, "pair": list(pair) if pair else None, "result": result, "rounds": self.rounds,
                "inventory": dict(self.inventory)}

    def _check_have(self, pair: tuple[str, str]) -> str | None:
        """Why the pair cannot be combined now, or None."""
        for x in dict.fromkeys(pair):
            if x not in self.tier_of:
                return f"{x!r} is not an element of this world"
            have = self.inventory.get(x, 0)
            if have == 0:
                return f"{x} is not in your inventory"
            uses = pair.count(x)
            if have is not None and have < uses:
                return f"combining {x} with itself needs 2 units of {x}, you have {have}"
        return None

    def _invalid(self, reason: str) -> StepResult:
        self.done = True
        return StepResult(None, 0.0, True, _invalid_feedback(reason), False, self._info("invalid"))

    # -- Episode ------------------------------------------------------------------------------
    def reset(self) -> str:
        """Refill the starting inventory and return the first observation."""
        base = self.tiers[0]
        self.inventory: dict[str, int | None] = ({b: self.stock[b] for b in base} if self.stock is not None
                                                 else {b: None for b in base})
        self.rounds = 0
        self.done = False
        self.last = "none yet (this is the first round)."
        return self._observation()

    def step(self, reply: str) -> StepResult:
        """Parse ``reply``, try the combination and describe what happened. Never raises."""
        if self.done:
            return StepResult(None, 0.0, True, "The task is already over.", True, self._info("over"))
        parsed = parse_pair(reply)
        if isinstance(parsed, str):
            return self._invalid(parsed)
        why = self._check_have(parsed)
        if why is not None:
            return self._invalid(why)
        a, b = parsed
        self.rounds += 1
        if self.limited:
            for x in (a, b):
                self.inventory[x] = int(self.inventory[x] or 0) - 1
            used = f"1 {a} and 1 {b}" if a != b else f"2 {a}"
            consumed = f" ({used} used up)"
        else:
            consumed = ""
        result = self.recipes.get(_pair_key(a, b))
        if result is None:
            text = f"nothing happened: no recipe for {a} + {b}{consumed}."
            event = "nothing"
        else:
            new = result not in self.inventory
            if self.limited:
                self.inventory[result] = int(self.inventory.get(result) or 0) + 1
            else:
                self.inventory[result] = None
            text = f"{a} + {b} -> {result}{' (new!)' if new else ''}{consumed}."
            event = "crafted"
        self.last = text
        if result == self.target:
            self.done = True
            reward = 1.0 - 0.1 * self.rounds / self.max_rounds
            return StepResult(None, reward, True,
                              f"{text} You made the target {self.target} in {self.rounds} round"
                              f"{'s' if self.rounds != 1 else ''}. Task solved!", True,
                              self._info("solved", parsed, result))
        if self.rounds >= self.max_rounds:
            self.done = True
            return StepResult(None, 0.0, True,
                              f"{text} Round limit reached: you used all {self.max_rounds} rounds without making "
                              f"{self.target}. Task failed.", True, self._info("timeout", parsed, result))
        if self.limited and sum(int(c or 0) for c in self.inventory.values()) < 2:
            self.done = True
            return StepResult(None, 0.0, True,
                              f"{text} Out of materials: fewer than two units are left, so no combination is "
                              f"possible. Task failed.", True, self._info("exhausted", parsed, result))
        return StepResult(self._observation(), 0.0, False, text, True, self._info(event, parsed, result))
