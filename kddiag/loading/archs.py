"""Architectures named on the command line (``--teacher-arch``), parsed and built.

A spec is a built-in name (:mod:`kddiag.models`, e.g. ``mlp:64-32-10``) or ``MODULE:CALLABLE`` with
optional literal arguments: ``pkg.models:resnet18``, ``pkg.models:Net(28, hidden=64)``. ``MODULE`` is
a dotted module name (the current directory is importable) or a path to a ``.py`` file
(``path/to/models.py:Net(28)``), imported as the user's own code. Arguments are parsed with
:mod:`ast` and must be literals (numbers, strings, booleans, None, tuples, lists, dicts, sets): a spec
is never evaluated.
"""
from __future__ import annotations

import ast
import contextlib
import hashlib
import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from kddiag.errors import KddiagError
from kddiag.loading._text import one_line

_LITERALS = "numbers, strings, True/False/None, and tuples, lists, dicts or sets of them"
# Bounds on a built-in name (mlp:IN-H1-...-OUT), checked before anything is built: a name stored in an
# untrusted checkpoint could ask for 300,000 layers or 10^12 weights. Ordinary MLPs use a few layers.
MAX_BUILTIN_LAYERS = 256  # linear layers
MAX_BUILTIN_PARAMETERS = 100_000_000  # weights and biases (400 MB of float32)


@dataclass(frozen=True)
class ArchSpec:
    """A parsed ``MODULE:CALLABLE(args)`` spec."""

    module: str  # 'pkg.models', or a path to a .py file
    attribute: str  # 'Net', or a dotted path inside the module: 'Outer.build'
    args: tuple = ()
    kwargs: dict[str, Any] = field(default_factory=dict)

    def call_text(self) -> str:
        """The call as written back: ``Net(28, hidden=64)``."""
        arguments = [*map(repr, self.args), *(f"{key}={value!r}" for key, value in self.kwargs.items())]
        return f"{self.attribute}({', '.join(arguments)})"

    @property
    def is_file(self) -> bool:
        """Whether ``module`` is a path to a Python file rather than a module name."""
        return self.module.endswith(".py") or "/" in self.module or os.sep in self.module


def parse_arch(spec: str, option: str) -> ArchSpec | None:
    """``spec`` parsed; None for a built-in name. ``option`` (``--teacher-arch``) names it in errors.

    >>> parse_arch("models.py:Net(28, hidden=64)", "--teacher-arch")
    ArchSpec(module='models.py', attribute='Net', args=(28,), kwargs={'hidden': 64})
    """
    where = f"{option} '{clip_spec(spec)}'"
    if _builtin_factory(spec, where) is not None:
        return None
    head, paren, call = spec.partition("(")
    module, colon, attribute = head.rpartition(":")  # the callable's name holds no ':', a Windows path may
    attribute = attribute.strip()
    if not colon or not module.strip() or not attribute:
        raise KddiagError(f"{where}: not a built-in architecture ({builtin_help()}) and not of the form "
                          f"package.module:callable, package.module:Class(28, hidden=64) or path/to/models.py:Class(28)")
    try:
        tree = ast.parse(attribute + paren + call, mode="eval").body
    except SyntaxError as error:
        raise KddiagError(f"{where}: not valid Python call syntax ({error.msg})") from None
    call_node = tree if paren and isinstance(tree, ast.Call) else None
    if _dotted_name(call_node.func if call_node else tree) != attribute:
        raise KddiagError(f"{where}: expected Name or Name(arguments) after the ':', with a dotted name "
                          f"(Class, Outer.Class) and nothing after the closing parenthesis")
    args, kwargs = _literal_arguments(call_node, where) if call_node else ((), {})
    return ArchSpec(module.strip(), attribute, args, kwargs)


def build_arch(spec: str, role: str, *, source: str | None = None):
    """The ``torch.nn.Module`` that ``spec`` names: a built-in, or the callable called with its arguments.

    ``source`` names where ``spec`` came from in errors (:func:`stored_arch_source`); default: ``--{role}-arch``.
    """
    import torch

    option = source or f"--{role}-arch '{clip_spec(spec)}'"
    factory = _builtin_factory(spec, option)
    parsed = None
    if factory is None:
        parsed = parse_arch(spec, f"--{role}-arch")
        factory = _load_callable(parsed, option)
    if not callable(factory):
        raise KddiagError(f"{option}: '{parsed.module}:{parsed.attribute}' is a {type(factory).__name__}, "
                          f"not callable")
    args, kwargs = (parsed.args, parsed.kwargs) if parsed else ((), {})
    try:
        model = factory(*args, **kwargs)
    except KddiagError as error:
        raise KddiagError(f"{option}: {one_line(error)}") from None
    except Exception as error:
        if parsed is None or not (args or kwargs):
            hint = "; give its arguments in the spec: module:Class(28, hidden=64)" if isinstance(error, TypeError) else ""
            raise KddiagError(f"{option}: calling it with no arguments failed ({one_line(error)}){hint}") from None
        raise KddiagError(f"{option}: calling {parsed.call_text()} failed ({one_line(error)})") from None
    if not isinstance(model, torch.nn.Module):
        raise KddiagError(f"{option}: calling it returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def builtin_help() -> str:
    """The built-in architecture names, for error messages."""
    models = _builtin_models()
    if models is None:
        return "none available"
    return getattr(models, "BUILTIN_ARCH_HELP", None) or ", ".join(getattr(models, "BUILTIN_ARCHS", {})) or "none"


def stored_builtin_arch(stored: Any, where: str = "checkpoint") -> str | None:
    """``stored`` (an ``'arch'`` entry of the checkpoint ``where`` names) if it is a built-in name, else None.

    Only built-in names are honoured: importing a module named inside an untrusted file would run its code.
    A built-in name out of bounds is refused naming the checkpoint.
    """
    if isinstance(stored, str) and _builtin_factory(stored, stored_arch_source(stored, where)) is not None:
        return stored
    return None


def stored_arch_source(spec: str, where: str) -> str:
    """How errors name an architecture read from a checkpoint, never from an option:
    ``student checkpoint 's.pt': its stored 'arch' 'mlp:64-8-10'``."""
    return f"{where}: its stored 'arch' '{clip_spec(spec)}'"


def clip_spec(spec: str, limit: int = 200) -> str:
    """``spec`` as errors quote it: at most ``limit`` characters, then how long it is."""
    return spec if len(spec) <= limit else f"{spec[:limit]}… ({len(spec):,} characters)"


# --- helpers -------------------------------------------------------------------------------------

def _literal_arguments(call: ast.Call, where: str) -> tuple[tuple, dict[str, Any]]:
    """The positional and keyword arguments of ``call``, each a literal."""
    args = []
    for position, node in enumerate(call.args, start=1):
        if isinstance(node, ast.Starred):
            raise KddiagError(f"{where}: *arguments are not allowed; write each argument as a literal")
        args.append(_literal(node, f"argument {position}", where))
    kwargs = {}
    for keyword in call.keywords:
        if keyword.arg is None:
            raise KddiagError(f"{where}: **arguments are not allowed; write key=value with a literal value")
        kwargs[keyword.arg] = _literal(keyword.value, f"argument {keyword.arg}=", where)
    return tuple(args), kwargs


def _literal(node: ast.expr, label: str, where: str) -> Any:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        kind = {ast.Call: "a call", ast.Name: "a name", ast.Attribute: "an attribute",
                ast.Lambda: "a lambda"}.get(type(node), "an expression")
        raise KddiagError(f"{where}: {label} must be a literal ({_LITERALS}); got {kind}, "
                          f"'{ast.unparse(node)}'") from None


def _dotted_name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        parent = _dotted_name(node.value)
        return None if parent is None else f"{parent}.{node.attr}"
    return None


def _load_callable(spec: ArchSpec, option: str) -> Any:
    """The object named by ``spec``: its module imported (or its file loaded), then the attribute path."""
    target: Any = _load_file(spec.module, option) if spec.is_file else _import_module(spec.module, option)
    for part in spec.attribute.split("."):
        if not hasattr(target, part):
            raise KddiagError(f"{option}: module '{spec.module}' has no attribute '{spec.attribute}'")
        target = getattr(target, part)
    return target


def _import_module(name: str, option: str):
    """Module ``name``, with the current directory importable (``kddiag`` run from a project directory)."""
    with _on_path(os.getcwd()):
        try:
            return importlib.import_module(name)
        except Exception as error:
            raise KddiagError(f"{option}: cannot import module '{name}' ({one_line(error)})") from None


def _load_file(path_text: str, option: str):
    """The Python file at ``path_text`` run as a module (its directory importable while it runs)."""
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise KddiagError(f"{option}: no such file '{path_text}'")
    path = path.resolve()
    name = f"kddiag_arch_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise KddiagError(f"{option}: '{path_text}' cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look their module up here
    with _on_path(str(path.parent)):
        try:
            spec.loader.exec_module(module)
        except Exception as error:
            del sys.modules[name]
            raise KddiagError(f"{option}: running '{path_text}' failed ({type(error).__name__}: {one_line(error)})") from None
    return module


@contextlib.contextmanager
def _on_path(directory: str):
    added = directory not in sys.path
    if added:
        sys.path.insert(0, directory)
    try:
        yield
    finally:
        if added and directory in sys.path:
            sys.path.remove(directory)


def _builtin_models():
    try:
        return importlib.import_module("kddiag.models")
    except ImportError:
        return None


def _builtin_factory(name: str, where: str) -> Callable | None:
    """The zero-argument factory of a built-in architecture name (:mod:`kddiag.models`), or None."""
    models = _builtin_models()
    if models is None:
        return None
    if hasattr(models, "builtin_arch"):
        kind, _, widths = name.partition(":")
        if kind == "mlp" and widths:  # the names kddiag.models.builtin_arch builds
            _check_builtin_mlp(widths, where)
        try:
            return models.builtin_arch(name)
        except KddiagError as error:
            raise KddiagError(f"{where}: {one_line(error)}") from None
    return getattr(models, "BUILTIN_ARCHS", {}).get(name)


def _check_builtin_mlp(widths_text: str, where: str) -> None:
    """The widths of ``mlp:IN-H1-...-OUT`` checked against the bounds above, before anything is built."""
    parts = widths_text.split("-")
    if len(parts) - 1 > MAX_BUILTIN_LAYERS:
        raise KddiagError(f"{where}: {len(parts) - 1:,} layers; a built-in MLP has at most {MAX_BUILTIN_LAYERS} "
                          f"(kddiag.loading.archs.MAX_BUILTIN_LAYERS)")
    bad = next((p for p in parts if not (p.isascii() and p.isdigit() and len(p) <= 12 and int(p) >= 1)), None)
    if bad is not None or len(parts) < 2:
        got = f"got '{clip_spec(bad, 20)}'" if bad is not None else "got one"
        raise KddiagError(f"{where}: expected mlp:IN-H1-...-OUT with integer widths, at least two, each ≥ 1; "
                          f"{got}")
    widths = [int(p) for p in parts]
    parameters = sum((fan_in + 1) * fan_out for fan_in, fan_out in zip(widths, widths[1:]))
    if parameters > MAX_BUILTIN_PARAMETERS:
        raise KddiagError(f"{where}: {parameters:,} parameters; a built-in MLP has at most "
                          f"{MAX_BUILTIN_PARAMETERS:,} (kddiag.loading.archs.MAX_BUILTIN_PARAMETERS); pass a larger "
                          f"model as package.module:Class")
