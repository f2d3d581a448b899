"""Code: write functions for a shop's code base whose house conventions are shared by the pack.

Each world is a small code base (:mod:`codrl.envs.code.world`): a generated ``house.py`` with a
record parser, a money formatter, an error type and a "no value" marker, plus hidden conventions
(invalid input, money, order and case of names; hard worlds also drop quantity-0 records and read
records through a 1-based ``Ledger``). Each task asks for one function (:mod:`codrl.envs.code.tasks`)
and hides 6-7 unit tests whose expected outcomes the host computes from the true conventions.

An episode: the model submits ``solution.py`` as one fenced code block inside ``<answer>``
(:func:`~codrl.envs.code.submission.extract_code`). The submission runs in the sandbox against the
test inputs (:mod:`codrl.envs.code.driver`); the host compares the outcomes and answers with a
test report (:mod:`codrl.envs.code.report`). Up to ``max_turns`` submissions; after a non-final one
the observation is the report and a request to fix the code. The reward is the fraction of tests
passed by the last submission (1.0 ends the episode at once). A reply without a valid submission
ends the episode with reward 0 and ``valid=False``.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from typing import Any

import numpy as np
from pydantic import Field

from codrl.envs.base import CoDEnv, EnvParams, Episode, Pack, StepResult, Subset, Task, one_of, parse_params
from codrl.envs.code.driver import DriverResults, Limits, run_driver
from codrl.envs.code.report import Grade, TestCase, format_report, grade
from codrl.envs.code.submission import FORMAT_HINT, STOP_STRINGS, CodeSubmission, extract_code
from codrl.envs.code.tasks import TEMPLATE_NAMES, hidden_tests, sample_task, task_text
from codrl.envs.code.world import (
    VARIANTS,
    api_lines,
    helper_spy,
    house_source,
    sample_world,
)
from codrl.sandbox import SandboxResult

#: Per-variant defaults of the knobs left as None.
DEFAULTS: dict[str, dict[str, Any]] = {
    "base": {"max_turns": 2, "max_failures_shown": 3, "tail_chars": 600},
    "hard": {"max_turns": 2, "max_failures_shown": 1, "tail_chars": 300},
}
_BASE = DEFAULTS["base"]
Variant = one_of(VARIANTS)
Template = one_of(TEMPLATE_NAMES)

SYSTEM_PROMPT = (
    "You write Python functions for a shop's code base. Each task shows the API of the shop's module `house` "
    "and asks for one function; hidden unit tests check it and you get a test report.\n"
    "Reply with the whole file solution.py as one fenced code block inside the answer tag:\n"
    "<answer>\n```python\nimport house\n\ndef name(lines):\n    ...\n```\n</answer>\n"
    "The code base has house conventions (how records are read, what a function does on invalid input, how "
    "money is returned, the order and case of returned names). They are not written down, but they are the "
    "same in every task of this code base and the test reports reveal them: note them, they pay off in "
    "later tasks."
)


class CodeEnv(CoDEnv):
    """Code: write one function per task in a shop's code base; its hidden house conventions are shared.

    Parameters: the keywords of :class:`CodeEnv.Params`. Model code runs in these worlds, so they
    are drawn from a secret (``world_key``, see :mod:`codrl.envs.world_key`), never from a
    guessable seed. A test run is a pure function of the house code, the submission and the test
    inputs, so an identical submission (common among the samples of one group) reuses the earlier
    result (``cache_size``).

    Reward: the fraction of hidden tests the last submission passes (0 for a malformed reply): it
    depends only on what the submitted function returns or raises under the hidden tests, and on
    whether each call ends in time. Whether the house helper was used is reported, never scored.
    """

    reply_prefix = "<answer>\n```python\n"
    stop_strings = STOP_STRINGS
    success_threshold = 1.0
    secret_worlds = True
    #: Mean reward of the scripted random agent (valid programs written with random conventions,
    #: sometimes parsing records by hand), 30 test packs x 4 tasks, seed 0: base 0.22-0.24, hard
    #: 0.21-0.23 (the packs depend on the installation's world key; two keys gave the two ends).
    #: It is well above 0 because the fraction of tests passed is the reward: an empty list or an
    #: invalid-input test is often passed by luck.
    chance_reward = 0.24

    class Params(EnvParams):
        """Code's parameters: the knobs left out take the variant's value."""

        variant_field = "variant"
        variant_defaults = DEFAULTS
        name: str = Field("code", min_length=1, description="Name of the environment (pack ids, reports).")
        variant: Variant = Field("base", description=(
            "base (records through house.read) or hard (a 1-based house.Ledger, quantity-0 records possibly "
            "discontinued, less feedback)."))
        max_turns: int = Field(_BASE["max_turns"], strict=True, ge=1, le=10, description="Submissions per task, 1-10.")
        max_failures_shown: int = Field(_BASE["max_failures_shown"], strict=True, ge=0, le=20,
                                        description="Failing tests listed per report, 0-20 (base 3, hard 1).")
        tail_chars: int = Field(_BASE["tail_chars"], strict=True, ge=0, le=5000, description=(
            "Characters of the program's own output shown, 0-5000 (base 600, hard 300)."))
        timeout_s: float = Field(10.0, strict=True, ge=0.5, le=60, description="Wall-clock limit of one test run "
                                                                             "in seconds, 0.5-60.")
        call_timeout_s: float = Field(1.0, strict=True, ge=0.05, le=10,
                                      description="Time limit of one test call in seconds, 0.05-10.")
        memory_mb: int = Field(256, strict=True, ge=64, le=4096,
                               description="Address-space limit of the test run in MiB, 64-4096.")
        templates: Subset[Template] = Field(
            TEMPLATE_NAMES, description="Task templates to draw from: a non-empty subset of all "
                                                      "of them (the default).")
        cache_size: int = Field(512, strict=True, ge=0, le=100_000, description=(
            "Test runs remembered per environment, 0-100000 (0 turns the cache off); runs that hit a limit "
            "are never reused."))
        world_key: str | None = Field(None, min_length=1, description=(
            "Key file of the secret the pack worlds are drawn from (None: this installation's key)."))

    def __init__(self, **params: Any) -> None:
        p = parse_params(self.Params, params)
        self.name = p.name
        self.variant = p.variant
        self.max_turns = p.max_turns
        self.max_failures_shown = p.max_failures_shown
        self.tail_chars = p.tail_chars
        self.templates = p.templates
        self.limits = Limits(timeout_s=p.timeout_s, cpu_s=max(1, int(np.ceil(p.timeout_s / 2))),
                             memory_mb=p.memory_mb, call_timeout_s=p.call_timeout_s,
                             import_timeout_s=min(2 * p.call_timeout_s + 1, p.timeout_s))
        self.cache_size = p.cache_size
        self.world_key = p.world_key
        self._cache: OrderedDict[str, tuple[DriverResults, SandboxResult]] = OrderedDict()
        self._lock = threading.Lock()
        self.system_prompt = SYSTEM_PROMPT

    def run(self, house: str, code: str, function: str, calls: list[list[Any]],
            spy: tuple[str, str, str]) -> tuple[DriverResults, SandboxResult]:
        """:func:`~codrl.envs.code.driver.run_driver` with this environment's limits and result cache."""
        key = hashlib.sha256(json.dumps([house, code, function, calls, spy, repr(self.limits)]).encode()).hexdigest()
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        results, sandbox = run_driver(house, code, function, calls, [spy], self.limits)
        clean = (sandbox.killed_reason is None and not sandbox.timed_out
                 and all(o.error not in ("timeout", "exit") for o in results.outcomes.values()))
        if clean and self.cache_size:
            with self._lock:
                self._cache[key] = (results, sandbox)
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return results, sandbox

    # -- CoDEnv -------------------------------------------------------------------------------
    def sample_world(self, rng: np.random.Generator) -> dict[str, Any]:
        """One code base: record format, money text and hidden conventions."""
        return sample_world(rng, self.variant)

    def sample_task(self, world: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        """One function to write, with an example input and hidden test inputs."""
        return sample_task(world, rng, self.templates)

    def start(self, pack: Pack, task: Task, state: Any = None) -> CodeEpisode:
        """Begin an episode of ``task`` in the code base of ``pack``."""
        return CodeEpisode(self, pack.world, task.spec)


class CodeEpisode(Episode):
    """One function to write. ``info`` of each step: ``event`` (``tests``, ``solved``, ``final``,
    ``invalid`` or ``over``), ``turns``, ``passed``, ``total``, ``helper_unused`` (tests whose call
    did not use the house helper: advisory, not scored), ``killed`` (the sandbox's reason or None)
    and ``seconds`` (the test run's duration)."""

    def __init__(self, env: CodeEnv, world: dict[str, Any], spec: dict[str, Any]) -> None:
        self.env = env
        self.world = world
        self.spec = spec
        self.cases: list[TestCase] = hidden_tests(world, spec)
        self.house = house_source(world)
        self.spy = helper_spy(world)
        self.turns = 0
        self.done = False

    def reset(self) -> str:
        """The task text: house API, the function to write, an example call, the format."""
        self.turns = 0
        self.done = False
        text = task_text(self.world, self.spec, api_lines(self.world), self.env.max_turns)
        return f"{text}\n{FORMAT_HINT}"

    def run_tests(self, code: str) -> tuple[Grade, dict[str, Any]]:
        """Run ``code`` against the hidden tests in the sandbox and grade it on the host."""
        calls = [list(c.args) for c in self.cases]
        try:
            results, sandbox = self.env.run(self.house, code, self.spec["template"], calls, self.spy)
        except Exception as e:  # noqa: BLE001 - the sandbox or its runner failed: a scored failure, never a crash
            g = grade(self.cases, DriverResults(stage_error=f"the tests could not be run ({type(e).__name__})"),
                      None, self.spec["template"], self.spy[2], 0)
            return g, {"killed": None, "seconds": 0.0}
        try:
            g = grade(self.cases, results, sandbox, self.spec["template"], self.spy[2], self.env.tail_chars)
        except Exception as e:  # noqa: BLE001 - whatever the program left, grading ends in a scored failure
            g = grade(self.cases, DriverResults(stage_error=f"the results could not be graded ({type(e).__name__})"),
                      None, self.spec["template"], self.spy[2], 0)
        return g, {"killed": sandbox.killed_reason, "seconds": round(sandbox.duration_s, 3)}

    def step(self, reply: str) -> StepResult:
        """Test the submission in the reply and report; never raises."""
        if self.done:
            return StepResult(None, 0.0, True, "The task is already over.", True,
                              {"event": "over", "turns": self.turns})
        self.turns += 1
        code = extract_code(reply)
        if not isinstance(code, CodeSubmission):
            self.done = True
            return StepResult(None, 0.0, True, f"Invalid submission: {code} The task ended with reward 0.", False,
                              {"event": "invalid", "turns": self.turns, "passed": 0, "total": len(self.cases),
                               "killed": None, "seconds": 0.0})
        g, run = self.run_tests(code)
        report = format_report(g, self.env.max_failures_shown)
        info = {"turns": self.turns, "passed": g.passed, "total": g.total, "helper_unused": len(g.helper_unused), **run}
        if g.passed == g.total:
            self.done = True
            return StepResult(None, 1.0, True, f"{report}\nTask solved.", True, {"event": "solved", **info})
        if self.turns >= self.env.max_turns:
            self.done = True
            return StepResult(None, g.fraction, True, f"{report}\nFinal score: {g.passed}/{g.total} tests.", True,
                              {"event": "final", **info})
        left = self.env.max_turns - self.turns
        obs = (f"{report}\nFix your code and submit again ({left} submission{'s' if left != 1 else ''} left). "
               f"{FORMAT_HINT}")
        return StepResult(obs, 0.0, False, report, True, {"event": "tests", **info})
