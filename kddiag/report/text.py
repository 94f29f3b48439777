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
from kddiag.errors import printable
from kddiag.diagnosis.ids import HEALTHY, KD_HELPED, NO_VERDICT
from kddiag.diagnosis.reading import kd_gain
from kddiag.diagnosis.wording import kd_helped_title
from kddiag.levels import Measurements, headlines
from kddiag.levels.instance import W_SHOWN_MAX
from kddiag.results import NOT_MEASURED, Measured, Report
from kddiag.diagnosis.findings import Finding, Remedy
from kddiag.options import Settings
from kddiag.types import LEVEL_TITLES, ROLES as MODELS, SECTIONS

WIDTH = 100
ADVICE_LINES = 2  # a finding's advice in the summary, at most (the HTML report and report.json hold it whole)
SETTING_SYMBOLS = (("temperature", "τ"), ("alpha", "α"))  # the distillation settings by name, with their symbol
LEVEL_CODES = {"outcome": "L0", "universe": "L1", "domain": "L2", "instance": "L3"}


# The symbols tables use and what they mean: a table is followed by one line naming those it uses
# (TCKD/NCKD: the two parts of the KD loss in Zhao et al. 2022, Decoupled Knowledge Distillation)
GLOSSARY = (
    (("τ",), "τ: KD temperature"),
    (("α",), "α: soft-term weight"),
    (("T*",), "T*: calibrating temperature"),
    (("ε_eff",), "ε_eff: label smoothing the teacher's targets amount to"),
    (("p_y",), "p_y: true-class probability"),
    (("TCKD", "NCKD"), "TCKD/NCKD: KD on the target / other classes"),
)


CLIPPED_METRICS = ("rescaling_weight_mean", "rescaling_weight_cv")  # report.json names of those two


def clipped_value(value: float, clip: float = W_SHOWN_MAX) -> str:
    """'>100' or '<−100' for a value beyond ±clip."""
    return f"{'>' if value > 0 else '<−'}{clip:g}"


CLIPPED_NOTE = (f"'>{W_SHOWN_MAX:g}': the trained student's mean w or CV is beyond ±{W_SHOWN_MAX:g}, where a few "
                "examples it is saturated on dominate it (report.json keeps the value)")


@dataclass(frozen=True)
class HeadlineTable:
    """One level's headline numbers: rows of (label, data set, teacher, student, baseline cells)."""

    section: str
    rows: tuple[tuple[str, ...], ...]  # (label, data set, one cell per column)
    notes: tuple[str, ...]  # the 'n/a' reasons and column notes, one line each
    columns: tuple[str, ...] = MODELS


def render_text(report: Report) -> str:
    """The terminal summary of ``report`` as plain text (≤ 100 columns), the verdict first."""
    lines = _verdict_lines(report)
    if report.probe is not None:
        lines += ["", *probe_lines(report.probe)]
    for section in SECTIONS:
        lines += ["", *_table_lines(headline_table(report.measurements, section, report.columns))]
    lines += ["", *_settings_lines(report)]
    if report.diagnosis.not_checked:
        lines += ["", "Not checked"]
        for rule, reason in report.diagnosis.not_checked:  # wrapped whole, never cut: the reason is the point
            lines += textwrap.wrap(f"  {rule}: {reason}", WIDTH, subsequent_indent="    ", break_long_words=False,
                                   break_on_hyphens=False)
    return "\n".join(map(printable, lines)) + "\n"  # names read from files cannot drive the terminal


def headline_table(measurements: Measurements, section: str, columns: tuple[str, ...] = MODELS) -> HeadlineTable:
    """The headline rows of one knowledge level, one per metric and data set it was measured on
    (transfer first, then eval, then weights), with a cell per model of ``columns``. Without a student
    column (a teacher-only check) a row shows only when one of its cells has a value."""
    level = {item.LEVEL: item for item in measurements.levels()}[section]
    rows, reasons, was_clipped = [], {}, False
    rows_of, section_notes = headlines(section)
    for headline in rows_of:
        for record in headline.records(level):
            found = {model: metric for model, metric in headline.cells(record).items()
                     if model in columns and (metric.ok or metric.unavailable != NOT_MEASURED)}  # unmeasured: '—'
            if not found or ("student" not in columns and not any(m.ok for m in found.values())):
                continue  # no row, as for a set not given
            cells = []
            for model in columns:
                metric = found.get(model)
                if metric is not None and metric.unavailable:
                    reasons.setdefault(metric.unavailable, []).append(metric.name.split(".", 1)[-1])
                if (headline.clip is not None and metric is not None and metric.ok
                        and abs(float(metric.value)) > headline.clip):
                    cells.append(clipped_value(metric.value, headline.clip))
                    was_clipped = True
                else:
                    cells.append(format_cell(metric))
            rows.append((headline.label, next(iter(found.values())).dataset, *cells))
    notes = [f"n/a: {reason} ({_names(names)})" for reason, names in reasons.items()]
    if section_notes and rows:
        notes += section_notes[:1 if "student" not in columns else None]
    if was_clipped:
        notes.append(CLIPPED_NOTE)
    return HeadlineTable(section, tuple(rows), tuple(notes), columns)


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


def format_cell(metric: Measured | None) -> str:
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


def fired_findings(report: Report) -> tuple[Finding, ...]:
    """The findings rules fired: problems, or room to improve under a 'kd-helped' verdict; everything
    except an explicit 'healthy' finding."""
    return tuple(f for f in report.diagnosis.findings if f.id != HEALTHY)


VERDICT_WORDS = {"problems": "problems", "kd-helped": "KD helped (room to improve)", "healthy": "healthy",
                 "gain-not-checked": "no failure found (no baseline)", "teacher-ready": "teacher ready",
                 "none": "none"}  # a diagnosis's verdict id in words, where only the verdict is shown


def remedy_summary(remedy: Remedy, settings: Settings, *, probe_hint: str = "--probe") -> str:
    """The settings a remedy changes, from the current ones, and whether a probe of this pair backs it:
    'τ 4 → 16 (probed: +2.4 pt [0.2, 4.4])', 'α 0.9 → 0.45 (not tested on this pair: --probe)' (the
    options that would test it: ``probe_hint``)."""
    changes = [(symbol, getattr(settings, name).value, getattr(remedy, name)) for name, symbol in SETTING_SYMBOLS]
    text = ", ".join(f"{symbol} {now:g} → {new:g}" for symbol, now, new in changes if new is not None)
    if remedy.teacher_scale is not None:
        text = ", ".join(filter(None, (text, f"teacher's logits ÷ {remedy.teacher_scale:.2f}")))
    if not remedy.tested:
        return f"{text} (not tested on this pair: {probe_hint})"
    lo, hi = remedy.probe_ci95
    return f"{text} (probed: {100 * remedy.probe_change:+.1f} pt [{100 * lo:.1f}, {100 * hi:.1f}])"


def glossary_lines(texts, indent: str = "  ") -> list[str]:
    """The one-line glossary of the symbols of :data:`GLOSSARY` that ``texts`` (a table's labels) use,
    e.g. '  τ: KD temperature · T*: calibrating temperature'; [] when none."""
    used = [meaning for symbols, meaning in GLOSSARY if any(s in text for s in symbols for text in texts)]
    return textwrap.wrap(" · ".join(used), WIDTH, initial_indent=indent, subsequent_indent=indent + "  ",
                         break_on_hyphens=False) if used else []


def clip(line: str, width: int = WIDTH) -> str:
    """``line`` cut to ``width`` columns at a word boundary, ending with '…' where it was cut (mid-word
    only when a single word fills the line)."""
    if len(line) <= width:
        return line
    kept = line[:max(line.rfind(" ", 0, width), 0)].rstrip()  # up to the last space that leaves room for '…'
    return (kept or line[:width - 1]) + "…"


# ---------------------------------------------------------------- private

def _verdict_lines(report: Report) -> list[str]:
    """The verdict line, a guessed τ/α right under it, then each finding with its advice and remedy."""
    findings, verdict, guessed = fired_findings(report), report.diagnosis.verdict, _guessed_lines(report.settings)
    if verdict == NO_VERDICT or not report.diagnosis.findings:
        return ["Verdict: none — no diagnosis rule could run (see Not checked).", *guessed]
    if not findings:  # healthy, or no failure found without a baseline to judge the outcome
        finding = report.diagnosis.findings[0]
        if verdict == HEALTHY:
            return [clip(f"Verdict: healthy — {finding.title}"), *guessed]
        return [clip(f"Verdict: {finding.title}"), *guessed, *_advice_lines(finding, report, "  ")]
    if verdict == KD_HELPED:
        title = kd_helped_title(kd_gain(report.measurements))
        count = f"{len(findings)} notes" if len(findings) > 1 else "1 note"
        aside = f"{count}: room to improve"
    else:
        title = findings[0].title
        count = f"{len(findings)} problems" if len(findings) > 1 else "1 problem"
        aside = f"{count}, most severe first"
    line = f"Verdict: {title} ({aside})"
    if len(line) > WIDTH:  # shorten the aside before clipping the title
        line = f"Verdict: {title} ({count})"
    lines = [clip(line), *guessed]
    id_width = max(len(f.id) for f in findings)
    for rank, finding in enumerate(findings, start=1):
        severity = f"{severity_word(finding.severity)} {finding.severity:.2f}"
        levels = ",".join(LEVEL_CODES.get(level, level) for level in finding.levels)
        head = f"  {rank}. {severity:<11} {levels:<5} {finding.id:<{id_width}}  "
        line = head + evidence_summary(finding, short=True)
        if len(line) > WIDTH:  # drop the data set before clipping the number away
            line = head + evidence_summary(finding, short=True, dataset=False)
        lines += [clip(line), *_advice_lines(finding, report, "     ")]
    return lines


def _guessed_lines(settings: Settings) -> list[str]:
    """'  τ = 4, α = 0.9 GUESSED: pass …', for the line under the verdict; none when both were given."""
    guessed = [(name, symbol, getattr(settings, name).value) for name, symbol in SETTING_SYMBOLS
               if getattr(settings, name).guessed]
    if not guessed:
        return []
    several = len(guessed) > 1
    values = ", ".join(f"{symbol} = {value:g}" for _, symbol, value in guessed)
    flags = "/".join(f"--{name}" for name, _, _ in guessed)
    line = f"{values} GUESSED: pass {flags} or --config, the verdict depends on {'them' if several else 'it'}"
    return textwrap.wrap(line, WIDTH, initial_indent="  ", subsequent_indent="    ")


def _advice_lines(finding: Finding, report: Report, indent: str) -> list[str]:
    """A finding's advice in at most ``ADVICE_LINES`` lines (cut at a word, with '…'), then its remedy."""
    lines = textwrap.wrap(finding.advice, WIDTH, initial_indent=f"{indent}advice: ",
                          subsequent_indent=indent + " " * len("advice: "), max_lines=ADVICE_LINES,
                          placeholder="…", break_on_hyphens=False)
    if finding.remedy is not None:
        hint = "--student-arch ARCH --probe" if report.teacher_only else "--probe"
        lines.append(clip(f"{indent}remedy: {remedy_summary(finding.remedy, report.settings, probe_hint=hint)}"))
    return lines


def _table_lines(table: HeadlineTable) -> list[str]:
    title = LEVEL_TITLES[table.section]
    if not table.rows:
        return [title, "  (nothing measured at this level)"]
    rows, notes = list(table.rows), list(table.notes)
    label_width = max(30, *(len(row[0]) for row in rows))
    cell_width = max(10, *(len(cell) for row in rows for cell in row[2:]))
    if 2 + label_width + 9 + len(table.columns) * (cell_width + 1) > WIDTH:  # too wide: values without intervals
        rows = [(*row[:2], *(cell.split(" [")[0] for cell in row[2:])) for row in rows]
        cell_width = max(10, *(len(cell) for row in rows for cell in row[2:]))
        notes.append("95% intervals: see report.json or the HTML report")
    header = f"  {'metric':<{label_width}} {'set':<8}" + "".join(f" {m:>{cell_width}}" for m in table.columns)
    lines = [title, clip(header)]
    for label, dataset, *cells in rows:
        line = f"  {label:<{label_width}} {dataset:<8}" + "".join(f" {c:>{cell_width}}" for c in cells)
        lines.append(clip(line.rstrip()))
    for note in notes:  # notes wrap rather than lose their end
        lines += textwrap.wrap(note, WIDTH, initial_indent="  ", subsequent_indent="    ")
    return lines + glossary_lines([row[0] for row in rows])


def _settings_lines(report: Report) -> list[str]:
    lines = ["Settings (distillation)"]
    for name, symbol in SETTING_SYMBOLS:
        setting = getattr(report.settings, name)
        source = f"from the {setting.provenance}"
        if setting.guessed:
            source = f"GUESSED (default; pass --{name} or the run's --config to set it)"
        lines.append(clip(f"  {name} {symbol} = {setting.value:g}   {source}"))
    lines += ["", f"Inputs (kddiag {__version__}, {report.n_classes} classes)"]
    for info in report.inputs:
        size = f", {info.n_samples} examples" if info.n_samples is not None else ""
        tail = f" ({info.format}{size})"
        room = WIDTH - 12 - len(tail)  # a long path loses its start, not the format
        path = info.path if len(info.path) <= room else "…" + info.path[-(room - 1):]
        lines.append(clip(f"  {info.role:<9} {path}{tail}"))
        for note in info.notes:  # how the checkpoint was read: which weights, what was skipped
            lines += textwrap.wrap(note, WIDTH, initial_indent=" " * 12, subsequent_indent=" " * 14)
    for coverage in report.coverage:
        if coverage.restricted:  # say what was read on a sample or on a class subset
            lines += textwrap.wrap(coverage.describe(), WIDTH, initial_indent="  ", subsequent_indent="    ")
    return lines


def _short(value: float) -> str:
    """A confidence bound, compact: 2 decimals, without the leading zero below 1 (.96, -.02)."""
    if not abs(value) < 100:
        return format_number(value)
    text = f"{value:.2f}"
    return text.replace("0.", ".", 1) if abs(value) < 1 else text


def _names(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f", +{len(names) - 3} more" if len(names) > 3 else "")


def probe_lines(probe, indent: str = "") -> list[str]:
    """The remedy probes as a table: each setting's held-out accuracy, its change against the control with
    the 95 % interval, and what that means; or why nothing was probed. Every line starts with ``indent``."""
    from kddiag.diagnosis.advice import change_text

    if not probe.ran:
        return textwrap.wrap(f"Probes: not run — {probe.not_probed}", WIDTH, initial_indent=indent,
                             subsequent_indent=indent + "  ")
    d = probe.design
    head = (f"Probes of this pair ({d.seeds} seed(s) × {d.length_text}; from a fresh "
            f"initialization, Adam lr {d.learning_rate:g} ({d.learning_rate_source}); {d.seconds:.0f} s)")
    lines = textwrap.wrap(head, WIDTH, initial_indent=indent, subsequent_indent=indent)
    width = max(28, *(len(a.candidate.label) for a in probe.arms))
    lines.append(clip(f"{indent}  {'setting':<{width}} {'accuracy':>8}  {'change vs control':<22} verdict"))
    for arm in probe.arms:
        accuracy = "—" if arm.accuracy is None else f"{arm.accuracy:.3f}"
        change = "" if arm.ci is None else change_text(arm)
        verdict = arm.failed or ("" if arm.verdict == "control" else arm.verdict)
        lines.append(clip(f"{indent}  {arm.candidate.label:<{width}} {accuracy:>8}  {change:<22} {verdict}".rstrip()))
    return lines + glossary_lines([arm.candidate.label for arm in probe.arms], indent=indent + "  ")

