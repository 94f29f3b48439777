"""Every plot draws the Report's own numbers (and its own cuts and bands), and says 'not available'
instead of failing."""
from __future__ import annotations

import dataclasses

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from kddiag.plots import report as plotting  # noqa: E402
from kddiag.metrics.universe import Histogram, Reliability  # noqa: E402
from kddiag.metrics.whatif import InformativeBand  # noqa: E402
from kddiag.results import (ClassStructure, DomainOnSet, DomainResult, InstanceOnSet, InstanceResult,  # noqa: E402
                            Measurements, PerExample, ReliabilityCalibration, UniverseOnSet, UniverseResult,
                            measured, unavailable)
from kddiag.types import EVAL, TRANSFER


AXES_PLOTS = (plotting.plot_accuracy, plotting.plot_reliability, plotting.plot_target_confidence,
              plotting.plot_rescaling_vs_difficulty, plotting.plot_student_rescaling_vs_difficulty)
FIGURE_PLOTS = (plotting.plot_class_similarity, plotting.plot_temperature_whatif, plotting.plot_instance_rescaling)


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
    result = plot(Measurements())
    fig = result if isinstance(result, Figure) else result.figure
    assert "not available" in _texts(fig)


def test_reliability_draws_the_metric_bins_and_the_ece(full):
    ax = plotting.plot_reliability(full, dataset=EVAL)
    teacher = full.measurements.universe.eval.teacher
    accuracy, counts = teacher.reliability.value.bin_accuracy, teacher.reliability.value.bin_count
    line = next(line for line in ax.lines if line.get_label().startswith("teacher"))
    solid = ~np.isnan(accuracy) & (counts >= plotting.MIN_BIN_COUNT)
    np.testing.assert_allclose(line.get_ydata(), accuracy[solid])
    ece = teacher.ece.value
    assert f"{ece:.3f}" in line.get_label()
    assert any(list(line.get_xdata()) == [0, 1] for line in ax.lines)  # the diagonal


def test_reliability_marks_sparse_bins_and_sizes_markers_by_count():
    bins = Reliability(bin_edges=np.linspace(0.0, 1.0, 6), bin_confidence=np.array([np.nan, 0.35, 0.5, 0.7, 0.9]),
                       bin_accuracy=np.array([np.nan, 1.0, 0.45, 0.72, 0.0]), bin_count=np.array([0, 2, 40, 200, 3]))
    teacher = ReliabilityCalibration(reliability=measured(bins), ece=measured(0.0421))
    measurements = Measurements(universe=UniverseResult(eval=UniverseOnSet(EVAL, teacher=teacher)))
    ax = plotting.plot_reliability(measurements)
    line = next(line for line in ax.lines if line.get_label().startswith("teacher"))
    assert "ECE 0.042" in line.get_label()
    np.testing.assert_allclose(line.get_xdata(), [0.5, 0.7])  # the sparse bins (2 and 3 examples) left out
    solid, sparse = (c for c in ax.collections if len(c.get_offsets()) == 2)
    np.testing.assert_allclose(np.asarray(sparse.get_offsets())[:, 0], [0.35, 0.9])
    sizes = solid.get_sizes()
    assert sizes[1] > 3 * sizes[0]  # 200 examples against 40
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert f"bin with < {plotting.MIN_BIN_COUNT} examples (not joined)" in labels


def test_target_confidence_marks_saturation_and_both_sets(full):
    ax = plotting.plot_target_confidence(full)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(label.startswith("transfer set") for label in labels)
    assert any(label.startswith("eval set") for label in labels)
    cut = full.measurements.universe.transfer.saturation_cut
    saturated = full.measurements.universe.transfer.saturation_share.value >= plotting.SATURATED_PLOT_SHARE
    assert any(np.allclose(line.get_xdata(), 1 - cut if saturated else cut) for line in ax.lines)


def test_a_saturated_teacher_is_drawn_as_wrong_class_mass_on_a_log_axis():
    confidence = 1 - np.logspace(-9, -1, 400)  # 1 − p_y from 1e-9 to 0.1: one bar on a linear p_y axis
    examples = PerExample(teacher_target_confidence=confidence, rescaling_weight=None,
                          untrained_rescaling_weight=np.ones(400), difficulty=np.ones(400))
    histogram = Histogram(bin_edges=np.linspace(0.0, 1.0, 5), counts=np.array([0, 0, 0, 400]))
    measurements = Measurements(
        universe=UniverseResult(eval=UniverseOnSet(EVAL, target_confidence_histogram=measured(histogram),
                                                   saturation_share=measured(0.9), saturation_cut=0.99)),
        instance=InstanceResult(eval=InstanceOnSet(EVAL, examples=examples)))
    ax = plotting.plot_target_confidence(measurements)
    assert ax.get_xscale() == "log" and "1 − p_y" in ax.get_title()
    heights = np.concatenate([patch.get_path().vertices[:, 1] for patch in ax.patches])
    assert (heights > 0).sum() > 10  # spread over many bins, not one bar
    assert any(np.allclose(line.get_xdata(), 0.01) for line in ax.lines)


@pytest.mark.parametrize("plot", AXES_PLOTS + FIGURE_PLOTS)
def test_tick_labels_read_as_text_with_mathtext_off(plot, full):
    """The reports draw with mathtext off (names from the inputs may hold '$'): a log axis must still label
    its ticks in plain text, not show matplotlib's '$\\mathdefault{10^{-12}}$' markup."""
    with matplotlib.rc_context({"text.parse_math": False}):
        fig = Figure()
        if plot in FIGURE_PLOTS:
            plot(full, fig=fig)
        else:
            plot(full, ax=fig.add_subplot())
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        FigureCanvasAgg(fig).draw()
        labels = [label.get_text() for ax in fig.axes for axis in (ax.xaxis, ax.yaxis)
                  for label in axis.get_ticklabels()]
    assert labels and not [label for label in labels if "$" in label or "mathdefault" in label]


def test_target_confidence_draws_the_record_histogram_and_saturation_cut():
    histogram = Histogram(bin_edges=np.linspace(0.0, 1.0, 5), counts=np.array([1, 2, 3, 14]))
    record = UniverseOnSet(EVAL, target_confidence_histogram=measured(histogram), saturation_share=measured(0.25),
                           saturation_cut=0.95)
    ax = plotting.plot_target_confidence(Measurements(universe=UniverseResult(eval=record)))
    cuts = [line.get_xdata()[0] for line in ax.lines if line.get_label().startswith("saturation p_y >")]
    assert cuts == [0.95]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "eval set (n = 20, 25% saturated)" in labels and "saturation p_y > 0.95" in labels


def test_target_confidence_never_rebins_per_example_values():
    examples = PerExample(teacher_target_confidence=np.linspace(0, 1, 50), rescaling_weight=np.ones(50),
                          untrained_rescaling_weight=np.ones(50), difficulty=np.ones(50))
    measurements = Measurements(
        universe=UniverseResult(eval=UniverseOnSet(EVAL, target_confidence_histogram=unavailable("no histogram"))),
        instance=InstanceResult(eval=InstanceOnSet(EVAL, examples=examples)))
    ax = plotting.plot_target_confidence(measurements)
    assert "not available: no histogram" in _texts(ax.figure)


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
    matrix = full.measurements.domain.transfer.teacher.output_similarity.value[np.ix_(index, index)]
    drawn = heatmaps[0].collections[0].get_array()
    off = ~np.eye(len(index), dtype=bool)
    np.testing.assert_allclose(np.asarray(drawn).reshape(matrix.shape)[off], matrix[off])


def test_class_similarity_thins_tick_labels_beyond_thirty_classes():
    rng = np.random.default_rng(0)
    matrix = rng.random((60, 60))
    matrix = (matrix + matrix.T) / 2
    np.fill_diagonal(matrix, 0.0)
    record = DomainOnSet(EVAL, teacher=ClassStructure(output_similarity=measured(matrix)))
    fig = plotting.plot_class_similarity(Measurements(domain=DomainResult(eval=record)))
    ax = next(ax for ax in fig.axes if ax.get_xticklabels())
    assert 10 <= len(ax.get_xticklabels()) <= plotting.MAX_TICK_LABELS
    assert "not available: not measured" in _texts(fig)  # the student's matrix
    assert plotting.similarity_rows(Measurements(domain=DomainResult(eval=record))) == 1  # no weight row


def test_class_similarity_in_logits_mode_says_why_weights_are_missing(logits_only):
    text = _texts(plotting.plot_class_similarity(logits_only))
    assert "not available: logits mode: no logit-layer weights" in text
    assert "not available: no baseline" in text


def _rescaling_measurements(difficulty, w_untrained, w_trained, *, source="baseline_loss", rho=-0.4321,
                            low_weight_cut=0.5):
    examples = PerExample(teacher_target_confidence=np.zeros(len(difficulty)), rescaling_weight=w_trained,
                          untrained_rescaling_weight=w_untrained, difficulty=difficulty)
    record = InstanceOnSet(TRANSFER, rescaling_difficulty_correlation=measured(rho), difficulty_source=measured(source),
                           examples=examples, low_weight_cut=low_weight_cut)
    return Measurements(instance=InstanceResult(transfer=record))


def _points(ax) -> np.ndarray:
    """Offsets of the main scatter (the first collection: the per-example points)."""
    return np.asarray(ax.collections[0].get_offsets())


def test_rescaling_scatter_subsamples_and_titles_the_metric_spearman():
    n = 5000
    rng = np.random.default_rng(0)
    measurements = _rescaling_measurements(rng.random(n) + 0.01, rng.random(n), rng.random(n))
    ax = plotting.plot_rescaling_vs_difficulty(measurements)
    assert len(_points(ax)) == plotting.MAX_SCATTER_POINTS
    assert "-0.432" in ax.get_title()
    assert "transfer" in ax.get_title()
    assert f"{plotting.MAX_SCATTER_POINTS:,} of {n:,} examples drawn" in _texts(ax.figure)


def test_rescaling_scatter_draws_the_untrained_weight_on_a_log_loss_axis():
    rng = np.random.default_rng(1)
    loss = 10.0 ** rng.uniform(-8, 0, size=400)
    w0 = 1.5 - 0.1 * np.log10(1 / loss) + rng.normal(size=400) * 0.01
    trained = rng.standard_cauchy(400) * 20  # heavy-tailed, must not appear in this panel
    ax = plotting.plot_rescaling_vs_difficulty(_rescaling_measurements(loss, w0, trained))
    assert ax.get_xscale() == "log"
    np.testing.assert_allclose(np.sort(_points(ax)[:, 1]), np.sort(w0))
    lo, hi = ax.get_ylim()
    assert lo > w0.min() - 1 and hi < w0.max() + 1
    median = next(line for line in ax.lines if line.get_label().startswith("median per difficulty bin"))
    assert np.all(np.diff(median.get_ydata()) > 0)  # w0 grows with the loss here, and so does the trend


def test_rescaling_scatter_drops_nan_difficulty_and_says_how_many():
    rng = np.random.default_rng(2)
    difficulty = rng.integers(0, 11, size=300) / 10.0  # k-NN label disagreement, discrete in [0, 1]
    difficulty[::3] = np.nan  # outside the k-NN subsample
    measurements = _rescaling_measurements(difficulty, rng.random(300), rng.random(300),
                                           source="knn_disagreement_features")
    ax = plotting.plot_rescaling_vs_difficulty(measurements)
    assert ax.get_xscale() == "linear"
    points = _points(ax)
    assert len(points) == 200 and np.isfinite(points).all()
    text = _texts(ax.figure)
    assert "200 of 300 examples drawn: 100 without a difficulty (outside the k-NN subsample)" in text
    assert "jittered" in ax.get_xlabel()


def test_student_panel_clips_y_to_robust_percentiles_and_marks_the_rest():
    rng = np.random.default_rng(3)
    n = 1000
    trained = np.r_[rng.normal(0.3, 0.2, size=n - 20), np.full(10, 80.0), np.full(10, -60.0), np.inf]
    difficulty = np.r_[10.0 ** rng.uniform(-6, 0, size=n), 0.5]
    measurements = _rescaling_measurements(difficulty, rng.random(n + 1), trained)
    ax = plotting.plot_student_rescaling_vs_difficulty(measurements)
    finite = trained[np.isfinite(trained)]
    p2, p98 = np.percentile(finite, plotting.CLIP_PERCENTILES)
    lo, hi = ax.get_ylim()
    assert lo < min(p2, 0.5) and hi > max(p98, 1.0)  # the percentiles and both reference lines in view
    assert hi < 5 and lo > -5  # the ±60..80 outliers do not stretch the axis
    assert "2nd–98th percentile" in ax.get_title()
    above, below = int(np.sum(finite > hi)), int(np.sum(finite < lo))
    assert above >= 10 and below >= 10
    for edge, count in ((hi, above), (lo, below)):  # ▲ on the top edge, ▼ on the bottom edge
        on_edge = [c for c in ax.collections if len(c.get_offsets())
                   and np.all(np.asarray(c.get_offsets())[:, 1] == edge)]
        assert [len(c.get_offsets()) for c in on_edge] == [count]
    text = _texts(ax.figure)
    assert f"{above + below} beyond the y range" in text
    assert f"{n:,} of {n + 1:,} examples drawn: 1 with w overflowing" in text


def test_instance_figure_puts_the_teacher_above_the_clipped_student(full):
    fig = plotting.plot_instance_rescaling(full)
    top, bottom = fig.axes
    assert top.get_title().startswith("Teacher's rescaling weight") and "ρ" in top.get_title()
    assert bottom.get_title().startswith("Trained student's rescaling weight")
    assert top.get_xlim() == bottom.get_xlim()
    w0 = full.measurements.instance.transfer.examples.untrained_rescaling_weight
    np.testing.assert_allclose(np.sort(_points(top)[:, 1]), np.sort(w0))


def test_instance_figure_without_per_example_values_has_one_panel(full):
    record = dataclasses.replace(full.measurements.instance.transfer, examples=None)
    fig = plotting.plot_instance_rescaling(Measurements(instance=InstanceResult(transfer=record)))
    assert len(fig.axes) == 1
    assert "not available" in _texts(fig)


def test_rescaling_panels_draw_the_record_low_weight_cut():
    rng = np.random.default_rng(5)
    measurements = _rescaling_measurements(10.0 ** rng.uniform(-4, 0, 300), rng.random(300), rng.random(300),
                                           low_weight_cut=0.3)
    for plot in (plotting.plot_rescaling_vs_difficulty, plotting.plot_student_rescaling_vs_difficulty):
        ax = plot(measurements)
        levels = sorted(line.get_ydata()[0] for line in ax.lines if list(line.get_xdata()) == [0, 1])
        assert levels == [0.3, 1.0]
        assert "w < 0.3: down-weighted" in _texts(ax.figure)


def test_rescaling_scatter_falls_back_to_the_eval_set_and_says_so(logits_only):
    ax = plotting.plot_rescaling_vs_difficulty(logits_only)
    assert "eval set" in ax.get_title()
    assert ax.get_xscale() == "linear"  # k-NN disagreement in logits mode
    assert len(_points(ax)) == len(logits_only.measurements.instance.eval.examples.difficulty)


def test_temperature_whatif_marks_tau_and_the_informative_range(full):
    fig = plotting.plot_temperature_whatif(full)
    whatif = full.measurements.universe.temperature_whatif.value
    for ax in fig.axes:
        assert ax.get_xscale() == "log"
        assert any(np.allclose(line.get_xdata(), full.settings.temperature.value) for line in ax.lines
                   if len(line.get_xdata()) == 2)
        curve = next(line for line in ax.lines if len(line.get_xdata()) == len(whatif.temperatures))
        np.testing.assert_allclose(curve.get_xdata(), whatif.temperatures)
        assert ax.patches  # the shaded informative range
    assert "guessed" in _texts(fig)


def _band_lines(ax) -> list[float]:
    """The y values of the dotted 'bounds of the informative range' lines of a what-if panel."""
    return sorted(float(line.get_ydata()[0]) for line in ax.lines
                  if line.get_label() == "bounds of the informative range")


@pytest.mark.parametrize("report", ["full", "logits_only"])
def test_whatif_band_lines_are_the_metric_band(report, request):
    report = request.getfixturevalue(report)
    whatif = report.measurements.universe.temperature_whatif.value
    smoothing, saturation, content, cv = plotting.plot_temperature_whatif(report).axes
    assert _band_lines(smoothing) == pytest.approx([whatif.band.min_smoothing, whatif.band.max_smoothing])
    assert _band_lines(saturation) == pytest.approx([whatif.band.max_saturation])
    assert _band_lines(content) == _band_lines(cv) == []
    # the shaded range ends where the band says: its last τ is inside the band, the next one is not
    lo, hi = whatif.informative_range
    inside = [whatif.band.holds(e, s) for e, s in zip(whatif.effective_smoothing, whatif.saturation_share)]
    assert inside[whatif.at(lo)] and inside[whatif.at(hi)]


def test_whatif_band_lines_follow_any_band(full):
    metric = full.measurements.universe.temperature_whatif
    band = InformativeBand(min_smoothing=0.1, max_smoothing=0.7, max_saturation=0.3)
    whatif = dataclasses.replace(metric.value, band=band)
    fig = plotting.plot_temperature_whatif(
        Measurements(universe=UniverseResult(temperature_whatif=measured(whatif, dataset=TRANSFER))))
    assert _band_lines(fig.axes[0]) == pytest.approx([0.1, 0.7])
    assert _band_lines(fig.axes[1]) == pytest.approx([0.3])


def test_unavailable_metric_reason_reaches_the_panel():
    reason = "the teacher logits file has no eval set"
    teacher = ReliabilityCalibration(reliability=unavailable(reason))
    measurements = Measurements(universe=UniverseResult(eval=UniverseOnSet(EVAL, teacher=teacher)))
    ax = plotting.plot_reliability(measurements)
    assert f"not available: {reason}" in _texts(ax.figure)


def test_plots_reject_what_is_not_a_report():
    with pytest.raises(TypeError, match="Report or Measurements; got dict"):
        plotting.plot_accuracy({})


def test_whatif_without_some_curve_still_draws_the_others(full):
    metric = full.measurements.universe.temperature_whatif
    value = dataclasses.replace(metric.value, rescaling_weight_cv=np.full(metric.value.temperatures.size, np.nan))
    measurements = Measurements(universe=UniverseResult(temperature_whatif=measured(value, dataset=TRANSFER)))
    fig = plotting.plot_temperature_whatif(measurements)
    assert "not available: undefined at every temperature of the grid" in _texts(fig)
    assert sum(1 for ax in fig.axes if ax.lines) == 3


def test_whatif_unavailable_says_why_on_every_panel():
    reason = "the teacher logits are constant"
    measurements = Measurements(universe=UniverseResult(temperature_whatif=unavailable(reason)))
    fig = plotting.plot_temperature_whatif(measurements)
    assert _texts(fig).count(f"not available: {reason}") == 4


def test_student_panel_uses_iqr_fences_when_even_the_percentiles_explode():
    rng = np.random.default_rng(4)
    trained = np.r_[rng.normal(0.3, 0.1, size=900), rng.choice([-1e6, 1e6], size=100)]  # 10% far out
    measurements = _rescaling_measurements(10.0 ** rng.uniform(-6, 0, size=1000), rng.random(1000), trained)
    ax = plotting.plot_student_rescaling_vs_difficulty(measurements)
    q1, q3 = np.percentile(trained, (25, 75))
    lo, hi = ax.get_ylim()
    assert hi < q3 + 1.2 * plotting.IQR_FENCE * (q3 - q1) and hi < 10
    assert "quartiles ± 10 IQR" in ax.get_title()


def test_many_classes_show_the_most_related_ones_and_say_so():
    from kddiag.measure import measure
    from kddiag.inputs import ClassInfo
    from kddiag.options import Settings
    from kddiag.outputs import ModelOutputs, SetOutputs

    rng = np.random.default_rng(0)
    n, n_classes = 600, 60
    y = rng.integers(0, n_classes, n)
    measured = measure([SetOutputs(EVAL, y, ModelOutputs(rng.normal(size=(n, n_classes))),
                                   ModelOutputs(rng.normal(size=(n, n_classes))))],
                       settings=Settings(), class_info=ClassInfo())
    fig = plotting.plot_class_similarity(measured)
    assert f"the {plotting.MAX_HEATMAP_CLASSES} of 60 classes" in fig._suptitle.get_text()
    heatmaps = [c.get_array().shape for ax in fig.axes for c in ax.collections
                if type(c).__name__ == "QuadMesh" and c.get_array().shape[1] > 1]  # not the colour bar
    assert heatmaps == [(plotting.MAX_HEATMAP_CLASSES, plotting.MAX_HEATMAP_CLASSES)] * 2  # teacher, student
    teacher = measured.domain.eval.teacher.output_similarity.value
    strength = np.nansum(teacher, axis=1) - np.nan_to_num(np.diag(teacher))
    order, total = plotting._shared_class_order(plotting._similarity_rows(measured))
    assert total == 60 and set(order) == set(np.argsort(-strength, kind="stable")[:plotting.MAX_HEATMAP_CLASSES])


def test_token_breakdowns_draw_both_stratifications_or_say_why():
    from kddiag.metrics.strata import FREQUENCY, POSITION, Breakdown
    from kddiag.results import OutcomeOnSet, OutcomeResult

    means = {name: np.array([0.5, 0.4]) for name in ("teacher_accuracy", "student_accuracy", "agreement",
                                                     "kl_teacher_student", "kl_teacher_student_at_temperature",
                                                     "teacher_smoothing_at_temperature")}
    record = OutcomeOnSet(EVAL, by_token_frequency=measured(Breakdown(FREQUENCY, ("rank 1-10", "unseen"),
                                                                      np.array([9, 1]), means)),
                          by_position=measured(Breakdown(POSITION, ("0", "1"), np.array([5, 5]), means)))
    measurements = Measurements(outcome=OutcomeResult(eval=record))
    assert plotting.has_token_breakdowns(measurements)
    fig = plotting.plot_token_breakdowns(measurements)
    left, right = fig.axes[:2]
    assert [t.get_text() for t in left.get_xticklabels()] == ["rank 1-10\n90%", "unseen\n10%"]
    assert not plotting.has_token_breakdowns(Measurements(outcome=OutcomeResult(eval=OutcomeOnSet(EVAL))))


def test_class_names_are_drawn_as_text_never_as_mathtext():
    """A name like '$\\frac{$' once failed the drawing (a mathtext parse error); '$\\sum$…' made it slow."""
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kddiag.plots.report import _class_ticks
    from kddiag.report.html import inline_figure

    fig, ax = plt.subplots()
    _class_ticks(ax, ["$\\frac{$", "$x^{$", "a$b", "$\\sum" * 40 + "$"])
    fig.savefig(io.BytesIO(), format="png")
    plt.close(fig)
    drawn = inline_figure("t", lambda f: f.add_subplot().set_title("$\\undefinedcommand$"), (2, 2))
    assert drawn["error"] is None and drawn["uri"].startswith("data:image/png")


@pytest.mark.parametrize("accuracy", [0.0, 0.001, 0.5, 1.0])
def test_accuracy_labels_stay_inside_the_axes(accuracy):
    """A teacher right on almost no example once had its label drawn across the axis, over its name."""
    from kddiag.results import OutcomeOnSet, OutcomeResult

    record = OutcomeOnSet(EVAL, teacher_accuracy=measured(accuracy, ci=(accuracy, accuracy)),
                          student_accuracy=measured(accuracy, ci=(accuracy, accuracy)))
    ax = plotting.plot_accuracy(Measurements(outcome=OutcomeResult(eval=record)))
    ax.figure.canvas.draw()
    box = ax.get_window_extent()
    labels = [text.get_window_extent() for text in ax.texts]
    assert len(labels) == 2
    assert all(box.x0 <= label.x0 and label.x1 <= box.x1 for label in labels)
