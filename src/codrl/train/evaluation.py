"""Evaluations during training: play every evaluation environment, report it, keep its curve.

:class:`TrainingEvaluations` plays the configured evaluation packs (the same packs at every step:
a pure function of the run's seed) with the current policy, writes each report under
``<output_dir>/eval/<tag>/`` (``.../<env>/`` with a mixture), logs ``eval/pos<i>`` and keeps the
summaries, from which :meth:`TrainingEvaluations.write_curves` draws reward by position over
training. The results of the context the run plays are used (``rollout.result_mode``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from codrl.backends.base import Backend
from codrl.envs import CoDEnv
from codrl.eval.metrics import Summary, summarize
from codrl.eval.report import plot_panels, print_summary, write_report
from codrl.eval.runner import play, reward_bounds
from codrl.rollout.experience import LifecycleResult
from codrl.rollout.lifecycle import Job, LifecycleRunner, job_seeds, make_jobs
from codrl.train.config import TrainConfig

#: Plays jobs with their seeds on a runner (the trainer's, which shares them out under torch.distributed).
PlayJobs = Callable[[LifecycleRunner, list[Job], list[int]], list[LifecycleResult]]


class TrainingEvaluations:
    """The evaluations of one training run and their summaries (``summaries[env][step]``)."""

    def __init__(self, cfg: TrainConfig, envs: Sequence[CoDEnv], out: Path, console: Console,
                 is_main: bool = True) -> None:
        self.cfg, self.envs, self.out, self.console, self.is_main = cfg, list(envs), out, console, is_main
        self.summaries: dict[str, dict[int, Summary]] = {}

    def run(self, tag: str, step: int, backend: Backend, log: Callable[[dict[str, Any], int], None],
            play_jobs: PlayJobs | None = None) -> dict[str, Summary]:
        """Evaluate every environment with ``backend`` at ``step``; report under ``eval/<tag>``.
        ``play_jobs`` plays the packs where the caller shares them out (torch.distributed)."""
        ev = self.cfg.eval
        rcfg = self.cfg.rollout.model_copy(update={"pack_size": ev.pack_size or self.cfg.rollout.pack_size,
                                                   "repeats": ev.repeats, "temperature": ev.temperature})
        out: dict[str, Summary] = {}
        single = len(self.envs) == 1
        for env in self.envs:
            torch.manual_seed(self.cfg.seed + 17)
            if play_jobs is not None:
                packs = [(env, env.sample_pack(ev.split, self.cfg.seed + 1, i, rcfg.pack_size)) for i in range(ev.packs)]
                jobs = make_jobs(packs, rcfg)
                results = play_jobs(LifecycleRunner(backend, rcfg), jobs, job_seeds(len(jobs)))
            else:
                results = play(backend, env, ev.split, ev.packs, self.cfg.seed + 1, rcfg, f"eval {env.name} {tag}",
                               self.console, self.cfg.log.progress)
            folder = self.out / "eval" / tag if single else self.out / "eval" / tag / env.name
            if self.is_main:
                summary = write_report(results, folder, title=f"{env.name} / {ev.split} at {tag}",
                                       meta={"step": step, "env": env.name, "chance_reward": env.chance_reward},
                                       reward_range=reward_bounds(env, rcfg))
                print_summary(summary, self.console)
            else:
                summary = summarize(results, reward_range=reward_bounds(env, rcfg))
            self.summaries.setdefault(env.name, {})[step] = summary
            prefix = "eval" if single else f"eval/{env.name}"
            log({f"{prefix}/pos{p.position}": p.mean_reward for p in summary.positions.get(rcfg.result_mode, [])},
                step)
            out[env.name] = summary
        return out

    def write_curves(self) -> None:
        """Reward-by-position curves of every evaluation (one per step): one panel per environment."""
        panels = {}
        mode = self.cfg.rollout.result_mode  # the context the evaluations played
        for env in self.envs:
            evals = self.summaries.get(env.name)
            if evals:
                curves = {f"step {s}": summ.positions.get(mode, []) for s, summ in sorted(evals.items())}
                panels[f"{env.name}: reward by pack position during training"] = (curves, env.chance_reward)
        if panels:
            plot_panels(panels, self.out / "reward_by_position.png", title="reward by pack position during training")
            self.console.print(f"wrote {self.out / 'reward_by_position.png'}; browse the evaluations' lifecycles "
                               f"with `codrl view {self.out}`")
