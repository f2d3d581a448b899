"""Checks of the host's state shared by the sandbox test files (not a test module)."""

from __future__ import annotations

from pathlib import Path


def pids_with(token: str) -> list[int]:
    """PIDs of the live processes whose command line contains ``token``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if token.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found
