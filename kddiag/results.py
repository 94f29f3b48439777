"""What the measure stage hands on: one frozen, typed result per knowledge level (:mod:`kddiag.levels`),
and the :class:`Report` of one inspection.

The records and their values (:class:`Measured`) live with their level; this module names them for
readers that take the results as a whole (the diagnosis, the reports).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from kddiag.diagnosis.findings import Diagnosis
from kddiag.inputs import ClassInfo, InputInfo
from kddiag.levels import Measurements
from kddiag.levels._record import NOT_MEASURED, UNDEFINED, Measured, measured, unavailable
from kddiag.levels.domain import ClassStructure, DomainOnSet, DomainOnWeights, DomainResult, WeightStructure
from kddiag.levels.instance import InstanceOnSet, InstanceResult, PerExample
from kddiag.levels.outcome import OutcomeOnSet, OutcomeResult
from kddiag.levels.universe import Calibration, ReliabilityCalibration, UniverseOnSet, UniverseResult
from kddiag.options import Settings
from kddiag.types import EVAL, ROLES, TRANSFER, WEIGHTS

__all__ = ["EVAL", "NOT_MEASURED", "TRANSFER", "UNDEFINED", "WEIGHTS", "Calibration", "ClassStructure", "Coverage",
           "DomainOnSet", "DomainOnWeights", "DomainResult", "InstanceOnSet", "InstanceResult", "Measured",
           "Measurements", "OutcomeOnSet", "OutcomeResult", "PerExample", "ReliabilityCalibration", "Report",
           "UniverseOnSet", "UniverseResult", "WeightStructure", "measured", "unavailable"]


@dataclass(frozen=True)
class Coverage:
    """What one data set's measurements read: every example for exact statistics, a fixed-seed sample
    of ``n_examples_sampled`` for per-example ones and of ``n_rows_sampled`` for logit/feature rows,
    and the classes class-by-class statistics keep (``classes_kept`` of ``n_classes``)."""

    dataset: str
    n_samples: int
    n_examples_sampled: int
    n_rows_sampled: int
    n_classes: int
    classes_kept: int
    rows_read: tuple[tuple[str, int], ...] = ()  # (measurement, rows it read of the row sample), as measured

    @property
    def restricted(self) -> bool:
        """Whether any measurement read less than the whole set or fewer than all classes."""
        return (self.n_examples_sampled < self.n_samples or self.classes_kept < self.n_classes
                or any(rows < self.n_samples for _, rows in self.rows_read))

    def describe(self) -> str:
        """One line for the reports: each measurement that read less than the whole set, with its count."""
        parts = [f"{self.dataset} set: exact statistics over all {self.n_samples:,} examples"]
        if self.n_examples_sampled < self.n_samples:
            parts.append(f"intervals, adaptive ECE, medians, correlations and plots on a fixed-seed sample of "
                         f"{self.n_examples_sampled:,}")
        fewer = [f"{name} on {rows:,}" for name, rows in self.rows_read if rows < self.n_samples]
        if fewer:
            parts.append(f"{', '.join(fewer)} rows (fixed-seed samples)")
        if self.classes_kept < self.n_classes:
            parts.append(f"class-by-class statistics (similarity matrices, relabelling) on the {self.classes_kept:,} "
                         f"most frequent of {self.n_classes:,} classes")
        return "; ".join(parts)

    def to_dict(self) -> dict:
        return {"n_samples": self.n_samples, "n_examples_sampled": self.n_examples_sampled,
                "n_rows_sampled": self.n_rows_sampled, "rows_read": dict(self.rows_read),
                "n_classes": self.n_classes, "classes_kept": self.classes_kept}


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
