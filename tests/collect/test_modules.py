"""nn.Module models: features from a hook on the final linear layer, against manual forward passes."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from kddiag.collect import collect_outputs
from kddiag.errors import KddiagError
from kddiag.types import EVAL

from ._helpers import C, D, N, make_data, in_memory, manual, mlp


def test_features_logits_and_weight_match_a_manual_forward_pass():
    data, teacher, student = make_data(), mlp(0, hidden=16), mlp(1, hidden=5)
    out = collect_outputs(data, teacher=in_memory(teacher), student=in_memory(student), set_name=EVAL, batch_size=7)
    for model, got in ((teacher, out.teacher), (student, out.student)):
        logits, features = manual(model, data.x)
        np.testing.assert_allclose(got.logits, logits, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(got.features, features, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(got.weight, model[2].weight.detach().double().numpy())
        assert got.logits.dtype == got.weight.dtype == np.float64 and got.features.dtype == np.float32
    assert out.student.features.shape == (N, 5) and out.baseline is None
    assert out.dataset == EVAL and out.labels.tolist() == data.labels.tolist()


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

    net, data = Net(), make_data()
    out = collect_outputs(data, teacher=in_memory(net), student=in_memory(mlp(1)), set_name=EVAL)
    with torch.no_grad():
        np.testing.assert_allclose(out.teacher.features, torch.relu(net.body(data.x)).double().numpy(), rtol=1e-6)
    np.testing.assert_array_equal(out.teacher.weight, net.head.weight.detach().double().numpy())


def test_feature_layer_option_takes_that_modules_input():
    model, data = mlp(0), make_data()
    out = collect_outputs(data, teacher=in_memory(model), student=in_memory(mlp(1)), set_name=EVAL, feature_layer="1")
    with torch.no_grad():
        np.testing.assert_allclose(out.teacher.features, model[0](data.x).double().numpy(), rtol=1e-6)  # pre-ReLU
    np.testing.assert_array_equal(out.teacher.weight, model[2].weight.detach().double().numpy())
    with pytest.raises(KddiagError, match=r"--feature-layer 'fc': the teacher has no module of that name "
                                          r"\(its last linear layers: 0, 2\)"):
        collect_outputs(data, teacher=in_memory(model), student=in_memory(mlp(1)), set_name=EVAL, feature_layer="fc")


def test_models_run_in_eval_mode_and_get_their_mode_back():
    model = nn.Sequential(nn.Linear(D, 16), nn.Dropout(0.9), nn.ReLU(), nn.Linear(16, C)).train()
    data = make_data()
    out = collect_outputs(data, teacher=in_memory(model), student=in_memory(mlp(1)), set_name=EVAL, batch_size=9)
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

    inner, data = mlp(0), make_data()
    out = collect_outputs(data, teacher=in_memory(HFStyle(inner)), student=in_memory(TupleStyle(inner)), set_name=EVAL)
    logits, features = manual(inner, data.x)
    np.testing.assert_allclose(out.teacher.logits, logits, rtol=1e-6)
    np.testing.assert_allclose(out.student.logits, logits, rtol=1e-6)
    np.testing.assert_allclose(out.student.features, features, rtol=1e-6)
