"""What the training monitor keeps per call: a few key measurements and the findings, step by step.

:class:`MonitorRecord` is one call of :class:`kddiag.monitor.Monitor` (pure data: no torch);
:func:`finding_spans` turns the records into the findings timeline (when each finding id first fired,
and when it stopped firing). The report of a run (:mod:`kddiag.report.training`) draws both.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

from kddiag.results import EVAL, Measured, Measurements
from kddiag.diagnosis.findings import Diagnosis

# The key measurements, each read from the monitored (eval) set: record field -> (label, where it is).
KEY_MEASUREMENTS: dict[str, tuple[str, Callable[[Measurements], Measured]]] = {
    "student_accuracy": ("student accuracy", lambda m: m.outcome.on(EVAL).student_accuracy),
    "agreement": ("top-1 agreement teacher ↔ student", lambda m: m.outcome.on(EVAL).agreement),
    "kl_teacher_student": ("KL(teacher ‖ student) at τ = 1, nats", lambda m: m.outcome.on(EVAL).kl_teacher_student),
    "kl_teacher_student_at_temperature": ("KL(teacher ‖ student) at τ, nats",
                                          lambda m: m.outcome.on(EVAL).kl_teacher_student_at_temperature),
    "kd_gain": ("KD gain (student − baseline accuracy)", lambda m: m.outcome.on(EVAL).kd_gain),
    "student_ece": ("student ECE", lambda m: m.universe.on(EVAL).student.ece),
    "output_similarity_transfer_score": ("class-similarity transfer score",
                                         lambda m: m.domain.on(EVAL).output_similarity_transfer_score),
    "feature_cka": ("feature CKA teacher ↔ student", lambda m: m.domain.on(EVAL).feature_cka),
    "tckd": ("TCKD at τ (target class), nats", lambda m: m.instance.on(EVAL).tckd),
    "nckd": ("NCKD at τ (non-target classes), nats", lambda m: m.instance.on(EVAL).nckd),
    # fixed during training (teacher and baseline are not trained): lines for the plots to compare against
    "teacher_accuracy": ("teacher accuracy", lambda m: m.outcome.on(EVAL).teacher_accuracy),
    "baseline_accuracy": ("baseline accuracy", lambda m: m.outcome.on(EVAL).baseline_accuracy),
    "teacher_ece": ("teacher ECE", lambda m: m.universe.on(EVAL).teacher.ece),
    "baseline_ece": ("baseline ECE", lambda m: m.universe.on(EVAL).baseline.ece),
    "baseline_output_similarity_transfer_score": (
        "baseline class-similarity transfer score",
        lambda m: m.domain.on(EVAL).baseline_output_similarity_transfer_score),
}


@dataclass(frozen=True)
class FindingMark:
    """A finding that fired at one call: its id and severity in [0, 1]."""

    id: str
    severity: float

    def to_dict(self) -> dict:
        return {"id": self.id, "severity": round(self.severity, 4)}


@dataclass(frozen=True)
class MonitorRecord:
    """One monitor call: the training step, the key measurements on the held-out set (None where a value
    could not be measured), the findings that fired and the verdict. ``seconds`` (what the call cost)
    is left out of comparisons, so two runs on the same data compare equal."""

    step: int
    student_accuracy: float | None = None
    agreement: float | None = None
    kl_teacher_student: float | None = None
    kl_teacher_student_at_temperature: float | None = None
    kd_gain: float | None = None
    student_ece: float | None = None
    output_similarity_transfer_score: float | None = None
    feature_cka: float | None = None
    tckd: float | None = None
    nckd: float | None = None
    teacher_accuracy: float | None = None
    baseline_accuracy: float | None = None
    teacher_ece: float | None = None
    baseline_ece: float | None = None
    baseline_output_similarity_transfer_score: float | None = None
    findings: tuple[FindingMark, ...] = ()
    verdict: str = ""
    seconds: float = field(default=0.0, compare=False)

    @classmethod
    def of(cls, step: int, measurements: Measurements, diagnosis: Diagnosis, *, seconds: float = 0.0
           ) -> "MonitorRecord":
        """The record of one call from its measurements and diagnosis."""
        values = {name: _number(where(measurements)) for name, (_, where) in KEY_MEASUREMENTS.items()}
        marks = tuple(FindingMark(f.id, float(f.severity)) for f in diagnosis.findings)
        return cls(step=int(step), **values, findings=marks, verdict=diagnosis.verdict, seconds=float(seconds))

    @property
    def finding_ids(self) -> tuple[str, ...]:
        return tuple(mark.id for mark in self.findings)

    def to_dict(self) -> dict:
        return {"step": self.step, **{name: getattr(self, name) for name in KEY_MEASUREMENTS},
                "findings": [mark.to_dict() for mark in self.findings], "verdict": self.verdict,
                "seconds": round(self.seconds, 6)}


@dataclass(frozen=True)
class FindingSpan:
    """One stretch of calls in a row at which a finding fired: from ``first_step`` to ``last_step``;
    ``stopped_step`` is the first later call at which it no longer fired (None: still firing at the last
    call). A finding that stops and fires again has one span per stretch."""

    id: str
    first_step: int
    last_step: int
    stopped_step: int | None
    peak_severity: float
    n_calls: int

    def to_dict(self) -> dict:
        return {"id": self.id, "first_step": self.first_step, "last_step": self.last_step,
                "stopped_step": self.stopped_step, "peak_severity": round(self.peak_severity, 4),
                "n_calls": self.n_calls}


def finding_spans(history: Iterable[MonitorRecord]) -> tuple[FindingSpan, ...]:
    """The findings timeline of ``history`` (records in step order): one span per stretch of consecutive
    calls at which a finding id fired, ordered by first step, then id."""
    open_spans: dict[str, dict] = {}
    done: list[FindingSpan] = []
    for record in history:
        fired = {mark.id: mark.severity for mark in record.findings}
        for finding_id in [i for i in open_spans if i not in fired]:
            done.append(_closed(finding_id, open_spans.pop(finding_id), record.step))
        for finding_id, severity in fired.items():
            span = open_spans.setdefault(finding_id, {"first": record.step, "peak": severity, "n": 0})
            span["last"], span["peak"], span["n"] = record.step, max(span["peak"], severity), span["n"] + 1
    done += [_closed(finding_id, span, None) for finding_id, span in open_spans.items()]
    return tuple(sorted(done, key=lambda s: (s.first_step, s.id)))


def _closed(finding_id: str, span: dict, stopped: int | None) -> FindingSpan:
    return FindingSpan(finding_id, span["first"], span["last"], stopped, span["peak"], span["n"])


def _number(value: Measured) -> float | None:
    return float(value.value) if value.ok and isinstance(value.value, (int, float)) else None
