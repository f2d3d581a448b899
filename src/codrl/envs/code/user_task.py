"""A user's own coding task as an environment: a folder with a prompt file and a test command.

The folder holds what the agent reads (``prompt.md``), the files its tests need, and optionally a
``task.yaml``::

    my_task/
      prompt.md            # the task text the agent reads (or prompt.txt / PROMPT.md)
      task.yaml            # optional: test_command, solution_file, limits (see UserTaskSpec)
      test_solution.py     # whatever the test command runs

Each submission (one fenced code block inside ``<answer>...</answer>``) is written to
``solution_file`` in a fresh copy of the folder inside the sandbox (:mod:`codrl.sandbox`), the
test command runs there, and the reward is the fraction of tests passed when a pytest or
unittest summary can be read from its output, else 1 for exit status 0 and 0 otherwise. A command
that hangs is stopped at ``timeout_s``; endless output is cut at ``max_output_kb``; output that is
not UTF-8 is decoded with replacement characters. Every such case is a scored failure with a
feedback line, never a hang or an exception.

The command runs through ``sh -c`` with the sandbox's ``PATH`` (``/usr/local/bin:/usr/bin:/bin``):
``python3`` there is the system interpreter, so ``python3 -m unittest`` always works and pytest
only where it is installed for that interpreter.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from codrl.envs.base import CoDEnv, Episode, Pack, StepResult, Task
from codrl.envs.code.submission import FORMAT_HINT, STOP_STRINGS, CodeSubmission, extract_code
from codrl.errors import CodrlError
from codrl.sandbox import SandboxResult, run_sandboxed

#: Prompt file names looked for, in order, when task.yaml names none.
PROMPT_FILES = ("prompt.md", "PROMPT.md", "prompt.txt")
#: Folder entries never copied into the sandbox.
SKIPPED = {".git", "__pycache__", ".pytest_cache", ".mypy_cache", ".venv", "node_modules"}
#: Most bytes of folder files copied into the sandbox.
MAX_FOLDER_BYTES = 32 * 1024 * 1024
#: Most characters of test output shown in feedback (the tail is kept).
FEEDBACK_TAIL_CHARS = 1500


class UserTaskSpec(BaseModel):
    """``task.yaml`` of a task folder (every field optional but the test command, which may come
    from the command line instead)."""

    model_config = ConfigDict(extra="forbid")

    test_command: str | None = Field(None, description="shell command run in the folder copy; 'python3 -m unittest' style")
    prompt: str | None = Field(None, description="prompt file name (default: prompt.md, PROMPT.md or prompt.txt)")
    solution_file: str = Field("solution.py", description="where each submission is written, relative to the folder")
    timeout_s: float = Field(60.0, gt=0, le=3600, description="wall-clock limit of one test run")
    cpu_s: int = Field(60, ge=1, le=3600, description="CPU-seconds limit of one test run")
    memory_mb: int = Field(1024, ge=64, description="address-space limit of one test run")
    max_output_kb: int = Field(256, ge=1, description="output kept per stream; a command printing more is stopped")
    max_turns: int = Field(1, ge=1, le=20, description="submissions per attempt (the test report comes back between them)")
    binds: list[str] = Field(default_factory=list, description=(
        "host paths the test command needs besides the system's /usr (another interpreter, its packages), "
        "shown read-only inside the sandbox's minimal root; they must be readable by other users"))

    @field_validator("solution_file")
    @classmethod
    def _relative(cls, v: str) -> str:
        p = PurePosixPath(v)
        if not v or p.is_absolute() or ".." in p.parts:
            raise ValueError(f"must be a relative path inside the task folder, got {v!r}")
        return v

    @field_validator("binds")
    @classmethod
    def _absolute(cls, v: list[str]) -> list[str]:
        bad = [b for b in v if not b.startswith("/") or ".." in PurePosixPath(b).parts]
        if bad:
            raise ValueError(f"must be absolute host paths without '..', got {bad}")
        return v


def load_task_folder(folder: str | Path, test_command: str | None = None) -> tuple[UserTaskSpec, str, dict[str, bytes]]:
    """Read a task folder: its spec (``test_command`` overrides task.yaml's), prompt and files.

    Raises :class:`CodrlError` naming the folder and the problem: not a folder, no prompt file, a
    prompt that is not UTF-8 text, a bad task.yaml field, no test command, too many bytes.
    """
    root = Path(folder)
    if not root.is_dir():
        raise CodrlError(f"task folder {str(folder)!r}: not a folder")
    data: dict[str, Any] = {}
    spec_path = root / "task.yaml"
    if spec_path.is_file():
        try:
            loaded = yaml.safe_load(spec_path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise CodrlError(f"{spec_path}: not valid YAML ({str(e).splitlines()[0]})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise CodrlError(f"{spec_path}: expected a mapping of fields, got {type(loaded).__name__}")
        data = dict(loaded or {})
    if test_command is not None:
        data["test_command"] = test_command
    try:
        spec = UserTaskSpec.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "task.yaml"
        allowed = ", ".join(UserTaskSpec.model_fields)
        extra = f" (allowed fields: {allowed})" if err["type"] == "extra_forbidden" else ""
        raise CodrlError(f"{spec_path} field {where}: {err['msg']}{extra}") from None
    if not spec.test_command or not spec.test_command.strip():
        raise CodrlError(f"task folder {str(folder)!r}: no test command; give --test 'python3 -m unittest' "
                         "or test_command in task.yaml")
    names = [spec.prompt] if spec.prompt else list(PROMPT_FILES)
    prompt_path = next((root / n for n in names if (root / n).is_file()), None)
    if prompt_path is None:
        raise CodrlError(f"task folder {str(folder)!r}: no prompt file (looked for {', '.join(names)})")
    try:
        prompt = prompt_path.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError:
        raise CodrlError(f"{prompt_path}: the prompt is not UTF-8 text") from None
    if not prompt:
        raise CodrlError(f"{prompt_path}: the prompt is empty")
    return spec, prompt, _folder_files(root)


def _folder_files(root: Path) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    total = 0
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part in SKIPPED for part in rel.parts) or path.is_symlink() or not path.is_file():
            continue
        data = path.read_bytes()
        total += len(data)
        if total > MAX_FOLDER_BYTES:
            raise CodrlError(f"task folder {str(root)!r}: more than {MAX_FOLDER_BYTES // 2**20} MiB of files")
        files[rel.as_posix()] = data
    return files


_PYTEST_RE = re.compile(r"\b(\d+) (passed|failed|errors?)\b")
_UNITTEST_RAN_RE = re.compile(r"^Ran (\d+) tests? in ", re.MULTILINE)
_UNITTEST_BAD_RE = re.compile(r"^FAILED \(([^)]*)\)", re.MULTILINE)


def parse_test_summary(output: str) -> tuple[int, int] | None:
    """``(passed, total)`` read from a pytest or unittest summary in ``output``, or None.

    pytest: the last line counting ``N passed`` / ``N failed`` / ``N error(s)``. unittest: ``Ran N
    tests`` with ``OK`` or ``FAILED (failures=F, errors=E)``. Never raises.
    """
    ran = list(_UNITTEST_RAN_RE.finditer(output))
    if ran:
        total = int(ran[-1].group(1))
        after = output[ran[-1].end():]
        bad = _UNITTEST_BAD_RE.search(after)
        failed = 0
        if bad is not None:
            for item in bad.group(1).split(","):
                key, _, value = item.strip().partition("=")
                if key in ("failures", "errors", "unexpected successes") and value.isdigit():
                    failed += int(value)
        return max(0, total - failed), total
    for line in reversed(output.splitlines()[-200:]):
        counts = {"passed": 0, "failed": 0, "error": 0}
        found = False
        for m in _PYTEST_RE.finditer(line):
            counts[m.group(2).rstrip("s") if m.group(2).startswith("error") else m.group(2)] += int(m.group(1))
            found = True
        if found:
            total = counts["passed"] + counts["failed"] + counts["error"]
            return (counts["passed"], total) if total else None
    return None


def score_test_run(res: SandboxResult, tail_chars: int = FEEDBACK_TAIL_CHARS) -> tuple[float, str]:
    """Reward and feedback text of one test-command run (see the module docstring)."""
    output = (res.stdout + ("\n" if res.stdout and res.stderr else "") + res.stderr).strip()
    summary = parse_test_summary(output)
    if res.killed_reason is not None:
        head = f"The test run was stopped: {res.killed_reason}."
        reward = 0.0
    elif summary is not None:
        passed, total = summary
        reward = passed / total if total else 0.0
        head = f"Tests: {passed} of {total} passed" + (" (exit status 0)." if res.returncode == 0 else
                                                         f" (exit status {res.returncode}).")
        if res.returncode != 0 and passed == total:  # a summary says all passed but the command failed
            reward = 0.0
    else:
        reward = 1.0 if res.returncode == 0 else 0.0
        head = "The tests passed (exit status 0)." if res.returncode == 0 else \
            f"The tests failed (exit status {res.returncode})."
    if not output:
        return reward, head + " The command printed nothing."
    tail = output if len(output) <= tail_chars else "[...]\n" + output[-tail_chars:]
    return reward, f"{head}\nOutput:\n{tail}"


class _UserEpisode(Episode):
    def __init__(self, env: UserTaskEnv) -> None:
        self.env = env
        self.turn = 0

    def reset(self) -> str:
        return self.env.prompt

    def step(self, reply: str) -> StepResult:
        env = self.env
        self.turn += 1
        code = extract_code(reply)
        if not isinstance(code, CodeSubmission):
            return StepResult(None, 0.0, True, f"Malformed submission: {code}", valid=False)
        files: dict[str, str | bytes] = dict(env.files)
        files[env.spec.solution_file] = str(code)
        res = run_sandboxed(files, ["sh", "-c", env.spec.test_command or "false"], timeout_s=env.spec.timeout_s,
                            cpu_s=env.spec.cpu_s, memory_mb=env.spec.memory_mb,
                            max_output_bytes=env.spec.max_output_kb * 1024, max_procs=64, binds=env.spec.binds)
        reward, feedback = score_test_run(res)
        info = {"returncode": res.returncode, "killed_reason": res.killed_reason, "seconds": round(res.duration_s, 3)}
        if reward >= 1.0 or self.turn >= env.max_turns:
            return StepResult(None, reward, True, feedback, info=info)
        return StepResult(f"{feedback}\n\nFix your code and submit the whole {env.spec.solution_file} again.",
                          reward, False, feedback, info=info)


class UserTaskEnv(CoDEnv):
    """One coding task from a user's folder: every pack repeats it (the Ralph loop's setting)."""

    split_by = "world"
    chance_reward = 0.0

    def __init__(self, folder: str | Path, test_command: str | None = None) -> None:
        self.folder = Path(folder).resolve()
        self.spec, self.prompt, self.files = load_task_folder(self.folder, test_command)
        self.name = f"task:{self.folder.name}"
        self.max_turns = self.spec.max_turns
        fence = "python" if self.spec.solution_file.endswith(".py") else ""
        self.reply_prefix = f"<answer>\n```{fence}\n"
        self.stop_strings = STOP_STRINGS
        self.system_prompt = (
            "You are a careful programmer. Solve the task by writing the complete contents of the file "
            f"{self.spec.solution_file}. Tests are run on it and you are told which failed. {FORMAT_HINT}")

    def sample_world(self, rng: np.random.Generator) -> dict[str, Any]:
        return {"folder": str(self.folder)}

    def sample_task(self, world: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        return {"test_command": self.spec.test_command, "solution_file": self.spec.solution_file}

    def sample_pack(self, split: str, seed: int, index: int, size: int) -> Pack:
        """The folder's task ``size`` times (split, seed and index only name the pack)."""
        self.pack_rng(split, seed, index, size)  # validates split and size
        world = self.sample_world(np.random.default_rng(0))
        spec = self.sample_task(world, np.random.default_rng(0))
        return self.make_pack(split, seed, index, world, [dict(spec) for _ in range(size)])

    def start(self, pack: Pack, task: Task, state: Any = None) -> Episode:
        return _UserEpisode(self)
