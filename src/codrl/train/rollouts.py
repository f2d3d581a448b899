"""The trainer's rollouts: what each step plays, and which engine plays it.

What a step plays is a pure function of the seed and the step (:class:`StepPlanner`); the engine
(:mod:`codrl.distributed.engines`) is chosen from the config (:func:`build_engine`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from codrl.algo.offpolicy import recorded_temperature, rollout_logprobs_serve_as_old, trainer_temperature
from codrl.backends.base import Backend
from codrl.backends.hf import HFBackend
from codrl.distributed.async_rollout import AsyncEngine, LocalRolloutEngine, split_stale
from codrl.distributed.engines import RankZeroEngine, RolloutEngine, RunnerEngine
from codrl.distributed.torch_dist import TrainedModel
from codrl.envs import CoDEnv, Pack
from codrl.errors import CodrlError
from codrl.eval.runner import build_env
from codrl.rollout.experience import LifecycleResult
from codrl.rollout.lifecycle import Job, LifecycleRunner, job_seeds, make_jobs
from codrl.train.config import TrainConfig
from codrl.train.policy import build_policy
from codrl.train.update import update_correction


class StepPlanner:
    """The packs, jobs and sampling seeds of every training step: a pure function of (seed, step),
    so a resumed run plays exactly what the uninterrupted one would have."""

    def __init__(self, cfg: TrainConfig, envs: Sequence[CoDEnv]) -> None:
        self.cfg, self.envs = cfg, list(envs)
        weights = np.array([s.weight for s in cfg.envs] or [1.0] * len(self.envs), dtype=float)
        self.weights = weights / weights.sum()

    def packs(self, step: int) -> list[tuple[CoDEnv, Pack]]:
        """The training packs of ``step``: environments drawn by weight, packs by position in the data."""
        rng = np.random.default_rng([self.cfg.seed, step])
        out = []
        for i in range(self.cfg.packs_per_step):
            env = self.envs[int(rng.choice(len(self.envs), p=self.weights))]
            out.append((env, env.sample_pack("train", self.cfg.seed, step * self.cfg.packs_per_step + i,
                                             self.cfg.rollout.pack_size)))
        return out

    def __call__(self, step: int) -> tuple[list[Job], list[int]]:
        """The lifecycles of ``step`` and their sampling seeds."""
        jobs = make_jobs(self.packs(step), self.cfg.rollout)
        return jobs, job_seeds(len(jobs), self.cfg.seed * 1_000_003 + step)


def training_envs(cfg: TrainConfig) -> list[CoDEnv]:
    """The environments packs are drawn from: ``cfg.envs``, or the agent program's task source."""
    if cfg.agent is not None:
        from codrl.serve.tasks import TaskSourceEnv

        return [TaskSourceEnv(cfg.agent.tasks, cfg.agent.name)]
    return [build_env(s.name, s.params) for s in cfg.envs]


def build_engine(cfg: TrainConfig, backend: HFBackend, rollout_backend: Backend, parallel: TrainedModel,
                 plan: Callable[[int], tuple[list[Job], list[int]]]) -> RolloutEngine:
    """The engine of the training rollouts.

    * ``agent``: the user's program, one run per lifecycle, against the training proxy;
    * ``distributed.rollout_workers``: Ray workers, driven by rank 0;
    * ``distributed.async_rollouts``: steps played ahead on the Ray workers or, in one process, on
      a private frozen copy of the policy;
    * otherwise the lifecycle runner over ``rollout_backend`` (the trained model, or vLLM refreshed
      from it after each update), every torch.distributed rank playing its share.
    """
    d, main = cfg.distributed, parallel.ctx.is_main
    if cfg.agent is not None:
        from codrl.serve.agent import AgentEngine
        from codrl.serve.proxy import TrainingProxy

        proxy = TrainingProxy(rollout_backend, cfg=cfg.rollout, api_key=cfg.agent.api_key, require_lifecycle=True)
        return AgentEngine(proxy, cfg.agent, cfg.rollout.max_concurrent, Path(cfg.output_dir) / "agent")
    if d.rollout_workers and cfg.model.engine != "hf":
        raise CodrlError("distributed.rollout_workers: Ray workers play on the transformers backend; "
                         "use model.engine 'hf' with them (vLLM serves one process's rollouts)")
    if d.async_rollouts and not d.rollout_workers:
        if parallel.ctx.active:
            raise CodrlError("distributed.async_rollouts under torch.distributed needs Ray rollout workers "
                             "(distributed.rollout_workers > 0)")
        if not isinstance(rollout_backend, HFBackend):
            raise CodrlError("distributed.async_rollouts in one process needs model.engine 'hf' "
                             "(or Ray rollout workers)")
    if not (d.rollout_workers or d.async_rollouts):
        refresh = None if rollout_backend is backend else partial(rollout_backend.sync_weights, backend.model)  # type: ignore[attr-defined]
        return RunnerEngine(LifecycleRunner(rollout_backend, cfg.rollout), parallel, refresh=refresh,
                            clear_cache=backend.store.clear)
    inner: RolloutEngine | None = None
    if main:  # rank 0 drives the workers or the copy and shares what they played
        if d.rollout_workers:
            from codrl.distributed.ray_rollout import RayRolloutPool

            inner = RayRolloutPool(partial(build_policy, cfg), cfg.rollout, d)
        else:
            inner = LocalRolloutEngine(rollout_backend, cfg.rollout)  # type: ignore[arg-type]
        if d.async_rollouts:
            inner = AsyncEngine(inner, plan, stop=cfg.steps, lookahead=d.lookahead)
    return RankZeroEngine(inner, parallel)


def fresh_lifecycles(cfg: TrainConfig, results: list[LifecycleResult],
                     step: int) -> tuple[list[LifecycleResult], dict[str, Any]]:
    """The lifecycles to train on and the staleness metrics (asynchronous steps only): lifecycles
    sampled more than ``max_staleness`` updates before ``step`` are dropped, or kept with
    ``stale: correct``."""
    d = cfg.distributed
    if not d.async_rollouts:
        return results, {}
    split = split_stale(results, step, d.max_staleness)
    keep = d.stale == "correct"
    return (results if keep else split.fresh), split.metrics(kept=keep)


def rollout_logprobs_are_old(cfg: TrainConfig, backend: HFBackend) -> bool:
    """Whether the rollout's logprobs serve as old logprobs (else they are recomputed): decided by
    :func:`codrl.algo.offpolicy.rollout_logprobs_serve_as_old`.

    The sampler is the trainer when the rollouts ran the trainer's own model code (in-process, an
    asynchronous copy, Ray workers of the transformers backend) at the temperature it trains; not
    for vLLM, whose numerics differ. Under a correction (``offpolicy.mode``, or stale experiences
    kept with ``distributed.stale: correct``) the rollout's logprobs are the behaviour logprobs.
    """
    t = cfg.rollout.temperature
    return rollout_logprobs_serve_as_old(update_correction(cfg), cfg.old_logprobs,
                                         cfg.model.engine == "hf" and backend.token_exact
                                         and trainer_temperature(cfg.offpolicy, t) == recorded_temperature(t))
