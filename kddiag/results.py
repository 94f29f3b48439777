"""What the measure stage hands on: one frozen, typed result per knowledge level, and the :class:`Report`.

Every value a report shows is a :class:`Measured`: a float, an array or a typed value (e.g.
:class:`~kddiag.metrics.whatif.WhatIf`), with a 95 % bootstrap interval where one was computed, or
None and the reason it could not be computed. Values are grouped per data set (``OutcomeOnSet``, …);
per-model values sit in sub-records named after the model (``universe.eval.teacher.ece``).

The name of a value in ``report.json`` and in a finding's evidence is its level and its attribute
path joined by '_' (``universe.eval.teacher.ece`` → ``universe.teacher_ece`` on the eval set). Each
record stamps those names onto its values when it is built, so no reader ever spells a metric name:
readers use attributes, and this module is the one home of the naming.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
import typing
from typing import Any, ClassVar, Generic, Iterator, Mapping, TypeVar

import numpy as np

from kddiag.metrics import instance as _instance
from kddiag.metrics import universe as _universe
from kddiag.metrics.instance import HardExample
from kddiag.metrics.strata import Breakdown
from kddiag.metrics.universe import Histogram, Reliability
from kddiag.metrics.whatif import WhatIf
from kddiag.types import (DOMAIN, EVAL, INSTANCE, OUTCOME, ROLES, TRANSFER, UNIVERSE, WEIGHTS, ClassInfo, Coverage,
                          Diagnosis, InputInfo, Settings)

__all__ = ["EVAL", "TRANSFER", "WEIGHTS", "Measured", "Measurements", "Report", "measured", "unavailable"]
UNDEFINED = "undefined on this data"
NOT_MEASURED = "not measured"

T = TypeVar("T")


@dataclass(frozen=True)
class Measured(Generic[T]):
    """One measured value on one data set, or why there is none (``value`` None exactly then)."""

    value: T | None
    ci: tuple[float, float] | None = None  # 95 % bootstrap interval
    unavailable: str | None = None
    name: str = ""  # 'level.metric' as in report.json; stamped by the record that holds it
    dataset: str = ""  # EVAL, TRANSFER or WEIGHTS

    @property
    def ok(self) -> bool:
        return self.value is not None

    def to_dict(self) -> dict:
        value = self.value.to_dict() if hasattr(self.value, "to_dict") else self.value
        if isinstance(value, tuple):
            value = [item.to_dict() if hasattr(item, "to_dict") else item for item in value]
        out: dict = {"value": value}
        if self.ci is not None:
            out["ci95"] = list(self.ci)
        if self.unavailable is not None:
            out["unavailable"] = self.unavailable
        return out


def measured(value: Any, *, ci: tuple[float, float] | None = None, why_none: str = UNDEFINED,
             dataset: str = "") -> Measured:
    """A measured value; None or a non-finite number becomes unavailable with ``why_none``."""
    if isinstance(value, (float, np.floating, int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        value = float(value) if isinstance(value, (float, np.floating)) else int(value)
        if isinstance(value, float) and not np.isfinite(value):
            value = None
    if value is None:
        return Measured(None, unavailable=why_none, dataset=dataset)
    return Measured(value, ci=None if ci is None else (float(ci[0]), float(ci[1])), dataset=dataset)


def unavailable(reason: str, *, dataset: str = "") -> Measured:
    """A value that could not be measured, and why."""
    return Measured(None, unavailable=reason, dataset=dataset)


def _missing() -> Measured:
    return unavailable(NOT_MEASURED)


def _measured_from_dict(leaf: dict, kind: Any, dataset: str) -> Measured:
    """One ``{"value", "ci95", "unavailable"}`` leaf of report.json as a Measured of type ``kind``."""
    value = leaf.get("value")
    if value is None:
        return unavailable(leaf.get("unavailable") or UNDEFINED, dataset=dataset)
    if kind is np.ndarray and isinstance(value, dict):  # a matrix report.json summarized
        shape = value.get("summary", {}).get("shape")
        return unavailable(f"summarized in report.json ({shape} matrix; the whole matrix is in report-arrays.npz "
                           "when written with --arrays)", dataset=dataset)
    if kind is np.ndarray:
        value = np.array([np.nan if v is None else v for v in np.ravel(np.array(value, dtype=object))]
                         ).reshape(np.shape(np.array(value, dtype=object)))
    elif typing.get_origin(kind) is tuple:
        item = typing.get_args(kind)[0]
        value = tuple(item(**entry) for entry in value)
    elif hasattr(kind, "from_dict"):
        value = kind.from_dict(value)
    ci = leaf.get("ci95")
    return measured(value, ci=None if ci is None else tuple(ci), dataset=dataset)


# ---------------------------------------------------------------- records

class _Record:
    """A frozen record of :class:`Measured` values (and sub-records); stamps their names and data set."""

    LEVEL: ClassVar[str] = ""

    def _stamp(self, level: str, prefix: str, dataset: str | None) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, Measured):
                stamped = replace(value, name=f"{level}.{prefix}{item.name}",
                                  dataset=value.dataset or dataset or "")
                object.__setattr__(self, item.name, stamped)
            elif isinstance(value, _Record) and not isinstance(value, _OnSet):  # a set stamps itself
                value._stamp(level, f"{prefix}{item.name}_", dataset)

    @classmethod
    def _from_dict(cls, metrics: dict, level: str, prefix: str, dataset: str, given: dict | None = None):
        """The record of ``dataset`` read back from ``report.json``'s ``metrics[level]``; absent values keep
        their defaults (not measured)."""
        hints, given = typing.get_type_hints(cls), dict(given or {})
        for item in fields(cls):
            kind = hints[item.name]
            origin = typing.get_origin(kind) or kind
            if origin is Measured:
                leaf = metrics.get(f"{prefix}{item.name}", {}).get(dataset)
                if leaf is not None:
                    given[item.name] = _measured_from_dict(leaf, typing.get_args(kind)[0], dataset)
            elif isinstance(origin, type) and issubclass(origin, _Record) and not issubclass(origin, _OnSet):
                given[item.name] = origin._from_dict(metrics, level, f"{prefix}{item.name}_", dataset)
        return cls(**given)

    @classmethod
    def unmeasured(cls, reason: str, **given: Any):
        """The record with every value (sub-records included) unavailable for ``reason``."""
        hints = typing.get_type_hints(cls)
        for item in fields(cls):
            if item.name in given:
                continue
            kind = typing.get_origin(hints[item.name]) or hints[item.name]
            if kind is Measured:
                given[item.name] = unavailable(reason)
            elif isinstance(kind, type) and issubclass(kind, _Record):
                given[item.name] = kind.unmeasured(reason)
        return cls(**given)

    def values(self) -> Iterator[Measured]:
        """Every value in the record, sub-records included, in field order."""
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, Measured):
                yield value
            elif isinstance(value, _Record):
                yield from value.values()


class _OnSet(_Record):
    """The values of one level on one data set; ``dataset`` names it."""

    def __post_init__(self) -> None:
        self._stamp(self.LEVEL, "", self.dataset)  # type: ignore[attr-defined]


class _Level(_Record):
    """One knowledge level: a record per data set given (``eval``, ``transfer``), plus level-wide values."""

    def __post_init__(self) -> None:
        self._stamp(self.LEVEL, "", None)

    @classmethod
    def from_dict(cls, metrics: dict) -> "_Level":
        """This level read back from ``report.json``'s ``metrics[level]``."""
        hints, given = typing.get_type_hints(cls), {}
        level_wide = {item.name for item in fields(cls) if typing.get_origin(hints[item.name]) is Measured}
        present = {dataset for name, leaves in metrics.items() if name not in level_wide for dataset in leaves}
        for item in fields(cls):
            kind = hints[item.name]
            record = next((k for k in typing.get_args(kind) or (kind,) if isinstance(k, type) and issubclass(k, _OnSet)),
                          None)
            if record is not None and (item.name in present or item.name == WEIGHTS):
                given[item.name] = record._from_dict(metrics, cls.LEVEL, "", item.name, {"dataset": item.name})
            elif typing.get_origin(kind) is Measured and item.name in metrics:
                (dataset, leaf), = metrics[item.name].items()
                given[item.name] = _measured_from_dict(leaf, typing.get_args(kind)[0], dataset)
        return cls(**given)

    def on(self, dataset: str) -> Any:
        """The record of ``dataset``, or None when that set was not given."""
        return getattr(self, dataset, None) if dataset in (EVAL, TRANSFER, WEIGHTS) else None

    def sets(self) -> tuple:
        """The per-set records given, transfer first."""
        return tuple(record for record in (self.on(TRANSFER), self.on(EVAL)) if record is not None)


# ---------------------------------------------------------------- level 0 — outcome

@dataclass(frozen=True)
class OutcomeOnSet(_OnSet):
    """Accuracy, fidelity (agreement, KL) and the KD gain on one data set."""

    LEVEL: ClassVar[str] = OUTCOME
    dataset: str
    teacher_accuracy: Measured[float] = field(default_factory=_missing)
    student_accuracy: Measured[float] = field(default_factory=_missing)
    baseline_accuracy: Measured[float] = field(default_factory=_missing)
    agreement: Measured[float] = field(default_factory=_missing)
    agreement_where_teacher_correct: Measured[float] = field(default_factory=_missing)
    baseline_agreement: Measured[float] = field(default_factory=_missing)
    kl_teacher_student: Measured[float] = field(default_factory=_missing)
    kl_teacher_student_at_temperature: Measured[float] = field(default_factory=_missing)
    kl_student_teacher: Measured[float] = field(default_factory=_missing)  # reverse KL(q¹ ‖ p¹)
    kl_student_teacher_at_temperature: Measured[float] = field(default_factory=_missing)
    kd_gain: Measured[float] = field(default_factory=_missing)
    permuted_agreement: Measured[float] = field(default_factory=_missing)
    permuted_agreement_chance: Measured[float] = field(default_factory=_missing)  # the same search on unpaired rows
    class_permutation: Measured[np.ndarray] = field(default_factory=_missing)  # student k ↔ teacher π[k]
    by_token_frequency: Measured[Breakdown] = field(default_factory=_missing)  # token positions only
    by_position: Measured[Breakdown] = field(default_factory=_missing)


@dataclass(frozen=True)
class OutcomeResult(_Level):
    """Level 0 — outcome."""

    LEVEL: ClassVar[str] = OUTCOME
    eval: OutcomeOnSet | None = None
    transfer: OutcomeOnSet | None = None


# ---------------------------------------------------------------- level 1 — universe

@dataclass(frozen=True)
class Calibration(_Record):
    """One model's calibration at τ = 1."""

    ece: Measured[float] = field(default_factory=_missing)
    adaptive_ece: Measured[float] = field(default_factory=_missing)
    mce: Measured[float] = field(default_factory=_missing)
    classwise_ece: Measured[float] = field(default_factory=_missing)
    nll: Measured[float] = field(default_factory=_missing)
    brier: Measured[float] = field(default_factory=_missing)
    fitted_temperature: Measured[float] = field(default_factory=_missing)


@dataclass(frozen=True)
class ReliabilityCalibration(Calibration):
    """Calibration with the reliability-diagram bins (teacher and student)."""

    reliability: Measured[Reliability] = field(default_factory=_missing)


@dataclass(frozen=True)
class UniverseOnSet(_OnSet):
    """Calibration of every model, and how soft the teacher's targets are at τ, on one data set."""

    LEVEL: ClassVar[str] = UNIVERSE
    dataset: str
    teacher: ReliabilityCalibration = field(default_factory=ReliabilityCalibration)
    student: ReliabilityCalibration = field(default_factory=ReliabilityCalibration)
    baseline: Calibration = field(default_factory=Calibration)
    effective_smoothing: Measured[float] = field(default_factory=_missing)
    equivalent_smoothing: Measured[float] = field(default_factory=_missing)
    saturation_share: Measured[float] = field(default_factory=_missing)
    target_entropy: Measured[float] = field(default_factory=_missing)
    target_confidence_histogram: Measured[Histogram] = field(default_factory=_missing)
    saturation_cut: float = _universe.SATURATION  # saturation_share counts p_y above this


@dataclass(frozen=True)
class UniverseResult(_Level):
    """Level 1 — knowledge of the universe. ``softness_gap`` is on the transfer set; the what-if on the
    transfer set, else eval."""

    LEVEL: ClassVar[str] = UNIVERSE
    eval: UniverseOnSet | None = None
    transfer: UniverseOnSet | None = None
    softness_gap: Measured[float] = field(default_factory=lambda: unavailable(NOT_MEASURED, dataset=TRANSFER))
    temperature_whatif: Measured[WhatIf] = field(default_factory=lambda: unavailable(NOT_MEASURED, dataset=TRANSFER))


# ---------------------------------------------------------------- level 2 — domain

@dataclass(frozen=True)
class ClassStructure(_Record):
    """One model's class structure from its outputs at τ = 1."""

    dark_knowledge_content: Measured[float] = field(default_factory=_missing)
    nontarget_logit_spread: Measured[float] = field(default_factory=_missing)
    output_similarity: Measured[np.ndarray] = field(default_factory=_missing)  # (C, C), NaN rows: class absent
    group_recovery: Measured[float] = field(default_factory=_missing)


@dataclass(frozen=True)
class DomainOnSet(_OnSet):
    """Class structure of every model and how well the student's matches the teacher's, on one data set."""

    LEVEL: ClassVar[str] = DOMAIN
    dataset: str
    teacher: ClassStructure = field(default_factory=ClassStructure)
    student: ClassStructure = field(default_factory=ClassStructure)
    baseline: ClassStructure = field(default_factory=ClassStructure)
    dark_knowledge_content_at_temperature: Measured[float] = field(default_factory=_missing)
    dark_knowledge_alternatives_at_temperature: Measured[float] = field(default_factory=_missing)
    top_k_nontarget_share_at_temperature: Measured[float] = field(default_factory=_missing)
    output_similarity_transfer_score: Measured[float] = field(default_factory=_missing)
    baseline_output_similarity_transfer_score: Measured[float] = field(default_factory=_missing)
    feature_cka: Measured[float] = field(default_factory=_missing)
    baseline_feature_cka: Measured[float] = field(default_factory=_missing)


@dataclass(frozen=True)
class WeightStructure(_Record):
    """One model's class structure from its logit-layer weights."""

    weight_similarity: Measured[np.ndarray] = field(default_factory=_missing)  # (C, C)
    weight_group_recovery: Measured[float] = field(default_factory=_missing)


@dataclass(frozen=True)
class DomainOnWeights(_OnSet):
    """Class structure read from the logit-layer weights (data set 'weights')."""

    LEVEL: ClassVar[str] = DOMAIN
    dataset: str = WEIGHTS
    teacher: WeightStructure = field(default_factory=WeightStructure)
    student: WeightStructure = field(default_factory=WeightStructure)
    baseline: WeightStructure = field(default_factory=WeightStructure)
    weight_similarity_transfer_score: Measured[float] = field(default_factory=_missing)
    baseline_weight_similarity_transfer_score: Measured[float] = field(default_factory=_missing)


@dataclass(frozen=True)
class DomainResult(_Level):
    """Level 2 — domain knowledge."""

    LEVEL: ClassVar[str] = DOMAIN
    eval: DomainOnSet | None = None
    transfer: DomainOnSet | None = None
    weights: DomainOnWeights = field(default_factory=DomainOnWeights)


# ---------------------------------------------------------------- level 3 — instance

@dataclass(frozen=True)
class PerExample:
    """Per-example values the plots draw (not in report.json); each (n_samples,)."""

    teacher_target_confidence: np.ndarray  # p_y at τ
    rescaling_weight: np.ndarray | None  # w of the trained student (may overflow to ±inf); None: no student
    untrained_rescaling_weight: np.ndarray  # w of an untrained student: the teacher's effect alone
    difficulty: np.ndarray  # NaN outside the k-NN subsample


@dataclass(frozen=True)
class InstanceOnSet(_OnSet):
    """Gradient rescaling and how it tracks difficulty, the decoupled KD terms and teacher errors, on one set."""

    LEVEL: ClassVar[str] = INSTANCE
    dataset: str
    rescaling_weight_mean: Measured[float] = field(default_factory=_missing)
    rescaling_weight_cv: Measured[float] = field(default_factory=_missing)
    rescaling_weight_low_share: Measured[float] = field(default_factory=_missing)
    untrained_rescaling_weight_cv: Measured[float] = field(default_factory=_missing)
    untrained_rescaling_weight_low_share: Measured[float] = field(default_factory=_missing)
    rescaling_difficulty_correlation: Measured[float] = field(default_factory=_missing)
    difficulty_source: Measured[str] = field(default_factory=_missing)
    confidence_error_auroc: Measured[float] = field(default_factory=_missing)
    tckd: Measured[float] = field(default_factory=_missing)
    nckd: Measured[float] = field(default_factory=_missing)
    nckd_weight: Measured[float] = field(default_factory=_missing)
    teacher_error_rate: Measured[float] = field(default_factory=_missing)
    hardest_examples: Measured[tuple[HardExample, ...]] = field(default_factory=_missing)
    examples: PerExample | None = None
    low_weight_cut: float = _instance.LOW_WEIGHT  # the *_low_share values count w below this


@dataclass(frozen=True)
class InstanceResult(_Level):
    """Level 3 — instance-specific knowledge."""

    LEVEL: ClassVar[str] = INSTANCE
    eval: InstanceOnSet | None = None
    transfer: InstanceOnSet | None = None


# ---------------------------------------------------------------- all levels

@dataclass(frozen=True)
class Measurements:
    """Every measurement of one inspection, one result per knowledge level."""

    outcome: OutcomeResult = field(default_factory=OutcomeResult)
    universe: UniverseResult = field(default_factory=UniverseResult)
    domain: DomainResult = field(default_factory=DomainResult)
    instance: InstanceResult = field(default_factory=InstanceResult)

    def levels(self) -> tuple[_Level, ...]:
        return (self.outcome, self.universe, self.domain, self.instance)

    def values(self) -> Iterator[Measured]:
        """Every value of every level."""
        for level in self.levels():
            yield from level.values()

    @classmethod
    def from_dict(cls, metrics: dict) -> "Measurements":
        """Measurements read back from ``report.json``'s ``metrics`` (per-example arrays are not in JSON)."""
        return cls(**{item.name: typing.get_type_hints(cls)[item.name].from_dict(metrics.get(item.name, {}))
                      for item in fields(cls)})

    def to_dict(self) -> dict:
        """``{level: {name: {dataset: {'value': ..., 'ci95': [...], 'unavailable': ...}}}}`` (docs/metrics.md)."""
        out: dict = {level.LEVEL: {} for level in self.levels()}
        for value in self.values():
            level, name = value.name.split(".", 1)
            out[level].setdefault(name, {})[value.dataset] = value.to_dict()
        return out


@dataclass(frozen=True)
class Report:
    """The complete result of one inspection."""

    inputs: tuple[InputInfo, ...]
    settings: Settings
    class_info: ClassInfo
    measurements: Measurements
    diagnosis: Diagnosis
    n_classes: int
    coverage: tuple[Coverage, ...] = ()  # per data set, when measured from streaming statistics
    example_inputs: Mapping[str, Mapping[int, np.ndarray]] = field(default_factory=dict)  # set -> index -> the
    # inputs of the examples the report lists (the hardest ones), for thumbnails when they are images
    models: tuple[str, ...] = ROLES  # the models inspected; without 'student' a teacher-only check
    probe: Any = None  # kddiag.probe.ProbeResult when remedy probes were asked for

    @property
    def teacher_only(self) -> bool:
        """Whether no student was given: a check of the teacher before distilling."""
        return "student" not in self.models

    @property
    def columns(self) -> tuple[str, ...]:
        """The models the report's tables show: all three, or teacher and baseline in a teacher-only check."""
        return ("teacher", "baseline") if self.teacher_only else ROLES
