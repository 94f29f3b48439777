"""Distillation settings stored with a checkpoint, and the ``kddiag.json`` extra file of archives.

Settings (``temperature``/``tau``/``T``/``kd_T``/``kd_temperature``, ``alpha``/``kd_alpha``) are read at
the top level of a checkpoint or under ``config``/``kd``/``distillation``/``hyper_parameters``/``args``/...
(PyTorch Lightning keeps them in ``hyper_parameters``). Training frameworks that store them under
their own names are read by their own rules (:func:`checkpoint_settings`): timm's ``args``
(``kd_temperature``, ``distill_loss_weight``/``task_loss_weight``) and RepDistiller's ``opt``
(``kd_T``, ``alpha``/``gamma``); torchdistill and mdistiller keep them in YAML configs, not in the
checkpoint. torch.export and TorchScript archives (and safetensors headers) may carry settings as a
``kddiag.json`` extra file: ``{"temperature": 4, "alpha": 0.9}``. Values are returned as found;
:class:`~kddiag.options.Settings` checks them.

The input normalization a model was trained with, where a checkpoint stores it (:func:`normalization_in`:
``mean``/``std`` and the names timm, Hugging Face image processors and data modules use, at the top level
or in the same config sections, a Lightning data module's ``datamodule_hyper_parameters`` and timm's
``pretrained_cfg`` included), is kept as ``normalization``; a model file's folder may hold it too
(:func:`normalization_beside`: an image processor's ``preprocessor_config.json``, or a timm ``config.json``).
"""
from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

from kddiag.errors import KddiagError, as_float


METADATA_FILE = "kddiag.json"  # extra file in torch.export / TorchScript archives: {"temperature": 4, "alpha": 0.9}
MAX_METADATA_CHARS = 1 << 20  # a kddiag.json holds a few settings; far below this


_SETTING_NAMES = {"temperature": ("temperature", "tau", "T", "kd_T", "kd_temperature", "kd_tau",
                                  "distill_temperature", "distillation_temperature"),
                  "alpha": ("alpha", "kd_alpha", "distill_alpha", "distillation_alpha"),
                  # the student's own training recipe, for remedy probes (kddiag.probe) to train as it did
                  "learning_rate": ("learning_rate", "lr", "base_lr"),
                  "epochs": ("epochs", "max_epochs", "num_epochs", "num_train_epochs", "n_epochs"),
                  "batch_size": ("batch_size", "train_batch_size", "per_device_train_batch_size")}
_CONFIG_KEYS = ("config", "kd", "distill", "distillation", "hparams", "hyper_parameters", "hyperparameters",
                "args", "cfg")
# where the input normalization is kept, beside the config sections: Lightning's data module, timm's model configs
_NORMALIZATION_KEYS = (*_CONFIG_KEYS, "datamodule_hyper_parameters", "pretrained_cfg", "default_cfg", "data_config",
                       "data", "dataset", "transform", "normalize", "normalization", "preprocessing")
# (mean, std) names: plain, Hugging Face image processors, detectron-style, and torchvision-transform-like
_NORMALIZATION_NAMES = (("mean", "std"), ("image_mean", "image_std"), ("pixel_mean", "pixel_std"),
                        ("norm_mean", "norm_std"), ("normalize_mean", "normalize_std"), ("input_mean", "input_std"))
MAX_CHANNELS = 4  # a normalization names one mean and std per input channel: 1 (grey), 3 (RGB) or 4
STD_RANGE = (1e-6, 1e6)  # the stds (and |means|) of a real input normalization: pixels in [0, 1] or [0, 255], …
BESIDE_FILES = ("preprocessor_config.json", "config.json")  # read, if present, from a model file's folder
MAX_BESIDE_BYTES = 1 << 20


def settings_in(content: Any) -> dict:
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
                    value = as_float(node.get(name))
                    if setting not in found and value is not None:
                        found[setting] = value
            nested += [node[key] for key in _CONFIG_KEYS if key in node]
        queue = nested
    return found


def normalization_in(content: Any) -> dict | None:
    """The input normalization stored in a checkpoint or config: ``{"mean": (...), "std": (...)}``, one value
    per channel (or one for all), found at the top level or in its config sections (breadth first, the first
    valid pair wins); None when none is stored or an image processor says ``do_normalize: false``."""
    queue = [content]
    for depth in range(3):
        nested = []
        for node in queue:
            node = _as_mapping(node)
            if node is None:
                continue
            if node.get("do_normalize") is False:
                return None
            for mean_name, std_name in _NORMALIZATION_NAMES:
                found = _normalization(node.get(mean_name), node.get(std_name))
                if found is not None:
                    return found
            nested += [node[key] for key in _NORMALIZATION_KEYS if key in node]
        queue = nested
    return None


def normalization_beside(path: Any) -> tuple[dict, str] | None:
    """The input normalization in a model file's folder (BESIDE_FILES, the first that holds one), and a note
    naming that file; None when none does. Only small regular JSON files are read."""
    from pathlib import Path

    from kddiag.files import read_json

    folder = Path(path).parent
    for name in BESIDE_FILES:
        file = folder / name
        if not file.is_file():
            continue
        try:
            content = read_json(file, f"'{file}'", MAX_BESIDE_BYTES)
        except (KddiagError, OSError):
            continue  # not ours to judge: a folder's other files are not inputs kddiag was given
        found = normalization_in(content)
        if found is not None:
            return found, f"normalization: mean {list(found['mean'])}, std {list(found['std'])}, from '{file}'"
    return None


def _with_normalization(settings: dict, content: Any) -> dict:
    normalization = normalization_in(content)
    return settings if normalization is None else {**settings, "normalization": normalization}


def _normalization(mean: Any, std: Any) -> dict | None:
    """(mean, std) as tuples of floats when both are 1-MAX_CHANNELS finite numbers (or one number each), one
    value per channel on both sides or one side a single value, stds within STD_RANGE; else None."""
    values = []
    for value in (mean, std):
        value = [value] if as_float(value) is not None else value
        if not isinstance(value, (list, tuple)) or not 1 <= len(value) <= MAX_CHANNELS:
            return None
        numbers = [as_float(v) for v in value]
        if not all(v is not None and math.isfinite(v) for v in numbers):
            return None
        values.append(tuple(numbers))
    mean, std = values
    if len(mean) != len(std) and 1 not in (len(mean), len(std)):
        return None
    if not all(STD_RANGE[0] <= v <= STD_RANGE[1] for v in std) or max(map(abs, mean)) > STD_RANGE[1]:
        return None  # not a normalization of inputs: a std of 1e-308 would turn every input into inf
    return {"mean": mean, "std": std}


def checkpoint_settings(content: Mapping) -> tuple[dict, tuple[str, ...]]:
    """The settings in a ``torch.save`` checkpoint, and notes saying how framework sections were read.

    A section a framework's reader recognizes (timm's ``args``, RepDistiller's ``opt``, torchdistill's
    ``args``) is read by that reader only; the rest of the checkpoint by :func:`settings_in`, whose
    values come first.
    """
    found: dict[str, float] = {}
    notes: list[str] = []
    rest = dict(content)
    for key, reader in (("args", _timm_args), ("opt", _repdistiller_opt), ("args", _torchdistill_args)):
        section = _as_mapping(rest.get(key))
        read = reader(section, content) if section is not None else None
        if read is not None:
            settings, note = read
            found.update({name: value for name, value in settings.items() if name not in found})
            notes.append(note)
            del rest[key]
    settings = {**found, **settings_in(rest)}
    trained = _lightning_epochs(content)
    if trained is not None:  # what the run did (early stopping included) beats what it was told
        settings["epochs"] = trained
    return _with_normalization(settings, content), tuple(notes)


def _lightning_epochs(content: Mapping) -> int | None:
    """The epochs a Lightning run trained, from its checkpoint's fit-loop progress (``epoch`` itself is the
    last finished epoch's index in a ModelCheckpoint file and their count after ``trainer.save_checkpoint``)."""
    if "pytorch-lightning_version" not in content:
        return None
    progress = content.get("loops")
    for key in ("fit_loop", "epoch_progress", "total", "processed"):
        progress = progress.get(key) if isinstance(progress, Mapping) else None
    return progress if isinstance(progress, int) and not isinstance(progress, bool) and progress > 0 else None


def metadata_file(text: str | bytes, where: str) -> dict:
    """The settings in a ``kddiag.json`` extra file's text, or its bytes as an archive stores them (empty:
    none)."""
    if not text:
        return {}
    if isinstance(text, bytes):
        if len(text) > 4 * MAX_METADATA_CHARS:
            raise KddiagError(f"{where}: its {METADATA_FILE} extra file must be a small JSON object (at most "
                              f"{MAX_METADATA_CHARS:,} characters); got {len(text):,} bytes")
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as error:
            raise KddiagError(f"{where}: its {METADATA_FILE} extra file is not UTF-8 text ({error.reason} at "
                              f"byte {error.start})") from None
    if not isinstance(text, str) or len(text) > MAX_METADATA_CHARS:
        shown = f"{len(text):,} characters" if isinstance(text, str) else type(text).__name__
        raise KddiagError(f"{where}: its {METADATA_FILE} extra file must be a small JSON object (at most "
                          f"{MAX_METADATA_CHARS:,} characters); got {shown}")
    try:
        content = json.loads(text)
    except RecursionError:
        raise KddiagError(f"{where}: its {METADATA_FILE} extra file is not valid JSON (nested too deeply)") from None
    except ValueError as error:  # not JSON, or an integer of more digits than Python converts
        raise KddiagError(f"{where}: its {METADATA_FILE} extra file is not valid JSON "
                          f"({' '.join(str(error).split())[:200]})") from None
    if not isinstance(content, dict):
        raise KddiagError(f"{where}: its {METADATA_FILE} extra file must hold a JSON object; "
                          f"got {type(content).__name__}")
    return _with_normalization(settings_in(content), content)


def header_settings(header: dict[str, str], where: str) -> dict:
    """Settings in a safetensors header: a ``kddiag.json`` entry, or entries holding plain numbers."""
    metadata = {}
    for key, text in header.items():
        if key == METADATA_FILE:
            metadata.update(metadata_file(text, where))
        else:
            try:
                metadata[key] = float(text)
            except (TypeError, ValueError):
                pass
    return _with_normalization(settings_in(metadata), metadata)


# --- framework sections: each reader returns (settings, note), or None when the section is not its own ---

def _timm_args(args: Mapping, content: Mapping) -> tuple[dict, str] | None:
    """timm's train.py arguments; its distillation task's loss is ``task_loss_weight · CE +
    distill_loss_weight · τ² KL`` (timm/task/distillation.py), so α = d / (d + t)."""
    if "kd_model_name" not in args:
        return None
    if args["kd_model_name"] is None:
        return {}, "settings: timm's args say it was trained without its distillation task (kd_model_name None)"
    task, distill = args.get("task_loss_weight"), args.get("distill_loss_weight")
    if distill is not None:  # timm's three weighting modes, as its task resolves them
        task = 1.0 if task is None else task
    elif task is not None:
        distill = 1.0 - task
    else:
        task = distill = 1.0
    return _weighted("timm's args", args.get("kd_temperature"), "kd_temperature",
                     distill, task, ("distill weight", "task weight"))


def _repdistiller_opt(opt: Mapping, content: Mapping) -> tuple[dict, str] | None:
    """RepDistiller's train_student.py options; its loss is ``gamma · CE + alpha · τ² KL + beta · other``
    (``-r``/``-a``/``-b``), so α = alpha / (alpha + gamma)."""
    if "kd_T" not in opt:
        return None
    return _weighted("RepDistiller's opt", opt["kd_T"], "kd_T", opt.get("alpha"), opt.get("gamma"),
                     ("alpha", "gamma"))


def _weighted(origin: str, temperature: Any, temperature_name: str, soft: Any, hard: Any,
              names: tuple[str, str]) -> tuple[dict, str]:
    """τ as stored, and α = soft / (soft + hard) from a loss ``hard · CE + soft · KD``; the note says so."""
    found, said = {}, []
    temperature, soft, hard = as_float(temperature), as_float(soft), as_float(hard)
    if temperature is not None:
        found["temperature"] = temperature
        said.append(f"τ = {temperature_name}")
    if soft is not None and hard is not None and soft >= 0 and hard >= 0 and 0 < soft + hard < math.inf:
        found["alpha"] = soft / (soft + hard)
        said.append(f"α = {names[0]} / ({names[0]} + {names[1]}) = {soft:g} / ({soft:g} + {hard:g})")
    return found, f"settings: from {origin}: " + ("; ".join(said) or "neither τ nor α stored")


def _torchdistill_args(args: Mapping, content: Mapping) -> tuple[dict, str] | None:
    """torchdistill's arguments: only the path of the YAML config that holds τ and α."""
    if "best_value" not in content or not isinstance(args.get("config"), str):
        return None
    return {}, (f"settings: torchdistill keeps τ and α in its YAML config ('{args['config']}'), not in "
                f"the checkpoint; pass --temperature and --alpha")


def _as_mapping(value: Any) -> Mapping | None:
    if isinstance(value, (argparse.Namespace, SimpleNamespace)):
        return vars(value)
    return value if isinstance(value, Mapping) else None


