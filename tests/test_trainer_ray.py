"""The trainer on Ray: rollouts on Ray workers (synchronous and ahead of training), and training
processes launched as Ray Train workers. Each is compared with the single-process trainer."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from codrl.train.checkpoint import latest_checkpoint
from codrl.train.config import TrainConfig
from codrl.train.trainer import Trainer

ray = pytest.importorskip("ray")
sys.path.insert(0, str(Path(__file__).parent))
from toy_config import toy_train_config  # noqa: E402

pytestmark = pytest.mark.slow
WORKERS = {"rollout_workers": 2, "worker_cpus": 1, "worker_threads": 1}


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> Iterator[None]:
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    if started:
        ray.shutdown()




def config(tiny_dir: Path, out: Path, **over: Any) -> TrainConfig:
    data = {"steps": 2, "packs_per_step": 4, "save_every": 0, "output_dir": str(out), **over}
    return TrainConfig.model_validate(toy_train_config(tiny_dir, **data))


def trained(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}


def run(cfg: TrainConfig) -> tuple[list[dict[str, Any]], dict[str, torch.Tensor]]:
    trainer = Trainer(cfg)
    try:
        return trainer.train(), trained(trainer)
    finally:
        trainer.close()


def rewards(history: list[dict[str, Any]]) -> list[dict[str, float]]:
    """The step's reward metrics. Compared exactly: they depend on the sampled token ids only, and
    every side computes them with the same code from the lifecycles in job order."""
    return [{k: v for k, v in h.items() if k.startswith("reward/")} for h in history]


def test_ray_workers_train_like_one_process(tiny_dir: Path, tmp_path: Path) -> None:
    """Weights reach the workers after every update: step 2's lifecycles (sampled, per-job seeds)
    are those the in-process trainer plays, so rewards and the trained weights agree."""
    local_hist, local_w = run(config(tiny_dir, tmp_path / "local"))
    ray_hist, ray_w = run(config(tiny_dir, tmp_path / "ray", distributed=WORKERS))
    assert rewards(ray_hist) == rewards(local_hist)
    for name, t in local_w.items():
        torch.testing.assert_close(ray_w[name], t, rtol=1e-4, atol=1e-5)


def test_ray_workers_record_the_version_they_played(tiny_dir: Path, tmp_path: Path) -> None:
    trainer = Trainer(config(tiny_dir, tmp_path, distributed=WORKERS))
    try:
        trainer.step()
        results = trainer.rollout(trainer.step_idx)
    finally:
        trainer.close()
    assert {e.policy_version for r in results for e in r.experiences} == {1}


def test_ray_workers_run_ahead_of_training(tiny_dir: Path, tmp_path: Path) -> None:
    history, _ = run(config(tiny_dir, tmp_path, steps=3,
                            distributed={**WORKERS, "async_rollouts": True, "lookahead": 1, "max_staleness": 1}))
    assert [h["async/staleness_max"] for h in history] == [0, 1, 1]
    assert all(h["async/dropped_experiences"] == 0 and "train/loss" in h for h in history)


def test_ray_train_workers_match_one_process(tiny_dir: Path, tmp_path: Path) -> None:
    """Two training processes started by Ray Train (torch.distributed over gloo, set up by Ray):
    each plays half of the lifecycles and trains on half of the rows; the run matches one process."""
    from codrl.distributed.ray_train import train_on_ray

    local_hist, local_w = run(config(tiny_dir, tmp_path / "local"))
    cfg = config(tiny_dir, tmp_path / "ray-train", distributed={"train_workers": 2, "worker_cpus": 1})
    history = train_on_ray(cfg)
    assert rewards(history) == rewards(local_hist)
    for a, b in zip(history, local_hist, strict=True):
        assert a["train/loss"] == pytest.approx(b["train/loss"], rel=1e-4, abs=1e-6)
    ckpt = latest_checkpoint(tmp_path / "ray-train")
    assert ckpt is not None
    saved = torch.load(ckpt / "trainable.pt")
    for name, t in local_w.items():
        torch.testing.assert_close(saved[name], t, rtol=1e-4, atol=1e-5)
