"""Training processes launched as Ray Train workers (``distributed.train_workers``).

Ray Train's ``TorchTrainer`` starts one worker per training process on the cluster, sets up the
torch.distributed process group between them (gloo on CPU, NCCL on GPUs) and runs
:func:`_worker_loop` in each; there the ordinary :class:`~codrl.train.trainer.Trainer` finds the
initialised group and trains data-parallel exactly as under ``torchrun``. Rank 0 writes the
checkpoints, logs and reports into ``output_dir`` (which must be reachable from every node).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from codrl.distributed.ray_rollout import connect
from codrl.train.config import TrainConfig


def _worker_loop(config: dict[str, Any]) -> None:
    """One training process (runs inside a Ray Train worker; the process group is already set up)."""
    from codrl.train.trainer import Trainer

    trainer = Trainer(TrainConfig.model_validate(config["cfg"]))
    try:
        trainer.train(resume=config["resume"])
    finally:
        trainer.close()


def train_on_ray(cfg: TrainConfig, resume: bool = False) -> list[dict[str, Any]]:
    """Train with ``cfg.distributed.train_workers`` Ray Train workers; returns the run's history."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    d = cfg.distributed
    connect(d)
    use_gpu = d.worker_gpus > 0
    resources = {"CPU": d.worker_cpus, **({"GPU": d.worker_gpus} if use_gpu else {})}
    out = Path(cfg.output_dir).resolve()
    worker_cfg = cfg.model_copy(update={"output_dir": str(out)}).model_dump(mode="json")
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"cfg": worker_cfg, "resume": resume},
        scaling_config=ScalingConfig(num_workers=d.train_workers, use_gpu=use_gpu, resources_per_worker=resources),
        run_config=RunConfig(name="codrl-train", storage_path=str(out / "ray")),
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    return json.loads((out / "history.json").read_text())
