"""The inputs of one inspection as the stages hand them on: data sets, tokenized text, class names and
groups, loaded models and what the report says about each input file.

The objects check themselves in ``__post_init__`` and raise KddiagError naming the argument or file;
the stages that receive them trust them. Arrays are numpy arrays; shapes are written
``(n_samples, n_classes)``.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kddiag.checks import check_class_ids, has_non_finite
from kddiag.errors import KddiagError, shown_value
from kddiag.types import MAX_CLASSES, MAX_CLASS_NAME_CHARS


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
            if has_non_finite(self.x):
                raise KddiagError(f"{where}: inputs 'x' hold NaN or Inf; every input value must be finite")


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
class LoadedModel:
    """A model ready to run (``module``), or precomputed logits (logits mode), plus stored metadata."""

    source: str  # the path, or '<in-memory>' for a module passed from Python
    format: str  # 'torch.export', 'torchscript', 'state_dict', 'pickled-module', 'module', 'logits'
    module: Any = None  # torch.nn.Module (callable on a batch of inputs), None in logits mode
    logits: dict[str, np.ndarray] | None = None  # logits mode: {'eval': (n, C), 'transfer': (m, C)}
    labels: dict[str, np.ndarray] | None = None  # labels stored beside the logits, if any
    metadata: dict = field(default_factory=dict)  # distillation settings found in the checkpoint
    notes: tuple[str, ...] = ()  # how the file was read: which weights were chosen, what was not read
