"""Grading a sandboxed test run on the host and writing it up as a test report.

:func:`grade` compares the per-call outcomes read from the driver (:mod:`codrl.envs.code.driver`)
with the expected outcomes the host computed, and :func:`format_report` turns the result into the
feedback text a model reads: ``k/n tests passed``, the failing tests with assertion-style
messages, a tail of the program's own output and a line when the sandbox stopped the run. Both
are independent of the shop world, so another environment that runs hidden tests on submitted
code can reuse them with its own :class:`TestCase` list.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from codrl.envs.code.driver import MISSING, CallOutcome, DriverResults
from codrl.sandbox import TRUNCATION_MARKER, SandboxResult

#: Longest rendering of one value or one call in a failure message.
MAX_SHOWN = 400


@dataclass(frozen=True)
class Expected:
    """The expected outcome of one call: a ``value``, or an exception ``raises``: ``"house.HouseError"``
    (the driver checks the exception against the house module's ``HouseError`` class) or another
    exception type name such as ``"ValueError"`` (matched by name)."""

    value: Any = None
    raises: str | None = None


@dataclass(frozen=True)
class TestCase:
    """One hidden test: its name, the call's arguments and the expected outcome (host only).
    ``needs_helper``: the call should use the house helper; a call that does not gets an advisory
    note in the report (never a lower score: the count is taken where the submitted code runs)."""

    __test__ = False  # not a pytest class

    name: str
    args: tuple[Any, ...]
    expected: Expected
    needs_helper: bool = False


@dataclass(frozen=True)
class Grade:
    """The graded run: which tests passed, a failure message per failed test, and notes on the run
    (why it was stopped, why results are missing, advisory notes that change no score), plus the
    program's output tail. ``helper_unused``: tests whose call did not use the required helper."""

    passed: int
    total: int
    failures: tuple[tuple[str, str], ...]
    notes: tuple[str, ...]
    output_tail: str
    helper_unused: tuple[str, ...] = ()

    @property
    def fraction(self) -> float:
        """Fraction of the tests passed (1.0 when all pass; 0.0 without tests)."""
        return self.passed / self.total if self.total else 0.0


def show(value: Any, limit: int = MAX_SHOWN) -> str:
    """``repr`` of a value, cut to ``limit`` characters."""
    try:
        text = repr(value)
    except (ValueError, RecursionError):  # pragma: no cover - decoded values are plain data
        text = "<unprintable>"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def call_text(function: str, args: Sequence[Any], limit: int = MAX_SHOWN) -> str:
    """``function(arg, ...)`` as a failure message shows it, cut to ``limit`` characters."""
    inner = ", ".join(show(a, limit) for a in args)
    text = f"{function}({inner})"
    return text if len(text) <= limit else text[:limit - 4] + "...)"


def same_value(expected: Any, got: Any) -> bool:
    """Strict equality of an expected value and a returned one.

    Types must match exactly (``750`` is not ``750.0``, a tuple is not a list), except that a
    float is matched by an int or a float within 1e-6 (relative); dicts compare key by key;
    ``house.MISSING`` only matches itself.
    """
    if expected is MISSING or expected is None:
        return got is expected
    if isinstance(expected, float):
        if type(got) not in (int, float):
            return False
        return math.isclose(float(got), expected, rel_tol=1e-6, abs_tol=1e-9)
    if type(got) is not type(expected):
        return False
    if isinstance(expected, (list, tuple)):
        return len(got) == len(expected) and all(same_value(e, g) for e, g in zip(expected, got, strict=True))
    if isinstance(expected, dict):
        return set(got) == set(expected) and all(same_value(expected[k], got[k]) for k in expected)
    return bool(expected == got)


def _raised(outcome: CallOutcome) -> str:
    name = "house.HouseError" if outcome.house_error and outcome.error == "HouseError" else outcome.error
    return f"{name}({outcome.message!r})" if outcome.message else f"{name}"


def check(case: TestCase, outcome: CallOutcome | None, function: str,
          missing_reason: str = "the program stopped before this test ran") -> str | None:
    """The failure message of one test, or None when it passed."""
    call = call_text(function, case.args)
    exp = case.expected
    if outcome is None:
        return f"{call} did not finish: {missing_reason}"
    if outcome.error == "timeout":
        return f"{call} timed out: {outcome.message}"
    if outcome.error == "exit":  # the driver saw the program die during the call
        return f"{call} did not finish: {outcome.message}"
    if exp.raises is not None:
        # ``house.X`` needs the house's own error type (the driver checks the class); another
        # name is matched by the exception's type name.
        house = exp.raises.startswith("house.")
        if outcome.error is not None and (outcome.house_error if house else outcome.error == exp.raises):
            return None
        got = f"raised {_raised(outcome)}" if outcome.error is not None else f"returned {show(outcome.value)}"
        return f"{call} should raise {exp.raises}, but {got}"
    if outcome.error is not None:
        return f"{call} raised {_raised(outcome)}, expected {show(exp.value)}"
    if not same_value(exp.value, outcome.value):
        return f"{call} returned {show(outcome.value)}, expected {show(exp.value)}"
    return None


def helper_unused(cases: Sequence[TestCase], results: DriverResults, helper: str | None) -> list[str]:
    """Names of the tests that ask for ``helper`` and whose call did not use it (advisory: the
    counts are taken where the submitted code runs, so they never change a score)."""
    if not helper or results.conflict:
        return []
    return [c.name for i, c in enumerate(cases) if c.needs_helper and (o := results.outcomes.get(i)) is not None
            and o.error is None and o.spy.get(helper, 0) < 1]


def run_notes(sandbox: SandboxResult | None, results: DriverResults) -> tuple[list[str], str]:
    """(lines on how the run ended, the reason given for tests without a result)."""
    notes: list[str] = []
    missing = "the program stopped before this test ran"
    if sandbox is not None and sandbox.killed_reason:
        notes.append(f"The sandbox stopped the run: {sandbox.killed_reason}.")
        missing = f"the sandbox stopped the run ({sandbox.killed_reason})"
    elif sandbox is not None and sandbox.returncode != 0:
        notes.append(f"The program exited with status {sandbox.returncode} before all tests ran.")
        missing = f"the program exited with status {sandbox.returncode}"
    if results.stage_error:
        notes.append(results.stage_error)
        missing = results.stage_error
    if results.conflict:
        notes.append("The program wrote to the test driver's result channel: all results were discarded.")
    return notes, missing


def output_tail(sandbox: SandboxResult | None, max_chars: int) -> str:
    """The last ``max_chars`` characters of the program's own output (its stderr and prints)."""
    if sandbox is None or max_chars <= 0:
        return ""
    text = sandbox.stderr.replace(TRUNCATION_MARKER, "\n").strip()
    if len(text) > max_chars:
        text = "..." + text[-max_chars:]
    return text


def grade(cases: Sequence[TestCase], results: DriverResults, sandbox: SandboxResult | None, function: str,
          helper: str | None = None, tail_chars: int = 600) -> Grade:
    """Compare every test's outcome with its expected outcome; never raises."""
    notes, missing = run_notes(sandbox, results)
    failures: list[tuple[str, str]] = []
    for i, case in enumerate(cases):
        outcome = None if results.conflict else results.outcomes.get(i)
        msg = check(case, outcome, function, missing)
        if msg is not None:
            failures.append((case.name, msg))
    unused = helper_unused(cases, results, helper)
    if unused:
        notes.append(f"Advisory (not scored): {helper} was not used in {len(unused)} test"
                     f"{'s' if len(unused) != 1 else ''} ({', '.join(unused[:3])}{', ...' if len(unused) > 3 else ''}); "
                     "the house conventions ask for it.")
    return Grade(passed=len(cases) - len(failures), total=len(cases), failures=tuple(failures),
                 notes=tuple(notes), output_tail=output_tail(sandbox, tail_chars), helper_unused=tuple(unused))


def format_report(g: Grade, max_failures_shown: int = 3) -> str:
    """The test report a model reads: counts, up to ``max_failures_shown`` failures, notes, output tail."""
    lines = [f"{g.passed}/{g.total} tests passed." + (" All tests pass!" if g.passed == g.total and g.total else "")]
    for name, msg in g.failures[:max_failures_shown]:
        lines.append(f"FAILED {name}: {msg}")
    hidden = len(g.failures) - max_failures_shown
    if hidden > 0:
        lines.append(f"({hidden} more failing test{'s' if hidden != 1 else ''} not shown)")
    lines += list(g.notes)
    if g.output_tail:
        lines.append("Program output (tail):")
        lines += ["  " + line for line in g.output_tail.splitlines()[-12:]]
    return "\n".join(lines)
