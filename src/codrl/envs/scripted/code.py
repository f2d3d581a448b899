"""Scripted Code agents: random conventions, the oracle, and a learner that reads test reports.

All three write ``solution.py`` with :func:`solution_code`, one generator per task template,
parameterised by the conventions the agent believes (:class:`Beliefs`):

* **random**: draws every convention at random for each submission, reads records with the house
  helper or (30%) parses them by hand with a guessed separator and field order, and counts from 0
  or 1 in a ledger at random: the chance level.
* **oracle**: reads the world (``pack.world``) and writes the code the hidden tests expect.
* **learner**: sees only the task text, the test reports and its hints. It starts from a
  newcomer's defaults (let errors propagate, ``house.money`` text, input order, names as written,
  keep every record, count ledger positions from 0) and learns from each ``FAILED`` line: the
  expected value's type gives the money rule, ``expected None`` / ``house.MISSING`` / ``should
  raise`` the invalid-input rule, the expected names their case and (against the call's input
  order) their order, a returned superset of the expected names the quantity-0 rule, and
  ``positions start at 1`` the ledger's base. It writes what it learned into its hints as
  ``key: value`` lines and reads them back in the next task.

Failure lines hold values rendered by the host; the learner reads them with ``ast.literal_eval``
(literals only, nothing is executed) and ignores lines it cannot read.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

from codrl.envs.base import Pack
from codrl.envs.code.tasks import TEMPLATES
from codrl.envs.code.world import (
    CASES,
    ERRORS,
    FIELDS,
    MONEY,
    ORDERS,
    SEPARATORS,
    ZERO_QTY,
)
from codrl.envs.scripted.base import TurnText


@dataclass(frozen=True)
class Beliefs:
    """Conventions an agent writes code for; None: unknown (the newcomer's default is used)."""

    errors: str | None = None
    money: str | None = None
    order: str | None = None
    case: str | None = None
    zero_qty: str | None = None
    base1: bool | None = None
    #: ``(separator, field order)`` to parse records by hand instead of with the house helper.
    hand_parse: tuple[str, tuple[str, ...]] | None = None


#: Hint keys and the text of each value (what the learner writes and reads back).
HINTS: dict[str, dict[Any, str]] = {
    "invalid input": {"raise": "raise house.HouseError", "none": "return None", "sentinel": "return house.MISSING"},
    "money": {"house": "house.money(cents) text", "cents": "int cents", "units": "float units (cents / 100)"},
    "name order": {"asc": "ascending", "desc": "descending", "first": "first appearance"},
    "name case": {"lower": "lower", "upper": "upper", "asis": "as written"},
    "quantity 0": {"skip": "skip the record", "keep": "keep the record"},
    "ledger.at": {True: "positions start at 1"},
}
_FIELD_OF_KEY = {"invalid input": "errors", "money": "money", "name order": "order", "name case": "case",
                 "quantity 0": "zero_qty", "ledger.at": "base1"}
_HINT_RE = re.compile(r"^\s*([a-z0-9. ]+):\s*(.+?)\s*$", re.MULTILINE)
_DEF_RE = re.compile(r"def (\w+)\(")
_FAILED_RE = re.compile(r"^FAILED \S+: (\w+)\((.*)\) (returned (.*), expected (.*)|raised (.*), expected (.*)|"
                        r"should raise (\S+), but (.*))$")


def parse_hints(hints: str) -> Beliefs:
    """The conventions written in ``key: value`` hint lines (other lines are ignored)."""
    found: dict[str, Any] = {}
    for key, value in _HINT_RE.findall(hints or ""):
        table = HINTS.get(key.strip())
        if table is None:
            continue
        for conv, text in table.items():
            if text == value:
                found[_FIELD_OF_KEY[key.strip()]] = conv
    return Beliefs(**found)


def write_hint_lines(b: Beliefs) -> str:
    """``key: value`` lines of every known convention of ``b``."""
    lines = []
    for key, table in HINTS.items():
        value = getattr(b, _FIELD_OF_KEY[key])
        if value is not None and value in table:
            lines.append(f"{key}: {table[value]}")
    return "\n".join(lines)


# -- writing code ------------------------------------------------------------------------------------
_BODIES: dict[str, str] = {
    "total_value": "    return _money(sum(r.price * r.qty for r in _records(lines)))\n",
    "most_valuable": ("    recs = _records(lines)\n"
                      "    if not recs:\n"
                      "        raise house.HouseError('no records')\n"
                      "    best = recs[0]\n"
                      "    for r in recs[1:]:\n"
                      "        if r.price * r.qty > best.price * best.qty:\n"
                      "            best = r\n"
                      "    return _name(best.name)\n"),
    "names_below": "    return _order([_name(r.name) for r in _records(lines) if r.price < limit])\n",
    "count_by_category": ("    counts = {}\n"
                          "    for r in _records(lines):\n"
                          "        key = _name(r.category)\n"
                          "        counts[key] = counts.get(key, 0) + 1\n"
                          "    return counts\n"),
    "price_of": ("    for r in _records(lines):\n"
                 "        if r.name == name:\n"
                 "            return _money(r.price)\n"
                 "    raise house.HouseError(f'no record named {name!r}')\n"),
    "category_total": ("    recs = [r for r in _records(lines) if r.category == category]\n"
                       "    if not recs:\n"
                       "        raise house.HouseError(f'no category {category!r}')\n"
                       "    return _money(sum(r.price * r.qty for r in recs))\n"),
    "names_in": ("    recs = [r for r in _records(lines) if r.category == category]\n"
                 "    if not recs:\n"
                 "        raise house.HouseError(f'no category {category!r}')\n"
                 "    return _order([_name(r.name) for r in recs])\n"),
    "restock": "    return _order([_name(r.name) for r in _records(lines) if r.qty < min_qty])\n",
}


def _reader(b: Beliefs, variant: str) -> str:
    if b.hand_parse is not None:
        sep, order = b.hand_parse
        return ("class _Rec:\n"
                "    def __init__(self, d):\n"
                "        self.name, self.category = d['name'].strip(), d['category'].strip()\n"
                "        self.price, self.qty = int(d['price']), int(d['qty'])\n\n\n"
                "def _read_all(lines):\n"
                f"    return [_Rec(dict(zip({order!r}, line.split({sep!r})))) for line in lines]\n")
    if variant == "hard":
        start, stop = ("1", "len(ledger) + 1") if b.base1 else ("0", "len(ledger)")
        return ("def _read_all(lines):\n"
                "    ledger = house.Ledger(lines)\n"
                f"    return [ledger.at(i) for i in range({start}, {stop})]\n")
    return "def _read_all(lines):\n    return [house.read(line) for line in lines]\n"


def solution_code(template: str, b: Beliefs, variant: str) -> str:
    """``solution.py`` for ``template`` written for the conventions ``b`` (unknown ones: defaults)."""
    t = TEMPLATES[template]
    keep = "r.qty > 0" if b.zero_qty == "skip" else "True"
    name = {"lower": "s.lower()", "upper": "s.upper()"}.get(b.case or "asis", "s")
    order = {"asc": "sorted(names, key=str.lower)", "desc": "sorted(names, key=str.lower, reverse=True)"}.get(
        b.order or "first", "list(names)")
    money = {"cents": "cents", "units": "cents / 100"}.get(b.money or "house", "house.money(cents)")
    params = ", ".join(t.params)
    parts = [
        "import house\n\n\n",
        _reader(b, variant),
        ("\n\n"
         "def _records(lines):\n"
         f"    return [r for r in _read_all(lines) if {keep}]\n\n\n"
         f"def _name(s):\n    return {name}\n\n\n"
         f"def _order(names):\n    return {order}\n\n\n"
         f"def _money(cents):\n    return {money}\n\n\n"
         f"def _{template}({params}):\n{_BODIES[template]}\n\n"),
    ]
    if b.errors in ("none", "sentinel"):
        fallback = "None" if b.errors == "none" else "house.MISSING"
        parts.append(f"def {template}({params}):\n    try:\n        return _{template}({params})\n"
                     f"    except house.HouseError:\n        return {fallback}\n")
    else:
        parts.append(f"def {template}({params}):\n    return _{template}({params})\n")
    return "".join(parts)


def submission(code: str) -> str:
    """The full reply: the env's reply prefix, the code, the closing fence and tag."""
    return f"<answer>\n```python\n{code}```\n</answer>"


def template_of(observation: str) -> str | None:
    """The template named by a task text's ``def NAME(`` line."""
    m = _DEF_RE.search(observation)
    return m.group(1) if m and m.group(1) in TEMPLATES else None


def variant_of(observation: str) -> str:
    """``hard`` when the task text shows the ledger API, else ``base``."""
    return "hard" if "house.Ledger(" in observation else "base"


# -- learning from reports -----------------------------------------------------------------------------
def _literal(text: str) -> Any:
    text = text.strip()
    if text == "house.MISSING":
        return _MISSING_TEXT
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
        return _UNREADABLE


_MISSING_TEXT = object()
_UNREADABLE = object()


def _case_of(strings: list[str]) -> str | None:
    words = [s for s in strings if isinstance(s, str) and s.strip()]
    if not words:
        return None
    if all(s == s.upper() and s != s.lower() for s in words):
        return "upper"
    if all(s == s.lower() for s in words):
        return "lower"
    if all(s[:1].isupper() and s[1:] == s[1:].lower() for s in words):
        return "asis"
    return None


def _input_index(lines: Any, name: str) -> int:
    """Position of the record line that holds ``name`` as a field (case-insensitive), else a big number."""
    if isinstance(lines, (list, tuple)):
        for i, line in enumerate(lines):
            if isinstance(line, str) and name.lower() in re.split(r"[^a-z0-9]+", line.lower()):
                return i
    return 1 << 30


def learn_from_failure(line: str, template: str, b: Beliefs) -> Beliefs:
    """``b`` updated with what one ``FAILED`` line of a test report reveals."""
    m = _FAILED_RE.match(line.strip())
    if not m:
        return b
    args = _literal(f"({m.group(2)},)")
    returned, expected = (_literal(m.group(4)), _literal(m.group(5))) if m.group(3).startswith("returned") else (
        _UNREADABLE, _literal(m.group(7)) if m.group(7) is not None else _UNREADABLE)
    raised = m.group(6) or ""
    if "positions start at 1" in raised:
        b = replace(b, base1=True)
    if m.group(8) is not None:
        return replace(b, errors="raise")
    if expected is _MISSING_TEXT:
        return replace(b, errors="sentinel")
    if expected is None:
        return replace(b, errors="none")
    kind = TEMPLATES[template].returns
    if kind == "money":
        money = {str: "house", int: "cents", float: "units"}.get(type(expected))
        return replace(b, money=money) if money else b
    if kind == "name" and isinstance(expected, str):
        return replace(b, case=_case_of([expected]) or b.case)
    if kind == "counts" and isinstance(expected, dict):
        b = replace(b, case=_case_of(list(expected)) or b.case)
        if isinstance(returned, dict) and all(type(v) is int for v in [*returned.values(), *expected.values()]):
            got, want = sum(returned.values()), sum(expected.values())
            if got != want:
                b = replace(b, zero_qty="skip" if got > want else "keep")
        return b
    if kind == "names" and isinstance(expected, list) and all(isinstance(s, str) for s in expected):
        b = replace(b, case=_case_of(expected) or b.case)
        lines = args[0] if isinstance(args, tuple) and args else None
        if len(expected) >= 2:
            low = [s.lower() for s in expected]
            fits = {"asc": low == sorted(low), "desc": low == sorted(low, reverse=True),
                    "first": lines is not None and low == sorted(low, key=lambda s: _input_index(lines, s))}
            ok = [o for o in ORDERS if fits[o]]
            if ok and b.order not in ok:
                b = replace(b, order=ok[0])
        if isinstance(returned, list) and all(isinstance(s, str) for s in returned):
            got, want = {s.lower() for s in returned}, {s.lower() for s in expected}
            if got > want:
                b = replace(b, zero_qty="skip")
            elif got < want:
                b = replace(b, zero_qty="keep")
    return b


def learn_from_report(text: str, template: str, b: Beliefs) -> Beliefs:
    """``b`` updated with every ``FAILED`` line of a report."""
    for line in text.splitlines():
        if line.startswith("FAILED "):
            b = learn_from_failure(line, template, b)
    return b


def _merge(old: Beliefs, new: Beliefs) -> Beliefs:
    """``new``'s known conventions over ``old``'s."""
    return Beliefs(**{f.name: getattr(new, f.name) if getattr(new, f.name) is not None else getattr(old, f.name)
                      for f in fields(Beliefs)})


# -- the agents -------------------------------------------------------------------------------------------
class LearnerAgent:
    """Writes code for the conventions it believes; learns them from failing tests and its hints."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.beliefs = Beliefs()
        self.learned = Beliefs()
        self.template: str | None = None
        self.variant = "base"
        self.started = False

    def act(self, hints: str, observation: str) -> str:
        if not self.started:
            self.started = True
            self.beliefs = parse_hints(hints)
            self.template = template_of(observation)
            self.variant = variant_of(observation)
        elif self.template is not None:
            self._learn(observation)
        if self.template is None:
            return submission("import house\n")
        return submission(solution_code(self.template, self.beliefs, self.variant))

    def _learn(self, text: str) -> None:
        assert self.template is not None
        after = learn_from_report(text, self.template, self.beliefs)
        changed = {f.name: getattr(after, f.name) for f in fields(Beliefs)
                   if getattr(after, f.name) != getattr(self.beliefs, f.name)}
        self.learned = replace(self.learned, **changed)
        self.beliefs = after

    def write_hints(self, hints: str, transcript: list[TurnText], reward: float) -> str:
        if transcript and self.template is not None:
            self._learn(transcript[-1].feedback)
        return write_hint_lines(_merge(parse_hints(hints), self.learned))


class OracleAgent(LearnerAgent):
    """Writes the code for the world's true conventions (reads ``pack.world``)."""

    def __init__(self, pack: Pack, rng: np.random.Generator) -> None:
        super().__init__(rng)
        w = pack.world
        self.truth = Beliefs(errors=w["errors"], money=w["money"], order=w["order"], case=w["case"],
                             zero_qty=w["zero_qty"], base1=True)

    def act(self, hints: str, observation: str) -> str:
        template = template_of(observation) or self.template
        self.template = template
        if template is None:
            return submission("import house\n")
        return submission(solution_code(template, self.truth, variant_of(observation)))

    def write_hints(self, hints: str, transcript: list[TurnText], reward: float) -> str:
        return hints


class RandomAgent:
    """Valid programs with random conventions (and sometimes hand parsing)."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.template: str | None = None
        self.variant = "base"

    def act(self, hints: str, observation: str) -> str:
        if self.template is None:
            self.template = template_of(observation)
            self.variant = variant_of(observation)
        if self.template is None:
            return submission("import house\n")
        r = self.rng
        hand = None
        if r.random() < 0.3:
            hand = (str(r.choice(SEPARATORS)), tuple(str(f) for f in r.permutation(FIELDS)))
        b = Beliefs(errors=str(r.choice(ERRORS)), money=str(r.choice(MONEY)), order=str(r.choice(ORDERS)),
                    case=str(r.choice(CASES)), zero_qty=str(r.choice(ZERO_QTY)), base1=bool(r.random() < 0.5),
                    hand_parse=hand)
        return submission(solution_code(self.template, b, self.variant))

    def write_hints(self, hints: str, transcript: list[TurnText], reward: float) -> str:
        return ""


def random_agent(pack: Pack, rng: np.random.Generator) -> RandomAgent:
    return RandomAgent(rng)


def oracle_agent(pack: Pack, rng: np.random.Generator) -> OracleAgent:
    return OracleAgent(pack, rng)


def learner_agent(pack: Pack, rng: np.random.Generator) -> LearnerAgent:
    return LearnerAgent(rng)
