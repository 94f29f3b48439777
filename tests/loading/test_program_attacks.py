"""Programs that carry code past the archive and operator checks, built here (no binaries committed).

torch's FX code generator pastes names from a ``.pt2`` into Python source (``getattr(self, "<name>")``)
and evaluates its shape expressions with ``sympy.sympify``; a name with a ``\\n`` runs code when the
module is called, one with a ``\\r`` (which the generator does not indent) when torch compiles the
generated code, inside ``torch.export.load`` for a subgraph name. TorchScript re-attaches a module's
compiled forward hooks. Each payload here creates a marker file if it runs; each refusal is checked
through the CLI: exit code 1, one line on stderr naming the file and what was refused, no marker.
"""
import contextlib
import io
import json
import logging
import warnings
import zipfile

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from kddiag.cli import DEMO_STUDENT, DEMO_TEACHER, main
from kddiag.loading import load_model, vetting
from tests.loading.test_security import N_CLASSES, N_FEATURES, assert_refused, cnn, export, mlp, script

FORMS = {"newline": "\n", "carriage-return": "\r"}


def touch_code(marker) -> str:
    """A Python expression without dots (a dotted name is split at them) that creates ``marker``."""
    codes = ", ".join(str(ord(char)) for char in str(marker))
    return f'getattr(getattr(__import__("pathlib"), "Path")(getattr("", "join")(map(chr, [{codes}]))), "touch")()'


def payload(base: str, form: str, marker) -> str:
    """A name that closes torch's ``getattr(self, "<name>")`` and runs code on the next line."""
    if form == "\r":  # at module level when the code is compiled; the rest of forward() goes into _g
        return f'{base}", 0)\r{touch_code(marker)}\rdef _g(self):\r    _ = ("'
    return f'{base}", 0)\n{touch_code(marker)}\n_ = ("'  # inside forward()


class Carrier(nn.Module):
    """An MLP with a parameter, a buffer, a lifted tensor constant and a ``torch.cond``: every name kind."""

    def __init__(self):
        super().__init__()
        self.body = mlp()
        self.register_buffer("shift", torch.zeros(N_CLASSES))
        self.scale = torch.ones(N_CLASSES)  # a plain tensor attribute: a constant of the program

    def forward(self, x):
        y = self.body(x) * self.scale + self.shift
        return torch.cond(y.sum() > 0, lambda y: y + 1, lambda y: y - 1, (y,))


@pytest.fixture(scope="module")
def carrier(tmp_path_factory):
    torch.manual_seed(0)
    return export(Carrier().eval(), tmp_path_factory.mktemp("carrier") / "carrier.pt2")


def renamed(source, out, old: str, new: str):
    """Copy the .pt2 at ``source`` with every JSON string and key equal to ``old`` (program, configs) set to ``new``."""
    def rename(value):
        if isinstance(value, dict):
            return {(new if key == old else key): rename(item) for key, item in value.items()}
        if isinstance(value, list):
            return [rename(item) for item in value]
        return new if value == old else value

    return edited(source, out, rename, configs=rename)


def edited(source, out, edit, *, configs=None):
    """Copy the .pt2 at ``source`` with its serialized program replaced by ``edit(program)``."""
    with zipfile.ZipFile(source) as archive, zipfile.ZipFile(out, "w") as target:
        for info in archive.infolist():
            data = archive.read(info)
            if info.filename.endswith("models/model.json"):
                data = json.dumps(edit(json.loads(data))).encode()
            elif configs is not None and info.filename.endswith("_config.json"):
                data = json.dumps(configs(json.loads(data))).encode()
            target.writestr(info.filename, data)
    return out


#: Each name kind: the name in the carrier program, and what the refusal calls it. The first four become
#: ``get_attr`` targets and run code under torch alone (the oracle test below); torch 2.13 happens to
#: sanitize or choke on the others, which are refused all the same.
NAME_KINDS = {
    "parameter": ("body.0.weight", "parameter name"),
    "buffer": ("shift", "buffer name"),
    "constant": ("scale", "constant name"),
    "subgraph": ("true_graph_0", "subgraph name"),
    "node": ("mul", "node name"),
    "module-path": ("body", "module path"),
    "input": ("x", "input name"),
    "output": ("getitem", "output name"),
}


def run(*args):
    return CliRunner().invoke(main, [*map(str, args), "--data", "digits:test"])


def as_role(role, path, tmp_path):
    """The command line that loads ``path`` in ``role``."""
    if role == "renamed-pt":
        return ["inspect", path.rename(tmp_path / "teacher.pt"), DEMO_STUDENT]
    if role == "student":
        return ["inspect", DEMO_TEACHER, path]
    if role == "compare-student":
        return ["compare", DEMO_TEACHER, DEMO_STUDENT, path]
    return ["inspect", path, DEMO_STUDENT]


@pytest.mark.parametrize("role", ["teacher", "student", "compare-student", "renamed-pt"])
@pytest.mark.parametrize("form", sorted(FORMS))
@pytest.mark.parametrize("kind", sorted(NAME_KINDS))
def test_names_that_are_not_plain_are_refused(carrier, tmp_path, kind, form, role):
    name, words = NAME_KINDS[kind]
    marker = tmp_path / "pwned"
    path = renamed(carrier, tmp_path / "model.pt2", name, payload(name, FORMS[form], marker))
    args = as_role(role, path, tmp_path)
    assert_refused(run(*args), f"'{args[1 if role in ('teacher', 'renamed-pt') else -1]}'", words,
                   "not a plain Python name", "refused", marker=marker)


@pytest.mark.parametrize("form", sorted(FORMS))
@pytest.mark.parametrize("kind", ["parameter", "buffer", "constant", "subgraph"])
def test_name_payloads_do_run_code_without_kddiag(carrier, tmp_path, kind, form):
    """The oracle: torch's own loader runs what kddiag refuses (``\\r`` in a subgraph name inside load)."""
    name, _ = NAME_KINDS[kind]
    marker = tmp_path / "pwned"
    path = renamed(carrier, tmp_path / "model.pt2", name, payload(name, FORMS[form], marker))
    loaded_marker = None
    with quiet_torch(), contextlib.suppress(Exception):
        program = torch.export.load(str(path))
        loaded_marker = marker.exists()
        program.module()(torch.randn(2, N_FEATURES))
    assert marker.exists()
    assert loaded_marker == (kind == "subgraph" and form == "carriage-return")


@contextlib.contextmanager
def quiet_torch():
    """torch logs and warns (with tracebacks) while it reads crafted files."""
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        logging.disable(logging.CRITICAL)
        try:
            yield
        finally:
            logging.disable(logging.NOTSET)


# --- strings torch evaluates or runs that are not names -------------------------------------------

def set_first_size(program, expression):
    tensor = next(iter(program["graph_module"]["graph"]["tensor_values"].values()))
    tensor["sizes"][0] = {"as_expr": {"expr_str": expression, "hint": {"as_int": 2}}}
    return program


def set_guards(program, guard):
    program["guards_code"] = [guard]
    return program


def set_structure(program, spec, field="in_spec"):
    program["graph_module"]["module_call_graph"][0]["signature"][field] = json.dumps(spec)
    return program


def leaf():
    return {"type": None, "context": None, "children_spec": []}


def kwargs_spec(key):
    """The (args, kwargs) input structure with one keyword argument named ``key``."""
    return [1, {"type": "builtins.tuple", "context": "null", "children_spec": [
        {"type": "builtins.tuple", "context": "null", "children_spec": []},
        {"type": "builtins.dict", "context": json.dumps([key]), "children_spec": [leaf()]}]}]


def dotted_touch(marker):
    return f"getattr(getattr(__import__('pathlib'), 'Path')('{marker}'), 'touch')()"


def code_in_shape(program, marker):
    return set_first_size(program, dotted_touch(marker))


def code_in_guard(program, marker):
    return set_guards(program, f"L['x'].size()[0] == 2 and {dotted_touch(marker)} is None")


def code_in_keyword(program, marker):  # keyword names are pasted as '<key>': <value>
    return set_structure(program, kwargs_spec(f"x': 0}}) or {dotted_touch(marker)} #"))


def import_in_defaultdict(program, marker):
    context = {"default_factory_module": "antigravity", "default_factory_name": "geohash", "dict_context": []}
    spec = [1, {"type": "collections.defaultdict", "context": json.dumps(context), "children_spec": []}]
    return set_structure(program, spec, "out_spec")


def import_in_enum_key(program, marker):
    context = [{"__enum__": True, "fqn": "antigravity:Key", "name": "a"}]
    return set_structure(program, [1, {"type": "builtins.dict", "context": json.dumps(context),
                                       "children_spec": [leaf()]}])


def code_in_string_input(program, marker):  # torch's guards paste a string input as '<text>'
    return program_with_string_input(program, f"a' or {dotted_touch(marker)} #")


EDITS = {  # what is edited in the program, and what the refusal calls it
    "shape-expression": (code_in_shape, "shape expression"),
    "guard": (code_in_guard, "guard"),
    "keyword-key": (code_in_keyword, "input/output key"),
    "defaultdict-factory": (import_in_defaultdict, "defaultdict factory"),
    "enum-key": (import_in_enum_key, "enum key"),
    "string-input": (code_in_string_input, "string input"),
}


def program_with_string_input(program, text):
    graph = program["graph_module"]["graph"]
    graph["inputs"].append({"as_string": text})
    program["graph_module"]["signature"]["input_specs"].append(
        {"constant_input": {"name": "mode", "value": {"as_string": text}}})
    return program


@pytest.mark.parametrize("suffix", [".pt2", ".pt"])
@pytest.mark.parametrize("attack", sorted(EDITS))
def test_code_in_expressions_guards_and_structures_is_refused(carrier, tmp_path, attack, suffix):
    edit, words = EDITS[attack]
    marker = tmp_path / "pwned"
    path = edited(carrier, tmp_path / f"teacher{suffix}", lambda program: edit(program, marker))
    assert_refused(run("inspect", path, DEMO_STUDENT), f"teacher checkpoint '{path}'", words, "refused",
                   marker=marker)


def test_shape_expression_runs_inside_torch_export_load(carrier, tmp_path):
    """The oracle: torch hands shape expressions to ``sympy.sympify``, which evaluates them as Python."""
    marker = tmp_path / "pwned"
    path = edited(carrier, tmp_path / "model.pt2", lambda program: set_first_size(program, dotted_touch(marker)))
    with quiet_torch(), contextlib.suppress(Exception):
        torch.export.load(str(path))
    assert marker.exists()


def test_legacy_format_pickle_beside_the_program_is_refused(carrier, tmp_path):
    """torch's legacy ``.pt2`` reader unpickles ``serialized_state_dict.json`` when weights-only fails."""
    import pickle

    from torch._export.serde.schema import SCHEMA_VERSION

    from tests.loading.test_security import Marker

    marker = tmp_path / "pwned"
    with zipfile.ZipFile(carrier) as archive:
        program = archive.read(next(name for name in archive.namelist() if name.endswith("models/model.json")))
        inputs = archive.read(next(name for name in archive.namelist() if name.endswith("sample_inputs/model.pt")))
    path = tmp_path / "teacher.pt2"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("version", ".".join(map(str, SCHEMA_VERSION)))
        archive.writestr("serialized_exported_program.json", program)
        archive.writestr("serialized_state_dict.json", pickle.dumps(Marker(marker)))
        archive.writestr("serialized_constants.pt", inputs)
        archive.writestr("serialized_example_inputs.pt", inputs)
    assert_refused(run("inspect", path, DEMO_STUDENT), "serialized_state_dict.json", "needs unpickling",
                   marker=marker)
    with quiet_torch(), contextlib.suppress(Exception):  # the oracle
        torch.export.load(str(path))
    assert marker.exists()


def test_program_problem_on_plain_and_crafted_expressions():
    plain = ["Symbol('s77', positive=True, integer=True)", "GreaterThan(Symbol('u0', integer=True), Integer(0))",
             "Add(FloorDiv(Symbol('s7', integer=True), Integer(2)), Integer(1))", "s0 + 2*s1", "Eq(s0, 2)",
             "Float('1.5', precision=53)", "Pow(Symbol('s0'), Integer(-1))", "OpaqueUnaryFn_sqrt(s0)", "-int_oo"]
    crafted = ["__import__('os')", "9**9**9", "9^9^9", "PowByNatural(Integer(9), Integer(387420489))",
               "lambdify(s0, s0)", "Symbol('x').n", "Symbol(\"a'b\")", "Symbol(s0)(1)", "[s0]", "eval(s0)",
               "s0 if s1 else s2"]
    for expression in plain:
        assert vetting.program_problem({"expr_str": expression}) is None, expression
    for expression in crafted:
        assert "shape expression" in vetting.program_problem({"expr_str": expression}), expression


# --- bounds: members are streamed, never inflated past what the file can hold ----------------------

def with_member(source, out, member, write):
    """Copy ``source`` with the member ending in ``member`` rewritten by ``write(target, info)``."""
    with zipfile.ZipFile(source) as archive, zipfile.ZipFile(out, "w") as target:
        for info in archive.infolist():
            if info.filename.endswith(member):
                write(target, info.filename)
            else:
                target.writestr(info, archive.read(info))
    return out


def test_decompression_bomb_is_refused_before_it_is_inflated(carrier, tmp_path):
    """A 256 MiB member deflated to ~250 KB: refused from its declared size, unread (kddiag used to read such
    a member whole: 4.4 GB peak for a 2 GiB one; torch reads it whole too)."""
    def bomb(target, name):
        info = zipfile.ZipInfo(name)
        info.compress_type = zipfile.ZIP_DEFLATED
        with target.open(info, "w") as member:
            for _ in range(16):
                member.write(bytes(16 << 20))

    path = with_member(carrier, tmp_path / "teacher.pt2", "data/sample_inputs/model.pt", bomb)
    assert path.stat().st_size < 1 << 20
    assert_refused(run("inspect", path, DEMO_STUDENT), "data/sample_inputs/model.pt", "268,435,456 bytes",
                   "decompression bomb")


def declare_size(path, member, size):
    """Rewrite the uncompressed size the central directory declares for the member ending in ``member``."""
    data = bytearray(path.read_bytes())
    end = data.rindex(b"PK\x05\x06")
    entry = int.from_bytes(data[end + 16: end + 20], "little")
    while data[entry: entry + 4] == b"PK\x01\x02":
        name_length, extra_length, comment_length = (int.from_bytes(data[entry + at: entry + at + 2], "little")
                                                     for at in (28, 30, 32))
        if data[entry + 46: entry + 46 + name_length].decode().endswith(member):
            data[entry + 24: entry + 28] = size.to_bytes(4, "little")
        entry += 46 + name_length + extra_length + comment_length
    path.write_bytes(bytes(data))
    return path


def test_member_that_unpacks_past_its_declared_size_is_refused(carrier, tmp_path):
    def understated(target, name):  # 1 MiB deflated, declared below as 1 KiB
        target.writestr(zipfile.ZipInfo(name), bytes(1 << 20), compress_type=zipfile.ZIP_DEFLATED)

    path = with_member(carrier, tmp_path / "teacher.pt2", "data/sample_inputs/model.pt", understated)
    declare_size(path, "data/sample_inputs/model.pt", 1024)
    assert_refused(run("inspect", path, DEMO_STUDENT), "data/sample_inputs/model.pt", "not a readable")


def test_stored_member_whose_sizes_disagree_is_refused(carrier, tmp_path):
    path = tmp_path / "teacher.pt2"
    path.write_bytes(carrier.read_bytes())
    declare_size(path, "models/model.json", (2 << 30) - 1)  # stored: what it declares is what it holds
    assert_refused(run("inspect", path, DEMO_STUDENT), "models/model.json", "declares 2147483647 bytes but stores")


@pytest.mark.parametrize("program", ["export", "script"])
@pytest.mark.parametrize("where", ["before", "after"])
def test_bytes_around_the_archive_are_refused(carrier, tmp_path, where, program):
    """Python's zipfile shifts offsets past leading bytes and reads a trailing comment; torch's reader does
    not: such a file could hold one archive that kddiag checks and another that torch loads."""
    data = (carrier if program == "export" else script(mlp(), tmp_path / "scripted.pt")).read_bytes()
    path = tmp_path / "teacher.pt2"
    path.write_bytes(b"\0" * 64 + data if where == "before" else data[:-2] + (4).to_bytes(2, "little") + b"note")
    assert_refused(run("inspect", path, DEMO_STUDENT), "two archives")


def test_oversized_program_text_is_refused_unread(carrier, tmp_path, monkeypatch):
    monkeypatch.setattr(vetting, "MAX_PROGRAM_TEXT_BYTES", 1000)
    assert_refused(run("inspect", carrier, DEMO_STUDENT), "models/model.json", "more than the 1,000")


# --- TorchScript: every piece of code torch attaches is vetted ------------------------------------

class Hooked(nn.Module):
    def __init__(self, target: str):
        super().__init__()
        self.target, self.body = target, mlp()

    def forward(self, x):
        return self.body(x)


def saving_hook(module: Hooked, inputs: tuple[torch.Tensor], output: torch.Tensor) -> torch.Tensor:
    torch.save(output, module.target)
    return output


def saving_pre_hook(module: Hooked, inputs: tuple[torch.Tensor]) -> tuple[torch.Tensor]:
    torch.save(inputs[0], module.target)
    return inputs


def mapping_hook(module: Hooked, inputs: tuple[torch.Tensor], output: torch.Tensor) -> torch.Tensor:
    return output + torch.from_file(module.target, shared=True, size=4).sum() * 0


def scaling_hook(module: Hooked, inputs: tuple[torch.Tensor], output: torch.Tensor) -> torch.Tensor:
    return output * 2


def _save_to(x: torch.Tensor, target: str) -> torch.Tensor:
    torch.save(x, target)
    return x


with warnings.catch_warnings():  # torch.jit is deprecated but still loads
    warnings.simplefilter("ignore")
    save_to = torch.jit.script(_save_to)


class Forks(nn.Module):
    """Calls a file operator in a forked function, whose subgraph inlining does not reach."""

    def __init__(self, target: str):
        super().__init__()
        self.target, self.body = target, mlp()

    def forward(self, x):
        return self.body(torch.jit.wait(torch.jit.fork(save_to, x, self.target)))


def hooked(marker, hook, *, pre=False):
    module = Hooked(str(marker))
    (module.register_forward_pre_hook if pre else module.register_forward_hook)(hook)
    return module


TORCHSCRIPT_ATTACKS = {
    "forward-hook": (lambda marker: hooked(marker, saving_hook), "aten::save"),
    "forward-pre-hook": (lambda marker: hooked(marker, saving_pre_hook, pre=True), "aten::save"),
    "from-file-hook": (lambda marker: hooked(marker, mapping_hook), "aten::from_file"),
    "fork": (lambda marker: Forks(str(marker)), "aten::save"),
}


@pytest.mark.parametrize("role", ["teacher", "student", "compare-student"])
@pytest.mark.parametrize("attack", sorted(TORCHSCRIPT_ATTACKS))
def test_torchscript_hooks_and_forks_are_vetted(tmp_path, attack, role):
    build, operator = TORCHSCRIPT_ATTACKS[attack]
    marker = tmp_path / "pwned"
    path = script(build(marker), tmp_path / "model.pt")
    args = as_role(role, path, tmp_path)
    assert_refused(run(*args), operator, "--trust-program", marker=marker)


def test_torchscript_top_level_hook_runs_without_kddiag(tmp_path):
    """The oracle: ``torch.jit.load`` re-attaches the hook and calling the module runs it."""
    marker = tmp_path / "pwned"
    path = script(hooked(marker, saving_hook), tmp_path / "model.pt")
    with quiet_torch():
        torch.jit.load(str(path))(torch.randn(2, N_FEATURES))
    assert marker.exists()


def test_torchscript_hook_that_computes_still_loads(tmp_path):
    model = hooked(tmp_path / "unused", scaling_hook).eval()
    path = script(model, tmp_path / "model.pt")
    x = torch.randn(2, N_FEATURES)
    with torch.inference_mode():
        assert torch.allclose(load_model(path).module(x), model(x))


# --- ordinary programs still load ---------------------------------------------------------------

class Branches(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = mlp()

    def forward(self, x):
        y = self.body(x)
        return torch.cond(y.mean() > 0, lambda y: y.relu(), lambda y: -y, (y,))


class Dynamic(nn.Module):
    """Dynamic batch, an integer division of it and a data-dependent size: shape expressions in the program."""

    def __init__(self):
        super().__init__()
        self.body = mlp()

    def forward(self, x):
        y = self.body(x)
        half = y[: x.shape[0] // 2 + 1].sum() * 0
        return y + half + torch.nonzero(x > 10).shape[0] * 0


@pytest.mark.parametrize("build", [mlp, cnn, Branches, Dynamic], ids=["mlp", "cnn", "cond", "dynamic"])
def test_ordinary_programs_load_with_the_same_logits(tmp_path, build):
    torch.manual_seed(1)
    model = build().eval()
    x = torch.randn(4, N_FEATURES)
    dynamic = {"x": {0: torch.export.Dim.AUTO}} if build is Dynamic else None
    with quiet_torch():
        program = torch.export.export(model, (x,), dynamic_shapes=dynamic)
    torch.export.save(program, str(tmp_path / "model.pt2"))
    if build is Dynamic:  # the checks on shape expressions and guards pass what torch writes
        with zipfile.ZipFile(tmp_path / "model.pt2") as archive:
            text = archive.read(next(name for name in archive.namelist() if name.endswith("models/model.json")))
        assert b"expr_str" in text and json.loads(text)["guards_code"]
    with torch.inference_mode():
        assert torch.allclose(load_model(tmp_path / "model.pt2").module(x), model(x), atol=1e-6)


def test_program_problem_on_plain_and_crafted_names():
    assert vetting.program_problem({"parameter_name": "layers.0.attn.weight", "fqn": "", "name": ""}) is None
    for name in ["a.for", "a-b", "a b", "x\ny", "x\ry", "1x", "a..b", 'a")']:
        assert "buffer name" in vetting.program_problem({"buffer_name": name}), name
    assert vetting.program_problem({"range_constraints": {"s77": {}, "u0": {}}}) is None
    # torch counts its unbacked symbols up to the largest index, one by one (u10**12: hours)
    assert "a hang" in vetting.program_problem({"range_constraints": {"u1000000000000": {}}})
