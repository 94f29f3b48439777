"""Level 3 — instance-specific knowledge: how the teacher rescales the student's per-example gradients.

The KD loss L = (1−α)·CE(y, q¹) + α·τ²·KL(p ‖ q) has gradient (1−α)(q¹ − e_y) + α·τ·(q − p) with
respect to the student logits. Its ground-truth component relative to plain cross-entropy's is the
rescaling weight w = [(1−α)(q¹_y − 1) + ατ(q_y − p_y)] / (q¹_y − 1) (Tang et al. 2020; BAN, Furlanello
et al. 2018, read p_y as a weight on the ground truth). The decoupled view KL(p ‖ q) = TCKD + (1 − p_y)·NCKD
is Zhao et al. 2022 ("Decoupled Knowledge Distillation").
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kddiag.errors import KddiagError
from kddiag.metrics._common import (SoftmaxStats, auroc, check_alpha, check_finite, check_labels, check_logits,
                                    check_pair, check_temperature, check_values, single_thread_blas, softmax_stats,
                                    spearman)

N_NEIGHBORS = 10
LOW_WEIGHT = 0.5  # an example is down-weighted when w < this
N_HARDEST = 10
_KNN_BLOCK = 1 << 20  # distances computed per block of query rows


@dataclass(frozen=True)
class HardExample:
    """One of the examples the teacher finds hardest: lowest teacher p¹_y."""

    index: int
    label: int
    teacher_prediction: int
    target_confidence: float  # p¹_y

    def to_dict(self) -> dict:
        return {"index": self.index, "label": self.label, "teacher_prediction": self.teacher_prediction,
                "target_confidence": self.target_confidence}


@dataclass(frozen=True)
class DecoupledKD:
    """Per-example terms of KL(p ‖ q) = TCKD + (1 − p_y)·NCKD at τ (Zhao et al. 2022); each (n_samples,)."""

    tckd: np.ndarray  # KL([p_y, 1 − p_y] ‖ [q_y, 1 − q_y])
    nckd: np.ndarray  # KL(r ‖ r^s), r = p_{k≠y}/(1 − p_y)
    nckd_weight: np.ndarray  # 1 − p_y


def rescaling_weights(teacher_logits, student_logits, labels, *, temperature: float, alpha: float) -> np.ndarray:
    """Per-example w = [(1−α)(q¹_y − 1) + ατ(q_y − p_y)] / (q¹_y − 1), trained student; (n_samples,).

    Computed as (1−α) + ατ·[(1 − q_y) − (1 − p_y)]/(1 − q¹_y) from log(1 − ·) (logsumexp over
    non-target logits), so it stays exact where the student is confident. Where the student's own
    cross-entropy gradient 1 − q¹_y is astronomically small, |w| can exceed the float range (±inf).
    """
    teacher_logits, student_logits = check_pair(teacher_logits, student_logits)
    labels = check_labels(labels, n_samples=teacher_logits.shape[0], n_classes=teacher_logits.shape[1])
    temperature, alpha = check_temperature(temperature), check_alpha(alpha)
    teacher = softmax_stats(teacher_logits, labels, temperature=temperature)
    student = softmax_stats(student_logits, labels, temperature=temperature)
    student_one = student if temperature == 1.0 else softmax_stats(student_logits, labels)
    return rescaling_weights_of(teacher, student, student_one, alpha=alpha)


def untrained_rescaling_weights(teacher_logits, labels, *, temperature: float, alpha: float) -> np.ndarray:
    """w for an untrained student (q = q¹ = uniform): (1−α) + ατ(p_y − 1/C)·C/(C − 1); (n_samples,).

    Affine in the teacher's p_y at τ, so its spread is the teacher's contribution alone.
    """
    teacher_logits = check_logits(teacher_logits, name="teacher logits")
    labels = check_labels(labels, n_samples=teacher_logits.shape[0], n_classes=teacher_logits.shape[1])
    temperature, alpha = check_temperature(temperature), check_alpha(alpha)
    return untrained_rescaling_weights_of(softmax_stats(teacher_logits, labels, temperature=temperature), alpha=alpha)


def coefficient_of_variation(weights) -> float | None:
    """std(w) / |mean(w)| (population std); None when the mean is 0 or w is not finite."""
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim != 1 or weights.size == 0:
        raise KddiagError(f"weights must be a non-empty 1-D array; got shape {weights.shape}")
    return coefficient_of_variation_of(weights)


def low_weight_share(weights, *, threshold: float = LOW_WEIGHT) -> float:
    """Share of examples with w < threshold (down-weighted relative to cross-entropy)."""
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim != 1 or weights.size == 0:
        raise KddiagError(f"weights must be a non-empty 1-D array; got shape {weights.shape}")
    return float(np.mean(weights < threshold))


def knn_label_disagreement(features, labels, *, n_neighbors: int = N_NEIGHBORS) -> np.ndarray:
    """Difficulty per example: share of its k nearest neighbours (Euclidean, itself excluded) with another label.

    ``features`` (n_samples, n_features), e.g. teacher penultimate features or logits; k is capped at n − 1.
    Exact brute-force search, O(n²·d), as scikit-learn's ``NearestNeighbors(algorithm="brute")``.
    """
    features = np.asarray(features)
    if features.ndim != 2 or features.shape[0] < 2:
        raise KddiagError("features must be (n_samples, n_features) with at least 2 samples; "
                          f"got shape {features.shape}")
    if features.dtype not in (np.float32, np.float64):
        features = features.astype(np.float64)
    check_finite(features, name="features")
    labels = check_labels(labels, n_samples=features.shape[0], n_classes=None)
    if int(n_neighbors) < 1:
        raise KddiagError(f"n_neighbors must be ≥ 1; got {n_neighbors}")
    return knn_label_disagreement_of(features, labels, n_neighbors=int(n_neighbors))


def cross_entropy_per_example(logits, labels) -> np.ndarray:
    """−log p¹_y per example (log-softmax by logsumexp): the difficulty a baseline student assigns; (n_samples,)."""
    logits = check_logits(logits)
    labels = check_labels(labels, n_samples=logits.shape[0], n_classes=logits.shape[1])
    return -softmax_stats(logits, labels).target_log_prob


def rescaling_difficulty_correlation(weights, difficulty) -> float | None:
    """Spearman(w, −difficulty): > 0 when the teacher down-weights hard examples. None if either side is constant."""
    weights = check_values(weights, name="weights")
    difficulty = check_values(difficulty, name="difficulty", n_samples=weights.size)
    return rescaling_difficulty_correlation_of(weights, difficulty)


def confidence_error_auroc(teacher_logits, student_logits, labels) -> float | None:
    """AUROC of the teacher's 1 − p¹_y as a score for the student's errors (argmax s ≠ y).

    None when the student makes no error, or only errors (AUROC needs both outcomes).
    """
    teacher_logits, student_logits = check_pair(teacher_logits, student_logits)
    labels = check_labels(labels, n_samples=teacher_logits.shape[0], n_classes=teacher_logits.shape[1])
    teacher = softmax_stats(teacher_logits, labels)
    return confidence_error_auroc_of(teacher.nontarget_log_mass, student_logits.argmax(axis=1) != labels)


def decoupled_kd(teacher_logits, student_logits, labels, *, temperature: float) -> DecoupledKD:
    """TCKD, NCKD and the NCKD weight 1 − p_y per example at τ (Zhao et al. 2022).

    TCKD = KL([p_y, 1 − p_y] ‖ [q_y, 1 − q_y]), NCKD = KL(r ‖ r^s); KL(p ‖ q) = TCKD + (1 − p_y)·NCKD.
    """
    teacher_logits, student_logits = check_pair(teacher_logits, student_logits)
    labels = check_labels(labels, n_samples=teacher_logits.shape[0], n_classes=teacher_logits.shape[1])
    temperature = check_temperature(temperature)
    student = softmax_stats(student_logits, labels, temperature=temperature)
    teacher = softmax_stats(teacher_logits, labels, temperature=temperature, versus=(student_logits, student))
    return decoupled_kd_of(teacher, student)


def teacher_error_rate(teacher_logits, labels) -> float:
    """Share of examples where argmax z ≠ y."""
    teacher_logits = check_logits(teacher_logits, name="teacher logits")
    labels = check_labels(labels, n_samples=teacher_logits.shape[0], n_classes=teacher_logits.shape[1])
    return float(np.mean(teacher_logits.argmax(axis=1) != labels))


def hardest_examples(teacher_logits, labels, *, k: int = N_HARDEST) -> tuple[HardExample, ...]:
    """The k examples with the lowest teacher p¹_y (ties by index): index, label, teacher prediction, p¹_y."""
    teacher_logits = check_logits(teacher_logits, name="teacher logits")
    labels = check_labels(labels, n_samples=teacher_logits.shape[0], n_classes=teacher_logits.shape[1])
    stats = softmax_stats(teacher_logits, labels)
    return hardest_examples_of(stats.target_log_prob, labels, stats.prediction, k=int(k))


# ---------------------------------------------------------------- on valid input

def rescaling_weights_of(teacher: SoftmaxStats, student: SoftmaxStats, student_one: SoftmaxStats, *,
                         alpha: float) -> np.ndarray:
    """w from teacher and student stats at τ and the student's at τ = 1; see :func:`rescaling_weights`."""
    a, b, c = student.nontarget_log_mass, teacher.nontarget_log_mass, student_one.nontarget_log_mass
    with np.errstate(over="ignore", divide="ignore"):  # ±inf only where the true value exceeds the float range
        log_gap = np.maximum(a, b) + np.log(-np.expm1(-np.abs(a - b)))  # log |e^a − e^b|
        ratio = np.sign(a - b) * np.exp(log_gap - c)  # (e^a − e^b) / e^c
    return (1.0 - alpha) + alpha * teacher.temperature * ratio


def untrained_rescaling_weights_of(teacher: SoftmaxStats, *, alpha: float) -> np.ndarray:
    """(1−α) + ατ(p_y − 1/C)·C/(C − 1)."""
    n_classes = teacher.n_classes
    excess = (teacher.target_prob - 1.0 / n_classes) * n_classes / (n_classes - 1)
    return (1.0 - alpha) + alpha * teacher.temperature * excess


def coefficient_of_variation_of(weights: np.ndarray) -> float | None:
    """std / |mean|; None when undefined."""
    if not np.all(np.isfinite(weights)):
        return None
    mean = np.mean(weights)
    return float(np.std(weights) / abs(mean)) if mean != 0 else None


def knn_label_disagreement_of(features: np.ndarray, labels: np.ndarray, *,
                              n_neighbors: int = N_NEIGHBORS) -> np.ndarray:
    """See :func:`knn_label_disagreement`: exact brute force, ‖a‖² − 2a·b + ‖b‖² by BLAS in row blocks, on
    one BLAS thread so that near-ties break the same way whatever the thread count."""
    with single_thread_blas:
        return _knn_label_disagreement(features, labels, n_neighbors)


def _knn_label_disagreement(features: np.ndarray, labels: np.ndarray, n_neighbors: int) -> np.ndarray:
    x = np.asarray(features, dtype=np.float64)
    n_samples = x.shape[0]
    k = min(n_neighbors, n_samples - 1)
    norms = np.einsum("ij,ij->i", x, x)
    out = np.empty(n_samples)
    step = max(1, _KNN_BLOCK // n_samples)
    for start in range(0, n_samples, step):
        stop = min(start + step, n_samples)
        distance = norms[start:stop, None] - 2.0 * (x[start:stop] @ x.T) + norms[None, :]
        distance[np.arange(stop - start), np.arange(start, stop)] = np.inf  # not its own neighbour
        nearest = np.argpartition(distance, k - 1, axis=1)[:, :k]
        out[start:stop] = np.mean(labels[nearest] != labels[start:stop, None], axis=1)
    return out


def token_surprisal_of(labels: np.ndarray, label_count: np.ndarray) -> np.ndarray:
    """−log((count_y + 1) / (N + C)) per example: how rare its target token is in the set (add-one smoothed,
    so every class has a finite value); the difficulty of a token position when no baseline is given."""
    counts = np.asarray(label_count, dtype=np.float64)
    return -np.log((counts[labels] + 1.0) / (counts.sum() + counts.size))


def rescaling_difficulty_correlation_of(weights: np.ndarray, difficulty: np.ndarray) -> float | None:
    """Spearman(w, −difficulty) over the examples where both are finite."""
    keep = np.isfinite(weights) & np.isfinite(difficulty)
    w, d = weights[keep], difficulty[keep]
    if w.size < 3 or np.ptp(w) == 0 or np.ptp(d) == 0:
        return None
    return spearman(w, -d)


def confidence_error_auroc_of(teacher_nontarget_log_mass: np.ndarray, student_wrong: np.ndarray) -> float | None:
    """AUROC of the teacher's log(1 − p¹_y) (monotone in 1 − p¹_y, exact near p_y = 1) for the student's
    errors; None when the student is always right or always wrong."""
    if student_wrong.all() or not student_wrong.any():
        return None
    return auroc(np.asarray(student_wrong, dtype=bool), teacher_nontarget_log_mass)


def decoupled_kd_of(teacher: SoftmaxStats, student: SoftmaxStats) -> DecoupledKD:
    """TCKD, NCKD and 1 − p_y from teacher stats (with cross terms against the student) and student stats at τ."""
    p_y, p_rest = teacher.target_prob, teacher.nontarget_mass
    tckd = (p_y * (teacher.target_log_prob - student.target_log_prob)
            + p_rest * (teacher.nontarget_log_mass - student.nontarget_log_mass))
    return DecoupledKD(tckd=np.maximum(tckd, 0.0), nckd=teacher.nontarget_kl_divergence(), nckd_weight=p_rest)


def hardest_examples_of(target_log_prob: np.ndarray, labels: np.ndarray, prediction: np.ndarray, *,
                        index: np.ndarray | None = None, k: int = N_HARDEST) -> tuple[HardExample, ...]:
    """See :func:`hardest_examples`: the k lowest ``target_log_prob`` (log p¹_y), ties by ``index``
    (example indices, default 0..n−1). Selecting again among the picks of several batches gives the
    picks of all of them together."""
    index = np.arange(labels.size) if index is None else index
    k = min(k, labels.size)
    candidates = np.flatnonzero(target_log_prob <= np.partition(target_log_prob, k - 1)[k - 1])
    chosen = candidates[np.lexsort((index[candidates], target_log_prob[candidates]))][:k]
    return tuple(HardExample(int(index[i]), int(labels[i]), int(prediction[i]), float(np.exp(target_log_prob[i])))
                 for i in chosen)
