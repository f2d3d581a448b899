"""Credit assignment for lifecycle rollouts (docs/method.md, section 3).

A lifecycle rollout of a pack with K tasks yields penalised task rewards ``r_0..r_{K-1}``. Its
episodes get these returns:

* solve episode at position ``i``:           ``G = aggregate(r_i, r_{i+1}, ..., r_{K-1})``
* update-context episode ``j`` (after ``j``): ``G = aggregate(u_j, r_{j+1}, ..., r_{K-1})``
  where ``u_j`` is the episode's own reward (its hint penalty).

The same pack is rolled out N times (``repeat`` = 0..N-1). For every group key
``(pack_id, episode_type, position)`` the baseline is the mean of ``G`` over the repeats and the
advantage is ``A = G - baseline`` (optionally divided by a std). Episodes are the
:class:`~codrl.rollout.experience.ModelEpisode` s of whole :class:`LifecycleResult` s, which carry
their own rewards; an episode's advantage is shared by all its sampled tokens (every turn of a
multi-turn solve episode).

Optional post-processing, in this order, over a *scope* of episodes:

1. adaptive re-weighting ``a -> a * exp(a / T)`` when the token-weighted advantage sum of the scope
   is negative, with ``T`` chosen by bisection so that the sum becomes non-negative;
2. shift: subtract the token-weighted mean advantage of the scope when that mean is negative.

Scopes: ``"pack_position"`` = one ``(pack_id, position)`` (solve and update episodes of that
position together, over the repeats), ``"pack"`` = one ``pack_id``, ``"env"`` = one environment
of a mixture (:attr:`LifecycleResult.env`), ``"batch"`` = every episode passed in. Sums weight
each model call by its sampled tokens (entries of ``completion_ids``). (The reference implementation calls a pack a "task" and an
environment's dataset a "taskset"; codrl's names say what they group, and the old names
``task``/``taskset`` are refused with the name they stand for here.)

The ``"grpo"`` estimator is the per-task GRPO ablation: ``G`` is the episode's own reward only
(``r_i`` for solve episodes, ``u_j`` for update episodes) and ``A = (G - mean) / (std + eps)``
within each group.

Standard deviations are sample standard deviations (``n - 1`` in the denominator). A group with a
single member, or whose returns are all equal, gets advantage 0; no path divides by zero.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from codrl.rollout.experience import EpisodeType, LifecycleResult, ModelEpisode

Aggregation = Literal["mean", "window", "discounted"]
Scope = Literal["pack_position", "pack", "env", "batch"]
#: Re-weighting scopes (values of :attr:`AdvantageConfig.reweight` besides ``none``).
SCOPES: tuple[str, ...] = ("pack_position", "pack", "env", "batch")
#: Old scope names -> the scope they meant, for a one-line error.
RENAMED_SCOPES: dict[str, str] = {"task": "pack_position", "taskset": "pack"}
GroupKey = tuple[str, EpisodeType, int]  # (pack_id, episode_type, position)

_BISECTION_STEPS = 60
_MAX_EXPONENT = 80.0  # caps a / T inside exp() so extreme scores cannot overflow


class AdvantageConfig(BaseModel):
    """Settings of the advantage estimator (see the module docstring for the formulas)."""

    model_config = ConfigDict(extra="forbid")

    estimator: Literal["cod", "grpo"] = "cod"
    """``cod``: reward-to-go over the lifecycle; ``grpo``: per-task GRPO ablation."""
    aggregation: Aggregation = "mean"
    """How the reward-to-go values are combined (``cod`` only)."""
    window: int = Field(default=2, ge=1)
    """Number of leading values averaged by ``aggregation="window"``."""
    gamma: float = Field(default=0.9, ge=0.0, le=1.0)
    """Discount of ``aggregation="discounted"``."""
    std_norm: Literal["none", "group", "batch"] = "none"
    """Std normalisation of ``cod`` advantages (``grpo`` always normalises per group)."""
    eps: float = Field(default=1e-6, gt=0.0)
    """Added to every std before dividing."""
    reweight: Literal["none", "pack_position", "pack", "env", "batch"] = "none"
    """Scope of the adaptive re-weighting (``pack_position``, ``pack``, ``env``, ``batch``);
    ``none`` turns it off. The reference's final configs re-weight the whole batch."""
    reweight_t_min: float = Field(default=0.8, gt=0.0)
    reweight_t_max: float = Field(default=100.0, gt=0.0)
    shift_negative_mean: bool = False
    """Subtract a negative token-weighted mean (scope of ``reweight``, ``batch`` if that is off)."""

    @field_validator("reweight", mode="before")
    @classmethod
    def _renamed_scope(cls, value: object) -> object:
        if isinstance(value, str) and value in RENAMED_SCOPES:
            raise ValueError(f"reweight scope {value!r} was renamed: use {RENAMED_SCOPES[value]!r} "
                             f"(allowed values: 'none', {', '.join(map(repr, SCOPES))})")
        return value

    @model_validator(mode="after")
    def _check_temperatures(self) -> AdvantageConfig:
        if self.reweight_t_min > self.reweight_t_max:
            raise ValueError(
                f"reweight_t_min ({self.reweight_t_min}) must not exceed "
                f"reweight_t_max ({self.reweight_t_max})"
            )
        return self


# --------------------------------------------------------------------------------------------
# Returns


def aggregate(
    values: Sequence[float],
    how: Aggregation = "mean",
    window: int = 2,
    gamma: float = 0.9,
) -> float:
    """Combine a reward-to-go sequence ``v_0..v_{n-1}`` into one return.

    * ``mean``:       ``(1/n) * sum_t v_t``
    * ``window``:     ``(1/m) * sum_{t<m} v_t`` with ``m = min(window, n)``
    * ``discounted``: ``sum_t gamma^t * v_t``
    """
    if not values:
        raise ValueError("aggregate() needs at least one value")
    if how == "mean":
        return math.fsum(values) / len(values)
    if how == "window":
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        head = values[:window]
        return math.fsum(head) / len(head)
    if how == "discounted":
        return math.fsum(gamma**t * v for t, v in enumerate(values))
    raise ValueError(f"unknown aggregation {how!r}; allowed: 'mean', 'window', 'discounted'")


def solve_return(task_rewards: Sequence[float], position: int, cfg: AdvantageConfig) -> float:
    """Return of the solve episode at ``position`` = ``i``: ``aggregate(r_i, ..., r_{K-1})``."""
    _check_position(task_rewards, position)
    return aggregate(task_rewards[position:], cfg.aggregation, cfg.window, cfg.gamma)


def update_return(
    own_reward: float, task_rewards: Sequence[float], position: int, cfg: AdvantageConfig
) -> float:
    """Return of the update episode written after task ``j`` = ``position``.

    ``G = aggregate(u_j, r_{j+1}, ..., r_{K-1})``; an update after the last task (not part of a
    standard lifecycle) has only its own reward to aggregate.
    """
    _check_position(task_rewards, position)
    values = [own_reward, *task_rewards[position + 1 :]]
    return aggregate(values, cfg.aggregation, cfg.window, cfg.gamma)


def episode_returns(
    own_rewards_update: Sequence[float],
    task_rewards: Sequence[float],
    cfg: AdvantageConfig,
) -> tuple[list[float], list[float]]:
    """Returns of every episode of one lifecycle under the ``cod`` estimator.

    ``task_rewards`` = ``r_0..r_{K-1}``; ``own_rewards_update[j]`` = ``u_j``, the own reward of the
    update episode written after task ``j`` (normally K-1 of them). Gives
    ``([G_solve_0, ..., G_solve_{K-1}], [G_update_0, ..., G_update_{len-1}])``.
    """
    if len(own_rewards_update) > len(task_rewards):
        raise ValueError(
            f"{len(own_rewards_update)} update rewards for a lifecycle of {len(task_rewards)} tasks"
        )
    solve = [solve_return(task_rewards, i, cfg) for i in range(len(task_rewards))]
    update = [
        update_return(u, task_rewards, j, cfg) for j, u in enumerate(own_rewards_update)
    ]
    return solve, update


def _check_position(task_rewards: Sequence[float], position: int) -> None:
    if not 0 <= position < len(task_rewards):
        raise ValueError(
            f"position {position} is outside a lifecycle with {len(task_rewards)} task rewards"
            " (are the task_rewards of the lifecycle filled in?)"
        )


# --------------------------------------------------------------------------------------------
# Grouping


def group_key(result: LifecycleResult, episode: ModelEpisode) -> GroupKey:
    """Baseline group of an episode: the same episode slot over the repeats of a pack."""
    return (result.pack_id, episode.episode_type, episode.position)


def episode_return(result: LifecycleResult, episode: ModelEpisode, cfg: AdvantageConfig) -> float:
    """``G`` of one episode of ``result`` under ``cfg.estimator`` (see the module docstring)."""
    rewards = result.task_rewards
    if cfg.estimator == "grpo":
        if episode.episode_type == "solve":
            _check_position(rewards, episode.position)
            return float(rewards[episode.position])
        return float(episode.own_reward)
    if episode.episode_type == "solve":
        return solve_return(rewards, episode.position, cfg)
    return update_return(episode.own_reward, rewards, episode.position, cfg)


# --------------------------------------------------------------------------------------------
# Baselines and normalisation


def sample_std(values: Sequence[float]) -> float:
    """Sample standard deviation ``sqrt(sum (v - mean)^2 / (n - 1))``; 0 for ``n < 2``."""
    n = len(values)
    if n < 2:
        return 0.0
    mean = math.fsum(values) / n
    return math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))


def group_advantages(
    returns: Sequence[float], std_norm: bool = False, eps: float = 1e-6
) -> list[float]:
    """Advantages of one baseline group: ``A_n = G_n - mean(G)``.

    With ``std_norm``: ``A_n = (G_n - mean(G)) / (std(G) + eps)``. A group of one, or one whose
    returns are all equal, gets zeros.
    """
    if len(returns) < 2 or all(g == returns[0] for g in returns):
        return [0.0] * len(returns)
    baseline = math.fsum(returns) / len(returns)
    centred = [g - baseline for g in returns]
    if not std_norm:
        return centred
    scale = sample_std(returns) + eps
    return [a / scale for a in centred]


# --------------------------------------------------------------------------------------------
# Adaptive re-weighting and shift


def token_weighted_sum(advantages: Sequence[float], tokens: Sequence[int]) -> float:
    """``S = sum_n tokens_n * a_n``."""
    return math.fsum(a * w for a, w in zip(advantages, tokens, strict=True))


def reweight_scores(advantages: Sequence[float], temperature: float) -> list[float]:
    """Adaptive re-weighting ``a -> a * exp(a / T)``.

    Positive scores are amplified and negative ones damped, more so the smaller ``T``. The
    exponent is capped at 80 so extreme scores cannot overflow.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    return [a * math.exp(min(a / temperature, _MAX_EXPONENT)) for a in advantages]


def find_reweight_temperature(
    advantages: Sequence[float],
    tokens: Sequence[int],
    t_min: float = 0.8,
    t_max: float = 100.0,
) -> float:
    """Largest ``T`` in ``[t_min, t_max]`` with ``sum_n tokens_n * a_n * exp(a_n / T) >= 0``.

    Each term ``a * exp(a / T)`` is non-increasing in ``T`` (its derivative is
    ``-(a/T)^2 * exp(a/T)``), so the weighted sum ``S(T)`` is too, and bisection applies:

    * ``S(t_max) >= 0``: ``t_max`` (the mildest re-weighting that suffices);
    * ``S(t_min) < 0``: ``t_min`` (no temperature in range suffices; the strongest re-weighting
      allowed is used, and the sum stays negative);
    * otherwise the bisection keeps ``S(lo) >= 0 > S(hi)`` and returns ``lo`` after 60 halvings,
      so the result always satisfies ``S(T) >= 0``.
    """

    def weighted(t: float) -> float:
        return token_weighted_sum(reweight_scores(advantages, t), tokens)

    if weighted(t_max) >= 0:
        return t_max
    if weighted(t_min) < 0:
        return t_min
    lo, hi = t_min, t_max
    for _ in range(_BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        if weighted(mid) >= 0:
            lo = mid
        else:
            hi = mid
    return lo


def adaptive_reweight(
    advantages: Sequence[float],
    tokens: Sequence[int],
    t_min: float = 0.8,
    t_max: float = 100.0,
) -> tuple[list[float], float | None]:
    """Re-weight one scope when its token-weighted sum is negative.

    If ``sum_n tokens_n * a_n >= 0`` the advantages come back unchanged with ``None``; otherwise
    ``a_n * exp(a_n / T)`` with ``T = find_reweight_temperature(...)``, and ``T``.
    """
    if token_weighted_sum(advantages, tokens) >= 0:
        return list(advantages), None
    temperature = find_reweight_temperature(advantages, tokens, t_min, t_max)
    return reweight_scores(advantages, temperature), temperature


def shift_to_nonnegative_mean(
    advantages: Sequence[float], tokens: Sequence[int]
) -> tuple[list[float], float]:
    """Subtract the token-weighted mean ``m = S / sum_n tokens_n`` when ``m < 0``.

    Gives the shifted advantages ``a_n - m`` and the amount subtracted (``m``, or 0.0 when no shift
    was needed or the scope has no tokens).
    """
    total = sum(tokens)
    if total <= 0:
        return list(advantages), 0.0
    mean = token_weighted_sum(advantages, tokens) / total
    if mean >= 0:
        return list(advantages), 0.0
    return [a - mean for a in advantages], mean


def scope_key(result: LifecycleResult, episode: ModelEpisode, scope: Scope) -> Hashable:
    """The re-weighting scope an episode of ``result`` belongs to (see the module docstring)."""
    if scope == "pack_position":
        return (result.pack_id, episode.position)
    if scope == "pack":
        return result.pack_id
    if scope == "env":
        return result.env
    if scope == "batch":
        return ()
    raise ValueError(f"unknown re-weighting scope {scope!r}; allowed values: {', '.join(map(repr, SCOPES))}")


Scored = list[tuple[LifecycleResult, ModelEpisode]]


def _apply_per_scope(
    episodes: Scored,
    scope: Scope,
    transform: Callable[[list[float], list[int]], tuple[list[float], float | None]],
) -> list[float | None]:
    """Run ``transform`` on the advantages of each scope, write them back, collect its info.

    A scope's entries are its episodes' model calls, each weighted by its own sampled tokens and
    carrying its episode's advantage; every call of an episode gets the same new value back.
    """
    scopes: dict[Hashable, list[ModelEpisode]] = {}
    for result, ep in episodes:
        scopes.setdefault(scope_key(result, ep, scope), []).append(ep)
    infos: list[float | None] = []
    for members in scopes.values():
        calls = [(ep, len(c.completion_ids)) for ep in members for c in ep.calls]
        new, info = transform([ep.advantage for ep, _ in calls], [n for _, n in calls])
        for (ep, _), adv in zip(calls, new, strict=True):
            ep.advantage = adv
        infos.append(info)
    return infos


# --------------------------------------------------------------------------------------------
# Entry point


def compute_advantages(
    results: Sequence[LifecycleResult], cfg: AdvantageConfig | None = None
) -> dict[str, float]:
    """Fill ``advantage`` of every model episode of ``results`` in place and return summary metrics.

    Steps: compute each episode's return (``cfg.estimator``) from its lifecycle's task rewards and
    its own reward, subtract the group baseline per ``(pack_id, episode_type, position)`` (dividing
    by a std as configured), then apply the optional re-weighting and shift per scope.

    Metrics: ``return_mean``/``return_std`` (over episodes), ``adv_mean``/``adv_std``/
    ``adv_abs_mean`` and ``zero_adv_frac`` (over episodes, after post-processing),
    ``num_episodes``, ``num_groups``, ``degenerate_group_frac`` (groups of one or with equal
    returns), ``groups_with_signal`` (the other groups: those whose advantages are not all 0),
    and, when enabled, ``reweight_frac`` (share of scopes re-weighted),
    ``reweight_temperature`` (mean ``T`` over re-weighted scopes, 0 if none), ``shift_frac`` and
    ``shift_mean`` (mean subtracted amount over shifted scopes, 0 if none).
    """
    cfg = cfg or AdvantageConfig()
    episodes: Scored = [(r, ep) for r in results for ep in r.model_episodes]
    if not episodes:
        return {"num_episodes": 0.0}
    returns = [episode_return(r, ep, cfg) for r, ep in episodes]
    groups: dict[GroupKey, list[int]] = {}
    for i, (r, ep) in enumerate(episodes):
        groups.setdefault(group_key(r, ep), []).append(i)

    normalise_group = cfg.estimator == "grpo" or cfg.std_norm == "group"
    degenerate = 0
    for members in groups.values():
        group_returns = [returns[i] for i in members]
        degenerate += len(set(group_returns)) < 2
        for i, adv in zip(members, group_advantages(group_returns, normalise_group, cfg.eps), strict=True):
            episodes[i][1].advantage = adv
    if cfg.estimator == "cod" and cfg.std_norm == "batch":
        scale = sample_std([ep.advantage for _, ep in episodes]) + cfg.eps
        for _, ep in episodes:
            ep.advantage /= scale

    metrics: dict[str, float] = {}
    if cfg.reweight != "none":
        temps = _apply_per_scope(
            episodes,
            cfg.reweight,
            lambda a, w: adaptive_reweight(a, w, cfg.reweight_t_min, cfg.reweight_t_max),
        )
        applied = [t for t in temps if t is not None]
        metrics["reweight_frac"] = len(applied) / len(temps)
        metrics["reweight_temperature"] = math.fsum(applied) / len(applied) if applied else 0.0
    if cfg.shift_negative_mean:
        shift_scope: Scope = "batch" if cfg.reweight == "none" else cfg.reweight
        shifts = [s for s in _apply_per_scope(episodes, shift_scope, shift_to_nonnegative_mean) if s]
        n_scopes = len({scope_key(r, ep, shift_scope) for r, ep in episodes})
        metrics["shift_frac"] = len(shifts) / n_scopes
        metrics["shift_mean"] = math.fsum(shifts) / len(shifts) if shifts else 0.0

    final = [ep.advantage for _, ep in episodes]
    metrics.update(
        {
            "return_mean": math.fsum(returns) / len(returns),
            "return_std": sample_std(returns),
            "adv_mean": math.fsum(final) / len(final),
            "adv_std": sample_std(final),
            "adv_abs_mean": math.fsum(abs(a) for a in final) / len(final),
            "zero_adv_frac": sum(a == 0.0 for a in final) / len(final),
            "num_episodes": float(len(episodes)),
            "num_groups": float(len(groups)),
            "degenerate_group_frac": degenerate / len(groups),
            "groups_with_signal": float(len(groups) - degenerate),
        }
    )
    return metrics
