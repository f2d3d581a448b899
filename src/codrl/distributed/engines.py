"""The rollout-engine seam: one protocol for everything that plays a training step's lifecycles.

A training step's rollout is always the same two moves: bring the engine's weights up to the
current version, then play the step's jobs. :class:`RolloutEngine` is that seam; the engines:

* :class:`RunnerEngine`: a lifecycle runner in this process over the trained model itself (the
  transformers backend) or over a copy it refreshes from that model (vLLM). Under torch.distributed
  every rank plays its share of the jobs and every rank gets all results;
* :class:`~codrl.distributed.async_rollout.LocalRolloutEngine`: a private frozen copy of the policy
  in this process, loaded from the trainable tensors it is given;
* :class:`~codrl.distributed.ray_rollout.RayRolloutPool`: Ray workers, loaded the same way;
* :class:`~codrl.distributed.async_rollout.AsyncEngine`: plays later steps ahead of training on
  one of the two above;
* :class:`RankZeroEngine`: an engine that exists on rank 0 only, its results sent to every rank.

An engine says whether :meth:`RolloutEngine.set_weights` needs the trainable tensors
(:attr:`RolloutEngine.needs_weights`): gathering them costs a full copy (and collectives under
FSDP2), so the trainer gathers them only for engines that hold a copy of their own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch

from codrl.distributed.torch_dist import TrainedModel
from codrl.rollout.experience import LifecycleResult
from codrl.rollout.lifecycle import Job, LifecycleRunner, seeds_for

#: Trainable tensors by parameter name (CPU copies), or None where this rank holds none.
Weights = dict[str, torch.Tensor] | None


class RolloutEngine(Protocol):
    """What plays a step's lifecycles with a given version of the weights."""

    #: The weights version the engine plays with (the number of updates they had seen).
    policy_version: int
    #: Whether :meth:`set_weights` must be given the trainable tensors (the engine holds a copy of
    #: its own); False: it reads the trained model itself and takes only the version.
    needs_weights: bool

    def run(self, jobs: Sequence[Job], on_done: Callable[[LifecycleResult], None] | None = None,
            seeds: Sequence[int] | None = None) -> list[LifecycleResult]:
        """Play every job once (``seeds``: one per job); results in job order."""

    def set_weights(self, tensors: Weights, version: int) -> None:
        """Play with the weights of ``version`` from the next :meth:`run` on."""

    def close(self) -> None:
        """Release workers, threads and model copies (a second call does nothing)."""


def play_shared(parallel: TrainedModel, runner: LifecycleRunner, jobs: list[Job], seeds: list[int],
                clear_cache: Callable[[], None] | None = None) -> list[LifecycleResult]:
    """Play ``jobs`` (one seed each) on ``runner``, shared out over the torch.distributed ranks.

    Rank r plays ``jobs[r::world]`` with those jobs' own seeds, so a lifecycle samples the same
    whichever rank plays it, and every rank gets all results in job order (advantages need whole
    groups of repeats). ``clear_cache`` drops the backend's KV states when the rollout gathered
    parameters in place (FSDP2): states computed by other weights are stale.
    """
    ctx = parallel.ctx
    if ctx.world_size == 1:
        return runner.run(jobs, seeds=seeds)
    rank, world = ctx.rank, ctx.world_size
    with parallel.generation() as gathered:
        if gathered and clear_cache is not None:
            clear_cache()
        mine = runner.run(jobs[rank::world], seeds=seeds[rank::world])
    shares = ctx.gather_objects(mine)
    return [shares[i % world][i // world] for i in range(len(jobs))]


class RunnerEngine:
    """A lifecycle runner in this process over the trained model or a copy refreshed from it.

    ``refresh`` (vLLM) copies the trained model's current weights into the engine when a new
    version is set; without it the runner's backend samples from the trained model itself.
    ``parallel`` shares the jobs out over torch.distributed ranks (:func:`play_shared`).
    """

    needs_weights = False

    def __init__(self, runner: LifecycleRunner, parallel: TrainedModel, *,
                 refresh: Callable[[], Any] | None = None, clear_cache: Callable[[], None] | None = None) -> None:
        self.runner, self.parallel = runner, parallel
        self.refresh, self.clear_cache = refresh, clear_cache
        self.policy_version = 0

    def run(self, jobs: Sequence[Job], on_done: Callable[[LifecycleResult], None] | None = None,
            seeds: Sequence[int] | None = None) -> list[LifecycleResult]:
        if self.parallel.ctx.world_size == 1:
            return self.runner.run(jobs, on_done=on_done, seeds=seeds)
        if on_done is not None:
            raise ValueError("on_done is called in the process that plays a lifecycle: not across ranks")
        return play_shared(self.parallel, self.runner, list(jobs), list(seeds_for(jobs, seeds)), self.clear_cache)

    def set_weights(self, tensors: Weights, version: int) -> None:
        if self.refresh is not None:
            self.refresh()
        self.policy_version = self.runner.policy_version = version

    def close(self) -> None:
        """Nothing of its own to release: the backend belongs to whoever built it."""


class RankZeroEngine:
    """An engine that exists on rank 0 only (Ray workers, asynchronous steps): rank 0 plays and
    every rank gets the results; ``inner`` is None on the other ranks, which still take part in
    every call (the results come by broadcast)."""

    needs_weights = True

    def __init__(self, inner: RolloutEngine | None, parallel: TrainedModel) -> None:
        self.inner, self.ctx = inner, parallel.ctx
        self.policy_version = 0

    def run(self, jobs: Sequence[Job], on_done: Callable[[LifecycleResult], None] | None = None,
            seeds: Sequence[int] | None = None) -> list[LifecycleResult]:
        results = self.inner.run(jobs, on_done=on_done, seeds=seeds) if self.inner is not None else None
        return self.ctx.broadcast_object(results)

    def set_weights(self, tensors: Weights, version: int) -> None:
        if self.inner is not None:
            self.inner.set_weights(tensors, version)
        self.policy_version = version

    def close(self) -> None:
        if self.inner is not None:
            self.inner.close()
            self.inner = None
