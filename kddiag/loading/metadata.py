"""Distillation settings stored with a checkpoint, and the ``kddiag.json`` extra file of archives.

Settings (``temperature``/``tau``/``T``/``kd_T``/``kd_temperature``, ``alpha``/``kd_alpha``) are read at
the top level of a checkpoint or under ``config``/``kd``/``distillation``/``hyper_parameters``/``args``/...
(PyTorch Lightning keeps them in ``hyper_parameters``). Training frameworks that store them under
their own names are read by their own rules (:func:`checkpoint_settings`): timm's ``args``
(``kd_temperature``, ``distill_loss_weight``/``task_loss_weight``) and RepDistiller's ``opt``
(``kd_T``, ``alpha``/``gamma``); torchdistill and mdistiller keep them in YAML configs, not in the
checkpoint. torch.export and TorchScript archives (and safetensors headers) may carry settings as a
``kddiag.json`` extra file: ``{"temperature": 4, "alpha": 0.9}``. Values are returned as found;
:class:`~kddiag.types.Settings` checks them.
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

import numpy as np

from kddiag.errors import KddiagError


METADATA_FILE = "kddiag.json"  # extra file in torch.export / TorchScript archives: {"temperature": 4, "alpha": 0.9}
MAX_METADATA_CHARS = 1 << 20  # a kddiag.json holds a few settings; far below this


_SETTING_NAMES = {"temperature": ("temperature", "tau", "T", "kd_T", "kd_temperature", "kd_tau",
                                  "distill_temperature", "distillation_temperature"),
                  "alpha": ("alpha", "kd_alpha", "distill_alpha", "distillation_alpha"),
                  # the student's own training rate, for remedy probes (kddiag.probe) to train as it did
                  "learning_rate": ("learning_rate", "lr", "base_lr")}
_CONFIG_KEYS = ("config", "kd", "distill", "distillation", "hparams", "hyper_parameters", "hyperparameters",
                "args", "cfg")


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
                    value = node.get(name)
                    if setting not in found and _is_number(value):
                        found[setting] = float(value)
            nested += [node[key] for key in _CONFIG_KEYS if key in node]
        queue = nested
    return found


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
    return {**found, **settings_in(rest)}, tuple(notes)


def metadata_file(text: str, where: str) -> dict:
    """The settings in a ``kddiag.json`` extra file's text (empty: none)."""
    if not text:
        return {}
    if not isinstance(text, str) or len(text) > MAX_METADATA_CHARS:
        shown = f"{len(text):,} characters" if isinstance(text, str) else type(text).__name__
        raise KddiagError(f"{where}: its {METADATA_FILE} extra file must be a small JSON object (at most "
                          f"{MAX_METADATA_CHARS:,} characters); got {shown}")
    try:
        content = json.loads(text)
    except RecursionError:
        raise KddiagError(f"{where}: its {METADATA_FILE} extra file is not valid JSON (nested too deeply)") from None
    except json.JSONDecodeError as error:
        raise KddiagError(f"{where}: its {METADATA_FILE} extra file is not valid JSON ({error})") from None
    if not isinstance(content, dict):
        raise KddiagError(f"{where}: its {METADATA_FILE} extra file must hold a JSON object; "
                          f"got {type(content).__name__}")
    return settings_in(content)


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
    return settings_in(metadata)


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
    if _is_number(temperature):
        found["temperature"] = float(temperature)
        said.append(f"τ = {temperature_name}")
    if _is_number(soft) and _is_number(hard) and soft >= 0 and hard >= 0 and soft + hard > 0:
        found["alpha"] = float(soft) / (float(soft) + float(hard))
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


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.number)) and not isinstance(value, (bool, np.bool_))
