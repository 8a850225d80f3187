"""Decoding methods side by side: accuracy, cost and a paired test against token chain of thought.

    from latentcot.analysis import load_run
    from latentcot.analysis.compare import method_comparison, method_comparison_figure
    run = load_run("runs/methods")
    table = method_comparison(run.samples)      # one row per (domain, setting)
    method_comparison_figure(table).savefig("methods.png")

Every method decodes the same examples, so a setting is compared with the domain's token-CoT
setting on the examples *both* decoded: ``diff`` is the paired accuracy difference, ``b`` counts
examples only the method got right, ``c`` those only token CoT got right, and ``p_value`` is
the exact McNemar test (concordant pairs carry no information about which is better).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy import stats

from .accuracy import accuracy_columns
from .plots import GATE_COLOURS, HOLLOW_NOTE, figure_note, house_style, new_figure, palette
from .stats import AnalysisOptions

EXAMPLE = ["task_spec", "example_id"]  # one example across settings
REFERENCE_METHOD = "token"
# (colour, marker) per named method: fixed, so a method looks the same in every report; the
# gate-era methods keep their gate's colour from the other figures. Unlisted methods get a
# palette colour and a circle.
METHOD_STYLES = {
    "token": (GATE_COLOURS["token"], "s"),
    "latent": (GATE_COLOURS["latent"], "D"),
    "coconut": (GATE_COLOURS["fixed"], "P"),
    "entropy": (GATE_COLOURS["entropy"], "o"),
    "soft-thinking": ("#009e73", "^"),
    "swir": ("#e69f00", "v"),
    "think-router": ("#56b4e9", "<"),
    "moi": ("#b8860b", ">"),
    "random-soft": ("#9467bd", "X"),
    "multiplex": ("#8c564b", "*"),
}
METHOD_ORDER = {name: i for i, name in enumerate(METHOD_STYLES)}
COLUMNS = [
    "domain",
    "method",
    "setting_id",
    "n",
    "correct",
    "accuracy",
    "lo",
    "hi",
    "baseline",
    "n_paired",
    "diff",
    "b",
    "c",
    "p_value",
    "tokens_emitted",
    "forward_passes",
    "latent_fraction",
    "enough",
]


def mcnemar_p(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value from the discordant pair counts: under H0 each discordant
    pair is equally likely to go either way, so b ~ Binomial(b + c, 1/2). 1.0 with no discordant
    pair (nothing speaks against H0)."""
    b, c = int(b), int(c)
    return 1.0 if b + c == 0 else float(stats.binomtest(b, b + c, 0.5).pvalue)


def methods_in(samples: pd.DataFrame) -> list[str]:
    names = samples["method"].dropna().unique() if "method" in samples.columns else []
    return sorted(names, key=lambda m: (METHOD_ORDER.get(m, len(METHOD_ORDER)), m))


def references(samples: pd.DataFrame) -> dict[str, str]:
    """The token-CoT setting each domain's methods are paired with. Where a domain has several
    token settings (say greedy and sampled), the one with the most records, then the first
    setting_id, so the choice does not depend on record order."""
    token = samples[samples["method"] == REFERENCE_METHOD]
    sizes = token.groupby(["domain", "setting_id"], observed=True).size().rename("n").reset_index()
    sizes = sizes.sort_values(["domain", "n", "setting_id"], ascending=[True, False, True])
    return dict(sizes.drop_duplicates("domain")[["domain", "setting_id"]].itertuples(index=False, name=None))


def paired_counts(samples: pd.DataFrame, reference: dict[str, str]) -> pd.DataFrame:
    """Per (domain, setting_id) other than the reference: examples shared with the domain's
    reference (``n_paired``) and the discordant counts ``b`` (only this setting right) and
    ``c`` (only the reference right). Examples one side lacks are left out, not counted wrong."""
    keys = ["domain", *EXAMPLE]
    is_reference = samples["setting_id"] == samples["domain"].map(reference)
    base = samples.loc[is_reference, [*keys, "correct"]].rename(columns={"correct": "reference_correct"})
    pairs = samples.loc[~is_reference & samples["domain"].isin(list(reference)), [*keys, "setting_id", "correct"]]
    pairs = pairs.merge(base, on=keys, how="inner")
    mine, theirs = pairs["correct"].astype(bool), pairs["reference_correct"].astype(bool)
    pairs = pairs.assign(b=mine & ~theirs, c=~mine & theirs)
    return (
        pairs.groupby(["domain", "setting_id"], observed=True)
        .agg(n_paired=("b", "size"), b=("b", "sum"), c=("c", "sum"))
        .reset_index()
    )


def method_comparison(samples: pd.DataFrame, options: AnalysisOptions = AnalysisOptions()) -> pd.DataFrame:
    """One row per (domain, setting): accuracy with its Wilson interval; the paired comparison
    with the domain's token-CoT setting (``baseline``): ``n_paired`` shared examples, ``diff`` =
    accuracy minus the baseline's on them = (b − c) / n_paired, ``b``, ``c`` and the exact
    McNemar ``p_value``; and the cost per example: ``tokens_emitted`` (markers excluded),
    ``forward_passes`` and ``latent_fraction``. The paired columns are empty on the baseline row
    itself, in domains without a token setting, and (but ``n_paired`` = 0) for a setting that
    shares no example with the baseline."""
    if samples.empty:
        return pd.DataFrame(columns=COLUMNS)
    table = (
        samples.groupby(["domain", "setting_id"], observed=True)
        .agg(
            method=("method", "first"),
            n=("correct", "size"),
            correct=("correct", "sum"),
            tokens_emitted=("tokens_emitted", "mean"),
            forward_passes=("forward_passes", "mean"),
            latent_fraction=("latent_fraction", "mean"),
        )
        .reset_index()
    )
    table = accuracy_columns(table, options)
    reference = references(samples)
    table["baseline"] = table["domain"].map(reference)
    table = table.merge(paired_counts(samples, reference), on=["domain", "setting_id"], how="left")
    compared = table["baseline"].notna() & (table["setting_id"] != table["baseline"])
    table["n_paired"] = table["n_paired"].where(~compared, table["n_paired"].fillna(0))
    for column in ("n_paired", "b", "c"):
        table[column] = table[column].astype("Int64")  # counts; missing where nothing was paired
    tested = compared & (table["n_paired"].fillna(0) > 0)
    table["diff"] = np.where(tested, (table["b"] - table["c"]).astype(float) / table["n_paired"].astype(float), np.nan)
    table["p_value"] = [mcnemar_p(b, c) if t else np.nan for b, c, t in zip(table["b"], table["c"], tested)]
    order = table["method"].map(lambda m: METHOD_ORDER.get(m, len(METHOD_ORDER)))
    table = table.assign(_order=order).sort_values(["domain", "_order", "method", "setting_id"])
    return table[COLUMNS].reset_index(drop=True)


def comparison_skips(samples: pd.DataFrame) -> list[str]:
    """Why the comparison is left out of a report, or which domains have no paired columns."""
    methods = methods_in(samples)
    if len(methods) < 2:
        return [f"method comparison: the run has one method ({', '.join(methods) or 'none'}); it needs 2 or more"]
    missing = sorted(set(samples["domain"]) - set(references(samples)))
    return [f"method comparison, {d}: no token setting to pair with (paired columns empty)" for d in missing]


def method_style(method: str, others: dict[str, tuple]) -> tuple[tuple | str, str]:
    return METHOD_STYLES.get(method, (others.get(method, "0.3"), "o"))


def method_comparison_figure(table: pd.DataFrame, min_points: int = 10) -> Figure:
    """Accuracy (Wilson CI bars) against mean forward passes per example, one point per setting,
    colour and marker per method, one panel per domain. Settings from fewer than ``min_points``
    examples are hollow and carry no bar."""
    domains = sorted(table["domain"].unique()) or ["-"]
    others = palette([m for m in table["method"].unique() if m not in METHOD_STYLES])
    with house_style():
        fig, axes = new_figure(1, len(domains), sharey=True)
        for ax, domain in zip(axes[0], domains):
            part = table[table["domain"] == domain]
            legend = {}  # method -> its first artist, so the legend follows the methods' order
            for method in methods_in(part):
                rows = part[part["method"] == method]
                colour, marker = method_style(method, others)
                ok = rows["enough"].to_numpy(dtype=bool)
                if ok.any():
                    r = rows[ok]
                    legend[method] = ax.errorbar(
                        r["forward_passes"],
                        r["accuracy"],
                        yerr=[r["accuracy"] - r["lo"], r["hi"] - r["accuracy"]],
                        fmt=marker,
                        color=colour,
                        label=method,
                        markersize=6,
                        capsize=2,
                        linewidth=1,
                    )
                if (~ok).any():
                    r = rows[~ok]
                    hollow = ax.scatter(
                        r["forward_passes"],
                        r["accuracy"],
                        marker=marker,
                        facecolors="none",
                        edgecolors=[colour],
                        s=36,
                        linewidths=1.2,
                        zorder=3,
                    )
                    legend.setdefault(method, hollow)
            ax.set(xlabel="mean forward passes per example", ylabel="accuracy", title=domain)
            ax.set_ylim(-0.03, 1.03)
            if legend:
                handles, labels = list(legend.values()), list(legend)
                ax.legend(handles, labels, title="method", fontsize="x-small", title_fontsize="small")
        figure_note(fig, HOLLOW_NOTE.format(m=min_points) + "; bars: Wilson CI")
    return fig
