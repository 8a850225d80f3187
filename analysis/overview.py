"""The first look at a run, one row per domain: how uncertain token CoT is, which setting does best
against it, the best entropy threshold and how answer-level loss grows with entropy.

Built from tables :func:`latentcot.analysis.compute_tables` already made (nothing is estimated
twice); the demo prints these rows for every built-in model, so that the question the toolkit
exists for (does entropy predict what sampling loses, and must τ differ by domain?) is answered
on one screen.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from .answer_loss import probed_steps
from .compare import mcnemar_p
from .render import _interval, format_value

UNCERTAIN_NATS = 0.3  # a step above this entropy counts as uncertain (a real fork, not rounding noise)
COLUMNS = [
    "domain",
    "token_accuracy",
    "uncertain_steps",  # share of token-CoT steps with H > UNCERTAIN_NATS
    "best_setting",  # highest accuracy among the other settings (methods, thresholds, ablations)
    "best_accuracy",
    "diff",  # its paired accuracy difference to token CoT
    "p_value",  # exact McNemar
    "best_tau",
    "tau_lo",  # bootstrap interval of the best τ
    "tau_hi",
    "tau_accuracy",
    "p_changed",  # answer-level probe: P(the answer changes when a token step becomes latent)
    "slope",  # P(change) per nat, with its cluster-bootstrap interval
    "slope_lo",
    "slope_hi",
    "uncertain_probes",  # probed token steps above UNCERTAIN_NATS
    "delta_uncertain",  # their mean change in correctness, latent branch minus the record (> 0: sampling lost)
    "gained",  # probes there where only the latent branch is right
    "lost",  # probes there where only the sampled record is right
    "delta_p",  # exact sign test of gained vs lost (McNemar's; probes of one record are not independent)
]
DISPLAY = ["domain", "token_accuracy", "uncertain_steps", "best_setting", "best_accuracy", "diff", "p_value"]


def _most_accurate(table: pd.DataFrame, domain: str, exclude: str | None = None) -> pd.Series | None:
    """The row of ``domain`` with the highest accuracy (the first of ties), leaving out method ``exclude``."""
    rows = table[table["domain"] == domain] if not table.empty else table
    if exclude is not None and not rows.empty:
        rows = rows[rows["method"] != exclude]
    return None if rows.empty else rows.sort_values("accuracy", ascending=False, kind="stable").iloc[0]


def overview(samples: pd.DataFrame, steps: pd.DataFrame, tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per domain with COLUMNS (missing where the run lacks the settings or measurements)."""
    rows, probed = [], probed_steps(samples, steps)
    for domain in sorted(samples["domain"].unique()):
        token = samples[(samples["domain"] == domain) & (samples["gate"] == "token")]
        row: dict = {"domain": domain, "token_accuracy": token["correct"].mean() if len(token) else np.nan}
        entropy = steps.loc[(steps["domain"] == domain) & steps["setting_id"].isin(token["setting_id"]), "entropy"]
        row["uncertain_steps"] = float((entropy > UNCERTAIN_NATS).mean()) if len(entropy) else np.nan
        best = _most_accurate(tables["method_comparison"], domain, exclude="token")
        if best is not None:
            row |= {
                "best_setting": best["setting_id"],
                "best_accuracy": best["accuracy"],
                "diff": best["diff"],
                "p_value": best["p_value"],
            }
        tau = _most_accurate(tables["best_threshold"], domain)
        if tau is not None:
            row |= {
                "best_tau": tau["best_threshold"],
                "tau_lo": tau["threshold_lo"],
                "tau_hi": tau["threshold_hi"],
                "tau_accuracy": tau["accuracy"],
            }
        trend = tables["answer_loss_trend"]
        trend = trend[trend["domain"] == domain] if not trend.empty else trend
        if not trend.empty:
            first = trend.iloc[0]
            row |= {k: first[k] for k in ("p_changed", "slope", "slope_lo", "slope_hi")}
            uncertain = probed[(probed["domain"] == domain) & (probed["entropy"] > UNCERTAIN_NATS)]
            gained, lost = int((uncertain["delta_correct"] > 0).sum()), int((uncertain["delta_correct"] < 0).sum())
            row |= {
                "uncertain_probes": len(uncertain),
                "delta_uncertain": uncertain["delta_correct"].mean(),
                "gained": gained,
                "lost": lost,
                "delta_p": mcnemar_p(gained, lost),
            }
        rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)


def _with_interval(values: pd.Series, los: pd.Series, his: pd.Series) -> list[str]:
    """``value [lo, hi]`` per row, ``–`` where the value is missing."""
    return ["–" if pd.isna(v) else f"{format_value(v)} {_interval(lo, hi)}" for v, lo, hi in zip(values, los, his)]


def overview_display(frame: pd.DataFrame) -> pd.DataFrame:
    """The reader's columns, intervals joined: ``best τ [lo, hi]`` and ``slope [lo, hi]``."""
    shown = frame[[c for c in ["model", *DISPLAY] if c in frame.columns]].copy()
    shown["best τ [CI]"] = _with_interval(frame["best_tau"], frame["tau_lo"], frame["tau_hi"])
    shown["P(change)"] = frame["p_changed"]
    shown["slope/nat [CI]"] = _with_interval(frame["slope"], frame["slope_lo"], frame["slope_hi"])
    cells = zip(frame["delta_uncertain"], frame["uncertain_probes"], frame["delta_p"])
    shown["Δcorrect at H>0.3 (n, p)"] = [
        "–" if pd.isna(d) else f"{d:+.3g} ({int(n)}, {format_value(p)})" for d, n, p in cells
    ]
    return shown
