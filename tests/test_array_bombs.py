"""Memory bombs in arrays and names, built here (no binaries committed), each run by the CLI in a subprocess
under a memory cap and a timeout: exit code 1, one line on stderr naming the file, no traceback.

- a .npz of 8 MB whose deflated member inflates to 7.45 GiB (for --data and as a logits file);
- a .npz member whose .npy header declares far more than the member holds;
- top-k logits whose 'n_classes' is 10^7 or 10^12;
- a checkpoint storing the built-in architecture 'mlp:8-8-…' with 300,000 layers.
"""
from __future__ import annotations

import io
import os
import resource
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from kddiag.cli import DEMO_STUDENT, DEMO_TEACHER
from kddiag.errors import KddiagError
from kddiag.loading import load_model
from kddiag.readers.arrays import load_dataset
from kddiag.loading.logits import MAX_NPZ_INFLATED_BYTES

ROOT = Path(__file__).resolve().parents[1]  # the subprocess imports this checkout's kddiag
MEMORY_CAP = 2_500_000_000  # bytes of address space: kddiag's own runs take about 1.4 GB
TIMEOUT = 120  # seconds; each case is refused in a few
BOMB_BYTES = 8_000_000_000  # 7.45 GiB of zeros: deflated to 7.8 MB


def _npy_header(dtype: str, shape: tuple) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                                  "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def _deflated_zeros(header: bytes, n_zeros: int) -> bytes:
    """``header`` then ``n_zeros`` zero bytes, deflated without ever holding them: after a full flush the
    compressor starts afresh, so every 16 MiB block of zeros deflates to the same bytes."""
    block = 16 << 20
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = compressor.compress(header) + compressor.flush(zlib.Z_FULL_FLUSH)
    repeated = compressor.compress(bytes(block)) + compressor.flush(zlib.Z_FULL_FLUSH)
    tail = compressor.compress(bytes(n_zeros % block)) + compressor.flush()
    return head + repeated * (n_zeros // block) + tail


def write_zip64(path: Path, members: list[tuple[str, bytes, int, int]]) -> Path:
    """A zip of deflated members (name, deflated bytes, inflated size, CRC-32) with ZIP64 sizes, as numpy's
    np.savez_compressed writes a member over 4 GiB."""
    out, central = bytearray(), bytearray()
    for name, data, size, crc in members:
        offset, encoded = len(out), name.encode()
        extra = struct.pack("<HHQQ", 1, 16, size, len(data))
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 45, 0, 8, 0, 0x21, crc, 0xFFFFFFFF, 0xFFFFFFFF,
                           len(encoded), len(extra)) + encoded + extra + data
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 45, 45, 0, 8, 0, 0x21, crc, 0xFFFFFFFF,
                               0xFFFFFFFF, len(encoded), len(extra), 0, 0, 0, 0, offset) + encoded + extra
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(central), len(out), 0)
    path.write_bytes(bytes(out + central + end))
    return path


def npz_bomb(path: Path, key: str, shape: tuple, *, beside: dict | None = None, crc: bool = False) -> Path:
    """An .npz whose member ``key`` is float64 zeros of ``shape`` deflated (8 MB for 7.45 GiB); ``crc``
    computes the true CRC-32 (1.6 s; the refusal never reads that far)."""
    header = _npy_header("<f8", shape)
    n_zeros = int(np.prod(shape)) * 8
    checksum = zlib.crc32(header)
    if crc:
        zeros = bytes(16 << 20)
        for start in range(0, n_zeros, len(zeros)):
            checksum = zlib.crc32(zeros[:min(len(zeros), n_zeros - start)], checksum)
    members = [(f"{key}.npy", _deflated_zeros(header, n_zeros), len(header) + n_zeros, checksum)]
    for name, array in (beside or {}).items():
        buffer = io.BytesIO()
        np.save(buffer, array)
        raw = buffer.getvalue()
        compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
        members.append((f"{name}.npy", compressor.compress(raw) + compressor.flush(), len(raw), zlib.crc32(raw)))
    return write_zip64(path, members)


def _cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def run_capped(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``kddiag ARGS`` under the memory cap and the timeout."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "kddiag", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=TIMEOUT, preexec_fn=_cap_memory)


def assert_one_line(done: subprocess.CompletedProcess, *fragments: str) -> str:
    assert done.returncode == 1, (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr + done.stdout and "MemoryError" not in done.stderr, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kddiag: error: "), done.stderr[-2000:]
    assert len(lines[0]) < 600, len(lines[0])
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


# --- .npz members that inflate past their bounds ------------------------------------------------------

def test_deflate_bomb_as_data_is_refused_before_inflating(tmp_path):
    path = npz_bomb(tmp_path / "bomb-data.npz", "x", (BOMB_BYTES // 64, 8), beside={"y": np.zeros(3, np.int64)})
    assert path.stat().st_size < 9_000_000
    started = time.monotonic()
    line = assert_one_line(run_capped("inspect", str(DEMO_TEACHER), str(DEMO_STUDENT), "--data", str(path),
                                      "--out", str(tmp_path / "out"), cwd=tmp_path),
                           "--data", "bomb-data.npz", "x.npy", "7.45 GiB", "MAX_NPZ_INFLATED_BYTES")
    assert time.monotonic() - started < 60, line
    assert not (tmp_path / "out").exists()


def test_deflate_bomb_as_logits_is_refused_before_inflating(tmp_path):
    path = npz_bomb(tmp_path / "bomb-logits.npz", "logits", (BOMB_BYTES // 80, 10))
    assert_one_line(run_capped("inspect", str(path), "--data", "digits:test", "--out", str(tmp_path / "out"),
                               cwd=tmp_path), "teacher", "bomb-logits.npz", "logits.npy", "float64 (100000000, 10)")


def test_header_declaring_more_than_its_member_holds(tmp_path):
    path = tmp_path / "liar.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("logits.npy", _npy_header("<f4", (10**12, 10)) + bytes(400))
        archive.writestr("labels.npy", _npy_header("<i8", (10**15,)) + bytes(80))
    with pytest.raises(KddiagError, match=r"member 'logits\.npy' is corrupt: its header declares float32 "
                                         r"\(1000000000000, 10\) \(36\.38 TiB\) but the member holds 400 bytes"):
        load_model(path)
    assert_one_line(run_capped("inspect", str(path), "--data", "digits:test", cwd=tmp_path), "liar.npz", "corrupt")


def test_the_inflation_limit_is_bytes_added_beyond_the_file(tmp_path, monkeypatch):
    """An uncompressed member adds nothing to what is on disk; compressed ones count what they inflate to."""
    logits = np.random.default_rng(0).normal(size=(540, 10))
    np.savez(tmp_path / "plain.npz", logits=logits)
    np.savez_compressed(tmp_path / "zeros.npz", logits=np.zeros((540, 10)))
    monkeypatch.setattr("kddiag.loading.logits.MAX_NPZ_INFLATED_BYTES", 1000)
    assert load_model(tmp_path / "plain.npz").logits["eval"].shape == (540, 10)
    with pytest.raises(KddiagError, match=r"zeros\.npz': its arrays inflate from \d+ bytes to 42\.31 KiB \(member "
                                         r"'logits\.npy': float64 \(540, 10\)\), over kddiag's limit of 1000 bytes"):
        load_model(tmp_path / "zeros.npz")
    assert MAX_NPZ_INFLATED_BYTES == 4 << 30


def test_an_npz_that_inflates_a_thousand_fold_under_the_byte_limit_is_refused(tmp_path, monkeypatch):
    """Red-team pass 3: 4 MB inflating to 3.9 GB sat under the 4 GiB limit and ran past a minute."""
    np.savez_compressed(tmp_path / "zeros.npz", x=np.zeros((20_000, 64), np.float32), y=np.zeros(20_000, np.int64))
    monkeypatch.setattr("kddiag.loading.logits.FREE_NPZ_BYTES", 1 << 20)  # the file inflates to 5.3 MB
    with pytest.raises(KddiagError, match=r"zeros\.npz': its arrays inflate [\d,]+-fold, from .* at most 100-fold"):
        load_dataset(str(tmp_path / "zeros.npz"))
    np.savez_compressed(tmp_path / "real.npz", x=np.random.default_rng(0).normal(size=(20_000, 64)).astype(np.float32),
                        y=np.zeros(20_000, np.int64))
    assert load_dataset(str(tmp_path / "real.npz")).x.shape == (20_000, 64)


def test_pre_tokenized_text_npz_is_bounded_the_same_way(tmp_path, monkeypatch):
    """Token ids given as .npz for a Hugging Face model go through the same header check."""
    from kddiag.readers.text import load_text_dataset

    np.savez_compressed(tmp_path / "ids.npz", input_ids=np.zeros((540, 10), np.int64))
    monkeypatch.setattr("kddiag.loading.logits.MAX_NPZ_INFLATED_BYTES", 1000)
    with pytest.raises(KddiagError, match=r"ids\.npz.*inflate.*over kddiag's limit of 1000 bytes"):
        load_text_dataset(tmp_path / "ids.npz", role="data", task="causal-lm")


# --- top-k logits of too many classes -----------------------------------------------------------------

@pytest.mark.parametrize("n_classes", [10**7, 10**12])
def test_topk_with_too_many_classes_is_refused_in_one_line(tmp_path, n_classes):
    rng = np.random.default_rng(0)
    ids = np.stack([rng.choice(10, 5, replace=False) for _ in range(540)])
    path = tmp_path / "topk.npz"
    np.savez(path, topk_ids=ids, topk_logprobs=np.full((540, 5), np.log(0.15)), n_classes=np.int64(n_classes))
    assert_one_line(run_capped("inspect", str(path), "--data", "digits:test", cwd=tmp_path),
                    "topk.npz", f"'n_classes' = {n_classes:,} is over kddiag's limit of 524,288")


# --- a built-in architecture name stored in a checkpoint ----------------------------------------------

def test_deep_builtin_arch_stored_in_a_checkpoint_is_refused_before_building(tmp_path):
    path = tmp_path / "deep.pt"
    torch.save({"arch": "mlp:" + "-".join(["8"] * 300_001), "state_dict": {"head.weight": torch.zeros(8, 8)}}, path)
    started = time.monotonic()
    line = assert_one_line(run_capped("inspect", str(DEMO_TEACHER), str(path), "--data", "digits:test",
                                      cwd=tmp_path),
                           "student checkpoint", "deep.pt", "its stored 'arch' 'mlp:8-8-8",
                           "(600,005 characters)", "300,000 layers; a built-in MLP has at most 256")
    assert "--student-arch" not in line
    assert time.monotonic() - started < 60


# --- a legacy (non-zip) torch.save file whose storage declares more than the file holds --------------------

@pytest.mark.parametrize("elements", [10**9 // 4, 10**11])
def test_a_legacy_storage_declaring_more_than_the_file_holds_is_one_line_under_the_cap(tmp_path, elements):
    import io

    import torch

    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(4)}, buffer, _use_new_zipfile_serialization=False)
    data = buffer.getvalue()
    assert data.count(b"K\x04Nt") == 1  # the storage's persistent id: (..., 'cpu', 4 elements, None)
    path = tmp_path / "legacy.pt"
    path.write_bytes(data.replace(b"K\x04Nt", b"\x8a\x05" + elements.to_bytes(5, "little") + b"Nt"))
    assert_one_line(run_capped("inspect", str(path), "--data", "digits:test", cwd=tmp_path), "legacy.pt")
