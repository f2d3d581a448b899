"""Rollout workers as Ray actors: lifecycles played by several copies of the policy at once.

:class:`RayRolloutPool` has the contract of :meth:`LifecycleRunner.run
<codrl.rollout.lifecycle.LifecycleRunner.run>` (results in job order, ``on_done`` per finished
lifecycle, one seed per job), but the lifecycles are played by ``rollout_workers`` Ray actors, each
holding its own backend built by a picklable zero-argument factory
(``functools.partial(build_policy, cfg)``). Ray does the scheduling, transport and process
management; this module only decides what each actor plays next.

* **Chunks.** Jobs go out in contiguous chunks (a pack's repeats are neighbours, so they mostly
  share a chunk and the worker's KV cache serves their common first prompt), each large enough for
  the worker's engine to batch many lifecycles, and small enough that there are a few per worker:
  the next chunk goes to whichever worker is free first (``ray.wait``), so a slow worker simply
  plays fewer chunks.
* **Seeds.** Per-job seeds are drawn on the driver, so what a lifecycle samples depends on its seed
  alone, never on which worker plays it or with which other lifecycles.
* **Weights.** :meth:`RayRolloutPool.set_weights` puts the tensors into Ray's object store once;
  every later chunk carries a reference to them, and a worker whose weights are older loads them
  (``copy_`` into its parameters of those names) before it plays. A worker that joins later (a
  replacement) catches up the same way, and every experience carries the version the worker used.
* **Faults.** A worker that dies (its process, or its whole node: a node lost from a multi-node
  cluster) has its chunk re-queued whole: a chunk's results count only when its call returns, so
  nothing is counted twice. Dead workers are replaced, on whichever nodes have room, while the
  pool's restart budget lasts; when no worker is left, :meth:`RayRolloutPool.run` raises. Workers
  are spread over the nodes (Ray's ``SPREAD`` strategy), so one node's loss takes few of them.

Ray is optional (``pip install 'codrl[ray]'``) and imported only when a pool is built.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from typing_extensions import Self

from codrl.backends.hf import HFBackend
from codrl.errors import CodrlError
from codrl.rollout.config import RolloutConfig
from codrl.rollout.experience import LifecycleResult
from codrl.rollout.lifecycle import Job, LifecycleRunner, seeds_for
from codrl.train.checkpoint import load_tensors
from codrl.train.config import DistributedConfig

logger = logging.getLogger(__name__)

#: Chunks per worker in one run: enough for a fast worker to take over a slow one's share, few
#: enough that each chunk still gives the engine a large batch.
CHUNKS_PER_WORKER = 2

BackendFactory = Callable[[], HFBackend]


def import_ray() -> Any:
    """The ``ray`` module, or a CodrlError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise CodrlError("Ray rollout workers need Ray: pip install 'codrl[ray]'") from None
    return ray


# -- connecting ---------------------------------------------------------------------------------
def connect(dist: DistributedConfig) -> None:
    """Connect this process to Ray as ``dist`` says, unless it already is.

    With no ``ray_address`` a local instance is started (no dashboard) declaring at least enough
    CPUs for every worker, so ``rollout_workers`` actors of ``worker_cpus`` each always fit on
    this machine. With an address, joining must succeed within ``connect_timeout_s``: a dead
    address fails with a one-line CodrlError naming it (``ray.init`` alone would retry for minutes).
    """
    ray = import_ray()
    if ray.is_initialized():
        return
    if dist.ray_address is None:
        _start_local(ray, dist)
        return
    deadline = time.monotonic() + dist.connect_timeout_s
    _probe(dist.ray_address, dist.connect_timeout_s)
    _init_before(ray, dist.ray_address, deadline, dist.connect_timeout_s)


def _start_local(ray: Any, dist: DistributedConfig) -> None:
    """Start a local Ray instance sized for the workers; GPU requests must fit this machine's GPUs
    (a worker that can never be placed would otherwise wait forever)."""
    workers = dist.rollout_workers + dist.train_workers
    cpus = max(os.cpu_count() or 1, math.ceil(workers * dist.worker_cpus))
    ray.init(num_cpus=cpus, include_dashboard=False, logging_level=logging.WARNING)
    gpus = ray.cluster_resources().get("GPU", 0.0)
    if workers and dist.worker_gpus > gpus:
        raise CodrlError(f"distributed.worker_gpus: {dist.worker_gpus} GPUs per worker, but this machine "
                         f"has {gpus:g}")


def _host_port(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of a ``host:port`` or ``ray://host:port`` address; None for ``auto`` etc."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    return (host.strip("[]"), int(port)) if host and port.isdigit() else None


def _probe(address: str, timeout_s: float) -> None:
    """Fail fast when nothing listens at ``address`` (refused, unreachable, or no reply in time)."""
    target = _host_port(address)
    if target is None:
        return
    try:
        socket.create_connection(target, timeout=timeout_s).close()
    except OSError as e:
        raise CodrlError(f"distributed.ray_address: no Ray cluster answers at {address!r}: "
                         f"{e.strerror or type(e).__name__} (connect_timeout_s={timeout_s:g})") from None


def _init_before(ray: Any, address: str, deadline: float, timeout_s: float) -> None:
    """``ray.init(address)`` bounded by ``deadline``.

    The call runs in a daemon thread because it cannot be interrupted: if something answers at the
    port but never completes Ray's handshake, the caller gets its error on time and the stuck
    thread dies with the process.
    """
    outcome: dict[str, BaseException | None] = {}

    def join() -> None:
        try:
            ray.init(address=address, logging_level=logging.WARNING)
            outcome["error"] = None
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            outcome["error"] = e

    thread = threading.Thread(target=join, name="codrl-ray-connect", daemon=True)
    thread.start()
    thread.join(max(0.0, deadline - time.monotonic()))
    if "error" not in outcome:
        raise CodrlError(f"distributed.ray_address: the Ray cluster at {address!r} did not answer within "
                         f"{timeout_s:g}s (distributed.connect_timeout_s)")
    error = outcome["error"]
    if error is not None:
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise CodrlError(f"distributed.ray_address: cannot join the Ray cluster at {address!r}: {first_line}")


# -- the worker -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class WeightsRef:
    """Weights in Ray's object store, as chunks carry them to the workers.

    ``sync`` numbers the pool's :meth:`RayRolloutPool.set_weights` calls (what a worker compares
    to know whether it is behind); ``version`` is the policy version stamped on experiences. The
    object reference sits in a list because Ray resolves top-level references before a call, and
    a worker that already holds these weights should not fetch them again.
    """

    sync: int
    version: int
    ref: list[Any]


class RolloutWorker:
    """Body of a rollout actor: one backend, playing chunks of jobs with a :class:`LifecycleRunner`.

    The backend is built by :meth:`start` rather than in the constructor, so that a factory error
    (a bad model path) comes back to the driver as that exception, not as an anonymous actor death.
    """

    def __init__(self, factory: BackendFactory, threads: int) -> None:
        self.factory = factory
        self.threads = threads
        self.backend: HFBackend | None = None
        self.sync = 0
        self.version = 0

    def start(self) -> None:
        """Build the backend now (the pool calls this first, so that start-up errors show at once)."""
        self._built()

    def node_id(self) -> str:
        """The Ray node this worker runs on (hex id)."""
        import ray

        return str(ray.get_runtime_context().get_node_id())

    def _built(self) -> HFBackend:
        if self.backend is None:
            import transformers

            torch.set_num_threads(self.threads)  # before the model runs: its first passes set up thread pools
            transformers.utils.logging.disable_progress_bar()  # one "Loading weights" bar per worker is noise
            self.backend = self.factory()
        return self.backend

    def play(self, jobs: list[Job], seeds: list[int], cfg: RolloutConfig,
             weights: WeightsRef | None) -> list[LifecycleResult]:
        """Catch up to ``weights`` if behind, then play ``jobs`` with their seeds."""
        backend = self._built()
        if weights is not None and weights.sync != self.sync:
            self._load(backend, weights)
        runner = LifecycleRunner(backend, cfg)
        runner.policy_version = self.version
        return runner.run(jobs, seeds=seeds)

    def _load(self, backend: HFBackend, weights: WeightsRef) -> None:
        import ray

        load_tensors(backend.model, ray.get(weights.ref[0]))  # in place: the backend drops its KV cache
        self.sync, self.version = weights.sync, weights.version


# -- the pool -------------------------------------------------------------------------------------
class RayRolloutPool:
    """Plays lifecycles on ``dist.rollout_workers`` Ray actors; a drop-in for :class:`LifecycleRunner`.

    ``factory`` builds a worker's backend (called once per worker, in the worker, so it must pickle);
    ``cfg`` is the rollout config sent with every chunk (assign a new one to play differently, as
    with ``LifecycleRunner.cfg``). ``chunk_size`` fixes the lifecycles per chunk (default: a
    :data:`CHUNKS_PER_WORKER`-th of a worker's share, at most ``cfg.max_concurrent``);
    ``restarts`` is how many dead workers may be replaced over the pool's life (default: one per
    worker). Construction returns once every worker has built its backend.
    """

    needs_weights = True

    def __init__(self, factory: BackendFactory, cfg: RolloutConfig, dist: DistributedConfig, *,
                 chunk_size: int | None = None, restarts: int | None = None) -> None:
        if dist.rollout_workers < 1:
            raise CodrlError("distributed.rollout_workers: a Ray rollout pool needs at least 1 worker")
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        connect(dist)
        self._ray = import_ray()
        self.cfg = cfg
        self.chunk_size = chunk_size
        self.restarts_left = dist.rollout_workers if restarts is None else restarts
        #: Workers that died and whose chunks were replayed elsewhere (over the pool's life).
        self.failures = 0
        # SPREAD: workers go to as many nodes as have room, so losing one node loses few of them.
        self._actor_cls = self._ray.remote(RolloutWorker).options(
            num_cpus=dist.worker_cpus, num_gpus=dist.worker_gpus, resources=dict(dist.worker_resources) or None,
            max_restarts=0, scheduling_strategy="SPREAD")
        self._factory = factory
        self._threads = dist.worker_threads
        self._weights: WeightsRef | None = None
        self._version = 0
        self.workers: list[Any] = [self._spawn() for _ in range(dist.rollout_workers)]
        self._wait_ready(self.workers)

    @property
    def policy_version(self) -> int:
        """Version of the weights the workers play with: 0 for the factory's, then as given to
        :meth:`set_weights`. Experiences carry the version their worker actually used."""
        return self._version

    def _spawn(self) -> Any:
        return self._actor_cls.remote(self._factory, self._threads)

    def _wait_ready(self, workers: list[Any]) -> None:
        """Wait until ``workers`` have built their backends; a CodrlError of the factory is re-raised as is."""
        try:
            self._ray.get([w.start.remote() for w in workers])
        except self._ray.exceptions.RayError as e:
            self.close()
            cause = getattr(e, "cause", None)  # set when the factory raised
            if isinstance(cause, CodrlError):
                raise cause from None
            raise

    def set_weights(self, tensors: dict[str, torch.Tensor] | None, version: int) -> None:
        """Make every worker play with ``tensors`` (parameter name -> value) from its next chunk on.

        The tensors go into Ray's object store once (all workers read that one copy); any subset
        of the model's parameters may be given: LoRA adapters or full weights.
        """
        if tensors is None:
            raise ValueError("Ray rollout workers need the trainable tensors")
        sync = self._weights.sync + 1 if self._weights else 1
        cpu = {name: t.detach().cpu() for name, t in tensors.items()}
        self._weights = WeightsRef(sync, version, [self._ray.put(cpu)])
        self._version = version

    def run(self, jobs: Sequence[Job], on_done: Callable[[LifecycleResult], None] | None = None,
            seeds: Sequence[int] | None = None) -> list[LifecycleResult]:
        """Play every job once on the workers; results come back in job order.

        ``seeds`` (one per job) default to draws from the global torch RNG in job order, as in
        :meth:`LifecycleRunner.run`. ``on_done`` is called on the driver as each chunk returns.
        """
        seeds = seeds_for(jobs, seeds)
        results: list[LifecycleResult | None] = [None] * len(jobs)
        queue = deque(self._chunks(len(jobs)))
        idle = list(self.workers)
        in_flight: dict[Any, tuple[Any, range]] = {}  # call -> (worker, its chunk)
        death: BaseException | None = None
        while queue or in_flight:
            while queue and idle:  # the next chunk goes to whichever worker is free
                worker, span = idle.pop(), queue.popleft()
                call = worker.play.remote([jobs[i] for i in span], [seeds[i] for i in span], self.cfg, self._weights)
                in_flight[call] = (worker, span)
            if not in_flight:
                raise RuntimeError(f"no rollout worker is left ({self.failures} died, no restarts left); "
                                   f"{sum(map(len, queue))} of {len(jobs)} lifecycles unplayed") from death
            [call], _ = self._ray.wait(list(in_flight), num_returns=1)
            worker, span = in_flight.pop(call)
            try:
                played: list[LifecycleResult] = self._ray.get(call)
            except (self._ray.exceptions.RayActorError, self._ray.exceptions.ObjectLostError) as e:
                # the worker died (its process, or its whole node) or its answer was lost with its node
                death = e
                queue.appendleft(span)  # replayed whole: none of its results was counted
                idle.extend(self._replace(worker, e, len(span)))
                continue
            for i, result in zip(span, played, strict=True):
                results[i] = result
                if on_done is not None:
                    on_done(result)
            idle.append(worker)
        return [r for r in results if r is not None]

    def _chunks(self, n: int) -> list[range]:
        size = self.chunk_size or max(1, min(self.cfg.max_concurrent,
                                             math.ceil(n / (CHUNKS_PER_WORKER * max(1, len(self.workers))))))
        return [range(start, min(n, start + size)) for start in range(0, n, size)]

    def _replace(self, dead: Any, error: BaseException, n_jobs: int) -> list[Any]:
        """Drop a dead worker; start a replacement while the restart budget lasts (returned, or [])."""
        self.failures += 1
        self.workers.remove(dead)
        self._ray.kill(dead)  # a worker reported dead must not come back half-alive
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        if self.restarts_left <= 0:
            logger.warning("rollout worker died (%s); its %d lifecycles go to the %d left", first_line, n_jobs,
                           len(self.workers))
            return []
        self.restarts_left -= 1
        logger.warning("rollout worker died (%s); replacing it, its %d lifecycles are re-queued", first_line, n_jobs)
        fresh = self._spawn()
        self.workers.append(fresh)
        return [fresh]

    def close(self) -> None:
        """Stop the workers. Ray itself stays up (it is process-wide and stops at exit)."""
        for worker in self.workers:
            self._ray.kill(worker)
        self.workers = []

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
