"""Ray rollout workers (:mod:`codrl.distributed.ray_rollout`) against the single-process runner.

Two workers on one local Ray instance (started once for the module) play the same jobs with the
same seeds as :class:`LifecycleRunner` in this process, and must give the same lifecycles: the
tiny policy (a LoRA-wrapped tiny transformers model built by the trainer's ``build_policy``) on
SecretTable, and the embedded SmolLM2 on small FrozenLake packs. Also: token-exact logprobs,
weight sync, a worker that dies in the middle of a chunk, and a dead cluster address.

Everything here starts processes, so every test is ``slow``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from codrl.backends.hf import HFBackend
from codrl.distributed.ray_rollout import RayRolloutPool, connect, import_ray
from codrl.envs import make_env
from codrl.toy.secret_table import SecretTable
from codrl.errors import CodrlError
from codrl.rollout.config import RolloutConfig
from codrl.rollout.experience import Experience, LifecycleResult
from codrl.rollout.lifecycle import Job, LifecycleRunner, job_seeds, make_jobs
from codrl.train.checkpoint import trainable_state
from codrl.train.config import DistributedConfig, EnvSpec, LoraSpec, ModelConfig, TrainConfig
from codrl.train.policy import build_policy

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.slow

#: Tasks per SecretTable pack; a cod lifecycle makes 2K-1 model calls (K solves, K-1 updates).
PACK_SIZE = 3
#: Lifecycles per chunk of the tiny pool.
CHUNK = 2
#: An armed worker dies at the last model call of a chunk: however the calls interleave, all but
#: one of its lifecycles have finished inside the worker, and none of them may count.
CRASH_AFTER = CHUNK * (2 * PACK_SIZE - 1)
TWO_WORKERS = DistributedConfig(rollout_workers=2)


# -- fault injection (runs inside the workers) ------------------------------------------------------
def _claim(trigger: str) -> bool:
    """Take the one-shot ``trigger`` file (an atomic rename: only one process can win it)."""
    try:
        os.rename(trigger, trigger + ".claimed")
    except FileNotFoundError:
        return False
    return True


def _crashable_policy(cfg: TrainConfig, trigger: str) -> HFBackend:
    """The trainer's policy, and a fault: while ``trigger`` exists, the first worker to reach its
    :data:`CRASH_AFTER`-th model call of a chunk takes it and dies on the spot (``os._exit``)."""
    backend = build_policy(cfg)
    serve = backend.serve

    def serve_or_crash(pending, on_result):  # type: ignore[no-untyped-def]
        calls = 0

        def counted(key, result):  # type: ignore[no-untyped-def]
            nonlocal calls
            calls += 1
            if calls == CRASH_AFTER and _claim(trigger):
                os._exit(1)
            return on_result(key, result)

        serve(pending, counted)

    backend.serve = serve_or_crash  # type: ignore[method-assign]
    return backend


# -- fixtures ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    """One local Ray instance for the module, started by the pool's own ``connect`` with room for
    four 1-CPU workers (the tiny and the embedded pools coexist). This module's functions are
    pickled by value, since the workers cannot import a test module."""
    connect(DistributedConfig(rollout_workers=4))
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def tiny_cfg(tmp_path_factory: pytest.TempPathFactory) -> TrainConfig:
    """A training config whose model is a saved tiny SecretTable policy with LoRA adapters."""
    from codrl.toy.policy import build_tiny_policy, save_policy

    root = tmp_path_factory.mktemp("tiny")
    save_policy(*build_tiny_policy(SecretTable(), seed=3), root / "model")
    return TrainConfig(envs=[EnvSpec(name="secret_table")], output_dir=str(root / "run"),
                       model=ModelConfig(path=str(root / "model"), lora=LoraSpec(r=4, alpha=8)))


@pytest.fixture(scope="module")
def reference(tiny_cfg: TrainConfig) -> HFBackend:
    """The tiny policy in this process: the single-process side of every comparison."""
    return build_policy(tiny_cfg)


@pytest.fixture(scope="module")
def trigger(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fault") / "crash"


@pytest.fixture(scope="module")
def tiny_pool(ray_local: None, tiny_cfg: TrainConfig, trigger: Path) -> Iterator[RayRolloutPool]:
    pool = RayRolloutPool(partial(_crashable_policy, tiny_cfg, str(trigger)), _tiny_rollout(), TWO_WORKERS,
                          chunk_size=CHUNK)
    yield pool
    pool.close()


# -- helpers ----------------------------------------------------------------------------------------
def _tiny_rollout(temperature: float = 1.0) -> RolloutConfig:
    return RolloutConfig(pack_size=PACK_SIZE, repeats=2, temperature=temperature, max_new_tokens_solve=6,
                         max_new_tokens_update=10)


def _table_jobs(cfg: RolloutConfig, packs: int = 4) -> list[Job]:
    env = SecretTable()
    return make_jobs([(env, env.sample_pack("train", 0, i, cfg.pack_size)) for i in range(packs)], cfg)


def _single(backend: HFBackend, cfg: RolloutConfig, jobs: list[Job], seeds: list[int]) -> list[LifecycleResult]:
    return LifecycleRunner(backend, cfg).run(jobs, seeds=seeds)


def _keys(results: list[LifecycleResult]) -> list[tuple[str, int]]:
    return [(r.pack_id, r.repeat) for r in results]


def _assert_same(got: list[LifecycleResult], want: list[LifecycleResult]) -> None:
    """Same lifecycles: jobs in order, replies, token ids, logprobs (1e-4) and per-position rewards."""
    assert _keys(got) == _keys(want)
    for a, b in zip(got, want, strict=True):
        assert a.task_rewards == b.task_rewards
        assert [t.reply for e in a.episodes for t in e.turns] == [t.reply for e in b.episodes for t in e.turns]
        assert [e.hints_out for e in a.episodes] == [e.hints_out for e in b.episodes]
        for x, y in zip(a.experiences, b.experiences, strict=True):
            assert (x.prompt_ids, x.completion_ids) == (y.prompt_ids, y.completion_ids)
            np.testing.assert_allclose(x.logprobs, y.logprobs, atol=1e-4)


def _teacher_forced(model: torch.nn.Module, exp: Experience, temperature: float) -> np.ndarray:
    """Logprobs of the sampled tokens under a plain forward pass of the whole sequence."""
    ids = torch.tensor([exp.prompt_ids + exp.completion_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(exp.prompt_ids) - 1: -1].float()
    scale = temperature if temperature > 0 else 1.0
    picked = torch.log_softmax(logits / scale, -1).gather(1, torch.tensor(exp.completion_ids)[:, None])
    return picked.squeeze(1).numpy()


def _versions(results: list[LifecycleResult]) -> set[int]:
    return {e.policy_version for r in results for e in r.experiences}


# -- the tiny policy ------------------------------------------------------------------------------
def test_greedy_matches_single_process(tiny_pool: RayRolloutPool, reference: HFBackend) -> None:
    cfg = _tiny_rollout(temperature=0.0)
    jobs, seeds = _table_jobs(cfg), job_seeds(8, 0)
    tiny_pool.cfg = cfg
    tiny_pool.set_weights(trainable_state(reference.model), version=1)
    _assert_same(tiny_pool.run(jobs, seeds=seeds), _single(reference, cfg, jobs, seeds))


def test_sampling_is_exact_and_plays_every_job_once(tiny_pool: RayRolloutPool, reference: HFBackend) -> None:
    cfg = _tiny_rollout(temperature=1.0)
    jobs, seeds = _table_jobs(cfg), job_seeds(8, 1234)
    tiny_pool.cfg = cfg
    tiny_pool.set_weights(trainable_state(reference.model), version=2)
    done: list[LifecycleResult] = []
    results = tiny_pool.run(jobs, on_done=done.append, seeds=seeds)
    assert Counter(_keys(done)) == Counter((j.pack.pack_id, j.repeat) for j in jobs)
    assert max(Counter(_keys(done)).values()) == 1
    for exp in (e for r in results for e in r.experiences):
        np.testing.assert_allclose(exp.logprobs, _teacher_forced(reference.model, exp, 1.0), atol=1e-4)
    assert _versions(results) == {2}
    _assert_same(results, _single(reference, cfg, jobs, seeds))


def test_workers_follow_new_weights(tiny_pool: RayRolloutPool, reference: HFBackend, tiny_cfg: TrainConfig) -> None:
    cfg = _tiny_rollout(temperature=0.0)
    jobs, seeds = _table_jobs(cfg), job_seeds(8, 5)
    tiny_pool.cfg = cfg
    tiny_pool.set_weights(trainable_state(reference.model), version=3)
    before = tiny_pool.run(jobs, seeds=seeds)
    updated = build_policy(tiny_cfg)
    with torch.no_grad():  # what an update does to the adapters: B leaves zero, the policy changes
        for name, p in updated.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(len(name)))
    tiny_pool.set_weights(trainable_state(updated.model), version=4)
    after = tiny_pool.run(jobs, seeds=seeds)
    assert _versions(before) == {3} and _versions(after) == {4} and tiny_pool.policy_version == 4
    _assert_same(after, _single(updated, cfg, jobs, seeds))
    assert [e.completion_ids for r in after for e in r.experiences] != \
        [e.completion_ids for r in before for e in r.experiences]


def test_unknown_weight_names_fail(tiny_pool: RayRolloutPool, reference: HFBackend) -> None:
    tiny_pool.set_weights({"no.such.weight": torch.zeros(2)}, version=9)
    with pytest.raises(ValueError, match="not parameters of the model"):
        tiny_pool.run(_table_jobs(tiny_pool.cfg, packs=1), seeds=[1, 2])
    tiny_pool.set_weights(trainable_state(reference.model), version=10)  # leave the pool usable


@pytest.mark.fault
def test_a_worker_dying_mid_chunk_is_replayed_once(tiny_pool: RayRolloutPool, reference: HFBackend,
                                                   trigger: Path) -> None:
    cfg = _tiny_rollout(temperature=1.0)
    jobs, seeds = _table_jobs(cfg), job_seeds(8, 77)
    tiny_pool.cfg = cfg
    tiny_pool.set_weights(trainable_state(reference.model), version=5)
    failures = tiny_pool.failures
    trigger.touch()
    done: list[LifecycleResult] = []
    results = tiny_pool.run(jobs, on_done=done.append, seeds=seeds)
    assert not trigger.exists(), "no worker crashed"
    assert tiny_pool.failures == failures + 1 and len(tiny_pool.workers) == 2  # replaced
    assert sorted(_keys(done)) == sorted(_keys(results)) and len(done) == len(jobs)
    assert _versions(results) == {5}  # the replacement caught up with the weights before playing
    _assert_same(results, _single(reference, cfg, jobs, seeds))


def test_no_worker_left_is_an_error(ray_local: None, tiny_cfg: TrainConfig) -> None:
    cfg = _tiny_rollout()
    with RayRolloutPool(partial(build_policy, tiny_cfg), cfg, DistributedConfig(rollout_workers=1),
                        restarts=0) as pool:
        ray.kill(pool.workers[0])
        with pytest.raises(RuntimeError, match="no rollout worker is left"):
            pool.run(_table_jobs(cfg, packs=1))


def test_a_factory_error_reaches_the_driver(ray_local: None) -> None:
    with pytest.raises(CodrlError, match="model path not found"):
        RayRolloutPool(partial(HFBackend.from_pretrained, "/no/such/model"), _tiny_rollout(),
                       DistributedConfig(rollout_workers=1))


# -- the embedded model ---------------------------------------------------------------------------
def test_embedded_frozenlake_greedy_matches_single_process(ray_local: None, embedded_backend: HFBackend) -> None:
    """Greedy lifecycles of SmolLM2 on two small FrozenLake packs, one per worker. The workers run
    one torch thread each, and so does this process here: on a shared 2-core machine more threads
    spin-wait on each other and run several times slower."""
    env = make_env("frozenlake", min_size=4, max_size=4, max_env_steps=3, max_agent_steps=3)
    cfg = RolloutConfig(pack_size=2, repeats=1, temperature=0.0, max_new_tokens_solve=12, max_new_tokens_update=24)
    jobs = make_jobs([(env, env.sample_pack("test", 0, i, 2)) for i in range(2)], cfg)
    seeds = job_seeds(len(jobs), 3)
    with RayRolloutPool(partial(HFBackend.from_pretrained, None), cfg, TWO_WORKERS) as pool:
        results = pool.run(jobs, seeds=seeds)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _assert_same(results, _single(embedded_backend, cfg, jobs, seeds))
        for r in results:  # each lifecycle's last call: the longest context
            exp = r.experiences[-1]
            np.testing.assert_allclose(exp.logprobs, _teacher_forced(embedded_backend.model, exp, 0.0), atol=1e-4)
    finally:
        torch.set_num_threads(threads)


# -- connecting -----------------------------------------------------------------------------------
def test_missing_ray_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # what an environment without Ray looks like
    with pytest.raises(CodrlError, match=r"pip install 'codrl\[ray\]'"):
        import_ray()


CONNECT_SCRIPT = """
import sys, time
from codrl.distributed.ray_rollout import connect
from codrl.errors import CodrlError
from codrl.train.config import DistributedConfig

start = time.monotonic()
try:
    connect(DistributedConfig(rollout_workers=1, ray_address=sys.argv[1], connect_timeout_s=float(sys.argv[2])))
except CodrlError as e:
    print(f"{time.monotonic() - start:.3f} {e}")
"""


@pytest.mark.parametrize("listening", [False, True], ids=["refused", "silent"])
def test_dead_address_fails_in_time(listening: bool) -> None:
    """Nothing at the port (refused at once), or a port that accepts but never speaks Ray (bounded
    by the timeout): a one-line CodrlError naming the address, within ``connect_timeout_s``."""
    timeout = 3.0
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        if listening:
            sock.listen()
        address = f"127.0.0.1:{sock.getsockname()[1]}"
        if not listening:
            sock.close()  # the port is free again: nothing answers there
        out = subprocess.run([sys.executable, "-c", CONNECT_SCRIPT, address, str(timeout)], capture_output=True,
                             text=True, timeout=120, check=False)
    lines = out.stdout.strip().splitlines()
    assert out.returncode == 0 and len(lines) == 1, out.stdout + out.stderr
    elapsed, message = lines[0].split(" ", 1)
    assert address in message
    assert float(elapsed) < timeout + 1.0
