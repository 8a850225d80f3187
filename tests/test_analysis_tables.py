"""analysis tables on constructed records with known answers."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis_records import peaked_sweep, record, setting
from latentcot.analysis.accuracy import (
    accuracy_vs_entropy,
    accuracy_vs_threshold,
    best_thresholds,
    pareto_table,
    per_domain_vs_global,
    settings_table,
    threshold_rows,
)
from latentcot.analysis.info_loss import entropy_by_domain, info_loss_bins, info_loss_correlations
from latentcot.analysis.load import samples_frame, steps_frame
from latentcot.analysis.stats import AnalysisOptions
from latentcot.analysis.tables import compute_tables

FAST = AnalysisOptions(n_boot=200)
THRESHOLDS = [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]


@pytest.fixture(scope="module")
def sweep():
    records = peaked_sweep({"arithmetic": 1.0, "logic": 2.0}, THRESHOLDS, n_examples=40)
    return samples_frame(records), steps_frame(records)


def test_best_threshold_is_the_known_peak_of_each_domain(sweep):
    samples, _ = sweep
    best = best_thresholds(samples, FAST).set_index("domain")
    assert best.loc["arithmetic", "best_threshold"] == 1.0
    assert best.loc["logic", "best_threshold"] == 2.0
    assert best.loc["logic", "accuracy"] == pytest.approx(0.9)
    for _, row in best.iterrows():
        assert row["lo"] < row["accuracy"] < row["hi"]
        assert row["threshold_lo"] <= row["best_threshold"] <= row["threshold_hi"]
        assert 0 < row["stability"] <= 1 and row["n_thresholds"] == len(THRESHOLDS)


def test_best_threshold_interval_widens_when_the_peak_is_flat():
    """Two τ with equal accuracy on different examples: the bootstrap arg-max moves between them."""
    recs = []
    for i in range(30):
        recs.append(record(setting("entropy", 1.0), "d", f"e{i}", i % 2 == 0, [0.5, 1.5]))
        recs.append(record(setting("entropy", 2.0), "d", f"e{i}", i % 2 == 1, [0.5, 1.5]))
    best = best_thresholds(samples_frame(recs), FAST).iloc[0]
    assert best["best_threshold"] == 1.0  # ties go to the smallest τ
    assert (best["threshold_lo"], best["threshold_hi"]) == (1.0, 2.0)
    assert 0.3 < best["stability"] < 0.8


def test_accuracy_vs_threshold_has_wilson_intervals_and_latent_fraction(sweep):
    samples, _ = sweep
    table = accuracy_vs_threshold(samples, FAST)
    assert sorted(table["threshold"].unique()) == THRESHOLDS
    arith = table[table["domain"] == "arithmetic"].set_index("threshold")
    assert arith.loc[1.0, "accuracy"] == pytest.approx(36 / 40)
    assert (table["lo"] <= table["accuracy"]).all() and (table["accuracy"] <= table["hi"]).all()
    # a higher τ sends fewer steps to the latent path
    assert arith["latent_fraction"].is_monotonic_decreasing
    assert arith.loc[0.0, "latent_fraction"] == pytest.approx(1.0)


def test_families_separate_units_latent_modes_and_exclude_threshold_maps():
    recs = []
    for i in range(3):
        recs.append(record(setting("entropy", 1.0), "d", f"e{i}", True, [0.5, 1.5]))
        recs.append(record(setting("entropy", 1.0, unit="bits"), "d", f"e{i}", False, [0.5, 1.5]))
        recs.append(record(setting("entropy", 1.0, latent="hidden"), "d", f"e{i}", True, [0.5, 1.5]))
        mapped = setting("entropy", 1.0, threshold_map={"d": 1.0, "x": 2.0})
        recs.append(record(("entropy-mapab12-nats-soft-lt1", mapped[1]), "d", f"e{i}", True, [0.5, 1.5]))
    samples = samples_frame(recs)
    rows = threshold_rows(samples)
    assert sorted(rows["family"].unique()) == ["hidden, nats", "soft, bits", "soft, nats"]
    assert "entropy-mapab12-nats-soft-lt1" not in set(rows["setting_id"])
    assert "entropy-mapab12-nats-soft-lt1" in set(settings_table(samples)["setting_id"])


def test_family_label_names_other_keys_that_vary():
    recs = [record(setting("entropy", 1.0, latent_temperature=t), "d", "e", True, [0.5]) for t in (0.5, 1.0)]
    assert sorted(threshold_rows(samples_frame(recs))["family"]) == [
        "soft, nats, latent_temperature=0.5",
        "soft, nats, latent_temperature=1",
    ]


def test_per_domain_beats_global_when_peaks_differ(sweep):
    samples, _ = sweep
    row = per_domain_vs_global(samples, FAST).iloc[0]
    assert row["global_threshold"] in (1.0, 1.5, 2.0)
    assert row["per_domain_threshold"] == "arithmetic=1; logic=2"
    assert row["in_sample_per_domain"] == pytest.approx(0.9)
    assert row["in_sample_per_domain"] > row["in_sample_global"]
    assert row["heldout_per_domain"] > row["heldout_global"]
    assert row["gain_lo"] <= row["gain"] <= row["gain_hi"]


def test_held_out_gain_is_not_selection_bias_when_domains_agree():
    """Same accuracy curve in both domains, noisy examples: in-sample per-domain τ can only look
    better, the held-out comparison does not show a systematic gain."""
    rng = np.random.default_rng(0)
    recs = []
    for domain in ("a", "b"):
        for t in THRESHOLDS:
            for i in range(60):
                recs.append(record(setting("entropy", t), domain, f"{domain}{i}", rng.random() < 0.6, [1.0]))
    row = per_domain_vs_global(samples_frame(recs), FAST).iloc[0]
    assert row["in_sample_per_domain"] >= row["in_sample_global"]
    assert row["gain_lo"] <= 0 <= row["gain_hi"]


def test_information_loss_rho_equals_scipy_on_token_steps(sweep):
    _, steps = sweep
    table = info_loss_correlations(steps, FAST).set_index(["domain", "metric"])
    token = steps[(steps["mode"] == "token") & (steps["domain"] == "logic")]
    expected = stats.spearmanr(token["entropy"], -np.log(token["p_token"])).statistic
    assert table.loc[("logic", "surprisal"), "rho"] == pytest.approx(expected)
    assert table.loc[("logic", "discarded"), "rho"] == pytest.approx(expected)  # same ranks
    assert table.loc[("logic", "surprisal"), "n"] == len(token)


def test_measured_arrays_add_metrics_at_their_step_modes():
    rng = np.random.default_rng(1)
    recs = []
    for i in range(20):
        h = rng.uniform(0, 3, size=8)
        latent = h > 1.5
        recs.append(
            record(
                setting("entropy", 1.5),
                "d",
                f"e{i}",
                True,
                h,
                kl_counterfactual=[None if m else float(x) * 0.5 + rng.normal() * 0.1 for m, x in zip(latent, h)],
                latent_token_cos=[float(1 - x / 4) if m else None for m, x in zip(latent, h)],
                latent_norm=[float(x) if m else None for m, x in zip(latent, h)],
                lens_top=[["a", "b", "c", "d", "e"] if m else None for m in latent],
            )
        )
    steps = steps_frame(recs)
    table = info_loss_correlations(steps, FAST).set_index("metric")
    assert set(table.index) == {"discarded", "surprisal", "kl_counterfactual", "latent_token_cos", "latent_norm"}
    assert table.loc["latent_token_cos", "rho"] == pytest.approx(-1.0)
    assert table.loc["latent_norm", "mode"] == "latent"
    token = steps[steps["mode"] == "token"]
    assert table.loc["kl_counterfactual", "rho"] == pytest.approx(
        stats.spearmanr(token["entropy"], token["kl_counterfactual"]).statistic
    )


def test_sparse_bins_are_flagged():
    """Nine steps in one entropy bin, many in another: only the full one is `enough`."""
    recs = [record(setting("token"), "d", f"e{i}", True, [0.1] * 5) for i in range(6)]
    recs.append(record(setting("token"), "d", "sparse", True, [2.9] * 9))
    bins = info_loss_bins(steps_frame(recs), AnalysisOptions(n_boot=50, entropy_bins=3, min_points=10))
    surprisal = bins[bins["metric"] == "surprisal"].set_index("n")
    assert sorted(surprisal.index) == [9, 30]  # the empty middle bin is dropped
    assert bool(surprisal.loc[30, "enough"]) and not bool(surprisal.loc[9, "enough"])


def test_accuracy_vs_entropy_bins_examples_and_flags_small_bins():
    recs = [record(setting("token"), "d", f"lo{i}", True, [0.2, 0.2]) for i in range(12)]
    recs += [record(setting("token"), "d", f"hi{i}", i == 0, [2.0, 2.0]) for i in range(4)]
    table = accuracy_vs_entropy(samples_frame(recs), AnalysisOptions(accuracy_bins=2)).set_index("n")
    assert table.loc[12, "accuracy"] == 1.0 and bool(table.loc[12, "enough"])
    assert table.loc[4, "accuracy"] == 0.25 and not bool(table.loc[4, "enough"])


def test_pareto_front_prefers_fewer_forward_passes_at_equal_accuracy():
    recs = []
    for i in range(10):
        recs.append(record(setting("token"), "d", f"e{i}", i < 5, [1.0] * 8))
        recs.append(record(setting("entropy", 1.0), "d", f"e{i}", i < 5, [1.0] * 4))
        recs.append(record(setting("latent"), "d", f"e{i}", i < 8, [2.0] * 10))
    table = pareto_table(settings_table(samples_frame(recs))).set_index("setting_id")
    assert not table.loc["token", "pareto"]
    assert table.loc["entropy-1nats-soft-lt1", "pareto"] and table.loc["latent-soft-lt1", "pareto"]


def test_entropy_by_domain_summarises_each_mode_and_all_steps(sweep):
    _, steps = sweep
    table = entropy_by_domain(steps).set_index(["domain", "mode"])
    logic = steps[steps["domain"] == "logic"]
    assert table.loc[("logic", "all"), "n"] == len(logic)
    assert table.loc[("logic", "token"), "mean"] == pytest.approx(logic.loc[logic["mode"] == "token", "entropy"].mean())


def test_compute_tables_lists_what_a_token_only_run_skips():
    recs = [record(setting("token"), "d", f"e{i}", i % 2 == 0, [0.5, 1.0, 2.0]) for i in range(5)]
    tables = compute_tables(samples_frame(recs), steps_frame(recs), FAST)
    assert tables["accuracy_vs_threshold"].empty and tables["best_threshold"].empty
    assert not tables["settings"].empty and not tables["info_loss_bins"].empty
    text = "\n".join(tables.skipped)
    for phrase in ("accuracy vs τ", "one domain", "latent-only baseline", "counterfactual KL"):
        assert phrase in text
    assert "token-only baseline" not in text


def test_compute_tables_is_reproducible_for_a_seed(sweep):
    samples, steps = sweep
    a = compute_tables(samples, steps, FAST)
    b = compute_tables(samples, steps, FAST)
    for name in a:
        pd.testing.assert_frame_equal(a[name], b[name])
