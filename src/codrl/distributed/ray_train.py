"""Training processes launched as Ray Train workers (``distributed.train_workers``).

Ray Train's ``TorchTrainer`` starts one worker per training process on the cluster, sets up the
torch.distributed process group between them (gloo on CPU, NCCL on GPUs) and runs
:func:`_worker_loop` in each; there the ordinary :class:`~codrl.train.trainer.Trainer` finds the
initialised group and trains data-parallel exactly as under ``torchrun``. Rank 0 writes the
checkpoints, logs and reports into ``output_dir`` (which must be reachable from every node).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from codrl.distributed.ray_rollout import connect
from codrl.errors import CodrlError
from codrl.train.config import TrainConfig

#: How Ray names a lost node in its errors (a node id, or an address).
_NODE = re.compile(r"(?:node[ _]?id|NodeID|node_id)[=: ]+\(?'?([0-9a-f]{16,})|(?:node[ _]?ip|IP)[=: ]+'?([0-9.]+)",
                   re.IGNORECASE)
#: Words of Ray's errors for a worker lost with its node or its process.
_LOST = ("died", "unavailable", "lost", "dead")


def lost_worker_error(error: BaseException, out: Path) -> CodrlError | None:
    """A one-line error for a Ray Train run whose worker was lost (its node or its process), naming
    the node where Ray's error does and saying how to go on; None for any other failure."""
    texts, seen, e = [], set(), error
    while e is not None and id(e) not in seen:  # the error and its causes
        seen.add(id(e))
        texts.append(f"{type(e).__name__}: {e}")
        e = e.__cause__ or e.__context__
    text = "\n".join(texts)
    actor_lost = any(n in text for n in ("ActorDiedError", "ActorUnavailableError", "RayActorError",
                                         "NodeDiedError", "WorkerCrashedError", "ObjectLostError"))
    if not actor_lost and not ("node" in text.lower() and any(w in text.lower() for w in _LOST)):
        return None
    m = _NODE.search(text)
    node = (m.group(1) or m.group(2)) if m else None
    where = f"on node {node}" if node else "(Ray did not name its node)"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    telling = [line for line in lines if any(w in line.lower() for w in _LOST)]
    first = (telling or lines or [type(error).__name__])[0][:200]
    return CodrlError(f"a Ray Train worker was lost {where}: {first}; continue from the last checkpoint in "
                      f"{out / 'checkpoints'} with `codrl train --config FILE --resume`")


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
    resources = {"CPU": d.worker_cpus, **({"GPU": d.worker_gpus} if use_gpu else {}), **d.worker_resources}
    out = Path(cfg.output_dir).resolve()
    worker_cfg = cfg.model_copy(update={"output_dir": str(out)}).model_dump(mode="json")
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"cfg": worker_cfg, "resume": resume},
        scaling_config=ScalingConfig(num_workers=d.train_workers, use_gpu=use_gpu, resources_per_worker=resources),
        run_config=RunConfig(name="codrl-train", storage_path=str(out / "ray")),
    )
    try:
        result = trainer.fit()
        error = result.error
    except Exception as e:  # noqa: BLE001 - Ray Train's failure types differ between versions
        error = e
    if error is not None:
        lost = lost_worker_error(error, out)
        if lost is not None:
            raise lost from None
        raise error
    return json.loads((out / "history.json").read_text())
