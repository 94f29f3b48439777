"""Every scalar metric is invariant to sample order, float32 vs float64 input, and a consistent relabelling of classes.

One registry of all scalar metrics (as scikit-learn's ``metrics/tests/test_common.py``): a new metric
joins the invariance checks by adding one line.
"""
import numpy as np
import pytest

from kddiag.metrics import domain, fidelity, instance, universe

from ._helpers import logits_and_labels

N_CLASSES = 6
GROUPS = np.array([0, 0, 1, 1, 2, 2])


def _untrained(t, y, tau=4.0):
    return instance.untrained_rescaling_weights(t, y, temperature=tau, alpha=0.9)


# name -> f(teacher, student, labels, teacher_features, student_features, groups) -> float
SCALAR_METRICS = {
    "accuracy": lambda t, s, y, ft, fs, g: fidelity.accuracy(t, y),
    "top1_agreement": lambda t, s, y, ft, fs, g: fidelity.top1_agreement(t, s),
    "kl": lambda t, s, y, ft, fs, g: fidelity.mean_kl_divergence(t, s),
    "kl_at_temperature": lambda t, s, y, ft, fs, g: fidelity.mean_kl_divergence(t, s, temperature=4.0),
    "permuted_agreement": lambda t, s, y, ft, fs, g: fidelity.permuted_agreement(t, s),
    "ece": lambda t, s, y, ft, fs, g: universe.expected_calibration_error(t, y),
    "adaptive_ece": lambda t, s, y, ft, fs, g: universe.adaptive_calibration_error(t, y),
    "mce": lambda t, s, y, ft, fs, g: universe.maximum_calibration_error(t, y),
    "classwise_ece": lambda t, s, y, ft, fs, g: universe.classwise_calibration_error(t, y),
    "nll": lambda t, s, y, ft, fs, g: universe.nll_loss(t, y),
    "brier": lambda t, s, y, ft, fs, g: universe.brier_loss(t, y),
    "fitted_temperature": lambda t, s, y, ft, fs, g: universe.fitted_temperature(t, y),
    "effective_smoothing": lambda t, s, y, ft, fs, g: universe.effective_smoothing(t, y, temperature=4.0),
    "equivalent_smoothing": lambda t, s, y, ft, fs, g: universe.equivalent_smoothing(t, y, temperature=4.0),
    "saturation_share": lambda t, s, y, ft, fs, g: universe.saturation_share(t, y, temperature=1.0),
    "target_entropy": lambda t, s, y, ft, fs, g: universe.target_entropy(t, temperature=4.0),
    "dark_knowledge_content": lambda t, s, y, ft, fs, g: domain.dark_knowledge_content(t, y),
    "dark_knowledge_content_at_temperature":
        lambda t, s, y, ft, fs, g: domain.dark_knowledge_content(t, y, temperature=4.0),
    "nontarget_logit_spread": lambda t, s, y, ft, fs, g: domain.nontarget_logit_spread(t, y),
    "output_similarity_transfer_score": lambda t, s, y, ft, fs, g: domain.similarity_transfer_score(
        domain.output_similarity(t, y), domain.output_similarity(s, y)),
    "group_recovery": lambda t, s, y, ft, fs, g: domain.group_recovery(domain.output_similarity(t, y), g),
    "feature_cka": lambda t, s, y, ft, fs, g: domain.linear_cka(ft, fs),
    "rescaling_weight_mean": lambda t, s, y, ft, fs, g: float(np.mean(
        instance.rescaling_weights(t, s, y, temperature=4.0, alpha=0.9))),
    "untrained_rescaling_weight_cv": lambda t, s, y, ft, fs, g: instance.coefficient_of_variation(_untrained(t, y)),
    "untrained_rescaling_weight_low_share":
        lambda t, s, y, ft, fs, g: instance.low_weight_share(_untrained(t, y, tau=1.0)),
    "rescaling_difficulty_correlation": lambda t, s, y, ft, fs, g: instance.rescaling_difficulty_correlation(
        _untrained(t, y), instance.knn_label_disagreement(ft, y)),
    "baseline_loss_correlation": lambda t, s, y, ft, fs, g: instance.rescaling_difficulty_correlation(
        _untrained(t, y), instance.cross_entropy_per_example(s, y)),
    "confidence_error_auroc": lambda t, s, y, ft, fs, g: instance.confidence_error_auroc(t, s, y),
    "tckd": lambda t, s, y, ft, fs, g: float(np.mean(instance.decoupled_kd(t, s, y, temperature=4.0).tckd)),
    "nckd": lambda t, s, y, ft, fs, g: float(np.mean(instance.decoupled_kd(t, s, y, temperature=4.0).nckd)),
    "teacher_error_rate": lambda t, s, y, ft, fs, g: instance.teacher_error_rate(t, y),
}


@pytest.fixture(scope="module")
def inputs():
    teacher, student, y = logits_and_labels(n=300, n_classes=N_CLASSES, seed=60, scale=2.5)
    rng = np.random.default_rng(61)
    teacher_features = np.column_stack([teacher, rng.normal(size=(300, 3))])
    student_features = teacher_features @ rng.normal(size=(9, 5)) + rng.normal(size=(300, 5))
    return teacher, student, y, teacher_features, student_features, GROUPS


def _shuffled(t, s, y, ft, fs, g):
    order = np.random.default_rng(62).permutation(len(y))
    return t[order], s[order], y[order], ft[order], fs[order], g


def _float32(t, s, y, ft, fs, g):
    return t.astype(np.float32), s.astype(np.float32), y, ft.astype(np.float32), fs.astype(np.float32), g


def _relabelled(t, s, y, ft, fs, g):
    """New class j is old class perm[j], in the logits of both models, the labels and the groups."""
    perm = np.array([4, 2, 0, 5, 1, 3])
    new_label = np.argsort(perm)
    return t[:, perm], s[:, perm], new_label[y], ft, fs, g[perm]


@pytest.mark.parametrize("name", sorted(SCALAR_METRICS))
@pytest.mark.parametrize("transform, rtol", [(_shuffled, 1e-10), (_float32, 2e-4), (_relabelled, 1e-10)],
                         ids=["sample-order", "float32", "class-relabelling"])
def test_scalar_metric_invariance(inputs, name, transform, rtol):
    metric = SCALAR_METRICS[name]
    reference = metric(*inputs)
    assert reference is not None and np.isfinite(reference), "the test data must make the metric defined"
    assert metric(*transform(*inputs)) == pytest.approx(reference, rel=rtol, abs=1e-9)
