"""Answer-level information loss vs entropy, from ``--measure rollout`` (latentcot.rollout).

At each probed token step a branch fed the latent instead of the sampled token and decoded on to an
answer. ``rollout_changed`` says whether that answer differs from the record's; ``rollout_correct``
whether it is right. Here, per domain: P(answer changes) and the change in correctness (branch minus
record) per entropy bin, with cluster-bootstrap intervals over records; and the trend — Spearman's ρ
and the least-squares slope of P(change) per nat of entropy, each with its interval. The hypothesis
predicts a positive slope, steeper in domains where sampling discards information that matters.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .info_loss import record_codes
from .stats import AnalysisOptions, bin_edges, binned_means, cluster_weights, percentile_interval, spearman_ci

COLUMNS = ("rollout_changed", "rollout_correct")


def probed_steps(samples: pd.DataFrame, steps: pd.DataFrame) -> pd.DataFrame:
    """The probed steps, with the record's own correctness and the bootstrap cluster (the record)."""
    if not set(COLUMNS) <= set(steps.columns):
        return steps.iloc[0:0]
    probed = steps.assign(cluster=record_codes(steps))
    probed = probed[probed["rollout_changed"].notna() & (probed["mode"] == "token")]
    keys = ["task_spec", "setting_id", "example_id"]
    correct = samples[keys + ["correct"]].rename(columns={"correct": "record_correct"})
    probed = probed.merge(correct, on=keys, how="left")
    return probed.assign(delta_correct=probed["rollout_correct"] - probed["record_correct"].astype(float))


def answer_loss_bins(
    samples: pd.DataFrame, steps: pd.DataFrame, options: AnalysisOptions = AnalysisOptions(), rng=None
) -> pd.DataFrame:
    """Per domain and entropy bin: probed steps, P(answer changes) with its interval, mean change in
    correctness with its interval; ``enough`` is False below ``options.min_points`` steps."""
    rng = rng if rng is not None else options.rng()
    probed = probed_steps(samples, steps)
    columns = ["domain", "bin_left", "bin_right", "entropy", "n", "n_records", "p_changed", "lo", "hi"]
    columns += ["delta_correct", "delta_lo", "delta_hi", "enough"]
    if probed.empty:
        return pd.DataFrame(columns=columns)
    edges = bin_edges(probed["entropy"], max(2, options.entropy_bins // 2))
    parts = []
    for domain, group in probed.groupby("domain", sort=True, observed=True):
        x, codes = group["entropy"].to_numpy(), group["cluster"].to_numpy()
        changed = binned_means(x, group["rollout_changed"], codes, edges, rng, options.n_boot, options.confidence)
        delta = binned_means(x, group["delta_correct"], codes, edges, rng, options.n_boot, options.confidence)
        frame = pd.DataFrame(
            {
                "domain": domain,
                "bin_left": changed.left,
                "bin_right": changed.right,
                "entropy": changed.centre,
                "n": changed.n,
                "n_records": changed.n_clusters,
                "p_changed": changed.mean,
                "lo": changed.lo,
                "hi": changed.hi,
                "delta_correct": delta.mean,
                "delta_lo": delta.lo,
                "delta_hi": delta.hi,
                "enough": changed.n >= options.min_points,
            }
        )
        parts.append(frame[changed.n > 0])
    return pd.concat(parts, ignore_index=True)


def answer_loss_trend(
    samples: pd.DataFrame, steps: pd.DataFrame, options: AnalysisOptions = AnalysisOptions(), rng=None
) -> pd.DataFrame:
    """Per domain: Spearman's ρ of (entropy, answer changed) and the least-squares slope of P(change) per
    nat, each with a cluster-bootstrap interval over records."""
    rng = rng if rng is not None else options.rng()
    probed = probed_steps(samples, steps)
    rows = []
    for domain, group in probed.groupby("domain", sort=True, observed=True):
        x = group["entropy"].to_numpy(float)
        y = group["rollout_changed"].to_numpy(float)
        codes = np.unique(group["cluster"].to_numpy(), return_inverse=True)[1].ravel()
        rho = spearman_ci(x, y, codes, rng, options.n_boot, options.confidence)
        slope, slope_lo, slope_hi = _slope_ci(x, y, codes, rng, options)
        rows.append(
            {
                "domain": domain,
                "n": len(group),
                "n_records": int(codes.max()) + 1 if len(codes) else 0,
                "p_changed": float(y.mean()) if len(y) else np.nan,
                "slope": slope,
                "slope_lo": slope_lo,
                "slope_hi": slope_hi,
                "rho": rho.rho,
                "lo": rho.lo,
                "hi": rho.hi,
                "enough": len(group) >= options.min_points,
            }
        )
    columns = ["domain", "n", "n_records", "p_changed", "slope", "slope_lo", "slope_hi", "rho", "lo", "hi", "enough"]
    return pd.DataFrame(rows, columns=columns)


def _slope_ci(x: np.ndarray, y: np.ndarray, codes: np.ndarray, rng, options: AnalysisOptions):
    """Least-squares slope of y on x, and its percentile cluster-bootstrap interval (weighted sums)."""

    def slope(w: np.ndarray) -> float:
        total = w.sum()
        if total <= 0:
            return np.nan
        mx, my = (w * x).sum() / total, (w * y).sum() / total
        var = (w * (x - mx) ** 2).sum()
        return float((w * (x - mx) * (y - my)).sum() / var) if var > 0 else np.nan

    if len(x) < 3 or np.ptp(x) == 0:
        return np.nan, np.nan, np.nan
    reps = np.array([slope(w) for w in cluster_weights(codes, options.n_boot, rng)])  # per-row weights
    lo, hi = percentile_interval(reps, options.confidence)
    return slope(np.ones_like(x)), float(lo), float(hi)
