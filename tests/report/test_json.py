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


def _report_with(n_classes, tmp_seed=0):
    from kddiag.diagnosis import diagnose
    from kddiag.measure import measure
    from kddiag.results import Report
    from kddiag.inputs import ClassInfo
    from kddiag.options import Settings
    from kddiag.outputs import ModelOutputs, SetOutputs
    from kddiag.types import EVAL

    rng = np.random.default_rng(tmp_seed)
    y = rng.integers(0, n_classes, 400)
    outputs = [SetOutputs(EVAL, y, ModelOutputs(rng.normal(size=(400, n_classes)), weight=rng.normal(size=(n_classes, 4))),
                          ModelOutputs(rng.normal(size=(400, n_classes)), weight=rng.normal(size=(n_classes, 4))))]
    measured = measure(outputs, settings=Settings(), class_info=ClassInfo())
    return Report((), Settings(), ClassInfo(), measured, diagnose(measured, settings=Settings(), n_classes=n_classes),
                  n_classes)


def test_report_json_stays_small_beyond_a_hundred_classes_and_the_arrays_file_holds_the_rest(tmp_path):
    from kddiag.pipeline import write_outputs
    from kddiag.report.json import TOP_PAIRS, render_json
    from kddiag.results import Measurements

    small, large = _report_with(20), _report_with(300)
    assert isinstance(json.loads(render_json(small))["metrics"]["domain"]["teacher_output_similarity"]["eval"]["value"],
                      list)  # up to 100 classes the matrices stay whole
    text = render_json(large)
    assert len(text) < 200_000  # 3 matrices of 300 × 300 would be several MB
    data = json.loads(text)
    summary = data["metrics"]["domain"]["teacher_output_similarity"]["eval"]["value"]["summary"]
    matrix = large.measurements.domain.eval.teacher.output_similarity.value
    assert summary["shape"] == [300, 300] and len(summary["top_pairs"]) == TOP_PAIRS
    i, j, value = summary["top_pairs"][0]
    assert value == pytest.approx(np.nanmax(matrix[np.triu_indices(300, k=1)])) and matrix[i, j] == pytest.approx(value)
    back = Measurements.from_dict(data["metrics"])
    assert "summarized in report.json" in back.domain.eval.teacher.output_similarity.unavailable
    written = write_outputs(large, tmp_path, arrays=True)
    with np.load(written["arrays"]) as arrays:
        np.testing.assert_array_equal(arrays["domain.teacher_output_similarity@eval"], matrix)
        assert "domain.teacher_weight_similarity@weights" in arrays.files
