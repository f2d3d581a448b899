"""Credit assignment: every expected number below is worked out by hand in the comments."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from codrl.algo.advantages import (
    AdvantageConfig,
    adaptive_reweight,
    aggregate,
    compute_advantages,
    episode_returns,
    find_reweight_temperature,
    group_advantages,
    reweight_scores,
    sample_std,
    shift_to_nonnegative_mean,
    token_weighted_sum,
)
from codrl.rollout.experience import LifecycleResult
from support import lifecycle_result as lifecycle  # noqa: E402

# --------------------------------------------------------------------------------------------
# helpers


def adv(results: list[LifecycleResult], repeat: int, kind: str, position: int) -> list[float]:
    """The advantage every call of the matching episode trains with."""
    return [
        ep.advantage
        for r in results
        if r.repeat == repeat
        for ep in r.model_episodes
        if ep.episode_type == kind and ep.position == position
        for _ in ep.calls
    ]


def one_adv(results: list[LifecycleResult], repeat: int, kind: str, position: int) -> float:
    values = adv(results, repeat, kind, position)
    assert len(set(values)) == 1, values
    return values[0]


def advs(results: list[LifecycleResult]) -> list[float]:
    """Every episode's advantage, in order."""
    return [ep.advantage for r in results for ep in r.model_episodes]


# Three repeats of pack "p" (K = 3), used by several tests:
#   repeat 0: r = [0, 1, 1], update penalties [0, 0]
#   repeat 1: r = [0, 0, 1], update penalties [0, -0.1]
#   repeat 2: r = [1, 1, 1], update penalties [0, 0]
def three_repeats(solve_turns: int = 1) -> list[LifecycleResult]:
    return [
        lifecycle("p", 0, [0, 1, 1], [0, 0], solve_turns=solve_turns),
        lifecycle("p", 1, [0, 0, 1], [0, -0.1], solve_turns=solve_turns),
        lifecycle("p", 2, [1, 1, 1], [0, 0], solve_turns=solve_turns),
    ]


# --------------------------------------------------------------------------------------------
# config


def test_config_defaults_and_validation() -> None:
    cfg = AdvantageConfig()
    assert (cfg.estimator, cfg.aggregation, cfg.std_norm, cfg.reweight) == (
        "cod",
        "mean",
        "none",
        "none",
    )
    with pytest.raises(ValidationError):
        AdvantageConfig(unknown=1)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        AdvantageConfig(window=0)
    with pytest.raises(ValidationError):
        AdvantageConfig(gamma=1.5)
    with pytest.raises(ValidationError):
        AdvantageConfig(reweight_t_min=5.0, reweight_t_max=1.0)


# --------------------------------------------------------------------------------------------
# aggregation and returns


def test_aggregate_variants() -> None:
    values = [1.0, 0.0, 0.5]
    assert aggregate(values, "mean") == pytest.approx(0.5)  # 1.5 / 3
    assert aggregate(values, "window", window=2) == pytest.approx(0.5)  # (1 + 0) / 2
    assert aggregate(values, "window", window=1) == pytest.approx(1.0)
    assert aggregate(values, "window", window=5) == pytest.approx(0.5)  # all three
    # 1 + 0.5 * 0 + 0.25 * 0.5
    assert aggregate(values, "discounted", gamma=0.5) == pytest.approx(1.125)
    assert aggregate(values, "discounted", gamma=0.0) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        aggregate([], "mean")


def test_episode_returns_mean() -> None:
    # r = [0, 1, 1], u = [0, -0.1]
    solve, update = episode_returns([0.0, -0.1], [0.0, 1.0, 1.0], AdvantageConfig())
    assert solve == pytest.approx([2 / 3, 1.0, 1.0])
    # u_0 with r_1, r_2: (0 + 1 + 1) / 3; u_1 with r_2: (-0.1 + 1) / 2
    assert update == pytest.approx([2 / 3, 0.45])


def test_episode_returns_window() -> None:
    cfg = AdvantageConfig(aggregation="window", window=2)
    solve, update = episode_returns([0.0, -0.1], [0.0, 1.0, 1.0], cfg)
    assert solve == pytest.approx([0.5, 1.0, 1.0])  # (0+1)/2, (1+1)/2, 1/1
    assert update == pytest.approx([0.5, 0.45])  # (0+1)/2, (-0.1+1)/2


def test_episode_returns_discounted() -> None:
    cfg = AdvantageConfig(aggregation="discounted", gamma=0.5)
    solve, update = episode_returns([0.0, -0.1], [0.0, 1.0, 1.0], cfg)
    # 0 + 0.5*1 + 0.25*1 ; 1 + 0.5*1 ; 1
    assert solve == pytest.approx([0.75, 1.5, 1.0])
    # 0 + 0.5*1 + 0.25*1 ; -0.1 + 0.5*1
    assert update == pytest.approx([0.75, 0.4])


def test_episode_returns_rejects_too_many_updates() -> None:
    with pytest.raises(ValueError):
        episode_returns([0.0, 0.0, 0.0], [1.0, 1.0], AdvantageConfig())


# --------------------------------------------------------------------------------------------
# baselines


def test_group_advantages_and_std() -> None:
    assert group_advantages([1.0, 0.0]) == pytest.approx([0.5, -0.5])
    assert sample_std([1.0, 0.0]) == pytest.approx(math.sqrt(0.5))
    assert group_advantages([1.0, 0.0], std_norm=True, eps=0.0) == pytest.approx(
        [0.5 / math.sqrt(0.5), -0.5 / math.sqrt(0.5)]
    )
    assert group_advantages([0.3]) == [0.0]
    assert group_advantages([0.1, 0.1, 0.1], std_norm=True) == [0.0, 0.0, 0.0]


def test_cod_advantages_three_repeats() -> None:
    exps = three_repeats()
    metrics = compute_advantages(exps, AdvantageConfig())
    # solve, position 0: G = [2/3, 1/3, 1], baseline 2/3
    assert [one_adv(exps, n, "solve", 0) for n in range(3)] == pytest.approx([0, -1 / 3, 1 / 3])
    # solve, position 1: G = [1, 1/2, 1], baseline 5/6
    assert [one_adv(exps, n, "solve", 1) for n in range(3)] == pytest.approx([1 / 6, -1 / 3, 1 / 6])
    # solve, position 2: G = [1, 1, 1] -> all zero
    assert [one_adv(exps, n, "solve", 2) for n in range(3)] == [0.0, 0.0, 0.0]
    # update, position 0: G = [(0+1+1)/3, (0+0+1)/3, (0+1+1)/3] = [2/3, 1/3, 2/3], baseline 5/9
    assert [one_adv(exps, n, "update", 0) for n in range(3)] == pytest.approx(
        [1 / 9, -2 / 9, 1 / 9]
    )
    # update, position 1: G = [0.5, 0.45, 0.5], baseline 1.45/3
    assert [one_adv(exps, n, "update", 1) for n in range(3)] == pytest.approx(
        [1 / 60, -1 / 30, 1 / 60]
    )
    assert metrics["num_episodes"] == 15  # 3 repeats x (3 solve + 2 update)
    assert metrics["num_groups"] == 5
    assert metrics["degenerate_group_frac"] == pytest.approx(1 / 5)
    # zero advantages: solve pos 0 repeat 0 and the three solve pos 2 episodes
    assert metrics["zero_adv_frac"] == pytest.approx(4 / 15)


def test_advantage_broadcast_to_all_turns() -> None:
    exps = three_repeats(solve_turns=3)
    compute_advantages(exps, AdvantageConfig())
    for n, expected in enumerate([1 / 6, -1 / 3, 1 / 6]):
        values = adv(exps, n, "solve", 1)
        assert len(values) == 3
        assert values == pytest.approx([expected] * 3)


def test_packs_have_separate_baselines() -> None:
    exps = [lifecycle("a", 0, [1.0]), lifecycle("a", 1, [0.0]), lifecycle("b", 0, [1.0]), lifecycle("b", 1, [1.0])]
    compute_advantages(exps, AdvantageConfig())
    assert advs(exps) == pytest.approx([0.5, -0.5, 0.0, 0.0])


def test_std_norm_group() -> None:
    exps = three_repeats()
    compute_advantages(exps, AdvantageConfig(std_norm="group"))
    # solve pos 0: centred [0, -1/3, 1/3], sample std sqrt((1/9 + 1/9) / 2) = 1/3
    assert [one_adv(exps, n, "solve", 0) for n in range(3)] == pytest.approx(
        [0.0, -1.0, 1.0], rel=1e-4
    )
    # solve pos 1: centred [1/6, -1/3, 1/6], sample std sqrt((1/36+1/9+1/36)/2) = sqrt(1/12)
    s = math.sqrt(1 / 12)
    assert [one_adv(exps, n, "solve", 1) for n in range(3)] == pytest.approx(
        [1 / 6 / s, -1 / 3 / s, 1 / 6 / s], rel=1e-4
    )
    assert [one_adv(exps, n, "solve", 2) for n in range(3)] == [0.0, 0.0, 0.0]


def test_std_norm_batch() -> None:
    # pack a: A = [0.5, -0.5]; pack b: all equal -> [0, 0].
    # batch sample std of [0.5, -0.5, 0, 0] = sqrt(0.5 / 3)
    exps = [lifecycle("a", 0, [1.0]), lifecycle("a", 1, [0.0]), lifecycle("b", 0, [1.0]), lifecycle("b", 1, [1.0])]
    compute_advantages(exps, AdvantageConfig(std_norm="batch"))
    s = math.sqrt(0.5 / 3)
    assert advs(exps) == pytest.approx([0.5 / s, -0.5 / s, 0, 0], rel=1e-4)


def test_grpo_estimator() -> None:
    exps = three_repeats()
    compute_advantages(exps, AdvantageConfig(estimator="grpo"))
    # solve pos 0: own r_0 = [0, 0, 1]; mean 1/3, sample std sqrt((1/9+1/9+4/9)/2) = sqrt(1/3)
    s = math.sqrt(1 / 3)
    assert [one_adv(exps, n, "solve", 0) for n in range(3)] == pytest.approx(
        [-1 / 3 / s, -1 / 3 / s, 2 / 3 / s], rel=1e-4
    )
    # update pos 0: own rewards all 0 -> no signal from the future tasks
    assert [one_adv(exps, n, "update", 0) for n in range(3)] == [0.0, 0.0, 0.0]
    # update pos 1: own [0, -0.1, 0]; centred [1/30, -2/30, 1/30], std sqrt((6/900)/2)
    s = math.sqrt(3 / 900)
    assert [one_adv(exps, n, "update", 1) for n in range(3)] == pytest.approx(
        [1 / 30 / s, -2 / 30 / s, 1 / 30 / s], rel=1e-4
    )


def test_grpo_ignores_std_norm_setting_for_solve_rewards() -> None:
    # the grpo estimator always normalises per group, whatever std_norm says
    exps = [lifecycle("a", 0, [1.0]), lifecycle("a", 1, [0.0])]
    compute_advantages(exps, AdvantageConfig(estimator="grpo", std_norm="none"))
    s = math.sqrt(0.5)
    assert advs(exps) == pytest.approx([0.5 / s, -0.5 / s], rel=1e-4)


@pytest.mark.parametrize(
    "cfg",
    [
        AdvantageConfig(),
        AdvantageConfig(std_norm="group"),
        AdvantageConfig(std_norm="batch"),
        AdvantageConfig(estimator="grpo"),
        AdvantageConfig(reweight="batch", shift_negative_mean=True),
    ],
)
def test_degenerate_groups_give_zero(cfg: AdvantageConfig) -> None:
    exps = [lifecycle("solo", 0, [0.0, 1.0, 0.3], [0.0, -0.1]),
            lifecycle("eq", 0, [0.1, 0.1], [0.0]), lifecycle("eq", 1, [0.1, 0.1], [0.0])]
    metrics = compute_advantages(exps, cfg)
    assert all(a == 0.0 for a in advs(exps))
    assert all(math.isfinite(v) for v in metrics.values())
    assert metrics["zero_adv_frac"] == 1.0
    assert metrics["degenerate_group_frac"] == 1.0


def test_episode_outside_its_lifecycle_is_an_error() -> None:
    result = lifecycle("p", 0, [1.0])
    result.model_episodes[0].position = 3  # no task 3 in a lifecycle of one task
    with pytest.raises(ValueError, match="outside a lifecycle"):
        compute_advantages([result], AdvantageConfig())


def test_a_task_without_model_calls_has_no_episode() -> None:
    # the environment failed to start task 1 of repeat 1: that repeat has no solve episode there
    results = [lifecycle("p", 0, [1.0, 1.0]), lifecycle("p", 1, [0.0, 0.0])]
    del results[1].model_episodes[1]
    metrics = compute_advantages(results, AdvantageConfig())
    assert metrics["num_episodes"] == 3 and metrics["num_groups"] == 2
    assert advs(results) == pytest.approx([0.5, 0.0, -0.5])  # position 1 is a group of one


def test_empty_batch() -> None:
    assert compute_advantages([], AdvantageConfig()) == {"num_episodes": 0.0}


# --------------------------------------------------------------------------------------------
# adaptive re-weighting and shift


def test_reweight_scores() -> None:
    assert reweight_scores([1.0, -1.0, 0.0], 1.0) == pytest.approx([math.e, -1 / math.e, 0.0])
    assert reweight_scores([2.0], 4.0) == pytest.approx([2.0 * math.exp(0.5)])


def test_reweight_noop_when_sum_nonnegative() -> None:
    values, temperature = adaptive_reweight([1.0, -1.0], [1, 1])
    assert values == [1.0, -1.0]
    assert temperature is None


def test_reweight_bisection_hits_hand_computed_temperature() -> None:
    # S(T) = 1 * e^{1/T} - 3 * e^{-1/T} >= 0  <=>  e^{2/T} >= 3  <=>  T <= 2 / ln 3
    values, temperature = adaptive_reweight([1.0, -1.0], [1, 3], 0.8, 100.0)
    assert temperature == pytest.approx(2 / math.log(3), rel=1e-9)
    assert 0.8 <= temperature <= 100.0
    weighted = token_weighted_sum(values, [1, 3])
    assert weighted >= 0.0
    assert weighted == pytest.approx(0.0, abs=1e-9)


def test_reweight_temperature_bounds() -> None:
    # e^{2/T} >= 1.01 holds up to T = 2 / ln 1.01 ~ 201 > t_max: T = t_max, sum non-negative
    assert find_reweight_temperature([1.0, -1.0], [100, 101], 0.8, 100.0) == 100.0
    values, _ = adaptive_reweight([1.0, -1.0], [100, 101], 0.8, 100.0)
    assert token_weighted_sum(values, [100, 101]) >= 0.0
    # e^{2/T} >= 1e6 needs T <= 0.145 < t_min: the best effort is t_min, the sum stays negative
    values, temperature = adaptive_reweight([1.0, -1.0], [1, 1_000_000], 0.8, 100.0)
    assert temperature == 0.8
    assert values == pytest.approx([math.exp(1.25), -math.exp(-1.25)])
    # only negative scores: no temperature can help -> t_min
    assert find_reweight_temperature([-1.0, 0.0], [1, 1], 0.8, 100.0) == 0.8


def test_shift_to_nonnegative_mean() -> None:
    # token-weighted mean (1*1 - 1*3) / 4 = -0.5
    values, shift = shift_to_nonnegative_mean([1.0, -1.0], [1, 3])
    assert values == pytest.approx([1.5, -0.5])
    assert shift == pytest.approx(-0.5)
    assert token_weighted_sum(values, [1, 3]) == pytest.approx(0.0)
    assert shift_to_nonnegative_mean([1.0, -1.0], [1, 1]) == ([1.0, -1.0], 0.0)
    assert shift_to_nonnegative_mean([], []) == ([], 0.0)


def _two_token_counts() -> list[LifecycleResult]:
    # pack a (K = 1): A = [0.5, -0.5] with 1 and 3 completion tokens -> weighted sum -1
    # pack b (K = 1): A = [0.5, -0.5] with 3 and 1 completion tokens -> weighted sum +1
    return [
        lifecycle("a", 0, [1.0], tokens=1),
        lifecycle("a", 1, [0.0], tokens=3),
        lifecycle("b", 0, [1.0], tokens=3),
        lifecycle("b", 1, [0.0], tokens=1),
    ]


def test_compute_advantages_reweight_per_pack_position() -> None:
    exps = _two_token_counts()
    metrics = compute_advantages(exps, AdvantageConfig(reweight="pack_position"))
    # pack a: 0.5 e^{0.5/T} = 1.5 e^{-0.5/T}  <=>  e^{1/T} = 3  <=>  T = 1 / ln 3
    assert metrics["reweight_temperature"] == pytest.approx(1 / math.log(3), rel=1e-9)
    assert metrics["reweight_frac"] == pytest.approx(0.5)
    a0, a1, b0, b1 = advs(exps)
    assert [a0, a1] == pytest.approx([0.5 * math.sqrt(3), -0.5 / math.sqrt(3)])
    assert a0 * 1 + a1 * 3 >= -1e-12
    assert [b0, b1] == [0.5, -0.5]  # pack b was already non-negative


def test_compute_advantages_reweight_batch_is_noop_when_nonnegative() -> None:
    exps = _two_token_counts()  # batch sum: -1 + 1 = 0
    metrics = compute_advantages(exps, AdvantageConfig(reweight="batch"))
    assert advs(exps) == [0.5, -0.5, 0.5, -0.5]
    assert metrics["reweight_frac"] == 0.0


def test_compute_advantages_shift_batch() -> None:
    exps = [lifecycle("a", 0, [1.0], tokens=1), lifecycle("a", 1, [0.0], tokens=3)]
    metrics = compute_advantages(exps, AdvantageConfig(shift_negative_mean=True))
    # token-weighted mean (0.5 - 1.5) / 4 = -0.25
    assert advs(exps) == pytest.approx([0.75, -0.25])
    assert metrics["shift_mean"] == pytest.approx(-0.25)
    assert metrics["shift_frac"] == 1.0
