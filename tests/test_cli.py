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


def test_overrides_are_parsed_into_nested_fields() -> None:
    from codrl.config import merge, parse_overrides
    from codrl.errors import CodrlError

    got = parse_overrides(["rollout.repeats=8", "optim.lr=1e-5", "log.progress=false", "seed=3",
                           "rollout.mode=curator", "eval.envs=[{name: alchemy}]", "output_dir="])
    assert got == {"rollout": {"repeats": 8, "mode": "curator"}, "optim": {"lr": "1e-5"}, "log": {"progress": False},
                   "seed": 3, "eval": {"envs": [{"name": "alchemy"}]}, "output_dir": ""}
    assert merge({"rollout": {"repeats": 2, "pack_size": 4}, "steps": 1}, got)["rollout"] == {
        "repeats": 8, "pack_size": 4, "mode": "curator"}
    for bad in ("rollout", "=3", "rollout..repeats=1"):
        with pytest.raises(CodrlError, match="KEY=VALUE"):
            parse_overrides([bad])
    with pytest.raises(CodrlError, match="seed is not a group of fields"):
        parse_overrides(["seed=1", "seed.x=2"])


def test_train_overrides_are_validated_like_the_file(tmp_path: Path) -> None:
    cfg = tmp_path / "ok.yaml"
    cfg.write_text("envs: [{name: frozenlake}]\nrollout: {repeats: 2}\n")
    assert_one_line_error(run_cli("train", "-c", str(cfg), "rollout.repeatz=3", timeout=30),
                          "rollout.repeatz", "unknown key", "repeats")
    assert_one_line_error(run_cli("train", "-c", str(cfg), "optim.lr=-1", timeout=30), "optim.lr", "greater than 0")
    assert_one_line_error(run_cli("train", "-c", str(cfg), "rollout", timeout=30), "KEY=VALUE")
    assert not (tmp_path / "runs").exists()


def test_eval_typed_options_override_the_config_file(tmp_path: Path) -> None:
    """With --config, an option typed on the command line wins over the file (here it is checked,
    and refused, before any model loads); so does a dotted override."""
    cfg = tmp_path / "eval.yaml"
    cfg.write_text("env: frozenlake\npacks: 2\n")
    assert_one_line_error(run_cli("eval", "-c", str(cfg), "--packs", "0", timeout=30), "packs", "greater than")
    assert_one_line_error(run_cli("eval", "-c", str(cfg), "--env", "chess", timeout=30), "env", "frozenlake")
    assert_one_line_error(run_cli("eval", "-c", str(cfg), "rollout.repeats=0", timeout=30), "rollout.repeats")
    assert_one_line_error(run_cli("eval", "--env", "frozenlake", "rollout.nope=1", timeout=30), "rollout.nope",
                          "unknown key")


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
        "baseline: false\n"
        "rollout: {pack_size: 3, repeats: 1, max_new_tokens_solve: 8, max_new_tokens_update: 64,\n"
        "          hint_length_start: 16, hint_length_end: 24}\n"
    )
    out = tmp_path / "out"
    # typed options and dotted overrides take precedence over the file (K 3 -> 2, the baseline on)
    proc = run_cli("eval", "--config", str(cfg), "--out", str(out), "-k", "2", "--baseline",
                   "rollout.max_new_tokens_update=24", timeout=900)
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


def test_ralph_and_matrix_take_dotted_overrides(tmp_path: Path) -> None:
    """`codrl ralph --set KEY=VALUE` and `codrl matrix ... KEY=VALUE` are validated like a config file,
    before any model loads."""
    assert_one_line_error(run_cli("ralph", "examples/ralph_task", "--set", "rollout.nope=1", timeout=60),
                          "rollout.nope", "unknown key")
    assert_one_line_error(run_cli("ralph", "examples/ralph_task", "--set", "attempts=0", timeout=60),
                          "attempts", "greater than or equal to 1")
    assert_one_line_error(run_cli("matrix", "-m", "embedded", "-e", "frozenlake", "--output-dir", str(tmp_path / "m"),
                                  "rollout.temperature=-1", timeout=60), "rollout.temperature")
