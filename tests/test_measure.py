"""The measure stage: every catalog metric of docs/metrics.md, tagged by data set, with reasons when unavailable."""
import json
import re
from pathlib import Path

import numpy as np
import pytest

from kddiag.levels import domain as domain_level, instance as instance_level
from kddiag.accumulate import summarize
from kddiag.errors import KddiagError
from kddiag.measure import measure
from kddiag.metrics import domain, fidelity, instance, universe, whatif
from kddiag.report import json as report_json
from kddiag.results import Measurements
from kddiag.inputs import ClassInfo
from kddiag.options import Setting, Settings
from kddiag.outputs import ModelOutputs, SetOutputs
from kddiag.types import EVAL, SECTIONS, TRANSFER

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


def keys(measured) -> list[tuple[str, str, str]]:
    """(level, name, dataset) of every value, as report.json lists them."""
    return [(*value.name.split(".", 1), value.dataset) for value in measured.values()]


def test_every_catalog_metric_on_every_expected_dataset(full):
    _, measured = full
    found = set(keys(measured))
    expected = {(section, name, dataset) for section, names in catalog().items() for name in names
                for dataset in expected_datasets(name, [TRANSFER, EVAL])}
    assert found == expected
    assert len(keys(measured)) == len(found)  # no duplicates
    assert set(catalog()) == set(SECTIONS)
    assert set(measured.to_dict()) == set(SECTIONS)


def test_with_everything_given_every_metric_has_a_value(full):
    _, measured = full
    token_only = ("outcome.by_token_frequency", "outcome.by_position",  # language models only
                  "domain.top_k_nontarget_share_at_temperature")  # more than 11 classes only
    missing = [(v.name, v.dataset, v.unavailable) for v in measured.values()
               if v.value is None and v.name not in token_only]
    assert missing == []
    assert all(v.unavailable is None for v in measured.values() if v.name not in token_only)


def test_logits_mode_without_baseline_or_groups_says_why(bare):
    _, measured = bare
    expected = {(section, name, dataset) for section, names in catalog().items() for name in names
                for dataset in expected_datasets(name, [EVAL])}
    assert set(keys(measured)) == expected  # every metric is still there, unavailable ones too
    for value in measured.values():
        assert (value.value is None) == (value.unavailable is not None), value
    ev, weights = measured.outcome.eval, measured.domain.weights
    assert ev.baseline_accuracy.unavailable == "no baseline given"
    assert ev.kd_gain.unavailable == "no baseline given"
    assert measured.domain.eval.baseline_output_similarity_transfer_score.unavailable == "no baseline given"
    assert weights.teacher.weight_similarity.unavailable == "logits mode: no logit-layer weights"
    assert weights.weight_similarity_transfer_score.unavailable == "logits mode: no logit-layer weights"
    assert measured.domain.eval.feature_cka.unavailable == "no penultimate features found"
    assert measured.domain.eval.teacher.group_recovery.unavailable == "no class groups given"
    assert measured.universe.softness_gap.unavailable == "needs both eval and transfer sets"
    assert measured.universe.softness_gap.dataset == TRANSFER
    assert measured.instance.eval.difficulty_source.value == "knn_disagreement_logits"
    assert measured.universe.temperature_whatif.dataset == EVAL
    assert measured.outcome.transfer is None


def test_values_equal_the_metric_functions_per_dataset(full):
    sets, measured = full
    for data in sets:
        d, y = data.dataset, data.labels
        t, s, b = data.teacher.logits, data.student.logits, data.baseline.logits
        outcome, universe_, domain_, instance_ = (level.on(d) for level in measured.levels())
        assert outcome.teacher_accuracy.value == pytest.approx(fidelity.accuracy(t, y))
        assert outcome.kd_gain.value == pytest.approx(fidelity.accuracy(s, y) - fidelity.accuracy(b, y))
        assert outcome.kl_teacher_student_at_temperature.value == pytest.approx(
            fidelity.mean_kl_divergence(t, s, temperature=3.0))
        np.testing.assert_array_equal(outcome.class_permutation.value, fidelity.class_permutation(t, s))
        assert universe_.student.classwise_ece.value == pytest.approx(universe.classwise_calibration_error(s, y))
        assert universe_.baseline.fitted_temperature.value == pytest.approx(universe.fitted_temperature(b, y))
        reliability = universe.reliability_bins(t, y)
        np.testing.assert_array_equal(universe_.teacher.reliability.value.bin_count, reliability.bin_count)
        np.testing.assert_array_equal(universe_.teacher.reliability.value.bin_accuracy, reliability.bin_accuracy)
        assert universe_.saturation_share.value == pytest.approx(universe.saturation_share(t, y, temperature=3.0))
        assert domain_.dark_knowledge_content_at_temperature.value == pytest.approx(
            domain.dark_knowledge_content(t, y, temperature=3.0))
        assert domain_.baseline.nontarget_logit_spread.value == pytest.approx(domain.nontarget_logit_spread(b, y))
        np.testing.assert_allclose(domain_.student.output_similarity.value, domain.output_similarity(s, y))
        assert domain_.feature_cka.value == pytest.approx(
            domain.linear_cka(data.teacher.features, data.student.features), rel=1e-4)
        w = instance.rescaling_weights(t, s, y, temperature=3.0, alpha=0.8)
        assert instance_.rescaling_weight_mean.value == pytest.approx(np.mean(w))
        untrained = instance.untrained_rescaling_weights(t, y, temperature=3.0, alpha=0.8)
        difficulty = instance.cross_entropy_per_example(b, y)
        assert instance_.rescaling_difficulty_correlation.value == pytest.approx(
            instance.rescaling_difficulty_correlation(untrained, difficulty))
        assert instance_.difficulty_source.value == "baseline_loss"
        assert instance_.nckd.value == pytest.approx(np.mean(instance.decoupled_kd(t, s, y, temperature=3.0).nckd))
        assert instance_.hardest_examples.value == instance.hardest_examples(t, y)
        np.testing.assert_allclose(instance_.examples.rescaling_weight, w)
        np.testing.assert_allclose(instance_.examples.difficulty, difficulty)
        assert instance_.examples.teacher_target_confidence.shape == (len(y),)
    assert measured.universe.softness_gap.value == pytest.approx(
        universe.effective_smoothing(sets[1].teacher.logits, sets[1].labels, temperature=3.0)
        - universe.effective_smoothing(sets[0].teacher.logits, sets[0].labels, temperature=3.0))
    whatif_ = measured.universe.temperature_whatif
    assert whatif_.dataset == TRANSFER
    expected = whatif.temperature_whatif(sets[0].teacher.logits, sets[0].labels, alpha=0.8)
    np.testing.assert_array_equal(whatif_.value.effective_smoothing, expected.effective_smoothing)
    assert whatif_.value.informative_range == expected.informative_range
    weights = measured.domain.weights
    np.testing.assert_allclose(weights.teacher.weight_similarity.value, domain.weight_similarity(sets[0].teacher.weight))
    assert weights.teacher.weight_group_recovery.value == pytest.approx(
        domain.group_recovery(domain.weight_similarity(sets[0].teacher.weight), np.array(GROUPS)))


def test_intervals_and_json_ready_values(full):
    _, measured = full
    for record in measured.outcome.sets():
        for value in (record.teacher_accuracy, record.student_accuracy, record.baseline_accuracy, record.agreement,
                      record.kl_teacher_student, record.kd_gain):
            assert value.ci is not None and value.ci[0] <= value.value <= value.ci[1], value.name
    assert all(v.ci is None or all(type(x) is float for x in v.ci) for v in measured.values())
    scalars = [v for v in measured.values() if isinstance(v.value, float)]
    assert scalars and all(type(v.value) is float for v in scalars)  # Python floats, not numpy scalars
    json.dumps(report_json._jsonable(measured.to_dict()), allow_nan=False)  # strict JSON


def test_knn_difficulty_on_a_subsample_of_teacher_features(monkeypatch):
    monkeypatch.setattr(instance_level, "KNN_MAX_SAMPLES", 120)
    sets = [make_set(EVAL, 200, 4, baseline=False)]
    measured = measure(sets, settings=SETTINGS, class_info=ClassInfo())
    difficulty = measured.instance.eval.examples.difficulty
    assert np.isfinite(difficulty).sum() == 120 and np.isnan(difficulty).sum() == 80
    assert measured.instance.eval.difficulty_source.value == "knn_disagreement_features"
    assert measured.instance.eval.rescaling_difficulty_correlation.ok


def test_saturated_student_reports_overflowing_weights_as_unavailable():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 3, 50)
    teacher = rng.normal(size=(50, 3))
    student = np.eye(3)[y] * 1e4  # 1 − q¹_y underflows far beyond the float range
    measured = measure([SetOutputs(EVAL, y, ModelOutputs(teacher), ModelOutputs(student))], settings=SETTINGS,
                       class_info=ClassInfo())
    metric = measured.instance.eval.rescaling_weight_mean
    assert metric.value is None and "overflows" in metric.unavailable
    assert measured.instance.eval.rescaling_weight_low_share.ok
    assert "no error" in measured.instance.eval.confidence_error_auroc.unavailable


def test_extreme_logits_give_finite_values_or_a_reason():
    """±1e4 logit spreads: log-space keeps every value finite; only an overflowing w is reported unavailable."""
    rng = np.random.default_rng(7)
    sets = []
    for name, n in ((TRANSFER, 120), (EVAL, 80)):
        y = rng.integers(0, N_CLASSES, n)
        logits = [rng.normal(size=(n, N_CLASSES)) * 1e4 for _ in range(3)]
        sets.append(SetOutputs(name, y, *(ModelOutputs(z) for z in logits)))
    measured = measure(sets, settings=SETTINGS, class_info=ClassInfo(groups=GROUPS))

    for value in measured.values():
        if isinstance(value.value, float):
            assert np.isfinite(value.value), value.name
        if value.value is None and not value.name.startswith("domain."):  # domain: no weights in logits mode
            assert value.name in ("instance.rescaling_weight_mean", "instance.rescaling_weight_cv",
                                  "outcome.by_token_frequency", "outcome.by_position"), value  # not tokens
    assert measured.universe.eval.teacher.nll.value > 1000  # confidently wrong, by thousands of nats


def test_a_list_of_sets_is_checked_as_collected_outputs():
    good = make_set(EVAL, 50, 6)
    with pytest.raises(KddiagError, match="must be 1 or 2 SetOutputs"):
        measure([], settings=SETTINGS, class_info=ClassInfo())
    with pytest.raises(KddiagError, match="the eval set was given twice"):
        measure([good, good], settings=SETTINGS, class_info=ClassInfo())
    # bad logits, labels, features and settings cannot be built (tests/test_types.py); class info is
    # checked against the class count where it is read (the pipeline)


def test_a_summary_is_measured_only_under_the_settings_it_was_computed_with():
    data = summarize(make_set(EVAL, 200, 7), temperature=4.0, alpha=0.9)
    at_one = Settings(temperature=Setting(1.0, "cli"), alpha=Setting(0.9, "cli"))
    with pytest.raises(KddiagError, match=r"eval set's statistics were computed with temperature 4 but "
                                          r"--temperature is 1"):
        measure([data], settings=at_one, class_info=ClassInfo())
    other_alpha = Settings(temperature=Setting(4.0, "checkpoint", "s.pt"), alpha=Setting(0.5, "checkpoint", "s.pt"))
    with pytest.raises(KddiagError, match=r"computed with alpha 0.9 but the alpha stored in checkpoint 's.pt' is 0.5"):
        measure([data], settings=other_alpha, class_info=ClassInfo())
    same = Settings(temperature=Setting(4, "cli"), alpha=Setting(0.9, "config", "kd.yaml"))
    assert measure([data], settings=same, class_info=ClassInfo()).universe.eval.effective_smoothing.value is not None


def test_agreement_where_teacher_correct_ignores_examples_the_teacher_gets_wrong():
    y = np.tile([0, 1, 2, 0, 1, 2], 5)  # 30 examples: the least a set is measured on
    teacher = np.eye(3)[np.tile([0, 1, 2, 1, 2, 0], 5)] * 5.0  # right on the first three, wrong on the rest
    student = np.eye(3)[np.tile([0, 1, 0, 0, 1, 2], 5)] * 5.0  # follows the labels where the teacher is wrong
    measured = measure([SetOutputs(EVAL, y, ModelOutputs(teacher), ModelOutputs(student))], settings=SETTINGS,
                       class_info=ClassInfo())
    assert measured.outcome.eval.agreement.value == pytest.approx(2 / 6)
    assert measured.outcome.eval.agreement_where_teacher_correct.value == pytest.approx(2 / 3)


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
    assert kept.domain.eval.feature_cka.value == pytest.approx(
        domain.linear_cka(teacher_features[rows], student_features[rows]), rel=1e-5)
    assert kept.domain.eval.feature_cka.value != pytest.approx(full.domain.eval.feature_cka.value, rel=1e-9)
    difficulty = kept.instance.eval.examples.difficulty
    assert np.isfinite(difficulty).sum() == rows.size and np.isfinite(difficulty[rows]).all()
    np.testing.assert_allclose(difficulty[rows],
                               instance.knn_label_disagreement(teacher_features[rows], y[rows]))


def test_report_json_metrics_read_back_into_the_same_measurements(full):
    _, measured = full
    metrics = json.loads(json.dumps(report_json._jsonable(measured.to_dict())))
    again = Measurements.from_dict(metrics)
    assert report_json._jsonable(again.to_dict()) == metrics
    assert [(v.name, v.dataset) for v in again.values()] == [(v.name, v.dataset) for v in measured.values()]
    assert again.universe.temperature_whatif.value.band == measured.universe.temperature_whatif.value.band
    assert again.instance.transfer.hardest_examples.value == measured.instance.transfer.hardest_examples.value


def test_reused_teacher_only_parts_give_the_measurements_computed_afresh():
    """A Monitor's calls share the teacher and the data: measure(reuse=) must not change any value."""
    from dataclasses import replace as replaced

    from kddiag.report.json import _jsonable
    from kddiag.inputs import ClassInfo
    from kddiag.options import Setting, Settings
    from kddiag.outputs import ModelOutputs
    from test_accumulate import make_set

    settings = Settings(temperature=Setting(3.0, "cli"), alpha=Setting(0.8, "cli"))
    first = make_set("eval", 600, 4, baseline=False)
    rng = np.random.default_rng(9)
    other = ModelOutputs(first.student.logits + rng.normal(size=first.student.logits.shape))
    second = replaced(first, student=other)
    reuse = {}
    measure([first], settings=settings, class_info=ClassInfo(), reuse=reuse)
    assert {"whatif", "eval.difficulty", "eval.teacher.fitted_temperature"} <= set(reuse)
    got = measure([second], settings=settings, class_info=ClassInfo(), reuse=reuse)
    expected = measure([second], settings=settings, class_info=ClassInfo())
    assert json.dumps(_jsonable(got.to_dict())) == json.dumps(_jsonable(expected.to_dict()))


def test_the_coverage_line_gives_each_measurement_the_rows_it_read(monkeypatch):
    """Issue 22: at 1,000 classes T*, the what-if, k-NN and CKA read different numbers of the row sample;
    the report says each, with the bounds those measurements use (here made small to keep the test fast)."""
    from kddiag.accumulate import summarize
    from kddiag.measure import coverage_of
    from kddiag.metrics import universe, whatif

    rng = np.random.default_rng(0)
    n, classes = 3000, 1000
    labels = rng.integers(0, classes, n)

    def model(noise):
        return ModelOutputs(rng.normal(size=(n, classes)) * noise, features=rng.normal(size=(n, 16)))

    monkeypatch.setattr(universe, "FIT_MAX_ELEMENTS", 2_000_000)  # T*: 2,000 rows of 1,000 classes
    monkeypatch.setattr(whatif, "MAX_ELEMENTS", 1_500_000)  # the what-if: 1,500
    monkeypatch.setattr(instance_level, "KNN_MAX_SAMPLES", 700)
    monkeypatch.setattr(domain_level, "CKA_MAX_SAMPLES", 1024)
    data = summarize(SetOutputs(EVAL, labels, model(1.0), model(1.0)), temperature=4.0, alpha=0.9)
    coverage = coverage_of(data)
    read = dict(coverage.rows_read)
    assert read == {"T*": 2000, "the temperature what-if": 1500, "k-NN difficulty": 700, "CKA (student)": 1024}
    assert coverage.restricted
    line = coverage.describe()
    assert "T* on 2,000, the temperature what-if on 1,500, k-NN difficulty on 700, CKA (student) on 1,024 rows" in line
    assert coverage.to_dict()["rows_read"]["CKA (student)"] == 1024
    small = coverage_of(summarize(SetOutputs(EVAL, labels[:500] % 10, ModelOutputs(rng.normal(size=(500, 10))),
                                             ModelOutputs(rng.normal(size=(500, 10)))), temperature=4.0, alpha=0.9))
    assert not small.restricted and "rows" not in small.describe()  # everything read every example
