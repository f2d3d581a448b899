"""Keep freed activations from staying resident during a training update (glibc heap retention).

On CPU, torch allocates tensors with ``malloc``. glibc serves blocks above a threshold with
``mmap`` and returns them to the OS on ``free``, but it *raises* that threshold (up to 32 MiB)
every time such a block is freed. After the first few large frees, every activation of a training
micro-batch (a few MiB each) comes from the heap instead, and the heap keeps the pages of freed
activations and temporaries: on the quickstart the resident size after one forward pass stood
about 1 GiB above the live tensors.

:func:`large_frees_to_os` fixes the threshold low for the duration of the update, so every
large tensor goes back to the OS when it is freed. Outside it the threshold is set high (glibc's
own upper bound), as the dynamic rule would have grown it: generation makes many short-lived
multi-MiB allocations, and serving each with a fresh ``mmap`` slowed sampling by about 20%.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_M_MMAP_THRESHOLD = -3  # mallopt parameter number, from glibc's <malloc.h>

#: Inside :func:`large_frees_to_os`: allocations of at least this size are served by mmap
#: (glibc's initial default).
LOW_MMAP_THRESHOLD = 128 * 1024
#: Outside it: glibc's upper bound for its dynamic threshold (on 64-bit).
HIGH_MMAP_THRESHOLD = 32 * 1024 * 1024


def _libc() -> Any | None:
    """glibc, or None where it (or its mallopt/malloc_trim) is not available."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
    except (OSError, AttributeError):  # musl and others have no mallopt/malloc_trim
        return None
    return libc


_LIBC = _libc()


def set_mmap_threshold(nbytes: int) -> bool:
    """Serve allocations of at least ``nbytes`` with mmap (process-wide); False if unsupported."""
    return _LIBC is not None and bool(_LIBC.mallopt(_M_MMAP_THRESHOLD, nbytes))


def trim_heap() -> bool:
    """Return the heap's free pages to the OS (``malloc_trim(0)``); False if unsupported."""
    return _LIBC is not None and bool(_LIBC.malloc_trim(0))


@contextmanager
def large_frees_to_os() -> Iterator[bool]:
    """Within the block, freed tensors of >= 128 KiB leave the resident set at once.

    Trims the heap on entry (memory freed by the rollout) and on exit. Yields whether the
    allocator could be tuned (False, and a no-op, off glibc). Not thread-safe: process-wide.
    """
    tuned = set_mmap_threshold(LOW_MMAP_THRESHOLD)
    trim_heap()
    try:
        yield tuned
    finally:
        if tuned:
            set_mmap_threshold(HIGH_MMAP_THRESHOLD)
            trim_heap()
