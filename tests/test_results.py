"""The typed results (kddiag/results.py): names stamped from attribute paths, JSON out and back."""
import json

import numpy as np
import pytest

from kddiag.report.json import _jsonable
from kddiag.results import (Calibration, DomainResult, InstanceOnSet, Measured, Measurements, OutcomeOnSet,
                            OutcomeResult, ReliabilityCalibration, UniverseOnSet, UniverseResult, measured,
                            unavailable)
from kddiag.types import EVAL, TRANSFER


def test_names_and_data_sets_come_from_the_attribute_path():
    record = UniverseOnSet(EVAL, teacher=ReliabilityCalibration(ece=measured(0.1)), saturation_share=measured(0.4))
    assert (record.teacher.ece.name, record.teacher.ece.dataset) == ("universe.teacher_ece", EVAL)
    assert record.baseline.fitted_temperature.name == "universe.baseline_fitted_temperature"
    assert record.saturation_share.name == "universe.saturation_share"
    level = UniverseResult(transfer=UniverseOnSet(TRANSFER), softness_gap=measured(0.2, dataset=TRANSFER))
    assert (level.softness_gap.name, level.softness_gap.dataset) == ("universe.softness_gap", TRANSFER)
    assert level.transfer.teacher.ece.name == "universe.teacher_ece"  # a set is stamped once, by itself


def test_measured_values_are_plain_or_unavailable_with_a_reason():
    assert measured(np.float32(0.5)).value == 0.5 and type(measured(np.float32(0.5)).value) is float
    assert measured(np.int64(3)).value == 3 and type(measured(np.int64(3)).value) is int
    assert measured(float("nan"), why_none="undefined here").unavailable == "undefined here"
    assert measured(None).unavailable == "undefined on this data" and not measured(None).ok
    assert unavailable("no baseline given").to_dict() == {"value": None, "unavailable": "no baseline given"}
    assert measured(0.3, ci=(np.float64(0.2), 0.4)).to_dict() == {"value": 0.3, "ci95": [0.2, 0.4]}


def test_every_value_is_listed_once_and_unmeasured_values_say_so():
    m = Measurements(outcome=OutcomeResult(eval=OutcomeOnSet(EVAL, agreement=measured(0.9))))
    values = list(m.values())
    assert len(values) == len({(v.name, v.dataset) for v in values})
    assert m.outcome.eval.kd_gain.unavailable == "not measured"
    assert m.to_dict()["outcome"]["agreement"] == {EVAL: {"value": 0.9}}
    empty = Measurements().to_dict()  # nothing measured: only the values not tied to a given set, unmeasured
    assert {dataset for level in empty.values() for leaves in level.values() for dataset in leaves} == {
        TRANSFER, "weights"}
    assert empty["outcome"] == {} and empty["instance"] == {}
    assert m.outcome.on(TRANSFER) is None and m.outcome.sets() == (m.outcome.eval,)


def test_json_round_trip_keeps_arrays_typed_values_and_reasons():
    record = UniverseOnSet(EVAL, baseline=Calibration(**{name: unavailable("no baseline given")
                                                         for name in ("ece", "nll")}))
    m = Measurements(outcome=OutcomeResult(transfer=OutcomeOnSet(TRANSFER, class_permutation=measured(np.arange(3)),
                                                                 kd_gain=measured(0.02, ci=(0.0, 0.04)))),
                     universe=UniverseResult(eval=record), domain=DomainResult(),
                     instance=Measurements().instance)
    text = json.dumps(_jsonable(m.to_dict()))
    back = Measurements.from_dict(json.loads(text))
    assert json.dumps(_jsonable(back.to_dict())) == text
    assert back.outcome.transfer.kd_gain.ci == (0.0, 0.04)
    np.testing.assert_array_equal(back.outcome.transfer.class_permutation.value, [0, 1, 2])
    assert back.universe.eval.baseline.ece.unavailable == "no baseline given"
    assert back.instance.sets() == ()


def test_records_are_frozen():
    record = InstanceOnSet(EVAL)
    with pytest.raises(Exception):
        record.tckd = Measured(1.0)  # type: ignore[misc]
