"""The models' outputs on a data set, as collection hands them to the statistics: held in memory
(:class:`SetOutputs`, :class:`Collected`) or one batch at a time (:class:`Batch`).

The objects check their shapes, finiteness and labels when built and raise KddiagError naming the
model and set; the statistics trust them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

import numpy as np

from kddiag.checks import check_class_ids, check_finite_examples, check_finite_rows, real_array
from kddiag.errors import KddiagError
from kddiag.metrics.strata import N_BUCKETS
from kddiag.types import EVAL, ROLES, TRANSFER


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
        logits = real_array(self.logits, self._name("logits"))
        if logits.ndim != 2 or logits.shape[0] < 1 or logits.shape[1] < 2:
            raise KddiagError(f"{self._name('logits')} must be (n_samples, n_classes) with at least 1 sample and "
                              f"2 classes; got shape {logits.shape}")
        logits = logits.astype(np.float64, copy=False)
        check_finite_rows(logits, self._name("logits"))
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
            features = real_array(self.features, self._name("features"))
            if features.ndim != 2 or features.shape[0] != n_rows:
                raise KddiagError(f"{self._name('features')} must be (n_rows, n_features) = ({n_rows}, …), one "
                                  f"row per example or per feature_rows entry; got shape {features.shape}")
            check_finite_rows(features, self._name("features"))
            object.__setattr__(self, "features", features)
        if self.weight is not None:
            weight = real_array(self.weight, self._name("logit-layer weight"))
            if weight.ndim != 2 or weight.shape[0] != n_classes:
                raise KddiagError(f"{self._name('logit-layer weight')} must be (n_classes, n_features) = "
                                  f"({n_classes}, …); got shape {weight.shape}")
            check_finite_rows(weight, self._name("logit-layer weight"))
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
    (no student: a teacher-only check); kept in their own float dtype (float16, float32 or float64);
    numpy arrays, or torch tensors left on the device that computed them (:func:`is_device_array`).
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
            array = self.logits[role]
            if is_device_array(array):
                if not array.is_floating_point():
                    raise KddiagError(f"{name} must be real numbers; got dtype {array.dtype}")
            else:
                array = real_array(array, name)
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
            array = real_array(value, self._name(role, "features"))
            if array.ndim != 2 or array.shape[0] != labels.size:
                raise KddiagError(f"{self._name(role, 'features')} must be (n_samples, n_features) with one row "
                                  f"per example; got shape {array.shape}")
            features[role] = array
        object.__setattr__(self, "features", features)

    @property
    def n_classes(self) -> int:
        return self.logits["teacher"].shape[1]

    def _check_finite(self, array: np.ndarray, name: str) -> None:
        check_finite_examples(array, name, self.start)

    def _name(self, role: str, what: str) -> str:
        return output_name(role, what, self.dataset, self.sources.get(role))


def output_name(role: str, what: str, dataset: str | None, source: str | None) -> str:
    """How errors name a model's outputs: "teacher logits (eval set, 't.npz')"."""
    where = ([f"{dataset} set"] if dataset else []) + ([f"'{source}'"] if source else [])
    return f"{role} {what}" + (f" ({', '.join(where)})" if where else "")


def is_device_array(value: Any) -> bool:
    """Whether ``value`` is a torch tensor (logits left where a model computed them), not a numpy array."""
    return hasattr(value, "detach") and hasattr(value, "device")


def to_host(value: Any) -> np.ndarray:
    """A numpy array of ``value``, copied from its device when it is a tensor."""
    return value.detach().cpu().numpy() if is_device_array(value) else np.asarray(value)



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
