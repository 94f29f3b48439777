"""Figures of a monitored training run: each ``plot_*`` draws the records over the training steps.

Every function takes the monitor's history (:class:`~kddiag.history.MonitorRecord`, in step order) and
draws on ``ax`` (created when None); values the records hold as None leave gaps, and a panel with
nothing measured says so. Nothing is recomputed, shown or saved here; matplotlib is imported lazily.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from kddiag.history import KEY_MEASUREMENTS, FindingSpan, MonitorRecord
from kddiag.plots._common import MODEL_COLORS, SECOND_COLOR, legend_below, log_scale, new_axes, not_available

SEVERITY_CMAP = "YlOrRd"


def plot_accuracy_over_steps(history: Sequence[MonitorRecord], *, ax=None):
    """Student accuracy and top-1 agreement with the teacher per step; the teacher's and the
    baseline's accuracy (fixed during training) as horizontal lines."""
    ax = new_axes(ax)
    drawn = _curves(ax, history, (("student_accuracy", MODEL_COLORS["student"], "o"),
                                  ("agreement", SECOND_COLOR, "s")))
    _levels(ax, history, (("teacher_accuracy", MODEL_COLORS["teacher"], "--"),
                          ("baseline_accuracy", MODEL_COLORS["baseline"], ":")))
    return _finish(ax, drawn, "Accuracy and agreement", "fraction of the held-out set")


def plot_kl_over_steps(history: Sequence[MonitorRecord], *, ax=None):
    """KL(teacher ‖ student) at τ = 1 and at the distillation τ per step (nats)."""
    ax = new_axes(ax)
    drawn = _curves(ax, history, (("kl_teacher_student", MODEL_COLORS["student"], "o"),
                                  ("kl_teacher_student_at_temperature", SECOND_COLOR, "s")))
    return _finish(ax, drawn, "KL(teacher ‖ student)", "nats")


def plot_ece_over_steps(history: Sequence[MonitorRecord], *, ax=None):
    """Student ECE per step; the teacher's and the baseline's as horizontal lines."""
    ax = new_axes(ax)
    drawn = _curves(ax, history, (("student_ece", MODEL_COLORS["student"], "o"),))
    _levels(ax, history, (("teacher_ece", MODEL_COLORS["teacher"], "--"),
                          ("baseline_ece", MODEL_COLORS["baseline"], ":")))
    return _finish(ax, drawn, "Calibration (ECE at τ = 1)", "ECE")


def plot_structure_over_steps(history: Sequence[MonitorRecord], *, ax=None):
    """The class-similarity transfer score (Spearman of the student's class similarity with the
    teacher's) and the feature CKA per step; the baseline's transfer score as a horizontal line."""
    ax = new_axes(ax)
    drawn = _curves(ax, history, (("output_similarity_transfer_score", MODEL_COLORS["student"], "o"),
                                  ("feature_cka", SECOND_COLOR, "s")))
    _levels(ax, history, (("baseline_output_similarity_transfer_score", MODEL_COLORS["baseline"], ":"),))
    return _finish(ax, drawn, "Domain knowledge transferred", "score")


def plot_decoupled_kd_over_steps(history: Sequence[MonitorRecord], *, ax=None):
    """KL(teacher ‖ student) at τ split in its target-class part (TCKD) and its non-target part (NCKD,
    Zhao et al. 2022) per step, on a log scale: how much of what the student has not yet taken on is
    the teacher's confidence in the label, and how much its ranking of the wrong classes (the trained
    student's rescaling weight w is not drawn: it is heavy-tailed where the student is confident)."""
    ax = new_axes(ax)
    drawn = _curves(ax, history, (("tckd", MODEL_COLORS["student"], "o"), ("nckd", SECOND_COLOR, "s")))
    if drawn and all(v > 0 for r in history for v in (r.tckd, r.nckd) if v is not None):
        log_scale(ax, "y")
    return _finish(ax, drawn, "What the student has yet to take on (decoupled KD)", "nats")


def plot_findings_timeline(history: Sequence[MonitorRecord], spans: Sequence[FindingSpan], *, ax=None):
    """One row per finding id (in order of first firing): a bar over each stretch of calls it fired at,
    and a dot per call coloured by its severity."""
    from matplotlib import colormaps
    from matplotlib.colors import Normalize

    ax = new_axes(ax)
    ax.set_title("Findings over training", loc="left")
    ids = list(dict.fromkeys(span.id for span in spans))
    if not ids:
        return not_available(ax, "no finding fired" if history else "no call yet")
    cmap, norm = colormaps[SEVERITY_CMAP], Normalize(0.0, 1.0)
    row = {finding_id: k for k, finding_id in enumerate(ids)}
    for span in spans:
        ax.plot([span.first_step, span.last_step], [row[span.id]] * 2, color="#c7ccd6", lw=6,
                solid_capstyle="round", zorder=1)
    steps, rows, severities = [], [], []
    for record in history:
        for mark in (m for m in record.findings if m.id in row):  # the findings the spans show
            steps.append(record.step)
            rows.append(row[mark.id])
            severities.append(mark.severity)
    points = ax.scatter(steps, rows, c=severities, cmap=cmap, norm=norm, s=36, edgecolors="black",
                        linewidths=0.4, zorder=2)
    ax.figure.colorbar(points, ax=ax, label="severity", fraction=0.04, pad=0.01)
    ax.set_yticks(range(len(ids)), ids)
    ax.set_ylim(len(ids) - 0.5, -0.5)
    ax.set_xlim(*_step_range(history))
    ax.set_xlabel("training step")
    ax.grid(axis="x", alpha=0.3)
    return ax


# ---------------------------------------------------------------------- helpers

def _series(history: Sequence[MonitorRecord], name: str) -> tuple[np.ndarray, np.ndarray]:
    steps = np.array([r.step for r in history], dtype=np.float64)
    values = np.array([np.nan if getattr(r, name) is None else getattr(r, name) for r in history], dtype=np.float64)
    return steps, values


def _curves(ax, history: Sequence[MonitorRecord], curves) -> bool:
    """Draw each (field, colour, marker) as a line over the steps; whether any value was drawn."""
    drawn = False
    for name, color, marker in curves:
        steps, values = _series(history, name)
        if np.isfinite(values).any():
            ax.plot(steps, values, color=color, marker=marker, ms=4, lw=1.5, label=KEY_MEASUREMENTS[name][0])
            drawn = True
    return drawn


def _levels(ax, history: Sequence[MonitorRecord], levels) -> None:
    """A horizontal line at the last measured value of each fixed (teacher, baseline) quantity."""
    for name, color, style in levels:
        _, values = _series(history, name)
        finite = values[np.isfinite(values)]
        if finite.size:
            ax.axhline(finite[-1], color=color, ls=style, lw=1.2, label=KEY_MEASUREMENTS[name][0])


def _finish(ax, drawn: bool, title: str, ylabel: str, *, legend: bool = True):
    ax.set_title(title, loc="left")
    if not drawn:
        return not_available(ax, "not measured at any call")
    ax.set_xlabel("training step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if legend:
        legend_below(ax, fontsize=8)
    return ax


def _step_range(history: Sequence[MonitorRecord]) -> tuple[float, float]:
    steps = [r.step for r in history] or [0]
    pad = max(1.0, 0.03 * (max(steps) - min(steps)))
    return min(steps) - pad, max(steps) + pad
