"""Images as model inputs: ImageFolder directories read with Pillow, and image arrays, made float32 (n, C, H, W).

Which stored arrays are images (everything else keeps today's rule: floating point → float32 as stored,
integers → int64 token ids):

- ``uint8`` arrays of 3 or 4 dimensions are always images;
- floating-point arrays of 3 or 4 dimensions are images only when an image option (``normalize``,
  ``resize``, ``layout``) is given; without one they pass through unchanged;
- other integer arrays are token ids, never images (store images as uint8 or floating point).

Layout: (n, H, W) is one channel. For 4-D arrays a given ``layout`` ('NCHW' or 'NHWC') decides;
otherwise the channel axis is the one of axes 1 and 3 that has 1, 3 or 4 entries, and when both have
(e.g. (n, 3, 4, 3)) it is axis 1, PyTorch's own order. The layout used and how it was chosen are
recorded in ``Dataset.preprocessing``.

Preparation, in torchvision's order: uint8 pixels are scaled to [0, 1] (÷ 255, as ``ToTensor``);
resized to (height, width), bilinear and antialiased when shrinking (image folders: Pillow's
``BILINEAR`` on each image, as torchvision's ``Resize`` on PIL images; arrays:
``torch.nn.functional.interpolate(..., mode="bilinear", antialias=True)``, as ``Resize`` on tensors);
then normalized per channel, x[c] ← (x[c] − mean[c]) / std[c].

Image folders follow torchvision's ``ImageFolder`` layout: one sub-folder per class, class k is the
k-th folder name in sorted order and the names become the class names. Files with the extensions in
:data:`IMAGE_EXTENSIONS` (any case) are read, in sub-folders too; hidden files and folders (names
starting with '.') are skipped. Links are followed: a folder linking back to one above it (a loop) is
refused, a file or folder reached twice is read once (refused when reached from two classes), and an
image name that is not a regular file (a FIFO, a device, a socket) is refused by name, never opened.
An image of more pixels than Pillow's decompression-bomb limit is refused before it is decoded, and
``resize`` may ask for at most :data:`MAX_RESIZE_PIXELS` pixels. When every image is grayscale (Pillow
modes '1', 'L', 'LA', or a palette of grays only, as in a grayscale GIF) the images have one channel;
otherwise all are converted to RGB. (torchvision's loader converts grayscale too, so a model trained
through it expects 3 channels; WebP stores no grayscale.)
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from kddiag.errors import KddiagError
from kddiag.files import kind_of, open_regular
from kddiag.loading._text import one_line
from kddiag.options import ImageOptions

if TYPE_CHECKING:
    import torch
    from PIL import Image

__all__ = ["IMAGE_EXTENSIONS", "MAX_RESIZE_PIXELS", "is_image_array", "images_from_array", "read_image_folder",
           "check_resize_pixels"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
CHANNEL_COUNTS = (1, 3, 4)  # what a channel axis looks like when the layout is detected
_GRAY_MODES = ("1", "L", "LA")
_COLOR_MODES = ("P", "PA", "RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "LAB", "HSV")  # 8 bits per channel
_MAX_SIDE = 4096
MAX_RESIZE_PIXELS = _MAX_SIDE * _MAX_SIDE  # per image; 16× SAM's 1024×1024, the largest common vision input
# Values (pixels × channels) an image folder may hold in all: it is read whole, as float32 (2 GiB here, about
# three times that at the peak of preparing it): 10,700 RGB images of 224×224, 680,000 of MNIST's 28×28
MAX_FOLDER_VALUES = 1 << 29


def is_image_array(x: torch.Tensor, options: ImageOptions) -> bool:
    """Whether stored inputs ``x`` (a tensor) are images under the rule above."""
    import torch

    if x.dim() not in (3, 4):
        return False
    return x.dtype == torch.uint8 or (x.is_floating_point() and options.given)


def images_from_array(x: torch.Tensor, options: ImageOptions, where: str) -> tuple[torch.Tensor, str]:
    """Image array (n, H, W), (n, H, W, C) or (n, C, H, W), uint8 or float → float32 (n, C, H, W), prepared.

    Returns the tensor and a one-line account of what was done. ``where`` names the file in errors.
    ``options.resize`` may ask for at most MAX_RESIZE_PIXELS pixels per image.

    >>> x, notes = images_from_array(torch.zeros(2, 8, 8, 3, dtype=torch.uint8), ImageOptions(), "x")
    >>> tuple(x.shape)
    (2, 3, 8, 8)
    """
    if options.resize is not None:
        check_resize_pixels(options.resize, where)
    if x.dim() == 3:
        if options.layout is not None:
            raise KddiagError(f"{where}: the layout ({options.layout}) is the axis order of 4-D image arrays; these "
                              f"images are (n, H, W), one channel, with no channel axis to place: leave it out")
        layout, how = "NHW", "one channel"
        x = x.unsqueeze(1)
    else:
        layout, how = _layout(tuple(x.shape), options.layout, where)
        if layout == "NHWC":
            x = x.permute(0, 3, 1, 2)
    notes = [f"{str(x.dtype).removeprefix('torch.')} images stored {layout} ({how})"]
    return _prepare(x, options, where, notes, resize=True)


def read_image_folder(root: Path, options: ImageOptions, where: str
                      ) -> tuple[torch.Tensor, np.ndarray, tuple[str, ...], str]:
    """An ImageFolder directory as float32 (n, C, H, W) images, prepared, with their labels.

    Returns ``(x, labels, class_names, notes)``: labels (n,) int64, class names in class order,
    and a one-line account of what was done. Differing image sizes need ``options.resize``.
    """
    import torch

    if options.resize is not None:
        check_resize_pixels(options.resize, where)
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir() and not entry.name.startswith("."))
    if not classes:
        loose = any(_is_image_file(name) for name in os.listdir(root))
        raise KddiagError(f"{where}: " + ("holds images but no class folders" if loose else "no class folders")
                          + "; an image folder holds one sub-folder of images per class (ImageFolder layout)")
    files, n_twice = _image_files(root, classes, where)
    if not files:
        raise KddiagError(f"{where}: no images in its {len(classes)} class folders; expected files ending in "
                          f"{', '.join(IMAGE_EXTENSIONS)}")
    if options.resize is not None and len(files) * 3 * options.resize[0] * options.resize[1] > MAX_FOLDER_VALUES:
        _too_many_values(where, len(files), 3 * len(files) * options.resize[0] * options.resize[1])
    pixels, first, values = [], None, 0  # first: (path, Pillow size (width, height)) of the first image
    for path, _ in files:
        image = _read_image(path, root, where)
        values += image.size[0] * image.size[1] * len(image.getbands())
        if values > MAX_FOLDER_VALUES and options.resize is None:
            _too_many_values(where, len(files), values, partial=True)
        if options.resize is not None:
            height, width = options.resize
            if image.size != (width, height):
                from PIL import Image

                image = image.resize((width, height), Image.Resampling.BILINEAR)
        elif first is None:
            first = path, image.size
        elif image.size != first[1]:
            raise KddiagError(f"{where}: images differ in size: '{_shown(first[0], root)}' is {_size(first[1])} "
                              f"but '{_shown(path, root)}' is {_size(image.size)} (height×width); pass "
                              f"--resize H,W (or 'resize' in a data spec)")
        pixels.append(np.asarray(image))
    gray = all(p.ndim == 2 for p in pixels)
    if not gray:  # Pillow's own L → RGB: the gray value in all three channels
        pixels = [np.repeat(p[:, :, None], 3, axis=2) if p.ndim == 2 else p for p in pixels]
    x = torch.from_numpy(np.stack(pixels))
    x = x.unsqueeze(1) if gray else x.permute(0, 3, 1, 2)
    labels = np.array([k for _, k in files], dtype=np.int64)
    notes = [f"image folder: {len(files)} images in {len(classes)} class folders (sorted names), "
             f"{'grayscale' if gray else 'RGB'}, read with Pillow"]
    if n_twice:
        notes.append(f"{n_twice} file(s) or folder(s) reached twice through links, read once")
    if options.resize is not None:
        notes.append("resized to {}×{} (Pillow bilinear)".format(*options.resize))
    x, notes_text = _prepare(x, options, where, notes, resize=False)
    return x, labels, tuple(classes), notes_text


def _too_many_values(where: str, n_files: int, values: int, *, partial: bool = False) -> None:
    raise KddiagError(f"{where}: its {n_files:,} images hold {'more than ' if partial else ''}{values:,} values "
                      f"(pixels × channels{'' if partial else ', resized'}); kddiag reads image folders whole, of at "
                      f"most {MAX_FOLDER_VALUES:,}: give fewer or smaller images (--resize)")


def check_resize_pixels(resize: tuple[int, int], where: str) -> None:
    """Refuse a resize (height, width) of more than MAX_RESIZE_PIXELS pixels, in one line naming the option."""
    height, width = resize
    if height * width > MAX_RESIZE_PIXELS:
        raise KddiagError(f"{where}: --resize {height},{width} (or the data spec's 'resize') asks for "
                          f"{height * width:,} pixels per image; kddiag's ceiling is {MAX_RESIZE_PIXELS:,} "
                          f"({_MAX_SIDE}×{_MAX_SIDE})")


def _layout(shape: tuple[int, ...], given: str | None, where: str) -> tuple[str, str]:
    """The layout of a 4-D image array and how it was chosen."""
    if given is not None:
        return given, "as given"
    first, last = shape[1] in CHANNEL_COUNTS, shape[3] in CHANNEL_COUNTS
    if first and last:
        return "NCHW", "both axes 1 and 3 could be channels: axis 1 taken, PyTorch's order"
    if first or last:
        return ("NCHW" if first else "NHWC"), "detected"
    raise KddiagError(f"{where}: cannot tell the channel axis of images of shape {shape}: neither axis 1 nor "
                      f"axis 3 has 1, 3 or 4 entries; give the layout (--layout NCHW or NHWC, or 'layout' "
                      f"in a data spec)")


def _prepare(x: torch.Tensor, options: ImageOptions, where: str, notes: list[str], *,
             resize: bool) -> tuple[torch.Tensor, str]:
    """(n, C, H, W) uint8 or float → float32: scaled, resized (``resize``: with torch), normalized."""
    import torch

    if x.dtype == torch.uint8:
        x = x.to(torch.float32) / 255
        notes.append("uint8 scaled to [0, 1] (÷ 255)")
    else:
        x = x.to(torch.float32)
    if resize and options.resize is not None and tuple(x.shape[2:]) != options.resize:
        notes.append("resized from {}×{} to {}×{} (bilinear, antialiased)".format(*x.shape[2:], *options.resize))
        x = torch.nn.functional.interpolate(x, size=options.resize, mode="bilinear", align_corners=False,
                                            antialias=True)
    if options.mean is not None:
        channels = x.shape[1]
        if len(options.mean) != channels:
            raise KddiagError(f"{where}: normalize gives {len(options.mean)} mean(s) and std(s) but the images "
                              f"have {channels} channel(s); give one mean and one std per channel")
        mean = torch.tensor(options.mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(options.std, dtype=torch.float32).view(1, -1, 1, 1)
        x = (x - mean) / std
        notes.append(f"normalized with mean {_numbers(options.mean)} and std {_numbers(options.std)}")
    notes.append("float32 (n, {}, {}, {})".format(*x.shape[1:]))
    return x.contiguous(), "; ".join(notes)


def _image_files(root: Path, classes: list[str], where: str) -> tuple[list[tuple[Path, int]], int]:
    """(path, class) of every image file under the class folders (sub-folders too), in sorted order, hidden
    files and folders skipped; and how many files were reached twice through links (counted once).

    Links are followed. A folder that links back to one above it (a loop) is refused; a folder or file
    reached twice is read once, and refused when reached from two classes. An image name that is not a
    regular file (a FIFO, a device, a socket, a broken link) is refused by name.
    """
    files: list[tuple[Path, int]] = []
    owner: dict[tuple[int, int], tuple[int, Path]] = {}  # (device, inode) -> (class, first path)
    n_twice = 0
    for k, name in enumerate(classes):
        stack = [(root / name, (_identity(root),))]
        while stack:
            folder, above = stack.pop()
            here = _identity(folder)
            if here in above:
                raise KddiagError(f"{where}: '{_shown(folder, root)}' links back to a folder above it (a loop); "
                                  f"remove the link")
            if here in owner:
                _same_class(owner[here], k, folder, root, classes, where)
                n_twice += 1
                continue
            owner[here] = k, folder
            subfolders = []
            for entry in sorted(os.scandir(folder), key=lambda e: e.name):
                if entry.name.startswith("."):
                    continue
                path = Path(entry.path)
                kind = kind_of(path)
                if kind == "a folder":
                    subfolders.append(path)
                elif _is_image_file(entry.name):
                    if kind is not None:
                        raise KddiagError(f"{where}: '{_shown(path, root)}' is {kind}, not a regular file; kddiag "
                                          f"reads only regular files")
                    identity = _identity(path)
                    if identity in owner:
                        _same_class(owner[identity], k, path, root, classes, where)
                        n_twice += 1
                        continue
                    owner[identity] = k, path
                    files.append((path, k))
            stack += [(sub, above + (here,)) for sub in reversed(subfolders)]
    return files, n_twice


def _identity(path: Path) -> tuple[int, int]:
    """(device, inode) of what ``path`` names, links followed: the same file or folder however reached."""
    found = os.stat(path)
    return found.st_dev, found.st_ino


def _same_class(seen: tuple[int, Path], k: int, path: Path, root: Path, classes: list[str], where: str) -> None:
    """Refuse a file or folder reached (through links) from two class folders: its class is undefined."""
    if seen[0] != k:
        raise KddiagError(f"{where}: '{_shown(path, root)}' and '{_shown(seen[1], root)}' are the same "
                          f"{'folder' if path.is_dir() else 'file'} (through a link) in two classes, "
                          f"'{classes[seen[0]]}' and '{classes[k]}'; each image belongs to one class")


def _is_image_file(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _read_image(path: Path, root: Path, where: str) -> Image.Image:
    """One image, decoded now: a Pillow image in mode 'L' (grayscale) or 'RGB'. Opened only as a regular
    file; an image of more pixels than Pillow's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``,
    89,478,485 unless changed) is refused before it is decoded."""
    import warnings

    from PIL import Image

    shown = _shown(path, root)
    try:
        with open_regular(path, f"{where}: image '{shown}'") as handle, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # Pillow only warns up to 2× its limit
            with Image.open(handle) as image:
                image.load()
                mode = image.mode
                if mode in _GRAY_MODES + _COLOR_MODES:
                    return image.convert("L" if mode in _GRAY_MODES or _gray_palette(image) else "RGB")
    except KddiagError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        pixels = re.search(r"\((\d+) pixels\)", str(error))
        size = f"{int(pixels.group(1)):,} pixels" if pixels else "too many pixels"
        raise KddiagError(f"{where}: image '{shown}' has {size}, more than Pillow's decompression-bomb limit of "
                          f"{Image.MAX_IMAGE_PIXELS:,}; kddiag does not decode it") from None
    except Exception as error:  # Pillow raises many kinds for a corrupt file
        reason = one_line(error).replace(str(path), shown)
        raise KddiagError(f"{where}: cannot read image '{shown}', not an image or a corrupt one "
                          f"({reason})") from None
    raise KddiagError(f"{where}: image '{shown}' has Pillow mode {mode} (more than 8 bits per "
                      f"channel); kddiag reads 8-bit grayscale, palette and colour images")


def _gray_palette(image: Image.Image) -> bool:
    """Whether a palette image has only gray colours (a grayscale GIF: GIF stores no 'L' images)."""
    if image.mode not in ("P", "PA"):
        return False
    palette = image.getpalette("RGB") or []
    return all(palette[i] == palette[i + 1] == palette[i + 2] for i in range(0, len(palette) - 2, 3))


def _shown(path: Path, root: Path) -> str:
    return str(path.relative_to(root))


def _size(size: tuple[int, int]) -> str:
    """A Pillow size (width, height) as height×width, the order of --resize."""
    return f"{size[1]}×{size[0]}"


def _numbers(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"
