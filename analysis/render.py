"""Tables and step traces as text: fixed-width (terminal), Markdown and HTML. Pure string
functions; every value that reaches HTML goes through ``html.escape``."""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

# which columns a reader sees, per table (the CSV files keep every column); "ci" joins lo/hi
DISPLAY = {
    "method_comparison": [
        "domain",
        "method",
        "setting_id",
        "n",
        "accuracy",
        "ci",
        "n_paired",
        "diff",
        "b",
        "c",
        "p_value",
        "tokens_emitted",
        "forward_passes",
        "latent_fraction",
        "enough",
    ],
    "settings": ["domain", "setting_id", "n", "accuracy", "ci", "latent_fraction", "forward_passes", "mean_entropy"],
    "entropy_by_domain": ["domain", "mode", "n", "mean", "q10", "median", "q90"],
    "info_loss_correlation": ["domain", "metric", "mode", "n", "n_records", "rho", "ci", "enough"],
    "info_loss_bins": ["domain", "metric", "entropy", "n", "mean", "ci", "enough"],
    "answer_loss_trend": ["domain", "n", "n_records", "p_changed", "slope", "slope_ci", "rho", "ci", "enough"],
    "answer_loss_bins": ["domain", "entropy", "n", "p_changed", "ci", "delta_correct", "delta_ci", "enough"],
    "accuracy_vs_threshold": [
        "domain",
        "family",
        "threshold",
        "n",
        "accuracy",
        "ci",
        "latent_fraction",
        "forward_passes",
        "enough",
    ],
    "best_threshold": [
        "domain",
        "family",
        "best_threshold",
        "accuracy",
        "ci",
        "n",
        "threshold_ci",
        "stability",
        "n_tied",
        "n_thresholds",
        "enough",
    ],
    "per_domain_vs_global": [
        "family",
        "n_examples",
        "global_threshold",
        "per_domain_threshold",
        "in_sample_global",
        "in_sample_per_domain",
        "heldout_global",
        "heldout_per_domain",
        "gain",
        "gain_ci",
    ],
    "accuracy_vs_entropy": ["domain", "setting_id", "entropy", "n", "accuracy", "ci", "enough"],
    "pareto": ["domain", "setting_id", "forward_passes", "accuracy", "ci", "n", "pareto"],
}


def format_value(value) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (float, np.floating)):
        return f"{value:.0f}" if float(value).is_integer() and abs(value) >= 10 else f"{value:.3g}"
    return str(value)


def _interval(lo, hi) -> str:
    return f"[{format_value(lo)}, {format_value(hi)}]"


def display_frame(table: pd.DataFrame, name: str) -> pd.DataFrame:
    """The reader's view of a table: chosen columns, intervals joined into ``[lo, hi]`` strings."""
    shown = table.copy()
    pairs = {
        "ci": ("lo", "hi"),
        "threshold_ci": ("threshold_lo", "threshold_hi"),
        "gain_ci": ("gain_lo", "gain_hi"),
        "slope_ci": ("slope_lo", "slope_hi"),
        "delta_ci": ("delta_lo", "delta_hi"),
    }
    for column, (lo, hi) in pairs.items():
        if lo in shown.columns:
            shown[column] = [_interval(a, b) for a, b in zip(shown[lo], shown[hi])]
    columns = [c for c in DISPLAY.get(name, list(table.columns)) if c in shown.columns]
    return shown[columns]


def _cells(frame: pd.DataFrame) -> list[list[str]]:
    return [[format_value(v) for v in row] for row in frame.itertuples(index=False, name=None)]


def text_table(frame: pd.DataFrame) -> str:
    """Fixed-width columns for a terminal; numbers right-aligned."""
    header, rows = [str(c) for c in frame.columns], _cells(frame)
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]
    numeric = [
        pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c]) for c in frame.columns
    ]

    def line(cells):
        return "  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric)).rstrip()

    return "\n".join([line(header), *map(line, rows)])


def markdown_table(frame: pd.DataFrame) -> str:
    def line(cells):
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return "\n".join(
        [line([str(c) for c in frame.columns]), line(["---"] * len(frame.columns)), *map(line, _cells(frame))]
    )


def html_table(frame: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    enough = list(frame["enough"]) if "enough" in frame.columns else [True] * len(frame)
    few = ' class="few"'  # rows from too few observations are greyed
    body = "".join(
        f"<tr{'' if ok else few}>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
        for row, ok in zip(_cells(frame), enough)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def entropy_colour(entropy: float, top: float) -> str:
    """White (H = 0) to red (H = top) background, so high-entropy steps stand out."""
    if entropy is None or not np.isfinite(entropy):
        return "#eeeeee"
    share = min(max(entropy / top, 0.0), 1.0) if top > 0 else 0.0
    g = int(round(255 - 155 * share))
    return f"rgb(255,{g},{g})"


def trace_html(
    title: str, completion: str, steps: pd.DataFrame, top_entropy: float, token_text: Callable[[int], str] | None = None
) -> str:
    """One record's steps as cells: background = entropy, label = the token's text (its id when no
    tokenizer is at hand) or the mode; latent steps show their logit-lens top tokens when measured."""
    has_lens = "lens_top" in steps.columns
    cells = []
    for row in steps.itertuples(index=False):
        mode, entropy = str(row.mode), float(row.entropy) if row.entropy is not None else float("nan")
        tip = f"step {row.step} · {mode} · H={entropy:.3g} nats · p={format_value(row.p_token)} · id {row.token_id}"
        if mode == "token":
            label = repr(token_text(row.token_id))[1:-1] if token_text else f"#{row.token_id}"
        else:
            label = "⟨latent⟩" if mode == "latent" else "⟨marker⟩"
        lens = getattr(row, "lens_top", None) if has_lens else None
        lens_html = ""
        if mode == "latent" and isinstance(lens, (list, tuple)) and lens:
            lens_html = (
                '<span class="lens">'
                + " ".join(f"<code>{html.escape(repr(str(t))[1:-1])}</code>" for t in lens)
                + "</span>"
            )
        colour = entropy_colour(entropy, top_entropy)
        cells.append(
            f'<span class="step {html.escape(mode)}" style="background:{colour}" '
            f'title="{html.escape(tip)}">{html.escape(label)}{lens_html}</span>'
        )
    return (
        f'<div class="trace"><h4>{html.escape(title)}</h4>'
        f'<pre class="completion">{html.escape(completion or "")}</pre>'
        f'<div class="steps">{"".join(cells)}</div></div>'
    )


CSS = """
body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:13px;margin:.5em 0 1.5em}
th,td{border-bottom:1px solid #ddd;padding:3px 8px;text-align:left}
tr.few td{color:#999} figure{margin:1em 0} figure img{max-width:100%}
.steps{display:flex;flex-wrap:wrap;gap:2px}
.step{font:12px monospace;padding:2px 4px;border-radius:3px;border:1px solid #ccc}
.step.latent{border:1px solid #d55e00} .lens{display:block;font-size:10px;color:#555}
pre.completion{white-space:pre-wrap;background:#f7f7f7;padding:.5em;font-size:12px}
.note{color:#666;font-size:13px}
"""


def html_page(title: str, sections: Sequence[tuple[str, str]]) -> str:
    """A self-contained page: (heading, already-escaped HTML body) sections."""
    body = "".join(f"<section><h2>{html.escape(h)}</h2>{content}</section>" for h, content in sections)
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>\n"
    )
