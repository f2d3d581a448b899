"""The data a view page is built from: report folders, lifecycles, hints diffs, filters, sampling.

A *run folder* is anything ``codrl eval``, ``codrl train``, ``codrl matrix`` or ``codrl ralph``
wrote: it holds one or more *report folders* (a ``results.json``, usually beside a
``trajectories.jsonl``) at any depth:

- an evaluation or Ralph run: the run folder itself;
- a training run: ``eval/step-<n>/`` (``eval/step-<n>/<env>/`` for a mixture), one per evaluation;
- a matrix: ``cells/<model>/<evaluation set>/``.

Each report folder gets a *series* name (what differs between folders: the training step or the
matrix row) and a *panel* name (what stays fixed: the environment or the evaluation set).
Together with a rollout mode this names a *variant*; the page compares lifecycles of the same
pack and repeat across variants.

Everything here is plain data, tested without a browser; :mod:`codrl.view.page` renders it.
"""

from __future__ import annotations

import difflib
import math
import random
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from codrl.errors import CodrlError
from codrl.eval.metrics import PositionStats, Summary
from codrl.eval.report import RESULTS_JSON, TRAJECTORIES_JSONL, EvalResults, finite_ci, mode_label
from codrl.rollout.experience import EpisodeJSON, TrajectoryRecord

#: Folders never searched for reports (model weights, notes, TensorBoard logs).
SKIP_DIRS = frozenset({"checkpoints", "notes", "tb", "model", ".git", "__pycache__"})

#: One line of a hints diff: ``"+"`` written, ``"-"`` dropped, ``" "`` kept.
DiffOp = Literal["+", "-", " "]


# --------------------------------------------------------------------------------------------
# Report folders
# --------------------------------------------------------------------------------------------


@dataclass
class ReportFolder:
    """One ``results.json`` (and its ``trajectories.jsonl``) inside a run folder."""

    path: Path
    rel: str  # path relative to the run folder ("." for the run folder itself)
    title: str
    meta: dict[str, Any]
    summary: Summary
    env: str
    series: str | None  # "step 3", a matrix row; None for a lone evaluation
    panel: str  # the environment, or a matrix evaluation set
    step: int | None = None  # the training step of a trainer's evaluation
    order: tuple[Any, ...] = ()
    show_env: bool = False  # the run spans several environments: name it in variant labels

    @property
    def trajectories(self) -> Path:
        return self.path / TRAJECTORIES_JSONL

    def variant_label(self, mode: str) -> str:
        """Name of ``(this folder, mode)`` on the page."""
        parts = [self.series] if self.series else []
        if self.series and self.panel != self.env:
            parts.append(self.panel)
        elif self.show_env:
            parts.append(self.env)
        parts.append(mode)
        return " · ".join(parts)


_STEP_DIR = re.compile(r"(?:^|/)step-(\d+)(?:/|$)")


def _natural_key(text: str) -> tuple[Any, ...]:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text))


def _walk_results(root: Path) -> Iterator[Path]:
    if (root / RESULTS_JSON).is_file():
        yield root / RESULTS_JSON
    for child in sorted(p for p in root.iterdir() if p.is_dir()):
        if child.name not in SKIP_DIRS and not child.name.startswith("."):
            yield from _walk_results(child)


def find_reports(run_dir: Path | str) -> list[ReportFolder]:
    """Every report folder under ``run_dir``, training steps in step order.

    Reports are read with :class:`~codrl.eval.report.EvalResults`, the type that wrote them. Raises
    :class:`~codrl.errors.CodrlError` when ``run_dir`` is missing, holds no report or a malformed
    one (the message names the file and the field).
    """
    root = Path(run_dir)
    if not root.is_dir():
        raise CodrlError(f"run folder {str(root)!r} does not exist (give a folder written by "
                         "codrl eval, train, matrix or ralph)")
    folders: list[ReportFolder] = []
    for path in _walk_results(root):
        results = EvalResults.read(path)
        folder = path.parent
        rel = folder.relative_to(root).as_posix() or "."
        folders.append(_describe(folder, rel, results.title or rel, results.meta, results.summary))
    if not folders:
        raise CodrlError(f"no evaluation report under {str(root)!r}: expected a {RESULTS_JSON} written by "
                         "codrl eval, train, matrix or ralph")
    folders.sort(key=lambda f: f.order)
    if len({f.env for f in folders}) > 1:
        for f in folders:
            f.show_env = True
    return folders


def _describe(folder: Path, rel: str, title: str, meta: dict[str, Any], summary: Summary) -> ReportFolder:
    env = str(meta.get("env") or _first_env(folder / TRAJECTORIES_JSONL) or folder.name)
    parts = rel.split("/")
    # A matrix cell first: its model may be a checkpoint named step-<n>.
    if len(parts) >= 3 and parts[-3] == "cells":  # cells/<model>/<eval set>
        return ReportFolder(folder, rel, title, meta, summary, env, parts[-2], parts[-1],
                            order=(1, _natural_key(parts[-1]), _natural_key(parts[-2])))
    step = _training_step(rel, meta)
    if step is not None:  # a training run's evaluation
        return ReportFolder(folder, rel, title, meta, summary, env, f"step {step}", env, step, (0, env, step))
    series = None if rel == "." else rel
    return ReportFolder(folder, rel, title, meta, summary, env, series, env, order=(2, _natural_key(rel)))


def _training_step(rel: str, meta: dict[str, Any]) -> int | None:
    """The training step of a trainer's evaluation folder (``meta["step"]``, else ``step-<n>`` in its path)."""
    if meta.get("step") is not None:
        return int(meta["step"])
    m = _STEP_DIR.search(rel)
    return int(m.group(1)) if m else None


def _first_env(path: Path) -> str | None:
    try:
        with path.open(encoding="utf-8") as f:
            line = f.readline()
        return TrajectoryRecord.model_validate_json(line).env or None if line.strip() else None
    except (OSError, ValueError):  # pydantic's ValidationError is a ValueError
        return None


# --------------------------------------------------------------------------------------------
# Curves (what the overview plots)
# --------------------------------------------------------------------------------------------


@dataclass
class Panel:
    """One chart panel: a curve per label, the chance level where known."""

    title: str
    curves: dict[str, list[PositionStats]] = field(default_factory=dict)
    chance: float | None = None


def reward_panels(folders: Sequence[ReportFolder]) -> list[Panel]:
    """Per-position reward curves grouped into panels.

    A lone evaluation: one panel per environment, a curve per mode. Training runs and matrices:
    one panel per environment (or evaluation set) and mode, a curve per step (or model), so the
    CoD effect appearing during training reads as the curves tilting upwards step after step.
    """
    panels: dict[str, Panel] = {}
    multi_mode = len({m for f in folders for m in f.summary.modes}) > 1
    for f in folders:
        for mode in f.summary.modes:
            if f.series is None:
                key, label = f.panel, mode_label(mode)
            else:
                key = f"{f.panel} · {mode}" if multi_mode else f.panel
                label = f.series
            panel = panels.setdefault(key, Panel(key))
            panel.curves[label] = list(f.summary.positions.get(mode, []))
            chance = f.meta.get("chance_reward")
            if panel.chance is None and isinstance(chance, (int, float)) and math.isfinite(chance):
                panel.chance = float(chance)
    return list(panels.values())


@dataclass
class GainPoint:
    """The CoD gain (last position minus position 0) of one training evaluation."""

    step: int
    gain: float
    ci_low: float | None
    ci_high: float | None
    first: float
    last: float


def _finite_points(summary: Summary, mode: str) -> list[PositionStats]:
    """The positions of ``mode`` that have a mean reward."""
    return [p for p in summary.positions.get(mode, []) if math.isfinite(p.mean_reward)]


def _gain_interval(summary: Summary, mode: str, gain: float) -> tuple[float, float] | None:
    """The interval of ``mode``'s gain, widened to hold ``gain`` (a rounding error can put the gain
    outside a zero-width interval); None when there is none."""
    ci = summary.cod_gain_ci.get(mode)
    if ci is None or not finite_ci(*ci):
        return None
    return min(ci[0], gain), max(ci[1], gain)


def gain_by_step(folders: Sequence[ReportFolder]) -> dict[str, list[GainPoint]]:
    """For training runs: ``"<env> · <mode>"`` -> the gain at every evaluation step, in step order."""
    out: dict[str, list[GainPoint]] = {}
    for f in folders:
        if f.step is None:
            continue
        for mode in f.summary.modes:
            pts = _finite_points(f.summary, mode)
            if len(pts) < 2:
                continue
            gain = f.summary.cod_gain.get(mode, pts[-1].mean_reward - pts[0].mean_reward)
            lo, hi = _gain_interval(f.summary, mode, gain) or (None, None)
            out.setdefault(f"{f.env} · {mode}", []).append(
                GainPoint(f.step, float(gain), lo, hi, pts[0].mean_reward, pts[-1].mean_reward))
    for pts in out.values():
        pts.sort(key=lambda p: p.step)
    return out


def summary_rows(folders: Sequence[ReportFolder]) -> list[dict[str, Any]]:
    """One table row per variant: packs, reward at the first and last position, the gain."""
    rows = []
    for f in folders:
        for mode in f.summary.modes:
            pts = _finite_points(f.summary, mode)
            overall = f.summary.overall.get(mode)
            gain = f.summary.cod_gain.get(mode)
            ci = None if gain is None else _gain_interval(f.summary, mode, gain)
            rows.append({
                "variant": f.variant_label(mode),
                "env": f.env,
                "mode": mode,
                "packs": overall.n_packs if overall else None,
                "episodes": overall.n_episodes if overall else None,
                "first": pts[0].mean_reward if pts else None,
                "last": pts[-1].mean_reward if pts else None,
                "gain": gain,
                "gain_ci": list(ci) if ci else None,
                "success": overall.success_rate if overall else None,
                "format_valid": overall.format_valid_rate if overall else None,
                "hint_valid": overall.hint_valid_rate if overall and math.isfinite(overall.hint_valid_rate) else None,
            })
    return rows


# --------------------------------------------------------------------------------------------
# Hints diffs
# --------------------------------------------------------------------------------------------


def hints_diff(old: str, new: str) -> list[tuple[DiffOp, str]]:
    """Line diff of a hints block against the previous one: ``(op, line)`` in reading order.

    ``"+"`` lines were written, ``"-"`` lines dropped, ``" "`` lines kept. Blank lines are
    ignored; a replaced line shows as its removal followed by the new line.
    """
    a = [ln for ln in old.splitlines() if ln.strip()]
    b = [ln for ln in new.splitlines() if ln.strip()]
    out: list[tuple[DiffOp, str]] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if tag == "equal":
            out += [(" ", ln) for ln in a[i1:i2]]
        else:
            out += [("-", ln) for ln in a[i1:i2]]
            out += [("+", ln) for ln in b[j1:j2]]
    return out


def diff_counts(diff: Iterable[tuple[DiffOp, str]]) -> dict[str, int]:
    """``{"added", "removed", "kept"}`` line counts of a :func:`hints_diff`."""
    ops = [op for op, _ in diff]
    return {"added": ops.count("+"), "removed": ops.count("-"), "kept": ops.count(" ")}


# --------------------------------------------------------------------------------------------
# Lifecycles and filters
# --------------------------------------------------------------------------------------------


class EpisodeFilter(BaseModel):
    """Which episodes to show; a lifecycle is shown when one of its episodes matches.

    The page applies the same rules in the browser (``view.js``); the CLI uses this class to
    keep only matching lifecycles in the file.
    """

    model_config = ConfigDict(extra="forbid")

    envs: list[str] = Field(default_factory=list, description="environment names (empty: all)")
    variants: list[str] = Field(default_factory=list, description="variant labels (empty: all)")
    positions: list[int] = Field(default_factory=list, description="pack positions (empty: all)")
    outcome: Literal["any", "success", "failure"] = "any"
    invalid_format: bool = Field(False, description="only episodes with a malformed reply")
    invalid_hints: bool = Field(False, description="only episodes whose hints update was invalid")
    search: str = Field("", description="case-insensitive text to find in replies or hints")

    @property
    def active(self) -> bool:
        return self != EpisodeFilter()

    def matches_episode(self, ep: dict[str, Any]) -> bool:
        """``ep`` is an episode of the page data (:func:`episode_row`)."""
        if self.positions and ep["p"] not in self.positions:
            return False
        if self.outcome == "success" and not ep["ok"]:
            return False
        if self.outcome == "failure" and ep["ok"]:
            return False
        if self.invalid_format and ep["fv"]:
            return False
        if self.invalid_hints and ep["hv"] is not False:
            return False
        if self.search:
            needle = self.search.lower()
            texts = [t[1] for t in ep["turns"]] + [ep["hin"]] + [line for _, line in ep["diff"] or []]
            if not any(needle in t.lower() for t in texts):
                return False
        return True

    def matches(self, lc: dict[str, Any], variant_label: str) -> bool:
        """``lc`` is a lifecycle of the page data (:func:`lifecycle_row`)."""
        if self.envs and lc["env"] not in self.envs:
            return False
        if self.variants and variant_label not in self.variants:
            return False
        return any(self.matches_episode(ep) for ep in lc["eps"])


def clip_text(text: str, max_chars: int) -> str:
    """``text`` cut to ``max_chars`` characters with a note saying how much was cut."""
    if max_chars <= 0 or len(text) <= max_chars:
        return text
    return f"{text[:max_chars]}\n… [{len(text) - max_chars} more characters cut; see {TRAJECTORIES_JSONL}]"


def episode_row(ep: EpisodeJSON | Mapping[str, Any], max_chars: int, reward_visible: bool = True) -> dict[str, Any]:
    """One episode of a ``trajectories.jsonl`` record in the page's compact form.

    Keys: ``p`` position, ``task``, ``r`` reward, ``er`` environment reward, ``rh`` True when the
    environment hid the reward from the model (the page marks it "not shown to the model"), ``ok`` success,
    ``fv`` format valid, ``hv`` hints valid (None when no update ran), ``hr`` hint reward,
    ``turns`` ``[observation, reply, feedback, valid, reward]``, ``fb`` the episode's final
    feedback where it is not the last turn's (a turn cap ended it; else None), ``hin``
    the hints given, ``diff`` the hints written as :func:`hints_diff` against ``hin`` (None when
    no update ran), ``ops`` curator operation counts.
    """
    e = ep if isinstance(ep, EpisodeJSON) else EpisodeJSON.model_validate(ep)
    turns = e.turns
    return {
        "p": e.position,
        "task": e.task_id,
        "r": e.reward,
        "er": e.env_reward,
        "rh": not reward_visible,
        "ok": e.success,
        "fv": e.format_valid,
        "hv": None if e.hints_out is None else e.hint_valid,
        "hr": e.hint_reward,
        "turns": [[clip_text(t.observation, max_chars), clip_text(t.reply, max_chars), clip_text(t.feedback, max_chars),
                   t.valid, t.reward] for t in turns],
        "fb": None if turns and e.feedback == turns[-1].feedback else clip_text(e.feedback, max_chars),
        "hin": clip_text(e.hints_in, max_chars),
        "diff": None if e.hints_out is None else [[op, clip_text(line, max_chars)]
                                                  for op, line in hints_diff(e.hints_in, e.hints_out)],
        "ops": e.curator_ops,
    }


def lifecycle_row(rec: TrajectoryRecord | Mapping[str, Any], variant: int, max_chars: int) -> dict[str, Any]:
    """One ``trajectories.jsonl`` line in the page's compact form (``v`` indexes the variants)."""
    r = rec if isinstance(rec, TrajectoryRecord) else TrajectoryRecord.model_validate(rec)
    eps = [episode_row(e, max_chars, r.reward_visible) for e in r.episodes]
    return {"v": variant, "pack": r.pack_id, "env": r.env, "repeat": r.repeat, "eps": eps}


def read_trajectories(path: Path) -> Iterator[TrajectoryRecord]:
    """Records of a ``trajectories.jsonl``, read with the type that wrote them; a truncated last line
    (an interrupted write) or a line that is not a record is skipped."""
    if not path.is_file():
        return
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                try:
                    yield TrajectoryRecord.model_validate_json(line)
                except ValidationError:
                    continue


# --------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------


def sample_packs(episodes_per_pack: dict[str, int], max_episodes: int, seed: int = 0) -> set[str]:
    """Packs to keep so that their episodes fit ``max_episodes`` (all when they fit).

    Whole packs are kept (every variant and repeat of a kept pack, so comparisons stay complete),
    drawn in a seeded random order; at least one pack is always kept.
    """
    if max_episodes <= 0 or sum(episodes_per_pack.values()) <= max_episodes:
        return set(episodes_per_pack)
    order = sorted(episodes_per_pack, key=_natural_key)
    random.Random(seed).shuffle(order)
    kept: set[str] = set()
    total = 0
    for pack in order:
        n = episodes_per_pack[pack]
        if kept and total + n > max_episodes:
            continue
        kept.add(pack)
        total += n
    return kept


# --------------------------------------------------------------------------------------------
# The page data
# --------------------------------------------------------------------------------------------


@dataclass
class ViewData:
    """Everything the page shows, before rendering."""

    run_dir: str
    folders: list[ReportFolder]
    variants: list[dict[str, Any]]  # {"label", "folder", "mode", "env"}
    lifecycles: list[dict[str, Any]]
    total_lifecycles: int
    total_episodes: int
    shown_episodes: int
    sampled: bool
    max_episodes: int
    prefilter: EpisodeFilter

    def page_json(self) -> dict[str, Any]:
        """The JSON the page's script reads; ``pairs`` lists, per pack and repeat, its lifecycle under
        each variant (what the comparison view offers)."""
        pairs = [{"pack": pack, "repeat": rep, "lcs": {str(v): i for v, i in lcs.items()}}
                 for (pack, rep), lcs in group_by_pack(self.lifecycles).items()]
        return {"run_dir": self.run_dir, "variants": self.variants, "lifecycles": self.lifecycles, "pairs": pairs,
                "total_lifecycles": self.total_lifecycles, "total_episodes": self.total_episodes,
                "shown_episodes": self.shown_episodes, "sampled": self.sampled, "max_episodes": self.max_episodes,
                "prefilter": self.prefilter.model_dump() if self.prefilter.active else None}


def load_view(run_dir: Path | str, *, max_episodes: int = 20_000, max_chars: int = 6_000, seed: int = 0,
              prefilter: EpisodeFilter | None = None) -> ViewData:
    """Read a run folder into :class:`ViewData`.

    ``prefilter`` keeps only the lifecycles it matches; then, when more than ``max_episodes``
    episodes remain, whole packs are sampled (:func:`sample_packs`). Texts longer than
    ``max_chars`` are cut with a note.
    """
    prefilter = prefilter or EpisodeFilter()
    folders = find_reports(run_dir)
    variants: list[dict[str, Any]] = []
    index: dict[tuple[str, str], int] = {}
    rows: list[dict[str, Any]] = []
    total_lcs = total_eps = 0
    for f in folders:
        for rec in read_trajectories(f.trajectories):
            mode = rec.mode
            key = (f.rel, mode)
            if key not in index:
                index[key] = len(variants)
                variants.append({"label": f.variant_label(mode), "folder": f.rel, "mode": mode, "env": f.env})
            row = lifecycle_row(rec, index[key], max_chars)
            total_lcs += 1
            total_eps += len(row["eps"])
            if prefilter.matches(row, variants[index[key]]["label"]):
                rows.append(row)
    per_pack: dict[str, int] = {}
    for r in rows:
        per_pack[r["pack"]] = per_pack.get(r["pack"], 0) + len(r["eps"])
    kept = sample_packs(per_pack, max_episodes, seed)
    shown = [r for r in rows if r["pack"] in kept]
    return ViewData(str(run_dir), folders, variants, shown, total_lcs, total_eps,
                    sum(len(r["eps"]) for r in shown), len(shown) < len(rows), max_episodes, prefilter)


def group_by_pack(lifecycles: Sequence[dict[str, Any]]) -> dict[tuple[str, int], dict[int, int]]:
    """``(pack, repeat)`` -> ``{variant index: lifecycle index}``: what the comparison view offers."""
    out: dict[tuple[str, int], dict[int, int]] = {}
    for i, lc in enumerate(lifecycles):
        out.setdefault((lc["pack"], lc["repeat"]), {}).setdefault(lc["v"], i)
    return out
