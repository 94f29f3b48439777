"""Level 2 — domain knowledge: how much class-relationship structure the outputs and weights carry.

r = p_{k≠y} / (1 − p_y) is the non-target distribution. A label-smoothed teacher makes its wrong-class
logits nearly equal (Müller et al. 2019, "When Does Label Smoothing Help?"), so r becomes flat and the
non-target logit spread drops. Class-similarity matrices come from outputs (S_out) or from the
logit-layer weights (S_w, Tang et al. 2020); linear CKA follows Kornblith et al. 2019
("Similarity of Neural Network Representations Revisited").
"""
from __future__ import annotations

import numpy as np

from kddiag.errors import KddiagError
from kddiag.metrics._common import (ClassSums, SoftmaxStats, auroc, check_finite, check_labels, check_logits,
                                    check_temperature, single_thread_blas, softmax_stats, spearman)

TOP_K_ALTERNATIVES = 10  # the wrong classes (tokens) top_k_nontarget_share counts


def dark_knowledge_content(logits, labels, *, temperature: float = 1.0) -> float | None:
    """mean KL(r ‖ U_{C−1}) / log(C − 1), in [0, 1]; r from softmax(z/τ). None when C = 2 (r is a point mass).

    KL(r ‖ U) = log(C − 1) − H(r), with H(r) from log-probabilities (logsumexp over the non-target logits).
    Near 0: the wrong-class mass is flat (no class structure); read it with mean(1 − p_y).
    """
    logits = check_logits(logits)
    labels = check_labels(labels, n_samples=logits.shape[0], n_classes=logits.shape[1])
    return dark_knowledge_content_of(softmax_stats(logits, labels, temperature=check_temperature(temperature)))


def nontarget_logit_spread(logits, labels) -> float | None:
    """median_i std_{k≠y}(z_ik) / (z_iy − mean_{k≠y} z_ik) over examples with a positive margin (None if none).

    Population std (ddof = 0). Free of τ. Label smoothing drives it toward 0 (Müller et al. 2019).
    The median, not the mean: on held-out data a few examples with a margin near 0 would dominate a mean.
    """
    logits = check_logits(logits)
    labels = check_labels(labels, n_samples=logits.shape[0], n_classes=logits.shape[1])
    return nontarget_logit_spread_of(softmax_stats(logits, labels, logit_spread=True))


def output_similarity(logits, labels) -> np.ndarray:
    """S_out (n_classes, n_classes): S[c, k] = mean of r_k over examples of class c (τ = 1), (S + Sᵀ)/2, diagonal 0.

    Rows and columns of classes with no example are NaN.
    """
    logits = check_logits(logits)
    labels = check_labels(labels, n_samples=logits.shape[0], n_classes=logits.shape[1])
    sums = ClassSums(logits.shape[1], n_bins=1)
    softmax_stats(logits, labels, class_sums=sums)
    return output_similarity_of(sums)


def weight_similarity(weight) -> np.ndarray:
    """S_w (n_classes, n_classes): cosine similarity of the logit-layer weight rows ŵ_iᵀŵ_j (Tang et al. 2020).

    ``weight`` is (n_classes, n_features). A zero row gives NaN similarities.
    """
    weight = np.asarray(weight, dtype=np.float64)
    if weight.ndim != 2 or weight.shape[0] < 2:
        raise KddiagError("logit-layer weight must be (n_classes, n_features) with n_classes ≥ 2; "
                          f"got shape {weight.shape}")
    check_finite(weight, name="logit-layer weight")
    return weight_similarity_of(weight)


def similarity_transfer_score(teacher_similarity, student_similarity) -> float | None:
    """Spearman correlation of the off-diagonal entries (i < j) of two class-similarity matrices.

    Pairs with a NaN in either matrix are skipped; None when fewer than 3 pairs remain or one side is constant.
    """
    first, second = _check_similarity(teacher_similarity, "teacher similarity"), _check_similarity(
        student_similarity, "student similarity")
    if first.shape != second.shape:
        raise KddiagError(f"teacher similarity is {first.shape} but student similarity is {second.shape}; "
                          "both must be (n_classes, n_classes)")
    return similarity_transfer_score_of(first, second)


def group_recovery(similarity, groups) -> float | None:
    """AUROC of the off-diagonal similarities (i < j) for separating same-group from different-group class pairs.

    0.5 = no structure, 1 = every same-group pair is more similar than every different-group pair.
    None when all pairs are on one side (one group, or every class its own group).
    """
    similarity = _check_similarity(similarity, "similarity")
    groups = np.asarray(groups)
    if groups.shape != (similarity.shape[0],):
        raise KddiagError(f"class groups must give one group per class ({similarity.shape[0]}); "
                          f"got shape {groups.shape}")
    return group_recovery_of(similarity, groups)


def dark_knowledge_alternatives(logits, labels, *, temperature: float = 1.0) -> float:
    """mean exp(H(r)): over how many wrong classes the non-target distribution r of softmax(z/τ) spreads
    (its perplexity: 1 for all mass on one wrong class, C − 1 for a flat r). Reads whatever the vocabulary
    size: a teacher whose next-token alternatives are a few plausible words scores a few, not 32,000."""
    logits = check_logits(logits)
    labels = check_labels(labels, n_samples=logits.shape[0], n_classes=logits.shape[1])
    return float(np.mean(dark_knowledge_alternatives_per_example(
        softmax_stats(logits, labels, temperature=check_temperature(temperature)))))


def top_k_nontarget_share(logits, labels, *, temperature: float = 1.0, k: int = TOP_K_ALTERNATIVES) -> float | None:
    """mean over examples of the share of the non-target mass 1 − p_y that the k most likely wrong classes hold
    under softmax(z/τ): Σ_{top k of r} r_j. Near 1: the dark knowledge is a few alternatives; near k/(C − 1):
    spread evenly. None when C − 1 ≤ k (the share is 1 by construction)."""
    logits = check_logits(logits)
    labels = check_labels(labels, n_samples=logits.shape[0], n_classes=logits.shape[1])
    shares = top_k_nontarget_share_per_example(logits, labels, temperature=check_temperature(temperature), k=k)
    return None if shares is None else float(np.mean(shares))


def linear_cka(teacher_features, student_features) -> float | None:
    """Linear CKA = ‖YᵀX‖²_F / (‖XᵀX‖_F·‖YᵀY‖_F) on column-centred features (Kornblith et al. 2019).

    ``teacher_features`` (n_samples, d1), ``student_features`` (n_samples, d2); O(n·d²). None if a
    side has no variance.
    """
    first = _check_features(teacher_features, "teacher features")
    second = _check_features(student_features, "student features")
    if first.shape[0] != second.shape[0]:
        raise KddiagError(f"teacher features have {first.shape[0]} samples but student features have "
                          f"{second.shape[0]}; both must be (n_samples, n_features) on the same examples")
    return linear_cka_of(first, second)


# ---------------------------------------------------------------- on valid input

def dark_knowledge_content_of(stats: SoftmaxStats) -> float | None:
    """mean (log(C − 1) − H(r)) / log(C − 1)."""
    return _mean(dark_knowledge_per_example(stats))


def dark_knowledge_per_example(stats: SoftmaxStats) -> np.ndarray | None:
    """KL(r ‖ U_{C−1}) / log(C − 1) per example; None when C = 2."""
    if stats.n_classes < 3:
        return None
    log_rest = np.log(stats.n_classes - 1)
    return np.clip((log_rest - stats.nontarget_entropy) / log_rest, 0.0, 1.0)


def dark_knowledge_alternatives_per_example(stats: SoftmaxStats) -> np.ndarray:
    """exp(H(r)) per example, in [1, C − 1] (1 when C = 2)."""
    return np.clip(np.exp(stats.nontarget_entropy), 1.0, max(1, stats.n_classes - 1))


def top_k_nontarget_share_per_example(logits: np.ndarray, labels: np.ndarray, *, temperature: float,
                                      k: int = TOP_K_ALTERNATIVES) -> np.ndarray | None:
    """Σ_{top k of r} r_j per row of ``logits`` (valid input; rows may be a sample), in log space:
    r = softmax over the non-target logits / τ. None when C − 1 ≤ k."""
    n, n_classes = logits.shape
    if n_classes - 1 <= k:
        return None
    t = np.array(logits, dtype=np.float64) / temperature
    t[np.arange(n), labels] = -np.inf
    t -= t.max(axis=1, keepdims=True)
    e = np.exp(t)
    top = np.partition(e, n_classes - k, axis=1)[:, n_classes - k:]
    return top.sum(axis=1) / e.sum(axis=1)


def nontarget_logit_spread_of(stats: SoftmaxStats) -> float | None:
    """Median of the per-example spread over examples with a positive margin (stats with ``logit_spread``)."""
    keep = np.isfinite(stats.logit_spread)
    return float(np.median(stats.logit_spread[keep])) if keep.any() else None


def output_similarity_of(sums: ClassSums) -> np.ndarray:
    """S_out over the classes ``sums`` kept, from the τ = 1 class sums; see :func:`output_similarity`."""
    count = sums.label_count.astype(np.float64)
    if sums.kept is not None:
        count = count[sums.kept]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = sums.nontarget_sum / count[:, None]
    mean[count == 0] = np.nan
    similarity = (mean + mean.T) / 2.0
    np.fill_diagonal(similarity, 0.0)
    return similarity


def weight_similarity_of(weight: np.ndarray) -> np.ndarray:
    """Cosine similarity of the rows of ``weight``."""
    norm = np.linalg.norm(weight, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        unit = weight / norm[:, None]
    unit[norm == 0] = np.nan
    return np.clip(unit @ unit.T, -1.0, 1.0)


def similarity_transfer_score_of(first: np.ndarray, second: np.ndarray) -> float | None:
    """Spearman of the i < j entries; see :func:`similarity_transfer_score`."""
    upper = np.triu_indices(first.shape[0], k=1)
    a, b = first[upper], second[upper]
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    if a.size < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return spearman(a, b)


def group_recovery_of(similarity: np.ndarray, groups: np.ndarray) -> float | None:
    """AUROC of same-group vs different-group pairs; see :func:`group_recovery`."""
    upper = np.triu_indices(similarity.shape[0], k=1)
    score = similarity[upper]
    same = groups[upper[0]] == groups[upper[1]]
    keep = np.isfinite(score)
    score, same = score[keep], same[keep]
    if same.all() or not same.any():
        return None
    return auroc(same, score)


def linear_cka_of(first: np.ndarray, second: np.ndarray) -> float | None:
    """Linear CKA of column-centred features, products in the input dtype, norms in float64.

    ‖YᵀX‖²_F / (‖XᵀX‖_F·‖YᵀY‖_F) equals ⟨K, L⟩ / (‖K‖_F·‖L‖_F) with Gram matrices K = XXᵀ, L = YYᵀ;
    the feature form costs n·(d_x + d_y)², the Gram form n²·(d_x + d_y): the cheaper one is used.
    BLAS runs on one thread, so the sums (and the result) do not depend on the thread count.
    """
    with single_thread_blas:
        return _linear_cka(first, second)


def _linear_cka(first: np.ndarray, second: np.ndarray) -> float | None:
    x = first - first.mean(axis=0)
    y = second - second.mean(axis=0)
    n, width = x.shape[0], x.shape[1] + y.shape[1]
    if n < width:  # sums below are numpy's pairwise sums: accurate in float32 too
        k, l = x @ x.T, y @ y.T
        cross = float(np.sum(k * l, dtype=np.float64) if k.dtype == np.float64 else np.sum(k * l))
        norm = float(np.linalg.norm(k)) * float(np.linalg.norm(l))
    else:
        cross = np.linalg.norm((y.T @ x).astype(np.float64)) ** 2
        norm = np.linalg.norm((x.T @ x).astype(np.float64)) * np.linalg.norm((y.T @ y).astype(np.float64))
    return float(cross / norm) if norm > 0 else None


def _check_similarity(matrix, name: str) -> np.ndarray:
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] < 2:
        raise KddiagError(f"{name} must be a square (n_classes, n_classes) matrix; got shape {matrix.shape}")
    return matrix


def _check_features(features, name: str) -> np.ndarray:
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise KddiagError(f"{name} must be (n_samples, n_features) with at least 2 samples; got shape {features.shape}")
    check_finite(features, name=name)
    return features


def _mean(values: np.ndarray | None) -> float | None:
    return None if values is None else float(np.mean(values))
