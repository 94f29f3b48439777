"""What the measure stage hands on: one frozen, typed result per knowledge level (:mod:`kddiag.levels`),
and the :class:`Report` of one inspection.

The records and their values (:class:`Measured`) live with their level; this module names them for
readers that take the results as a whole (the diagnosis, the reports).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from kddiag.levels import Measurements
from kddiag.levels._record import NOT_MEASURED, UNDEFINED, Measured, measured, unavailable
from kddiag.levels.domain import ClassStructure, DomainOnSet, DomainOnWeights, DomainResult, WeightStructure
from kddiag.levels.instance import InstanceOnSet, InstanceResult, PerExample
from kddiag.levels.outcome import OutcomeOnSet, OutcomeResult
from kddiag.levels.universe import Calibration, ReliabilityCalibration, UniverseOnSet, UniverseResult
from kddiag.types import EVAL, ROLES, TRANSFER, WEIGHTS, ClassInfo, Coverage, Diagnosis, InputInfo, Settings

__all__ = ["EVAL", "NOT_MEASURED", "TRANSFER", "UNDEFINED", "WEIGHTS", "Calibration", "ClassStructure",
           "DomainOnSet", "DomainOnWeights", "DomainResult", "InstanceOnSet", "InstanceResult", "Measured",
           "Measurements", "OutcomeOnSet", "OutcomeResult", "PerExample", "ReliabilityCalibration", "Report",
           "UniverseOnSet", "UniverseResult", "WeightStructure", "measured", "unavailable"]


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
