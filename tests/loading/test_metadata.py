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


@pytest.mark.parametrize("content, expected", [
    ({"state_dict": {}, "datamodule_hyper_parameters": {"mean": (0.1307,), "std": (0.3081,), "batch_size": 64}},
     ((0.1307,), (0.3081,))),  # a Lightning checkpoint whose data module saved its hyper-parameters
    ({"pretrained_cfg": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}},
     ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))),  # timm's model config
    ({"image_mean": [0.5, 0.5, 0.5], "image_std": 0.5, "do_normalize": True}, ((0.5, 0.5, 0.5), (0.5,))),
    ({"image_mean": [0.5] * 3, "image_std": [0.5] * 3, "do_normalize": False}, None),  # processor skips it
    ({"args": {"mean": None, "std": None}}, None),  # timm's train.py without --mean/--std
    ({"mean": [0.5, 0.5], "std": [0.1, 0.2, 0.3]}, None),  # one value per channel on neither side
    ({"mean": [0.5], "std": [0.0]}, None),  # std must be positive
    ({"mean": [float("nan")], "std": [1.0]}, None),
    ({"mean": list(range(5)), "std": [1.0] * 5}, None),  # not a per-channel normalization
    ({"mean": "0.5", "std": "0.2"}, None),
])
def test_stored_normalization(content, expected):
    from kddiag.loading.metadata import normalization_in

    found = normalization_in(content)
    assert (found if found is None else (found["mean"], found["std"])) == expected


def test_normalization_from_the_checkpoint_and_from_its_folder(tmp_path, archs):
    """A checkpoint's own normalization wins and is noted; else an image processor's or timm's config.json
    beside the weights; a folder's unreadable JSON is passed over, not an error."""
    import json

    from kddiag.loading.metadata import normalization_beside

    model = archs.mlp()
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": {"mean": [0.2], "std": [0.4]}},
               tmp_path / "stored.pt")
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5] * 3, "image_std": [0.25] * 3}))
    loaded = load_model(tmp_path / "stored.pt", arch=ARCH, role="teacher")
    assert loaded.metadata["normalization"] == {"mean": (0.2,), "std": (0.4,)}
    assert any(note.startswith("normalization: mean [0.2], std [0.4], stored in the file") for note in loaded.notes)
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    beside = load_model(tmp_path / "plain.pt", arch=ARCH, role="teacher")
    assert beside.metadata["normalization"] == {"mean": (0.5,) * 3, "std": (0.25,) * 3}
    assert "preprocessor_config.json" in beside.notes[-1]
    (tmp_path / "preprocessor_config.json").write_text("{not json")
    (tmp_path / "config.json").write_text(json.dumps({"architecture": "resnet18", "pretrained_cfg": {
        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}}))
    assert normalization_beside(tmp_path / "plain.pt")[0]["std"] == (0.229, 0.224, 0.225)
    (tmp_path / "config.json").unlink()
    assert normalization_beside(tmp_path / "plain.pt") is None
    assert "normalization" not in load_model(tmp_path / "plain.pt", arch=ARCH, role="teacher").metadata


def test_numbers_too_big_for_a_float_are_read_as_infinite_not_a_crash(tmp_path, archs):
    """Integers of 401 digits (beyond float) in a checkpoint's settings or normalization, or 5,001 digits
    (beyond Python's int parsing) in a kddiag.json: kept as inf for the settings check to refuse, ignored
    as a normalization, or one line; never an OverflowError or TypeError traceback."""
    from kddiag.errors import KddiagError
    from kddiag.loading.metadata import checkpoint_settings, metadata_file

    huge = 10**400
    assert checkpoint_settings({"temperature": huge})[0] == {"temperature": float("inf")}
    assert checkpoint_settings({"opt": {"kd_T": 4, "alpha": huge, "gamma": 1}})[0] == {"temperature": 4.0}
    assert checkpoint_settings({"mean": [huge], "std": [1]})[0] == {}
    assert checkpoint_settings({"mean": [0.5], "std": [1e-308]})[0] == {}  # not an input normalization
    with pytest.raises(KddiagError, match=r"kddiag.json extra file is not valid JSON \(Exceeds the limit"):
        metadata_file('{"temperature": ' + "9" * 5001 + "}", "'t.pt2'")
    torch.save({"model": archs.mlp().state_dict(), "temperature": huge}, tmp_path / "s.pt")
    assert load_model(tmp_path / "s.pt", arch=ARCH, role="student").metadata == {"temperature": float("inf")}
