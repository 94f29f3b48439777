"""The figures of a comparison of several students of one teacher (:class:`~kddiag.comparison.Comparison`),
each student in its own colour on shared axes: accuracy, reliability, and accuracy against τ with the
range where the teacher's targets are informative."""
from __future__ import annotations

import numpy as np

from kddiag.comparison import Comparison
from kddiag.plots._common import MIN_BIN_COUNT, MODEL_COLORS, floats, legend_below, log_scale, new_axes, not_available
from kddiag.results import EVAL, TRANSFER

STUDENT_PALETTE = ("#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#8C564B", "#F0E442", "#332288")


def student_colors(comparison: Comparison) -> list[str]:
    """One colour per student (the palette repeats beyond eight)."""
    return [STUDENT_PALETTE[k % len(STUDENT_PALETTE)] for k in range(len(comparison.names))]


def plot_students_accuracy(comparison: Comparison, *, ax=None):
    """Accuracy with 95 % intervals of the teacher, each student and the baseline, on the eval and the
    transfer set; the best student's name in bold."""
    ax = new_axes(ax, figsize=(6.4, 0.5 * len(comparison.names) + 2.0))
    ax.set_title("Accuracy (95% bootstrap interval)", loc="left")
    first = comparison.reports[0].measurements.outcome
    rows = ([("teacher", lambda o: o.teacher_accuracy, MODEL_COLORS["teacher"])]
            + [(name, None, color) for name, color in zip(comparison.names, student_colors(comparison))]
            + [("baseline", lambda o: o.baseline_accuracy, MODEL_COLORS["baseline"])])
    markers = {TRANSFER: "s", EVAL: "o"}
    drawn = []
    for y, (label, pick, color) in enumerate(rows):
        for dataset, offset in ((TRANSFER, -0.15), (EVAL, 0.15)):
            if pick is None:
                record = comparison.reports[comparison.names.index(label)].measurements.outcome.on(dataset)
                value = None if record is None else record.student_accuracy
            else:
                record = first.on(dataset)
                value = None if record is None else pick(record)
            if value is None or not value.ok:
                continue
            drawn.append(label)
            if value.ci is not None:
                ax.plot(value.ci, [y + offset] * 2, color=color, lw=2, alpha=0.6)
            ax.plot([value.value], [y + offset], marker=markers[dataset], ms=7, ls="none", color=color,
                    markerfacecolor=color if dataset == EVAL else "white")
            ax.annotate(f"{value.value:.3f}", (value.value, y + offset), xytext=(6, -3), textcoords="offset points",
                        fontsize=7)
    if not drawn:
        return not_available(ax, "no accuracy measured")
    ax.set_yticks(range(len(rows)), [label for label, _, _ in rows])
    best = comparison.ranking.best
    for k, tick in enumerate(ax.get_yticklabels()[1:-1]):
        tick.set_color(rows[k + 1][2])
        if k == best:
            tick.set_fontweight("bold")
    ax.set_ylim(len(rows) - 0.5, -0.5)
    for dataset, marker in markers.items():
        ax.plot([], [], marker=marker, ls="none", color="black", markerfacecolor="black" if dataset == EVAL else "white",
                label=f"{dataset} set")
    ax.set_xlabel("accuracy")
    legend_below(ax, fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    return ax


def plot_students_reliability(comparison: Comparison, *, dataset: str = EVAL, ax=None):
    """Every student's reliability curve on ``dataset`` (bins of at least MIN_BIN_COUNT examples) over the
    teacher's, and the diagonal of perfect calibration; ECE in the legend."""
    ax = new_axes(ax, figsize=(5.2, 4.6))
    ax.set_title(f"Reliability diagram ({dataset} set)")
    curves = [("teacher", comparison.reports[0], lambda r: r.teacher, MODEL_COLORS["teacher"], "--")]
    curves += [(name, report, lambda r: r.student, color, "-")
               for name, report, color in zip(comparison.names, comparison.reports, student_colors(comparison))]
    drawn = False
    for label, report, pick, color, style in curves:
        record = report.measurements.universe.on(dataset)
        if record is None or not pick(record).reliability.ok:
            continue
        calibration = pick(record)
        bins = calibration.reliability.value
        confidence, accuracy = floats(bins.bin_confidence), floats(bins.bin_accuracy)
        solid = np.isfinite(confidence) & np.isfinite(accuracy) & (np.nan_to_num(floats(bins.bin_count))
                                                                   >= MIN_BIN_COUNT)
        ece = f" (ECE {calibration.ece.value:.3f})" if calibration.ece.ok else ""
        ax.plot(confidence[solid], accuracy[solid], ls=style, marker="o", ms=3.5, lw=1.5, color=color,
                label=label + ece)
        drawn = True
    if not drawn:
        return not_available(ax, f"no reliability bins on the {dataset} set")
    ax.plot([0, 1], [0, 1], ls=":", color="black", lw=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("confidence (max probability, τ = 1)")
    ax.set_ylabel("accuracy")
    legend_below(ax)
    ax.text(0.99, 0.02, f"bins with ≥ {MIN_BIN_COUNT} examples", transform=ax.transAxes, ha="right", fontsize=7,
            color="#555555")
    ax.grid(alpha=0.25)
    return ax


def plot_accuracy_vs_temperature(comparison: Comparison, *, ax=None):
    """Each student's accuracy on the ranking set (95 % interval) at the τ it was distilled with, over the
    range of τ where the teacher's targets on the transfer set are informative (the what-if, shaded)."""
    ax = new_axes(ax, figsize=(6.0, 3.6))
    dataset = comparison.ranking.dataset or EVAL
    ax.set_title(f"Accuracy at each student's τ ({dataset} set)")
    whatif = comparison.reports[0].measurements.universe.temperature_whatif
    if whatif.ok:
        lo, hi = whatif.value.informative_range
        ax.axvspan(lo, hi, color=MODEL_COLORS["teacher"], alpha=0.12, lw=0,
                   label=f"teacher's targets informative ({whatif.dataset} set): τ {lo:g}–{hi:g}")
    drawn = False
    for name, report, color in zip(comparison.names, comparison.reports, student_colors(comparison)):
        record = report.measurements.outcome.on(dataset)
        value = None if record is None else record.student_accuracy
        if value is None or not value.ok:
            continue
        tau = report.settings.temperature.value
        if value.ci is not None:
            ax.plot([tau, tau], value.ci, color=color, lw=2, alpha=0.6)
        ax.plot([tau], [value.value], "o", ms=7, color=color, label=f"{name} (τ = {tau:g})")
        drawn = True
    if not drawn:
        return not_available(ax, f"no student accuracy on the {dataset} set")
    baseline = comparison.reports[0].measurements.outcome.on(dataset)
    if baseline is not None and baseline.baseline_accuracy.ok:
        ax.axhline(baseline.baseline_accuracy.value, color=MODEL_COLORS["baseline"], ls="--", lw=1,
                   label="baseline (no KD)")
    log_scale(ax, base=2)
    ax.set_xlabel("distillation temperature τ (log scale)")
    ax.set_ylabel("accuracy")
    legend_below(ax)
    ax.grid(alpha=0.25)
    return ax
