"""Every plot draws the Report's own numbers, and says 'not available' instead of failing."""
from __future__ import annotations

import dataclasses

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from kddiag import plotting  # noqa: E402
from kddiag.types import EVAL, TRANSFER, Measurements, Metric  # noqa: E402

from ._fixtures import build_logits_only_report, build_report  # noqa: E402

AXES_PLOTS = (plotting.plot_accuracy, plotting.plot_reliability, plotting.plot_target_confidence,
              plotting.plot_rescaling_vs_difficulty)
FIGURE_PLOTS = (plotting.plot_class_similarity, plotting.plot_temperature_whatif)


@pytest.fixture(scope="module")
def full():
    return build_report()


@pytest.fixture(scope="module")
def logits_only():
    return build_logits_only_report()


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _texts(fig: Figure) -> str:
    """All text drawn in a figure: titles, labels, annotations, legends."""
    return " ".join(" ".join(t.get_text().split()) for t in fig.findobj(matplotlib.text.Text))


@pytest.mark.parametrize("plot", AXES_PLOTS)
def test_axes_plots_draw_a_full_report_and_accept_a_given_axes(plot, full):
    fig, ax = plt.subplots()
    assert plot(full, ax=ax) is ax
    assert "not available" not in _texts(fig)
    assert isinstance(plot(full.measurements), Axes)


@pytest.mark.parametrize("plot", FIGURE_PLOTS)
def test_figure_plots_draw_a_full_report_on_a_given_figure(plot, full):
    fig = Figure()
    assert plot(full, fig=fig) is fig
    assert "not available" not in _texts(fig)
    assert isinstance(plot(full.measurements), Figure)


@pytest.mark.parametrize("plot", AXES_PLOTS + FIGURE_PLOTS)
def test_every_plot_says_not_available_without_measurements(plot):
    result = plot(Measurements(()))
    fig = result if isinstance(result, Figure) else result.figure
    assert "not available" in _texts(fig)


def test_reliability_draws_the_metric_bins_and_the_ece(full):
    ax = plotting.plot_reliability(full, dataset=EVAL)
    bins = full.measurements.value("universe", "teacher_reliability", EVAL)
    accuracy = np.array(bins["bin_accuracy"], dtype=float)
    line = next(line for line in ax.lines if line.get_label().startswith("teacher"))
    np.testing.assert_allclose(line.get_ydata(), accuracy[~np.isnan(accuracy)])
    ece = full.measurements.value("universe", "teacher_ece", EVAL)
    assert f"{ece:.3f}" in line.get_label()
    assert any(list(line.get_xdata()) == [0, 1] for line in ax.lines)  # the diagonal


def test_target_confidence_marks_saturation_and_both_sets(full):
    ax = plotting.plot_target_confidence(full)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(label.startswith("transfer set") for label in labels)
    assert any(label.startswith("eval set") for label in labels)
    assert any(np.allclose(line.get_xdata(), plotting.SATURATION_THRESHOLD) for line in ax.lines)


def test_class_similarity_uses_one_clustered_order_for_every_heatmap(full):
    fig = plotting.plot_class_similarity(full)
    heatmaps = [ax for ax in fig.axes if ax.collections and ax.get_xticklabels()]
    assert len(heatmaps) == 6  # teacher/student/baseline × output/weight
    orders = {tuple(t.get_text() for t in ax.get_yticklabels()) for ax in heatmaps}
    assert len(orders) == 1
    order = next(iter(orders))
    assert sorted(order) == sorted(full.class_info.names)
    assert order != full.class_info.names  # clustered, grouped classes side by side
    groups = [full.class_info.groups[full.class_info.names.index(name)] for name in order]
    assert sum(a != b for a, b in zip(groups, groups[1:])) == 1  # two groups, each contiguous
    # the drawn values are the metric's matrix, reordered
    index = [full.class_info.names.index(name) for name in order]
    matrix = np.array(full.measurements.value("domain", "teacher_output_similarity", TRANSFER))[np.ix_(index, index)]
    drawn = heatmaps[0].collections[0].get_array()
    off = ~np.eye(len(index), dtype=bool)
    np.testing.assert_allclose(np.asarray(drawn).reshape(matrix.shape)[off], matrix[off])


def test_class_similarity_thins_tick_labels_beyond_thirty_classes():
    rng = np.random.default_rng(0)
    matrix = rng.random((60, 60))
    matrix = (matrix + matrix.T) / 2
    np.fill_diagonal(matrix, 0.0)
    measurements = Measurements((Metric("domain", "teacher_output_similarity", EVAL, matrix.tolist()),))
    fig = plotting.plot_class_similarity(measurements)
    ax = next(ax for ax in fig.axes if ax.get_xticklabels())
    assert 10 <= len(ax.get_xticklabels()) <= plotting.MAX_TICK_LABELS
    assert "not available: no student output similarity measured" in _texts(fig)


def test_class_similarity_in_logits_mode_says_why_weights_are_missing(logits_only):
    text = _texts(plotting.plot_class_similarity(logits_only))
    assert "not available: logits mode: no logit-layer weights" in text
    assert "not available: no baseline" in text


def test_rescaling_scatter_subsamples_and_titles_the_metric_spearman(full):
    n = 5000
    rng = np.random.default_rng(0)
    arrays = {f"{TRANSFER}/difficulty": rng.random(n), f"{TRANSFER}/rescaling_weight": rng.random(n),
              f"{TRANSFER}/untrained_rescaling_weight": rng.random(n)}
    measurements = Measurements((Metric("instance", "rescaling_difficulty_correlation", TRANSFER, -0.4321),), arrays)
    ax = plotting.plot_rescaling_vs_difficulty(measurements)
    assert all(len(c.get_offsets()) == plotting.MAX_SCATTER_POINTS for c in ax.collections)
    assert "-0.432" in ax.get_title()
    assert "transfer" in ax.get_title()


def test_rescaling_scatter_falls_back_to_the_eval_set_and_says_so(logits_only):
    ax = plotting.plot_rescaling_vs_difficulty(logits_only)
    assert "eval set" in ax.get_title()
    assert len(ax.collections) == 2


def test_temperature_whatif_marks_tau_and_the_informative_range(full):
    fig = plotting.plot_temperature_whatif(full)
    whatif = full.measurements.value("universe", "temperature_whatif")
    for ax in fig.axes:
        assert ax.get_xscale() == "log"
        assert any(np.allclose(line.get_xdata(), full.settings.temperature.value) for line in ax.lines
                   if len(line.get_xdata()) == 2)
        curve = next(line for line in ax.lines if len(line.get_xdata()) == len(whatif["temperatures"]))
        np.testing.assert_allclose(curve.get_xdata(), whatif["temperatures"])
        assert ax.patches  # the shaded informative range
    assert "guessed" in _texts(fig)


def test_unavailable_metric_reason_reaches_the_panel():
    reason = "the teacher logits file has no eval set"
    measurements = Measurements((Metric("universe", "teacher_reliability", EVAL, None, unavailable=reason),))
    ax = plotting.plot_reliability(measurements)
    assert f"not available: {reason}" in _texts(ax.figure)


def test_plots_reject_what_is_not_a_report():
    with pytest.raises(TypeError, match="Report or Measurements; got dict"):
        plotting.plot_accuracy({})


def test_whatif_without_some_curve_still_draws_the_others(full):
    metric = full.measurements.get("universe", "temperature_whatif")
    value = {k: v for k, v in metric.value.items() if k != "rescaling_weight_cv"}
    measurements = Measurements((dataclasses.replace(metric, value=value),))
    fig = plotting.plot_temperature_whatif(measurements)
    assert "not available: rescaling_weight_cv" in _texts(fig)
    assert sum(1 for ax in fig.axes if ax.lines) == 3
