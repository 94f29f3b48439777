"""Level 2 (kddiag/metrics/domain.py) against brute-force loops, scipy and scikit-learn."""
import numpy as np
import pytest
from scipy.special import softmax
from scipy.stats import spearmanr
from scipy.stats import ortho_group

from kddiag.errors import KddiagError
from kddiag.metrics import domain

from ._helpers import logits_and_labels


def _non_target(p_row, label):
    rest = np.delete(p_row, label)
    return rest / rest.sum()


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_dark_knowledge_content_matches_loop(temperature):
    teacher, _, y = logits_and_labels(n=200, n_classes=7, seed=30)
    p = softmax(teacher / temperature, axis=1)
    per_example = []
    for row, label in zip(p, y):
        r = _non_target(row, label)
        per_example.append(np.sum(r * np.log(r * 6)) / np.log(6))  # KL(r ‖ U_6) / log 6
    assert domain.dark_knowledge_content(teacher, y, temperature=temperature) == pytest.approx(np.mean(per_example))


def test_dark_knowledge_content_extremes():
    y = np.array([0, 1, 2])
    flat = np.array([[5.0, 1, 1, 1], [1, 5.0, 1, 1], [1, 1, 5.0, 1]])  # wrong-class mass exactly flat
    assert domain.dark_knowledge_content(flat, y) == pytest.approx(0.0, abs=1e-12)
    peaked = np.array([[5.0, 40, 0, 0], [40, 5.0, 0, 0], [40, 0, 5.0, 0]])  # all wrong-class mass on one class
    assert domain.dark_knowledge_content(peaked, y) == pytest.approx(1.0, abs=1e-9)
    assert domain.dark_knowledge_content(np.zeros((3, 2)), np.array([0, 1, 0])) is None


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_dark_knowledge_alternatives_and_top_k_share_match_loops(temperature):
    teacher, _, y = logits_and_labels(n=60, n_classes=40, seed=36, scale=3.0)
    perplexity, share = [], []
    for row, label in zip(teacher, y):
        r = _non_target(softmax(row / temperature), label)
        perplexity.append(np.exp(-np.sum(r * np.log(r))))
        share.append(np.sort(r)[-domain.TOP_K_ALTERNATIVES:].sum())
    assert domain.dark_knowledge_alternatives(teacher, y, temperature=temperature) == pytest.approx(np.mean(perplexity))
    assert domain.top_k_nontarget_share(teacher, y, temperature=temperature) == pytest.approx(np.mean(share))


def test_alternatives_and_top_k_share_at_their_extremes():
    flat = np.zeros((4, 50))
    flat[:, 0] = 30.0  # the wrong classes tie: r is uniform over 49
    y = np.zeros(4, dtype=int)
    assert domain.dark_knowledge_alternatives(flat, y) == pytest.approx(49.0)
    assert domain.top_k_nontarget_share(flat, y) == pytest.approx(10 / 49)
    one = flat.copy()
    one[:, 7] = 20.0  # every wrong-class unit of mass on class 7
    assert domain.dark_knowledge_alternatives(one, y) == pytest.approx(1.0, abs=1e-5)
    assert domain.top_k_nontarget_share(one, y) == pytest.approx(1.0)
    assert domain.top_k_nontarget_share(flat[:, :11], y) is None  # 10 wrong classes: always 1


def test_nontarget_logit_spread_matches_loop():
    teacher, _, y = logits_and_labels(n=200, n_classes=6, seed=31)
    values = []
    for row, label in zip(teacher, y):
        rest = np.delete(row, label)
        margin = row[label] - rest.mean()
        if margin > 0:
            values.append(rest.std() / margin)
    assert 0 < len(values) < len(y)  # some examples are excluded
    assert domain.nontarget_logit_spread(teacher, y) == pytest.approx(np.median(values), rel=1e-10)
    label_smoothed = np.where(np.eye(6)[y] > 0, 4.0, -1.0)
    assert domain.nontarget_logit_spread(label_smoothed, y) == pytest.approx(0.0, abs=1e-12)
    assert domain.nontarget_logit_spread(-label_smoothed, y) is None


def test_output_similarity_matches_loop():
    teacher, _, y = logits_and_labels(n=300, n_classes=5, seed=32)
    p = softmax(teacher, axis=1)
    expected = np.zeros((5, 5))
    for c in range(5):
        rows = [_insert_zero(_non_target(p[i], c), c) for i in range(len(y)) if y[i] == c]
        expected[c] = np.mean(rows, axis=0)
    expected = (expected + expected.T) / 2
    np.fill_diagonal(expected, 0)
    np.testing.assert_allclose(domain.output_similarity(teacher, y), expected, atol=1e-12)


def _insert_zero(r, position):
    return np.insert(r, position, 0.0)


def test_output_similarity_of_an_absent_class_is_nan():
    teacher, _, y = logits_and_labels(n=100, n_classes=4, seed=33)
    y = np.where(y == 3, 0, y)
    similarity = domain.output_similarity(teacher, y)
    assert np.all(np.isnan(similarity[3, :3])) and np.all(np.isnan(similarity[:3, 3]))
    assert np.all(np.isfinite(similarity[:3, :3]))


def test_weight_similarity_is_the_cosine_of_rows():
    weight = np.random.default_rng(34).normal(size=(5, 8))
    similarity = domain.weight_similarity(weight)
    for i in range(5):
        for j in range(5):
            cosine = weight[i] @ weight[j] / np.linalg.norm(weight[i]) / np.linalg.norm(weight[j])
            assert similarity[i, j] == pytest.approx(cosine)
    np.testing.assert_allclose(domain.weight_similarity(weight * 7.0), similarity)


def test_similarity_transfer_score_is_spearman_of_upper_entries():
    rng = np.random.default_rng(35)
    first, second = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    upper = [(i, j) for i in range(6) for j in range(6) if i < j]
    expected = spearmanr([first[i, j] for i, j in upper], [second[i, j] for i, j in upper]).statistic
    assert domain.similarity_transfer_score(first, second) == pytest.approx(expected)
    assert domain.similarity_transfer_score(first, first.copy()) == pytest.approx(1.0)
    assert domain.similarity_transfer_score(first, np.zeros((6, 6))) is None


def test_group_recovery_is_the_pairwise_auroc():
    rng = np.random.default_rng(36)
    similarity = rng.normal(size=(6, 6))
    groups = np.array([0, 0, 1, 1, 1, 2])
    same, different = [], []
    for i in range(6):
        for j in range(i + 1, 6):
            (same if groups[i] == groups[j] else different).append(similarity[i, j])
    wins = sum((s > d) + 0.5 * (s == d) for s in same for d in different)
    assert domain.group_recovery(similarity, groups) == pytest.approx(wins / (len(same) * len(different)))
    block = (groups[:, None] == groups[None, :]).astype(float)
    assert domain.group_recovery(block + 0.01 * rng.normal(size=(6, 6)), groups) == pytest.approx(1.0)
    assert domain.group_recovery(similarity, np.zeros(6)) is None


def test_linear_cka_matches_the_gram_matrix_hsic_form():
    rng = np.random.default_rng(37)
    x = rng.normal(size=(80, 5))
    y = x @ rng.normal(size=(5, 7)) + 0.5 * rng.normal(size=(80, 7))
    centre = np.eye(80) - 1.0 / 80

    def hsic(a, b):
        return np.trace(a @ centre @ b @ centre)

    k, l_ = x @ x.T, y @ y.T
    expected = hsic(k, l_) / np.sqrt(hsic(k, k) * hsic(l_, l_))
    assert domain.linear_cka(x, y) == pytest.approx(expected, rel=1e-10)
    assert domain.linear_cka(x, x) == pytest.approx(1.0)
    rotation = ortho_group.rvs(5, random_state=1)
    assert domain.linear_cka(x, 3.0 * x @ rotation + 2.0) == pytest.approx(1.0)
    assert domain.linear_cka(x, np.ones((80, 3))) is None


def test_linear_cka_gram_and_feature_forms_agree():
    rng = np.random.default_rng(38)
    x = rng.normal(size=(30, 50))  # fewer examples than features: the Gram form is used
    y = x[:, :20] @ rng.normal(size=(20, 40)) + rng.normal(size=(30, 40))
    xc, yc = x - x.mean(axis=0), y - y.mean(axis=0)
    feature_form = np.linalg.norm(yc.T @ xc) ** 2 / (np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc))
    assert domain.linear_cka(x, y) == pytest.approx(feature_form, rel=1e-10)


def test_errors():
    with pytest.raises(KddiagError, match="teacher features have 5 samples but student features have 6"):
        domain.linear_cka(np.zeros((5, 2)), np.zeros((6, 2)))
    with pytest.raises(KddiagError, match=r"class groups must give one group per class \(3\)"):
        domain.group_recovery(np.zeros((3, 3)), [0, 1])
    with pytest.raises(KddiagError, match="teacher similarity is"):
        domain.similarity_transfer_score(np.zeros((3, 3)), np.zeros((4, 4)))
