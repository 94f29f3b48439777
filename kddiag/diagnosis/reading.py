"""What every rule reads: values picked from the typed measurements, and the shapes of a rule's answer.

A rule is a pure function ``(measurements, context) -> Fired | Clear | NotChecked``: it reads values
with :func:`first`, decides, and returns its evidence, its severity and the facts its wording needs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from kddiag.diagnosis.thresholds import SEVERITY_MAX, SEVERITY_MIN, SUPPORT_WEIGHT
from kddiag.results import EVAL, TRANSFER, Measured
from kddiag.diagnosis.findings import Evidence
from kddiag.inputs import InputInfo
from kddiag.options import Settings

TRANSFER_FIRST = (TRANSFER, EVAL)
EVAL_FIRST = (EVAL, TRANSFER)


@dataclass(frozen=True)
class Context:
    """What a rule needs besides the measurements: the distillation settings, the class count, whether
    this is a teacher-only check (no student: the settings are the planned ones), and the inputs inspected
    (their recorded range and mean per data set, when the caller gives them)."""

    settings: Settings
    n_classes: int
    teacher_only: bool = False
    inputs: tuple[InputInfo, ...] = ()

    @property
    def temperature(self) -> float:
        return float(self.settings.temperature.value)

    @property
    def alpha(self) -> float:
        return float(self.settings.alpha.value)

    @property
    def chance(self) -> float:
        return 1.0 / self.n_classes

    def accuracy_at(self, normalized: float) -> float:
        """The accuracy whose normalized accuracy (acc − 1/C)/(1 − 1/C) is ``normalized``."""
        return self.chance + normalized * (1.0 - self.chance)

    def normalized(self, accuracy: float) -> float:
        """(accuracy − 1/C)/(1 − 1/C): 0 at chance, 1 when perfect."""
        return (accuracy - self.chance) / (1.0 - self.chance)


@dataclass(frozen=True)
class Fired:
    """The rule's failure case shows: the numbers it rests on, how severe, the facts its wording needs."""

    evidence: tuple[Evidence, ...]
    severity: float
    facts: Any
    notes: tuple[str, ...] = ()  # parts of the check that could not run


@dataclass(frozen=True)
class Clear:
    """The rule ran and its failure case does not show."""

    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class NotChecked:
    """The rule could not run: the values it needs were not measured, and why."""

    reason: str


Decision = Fired | Clear | NotChecked


def first(level: Any, pick: Callable[[Any], Measured], datasets: tuple[str, ...] = TRANSFER_FIRST) -> Measured:
    """The first usable value ``pick(record)`` over ``datasets``; else an unavailable value saying why."""
    reasons, name = [], ""
    for dataset in datasets:
        record = level.on(dataset)
        if record is None:
            continue
        value = pick(record)
        name = value.name
        if value.ok:
            return value
        reasons.append(f"{value.unavailable} ({dataset})")
    why = "; ".join(reasons) if reasons else f"not measured ({' or '.join(datasets)})"
    return Measured(None, unavailable=f"{name or 'value'}: {why}" if name else why, name=name)


def kd_gain(measurements: Any) -> Measured:
    """The KD student's accuracy minus its baseline's, on the eval set first: the outcome the verdict reads."""
    return first(measurements.outcome, lambda o: o.kd_gain, EVAL_FIRST)


def beats_baseline(gain: Measured) -> bool:
    """Whether KD beat the baseline beyond the noise: the gain's 95 % interval lies above 0."""
    return gain.ok and gain.ci is not None and gain.ci[0] > 0


def missing(*values: Measured) -> NotChecked | None:
    """NotChecked for the first value that is not usable, else None."""
    for value in values:
        if not value.ok:
            return NotChecked(value.unavailable or "not measured")
    return None


def fallback_notes(values: tuple[Measured, ...], preferred: str) -> tuple[str, ...]:
    """A note for each value read on another set than ``preferred``."""
    return tuple(f"{v.name} not available on the {preferred} set: checked on the {v.dataset} set instead"
                 for v in values if v.ok and v.dataset != preferred)


def evidence(value: Measured, threshold: float | None, comparison: str) -> Evidence:
    """One number a finding rests on, with the threshold it was compared with."""
    return Evidence(metric=value.name, value=float(value.value), threshold=threshold, dataset=value.dataset,
                    comparison=comparison)


def grade(value: float, threshold: float, full: float) -> float:
    """How far ``value`` is past ``threshold`` toward ``full``: 0 at the threshold, 1 at or past full."""
    return min(1.0, max(0.0, (value - threshold) / (full - threshold)))


def severity(primary: float, support: tuple[float, ...] = ()) -> float:
    """SEVERITY_MIN..SEVERITY_MAX from the firing condition's grade and corroborating grades."""
    strength = primary
    if support:
        strength = (1 - SUPPORT_WEIGHT) * primary + SUPPORT_WEIGHT * sum(support) / len(support)
    return SEVERITY_MIN + (SEVERITY_MAX - SEVERITY_MIN) * strength


def rounded(threshold: float) -> float:
    """A threshold derived from measured values, rounded for display."""
    return round(threshold, 6)

