"""Statistics where the logits are: logits kept as tensors on the models' device go through the torch pass
(kddiag/metrics/fused.py) inside the streaming statistics. Checked here on CPU tensors against the numpy
pass; on an accelerator the same code runs on its tensors."""
import numpy as np
import pytest
import torch

from kddiag import accumulate
from kddiag.accumulate import SetAccumulator
from kddiag.collect import collect_summaries
from kddiag.errors import KddiagError
from kddiag.inputs import ClassInfo, Dataset, LoadedModel
from kddiag.measure import measure
from kddiag.outputs import Batch
from kddiag.types import EVAL

from test_accumulate import SETTINGS, assert_same, make_set

ROLES = ("teacher", "student", "baseline")
# CPU tensors take the accelerator's path everywhere; on a machine with a GPU the same checks run there
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]


def fed(data, bounds, *, tensors, stored=(), device="cpu"):
    """``data`` fed as the batches [bounds[k], bounds[k + 1]), each model's logits as a tensor on ``device``
    when ``tensors`` (roles in ``stored`` stay numpy, as stored logits do)."""
    acc = SetAccumulator(data.dataset, n_classes=data.n_classes, roles=ROLES, temperature=3.0, alpha=0.8,
                         n_total=data.labels.size)
    for start, stop in zip(bounds[:-1], bounds[1:]):
        logits = {role: getattr(data, role).logits[start:stop] for role in ROLES}
        if tensors:
            logits = {role: value if role in stored else torch.from_numpy(np.ascontiguousarray(value)).to(device)
                      for role, value in logits.items()}
        acc.update(Batch(start, data.labels[start:stop], logits,
                         {role: getattr(data, role).features[start:stop] for role in ROLES}))
    acc.weights = {role: getattr(data, role).weight for role in ROLES}
    return acc.summary()


def measured(summary):
    groups = (0, 0, 1, 1, 2, 2) if summary.n_classes == 6 else None
    return measure([summary], settings=SETTINGS, class_info=ClassInfo(groups=groups)).to_dict()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n_classes", [6, 150])  # the float64 and the float32 work dtype
def test_tensor_logits_give_the_numpy_measurements(monkeypatch, n_classes, device):
    monkeypatch.setattr(accumulate, "CHUNK_ROWS", 64)
    data = make_set(EVAL, 300, 4, n_classes=n_classes)
    on_host = measured(fed(data, [0, 100, 300], tensors=False))
    on_device = measured(fed(data, [0, 100, 300], tensors=True, device=device))
    assert_same(on_device, on_host, rtol=1e-4 if n_classes > 6 else 1e-9)


@pytest.mark.parametrize("device", DEVICES)
def test_the_torch_pass_gives_the_same_bits_whatever_the_batches(monkeypatch, device):
    monkeypatch.setattr(accumulate, "CHUNK_ROWS", 64)
    data = make_set(EVAL, 300, 5)
    one = measured(fed(data, [0, 300], tensors=True, device=device))
    assert_same(measured(fed(data, [0, 1, 8, 9, 100, 101, 300], tensors=True, device=device)), one, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_stored_logits_beside_tensors_join_them_on_their_device(device):
    data = make_set(EVAL, 200, 6)
    assert_same(measured(fed(data, [0, 200], tensors=True, stored=("baseline",), device=device)),
                measured(fed(data, [0, 200], tensors=False)), rtol=1e-9)


def test_a_tensor_with_nan_names_its_first_bad_example():
    logits = torch.zeros(5, 3)
    logits[3, 1] = float("nan")
    with pytest.raises(KddiagError, match=r"teacher logits: NaN or Inf in example 13 \(1 of the 5 examples from 10\)"):
        Batch(10, np.zeros(5, dtype=np.int64), {"teacher": logits})


@pytest.mark.parametrize("device", DEVICES)
def test_collection_can_keep_the_logits_on_the_models_device(device):
    """A module's logits kept as tensors (on the CPU here, as on an accelerator by default) give the
    measurements of the numpy pass."""
    torch.manual_seed(0)
    x = torch.randn(400, 8)
    labels = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()
    teacher, student = (LoadedModel("<module>", "module", torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(),
                                                                             torch.nn.Linear(16, 4)))
                        for _ in range(2))
    data = Dataset("d", x, labels.numpy())
    summaries = [collect_summaries(data, teacher=teacher, students=(student,), set_name=EVAL, settings=((3.0, 0.8),),
                                   batch_size=64, device=device, logits_on_device=on_device)[0].summary()
                 for on_device in (False, True)]
    settings_measured = [measure([s], settings=SETTINGS, class_info=ClassInfo()).to_dict() for s in summaries]
    assert_same(settings_measured[1], settings_measured[0], rtol=1e-4)


def test_an_inspection_through_the_device_path_gives_the_numpy_report(monkeypatch):
    """The whole pipeline on the demo pair with every model's logits left as tensors (CPU tensors taking
    the accelerator's path): the same findings, and every measured value within float32 rounding."""
    import kddiag
    from kddiag import collect
    from kddiag.cli import DEMO_BASELINE, DEMO_STUDENT, DEMO_TEACHER
    from kddiag.options import InspectOptions

    def run():
        return kddiag.inspect(str(DEMO_TEACHER), str(DEMO_STUDENT), baseline=str(DEMO_BASELINE), data="digits:test",
                              transfer_data="digits:train", options=InspectOptions(temperature=1, alpha=0.9))

    from kddiag.metrics import fused

    on_host = run()
    calls = []
    torch_pass = fused.fused_softmax_stats_torch
    monkeypatch.setattr(fused, "fused_softmax_stats_torch", lambda *a, **k: calls.append(1) or torch_pass(*a, **k))
    monkeypatch.setattr(collect, "LOGITS_ON_CPU_DEVICE", True)
    on_device = run()
    assert len(calls) >= 2  # both sets' statistics went through the torch pass
    assert [f.id for f in on_device.diagnosis.findings] == [f.id for f in on_host.diagnosis.findings]
    assert_same(on_device.measurements.to_dict(), on_host.measurements.to_dict(), rtol=1e-6)
