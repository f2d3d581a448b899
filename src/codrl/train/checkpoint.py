"""Atomic checkpoints: weights in HF format, optimizer, RNG states, step and data position.

Layout under ``<output_dir>/checkpoints/``::

    step-000003/
        model/               # peft adapter (LoRA) or full model, save_pretrained format
        trainable.pt         # exact trainable tensors (what resume loads)
        optimizer.pt
        state.json           # step, data position, metrics so far, RNG states
    latest                   # name of the newest complete checkpoint

A checkpoint is written into a temporary folder and renamed into place, then ``latest`` is
replaced atomically, so a crash at any moment leaves the previous checkpoint usable. Under
torch.distributed, rank 0 alone writes it, from the full state the ranks gather
(:class:`Snapshot`); every rank reads it back, whatever the world size that wrote it.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import signal
import tempfile
import threading
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from codrl.errors import CodrlError


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state().tolist(), "python": random.getstate(),
            "numpy": np.random.get_state()[1].tolist()}


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The tensors the optimizer updates (LoRA weights, or every weight when fully fine-tuning)."""
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


@dataclass
class Snapshot:
    """What a checkpoint holds of the model and the optimizer, as full (unsharded) CPU state.

    One layout whatever wrote it: a single process, DDP ranks or FSDP2 shards (gathered by
    :mod:`codrl.distributed.torch_dist`), so any world size resumes from any checkpoint.
    """

    #: The trainable tensors by parameter name (what resume loads).
    trainable: dict[str, torch.Tensor]
    #: ``Optimizer.state_dict()`` layout: parameters by their position in the optimizer.
    optimizer: dict[str, Any]
    #: The full model state dict ``save_pretrained`` writes; None: the model's own (unsharded) one.
    weights: dict[str, torch.Tensor] | None = None


def local_snapshot(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> Snapshot:
    """The snapshot of a model whose parameters are whole in this process (one process, or a DDP replica)."""
    return Snapshot(trainable_state(model), optimizer.state_dict())


def check_names(tensors: dict[str, Any], params: Iterable[str], path: Path) -> None:
    """Fail when the checkpoint at ``path`` holds a tensor that is not a parameter of the model."""
    known = set(params)
    missing = [n for n in tensors if n not in known]
    if missing:
        raise RuntimeError(f"checkpoint {path} does not match the model (e.g. {missing[0]})")


def load_tensors(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Copy ``tensors`` (parameter name -> value, any subset: LoRA adapters or all weights) into
    ``model``'s whole parameters, in place; names and shapes are checked before anything changes.
    In-place copies bump the parameters' versions, so a backend's KV cache drops stale states."""
    params = dict(model.named_parameters())
    unknown = sorted(set(tensors) - set(params))
    if unknown:
        raise ValueError(f"{len(unknown)} weight names are not parameters of the model, e.g. {unknown[:3]}")
    wrong = [n for n, t in tensors.items() if t.shape != params[n].shape]
    if wrong:
        raise ValueError(f"weight {wrong[0]!r} has shape {tuple(tensors[wrong[0]].shape)}, the model's "
                         f"{tuple(params[wrong[0]].shape)}")
    with torch.no_grad():
        for n, t in tensors.items():
            params[n].copy_(t.to(params[n].device, params[n].dtype))


def restore_local(model: torch.nn.Module, optimizer: torch.optim.Optimizer, snapshot: Snapshot, path: Path) -> None:
    """Copy a snapshot read from ``path`` into whole (unsharded) parameters and the optimizer."""
    check_names(snapshot.trainable, (n for n, _ in model.named_parameters()), path)
    load_tensors(model, snapshot.trainable)
    optimizer.load_state_dict(snapshot.optimizer)


def model_dir_of(path: str | Path) -> Path:
    """The folder holding a checkpoint's model: ``<path>/model`` for a checkpoint folder (step-N),
    else ``path`` itself (a model folder)."""
    p = Path(path).expanduser()
    return p / "model" if (p / "model").is_dir() and not (p / "config.json").is_file() else p


def checkpoint_path(root: Path, step: int) -> Path:
    """Where checkpoint ``step`` of the run in ``root`` lies."""
    return root / "checkpoints" / f"step-{step:06d}"


def save_checkpoint(root: Path, step: int, model: torch.nn.Module, tokenizer: Any, snapshot: Snapshot,
                    state: dict[str, Any]) -> Path:
    """Write checkpoint ``step`` atomically and point ``latest`` at it.

    A write that fails (a full disk, a quota, a vanished folder) raises :class:`CodrlError` naming
    the checkpoint and the cause; the partial copy is removed and ``latest`` still points at the
    previous complete checkpoint.
    """
    from safetensors import SafetensorError

    try:
        return _save_checkpoint(root, step, model, tokenizer, snapshot, state)
    except (OSError, RuntimeError, SafetensorError) as e:  # torch.save and safetensors wrap the OS error
        before = latest_checkpoint(root)
        kept = f"the previous checkpoint {before} is intact" if before is not None else "no earlier checkpoint exists"
        cause = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0][:300]
        raise CodrlError(f"checkpoint step {step} could not be written under {root / 'checkpoints'}: "
                         f"{cause} ({kept})") from None


def _save_checkpoint(root: Path, step: int, model: torch.nn.Module, tokenizer: Any, snapshot: Snapshot,
                     state: dict[str, Any]) -> Path:
    final = checkpoint_path(root, step)
    ckpt_dir = final.parent
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=ckpt_dir, prefix=".tmp-"))
    try:
        if snapshot.weights is None:
            model.save_pretrained(tmp / "model")
        else:
            model.save_pretrained(tmp / "model", state_dict=snapshot.weights)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp / "model")
        torch.save(snapshot.trainable, tmp / "trainable.pt")
        torch.save(snapshot.optimizer, tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps({**state, "step": step, "rng": _rng_state()}))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    pointer = ckpt_dir / ".latest.tmp"
    pointer.write_text(final.name)
    os.replace(pointer, ckpt_dir / "latest")
    return final


def latest_checkpoint(root: Path) -> Path | None:
    """The newest complete checkpoint under ``root``, or None."""
    pointer = root / "checkpoints" / "latest"
    if not pointer.is_file():
        return None
    path = root / "checkpoints" / pointer.read_text().strip()
    return path if (path / "state.json").is_file() else None


def resume_candidates(root: Path) -> list[Path]:
    """Checkpoints of ``root`` to resume from, best first: the one ``latest`` names, then every
    other ``step-*`` folder from the newest step down (a damaged newest one falls back to these)."""
    ckpt_dir = root / "checkpoints"
    if not ckpt_dir.is_dir():
        return []
    steps = sorted((p for p in ckpt_dir.glob("step-*") if p.is_dir()), key=lambda p: p.name, reverse=True)
    latest = latest_checkpoint(root)
    return ([latest] if latest is not None else []) + [p for p in steps if p != latest]


#: What reading a damaged checkpoint raises (a truncated or garbled file, a missing one, bad JSON).
DAMAGED = (OSError, EOFError, ValueError, KeyError, RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile)


def read_checkpoint(path: Path) -> tuple[Snapshot, dict[str, Any]]:
    """The snapshot and the state (step, data position, metrics, RNG states) of checkpoint ``path``.
    A damaged checkpoint raises one of :data:`DAMAGED`."""
    state = json.loads((path / "state.json").read_text())
    if not isinstance(state, dict) or "step" not in state or "rng" not in state:
        raise ValueError(f"{path / 'state.json'} lacks the step or the RNG states")
    snapshot = Snapshot(torch.load(path / "trainable.pt", map_location="cpu"),
                        torch.load(path / "optimizer.pt", map_location="cpu"))
    if not isinstance(snapshot.trainable, dict) or not snapshot.trainable:
        raise ValueError(f"{path / 'trainable.pt'} holds no tensors")
    return snapshot, state


def restore_rng(state: dict[str, Any]) -> None:
    """Set the torch, Python and NumPy RNGs to those a checkpoint's state recorded."""
    rng = state["rng"]
    torch.set_rng_state(torch.tensor(rng["torch"], dtype=torch.uint8))
    py = rng["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np_state = np.random.get_state()
    np.random.set_state((np_state[0], np.array(rng["numpy"], dtype=np.uint32), *np_state[2:]))


class Preemption:
    """SIGTERM as a request to stop at the next safe point (a cluster's preemption notice).

    Within ``with Preemption() as p:`` a SIGTERM only sets ``p.requested``; the trainer checks it
    after every step, writes a checkpoint and returns, so the process exits 0 and ``--resume``
    continues exactly there. The previous handler is restored on exit. Outside the main thread
    (where Python cannot install handlers) it does nothing.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True

    def __enter__(self) -> Preemption:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


def restore_newest(root: Path, model: torch.nn.Module, parallel: Any, optimizer: torch.optim.Optimizer,
                   console: Any) -> tuple[Path, dict[str, Any]] | None:
    """Restore the newest readable checkpoint under ``root`` into ``parallel`` (the trained model
    as it is wrapped: :class:`~codrl.distributed.torch_dist.TrainedModel`) and ``optimizer``, and the
    RNG states; return its path and state, or None when there is none.

    A damaged checkpoint (a truncated or garbled file, a missing tensor, bad JSON) is passed over
    with a warning on ``console`` naming it, and the previous complete one is used. Every rank
    reads the files (whatever world size wrote them) and keeps its own part.
    """
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    for path in resume_candidates(root):
        try:
            snapshot, state = read_checkpoint(path)
            missing = sorted(trainable - set(snapshot.trainable))
            if missing:
                raise ValueError(f"{path / 'trainable.pt'} lacks {len(missing)} tensor(s), e.g. {missing[0]}")
            parallel.restore(snapshot, optimizer, path)
        except DAMAGED as e:
            console.print(f"[bold yellow]warning:[/] checkpoint {path} is damaged and was skipped "
                          f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})")
            continue
        restore_rng(state)
        return path, state
    return None
