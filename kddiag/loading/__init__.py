"""Load teachers and students: checkpoints of every common kind, or precomputed logits.

Formats are recognized by content where possible, by extension otherwise:

- ``torch.export`` programs (``.pt2``) and TorchScript archives: architecture included; vetted before
  they run (archive members, then operators against an allowlist: :mod:`.vetting`).
- state dicts (``.pt``/``.pth``/``.ckpt`` read weights-only, ``.safetensors``) plus an architecture
  (:mod:`.archs`): ``module:callable``, ``module:Class(28, hidden=64)``, ``path/to/models.py:Class(28)``
  or a built-in name (:mod:`kddiag.models`). The layouts of torchdistill, mdistiller, RepDistiller,
  timm (with EMA weights) and PyTorch Lightning are unwrapped (:mod:`.state_dicts`).
- objects beside the weights: ``argparse.Namespace`` is read; any other object is skipped and named
  (:mod:`.unpickling`). A whole pickled ``nn.Module`` (``torch.save(model)``) loads only with
  ``trust_pickle=True``, since unpickling runs code from the file.
- logits (``.npy``, ``.npz``, ``.pt`` holding an (n_samples, n_classes) tensor or a dict of them).
- Hugging Face directories written by ``save_pretrained`` (:mod:`.hf`, needs the ``transformers`` extra):
  sequence classifiers and causal language models; never downloaded.

Distillation settings stored with a checkpoint (``temperature``/``T``/``kd_T``/..., ``alpha`` at the top
level or under ``config``/``hyper_parameters``/``args``/...; timm's and RepDistiller's own argument
names; a ``kddiag.json`` extra file in torch.export and TorchScript archives; safetensors header
metadata) end up in ``LoadedModel.metadata`` (:mod:`.metadata`); how they and the weights were
found, and what could not be read, in ``LoadedModel.notes``.

This module sniffs the format and dispatches; one module per kind of file: :mod:`.state_dicts`
(with :mod:`.archs` and :mod:`.unpickling`), :mod:`.programs` (torch.export, TorchScript),
:mod:`.logits`, :mod:`.metadata` (stored settings).
"""
from __future__ import annotations

import json
import os
import re
import zipfile
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from kddiag.errors import KddiagError, UnsafeLoadError
from kddiag.files import read_regular
from kddiag.loading import logits as _logits
from kddiag.loading import programs as _programs
from kddiag.loading import state_dicts as _state_dicts
from kddiag.loading import unpickling as _unpickling
from kddiag.loading._text import first, one_line
from kddiag.loading.metadata import METADATA_FILE, checkpoint_settings, normalization_beside
from kddiag.inputs import ClassInfo, LoadedModel

__all__ = ["load_model", "load_class_info", "logits_of", "METADATA_FILE"]


_EXTENSIONS = {".npy": "npy", ".npz": "npz", ".safetensors": "safetensors", ".pt2": "torch.export",
               ".pt": "torch", ".pth": "torch", ".bin": "torch", ".ckpt": "torch", ".tar": "torch",
               ".ts": "torchscript", ".jit": "torchscript", ".torchscript": "torchscript"}

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")  # 'gpt2', 'org/model-1.5B'


def load_model(path: str | os.PathLike, *, arch: str | None = None, trust_pickle: bool = False,
               trust_program: bool = False, role: str = "teacher", ema: bool = False,
               trust_remote_code: bool = False) -> LoadedModel:
    """Load a checkpoint or a logits file as a :class:`~kddiag.inputs.LoadedModel`.

    ``arch`` builds the model a state dict belongs to (:mod:`.archs`): a built-in name,
    ``'module:callable'``, ``'module:Class(28, hidden=64)'`` (literal arguments only) or
    ``'path/to/models.py:Class(28)'``. ``ema`` uses a checkpoint's EMA weights (timm's
    ``state_dict_ema``, ``model_ema``); without it raw weights come first. ``trust_pickle`` allows
    unpickling whole modules and other objects; ``trust_program`` runs TorchScript and torch.export
    programs whose operators are outside the allowlist (:mod:`kddiag.loading.vetting`). ``role``
    ('teacher', 'student', 'baseline') names the file in errors and picks a role's weights from a
    file holding several. A directory holding ``config.json`` is a Hugging Face ``save_pretrained``
    directory (:mod:`.hf`); ``trust_remote_code`` runs the code such a model ships (``auto_map``).
    How the weights were chosen, and what could not be read, is in ``.notes``.

    >>> load_model("student.pt", arch="mlp:64-32-10", role="student").format
    'state_dict'
    """
    path = Path(path)
    where = f"{role} checkpoint '{path}'"
    if not path.exists():
        if _HUB_ID.fullmatch(str(path)) and path.suffix.lower() not in _EXTENSIONS:
            raise KddiagError(f"{where}: no such file or directory; if it is a Hugging Face Hub id: kddiag never "
                              f"downloads models, pass a local directory written by save_pretrained")
        raise KddiagError(f"{where}: no such file")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise KddiagError(f"{where}: a directory without config.json; kddiag reads Hugging Face directories "
                              f"written by save_pretrained (config.json + model.safetensors)")
        if arch is not None or ema:
            raise KddiagError(f"{where}: a Hugging Face directory brings its own architecture and weights; "
                              f"--{role}-arch and --ema do not apply to it")
        from kddiag.loading.hf import load_hf_model

        return load_hf_model(path, role=role, trust_remote_code=trust_remote_code, trust_pickle=trust_pickle)
    if not path.is_file():
        raise KddiagError(f"{where}: not a file")
    if path.stat().st_size == 0:
        raise KddiagError(f"{where}: the file is empty")
    kind = _sniff(path) or _EXTENSIONS.get(path.suffix.lower())
    if kind is None:
        raise KddiagError(f"{where}: unknown format (extension '{path.suffix or 'none'}', content not recognized); "
                          f"expected .pt2, TorchScript, .pt/.pth/.safetensors state dict, or .npy/.npz/.pt logits")
    if kind == "npy":
        loaded = _logits.load_npy(path, where)
    elif kind == "npz":
        loaded = _logits.load_npz(path, where)
    elif kind == "torch.export":
        loaded = _programs.load_export(path, where, trust_program=trust_program)
    elif kind == "torchscript":
        loaded = _programs.load_torchscript(path, where, trust_program=trust_program)
    elif kind == "safetensors":
        weights, metadata = _state_dicts.read_safetensors(path, where)
        loaded = _state_dicts.state_dict_model(path, weights, arch, role, where, metadata, ema=ema)
    else:
        loaded = _load_torch_file(path, arch, trust_pickle, role, where, ema)
    if ema and loaded.format != "state_dict":
        raise KddiagError(f"{where}: --ema {role} asks for EMA weights, which only state-dict checkpoints "
                          f"hold; this file is a {loaded.format}")
    return _with_normalization(loaded, path)


def _with_normalization(loaded: LoadedModel, path: Path) -> LoadedModel:
    """The model with a note on the input normalization it stores, or, when it stores none, the one in
    its folder (``normalization_beside``) added to its metadata."""
    if loaded.module is None:
        return loaded
    stored = loaded.metadata.get("normalization")
    if stored is not None:
        note = f"normalization: mean {list(stored['mean'])}, std {list(stored['std'])}, stored in the file"
        return replace(loaded, notes=(*loaded.notes, note))
    beside = normalization_beside(path)
    if beside is None:
        return loaded
    return replace(loaded, metadata={**loaded.metadata, "normalization": beside[0]}, notes=(*loaded.notes, beside[1]))


def load_class_info(path: str | os.PathLike) -> ClassInfo:
    """Read class names and groups from JSON ``{"names": [str, ...], "groups": [int | str, ...]}``.

    Either key may be absent. String groups are numbered in order of first appearance.

    >>> load_class_info("classes.json").groups
    (0, 0, 1)
    """
    where = f"--classes '{path}'"
    try:
        content = json.loads(read_regular(path, where, what="a small JSON file of class names and groups")
                             .decode("utf-8"))
    except FileNotFoundError:
        raise KddiagError(f"{where}: no such file") from None
    except RecursionError:
        raise KddiagError(f"{where}: not a readable JSON file (nested too deeply)") from None
    except (OSError, ValueError) as error:  # not UTF-8, not JSON, or an integer too long to convert
        raise KddiagError(f"{where}: not a readable JSON file ({one_line(error)})") from None
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
        names = [name.lower() for name in names]  # torch's zip reader ignores case
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


def _load_torch_file(path: Path, arch: str | None, trust_pickle: bool, role: str, where: str,
                     ema: bool) -> LoadedModel:
    """A ``torch.save`` file read weights-only (:mod:`.unpickling`), routed by content.

    Objects beyond tensors, containers and argparse namespaces are unpickled only when trusted;
    otherwise they are skipped (and named in the notes) when the weights lie outside them.
    """
    import torch

    notes: tuple[str, ...] = ()
    try:
        content = _unpickling.load_weights_only(path)
    except Exception:
        unknown = _unpickling.unknown_globals(path)  # read from the pickle, not from torch's changing words
        if trust_pickle and unknown:
            content = _unpickle(path, where)
        else:
            try:
                content = _unpickling.load_skipping_objects(path)  # also reads pickle protocols 3-5 (torch cannot)
            except _unpickling.RefusedPickle as refused:  # tampering with shared objects, 'module' ids, tar
                raise UnsafeLoadError(f"{where}: refused: {refused}") from None
            if content is None and not unknown:  # the file is not a torch.save file, or is damaged
                raise KddiagError(f"{where}: not a readable PyTorch file (corrupt, truncated or not written by "
                                  f"torch.save)") from None
        if unknown and not trust_pickle:
            if not _holds_data(content):  # the weights are inside the objects: a pickled model
                raise UnsafeLoadError(
                    f"{where}: the file needs unpickling (it contains {unknown[0]}), "
                    f"which can run arbitrary code; pass --trust-pickle only for files you trust, or save a "
                    f"state dict, torch.export or TorchScript model instead") from None
            notes = (f"not read: {first(_unpickling.skipped_objects(content) or unknown)}: objects kddiag does not "
                     f"unpickle (--trust-pickle would)",)
    if isinstance(content, torch.nn.Module):
        return LoadedModel(source=str(path), format="pickled-module", module=content)
    if isinstance(content, torch.Tensor):
        return _logits.logits_from(path, content, where)
    if isinstance(content, Mapping):
        if _logits.is_logits_dict(content):
            return _logits.logits_from(path, content, where)
        settings, setting_notes = checkpoint_settings(content)
        for key in (role, *_state_dicts.WEIGHT_KEYS):  # a trusted pickle may hold the module under a key
            if isinstance(content.get(key), torch.nn.Module):
                return LoadedModel(source=str(path), format="pickled-module", module=content[key],
                                   metadata=settings, notes=setting_notes)
        return _state_dicts.state_dict_model(path, content, arch, role, where, settings, ema=ema,
                                             notes=(*setting_notes, *notes))
    raise KddiagError(f"{where}: holds a {type(content).__name__}; expected a state dict, a model, "
                      f"or logits of shape (n_samples, n_classes)")


def _unpickle(path: Path, where: str) -> Any:
    """The file fully unpickled (``--trust-pickle``): the classes it names are imported and built."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:
        raise KddiagError(f"{where}: unpickling failed ({one_line(error)}); the classes it refers "
                          f"to must be importable") from None


def _holds_data(content: Any) -> bool:
    """Whether ``content`` (read with objects skipped) holds weights or logits outside the skipped objects."""
    return isinstance(content, Mapping) and (_logits.is_logits_dict(content)
                                             or _state_dicts.holds_weights(content))


def _describe(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, tuple) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."
