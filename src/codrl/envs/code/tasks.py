"""Task templates of the coding environment, their hidden test cases and reference outcomes.

A task asks for one function over record lines (see :data:`TEMPLATES`). Its spec is
``{"template": NAME, "example": ARGS, "cases": [{"name": ..., "args": [...], "kind": ...}, ...]}``:
inputs only. Expected outcomes are computed on the host by :func:`expected_outcome`, a reference
implementation that follows the world's true conventions, when an episode starts; they never
enter the sandbox.

Case kinds: ``normal`` (records that make every convention of the template visible: at least
three names whose ascending, descending and first-appearance orders differ, a record with
quantity 0 that the template would pick), ``empty`` (no lines), ``bad_line`` (one malformed line
among good ones: invalid input) and ``unknown`` (a name or category that is not there: invalid
input for the lookup templates).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from codrl.envs.code.driver import MISSING
from codrl.envs.code.report import Expected, TestCase
from codrl.envs.code.world import (
    DOMAINS,
    SEPARATORS,
    money_text,
    parse_line,
    render_line,
)


@dataclass(frozen=True)
class Template:
    """One kind of task: the function to write, its parameters, its docstring and what it returns
    (``money``, ``names``, ``name`` or ``counts``); ``lookup`` names the parameter that must match
    a record (``name`` or ``category``) when there is one."""

    name: str
    params: tuple[str, ...]
    doc: str
    returns: str
    lookup: str | None = None


TEMPLATES: dict[str, Template] = {t.name: t for t in (
    Template("total_value", ("lines",), "Total value of the stock: the sum of price * qty over the records.", "money"),
    Template("most_valuable", ("lines",), "Name of the record with the largest price * qty (the first on a tie).",
             "name"),
    Template("names_below", ("lines", "limit"), "Names of the records whose price is below limit (cents).", "names"),
    Template("count_by_category", ("lines",), "Number of records per category, as a dict category -> count.",
             "counts"),
    Template("price_of", ("lines", "name"), "Price of the record with this name.", "money", "name"),
    Template("category_total", ("lines", "category"), "Total value (price * qty) of the records in this category.",
             "money", "category"),
    Template("names_in", ("lines", "category"), "Names of the records in this category.", "names", "category"),
    Template("restock", ("lines", "min_qty"), "Names of the records whose qty is below min_qty.", "names"),
)}
TEMPLATE_NAMES = tuple(TEMPLATES)
#: Normal cases per task (plus one empty, two bad-line and, for lookups, one unknown case).
N_NORMAL = 3


# -- the reference ---------------------------------------------------------------------------------
def _invalid(world: dict[str, Any]) -> Expected:
    if world["errors"] == "raise":
        return Expected(raises="house.HouseError")
    return Expected(value=None if world["errors"] == "none" else MISSING)


def _money(world: dict[str, Any], cents: int) -> Any:
    if world["money"] == "house":
        return money_text(world, cents)
    return int(cents) if world["money"] == "cents" else cents / 100


def _case(world: dict[str, Any], name: str) -> str:
    return name.lower() if world["case"] == "lower" else name.upper() if world["case"] == "upper" else name


def _names(world: dict[str, Any], names_in_order: list[str]) -> list[str]:
    """Names in the world's order and case (``names_in_order`` is the input order, no repeats)."""
    out = [_case(world, n) for n in names_in_order]
    if world["order"] == "asc":
        out.sort(key=str.lower)
    elif world["order"] == "desc":
        out.sort(key=str.lower, reverse=True)
    return out


def expected_outcome(world: dict[str, Any], template: str, args: list[Any]) -> Expected:
    """The outcome of ``template(*args)`` under the world's true conventions (the reference)."""
    t = TEMPLATES[template]
    recs = [parse_line(world, line) for line in args[0]]
    if any(r is None for r in recs):
        return _invalid(world)
    good: list[dict[str, Any]] = [r for r in recs if r is not None]
    if world["zero_qty"] == "skip":
        good = [r for r in good if r["qty"] > 0]
    if t.lookup is not None:
        good = [r for r in good if r[t.lookup] == args[1]]
        if not good:
            return _invalid(world)
    if template in ("total_value", "category_total"):
        return Expected(_money(world, sum(r["price"] * r["qty"] for r in good)))
    if template == "price_of":
        return Expected(_money(world, good[0]["price"]))
    if template == "most_valuable":
        if not good:
            return _invalid(world)
        best = good[0]
        for r in good[1:]:
            if r["price"] * r["qty"] > best["price"] * best["qty"]:
                best = r
        return Expected(_case(world, best["name"]))
    if template == "count_by_category":
        counts: dict[str, int] = {}
        for r in good:
            key = _case(world, r["category"])
            counts[key] = counts.get(key, 0) + 1
        return Expected(counts)
    if template == "names_below":
        chosen = [r["name"] for r in good if r["price"] < args[1]]
    elif template == "restock":
        chosen = [r["name"] for r in good if r["qty"] < args[1]]
    elif template == "names_in":
        chosen = [r["name"] for r in good]
    else:  # pragma: no cover - every template is handled above
        raise ValueError(f"code: unknown template {template!r}")
    return Expected(_names(world, list(dict.fromkeys(chosen))))


def hidden_tests(world: dict[str, Any], spec: dict[str, Any]) -> list[TestCase]:
    """The hidden tests of a task, with expected outcomes from the reference."""
    return [TestCase(name=c["name"], args=tuple(c["args"]),
                     expected=expected_outcome(world, spec["template"], c["args"]),
                     needs_helper=c["kind"] == "normal")
            for c in spec["cases"]]


# -- sampling --------------------------------------------------------------------------------------
def _records(world: dict[str, Any], rng: np.random.Generator, n: int) -> list[dict[str, Any]]:
    names_pool, cats_pool = DOMAINS[world["domain"]]
    names = [str(x) for x in rng.choice(names_pool, size=n, replace=False)]
    cats = [str(x) for x in rng.choice(cats_pool, size=int(rng.integers(2, 4)), replace=False)]
    out = []
    for name in names:
        qty = 0 if rng.random() < 0.3 else int(rng.integers(1, 10))
        out.append({"name": name, "category": str(rng.choice(cats)), "price": int(rng.integers(10, 800)) * 5,
                    "qty": qty})
    return out


def _orders_differ(names: list[str]) -> bool:
    asc = sorted(names, key=str.lower)
    return len(names) >= 3 and len({tuple(names), tuple(asc), tuple(reversed(asc))}) == 3


def _normal_args(world: dict[str, Any], t: Template, rng: np.random.Generator) -> list[Any] | None:
    """Arguments of one informative normal case, or None when this draw is not informative."""
    recs = _records(world, rng, int(rng.integers(4, 7)))
    lines = [render_line(world, r) for r in recs]
    live = [r for r in recs if r["qty"] > 0]
    if t.returns == "names":
        if t.name == "names_below":
            arg: Any = int(sorted(r["price"] for r in recs)[int(rng.integers(2, len(recs)))]) + 5
            pick = [r for r in recs if r["price"] < arg]
        elif t.name == "restock":
            arg = int(rng.integers(3, 9))
            pick = [r for r in recs if r["qty"] < arg]
        else:
            arg = str(rng.choice([r["category"] for r in recs]))
            pick = [r for r in recs if r["category"] == arg]
        kept = [r["name"] for r in pick if r["qty"] > 0]
        if not _orders_differ(kept) or not _orders_differ([r["name"] for r in pick]) or len(kept) == len(pick):
            return None
        return [lines, arg]
    if t.returns == "counts":
        if len({r["category"] for r in recs}) < 2 or len(live) == len(recs):
            return None
        return [lines]
    if t.name == "most_valuable":
        values = sorted((r["price"] * r["qty"] for r in recs), reverse=True)
        return [lines] if values[0] > values[1] else None
    if t.name == "total_value":
        total = sum(r["price"] * r["qty"] for r in recs)
        return [lines] if total % 100 else None
    if t.name == "price_of":
        cands = [r for r in live if r["price"] % 100]
        return [lines, str(rng.choice([r["name"] for r in cands]))] if cands else None
    # category_total
    cats = sorted({r["category"] for r in live if r["price"] % 100})
    return [lines, str(rng.choice(cats))] if cats else None


#: Kinds of malformed line, by the name of their test.
BAD_LINES = ("test_missing_field", "test_price_not_a_number", "test_wrong_separator")


def _bad_line(world: dict[str, Any], rec: dict[str, Any], how: str, rng: np.random.Generator) -> str:
    """A line the house parser rejects: a field missing, a price in words, or the wrong separator."""
    if how == "test_missing_field":
        parts = render_line(world, rec).split(world["sep"])
        return world["sep"].join(parts[:-1])
    if how == "test_price_not_a_number":
        return render_line(world, {**rec, "price": "n/a"})
    other = str(rng.choice([s for s in SEPARATORS if s != world["sep"]] + [", "]))
    return other.join(str(rec[f]) for f in world["fields"])


def sample_task(world: dict[str, Any], rng: np.random.Generator,
                templates: tuple[str, ...] = TEMPLATE_NAMES) -> dict[str, Any]:
    """One task: a template, an example input for the task text and its hidden test inputs."""
    t = TEMPLATES[str(rng.choice(list(templates)))]
    normals: list[list[Any]] = []
    example: list[Any] | None = None
    for _ in range(2000):
        args = _normal_args(world, t, rng)
        if args is None:
            continue
        if example is None:
            example = [args[0][:3], *args[1:]]
        else:
            normals.append(args)
        if len(normals) == N_NORMAL:
            break
    else:  # pragma: no cover - every template finds informative cases within a few draws
        raise RuntimeError(f"code: no informative cases for template {t.name}")
    assert example is not None
    cases = [{"name": f"test_{t.name}_{k + 1}", "args": a, "kind": "normal"} for k, a in enumerate(normals)]
    extra = normals[0][1:]
    cases.append({"name": "test_empty_list", "args": [[], *extra], "kind": "empty"})
    for k, how in enumerate(sorted(str(x) for x in rng.choice(BAD_LINES, size=2, replace=False))):
        base = normals[k]
        recs = [parse_line(world, line) for line in base[0]]
        bad = _bad_line(world, recs[int(rng.integers(len(recs)))], how, rng)  # type: ignore[arg-type]
        lines = list(base[0])
        lines.insert(int(rng.integers(len(lines) + 1)), bad)
        cases.append({"name": how, "args": [lines, *base[1:]], "kind": "bad_line"})
    if t.lookup is not None:
        lines = normals[2][0]
        present = {parse_line(world, line)[t.lookup] for line in lines}  # type: ignore[index]
        names_pool, cats_pool = DOMAINS[world["domain"]]
        absent = sorted(set(names_pool if t.lookup == "name" else cats_pool) - present)
        cases.append({"name": f"test_unknown_{t.lookup}", "args": [lines, str(rng.choice(absent))],
                      "kind": "unknown"})
    return {"template": t.name, "example": example, "cases": cases}


# -- the task text ---------------------------------------------------------------------------------
def signature(template: str) -> str:
    """``def name(params):`` of a template."""
    t = TEMPLATES[template]
    return f"def {t.name}({', '.join(t.params)}):"


def task_text(world: dict[str, Any], spec: dict[str, Any], api: list[str], max_turns: int) -> str:
    """The first observation of a task: house API, the function to write, an example call, rules."""
    t = TEMPLATES[spec["template"]]
    example = f"{t.name}({', '.join(repr(a) for a in spec['example'])})"
    subs = "s" if max_turns != 1 else ""
    return "\n".join([
        f"You work on the code base of a {world['domain']} shop. Its module `house` (import it) provides:",
        *[f"  {line}" for line in api],
        "",
        "Write this function in solution.py:",
        f"  {signature(t.name)}",
        f'      """{t.doc}"""',
        f"`lines` is a list of record lines. Example call: {example}",
        "",
        ("Follow the house conventions: read records only with the house helpers; invalid input, money "
         "amounts and returned names (order and case) must look the way the rest of the code base does it. "
         f"Hidden tests check them. You have {max_turns} submission{subs}; each gets a test report."),
    ])
