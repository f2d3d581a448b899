"""A Chromium for opening pages headless: the viewer's browser test and ``scripts/view_screenshot.py``.

Writing a page needs no browser. The system's Chromium (``scripts/install.sh --browser``) is
used, or the executable ``CODRL_CHROMIUM`` names; a test tool's own browser download is not.
"""

from __future__ import annotations

import os
import shutil

#: Command-line switches for a headless Chromium run as root on a machine without network: no
#: sandbox, no GPU, and no background connections (which a closed network refuses, noisily).
HEADLESS_ARGS: tuple[str, ...] = ("--no-sandbox", "--disable-gpu", "--disable-background-networking",
                                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic")

#: Executable names searched on ``PATH``, in order.
CHROMIUM_NAMES: tuple[str, ...] = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """``CODRL_CHROMIUM`` when set, else the first of :data:`CHROMIUM_NAMES` on ``PATH``, else None."""
    if os.environ.get("CODRL_CHROMIUM"):
        return os.environ["CODRL_CHROMIUM"]
    for name in CHROMIUM_NAMES:
        if found := shutil.which(name):
            return found
    return None
