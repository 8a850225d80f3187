"""analysis.compare: named decoding methods against token CoT, paired, on constructed records."""

import html
import re

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PathCollection

from analysis_records import method_setting, record, setting, write_run
from latentcot.analysis.compare import mcnemar_p, method_comparison, method_comparison_figure
from latentcot.analysis.load import samples_frame, steps_frame
from latentcot.analysis.report import FIGURE_TITLES, render_figure, write_report
from latentcot.analysis.stats import AnalysisOptions
from latentcot.analysis.tables import TABLE_TITLES, compute_tables
from latentcot.errors import InputError

FAST = AnalysisOptions(n_boot=50)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ENTROPY = [0.4, 1.6, 0.2]


def outcomes(pair, domain: str, results: dict[str, bool], **kw) -> list[dict]:
    """One record per example id with the given correctness."""
    return [record(pair, domain, example, ok, ENTROPY, **kw) for example, ok in results.items()]


def paired_run() -> list[dict]:
    """Token CoT and Soft Thinking on partly overlapping examples of one domain. On the 14 shared
    examples: 8 only Soft Thinking gets right (b), 2 only token CoT (c), 2 both, 2 neither. Each
    setting also has examples the other lacks, all correct, which pairing must leave out."""
    token, soft = {}, {}
    for i in range(14):
        kind = "b" if i < 8 else "c" if i < 10 else "both" if i < 12 else "neither"
        token[f"e{i}"] = kind in ("c", "both")
        soft[f"e{i}"] = kind in ("b", "both")
    token.update({"t0": True, "t1": True})
    soft.update({"s0": True, "s1": True, "s2": True})
    latent_modes = {"mode": ["latent", "latent", "token"]}
    return [
        *outcomes(setting("token"), "arith", token),
        *outcomes(method_setting("soft-thinking", "soft-thinking-t0.5"), "arith", soft, **latent_modes),
    ]


def test_mcnemar_p_is_the_exact_two_sided_binomial_value():
    # P(X <= 2 | n = 10, 1/2) = (1 + 10 + 45) / 1024; two-sided doubles it
    assert mcnemar_p(8, 2) == pytest.approx(2 * 56 / 1024, abs=1e-12) == pytest.approx(0.109375)
    assert mcnemar_p(2, 8) == pytest.approx(0.109375)
    assert mcnemar_p(5, 0) == pytest.approx(2 / 32)  # all five discordant pairs one way
    assert mcnemar_p(0, 0) == 1.0  # no discordant pair: nothing against H0
    assert mcnemar_p(3, 3) == pytest.approx(1.0)


def test_pairing_uses_only_the_examples_both_settings_decoded():
    table = method_comparison(samples_frame(paired_run()), FAST).set_index("setting_id")
    soft, token = table.loc["soft-thinking-t0.5"], table.loc["token"]
    assert (soft["method"], soft["baseline"], token["method"]) == ("soft-thinking", "token", "token")
    # accuracy is over every record of the setting; the paired columns over the 14 shared ones
    assert (soft["n"], soft["correct"], token["n"], token["correct"]) == (17, 13, 16, 6)
    assert (soft["n_paired"], soft["b"], soft["c"]) == (14, 8, 2)
    assert soft["diff"] == pytest.approx(6 / 14)
    assert soft["diff"] != pytest.approx(soft["accuracy"] - token["accuracy"])
    assert soft["p_value"] == pytest.approx(0.109375)
    # the reference is not tested against itself
    assert pd.isna(token["n_paired"]) and np.isnan(token["diff"]) and np.isnan(token["p_value"])


def test_a_setting_sharing_no_example_with_token_cot_has_no_test():
    recs = [
        *outcomes(setting("token"), "d", {"a": True, "b": False}),
        *outcomes(method_setting("moi"), "d", {"x": True, "y": True}),
    ]
    row = method_comparison(samples_frame(recs), FAST).set_index("method").loc["moi"]
    assert row["n_paired"] == 0 and pd.isna(row["b"]) and np.isnan(row["diff"]) and np.isnan(row["p_value"])


def test_accuracy_interval_is_the_wilson_interval():
    recs = [
        *outcomes(setting("token"), "d", {f"e{i}": i < 8 for i in range(10)}),
        *outcomes(method_setting("swir"), "d", {f"e{i}": False for i in range(10)}),
    ]
    table = method_comparison(samples_frame(recs), FAST).set_index("method")
    # Wilson 95 % bounds: 8 of 10 -> [0.4902, 0.9433]; 0 of 10 -> [0, 0.2775]
    assert table.loc["token", "lo"] == pytest.approx(0.4902, abs=1e-4)
    assert table.loc["token", "hi"] == pytest.approx(0.9433, abs=1e-4)
    assert table.loc["swir", "lo"] == 0.0 and table.loc["swir", "hi"] == pytest.approx(0.2775, abs=1e-4)
    assert (table.loc["swir", "b"], table.loc["swir", "c"]) == (0, 8)
    assert table.loc["swir", "p_value"] == pytest.approx(2 / 256)


def test_records_without_a_method_get_it_from_their_gate():
    recs = [
        record(setting("token"), "d", "e", True, ENTROPY),
        record(setting("latent"), "d", "e", True, ENTROPY),
        record(setting("entropy", 1.0), "d", "e", True, ENTROPY),
        record(setting("fixed", k=2), "d", "e", True, ENTROPY, mode=["latent", "latent", "token"]),
        record(method_setting("swir", gate="swir"), "d", "e", True, ENTROPY),
        record(method_setting("coconut", "coconut-k3", gate="fixed", k=3), "d", "e", True, ENTROPY),
    ]
    assert all("method" not in r["setting"] for r in recs[:4])
    frame = samples_frame(recs)
    assert list(frame["method"]) == ["token", "latent", "entropy", "coconut", "swir", "coconut"]


def test_tokens_emitted_counts_token_steps_and_emitted_latent_steps_but_not_markers():
    modes = ["token", "latent", "latent", "marker", "latent", "token"]
    entropy = [0.1, 1.2, 1.5, 0.0, 2.0, 0.3]
    emitted = [False, True, False, True, True, False]  # the marker's flag must not count
    moi = record(method_setting("moi"), "d", "e0", True, entropy, mode=modes, emitted=emitted)
    plain = record(setting("entropy", 1.0), "d", "e1", True, entropy, mode=modes)
    frame = samples_frame([moi, plain])
    assert list(frame["tokens_emitted"]) == [4, 2]
    assert list(frame["forward_passes"]) == [6, 6]
    steps = steps_frame([moi, plain])
    assert steps["emitted"].dtype == bool
    assert list(steps["emitted"]) == emitted + [False] * 6  # absent array = nothing emitted


def test_an_emitted_array_of_the_wrong_length_is_an_input_error():
    bad = record(method_setting("moi"), "d", "e0", True, ENTROPY, emitted=[True])
    with pytest.raises(InputError, match="steps.emitted has 1 values for 3 steps"):
        samples_frame([bad])


def test_compute_tables_compares_only_runs_with_two_methods():
    one_method = [record(setting("entropy", t), "d", f"e{i}", True, ENTROPY) for t in (0.5, 1.0) for i in range(3)]
    tables = compute_tables(samples_frame(one_method), steps_frame(one_method), FAST)
    assert tables["method_comparison"].empty
    assert "method comparison: the run has one method (entropy); it needs 2 or more" in tables.skipped

    no_token_in_logic = [*paired_run(), *outcomes(method_setting("soft-thinking"), "logic", {"q": True})]
    no_token_in_logic += outcomes(setting("entropy", 1.0), "logic", {"q": False})
    tables = compute_tables(samples_frame(no_token_in_logic), steps_frame(no_token_in_logic), FAST)
    logic = tables["method_comparison"].query("domain == 'logic'")
    assert len(logic) == 2 and logic["baseline"].isna().all() and logic["p_value"].isna().all()
    assert "method comparison, logic: no token setting to pair with (paired columns empty)" in tables.skipped
    assert not any("arith" in s for s in tables.skipped)


def method_run(n: int = 12) -> list[dict]:
    """Two domains; token CoT, two entropy thresholds and Soft Thinking on ``n`` examples, and
    SwiReasoning on only 3 examples of each domain (too few: drawn hollow)."""
    recs = []
    for domain, shift in (("arith", 0), ("logic", 3)):
        for pair, hits in [
            (setting("token"), 5),
            (setting("entropy", 0.5), 7),
            (setting("entropy", 1.5), 8),
            (method_setting("soft-thinking", "soft-thinking-t0.5"), 9),
        ]:
            recs += outcomes(pair, domain, {f"e{i}": (i + shift) % n < hits for i in range(n)})
        swir = method_setting("swir", gate="swir")
        recs += outcomes(swir, domain, {f"e{i}": i == 0 for i in range(3)}, mode=["latent", "token", "token"])
    return recs


def test_figure_has_a_panel_per_domain_and_a_style_per_method():
    table = method_comparison(samples_frame(method_run()), FAST)
    fig = method_comparison_figure(table, min_points=10)
    axes = fig.get_axes()
    assert [ax.get_title() for ax in axes] == ["arith", "logic"]
    for ax, (domain, part) in zip(axes, table.groupby("domain")):
        assert ax.get_title() == domain
        assert ax.get_xlabel() == "mean forward passes per example" and ax.get_ylabel() == "accuracy"
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["token", "entropy", "soft-thinking", "swir"]
        bars = {c.get_label(): c.lines[0] for c in ax.containers}  # errorbar: data line per method
        assert set(bars) == {"token", "entropy", "soft-thinking"}
        entropy = part[part["method"] == "entropy"]
        np.testing.assert_allclose(np.asarray(bars["entropy"].get_ydata(), dtype=float), entropy["accuracy"])
        np.testing.assert_allclose(np.asarray(bars["entropy"].get_xdata(), dtype=float), entropy["forward_passes"])
        assert bars["token"].get_marker() != bars["entropy"].get_marker()
        assert bars["token"].get_color() != bars["soft-thinking"].get_color()
        points = [c for c in ax.collections if isinstance(c, PathCollection)]  # not the error bars
        hollow = [c for c in points if len(c.get_facecolors()) == 0 or np.all(c.get_facecolors()[:, 3] == 0)]
        assert len(hollow) == 1 and len(hollow[0].get_offsets()) == 1  # SwiReasoning: 3 < 10 examples
        swir = part[part["method"] == "swir"]
        np.testing.assert_allclose(hollow[0].get_offsets()[0], [swir["forward_passes"].iloc[0], 1 / 3])
    assert "fewer than 10 observations" in fig.get_supxlabel()
    png, svg = render_figure(fig)
    assert png.startswith(PNG_MAGIC) and b"<svg" in svg[:2000]


def headings(page: str) -> list[str]:
    return [html.unescape(h) for h in re.findall(r"<h2>(.*?)</h2>", page)]


def test_report_puts_the_method_comparison_first(tmp_path):
    result = write_report(write_run(tmp_path / "run", method_run()), options=FAST)
    assert "method comparison" not in "\n".join(result.skipped)
    page = result.html.read_text(encoding="utf-8")
    assert headings(page)[:3] == [TABLE_TITLES["method_comparison"], FIGURE_TITLES["method_comparison"], "Run"]
    assert page.count('id="fig-method_comparison"') == 1
    summary = result.summary.read_text(encoding="utf-8")
    sections = re.findall(r"^## (.*)$", summary, flags=re.MULTILINE)
    assert sections[:3] == [TABLE_TITLES["method_comparison"], "Run", TABLE_TITLES["settings"]]
    assert "![" in summary and "(method_comparison.png)" in summary
    assert result.figures["method_comparison"][0].read_bytes().startswith(PNG_MAGIC)
    csv = pd.read_csv(result.tables["method_comparison"])
    assert len(csv) == 10 and set(csv["method"]) == {"token", "entropy", "soft-thinking", "swir"}
    soft = csv[(csv["domain"] == "arith") & (csv["method"] == "soft-thinking")].iloc[0]
    assert (soft["b"], soft["c"], soft["n_paired"]) == (4, 0, 12)
    assert soft["p_value"] == pytest.approx(mcnemar_p(4, 0))
    assert "method comparison" in result.headline


def test_report_with_one_method_skips_the_comparison_and_says_why(tmp_path):
    recs = [
        record(setting("entropy", t), d, f"e{i}", i % 2 == 0, ENTROPY)
        for d in ("arith", "logic")
        for t in (0.5, 1.0)
        for i in range(4)
    ]
    result = write_report(write_run(tmp_path / "run", recs), options=FAST)
    reason = "method comparison: the run has one method (entropy); it needs 2 or more"
    assert reason in result.skipped and "figure method comparison: fewer than 2 methods" in result.skipped
    assert "method_comparison" not in result.figures
    page = result.html.read_text(encoding="utf-8")
    assert headings(page)[0] == "Run" and TABLE_TITLES["method_comparison"] not in headings(page)
    summary = result.summary.read_text(encoding="utf-8")
    assert TABLE_TITLES["method_comparison"] not in summary and f"- {reason}" in summary
    assert pd.read_csv(result.tables["method_comparison"]).empty
