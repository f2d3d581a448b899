"""Terminal: file tasks in a simulated shell, a local machine and one team server.

Each task asks for a file chore (upload, download, rename, move, chmod, delete, copy, archive,
nested folders, and combinations of these) described in terms of *projects* and the *team
server*, never in terms of paths or logins. Where the projects live on each machine, how to log in
to the server and how the site names and stores archives is the machine *setup*: by default one
setup is shared by every task of a pack (``shared_setup=True``), so what the agent finds out by
exploring in task 0 (``ls``, ``cat`` a note, ``ssh`` and read the server's README) and what the
final goal report reveals carries over to task 3 in its hints. ``shared_setup=False`` draws a fresh
setup per task, as the reference does.

An episode: the agent answers one command line per turn in ``<answer>...</answer>`` (``&&`` and
``;`` chains count as one turn). The shell answers with shell-like output (see
:mod:`codrl.envs.terminal.shell`; nothing real is ever executed). After every command the goal
checks run on the simulated machines: the episode ends with reward 1 as soon as they all pass
(no "done" needed: this tells the agent exactly when it has succeeded), and with reward 0 when the
agent answers ``done`` early or uses up its ``max_turns`` commands. The final feedback lists each
goal check as ``[ok]`` or ``[FAILED]`` with its path, which teaches where things were supposed to
go. A reply without exactly one ``<answer>`` tag pair, or with an empty answer, is malformed: the
episode ends with reward 0 and ``valid=False``. A command that fails in the shell is not
malformed; its error message is the feedback and the episode goes on.

World format: ``{"shared_setup": true, "setup": {...}}`` (``{"shared_setup": false}`` when every
task carries its own ``"setup"``). Setup and task spec formats: :mod:`codrl.envs.terminal.tasks`.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import numpy as np
from pydantic import Field

from codrl.envs.base import (CoDEnv, EnvParams, Episode, Pack, StepResult, Subset, Task, answer_span, one_of,
                             parse_params)
from codrl.envs.terminal.shell import FLAVOURS, Shell
from codrl.envs.terminal.tasks import OS_NAMES, TASK_KINDS, build_shell, evaluate, sample_setup, sample_task

FORMAT_HINT = "Reply with one command line inside <answer>...</answer>, for example <answer>ls</answer>."
NEXT_HINT = "Reply with the next command line inside <answer>...</answer>."
INVALID_FEEDBACK = ("Invalid answer: put exactly one command line inside one <answer>...</answer> pair, for "
                    "example <answer>ls</answer>. The task ended with reward 0.")
GoalFeedback = Literal["checks", "terse"]
GOAL_FEEDBACK: tuple[str, ...] = get_args(GoalFeedback)
Flavour = one_of(FLAVOURS)
Kind = one_of(TASK_KINDS)


def parse_command(reply: Any) -> str | None:
    """The command line of a reply with exactly one ``<answer>...</answer>`` pair, else None.

    Tags are case-insensitive (see :func:`~codrl.envs.base.answer_span`); text around the pair is
    ignored (reasoning before it, or what a stop string left after it); the command is stripped and
    must not be empty. Linear time.
    """
    span = answer_span(reply)
    if isinstance(span, str):
        return None
    text = reply[span[0]:span[1]].strip()
    return text or None


class Terminal(CoDEnv):
    """Terminal: file chores in a simulated shell with a team server; the machine setup is shared by a pack.

    Parameters: the keywords of :class:`Terminal.Params`.

    Rewards: 1.0 when every goal check passes, else 0.0 (also for a malformed reply).
    """

    reply_prefix = "<answer>"
    stop_strings = ("</answer>",)
    #: Mean reward of the scripted random agent (random commands from the supported set with
    #: random paths), measured on 200 test packs x 4 tasks (seed 0), with and without a shared
    #: setup: it solved none of the 1600 tasks.
    chance_reward = 0.0

    class Params(EnvParams):
        """Terminal's parameters."""

        name: str = Field("terminal", min_length=1, description="Name of the environment (pack ids, reports).")
        shared_setup: bool = Field(True, strict=True, description=(
            "True: one machine setup per pack; False: one per task (nothing hidden carries over)."))
        max_turns: int = Field(12, strict=True, ge=1, le=100, description="Commands (replies) per task, 1-100.")
        flavours: Subset[Flavour] = Field(
            FLAVOURS, description="Local operating systems to draw from: a non-empty subset of all "
                                                "of them (the default).")
        kinds: Subset[Kind] = Field(
            TASK_KINDS, description="Task kinds to draw from: a non-empty subset of all of them "
                                                  "(the default).")
        max_distractors: int = Field(3, strict=True, ge=0, le=3, description=(
            "Most extra files next to a task's files that must be left alone, 0-3."))
        goal_feedback: GoalFeedback = Field("checks", description=(
            "checks: the final feedback lists every goal check with its path and result; terse: only whether "
            "the goal was reached."))

    def __init__(self, **params: Any) -> None:
        p = parse_params(self.Params, params)
        self.name = p.name
        self.shared_setup = p.shared_setup
        self.max_turns = p.max_turns
        self.flavours = p.flavours
        self.kinds = p.kinds
        self.max_distractors = p.max_distractors
        self.goal_feedback = p.goal_feedback
        self.system_prompt = self._build_system_prompt()

    def _build_system_prompt(self) -> str:
        same = ("The machine setup is the same in every task here: where the projects are kept on each machine, "
                "how to log in to the server, and where and how archives are stored. Note what you find out: it "
                "saves commands in later tasks."
                if self.shared_setup else
                "Each task may run on a different machine setup, so explore before you act.")
        return (
            "You are working in a terminal (a simulation: nothing real is run). You have a local machine "
            "(Linux, macOS or Windows PowerShell) and can log in to a team server with `ssh user@host`; `exit` "
            "comes back. scp copies files between them and only runs on your local machine.\n"
            "Commands: cd, ls (-l shows permissions), pwd, cat, mkdir (-p), cp (-r), mv, rm (-r), chmod, "
            "tar (-c/-x/-t, -z, -f NAME, -C DIR), zip (-r), unzip (-d DIR), ssh, scp (-r), exit, help; Windows "
            "also has dir, type, copy, move, del, ren. Not every machine has every command; `help` lists them.\n"
            "Each turn, answer exactly one command line inside <answer>...</answer>, for example "
            "<answer>ls</answer>. You may chain commands with && or ; (that counts as one turn). Pipes, "
            "redirects, wildcards and variables are not supported.\n"
            f"You have {self.max_turns} commands per task. The task ends by itself as soon as its goal is "
            "reached; answer <answer>done</answer> to give up early.\n" + same
        )

    # -- CoDEnv -------------------------------------------------------------------------------
    def sample_world(self, rng: np.random.Generator) -> dict[str, Any]:
        """One machine setup for the pack, or none when every task draws its own."""
        if not self.shared_setup:
            return {"shared_setup": False}
        return {"shared_setup": True, "setup": sample_setup(rng, self.flavours)}

    def sample_task(self, world: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        """One task inside the pack's setup (or inside a setup drawn for this task alone)."""
        if world.get("shared_setup", True):
            return sample_task(world["setup"], rng, self.kinds, self.max_distractors)
        setup = sample_setup(rng, self.flavours)
        return {"setup": setup, **sample_task(setup, rng, self.kinds, self.max_distractors)}

    def start(self, pack: Pack, task: Task, state: Any = None) -> TerminalEpisode:
        """Begin an episode of ``task`` on fresh machines built from the setup and the task."""
        setup = task.spec.get("setup") or pack.world.get("setup")
        if not isinstance(setup, dict):
            raise ValueError(f"{self.name}: task {task.task_id} has no machine setup (world or spec 'setup')")
        return TerminalEpisode(setup, task.spec, self.max_turns, self.goal_feedback)


class TerminalEpisode(Episode):
    """One task at the terminal. ``info`` of each step: ``event`` (``command``, ``solved``,
    ``done``, ``timeout``, ``invalid`` or ``over``), ``turns``, ``on_server``, ``ok`` (exit status
    of the last command), ``checks_passed`` and ``checks_total``."""

    def __init__(self, setup: dict[str, Any], spec: dict[str, Any], max_turns: int,
                 goal_feedback: str = "checks") -> None:
        self.setup = setup
        self.spec = spec
        self.max_turns = max_turns
        self.goal_feedback = goal_feedback
        self.shell: Shell = build_shell(setup, spec)
        self.turns = 0
        self.done = False

    def reset(self) -> str:
        """Fresh machines; the first observation (task, machine, prompt, format)."""
        self.shell = build_shell(self.setup, self.spec)
        self.turns = 0
        self.done = False
        os_name = OS_NAMES.get(self.setup["os"], self.setup["os"])
        return (f"Task: {self.spec['description']}\n\n"
                f"You are at a terminal on your local {os_name} machine, in your home folder. You have "
                f"{self.max_turns} command{'s' if self.max_turns != 1 else ''}; the task ends as soon as the goal "
                "is reached.\n\n"
                f"{self.shell.prompt()}\n{FORMAT_HINT}")

    def _info(self, event: str, ok: bool = True, passed: int = 0) -> dict[str, Any]:
        return {"event": event, "turns": self.turns, "on_server": self.shell.on_remote, "ok": ok,
                "checks_passed": passed, "checks_total": len(self.spec["checks"])}

    def _goal_report(self, results: list[tuple[bool, str]], why: str) -> str:
        failed = sum(not ok for ok, _ in results)
        if not failed:
            head = f"Goal reached: all {len(results)} checks pass. Task solved!"
        else:
            head = f"{why} Goal not reached: {failed} of {len(results)} checks failed. Task failed."
        if self.goal_feedback == "terse":
            return head
        return "\n".join([head] + [f"  [{'ok' if ok else 'FAILED'}] {line}" for ok, line in results])

    def step(self, reply: str) -> StepResult:
        """Run the reply's command line and report; never raises."""
        if self.done:
            return StepResult(None, 0.0, True, "The task is already over.", True, self._info("over"))
        self.turns += 1
        line = parse_command(reply)
        if line is None:
            self.done = True
            return StepResult(None, 0.0, True, INVALID_FEEDBACK, False, self._info("invalid", False))
        before = self.shell.prompt()
        if "\n" in line or "\r" in line:
            out, ok, asked_done = ("one command line per turn: put it on a single line (chain commands with "
                                   "&& or ;)"), False, False
        else:
            try:
                res = self.shell.run(line)
                out, ok, asked_done = res.output, res.ok, res.done
            except Exception as e:  # pragma: no cover - a simulator bug must not crash a rollout
                out, ok, asked_done = f"internal simulator error ({type(e).__name__}); nothing happened", False, False
        shown = line if len(line) <= 300 else line[:300] + "..."
        text = f"{before} {shown}" + (f"\n{out}" if out else "")
        results = evaluate(self.spec["checks"], self.shell)
        passed = sum(ok_ for ok_, _ in results)
        if passed == len(results):
            self.done = True
            return StepResult(None, 1.0, True, f"{text}\n\n{self._goal_report(results, '')}", True,
                              self._info("solved", ok, passed))
        if asked_done or self.turns >= self.max_turns:
            self.done = True
            event = "done" if asked_done else "timeout"
            plural = "s" if self.max_turns != 1 else ""
            why = "You answered done." if asked_done else f"You used all {self.max_turns} command{plural}."
            return StepResult(None, 0.0, True, f"{text}\n\n{self._goal_report(results, why)}", True,
                              self._info(event, ok, passed))
        left = self.max_turns - self.turns
        obs = f"{text}\n{self.shell.prompt()}\n({left} command{'s' if left != 1 else ''} left) {NEXT_HINT}"
        return StepResult(obs, 0.0, False, text, True, self._info("command", ok, passed))
