"""Collecting logits, penultimate features and logit-layer weights, against manual computations."""
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from kddiag.collect import collect_outputs
from kddiag.errors import KddiagError
from kddiag.loading import load_model
from kddiag.types import EVAL, TRANSFER, Dataset, LoadedModel

N, D, C = 50, 8, 3


def _mlp(seed: int, hidden: int = 16) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(D, hidden), nn.ReLU(), nn.Linear(hidden, C))


def _data(n: int = N, seed: int = 0) -> Dataset:
    generator = torch.Generator().manual_seed(seed)
    return Dataset(name="mem", x=torch.randn(n, D, generator=generator), labels=np.arange(n) % C)


def _module(module) -> LoadedModel:
    return LoadedModel(source="<in-memory>", format="module", module=module)


def _manual(model: nn.Sequential, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        features = model[:-1](x)
        return model(x).double().numpy(), features.double().numpy()


def test_features_logits_and_weight_match_a_manual_forward_pass():
    data, teacher, student = _data(), _mlp(0, hidden=16), _mlp(1, hidden=5)
    out = collect_outputs(data, teacher=_module(teacher), student=_module(student), set_name=EVAL, batch_size=7)
    for model, got in ((teacher, out.teacher), (student, out.student)):
        logits, features = _manual(model, data.x)
        np.testing.assert_allclose(got.logits, logits, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(got.features, features, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(got.weight, model[2].weight.detach().double().numpy())
        assert got.logits.dtype == got.weight.dtype == np.float64 and got.features.dtype == np.float32
    assert out.student.features.shape == (N, 5) and out.baseline is None
    assert out.dataset == EVAL and out.labels.tolist() == data.labels.tolist()


def test_batched_equals_one_shot_with_an_uneven_last_batch():
    data = _data()
    models = dict(teacher=_module(_mlp(0)), student=_module(_mlp(1)), baseline=_module(_mlp(2)))
    one_shot = collect_outputs(data, **models, set_name=EVAL, batch_size=N)
    batched = collect_outputs(data, **models, set_name=EVAL, batch_size=16)  # 16+16+16+2
    for role in ("teacher", "student", "baseline"):
        a, b = getattr(one_shot, role), getattr(batched, role)
        np.testing.assert_allclose(a.logits, b.logits, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(a.features, b.features, rtol=1e-6, atol=1e-6)


def test_final_layer_is_found_by_call_order_not_registration_order():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(16, C)  # registered first, called last
            self.body = nn.Linear(D, 16)
            self.side = nn.Linear(D, C)  # registered last, C outputs, but not the logit layer

        def forward(self, x):
            side = self.side(x)  # called first
            return self.head(torch.relu(self.body(x))) + 0.0 * side

    net, data = Net(), _data()
    out = collect_outputs(data, teacher=_module(net), student=_module(_mlp(1)), set_name=EVAL)
    with torch.no_grad():
        np.testing.assert_allclose(out.teacher.features, torch.relu(net.body(data.x)).double().numpy(), rtol=1e-6)
    np.testing.assert_array_equal(out.teacher.weight, net.head.weight.detach().double().numpy())


def test_feature_layer_option_takes_that_modules_input():
    model, data = _mlp(0), _data()
    out = collect_outputs(data, teacher=_module(model), student=_module(_mlp(1)), set_name=EVAL, feature_layer="1")
    with torch.no_grad():
        np.testing.assert_allclose(out.teacher.features, model[0](data.x).double().numpy(), rtol=1e-6)  # pre-ReLU
    np.testing.assert_array_equal(out.teacher.weight, model[2].weight.detach().double().numpy())
    with pytest.raises(KddiagError, match=r"--feature-layer 'fc': the teacher has no module of that name "
                                          r"\(its last linear layers: 0, 2\)"):
        collect_outputs(data, teacher=_module(model), student=_module(_mlp(1)), set_name=EVAL, feature_layer="fc")


def test_models_run_in_eval_mode_and_get_their_mode_back():
    model = nn.Sequential(nn.Linear(D, 16), nn.Dropout(0.9), nn.ReLU(), nn.Linear(16, C)).train()
    data = _data()
    out = collect_outputs(data, teacher=_module(model), student=_module(_mlp(1)), set_name=EVAL, batch_size=9)
    assert model.training
    with torch.no_grad():
        np.testing.assert_allclose(out.teacher.logits, model.eval()(data.x).double().numpy(), rtol=1e-6, atol=1e-6)


def test_tuple_and_hugging_face_style_outputs():
    class HFStyle(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return SimpleNamespace(logits=self.inner(x), hidden_states=None)

    class TupleStyle(HFStyle):
        def forward(self, x):
            return self.inner(x), torch.zeros(1)

    inner, data = _mlp(0), _data()
    out = collect_outputs(data, teacher=_module(HFStyle(inner)), student=_module(TupleStyle(inner)), set_name=EVAL)
    logits, features = _manual(inner, data.x)
    np.testing.assert_allclose(out.teacher.logits, logits, rtol=1e-6)
    np.testing.assert_allclose(out.student.logits, logits, rtol=1e-6)
    np.testing.assert_allclose(out.student.features, features, rtol=1e-6)


@pytest.mark.parametrize("dynamic", [False, True], ids=["fixed-batch", "dynamic-batch"])
def test_torch_export_program_features_by_graph_surgery(tmp_path, dynamic):
    model, data = _mlp(0).eval(), _data()
    shapes = ({0: torch.export.Dim("batch")},) if dynamic else None
    program = torch.export.export(model, (torch.randn(4, D),), dynamic_shapes=shapes)
    torch.export.save(program, str(tmp_path / "t.pt2"))
    teacher = load_model(tmp_path / "t.pt2")
    out = collect_outputs(data, teacher=teacher, student=_module(_mlp(1)), set_name=EVAL, batch_size=16)
    logits, features = _manual(model, data.x)  # fixed batch 4: 16-row batches cut in 4s, the last (2 rows) padded
    np.testing.assert_allclose(out.teacher.logits, logits, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out.teacher.features, features, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(out.teacher.weight, model[2].weight.detach().double().numpy())


def test_torchscript_gives_weight_but_no_features(tmp_path):
    model, data = _mlp(0).eval(), _data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(model), str(tmp_path / "s.pt"))
    out = collect_outputs(data, teacher=_module(_mlp(1)), student=load_model(tmp_path / "s.pt"), set_name=EVAL)
    np.testing.assert_allclose(out.student.logits, _manual(model, data.x)[0], rtol=1e-6, atol=1e-6)
    assert out.student.features is None
    np.testing.assert_array_equal(out.student.weight, model[2].weight.detach().double().numpy())


# --- logits mode ------------------------------------------------------------------------------

def _logits_model(eval_logits=None, transfer_logits=None, labels=None) -> LoadedModel:
    logits = {k: v for k, v in ((EVAL, eval_logits), (TRANSFER, transfer_logits)) if v is not None}
    return LoadedModel(source="t.npz", format="logits", logits=logits, labels=labels)


def test_mixed_logits_and_model_modes():
    data, student = _data(), _mlp(1)
    stored = np.random.default_rng(0).normal(size=(N, C))
    out = collect_outputs(data, teacher=_logits_model(stored, labels={EVAL: data.labels}),
                          student=_module(student), set_name=EVAL, batch_size=13)
    np.testing.assert_array_equal(out.teacher.logits, stored)
    assert out.teacher.features is None and out.teacher.weight is None
    np.testing.assert_allclose(out.student.features, _manual(student, data.x)[1], rtol=1e-6)


def test_all_logits_mode_needs_no_inputs():
    rng = np.random.default_rng(0)
    labels_only = Dataset(name="y.pt", x=None, labels=np.arange(6) % C)
    teacher, student = _logits_model(transfer_logits=rng.normal(size=(6, C))), _logits_model(
        transfer_logits=rng.normal(size=(6, C)))
    out = collect_outputs(labels_only, teacher=teacher, student=student, set_name=TRANSFER)
    np.testing.assert_array_equal(out.student.logits, student.logits[TRANSFER])
    with pytest.raises(KddiagError, match=r"data 'y\.pt' has labels only, but the student is a model and needs inputs"):
        collect_outputs(labels_only, teacher=teacher, student=_module(_mlp(1)), set_name=TRANSFER)


@pytest.mark.parametrize("teacher, message", [
    (_logits_model(np.zeros((N - 1, C))), r"teacher logits \(eval set, 't\.npz'\) have 49 rows but the eval set "
                                          r"\('mem'\) has 50 labels"),
    (_logits_model(np.zeros(N)), r"teacher logits \('t\.npz'\) must be \(n_samples, n_classes\).*got shape \(50,\)"),
    (_logits_model(np.where(np.arange(N)[:, None] < 3, np.nan, np.zeros((N, C)))),
     r"teacher logits \('t\.npz'\): NaN or Inf in 3 of 50 rows"),
    (_logits_model(transfer_logits=np.zeros((N, C))), r"teacher logits 't\.npz': no eval logits \(holds: transfer\)"),
    (_logits_model(np.zeros((N, C)), labels={EVAL: (np.arange(N) + 1) % C}),
     r"its eval labels disagree with data 'mem' on 50 of 50 rows"),
])
def test_logits_mode_errors(teacher, message):
    with pytest.raises(KddiagError, match=message):
        collect_outputs(_data(), teacher=teacher, student=_module(_mlp(1)), set_name=EVAL)


# --- errors -----------------------------------------------------------------------------------

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
    (_NaNRows(), r"student logits: NaN or Inf in 8 of 50 rows"),
])
def test_model_errors_name_the_model(student, message):
    with pytest.raises(KddiagError, match=message) as error:
        collect_outputs(_data(), teacher=_module(_mlp(0)), student=_module(student), set_name=EVAL, batch_size=16)
    assert "\n" not in str(error.value)


def test_label_and_set_name_errors():
    data = Dataset(name="mem", x=torch.randn(4, D), labels=np.array([0, 1, 2, 3]))
    models = dict(teacher=_module(_mlp(0)), student=_module(_mlp(1)))
    with pytest.raises(KddiagError, match=r"labels of the eval set \('mem'\) must lie in \[0, 3\) for 3-class models; "
                                          r"got values from 0 to 3"):
        collect_outputs(data, **models, set_name=EVAL)
    with pytest.raises(KddiagError, match=r"a data set must be 'eval' or 'transfer'; got 'test'"):
        collect_outputs(data, **models, set_name="test")


def test_progress_goes_to_stderr_only_when_asked(capsys):
    models = dict(teacher=_module(_mlp(0)), student=_module(_mlp(1)))
    collect_outputs(_data(), **models, set_name=EVAL, batch_size=20)
    assert capsys.readouterr() == ("", "")
    collect_outputs(_data(), **models, set_name=TRANSFER, batch_size=20, progress=True)
    captured = capsys.readouterr()
    assert captured.out == "" and "transfer set, batch 3/3" in captured.err


def test_torch_export_with_dict_output_and_feature_layer(tmp_path):
    class DictOut(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = _mlp(0)

        def forward(self, x):
            return {"logits": self.net(x), "aux": x.sum(1)}

    model, data = DictOut().eval(), _data()
    program = torch.export.export(model, (torch.randn(4, D),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(tmp_path / "t.pt2"))
    teacher = load_model(tmp_path / "t.pt2")
    out = collect_outputs(data, teacher=teacher, student=_module(model), set_name=EVAL, feature_layer="net.1")
    with torch.no_grad():
        for got in (out.teacher, out.student):
            np.testing.assert_allclose(got.logits, model(data.x)["logits"].double().numpy(), rtol=1e-6)
            np.testing.assert_allclose(got.features, model.net[0](data.x).double().numpy(), rtol=1e-6)  # pre-ReLU
    with pytest.raises(KddiagError, match=r"--feature-layer 'nope': no operation of that module in the exported program"):
        collect_outputs(data, teacher=teacher, student=load_model(tmp_path / "t.pt2"), set_name=EVAL,
                        feature_layer="nope")


def test_features_are_kept_for_a_fixed_row_subsample_on_large_sets(monkeypatch):
    import kddiag.collect as collect_module

    monkeypatch.setattr(collect_module, "FEATURE_MAX_ROWS", 13)
    data, teacher, student = _data(), _mlp(0, hidden=16), _mlp(1, hidden=5)
    out = collect_outputs(data, teacher=_module(teacher), student=_module(student), set_name=EVAL, batch_size=7)
    rows = out.teacher.feature_rows
    assert rows is not None and rows.size == 13 and np.all(np.diff(rows) > 0)
    np.testing.assert_array_equal(rows, out.student.feature_rows)
    _, features = _manual(teacher, data.x)
    np.testing.assert_allclose(out.teacher.features, features[rows], rtol=1e-6, atol=1e-6)
    assert out.teacher.logits.shape[0] == N  # logits stay complete
