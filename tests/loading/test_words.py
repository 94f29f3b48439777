"""What kddiag says about untrusted files: the object a malicious pickle names (whatever words the installed
torch uses), objects beside the weights skipped as docs/security.md says, where an architecture came from, and
never torch's advice to disable safety. Files are built here, never committed."""
from __future__ import annotations

import collections
import os
import pickle
import re
import subprocess

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from kddiag.cli import DEMO_STUDENT, DEMO_TEACHER, main
from kddiag.collect import _runner_for
from kddiag.readers.arrays import load_dataset
from kddiag.errors import KddiagError, UnsafeLoadError
from kddiag.loading import load_model
from kddiag.models import builtin_arch
from kddiag.inputs import LoadedModel, TokenInputs

ARCH = "mlp:8-16-3"


class System:
    """Runs ``touch MARKER`` through os.system when unpickled (pickled as posix.system on Linux)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class Eval:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return eval, (f"__import__('pathlib').Path({self.marker!r}).touch()",)


class Popen:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return subprocess.call, (["touch", self.marker],)


PAYLOADS = {System: os.system.__module__ + ".system", Eval: "builtins.eval", Popen: "subprocess.call"}
FORMATS = {"zip": {}, "protocol-4": {"pickle_protocol": 4}, "legacy": {"_use_new_zipfile_serialization": False}}
pytestmark = pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch's, on protocol 4-5 files


class Settings(dict):
    """A dict subclass, as some trainers save their hyper-parameters."""


class Layers(list):
    pass


def weights():
    torch.manual_seed(0)
    return builtin_arch(ARCH)().state_dict()


# --- malicious pickles: named, never called "corrupt" ----------------------------------------------

@pytest.mark.parametrize("file_format", sorted(FORMATS))
@pytest.mark.parametrize("payload", list(PAYLOADS), ids=lambda p: p.__name__)
def test_malicious_pickle_is_named_whatever_torch_says(tmp_path, payload, file_format):
    path, marker = tmp_path / "evil.pt", tmp_path / "ran"
    torch.save({"model": payload(marker)}, path, **FORMATS[file_format])
    with pytest.raises(pickle.UnpicklingError) as torch_says:  # the oracle: the installed torch refuses it
        torch.load(path, weights_only=True)
    assert "weights_only" in str(torch_says.value)  # ... in words kddiag must not repeat
    with pytest.raises(UnsafeLoadError) as error:
        load_model(path, arch=ARCH, role="student")
    message = str(error.value)
    assert f"needs unpickling (it contains {PAYLOADS[payload]})" in message, message
    assert "corrupt" not in message and "weights_only" not in message
    with pytest.raises(KddiagError, match=rf"--data '.*evil\.pt': .*it holds objects kddiag never unpickles: "
                                          rf"{PAYLOADS[payload]}") as data_error:
        load_dataset(str(path))
    assert "weights_only" not in str(data_error.value)
    assert not marker.exists()


def test_blocked_module_is_named_through_the_cli(tmp_path):
    path, marker = tmp_path / "evil.pt", tmp_path / "ran"
    torch.save(System(marker), path)
    with pytest.raises(pickle.UnpicklingError, match=r"GLOBAL \w+\.system whose module \w+ is blocked"):
        torch.load(path, weights_only=True)  # torch 2.13's words, which kddiag's old pattern missed
    result = CliRunner().invoke(main, ["inspect", str(DEMO_TEACHER), str(path), "--data", "digits:test"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "evil.pt" in lines[0] and f"it contains {PAYLOADS[System]}" in lines[0], lines
    assert not marker.exists()


# --- unknown objects beside the weights: skipped and named ------------------------------------------

@pytest.mark.parametrize("file_format", sorted(FORMATS))
def test_unknown_objects_beside_the_weights_are_skipped(tmp_path, file_format):
    path, marker = tmp_path / "student.pt", tmp_path / "ran"
    checkpoint = {"state_dict": weights(), "hyper_parameters": Settings(T=4.0), "layers": Layers([1, 2]),
                  "queue": collections.deque([1]), "callback": System(marker), "lr": 0.1}
    torch.save(checkpoint, path, **FORMATS[file_format])
    loaded = load_model(path, arch=ARCH, role="student")
    assert all(loaded.module.state_dict()[k].equal(v) for k, v in weights().items())
    assert loaded.metadata == {"learning_rate": 0.1}
    note = next(n for n in loaded.notes if n.startswith("not read: "))
    for fragment in (f"'hyper_parameters' ({__name__}.Settings)", f"'layers' ({__name__}.Layers)",
                     "'queue' (collections.deque)", f"'callback' ({PAYLOADS[System]})"):
        assert fragment in note, note
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [4, 5])
def test_state_dict_in_a_newer_pickle_protocol_is_read_not_called_corrupt(tmp_path, protocol):
    path = tmp_path / "student.pt"
    torch.save(weights(), path, pickle_protocol=protocol)
    with pytest.raises(pickle.UnpicklingError):  # torch's weights-only unpickler reads protocol 2 only
        torch.load(path, weights_only=True)
    loaded = load_model(path, arch=ARCH, role="student")
    assert all(loaded.module.state_dict()[k].equal(v) for k, v in weights().items()) and not loaded.notes


def test_weights_inside_an_unknown_container_are_refused(tmp_path):
    path = tmp_path / "student.pt"
    torch.save(Settings(state_dict=weights()), path)
    with pytest.raises(UnsafeLoadError, match=rf"needs unpickling \(it contains {__name__}\.Settings\)"):
        load_model(path, arch=ARCH, role="student")


def test_garbage_data_file_never_quotes_torchs_advice(tmp_path):
    path = tmp_path / "garbage.pt"
    path.write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8)))
    with pytest.raises(KddiagError) as error:
        load_dataset(str(path))
    assert "corrupt, truncated or not written by torch.save" in str(error.value)
    assert "weights_only" not in str(error.value) and "likely succeed" not in str(error.value)


# --- where an architecture came from ---------------------------------------------------------------

def test_architecture_read_from_the_checkpoint_is_named_as_such(tmp_path):
    path = tmp_path / "student.pt"
    torch.save({"arch": "mlp:8-32-3", "state_dict": weights()}, path)
    with pytest.raises(KddiagError, match=r"student checkpoint '.*student\.pt': does not fit the architecture stored "
                                          r"in its 'arch' entry \('mlp:8-32-3'\); shape mismatch") as error:
        load_model(path, role="student")
    assert "--student-arch" not in str(error.value)
    with pytest.raises(KddiagError, match=r"does not fit architecture 'mlp:8-32-3'; shape mismatch"):
        load_model(path, arch="mlp:8-32-3", role="student")  # the option wins over the stored name


@pytest.mark.parametrize("spec, message", [
    ("mlp:8-0-3", r"expected mlp:IN-H1-\.\.\.-OUT with integer widths, at least two, each ≥ 1; got '0'"),
    ("mlp:8", r"expected .*, at least two, each ≥ 1; got one"),
    ("mlp:100000-100000-10", r"10,001,100,010 parameters; a built-in MLP has at most 100,000,000"),
    ("mlp:" + "-".join(["8"] * 300), r"299 layers; a built-in MLP has at most 256"),
])
def test_bad_builtin_names_say_where_they_came_from(tmp_path, spec, message):
    shown = spec if len(spec) <= 200 else spec[:200] + f"… ({len(spec):,} characters)"
    path = tmp_path / "student.pt"
    torch.save({"arch": spec, "state_dict": weights()}, path)
    with pytest.raises(KddiagError, match=rf"^student checkpoint '.*student\.pt': its stored 'arch' "
                                          rf"'{re.escape(shown)}': {message}"):
        load_model(path, role="student")
    torch.save(weights(), path)
    with pytest.raises(KddiagError, match=rf"^--student-arch '{re.escape(shown)}': {message}"):
        load_model(path, arch=spec, role="student")


def test_bad_builtin_name_on_the_command_line_gives_one_line(tmp_path):
    result = CliRunner().invoke(main, ["inspect", str(DEMO_TEACHER), str(DEMO_STUDENT), "--student-arch", "mlp:8-0-3",
                                       "--data", "digits:test", "--out", str(tmp_path / "out")])
    assert result.exit_code in (1, 2) and "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--student-arch 'mlp:8-0-3'" in lines[0], lines


# --- tokenized text reaching a model that is not a Hugging Face one --------------------------------

def test_tokenized_text_for_a_plain_module_gives_one_clear_line():
    runner = _runner_for("student", LoadedModel(source="student.pt", format="state_dict",
                                                 module=builtin_arch(ARCH)()))
    ids = torch.randint(3, 60, (4, 8))
    with pytest.raises(KddiagError, match=r"^student 'student\.pt' is not a Hugging Face model, but the data is "
                                          r"tokenized text \(input_ids\)") as error:
        runner.start(TokenInputs(ids[:1], torch.ones_like(ids[:1])), device="cpu", feature_layer=None)
    assert "flatten" not in str(error.value)
