"""The shared softmax pass and input checks (kddiag/metrics/_common.py) against scipy and brute force."""
import time

import numpy as np
import pytest
from scipy.special import log_softmax
from scipy.stats import rankdata, spearmanr

from kddiag.errors import KddiagError
from kddiag.metrics import _common
from kddiag.metrics._common import (ClassSums, auroc, average_ranks, bin_index, check_labels, check_logits, check_pair,
                                    softmax_stats, spearman)

from ._helpers import log_probs, logits_and_labels, nontarget_distribution, nontarget_log_mass


@pytest.mark.parametrize("temperature", [1.0, 4.0, 0.3])
def test_softmax_stats_match_scipy(temperature):
    teacher, student, y = logits_and_labels(seed=1)
    rows = np.arange(len(y))
    student_stats = softmax_stats(student, y, temperature=temperature)
    sums = ClassSums(6, n_bins=15)
    stats = softmax_stats(teacher, y, temperature=temperature, versus=(student, student_stats),
                          class_sums=sums, logit_spread=True)
    lp, lq = log_probs(teacher, temperature), log_probs(student, temperature)
    p = np.exp(lp)
    r, r_s = nontarget_distribution(teacher, y, temperature), nontarget_distribution(student, y, temperature)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_r, log_rs = np.log(r), np.log(r_s)
        r_log_r, r_log_ratio = r * log_r, r * (log_r - log_rs)
    nt = r > 0
    np.testing.assert_allclose(stats.target_log_prob, lp[rows, y], atol=1e-12)
    np.testing.assert_allclose(stats.nontarget_log_mass, nontarget_log_mass(teacher, y, temperature), atol=1e-12)
    np.testing.assert_allclose(stats.max_log_prob, lp.max(axis=1), atol=1e-12)
    np.testing.assert_allclose(stats.entropy, -(p * lp).sum(axis=1), atol=1e-12)
    np.testing.assert_allclose(stats.nontarget_entropy, -np.where(nt, r_log_r, 0).sum(axis=1), atol=1e-12)
    np.testing.assert_allclose(stats.kl_divergence(), (p * (lp - lq)).sum(axis=1), atol=1e-12)
    np.testing.assert_allclose(stats.nontarget_kl_divergence(), np.where(nt, r_log_ratio, 0).sum(axis=1),
                               atol=1e-12)
    masked = np.where(nt, p, 0)
    np.testing.assert_allclose(stats.nontarget_sum_sq, (masked**2).sum(axis=1), atol=1e-14)
    np.testing.assert_array_equal(stats.prediction, teacher.argmax(axis=1))
    np.testing.assert_allclose(sums.prob_sum, p.sum(axis=0), atol=1e-10)
    expected = np.zeros((6, 6))
    for i, c in enumerate(y):
        expected[c] += r[i]
    np.testing.assert_allclose(sums.nontarget_sum, expected, atol=1e-10)
    # brute force: p_ik and 1{y_i = k} summed per class and bin of p_ik
    cell = np.arange(6)[None, :] * 15 + bin_index(p, 15)
    hit = (y[:, None] == np.arange(6)[None, :]).astype(float)
    prob_binned, hit_binned = sums.binned()
    np.testing.assert_allclose(prob_binned.ravel(), np.bincount(cell.ravel(), p.ravel(), 90), atol=1e-10)
    np.testing.assert_allclose(hit_binned.ravel(), np.bincount(cell.ravel(), hit.ravel(), 90), atol=1e-10)


def test_logit_spread_matches_loop():
    teacher, _, y = logits_and_labels(seed=2)
    stats = softmax_stats(teacher, y, temperature=3.0, logit_spread=True)
    for i in range(len(y)):
        rest = np.delete(teacher[i], y[i])
        margin = teacher[i, y[i]] - rest.mean()
        expected = rest.std() / margin if margin > 0 else np.nan
        np.testing.assert_allclose(stats.logit_spread[i], expected, rtol=1e-10)


def test_extreme_logits_stay_finite_and_exact():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(200, 8)) * 1e4
    y = rng.integers(0, 8, 200)
    other = rng.normal(size=(200, 8)) * 1e4
    sums = ClassSums(8, n_bins=15)
    stats = softmax_stats(logits, y, temperature=2.0, versus=(other, softmax_stats(other, y, temperature=2.0)),
                          class_sums=sums, logit_spread=True)
    for name in ("log_norm", "nontarget_log_norm", "target_log_prob", "nontarget_log_mass", "entropy",
                 "nontarget_entropy", "nontarget_sum_sq", "cross_entropy", "nontarget_cross_entropy"):
        assert np.all(np.isfinite(getattr(stats, name))), name
    np.testing.assert_allclose(stats.nontarget_log_mass, nontarget_log_mass(logits, y, 2.0), rtol=1e-12, atol=1e-12)
    # the target dominates by thousands of nats: log(1 − p_y) is very negative, not −inf
    assert stats.nontarget_log_mass.min() < -1000
    r = nontarget_distribution(logits, y, 2.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        h_r = -np.where(r > 0, r * np.log(r), 0).sum(axis=1)
    np.testing.assert_allclose(stats.nontarget_entropy, h_r, atol=1e-10)
    assert np.all(np.isfinite(sums.nontarget_sum))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_blocks_and_threads_do_not_change_results(monkeypatch, dtype):
    """Uneven blocks in several threads give the one-block result (sums of sums, never means of means)."""
    teacher, student, y = logits_and_labels(n=257, seed=4)
    teacher, student = teacher.astype(dtype), student.astype(dtype)

    def run():
        s, sums = softmax_stats(student, y), ClassSums(6, n_bins=5)
        return softmax_stats(teacher, y, versus=(student, s), class_sums=sums, logit_spread=True), sums

    one_block, one_sums = run()
    monkeypatch.setattr(_common, "_BLOCK_ELEMENTS", 6 * 10)  # 10 rows per block, the last has 7
    monkeypatch.setattr(_common, "MIN_BLOCK_ROWS", 1)
    monkeypatch.setattr(_common, "N_THREADS", 3)
    blocked, blocked_sums = run()
    for name in ("target_log_prob", "entropy", "cross_entropy", "nontarget_cross_entropy", "logit_spread"):
        np.testing.assert_allclose(getattr(blocked, name), getattr(one_block, name), rtol=1e-13, atol=1e-13)
    for name in ("nontarget_sum", "prob_sum", "binned_prob", "binned_hit"):
        np.testing.assert_allclose(getattr(blocked_sums, name), getattr(one_sums, name), atol=1e-12)


def test_the_float32_pass_of_large_vocabularies_matches_float64(monkeypatch):
    """From FLOAT32_MIN_CLASSES classes the softmax pass runs in float32: every statistic stays within about
    1e-4 (relative) of the float64 pass, saturated rows (the target ahead by hundreds of nats) included."""
    rng = np.random.default_rng(9)
    n, n_classes = 40, 6000
    teacher = (rng.normal(size=(n, n_classes)) * 3).astype(np.float32)
    student = (rng.normal(size=(n, n_classes)) * 2).astype(np.float32)
    y = rng.integers(0, n_classes, n)
    teacher[:5, :] -= 300.0
    teacher[np.arange(5), y[:5]] += 300.0  # the target dominates: the non-target sum underflows in float32

    def run():
        sums = ClassSums(n_classes, n_bins=15)
        s = softmax_stats(student, y, temperature=2.0)
        return softmax_stats(teacher, y, temperature=2.0, versus=(student, s), class_sums=sums,
                             logit_spread=True), sums

    assert _common.work_dtype(n_classes) == np.float32
    fast, fast_sums = run()
    monkeypatch.setattr(_common, "FLOAT32_MIN_CLASSES", 10**9)
    exact, exact_sums = run()
    for name in ("log_norm", "nontarget_log_norm", "target_log_prob", "nontarget_log_mass", "max_log_prob",
                 "entropy", "nontarget_entropy", "nontarget_sum_sq", "cross_entropy", "nontarget_cross_entropy",
                 "logit_spread"):
        value = getattr(fast, name)
        assert value.dtype == np.float64, name
        np.testing.assert_allclose(value, getattr(exact, name), rtol=1e-4, atol=1e-4, err_msg=name)
    assert np.array_equal(fast.prediction, exact.prediction)
    for name in ("nontarget_sum", "prob_sum"):
        np.testing.assert_allclose(getattr(fast_sums, name), getattr(exact_sums, name), rtol=1e-5, atol=1e-9)
    assert np.array_equal(fast_sums.binned_hit, exact_sums.binned_hit)


def test_rows_subset_equals_stats_of_the_subset():
    teacher, _, y = logits_and_labels(seed=5)
    rows = np.array([5, 2, 9, 100, 7])
    subset_sums, direct_sums = ClassSums(6, n_bins=10), ClassSums(6, n_bins=10)
    subset = softmax_stats(teacher, y, temperature=2.0, rows=rows, class_sums=subset_sums)
    direct = softmax_stats(teacher[rows], y[rows], temperature=2.0, class_sums=direct_sums)
    np.testing.assert_allclose(subset.entropy, direct.entropy, rtol=1e-13)
    for name in ("nontarget_sum", "binned_prob", "binned_hit", "label_count"):
        np.testing.assert_allclose(getattr(subset_sums, name), getattr(direct_sums, name), rtol=1e-13)


def test_class_sums_of_kept_classes_are_the_dense_sums_restricted():
    teacher, _, y = logits_and_labels(seed=7)
    dense, kept = ClassSums(6, n_bins=15), ClassSums(6, n_bins=15, kept=np.array([1, 4, 5]))
    softmax_stats(teacher, y, class_sums=dense)
    softmax_stats(teacher, y, class_sums=kept)
    np.testing.assert_allclose(kept.nontarget_sum, dense.nontarget_sum[np.ix_([1, 4, 5], [1, 4, 5])], rtol=1e-13)
    np.testing.assert_allclose(kept.binned()[0], dense.binned()[0], rtol=1e-13)


def test_kept_class_sums_over_short_runs_in_many_blocks(monkeypatch):
    """Many classes, few rows each, blocks of 7 rows: the kept classes' runs are cut before summing and
    still give the dense sums restricted."""
    teacher, _, y = logits_and_labels(n=150, n_classes=40, seed=8)
    monkeypatch.setattr(_common, "_BLOCK_ELEMENTS", 40 * 7)
    monkeypatch.setattr(_common, "MIN_BLOCK_ROWS", 1)
    chosen = np.array([0, 3, 17, 22, 39])
    dense, kept = ClassSums(40, n_bins=15), ClassSums(40, n_bins=15, kept=chosen)
    softmax_stats(teacher, y, class_sums=dense)
    softmax_stats(teacher, y, class_sums=kept)
    np.testing.assert_allclose(kept.nontarget_sum, dense.nontarget_sum[np.ix_(chosen, chosen)], rtol=1e-12)
    np.testing.assert_array_equal(kept.label_count, dense.label_count)


def test_map_tasks_gives_each_result_by_key_and_raises_after_every_task_ran():
    assert _common.map_tasks({"a": lambda: 1, ("b", 2): lambda: np.arange(3).sum()}) == {"a": 1, ("b", 2): 3}
    ran = []

    def fail():
        raise KddiagError("task failed")

    def slow():
        time.sleep(0.05)
        ran.append("slow")

    with pytest.raises(KddiagError, match="task failed"):
        _common.map_tasks({"fail": fail, "slow": slow})
    assert ran == ["slow"] or _common.N_THREADS == 1  # in turn, a failure stops the tasks after it


def test_single_thread_blas_holds_while_any_user_is_inside_then_restores():
    from threadpoolctl import threadpool_info

    def blas_threads():
        return {info["filepath"]: info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"}

    before = blas_threads()
    with _common.single_thread_blas:
        with _common.single_thread_blas:
            assert set(blas_threads().values()) <= {1}
        assert set(blas_threads().values()) <= {1}  # the outer user is still inside
    assert blas_threads() == before


def test_auroc_matches_scikit_learn_with_ties():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(21)
    positive = rng.random(500) < 0.3
    for score in (rng.normal(size=500) + positive, rng.integers(0, 4, 500).astype(float)):  # continuous, tied
        assert auroc(positive, score) == pytest.approx(roc_auc_score(positive, score), abs=1e-12)
    assert auroc(np.array([True, False]), np.array([1.0, 0.0])) == 1.0
    assert auroc(np.array([True, False]), np.array([0.0, 0.0])) == 0.5


def test_spearman_and_ranks_match_scipy():
    rng = np.random.default_rng(6)
    a, b = rng.normal(size=500), rng.normal(size=500)
    ties = np.round(a, 1)
    np.testing.assert_allclose(average_ranks(ties), rankdata(ties))
    assert spearman(a, a + 0.3 * b) == pytest.approx(spearmanr(a, a + 0.3 * b).statistic, abs=1e-12)
    assert spearman(ties, b) == pytest.approx(spearmanr(ties, b).statistic, abs=1e-12)
    assert spearman(np.ones(5), np.arange(5.0)) is None


def test_checks_name_argument_expectation_and_value():
    with pytest.raises(KddiagError, match="teacher logits have 100 classes but student logits have 10; "
                                          r"both must be \(n_samples, n_classes\)"):
        check_pair(np.zeros((4, 100)), np.zeros((4, 10)))
    with pytest.raises(KddiagError, match="teacher logits have 4 samples but student logits have 5"):
        check_pair(np.zeros((4, 3)), np.zeros((5, 3)))
    with pytest.raises(KddiagError, match=r"logits must be \(n_samples, n_classes\); got an array of shape \(3,\)"):
        check_logits(np.zeros(3))
    with pytest.raises(KddiagError, match="logits must be finite; got nan at index"):
        check_logits(np.array([[0.0, np.nan]]))
    with pytest.raises(KddiagError, match="logits must be finite; got inf"):
        check_logits(np.array([[0.0, np.inf]]))
    with pytest.raises(KddiagError, match=r"labels must be class ids in \[0, 3\); got 3"):
        check_labels(np.array([0, 3]), n_samples=2, n_classes=3)
    with pytest.raises(KddiagError, match=r"labels must be \(n_samples,\) = \(2,\)"):
        check_labels(np.array([0, 1, 2]), n_samples=2, n_classes=3)
    # huge but finite logits pass (their sum overflows; the check looks closer)
    check_logits(np.array([[1e308, 1e308]]))
    assert check_logits(np.array([[1, 2]])).dtype == np.float64
    assert check_logits(np.array([[1, 2]], dtype=np.float32)).dtype == np.float32


def test_log_softmax_reference_is_what_we_think():
    np.testing.assert_allclose(log_probs([[0.0, np.log(3.0)]]), log_softmax([[0.0, np.log(3.0)]], axis=1))
    np.testing.assert_allclose(np.exp(log_probs([[0.0, np.log(3.0)]])), [[0.25, 0.75]])


def test_reverse_kl_from_the_other_mean_equals_brute_force():
    from scipy.special import log_softmax

    from kddiag.metrics._common import softmax_stats

    rng = np.random.default_rng(3)
    for scale, temperature in ((1.0, 1.0), (5.0, 2.0), (300.0, 4.0)):
        teacher, student = rng.normal(size=(40, 7)) * scale, rng.normal(size=(40, 7)) * scale
        y = rng.integers(0, 7, 40)
        q = softmax_stats(student, y, temperature=temperature, versus=(teacher, None))
        p = softmax_stats(teacher, y, temperature=temperature, versus=(student, q))
        log_q, log_p = log_softmax(student / temperature, axis=1), log_softmax(teacher / temperature, axis=1)
        expected = np.sum(np.exp(log_q) * (log_q - log_p), axis=1)
        np.testing.assert_allclose(q.kl_divergence_to(p), np.maximum(expected, 0), rtol=1e-7, atol=1e-9)
        assert q.cross_entropy is None  # no stats of the other model given: only its mean
