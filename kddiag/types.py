"""The objects handed from one stage to the next: load → collect → measure → diagnose → render.

Every stage reads and returns these frozen dataclasses; nothing else crosses a module boundary.
Arrays are numpy arrays; shapes are written ``(n_samples, n_classes)``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

SECTIONS = ("outcome", "universe", "domain", "instance")
LEVEL_TITLES = {
    "outcome": "Level 0 — outcome",
    "universe": "Level 1 — knowledge of the universe",
    "domain": "Level 2 — domain knowledge",
    "instance": "Level 3 — instance-specific knowledge",
}
EVAL, TRANSFER = "eval", "transfer"
DEFAULT_TEMPERATURE, DEFAULT_ALPHA = 4.0, 0.9


@dataclass(frozen=True)
class Setting:
    """One distillation setting and where its value came from: 'cli', 'checkpoint' or 'guessed'."""

    value: float
    source: str

    @property
    def guessed(self) -> bool:
        return self.source == "guessed"


@dataclass(frozen=True)
class Settings:
    """The distillation settings the student was trained with."""

    temperature: Setting = Setting(DEFAULT_TEMPERATURE, "guessed")
    alpha: Setting = Setting(DEFAULT_ALPHA, "guessed")


@dataclass(frozen=True)
class ClassInfo:
    """Optional class names and known class groups (e.g. super-classes), indexed by class id."""

    names: tuple[str, ...] | None = None
    groups: tuple[int, ...] | None = None  # group id of each class


@dataclass(frozen=True)
class Dataset:
    """Inputs and integer labels of one data set. ``x`` is None in logits mode."""

    name: str  # where it came from: a path or a built-in name
    x: Any  # torch.Tensor (n_samples, ...) or None
    labels: np.ndarray  # (n_samples,) int64
    class_info: ClassInfo = ClassInfo()


@dataclass(frozen=True)
class ModelOutputs:
    """What one model produced on one data set."""

    logits: np.ndarray  # (n_samples, n_classes) float64
    features: np.ndarray | None = None  # (n_rows, n_features) float32: input of the final linear layer
    weight: np.ndarray | None = None  # (n_classes, n_features): logit-layer weight
    feature_rows: np.ndarray | None = None  # sorted example indices of the feature rows; None: every example


@dataclass(frozen=True)
class SetOutputs:
    """All models' outputs on one data set ('eval' or 'transfer')."""

    dataset: str  # EVAL or TRANSFER
    labels: np.ndarray  # (n_samples,)
    teacher: ModelOutputs
    student: ModelOutputs
    baseline: ModelOutputs | None = None


@dataclass(frozen=True)
class Metric:
    """One measured value, tied to the data set it was measured on.

    ``value`` is a float, a list (vectors, matrices) or a dict of such; it is None exactly when
    the metric could not be computed, and then ``unavailable`` says why.
    """

    section: str  # one of SECTIONS
    name: str
    dataset: str  # EVAL, TRANSFER, or 'weights' for metrics on parameters alone
    value: Any
    ci: tuple[float, float] | None = None  # 95% bootstrap interval
    unavailable: str | None = None

    def to_dict(self) -> dict:
        out: dict = {"value": self.value}
        if self.ci is not None:
            out["ci95"] = list(self.ci)
        if self.unavailable is not None:
            out["unavailable"] = self.unavailable
        return out


@dataclass(frozen=True)
class Measurements:
    """All metrics of one inspection plus the per-example arrays the plots draw."""

    metrics: tuple[Metric, ...]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # per-example values, not in JSON

    def get(self, section: str, name: str, dataset: str | None = None) -> Metric | None:
        """The metric, measured on ``dataset`` (or on the first set it exists for: transfer, eval, weights)."""
        order = [dataset] if dataset else [TRANSFER, EVAL, "weights"]
        for wanted in order:
            for metric in self.metrics:
                if metric.section == section and metric.name == name and metric.dataset == wanted:
                    return metric
        return None

    def value(self, section: str, name: str, dataset: str | None = None) -> Any:
        """The metric's value, or None when absent or unavailable."""
        metric = self.get(section, name, dataset)
        return None if metric is None else metric.value

    def to_dict(self) -> dict:
        """``{section: {name: {dataset: {'value': ..., 'ci95': [...], 'unavailable': ...}}}}``."""
        out: dict = {section: {} for section in SECTIONS}
        for metric in self.metrics:
            out[metric.section].setdefault(metric.name, {})[metric.dataset] = metric.to_dict()
        return out


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
class Finding:
    """One diagnosis: what went wrong, the evidence, why it matters and what to do."""

    id: str
    levels: tuple[str, ...]
    severity: float  # in [0, 1]
    title: str
    evidence: tuple[Evidence, ...]
    explanation: str
    advice: str

    def to_dict(self) -> dict:
        return {"id": self.id, "level": list(self.levels), "severity": round(self.severity, 4),
                "title": self.title, "evidence": [e.to_dict() for e in self.evidence],
                "explanation": self.explanation, "advice": self.advice}


@dataclass(frozen=True)
class Diagnosis:
    """Ranked findings (most severe first) and the checks that could not run, with why."""

    findings: tuple[Finding, ...]
    not_checked: tuple[tuple[str, str], ...] = ()  # (rule id, reason)

    def to_dict(self) -> dict:
        return {"findings": [f.to_dict() for f in self.findings],
                "not_checked": [{"id": i, "reason": r} for i, r in self.not_checked]}


@dataclass(frozen=True)
class InputInfo:
    """What was inspected: one entry per input file or built-in source."""

    role: str  # teacher, student, baseline, eval, transfer, classes
    path: str
    format: str  # e.g. 'torch.export', 'torchscript', 'state_dict', 'pickled-module', 'logits', 'builtin', 'pt', 'npz'
    n_samples: int | None = None
    n_classes: int | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass(frozen=True)
class Report:
    """The complete result of one inspection."""

    inputs: tuple[InputInfo, ...]
    settings: Settings
    class_info: ClassInfo
    measurements: Measurements
    diagnosis: Diagnosis
    n_classes: int


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to run (``module``), or precomputed logits (logits mode), plus stored metadata."""

    source: str  # the path, or '<in-memory>' for a module passed from Python
    format: str  # 'torch.export', 'torchscript', 'state_dict', 'pickled-module', 'module', 'logits'
    module: Any = None  # torch.nn.Module (callable on a batch of inputs), None in logits mode
    logits: dict[str, np.ndarray] | None = None  # logits mode: {'eval': (n, C), 'transfer': (m, C)}
    labels: dict[str, np.ndarray] | None = None  # labels stored beside the logits, if any
    metadata: dict = field(default_factory=dict)  # distillation settings found in the checkpoint


@dataclass(frozen=True)
class InspectOptions:
    """Settings of one inspection run (everything beyond the teacher, student and data)."""

    teacher_arch: str | None = None  # 'package.module:callable' or a built-in name (kddiag.models)
    student_arch: str | None = None
    baseline_arch: str | None = None
    temperature: float | None = None  # None: from checkpoint metadata, else DEFAULT_TEMPERATURE (guessed)
    alpha: float | None = None
    classes: str | None = None  # JSON file with {"names": [...], "groups": [...]}
    trust_pickle: bool = False
    feature_layer: str | None = None  # module name whose input/output is the penultimate feature
    batch_size: int = 512
    device: str | None = None  # None: CUDA when present, else CPU
    progress: bool = False
