"""Load teachers and students: checkpoints of every common kind, or precomputed logits.

Formats are recognized by content where possible, by extension otherwise:

- ``torch.export`` programs (``.pt2``) and TorchScript archives: architecture included, no pickle.
- state dicts (``.pt``/``.pth`` read with ``weights_only=True``, ``.safetensors``) plus an
  architecture: ``package.module:callable`` or a built-in name (:mod:`kddiag.models`). Training
  framework layouts (``{'model': sd}``, ``{'state_dict': sd}``, ``module.``/``model.`` prefixes,
  ``{'student': sd, 'teacher': sd}``, epochs and optimizer states beside the weights) are unwrapped.
- a whole pickled ``nn.Module`` (``torch.save(model)``): only with ``trust_pickle=True``, since
  unpickling runs code from the file.
- logits (``.npy``, ``.npz``, ``.pt`` holding an (n_samples, n_classes) tensor or a dict of them).

Distillation settings stored with a checkpoint (``temperature``/``tau``/``T``, ``alpha`` at the top
level or under ``config``/``kd``/``distillation``/...; a ``kddiag.json`` extra file in torch.export
and TorchScript archives; safetensors header metadata) end up in ``LoadedModel.metadata``.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import sys
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from kddiag.errors import KddiagError, UnsafeLoadError
from kddiag.types import EVAL, TRANSFER, ClassInfo, LoadedModel

__all__ = ["load_model", "load_class_info", "logits_of", "METADATA_FILE"]

METADATA_FILE = "kddiag.json"  # extra file in torch.export / TorchScript archives: {"temperature": 4, "alpha": 0.9}

_EXTENSIONS = {".npy": "npy", ".npz": "npz", ".safetensors": "safetensors", ".pt2": "torch.export",
               ".pt": "torch", ".pth": "torch", ".bin": "torch", ".ckpt": "torch", ".tar": "torch",
               ".ts": "torchscript", ".jit": "torchscript", ".torchscript": "torchscript"}
# logits-file keys: which set each names
_LOGITS_KEYS = {"logits": EVAL, "eval": EVAL, "eval_logits": EVAL, "transfer": TRANSFER, "transfer_logits": TRANSFER}
_LABEL_KEYS = {"labels": EVAL, "y": EVAL, "eval_labels": EVAL, "transfer_labels": TRANSFER}
# where training frameworks keep the weights, and which prefixes they add to names
_WEIGHT_KEYS = ("state_dict", "model_state_dict", "model", "student", "teacher", "net", "network",
                "module", "weights", "params", "model_ema", "ema")
_PREFIXES = ("module.", "model.", "student.", "teacher.", "_orig_mod.", "net.")
_SETTING_NAMES = {"temperature": ("temperature", "tau", "T"), "alpha": ("alpha",)}
_CONFIG_KEYS = ("config", "kd", "distillation", "hparams", "hyper_parameters", "hyperparameters", "args", "cfg")


def load_model(path: str | os.PathLike, *, arch: str | None = None, trust_pickle: bool = False,
               role: str = "teacher") -> LoadedModel:
    """Load a checkpoint or a logits file as a :class:`~kddiag.types.LoadedModel`.

    ``arch`` builds the model a state dict belongs to: ``'package.module:callable'`` (called with no
    arguments; the current directory is importable) or a built-in name. ``trust_pickle`` allows
    unpickling whole modules. ``role`` ('teacher', 'student', 'baseline') names the file in errors.

    >>> load_model("student.pt", arch="mlp:64-32-10", role="student").format
    'state_dict'
    """
    path = Path(path)
    where = f"{role} checkpoint '{path}'"
    if not path.exists():
        raise KddiagError(f"{where}: no such file")
    if not path.is_file():
        raise KddiagError(f"{where}: not a file")
    if path.stat().st_size == 0:
        raise KddiagError(f"{where}: the file is empty")
    kind = _sniff(path) or _EXTENSIONS.get(path.suffix.lower())
    if kind is None:
        raise KddiagError(f"{where}: unknown format (extension '{path.suffix or 'none'}', content not recognized); "
                          f"expected .pt2, TorchScript, .pt/.pth/.safetensors state dict, or .npy/.npz/.pt logits")
    if kind == "npy":
        return _logits_model(path, {EVAL: _read_npy(path, where)}, {}, where)
    if kind == "npz":
        return _load_npz(path, where)
    if kind == "torch.export":
        return _load_export(path, where)
    if kind == "torchscript":
        return _load_torchscript(path, where)
    if kind == "safetensors":
        weights, metadata = _read_safetensors(path, where)
        return _state_dict_model(path, weights, arch, role, where, metadata)
    return _load_torch_file(path, arch, trust_pickle, role, where)


def load_class_info(path: str | os.PathLike) -> ClassInfo:
    """Read class names and groups from JSON ``{"names": [str, ...], "groups": [int | str, ...]}``.

    Either key may be absent. String groups are numbered in order of first appearance.

    >>> load_class_info("classes.json").groups
    (0, 0, 1)
    """
    where = f"--classes '{path}'"
    try:
        content = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KddiagError(f"{where}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise KddiagError(f"{where}: not a readable JSON file ({_one_line(error)})") from None
    if not isinstance(content, dict):
        raise KddiagError(f'{where}: expected a JSON object {{"names": [...], "groups": [...]}}; '
                          f"got {type(content).__name__}")
    unknown = sorted(set(content) - {"names", "groups"})
    if unknown:
        raise KddiagError(f"{where}: unknown keys {', '.join(map(repr, unknown))}; expected 'names' and/or 'groups'")
    names, groups = content.get("names"), content.get("groups")
    if names is not None:
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise KddiagError(f"{where}: 'names' must be a non-empty list of strings; got {_describe(names)}")
        names = tuple(names)
    if groups is not None:
        if not isinstance(groups, list) or not groups:
            raise KddiagError(f"{where}: 'groups' must be a non-empty list of group ids; got {_describe(groups)}")
        if all(isinstance(g, str) for g in groups):
            ids: dict[str, int] = {}
            groups = tuple(ids.setdefault(g, len(ids)) for g in groups)
        elif all(isinstance(g, int) and not isinstance(g, bool) and g >= 0 for g in groups):
            groups = tuple(groups)
        else:
            raise KddiagError(f"{where}: 'groups' must hold one group per class, all integers >= 0 or all "
                              f"strings; got {_describe(groups)}")
    try:
        return ClassInfo(names=names, groups=groups)
    except KddiagError as error:
        raise KddiagError(f"{where}: {error}") from None


def logits_of(output: Any):
    """The logits tensor in a model's output: a tensor, a tuple/list (first item) or ``.logits``."""
    import torch

    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, Mapping) and isinstance(output.get("logits"), torch.Tensor):
        return output["logits"]
    if isinstance(output, (tuple, list)) and output:
        return logits_of(output[0])
    raise KddiagError(f"model output of type {type(output).__name__} holds no logits; expected a tensor, "
                      f"a tuple/list whose first item is the logits, or an object with .logits")


# --- format detection -------------------------------------------------------------------------

def _sniff(path: Path) -> str | None:
    """The format read from the file's first bytes or zip member names; None when not recognized."""
    with open(path, "rb") as handle:
        head = handle.read(16)
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError):
            return None
        if names and all(name.endswith(".npy") for name in names):
            return "npz"
        if any(name.endswith("/archive_format") or "/models/" in name for name in names):
            return "torch.export"
        if any("/code/" in name or name.endswith("/constants.pkl") for name in names):
            return "torchscript"
        if any(name.endswith("data.pkl") for name in names):
            return "torch"
        return None
    if len(head) >= 9 and head[8:9] == b"{":
        header_size = int.from_bytes(head[:8], "little")
        if 0 < header_size <= path.stat().st_size - 8:
            return "safetensors"
    if head[:1] == b"\x80":  # a legacy (non-zip) torch.save pickle
        return "torch"
    return None


# --- archives with their own architecture ----------------------------------------------------

def _load_export(path: Path, where: str) -> LoadedModel:
    import torch

    extra = {METADATA_FILE: ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.load(str(path), extra_files=extra)
            module = program.module()
    except Exception as error:
        raise KddiagError(f"{where}: not a readable torch.export program ({_one_line(error)})") from None
    return LoadedModel(source=str(path), format="torch.export", module=module,
                       metadata=_metadata_file(extra[METADATA_FILE], where))


def _load_torchscript(path: Path, where: str) -> LoadedModel:
    import torch

    extra = {METADATA_FILE: ""}
    try:
        with warnings.catch_warnings():  # torch.jit is deprecated but still loads
            warnings.simplefilter("ignore")
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as error:
        raise KddiagError(f"{where}: not a readable TorchScript archive ({_one_line(error)})") from None
    text = extra[METADATA_FILE]
    return LoadedModel(source=str(path), format="torchscript", module=module,
                       metadata=_metadata_file(text.decode() if isinstance(text, bytes) else text, where))


def _metadata_file(text: str, where: str) -> dict:
    if not text:
        return {}
    try:
        content = json.loads(text)
    except json.JSONDecodeError as error:
        raise KddiagError(f"{where}: its {METADATA_FILE} extra file is not valid JSON ({error})") from None
    if not isinstance(content, dict):
        raise KddiagError(f"{where}: its {METADATA_FILE} extra file must hold a JSON object; "
                          f"got {type(content).__name__}")
    return _settings_in(content)


# --- torch.save files: state dicts, pickled modules, logits ------------------------------------

def _load_torch_file(path: Path, arch: str | None, trust_pickle: bool, role: str, where: str) -> LoadedModel:
    import torch

    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        if "weights only load failed" not in str(error).lower():
            raise KddiagError(f"{where}: not a readable PyTorch file ({_one_line(error)})") from None
        if not trust_pickle:
            found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
            raise UnsafeLoadError(
                f"{where}: the file needs unpickling{f' (it contains {found.group(1)})' if found else ''}, "
                f"which can run arbitrary code; pass --trust-pickle only for files you trust, or save a "
                f"state dict, torch.export or TorchScript model instead") from None
        try:
            content = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as error2:
            raise KddiagError(f"{where}: unpickling failed ({_one_line(error2)}); the classes it refers "
                              f"to must be importable") from None
    if isinstance(content, torch.nn.Module):
        return LoadedModel(source=str(path), format="pickled-module", module=content)
    if isinstance(content, torch.Tensor):
        return _logits_model(path, {EVAL: _as_array(content)}, {}, where)
    if isinstance(content, Mapping):
        if _is_logits_dict(content):
            return _load_logits_dict(path, content, where)
        for key in (role, *_WEIGHT_KEYS):  # a trusted pickle may hold the module under a key
            if isinstance(content.get(key), torch.nn.Module):
                return LoadedModel(source=str(path), format="pickled-module", module=content[key],
                                   metadata=_settings_in(content))
        return _state_dict_model(path, content, arch, role, where, _settings_in(content))
    raise KddiagError(f"{where}: holds a {type(content).__name__}; expected a state dict, a model, "
                      f"or logits of shape (n_samples, n_classes)")


def _state_dict_model(path: Path, content: Mapping, arch: str | None, role: str, where: str,
                      metadata: dict) -> LoadedModel:
    candidates = _weight_candidates(content)
    if not candidates:
        raise KddiagError(f"{where}: no weights found (keys: {_first(map(str, content))}); expected a "
                          f"state dict, a model, or logits")
    if arch is None:
        arch = _stored_builtin_arch(content)
    if arch is None:
        raise KddiagError(f"{where}: holds a state dict (weights only); pass --{role}-arch "
                          f"package.module:callable or a built-in name to build the model")
    model = _build_arch(arch, role)
    expected = model.state_dict()
    weights = _best_match(candidates, set(expected), role)
    _check_fit(weights, expected, where, arch)
    try:
        model.load_state_dict(weights, strict=True)
    except Exception as error:
        raise KddiagError(f"{where}: does not fit --{role}-arch {arch} ({_one_line(error)})") from None
    return LoadedModel(source=str(path), format="state_dict", module=model, metadata=metadata)


def _stored_builtin_arch(content: Mapping) -> str | None:
    """A built-in architecture name saved beside the weights (``'arch': 'mlp:64-12-10'``).

    Only built-in names are honoured: importing a module named inside an untrusted file would run its code.
    """
    stored = content.get("arch")
    if isinstance(stored, str) and _builtin_factory(stored, "stored 'arch'") is not None:
        return stored
    return None


def _weight_candidates(content: Mapping) -> list[tuple[tuple[str, ...], dict]]:
    """Every dict of named tensors in the file (top level and nested up to two deep), with its key path."""
    import torch

    found = []

    def visit(node: Mapping, trail: tuple[str, ...]) -> None:
        tensors = {k: v for k, v in node.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
        if tensors:
            found.append((trail, tensors))
        if len(trail) < 2:
            for key, value in node.items():
                if isinstance(value, Mapping):
                    visit(value, (*trail, str(key)))

    visit(content, ())
    return found


def _best_match(candidates: list[tuple[tuple[str, ...], dict]], expected: set[str], role: str) -> dict:
    """The candidate (after stripping wrapper prefixes) whose names best match the architecture's."""
    options = []
    for trail, weights in candidates:
        for prefixes, variant in _prefix_variants(weights, depth=2):
            names = set(variant)
            known = sum(name in _WEIGHT_KEYS for name in trail)
            options.append(((len(names & expected), -len(names - expected),
                             role in trail or f"{role}." in prefixes, known, -len(prefixes)), variant))
    return max(options, key=lambda option: option[0])[1]


def _prefix_variants(weights: dict, *, depth: int):
    """``weights`` itself and the sub-dicts under known wrapper prefixes, those prefixes removed."""
    yield "", weights
    if depth == 0:
        return
    for prefix in _PREFIXES:
        inner = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
        if inner:
            for more, variant in _prefix_variants(inner, depth=depth - 1):
                yield prefix + more, variant


def _check_fit(weights: dict, expected: dict, where: str, arch: str) -> None:
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    mismatched = [f"{k} {tuple(weights[k].shape)} in file vs {tuple(v.shape)} in model"
                  for k, v in expected.items() if k in weights and weights[k].shape != v.shape]
    problems = [f"{label}: {_first(keys)}" for label, keys in
                (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatch", mismatched)) if keys]
    if problems:
        raise KddiagError(f"{where}: does not fit architecture '{arch}'; " + "; ".join(problems))


def _build_arch(arch: str, role: str):
    """Instantiate ``package.module:callable`` (no arguments) or a built-in architecture name."""
    import torch

    option = f"--{role}-arch '{arch}'"
    factory = _builtin_factory(arch, option)
    if factory is None:
        if ":" not in arch:
            raise KddiagError(f"{option}: not a built-in architecture ({_builtin_help()}) and not "
                              f"of the form package.module:callable")
        factory = _import_callable(arch, option)
    if not callable(factory):
        raise KddiagError(f"{option}: '{arch}' is a {type(factory).__name__}, not callable")
    try:
        model = factory()
    except KddiagError:
        raise
    except Exception as error:
        raise KddiagError(f"{option}: calling it with no arguments failed ({_one_line(error)})") from None
    if not isinstance(model, torch.nn.Module):
        raise KddiagError(f"{option}: calling it returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def _import_callable(arch: str, option: str) -> Any:
    """The object named by ``package.module:attribute``; the current directory is importable."""
    module_name, _, attribute = arch.partition(":")
    added = os.getcwd() not in sys.path
    if added:  # `kddiag` run from a project directory should find its modules
        sys.path.insert(0, os.getcwd())
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as error:
        raise KddiagError(f"{option}: cannot import module '{module_name}' ({_one_line(error)})") from None
    finally:
        if added and os.getcwd() in sys.path:
            sys.path.remove(os.getcwd())
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise KddiagError(f"{option}: module '{module_name}' has no attribute '{attribute}'")
        target = getattr(target, part)
    return target


def _builtin_factory(name: str, option: str):
    """The zero-argument factory of a built-in architecture name (kddiag.models), or None."""
    try:
        models = importlib.import_module("kddiag.models")
    except ImportError:
        return None
    if hasattr(models, "builtin_arch"):
        try:
            return models.builtin_arch(name)
        except KddiagError as error:
            raise KddiagError(f"{option}: {error}") from None
    return getattr(models, "BUILTIN_ARCHS", {}).get(name)


def _builtin_help() -> str:
    try:
        models = importlib.import_module("kddiag.models")
    except ImportError:
        return "none available"
    return getattr(models, "BUILTIN_ARCH_HELP", None) or ", ".join(getattr(models, "BUILTIN_ARCHS", {})) or "none"


def _read_safetensors(path: Path, where: str) -> tuple[dict, dict]:
    try:
        from safetensors import safe_open
        from safetensors.torch import load_file

        weights = load_file(str(path), device="cpu")
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
    except Exception as error:
        raise KddiagError(f"{where}: not a readable safetensors file ({_one_line(error)})") from None
    metadata = {}
    for key, text in header.items():
        if key == METADATA_FILE:
            metadata.update(_metadata_file(text, where))
        else:
            try:
                metadata[key] = float(text)
            except (TypeError, ValueError):
                pass
    return weights, _settings_in(metadata)


def _settings_in(content: Any) -> dict:
    """Temperature and alpha stored at the top level of a checkpoint or in its config sections.

    The first value found wins (top level first); only plain numbers count.
    """
    found: dict[str, float] = {}
    queue = [content]
    for depth in range(3):
        nested = []
        for node in queue:
            if isinstance(node, (argparse.Namespace, SimpleNamespace)):
                node = vars(node)
            if not isinstance(node, Mapping):
                continue
            for setting, names in _SETTING_NAMES.items():
                for name in names:
                    value = node.get(name)
                    if setting not in found and _is_number(value):
                        found[setting] = float(value)
            nested += [node[key] for key in _CONFIG_KEYS if key in node]
        queue = nested
    return found


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.number)) and not isinstance(value, (bool, np.bool_))


# --- logits -----------------------------------------------------------------------------------

def _is_logits_dict(content: Mapping) -> bool:
    keys = set(content)
    return bool(keys & set(_LOGITS_KEYS)) and keys <= set(_LOGITS_KEYS) | set(_LABEL_KEYS)


def _load_npz(path: Path, where: str) -> LoadedModel:
    try:
        with np.load(path, allow_pickle=False) as archive:
            content = {key: archive[key] for key in archive.files}
    except Exception as error:
        raise KddiagError(f"{where}: not a readable .npz file ({_one_line(error)})") from None
    if not set(content) & set(_LOGITS_KEYS):
        raise KddiagError(f"{where}: no logits (keys: {_first(content)}); expected 'logits' or 'eval' for the "
                          f"eval set and/or 'transfer' for the transfer set")
    return _load_logits_dict(path, content, where)


def _load_logits_dict(path: Path, content: Mapping, where: str) -> LoadedModel:
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
    """Logits as stored; :class:`~kddiag.types.ModelOutputs` checks their shape and values when collected."""
    for set_name, array in labels.items():
        if set_name not in logits:
            raise KddiagError(f"{where}: has {set_name} labels but no {set_name} logits")
        rows = np.shape(logits[set_name])[:1]
        if rows != (len(array),):
            raise KddiagError(f"{where}: {rows[0] if rows else 'no'} rows of {set_name} logits but "
                              f"{len(array)} labels")
    return LoadedModel(source=str(path), format="logits", logits=logits, labels=labels or None)


def _read_npy(path: Path, where: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except Exception as error:
        raise KddiagError(f"{where}: not a readable .npy file ({_one_line(error)})") from None


def _as_array(value: Any) -> np.ndarray:
    """A numpy array of ``value``; floating tensors become float64 (numpy has no bfloat16)."""
    import torch

    if isinstance(value, torch.Tensor):
        value = value.detach().to("cpu", torch.float64 if value.is_floating_point() else value.dtype).numpy()
    return np.asarray(value)


def _labels_array(value: Any, where: str, key: str) -> np.ndarray:
    import torch

    array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    if array.ndim != 1 or array.dtype.kind not in "iu":
        raise KddiagError(f"{where}: labels '{key}' must be 1-D integers; got {array.dtype} of shape {array.shape}")
    if len(array) and array.min() < 0:
        raise KddiagError(f"{where}: labels '{key}' must be >= 0; got {array.min()}")
    return array.astype(np.int64)


# --- small helpers ----------------------------------------------------------------------------

def _first(items, n: int = 4) -> str:
    items = list(items)
    shown = ", ".join(str(item) for item in items[:n])
    return shown + (f" (+{len(items) - n} more)" if len(items) > n else "") if items else "none"


def _describe(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, tuple) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return (text[:240] + "…") if len(text) > 240 else text or type(error).__name__
