"""The atomic writer and strict JSON conversion."""
import json
import os
import stat

import numpy as np
import pytest

from kddiag.report.json import _jsonable, write_atomic


def test_write_atomic_replaces_whole_file_with_usual_mode(tmp_path):
    target = tmp_path / "sub" / "report.json"
    write_atomic(target, "first")
    write_atomic(target, "second")
    assert target.read_text() == "second"
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~_current_umask()
    assert [p.name for p in target.parent.iterdir()] == ["report.json"]


def test_write_atomic_failure_leaves_nothing(tmp_path, monkeypatch):
    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        write_atomic(tmp_path / "report.json", "text")
    assert list(tmp_path.iterdir()) == []


def test_jsonable_makes_strict_json():
    value = {"a": np.float32(1.5), "b": np.array([1, 2]), "c": float("nan"), "d": (np.int64(3), np.bool_(True))}
    assert json.dumps(_jsonable(value), allow_nan=False) == '{"a": 1.5, "b": [1, 2], "c": null, "d": [3, true]}'


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
