"""The atomic writer and strict JSON conversion."""
import json
import os
import stat

import numpy as np
import pytest

from kddiag.errors import KddiagError
from kddiag.report.json import _jsonable, check_writable, write_atomic


def test_write_atomic_replaces_whole_files_with_usual_mode(tmp_path):
    target = tmp_path / "sub" / "report.json"
    write_atomic({target: "first"})
    assert write_atomic({target: "second", tmp_path / "sub" / "report.html": "page"}) == [
        target, tmp_path / "sub" / "report.html"]
    assert target.read_text() == "second"
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~_current_umask()
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.html", "report.json"]


def test_a_failure_on_any_file_writes_none_and_keeps_the_earlier_report(tmp_path, monkeypatch):
    write_atomic({tmp_path / "report.json": "earlier", tmp_path / "report.html": "earlier page"})
    real_fdopen = os.fdopen
    calls = []

    def full_disk(fd, *args, **kwargs):  # the second file hits a full disk
        calls.append(fd)
        if len(calls) == 2:
            os.close(fd)
            raise OSError(28, "No space left on device")
        return real_fdopen(fd, *args, **kwargs)

    monkeypatch.setattr(os, "fdopen", full_disk)
    with pytest.raises(OSError, match="No space left"):
        write_atomic({tmp_path / "report.json": "new", tmp_path / "report.html": "new page"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "report.json"]  # no temporary file
    assert (tmp_path / "report.json").read_text() == "earlier"


def test_a_failed_rename_leaves_nothing(tmp_path, monkeypatch):
    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        write_atomic({tmp_path / "report.json": "text", tmp_path / "report.html": "page"})
    assert list(tmp_path.iterdir()) == []


def test_the_output_directory_is_checked_before_any_work(tmp_path):
    assert check_writable(tmp_path / "new" / "dir") == tmp_path / "new" / "dir"  # creatable: fine
    (tmp_path / "file").write_text("x")
    with pytest.raises(KddiagError, match="exists and is not a directory"):
        check_writable(tmp_path / "file")
    with pytest.raises(KddiagError, match="is a file, not a directory"):
        check_writable(tmp_path / "file" / "sub")


def test_jsonable_makes_strict_json():
    value = {"a": np.float32(1.5), "b": np.array([1, 2]), "c": float("nan"), "d": (np.int64(3), np.bool_(True))}
    assert json.dumps(_jsonable(value), allow_nan=False) == '{"a": 1.5, "b": [1, 2], "c": null, "d": [3, true]}'


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
