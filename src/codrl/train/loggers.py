"""Where training metrics go: one seam for TensorBoard, Weights & Biases and MLflow.

``log.backends`` lists the sinks (default ``[tensorboard]``). Each gets every finite scalar of a
step under the same name (``reward/pos0``, ``train/loss``, ``eval/pos2``, ...), with the step
number; the run's resolved config goes along where a sink keeps one (W&B config, MLflow params).

* ``tensorboard``: event files in ``<output_dir>/tb`` (``tensorboard --logdir``).
* ``wandb``: a Weights & Biases run of project ``log.wandb_project``; ``log.wandb_mode: offline``
  keeps it in ``<output_dir>/wandb`` for a later ``wandb sync`` (``pip install wandb``).
* ``mlflow``: an MLflow run in experiment ``log.mlflow_experiment`` at ``log.mlflow_tracking_uri``
  (default: ``MLFLOW_TRACKING_URI``, else a file store in ``<output_dir>/mlruns``, which MLflow 3
  keeps in maintenance mode: point it at a server or a ``sqlite:///`` database for its newer
  features; ``pip install mlflow-skinny`` or ``mlflow``).

Only the main process of a distributed run logs.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from codrl.errors import CodrlError

log = logging.getLogger(__name__)

#: The sinks ``log.backends`` may name.
BACKENDS: tuple[str, ...] = ("tensorboard", "wandb", "mlflow")


class MetricsSink(Protocol):
    """One place metrics go."""

    def log(self, scalars: Mapping[str, float], step: int) -> None: ...

    def close(self) -> None: ...


class TensorBoardSink:
    """Event files in ``folder`` (torch's SummaryWriter)."""

    def __init__(self, folder: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(folder))

    def log(self, scalars: Mapping[str, float], step: int) -> None:
        for k, v in scalars.items():
            self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    """A Weights & Biases run (``mode`` online, offline or disabled), kept under ``folder``."""

    def __init__(self, project: str, mode: str, folder: Path, config: Mapping[str, Any]) -> None:
        wandb = _need("wandb", "wandb")
        folder.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=project, mode=mode, dir=str(folder), config=dict(config), reinit="finish_previous")

    def log(self, scalars: Mapping[str, float], step: int) -> None:
        self.run.log(dict(scalars), step=step)

    def close(self) -> None:
        self.run.finish()


class MLflowSink:
    """An MLflow run at ``uri`` (its own client: no process-wide active run is touched)."""

    def __init__(self, uri: str, experiment: str, config: Mapping[str, Any]) -> None:
        _need("mlflow", "mlflow-skinny")
        if uri.startswith("file:"):  # MLflow 3 refuses its file store unless told it is wanted
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        exp = self.client.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(experiment)
        self.run_id = self.client.create_run(exp_id).info.run_id
        flat = _flatten(config)
        for i in range(0, len(flat), 100):  # MLflow takes at most 100 params per batch
            from mlflow.entities import Param

            self.client.log_batch(self.run_id, params=[Param(k, str(v)[:500]) for k, v in flat[i:i + 100]])

    def log(self, scalars: Mapping[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in scalars.items()])

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


def _need(module: str, package: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise CodrlError(f"log.backends names {module}, which is not installed: pip install {package}") from None


def _flatten(config: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out += _flatten(v, key + ".")
        else:
            out.append((key, v))
    return out


class Loggers:
    """Every sink ``log`` (a :class:`~codrl.train.config.LogConfig`) names, for a run writing to ``out``."""

    def __init__(self, log: Any, out: Path, config: Mapping[str, Any]) -> None:
        self.sinks: list[MetricsSink] = []
        for name in dict.fromkeys(log.backends):
            if name == "tensorboard":
                self.sinks.append(TensorBoardSink(out / "tb"))
            elif name == "wandb":
                self.sinks.append(WandbSink(log.wandb_project, log.wandb_mode, out, config))
            elif name == "mlflow":
                uri = log.mlflow_tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or (out / "mlruns").resolve().as_uri()
                self.sinks.append(MLflowSink(uri, log.mlflow_experiment, config))

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        """Send the finite scalars of ``metrics`` to every sink. A sink that fails (a tracking
        server gone away) is reported once and skipped from then on; training goes on."""
        scalars = {k: float(v) for k, v in metrics.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
        if not scalars:
            return
        for sink in list(self.sinks):
            try:
                sink.log(scalars, step)
            except Exception as e:  # noqa: BLE001 - a metric sink never stops a training run
                self.sinks.remove(sink)
                log.warning("metric sink %s failed at step %d (%s: %s); it gets no further metrics",
                            type(sink).__name__, step, type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "")

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
        self.sinks = []
