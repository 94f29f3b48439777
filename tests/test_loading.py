"""Loading checkpoints of every kind and logits files; every error names the file and what was expected."""
import json
import sys
import types
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from kddiag.errors import KddiagError, UnsafeLoadError
from kddiag.loading import load_class_info, load_model, logits_of
from kddiag.types import EVAL, TRANSFER, ClassInfo

ARCH = "kd_test_archs:mlp"


def _same_weights(module, reference):
    got, want = module.state_dict(), reference.state_dict()
    return set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)


def _prefixed(state, prefix):
    return {prefix + k: v for k, v in state.items()}


# --- state dicts ------------------------------------------------------------------------------

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
    assert _same_weights(loaded.module, reference)


def test_wrapper_with_teacher_and_student_picks_the_role(tmp_path, archs):
    teacher, student = archs.mlp(), archs.mlp()
    path = tmp_path / "kd.pt"
    torch.save({**_prefixed(teacher.state_dict(), "teacher."), **_prefixed(student.state_dict(), "student.")}, path)
    assert _same_weights(load_model(path, arch=ARCH, role="teacher").module, teacher)
    assert _same_weights(load_model(path, arch=ARCH, role="student").module, student)


def test_safetensors_with_header_metadata(tmp_path, archs):
    reference = archs.mlp()
    path = tmp_path / "model.safetensors"
    save_file(reference.state_dict(), str(path), metadata={"temperature": "2.5", "alpha": "0.7", "note": "x"})
    loaded = load_model(path, arch=ARCH)
    assert loaded.format == "state_dict"
    assert _same_weights(loaded.module, reference)
    assert loaded.metadata == {"temperature": 2.5, "alpha": 0.7}


@pytest.mark.parametrize("content, expected", [
    ({"temperature": 4, "alpha": 0.9}, {"temperature": 4.0, "alpha": 0.9}),
    ({"config": {"T": 2.0, "lr": 0.1}}, {"temperature": 2.0}),
    ({"kd": {"tau": 3}, "distillation": {"alpha": 0.25}}, {"temperature": 3.0, "alpha": 0.25}),
    ({"config": {"kd": {"alpha": 0.5}}}, {"alpha": 0.5}),
    ({"alpha": 0.1, "config": {"alpha": 0.9}}, {"alpha": 0.1}),  # top level wins
    ({"config": {"temperature": "hot"}}, {}),  # only numbers count
    ({}, {}),
])
def test_distillation_settings_from_checkpoint(tmp_path, archs, content, expected):
    path = tmp_path / "student.pt"
    torch.save({"model": archs.mlp().state_dict(), **content}, path)
    assert load_model(path, arch=ARCH, role="student").metadata == expected


def test_builtin_arch_names_through_kddiag_models(tmp_path, archs, monkeypatch):
    reference = archs.mlp()
    path = tmp_path / "t.pt"
    torch.save(reference.state_dict(), path)
    monkeypatch.setitem(sys.modules, "kddiag.models", types.SimpleNamespace(BUILTIN_ARCHS={"tiny": archs.mlp}))
    assert _same_weights(load_model(path, arch="tiny").module, reference)
    with pytest.raises(KddiagError, match=r"--teacher-arch 'huge': not a built-in architecture \(tiny\)"):
        load_model(path, arch="huge")
    monkeypatch.setitem(sys.modules, "kddiag.models", types.SimpleNamespace(
        builtin_arch=lambda name: archs.mlp if name == "mlp:8-16-3" else None))
    assert _same_weights(load_model(path, arch="mlp:8-16-3").module, reference)


def test_state_dict_without_arch_says_which_option(tmp_path, archs):
    path = tmp_path / "s.pt"
    torch.save(archs.mlp().state_dict(), path)
    with pytest.raises(KddiagError, match=r"student checkpoint '.*s\.pt': .*pass --student-arch "
                                          r"package\.module:callable or a built-in name"):
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


# --- archives with their architecture ---------------------------------------------------------

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


# --- pickled modules --------------------------------------------------------------------------

def test_pickled_module_refused_without_trust_and_loaded_with_it(tmp_path, archs):
    reference = archs.mlp()
    path = tmp_path / "whole.pt"
    torch.save(reference, path)
    with pytest.raises(UnsafeLoadError, match=r"student checkpoint '.*whole\.pt': the file needs unpickling "
                                              r"\(it contains torch\.nn\.modules\.container\.Sequential\), which "
                                              r"can run arbitrary code; pass --trust-pickle only for files you trust"):
        load_model(path, role="student")
    loaded = load_model(path, trust_pickle=True, role="student")
    assert loaded.format == "pickled-module" and _same_weights(loaded.module, reference)


def test_trusted_pickle_holding_a_module_under_a_key(tmp_path, archs):
    reference = archs.mlp()
    path = tmp_path / "ckpt.pt"
    torch.save({"model": reference, "args": SimpleNamespace(temperature=6.0)}, path)
    with pytest.raises(UnsafeLoadError):
        load_model(path)
    loaded = load_model(path, trust_pickle=True)
    assert loaded.format == "pickled-module" and loaded.metadata == {"temperature": 6.0}
    assert _same_weights(loaded.module, reference)


# --- logits files -----------------------------------------------------------------------------

def test_npy_logits_are_the_eval_set(tmp_path):
    logits = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    path = tmp_path / "t.npy"
    np.save(path, logits)
    loaded = load_model(path)
    assert loaded.format == "logits" and loaded.module is None and loaded.labels is None
    assert set(loaded.logits) == {EVAL}
    np.testing.assert_array_equal(loaded.logits[EVAL], logits)


def test_npz_logits_with_transfer_and_labels(tmp_path):
    rng = np.random.default_rng(0)
    content = {"logits": rng.normal(size=(4, 3)), "transfer_logits": rng.normal(size=(6, 3)),
               "y": np.array([0, 1, 2, 1]), "transfer_labels": np.arange(6) % 3}
    path = tmp_path / "t.npz"
    np.savez(path, **content)
    loaded = load_model(path)
    np.testing.assert_array_equal(loaded.logits[EVAL], content["logits"])
    np.testing.assert_array_equal(loaded.logits[TRANSFER], content["transfer_logits"])
    np.testing.assert_array_equal(loaded.labels[EVAL], content["y"])
    np.testing.assert_array_equal(loaded.labels[TRANSFER], content["transfer_labels"])


def test_pt_logits_tensor_and_dict(tmp_path):
    logits = torch.randn(5, 4)
    torch.save(logits, tmp_path / "a.pt")
    np.testing.assert_allclose(load_model(tmp_path / "a.pt").logits[EVAL], logits.double().numpy())
    torch.save({"eval": logits, "transfer": torch.randn(2, 4), "labels": torch.tensor([0, 1, 2, 3, 0])},
               tmp_path / "b.pt")
    loaded = load_model(tmp_path / "b.pt")
    assert loaded.format == "logits" and loaded.logits[TRANSFER].shape == (2, 4)
    assert loaded.labels[EVAL].tolist() == [0, 1, 2, 3, 0]


@pytest.mark.parametrize("name, content, message", [
    ("c.npz", {"x": np.zeros((3, 2)), "y": np.zeros(3, int)}, r"no logits \(keys: x, y\); expected 'logits' or 'eval'"),
    ("d.npz", {"logits": np.zeros((3, 2)), "labels": np.zeros(4, int)}, r"3 rows of eval logits but 4 labels"),
    ("e.npz", {"logits": np.zeros((3, 2)), "labels": np.zeros(3)}, r"labels 'labels' must be 1-D integers"),
])
def test_bad_logits_files(tmp_path, name, content, message):
    path = tmp_path / name
    if name.endswith(".npy"):
        np.save(path, content)
    elif name.endswith(".npz"):
        np.savez(path, **content)
    else:
        torch.save(content, path)
    with pytest.raises(KddiagError, match=message):
        load_model(path)


# --- file errors ------------------------------------------------------------------------------

def test_missing_empty_corrupt_and_unknown_files(tmp_path):
    with pytest.raises(KddiagError, match=r"baseline checkpoint '.*nope\.pt': no such file"):
        load_model(tmp_path / "nope.pt", role="baseline")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(KddiagError, match=r"'.*empty\.pt': the file is empty"):
        load_model(tmp_path / "empty.pt")
    (tmp_path / "bad.pt").write_bytes(b"this is not a checkpoint at all")
    with pytest.raises(KddiagError, match=r"'.*bad\.pt': not a readable PyTorch file"):
        load_model(tmp_path / "bad.pt")
    (tmp_path / "bad.pt2").write_bytes(b"garbage")
    with pytest.raises(KddiagError, match=r"not a readable torch.export program"):
        load_model(tmp_path / "bad.pt2")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(KddiagError, match=r"not a readable safetensors file"):
        load_model(tmp_path / "bad.safetensors")
    (tmp_path / "model.xyz").write_text("hello")
    with pytest.raises(KddiagError, match=r"'.*model\.xyz': unknown format \(extension '\.xyz'"):
        load_model(tmp_path / "model.xyz")


def test_format_detected_by_content_not_extension(tmp_path):
    logits = np.ones((2, 3))
    np.save(tmp_path / "x.npy", logits)
    (tmp_path / "x.npy").rename(tmp_path / "logits.bin")
    assert load_model(tmp_path / "logits.bin").format == "logits"


# --- logits_of --------------------------------------------------------------------------------

def test_logits_of_accepts_tensors_tuples_and_hugging_face_outputs():
    logits = torch.randn(2, 3)
    assert logits_of(logits) is logits
    assert logits_of((logits, torch.zeros(1))) is logits
    assert logits_of([(logits,)]) is logits
    assert logits_of(SimpleNamespace(logits=logits, hidden_states=None)) is logits
    assert logits_of({"logits": logits}) is logits
    with pytest.raises(KddiagError, match=r"output of type str holds no logits"):
        logits_of("oops")


# --- class info -------------------------------------------------------------------------------

def test_load_class_info(tmp_path):
    path = tmp_path / "classes.json"
    path.write_text(json.dumps({"names": ["cat", "dog", "car"], "groups": ["animal", "animal", "vehicle"]}))
    assert load_class_info(path) == ClassInfo(names=("cat", "dog", "car"), groups=(0, 0, 1))
    path.write_text(json.dumps({"groups": [2, 0, 2]}))
    assert load_class_info(path) == ClassInfo(names=None, groups=(2, 0, 2))
    path.write_text("{}")
    assert load_class_info(path) == ClassInfo()


@pytest.mark.parametrize("text, message", [
    ("[1, 2]", r"expected a JSON object"),
    ("{not json", r"not a readable JSON file"),
    ('{"names": ["a", 3]}', r"'names' must be a non-empty list of strings"),
    ('{"groups": [0, -1]}', r"all integers >= 0 or all strings"),
    ('{"groups": [0, "a"]}', r"all integers >= 0 or all strings"),
    ('{"names": ["a", "b"], "groups": [0]}', r"2 class names but 1 class groups"),
    ('{"name": ["a"]}', r"unknown keys 'name'; expected 'names' and/or 'groups'"),
])
def test_bad_class_info(tmp_path, text, message):
    path = tmp_path / "classes.json"
    path.write_text(text)
    with pytest.raises(KddiagError, match=r"--classes '.*classes\.json': .*" + message):
        load_class_info(path)
    with pytest.raises(KddiagError, match="no such file"):
        load_class_info(tmp_path / "missing.json")
