"""Level 0 — outcome: accuracy, teacher↔student fidelity, bootstrap intervals, class relabelling.

Fidelity follows Stanton et al. 2021 ("Does Knowledge Distillation Really Work?", Eqs. 2–3): top-1
agreement and the mean predictive KL(p ‖ q) of teacher and student.
"""
from __future__ import annotations

import numpy as np

from kddiag.errors import KddiagError
from kddiag.metrics._common import (MIN_BLOCK_ROWS, Workspace, check_labels, check_logits, check_pair,
                                    check_temperature, check_values, map_blocks, softmax_stats, subsample_indices)

N_RESAMPLES = 1000
_MAX_CATEGORIES = 16  # values with at most this many distinct levels are resampled by category counts
BOOTSTRAP_MAX_VALUES = 4096  # sample_bootstrap_ci resamples at most this many continuous values (see there)
BOOTSTRAP_BLOCK_ELEMENTS = 1 << 17  # resamples per block ≈ this / n values


def accuracy(logits, labels) -> float:
    """mean 1{argmax_k logits = y}.

    >>> accuracy(np.array([[2.0, 0.0], [0.0, 1.0]]), np.array([0, 0]))
    0.5
    """
    logits = check_logits(logits)
    labels = check_labels(labels, n_samples=logits.shape[0], n_classes=logits.shape[1])
    return float(np.mean(logits.argmax(axis=1) == labels))


def top1_agreement(teacher_logits, student_logits) -> float:
    """mean 1{argmax z = argmax s} (Stanton et al. 2021, Eq. 2)."""
    teacher_logits, student_logits = check_pair(teacher_logits, student_logits)
    return agreement_of(teacher_logits.argmax(axis=1), student_logits.argmax(axis=1))


def kl_divergence(teacher_logits, student_logits, *, temperature: float = 1.0) -> np.ndarray:
    """Per-example KL(p ‖ q), p = softmax(z/τ), q = softmax(s/τ), in nats; shape (n_samples,).

    Computed from log-probabilities (logsumexp), finite for any finite logits (Stanton et al. 2021, Eq. 3).
    """
    teacher_logits, student_logits = check_pair(teacher_logits, student_logits)
    temperature = check_temperature(temperature)
    split = np.zeros(teacher_logits.shape[0], dtype=np.int64)  # the target/non-target split does not matter here
    student = softmax_stats(student_logits, split, temperature=temperature)
    teacher = softmax_stats(teacher_logits, split, temperature=temperature, versus=(student_logits, student))
    return teacher.kl_divergence()


def mean_kl_divergence(teacher_logits, student_logits, *, temperature: float = 1.0) -> float:
    """mean over examples of KL(p ‖ q) at ``temperature``, nats."""
    return float(np.mean(kl_divergence(teacher_logits, student_logits, temperature=temperature)))


def bootstrap_ci(values, *, n_resamples: int = N_RESAMPLES, confidence: float = 0.95, seed: int = 0
                 ) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-example ``values`` (n_samples,).

    Resamples examples with replacement ``n_resamples`` times (fixed ``seed``); for a paired
    difference pass the per-example differences (e.g. correct_student − correct_baseline), so
    both members of a pair are always drawn together. Values with few distinct levels (0/1
    correctness, −1/0/1 differences) are resampled exactly through multinomial counts per level,
    which has the same distribution as resampling examples; other values by drawing indices.
    """
    values = check_values(values, name="values")
    if not 0.0 < confidence < 1.0:
        raise KddiagError(f"confidence must be in (0, 1); got {confidence}")
    if int(n_resamples) < 1:
        raise KddiagError(f"n_resamples must be ≥ 1; got {n_resamples}")
    means = _bootstrap_means(values, int(n_resamples), seed)
    lo, hi = np.quantile(means, [(1.0 - confidence) / 2.0, (1.0 + confidence) / 2.0])
    return float(lo), float(hi)


def sample_bootstrap_ci(sample: np.ndarray, *, mean: float, n_total: int) -> tuple[float, float]:
    """The interval of the mean of ``n_total`` values, from a uniform ``sample`` of them and their exact ``mean``.

    The plain :func:`bootstrap_ci` when the sample holds every value; otherwise the sample's
    percentile interval moved to ``mean`` and narrowed by √(sample size / n_total), as the standard
    error of a mean shrinks with the number of values. Continuous values (more than _MAX_CATEGORIES
    levels, resampled index by index) are first cut to a fixed-seed subsample of BOOTSTRAP_MAX_VALUES,
    so an interval costs the same at any size: the width's relative error from the subsample is about
    √((kurtosis − 1) / (4·BOOTSTRAP_MAX_VALUES)), 1.1 % for normal values, below the resampling noise.
    """
    sample = np.asarray(sample, dtype=np.float64)
    if sample.size > BOOTSTRAP_MAX_VALUES and np.unique(sample).size > _MAX_CATEGORIES:
        sample = sample[subsample_indices(sample.size, BOOTSTRAP_MAX_VALUES)]
    lo, hi = bootstrap_ci(sample)
    if sample.size >= n_total:
        return lo, hi
    centre, scale = float(np.mean(sample)), np.sqrt(sample.size / n_total)
    return mean + (lo - centre) * scale, mean + (hi - centre) * scale


def _bootstrap_means(values: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """Means of ``n_resamples`` bootstrap resamples of ``values`` (deterministic for a seed)."""
    n = values.size
    levels, counts = np.unique(values, return_counts=True)
    if levels.size <= _MAX_CATEGORIES:
        draws = np.random.default_rng(seed).multinomial(n, counts / n, size=n_resamples)
        return draws @ levels / n

    def block(start: int, stop: int, space: Workspace) -> dict:
        uniform = np.random.default_rng([seed, start]).random(out=space.array("u", stop - start))
        index = space.array("i", stop - start, np.int64)
        np.copyto(index, np.multiply(uniform, n, out=uniform), casting="unsafe")  # floor(u·n)
        drawn = np.take(values, index, out=space.array("v", stop - start), mode="clip")
        return {"mean": drawn.mean(axis=1)}

    rows = max(MIN_BLOCK_ROWS, BOOTSTRAP_BLOCK_ELEMENTS // n)  # each block's random stream is keyed by its
    # start: the blocks are fixed here, apart from the statistics' tuning
    return np.concatenate([part["mean"] for part in map_blocks(block, n_resamples, n, rows=rows)])


def class_permutation(teacher_logits, student_logits) -> np.ndarray:
    """π (n_classes,) with student class k ↔ teacher class π[k], maximizing top-1 agreement.

    Hungarian assignment (scipy ``linear_sum_assignment``) on the confusion matrix of
    argmax z (rows) against argmax s (columns).
    """
    teacher_logits, student_logits = check_pair(teacher_logits, student_logits)
    return permutation_of(teacher_logits.argmax(axis=1), student_logits.argmax(axis=1), teacher_logits.shape[1])


def permuted_agreement(teacher_logits, student_logits) -> float:
    """Top-1 agreement after relabelling the student's predictions by :func:`class_permutation`."""
    teacher_logits, student_logits = check_pair(teacher_logits, student_logits)
    teacher_pred, student_pred = teacher_logits.argmax(axis=1), student_logits.argmax(axis=1)
    permutation = permutation_of(teacher_pred, student_pred, teacher_logits.shape[1])
    return agreement_of(teacher_pred, permutation[student_pred])


# ---------------------------------------------------------------- on predictions (valid input)

def agreement_of(first_pred: np.ndarray, second_pred: np.ndarray) -> float:
    """mean 1{first = second}."""
    return float(np.mean(first_pred == second_pred))


def permutation_of(teacher_pred: np.ndarray, student_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Hungarian relabelling of the student's predictions; see :func:`class_permutation`."""
    return permutation_from(confusion_of(teacher_pred, student_pred, n_classes))


def confusion_of(teacher_pred: np.ndarray, student_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(C, C) counts of teacher prediction (rows) × student prediction (columns)."""
    counts = np.bincount(teacher_pred * n_classes + student_pred, minlength=n_classes * n_classes)
    return counts.reshape(n_classes, n_classes)


def permutation_from(confusion: np.ndarray) -> np.ndarray:
    """π with student class k ↔ teacher class π[k], maximizing Σ_k confusion[π[k], k] (Hungarian assignment)."""
    from scipy.optimize import linear_sum_assignment  # here: importing scipy.optimize costs 0.4 s a process

    teacher_class, student_class = linear_sum_assignment(confusion, maximize=True)
    permutation = np.empty(confusion.shape[0], dtype=np.int64)
    permutation[student_class] = teacher_class
    return permutation
