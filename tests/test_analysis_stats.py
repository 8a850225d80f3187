"""analysis.stats: intervals against known values and simulated coverage, ρ against scipy."""

import numpy as np
import pytest
from scipy import stats

from latentcot.analysis.stats import (
    bin_edges,
    bin_index,
    binned_means,
    cluster_counts,
    pareto_front,
    spearman_ci,
    weighted_spearman,
    wilson_interval,
)

N_DATASETS = 200
COVERAGE_BAND = (0.89, 0.99)  # nominal 0.95; ±~2.5 standard errors of a 200-dataset estimate


def test_wilson_matches_the_closed_form():
    lo, hi = wilson_interval(7, 20, 0.95)
    z, p, n = 1.959963984540054, 7 / 20, 20
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert lo == pytest.approx(centre - half) and hi == pytest.approx(centre + half)


def test_wilson_is_exact_at_the_ends_and_undefined_for_no_trials():
    lo, hi = wilson_interval(np.array([0, 5, 3]), np.array([5, 5, 0]))
    assert lo[0] == 0 and hi[1] == 1
    assert 0 < hi[0] < 1 and 0 < lo[1] < 1
    assert np.isnan(lo[2]) and np.isnan(hi[2])


def test_wilson_coverage_is_near_nominal():
    rng = np.random.default_rng(1)
    p, n = 0.3, 60
    k = rng.binomial(n, p, size=N_DATASETS)
    lo, hi = wilson_interval(k, np.full(N_DATASETS, n))
    coverage = np.mean((lo <= p) & (p <= hi))
    assert COVERAGE_BAND[0] <= coverage <= COVERAGE_BAND[1]


def test_rho_equals_scipy_spearmanr_with_ties():
    rng = np.random.default_rng(2)
    x = np.round(rng.normal(size=300), 1)  # many ties
    y = np.round(x + rng.normal(size=300), 1)
    result = spearman_ci(x, y, np.arange(300) // 3, rng, n_boot=50)
    expected = stats.spearmanr(x, y)
    assert result.rho == pytest.approx(expected.statistic, abs=1e-12)
    assert result.p_value == pytest.approx(expected.pvalue)
    assert result.lo <= result.rho <= result.hi
    assert result.n == 300 and result.n_clusters == 100


def test_weighted_spearman_equals_spearman_of_the_expanded_resample():
    rng = np.random.default_rng(3)
    x, y = np.round(rng.normal(size=80), 1), rng.normal(size=80)
    w = rng.integers(0, 4, size=80).astype(float)
    _, xc = np.unique(x, return_inverse=True)
    _, yc = np.unique(y, return_inverse=True)
    got = weighted_spearman(xc, xc.max() + 1, yc, yc.max() + 1, w)
    expected = stats.spearmanr(np.repeat(x, w.astype(int)), np.repeat(y, w.astype(int))).statistic
    assert got == pytest.approx(expected, abs=1e-12)


def test_spearman_drops_non_finite_rows_and_reports_degenerate_input():
    rng = np.random.default_rng(4)
    x = np.array([1.0, 2.0, np.nan, 4.0, 5.0])
    y = np.array([2.0, 1.0, 3.0, np.inf, 6.0])
    result = spearman_ci(x, y, np.arange(5), rng, n_boot=20)
    assert result.n == 3
    assert result.rho == pytest.approx(stats.spearmanr([1, 2, 5], [2, 1, 6]).statistic)
    flat = spearman_ci(np.ones(10), np.arange(10.0), np.arange(10), rng, n_boot=20)
    assert np.isnan(flat.rho) and np.isnan(flat.lo)


def test_spearman_ci_coverage_on_clustered_bivariate_normal_data():
    """Records of 5 steps share a random effect; the true ρ_s of a bivariate normal with
    correlation r is (6/π)·asin(r/2)."""
    rng = np.random.default_rng(5)
    r, n_records, per = 0.5, 60, 5
    true_rho = 6 / np.pi * np.arcsin(r / 2)
    cov = [[1, r], [r, 1]]
    hits = 0
    for _ in range(N_DATASETS):
        effect = np.repeat(rng.multivariate_normal([0, 0], cov, size=n_records), per, axis=0)
        noise = rng.multivariate_normal([0, 0], cov, size=n_records * per)
        xy = effect + noise  # still bivariate normal with correlation r, but clustered
        c = spearman_ci(xy[:, 0], xy[:, 1], np.repeat(np.arange(n_records), per), rng, n_boot=300)
        hits += c.lo <= true_rho <= c.hi
    assert COVERAGE_BAND[0] <= hits / N_DATASETS <= COVERAGE_BAND[1]


def test_binned_mean_ci_coverage_and_flags():
    """y ~ N(μ_bin, 1) with μ depending on the bin: each bin's interval should hold μ_bin ~95% of
    the time; bins with fewer than 10 points are the ones flagged."""
    rng = np.random.default_rng(6)
    edges = np.linspace(0, 3, 4)
    mu = np.array([0.5, 1.0, 2.0])
    covered = np.zeros(3)
    for _ in range(N_DATASETS):
        x = rng.uniform(0, 3, size=240)
        y = mu[bin_index(x, edges)] + rng.normal(size=240)
        b = binned_means(x, y, np.arange(240) // 4, edges, rng, n_boot=300)
        covered += (b.lo <= mu) & (mu <= b.hi)
    coverage = covered / N_DATASETS
    assert np.all((COVERAGE_BAND[0] <= coverage) & (coverage <= COVERAGE_BAND[1])), coverage


def test_binned_means_match_plain_means_and_count_clusters():
    rng = np.random.default_rng(7)
    x = np.array([0.1, 0.2, 0.3, 1.5, 2.9, 3.0])
    y = np.array([1.0, 2.0, 3.0, 10.0, 20.0, 40.0])
    b = binned_means(x, y, ["a", "a", "b", "b", "c", "c"], np.array([0.0, 1.0, 2.0, 3.0]), rng, n_boot=50)
    np.testing.assert_allclose(b.mean, [2.0, 10.0, 30.0])
    np.testing.assert_array_equal(b.n, [3, 1, 2])
    np.testing.assert_array_equal(b.n_clusters, [2, 1, 1])


def test_bin_edges_are_shared_equal_width_and_close_the_last_bin():
    edges = bin_edges([0.0, 1.0, 3.0, np.nan], 3)
    np.testing.assert_allclose(edges, [0, 1, 2, 3])
    np.testing.assert_array_equal(bin_index([0.0, 0.99, 1.0, 3.0], edges), [0, 0, 1, 2])


def test_cluster_counts_draw_as_many_clusters_as_there_are_in_every_chunk():
    rng = np.random.default_rng(8)
    chunks = list(cluster_counts(7, 25, rng, max_cells=21))  # 3 replicates per chunk
    counts = np.vstack(chunks)
    assert len(chunks) == 9 and counts.shape == (25, 7)
    assert np.all(counts.sum(axis=1) == 7)


def test_pareto_front_keeps_only_undominated_points():
    cost = [10, 12, 12, 20, 8]
    value = [0.5, 0.7, 0.6, 0.7, 0.2]
    np.testing.assert_array_equal(pareto_front(cost, value), [True, True, False, False, True])
