"""The self-contained HTML report: one file, inline CSS, figures as base64 PNG, no external URLs.

:func:`render_html` fills ``templates/report.html.j2`` (package data, autoescaped) and returns the
string; writing it (atomically) is the caller's job (:func:`kddiag.report.json.write_atomic`).
"""
from __future__ import annotations

import base64
import dataclasses
import io
import re
from typing import Any, Callable

import numpy as np

from kddiag import __version__
from kddiag.plots.report import (has_token_breakdowns, plot_accuracy, plot_class_similarity, plot_instance_rescaling,
                             plot_reliability, plot_target_confidence, plot_temperature_whatif,
                             plot_token_breakdowns, similarity_columns, similarity_rows)
from kddiag.diagnosis.ids import HEALTHY, KD_HELPED
from kddiag.diagnosis.reading import kd_gain
from kddiag.diagnosis.wording import kd_helped_title
from kddiag.report.json import report_to_dict
from kddiag.report.text import (CLIPPED_METRICS, LEVEL_CODES, W_SHOWN_MAX, clipped_value, evidence_summary, format_cell,
                                fired_findings, format_number, headline_table, severity_word)
from kddiag.errors import printable
from kddiag.results import Measured, OutcomeOnSet, Report
from kddiag.types import EVAL, LEVEL_TITLES, SECTIONS, TRANSFER

DPI = 100
LEVEL_INTROS = {
    "outcome": "What distillation achieved: accuracy of each model, how closely the student follows the "
               "teacher, and the gain over a student trained without KD.",
    "universe": "Soft targets act as label smoothing. How calibrated is the teacher, and how soft are the "
                "targets the student actually saw — on the transfer set, at the distillation τ?",
    "domain": "The teacher's wrong-class mass encodes which classes resemble each other. Is that structure "
              "there, and did the student's geometry take it on (better than the baseline's)?",
    "instance": "The teacher rescales each example's gradient by its difficulty. How unequal are the "
                "weights, and do they track independent difficulty?",
}
_SCHEME = re.compile(r"\b(?:https?|ftp)://", re.IGNORECASE)


def render_html(report: Report) -> str:
    """The report as one self-contained HTML document (a string; nothing is written)."""
    return _environment().get_template("report.html.j2").render(**_context(report))


def _environment():
    """The templates (package data), autoescaped, with no URL scheme let through."""
    from jinja2 import Environment, PackageLoader, StrictUndefined

    return Environment(loader=PackageLoader("kddiag.report", "templates"), autoescape=True,
                       undefined=StrictUndefined, finalize=_without_scheme, trim_blocks=True, lstrip_blocks=True)


def summarize_value(value: Any) -> str:
    """A metric value in a few words: numbers formatted, matrices as 'R×C matrix', long lists counted."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return format_number(value)
    if isinstance(value, dict):
        return "; ".join(f"{key}: {_summarize_part(part, brief=True)}" for key, part in value.items())
    if isinstance(value, (list, tuple)):
        return _summarize_part(list(value))
    return type(value).__name__


# ---------------------------------------------------------------- context

def _context(report: Report) -> dict:
    data = report_to_dict(report)
    measurements = report.measurements
    level_figures: dict[str, list[dict]] = {
        "outcome": [_axes_figure("Accuracy per model and data set", plot_accuracy, report, (6.4, 3.0))]
                   + ([_figure("Per token frequency and position", plot_token_breakdowns, report, (12.0, 3.8))]
                      if has_token_breakdowns(report) else []),
        "universe": [_axes_figure("Reliability diagram", plot_reliability, report, (5.2, 4.6),
                                  dataset=_reliability_set(report)),
                     _axes_figure("Teacher target confidence", plot_target_confidence, report, (5.6, 4.6))],
        "domain": [_figure("Class similarity", plot_class_similarity, report, _similarity_size(report))],
        "instance": [_figure("Rescaling weight vs difficulty", plot_instance_rescaling, report, (6.0, 7.6))],
    }
    levels = [{"id": section, "code": LEVEL_CODES[section], "title": LEVEL_TITLES[section],
               "intro": LEVEL_INTROS[section], "figures": level_figures[section],
               "table": headline_table(measurements, section, report.columns)} for section in SECTIONS]
    return {
        "version": __version__,
        "n_classes": report.n_classes,
        "inputs": [i.to_dict() for i in report.inputs],
        "settings": _settings(report),
        "findings": [_finding(f) for f in fired_findings(report)],
        "healthy": next((_finding(f) for f in report.diagnosis.findings if f.id == HEALTHY), None),
        "verdict": report.diagnosis.verdict,
        "kd_helped": (kd_helped_title(kd_gain(report.measurements))
                      if report.diagnosis.verdict == KD_HELPED else None),  # the verdict's headline
        "not_checked": data["not_checked"],
        "probe": _probe(report.probe),
        "levels": levels,
        "hardest": _hardest_examples(report),
        "whatif_figure": _figure("Temperature what-if", plot_temperature_whatif, report, (13.0, 3.6)),
        "whatif_summary": _whatif_summary(report),
        "fidelity": [] if report.teacher_only else _fidelity_rows(report),
        "teacher_only": report.teacher_only,
        "classes": _class_summary(report),
        "coverage": [c.describe() for c in report.coverage],
        "metrics": [{"section": section, "name": name, "dataset": dataset,
                     "value": (clipped_value(leaf["value"]) if name in CLIPPED_METRICS and isinstance(leaf.get("value"), float)
                               and abs(leaf["value"]) > W_SHOWN_MAX else summarize_value(leaf.get("value"))),
                     "ci": "" if name in CLIPPED_METRICS else
                           "[{}, {}]".format(*(format_number(v) for v in leaf["ci95"])) if leaf.get("ci95") else "",
                     "unavailable": leaf.get("unavailable", "")}
                    for section, names in data["metrics"].items()
                    for name, by_set in names.items() for dataset, leaf in by_set.items()],
    }


def _finding(finding) -> dict:
    return {"id": finding.id, "title": finding.title, "severity": finding.severity,
            "severity_word": severity_word(finding.severity), "summary": evidence_summary(finding),
            "levels": [{"code": LEVEL_CODES.get(level, level), "name": level} for level in finding.levels],
            "evidence": [{"metric": e.metric, "dataset": e.dataset, "value": format_number(e.value),
                          "rule": "" if e.threshold is None else f"{e.comparison} {format_number(e.threshold)}"}
                         for e in finding.evidence],
            "explanation": finding.explanation, "advice": finding.advice}


def _probe(probe) -> dict | None:
    """The remedy probes' table rows, or why they did not run; None when none were asked for."""
    from kddiag.diagnosis.advice import change_text

    if probe is None:
        return None
    if not probe.ran:
        return {"reason": probe.not_probed}
    d = probe.design
    design = (f"{d.seeds} seed(s) × {d.length_text}; from a fresh initialization "
              f"of the student's architecture, Adam lr {d.learning_rate:g} ({d.learning_rate_source}); scored on "
              f"{d.n_eval:,} held-out examples; {d.seconds:.0f} s on {d.where}.")
    arms = [{"label": a.candidate.label, "origin": a.candidate.origin,
             "accuracy": "—" if a.accuracy is None else f"{a.accuracy:.3f}",
             "change": change_text(a) if a.ci is not None else "",
             "verdict": a.failed or ("" if a.verdict == "control" else a.verdict)} for a in probe.arms]
    return {"reason": None, "design": design, "arms": arms}


def _settings(report: Report) -> list[dict]:
    return [{"name": name, "symbol": symbol, "value": f"{s.value:g}", "guessed": s.guessed, "source": s.provenance}
            for name, symbol, s in (("temperature", "τ", report.settings.temperature),
                                    ("alpha", "α", report.settings.alpha))]


FIDELITY_ROWS: tuple[tuple[str, Callable[[OutcomeOnSet], Measured]], ...] = (
    ("top-1 agreement teacher ↔ student", lambda r: r.agreement),
    ("top-1 agreement teacher ↔ baseline", lambda r: r.baseline_agreement),
    ("agreement after class relabelling", lambda r: r.permuted_agreement),
    ("KL(teacher ‖ student) at τ = 1, nats", lambda r: r.kl_teacher_student),
    ("KL(teacher ‖ student) at τ, nats", lambda r: r.kl_teacher_student_at_temperature),
)


def _fidelity_rows(report: Report) -> list[dict]:
    """One row per fidelity value, a cell per data set ('—' for a set not given)."""
    records = {ds: report.measurements.outcome.on(ds) for ds in (TRANSFER, EVAL)}
    if all(record is None for record in records.values()):
        return []
    return [{"label": label, **{ds: format_cell(None if record is None else value(record))
                                for ds, record in records.items()}}
            for label, value in FIDELITY_ROWS]


def _hardest_examples(report: Report) -> dict | None:
    """The hardest examples table of the instance section (transfer set first), with a thumbnail of each
    input when the inputs are images, and whether the teacher gets it wrong."""
    for record in report.measurements.instance.sets():
        examples = record.hardest_examples.value
        if not examples:
            continue
        columns = [item.name for item in dataclasses.fields(examples[0])]
        names = report.class_info.names
        inputs = report.example_inputs.get(record.dataset, {})
        texts = {row.index: inputs[row.index] for row in examples if isinstance(inputs.get(row.index), str)}
        images = {row.index: _thumbnail(inputs[row.index]) for row in examples
                  if row.index in inputs and row.index not in texts}
        rows = [{"cells": ([texts.get(row.index, "")] if texts else [])
                          + [_example_cell(key, getattr(row, key), names) for key in columns],
                 "image": images.get(row.index), "teacher_wrong": row.teacher_prediction != row.label}
                for row in examples]
        return {"dataset": record.dataset, "rows": rows, "images": any(images.values()),
                "columns": (["context ▸ next token"] if texts else []) + [c.replace("_", " ") for c in columns]}
    return None


THUMBNAIL_SIDE = 56  # pixels: small images are enlarged (nearest neighbour) to about this size


def _thumbnail(x: np.ndarray) -> str | None:
    """A PNG data URI of one input when it is an image ((C, H, W) with 1 or 3 channels, or (H, W)), its
    values stretched to the full grey or colour range; None for anything else (feature vectors, token ids)."""
    from PIL import Image

    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 3 and x.shape[0] in (1, 3):
        x = x[0] if x.shape[0] == 1 else np.moveaxis(x, 0, -1)
    if not (x.ndim == 2 or (x.ndim == 3 and x.shape[2] == 3)) or min(x.shape[:2]) < 4 or not np.all(np.isfinite(x)):
        return None
    low, high = x.min(), x.max()
    pixels = np.zeros(x.shape) if high == low else (x - low) / (high - low)
    image = Image.fromarray(np.round(pixels * 255).astype(np.uint8))
    scale = max(1, THUMBNAIL_SIDE // max(image.size))
    image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _example_cell(key: str, value: Any, names) -> str:
    is_class = ("label" in key or "prediction" in key) and isinstance(value, int) and not isinstance(value, bool)
    if is_class and names is not None and 0 <= value < len(names) and names[value] != str(value):
        return f"{value} ({names[value]})"
    return format_number(value)


def _whatif_summary(report: Report) -> str:
    metric = report.measurements.universe.temperature_whatif
    if not metric.ok:
        return ""
    tau = report.settings.temperature
    guessed = " (guessed)" if tau.guessed else ""
    informative, band = metric.value.informative_range, metric.value.band
    if not informative:
        return (f"No τ on the grid gives informative targets for this teacher on the {metric.dataset} set; "
                f"distillation τ = {tau.value:g}{guessed}.")
    lo, hi = (float(v) for v in informative)
    where = "inside" if lo <= tau.value <= hi else "below" if tau.value < lo else "above"
    n_classes = report.n_classes
    of_uniform = (f"{band.max_smoothing * n_classes / (n_classes - 1):.3g}·(C−1)/C" if n_classes > 1
                  else f"{band.max_smoothing:.3g}")  # the band's upper bound as a share of the uniform's
    return (f"Targets are informative ({band.min_smoothing:g} ≤ ε_eff ≤ {of_uniform} and "
            f"at most {band.max_saturation:.0%} saturated) for "
            f"τ ∈ [{lo:g}, {hi:g}] on the {metric.dataset} set; the distillation τ = {tau.value:g}{guessed} "
            f"is {where} that range.")


def _class_summary(report: Report) -> str:
    info = report.class_info
    parts = []
    if info.names:
        shown = ", ".join(info.names[:12]) + (f", … ({len(info.names)} in all)" if len(info.names) > 12 else "")
        parts.append(f"names: {shown}")
    if info.groups:
        parts.append(f"{len(set(info.groups))} known class groups")
    return "; ".join(parts) or "no class names or groups given"


def _reliability_set(report: Report) -> str:
    universe = report.measurements.universe
    return TRANSFER if universe.transfer is not None and universe.eval is None else EVAL


def _similarity_size(report: Report) -> tuple[float, float]:
    """Up to 30 classes: as wide as the page (11.2 in at 100 dpi), so the class names show at full size."""
    columns = len(similarity_columns(report))
    if report.n_classes <= 30:
        return (10.4 * columns / 3 + 0.8, 3.9 * similarity_rows(report) + 0.4)
    return (6.2 * columns + 0.8, 6.2 * similarity_rows(report) + 0.4)


# ---------------------------------------------------------------- figures

def _axes_figure(title: str, plot: Callable, report: Report, size: tuple[float, float], **options) -> dict:
    return axes_figure(title, lambda ax: plot(report, ax=ax, **options), size)


def _figure(title: str, plot: Callable, report: Report, size: tuple[float, float]) -> dict:
    return inline_figure(title, lambda fig: plot(report, fig=fig), size)


def axes_figure(title: str, draw: Callable, size: tuple[float, float]) -> dict:
    """:func:`inline_figure` of ``draw(ax)`` on the figure's one axes, laid out tight."""
    def on_axes(fig):
        draw(fig.add_subplot())
        fig.tight_layout()
    return inline_figure(title, on_axes, size)


def inline_figure(title: str, draw: Callable, size: tuple[float, float]) -> dict:
    """Draw on a fresh Agg figure and return it as a PNG data URI; a drawing error becomes a note."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from matplotlib import rc_context

    with rc_context({"text.parse_math": False}):  # names from the inputs ('$…$') are text, not mathtext
        fig = Figure(figsize=size, dpi=DPI)
        FigureCanvasAgg(fig)
        try:
            draw(fig)
        except (ValueError, TypeError, KeyError, IndexError) as error:  # malformed metric value: say so
            return {"title": title, "uri": None, "error": f"{type(error).__name__}: {error}"}
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    uri = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    return {"title": title, "uri": uri, "error": None}


def _summarize_part(value: Any, *, brief: bool = False) -> str:
    if not isinstance(value, list):
        return summarize_value(value)
    if value and all(isinstance(row, (list, tuple)) for row in value):
        return f"{len(value)}×{len(value[0])} matrix"
    if value and all(isinstance(row, dict) for row in value):
        return f"{len(value)} entries"
    if len(value) <= (2 if brief else 6):
        return "[" + ", ".join(format_number(v) for v in value) + "]"
    if brief:
        return f"{len(value)} values"
    return f"{len(value)} values: [" + ", ".join(format_number(v) for v in value[:3]) + ", …]"


def _without_scheme(value: Any) -> Any:
    """Jinja finalize hook: text from the report never carries a URL scheme into the page, nor control or
    bidirectional-format characters (a file named '\u202egnp.pt' would read 'tp.png'; an ESC drives a
    terminal that prints the file): they are shown escaped, as in the terminal."""
    if isinstance(value, str) and not value.startswith("data:image/png;base64,"):
        return printable(_SCHEME.sub("", value))
    return value
