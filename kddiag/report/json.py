"""The report as a JSON-ready dict and string, and the atomic file writer every output goes through."""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Mapping

import numpy as np

from kddiag import SCHEMA_VERSION, __version__
from kddiag.errors import KddiagError
from kddiag.results import Report


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


REPORT_FILES = ("report.json", "report.html", "report-arrays.npz")  # one report (inspect, compare, demo)
MONITOR_FILES = ("monitor.json", "monitor.html")  # one monitor report (kddiag.monitor)
OWN_FILES = REPORT_FILES + MONITOR_FILES  # what kddiag writes in a report folder, and all it may hold


def write_report_files(out_dir: str | os.PathLike, files: Mapping[str, str | bytes], *,
                       replaces: tuple[str, ...]) -> list[Path]:
    """Write ``files`` ({name: text or bytes}) into the report folder ``out_dir``: all of them appear together,
    or none, even if the process is killed at any instruction.

    The folder is replaced as a whole: a new one is built beside it (``.NAME.kddiag-PID-XXXX``) holding the
    new files and the kddiag files of the other kind already there (a monitor report beside a report, by hard
    link), then ``out_dir`` is renamed aside, the new folder renamed into its place, and the old one removed.
    Killed at any point, ``out_dir`` holds the earlier files, nothing (between the two renames), or the new
    files, never a mix; the files of ``replaces`` not written now (an earlier ``report-arrays.npz``) go with
    the old folder. The next write there clears up what a killed run left beside ``out_dir`` (the folder it
    set aside goes back in place first when ``out_dir`` is missing); a failure (a full disk) clears up at once
    and leaves ``out_dir`` as it was. ``out_dir`` must pass :func:`check_writable` (new, or holding only
    OWN_FILES).
    """
    given = Path(out_dir)
    target = Path(os.path.realpath(check_writable(given)))  # a link to a folder: the folder is replaced
    target.parent.mkdir(parents=True, exist_ok=True)
    _sweep(target)
    stage = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.kddiag-{os.getpid()}-"))
    aside = target.parent / f"{stage.name}-old"
    try:
        for name, content in files.items():
            _write_file(stage / name, content)
        if target.is_dir():
            for name in sorted(set(os.listdir(target)) & set(OWN_FILES) - set(replaces) - set(files)):
                _link_or_copy(target / name, stage / name)
            os.chmod(stage, stat.S_IMODE(target.stat().st_mode))
        else:
            os.chmod(stage, 0o777 & ~_umask())  # mkdtemp creates 0700; give the folder the usual mode
        if target.is_dir():
            os.rename(target, aside)
        os.rename(stage, target)
    except BaseException:
        with contextlib.suppress(OSError):  # else the next write puts it back (_sweep)
            if aside.is_dir() and not target.exists():
                os.rename(aside, target)  # the earlier report back in place
        _remove_staged(stage)
        raise
    _remove_staged(aside)
    return [given / name for name in files]


def _write_file(path: Path, content: str | bytes) -> None:
    with open(path, "wb" if isinstance(content, bytes) else "w",
              **({} if isinstance(content, bytes) else {"encoding": "utf-8"})) as handle:
        handle.write(content)
    os.chmod(path, 0o666 & ~_umask())


def _link_or_copy(source: Path, destination: Path) -> None:
    try:
        os.link(source, destination)
    except OSError:  # a file system without hard links
        shutil.copy2(source, destination)


def _staged_by(name: str, prefix: str) -> int | None:
    """The process id in the name of a folder or file a write staged (``prefix`` + 'PID-…'), else None."""
    pid = name[len(prefix):].split("-", 1)[0].split(".", 1)[0] if name.startswith(prefix) else ""
    return int(pid) if pid.isdigit() else None


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process
        return True
    return True


def _sweep(target: Path) -> None:
    """Clear up after writes into ``target`` that were killed (their process is gone): a folder set aside by a
    write killed between its two renames goes back in place when ``target`` is missing; the rest is removed."""
    prefix = f".{target.name}.kddiag-"
    for name in sorted(os.listdir(target.parent)):
        pid = _staged_by(name, prefix)
        if pid is None or _alive(pid):
            continue
        leftover = target.parent / name
        if name.endswith("-old") and leftover.is_dir() and not leftover.is_symlink() and not target.exists():
            os.rename(leftover, target)  # the earlier report (and a monitor report beside it) back
        else:
            _remove_staged(leftover)


def _remove_staged(folder: Path) -> None:
    """Remove a staged or set-aside report folder: kddiag's files in it, then the folder (left if anything
    else appeared in it)."""
    if not folder.is_dir() or folder.is_symlink():
        return
    for name in os.listdir(folder):
        if name in OWN_FILES:
            (folder / name).unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:
        pass


def write_atomic(files: Mapping[str | os.PathLike, str | bytes]) -> list[Path]:
    """Write every ``{path: text or bytes}`` under a temporary name, then rename them all: all files or none.

    A failure while writing (a full disk, a missing permission) removes every temporary file and leaves
    the files already at those paths (an earlier report) untouched. The renames are one by one: for files
    that must change together even when the process is killed, use :func:`write_report_files`. The
    temporary names hold the process id; what a killed run left is removed by the next write there.
    """
    staged: list[tuple[str, Path]] = []
    try:
        for path, text in files.items():
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            _sweep_temporary(path)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp")
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


def _sweep_temporary(path: Path) -> None:
    """Remove the temporary files of ``path`` that killed writes left (their process is gone)."""
    prefix = f".{path.name}."
    for name in os.listdir(path.parent):
        pid = _staged_by(name, prefix) if name.endswith(".tmp") else None
        if pid is not None and not _alive(pid):
            (path.parent / name).unlink(missing_ok=True)


def check_writable(out_dir: str | os.PathLike) -> Path:
    """The report directory, checked before any work: new (creatable), or a directory holding only what
    kddiag writes there (OWN_FILES), since it is replaced as a whole (:func:`write_report_files`); and a
    place that can be written."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise KddiagError(f"--out '{out_dir}': exists and is not a directory")
    existing = next((p for p in (out_dir, *out_dir.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise KddiagError(f"--out '{out_dir}': '{existing}' is a file, not a directory")
    if out_dir.is_dir():
        real = Path(os.path.realpath(out_dir))
        try:
            here = Path(os.path.realpath(os.getcwd()))
        except OSError:
            here = None
        if here is not None and (real == here or real in here.parents):
            raise KddiagError(f"--out '{out_dir}': the working directory (or one above it); the report folder is "
                              f"replaced as a whole, so that its files change together: give a folder of its own, "
                              f"e.g. --out report")
        if os.path.ismount(real):
            raise KddiagError(f"--out '{out_dir}': a mount point, which cannot be replaced; the report folder is "
                              f"replaced as a whole: give a folder inside it, e.g. --out '{out_dir / 'report'}'")
        foreign = sorted(set(os.listdir(real)) - set(OWN_FILES))
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" (+{len(foreign) - 3} more)" if len(foreign) > 3 else "")
            raise KddiagError(f"--out '{out_dir}': holds files kddiag did not write ({shown}); the report folder is "
                              f"replaced as a whole, so that its files change together: give a new or empty "
                              f"folder, or one only kddiag writes to")
        existing = real.parent  # the folder is replaced by a rename there
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
