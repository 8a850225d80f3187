"""analysis.overview: the demo's first look, one row per domain, from constructed sweeps."""

import numpy as np

from analysis_records import peaked_sweep, record, setting
from latentcot.analysis.load import samples_frame, steps_frame
from latentcot.analysis.overview import UNCERTAIN_NATS, overview, overview_display
from latentcot.analysis.stats import AnalysisOptions
from latentcot.analysis.tables import compute_tables

THRESHOLDS = [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]


def first_look(records):
    samples, steps = samples_frame(records), steps_frame(records)
    return overview(samples, steps, compute_tables(samples, steps, AnalysisOptions(n_boot=50))).set_index("domain")


def test_each_domain_gets_its_token_uncertainty_best_setting_and_best_tau():
    records = peaked_sweep({"arith": 1.0, "logic": 2.0}, THRESHOLDS, n_examples=40)
    table = first_look(records)
    assert list(table.index) == ["arith", "logic"]
    for domain, peak in (("arith", 1.0), ("logic", 2.0)):
        mine = [r for r in records if r["domain"] == domain and r["setting_id"] == "token"]
        token = [e for r in mine for e in r["steps"]["entropy"]]
        row = table.loc[domain]
        assert row["uncertain_steps"] == np.mean(np.array(token) > UNCERTAIN_NATS)  # counted independently
        assert row["token_accuracy"] == 0.5
        assert row["best_tau"] == peak and row["tau_accuracy"] == 0.9
        assert row["best_setting"] == setting("entropy", peak)[0] and row["best_accuracy"] == 0.9
        assert row["diff"] == 0.9 - 0.5  # paired with token CoT on the same 40 examples
    assert table[["p_changed", "slope", "delta_uncertain"]].isna().all().all()  # no answer-level probe in this run


def test_a_run_without_token_cot_or_thresholds_leaves_those_cells_empty():
    records = [record(setting("latent"), "arith", f"e{i}", i % 2 == 0, [1.0, 0.1]) for i in range(6)]
    table = first_look(records)
    row = table.loc["arith"]
    assert np.isnan(row["token_accuracy"]) and np.isnan(row["uncertain_steps"]) and np.isnan(row["best_tau"])
    shown = overview_display(table.reset_index())
    assert shown.loc[0, "best τ [CI]"] == "–" and shown.loc[0, "slope/nat [CI]"] == "–"


def test_answer_level_columns_average_the_probes_above_the_uncertainty_line():
    # Token CoT, all correct; at the uncertain step (0.9 nats) the latent branch is wrong in 3 of 8 records,
    # at the certain one (0.1) it never changes anything. A step with no probe (None) is not counted.
    records = [
        record(
            setting("token"),
            "arith",
            f"e{i}",
            True,
            [0.1, 0.9, 1.2],
            rollout_changed=[False, i < 3, None],
            rollout_correct=[True, i >= 3, None],
        )
        for i in range(8)
    ]
    row = first_look(records).loc["arith"]
    assert row["uncertain_probes"] == 8 and row["delta_uncertain"] == -3 / 8
    assert (row["gained"], row["lost"]) == (0, 3) and row["delta_p"] == 2 * 0.5**3  # exact two-sided
    assert row["p_changed"] == 3 / 16 and row["slope"] > 0  # changes only at the higher entropy
    assert row["uncertain_steps"] == 2 / 3
