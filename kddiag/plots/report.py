"""Figures of an inspection: each ``plot_*`` draws measured results, never recomputes a metric.

Every function takes a :class:`~kddiag.results.Report` (or just its
:class:`~kddiag.results.Measurements`; class names, groups and the distillation τ then are unknown)
and draws on ``ax`` (or ``fig`` for multi-panel figures), creating one when none is given.
Values are read as attributes of the typed results; every defining constant (the informative band,
the saturation and low-weight cuts, the bins) comes from the results, never from here.
A value that is absent or unavailable gives a panel that says "not available: <reason>".
matplotlib and seaborn are imported inside the functions; nothing is shown or saved here.
"""
from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from kddiag.plots._common import (MIN_BIN_COUNT, MODEL_COLORS, SET_COLORS, floats, legend_below, log_scale,
                                   new_axes, new_figure, not_available)
from kddiag.results import (NOT_MEASURED, ClassStructure, InstanceOnSet, Measured, Measurements, PerExample, Report,
                            UniverseOnSet, WeightStructure)
from kddiag.inputs import ClassInfo
from kddiag.options import Settings
from kddiag.types import EVAL, ROLES as MODELS, TRANSFER

MAX_SCATTER_POINTS = 3000
CLIP_PERCENTILES = (2.0, 98.0)  # y range of the trained-student w panel (its w is heavy-tailed) …
IQR_FENCE = 10.0  # … and at most this many interquartile ranges beyond the quartiles
MAX_TICK_LABELS = 30
MAX_HEATMAP_CLASSES = 40  # beyond this many classes the heatmaps show the 40 most related ones


# ---------------------------------------------------------------- level 0 — outcome

def plot_accuracy(report: Report | Measurements, *, ax=None):
    """Accuracy of teacher, student and baseline with 95% bootstrap intervals, per data set."""
    measurements, _, _ = _unpack(report)
    ax = new_axes(ax, figsize=(6.0, 3.2))
    ax.set_title("Accuracy (95% bootstrap interval)", loc="left")
    records = {dataset: measurements.outcome.on(dataset) for dataset in (TRANSFER, EVAL)}
    accuracy = {dataset: {"teacher": record.teacher_accuracy, "student": record.student_accuracy,
                          "baseline": record.baseline_accuracy}
                for dataset, record in records.items() if record is not None}
    points = [(model, dataset, accuracy[dataset][model])
              for model in MODELS for dataset in (TRANSFER, EVAL) if dataset in accuracy]
    points = [(m, d, metric) for m, d, metric in points if metric.ok]
    if not points:
        return not_available(ax, _reason([a["teacher"] for a in accuracy.values()], "no accuracy measured"))
    models = [m for m in MODELS if any(p[0] == m for p in points)]
    lo = min(min(float(m.value), m.ci[0] if m.ci else 1.0) for *_, m in points)
    left = max(0.0, lo - 0.05)
    offsets = {TRANSFER: -0.15, EVAL: 0.15}
    markers = {TRANSFER: "s", EVAL: "o"}  # hollow squares: transfer set; filled circles: eval set
    for model, dataset, metric in points:
        y = models.index(model) + offsets[dataset]
        value = float(metric.value)
        if metric.ci is not None:
            ax.plot(metric.ci, [y, y], color=MODEL_COLORS[model], lw=2, alpha=0.6)
        ax.plot([value], [y], marker=markers[dataset], ms=7, color=MODEL_COLORS[model], ls="none",
                mfc="white" if dataset == TRANSFER else MODEL_COLORS[model])
        near_left = value - left < 0.03 * (1.0 - left)  # a centred label would cross the axis and the model's name
        ax.annotate(f"{value:.3f}", (value, y), xytext=(0, 6), textcoords="offset points", fontsize=8,
                    ha="left" if near_left else "center")
    for dataset in (TRANSFER, EVAL):
        if any(d == dataset for _, d, _ in points):
            ax.plot([], [], marker=markers[dataset], ls="none", color="black",
                    mfc="white" if dataset == TRANSFER else "black", label=f"{dataset} set")
    ax.set_yticks(range(len(models)), models)
    ax.set_ylim(len(models) - 0.5, -0.5)
    ax.set_xlim(left, 1.0 + 0.04 * (1.0 - left))  # room for the label of a perfect score
    ax.set_xlabel("accuracy")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=2, fontsize=8, frameon=False,
              borderaxespad=0.2, handletextpad=0.3)
    return ax


# ---------------------------------------------------------------- level 1 — universe

def plot_reliability(report: Report | Measurements, *, dataset: str = EVAL, ax=None):
    """Reliability diagram of teacher and student on ``dataset``: accuracy vs confidence per bin,
    the diagonal of perfect calibration, bin counts as light bars and each model's ECE in the legend.
    Marker area grows with the bin's count; bins with fewer than ``MIN_BIN_COUNT`` examples are drawn
    hollow and left out of the line (their accuracy is noise)."""
    measurements, _, _ = _unpack(report)
    ax = new_axes(ax, figsize=(5.0, 4.6))
    ax.set_title(f"Reliability diagram ({dataset} set)")
    record = measurements.universe.on(dataset)
    calibration = {} if record is None else {"teacher": record.teacher, "student": record.student}
    curves = {m: c for m, c in calibration.items() if c.reliability.ok}
    if not curves:
        return not_available(ax, _reason([c.reliability for c in calibration.values()],
                                          f"no reliability bins on the {dataset} set"))
    counts_ax = ax.twinx()
    max_share, width_share, any_sparse = 0.0, 0.5 / len(curves), False
    for i, (model, model_calibration) in enumerate(curves.items()):
        bins = model_calibration.reliability.value
        edges = floats(bins.bin_edges)
        confidence = floats(bins.bin_confidence)
        accuracy = floats(bins.bin_accuracy)
        counts = np.nan_to_num(floats(bins.bin_count))
        share = counts / max(counts.sum(), 1.0)
        max_share = max(max_share, float(share.max(initial=0.0)))
        widths = np.diff(edges)
        counts_ax.bar(edges[:-1] + widths * (0.25 + i * width_share), share, width=widths * width_share,
                      align="edge", color=MODEL_COLORS[model], alpha=0.3, linewidth=0)
        ece = model_calibration.ece
        label = f"{model} (ECE {float(ece.value):.3f})" if ece.ok else model
        filled = ~np.isnan(confidence) & ~np.isnan(accuracy) & (counts > 0)
        solid = filled & (counts >= MIN_BIN_COUNT)
        sparse = filled & ~solid
        any_sparse |= bool(sparse.any())
        color = MODEL_COLORS[model]
        ax.plot(confidence[solid], accuracy[solid], lw=1.5, color=color, label=label)
        ax.scatter(confidence[solid], accuracy[solid], s=_bin_marker_area(counts[solid], counts.max()),
                   color=color, alpha=0.75, linewidths=0.5, edgecolors="white", zorder=3, clip_on=False)
        ax.scatter(confidence[sparse], accuracy[sparse], s=14, facecolors="none", edgecolors=color,
                   linewidths=0.8, alpha=0.8, zorder=3, clip_on=False)
    ax.plot([0, 1], [0, 1], ls="--", color="black", lw=1, label="perfect calibration")
    ax.scatter([], [], s=40, color="#777777", label="bin (marker area ∝ examples)")
    if any_sparse:
        ax.scatter([], [], s=14, facecolors="none", edgecolors="#777777",
                   label=f"bin with < {MIN_BIN_COUNT} examples (not joined)")
    max_share = max(max_share, 1e-9)
    counts_ax.set_ylim(0, max_share / 0.3)  # the bars fill the bottom 30% of the plot
    counts_ax.set_yticks([0, max_share / 2, max_share], [f"{100 * v:.0f}%" for v in (0, max_share / 2, max_share)])
    counts_ax.set_ylabel("share of examples per bin (bars)", color="#666666", fontsize=8, loc="bottom")
    counts_ax.tick_params(axis="y", labelsize=7, colors="#666666")
    ax.set_zorder(counts_ax.get_zorder() + 1)
    ax.patch.set_visible(False)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (max probability, τ = 1)")
    ax.set_ylabel("accuracy")
    legend_below(ax)
    return ax


def plot_target_confidence(report: Report | Measurements, *, ax=None):
    """Histogram of the teacher's target probability p_y at τ, transfer set vs eval set
    (``universe.<set>.target_confidence_histogram``), with the set's saturation cut marked. When most
    targets of a set are saturated (the linear histogram is one bar), the wrong-class mass 1 − p_y is
    drawn instead on a log axis, from the per-example sample (:func:`_plot_wrong_class_mass`)."""
    measurements, _, settings = _unpack(report)
    ax = new_axes(ax, figsize=(5.6, 4.0))
    tau = "" if settings is None else f" (τ = {settings.temperature.value:g})"
    ax.set_title(f"Teacher target confidence p_y{tau}")
    records: list[UniverseOnSet] = list(measurements.universe.sets())
    drawn = [record for record in records if record.target_confidence_histogram.ok]
    if not drawn:
        return not_available(ax, _reason([r.target_confidence_histogram for r in records],
                                          "no target confidences measured"))
    saturated_sets = [r for r in drawn if r.saturation_share.ok and r.saturation_share.value >= SATURATED_PLOT_SHARE]
    samples = {r.dataset: _target_confidence_sample(measurements, r.dataset) for r in drawn}
    if saturated_sets and all(sample is not None for sample in samples.values()):
        ax.set_title(f"Teacher wrong-class mass 1 − p_y{tau}")
        return _plot_wrong_class_mass(ax, drawn, samples)
    for record in drawn:
        histogram = record.target_confidence_histogram.value
        edges, counts = floats(histogram.bin_edges), np.nan_to_num(floats(histogram.counts))
        share = counts / max(counts.sum(), 1.0)
        saturated = record.saturation_share
        label = f"{record.dataset} set (n = {int(counts.sum())}"
        label += f", {100 * float(saturated.value):.0f}% saturated)" if saturated.ok else ")"
        ax.stairs(share, edges, fill=True, alpha=0.35, color=SET_COLORS[record.dataset])
        ax.stairs(share, edges, color=SET_COLORS[record.dataset], lw=1.5, label=label)
    for cut in dict.fromkeys(record.saturation_cut for record in drawn):  # one line per distinct cut
        ax.axvline(cut, color="black", ls="--", lw=1, label=f"saturation p_y > {cut:g}")
    ax.set_xlim(0, 1)
    ax.set_xlabel("teacher probability of the true class, p_y")
    ax.set_ylabel("share of examples")
    legend_below(ax, fontsize=8)
    return ax


SATURATED_PLOT_SHARE = 0.5  # from this saturated share on, target confidence is drawn as 1 − p_y on a log axis
WRONG_MASS_FLOOR = 1e-12  # … and values of 1 − p_y below it are drawn in the first bin


def _target_confidence_sample(measurements: Measurements, dataset: str) -> np.ndarray | None:
    """The teacher's p_y at τ on the set's per-example sample, or None when not kept."""
    record = measurements.instance.on(dataset)
    if record is None or record.examples is None:
        return None
    values = floats(record.examples.teacher_target_confidence)
    return values[np.isfinite(values)] if values.size else None


def _plot_wrong_class_mass(ax, drawn: list, samples: dict[str, np.ndarray]):
    """Histograms of 1 − p_y on log-spaced bins from WRONG_MASS_FLOOR to 1, one per set, the
    saturation cut (1 − p_y < 1 − cut) marked: readable however close to one-hot the targets are."""
    edges = np.logspace(np.log10(WRONG_MASS_FLOOR), 0, 49)
    for record in drawn:
        mass = np.clip(1.0 - samples[record.dataset], WRONG_MASS_FLOOR, 1.0)
        counts, _ = np.histogram(mass, bins=edges)
        share = counts / max(mass.size, 1)
        label = f"{record.dataset} set (sample of {mass.size:,}"
        saturated = record.saturation_share
        label += f", {100 * float(saturated.value):.0f}% saturated)" if saturated.ok else ")"
        ax.stairs(share, edges, fill=True, alpha=0.35, color=SET_COLORS[record.dataset])
        ax.stairs(share, edges, color=SET_COLORS[record.dataset], lw=1.5, label=label)
    for cut in dict.fromkeys(record.saturation_cut for record in drawn):
        ax.axvline(1.0 - cut, color="black", ls="--", lw=1, label=f"saturation: 1 − p_y < {1 - cut:g}")
    log_scale(ax)
    ax.set_xlim(WRONG_MASS_FLOOR, 1.0)
    ax.set_xlabel(f"wrong-class mass 1 − p_y (log scale; below {WRONG_MASS_FLOOR:g} in the first bin)")
    ax.set_ylabel("share of examples")
    legend_below(ax, fontsize=8)
    return ax


def plot_temperature_whatif(report: Report | Measurements, *, fig=None):
    """What the teacher's targets would look like at other temperatures (``universe.temperature_whatif``):
    effective smoothing, saturated share, dark-knowledge content and rescaling-weight CV vs τ (log axis),
    the informative range shaded, the bounds of the what-if's informative band (``WhatIf.band``) as
    dotted lines and the distillation τ marked."""
    measurements, _, settings = _unpack(report)
    fig = new_figure(fig, figsize=(13.0, 3.4))
    axes = fig.subplots(1, 4)
    metric = measurements.universe.temperature_whatif
    same_set = measurements.universe.on(metric.dataset)
    saturated = "saturated share" + ("" if same_set is None else f" (p_y > {same_set.saturation_cut:g})")
    panels: tuple[tuple[str, Callable[[Any], np.ndarray], Callable[[Any], tuple[float, ...]]], ...] = (
        ("effective smoothing ε_eff", lambda w: w.effective_smoothing,
         lambda band: (band.min_smoothing, band.max_smoothing)),
        (saturated, lambda w: w.saturation_share, lambda band: (band.max_saturation,)),
        ("dark-knowledge content", lambda w: w.dark_knowledge_content, lambda band: ()),
        ("rescaling weight CV (untrained)", lambda w: w.rescaling_weight_cv, lambda band: ()),
    )
    if not metric.ok:
        reason = _reason([metric], "no temperature what-if measured")
        for ax, (title, *_) in zip(axes, panels):
            ax.set_title(title, fontsize=10)
            not_available(ax, reason)
        return fig
    whatif = metric.value
    temperatures = floats(whatif.temperatures)
    informative = whatif.informative_range
    for ax, (title, curve, bounds) in zip(axes, panels):
        ax.set_title(title, fontsize=10)
        values = floats(curve(whatif))
        if not np.isfinite(values).any():
            not_available(ax, "undefined at every temperature of the grid")
            continue
        if informative:
            ax.axvspan(float(informative[0]), float(informative[1]), color="#009E73", alpha=0.12,
                       label="informative range")
        ax.plot(temperatures, values, marker="o", ms=3, color=MODEL_COLORS["teacher"])
        if settings is not None:
            tau = settings.temperature
            ax.axvline(tau.value, color=MODEL_COLORS["student"], lw=1.5, ls="--",
                       label=f"distillation τ = {tau.value:g}" + (" (guessed)" if tau.guessed else ""))
        for level in bounds(whatif.band):
            ax.axhline(level, color="#009E73", lw=0.8, ls=":", label="bounds of the informative range")
        _plain_log_axis(ax, temperatures)
        ax.set_xlabel("temperature τ")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3, which="both", lw=0.5)
    legend = {}
    for ax in axes:
        legend.update(zip(*reversed(ax.get_legend_handles_labels())))
    labels, handles = list(legend), list(legend.values())
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=len(handles), fontsize=9, frameon=False)
    fig.suptitle(f"Temperature what-if: the teacher's targets over τ ({metric.dataset} set)", fontsize=11)
    fig.tight_layout(rect=(0, 0.08, 1, 0.95))
    return fig


# ---------------------------------------------------------------- level 2 — domain

def plot_class_similarity(report: Report | Measurements, *, fig=None):
    """Class-similarity heatmaps of teacher, student and baseline side by side, output-based (top row)
    and weight-based (bottom row, when measured or marked unavailable), all in one class order: average-
    linkage clustering of the teacher's matrix. Known class groups are drawn as colour strips. The
    colour scale is shared per row and ends at the 99th percentile of the off-diagonal values."""
    import seaborn as sns

    measurements, class_info, _ = _unpack(report)
    models = similarity_columns(report)
    rows = _similarity_rows(measurements)
    fig = new_figure(fig, figsize=(4.6 * len(models) + 0.8, 4.4 * len(rows)))
    grid = fig.add_gridspec(len(rows), len(models) + 1, width_ratios=[1.0] * len(models) + [0.05])

    order, n_classes = _shared_class_order(rows)
    n_shown = len(order)
    names = _class_names(class_info, n_classes)
    grouped = class_info.groups is not None and len(class_info.groups) == n_classes
    for row, similarity in enumerate(rows):
        matrices = similarity.matrices()
        present = {m: floats(metric.value) for m, metric in matrices.items() if metric.ok}
        present = {m: mat[np.ix_(order, order)] for m, mat in present.items() if mat.shape == (n_classes, n_classes)}
        values = np.concatenate([_off_diagonal(mat) for mat in present.values()]) if present else np.zeros(0)
        values = np.abs(values[np.isfinite(values)])
        vmax = float(np.percentile(values, 99)) if values.size else 1.0
        vmax = vmax if vmax > 0 else 1.0
        clipped = bool(values.size) and float(values.max()) > vmax
        signed = similarity.signed
        cbar_ax = fig.add_subplot(grid[row, -1]) if present else None
        row_title = similarity.title
        row_axes = [fig.add_subplot(grid[row, col]) for col in range(len(models))]
        for ax, model in zip(row_axes, models):
            ax.set_title(model, fontsize=10, color=MODEL_COLORS[model], pad=16 if grouped else 6)
            if model not in present:
                default = f"no {model} {similarity.kind} measured"
                not_available(ax, _reason([matrices[model]] if model in matrices else [], default))
                continue
            mat = present[model]
            mask = np.eye(n_shown, dtype=bool) | ~np.isfinite(mat)
            sns.heatmap(mat, ax=ax, mask=mask, square=True, cmap="RdBu_r" if signed else "viridis",
                        vmin=-vmax if signed else 0.0, vmax=vmax, cbar=cbar_ax is not None, cbar_ax=cbar_ax,
                        cbar_kws={"label": "cosine similarity" if signed else "mean non-target probability",
                                  "extend": ("both" if signed else "max") if clipped else "neither"},
                        xticklabels=False, yticklabels=False)
            cbar_ax = None  # one colour bar per row
            ax.set_facecolor("#dddddd")
            _class_ticks(ax, [names[i] for i in order])
            if grouped:
                _group_strips(ax, np.asarray(class_info.groups)[order])
        row_axes[0].set_ylabel(row_title, fontsize=10, labelpad=6)  # after seaborn, which clears it
    shown = "" if n_shown == n_classes else (f"the {n_shown} of {n_classes:,} classes most similar to the others "
                                             "in the first matrix drawn, ")
    fig.suptitle(f"Class similarity: {shown}in one shared class order (clustered on the teacher; diagonal grey"
                 + ("; edge strips: known class groups)" if grouped else ")"), fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.96), h_pad=3.0)  # room for the strips and titles below tick labels
    return fig


def similarity_columns(report: Report | Measurements) -> tuple[str, ...]:
    """The models :func:`plot_class_similarity` gives a panel: those inspected (no empty panel for a
    baseline or student that was not given)."""
    if not isinstance(report, Report):
        return MODELS
    return tuple(m for m in report.columns if m in report.models)


def similarity_rows(report: Report | Measurements) -> int:
    """How many heatmap rows :func:`plot_class_similarity` draws (for sizing its figure)."""
    measurements, _, _ = _unpack(report)
    return len(_similarity_rows(measurements))


@dataclass(frozen=True)
class _SimilarityRow:
    """One row of class-similarity heatmaps: the record it reads and the matrix of each model's structure."""

    title: str
    kind: str  # for messages: 'output similarity', 'weight similarity'
    record: Any  # DomainOnSet, DomainOnWeights, or None when that set was not given
    matrix: Callable[[Any], Measured]  # ClassStructure | WeightStructure -> its (C, C) matrix
    signed: bool

    def matrices(self) -> dict[str, Measured]:
        """Each model's matrix (every model when the record exists, none otherwise)."""
        if self.record is None:
            return {}
        return {model: self.matrix(structure) for model, structure in _by_model(self.record).items()}


def _similarity_rows(measurements: Measurements) -> list[_SimilarityRow]:
    """Output-based similarity (transfer set, else eval), and weight-based when measured or marked unavailable."""
    domain = measurements.domain
    on_set = _first_set(domain)
    title = "output-based (τ = 1)" + ("" if on_set is None else f", {on_set.dataset} set")
    rows = [_SimilarityRow(title, "output similarity", on_set, _output_similarity, signed=False)]
    weights = _SimilarityRow("weight-based (cosine)", "weight similarity", domain.weights, _weight_similarity,
                             signed=True)
    if any(_given(metric) for metric in weights.matrices().values()):
        rows.append(weights)
    return rows


def _output_similarity(structure: ClassStructure) -> Measured:
    return structure.output_similarity


def _weight_similarity(structure: WeightStructure) -> Measured:
    return structure.weight_similarity


# ---------------------------------------------------------------- level 3 — instance

def plot_rescaling_vs_difficulty(report: Report | Measurements, *, dataset: str | None = None,
                                 max_points: int = MAX_SCATTER_POINTS, ax=None):
    """The teacher's gradient rescaling: the untrained-student weight w (q uniform, so w depends on the
    teacher alone) vs example difficulty on the transfer set (else the eval set), with the median of w
    per difficulty bin. Log x axis for a loss, linear for k-NN disagreement; examples without a
    difficulty (NaN: outside the k-NN subsample) are dropped and counted. At most ``max_points``
    examples are drawn (fixed random subsample); the title carries the
    ``instance.rescaling_difficulty_correlation`` metric (Spearman of this w with −difficulty)."""
    measurements, _, _ = _unpack(report)
    ax = new_axes(ax, figsize=(5.6, 4.4))
    dataset = _rescaling_set(measurements, dataset)
    record = measurements.instance.on(dataset)
    points = _RescalingPoints.build(record, _untrained_weight, max_points)
    title = f"Teacher's rescaling weight vs difficulty ({dataset} set)"
    if points is None:
        ax.set_title(title, fontsize=10)
        return not_available(ax, _reason([] if record is None else [record.rescaling_difficulty_correlation],
                                          f"no per-example difficulty or untrained-student rescaling weights "
                                          f"on the {dataset} set"))
    rho = record.rescaling_difficulty_correlation
    if rho.ok:
        title += f"\nSpearman ρ(w, −difficulty) = {float(rho.value):.3f}"
    ax.set_title(title, fontsize=10)
    points.draw(ax, color=MODEL_COLORS["teacher"], label="w of an untrained student (teacher alone)")
    ax.set_ylabel("rescaling weight w (untrained student)", fontsize=9)
    points.finish(ax)
    return ax


def plot_student_rescaling_vs_difficulty(report: Report | Measurements, *, dataset: str | None = None,
                                         max_points: int = MAX_SCATTER_POINTS,
                                         clip_percentiles: tuple[float, float] = CLIP_PERCENTILES, ax=None):
    """The trained student's rescaling weight w vs difficulty, like :func:`plot_rescaling_vs_difficulty`,
    with the y axis clipped to the ``clip_percentiles`` of w (and to ``IQR_FENCE`` interquartile ranges
    beyond the quartiles when that is tighter): w = g_y / (q¹_y − 1) is heavy-tailed where the student
    is confident (q¹_y → 1). The points beyond are drawn as triangles on the edge."""
    measurements, _, _ = _unpack(report)
    ax = new_axes(ax, figsize=(5.6, 3.2))
    dataset = _rescaling_set(measurements, dataset)
    record = measurements.instance.on(dataset)
    points = _RescalingPoints.build(record, _trained_weight, max_points)
    title = f"Trained student's rescaling weight ({dataset} set)"
    if points is None:
        ax.set_title(title, fontsize=10)
        return not_available(ax, _reason([] if record is None else [record.rescaling_weight_mean],
                                          f"no per-example difficulty or trained-student rescaling weights "
                                          f"on the {dataset} set"))
    lo, hi = (float(v) for v in np.percentile(points.all_w, clip_percentiles))
    q1, q3 = np.percentile(points.all_w, (25, 75))
    fence = (float(q1 - IQR_FENCE * (q3 - q1)), float(q3 + IQR_FENCE * (q3 - q1)))
    fenced = fence[0] > lo or fence[1] < hi  # a tail heavier still: the fences are tighter
    lo, hi = max(lo, fence[0]), min(hi, fence[1])
    lo, hi = min(lo, points.low_weight_cut), max(hi, 1.0)  # keep both reference lines in view
    pad = 0.05 * (hi - lo)
    lo, hi = lo - pad, hi + pad
    points.draw(ax, color=MODEL_COLORS["student"], label="w of the trained student", clip=(lo, hi))
    ax.set_ylim(lo, hi)
    ax.set_ylabel("rescaling weight w (trained student)", fontsize=9)
    p_lo, p_hi = clip_percentiles
    percentiles = f"{_ordinal(p_lo)}–{_ordinal(p_hi)} percentile"
    clipped = (f"y axis clipped to the quartiles ± {IQR_FENCE:g} IQR of w (its {percentiles} is wider)"
               if fenced else f"y axis clipped to the {percentiles} of w")
    ax.set_title(f"{title}\n{clipped}", fontsize=10 if not fenced else 9)
    points.finish(ax)
    return ax


def plot_instance_rescaling(report: Report | Measurements, *, dataset: str | None = None, fig=None):
    """Level-3 figure: :func:`plot_rescaling_vs_difficulty` (the teacher's effect, large) above
    :func:`plot_student_rescaling_vs_difficulty` (the trained student, clipped), on one x axis.
    The student panel is left out when the set has no per-example values at all, or no student."""
    measurements, _, _ = _unpack(report)
    dataset = _rescaling_set(measurements, dataset)
    record = measurements.instance.on(dataset)
    alone = record is None or record.examples is None or record.examples.rescaling_weight is None
    fig = new_figure(fig, figsize=(6.0, 4.8 if alone else 7.4))
    if alone:
        plot_rescaling_vs_difficulty(report, dataset=dataset, ax=fig.add_subplot())
        fig.tight_layout()
        return fig
    grid = fig.add_gridspec(2, 1, height_ratios=(3, 2))
    top, bottom = fig.add_subplot(grid[0]), fig.add_subplot(grid[1])
    plot_rescaling_vs_difficulty(report, dataset=dataset, ax=top)
    plot_student_rescaling_vs_difficulty(report, dataset=dataset, ax=bottom)
    if top.collections and bottom.collections:  # both drew examples: one difficulty axis
        bottom.set_xlim(top.get_xlim())
    fig.tight_layout(h_pad=1.5)
    fig.align_ylabels([top, bottom])
    return fig


@dataclass(frozen=True)
class _RescalingPoints:
    """The examples one rescaling panel draws: difficulty (display-transformed) and w, subsampled."""

    x: np.ndarray  # drawn difficulty (jittered when discrete)
    w: np.ndarray  # drawn weights
    all_x: np.ndarray  # every example with a difficulty and a finite w (binned medians, percentiles)
    all_w: np.ndarray
    log: bool  # difficulty on a log axis
    jittered: bool
    n_total: int
    n_no_difficulty: int  # NaN difficulty: outside the k-NN subsample
    n_not_finite: int  # w overflowed
    n_zero: int  # loss 0, drawn at the smallest positive loss
    source: str | None  # instance.difficulty_source
    low_weight_cut: float  # the record's cut: w below it counts as down-weighted

    @classmethod
    def build(cls, record: InstanceOnSet | None, weight: Callable[[PerExample], np.ndarray], max_points: int):
        """The points of ``record``'s per-example ``weight`` vs difficulty; None when there are none."""
        if record is None or record.examples is None or weight(record.examples) is None:
            return None
        difficulty = np.asarray(record.examples.difficulty, dtype=float)
        weights = np.asarray(weight(record.examples), dtype=float)
        if difficulty.shape != weights.shape:
            raise ValueError(f"the {record.dataset} set has {difficulty.size} difficulties but {weights.size} "
                             f"rescaling weights")
        known = np.isfinite(difficulty)
        usable = known & np.isfinite(weights)
        if not usable.any():
            return None
        source = record.difficulty_source.value
        log = _log_difficulty(difficulty[usable], source)
        all_x, all_w = difficulty[usable], weights[usable]
        n_zero = 0
        if log:  # a loss of exactly 0 has no place on a log axis: drawn at the smallest positive loss
            floor = float(all_x[all_x > 0].min())
            n_zero = int(np.sum(all_x <= 0))
            all_x = np.maximum(all_x, floor)
        rng = np.random.default_rng(0)
        keep = np.arange(all_x.size)
        if keep.size > max_points:
            keep = np.sort(rng.choice(keep, size=max_points, replace=False))
        x, w = all_x[keep], all_w[keep]
        jittered = not log and np.unique(all_x).size <= 20
        if jittered:  # discrete difficulty (k-NN disagreement): spread the points for display only
            span = float(np.ptp(all_x)) or 1.0
            x = x + rng.uniform(-0.015, 0.015, size=x.size) * span
        return cls(x, w, all_x, all_w, log=log, jittered=bool(jittered), n_total=difficulty.size,
                   n_no_difficulty=int(np.sum(~known)), n_not_finite=int(np.sum(known & ~np.isfinite(weights))),
                   n_zero=n_zero, source=source, low_weight_cut=float(record.low_weight_cut))

    def draw(self, ax, *, color: str, label: str, clip: tuple[float, float] | None = None) -> int:
        """Scatter, binned medians and reference lines; with ``clip``, points beyond it sit on the edge
        as triangles. Returns how many drawn points lie beyond ``clip``."""
        inside = np.ones(self.w.size, dtype=bool) if clip is None else (self.w >= clip[0]) & (self.w <= clip[1])
        ax.scatter(self.x[inside], self.w[inside], s=6, alpha=0.35, color=color, linewidths=0, label=label)
        beyond = int(np.sum(~inside))
        if clip is not None:
            for edge, marker, side in ((clip[1], "^", self.w > clip[1]), (clip[0], "v", self.w < clip[0])):
                if side.any():
                    ax.scatter(self.x[side], np.full(side.sum(), edge), s=14, marker=marker, color=color,
                               alpha=0.6, linewidths=0, clip_on=False)
            if beyond:
                ax.scatter([], [], s=14, marker="^", color=color, label=f"{beyond:,} beyond the y range (▲▼)")
        centres, median, q1, q3 = _binned_median(self.all_x, self.all_w, log=self.log, discrete=self.jittered)
        if centres.size:
            ax.fill_between(centres, q1, q3, color="black", alpha=0.10, lw=0)
            ax.plot(centres, median, color="black", lw=1.6, marker="o", ms=3,
                    label="median per difficulty bin (band: 25–75%)")
        for level, style, text, side in ((1.0, "--", "w = 1: plain cross-entropy", "bottom"),
                                         (self.low_weight_cut, ":", f"w < {self.low_weight_cut:g}: down-weighted",
                                          "top")):  # one label above its line, one below: never overlapping
            ax.axhline(level, color="black", lw=0.9, ls=style)
            ax.text(0.01, level, text, transform=ax.get_yaxis_transform(), ha="left", va=side, fontsize=7,
                    bbox={"facecolor": "white", "alpha": 0.6, "edgecolor": "none", "pad": 0.5})
        return beyond

    def finish(self, ax) -> None:
        """Axis scale and label, the count of drawn examples, the legend."""
        source = self.source
        if self.log:
            log_scale(ax)
        xlabel = {"baseline_loss": "difficulty: baseline student's loss (nats, log scale)",
                  "knn_disagreement_features": "difficulty: k-NN label disagreement (teacher features)",
                  "knn_disagreement_logits": "difficulty: k-NN label disagreement (teacher logits)",
                  "token_frequency": "difficulty: target token's surprisal, −log frequency (nats)"}
        label = xlabel.get(source, "difficulty" + (" (log scale)" if self.log else ""))
        ax.set_xlabel(label + (", jittered" if self.jittered else ""), fontsize=9)
        ax.grid(alpha=0.25, lw=0.5)
        drawn = f"{self.x.size:,} of {self.n_total:,} examples drawn"
        dropped = []
        if self.n_no_difficulty:
            dropped.append(f"{self.n_no_difficulty:,} without a difficulty (outside the k-NN subsample)")
        if self.n_not_finite:
            dropped.append(f"{self.n_not_finite:,} with w overflowing")
        if self.n_zero:
            dropped.append(f"{self.n_zero:,} with loss 0 at the left edge")
        text = textwrap.fill(drawn + (": " + "; ".join(dropped) if dropped else ""), 70)
        ax.text(0.99, 0.015, text, transform=ax.transAxes, ha="right", va="bottom", fontsize=7,
                color="#555555", bbox={"facecolor": "white", "alpha": 0.7, "edgecolor": "none", "pad": 1.0})
        handles = legend_below(ax, fontsize=7, markerscale=2)
        for handle in handles.legend_handles:
            handle.set_alpha(1.0)


# ---------------------------------------------------------------- helpers

def _rescaling_set(measurements: Measurements, dataset: str | None) -> str:
    """The set the level-3 panels draw: ``dataset``, else transfer when it has per-example values, else eval."""
    if dataset is not None:
        return dataset
    transfer = measurements.instance.transfer
    return TRANSFER if transfer is not None and transfer.examples is not None else EVAL


def _untrained_weight(examples: PerExample) -> np.ndarray:
    return examples.untrained_rescaling_weight


def _trained_weight(examples: PerExample) -> np.ndarray:
    return examples.rescaling_weight


def _log_difficulty(difficulty: np.ndarray, source: str | None) -> bool:
    """Whether to draw difficulty on a log axis: a loss (spanning decades), never a share in [0, 1]."""
    if source is not None and (source.startswith("knn_disagreement") or source == "token_frequency"):
        return False  # a share, or already a logarithm
    positive = difficulty[difficulty > 0]
    if source == "baseline_loss":
        return positive.size > 0
    return positive.size > 0 and float(positive.max()) > 100 * float(positive.min())


def _binned_median(x: np.ndarray, w: np.ndarray, *, log: bool, discrete: bool,
                   min_count: int = 5) -> tuple[np.ndarray, ...]:
    """Median and quartiles of ``w`` per difficulty bin: per distinct value when ``discrete``, else
    up to 12 equal-count bins (centres geometric on a log axis). Bins with < ``min_count`` are skipped."""
    if discrete:
        bins = [x == value for value in np.unique(x)]
    else:
        n_bins = int(np.clip(x.size // 50, 1, 12))
        edges = np.unique(np.quantile(x, np.linspace(0, 1, n_bins + 1)))
        which = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, max(edges.size - 2, 0))
        bins = [which == b for b in range(max(edges.size - 1, 1))]
    rows = []
    for members in bins:
        if members.sum() < min_count:
            continue
        xs = x[members]
        centre = float(np.exp(np.mean(np.log(xs)))) if log else float(np.mean(xs))
        rows.append((centre, *np.percentile(w[members], (50, 25, 75))))
    if not rows:
        return (np.zeros(0),) * 4
    return tuple(np.array(column) for column in zip(*rows))


def _bin_marker_area(counts: np.ndarray, max_count: float) -> np.ndarray:
    """Marker area (points²) proportional to a reliability bin's count, from 10 to 90."""
    return 10.0 + 80.0 * counts / max(float(max_count), 1.0)


def _ordinal(value: float) -> str:
    number = f"{value:g}"
    suffix = "th" if number.endswith(("11", "12", "13")) else {"1": "st", "2": "nd", "3": "rd"}.get(number[-1], "th")
    return number + suffix


def _plain_log_axis(ax, values: np.ndarray) -> None:
    """A log x axis labelled with plain numbers (0.5, 1, 2, 4, …) instead of powers of ten."""
    from matplotlib.ticker import FixedLocator, NullLocator

    log_scale(ax)
    finite = values[np.isfinite(values) & (values > 0)]
    if not finite.size:
        return
    candidates = [0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128, 256]
    ticks = [t for t in candidates if finite.min() / 1.01 <= t <= finite.max() * 1.01]
    ax.xaxis.set_major_locator(FixedLocator(ticks or list(finite[[0, -1]])))
    ax.xaxis.set_minor_locator(NullLocator())


def _unpack(report: Report | Measurements) -> tuple[Measurements, ClassInfo, Settings | None]:
    if isinstance(report, Report):
        return report.measurements, report.class_info, report.settings
    if isinstance(report, Measurements):
        return report, ClassInfo(), None
    raise TypeError(f"plot functions take a kddiag Report or Measurements; got {type(report).__name__}")


def _by_model(record: Any) -> dict[str, Any]:
    """A per-set record's per-model sub-records, by model."""
    return {"teacher": record.teacher, "student": record.student, "baseline": record.baseline}


def _first_set(level: Any) -> Any:
    """The level's transfer-set record, else its eval-set record, else None."""
    records = level.sets()
    return records[0] if records else None


def _given(metric: Measured) -> bool:
    """Whether a value was measured or marked unavailable for a reason (not merely left unmeasured)."""
    return metric.ok or metric.unavailable != NOT_MEASURED


def _reason(metrics: list[Measured], default: str) -> str:
    """Why nothing can be drawn: the first ``unavailable`` message among ``metrics``, else ``default``."""
    return next((metric.unavailable for metric in metrics if metric.unavailable), default)


def _off_diagonal(matrix: np.ndarray) -> np.ndarray:
    return matrix[~np.eye(matrix.shape[0], dtype=bool)]


def _shared_class_order(rows: list[_SimilarityRow]) -> tuple[np.ndarray, int]:
    """The classes every heatmap shows, in one order, and the class count: average-linkage leaf order of the
    teacher's similarity matrix (output-based, else weight-based; any model's if the teacher has none).
    Beyond MAX_HEATMAP_CLASSES classes only the classes most similar to the others (largest off-diagonal
    row sum) are shown: a heatmap of hundreds of classes is texture, not structure."""
    from scipy.cluster.hierarchy import leaves_list, linkage
    from scipy.spatial.distance import squareform

    for model in MODELS:
        for row in rows:
            metric = row.matrices().get(model)
            if metric is None or not metric.ok:
                continue
            similarity = np.nan_to_num(floats(metric.value))
            if similarity.ndim != 2 or similarity.shape[0] != similarity.shape[1]:
                continue
            n_classes = similarity.shape[0]
            shown = np.arange(n_classes)
            if n_classes > MAX_HEATMAP_CLASSES:
                strength = similarity.sum(axis=1) - np.diag(similarity)
                shown = np.sort(np.argsort(-strength, kind="stable")[:MAX_HEATMAP_CLASSES])
                similarity = similarity[np.ix_(shown, shown)]
            n = shown.size
            if n < 3:
                return shown, n_classes
            similarity = (similarity + similarity.T) / 2
            distance = _off_diagonal(similarity).max() - similarity
            np.fill_diagonal(distance, 0.0)
            tree = linkage(squareform(np.clip(distance, 0.0, None), checks=False), method="average",
                           optimal_ordering=n <= 200)
            return shown[leaves_list(tree)], n_classes
    return np.arange(0), 0


def _class_names(class_info: ClassInfo, n_classes: int) -> list[str]:
    if class_info.names is not None and len(class_info.names) == n_classes:
        return [str(name) for name in class_info.names]
    return [str(i) for i in range(n_classes)]


def _class_ticks(ax, names: list[str]) -> None:
    """Class names at cell centres, every k-th one beyond ``MAX_TICK_LABELS`` classes."""
    step = max(1, math.ceil(len(names) / MAX_TICK_LABELS))
    positions = np.arange(0, len(names), step)
    fontsize = 8 if len(names) <= 12 else 7 if len(names) <= 24 else 6
    labels = [names[i] for i in positions]  # the user's words, never read as mathtext ('$…$')
    ax.set_xticks(positions + 0.5, labels, rotation=90, fontsize=fontsize, parse_math=False)
    ax.set_yticks(positions + 0.5, labels, rotation=0, fontsize=fontsize, parse_math=False)
    ax.tick_params(length=0, pad=8)


def _group_strips(ax, groups: np.ndarray) -> None:
    """A colour strip per known class group just outside the left and top edges of a heatmap."""
    import matplotlib
    from matplotlib.patches import Rectangle

    palette = matplotlib.colormaps["tab20"]
    ids = {g: i for i, g in enumerate(sorted(set(groups.tolist())))}
    n = len(groups)
    thickness = n * 0.03
    for i, group in enumerate(groups):
        color = palette(ids[group] % 20)
        ax.add_patch(Rectangle((-thickness, i), thickness, 1, color=color, clip_on=False, lw=0))
        ax.add_patch(Rectangle((i, -thickness), 1, thickness, color=color, clip_on=False, lw=0))


# ---------------------------------------------------------------- token level

def has_token_breakdowns(report: Report | Measurements) -> bool:
    """Whether a set's examples were token positions (the breakdowns were measured)."""
    measurements, _, _ = _unpack(report)
    return any(record.by_position.ok for record in measurements.outcome.sets())


def plot_token_breakdowns(report: Report | Measurements, *, fig=None):
    """Accuracy of teacher and student, their agreement (left axis) and KL(teacher ‖ student) at τ = 1
    (right axis) per bucket of token frequency rank (left panel) and of position in the sequence
    (right panel), on the eval set (else transfer); the share of the set's positions in each bucket under
    its name."""
    measurements, _, _ = _unpack(report)
    fig = new_figure(fig, figsize=(12.0, 3.8))
    axes = fig.subplots(1, 2)
    dataset = EVAL if measurements.outcome.on(EVAL) is not None else TRANSFER
    record = measurements.outcome.on(dataset)
    for ax, (title, value) in zip(axes, (("token frequency rank", record and record.by_token_frequency),
                                         ("position in the sequence", record and record.by_position))):
        ax.set_title(f"{dataset.capitalize()} set, by {title}", fontsize=10)
        if value is None or not value.ok:
            not_available(ax, _reason([] if value is None else [value], "not token-level data"))
            continue
        breakdown = value.value
        x = np.arange(len(breakdown.buckets))
        share = breakdown.count / max(int(breakdown.count.sum()), 1)
        for name, label, color, marker in (("teacher_accuracy", "teacher accuracy", MODEL_COLORS["teacher"], "o"),
                                           ("student_accuracy", "student accuracy", MODEL_COLORS["student"], "s"),
                                           ("agreement", "agreement teacher ↔ student", "#444444", "^")):
            ax.plot(x, breakdown.means[name], marker=marker, ms=4, lw=1.4, color=color, label=label)
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("accuracy, agreement")
        right = ax.twinx()
        right.plot(x, breakdown.means["kl_teacher_student"], ls="--", marker="x", color="#7B3294",
                   label="KL(teacher ‖ student), τ = 1")
        right.set_ylabel("KL, nats", color="#7B3294")
        right.set_ylim(bottom=0)
        ax.set_xticks(x, [f"{name}\n{100 * s:.0f}%" for name, s in zip(breakdown.buckets, share)], fontsize=7)
        lines = ax.get_lines() + right.get_lines()
        legend_below(ax, lines, [line.get_label() for line in lines], fontsize=7)
        ax.grid(alpha=0.25)
    fig.tight_layout()
    return fig
