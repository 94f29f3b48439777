"""Distillation settings stored in checkpoints."""
import pytest
import torch

from kddiag.loading import load_model

from ._helpers import ARCH


@pytest.mark.parametrize("content, expected", [
    ({"temperature": 4, "alpha": 0.9}, {"temperature": 4.0, "alpha": 0.9}),
    ({"config": {"T": 2.0, "lr": 0.1}}, {"temperature": 2.0, "learning_rate": 0.1}),
    ({"kd": {"tau": 3}, "distillation": {"alpha": 0.25}}, {"temperature": 3.0, "alpha": 0.25}),
    ({"config": {"kd": {"alpha": 0.5}}}, {"alpha": 0.5}),
    ({"alpha": 0.1, "config": {"alpha": 0.9}}, {"alpha": 0.1}),  # top level wins
    ({"config": {"temperature": "hot"}}, {}),  # only numbers count
    ({"temperature": float("inf")}, {"temperature": float("inf")}),  # kept as found: Settings refuses it
    ({}, {}),
])
def test_distillation_settings_from_checkpoint(tmp_path, archs, content, expected):
    path = tmp_path / "student.pt"
    torch.save({"model": archs.mlp().state_dict(), **content}, path)
    assert load_model(path, arch=ARCH, role="student").metadata == expected
