"""Uncertainty of per-sample scores: percentile bootstrap, paired bootstrap, pairing of sample keys.

Every interval is a seeded percentile bootstrap over samples (95% by default); the same (n, B, seed) gives the
same resamples in every stage, so intervals of different stages that share samples are comparable. Paired
intervals resample (seed, sample_index) pairs, i.e. the common random numbers of two schedules run with the
same seeds. Statistics are ratios of sums (log gen-PPL from per-sample NLL sums and token counts) or means.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from statistics import NormalDist
from typing import NamedTuple

import numpy as np

from mdlm.errors import UserError


class Interval(NamedTuple):
    point: float
    low: float
    high: float


Stat = Callable[[np.ndarray, np.ndarray | None], np.ndarray]  # ([R, N], [R, N] | None) -> [R]


def ratio_of_sums(values: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    """Σ values / Σ weights along the last axis (the mean when weights is None); log gen-PPL for NLLs."""
    if weights is None:
        return values.mean(axis=-1)
    return values.sum(axis=-1) / weights.sum(axis=-1)


def bootstrap_indices(n: int, B: int, seed: int) -> np.ndarray:
    """[B, n] resampling indices; the same (n, B, seed) gives the same resamples in every stage."""
    if n < 1 or B < 1:
        raise UserError(f"bootstrap: needs >= 1 sample and >= 1 resample (got {n} samples, B={B})")
    return np.random.default_rng(seed).integers(0, n, size=(B, n))


def _percentiles(point: float, reps: np.ndarray, level: float) -> Interval:
    low, high = np.quantile(reps, [(1 - level) / 2, (1 + level) / 2])
    return Interval(float(point), float(low), float(high))


def _as_f64(x) -> np.ndarray | None:
    return None if x is None else np.asarray(x, dtype=np.float64)


def bootstrap_ci(
    values, weights=None, stat: Stat = ratio_of_sums, B: int = 2000, seed: int = 0, level: float = 0.95
) -> Interval:
    """Percentile bootstrap interval of ``stat(values, weights)`` over samples (resampled jointly).

    Default stat: Σ values / Σ weights — with (nll_sum, n_tokens) that is log gen-PPL (exponentiate the
    interval for gen-PPL); with weights None, the mean (e.g. of per-sample entropies).
    """
    values, weights = _as_f64(values), _as_f64(weights)
    idx = bootstrap_indices(len(values), B, seed)
    point = stat(values[None], None if weights is None else weights[None])[0]
    reps = stat(values[idx], None if weights is None else weights[idx])
    return _percentiles(point, reps, level)


def paired_ci(
    values,
    weights,
    base_values,
    base_weights,
    stat: Stat = ratio_of_sums,
    B: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> Interval:
    """Paired percentile bootstrap of stat(schedule) − stat(baseline); row i of both is the same pair.

    With (nll_sum, n_tokens) this is Δ log gen-PPL; with weights None, the difference of means.
    """
    values, weights = _as_f64(values), _as_f64(weights)
    base_values, base_weights = _as_f64(base_values), _as_f64(base_weights)
    if len(values) != len(base_values):
        raise UserError(f"paired bootstrap: {len(values)} samples vs {len(base_values)} baseline samples")
    idx = bootstrap_indices(len(values), B, seed)

    def delta(rows):  # rows: [R, N] indices, the same for both sides
        w = None if weights is None else weights[rows]
        bw = None if base_weights is None else base_weights[rows]
        return stat(values[rows], w) - stat(base_values[rows], bw)

    return _percentiles(delta(np.arange(len(values))[None])[0], delta(idx), level)


def align_pairs(
    keys: Sequence, base_keys: Sequence, where: str = "samples", base_where: str = "baseline"
) -> np.ndarray:
    """Indices into the baseline so that base[perm[i]] pairs with sample i; the key sets must be equal."""
    position = {k: j for j, k in enumerate(base_keys)}
    missing = [k for k in keys if k not in position]
    extra = sorted(set(base_keys) - set(keys), key=str)
    if missing or extra or len(position) != len(base_keys) or len(set(keys)) != len(keys):
        detail = f"{len(missing)} (seed, sample_index) keys only in {where}, {len(extra)} only in {base_where}"
        example = (missing or extra)[:3]
        raise UserError(f"{where} vs {base_where}: samples do not pair one to one ({detail}; e.g. {example})")
    return np.array([position[k] for k in keys], dtype=np.int64)



def pct_change(delta_log: float) -> float:
    """A difference of log values as a percentage change of the values (Δ log gen-PPL -> % gen-PPL)."""
    return 100.0 * math.expm1(delta_log)


def contrast_replicates(terms: Sequence[tuple[float, np.ndarray, np.ndarray | None]], B: int = 2000,
                        seed: int = 0) -> tuple[float, np.ndarray]:
    """(point, [B] bootstrap replicates) of Σ_k w_k · ratio_of_sums(values_k, weights_k), rows resampled jointly.

    ``terms``: (w, values [n], weights [n] or None); row i of every term is the same sample.
    """
    terms = [(float(w), _as_f64(v), _as_f64(t)) for w, v, t in terms if w != 0]
    if not terms:
        raise UserError("contrast: no term with a nonzero weight")
    n = len(terms[0][1])
    if any(len(v) != n for _, v, _ in terms):
        raise UserError(f"contrast: terms differ in their number of samples ({[len(v) for _, v, _ in terms]})")
    idx = bootstrap_indices(n, B, seed)
    point, reps = 0.0, np.zeros(B)
    for w, v, t in terms:
        point += w * float(ratio_of_sums(v[None], None if t is None else t[None])[0])
        reps += w * ratio_of_sums(v[idx], None if t is None else t[idx])
    return point, reps


def contrast_ci(terms: Sequence[tuple[float, np.ndarray, np.ndarray | None]], B: int = 2000, seed: int = 0,
                level: float = 0.95) -> Interval:
    """Paired percentile bootstrap interval of a contrast (`contrast_replicates`). With two terms
    (1, schedule) and (-1, baseline) this equals `paired_ci` (same resamples for the same n, B, seed)."""
    point, reps = contrast_replicates(terms, B, seed)
    return _percentiles(point, reps, level)


def percentile_interval(point: float, reps: np.ndarray, level: float) -> Interval:
    return _percentiles(point, reps, level)


def bootstrap_p(reps: np.ndarray, threshold: float) -> float:
    """Two-sided bootstrap p-value of "the statistic equals ``threshold``": the smallest 1 - level at which the
    percentile interval of ``reps`` excludes it (so p < a exactly when the (1 - a) interval excludes it)."""
    reps = np.asarray(reps, dtype=np.float64)
    tail = min(float(np.mean(reps <= threshold)), float(np.mean(reps >= threshold)))
    return min(1.0, 2.0 * tail)


def holm_levels(p_values: Sequence[float], alpha: float) -> list[tuple[int, float]]:
    """Holm's step-down procedure: per hypothesis (in input order) its rank by p-value and the confidence level
    of its adjusted interval, 1 - alpha / (m - rank). Hypotheses are tested in rank order and testing stops at
    the first one not rejected (the caller applies that rule to the intervals)."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: (p_values[i], i))
    out: list[tuple[int, float]] = [(0, 0.0)] * m
    for rank, i in enumerate(order):
        out[i] = (rank, 1.0 - alpha / (m - rank))
    return out


def detectable_effect(se: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """Minimum detectable effect of a two-sided level-alpha test with the given power: (z_{1-α/2} + z_power)·se."""
    nd = NormalDist()
    return (nd.inv_cdf(1 - alpha / 2) + nd.inv_cdf(power)) * se


def samples_to_decide(n: int, se: float, distance: float, alpha: float = 0.05, power: float = 0.8) -> int | None:
    """Samples at which an effect ``distance`` away from the decision threshold is detected with ``power``,
    assuming the standard error shrinks as 1/sqrt(n) from ``se`` at n samples. None when distance is 0."""
    if distance <= 0 or not math.isfinite(distance):
        return None
    if se <= 0:
        return n
    return max(1, math.ceil(n * (detectable_effect(se, alpha, power) / distance) ** 2))


def median_interval(values, level: float = 0.95) -> tuple[float, tuple[float, float] | None]:
    """The median of ``values`` and a distribution-free interval for it, or None with too few values.

    The interval is [x_(k), x_(n+1-k)] of the sorted values with the largest k whose coverage
    1 − 2·P(Binomial(n, ½) ≤ k − 1) is at least ``level``: exact for independent values of any continuous
    distribution. A percentile bootstrap of a median over a handful of values is not: over 3 values its
    "95%" interval is their range, which holds the median 75% of the time. At 95% the interval needs n >= 6.
    """
    x = np.sort(_as_f64(values))
    n = x.size
    if n == 0:
        raise UserError("median interval: no values")
    k, below = 0, 0.0  # below: P(Binomial(n, 1/2) <= k - 1) for the candidate k + 1
    while k < n // 2:
        below += math.comb(n, k) / 2.0 ** n
        if 1.0 - 2.0 * below < level:
            break
        k += 1
    return float(np.median(x)), (float(x[k - 1]), float(x[n - k])) if k else None
