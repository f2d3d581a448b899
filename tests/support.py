"""Helpers shared by several test files (not a test module): loading a bench script as a module,
and serving a handler class on a free local port in a background thread."""

from __future__ import annotations

import importlib.util
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

BENCH_DIR = Path(__file__).resolve().parents[1] / "bench"


def load_bench(name: str) -> ModuleType:
    """``bench/<name>.py`` as a module (registered in ``sys.modules``: dataclasses look their
    module up while the file executes)."""
    spec = importlib.util.spec_from_file_location(name, BENCH_DIR / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@contextmanager
def serve_in_thread(handler: type[BaseHTTPRequestHandler], **attrs: Any) -> Iterator[Any]:
    """A ThreadingHTTPServer of ``handler`` on 127.0.0.1 (a free port: ``server_address[1]``), with
    ``attrs`` set on it for the handler to read, served until the block ends."""
    srv: Any = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    for key, value in attrs.items():
        setattr(srv, key, value)
    th = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    th.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
