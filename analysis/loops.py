"""Loops per token of looped models (the ``loops`` per-step array): how deep each step computed.

    from latentcot.analysis import load_run
    from latentcot.analysis.loops import loops_per_token, loops_summary, loops_figure
    run = load_run("runs/looped-kl")
    loops_per_token(run.steps)      # distribution: domain, setting_id, loops, tokens, fraction
    loops_summary(run.steps)        # per (domain, setting_id): tokens, mean, median, max
    loops_figure(loops_per_token(run.steps)).savefig("loops.png")

Runs of models that do not loop have no ``loops`` column; every function then returns an empty
table (and the figure says there is nothing to show).
"""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure

from .plots import house_style, new_figure, palette

GROUP = ["domain", "setting_id"]


def _with_loops(steps: pd.DataFrame) -> pd.DataFrame:
    if "loops" not in steps.columns:
        return steps.iloc[0:0].assign(loops=pd.Series(dtype=float))
    return steps[steps["loops"].notna()]


def loops_per_token(steps: pd.DataFrame) -> pd.DataFrame:
    """One row per (domain, setting_id, loops): how many steps used that many iterations, and their share."""
    rows = _with_loops(steps)
    counts = rows.groupby([*GROUP, "loops"]).size().rename("tokens").reset_index()
    counts["loops"] = counts["loops"].astype(int)
    counts["fraction"] = counts["tokens"] / counts.groupby(GROUP)["tokens"].transform("sum")
    return counts[[*GROUP, "loops", "tokens", "fraction"]]


def loops_summary(steps: pd.DataFrame) -> pd.DataFrame:
    """Per (domain, setting_id): steps counted and the mean, median and largest loop count."""
    rows = _with_loops(steps)
    summary = rows.groupby(GROUP)["loops"].agg(tokens="size", mean="mean", median="median", max="max")
    return summary.reset_index()


def loops_figure(table: pd.DataFrame) -> Figure:
    """Share of steps by loop count, one panel per setting, one bar colour per domain."""
    settings = list(dict.fromkeys(table["setting_id"])) or ["(no loops recorded)"]
    with house_style():
        fig, axes = new_figure(1, len(settings))
        colours = palette(table["domain"]) if len(table) else {}
        for ax, setting in zip(axes[0], settings):
            part = table[table["setting_id"] == setting]
            domains = list(dict.fromkeys(part["domain"]))
            width = 0.8 / max(len(domains), 1)
            for i, domain in enumerate(domains):
                rows = part[part["domain"] == domain]
                ax.bar(
                    rows["loops"] + (i - (len(domains) - 1) / 2) * width,
                    rows["fraction"],
                    width=width,
                    color=colours[domain],
                    label=domain,
                )
            ax.set_title(setting, fontsize=9)
            ax.set_xlabel("loops used for the step")
            ax.set_ylabel("share of steps")
            if domains:
                ax.legend(fontsize=7)
    return fig
