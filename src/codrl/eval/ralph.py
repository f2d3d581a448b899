"""The Ralph loop as a command: one task attempted again and again, with notes carried between attempts.

``codrl ralph TARGET`` plays, for every context variant asked for, ``attempts`` attempts at each
task: a built-in environment's tasks (the first task of packs ``0 .. tasks-1``, e.g. of the
coding world ``code``) or a user's task folder (:mod:`codrl.envs.code.user_task`). Between
attempts the context is carried on:

* ``nohint``: nothing (independent attempts: the baseline);
* ``cod``: the model rewrites its free-form ``Hints:`` notes from the attempt's test report;
* ``curator``: a curator prompt edits an itemised lesson list with add / revise / remove operations.

After every attempt the notes are written to ``notes/<context>/<task>.md`` (the current notes) and
appended to ``notes/<context>/<task>.log.md`` (every attempt's outcome and notes), so a user can
read them while the loop runs. The run ends with the pass rate per attempt of each context
(``ralph.md``; ``ralph.json``, a :class:`RalphResults`) and the usual evaluation report
(``results.json``, ``episodes.csv``, ``trajectories.jsonl``, ``reward_by_position.png``, where
position = attempt).
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from codrl.backends.base import Backend
from codrl.envs import CoDEnv
from codrl.eval.metrics import JsonFloat, mean_ci
from codrl.eval.report import ResultsFile, fmt_number, write_report
from codrl.eval.runner import build_env, reward_bounds
from codrl.rollout.config import ContextName, RolloutConfig, result_mode
from codrl.rollout.contexts import context_class, context_name
from codrl.rollout.experience import EpisodeRecord, LifecycleResult
from codrl.rollout.lifecycle import LifecycleRunner, job_seeds, make_jobs

Context = ContextName
CONTEXTS: tuple[str, ...] = ("nohint", "cod", "curator")
#: Result mode of each built-in context in a Ralph run (the lifecycle runner's names;
#: :func:`~codrl.rollout.config.result_mode` names any context's).
RALPH_MODE = {c: result_mode(c, "first") for c in CONTEXTS}
_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def _default_rollout() -> RolloutConfig:
    # Code needs room: long replies, no length penalty (the pass rate is what is measured).
    return RolloutConfig(temperature=0.7, max_new_tokens_solve=384, max_new_tokens_update=160,
                         length_penalty_coef=0.0, hint_length_coef=0.0)


class RalphConfig(BaseModel):
    """What ``codrl ralph`` plays: a target, how many tasks and attempts, which contexts."""

    model_config = ConfigDict(extra="forbid")

    target: str = Field("code", description="an environment name (see `codrl envs`) or a task folder "
                        "holding a prompt file and a test command")
    env_params: dict[str, Any] = Field(default_factory=dict, description="keyword parameters of a built-in environment")
    test_command: str | None = Field(None, description="test command of a task folder (overrides its task.yaml)")
    tasks: int = Field(1, ge=1, description="built-in environment: how many tasks (first task of packs 0..N-1)")
    attempts: int = Field(4, ge=1, description="attempts per task (K of the Ralph loop)")
    repeats: int = Field(1, ge=1, description="independent loops per task and context")
    contexts: list[Context] = Field(default_factory=lambda: ["cod"], min_length=1,
                                    description="context variants to compare: nohint, cod, curator or an import "
                                                "path 'package.module:ClassName'")
    split: Literal["train", "test"] = "test"
    seed: int = 0
    rollout: RolloutConfig = Field(default_factory=_default_rollout,
                                   description="sampling and prompt knobs; pack_size/repeats/mode/ralph are set here")


def ralph_env(cfg: RalphConfig) -> CoDEnv:
    """The environment ``cfg.target`` names: a task folder when it is a folder, else a built-in."""
    if Path(cfg.target).is_dir():
        from codrl.envs.code.user_task import UserTaskEnv

        return UserTaskEnv(cfg.target, cfg.test_command)
    from codrl.errors import CodrlError

    if cfg.test_command is not None:
        raise CodrlError(f"--test is for task folders; {cfg.target!r} is not a folder")
    if "/" in cfg.target or cfg.target.startswith("."):
        raise CodrlError(f"task folder {cfg.target!r}: not a folder")
    return build_env(cfg.target, cfg.env_params)


def _slug(text: str) -> str:
    return _SAFE.sub("_", text).strip("_") or "task"


class NotesWriter:
    """Writes each loop's notes after every attempt: the current notes and a running log."""

    def __init__(self, out_dir: Path, context: str, attempts: int) -> None:
        self.context = context_name(context)
        self.keeps_notes = context_class(context).updates
        self.dir = Path(out_dir) / "notes" / _slug(self.context)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.attempts = attempts

    def path(self, task_id: str, repeat: int) -> Path:
        base = _slug(task_id.split("#r")[0])
        return self.dir / (f"{base}.md" if repeat == 0 else f"{base}-r{repeat}.md")

    def write(self, task_id: str, repeat: int, record: EpisodeRecord) -> Path:
        path = self.path(task_id, repeat)
        attempt = record.position + 1
        outcome = f"reward {record.env_reward:.2f}, {'passed' if record.success else 'not passed'}"
        notes = record.hints_out if record.hints_out is not None else record.hints_in
        if not self.keeps_notes:
            body = f"(context {self.context}: no notes are kept between attempts)"
        elif record.hints_out is None:
            body = (notes or "(no notes yet)") + "\n\n(last attempt: the notes are not rewritten after it)"
        else:
            body = notes or "(the notes are empty)"
        head = f"# Notes on {task_id.split('#r')[0]} (context {self.context})\n\n" \
               f"After attempt {attempt} of {self.attempts}: {outcome}.\n\n"
        path.write_text(head + body.rstrip() + "\n", encoding="utf-8")
        last = record.feedback.strip().splitlines()[0] if record.feedback.strip() else ""
        with path.with_suffix(".log.md").open("a", encoding="utf-8") as log:
            log.write(f"## Attempt {attempt} of {self.attempts}: {outcome}\n\n{last}\n\nNotes after it:\n\n"
                      f"{body.rstrip()}\n\n")
        return path


class AttemptRates(BaseModel):
    """One attempt of a context's loops: the pass rate (with a 95% interval over tasks, null when
    there are too few tasks), the mean reward and the rate of loops solved by this attempt."""

    model_config = ConfigDict(extra="ignore")

    attempt: int
    pass_rate: JsonFloat
    ci_low: JsonFloat
    ci_high: JsonFloat
    mean_reward: JsonFloat
    solved_by: JsonFloat


class ContextRates(BaseModel):
    """The pass rates of one context: how many tasks and loops, and every attempt."""

    model_config = ConfigDict(extra="ignore")

    tasks: int
    loops: int
    attempts: list[AttemptRates]


class RalphResults(ResultsFile):
    """``ralph.json``: the run's ``meta`` (target, tasks, attempts, config...) and the pass rates of
    every context."""

    kind: ClassVar[str] = "Ralph results file"

    meta: dict[str, Any] = {}
    rates: dict[str, ContextRates]


def pass_rates(results: Sequence[LifecycleResult], attempts: int) -> ContextRates:
    """Per attempt: pass rate (with a 95% interval over tasks), mean reward, solved-by-then rate."""
    by_task: dict[str, list[LifecycleResult]] = {}
    for r in results:
        by_task.setdefault(r.pack_id, []).append(r)
    rows = []
    for a in range(attempts):
        per_task = [sum(bool(r.episodes[a].success) for r in rs) / len(rs) for rs in by_task.values()]
        reward = [sum(r.episodes[a].env_reward for r in rs) / len(rs) for rs in by_task.values()]
        solved = [sum(any(e.success for e in r.episodes[:a + 1]) for r in rs) / len(rs) for rs in by_task.values()]
        m, lo, hi = mean_ci(per_task, bounds=(0.0, 1.0))
        rows.append(AttemptRates(attempt=a + 1, pass_rate=m, ci_low=lo, ci_high=hi,
                                 mean_reward=sum(reward) / len(reward), solved_by=sum(solved) / len(solved)))
    return ContextRates(tasks=len(by_task), loops=len(results), attempts=rows)


def ralph_table(rates: dict[str, ContextRates]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the per-attempt table: attempt | one 'pass rate (reward)' column per context."""
    contexts = list(rates)
    header = ["attempt", *[f"{c}: pass rate (mean reward)" for c in contexts]]
    attempts = len(next(iter(rates.values())).attempts) if rates else 0
    rows = []
    for a in range(attempts):
        row = [str(a + 1)]
        for c in contexts:
            r = rates[c].attempts[a]
            row.append(f"{fmt_number(r.pass_rate, 2)} ({fmt_number(r.mean_reward, 2)})")
        rows.append(row)
    return header, rows


def run_ralph(backend: Backend, cfg: RalphConfig, out_dir: Path, *, console: Console | None = None,
              progress: bool = True, meta: dict[str, Any] | None = None) -> dict[str, ContextRates]:
    """Play the Ralph loop for every context, write notes and reports; return pass rates per context."""
    console = console or Console()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    env = ralph_env(cfg)
    packs = [(env, env.sample_pack(cfg.split, cfg.seed, i, cfg.attempts)) for i in range(cfg.tasks)]
    all_results: list[LifecycleResult] = []
    rates: dict[str, ContextRates] = {}
    loops = cfg.tasks * cfg.repeats
    verbose = loops * len(cfg.contexts) <= 4  # few loops: one line per attempt instead of a bar
    t0 = time.time()
    for context in cfg.contexts:
        rcfg = cfg.rollout.model_copy(update={"pack_size": cfg.attempts, "repeats": cfg.repeats, "mode": context,
                                              "ralph": "first"})
        jobs = make_jobs(packs, rcfg)
        notes = NotesWriter(out, context, cfg.attempts)
        runner = LifecycleRunner(backend, rcfg)
        passed = [0] * cfg.attempts
        seen = [0] * cfg.attempts

        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.fields[rates]}"), TimeElapsedColumn(), console=console,
                      disable=not progress or verbose) as bar:
            task = bar.add_task(f"{env.name} ralph [{context}]", total=len(jobs) * cfg.attempts, rates="")

            def on_episode(i: int, record: EpisodeRecord, jobs: Sequence[Any] = jobs, notes: NotesWriter = notes,
                           passed: list[int] = passed, seen: list[int] = seen, context: str = context,
                           bar: Progress = bar, task: Any = task) -> None:
                job = jobs[i]
                path = notes.write(record.task_id, job.repeat, record)
                a = record.position
                seen[a] += 1
                passed[a] += int(record.success)
                shown = " ".join(f"a{k + 1}={passed[k] / seen[k]:.2f}" for k in range(len(seen)) if seen[k])
                bar.update(task, advance=1, rates=f"pass {shown}")
                if verbose and progress:
                    first = record.feedback.strip().splitlines()[0] if record.feedback.strip() else ""
                    console.print(f"[{context}] {record.task_id.split('#r')[0]} attempt {a + 1}/{cfg.attempts}: "
                                  f"reward {record.env_reward:.2f} - {first[:100]}  (notes: {path})")

            results = runner.run(jobs, seeds=job_seeds(len(jobs), cfg.seed), on_episode=on_episode)
        all_results += results
        rates[context] = pass_rates(results, cfg.attempts)
    info = {"env": env.name, "target": cfg.target, "tasks": cfg.tasks, "attempts": cfg.attempts,
            "repeats": cfg.repeats, "contexts": list(cfg.contexts), "seed": cfg.seed,
            "seconds": round(time.time() - t0, 1), "config": cfg.model_dump(mode="json"), **(meta or {})}
    write_report(all_results, out, title=f"{env.name}: Ralph loop, reward by attempt", meta=info,
                 reward_range=reward_bounds(env, cfg.rollout))
    _write_rates(out, rates, info)
    _print_rates(rates, console, env.name)
    console.print(f"wrote {out}/ralph.md, ralph.json, notes/, results.json, episodes.csv, trajectories.jsonl, "
                  f"reward_by_position.png; browse the attempts with `codrl view {out}`")
    return rates


def _write_rates(out: Path, rates: dict[str, ContextRates], info: dict[str, Any]) -> None:
    RalphResults(meta=info, rates=rates).write(out / "ralph.json")
    header, rows = ralph_table(rates)
    lines = [f"# Ralph loop: {info['target']} ({info['tasks']} task(s), {info['attempts']} attempts)", "",
             "Pass rate per attempt: the fraction of loops whose attempt passed every test; in brackets the mean "
             "reward (fraction of tests passed).", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += ["", "Solved by attempt k (any attempt up to k passed): " + "; ".join(
        f"{c}: " + ", ".join(fmt_number(r.solved_by, 2) for r in v.attempts) for c, v in rates.items())]
    (out / "ralph.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _print_rates(rates: dict[str, ContextRates], console: Console, name: str) -> None:
    header, rows = ralph_table(rates)
    table = Table(title=f"{name}: pass rate per attempt (mean reward)")
    for h in header:
        table.add_column(h, justify="right")
    for r in rows:
        table.add_row(*r)
    console.print(table)


