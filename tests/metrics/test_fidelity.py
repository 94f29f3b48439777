"""Level 0 (kddiag/metrics/fidelity.py) against scikit-learn, scipy and brute force."""
import itertools

import numpy as np
import pytest
from scipy.special import rel_entr, softmax
from sklearn.metrics import accuracy_score

from kddiag.errors import KddiagError
from kddiag.metrics import fidelity

from ._helpers import logits_and_labels


def test_accuracy_and_agreement():
    teacher, student, y = logits_and_labels(seed=10)
    assert fidelity.accuracy(teacher, y) == pytest.approx(accuracy_score(y, teacher.argmax(axis=1)))
    expected = sum(int(np.argmax(t) == np.argmax(s)) for t, s in zip(teacher, student)) / len(y)
    assert fidelity.top1_agreement(teacher, student) == pytest.approx(expected)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_kl_divergence_matches_scipy(temperature):
    teacher, student, _ = logits_and_labels(seed=11)
    p, q = softmax(teacher / temperature, axis=1), softmax(student / temperature, axis=1)
    expected = rel_entr(p, q).sum(axis=1)
    np.testing.assert_allclose(fidelity.kl_divergence(teacher, student, temperature=temperature), expected, atol=1e-12)
    assert fidelity.mean_kl_divergence(teacher, student, temperature=temperature) == pytest.approx(expected.mean())
    assert fidelity.mean_kl_divergence(teacher, teacher) == pytest.approx(0.0, abs=1e-12)


def _index_bootstrap(values, n_resamples=4000, seed=123):
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n_resamples, len(values)))].mean(axis=1)
    return np.quantile(means, [0.025, 0.975])


@pytest.mark.parametrize("kind", ["binary", "paired", "continuous"])
def test_bootstrap_ci_matches_a_plain_index_bootstrap(kind):
    rng = np.random.default_rng(12)
    n = 400
    values = {"binary": (rng.random(n) < 0.7).astype(float),
              "paired": (rng.random(n) < 0.7).astype(float) - (rng.random(n) < 0.6).astype(float),
              "continuous": rng.exponential(size=n)}[kind]
    lo, hi = fidelity.bootstrap_ci(values)
    ref_lo, ref_hi = _index_bootstrap(values)
    width = ref_hi - ref_lo
    assert lo < values.mean() < hi
    assert abs(lo - ref_lo) < 0.1 * width and abs(hi - ref_hi) < 0.1 * width
    assert fidelity.bootstrap_ci(values) == (lo, hi)  # fixed seed
    if kind == "continuous":  # discrete means take few values: two seeds may agree
        assert fidelity.bootstrap_ci(values, seed=1) != (lo, hi)


def test_bootstrap_intervals_do_not_move_when_the_statistics_blocks_are_retuned(monkeypatch):
    """Each resample block's random stream is keyed by where the block starts: the bootstrap keeps its own
    fixed blocks, so tuning the softmax pass's block size leaves every interval as it was."""
    from kddiag.metrics import _common

    values = np.random.default_rng(3).normal(size=900)
    before = fidelity.bootstrap_ci(values)
    monkeypatch.setattr(_common, "_BLOCK_ELEMENTS", _common._BLOCK_ELEMENTS // 8)
    assert fidelity.bootstrap_ci(values) == before


@pytest.mark.parametrize("kind", ["binary", "continuous"])
def test_bootstrap_means_are_centred_with_the_standard_error(kind):
    """Resampled means average to the sample mean and spread as sd/√n (both samplers)."""
    rng = np.random.default_rng(17)
    values = (rng.random(2000) < 0.3).astype(float) if kind == "binary" else rng.exponential(size=2000)
    means = fidelity._bootstrap_means(values, 4000, 0)
    standard_error = values.std() / np.sqrt(values.size)
    assert abs(means.mean() - values.mean()) < 4 * standard_error / np.sqrt(4000)
    assert means.std() == pytest.approx(standard_error, rel=0.06)


def test_bootstrap_ci_paired_difference_of_equal_values_is_zero():
    correct = (np.random.default_rng(13).random(100) < 0.5).astype(float)
    assert fidelity.bootstrap_ci(correct - correct) == (0.0, 0.0)


def test_bootstrap_ci_width_shrinks_with_n():
    rng = np.random.default_rng(14)
    small, large = rng.normal(size=100), rng.normal(size=10000)
    width = lambda v: np.subtract(*fidelity.bootstrap_ci(v)[::-1])  # noqa: E731
    assert width(large) < width(small) / 5


def test_sample_bootstrap_ci_of_many_continuous_values_resamples_a_subsample_as_wide_as_all():
    """Past BOOTSTRAP_MAX_VALUES continuous values the interval comes from a fixed subsample, narrowed to
    the whole sample's size: close to the plain bootstrap of every value, around the exact mean."""
    values = np.random.default_rng(18).exponential(size=6 * fidelity.BOOTSTRAP_MAX_VALUES)
    lo, hi = fidelity.sample_bootstrap_ci(values, mean=values.mean(), n_total=values.size)
    ref_lo, ref_hi = fidelity.bootstrap_ci(values)
    assert lo < values.mean() < hi
    assert hi - lo == pytest.approx(ref_hi - ref_lo, rel=0.1)
    assert (lo + hi) / 2 == pytest.approx((ref_lo + ref_hi) / 2, abs=0.1 * (ref_hi - ref_lo))
    assert fidelity.sample_bootstrap_ci(values, mean=values.mean(), n_total=values.size) == (lo, hi)


def test_sample_bootstrap_ci_of_categorical_values_resamples_them_all():
    values = (np.random.default_rng(19).random(3 * fidelity.BOOTSTRAP_MAX_VALUES) < 0.4).astype(float)
    assert fidelity.sample_bootstrap_ci(values, mean=values.mean(), n_total=values.size) == \
        fidelity.bootstrap_ci(values)


def test_class_permutation_recovers_a_known_relabelling():
    teacher, _, _ = logits_and_labels(n=500, n_classes=5, seed=15)
    relabel = np.array([3, 0, 4, 1, 2])  # student class k = teacher class relabel[k]
    student = teacher[:, relabel] + np.random.default_rng(1).normal(size=teacher.shape) * 0.3
    permutation = fidelity.class_permutation(teacher, student)
    np.testing.assert_array_equal(permutation, relabel)
    assert fidelity.top1_agreement(teacher, student) < 0.5
    assert fidelity.permuted_agreement(teacher, student) > 0.9


def test_permuted_agreement_is_the_best_over_all_permutations():
    rng = np.random.default_rng(16)
    teacher, student = rng.normal(size=(60, 4)), rng.normal(size=(60, 4))
    t_pred, s_pred = teacher.argmax(axis=1), student.argmax(axis=1)
    best = max(np.mean(np.array(perm)[s_pred] == t_pred) for perm in itertools.permutations(range(4)))
    assert fidelity.permuted_agreement(teacher, student) == pytest.approx(best)
    permutation = fidelity.class_permutation(teacher, student)
    assert np.mean(permutation[s_pred] == t_pred) == pytest.approx(best)
    assert sorted(permutation) == [0, 1, 2, 3]


def test_errors_name_the_input():
    with pytest.raises(KddiagError, match="teacher logits have 3 classes but student logits have 4"):
        fidelity.top1_agreement(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(KddiagError, match="temperature must be a finite number > 0 and at most 10000; got 0"):
        fidelity.kl_divergence(np.zeros((2, 3)), np.zeros((2, 3)), temperature=0)
    with pytest.raises(KddiagError, match="values must be finite"):
        fidelity.bootstrap_ci([1.0, np.nan])
    with pytest.raises(KddiagError, match="confidence must be in"):
        fidelity.bootstrap_ci([1.0, 2.0], confidence=1.5)
