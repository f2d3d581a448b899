"""Evaluation reports: result files, reward-by-position plots and a console summary.

:func:`write_report` writes into ``out_dir``:

- ``results.json``: an :class:`EvalResults` (``{"title", "meta", "summary"}``, strict JSON, NaN
  written as ``null``), read back with :meth:`EvalResults.read`;
- ``episodes.csv``: one row per (lifecycle, position), see :data:`EPISODE_CSV_COLUMNS`;
- ``trajectories.jsonl``: one line per lifecycle, :meth:`LifecycleResult.to_json` (every hints
  block included);
- ``reward_by_position.png``: mean reward vs position with confidence bands, one line per mode.

Intervals follow :mod:`codrl.eval.metrics`: clipped to the reward range when the caller gives
one, and absent below ``min_packs`` packs, where the console table and the plot say "n<3"
(``null`` interval ends in ``results.json``; no error bar and no shaded band in the plot).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Self

import matplotlib
import pydantic_core

matplotlib.use("Agg")  # headless; must precede pyplot

import matplotlib.pyplot as plt  # noqa: E402
from pydantic import BaseModel, ConfigDict, ValidationError  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.markup import escape  # noqa: E402
from rich.table import Table  # noqa: E402

from codrl.eval.metrics import (  # noqa: E402
    MIN_PACKS,
    PositionStats,
    Summary,
    split_diff_key,
    summarize,
)
from codrl.errors import CodrlError  # noqa: E402
from codrl.rollout.experience import LifecycleResult  # noqa: E402

__all__ = [
    "MODE_LABELS",
    "EPISODE_CSV_COLUMNS",
    "RESULTS_JSON",
    "ResultsFile",
    "EvalResults",
    "EPISODES_CSV",
    "TRAJECTORIES_JSONL",
    "REWARD_PLOT",
    "mode_label",
    "write_report",
    "write_episodes_csv",
    "write_trajectories",
    "plot_curves",
    "plot_panels",
    "print_summary",
    "small_n_label",
    "finite_ci",
    "fmt_number",
]

#: Legend labels of the rollout modes.
MODE_LABELS: dict[str, str] = {
    "cod": "with hints (CoD)",
    "curator": "curated lessons",
    "nohint": "no hints (baseline)",
    "ralph": "Ralph loop",
    "ralph-curator": "Ralph loop, curated lessons",
    "ralph-nohint": "Ralph loop, no notes (baseline)",
}

RESULTS_JSON = "results.json"
EPISODES_CSV = "episodes.csv"
TRAJECTORIES_JSONL = "trajectories.jsonl"
REWARD_PLOT = "reward_by_position.png"

#: Header of ``episodes.csv``. ``hints_in_chars`` / ``hints_out_chars`` are lengths in
#: characters (``hints_out_chars`` is empty when no context update ran after the task).
#: ``curator_applied`` / ``curator_rejected`` count the accepted (ADD, REVISE, REMOVE) and the
#: rejected operations of a curator step (empty in the other modes).
EPISODE_CSV_COLUMNS: tuple[str, ...] = (
    "pack_id",
    "env",
    "split",
    "mode",
    "repeat",
    "position",
    "task_id",
    "env_reward",
    "reward",
    "success",
    "format_valid",
    "completion_tokens",
    "num_turns",
    "hint_valid",
    "hint_reward",
    "hints_in_chars",
    "hints_out_chars",
    "curator_applied",
    "curator_rejected",
)


def mode_label(mode: str) -> str:
    """Human-readable label of a rollout mode (the mode name itself when unknown)."""
    return MODE_LABELS.get(mode, mode)


def fmt_number(v: float, digits: int = 3) -> str:
    """``v`` with ``digits`` decimals, or ``n/a`` for None, NaN and infinities."""
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def _fmt_signed(v: float, digits: int = 3) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:+.{digits}f}"


def finite_ci(lo: float | None, hi: float | None) -> bool:
    """Whether ``[lo, hi]`` is an interval (both ends given and finite)."""
    return lo is not None and hi is not None and math.isfinite(lo) and math.isfinite(hi)


def small_n_label(min_packs: int = MIN_PACKS) -> str:
    """What reports show instead of an interval with fewer than ``min_packs`` packs."""
    return f"n<{min_packs}"


def _fmt_ci(
    lo: float, hi: float, digits: int = 3, *, n: int | None = None, min_packs: int = MIN_PACKS
) -> str:
    """`` [lo, hi]``; `` (n<3)`` when the interval is missing because ``n < min_packs``."""
    if not finite_ci(lo, hi):
        if n is not None and n < min_packs:
            return f" ({small_n_label(min_packs)})"
        return ""
    return f" [{lo:.{digits}f}, {hi:.{digits}f}]"


def _fmt_pct(v: float) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{100.0 * v:.1f}%"


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


class ResultsFile(BaseModel):
    """A JSON result file written and read by one type (``results.json``, ``matrix.json``,
    ``ralph.json``).

    :meth:`write` writes strict JSON (non-finite numbers as ``null``, values of no JSON type as
    their ``str``); :meth:`read` validates a file with the same type and turns a missing,
    unparsable or malformed file into a one-line :class:`~codrl.errors.CodrlError` naming the file
    and the first bad field. Unknown keys are ignored, so newer files read with older code.
    """

    model_config = ConfigDict(extra="ignore")

    #: What error messages call the file ("not a codrl <kind>").
    kind: ClassVar[str] = "results file"

    def write(self, path: Path) -> Path:
        """Write this object to ``path`` as indented JSON; return ``path``."""
        path = Path(path)
        path.write_text(self.model_dump_json(indent=2, fallback=str) + "\n", encoding="utf-8")
        return path

    @classmethod
    def read(cls, path: Path) -> Self:
        """The object stored in ``path``."""
        try:
            return cls.model_validate_json(Path(path).read_bytes())
        except OSError as e:
            raise CodrlError(f"{path}: cannot read the {cls.kind} ({e.strerror or e})") from None
        except ValidationError as e:
            first = e.errors()[0]
            field = ".".join(str(part) for part in first["loc"]) or "(the whole file)"
            got = first.get("input")
            got_s = f" (got {got!r})" if first["loc"] and not isinstance(got, (dict, list)) else ""
            more = f"; and {e.error_count() - 1} more" if e.error_count() > 1 else ""
            raise CodrlError(f"{path}: not a codrl {cls.kind}: {field}: {first['msg']}{got_s}{more}") from None


class EvalResults(ResultsFile):
    """``results.json`` of an evaluation (``codrl eval``, a matrix cell, a Ralph run, a training
    evaluation): its title, the caller's ``meta`` (stored as given; ``chance_reward`` draws the
    chance line) and the :class:`~codrl.eval.metrics.Summary`."""

    title: str = ""
    meta: dict[str, Any] = {}
    summary: Summary


def write_episodes_csv(results: Sequence[LifecycleResult], path: Path) -> Path:
    """Write one CSV row per (lifecycle, position) with :data:`EPISODE_CSV_COLUMNS`."""
    path = Path(path)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(EPISODE_CSV_COLUMNS)
        for r in results:
            for ep in r.episodes:
                ops = ep.curator_ops
                writer.writerow(
                    [
                        r.pack_id,
                        r.env,
                        r.split,
                        r.mode,
                        r.repeat,
                        ep.position,
                        ep.task_id,
                        ep.env_reward,
                        ep.reward,
                        int(bool(ep.success)),
                        int(bool(ep.format_valid)),
                        ep.completion_tokens,
                        len(ep.turns),
                        int(bool(ep.hint_valid)),
                        ep.hint_reward,
                        len(ep.hints_in or ""),
                        "" if ep.hints_out is None else len(ep.hints_out),
                        "" if ops is None else sum(ops.get(k, 0) for k in ("added", "revised", "removed")),
                        "" if ops is None else ops.get("rejected", 0),
                    ]
                )
    return path


def write_trajectories(results: Sequence[LifecycleResult], path: Path) -> Path:
    """Write one JSON line per lifecycle (:meth:`LifecycleResult.to_json`; non-finite numbers as ``null``)."""
    path = Path(path)
    with path.open("w", encoding="utf-8") as fh:
        for r in results:
            fh.write(pydantic_core.to_json(r.to_json(), inf_nan_mode="null").decode() + "\n")
    return path


def write_report(
    results: Sequence[LifecycleResult],
    out_dir: Path,
    *,
    title: str,
    meta: Mapping[str, Any],
    confidence: float = 0.95,
    reward_range: tuple[float, float] | None = None,
    min_packs: int = MIN_PACKS,
) -> Summary:
    """Summarise ``results`` and write the report files (see module docstring) to ``out_dir``.

    ``meta`` is stored verbatim in ``results.json`` (an :class:`EvalResults`; non-JSON values as
    strings); its optional ``"chance_reward"`` draws a dashed chance-level line in the plot.
    ``reward_range`` and ``min_packs`` go to :func:`~codrl.eval.metrics.summarize` (interval
    clipping and the "n too small" rule). Returns the summary.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(
        results, confidence=confidence, reward_range=reward_range, min_packs=min_packs
    )

    EvalResults(title=title, meta=dict(meta), summary=summary).write(out / RESULTS_JSON)
    write_episodes_csv(results, out / EPISODES_CSV)
    write_trajectories(results, out / TRAJECTORIES_JSONL)
    plot_curves(
        {mode_label(m): summary.positions[m] for m in summary.modes},
        out / REWARD_PLOT,
        title=title,
        chance_reward=meta.get("chance_reward"),
        confidence=confidence,
        min_packs=summary.min_packs,
    )
    return summary


# --------------------------------------------------------------------------------------------
# Plot
# --------------------------------------------------------------------------------------------


def _ci_runs(pts: Sequence[PositionStats]) -> list[list[PositionStats]]:
    """Maximal runs of consecutive points that all have a finite interval (for the bands)."""
    runs: list[list[PositionStats]] = []
    current: list[PositionStats] = []
    for s in pts:
        if finite_ci(s.ci_low, s.ci_high):
            current.append(s)
        else:
            if current:
                runs.append(current)
            current = []
    if current:
        runs.append(current)
    return runs


def plot_curves(
    curves: Mapping[str, Sequence[PositionStats]],
    out_path: Path,
    *,
    title: str = "Mean reward by position in pack",
    chance_reward: float | None = None,
    ylabel: str = "mean reward",
    confidence: float = 0.95,
    min_packs: int = MIN_PACKS,
) -> Path:
    """Plot mean reward vs pack position, one line per entry of ``curves`` (label -> stats).

    Each line has error bars and a shaded band for its confidence interval where one is
    defined; points without one get neither, and those with fewer than ``min_packs`` packs are
    labelled "n<3" (``min_packs`` as given). ``chance_reward`` adds a dashed horizontal
    chance-level line. Reusable for "before vs after training" comparisons. Writes a PNG (or
    whatever ``out_path``'s suffix names) and returns ``out_path``.
    """
    return plot_panels({title: (curves, chance_reward)}, out_path, ylabel=ylabel, confidence=confidence,
                       min_packs=min_packs, panel_size=(7.0, 4.5))


def plot_panels(
    panels: Mapping[str, tuple[Mapping[str, Sequence[PositionStats]], float | None]],
    out_path: Path,
    *,
    title: str | None = None,
    ylabel: str = "mean reward",
    confidence: float = 0.95,
    min_packs: int = MIN_PACKS,
    panel_size: tuple[float, float] = (4.6, 3.6),
    max_cols: int = 4,
) -> Path:
    """One panel per entry of ``panels`` (panel title -> (label -> stats, chance reward)).

    Every panel is drawn like :func:`plot_curves` (one line per label, intervals, chance line);
    used for one panel per environment of a training mixture and per evaluation set of a matrix.
    """
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    n = max(1, len(panels))
    cols = min(max_cols, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(panel_size[0] * cols, panel_size[1] * rows), dpi=120,
                             squeeze=False)
    try:
        for i, (panel_title, (curves, chance)) in enumerate(panels.items()):
            _draw_curves(axes[i // cols][i % cols], curves, title=panel_title, chance_reward=chance,
                         ylabel=ylabel, confidence=confidence, min_packs=min_packs)
        for j in range(len(panels), rows * cols):
            axes[j // cols][j % cols].axis("off")
        if title and len(panels) > 1:
            fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(out_path)
    finally:
        plt.close(fig)
    return out_path


def _draw_curves(
    ax: Any,
    curves: Mapping[str, Sequence[PositionStats]],
    *,
    title: str,
    chance_reward: float | None,
    ylabel: str,
    confidence: float,
    min_packs: int,
) -> None:
    all_positions: set[int] = set()
    drawn = 0
    small_n = False
    for label, stats in curves.items():
        pts = [s for s in stats if math.isfinite(s.mean_reward)]
        if not pts:
            continue
        xs = [s.position for s in pts]
        ys = [s.mean_reward for s in pts]
        all_positions.update(xs)
        (line,) = ax.plot(xs, ys, marker="o", label=label)
        color = line.get_color()
        with_ci = [s for s in pts if finite_ci(s.ci_low, s.ci_high)]
        if with_ci:
            ax.errorbar(
                [s.position for s in with_ci],
                [s.mean_reward for s in with_ci],
                yerr=[
                    [s.mean_reward - s.ci_low for s in with_ci],
                    [s.ci_high - s.mean_reward for s in with_ci],
                ],
                fmt="none",
                ecolor=color,
                capsize=4,
            )
        for run in _ci_runs(pts):
            if len(run) > 1:
                ax.fill_between(
                    [s.position for s in run],
                    [s.ci_low for s in run],
                    [s.ci_high for s in run],
                    color=color,
                    alpha=0.15,
                    linewidth=0,
                )
        for s in pts:
            if not finite_ci(s.ci_low, s.ci_high) and s.n_packs < min_packs:
                small_n = True
                ax.annotate(
                    small_n_label(min_packs),
                    (s.position, s.mean_reward),
                    textcoords="offset points",
                    xytext=(0, 7),
                    ha="center",
                    fontsize=8,
                    color=color,
                )
        drawn += 1
    if chance_reward is not None and math.isfinite(float(chance_reward)):
        ax.axhline(float(chance_reward), color="gray", linestyle="--", linewidth=1.2, label="chance")
    if drawn == 0:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, fontsize=14, color="gray")
    if all_positions:
        ax.set_xticks(sorted(all_positions))
    ax.set_xlabel("task position in pack")
    ax.set_ylabel(f"{ylabel} ({100 * confidence:.0f}% CI over packs)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if small_n:
        note = f"{small_n_label(min_packs)}: fewer than {min_packs} packs, no interval"
        ax.text(0.01, 0.01, note, ha="left", va="bottom", transform=ax.transAxes, fontsize=7, color="gray")
    if drawn or chance_reward is not None:
        ax.legend(loc="best")


# --------------------------------------------------------------------------------------------
# Console
# --------------------------------------------------------------------------------------------


def print_summary(summary: Summary, console: Console | None = None) -> None:
    """Print one rich table per mode, the CoD gain per mode and, when a mode's no-context baseline
    (``nohint``, or ``ralph-nohint`` for Ralph loops) was also run, the per-position reward
    difference against it.

    Intervals print as ``[lo, hi]``; where there are fewer than ``summary.min_packs`` packs,
    "(n<3)" takes the interval's place. A closing line says how intervals were computed (and the
    reward range they were clipped to, if any)."""
    console = console or Console()
    conf = f"{100 * summary.confidence:.0f}%"

    def fmt_ci(lo: float, hi: float, *, n: int | None) -> str:
        return _fmt_ci(lo, hi, n=n, min_packs=summary.min_packs)

    if not summary.modes:
        console.print("[yellow]No evaluation results.[/yellow]")
        return
    for mode in summary.modes:
        table = Table(title=escape(f"{mode_label(mode)} [{mode}]"))
        table.add_column("position", justify="right", min_width=8, no_wrap=True)
        table.add_column(f"mean reward [{conf} CI]", justify="right", no_wrap=True)
        table.add_column("success", justify="right")
        table.add_column("format valid", justify="right")
        table.add_column("hint valid", justify="right")
        table.add_column("n packs/eps", justify="right", no_wrap=True)
        for s in summary.positions.get(mode, []):
            table.add_row(
                str(s.position),
                fmt_number(s.mean_reward) + fmt_ci(s.ci_low, s.ci_high, n=s.n_packs),
                _fmt_pct(s.success_rate),
                _fmt_pct(s.format_valid_rate),
                _fmt_pct(s.hint_valid_rate) if s.n_updates else "-",
                f"{s.n_packs}/{s.n_episodes}",
            )
        ov = summary.overall.get(mode)
        if ov is not None:
            table.add_section()
            table.add_row(
                "all",
                fmt_number(ov.mean_reward) + fmt_ci(ov.ci_low, ov.ci_high, n=ov.n_packs),
                _fmt_pct(ov.success_rate),
                _fmt_pct(ov.format_valid_rate),
                _fmt_pct(ov.hint_valid_rate),
                f"{ov.n_packs}/{ov.n_episodes}",
            )
        console.print(table)
        if mode in summary.cod_gain:
            lo, hi = summary.cod_gain_ci.get(mode, (math.nan, math.nan))
            stats = summary.positions[mode]
            console.print(
                f"CoD gain, {mode_label(mode)}: reward at position {stats[-1].position} minus "
                f"position {stats[0].position} = [bold]{_fmt_signed(summary.cod_gain[mode])}"
                f"[/bold]{fmt_ci(lo, hi, n=summary.cod_gain_n.get(mode))}"
            )
    for key, diffs in summary.mode_diffs.items():
        if not diffs:
            continue
        mode, base = split_diff_key(key)
        parts = ", ".join(
            f"{d.position}: {_fmt_signed(d.diff)}{fmt_ci(d.ci_low, d.ci_high, n=d.n_packs)}"
            for d in diffs
        )
        console.print(
            f"Difference {mode_label(mode)} minus {mode_label(base)} by position: {parts}"
        )
    console.print(_ci_note(summary), style="dim", highlight=False)


def _ci_note(summary: Summary) -> str:
    """One line saying how the intervals were computed."""
    note = f"{100 * summary.confidence:.0f}% CI: Student-t over per-pack means"
    if summary.reward_range is not None:
        lo, hi = summary.reward_range
        note += f", clipped to the reward range [{lo:g}, {hi:g}] (differences to ±{hi - lo:g})"
    k = summary.min_packs
    cells: list[tuple[float, float, int | None]] = []
    for mode in summary.modes:
        cells += [(s.ci_low, s.ci_high, s.n_packs) for s in summary.positions.get(mode, [])]
        ov = summary.overall.get(mode)
        if ov is not None:
            cells.append((ov.ci_low, ov.ci_high, ov.n_packs))
        if mode in summary.cod_gain_ci:
            cells.append((*summary.cod_gain_ci[mode], summary.cod_gain_n.get(mode)))
    for diffs in summary.mode_diffs.values():
        cells += [(d.ci_low, d.ci_high, d.n_packs) for d in diffs]
    if any(not finite_ci(lo, hi) and n is not None and n < k for lo, hi, n in cells):
        note += f"; {small_n_label(k)}: fewer than {k} packs, no interval"
    return note + "."
