"""Tests for codrl.eval.metrics and codrl.eval.report (hand-built lifecycle results, no model)."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path

import pytest
from matplotlib.axes import Axes
from rich.console import Console
from scipy import stats

from codrl.eval.metrics import (
    MIN_PACKS,
    PositionStats,
    Summary,
    clip_interval,
    difference_range,
    mean_ci,
    summarize,
    welch_ci,
)
from codrl.eval.report import (
    EPISODE_CSV_COLUMNS,
    EvalResults,
    plot_curves,
    print_summary,
    write_report,
)
from codrl.rollout.experience import EpisodeRecord, LifecycleResult, Turn

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
T_975_DF1 = 12.706204736174705  # Student-t 97.5% quantiles (tables)
T_975_DF2 = 4.302652729749464
T_975_DF3 = 3.182446305284263


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
        model_episodes=[],
    )


def _nan_pair(lo: float, hi: float) -> bool:
    return math.isnan(lo) and math.isnan(hi)


# ------------------------------------------------------------------ intervals (scipy.stats)


def test_mean_ci_matches_scipy() -> None:
    for values in ([0.0, 1.0, 1.0], [0.2, 0.9, 0.4, 0.75], [1.5, -2.0, 0.25, 3.0, 0.0, 1.0]):
        for conf in (0.8, 0.95, 0.99):
            m, lo, hi = mean_ci(values, conf)
            ref = stats.ttest_1samp(values, 0.0).confidence_interval(conf)
            assert m == pytest.approx(sum(values) / len(values))
            assert (lo, hi) == pytest.approx((ref.low, ref.high), rel=1e-12, abs=1e-12)


def test_mean_ci_hand_computed() -> None:
    mean, lo, hi = mean_ci([0, 1, 1])
    sd = math.sqrt(1 / 3)  # sample variance of [0,1,1] = 1/3
    half = T_975_DF2 * sd / math.sqrt(3)
    assert mean == pytest.approx(2 / 3)
    assert lo == pytest.approx(2 / 3 - half)
    assert hi == pytest.approx(2 / 3 + half)


def test_mean_ci_small_n() -> None:
    m, lo, hi = mean_ci([0.25])  # one value: mean, but no interval
    assert m == 0.25 and _nan_pair(lo, hi)
    m, lo, hi = mean_ci([])
    assert math.isnan(m) and _nan_pair(lo, hi)
    m, lo, hi = mean_ci([0.0, 1.0], min_n=3)  # below min_n
    assert m == 0.5 and _nan_pair(lo, hi)
    assert mean_ci([0.0, 1.0], min_n=2)[1] == pytest.approx(0.5 - T_975_DF1 * 0.5)
    assert mean_ci([0.5, 0.5, 0.5]) == (0.5, 0.5, 0.5)  # zero spread
    with pytest.raises(ValueError):
        mean_ci([0.0, 1.0], confidence=1.0)


def test_mean_ci_clipped_to_bounds() -> None:
    # [0, 0, 1]: mean 1/3, half-width 4.303 * 0.577 / sqrt(3) = 1.434 -> [-1.10, 1.77]
    m, lo, hi = mean_ci([0.0, 0.0, 1.0])
    assert lo < 0.0 and hi > 1.0
    assert mean_ci([0.0, 0.0, 1.0], bounds=(0.0, 1.0)) == (pytest.approx(1 / 3), 0.0, 1.0)
    # [1, 1, 1, 0.8]: mean 0.95, half-width 3.182 * 0.1 / 2 -> only the upper end is clipped
    m, lo, hi = mean_ci([1.0, 1.0, 1.0, 0.8], bounds=(0.0, 1.0))
    assert m == pytest.approx(0.95)
    assert lo == pytest.approx(0.95 - T_975_DF3 * 0.1 / 2)
    assert hi == 1.0


def test_welch_ci_matches_scipy() -> None:
    a, b = [0.1, 0.5, 0.9, 0.7], [0.0, 0.2, 0.1]
    d, lo, hi = welch_ci(a, b, 0.9)
    ref = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.9)
    assert d == pytest.approx(0.55 - 0.1)
    assert (lo, hi) == pytest.approx((ref.low, ref.high), rel=1e-12)
    assert _nan_pair(*welch_ci(a, b[:2], min_n=3)[1:])
    assert welch_ci([1.0, 1.0], [0.0, 0.0]) == (1.0, 1.0, 1.0)
    # diff 1/3 with t interval [-0.98, 1.64]: only the upper end leaves [-1, 1]
    ref = stats.ttest_ind([1.0, 0.0, 1.0], [0.0, 0.0, 1.0], equal_var=False).confidence_interval()
    _, lo, hi = welch_ci([1.0, 0.0, 1.0], [0.0, 0.0, 1.0], bounds=(-1.0, 1.0))
    assert ref.high > 1.0 and lo == pytest.approx(ref.low) and hi == 1.0


def test_clip_interval_and_difference_range() -> None:
    assert clip_interval(0.5, -2.0, 3.0, (0.0, 1.0)) == (0.0, 1.0)
    assert clip_interval(0.5, 0.2, 0.8, (0.0, 1.0)) == (0.2, 0.8)
    assert clip_interval(0.5, -2.0, 3.0, None) == (-2.0, 3.0)
    assert _nan_pair(*clip_interval(0.5, math.nan, math.nan, (0.0, 1.0)))
    # a too narrow range never cuts the point estimate off
    assert clip_interval(1.2, 0.9, 1.5, (0.0, 1.0)) == (0.9, 1.2)
    assert difference_range((0.0, 1.0)) == (-1.0, 1.0)
    assert difference_range((-0.2, 1.0)) == pytest.approx((-1.2, 1.2))
    assert difference_range(None) is None
    with pytest.raises(ValueError):
        difference_range((1.0, 0.0))
    with pytest.raises(ValueError):
        clip_interval(0.5, 0.0, 1.0, (math.nan, 1.0))


# ------------------------------------------------------------------ summarize


def test_per_position_means_and_ci() -> None:
    results = [
        make_lifecycle("p0", [0.0, 0.0, 1.0]),
        make_lifecycle("p1", [0.0, 1.0, 1.0]),
        make_lifecycle("p2", [1.0, 1.0, 1.0]),
    ]
    s = summarize(results)
    assert s.modes == ["cod"]
    assert s.min_packs == MIN_PACKS == 3 and s.reward_range is None
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
    assert s.cod_gain_n["cod"] == 3
    # hints were written after positions 0 and 1 only
    assert pos[0].n_updates == 3 and pos[0].hint_valid_rate == 1.0
    assert pos[2].n_updates == 0 and math.isnan(pos[2].hint_valid_rate)
    ov = s.overall["cod"]
    assert ov.n_lifecycles == 3 and ov.n_packs == 3 and ov.n_episodes == 9
    assert ov.mean_reward == pytest.approx(6 / 9)


def test_two_packs_in_unit_range_give_no_interval() -> None:
    """The quickstart case: a reward in [0, 1] over 2 packs used to give [-5.85, 6.85]."""
    results = [make_lifecycle("p0", [0.0, 1.0]), make_lifecycle("p1", [1.0, 1.0])]
    p0 = summarize(results, reward_range=(0.0, 1.0)).positions["cod"][0]
    assert p0.n_packs == 2 and p0.mean_reward == 0.5
    assert _nan_pair(p0.ci_low, p0.ci_high)
    # what the old report showed (min_packs=2, no clipping) ...
    old = summarize(results, min_packs=2).positions["cod"][0]
    assert (old.ci_low, old.ci_high) == pytest.approx((-5.853, 6.853), abs=1e-3)
    # ... and what clipping alone would make of it
    clipped = summarize(results, reward_range=(0.0, 1.0), min_packs=2).positions["cod"][0]
    assert (clipped.ci_low, clipped.ci_high) == (0.0, 1.0)


def test_intervals_clipped_to_reward_range() -> None:
    # position 0: [0, 0, 1] (t interval [-1.10, 1.77]); gain per pack [1, 1, 0] ([-0.77, 2.10])
    results = [
        make_lifecycle("p0", [0.0, 1.0]),
        make_lifecycle("p1", [0.0, 1.0]),
        make_lifecycle("p2", [1.0, 1.0]),
    ]
    raw = summarize(results)
    assert raw.positions["cod"][0].ci_low < 0.0 and raw.positions["cod"][0].ci_high > 1.0
    assert raw.cod_gain_ci["cod"][1] > 1.0
    s = summarize(results, reward_range=(0.0, 1.0))
    assert s.reward_range == (0.0, 1.0)
    p0 = s.positions["cod"][0]
    assert (p0.ci_low, p0.ci_high) == (0.0, 1.0)
    assert s.cod_gain["cod"] == pytest.approx(2 / 3)
    glo, ghi = s.cod_gain_ci["cod"]
    assert glo == pytest.approx(raw.cod_gain_ci["cod"][0]) and ghi == 1.0
    ov = s.overall["cod"]
    assert 0.0 <= ov.ci_low <= ov.mean_reward <= ov.ci_high <= 1.0
    # penalties widen the range: differences are clipped to +-(high - low)
    wide = summarize(results, reward_range=(-0.5, 1.0))
    assert wide.positions["cod"][0].ci_low == -0.5
    assert wide.cod_gain_ci["cod"] == pytest.approx((raw.cod_gain_ci["cod"][0], 1.5))
    with pytest.raises(ValueError):
        summarize(results, reward_range=(1.0, 0.0))


def test_mode_diffs_clipped_to_difference_range() -> None:
    # paired differences at position 0: [1, -1, 1] -> t interval [-2.54, 3.20]
    cod = [make_lifecycle(p, [r]) for p, r in (("p0", 1.0), ("p1", 0.0), ("p2", 1.0))]
    base = [make_lifecycle(p, [r], mode="nohint") for p, r in (("p0", 0.0), ("p1", 1.0),
                                                                ("p2", 0.0))]
    d = summarize(cod + base, reward_range=(0.0, 1.0)).mode_diffs["cod-nohint"][0]
    assert d.paired and d.n_packs == 3 and d.diff == pytest.approx(1 / 3)
    assert (d.ci_low, d.ci_high) == (-1.0, 1.0)
    raw = summarize(cod + base).mode_diffs["cod-nohint"][0]
    assert raw.ci_low < -1.0 and raw.ci_high > 1.0
    # unpaired (Welch) differences are clipped too
    base_other = [make_lifecycle(f"q{i}", [r], mode="nohint") for i, r in enumerate([0, 1, 0])]
    w = summarize(cod + base_other, reward_range=(0.0, 1.0)).mode_diffs["cod-nohint"][0]
    assert not w.paired and w.ci_low == pytest.approx(-0.9755, abs=1e-4) and w.ci_high == 1.0


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
    assert p0.mean_reward == pytest.approx(1 / 3)
    assert _nan_pair(p0.ci_low, p0.ci_high)  # 2 packs < min_packs, not 4 episodes
    p0 = summarize(results, min_packs=2).positions["cod"][0]
    expected_mean, lo, hi = mean_ci([2 / 3, 0.0])  # not mean_ci([1, 1, 0, 0])
    assert p0.mean_reward == pytest.approx(expected_mean)
    assert (p0.ci_low, p0.ci_high) == pytest.approx((lo, hi))
    # half-width uses t(df=1) = 12.706 and sd of the two pack means
    assert p0.ci_high - p0.mean_reward == pytest.approx(
        T_975_DF1 * math.sqrt(((2 / 3) ** 2) / 2) / math.sqrt(2), rel=1e-9
    )
    # the same pack id in another env is another cluster
    other = make_lifecycle("A", [1.0], env="alchemy")
    p0 = summarize(results + [other]).positions["cod"][0]
    assert p0.n_packs == 3 and math.isfinite(p0.ci_low)


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
    assert s.cod_gain_n == {"cod": 2, "nohint": 2}
    assert all(_nan_pair(*ci) for ci in s.cod_gain_ci.values())  # 2 pairs < 3
    assert math.isnan(s.positions["nohint"][0].hint_valid_rate)
    diffs = s.mode_diffs["cod-nohint"]
    assert [d.diff for d in diffs] == pytest.approx([-0.5, 0.5, 0.5])
    assert all(d.paired and d.n_packs == 2 for d in diffs)
    assert all(_nan_pair(d.ci_low, d.ci_high) for d in diffs)
    # position 0 paired differences: [0 - 0, 0 - 1] = [0, -1]
    d0 = summarize(base + cod, min_packs=2).mode_diffs["cod-nohint"][0]
    _, lo, hi = mean_ci([0.0, -1.0])
    assert (d0.ci_low, d0.ci_high) == pytest.approx((lo, hi))


def test_mode_difference_unpaired_uses_welch() -> None:
    cod = [make_lifecycle("a", [1.0]), make_lifecycle("b", [0.0])]
    base = [make_lifecycle("c", [0.0], mode="nohint"), make_lifecycle("d", [0.0], mode="nohint"),
            make_lifecycle("e", [1.0], mode="nohint")]
    d = summarize(cod + base).mode_diffs["cod-nohint"][0]
    assert not d.paired and d.n_packs == 2
    assert d.diff == pytest.approx(0.5 - 1 / 3)
    assert _nan_pair(d.ci_low, d.ci_high)  # one side has only 2 packs
    d = summarize(cod + base, min_packs=2).mode_diffs["cod-nohint"][0]
    se = math.sqrt(0.5 / 2 + (1 / 3) / 3)
    df = se**4 / ((0.5 / 2) ** 2 / 1 + ((1 / 3) / 3) ** 2 / 2)
    assert d.ci_high - d.diff == pytest.approx(stats.t.ppf(0.975, df) * se)
    ref = stats.ttest_ind([1.0, 0.0], [0.0, 0.0, 1.0], equal_var=False).confidence_interval()
    assert (d.ci_low, d.ci_high) == pytest.approx((ref.low, ref.high))


def test_single_and_empty_no_nan_in_json() -> None:
    one = summarize([make_lifecycle("p0", [0.5])])
    p = one.positions["cod"][0]
    assert p.mean_reward == 0.5 and _nan_pair(p.ci_low, p.ci_high)
    assert one.cod_gain["cod"] == 0.0 and _nan_pair(*one.cod_gain_ci["cod"])
    text = json.dumps(one.model_dump(mode="json"), allow_nan=False)
    data = json.loads(text)
    assert data["positions"]["cod"][0]["hint_valid_rate"] is None
    assert data["positions"]["cod"][0]["ci_low"] is None
    assert data["positions"]["cod"][0]["ci_high"] is None
    assert data["cod_gain_ci"]["cod"] == [None, None]

    empty = summarize([])
    assert empty.modes == [] and empty.positions == {} and empty.cod_gain == {}
    json.dumps(empty.model_dump(mode="json"), allow_nan=False)

    lifecycle_without_episodes = summarize([make_lifecycle("p0", [])])
    data = json.loads(json.dumps(lifecycle_without_episodes.model_dump(mode="json"), allow_nan=False))
    assert data["overall"]["cod"]["mean_reward"] is None
    assert data["positions"]["cod"] == []


def test_summary_json_round_trip() -> None:
    s = summarize([make_lifecycle("p0", [0.0, 1.0]), make_lifecycle("p1", [1.0, 1.0]),
                   make_lifecycle("p0", [0.0, 0.0], mode="nohint")])
    back = Summary.model_validate(json.loads(json.dumps(s.model_dump(mode="json"), allow_nan=False)))
    assert back == s and back.model_dump(mode="json") == s.model_dump(mode="json")


def test_summary_json_round_trip_null_intervals_and_range() -> None:
    results = [make_lifecycle(p, [r0, r1]) for p, r0, r1 in
               (("p0", 0.0, 1.0), ("p1", 0.0, 1.0), ("p2", 1.0, 1.0))]
    results += [make_lifecycle("p0", [0.0, 0.0], mode="nohint"),
                make_lifecycle("p1", [1.0, 0.0], mode="nohint")]
    s = summarize(results, reward_range=(0.0, 1.0))
    data = json.loads(json.dumps(s.model_dump(mode="json"), allow_nan=False))
    assert data["reward_range"] == [0.0, 1.0] and data["min_packs"] == 3
    assert data["positions"]["cod"][0]["ci_low"] == 0.0  # clipped, 3 packs
    assert data["positions"]["nohint"][0]["ci_low"] is None  # 2 packs: n too small
    assert data["mode_diffs"]["cod-nohint"][0]["ci_high"] is None
    assert data["cod_gain_n"] == {"cod": 3, "nohint": 2}
    back = Summary.model_validate(data)
    assert back.reward_range == (0.0, 1.0) and back.min_packs == 3
    assert _nan_pair(back.positions["nohint"][0].ci_low, back.positions["nohint"][0].ci_high)
    assert back.model_dump(mode="json") == s.model_dump(mode="json")
    # infinite bounds are written as null and come back infinite
    half_open = summarize(results, reward_range=(-math.inf, 1.0))
    data = json.loads(json.dumps(half_open.model_dump(mode="json"), allow_nan=False))
    assert data["reward_range"] == [None, 1.0]
    assert Summary.model_validate(data).reward_range == (-math.inf, 1.0)
    # files written before these fields existed still load
    for key in ("min_packs", "reward_range", "cod_gain_n"):
        data.pop(key)
    old = Summary.model_validate(data)
    assert old.min_packs == MIN_PACKS and old.reward_range is None and old.cod_gain_n == {}


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
    assert data["summary"] == summary.model_dump(mode="json")
    assert "cod-nohint" in data["summary"]["mode_diffs"]
    assert EvalResults.read(out / "results.json").summary == summary

    with (out / "episodes.csv").open(newline="") as fh:
        rows = list(csv.reader(fh))
    assert tuple(rows[0]) == EPISODE_CSV_COLUMNS
    assert len(rows) - 1 == sum(len(r.episodes) for r in results) == 15
    first = dict(zip(rows[0], rows[1], strict=True))
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
    nan_stats = PositionStats(position=0, n_packs=0, n_episodes=0, mean_reward=math.nan, ci_low=math.nan,
                              ci_high=math.nan, success_rate=math.nan, format_valid_rate=math.nan,
                              mean_env_reward=math.nan)
    path = plot_curves(
        {"before": before.positions["cod"], "after": after.positions["cod"],
         "broken": [nan_stats]},
        tmp_path / "sub" / "before_after.png", title="before vs after", chance_reward=0.25,
    )
    _check_png(path)


def test_plot_curves_no_band_where_n_too_small(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bands: list[list[float]] = []
    annotations: list[str] = []
    fill_between, annotate = Axes.fill_between, Axes.annotate

    def spy_fill(self: Axes, x, *args, **kwargs):  # type: ignore[no-untyped-def]
        bands.append([float(v) for v in x])
        return fill_between(self, x, *args, **kwargs)

    def spy_annotate(self: Axes, text, *args, **kwargs):  # type: ignore[no-untyped-def]
        annotations.append(str(text))
        return annotate(self, text, *args, **kwargs)

    monkeypatch.setattr(Axes, "fill_between", spy_fill)
    monkeypatch.setattr(Axes, "annotate", spy_annotate)
    # 2 packs, reward in [0, 1]: no interval anywhere -> no band, every point labelled n<3
    two = summarize([make_lifecycle("p0", [0.0, 1.0, 1.0]), make_lifecycle("p1", [1.0, 1.0, 0.0])],
                    reward_range=(0.0, 1.0))
    path = plot_curves({"2 packs": two.positions["cod"]}, tmp_path / "small.png",
                       min_packs=two.min_packs)
    _check_png(path)
    assert bands == [] and annotations == ["n<3"] * 3
    # mixed: positions 0-1 have 3 packs, position 2 only 1 -> band over positions 0-1 only
    bands.clear()
    annotations.clear()
    mixed = summarize([make_lifecycle("p0", [0.0, 1.0, 1.0]), make_lifecycle("p1", [1.0, 0.5]),
                       make_lifecycle("p2", [0.0, 1.0])], reward_range=(0.0, 1.0))
    assert [p.n_packs for p in mixed.positions["cod"]] == [3, 3, 1]
    _check_png(plot_curves({"mixed": mixed.positions["cod"]}, tmp_path / "mixed.png"))
    assert bands == [[0.0, 1.0]] and annotations == ["n<3"]


def test_write_report_small_n_and_reward_range(tmp_path: Path) -> None:
    results = [make_lifecycle("p0", [0.0, 1.0]), make_lifecycle("p1", [1.0, 1.0])]
    summary = write_report(results, tmp_path / "r", title="quickstart", meta={},
                           reward_range=(0.0, 1.0))
    data = json.loads((tmp_path / "r" / "results.json").read_text())
    assert data["summary"] == summary.model_dump(mode="json")
    assert data["summary"]["reward_range"] == [0.0, 1.0]
    p0 = data["summary"]["positions"]["cod"][0]
    assert p0["mean_reward"] == 0.5 and p0["ci_low"] is None and p0["ci_high"] is None
    assert data["summary"]["cod_gain_ci"]["cod"] == [None, None]
    _check_png(tmp_path / "r" / "reward_by_position.png")


def test_print_summary_output() -> None:
    results = [
        make_lifecycle("p0", [0.0, 1.0]),
        make_lifecycle("p1", [1.0, 1.0]),
        make_lifecycle("p0", [0.0, 0.0], mode="nohint"),
        make_lifecycle("p1", [1.0, 0.0], mode="nohint"),
    ]
    buf = io.StringIO()
    console = Console(file=buf, width=160, color_system=None)
    print_summary(summarize(results, reward_range=(0.0, 1.0)), console=console)
    text = buf.getvalue()
    assert "with hints (CoD)" in text and "no hints (baseline)" in text
    assert "CoD gain" in text and "+0.500 (n<3)" in text
    assert "Difference" in text and "0: +0.000 (n<3)" in text
    assert "mean reward [95% CI]" in text
    assert "0.500 (n<3)" in text  # position 0 of cod: 2 packs
    assert "[-5.85" not in text and "6.85" not in text
    assert "n<3: fewer than 3 packs, no interval" in text
    assert "clipped to the reward range [0, 1]" in text

    buf = io.StringIO()
    print_summary(summarize([]), console=Console(file=buf, width=120, color_system=None))
    assert "No evaluation results" in buf.getvalue()


def test_print_summary_clipped_interval() -> None:
    results = [make_lifecycle("p0", [0.0, 1.0]), make_lifecycle("p1", [0.0, 1.0]),
               make_lifecycle("p2", [1.0, 1.0])]
    console = Console(record=True, width=160, color_system=None, file=io.StringIO())
    print_summary(summarize(results, reward_range=(0.0, 1.0)), console=console)
    text = console.export_text()
    assert "0.333 [0.000, 1.000]" in text  # t interval [-1.10, 1.77] clipped to [0, 1]
    assert "1.000 [1.000, 1.000]" in text
    gain_lo = mean_ci([1.0, 1.0, 0.0])[1]
    assert f"+0.667 [{gain_lo:.3f}, 1.000]" in text  # gain clipped to [-1, 1]
    assert "n<3" not in text


# ------------------------------------------------------------------ contexts: labels, order, baselines


def test_contexts_and_ralph_modes_against_their_baseline() -> None:
    from codrl.eval.metrics import baseline_for, split_diff_key

    results = []
    for mode in ("ralph-nohint", "curator", "ralph-curator", "nohint", "ralph", "cod"):
        pid = "p{}/ralph" if mode.startswith("ralph") else "p{}"
        results += [make_lifecycle(pid.format(i), [0.0, float(i % 2)], mode=mode) for i in range(3)]
    s = summarize(results, reward_range=(0.0, 1.0))
    assert s.modes == ["cod", "curator", "nohint", "ralph", "ralph-curator", "ralph-nohint"]
    assert sorted(s.mode_diffs) == ["cod-nohint", "curator-nohint", "ralph-curator-ralph-nohint",
                                    "ralph-ralph-nohint"]
    assert all(d.paired and d.n_packs == 3 for ds in s.mode_diffs.values() for d in ds)
    assert [baseline_for(m) for m in s.modes] == ["nohint", "nohint", "nohint", "ralph-nohint", "ralph-nohint",
                                                  "ralph-nohint"]
    assert split_diff_key("ralph-curator-ralph-nohint") == ("ralph-curator", "ralph-nohint")
    assert split_diff_key("cod-nohint") == ("cod", "nohint")
    assert split_diff_key("ralph-nohint") == ("ralph", "nohint")  # a Ralph mode against plain nohint
    assert Summary.model_validate(json.loads(json.dumps(s.model_dump(mode="json")))) == s

    buf = io.StringIO()
    print_summary(s, console=Console(file=buf, width=200, color_system=None))
    text = buf.getvalue()
    for label in ("curated lessons [curator]", "Ralph loop, curated lessons [ralph-curator]",
                  "Ralph loop, no notes (baseline) [ralph-nohint]"):
        assert label in text
    assert "Difference curated lessons minus no hints (baseline)" in text
    assert "Difference Ralph loop, curated lessons minus Ralph loop, no notes (baseline)" in text
    assert "Difference Ralph loop minus Ralph loop, no notes (baseline)" in text


def test_ralph_modes_are_not_compared_with_plain_nohint() -> None:
    results = [make_lifecycle(f"p{i}", [0.0, 1.0], mode="nohint") for i in range(3)]
    results += [make_lifecycle(f"p{i}/ralph", [0.0, 1.0], mode="ralph") for i in range(3)]
    assert summarize(results).mode_diffs == {}


def test_eval_config_contexts_default_and_baseline() -> None:
    from pydantic import ValidationError

    from codrl.eval.runner import EvalConfig
    from codrl.rollout.config import RolloutConfig

    assert EvalConfig().contexts == ["cod"]
    assert EvalConfig(baseline=True).contexts == ["cod", "nohint"]
    assert EvalConfig(rollout=RolloutConfig(mode="curator"), baseline=True).contexts == ["curator", "nohint"]
    assert EvalConfig(rollout=RolloutConfig(mode="nohint"), baseline=True).contexts == ["nohint"]
    assert EvalConfig(contexts=["curator", "cod", "curator"]).contexts == ["curator", "cod"]
    assert EvalConfig(contexts=["curator"], baseline=True).contexts == ["curator", "nohint"]
    dumped = EvalConfig(contexts=["nohint", "curator"]).model_dump(mode="json")
    assert EvalConfig.model_validate(dumped).contexts == ["nohint", "curator"]
    with pytest.raises(ValidationError, match="curator"):
        EvalConfig(contexts=["sometimes"])  # type: ignore[list-item]
