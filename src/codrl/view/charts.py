"""The overview's charts as inline SVG, drawn by matplotlib (the report plots' own drawing code).

Text stays text in the SVG (``svg.fonttype: none``), so the page is searchable and small, and the
element ids are stable (a fixed ``svg.hashsalt``).
"""

from __future__ import annotations

import io
import math
import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from cycler import cycler  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from codrl.eval.report import finite_ci, plot_panels  # noqa: E402
from codrl.view.data import GainPoint, Panel  # noqa: E402

_SVG_RC: dict[str, Any] = {"svg.fonttype": "none", "svg.hashsalt": "codrl-view", "font.size": 10}


def _clean_svg(svg: str) -> str:
    """Inline-ready SVG: no XML prolog or doctype (its natural size caps the page's scaling)."""
    return svg[svg.index("<svg"):]


def _series_cycle(n: int) -> Any:
    """Colors for ``n`` ordered series (training steps): a sequential map, early light, late dark."""
    cmap = plt.get_cmap("viridis")
    return cycler(color=[cmap(0.85 - 0.8 * i / max(1, n - 1)) for i in range(n)])


def _step_ticks(ax: Any, steps: Sequence[int]) -> None:
    """Integer ticks on a training-step axis: every step when there are few."""
    distinct = sorted(set(steps))
    if 0 < len(distinct) <= 12:
        ax.set_xticks(distinct)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def reward_svg(panels: Sequence[Panel], *, ordered_series: bool = False, max_cols: int = 3) -> str:
    """Per-position reward curves, one panel each, with intervals and chance lines."""
    rc = dict(_SVG_RC)
    if ordered_series:
        rc["axes.prop_cycle"] = _series_cycle(max((len(p.curves) for p in panels), default=1))
    spec = {p.title: (p.curves, p.chance) for p in panels}
    with matplotlib.rc_context(rc), tempfile.TemporaryDirectory() as tmp:
        path = plot_panels(spec, Path(tmp) / "reward.svg", max_cols=max_cols, panel_size=(6.0, 4.2))
        return _clean_svg(path.read_text(encoding="utf-8"))


def _render_svg(draw: Callable[[Sequence[Any]], None], *, figsize: tuple[float, float], ncols: int = 1,
                rc: Mapping[str, Any] | None = None) -> str:
    """A figure of ``ncols`` axes side by side, drawn by ``draw(axes)``, as inline SVG."""
    with matplotlib.rc_context({**_SVG_RC, **(rc or {})}):
        fig, axes = plt.subplots(1, ncols, figsize=figsize, squeeze=False)
        try:
            draw(list(axes[0]))
            fig.tight_layout()
            buf = io.StringIO()
            fig.savefig(buf, format="svg")
        finally:
            plt.close(fig)
    return _clean_svg(buf.getvalue())


def gain_svg(gains: Mapping[str, Sequence[GainPoint]]) -> str:
    """Training runs: reward at the first and last pack position and their gap, per evaluation step."""

    def draw(axes: Sequence[Any]) -> None:
        ax_r, ax_g = axes
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for i, (label, pts) in enumerate(gains.items()):
            color = colors[i % len(colors)]
            steps = [p.step for p in pts]
            ax_r.plot(steps, [p.first for p in pts], marker="o", linestyle="--", color=color, label=f"{label}: first task")
            ax_r.plot(steps, [p.last for p in pts], marker="o", color=color, label=f"{label}: last task")
            ax_g.plot(steps, [p.gain for p in pts], marker="o", color=color, label=label)
            with_ci = [p for p in pts if finite_ci(p.ci_low, p.ci_high)]
            if with_ci:
                lower = [p.gain - p.ci_low for p in with_ci]
                upper = [p.ci_high - p.gain for p in with_ci]
                ax_g.errorbar([p.step for p in with_ci], [p.gain for p in with_ci], yerr=[lower, upper],
                              fmt="none", ecolor=color, capsize=3)
        ax_g.axhline(0.0, color="gray", linewidth=1)
        ax_r.set_title("mean reward at the first and last task")
        ax_g.set_title("CoD gain (last - first task, 95% CI)")
        for ax in (ax_r, ax_g):
            _step_ticks(ax, [p.step for pts in gains.values() for p in pts])
            ax.set_xlabel("training step")
            ax.grid(True, alpha=0.3)
            ax.legend(loc="best", fontsize=7)

    return _render_svg(draw, figsize=(12.0, 4.2), ncols=2)


def history_svg(history: Sequence[Mapping[str, Any]]) -> str | None:
    """Training runs: the rollouts' mean reward per pack position at every update step."""
    keys = sorted({k for h in history for k in h if re.fullmatch(r"reward/pos\d+", k)},
                  key=lambda k: int(k.split("pos")[1]))
    rows = [h for h in history if "step" in h]
    if not rows or not keys:
        return None
    steps = [int(h["step"]) for h in rows]

    def draw(axes: Sequence[Any]) -> None:
        (ax,) = axes
        for k in keys:
            ax.plot(steps, [float(h.get(k, math.nan)) for h in rows], marker=".", label=f"position {k.split('pos')[1]}")
        if any("reward/mean" in h for h in rows):
            ax.plot(steps, [float(h.get("reward/mean", math.nan)) for h in rows], color="black", linewidth=2,
                    label="mean")
        _step_ticks(ax, steps)
        ax.set_xlabel("training step")
        ax.set_ylabel("mean reward of the step's rollouts")
        ax.set_title("training rollouts: reward by pack position")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize=7, ncol=2)

    return _render_svg(draw, figsize=(8.0, 4.0), rc={"axes.prop_cycle": _series_cycle(len(keys))})
