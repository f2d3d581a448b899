"""Did the run train? Per-step learning-signal counts and how far the adapter moved.

A GRPO-style group (the repeats of one pack's episode at one position) carries a learning signal
only when its returns differ: with equal returns every advantage is 0 and the step's loss and
gradient vanish. A run whose groups are all like that leaves the model exactly as it was, and
nothing else in the logs says so plainly. This module gives the numbers and the sentence:

* ``train/groups_with_signal`` and ``train/groups`` per step (from the advantage metrics);
* ``train/adapter_delta``: the Frobenius norm of the change the LoRA adapters make to the base
  weights, ``sqrt(sum over adapted layers of ||scale * B @ A||^2)``. peft initialises ``B`` at 0,
  so it is 0 before the first effective update and needs no copy of the initial weights (it
  survives a resume);
* :func:`verdict`: the end-of-run line, e.g. "0 of 15 groups had reward variance: the model did
  not change".
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch


def groups_with_signal(adv_metrics: Mapping[str, float]) -> dict[str, int]:
    """``{"groups": n, "groups_with_signal": m}`` from :func:`~codrl.algo.advantages.compute_advantages`'s
    metrics (empty when the step had no experiences)."""
    if "num_groups" not in adv_metrics:
        return {}
    return {"groups": int(adv_metrics["num_groups"]), "groups_with_signal": int(adv_metrics["groups_with_signal"])}


def adapter_delta(model: torch.nn.Module) -> float | None:
    """Norm of the weight change of every LoRA layer of ``model`` (see the module docstring);
    None when the model has no LoRA layers (full fine-tuning)."""
    from peft.tuners.lora import LoraLayer

    total, found = 0.0, False
    with torch.no_grad():
        for module in model.modules():
            if not isinstance(module, LoraLayer) or not hasattr(module, "get_delta_weight"):
                continue
            for name in module.lora_A:
                found = True
                total += float(module.get_delta_weight(name).float().pow(2).sum())
    return math.sqrt(total) if found else None


def verdict(history: Sequence[Mapping[str, Any]], final_delta: float | None) -> tuple[bool, str]:
    """``(learned, sentence)`` for a finished run's step metrics: whether any step had a group with
    reward variance (and, with LoRA, whether the adapter moved), said in one line."""
    groups = sum(int(h.get("train/groups", 0)) for h in history)
    signal = sum(int(h.get("train/groups_with_signal", 0)) for h in history)
    steps_with = sum(1 for h in history if h.get("train/groups_with_signal", 0) > 0)
    if signal == 0:
        return False, (f"0 of {groups} groups had reward variance: every advantage was 0 and the model did not "
                       "change (more repeats, a higher temperature or an easier world give the groups a signal)")
    moved = "" if final_delta is None else f"; adapter delta {final_delta:.3g}"
    if final_delta is not None and final_delta == 0.0:
        return False, (f"{signal} of {groups} groups had reward variance, but the adapter did not move "
                       "(check the learning rate and the loss)")
    return True, (f"{signal} of {groups} groups had reward variance, in {steps_with} of {len(history)} steps"
                  f"{moved}")
