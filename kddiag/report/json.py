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


MAX_INLINE_CLASSES = 100  # class-by-class matrices of more classes are summarized, not written whole
TOP_PAIRS = 20  # the most similar class pairs a summarized matrix lists


def report_to_dict(report: Report) -> dict:
    """The documented ``report.json`` structure (docs/metrics.md). Its size is bounded in the number of
    classes: (C, C) matrices beyond MAX_INLINE_CLASSES classes are summarized (:func:`matrix_summary`)."""
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
            "models": list(report.models),
            "class_names": list(info.names) if info.names else None,
            "class_groups": list(info.groups) if info.groups else None,
        },
        "coverage": {c.dataset: c.to_dict() for c in report.coverage},
        "metrics": _bounded(report.measurements.to_dict()),
        **report.diagnosis.to_dict(),
        **({} if report.probe is None else {"probe": report.probe.to_dict()}),
    })


def class_matrices(report: Report) -> dict[str, np.ndarray]:
    """Every (C, C) matrix of the report, keyed '<level>.<name>@<dataset>' (the arrays file)."""
    return {f"{value.name}@{value.dataset}": value.value for value in report.measurements.values()
            if isinstance(value.value, np.ndarray) and value.value.ndim == 2}


def matrix_summary(matrix: np.ndarray) -> dict:
    """A class-by-class matrix in a few numbers: its shape, the mean and max off the diagonal, and the
    TOP_PAIRS most similar class pairs (i < j) as [i, j, value]."""
    n = matrix.shape[0]
    upper = np.triu_indices(n, k=1)
    values = matrix[upper]
    finite = np.isfinite(values)
    top = np.argsort(np.where(finite, values, -np.inf))[::-1][:TOP_PAIRS]
    return {"shape": list(matrix.shape), "off_diagonal_mean": float(np.mean(values[finite])) if finite.any() else None,
            "off_diagonal_max": float(np.max(values[finite])) if finite.any() else None,
            "top_pairs": [[int(upper[0][k]), int(upper[1][k]), float(values[k])] for k in top if finite[k]]}


def _bounded(metrics: dict) -> dict:
    """``metrics`` with every (C, C) matrix beyond MAX_INLINE_CLASSES classes replaced by its summary."""
    for names in metrics.values():
        for leaves in names.values():
            for leaf in leaves.values():
                value = leaf.get("value")
                if isinstance(value, np.ndarray) and value.ndim == 2 and value.shape[0] > MAX_INLINE_CLASSES:
                    leaf["value"] = {"summary": matrix_summary(value)}
    return metrics


def render_arrays(report: Report) -> bytes:
    """The report's class-by-class matrices as a compressed ``.npz`` (``report-arrays.npz``)."""
    import io

    buffer = io.BytesIO()
    np.savez_compressed(buffer, **class_matrices(report))
    return buffer.getvalue()


def render_json(report: Report) -> str:
    """``report.json`` as a string (strict JSON: NaN and Inf become null)."""
    return json.dumps(report_to_dict(report), indent=2, allow_nan=False)


def write_atomic(files: Mapping[str | os.PathLike, str | bytes]) -> list[Path]:
    """Write every ``{path: text or bytes}`` under a temporary name, then rename them all: all files or none.

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
            with os.fdopen(fd, "wb" if isinstance(text, bytes) else "w",
                           **({} if isinstance(text, bytes) else {"encoding": "utf-8"})) as handle:
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
