"""Logits mode: stored logits stand for a model, alone or beside real models."""
import numpy as np
import pytest

from kddiag.collect import collect_outputs
from kddiag.errors import KddiagError
from kddiag.inputs import Dataset, LoadedModel
from kddiag.types import EVAL, TRANSFER

from ._helpers import C, N, make_data, in_memory, manual, mlp


def _logits_model(eval_logits=None, transfer_logits=None, labels=None) -> LoadedModel:
    logits = {k: v for k, v in ((EVAL, eval_logits), (TRANSFER, transfer_logits)) if v is not None}
    return LoadedModel(source="t.npz", format="logits", logits=logits, labels=labels)


def test_mixed_logits_and_model_modes():
    data, student = make_data(), mlp(1)
    stored = np.random.default_rng(0).normal(size=(N, C))
    out = collect_outputs(data, teacher=_logits_model(stored, labels={EVAL: data.labels}),
                          student=in_memory(student), set_name=EVAL, batch_size=13)
    np.testing.assert_array_equal(out.teacher.logits, stored)
    assert out.teacher.features is None and out.teacher.weight is None
    np.testing.assert_allclose(out.student.features, manual(student, data.x)[1], rtol=1e-6)


def test_all_logits_mode_needs_no_inputs():
    rng = np.random.default_rng(0)
    labels_only = Dataset(name="y.pt", x=None, labels=np.arange(6) % C)
    teacher, student = _logits_model(transfer_logits=rng.normal(size=(6, C))), _logits_model(
        transfer_logits=rng.normal(size=(6, C)))
    out = collect_outputs(labels_only, teacher=teacher, student=student, set_name=TRANSFER)
    np.testing.assert_array_equal(out.student.logits, student.logits[TRANSFER])
    with pytest.raises(KddiagError, match=r"data 'y\.pt' has labels only, but the student is a model and needs inputs"):
        collect_outputs(labels_only, teacher=teacher, student=in_memory(mlp(1)), set_name=TRANSFER)


@pytest.mark.parametrize("teacher, message", [
    (_logits_model(np.zeros((N - 1, C))), r"teacher logits 't\.npz': 49 rows of eval logits but data "
                                          r"'mem' has 50 examples"),
    (_logits_model(np.zeros(N)), r"teacher logits 't\.npz': eval logits must be \(n_samples, n_classes\).*got shape \(50,\)"),
    (_logits_model(np.where(np.arange(N)[:, None] < 3, np.nan, np.zeros((N, C)))),
     r"teacher logits \(eval set, 't\.npz'\): NaN or Inf in example 0 \(3 of the 50 examples from 0\)"),
    (_logits_model(transfer_logits=np.zeros((N, C))), r"teacher logits 't\.npz': no eval logits \(holds: transfer\)"),
    (_logits_model(np.zeros((N, C)), labels={EVAL: (np.arange(N) + 1) % C}),
     r"its eval labels disagree with data 'mem' on 50 of 50 rows"),
])
def test_logits_mode_errors(teacher, message):
    with pytest.raises(KddiagError, match=message):
        collect_outputs(make_data(), teacher=teacher, student=in_memory(mlp(1)), set_name=EVAL)


def test_stored_logits_alone_come_in_whole_statistics_chunks_read_in_place(monkeypatch):
    """Without a model to run, batches end where the streaming statistics' chunks end, whatever the batch
    size asked for, so each chunk is the stored array itself (no copy) and a shard's first batch ends at
    the next chunk boundary."""
    from kddiag import collect
    from kddiag.collect import model_batches

    monkeypatch.setattr(collect, "chunk_rows", lambda n_classes: 16)
    rng = np.random.default_rng(0)
    stored = rng.normal(size=(N, C)).astype(np.float32)
    labels_only = Dataset(name="y.pt", x=None, labels=np.arange(N) % C)
    teacher = _logits_model(stored, labels={EVAL: labels_only.labels})
    bounds = []
    for batch, _ in model_batches(labels_only, {"teacher": teacher}, set_name=EVAL, rows=range(5, N), batch_size=3):
        bounds.append((batch.start, batch.start + batch.labels.size))
        assert np.shares_memory(batch.logits["teacher"], stored)
    assert bounds == [(5, 16), (16, 32), (32, 48), (48, 50)]
