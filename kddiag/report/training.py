"""The report of a monitored training run: ``monitor.json`` and a self-contained ``monitor.html``.

Both are rendered to strings from a :class:`~kddiag.monitor.Monitor` (its history, findings timeline
and last diagnosis); writing them, atomically, is :meth:`~kddiag.monitor.Monitor.write_report`'s job.
Figures are drawn by :mod:`kddiag.plots.training` on Agg figures and inlined as base64 PNGs.
"""
from __future__ import annotations

import json
import math
import statistics
from typing import TYPE_CHECKING

from kddiag import __version__
from kddiag.history import KEY_MEASUREMENTS
from kddiag.diagnosis.ids import HEALTHY
from kddiag.report.html import axes_figure
from kddiag.report.text import VERDICT_WORDS, format_number, severity_word

if TYPE_CHECKING:
    from kddiag.monitor import Monitor

MONITOR_SCHEMA_VERSION = "1.0"
TABLE_COLUMNS = {  # the table of every call: record field -> column header
    "student_accuracy": "student acc.", "agreement": "agreement", "kl_teacher_student": "KL(t‖s)",
    "student_ece": "student ECE", "output_similarity_transfer_score": "transfer score", "feature_cka": "CKA",
    "tckd": "TCKD", "nckd": "NCKD", "kd_gain": "KD gain",
}


def monitor_to_dict(monitor: "Monitor") -> dict:
    """``monitor.json``: settings, the held-out set, every record and the findings timeline."""
    settings = monitor.settings
    return _strict({
        "monitor_schema_version": MONITOR_SCHEMA_VERSION,
        "kddiag_version": __version__,
        "settings": {name: {"value": s.value, "source": s.source, "guessed": s.guessed}
                     for name, s in (("temperature", settings.temperature), ("alpha", settings.alpha))},
        "data": {"source": monitor.data.name, "n_samples": int(monitor.data.labels.size),
                 "n_classes": monitor.n_classes},
        "every": monitor.every,
        "baseline": monitor.baseline_outputs is not None,
        "history": [record.to_dict() for record in monitor.history],
        "findings_timeline": [span.to_dict() for span in monitor.spans],
    })


def render_training_json(monitor: "Monitor") -> str:
    """``monitor.json`` as a string (strict JSON: NaN and Inf become null)."""
    return json.dumps(monitor_to_dict(monitor), indent=2, allow_nan=False)


def render_training_html(monitor: "Monitor") -> str:
    """``monitor.html`` as one self-contained document (a string; nothing is written)."""
    from jinja2 import Environment, PackageLoader, StrictUndefined

    env = Environment(loader=PackageLoader("kddiag.report", "templates"), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return env.get_template("training.html.j2").render(**_context(monitor))


def _context(monitor: "Monitor") -> dict:
    from kddiag.plots.training import (plot_accuracy_over_steps, plot_ece_over_steps, plot_findings_timeline,
                                      plot_kl_over_steps, plot_decoupled_kd_over_steps, plot_structure_over_steps)

    history = monitor.history
    spans = [s for s in monitor.spans if s.id != HEALTHY]  # findings only: 'healthy' is the verdict, not a problem
    figures = [axes_figure(title, lambda ax, plot=plot: plot(history, ax=ax), (5.6, 3.4)) for title, plot in (
        ("Accuracy and agreement", plot_accuracy_over_steps), ("KL(teacher ‖ student)", plot_kl_over_steps),
        ("Calibration", plot_ece_over_steps), ("Domain knowledge transferred", plot_structure_over_steps),
        ("What the student has yet to take on (decoupled KD)", plot_decoupled_kd_over_steps))]
    timeline = axes_figure("Findings over training", lambda ax: plot_findings_timeline(history, spans, ax=ax),
                       (11.4, 1.4 + 0.45 * max(1, len({s.id for s in spans}))))
    seconds = [r.seconds for r in history]
    last = monitor.last_diagnosis
    settings = monitor.settings
    return {
        "version": __version__,
        "n_samples": int(monitor.data.labels.size), "n_classes": monitor.n_classes, "data": monitor.data.name,
        "every": monitor.every, "n_calls": len(history), "baseline": monitor.baseline_outputs is not None,
        "seconds": format_number(statistics.median(seconds)) if seconds else "—",
        "settings": [{"name": name, "symbol": symbol, "value": f"{s.value:g}", "guessed": s.guessed}
                     for name, symbol, s in (("temperature", "τ", settings.temperature),
                                             ("alpha", "α", settings.alpha))],
        "last_step": history[-1].step if history else None,
        "verdict": last.verdict if last is not None else None,
        "verdict_words": VERDICT_WORDS.get(last.verdict, last.verdict) if last is not None else None,
        "findings": [{"id": f.id, "title": f.title, "severity": f.severity, "severity_word": severity_word(f.severity),
                      "explanation": f.explanation, "advice": f.advice} for f in (last.findings if last else ())],
        "figures": figures, "timeline": timeline,
        "spans": [{"id": s.id, "first": s.first_step, "last": s.last_step,
                   "stopped": "still firing" if s.stopped_step is None else s.stopped_step,
                   "peak": format_number(s.peak_severity), "peak_word": severity_word(s.peak_severity),
                   "n_calls": s.n_calls} for s in spans],
        "columns": [{"label": label, "title": KEY_MEASUREMENTS[name][0]} for name, label in TABLE_COLUMNS.items()],
        "rows": [{"step": r.step, "cells": [format_number(getattr(r, name)) for name in TABLE_COLUMNS],
                  "findings": ", ".join(r.finding_ids) or "—"} for r in history],
    }


def _strict(value):
    """Non-finite floats as None, recursively (strict JSON)."""
    if isinstance(value, dict):
        return {key: _strict(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


