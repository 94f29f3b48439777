"""Red-team findings against program archives, rebuilt here (no binaries committed).

torch's zip reader (miniz) finds a member by name ignoring ASCII case and, of two names that differ
only in case, returns either; kddiag vetted members with Python's ``zipfile`` (exact names). An
upper-case copy of a payload config, of the serialized program or of the sample inputs got torch to
load bytes kddiag never checked (R01-R04). TorchScript's ``__setstate__`` runs inside ``torch.jit.load``,
before the operator check; renaming ``code/`` to ``CODE/`` or splitting ``def __setstate__`` with a line
continuation hid it from kddiag's search (R05). Each payload here creates a marker file if it runs;
each refusal is checked through the CLI: exit code 1, one line on stderr, no traceback, no marker.
"""
import io
import json
import pickle
import warnings
import zipfile
from typing import List

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from kddiag.cli import DEMO_STUDENT, DEMO_TEACHER, main
from kddiag.loading import load_model, programs, vetting
from tests.small_models import deadline
from tests.loading.test_security import (N_CLASSES, N_FEATURES, Marker, SaveOnLoad, assert_refused, export, mlp,
                                         saved, script)  # SaveOnLoad: R05a


class Net(nn.Module):
    """An MLP with an input named ``x`` and a lifted tensor constant ``k``: a weights and a constants config."""

    def __init__(self):
        super().__init__()
        self.body = mlp()
        self.k = torch.ones(N_CLASSES)

    def forward(self, x):
        return self.body(x) * self.k


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    torch.manual_seed(0)
    return export(Net().eval(), tmp_path_factory.mktemp("clean") / "clean.pt2")


def run(path, role="teacher"):
    pair = [path, DEMO_STUDENT] if role == "teacher" else [DEMO_TEACHER, path]
    return CliRunner().invoke(main, ["inspect", *map(str, pair), "--data", "digits:test"])


def pickled(marker) -> bytes:
    """A raw pickle (not a torch.save zip) that creates ``marker``, padded as torch maps records as float32."""
    data = pickle.dumps(Marker(marker), protocol=2)
    return data + b"\0" * (-len(data) % 4)


def with_variants(source, out, target: str, spellings, payload: bytes, extra=None) -> bytes:
    """Copy ``source`` adding, after member ``<root>/<target>``, copies of ``payload`` under case variants of it,
    one more each try, until torch's own reader returns ``payload`` for ``target`` (the attack is live);
    ``extra`` maps further relative names to bytes. Returns the bytes torch reads for ``target``."""
    with zipfile.ZipFile(source) as archive:
        members = [(info.filename, archive.read(info)) for info in archive.infolist()]
    root = members[0][0].split("/")[0]
    for count in range(1, len(spellings) + 1):
        with warnings.catch_warnings(), zipfile.ZipFile(out, "w") as target_zip:
            warnings.simplefilter("ignore")
            for name, data in members:
                target_zip.writestr(name, data)
                if name == f"{root}/{target}":
                    for spelling in spellings[:count]:
                        target_zip.writestr(f"{root}/{spelling}", payload)
                    for relative, data in (extra or {}).items():
                        target_zip.writestr(f"{root}/{relative}", data)
        got = torch._C.PyTorchFileReader(io.BytesIO(out.read_bytes())).get_record(target)
        if got == payload:
            break
    return got


def edited_config(source, member: str, edit) -> bytes:
    with zipfile.ZipFile(source) as archive:
        root = archive.namelist()[0].split("/")[0]
        config = json.loads(archive.read(f"{root}/{member}"))
    edit(config["config"])
    return json.dumps(config).encode()


# --- R01-R04: torch.export archives with case-variant members -----------------------------------------

def test_r01_case_variant_constants_config_with_an_opaque_pickle_is_refused(clean, tmp_path):
    marker = tmp_path / "pwned"
    member = "data/constants/model_constants_config.json"

    def opaque(config):
        for meta in config.values():
            meta["path_name"] = "opaque_obj_0"

    evil = edited_config(clean, member, opaque)
    path = tmp_path / "teacher.pt2"
    with_variants(clean, path, member, ["DATA/constants/model_constants_config.json", "Data/constants/"
                  "model_constants_config.json", "data/CONSTANTS/model_constants_config.json"], evil,
                  extra={"data/constants/opaque_obj_0": pickled(marker)})
    assert_refused(run(path), f"teacher checkpoint '{path}'", "a member twice", marker=marker)


def test_r02_case_variant_weights_config_with_use_pickle_is_refused(clean, tmp_path):
    marker = tmp_path / "pwned"
    member = "data/weights/model_weights_config.json"

    def use_pickle(config):
        meta = next(iter(config.values()))
        meta["use_pickle"], meta["path_name"] = True, "weight_9"

    evil = edited_config(clean, member, use_pickle)
    path = tmp_path / "teacher.pt2"
    got = with_variants(clean, path, member, ["DATA/weights/model_weights_config.json",
                                              "Data/weights/model_weights_config.json",
                                              "data/WEIGHTS/model_weights_config.json",
                                              "data/Weights/model_weights_config.json",
                                              "DATA/WEIGHTS/model_weights_config.json"], evil,
                        extra={"data/weights/weight_9": pickled(marker)})
    assert got == evil  # torch's reader would hand torch the unvetted config
    assert_refused(run(path), "a member twice", marker=marker)


def fx_injection(source, marker) -> bytes:
    with zipfile.ZipFile(source) as archive:
        text = archive.read(f"{archive.namelist()[0].split('/')[0]}/models/model.json").decode()
    code = f"x=__import__('pathlib').Path({str(marker)!r}).touch()"
    assert '"x"' in text
    return text.replace('"x"', json.dumps(code)).encode()


def test_r03_case_variant_program_with_code_in_an_input_name_is_refused(clean, tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "teacher.pt2"
    evil = fx_injection(clean, marker)
    got = with_variants(clean, path, "models/model.json", ["MODELS/model.json", "Models/model.json",
                                                           "mODELS/model.json", "MoDeLs/model.json",
                                                           "modelS/model.json", "MODELs/model.json"], evil)
    assert got == evil
    assert_refused(run(path), "a member twice", marker=marker)
    assert_refused(run(path, "student"), f"student checkpoint '{path}'", "a member twice", marker=marker)


def test_r03_upper_case_program_alone_is_still_vetted(clean, tmp_path):
    """The only serialized program, spelt ``MODELS/model.json``: torch reads it, so kddiag vets it."""
    marker = tmp_path / "pwned"
    evil = fx_injection(clean, marker)
    path = tmp_path / "teacher.pt2"
    with zipfile.ZipFile(clean) as source, zipfile.ZipFile(path, "w") as target:
        for info in source.infolist():
            name, data = info.filename, source.read(info)
            if name.endswith("/models/model.json"):
                name, data = name.replace("/models/", "/MODELS/"), evil
            target.writestr(name, data)
    assert torch._C.PyTorchFileReader(io.BytesIO(path.read_bytes())).get_record("models/model.json") == evil
    assert_refused(run(path), "MODELS/model.json", "input name", marker=marker)


def test_r04_case_variant_sample_inputs_is_refused(clean, tmp_path):
    marker = tmp_path / "pwned"
    evil = saved((Marker(marker),))
    path = tmp_path / "teacher.pt2"
    got = with_variants(clean, path, "data/sample_inputs/model.pt", [
        "data/sample_inputs/model.PT", "DATA/sample_inputs/model.PT", "data/SAMPLE_INPUTS/model.PT",
        "Data/sample_inputs/model.PT"], evil)
    assert got == evil
    assert_refused(run(path), "a member twice", marker=marker)


def test_r04_upper_case_extension_alone_is_still_vetted(clean, tmp_path):
    """Sample inputs stored only as ``model.PT``: its extension is compared case-folded, so it is unpickle-checked."""
    marker = tmp_path / "pwned"
    path = tmp_path / "teacher.pt2"
    with zipfile.ZipFile(clean) as source, zipfile.ZipFile(path, "w") as target:
        for info in source.infolist():
            name, data = info.filename, source.read(info)
            if name.endswith("data/sample_inputs/model.pt"):
                name, data = name[:-3] + ".PT", saved((Marker(marker),))
            target.writestr(name, data)
    assert_refused(run(path), "model.PT", "needs unpickling", marker=marker)


@pytest.mark.parametrize("spelling", ["./models/model.json", "models\\model.json", "models//model.json",
                                      "x/../models/model.json"])
def test_names_equal_after_normalizing_paths_are_refused(clean, tmp_path, spelling):
    with zipfile.ZipFile(clean) as archive:
        root = archive.namelist()[0].split("/")[0]
    infos = [zipfile.ZipInfo(f"{root}/models/model.json"), zipfile.ZipInfo(f"{root}/{spelling}")]
    with pytest.raises(vetting.UnsafeLoadError, match="a member twice"):
        vetting.relative_names(infos, "here")


# --- R05: TorchScript code that runs while loading ------------------------------------------------------

class WriteOnLoad(nn.Module):
    """Writes arbitrary bytes to ``target`` through ``aten::from_file(shared=True)`` and ``copy_`` (R05b)."""

    def __init__(self, target: str):
        super().__init__()
        self.target = target
        self.written = torch.zeros(4)

    def forward(self, x):
        return x[:, :10] + self.written.sum()

    @torch.jit.export
    def __getstate__(self):
        return (self.target, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, bool]):
        self.target = state[0]
        self.training = state[1]
        written = torch.from_file(self.target, True, 4, dtype=torch.uint8)
        written.copy_(torch.tensor([112, 119, 110, 10], dtype=torch.uint8))
        self.written = written.to(torch.float32)  # kept, so TorchScript does not drop the write


def recoded(source, out, rename=lambda name: name, edit=lambda data: data):
    """Copy the TorchScript archive at ``source`` with code members renamed and their source edited."""
    with zipfile.ZipFile(source) as archive, zipfile.ZipFile(out, "w") as target:
        for info in archive.infolist():
            data = archive.read(info)
            if "/code/" in info.filename and info.filename.endswith(".py"):
                data = edit(data)
            target.writestr(rename(info.filename), data)
    return out


def upper_code(name: str) -> str:
    return name.replace("/code/", "/CODE/")


def continued(data: bytes) -> bytes:
    assert b"def __setstate__" in data or b"__setstate__" not in data
    return data.replace(b"def __setstate__", b"def \\\n  __setstate__")


@pytest.mark.parametrize("module, rename, edit", [
    (SaveOnLoad, upper_code, lambda data: data),
    (SaveOnLoad, lambda name: name, continued),
    (SaveOnLoad, upper_code, continued),
    (WriteOnLoad, upper_code, lambda data: data),
], ids=["code-renamed-CODE", "line-continuation", "both", "from-file-write"])
def test_r05_setstate_hidden_from_a_search_is_refused(tmp_path, module, rename, edit):
    marker = tmp_path / "pwned"
    path = recoded(script(module(str(marker)), tmp_path / "clean.pt"), tmp_path / "teacher.pt", rename, edit)
    assert_refused(run(path), f"teacher checkpoint '{path}'", "__setstate__", "--trust-program", marker=marker)


def test_r05_setstate_refused_as_student(tmp_path):
    marker = tmp_path / "pwned"
    path = recoded(script(WriteOnLoad(str(marker)), tmp_path / "clean.pt"), tmp_path / "student.pt", upper_code,
                   continued)
    assert_refused(run(path, "student"), f"student checkpoint '{path}'", "__setstate__", marker=marker)


def test_r05_code_members_equal_but_for_case_are_refused(tmp_path):
    path = script(mlp(), tmp_path / "clean.pt")
    with zipfile.ZipFile(path) as archive:
        code = [info for info in archive.infolist() if "/code/" in info.filename and info.filename.endswith(".py")]
        copies = [(upper_code(info.filename), archive.read(info)) for info in code]
    with warnings.catch_warnings(), zipfile.ZipFile(path, "a") as archive:
        warnings.simplefilter("ignore")
        for name, data in copies:
            archive.writestr(name, data)
    assert_refused(run(path), "a member twice")


@pytest.mark.parametrize("source, found", [
    (b"def __setstate__(self, state):\n    pass\n", "defines"),
    (b"def \\\n  __setstate__(self, state):\n    pass\n", "defines"),
    (b"def\t__setstate__ (self, state):\n    pass\n", "defines"),
    (b"x = self.__setstate__\n", "names"),
    (b"def __setstate__(self, state:\n", "names"),  # not Python tokens: refused all the same
    (b"def forward(self, x):\n    return x\n", None),
])
def test_setstate_is_found_in_tokens(source, found):
    problem = programs._setstate_problem(source)
    assert (problem is None) if found is None else problem.startswith(found)


# --- what must still load ---------------------------------------------------------------------------------

def test_ordinary_programs_still_load(clean, tmp_path):
    x = torch.randn(2, N_FEATURES)
    torch.manual_seed(0)
    net = Net().eval()
    with torch.inference_mode():
        assert torch.allclose(load_model(clean).module(x), net(x), atol=1e-6)
        scripted = script(mlp(), tmp_path / "model.pt")
        assert torch.allclose(load_model(scripted).module(x), mlp()(x), atol=1e-6)


def test_a_weight_record_declaring_more_elements_than_it_stores_is_refused_before_allocation(clean, tmp_path):
    """Red team p14: an empty weight record whose config declares [200000, 100000]: torch would allocate
    80 GB of zeros inside torch.export.load. The declared count is checked against the stored bytes."""
    with zipfile.ZipFile(clean) as archive:
        root = archive.namelist()[0].split("/")[0]
        config = json.loads(archive.read(f"{root}/data/weights/model_weights_config.json"))
        first = next(iter(config["config"].values()))
        first["tensor_meta"]["sizes"] = [{"as_int": 200000}, {"as_int": 100000}]
        bomb = tmp_path / "bomb.pt2"
        with zipfile.ZipFile(bomb, "w", zipfile.ZIP_STORED) as out:
            for info in archive.infolist():
                data = archive.read(info.filename)
                if info.filename == f"{root}/data/weights/{first['path_name']}":
                    data = b""
                elif info.filename.endswith("data/weights/model_weights_config.json"):
                    data = json.dumps(config).encode()
                out.writestr(info.filename, data)
    assert_refused(run(bomb), "bomb.pt2", "declares 20,000,000,000 elements", "holds 0 bytes")
    assert load_model(clean).module is not None  # real records hold what they declare


# --- loops that never end: a hang, not code -------------------------------------------------------

class Spinning(nn.Module):
    """Computes like an MLP, after a ``while`` loop that never ends."""

    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(N_FEATURES, N_CLASSES)

    def forward(self, x):
        steps = 0
        while True:
            steps += 1
            if steps < 0:
                break
        return self.layer(x)


class Nested(nn.Module):
    """Two nested loops of 10,000 constant steps each (10⁸ in all), and one over the batch (not bounded)."""

    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(N_FEATURES, N_CLASSES)

    def forward(self, x):
        for i in range(10000):
            for j in range(10000):
                x = x + 0
        for k in range(x.shape[0]):
            x = x + 0
        return self.layer(x)


class Layered(nn.Module):
    """Loops a real model has: over a few layers, over the batch."""

    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(N_FEATURES, N_FEATURES) for _ in range(3)])
        self.head = nn.Linear(N_FEATURES, N_CLASSES)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        for k in range(4):
            for row in range(x.shape[0]):
                x = x + 0
        return self.head(x)


@pytest.mark.parametrize("model, said", [(Spinning, "a while loop"), (Nested, "loops of 100,000,000 steps")])
def test_torchscript_loops_that_could_hang_the_run_are_refused(tmp_path, model, said):
    path = script(model().eval(), tmp_path / "spin.pt")
    assert_refused(run(path), said, "--trust-program")
    assert load_model(path, trust_program=True).format == "torchscript"  # trusted: loaded (running is the user's call)


class _Looping(nn.Module):
    """A model whose loops are set by the subclass's forward (third red-team pass: each hung the run)."""

    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(N_FEATURES, N_CLASSES)
        self.steps = 4_000_000_000
        self.register_buffer("count", torch.tensor(3_000_000_000))


class ShapeTimesHuge(_Looping):
    def forward(self, x):
        for i in range(x.shape[0] * 100000000):
            x = x + 0
        return self.layer(x)


class FromValues(_Looping):
    def forward(self, x):
        for i in range(int(x.abs().sum().item() * 1e9)):
            x = x + 0
        return self.layer(x)


class FromBuffer(_Looping):
    def forward(self, x):
        for i in range(int(self.count.item())):
            x = x + 0
        return self.layer(x)


class FromAttribute(_Looping):
    def forward(self, x):
        for i in range(self.steps):
            x = x + 0
        return self.layer(x)


class ThreeSized(_Looping):
    def forward(self, x):
        s = 0
        for i in range(x.shape[0]):
            for j in range(x.shape[0]):
                for k in range(x.shape[1]):
                    s += 1
        return self.layer(x) + s


class ConstantBomb(_Looping):
    def forward(self, x):
        return self.layer(x) + torch.ones(2_000_000_000).sum()


class InputSizedBomb(_Looping):
    def forward(self, x):
        return self.layer(x) + x[:, :1].expand(x.shape[0], 100_000_000).contiguous().sum()


class RepeatBomb(_Looping):
    def forward(self, x):
        return self.layer(x.repeat(1, 100_000)[:, :x.shape[1]])


class ValueSizedBomb(_Looping):
    def forward(self, x):
        n = int(x.abs().sum().item() * 1e9)
        return self.layer(x) + torch.zeros(n).sum()


class ListBomb(_Looping):
    def forward(self, x):
        kept: List[torch.Tensor] = []
        for i in range(x.shape[0] * 1000):
            kept.append(x.clone())
        return self.layer(kept[-1])


class TextBomb(_Looping):
    def forward(self, x):
        s = "a"
        for i in range(x.shape[0] // 8):
            s = s + s
        return self.layer(x) + len(s)


class StepBomb(_Looping):
    def forward(self, x):
        return self.layer(x) + torch.arange(0.0, 1.0, 1e-10).sum()


class Masked(_Looping):
    """Tensors a real model creates: a (batch, features, features) mask, constants, a repeat by two."""

    def forward(self, x):
        mask = torch.ones(x.shape[0], x.shape[1], x.shape[1]).tril()
        y = x + mask.sum() * 0 + torch.arange(8).float().sum() * 0 + x.repeat(1, 2)[:, :x.shape[1]] * 0
        y = y + torch.full([4, 4], 1e9, dtype=torch.float64).sum() * 0 + torch.eye(64).sum() * 0  # a value, a dtype
        return self.layer(y)


class Recurrent(_Looping):
    """Loops a recurrent model has: over time (half the features here), a few steps each, over the rows."""

    def forward(self, x):
        h = torch.zeros_like(x)
        states: List[torch.Tensor] = []
        for t in range(x.size(1) // 2):
            for k in range(3):
                h = torch.tanh(h + x)
                states.append(h[:, t])
        for row in x:
            h = h + 0
        return self.layer(h + torch.stack(states, 1).sum() * 0)


@pytest.mark.parametrize("model, said", [(ShapeTimesHuge, "loops of 102,400,000,000 steps"),
                                         (FromValues, "whose length comes from aten::"),
                                         (FromBuffer, "whose length comes from aten::item"),
                                         (FromAttribute, "loops of 4,000,000,000 steps"),
                                         (ThreeSized, "a loop over an input dimension counted as 1,024"),
                                         (ConstantBomb, "(aten::ones) of up to 2,000,000,000 elements"),
                                         (InputSizedBomb, "(aten::expand) of up to 102,400,000,000 elements"),
                                         (RepeatBomb, "(aten::repeat) of up to"),
                                         (ValueSizedBomb, "(aten::zeros) whose size comes from aten::"),
                                         (StepBomb, "(aten::arange) of up to 10,000,000,000 elements"),
                                         (ListBomb, "a list grown at line"),
                                         (TextBomb, "text built at line")])
def test_loops_and_tensors_whose_size_the_inputs_or_stored_values_set_are_refused(tmp_path, model, said):
    path = script(model().eval(), tmp_path / "loop.pt")
    with deadline(60):
        assert_refused(run(path), said, "--trust-program")


@pytest.mark.parametrize("model", [Recurrent, Masked])
def test_a_real_models_loops_and_tensors_pass(tmp_path, model):
    loaded = load_model(script(model().eval(), tmp_path / "model.pt"))
    assert loaded.module(torch.zeros(2, N_FEATURES)).shape == (2, N_CLASSES)


def test_a_models_own_loops_pass(tmp_path):
    loaded = load_model(script(Layered().eval(), tmp_path / "layered.pt"))
    assert vetting._most_loop_steps(loaded.module.forward.inlined_graph) == 4


def test_an_exported_while_loop_is_refused():
    with pytest.raises(Exception, match="higher_order::while_loop .a loop kddiag cannot bound"):
        vetting.check_operators(["aten::add.Tensor", "higher_order::while_loop"], "t.pt2", trust_program=False)
