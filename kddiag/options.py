"""What the user asks for: the distillation settings and where each came from, and the options of
``inspect`` (images, probes, devices), each checked once when built.

The objects check themselves in ``__post_init__`` and raise KddiagError naming the argument; the
stages that receive them trust them.
"""
from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from kddiag.checks import check_alpha, is_real
from kddiag.errors import KddiagError, as_float, shown_value
from kddiag.metrics._common import check_temperature
from kddiag.progress import check_progress
from kddiag.types import ROLES


MAX_PROBE_SEEDS = 64  # initializations a probe may train per setting: 2-3 suffice (docs/probes.md)


MAX_PROBE_EPOCHS = 10_000  # passes over the transfer set a probe arm may train (a training recipe's length)


DEFAULT_TEMPERATURE, DEFAULT_ALPHA = 4.0, 0.9
# Where a distillation setting's value came from, in precedence order: the command line (or the Python
# API's options), the run's own config file (--config), the checkpoint's metadata, else a guessed default.
# A value on the command line and in the config must agree (kddiag.pipeline.settings_of).


# Where a distillation setting's value came from, in precedence order: the command line (or the Python
# API's options), the run's own config file (--config), the checkpoint's metadata, else a guessed default.
# A value on the command line and in the config must agree (kddiag.pipeline.settings_of).
SETTING_SOURCES = ("cli", "config", "checkpoint", "guessed")


@dataclass(frozen=True)
class Setting:
    """One distillation setting and where its value came from: 'cli', 'config', 'checkpoint' or 'guessed'
    (:data:`SETTING_SOURCES`, highest precedence first).

    Its value is checked by :class:`Settings`, which knows which setting it is.
    """

    value: float
    source: str
    path: str | None = None  # the checkpoint or config file the value was read from (source 'checkpoint', 'config')

    def __post_init__(self) -> None:
        if self.source not in SETTING_SOURCES:
            raise KddiagError(f"a setting's source must be one of {', '.join(map(repr, SETTING_SOURCES))}; "
                              f"got {self.source!r}")

    @property
    def guessed(self) -> bool:
        return self.source == "guessed"

    @property
    def provenance(self) -> str:
        """Where the value came from, for reports: 'command line', "config 'kd.yaml'", "checkpoint 'student.pt'",
        'guessed (default)'."""
        if self.source in ("checkpoint", "config"):
            return f"{self.source} '{Path(self.path).name}'" if self.path else self.source
        return {"cli": "command line", "guessed": "guessed (default)"}[self.source]

    def origin(self, name: str) -> str:
        """Where the value of setting ``name`` came from, as error messages name it."""
        if self.source == "cli":
            return f"--{name}"
        if self.source == "checkpoint":
            return f"the {name} stored in checkpoint '{self.path}'" if self.path else f"the checkpoint's {name}"
        if self.source == "config":
            return f"the {name} in config '{self.path}'" if self.path else f"the config's {name}"
        return f"the default {name}"


@dataclass(frozen=True)
class Settings:
    """The distillation settings the student was trained with: temperature finite and > 0, alpha in [0, 1]."""

    temperature: Setting = Setting(DEFAULT_TEMPERATURE, "guessed")
    alpha: Setting = Setting(DEFAULT_ALPHA, "guessed")

    def __post_init__(self) -> None:
        check_temperature(self.temperature.value, self.temperature.origin("temperature"))
        check_alpha(self.alpha.value, self.alpha.origin("alpha"))


@dataclass(frozen=True)
class RunConfig:
    """The distillation settings read from a training run's own config file (:mod:`kddiag.configs`).

    ``temperature``/``alpha`` are in kddiag's terms (α: the weight of the soft term, in [0, 1]), None when
    the file does not set them; ``keys``: setting name -> where in the file it was read ('KD.TEMPERATURE');
    ``notes``: how the values were derived from the framework's own, for reports.
    """

    path: str
    framework: str  # 'torchdistill', 'mdistiller' or 'lightning'
    temperature: float | None = None
    alpha: float | None = None
    keys: Mapping[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()


IMAGE_LAYOUTS = ("NCHW", "NHWC")  # axis orders of 4-D image arrays


@dataclass(frozen=True)
class ImageOptions:
    """How image inputs are prepared, in this order: resized to ``resize`` (height, width), uint8 pixels
    scaled to [0, 1], then normalized per channel, x[c] ← (x[c] − mean[c]) / std[c].

    ``layout``: the axis order of 4-D image arrays, 'NCHW' or 'NHWC'; None: detected (:mod:`kddiag.readers.images`).
    Any option given also marks floating-point arrays of 3 or 4 dimensions as images.
    """

    mean: tuple[float, ...] | None = None  # one per channel
    std: tuple[float, ...] | None = None  # one per channel, each > 0
    resize: tuple[int, int] | None = None  # (height, width)
    layout: str | None = None

    def __post_init__(self) -> None:
        if (self.mean is None) != (self.std is None):
            raise KddiagError("--normalize needs both the means and the stds; got only "
                              + ("the means" if self.std is None else "the stds"))
        if self.mean is not None:
            mean, std = check_normalize(self.mean, self.std, "--normalize")
            object.__setattr__(self, "mean", mean)
            object.__setattr__(self, "std", std)
        if self.resize is not None:
            object.__setattr__(self, "resize", check_resize(self.resize, "--resize"))
        if self.layout is not None:
            object.__setattr__(self, "layout", check_layout(self.layout, "--layout"))

    @property
    def given(self) -> bool:
        """Whether any option is set."""
        return any(v is not None for v in (self.mean, self.resize, self.layout))


@dataclass(frozen=True)
class ProbeOptions:
    """How remedy probes train (:mod:`kddiag.probe`): each setting and seed for ``steps`` Adam steps, or
    ``epochs`` passes over the transfer set — the student's own training length, so settings are ranked
    where that training stops (None for both: the checkpoint's epochs, else ten passes, at least 100
    steps, doubled up to 2,000 while the control still learns); ``batch_size`` transfer examples a step
    (None: the checkpoint's, else 64); ``seeds`` initializations (None: 3 for a probe as long as the
    student's training, else 2); learning rate ``lr`` (None: the
    checkpoint's, else a short check)."""

    steps: int | None = None
    batch_size: int | None = None
    seeds: int | None = None
    lr: float | None = None
    seed: int = 0  # the first initialization's seed; seed k is seed + k
    epochs: float | None = None

    def __post_init__(self) -> None:
        for name, least in (("steps", 1), ("batch_size", 1), ("seeds", 1), ("seed", 0)):
            value = getattr(self, name)
            if value is None and name in ("steps", "batch_size", "seeds"):
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
                raise KddiagError(f"--probe-{name.replace('_', '-')} must be an integer >= {least}; got {value!r}")
        if self.lr is not None and not (is_real(self.lr) and math.isfinite(self.lr) and 0 < self.lr <= 10):
            raise KddiagError(f"--probe-lr must be a number in (0, 10]; got {self.lr!r}")
        if self.epochs is not None and not (is_real(self.epochs) and math.isfinite(self.epochs)
                                            and 0 < self.epochs <= MAX_PROBE_EPOCHS):
            raise KddiagError(f"--probe-epochs must be a number in (0, {MAX_PROBE_EPOCHS:g}]; got {self.epochs!r}")
        if self.seeds is not None and self.seeds > MAX_PROBE_SEEDS:
            raise KddiagError(f"--probe-seeds must be at most {MAX_PROBE_SEEDS} (each seed trains every setting "
                              f"once more); got {self.seeds}")
        if self.steps is not None and self.epochs is not None:
            raise KddiagError("--probe-steps and --probe-epochs both set the probes' length: give one")


@dataclass(frozen=True)
class InspectOptions:
    """Settings of one inspection run (everything beyond the teacher, student and data)."""

    # 'package.module:callable', 'package.module:Class(28, hidden=64)' (literal arguments only),
    # 'path/to/models.py:Class(28)' or a built-in name (kddiag.models, kddiag.loading.archs)
    teacher_arch: str | None = None
    student_arch: str | None = None
    baseline_arch: str | None = None  # None: the student's architecture
    ema: tuple[str, ...] = ()  # roles ('teacher', 'student', 'baseline') whose EMA weights to use
    temperature: float | None = None  # None: from the config, else checkpoint metadata, else DEFAULT_TEMPERATURE
    alpha: float | None = None
    # the training run's config (torchdistill or mdistiller YAML, Lightning hparams.yaml) that holds τ and α
    # (kddiag.configs); a temperature or alpha given as well must agree with it
    config: str | os.PathLike | None = None
    classes: str | None = None  # JSON file with {"names": [...], "groups": [...]}
    trust_pickle: bool = False
    trust_program: bool = False  # run TorchScript/torch.export programs with operators outside the allowlist
    trust_remote_code: bool = False  # let a Hugging Face model directory run its own modelling code
    max_length: int | None = None  # text data: tokens per sequence (None: the tokenizer's, within reason)
    feature_layer: str | None = None  # module name whose input/output is the penultimate feature
    batch_size: int = 512
    device: str | None = None  # None: CUDA when present, else CPU
    progress: str | bool = "none"  # 'auto', 'bar', 'lines' or 'none' (kddiag.progress); True: 'auto', False: 'none'
    images: ImageOptions = ImageOptions()  # for every data set read from a path (--normalize, --resize, --layout)
    probe: ProbeOptions | None = None  # train remedy probes of the student (kddiag.probe); None: no probes
    full_paths: bool = False  # reports name files by absolute path (default: relative to the working directory)

    def __post_init__(self) -> None:
        self._check_kinds()
        self._check_models()
        self._check_run()

    def _check_kinds(self) -> None:
        """The switches are booleans, ``progress`` a known mode, the file and name options strings."""
        for name in ("trust_pickle", "trust_program", "trust_remote_code", "full_paths"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise KddiagError(f"InspectOptions.{name} must be True or False; got {getattr(self, name)!r}")
        progress = bool(self.progress) if isinstance(self.progress, np.bool_) else self.progress
        object.__setattr__(self, "progress", check_progress(progress, "InspectOptions.progress"))
        for name in ("classes", "config", "feature_layer", "device"):
            value = getattr(self, name)
            paths = name in ("classes", "config")
            if value is not None and not isinstance(value, (str, os.PathLike) if paths else str):
                raise KddiagError(f"InspectOptions.{name} must be a string or None; got {type(value).__name__}")

    def _check_models(self) -> None:
        """Each architecture spec parses (before any model is loaded); ``ema`` names known roles."""
        from kddiag.loading.archs import parse_arch

        for role in ROLES:
            spec = getattr(self, f"{role}_arch")
            if spec is not None and not isinstance(spec, str):
                raise KddiagError(f"--{role}-arch must be a string such as 'package.module:Class(28)'; "
                                  f"got {type(spec).__name__}")
            if spec is not None:
                parse_arch(spec, f"--{role}-arch")  # a malformed spec fails before any model is loaded
        if isinstance(self.ema, str) or not set(self.ema) <= set(ROLES):
            raise KddiagError(f"--ema must name roles among {', '.join(ROLES)}; got {self.ema!r}")

    def _check_run(self) -> None:
        """The settings, sizes, device and nested options of the run."""
        if self.temperature is not None:
            check_temperature(self.temperature, "--temperature")
        if self.alpha is not None:
            check_alpha(self.alpha, "--alpha")
        size = self.batch_size
        if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 1:
            raise KddiagError(f"--batch-size must be a positive integer; got {self.batch_size!r}")
        if self.device is not None:
            _check_device(self.device)
        length = self.max_length
        if length is not None and (isinstance(length, bool) or not isinstance(length, numbers.Integral) or length < 2):
            raise KddiagError(f"--max-length must be an integer >= 2; got {self.max_length!r}")
        if self.probe is not None and not isinstance(self.probe, ProbeOptions):
            raise KddiagError(f"InspectOptions.probe must be a ProbeOptions or None; got {type(self.probe).__name__}")
        if not isinstance(self.images, ImageOptions):
            raise KddiagError(f"InspectOptions.images must be an ImageOptions; got {type(self.images).__name__}")


def check_normalize(mean: Any, std: Any, origin: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel means and stds as float tuples: as many of each (at least one), finite, every std > 0."""
    values = []
    for name, given in (("means", mean), ("stds", std)):
        if isinstance(given, (str, bytes)) or not hasattr(given, "__len__") or len(given) == 0:
            raise KddiagError(f"{origin}: the {name} must be a non-empty list of numbers, one per channel; "
                              f"got {shown_value(given)}")
        if not all(is_real(v) and math.isfinite(as_float(v)) for v in given):
            raise KddiagError(f"{origin}: the {name} must be finite numbers; got {shown_value(list(given))}")
        values.append(tuple(float(v) for v in given))
    mean, std = values
    if len(mean) != len(std):
        raise KddiagError(f"{origin}: {len(mean)} means but {len(std)} stds; give one mean and one std per channel")
    if min(std) <= 0:
        raise KddiagError(f"{origin}: every std must be > 0; got {min(std):g}")
    return mean, std


def check_resize(size: Any, origin: str) -> tuple[int, int]:
    """(height, width), two positive integers."""
    if (isinstance(size, (str, bytes)) or not hasattr(size, "__len__") or len(size) != 2
            or not all(isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_)) and v > 0
                       for v in size)):
        raise KddiagError(f"{origin} must be two positive integers (height, width); got {size!r}")
    return int(size[0]), int(size[1])


def check_layout(layout: Any, origin: str) -> str:
    """'NCHW' or 'NHWC', in any case."""
    if not isinstance(layout, str) or layout.upper() not in IMAGE_LAYOUTS:
        raise KddiagError(f"{origin} must be one of {', '.join(IMAGE_LAYOUTS)}; got {layout!r}")
    return layout.upper()


def _check_device(device: str) -> None:
    """A torch device this machine has: 'cpu', 'cuda', 'cuda:1', 'mps', …"""
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise KddiagError(f"--device must be a torch device such as cpu, cuda or cuda:1; got {device!r}") from None
    backend = getattr(torch, parsed.type, None)
    available = parsed.type == "cpu" or (backend is not None and hasattr(backend, "is_available")
                                         and backend.is_available())
    if not available:
        raise KddiagError(f"--device {device!r}: this machine has no {parsed.type} device")
