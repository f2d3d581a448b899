"""The evaluation matrix: several models x several evaluation sets, one command, resumable.

``codrl matrix --config FILE.yaml`` evaluates every model of ``models`` (the embedded model,
checkpoints, Hugging Face folders, OpenAI-compatible endpoints) on every evaluation set of
``evals`` (environment, split, variant, pack size, packs, repeats) and writes into ``output_dir``:

* ``cells/<model>/<eval set>/``: each cell's full evaluation report (``results.json``,
  ``episodes.csv``, ``trajectories.jsonl``, a plot), written to a temporary folder and renamed
  when complete, so an interrupted matrix resumes by skipping the cells that exist;
* ``matrix.md`` and ``matrix.csv``: rows = models, columns = evaluation sets, each cell the mean
  reward at position 0, at the last position, and the CoD gain with its 95% interval over packs;
* ``matrix.png``: one panel per evaluation set, one curve per model, shaded intervals;
* ``matrix.json``: every number (per-position means and intervals of every cell), a
  :class:`MatrixResults` (read back with :meth:`MatrixResults.read`).

A variant names the context a set is played with and, optionally, the Ralph loop around it:

* ``cod`` (the model rewrites a free-form hints block between tasks), ``nohint`` (no context: the
  baseline) and ``curator`` (the model edits a numbered lesson list with ADD/REVISE/REMOVE
  operations, applied by code; see :mod:`codrl.rollout.curator`);
* ``ralph-first`` / ``ralph-expand`` (Ralph loop with model-written notes, mode ``ralph``) and
  ``ralph-first-nohint`` / ``ralph-expand-nohint`` (independent attempts, mode ``ralph-nohint``),
  ``ralph-first-curator`` / ``ralph-expand-curator`` (curated lessons, mode ``ralph-curator``).

Every model path, endpoint, environment name and variant is checked before any model loads.
"""

from __future__ import annotations

import csv
import math
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from rich.console import Console
from rich.table import Table

from codrl.backends.base import Backend
from codrl.config import EnvName
from codrl.errors import CodrlError
from codrl.eval.metrics import JsonFloat, PositionStats
from codrl.eval.report import RESULTS_JSON, EvalResults, ResultsFile, plot_panels
from codrl.rollout.config import RolloutConfig
from codrl.rollout.contexts import Variant as PlayVariant
from codrl.rollout.contexts import check_context

#: The built-in variants: a context, optionally played as a Ralph loop (``ralph-<first|expand>[-<context>]``).
VARIANTS: tuple[str, ...] = ("cod", "nohint", "curator", "ralph-first", "ralph-expand", "ralph-first-nohint",
                             "ralph-first-curator", "ralph-expand-nohint", "ralph-expand-curator")


def _check_variant(variant: str) -> str:
    """``variant`` if it names a built-in variant or a context of your own (an import path, with or
    without a ``ralph-first-``/``ralph-expand-`` prefix); else a ``ValueError`` naming the allowed values."""
    if variant in VARIANTS:
        return variant
    context = PlayVariant.parse(variant).context
    if ":" not in context:
        raise ValueError(f"variant {variant!r} is not allowed; allowed values: {', '.join(map(repr, VARIANTS))}, or "
                         "an import path 'package.module:ClassName' of a context (with an optional ralph-first- or "
                         "ralph-expand- prefix)")
    check_context(context)
    return variant


#: A config field naming a variant (checked on validation).
Variant = Annotated[str, AfterValidator(_check_variant)]


def variant_settings(variant: str) -> tuple[str, str]:
    """``(rollout.mode, rollout.ralph)`` of a variant: ``ralph-first-curator`` -> ``("curator",
    "first")``, ``ralph-expand`` -> ``("cod", "expand")``, ``nohint`` -> ``("nohint", "none")``."""
    try:
        _check_variant(variant)
    except ValueError as e:
        raise CodrlError(f"variant: {e}") from None
    v = PlayVariant.parse(variant)
    return v.context, v.ralph


def variant_mode(variant: str) -> str:
    """The summary mode a variant's results carry (:attr:`codrl.rollout.contexts.Variant.mode`)."""
    return PlayVariant(*variant_settings(variant)).mode


#: Summary mode of each built-in variant (:func:`~codrl.rollout.config.result_mode`: Ralph runs are
#: named ``ralph``, ``ralph-nohint`` or ``ralph-curator``).
VARIANT_MODE: dict[str, str] = {v: variant_mode(v) for v in VARIANTS}
_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def _slug(text: str) -> str:
    return _SAFE.sub("_", text).strip("_") or "x"


class ModelSpec(BaseModel):
    """One model of the matrix: a local model (``path``) or an OpenAI-compatible ``endpoint``."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="row label (also the folder name of its cells)")
    path: str | None = Field(None, description="'embedded' or a Hugging Face model folder (e.g. a checkpoint's model/)")
    endpoint: str | None = Field(None, description="OpenAI-compatible base URL instead of a local model")
    endpoint_model: str | None = Field(None, description="model id at the endpoint (default: its first)")
    device: str = "cpu"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    chat_template_kwargs: dict[str, Any] = Field(default_factory=dict, description="extra arguments of the chat "
                                                 "template, e.g. {enable_thinking: false} (a local model's "
                                                 "apply_chat_template, or an endpoint's chat_template_kwargs)")

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        if self.path is None and self.endpoint is None:
            self.path = "embedded"
        if self.path is not None and self.endpoint is not None:
            raise ValueError(f"model {self.name!r}: give either path or endpoint, not both")
        return self


class EvalSet(BaseModel):
    """One evaluation set: which packs of which environment, played how."""

    model_config = ConfigDict(extra="forbid")

    env: EnvName = Field(description="environment name (see `codrl envs`) or import path")
    env_params: dict[str, Any] = Field(default_factory=dict)
    split: Literal["train", "test"] = "test"
    variant: Variant = "cod"
    pack_size: int = Field(4, ge=1)
    packs: int = Field(4, ge=1)
    repeats: int = Field(1, ge=1)
    name: str | None = Field(None, description="column label (default env/variant/kK)")

    @property
    def label(self) -> str:
        return self.name or f"{self.env}/{self.variant}/k{self.pack_size}"


class MatrixConfig(BaseModel):
    """A whole matrix: models x evaluation sets, the rollout knobs they share, where to write."""

    model_config = ConfigDict(extra="forbid")

    models: list[ModelSpec] = Field(min_length=1)
    evals: list[EvalSet] = Field(min_length=1)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig,
                                   description="shared rollout knobs; pack_size/repeats/mode/ralph come from each set")
    seed: int = 0
    batch_size: int = Field(32, ge=1, description="max requests per batched model call")
    output_dir: str = "runs/matrix"

    @model_validator(mode="after")
    def _unique(self) -> MatrixConfig:
        for what, labels in (("models", [m.name for m in self.models]), ("evals", [e.label for e in self.evals])):
            slugs = [_slug(x) for x in labels]
            dup = sorted({x for x in slugs if slugs.count(x) > 1})
            if dup:
                raise ValueError(f"{what}: names must be unique (as folder names), repeated: {', '.join(dup)}")
        return self


# -- checks before anything loads --------------------------------------------------------------
def check_model(spec: ModelSpec, timeout: float = 5.0) -> None:
    """Fail with a one-line :class:`CodrlError` if ``spec`` cannot be loaded or reached."""
    if spec.endpoint is not None:
        from codrl.backends.openai_backend import OpenAIBackend

        try:  # the backend's own fail-fast probe of /models, once, with a short timeout
            OpenAIBackend(spec.endpoint, model=spec.endpoint_model, timeout=timeout, max_retries=0).close()
        except CodrlError as e:
            raise CodrlError(f"model {spec.name!r}: endpoint {spec.endpoint} does not answer ({e})") from None
        return
    from codrl.backends.embedded import EMBEDDED_NAMES, gguf_path, is_adapter_dir

    assert spec.path is not None
    if spec.path in EMBEDDED_NAMES:
        gguf_path()
        return
    folder = Path(spec.path)
    if not (folder / "config.json").is_file() and not is_adapter_dir(folder):
        raise CodrlError(f"model {spec.name!r}: path {spec.path!r} is not a Hugging Face model folder "
                         "(no config.json or adapter_config.json); use 'embedded', a checkpoint's model/ folder or an endpoint")


def load_backend(spec: ModelSpec, batch_size: int = 32) -> Backend:
    """The generation backend of one model of the matrix."""
    if spec.endpoint is not None:
        from codrl.backends.openai_backend import OpenAIBackend

        return OpenAIBackend(spec.endpoint, model=spec.endpoint_model, chat_template_kwargs=spec.chat_template_kwargs)
    from codrl.backends.hf import HFBackend

    return HFBackend.from_pretrained(spec.path, device=spec.device, dtype=spec.dtype, max_batch_size=batch_size,
                                     chat_template_kwargs=spec.chat_template_kwargs)


# -- running -------------------------------------------------------------------------------------
def cell_dir(out: Path, model: ModelSpec, ev: EvalSet) -> Path:
    return out / "cells" / _slug(model.name) / _slug(ev.label)


def eval_config(cfg: MatrixConfig, ev: EvalSet) -> Any:
    """The :class:`~codrl.eval.runner.EvalConfig` of one evaluation set."""
    from codrl.eval.runner import EvalConfig

    mode, ralph = variant_settings(ev.variant)
    rollout = cfg.rollout.model_copy(update={"pack_size": ev.pack_size, "repeats": ev.repeats, "ralph": ralph,
                                             "mode": mode})
    return EvalConfig(env=ev.env, env_params=ev.env_params, split=ev.split, packs=ev.packs, seed=cfg.seed,
                      rollout=rollout)


def run_matrix(cfg: MatrixConfig, *, console: Console | None = None, progress: bool = True,
               backend_factory: Callable[[ModelSpec], Backend] | None = None) -> MatrixResults:
    """Evaluate every missing cell, then write the table, plots and ``matrix.json``; return the latter."""
    from codrl.config import dump_yaml
    from codrl.eval.runner import build_env, evaluate

    console = console or Console()
    out = Path(cfg.output_dir)
    for ev in cfg.evals:  # environment parameters are checked before any model loads
        build_env(ev.env, ev.env_params)
    if backend_factory is None:
        for m in cfg.models:
            check_model(m)
    out.mkdir(parents=True, exist_ok=True)
    dump_yaml(cfg, out / "matrix_config.yaml")
    total = len(cfg.models) * len(cfg.evals)
    done = 0
    for model in cfg.models:
        todo = [ev for ev in cfg.evals if not (cell_dir(out, model, ev) / RESULTS_JSON).is_file()]
        done += len(cfg.evals) - len(todo)
        if not todo:
            console.print(f"[dim]{model.name}: all {len(cfg.evals)} cells done, skipped[/dim]")
            continue
        backend = (backend_factory or (lambda s: load_backend(s, cfg.batch_size)))(model)
        try:
            for ev in todo:
                done += 1
                console.rule(f"[bold]cell {done}/{total}: {model.name} x {ev.label}")
                final = cell_dir(out, model, ev)
                tmp = final.with_name(final.name + ".partial")
                shutil.rmtree(tmp, ignore_errors=True)
                evaluate(backend, eval_config(cfg, ev), tmp, title=f"{model.name}: {ev.label}",
                         meta={"model": model.name, "eval_set": ev.label}, console=console, progress=progress)
                final.parent.mkdir(parents=True, exist_ok=True)
                tmp.rename(final)  # atomic: a cell exists only when complete
        finally:
            close = getattr(backend, "close", None)
            if callable(close):
                close()
    return write_matrix(cfg, console)


# -- the table -------------------------------------------------------------------------------------
class MatrixCell(BaseModel):
    """One cell of ``matrix.json``: a model's numbers on an evaluation set (its variant's mode)."""

    model_config = ConfigDict(extra="ignore")

    positions: list[PositionStats]
    first: JsonFloat = Field(description="mean reward at position 0")
    last: JsonFloat = Field(description="mean reward at the last position")
    gain: JsonFloat = Field(description="CoD gain: last minus first")
    gain_ci: tuple[JsonFloat, JsonFloat] = Field(description="interval of the gain over packs (null: n too small)")
    n_packs: int
    chance_reward: float | None = None
    folder: str = Field(description="the cell's report folder")


class MatrixResults(ResultsFile):
    """``matrix.json``: the models, the evaluation sets and every finished cell (``cells[model][eval label]``)."""

    kind: ClassVar[str] = "matrix results file"

    models: list[str]
    evals: list[EvalSet]
    eval_labels: list[str]
    cells: dict[str, dict[str, MatrixCell]]
    complete: bool


def load_cell(folder: Path, variant: str) -> MatrixCell:
    """One cell's numbers from its ``results.json``."""
    results = EvalResults.read(folder / RESULTS_JSON)
    summary = results.summary
    mode = variant_mode(variant)
    positions = summary.positions.get(mode, [])
    return MatrixCell(
        positions=positions,
        first=positions[0].mean_reward if positions else math.nan,
        last=positions[-1].mean_reward if positions else math.nan,
        gain=summary.cod_gain.get(mode, math.nan),
        gain_ci=summary.cod_gain_ci.get(mode, (math.nan, math.nan)),
        n_packs=positions[0].n_packs if positions else 0,
        chance_reward=results.meta.get("chance_reward"),
        folder=str(folder),
    )


def cell_text(c: MatrixCell) -> str:
    """``0.12 -> 0.40, gain +0.28 [0.05, 0.51]`` (``n<3`` when no interval is defined)."""
    lo, hi = c.gain_ci
    ci = f"[{lo:+.2f}, {hi:+.2f}]" if math.isfinite(lo) and math.isfinite(hi) else f"(n={c.n_packs}, no CI)"
    return f"{c.first:.2f} -> {c.last:.2f}, gain {c.gain:+.2f} {ci}"


def write_matrix(cfg: MatrixConfig, console: Console | None = None) -> MatrixResults:
    """Collect every finished cell into ``matrix.{json,md,csv,png}`` and print the table."""
    console = console or Console()
    out = Path(cfg.output_dir)
    cells: dict[str, dict[str, MatrixCell]] = {}
    for m in cfg.models:
        for ev in cfg.evals:
            folder = cell_dir(out, m, ev)
            if (folder / RESULTS_JSON).is_file():
                cells.setdefault(m.name, {})[ev.label] = load_cell(folder, ev.variant)
    labels = [ev.label for ev in cfg.evals]
    result = MatrixResults(models=[m.name for m in cfg.models], evals=cfg.evals, eval_labels=labels, cells=cells,
                           complete=all(ev.label in cells.get(m.name, {}) for m in cfg.models for ev in cfg.evals))
    result.write(out / "matrix.json")

    header = ["model", *labels]
    rows = [[m.name, *[cell_text(cells[m.name][lbl]) if lbl in cells.get(m.name, {}) else "missing"
                       for lbl in labels]] for m in cfg.models]
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    (out / "matrix.md").write_text(
        "Mean reward at position 0 -> last position, CoD gain (last - first) with its 95% interval over packs.\n\n"
        + "\n".join(md) + "\n")
    with (out / "matrix.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["model", "eval_set", "first", "last", "gain", "gain_ci_low", "gain_ci_high", "n_packs"])
        for m in cfg.models:
            for lbl in labels:
                c = cells.get(m.name, {}).get(lbl)
                if c is not None:
                    w.writerow([m.name, lbl, *(f"{x:.6g}" for x in (c.first, c.last, c.gain, *c.gain_ci)), c.n_packs])
    table = Table(title="reward at position 0 -> last, CoD gain [95% CI over packs]", show_lines=True)
    for h in header:
        table.add_column(h, overflow="fold")
    for r in rows:
        table.add_row(*r)
    console.print(table)
    plot_matrix(cfg, cells, out / "matrix.png")
    console.print(f"wrote {out}/matrix.md, matrix.csv, matrix.json, matrix.png; browse the cells' lifecycles with "
                  f"`codrl view {out}`")
    return result


def plot_matrix(cfg: MatrixConfig, cells: dict[str, dict[str, MatrixCell]], path: Path) -> Path:
    """One panel per evaluation set, one curve per model with its shaded interval."""
    panels = {}
    for ev in cfg.evals:
        curves = {m.name: cells[m.name][ev.label].positions for m in cfg.models if ev.label in cells.get(m.name, {})}
        chance = next((cells[m][ev.label].chance_reward for m in cells if ev.label in cells[m]), None)
        panels[ev.label] = (curves, chance)
    return plot_panels(panels, path, title="reward by pack position, per evaluation set")
