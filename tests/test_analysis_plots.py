"""analysis.plots: the figures' axes, series and legends, read back from the Figure objects."""

import matplotlib
import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgba

from analysis_records import peaked_sweep, record, setting
from latentcot.analysis.accuracy import accuracy_vs_threshold, pareto_table, settings_table
from latentcot.analysis.info_loss import METRIC_LABELS, info_loss_bins
from latentcot.analysis.load import samples_frame, steps_frame
from latentcot.analysis.plots import (
    accuracy_entropy_figure,
    entropy_distribution_figure,
    info_loss_figure,
    pareto_figure,
    plot_series,
    step_trace_figure,
    threshold_figure,
    threshold_in_nats,
)
from latentcot.analysis.stats import AnalysisOptions

FAST = AnalysisOptions(n_boot=100)


@pytest.fixture(scope="module")
def sweep():
    records = peaked_sweep({"arithmetic": 1.0, "logic": 2.0}, [0.0, 1.0, 2.0], n_examples=20)
    return samples_frame(records), steps_frame(records)


def legend_texts(ax):
    legend = ax.get_legend()
    return [t.get_text() for t in legend.get_texts()] if legend else []


def hollow_points(ax) -> int:
    """Markers drawn with no face: the 'not enough data' points."""
    count = 0
    for collection in ax.collections:
        faces = collection.get_facecolors()
        if len(collection.get_offsets()) and (len(faces) == 0 or np.all(faces[:, 3] == 0)):
            count += len(collection.get_offsets())
    return count


def test_figures_are_bare_agg_figures_not_registered_with_pyplot(sweep):
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    fig = entropy_distribution_figure(sweep[1])
    assert plt.get_fignums() == before
    assert type(fig.canvas).__name__ == "FigureCanvasAgg"
    assert matplotlib.rcParams["axes.spines.top"]  # the house style did not leak out


def test_accuracy_vs_threshold_has_a_panel_per_domain_with_baselines(sweep):
    samples, _ = sweep
    table = accuracy_vs_threshold(samples, FAST)
    fig = threshold_figure(table, settings_table(samples, FAST), "accuracy")
    axes = fig.get_axes()
    assert [ax.get_title() for ax in axes] == ["arithmetic", "logic"]
    for ax in axes:
        assert ax.get_xlabel() == "threshold τ (nats)" and ax.get_ylabel() == "accuracy"
        assert legend_texts(ax) == ["soft, nats", "token (baseline)", "latent-soft-lt1 (baseline)"]
        curve, token, latent = ax.get_lines()
        np.testing.assert_allclose(curve.get_xdata(), [0.0, 1.0, 2.0])
        assert np.all(np.asarray(token.get_ydata()) == 0.5) and np.allclose(latent.get_ydata(), 0.3)
        assert latent.get_color() == curve.get_color() and latent.get_linestyle() == ":"
        assert len(ax.collections) == 1  # one Wilson band, no hollow points
    arith = table[table["domain"] == "arithmetic"]["accuracy"].to_numpy()
    np.testing.assert_allclose(axes[0].get_lines()[0].get_ydata(), arith)


def test_latent_fraction_panel_has_no_baselines(sweep):
    table = accuracy_vs_threshold(sweep[0], FAST)
    ax = threshold_figure(table, None, "latent_fraction").get_axes()[0]
    assert ax.get_ylabel() == "latent fraction" and len(ax.get_lines()) == 1


def test_threshold_units_get_their_own_row_of_panels():
    recs = [
        record(setting("entropy", t, unit=u), "d", f"e{i}", True, [0.5, 1.5])
        for u in ("nats", "bits")
        for t in (0.5, 1.0)
        for i in range(3)
    ]
    fig = threshold_figure(accuracy_vs_threshold(samples_frame(recs)))
    assert sorted(ax.get_xlabel() for ax in fig.get_axes()) == ["threshold τ (bits)", "threshold τ (nats)"]


def test_points_with_too_few_observations_are_hollow_and_not_part_of_the_curve():
    fig = threshold_figure(
        pd.DataFrame(
            {
                "domain": "d",
                "family": "soft, nats",
                "unit": "nats",
                "latent": "soft",
                "threshold": [0.0, 0.5, 1.0, 1.5],
                "accuracy": [0.2, 0.4, 0.6, 0.8],
                "lo": 0.1,
                "hi": 0.9,
                "latent_fraction": 0.5,
                "latent_lo": 0.4,
                "latent_hi": 0.6,
                "enough": [True, False, True, False],
            }
        )
    )
    ax = fig.get_axes()[0]
    np.testing.assert_allclose(ax.get_lines()[0].get_xdata(), [0.0, 1.0])
    assert hollow_points(ax) == 2
    assert "fewer than 10 observations" in fig.get_supxlabel()


def test_series_with_no_reliable_point_is_all_hollow_and_still_labelled():
    from latentcot.analysis.plots import new_figure

    fig, axes = new_figure(1, 1)
    ax = axes[0, 0]
    plot_series(ax, [1, 2], [0.1, 0.2], [0, 0], [1, 1], [False, False], "red", "only")
    assert ax.get_lines() == [] and hollow_points(ax) == 2
    assert ax.get_legend_handles_labels()[1] == ["only"]


def test_info_loss_figure_has_one_panel_per_metric_and_a_curve_per_domain(sweep):
    bins = info_loss_bins(sweep[1], FAST)
    fig = info_loss_figure(bins)
    axes = [ax for ax in fig.get_axes() if ax.get_visible()]
    assert [ax.get_ylabel() for ax in axes] == [METRIC_LABELS["discarded"], METRIC_LABELS["surprisal"]]
    for ax in axes:
        assert ax.get_xlabel() == "entropy H (nats)"
        assert legend_texts(ax) == ["arithmetic", "logic"]
        assert len(ax.get_lines()) == 2
    surprisal = bins[(bins["metric"] == "surprisal") & (bins["domain"] == "logic") & bins["enough"]]
    np.testing.assert_allclose(axes[1].get_lines()[1].get_ydata(), surprisal["mean"])


def test_info_loss_figure_wraps_many_metrics_and_hides_spare_panels():
    bins = pd.DataFrame(
        {"domain": "d", "metric": list("abcd"), "entropy": 1.0, "mean": 1.0, "lo": 0.5, "hi": 1.5, "enough": True}
    )
    fig = info_loss_figure(bins)
    assert len(fig.get_axes()) == 6 and sum(ax.get_visible() for ax in fig.get_axes()) == 4


def test_pareto_figure_marks_the_front_and_colours_gates(sweep):
    samples, _ = sweep
    fig = pareto_figure(pareto_table(settings_table(samples, FAST)))
    for ax in fig.get_axes():
        assert ax.get_xlabel() == "mean forward passes per example" and ax.get_ylabel() == "accuracy"
        assert set(legend_texts(ax)) == {"Pareto front", "entropy", "latent", "token"}


def test_entropy_distribution_has_all_steps_and_token_steps_panels(sweep):
    fig = entropy_distribution_figure(sweep[1])
    axes = fig.get_axes()
    assert [ax.get_title() for ax in axes] == ["all steps", "token steps"]
    assert all(ax.get_xlabel() == "entropy H (nats)" for ax in axes)
    assert legend_texts(axes[0]) == ["arithmetic", "logic"]


def test_accuracy_vs_entropy_draws_the_chosen_settings_only():
    table = pd.DataFrame(
        {
            "domain": "d",
            "setting_id": ["a", "a", "b", "c"],
            "entropy": [0.5, 1.5, 0.5, 0.5],
            "accuracy": 0.5,
            "lo": 0.2,
            "hi": 0.8,
            "enough": True,
        }
    )
    ax = accuracy_entropy_figure(table, ["a", "b"]).get_axes()[0]
    assert legend_texts(ax) == ["a", "b"] and ax.get_xlabel() == "example mean entropy (nats)"


def test_step_trace_marks_latent_steps_and_the_threshold():
    rows = pd.DataFrame(
        {
            "step": range(5),
            "entropy": [0.2, 1.5, 2.0, 0.1, 1.2],
            "mode": ["token", "latent", "latent", "token", "latent"],
        }
    )
    fig = step_trace_figure([("example", rows, 1.0)])
    ax = fig.get_axes()[0]
    assert ax.get_title() == "example" and ax.get_ylabel() == "entropy H (nats)"
    latent = [c for c in ax.collections if c.get_label() == "latent step"][0]
    np.testing.assert_allclose(latent.get_offsets()[:, 0], [1, 2, 4])
    assert np.allclose(to_rgba(latent.get_facecolors()[0]), to_rgba("#d55e00"))
    tau = [line for line in ax.get_lines() if line.get_label() == "τ"][0]
    assert np.all(np.asarray(tau.get_ydata()) == 1.0)


def test_threshold_in_nats_converts_bits_and_normalized():
    assert threshold_in_nats(1.0, "nats") == 1.0
    assert threshold_in_nats(1.0, "bits") == pytest.approx(np.log(2))
    assert threshold_in_nats(0.3, "normalized", vocab_size=1000) == pytest.approx(0.3 * np.log(1000))
    assert threshold_in_nats(0.3, "normalized") is None and threshold_in_nats(None, "nats") is None
