"""Evaluation: play N packs of an environment split and report reward per pack position."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from codrl.backends.base import Backend
from codrl.config import EnvName
from codrl.envs import SPLITS, CoDEnv, make_env
from codrl.errors import CodrlError, bad_choice
from codrl.eval.metrics import Summary
from codrl.eval.report import print_summary, write_report
from codrl.rollout.config import ContextName, RolloutConfig, result_mode
from codrl.rollout.experience import LifecycleResult
from codrl.rollout.lifecycle import LifecycleRunner, make_jobs


#: A context an evaluation can play (a ``rollout.mode`` value: a built-in name or an import path).
Context = ContextName


class EvalConfig(BaseModel):
    """What to evaluate: an environment split, how many packs, and how to play them.

    ``contexts`` lists the contexts to play the same packs with (each one a full evaluation of
    ``packs`` x ``rollout.repeats`` lifecycles, reported as its own mode): ``cod`` (model-written
    hints), ``nohint`` (no context, the baseline), ``curator`` (a lesson list edited by
    operations) or the import path of a :class:`~codrl.rollout.contexts.Context` of your own.
    Left empty it is ``[rollout.mode]``, plus ``nohint`` with ``baseline: true``;
    ``baseline: true`` also adds ``nohint`` to a given list. With ``rollout.ralph`` each context
    is played as a Ralph loop (modes ``ralph``, ``ralph-nohint``, ``ralph-curator``).
    """

    model_config = ConfigDict(extra="forbid")

    env: EnvName = Field("frozenlake", description="environment name (see `codrl envs`) or import path")
    env_params: dict[str, Any] = Field(default_factory=dict, description="keyword parameters of the environment")
    split: Literal["train", "test"] = "test"
    packs: int = Field(4, ge=1, description="number of packs (worlds) to play")
    seed: int = 0
    baseline: bool = Field(False, description="also run the no-hint baseline (update-context skipped)")
    contexts: list[Context] = Field(
        default_factory=list, description="contexts to compare on the same packs: cod, nohint, curator or an "
                                          "import path 'package.module:ClassName' (default: rollout.mode, plus "
                                          "nohint with baseline)")
    rollout: RolloutConfig = Field(default_factory=lambda: RolloutConfig(repeats=2))

    @model_validator(mode="after")
    def _contexts(self) -> EvalConfig:
        contexts: list[Context] = list(dict.fromkeys(self.contexts)) or [self.rollout.mode]
        if self.baseline and "nohint" not in contexts:
            contexts.append("nohint")
        self.contexts = contexts
        return self


def build_env(name: str, params: dict[str, Any] | None = None) -> CoDEnv:
    """Make an environment, turning bad parameters into user-facing errors."""
    try:
        return make_env(name, **(params or {}))
    except (TypeError, ValueError) as e:
        raise CodrlError(f"env {name!r}: {e}") from None


def reward_bounds(env: CoDEnv, cfg: RolloutConfig) -> tuple[float, float]:
    """Range of the penalised task reward: the env's range, lowered by the length penalty."""
    low, high = env.reward_range
    return low - cfg.length_penalty_coef, high


def play(backend: Backend, env: CoDEnv, split: str, packs: int, seed: int, cfg: RolloutConfig,
         description: str = "lifecycles", console: Console | None = None, progress: bool = True) -> list[LifecycleResult]:
    """Play ``packs`` packs x ``cfg.repeats`` repeats with a progress bar; return the lifecycles."""
    if split not in SPLITS:
        raise bad_choice("split", split, SPLITS)
    pack_list = [(env, env.sample_pack(split, seed, i, cfg.pack_size)) for i in range(packs)]
    jobs = make_jobs(pack_list, cfg)
    runner = LifecycleRunner(backend, cfg)
    if not progress:
        return runner.run(jobs)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("reward {task.fields[reward]:.2f}"), TimeElapsedColumn(), TimeRemainingColumn(),
                  console=console, transient=False) as bar:
        task = bar.add_task(description, total=len(jobs), reward=0.0)
        done: list[float] = []

        def on_done(r: LifecycleResult) -> None:
            done.append(sum(r.env_rewards) / max(1, len(r.env_rewards)))
            bar.update(task, advance=1, reward=sum(done) / len(done))

        return runner.run(jobs, on_done=on_done)


def evaluate(backend: Backend, cfg: EvalConfig, out_dir: Path, *, title: str | None = None,
             meta: dict[str, Any] | None = None, console: Console | None = None,
             progress: bool = True) -> Summary:
    """Play the same packs with every context of ``cfg.contexts``, write the report, print the table.

    The report holds one mode per context (:func:`~codrl.rollout.config.result_mode`) and each
    mode's difference against its no-context baseline when that was played too.
    """
    console = console or Console()
    env = build_env(cfg.env, cfg.env_params)
    torch.manual_seed(cfg.seed)
    t0 = time.time()
    results: list[LifecycleResult] = []
    for context in cfg.contexts:
        rollout = cfg.rollout.model_copy(update={"mode": context})
        results += play(backend, env, cfg.split, cfg.packs, cfg.seed, rollout,
                        f"{env.name} ({result_mode(context, rollout.ralph)})", console, progress)
    info = {"env": env.name, "split": cfg.split, "packs": cfg.packs, "pack_size": cfg.rollout.pack_size,
            "repeats": cfg.rollout.repeats, "seed": cfg.seed, "chance_reward": env.chance_reward,
            "seconds": round(time.time() - t0, 1), "config": cfg.model_dump(mode="json")}
    if env.secret_worlds:  # which secret the worlds came from (a fingerprint, never the key)
        info["world_key"] = env.world_key_fingerprint()
    info.update(meta or {})
    summary = write_report(results, Path(out_dir), title=title or f"{env.name} / {cfg.split}: reward by pack position",
                           meta=info, reward_range=reward_bounds(env, cfg.rollout))
    print_summary(summary, console)
    console.print(f"wrote {out_dir}/results.json, episodes.csv, trajectories.jsonl, reward_by_position.png; "
                  f"browse the lifecycles with `codrl view {out_dir}`")
    return summary
