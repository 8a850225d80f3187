"""analysis.report.write_report on constructed runs and on a real one."""

import base64
import html
import re
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest

from analysis_records import peaked_sweep, record, setting, write_run
from latentcot.analysis.report import FIGURE_TITLES, ReportResult, write_report
from latentcot.analysis.stats import AnalysisOptions
from latentcot.analysis.tables import TABLE_TITLES
from latentcot.errors import InputError

LOOPED_ONLY = {"loops_summary", "loops_per_token"}  # tables and figure of looped models; this run has none

FAST = AnalysisOptions(n_boot=100)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class PageParser(HTMLParser):
    """Collects embedded images, figure ids, tables and text; fails on unbalanced tags."""

    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self):
        super().__init__()
        self.images, self.figure_ids, self.tables, self.text, self.stack = [], [], 0, [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        if tag == "figure":
            self.figure_ids.append(attrs["id"])
        if tag == "table":
            self.tables += 1
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack.pop() == tag, f"unbalanced </{tag}>"

    def handle_data(self, data):
        self.text.append(data)


def parse(path):
    parser = PageParser()
    parser.feed(path.read_text(encoding="utf-8"))
    parser.close()
    assert parser.stack == []
    return parser


def measured_sweep() -> list[dict]:
    """Two domains, a τ grid, baselines, counterfactual arrays, logit-lens tokens and answer-level branches."""
    rng = np.random.default_rng(0)
    records = []
    for r in peaked_sweep({"arithmetic": 1.0, "logic": 2.0}, [0.5, 1.0, 1.5, 2.0], n_examples=15):
        mode, h = r["steps"]["mode"], r["steps"]["entropy"]
        latent = [m == "latent" for m in mode]
        probed = [not m and t % 2 == 0 for t, m in enumerate(latent)]  # rollout: every other token step
        r["steps"]["rollout_changed"] = [bool(rng.uniform(0, 3) < x) if p else None for p, x in zip(probed, h)]
        r["steps"]["rollout_correct"] = [bool(rng.uniform() < 0.5) if p else None for p in probed]
        r["steps"]["kl_counterfactual"] = [None if m else x * 0.4 + rng.normal() * 0.1 for m, x in zip(latent, h)]
        r["steps"]["latent_token_cos"] = [1 - x / 4 if m else None for m, x in zip(latent, h)]
        r["steps"]["latent_norm"] = [0.5 + x / 5 if m else None for m, x in zip(latent, h)]
        r["steps"]["lens_top"] = [["<b>", "7", " the", "&", "\n"] if m else None for m in latent]
        records.append(r)
    return records


@pytest.fixture(scope="module")
def full_report(tmp_path_factory) -> ReportResult:
    run = write_run(
        tmp_path_factory.mktemp("runs") / "sweep",
        measured_sweep(),
        {"config": {"measure": ["counterfactual", "rollout:every=2"], "model": {"model": "tiny"}}},
    )
    return write_report(run, options=FAST)


def test_report_writes_every_table_and_figure(full_report):
    out = full_report.out_dir
    assert out.name == "report" and full_report.summary == out / "summary.md"
    assert set(full_report.tables) == {*TABLE_TITLES, "overview"}  # overview.csv: the first look, one row per domain
    assert set(full_report.figures) == set(FIGURE_TITLES) - LOOPED_ONLY
    for name, path in full_report.tables.items():
        assert list(pd.read_csv(path).columns), name
    for png, svg in full_report.figures.values():
        assert png.read_bytes().startswith(PNG_MAGIC)
        assert b"<svg" in svg.read_bytes()[:2000]
    best = pd.read_csv(full_report.tables["best_threshold"]).set_index("domain")
    assert best.loc["logic", "best_threshold"] == 2.0
    assert full_report.skipped == ()


def test_report_html_parses_and_embeds_every_figure(full_report):
    page = parse(full_report.html)
    assert sorted(page.figure_ids) == sorted(f"fig-{name}" for name in set(FIGURE_TITLES) - LOOPED_ONLY)
    pngs = [src for src in page.images if src.startswith("data:image/png;base64,")]
    assert len(pngs) == len(page.images) == len(set(FIGURE_TITLES) - LOOPED_ONLY)
    embedded = {base64.b64decode(src.split(",", 1)[1]) for src in pngs}
    assert embedded == {png.read_bytes() for png, _ in full_report.figures.values()}
    assert page.tables == len(set(TABLE_TITLES) - LOOPED_ONLY)


def test_report_html_shows_logit_lens_tokens_escaped(full_report):
    page = full_report.html.read_text(encoding="utf-8")
    assert "<code>&lt;b&gt;</code>" in page and "<code>&amp;</code>" in page and "<code>\\n</code>" in page
    assert "<b>" not in page


def test_summary_lists_key_tables_and_skips(full_report):
    summary = full_report.summary.read_text(encoding="utf-8")
    for title in (
        "Accuracy per domain and setting",
        "Best τ per domain",
        "Per-domain τ vs one global τ",
        "Information loss vs entropy: Spearman ρ",
    ):
        assert f"## {title}" in summary
    assert "## Skipped\n\n- nothing" in summary
    assert "measurements: counterfactual, rollout:every=2" in summary
    assert "## Answer-level loss vs entropy: trend per domain" in summary
    assert "entropy-2nats-soft-lt1" in full_report.headline and "best τ per domain" in full_report.headline


def test_token_only_single_domain_run_reports_what_it_skipped(tmp_path):
    records = [record(setting("token"), "d", f"e{i}", i % 3 == 0, [0.3, 1.2, 2.5]) for i in range(5)]
    for r in records:
        r["completion"] = "1 < 2 & <script>"
    result = write_report(write_run(tmp_path / "run", records), tmp_path / "out", FAST)
    assert result.out_dir == tmp_path / "out"
    assert "accuracy_vs_threshold" not in result.figures and "pareto" in result.figures
    text = "\n".join(result.skipped)
    for phrase in (
        "accuracy vs τ",
        "one domain",
        "latent-only baseline",
        "counterfactual KL",
        "figures accuracy / latent fraction vs τ",
    ):
        assert phrase in text
    summary = result.summary.read_text(encoding="utf-8")
    assert all(f"- {s}" in summary for s in result.skipped)
    page = parse(result.html)
    assert len(page.images) == len(result.figures)
    assert html.escape("1 < 2 & <script>") in result.html.read_text(encoding="utf-8")


def test_missing_samples_is_an_input_error_and_writes_nothing(tmp_path):
    (tmp_path / "run").mkdir()
    with pytest.raises(InputError, match="samples.jsonl"):
        write_report(tmp_path / "run")
    assert list((tmp_path / "run").iterdir()) == []


def test_empty_samples_is_an_input_error_and_writes_nothing(tmp_path):
    run = write_run(tmp_path / "run", [])
    with pytest.raises(InputError, match="no records"):
        write_report(run, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (run / "report").exists()


@pytest.mark.slow
def test_report_on_a_real_single_setting_run(saved_model, tmp_path):
    from latentcot.cli import main

    out = tmp_path / "run"
    try:
        main(
            [
                "run",
                "--model",
                str(saved_model),
                "--task",
                "addition:n=2,digits=1",
                "--limit",
                "4",
                "--max-new-tokens",
                "8",
                "--gate",
                "entropy",
                "--threshold",
                "3",
                "--latent",
                "soft",
                "--out",
                str(out),
            ]
        )
    except SystemExit as exc:
        assert exc.code in (0, None)
    result = write_report(out, options=FAST)
    text = "\n".join(result.skipped)
    for phrase in (
        "best τ per domain",
        "one domain",
        "token-only baseline",
        "latent-only baseline",
        "counterfactual KL",
    ):
        assert phrase in text
    assert "entropy-3nats-soft-lt1" in result.headline
    settings = pd.read_csv(result.tables["settings"])
    assert len(settings) == 1 and settings.loc[0, "n"] == 4
    page = parse(result.html)
    assert len(page.images) == len(result.figures) >= 5
    # the run's own tokenizer is on this machine, so token steps are shown as text, not ids
    html_text = result.html.read_text()
    token_cells = re.findall(r'class="step token"[^>]*>([^<]*)<', html_text)
    assert token_cells and not any(re.fullmatch(r"#\d+", c) for c in token_cells)
