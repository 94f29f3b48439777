"""Precomputed logits: ``.npy`` (the eval set), ``.npz`` and ``.pt`` (a tensor, or a dict of sets and labels).

Keys: ``logits``/``eval``/``eval_logits`` for the eval set, ``transfer``/``transfer_logits`` for the
transfer set; labels beside them under ``labels``/``y``/``eval_labels``/``transfer_labels``. A ``.npz``
may hold top-k logits instead (:mod:`.topk`). The
logits are kept as stored: :class:`~kddiag.outputs.ModelOutputs` checks their shape and values.
"""
from __future__ import annotations

import math
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from kddiag.errors import KddiagError
from kddiag.loading._text import first, one_line
from kddiag.loading.topk import KEYS, topk_sets
from kddiag.checks import check_class_ids
from kddiag.inputs import LoadedModel
from kddiag.types import EVAL, MAX_CLASSES, TRANSFER

# logits-file keys: which set each names
_LOGITS_KEYS = {"logits": EVAL, "eval": EVAL, "eval_logits": EVAL, "transfer": TRANSFER, "transfer_logits": TRANSFER}
_LABEL_KEYS = {"labels": EVAL, "y": EVAL, "eval_labels": EVAL, "transfer_labels": TRANSFER}

# A .npz is inflated into memory whole (a .npy is memory-mapped). Decompression may add at most this many
# bytes to what the file holds on disk: an 8 MB file can declare a 7.45 GiB member, and numpy allocates
# what a member's header declares before reading it. Checked from the headers, before anything is inflated;
# raise it for a file you trust (or save the arrays uncompressed, np.savez, or as .npy / .pt).
MAX_NPZ_INFLATED_BYTES = 4 << 30
# … and at most this many bytes per byte the file holds, beyond FREE_NPZ_BYTES: real arrays deflate a few-fold
# (MNIST's pixels about 8×); an array of zeros, a thousand-fold
MAX_NPZ_RATIO, FREE_NPZ_BYTES = 100, 64 << 20

# A tensor from a .pt file may declare far more elements than its storage holds (a zero-stride view: a
# 2 KB file can declare 10^10 rows). Before anything materializes one (isfinite, contiguous, numpy()), its
# declared bytes must fit the bytes actually stored, and this ceiling.
MAX_TENSOR_BYTES = 8 << 30


def check_stored_tensor(value: Any, where: str, name: str) -> None:
    """Refuse a tensor that declares more bytes than its storage holds (a zero-stride or overlapping view)
    or more than :data:`MAX_TENSOR_BYTES`, or that is not a plain dense tensor; anything else passes."""
    import torch

    if not isinstance(value, torch.Tensor):
        return
    shape = _shape(tuple(value.shape))
    if value.layout != torch.strided:
        raise KddiagError(f"{where}: tensor '{name}' is {str(value.layout).removeprefix('torch.')}; expected a "
                          f"dense tensor")
    try:
        stored = value.untyped_storage().nbytes()
    except Exception:
        raise KddiagError(f"{where}: tensor '{name}' {shape} has no storage of its own; expected a dense "
                          f"tensor") from None
    declared = value.numel() * value.element_size()
    if declared > stored:
        raise KddiagError(f"{where}: tensor '{name}' declares shape {shape} ({_bytes(declared)}) but stores only "
                          f"{_bytes(stored)} (a zero-stride or overlapping view); save it with .contiguous()")
    if declared > MAX_TENSOR_BYTES:
        raise KddiagError(f"{where}: tensor '{name}' {shape} holds {_bytes(declared)}, over kddiag's limit of "
                          f"{_bytes(MAX_TENSOR_BYTES)} (kddiag.loading.logits.MAX_TENSOR_BYTES)")


def load_npy(path: Path, where: str) -> LoadedModel:
    """A ``.npy`` file: the eval set's logits."""
    return _logits_model(path, {EVAL: _read_npy(path, where)}, {}, where)


def load_npz(path: Path, where: str) -> LoadedModel:
    """A ``.npz`` file of logits (and labels) under the keys above, or of top-k logits (:mod:`.topk`)."""
    content = read_npz(path, where)
    if set(content) & {key for keys in KEYS.values() for key in keys[:2]}:
        if set(content) & set(_LOGITS_KEYS):
            raise KddiagError(f"{where}: holds both full and top-k logits; keep one kind per file")
        sets = topk_sets(content, where)
        labels = {set_name: _labels_array(content[key], where, key) for key, set_name in _LABEL_KEYS.items()
                  if key in content}
        model = _logits_model(path, sets, labels, where)
        k = next(iter(sets.values())).k
        note = (f"top-{k} logits of {next(iter(sets.values())).n_classes:,} classes: the other classes share the "
                f"remaining probability evenly (exact: accuracy, agreement, max-probability calibration, p_y where y "
                f"is in the top {k}; the rest approximate)")
        return LoadedModel(source=model.source, format="logits", logits=model.logits, labels=model.labels,
                           notes=(note,))
    if not set(content) & set(_LOGITS_KEYS):
        raise KddiagError(f"{where}: no logits (keys: {first(content)}); expected 'logits' or 'eval' for the "
                          f"eval set and/or 'transfer' for the transfer set, or top-k logits ('topk_ids', "
                          f"'topk_logprobs', 'n_classes')")
    return _load_logits_dict(path, content, where)


def logits_from(path: Path, content: Any, where: str) -> LoadedModel:
    """A logits-mode model from a ``torch.save`` file's content: a tensor (the eval set) or a logits dict."""
    if isinstance(content, Mapping):
        return _load_logits_dict(path, content, where)
    check_stored_tensor(content, where, "logits (the whole file)")
    return _logits_model(path, {EVAL: _as_array(content)}, {}, where)


def is_logits_dict(content: Mapping) -> bool:
    keys = set(content)
    return bool(keys & set(_LOGITS_KEYS)) and keys <= set(_LOGITS_KEYS) | set(_LABEL_KEYS)


def _load_logits_dict(path: Path, content: Mapping, where: str) -> LoadedModel:
    for key in (*_LOGITS_KEYS, *_LABEL_KEYS):
        check_stored_tensor(content.get(key), where, key)
    logits: dict[str, np.ndarray] = {}
    for key, set_name in _LOGITS_KEYS.items():
        if key in content:
            if set_name in logits:
                raise KddiagError(f"{where}: holds {set_name} logits twice; use only one of "
                                  f"{', '.join(k for k, s in _LOGITS_KEYS.items() if s == set_name)}")
            logits[set_name] = _as_array(content[key])
    labels: dict[str, np.ndarray] = {}
    for key, set_name in _LABEL_KEYS.items():
        if key in content:
            labels[set_name] = _labels_array(content[key], where, key)
    return _logits_model(path, logits, labels, where)


def _logits_model(path: Path, logits: dict, labels: dict, where: str) -> LoadedModel:
    """Logits as stored; :class:`~kddiag.outputs.ModelOutputs` checks their shape and values when collected.
    Integer or boolean arrays are refused: logits are real-valued scores, and whole numbers stored as logits
    are more likely class ids, votes or counts than a model's outputs."""
    for set_name, array in logits.items():
        if np.ndim(array) == 2 and np.shape(array)[1] > MAX_CLASSES:
            raise KddiagError(f"{where}: the {set_name} logits have {np.shape(array)[1]:,} classes, over kddiag's "
                              f"limit of {MAX_CLASSES:,} (kddiag.types.MAX_CLASSES; the largest vocabularies in use "
                              f"have 262,144 entries): kddiag keeps a sample of whole rows")
        if isinstance(array, np.ndarray) and array.dtype.kind in "biu":
            raise KddiagError(f"{where}: the {set_name} logits are whole numbers ({array.dtype}); logits are a "
                              f"model's real-valued scores (n_samples, n_classes), stored as floating point (whole "
                              f"numbers look like class ids, votes or counts): save the model's float outputs")
    for set_name, array in labels.items():
        if set_name not in logits:
            raise KddiagError(f"{where}: has {set_name} labels but no {set_name} logits")
        rows = np.shape(logits[set_name])[:1]
        if rows != (len(array),):
            raise KddiagError(f"{where}: {rows[0] if rows else 'no'} rows of {set_name} logits but "
                              f"{len(array)} labels")
    return LoadedModel(source=str(path), format="logits", logits=logits, labels=labels or None)


def read_npz(path: Path, where: str) -> dict[str, np.ndarray]:
    """Every array of a ``.npz`` file, never unpickled; a file that is not one says so."""
    _check_magic(path, (b"PK\x03\x04", b"PK\x05\x06"), ".npz (a zip of .npy arrays)", where)
    check_npz_sizes(path, where)
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except Exception as error:
        raise KddiagError(f"{where}: not a readable .npz file ({_numpy_reason(error)})") from None


def check_npz_sizes(path: Path, where: str) -> None:
    """Refuse a ``.npz`` whose arrays would not fit its bounds, from the zip directory and each member's
    ``.npy`` header alone (nothing is inflated beyond the headers): each header's shape × itemsize must fit
    in the bytes its member declares, no member may appear twice, and inflating every member may add at
    most :data:`MAX_NPZ_INFLATED_BYTES` to the bytes the file holds, nor inflate them more than
    :data:`MAX_NPZ_RATIO`-fold beyond :data:`FREE_NPZ_BYTES`."""
    inflated, compressed, largest = 0, 0, ("", 0, "")
    try:
        with zipfile.ZipFile(path) as archive:
            seen: set[str] = set()
            for info in archive.infolist():
                if info.filename in seen:
                    raise KddiagError(f"{where}: member '{_clip(info.filename)}' appears twice; a .npz holds each "
                                      f"array once")
                seen.add(info.filename)
                described = _member_array(archive, info, where)
                inflated, compressed = inflated + info.file_size, compressed + info.compress_size
                if info.file_size > largest[1]:
                    largest = (info.filename, info.file_size, described)
    except KddiagError:
        raise
    except Exception as error:  # a damaged zip directory or header
        raise KddiagError(f"{where}: not a readable .npz file ({_numpy_reason(error)})") from None
    if inflated > FREE_NPZ_BYTES + MAX_NPZ_RATIO * compressed and inflated - compressed <= MAX_NPZ_INFLATED_BYTES:
        name, size, described = largest
        raise KddiagError(f"{where}: its arrays inflate {inflated / max(compressed, 1):,.0f}-fold, from "
                          f"{_bytes(compressed)} to {_bytes(inflated)} (member '{_clip(name)}': "
                          f"{described or _bytes(size)}); kddiag reads at most {MAX_NPZ_RATIO}-fold beyond "
                          f"{_bytes(FREE_NPZ_BYTES)}: save large arrays uncompressed (np.savez) or as .npy or .pt")
    if inflated - compressed > MAX_NPZ_INFLATED_BYTES:
        name, size, described = largest
        raise KddiagError(f"{where}: its arrays inflate from {_bytes(compressed)} to {_bytes(inflated)} (member "
                          f"'{_clip(name)}': {described or _bytes(size)}), over kddiag's limit of "
                          f"{_bytes(MAX_NPZ_INFLATED_BYTES)} added by decompression "
                          f"(kddiag.loading.logits.MAX_NPZ_INFLATED_BYTES); save large arrays uncompressed "
                          f"(np.savez) or as .npy or .pt")


def _member_array(archive: zipfile.ZipFile, info: zipfile.ZipInfo, where: str) -> str:
    """The array a member's ``.npy`` header declares ('float32 (540, 10)'), checked against the member's
    declared size; '' for a member that is not a ``.npy`` (numpy reads it as bytes)."""
    from numpy.lib import format as npy

    with archive.open(info) as member:
        if member.read(6) != b"\x93NUMPY":
            return ""
        member.seek(0)
        version = npy.read_magic(member)
        if version not in ((1, 0), (2, 0), (3, 0)):
            raise KddiagError(f"{where}: member '{_clip(info.filename)}' is a .npy of unknown version {version}: "
                              f"corrupt or written by a newer numpy")
        read_header = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
        shape, _, dtype = read_header(member)
        header_size = member.tell()
    if dtype.hasobject:
        raise KddiagError(f"{where}: member '{_clip(info.filename)}' holds Python objects (object arrays), "
                          f"which kddiag never unpickles; save numeric arrays")
    described = f"{dtype} {_shape(shape)}"
    declared = math.prod(shape) * dtype.itemsize
    if declared < 0 or declared > info.file_size - header_size:
        raise KddiagError(f"{where}: member '{_clip(info.filename)}' is corrupt: its header declares {described} "
                          f"({_bytes(declared)}) but the member holds {_bytes(max(0, info.file_size - header_size))}")
    return described


def _bytes(n: int) -> str:
    """A byte count as a person reads it: '7.45 GiB', '512 bytes'."""
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= size:
            return f"{n / size:,.2f} {unit}"
    return f"{n} bytes"


def _shape(shape: tuple) -> str:
    """A shape as messages show it: at most six dimensions written out."""
    if len(shape) <= 6:
        return str(tuple(shape))
    return f"({', '.join(map(str, shape[:6]))}, … {len(shape)} dimensions)"


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text):,} characters)"


def _read_npy(path: Path, where: str) -> np.ndarray:
    """A ``.npy`` array memory-mapped read-only in its own dtype: rows are read from disk batch by batch."""
    _check_magic(path, (b"\x93NUMPY",), ".npy", where)
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as error:
        raise KddiagError(f"{where}: not a readable .npy file ({_numpy_reason(error)})") from None


def _check_magic(path: Path, magics: tuple[bytes, ...], kind: str, where: str) -> None:
    with open(path, "rb") as handle:
        head = handle.read(max(len(m) for m in magics))
    if not head.startswith(magics):
        raise KddiagError(f"{where}: not a {kind} file (it does not start like one: corrupt, truncated or "
                          f"another format)")


def _numpy_reason(error: Exception) -> str:
    if "max_header_size" in str(error):  # numpy's advice: trust the file with allow_pickle=True
        return "a .npy header is longer than numpy reads safely (10,000 characters): corrupt or crafted"
    if "allow_pickle" in str(error) or "Python objects" in str(error):  # numpy's advice names options kddiag lacks
        return "it holds Python objects (object arrays), which kddiag never unpickles; save numeric arrays"
    if "mmap length is greater than file size" in str(error):
        return "truncated: the file is shorter than its header says"
    return one_line(error)


def _as_array(value: Any) -> np.ndarray:
    """A numpy array of ``value`` in its own dtype; bfloat16 tensors become float32 (numpy has no bfloat16)."""
    import torch

    if isinstance(value, torch.Tensor):
        value = value.detach().to("cpu", torch.float32 if value.dtype == torch.bfloat16 else value.dtype).numpy()
    return np.asarray(value)


def _labels_array(value: Any, where: str, key: str) -> np.ndarray:
    return check_class_ids(value, f"{where}: labels '{key}'")
