"""Vet programs before they run: torch.export archive members, and the operators a program calls.

A scanner's stance (modelscan, picklescan): inspect before loading, allowlist what may run, name
what was refused. Archive members that torch would unpickle must load with ``weights_only=True``;
members it unpickles without that guard (``use_pickle`` payloads, opaque and custom objects) and
compiled native code (AOTInductor) are refused. Members are streamed, never inflated past what the
file can honestly hold (:data:`MAX_UNPACK_RATIO`). Every string in a serialized program that torch
turns into Python source or evaluates — names pasted into the code its FX graph modules generate,
shape expressions it hands to ``sympy.sympify``, guard code, input/output structure keys — must be a
plain name or plain arithmetic. A program's operators must be tensor compute: namespaces in
:data:`ALLOWED_NAMESPACES`, minus :data:`DENIED_OPERATORS` and names that look like file, storage
or network access.
"""
from __future__ import annotations

import ast
import functools
import io
import json
import keyword
import math
import posixpath
import re
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from typing import Any

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
    "higher_order::while_loop": "a loop kddiag cannot bound: the run could hang",
}
#: The most steps a TorchScript program's loops with a constant trip count may take, nested loops
#: multiplied: a model's loops run over layers or positions; a ``while`` loop's trip count is 2⁶³ − 1.
MAX_LOOP_STEPS = 10**7
_SUSPECT = re.compile(r"file|save|load|rpc|socket|mmap|shm|exec|system|spawn|popen", re.IGNORECASE)
_NATIVE_DIRS = ("data/aotinductor/", "data/executorch/", "data/mtia")  # compiled code torch may load
_TRUST_HINT = "pass --trust-program to run it anyway"
#: Calls left in an inlined TorchScript graph go through an interface or a function value: code kddiag
#: cannot follow statically, so it cannot vet what they run.
_UNFOLLOWED_CALLS = frozenset({"prim::CallMethod", "prim::CallFunction"})

#: A ``.pt2`` may declare at most this many unpacked bytes per byte of the file, beyond
#: :data:`FREE_UNPACKED_BYTES`. ``torch.export.save`` stores members uncompressed, so a real program
#: unpacks to about its own size (deflated weights to ~1.1x); a decompression bomb, to thousands of times.
MAX_UNPACK_RATIO = 20
FREE_UNPACKED_BYTES = 64 << 20
#: The largest serialized program or payload config (JSON) kddiag parses; torch parses the same text.
MAX_PROGRAM_TEXT_BYTES = 256 << 20
_CHUNK_BYTES = 1 << 20
#: Legacy-format members torch loads with ``torch.load`` and, when weights-only fails, unpickles.
_LEGACY_PICKLES = ("serialized_state_dict.json", "serialized_constants.json")


def check_operators(operators: Iterable[str], where: str, *, trust_program: bool) -> None:
    """Refuse the first operator outside the allowlist, unless the program is trusted."""
    if trust_program:
        return
    for name in operators:
        namespace, _, base = name.replace(".", "::", 1).partition("::")
        if name in DENIED_OPERATORS:
            why = DENIED_OPERATORS[name]
        elif name in _UNFOLLOWED_CALLS:
            why = "a call kddiag cannot follow to vet what it runs"
        elif namespace not in ALLOWED_NAMESPACES:
            why = "not a tensor operator kddiag knows"
        elif _SUSPECT.search(base):
            why = "looks like file, storage or network access"
        else:
            continue
        raise UnsafeLoadError(f"{where}: the program calls {name} ({why}); refused — {_TRUST_HINT}")


def torchscript_operators(module) -> Iterator[str]:
    """Kinds of all nodes in every piece of code a ScriptModule carries that torch can run.

    That is every method and every forward hook and pre-hook (``torch.jit.load`` re-attaches them and
    calling the module runs them), of the module and of each submodule, with their callees inlined,
    through blocks and ``fork`` subgraphs. A call still left after inlining (through an interface or a
    function value) is yielded as is, for :func:`check_operators` to refuse.
    """
    for _, function in _script_functions(module):
        if function is None:
            yield "prim::CallMethod"  # a submodule torch did not compile: code kddiag cannot walk
            continue
        yield from _graph_kinds(function.inlined_graph)
        # the graph as written, for operators inlining could fold away (its calls are in the above)
        yield from (kind for kind in _graph_kinds(function.graph) if kind not in _UNFOLLOWED_CALLS)


def _script_functions(module) -> Iterator[tuple[Any, Any]]:
    """(owner, function) for every method, forward hook and pre-hook of a ScriptModule and of each
    submodule (function None for a submodule torch did not compile)."""
    for submodule in module.modules():
        scripted = getattr(submodule, "_c", None)
        if scripted is None:
            yield submodule, None
            continue
        yield from ((submodule, scripted._get_method(name)) for name in scripted._method_names())
        yield from ((submodule, hook) for hook in (*scripted._get_forward_pre_hooks(), *scripted._get_forward_hooks()))


#: A loop whose trip count comes from the inputs' shape (their length, a tensor's size) counts as this
#: many steps: a batch, a sequence. Two such loops nested fit MAX_LOOP_STEPS; three do not.
SIZED_LOOP_STEPS = 1024
#: How a trip count may be computed from shapes and constants, and what each step does to a bound of
#: its magnitude: the sum of its operands' bounds, their product, the first operand's (a quotient, a
#: remainder), or the largest (selection, packing, conversion).
_SIZE_OPS = frozenset({"aten::size", "aten::len", "aten::dim", "aten::numel", "aten::sym_size"})
_SUM_OPS = frozenset({"aten::add", "aten::sub", "aten::__range_length"})
_FIRST_OPS = frozenset({"aten::floordiv", "aten::remainder"})
_LARGEST_OPS = frozenset({
    "aten::min", "aten::max", "prim::min", "prim::max", "aten::neg", "aten::abs", "aten::Int", "aten::__getitem__",
    "prim::ListUnpack", "prim::TupleUnpack", "prim::ListConstruct", "prim::TupleConstruct", "prim::TupleIndex",
    "prim::NumToTensor", "aten::ScalarImplicit", "prim::unchecked_cast"})
_SHAPE_ARITHMETIC = _SUM_OPS | _FIRST_OPS | _LARGEST_OPS | {"aten::mul"}


def check_program_bounds(module, where: str, *, trust_program: bool) -> None:
    """Refuse a TorchScript program that could hang the run or exhaust memory, unless it is trusted: loops of
    more than MAX_LOOP_STEPS steps, nested loops multiplied (a ``while`` loop has 2⁶³ − 1; a loop over an
    input dimension counts SIZED_LOOP_STEPS), a tensor of more than MAX_CREATED_ELEMENTS elements, or a trip
    count or size computed from anything but constants, attributes and the inputs' shapes (a tensor's
    values, a value carried from step to step)."""
    if trust_program:
        return
    for owner, function in _script_functions(module):
        if function is None:
            continue
        graph = function.inlined_graph
        problem = _bounds_problem(graph, _TripCounts(graph, owner))
        if problem:
            raise UnsafeLoadError(f"{where}: the program's code has {problem}; kddiag cannot bound the time or "
                                  f"memory it takes, so it is refused — {_TRUST_HINT}")


#: The most elements one tensor a program creates may hold (4 GiB of float32), an input dimension counted
#: as SIZED_LOOP_STEPS: a batch × sequence × sequence attention mask fits, ``torch.ones(2_000_000_000)`` not.
MAX_CREATED_ELEMENTS = 1 << 30
#: Operators that create a tensor of a size their arguments give (lists of sizes; ``arange``'s bounds), and
#: those that multiply their input's size (counted on an input of SIZED_LOOP_STEPS² elements).
_CREATING = frozenset({"aten::ones", "aten::zeros", "aten::empty", "aten::full", "aten::rand", "aten::randn",
                       "aten::randint", "aten::empty_strided", "aten::new_ones", "aten::new_zeros", "aten::new_empty",
                       "aten::new_full", "aten::expand", "aten::broadcast_to", "aten::arange", "aten::eye",
                       "aten::linspace", "aten::logspace"})
_MULTIPLYING = frozenset({"aten::repeat", "aten::tile", "aten::repeat_interleave"})
# the operators sized by scalar arguments, not by a size list: which arguments
_SCALAR_SIZES = {"aten::arange": ("start", "end"), "aten::eye": ("n", "m"), "aten::linspace": ("steps",),
                 "aten::logspace": ("steps",)}


def _creation_problem(graph, trips: "_TripCounts") -> str | None:
    """Why a tensor a graph creates could exhaust memory, or None."""
    for node in _nodes(graph):
        kind = node.kind()
        if kind not in _CREATING and kind not in _MULTIPLYING:
            continue
        try:
            elements = _created_elements(node, trips)
        except _Unbounded as value:
            return f"a tensor{_line(node)} ({kind}) whose size comes from {trips.why(value.args[0])}"
        if elements > MAX_CREATED_ELEMENTS:
            return (f"a tensor{_line(node)} ({kind}) of up to {elements:,} elements (more than "
                    f"{MAX_CREATED_ELEMENTS:,}; an input dimension counted as {SIZED_LOOP_STEPS:,})")
    return None


class _Unbounded(Exception):
    """A size argument whose bound cannot be traced (the value, as its argument)."""


def _created_elements(node, trips: "_TripCounts") -> int:
    """A bound of the elements a creating operator's output holds: the product of its size lists (times an
    input's SIZED_LOOP_STEPS² elements for one that multiplies its input), or, for the operators sized by
    scalars, their size arguments (``arange``: its end or start, over a step below 1; ``eye``: n × m, n × n
    without m))."""
    import torch

    kind = node.kind()
    arguments = dict(zip((a.name for a in torch._C.parse_schema(node.schema()).arguments), node.inputs()))
    scalars = _SCALAR_SIZES.get(kind)
    if scalars is None:
        elements = SIZED_LOOP_STEPS**2 if kind in _MULTIPLYING else 1
        for value in arguments.values():
            if value.type().kind() == "ListType":
                bound = _list_bound(value, trips)
                if bound is None:
                    raise _Unbounded(value)
                elements *= max(1, bound)
        return elements
    bounds = []
    for name in scalars:
        value = arguments.get(name)
        if value is not None and value.type().kind() != "NoneType":
            bound = trips.steps(value)
            if bound is None:
                raise _Unbounded(value)
            bounds.append(max(1, bound))
    if kind == "aten::eye":
        elements = bounds[0] * bounds[-1] if bounds else 1  # eye(n) is n × n
    else:
        elements = max(bounds, default=1)
    step = arguments.get("step")
    constant = step.toIValue() if step is not None and step.node().kind() == "prim::Constant" else None
    if isinstance(constant, float) and 0 < abs(constant) < 1:
        elements = math.ceil(elements / abs(constant))
    return elements


def _list_bound(value, trips: "_TripCounts") -> int | None:
    """The product of the bounds of a size list's entries (a list built in the graph), SIZED_LOOP_STEPS per
    entry of an input's shape list, None when an entry is unbounded."""
    node = value.node()
    if node.kind() == "prim::ListConstruct":
        bounds = [trips.steps(v) for v in node.inputs()]
        return None if any(b is None for b in bounds) else math.prod(max(1, b) for b in bounds)
    if node.kind() in _SIZE_OPS:
        return SIZED_LOOP_STEPS ** 2  # an input's own shape: its elements, about a batch of sequences
    if node.kind() == "prim::Constant":
        constant = value.toIValue()
        return math.prod(abs(int(v)) or 1 for v in constant) if isinstance(constant, (list, tuple)) else 1
    return None


def _nodes(graph) -> Iterator[Any]:
    for node in graph.nodes():
        yield node
        for block in node.blocks():
            yield from _nodes(block)


#: What a loop may accumulate: items appended to a list, each counted as ITEM_ELEMENTS (a batch's hidden
#: states), at most MAX_CREATED_ELEMENTS in all (4,096 steps: a few layers over a sequence); text, never
#: (no model builds strings in a loop, and doubling one 128 times is a bomb).
_ACCUMULATING = frozenset({"aten::append", "aten::extend", "aten::insert"})
ITEM_ELEMENTS = 1 << 18


def _accumulation_problem(graph, trips: "_TripCounts", outer: int = 1) -> str | None:
    """Why what a graph's loops accumulate step by step could exhaust memory, or None."""
    for node in graph.nodes():
        steps = outer
        if node.kind() == "prim::Loop":
            steps = outer * max(1, trips.steps(node.inputsAt(0)) or 1)
        elif outer > 1 and node.kind() in _ACCUMULATING and outer * ITEM_ELEMENTS > MAX_CREATED_ELEMENTS:
            return (f"a list grown{_line(node)} in loops of up to {outer:,} steps (each item counted as "
                    f"{ITEM_ELEMENTS:,} elements; at most {MAX_CREATED_ELEMENTS:,} in all)")
        elif outer > 1 and node.kind() != "prim::Constant" and any(v.type().kind() == "StringType"
                                                                   for v in node.outputs()):
            return f"text built{_line(node)} in a loop ({node.kind()}), which can grow without bound"
        for block in node.blocks():
            found = _accumulation_problem(block, trips, steps)
            if found:
                return found
    return None


def _bounds_problem(graph, trips: "_TripCounts") -> str | None:
    """Why a graph's loops could run too long or a tensor it creates exhaust memory, or None."""
    problem = _creation_problem(graph, trips)
    if problem:
        return problem
    for node in _loops(graph):
        trip = node.inputsAt(0)
        if trips.steps(trip) is None:
            return (f"a loop{_line(node)} whose length comes from {trips.why(trip)}, not from constants or the "
                    f"inputs' shape")
    steps = _most_loop_steps(graph, trips)
    if steps > MAX_LOOP_STEPS:
        return "a while loop" if steps >= 2**63 - 1 else (
            f"loops of {steps:,} steps (more than {MAX_LOOP_STEPS:,}; a loop over an input dimension counted as "
            f"{SIZED_LOOP_STEPS:,})")
    return _accumulation_problem(graph, trips)


def _loops(graph) -> Iterator[Any]:
    return (node for node in _nodes(graph) if node.kind() == "prim::Loop")


def _line(node) -> str:
    """' at line N' of the program's source, where TorchScript kept it; else ''."""
    found = re.search(r"line (\d+)", str(node.sourceRange()))
    return f" at line {found.group(1)}" if found else ""


class _TripCounts:
    """How many steps a loop's trip count can make: a constant (or an int attribute), SIZED_LOOP_STEPS for
    one computed from the inputs' shape, None when it comes from elsewhere (tensor values, loop-carried)."""

    def __init__(self, graph, module):
        self.module, self.inputs = module, list(graph.inputs())
        self._seen: dict = {}

    def steps(self, value) -> int | None:
        key = value.debugName()
        if key not in self._seen:
            self._seen[key] = None  # a cycle (none in SSA graphs) stays unbounded
            self._seen[key] = self._steps(value)
        return self._seen[key]

    def _steps(self, value) -> int | None:
        node = value.node()
        kind = node.kind()
        if kind == "prim::Constant":
            constant = value.toIValue()
            return abs(constant) if isinstance(constant, int) and not isinstance(constant, bool) else 1
        if kind == "prim::GetAttr":
            found = self._attribute(value)
            return abs(found) if isinstance(found, int) and not isinstance(found, bool) else None
        if kind in _SIZE_OPS:
            return SIZED_LOOP_STEPS
        if kind not in _SHAPE_ARITHMETIC:
            return None
        parts = [self.steps(v) for v in node.inputs()]
        if not parts or any(p is None for p in parts):
            return None
        if kind in _SUM_OPS:
            return sum(parts[:2])
        if kind in _FIRST_OPS:
            return parts[0]
        return math.prod(parts) if kind == "aten::mul" else max(parts)

    def _attribute(self, value) -> Any:
        """The value of an attribute chain ``self.a.b`` on the loaded module, or None."""
        node = value.node()
        if node.kind() != "prim::GetAttr":
            return self.module if value is self.inputs[0] else None
        owner = self._attribute(node.input())
        return None if owner is None else getattr(owner, node.s("name"), None)

    def why(self, value) -> str:
        """The first operator a trip count depends on that is not shape arithmetic."""
        stack, seen = [value], set()
        while stack:
            current = stack.pop()
            if current.debugName() in seen:
                continue
            seen.add(current.debugName())
            node = current.node()
            if node.kind() == "prim::Param":
                return "an argument or a value carried from step to step"
            if node.kind() in ("prim::Loop", "prim::If"):
                return "a value computed in a loop or a branch"
            if node.kind() not in _SHAPE_ARITHMETIC | _SIZE_OPS | {"prim::Constant", "prim::GetAttr"}:
                return f"{node.kind()} (a tensor's values)"
            if node.kind() == "prim::GetAttr" and self._attribute(current) is None:
                return "an attribute that is not a plain integer"
            stack.extend(node.inputs())
        return "values kddiag cannot bound"


def _most_loop_steps(graph, trips: "_TripCounts | None" = None, outer: int = 1) -> int:
    """The largest product of trip counts along nested ``prim::Loop`` nodes (``trips``: each count's bound;
    None: constant counts only, any other counting 1)."""
    most = outer if outer > 1 else 0
    for node in graph.nodes():
        steps = outer
        if node.kind() == "prim::Loop":
            trip = node.inputsAt(0)
            if trips is not None:
                count = trips.steps(trip) or 1
            else:
                constant = trip.node().output().toIValue() if trip.node().kind() == "prim::Constant" else 1
                count = constant if isinstance(constant, int) else 1
            steps = outer * max(1, int(count))
        for block in node.blocks():
            most = max(most, _most_loop_steps(block, trips, steps))
        most = max(most, steps if steps > 1 else 0)
    return most


def _graph_kinds(graph) -> Iterator[str]:
    """Node kinds in a graph or block, its nested blocks, and its subgraphs (``fork``), inlined."""
    import torch

    for node in graph.nodes():
        yield node.kind()
        for block in node.blocks():
            yield from _graph_kinds(block)
        for attribute in node.attributeNames():
            kind = node.kindOf(attribute)
            subgraphs = [node.g(attribute)] if kind == "g" else node.gs(attribute) if kind == "gs" else []
            for subgraph in subgraphs:
                subgraph = subgraph.copy()
                torch._C._jit_pass_inline(subgraph)
                yield from _graph_kinds(subgraph)


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
    """Refuse a ``.pt2`` archive that could run code or exhaust memory while torch reads it.

    Before ``torch.export.load`` sees a byte: that torch reads the same archive (:func:`check_one_reading`),
    members' declared sizes against the file (a decompression bomb), members torch would unpickle
    unsafely, compiled native code, and every string of the serialized program that torch turns into
    Python (:func:`program_problem`). Serialized programs are checked first, so a refusal names the
    program's own words for what it found.
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        raise KddiagError(f"{where}: not a readable torch.export program (not a zip archive: {error})") from None
    relative = relative_names(infos, where)
    check_one_reading(data, archive, where)
    check_declared_sizes(infos, len(data), where)
    reader = torch_reader(data)
    members = sorted(zip(infos, relative), key=lambda member: not _is_program(folded(member[1])))
    for info, rel in members:
        name, low = info.filename, folded(rel)  # torch's reader finds members ignoring ASCII case
        if low.startswith(_NATIVE_DIRS) or low.endswith((".so", ".dll", ".dylib")):
            raise UnsafeLoadError(f"{where}: member '{name}' is compiled native code (it can run anything); refused")
        if _is_program(low):
            _check_program(archive, info, rel, reader, where)
        elif low.endswith("_config.json") and low.startswith(("data/weights/", "data/constants/")):
            _check_payload_config(archive, info, rel, reader, where)
        elif low.endswith((".pt", ".pkl")) or low in _LEGACY_PICKLES:
            _check_weights_only(archive, info, rel, reader, where)
        elif info.compress_type != zipfile.ZIP_STORED:
            _read_member(archive, info, where, keep=False)  # what it unpacks to is what it declares


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def folded(name: str) -> str:
    """``name`` as torch's zip reader (miniz) compares member names: ASCII letters in lower case."""
    return name.translate(_ASCII_LOWER)


def relative_names(infos: list[zipfile.ZipInfo], where: str) -> list[str]:
    """Each member's name past the archive's root folder; refused when two could be one member to torch.

    Python's ``zipfile`` finds a member by its exact name; torch's reader (miniz) ignores ASCII case and,
    of several names that differ only in case, returns any one. So no two names may be equal once case
    is folded (as miniz folds it, on the stored bytes, and as Unicode folds it), backslashes are read as
    slashes and ``.``, ``..`` and empty steps dropped: what kddiag vets under a name is then what torch
    reads under it. ``torch.save`` and ``torch.export.save`` never write two such names.
    """
    relative, seen = [], set()
    for info in infos:
        name = info.filename
        relative.append(name.split("/", 1)[-1])
        try:
            raw = name.encode("utf-8" if info.flag_bits & 0x800 else "cp437")
        except UnicodeEncodeError:
            raw = name.encode("utf-8", "surrogateescape")
        keys = (("bytes", _name_key(raw.decode("latin-1")).encode("latin-1").lower()),  # as miniz folds
                ("text", _name_key(name).casefold()))
        if any(key in seen for key in keys):
            raise UnsafeLoadError(f"{where}: the archive lists a member twice ('{name}': names equal but for case "
                                  f"or path spelling are one member to torch's zip reader); refused")
        seen.update(keys)
    return relative


def _name_key(name: str) -> str:
    """A member's name past its root folder, with backslashes as slashes and no ``.``, ``..`` or empty steps."""
    relative = name.replace("\\", "/").split("/", 1)[-1]
    return "/".join(part for part in posixpath.normpath("/" + relative).split("/") if part not in ("", ".", ".."))


def torch_reader(data: bytes):
    """torch's own zip reader over ``data`` (what ``torch.export.load`` and ``torch.jit.load`` read with); None if
    it cannot read the archive (then torch cannot load it that way either)."""
    import torch

    try:
        return torch._C.PyTorchFileReader(io.BytesIO(data))
    except Exception:
        return None


def member_bytes(archive: zipfile.ZipFile, info: zipfile.ZipInfo, relative: str, reader, where: str, *,
                 limit: int | None = None, what: str = "torch.export program") -> bytes:
    """A member's bytes, read by ``zipfile`` (streamed, within its declared size) and refused unless torch's
    reader returns the same bytes for the name torch would ask it for: what is vetted is what torch loads."""
    data = _read_member(archive, info, where, limit=limit, what=what)
    if reader is not None:
        try:
            record = reader.get_record(relative)
        except Exception:
            record = None  # not under torch's root folder: torch never reads it under this name
        if record is not None and bytes(record) != data:
            raise UnsafeLoadError(f"{where}: torch's zip reader reads member '{info.filename}' differently from "
                                  f"kddiag's, so what kddiag checks is not what torch loads; refused")
    return data


def _is_program(relative: str) -> bool:
    """Members torch deserializes as a program: ``models/*.json``, or the legacy format's one."""
    return relative.startswith("models/") or relative == "serialized_exported_program.json"


def check_one_reading(data: bytes, archive: zipfile.ZipFile, where: str) -> None:
    """Refuse a zip that torch's reader (miniz) could read differently from Python's ``zipfile``.

    ``zipfile`` shifts every offset by any bytes found before the archive and finds the last end record
    in a trailing comment; miniz takes offsets as written. A file with bytes before its first member,
    after its end record, or entries its end record does not count could hold two archives, one checked
    and one loaded. ``torch.export.save`` writes none of these.
    """
    end = data[-22:]
    if end[:4] != b"PK\x05\x06":
        raise UnsafeLoadError(f"{where}: the archive has bytes after its end record (a comment or another file), "
                              f"which torch and kddiag could read as two archives; refused")
    entries, directory = int.from_bytes(end[10:12], "little"), int.from_bytes(end[16:20], "little")
    if data[-42:-38] == b"PK\x06\x07":  # a zip64 locator: both readers take the zip64 end record's numbers
        record = int.from_bytes(data[-34:-26], "little")
        if data[record:record + 4] == b"PK\x06\x06":
            entries, directory = (int.from_bytes(data[record + 32:record + 40], "little"),
                                  int.from_bytes(data[record + 48:record + 56], "little"))
    if archive.start_dir != directory or entries != len(archive.infolist()):
        raise UnsafeLoadError(f"{where}: the archive's directory is not where its end record says (bytes before "
                              f"the archive?), which torch and kddiag could read as two archives; refused")


def check_declared_sizes(infos: list[zipfile.ZipInfo], file_bytes: int, where: str, *,
                         what: str = "torch.export program") -> None:
    """Refuse members that declare more unpacked bytes than the file can honestly hold, before any is read."""
    bound = FREE_UNPACKED_BYTES + MAX_UNPACK_RATIO * file_bytes
    total = 0
    for info in infos:
        if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
            raise KddiagError(f"{where}: not a readable {what} (member '{info.filename}' declares "
                              f"{info.file_size} bytes but stores {info.compress_size})")
        total += info.file_size
        if total > bound:
            raise UnsafeLoadError(f"{where}: member '{info.filename}' unpacks to {info.file_size:,} bytes from "
                                  f"{info.compress_size:,}, past the {bound:,} bytes an archive of {file_bytes:,} "
                                  f"bytes may unpack to; refused as a decompression bomb")


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, where: str, *, limit: int | None = None,
                 keep: bool = True, what: str = "torch.export program") -> bytes:
    """A member's bytes, streamed in chunks and never past its declared size; refused over ``limit``."""
    if limit is not None and info.file_size > limit:
        raise UnsafeLoadError(f"{where}: member '{info.filename}' declares {info.file_size:,} bytes, more than "
                              f"the {limit:,} kddiag reads of it; refused")
    chunks, size = [], 0
    try:
        with archive.open(info) as member:
            while chunk := member.read(_CHUNK_BYTES):
                size += len(chunk)
                if size > info.file_size:
                    raise UnsafeLoadError(f"{where}: member '{info.filename}' unpacks past the {info.file_size:,} "
                                          f"bytes it declares; refused")
                if keep:
                    chunks.append(chunk)
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error, RuntimeError, NotImplementedError) as error:
        raise _unreadable(where, f"{info.filename}: {one_line(error)}", what) from None
    if size != info.file_size:
        raise _unreadable(where, f"member '{info.filename}' declares {info.file_size} bytes but unpacks to {size}",
                          what)
    return b"".join(chunks)


def _check_program(archive: zipfile.ZipFile, info: zipfile.ZipInfo, relative: str, reader, where: str) -> None:
    text = member_bytes(archive, info, relative, reader, where, limit=MAX_PROGRAM_TEXT_BYTES)
    try:
        program = json.loads(text)
    except (ValueError, RecursionError) as error:
        raise _unreadable(where, f"{info.filename}: {one_line(error)}") from None
    problem = program_problem(program)
    if problem is not None:
        raise UnsafeLoadError(f"{where}: member '{info.filename}' holds {problem}; refused")


def _check_payload_config(archive: zipfile.ZipFile, info: zipfile.ZipInfo, relative: str, reader,
                          where: str) -> None:
    name = info.filename
    folder = name.rsplit("/", 1)[0]
    text = member_bytes(archive, info, relative, reader, where, limit=MAX_PROGRAM_TEXT_BYTES)
    try:
        config = json.loads(text)["config"]
        entries = [(fqn, meta["path_name"], meta.get("use_pickle"), meta.get("is_param"),
                    _declared_elements(meta.get("tensor_meta"))) for fqn, meta in config.items()]
    except (KeyError, TypeError, AttributeError, ValueError, RecursionError) as error:
        raise _unreadable(where, f"{name}: {error!r}") from None
    for fqn, path_name, use_pickle, is_param, elements in entries:
        member = f"{folder}/{path_name}"
        if use_pickle or not str(path_name).startswith(("weight_", "tensor_")):
            raise UnsafeLoadError(f"{where}: member '{member}' needs unpickling (it can run code); refused")
        try:
            stored = archive.getinfo(member).file_size
        except KeyError:
            stored = None  # torch reports a missing record itself
        if elements is not None and stored is not None and elements > 2 * stored:  # ≥ half a byte per element
            raise KddiagError(f"{where}: member '{name}' declares {elements:,} elements for '{fqn}', but its "
                              f"record '{member}' holds {stored:,} bytes; refused before torch allocates them")
        if not _plain_name(fqn):
            constants = folded(folder).endswith("constants")
            kind = "constant name" if constants else "parameter name" if is_param else "buffer name"
            raise UnsafeLoadError(f"{where}: member '{name}' holds {_not_a_name(kind, fqn)}; refused")


def _declared_elements(meta) -> int | None:
    """The element count a payload config's ``tensor_meta`` declares (None when its sizes are not plain
    integers): what torch allocates for the record before reading it."""
    if not isinstance(meta, dict) or not isinstance(meta.get("sizes"), list):
        return None
    sizes = [size.get("as_int") if isinstance(size, dict) else size for size in meta["sizes"]]
    if not all(isinstance(size, int) and not isinstance(size, bool) and size >= 0 for size in sizes):
        return None
    return math.prod(sizes)


def _check_weights_only(archive: zipfile.ZipFile, info: zipfile.ZipInfo, relative: str, reader, where: str) -> None:
    import torch

    name = info.filename
    data = member_bytes(archive, info, relative, reader, where)  # the bytes torch would load
    try:
        torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:
        if "weights only load failed" in str(error).lower():
            raise UnsafeLoadError(f"{where}: member '{name}' needs unpickling (it can run code); refused") from None
        raise _unreadable(where, f"{name}: {one_line(error)}") from None


def _unreadable(where: str, detail: str, what: str = "torch.export program") -> KddiagError:
    return KddiagError(f"{where}: not a readable {what} ({detail})")


# --- what a serialized program may say: names, shape expressions, guards, structure keys -----------

#: Schema fields whose string torch uses as a Python name (pasted into generated code, or set as an
#: attribute that generated code reads), with what to call it in a refusal. ``name`` and ``as_name``
#: are named by where they sit (:func:`_name_kind`).
_NAME_FIELDS = {
    "parameter_name": "parameter name", "buffer_name": "buffer name", "tensor_constant_name": "constant name",
    "custom_obj_name": "custom object name", "class_fqn": "custom object class", "user_input_name": "input name",
    "fqn": "module path", "target": "operator name", "as_operator": "operator name",
    "forward_arg_names": "forward argument name", "field_names": "namedtuple field name",
}
#: Maps keyed by names (of values, symbols), with what to call a key.
_NAME_MAPS = {"tensor_values": "value name", "sym_int_values": "value name", "sym_bool_values": "value name",
              "sym_float_values": "value name", "custom_obj_values": "custom object name",
              "range_constraints": "symbol name"}
_FREE_KEY_MAPS = frozenset({"as_string_to_argument", "treespec_namedtuple_fields"})  # keys kept as data
_FREE_TEXT = frozenset({"metadata", "opset_version"})  # text torch keeps as data (stack traces, versions)
_FIRST_FIELDS = {"name": 0, "signature": 1, "module_call_graph": 2}  # checked first: the clearest refusal
_MAX_SYMBOL_INDEX = 100_000  # a program with more unbacked sizes than this is not one kddiag can run anyway


def program_problem(program) -> str | None:
    """What in a serialized torch.export program (its parsed JSON) torch would turn into code; None if plain.

    Names must be plain dotted Python identifiers, shape expressions plain sympy arithmetic, guards
    plain shape checks, and the keys of input/output structures plain text.
    """
    stack = [(program, ())]
    while stack:
        value, path = stack.pop()
        field = path[-1] if path else ""
        if isinstance(value, dict):
            if field in _FREE_TEXT:
                continue
            if field in _NAME_MAPS or field in _FREE_KEY_MAPS:
                for key in value:
                    if field in _NAME_MAPS and not _plain_name(key):
                        return _not_a_name(_NAME_MAPS[field], key)
                    if field == "range_constraints" and _symbol_index(key) > _MAX_SYMBOL_INDEX:
                        return (f"a symbol name {_shown(key)} whose index torch would count up to one by one "
                                f"(a hang)")
                stack.extend((child, (*path, "*")) for child in reversed(list(value.values())))
                continue
            items = sorted(value.items(), key=lambda item: _FIRST_FIELDS.get(item[0], len(_FIRST_FIELDS)))
            stack.extend((child, (*path, key)) for key, child in reversed(items))
        elif isinstance(value, list):
            stack.extend((child, path) for child in reversed(value))
        elif isinstance(value, str):
            problem = _string_problem(value, path)
            if problem is not None:
                return problem
    return None


def _string_problem(value: str, path: tuple[str, ...]) -> str | None:
    field = path[-1] if path else ""
    if field in ("name", "as_name") or field in _NAME_FIELDS:
        kind = _NAME_FIELDS.get(field) or _name_kind(path)
        return None if _plain_name(value) else _not_a_name(kind, value)
    if field == "expr_str" and not _plain_expression(value):
        return f"a shape expression {_shown(value)} that is not plain arithmetic (torch evaluates it as Python)"
    if field == "guards_code" and not _plain_guard(value):
        return f"a guard {_shown(value)} that is not a plain shape check (torch runs guards as code)"
    if field in ("in_spec", "out_spec"):
        return _treespec_problem(value)
    if field == "as_string" and ("constant_input" in path or path[-3:-1] == ("graph", "inputs")):
        return None if _plain_text(value) else _not_plain_text("string input", value)
    return None


def _name_kind(path: tuple[str, ...]) -> str:
    """What a ``name`` field names, from where it sits in the program."""
    parent = path[-2] if len(path) > 1 else ""
    if parent == "as_graph":
        return "subgraph name"
    if "input_specs" in path:
        return "input name"
    if "output_specs" in path:
        return "output name"
    if parent == "nodes":
        return "node name"
    if path[-3:-1] == ("nodes", "inputs"):
        return "argument name"
    if "nodes" not in path and "inputs" in path:
        return "input name"
    if "nodes" not in path and "outputs" in path:
        return "output name"
    return "value name"


def _plain_name(name) -> bool:
    """A plain dotted Python name, or empty: each part an identifier but not a keyword, or an index (``layers.0``)."""
    return not isinstance(name, str) or name == "" or all(
        part.isidentifier() and not keyword.iskeyword(part) or part.isascii() and part.isdigit()
        for part in name.split("."))


def _symbol_index(name) -> int:
    """The index in an unbacked symbol's name (``u12``, ``zuf3``), which torch counts up to while loading; else 0."""
    found = re.fullmatch(r"(?:u|zuf)([0-9]+)", name) if isinstance(name, str) else None
    if found is None:
        return 0
    return int(found.group(1)) if len(found.group(1)) <= 12 else _MAX_SYMBOL_INDEX + 1


def _plain_text(text: str) -> bool:
    """Text that cannot end a Python string literal or a line: no quotes, backslashes or control characters."""
    return text.isprintable() and not any(quote in text for quote in "'\"\\")


def _not_plain_text(kind: str, value: str) -> str:
    return f"{_a(kind)} {_shown(value)} with quotes or control characters (torch pastes it into code)"


def _shown(value: str) -> str:
    shown = ascii(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def _not_a_name(kind: str, value: str) -> str:
    return f"{_a(kind)} {_shown(value)} that is not a plain Python name (torch pastes names into code)"


def _a(kind: str) -> str:
    return f"{'an' if kind[0] in 'aeiou' else 'a'} {kind}"


#: Names a shape expression may use (torch's printer writes them for ``sympy.sympify``): sympy's
#: constructors and constants, and torch's own sympy functions. Anything else (builtins such as
#: ``__import__`` or ``eval``, sympy helpers such as ``lambdify``) would run under ``eval``.
_SYMPY_NAMES = frozenset({
    "Symbol", "Dummy", "Integer", "Float", "Rational", "Add", "Mul", "Pow", "Mod", "Max", "Min", "Abs", "floor",
    "ceiling", "sqrt", "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "Equality", "Unequality", "StrictLessThan",
    "StrictGreaterThan", "LessThan", "GreaterThan", "And", "Or", "Not", "Xor", "Piecewise", "ExprCondPair",
    "true", "false", "oo", "zoo", "nan", "int_oo", "IntInfinity", "NegativeIntInfinity", "Infinity",
    "NegativeInfinity", "Zero", "One", "NegativeOne", "Half", "BooleanTrue", "BooleanFalse",
    "FloorDiv", "ModularIndexing", "Where", "PythonMod", "CleanDiv", "CeilToInt", "FloorToInt", "CeilDiv",
    "LShift", "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv", "IntTrueDiv",
    "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt", "RoundToInt", "RoundDecimal", "ToFloat",
    "Identity",
})
_SYMPY_NAME = re.compile(r"(OpaqueUnaryFn|BitwiseFn)_[A-Za-z0-9_]+")
_SYMBOL = re.compile(r"[a-z]+[0-9_]*[0-9]")  # torch's symbols: s0, u3, zuf0, ...
_SYMBOL_TEXT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?|[-+]?(inf|nan)")
_POWERS = frozenset({"Pow", "PowByNatural", "FloatPow", "LShift"})
_MAX_INT = 1 << 64
_MAX_EXPONENT = 64
_MAX_POWER_CONSTANTS = 8  # so a power's base is below 2**512 and its exponent at most 512: ~32 KB, no hang


_OPERATOR_NODES = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Compare, ast.BoolOp, ast.operator, ast.unaryop,
                   ast.cmpop, ast.boolop, ast.Load)


@functools.lru_cache(maxsize=4096)  # a program repeats its few expressions many times
def _plain_expression(text: str) -> bool:
    """Whether ``sympy.sympify`` would only build arithmetic from ``text`` (it evaluates it as Python)."""
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    texts: set[int] = set()  # ids of string constants allowed where they stand: a Symbol's name, a Float's digits
    return all(_plain_node(node, texts) for node in ast.walk(tree))  # a call is walked before its arguments


def _plain_node(node: ast.AST, texts: set[int]) -> bool:
    """Whether one node of a shape expression builds only arithmetic: operators (powers bounded), sympy
    names and symbols, small constants, sympy calls (:func:`_plain_call`) and their keywords."""
    if isinstance(node, _OPERATOR_NODES):
        return not _is_power(node) or _bounded_power(node)
    if isinstance(node, ast.Name):
        return bool(node.id in _SYMPY_NAMES or _SYMPY_NAME.fullmatch(node.id) or _SYMBOL.fullmatch(node.id))
    if isinstance(node, ast.Constant):
        return _plain_constant(node, texts)
    if isinstance(node, ast.Call):
        return _plain_call(node, texts)
    return isinstance(node, ast.keyword)


def _plain_constant(node: ast.Constant, texts: set[int]) -> bool:
    """None, a bool, a float, an int of at most 64 bits, or a string a call allowed (in ``texts``)."""
    value = node.value
    if isinstance(value, str):
        return id(node) in texts
    return value is None or isinstance(value, (bool, float)) or isinstance(value, int) and abs(value) <= _MAX_INT


def _plain_call(node: ast.Call, texts: set[int]) -> bool:
    """A sympy constructor called without ``*``/``**`` and with bool or int keywords (a power bounded);
    a Symbol's or Dummy's name and a Float's digits given as text are added to ``texts``."""
    if not (isinstance(node.func, ast.Name) and node.func.id in _SYMPY_NAMES or _is_opaque_call(node)):
        return False
    if any(isinstance(arg, ast.Starred) for arg in node.args) or any(
            kw.arg is None or not (isinstance(kw.value, ast.Constant) and type(kw.value.value) in (bool, int))
            for kw in node.keywords):
        return False
    first = node.args[0] if node.args else None
    if isinstance(first, ast.Constant) and isinstance(first.value, str):
        pattern = _SYMBOL_TEXT if node.func.id in ("Symbol", "Dummy") else _FLOAT_TEXT
        if node.func.id in ("Symbol", "Dummy", "Float") and pattern.fullmatch(first.value):
            texts.add(id(first))
    return not _is_power(node) or _bounded_power(node)


def _is_opaque_call(node: ast.Call) -> bool:
    return isinstance(node.func, ast.Name) and bool(_SYMPY_NAME.fullmatch(node.func.id))


def _is_power(node) -> bool:
    if isinstance(node, ast.BinOp):  # sympify reads ^ as **
        return isinstance(node.op, (ast.Pow, ast.LShift, ast.BitXor))
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _POWERS


def _bounded_power(node) -> bool:
    """A power whose value stays small: no power inside it, few constants, a small constant exponent."""
    base, exponent = (node.left, node.right) if isinstance(node, ast.BinOp) else (node.args + [None, None])[:2]
    if base is None or exponent is None:
        return True  # sympy refuses the call itself
    inner = [*ast.walk(base), *ast.walk(exponent)]
    constants = [child for child in inner if isinstance(child, ast.Constant) and type(child.value) is int]
    in_exponent = {id(child) for child in ast.walk(exponent)}
    return (not any(_is_power(child) for child in inner) and len(constants) <= _MAX_POWER_CONSTANTS
            and all(abs(child.value) <= _MAX_EXPONENT for child in constants if id(child) in in_exponent))


_GUARD_ATTRIBUTES = frozenset({"size", "stride", "storage_offset", "dim", "numel"})
_GUARD_FUNCTIONS = frozenset({"abs", "max", "min", "round", "int", "float", "bool"})


def _plain_guard(text: str) -> bool:
    """Whether a guard only compares input sizes (``L['x'].size()[0] >= 2``): torch ``exec``s guards."""
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    for node in ast.walk(tree):
        if isinstance(node, (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Compare, ast.BoolOp, ast.operator,
                             ast.unaryop, ast.cmpop, ast.boolop, ast.Load, ast.Subscript)):
            continue
        if isinstance(node, ast.Name):
            ok = node.id in ("L", "math") or node.id in _GUARD_FUNCTIONS
        elif isinstance(node, ast.Constant):
            ok = not isinstance(node.value, bytes) and (not isinstance(node.value, str) or _plain_text(node.value))
        elif isinstance(node, ast.Attribute):
            ok = node.attr in _GUARD_ATTRIBUTES or (
                isinstance(node.value, ast.Name) and node.value.id == "math" and not node.attr.startswith("_"))
        elif isinstance(node, ast.Call):
            ok = not node.keywords and (isinstance(node.func, ast.Attribute) or (
                isinstance(node.func, ast.Name) and node.func.id in _GUARD_FUNCTIONS))
        else:
            ok = False
        if not ok:
            return False
    return True


#: ``defaultdict`` factories an input/output structure may name; torch imports whatever module it names.
_DEFAULT_FACTORIES = frozenset({"list", "dict", "set", "int", "float", "str", "tuple", "bool", "frozenset"})


def _treespec_problem(text: str) -> str | None:
    """What in a serialized input/output structure (a pytree spec) would import modules or break code."""
    try:
        spec = json.loads(text)
    except (ValueError, RecursionError):
        return f"an input/output structure {_shown(text)} that is not JSON"
    stack = [spec]
    while stack:
        value = stack.pop()
        if isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, dict):
            if "type" in value and "children_spec" in value:  # a node of the spec
                if isinstance(value["type"], str) and not _plain_name(value["type"]):
                    return _not_a_name("input/output type", value["type"])
                context = value.get("context")
                if isinstance(context, str):
                    try:
                        stack.append(json.loads(context))
                    except (ValueError, RecursionError):
                        stack.append(context)  # a type's own context text: checked as text below
                stack.extend(value["children_spec"] if isinstance(value["children_spec"], list) else [])
                continue
            if "__enum__" in value:
                return (f"an enum key {_shown(str(value.get('fqn')))} in an input/output structure (torch imports "
                        f"its module)")
            if "default_factory_module" in value and (value.get("default_factory_module") != "builtins"
                                                      or value.get("default_factory_name") not in _DEFAULT_FACTORIES):
                return (f"a defaultdict factory {_shown(str(value.get('default_factory_module')))} in an input/output "
                        f"structure (torch imports its module)")
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, str) and not _plain_text(value):
            return _not_plain_text("input/output key", value)
    return None
