"""Figures of the analysis tables: pure functions table -> ``matplotlib.figure.Figure``.

Figures are built as bare ``Figure`` objects on the Agg canvas, never registered with pyplot, so
no interactive backend is touched and nothing is left open; the house style is applied inside
``house_style()`` only (no global rcParams changes). Points from fewer than ``min_points``
observations (``enough`` False in the tables) are drawn hollow, without an interval and
unconnected, and a note under the figure says so.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import matplotlib as mpl
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .info_loss import METRIC_LABELS

GATE_COLOURS = {"token": "#444444", "latent": "#d55e00", "fixed": "#cc79a7", "entropy": "#0072b2"}
HOLLOW_NOTE = "hollow markers: fewer than {m} observations (shown, not estimated)"


@contextmanager
def house_style() -> Iterator[None]:
    with (
        sns.axes_style("whitegrid"),
        sns.plotting_context("notebook", font_scale=0.85),
        mpl.rc_context(
            {
                "axes.spines.top": False,
                "axes.spines.right": False,
                "legend.frameon": False,
                "svg.fonttype": "none",
                "savefig.bbox": "tight",
            }
        ),
    ):
        yield


def palette(names: Sequence[str]) -> dict[str, tuple]:
    """Stable colours: the same name gets the same colour in every figure of a report."""
    names = sorted(set(names))
    return dict(zip(names, sns.color_palette("colorblind", max(len(names), 1))))


def new_figure(n_rows: int, n_cols: int, width: float = 4.2, height: float = 3.2, **kw) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(width * n_cols, height * n_rows + 0.4), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(n_rows, n_cols, squeeze=False, **kw)


def figure_note(fig: Figure, text: str) -> None:
    fig.supxlabel(text, fontsize="small", color="0.35", x=0.01, ha="left")


def plot_series(ax: Axes, x, y, lo, hi, enough, colour, label: str, band: bool = True) -> None:
    """One curve: reliable points as a line with an interval band, the others hollow and unlinked."""
    x, y, lo, hi = (np.asarray(v, dtype=float) for v in (x, y, lo, hi))
    ok = np.asarray(enough, dtype=bool)
    if ok.any():
        ax.plot(x[ok], y[ok], "-o", color=colour, label=label, markersize=4, linewidth=1.6)
        if band:
            ax.fill_between(x[ok], lo[ok], hi[ok], color=colour, alpha=0.18, linewidth=0)
    if (~ok).any():
        ax.scatter(
            x[~ok],
            y[~ok],
            facecolors="none",
            edgecolors=[colour],
            s=28,
            linewidths=1.2,
            label=None if ok.any() else label,
            zorder=3,
        )


def entropy_distribution_figure(steps: pd.DataFrame) -> Figure:
    """Histogram (density) of step entropy per domain: all steps, and token steps only."""
    decoded = steps[steps["mode"] != "marker"]
    colours = palette(decoded["domain"])
    with house_style():
        fig, axes = new_figure(1, 2, sharex=True)
        for ax, (title, part) in zip(
            axes[0], [("all steps", decoded), ("token steps", decoded[decoded["mode"] == "token"])]
        ):
            if not part.empty:
                sns.histplot(
                    data=part,
                    x="entropy",
                    hue="domain",
                    palette=colours,
                    stat="density",
                    common_norm=False,
                    element="step",
                    fill=False,
                    bins=30,
                    ax=ax,
                )
            ax.set(title=title, xlabel="entropy H (nats)", ylabel="density")
    return fig


def info_loss_figure(bins: pd.DataFrame, min_points: int = 10, max_columns: int = 3) -> Figure:
    """One panel per information-loss metric (wrapped after ``max_columns``; spare panels hidden):
    binned mean vs entropy, one curve per domain."""
    metrics = list(dict.fromkeys(bins["metric"])) or ["discarded"]
    colours = palette(bins["domain"])
    n_cols = min(len(metrics), max_columns)
    with house_style():
        fig, axes = new_figure(math.ceil(len(metrics) / n_cols), n_cols)
        for ax in axes.ravel()[len(metrics) :]:
            ax.set_visible(False)
        for ax, metric in zip(axes.ravel(), metrics):
            for domain, part in bins[bins["metric"] == metric].groupby("domain", observed=True):
                plot_series(
                    ax, part["entropy"], part["mean"], part["lo"], part["hi"], part["enough"], colours[domain], domain
                )
            ax.set(
                xlabel="entropy H (nats)",
                ylabel=METRIC_LABELS.get(metric, metric),
                title=METRIC_LABELS.get(metric, metric).split(" (")[0],
            )
            if ax.get_legend_handles_labels()[0]:
                ax.legend(title="domain", fontsize="small")
        figure_note(fig, HOLLOW_NOTE.format(m=min_points) + "; bands: cluster-bootstrap CI over records")
    return fig


def answer_loss_figure(bins: pd.DataFrame, min_points: int = 10) -> Figure:
    """Answer-level loss vs entropy: P(answer changes) when the latent replaces the sampled token, and the
    change in correctness, per entropy bin, one curve per domain."""
    colours = palette(bins["domain"])
    with house_style():
        fig, axes = new_figure(1, 2)
        panels = (
            ("p_changed", "lo", "hi", "P(answer changes)"),
            ("delta_correct", "delta_lo", "delta_hi", "Δ correct"),
        )
        for ax, (column, lo, hi, label) in zip(axes.ravel(), panels):
            for domain, part in bins.groupby("domain", observed=True):
                plot_series(
                    ax, part["entropy"], part[column], part[lo], part[hi], part["enough"], colours[domain], domain
                )
            ax.set(xlabel="entropy H at the step (nats)", ylabel=label, title=label + " (latent instead of token)")
            if ax.get_legend_handles_labels()[0]:
                ax.legend(title="domain", fontsize="small")
        figure_note(fig, HOLLOW_NOTE.format(m=min_points) + "; bands: cluster-bootstrap CI over records")
    return fig


def _threshold_grid(table: pd.DataFrame) -> tuple[list[str], list[str]]:
    return sorted(table["unit"].unique()), sorted(table["domain"].unique())


def _baselines(ax: Axes, settings: pd.DataFrame, domain: str, latent_colours: dict) -> None:
    """Token-only (dashed grey) and latent-only (dotted, in the colour of the curve with the same
    latent mode) accuracies of a domain as horizontal lines; latent-only ones only for the latent
    modes shown in the panel."""
    rows = settings[(settings["domain"] == domain) & settings["gate"].isin(["token", "latent"])]
    for _, row in rows.iterrows():
        if row["gate"] == "latent" and row["latent"] not in latent_colours:
            continue
        colour = GATE_COLOURS["token"] if row["gate"] == "token" else latent_colours[row["latent"]]
        ax.axhline(
            row["accuracy"],
            color=colour,
            linestyle="--" if row["gate"] == "token" else ":",
            linewidth=1.3,
            label=f"{row['setting_id']} (baseline)",
        )


def threshold_figure(
    table: pd.DataFrame, settings: pd.DataFrame | None = None, value: str = "accuracy", min_points: int = 10
) -> Figure:
    """Accuracy (or latent fraction, ``value="latent_fraction"``) vs τ: rows = τ unit, columns =
    domain, one curve per setting family; accuracy panels carry the baselines as horizontal lines."""
    lo, hi, ylabel = ("lo", "hi", "accuracy") if value == "accuracy" else ("latent_lo", "latent_hi", "latent fraction")
    units, domains = _threshold_grid(table) if not table.empty else (["nats"], ["-"])
    colours = palette(table["family"]) if not table.empty else {}
    with house_style():
        fig, axes = new_figure(len(units), len(domains), sharey=True)
        for r, unit in enumerate(units):
            for c, domain in enumerate(domains):
                ax = axes[r, c]
                part = table[(table["unit"] == unit) & (table["domain"] == domain)]
                for family, series in part.groupby("family", observed=True):
                    plot_series(
                        ax,
                        series["threshold"],
                        series[value],
                        series[lo],
                        series[hi],
                        series["enough"],
                        colours[family],
                        family,
                    )
                if value == "accuracy" and settings is not None:
                    first_family = part.drop_duplicates("latent")
                    _baselines(
                        ax,
                        settings,
                        domain,
                        {lat: colours[fam] for lat, fam in zip(first_family["latent"], first_family["family"])},
                    )
                ax.set(xlabel=f"threshold τ ({unit})", ylabel=ylabel, title=domain)
                ax.set_ylim(-0.03, 1.03)
                if ax.get_legend_handles_labels()[0]:
                    ax.legend(fontsize="x-small")
        figure_note(
            fig,
            HOLLOW_NOTE.format(m=min_points)
            + ("; bands: Wilson CI" if value == "accuracy" else "; bands: normal CI of the mean"),
        )
    return fig


def pareto_figure(pareto: pd.DataFrame, min_points: int = 10) -> Figure:
    """Accuracy vs mean forward passes per setting, one panel per domain, Pareto front joined."""
    domains = sorted(pareto["domain"].unique()) or ["-"]
    with house_style():
        fig, axes = new_figure(1, len(domains), sharey=True)
        for ax, domain in zip(axes[0], domains):
            part = pareto[pareto["domain"] == domain]
            for gate, rows in part.groupby("gate", observed=True):
                colour = GATE_COLOURS.get(gate, "#009e73")
                ok = rows["enough"].to_numpy(dtype=bool)
                if ok.any():
                    r = rows[ok]
                    ax.errorbar(
                        r["forward_passes"],
                        r["accuracy"],
                        yerr=[r["accuracy"] - r["lo"], r["hi"] - r["accuracy"]],
                        fmt="o",
                        color=colour,
                        label=gate,
                        markersize=5,
                        capsize=2,
                        linewidth=1,
                    )
                if (~ok).any():
                    r = rows[~ok]
                    ax.scatter(
                        r["forward_passes"],
                        r["accuracy"],
                        facecolors="none",
                        edgecolors=[colour],
                        s=30,
                        label=None if ok.any() else gate,
                        zorder=3,
                    )
            front = part[part["pareto"]].sort_values("forward_passes")
            if len(front):
                ax.plot(
                    front["forward_passes"],
                    front["accuracy"],
                    "-",
                    color="0.2",
                    linewidth=1,
                    drawstyle="steps-post",
                    label="Pareto front",
                )
            ax.set(xlabel="mean forward passes per example", ylabel="accuracy", title=domain)
            ax.set_ylim(-0.03, 1.03)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize="x-small")
        figure_note(fig, HOLLOW_NOTE.format(m=min_points) + "; bars: Wilson CI")
    return fig


def accuracy_entropy_figure(table: pd.DataFrame, settings: Sequence[str] | None = None, min_points: int = 10) -> Figure:
    """Accuracy per bin of the example's mean entropy, one panel per domain, one curve per setting
    (``settings`` picks which; default all)."""
    chosen = list(settings) if settings is not None else sorted(table["setting_id"].unique())
    table = table[table["setting_id"].isin(chosen)]
    domains = sorted(table["domain"].unique()) or ["-"]
    colours = palette(chosen)
    with house_style():
        fig, axes = new_figure(1, len(domains), sharey=True)
        for ax, domain in zip(axes[0], domains):
            for sid, part in table[table["domain"] == domain].groupby("setting_id", observed=True):
                plot_series(
                    ax,
                    part["entropy"],
                    part["accuracy"],
                    part["lo"],
                    part["hi"],
                    part["enough"],
                    colours[sid],
                    sid,
                    band=False,
                )
            ax.set(xlabel="example mean entropy (nats)", ylabel="accuracy", title=domain)
            ax.set_ylim(-0.03, 1.03)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize="x-small")
        figure_note(fig, HOLLOW_NOTE.format(m=min_points))
    return fig


def threshold_in_nats(threshold, unit: str, vocab_size: int | None = None) -> float | None:
    """τ on the nats axis of a trace; None where it cannot be placed (normalized units need the
    vocabulary size, which the manifest's model identity records)."""
    if threshold is None or (isinstance(threshold, float) and math.isnan(threshold)):
        return None
    if unit == "normalized":
        return float(threshold) * math.log(vocab_size) if vocab_size and vocab_size > 1 else None
    return {"nats": float(threshold), "bits": float(threshold) * math.log(2)}.get(unit)


def step_trace_figure(traces: Sequence[tuple[str, pd.DataFrame, float | None]]) -> Figure:
    """Entropy over decoding steps for a few records (title, their steps rows, τ in nats or None):
    token steps as dots, latent steps as orange diamonds, marker steps as grey ticks, τ dashed."""
    with house_style():
        fig, axes = new_figure(max(len(traces), 1), 1, width=8.5, height=2.2, sharex=False)
        for ax, (title, rows, tau) in zip(axes[:, 0], traces):
            ax.plot(rows["step"], rows["entropy"], color="0.6", linewidth=1, zorder=1)
            for mode, marker, colour in [
                ("token", "o", GATE_COLOURS["token"]),
                ("latent", "D", GATE_COLOURS["latent"]),
                ("marker", "|", "0.5"),
            ]:
                sel = rows[rows["mode"] == mode]
                if len(sel):
                    ax.scatter(
                        sel["step"], sel["entropy"], marker=marker, color=colour, s=22, label=f"{mode} step", zorder=2
                    )
            if tau is not None:
                ax.axhline(tau, color=GATE_COLOURS["entropy"], linestyle="--", linewidth=1.2, label="τ")
            ax.set(xlabel="step", ylabel="entropy H (nats)", title=title)
            ax.title.set_fontsize("small")
            ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig
