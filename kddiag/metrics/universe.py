"""Level 1 — knowledge of the universe: calibration, and how soft the teacher's targets are.

Calibration follows Guo et al. 2017 ("On Calibration of Modern Neural Networks"): ECE and MCE on
equal-width bins of the max probability, bins (lo, hi] as in Guo / torchmetrics, and the
temperature T* that minimizes the NLL. Softness follows Müller et al. 2019 ("When Does Label
Smoothing Help?"): a teacher whose targets put mass ε on wrong classes acts like label smoothing
of strength γ = ε·C/(C − 1).

Public functions take logits; the ``*_of`` helpers take :class:`SoftmaxStats` (valid input assumed)
so :func:`kddiag.measure.measure` runs the softmax once per model and temperature.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kddiag.metrics._common import (ClassSums, SoftmaxStats, Workspace, bin_edges, bin_index, check_labels,
                                    check_logits, check_n_bins, check_temperature, load_rows, map_blocks,
                                    softmax_stats, subsample_indices)

N_BINS = 15
HISTOGRAM_BINS = 20
SATURATION = 0.99  # p_y above this counts as a saturated (one-hot) target
TEMPERATURE_BOUNDS = (0.01, 100.0)  # T* is searched in this range
FIT_MAX_ELEMENTS = 1 << 22  # T* is fitted on a fixed-seed subsample of at most this many logits
_BETA_RTOL = 1e-7  # Newton on 1/T stops when a step changes it by less than this


@dataclass(frozen=True)
class Reliability:
    """Reliability diagram data: per equal-width bin of max p¹, its edges, mean confidence, accuracy, count.

    ``bin_confidence`` and ``bin_accuracy`` are NaN for an empty bin; arrays of length n_bins (edges n_bins + 1).
    """

    bin_edges: np.ndarray
    bin_confidence: np.ndarray
    bin_accuracy: np.ndarray
    bin_count: np.ndarray

    def to_dict(self) -> dict:
        return {"bin_edges": self.bin_edges, "bin_confidence": self.bin_confidence,
                "bin_accuracy": self.bin_accuracy, "bin_count": self.bin_count}

    @classmethod
    def from_dict(cls, value: dict) -> "Reliability":
        return cls(*(_array(value[key]) for key in ("bin_edges", "bin_confidence", "bin_accuracy", "bin_count")))


@dataclass(frozen=True)
class Histogram:
    """Counts of a per-example value in equal-width bins on [0, 1]."""

    bin_edges: np.ndarray  # (n_bins + 1,)
    counts: np.ndarray  # (n_bins,)

    def to_dict(self) -> dict:
        return {"bin_edges": self.bin_edges, "counts": self.counts}

    @classmethod
    def from_dict(cls, value: dict) -> "Histogram":
        return cls(_array(value["bin_edges"]), _array(value["counts"]))


def _array(values) -> np.ndarray:
    """A JSON list as an array, null as NaN."""
    return np.array([np.nan if v is None else v for v in values])


# ---------------------------------------------------------------- calibration

def expected_calibration_error(logits, labels, *, n_bins: int = N_BINS) -> float:
    """ECE = Σ_m (|B_m|/n)·|acc(B_m) − conf(B_m)|, equal-width bins (lo, hi] of max_k p¹_k (Guo 2017, Eq. 3)."""
    stats, labels, n_bins = _calibration_input(logits, labels, n_bins)
    return ece_of(calibration_bins(stats, labels, n_bins=n_bins))


def adaptive_calibration_error(logits, labels, *, n_bins: int = N_BINS) -> float:
    """ECE over equal-mass bins: examples sorted by (max p¹, correctness), split by ``np.array_split``."""
    stats, labels, n_bins = _calibration_input(logits, labels, n_bins)
    return adaptive_ece_of(np.exp(stats.max_log_prob), (stats.prediction == labels).astype(np.float64), n_bins=n_bins)


def maximum_calibration_error(logits, labels, *, n_bins: int = N_BINS) -> float:
    """MCE = max_m |acc(B_m) − conf(B_m)| over the non-empty equal-width bins (Guo 2017)."""
    stats, labels, n_bins = _calibration_input(logits, labels, n_bins)
    return mce_of(calibration_bins(stats, labels, n_bins=n_bins))


def classwise_calibration_error(logits, labels, *, n_bins: int = N_BINS) -> float:
    """mean over classes k of the ECE of p¹_k against 1{y = k}, equal-width bins (lo, hi] over all examples."""
    logits = check_logits(logits)
    labels = check_labels(labels, n_samples=logits.shape[0], n_classes=logits.shape[1])
    n_bins = check_n_bins(n_bins)
    sums = ClassSums(logits.shape[1], n_bins=n_bins)
    softmax_stats(logits, labels, class_sums=sums)
    return classwise_ece_of(sums)


def reliability_bins(logits, labels, *, n_bins: int = N_BINS) -> Reliability:
    """Reliability diagram data (:class:`Reliability`): equal-width bins of max p¹; an empty bin has
    confidence and accuracy NaN."""
    stats, labels, n_bins = _calibration_input(logits, labels, n_bins)
    return reliability_of(calibration_bins(stats, labels, n_bins=n_bins))


def nll_loss(logits, labels) -> float:
    """mean −log p¹_y, nats (log-softmax by logsumexp: finite for any finite logits)."""
    stats, labels, _ = _calibration_input(logits, labels, N_BINS)
    return nll_of(stats)


def brier_loss(logits, labels) -> float:
    """Multi-class Brier score: mean Σ_k (p¹_k − 1{y = k})², computed as (1 − p_y)² + Σ_{k≠y} p_k²."""
    stats, labels, _ = _calibration_input(logits, labels, N_BINS)
    return brier_of(stats)


def fitted_temperature(logits, labels) -> float:
    """T* = argmin_T mean −log softmax(z/T)_y over T in [0.01, 100] (temperature scaling, Guo 2017).

    T* > 1: over-confident. The NLL is convex in β = 1/T (its second derivative is Var_p(z)), so a
    safeguarded Newton iteration on β finds the minimum; at a bound (e.g. separable data) the bound
    is returned. Sets larger than 2²² logits (4,194 examples × 1,000 classes) are fitted on a
    fixed-seed subsample of that size, as temperature scaling is usually fitted on a few thousand
    held-out examples (Guo 2017).
    """
    logits = check_logits(logits)
    labels = check_labels(labels, n_samples=logits.shape[0], n_classes=logits.shape[1])
    return fitted_temperature_of(logits, labels)


def _calibration_input(logits, labels, n_bins) -> tuple[SoftmaxStats, np.ndarray, int]:
    logits = check_logits(logits)
    labels = check_labels(labels, n_samples=logits.shape[0], n_classes=logits.shape[1])
    return softmax_stats(logits, labels), labels, check_n_bins(n_bins)


def calibration_bins(stats: SoftmaxStats, labels: np.ndarray, *, n_bins: int = N_BINS) -> np.ndarray:
    """(3, n_bins): count, confidence sum and correct count per equal-width bin of the max probability
    (τ = 1 stats). Sums: the bins of several batches add up."""
    confidence = np.exp(stats.max_log_prob)
    correct = (stats.prediction == labels).astype(np.float64)
    index = bin_index(confidence, n_bins)
    return np.stack((np.bincount(index, minlength=n_bins), np.bincount(index, weights=confidence, minlength=n_bins),
                     np.bincount(index, weights=correct, minlength=n_bins)))


def ece_of(bins: np.ndarray) -> float:
    """ECE from :func:`calibration_bins`; see :func:`expected_calibration_error`."""
    count, confidence, correct = bins
    return float(np.abs(correct - confidence).sum() / count.sum())


def mce_of(bins: np.ndarray) -> float:
    """MCE from :func:`calibration_bins`; see :func:`maximum_calibration_error`."""
    count, confidence, correct = bins
    filled = count > 0
    return float(np.max(np.abs(correct[filled] - confidence[filled]) / count[filled]))


def adaptive_ece_of(confidence: np.ndarray, correct: np.ndarray, *, n_bins: int = N_BINS) -> float:
    """Adaptive ECE from each example's max probability and correctness (0/1); see
    :func:`adaptive_calibration_error`."""
    order = np.lexsort((correct, confidence))
    size, extra = divmod(confidence.size, n_bins)  # as np.array_split: the first `extra` bins hold one more
    group = np.repeat(np.arange(n_bins), [size + 1] * extra + [size] * (n_bins - extra))
    gap = np.bincount(group, weights=correct[order] - confidence[order], minlength=n_bins)
    return float(np.abs(gap).sum() / confidence.size)


def classwise_ece_of(sums: ClassSums) -> float:
    """Class-wise ECE from :class:`ClassSums`; see :func:`classwise_calibration_error`."""
    confidence, correct = sums.binned()
    return float(np.mean(np.abs(correct - confidence).sum(axis=1) / sums.label_count.sum()))


def reliability_of(bins: np.ndarray) -> Reliability:
    """Reliability diagram data from :func:`calibration_bins`; see :func:`reliability_bins`."""
    count, confidence, correct = bins
    filled = count > 0
    safe = np.where(filled, count, 1)
    return Reliability(bin_edges(count.size), np.where(filled, confidence / safe, np.nan),
                       np.where(filled, correct / safe, np.nan), count.astype(np.int64))


def nll_of(stats: SoftmaxStats) -> float:
    """mean −log p_y."""
    return float(-np.mean(stats.target_log_prob))


def brier_of(stats: SoftmaxStats) -> float:
    """mean (1 − p_y)² + Σ_{k≠y} p_k²."""
    return float(np.mean(stats.nontarget_mass**2 + stats.nontarget_sum_sq))


def fit_rows(n_samples: int, n_classes: int) -> int:
    """How many of ``n_samples`` rows of C classes T* is fitted on (a fixed-seed subsample beyond)."""
    return min(n_samples, max(2, FIT_MAX_ELEMENTS // n_classes))


def fitted_temperature_of(logits: np.ndarray, labels: np.ndarray) -> float:
    """T* for valid input; see :func:`fitted_temperature`."""
    rows = subsample_indices(logits.shape[0], fit_rows(*logits.shape))
    if rows.size == logits.shape[0]:
        return float(1.0 / _newton_inverse_temperature(logits, labels, None))
    return float(1.0 / _newton_inverse_temperature(logits, labels[rows], rows))


def _newton_inverse_temperature(logits: np.ndarray, labels: np.ndarray, rows: np.ndarray | None) -> float:
    """Root in [1/T_max, 1/T_min] of the NLL's derivative in β on ``logits[rows]`` (the NLL is convex in β).

    Safeguarded Newton from β = 1 (as Numerical Recipes' ``rtsafe``): a step that leaves the bracket
    or shrinks too slowly is replaced by the bound it heads to, tried once (the answer when the
    derivative keeps its sign there, e.g. separable data), then by bisection in log β.
    """
    lo, hi = 1.0 / TEMPERATURE_BOUNDS[1], 1.0 / TEMPERATURE_BOUNDS[0]
    tried = set()
    beta, step_last, step_before = 1.0, np.inf, np.inf
    for _ in range(200):
        slope, curvature = _nll_slope_curvature(logits, labels, rows, beta)
        if slope == 0.0:
            return beta
        if slope > 0:
            hi = beta
        else:
            lo = beta
        newton = beta - slope / curvature if curvature > 0 else np.nan
        if lo < newton < hi and abs(newton - beta) <= 0.5 * step_before:
            target = newton
        else:
            bound = hi if slope < 0 else lo
            target = bound if bound not in tried else float(np.sqrt(lo * hi))
            tried.add(bound)
        if abs(target - beta) <= _BETA_RTOL * beta:
            return target
        step_before, step_last = step_last, abs(target - beta)
        beta = target
    return beta


def _nll_slope_curvature(logits: np.ndarray, labels: np.ndarray, rows: np.ndarray | None, beta: float
                         ) -> tuple[float, float]:
    """First and second derivative in β of mean_i [logsumexp(β z_i) − β z_iy] over ``logits[rows]``
    (all rows when None; ``labels`` already of those rows): mean E_p[z] − z_y and mean Var_p(z)."""

    def block(start: int, stop: int, space: Workspace) -> dict:
        n_rows = stop - start
        z = load_rows(logits, start, stop, space, "z", rows)
        d = np.subtract(z, z.max(axis=1)[:, None], out=space.array("d", n_rows))
        e = np.exp(np.multiply(d, beta, out=space.array("e", n_rows)), out=space.array("e", n_rows))
        total = e.sum(axis=1)
        ed = np.multiply(e, d, out=e)
        mean = ed.sum(axis=1) / total
        second = np.einsum("ij,ij->i", ed, d) / total
        return {"slope": float(np.sum(mean - d[np.arange(n_rows), labels[start:stop]])),
                "curvature": float(np.sum(np.maximum(second - mean**2, 0.0)))}

    parts = map_blocks(block, labels.size, logits.shape[1])
    return sum(p["slope"] for p in parts) / labels.size, sum(p["curvature"] for p in parts) / labels.size


# ---------------------------------------------------------------- softness of the targets at τ

def effective_smoothing(teacher_logits, labels, *, temperature: float) -> float:
    """ε_eff = mean(1 − p_y), p = softmax(z/τ): the wrong-class mass of the targets."""
    return effective_smoothing_of(_softness_input(teacher_logits, labels, temperature))


def equivalent_smoothing(teacher_logits, labels, *, temperature: float) -> float:
    """Müller et al. 2019's equivalent label-smoothing factor γ = ε_eff·C/(C − 1)."""
    return equivalent_smoothing_of(_softness_input(teacher_logits, labels, temperature))


def saturation_share(teacher_logits, labels, *, temperature: float) -> float:
    """Share of examples whose target is near one-hot: p_y > 0.99 at τ."""
    return saturation_share_of(_softness_input(teacher_logits, labels, temperature))


def target_entropy(teacher_logits, *, temperature: float) -> float:
    """mean H(p) = −Σ_k p_k log p_k at τ, nats (from log-probabilities)."""
    teacher_logits = check_logits(teacher_logits, name="teacher logits")
    split = np.zeros(teacher_logits.shape[0], dtype=np.int64)  # H(p) does not depend on the labels
    return target_entropy_of(softmax_stats(teacher_logits, split, temperature=check_temperature(temperature)))


def target_confidence_histogram(teacher_logits, labels, *, temperature: float,
                                n_bins: int = HISTOGRAM_BINS) -> Histogram:
    """Histogram of p_y at τ, n_bins equal-width bins on [0, 1] (last bin closed)."""
    stats = _softness_input(teacher_logits, labels, temperature)
    return target_confidence_histogram_of(stats, n_bins=check_n_bins(n_bins))


def _softness_input(teacher_logits, labels, temperature) -> SoftmaxStats:
    teacher_logits = check_logits(teacher_logits, name="teacher logits")
    labels = check_labels(labels, n_samples=teacher_logits.shape[0], n_classes=teacher_logits.shape[1])
    return softmax_stats(teacher_logits, labels, temperature=check_temperature(temperature))


def effective_smoothing_of(stats: SoftmaxStats) -> float:
    """mean(1 − p_y)."""
    return float(np.mean(stats.nontarget_mass))


def equivalent_smoothing_of(stats: SoftmaxStats) -> float:
    """ε_eff·C/(C − 1)."""
    return equivalent_smoothing_from(effective_smoothing_of(stats), stats.n_classes)


def equivalent_smoothing_from(effective_smoothing: float, n_classes: int) -> float:
    """The label-smoothing strength γ = ε_eff·C/(C − 1) whose targets carry the same wrong-class mass."""
    return effective_smoothing * n_classes / (n_classes - 1)


def saturation_share_of(stats: SoftmaxStats) -> float:
    """mean 1{p_y > 0.99}."""
    return float(np.mean(stats.target_log_prob > np.log(SATURATION)))


def target_entropy_of(stats: SoftmaxStats) -> float:
    """mean H(p)."""
    return float(np.mean(stats.entropy))


def target_confidence_histogram_of(stats: SoftmaxStats, *, n_bins: int = HISTOGRAM_BINS) -> Histogram:
    """Histogram of p_y; see :func:`target_confidence_histogram`."""
    counts, edges = np.histogram(stats.target_prob, bins=n_bins, range=(0.0, 1.0))
    return Histogram(edges, counts.astype(np.int64))
