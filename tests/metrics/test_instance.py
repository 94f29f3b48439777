"""Level 3 (kddiag/metrics/instance.py) against torch autograd, scikit-learn, scipy and brute force."""
import numpy as np
import pytest
import torch
from scipy.special import softmax
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import NearestNeighbors

from kddiag.errors import KddiagError
from kddiag.metrics import fidelity, instance

from ._helpers import logits_and_labels


def _kd_gradient(teacher, student, labels, *, temperature, alpha):
    """∂L/∂s of L = (1−α)·CE(y, q¹) + α·τ²·KL(p ‖ q), summed over examples (rows do not mix)."""
    s = torch.tensor(student, dtype=torch.float64, requires_grad=True)
    z = torch.tensor(teacher, dtype=torch.float64)
    y = torch.tensor(labels)
    ce = torch.nn.functional.cross_entropy(s, y, reduction="sum")
    log_q = torch.log_softmax(s / temperature, dim=1)
    log_p = torch.log_softmax(z / temperature, dim=1)
    kl = (log_p.exp() * (log_p - log_q)).sum()
    ((1 - alpha) * ce + alpha * temperature**2 * kl).backward()
    return s.grad.numpy()


@pytest.mark.parametrize("temperature, alpha", [(1.0, 0.5), (4.0, 0.9), (2.0, 0.0), (0.5, 1.0)])
def test_rescaling_weight_is_the_autograd_ratio(temperature, alpha):
    teacher, student, y = logits_and_labels(n=100, n_classes=5, seed=40)
    rows = np.arange(len(y))
    grad = _kd_gradient(teacher, student, y, temperature=temperature, alpha=alpha)
    q1_y = softmax(student, axis=1)[rows, y]
    expected = grad[rows, y] / (q1_y - 1)
    w = instance.rescaling_weights(teacher, student, y, temperature=temperature, alpha=alpha)
    np.testing.assert_allclose(w, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("temperature, alpha", [(1.0, 0.9), (4.0, 0.5)])
def test_untrained_weight_is_the_autograd_ratio_for_a_uniform_student(temperature, alpha):
    teacher, _, y = logits_and_labels(n=100, n_classes=5, seed=41)
    uniform = np.zeros_like(teacher)
    rows = np.arange(len(y))
    grad = _kd_gradient(teacher, uniform, y, temperature=temperature, alpha=alpha)
    expected = grad[rows, y] / (1 / 5 - 1)
    w = instance.untrained_rescaling_weights(teacher, y, temperature=temperature, alpha=alpha)
    np.testing.assert_allclose(w, expected, rtol=1e-9)
    np.testing.assert_allclose(w, instance.rescaling_weights(teacher, uniform, y, temperature=temperature, alpha=alpha),
                               rtol=1e-9)


def test_rescaling_weight_for_a_saturated_student_is_exact_or_infinite_never_nan():
    teacher = np.array([[2.0, 0.0, 0.0], [2.0, 0.0, 0.0], [1e4, 0.0, -1e4]])
    student = np.array([[30.0, 0.0, 0.0], [2.0, 0.0, 0.0], [-1e4, 1e4, 0.0]])
    y = np.array([0, 0, 0])
    w = instance.rescaling_weights(teacher, student, y, temperature=4.0, alpha=0.9)
    assert not np.any(np.isnan(w))
    # example 0: 1 − q¹_y = 2e^{−30}/(1 + 2e^{−30}) is lost by 1 − q¹_y in float64, kept in log-space
    q1_rest = 2 * np.exp(-30.0) / (1 + 2 * np.exp(-30.0))
    q, p = softmax(student[0] / 4.0), softmax(teacher[0] / 4.0)
    assert w[0] == pytest.approx(0.1 + 0.9 * 4.0 * (p[0] - q[0]) / q1_rest, rel=1e-9)
    # example 2: the student is wrong with a huge margin: finite
    assert np.isfinite(w[2])


def test_decoupled_terms_sum_to_the_kl():
    teacher, student, y = logits_and_labels(n=150, n_classes=6, seed=42)
    for temperature in (1.0, 4.0):
        parts = instance.decoupled_kd(teacher, student, y, temperature=temperature)
        kl = fidelity.kl_divergence(teacher, student, temperature=temperature)
        np.testing.assert_allclose(parts.tckd + parts.nckd_weight * parts.nckd, kl, rtol=1e-9, atol=1e-13)
        p, q = softmax(teacher / temperature, axis=1), softmax(student / temperature, axis=1)
        rows = np.arange(len(y))
        p_y, q_y = p[rows, y], q[rows, y]
        tckd = p_y * np.log(p_y / q_y) + (1 - p_y) * np.log((1 - p_y) / (1 - q_y))
        np.testing.assert_allclose(parts.tckd, tckd, rtol=1e-9, atol=1e-13)
        np.testing.assert_allclose(parts.nckd_weight, 1 - p_y, rtol=1e-12)


def test_decoupled_terms_stay_finite_for_extreme_logits():
    rng = np.random.default_rng(43)
    teacher, student = rng.normal(size=(50, 5)) * 1e4, rng.normal(size=(50, 5)) * 1e4
    y = rng.integers(0, 5, 50)
    parts = instance.decoupled_kd(teacher, student, y, temperature=4.0)
    for values in (parts.tckd, parts.nckd, parts.nckd_weight):
        assert np.all(np.isfinite(values))
    kl = fidelity.kl_divergence(teacher, student, temperature=4.0)
    np.testing.assert_allclose(parts.tckd + parts.nckd_weight * parts.nckd, kl, rtol=1e-9, atol=1e-9)


def test_knn_label_disagreement_matches_sklearn():
    rng = np.random.default_rng(44)
    features = rng.normal(size=(120, 4))
    labels = (features[:, 0] > 0).astype(int) + 2 * (rng.random(120) < 0.1)
    neighbours = NearestNeighbors(n_neighbors=10).fit(features).kneighbors(return_distance=False)
    expected = np.mean(labels[neighbours] != labels[:, None], axis=1)
    np.testing.assert_allclose(instance.knn_label_disagreement(features, labels), expected)
    assert instance.knn_label_disagreement(features[:4], labels[:4]).shape == (4,)  # k capped at n − 1


def test_difficulty_correlation_and_per_example_loss():
    teacher, student, y = logits_and_labels(n=200, n_classes=5, seed=45)
    loss = instance.cross_entropy_per_example(student, y)
    np.testing.assert_allclose(loss, -np.log(softmax(student, axis=1)[np.arange(len(y)), y]), rtol=1e-12)
    w = instance.untrained_rescaling_weights(teacher, y, temperature=4.0, alpha=0.9)
    assert instance.rescaling_difficulty_correlation(w, loss) == pytest.approx(spearmanr(w, -loss).statistic)
    assert instance.rescaling_difficulty_correlation(np.ones(200), loss) is None


def test_confidence_error_auroc_matches_sklearn():
    teacher, student, y = logits_and_labels(n=200, n_classes=5, seed=46)
    wrong = student.argmax(axis=1) != y
    score = 1 - softmax(teacher, axis=1)[np.arange(len(y)), y]
    assert instance.confidence_error_auroc(teacher, student, y) == pytest.approx(roc_auc_score(wrong, score))
    assert instance.confidence_error_auroc(teacher, np.eye(5)[y] * 10, y) is None  # the student is never wrong


def test_dispersion_error_rate_and_hardest_examples():
    w = np.array([0.2, 0.4, 1.0, 1.4])
    assert instance.coefficient_of_variation(w) == pytest.approx(np.std(w) / np.mean(w))
    assert instance.low_weight_share(w) == 0.5
    assert instance.coefficient_of_variation(np.array([-1.0, 1.0])) is None
    teacher, _, y = logits_and_labels(n=100, n_classes=5, seed=47)
    assert instance.teacher_error_rate(teacher, y) == pytest.approx(np.mean(teacher.argmax(axis=1) != y))
    p_y = softmax(teacher, axis=1)[np.arange(len(y)), y]
    hardest = instance.hardest_examples(teacher, y, k=4)
    assert [h.index for h in hardest] == np.argsort(p_y)[:4].tolist()
    first = hardest[0]
    assert first.label == y[first.index]
    assert first.teacher_prediction == teacher[first.index].argmax()
    assert first.target_confidence == pytest.approx(p_y.min())


def test_errors():
    with pytest.raises(KddiagError, match=r"alpha \(the weight of the soft KD term\) must be in \[0, 1\]; got 2"):
        instance.untrained_rescaling_weights(np.zeros((2, 3)), np.array([0, 1]), temperature=1.0, alpha=2)
    with pytest.raises(KddiagError, match="difficulty must have 3 values, one per example; got 2"):
        instance.rescaling_difficulty_correlation([1.0, 2.0, 3.0], [1.0, 2.0])


def test_token_surprisal_is_the_smoothed_negative_log_frequency():
    labels = np.array([0, 0, 0, 1, 2])
    counts = np.bincount(labels, minlength=4)  # class 3 never occurs
    expected = [-np.log((counts[y] + 1) / (5 + 4)) for y in labels]
    np.testing.assert_allclose(instance.token_surprisal_of(labels, counts), expected)
    assert np.isfinite(instance.token_surprisal_of(np.array([3]), counts)).all()
