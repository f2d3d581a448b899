"""Asynchronous rollouts: which weights play which step, equality with synchronous play, staleness."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from codrl.backends.hf import HFBackend
from codrl.toy.policy import build_tiny_policy
from codrl.distributed.async_rollout import AsyncRollouts, LocalRolloutEngine, split_stale
from codrl.toy.secret_table import SecretTable
from codrl.rollout.config import RolloutConfig
from codrl.rollout.experience import Experience, LifecycleResult, ModelEpisode
from codrl.rollout.lifecycle import Job, LifecycleRunner, job_seeds
from codrl.train.checkpoint import load_tensors, trainable_state
from codrl.train.config import TrainConfig
from codrl.train.trainer import Trainer

sys.path.insert(0, str(Path(__file__).parent))
from toy_config import toy_train_config  # noqa: E402

CFG = RolloutConfig(pack_size=3, repeats=2, max_new_tokens_solve=3, max_new_tokens_update=4,
                    update_reply_prefix="Hints:", hint_min_chars=1, temperature=1.0)


@pytest.fixture(scope="module")
def policy() -> HFBackend:
    env = SecretTable()
    model, tok = build_tiny_policy(env, seed=0)
    return HFBackend(model, tok)


def plan(step: int) -> tuple[list[Job], list[int]]:
    env = SecretTable()
    jobs = [Job(env, env.sample_pack("train", 0, step * 2 + i, CFG.pack_size), r) for i in range(2) for r in range(2)]
    return jobs, job_seeds(len(jobs), 1000 + step)


def version_weights(policy: HFBackend, version: int) -> dict[str, torch.Tensor]:
    """Distinct weights per version: the policy's, shifted by a version-dependent amount."""
    g = torch.Generator().manual_seed(version)
    return {n: t + 0.05 * version * torch.randn(t.shape, generator=g) for n, t in trainable_state(policy.model).items()}


def replies(results: list[LifecycleResult]) -> list[list[int]]:
    return [e.completion_ids for r in results for e in r.experiences]


def test_each_step_is_played_by_the_version_its_lookahead_names(policy: HFBackend) -> None:
    engine = LocalRolloutEngine(policy, CFG)
    start, stop, lookahead = 2, 6, 2
    weights = {v: version_weights(policy, v) for v in range(start, stop)}
    rollouts = AsyncRollouts(engine, plan, start=start, stop=stop, lookahead=lookahead, weights=weights[start],
                             version=start)
    try:
        got = {}
        for step in range(start, stop):
            got[step] = rollouts.get(step)
            rollouts.publish(step + 1, weights.get(step + 1, weights[start]))  # "the update of this step"
    finally:
        rollouts.close()
    reference = HFBackend(build_tiny_policy(SecretTable(), seed=0)[0], policy.tokenizer)
    runner = LifecycleRunner(reference, CFG)
    for step, results in got.items():
        version = max(start, step - lookahead)
        assert {e.policy_version for r in results for e in r.experiences} == {version}
        load_tensors(reference.model, weights[version])
        jobs, seeds = plan(step)
        # same weights and seeds, played synchronously: the very same tokens
        assert replies(runner.run(jobs, seeds=seeds)) == replies(results)


def test_the_copy_does_not_follow_the_trained_model(policy: HFBackend) -> None:
    engine = LocalRolloutEngine(policy, CFG)
    name, p = next((n, p) for n, p in policy.model.named_parameters())
    before = p.detach().clone()
    with torch.no_grad():
        p.add_(1.0)  # the trainer's update
    try:
        assert torch.equal(dict(engine.backend.model.named_parameters())[name], before)
        engine.set_weights(trainable_state(policy.model), 1)
        assert torch.equal(dict(engine.backend.model.named_parameters())[name], p)
        assert engine.policy_version == 1
    finally:
        with torch.no_grad():
            p.sub_(1.0)


def test_a_failing_rollout_reaches_the_trainer(policy: HFBackend) -> None:
    def broken(step: int) -> tuple[list[Job], list[int]]:
        raise ValueError("no packs")

    rollouts = AsyncRollouts(LocalRolloutEngine(policy, CFG), broken, start=0, stop=2, lookahead=1,
                             weights=trainable_state(policy.model), version=0)
    with pytest.raises(RuntimeError, match="stopped before step 0") as info:
        rollouts.get(0)
    assert isinstance(info.value.__cause__, ValueError)
    rollouts.close()


def test_close_stops_a_thread_waiting_for_weights(policy: HFBackend) -> None:
    rollouts = AsyncRollouts(LocalRolloutEngine(policy, CFG), plan, start=0, stop=5, lookahead=1,
                             weights=trainable_state(policy.model), version=0)
    rollouts.get(0)
    rollouts.get(1)  # step 2 waits for version 1, which is never published
    rollouts.close()
    with pytest.raises(RuntimeError):
        rollouts.get(2)


def lifecycle(version: int, n: int = 2) -> LifecycleResult:
    episodes = [ModelEpisode("solve", i, [Experience("p", 0, "solve", i, 0, [1], [2], [-0.1], "x",
                                                     policy_version=version)], own_reward=0.0) for i in range(n)]
    return LifecycleResult("p", "env", "train", 0, "cod", [], episodes)


def test_split_stale_keeps_whole_lifecycles_within_the_bound() -> None:
    results = [lifecycle(5), lifecycle(4), lifecycle(2, n=3)]
    split = split_stale(results, step=5, max_staleness=1)
    assert split.fresh == results[:2] and split.stale == results[2:]
    assert split.max_staleness == 3
    assert split.metrics(kept=False) == {"async/staleness_max": 3, "async/stale_lifecycles": 1,
                                         "async/stale_experiences": 3, "async/dropped_experiences": 3}
    assert split.metrics(kept=True)["async/dropped_experiences"] == 0




@pytest.mark.parametrize(("lookahead", "stale", "expect"), [
    (1, "drop", [0, 1, 1, 1]),  # step s played by version s-1: staleness 1, within the bound
    (2, "drop", [0, 1, 2, 2]),  # step s played by version s-2: beyond max_staleness 1 from step 2 on
    (2, "correct", [0, 1, 2, 2]),
])
def test_trainer_runs_ahead_and_bounds_staleness(tiny_dir: Path, tmp_path: Path, lookahead: int, stale: str,
                                                 expect: list[int]) -> None:
    cfg = TrainConfig.model_validate(toy_train_config(
        tiny_dir, steps=4, packs_per_step=2, save_every=0, output_dir=str(tmp_path),
        distributed={"async_rollouts": True, "lookahead": lookahead, "max_staleness": 1, "stale": stale}))
    trainer = Trainer(cfg)
    try:
        history = trainer.train()
    finally:
        trainer.close()
    assert [h["async/staleness_max"] for h in history] == expect
    for h, age in zip(history, expect, strict=True):
        n_stale = h["async/stale_experiences"]
        assert (n_stale > 0) == (age > 1)
        assert h["async/dropped_experiences"] == (n_stale if stale == "drop" else 0)
        # a step whose every lifecycle was dropped trains on nothing
        assert ("train/loss" in h) == (stale == "correct" or age <= 1)


def test_a_step_outside_the_range_is_refused(policy: HFBackend) -> None:
    rollouts = AsyncRollouts(LocalRolloutEngine(policy, CFG), plan, start=1, stop=2, lookahead=1,
                             weights=trainable_state(policy.model), version=1)
    try:
        with pytest.raises(ValueError, match="not among the steps"):
            rollouts.get(2)
    finally:
        rollouts.close()
