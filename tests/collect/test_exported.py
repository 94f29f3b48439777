"""torch.export programs: features by graph surgery, fixed and dynamic batch sizes."""
import numpy as np
import pytest
import torch
from torch import nn

from kddiag.collect import collect_outputs
from kddiag.errors import KddiagError
from kddiag.loading import load_model
from kddiag.types import EVAL

from ._helpers import D, make_data, in_memory, manual, mlp


@pytest.mark.parametrize("dynamic", [False, True], ids=["fixed-batch", "dynamic-batch"])
def test_torch_export_program_features_by_graph_surgery(tmp_path, dynamic):
    model, data = mlp(0).eval(), make_data()
    shapes = ({0: torch.export.Dim("batch")},) if dynamic else None
    program = torch.export.export(model, (torch.randn(4, D),), dynamic_shapes=shapes)
    torch.export.save(program, str(tmp_path / "t.pt2"))
    teacher = load_model(tmp_path / "t.pt2")
    out = collect_outputs(data, teacher=teacher, student=in_memory(mlp(1)), set_name=EVAL, batch_size=16)
    logits, features = manual(model, data.x)  # fixed batch 4: 16-row batches cut in 4s, the last (2 rows) padded
    np.testing.assert_allclose(out.teacher.logits, logits, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out.teacher.features, features, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(out.teacher.weight, model[2].weight.detach().double().numpy())


def test_torch_export_with_dict_output_and_feature_layer(tmp_path):
    class DictOut(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = mlp(0)

        def forward(self, x):
            return {"logits": self.net(x), "aux": x.sum(1)}

    model, data = DictOut().eval(), make_data()
    program = torch.export.export(model, (torch.randn(4, D),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(tmp_path / "t.pt2"))
    teacher = load_model(tmp_path / "t.pt2")
    out = collect_outputs(data, teacher=teacher, student=in_memory(model), set_name=EVAL, feature_layer="net.1")
    with torch.no_grad():
        for got in (out.teacher, out.student):
            np.testing.assert_allclose(got.logits, model(data.x)["logits"].double().numpy(), rtol=1e-6)
            np.testing.assert_allclose(got.features, model.net[0](data.x).double().numpy(), rtol=1e-6)  # pre-ReLU
    with pytest.raises(KddiagError, match=r"--feature-layer 'nope': no operation of that module in the exported"):
        collect_outputs(data, teacher=teacher, student=load_model(tmp_path / "t.pt2"), set_name=EVAL,
                        feature_layer="nope")
