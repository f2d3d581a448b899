"""Atomic checkpoints: weights in HF format, optimizer, RNG states, step and data position.

Layout under ``<output_dir>/checkpoints/``::

    step-000003/
        model/               # peft adapter (LoRA) or full model, save_pretrained format
        trainable.pt         # exact trainable tensors (what resume loads)
        optimizer.pt
        state.json           # step, data position, metrics so far, RNG states
    latest                   # name of the newest complete checkpoint

A checkpoint is written into a temporary folder and renamed into place, then ``latest`` is
replaced atomically, so a crash at any moment leaves the previous checkpoint usable.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state().tolist(), "python": random.getstate(),
            "numpy": np.random.get_state()[1].tolist()}


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np_state = np.random.get_state()
    np.random.set_state((np_state[0], np.array(state["numpy"], dtype=np.uint32), *np_state[2:]))


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The tensors the optimizer updates (LoRA weights, or every weight when fully fine-tuning)."""
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(root: Path, step: int, model: torch.nn.Module, tokenizer: Any,
                    optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> Path:
    """Write checkpoint ``step`` atomically and point ``latest`` at it."""
    ckpt_dir = root / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:06d}"
    tmp = Path(tempfile.mkdtemp(dir=ckpt_dir, prefix=".tmp-"))
    try:
        model.save_pretrained(tmp / "model")
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp / "model")
        torch.save(trainable_state(model), tmp / "trainable.pt")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps({**state, "step": step, "rng": _rng_state()}))
        final = ckpt_dir / name
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    pointer = ckpt_dir / ".latest.tmp"
    pointer.write_text(name)
    os.replace(pointer, ckpt_dir / "latest")
    return ckpt_dir / name


def latest_checkpoint(root: Path) -> Path | None:
    """The newest complete checkpoint under ``root``, or None."""
    pointer = root / "checkpoints" / "latest"
    if not pointer.is_file():
        return None
    path = root / "checkpoints" / pointer.read_text().strip()
    return path if (path / "state.json").is_file() else None


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore weights, optimizer and RNG states from ``path``; return its state dict."""
    tensors = torch.load(path / "trainable.pt", map_location="cpu")
    params = dict(model.named_parameters())
    missing = [n for n in tensors if n not in params]
    if missing:
        raise RuntimeError(f"checkpoint {path} does not match the model (e.g. {missing[0]})")
    with torch.no_grad():
        for n, t in tensors.items():
            params[n].copy_(t.to(params[n].device, params[n].dtype))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu"))
    state = json.loads((path / "state.json").read_text())
    _set_rng_state(state["rng"])
    return state
