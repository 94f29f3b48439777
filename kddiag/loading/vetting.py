"""Vet programs before they run: torch.export archive members, and the operators a program calls.

A scanner's stance (modelscan, picklescan): inspect before loading, allowlist what may run, name
what was refused. Archive members that torch would unpickle must load with ``weights_only=True``;
members it unpickles without that guard (``use_pickle`` payloads, opaque and custom objects) and
compiled native code (AOTInductor) are refused. A program's operators must be tensor compute:
namespaces in :data:`ALLOWED_NAMESPACES`, minus :data:`DENIED_OPERATORS` and names that look like
file, storage or network access.
"""
from __future__ import annotations

import io
import json
import re
import zipfile
from collections.abc import Iterable, Iterator

from kddiag.errors import KddiagError, UnsafeLoadError
from kddiag.loading._text import one_line

#: Namespaces of operators that compute on tensors, shapes and Python scalars.
ALLOWED_NAMESPACES = frozenset({"aten", "prims", "prim", "_operator", "math", "higher_order"})
#: Operators inside those namespaces that touch files, streams, processes or the network.
DENIED_OPERATORS = {
    "aten::from_file": "file access", "aten::save": "file access", "aten::_print": "writes to stdout",
    "prim::Print": "writes to stdout", "prim::PythonOp": "runs Python code",
    "prim::IgnoredPythonOp": "runs Python code", "prim::rpc_async": "network access",
    "prim::rpc_sync": "network access", "prim::rpc_remote": "network access",
}
_SUSPECT = re.compile(r"file|save|load|rpc|socket|mmap|shm|exec|system|spawn|popen", re.IGNORECASE)
_NATIVE_DIRS = ("data/aotinductor/", "data/executorch/", "data/mtia")  # compiled code torch may load
_TRUST_HINT = "pass --trust-program to run it anyway"


def check_operators(operators: Iterable[str], where: str, *, trust_program: bool) -> None:
    """Refuse the first operator outside the allowlist, unless the program is trusted."""
    if trust_program:
        return
    for name in operators:
        namespace, _, base = name.replace(".", "::", 1).partition("::")
        if name in DENIED_OPERATORS:
            why = DENIED_OPERATORS[name]
        elif namespace not in ALLOWED_NAMESPACES:
            why = "not a tensor operator kddiag knows"
        elif _SUSPECT.search(base):
            why = "looks like file, storage or network access"
        else:
            continue
        raise UnsafeLoadError(f"{where}: the program calls {name} ({why}); refused — {_TRUST_HINT}")


def torchscript_operators(module) -> Iterator[str]:
    """Kinds of all nodes in every method of a ScriptModule and its submodules (inlined and not)."""
    for submodule in module.modules():
        scripted = getattr(submodule, "_c", None)
        if scripted is None:
            continue
        for method_name in scripted._method_names():
            method = scripted._get_method(method_name)
            for graph in (method.graph, method.inlined_graph):
                yield from _graph_kinds(graph.nodes())


def _graph_kinds(nodes) -> Iterator[str]:
    for node in nodes:
        yield node.kind()
        for block in node.blocks():
            yield from _graph_kinds(block.nodes())


def export_operators(program) -> Iterator[str]:
    """Names of the call targets in a torch.export program's graph and its subgraphs."""
    import operator

    import torch

    for graph_module in program.graph_module.modules():
        graph = getattr(graph_module, "graph", None)
        if not isinstance(graph, torch.fx.Graph):
            continue
        for node in graph.nodes:
            if node.op == "call_function":
                target = node.target
                if isinstance(target, torch._ops.OpOverload):
                    yield target._schema.name
                elif isinstance(target, torch._ops.HigherOrderOperator):
                    yield f"higher_order::{target.name()}"
                elif callable(target) and getattr(operator, getattr(target, "__name__", ""), None) is target:
                    yield f"_operator.{target.__name__}"
                else:
                    yield getattr(target, "__qualname__", None) or repr(target)
            elif node.op in ("call_method", "call_module"):
                yield f"{node.op}:{node.target}"


def check_export_archive(data: bytes, where: str) -> None:
    """Refuse a ``.pt2`` archive that torch would unpickle unsafely or that carries native code."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        raise KddiagError(f"{where}: not a readable torch.export program (not a zip archive: {error})") from None
    relative = [name.split("/", 1)[-1] for name in names]
    if len(set(relative)) != len(relative):
        raise UnsafeLoadError(f"{where}: the archive lists a member twice; refused")
    for name, rel in zip(names, relative):
        if rel.startswith(_NATIVE_DIRS) or rel.endswith((".so", ".dll", ".dylib")):
            raise UnsafeLoadError(f"{where}: member '{name}' is compiled native code (it can run anything); refused")
        if rel.endswith("_config.json") and rel.startswith(("data/weights/", "data/constants/")):
            _check_payload_config(archive, name, where)
        elif rel.endswith((".pt", ".pkl")):
            _check_weights_only(archive, name, where)


def _check_payload_config(archive: zipfile.ZipFile, name: str, where: str) -> None:
    folder = name.rsplit("/", 1)[0]
    try:
        config = json.loads(archive.read(name))["config"]
        entries = [(fqn, meta["path_name"], meta.get("use_pickle")) for fqn, meta in config.items()]
    except (KeyError, TypeError, AttributeError, ValueError, zipfile.BadZipFile) as error:
        raise KddiagError(f"{where}: not a readable torch.export program ({name}: {error!r})") from None
    for _, path_name, use_pickle in entries:
        member = f"{folder}/{path_name}"
        if use_pickle or not str(path_name).startswith(("weight_", "tensor_")):
            raise UnsafeLoadError(f"{where}: member '{member}' needs unpickling (it can run code); refused")


def _check_weights_only(archive: zipfile.ZipFile, name: str, where: str) -> None:
    import torch

    try:
        torch.load(io.BytesIO(archive.read(name)), map_location="cpu", weights_only=True)
    except Exception as error:
        if "weights only load failed" in str(error).lower():
            raise UnsafeLoadError(f"{where}: member '{name}' needs unpickling (it can run code); refused") from None
        raise KddiagError(f"{where}: not a readable torch.export program ({name}: {one_line(error)})") from None
