"""What one training step reports, and the progress bar that shows it.

The metrics: rewards by pack position (per environment in a mixture), validity, tokens, context
overflows, timings, advantage and update statistics. The bar (or one printed line per step) shows
the reward by position, the groups with signal and the loss.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
from rich.console import Console

from codrl.rollout.experience import LifecycleResult, ModelEpisode
from codrl.train.diagnostics import groups_with_signal


def reward_metrics(results: list[LifecycleResult], prefix: str) -> dict[str, float]:
    """``<prefix>mean`` and ``<prefix>pos<i>``: mean task reward overall and at each pack position."""
    out = {f"{prefix}mean": float(np.mean([np.mean(r.task_rewards) for r in results]))}
    for i in range(min(len(r.task_rewards) for r in results)):
        out[f"{prefix}pos{i}"] = float(np.mean([r.task_rewards[i] for r in results]))
    return out


def overflow_metrics(results: list[LifecycleResult]) -> dict[str, int]:
    """``rollout/context_overflow/all`` and ``.../pos<i>``: model calls not sent because they would
    pass the context window, in all and at each pack position (no metric name is the folder of
    another: MLflow's file store keeps each name as a path)."""
    out = {"rollout/context_overflow/all": sum(r.context_overflows for r in results)}
    for i in range(max((len(r.episodes) for r in results), default=0)):
        out[f"rollout/context_overflow/pos{i}"] = sum(r.episodes[i].context_overflows for r in results
                                                      if i < len(r.episodes))
    return out


def step_metrics(step: int, results: list[LifecycleResult], trained: Sequence[ModelEpisode], *,
                 env_names: Sequence[str], adv: Mapping[str, float], update: Mapping[str, float],
                 times: Mapping[str, float], extra: Mapping[str, Any]) -> dict[str, Any]:
    """The metrics of step ``step``: ``results`` played, ``trained`` the episodes the update used,
    ``adv`` the advantage metrics, ``update`` the update's, ``times`` seconds by phase and ``extra``
    (staleness) as they are. Per-environment rewards appear when ``env_names`` holds several."""
    by_env = {name: [r for r in results if r.env == name] for name in sorted({r.env for r in results})}
    return {
        "step": step,
        **reward_metrics(results, "reward/"),
        **({k: v for name, mine in by_env.items() for k, v in reward_metrics(mine, f"reward/{name}/").items()}
           if len(env_names) > 1 else {}),
        "format_valid": float(np.mean([e.format_valid for r in results for e in r.episodes])),
        "hint_valid": float(np.mean([e.hint_valid for r in results for e in r.episodes if e.hints_out is not None]
                                    or [1.0])),
        "tokens/trained": sum(ep.sampled_tokens for ep in trained),
        "rollout/env_errors": sum(r.env_errors for r in results),
        **overflow_metrics(results),
        **{f"time/{k}_s": v for k, v in times.items()},
        **{f"adv/{a}": b for a, b in adv.items()},
        **{f"train/{a}": b for a, b in update.items()},
        **{f"train/{a}": b for a, b in groups_with_signal(adv).items()},
        **extra,
    }


def position_text(m: Mapping[str, Any], env_names: Sequence[str], pack_size: int) -> str:
    """``[0.10 0.25 0.40]``, or per environment ``frozenlake [..] alchemy [..]`` for a mixture."""
    if len(env_names) == 1:
        return "[" + " ".join(f"{m[f'reward/pos{i}']:.2f}" for i in range(pack_size)) + "]"
    parts = []
    for name in env_names:
        vals = [m.get(f"reward/{name}/pos{i}") for i in range(pack_size)]
        if vals[0] is not None:
            parts.append(f"{name} [" + " ".join(f"{v:.2f}" for v in vals if v is not None) + "]")
    return " ".join(parts)


@contextmanager
def step_progress(console: Console, total: int, done: int, env_names: Sequence[str], pack_size: int,
                  bar: bool) -> Iterator[Callable[[int, Mapping[str, Any]], None]]:
    """A progress bar over ``total`` steps (``done`` already); yields ``show(step, metrics)``, which
    puts the step's reward by position, its groups with signal and its loss on the bar, or prints
    them as one line when ``bar`` is False (logs of batch jobs)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                  TimeElapsedColumn(), console=console, disable=not bar) as progress:
        task = progress.add_task("train", total=total, completed=done, info="")

        def show(step: int, m: Mapping[str, Any]) -> None:
            pos = position_text(m, env_names, pack_size)
            signal = f"groups with signal {m.get('train/groups_with_signal', 0)}/{m.get('train/groups', 0)}"
            progress.update(task, completed=step,
                            info=f"reward by position {pos} {signal} loss {m.get('train/loss', float('nan')):.4f}")
            if not bar:
                console.print(f"step {step}: reward by position {pos} {signal}")

        yield show
