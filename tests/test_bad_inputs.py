"""The bad-input corpus: every case gives exit code 1 or 2, one line on stderr naming the file or option,
no traceback, no warning, and nothing in --out. Files are built here, never committed."""
from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from kddiag.cli import DEMO_BASELINE, DEMO_STUDENT, DEMO_TEACHER, main

TEACHER, STUDENT, BASELINE = str(DEMO_TEACHER), str(DEMO_STUDENT), str(DEMO_BASELINE)
RANDOM = bytes(np.random.default_rng(1).integers(0, 256, 3000, dtype=np.uint8))


def _files(root: Path) -> dict[str, str]:
    """Every bad file the corpus refers to, by name."""
    made = {}

    def put(name: str, write) -> None:
        path = root / name
        write(path)
        made[name] = str(path)

    for suffix in ("pt", "pth", "pt2", "npz", "npy", "safetensors", "json"):
        put(f"random.{suffix}", lambda p: p.write_bytes(RANDOM))
        put(f"empty.{suffix}", lambda p: p.write_bytes(b""))
    for name, source in (("teacher", TEACHER), ("student", STUDENT)):
        put(f"half-{name}.pt", lambda p, s=source: p.write_bytes(Path(s).read_bytes()[: Path(s).stat().st_size // 2]))
    program = torch.export.export(torch.nn.Linear(64, 10), (torch.zeros(2, 64),))
    torch.export.save(program, root / "whole.pt2")
    put("half.pt2", lambda p: p.write_bytes((root / "whole.pt2").read_bytes()[:2000]))
    put("weights.xyz", lambda p: p.write_bytes(b"weights"))
    put("a-directory", lambda p: p.mkdir())
    logits = np.zeros((540, 10))
    put("nan-logits.npy", lambda p: np.save(p, np.where(np.eye(540, 10, dtype=bool), np.nan, logits)))
    put("inf-logits.npy", lambda p: np.save(p, np.where(np.eye(540, 10, dtype=bool), np.inf, logits)))
    put("three-classes.npy", lambda p: np.save(p, np.zeros((540, 3))))
    put("short-logits.npy", lambda p: np.save(p, np.zeros((100, 10))))
    put("flat-logits.npy", lambda p: np.save(p, np.zeros(540)))
    put("cube-logits.npy", lambda p: np.save(p, np.zeros((540, 10, 2))))
    put("text-logits.npy", lambda p: np.save(p, np.array(["a"] * 540)))
    put("complex-logits.npy", lambda p: np.save(p, np.zeros((540, 10), dtype=complex)))
    put("one-class-logits.npy", lambda p: np.save(p, np.zeros((540, 1))))
    put("no-logits.npz", lambda p: np.savez(p, something=np.zeros((540, 10))))
    put("objects.npz", lambda p: np.savez(p, logits=np.array([{"a": 1}] * 3, dtype=object)))
    put("pickled-module.pt", lambda p: torch.save(torch.nn.Linear(64, 10), p))
    put("wrong-input.pt2", lambda p: torch.export.save(torch.export.export(torch.nn.Linear(7, 10),
                                                                           (torch.zeros(2, 7),)), p))
    put("bare-state-dict.pt", lambda p: torch.save(torch.nn.Linear(64, 10).state_dict(), p))
    x = np.random.default_rng(0).random((50, 64)).astype(np.float32)
    put("data-empty.npz", lambda p: np.savez(p, x=np.zeros((0, 64), np.float32), y=np.zeros(0, int)))
    put("data-labels-range.npz", lambda p: np.savez(p, x=x, y=np.full(50, 17)))
    put("data-labels-negative.npz", lambda p: np.savez(p, x=x, y=np.full(50, -1)))
    put("data-labels-float.npz", lambda p: np.savez(p, x=x, y=np.full(50, 0.5)))
    put("data-labels-2d.npz", lambda p: np.savez(p, x=x, y=np.zeros((50, 2), int)))
    put("data-length.npz", lambda p: np.savez(p, x=x, y=np.zeros(40, int)))
    put("data-no-y.npz", lambda p: np.savez(p, x=x))
    put("data-features.npz", lambda p: np.savez(p, x=x[:, :10], y=np.arange(50) % 10))  # one class: not enough
    put("data-nan.npz", lambda p: np.savez(p, x=np.where(np.eye(50, 64, dtype=bool), np.nan, x), y=np.zeros(50, int)))
    put("data-dict.pt", lambda p: torch.save({"inputs": torch.zeros(3)}, p))
    put("classes-wrong-length.json", lambda p: p.write_text(json.dumps({"names": ["a", "b"]})))
    put("classes-not-json.json", lambda p: p.write_text("{names: [}"))
    put("classes-list.json", lambda p: p.write_text("[1, 2, 3]"))
    put("classes-long-name.json", lambda p: p.write_text(json.dumps({"names": ["A" * 1_500_000] + ["b"] * 9})))
    put("classes-huge-group.json", lambda p: p.write_text(json.dumps({"groups": [10**18] + [0] * 9})))
    put("classes-mismatch.json", lambda p: p.write_text(json.dumps({"names": list("abcdefghij"), "groups": [0, 1]})))
    put("a-file", lambda p: p.write_text("x"))
    put("models.py", lambda p: p.write_text("from kddiag.models import MLP\n\n\nclass Net(MLP):\n"
                                           "    def __init__(self, hidden):\n"
                                           "        super().__init__((64, hidden, 10))\n"))
    _image_files(put)
    return made


def _image_files(put) -> None:
    """Image folders, image arrays and data specs that cannot be used."""
    from PIL import Image

    def folder(path: Path, images: dict[str, np.ndarray | bytes]) -> None:
        for name, content in images.items():
            (path / name).parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                (path / name).write_bytes(content)
            else:
                Image.fromarray(content).save(path / name)

    pixels = np.zeros((8, 8, 3), np.uint8)
    put("images-rgb", lambda p: folder(p, {"a/1.png": pixels, "b/2.png": pixels}))
    put("images-corrupt", lambda p: folder(p, {"a/1.png": pixels, "b/corrupt.png": RANDOM[:100]}))
    put("images-mixed", lambda p: folder(p, {"a/1.png": pixels, "b/2.png": np.zeros((9, 8, 3), np.uint8)}))
    put("images-loose", lambda p: folder(p, {"1.png": pixels}))
    put("images-sixteen-bit", lambda p: folder(p, {"a/deep.png": np.zeros((8, 8), np.uint16)}))
    put("uint8-five-channels.npz", lambda p: np.savez(p, x=np.zeros((4, 5, 6, 7), np.uint8), y=np.zeros(4, int)))
    put("token-cubes.npz", lambda p: np.savez(p, x=np.zeros((4, 2, 8, 8), np.int32), y=np.zeros(4, int)))
    put("spec-unknown-key.json", lambda p: p.write_text(json.dumps({"path": ".", "size": [8, 8]})))
    put("spec-not-json.json", lambda p: p.write_text("{path: images}"))
    put("spec-missing-path.json", lambda p: p.write_text(json.dumps({"path": "nowhere"})))
    put("spec-bad-std.json", lambda p: p.write_text(json.dumps({"path": ".", "normalize": {"mean": [0], "std": [0]}})))


DIGITS = ["--data", "digits:test"]
CASES = {  # name: (arguments, fragments the one line must hold); {name} is the file of that name
    # corrupt, empty and truncated model files of every format
    **{f"random model .{s}": (["{random.%s}" % s, STUDENT, *DIGITS], ["random." + s]) for s in
       ("pt", "pth", "pt2", "npz", "npy", "safetensors")},
    **{f"empty model .{s}": (["{empty.%s}" % s, STUDENT, *DIGITS], ["empty." + s]) for s in
       ("pt", "pth", "pt2", "npz", "npy", "safetensors")},
    "truncated teacher": (["{half-teacher.pt}", STUDENT, *DIGITS], ["half-teacher.pt"]),
    "truncated student": ([TEACHER, "{half-student.pt}", *DIGITS], ["half-student.pt"]),
    "truncated program": (["{half.pt2}", STUDENT, *DIGITS], ["half.pt2"]),
    "unknown format": (["{weights.xyz}", STUDENT, *DIGITS], ["weights.xyz"]),
    "model is a directory": (["{a-directory}", STUDENT, *DIGITS], ["a-directory"]),
    "missing teacher": (["nowhere/teacher.pt", STUDENT, *DIGITS], ["nowhere/teacher.pt"]),
    "missing student": ([TEACHER, "nowhere/student.pt", *DIGITS], ["nowhere/student.pt"]),
    "missing baseline": ([TEACHER, STUDENT, *DIGITS, "--baseline", "nowhere/b.pt"], ["nowhere/b.pt"]),
    "pickled module": (["{pickled-module.pt}", STUDENT, *DIGITS], ["pickled-module.pt", "--trust-pickle"]),
    "state dict without arch": (["{bare-state-dict.pt}", STUDENT, *DIGITS], ["bare-state-dict.pt", "--teacher-arch"]),
    "program of the wrong input size": (["{wrong-input.pt2}", STUDENT, *DIGITS], ["teacher", "wrong-input.pt2"]),
    # logits files with wrong shapes, dtypes and values
    "NaN logits": ([TEACHER, "{nan-logits.npy}", *DIGITS], ["student", "NaN"]),
    "Inf logits": ([TEACHER, "{inf-logits.npy}", *DIGITS], ["student", "Inf"]),
    "class count mismatch": ([TEACHER, "{three-classes.npy}", *DIGITS], ["3"]),
    "logits rows vs labels": ([TEACHER, "{short-logits.npy}", *DIGITS], ["short-logits.npy", "100"]),
    "1-D logits": ([TEACHER, "{flat-logits.npy}", *DIGITS], ["flat-logits.npy"]),
    "3-D logits": ([TEACHER, "{cube-logits.npy}", *DIGITS], ["cube-logits.npy"]),
    "text logits": ([TEACHER, "{text-logits.npy}", *DIGITS], ["text-logits.npy"]),
    "complex logits": ([TEACHER, "{complex-logits.npy}", *DIGITS], ["complex-logits.npy"]),
    "one-class logits": ([TEACHER, "{one-class-logits.npy}", *DIGITS], ["one-class-logits.npy"]),
    "npz without logits": ([TEACHER, "{no-logits.npz}", *DIGITS], ["no-logits.npz", "logits"]),
    "object arrays": ([TEACHER, "{objects.npz}", *DIGITS], ["objects.npz", "Python objects"]),
    # data files
    "no data at all": ([TEACHER, STUDENT], ["--data"]),
    "unknown built-in data": ([TEACHER, STUDENT, "--data", "cifar"], ["--data", "cifar"]),
    "missing data": ([TEACHER, STUDENT, "--data", "nowhere.npz"], ["--data", "nowhere.npz"]),
    "missing transfer data": ([TEACHER, STUDENT, *DIGITS, "--transfer-data", "nowhere.pt"], ["--transfer-data"]),
    "data is a directory": ([TEACHER, STUDENT, "--data", "{a-directory}"], ["--data", "a-directory"]),
    "random data .npz": ([TEACHER, STUDENT, "--data", "{random.npz}"], ["--data", "random.npz"]),
    "random data .pt": ([TEACHER, STUDENT, "--data", "{random.pt}"], ["--data", "random.pt"]),
    "empty data file": ([TEACHER, STUDENT, "--data", "{empty.npz}"], ["--data", "empty.npz"]),
    "empty data set": ([TEACHER, STUDENT, "--data", "{data-empty.npz}"], ["data-empty.npz", "empty"]),
    "labels out of range": ([TEACHER, STUDENT, "--data", "{data-labels-range.npz}"], ["data-labels-range.npz", "17"]),
    "negative labels": ([TEACHER, STUDENT, "--data", "{data-labels-negative.npz}"], ["data-labels-negative.npz"]),
    "float labels": ([TEACHER, STUDENT, "--data", "{data-labels-float.npz}"], ["data-labels-float.npz"]),
    "2-D labels": ([TEACHER, STUDENT, "--data", "{data-labels-2d.npz}"], ["data-labels-2d.npz"]),
    "inputs vs labels": ([TEACHER, STUDENT, "--data", "{data-length.npz}"], ["data-length.npz"]),
    "no labels": ([TEACHER, STUDENT, "--data", "{data-no-y.npz}"], ["data-no-y.npz", "y"]),
    "wrong input features": ([TEACHER, STUDENT, "--data", "{data-features.npz}"], ["teacher"]),
    "NaN inputs": ([TEACHER, STUDENT, "--data", "{data-nan.npz}"], ["data-nan.npz"]),
    "tensor file without x, y": ([TEACHER, STUDENT, "--data", "{data-dict.pt}"], ["data-dict.pt"]),
    # options
    "temperature 0": ([TEACHER, STUDENT, *DIGITS, "--temperature", "0"], ["--temperature"]),
    "temperature inf": ([TEACHER, STUDENT, *DIGITS, "--temperature", "inf"], ["--temperature"]),
    "temperature nan": ([TEACHER, STUDENT, *DIGITS, "--temperature", "nan"], ["--temperature"]),
    "temperature 1e308": ([TEACHER, STUDENT, *DIGITS, "--temperature", "1e308"], ["--temperature"]),
    "temperature text": ([TEACHER, STUDENT, *DIGITS, "--temperature", "hot"], ["--temperature"]),
    "alpha 1.5": ([TEACHER, STUDENT, *DIGITS, "--alpha", "1.5"], ["--alpha"]),
    "alpha -0.1": ([TEACHER, STUDENT, *DIGITS, "--alpha", "-0.1"], ["--alpha"]),
    "alpha nan": ([TEACHER, STUDENT, *DIGITS, "--alpha", "nan"], ["--alpha"]),
    "batch size 0": ([TEACHER, STUDENT, *DIGITS, "--batch-size", "0"], ["--batch-size"]),
    "batch size -3": ([TEACHER, STUDENT, *DIGITS, "--batch-size", "-3"], ["--batch-size"]),
    "device banana": ([TEACHER, STUDENT, *DIGITS, "--device", "banana"], ["--device"]),
    "device cuda:7 absent": ([TEACHER, STUDENT, *DIGITS, "--device", "cuda:7"], ["--device"]),
    "fail-on nonsense": ([TEACHER, STUDENT, *DIGITS, "--fail-on", "nonsense"], ["--fail-on"]),
    "fail-on 2": ([TEACHER, STUDENT, *DIGITS, "--fail-on", "2"], ["--fail-on"]),
    "arch without colon": (["{bare-state-dict.pt}", STUDENT, *DIGITS, "--teacher-arch", "nomodule"],
                           ["--teacher-arch"]),
    "arch module missing": (["{bare-state-dict.pt}", STUDENT, *DIGITS, "--teacher-arch", "no_such_mod:f"],
                            ["--teacher-arch"]),
    "unknown built-in arch": (["{bare-state-dict.pt}", STUDENT, *DIGITS, "--teacher-arch", "mlp:abc"],
                              ["--teacher-arch"]),
    "arch argument is a call": (["{bare-state-dict.pt}", STUDENT, *DIGITS, "--teacher-arch", "m:Net(open('x'))"],
                                ["--teacher-arch", "must be a literal", "a call"]),
    "arch argument is a name": (["{bare-state-dict.pt}", STUDENT, *DIGITS, "--teacher-arch", "m:Net(size)"],
                                ["--teacher-arch", "must be a literal", "a name"]),
    "arch syntax": (["{bare-state-dict.pt}", STUDENT, *DIGITS, "--teacher-arch", "m:Net(28"], ["--teacher-arch"]),
    "arch file missing": (["{bare-state-dict.pt}", STUDENT, *DIGITS, "--teacher-arch", "nowhere/models.py:Net(8)"],
                          ["--teacher-arch", "nowhere/models.py"]),
    "arch arguments missing": (["{bare-state-dict.pt}", STUDENT, *DIGITS, "--teacher-arch", "{models.py}:Net"],
                               ["--teacher-arch", "missing 1 required positional argument"]),
    "ema but none in the file": ([TEACHER, STUDENT, *DIGITS, "--ema", "teacher"], ["teacher.pt", "--ema teacher"]),
    "ema of an unknown role": ([TEACHER, STUDENT, *DIGITS, "--ema", "teachr"], ["--ema"]),
        "feature layer missing": ([TEACHER, STUDENT, *DIGITS, "--feature-layer", "no.such.layer"], ["no.such.layer"]),
    "classes missing": ([TEACHER, STUDENT, *DIGITS, "--classes", "nowhere.json"], ["--classes"]),
    "classes not json": ([TEACHER, STUDENT, *DIGITS, "--classes", "{classes-not-json.json}"], ["--classes"]),
    "classes a list": ([TEACHER, STUDENT, *DIGITS, "--classes", "{classes-list.json}"], ["--classes"]),
    "classes wrong length": ([TEACHER, STUDENT, *DIGITS, "--classes", "{classes-wrong-length.json}"],
                             ["--classes", "2"]),
    "classes names vs groups": ([TEACHER, STUDENT, *DIGITS, "--classes", "{classes-mismatch.json}"],
                                ["--classes"]),
    "class name 1.5 MB": ([TEACHER, STUDENT, *DIGITS, "--classes", "{classes-long-name.json}"],
                          ["--classes", "at most 256 characters", "1,500,000"]),
    "class group 1e18": ([TEACHER, STUDENT, *DIGITS, "--classes", "{classes-huge-group.json}"],
                         ["--classes", "class group 0", "[0, 524,288)"]),
    "arrays without out": ([TEACHER, STUDENT, *DIGITS, "--arrays"], ["--arrays"]),
    # images: options, folders, arrays and data specs
    "normalize text": ([TEACHER, STUDENT, *DIGITS, "--normalize", "a,b"], ["--normalize", "a,b"]),
    "normalize odd count": ([TEACHER, STUDENT, *DIGITS, "--normalize", "0.5,0.25,0.1"], ["--normalize", "3 numbers"]),
    "normalize std 0": ([TEACHER, STUDENT, *DIGITS, "--normalize", "0.5,0"], ["--normalize", "std"]),
    "normalize std < 0": ([TEACHER, STUDENT, *DIGITS, "--normalize", "0.5,0.5,0.5,-1,1,1"], ["--normalize", "std"]),
    "normalize nan": ([TEACHER, STUDENT, *DIGITS, "--normalize", "nan,1"], ["--normalize", "finite"]),
    "resize one number": ([TEACHER, STUDENT, *DIGITS, "--resize", "8"], ["--resize", "HEIGHT,WIDTH"]),
    "resize zero": ([TEACHER, STUDENT, *DIGITS, "--resize", "0,8"], ["--resize"]),
    "resize text": ([TEACHER, STUDENT, *DIGITS, "--resize", "big"], ["--resize"]),
    "resize three numbers": ([TEACHER, STUDENT, *DIGITS, "--resize", "8,8,8"], ["--resize"]),
    "layout unknown": ([TEACHER, STUDENT, *DIGITS, "--layout", "HWC"], ["--layout"]),
    "image options on flat features": ([TEACHER, STUDENT, *DIGITS, "--normalize", "0.5,0.25"],
                                       ["--data 'digits:test'", "normalize"]),
    "normalize vs channels": ([TEACHER, STUDENT, "--data", "{images-rgb}", "--normalize", "0.5,0.25"],
                              ["images-rgb", "3 channel"]),
    "corrupt image": ([TEACHER, STUDENT, "--data", "{images-corrupt}"], ["images-corrupt", "b/corrupt.png"]),
    "mixed image sizes": ([TEACHER, STUDENT, "--data", "{images-mixed}"], ["images-mixed", "a/1.png", "b/2.png",
                                                                          "--resize"]),
    "images without class folders": ([TEACHER, STUDENT, "--data", "{images-loose}"], ["images-loose", "class folder"]),
    "16-bit image": ([TEACHER, STUDENT, "--data", "{images-sixteen-bit}"], ["a/deep.png", "8-bit"]),
    "image layout undetectable": ([TEACHER, STUDENT, "--data", "{uint8-five-channels.npz}"],
                                  ["uint8-five-channels.npz", "--layout"]),
    "image options on token ids": ([TEACHER, STUDENT, "--data", "{token-cubes.npz}", "--resize", "4,4"],
                                   ["token-cubes.npz", "token ids"]),
    "spec unknown key": ([TEACHER, STUDENT, "--data", "{spec-unknown-key.json}"], ["spec-unknown-key.json", "'size'"]),
    "spec not JSON": ([TEACHER, STUDENT, "--data", "{spec-not-json.json}"], ["spec-not-json.json"]),
    "spec path missing": ([TEACHER, STUDENT, "--transfer-data", "{spec-missing-path.json}"],
                          ["--transfer-data", "spec-missing-path.json", "nowhere"]),
    "spec std 0": ([TEACHER, STUDENT, "--data", "{spec-bad-std.json}"], ["spec-bad-std.json", "'normalize'"]),
    # output locations
    "out is a file": ([TEACHER, STUDENT, *DIGITS, "--out", "{a-file}"], ["--out"]),
    "out below a file": ([TEACHER, STUDENT, *DIGITS, "--out", "{a-file}/report"], ["--out"]),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return _files(tmp_path_factory.mktemp("bad"))


def test_the_corpus_is_large():
    assert len(CASES) >= 60


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_gives_one_line_and_nothing_else(name, files, tmp_path):
    template, fragments = CASES[name]
    args = [re.sub(r"\{([^}]+)\}", lambda m: files[m.group(1)], arg) for arg in template]
    out = tmp_path / "out"
    if "--out" not in args and "--arrays" not in args:
        args += ["--out", str(out)]
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        result = CliRunner().invoke(main, ["inspect", *args, "--no-progress"])
    assert result.exit_code in (1, 2), (name, result.output)
    assert "Traceback" not in result.output, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("kddiag: error: "), (name, result.stderr)  # usage errors too
    for fragment in fragments:
        assert fragment in lines[0], (name, lines[0])
    assert shown == [], [str(w.message) for w in shown]
    assert not out.exists() or list(out.iterdir()) == []
