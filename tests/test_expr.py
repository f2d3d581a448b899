"""Tests of the safe expression language (codrl.envs.expr): semantics, limits, hostile input."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from codrl.envs.expr import (
    DEFAULT_LIMITS,
    FUNCTIONS,
    ExprError,
    ExprRuntimeError,
    ExprSyntaxError,
    Limits,
    evaluate,
    parse,
)

VARS = {"x": 1.5, "v": -0.5, "t": 3.0, "x_target": 4.0, "v_target": 0.0, "horizon": 12.0, "remaining_steps": 9.0}


def ev(text: str, **over: float) -> float:
    return evaluate(text, {**VARS, **over})


# -- semantics ----------------------------------------------------------------------------------
@pytest.mark.parametrize("text,value", [
    ("1 + 2 * 3", 7.0), ("(1 + 2) * 3", 9.0), ("7 / 2", 3.5), ("2 ** 3 ** 2", 512.0), ("-2 ** 2", -4.0),
    ("+x", 1.5), ("-x", -1.5), ("x_target - x", 2.5), ("x * v", -0.75), ("1_000 + 0.5e1", 1005.0),
    ("x < 2", 1.0), ("x > 2", 0.0), ("x <= 1.5", 1.0), ("x >= 1.6", 0.0), ("t == 3", 1.0), ("t != 3", 0.0),
    ("0 < x < 2", 1.0), ("1 < x < 1.2", 0.0), ("x < 2 and v", -0.5), ("0 and 1 / 0", 0.0), ("x or 1 / 0", 1.5),
    ("0 or v", -0.5), ("not x", 0.0), ("not 0", 1.0), ("True + False", 1.0),
    ("1 if t < 2 else 2", 2.0), ("1 if t < 2 else 2 if t < 4 else 3", 2.0), ("where(t < 5, -1, 1)", -1.0),
    ("where(v != 0, x / v, 0)", -3.0), ("where(0, 1 / 0, 7)", 7.0), ("1 / 0 if 0 else 5", 5.0),
    ("abs(v)", 0.5), ("min(x, v, 3)", -0.5), ("max(x, v)", 1.5), ("clip(10 * x, -1, 1)", 1.0),
    ("clip(-10, -1, 1)", -1.0), ("pow(2, 0.5)", math.sqrt(2)), ("sqrt(horizon + 4)", 4.0),
    ("sign(v)", -1.0), ("sign(0)", 0.0), ("sign(x)", 1.0), ("(-2) ** 3", -8.0), ("4 ** -0.5", 0.5),
    ("remaining_steps + t == horizon", 1.0),
])
def test_values(text, value):
    assert ev(text) == pytest.approx(value)


def test_expression_object():
    e = parse("  clip(0.5 * (x_target - x) - v, -1, 1)\n", VARS)
    assert e.text == "clip(0.5 * (x_target - x) - v, -1, 1)"
    assert e.names == {"x", "v", "x_target"}
    assert e.n_nodes > 5 and e.depth >= 3
    assert e.evaluate({"x": 0.0, "v": 0.0, "x_target": 1.0}) == 0.5
    assert e.evaluate({"x": 0.0, "v": 0.0, "x_target": 9.0}) == 1.0
    with pytest.raises(ExprRuntimeError, match="no value for variable"):
        e.evaluate({"x": 0.0})


def test_errors_are_value_errors():
    assert issubclass(ExprSyntaxError, ExprError) and issubclass(ExprRuntimeError, ExprError)
    assert issubclass(ExprError, ValueError)
    assert set(FUNCTIONS) == {"abs", "min", "max", "clip", "pow", "sign", "sqrt", "where"}


# -- hostile or malformed text: rejected before evaluation, with a clear message ---------------------
HOSTILE = [
    ("x.__class__", "attribute"),
    ("x.__class__.__bases__", "attribute"),
    ("__import__('os')", "quotes"),
    ("__import__(x)", "unknown function"),
    ("__builtins__", "unknown name"),
    ("__class__", "unknown name"),
    ("lambda: 1", "':'"),
    ("lambda x 1", "syntax"),
    ("[i for i in x]", "brackets"),
    ("min(i for i in x)", "arguments|generator"),
    ("max(x, (i for i in v))", "generator"),
    ("x[0]", "brackets"),
    ("min(*x)", "starred"),
    ("min(x, *v)", "starred"),
    ("f'{x}'", "quotes"),
    ("(y := 1)", "':'"),
    ("open(x)", "unknown function"),
    ("eval(x)", "unknown function"),
    ("exec(x)", "unknown function"),
    ("getattr(x, v)", "unknown function"),
    ("x(1)", "unknown function"),
    ("min(x, key=v)", "keyword"),
    ("import os", "syntax"),
    ("(yield)", "yield"),
    ("await x", "await"),
    ("2 ** 100", "exponent"),
    ("pow(x, 99)", "exponent"),
    ("x ** -11", "exponent"),
    ("1e999", "too large"),
    ("10000000", "too large"),
    ("123456789012345678901234567890", "too large"),
    ("1j", "complex"),
    ("None", "NoneType"),
    ("...", "ellipsis"),
    ("x, v", "tuple"),
    ("x = 3", "assignment"),
    ("x ^ 2", r"\*\*"),
    ("x & v", "and"),
    ("x || v", "or"),
    ("x ? 1 : 0", "conditional"),
    ("x % 2", "'%'"),
    ("x // 2", "operator"),
    ("x << 2", "operator"),
    ("~x", "character .~."),
    ("x @ v", "'@'"),
    ("x is v", "comparison"),
    ("x in v", "comparison"),
    ("1; 2", "';'"),
    ("ｘ + 1", "U\\+FF58"),
    ("x\x00", "U\\+0000"),
    ("é", "U\\+00E9"),
    ("abs", "is a function"),
    ("min(x)", "2 to 8"),
    ("clip(x, 1)", "takes 3"),
    ("sqrt()", "takes 1"),
    ("", "empty"),
    ("   \n ", "empty"),
    ("x if v", "syntax"),
    ("(((x)", "syntax"),
    ("-" * 100 + "x", "too deeply"),
    ("not " * 60 + "x", "too deeply"),
    ("+".join(["x"] * 150), "too large|too deeply"),
    ("(" * 10_000 + "x" + ")" * 10_000, "too long"),
    ("-" * 10_000 + "x", "too long"),
    ("x" * 1_000_000, "too long"),
    ("1" * 5000, "too long"),
]


@pytest.mark.parametrize("text,reason", HOSTILE, ids=[f"{i}:{t[:20]!r}" for i, (t, _) in enumerate(HOSTILE)])
def test_hostile_rejected(text, reason):
    start = time.perf_counter()
    with pytest.raises(ExprSyntaxError, match=reason) as info:
        parse(text, VARS)
    assert time.perf_counter() - start < 0.5
    msg = str(info.value)
    assert msg and "\n" not in msg and len(msg) < 300


RUNTIME = [
    ("9 ** 9 ** 9", "out of range"),
    ("x / 0", "division by zero"),
    ("1 / (t - 3)", "division by zero"),
    ("0 ** -1", "zero to a negative power"),
    ("pow(0, -2)", "zero to a negative power"),
    ("(-8) ** (1 / 3)", "fractional power"),
    ("sqrt(v)", "square root of a negative"),
    ("1000 * 1000 * 1000", "out of range"),
    ("999999 + 999999", "out of range"),
    ("x ** (t * 4)", "exponent 12"),
    ("pow(10, t * 10)", "exponent 30"),
    ("10 ** 7", "out of range"),
]


@pytest.mark.parametrize("text,reason", RUNTIME)
def test_runtime_errors(text, reason):
    e = parse(text, VARS)  # accepted ...
    with pytest.raises(ExprRuntimeError, match=reason):
        e.evaluate(VARS)  # ... but fails when evaluated


def test_runtime_message_quotes_the_failing_part():
    with pytest.raises(ExprRuntimeError, match=r"`x / \(v \+ 0.5\)`"):
        ev("1 + x / (v + 0.5)")


def test_custom_limits():
    tight = Limits(max_chars=10, max_nodes=3, max_depth=2, max_magnitude=4.0, max_exponent=2.0)
    with pytest.raises(ExprSyntaxError, match="too long"):
        parse("x + x + x + x", VARS, tight)
    with pytest.raises(ExprSyntaxError, match="too large|too deeply"):
        parse("x+v+t", VARS, tight)
    with pytest.raises(ExprRuntimeError, match="out of range"):
        parse("x*t", VARS, tight).evaluate(VARS)
    assert parse("x*v", VARS, tight).evaluate(VARS) == -0.75
    with pytest.raises(ExprSyntaxError, match="exponent"):
        parse("x**3", VARS, tight)
    # With the length limit lifted, ast.parse's own failures on deep nesting are still clean rejections.
    huge = Limits(max_chars=10**7)
    for text in ("(" * 10_000 + "x" + ")" * 10_000, "-" * 100_000 + "x", "not " * 50_000 + "x"):
        with pytest.raises(ExprSyntaxError):
            parse(text, VARS, huge)


def test_default_limits_documented():
    assert DEFAULT_LIMITS == Limits(400, 200, 40, 1e6, 10.0)


def test_never_executes_anything(monkeypatch):
    """Only ast.parse touches the text (compile with PyCF_ONLY_AST); eval/exec are never called."""
    import ast
    import builtins

    real_compile = builtins.compile
    calls: list[str] = []

    def only_ast(source, filename, mode, flags=0, *args, **kwargs):
        calls.append("compile" if not flags & ast.PyCF_ONLY_AST else "ast")
        return real_compile(source, filename, mode, flags, *args, **kwargs)

    def forbidden(*args, **kwargs):  # pragma: no cover - must never run
        calls.append("eval/exec")

    with monkeypatch.context() as m:
        m.setattr(builtins, "compile", only_ast)
        m.setattr(builtins, "eval", forbidden)
        m.setattr(builtins, "exec", forbidden)
        value = ev("clip(x_target - x - 2 * v, -1, 1)")
        rejected = 0
        for text, _ in HOSTILE[:30]:
            try:
                parse(text, VARS)
            except ExprSyntaxError:
                rejected += 1
    assert value == 1.0 and rejected == 30
    assert calls and set(calls) == {"ast"}
    source = Path(parse.__code__.co_filename).read_text(encoding="utf-8")
    for word in ("eval(", "exec(", "compile("):
        assert f" {word}" not in source and f"({word}" not in source


# -- fuzzing ------------------------------------------------------------------------------------
TOKENS = ["x", "v", "t", "x_target", "horizon", "remaining_steps", "1", "0", "2.5", "1e5", "-", "+", "*", "/",
          "**", "(", ")", ",", "<", "<=", "==", "!=", " and ", " or ", "not ", " if ", " else ", "abs(", "min(",
          "max(", "clip(", "pow(", "sign(", "sqrt(", "where(", ".", "__class__", "[", "]", "'", ":", "lambda ",
          "ü", "\x00", "9**9**9", "open(", "_"]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(TOKENS), max_size=60) | st.text(max_size=80))
def test_fuzz_parse_and_evaluate(parts):
    text = "".join(parts) if isinstance(parts, list) else parts
    start = time.perf_counter()
    try:
        e = parse(text, VARS)
    except ExprSyntaxError as err:
        assert str(err)
    else:
        try:
            value = e.evaluate(VARS)
        except ExprRuntimeError as err:
            assert str(err)
        else:
            assert math.isfinite(value) and abs(value) <= DEFAULT_LIMITS.max_magnitude
    assert time.perf_counter() - start < 0.5
