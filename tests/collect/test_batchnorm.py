"""The teacher's first BatchNorm layer against the inputs it is given, on a real trained model."""
import warnings

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from kddiag.collect.batchnorm import first_batchnorm_fit
from kddiag.inputs import LoadedModel


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


def test_inputs_against_the_normalization_the_teacher_stores(trained):
    """Real digits against the (mean, std) the teacher was trained with: normalized, per-channel mean ≈ 0 and
    variance ≈ 1; left raw, the variance is std⁻²-fold off the normalized one and matches the raw statistics;
    with three stored channels the images' channel axis is read."""
    from kddiag.collect.batchnorm import stored_normalization_fit

    model, raw, mean, std = trained
    teacher = LoadedModel("t.pt", "state_dict", model, metadata={"normalization": {"mean": (mean,), "std": (std,)}})
    right = stored_normalization_fit(teacher, (raw - mean) / std)
    assert right.variance_ratio == pytest.approx(1.0, abs=0.02) and right.mean_shift < 0.01
    assert right.raw_variance_ratio == pytest.approx(std**-2, rel=0.02)
    left_out = stored_normalization_fit(teacher, raw)
    assert left_out.variance_ratio == pytest.approx(std**2, rel=0.02)
    assert left_out.raw_variance_ratio == pytest.approx(1.0, abs=0.02) and left_out.raw_mean_shift < 0.01
    assert left_out.to_dict()["mean"] == [mean] and left_out.n_examples == len(raw)
    rgb = torch.stack([raw.reshape(-1, 8, 8) * s + m for m, s in ((0, 1), (5, 2), (10, 3))], dim=1)
    stored = {"mean": (mean, 5 + 2 * mean, 10 + 3 * mean), "std": (std, 2 * std, 3 * std)}
    colour = stored_normalization_fit(LoadedModel("t.pt", "state_dict", model, metadata={"normalization": stored}), rgb)
    assert colour.raw_variance_ratio == pytest.approx(1.0, abs=0.02) and colour.raw_mean_shift < 0.01
    assert stored_normalization_fit(LoadedModel("t.pt", "state_dict", model), raw) is None  # nothing stored
    assert stored_normalization_fit(LoadedModel("t.pt", "state_dict", model, metadata={"normalization": stored}),
                                    raw) is None  # 3 channels stored, flat inputs: nothing to compare
    assert stored_normalization_fit(teacher, torch.zeros(5, 64, dtype=torch.long)) is None  # token ids


def test_inspect_catches_inputs_left_raw_where_the_teacher_stores_its_normalization(tmp_path):
    """End to end, teacher alone and without BatchNorm: a Lightning-style checkpoint whose hyper-parameters
    keep the (mean, std) it was trained with; the raw digits (values 0-16) are called data-pipeline-suspect
    first, naming --normalize; the same digits normalized are not."""
    import kddiag
    from kddiag.options import InspectOptions

    x, y = load_digits(return_X_y=True)
    mean, std = float(x.mean()), float(x.std())
    from kddiag.models import MLP

    torch.manual_seed(0)
    model = MLP((64, 32, 10))
    inputs, labels = torch.tensor((x - mean) / std, dtype=torch.float32), torch.tensor(y)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(150):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(inputs), labels).backward()
        optimizer.step()
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": {"mean": [mean], "std": [std]}},
               tmp_path / "t.ckpt")
    options = InspectOptions(teacher_arch="mlp:64-32-10", temperature=4.0, alpha=0.9)
    raw = {"x": torch.tensor(x, dtype=torch.float32), "y": torch.tensor(y)}
    torch.save(raw, tmp_path / "raw.pt")
    torch.save({**raw, "x": inputs}, tmp_path / "normalized.pt")
    report = kddiag.inspect(str(tmp_path / "t.ckpt"), data=str(tmp_path / "raw.pt"), options=options)
    first = report.diagnosis.findings[0]
    assert first.id == "data-pipeline-suspect" and first.evidence[0].metric == "inputs.teacher_normalization.variance_ratio"
    assert f"--normalize {mean:g},{std:g}" in first.advice
    fine = kddiag.inspect(str(tmp_path / "t.ckpt"), data=str(tmp_path / "normalized.pt"), options=options)
    assert "data-pipeline-suspect" not in [f.id for f in fine.diagnosis.findings]
