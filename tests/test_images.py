"""Images as inputs: ImageFolder directories, image arrays, resizing, normalization and JSON data specs."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from kddiag.readers.arrays import load_dataset
from kddiag.errors import KddiagError
from kddiag.options import ImageOptions

RNG = np.random.default_rng(0)


def save(path, pixels: np.ndarray, mode: str | None = None) -> np.ndarray:
    """Write ``pixels`` (H, W) or (H, W, 3) uint8 as an image file; return them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode).save(path)
    return pixels


def gray(height: int = 4, width: int = 5) -> np.ndarray:
    return RNG.integers(0, 256, (height, width), dtype=np.uint8)


def rgb(height: int = 4, width: int = 5) -> np.ndarray:
    return RNG.integers(0, 256, (height, width, 3), dtype=np.uint8)


# --- image folders ----------------------------------------------------------------------------

def test_grayscale_folder_class_order_pixels_and_skipped_files(tmp_path):
    """Classes are the sorted folder names; hidden files and folders and non-images are skipped."""
    pixels = {"zebra": [save(tmp_path / "zebra" / "a.png", gray())],
              "ant": [save(tmp_path / "ant" / "b.PNG", gray()), save(tmp_path / "ant" / "deeper" / "c.png", gray())],
              "cat": [save(tmp_path / "cat" / "d.bmp", gray())]}
    save(tmp_path / "cat" / ".hidden.png", gray())
    save(tmp_path / ".ipynb_checkpoints" / "e.png", gray())
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    save(tmp_path / "loose.png", gray())  # beside the class folders: not in any class
    data = load_dataset(str(tmp_path))
    assert data.class_info.names == ("ant", "cat", "zebra")
    assert data.labels.tolist() == [0, 0, 1, 2]
    assert data.x.dtype == torch.float32 and tuple(data.x.shape) == (4, 1, 4, 5)
    expected = np.stack(pixels["ant"] + pixels["cat"] + pixels["zebra"])[:, None] / 255
    np.testing.assert_allclose(data.x.numpy(), expected, rtol=1e-6)
    assert data.format == "image-folder" and data.name == str(tmp_path)
    assert "4 images in 3 class folders" in data.preprocessing and "grayscale" in data.preprocessing


@pytest.mark.parametrize("suffix", [".png", ".JPG", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".TIFF"])
def test_each_extension_in_any_case_and_grayscale_stays_one_channel(tmp_path, suffix):
    save(tmp_path / "only" / f"image{suffix}", np.full((3, 3), 100, np.uint8))
    data = load_dataset(str(tmp_path))
    assert tuple(data.x.shape) == (1, 3 if suffix == ".webp" else 1, 3, 3)  # WebP stores no grayscale images
    np.testing.assert_allclose(data.x.numpy(), 100 / 255, atol=3 / 255)  # JPEG and WebP are lossy


def test_mixed_grayscale_and_colour_become_rgb(tmp_path):
    first = save(tmp_path / "a" / "gray.png", gray())
    second = save(tmp_path / "b" / "colour.png", rgb())
    save(tmp_path / "b" / "palette.png", np.zeros((4, 5), np.uint8), "P")
    data = load_dataset(str(tmp_path))
    assert tuple(data.x.shape) == (3, 3, 4, 5) and "RGB" in data.preprocessing
    np.testing.assert_allclose(data.x[0].numpy(), np.stack([first] * 3) / 255, rtol=1e-6)
    np.testing.assert_allclose(data.x[1].numpy(), second.transpose(2, 0, 1) / 255, rtol=1e-6)


def test_rgba_drops_alpha(tmp_path):
    pixels = RNG.integers(0, 256, (4, 5, 4), dtype=np.uint8)
    save(tmp_path / "a" / "x.png", pixels, "RGBA")
    np.testing.assert_allclose(load_dataset(str(tmp_path)).x[0].numpy(), pixels[..., :3].transpose(2, 0, 1) / 255,
                               rtol=1e-6)


def test_folder_resize_with_pillow_height_then_width(tmp_path):
    small, large = save(tmp_path / "a" / "small.png", rgb(4, 5)), save(tmp_path / "b" / "large.png", rgb(12, 9))
    data = load_dataset(str(tmp_path), images=ImageOptions(resize=(6, 7)))
    assert tuple(data.x.shape) == (2, 3, 6, 7)
    for row, pixels in enumerate((small, large)):
        resized = np.asarray(Image.fromarray(pixels).resize((7, 6), Image.Resampling.BILINEAR))
        np.testing.assert_allclose(data.x[row].numpy(), resized.transpose(2, 0, 1) / 255, rtol=1e-6)
    assert "resized to 6×7 (Pillow bilinear)" in data.preprocessing


def test_folder_images_already_at_the_size_are_not_resampled(tmp_path):
    pixels = save(tmp_path / "a" / "x.png", gray(6, 7))
    data = load_dataset(str(tmp_path), images=ImageOptions(resize=(6, 7)))
    np.testing.assert_allclose(data.x[0, 0].numpy(), pixels / 255, rtol=1e-6)


def test_normalize_matches_a_hand_computation(tmp_path):
    """Pixel 51 → 51/255 = 0.2 → (0.2 − 0.5)/0.25 = −1.2; pixel 255 → (1 − 0.5)/0.25 = 2."""
    save(tmp_path / "a" / "x.png", np.array([[51, 255]], np.uint8))
    data = load_dataset(str(tmp_path), images=ImageOptions(mean=(0.5,), std=(0.25,)))
    np.testing.assert_allclose(data.x.numpy(), [[[[-1.2, 2.0]]]], rtol=1e-6)
    assert "normalized with mean (0.5) and std (0.25)" in data.preprocessing


def test_normalize_per_channel(tmp_path):
    """Channel c: (p/255 − mean[c]) / std[c] with p = (0, 102, 255):
    (−0.485/0.229, (0.4 − 0.456)/0.224, (1 − 0.406)/0.225)."""
    save(tmp_path / "a" / "x.png", np.array([[[0, 102, 255]]], np.uint8))
    options = ImageOptions(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    values = load_dataset(str(tmp_path), images=options).x.numpy().ravel()
    np.testing.assert_allclose(values, [-0.485 / 0.229, (0.4 - 0.456) / 0.224, (1 - 0.406) / 0.225], rtol=1e-5)


def test_normalize_needs_one_pair_per_channel(tmp_path):
    save(tmp_path / "a" / "x.png", rgb())
    with pytest.raises(KddiagError, match=r"--data '.*': normalize gives 1 mean\(s\) and std\(s\) but the images "
                                          r"have 3 channel\(s\)"):
        load_dataset(str(tmp_path), images=ImageOptions(mean=(0.5,), std=(0.25,)))


def test_mixed_sizes_name_two_files_and_suggest_resize(tmp_path):
    save(tmp_path / "a" / "one.png", gray(4, 5))
    save(tmp_path / "b" / "two.png", gray(6, 5))
    with pytest.raises(KddiagError, match=r"images differ in size: 'a/one\.png' is 4×5 but 'b/two\.png' is 6×5 "
                                          r"\(height×width\); pass --resize H,W"):
        load_dataset(str(tmp_path))


def test_a_folder_holding_more_values_than_kddiag_reads_is_refused_before_it_is_read_whole(tmp_path, monkeypatch):
    """Red-team pass 3: 20 gray PNGs of 9000×9000 (2 MB on disk) reached 3.5 GB and a 50-line traceback."""
    monkeypatch.setattr("kddiag.readers.images.MAX_FOLDER_VALUES", 50)
    for k in range(3):
        save(tmp_path / "a" / f"{k}.png", gray(6, 5))
    with pytest.raises(KddiagError, match=r"its 3 images hold more than 60 values \(pixels × channels\); .* at "
                                          r"most 50"):
        load_dataset(str(tmp_path))
    with pytest.raises(KddiagError, match=r"its 3 images hold 45,000 values \(pixels × channels, resized\)"):
        load_dataset(str(tmp_path), images=ImageOptions(resize=(100, 50)))
    assert load_dataset(str(tmp_path), images=ImageOptions(resize=(2, 2))).x.shape == (3, 1, 2, 2)


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n broken", b"plain text"])
def test_corrupt_image_is_named(tmp_path, content):
    save(tmp_path / "a" / "good.png", gray())
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "bad.png").write_bytes(content)
    with pytest.raises(KddiagError, match=r"--transfer-data '.*': cannot read image 'b/bad\.png', not an image or a "
                                          r"corrupt one"):
        load_dataset(str(tmp_path), role="transfer-data")


def test_truncated_image_is_named(tmp_path):
    save(tmp_path / "a" / "whole.png", rgb(64, 64))
    (tmp_path / "a" / "half.png").write_bytes((tmp_path / "a" / "whole.png").read_bytes()[:300])
    with pytest.raises(KddiagError, match=r"cannot read image 'a/half\.png'"):
        load_dataset(str(tmp_path))


def test_sixteen_bit_images_are_refused_by_name(tmp_path):
    (tmp_path / "a").mkdir()
    Image.fromarray(np.full((3, 3), 40000, np.uint16)).save(tmp_path / "a" / "deep.png")
    with pytest.raises(KddiagError, match=r"image 'a/deep\.png' has Pillow mode I;16 .*8-bit"):
        load_dataset(str(tmp_path))


def test_folders_without_classes_or_images(tmp_path):
    with pytest.raises(KddiagError, match=r"--data '.*': no class folders; an image folder holds one sub-folder"):
        load_dataset(str(tmp_path))
    save(tmp_path / "x.png", gray())
    with pytest.raises(KddiagError, match=r"holds images but no class folders"):
        load_dataset(str(tmp_path))
    (tmp_path / "cat").mkdir()
    (tmp_path / "dog").mkdir()
    (tmp_path / "dog" / "readme.txt").write_text("x")
    with pytest.raises(KddiagError, match=r"no images in its 2 class folders; expected files ending in \.png"):
        load_dataset(str(tmp_path))


def test_an_empty_class_folder_keeps_its_index(tmp_path):
    save(tmp_path / "a" / "x.png", gray())
    (tmp_path / "b").mkdir()
    save(tmp_path / "c" / "y.png", gray())
    data = load_dataset(str(tmp_path))
    assert data.class_info.names == ("a", "b", "c") and data.labels.tolist() == [0, 2]


# --- image arrays -----------------------------------------------------------------------------

PIXELS = RNG.integers(0, 256, (5, 3, 6, 7), dtype=np.uint8)  # (n, C, H, W)


@pytest.mark.parametrize("layout, stored", [
    ("NCHW", PIXELS), ("NHWC", PIXELS.transpose(0, 2, 3, 1)),
])
def test_uint8_arrays_in_either_layout_become_scaled_nchw(tmp_path, layout, stored):
    np.savez(tmp_path / "d.npz", x=stored, y=np.arange(5) % 2)
    data = load_dataset(str(tmp_path / "d.npz"))
    assert data.x.dtype == torch.float32 and tuple(data.x.shape) == (5, 3, 6, 7)
    np.testing.assert_allclose(data.x.numpy(), PIXELS / 255, rtol=1e-6)
    assert f"uint8 images stored {layout} (detected)" in data.preprocessing and data.format == "npz"


def test_uint8_nhw_is_one_channel_also_from_pt(tmp_path):
    torch.save({"x": torch.from_numpy(PIXELS[:, 0]), "y": torch.arange(5)}, tmp_path / "d.pt")
    data = load_dataset(str(tmp_path / "d.pt"))
    assert tuple(data.x.shape) == (5, 1, 6, 7)
    np.testing.assert_allclose(data.x.numpy(), PIXELS[:, :1] / 255, rtol=1e-6)


def test_ambiguous_layout_is_nchw_unless_given(tmp_path):
    stored = RNG.integers(0, 256, (2, 3, 4, 3), dtype=np.uint8)  # axes 1 and 3 could both be channels
    np.savez(tmp_path / "d.npz", x=stored, y=[0, 1])
    detected = load_dataset(str(tmp_path / "d.npz"))
    np.testing.assert_allclose(detected.x.numpy(), stored / 255, rtol=1e-6)
    assert "axis 1 taken" in detected.preprocessing
    given = load_dataset(str(tmp_path / "d.npz"), images=ImageOptions(layout="nhwc"))
    np.testing.assert_allclose(given.x.numpy(), stored.transpose(0, 3, 1, 2) / 255, rtol=1e-6)
    assert "stored NHWC (as given)" in given.preprocessing


def test_undetectable_layout_asks_for_it(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 5, 6, 7), np.uint8), y=[0, 1])
    with pytest.raises(KddiagError, match=r"cannot tell the channel axis of images of shape \(2, 5, 6, 7\).*--layout"):
        load_dataset(str(tmp_path / "d.npz"))
    assert tuple(load_dataset(str(tmp_path / "d.npz"), images=ImageOptions(layout="NHWC")).x.shape) == (2, 7, 5, 6)


def test_float_arrays_pass_through_unchanged_without_image_options(tmp_path):
    images, flat = RNG.random((4, 1, 8, 8)) * 9, RNG.random((4, 64))
    for x in (images, flat, images[:, 0]):
        np.savez(tmp_path / "d.npz", x=x, y=np.arange(4))
        data = load_dataset(str(tmp_path / "d.npz"))
        assert data.x.dtype == torch.float32 and tuple(data.x.shape) == x.shape
        np.testing.assert_allclose(data.x.numpy(), x, rtol=1e-6)
        assert data.preprocessing is None


def test_float_arrays_are_images_when_an_option_is_given(tmp_path):
    x = RNG.random((4, 8, 8, 3))
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(4))
    data = load_dataset(str(tmp_path / "d.npz"), images=ImageOptions(mean=(0.5, 0.5, 0.5), std=(2.0, 2.0, 2.0)))
    np.testing.assert_allclose(data.x.numpy(), (x.transpose(0, 3, 1, 2) - 0.5) / 2, atol=1e-6)
    assert "float64 images stored NHWC" in data.preprocessing and "scaled" not in data.preprocessing


def test_integer_arrays_stay_token_ids(tmp_path):
    """2-D uint8 and integer arrays of other dtypes are token ids (int64), whatever their shape."""
    for x in (np.arange(12, dtype=np.uint8).reshape(4, 3), np.arange(48, dtype=np.int32).reshape(4, 3, 2, 2)):
        np.savez(tmp_path / "d.npz", x=x, y=np.arange(4))
        data = load_dataset(str(tmp_path / "d.npz"))
        assert data.x.dtype == torch.int64 and data.x.tolist() == x.tolist()


@pytest.mark.parametrize("x, message", [
    (np.zeros((4, 64), np.float32), r"the image options given \(normalize, resize\) apply to images .*got float32 "
                                    r"inputs of shape \(4, 64\)"),
    (np.zeros((4, 1, 8, 8), np.int32), r"inputs 'x' are int32 integers, which are token ids; the image options given "
                                       r"\(normalize, resize\) apply to images"),
])
def test_image_options_on_inputs_that_are_not_images(tmp_path, x, message):
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(4))
    with pytest.raises(KddiagError, match=r"--data '.*d\.npz': " + message):
        load_dataset(str(tmp_path / "d.npz"), images=ImageOptions(mean=(0.5,), std=(1.0,), resize=(2, 2)))
    with pytest.raises(KddiagError, match=r"--data 'digits:test': the image options given \(layout\)"):
        load_dataset("digits:test", images=ImageOptions(layout="NCHW"))


def test_labels_only_files_ignore_image_options(tmp_path):
    np.savez(tmp_path / "labels.npz", y=np.arange(3))
    assert load_dataset(str(tmp_path / "labels.npz"), images=ImageOptions(resize=(2, 2))).x is None


def test_array_resize_agrees_with_pillow():
    """torch's antialiased bilinear resize of arrays and Pillow's on the same image differ by at most a grey level."""
    pixels = RNG.integers(0, 256, (17, 23, 3), dtype=np.uint8)
    from kddiag.readers.images import images_from_array

    for size in ((8, 11), (5, 30), (40, 23)):  # shrink both, shrink one and enlarge one, enlarge
        x, notes = images_from_array(torch.from_numpy(pixels[None]), ImageOptions(resize=size), "x")
        assert tuple(x.shape) == (1, 3, *size) and "bilinear, antialiased" in notes
        pillow = np.asarray(Image.fromarray(pixels).resize(size[::-1], Image.Resampling.BILINEAR)) / 255
        np.testing.assert_allclose(x[0].numpy().transpose(1, 2, 0), pillow, atol=1.5 / 255)


def test_array_resize_then_normalize(tmp_path):
    """A constant image stays constant through resizing: 51 → 0.2 → (0.2 − 0.1)/0.5 = 0.2."""
    np.savez(tmp_path / "d.npz", x=np.full((2, 9, 9), 51, np.uint8), y=[0, 1])
    data = load_dataset(str(tmp_path / "d.npz"), images=ImageOptions(mean=(0.1,), std=(0.5,), resize=(4, 3)))
    assert tuple(data.x.shape) == (2, 1, 4, 3)
    np.testing.assert_allclose(data.x.numpy(), 0.2, rtol=1e-5)


# --- options ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    ({"mean": (0.5,)}, r"--normalize needs both the means and the stds; got only the means"),
    ({"mean": (0.5, 0.5), "std": (0.25,)}, r"--normalize: 2 means but 1 stds"),
    ({"mean": (0.5,), "std": (0.0,)}, r"--normalize: every std must be > 0; got 0"),
    ({"mean": (float("nan"),), "std": (1.0,)}, r"--normalize: the means must be finite numbers"),
    ({"mean": (), "std": ()}, r"--normalize: the means must be a non-empty list"),
    ({"resize": (0, 4)}, r"--resize must be two positive integers \(height, width\); got \(0, 4\)"),
    ({"resize": (4,)}, r"--resize must be two positive integers"),
    ({"resize": (4.0, 4.0)}, r"--resize must be two positive integers"),
    ({"layout": "CHWN"}, r"--layout must be one of NCHW, NHWC; got 'CHWN'"),
])
def test_bad_image_options(kwargs, message):
    with pytest.raises(KddiagError, match=message):
        ImageOptions(**kwargs)


def test_image_options_are_stored_as_tuples():
    options = ImageOptions(mean=[0, 1], std=[1, 2], resize=[3, 4], layout="nhwc")
    assert options == ImageOptions(mean=(0.0, 1.0), std=(1.0, 2.0), resize=(3, 4), layout="NHWC")
    assert options.given and not ImageOptions().given


# --- JSON data specs --------------------------------------------------------------------------

def spec(tmp_path, content, name="spec.json"):
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


def test_spec_reads_its_path_relative_to_itself(tmp_path, monkeypatch):
    save(tmp_path / "images" / "val" / "a" / "x.png", np.array([[51, 255]], np.uint8))
    save(tmp_path / "images" / "val" / "b" / "y.png", np.array([[0, 255, 51]], np.uint8))
    path = spec(tmp_path, {"path": "images/val", "normalize": {"mean": [0.5], "std": [0.25]}, "resize": [1, 2]})
    monkeypatch.chdir(tmp_path / "images")  # elsewhere: the spec's folder counts, not the current one
    data = load_dataset(path)
    assert data.name == path and data.format == "spec:image-folder" and data.class_info.names == ("a", "b")
    np.testing.assert_allclose(data.x[0].numpy(), [[[-1.2, 2.0]]], rtol=1e-6)
    assert tuple(data.x.shape) == (2, 1, 1, 2)


def test_spec_with_an_array_file_and_its_layout(tmp_path):
    stored = RNG.integers(0, 256, (2, 3, 4, 3), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x=stored, y=[0, 1])
    data = load_dataset(spec(tmp_path, {"path": str(tmp_path / "d.npz"), "layout": "NHWC"}))  # an absolute path
    np.testing.assert_allclose(data.x.numpy(), stored.transpose(0, 3, 1, 2) / 255, rtol=1e-6)
    assert data.format == "spec:npz"


def test_command_line_options_fill_in_and_must_agree_with_the_spec(tmp_path):
    save(tmp_path / "imgs" / "a" / "x.png", gray(4, 5))
    path = spec(tmp_path, {"path": "imgs", "resize": [2, 2]})
    data = load_dataset(path, images=ImageOptions(mean=(0.0,), std=(0.5,), resize=(2, 2)))  # same resize: fine
    assert tuple(data.x.shape) == (1, 1, 2, 2) and float(data.x.max()) > 1  # normalized from the command line
    with pytest.raises(KddiagError, match=r"--data '.*spec\.json': --resize 3,3 differs from the spec's 'resize' 2,2; "
                                          r"give it in one place"):
        load_dataset(path, images=ImageOptions(resize=(3, 3)))


@pytest.mark.parametrize("content, message", [
    ("{path: }", r"not a JSON data spec"),
    ([1, 2], r"a data spec must be a JSON object with 'path'; got list"),
    ({"path": "imgs", "size": [2, 2]}, r"unknown key 'size' in the data spec; allowed keys: path, normalize, resize, "
                                       r"layout"),
    ({"resize": [2, 2]}, r"the data spec needs 'path'"),
    ({"path": 3}, r"the data spec needs 'path'.*got 3"),
    ({"path": "nowhere"}, r"'path' 'nowhere' does not exist \(looked for '.*nowhere'\)"),
    ({"path": "other.json"}, r"'path' names another spec"),
    ({"path": "imgs", "normalize": [[0.5], [0.25]]}, r"'normalize' must be an object with exactly 'mean' and 'std'"),
    ({"path": "imgs", "normalize": {"mean": [0.5], "std": [0.25], "x": 1}}, r"'normalize' must .* exactly 'mean'"),
    ({"path": "imgs", "normalize": {"mean": [0.5], "std": [-1]}}, r"'normalize': every std must be > 0"),
    ({"path": "imgs", "normalize": {"mean": 0.5, "std": 0.25}}, r"'normalize': the means must be a non-empty list"),
    ({"path": "imgs", "normalize": {"mean": ["a"], "std": [1]}}, r"'normalize': the means must be finite numbers"),
    ({"path": "imgs", "resize": [2, 0]}, r"'resize' must be two positive integers"),
    ({"path": "imgs", "resize": [2.5, 2]}, r"'resize' must be two positive integers"),
    ({"path": "imgs", "resize": [True, 2]}, r"'resize' must be two positive integers"),
    ({"path": "imgs", "layout": "HWC"}, r"'layout' must be one of NCHW, NHWC"),
])
def test_bad_specs_name_the_spec_and_the_key(tmp_path, content, message):
    save(tmp_path / "imgs" / "a" / "x.png", gray())
    path = spec(tmp_path, content)
    with pytest.raises(KddiagError, match=r"--data '.*spec\.json': " + message):
        load_dataset(path)


def test_a_missing_spec_is_a_missing_file(tmp_path):
    with pytest.raises(KddiagError, match=r"--data '.*gone\.json': no such file or folder"):
        load_dataset(str(tmp_path / "gone.json"))


# --- end to end: a tiny CNN on an image folder ------------------------------------------------

class TinyCNN(torch.nn.Module):
    """conv → ReLU → global average → linear: takes (n, 3, 8, 8) images, gives 3 logits."""

    def __init__(self, width: int, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = torch.nn.Conv2d(3, width, 3, padding=1)
        self.head = torch.nn.Linear(width, 3)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    """An RGB image folder (3 classes × 4 images of 10×12, class k brightest in channel k) and two exported CNNs."""
    root = tmp_path_factory.mktemp("image-run")
    rng = np.random.default_rng(1)
    for k, name in enumerate(("horse", "cat", "dog")):  # class order: cat, dog, horse
        for i in range(4):
            pixels = rng.integers(0, 128, (10, 12, 3), dtype=np.uint8)
            pixels[..., k] += 127
            save(root / "images" / name / f"{i}.png", pixels)
    batch = {"x": {0: torch.export.Dim("batch")}}
    for role, width, seed in (("teacher", 8, 0), ("student", 4, 1)):
        program = torch.export.export(TinyCNN(width, seed).eval(), (torch.zeros(4, 3, 8, 8),), dynamic_shapes=batch)
        torch.export.save(program, root / f"{role}.pt2")
    return root


def test_cli_inspect_on_an_image_folder(image_run, tmp_path):
    from click.testing import CliRunner

    from kddiag.cli import main

    args = ["inspect", str(image_run / "teacher.pt2"), str(image_run / "student.pt2"), "--data",
            str(image_run / "images"), "--resize", "8,8", "--normalize", "0.5,0.5,0.5,0.25,0.25,0.25", "--json",
            "--no-progress", "--out", str(tmp_path / "out")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["inputs"]["class_names"] == ["cat", "dog", "horse"] and report["inputs"]["n_classes"] == 3
    data = next(f for f in report["inputs"]["files"] if f["role"] == "eval")
    assert data["format"] == "image-folder" and data["n_samples"] == 12
    assert "resized to 8×8" in data["preprocessing"] and "normalized with mean (0.5, 0.5, 0.5)" in data["preprocessing"]
    low, high = data["input_range"]
    assert -2 <= low < high <= 2 and low != high and -2 < data["input_mean"] < 2  # (p − 0.5)/0.25 for p in [0, 1]
    assert (tmp_path / "out" / "report.html").exists()
    without_resize = CliRunner().invoke(main, args[:5] + ["--no-progress"])  # 10×12 images: the programs need 8×8
    assert without_resize.exit_code == 1 and "teacher" in without_resize.stderr


def test_python_inspect_with_a_spec_and_image_options(image_run, tmp_path):
    import kddiag
    from kddiag.options import InspectOptions

    path = spec(tmp_path, {"path": str(image_run / "images"), "normalize": {"mean": [0.5] * 3, "std": [0.25] * 3}})
    options = InspectOptions(images=ImageOptions(resize=(8, 8)))  # for both sets; the spec's normalize for eval only
    report = kddiag.inspect(str(image_run / "teacher.pt2"), str(image_run / "student.pt2"), data=path,
                            transfer_data=str(image_run / "images"), options=options)
    assert report.class_info.names == ("cat", "dog", "horse")
    inputs = {info.role: info for info in report.inputs}
    assert inputs["eval"].path == os.path.relpath(path)  # reports name files relative to the working directory
    assert inputs["eval"].format == "spec:image-folder"
    assert inputs["transfer"].format == "image-folder"
    assert 0 <= inputs["transfer"].input_range[0] < inputs["transfer"].input_range[1] <= 1
    assert -2 <= inputs["eval"].input_range[0] < 0 < inputs["eval"].input_range[1] <= 2
    np.testing.assert_allclose((inputs["transfer"].input_mean - 0.5) / 0.25, inputs["eval"].input_mean, rtol=1e-5)
    with pytest.raises(KddiagError, match=r"--data: the image options .* apply to data read from a path; the Dataset"):
        kddiag.inspect(str(image_run / "teacher.pt2"), str(image_run / "student.pt2"),
                       data=load_dataset(path), options=options)


def test_cli_layout_reaches_image_arrays(image_run, tmp_path):
    from click.testing import CliRunner

    from kddiag.cli import main

    np.savez(tmp_path / "d.npz", x=RNG.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8), y=np.arange(6) % 3)
    args = ["inspect", str(image_run / "teacher.pt2"), str(image_run / "student.pt2"),
            "--data", str(tmp_path / "d.npz"), "--no-progress", "--json"]
    as_given = CliRunner().invoke(main, args + ["--layout", "nhwc"])
    assert as_given.exit_code == 0, as_given.output
    files = json.loads(as_given.stdout)["inputs"]["files"]
    assert "stored NHWC (as given)" in next(f for f in files if f["role"] == "eval")["preprocessing"]
    wrong = CliRunner().invoke(main, args + ["--layout", "NCHW"])  # 8 channels of 8×3: not what the CNN takes
    assert wrong.exit_code == 1 and "8, 8, 3) (torch.float32)" in wrong.stderr
