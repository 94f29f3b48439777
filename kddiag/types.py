"""The objects handed from one stage to the next: load → collect → measure → diagnose → render.

Every stage reads and returns these frozen dataclasses; nothing else crosses a module boundary.
Arrays are numpy arrays; shapes are written ``(n_samples, n_classes)``.
"""
from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from kddiag.errors import KddiagError, as_float, shown_value
from kddiag.metrics._common import MAX_TEMPERATURE, MIN_TEMPERATURE, check_temperature, non_finite_rows  # noqa: F401
from kddiag.metrics.strata import N_BUCKETS
from kddiag.progress import check_progress

OUTCOME, UNIVERSE, DOMAIN, INSTANCE = SECTIONS = ("outcome", "universe", "domain", "instance")  # levels 0-3
LEVEL_TITLES = {
    OUTCOME: "Level 0 — outcome",
    UNIVERSE: "Level 1 — knowledge of the universe",
    DOMAIN: "Level 2 — domain knowledge",
    INSTANCE: "Level 3 — instance-specific knowledge",
}
EVAL, TRANSFER, WEIGHTS = "eval", "transfer", "weights"  # WEIGHTS: measured on parameters alone
ROLES = ("teacher", "student", "baseline")  # the models of one inspection, in report order
MAX_CLASSES = 1 << 19  # the most classes kddiag reads from logits files: the largest vocabularies have 262,144
MAX_CLASS_NAME_CHARS = 256  # a class name is a label for tables and plots, not a payload
MAX_PROBE_SEEDS = 64  # initializations a probe may train per setting: 2-3 suffice (docs/probes.md)
MAX_PROBE_EPOCHS = 10_000  # passes over the transfer set a probe arm may train (a training recipe's length)
DEFAULT_TEMPERATURE, DEFAULT_ALPHA = 4.0, 0.9
# Where a distillation setting's value came from, in precedence order: the command line (or the Python
# API's options), the run's own config file (--config), the checkpoint's metadata, else a guessed default.
# A value on the command line and in the config must agree (kddiag.pipeline.settings_of).
SETTING_SOURCES = ("cli", "config", "checkpoint", "guessed")

# The hand-off objects below check themselves when built (``__post_init__``) and raise KddiagError
# naming the argument or file; the stages that receive them trust them.


@dataclass(frozen=True)
class Setting:
    """One distillation setting and where its value came from: 'cli', 'config', 'checkpoint' or 'guessed'
    (:data:`SETTING_SOURCES`, highest precedence first).

    Its value is checked by :class:`Settings`, which knows which setting it is.
    """

    value: float
    source: str
    path: str | None = None  # the checkpoint or config file the value was read from (source 'checkpoint', 'config')

    def __post_init__(self) -> None:
        if self.source not in SETTING_SOURCES:
            raise KddiagError(f"a setting's source must be one of {', '.join(map(repr, SETTING_SOURCES))}; "
                              f"got {self.source!r}")

    @property
    def guessed(self) -> bool:
        return self.source == "guessed"

    @property
    def provenance(self) -> str:
        """Where the value came from, for reports: 'command line', "config 'kd.yaml'", "checkpoint 'student.pt'",
        'guessed (default)'."""
        if self.source in ("checkpoint", "config"):
            return f"{self.source} '{Path(self.path).name}'" if self.path else self.source
        return {"cli": "command line", "guessed": "guessed (default)"}[self.source]

    def origin(self, name: str) -> str:
        """Where the value of setting ``name`` came from, as error messages name it."""
        if self.source == "cli":
            return f"--{name}"
        if self.source == "checkpoint":
            return f"the {name} stored in checkpoint '{self.path}'" if self.path else f"the checkpoint's {name}"
        if self.source == "config":
            return f"the {name} in config '{self.path}'" if self.path else f"the config's {name}"
        return f"the default {name}"


@dataclass(frozen=True)
class Settings:
    """The distillation settings the student was trained with: temperature finite and > 0, alpha in [0, 1]."""

    temperature: Setting = Setting(DEFAULT_TEMPERATURE, "guessed")
    alpha: Setting = Setting(DEFAULT_ALPHA, "guessed")

    def __post_init__(self) -> None:
        _check_temperature(self.temperature.value, self.temperature.origin("temperature"))
        _check_alpha(self.alpha.value, self.alpha.origin("alpha"))


@dataclass(frozen=True)
class RunConfig:
    """The distillation settings read from a training run's own config file (:mod:`kddiag.configs`).

    ``temperature``/``alpha`` are in kddiag's terms (α: the weight of the soft term, in [0, 1]), None when
    the file does not set them; ``keys``: setting name -> where in the file it was read ('KD.TEMPERATURE');
    ``notes``: how the values were derived from the framework's own, for reports.
    """

    path: str
    framework: str  # 'torchdistill', 'mdistiller' or 'lightning'
    temperature: float | None = None
    alpha: float | None = None
    keys: Mapping[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class ClassInfo:
    """Optional class names and known class groups (e.g. super-classes), indexed by class id."""

    names: tuple[str, ...] | None = None
    groups: tuple[int, ...] | None = None  # group id of each class

    def __post_init__(self) -> None:
        if self.names is not None and self.groups is not None and len(self.names) != len(self.groups):
            raise KddiagError(f"{len(self.names)} class names but {len(self.groups)} class groups; "
                              f"give one of each per class")
        for k, name in enumerate(self.names or ()):
            if not isinstance(name, str) or len(name) > MAX_CLASS_NAME_CHARS:
                shown = f"{len(name):,} characters" if isinstance(name, str) else type(name).__name__
                raise KddiagError(f"class name {k} must be text of at most {MAX_CLASS_NAME_CHARS} characters; "
                                  f"got {shown}")
        for k, group in enumerate(self.groups or ()):
            if isinstance(group, bool) or not isinstance(group, numbers.Integral) or not 0 <= group < MAX_CLASSES:
                raise KddiagError(f"class group {k} must be an integer id in [0, {MAX_CLASSES:,}); got "
                                  f"{shown_value(group)}")


IMAGE_LAYOUTS = ("NCHW", "NHWC")  # axis orders of 4-D image arrays


@dataclass(frozen=True)
class ImageOptions:
    """How image inputs are prepared, in this order: resized to ``resize`` (height, width), uint8 pixels
    scaled to [0, 1], then normalized per channel, x[c] ← (x[c] − mean[c]) / std[c].

    ``layout``: the axis order of 4-D image arrays, 'NCHW' or 'NHWC'; None: detected (:mod:`kddiag.images`).
    Any option given also marks floating-point arrays of 3 or 4 dimensions as images.
    """

    mean: tuple[float, ...] | None = None  # one per channel
    std: tuple[float, ...] | None = None  # one per channel, each > 0
    resize: tuple[int, int] | None = None  # (height, width)
    layout: str | None = None

    def __post_init__(self) -> None:
        if (self.mean is None) != (self.std is None):
            raise KddiagError("--normalize needs both the means and the stds; got only "
                              + ("the means" if self.std is None else "the stds"))
        if self.mean is not None:
            mean, std = check_normalize(self.mean, self.std, "--normalize")
            object.__setattr__(self, "mean", mean)
            object.__setattr__(self, "std", std)
        if self.resize is not None:
            object.__setattr__(self, "resize", check_resize(self.resize, "--resize"))
        if self.layout is not None:
            object.__setattr__(self, "layout", check_layout(self.layout, "--layout"))

    @property
    def given(self) -> bool:
        """Whether any option is set."""
        return any(v is not None for v in (self.mean, self.resize, self.layout))


IGNORE_INDEX = -100  # a target position nothing is predicted at (Hugging Face's convention)


@dataclass(frozen=True)
class TokenInputs:
    """Tokenized sequences: what a Hugging Face model adapter (:mod:`kddiag.loading.hf`) takes.

    ``input_ids`` and ``attention_mask``: (n_sequences, length) int64 tensors, the mask 1 on real tokens
    and 0 on padding. ``targets`` (causal language models only): (n_sequences, length) int64, the token
    to be predicted from each position, IGNORE_INDEX where there is none (padding, the last token,
    labels masked with -100). Then every target position is one example of the data set: examples are
    numbered sequence by sequence, position by position (row-major), and a model gives one row of
    logits per target position. Without targets (sequence classifiers) every sequence is one example.
    Slicing (``inputs[a:b]``) takes sequences.
    """

    input_ids: Any
    attention_mask: Any
    targets: Any = None

    def __post_init__(self) -> None:
        import torch

        shapes = {name: tuple(getattr(self, name).shape) for name in ("input_ids", "attention_mask", "targets")
                  if getattr(self, name) is not None}
        for name in shapes:
            value = getattr(self, name)
            if not isinstance(value, torch.Tensor) or value.dtype != torch.int64 or value.ndim != 2:
                raise KddiagError(f"token inputs: {name} must be a 2-D int64 tensor (n_sequences, length); got "
                                  f"{type(value).__name__} {getattr(value, 'dtype', '')} of shape {shapes[name]}")
        if len(set(shapes.values())) > 1:
            raise KddiagError(f"token inputs: input_ids, attention_mask and targets must have one shape; got {shapes}")

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def __getitem__(self, rows: slice) -> "TokenInputs":
        return TokenInputs(self.input_ids[rows], self.attention_mask[rows],
                           None if self.targets is None else self.targets[rows])

    @property
    def per_position(self) -> bool:
        """Whether the examples are target positions (a causal language model), not sequences."""
        return self.targets is not None

    @property
    def n_examples(self) -> int:
        """Target positions with ``targets``, else sequences."""
        return int((self.targets != IGNORE_INDEX).sum()) if self.per_position else len(self)

    def target_positions(self) -> np.ndarray:
        """Each example's index t in its sequence (row-major), for target positions."""
        return (self.targets != IGNORE_INDEX).nonzero()[:, 1].numpy()

    def example_offsets(self) -> np.ndarray:
        """(n_sequences + 1,) int64: the examples of sequence i are offsets[i] … offsets[i + 1] − 1."""
        counts = ((self.targets != IGNORE_INDEX).sum(dim=1).numpy() if self.per_position
                  else np.ones(len(self), dtype=np.int64))
        return np.concatenate(([0], np.cumsum(counts))).astype(np.int64)

    def to(self, device: Any) -> "TokenInputs":
        return TokenInputs(*(None if t is None else t.to(device)
                             for t in (self.input_ids, self.attention_mask, self.targets)))

    def is_floating_point(self) -> bool:
        return False

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.input_ids.shape)

    @property
    def dtype(self) -> Any:
        return self.input_ids.dtype


def n_examples_of(x: Any) -> int:
    """How many examples inputs hold: rows of an array or tensor, or :attr:`TokenInputs.n_examples`."""
    return x.n_examples if isinstance(x, TokenInputs) else int(np.shape(x)[0])


@dataclass(frozen=True, init=False)
class Dataset:
    """Inputs and integer labels of one data set. ``x`` is None in logits mode.

    ``labels``: 1-D integers >= 0, at least one (stored as int64); ``x``, when given, has ``len(labels)`` rows.
    ``y`` is another name for ``labels``, the name ``.pt``/``.npz`` data files and ``(x, y)`` batches use:
    ``Dataset("val", x, y=y)`` is ``Dataset("val", x, labels=y)``, ``dataset.y`` is ``dataset.labels``;
    giving both is an error.
    """

    name: str  # where it came from: a path or a built-in name
    x: Any  # torch.Tensor (n_samples, ...) or None
    labels: np.ndarray  # (n_samples,) int64
    class_info: ClassInfo = ClassInfo()
    format: str | None = None  # 'pt', 'npz', 'builtin', 'image-folder', 'spec:<format>'; None: unknown
    preprocessing: str | None = None  # how ``x`` was made from what is stored, for reports

    def __init__(self, name: str, x: Any, labels: Any = None, class_info: ClassInfo = ClassInfo(),
                 format: str | None = None, preprocessing: str | None = None, *, y: Any = None) -> None:
        if y is not None and labels is not None:
            raise KddiagError(f"data '{name}': labels given twice, as labels and as y (two names of one field): "
                              f"give one")
        if y is None and labels is None:
            raise KddiagError(f"data '{name}': no labels: give labels= (or y=), one integer class id per example")
        for field_name, value in (("name", name), ("x", x), ("labels", labels if y is None else y),
                                  ("class_info", class_info), ("format", format), ("preprocessing", preprocessing)):
            object.__setattr__(self, field_name, value)
        self.__post_init__()

    @property
    def y(self) -> np.ndarray:
        """The labels, under the name data files give them."""
        return self.labels

    def __post_init__(self) -> None:
        where = f"data '{self.name}'"
        labels = check_class_ids(self.labels, f"{where}: labels")
        if len(labels) == 0:
            raise KddiagError(f"{where}: the data set is empty (0 labels)")
        object.__setattr__(self, "labels", labels)
        if isinstance(self.x, TokenInputs):
            if self.x.n_examples != len(labels):
                what = "target positions" if self.x.per_position else "sequences"
                raise KddiagError(f"{where}: {self.x.n_examples} {what} but {len(labels)} labels; give one label "
                                  f"per {what[:-1]}")
        elif self.x is not None:
            shape = tuple(np.shape(self.x))
            if not shape or shape[0] != len(labels):
                raise KddiagError(f"{where}: inputs 'x' have shape {shape} but there are {len(labels)} labels; "
                                  f"the first dimension of x must equal len(labels)")
            if _has_non_finite(self.x):
                raise KddiagError(f"{where}: inputs 'x' hold NaN or Inf; every input value must be finite")


@dataclass(frozen=True)
class ModelOutputs:
    """What one model produced on one data set.

    ``logits``: real, finite, (n_samples, n_classes) with n_samples >= 1 and n_classes >= 2, stored
    as float64. ``features``: finite (n_rows, n_features), one row per example or per entry of
    ``feature_rows`` (increasing example indices). ``weight``: finite (n_classes, n_features).
    """

    logits: np.ndarray  # (n_samples, n_classes) float64
    features: np.ndarray | None = None  # (n_rows, n_features) float32: input of the final linear layer
    weight: np.ndarray | None = None  # (n_classes, n_features): logit-layer weight
    feature_rows: np.ndarray | None = None  # sorted example indices of the feature rows; None: every example
    role: str = "model"  # which model produced them ('teacher', 'student', 'baseline'): named in errors
    source: str | None = None  # its checkpoint or logits file: named in errors

    def __post_init__(self) -> None:
        logits = _real_array(self.logits, self._name("logits"))
        if logits.ndim != 2 or logits.shape[0] < 1 or logits.shape[1] < 2:
            raise KddiagError(f"{self._name('logits')} must be (n_samples, n_classes) with at least 1 sample and "
                              f"2 classes; got shape {logits.shape}")
        logits = logits.astype(np.float64, copy=False)
        _check_finite_rows(logits, self._name("logits"))
        object.__setattr__(self, "logits", logits)
        n_samples, n_classes = logits.shape
        if self.features is not None:
            n_rows = n_samples
            if self.feature_rows is not None:
                rows = np.asarray(self.feature_rows)
                if (rows.ndim != 1 or rows.dtype.kind not in "iu" or rows.size == 0 or np.any(np.diff(rows) <= 0)
                        or rows[0] < 0 or rows[-1] >= n_samples):
                    raise KddiagError(f"{self._name('feature_rows')} must be increasing example indices "
                                      f"in [0, {n_samples})")
                object.__setattr__(self, "feature_rows", rows.astype(np.int64, copy=False))
                n_rows = rows.size
            features = _real_array(self.features, self._name("features"))
            if features.ndim != 2 or features.shape[0] != n_rows:
                raise KddiagError(f"{self._name('features')} must be (n_rows, n_features) = ({n_rows}, …), one "
                                  f"row per example or per feature_rows entry; got shape {features.shape}")
            _check_finite_rows(features, self._name("features"))
            object.__setattr__(self, "features", features)
        if self.weight is not None:
            weight = _real_array(self.weight, self._name("logit-layer weight"))
            if weight.ndim != 2 or weight.shape[0] != n_classes:
                raise KddiagError(f"{self._name('logit-layer weight')} must be (n_classes, n_features) = "
                                  f"({n_classes}, …); got shape {weight.shape}")
            _check_finite_rows(weight, self._name("logit-layer weight"))
            object.__setattr__(self, "weight", weight)

    def _name(self, what: str) -> str:
        return f"{self.role} {what}" + (f" ('{self.source}')" if self.source else "")


@dataclass(frozen=True)
class SetOutputs:
    """All models' outputs on one data set ('eval' or 'transfer').

    Every model gives logits of the same shape (n_samples, n_classes); ``labels`` are n_samples
    class ids in [0, n_classes).
    """

    dataset: str  # EVAL or TRANSFER
    labels: np.ndarray  # (n_samples,)
    teacher: ModelOutputs
    student: ModelOutputs | None  # None: a teacher-only check
    baseline: ModelOutputs | None = None
    source: str | None = None  # the data set's file or built-in name: named in errors

    def __post_init__(self) -> None:
        if self.dataset not in (EVAL, TRANSFER):
            raise KddiagError(f"a data set must be '{EVAL}' or '{TRANSFER}'; got {self.dataset!r}")
        data = f"the {self.dataset} set" + (f" ('{self.source}')" if self.source else "")
        labels = check_class_ids(self.labels, f"labels of {data}")
        object.__setattr__(self, "labels", labels)
        models = {role: out for role, out in (("teacher", self.teacher), ("student", self.student),
                                               ("baseline", self.baseline)) if out is not None}
        for role, out in models.items():
            if not isinstance(out, ModelOutputs):
                raise KddiagError(f"{role} outputs on {data} must be a ModelOutputs; got {type(out).__name__}")
            if len(out.logits) != len(labels):
                raise KddiagError(f"{self._logits(role, out)} have {len(out.logits)} rows but {data} has "
                                  f"{len(labels)} labels; each model must give one row per example, in the "
                                  f"data's order")
        n_classes = self.teacher.logits.shape[1]
        for role, out in models.items():
            if out.logits.shape[1] != n_classes:
                raise KddiagError(f"{self._logits('teacher', self.teacher)} have {n_classes} classes but "
                                  f"{self._logits(role, out)} have {out.logits.shape[1]}; both must be "
                                  f"(n_samples, n_classes)")
        check_class_ids(labels, f"labels of {data}", n_classes=n_classes)

    @property
    def n_classes(self) -> int:
        return self.teacher.logits.shape[1]

    def _logits(self, role: str, out: ModelOutputs) -> str:
        return f"{role} logits ({self.dataset} set" + (f", '{out.source}')" if out.source else ")")


@dataclass(frozen=True)
class Batch:
    """Every model's outputs on consecutive examples ``start``, ``start + 1``, … of one data set: what
    collection hands the streaming statistics (:mod:`kddiag.accumulate`), checked batch by batch.

    ``logits``: role -> real, finite (n, C), C ≥ 2, the same C for every role, the teacher's present
    (no student: a teacher-only check); kept in their own float dtype (float16, float32 or float64).
    ``features``: role -> (n, D) floats, NaN rows where a model kept none. ``labels``: n class ids in [0, C).
    """

    start: int
    labels: np.ndarray
    logits: Mapping[str, np.ndarray]
    features: Mapping[str, np.ndarray] = field(default_factory=dict)
    sources: Mapping[str, str | None] = field(default_factory=dict)  # role -> file: named in errors
    dataset: str | None = None  # EVAL or TRANSFER: named in errors
    data: str | None = None  # the data set's file or built-in name: named in errors
    strata: Mapping[str, np.ndarray] = field(default_factory=dict)  # name -> each example's bucket
    # (kddiag.metrics.strata: 'frequency', 'position'; token positions only)

    def __post_init__(self) -> None:
        labels = check_class_ids(self.labels, "labels")
        object.__setattr__(self, "labels", labels)
        if not {"teacher"} <= set(self.logits) <= set(ROLES):
            raise KddiagError(f"a batch needs teacher logits (and optionally student and baseline); "
                              f"got {sorted(self.logits)}")
        logits, n_classes = {}, None
        for role in ROLES:
            if role not in self.logits:
                continue
            name = self._name(role, "logits")
            array = _real_array(self.logits[role], name)
            if array.dtype.kind != "f":
                array = array.astype(np.float64)
            if array.ndim != 2 or array.shape[0] != labels.size or array.shape[1] < 2:
                raise KddiagError(f"{name} must be (n_samples, n_classes) with one row per example "
                                  f"({labels.size} here) and at least 2 classes; got shape {array.shape}")
            if n_classes is not None and array.shape[1] != n_classes:
                raise KddiagError(f"{self._name('teacher', 'logits')} have {n_classes} classes but {name} have "
                                  f"{array.shape[1]}; both must be (n_samples, n_classes)")
            n_classes = array.shape[1]
            self._check_finite(array, name)
            logits[role] = array
        object.__setattr__(self, "logits", logits)
        data = " of the " + " ".join(filter(None, (self.dataset and f"{self.dataset} set",
                                                   self.data and f"('{self.data}')"))) if self.dataset else ""
        check_class_ids(labels, f"labels{data}", n_classes=n_classes)
        for name, bucket in self.strata.items():
            bucket = np.asarray(bucket)
            if (name not in N_BUCKETS or bucket.shape != labels.shape or bucket.dtype.kind not in "iu"
                    or (bucket.size and (bucket.min() < 0 or bucket.max() >= N_BUCKETS[name]))):
                raise KddiagError(f"stratum {name!r}: one bucket id in [0, {N_BUCKETS.get(name, '?')}) per example; "
                                  f"got {bucket.dtype} of shape {bucket.shape}")
        features = {}
        for role, value in self.features.items():
            array = _real_array(value, self._name(role, "features"))
            if array.ndim != 2 or array.shape[0] != labels.size:
                raise KddiagError(f"{self._name(role, 'features')} must be (n_samples, n_features) with one row "
                                  f"per example; got shape {array.shape}")
            features[role] = array
        object.__setattr__(self, "features", features)

    @property
    def n_classes(self) -> int:
        return self.logits["teacher"].shape[1]

    def _check_finite(self, array: np.ndarray, name: str) -> None:
        """Raise naming the first example with NaN or Inf."""
        bad = non_finite_rows(array)
        if bad.size:
            raise KddiagError(f"{name}: NaN or Inf in example {self.start + bad[0]} ({bad.size} of the "
                              f"{len(array)} examples from {self.start}); every value must be finite")

    def _name(self, role: str, what: str) -> str:
        where = [f"{self.dataset} set"] if self.dataset else []
        if self.sources.get(role):
            where.append(f"'{self.sources[role]}'")
        return f"{role} {what}" + (f" ({', '.join(where)})" if where else "")


@dataclass(frozen=True)
class Collected:
    """The outputs of all models on every data set given: one or two :class:`SetOutputs` (eval, transfer).

    Iterable over its sets, with ``len()``; the sets agree on the number of classes.
    """

    sets: tuple[SetOutputs, ...]

    def __post_init__(self) -> None:
        sets = tuple(self.sets)
        object.__setattr__(self, "sets", sets)
        if not 1 <= len(sets) <= 2 or not all(isinstance(s, SetOutputs) for s in sets):
            raise KddiagError(f"collected outputs must be 1 or 2 SetOutputs (eval and/or transfer); "
                              f"got {[type(s).__name__ for s in sets]}")
        if len(sets) == 2 and sets[0].dataset == sets[1].dataset:
            raise KddiagError(f"the {sets[0].dataset} set was given twice; give at most one eval and one transfer set")
        if len(sets) == 2 and sets[0].n_classes != sets[1].n_classes:
            first, second = (f"the {s.dataset} set" + (f" ('{s.source}')" if s.source else "") for s in sets)
            raise KddiagError(f"the models give {sets[1].n_classes} classes on {second} but {sets[0].n_classes} "
                              f"on {first}; all sets must share the classes")

    @property
    def n_classes(self) -> int:
        return self.sets[0].n_classes

    @property
    def eval(self) -> SetOutputs | None:
        return next((s for s in self.sets if s.dataset == EVAL), None)

    @property
    def transfer(self) -> SetOutputs | None:
        return next((s for s in self.sets if s.dataset == TRANSFER), None)

    def __iter__(self) -> Iterator[SetOutputs]:
        return iter(self.sets)

    def __len__(self) -> int:
        return len(self.sets)


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


@dataclass(frozen=True)
class BatchNormFit:
    """The activations a data set produces at the teacher's first BatchNorm layer against the running
    statistics that layer kept in training (``kddiag.metrics.inputs.batchnorm_mismatch``): far apart, the
    inputs are not prepared as in the teacher's training."""

    layer: str  # the module's name in the teacher
    n_examples: int  # how many of the set's examples were run
    mean_shift: float  # median over channels of |μ_obs − μ_run| in running standard deviations
    variance_ratio: float  # geometric median over channels of σ²_obs / σ²_run

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class NormalizationFit:
    """A data set's inputs against the normalization the teacher stores (``mean``/``std`` per channel; one
    value: every channel): normalized so, its training inputs have per-channel mean 0 and variance 1
    (``kddiag.metrics.inputs.batchnorm_mismatch`` against those). The same against the raw statistics
    (mean ``mean``, variance ``std²``) tells inputs given without the normalization."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    n_examples: int  # how many of the set's examples were read
    mean_shift: float  # median over channels of |μ_obs| (normalized units)
    variance_ratio: float  # geometric median over channels of σ²_obs / 1
    raw_mean_shift: float  # median over channels of |μ_obs − mean| / std
    raw_variance_ratio: float  # geometric median over channels of σ²_obs / std²

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class InputInfo:
    """What was inspected: one entry per input file or built-in source."""

    role: str  # teacher, student, baseline, eval, transfer, classes
    path: str
    format: str  # e.g. 'torch.export', 'torchscript', 'state_dict', 'pickled-module', 'logits', 'builtin', 'pt', 'npz'
    n_samples: int | None = None
    n_classes: int | None = None
    notes: tuple[str, ...] = ()  # how a checkpoint was read (LoadedModel.notes)
    preprocessing: str | None = None  # data sets: how the inputs were prepared (Dataset.preprocessing)
    input_range: tuple[float, float] | None = None  # data sets with real-valued inputs: (min, max)
    input_mean: float | None = None  # ... and their mean over every value
    teacher_batchnorm: BatchNormFit | None = None  # data sets: how the teacher's first BatchNorm layer sees them
    teacher_normalization: NormalizationFit | None = None  # data sets: against the normalization the teacher stores

    def to_dict(self) -> dict:
        shown = {"notes": list, "teacher_batchnorm": BatchNormFit.to_dict,
                 "teacher_normalization": NormalizationFit.to_dict}
        return {k: shown.get(k, lambda x: x)(v) for k, v in self.__dict__.items() if v is not None and v != ()}


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
class LoadedModel:
    """A model ready to run (``module``), or precomputed logits (logits mode), plus stored metadata."""

    source: str  # the path, or '<in-memory>' for a module passed from Python
    format: str  # 'torch.export', 'torchscript', 'state_dict', 'pickled-module', 'module', 'logits'
    module: Any = None  # torch.nn.Module (callable on a batch of inputs), None in logits mode
    logits: dict[str, np.ndarray] | None = None  # logits mode: {'eval': (n, C), 'transfer': (m, C)}
    labels: dict[str, np.ndarray] | None = None  # labels stored beside the logits, if any
    metadata: dict = field(default_factory=dict)  # distillation settings found in the checkpoint
    notes: tuple[str, ...] = ()  # how the file was read: which weights were chosen, what was not read


@dataclass(frozen=True)
class ProbeOptions:
    """How remedy probes train (:mod:`kddiag.probe`): each setting and seed for ``steps`` Adam steps, or
    ``epochs`` passes over the transfer set — the student's own training length, so settings are ranked
    where that training stops (None for both: the checkpoint's epochs, else ten passes, at least 100
    steps, doubled up to 2,000 while the control still learns); ``batch_size`` transfer examples a step
    (None: the checkpoint's, else 64); ``seeds`` initializations (None: 3 for a probe as long as the
    student's training, else 2); learning rate ``lr`` (None: the
    checkpoint's, else a short check)."""

    steps: int | None = None
    batch_size: int | None = None
    seeds: int | None = None
    lr: float | None = None
    seed: int = 0  # the first initialization's seed; seed k is seed + k
    epochs: float | None = None

    def __post_init__(self) -> None:
        for name, least in (("steps", 1), ("batch_size", 1), ("seeds", 1), ("seed", 0)):
            value = getattr(self, name)
            if value is None and name in ("steps", "batch_size", "seeds"):
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
                raise KddiagError(f"--probe-{name.replace('_', '-')} must be an integer >= {least}; got {value!r}")
        if self.lr is not None and not (_is_real(self.lr) and math.isfinite(self.lr) and 0 < self.lr <= 10):
            raise KddiagError(f"--probe-lr must be a number in (0, 10]; got {self.lr!r}")
        if self.epochs is not None and not (_is_real(self.epochs) and math.isfinite(self.epochs)
                                            and 0 < self.epochs <= MAX_PROBE_EPOCHS):
            raise KddiagError(f"--probe-epochs must be a number in (0, {MAX_PROBE_EPOCHS:g}]; got {self.epochs!r}")
        if self.seeds is not None and self.seeds > MAX_PROBE_SEEDS:
            raise KddiagError(f"--probe-seeds must be at most {MAX_PROBE_SEEDS} (each seed trains every setting "
                              f"once more); got {self.seeds}")
        if self.steps is not None and self.epochs is not None:
            raise KddiagError("--probe-steps and --probe-epochs both set the probes' length: give one")


@dataclass(frozen=True)
class InspectOptions:
    """Settings of one inspection run (everything beyond the teacher, student and data)."""

    # 'package.module:callable', 'package.module:Class(28, hidden=64)' (literal arguments only),
    # 'path/to/models.py:Class(28)' or a built-in name (kddiag.models, kddiag.loading.archs)
    teacher_arch: str | None = None
    student_arch: str | None = None
    baseline_arch: str | None = None  # None: the student's architecture
    ema: tuple[str, ...] = ()  # roles ('teacher', 'student', 'baseline') whose EMA weights to use
    temperature: float | None = None  # None: from the config, else checkpoint metadata, else DEFAULT_TEMPERATURE
    alpha: float | None = None
    # the training run's config (torchdistill or mdistiller YAML, Lightning hparams.yaml) that holds τ and α
    # (kddiag.configs); a temperature or alpha given as well must agree with it
    config: str | os.PathLike | None = None
    classes: str | None = None  # JSON file with {"names": [...], "groups": [...]}
    trust_pickle: bool = False
    trust_program: bool = False  # run TorchScript/torch.export programs with operators outside the allowlist
    trust_remote_code: bool = False  # let a Hugging Face model directory run its own modelling code
    max_length: int | None = None  # text data: tokens per sequence (None: the tokenizer's, within reason)
    feature_layer: str | None = None  # module name whose input/output is the penultimate feature
    batch_size: int = 512
    device: str | None = None  # None: CUDA when present, else CPU
    progress: str | bool = "none"  # 'auto', 'bar', 'lines' or 'none' (kddiag.progress); True: 'auto', False: 'none'
    images: ImageOptions = ImageOptions()  # for every data set read from a path (--normalize, --resize, --layout)
    probe: ProbeOptions | None = None  # train remedy probes of the student (kddiag.probe); None: no probes
    full_paths: bool = False  # reports name files by absolute path (default: relative to the working directory)

    def __post_init__(self) -> None:
        self._check_kinds()
        self._check_models()
        self._check_run()

    def _check_kinds(self) -> None:
        """The switches are booleans, ``progress`` a known mode, the file and name options strings."""
        for name in ("trust_pickle", "trust_program", "trust_remote_code", "full_paths"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise KddiagError(f"InspectOptions.{name} must be True or False; got {getattr(self, name)!r}")
        progress = bool(self.progress) if isinstance(self.progress, np.bool_) else self.progress
        object.__setattr__(self, "progress", check_progress(progress, "InspectOptions.progress"))
        for name in ("classes", "config", "feature_layer", "device"):
            value = getattr(self, name)
            paths = name in ("classes", "config")
            if value is not None and not isinstance(value, (str, os.PathLike) if paths else str):
                raise KddiagError(f"InspectOptions.{name} must be a string or None; got {type(value).__name__}")

    def _check_models(self) -> None:
        """Each architecture spec parses (before any model is loaded); ``ema`` names known roles."""
        from kddiag.loading.archs import parse_arch

        for role in ROLES:
            spec = getattr(self, f"{role}_arch")
            if spec is not None and not isinstance(spec, str):
                raise KddiagError(f"--{role}-arch must be a string such as 'package.module:Class(28)'; "
                                  f"got {type(spec).__name__}")
            if spec is not None:
                parse_arch(spec, f"--{role}-arch")  # a malformed spec fails before any model is loaded
        if isinstance(self.ema, str) or not set(self.ema) <= set(ROLES):
            raise KddiagError(f"--ema must name roles among {', '.join(ROLES)}; got {self.ema!r}")

    def _check_run(self) -> None:
        """The settings, sizes, device and nested options of the run."""
        if self.temperature is not None:
            _check_temperature(self.temperature, "--temperature")
        if self.alpha is not None:
            _check_alpha(self.alpha, "--alpha")
        size = self.batch_size
        if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 1:
            raise KddiagError(f"--batch-size must be a positive integer; got {self.batch_size!r}")
        if self.device is not None:
            _check_device(self.device)
        length = self.max_length
        if length is not None and (isinstance(length, bool) or not isinstance(length, numbers.Integral) or length < 2):
            raise KddiagError(f"--max-length must be an integer >= 2; got {self.max_length!r}")
        if self.probe is not None and not isinstance(self.probe, ProbeOptions):
            raise KddiagError(f"InspectOptions.probe must be a ProbeOptions or None; got {type(self.probe).__name__}")
        if not isinstance(self.images, ImageOptions):
            raise KddiagError(f"InspectOptions.images must be an ImageOptions; got {type(self.images).__name__}")


def check_normalize(mean: Any, std: Any, origin: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel means and stds as float tuples: as many of each (at least one), finite, every std > 0."""
    values = []
    for name, given in (("means", mean), ("stds", std)):
        if isinstance(given, (str, bytes)) or not hasattr(given, "__len__") or len(given) == 0:
            raise KddiagError(f"{origin}: the {name} must be a non-empty list of numbers, one per channel; "
                              f"got {shown_value(given)}")
        if not all(_is_real(v) and math.isfinite(as_float(v)) for v in given):
            raise KddiagError(f"{origin}: the {name} must be finite numbers; got {shown_value(list(given))}")
        values.append(tuple(float(v) for v in given))
    mean, std = values
    if len(mean) != len(std):
        raise KddiagError(f"{origin}: {len(mean)} means but {len(std)} stds; give one mean and one std per channel")
    if min(std) <= 0:
        raise KddiagError(f"{origin}: every std must be > 0; got {min(std):g}")
    return mean, std


def check_resize(size: Any, origin: str) -> tuple[int, int]:
    """(height, width), two positive integers."""
    if (isinstance(size, (str, bytes)) or not hasattr(size, "__len__") or len(size) != 2
            or not all(isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_)) and v > 0
                       for v in size)):
        raise KddiagError(f"{origin} must be two positive integers (height, width); got {size!r}")
    return int(size[0]), int(size[1])


def check_layout(layout: Any, origin: str) -> str:
    """'NCHW' or 'NHWC', in any case."""
    if not isinstance(layout, str) or layout.upper() not in IMAGE_LAYOUTS:
        raise KddiagError(f"{origin} must be one of {', '.join(IMAGE_LAYOUTS)}; got {layout!r}")
    return layout.upper()


def _check_device(device: str) -> None:
    """A torch device this machine has: 'cpu', 'cuda', 'cuda:1', 'mps', …"""
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise KddiagError(f"--device must be a torch device such as cpu, cuda or cuda:1; got {device!r}") from None
    backend = getattr(torch, parsed.type, None)
    available = parsed.type == "cpu" or (backend is not None and hasattr(backend, "is_available")
                                         and backend.is_available())
    if not available:
        raise KddiagError(f"--device {device!r}: this machine has no {parsed.type} device")


# --- checks shared by the hand-off objects --------------------------------------------------------

def _check_temperature(value: Any, origin: str) -> None:
    check_temperature(value, origin)  # kddiag's one rule for τ, in kddiag.metrics._common


def _check_alpha(value: Any, origin: str) -> None:
    if not _is_real(value) or not 0 <= value <= 1:
        raise KddiagError(f"{origin} must be a number in [0, 1]; got {_shown(value)}")


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _shown(value: Any) -> str:
    return repr(float(value)) if _is_real(value) else repr(value)


def check_class_ids(labels: Any, where: str, *, n_classes: int | None = None) -> np.ndarray:
    """Labels (an array or a tensor) as an int64 array of class ids: 1-D integers ≥ 0, below ``n_classes`` when
    given. ``where`` names them in the one-line error ("data 'd.pt': labels"). The one check of labels."""
    array = labels.detach().cpu().numpy() if hasattr(labels, "detach") else np.asarray(labels)
    if array.ndim != 1:
        hint = " (one-hot or probabilities? give class ids)" if array.ndim == 2 else ""
        raise KddiagError(f"{where} must be 1-D class ids (n_samples,); got shape {array.shape}{hint}")
    if array.dtype.kind not in "iu":
        raise KddiagError(f"{where} must be integer class ids; got dtype {array.dtype}")
    if array.size and array.min() < 0:
        raise KddiagError(f"{where} must be class ids >= 0; got {array.min()}")
    if array.size and n_classes is not None and array.max() >= n_classes:
        raise KddiagError(f"{where} must lie in [0, {n_classes}) for {n_classes}-class models; got values from "
                          f"{array.min()} to {array.max()}")
    return array.astype(np.int64, copy=False)


def _has_non_finite(x: Any) -> bool:
    """Whether floating inputs (a tensor or an array) hold NaN or Inf; integer inputs never do."""
    if hasattr(x, "is_floating_point"):  # NaN propagates to the min and max, Inf is one of them: one fast pass
        if not x.is_floating_point() or x.numel() == 0:  # complex tensors are not floating point
            return False
        low, high = x.aminmax()
        return not bool(low.isfinite() and high.isfinite())
    array = np.asarray(x)
    return array.dtype.kind in "fc" and array.size > 0 and non_finite_rows(array).size > 0


def _real_array(value: Any, name: str) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype.kind not in "iuf":
        raise KddiagError(f"{name} must be real numbers; got dtype {array.dtype}")
    return array


def _check_finite_rows(array: np.ndarray, name: str) -> None:
    """Raise, counting the rows with NaN or Inf, unless every entry is finite."""
    bad = non_finite_rows(array).size
    if bad:
        raise KddiagError(f"{name}: NaN or Inf in {bad} of {len(array)} rows; every value must be finite")


def __getattr__(name: str) -> Any:
    """``Report``, now at home in :mod:`kddiag.results`, still importable from here."""
    if name == "Report":
        from kddiag.results import Report

        return Report
    raise AttributeError(f"module 'kddiag.types' has no attribute {name!r}")
