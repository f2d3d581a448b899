"""Tests for codrl.view: the data a view page is built from, the page file, serving and the CLI.

Run folders are written with the project's own report writer (:func:`write_report`) in the layouts
the real commands use: an evaluation (``codrl eval``), a training run (``eval/step-<n>/``) and a
matrix (``cells/<model>/<eval set>/``). No model, no browser.
"""

from __future__ import annotations

import json
import shutil
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from typer.testing import CliRunner

from codrl.cli import app
from codrl.errors import CodrlError
from codrl.eval.report import RESULTS_JSON, TRAJECTORIES_JSONL, mode_label, write_report
from codrl.rollout.experience import EpisodeRecord, LifecycleResult, Turn
from codrl.view.data import (
    SKIP_DIRS,
    EpisodeFilter,
    clip_text,
    diff_counts,
    episode_row,
    find_reports,
    gain_by_step,
    group_by_pack,
    hints_diff,
    lifecycle_row,
    load_view,
    read_trajectories,
    reward_panels,
    sample_packs,
    summary_rows,
)
from codrl.view.page import VIEW_HTML, decode_data, serve, write_view

EVAL_REWARDS = {"cod": [0.1, 0.5, 0.9], "nohint": [0.1, 0.2, 0.3]}  # per position, every pack
EVAL_PACKS, EVAL_REPEATS = 4, 2
TRAIN_GAINS = {0: 0.0, 3: 0.15, 10: 0.5}  # training step -> last minus first position
MATRIX_MODELS = {"model-2": [0.1, 0.3], "model-10": [0.1, 0.6]}  # natural order: model-2 first
MATRIX_SETS = {"fl-k2": "frozenlake", "gn-k2": "gridnav"}  # eval set folder -> environment
CHANCE = 0.25
EVIL = "<script>alert(1)</script>"


# ------------------------------------------------------------------------------- run builders


def make_episode(position: int, reward: float, *, hints_in: str = "", hints_out: str | None = None,
                 hint_valid: bool = True, format_valid: bool = True, success: bool | None = None,
                 reply: str = "<answer>Direction 1</answer>",
                 observation: str = "You stand on a frozen lake.") -> EpisodeRecord:
    return EpisodeRecord(
        position=position, task_id=f"t{position}", hints_in=hints_in,
        turns=[Turn(observation=observation, reply=reply, feedback="moved", valid=format_valid, reward=reward)],
        env_reward=reward, reward=reward, success=reward >= 0.5 if success is None else success,
        format_valid=format_valid, feedback="done", completion_tokens=12, hints_out=hints_out,
        hint_valid=hint_valid)


def make_lifecycle(pack: str, rewards: Sequence[float], *, mode: str = "cod", env: str = "frozenlake",
                   repeat: int = 0, reply: str = "<answer>Direction 1</answer>") -> LifecycleResult:
    """One lifecycle; in cod mode each task but the last writes hints (one more lesson line)."""
    episodes, hints = [], ""
    for pos, r in enumerate(rewards):
        out = None if mode == "nohint" or pos == len(rewards) - 1 else f"{hints}\nlesson {pos}: got {r}".strip()
        episodes.append(make_episode(pos, r, hints_in=hints, hints_out=out, reply=reply))
        hints = out or hints
    return LifecycleResult(pack_id=pack, env=env, split="test", repeat=repeat, mode=mode, episodes=episodes,
                           model_episodes=[])


def write_eval(out: Path, *, reply: str = "<answer>Direction 1</answer>") -> Path:
    """``codrl eval --contexts cod,nohint``: both modes on the same packs, report at the root."""
    results = [make_lifecycle(f"pack-{p}", EVAL_REWARDS[mode], mode=mode, repeat=r, reply=reply)
               for mode in ("cod", "nohint") for p in range(EVAL_PACKS) for r in range(EVAL_REPEATS)]
    write_report(results, out, title="frozenlake / test", meta={"env": "frozenlake", "chance_reward": CHANCE})
    return out


def copy_report(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True)
    for name in (RESULTS_JSON, TRAJECTORIES_JSONL):
        shutil.copy(src / name, dst / name)


@pytest.fixture(scope="module")
def eval_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_eval(tmp_path_factory.mktemp("eval-run"))


@pytest.fixture(scope="module")
def train_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``codrl train``: ``eval/step-<n>/`` reports, ``history.json`` and checkpoints (never searched)."""
    root = tmp_path_factory.mktemp("train-run")
    for step, gain in TRAIN_GAINS.items():
        # per-pack gains gain - 0.1, gain, gain + 0.1: a proper interval around the mean gain
        results = [make_lifecycle(f"pack-{p}", [0.2, 0.2 + gain / 2, 0.1 + gain + 0.1 * p]) for p in range(3)]
        write_report(results, root / "eval" / f"step-{step:06d}", title=f"frozenlake at step {step}",
                     meta={"step": step, "env": "frozenlake", "chance_reward": CHANCE})
    history = [{"step": s, "reward/mean": 0.1 * s, "reward/pos0": 0.05 * s, "reward/pos1": 0.15 * s}
               for s in range(1, 5)]
    (root / "history.json").write_text(json.dumps(history), encoding="utf-8")
    copy_report(root / "eval" / "step-000003", root / "checkpoints" / "step-000003")  # must be skipped
    (root / "checkpoints" / "step-000003" / "model").mkdir()
    return root


@pytest.fixture(scope="module")
def matrix_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``codrl matrix``: ``cells/<model>/<eval set>/``, two packs per cell (too few for intervals)."""
    root = tmp_path_factory.mktemp("matrix-run")
    for model, rewards in MATRIX_MODELS.items():
        for eval_set, env in MATRIX_SETS.items():
            results = [make_lifecycle(f"{env}-{p}", rewards, env=env, mode=mode)
                       for mode in ("cod", "nohint") for p in range(2)]
            write_report(results, root / "cells" / model / eval_set, title=f"{model}: {eval_set}",
                         meta={"model": model, "eval_set": eval_set, "env": env})
    return root


def page_episode(reward: float = 0.0, **kw: Any) -> dict[str, Any]:
    """One episode in the page's compact form, as ``trajectories.jsonl`` stores it."""
    return episode_row(asdict(make_episode(0, reward, **kw)), 1_000)


def page_html_data(html: str) -> Any:
    start = html.index('id="codrl-data">') + len('id="codrl-data">')
    return decode_data(html[start:html.index("</script>", start)])


# ------------------------------------------------------------------------------- hints diffs


def test_hints_diff_orders_kept_removed_and_added_lines() -> None:
    old = "Hints:\nthe goal is south\nholes at (1, 2)\n"
    new = "Hints:\nthe goal is east\nholes at (1, 2)\navoid row 3"
    assert hints_diff(old, new) == [
        (" ", "Hints:"),
        ("-", "the goal is south"),  # a replaced line: its removal, then the new line
        ("+", "the goal is east"),
        (" ", "holes at (1, 2)"),
        ("+", "avoid row 3"),
    ]
    assert diff_counts(hints_diff(old, new)) == {"added": 2, "removed": 1, "kept": 2}


def test_hints_diff_ignores_blank_lines() -> None:
    assert hints_diff("a\n\n   \nb", "\na\nb\n\n\t\n") == [(" ", "a"), (" ", "b")]


def test_hints_diff_identical_and_empty_sides() -> None:
    text = "lesson 1\nlesson 2"
    assert hints_diff(text, text) == [(" ", "lesson 1"), (" ", "lesson 2")]
    assert hints_diff("", text) == [("+", "lesson 1"), ("+", "lesson 2")]
    assert hints_diff(text, "") == [("-", "lesson 1"), ("-", "lesson 2")]
    assert diff_counts(hints_diff("", "")) == {"added": 0, "removed": 0, "kept": 0}


_lines = st.lists(st.sampled_from(["a", "b", "c", "a b", " c", "", "   "]), max_size=8)


@settings(max_examples=300, deadline=None)
@given(_lines, _lines)
def test_hints_diff_reconstructs_both_sides(old: list[str], new: list[str]) -> None:
    diff = hints_diff("\n".join(old), "\n".join(new))
    assert [line for op, line in diff if op in " -"] == [ln for ln in old if ln.strip()]
    assert [line for op, line in diff if op in " +"] == [ln for ln in new if ln.strip()]
    counts = diff_counts(diff)
    assert counts["kept"] + counts["removed"] == len([ln for ln in old if ln.strip()])


# ------------------------------------------------------------------------------- report folders


def test_find_reports_lone_evaluation(eval_run: Path) -> None:
    [folder] = find_reports(eval_run)
    assert (folder.rel, folder.series, folder.panel, folder.env) == (".", None, "frozenlake", "frozenlake")
    assert folder.title == "frozenlake / test"
    assert folder.summary.modes == ["cod", "nohint"]
    assert folder.trajectories == eval_run / TRAJECTORIES_JSONL
    assert folder.variant_label("nohint") == "nohint"


def test_find_reports_training_run_in_step_order_without_checkpoints(train_run: Path) -> None:
    folders = find_reports(train_run)
    assert [f.rel for f in folders] == ["eval/step-000000", "eval/step-000003", "eval/step-000010"]
    assert [f.series for f in folders] == ["step 0", "step 3", "step 10"]
    assert {f.panel for f in folders} == {"frozenlake"}
    assert folders[1].variant_label("cod") == "step 3 · cod"


def test_find_reports_training_mixture_names_each_environment(tmp_path: Path) -> None:
    """A mixture's evaluations (``eval/step-<n>/<env>/``): one panel per environment, unique variants."""
    for step in (0, 2):
        for env in ("frozenlake", "alchemy"):
            write_report([make_lifecycle(f"{env}-0", [0.1, 0.2], env=env)], tmp_path / "eval" / f"step-{step:06d}" / env,
                         title=env, meta={"step": step, "env": env})
    folders = find_reports(tmp_path)
    assert sorted(f.variant_label("cod") for f in folders) == [
        "step 0 · alchemy · cod", "step 0 · frozenlake · cod", "step 2 · alchemy · cod", "step 2 · frozenlake · cod"]
    panels = reward_panels(folders)
    assert {p.title: sorted(p.curves) for p in panels} == {"alchemy": ["step 0", "step 2"],
                                                         "frozenlake": ["step 0", "step 2"]}
    assert sorted(gain_by_step(folders)) == ["alchemy · cod", "frozenlake · cod"]
    assert len({v["label"] for v in load_view(tmp_path).variants}) == 4


def test_find_reports_sorts_steps_numerically(eval_run: Path, tmp_path: Path) -> None:
    for step in (10, 2, 100):  # unpadded names, no "step" in meta: the folder name gives the step
        copy_report(eval_run, tmp_path / "eval" / f"step-{step}")
    assert [f.series for f in find_reports(tmp_path)] == ["step 2", "step 10", "step 100"]


def test_find_reports_matrix(matrix_run: Path) -> None:
    folders = find_reports(matrix_run)
    assert [(f.series, f.panel, f.env) for f in folders] == [
        ("model-2", "fl-k2", "frozenlake"), ("model-10", "fl-k2", "frozenlake"),
        ("model-2", "gn-k2", "gridnav"), ("model-10", "gn-k2", "gridnav")]
    assert folders[1].rel == "cells/model-10/fl-k2"
    assert folders[1].variant_label("cod") == "model-10 · fl-k2 · cod"


def test_find_reports_skips_weights_notes_and_hidden_folders(eval_run: Path, tmp_path: Path) -> None:
    copy_report(eval_run, tmp_path / "run")
    for name in [*SKIP_DIRS, ".cache"]:
        copy_report(eval_run, tmp_path / "run" / name / "step-000001")
    assert [f.rel for f in find_reports(tmp_path / "run")] == ["."]


def test_find_reports_missing_or_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(CodrlError, match="does not exist"):
        find_reports(tmp_path / "nope")
    (tmp_path / "empty" / "eval").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("no report here", encoding="utf-8")
    with pytest.raises(CodrlError, match=f"no evaluation report.*{RESULTS_JSON}"):
        find_reports(tmp_path / "empty")


@pytest.mark.parametrize("content", ["{not json", "[]", '{"title": "no summary"}'])
def test_find_reports_names_a_corrupt_results_file(tmp_path: Path, content: str) -> None:
    bad = tmp_path / "eval" / "step-000001" / RESULTS_JSON
    bad.parent.mkdir(parents=True)
    bad.write_text(content, encoding="utf-8")
    with pytest.raises(CodrlError) as err:
        find_reports(tmp_path)
    assert str(bad) in str(err.value) and "not a codrl results file" in str(err.value)


def test_find_reports_matrix_of_checkpoints(eval_run: Path, tmp_path: Path) -> None:
    for model in ("step-000003", "step-000010"):
        for eval_set in ("fl-cod", "fl-nohint"):  # two evaluation sets of the same environment
            copy_report(eval_run, tmp_path / "cells" / model / eval_set)
    folders = find_reports(tmp_path)
    assert [(f.series, f.panel) for f in folders] == [
        ("step-000003", "fl-cod"), ("step-000010", "fl-cod"),
        ("step-000003", "fl-nohint"), ("step-000010", "fl-nohint")]
    labels = [f.variant_label(m) for f in folders for m in f.summary.modes]
    assert len(set(labels)) == len(labels)


# ------------------------------------------------------------------------------- curves and table


def _means(curve: Sequence[Any]) -> list[float]:
    return [p.mean_reward for p in curve]


def test_reward_panels_lone_evaluation_curve_per_mode(eval_run: Path) -> None:
    [panel] = reward_panels(find_reports(eval_run))
    assert panel.title == "frozenlake"
    assert list(panel.curves) == [mode_label("cod"), mode_label("nohint")]
    assert _means(panel.curves[mode_label("cod")]) == pytest.approx(EVAL_REWARDS["cod"])
    assert _means(panel.curves[mode_label("nohint")]) == pytest.approx(EVAL_REWARDS["nohint"])
    assert panel.chance == CHANCE


def test_reward_panels_training_curve_per_step(train_run: Path) -> None:
    [panel] = reward_panels(find_reports(train_run))
    assert panel.title == "frozenlake"
    assert list(panel.curves) == ["step 0", "step 3", "step 10"]
    for step, gain in TRAIN_GAINS.items():
        assert _means(panel.curves[f"step {step}"]) == pytest.approx([0.2, 0.2 + gain / 2, 0.2 + gain])


def test_reward_panels_matrix_curve_per_model(matrix_run: Path) -> None:
    panels = reward_panels(find_reports(matrix_run))
    assert [p.title for p in panels] == ["fl-k2 · cod", "fl-k2 · nohint", "gn-k2 · cod", "gn-k2 · nohint"]
    for p in panels:
        assert list(p.curves) == list(MATRIX_MODELS)
        for model, rewards in MATRIX_MODELS.items():
            assert _means(p.curves[model]) == pytest.approx(rewards)
        assert p.chance is None


def test_gain_by_step_in_step_order(train_run: Path, eval_run: Path, matrix_run: Path) -> None:
    gains = gain_by_step(list(reversed(find_reports(train_run))))
    assert list(gains) == ["frozenlake · cod"]
    pts = gains["frozenlake · cod"]
    assert [p.step for p in pts] == list(TRAIN_GAINS)
    assert [p.gain for p in pts] == pytest.approx(list(TRAIN_GAINS.values()))
    assert [p.first for p in pts] == pytest.approx([0.2] * 3)
    assert [p.last for p in pts] == pytest.approx([0.2 + g for g in TRAIN_GAINS.values()])
    assert all(p.ci_low < p.gain < p.ci_high for p in pts)  # 3 packs: intervals
    assert gain_by_step(find_reports(eval_run)) == {}
    assert gain_by_step(find_reports(matrix_run)) == {}


def test_summary_rows(eval_run: Path, matrix_run: Path) -> None:
    cod, nohint = summary_rows(find_reports(eval_run))
    assert (cod["variant"], cod["env"], cod["mode"], cod["packs"]) == ("cod", "frozenlake", "cod", EVAL_PACKS)
    assert cod["episodes"] == EVAL_PACKS * EVAL_REPEATS * 3
    assert (cod["first"], cod["last"], cod["gain"]) == pytest.approx((0.1, 0.9, 0.8))
    assert cod["gain_ci"][0] <= cod["gain"] <= cod["gain_ci"][1]
    assert cod["success"] == pytest.approx(2 / 3) and cod["format_valid"] == 1.0 and cod["hint_valid"] == 1.0
    assert (nohint["first"], nohint["last"], nohint["gain"]) == pytest.approx((0.1, 0.3, 0.2))
    assert nohint["hint_valid"] is None  # no hints were ever written
    rows = summary_rows(find_reports(matrix_run))
    assert [r["variant"] for r in rows[:2]] == ["model-2 · fl-k2 · cod", "model-2 · fl-k2 · nohint"]
    assert all(r["gain_ci"] is None for r in rows)  # two packs: no interval


# ------------------------------------------------------------------------------- filters


def test_filter_defaults_and_unknown_fields() -> None:
    assert not EpisodeFilter().active
    assert EpisodeFilter(outcome="failure").active and EpisodeFilter(search="x").active
    assert EpisodeFilter(positions=[0]).active
    with pytest.raises(ValidationError, match="extra"):
        EpisodeFilter.model_validate({"outcome": "any", "colour": "red"})
    with pytest.raises(ValidationError):
        EpisodeFilter.model_validate({"outcome": "bogus"})


def test_filter_env_and_variant() -> None:
    lc = lifecycle_row(make_lifecycle("p", [0.0, 1.0], env="gridnav").to_json(), 0, 1_000)
    assert EpisodeFilter().matches(lc, "cod")
    assert EpisodeFilter(envs=["frozenlake", "gridnav"]).matches(lc, "cod")
    assert not EpisodeFilter(envs=["frozenlake"]).matches(lc, "cod")
    assert EpisodeFilter(variants=["step 3 · cod"]).matches(lc, "step 3 · cod")
    assert not EpisodeFilter(variants=["step 3 · cod"]).matches(lc, "step 3 · nohint")


def test_filter_positions_and_outcome() -> None:
    lc = lifecycle_row(make_lifecycle("p", [0.0, 0.0, 1.0]).to_json(), 0, 1_000)
    assert EpisodeFilter(positions=[2], outcome="success").matches(lc, "cod")
    assert not EpisodeFilter(positions=[0, 1], outcome="success").matches(lc, "cod")
    assert EpisodeFilter(positions=[0, 1], outcome="failure").matches(lc, "cod")
    assert not EpisodeFilter(positions=[7]).matches(lc, "cod")
    won = lifecycle_row(make_lifecycle("p", [1.0, 1.0]).to_json(), 0, 1_000)
    assert not EpisodeFilter(outcome="failure").matches(won, "cod")


def test_filter_invalid_format_and_hints() -> None:
    malformed = page_episode(format_valid=False, hints_out="x")
    bad_hints = page_episode(hint_valid=False, hints_out="x")
    no_update = page_episode(hint_valid=False, hints_out=None)  # hint_valid means nothing without an update
    assert (malformed["fv"], bad_hints["hv"], no_update["hv"]) == (False, False, None)
    only_format = EpisodeFilter(invalid_format=True)
    assert only_format.matches_episode(malformed) and not only_format.matches_episode(bad_hints)
    only_hints = EpisodeFilter(invalid_hints=True)
    assert only_hints.matches_episode(bad_hints)
    assert not only_hints.matches_episode(malformed)
    assert not only_hints.matches_episode(no_update)


def test_filter_search_replies_and_hints_not_observations() -> None:
    ep = page_episode(reply="I go Direction 3", observation="a HIDDEN trap", hints_in="Keep LEFT",
                      hints_out="Keep LEFT\nwall at ROW 4")
    for needle in ("direction 3", "DIRECTION", "keep left", "row 4"):
        assert EpisodeFilter(search=needle).matches_episode(ep), needle
    assert not EpisodeFilter(search="hidden").matches_episode(ep)
    assert not EpisodeFilter(search="direction 4").matches_episode(ep)


def test_filter_search_episode_without_hints_update() -> None:
    ep = page_episode(reply="I go Direction 3", hints_out=None)
    assert ep["diff"] is None
    assert EpisodeFilter(search="direction 3").matches_episode(ep)
    assert not EpisodeFilter(search="nowhere").matches_episode(ep)


# ------------------------------------------------------------------------------- page rows


def test_clip_text() -> None:
    assert clip_text("short", 5) == "short"
    assert clip_text("x" * 50, 0) == "x" * 50  # 0: never cut
    cut = clip_text("abcdefghij", 4)
    assert cut.startswith("abcd\n") and "6 more characters cut" in cut and TRAJECTORIES_JSONL in cut
    assert "e" not in cut.split("\n")[0]


def test_episode_row_fields_and_truncation() -> None:
    rec = make_lifecycle("p", [0.0, 1.0], reply="R" * 30).to_json()
    first, last = (episode_row(e, 20) for e in rec["episodes"])
    assert (first["p"], first["task"], first["r"], first["ok"], first["fv"]) == (0, "t0", 0.0, False, True)
    assert first["turns"][0][1].startswith("R" * 20 + "\n") and "10 more characters cut" in first["turns"][0][1]
    assert first["turns"][0][0].startswith("You stand ")  # observation cut too
    assert first["hv"] is True and first["diff"] == [["+", "lesson 0: got 0.0"]]
    assert (last["ok"], last["hv"], last["diff"]) == (True, None, None)  # no update after the last task
    assert last["hin"] == "lesson 0: got 0.0"


def test_episode_row_final_feedback_only_where_it_is_not_the_last_turns() -> None:
    ep = asdict(make_episode(0, 0.0))
    ep["turns"][-1]["feedback"] = ep["feedback"] = "You fell in."
    assert episode_row(ep, 1_000)["fb"] is None  # shown with the last turn already
    ep["feedback"] = "Turn cap of 64 reached. Task failed."
    assert episode_row(ep, 1_000)["fb"] == "Turn cap of 64 reached. Task failed."
    ep["turns"] = []
    assert episode_row(ep, 10)["fb"].startswith("Turn cap o\n")


def test_episode_row_diff_of_long_hints_reports_no_false_removals() -> None:
    hints = "\n".join(f"lesson {i}: keep away from the holes" for i in range(20))
    ep = episode_row(asdict(make_episode(0, 0.0, hints_in=hints, hints_out=hints + "\nlesson 20: new")), 100)
    assert diff_counts(ep["diff"])["removed"] == 0


def test_read_trajectories_skips_a_truncated_last_line(eval_run: Path, tmp_path: Path) -> None:
    path = tmp_path / TRAJECTORIES_JSONL
    full = (eval_run / TRAJECTORIES_JSONL).read_text(encoding="utf-8")
    path.write_text(full + full.splitlines()[0][:40], encoding="utf-8")  # interrupted mid-write
    records = list(read_trajectories(path))
    assert len(records) == 2 * EVAL_PACKS * EVAL_REPEATS
    assert [r.model_dump(mode="json") for r in records] == [json.loads(line) for line in full.splitlines()]
    assert list(read_trajectories(tmp_path / "missing.jsonl")) == []


# ------------------------------------------------------------------------------- sampling


def test_sample_packs_keeps_all_under_budget_or_without_one() -> None:
    sizes = {"p1": 6, "p2": 6, "p10": 6}
    assert sample_packs(sizes, 18) == set(sizes)
    assert sample_packs(sizes, 1_000) == set(sizes)
    assert sample_packs(sizes, 0) == set(sizes)


def test_sample_packs_at_least_one_pack() -> None:
    assert sample_packs({"huge": 500}, 10) == {"huge"}
    assert len(sample_packs({"a": 50, "b": 60}, 10)) == 1


def test_sample_packs_is_seeded() -> None:
    sizes = {f"pack-{i}": 3 for i in range(20)}
    assert sample_packs(sizes, 15, seed=7) == sample_packs(dict(reversed(sizes.items())), 15, seed=7)
    draws = {frozenset(sample_packs(sizes, 15, seed=s)) for s in range(10)}
    assert len(draws) > 1  # a random draw, not the first packs
    assert all(len(d) == 5 for d in draws)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.from_regex(r"p[0-9]{1,3}", fullmatch=True), st.integers(1, 30), min_size=1, max_size=12),
       st.integers(1, 100), st.integers(0, 5))
def test_sample_packs_whole_packs_within_budget(sizes: dict[str, int], budget: int, seed: int) -> None:
    kept = sample_packs(sizes, budget, seed)
    assert kept and kept <= set(sizes)
    assert sum(sizes[p] for p in kept) <= budget or len(kept) == 1


def test_load_view_everything(eval_run: Path) -> None:
    view = load_view(eval_run, max_episodes=0)
    assert [v["label"] for v in view.variants] == ["cod", "nohint"]
    assert {(v["folder"], v["env"]) for v in view.variants} == {(".", "frozenlake")}
    n_lcs = 2 * EVAL_PACKS * EVAL_REPEATS
    assert len(view.lifecycles) == view.total_lifecycles == n_lcs
    assert view.shown_episodes == view.total_episodes == 3 * n_lcs
    assert not view.sampled and view.page_json()["prefilter"] is None


def test_load_view_samples_whole_packs(eval_run: Path) -> None:
    view = load_view(eval_run, max_episodes=30)  # 12 episodes per pack (2 modes x 2 repeats x 3 tasks)
    assert view.sampled and view.total_episodes == 48 and view.shown_episodes == 24
    assert view.total_lifecycles == 16 and len(view.lifecycles) == 8
    packs = {lc["pack"] for lc in view.lifecycles}
    assert len(packs) == 2
    assert sorted((lc["pack"], lc["repeat"], lc["v"]) for lc in view.lifecycles) == sorted(
        (p, r, v) for p in packs for r in range(EVAL_REPEATS) for v in (0, 1))
    assert load_view(eval_run, max_episodes=30).lifecycles == view.lifecycles  # same seed, same sample
    assert view.page_json()["sampled"] is True


def test_load_view_prefilter(eval_run: Path) -> None:
    only = EpisodeFilter(variants=["nohint"])
    view = load_view(eval_run, max_episodes=0, prefilter=only)
    assert len(view.lifecycles) == EVAL_PACKS * EVAL_REPEATS and view.total_lifecycles == 16
    assert {lc["v"] for lc in view.lifecycles} == {1}
    assert not view.sampled  # filtered, not sampled
    assert view.page_json()["prefilter"] == only.model_dump()


def test_group_by_pack(eval_run: Path) -> None:
    lcs = load_view(eval_run, max_episodes=0).lifecycles
    pairs = group_by_pack(lcs)
    assert set(pairs) == {(f"pack-{p}", r) for p in range(EVAL_PACKS) for r in range(EVAL_REPEATS)}
    for (pack, repeat), by_variant in pairs.items():
        assert set(by_variant) == {0, 1}
        for v, i in by_variant.items():
            assert (lcs[i]["pack"], lcs[i]["repeat"], lcs[i]["v"]) == (pack, repeat, v)
    dup = [{"pack": "a", "repeat": 0, "v": 0}, {"pack": "a", "repeat": 0, "v": 0}, {"pack": "a", "repeat": 1, "v": 2}]
    assert group_by_pack(dup) == {("a", 0): {0: 0}, ("a", 1): {2: 2}}


# ------------------------------------------------------------------------------- the page


def test_write_view_self_contained_page(train_run: Path, tmp_path: Path) -> None:
    page = write_view(train_run, tmp_path / "out" / "page.html")
    assert page.path == tmp_path / "out" / "page.html" and page.path.is_file()
    assert not (train_run / VIEW_HTML).exists()
    html = page.path.read_text(encoding="utf-8")
    assert html.lstrip().lower().startswith("<!doctype html")
    assert 'src="http' not in html and 'href="http' not in html and "<link" not in html
    assert html.count("<svg") >= 3  # reward curves, gain over training, training history
    data = page_html_data(html)
    view = load_view(train_run)
    assert data["lifecycles"] == view.lifecycles
    assert [v["label"] for v in data["variants"]] == ["step 0 · cod", "step 3 · cod", "step 10 · cod"]
    assert (page.lifecycles, page.episodes, page.sampled) == (len(view.lifecycles), view.shown_episodes, False)
    assert page.size_bytes == page.path.stat().st_size


def test_write_view_keeps_model_text_out_of_the_markup(tmp_path: Path) -> None:
    run = write_eval(tmp_path / "run", reply=f"{EVIL} Direction 2")
    page = write_view(run)  # default: RUN/view.html
    assert page.path == run / VIEW_HTML
    html = page.path.read_text(encoding="utf-8")
    assert EVIL not in html
    data = page_html_data(html)
    assert all(ep["turns"][0][1] == f"{EVIL} Direction 2" for lc in data["lifecycles"] for ep in lc["eps"])


def test_serve_gives_the_page_bytes(eval_run: Path, tmp_path: Path) -> None:
    page = write_view(eval_run, tmp_path / "page.html")
    server, url = serve(page.path, port=0)
    try:
        assert url.startswith("http://127.0.0.1:") and url.endswith("/page.html")
        with urllib.request.urlopen(url, timeout=10) as resp:
            assert resp.status == 200
            assert resp.read() == page.path.read_bytes()
    finally:
        server.shutdown()
        server.server_close()


def test_write_view_training_run_with_equal_gains_in_every_pack(tmp_path: Path) -> None:
    for step, gain in TRAIN_GAINS.items():
        results = [make_lifecycle(f"pack-{p}", [0.2, 0.2 + gain / 2, 0.2 + gain]) for p in range(3)]
        write_report(results, tmp_path / "run" / "eval" / f"step-{step:06d}", title=f"step {step}",
                     meta={"step": step, "env": "frozenlake"})
    assert write_view(tmp_path / "run").path.is_file()
    pts = gain_by_step(find_reports(tmp_path / "run"))["frozenlake · cod"]
    assert all(p.ci_low <= p.gain <= p.ci_high for p in pts)


# ------------------------------------------------------------------------------- the command


runner = CliRunner()


def test_cli_view_writes_the_page(eval_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.html"
    result = runner.invoke(app, ["view", str(eval_run), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and str(out) in result.output
    assert len(page_html_data(out.read_text(encoding="utf-8"))["lifecycles"]) == 2 * EVAL_PACKS * EVAL_REPEATS


def test_cli_view_env_keeps_that_env_only(matrix_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.html"
    result = runner.invoke(app, ["view", str(matrix_run), "-o", str(out), "--env", "gridnav"])
    assert result.exit_code == 0, result.output
    data = page_html_data(out.read_text(encoding="utf-8"))
    assert data["lifecycles"] and {lc["env"] for lc in data["lifecycles"]} == {"gridnav"}
    assert data["total_lifecycles"] == 2 * len(data["lifecycles"])
    assert data["prefilter"]["envs"] == ["gridnav"]


@pytest.mark.parametrize(("args", "needles"), [
    (["--outcome", "won"], ["outcome", "'any', 'success' or 'failure'"]),
    (["--max-episodes", "-1"], ["--max-episodes"]),
])
def test_cli_view_bad_options_exit_2(eval_run: Path, tmp_path: Path, args: list[str], needles: list[str]) -> None:
    result = runner.invoke(app, ["view", str(eval_run), "-o", str(tmp_path / "out.html"), *args])
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and "Traceback" not in result.output
    for needle in needles:
        assert needle in result.output
    assert not (tmp_path / "out.html").exists()


def test_cli_view_missing_folder_exits_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["view", str(tmp_path / "nope")])
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and "does not exist" in result.output


def test_cli_view_serve_on_loopback(eval_run: Path, tmp_path: Path) -> None:
    """`codrl view --serve --port 0` prints the URL, serves the page there, and stops on a signal."""
    import signal
    import subprocess
    import sys

    out = tmp_path / "served.html"
    # A test worker may run with SIGINT ignored, which a child inherits (and Python then keeps):
    # give the child the default disposition, as a terminal would.
    proc = subprocess.Popen([sys.executable, "-m", "codrl.cli", "view", str(eval_run), "-o", str(out), "--serve",
                             "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # noqa: PLW1509
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith(f"wrote {out}")
        line = proc.stdout.readline()
        assert line.startswith("serving http://127.0.0.1:"), line
        url = line.split()[1]
        with urllib.request.urlopen(url, timeout=10) as resp:
            assert resp.read() == out.read_bytes()
    finally:
        proc.send_signal(signal.SIGINT)
        # communicate, not wait: the child's stderr pipe must keep draining until it exits (a busy
        # machine may also make the shutdown slow)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
