"""Archives that carry their own architecture: torch.export programs and TorchScript archives (no pickle)."""
from __future__ import annotations

import warnings
from pathlib import Path

from kddiag.errors import KddiagError
from kddiag.loading._text import one_line
from kddiag.loading.metadata import METADATA_FILE, metadata_file
from kddiag.types import LoadedModel


def load_export(path: Path, where: str) -> LoadedModel:
    """A ``torch.export`` program (``.pt2``), as its runnable module, with its ``kddiag.json`` settings."""
    import torch

    extra = {METADATA_FILE: ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.load(str(path), extra_files=extra)
            module = program.module()
    except Exception as error:
        raise KddiagError(f"{where}: not a readable torch.export program ({one_line(error)})") from None
    return LoadedModel(source=str(path), format="torch.export", module=module,
                       metadata=metadata_file(extra[METADATA_FILE], where))


def load_torchscript(path: Path, where: str) -> LoadedModel:
    """A TorchScript archive, with its ``kddiag.json`` settings."""
    import torch

    extra = {METADATA_FILE: ""}
    try:
        with warnings.catch_warnings():  # torch.jit is deprecated but still loads
            warnings.simplefilter("ignore")
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as error:
        raise KddiagError(f"{where}: not a readable TorchScript archive ({one_line(error)})") from None
    text = extra[METADATA_FILE]
    return LoadedModel(source=str(path), format="torchscript", module=module,
                       metadata=metadata_file(text.decode() if isinstance(text, bytes) else text, where))
