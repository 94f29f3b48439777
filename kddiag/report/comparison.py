"""A comparison of several students of one teacher as text, JSON and one self-contained HTML page.

The key measurements side by side (:func:`~kddiag.comparison.key_measurements`), which student is best on
held-out data and why, each student's gain over the baseline and its diagnosis; the JSON holds each
student's full report as :func:`~kddiag.report.json.report_to_dict` writes it.
"""
from __future__ import annotations

import json
import textwrap

from kddiag import SCHEMA_VERSION, __version__
from kddiag.comparison import Comparison, key_measurements
from kddiag.errors import printable
from kddiag.diagnosis.ids import HEALTHY
from kddiag.diagnosis.wording import gain_points
from kddiag.report.json import _jsonable, report_to_dict
from kddiag.report.text import (LEVEL_CODES, VERDICT_WORDS, WIDTH, clip, evidence_summary, fired_findings,
                                format_cell, glossary_lines, probe_lines, remedy_summary, severity_word)



def comparison_to_dict(comparison: Comparison) -> dict:
    """The documented ``report.json`` of a comparison (docs/metrics.md): the ranking, the key table and
    each student's full report."""
    ranking = comparison.ranking
    margin = ranking.margin
    return _jsonable({
        "schema_version": SCHEMA_VERSION,
        "kddiag_version": __version__,
        "kind": "comparison",
        "students": list(comparison.names),
        "best": {"student": None if ranking.best is None else comparison.names[ranking.best],
                 "dataset": ranking.dataset, "order": [comparison.names[k] for k in ranking.order],
                 "margin": margin.to_dict(), "clear": ranking.clear, "reasons": list(ranking.reasons),
                 "beat_baseline": (None if ranking.beat_baseline is None
                                   else [comparison.names[k] for k in ranking.beat_baseline])},
        "table": comparison.table(),
        "reports": {name: report_to_dict(report) for name, report in zip(comparison.names, comparison.reports)},
    })


def render_comparison_json(comparison: Comparison) -> str:
    return json.dumps(comparison_to_dict(comparison), indent=2, allow_nan=False) + "\n"


def render_comparison_text(comparison: Comparison) -> str:
    """The terminal summary: the best student and why, the key table, each student's findings."""
    names, ranking = comparison.names, comparison.ranking
    lines = [f"Comparison of {len(names)} students of one teacher"]
    if ranking.best is None:
        lines.append("Best: not ranked (no student accuracy was measured)")
    else:
        lines.append(f"Best on the {ranking.dataset} set: {names[ranking.best]}"
                     + ("" if ranking.clear else " (not clearly: within the noise of the runner-up)"))
    for reason in ranking.reasons:
        lines += textwrap.wrap(reason, WIDTH, initial_indent="  - ", subsequent_indent="    ")
    lines += _ranking_lines(comparison)
    lines += ["", "Key measurements"]
    table = key_measurements(comparison)
    label_width = max(len(row.label) for row, _ in table)
    cell_width = max(12, *(len(name) for name in names))
    room = (WIDTH - 4 - label_width) // (cell_width + 1)
    for start in range(0, len(names), max(1, room)):  # many students: the table wraps in blocks of columns
        shown = range(start, min(len(names), start + max(1, room)))
        lines.append(f"  {'':<{label_width}}" + "".join(f" {names[k][:cell_width]:>{cell_width}}" for k in shown))
        for row, values in table:
            cells = "".join(f" {format_cell(values[k]).split(' [')[0]:>{cell_width}}" for k in shown)
            lines.append(f"  {row.label:<{label_width}}{cells}")
    lines += glossary_lines([row.label for row, _ in table])
    lines += ["", "Diagnosis per student"]
    for name, report in zip(names, comparison.reports):
        findings = fired_findings(report)
        verdict = VERDICT_WORDS.get(report.diagnosis.verdict, report.diagnosis.verdict)
        lines.append(f"  {name}: {verdict}")
        for finding in findings:
            lines.append(clip(f"    {severity_word(finding.severity)} {finding.severity:.2f}  {finding.id}  "
                              f"{evidence_summary(finding, short=True)}"))
            if finding.remedy is not None:
                lines.append(clip(f"      remedy: {remedy_summary(finding.remedy, report.settings)}"))
        if report.probe is not None:
            lines += probe_lines(report.probe, indent="    ")
    return "\n".join(map(printable, lines)) + "\n"  # names read from files cannot drive the terminal


def _ranking_lines(comparison: Comparison) -> list[str]:
    """The students best first, each with its accuracy and its KD gain over the baseline (95 % interval)."""
    names, ranking = comparison.names, comparison.ranking
    if ranking.dataset is None:
        return []
    width = max(len(name) for name in names)
    lines = ["", f"Ranking on the {ranking.dataset} set: accuracy, KD gain over the baseline [95 % interval]"]
    for place, k in enumerate(ranking.order, start=1):
        accuracy, gain = ranking.accuracy[k], ranking.gain[k]
        shown = f"{accuracy.value:.1%}" if accuracy.ok else "n/a"
        versus = gain_points(gain) if gain.ok else "— (no baseline)"
        lines.append(clip(f"  {place}. {names[k]:<{width}}  {shown:>6}  {versus}"))
    return lines


def render_comparison_html(comparison: Comparison) -> str:
    """The comparison as one self-contained HTML document."""
    from kddiag.plots.compare import (plot_accuracy_vs_temperature, plot_students_accuracy,
                                      plot_students_reliability, student_colors)
    from kddiag.report.html import _environment, _finding, axes_figure

    names, ranking = comparison.names, comparison.ranking
    colors = student_colors(comparison)

    def figure(title, plot, size, **options):
        return axes_figure(title, lambda ax: plot(comparison, ax=ax, **options), size)

    taus = {report.settings.temperature.value for report in comparison.reports}
    figures = [figure("Accuracy", plot_students_accuracy, (6.4, 0.5 * len(names) + 2.2)),
               figure("Reliability", plot_students_reliability, (5.4, 4.6), dataset=ranking.dataset or "eval")]
    if len(taus) > 1:
        figures.append(figure("Accuracy against τ", plot_accuracy_vs_temperature, (6.4, 3.8)))
    students = []
    for k, (name, report) in enumerate(zip(names, comparison.reports)):
        students.append({
            "name": name, "color": colors[k], "best": k == ranking.best,
            "verdict": VERDICT_WORDS.get(report.diagnosis.verdict, report.diagnosis.verdict),
            "findings": [_finding(f) for f in fired_findings(report)],
            "healthy": next((_finding(f) for f in report.diagnosis.findings if f.id == HEALTHY), None),
            "source": next((i.path for i in report.inputs if i.role == "student"), ""),
            "settings": f"τ = {report.settings.temperature.value:g} ({report.settings.temperature.provenance}), "
                        f"α = {report.settings.alpha.value:g} ({report.settings.alpha.provenance})",
        })
    first = comparison.reports[0]
    return _environment().get_template("compare.html.j2").render(
        version=__version__, n_classes=first.n_classes, names=names, colors=colors,
        best=None if ranking.best is None else names[ranking.best], clear=ranking.clear,
        none_beat_baseline=ranking.beat_baseline == (),
        dataset=ranking.dataset, reasons=ranking.reasons,
        table=[{"label": row.label, "level": LEVEL_CODES.get(row.level, ""),
                "cells": [format_cell(v) for v in values],
                "leader": _leader(row, values)} for row, values in key_measurements(comparison)],
        figures=figures, students=students,
        inputs=[i.to_dict() for i in first.inputs if i.role != "student"])


def _leader(row, values) -> int | None:
    """The column of the best value of a row with a direction (None without one, or on ties)."""
    scored = [(row.better * v.value, k) for k, v in enumerate(values) if v.ok and isinstance(v.value, float)]
    if not row.better or len(scored) < 2:
        return None
    scored.sort(reverse=True)
    return scored[0][1] if scored[0][0] > scored[1][0] else None
