"""``write_report(run_dir)``: every table and figure of a run, written to ``run_dir/report/``.

Everything is computed and rendered in memory first; files are written only once all of it
succeeded, so a bad run directory (``InputError``) or a failing figure leaves nothing behind.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from latentcot.errors import InputError

from .compare import method_comparison_figure
from .load import Run, load_run
from .loops import loops_figure
from .overview import overview
from .plots import (
    accuracy_entropy_figure,
    answer_loss_figure,
    entropy_distribution_figure,
    house_style,
    info_loss_figure,
    pareto_figure,
    step_trace_figure,
    threshold_figure,
    threshold_in_nats,
)
from .render import display_frame, html_page, html_table, markdown_table, text_table, trace_html
from .stats import AnalysisOptions
from .tables import TABLE_TITLES, AnalysisTables, compute_tables

FIGURE_TITLES = {
    "method_comparison": "Methods: accuracy vs forward passes",
    "entropy_distribution": "Step entropy by domain",
    "info_loss_vs_entropy": "Information loss vs entropy",
    "answer_loss_vs_entropy": "Answer-level loss vs entropy (--measure rollout)",
    "accuracy_vs_threshold": "Accuracy vs τ (baselines as horizontal lines)",
    "latent_fraction_vs_threshold": "Latent fraction vs τ",
    "pareto": "Accuracy vs forward passes",
    "accuracy_vs_entropy": "Accuracy vs per-example mean entropy",
    "step_traces": "Example step traces",
    "loops_per_token": "Loops per token by domain (looped models)",
}
METHODS = (
    "Accuracy intervals are Wilson score intervals. Information-loss curves and Spearman ρ use a "
    "cluster bootstrap over records (steps of one sequence are not independent). Bins or points "
    "with fewer than {m} observations are flagged (enough = no) and drawn hollow. The best τ of a "
    "domain is the arg-max of accuracy (ties: the smallest τ); its interval is the Wilson interval of "
    "that accuracy, and the spread of the arg-max over a bootstrap of examples is given as a τ "
    "interval and as stability (share of replicates choosing the same τ). Per-domain vs global τ: "
    "the in-sample comparison favours per-domain τ by construction (selection bias), so τ is also "
    "chosen on the other folds of a {k}-fold split of each domain's examples and scored on the "
    "held-out fold; gain = held-out per-domain "
    "minus held-out global accuracy. Methods are compared per domain with the token-CoT setting on "
    "the examples both decoded: diff is the paired accuracy difference, b counts examples only the "
    "method got right, c those only token CoT got right, and p is the exact McNemar test (two-sided "
    "binomial test of b among the b + c discordant pairs at 1/2)."
)
LEADING = "method_comparison"  # table and figure shown before everything else, when present
COMPARISON_NOTE = (
    "diff: accuracy minus token CoT's on the examples both decoded (n_paired); b: only this setting "
    "right, c: only token CoT right; p_value: exact McNemar; tokens_emitted and forward_passes per example"
)


@dataclass(frozen=True)
class ReportResult:
    out_dir: Path
    summary: Path  # summary.md
    html: Path  # report.html (self-contained)
    tables: Mapping[str, Path]  # table name -> CSV
    figures: Mapping[str, tuple[Path, Path]]  # figure name -> (PNG, SVG)
    skipped: tuple[str, ...]  # what the run's contents left out, one line each
    headline: str  # fixed-width text of the key numbers, for a terminal
    overview: pd.DataFrame  # one row per domain (see analysis.overview), also written as overview.csv


def pick_traces(samples: pd.DataFrame, n: int = 3) -> pd.DataFrame:
    """A few records worth looking at: entropy-gate records whose steps are closest to half
    latent first, covering distinct (domain, correct) pairs before repeating one."""
    ranked = samples.assign(_other_gate=samples["gate"] != "entropy", _balance=(samples["latent_fraction"] - 0.5).abs())
    ranked = ranked.sort_values(["_other_gate", "_balance", "domain", "setting_id", "example_id"])
    chosen, seen = [], set()
    for index, domain, correct in zip(ranked.index, ranked["domain"], ranked["correct"]):
        if (domain, correct) not in seen:
            seen.add((domain, correct))
            chosen.append(index)
    taken = set(chosen)
    chosen += [i for i in ranked.index[: 2 * n + len(taken)] if i not in taken]
    return samples.loc[chosen[:n]]


def _record_steps(steps: pd.DataFrame, record: pd.Series) -> pd.DataFrame:
    match = (
        (steps["task_spec"] == record["task_spec"])
        & (steps["setting_id"] == record["setting_id"])
        & (steps["example_id"] == record["example_id"])
    )
    return steps[match].sort_values("step")


def _trace_title(record: pd.Series) -> str:
    verdict = "correct" if record["correct"] else "wrong"
    return f"{record['domain']} · {record['setting_id']} · {record['example_id']} · {verdict}"


def _accuracy_entropy_settings(tables: AnalysisTables, limit: int = 5) -> list[str]:
    """Baselines and each domain's best-τ setting, then others, at most ``limit`` curves."""
    settings = tables["settings"]
    best = tables["best_threshold"].merge(
        tables["accuracy_vs_threshold"],
        left_on=["domain", "family", "best_threshold"],
        right_on=["domain", "family", "threshold"],
    )["setting_id"]
    ordered = [*settings.loc[settings["gate"].isin(["token", "latent"]), "setting_id"], *best, *settings["setting_id"]]
    return list(dict.fromkeys(ordered))[:limit]


def build_figures(run: Run, tables: AnalysisTables, options: AnalysisOptions) -> tuple[dict[str, Figure], list[str]]:
    """Every figure the run's contents allow, and a line for each one left out."""
    figures, skipped, m = {}, [], options.min_points
    if tables[LEADING].empty:
        skipped.append("figure method comparison: fewer than 2 methods")
    else:
        figures[LEADING] = method_comparison_figure(tables[LEADING], m)
    figures["entropy_distribution"] = entropy_distribution_figure(run.steps)
    if tables["info_loss_bins"].empty:
        skipped.append("figure info loss vs entropy: no token steps")
    else:
        figures["info_loss_vs_entropy"] = info_loss_figure(tables["info_loss_bins"], m)
    if not tables["answer_loss_bins"].empty:
        figures["answer_loss_vs_entropy"] = answer_loss_figure(tables["answer_loss_bins"], m)
    if tables["accuracy_vs_threshold"].empty:
        skipped.append("figures accuracy / latent fraction vs τ: no entropy-gate settings with a single threshold")
    else:
        figures["accuracy_vs_threshold"] = threshold_figure(
            tables["accuracy_vs_threshold"], tables["settings"], "accuracy", m
        )
        figures["latent_fraction_vs_threshold"] = threshold_figure(
            tables["accuracy_vs_threshold"], None, "latent_fraction", m
        )
    figures["pareto"] = pareto_figure(tables["pareto"], m)
    figures["accuracy_vs_entropy"] = accuracy_entropy_figure(
        tables["accuracy_vs_entropy"], _accuracy_entropy_settings(tables), m
    )
    vocab_size = run.manifest.get("model", {}).get("vocab_size")
    traces = [
        (_trace_title(r), _record_steps(run.steps, r), threshold_in_nats(r.get("threshold"), r.get("unit"), vocab_size))
        for _, r in pick_traces(run.samples).iterrows()
    ]
    figures["step_traces"] = step_trace_figure(traces)
    if not tables["loops_per_token"].empty:
        figures["loops_per_token"] = loops_figure(tables["loops_per_token"])
    return figures, skipped


def render_figure(fig: Figure) -> tuple[bytes, bytes]:
    png, svg = io.BytesIO(), io.BytesIO()
    with house_style():
        fig.savefig(png, format="png", dpi=110)
        fig.savefig(svg, format="svg")
    return png.getvalue(), svg.getvalue()


def headline_text(tables: AnalysisTables) -> str:
    text = text_table(display_frame(tables["settings"], "settings"))
    if not tables[LEADING].empty:  # first, as in the report
        text = "method comparison\n" + text_table(display_frame(tables[LEADING], LEADING)) + "\n\n" + text
    if not tables["best_threshold"].empty:
        text += "\n\nbest τ per domain\n" + text_table(display_frame(tables["best_threshold"], "best_threshold"))
    if not tables["answer_loss_trend"].empty:
        trend = display_frame(tables["answer_loss_trend"], "answer_loss_trend")
        text += "\n\nanswer-level loss vs entropy (slope: P(answer changes) per nat)\n" + text_table(trend)
    return text


def _run_facts(run: Run) -> list[str]:
    config = run.manifest.get("config", {})
    model = run.manifest.get("model", {}).get("model") or config.get("model", {}).get("model", "?")
    s = run.samples
    return [
        f"run: {run.path}",
        f"model: {model}",
        f"records: {len(s)} · settings: {s['setting_id'].nunique()} · "
        f"domains: {', '.join(sorted(s['domain'].unique()))}",
        f"tasks: {', '.join(sorted(s['task_spec'].unique()))}",
        f"measurements: {', '.join(config.get('measure') or []) or 'none'}",
    ]


SUMMARY_TABLES = [
    "settings",
    "best_threshold",
    "per_domain_vs_global",
    "info_loss_correlation",
    "answer_loss_trend",
    "accuracy_vs_threshold",
    "entropy_by_domain",
    "loops_summary",
]


def summary_markdown(
    run: Run, tables: AnalysisTables, skipped: list[str], options: AnalysisOptions, files: list[str]
) -> str:
    parts = [f"# latentcot report: {run.path.name}", ""]
    if not tables[LEADING].empty:
        parts += [f"## {TABLE_TITLES[LEADING]}", "", markdown_table(display_frame(tables[LEADING], LEADING)), ""]
        parts += [COMPARISON_NOTE + ".", ""]
        if f"{LEADING}.png" in files:
            parts += [f"![{FIGURE_TITLES[LEADING]}]({LEADING}.png)", ""]
    parts += ["## Run", "", *[f"- {f}" for f in _run_facts(run)], ""]
    for name in SUMMARY_TABLES:
        if not tables[name].empty:
            parts += [f"## {TABLE_TITLES[name]}", "", markdown_table(display_frame(tables[name], name)), ""]
    parts += ["## Methods", "", METHODS.format(m=options.min_points, k=options.folds), ""]
    parts += ["## Skipped", "", *([f"- {s}" for s in skipped] or ["- nothing"]), ""]
    parts += ["## Files", "", *[f"- `{f}`" for f in files], ""]
    return "\n".join(parts)


def token_decoder(manifest: Mapping) -> Callable[[int], str] | None:
    """Token text for the step traces, from the run's own tokenizer when this machine has it
    (local files only: a report never downloads); None otherwise, and traces show token ids."""
    source = (manifest.get("model") or {}).get("source")
    if not source:
        return None
    try:
        from transformers import AutoTokenizer

        import latentcot.zoo.looped  # noqa: F401  registers the zoo's model types: their configs then load quietly

        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    except Exception:  # any failure only means the traces fall back to token ids
        return None
    return lambda token_id: tokenizer.decode([int(token_id)])


def _figure_html(name: str, png: bytes) -> str:
    data = base64.b64encode(png).decode("ascii")
    title = html.escape(FIGURE_TITLES[name])
    return f'<figure id="fig-{html.escape(name)}"><img alt="{title}" src="data:image/png;base64,{data}"></figure>'


def report_html(
    run: Run,
    tables: AnalysisTables,
    skipped: list[str],
    options: AnalysisOptions,
    pngs: Mapping[str, bytes],
    token_text: Callable[[int], str] | None = None,
) -> str:
    facts = "<ul>" + "".join(f"<li>{html.escape(f)}</li>" for f in _run_facts(run)) + "</ul>"
    sections = []
    if not tables[LEADING].empty:  # what the run compares comes before how it was run
        note = f'<p class="note">{html.escape(COMPARISON_NOTE)}</p>'
        sections.append((TABLE_TITLES[LEADING], html_table(display_frame(tables[LEADING], LEADING)) + note))
        if LEADING in pngs:
            sections.append((FIGURE_TITLES[LEADING], _figure_html(LEADING, pngs[LEADING])))
    sections.append(("Run", facts))
    key_tables = SUMMARY_TABLES[:4]  # the headline numbers first, then figures, then the rest
    for name in key_tables:
        if not tables[name].empty:
            sections.append((TABLE_TITLES[name], html_table(display_frame(tables[name], name))))
    for name, title in FIGURE_TITLES.items():
        if name in pngs and name != LEADING:
            sections.append((title, _figure_html(name, pngs[name])))
    for name, title in TABLE_TITLES.items():
        if name not in key_tables and name != LEADING and not tables[name].empty:
            sections.append((title, html_table(display_frame(tables[name], name))))
    steps = run.steps[run.steps["mode"] != "marker"]
    top = float(steps["entropy"].max()) if len(steps) else 1.0
    traces = "".join(
        trace_html(_trace_title(r), r["completion"], _record_steps(run.steps, r), top, token_text)
        for _, r in pick_traces(run.samples).iterrows()
    )
    sections.append(
        (
            "Example traces, step by step",
            '<p class="note">cell colour: entropy (white 0 → red '
            f"{top:.3g} nats); hover a cell for its numbers</p>" + traces,
        )
    )
    sections.append(("Methods", f"<p>{html.escape(METHODS.format(m=options.min_points, k=options.folds))}</p>"))
    sections.append(
        ("Skipped", "<ul>" + "".join(f"<li>{html.escape(s)}</li>" for s in skipped or ["nothing"]) + "</ul>")
    )
    return html_page(f"latentcot report: {run.path.name}", sections)


def write_report(
    run_dir: str | Path, out_dir: str | Path | None = None, options: AnalysisOptions = AnalysisOptions()
) -> ReportResult:
    """Analyse a run directory and write ``summary.md``, ``report.html``, one CSV per table and a
    PNG + SVG per figure to ``out_dir`` (default ``run_dir/report``). Raises ``InputError`` (and
    writes nothing) when ``run_dir`` is not a run or holds no records."""
    run = load_run(run_dir)
    if run.samples.empty:
        raise InputError(f"{run.path} has no records (samples.jsonl is empty)")
    out = Path(out_dir) if out_dir is not None else run.path / "report"
    tables = compute_tables(run.samples, run.steps, options)
    figures, figure_skips = build_figures(run, tables, options)
    rendered = {name: render_figure(fig) for name, fig in figures.items()}
    skipped = [*tables.skipped, *figure_skips]
    first_look = overview(run.samples, run.steps, tables)
    csvs = {name: frame.to_csv(index=False) for name, frame in tables.items()}
    csvs["overview"] = first_look.to_csv(index=False)
    files = [f"{n}.csv" for n in csvs] + [f"{n}.{ext}" for n in rendered for ext in ("png", "svg")]
    summary = summary_markdown(run, tables, skipped, options, ["report.html", *files])
    page = report_html(
        run, tables, skipped, options, {n: png for n, (png, _) in rendered.items()}, token_decoder(run.manifest)
    )

    out.mkdir(parents=True, exist_ok=True)
    table_paths = {}
    for name, text in csvs.items():
        table_paths[name] = out / f"{name}.csv"
        table_paths[name].write_text(text, encoding="utf-8")
    figure_paths = {}
    for name, (png, svg) in rendered.items():
        figure_paths[name] = (out / f"{name}.png", out / f"{name}.svg")
        figure_paths[name][0].write_bytes(png)
        figure_paths[name][1].write_bytes(svg)
    (out / "summary.md").write_text(summary, encoding="utf-8")
    (out / "report.html").write_text(page, encoding="utf-8")
    return ReportResult(
        out,
        out / "summary.md",
        out / "report.html",
        table_paths,
        figure_paths,
        tuple(skipped),
        headline_text(tables),
        first_look,
    )
