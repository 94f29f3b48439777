"""The report as a JSON-ready dict and string, and the atomic file writer every output goes through."""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np

from kddiag import SCHEMA_VERSION, __version__
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


def write_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` under a temporary name, then rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


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
