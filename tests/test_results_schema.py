"""Result files written and read by one type each: ``results.json`` (EvalResults), ``matrix.json``
(MatrixResults) and ``ralph.json`` (RalphResults): round trips, the on-disk layout, one-line errors
naming the file and the field."""

from __future__ import annotations

import io
import json
import math
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from codrl.errors import CodrlError
from codrl.eval.matrix import MatrixConfig, MatrixResults, cell_dir, write_matrix
from codrl.eval.metrics import Summary, summarize
from codrl.eval.ralph import RalphResults, pass_rates
from codrl.eval.report import RESULTS_JSON, EvalResults, ResultsFile, write_report
from codrl.rollout.experience import LifecycleResult
from codrl.view.data import find_reports

sys.path.insert(0, str(Path(__file__).parent))
from support import lifecycle_result  # noqa: E402

#: The keys of a summary in ``results.json``, in the order every earlier version wrote them.
SUMMARY_KEYS = ["confidence", "min_packs", "reward_range", "modes", "positions", "overall", "cod_gain",
                "cod_gain_ci", "cod_gain_n", "mode_diffs"]


def lifecycles() -> list[LifecycleResult]:
    """Three packs played with and without hints, one pack with curated lessons (so that some
    intervals are missing: NaN in memory, ``null`` on disk)."""
    out = []
    for i, rewards in enumerate(([0.0, 1.0], [0.0, 0.5], [1.0, 1.0])):
        cod = replace(lifecycle_result(f"p{i}", 0, rewards, env="frozenlake"), split="test")
        out += [cod, replace(cod, mode="nohint", episodes=[replace(e, reward=e.reward / 2) for e in cod.episodes])]
    return out + [replace(out[0], mode="curator")]


def matrix_config(out: Path) -> MatrixConfig:
    return MatrixConfig(models=[{"name": "a"}, {"name": "b"}],
                        evals=[{"env": "frozenlake", "pack_size": 2, "packs": 3}], output_dir=str(out))


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """One valid file of every kind."""
    eval_dir = tmp_path / "eval"
    write_report(lifecycles(), eval_dir, title="t", meta={"chance_reward": 0.25})
    cfg = matrix_config(tmp_path / "matrix")
    write_report(lifecycles(), cell_dir(Path(cfg.output_dir), cfg.models[0], cfg.evals[0]), title="cell", meta={})
    write_matrix(cfg, Console(file=io.StringIO()))
    ralph = RalphResults(meta={"target": "code"}, rates={"cod": pass_rates(lifecycles()[:1], attempts=2)})
    return {"eval": eval_dir / RESULTS_JSON, "matrix": tmp_path / "matrix" / "matrix.json",
            "ralph": ralph.write(tmp_path / "ralph.json")}


# ------------------------------------------------------------------ round trips


def test_eval_results_round_trip_and_layout(tmp_path: Path) -> None:
    summary = write_report(lifecycles(), tmp_path, title="FrozenLake", meta={"chance_reward": 0.25, "seed": 3},
                           reward_range=(-0.5, 1.0))
    assert math.isnan(summary.positions["curator"][0].ci_low)  # one pack: no interval
    back = EvalResults.read(tmp_path / RESULTS_JSON)
    assert back == EvalResults(title="FrozenLake", meta={"chance_reward": 0.25, "seed": 3}, summary=summary)
    data = json.loads((tmp_path / RESULTS_JSON).read_text(encoding="utf-8"))
    assert list(data) == ["title", "meta", "summary"] and list(data["summary"]) == SUMMARY_KEYS
    assert data["summary"]["positions"]["curator"][0]["ci_low"] is None
    assert data["summary"]["cod_gain_ci"]["curator"] == [None, None]


def test_infinite_reward_bound_round_trips(tmp_path: Path) -> None:
    results = EvalResults(title="t", summary=summarize(lifecycles(), reward_range=(-math.inf, 1.0)))
    back = EvalResults.read(results.write(tmp_path / RESULTS_JSON))
    assert back == results and back.summary.reward_range == (-math.inf, 1.0)
    assert json.loads((tmp_path / RESULTS_JSON).read_text())["summary"]["reward_range"] == [None, 1.0]


def test_matrix_results_round_trip_and_layout(files: dict[str, Path]) -> None:
    back = MatrixResults.read(files["matrix"])
    cfg = matrix_config(files["matrix"].parent)
    assert back == write_matrix(cfg, Console(file=io.StringIO()))
    assert back.complete is False and list(back.cells) == ["a"]  # model b has no cell yet
    cell = back.cells["a"]["frozenlake/cod/k2"]
    assert cell.positions == summarize(lifecycles()).positions["cod"]
    assert cell.gain == pytest.approx(0.5) and cell.n_packs == 3 and cell.chance_reward is None
    data = json.loads(files["matrix"].read_text())
    assert list(data) == ["models", "evals", "eval_labels", "cells", "complete"]
    assert list(data["cells"]["a"]["frozenlake/cod/k2"]) == ["positions", "first", "last", "gain", "gain_ci",
                                                             "n_packs", "chance_reward", "folder"]


def test_ralph_results_round_trip_and_layout(files: dict[str, Path]) -> None:
    back = RalphResults.read(files["ralph"])
    assert back == RalphResults(meta={"target": "code"}, rates={"cod": pass_rates(lifecycles()[:1], attempts=2)})
    attempt = back.rates["cod"].attempts[1]
    assert attempt.pass_rate == 1.0 and math.isnan(attempt.ci_low)  # one task: no interval
    data = json.loads(files["ralph"].read_text())
    assert list(data) == ["meta", "rates"] and list(data["rates"]["cod"]) == ["tasks", "loops", "attempts"]
    assert data["rates"]["cod"]["attempts"][1] == {"attempt": 2, "pass_rate": 1.0, "ci_low": None, "ci_high": None,
                                                   "mean_reward": 1.0, "solved_by": 1.0}


def test_results_written_by_earlier_versions_read() -> None:
    """A summary from before ``min_packs``, ``reward_range`` and ``cod_gain_n``, with ``null`` numbers."""
    position = {"position": 0, "n_packs": 1, "n_episodes": 1, "mean_reward": 0.5, "ci_low": None, "ci_high": None,
                "success_rate": 1.0, "format_valid_rate": 1.0, "mean_env_reward": 0.5, "hint_valid_rate": None,
                "n_updates": 0}
    old = {"title": "old", "meta": {"env": "frozenlake"}, "summary": {
        "confidence": 0.95, "modes": ["cod"], "positions": {"cod": [position]},
        "overall": {"cod": {"n_lifecycles": 1, "n_packs": 1, "n_episodes": 1, "mean_reward": 0.5, "ci_low": None,
                            "ci_high": None, "success_rate": 1.0, "format_valid_rate": 1.0,
                            "mean_env_reward": 0.5, "hint_valid_rate": None, "mean_completion_tokens": 3.0}},
        "cod_gain": {"cod": 0.0}, "cod_gain_ci": {"cod": [None, None]}, "mode_diffs": {}}}
    summary = EvalResults.model_validate(old).summary
    assert summary.min_packs == 3 and summary.reward_range is None and summary.cod_gain_n == {}
    assert math.isnan(summary.positions["cod"][0].ci_low) and math.isnan(summary.overall["cod"].hint_valid_rate)
    assert Summary.model_validate(summary.model_dump(mode="json")) == summary


# ------------------------------------------------------------------ malformed files


def _set(path: list[Any], value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(data: dict[str, Any]) -> None:
        for key in path[:-1]:
            data = data[key]
        data[path[-1]] = value
    return mutate


@pytest.mark.parametrize(
    ("kind", "model", "mutate", "needles"),
    [
        ("eval", EvalResults, _set(["summary", "positions", "cod", 0, "n_packs"], "many"),
         ["summary.positions.cod.0.n_packs", "valid integer", "'many'"]),
        ("eval", EvalResults, lambda d: d.pop("summary"), ["summary: Field required"]),
        ("eval", EvalResults, _set(["summary", "reward_range"], [0.0]), ["summary.reward_range"]),
        ("matrix", MatrixResults, _set(["cells", "a", "frozenlake/cod/k2", "gain_ci"], "wide"),
         ["cells.a.frozenlake/cod/k2.gain_ci"]),
        ("matrix", MatrixResults, lambda d: d.pop("complete"), ["complete: Field required"]),
        ("ralph", RalphResults, _set(["rates", "cod", "attempts", 1, "pass_rate"], "high"),
         ["rates.cod.attempts.1.pass_rate", "valid number", "'high'"]),
    ],
)
def test_malformed_file_is_one_line_naming_file_and_field(files: dict[str, Path], kind: str,
                                                         model: type[ResultsFile],
                                                         mutate: Callable[[dict[str, Any]], None],
                                                         needles: list[str]) -> None:
    path = files[kind]
    data = json.loads(path.read_text())
    mutate(data)
    path.write_text(json.dumps(data))
    with pytest.raises(CodrlError) as err:
        model.read(path)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{path}: not a codrl {model.kind}: ")
    for needle in needles:
        assert needle in msg


@pytest.mark.parametrize(("content", "needle"), [("{not json", "(the whole file): Invalid JSON"),
                                                 ("[]", "(the whole file): Input should be")])
def test_unparsable_file_is_one_line(tmp_path: Path, content: str, needle: str) -> None:
    path = tmp_path / RESULTS_JSON
    path.write_text(content)
    with pytest.raises(CodrlError, match=r"^[^\n]*$") as err:
        EvalResults.read(path)
    assert str(path) in str(err.value) and needle in str(err.value)
    with pytest.raises(CodrlError, match="cannot read the matrix results file"):
        MatrixResults.read(tmp_path / "missing.json")


def test_matrix_resume_and_viewer_name_a_malformed_cell(files: dict[str, Path]) -> None:
    out = files["matrix"].parent
    cell = next(out.glob(f"cells/*/*/{RESULTS_JSON}"))
    data = json.loads(cell.read_text())
    data["summary"]["cod_gain"]["cod"] = "big"
    cell.write_text(json.dumps(data))
    for read in (lambda: write_matrix(matrix_config(out), Console(file=io.StringIO())), lambda: find_reports(out)):
        with pytest.raises(CodrlError) as err:
            read()
        assert str(cell) in str(err.value) and "summary.cod_gain.cod" in str(err.value)
