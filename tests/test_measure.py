"""The measure stage: every catalog metric of docs/metrics.md, tagged by data set, with reasons when unavailable."""
import re
from pathlib import Path

import numpy as np
import pytest

from kddiag import measure as measure_module
from kddiag.errors import KddiagError
from kddiag.measure import measure
from kddiag.metrics import domain, fidelity, instance, universe, whatif
from kddiag.types import EVAL, SECTIONS, TRANSFER, ClassInfo, ModelOutputs, SetOutputs, Setting, Settings

N_CLASSES = 6
GROUPS = (0, 0, 1, 1, 2, 2)
SETTINGS = Settings(temperature=Setting(3.0, "cli"), alpha=Setting(0.8, "cli"))
WEIGHT_METRICS = {"weight_similarity_transfer_score", "baseline_weight_similarity_transfer_score"}
TRANSFER_ONLY = {"softness_gap"}
ONE_SET = {"temperature_whatif"}  # transfer, else eval


def catalog() -> dict[str, set[str]]:
    """{section: names} read from the tables of docs/metrics.md, prefixes {T/S/B} and {T/S} expanded."""
    text = (Path(__file__).parents[1] / "docs" / "metrics.md").read_text(encoding="utf-8")
    names: dict[str, set[str]] = {}
    section = None
    for line in text.split("## Catalog", 1)[1].splitlines():
        heading = re.match(r"### (\w+)", line)
        if heading:
            section = heading.group(1)
            names[section] = set()
        elif section and line.startswith("| `"):
            for name in re.findall(r"`([^`]+)`", line.split("|")[1]):
                prefix = re.match(r"\{([TSB/]+)\}_(.*)", name)
                roles = {"T": "teacher", "S": "student", "B": "baseline"}
                if prefix:
                    names[section] |= {f"{roles[r]}_{prefix.group(2)}" for r in prefix.group(1).split("/")}
                else:
                    names[section].add(name)
    return names


def expected_datasets(name: str, given: list[str]) -> set[str]:
    if "weight_similarity" in name or "weight_group_recovery" in name or name in WEIGHT_METRICS:
        return {"weights"}
    if name in TRANSFER_ONLY:
        return {TRANSFER}
    if name in ONE_SET:
        return {TRANSFER if TRANSFER in given else EVAL}
    return set(given)


def _model(rng, base, noise, *, features=True, n_features=4):
    logits = base + noise * rng.normal(size=base.shape)
    if not features:
        return ModelOutputs(logits)
    feats = np.column_stack([logits, rng.normal(size=(len(base), n_features))])
    return ModelOutputs(logits, features=feats, weight=rng.normal(size=(N_CLASSES, feats.shape[1])))


def make_set(name, n, seed, *, baseline=True, features=True):
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, N_CLASSES)) * 3
    labels = np.argmax(base + rng.gumbel(size=base.shape), axis=1)
    return SetOutputs(name, labels, _model(rng, base, 0.5, features=features),
                      _model(rng, base, 1.5, features=features),
                      _model(rng, base, 2.5, features=features) if baseline else None)


@pytest.fixture(scope="module")
def full():
    sets = [make_set(TRANSFER, 300, 1), make_set(EVAL, 200, 2)]
    return sets, measure(sets, settings=SETTINGS, class_info=ClassInfo(groups=GROUPS))


@pytest.fixture(scope="module")
def bare():
    """Logits mode: eval set only, no baseline, no groups."""
    sets = [make_set(EVAL, 200, 3, baseline=False, features=False)]
    return sets, measure(sets, settings=SETTINGS, class_info=ClassInfo())


def test_every_catalog_metric_on_every_expected_dataset(full):
    _, measured = full
    found = {(m.section, m.name, m.dataset) for m in measured.metrics}
    expected = {(section, name, dataset) for section, names in catalog().items() for name in names
                for dataset in expected_datasets(name, [TRANSFER, EVAL])}
    assert found == expected
    assert len(measured.metrics) == len(found)  # no duplicates
    assert set(catalog()) == set(SECTIONS)


def test_with_everything_given_every_metric_has_a_value(full):
    _, measured = full
    missing = [(m.name, m.dataset, m.unavailable) for m in measured.metrics if m.value is None]
    assert missing == []
    assert all(m.unavailable is None for m in measured.metrics)


def test_logits_mode_without_baseline_or_groups_says_why(bare):
    _, measured = bare
    found = {(m.section, m.name, m.dataset) for m in measured.metrics}
    expected = {(section, name, dataset) for section, names in catalog().items() for name in names
                for dataset in expected_datasets(name, [EVAL])}
    assert found == expected  # every metric is still there, unavailable ones too
    for metric in measured.metrics:
        assert (metric.value is None) == (metric.unavailable is not None), metric
    reason = {(m.name, m.dataset): m.unavailable for m in measured.metrics}
    assert reason["baseline_accuracy", EVAL] == "no baseline given"
    assert reason["kd_gain", EVAL] == "no baseline given"
    assert reason["baseline_output_similarity_transfer_score", EVAL] == "no baseline given"
    assert reason["teacher_weight_similarity", "weights"] == "logits mode: no logit-layer weights"
    assert reason["weight_similarity_transfer_score", "weights"] == "logits mode: no logit-layer weights"
    assert reason["feature_cka", EVAL] == "no penultimate features found"
    assert reason["teacher_group_recovery", EVAL] == "no class groups given"
    assert reason["softness_gap", TRANSFER] == "needs both eval and transfer sets"
    assert measured.value("instance", "difficulty_source", EVAL) == "knn_disagreement_logits"
    assert measured.get("universe", "temperature_whatif").dataset == EVAL


def test_values_equal_the_metric_functions_per_dataset(full):
    sets, measured = full
    for data in sets:
        d, y = data.dataset, data.labels
        t, s, b = data.teacher.logits, data.student.logits, data.baseline.logits
        value = lambda section, name: measured.value(section, name, d)  # noqa: E731
        assert value("outcome", "teacher_accuracy") == pytest.approx(fidelity.accuracy(t, y))
        assert value("outcome", "kd_gain") == pytest.approx(fidelity.accuracy(s, y) - fidelity.accuracy(b, y))
        assert value("outcome", "kl_teacher_student_at_temperature") == pytest.approx(
            fidelity.mean_kl_divergence(t, s, temperature=3.0))
        assert value("outcome", "class_permutation") == fidelity.class_permutation(t, s).tolist()
        assert value("universe", "student_classwise_ece") == pytest.approx(universe.classwise_calibration_error(s, y))
        assert value("universe", "baseline_fitted_temperature") == pytest.approx(universe.fitted_temperature(b, y))
        assert value("universe", "teacher_reliability") == universe.reliability_bins(t, y)
        assert value("universe", "saturation_share") == pytest.approx(universe.saturation_share(t, y, temperature=3.0))
        assert value("domain", "dark_knowledge_content_at_temperature") == pytest.approx(
            domain.dark_knowledge_content(t, y, temperature=3.0))
        assert value("domain", "baseline_nontarget_logit_spread") == pytest.approx(domain.nontarget_logit_spread(b, y))
        np.testing.assert_allclose(value("domain", "student_output_similarity"), domain.output_similarity(s, y))
        assert value("domain", "feature_cka") == pytest.approx(
            domain.linear_cka(data.teacher.features, data.student.features), rel=1e-4)
        w = instance.rescaling_weights(t, s, y, temperature=3.0, alpha=0.8)
        assert value("instance", "rescaling_weight_mean") == pytest.approx(np.mean(w))
        untrained = instance.untrained_rescaling_weights(t, y, temperature=3.0, alpha=0.8)
        difficulty = instance.cross_entropy_per_example(b, y)
        assert value("instance", "rescaling_difficulty_correlation") == pytest.approx(
            instance.rescaling_difficulty_correlation(untrained, difficulty))
        assert value("instance", "difficulty_source") == "baseline_loss"
        assert value("instance", "nckd") == pytest.approx(
            np.mean(instance.decoupled_kd(t, s, y, temperature=3.0).nckd))
        assert value("instance", "hardest_examples") == instance.hardest_examples(t, y)
        np.testing.assert_allclose(measured.arrays[f"{d}/rescaling_weight"], w)
        np.testing.assert_allclose(measured.arrays[f"{d}/difficulty"], difficulty)
        assert measured.arrays[f"{d}/teacher_target_confidence"].shape == (len(y),)
    assert measured.value("universe", "softness_gap", TRANSFER) == pytest.approx(
        universe.effective_smoothing(sets[1].teacher.logits, sets[1].labels, temperature=3.0)
        - universe.effective_smoothing(sets[0].teacher.logits, sets[0].labels, temperature=3.0))
    assert measured.value("universe", "temperature_whatif", TRANSFER) == whatif.temperature_whatif(
        sets[0].teacher.logits, sets[0].labels, alpha=0.8)
    np.testing.assert_allclose(measured.value("domain", "teacher_weight_similarity", "weights"),
                               domain.weight_similarity(sets[0].teacher.weight))
    assert measured.value("domain", "teacher_weight_group_recovery", "weights") == pytest.approx(
        domain.group_recovery(domain.weight_similarity(sets[0].teacher.weight), np.array(GROUPS)))


def test_intervals_and_plain_values(full):
    _, measured = full
    for name in ("teacher_accuracy", "student_accuracy", "baseline_accuracy", "agreement", "kl_teacher_student",
                 "kd_gain"):
        for d in (TRANSFER, EVAL):
            metric = measured.get("outcome", name, d)
            assert metric.ci is not None and metric.ci[0] <= metric.value <= metric.ci[1], (name, d)

    def plain(value):
        if isinstance(value, dict):
            return all(isinstance(k, str) and plain(v) for k, v in value.items())
        if isinstance(value, list):
            return all(plain(v) for v in value)
        return value is None or type(value) in (float, int, str, bool)

    assert all(plain(m.value) for m in measured.metrics)
    assert all(m.ci is None or all(type(x) is float for x in m.ci) for m in measured.metrics)


def test_knn_difficulty_on_a_subsample_of_teacher_features(monkeypatch):
    monkeypatch.setattr(measure_module, "KNN_MAX_SAMPLES", 120)
    sets = [make_set(EVAL, 200, 4, baseline=False)]
    measured = measure(sets, settings=SETTINGS, class_info=ClassInfo())
    difficulty = measured.arrays["eval/difficulty"]
    assert np.isfinite(difficulty).sum() == 120 and np.isnan(difficulty).sum() == 80
    assert measured.value("instance", "difficulty_source") == "knn_disagreement_features"
    assert measured.value("instance", "rescaling_difficulty_correlation") is not None


def test_saturated_student_reports_overflowing_weights_as_unavailable():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 3, 50)
    teacher = rng.normal(size=(50, 3))
    student = np.eye(3)[y] * 1e4  # 1 − q¹_y underflows far beyond the float range
    measured = measure([SetOutputs(EVAL, y, ModelOutputs(teacher), ModelOutputs(student))], settings=SETTINGS,
                       class_info=ClassInfo())
    metric = measured.get("instance", "rescaling_weight_mean", EVAL)
    assert metric.value is None and "overflows" in metric.unavailable
    assert measured.value("instance", "rescaling_weight_low_share", EVAL) is not None
    assert "no error" in measured.get("instance", "confidence_error_auroc", EVAL).unavailable


def test_extreme_logits_give_finite_values_or_a_reason():
    """±1e4 logit spreads: log-space keeps every value finite; only an overflowing w is reported unavailable."""
    rng = np.random.default_rng(7)
    sets = []
    for name, n in ((TRANSFER, 120), (EVAL, 80)):
        y = rng.integers(0, N_CLASSES, n)
        logits = [rng.normal(size=(n, N_CLASSES)) * 1e4 for _ in range(3)]
        sets.append(SetOutputs(name, y, *(ModelOutputs(z) for z in logits)))
    measured = measure(sets, settings=SETTINGS, class_info=ClassInfo(groups=GROUPS))

    def finite(value):
        if isinstance(value, dict):
            return all(finite(v) for v in value.values())
        if isinstance(value, list):
            return all(finite(v) for v in value)
        return value is None or isinstance(value, str) or np.isfinite(value)

    for metric in measured.metrics:
        assert finite(metric.value), metric.name
        if metric.value is None and metric.section != "domain":  # domain: no weights in logits mode
            assert metric.name in ("rescaling_weight_mean", "rescaling_weight_cv"), metric
    assert measured.value("universe", "teacher_nll", EVAL) > 1000  # confidently wrong, by thousands of nats


def test_bad_input_is_one_clear_error():
    good = make_set(EVAL, 50, 6)
    with pytest.raises(KddiagError, match="at least one data set"):
        measure([], settings=SETTINGS, class_info=ClassInfo())
    with pytest.raises(KddiagError, match="the eval set was given twice"):
        measure([good, good], settings=SETTINGS, class_info=ClassInfo())
    with pytest.raises(KddiagError, match=r"class groups must give one group id per class \(6\); got 2"):
        measure([good], settings=SETTINGS, class_info=ClassInfo(groups=(0, 1)))
    # bad logits, labels, features and settings cannot be built: tests/test_types.py


def test_agreement_where_teacher_correct_ignores_examples_the_teacher_gets_wrong():
    y = np.array([0, 1, 2, 0, 1, 2])
    teacher = np.eye(3)[[0, 1, 2, 1, 2, 0]] * 5.0  # right on the first three, wrong on the rest
    student = np.eye(3)[[0, 1, 0, 0, 1, 2]] * 5.0  # follows the labels where the teacher is wrong
    measured = measure([SetOutputs(EVAL, y, ModelOutputs(teacher), ModelOutputs(student))], settings=SETTINGS,
                       class_info=ClassInfo())
    assert measured.value("outcome", "agreement", EVAL) == pytest.approx(2 / 6)
    assert measured.value("outcome", "agreement_where_teacher_correct", EVAL) == pytest.approx(2 / 3)


def test_features_kept_for_a_row_subsample_are_aligned_by_example_index():
    rng = np.random.default_rng(11)
    n, c = 300, 5
    y = rng.integers(0, c, n)
    teacher_features = rng.normal(size=(n, 8))
    student_features = teacher_features @ rng.normal(size=(8, 6)) + 0.3 * rng.normal(size=(n, 6))
    logits = rng.normal(size=(n, c))
    full = measure([SetOutputs(EVAL, y, ModelOutputs(logits, features=teacher_features),
                               ModelOutputs(logits[:, ::-1].copy(), features=student_features))],
                   settings=SETTINGS, class_info=ClassInfo())
    rows = np.sort(rng.choice(n, 120, replace=False))
    kept = measure([SetOutputs(EVAL, y, ModelOutputs(logits, features=teacher_features[rows], feature_rows=rows),
                               ModelOutputs(logits[:, ::-1].copy(), features=student_features[rows],
                                            feature_rows=rows))],
                   settings=SETTINGS, class_info=ClassInfo())
    assert kept.value("domain", "feature_cka", EVAL) == pytest.approx(
        domain.linear_cka(teacher_features[rows], student_features[rows]), rel=1e-5)
    assert kept.value("domain", "feature_cka", EVAL) != pytest.approx(full.value("domain", "feature_cka", EVAL),
                                                                     rel=1e-9)
    difficulty = kept.arrays["eval/difficulty"]
    assert np.isfinite(difficulty).sum() == rows.size and np.isfinite(difficulty[rows]).all()
    np.testing.assert_allclose(difficulty[rows],
                               instance.knn_label_disagreement(teacher_features[rows], y[rows]))
