"""User-facing errors.

A :class:`CodrlError` is a problem with the user's input (a config field, an env name, a path,
an endpoint). The CLI prints its message on one line and exits non-zero, without a traceback.
"""

from __future__ import annotations

from collections.abc import Iterable


class CodrlError(Exception):
    """A user-facing error whose message names the problem and, where known, the allowed values."""


def bad_choice(field: str, value: object, allowed: Iterable[object]) -> CodrlError:
    """Build the standard error for a value outside a closed set of choices."""
    allowed_s = ", ".join(repr(a) for a in allowed)
    return CodrlError(f"{field}: {value!r} is not allowed; allowed values: {allowed_s}")
