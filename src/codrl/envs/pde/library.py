"""The 15-term reaction library and the small equation grammar of PDE Discovery.

An *equation* is the reaction term ``f(u)`` of ``u_t = u_xx + f(u)``: a sum of library terms, each
with a real coefficient. In code it is a dict ``{term name: coefficient}`` in library order (see
:func:`canonical`); in text it is written in the grammar below and read by :func:`parse_equation`,
a hand-written scanner. Model text is never evaluated as Python.

Grammar (spaces are ignored everywhere; letters are case-insensitive)::

    equation := [prefix] "0" | [prefix] item (sign item)*
    prefix   := "f(u)=" | "u_t=u_xx"        (the latter must be followed by a sign)
    item     := [sign] [number ["*"]] term  |  [sign] [number ["*"]] "(" term ")"
    sign     := "+" | "-"                   (two signs in a row multiply: "+ -0.5*u" is "-0.5*u")
    number   := digits ["." digits] [("e"|"E") [sign] digits]   (or "." digits)
    term     := one of the 15 names of TERMS, or an alias of ALIASES, optionally in parentheses

A term written twice has its coefficients added; a zero coefficient drops the term. ``**`` is
read as ``^``. Anything else (other functions, ``u^u``, ``u*u``, names, calls, brackets around a
sum, ...) is rejected with a one-line reason. :func:`format_equation` prints the canonical form,
e.g. ``1.2*u - 0.5*u^3 + 0.8*(exp(u)-1)``, and ``parse_equation(format_equation(eq)) == eq``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping

import numpy as np

Equation = dict[str, float]


def _u(u: np.ndarray) -> np.ndarray:
    return u


def _u2(u: np.ndarray) -> np.ndarray:
    return u * u


def _u3(u: np.ndarray) -> np.ndarray:
    return u * u * u


def _u4(u: np.ndarray) -> np.ndarray:
    u2 = u * u
    return u2 * u2


def _u5(u: np.ndarray) -> np.ndarray:
    u2 = u * u
    return u2 * u2 * u


def _u7(u: np.ndarray) -> np.ndarray:
    u2 = u * u
    return u2 * u2 * u2 * u


def _exp_m1(u: np.ndarray) -> np.ndarray:
    return np.expm1(np.minimum(u, 50.0))


#: The library, in its fixed order: canonical name -> function of u (vectorised, finite for |u| <= 50).
TERMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "u": _u,
    "u^2": _u2,
    "u^3": _u3,
    "u^4": _u4,
    "u^5": _u5,
    "u^7": _u7,
    "sin(u)": np.sin,
    "sin(2u)": lambda u: np.sin(2.0 * u),
    "exp(u)-1": _exp_m1,
    "log(1+u^2)": lambda u: np.log1p(u * u),
    "tanh(u)": np.tanh,
    "u/(1+u^2)": lambda u: u / (1.0 + u * u),
    "u^2/(1+u^2)": lambda u: u * u / (1.0 + u * u),
    "u^4/(1+u^4)": lambda u: _u4(u) / (1.0 + _u4(u)),
    "u/(1+u+u^2)": lambda u: u / (1.0 + u + u * u),
}
TERM_NAMES: tuple[str, ...] = tuple(TERMS)
_ORDER = {name: i for i, name in enumerate(TERM_NAMES)}

#: Other spellings accepted for a term (compared after removing spaces, lower-cased, ``**`` -> ``^``).
ALIASES: dict[str, str] = {
    "u^1": "u",
    "sin(2*u)": "sin(2u)",
    "e^u-1": "exp(u)-1",
    "ln(1+u^2)": "log(1+u^2)",
    "u/(u^2+1)": "u/(1+u^2)",
    "u^2/(u^2+1)": "u^2/(1+u^2)",
    "u^4/(u^4+1)": "u^4/(1+u^4)",
    "u/(u^2+u+1)": "u/(1+u+u^2)",
}
#: Every accepted spelling -> canonical name, longest spelling first (the scanner takes the longest match).
_SPELLINGS: list[tuple[str, str]] = sorted(
    [(name.lower(), name) for name in TERM_NAMES] + [(a.lower(), c) for a, c in ALIASES.items()],
    key=lambda p: -len(p[0]))
_FIRST_CHARS = frozenset(s[0] for s, _ in _SPELLINGS)

#: Longest equation text accepted (characters, spaces included): keeps parsing cheap on any input.
MAX_EQUATION_CHARS = 400
_NUMBER_RE = re.compile(r"(?:\d{1,20}(?:\.\d{0,20})?|\.\d{1,20})(?:e[+-]?\d{1,3})?")
_PREFIXES = ("f(u)=", "u_t=u_xx")


class EquationError(ValueError):
    """An equation text outside the grammar; the message says where and why."""


def evaluate_term(name: str, u: np.ndarray) -> np.ndarray:
    """Term ``name`` (a canonical name) evaluated on ``u`` (float array)."""
    return TERMS[name](np.asarray(u, dtype=float))


def design_matrix(u: np.ndarray, names: Iterable[str]) -> np.ndarray:
    """Columns of the named terms evaluated on ``u``: shape ``(len(u), len(names))``."""
    u = np.asarray(u, dtype=float).ravel()
    cols = [evaluate_term(n, u) for n in names]
    return np.stack(cols, axis=1) if cols else np.zeros((u.size, 0))


def evaluate(eq: Mapping[str, float], u: np.ndarray) -> np.ndarray:
    """``f(u)`` for an equation dict (0 for the empty equation)."""
    u = np.asarray(u, dtype=float)
    out = np.zeros_like(u)
    for name, c in eq.items():
        out = out + float(c) * evaluate_term(name, u)
    return out


def canonical(eq: Mapping[str, float]) -> Equation:
    """The equation with terms in library order and zero coefficients dropped."""
    for name in eq:
        if name not in _ORDER:
            raise EquationError(f"unknown term {name!r}")
    return {n: float(eq[n]) for n in sorted(eq, key=_ORDER.__getitem__) if float(eq[n]) != 0.0}


def format_number(c: float) -> str:
    """A coefficient as text: the shortest repr that reads back exactly (no sign for negatives)."""
    text = repr(abs(float(c)))
    return text.removesuffix(".0")


def format_term(name: str, coef: float) -> str:
    """``coef*term`` without the sign; ``exp(u)-1`` gets parentheses so the product reads right."""
    body = f"({name})" if name == "exp(u)-1" else name
    return body if abs(coef) == 1.0 else f"{format_number(coef)}*{body}"


def format_equation(eq: Mapping[str, float]) -> str:
    """The canonical text of an equation, e.g. ``1.2*u - 0.5*u^3``; ``0`` when it has no term."""
    eq = canonical(eq)
    if not eq:
        return "0"
    parts: list[str] = []
    for i, (name, c) in enumerate(eq.items()):
        term = format_term(name, c)
        if i == 0:
            parts.append(f"-{term}" if c < 0 else term)
        else:
            parts.append(f"{'-' if c < 0 else '+'} {term}")
    return " ".join(parts)


def _match_term(s: str, pos: int) -> tuple[str, int] | None:
    """The canonical term spelled at ``s[pos:]`` (longest spelling) and the position after it."""
    if pos >= len(s) or s[pos] not in _FIRST_CHARS:
        return None
    for spelling, name in _SPELLINGS:
        if s.startswith(spelling, pos):
            return name, pos + len(spelling)
    return None


def normalise(text: str) -> str:
    """Spaces removed, lower-cased, ``**`` read as ``^``."""
    return "".join(text.split()).lower().replace("**", "^")


def parse_term(text: str) -> str:
    """The canonical name of one term written alone (an alias or parentheses allowed)."""
    if not isinstance(text, str) or len(text) > MAX_EQUATION_CHARS:
        raise EquationError("a term must be a short string")
    s = normalise(text)
    if len(s) >= 2 and s[0] == "(" and s[-1] == ")":
        s = s[1:-1]
    m = _match_term(s, 0)
    if m is None or m[1] != len(s):
        raise EquationError(f"unknown term {text.strip()[:40]!r}; the terms are: {', '.join(TERM_NAMES)}")
    return m[0]


def parse_equation(text: str) -> Equation:
    """Read an equation written in the grammar of this module; raise :class:`EquationError`.

    Linear time: one left-to-right scan over at most :data:`MAX_EQUATION_CHARS` characters.
    """
    if not isinstance(text, str):
        raise EquationError("an equation must be text")
    if len(text) > MAX_EQUATION_CHARS:
        raise EquationError(f"the equation is longer than {MAX_EQUATION_CHARS} characters")
    s = normalise(text)
    pos = 0
    for prefix in _PREFIXES:
        if s.startswith(prefix):
            pos = len(prefix)
            if prefix == "u_t=u_xx" and (pos == len(s) or s[pos] not in "+-"):
                raise EquationError("after 'u_t = u_xx' write '+' or '-' and the reaction terms")
            break
    if s[pos:] == "0":
        return {}
    if pos == len(s):
        raise EquationError("the equation is empty")
    out: dict[str, float] = {}
    first = True
    while pos < len(s):
        sign = 1.0
        if s[pos] in "+-":
            sign = -1.0 if s[pos] == "-" else 1.0
            pos += 1
        elif not first:
            raise EquationError(f"expected '+' or '-' between terms at {_show(s, pos)}")
        if pos < len(s) and s[pos] in "+-":  # "+ -0.5*u": a sign on the coefficient too
            sign *= -1.0 if s[pos] == "-" else 1.0
            pos += 1
        first = False
        coef = 1.0
        m = _NUMBER_RE.match(s, pos)
        if m is not None and m.end() > pos:
            coef = float(m.group(0))
            pos = m.end()
            if pos < len(s) and s[pos] == "*":
                pos += 1
            elif pos >= len(s) or s[pos] in "+-":
                raise EquationError(f"the number {m.group(0)} has no term (there is no constant term)")
        paren = pos < len(s) and s[pos] == "("  # no term starts with '(': it wraps one
        if paren:
            pos += 1
        t = _match_term(s, pos)
        if t is None:
            raise EquationError(f"expected a library term at {_show(s, pos)}; the terms are: "
                                + ", ".join(TERM_NAMES))
        name, pos = t
        if paren:
            if pos >= len(s) or s[pos] != ")":
                raise EquationError(f"missing ')' after {name} at {_show(s, pos)}")
            pos += 1
        if not np.isfinite(coef):
            raise EquationError("coefficients must be finite numbers")
        out[name] = out.get(name, 0.0) + sign * coef
    return canonical(out)


def _show(s: str, pos: int) -> str:
    rest = s[pos:pos + 20]
    return f"'{rest}'" if rest else "the end"


def parse_term_list(text: str, max_terms: int) -> list[str]:
    """A comma-separated list of distinct library terms (at most ``max_terms``)."""
    if not isinstance(text, str) or len(text) > MAX_EQUATION_CHARS:
        raise EquationError(f"the term list is longer than {MAX_EQUATION_CHARS} characters")
    items = text.split(",")
    if not text.strip() or any(not x.strip() for x in items):
        raise EquationError("list the terms separated by commas, e.g. 'u, u^3, sin(u)'")
    if len(items) > max_terms:
        raise EquationError(f"at most {max_terms} terms per regression, got {len(items)}")
    names = [parse_term(x) for x in items]
    if len(set(names)) != len(names):
        raise EquationError("a term is listed twice")
    return names


def equation_support(eq: Mapping[str, float]) -> tuple[str, ...]:
    """The equation's terms in library order."""
    return tuple(sorted((n for n, c in eq.items() if c != 0.0), key=_ORDER.__getitem__))


def order_terms(names: Iterable[str]) -> tuple[str, ...]:
    """Term names sorted into library order."""
    return tuple(sorted(names, key=_ORDER.__getitem__))


#: Templates: which terms f(u) has and the sign of each (magnitudes are drawn per world).
#: Training worlds: 1-2 terms, classic reaction laws (decay, Allen-Cahn, Fisher, ...).
TRAIN_TEMPLATES: tuple[tuple[tuple[str, int], ...], ...] = (
    (("u", -1),),
    (("u^3", -1),),
    (("sin(u)", -1),),
    (("tanh(u)", -1),),
    (("sin(2u)", -1),),
    (("u/(1+u+u^2)", -1),),
    (("u", 1), ("u^3", -1)),
    (("u", 1), ("u^2", -1)),
    (("u", 1), ("u^5", -1)),
    (("u", -1), ("u^2", 1)),
    (("sin(u)", 1), ("u^3", -1)),
    (("u", 1), ("exp(u)-1", -1)),
    (("tanh(u)", 1), ("u^3", -1)),
    (("u", -1), ("log(1+u^2)", 1)),
    (("u/(1+u^2)", 1), ("u^3", -1)),
    (("u^2/(1+u^2)", 1), ("u", -1)),
)
#: Hard worlds: 1-3 terms, templates not used in training (more confusable terms, higher powers).
HARD_TEMPLATES: tuple[tuple[tuple[str, int], ...], ...] = (
    (("u^5", -1),),
    (("exp(u)-1", -1),),
    (("u/(1+u^2)", -1),),
    (("u", 1), ("u^7", -1)),
    (("sin(2u)", 1), ("u^3", -1)),
    (("tanh(u)", -1), ("u^2", 1)),
    (("u", -1), ("u^4/(1+u^4)", 1)),
    (("u/(1+u+u^2)", 1), ("u^3", -1)),
    (("u", 1), ("u^2", 1), ("u^3", -1)),
    (("u", 1), ("u^2", -1), ("u^5", -1)),
    (("sin(u)", 1), ("u^2", 1), ("u^3", -1)),
    (("tanh(u)", 1), ("log(1+u^2)", 1), ("u^3", -1)),
    (("u", -1), ("u^2/(1+u^2)", 1), ("u^4", -1)),
    (("exp(u)-1", 1), ("u^2", -1), ("u^3", -1)),
)
