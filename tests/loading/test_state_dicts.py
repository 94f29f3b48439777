"""State dicts in the layouts training frameworks save, loaded into ``--*-arch`` architectures."""
import sys
import types

import pytest
import torch
from safetensors.torch import save_file

from kddiag.errors import KddiagError
from kddiag.loading import load_model

from ._helpers import ARCH, same_weights


def _prefixed(state, prefix):
    return {prefix + k: v for k, v in state.items()}


@pytest.mark.parametrize("layout", [
    lambda sd: sd,
    lambda sd: {"model": sd},
    lambda sd: {"state_dict": sd, "epoch": 7, "global_step": 100},
    lambda sd: {"model_state_dict": sd, "optimizer_state_dict": {"state": {}, "param_groups": [{"lr": 0.1}]}},
    lambda sd: {"student": sd, "config": {"lr": 0.1, "name": "run"}},
    lambda sd: _prefixed(sd, "module."),
    lambda sd: {"state_dict": _prefixed(sd, "model.")},
    lambda sd: {"model": _prefixed(sd, "module.student.")},
], ids=["plain", "model", "state_dict", "model_state_dict", "student", "module.", "model.", "module.student."])
def test_state_dict_layouts_load_the_saved_weights(tmp_path, archs, layout):
    reference = archs.mlp()
    path = tmp_path / "student.pt"
    torch.save(layout(reference.state_dict()), path)
    loaded = load_model(path, arch=ARCH, role="student")
    assert loaded.format == "state_dict" and loaded.source == str(path)
    assert same_weights(loaded.module, reference)


def test_wrapper_with_teacher_and_student_picks_the_role(tmp_path, archs):
    teacher, student = archs.mlp(), archs.mlp()
    path = tmp_path / "kd.pt"
    torch.save({**_prefixed(teacher.state_dict(), "teacher."), **_prefixed(student.state_dict(), "student.")}, path)
    assert same_weights(load_model(path, arch=ARCH, role="teacher").module, teacher)
    assert same_weights(load_model(path, arch=ARCH, role="student").module, student)


def test_safetensors_with_header_metadata(tmp_path, archs):
    reference = archs.mlp()
    path = tmp_path / "model.safetensors"
    save_file(reference.state_dict(), str(path), metadata={"temperature": "2.5", "alpha": "0.7", "note": "x"})
    loaded = load_model(path, arch=ARCH)
    assert loaded.format == "state_dict"
    assert same_weights(loaded.module, reference)
    assert loaded.metadata == {"temperature": 2.5, "alpha": 0.7}


def test_builtin_arch_names_through_kddiag_models(tmp_path, archs, monkeypatch):
    reference = archs.mlp()
    path = tmp_path / "t.pt"
    torch.save(reference.state_dict(), path)
    monkeypatch.setitem(sys.modules, "kddiag.models", types.SimpleNamespace(BUILTIN_ARCHS={"tiny": archs.mlp}))
    assert same_weights(load_model(path, arch="tiny").module, reference)
    with pytest.raises(KddiagError, match=r"--teacher-arch 'huge': not a built-in architecture \(tiny\)"):
        load_model(path, arch="huge")
    monkeypatch.setitem(sys.modules, "kddiag.models", types.SimpleNamespace(
        builtin_arch=lambda name: archs.mlp if name == "mlp:8-16-3" else None))
    assert same_weights(load_model(path, arch="mlp:8-16-3").module, reference)


def test_state_dict_without_arch_says_which_option(tmp_path, archs):
    path = tmp_path / "s.pt"
    torch.save(archs.mlp().state_dict(), path)
    with pytest.raises(KddiagError, match=r"student checkpoint '.*s\.pt': .*pass --student-arch "
                                          r"package\.module:Class, .*path/to/models\.py:Class or a built-in name"):
        load_model(path, role="student")


def test_state_dict_that_does_not_fit_lists_keys_and_shapes(tmp_path, archs):
    path = tmp_path / "t.pt"
    torch.save(archs.wide().state_dict(), path)
    with pytest.raises(KddiagError, match=r"does not fit architecture 'kd_test_archs:mlp'; shape mismatch: "
                                          r"0\.weight \(32, 8\) in file vs \(16, 8\) in model"):
        load_model(path, arch=ARCH)
    state = archs.mlp().state_dict()
    state.pop("2.bias")
    state["extra.weight"] = torch.zeros(2)
    torch.save(state, path)
    with pytest.raises(KddiagError, match=r"missing keys: 2\.bias; unexpected keys: extra\.weight") as error:
        load_model(path, arch=ARCH)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("arch, message", [
    ("no_such_module_xyz:mlp", r"--teacher-arch 'no_such_module_xyz:mlp': cannot import module 'no_such_module_xyz'"),
    ("kd_test_archs:nope", r"module 'kd_test_archs' has no attribute 'nope'"),
    ("kd_test_archs:not_callable", r"'kd_test_archs:not_callable' is a int, not callable"),
    ("kd_test_archs:returns_list", r"returned a list, not a torch\.nn\.Module"),
    ("justaname", r"not a built-in architecture .* package\.module:callable"),
])
def test_bad_arch_strings(tmp_path, archs, arch, message):
    path = tmp_path / "t.pt"
    torch.save(archs.mlp().state_dict(), path)
    with pytest.raises(KddiagError, match=message):
        load_model(path, arch=arch)
