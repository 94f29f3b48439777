"""TorchScript models: logits and logit-layer weight, no features."""
import warnings

import numpy as np
import torch

from kddiag.collect import collect_outputs
from kddiag.loading import load_model
from kddiag.types import EVAL

from ._helpers import make_data, in_memory, manual, mlp


def test_torchscript_gives_weight_but_no_features(tmp_path):
    model, data = mlp(0).eval(), make_data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(model), str(tmp_path / "s.pt"))
    out = collect_outputs(data, teacher=in_memory(mlp(1)), student=load_model(tmp_path / "s.pt"), set_name=EVAL)
    np.testing.assert_allclose(out.student.logits, manual(model, data.x)[0], rtol=1e-6, atol=1e-6)
    assert out.student.features is None
    np.testing.assert_array_equal(out.student.weight, model[2].weight.detach().double().numpy())
