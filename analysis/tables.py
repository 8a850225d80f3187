"""Every analysis table of a run in one call, with a list of what could not be computed and why.

tables = compute_tables(run.samples, run.steps)
tables["accuracy_vs_threshold"], tables.skipped
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .accuracy import (
    accuracy_vs_entropy,
    accuracy_vs_threshold,
    best_thresholds,
    pareto_table,
    per_domain_vs_global,
    settings_table,
    threshold_rows,
)
from .answer_loss import answer_loss_bins, answer_loss_trend
from .compare import comparison_skips, method_comparison, methods_in
from .info_loss import available_metrics, entropy_by_domain, info_loss_bins, info_loss_correlations
from .loops import loops_per_token, loops_summary
from .stats import AnalysisOptions

TABLE_TITLES = {
    "method_comparison": "Method comparison (paired with token CoT)",
    "settings": "Accuracy per domain and setting",
    "entropy_by_domain": "Step entropy (nats) per domain",
    "info_loss_correlation": "Information loss vs entropy: Spearman ρ",
    "info_loss_bins": "Information loss vs entropy: binned means",
    "answer_loss_trend": "Answer-level loss vs entropy: trend per domain (--measure rollout)",
    "answer_loss_bins": "Answer-level loss vs entropy: P(answer changes) per bin",
    "accuracy_vs_threshold": "Accuracy and latent fraction vs τ",
    "best_threshold": "Best τ per domain",
    "per_domain_vs_global": "Per-domain τ vs one global τ",
    "accuracy_vs_entropy": "Accuracy vs per-example mean entropy",
    "pareto": "Accuracy vs forward passes (Pareto front)",
    "loops_summary": "Loops per token (looped models)",
    "loops_per_token": "Loops per token: distribution",
}


@dataclass(frozen=True)
class AnalysisTables(Mapping[str, pd.DataFrame]):
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    skipped: tuple[str, ...] = ()

    def __getitem__(self, name: str) -> pd.DataFrame:
        return self.tables[name]

    def __iter__(self):
        return iter(self.tables)

    def __len__(self) -> int:
        return len(self.tables)


def skipped_analyses(samples: pd.DataFrame, steps: pd.DataFrame) -> list[str]:
    """What a run's settings, domains and measurements leave out, one line each."""
    skipped = comparison_skips(samples)
    gates = set(samples["gate"].dropna())
    families = threshold_rows(samples)
    if families.empty:
        skipped.append("accuracy vs τ: no entropy-gate settings with a single threshold")
    else:
        per_family = families.groupby(["domain", "family"], observed=True)["threshold"].nunique()
        if (per_family < 2).all():
            skipped.append("best τ per domain: fewer than 2 thresholds per domain and family")
    domains = samples["domain"].nunique()
    if domains < 2:
        skipped.append("per-domain vs global τ: the run has one domain")
    elif not families.empty and families.groupby("family")["domain"].nunique().max() < 2:
        skipped.append("per-domain vs global τ: no threshold family covers 2 domains")
    if "token" not in gates:
        skipped.append("token-only baseline: no setting with gate token")
    if "latent" not in gates:
        skipped.append("latent-only baseline: no setting with gate latent")
    names = {m.name for m in available_metrics(steps)}
    if "discarded" not in names:
        skipped.append("information loss at token steps: the run has no token steps")
    if "kl_counterfactual" not in names:
        skipped.append("counterfactual KL: not measured (run with --measure counterfactual)")
    if "rollout_changed" not in steps.columns:
        skipped.append("answer-level loss vs entropy: not measured (run with --measure rollout)")
    if {"latent_token_cos", "latent_norm"}.isdisjoint(names):
        skipped.append(
            "latent-vector geometry and logit lens: not measured (needs latent steps and --measure counterfactual)"
        )
    return skipped


def compute_tables(
    samples: pd.DataFrame, steps: pd.DataFrame, options: AnalysisOptions = AnalysisOptions()
) -> AnalysisTables:
    """All tables of ``TABLE_TITLES`` (empty frames where a run lacks what one needs; the reason is
    in ``skipped``). One seeded generator feeds every bootstrap, in a fixed order."""
    rng: np.random.Generator = options.rng()
    settings = settings_table(samples, options)
    # one method leaves nothing to compare: the table stays empty and skipped says why
    compared = len(methods_in(samples)) >= 2
    tables = {
        "method_comparison": method_comparison(samples if compared else samples.iloc[0:0], options),
        "settings": settings,
        "entropy_by_domain": entropy_by_domain(steps),
        "info_loss_correlation": info_loss_correlations(steps, options, rng),
        "info_loss_bins": info_loss_bins(steps, options, rng),
        "answer_loss_trend": answer_loss_trend(samples, steps, options, rng),
        "answer_loss_bins": answer_loss_bins(samples, steps, options, rng),
        "accuracy_vs_threshold": accuracy_vs_threshold(samples, options),
        "best_threshold": best_thresholds(samples, options, rng),
        "per_domain_vs_global": per_domain_vs_global(samples, options, rng),
        "accuracy_vs_entropy": accuracy_vs_entropy(samples, options),
        "pareto": pareto_table(settings),
        "loops_summary": loops_summary(steps),
        "loops_per_token": loops_per_token(steps),
    }
    return AnalysisTables(tables, tuple(skipped_analyses(samples, steps)))
