"""Statistics used by the analysis tables: Wilson intervals, a cluster bootstrap, binned means and
Spearman's ρ with bootstrap confidence intervals, Pareto fronts.

Steps of one generated sequence are not independent (one hard prompt makes many high-entropy
steps), so every bootstrap here resamples *clusters* (records), not rows: a replicate draws
record counts from a multinomial and gives each row its record's count as a weight. Weighted
statistics over the original rows then equal the statistics over the expanded resample, which
keeps a replicate O(rows) with no copying.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class AnalysisOptions:
    """Knobs shared by every table. ``min_points``: bins or points with fewer observations are
    flagged ``enough=False`` and drawn hollow, never as facts."""

    n_boot: int = 1000  # bootstrap replicates per interval
    confidence: float = 0.95
    min_points: int = 10
    entropy_bins: int = 12  # bins of per-step entropy (information-loss curves)
    accuracy_bins: int = 8  # bins of per-example mean entropy (accuracy curves)
    folds: int = 2  # example folds for the held-out per-domain vs global τ comparison
    seed: int = 0

    def rng(self) -> np.random.Generator:
        return np.random.default_rng(self.seed)


def z_value(confidence: float) -> float:
    return float(stats.norm.ppf(0.5 + confidence / 2))


def wilson_interval(successes, n, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval for a binomial proportion (elementwise; NaN where n == 0). Unlike the
    normal interval it stays inside [0, 1] and keeps its coverage near 0 and 1 and for small n."""
    k = np.asarray(successes, dtype=float)
    n = np.asarray(n, dtype=float)
    z = z_value(confidence)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        denom = 1 + z * z / n
        centre = (p + z * z / (2 * n)) / denom
        half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # the bounds are exactly 0 / 1 at k = 0 / k = n; rounding must not move them off
    lo = np.where(k == 0, 0.0, np.clip(centre - half, 0, 1))
    hi = np.where(k == n, 1.0, np.clip(centre + half, 0, 1))
    return lo, hi


def cluster_counts(
    n_clusters: int, n_boot: int, rng: np.random.Generator, max_cells: int = 1 << 22
) -> Iterator[np.ndarray]:
    """Cluster-bootstrap draws in chunks of replicates: row = replicate, column = how often that
    cluster was drawn (G draws with replacement from G clusters). Chunked so memory stays bounded
    for runs with many records."""
    if n_clusters == 0:
        return
    per_chunk = max(1, max_cells // n_clusters)
    for start in range(0, n_boot, per_chunk):
        k = min(per_chunk, n_boot - start)
        draws = rng.integers(0, n_clusters, size=(k, n_clusters)) + (np.arange(k) * n_clusters)[:, None]
        yield np.bincount(draws.ravel(), minlength=k * n_clusters).reshape(k, n_clusters).astype(float)


def cluster_weights(codes: np.ndarray, n_boot: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Per-row weights of ``n_boot`` cluster-bootstrap replicates: every row is weighted by how
    often its cluster was drawn."""
    for chunk in cluster_counts(int(codes.max()) + 1 if codes.size else 0, n_boot, rng):
        yield from (counts[codes] for counts in chunk)


def percentile_interval(replicates: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval along axis 0, ignoring replicates where the statistic was undefined."""
    alpha = (1 - confidence) / 2
    reps = np.asarray(replicates, dtype=float)
    if reps.size == 0 or np.all(np.isnan(reps)):
        shape = reps.shape[1:]
        return np.full(shape, np.nan), np.full(shape, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns (empty bins) stay NaN
        return np.nanquantile(reps, alpha, axis=0), np.nanquantile(reps, 1 - alpha, axis=0)


# --- Spearman's ρ -----------------------------------------------------------------------------


def weighted_ranks(codes: np.ndarray, n_groups: int, weights: np.ndarray) -> np.ndarray:
    """Average ranks of rows in the sample where row i appears ``weights[i]`` times; ``codes`` are
    the rows' positions among the sorted distinct values (ties share a code), so tied values
    (including copies of one row) share their mean rank, as in ``scipy.stats.rankdata``."""
    per_value = np.bincount(codes, weights=weights, minlength=n_groups)
    upper = np.cumsum(per_value)
    return (upper - (per_value - 1) / 2)[codes]


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    # einsum's own loop, not BLAS: OpenBLAS threads long dot products, and on a busy machine
    # those threads made each call ~100x slower than this single-threaded loop
    return float(np.einsum("i,i->", a, b))


def _matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("ij,jk->ik", a, b)  # single-threaded for the same reason as _dot


def weighted_pearson(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> float:
    total = w.sum()
    if total <= 0:
        return np.nan
    da = a - _dot(w, a) / total
    db = b - _dot(w, b) / total
    wa = w * da
    var_a, var_b = _dot(wa, da), _dot(w * db, db)
    if var_a <= 0 or var_b <= 0:
        return np.nan
    return float(_dot(wa, db) / np.sqrt(var_a * var_b))


def weighted_spearman(x_codes, x_groups, y_codes, y_groups, weights) -> float:
    """Spearman's ρ of the sample in which row i appears ``weights[i]`` times."""
    return weighted_pearson(
        weighted_ranks(x_codes, x_groups, weights), weighted_ranks(y_codes, y_groups, weights), weights
    )


@dataclass(frozen=True)
class Correlation:
    rho: float
    p_value: float
    lo: float
    hi: float
    n: int
    n_clusters: int


def spearman_ci(x, y, clusters, rng: np.random.Generator, n_boot: int = 1000, confidence: float = 0.95) -> Correlation:
    """Spearman's ρ (scipy) with a percentile cluster-bootstrap interval. Rows with a non-finite
    value are dropped first."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y, codes = x[keep], y[keep], np.asarray(clusters)[keep]
    n_clusters = len(np.unique(codes))
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return Correlation(np.nan, np.nan, np.nan, np.nan, len(x), n_clusters)
    result = stats.spearmanr(x, y)
    codes = np.unique(codes, return_inverse=True)[1].ravel()
    _, x_codes = np.unique(x, return_inverse=True)
    _, y_codes = np.unique(y, return_inverse=True)
    x_groups, y_groups = int(x_codes.max()) + 1, int(y_codes.max()) + 1
    reps = np.array(
        [weighted_spearman(x_codes, x_groups, y_codes, y_groups, w) for w in cluster_weights(codes, n_boot, rng)]
    )
    lo, hi = percentile_interval(reps, confidence)
    return Correlation(float(result.statistic), float(result.pvalue), float(lo), float(hi), len(x), n_clusters)


# --- binned means -----------------------------------------------------------------------------


def bin_edges(values, n_bins: int) -> np.ndarray:
    """Equal-width edges over the finite range of ``values`` (shared by every group binned with
    them, so curves of different domains line up)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return np.array([0.0, 1.0])
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        hi = lo + 1.0
    return np.linspace(lo, hi, n_bins + 1)


def bin_index(values, edges: np.ndarray) -> np.ndarray:
    """Bin of each value (the last bin is closed on the right; out-of-range values are clipped)."""
    return np.clip(np.searchsorted(edges, np.asarray(values, dtype=float), side="right") - 1, 0, len(edges) - 2)


@dataclass(frozen=True)
class BinnedMeans:
    left: np.ndarray
    right: np.ndarray
    centre: np.ndarray
    n: np.ndarray  # rows per bin
    n_clusters: np.ndarray  # distinct clusters per bin
    mean: np.ndarray
    lo: np.ndarray
    hi: np.ndarray


def binned_means(
    x, y, clusters, edges: np.ndarray, rng: np.random.Generator, n_boot: int = 1000, confidence: float = 0.95
) -> BinnedMeans:
    """Mean of ``y`` per bin of ``x`` with percentile cluster-bootstrap intervals. Empty bins have
    n = 0 and NaN statistics. A replicate's bin means are (counts @ sums) / (counts @ sizes) with
    per-(cluster, bin) sums and sizes, so all replicates cost one matrix product."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y, labels = x[keep], y[keep], np.asarray(clusters)[keep]
    n_bins = len(edges) - 1
    bins = bin_index(x, edges)
    codes = np.unique(labels, return_inverse=True)[1].ravel() if len(labels) else np.zeros(0, int)
    n_clusters = int(codes.max()) + 1 if len(codes) else 0
    cell = codes * n_bins + bins
    sums = np.bincount(cell, weights=y, minlength=n_clusters * n_bins).reshape(n_clusters, n_bins)
    sizes = np.bincount(cell, minlength=n_clusters * n_bins).reshape(n_clusters, n_bins).astype(float)
    n = sizes.sum(axis=0).astype(int)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = sums.sum(axis=0) / n
        reps = [_matmul(c, sums) / _matmul(c, sizes) for c in cluster_counts(n_clusters, n_boot, rng)]
    lo, hi = percentile_interval(np.vstack(reps), confidence) if reps else (np.full(n_bins, np.nan),) * 2
    return BinnedMeans(edges[:-1], edges[1:], (edges[:-1] + edges[1:]) / 2, n, (sizes > 0).sum(axis=0), mean, lo, hi)


# --- Pareto front -----------------------------------------------------------------------------


def pareto_front(cost, value) -> np.ndarray:
    """True for points no other point dominates (cost ≤ and value ≥, one of them strictly)."""
    cost, value = np.asarray(cost, dtype=float), np.asarray(value, dtype=float)
    front = np.ones(len(cost), dtype=bool)
    for i in range(len(cost)):
        dominated = (cost <= cost[i]) & (value >= value[i]) & ((cost < cost[i]) | (value > value[i]))
        front[i] = not dominated.any()
    return front
