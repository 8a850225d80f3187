"""Record-level tables: accuracy per setting, against the entropy threshold τ, against forward
passes, and against per-example mean entropy, per domain; the best τ per domain and whether
choosing τ per domain beats one global τ.

Accuracy intervals are Wilson intervals. Settings of the entropy gate are grouped into *families*:
everything but τ equal (unit, latent mode, latent temperature, caps, sampling, …), because
thresholds in nats, bits or normalized units are not comparable with each other. A setting with a
per-domain threshold map (``threshold_map``) is not a point of any τ curve: its records already
sit at their own domain's τ, so it appears in the settings and Pareto tables only.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .stats import (
    AnalysisOptions,
    bin_edges,
    bin_index,
    cluster_counts,
    pareto_front,
    percentile_interval,
    wilson_interval,
    z_value,
)

GATE_ORDER = {"token": 0, "latent": 1, "fixed": 2, "entropy": 3}
EXAMPLE = ["task_spec", "example_id"]  # one example across settings
# setting keys that, with τ, define an entropy-gate setting; families differ in at least one
FAMILY_KEYS = (
    "unit",
    "latent",
    "latent_temperature",
    "latent_top_k",
    "max_consecutive",
    "max_latent",
    "temperature",
    "top_p",
    "top_k",
    "max_new_tokens",
    "markers",
)


def _text(value) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return "-" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)


def _has_map(samples: pd.DataFrame) -> pd.Series:
    if "threshold_map" not in samples.columns:
        return pd.Series(False, index=samples.index)
    return samples["threshold_map"].map(lambda m: isinstance(m, dict) and bool(m))


def threshold_rows(samples: pd.DataFrame) -> pd.DataFrame:
    """Entropy-gate records with one global τ, with a ``family`` label (``soft, nats`` plus any
    other setting key that varies between the run's entropy settings, e.g. ``, latent_temperature=0.5``)."""
    rows = samples[(samples["gate"] == "entropy") & ~_has_map(samples) & samples["threshold"].notna()]
    rows = rows.copy()
    if rows.empty:
        rows["family"] = pd.Series(dtype=str)
        return rows
    keys = [k for k in FAMILY_KEYS if k in rows.columns]
    text = rows[keys].map(_text)
    varying = [k for k in keys if k not in ("unit", "latent") and text[k].nunique() > 1]
    label = text["latent"] + ", " + text["unit"]
    for k in varying:
        label = label + f", {k}=" + text[k]
    rows["family"] = label
    rows["threshold"] = rows["threshold"].astype(float)
    return rows


def accuracy_columns(table: pd.DataFrame, options: AnalysisOptions) -> pd.DataFrame:
    """Add ``accuracy``, its Wilson interval (``lo``, ``hi``) and ``enough`` to a table with ``correct`` and ``n``."""
    table["accuracy"] = table["correct"] / table["n"]
    table["lo"], table["hi"] = wilson_interval(table["correct"], table["n"], options.confidence)
    table["enough"] = table["n"] >= options.min_points
    return table


def settings_table(samples: pd.DataFrame, options: AnalysisOptions = AnalysisOptions()) -> pd.DataFrame:
    """Accuracy (Wilson CI), latent fraction, forward passes and mean entropy per domain and setting."""
    table = (
        samples.groupby(["domain", "setting_id"], observed=True)
        .agg(
            gate=("gate", "first"),
            threshold=("threshold", "first"),
            unit=("unit", "first"),
            latent=("latent", "first"),
            n=("correct", "size"),
            correct=("correct", "sum"),
            latent_fraction=("latent_fraction", "mean"),
            forward_passes=("forward_passes", "mean"),
            mean_entropy=("mean_entropy", "mean"),
        )
        .reset_index()
    )
    table = accuracy_columns(table, options)
    table["latent"] = table["latent"].where(table["gate"] != "token")  # a token gate feeds no latent
    table["order"] = table["gate"].map(GATE_ORDER).fillna(len(GATE_ORDER))
    table = table.sort_values(["domain", "order", "latent", "threshold", "setting_id"], na_position="first")
    return table.drop(columns="order").reset_index(drop=True)


def accuracy_vs_threshold(samples: pd.DataFrame, options: AnalysisOptions = AnalysisOptions()) -> pd.DataFrame:
    """Accuracy (Wilson CI) and latent fraction (normal CI) per domain, family and τ."""
    rows = threshold_rows(samples)
    columns = [
        "domain",
        "family",
        "unit",
        "latent",
        "threshold",
        "setting_id",
        "n",
        "correct",
        "accuracy",
        "lo",
        "hi",
        "latent_fraction",
        "latent_lo",
        "latent_hi",
        "forward_passes",
        "enough",
    ]
    if rows.empty:
        return pd.DataFrame(columns=columns)
    table = (
        rows.groupby(["domain", "family", "threshold"], observed=True)
        .agg(
            unit=("unit", "first"),
            latent=("latent", "first"),
            setting_id=("setting_id", "first"),
            n=("correct", "size"),
            correct=("correct", "sum"),
            latent_fraction=("latent_fraction", "mean"),
            latent_sd=("latent_fraction", "std"),
            forward_passes=("forward_passes", "mean"),
        )
        .reset_index()
    )
    table = accuracy_columns(table, options)
    half = z_value(options.confidence) * table["latent_sd"].fillna(0) / np.sqrt(table["n"])
    table["latent_lo"] = (table["latent_fraction"] - half).clip(0, 1)
    table["latent_hi"] = (table["latent_fraction"] + half).clip(0, 1)
    return table[columns].sort_values(["domain", "family", "threshold"]).reset_index(drop=True)


def correctness_matrix(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(examples × τ) 0/1 matrix of one domain and family, and the sorted τ values. Only examples
    recorded at every τ are kept, so every τ is compared on the same examples."""
    wide = rows.pivot_table(index=EXAMPLE, columns="threshold", values="correct", aggfunc="mean")
    wide = wide.dropna().sort_index(axis=1)
    return wide.to_numpy(dtype=float), wide.columns.to_numpy(dtype=float)


def best_thresholds(
    samples: pd.DataFrame, options: AnalysisOptions = AnalysisOptions(), rng: np.random.Generator | None = None
) -> pd.DataFrame:
    """Best τ per domain and family (highest accuracy; ties go to the smallest τ) with the Wilson
    interval of its accuracy, and how stable the choice is: a bootstrap over examples (each
    replicate resamples examples, keeping their results at every τ together) gives a percentile
    interval of the arg-max τ and the share of replicates that pick the same τ. ``n_tied`` counts
    the τ sharing the best accuracy: above 1, the choice among them is the tie rule, not the data."""
    rng = rng if rng is not None else options.rng()
    out = []
    for (domain, family), rows in threshold_rows(samples).groupby(["domain", "family"], observed=True):
        matrix, taus = correctness_matrix(rows)
        if len(taus) < 2 or len(matrix) == 0:
            continue
        accuracy = matrix.mean(axis=0)
        best = int(np.argmax(accuracy))
        n = len(matrix)
        chosen = np.concatenate(
            [
                taus[np.argmax(np.einsum("ij,jk->ik", counts, matrix), axis=1)]
                for counts in cluster_counts(n, options.n_boot, rng)
            ]
        )
        alpha = (1 - options.confidence) / 2
        lo, hi = wilson_interval(matrix[:, best].sum(), n, options.confidence)
        out.append(
            {
                "domain": domain,
                "family": family,
                "best_threshold": taus[best],
                "accuracy": accuracy[best],
                "lo": float(lo),
                "hi": float(hi),
                "n": n,
                "threshold_lo": np.quantile(chosen, alpha, method="lower"),
                "threshold_hi": np.quantile(chosen, 1 - alpha, method="higher"),
                "stability": float(np.mean(chosen == taus[best])),
                "n_thresholds": len(taus),
                "n_tied": int(np.sum(accuracy == accuracy[best])),
                "enough": n >= options.min_points,
            }
        )
    columns = [
        "domain",
        "family",
        "best_threshold",
        "accuracy",
        "lo",
        "hi",
        "n",
        "threshold_lo",
        "threshold_hi",
        "stability",
        "n_thresholds",
        "n_tied",
        "enough",
    ]
    return pd.DataFrame(out, columns=columns)


def _folds(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    fold = np.empty(n, dtype=int)
    fold[rng.permutation(n)] = np.arange(n) % k
    return fold


def _choose(matrices: list[np.ndarray], masks: list[np.ndarray]) -> tuple[int, list[int]]:
    """Index of the best global τ (pooled over domains) and of each domain's best τ."""
    pooled = sum(m[mask].sum(axis=0) for m, mask in zip(matrices, masks))
    return int(np.argmax(pooled)), [int(np.argmax(m[mask].mean(axis=0))) for m, mask in zip(matrices, masks)]


def per_domain_vs_global(
    samples: pd.DataFrame, options: AnalysisOptions = AnalysisOptions(), rng: np.random.Generator | None = None
) -> pd.DataFrame:
    """Does choosing τ per domain beat one global τ? Per family, on the τ values every domain has:

    * in-sample: accuracy of each strategy when τ is chosen and scored on the same examples (the
      per-domain choice can never lose here, so this overstates its benefit);
    * held-out: examples are split into ``options.folds`` folds within each domain; τ is chosen
      on the other folds and scored on each fold in turn. ``gain`` = held-out per-domain minus
      held-out global accuracy, with a paired bootstrap interval over examples (given the folds).
    """
    rng = rng if rng is not None else options.rng()
    out = []
    for family, rows in threshold_rows(samples).groupby("family", observed=True):
        groups = dict(list(rows.groupby("domain", observed=True)))
        if len(groups) < 2:
            continue
        common = sorted(set.intersection(*(set(g["threshold"]) for g in groups.values())))
        mats = {d: correctness_matrix(g[g["threshold"].isin(common)]) for d, g in groups.items()}
        domains = sorted(d for d, (m, t) in mats.items() if len(t) == len(common) and len(m) >= options.folds)
        if len(common) < 2 or len(domains) < 2:
            continue
        matrices = [mats[d][0] for d in domains]
        taus = np.asarray(common, dtype=float)
        every = [np.ones(len(m), dtype=bool) for m in matrices]
        g_all, d_all = _choose(matrices, every)
        n_total = sum(len(m) for m in matrices)
        folds = [_folds(len(m), options.folds, rng) for m in matrices]
        held_global, held_domain = [], []
        for k in range(options.folds):
            g, per = _choose(matrices, [f != k for f in folds])
            for m, f, t in zip(matrices, folds, per):
                held_global.append(m[f == k, g])
                held_domain.append(m[f == k, t])
        diff = np.concatenate(held_domain) - np.concatenate(held_global)
        boot = diff[rng.integers(0, len(diff), size=(options.n_boot, len(diff)))].mean(axis=1)
        lo, hi = percentile_interval(boot, options.confidence)
        out.append(
            {
                "family": family,
                "n_domains": len(domains),
                "n_examples": n_total,
                "n_thresholds": len(taus),
                "global_threshold": taus[g_all],
                "per_domain_threshold": "; ".join(f"{d}={_text(taus[t])}" for d, t in zip(domains, d_all)),
                "in_sample_global": sum(m[:, g_all].sum() for m in matrices) / n_total,
                "in_sample_per_domain": sum(m[:, t].sum() for m, t in zip(matrices, d_all)) / n_total,
                "heldout_global": float(np.concatenate(held_global).mean()),
                "heldout_per_domain": float(np.concatenate(held_domain).mean()),
                "gain": float(diff.mean()),
                "gain_lo": float(lo),
                "gain_hi": float(hi),
                "folds": options.folds,
                "enough": n_total >= options.min_points,
            }
        )
    columns = [
        "family",
        "n_domains",
        "n_examples",
        "n_thresholds",
        "global_threshold",
        "per_domain_threshold",
        "in_sample_global",
        "in_sample_per_domain",
        "heldout_global",
        "heldout_per_domain",
        "gain",
        "gain_lo",
        "gain_hi",
        "folds",
        "enough",
    ]
    return pd.DataFrame(out, columns=columns)


def accuracy_vs_entropy(samples: pd.DataFrame, options: AnalysisOptions = AnalysisOptions()) -> pd.DataFrame:
    """Accuracy (Wilson CI) per bin of the example's mean step entropy, per domain and setting
    (bins shared by all domains and settings)."""
    columns = [
        "domain",
        "setting_id",
        "gate",
        "bin_left",
        "bin_right",
        "entropy",
        "n",
        "correct",
        "accuracy",
        "lo",
        "hi",
        "enough",
    ]
    rows = samples[np.isfinite(samples["mean_entropy"].to_numpy(dtype=float))]
    if rows.empty:
        return pd.DataFrame(columns=columns)
    edges = bin_edges(rows["mean_entropy"], options.accuracy_bins)
    rows = rows.assign(bin=bin_index(rows["mean_entropy"], edges))
    table = (
        rows.groupby(["domain", "setting_id", "bin"], observed=True)
        .agg(gate=("gate", "first"), n=("correct", "size"), correct=("correct", "sum"))
        .reset_index()
    )
    table["bin_left"], table["bin_right"] = edges[table["bin"]], edges[table["bin"] + 1]
    table["entropy"] = (table["bin_left"] + table["bin_right"]) / 2
    return accuracy_columns(table, options)[columns]


def pareto_table(settings: pd.DataFrame) -> pd.DataFrame:
    """Settings per domain with ``pareto`` = no other setting of the domain is at least as accurate
    with no more forward passes (and strictly better in one)."""
    parts = []
    for _, part in settings.groupby("domain", observed=True):
        parts.append(part.assign(pareto=pareto_front(part["forward_passes"], part["accuracy"])))
    columns = [
        "domain",
        "setting_id",
        "gate",
        "threshold",
        "latent",
        "forward_passes",
        "accuracy",
        "lo",
        "hi",
        "n",
        "enough",
        "pareto",
    ]
    if not parts:
        return pd.DataFrame(columns=columns)
    return pd.concat(parts, ignore_index=True)[columns].sort_values(["domain", "forward_passes"]).reset_index(drop=True)
