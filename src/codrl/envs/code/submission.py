"""Reading a code submission out of a model reply.

A submission is one fenced code block inside the single ``<answer>...</answer>`` pair::

    <answer>
    ```python
    def total(xs):
        return sum(xs)
    ```
    </answer>

The language tag after the opening fence is optional; a missing closing fence is tolerated (the
block then runs to ``</answer>``), because a reply prefilled with the opening fence often stops
right at the closing tag. Everything else is a malformed submission: :func:`extract_code` returns
a one-line reason that the environments show the model as feedback. The code is only ever written
to a file and run in the sandbox; it is never evaluated in the host process.
"""

from __future__ import annotations

import re

from codrl.envs.base import answer_span

#: Longest accepted submission (characters of code).
MAX_CODE_CHARS = 20_000
#: What a well-formed submission looks like, for feedback lines.
FORMAT_HINT = "Submit your code as <answer>```python ... ```</answer>: one fenced code block inside the answer tag."

_FENCE_RE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\n", re.ASCII)


class CodeSubmission(str):
    """The code of a submission (a ``str``); distinct from a reason string by its type."""


def extract_code(reply: object, max_chars: int = MAX_CODE_CHARS) -> CodeSubmission | str:
    """The submitted code, or a one-line reason why ``reply`` holds no valid submission.

    Returns a :class:`CodeSubmission` on success (test with ``isinstance``) and a plain ``str``
    reason otherwise. Linear time on any input; never raises.
    """
    span = answer_span(reply)
    if isinstance(span, str):
        return f"{span}. {FORMAT_HINT}"
    assert isinstance(reply, str)
    body = reply[span[0]:span[1]]
    fence = _FENCE_RE.search(body)
    if fence is None:
        return f"no ```python fenced code block inside the answer. {FORMAT_HINT}"
    rest = body[fence.end():]
    close = rest.find("```")
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
