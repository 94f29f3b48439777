"""The report as a JSON-ready dict and string, and the atomic file writer every output goes through."""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Mapping

import numpy as np

from kddiag import SCHEMA_VERSION, __version__
from kddiag.errors import KddiagError
from kddiag.types import Report


def report_to_dict(report: Report) -> dict:
    """The documented ``report.json`` structure (docs/metrics.md)."""
    settings = {
        name: {"value": s.value, "source": s.source, "guessed": s.guessed}
        for name, s in (("temperature", report.settings.temperature), ("alpha", report.settings.alpha))
    }
    datasets = {info.role: {"source": info.path, "n_samples": info.n_samples}
                for info in report.inputs if info.role in ("eval", "transfer")}
    info = report.class_info
    return _jsonable({
        "schema_version": SCHEMA_VERSION,
        "kddiag_version": __version__,
        "inputs": {
            "files": [i.to_dict() for i in report.inputs],
            "datasets": datasets,
            "settings": settings,
            "n_classes": report.n_classes,
            "class_names": list(info.names) if info.names else None,
            "class_groups": list(info.groups) if info.groups else None,
        },
        "metrics": report.measurements.to_dict(),
        **report.diagnosis.to_dict(),
    })


def render_json(report: Report) -> str:
    """``report.json`` as a string (strict JSON: NaN and Inf become null)."""
    return json.dumps(report_to_dict(report), indent=2, allow_nan=False)


def write_atomic(files: Mapping[str | os.PathLike, str]) -> list[Path]:
    """Write every ``{path: text}`` under a temporary name, then rename them all: all files or none.

    A failure while writing (a full disk, a missing permission) removes every temporary file and leaves
    the files already at those paths (an earlier report) untouched.
    """
    staged: list[tuple[str, Path]] = []
    try:
        for path, text in files.items():
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            staged.append((tmp, path))
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual mode
        for tmp, path in staged:
            os.replace(tmp, path)
    except BaseException:
        for tmp, _ in staged:
            Path(tmp).unlink(missing_ok=True)
        raise
    return [path for _, path in staged]


def check_writable(out_dir: str | os.PathLike) -> Path:
    """The report directory, checked before any work: a directory (or creatable) that can be written."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise KddiagError(f"--out '{out_dir}': exists and is not a directory")
    existing = next((p for p in (out_dir, *out_dir.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise KddiagError(f"--out '{out_dir}': '{existing}' is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise KddiagError(f"--out '{out_dir}': cannot write there (no permission on '{existing}')")
    return out_dir


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _jsonable(value):
    """Numpy scalars/arrays to Python, non-finite floats to None, recursively."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, np.bool_):
        return bool(value)
    return value
