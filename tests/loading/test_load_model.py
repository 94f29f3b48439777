"""The format dispatch, pickled modules, file errors, ``logits_of`` and ``load_class_info``."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from kddiag.errors import KddiagError, UnsafeLoadError
from kddiag.loading import load_class_info, load_model, logits_of
from kddiag.inputs import ClassInfo

from ._helpers import same_weights


def test_pickled_module_refused_without_trust_and_loaded_with_it(tmp_path, archs):
    reference = archs.mlp()
    path = tmp_path / "whole.pt"
    torch.save(reference, path)
    with pytest.raises(UnsafeLoadError, match=r"student checkpoint '.*whole\.pt': the file needs unpickling "
                                              r"\(it contains torch\.nn\.modules\.container\.Sequential\), which "
                                              r"can run arbitrary code; pass --trust-pickle only for files you trust"):
        load_model(path, role="student")
    loaded = load_model(path, trust_pickle=True, role="student")
    assert loaded.format == "pickled-module" and same_weights(loaded.module, reference)


def test_trusted_pickle_holding_a_module_under_a_key(tmp_path, archs):
    reference = archs.mlp()
    path = tmp_path / "ckpt.pt"
    torch.save({"model": reference, "args": SimpleNamespace(temperature=6.0)}, path)
    with pytest.raises(UnsafeLoadError):
        load_model(path)
    loaded = load_model(path, trust_pickle=True)
    assert loaded.format == "pickled-module" and loaded.metadata == {"temperature": 6.0}
    assert same_weights(loaded.module, reference)


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


def test_logits_of_accepts_tensors_tuples_and_hugging_face_outputs():
    logits = torch.randn(2, 3)
    assert logits_of(logits) is logits
    assert logits_of((logits, torch.zeros(1))) is logits
    assert logits_of([(logits,)]) is logits
    assert logits_of(SimpleNamespace(logits=logits, hidden_states=None)) is logits
    assert logits_of({"logits": logits}) is logits
    with pytest.raises(KddiagError, match=r"output of type str holds no logits"):
        logits_of("oops")


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
