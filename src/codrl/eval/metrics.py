"""Evaluation metrics: mean reward per pack position with pack-clustered confidence intervals.

The key CoD metric is the mean (penalised) task reward per ``(mode, position)``: the CoD effect
shows as that mean rising with the task's position in the pack.

Clustering
----------
An evaluation usually rolls every pack out several times ("repeats"). Those repeats share the
same world and the same tasks, so their rewards are correlated; treating every episode as an
independent sample would make the confidence intervals too narrow. All statistics here are
therefore computed over **packs**: for every position, the episodes of one pack (identified by
``(env, split, pack_id)``) are first averaged over its repeats, and the mean, the Student-t
confidence interval and the rates are then taken over those per-pack means. With the same number
of repeats for every pack the point estimates equal the plain episode averages; only the
intervals (and ``n``) differ.

Intervals
---------
Intervals are two-sided Student-t intervals over the per-pack values, computed by
:mod:`scipy.stats` (``ttest_1samp`` / ``ttest_ind(equal_var=False)``, imported lazily); this
module adds the two rules that keep them honest for the few packs a quick
evaluation has:

- **reward range**: with ``summarize(..., reward_range=(low, high))`` (the bounds of the
  per-episode reward, penalties included; the caller knows them) intervals of means are clipped
  to ``[low, high]`` and intervals of differences (CoD gain, mode differences) to
  ``[low - high, high - low]``. A t interval over two packs of a reward in ``[0, 1]`` can
  otherwise reach ``[-5.85, 6.85]``. Clipping is deterministic and keeps the t interval where it
  is already inside the range.
- **minimum number of packs**: with fewer than ``min_packs`` (default :data:`MIN_PACKS` = 3)
  packs, or pairs of packs for paired differences, no interval is given: its ends are NaN
  (``null`` in JSON) and reports print "n<3" instead. The point estimate is still given.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, PlainSerializer

from codrl.rollout.experience import EpisodeRecord, LifecycleResult

__all__ = [
    "MODE_ORDER",
    "BASELINE_MODE",
    "RALPH_BASELINE_MODE",
    "baseline_for",
    "diff_key",
    "split_diff_key",
    "MIN_PACKS",
    "PackKey",
    "PositionStats",
    "OverallStats",
    "ModeDiffStats",
    "Summary",
    "mean_ci",
    "welch_ci",
    "clip_interval",
    "difference_range",
    "summarize",
    "JsonFloat",
]

#: Preferred display order of rollout modes; other modes follow alphabetically.
MODE_ORDER: tuple[str, ...] = ("cod", "curator", "nohint", "ralph", "ralph-curator", "ralph-nohint")
#: The mode every plain (non-Ralph) mode is compared against in :attr:`Summary.mode_diffs`.
BASELINE_MODE = "nohint"
#: The mode every Ralph-loop mode (``ralph``, ``ralph-<context>``) is compared against.
RALPH_BASELINE_MODE = "ralph-nohint"
#: Default minimum number of packs (pairs of packs for paired differences) for an interval.
MIN_PACKS = 3

#: Identifies a pack (the clustering unit): ``(env, split, pack_id)``.
PackKey = tuple[str, str, str]

_NAN = math.nan


# --------------------------------------------------------------------------------------------
# Intervals (scipy.stats)
# --------------------------------------------------------------------------------------------


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values) if values else _NAN


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def _check_bounds(bounds: tuple[float, float] | None) -> tuple[float, float] | None:
    if bounds is None:
        return None
    low, high = (float(b) for b in bounds)
    if math.isnan(low) or math.isnan(high) or low > high:
        raise ValueError(f"bounds must be (low, high) with low <= high, got {bounds!r}")
    return low, high


def difference_range(bounds: tuple[float, float] | None) -> tuple[float, float] | None:
    """Range of a difference of two quantities that each lie in ``bounds``: ``(low - high,
    high - low)`` (``None`` stays ``None``)."""
    b = _check_bounds(bounds)
    if b is None:
        return None
    width = b[1] - b[0]
    return -width, width


def clip_interval(
    estimate: float, low: float, high: float, bounds: tuple[float, float] | None
) -> tuple[float, float]:
    """Clip the interval ``[low, high]`` to ``bounds = (lo, hi)``.

    The clipped interval never excludes ``estimate`` (if a too narrow ``bounds`` would cut the
    point estimate off, the interval ends at the estimate instead). NaN ends and ``bounds=None``
    are returned unchanged.
    """
    b = _check_bounds(bounds)
    if b is None or math.isnan(low) or math.isnan(high):
        return low, high
    lo_b, hi_b = b
    if math.isfinite(estimate):
        lo_b, hi_b = min(lo_b, estimate), max(hi_b, estimate)
    return max(low, lo_b), min(high, hi_b)


def mean_ci(
    values: Iterable[float],
    confidence: float = 0.95,
    *,
    bounds: tuple[float, float] | None = None,
    min_n: int = 2,
) -> tuple[float, float, float]:
    """Mean and two-sided Student-t confidence interval: ``(mean, low, high)``.

    The interval is ``scipy.stats.ttest_1samp(values, 0).confidence_interval(confidence)``
    (``mean -/+ t_{(1+confidence)/2, n-1} * s / sqrt(n)``), then clipped to ``bounds``
    (see :func:`clip_interval`). With fewer than ``max(min_n, 2)`` values the interval is
    ``(nan, nan)`` ("n too small"; the mean is still given); no values give ``(nan, nan, nan)``.
    Zero spread gives the degenerate interval ``(mean, mean)``. Pass *per-pack* means, not raw
    episodes (see the module docstring).
    """
    _check_confidence(confidence)
    vals = [float(v) for v in values]
    n = len(vals)
    m = _mean(vals)
    if n < max(min_n, 2):
        return m, _NAN, _NAN
    if min(vals) == max(vals):  # no spread (scipy would warn about the degenerate sample)
        return m, m, m
    from scipy import stats  # imported lazily: it is slow to import

    ci = stats.ttest_1samp(vals, 0.0).confidence_interval(confidence)
    lo, hi = clip_interval(m, float(ci.low), float(ci.high), bounds)
    return m, lo, hi


def welch_ci(
    a: Sequence[float],
    b: Sequence[float],
    confidence: float = 0.95,
    *,
    bounds: tuple[float, float] | None = None,
    min_n: int = 2,
) -> tuple[float, float, float]:
    """Difference of means ``mean(a) - mean(b)`` with a Welch (unequal variance) t interval.

    The interval is ``scipy.stats.ttest_ind(a, b, equal_var=False).confidence_interval(confidence)``
    (Welch-Satterthwaite degrees of freedom), clipped to ``bounds`` (pass :func:`difference_range` of the value range) and is
    ``(nan, nan)`` when either side has fewer than ``max(min_n, 2)`` values.
    """
    _check_confidence(confidence)
    a, b = [float(v) for v in a], [float(v) for v in b]
    d = _mean(a) - _mean(b)
    k = max(min_n, 2)
    if len(a) < k or len(b) < k:
        return d, _NAN, _NAN
    if min(a) == max(a) and min(b) == max(b):  # no spread on either side
        return d, d, d
    from scipy import stats

    ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(confidence)
    lo, hi = clip_interval(d, float(ci.low), float(ci.high), bounds)
    return d, lo, hi


# --------------------------------------------------------------------------------------------
# JSON numbers
# --------------------------------------------------------------------------------------------


def _null_reads_as(value: float) -> BeforeValidator:
    """A validator that reads ``None`` (JSON ``null``) as ``value``."""
    return BeforeValidator(lambda v: value if v is None else v)


def _canonical_nan(value: float) -> float:
    """Every NaN becomes the one :data:`math.nan` object, so models holding NaN compare equal."""
    return math.nan if math.isnan(value) else value


def _null_if_not_finite(value: float) -> float | None:
    """NaN and infinities are written as ``None`` (JSON ``null``): strict JSON has no such numbers."""
    return value if math.isfinite(value) else None


_TO_JSON = PlainSerializer(_null_if_not_finite, return_type=float | None, when_used="json")

#: A float written as JSON ``null`` when it is not finite and read back from ``null`` as NaN.
JsonFloat = Annotated[float, _null_reads_as(_NAN), AfterValidator(_canonical_nan), _TO_JSON]
#: Lower end of a reward range: ``null`` reads back as minus infinity.
_LowBound = Annotated[float, _null_reads_as(-math.inf), _TO_JSON]
#: Upper end of a reward range: ``null`` reads back as plus infinity.
_HighBound = Annotated[float, _null_reads_as(math.inf), _TO_JSON]


# --------------------------------------------------------------------------------------------
# Result models
# --------------------------------------------------------------------------------------------


class _RewardStats(BaseModel):
    """The figures a position cell and a whole mode share: packs and episodes counted, the mean
    penalised reward with its interval, and the rates."""

    model_config = ConfigDict(extra="ignore")

    n_packs: int
    n_episodes: int
    mean_reward: JsonFloat
    ci_low: JsonFloat
    ci_high: JsonFloat
    success_rate: JsonFloat
    format_valid_rate: JsonFloat
    mean_env_reward: JsonFloat
    hint_valid_rate: JsonFloat = _NAN


class PositionStats(_RewardStats):
    """Statistics of one ``(mode, position)`` cell, computed over packs (see module docstring).

    ``mean_reward`` and its interval ``[ci_low, ci_high]`` use the penalised task reward; the
    interval is NaN (``null`` in JSON) when ``n_packs`` is below the summary's ``min_packs``.
    ``hint_valid_rate`` covers only episodes followed by a context update (``hints_out`` is not
    None); it is NaN (``null`` in JSON) when there were none, e.g. at the last position or in the
    no-hint baseline.
    """

    position: int
    n_updates: int = 0


class OverallStats(_RewardStats):
    """All positions of one mode together (per pack: mean over repeats and positions first).

    The interval follows the same rules as :class:`PositionStats` (NaN below ``min_packs``).
    """

    n_lifecycles: int
    mean_completion_tokens: JsonFloat = _NAN


class ModeDiffStats(BaseModel):
    """Per-position difference ``mean_reward(mode) - mean_reward(baseline)``.

    ``paired`` is True when both modes ran exactly the same packs at this position: the interval
    is then a t interval over per-pack differences (``n_packs`` pairs). Otherwise it is a Welch
    interval on the two sets of per-pack means and ``n_packs`` is the smaller side. The interval
    is NaN when ``n_packs`` is below the summary's ``min_packs`` and is clipped to
    ``(low - high, high - low)`` of the reward range.
    """

    model_config = ConfigDict(extra="ignore")

    position: int
    diff: JsonFloat
    ci_low: JsonFloat
    ci_high: JsonFloat
    n_packs: int
    paired: bool


class Summary(BaseModel):
    """Evaluation summary over lifecycle results, possibly of several modes.

    - ``positions[mode]``: one :class:`PositionStats` per position, sorted by position.
    - ``overall[mode]``: all positions together.
    - ``cod_gain[mode]``: mean reward at the last position minus the mean reward at position 0.
    - ``cod_gain_ci[mode]``: ``(low, high)`` t interval of that gain over packs that have both
      positions (paired per pack); NaN with fewer than ``min_packs`` such packs
      (``cod_gain_n[mode]`` of them), clipped to ``(low - high, high - low)`` of the reward range.
    - ``mode_diffs[f"{mode}-{baseline}"]``: per-position :class:`ModeDiffStats` of every mode
      against its no-context baseline (:func:`baseline_for`: ``nohint`` for plain modes, e.g.
      ``"cod-nohint"``, ``"curator-nohint"``; ``ralph-nohint`` for Ralph loops, e.g.
      ``"ralph-ralph-nohint"``, ``"ralph-curator-ralph-nohint"``), present when both were run;
      :func:`split_diff_key` splits a key back into ``(mode, baseline)``.
    - ``reward_range``: the per-episode reward bounds intervals were clipped to (``None``: not
      clipped); ``min_packs``: fewer packs than this give no interval (see module docstring).

    ``model_dump(mode="json")`` is strict JSON (NaN and infinities written as ``null``) and
    ``model_validate`` reads it back: ``null`` numbers as NaN, an infinite reward bound
    infinite. Summaries written before ``min_packs``, ``reward_range`` and ``cod_gain_n``
    existed read with the defaults.
    """

    model_config = ConfigDict(extra="ignore")

    confidence: float = 0.95
    min_packs: int = MIN_PACKS
    reward_range: tuple[_LowBound, _HighBound] | None = None
    modes: list[str] = []
    positions: dict[str, list[PositionStats]] = {}
    overall: dict[str, OverallStats] = {}
    cod_gain: dict[str, JsonFloat] = {}
    cod_gain_ci: dict[str, tuple[JsonFloat, JsonFloat]] = {}
    cod_gain_n: dict[str, int] = {}
    mode_diffs: dict[str, list[ModeDiffStats]] = {}

    def mean_rewards(self, mode: str) -> list[float]:
        """Mean reward per position for ``mode`` (empty if the mode was not run)."""
        return [p.mean_reward for p in self.positions.get(mode, [])]


# --------------------------------------------------------------------------------------------
# Summarisation
# --------------------------------------------------------------------------------------------


def baseline_for(mode: str) -> str:
    """The no-context baseline ``mode`` is compared against: ``ralph-nohint`` for Ralph-loop modes
    (``ralph``, ``ralph-curator``, ...), ``nohint`` for every other mode."""
    return RALPH_BASELINE_MODE if mode == "ralph" or mode.startswith("ralph-") else BASELINE_MODE


def diff_key(mode: str, base: str) -> str:
    """Key of :attr:`Summary.mode_diffs`: ``f"{mode}-{base}"`` (e.g. ``cod-nohint``,
    ``ralph-curator-ralph-nohint``)."""
    return f"{mode}-{base}"


def split_diff_key(key: str) -> tuple[str, str]:
    """Inverse of :func:`diff_key`: ``(mode, baseline)``. Keys of unknown baselines split at the
    last hyphen."""
    for base in (RALPH_BASELINE_MODE, BASELINE_MODE):
        if key.endswith("-" + base) and len(key) > len(base) + 1:
            return key[: -len(base) - 1], base
    mode, _, base = key.rpartition("-")
    return mode, base


def _pack_key(r: LifecycleResult) -> PackKey:
    return (r.env, r.split, r.pack_id)


def _order_modes(modes: Iterable[str]) -> list[str]:
    present = set(modes)
    known = [m for m in MODE_ORDER if m in present]
    return known + sorted(present - set(MODE_ORDER))


def _pack_means(
    groups: Mapping[PackKey, Sequence[EpisodeRecord]], attr: str
) -> dict[PackKey, float]:
    """Per pack: mean of ``attr`` over that pack's episodes (its repeats)."""
    return {k: _mean([float(getattr(e, attr)) for e in eps]) for k, eps in groups.items() if eps}


def _clustered(groups: Mapping[PackKey, Sequence[EpisodeRecord]], attr: str) -> float:
    """Mean over packs of the per-pack mean of ``attr``."""
    return _mean(list(_pack_means(groups, attr).values()))


def _hint_valid_rate(groups: Mapping[PackKey, Sequence[EpisodeRecord]]) -> tuple[float, int]:
    upd = {k: [e for e in eps if e.hints_out is not None] for k, eps in groups.items()}
    n = sum(len(v) for v in upd.values())
    return _clustered({k: v for k, v in upd.items() if v}, "hint_valid"), n


def _position_stats(
    position: int,
    groups: Mapping[PackKey, Sequence[EpisodeRecord]],
    confidence: float,
    bounds: tuple[float, float] | None,
    min_packs: int,
) -> PositionStats:
    mean, lo, hi = mean_ci(
        list(_pack_means(groups, "reward").values()), confidence, bounds=bounds, min_n=min_packs
    )
    hvr, n_upd = _hint_valid_rate(groups)
    return PositionStats(
        position=position,
        n_packs=len(groups),
        n_episodes=sum(len(v) for v in groups.values()),
        mean_reward=mean,
        ci_low=lo,
        ci_high=hi,
        success_rate=_clustered(groups, "success"),
        format_valid_rate=_clustered(groups, "format_valid"),
        mean_env_reward=_clustered(groups, "env_reward"),
        hint_valid_rate=hvr,
        n_updates=n_upd,
    )


def _mode_diff(
    position: int,
    a: Mapping[PackKey, float],
    b: Mapping[PackKey, float],
    confidence: float,
    bounds: tuple[float, float] | None,
    min_packs: int,
) -> ModeDiffStats:
    if a and set(a) == set(b):
        diffs = [a[k] - b[k] for k in a]
        d, lo, hi = mean_ci(diffs, confidence, bounds=bounds, min_n=min_packs)
        return ModeDiffStats(position=position, diff=d, ci_low=lo, ci_high=hi, n_packs=len(diffs), paired=True)
    d, lo, hi = welch_ci(
        list(a.values()), list(b.values()), confidence, bounds=bounds, min_n=min_packs
    )
    return ModeDiffStats(position=position, diff=d, ci_low=lo, ci_high=hi, n_packs=min(len(a), len(b)),
                         paired=False)


def summarize(
    results: Sequence[LifecycleResult],
    confidence: float = 0.95,
    reward_range: tuple[float, float] | None = None,
    min_packs: int = MIN_PACKS,
) -> Summary:
    """Summarise lifecycle results per mode and position, clustering by pack.

    ``results`` may mix modes (e.g. ``"cod"`` and its ``"nohint"`` baseline) and hold several
    repeats per pack; packs may differ in length. An empty list gives an empty summary.

    ``reward_range=(low, high)`` bounds the per-episode (penalised) reward, e.g. the environment's
    reward range widened by the penalties; intervals of means are clipped to it and intervals of
    differences (CoD gain, mode differences) to ``(low - high, high - low)``. ``None`` clips
    nothing. Cells with fewer than ``min_packs`` packs (pairs of packs for paired differences;
    values below 2 act as 2) get a NaN interval ("n too small").
    """
    _check_confidence(confidence)
    bounds = _check_bounds(reward_range)
    diff_bounds = difference_range(bounds)
    min_packs = max(int(min_packs), 2)
    # mode -> position -> pack -> episodes
    cells: dict[str, dict[int, dict[PackKey, list[EpisodeRecord]]]] = {}
    # mode -> pack -> all episodes (overall stats)
    by_pack: dict[str, dict[PackKey, list[EpisodeRecord]]] = {}
    lifecycles: dict[str, int] = {}
    for r in results:
        key = _pack_key(r)
        lifecycles[r.mode] = lifecycles.get(r.mode, 0) + 1
        by_pack.setdefault(r.mode, {}).setdefault(key, [])
        for i, ep in enumerate(r.episodes):
            pos = ep.position if ep.position is not None else i
            cells.setdefault(r.mode, {}).setdefault(pos, {}).setdefault(key, []).append(ep)
            by_pack[r.mode][key].append(ep)

    modes = _order_modes(lifecycles)
    positions: dict[str, list[PositionStats]] = {}
    overall: dict[str, OverallStats] = {}
    cod_gain: dict[str, float] = {}
    cod_gain_ci: dict[str, tuple[float, float]] = {}
    cod_gain_n: dict[str, int] = {}
    mode_diffs: dict[str, list[ModeDiffStats]] = {}
    for mode in modes:
        pos_cells = cells.get(mode, {})
        positions[mode] = [
            _position_stats(p, pos_cells[p], confidence, bounds, min_packs)
            for p in sorted(pos_cells)
        ]
        packs = {k: v for k, v in by_pack[mode].items() if v}
        mean, lo, hi = mean_ci(
            list(_pack_means(packs, "reward").values()), confidence, bounds=bounds, min_n=min_packs
        )
        hvr, _ = _hint_valid_rate(packs)
        overall[mode] = OverallStats(
            n_lifecycles=lifecycles[mode],
            n_packs=len(packs),
            n_episodes=sum(len(v) for v in packs.values()),
            mean_reward=mean,
            ci_low=lo,
            ci_high=hi,
            success_rate=_clustered(packs, "success"),
            format_valid_rate=_clustered(packs, "format_valid"),
            mean_env_reward=_clustered(packs, "env_reward"),
            hint_valid_rate=hvr,
            mean_completion_tokens=_clustered(packs, "completion_tokens"),
        )
        stats = positions[mode]
        if stats:
            first, last = stats[0], stats[-1]
            gain = last.mean_reward - first.mean_reward
            cod_gain[mode] = gain
            # paired over the packs that have both positions
            m_first = _pack_means(pos_cells[first.position], "reward")
            m_last = _pack_means(pos_cells[last.position], "reward")
            gains = [m_last[k] - m_first[k] for k in m_last if k in m_first]
            _, glo, ghi = mean_ci(gains, confidence, min_n=min_packs)
            cod_gain_ci[mode] = clip_interval(gain, glo, ghi, diff_bounds)
            cod_gain_n[mode] = len(gains)

    for mode in modes:
        base_mode = baseline_for(mode)
        if mode == base_mode or mode not in cells or base_mode not in cells:
            continue
        base = cells[base_mode]
        mode_diffs[diff_key(mode, base_mode)] = [
            _mode_diff(
                p,
                _pack_means(cells[mode][p], "reward"),
                _pack_means(base[p], "reward"),
                confidence,
                diff_bounds,
                min_packs,
            )
            for p in sorted(set(cells[mode]) & set(base))
        ]
    return Summary(confidence=confidence, min_packs=min_packs, reward_range=bounds, modes=modes,
                   positions=positions, overall=overall, cod_gain=cod_gain, cod_gain_ci=cod_gain_ci,
                   cod_gain_n=cod_gain_n, mode_diffs=mode_diffs)
