"""What the diagnosis hands the reports: findings with their evidence and remedy, and the verdict."""
from __future__ import annotations

from dataclasses import dataclass

from kddiag.errors import KddiagError


@dataclass(frozen=True)
class Evidence:
    """One number a finding rests on."""

    metric: str  # 'section.name'
    value: float
    threshold: float | None
    dataset: str
    comparison: str = ">"  # how value relates to threshold when the rule fires: '>', '<', ...

    def to_dict(self) -> dict:
        return {"metric": self.metric, "value": self.value, "threshold": self.threshold,
                "comparison": self.comparison, "dataset": self.dataset}


@dataclass(frozen=True)
class Remedy:
    """The distillation settings a finding's advice changes first, for a program to follow (the case
    studies retrain with it); None: that setting stays as it was."""

    temperature: float | None = None
    alpha: float | None = None
    teacher_scale: float | None = None  # divide the teacher's logits by this (its T*); None: as they are
    probe_change: float | None = None  # the accuracy change its probe measured on this pair; None: not tested
    probe_ci95: tuple[float, float] | None = None

    @property
    def tested(self) -> bool:
        """Whether a probe of this pair backs it (it beat the current setting)."""
        return self.probe_change is not None

    def to_dict(self) -> dict:
        out = {name: value for name, value in (("temperature", self.temperature), ("alpha", self.alpha),
                                               ("teacher_scale", self.teacher_scale)) if value is not None}
        out["tested_on_this_pair"] = self.tested
        if self.tested:
            out.update(probe_change=self.probe_change, probe_ci95=list(self.probe_ci95))
        return out


@dataclass(frozen=True)
class Finding:
    """One diagnosis: what went wrong, the evidence, why it matters and what to do."""

    id: str
    levels: tuple[str, ...]
    severity: float  # in [0, 1]
    title: str
    evidence: tuple[Evidence, ...]
    explanation: str
    advice: str
    remedy: Remedy | None = None  # the settings change the advice names first, where it names one

    def to_dict(self) -> dict:
        out = {"id": self.id, "level": list(self.levels), "severity": round(self.severity, 4),
               "title": self.title, "evidence": [e.to_dict() for e in self.evidence],
               "explanation": self.explanation, "advice": self.advice}
        if self.remedy is not None:
            out["remedy"] = self.remedy.to_dict()
        return out


@dataclass(frozen=True)
class Diagnosis:
    """Ranked findings (most severe first), the checks that could not run with why, and the verdict.

    ``verdict`` is one of ``kddiag.diagnosis.ids.VERDICTS``: 'problems' (a finding names a problem),
    'kd-helped' (KD beat the baseline beyond the noise, so the findings are room to improve, not problems;
    only the engine, which reads the KD gain, gives it),
    'healthy' (KD beat the baseline and no failure case was found), 'gain-not-checked' (no failure
    case found, but no baseline to tell whether KD helped), 'teacher-ready' (a teacher-only check found
    no problem with the teacher) or 'none' (no rule could run).
    """

    findings: tuple[Finding, ...]
    not_checked: tuple[tuple[str, str], ...] = ()  # (rule id, reason)
    verdict: str = ""  # empty: read off the findings (no finding: none; any problem: problems; else healthy)

    def __post_init__(self) -> None:
        from kddiag.diagnosis import ids

        if not self.verdict:
            verdict = (ids.NO_VERDICT if not self.findings else ids.HEALTHY
                       if all(f.id == ids.HEALTHY for f in self.findings) else ids.PROBLEMS)
            object.__setattr__(self, "verdict", verdict)
        elif self.verdict not in ids.VERDICTS:
            raise KddiagError(f"a diagnosis verdict must be one of {', '.join(ids.VERDICTS)}; got {self.verdict!r}")
        elif self.verdict == ids.KD_HELPED and all(f.id == ids.HEALTHY for f in self.findings):
            raise KddiagError("a 'kd-helped' diagnosis needs the findings that are room to improve; "
                              "without one it is 'healthy'")

    def to_dict(self) -> dict:
        return {"verdict": self.verdict, "findings": [f.to_dict() for f in self.findings],
                "not_checked": [{"id": i, "reason": r} for i, r in self.not_checked]}
