"""The engine on real measurements: every rule runs on what measure produces, and cites only real names."""
from __future__ import annotations

import numpy as np
import pytest

from kddiag.diagnosis import diagnose
from kddiag.diagnosis.engine import ROOM_TO_IMPROVE_SEVERITY, RULES
from kddiag.diagnosis.ids import FINDING_IDS
from kddiag.errors import KddiagError
from kddiag.measure import measure
from kddiag.metrics.whatif import RANGE
from kddiag.diagnosis.findings import Diagnosis, Finding
from kddiag.inputs import ClassInfo
from kddiag.options import Setting, Settings
from kddiag.outputs import ModelOutputs, SetOutputs
from kddiag.types import EVAL, TRANSFER
from measurement_builder import N_CLASSES, build

SETTINGS = Settings(temperature=Setting(4.0, "cli"), alpha=Setting(0.9, "cli"))


def _set(name, n, seed, *, baseline, features, scale):
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, 6)) * scale
    y = np.argmax(base + rng.gumbel(size=base.shape), axis=1)

    def model(noise):
        z = base + noise * rng.normal(size=base.shape)
        if not features:
            return ModelOutputs(z)
        feats = np.column_stack([z, rng.normal(size=(n, 3))])
        return ModelOutputs(z, features=feats, weight=rng.normal(size=(6, feats.shape[1])))

    return SetOutputs(name, y, model(0.3), model(2.0), model(3.0) if baseline else None)


@pytest.mark.parametrize("given", ["full", "bare"])
@pytest.mark.parametrize("scale", [0.3, 3.0, 40.0])  # near-uniform, ordinary and saturated teachers
def test_every_rule_runs_on_measured_values_and_cites_real_names(given, scale):
    full = given == "full"
    sets = ([_set(TRANSFER, 300, 1, baseline=True, features=True, scale=scale),
             _set(EVAL, 200, 2, baseline=True, features=True, scale=scale)] if full
            else [_set(EVAL, 200, 3, baseline=False, features=False, scale=scale)])
    measured = measure(sets, settings=SETTINGS, class_info=ClassInfo(groups=(0, 0, 1, 1, 2, 2) if full else None))
    diagnosis = diagnose(measured, settings=SETTINGS, n_classes=6)
    names = {(v.name, v.dataset) for v in measured.values()}
    whatif = measured.universe.temperature_whatif
    names.add((f"{whatif.name}.{RANGE}", whatif.dataset))
    for finding in diagnosis.findings:
        assert finding.id in FINDING_IDS
        for item in finding.evidence:
            assert (item.metric, item.dataset) in names, item
    assert {rule for rule, _ in diagnosis.not_checked} <= {rule.id for rule in RULES}
    if full:  # everything measured: every rule could run
        assert not [rule for rule, why in diagnosis.not_checked if "not measured" in why]


def _random_pair(n, n_classes, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    return SetOutputs(EVAL, y, ModelOutputs(rng.normal(size=(n, n_classes))), ModelOutputs(rng.normal(size=(n, n_classes))))


def test_two_examples_give_no_verdict_only_not_enough_data():
    data = SetOutputs(EVAL, np.array([0, 1]), ModelOutputs(np.array([[3.0, 0.0], [0.0, 3.0]])),
                      ModelOutputs(np.array([[0.0, 3.0], [3.0, 0.0]])))
    measured = measure([data], settings=SETTINGS, class_info=ClassInfo())
    diagnosis = diagnose(measured, settings=SETTINGS, n_classes=2)
    assert diagnosis.findings == () and diagnosis.verdict == "none"
    reasons = dict(diagnosis.not_checked)
    assert reasons.pop("teacher-wrong-on-transfer") == "not measured (transfer)"  # needs the transfer set
    assert reasons.pop("student-underfit") == "not measured (transfer)"  # reads the transfer labels' fit
    assert reasons and all("not enough data: 2 examples on the eval set for 2 classes" in why
                           for why in reasons.values())


def test_fewer_examples_than_classes_give_no_verdict():
    measured = measure([_random_pair(2000, 5000, seed=5)], settings=SETTINGS, class_info=ClassInfo())
    diagnosis = diagnose(measured, settings=SETTINGS, n_classes=5000)
    assert diagnosis.verdict == "none" and diagnosis.findings == ()
    assert "2000 examples on the eval set for 5000 classes" in measured.outcome.eval.agreement.unavailable


@pytest.mark.parametrize("n, n_classes", [(2000, 500), (400, 20)])
def test_unrelated_random_models_are_never_a_class_order_mismatch(n, n_classes):
    measured = measure([_random_pair(n, n_classes, seed=n_classes)], settings=SETTINGS, class_info=ClassInfo())
    outcome = measured.outcome.eval
    if n < 10 * n_classes:  # too few examples per class: the search is not run
        assert "not enough data for the relabelling search" in outcome.permuted_agreement.unavailable
    else:  # run, and no better than on unpaired rows
        assert outcome.permuted_agreement.value - outcome.permuted_agreement_chance.value < 0.05
    assert "class-order-mismatch" not in {f.id for f in diagnose(measured, settings=SETTINGS, n_classes=n_classes).findings}


def test_a_permuted_student_is_still_found():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 8, 400)
    teacher = np.eye(8)[y] * 4 + rng.normal(size=(400, 8))
    student = teacher[:, rng.permutation(8)] + 0.3 * rng.normal(size=(400, 8))
    measured = measure([SetOutputs(EVAL, y, ModelOutputs(teacher), ModelOutputs(student))], settings=SETTINGS,
                       class_info=ClassInfo())
    assert measured.outcome.eval.permuted_agreement_chance.value < 0.3 < measured.outcome.eval.permuted_agreement.value
    assert diagnose(measured, settings=SETTINGS, n_classes=8).findings[0].id == "class-order-mismatch"


# ---------------------------------------------------------------- the outcome both ways

def _teacher_weak_with_gain(value, lo, hi):
    """The teacher-weak case of the rule tests (a teacher barely better than the baseline), with this KD gain."""
    return build({("outcome", "teacher_accuracy", EVAL): 0.86,
                  ("outcome", "kd_gain", EVAL): {"value": value, "ci95": [lo, hi]}})


def _diagnose(measurements):
    return diagnose(measurements, settings=SETTINGS, n_classes=N_CLASSES)


def test_a_significant_gain_makes_what_fires_room_to_improve_never_problems():
    helped = _diagnose(_teacher_weak_with_gain(0.016, 0.004, 0.028))
    within_noise = _diagnose(_teacher_weak_with_gain(0.016, -0.004, 0.036))
    assert helped.verdict == "kd-helped" and within_noise.verdict == "problems"
    assert "teacher-weak" in [f.id for f in helped.findings]
    assert [f.id for f in helped.findings] == [f.id for f in within_noise.findings]  # the same notes, same order
    for note, problem in zip(helped.findings, within_noise.findings):
        assert note.severity == pytest.approx(problem.severity * ROOM_TO_IMPROVE_SEVERITY)
        assert note.severity < 0.7  # never reads 'high'
        assert "+1.6 points (95 % interval +0.4 to +2.8, eval set)" in note.explanation


def test_a_loss_with_a_firing_rule_stays_problems():
    assert _diagnose(_teacher_weak_with_gain(-0.02, -0.035, -0.005)).verdict == "problems"


def test_a_kd_helped_verdict_needs_a_note():
    healthy = Finding("healthy", (), 0.0, "KD beats the baseline", (), "", "")
    with pytest.raises(KddiagError, match="'kd-helped' diagnosis needs the findings"):
        Diagnosis((healthy,), verdict="kd-helped")
