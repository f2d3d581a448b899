"""Environments from outside the package: an import path, an entry point, and bad names.

The worked example ``examples/coin_env.py`` (with its scripted agents in
``examples/coin_agents.py``) is used exactly as a user's own file would be: ``examples/`` goes on
``sys.path`` (or ``PYTHONPATH`` for the command line) and the environment is named
``coin_env:CoinEnv``. It must pass the same checklist as a built-in environment.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from codrl.envs import CoDEnv, Pack, check_name, describe, env_names, make_env
from codrl.errors import CodrlError
from codrl.eval.checklist import levels, play_pack

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
NAME = "coin_env:CoinEnv"


@pytest.fixture(autouse=True)
def examples_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLES))


def cli(*args: str, extra_path: tuple[Path, ...] = (), timeout: float = 120, stdin: str = "",
        cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m codrl.cli ARGS`` with ``examples/`` (and ``extra_path``) on PYTHONPATH."""
    paths = [str(p) for p in (*extra_path, EXAMPLES)]
    if os.environ.get("PYTHONPATH"):
        paths.append(os.environ["PYTHONPATH"])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    return subprocess.run([sys.executable, "-m", "codrl.cli", *args], capture_output=True, text=True, check=False,
                          timeout=timeout, env=env, input=stdin, cwd=cwd)


def one_error_line(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    for n in needles:
        assert n in errors[0], errors[0]
    return errors[0]


# -- by import path -----------------------------------------------------------------------------


def test_example_by_import_path() -> None:
    assert check_name(NAME) == NAME
    env = make_env(NAME)
    assert isinstance(env, CoDEnv) and env.name == "coin"
    assert describe(NAME).startswith("Counterfeit coins")
    assert env.chance_reward == pytest.approx(0.375)
    assert make_env(NAME, coins=3, guesses=1).chance_reward == pytest.approx(1 / 3)
    with pytest.raises(CodrlError, match="unknown parameter.*bogus.*allowed parameters: name, marks, fakes, coins"):
        make_env(NAME, bogus=1)


def test_example_plays_through_the_lifecycle_prompts() -> None:
    env = make_env(NAME)
    pack = env.sample_pack("test", 0, 0, 3)
    ep = env.start(pack, pack.tasks[0])
    first = ep.reset()
    assert "coin 1:" in first and "<answer>coin N</answer>" in first
    fake = next(i for i, m in enumerate(pack.tasks[0].spec["row"], 1) if m in pack.world["fake_marks"])
    wrong = 1 if fake != 1 else 2
    step = ep.step(env.reply_prefix + f"{wrong}</answer>")
    assert not step.done and step.valid and "is genuine" in step.feedback and step.observation
    step = ep.step(f"I think <answer>coin {fake}</answer>")
    assert step.done and step.reward == 0.5 and f"The fake was coin {fake}" in step.feedback
    assert ep.step("<answer>coin 1</answer>").feedback == "The task is already over."


# -- the checklist every environment passes ------------------------------------------------------


def test_determinism_worlds_and_splits() -> None:
    env = make_env(NAME)
    assert env.sample_pack("test", 3, 5, 4) == env.sample_pack("test", 3, 5, 4)
    packs = [env.sample_pack("train", 0, i, 4) for i in range(30)]
    assert all(len(p) == 4 for p in packs)
    # the tasks of a pack share its world; packs differ
    for p in packs:
        assert all(sum(m in p.world["fake_marks"] for m in t.spec["row"]) == 1 for t in p.tasks)
    assert len({json.dumps(p.world) for p in packs}) > 10
    # the splits never share a task
    keys = {split: {env.task_key(p.world, t.spec) for i in range(30)
                    for p in [env.sample_pack(split, 0, i, 4)] for t in p.tasks} for split in ("train", "test")}
    assert keys["train"] and keys["test"] and not keys["train"] & keys["test"]


def test_checklist_levels() -> None:
    import coin_agents

    env = make_env(NAME)
    lv = levels(env, coin_agents.random_agent, coin_agents.oracle_agent, coin_agents.learner_agent,
                packs=50, pack_size=4)
    assert lv.oracle == 1.0
    assert abs(lv.chance - env.chance_reward) < 0.06
    assert lv.learner_last > lv.learner_first + 0.3
    assert lv.memoryless_last < lv.memoryless_first + 0.15
    # a lifecycle is what the runner plays: one pack, one fresh agent per task, hints as text
    pack = env.sample_pack("test", 0, 0, 3)
    assert play_pack(env, pack, coin_agents.oracle_agent, np.random.default_rng(0)) == [1.0, 1.0, 1.0]


@functools.lru_cache(maxsize=1)
def fuzz_target() -> tuple[CoDEnv, Pack]:
    """One environment and pack for every fuzzing example (building an environment scans entry points)."""
    env = make_env(NAME)
    return env, env.sample_pack("test", 0, 0, 1)


PIECES = ["<answer>", "</answer>", "<ANSWER>", "coin", "Coin", " ", "\n", "\t", "0", "1", "4", "5", "12", "x", "\u00e9"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=300) | st.lists(st.sampled_from(PIECES), max_size=12).map("".join))
def test_parser_fuzz_scores_failure(reply: str) -> None:
    """Any text: no exception, no hang; an unparseable reply is a scored failure that teaches the format."""
    import time

    import coin_env

    env, pack = fuzz_target()
    t0 = time.perf_counter()
    step = env.start(pack, pack.tasks[0]).step(reply)
    assert time.perf_counter() - t0 < 0.5
    guess = coin_env.parse(reply)
    if guess is None or not 1 <= guess <= env.coins:
        assert step.done and not step.valid and step.reward == 0.0 and "<answer>coin N</answer>" in step.feedback
    else:
        assert step.valid and step.info["guess"] == guess


def test_parser_is_linear_on_long_input() -> None:
    import time

    import coin_env

    t0 = time.perf_counter()
    for text in ("<answer>" * 50_000, "<answer>coin " + " " * 200_000, "x" * 500_000 + "</answer>"):
        assert coin_env.parse(text) is None
    assert time.perf_counter() - t0 < 2.0


# -- installed plug-ins: the entry-point group codrl.envs ---------------------------------------


def fake_distribution(root: Path) -> Path:
    """A folder holding an installed-looking distribution that registers ``my_coin``."""
    info = root / "my_plugin-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[codrl.envs]\nmy_coin = coin_env:CoinEnv\n")
    return root


def test_entry_point_registration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert "my_coin" not in env_names()
    monkeypatch.syspath_prepend(str(fake_distribution(tmp_path / "site")))
    assert "my_coin" in env_names() and "frozenlake" in env_names()
    env = make_env("my_coin", coins=5)
    assert type(env).__name__ == "CoinEnv" and env.coins == 5
    assert describe("my_coin").startswith("Counterfeit coins")


def test_entry_point_on_the_command_line(tmp_path: Path) -> None:
    site = fake_distribution(tmp_path / "site")
    proc = cli("envs", extra_path=(site,))
    assert proc.returncode == 0, proc.stderr
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("my_coin"))
    assert "Counterfeit coins" in line
    # and it plays: one task, solved on the first guess
    pack = make_env(NAME).sample_pack("test", 0, 0, 1)
    fake = next(i for i, m in enumerate(pack.tasks[0].spec["row"], 1) if m in pack.world["fake_marks"])
    proc = cli("play", "my_coin", "-k", "1", "--reveal", extra_path=(site,), stdin=f"{fake}\n.\n")
    assert proc.returncode == 0, proc.stderr
    assert "<answer>coin " in proc.stdout and "per-position rewards: 1" in proc.stdout
    assert json.loads(proc.stdout.split("(pack.world):", 1)[1]) == pack.world


# -- bad names and parameters: one `error:` line naming the problem and the allowed values --------

BAD_NAMES = {
    "unknown name": ("coin", ["'coin'", "frozenlake", "import path 'package.module:ClassName'"]),
    "unknown module": ("no_such_pkg.envs:CoinEnv", ["cannot import module 'no_such_pkg.envs'", "frozenlake"]),
    "missing attribute": ("coin_env:Coins", ["module 'coin_env' has no attribute 'Coins'"]),
    "not an environment class": ("coin_env:CoinEpisode", ["CoinEpisode", "is not a CoDEnv subclass"]),
    "not callable": ("coin_env:FORMAT", ["coin_env:FORMAT", "is not a CoDEnv subclass"]),
    "no attribute part": ("coin_env:", ["must look like 'package.module:ClassName'"]),
}


@pytest.mark.parametrize("case", sorted(BAD_NAMES))
def test_bad_env_name_eval(case: str) -> None:
    name, needles = BAD_NAMES[case]
    one_error_line(cli("eval", "--env", name, timeout=60), "--env", *needles)


@pytest.mark.parametrize("case", sorted(BAD_NAMES))
def test_bad_env_name_train_config(case: str, tmp_path: Path) -> None:
    name, needles = BAD_NAMES[case]
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(f"envs: [{{name: {json.dumps(name)}}}]\noutput_dir: {json.dumps(str(tmp_path / 'run'))}\n")
    one_error_line(cli("train", "--config", str(cfg), timeout=60), "envs.0.name", *needles)
    assert not (tmp_path / "run").exists()


BAD_PARAMS = {
    "unknown keyword": ("{bogus: 1}", ["unknown parameter(s) bogus",
                                       "allowed parameters: name, marks, fakes, coins, guesses"]),
    "value out of range": ("{coins: 1}", ["coins must be an integer from 2 to 9, got 1"]),
    "wrong type": ("{guesses: two}", ["guesses must be an integer", "'two'"]),
}


@pytest.mark.parametrize("case", sorted(BAD_PARAMS))
def test_bad_env_params_train_config(case: str, tmp_path: Path) -> None:
    params, needles = BAD_PARAMS[case]
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(f"envs: [{{name: {json.dumps(NAME)}, params: {params}}}]\n"
                   f"output_dir: {json.dumps(str(tmp_path / 'run'))}\n")
    one_error_line(cli("train", "--config", str(cfg), timeout=60), f"env '{NAME}'", *needles)
    assert not (tmp_path / "run").exists()  # before any model loads or any file is written


# -- train and evaluate a user's environment with the real embedded model -------------------------


@pytest.mark.slow
def test_train_and_eval_user_env_with_embedded_model(tmp_path: Path) -> None:
    from codrl.backends.embedded import gguf_path

    try:
        gguf_path()
    except CodrlError as e:
        pytest.skip(f"embedded model unavailable: {e}")
    run = tmp_path / "run"
    cfg = tmp_path / "coin.yaml"
    cfg.write_text(
        f"envs: [{{name: {json.dumps(NAME)}, params: {{guesses: 1}}}}]\n"
        "rollout: {pack_size: 2, repeats: 2, max_new_tokens_solve: 6, max_new_tokens_update: 16,\n"
        "          hint_length_start: 8, hint_length_end: 16}\n"
        "model: {path: embedded, lora: {r: 4, alpha: 8}}\n"
        "steps: 1\npacks_per_step: 1\nmicro_batch_tokens: 2048\n"
        "eval: {at_start: false, at_end: true, packs: 1, repeats: 1}\n"
        "log: {backends: [], progress: false}\n"
        f"output_dir: {json.dumps(str(run))}\n"
    )
    proc = cli("train", "--config", str(cfg), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    history = json.loads((run / "history.json").read_text())
    assert len(history) == 1 and "reward/pos1" in history[0]
    assert (run / "checkpoints" / "step-000001" / "model" / "adapter_config.json").is_file()
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-000001"
    assert json.loads((run / "eval" / "step-000001" / "results.json").read_text())["summary"]["modes"]
    assert (run / "config.yaml").read_text().count(NAME) == 1

    out = tmp_path / "eval"
    model = run / "checkpoints" / "step-000001" / "model"  # the trained LoRA adapter, merged on load
    proc = cli("eval", "--env", NAME, "--model", str(model), "--packs", "1", "-k", "2", "-r", "1", "--out", str(out),
               timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["meta"]["env"] == "coin" and results["meta"]["chance_reward"] == pytest.approx(0.375)
    assert len((out / "trajectories.jsonl").read_text().splitlines()) == 1
    assert (out / "episodes.csv").read_text().count("\n") == 1 + 2
    assert (out / "reward_by_position.png").read_bytes()[:4] == b"\x89PNG"
