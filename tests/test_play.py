"""`codrl play`: a person plays an environment through the real lifecycle runner.

The command is driven as a subprocess with piped input. The replies of a FrozenLake-Obscure
pack at a fixed seed are worked out here with the scripted oracle, so the test types a winning
walk, a hints block and an invalid reply, and reads back what the player (the model) was shown.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest

from codrl.backends.base import GenRequest, SamplingParams
from codrl.backends.human import EndOfInput, HumanBackend, apply_stop
from codrl.envs import Pack, make_env
from codrl.envs.scripted.frozenlake import oracle_agent
from codrl.rollout.prompts import UPDATE_SYSTEM

SEED, INDEX, K = 0, 0, 2


def run_play(*args: str, stdin: str = "", timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "codrl.cli", "play", *args], input=stdin, capture_output=True, check=False,
                          text=True, timeout=timeout)


def fixed_pack() -> Pack:
    return make_env("frozenlake").sample_pack("test", SEED, INDEX, K)


def winning_codes(pack: Pack, position: int) -> list[str]:
    """The codes of the oracle's walk through task ``position`` (checked to reach the goal)."""
    env = make_env("frozenlake")
    agent = oracle_agent(pack, np.random.default_rng(0))
    episode = env.start(pack, pack.tasks[position])
    observation, codes = episode.reset(), []
    while True:
        reply = agent.act("", observation)
        codes.append(reply.removeprefix("<answer>Direction ").removesuffix("</answer>"))
        step = episode.step(reply)
        if step.done:
            assert step.reward == 1.0
            return codes
        observation = step.observation or ""


def typed(*replies: str) -> str:
    """Piped input: each reply followed by the end-of-reply line."""
    return "".join(f"{r}\n.\n" for r in replies)


def test_play_frozenlake_shows_the_model_prompts_and_carries_typed_hints() -> None:
    pack = fixed_pack()
    env = make_env("frozenlake")
    hints = "my notes: code 1 = Left\ncode 2 = Up"
    proc = run_play("frozenlake", "--seed", str(SEED), "--index", str(INDEX), "-k", str(K), "--reveal",
                    stdin=typed(*winning_codes(pack, 0), hints, "no idea"))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "Traceback" not in proc.stderr
    # the system prompt and the first task exactly as the model gets them, with the reply prefix
    assert env.system_prompt in out
    assert env.start(pack, pack.tasks[0]).reset() in out
    assert "=== assistant" in out and "<answer>Direction " in out
    # feedback of each move, then the task outcome
    assert "moved you" in out and "Task solved!" in out
    assert "## Task 1 over: reward 1 (solved)" in out
    # the update-context prompt, then the typed hints heading the next task's prompt
    assert "Update the hints" in out and UPDATE_SYSTEM in out
    task2 = out.split("## Task 2 of 2", 1)[1]
    assert f"=== user ===\nHints:\n{hints}\n\n" + env.start(pack, pack.tasks[1]).reset() in task2
    # an unparseable reply: the stop string was completed, the environment explains the format
    assert "[sent] <answer>Direction no idea</answer>" in task2
    assert "Invalid answer." in task2 and "the reply did not parse" in task2
    # final rewards by position, then the hidden world
    assert "Rewards by pack position" in out
    assert "per-position rewards: 1 0" in out
    world = json.loads(out.split("## The hidden world (pack.world):", 1)[1])
    assert world == pack.world


def test_play_nohint_without_prefix() -> None:
    proc = run_play("frozenlake", "-k", "2", "--mode", "nohint", "--no-prefix",
                    stdin=typed("<answer>Direction 9</answer> trailing words", "pass"))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "Update the hints" not in out and "Hints:" not in out
    # no prefix prefilled: the whole typed reply is sent, cut after its stop string
    assert "[sent] <answer>Direction 9</answer>\n" in out
    assert "[sent] pass</answer>" in out
    assert "per-position rewards: 0 0" in out


@pytest.mark.parametrize(("stdin", "done"), [("", 0), ("x\n.\n", 1)])
def test_play_end_of_input_ends_cleanly(stdin: str, done: int) -> None:
    proc = run_play("frozenlake", "-k", "3", "--reveal", stdin=stdin)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"End of input: game over after {done} of 3 tasks" in proc.stdout
    assert '"mapping"' in proc.stdout  # --reveal also after an early end


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["nope"], ["'nope'", "frozenlake", "import path"]),
        (["no_such_module:Env"], ["cannot import module", "no_such_module"]),
        (["frozenlake", "--split", "dev"], ["--split", "'train'", "'test'"]),
        (["frozenlake", "--mode", "ralph"], ["--mode", "'cod'", "'nohint'"]),
        (["frozenlake", "-k", "0"], ["--pack-size", ">= 1"]),
        (["frozenlake", "--index", "-1"], ["--index", ">= 0"]),
    ],
)
def test_play_bad_input_is_one_error_line(args: list[str], needles: list[str]) -> None:
    proc = run_play(*args)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    for n in needles:
        assert n in errors[0], errors[0]


def test_play_help() -> None:
    proc = subprocess.run([sys.executable, "-m", "codrl.cli", "play", "--help"], capture_output=True, text=True, check=False,
                          timeout=60)
    assert proc.returncode == 0
    for option in ("--reveal", "--no-prefix", "--index", "--pack-size", "--mode", "--seed", "--split"):
        assert option in proc.stdout
    assert "Hints" in proc.stdout


# -- the backend itself -------------------------------------------------------------------------


def test_apply_stop() -> None:
    assert apply_stop("3", ("</answer>",)) == "3</answer>"
    assert apply_stop("3</answer> and more", ("</answer>",)) == "3</answer>"
    assert apply_stop("a STOP b stop", ("stop", "STOP")) == "a STOP"
    assert apply_stop("free text", ()) == "free text"


def test_human_backend_results_and_new_messages_only() -> None:
    chat = [{"role": "system", "content": "SYS"}, {"role": "user", "content": "first task"}]
    stdin, out = io.StringIO("2\n.\nline one\nline two\n.\n"), io.StringIO()
    backend = HumanBackend(stdin, out, echo=False)
    solve = SamplingParams(stop=("</answer>",))
    (r1,) = backend.generate([GenRequest(chat, solve, "<answer>Direction ")])
    assert r1.text == "2</answer>"
    assert not r1.token_exact and r1.prompt_ids == r1.completion_ids == r1.logprobs == []
    assert r1.finish_reason == "stop"
    more = chat + [{"role": "assistant", "content": "<answer>Direction 2</answer>"},
                   {"role": "user", "content": "moved"}]
    (r2,) = backend.generate([GenRequest(more, SamplingParams(), "")])
    assert r2.text == "line one\nline two"
    shown = out.getvalue()
    assert shown.count("SYS") == 1 and shown.count("first task") == 1  # the continuation shows only "moved"
    assert "moved" in shown and shown.count("=== assistant") == 2  # the typed reply is not repeated
    with pytest.raises(EndOfInput):
        backend.generate([GenRequest([{"role": "system", "content": UPDATE_SYSTEM}], SamplingParams(), "Hints:\n")])
    assert backend.stats.requests == 3
