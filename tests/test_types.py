"""The hand-off objects check themselves when built: one test per fault, matching its one message."""
import dataclasses
import math

import numpy as np
import pytest
import torch

from kddiag.errors import KddiagError
from kddiag.inputs import ClassInfo, Dataset
from kddiag.options import InspectOptions, Setting, Settings
from kddiag.outputs import Collected, ModelOutputs, SetOutputs
from kddiag.types import EVAL, TRANSFER

N, C = 6, 3
LABELS = np.arange(N) % C


def _logits(n: int = N, c: int = C, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, c))


def _set(dataset: str = EVAL, *, n: int = N, c: int = C, **changes) -> SetOutputs:
    fields = dict(dataset=dataset, labels=np.arange(n) % c, teacher=ModelOutputs(_logits(n, c), role="teacher"),
                  student=ModelOutputs(_logits(n, c, 1), role="student"), source="d.npz")
    return SetOutputs(**{**fields, **changes})


# --- Setting / Settings -----------------------------------------------------------------------

def test_valid_settings_keep_their_values_and_sources():
    settings = Settings(Setting(2.0, "cli"), Setting(0.5, "checkpoint", path="s.pt"))
    assert (settings.temperature.value, settings.alpha.source, settings.alpha.path) == (2.0, "checkpoint", "s.pt")
    assert Settings().temperature.guessed and Settings(alpha=Setting(0, "cli")).alpha.value == 0


@pytest.mark.parametrize("temperature, message", [
    (Setting(math.inf, "cli"), r"^--temperature must be a finite number > 0 and at most 10000; got inf$"),
    (Setting(math.nan, "cli"), r"^--temperature must be a finite number > 0 and at most 10000; got nan$"),
    (Setting(0.0, "cli"), r"^--temperature must be a finite number > 0 and at most 10000; got 0\.0$"),
    (Setting(-1, "cli"), r"^--temperature must be a finite number > 0 and at most 10000; got -1\.0$"),
    (Setting("4", "cli"), r"^--temperature must be a finite number > 0 and at most 10000; got '4'$"),
    (Setting(math.inf, "checkpoint", path="runs/s.pt"),
     r"^the temperature stored in checkpoint 'runs/s\.pt' must be a finite number > 0 and at most 10000; got inf$"),
    (Setting(1e308, "cli"), r"^--temperature must be a finite number > 0 and at most 10000; got 1e\+308$"),
])
def test_settings_refuse_a_bad_temperature_naming_its_origin(temperature, message):
    with pytest.raises(KddiagError, match=message):
        Settings(temperature=temperature)


@pytest.mark.parametrize("alpha, message", [
    (Setting(1.5, "cli"), r"^--alpha must be a number in \[0, 1\]; got 1\.5$"),
    (Setting(math.nan, "checkpoint", path="t.pt2"), r"^the alpha stored in checkpoint 't\.pt2' must be a number "
                                                     r"in \[0, 1\]; got nan$"),
    (Setting(True, "cli"), r"^--alpha must be a number in \[0, 1\]; got True$"),
])
def test_settings_refuse_a_bad_alpha_naming_its_origin(alpha, message):
    with pytest.raises(KddiagError, match=message):
        Settings(alpha=alpha)


def test_setting_source_must_be_known():
    with pytest.raises(KddiagError, match=r"source must be one of 'cli', 'config', 'checkpoint', 'guessed'; got 'file'"):
        Setting(4.0, "file")


# --- InspectOptions ---------------------------------------------------------------------------

@pytest.mark.parametrize("options, message", [
    ({"temperature": math.inf}, r"^--temperature must be a finite number > 0 and at most 10000; got inf$"),
    ({"temperature": math.nan}, r"^--temperature must be a finite number > 0 and at most 10000; got nan$"),
    ({"temperature": 0}, r"^--temperature must be a finite number > 0 and at most 10000; got 0\.0$"),
    ({"temperature": -1.0}, r"^--temperature must be a finite number > 0 and at most 10000; got -1\.0$"),
    ({"alpha": 2}, r"^--alpha must be a number in \[0, 1\]; got 2\.0$"),
    ({"alpha": -0.1}, r"^--alpha must be a number in \[0, 1\]; got -0\.1$"),
    ({"batch_size": 0}, r"^--batch-size must be a positive integer; got 0$"),
    ({"batch_size": 2.5}, r"^--batch-size must be a positive integer; got 2\.5$"),
])
def test_inspect_options_refuse_bad_values_naming_the_option(options, message):
    with pytest.raises(KddiagError, match=message):
        InspectOptions(**options)


def test_inspect_options_accept_the_edges():
    options = InspectOptions(temperature=1e-3, alpha=1, batch_size=1)
    assert (options.temperature, options.alpha, options.batch_size) == (1e-3, 1, 1)
    assert InspectOptions().temperature is None


# --- ClassInfo --------------------------------------------------------------------------------

def test_class_info_names_and_groups_must_have_the_same_length():
    assert ClassInfo(names=("a", "b"), groups=(0, 0)).groups == (0, 0)
    with pytest.raises(KddiagError, match=r"^2 class names but 3 class groups; give one of each per class$"):
        ClassInfo(names=("a", "b"), groups=(0, 0, 1))


# --- Dataset ----------------------------------------------------------------------------------

def test_dataset_stores_labels_as_int64():
    data = Dataset("d.pt", torch.zeros(3, 2), torch.tensor([0, 2, 1], dtype=torch.int32))
    assert isinstance(data.labels, np.ndarray) and data.labels.dtype == np.int64
    assert Dataset("labels-only", None, np.array([1, 0], dtype=np.uint8)).labels.tolist() == [1, 0]


def test_dataset_takes_y_for_labels_as_data_files_name_them():
    data = Dataset("d.pt", torch.zeros(3, 2), y=np.array([0, 2, 1]))
    assert data.labels.tolist() == [0, 2, 1] and data.y is data.labels and data.y.dtype == np.int64
    assert dataclasses.replace(data, labels=np.array([1, 1, 1])).y.tolist() == [1, 1, 1]
    with pytest.raises(KddiagError, match=r"^data 'd\.pt': labels given twice, as labels and as y"):
        Dataset("d.pt", None, np.array([0]), y=np.array([0]))
    with pytest.raises(KddiagError, match=r"^data 'd\.pt': no labels: give labels= \(or y=\)"):
        Dataset("d.pt", torch.zeros(3, 2))


@pytest.mark.parametrize("x, labels, message", [
    (None, np.zeros((3, 1), int), r"^data 'd\.pt': labels must be 1-D class ids \(n_samples,\); got shape \(3, 1\) \(one-hot or probabilities\? give class ids\)$"),
    (None, np.zeros(3), r"^data 'd\.pt': labels must be integer class ids; got dtype float64$"),
    (None, np.zeros(0, int), r"^data 'd\.pt': the data set is empty \(0 labels\)$"),
    (None, np.array([0, -1]), r"^data 'd\.pt': labels must be class ids >= 0; got -1$"),
    (np.zeros((4, 2)), np.zeros(3, int), r"^data 'd\.pt': inputs 'x' have shape \(4, 2\) but there are 3 labels"),
    (torch.tensor(1.0), np.zeros(3, int), r"^data 'd\.pt': inputs 'x' have shape \(\) but there are 3 labels"),
])
def test_dataset_faults(x, labels, message):
    with pytest.raises(KddiagError, match=message):
        Dataset("d.pt", x, labels)


# --- ModelOutputs -----------------------------------------------------------------------------

def test_model_outputs_keep_valid_arrays_and_make_logits_float64():
    out = ModelOutputs(np.arange(6).reshape(3, 2), features=np.ones((2, 4), np.float32), weight=np.ones((2, 4)),
                       feature_rows=np.array([0, 2]))
    assert out.logits.dtype == np.float64 and out.features.dtype == np.float32
    assert ModelOutputs(_logits().astype(np.float32)).logits.dtype == np.float64


@pytest.mark.parametrize("changes, message", [
    ({"logits": np.zeros(5)}, r"^student logits \('s\.npy'\) must be \(n_samples, n_classes\) with at least 1 sample "
                              r"and 2 classes; got shape \(5,\)$"),
    ({"logits": np.zeros((0, 3))}, r"must be \(n_samples, n_classes\) with at least 1 sample and 2 classes; "
                                   r"got shape \(0, 3\)"),
    ({"logits": np.zeros((4, 1))}, r"got shape \(4, 1\)"),
    ({"logits": np.array([["a", "b"]])}, r"^student logits \('s\.npy'\) must be real numbers; got dtype <U1$"),
    ({"logits": np.array([[0.0, 1.0], [np.nan, 0.0], [np.inf, 1.0]])},
     r"^student logits \('s\.npy'\): NaN or Inf in 2 of 3 rows; every value must be finite$"),
    ({"features": np.zeros((5, 2))}, r"^student features \('s\.npy'\) must be \(n_rows, n_features\) = \(6, …\), "
                                     r"one row per example or per feature_rows entry; got shape \(5, 2\)$"),
    ({"features": np.zeros((3, 2)), "feature_rows": np.array([4, 2, 5])},
     r"^student feature_rows \('s\.npy'\) must be increasing example indices in \[0, 6\)$"),
    ({"features": np.zeros((2, 2)), "feature_rows": np.array([2, 6])}, r"must be increasing example indices"),
    ({"features": np.full((6, 2), np.nan)}, r"^student features \('s\.npy'\): NaN or Inf in 6 of 6 rows"),
    ({"weight": np.zeros((4, 2))}, r"^student logit-layer weight \('s\.npy'\) must be \(n_classes, n_features\) = "
                                   r"\(3, …\); got shape \(4, 2\)$"),
    ({"weight": np.array([[0, 1], [np.inf, 0], [0, 0]])},
     r"^student logit-layer weight \('s\.npy'\): NaN or Inf in 1 of 3"),
])
def test_model_outputs_faults_name_the_model(changes, message):
    with pytest.raises(KddiagError, match=message):
        ModelOutputs(**{"logits": _logits(), "role": "student", "source": "s.npy", **changes})


def test_huge_finite_logits_are_finite():
    ModelOutputs(np.full((3, 2), 1e308))  # their sum overflows; no entry is non-finite


# --- SetOutputs -------------------------------------------------------------------------------

def test_set_outputs_store_labels_as_int64():
    out = _set(labels=(np.arange(N) % C).astype(np.int16), baseline=ModelOutputs(_logits(seed=2)))
    assert out.labels.dtype == np.int64 and out.n_classes == C


@pytest.mark.parametrize("changes, message", [
    ({"dataset": "test"}, r"^a data set must be 'eval' or 'transfer'; got 'test'$"),
    ({"labels": np.zeros(N)}, r"^labels of the eval set \('d\.npz'\) must be integer class ids; got dtype float64$"),
    ({"labels": np.zeros(N - 1, int)}, r"^teacher logits \(eval set\) have 6 rows but the eval set \('d\.npz'\) has 5 "
                                       r"labels; each model must give one row per example, in the data's order$"),
    ({"student": ModelOutputs(_logits(N - 1), source="s.npz")},
     r"^student logits \(eval set, 's\.npz'\) have 5 rows but the eval set"),
    ({"baseline": ModelOutputs(_logits(c=C + 1), source="b.pt")},
     r"^teacher logits \(eval set\) have 3 classes but baseline logits \(eval set, 'b\.pt'\) have 4; both must be "
     r"\(n_samples, n_classes\)$"),
    ({"labels": np.array([0, 1, 2, 3, 0, 1])}, r"^labels of the eval set \('d\.npz'\) must lie in \[0, 3\) for 3-class "
                                               r"models; got values from 0 to 3$"),
    ({"student": _logits()}, r"^student outputs on the eval set \('d\.npz'\) must be a ModelOutputs; got ndarray$"),
])
def test_set_outputs_faults(changes, message):
    with pytest.raises(KddiagError, match=message):
        _set(**changes)


# --- Collected --------------------------------------------------------------------------------

def test_collected_is_a_sized_iterable_of_its_sets():
    eval_set, transfer_set = _set(EVAL), _set(TRANSFER, n=9)
    collected = Collected((transfer_set, eval_set))
    assert len(collected) == 2 and list(collected) == [transfer_set, eval_set] and bool(collected)
    assert collected.eval is eval_set and collected.transfer is transfer_set and collected.n_classes == C
    only = Collected([eval_set])
    assert len(only) == 1 and only.transfer is None and only.sets == (eval_set,)


@pytest.mark.parametrize("sets, message", [
    ((), r"^collected outputs must be 1 or 2 SetOutputs \(eval and/or transfer\); got \[\]$"),
    ((_set(), _set(TRANSFER), _set()), r"must be 1 or 2 SetOutputs .*got \['SetOutputs', 'SetOutputs', 'SetOutputs'\]"),
    ((_set(), "eval"), r"must be 1 or 2 SetOutputs .*got \['SetOutputs', 'str'\]"),
    ((_set(), _set()), r"^the eval set was given twice; give at most one eval and one transfer set$"),
    ((_set(), _set(TRANSFER, c=C + 2, source="t.npz")),
     r"^the models give 5 classes on the transfer set \('t\.npz'\) but 3 on the eval set \('d\.npz'\); all sets must "
     r"share the classes$"),
])
def test_collected_faults(sets, message):
    with pytest.raises(KddiagError, match=message):
        Collected(sets)


def test_the_objects_that_moved_out_of_types_still_import_from_it():
    import kddiag.types as types
    from kddiag.diagnosis.findings import Diagnosis
    from kddiag.inputs import Dataset
    from kddiag.options import InspectOptions
    from kddiag.outputs import Batch
    from kddiag.results import Report

    for name, home in (("InspectOptions", InspectOptions), ("Dataset", Dataset), ("Batch", Batch),
                       ("Diagnosis", Diagnosis), ("Report", Report)):
        assert getattr(types, name) is home
    with pytest.raises(AttributeError):
        types.NotAThing
