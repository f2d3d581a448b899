"""Tests of the Code environment: worlds, reference, sandboxed test runs, reports, agents, hostile code.

Every submission here really runs in the sandbox (about 0.1-0.2 s each); nothing is mocked. Tests
whose name contains ``sandbox`` run hostile programs through the environment and check that each
scores no better than an empty submission, says why, and leaves the host unchanged.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
import sys
import uuid
from unittest import mock
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import codrl.envs.code as code_pkg
from codrl import sandbox
from codrl.envs import describe, make_env
from codrl.envs.code import CodeEnv, extract_code, run_driver
from codrl.envs.code.driver import (
    DRIVER_SOURCE,
    MISSING,
    RESULT_MARK,
    RUNNER_SOURCE,
    parse_driver_output,
)
from codrl.envs.code.report import Expected, same_value
from codrl.envs.code.submission import MAX_CODE_CHARS, CodeSubmission
from codrl.envs.code.tasks import TEMPLATE_NAMES, expected_outcome, hidden_tests
from codrl.envs.code.world import house_source, money_text, parse_line, render_line
from codrl.envs.scripted import agents_for
from codrl.envs.scripted.code import (
    Beliefs,
    parse_hints,
    solution_code,
    submission,
    write_hint_lines,
)
from codrl.eval.checklist import levels, reward_matrix

sys.path.insert(0, str(Path(__file__).parent))
from host_checks import pids_with  # noqa: E402

WORLD = {"variant": "base", "domain": "stationery", "sep": ";", "fields": ["name", "category", "price", "qty"],
         "currency": "{} EUR", "errors": "raise", "money": "house", "order": "asc", "case": "lower",
         "zero_qty": "keep"}
LINES = ["Pen;Office;250;3", "Ink;Office;120;0", "Ruler;School;95;2"]


def world(**kw: object) -> dict:
    return {**WORLD, **kw}


def first_episode(env: CodeEnv, index: int = 0):
    pack = env.sample_pack("test", 0, index, 1)
    ep = env.start(pack, pack.tasks[0])
    ep.reset()
    return pack, ep


def oracle_code(pack, spec) -> str:
    w = pack.world
    b = Beliefs(errors=w["errors"], money=w["money"], order=w["order"], case=w["case"], zero_qty=w["zero_qty"],
                base1=True)
    return solution_code(spec["template"], b, w["variant"])


def _driver_pids() -> list[int]:
    return [p for p in pids_with("driver.py") + pids_with("runner.py") if p != os.getpid()]


# -- registry, knobs, worlds -----------------------------------------------------------------------
def test_registry_knobs_and_description() -> None:
    env, hard = make_env("code"), make_env("code_hard")
    assert isinstance(env, CodeEnv) and env.name == "code" and env.variant == "base"
    assert hard.name == "code_hard" and hard.variant == "hard"
    assert (env.max_turns, env.max_failures_shown, hard.max_turns, hard.max_failures_shown) == (2, 3, 2, 1)
    assert env.reply_prefix == "<answer>\n```python\n" and env.stop_strings == ("</answer>", "\n```")
    assert env.chance_reward is not None and 0 < env.chance_reward < 0.3
    assert "<answer>" in env.system_prompt and "```python" in env.system_prompt
    assert describe("code").startswith("Code:") and describe("code_hard")
    for kw, field in [({"variant": "medium"}, "variant"), ({"max_turns": 0}, "max_turns"),
                      ({"max_turns": True}, "max_turns"), ({"max_failures_shown": -1}, "max_failures_shown"),
                      ({"timeout_s": 0}, "timeout_s"), ({"call_timeout_s": "1"}, "call_timeout_s"),
                      ({"memory_mb": 10}, "memory_mb"), ({"templates": []}, "templates"),
                      ({"templates": ["sum_all"]}, "templates"), ({"templates": "total_value"}, "templates"),
                      ({"name": ""}, "name"), ({"cache_size": -1}, "cache_size"), ({"tail_chars": 10**6}, "tail_chars")]:
        with pytest.raises(ValueError, match=field):
            CodeEnv(**kw)  # type: ignore[arg-type]
    assert CodeEnv(templates=["restock", "restock"]).templates == ("restock",)


def test_worlds_tasks_splits_and_prompt_size() -> None:
    env = make_env("code_hard")
    worlds = [env.sample_pack("train", 0, i, 2).world for i in range(30)]
    for key in ("errors", "money", "order", "case", "zero_qty", "sep", "currency"):
        assert len({w[key] for w in worlds}) > 1, key  # every convention varies between worlds
    assert all(make_env("code").sample_pack("train", 0, i, 1).world["zero_qty"] == "keep" for i in range(10))
    templates = set()
    for i in range(12):
        pack = env.sample_pack("test", 1, i, 3)
        for task in pack.tasks:
            templates.add(task.spec["template"])
            assert 6 <= len(task.spec["cases"]) <= 8
            assert len({c["name"] for c in task.spec["cases"]}) == len(task.spec["cases"])
            text = env.start(pack, task).reset()
            assert 90 < len(text.split()) < 300  # about 250-450 tokens
            assert "house.Ledger(lines)" in text and "def " + task.spec["template"] in text
            for conv in ("raise house", "return None", "cents / 100", "ascending", "descending", pack.world["sep"] * 2):
                assert conv not in text
    assert len(templates) >= 6


def test_house_source_runs_and_holds_no_convention() -> None:
    for variant in ("base", "hard"):
        pack = make_env("code" if variant == "base" else "code_hard").sample_pack("test", 0, 0, 1)
        src = house_source(pack.world)
        compile(src, "house.py", "exec")
        for key in ("errors", "money", "order", "case", "zero_qty"):
            assert f"{key!r}" not in src and f'"{key}"' not in src
    w = world(sep="|", fields=["qty", "price", "name", "category"], currency="CHF {}")
    rec = {"name": "Pen", "category": "Office", "price": 1205, "qty": 3}
    assert render_line(w, rec) == "3|1205|Pen|Office" and parse_line(w, "3|1205|Pen|Office") == rec
    for bad in ("3|1205|Pen", "3|n/a|Pen|Office", "3;1205;Pen;Office", "-1|5|Pen|Office", 7, "3|1205||Office"):
        assert parse_line(w, bad) is None
    assert money_text(w, 1205) == "CHF 12.05" and money_text(w, 5) == "CHF 0.05"


def test_reference_by_hand() -> None:
    w = world()
    assert expected_outcome(w, "total_value", [LINES]) == Expected("9.40 EUR")
    assert expected_outcome(world(money="cents"), "total_value", [LINES]) == Expected(940)
    assert expected_outcome(world(money="units"), "total_value", [LINES]) == Expected(9.4)
    assert expected_outcome(w, "names_below", [LINES, 200]) == Expected(["ink", "ruler"])
    assert expected_outcome(world(order="desc", case="upper"), "names_below", [LINES, 300]) == \
        Expected(["RULER", "PEN", "INK"])
    assert expected_outcome(world(order="first", case="asis"), "names_below", [LINES, 300]) == \
        Expected(["Pen", "Ink", "Ruler"])
    assert expected_outcome(world(zero_qty="skip", order="first"), "restock", [LINES, 5]) == Expected(["pen", "ruler"])
    assert expected_outcome(w, "count_by_category", [LINES]) == Expected({"office": 2, "school": 1})
    assert expected_outcome(w, "most_valuable", [LINES]) == Expected("pen")
    assert expected_outcome(w, "price_of", [LINES, "Ruler"]) == Expected("0.95 EUR")
    assert expected_outcome(w, "category_total", [LINES, "Office"]) == Expected("7.50 EUR")
    assert expected_outcome(w, "names_in", [LINES, "Office"]) == Expected(["ink", "pen"])
    # invalid input under each rule: a malformed line, an unknown name, no records for most_valuable
    for errors, exp in (("raise", Expected(raises="house.HouseError")), ("none", Expected(None)),
                        ("sentinel", Expected(MISSING))):
        ww = world(errors=errors)
        assert expected_outcome(ww, "total_value", [[*LINES, "Pen;Office;250"]]) == exp
        assert expected_outcome(ww, "price_of", [LINES, "Stapler"]) == exp
        assert expected_outcome(ww, "most_valuable", [[]]) == exp
    assert expected_outcome(w, "total_value", [[]]) == Expected("0.00 EUR")


def test_same_value_is_type_strict() -> None:
    assert same_value(750, 750) and not same_value(750, 750.0) and not same_value(750, True)
    assert same_value(7.5, 7.5000000001) and same_value(7.0, 7) and not same_value(7.5, "7.5")
    assert same_value(["a"], ["a"]) and not same_value(["a"], ("a",)) and not same_value(["a", "b"], ["b", "a"])
    assert same_value({"a": 1}, {"a": 1}) and not same_value({"a": 1}, {"a": 1, "b": 0})
    assert same_value(None, None) and not same_value(None, MISSING) and same_value(MISSING, MISSING)


# -- submissions -------------------------------------------------------------------------------------
def test_extract_code_accepts_the_format_and_explains_the_rest() -> None:
    prefix = "<answer>\n```python\n"
    assert extract_code(prefix + "x = 1\n```\n</answer>") == "x = 1\n"
    assert isinstance(extract_code(prefix + "x = 1\n</answer>"), CodeSubmission)  # missing closing fence
    assert extract_code(prefix + "x = 1\n```") == "x = 1\n"  # stopped at the closing fence, no </answer>
    assert not isinstance(extract_code(prefix + "x = 1\n"), CodeSubmission)  # neither closed
    assert extract_code("thinking...<ANSWER>```\nx = 2```</answer> trailing") == "x = 2\n"
    reasons = {
        "": "no <answer>", "x = 1": "no <answer>", "<answer>x = 1</answer>": "no ```python fenced code block",
        "<answer>```python\n```</answer>": "empty",
        "<answer>```python\na\n```\n```python\nb\n```</answer>": "more than one fenced code block",
        "<answer>```python\nx\n```</answer><answer>": "more than one <answer>",
        f"<answer>```python\n{'x' * (MAX_CODE_CHARS + 1)}\n```</answer>": "too long",
        "<answer>```python\nx\x00\n```</answer>": "NUL",
    }
    for reply, why in reasons.items():
        got = extract_code(reply)
        assert not isinstance(got, CodeSubmission) and why in got, (reply[:40], got)
    assert not isinstance(extract_code(None), CodeSubmission)


def test_malformed_submissions_are_scored_failures() -> None:
    env = make_env("code")
    for reply in ("", "def f(): pass", "<answer>def f(): pass</answer>", "<answer>\n```python\n\n```\n</answer>",
                  "<answer>```python\nx\n```</answer></answer>"):
        _, ep = first_episode(env)
        res = ep.step(reply)
        assert not res.valid and res.done and res.reward == 0.0 and res.observation is None
        assert res.feedback.startswith("Invalid submission:") and "reward 0" in res.feedback
        assert res.info["event"] == "invalid"
        assert ep.step(reply).feedback == "The task is already over."


# -- sandboxed runs: the oracle and the reference --------------------------------------------------------
@pytest.mark.parametrize("name", ["code", "code_hard"])
def test_oracle_passes_every_test_of_many_tasks(name: str) -> None:
    env = make_env(name, cache_size=0)
    seen = set()
    for i in range(8):
        pack = env.sample_pack("test", 2, i, 2)
        for task in pack.tasks:
            ep = env.start(pack, task)
            ep.reset()
            res = ep.step(submission(oracle_code(pack, task.spec)))
            assert res.reward == 1.0 and res.done and res.valid, res.feedback
            assert res.info["passed"] == res.info["total"] == len(task.spec["cases"])
            assert "Task solved" in res.feedback
            seen.add(task.spec["template"])
    assert len(seen) >= 5


@pytest.mark.parametrize("variant", ["base", "hard"])
def test_reference_agrees_with_oracle_code_on_every_template(variant: str) -> None:
    """Every template under varied conventions: the code's outcomes in the sandbox equal the reference."""
    env = CodeEnv(variant=variant)
    rng = np.random.default_rng(5)
    for k, template in enumerate(TEMPLATE_NAMES):
        w = env.sample_world(rng)
        w.update(errors=("raise", "none", "sentinel")[k % 3], money=("house", "cents", "units")[k % 3],
                 order=("asc", "desc", "first")[(k // 3) % 3], case=("lower", "upper", "asis")[k % 3])
        spec = CodeEnv(variant=variant, templates=[template]).sample_task(w, rng)
        cases = hidden_tests(w, spec)
        b = Beliefs(errors=w["errors"], money=w["money"], order=w["order"], case=w["case"], zero_qty=w["zero_qty"],
                    base1=True)
        results, sandbox = run_driver(house_source(w), solution_code(template, b, variant), template,
                                      [list(c.args) for c in cases], [("house.Ledger", "at", "ledger.at")
                                                                      if variant == "hard" else
                                                                      ("house", "read", "house.read")])
        assert sandbox.ok, sandbox.stderr
        for i, case in enumerate(cases):
            out = results.outcomes[i]
            if case.expected.raises:
                assert out.error == "HouseError" and out.house_error, (template, case.name)
            else:
                assert out.error is None and same_value(case.expected.value, out.value), (template, case, out)
            if case.needs_helper:
                assert out.spy.get("ledger.at" if variant == "hard" else "house.read", 0) >= 1


def test_sandbox_files_hold_inputs_only() -> None:
    """What enters the sandbox: house.py, solution.py, calls.json (inputs) and the driver; no expected outcome."""
    env = make_env("code")
    pack, ep = first_episode(env)
    calls = [list(c.args) for c in ep.cases]
    payload = {"function": pack.tasks[0].spec["template"], "calls": calls, "spies": [["house", "read", "house.read"]],
               "call_s": 1.0, "import_s": 2.0}
    assert set(payload) == {"function", "calls", "spies", "call_s", "import_s"}
    text = json.dumps(payload) + house_source(pack.world) + DRIVER_SOURCE + RUNNER_SOURCE
    for case in ep.cases:
        exp = case.expected.value
        if isinstance(exp, (list, str)) and exp:
            assert json.dumps(exp) not in text and repr(exp) not in text


# -- reports and turns ---------------------------------------------------------------------------------
def _env_total_value(**kw: object) -> tuple[CodeEnv, object, object]:
    env = CodeEnv(templates=["total_value"], **kw)  # type: ignore[arg-type]
    for i in range(50):
        pack = env.sample_pack("test", 0, i, 1)
        if pack.world["money"] == "house" and pack.world["errors"] == "raise":
            ep = env.start(pack, pack.tasks[0])
            ep.reset()
            return env, pack, ep
    raise AssertionError("no such world")


def test_report_messages_and_turns() -> None:
    _, pack, ep = _env_total_value(max_turns=3)
    w = pack.world
    wrong = solution_code("total_value", Beliefs(money="cents", errors="none"), "base")
    res = ep.step(submission(wrong))
    assert not res.done and res.reward == 0.0 and res.valid
    first = next(c for c in ep.cases if c.needs_helper)
    cents = sum(r["price"] * r["qty"] for r in (parse_line(w, x) for x in first.args[0]))
    assert f"returned {cents}, expected '{money_text(w, cents)}'" in res.observation
    assert res.observation.startswith(f"0/{len(ep.cases)} tests passed.")
    assert res.observation.count("FAILED ") == 3 and "more failing tests not shown" in res.observation
    assert "Fix your code and submit again (2 submissions left)" in res.observation
    # right values, but the records parsed by hand: the normal tests pass (helper use is advisory,
    # never scored); the invalid-input tests fail, as the hand parser accepts what house.read rejects
    hand = solution_code("total_value", Beliefs(money="house", hand_parse=(w["sep"], tuple(w["fields"]))), "base")
    res = ep.step(submission(hand))
    normal = [c.name for c in ep.cases if c.needs_helper]
    assert f"Advisory (not scored): house.read was not used in {len(normal)} test" in res.observation
    assert res.info["helper_unused"] == len(normal) and res.info["passed"] >= len(normal)
    assert not any(f"FAILED {name}:" in res.observation for name in normal)
    assert not res.done
    res = ep.step(submission(solution_code("total_value", Beliefs(errors="none"), "base")))
    assert res.done and 0 < res.reward < 1 and f"Final score: {res.info['passed']}/" in res.feedback
    assert "should raise house.HouseError, but returned None" in res.feedback
    assert res.reward == pytest.approx(res.info["passed"] / res.info["total"])


def test_report_shows_import_errors_missing_functions_and_program_output() -> None:
    env, _, ep = _env_total_value(max_failures_shown=1, max_turns=1)
    res = ep.step(submission("import house\nprint('hello from the solution')\ndef total_value(lines)\n    return 0\n"))
    assert res.done and res.reward == 0.0
    assert "solution.py failed to import: SyntaxError" in res.feedback and "Program output (tail):" in res.feedback
    assert res.feedback.count("FAILED ") == 1
    _, ep = first_episode(env)
    res = ep.step(submission("import house\nprint('hello from the solution')\n"))
    assert "solution.py defines no function total_value" in res.feedback
    assert "hello from the solution" in res.feedback
    _, ep = first_episode(env)
    res = ep.step(submission("import house\ndef total_value(lines):\n    return 1 / 0\n"))
    assert "raised ZeroDivisionError('division by zero')" in res.feedback


def test_driver_output_parsing_is_defensive() -> None:
    assert parse_driver_output("", 3).outcomes == {}
    junk = "\n".join([RESULT_MARK + "{bad json", RESULT_MARK + "[1]", RESULT_MARK + '{"i": 9}', RESULT_MARK + '{"i": "0"}',
                      RESULT_MARK + '{"i": 0, "value": {"t": "float", "v": "nan"}}',
                      RESULT_MARK + '{"i": 1, "value": {"t": "dict", "v": [[{"t": "list", "v": []}, {"t": "none"}]]}}',
                      RESULT_MARK + '{"i": 2, "value": {"t": "zzz"}}'])
    res = parse_driver_output(junk, 3)
    assert set(res.outcomes) == {0, 1, 2} and not res.conflict
    assert np.isnan(res.outcomes[0].value) and repr(res.outcomes[2].value) == "<? <malformed result>>"
    dup = parse_driver_output("\n".join([RESULT_MARK + '{"i": 0, "value": {"t": "none"}}'] * 2), 1)
    assert dup.conflict


def test_run_driver_and_report_are_reusable_for_other_tasks() -> None:
    """Another environment can run its own module and cases through the same driver and report."""
    from codrl.envs.code import Expected as Exp
    from codrl.envs.code import TestCase, format_report, grade

    house = "def double(x):\n    return 2 * x\n"  # no HouseError, no MISSING
    code = "import house\ndef f(x):\n    if x < 0:\n        raise ValueError('negative')\n" \
           "    return house.double(x) + (1 if x == 3 else 0)\n"
    cases = [TestCase("test_one", (1,), Exp(2), True), TestCase("test_three", (3,), Exp(6), True),
             TestCase("test_negative", (-1,), Exp(raises="ValueError"))]
    results, sandbox = run_driver(house, code, "f", [list(c.args) for c in cases], [("house", "double", "double")])
    g = grade(cases, results, sandbox, "f", "double")
    assert (g.passed, g.total) == (2, 3) and g.fraction == pytest.approx(2 / 3)
    text = format_report(g, max_failures_shown=5)
    assert text.startswith("2/3 tests passed.") and "FAILED test_three: f(3) returned 7, expected 6" in text
    assert text.count("FAILED") == 1


# -- fuzzed submissions ------------------------------------------------------------------------------
_CODE_BITS = st.sampled_from(["import house\n", "def total_value(lines):\n", "    return ", "house.read(", "lines",
                              ")", "(", "0", "None", "house.MISSING", "\n", "    ", "raise house.HouseError()",
                              "for x in lines:\n        ", "yield 1", "print('x')", "import os\n", "'''", "\\",
                              "lambda: 0", "[1, 2]", "{}", "exit()", "\x00", "\u202e", "#"])


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.lists(_CODE_BITS, max_size=25).map("".join) | st.text(max_size=200),
       tail=st.sampled_from(["```\n</answer>", "</answer>", "```</answer> x", ""]))
def test_fuzzed_submissions_never_crash_the_host(body: str, tail: str) -> None:
    env = _fuzz_env()
    _, ep = first_episode(env)
    res = ep.step("<answer>\n```python\n" + body + tail)
    assert isinstance(res.feedback, str) and res.feedback
    assert 0.0 <= res.reward <= 1.0 and np.isfinite(res.reward)
    if not res.valid:
        assert res.done and res.reward == 0.0


_FUZZ: list[CodeEnv] = []


def _fuzz_env() -> CodeEnv:
    if not _FUZZ:
        _FUZZ.append(CodeEnv(templates=["total_value"], timeout_s=3, call_timeout_s=0.2))
    return _FUZZ[0]


# -- hostile submissions -------------------------------------------------------------------------------
def _hostile(body: str, **kw: object):
    """Play ``total_value`` with hostile code; return the result and the score of an empty submission."""
    env = CodeEnv(templates=["total_value"], max_turns=1, timeout_s=kw.pop("timeout_s", 3),  # type: ignore[arg-type]
                  call_timeout_s=kw.pop("call_timeout_s", 0.2), cache_size=0, **kw)  # type: ignore[arg-type]
    _, ep = first_episode(env)
    before = _driver_pids()
    uids: list[int] = []  # the throwaway uids of this test's runs (root hosts): no other test's processes
    pick = sandbox._pick_uid
    with mock.patch.object(sandbox, "_pick_uid", lambda: uids.append(pick()) or uids[-1]):
        res = ep.step(submission(body))
        _, ep0 = first_episode(env)
        empty = ep0.step(submission("import house\n")).reward
    assert res.valid and res.done and res.reward <= empty == 0.0, res.feedback

    def leftovers() -> list[int]:
        if uids:
            return [p for u in uids for p in sandbox._uid_pids(u)]
        return sorted(set(_driver_pids()) - set(before))  # without root: any new driver process

    for _ in range(40):  # killed processes are reaped by the host's init shortly after
        if not leftovers():
            break
        time.sleep(0.05)
    assert not leftovers()
    return res


def test_sandbox_infinite_loops_time_out() -> None:
    res = _hostile("import house\ndef total_value(lines):\n    while True:\n        pass\n")
    assert "timed out: the call ran longer than 0.2s" in res.feedback
    res = _hostile("while True:\n    pass\n")
    assert "importing solution.py took over" in res.feedback
    t0 = time.monotonic()
    # swallowing every exception does not help: the driver's timer is in another process
    res = _hostile("while True:\n    try:\n        while True:\n            pass\n    except BaseException:\n        pass\n",
                   timeout_s=1.5)
    # the driver's import limit, the CPU limit or (on a loaded machine) the run's wall clock, whichever first
    assert any(why in res.feedback for why in ("importing solution.py took over", "CPU time limit", "wall-clock"))
    assert time.monotonic() - t0 < 6


def test_sandbox_call_timer_cannot_be_cancelled() -> None:
    """A call that cancels every timer it can reach and ignores SIGALRM and SIGXCPU still times out
    (the driver, another process, keeps the time), and the calls after it still run."""
    house = "def double(x):\n    return 2 * x\n"
    code = """import house, os, signal
def f(x):
    if x == 1:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for s in (signal.SIGALRM, signal.SIGXCPU, signal.SIGTERM):
            signal.signal(s, signal.SIG_IGN)
        while True:
            pass
    if x == 2:
        os._exit(3)
    if x == 3:
        os.kill(os.getpid(), 40)
    return house.double(x)
"""
    limits = code_pkg.Limits(call_timeout_s=0.3, timeout_s=5)
    t0 = time.monotonic()
    results, sb = run_driver(house, code, "f", [[0], [1], [2], [3], [4]], [("house", "double", "double")], limits)
    assert time.monotonic() - t0 < 4 and sb.killed_reason is None
    out = results.outcomes
    assert out[0].value == 0 and out[4].value == 8 and out[4].spy == {"double": 1}
    assert (out[1].error, out[1].message) == ("timeout", "the call ran longer than 0.3s")
    assert out[2].error == "exit" and "exited with status 3 during the call" in out[2].message
    assert out[3].error == "exit" and "terminated by signal 40" in out[3].message


def test_sandbox_unnamed_signal_is_a_scored_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    """A submission that kills itself with a real-time signal scores 0 with feedback, in every layer."""
    from codrl import sandbox

    body = "import os\nos.kill(os.getpid(), 40)\n"
    _hostile(body)
    if os.getuid() == 0:  # the uid layer reports the signal itself (it used to raise on its number)
        monkeypatch.setattr(sandbox, "isolation", lambda: "uid")
        res = _hostile(body)
        assert "terminated by signal 40" in res.feedback


def test_sandbox_fork_bomb_is_contained() -> None:
    token = f"bomb-{uuid.uuid4().hex}"
    body = f"""import os, sys
BOMB = "import os\\nwhile True:\\n    try:\\n        os.fork()\\n    except OSError:\\n        pass\\n"
def total_value(lines):
    while True:
        try:
            if os.fork() == 0:
                os.execv(sys.executable, [sys.executable, "-c", BOMB, {token!r}])
        except OSError:
            pass
"""
    res = _hostile(body, timeout_s=1.5)
    assert "0/" in res.feedback and ("timed out" in res.feedback or "sandbox stopped the run" in res.feedback)
    for _ in range(40):
        if not pids_with(token):
            break
        time.sleep(0.05)
    assert pids_with(token) == []


def test_sandbox_memory_bomb_hits_the_limit() -> None:
    body = "def total_value(lines):\n    chunks = []\n    while True:\n        chunks.append(bytearray(16 * 1024 * 1024))\n"
    res = _hostile(body, call_timeout_s=2.5)  # time to reach the limit on a loaded machine (0.2 s timed out once)
    assert "MemoryError" in res.feedback or "memory" in res.feedback.lower()


def test_sandbox_cannot_write_or_delete_host_files(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    sentinel = victim / "sentinel.txt"
    sentinel.write_text("keep me")
    for p in (tmp_path, victim):
        p.chmod(0o755)
    sentinel.chmod(0o644)
    etc_probe = Path("/etc") / f"codrl-code-{uuid.uuid4().hex}"
    body = f"""import os, shutil
def total_value(lines):
    done = []
    for attempt in (lambda: open({str(sentinel)!r}, "w").write("pwned"),
                    lambda: open({str(etc_probe)!r}, "w").write("pwned"),
                    lambda: os.remove({str(sentinel)!r}),
                    lambda: shutil.rmtree({str(victim)!r}),
                    lambda: os.rename({str(sentinel)!r}, "stolen.txt")):
        try:
            attempt()
            done.append("ok")
        except OSError as e:
            done.append(type(e).__name__)
    raise PermissionError("attempts: " + ",".join(done))
"""
    res = _hostile(body)
    assert "raised PermissionError('attempts: " in res.feedback and "ok" not in res.feedback.split("attempts: ")[1][:80]
    assert sentinel.read_text() == "keep me" and not etc_probe.exists()


def test_sandbox_cannot_reach_expected_outcomes_on_the_host() -> None:
    """The host's test file and the package source are unreachable or hold no expected outcome."""
    pkg_dir = Path(code_pkg.__file__).parent
    targets = [str(Path(__file__).resolve()), *(str(p) for p in sorted(pkg_dir.glob("*.py")))]
    body = f"""def total_value(lines):
    found = []
    for path in {targets!r}:
        try:
            with open(path) as f:
                found.append(len(f.read()))
        except OSError as e:
            found.append(type(e).__name__)
    return repr(found)
"""
    res = _hostile(body)
    assert "returned '[" in res.feedback or 'returned "[' in res.feedback  # the list's repr: lengths or errors
    if sandbox.isolation_for([sandbox.python()]) == "bwrap":  # the minimal root holds none of these files
        assert "FileNotFoundError" in res.feedback and not re.search(r"returned \S*\[\d", res.feedback)
    env = CodeEnv(templates=["total_value"])
    _, ep = first_episode(env)
    sources = "".join(Path(t).read_text() for t in targets)
    for case in ep.cases:  # values are computed at run time: none of them is written anywhere
        if isinstance(case.expected.value, str) and case.needs_helper:
            assert case.expected.value not in sources


def test_sandbox_network_is_blocked() -> None:
    from codrl import sandbox

    body = ("import socket\ndef total_value(lines):\n"
            "    socket.create_connection(('1.1.1.1', 53), timeout=1)\n    return 'connected'\n")
    res = _hostile(body)
    if sandbox.isolation_for([sandbox.python()]) not in ("bwrap", "namespaces"):
        pytest.skip("no network namespace here; the network is NOT blocked (see docs/sandbox.md)")
    assert "returned 'connected'" not in res.feedback and "raised OSError(" in res.feedback


def test_sandbox_stdout_flood_is_cut() -> None:
    res = _hostile("import sys\ndef total_value(lines):\n    while True:\n        print('x' * 65536)\n")
    assert "The sandbox stopped the run: output exceeded" in res.feedback
    assert len(res.feedback) < 3000


def test_sandbox_detached_child_does_not_outlive_the_run() -> None:
    token = f"detach-{uuid.uuid4().hex}"
    marker_dir = Path(tempfile.mkdtemp(prefix="codrl-marker-"))
    marker_dir.chmod(0o777)
    marker = marker_dir / "alive.txt"
    body = f"""import os, sys
def total_value(lines):
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            os.execv(sys.executable, [sys.executable, "-c",
                     "import time; time.sleep(1.0); open({str(marker)!r}, 'w').write('escaped')", {token!r}])
        os._exit(0)
    return "parent done"
"""
    try:
        res = _hostile(body)
        assert "returned 'parent done'" in res.feedback
        assert pids_with(token) == []
        time.sleep(1.3)
        assert not marker.exists() and pids_with(token) == []
    finally:
        for p in marker_dir.iterdir():
            p.unlink()
        marker_dir.rmdir()


_FORGE = """import os, signal
LINE = '@@codrl-result@@ {"i": %d, "value": {"t": "str", "v": "forged"}, "spy": {"double": 9}}\\n'
TRIED = []
def forge(pid_of_driver):
    for path in (f"/proc/{pid_of_driver}/fd/1", "/proc/1/fd/1", f"/proc/{pid_of_driver}/mem"):
        try:
            with open(path, "wb") as f:
                f.write(b"".join((LINE % i).encode() for i in range(4)))
            TRIED.append("wrote " + path)
        except OSError as e:
            TRIED.append(f"denied {path} ({type(e).__name__})")
    for fd in range(0, 64):
        for i in range(4):
            try:
                os.write(fd, (LINE % i).encode())
            except OSError:
                pass
forge(os.getppid())
"""


@pytest.mark.parametrize("layer", ["default", "uid"])
def test_sandbox_model_code_has_no_handle_on_the_result_channel(layer: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Forged result lines written to every descriptor, to the driver's stdout and memory through
    /proc, at import and during calls: none reaches the result channel. Each call has exactly one
    result, the function's own answer (what it wrote on its own pipe before a request is dropped)."""
    if layer == "uid":
        if os.getuid() != 0:
            pytest.skip("the uid layer needs root")
        monkeypatch.setattr(sandbox, "isolation", lambda: "uid")
    house = "def double(x):\n    return 2 * x\n"
    code = _FORGE + "def f(x):\n    forge(os.getppid())\n    print(TRIED)\n    return house.double(x) if x else 'mine'\n"
    code = "import house\n" + code
    results, sb = run_driver(house, code, "f", [[0], [1], [2]], [("house", "double", "double")])
    lines = [line for line in sb.stdout.splitlines() if line.startswith(RESULT_MARK)]
    assert len(lines) == 3 and not results.conflict, sb.stdout
    assert "forged" not in sb.stdout and "wrote /proc" not in sb.stderr, sb.stderr
    assert results.outcomes[0].value == "mine" and results.outcomes[1].value == 2 and results.outcomes[2].value == 4
    assert results.outcomes[1].spy == {"double": 1}
    assert "denied /proc/" in sb.stderr


def test_sandbox_killing_the_driver_scores_nothing() -> None:
    """A submission that kills the grading driver and then writes result lines everywhere leaves no
    result at all: it scores as an empty submission does."""
    res = _hostile(_FORGE.replace("forge(os.getppid())", "os.kill(os.getppid(), signal.SIGKILL)\nforge(os.getppid())")
                   + "def total_value(lines):\n    return 0\n")
    assert res.info["passed"] == 0 and "returned 'forged'" not in res.feedback  # its lines are program output only


def test_sandbox_forged_helper_counts_change_no_score() -> None:
    """Helper-use counts are taken where the submitted code runs, so they are advisory: forging them
    (here, into the spy's closure) changes the report's note and never the score."""
    env, pack, _ = _env_total_value(max_turns=1)
    w = pack.world
    hand = solution_code("total_value", Beliefs(money="house", hand_parse=(w["sep"], tuple(w["fields"]))), "base")
    forged = hand.replace("def total_value(lines):", "def total_value(lines):\n"
                          "    next(c for c in house.read.__closure__ if isinstance(c.cell_contents, dict))"
                          ".cell_contents['house.read'] = 1", 1)
    assert forged != hand
    rewards, unused = [], []
    for code in (hand, forged):
        ep = env.start(pack, pack.tasks[0])
        ep.reset()
        res = ep.step(submission(code))
        rewards.append(res.reward)
        unused.append(res.info["helper_unused"])
    assert rewards[0] == rewards[1] > 0 and unused[0] > 0 and unused[1] == 0


# -- scripted agents and levels ----------------------------------------------------------------------------
def test_hints_round_trip_and_learner_reads_only_text() -> None:
    b = Beliefs(errors="sentinel", money="units", order="desc", case="upper", zero_qty="skip", base1=True)
    assert parse_hints(write_hint_lines(b)) == b
    assert parse_hints("Hints:\nmoney: int cents\nnonsense: 3\nname order: sideways") == Beliefs(money="cents")
    env = make_env("code_hard")
    learner = agents_for("code_hard").learner
    a = reward_matrix(env, learner, packs=3, pack_size=2)
    b2 = reward_matrix(env, lambda pack, rng: learner(pack.__class__(pack.pack_id, pack.env, pack.split, {},
                                                                    pack.tasks), rng), packs=3, pack_size=2)
    assert np.array_equal(a, b2)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["code", "code_hard"])
def test_checklist_levels(name: str) -> None:
    lv = levels(make_env(name), *agents_for(name), packs=16, pack_size=4)
    assert lv.oracle == 1.0
    assert lv.chance < 0.35
    assert lv.learner_last - lv.learner_first > 0.15  # conventions learned from reports pay off
    assert abs(lv.memoryless_last - lv.memoryless_first) < 0.12
    assert lv.learner_last - lv.memoryless_last > 0.15


# -- unguessable worlds ------------------------------------------------------------------------------------
def test_sandbox_world_reconstruction_scores_no_more_than_empty() -> None:
    """A submission that hunts for what would let it rebuild its world (the project's source and
    generator, this environment's packages, the world key) finds none of it, and scores as an
    empty submission does."""
    import codrl
    from codrl.envs.world_key import default_key_path

    targets = [str(Path(codrl.__file__).resolve().parent), str(default_key_path()), str(Path(np.__file__).parent)]
    body = f"""import house, importlib, os
FOUND = []
for name in ("codrl", "numpy", "codrl.envs.code.world"):
    try:
        importlib.import_module(name)
        FOUND.append(name)
    except Exception:
        pass
for path in {targets!r}:
    try:
        open(path, "rb").read() if os.path.isfile(path) else os.listdir(path)
        FOUND.append(path)
    except OSError:
        pass
def total_value(lines):
    raise RuntimeError("found: " + repr(FOUND))
"""
    res = _hostile(body)
    assert "found: []" in res.feedback, res.feedback


def test_worlds_come_from_the_secret_key(tmp_path: Path) -> None:
    """Packs of the code world depend on the key, not only on (name, split, seed, index): another
    key gives other worlds, the same key the same ones; the fingerprint names the key, not the key."""
    from codrl.envs.world_key import fingerprint, load_key

    a, b = tmp_path / "a.key", tmp_path / "b.key"
    a.write_bytes(bytes(range(32)))
    b.write_bytes(bytes(range(1, 33)))
    pa = CodeEnv(world_key=str(a)).sample_pack("test", 0, 0, 2)
    assert CodeEnv(world_key=str(a)).sample_pack("test", 0, 0, 2).world == pa.world
    worlds_b = [CodeEnv(world_key=str(b)).sample_pack("test", 0, i, 1).world for i in range(4)]
    assert any(w != pa.world for w in worlds_b)
    fp = CodeEnv(world_key=str(a)).world_key_fingerprint()
    assert fp == fingerprint(load_key(str(a))) and len(fp) == 12 and fp not in a.read_bytes().hex()
    with pytest.raises(ValueError, match="does not exist"):
        CodeEnv(world_key=str(tmp_path / "missing.key")).sample_pack("test", 0, 0, 1)
    with pytest.raises(ValueError, match="world_key"):
        CodeEnv(world_key="")
