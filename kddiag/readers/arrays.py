"""Data sets: tensor files (``.pt``/``.npz`` with ``x`` and ``y``), image folders, JSON data specs and
built-in offline sets.

Image folders and image arrays are read by :mod:`kddiag.readers.images` (which arrays are images, their layout,
resizing and normalization). A JSON data spec names the data and how to prepare it, so a run can be
repeated: ``{"path": "images/val", "normalize": {"mean": [0.5], "std": [0.25]}, "resize": [28, 28],
"layout": "NHWC"}``. Only ``path`` is required; a relative path is read from the spec's folder; any
other key is an error. Options given as well (``--normalize``, ``--resize``, ``--layout``) must agree
with the spec's: a differing value is an error, never silently preferred.

Built-in sets, addressable by name (nothing is downloaded):

- ``digits``, ``digits:train``, ``digits:test``: scikit-learn's 8×8 handwritten digits (1,797 images,
  10 classes), pixels scaled to [0, 1] and flattened to 64 features; a fixed stratified 70/30 split
  (``random_state=0``). ``digits`` alone is the test part.
- ``hierarchy``, ``hierarchy:train``, ``hierarchy:test``: :func:`make_class_hierarchy` with its
  defaults (20 classes in 4 known groups, 32 features), split the same way; the true groups come
  with the set as ``ClassInfo.groups`` and class names read ``g<group>/c<class>``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from kddiag.errors import KddiagError, printable
from kddiag.files import check_regular, kind_of, read_regular
from kddiag.inputs import ClassInfo, Dataset
from kddiag.options import ImageOptions, check_layout, check_normalize, check_resize

__all__ = ["BUILTIN_DATASETS", "SPEC_KEYS", "load_dataset", "make_class_hierarchy"]

BUILTIN_DATASETS = ("digits", "digits:train", "digits:test", "hierarchy", "hierarchy:train", "hierarchy:test")
SPEC_KEYS = ("path", "normalize", "resize", "layout")  # a JSON data spec's keys; only 'path' is required
_TEST_SIZE, _SPLIT_SEED = 0.3, 0


def load_dataset(spec: str, *, role: str = "data", images: ImageOptions = ImageOptions()) -> Dataset:
    """Read a data set from a file, an image folder or a JSON data spec, or build a built-in one by name.

    A ``.pt``/``.npz`` file holds ``y`` (1-D integer labels ≥ 0), ``x`` (inputs, first dimension
    ``len(y)``; may be absent in logits mode) and optionally ``class_names``. ``.pt`` files are read
    with ``weights_only=True``. Image arrays (:mod:`kddiag.readers.images`) become float32 (n, C, H, W);
    other floating inputs float32 tensors as stored, other integer inputs (token ids) int64. A
    directory is an image folder; ``images`` says how images are resized and normalized.
    ``role`` ('data' or 'transfer-data') names the option in errors.

    >>> load_dataset("digits:train").x.shape
    torch.Size([1257, 64])
    """
    spec = str(spec)
    path = Path(spec)
    if kind_of(path) not in (None, "a folder", "missing"):  # a FIFO, a device, a socket, a broken link
        check_regular(path, f"--{role} '{spec}'")
    if path.is_file() and path.suffix.lower() == ".json":
        return _load_spec(path, role, images)
    if path.is_file() or path.is_dir():
        return _load_path(path, role, images)
    if spec in BUILTIN_DATASETS:
        return _load_builtin(spec, role, images)
    if path.suffix.lower() in (".pt", ".pth", ".npz", ".json") or "/" in spec or "\\" in spec:
        raise KddiagError(f"--{role} '{spec}': no such file or folder")
    raise KddiagError(f"--{role} '{spec}': not a file and not a built-in data set; "
                      f"built-in sets are {', '.join(BUILTIN_DATASETS)}")


def check_enough_data(dataset: Dataset, option: str) -> None:
    """Refuse a set whose labels are all one class: kddiag measures what a teacher passes on about classes
    (calibration, class similarity, per-class structure), so a verdict on it would be confident and empty.
    ``option`` ('--data', '--transfer-data', 'data') names where the set came from."""
    labels = dataset.labels
    if labels.size and labels.min() == labels.max():
        names = dataset.class_info.names
        named = f" ('{names[labels[0]]}')" if names and labels[0] < len(names) else ""
        raise KddiagError(f"{option} '{dataset.name}': not enough data: every label is class {labels[0]}{named} "
                          f"({labels.size:,} of {labels.size:,} examples); kddiag needs examples of at least 2 "
                          f"classes")


def make_class_hierarchy(*, n_groups: int = 4, classes_per_group: int = 5, n_features: int = 32,
                         n_per_class: int = 120, prototype_spread: float = 0.45, noise: float = 1.0,
                         center_scale: float = 2.0, seed: int = 0
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Synthetic classes with known super-classes: prototypes clustered by group, plus Gaussian noise.

    Group centres c_g = center_scale·N(0, I_d); class prototypes μ_k = c_{g(k)} + prototype_spread·N(0, I_d);
    inputs x = μ_y + noise·N(0, I_d). Class k belongs to group ``k // classes_per_group``.
    Within a group, prototypes are about prototype_spread·√(2d) apart (≈ 3.6 noise units with the
    defaults), across groups about center_scale·√(2d) (≈ 16). With the defaults the Bayes rule (nearest
    true prototype) is ≈ 89% accurate, a 32-64-20 MLP reaches ≈ 81-85% on ``hierarchy:test`` (three
    seeds) while fitting the training part to 94-100%, and all its confusions stay within a group. kddiag's own generator
    (docs/literature.md §5), not a reproduction of Tang et al.'s.

    Returns ``x`` (n_classes·n_per_class, n_features) float32, ``y`` (same length,) int64 in shuffled
    order, and ``groups`` (n_classes,) int64, the group of each class.

    >>> x, y, groups = make_class_hierarchy(n_groups=2, classes_per_group=3, n_per_class=10)
    >>> x.shape, groups.tolist()
    ((60, 32), [0, 0, 0, 1, 1, 1])
    """
    for name, value in (("n_groups", n_groups), ("classes_per_group", classes_per_group),
                        ("n_features", n_features), ("n_per_class", n_per_class)):
        if int(value) != value or value < 1:
            raise KddiagError(f"make_class_hierarchy: '{name}' must be a positive integer; got {value!r}")
    for name, value in (("prototype_spread", prototype_spread), ("noise", noise), ("center_scale", center_scale)):
        if not value >= 0:
            raise KddiagError(f"make_class_hierarchy: '{name}' must be >= 0; got {value!r}")
    rng = np.random.default_rng(seed)
    n_classes = n_groups * classes_per_group
    groups = np.repeat(np.arange(n_groups), classes_per_group).astype(np.int64)
    centres = center_scale * rng.standard_normal((n_groups, n_features))
    prototypes = centres[groups] + prototype_spread * rng.standard_normal((n_classes, n_features))
    y = rng.permutation(np.repeat(np.arange(n_classes), n_per_class)).astype(np.int64)
    x = prototypes[y] + noise * rng.standard_normal((len(y), n_features))
    return x.astype(np.float32), y, groups


def _load_builtin(name: str, role: str, images: ImageOptions) -> Dataset:
    from sklearn.model_selection import train_test_split

    base, _, part = name.partition(":")
    part = part or "test"
    if base == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        x, y = (digits.data / 16.0).astype(np.float32), digits.target.astype(np.int64)
        info = ClassInfo(names=tuple(str(k) for k in range(10)))
    else:
        x, y, groups = make_class_hierarchy()
        info = ClassInfo(names=tuple(f"g{g}/c{k}" for k, g in enumerate(groups.tolist())),
                         groups=tuple(groups.tolist()))
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=_TEST_SIZE, random_state=_SPLIT_SEED, stratify=y)
    x, y = (x_train, y_train) if part == "train" else (x_test, y_test)
    return _dataset(f"{base}:{part}", x, y, info, where=f"--{role} '{name}'", images=images, format="builtin")


def _load_spec(path: Path, role: str, images: ImageOptions) -> Dataset:
    """A JSON data spec: the data it names, prepared with its options merged with ``images``."""
    where = f"--{role} '{path}'"
    try:
        spec = json.loads(read_regular(path, where, what="a small JSON data spec").decode("utf-8"))
    except RecursionError:
        raise KddiagError(f"{where}: not a JSON data spec (nested too deeply); expected "
                          f'{{"path": ..., "normalize": ..., "resize": ..., "layout": ...}}') from None
    except ValueError as error:  # not UTF-8, not JSON, or an integer of more digits than Python converts
        raise KddiagError(f"{where}: not a JSON data spec ({_one_line(error)}); expected "
                          f'{{"path": ..., "normalize": ..., "resize": ..., "layout": ...}}') from None
    if not isinstance(spec, dict):
        raise KddiagError(f"{where}: a data spec must be a JSON object with 'path'; got {type(spec).__name__}")
    unknown = [key for key in spec if key not in SPEC_KEYS]
    if unknown:
        raise KddiagError(f"{where}: unknown key '{unknown[0]}' in the data spec; allowed keys: {', '.join(SPEC_KEYS)}")
    target = spec.get("path")
    if not isinstance(target, str) or not target:
        raise KddiagError(f"{where}: the data spec needs 'path', the data file or image folder as a string; "
                          f"got {target!r}")
    resolved = path.parent / target  # an absolute path stays as it is
    if resolved.suffix.lower() == ".json":
        raise KddiagError(f"{where}: 'path' names another spec ('{target}'); it must name a data file or image folder")
    if not resolved.exists():
        raise KddiagError(f"{where}: 'path' '{target}' does not exist (looked for '{resolved}')")
    stored = _spec_options(spec, where)
    if resolved.is_dir() and stored.layout is not None:
        raise KddiagError(f"{where}: 'layout' is the axis order of 4-D image arrays in .pt/.npz files; '{target}' "
                          f"is an image folder, whose images Pillow reads in a known order: leave 'layout' out")
    return _load_path(resolved, role, _merged(images, stored, where), spec=path)


def _spec_options(spec: dict, where: str) -> ImageOptions:
    """The image options of a data spec, each checked naming its key."""
    mean = std = None
    if spec.get("normalize") is not None:
        normalize = spec["normalize"]
        if not isinstance(normalize, dict) or set(normalize) != {"mean", "std"}:
            raise KddiagError(f"{where}: 'normalize' must be an object with exactly 'mean' and 'std', lists of "
                              f"one number per channel; got {json.dumps(normalize)}")
        mean, std = check_normalize(normalize["mean"], normalize["std"], f"{where}: 'normalize'")
    resize = None if spec.get("resize") is None else check_resize(spec["resize"], f"{where}: 'resize'")
    layout = None if spec.get("layout") is None else check_layout(spec["layout"], f"{where}: 'layout'")
    return ImageOptions(mean=mean, std=std, resize=resize, layout=layout)


def _merged(given: ImageOptions, stored: ImageOptions, where: str) -> ImageOptions:
    """Options from the command line (or Python) and from a spec; each set in one place, or the same in both."""
    for option, key, fields in (("--normalize", "normalize", ("mean", "std")), ("--resize", "resize", ("resize",)),
                                ("--layout", "layout", ("layout",))):
        ours, theirs = ([getattr(o, f) for f in fields] for o in (given, stored))
        if None not in ours and None not in theirs and ours != theirs:
            raise KddiagError(f"{where}: {option} {_shown(ours)} differs from the spec's '{key}' {_shown(theirs)}; "
                              f"give it in one place")
    return ImageOptions(**{f: getattr(given, f) if getattr(given, f) is not None else getattr(stored, f)
                           for f in ("mean", "std", "resize", "layout")})


def _load_path(path: Path, role: str, images: ImageOptions, *, spec: Path | None = None) -> Dataset:
    """A data file or an image folder; ``spec``: the data spec that named it, then the set's name."""
    where = f"--{role} '{path}'"
    name, format_prefix = (str(spec), "spec:") if spec else (str(path), "")
    if not path.is_dir():
        return _load_file(path, where, images, name=name, format_prefix=format_prefix)
    from kddiag.readers.images import read_image_folder

    if images.layout is not None:
        raise KddiagError(f"{where}: --layout is the axis order of 4-D image arrays in .pt/.npz files; an image "
                          f"folder's images are read by Pillow in a known order: leave --layout out")
    x, labels, class_names, notes = read_image_folder(path, images, where)
    return Dataset(name=name, x=x, labels=labels, class_info=ClassInfo(names=class_names),
                   format=format_prefix + "image-folder", preprocessing=notes)


def _load_file(path: Path, where: str, images: ImageOptions, *, name: str, format_prefix: str) -> Dataset:
    check_regular(path, where)  # e.g. a FIFO named by a data spec: never opened
    if path.stat().st_size == 0:
        raise KddiagError(f"{where}: the file is empty")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        from kddiag.loading.logits import read_npz

        content = read_npz(path, where)
    elif suffix in (".pt", ".pth"):
        import torch

        try:
            content = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            from kddiag.loading.unpickling import unreadable_reason  # kddiag's words, never torch's advice

            raise KddiagError(f"{where}: not a readable tensor file; expected a dict with tensors 'x' "
                              f"and 'y' saved by torch.save ({unreadable_reason(path, error)})") from None
        if not isinstance(content, dict):
            raise KddiagError(f"{where}: expected a dict with tensors 'x' and 'y'; got {type(content).__name__}")
        from kddiag.loading.logits import check_stored_tensor  # zero-stride views: before anything materializes

        for key, value in content.items():
            check_stored_tensor(value, where, printable(str(key))[:80])
    else:
        raise KddiagError(f"{where}: unknown data format '{suffix or path.name}'; expected .pt, .pth or .npz "
                          f"with 'x' and 'y', or a built-in set ({', '.join(BUILTIN_DATASETS)})")
    if "y" not in content:
        raise KddiagError(f"{where}: no labels 'y' (found keys: {', '.join(map(str, content)) or 'none'}); "
                          f"expected 'x' (inputs) and 'y' (integer labels)")
    names = content.get("class_names")
    if names is not None:
        names = np.asarray(names)
        if names.ndim != 1 or not (names.dtype.kind in "US" or all(isinstance(n, str) for n in names.tolist())):
            raise KddiagError(f"{where}: 'class_names' must be a 1-D list of strings; got {names.dtype} "
                              f"of shape {names.shape}")
        names = tuple(str(n) for n in names.tolist())
    return _dataset(name, content.get("x"), content["y"], ClassInfo(names=names), where=where, images=images,
                    format=format_prefix + suffix.lstrip("."))


def _dataset(name: str, x, y, class_info: ClassInfo, *, where: str, images: ImageOptions, format: str) -> Dataset:
    """The Dataset with ``x`` as float32 images (n, C, H, W), float32 as stored, or int64 token ids;
    Dataset checks labels and lengths."""
    import torch

    from kddiag.readers.images import images_from_array, is_image_array

    labels = y.numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    notes = None
    if x is not None:
        x = x if isinstance(x, torch.Tensor) else _as_tensor(x, where)
        if x.is_complex():
            raise KddiagError(f"{where}: inputs 'x' are complex ({x.dtype}); expected real numbers")
        if is_image_array(x, images):
            x, notes = images_from_array(x, images, where)
        elif images.given:
            raise KddiagError(f"{where}: {_not_images(x, images)}")
        elif x.is_floating_point() or x.dtype == torch.bool:
            x = x.to(torch.float32)
        else:
            x = x.to(torch.int64)
    return Dataset(name=name, x=x, labels=labels, class_info=class_info, format=format, preprocessing=notes)


def _not_images(x, images: ImageOptions) -> str:
    """Why the image options given cannot apply to inputs ``x``."""
    given = ", ".join(option for option, value in (("normalize", images.mean), ("resize", images.resize),
                                                   ("layout", images.layout)) if value is not None)
    dtype = str(x.dtype).removeprefix("torch.")
    if x.dim() in (3, 4) and not x.is_floating_point():
        return (f"inputs 'x' are {dtype} integers, which are token ids; the image options given ({given}) apply "
                f"to images, stored as uint8 (0-255) or floating point")
    return (f"the image options given ({given}) apply to images (n, H, W), (n, H, W, C) or (n, C, H, W); "
            f"got {dtype} inputs of shape {tuple(x.shape)}")


def _as_tensor(x, where: str):
    import torch

    array = np.asarray(x)
    if array.dtype.kind not in "biuf":
        raise KddiagError(f"{where}: inputs 'x' must be numeric; got dtype {array.dtype}")
    return torch.from_numpy(np.ascontiguousarray(array))


def _shown(values: list) -> str:
    """Option values as the command line spells them: 0.5,0.25 · 28,28 · NHWC."""
    flat = [v for value in values for v in (value if isinstance(value, tuple) else (value,))]
    return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in flat)


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return (text[:200] + "…") if len(text) > 200 else text or type(error).__name__
