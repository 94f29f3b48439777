"""Level 1 (kddiag/metrics/universe.py) against scikit-learn, scipy and brute-force loops."""
import numpy as np
import pytest
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax
from scipy.stats import entropy
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss, log_loss

from kddiag.errors import KddiagError
from kddiag.metrics import universe

from ._helpers import ece_loop, logits_and_labels


@pytest.fixture(params=[1.0, 4.0], ids=["soft", "confident"])
def data(request):
    """Logits whose max probabilities fill many bins (scale 4: many above 1/15 per class too)."""
    teacher, _, y = logits_and_labels(n=400, n_classes=5, seed=20)
    return teacher * request.param, y


def test_ece_and_mce_match_loops_and_calibration_curve(data):
    logits, y = data
    p = softmax(logits, axis=1)
    confidence, hit = p.max(axis=1), (p.argmax(axis=1) == y).astype(float)
    ece, mce, counts = ece_loop(confidence, hit)
    assert universe.expected_calibration_error(logits, y) == pytest.approx(ece, abs=1e-12)
    assert universe.maximum_calibration_error(logits, y) == pytest.approx(mce, abs=1e-12)
    prob_true, prob_pred = calibration_curve(hit, confidence, n_bins=15, strategy="uniform")
    filled = np.array(counts)[np.array(counts) > 0]
    assert universe.expected_calibration_error(logits, y) == pytest.approx(
        np.sum(filled / len(y) * np.abs(prob_true - prob_pred)), abs=1e-12)


def test_bins_are_closed_on_the_right():
    """(lo, hi] as Guo 2017 / torchmetrics / sklearn's calibration_curve: an edge belongs to the bin below it."""
    edges = universe.bin_edges(15)
    np.testing.assert_array_equal(universe.bin_index(np.array([0.0, edges[1], np.nextafter(edges[1], 1), 0.5, 1.0]), 15),
                                  [0, 0, 1, 7, 14])


def test_reliability_bins_match_loop(data):
    logits, y = data
    p = softmax(logits, axis=1)
    confidence, hit = p.max(axis=1), (p.argmax(axis=1) == y)
    bins = universe.reliability_bins(logits, y)
    assert bins.bin_count.tolist() == ece_loop(confidence, hit)[2]
    assert len(bins.bin_edges) == 16 and sum(bins.bin_count) == len(y)
    for m, count in enumerate(bins.bin_count):
        members = (confidence > m / 15) & (confidence <= (m + 1) / 15)
        if count:
            assert bins.bin_confidence[m] == pytest.approx(confidence[members].mean())
            assert bins.bin_accuracy[m] == pytest.approx(hit[members].mean())
        else:
            assert np.isnan(bins.bin_confidence[m]) and np.isnan(bins.bin_accuracy[m])


def test_adaptive_ece_matches_equal_mass_loop(data):
    logits, y = data
    p = softmax(logits, axis=1)
    confidence, hit = p.max(axis=1), (p.argmax(axis=1) == y).astype(float)
    order = np.lexsort((hit, confidence))
    expected = sum(len(group) / len(y) * abs(hit[group].mean() - confidence[group].mean())
                   for group in np.array_split(order, 15))
    assert universe.adaptive_calibration_error(logits, y) == pytest.approx(expected, abs=1e-12)


def test_classwise_ece_matches_loop(data):
    logits, y = data
    p = softmax(logits, axis=1)
    per_class = [ece_loop(p[:, k], (y == k).astype(float))[0] for k in range(p.shape[1])]
    assert universe.classwise_calibration_error(logits, y) == pytest.approx(np.mean(per_class), abs=1e-12)


def test_nll_and_brier_match_sklearn(data):
    logits, y = data
    p = softmax(logits, axis=1)
    assert universe.nll_loss(logits, y) == pytest.approx(log_loss(y, p, labels=range(5)), rel=1e-9)
    one_vs_rest = sum(brier_score_loss(y == k, p[:, k]) for k in range(5))
    assert universe.brier_loss(logits, y) == pytest.approx(one_vs_rest, rel=1e-9)


def test_nll_is_finite_for_extreme_logits():
    logits = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0]])
    y = np.array([1, 1])
    assert universe.nll_loss(logits, y) == pytest.approx(1e4, rel=1e-12)
    assert universe.brier_loss(logits, y) == pytest.approx(1.0)


@pytest.mark.parametrize("true_temperature", [0.5, 2.5])
def test_fitted_temperature_recovers_the_generating_temperature(true_temperature):
    rng = np.random.default_rng(21)
    logits = rng.normal(size=(6000, 5)) * 3
    y = np.array([rng.choice(5, p=row) for row in softmax(logits / true_temperature, axis=1)])
    fitted = universe.fitted_temperature(logits, y)
    assert fitted == pytest.approx(true_temperature, rel=0.06)
    reference = minimize_scalar(lambda log_t: -log_softmax(logits / np.exp(log_t), axis=1)[np.arange(len(y)), y].mean(),
                                bounds=(np.log(0.01), np.log(100)), method="bounded", options={"xatol": 1e-10})
    assert fitted == pytest.approx(np.exp(reference.x), rel=1e-6)


def test_fitted_temperature_on_a_subsample_and_at_the_bound(monkeypatch):
    rng = np.random.default_rng(22)
    logits = rng.normal(size=(4000, 4)) * 3
    y = np.array([rng.choice(4, p=row) for row in softmax(logits / 2.0, axis=1)])
    monkeypatch.setattr(universe, "FIT_MAX_ELEMENTS", 4 * 2000)
    assert universe.fitted_temperature(logits, y) == pytest.approx(2.0, rel=0.1)
    separable = np.eye(3)[[0, 1, 2, 0]] * 5.0
    assert universe.fitted_temperature(separable, np.array([0, 1, 2, 0])) == pytest.approx(0.01)
    useless = np.zeros((4, 3)) + np.arange(3.0)
    assert universe.fitted_temperature(useless, np.array([0, 1, 2, 0])) == pytest.approx(100.0)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_softness_of_targets(temperature):
    teacher, _, y = logits_and_labels(n=300, n_classes=6, seed=23)
    p = softmax(teacher / temperature, axis=1)
    p_y = p[np.arange(len(y)), y]
    eps = universe.effective_smoothing(teacher, y, temperature=temperature)
    assert eps == pytest.approx(np.mean(1 - p_y))
    assert universe.equivalent_smoothing(teacher, y, temperature=temperature) == pytest.approx(eps * 6 / 5)
    assert universe.saturation_share(teacher, y, temperature=temperature) == pytest.approx(np.mean(p_y > 0.99))
    assert universe.target_entropy(teacher, temperature=temperature) == pytest.approx(np.mean(entropy(p, axis=1)))
    hist = universe.target_confidence_histogram(teacher, y, temperature=temperature)
    counts, edges = np.histogram(p_y, bins=20, range=(0, 1))
    assert hist.counts.tolist() == counts.tolist()
    np.testing.assert_allclose(hist.bin_edges, edges)


def test_equivalent_smoothing_of_a_label_smoothed_target_is_its_strength():
    """Targets (1 − ε)e_y + ε/C, written as logits, give Müller's γ = ε."""
    n_classes, eps = 10, 0.2
    y = np.arange(50) % n_classes
    target = np.full((50, n_classes), eps / n_classes)
    target[np.arange(50), y] += 1 - eps
    assert universe.equivalent_smoothing(np.log(target), y, temperature=1.0) == pytest.approx(eps)
    assert universe.saturation_share(np.log(target), y, temperature=1.0) == 0.0


def test_effective_smoothing_is_exact_for_saturated_targets():
    """1 − p_y from the non-target logsumexp: e^{−50}, not the 0 that 1 − p_y would round to."""
    logits = np.array([[50.0, 0.0], [50.0, 0.0]])
    eps = universe.effective_smoothing(logits, np.array([0, 0]), temperature=1.0)
    assert eps == pytest.approx(np.exp(-50.0) / (1 + np.exp(-50.0)), rel=1e-12)


def test_errors():
    with pytest.raises(KddiagError, match="n_bins must be an integer ≥ 1; got 0"):
        universe.expected_calibration_error(np.zeros((2, 3)), np.array([0, 1]), n_bins=0)
    with pytest.raises(KddiagError, match=r"labels must be class ids in \[0, 3\); got -1"):
        universe.nll_loss(np.zeros((2, 3)), np.array([0, -1]))
