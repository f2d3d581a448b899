"""Node loss on a real multi-node Ray cluster, simulated on one machine (``ray.cluster_utils.Cluster``:
a head without CPUs and two worker nodes, each its own raylet).

Rollout workers spread over the nodes; removing a node in the middle of a run re-queues the
chunks its workers held on the survivors, every job is played and counted exactly once, and the
lifecycles equal those one process plays with the same seeds.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterator
from functools import partial
from typing import Any

import pytest

ray = pytest.importorskip("ray")

from codrl.backends.hf import HFBackend  # noqa: E402
from codrl.distributed.ray_rollout import RayRolloutPool  # noqa: E402
from codrl.rollout.config import RolloutConfig  # noqa: E402
from codrl.rollout.experience import LifecycleResult  # noqa: E402
from codrl.rollout.lifecycle import LifecycleRunner, job_seeds, make_jobs  # noqa: E402
from codrl.toy.secret_table import SecretTable  # noqa: E402
from codrl.train.config import DistributedConfig  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.fault]


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[Any, list[Any]]]:
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    nodes = [c.add_node(num_cpus=3) for _ in range(2)]
    c.wait_for_nodes()
    ray.init(address=c.address, logging_level=logging.WARNING, log_to_driver=False)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield c, nodes
    ray.shutdown()
    c.shutdown()


def _slow_policy(path: str, seconds: float) -> HFBackend:
    """The tiny policy, taking ``seconds`` longer over each chunk: chunks stay in flight long enough
    for a node to be lost under them."""
    import time

    backend = HFBackend.from_pretrained(path)
    serve = backend.serve

    def slow_serve(pending: Any, on_result: Any) -> None:
        time.sleep(seconds)
        serve(pending, on_result)

    backend.serve = slow_serve  # type: ignore[method-assign]
    return backend


def _same(got: list[LifecycleResult], want: list[LifecycleResult]) -> None:
    assert [(r.pack_id, r.repeat) for r in got] == [(r.pack_id, r.repeat) for r in want]
    for a, b in zip(got, want, strict=True):
        assert a.task_rewards == b.task_rewards
        assert [x.completion_ids for x in a.experiences] == [x.completion_ids for x in b.experiences]


def test_losing_a_node_mid_run_replays_its_chunks_on_the_survivors(cluster: tuple[Any, list[Any]],
                                                                    tiny_dir: Any) -> None:
    c, nodes = cluster
    cfg = RolloutConfig(pack_size=3, repeats=2, max_new_tokens_solve=3, max_new_tokens_update=4,
                        update_reply_prefix="Hints:")
    env = SecretTable()
    jobs = make_jobs([(env, env.sample_pack("train", 0, i, 3)) for i in range(6)], cfg)
    seeds = job_seeds(len(jobs), 5)
    reference = HFBackend.from_pretrained(str(tiny_dir))
    try:
        want = LifecycleRunner(reference, cfg).run(jobs, seeds=seeds)
    finally:
        reference.close()
    pool = RayRolloutPool(partial(_slow_policy, str(tiny_dir), 2.0), cfg,
                          DistributedConfig(rollout_workers=3), chunk_size=1)
    try:
        where = ray.get([w.node_id.remote() for w in pool.workers])
        assert len(set(where)) == 2  # spread over both worker nodes
        victim = next(n for n in nodes if n.node_id == where[0])
        first_done = threading.Event()
        done: list[LifecycleResult] = []

        def on_done(result: LifecycleResult) -> None:
            done.append(result)
            first_done.set()

        def lose_a_node() -> None:  # while the other chunks are being played
            if first_done.wait(300):
                c.remove_node(victim, allow_graceful=False)

        killer = threading.Thread(target=lose_a_node)
        killer.start()
        got = pool.run(jobs, on_done=on_done, seeds=seeds)
        killer.join()
        assert pool.failures >= 1, "no worker was lost with the node"
        survivors = set(ray.get([w.node_id.remote() for w in pool.workers]))
        assert victim.node_id not in survivors and len(pool.workers) == 3  # replaced on the surviving node
        keys = [(r.pack_id, r.repeat) for r in done]
        assert len(keys) == len(set(keys)) == len(jobs)  # every job counted exactly once
        _same(got, want)
    finally:
        pool.close()
