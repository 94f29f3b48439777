"""Level 1 — knowledge of the universe: every model's calibration, and how soft the teacher's targets are at
the distillation temperature (soft targets act as label smoothing).

The per-example columns it asks of the softmax pass, its records (:class:`UniverseOnSet`, with a
:class:`Calibration` per model), how it fills them (:func:`measure_set`, :func:`softness_gap`,
:func:`temperature_whatif`), and its headline rows.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import ClassVar

import numpy as np

from kddiag.levels._columns import Column, per_model
from kddiag.levels._common import Reuse, absent, enough, not_enough
from kddiag.levels._record import (Headline, Level, Measured, OnSet, Record, each_model, level_wide, measured, missing,
                                   unavailable, NOT_MEASURED)
from kddiag.metrics import universe, whatif
from kddiag.metrics.universe import N_BINS, SATURATION, Histogram, Reliability
from kddiag.metrics.whatif import WhatIf
from kddiag.summary import SetSummary
from kddiag.types import EVAL, TRANSFER, UNIVERSE

NAME = UNIVERSE  # the level's name in report.json and the reports
NEEDS_BOTH_SETS = "needs both eval and transfer sets"


# ---------------------------------------------------------------- per-example columns

COLUMNS = (
    *per_model("confidence", lambda block, role: np.exp(block.one[role].max_log_prob), sample=True),
    *per_model("nll", lambda block, role: -block.one[role].target_log_prob, mean=True,
               sample=("baseline",)),  # the baseline's: the instance level's difficulty
    *per_model("brier", lambda block, role: block.one[role].nontarget_mass**2 + block.one[role].nontarget_sum_sq,
               mean=True),
    Column("smoothing_t", lambda block: block.teacher_t.nontarget_mass, mean=True,
           stratum="teacher_smoothing_at_temperature"),
    Column("saturated_t", lambda block: (block.teacher_t.target_log_prob > np.log(SATURATION)).astype(np.float64),
           mean=True),
    Column("entropy_t", lambda block: block.teacher_t.entropy, mean=True),
    Column("target_prob_t", lambda block: block.teacher_t.target_prob, sample=True),
)


# ---------------------------------------------------------------- the records

@dataclass(frozen=True)
class Calibration(Record):
    """One model's calibration at τ = 1."""

    ece: Measured[float] = field(default_factory=missing)
    adaptive_ece: Measured[float] = field(default_factory=missing)
    mce: Measured[float] = field(default_factory=missing)
    classwise_ece: Measured[float] = field(default_factory=missing)
    nll: Measured[float] = field(default_factory=missing)
    brier: Measured[float] = field(default_factory=missing)
    fitted_temperature: Measured[float] = field(default_factory=missing)


@dataclass(frozen=True)
class ReliabilityCalibration(Calibration):
    """Calibration with the reliability-diagram bins (teacher and student)."""

    reliability: Measured[Reliability] = field(default_factory=missing)


@dataclass(frozen=True)
class UniverseOnSet(OnSet):
    """Calibration of every model, and how soft the teacher's targets are at τ, on one data set."""

    LEVEL: ClassVar[str] = UNIVERSE
    dataset: str
    teacher: ReliabilityCalibration = field(default_factory=ReliabilityCalibration)
    student: ReliabilityCalibration = field(default_factory=ReliabilityCalibration)
    baseline: Calibration = field(default_factory=Calibration)
    effective_smoothing: Measured[float] = field(default_factory=missing)
    equivalent_smoothing: Measured[float] = field(default_factory=missing)
    saturation_share: Measured[float] = field(default_factory=missing)
    target_entropy: Measured[float] = field(default_factory=missing)
    target_confidence_histogram: Measured[Histogram] = field(default_factory=missing)
    saturation_cut: float = SATURATION  # saturation_share counts p_y above this


@dataclass(frozen=True)
class UniverseResult(Level):
    """Level 1 — knowledge of the universe. ``softness_gap`` is on the transfer set; the what-if on the
    transfer set, else eval."""

    LEVEL: ClassVar[str] = UNIVERSE
    eval: UniverseOnSet | None = None
    transfer: UniverseOnSet | None = None
    softness_gap: Measured[float] = field(default_factory=lambda: unavailable(NOT_MEASURED, dataset=TRANSFER))
    temperature_whatif: Measured[WhatIf] = field(default_factory=lambda: unavailable(NOT_MEASURED, dataset=TRANSFER))


ON_SET = UniverseOnSet  # the record measure_set fills


# ---------------------------------------------------------------- measuring

def measure_set(data: SetSummary, cached: Reuse) -> UniverseOnSet:
    """Every model's calibration and the teacher's softness at τ on one data set."""
    effective = data.mean("smoothing_t")
    return UniverseOnSet(
        data.name,
        teacher=_calibration(data, "teacher", ReliabilityCalibration, cached),
        student=_calibration(data, "student", ReliabilityCalibration),
        baseline=_calibration(data, "baseline", Calibration),
        effective_smoothing=measured(effective),
        equivalent_smoothing=measured(universe.equivalent_smoothing_from(effective, data.n_classes)),
        saturation_share=measured(data.mean("saturated_t")),
        target_entropy=measured(data.mean("entropy_t")),
        target_confidence_histogram=measured(Histogram(np.linspace(0.0, 1.0, data.target_histogram.size + 1),
                                                       data.target_histogram.copy())),
    )


def _calibration(data: SetSummary, role: str, kind: type[Calibration], cached: Reuse = Reuse()) -> Calibration:
    if role not in data.roles:
        return kind(**{item.name: unavailable(absent(role)) for item in fields(kind)})
    bins, examples, rows = data.calibration[role], data.examples, data.rows
    extra = {"reliability": measured(universe.reliability_of(bins))} if kind is ReliabilityCalibration else {}
    return kind(
        ece=measured(universe.ece_of(bins)),
        adaptive_ece=measured(universe.adaptive_ece_of(examples[f"{role}.confidence"], examples[f"{role}.correct"])),
        mce=measured(universe.mce_of(bins)),
        classwise_ece=measured(universe.classwise_ece_of(data.class_sums[role])),
        nll=measured(data.mean(f"{role}.nll")),
        brier=measured(data.mean(f"{role}.brier")),
        fitted_temperature=measured(cached(f"{data.name}.{role}.fitted_temperature", lambda: (
            universe.fitted_temperature_of(rows[f"{role}.logits"], rows["labels"])))),
        **extra,
    )


def softness_gap(sets: list[SetSummary]) -> Measured:
    """Effective smoothing at τ on eval minus on transfer (on the transfer set)."""
    named = {s.name: s for s in sets}
    if set(named) != {EVAL, TRANSFER}:
        return unavailable(NEEDS_BOTH_SETS, dataset=TRANSFER)
    small = [s for s in sets if not enough(s)]
    if small:
        return unavailable(not_enough(small[0]), dataset=TRANSFER)
    return measured(named[EVAL].mean("smoothing_t") - named[TRANSFER].mean("smoothing_t"), dataset=TRANSFER)


def temperature_whatif(sets: list[SetSummary]) -> Measured:
    """The temperature what-if on the transfer set, else on eval (the row reservoir's teacher logits)."""
    data = next((s for s in sets if s.name == TRANSFER), sets[0])
    if not enough(data):
        return unavailable(not_enough(data), dataset=data.name)
    return measured(whatif.temperature_whatif_of(data.rows["teacher.logits"], data.rows["labels"], alpha=data.alpha),
                    dataset=data.name)


# ---------------------------------------------------------------- headline rows

HEADLINES = (
    Headline(f"ECE ({N_BINS} bins)", each_model(lambda m: m.ece)),
    Headline("NLL, nats", each_model(lambda m: m.nll)),
    Headline("fitted temperature T*", each_model(lambda m: m.fitted_temperature)),
    Headline("effective smoothing at τ", lambda r: {"teacher": r.effective_smoothing}),
    Headline(f"saturated share (p_y > {SATURATION:g})", lambda r: {"teacher": r.saturation_share}),
    Headline("target entropy at τ, nats", lambda r: {"teacher": r.target_entropy}),
    Headline("softness gap (eval − transfer)", lambda level: {"teacher": level.softness_gap}, level_wide),
)
