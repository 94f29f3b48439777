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
import tarfile
import types
import warnings
import zipfile
from collections import Counter, OrderedDict
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


class RefusedPickle(Exception):
    """A pickle that does what no checkpoint needs (sets attributes on a class, carries a legacy ``'module'``
    persistent id, uses the legacy tar format): refused whole, with the reason as the message."""


def load_skipping_objects(path: Path) -> Any | None:
    """The file's content with every global outside the weights-only allowlist (torch's, and
    :data:`READABLE_CLASSES`) replaced by a stand-in; None when even that cannot be read (a stand-in
    cannot take the object's place, e.g. inside a tensor) or the file is a TorchScript archive.
    Raises :class:`RefusedPickle` for a pickle that tampers with shared objects (see
    :func:`_restricted_pickle`), a legacy ``'module'`` persistent id, or the legacy tar format.

    torch's own readers (``torch.serialization._load`` / ``_legacy_load``, never ``torch.load`` with
    ``weights_only=False``) read the storages; the pickle goes through an unpickler with torch's
    weights-only rules (:func:`_restricted_pickle`): what the file names is never imported, calling a
    stand-in builds nothing, and only fresh instances are built or filled.
    """
    import torch

    allowed = _allowed_globals()
    serialization = torch.serialization
    if allowed is None or not all(hasattr(serialization, name) for name in
                                  ("_load", "_legacy_load", "_open_zipfile_reader")):
        return None
    try:
        size = path.stat().st_size
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:  # torch.load would hand a TorchScript archive to torch.jit
                names = [name.lower() for name in archive.namelist()]  # torch's zip reader ignores case
                if any(name.endswith("constants.pkl") or "/code/" in name for name in names):
                    return None
            with warnings.catch_warnings(), open(path, "rb") as handle, \
                    serialization._open_zipfile_reader(handle) as reader:
                warnings.simplefilter("ignore")
                return serialization._load(reader, "cpu", _restricted_pickle(allowed, size), encoding="utf-8")
        with open(path, "rb") as handle:
            head = handle.read(1)
        if head != b"\x80":  # not a pickle: the legacy tar format (its members would be extracted to disk)
            if tarfile.is_tarfile(path):
                raise RefusedPickle("it is in torch.save's legacy tar format (PyTorch before 0.4), which kddiag "
                                    "does not read; re-save it with a current torch.save")
            return None
        with warnings.catch_warnings(), _NoFileno(io.FileIO(path, "rb")) as handle:  # never the tar reader
            warnings.simplefilter("ignore")
            return serialization._legacy_load(handle, "cpu", _restricted_pickle(allowed, size), encoding="utf-8")
    except RefusedPickle:
        raise
    except Exception:
        return None


class _NoFileno(io.BufferedReader):
    """A file torch reads through Python calls: without a descriptor, torch's ``_legacy_load`` never tries
    the legacy tar format (which extracts members into a temporary folder and opens them)."""

    def fileno(self) -> int:
        raise io.UnsupportedOperation("fileno")


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


def _restricted_pickle(allowed: dict[str, Any], file_size: int) -> types.ModuleType:
    """A ``pickle_module`` for torch's readers whose unpickler finds ``allowed`` globals and a stand-in for
    every other name (one per name and load), with torch's weights-only rules (``torch._weights_only_unpickler``)
    on every opcode that calls, builds or fills something, extended to stand-ins and pickle protocols 3-5
    (torch's own reads protocol 2 only):

    - REDUCE, NEWOBJ, INST, OBJ: only an allowed global or a stand-in class is called or instantiated;
    - BUILD: state goes only into fresh instances (tensors, parameters, allowed classes' instances; a
      stand-in drops it), never into a class or any other shared object: a pickle cannot rewire
      ``argparse.Namespace`` or ``collections.Counter`` for the whole process;
    - SETITEM(S), APPEND(S), ADDITEMS: only into fresh dicts, lists, sets and stand-ins;
    - persistent ids: storages only, each at most ``file_size`` bytes (a legacy ``'module'`` id is
      refused: torch would compare its source and may write a ``.patch`` file); no extension registry.

    torch subclasses the module's ``Unpickler`` and sets ``persistent_load`` on it: so the unpickler is
    a class, one per load, carrying the load's :class:`_Policy`.
    """
    unpickler = type("Unpickler", (_RestrictedUnpickler,), {"policy": _Policy(allowed, file_size)})
    restricted = types.ModuleType("kddiag_restricted_pickle")
    restricted.Unpickler = unpickler
    restricted.load = lambda file, **kwargs: unpickler(file, **kwargs).load()
    return restricted


class _Policy:
    """What one load may call and fill: the ``allowed`` globals, the stand-ins named so far, the file's size."""

    def __init__(self, allowed: dict[str, Any], file_size: int) -> None:
        self.allowed, self.file_size = allowed, file_size
        self.stand_ins: dict[str, type] = {}
        self.shared = {id(value) for value in allowed.values()}  # never filled or given attributes
        self.classes = {value for value in allowed.values() if isinstance(value, type)}

    def global_named(self, full_name: str) -> Any:
        """The allowed global ``full_name``, else its stand-in class."""
        if full_name in self.allowed:
            return self.allowed[full_name]
        return self.stand_ins.setdefault(full_name, _stand_in(full_name))

    def check_callable(self, func: Any) -> None:
        if not ((isinstance(func, type) and issubclass(func, _StandIn)) or id(func) in self.shared):
            raise RefusedPickle(f"it calls {_what(func)}, which kddiag never calls")

    def check_target(self, target: Any, kinds: tuple[type, ...], action: str) -> None:
        if isinstance(target, _StandIn):
            return
        if type(target) not in kinds or id(target) in self.shared:
            raise RefusedPickle(f"it {action} {_what(target)}, which kddiag never allows")

    def check_buildable(self, inst: Any) -> None:
        """Refuse state for a class, a shared object or an instance of a class outside the allowlist."""
        if isinstance(inst, type) or id(inst) in self.shared or type(inst) not in self.classes:
            raise RefusedPickle(f"it sets attributes on {_what(inst)}, which kddiag never allows")


_BASE = pickle._Unpickler  # type: ignore[attr-defined]  # the Python one: its opcodes can be overridden
_MAPPINGS = (dict, OrderedDict, Counter)


class _RestrictedUnpickler(_BASE):
    """The unpickler of :func:`_restricted_pickle`; ``policy`` is set on the subclass made for each load."""

    policy: _Policy
    _torch_persistent_load = None

    def find_class(self, module: str, name: str) -> Any:
        return self.policy.global_named(_python3_name(module, name))

    @property
    def persistent_load(self) -> Any:
        return self._checked_persistent_load

    @persistent_load.setter
    def persistent_load(self, load: Any) -> None:
        self._torch_persistent_load = load

    def _checked_persistent_load(self, pid: Any) -> Any:
        import torch

        kind = pid[0] if isinstance(pid, tuple) and pid else None
        kind = kind.decode("ascii", "replace") if isinstance(kind, bytes) else kind
        if kind == "module":
            raise RefusedPickle("it holds a legacy 'module' persistent id (a pickled module's source, which "
                                "torch would compare and may write to a .patch file), which kddiag never reads")
        if kind != "storage" or self._torch_persistent_load is None or len(pid) not in (5, 6):
            raise pickle.UnpicklingError("unsupported persistent id")
        storage_type, numel = pid[1], pid[4]
        dtype = torch.uint8 if storage_type is torch.UntypedStorage else getattr(storage_type, "dtype", None)
        if not isinstance(dtype, torch.dtype) or type(numel) is not int or numel < 0:
            raise pickle.UnpicklingError("malformed storage persistent id")
        if numel * torch._utils._element_size(dtype) > self.policy.file_size:
            raise RefusedPickle(f"a storage declares {numel:,} {str(dtype).removeprefix('torch.')} elements, "
                                f"more than the file's {self.policy.file_size:,} bytes hold")
        return self._torch_persistent_load(pid)

    def _marked(self) -> Any:
        """The object below the last mark: what SETITEMS, APPENDS and ADDITEMS fill."""
        return self.metastack[-1][-1] if self.metastack and self.metastack[-1] else None

    def _reduce(self) -> None:
        self.policy.check_callable(self.stack[-2])
        _BASE.load_reduce(self)

    def _newobj(self) -> None:
        self.policy.check_callable(self.stack[-2])
        _BASE.load_newobj(self)

    def _newobj_ex(self) -> None:
        self.policy.check_callable(self.stack[-3])
        _BASE.load_newobj_ex(self)

    def _inst(self) -> None:
        module = self.readline()[:-1].decode("ascii")
        name = self.readline()[:-1].decode("ascii")
        klass = self.find_class(module, name)
        self.policy.check_callable(klass)
        self._instantiate(klass, self.pop_mark())

    def _obj(self) -> None:
        args = self.pop_mark()
        cls = args.pop(0)
        self.policy.check_callable(cls)
        self._instantiate(cls, args)

    def _build(self) -> None:
        import torch

        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, _StandIn):
            return
        if type(inst) is torch.Tensor:  # torch's legacy tensor state
            inst.set_(*state)
            return
        if type(inst) is torch.nn.Parameter:
            inst.__setstate__(state)
            return
        self.policy.check_buildable(inst)
        if type(inst) is not OrderedDict and hasattr(inst, "__setstate__"):
            inst.__setstate__(state)
            return
        _set_plain_state(inst, state)

    def _setitem(self) -> None:
        self.policy.check_target(self.stack[-3], _MAPPINGS, "sets items on")
        _BASE.load_setitem(self)

    def _setitems(self) -> None:
        self.policy.check_target(self._marked(), _MAPPINGS, "sets items on")
        _BASE.load_setitems(self)

    def _append(self) -> None:
        self.policy.check_target(self.stack[-2], (list,), "appends to")
        _BASE.load_append(self)

    def _appends(self) -> None:
        self.policy.check_target(self._marked(), (list,), "appends to")
        _BASE.load_appends(self)

    def _additems(self) -> None:
        self.policy.check_target(self._marked(), (set,), "adds items to")
        _BASE.load_additems(self)

    def _extension(self) -> None:
        raise RefusedPickle("it names an object through the copyreg extension registry, which kddiag never reads")

    dispatch = {**_BASE.dispatch, **{opcode[0]: method for opcode, method in (
        (pickle.REDUCE, _reduce), (pickle.NEWOBJ, _newobj), (pickle.NEWOBJ_EX, _newobj_ex),
        (pickle.INST, _inst), (pickle.OBJ, _obj), (pickle.BUILD, _build), (pickle.SETITEM, _setitem),
        (pickle.SETITEMS, _setitems), (pickle.APPEND, _append), (pickle.APPENDS, _appends),
        (pickle.ADDITEMS, _additems), (pickle.EXT1, _extension), (pickle.EXT2, _extension),
        (pickle.EXT4, _extension))}}


def _set_plain_state(inst: Any, state: Any) -> None:
    """BUILD's default: ``state`` (or ``(state, slotstate)``) as plain attributes, none of them special."""
    slotstate = None
    if isinstance(state, tuple) and len(state) == 2:
        state, slotstate = state
    for attributes in (state, slotstate):
        if attributes and (not isinstance(attributes, dict) or
                           any(type(k) is not str or k.startswith("__") for k in attributes)):
            raise RefusedPickle(f"it sets special attributes on {_what(inst)}, which kddiag never allows")
    if state:
        inst.__dict__.update(state)
    for key, value in (slotstate or {}).items():
        setattr(inst, key, value)


def _what(value: Any) -> str:
    """What a refused opcode acts on, for a one-line message: 'the class argparse.Namespace'."""
    if isinstance(value, type):
        name = getattr(value, "global_name", "") or f"{value.__module__}.{value.__qualname__}"
        text = f"the class {name}"
    elif callable(value) and hasattr(value, "__qualname__"):
        text = f"{getattr(value, '__module__', '?')}.{value.__qualname__}"
    else:
        text = f"a {type(value).__module__}.{type(value).__qualname__} object"
    from kddiag.errors import printable

    text = printable(text)
    return text if len(text) <= 120 else text[:120] + "…"


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
