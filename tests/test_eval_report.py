"""Tests for codrl.eval.metrics and codrl.eval.report (hand-built lifecycle results, no model)."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path

import pytest
from rich.console import Console

from codrl.eval.metrics import (
    PositionStats,
    Summary,
    json_safe,
    mean_ci,
    summarize,
    t_cdf,
    t_quantile,
)
from codrl.eval.report import (
    EPISODE_CSV_COLUMNS,
    plot_curves,
    print_summary,
    write_report,
)
from codrl.rollout.experience import EpisodeRecord, LifecycleResult, Turn

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
T_975_DF2 = 4.302652729749464


def make_episode(
    position: int,
    reward: float,
    *,
    env_reward: float | None = None,
    success: bool | None = None,
    format_valid: bool = True,
    hints_in: str = "",
    hints_out: str | None = None,
    hint_valid: bool = True,
) -> EpisodeRecord:
    """An EpisodeRecord with the given reward (one turn)."""
    return EpisodeRecord(
        position=position,
        task_id=f"t{position}",
        hints_in=hints_in,
        turns=[Turn(observation="obs", reply="<answer>Direction 1</answer>", feedback="ok",
                    valid=format_valid, reward=reward)],
        env_reward=reward if env_reward is None else env_reward,
        reward=reward,
        success=(reward >= 1.0) if success is None else success,
        format_valid=format_valid,
        feedback="done",
        completion_tokens=10 + position,
        hints_out=hints_out,
        hint_valid=hint_valid,
    )


def make_lifecycle(
    pack_id: str,
    rewards: Sequence[float],
    *,
    repeat: int = 0,
    mode: str = "cod",
    env: str = "frozenlake",
    split: str = "test",
    format_valid: Sequence[bool] | None = None,
    hint_valid: Sequence[bool] | None = None,
) -> LifecycleResult:
    """A LifecycleResult with one episode per reward; cod mode writes hints between tasks."""
    k = len(rewards)
    eps = []
    for i, r in enumerate(rewards):
        with_hints = mode != "nohint"
        eps.append(
            make_episode(
                i,
                r,
                format_valid=True if format_valid is None else format_valid[i],
                hints_in=f"Hints: h{i}" if with_hints and i > 0 else "",
                hints_out=f"Hints: h{i + 1}" if with_hints and i < k - 1 else None,
                hint_valid=True if hint_valid is None else hint_valid[i],
            )
        )
    return LifecycleResult(
        pack_id=pack_id, env=env, split=split, repeat=repeat, mode=mode, episodes=eps,
        experiences=[],
    )


# ------------------------------------------------------------------ t distribution / mean_ci


@pytest.mark.parametrize(
    ("df", "expected"),
    [(1, 12.706204736), (2, T_975_DF2), (5, 2.570581836), (10, 2.228138852),
     (30, 2.042272456), (1000, 1.962339)],
)
def test_t_quantile_table(df: float, expected: float) -> None:
    assert t_quantile(0.975, df) == pytest.approx(expected, rel=1e-6)
    assert t_quantile(0.025, df) == pytest.approx(-expected, rel=1e-6)


def test_t_quantile_inverts_cdf_and_normal_limit() -> None:
    for df in (0.7, 3.3, 17.0):
        for p in (0.6, 0.9, 0.995):
            assert t_cdf(t_quantile(p, df), df) == pytest.approx(p, abs=1e-9)
    assert t_quantile(0.975, math.inf) == pytest.approx(1.959963985, rel=1e-8)
    assert math.isnan(t_quantile(1.0, 3.0))


def test_t_quantile_matches_scipy_if_available() -> None:
    stats = pytest.importorskip("scipy.stats")
    for df in (1.0, 2.5, 4.0, 9.0, 40.0):
        for p in (0.8, 0.95, 0.975, 0.999):
            assert t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-7)


def test_mean_ci_hand_computed() -> None:
    mean, lo, hi = mean_ci([0, 1, 1])
    sd = math.sqrt(1 / 3)  # sample variance of [0,1,1] = 1/3
    half = T_975_DF2 * sd / math.sqrt(3)
    assert mean == pytest.approx(2 / 3)
    assert lo == pytest.approx(2 / 3 - half)
    assert hi == pytest.approx(2 / 3 + half)


def test_mean_ci_small_n() -> None:
    assert mean_ci([0.25]) == (0.25, 0.25, 0.25)
    m, lo, hi = mean_ci([])
    assert math.isnan(m) and math.isnan(lo) and math.isnan(hi)
    assert mean_ci([0.5, 0.5, 0.5]) == (0.5, 0.5, 0.5)


# ------------------------------------------------------------------ summarize


def test_per_position_means_and_ci() -> None:
    results = [
        make_lifecycle("p0", [0.0, 0.0, 1.0]),
        make_lifecycle("p1", [0.0, 1.0, 1.0]),
        make_lifecycle("p2", [1.0, 1.0, 1.0]),
    ]
    s = summarize(results)
    assert s.modes == ["cod"]
    pos = s.positions["cod"]
    assert [p.position for p in pos] == [0, 1, 2]
    assert [p.n_packs for p in pos] == [3, 3, 3]
    assert [p.n_episodes for p in pos] == [3, 3, 3]
    # position 1: [0, 1, 1]
    half = T_975_DF2 * math.sqrt(1 / 3) / math.sqrt(3)
    assert pos[1].mean_reward == pytest.approx(2 / 3)
    assert (pos[1].ci_low, pos[1].ci_high) == pytest.approx((2 / 3 - half, 2 / 3 + half))
    assert pos[0].mean_reward == pytest.approx(1 / 3)
    assert pos[2].mean_reward == pytest.approx(1.0)
    assert (pos[2].ci_low, pos[2].ci_high) == (1.0, 1.0)  # zero variance
    assert pos[1].success_rate == pytest.approx(2 / 3)
    assert s.cod_gain["cod"] == pytest.approx(1.0 - 1 / 3)
    # paired gain per pack: [1, 1, 0]
    _, glo, ghi = mean_ci([1.0, 1.0, 0.0])
    assert s.cod_gain_ci["cod"] == pytest.approx((glo, ghi))
    # hints were written after positions 0 and 1 only
    assert pos[0].n_updates == 3 and pos[0].hint_valid_rate == 1.0
    assert pos[2].n_updates == 0 and math.isnan(pos[2].hint_valid_rate)
    ov = s.overall["cod"]
    assert ov.n_lifecycles == 3 and ov.n_packs == 3 and ov.n_episodes == 9
    assert ov.mean_reward == pytest.approx(6 / 9)


def test_clustering_by_pack_averages_repeats_first() -> None:
    # pack A: 3 repeats with rewards 1, 1, 0 at position 0 -> pack mean 2/3
    # pack B: 1 repeat with reward 0 -> pack mean 0
    results = [
        make_lifecycle("A", [1.0], repeat=0),
        make_lifecycle("A", [1.0], repeat=1),
        make_lifecycle("A", [0.0], repeat=2),
        make_lifecycle("B", [0.0], repeat=0),
    ]
    p0 = summarize(results).positions["cod"][0]
    assert p0.n_packs == 2
    assert p0.n_episodes == 4
    expected_mean, lo, hi = mean_ci([2 / 3, 0.0])  # not mean_ci([1, 1, 0, 0])
    assert p0.mean_reward == pytest.approx(1 / 3) == pytest.approx(expected_mean)
    assert (p0.ci_low, p0.ci_high) == pytest.approx((lo, hi))
    # half-width uses t(df=1) = 12.706 and sd of the two pack means
    assert p0.ci_high - p0.mean_reward == pytest.approx(
        12.706204736 * math.sqrt(((2 / 3) ** 2) / 2) / math.sqrt(2), rel=1e-6
    )
    # the same pack id in another env is another cluster
    other = make_lifecycle("A", [1.0], env="alchemy")
    assert summarize(results + [other]).positions["cod"][0].n_packs == 3


def test_format_valid_and_hint_valid_rates() -> None:
    results = [
        make_lifecycle("p0", [0.0, 1.0], format_valid=[False, True], hint_valid=[False, True]),
        make_lifecycle("p1", [1.0, 1.0], format_valid=[True, True], hint_valid=[True, True]),
        make_lifecycle("p2", [0.0, 0.0], format_valid=[False, False], hint_valid=[True, True]),
        make_lifecycle("p3", [1.0, 0.0], format_valid=[True, False], hint_valid=[True, True]),
    ]
    pos = summarize(results).positions["cod"]
    assert pos[0].format_valid_rate == pytest.approx(0.5)
    assert pos[1].format_valid_rate == pytest.approx(0.5)
    assert pos[0].hint_valid_rate == pytest.approx(0.75)
    assert math.isnan(pos[1].hint_valid_rate)
    assert summarize(results).overall["cod"].format_valid_rate == pytest.approx(0.5)


def test_two_modes_two_curves_and_difference() -> None:
    cod = [
        make_lifecycle("p0", [0.0, 1.0, 1.0]),
        make_lifecycle("p1", [0.0, 0.0, 1.0]),
    ]
    base = [
        make_lifecycle("p0", [0.0, 0.0, 1.0], mode="nohint"),
        make_lifecycle("p1", [1.0, 0.0, 0.0], mode="nohint"),
    ]
    s = summarize(base + cod)
    assert s.modes == ["cod", "nohint"]
    assert s.mean_rewards("cod") == pytest.approx([0.0, 0.5, 1.0])
    assert s.mean_rewards("nohint") == pytest.approx([0.5, 0.0, 0.5])
    assert s.cod_gain == pytest.approx({"cod": 1.0, "nohint": 0.0})
    assert math.isnan(s.positions["nohint"][0].hint_valid_rate)
    diffs = s.mode_diffs["cod-nohint"]
    assert [d.diff for d in diffs] == pytest.approx([-0.5, 0.5, 0.5])
    assert all(d.paired and d.n_packs == 2 for d in diffs)
    # position 0 paired differences: [0 - 0, 0 - 1] = [0, -1]
    _, lo, hi = mean_ci([0.0, -1.0])
    assert (diffs[0].ci_low, diffs[0].ci_high) == pytest.approx((lo, hi))


def test_mode_difference_unpaired_uses_welch() -> None:
    cod = [make_lifecycle("a", [1.0]), make_lifecycle("b", [0.0])]
    base = [make_lifecycle("c", [0.0], mode="nohint"), make_lifecycle("d", [0.0], mode="nohint"),
            make_lifecycle("e", [1.0], mode="nohint")]
    d = summarize(cod + base).mode_diffs["cod-nohint"][0]
    assert not d.paired
    assert d.diff == pytest.approx(0.5 - 1 / 3)
    se = math.sqrt(0.5 / 2 + (1 / 3) / 3)
    df = se**4 / ((0.5 / 2) ** 2 / 1 + ((1 / 3) / 3) ** 2 / 2)
    assert d.ci_high - d.diff == pytest.approx(t_quantile(0.975, df) * se)


def test_single_and_empty_no_nan_in_json() -> None:
    one = summarize([make_lifecycle("p0", [0.5])])
    p = one.positions["cod"][0]
    assert (p.mean_reward, p.ci_low, p.ci_high) == (0.5, 0.5, 0.5)
    assert one.cod_gain["cod"] == 0.0
    text = json.dumps(one.to_json(), allow_nan=False)
    assert json.loads(text)["positions"]["cod"][0]["hint_valid_rate"] is None

    empty = summarize([])
    assert empty.modes == [] and empty.positions == {} and empty.cod_gain == {}
    json.dumps(empty.to_json(), allow_nan=False)

    lifecycle_without_episodes = summarize([make_lifecycle("p0", [])])
    data = json.loads(json.dumps(lifecycle_without_episodes.to_json(), allow_nan=False))
    assert data["overall"]["cod"]["mean_reward"] is None
    assert data["positions"]["cod"] == []


def test_summary_json_round_trip() -> None:
    s = summarize([make_lifecycle("p0", [0.0, 1.0]), make_lifecycle("p1", [1.0, 1.0]),
                   make_lifecycle("p0", [0.0, 0.0], mode="nohint")])
    back = Summary.from_json(json.loads(json.dumps(s.to_json(), allow_nan=False)))
    assert back.to_json() == s.to_json()
    assert json_safe({"x": (1.0, float("inf")), "p": Path("a")}) == {"x": [1.0, None], "p": "a"}


# ------------------------------------------------------------------ report files


def _check_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 5_000


def test_write_report_files(tmp_path: Path) -> None:
    results = [
        make_lifecycle("p0", [0.0, 1.0, 1.0], repeat=0),
        make_lifecycle("p0", [0.0, 0.0, 1.0], repeat=1),
        make_lifecycle("p1", [1.0, 1.0, 1.0], repeat=0),
        make_lifecycle("p0", [0.0, 0.0, 0.0], mode="nohint"),
        make_lifecycle("p1", [1.0, 0.0, 1.0], mode="nohint"),
    ]
    out = tmp_path / "report"
    summary = write_report(
        results, out, title="FrozenLake test", meta={"model": "m", "chance_reward": 0.25,
                                                     "path": tmp_path},
    )
    assert isinstance(summary, Summary)
    assert summary.modes == ["cod", "nohint"]

    data = json.loads((out / "results.json").read_text())
    assert data["title"] == "FrozenLake test"
    assert data["meta"]["model"] == "m" and data["meta"]["path"] == str(tmp_path)
    assert data["summary"] == summary.to_json()
    assert "cod-nohint" in data["summary"]["mode_diffs"]

    with (out / "episodes.csv").open(newline="") as fh:
        rows = list(csv.reader(fh))
    assert tuple(rows[0]) == EPISODE_CSV_COLUMNS
    assert len(rows) - 1 == sum(len(r.episodes) for r in results) == 15
    first = dict(zip(rows[0], rows[1]))
    assert first["pack_id"] == "p0" and first["mode"] == "cod" and first["position"] == "0"
    assert first["hints_in_chars"] == "0" and first["hints_out_chars"] == str(len("Hints: h1"))

    lines = (out / "trajectories.jsonl").read_text().splitlines()
    assert len(lines) == len(results)
    rec = json.loads(lines[0])
    assert rec["pack_id"] == "p0" and rec["episodes"][1]["hints_in"] == "Hints: h1"

    _check_png(out / "reward_by_position.png")


def test_write_report_empty_and_single(tmp_path: Path) -> None:
    s = write_report([], tmp_path / "empty", title="empty", meta={})
    assert s.modes == []
    data = json.loads((tmp_path / "empty" / "results.json").read_text())
    assert data["summary"]["modes"] == []
    assert (tmp_path / "empty" / "episodes.csv").read_text().strip() == ",".join(
        EPISODE_CSV_COLUMNS
    )
    assert (tmp_path / "empty" / "trajectories.jsonl").read_text() == ""
    _check_png(tmp_path / "empty" / "reward_by_position.png")

    write_report([make_lifecycle("p0", [1.0], mode="ralph")], tmp_path / "one", title="one",
                 meta={"chance_reward": None})
    text = (tmp_path / "one" / "results.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    json.loads(text)
    _check_png(tmp_path / "one" / "reward_by_position.png")


def test_plot_curves_before_after(tmp_path: Path) -> None:
    before = summarize([make_lifecycle("p0", [0.0, 0.0]), make_lifecycle("p1", [0.0, 1.0])])
    after = summarize([make_lifecycle("p0", [0.0, 1.0]), make_lifecycle("p1", [1.0, 1.0])])
    nan_stats = PositionStats(0, 0, 0, math.nan, math.nan, math.nan, math.nan, math.nan, math.nan)
    path = plot_curves(
        {"before": before.positions["cod"], "after": after.positions["cod"],
         "broken": [nan_stats]},
        tmp_path / "sub" / "before_after.png", title="before vs after", chance_reward=0.25,
    )
    _check_png(path)


def test_print_summary_output() -> None:
    results = [
        make_lifecycle("p0", [0.0, 1.0]),
        make_lifecycle("p1", [1.0, 1.0]),
        make_lifecycle("p0", [0.0, 0.0], mode="nohint"),
        make_lifecycle("p1", [1.0, 0.0], mode="nohint"),
    ]
    buf = io.StringIO()
    console = Console(file=buf, width=160, color_system=None)
    print_summary(summarize(results), console=console)
    text = buf.getvalue()
    assert "with hints (CoD)" in text and "no hints (baseline)" in text
    assert "CoD gain" in text and "+0.500" in text
    assert "Difference" in text
    assert "mean reward [95% CI]" in text

    buf = io.StringIO()
    print_summary(summarize([]), console=Console(file=buf, width=120, color_system=None))
    assert "No evaluation results" in buf.getvalue()
