"""A small, safe expression language for text written by a model (control policies and the like).

Model text is **never** handed to ``eval``, ``exec`` or ``compile``. :func:`parse` checks the text
(length, characters), parses it with :func:`ast.parse` in ``"eval"`` mode *only to obtain a syntax
tree*, checks that tree against a strict whitelist and against size limits, and turns it into a
tree of plain Python closures that compute with floats. :meth:`Expression.evaluate` runs those
closures on a mapping of variable values.

Grammar (a subset of Python expression syntax)::

    expr    := expr "if" expr "else" expr          # conditional; only the chosen branch is evaluated
             | expr "or" expr | expr "and" expr | "not" expr
             | expr CMP expr [CMP expr ...]        # CMP: < <= > >= == !=, chained as in Python
             | expr ("+" | "-" | "*" | "/" | "**") expr
             | ("-" | "+") expr
             | NAME "(" expr ("," expr)* ")"       # a whitelisted function
             | NAME                                # a variable given by the caller
             | NUMBER | "True" | "False"
             | "(" expr ")"

Values are floats. A comparison is 1.0 when true and 0.0 when false; any nonzero value counts as
true. ``and``/``or`` behave as in Python (``a or b`` is ``a`` when ``a`` is true, else ``b``) and
short-circuit; ``not a`` is 1.0 or 0.0. ``**`` binds tighter than unary minus (``-x**2`` is
``-(x**2)``) and is right-associative, as in Python.

Functions (:data:`FUNCTIONS`): ``abs(a)``, ``min(a, b, ...)``, ``max(a, b, ...)`` (2-8 arguments),
``clip(a, lo, hi)`` = ``min(max(a, lo), hi)``, ``pow(a, p)`` = ``a ** p``, ``sign(a)`` (-1, 0 or 1),
``sqrt(a)``, and ``where(cond, a, b)`` = ``a if cond else b`` (lazy: only the chosen branch is
evaluated, so ``where(v != 0, x / v, 0)`` is safe).

Limits (:class:`Limits`; rejected before anything is evaluated unless noted):

* at most 400 characters, 200 syntax-tree nodes and nesting depth 40;
* only ASCII letters, digits, spaces and ``+ - * / ( ) . , < > = !`` (so no strings, brackets,
  subscripts, colons, lambdas, walrus, f-strings or unicode look-alike names);
* number literals at most 1e6 in magnitude; constant exponents at most 10 in magnitude;
* at evaluation: an intermediate value that is not finite or exceeds 1e6 in magnitude, a division
  by zero, an exponent above 10 in magnitude, a negative number to a fractional power, ``0`` to a
  negative power or the square root of a negative number is a runtime error
  (:class:`ExprRuntimeError`).

Errors: :class:`ExprSyntaxError` (rejected text) and :class:`ExprRuntimeError` (failed evaluation),
both :class:`ExprError` (a ``ValueError``) with a short, human-readable message that quotes at most a
short piece of the offending text. Neither function raises anything else.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

__all__ = [
    "DEFAULT_LIMITS",
    "FUNCTIONS",
    "ExprError",
    "ExprRuntimeError",
    "ExprSyntaxError",
    "Expression",
    "Limits",
    "evaluate",
    "parse",
]


class ExprError(ValueError):
    """A problem with an expression; ``str(error)`` is a one-line message fit to show a model."""


class ExprSyntaxError(ExprError):
    """The text is not an allowed expression (rejected before any evaluation)."""


class ExprRuntimeError(ExprError):
    """Evaluating an accepted expression failed (division by zero, a value too large, ...)."""


@dataclass(frozen=True)
class Limits:
    """Size and magnitude limits of the expression language."""

    max_chars: int = 400
    max_nodes: int = 200
    max_depth: int = 40
    max_magnitude: float = 1e6
    max_exponent: float = 10.0


DEFAULT_LIMITS = Limits()

#: Function name -> (min arguments, max arguments).
FUNCTIONS: dict[str, tuple[int, int]] = {
    "abs": (1, 1), "min": (2, 8), "max": (2, 8), "clip": (3, 3), "pow": (2, 2), "sign": (1, 1),
    "sqrt": (1, 1), "where": (3, 3),
}

_ALLOWED_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_ \t\r\n+-*/().,<>=!")
#: Friendlier messages for characters models often try.
_CHAR_ADVICE: dict[str, str] = {
    "^": "'^' is not allowed; write powers as a ** p or pow(a, p)",
    "&": "'&' is not allowed; use and",
    "|": "'|' is not allowed; use or",
    "?": "'?' is not allowed; write a conditional as A if COND else B, or where(COND, A, B)",
    ":": "':' is not allowed (no lambdas, slices or assignments); write a conditional as A if COND else B",
    "[": "brackets are not allowed (no lists or indexing)",
    "]": "brackets are not allowed (no lists or indexing)",
    "{": "braces are not allowed",
    "}": "braces are not allowed",
    "'": "quotes are not allowed (no strings)",
    '"': "quotes are not allowed (no strings)",
    "%": "'%' is not allowed; allowed operators are + - * / **",
    ";": "';' is not allowed; write one expression",
}
_BINOPS: dict[type, str] = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Pow: "**"}
_CMPOPS: dict[type, Callable[[float, float], bool]] = {
    ast.Lt: lambda p, q: p < q, ast.LtE: lambda p, q: p <= q, ast.Gt: lambda p, q: p > q,
    ast.GtE: lambda p, q: p >= q, ast.Eq: lambda p, q: p == q, ast.NotEq: lambda p, q: p != q,
}
_NODE_NAMES: dict[type, str] = {
    ast.Attribute: "attribute access (a.b)", ast.Subscript: "indexing (a[i])", ast.Lambda: "lambda",
    ast.ListComp: "comprehensions", ast.SetComp: "comprehensions", ast.DictComp: "comprehensions",
    ast.GeneratorExp: "generator expressions", ast.Starred: "starred arguments (*a)",
    ast.JoinedStr: "f-strings", ast.NamedExpr: "assignment (:=)", ast.Await: "await",
    ast.Yield: "yield", ast.YieldFrom: "yield", ast.List: "lists", ast.Tuple: "tuples (a, b)",
    ast.Dict: "dicts", ast.Set: "sets", ast.Slice: "slices",
}

Fn = Callable[[Mapping[str, float]], float]


def _short(text: str, limit: int = 40) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class Expression:
    """An accepted expression: its text, the variables it reads, its size, and its evaluator."""

    text: str
    names: frozenset[str]
    n_nodes: int
    depth: int
    _fn: Fn

    def evaluate(self, values: Mapping[str, float]) -> float:
        """The expression's value for ``values`` (variable name -> number); raises only
        :class:`ExprRuntimeError`."""
        missing = sorted(n for n in self.names if n not in values)
        if missing:
            raise ExprRuntimeError(f"no value for variable(s) {', '.join(missing)}")
        try:
            return float(self._fn(values))
        except ExprRuntimeError:
            raise
        except (ArithmeticError, ValueError, TypeError, RecursionError, MemoryError) as e:  # defensive
            raise ExprRuntimeError(f"evaluation failed ({type(e).__name__})") from None


def parse(text: object, variables: Iterable[str], limits: Limits = DEFAULT_LIMITS) -> Expression:
    """Check ``text`` and build an :class:`Expression` over ``variables``.

    Raises :class:`ExprSyntaxError` with a short reason for anything outside the language or its
    limits. Never evaluates any part of the text; runs in time linear in ``len(text)``.
    """
    if not isinstance(text, str):
        raise ExprSyntaxError("the expression is not text")
    if len(text) > limits.max_chars:
        raise ExprSyntaxError(f"the expression is too long ({len(text)} characters; at most {limits.max_chars})")
    text = text.strip()
    if not text:
        raise ExprSyntaxError("the expression is empty")
    for ch in text:
        if ch not in _ALLOWED_CHARS:
            advice = _CHAR_ADVICE.get(ch)
            if advice is None:
                shown = repr(ch) if ch.isprintable() and ch.isascii() else f"U+{ord(ch):04X}"
                advice = f"character {shown} is not allowed"
            raise ExprSyntaxError(advice)
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as e:
        raise ExprSyntaxError(_syntax_message(text, e)) from None
    except (ValueError, RecursionError, MemoryError, OverflowError):
        raise ExprSyntaxError("the expression could not be parsed (too complex or malformed)") from None
    root = tree.body
    n_nodes, depth = _measure(root, limits)
    variables = frozenset(variables)
    builder = _Builder(text, variables, limits)
    fn = builder.build(root)
    return Expression(text=text, names=frozenset(builder.used), n_nodes=n_nodes, depth=depth, _fn=fn)


def evaluate(text: object, values: Mapping[str, float], limits: Limits = DEFAULT_LIMITS) -> float:
    """Parse ``text`` over the names of ``values`` and evaluate it once (raises only :class:`ExprError`)."""
    return parse(text, values.keys(), limits).evaluate(values)


def _syntax_message(text: str, e: SyntaxError) -> str:
    msg = (e.msg or "invalid syntax").split(". Maybe")[0]
    if "=" in text and "==" not in text and "<=" not in text and ">=" not in text and "!=" not in text:
        return "assignments are not allowed; write only the expression (use == to compare)"
    where = f" near column {e.offset}" if e.offset else ""
    return f"syntax error{where}: {msg}"


def _measure(root: ast.AST, limits: Limits) -> tuple[int, int]:
    """Node count and depth of the tree, without recursion; rejects trees over the limits."""
    count, deepest = 0, 0
    stack: list[tuple[ast.AST, int]] = [(root, 1)]
    while stack:
        node, d = stack.pop()
        count += 1
        deepest = max(deepest, d)
        if count > limits.max_nodes:
            raise ExprSyntaxError(f"the expression is too large (more than {limits.max_nodes} syntax nodes)")
        if d > limits.max_depth:
            raise ExprSyntaxError(f"the expression is nested too deeply (more than {limits.max_depth} levels)")
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.expr_context, ast.operator, ast.unaryop, ast.cmpop, ast.boolop)):
                continue
            stack.append((child, d + 1))
    return count, deepest


class _Builder:
    """Turns a whitelisted syntax tree into closures; rejects every other node type."""

    def __init__(self, text: str, variables: frozenset[str], limits: Limits) -> None:
        self.text = text
        self.variables = variables
        self.limits = limits
        self.used: set[str] = set()

    # -- helpers --------------------------------------------------------------------------------
    def _src(self, node: ast.AST) -> str:
        try:
            seg = ast.get_source_segment(self.text, node)
        except (ValueError, TypeError, IndexError, AttributeError):  # pragma: no cover - positions exist after ast.parse
            seg = None
        return _short(seg or type(node).__name__)

    def _check(self, value: float, node: ast.AST) -> float:
        if not math.isfinite(value) or abs(value) > self.limits.max_magnitude:
            raise ExprRuntimeError(f"value {'out of range' if math.isfinite(value) else 'not finite'} "
                                   f"(|value| must stay <= {self.limits.max_magnitude:g}) in `{self._src(node)}`")
        return value

    def _pow(self, base: float, exp: float, node: ast.AST) -> float:
        lim = self.limits.max_exponent
        if abs(exp) > lim:
            raise ExprRuntimeError(f"exponent {exp:g} out of range (at most {lim:g} in magnitude) in `{self._src(node)}`")
        if base == 0.0 and exp < 0:
            raise ExprRuntimeError(f"zero to a negative power (division by zero) in `{self._src(node)}`")
        if base < 0 and exp != int(exp):
            raise ExprRuntimeError(f"negative number to a fractional power in `{self._src(node)}`")
        try:
            value = math.pow(base, exp)
        except (OverflowError, ValueError):
            raise ExprRuntimeError(f"power out of range in `{self._src(node)}`") from None
        return self._check(value, node)

    # -- the whitelist --------------------------------------------------------------------------
    def build(self, node: ast.AST) -> Fn:
        if isinstance(node, ast.Constant):
            return self._constant(node)
        if isinstance(node, ast.Name):
            return self._name(node)
        if isinstance(node, ast.UnaryOp):
            return self._unary(node)
        if isinstance(node, ast.BinOp):
            return self._binop(node)
        if isinstance(node, ast.BoolOp):
            return self._boolop(node)
        if isinstance(node, ast.Compare):
            return self._compare(node)
        if isinstance(node, ast.IfExp):
            return self._ifexp(node.test, node.body, node.orelse)
        if isinstance(node, ast.Call):
            return self._call(node)
        what = _NODE_NAMES.get(type(node), type(node).__name__)
        raise ExprSyntaxError(f"{what} not allowed: `{self._src(node)}`")

    def _constant(self, node: ast.Constant) -> Fn:
        value = node.value
        if isinstance(value, bool):
            number = 1.0 if value else 0.0
        elif isinstance(value, (int, float)):
            if isinstance(value, int) and abs(value) > self.limits.max_magnitude:
                raise ExprSyntaxError(f"number too large: `{self._src(node)}` (at most {self.limits.max_magnitude:g})")
            number = float(value)
            if not math.isfinite(number) or abs(number) > self.limits.max_magnitude:
                raise ExprSyntaxError(f"number too large: `{self._src(node)}` (at most {self.limits.max_magnitude:g})")
        else:
            kind = "strings" if isinstance(value, (str, bytes)) else f"{type(value).__name__} constants"
            raise ExprSyntaxError(f"{kind} not allowed: `{self._src(node)}`")
        return lambda env: number

    def _name(self, node: ast.Name) -> Fn:
        name = node.id
        if name in self.variables:
            self.used.add(name)
            return lambda env: float(env[name])
        if name in FUNCTIONS:
            raise ExprSyntaxError(f"{name} is a function; call it like {name}(...)")
        allowed = ", ".join(sorted(self.variables))
        raise ExprSyntaxError(f"unknown name `{_short(name, 30)}`; the variables are {allowed}")

    def _unary(self, node: ast.UnaryOp) -> Fn:
        operand = self.build(node.operand)
        if isinstance(node.op, ast.USub):
            return lambda env: -operand(env)
        if isinstance(node.op, ast.UAdd):
            return operand
        if isinstance(node.op, ast.Not):
            return lambda env: 0.0 if operand(env) else 1.0
        raise ExprSyntaxError(f"operator not allowed: `{self._src(node)}`; allowed operators are + - * / **")

    def _binop(self, node: ast.BinOp) -> Fn:
        op = type(node.op)
        if op not in _BINOPS:
            raise ExprSyntaxError(f"operator not allowed: `{self._src(node)}`; allowed operators are + - * / **")
        if op is ast.Pow:
            exp = _constant_value(node.right)
            if exp is not None and abs(exp) > self.limits.max_exponent:
                raise ExprSyntaxError(f"exponent too large: `{self._src(node)}` (at most {self.limits.max_exponent:g})")
        left, right = self.build(node.left), self.build(node.right)
        check = self._check
        if op is ast.Add:
            return lambda env: check(left(env) + right(env), node)
        if op is ast.Sub:
            return lambda env: check(left(env) - right(env), node)
        if op is ast.Mult:
            return lambda env: check(left(env) * right(env), node)
        if op is ast.Div:
            def div(env: Mapping[str, float]) -> float:
                num, den = left(env), right(env)
                if den == 0.0:
                    raise ExprRuntimeError(f"division by zero in `{self._src(node)}`")
                return check(num / den, node)
            return div
        return lambda env: self._pow(left(env), right(env), node)

    def _boolop(self, node: ast.BoolOp) -> Fn:
        parts = [self.build(v) for v in node.values]
        if isinstance(node.op, ast.And):
            def and_(env: Mapping[str, float]) -> float:
                value = 0.0
                for p in parts:
                    value = p(env)
                    if not value:
                        return value
                return value
            return and_

        def or_(env: Mapping[str, float]) -> float:
            value = 0.0
            for p in parts:
                value = p(env)
                if value:
                    return value
            return value
        return or_

    def _compare(self, node: ast.Compare) -> Fn:
        ops = []
        for op in node.ops:
            if type(op) not in _CMPOPS:
                raise ExprSyntaxError(f"comparison not allowed: `{self._src(node)}`; use < <= > >= == !=")
            ops.append(_CMPOPS[type(op)])
        left = self.build(node.left)
        rights = [self.build(c) for c in node.comparators]

        def compare(env: Mapping[str, float]) -> float:
            a = left(env)
            for op, right in zip(ops, rights):
                b = right(env)
                if not op(a, b):
                    return 0.0
                a = b
            return 1.0
        return compare

    def _ifexp(self, test_node: ast.AST, body_node: ast.AST, else_node: ast.AST) -> Fn:
        test, body, orelse = self.build(test_node), self.build(body_node), self.build(else_node)
        return lambda env: body(env) if test(env) else orelse(env)

    def _call(self, node: ast.Call) -> Fn:
        if not isinstance(node.func, ast.Name):
            raise ExprSyntaxError(f"only the functions {', '.join(FUNCTIONS)} can be called: `{self._src(node)}`")
        name = node.func.id
        if name not in FUNCTIONS:
            raise ExprSyntaxError(f"unknown function `{_short(name, 30)}`; allowed functions are {', '.join(FUNCTIONS)}")
        if node.keywords:
            raise ExprSyntaxError(f"keyword arguments are not allowed: `{self._src(node)}`")
        for a in node.args:
            if isinstance(a, ast.Starred):
                raise ExprSyntaxError(f"starred arguments (*a) not allowed: `{self._src(node)}`")
        lo, hi = FUNCTIONS[name]
        n = len(node.args)
        if not lo <= n <= hi:
            want = str(lo) if lo == hi else f"{lo} to {hi}"
            raise ExprSyntaxError(f"{name} takes {want} arguments, got {n}: `{self._src(node)}`")
        if name == "where":
            return self._ifexp(node.args[0], node.args[1], node.args[2])
        if name == "pow":
            exp = _constant_value(node.args[1])
            if exp is not None and abs(exp) > self.limits.max_exponent:
                raise ExprSyntaxError(f"exponent too large: `{self._src(node)}` (at most {self.limits.max_exponent:g})")
        args = [self.build(a) for a in node.args]
        if name == "abs":
            (a0,) = args
            return lambda env: abs(a0(env))
        if name == "sign":
            (a0,) = args
            return lambda env: _sign(a0(env))
        if name == "sqrt":
            (a0,) = args

            def sqrt(env: Mapping[str, float]) -> float:
                value = a0(env)
                if value < 0:
                    raise ExprRuntimeError(f"square root of a negative number in `{self._src(node)}`")
                return math.sqrt(value)
            return sqrt
        if name == "min":
            return lambda env: min(a(env) for a in args)
        if name == "max":
            return lambda env: max(a(env) for a in args)
        if name == "clip":
            a0, a1, a2 = args
            return lambda env: min(max(a0(env), a1(env)), a2(env))
        b0, e0 = args  # pow
        return lambda env: self._pow(b0(env), e0(env), node)


def _sign(value: float) -> float:
    return 1.0 if value > 0 else -1.0 if value < 0 else 0.0


def _constant_value(node: ast.AST) -> float | None:
    """The value of a literal number, possibly under unary signs (else None); for exponent checks."""
    sign = 1.0
    steps = 0
    while isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)) and steps < 100:
        if isinstance(node.op, ast.USub):
            sign = -sign
        node = node.operand
        steps += 1
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        try:
            return sign * float(node.value)
        except OverflowError:
            return math.inf
    return None
