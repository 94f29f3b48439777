"""Red-team pickles (legacy container-source writes, BUILD on shared classes, the legacy tar format with a FIFO,
zero-stride tensors declaring terabytes): each is refused with one line, or read with the object skipped where
docs/security.md promises so, by the CLI in a subprocess under a memory cap and a timeout. Payloads are built
here, never committed."""
from __future__ import annotations

import argparse
import collections
import io
import pickle
import resource
import struct
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch

from kddiag.models import builtin_arch

ROOT = Path(__file__).resolve().parents[2]  # the subprocess imports this checkout's kddiag
ARCH = "mlp:64-32-10"  # digits: 64 features, 10 classes
MEMORY_CAP = int(2.5 * (1 << 30))
TIMEOUT = 120
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_HEADER = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}


def _capped() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def run(args: list[str], cwd: Path, tmp: Path, timeout: int = TIMEOUT):
    """``python -m kddiag ARGS`` (or ``python ARGS``) in ``cwd``, capped at MEMORY_CAP, with TMPDIR=``tmp``."""
    import os
    import subprocess

    tmp.mkdir(exist_ok=True)
    env = {**os.environ, "TMPDIR": str(tmp), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, preexec_fn=_capped)


def inspect(tmp_path: Path, teacher: Path, *, data: str = "digits:test", arch: str | None = ARCH):
    cwd = tmp_path / "cwd"
    cwd.mkdir(exist_ok=True)
    args = ["-m", "kddiag", "inspect", str(teacher), "--data", data, "--out", str(tmp_path / "out")]
    return run(args + (["--teacher-arch", arch] if arch else []), cwd, tmp_path / "tmp")


def assert_refused(result, *fragments: str) -> None:
    assert result.returncode == 1, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr + result.stdout, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def written_outside_out(tmp_path: Path, *markers: Path) -> list[Path]:
    """Files a payload may have written: any .patch or marker under tmp_path but outside the output dir."""
    out = tmp_path / "out"
    found = [p for p in tmp_path.rglob("*") if p.suffix == ".patch" and out not in p.parents]
    return found + [m for m in markers if m.exists()] + list(Path.cwd().glob("*.patch"))


def U(text: str) -> bytes:  # BINUNICODE
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def legacy_file(path: Path, content_pickle: bytes) -> None:
    """A legacy (non-zip) torch.save file around a hand-written content pickle, with no storages."""
    with open(path, "wb") as f:
        for header in (LEGACY_MAGIC, 1001, LEGACY_HEADER):
            pickle.dump(header, f, protocol=2)
        f.write(content_pickle)
        pickle.dump([], f, protocol=2)


def good_teacher(path: Path, **save_args) -> Path:
    torch.manual_seed(0)
    torch.save(builtin_arch(ARCH)().state_dict(), path, **save_args)
    return path


# --- R06: legacy container source -> '<__name__>.patch' written outside --out --------------------------

def test_legacy_build_on_namespace_class_then_module_id_writes_nothing(tmp_path):
    target = tmp_path / "elsewhere" / "PWNED_legacy_write"
    target.parent.mkdir()
    src = "x\nimport os; os.system('touch PWNED_from_pth_line')\n#"
    content = (b"\x80\x02(" + U("module") + b"cargparse\nNamespace\n" + b"N}" + U("__name__") + U(str(target))
               + b"s" + U("dump_patches") + b"\x88s" + b"\x86b" + U(src) + U("attacker line 1\nline 2\n") + b"tQ.")
    legacy_file(path := tmp_path / "p01.pt", content)
    result = inspect(tmp_path, path)
    assert_refused(result, "p01.pt", "argparse.Namespace")
    assert not written_outside_out(tmp_path, target.with_suffix(".patch"), tmp_path / "cwd" / "PWNED_from_pth_line")
    assert not list(target.parent.iterdir())


@pytest.mark.parametrize("container", ["collections\nOrderedDict\n", "torch.nn.modules.linear\nLinear\n"])
def test_legacy_module_persistent_id_is_refused(tmp_path, container):
    content = (b"\x80\x02(" + U("module") + b"c" + container.encode() + U("source.py")
               + U("class Changed:\n    pass\n") + b"tQ.")
    legacy_file(path := tmp_path / "module_id.pt", content)
    result = inspect(tmp_path, path)
    assert_refused(result, "module_id.pt", "'module' persistent id")
    assert not written_outside_out(tmp_path)


# --- R07: the legacy tar format, 'storages' a FIFO ----------------------------------------------------

def test_legacy_tar_format_with_a_fifo_is_refused_without_hanging(tmp_path):
    path = tmp_path / "p02.pt"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as archive:
        member = tarfile.TarInfo("storages")
        member.type = tarfile.FIFOTYPE
        archive.addfile(member)
        for name in ("tensors", "pickle"):
            member, data = tarfile.TarInfo(name), b"\x80\x02K\x00."
            member.size = len(data)
            archive.addfile(member, io.BytesIO(data))
    result = inspect(tmp_path, path)  # a hang fails here through TimeoutExpired
    assert_refused(result, "p02.pt", "legacy tar format")
    assert not list((tmp_path / "tmp").rglob("*")), list((tmp_path / "tmp").rglob("*"))  # no extracted members


# --- R08: BUILD on argparse.Namespace / collections.Counter (the classes) -------------------------------

def monkeypatching_checkpoint(tmp_path: Path) -> Path:
    source, path = good_teacher(tmp_path / "good.pt"), tmp_path / "p17.pt"
    patch = (b"cargparse\nNamespace\nN}" + U("__init__") + b"cevil\nhook\ns\x86b0"
             + b"ccollections\nCounter\nN}" + U("__init__") + b"cevil\nhook\ns\x86b0")
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename.endswith("/data.pkl"):
                assert data[:2] == b"\x80\x02"
                data = data[:2] + patch + data[2:]
            zout.writestr(info, data)
    return path


def test_build_on_allowed_classes_is_refused_through_the_cli(tmp_path):
    result = inspect(tmp_path, monkeypatching_checkpoint(tmp_path))
    assert_refused(result, "p17.pt", "sets attributes on the class argparse.Namespace")
    assert not written_outside_out(tmp_path)


def test_build_on_allowed_classes_leaves_the_host_process_untouched(tmp_path):
    path = monkeypatching_checkpoint(tmp_path)
    code = f"""
import argparse, collections, torch
import kddiag
from kddiag.errors import UnsafeLoadError
from kddiag.types import InspectOptions
init = argparse.Namespace.__init__, collections.Counter.__init__
try:
    kddiag.inspect({str(path)!r}, data="digits:test", options=InspectOptions(teacher_arch={ARCH!r}))
    print("LOADED")
except UnsafeLoadError as error:
    print("REFUSED", error)
assert (argparse.Namespace.__init__, collections.Counter.__init__) == init
assert vars(argparse.ArgumentParser().parse_args([])) == {{}}
assert collections.Counter("abca") == {{"a": 2, "b": 1, "c": 1}}
assert (torch.ones(2) + 1).tolist() == [2.0, 2.0]
kddiag.inspect({str(tmp_path / 'good.pt')!r}, data="digits:test", options=InspectOptions(teacher_arch={ARCH!r}))
print("HOST OK")
"""
    result = run(["-c", code], tmp_path, tmp_path / "tmp")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "REFUSED" in result.stdout and "argparse.Namespace" in result.stdout, result.stdout
    assert "HOST OK" in result.stdout
    # and in this process too: nothing here was touched by the subprocess, but the API must not touch it either
    assert vars(argparse.ArgumentParser().parse_args([])) == {} and collections.Counter("aa") == {"a": 2}


# --- what docs/security.md promises still holds: an unknown object beside the weights is skipped ---------

class Settings(dict):
    """A dict subclass, as some trainers save their hyper-parameters."""


@pytest.mark.parametrize("file_format", ["zip", "legacy", "protocol-4"])
def test_unknown_object_and_namespace_beside_the_weights_still_load(tmp_path, file_format):
    save_args = {"zip": {}, "legacy": {"_use_new_zipfile_serialization": False},
                 "protocol-4": {"pickle_protocol": 4}}[file_format]
    torch.manual_seed(0)
    checkpoint = {"state_dict": builtin_arch(ARCH)().state_dict(), "args": argparse.Namespace(lr=0.1, T=4.0),
                  "hyper_parameters": Settings(T=4.0), "queue": collections.deque([1])}
    torch.save(checkpoint, path := tmp_path / "teacher.pt", **save_args)
    result = inspect(tmp_path, path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert not written_outside_out(tmp_path)


# --- zero-stride / declared-size bombs ---------------------------------------------------------------

def zero_stride(shape: tuple[int, ...], dtype=torch.float32) -> torch.Tensor:
    base = torch.randn(shape[-1]).to(dtype) if len(shape) > 1 else torch.zeros(1, dtype=dtype)
    return base.as_strided(shape, (0, 1) if len(shape) > 1 else (0,))


def test_zero_stride_data_is_refused_before_it_is_materialized(tmp_path):
    rows = 2 * 10**7  # 5 GB as float32 inputs, from a file of about 2 KB
    torch.save({"x": zero_stride((rows, 64)), "y": zero_stride((rows,), torch.int64)}, data := tmp_path / "data.pt")
    assert data.stat().st_size < 10_000
    result = inspect(tmp_path, good_teacher(tmp_path / "teacher.pt"), data=str(data))
    assert_refused(result, "data.pt", "'x'", "stores only")


def test_zero_stride_data_declaring_ten_billion_rows_is_refused(tmp_path):
    rows = 10**10
    torch.save({"x": zero_stride((rows, 64)), "y": zero_stride((rows,), torch.int64)}, data := tmp_path / "data.pt")
    result = inspect(tmp_path, good_teacher(tmp_path / "teacher.pt"), data=str(data))
    assert_refused(result, "data.pt", "'x'", "stores only")


@pytest.mark.parametrize("layout", ["dict", "labels", "tensor"])
def test_zero_stride_logits_are_refused_before_they_are_materialized(tmp_path, layout):
    rows = 10**10  # 400 GB of float32 logits (2.56 TB as float64 inputs) from a 2 KB file
    logits = zero_stride((rows, 10))
    content = {"dict": {"eval": logits, "transfer": logits},
               "labels": {"eval": torch.randn(3, 10), "labels": zero_stride((rows,), torch.int64)},
               "tensor": logits}[layout]
    torch.save(content, path := tmp_path / "logits.pt")
    result = inspect(tmp_path, path, arch=None)
    assert_refused(result, "logits.pt", "stores only")


def test_contiguous_data_and_views_of_a_larger_storage_still_load(tmp_path):
    from kddiag.readers.arrays import load_dataset

    storage = torch.randn(200, 64)
    torch.save({"x": storage[:100], "y": torch.arange(100) % 10}, data := tmp_path / "data.pt")
    assert len(load_dataset(str(data)).labels) == 100
