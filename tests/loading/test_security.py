"""Attacks on loading, built here (no binaries committed): each is refused before any of its code runs.

A malicious payload creates a marker file when unpickled or run; every refusal test asserts exit
code 1, one line on stderr naming the file and the member or operator, and no marker.
"""
import contextlib
import io
import json
import pathlib
import pickle
import warnings
import zipfile

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from kddiag.cli import DEMO_STUDENT, main
from kddiag.errors import UnsafeLoadError
from kddiag.loading import load_model
from kddiag.loading.vetting import check_operators

N_FEATURES, N_CLASSES = 64, 10  # the digits data the CLI runs on


class Marker:
    """Creates ``path`` when unpickled."""

    def __init__(self, path):
        self.path = pathlib.Path(path)

    def __reduce__(self):
        return pathlib.Path.touch, (self.path,)


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(N_FEATURES, 16), nn.ReLU(), nn.Linear(16, N_CLASSES)).eval()


def export(model, path, example=None):
    example = example if example is not None else torch.randn(2, N_FEATURES)
    torch.export.save(torch.export.export(model, (example,)), str(path))
    return path


def script(model, path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(model), str(path))
    return path


def rewrite(path, out, replace):
    """Copy the zip at ``path`` to ``out``; ``replace(relative_name, bytes)`` returns new bytes or None (keep)."""
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(out, "w") as target:
        for info in source.infolist():
            relative = info.filename.split("/", 1)[1]
            data = source.read(info)
            target.writestr(info.filename, replace(relative, data) or data)
        for relative, data in getattr(replace, "added", {}).items():
            target.writestr(f"{source.namelist()[0].split('/')[0]}/{relative}", data)
    return out


def saved(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def inspect(*args):
    return CliRunner().invoke(main, ["inspect", *map(str, args), "--data", "digits:test"])


def assert_refused(result, *fragments, marker=None):
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kddiag: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert marker is None or not marker.exists()


# --- torch.export archives: members torch would unpickle without weights_only ---------------------

def evil_sample_inputs(tmp_path, marker):
    return rewrite(export(mlp(), tmp_path / "clean.pt2"), tmp_path / "evil.pt2",
                   lambda name, data: saved((Marker(marker),)) if name == "data/sample_inputs/model.pt" else None)


def evil_use_pickle_weight(tmp_path, marker):
    def replace(name, data):
        if name == "data/weights/model_weights_config.json":
            config = json.loads(data)
            next(iter(config["config"].values()))["use_pickle"] = True
            return json.dumps(config).encode()
        if name == "data/weights/weight_0":
            return saved(Marker(marker))
    return rewrite(export(mlp(), tmp_path / "clean.pt2"), tmp_path / "evil.pt2", replace)


def evil_opaque_constant(tmp_path, marker):
    def replace(name, data):
        if name == "data/constants/model_constants_config.json":
            return json.dumps({"config": {"c": {"path_name": "opaque_obj_0", "is_param": False,
                                                "use_pickle": True, "tensor_meta": None}}}).encode()
    replace.added = {"data/constants/opaque_obj_0": pickle.dumps(Marker(marker))}
    return rewrite(export(mlp(), tmp_path / "clean.pt2"), tmp_path / "evil.pt2", replace)


def evil_use_pickle_constant(tmp_path, marker):
    class WithConstant(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = mlp()
            self.register_buffer("shift", torch.zeros(N_CLASSES), persistent=False)

        def forward(self, x):
            return self.body(x) + self.shift

    def replace(name, data):
        if name == "data/constants/model_constants_config.json":
            config = json.loads(data)
            entry = next(iter(config["config"].values()))
            entry["use_pickle"] = True
            return json.dumps(config).encode()
        if name.startswith("data/constants/tensor_"):
            return saved(Marker(marker))
    return rewrite(export(WithConstant().eval(), tmp_path / "clean.pt2"), tmp_path / "evil.pt2", replace)


ARCHIVE_ATTACKS = {
    "sample-inputs": (evil_sample_inputs, "data/sample_inputs/model.pt"),
    "use-pickle-weight": (evil_use_pickle_weight, "data/weights/weight_0"),
    "use-pickle-constant": (evil_use_pickle_constant, "data/constants/tensor_"),
    "opaque-constant": (evil_opaque_constant, "data/constants/opaque_obj_0"),
}


@pytest.mark.parametrize("suffix", [".pt2", ".pt"])  # a .pt2 renamed .pt is sniffed and vetted the same
@pytest.mark.parametrize("attack", sorted(ARCHIVE_ATTACKS))
def test_export_archive_members_that_need_unpickling_are_refused(tmp_path, attack, suffix):
    build, member = ARCHIVE_ATTACKS[attack]
    marker = tmp_path / "pwned"
    path = build(tmp_path, marker).rename(tmp_path / f"teacher{suffix}")
    assert_refused(inspect(path, DEMO_STUDENT), f"teacher checkpoint '{path}'", member, "needs unpickling",
                   "refused", marker=marker)


def test_attacks_do_run_code_without_kddiag(tmp_path):
    """The oracle: torch's own loader runs the payloads kddiag refuses."""
    marker = tmp_path / "pwned"
    with warnings.catch_warnings(), contextlib.suppress(Exception):  # torch's own log call may fail after
        warnings.simplefilter("ignore")
        torch.export.load(str(evil_sample_inputs(tmp_path, marker)))
    assert marker.exists()


def test_native_code_in_export_archive_is_refused(tmp_path):
    path = rewrite(export(mlp(), tmp_path / "clean.pt2"), tmp_path / "teacher.pt2", lambda name, data: None)
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("clean/data/aotinductor/model/model.so", b"\x7fELF")
    assert_refused(inspect(path, DEMO_STUDENT), "data/aotinductor/model/model.so", "native code")


def test_duplicate_member_is_refused(tmp_path):
    """Two members of one name: what kddiag vets and what torch reads could differ."""
    marker = tmp_path / "pwned"
    path = rewrite(export(mlp(), tmp_path / "clean.pt2"), tmp_path / "teacher.pt2", lambda name, data: None)
    with warnings.catch_warnings(), zipfile.ZipFile(path, "a") as archive:
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name
        archive.writestr("clean/data/sample_inputs/model.pt", saved((Marker(marker),)))
    assert_refused(inspect(path, DEMO_STUDENT), "a member twice", marker=marker)


@pytest.mark.parametrize("content", [bytes(range(256)) * 8, "truncated"])
def test_random_or_truncated_pt2_gives_one_line(tmp_path, content):
    path = tmp_path / "teacher.pt2"
    if content == "truncated":
        data = export(mlp(), tmp_path / "clean.pt2").read_bytes()
        content = data[: len(data) // 2]
    path.write_bytes(content)
    assert_refused(inspect(path, DEMO_STUDENT), f"teacher checkpoint '{path}'")


# --- programs: operators outside the allowlist ---------------------------------------------------

class FromFile(nn.Module):
    def __init__(self, target: str):
        super().__init__()
        self.target = target
        self.body = mlp()

    def forward(self, x):
        mapped = torch.from_file(self.target, shared=True, size=4)
        return self.body(x) + mapped.sum() * 0


class Saves(nn.Module):
    def __init__(self, target: str):
        super().__init__()
        self.target = target
        self.body = mlp()

    def forward(self, x):
        y = self.body(x)
        torch.save(y, self.target)
        return y


class Helper(nn.Module):  # the call hides one level down, in a submodule's method
    def __init__(self, target: str):
        super().__init__()
        self.target = target

    def forward(self, x):
        return x + torch.from_file(self.target, shared=True, size=4).sum() * 0


class Nested(nn.Module):
    def __init__(self, target: str):
        super().__init__()
        self.body, self.helper = mlp(), Helper(target)

    def forward(self, x):
        y = self.body(x)
        if y.sum() > 1e9:  # inside a block
            y = self.helper(y)
        return y


@pytest.mark.parametrize("program, operator", [(FromFile, "aten::from_file"), (Saves, "aten::save"),
                                               (Nested, "aten::from_file")])
def test_torchscript_calling_file_operators_is_refused(tmp_path, program, operator):
    marker = tmp_path / "pwned"
    path = script(program(str(marker)), tmp_path / "student.pt")
    assert_refused(inspect(DEMO_STUDENT, path), f"student checkpoint '{path}'", operator, "--trust-program",
                   marker=marker)


class SaveOnLoad(nn.Module):
    """Writes ``target`` from ``__setstate__``, which ``torch.jit.load`` runs."""

    def __init__(self, target: str):
        super().__init__()
        self.target = target
        self.body = mlp()

    def forward(self, x):
        return self.body(x)

    @torch.jit.export
    def __getstate__(self):
        return (self.target, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, bool]):
        self.target = state[0]
        self.training = state[1]
        torch.save(torch.zeros(1), self.target)


def test_torchscript_setstate_is_refused_before_loading(tmp_path):
    marker = tmp_path / "pwned"
    path = script(SaveOnLoad(str(marker)), tmp_path / "student.pt")
    assert_refused(inspect(DEMO_STUDENT, path), "__setstate__", marker=marker)


@torch.library.custom_op("kddiag_test::touch", mutates_args=())
def touch(x: torch.Tensor, target: str) -> torch.Tensor:
    """An operator from a namespace kddiag does not know, with a side effect (creates ``target``)."""
    pathlib.Path(target).touch()
    return x.clone()


@touch.register_fake
def _(x, target):
    return torch.empty_like(x)


class Touches(nn.Module):
    def __init__(self, target: str):
        super().__init__()
        self.target, self.body = target, mlp()

    def forward(self, x):
        return touch(self.body(x), self.target)


def test_export_program_calling_unknown_operator_is_refused_unless_trusted(tmp_path):
    marker = tmp_path / "touched"
    path = export(Touches(str(marker)), tmp_path / "teacher.pt2")
    assert_refused(inspect(path, DEMO_STUDENT), "kddiag_test::touch", "--trust-program", marker=marker)
    assert load_model(path, trust_program=True).module(torch.randn(2, N_FEATURES)).shape == (2, N_CLASSES)
    assert marker.exists()


def test_trust_program_runs_a_flagged_program(tmp_path):
    marker = tmp_path / "mapped"
    path = script(FromFile(str(marker)), tmp_path / "student.pt")
    result = CliRunner().invoke(main, ["inspect", str(DEMO_STUDENT), str(path), "--data", "digits:test",
                                       "--trust-program", "--json"])
    assert result.exit_code == 0, result.output
    assert marker.exists()  # the flag let it map its file


def test_check_operators_allowlist():
    check_operators(["aten::linear", "prim::If", "_operator.getitem", "prims::add"], "m", trust_program=False)
    for name in ["aten::from_file", "prim::PythonOp", "myns::op", "profiler::_record_function_enter",
                 "quantized::linear_prepack", "aten::_some_load_op", "save"]:
        with pytest.raises(UnsafeLoadError, match=name):
            check_operators([name], "m", trust_program=False)
    check_operators(["aten::from_file"], "m", trust_program=True)


# --- ordinary models still load and give the same logits ----------------------------------------

class Block(nn.Module):
    """A small transformer-ish block: attention by matmul, layer norm, GELU."""

    def __init__(self, dim=16):
        super().__init__()
        self.inp, self.qkv = nn.Linear(N_FEATURES, 4 * dim), nn.Linear(dim, 3 * dim)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 32), nn.GELU(), nn.Linear(32, dim))
        self.head, self.dim = nn.Linear(dim, N_CLASSES), dim

    def forward(self, x):
        h = self.inp(x).reshape(x.shape[0], 4, self.dim)
        q, k, v = self.qkv(self.norm1(h)).chunk(3, dim=-1)
        h = h + torch.softmax(q @ k.transpose(-2, -1) / self.dim ** 0.5, dim=-1) @ v
        h = h + self.ff(self.norm2(h))
        return self.head(h.mean(dim=1))


def cnn():
    return nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Dropout(0.1), nn.Linear(64, N_CLASSES),
                         nn.LayerNorm(N_CLASSES), nn.Softmax(dim=-1))


@pytest.mark.parametrize("kind", ["export", "script"])
@pytest.mark.parametrize("build", [mlp, cnn, Block], ids=["mlp", "cnn", "block"])
def test_benign_programs_load_by_default_with_the_same_logits(tmp_path, build, kind):
    torch.manual_seed(1)
    model = build().eval()
    path = (export if kind == "export" else script)(model, tmp_path / "model.pt2")
    x = torch.randn(2, N_FEATURES)
    with torch.inference_mode():
        assert torch.allclose(load_model(path).module(x), model(x), atol=1e-6)


def test_benign_program_through_the_cli(tmp_path):
    path = script(mlp(), tmp_path / "student.pt")
    result = CliRunner().invoke(main, ["inspect", str(DEMO_STUDENT), str(path), "--data", "digits:test", "--json"])
    assert result.exit_code == 0, result.output
