"""Asynchronous steps: the next steps' rollouts are played while the current step trains.

With ``lookahead`` L, step s's lifecycles are sampled by the weights of version ``max(v0, s - L)``
(version = number of updates applied; v0 the version training started or resumed from), so a
background thread can play step s while the trainer is still updating steps s - L .. s - 1. The
choice of version is a function of the step alone, never of thread timing: with per-job seeds a
run is as reproducible as a synchronous one. Every experience carries the version that sampled it
(``policy_version``); the trainer measures staleness as ``step - policy_version`` and drops or
importance-corrects what exceeds ``max_staleness`` (:func:`split_stale`).

The engine that plays may be a private copy of the policy in this process
(:class:`LocalRolloutEngine`) or a pool of Ray workers
(:class:`codrl.distributed.ray_rollout.RayRolloutPool`): any
:class:`~codrl.distributed.engines.RolloutEngine`. :class:`AsyncEngine` is itself one, so the
trainer plays asynchronous steps through the same seam as synchronous ones.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from codrl.backends.hf import HFBackend
from codrl.distributed.engines import RolloutEngine, Weights
from codrl.rollout.config import RolloutConfig
from codrl.rollout.experience import LifecycleResult
from codrl.rollout.lifecycle import Job, LifecycleRunner
from codrl.train.checkpoint import load_tensors


class LocalRolloutEngine:
    """A lifecycle runner over a private, frozen copy of the policy, for asynchronous steps in one
    process: the trainer updates its own model while this copy samples; :meth:`set_weights` then
    brings the copy up to date (the copy's KV cache clears itself when its weights change)."""

    needs_weights = True

    def __init__(self, backend: HFBackend, cfg: RolloutConfig) -> None:
        model = copy.deepcopy(backend.model)
        model.eval()
        model.requires_grad_(False)
        self.backend = HFBackend(model, backend.tokenizer, max_batch_size=backend.max_batch_size,
                                 kv_cache_mb=backend.store.budget_bytes / 2**20, prefill_tokens=backend.prefill_tokens,
                                 chat_template_kwargs=backend.chat_template_kwargs)
        self.runner = LifecycleRunner(self.backend, cfg)
        self._names = [n for n, p in backend.model.named_parameters() if p.requires_grad]
        self.policy_version = 0

    def run(self, jobs: Sequence[Job], on_done: Callable[[LifecycleResult], None] | None = None,
            seeds: Sequence[int] | None = None) -> list[LifecycleResult]:
        self.runner.policy_version = self.policy_version
        return self.runner.run(jobs, on_done=on_done, seeds=seeds)

    def set_weights(self, tensors: Weights, version: int) -> None:
        if tensors is None:
            raise ValueError("a policy copy needs the trainable tensors")
        missing = [n for n in self._names if n not in tensors]
        if missing:
            raise KeyError(f"weights lack trainable tensor {missing[0]!r}")
        load_tensors(self.backend.model, tensors)
        self.policy_version = version

    def close(self) -> None:
        self.backend.close()


#: A step's jobs and their sampling seeds.
StepPlan = Callable[[int], tuple[list[Job], list[int]]]


class AsyncRollouts:
    """Plays steps ``start .. stop-1`` in a background thread, each with the weights of version
    ``max(start_version, step - lookahead)``; the trainer publishes each new version with
    :meth:`publish` and takes each step's lifecycles with :meth:`get`."""

    def __init__(self, engine: RolloutEngine, plan: StepPlan, *, start: int, stop: int, lookahead: int,
                 weights: dict[str, torch.Tensor], version: int) -> None:
        if lookahead < 1:
            raise ValueError("lookahead must be >= 1")
        self.engine = engine
        self.plan = plan
        self.start, self.stop, self.lookahead = start, stop, lookahead
        self.start_version = version
        self._weights: dict[int, dict[str, torch.Tensor]] = {version: weights}
        self._results: dict[int, tuple[list[int], list[LifecycleResult]]] = {}  # step -> (seeds, lifecycles)
        self._error: BaseException | None = None
        self._closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name="codrl-async-rollouts", daemon=True)
        self._thread.start()

    def version_for(self, step: int) -> int:
        """The weights version that samples ``step``."""
        return max(self.start_version, step - self.lookahead)

    def publish(self, version: int, weights: dict[str, torch.Tensor]) -> None:
        """Make the weights of ``version`` (detached CPU tensors) available to later steps."""
        with self._cond:
            self._weights[version] = weights
            self._cond.notify_all()

    def get(self, step: int, seeds: Sequence[int] | None = None) -> list[LifecycleResult]:
        """Step ``step``'s finished lifecycles (blocks until played; re-raises the thread's error).
        ``seeds``: the caller's seeds of that step's jobs, checked against the ones played."""
        if not self.start <= step < self.stop:
            raise ValueError(f"step {step} is not among the steps played ahead ({self.start}..{self.stop - 1})")
        with self._cond:
            self._cond.wait_for(lambda: step in self._results or self._error is not None or self._closed)
            if step not in self._results:
                raise RuntimeError(f"asynchronous rollouts stopped before step {step}") from self._error
            played, results = self._results.pop(step)
        if seeds is not None and list(seeds) != played:
            raise ValueError(f"asynchronous rollouts played step {step}; these jobs are another step's")
        return results

    def close(self) -> None:
        """Stop after the step being played (if any) and wait for the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()

    def _wait_weights(self, version: int) -> dict[str, torch.Tensor] | None:
        with self._cond:
            self._cond.wait_for(lambda: version in self._weights or self._closed)
            if self._closed:
                return None
            for old in [v for v in self._weights if v < version]:
                del self._weights[old]  # no later step is sampled by an older version
            return self._weights[version]

    def _loop(self) -> None:
        loaded: int | None = None  # the engine starts with weights of its own (a Ray worker's: the factory's)
        try:
            for step in range(self.start, self.stop):
                version = self.version_for(step)
                weights = self._wait_weights(version)
                if weights is None:
                    return
                if loaded != version:
                    self.engine.set_weights(weights, version)
                    loaded = version
                jobs, seeds = self.plan(step)
                results = self.engine.run(jobs, seeds=seeds)
                with self._cond:
                    self._results[step] = (list(seeds), results)
                    self._cond.notify_all()
        except BaseException as e:  # handed to the trainer by get()
            with self._cond:
                self._error = e
                self._cond.notify_all()


class AsyncEngine:
    """The asynchronous seam over ``inner`` (a policy copy or Ray workers): steps are played ahead
    of training by :class:`AsyncRollouts`, which starts at the first :meth:`set_weights` (its
    version is the step training starts from: one update per step) and plays until ``stop``.

    :meth:`run` hands out the steps in order and checks that the caller asks for the lifecycles
    that were played (the same seeds); :meth:`set_weights` publishes each new version.
    """

    needs_weights = True

    def __init__(self, inner: RolloutEngine, plan: StepPlan, *, stop: int, lookahead: int) -> None:
        self.inner, self.plan, self.stop, self.lookahead = inner, plan, stop, lookahead
        self.ahead: AsyncRollouts | None = None
        self._next = 0
        self.policy_version = 0

    def set_weights(self, tensors: Weights, version: int) -> None:
        if tensors is None:
            raise ValueError("asynchronous rollouts need the trainable tensors")
        if self.ahead is None:
            self.ahead = AsyncRollouts(self.inner, self.plan, start=version, stop=self.stop, lookahead=self.lookahead,
                                       weights=tensors, version=version)
            self._next = version
        else:
            self.ahead.publish(version, tensors)
        self.policy_version = version

    def run(self, jobs: Sequence[Job], on_done: Callable[[LifecycleResult], None] | None = None,
            seeds: Sequence[int] | None = None) -> list[LifecycleResult]:
        if self.ahead is None:
            raise RuntimeError("asynchronous rollouts start with the first set_weights")
        results = self.ahead.get(self._next, seeds)
        self._next += 1
        if on_done is not None:
            for r in results:
                on_done(r)
        return results

    def close(self) -> None:
        """Stop playing ahead and close the inner engine."""
        if self.ahead is not None:
            self.ahead.close()
            self.ahead = None
        if self.inner is not None:
            self.inner.close()
            self.inner = None  # type: ignore[assignment]


@dataclass
class StaleSplit:
    """A step's lifecycles split by staleness (``step - policy_version`` of their experiences)."""

    fresh: list[LifecycleResult]
    stale: list[LifecycleResult]
    max_staleness: int  # the largest staleness among ALL lifecycles of the step

    def metrics(self, kept: bool) -> dict[str, Any]:
        n = sum(len(r.experiences) for r in self.stale)
        return {"async/staleness_max": self.max_staleness, "async/stale_lifecycles": len(self.stale),
                "async/stale_experiences": n, "async/dropped_experiences": 0 if kept else n}


def split_stale(results: list[LifecycleResult], step: int, max_staleness: int) -> StaleSplit:
    """Lifecycles whose experiences were sampled at most ``max_staleness`` versions before ``step``,
    and the others. A lifecycle is played by one version, so groups stay whole."""
    fresh, stale, worst = [], [], 0
    for r in results:
        age = max((step - e.policy_version for e in r.experiences), default=0)
        worst = max(worst, age)
        (fresh if age <= max_staleness else stale).append(r)
    return StaleSplit(fresh, stale, worst)
