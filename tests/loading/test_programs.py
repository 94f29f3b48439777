"""torch.export programs and TorchScript archives, with their ``kddiag.json`` settings."""
import json
import warnings

import torch

from kddiag.loading import load_model


def test_torch_export_program_with_metadata(tmp_path, archs):
    reference = archs.mlp().eval()
    program = torch.export.export(reference, (torch.randn(2, 8),))
    path = tmp_path / "teacher.pt2"
    torch.export.save(program, str(path), extra_files={"kddiag.json": json.dumps({"temperature": 4, "alpha": 0.9})})
    loaded = load_model(path)
    assert loaded.format == "torch.export" and loaded.metadata == {"temperature": 4.0, "alpha": 0.9}
    x = torch.randn(2, 8)
    assert torch.allclose(loaded.module(x), reference(x))


def test_torchscript_archive_detected_by_content(tmp_path, archs):
    reference = archs.mlp().eval()
    path = tmp_path / "scripted.pt"  # .pt extension, but a TorchScript zip inside
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(reference), str(path), _extra_files={"kddiag.json": '{"alpha": 0.3}'})
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # loading must not warn
        loaded = load_model(path)
    assert loaded.format == "torchscript" and loaded.metadata == {"alpha": 0.3}
    x = torch.randn(3, 8)
    assert torch.allclose(loaded.module(x), reference(x))


def test_archive_settings_that_are_not_utf8_text_get_one_line(tmp_path, archs):
    import pytest

    from kddiag.errors import KddiagError

    path = tmp_path / "scripted.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(archs.mlp().eval()), str(path), _extra_files={"kddiag.json": b"\xff\xfe{}"})
    with pytest.raises(KddiagError, match=r"kddiag.json extra file is not UTF-8 text \(invalid start byte at byte 0\)"):
        load_model(path)


def test_archive_normalization_is_kept_and_noted(tmp_path, archs):
    program = torch.export.export(archs.mlp().eval(), (torch.randn(2, 8),))
    path = tmp_path / "teacher.pt2"
    torch.export.save(program, str(path), extra_files={"kddiag.json": json.dumps({"mean": [0.5], "std": [0.25]})})
    loaded = load_model(path)
    assert loaded.metadata == {"normalization": {"mean": (0.5,), "std": (0.25,)}}
    assert loaded.notes[-1] == "normalization: mean [0.5], std [0.25], stored in the file"
