"""``torch.save`` files read weights-only: tensors, plain containers and ``argparse.Namespace``.

torch's weights-only unpickler builds tensors and plain containers only. kddiag also allows
``argparse.Namespace``, a plain bag of attributes that torchdistill, timm and RepDistiller save their
command-line arguments in: building one runs no code from the file.

Any other object (a pickled ``nn.Module``, an OmegaConf config, a dataclass) can be skipped instead of
refusing the whole file: :func:`load_skipping_objects` replaces each with an inert stand-in that keeps
nothing and runs nothing, so the weights beside it can still be read, and :func:`skipped_objects` names
where each one was. Nothing named in the file is imported or called.
"""
from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Iterator

READABLE_CLASSES = (argparse.Namespace,)  # built by setting attributes: no code from the file runs


class _StandIn:
    """Takes the place of an object kddiag does not build: accepts any arguments and state, keeps none."""

    global_name = ""

    def __new__(cls, *args: Any, **kwargs: Any):
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
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
    """The file's content with every object outside the weights-only allowlist replaced by a stand-in;
    None when even that cannot be read (a stand-in cannot take the object's place, or torch < 2.5)."""
    import torch

    serialization = torch.serialization
    if not hasattr(serialization, "get_unsafe_globals_in_checkpoint") or not hasattr(serialization, "safe_globals"):
        return None
    try:
        readable = {f"{cls.__module__}.{cls.__qualname__}" for cls in READABLE_CLASSES}
        names = serialization.get_unsafe_globals_in_checkpoint(path)
        stand_ins = [_stand_in(name) for name in names if name not in readable]  # never stand in for those
        with serialization.safe_globals([*READABLE_CLASSES, *stand_ins]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return None


def skipped_objects(content: Any, *, depth: int = 6) -> list[str]:
    """Where stand-ins sit in ``content``: ``'hyper_parameters' (omegaconf.dictconfig.DictConfig)``."""
    return [f"'{'/'.join(trail) or 'the whole file'}' ({name})" for trail, name in _walk(content, (), depth)]


def _stand_in(global_name: str) -> type:
    """A stand-in class registered under ``global_name`` (torch matches ``module.qualname``)."""
    module, _, name = global_name.rpartition(".")
    return type(name, (_StandIn,), {"__module__": module, "__qualname__": name, "global_name": global_name})


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
