"""The terminal summary: verdict first, then one compact table per knowledge level, settings, not checked.

Plain text, at most 100 columns. The per-level headline tables (:func:`headline_table`) are shared
with the HTML report, so both show the same numbers under the same names.
"""
from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass
from typing import Any

from kddiag import __version__
from kddiag.types import EVAL, LEVEL_TITLES, SECTIONS, TRANSFER, Finding, Measurements, Metric, Report

WIDTH = 100
MODELS = ("teacher", "student", "baseline")
LEVEL_CODES = {"outcome": "L0", "universe": "L1", "domain": "L2", "instance": "L3"}
DATASET_ORDER = (TRANSFER, EVAL, "weights")

# Headline rows per level: (label, {column: metric name}). A column holds the metric that is that
# model's own property, or (for comparisons) the one about that model relative to the teacher.
HEADLINES: dict[str, tuple[tuple[str, dict[str, str]], ...]] = {
    "outcome": (
        ("accuracy", {"teacher": "teacher_accuracy", "student": "student_accuracy", "baseline": "baseline_accuracy"}),
        ("top-1 agreement with teacher", {"student": "agreement", "baseline": "baseline_agreement"}),
        ("agreement after relabelling", {"student": "permuted_agreement"}),
        ("KL(teacher‖model), τ=1, nats", {"student": "kl_teacher_student"}),
        ("KL(teacher‖model) at τ, nats", {"student": "kl_teacher_student_at_temperature"}),
        ("KD gain over baseline", {"student": "kd_gain"}),
    ),
    "universe": (
        ("ECE (15 bins)", {m: f"{m}_ece" for m in MODELS}),
        ("NLL, nats", {m: f"{m}_nll" for m in MODELS}),
        ("fitted temperature T*", {m: f"{m}_fitted_temperature" for m in MODELS}),
        ("effective smoothing at τ", {"teacher": "effective_smoothing"}),
        ("saturated share (p_y > 0.99)", {"teacher": "saturation_share"}),
        ("target entropy at τ, nats", {"teacher": "target_entropy"}),
        ("softness gap (eval − transfer)", {"teacher": "softness_gap"}),
    ),
    "domain": (
        ("dark-knowledge content, τ=1", {m: f"{m}_dark_knowledge_content" for m in MODELS}),
        ("dark-knowledge content at τ", {"teacher": "dark_knowledge_content_at_temperature"}),
        ("non-target logit spread", {m: f"{m}_nontarget_logit_spread" for m in MODELS}),
        ("output-sim. match (Spearman)", {"student": "output_similarity_transfer_score",
                                          "baseline": "baseline_output_similarity_transfer_score"}),
        ("weight-sim. match (Spearman)", {"student": "weight_similarity_transfer_score",
                                          "baseline": "baseline_weight_similarity_transfer_score"}),
        ("group recovery AUROC (output)", {m: f"{m}_group_recovery" for m in MODELS}),
        ("group recovery AUROC (weights)", {m: f"{m}_weight_group_recovery" for m in MODELS}),
        ("feature CKA with teacher", {"student": "feature_cka", "baseline": "baseline_feature_cka"}),
    ),
    "instance": (
        ("rescaling weight w, mean", {"student": "rescaling_weight_mean"}),
        ("rescaling weight w, CV", {"teacher": "untrained_rescaling_weight_cv", "student": "rescaling_weight_cv"}),
        ("share of w < 0.5", {"teacher": "untrained_rescaling_weight_low_share",
                              "student": "rescaling_weight_low_share"}),
        ("Spearman(w, −difficulty)", {"teacher": "rescaling_difficulty_correlation"}),
        ("AUROC conf. → student error", {"student": "confidence_error_auroc"}),
        ("TCKD at τ", {"student": "tckd"}),
        ("NCKD at τ", {"student": "nckd"}),
        ("NCKD weight mean(1 − p_y)", {"teacher": "nckd_weight"}),
        ("teacher error rate", {"teacher": "teacher_error_rate"}),
    ),
}
HEADLINE_NOTES = {
    "instance": ("teacher column of the w rows: w of an untrained student, the teacher's effect alone; "
                 "the diagnosis reads these",
                 "student column of the w rows: the trained student's w = g_y / (q¹_y − 1) is heavy-tailed "
                 "where the student is confident (q¹_y → 1), so its mean and CV are dominated by a few "
                 "examples"),
}


@dataclass(frozen=True)
class HeadlineTable:
    """One level's headline numbers: rows of (label, data set, teacher, student, baseline cells)."""

    section: str
    rows: tuple[tuple[str, str, str, str, str], ...]
    notes: tuple[str, ...]  # the 'n/a' reasons and column notes, one line each


def render_text(report: Report) -> str:
    """The terminal summary of ``report`` as plain text (≤ 100 columns), the verdict first."""
    lines = _verdict_lines(report)
    for section in SECTIONS:
        lines += ["", *_table_lines(headline_table(report.measurements, section))]
    lines += ["", *_settings_lines(report)]
    if report.diagnosis.not_checked:
        lines += ["", "Not checked"]
        lines += [_clip(f"  {rule}: {reason}") for rule, reason in report.diagnosis.not_checked]
    return "\n".join(lines) + "\n"


def headline_table(measurements: Measurements, section: str) -> HeadlineTable:
    """The headline rows of one knowledge level, one per metric and data set it was measured on."""
    rows, reasons = [], {}
    for label, columns in HEADLINES[section]:
        for dataset in DATASET_ORDER:
            found = {model: measurements.get(section, name, dataset) for model, name in columns.items()}
            if all(metric is None for metric in found.values()):
                continue
            cells = []
            for model in MODELS:
                metric = found.get(model)
                if metric is not None and metric.unavailable:
                    reasons.setdefault(metric.unavailable, []).append(metric.name)
                cells.append(format_cell(metric))
            rows.append((label, dataset, *cells))
    notes = [f"n/a: {reason} ({_names(names)})" for reason, names in reasons.items()]
    if section in HEADLINE_NOTES and rows:
        notes += HEADLINE_NOTES[section]
    return HeadlineTable(section, tuple(rows), tuple(notes))


def format_number(value: Any) -> str:
    """A metric value for a table cell: 3 decimals, scientific for tiny or huge numbers."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return value
    value = float(value)
    if not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "−inf")
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e4):
        return f"{value:.2e}"
    return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"


def format_cell(metric: Metric | None) -> str:
    """A headline cell: '—' when not measured, 'n/a' when unavailable, else the value [and CI]."""
    if metric is None:
        return "—"
    if metric.unavailable or metric.value is None:
        return "n/a"
    if not isinstance(metric.value, (int, float)):
        return format_number(metric.value) if isinstance(metric.value, str) else "…"
    text = format_number(metric.value)
    if metric.ci is not None:
        text += f" [{_short(metric.ci[0])},{_short(metric.ci[1])}]"
    return text


def severity_word(severity: float) -> str:
    """'high' (≥ 0.7), 'medium' (≥ 0.4) or 'low'."""
    return "high" if severity >= 0.7 else "medium" if severity >= 0.4 else "low"


def evidence_summary(finding: Finding, *, short: bool = False, dataset: bool = True) -> str:
    """The first evidence item of a finding in one phrase, e.g. 'universe.saturation_share = 0.91 > 0.5
    (transfer)'; ``short`` drops the section prefix of the metric name, ``dataset`` the set."""
    if not finding.evidence:
        return ""
    e = finding.evidence[0]
    name = e.metric.split(".", 1)[-1] if short else e.metric
    text = f"{name} = {format_number(e.value)}"
    if e.threshold is not None:
        text += f" {e.comparison} {format_number(e.threshold)}"
    return text + f" ({e.dataset})" if dataset else text


def problem_findings(report: Report) -> tuple[Finding, ...]:
    """The findings that report a problem: everything except an explicit 'healthy' finding."""
    return tuple(f for f in report.diagnosis.findings if f.id != "healthy")


# ---------------------------------------------------------------- private

def _verdict_lines(report: Report) -> list[str]:
    findings = problem_findings(report)
    if not findings:
        return ["Verdict: healthy — no diagnosis rule fired; KD is doing what it should."]
    count = f"{len(findings)} problems" if len(findings) > 1 else "1 problem"
    verdict = f"Verdict: {findings[0].title} ({count}, most severe first)"
    if len(verdict) > WIDTH:  # shorten the aside before clipping the title
        verdict = f"Verdict: {findings[0].title} ({count})"
    lines = [_clip(verdict)]
    id_width = max(len(f.id) for f in findings)
    for rank, finding in enumerate(findings, start=1):
        severity = f"{severity_word(finding.severity)} {finding.severity:.2f}"
        levels = ",".join(LEVEL_CODES.get(level, level) for level in finding.levels)
        head = f"  {rank}. {severity:<11} {levels:<5} {finding.id:<{id_width}}  "
        line = head + evidence_summary(finding, short=True)
        if len(line) > WIDTH:  # drop the data set before clipping the number away
            line = head + evidence_summary(finding, short=True, dataset=False)
        lines.append(_clip(line))
    return lines


def _table_lines(table: HeadlineTable) -> list[str]:
    title = LEVEL_TITLES[table.section]
    if not table.rows:
        return [title, "  (nothing measured at this level)"]
    rows, notes = list(table.rows), list(table.notes)
    label_width = max(30, *(len(row[0]) for row in rows))
    cell_width = max(10, *(len(cell) for row in rows for cell in row[2:]))
    if 2 + label_width + 9 + 3 * (cell_width + 1) > WIDTH:  # too wide: values without their intervals
        rows = [(*row[:2], *(cell.split(" [")[0] for cell in row[2:])) for row in rows]
        cell_width = max(10, *(len(cell) for row in rows for cell in row[2:]))
        notes.append("95% intervals: see report.json or the HTML report")
    header = f"  {'metric':<{label_width}} {'set':<8}" + "".join(f" {m:>{cell_width}}" for m in MODELS)
    lines = [title, _clip(header)]
    for label, dataset, *cells in rows:
        line = f"  {label:<{label_width}} {dataset:<8}" + "".join(f" {c:>{cell_width}}" for c in cells)
        lines.append(_clip(line.rstrip()))
    for note in notes:  # notes wrap rather than lose their end
        lines += textwrap.wrap(note, WIDTH, initial_indent="  ", subsequent_indent="    ")
    return lines


def _settings_lines(report: Report) -> list[str]:
    lines = ["Settings (distillation)"]
    for name, symbol, setting in (("temperature", "τ", report.settings.temperature),
                                  ("alpha", "α", report.settings.alpha)):
        source = {"cli": "from the command line", "checkpoint": "from the student checkpoint"}.get(
            setting.source, setting.source)
        if setting.guessed:
            source = f"GUESSED (default; pass --{name} to set it)"
        lines.append(_clip(f"  {name} {symbol} = {setting.value:g}   {source}"))
    lines += ["", f"Inputs (kddiag {__version__}, {report.n_classes} classes)"]
    for info in report.inputs:
        size = f", {info.n_samples} examples" if info.n_samples is not None else ""
        tail = f" ({info.format}{size})"
        room = WIDTH - 12 - len(tail)  # a long path loses its start, not the format
        path = info.path if len(info.path) <= room else "…" + info.path[-(room - 1):]
        lines.append(_clip(f"  {info.role:<9} {path}{tail}"))
    return lines


def _short(value: float) -> str:
    """A confidence bound, compact: 2 decimals, without the leading zero below 1 (.96, -.02)."""
    if not abs(value) < 100:
        return format_number(value)
    text = f"{value:.2f}"
    return text.replace("0.", ".", 1) if abs(value) < 1 else text


def _names(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f", +{len(names) - 3} more" if len(names) > 3 else "")


def _clip(line: str) -> str:
    return line if len(line) <= WIDTH else line[: WIDTH - 1] + "…"
