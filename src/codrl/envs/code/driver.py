"""The test driver run in the sandbox, and the host side that runs it and reads its result lines.

Security design. The sandbox gets ``house.py``, ``solution.py`` (the submitted code), ``calls.json``
(the function name, the inputs of each call and the helpers to count; never an expected outcome),
``driver.py`` (:data:`DRIVER_SOURCE`) and ``runner.py`` (:data:`RUNNER_SOURCE`). Two processes run:

* **The driver** (``python -I -S driver.py``) runs no submitted code. It reads ``calls.json`` and
  the runner's source before any submitted code exists as a process, makes itself non-dumpable
  (so a process of the same uid can neither open its file descriptors through ``/proc`` nor read
  or write its memory), and keeps its stdout, the **result channel**, to itself. For each call it
  writes exactly one result line, :data:`RESULT_MARK` + JSON, whatever the program does.
* **The runner**, a child started with the source held in the driver's memory (``python -I -S -c``),
  imports ``house`` and ``solution`` and answers one call at a time over its own pipes. It holds
  no handle on the result channel. What it answers for a call is taken as what the submitted
  function returned (a value, or an exception's type name and message): anything it could write
  there, an honest function could return.

Time limits are the driver's, out of the submitted code's reach: importing ``solution.py`` must
end within ``import_s`` and each call within ``call_s`` of the driver sending it, or the driver
kills the runner's process group, records a timeout and starts a fresh runner for the next call.
A runner that dies during a call (an exit, a signal, a resource limit) is recorded for that call
in the same way. The whole run's wall clock is the host's (:func:`codrl.sandbox.run_sandboxed`).

Helper-usage counts (how often a house helper the conventions ask for was called) are taken in the
runner, where the submitted code could change them, so they are advisory: reported, never scored
(:func:`codrl.envs.code.report.grade`). The host (:func:`run_driver`) parses the result lines and
compares the values with the expected outcomes it computed itself, which never enter the sandbox.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from codrl.sandbox import SandboxResult, python, run_sandboxed

#: Prefix of the driver's result lines on its result channel (the sandbox's stdout).
RESULT_MARK = "@@codrl-result@@ "

#: The grading driver (stdlib only), written to ``driver.py``: it starts the runner and writes the results.
DRIVER_SOURCE = r'''"""Starts the runner for the calls of calls.json and writes exactly one result line per call.

Runs no submitted code: the runner (a child process) imports solution.py and answers each call.
"""
import json
import os
import selectors
import signal
import subprocess
import sys
import time

MARK = "@@codrl-result@@ "
MAX_LINE = 4 * 1024 * 1024
ENDS = {signal.SIGXCPU: "hit its CPU time limit (SIGXCPU)", signal.SIGXFSZ: "hit the file size limit (SIGXFSZ)",
        signal.SIGKILL: "was killed (SIGKILL: a limit, or the program itself)",
        signal.SIGSEGV: "crashed with SIGSEGV (possibly the memory limit)"}


def undumpable():
    """No process of this uid may open this one's fds through /proc, or read or write its memory."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE, 0
    except Exception:
        pass


def ended(code):
    """How the runner ended, in words (signals by name where they have one, else by number)."""
    if code is None:
        return "the program stopped answering"
    if code < 0:
        try:
            sig = signal.Signals(-code)
        except ValueError:
            return f"the program was terminated by signal {-code}"
        return "the program " + ENDS.get(sig, f"was terminated by signal {sig.name}")
    return f"the program exited with status {code}"


class Runner:
    """One runner process: requests on its stdin, one JSON answer line per request on its stdout."""

    def __init__(self, source):
        self.proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", source, "runner.py"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=None, close_fds=True, start_new_session=True)
        os.set_blocking(self.proc.stdout.fileno(), False)
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.proc.stdout.fileno(), selectors.EVENT_READ)
        self.buf = bytearray()

    def ask(self, request, seconds, accept):
        """Send ``request``; the first answer ``accept`` takes within ``seconds``, or why there is none."""
        self.buf.clear()  # anything written before the request is not an answer to it
        try:
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
            self.proc.stdin.flush()
        except OSError:
            pass
        deadline = time.monotonic() + seconds
        while True:
            while b"\n" in self.buf:
                line, _, rest = bytes(self.buf).partition(b"\n")
                self.buf[:] = rest
                try:
                    rec = json.loads(line)
                except (ValueError, RecursionError):
                    continue
                if isinstance(rec, dict) and accept(rec):
                    return rec, None
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                return None, "timeout"
            if not self.sel.select(min(left, 0.5)):
                continue
            try:
                chunk = os.read(self.proc.stdout.fileno(), 65536)
            except BlockingIOError:
                continue
            except OSError:
                chunk = b""
            if not chunk:
                self.kill()
                return None, "exit"
            self.buf += chunk
            if len(self.buf) > MAX_LINE:
                self.kill()
                return None, "large"

    def kill(self):
        """SIGKILL the runner's process group and reap it; returns its status."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except OSError:
            pass
        self.sel.close()
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        return self.proc.wait()


def main():
    undumpable()
    with open("calls.json", encoding="utf-8") as f:
        spec = json.load(f)
    with open("runner.py", encoding="utf-8") as f:
        source = f.read()
    channel = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def emit(rec):
        try:
            line = json.dumps(rec, ensure_ascii=True)
        except (ValueError, TypeError, RecursionError):
            line = json.dumps({k: rec[k] for k in ("i", "stage") if k in rec} | {"error": "unreadable",
                              "message": "the program's answer could not be read"})
        channel.write(MARK + line + "\n")
        channel.flush()

    setup = {"function": spec["function"], "spies": spec["spies"]}
    runner = None

    def start():
        """A runner that has imported solution.py and found the function, or None (the stage line sent)."""
        try:
            r = Runner(source)
        except OSError as e:
            emit({"stage": "import", "error": "start", "message": f"the program could not be started: {e}"})
            return None
        rec, why = r.ask(setup, spec["import_s"], lambda x: "ready" in x or "stage" in x)
        if rec is not None and rec.get("ready") is True:
            return r
        if rec is not None:
            emit({"stage": "function" if rec.get("stage") == "function" else "import",
                  "error": str(rec.get("error", "?"))[:60], "message": str(rec.get("message", ""))[:300]})
        elif why == "timeout":
            emit({"stage": "import", "error": "timeout", "message": f"importing solution.py took over {spec['import_s']}s"})
        else:
            emit({"stage": "import", "error": "exit", "message": ended(r.kill()) + " while importing solution.py"})
        r.kill()
        return None

    for i, args in enumerate(spec["calls"]):
        if runner is None:
            runner = start()
            if runner is None:
                return
        rec, why = runner.ask({"i": i, "args": args}, spec["call_s"], lambda x, i=i: type(x.get("i")) is int and x["i"] == i)
        out = {"i": i}
        if rec is None:
            code = runner.kill()
            runner = None
            if why == "timeout":
                out["error"], out["message"] = "timeout", f"the call ran longer than {spec['call_s']}s"
            elif why == "large":
                out["error"], out["message"] = "exit", "the program's answer was too large"
            else:
                out["error"], out["message"] = "exit", ended(code) + " during the call"
        else:
            for key in ("value", "error", "message", "house_error", "spy"):
                if key in rec:
                    out[key] = rec[key]
        emit(out)
    if runner is not None:
        runner.kill()


main()
'''

#: The runner (stdlib only), written to ``runner.py`` and started by the driver: runs the submitted code.
RUNNER_SOURCE = r'''"""Imports solution.py and answers the driver's calls, one JSON line per call."""
import json
import os
import sys
import traceback

MAX_ITEMS = 2000


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
    requests = sys.stdin
    answers = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    main_pid = os.getpid()

    def answer(rec):
        if os.getpid() != main_pid:  # a fork of the submitted code returned here: it does not answer
            os._exit(0)
        answers.write(json.dumps(rec, ensure_ascii=True) + "\n")
        answers.flush()

    setup = json.loads(requests.readline())
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

    for path, attr, label in setup["spies"]:
        owner = house
        for part in path.split(".")[1:]:
            owner = getattr(owner, part)
        spy(owner, attr, label)
    house_error = getattr(house, "HouseError", None)
    if not isinstance(house_error, type) or not issubclass(house_error, BaseException):
        house_error = ()
    missing = getattr(house, "MISSING", None)
    try:
        import solution
    except BaseException as e:
        traceback.print_exc(limit=-3)
        answer({"stage": "import", "error": type(e).__name__[:60], "message": _text(e)})
        return
    fn = getattr(solution, setup["function"], None)
    if not callable(fn):
        answer({"stage": "function", "error": "missing", "message": f"solution.py defines no function {setup['function']}"})
        return
    answer({"ready": True})
    for line in requests:
        req = json.loads(line)
        counts.clear()
        rec = {"i": req["i"]}
        try:
            value = fn(*req["args"])
            rec["value"] = _encode(value, missing, [5000])
        except BaseException as e:
            rec["error"], rec["message"] = type(e).__name__[:60], _text(e)
            rec["house_error"] = isinstance(e, house_error)
        rec["spy"] = dict(counts)
        answer(rec)


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
                if rec.get("stage") == "function" or what in ("timeout", "exit", "start"):
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
             "driver.py": DRIVER_SOURCE, "runner.py": RUNNER_SOURCE}
    # The system python3 (standard library only) where there is one: it runs in every layer,
    # the minimal root included, and sees none of this environment's packages.
    result = run_sandboxed(files, [python(), "-I", "-S", "driver.py"], timeout_s=limits.timeout_s,
                           cpu_s=limits.cpu_s, memory_mb=limits.memory_mb, max_procs=limits.max_procs,
                           max_output_bytes=limits.max_output_bytes)
    return parse_driver_output(result.stdout, len(calls)), result
