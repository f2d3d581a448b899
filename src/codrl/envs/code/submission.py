"""Reading a code submission out of a model reply.

A submission is one fenced code block inside the single ``<answer>...</answer>`` pair::

    <answer>
    ```python
    def total(xs):
        return sum(xs)
    ```
    </answer>

The language tag after the opening fence is optional; a missing closing fence is tolerated (the
block then runs to ``</answer>``), and so is a missing ``</answer>`` after a closed block: the
environments stop generation at the closing fence (:data:`STOP_STRINGS`), so a reply that ends
there is complete. Everything else is a malformed submission: :func:`extract_code` returns
a one-line reason that the environments show the model as feedback. The code is only ever written
to a file and run in the sandbox; it is never evaluated in the host process.
"""

from __future__ import annotations

import re
from itertools import islice

from codrl.envs.base import _CLOSE_TAG_RE, _OPEN_TAG_RE, answer_span

#: Longest accepted submission (characters of code).
MAX_CODE_CHARS = 20_000
#: Where a code reply stops: the closing tag, or the closing fence of the (prefilled) code block.
STOP_STRINGS = ("</answer>", "\n```")
#: What a well-formed submission looks like, for feedback lines.
FORMAT_HINT = "Submit your code as <answer>```python ... ```</answer>: one fenced code block inside the answer tag."

_FENCE_RE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\n", re.ASCII)


def _fenced_without_close(reply: object) -> tuple[int, int] | None:
    """The span after a single ``<answer>`` that is never closed, for a reply that stopped right at
    its closing fence (the environments' stop string); None when that is not the case."""
    if not isinstance(reply, str):
        return None
    opens = [m.end() for m in islice(_OPEN_TAG_RE.finditer(reply), 2)]
    if len(opens) != 1 or _CLOSE_TAG_RE.search(reply) is not None:
        return None
    return opens[0], len(reply)


class CodeSubmission(str):
    """The code of a submission (a ``str``); distinct from a reason string by its type."""


def extract_code(reply: object, max_chars: int = MAX_CODE_CHARS) -> CodeSubmission | str:
    """The submitted code, or a one-line reason why ``reply`` holds no valid submission.

    Returns a :class:`CodeSubmission` on success (test with ``isinstance``) and a plain ``str``
    reason otherwise. Linear time on any input; never raises.
    """
    span = answer_span(reply)
    closed_by_fence = False
    if isinstance(span, str):
        span = _fenced_without_close(reply)
        if span is None:
            return f"{answer_span(reply)}. {FORMAT_HINT}"
        closed_by_fence = True
    assert isinstance(reply, str)
    body = reply[span[0]:span[1]]
    fence = _FENCE_RE.search(body)
    if fence is None:
        return f"no ```python fenced code block inside the answer. {FORMAT_HINT}"
    rest = body[fence.end():]
    close = rest.find("```")
    if close < 0 and closed_by_fence:
        return f"no </answer> pair found and the code block is not closed. {FORMAT_HINT}"
    code = rest if close < 0 else rest[:close]
    if close >= 0 and "```" in rest[close + 3:]:
        return f"more than one fenced code block in the answer. {FORMAT_HINT}"
    if not code.strip():
        return f"the code block is empty. {FORMAT_HINT}"
    if len(code) > max_chars:
        return f"the code is too long (at most {max_chars} characters)."
    if "\x00" in code:
        return "the code contains a NUL character."
    return CodeSubmission(code.rstrip() + "\n")
