"""`codrl ralph`: user task folders, test reports, notes after every attempt, bad input, real models.

Fast tests drive the real runner, the real sandbox and the example task folder
(``examples/ralph_task``) with :func:`coder`, a deterministic engine whose solution
depends only on what its prompt says, so the notes' effect is exact. Slow tests use the embedded
model in process and the llama.cpp server through the command line.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from codrl.backends.base import Backend, GenRequest
from codrl.backends.scripted import FunctionBackend
from codrl.envs.code.user_task import UserTaskEnv, load_task_folder, parse_test_summary, score_test_run
from codrl.errors import CodrlError
from codrl.eval.ralph import NotesWriter, RalphConfig, pass_rates, run_ralph
from codrl.sandbox import SandboxResult

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "ralph_task"

GOOD = '''import re

_RE = re.compile(r"(?:(\\d+)h)?(?:(\\d+)m)?(?:(\\d+)s)?")


def parse_duration(text):
    t = text.strip()
    if t.isdigit():
        return int(t)
    m = _RE.fullmatch(t)
    if not t or m is None:
        raise ValueError(text)
    h, mi, s = (int(x) if x else 0 for x in m.groups())
    return h * 3600 + mi * 60 + s
```
</answer>'''
NAIVE = "def parse_duration(text):\n    return int(text)\n```\n</answer>"
LESSON = "units h m s need a regex"


def coder(system_prompt: str) -> FunctionBackend:
    """Writes the naive solution unless its prompt carries the lesson; every note step writes the lesson.

    A note step (any request whose system prompt is not the task's) answers ``ADD: <lesson>``,
    which a curator parses as an operation and a free-form hints rewrite keeps as text.
    """

    def reply(req: GenRequest) -> str:
        if req.messages[0]["content"] != system_prompt:
            return f"ADD: {LESSON}"
        return GOOD if any(LESSON in m["content"] for m in req.messages) else NAIVE

    return FunctionBackend(reply)


def _task_folder(tmp_path: Path, **files: str | bytes) -> Path:
    folder = tmp_path / "task"
    folder.mkdir()
    for name, data in files.items():
        path = folder / name.replace("__", ".")
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return folder


# --------------------------------------------------------------------------------------------
# the task folder and its test reports


def test_example_folder_loads_and_scores_good_and_naive_code() -> None:
    env = UserTaskEnv(EXAMPLE)
    assert env.spec.test_command and "unittest" in env.spec.test_command
    pack = env.sample_pack("test", 0, 0, 3)
    assert len(pack) == 3 and pack.tasks[0].spec == pack.tasks[2].spec
    ep = env.start(pack, pack.tasks[0])
    assert "parse_duration" in ep.reset()
    good = ep.step(env.reply_prefix + GOOD)
    assert good.done and good.reward == 1.0 and "8 of 8 passed" in good.feedback
    ep = env.start(pack, pack.tasks[0])
    ep.reset()
    naive = ep.step(env.reply_prefix + NAIVE)
    assert naive.done and naive.reward == 0.5 and "4 of 8 passed" in naive.feedback
    assert "test_seconds_only" in naive.feedback  # the failing tests are named
    bad = env.start(pack, pack.tasks[0])
    bad.reset()
    res = bad.step("I think the answer is int(text)")
    assert res.done and not res.valid and res.reward == 0.0 and "<answer>" in res.feedback


def test_folder_without_test_command_is_a_clear_error(tmp_path: Path) -> None:
    folder = _task_folder(tmp_path, prompt__md="Write f.")
    with pytest.raises(CodrlError, match="no test command; give --test"):
        load_task_folder(folder)
    spec, prompt, files = load_task_folder(folder, test_command="python3 -m unittest")
    assert prompt == "Write f." and spec.test_command == "python3 -m unittest" and "prompt.md" in files


@pytest.mark.parametrize(("files", "match"), [
    ({"task__yaml": "test_command: x\n"}, "no prompt file"),
    ({"prompt__md": b"\xff\xfe bad", "task__yaml": "test_command: x\n"}, "not UTF-8"),
    ({"prompt__md": "p", "task__yaml": "test_comand: x\n"}, "field test_comand: Extra inputs.*allowed fields: test_command"),
    ({"prompt__md": "p", "task__yaml": "test_command: x\ntimeout_s: -1\n"}, "field timeout_s"),
    ({"prompt__md": "p", "task__yaml": "test_command: x\nsolution_file: ../out.py\n"}, "field solution_file"),
    ({"prompt__md": "p", "task__yaml": "test_command: x\nbinds: [relative/dir]\n"}, "field binds"),
    ({"prompt__md": "p", "task__yaml": "- a list\n"}, "expected a mapping"),
    ({"prompt__md": "  ", "task__yaml": "test_command: x\n"}, "the prompt is empty"),
])
def test_bad_task_folders_name_the_problem(tmp_path: Path, files: dict[str, str | bytes], match: str) -> None:
    with pytest.raises(CodrlError, match=match):
        load_task_folder(_task_folder(tmp_path, **files))
    with pytest.raises(CodrlError, match="not a folder"):
        load_task_folder(tmp_path / "missing")


@pytest.mark.parametrize(("output", "expected"), [
    ("==== 2 failed, 3 passed in 0.12s ====", (3, 5)),
    ("5 passed in 0.01s", (5, 5)),
    ("1 failed, 1 passed, 2 errors in 1.0s", (1, 4)),
    ("....\n----------------------------------------------------------------------\nRan 4 tests in 0.001s\n\nOK", (4, 4)),
    ("Ran 8 tests in 0.002s\n\nFAILED (failures=3, errors=1)", (4, 8)),
    ("Ran 1 test in 0.000s\n\nFAILED (errors=1)", (0, 1)),
    ("hello world", None),
    ("", None),
])
def test_parse_test_summary(output: str, expected: tuple[int, int] | None) -> None:
    assert parse_test_summary(output) == expected


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=400) | st.builds(lambda a, n, b: f"{a}Ran {n} tests in 0.1s\n{b}", st.text(max_size=40),
                                          st.integers(0, 99), st.text(max_size=60)))
def test_parse_test_summary_fuzzed_never_raises(output: str) -> None:
    got = parse_test_summary(output)
    assert got is None or 0 <= got[0] <= got[1]


def _res(**kw: object) -> SandboxResult:
    base: dict[str, object] = {"returncode": 0, "stdout": "", "stderr": "", "timed_out": False, "killed_reason": None,
                               "duration_s": 0.1}
    base.update(kw)
    return SandboxResult(**base)  # type: ignore[arg-type]


def test_score_test_run_cases() -> None:
    assert score_test_run(_res())[0] == 1.0
    assert score_test_run(_res(returncode=2, stderr="boom"))[0] == 0.0
    reward, text = score_test_run(_res(returncode=1, stdout="2 failed, 2 passed in 0.1s"))
    assert reward == 0.5 and "2 of 4 passed" in text
    reward, text = score_test_run(_res(returncode=-9, timed_out=True, killed_reason="wall-clock timeout after 2s",
                                       stdout="5 passed"))
    assert reward == 0.0 and "stopped: wall-clock timeout" in text
    reward, text = score_test_run(_res(returncode=1, stdout="3 passed in 0.1s"))  # all passed, yet it failed
    assert reward == 0.0
    reward, text = score_test_run(_res(stdout="x" * 10_000))
    assert len(text) < 1700 and text.endswith("x")


# --------------------------------------------------------------------------------------------
# bad input through the sandbox: hangs, endless and non-UTF-8 output are scored failures


@pytest.mark.parametrize(("command", "expect"), [
    ("sleep 600", "timeout"),
    ("yes", "output exceeded"),
    ("printf 'bad \\377\\376 bytes\\n'; exit 1", "\ufffd"),
    ("exec 1>&-; exit 3", "exit status 3"),
])
def test_hanging_endless_and_non_utf8_test_commands_are_scored_failures(tmp_path: Path, command: str,
                                                                         expect: str) -> None:
    folder = _task_folder(tmp_path, prompt__md="Write anything.",
                          task__yaml=f"test_command: {json.dumps(command)}\ntimeout_s: 3\nmax_output_kb: 64\n")
    env = UserTaskEnv(folder)
    pack = env.sample_pack("test", 0, 0, 1)
    ep = env.start(pack, pack.tasks[0])
    ep.reset()
    t0 = time.monotonic()
    res = ep.step(env.reply_prefix + "x = 1\n```\n</answer>")
    assert time.monotonic() - t0 < 15
    assert res.done and res.valid and res.reward == 0.0
    assert expect in res.feedback, res.feedback


def test_target_errors() -> None:
    from codrl.eval.ralph import ralph_env

    with pytest.raises(CodrlError, match="is for task folders"):
        ralph_env(RalphConfig(target="frozenlake", test_command="true"))
    with pytest.raises(CodrlError, match="not a folder"):
        ralph_env(RalphConfig(target="./no/such/folder"))
    with pytest.raises(CodrlError, match="allowed values"):
        ralph_env(RalphConfig(target="no_such_env"))


# --------------------------------------------------------------------------------------------
# the loop: notes after every attempt, pass rate per attempt, per context


def test_ralph_loop_carries_notes_and_reports_pass_rate_per_attempt(tmp_path: Path) -> None:
    env = UserTaskEnv(EXAMPLE)
    backend = coder(env.system_prompt)
    cfg = RalphConfig(target=str(EXAMPLE), attempts=3, contexts=["nohint", "cod", "curator"])
    rates = run_ralph(backend, cfg, tmp_path, progress=False)
    prompts = [r.messages[1]["content"] for r in backend.requests if r.messages[0]["content"] == env.system_prompt]
    per = {c: [a.pass_rate for a in rates[c].attempts] for c in rates}
    assert per == {"nohint": [0.0, 0.0, 0.0], "cod": [0.0, 1.0, 1.0], "curator": [0.0, 1.0, 1.0]}
    assert [a.mean_reward for a in rates["nohint"].attempts] == [0.5, 0.5, 0.5]
    assert [a.solved_by for a in rates["cod"].attempts] == [0.0, 1.0, 1.0]
    # the second attempt's prompt carried the notes (cod: free-form; curator: a numbered lesson list)
    assert sum(LESSON in p for p in prompts) == 4
    assert any(f"1. {LESSON}" in p for p in prompts)
    for context in ("nohint", "cod", "curator"):
        note = tmp_path / "notes" / context / "task_ralph_task_test_0_0_0.md"
        log = note.with_suffix(".log.md").read_text()
        assert log.count("## Attempt") == 3 and "After attempt 3 of 3" in note.read_text()
        if context != "nohint":
            assert LESSON in note.read_text()
    table = (tmp_path / "ralph.md").read_text()
    assert "| 2 | 0.00 (0.50) | 1.00 (1.00) | 1.00 (1.00) |" in table
    saved = json.loads((tmp_path / "ralph.json").read_text())
    assert saved["rates"]["cod"]["attempts"][1]["pass_rate"] == 1.0
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["summary"]["modes"]) == {"ralph", "ralph-nohint", "ralph-curator"}
    assert (tmp_path / "reward_by_position.png").stat().st_size > 0


def test_pass_rates_average_loops_of_a_task_first(tmp_path: Path) -> None:
    from codrl.rollout.experience import EpisodeRecord, LifecycleResult

    def lc(pack: str, successes: list[bool]) -> LifecycleResult:
        eps = [EpisodeRecord(position=i, task_id=f"{pack}#r{i}", hints_in="", turns=[], env_reward=float(s),
                             reward=float(s), success=s, format_valid=True, feedback="", completion_tokens=1)
               for i, s in enumerate(successes)]
        return LifecycleResult(pack_id=pack, env="x", split="test", repeat=0, mode="ralph", episodes=eps,
                               model_episodes=[])

    rates = pass_rates([lc("a", [False, True]), lc("a", [False, False]), lc("b", [True, True])], attempts=2)
    assert rates.tasks == 2 and rates.loops == 3
    assert [r.pass_rate for r in rates.attempts] == [0.5, 0.75]
    assert [r.solved_by for r in rates.attempts] == [0.5, 0.75]


# --------------------------------------------------------------------------------------------
# the command line


def _cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "codrl.cli", "ralph", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path: Path) -> None:
    folder = _task_folder(tmp_path, prompt__md="Write f.")
    for args, match in [((str(folder),), "no test command"),
                        (("frozenlake", "--test", "true"), "is for task folders"),
                        (("code", "--contexts", "cod,hints"), "--contexts"),
                        (("code", "--attempts", "0"), "--attempts must be >= 1")]:
        proc = _cli(*args, timeout=120)
        assert proc.returncode == 2, (args, proc.stderr)
        assert proc.stderr.startswith("error: ") and match in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr


def test_cli_help_teaches() -> None:
    proc = _cli("--help", timeout=120)
    assert proc.returncode == 0
    for word in ("task folder", "--attempts", "--contexts", "curator", "--endpoint", "notes"):
        assert word in proc.stdout


@pytest.mark.slow
def test_ralph_embedded_model_on_coding_tasks(embedded_backend: Backend, tmp_path: Path) -> None:
    """The embedded model in the Ralph loop on two coding-world tasks, both note-carrying contexts."""
    import torch

    torch.manual_seed(0)
    cfg = RalphConfig(target="code", env_params={"max_turns": 1}, tasks=2, attempts=2,
                      contexts=["cod", "curator"],
                      rollout={"temperature": 0.7, "max_new_tokens_solve": 96, "max_new_tokens_update": 48,
                               "length_penalty_coef": 0.0, "hint_length_coef": 0.0})
    rates = run_ralph(embedded_backend, cfg, tmp_path, progress=False)
    assert set(rates) == {"cod", "curator"}
    for context, r in rates.items():
        assert r.tasks == 2 and len(r.attempts) == 2
        assert all(0.0 <= a.pass_rate <= 1.0 and 0.0 <= a.mean_reward <= 1.0 for a in r.attempts)
        assert len(list((tmp_path / "notes" / context).glob("*.log.md"))) == 2
    trajectories = [json.loads(line) for line in (tmp_path / "trajectories.jsonl").read_text().splitlines()]
    assert len(trajectories) == 4
    for lc in trajectories:  # the second attempt was solved with the notes written after the first
        first, second = lc["episodes"]
        assert first["hints_in"] == "" and second["hints_in"] == first["hints_out"]
        context = "cod" if lc["mode"] == "ralph" else "curator"
        note = NotesWriter(tmp_path, context, 2).path(second["task_id"], lc["repeat"]).read_text()
        assert "After attempt 2 of 2" in note and second["hints_in"].strip() in note


@pytest.mark.slow
def test_ralph_cli_through_llama_server(llama_server: str, tmp_path: Path) -> None:
    """`codrl ralph` against the real llama.cpp server on the example task folder (the coding world
    through the server is measured by bench/ralph_coding.py)."""
    folder = tmp_path / "task"
    shutil.copytree(EXAMPLE, folder)
    out = tmp_path / "run"
    proc = _cli(str(folder), "--endpoint", llama_server, "--attempts", "2", "--contexts", "nohint,curator",
                "--max-new-tokens", "96", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "pass rate per attempt" in proc.stdout
    saved = json.loads((out / "ralph.json").read_text())
    assert set(saved["rates"]) == {"nohint", "curator"}
    assert (out / "notes" / "curator").is_dir()


def test_cli_with_a_local_model_folder(tiny_dir: Path, tmp_path: Path) -> None:
    """`--model` takes a model folder (here the tiny policy saved like a checkpoint's model/ folder)."""
    out = tmp_path / "run"
    proc = _cli("secret_table", "--model", str(tiny_dir), "--tasks", "2", "--attempts", "2", "--contexts",
                "nohint,curator", "--max-new-tokens", "8", "--out", str(out), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    saved = json.loads((out / "ralph.json").read_text())
    assert saved["meta"]["model"] == str(tiny_dir)
    assert [len(saved["rates"][c]["attempts"]) for c in ("nohint", "curator")] == [2, 2]
    assert len(list((out / "notes" / "curator").glob("*.md"))) == 4  # notes and log of each task


def test_shipped_ralph_config_validates() -> None:
    from codrl.config import load_yaml
    from codrl.eval.ralph import ralph_env

    cfg = load_yaml(RalphConfig, Path(__file__).resolve().parents[1] / "configs" / "ralph_code.yaml")
    assert cfg.tasks == 20 and cfg.contexts == ["nohint", "cod", "curator"]
    assert ralph_env(cfg).name == "code"
    with pytest.raises(CodrlError, match="contexts"):
        from codrl.config import validate

        validate(RalphConfig, {"contexts": ["cod", "notes"]}, source="test")
