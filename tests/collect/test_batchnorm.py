"""The teacher's first BatchNorm layer against the inputs it is given, on a real trained model."""
import warnings

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from kddiag.collect.batchnorm import first_batchnorm_fit
from kddiag.types import LoadedModel


@pytest.fixture(scope="module")
def trained():
    """A BatchNorm MLP trained on normalized digits (values 0-16 → (x − mean)/std)."""
    x, y = load_digits(return_X_y=True)
    mean, std = x.mean(), x.std()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 32), nn.BatchNorm1d(32),
                          nn.ReLU(), nn.Linear(32, 10))
    inputs, labels = torch.tensor((x - mean) / std, dtype=torch.float32), torch.tensor(y)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(150):
        rows = torch.randint(0, len(y), (128,))
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(inputs[rows]), labels[rows]).backward()
        optimizer.step()
    return model.eval(), torch.tensor(x, dtype=torch.float32), mean, std


def test_the_right_inputs_match_and_wrong_scales_show_as_the_square_of_the_scale_error(trained):
    model, raw, mean, std = trained
    loaded = LoadedModel("<in-memory>", "module", module=model)
    right = first_batchnorm_fit(loaded, (raw - mean) / std)
    assert right.layer == "1" and right.n_examples == 1797
    assert 0.7 < right.variance_ratio < 1.4 and right.mean_shift < 0.2
    unnormalized = first_batchnorm_fit(loaded, raw / 16)  # scaled to [0, 1], not normalized
    assert unnormalized.variance_ratio == pytest.approx((std / 16) ** 2, rel=0.35)
    doubled = first_batchnorm_fit(loaded, ((raw - mean) / std - mean) / std)
    assert doubled.variance_ratio == pytest.approx(1 / std ** 2, rel=0.35)
    assert not model.training  # modes put back
    model.train()
    first_batchnorm_fit(loaded, raw)
    assert model.training and all(m.training for m in model.modules())
    model.eval()


def test_no_batchnorm_layer_untrained_statistics_programs_and_token_ids_give_none(trained):
    model, raw, _, _ = trained
    plain = LoadedModel("<in-memory>", "module", module=nn.Sequential(nn.Linear(64, 10)))
    fresh = LoadedModel("<in-memory>", "module", module=nn.Sequential(nn.Linear(64, 8), nn.BatchNorm1d(8)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script is deprecated
        scripted = LoadedModel("x.pt", "torchscript", module=torch.jit.script(model))
    for loaded, x in ((plain, raw), (fresh, raw), (scripted, raw),
                      (LoadedModel("<in-memory>", "module", module=model), torch.zeros(3, 64, dtype=torch.long)),
                      (LoadedModel("z.npz", "logits", logits={}), raw)):
        assert first_batchnorm_fit(loaded, x) is None


def test_the_sample_is_fixed_and_bounded(trained, monkeypatch):
    from kddiag.collect import batchnorm

    model, raw, mean, std = trained
    loaded = LoadedModel("<in-memory>", "module", module=model)
    monkeypatch.setattr(batchnorm, "MAX_EXAMPLES", 500)
    first = first_batchnorm_fit(loaded, (raw - mean) / std, batch_size=64)
    again = first_batchnorm_fit(loaded, (raw - mean) / std, batch_size=300)
    assert first.n_examples == 500 and first.variance_ratio == pytest.approx(again.variance_ratio, rel=1e-9)
    assert np.isfinite(first.mean_shift)
