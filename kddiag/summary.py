"""What the measure stage reads about one data set: :class:`SetSummary`, the streaming statistics of
:mod:`kddiag.accumulate` once every batch is in, and :class:`Moments`, the exact means it keeps.

Exact statistics (moments, calibration bins, class sums, the confusion matrix, the hardest examples)
cover every example; the reservoirs hold per-example values (``examples``) and logit and feature rows
(``rows``) of fixed-seed samples. The summary carries the temperature and alpha it was computed with.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from kddiag.metrics._common import ClassSums, CompensatedSum
from kddiag.metrics.instance import HardExample


class Moments:
    """Count, sum and sum of squares of named per-example quantities over their finite values, and how
    many values were not finite. Additive: batches and shards merge by adding (sums compensated)."""

    def __init__(self, columns: dict[str, np.ndarray]) -> None:
        """The moments of one batch's ``columns`` (name -> per-example values)."""
        self.names = tuple(sorted(columns))
        values = [np.asarray(columns[name], dtype=np.float64) for name in self.names]
        finite = [np.isfinite(v) for v in values]
        self.count = np.array([f.sum() for f in finite], dtype=np.int64)
        self.nonfinite = np.array([f.size - f.sum() for f in finite], dtype=np.int64)
        self._total, self._total_sq = CompensatedSum(len(values)), CompensatedSum(len(values))
        self._total.add(np.array([v[f].sum() for v, f in zip(values, finite)]))
        self._total_sq.add(np.array([np.dot(v[f], v[f]) for v, f in zip(values, finite)]))

    def merge(self, other: "Moments") -> None:
        if other.names != self.names:
            raise ValueError(f"cannot merge moments of {other.names} into {self.names}")
        self.count += other.count
        self.nonfinite += other.nonfinite
        self._total.merge(other._total)
        self._total_sq.merge(other._total_sq)

    def sum(self, name: str) -> float:
        """Sum of the finite values of ``name``."""
        return float(self._total.value()[self.names.index(name)])

    def mean(self, name: str) -> float | None:
        """Mean of ``name``; None when a value was not finite or there is none."""
        k = self.names.index(name)
        return self.sum(name) / self.count[k] if self.count[k] and not self.nonfinite[k] else None

    def std(self, name: str) -> float | None:
        """Population standard deviation of ``name`` (as ``np.std``); None as for :meth:`mean`."""
        mean = self.mean(name)
        if mean is None:
            return None
        k = self.names.index(name)
        return float(np.sqrt(max(self._total_sq.value()[k] / self.count[k] - mean * mean, 0.0)))


@dataclass(frozen=True)
class SetSummary:
    """Everything the measure stage reads about one data set (see the module docstring)."""

    name: str  # EVAL or TRANSFER
    n_samples: int
    n_classes: int
    roles: tuple[str, ...]
    temperature: float
    alpha: float
    label_count: np.ndarray  # (C,)
    moments: Moments
    calibration: dict[str, np.ndarray]  # role -> (3, N_BINS) bins at τ = 1
    target_histogram: np.ndarray  # counts of the teacher's p_y at τ
    class_sums: dict[str, ClassSums]  # role -> class sums at τ = 1
    kept_classes: np.ndarray | None  # the classes of class-by-class statistics; None: all
    confusion: np.ndarray  # (K, K) teacher prediction × student prediction counts over kept classes
    hardest: tuple[HardExample, ...]
    examples: dict[str, np.ndarray]  # reservoir, by index ("index" included)
    rows: dict[str, np.ndarray]  # row reservoir, by index ("index", "labels", "<role>.logits", "<role>.features")
    weights: dict[str, np.ndarray]  # role -> logit-layer weight, where found
    feature_roles: frozenset[str]  # roles whose features were seen
    strata: dict = field(default_factory=dict)  # name -> (count per bucket, meaning -> sum per bucket or None
    # where not measured) (kddiag.metrics.strata; token positions only)

    def mean(self, name: str) -> float | None:
        return self.moments.mean(name)
