"""Distillation settings stored with a checkpoint, and the ``kddiag.json`` extra file of archives.

Settings (``temperature``/``tau``/``T``, ``alpha``) are read at the top level of a checkpoint or under
``config``/``kd``/``distillation``/...; torch.export and TorchScript archives (and safetensors
headers) may carry them as a ``kddiag.json`` extra file: ``{"temperature": 4, "alpha": 0.9}``.
Values are returned as found; :class:`~kddiag.types.Settings` checks them.
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


_SETTING_NAMES = {"temperature": ("temperature", "tau", "T"), "alpha": ("alpha",)}
_CONFIG_KEYS = ("config", "kd", "distillation", "hparams", "hyper_parameters", "hyperparameters", "args", "cfg")


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


def metadata_file(text: str, where: str) -> dict:
    """The settings in a ``kddiag.json`` extra file's text (empty: none)."""
    if not text:
        return {}
    try:
        content = json.loads(text)
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


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.number)) and not isinstance(value, (bool, np.bool_))
