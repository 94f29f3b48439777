"""collect_outputs: batching, feature-row subsampling, progress, and errors that name the model."""
import numpy as np
import pytest
import torch
from torch import nn

from kddiag.collect import collect_outputs
from kddiag.errors import KddiagError
from kddiag.inputs import Dataset
from kddiag.types import EVAL, TRANSFER

from ._helpers import C, D, N, make_data, in_memory, manual, mlp


def test_batched_equals_one_shot_with_an_uneven_last_batch():
    data = make_data()
    models = dict(teacher=in_memory(mlp(0)), student=in_memory(mlp(1)), baseline=in_memory(mlp(2)))
    one_shot = collect_outputs(data, **models, set_name=EVAL, batch_size=N)
    batched = collect_outputs(data, **models, set_name=EVAL, batch_size=16)  # 16+16+16+2
    for role in ("teacher", "student", "baseline"):
        a, b = getattr(one_shot, role), getattr(batched, role)
        np.testing.assert_allclose(a.logits, b.logits, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(a.features, b.features, rtol=1e-6, atol=1e-6)


class _NaNRows(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(D, C)

    def forward(self, x):
        out = self.fc(x)
        return torch.where(torch.arange(len(x))[:, None] < 2, torch.nan, out)  # 2 NaN rows per batch


@pytest.mark.parametrize("student, message", [
    (nn.Linear(D + 1, C), r"student failed on inputs of shape \(\d+, 8\) \(torch\.float32\): RuntimeError: "
                          r"mat1 and mat2 shapes cannot be multiplied"),
    (nn.Sequential(nn.Linear(D, C), nn.Flatten(0)), r"student returned outputs of shape \(\d+,\) for \d+ inputs; "
                                                    r"expected logits of shape \(n_samples, n_classes\)"),
    (nn.Linear(D, C + 1), r"teacher logits \(eval set\) have 3 classes but student logits \(eval set\) have 4"),
    (_NaNRows(), r"student logits \(eval set\): NaN or Inf in example 0 \(2 of the 16 examples from 0\)"),
])
def test_model_errors_name_the_model(student, message):
    with pytest.raises(KddiagError, match=message) as error:
        collect_outputs(make_data(), teacher=in_memory(mlp(0)), student=in_memory(student), set_name=EVAL,
                        batch_size=16)
    assert "\n" not in str(error.value)


def test_label_and_set_name_errors():
    data = Dataset(name="mem", x=torch.randn(4, D), labels=np.array([0, 1, 2, 3]))
    models = dict(teacher=in_memory(mlp(0)), student=in_memory(mlp(1)))
    with pytest.raises(KddiagError, match=r"labels of the eval set \('mem'\) must lie in \[0, 3\) for 3-class models; "
                                          r"got values from 0 to 3"):
        collect_outputs(data, **models, set_name=EVAL)
    with pytest.raises(KddiagError, match=r"a data set must be 'eval' or 'transfer'; got 'test'"):
        collect_outputs(data, **models, set_name="test")


def test_progress_goes_to_stderr_only_when_asked(capsys):
    models = dict(teacher=in_memory(mlp(0)), student=in_memory(mlp(1)))
    collect_outputs(make_data(), **models, set_name=EVAL, batch_size=20)
    assert capsys.readouterr() == ("", "")
    collect_outputs(make_data(), **models, set_name=TRANSFER, batch_size=20, progress="bar")
    captured = capsys.readouterr()
    assert captured.out == "" and "transfer set [" in captured.err and "batch 3/3 (100%)" in captured.err


def test_features_are_kept_for_the_row_reservoir_on_large_sets(monkeypatch):
    import kddiag.accumulate as accumulate

    monkeypatch.setattr(accumulate, "ROW_SAMPLES", 13)
    monkeypatch.setattr(accumulate, "MIN_ROW_SAMPLES", 13)
    data, teacher, student = make_data(), mlp(0, hidden=16), mlp(1, hidden=5)
    out = collect_outputs(data, teacher=in_memory(teacher), student=in_memory(student), set_name=EVAL, batch_size=7)
    rows = out.teacher.feature_rows
    assert rows is not None and rows.size == 13 and np.all(np.diff(rows) > 0)
    np.testing.assert_array_equal(rows, accumulate.row_sample(N, 3))  # the rows the measurements read
    np.testing.assert_array_equal(rows, out.student.feature_rows)
    _, features = manual(teacher, data.x)
    np.testing.assert_allclose(out.teacher.features, features[rows], rtol=1e-6, atol=1e-6)
    assert out.teacher.logits.shape[0] == N  # logits stay complete
