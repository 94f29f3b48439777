"""Files that are not files, links that loop or repeat, and sizes bounded before anything is allocated:
image folders, data files and specs, text files. Each refusal is one line naming the file or option; every
case that could hang runs under a deadline, so a regression fails instead of blocking."""
import json
import os
import socket
import struct
import warnings
import zlib

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from kddiag.cli import DEMO_TEACHER, main
from kddiag.readers.arrays import load_dataset
from kddiag.errors import KddiagError
from kddiag.files import check_entries, kind_of, open_regular
from kddiag.readers.images import MAX_RESIZE_PIXELS, images_from_array
from kddiag.readers.text import MAX_LINE_CHARS, load_text_dataset
from kddiag.options import ImageOptions
from small_models import deadline

RNG = np.random.default_rng(0)


@pytest.fixture
def folder(tmp_path):
    """An image folder: classes 'a' and 'b', three 8×8 grayscale images each."""
    root = tmp_path / "images"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(RNG.integers(0, 256, (8, 8), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def refused(spec, *words, **options):
    """load_dataset(spec) under a deadline: the one-line message, which must hold ``words``."""
    with deadline(), pytest.raises(KddiagError) as error:
        load_dataset(str(spec), **options)
    message = str(error.value)
    assert "\n" not in message, message
    for word in words:
        assert word in message, message
    return message


def png_header(width, height):
    """A PNG that declares width×height 1-bit pixels and holds none: a decompression bomb's header."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


# --- the helper ------------------------------------------------------------------------------------------

def test_kinds_are_named_and_only_regular_files_open(tmp_path, monkeypatch):
    (tmp_path / "file").write_bytes(b"x")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "broken").symlink_to(tmp_path / "nowhere")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    assert kind_of(tmp_path / "file") is None and kind_of(tmp_path / "fifo") == "a FIFO (named pipe)"
    assert kind_of("/dev/zero") == "a character device" and kind_of(tmp_path) == "a folder"
    assert kind_of(tmp_path / "broken") == "a broken link" and kind_of(tmp_path / "nowhere") == "missing"
    assert kind_of(tmp_path / "loop") == "a link loop"
    with open_regular(tmp_path / "file", "x") as handle:
        assert handle.read() == b"x"
    # swapped after the check: the descriptor, opened without blocking, is checked again
    monkeypatch.setattr("kddiag.files.check_regular", lambda path, where: None)
    with deadline(), pytest.raises(KddiagError, match="^f: a FIFO"):
        open_regular(tmp_path / "fifo", "f")
    with pytest.raises(KddiagError, match="^d: 'broken' is a broken link, not a regular file"):
        check_entries(tmp_path, "d")  # the first in sorted order


# --- image folders ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("make, kind", [
    (lambda p: os.mkfifo(p), "a FIFO (named pipe)"),
    (lambda p: p.symlink_to("/dev/zero"), "a character device"),
    (lambda p: socket.socket(socket.AF_UNIX).bind(str(p)), "a socket"),
    (lambda p: p.symlink_to(p.parent / "gone.png"), "a broken link"),
])
def test_an_image_name_that_is_not_a_regular_file_is_refused_by_name(folder, make, kind):
    """The issue's case: a FIFO named .png blocked the read forever."""
    make(folder / "a" / "x.png")
    refused(folder, f"--data '{folder}': 'a/x.png' is {kind}, not a regular file")


def test_a_fifo_reached_through_a_data_spec_is_refused(folder, tmp_path):
    os.mkfifo(folder / "b" / "x.png")
    (tmp_path / "spec.json").write_text(json.dumps({"path": "images"}))
    refused(tmp_path / "spec.json", "'b/x.png' is a FIFO")
    os.mkfifo(tmp_path / "data.npz")
    (tmp_path / "spec.json").write_text(json.dumps({"path": "data.npz"}))
    refused(tmp_path / "spec.json", "data.npz", "a FIFO (named pipe), not a regular file")


@pytest.mark.parametrize("links", [{"up1": "..", "up2": ".."}, {"self": "."}, {"deep/round": "../.."}])
def test_links_that_loop_are_refused(folder, links):
    """The issue's cases: two links to '..' exploded the walk; one self-link made 6 images 86 examples."""
    for name, target in links.items():
        (folder / "a" / name).parent.mkdir(exist_ok=True)
        (folder / "a" / name).symlink_to(target)
    refused(folder, "links back to a folder above it (a loop)", f"'a/{next(iter(links))}'")


def test_a_file_reached_twice_in_one_class_counts_once(folder):
    (folder / "a" / "again.png").symlink_to("0.png")
    os.link(folder / "b" / "0.png", folder / "b" / "hard.png")
    (folder / "b" / "same").symlink_to(folder / "b")  # a loop: refused
    refused(folder, "'b/same' links back")
    (folder / "b" / "same").unlink()
    elsewhere = folder.parent / "more"
    elsewhere.mkdir()
    Image.fromarray(RNG.integers(0, 256, (8, 8), dtype=np.uint8)).save(elsewhere / "m.png")
    (folder / "b" / "link1").symlink_to(elsewhere)
    (folder / "b" / "link2").symlink_to(elsewhere)
    data = load_dataset(str(folder))
    assert np.bincount(data.labels).tolist() == [3, 4]
    assert "3 file(s) or folder(s) reached twice through links, read once" in data.preprocessing


def test_a_file_reached_from_two_classes_is_refused(folder):
    (folder / "b" / "z.png").symlink_to(folder / "a" / "0.png")
    refused(folder, "'b/z.png' and 'a/0.png' are the same file (through a link) in two classes, 'a' and 'b'")


def test_class_folders_linked_from_elsewhere_still_read(folder, tmp_path):
    linked = tmp_path / "linked"
    linked.mkdir()
    for name in ("a", "b"):
        (linked / name).symlink_to(folder / name)
    data = load_dataset(str(linked))
    assert data.x.shape == (6, 1, 8, 8) and data.class_info.names == ("a", "b")


@pytest.mark.parametrize("width, height", [(10_000, 10_000), (20_000, 20_000)])  # Pillow: a warning, an error
def test_an_image_over_pillows_bomb_limit_is_refused_before_decoding(folder, width, height):
    (folder / "a" / "bomb.png").write_bytes(png_header(width, height))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning is a failure: the refusal is an error line
        refused(folder, f"image 'a/bomb.png' has {width * height:,} pixels, more than Pillow's decompression-bomb "
                        f"limit of {Image.MAX_IMAGE_PIXELS:,}")


def test_resize_has_a_ceiling(folder, tmp_path):
    """The issue's case: --resize 100000,100000 ended in a 50-line MemoryError traceback."""
    huge = ImageOptions(resize=(100_000, 100_000))
    refused(folder, "--resize 100000,100000", f"ceiling is {MAX_RESIZE_PIXELS:,}", images=huge)
    with pytest.raises(KddiagError, match="--resize 100000,100000"):
        images_from_array(torch.zeros(2, 8, 8, dtype=torch.uint8), huge, "x")
    (tmp_path / "spec.json").write_text(json.dumps({"path": "images", "resize": [5000, 5000]}))
    refused(tmp_path / "spec.json", "the data spec's 'resize'")
    result = CliRunner().invoke(main, ["inspect", str(DEMO_TEACHER), "--data", str(folder),
                                       "--resize", "100000,100000", "--json"])
    assert result.exit_code == 1 and result.stdout == "", result.output
    assert result.stderr.count("\n") == 1 and "--resize 100000,100000" in result.stderr


# --- data files ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("target, kind", [("fifo", "a FIFO (named pipe)"), ("/dev/zero", "a character device")])
def test_a_fifo_or_device_as_data_is_named_not_called_empty(tmp_path, target, kind):
    """The issue's case: a FIFO was 'empty', /dev/zero 'no such file'."""
    path = tmp_path / "data.npz"
    os.mkfifo(path) if target == "fifo" else path.symlink_to(target)
    for spec in {path, target} - {"fifo"}:
        refused(spec, f"--data '{spec}': {kind}, not a regular file")
    result = CliRunner().invoke(main, ["inspect", str(DEMO_TEACHER), "--data", str(path)])
    assert result.exit_code == 1 and result.stderr.count("\n") == 1 and kind in result.stderr, result.output


# --- text files ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".jsonl", ".txt", ".npz"])
def test_a_fifo_or_device_as_text_data_is_refused(tmp_path, suffix):
    os.mkfifo(tmp_path / f"fifo{suffix}")
    (tmp_path / f"zero{suffix}").symlink_to("/dev/zero")
    for name, kind in (("fifo", "a FIFO (named pipe)"), ("zero", "a character device")):
        with deadline(), pytest.raises(KddiagError) as error:
            load_text_dataset(tmp_path / f"{name}{suffix}", role="data", task="causal-lm")
        path = tmp_path / f"{name}{suffix}"
        assert str(error.value) == f"--data '{path}': {kind}, not a regular file; kddiag reads only regular files"


def test_a_fifo_in_a_datasets_folder_is_refused(tmp_path):
    (tmp_path / "dataset_info.json").write_text("{}")
    os.mkfifo(tmp_path / "state.json")
    with deadline(), pytest.raises(KddiagError, match="'state.json' is a FIFO"):
        load_text_dataset(tmp_path, role="data", task="causal-lm")


def test_a_line_is_bounded_before_the_file_is_read(tmp_path):
    """A 10 GB file with no line break (sparse: nothing on disk) is refused after its first MiB."""
    with open(tmp_path / "huge.txt", "wb") as handle:
        handle.write(b"the cat ")
        handle.truncate(10 << 30)
    with deadline(), pytest.raises(KddiagError) as error:
        load_text_dataset(tmp_path / "huge.txt", role="data", task="causal-lm")
    assert str(error.value) == (f"--data '{tmp_path / 'huge.txt'}': line 1 is longer than {MAX_LINE_CHARS:,} "
                                f"characters; kddiag reads lines of at most that length")
    (tmp_path / "ok.txt").write_text("x" * MAX_LINE_CHARS + "\r\nthe cat\n")  # exactly at the bound: read
    with pytest.raises(KddiagError, match="no Hugging Face directory with tokenizer files"):
        load_text_dataset(tmp_path / "ok.txt", role="data", task="causal-lm")


def test_lines_are_counted_and_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr("kddiag.readers.text.MAX_TEXT_LINES", 3)
    (tmp_path / "three.jsonl").write_text("\n".join(json.dumps({"text": "a"}) for _ in range(3)) + "\n")
    (tmp_path / "four.jsonl").write_text("\n".join(json.dumps({"text": "a"}) for _ in range(3)) + "\n\n")
    with pytest.raises(KddiagError, match="no Hugging Face directory with tokenizer files"):
        load_text_dataset(tmp_path / "three.jsonl", role="data", task="causal-lm")
    with pytest.raises(KddiagError, match=r"four.jsonl': more than 3 lines; kddiag reads at most that many"):
        load_text_dataset(tmp_path / "four.jsonl", role="data", task="causal-lm")
