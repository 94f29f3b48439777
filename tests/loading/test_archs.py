"""``--*-arch`` specs: built-in names, ``module:callable``, literal arguments, ``path/to/models.py`` modules."""
import importlib
import re
import sys
import textwrap

import pytest
import torch

from kddiag.errors import KddiagError
from kddiag.loading import load_model
from kddiag.loading.archs import ArchSpec, parse_arch

from ._helpers import same_weights

MODELS_PY = textwrap.dedent('''
    from torch import nn

    from helpers import hidden_width  # a sibling module: the file's directory is importable


    class MNISTNet(nn.Module):
        """Like ccexam's: the input size is a required constructor argument."""

        def __init__(self, input_size, hidden=hidden_width(), n_classes=3):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(input_size, hidden), nn.ReLU())
            self.head = nn.Linear(hidden, n_classes)

        def forward(self, x):
            return self.head(self.body(x))


    class Zoo:
        @staticmethod
        def small(input_size):
            return MNISTNet(input_size, hidden=4)
''')


@pytest.fixture
def models_py(tmp_path):
    """``tmp_path/models.py``: ``MNISTNet(input_size, hidden=16, n_classes=3)``, importing a sibling module."""
    (tmp_path / "helpers.py").write_text("def hidden_width():\n    return 16\n")
    path = tmp_path / "models.py"
    path.write_text(MODELS_PY)
    return path


@pytest.mark.parametrize("spec, expected", [
    ("pkg.models:Net", ArchSpec("pkg.models", "Net")),
    ("pkg.models:Net()", ArchSpec("pkg.models", "Net")),
    ("pkg.models:Net(28)", ArchSpec("pkg.models", "Net", (28,))),
    ("pkg.models:Net(28, hidden=64)", ArchSpec("pkg.models", "Net", (28,), {"hidden": 64})),
    ("pkg.models: Net( 28 , hidden = 64 )", ArchSpec("pkg.models", "Net", (28,), {"hidden": 64})),
    ("pkg.models:Zoo.build(widths=(8, 16), act='relu', bias=None, flags=[True, False], extra={'a': -1.5e-3})",
     ArchSpec("pkg.models", "Zoo.build", (), {"widths": (8, 16), "act": "relu", "bias": None,
                                               "flags": [True, False], "extra": {"a": -1.5e-3}})),
    ("pkg.models:Net('a:b(c)')", ArchSpec("pkg.models", "Net", ("a:b(c)",))),
    ("path/to/models.py:Net(28)", ArchSpec("path/to/models.py", "Net", (28,))),
    ("models.py:Net", ArchSpec("models.py", "Net")),
])
def test_parse_good_specs(spec, expected):
    assert parse_arch(spec, "--teacher-arch") == expected


def test_file_or_module():
    assert parse_arch("path/to/models.py:Net(28)", "--teacher-arch").is_file
    assert parse_arch("models.py:Net", "--teacher-arch").is_file
    assert not parse_arch("pkg.models:Net", "--teacher-arch").is_file


def test_built_in_names_are_not_parsed():
    assert parse_arch("mlp:64-32-10", "--student-arch") is None


@pytest.mark.parametrize("spec, message", [
    ("m:Net(foo())", r"argument 1 must be a literal \(numbers, strings, .*\); got a call, 'foo\(\)'"),
    ("m:Net(28, x)", r"argument 2 must be a literal .*; got a name, 'x'"),
    ("m:Net(hidden=os.sep)", r"argument hidden= must be a literal .*; got an attribute, 'os\.sep'"),
    ("m:Net(hidden=__import__('os').system('true'))", r"argument hidden= must be a literal .*; got a call"),
    ("m:Net(lambda: 1)", r"got a lambda"),
    ("m:Net(1 + x)", r"got an expression, '1 \+ x'"),
    ("m:Net(*sizes)", r"\*arguments are not allowed"),
    ("m:Net(**options)", r"\*\*arguments are not allowed"),
    ("m:Net(28", r"not valid Python call syntax"),
    ("m:Net(28) + 1", r"expected Name or Name\(arguments\) after the ':'"),
    ("m:Net(1)(2)", r"expected Name or Name\(arguments\)"),
    ("m:Net[0]", r"expected Name or Name\(arguments\)"),
    ("m:", r"not a built-in architecture .* and not of the form package\.module:callable"),
    (":Net", r"not of the form"),
    ("Net(28)", r"not of the form"),
    ("mlp:64-x-10", r"expected mlp:IN-H1-\.\.\.-OUT with integer widths"),
])
def test_bad_specs_give_one_line_naming_the_option(spec, message):
    with pytest.raises(KddiagError, match=rf"^--teacher-arch '{re.escape(spec)}': .*{message}") as error:
        parse_arch(spec, "--teacher-arch")
    assert "\n" not in str(error.value)


def test_arguments_are_never_evaluated(tmp_path, archs):
    marker = tmp_path / "pwned"
    path = tmp_path / "t.pt"
    torch.save(archs.mlp().state_dict(), path)
    with pytest.raises(KddiagError, match=r"^--teacher-arch .*: argument 1 must be a literal .*; got a call"):
        load_model(path, arch=f"kd_test_archs:Sized(open({str(marker)!r}, 'w'))")
    assert not marker.exists()


def test_module_class_with_arguments(tmp_path, archs):
    reference = archs.Sized(5, n_classes=4)
    path = tmp_path / "t.pt"
    torch.save({"model": reference.state_dict()}, path)
    assert same_weights(load_model(path, arch="kd_test_archs:Sized(5, n_classes=4)").module, reference)
    with pytest.raises(KddiagError, match=r"does not fit architecture 'kd_test_archs:Sized\(6, n_classes=4\)'; "
                                          r"shape mismatch"):
        load_model(path, arch="kd_test_archs:Sized(6, n_classes=4)")


def _imported_the_ordinary_way(directory):
    """The oracle: ``models`` imported from ``directory`` with a plain import, then forgotten."""
    sys.path.insert(0, str(directory))
    try:
        return importlib.import_module("models")
    finally:
        sys.path.remove(str(directory))
        for name in ("models", "helpers"):
            sys.modules.pop(name, None)


def test_file_module_with_a_required_argument(tmp_path, models_py, monkeypatch):
    reference = _imported_the_ordinary_way(tmp_path).MNISTNet(8)
    path = tmp_path / "student.pt"
    torch.save({"state_dict": reference.state_dict()}, path)
    loaded = load_model(path, arch=f"{models_py}:MNISTNet(8)", role="student")
    assert type(loaded.module).__name__ == "MNISTNet" and same_weights(loaded.module, reference)
    assert str(tmp_path) not in sys.path and "models" not in sys.modules  # a module of its own, path restored
    monkeypatch.chdir(tmp_path)  # relative paths, keyword arguments, a dotted attribute
    for arch in ("models.py:MNISTNet(8, hidden=16)", "./models.py:MNISTNet(input_size=8)"):
        assert same_weights(load_model(path, arch=arch).module, reference)
    with pytest.raises(KddiagError, match=r"shape mismatch: body\.0\.weight \(16, 8\) in file vs \(4, 8\)"):
        load_model(path, arch="models.py:Zoo.small(8)")


@pytest.mark.parametrize("arch, message", [
    ("{models}:MNISTNet", r"calling it with no arguments failed \(.*missing 1 required positional argument: "
                          r"'input_size'\); give its arguments in the spec: module:Class\(28, hidden=64\)"),
    ("{models}:MNISTNet(8, width=3)", r"calling MNISTNet\(8, width=3\) failed \(.*unexpected keyword argument 'width'"),
    ("{models}:Missing(8)", r"module '.*models\.py' has no attribute 'Missing'"),
    ("{dir}/nope.py:Net(8)", r"no such file '.*nope\.py'"),
    ("{dir}/broken.py:Net(8)", r"running '.*broken\.py' failed \(ZeroDivisionError: division by zero\)"),
])
def test_bad_file_modules(tmp_path, models_py, arch, message):
    (tmp_path / "broken.py").write_text("1 / 0\n")
    path = tmp_path / "t.pt"
    torch.save({"w": torch.zeros(1)}, path)
    spec = arch.format(models=models_py, dir=tmp_path)
    with pytest.raises(KddiagError, match=rf"^--student-arch '{re.escape(spec)}': {message}") as error:
        load_model(path, arch=spec, role="student")
    assert "\n" not in str(error.value)
