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

``scipy`` is not a dependency: the Student-t quantile is computed here from the regularised
incomplete beta function (exact up to floating point, any positive, also non-integer, degrees of
freedom).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from functools import lru_cache
from typing import Any

from codrl.rollout.experience import EpisodeRecord, LifecycleResult

__all__ = [
    "MODE_ORDER",
    "BASELINE_MODE",
    "PackKey",
    "PositionStats",
    "OverallStats",
    "ModeDiffStats",
    "Summary",
    "mean_ci",
    "t_quantile",
    "t_cdf",
    "summarize",
    "json_safe",
]

#: Preferred display order of rollout modes; other modes follow alphabetically.
MODE_ORDER: tuple[str, ...] = ("cod", "nohint", "ralph")
#: The mode every other mode is compared against in :attr:`Summary.mode_diffs`.
BASELINE_MODE = "nohint"

#: Identifies a pack (the clustering unit): ``(env, split, pack_id)``.
PackKey = tuple[str, str, str]

_NAN = float("nan")


# --------------------------------------------------------------------------------------------
# Student-t distribution (no scipy)
# --------------------------------------------------------------------------------------------


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz method)."""
    tiny = 1e-300
    eps = 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = 1.0
    d = 1.0 - qab * x / qap
    if abs(d) < tiny:
        d = tiny
    d = 1.0 / d
    h = d
    for m in range(1, 1000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        if abs(d) < tiny:
            d = tiny
        c = 1.0 + aa / c
        if abs(c) < tiny:
            c = tiny
        d = 1.0 / d
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        if abs(d) < tiny:
            d = tiny
        c = 1.0 + aa / c
        if abs(c) < tiny:
            c = tiny
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta function ``I_x(a, b)`` for ``a, b > 0``, ``0 <= x <= 1``."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b)
        - math.lgamma(a)
        - math.lgamma(b)
        + a * math.log(x)
        + b * math.log1p(-x)
    )
    front = math.exp(log_front)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """Cumulative distribution function of Student's t with ``df > 0`` degrees of freedom."""
    if df <= 0 or math.isnan(df) or math.isnan(t):
        return _NAN
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))  # P(T > |t|)
    return 1.0 - tail if t >= 0 else tail


@lru_cache(maxsize=4096)
def t_quantile(p: float, df: float) -> float:
    """Quantile (inverse CDF) of Student's t: the ``t`` with ``P(T <= t) = p``.

    Solved by bisection on :func:`t_cdf` to ~1e-12 relative accuracy; ``df`` may be any positive
    real (Welch degrees of freedom are not integers). ``df = inf`` gives the normal quantile.
    """
    if not 0.0 < p < 1.0 or not df > 0:
        return _NAN
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    if math.isinf(df):
        return _normal_quantile(p)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2.0
        if hi > 1e12:
            return math.inf
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def _normal_quantile(p: float) -> float:
    """Standard normal quantile by bisection on ``erf`` (used for ``df = inf``)."""
    lo, hi = -40.0, 40.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if 0.5 * (1.0 + math.erf(mid / math.sqrt(2.0))) < p:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


# --------------------------------------------------------------------------------------------
# Basic statistics
# --------------------------------------------------------------------------------------------


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values) if values else _NAN


def _var(values: Sequence[float]) -> float:
    """Sample variance (ddof = 1); NaN for fewer than two values."""
    n = len(values)
    if n < 2:
        return _NAN
    m = _mean(values)
    return math.fsum((v - m) ** 2 for v in values) / (n - 1)


def mean_ci(values: Iterable[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and two-sided Student-t confidence interval: ``(mean, low, high)``.

    ``low/high = mean -/+ t_{(1+confidence)/2, n-1} * s / sqrt(n)`` with ``s`` the sample
    standard deviation. One value gives the degenerate interval ``(v, v, v)``; no values give
    ``(nan, nan, nan)``. Pass *per-pack* means, not raw episodes (see the module docstring).
    """
    vals = [float(v) for v in values]
    n = len(vals)
    if n == 0:
        return _NAN, _NAN, _NAN
    m = _mean(vals)
    if n == 1:
        return m, m, m
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    half = t_quantile(0.5 + confidence / 2.0, float(n - 1)) * math.sqrt(_var(vals) / n)
    return m, m - half, m + half


def _welch_ci(
    a: Sequence[float], b: Sequence[float], confidence: float
) -> tuple[float, float, float]:
    """Difference of means ``mean(a) - mean(b)`` with a Welch (unequal variance) t interval."""
    d = _mean(a) - _mean(b)
    if len(a) < 2 or len(b) < 2:
        return d, _NAN, _NAN
    sa, sb = _var(a) / len(a), _var(b) / len(b)
    se2 = sa + sb
    if se2 == 0.0:
        return d, d, d
    df = se2**2 / (sa**2 / (len(a) - 1) + sb**2 / (len(b) - 1))
    half = t_quantile(0.5 + confidence / 2.0, df) * math.sqrt(se2)
    return d, d - half, d + half


def json_safe(obj: Any) -> Any:
    """Recursively convert ``obj`` for strict JSON: non-finite floats become ``None``.

    Tuples become lists; dataclasses with a ``to_json`` method are converted with it; other
    unknown objects (paths, enums...) become their ``str``.
    """
    if obj is None or isinstance(obj, (bool, str, int)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [json_safe(v) for v in obj]
    to_json = getattr(obj, "to_json", None)
    if callable(to_json):
        return json_safe(to_json())
    try:  # numpy scalars and arrays without importing numpy here
        return json_safe(obj.tolist())
    except AttributeError:
        pass
    return str(obj)


def _nan_if_none(v: Any) -> float:
    return _NAN if v is None else float(v)


# --------------------------------------------------------------------------------------------
# Result dataclasses
# --------------------------------------------------------------------------------------------


@dataclass
class PositionStats:
    """Statistics of one ``(mode, position)`` cell, computed over packs (see module docstring).

    ``mean_reward`` and its interval ``[ci_low, ci_high]`` use the penalised task reward.
    ``hint_valid_rate`` covers only episodes followed by a context update (``hints_out`` is not
    None); it is NaN (``null`` in JSON) when there were none, e.g. at the last position or in the
    no-hint baseline.
    """

    position: int
    n_packs: int
    n_episodes: int
    mean_reward: float
    ci_low: float
    ci_high: float
    success_rate: float
    format_valid_rate: float
    mean_env_reward: float
    hint_valid_rate: float = _NAN
    n_updates: int = 0

    def to_json(self) -> dict[str, Any]:
        """Plain dict; NaN becomes ``None``."""
        return json_safe({f.name: getattr(self, f.name) for f in fields(self)})

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PositionStats:
        """Inverse of :meth:`to_json` (``None`` floats become NaN)."""
        return cls(
            position=int(data["position"]),
            n_packs=int(data["n_packs"]),
            n_episodes=int(data["n_episodes"]),
            mean_reward=_nan_if_none(data.get("mean_reward")),
            ci_low=_nan_if_none(data.get("ci_low")),
            ci_high=_nan_if_none(data.get("ci_high")),
            success_rate=_nan_if_none(data.get("success_rate")),
            format_valid_rate=_nan_if_none(data.get("format_valid_rate")),
            mean_env_reward=_nan_if_none(data.get("mean_env_reward")),
            hint_valid_rate=_nan_if_none(data.get("hint_valid_rate")),
            n_updates=int(data.get("n_updates", 0)),
        )


@dataclass
class OverallStats:
    """All positions of one mode together (per pack: mean over repeats and positions first)."""

    n_lifecycles: int
    n_packs: int
    n_episodes: int
    mean_reward: float
    ci_low: float
    ci_high: float
    success_rate: float
    format_valid_rate: float
    mean_env_reward: float
    hint_valid_rate: float = _NAN
    mean_completion_tokens: float = _NAN

    def to_json(self) -> dict[str, Any]:
        """Plain dict; NaN becomes ``None``."""
        return json_safe({f.name: getattr(self, f.name) for f in fields(self)})

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> OverallStats:
        """Inverse of :meth:`to_json`."""
        kw: dict[str, Any] = {}
        for f in fields(cls):
            v = data.get(f.name)
            kw[f.name] = int(v or 0) if f.name.startswith("n_") else _nan_if_none(v)
        return cls(**kw)


@dataclass
class ModeDiffStats:
    """Per-position difference ``mean_reward(mode) - mean_reward(baseline)``.

    ``paired`` is True when both modes ran exactly the same packs at this position: the interval
    is then a t interval over per-pack differences (``n_packs`` pairs). Otherwise it is a Welch
    interval on the two sets of per-pack means (NaN when either side has fewer than two packs).
    """

    position: int
    diff: float
    ci_low: float
    ci_high: float
    n_packs: int
    paired: bool

    def to_json(self) -> dict[str, Any]:
        """Plain dict; NaN becomes ``None``."""
        return json_safe({f.name: getattr(self, f.name) for f in fields(self)})

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModeDiffStats:
        """Inverse of :meth:`to_json`."""
        return cls(
            position=int(data["position"]),
            diff=_nan_if_none(data.get("diff")),
            ci_low=_nan_if_none(data.get("ci_low")),
            ci_high=_nan_if_none(data.get("ci_high")),
            n_packs=int(data.get("n_packs", 0)),
            paired=bool(data.get("paired", False)),
        )


@dataclass
class Summary:
    """Evaluation summary over lifecycle results, possibly of several modes.

    - ``positions[mode]``: one :class:`PositionStats` per position, sorted by position.
    - ``overall[mode]``: all positions together.
    - ``cod_gain[mode]``: mean reward at the last position minus the mean reward at position 0.
    - ``cod_gain_ci[mode]``: ``(low, high)`` t interval of that gain over packs that have both
      positions (paired per pack).
    - ``mode_diffs[f"{mode}-nohint"]``: per-position :class:`ModeDiffStats` of every mode against
      the no-hint baseline, present when the baseline and that mode were both run.
    """

    confidence: float = 0.95
    modes: list[str] = field(default_factory=list)
    positions: dict[str, list[PositionStats]] = field(default_factory=dict)
    overall: dict[str, OverallStats] = field(default_factory=dict)
    cod_gain: dict[str, float] = field(default_factory=dict)
    cod_gain_ci: dict[str, tuple[float, float]] = field(default_factory=dict)
    mode_diffs: dict[str, list[ModeDiffStats]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Strict-JSON-serialisable dict (NaN written as ``None``)."""
        return json_safe(
            {
                "confidence": self.confidence,
                "modes": list(self.modes),
                "positions": {
                    m: [p.to_json() for p in ps] for m, ps in self.positions.items()
                },
                "overall": {m: o.to_json() for m, o in self.overall.items()},
                "cod_gain": dict(self.cod_gain),
                "cod_gain_ci": {m: list(ci) for m, ci in self.cod_gain_ci.items()},
                "mode_diffs": {
                    k: [d.to_json() for d in ds] for k, ds in self.mode_diffs.items()
                },
            }
        )

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Summary:
        """Rebuild a summary from :meth:`to_json` output (e.g. ``results.json["summary"]``)."""
        return cls(
            confidence=float(data.get("confidence", 0.95)),
            modes=list(data.get("modes", [])),
            positions={
                m: [PositionStats.from_json(p) for p in ps]
                for m, ps in data.get("positions", {}).items()
            },
            overall={m: OverallStats.from_json(o) for m, o in data.get("overall", {}).items()},
            cod_gain={m: _nan_if_none(g) for m, g in data.get("cod_gain", {}).items()},
            cod_gain_ci={
                m: (_nan_if_none(ci[0]), _nan_if_none(ci[1]))
                for m, ci in data.get("cod_gain_ci", {}).items()
            },
            mode_diffs={
                k: [ModeDiffStats.from_json(d) for d in ds]
                for k, ds in data.get("mode_diffs", {}).items()
            },
        )

    def mean_rewards(self, mode: str) -> list[float]:
        """Mean reward per position for ``mode`` (empty if the mode was not run)."""
        return [p.mean_reward for p in self.positions.get(mode, [])]


# --------------------------------------------------------------------------------------------
# Summarisation
# --------------------------------------------------------------------------------------------


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
    position: int, groups: Mapping[PackKey, Sequence[EpisodeRecord]], confidence: float
) -> PositionStats:
    mean, lo, hi = mean_ci(list(_pack_means(groups, "reward").values()), confidence)
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
) -> ModeDiffStats:
    if a and set(a) == set(b):
        diffs = [a[k] - b[k] for k in a]
        d, lo, hi = mean_ci(diffs, confidence)
        return ModeDiffStats(position, d, lo, hi, len(diffs), True)
    d, lo, hi = _welch_ci(list(a.values()), list(b.values()), confidence)
    return ModeDiffStats(position, d, lo, hi, min(len(a), len(b)), False)


def summarize(results: Sequence[LifecycleResult], confidence: float = 0.95) -> Summary:
    """Summarise lifecycle results per mode and position, clustering by pack.

    ``results`` may mix modes (e.g. ``"cod"`` and its ``"nohint"`` baseline) and hold several
    repeats per pack; packs may differ in length. An empty list gives an empty summary.
    """
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

    summary = Summary(confidence=confidence, modes=_order_modes(lifecycles))
    for mode in summary.modes:
        pos_cells = cells.get(mode, {})
        summary.positions[mode] = [
            _position_stats(p, pos_cells[p], confidence) for p in sorted(pos_cells)
        ]
        packs = {k: v for k, v in by_pack[mode].items() if v}
        mean, lo, hi = mean_ci(list(_pack_means(packs, "reward").values()), confidence)
        hvr, _ = _hint_valid_rate(packs)
        summary.overall[mode] = OverallStats(
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
        stats = summary.positions[mode]
        if stats:
            first, last = stats[0], stats[-1]
            summary.cod_gain[mode] = last.mean_reward - first.mean_reward
            m_first = _pack_means(pos_cells[first.position], "reward")
            m_last = _pack_means(pos_cells[last.position], "reward")
            gains = [m_last[k] - m_first[k] for k in m_last if k in m_first]
            _, glo, ghi = mean_ci(gains, confidence)
            summary.cod_gain_ci[mode] = (glo, ghi)

    if BASELINE_MODE in cells:
        base = cells[BASELINE_MODE]
        for mode in summary.modes:
            if mode == BASELINE_MODE or mode not in cells:
                continue
            diffs = [
                _mode_diff(
                    p,
                    _pack_means(cells[mode][p], "reward"),
                    _pack_means(base[p], "reward"),
                    confidence,
                )
                for p in sorted(set(cells[mode]) & set(base))
            ]
            summary.mode_diffs[f"{mode}-{BASELINE_MODE}"] = diffs
    return summary
