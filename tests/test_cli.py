"""Bad input on the command line: one-line error naming the problem and the allowed values."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "codrl.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    for n in needles:
        assert n in errors[0], errors[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["eval", "--env", "nope"], ["--env", "'nope'", "frozenlake", "secret_table"]),
        (["eval", "--split", "dev"], ["--split", "'train'", "'test'"]),
        (["eval", "--pack-size", "0"], ["--pack-size", ">= 1"]),
        (["eval", "--repeats", "0"], ["--repeats", ">= 1"]),
        (["eval", "--ralph", "sometimes"], ["--ralph", "'first'", "'expand'"]),
        (["eval", "--model", "./no/such/model"], ["model path not found", "embedded"]),
    ],
)
def test_eval_bad_options(args: list[str], needles: list[str]) -> None:
    assert_one_line_error(run_cli(*args), *needles)


def test_eval_unreachable_endpoint() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    assert_one_line_error(run_cli("eval", "--endpoint", url), "cannot reach", url)


CONFIGS = {
    "unknown_key": ("envs: [{name: frozenlake}]\nbogus: 1\n", ["bogus", "unknown key", "packs_per_step"]),
    "nested_unknown_key": ("envs: [{name: frozenlake}]\nrollout: {knob: 1}\n", ["rollout.knob", "pack_size"]),
    "wrong_type": ("envs: [{name: frozenlake}]\nsteps: many\n", ["steps", "integer"]),
    "negative_lr": ("envs: [{name: frozenlake}]\noptim: {lr: -0.1}\n", ["optim.lr", "greater than 0"]),
    "pack_size_0": ("envs: [{name: frozenlake}]\nrollout: {pack_size: 0}\n", ["rollout.pack_size", "greater than or equal to 1"]),
    "missing_env": ("steps: 2\n", ["envs", "missing"]),
    "unknown_env": ("envs: [{name: chess}]\n", ["envs.0.name", "frozenlake"]),
    "bad_choice": ("envs: [{name: frozenlake}]\nadvantage: {estimator: ppo}\n", ["advantage.estimator", "'cod'", "'grpo'"]),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_train_bad_config(name: str, tmp_path: Path) -> None:
    text, needles = CONFIGS[name]
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    proc = run_cli("train", "--config", str(cfg), timeout=30)
    assert_one_line_error(proc, *needles)
    # validated before any model loads: nothing was written
    assert not (tmp_path / "runs").exists()


def test_train_missing_config_file(tmp_path: Path) -> None:
    assert_one_line_error(run_cli("train", "--config", str(tmp_path / "nope.yaml")), "not found")


def test_envs_lists_environments() -> None:
    proc = run_cli("envs")
    assert proc.returncode == 0
    assert "frozenlake" in proc.stdout and "secret_table" in proc.stdout


def test_help_teaches() -> None:
    proc = run_cli("eval", "--help")
    assert proc.returncode == 0
    assert "--pack-size" in proc.stdout and "--baseline" in proc.stdout


@pytest.mark.slow
def test_eval_end_to_end_with_embedded_model(tmp_path: Path) -> None:
    """`codrl eval` on the real embedded model: table printed, every report file written."""
    cfg = tmp_path / "eval.yaml"
    cfg.write_text(
        "env: frozenlake\n"
        "env_params: {min_size: 4, max_size: 4, max_env_steps: 2, max_agent_steps: 2}\n"
        "packs: 1\n"
        "baseline: true\n"
        "rollout: {pack_size: 2, repeats: 1, max_new_tokens_solve: 8, max_new_tokens_update: 24,\n"
        "          hint_length_start: 16, hint_length_end: 24}\n"
    )
    out = tmp_path / "out"
    proc = run_cli("eval", "--config", str(cfg), "--out", str(out), timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "position" in proc.stdout.lower()
    import json

    results = json.loads((out / "results.json").read_text())
    modes = results["summary"]["modes"]
    assert "cod" in modes and "nohint" in modes
    assert len((out / "trajectories.jsonl").read_text().splitlines()) == 2
    assert (out / "episodes.csv").read_text().count("\n") == 1 + 2 * 2
    assert (out / "reward_by_position.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(("value", "needles"), [
    ("cod,sometimes", ["--contexts", "'sometimes'", "'cod'", "'nohint'", "'curator'"]),
    ("cod,", ["--contexts", "''", "'curator'"]),
])
def test_eval_bad_contexts(value: str, needles: list[str]) -> None:
    assert_one_line_error(run_cli("eval", "--contexts", value), *needles)


def test_eval_help_names_contexts() -> None:
    proc = run_cli("eval", "--help")
    assert proc.returncode == 0 and "--contexts" in proc.stdout and "curator" in proc.stdout


def test_parse_contexts_option() -> None:
    from codrl.cli import _parse_contexts

    assert _parse_contexts(None) == []
    assert _parse_contexts(" cod , curator,cod") == ["cod", "curator"]
