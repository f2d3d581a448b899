"""The curator context: an itemised lesson list edited only through explicit operations.

A training-free context baseline in the style of agentic context engineering and dynamic
cheatsheets. Between tasks, instead of rewriting a free-form ``Hints:`` block, the model is shown
the current numbered lesson list, the last task's attempt, its reward (where the environment lets
the model see it) and the final feedback, and
answers with operations, one per line::

    ADD: <lesson>
    REVISE <n>: <lesson>
    REMOVE <n>
    NONE

:func:`parse_operations` reads them (tolerant of case, bullets and whitespace; other lines are
ignored and counted), and :func:`apply_operations` applies them *by code*, in order, with the
indices referring to the list as shown before the edit. The list is never rewritten wholesale:
only parsed, accepted operations change it. The solver sees :func:`render_lessons` of the list as
its hints block (``"1. ...\\n2. ..."``), through the same solve prompt as model-written hints.
Model text is only matched with regular expressions; it is never evaluated.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from codrl.backends.base import Message
from codrl.rollout.experience import Turn
from codrl.rollout.prompts import context_user_message

__all__ = [
    "CURATOR_SYSTEM",
    "CURATOR_INSTRUCTIONS",
    "OpKind",
    "Operation",
    "ParsedReply",
    "EditResult",
    "parse_reply",
    "parse_operations",
    "apply_operations",
    "render_lessons",
    "normalize_lesson",
    "curator_messages",
]

CURATOR_SYSTEM = (
    "You curate a numbered list of lessons about an environment you work in again and again. The same hidden "
    "rules hold in every task of this environment, so lessons learned now help with the next task. You never "
    "rewrite the list: you only add, revise or remove single lessons."
)

CURATOR_INSTRUCTIONS = (
    "Update the lesson list for the next task in this same environment. Answer with operations, one per line:\n"
    "ADD: <a new lesson>\n"
    "REVISE <n>: <the corrected lesson n>\n"
    "REMOVE <n>\n"
    "NONE (if nothing should change)\n"
    "Numbers refer to the list as shown above. Keep lessons short and concrete (for example what each action "
    "really does)."
)

OpKind = Literal["add", "revise", "remove", "none"]

#: What may precede an operation on its line: list bullets, numbering, quote marks, emphasis.
#: (Adjacent repeated classes never overlap, so matching stays linear in the line length.)
_LEAD = r"^[\s>*\-+•·#`_]*(?:\(?\d{1,3}[.)][\s>*\-+•·#`_]*)?"
_SEP = r"[\s*`_:#.)\-–]*"
_ADD_RE = re.compile(_LEAD + r"add\b" + _SEP + r"(?P<text>.*)$", re.IGNORECASE)
_REVISE_RE = re.compile(_LEAD + r"(?:revise|edit|update)\b[\s*`_:#]*(?:lesson[\s*`_:#]*)?(?P<n>\d+)"
                        + _SEP + r"(?P<text>.*)$", re.IGNORECASE)
_REMOVE_RE = re.compile(_LEAD + r"(?:remove|delete)\b[\s*`_:#]*(?:lesson[\s*`_:#]*)?(?P<n>\d+)\b(?P<rest>.*)$",
                        re.IGNORECASE)
_NONE_RE = re.compile(_LEAD + r"none\b[\s*`_.!]*$", re.IGNORECASE)
#: A header line such as the reply prefix ``Operations:``; skipped without being counted.
_HEADER_RE = re.compile(r"^[\s*#`_]*operations?[\s*`_:]*$", re.IGNORECASE)
_MAX_INDEX_DIGITS = 9


@dataclass(frozen=True)
class Operation:
    """One parsed edit of the lesson list.

    ``index`` is 1-based, as the list was shown to the model (``None`` for ADD and NONE);
    ``text`` is the lesson of ADD and REVISE (``""`` otherwise), whitespace-normalised.
    """

    kind: OpKind
    index: int | None = None
    text: str = ""

    def __str__(self) -> str:
        if self.kind == "add":
            return f"ADD: {self.text}"
        if self.kind == "revise":
            return f"REVISE {self.index}: {self.text}"
        if self.kind == "remove":
            return f"REMOVE {self.index}"
        return "NONE"


@dataclass
class ParsedReply:
    """What :func:`parse_reply` found: the operations in order and the non-operation lines."""

    operations: list[Operation] = field(default_factory=list)
    ignored: int = 0  # non-blank lines that are not operations (headers excepted)

    @property
    def says_none(self) -> bool:
        """True when the reply holds an explicit ``NONE``."""
        return any(op.kind == "none" for op in self.operations)


@dataclass
class EditResult:
    """Outcome of :func:`apply_operations`: the new list and what happened to each operation."""

    lessons: list[str]
    added: int = 0
    revised: int = 0
    removed: int = 0
    rejected: int = 0  # out of range, index already edited, duplicate lesson, empty, over the cap
    none: int = 0  # NONE operations (they change nothing)

    @property
    def applied(self) -> int:
        """Accepted ADD, REVISE and REMOVE operations."""
        return self.added + self.revised + self.removed

    def counts(self) -> dict[str, int]:
        """The operation counts as a plain dict (stored in episode records and reports)."""
        return {"added": self.added, "revised": self.revised, "removed": self.removed,
                "rejected": self.rejected, "none": self.none}


def _clean(text: str) -> str:
    """Whitespace collapsed to single spaces; surrounding emphasis marks and quotes stripped."""
    return " ".join(text.split()).strip("*`_\"' ")


def normalize_lesson(text: str, max_chars: int) -> str:
    """One line of at most ``max_chars`` characters: whitespace collapsed, surrounding emphasis
    and quotes stripped, cut at ``max_chars``."""
    return _clean(text)[:max_chars].rstrip()


def _index(digits: str) -> int:
    """The index a run of digits names; absurdly long numbers become an out-of-range index
    (``int()`` of thousands of digits would raise)."""
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= _MAX_INDEX_DIGITS else 10**_MAX_INDEX_DIGITS


def _parse_line(line: str) -> Operation | None:
    m = _NONE_RE.match(line)
    if m:
        return Operation("none")
    m = _REVISE_RE.match(line)
    if m:
        text = _clean(m.group("text"))
        return Operation("revise", _index(m.group("n")), text) if text else None
    m = _REMOVE_RE.match(line)
    if m:
        return Operation("remove", _index(m.group("n")))
    m = _ADD_RE.match(line)
    if m:
        text = _clean(m.group("text"))
        return Operation("add", None, text) if text else None
    return None


def parse_reply(text: str) -> ParsedReply:
    """Parse a curator reply into operations, one per line, in order.

    Case, leading bullets (``-``, ``*``, ``1.``), emphasis marks and surrounding whitespace are
    tolerated; ``REVISE #2 - ...``, ``EDIT 2: ...`` and ``DELETE 2`` are read as REVISE/REMOVE.
    Blank lines and a header line (``Operations:``) are skipped; every other line that is not an
    operation (including ``ADD:`` or ``REVISE n:`` without a lesson) is counted in ``ignored``.
    Never raises.
    """
    parsed = ParsedReply()
    for line in str(text).splitlines():
        if not line.strip() or _HEADER_RE.match(line):
            continue
        op = _parse_line(line)
        if op is None:
            parsed.ignored += 1
        else:
            parsed.operations.append(op)
    return parsed


def parse_operations(text: str) -> list[Operation]:
    """The operations of a curator reply, in order (see :func:`parse_reply`)."""
    return parse_reply(text).operations


def _key(text: str) -> str:
    return " ".join(text.lower().split())


def apply_operations(lessons: Sequence[str], ops: Sequence[Operation], max_lessons: int,
                     max_chars: int) -> EditResult:
    """Apply ``ops`` to ``lessons`` by code and return the new list with per-kind counts.

    Rules:

    - operations apply in order; REVISE/REMOVE indices are 1-based and refer to the list *as
      shown before this edit* (removing lesson 1 does not renumber lesson 2);
    - an index out of range, or one already revised/removed by an earlier operation, is rejected;
    - ADD appends at the end; ADD or REVISE to a text that equals (ignoring case and spacing) a
      lesson already in the list is rejected as a duplicate, as is an empty lesson;
    - lessons are normalised to one line and cut at ``max_chars`` characters;
    - ADDs that would make the list longer than ``max_lessons`` are rejected (the list is capped;
      removals anywhere in the same reply make room);
    - NONE changes nothing.

    The input is never modified; with no accepted operation the result equals the input exactly.
    Raises ``ValueError`` only for bad arguments (a cap below 1, or an input list already over the
    caps, which a list built by this function never is).
    """
    if max_lessons < 1 or max_chars < 1:
        raise ValueError(f"max_lessons and max_chars must be >= 1, got {max_lessons} and {max_chars}")
    if len(lessons) > max_lessons or any(len(x) > max_chars for x in lessons):
        raise ValueError(f"the lesson list is over its caps ({len(lessons)} lessons, max {max_lessons}; "
                         f"longest {max((len(x) for x in lessons), default=0)} chars, max {max_chars})")
    slots: list[str | None] = list(lessons)
    touched: set[int] = set()
    added: list[str] = []
    res = EditResult(lessons=[])

    def present(text: str, skip: int | None = None) -> bool:
        key = _key(text)
        return any(s is not None and i != skip and _key(s) == key for i, s in enumerate(slots)) or \
            any(_key(a) == key for a in added)

    for op in ops:
        if op.kind == "none":
            res.none += 1
            continue
        if op.kind == "add":
            text = normalize_lesson(op.text, max_chars)
            if not text or present(text):
                res.rejected += 1
                continue
            added.append(text)
            res.added += 1
            continue
        i = (op.index or 0) - 1
        if not 0 <= i < len(slots) or i in touched:
            res.rejected += 1
            continue
        if op.kind == "remove":
            slots[i] = None
            touched.add(i)
            res.removed += 1
            continue
        text = normalize_lesson(op.text, max_chars)
        if not text or present(text, skip=i):
            res.rejected += 1
            continue
        slots[i] = text
        touched.add(i)
        res.revised += 1
    kept = [s for s in slots if s is not None]
    room = max(0, max_lessons - len(kept))
    if len(added) > room:  # over the cap: the last ADDs are refused, nothing already there is dropped
        res.rejected += len(added) - room
        res.added -= len(added) - room
        added = added[:room]
    res.lessons = kept + added
    return res


def render_lessons(lessons: Sequence[str]) -> str:
    """The lesson list as the solver and the curator see it: ``"1. ...\\n2. ..."`` (``""`` when empty)."""
    return "\n".join(f"{i}. {text}" for i, text in enumerate(lessons, 1))


def curator_messages(env_system_prompt: str, lessons: Sequence[str], first_observation: str, turns: list[Turn],
                     reward: float | None, feedback: str, *, max_tokens: int | None = None) -> list[Message]:
    """Chat of a curator episode: the environment, the numbered lessons, the last attempt, its
    reward (left out when None: the environment hides it from the model) and feedback, and the
    operation instructions (with a response-length line when ``max_tokens`` is given)."""
    shown = render_lessons(lessons) if lessons else ""
    user = context_user_message(env_system_prompt, "Current lessons", shown, first_observation, turns, reward,
                                feedback, CURATOR_INSTRUCTIONS, max_tokens)
    return [{"role": "system", "content": CURATOR_SYSTEM}, {"role": "user", "content": user}]
