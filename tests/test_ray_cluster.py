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
from pathlib import Path
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
sys.path.insert(0, str(Path(__file__).parent))


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


def test_losing_a_training_node_is_one_line_and_resume_matches(cluster: tuple[Any, list[Any]], tiny_dir: Any,
                                                                 tmp_path: Any) -> None:
    """Ray Train workers on a node that is lost mid-run: the run fails with one line naming the
    node; on a new node, --resume continues from the last checkpoint and ends as an undisturbed run."""
    import time
    from pathlib import Path

    import torch

    from codrl.distributed.ray_train import train_on_ray
    from codrl.errors import CodrlError
    from codrl.train.config import TrainConfig
    from toy_config import toy_train_config

    c, _ = cluster
    slot = {"codrl_train_slot": 1.0}  # places the training workers on the nodes started with it
    victim = c.add_node(num_cpus=2, resources={"codrl_train_slot": 2})
    c.wait_for_nodes()

    def cfg(out: Path) -> TrainConfig:
        return TrainConfig.model_validate(toy_train_config(
            tiny_dir, steps=4, packs_per_step=4, save_every=1, output_dir=str(out),
            distributed={"train_workers": 2, "worker_cpus": 1, "worker_resources": slot}))

    ref = train_on_ray(cfg(tmp_path / "ref"))
    errors: list[BaseException] = []

    def interrupted() -> None:
        try:
            train_on_ray(cfg(tmp_path / "run"))
        except BaseException as e:  # noqa: BLE001 - collected for the assertions below
            errors.append(e)

    runner = threading.Thread(target=interrupted)
    runner.start()
    latest = tmp_path / "run" / "checkpoints" / "latest"
    deadline = time.monotonic() + 300
    while not latest.is_file() and time.monotonic() < deadline and runner.is_alive():
        time.sleep(0.05)
    assert latest.is_file(), errors
    c.remove_node(victim, allow_graceful=False)
    runner.join(600)
    assert errors and isinstance(errors[0], CodrlError), errors
    line = str(errors[0])
    print("lost-worker error:", line)
    assert "\n" not in line and f"a Ray Train worker was lost on node {victim.node_id}" in line and "--resume" in line
    c.add_node(num_cpus=2, resources={"codrl_train_slot": 2})
    c.wait_for_nodes()
    resumed = train_on_ray(cfg(tmp_path / "run"), resume=True)
    assert [h["step"] for h in resumed] == [1, 2, 3, 4]
    for a, b in zip(ref, resumed, strict=True):
        assert {k: v for k, v in a.items() if k.startswith("reward/")} == \
               {k: v for k, v in b.items() if k.startswith("reward/")}
    w_ref = torch.load(tmp_path / "ref" / "checkpoints" / "step-000004" / "trainable.pt")
    w_run = torch.load(tmp_path / "run" / "checkpoints" / "step-000004" / "trainable.pt")
    for name, t in w_ref.items():
        torch.testing.assert_close(w_run[name], t, rtol=1e-5, atol=1e-6)
