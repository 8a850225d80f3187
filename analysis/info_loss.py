"""Step-level tables: how much information a step discards, against its entropy, per domain.

At a token step the engine keeps one token of the distribution p: ``1 − p(y)`` is the probability
mass thrown away, ``−log p(y)`` its surprisal, and (with ``--measure counterfactual``)
``kl_counterfactual`` is how much the next distribution would have changed had the latent been fed
instead. At a latent step the measured ``latent_token_cos`` / ``latent_norm`` say how far the fed
vector is from any token embedding. Each is related to the step's entropy H (nats) by binned means
and by Spearman's ρ, both with record-level cluster-bootstrap intervals (see ``analysis.stats``).

Note: ``1 − p`` and ``−log p`` are both decreasing functions of ``p_token``, so their rank
correlations with H are identical; the binned curves differ.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .load import KEY
from .stats import AnalysisOptions, bin_edges, binned_means, spearman_ci


@dataclass(frozen=True)
class StepMetric:
    name: str  # column-safe id used in tables
    label: str  # axis label
    mode: str  # the step mode it is defined at
    column: str  # the steps-frame column it needs
    values: Callable[[pd.Series], np.ndarray]  # column -> metric values


STEP_METRICS = (
    StepMetric("discarded", "discarded mass 1 − p(token)", "token", "p_token", lambda p: 1.0 - p.to_numpy(dtype=float)),
    StepMetric(
        "surprisal",
        "surprisal −log p(token) (nats)",
        "token",
        "p_token",
        lambda p: -np.log(np.clip(p.to_numpy(dtype=float), 1e-300, None)),
    ),
    StepMetric(
        "kl_counterfactual",
        "KL(latent fed ‖ token fed) (nats)",
        "token",
        "kl_counterfactual",
        lambda v: v.to_numpy(dtype=float),
    ),
    StepMetric(
        "latent_token_cos",
        "max cosine latent vs token embeddings",
        "latent",
        "latent_token_cos",
        lambda v: v.to_numpy(dtype=float),
    ),
    StepMetric(
        "latent_norm",
        "‖latent‖ / ‖nearest token embedding‖",
        "latent",
        "latent_norm",
        lambda v: v.to_numpy(dtype=float),
    ),
)
METRIC_LABELS = {m.name: m.label for m in STEP_METRICS}


def available_metrics(steps: pd.DataFrame) -> list[StepMetric]:
    """Metrics whose column exists and has at least one value at a step of the metric's mode."""
    found = []
    for metric in STEP_METRICS:
        if metric.column in steps.columns and not steps.empty:
            at_mode = steps.loc[steps["mode"] == metric.mode, metric.column]
            if pd.to_numeric(at_mode, errors="coerce").notna().any():
                found.append(metric)
    return found


def record_codes(steps: pd.DataFrame) -> np.ndarray:
    """One integer per record (the bootstrap's resampling unit)."""
    return steps.groupby(KEY, sort=False, observed=True).ngroup().to_numpy()


def entropy_edges(steps: pd.DataFrame, n_bins: int) -> np.ndarray:
    """Shared entropy bins over every non-marker step, so domains and metrics line up."""
    return bin_edges(steps.loc[steps["mode"] != "marker", "entropy"], n_bins)


def entropy_by_domain(steps: pd.DataFrame) -> pd.DataFrame:
    """Entropy (nats) distribution per domain and step mode (``all`` = token and latent steps)."""
    decoded = steps[steps["mode"] != "marker"]
    both = pd.concat([decoded, decoded.assign(mode="all")], ignore_index=True)
    table = (
        both.groupby(["domain", "mode"], observed=True)["entropy"].describe(percentiles=[0.1, 0.5, 0.9]).reset_index()
    )
    table = table.rename(columns={"count": "n", "10%": "q10", "50%": "median", "90%": "q90"})
    table["n"] = table["n"].astype(int)
    return table[["domain", "mode", "n", "mean", "std", "min", "q10", "median", "q90", "max"]]


def _metric_frames(steps: pd.DataFrame, metrics: list[StepMetric]):
    """(domain, metric, entropy, values, record codes) per domain and metric, finite rows only."""
    codes = record_codes(steps)
    for domain, rows in steps.groupby("domain", sort=True, observed=True).indices.items():
        part = steps.iloc[rows]
        for metric in metrics:
            at_mode = (part["mode"] == metric.mode).to_numpy()
            sub = part[at_mode]
            y = metric.values(pd.to_numeric(sub[metric.column], errors="coerce"))
            x = sub["entropy"].to_numpy(dtype=float)
            keep = np.isfinite(x) & np.isfinite(y)
            yield domain, metric, x[keep], y[keep], codes[rows][at_mode][keep]


def info_loss_bins(
    steps: pd.DataFrame, options: AnalysisOptions = AnalysisOptions(), rng: np.random.Generator | None = None
) -> pd.DataFrame:
    """Mean of each available metric per (non-empty) entropy bin and domain, with a bootstrap
    interval; ``enough`` is False for bins with fewer than ``options.min_points`` steps."""
    rng = rng if rng is not None else options.rng()
    edges = entropy_edges(steps, options.entropy_bins)
    parts = []
    for domain, metric, x, y, codes in _metric_frames(steps, available_metrics(steps)):
        b = binned_means(x, y, codes, edges, rng, options.n_boot, options.confidence)
        parts.append(
            pd.DataFrame(
                {
                    "domain": domain,
                    "metric": metric.name,
                    "mode": metric.mode,
                    "bin_left": b.left,
                    "bin_right": b.right,
                    "entropy": b.centre,
                    "n": b.n,
                    "n_records": b.n_clusters,
                    "mean": b.mean,
                    "lo": b.lo,
                    "hi": b.hi,
                    "enough": b.n >= options.min_points,
                }
            )[b.n > 0]
        )  # empty bins carry nothing
    columns = [
        "domain",
        "metric",
        "mode",
        "bin_left",
        "bin_right",
        "entropy",
        "n",
        "n_records",
        "mean",
        "lo",
        "hi",
        "enough",
    ]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)


def info_loss_correlations(
    steps: pd.DataFrame, options: AnalysisOptions = AnalysisOptions(), rng: np.random.Generator | None = None
) -> pd.DataFrame:
    """Spearman's ρ between entropy and each available metric, per domain, with a cluster-bootstrap
    interval. ``discarded`` and ``surprisal`` share one computation (their ranks are identical)."""
    rng = rng if rng is not None else options.rng()
    rows, shared = [], {}
    for domain, metric, x, y, codes in _metric_frames(steps, available_metrics(steps)):
        key = (domain, metric.column, metric.mode)
        if key not in shared:
            shared[key] = spearman_ci(x, y, codes, rng, options.n_boot, options.confidence)
        c = shared[key]
        rows.append(
            {
                "domain": domain,
                "metric": metric.name,
                "mode": metric.mode,
                "n": c.n,
                "n_records": c.n_clusters,
                "rho": c.rho,
                "lo": c.lo,
                "hi": c.hi,
                "p_value": c.p_value,
                "enough": c.n >= options.min_points,
            }
        )
    columns = ["domain", "metric", "mode", "n", "n_records", "rho", "lo", "hi", "p_value", "enough"]
    return pd.DataFrame(rows, columns=columns)
