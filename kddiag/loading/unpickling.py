"""``torch.save`` files read weights-only: tensors, plain containers and ``argparse.Namespace``.

torch's weights-only unpickler builds tensors and plain containers only. kddiag also allows
``argparse.Namespace``, a plain bag of attributes that torchdistill, timm and RepDistiller save their
command-line arguments in: building one runs no code from the file.

Any other object (a pickled ``nn.Module``, an OmegaConf config, a dataclass, a dict or list subclass, a
function) can be skipped instead of refusing the whole file: :func:`load_skipping_objects` replaces each
with an inert stand-in that keeps nothing and runs nothing, so the weights beside it can still be read,
and :func:`skipped_objects` names where each one was. Nothing named in the file is imported or called.

Which objects a file holds is read from its pickle's opcodes (:func:`unknown_globals`), never from
torch's error message: torch's words change between versions (2.13 says "unsupported GLOBAL posix.system
whose module posix is blocked") and advise ``weights_only=False``, which kddiag never repeats.
"""
from __future__ import annotations

import _compat_pickle
import argparse
import contextlib
import io
import pickle
import pickletools
import types
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Iterator

READABLE_CLASSES = (argparse.Namespace,)  # built by setting attributes: no code from the file runs
_STRING_OPCODES = {"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "SHORT_BINUNICODE", "BINUNICODE",
                   "BINUNICODE8"}
_MEMO_PUTS = {"PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"}
_MEMO_GETS = {"GET", "BINGET", "LONG_BINGET"}
_LEGACY_PICKLES = 5  # a legacy (non-zip) torch.save file: magic, protocol, sys info, the content, storage keys


class _StandIn:
    """Takes the place of an object kddiag does not build: accepts any arguments, state and items, keeps none."""

    global_name = ""

    def __new__(cls, *args: Any, **kwargs: Any):
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:  # a dict subclass's items
        pass

    def append(self, item: Any) -> None:  # a list subclass's items
        pass

    def extend(self, items: Any) -> None:
        pass

    def add(self, item: Any) -> None:  # a set subclass's items
        pass


def load_weights_only(path: Path) -> Any:
    """``torch.load(path, weights_only=True)`` with :data:`READABLE_CLASSES` allowed."""
    import torch

    allow = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    if allow is None:
        return torch.load(path, map_location="cpu", weights_only=True)
    with allow(list(READABLE_CLASSES)):
        return torch.load(path, map_location="cpu", weights_only=True)


def load_skipping_objects(path: Path) -> Any | None:
    """The file's content with every global outside the weights-only allowlist (torch's, and
    :data:`READABLE_CLASSES`) replaced by a stand-in; None when even that cannot be read (a stand-in
    cannot take the object's place, e.g. inside a tensor) or the file is a TorchScript archive.

    torch reads the file (zip or legacy format, storages and all) through an unpickler whose only
    globals are those: what the file names is never imported, and calling a stand-in builds nothing.
    """
    import torch

    allowed = _allowed_globals()
    if allowed is None:
        return None
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:  # torch.load would hand a TorchScript archive to torch.jit
                if any(name.endswith("constants.pkl") or "/code/" in name for name in archive.namelist()):
                    return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_restricted_pickle(allowed))
    except Exception:
        return None


def unknown_globals(path: Path) -> tuple[str, ...]:
    """The globals (classes, functions) a ``torch.save`` file's pickle names outside the weights-only
    allowlist, in order of first appearance, read from its opcodes: nothing is built or imported. Empty
    when it names none, or is no pickle at all (damaged, or not written by torch.save)."""
    allowed = _allowed_globals() or {}
    found: dict[str, None] = {}
    try:
        with _pickle_stream(path) as stream:
            for _ in range(_LEGACY_PICKLES):
                for name in _globals_in(stream):
                    if name not in allowed:
                        found.setdefault(name)
    except Exception:  # the end of the pickles, or damage: what was named before it counts
        pass
    return tuple(found)


def unreadable_reason(path: Path, error: BaseException) -> str:
    """Why ``torch.load(path, weights_only=True)`` failed, in kddiag's words (torch's own message
    advises ``weights_only=False``)."""
    names = unknown_globals(path)
    if names:
        more = f" (+{len(names) - 3} more)" if len(names) > 3 else ""
        return f"it holds objects kddiag never unpickles: {', '.join(names[:3])}{more}"
    text = " ".join(str(error).split())
    if not text or "weights_only" in text.lower() or "weights only" in text.lower():
        return "corrupt, truncated or not written by torch.save"
    return text if len(text) <= 200 else text[:200] + "…"


def skipped_objects(content: Any, *, depth: int = 6) -> list[str]:
    """Where stand-ins sit in ``content``: ``'hyper_parameters' (omegaconf.dictconfig.DictConfig)``."""
    return [f"'{'/'.join(trail) or 'the whole file'}' ({name})" for trail, name in _walk(content, (), depth)]


def _stand_in(global_name: str) -> type:
    """A stand-in class named after ``global_name`` (``module.qualname``)."""
    module, _, name = global_name.rpartition(".")
    return type(name, (_StandIn,), {"__module__": module, "__qualname__": name, "global_name": global_name})


def _allowed_globals() -> dict[str, Any] | None:
    """The globals kddiag lets a pickle name: torch's weights-only allowlist and :data:`READABLE_CLASSES`;
    None when this torch does not say which they are."""
    from torch import _weights_only_unpickler

    torch_allowed = getattr(_weights_only_unpickler, "_get_allowed_globals", None)
    if torch_allowed is None:
        return None
    return {**torch_allowed(), **{f"{cls.__module__}.{cls.__qualname__}": cls for cls in READABLE_CLASSES}}


def _restricted_pickle(allowed: dict[str, Any]) -> types.ModuleType:
    """A ``pickle_module`` for ``torch.load`` whose unpickler finds ``allowed`` globals and a stand-in for
    every other name (one per name and load)."""
    stand_ins: dict[str, type] = {}

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            full = _python3_name(module, name)
            if full in allowed:
                return allowed[full]
            return stand_ins.setdefault(full, _stand_in(full))

    restricted = types.ModuleType("kddiag_restricted_pickle")
    restricted.Unpickler = Unpickler
    restricted.load = lambda file, **kwargs: Unpickler(file, **kwargs).load()
    return restricted


def _python3_name(module: str, name: str) -> str:
    """``module.name`` with Python 2 names mapped as pickle maps them (torch.save writes protocol 2)."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    elif module in _compat_pickle.IMPORT_MAPPING:
        module = _compat_pickle.IMPORT_MAPPING[module]
    return f"{module}.{name}"


@contextlib.contextmanager
def _pickle_stream(path: Path) -> Iterator[Any]:
    """The file's pickle, streamed: ``data.pkl`` of a zip-format ``torch.save`` file, else the file itself."""
    with open(path, "rb") as handle:
        if not zipfile.is_zipfile(handle):
            handle.seek(0)
            yield handle
            return
        with zipfile.ZipFile(handle) as archive:
            names = [name for name in archive.namelist() if name == "data.pkl" or name.endswith("/data.pkl")]
            if not names:
                yield io.BytesIO()
                return
            with archive.open(min(names, key=len)) as member:
                yield member


def _globals_in(stream: Any) -> Iterator[str]:
    """The globals one pickle in ``stream`` names (GLOBAL, INST, STACK_GLOBAL), read from its opcodes."""
    recent: list[str | None] = []  # what the last opcodes pushed: the names STACK_GLOBAL takes
    memo: dict[Any, str | None] = {}
    for opcode, arg, _ in pickletools.genops(stream):
        if opcode.name in ("GLOBAL", "INST"):
            module, _, name = arg.partition(" ")
            yield _python3_name(module, name)
        elif opcode.name == "STACK_GLOBAL":
            module, name = ([None, None] + recent)[-2:]
            yield _python3_name(module, name) if module and name else "(a global named at run time)"
        elif opcode.name in _MEMO_PUTS:
            memo[len(memo) if opcode.name == "MEMOIZE" else arg] = recent[-1] if recent else None
            continue
        recent = [*recent[-1:], arg if opcode.name in _STRING_OPCODES and isinstance(arg, str)
                  else memo.get(arg) if opcode.name in _MEMO_GETS else None]


def _walk(node: Any, trail: tuple[str, ...], depth: int) -> Iterator[tuple[tuple[str, ...], str]]:
    if isinstance(node, _StandIn) or (isinstance(node, type) and issubclass(node, _StandIn)):
        yield trail, node.global_name
        return
    if depth == 0:
        return
    if isinstance(node, argparse.Namespace):
        node = vars(node)
    if isinstance(node, Mapping):
        for key, value in node.items():
            yield from _walk(value, (*trail, str(key)), depth - 1)
    elif isinstance(node, (list, tuple)):
        for index, value in enumerate(node):
            yield from _walk(value, (*trail, str(index)), depth - 1)
