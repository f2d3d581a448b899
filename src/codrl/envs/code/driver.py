"""The test driver run in the sandbox, and the host side that runs it and reads its result lines.

Security design: the sandbox gets ``house.py``, ``solution.py`` (the submitted code), ``calls.json``
(the function name, the inputs of each call and the helpers to spy on; never an expected outcome)
and ``driver.py`` (:data:`DRIVER_SOURCE`). The driver, run as ``python -I -S driver.py``:

1. moves the program's own stdout onto stderr and keeps the original stdout as a private result
   channel, so nothing the submission prints can pass for a result line by accident;
2. imports ``house`` (any module text the caller supplies; ``HouseError`` and ``MISSING`` are
   optional) and wraps the helpers that must be used in counting spies *before* importing
   the submission (so ``from house import read`` gets the spy too);
3. imports ``solution`` under an alarm, then runs each call under a per-call alarm
   (:class:`CallTimeout` derives from ``BaseException`` so ``except Exception`` does not swallow it);
4. prints one line per call, :data:`RESULT_MARK` + JSON: the returned value encoded to a tagged,
   JSON-safe form (or the raised exception's type name and message) and the spy counts.

The host (:func:`run_driver`) parses those lines and compares the values with the expected
outcomes it computed itself. A submission that deliberately inspects the driver can write forged
lines to the result channel or reset the spy counts: the spy checks are advisory, but a forged
*value* still has to equal the hidden expected outcome, which never enters the sandbox. Two lines
for one call (a forged line and the real one) void the whole run.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from codrl.sandbox import SandboxResult, python, run_sandboxed

#: Prefix of the driver's result lines on its result channel (the sandbox's stdout).
RESULT_MARK = "@@codrl-result@@ "

#: The driver program (stdlib only), written to ``driver.py`` in the sandbox.
DRIVER_SOURCE = r'''"""Runs the submitted function on the calls of calls.json and prints one result line per call."""
import json
import os
import signal
import sys
import traceback

MARK = "@@codrl-result@@ "
MAX_ITEMS = 2000


class CallTimeout(BaseException):
    """Raised by the alarm when a call runs past its time."""


def _alarm(signum, frame):
    raise CallTimeout()


def _text(e):
    try:
        s = str(e)
    except BaseException:
        s = "<unprintable message>"
    return s[:300]


def _encode(v, missing, budget, depth=0):
    budget[0] -= 1
    t = type(v)
    if budget[0] < 0 or depth > 20:
        return {"t": "other", "type": t.__name__[:60], "repr": "<too large to show>"}
    if v is None:
        return {"t": "none"}
    if missing is not None and v is missing:
        return {"t": "missing"}
    if t is bool:
        return {"t": "bool", "v": v}
    if t is int:
        if -10 ** 18 < v < 10 ** 18:
            return {"t": "int", "v": v}
        return {"t": "other", "type": "int", "repr": "<a very large int>"}
    if t is float:
        return {"t": "float", "v": repr(v)}
    if t is str:
        if len(v) > 2000:
            return {"t": "other", "type": "str", "repr": repr(v[:60]) + "..."}
        return {"t": "str", "v": v}
    if t is list or t is tuple:
        return {"t": t.__name__, "v": [_encode(x, missing, budget, depth + 1) for x in v[:MAX_ITEMS]]}
    if t is dict:
        return {"t": "dict", "v": [[_encode(k, missing, budget, depth + 1), _encode(x, missing, budget, depth + 1)]
                                   for k, x in list(v.items())[:MAX_ITEMS]]}
    try:
        r = repr(v)[:200]
    except BaseException:
        r = "<unprintable>"
    return {"t": "other", "type": t.__name__[:60], "repr": r}


def main():
    with open("calls.json", encoding="utf-8") as f:
        spec = json.load(f)
    channel = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def emit(rec):
        channel.write(MARK + json.dumps(rec, ensure_ascii=True) + "\n")
        channel.flush()

    sys.path.insert(0, os.getcwd())
    import house

    counts = {}

    def spy(owner, attr, label):
        original = getattr(owner, attr)

        def counted(*args, **kwargs):
            counts[label] = counts.get(label, 0) + 1
            return original(*args, **kwargs)

        counted.__name__ = getattr(original, "__name__", attr)
        counted.__doc__ = getattr(original, "__doc__", None)
        setattr(owner, attr, counted)

    for path, attr, label in spec["spies"]:
        owner = house
        for part in path.split(".")[1:]:
            owner = getattr(owner, part)
        spy(owner, attr, label)
    house_error = getattr(house, "HouseError", None)
    if not isinstance(house_error, type) or not issubclass(house_error, BaseException):
        house_error = ()
    missing = getattr(house, "MISSING", None)
    main_pid = os.getpid()
    signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, spec["import_s"])
    try:
        import solution
        signal.setitimer(signal.ITIMER_REAL, 0)
        if os.getpid() != main_pid:
            os._exit(0)
    except BaseException as e:
        signal.setitimer(signal.ITIMER_REAL, 0)
        if os.getpid() != main_pid:
            os._exit(0)
        if isinstance(e, CallTimeout):
            emit({"stage": "import", "error": "timeout", "message": f"importing solution.py took over {spec['import_s']}s"})
        else:
            traceback.print_exc(limit=-3)
            emit({"stage": "import", "error": type(e).__name__[:60], "message": _text(e)})
        return
    fn = getattr(solution, spec["function"], None)
    if not callable(fn):
        emit({"stage": "function", "error": "missing", "message": f"solution.py defines no function {spec['function']}"})
        return
    for i, args in enumerate(spec["calls"]):
        counts.clear()
        rec = {"i": i}
        signal.setitimer(signal.ITIMER_REAL, spec["call_s"])
        try:
            value = fn(*args)
            rec["value"] = _encode(value, missing, [5000])
            signal.setitimer(signal.ITIMER_REAL, 0)
        except CallTimeout:
            signal.setitimer(signal.ITIMER_REAL, 0)
            rec["error"], rec["message"] = "timeout", f"the call ran longer than {spec['call_s']}s"
        except BaseException as e:
            signal.setitimer(signal.ITIMER_REAL, 0)
            rec["error"], rec["message"] = type(e).__name__[:60], _text(e)
            rec["house_error"] = isinstance(e, house_error)
        if os.getpid() != main_pid:
            os._exit(0)
        rec["spy"] = dict(counts)
        emit(rec)


main()
'''


class _Missing:
    """The host's stand-in for ``house.MISSING`` in decoded values and expected outcomes."""

    _instance: _Missing | None = None

    def __new__(cls) -> _Missing:  # noqa: PYI034 - a singleton
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "house.MISSING"

    def __reduce__(self) -> str:
        return "MISSING"


#: The host's ``house.MISSING``.
MISSING = _Missing()


@dataclass(frozen=True)
class Opaque:
    """A returned value the driver could not encode (an object of another type, a huge value)."""

    type_name: str
    text: str

    def __repr__(self) -> str:
        return f"<{self.type_name} {self.text}>"


@dataclass(frozen=True)
class CallOutcome:
    """What one call did in the sandbox: a decoded ``value``, or ``error`` (exception type name,
    or ``"timeout"``) with its ``message``; ``house_error`` when the exception was a HouseError;
    ``spy`` counts the calls of each spied helper during the call."""

    value: Any = None
    error: str | None = None
    message: str = ""
    house_error: bool = False
    spy: dict[str, int] = field(default_factory=dict)


@dataclass
class DriverResults:
    """The driver's result lines, parsed: per-call outcomes, or why there are none.

    ``stage_error`` is set when the submission did not get to run its calls (``solution.py``
    failed to import, the function is missing); ``conflict`` when some call has two result lines
    (the run is void).
    """

    outcomes: dict[int, CallOutcome] = field(default_factory=dict)
    stage_error: str | None = None
    conflict: bool = False


def decode_value(obj: Any, depth: int = 0) -> Any:
    """The Python value of the driver's tagged encoding (unknown shapes become :class:`Opaque`)."""
    if not isinstance(obj, dict) or depth > 40:
        return Opaque("?", "<malformed result>")
    t, v = obj.get("t"), obj.get("v")
    try:
        if t == "none":
            return None
        if t == "missing":
            return MISSING
        if t == "bool" and isinstance(v, bool):
            return v
        if t == "int" and type(v) is int:
            return v
        if t == "float" and isinstance(v, str) and len(v) < 64:
            return float(v)
        if t == "str" and isinstance(v, str):
            return v
        if t in ("list", "tuple") and isinstance(v, list):
            items = [decode_value(x, depth + 1) for x in v]
            return items if t == "list" else tuple(items)
        if t == "dict" and isinstance(v, list):
            out: dict[Any, Any] = {}
            for pair in v:
                key = decode_value(pair[0], depth + 1)
                out[key if isinstance(key, (str, int, float, bool, type(None), tuple)) else repr(key)] = \
                    decode_value(pair[1], depth + 1)
            return out
        if t == "other":
            return Opaque(str(obj.get("type", "?"))[:60], str(obj.get("repr", ""))[:200])
    except (ValueError, TypeError, IndexError, KeyError):
        pass
    return Opaque("?", "<malformed result>")


def parse_driver_output(stdout: str, n_calls: int) -> DriverResults:
    """Read the result lines of :data:`DRIVER_SOURCE` out of the sandbox's stdout; never raises."""
    res = DriverResults()
    seen: set[int] = set()
    for line in stdout.splitlines():
        if not line.startswith(RESULT_MARK):
            continue
        try:
            rec = json.loads(line[len(RESULT_MARK):])
        except (ValueError, RecursionError):
            continue
        if not isinstance(rec, dict):
            continue
        if "stage" in rec:
            if res.stage_error is None:
                what = str(rec.get("error", "?"))[:60]
                msg = str(rec.get("message", ""))[:300]
                if rec.get("stage") == "function" or what == "timeout":
                    res.stage_error = msg
                else:
                    res.stage_error = f"solution.py failed to import: {what}: {msg}"
            else:
                res.conflict = True
            continue
        i = rec.get("i")
        if type(i) is not int or not 0 <= i < n_calls:
            continue
        if i in seen:
            res.conflict = True
            continue
        seen.add(i)
        spy = rec.get("spy")
        counts = {str(k)[:40]: v for k, v in spy.items() if type(v) is int} if isinstance(spy, dict) else {}
        if "error" in rec:
            res.outcomes[i] = CallOutcome(error=str(rec["error"])[:60], message=str(rec.get("message", ""))[:300],
                                          house_error=rec.get("house_error") is True, spy=counts)
        else:
            res.outcomes[i] = CallOutcome(value=decode_value(rec.get("value")), spy=counts)
    return res


@dataclass(frozen=True)
class Limits:
    """Sandbox limits of one test run."""

    timeout_s: float = 10.0
    cpu_s: int = 5
    memory_mb: int = 256
    max_procs: int = 16
    max_output_bytes: int = 200_000
    call_timeout_s: float = 1.0
    import_timeout_s: float = 2.0


def run_driver(house_src: str, code: str, function: str, calls: Sequence[Sequence[Any]],
               spies: Sequence[tuple[str, str, str]], limits: Limits | None = None) -> tuple[DriverResults, SandboxResult]:
    """Run ``function`` of ``code`` on each of ``calls`` in the sandbox; parse the result lines.

    ``spies`` are ``(object path, attribute, label)`` of house helpers to count (``("house",
    "read", "house.read")``). Only inputs go into the sandbox; comparing with expected outcomes
    is the caller's job (see :mod:`codrl.envs.code.report`).
    """
    limits = limits or Limits()
    payload = {"function": function, "calls": [list(c) for c in calls], "spies": [list(s) for s in spies],
               "call_s": limits.call_timeout_s, "import_s": limits.import_timeout_s}
    files = {"house.py": house_src, "solution.py": code, "calls.json": json.dumps(payload),
             "driver.py": DRIVER_SOURCE}
    # The system python3 (standard library only) where there is one: it runs in every layer,
    # the minimal root included, and sees none of this environment's packages.
    result = run_sandboxed(files, [python(), "-I", "-S", "driver.py"], timeout_s=limits.timeout_s,
                           cpu_s=limits.cpu_s, memory_mb=limits.memory_mb, max_procs=limits.max_procs,
                           max_output_bytes=limits.max_output_bytes)
    return parse_driver_output(result.stdout, len(calls)), result
