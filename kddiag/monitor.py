"""Diagnosis while distilling: measure a student against its teacher every N training steps.

:class:`Monitor` runs the teacher (and the baseline, if given) over a fixed held-out set once, when it is
built, and keeps their outputs. Each call then runs only the student over that set (``eval()`` under
``torch.inference_mode()``, on the student's own device; every submodule's train/eval mode is put back
as it was), measures all three levels (:func:`kddiag.measure.measure`), diagnoses
(:func:`kddiag.diagnosis.diagnose`) and keeps a :class:`~kddiag.history.MonitorRecord`: the key
measurements and the findings that fired. :meth:`Monitor.write_report` writes ``monitor.json`` and
``monitor.html`` (plots over the steps and the findings timeline), all or nothing.

>>> monitor = Monitor(teacher, data=(x_val, y_val), every=100, temperature=4.0, alpha=0.9)
>>> for step, (x, y) in enumerate(loader):
...     train_step(student, x, y)
...     monitor.step(student)
>>> monitor.write_report("out/")
"""
from __future__ import annotations

import numbers
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from kddiag.readers.arrays import check_enough_data
from kddiag.errors import KddiagError
from kddiag.history import FindingSpan, MonitorRecord, finding_spans
from kddiag.checks import check_alpha, check_class_ids
from kddiag.diagnosis.findings import Diagnosis
from kddiag.inputs import ClassInfo, Dataset, LoadedModel, TokenInputs
from kddiag.metrics._common import check_temperature
from kddiag.options import InspectOptions, Settings
from kddiag.outputs import ModelOutputs, SetOutputs
from kddiag.types import EVAL

__all__ = ["Monitor", "as_monitor_data"]

MONITOR_DATA = "<monitor data>"  # the held-out set's name in errors and reports, when it has none


class Monitor:
    """Measure a student against its teacher on a fixed held-out set, every ``every`` training steps.

    ``teacher``, ``baseline`` (the student's architecture trained without KD; optional): an ``nn.Module``,
    a ``LoadedModel`` or a checkpoint path (a state dict needs ``teacher_arch``/``baseline_arch``, e.g.
    ``'mlp:64-256-256-10'``). Both are run once, here, and never again.
    ``data``: the held-out set: a ``torch.utils.data.DataLoader`` yielding ``(x, y)`` batches, a
    ``TensorDataset`` of ``(x, y)``, an ``(x, y)`` pair of tensors or arrays, or a
    :class:`kddiag.inputs.Dataset`; ``y`` are integer class ids (n_samples,).
    ``temperature``/``alpha``: the distillation settings; None reads them from the teacher's checkpoint,
    else guesses the defaults (τ = 4, α = 0.9). ``batch_size``: examples per forward pass.
    ``log_to``: where each call's key numbers and findings also go, live (:mod:`kddiag.live`): a
    TensorBoard ``SummaryWriter``, a Lightning logger, a W&B run or ``'wandb'``, a function, or a list.
    Bad arguments raise :class:`~kddiag.errors.KddiagError` here, naming the argument.
    """

    def __init__(self, teacher: Any, *, data: Any, every: int = 100, temperature: float | None = None,
                 alpha: float | None = None, baseline: Any = None, teacher_arch: str | None = None,
                 baseline_arch: str | None = None, batch_size: int = 512, feature_layer: str | None = None,
                 class_info: ClassInfo | None = None, log_to: Any = None) -> None:
        from kddiag.live import sinks_of

        self.every = _positive_int(every, "every")
        self.log_to = sinks_of(log_to)
        self.batch_size = _positive_int(batch_size, "batch_size")
        self.feature_layer = feature_layer
        if temperature is not None:
            check_temperature(temperature, "temperature")
        if alpha is not None:
            check_alpha(alpha, "alpha")
        self.data = as_monitor_data(data)
        check_enough_data(self.data, "data")
        teacher_model = _as_model(teacher, "teacher", teacher_arch)
        baseline_model = None if baseline is None else _as_model(baseline, "baseline", baseline_arch)
        self.settings = _settings(temperature, alpha, teacher_model)
        self.class_info = class_info if class_info is not None else self.data.class_info
        if not isinstance(self.class_info, ClassInfo):
            raise KddiagError(f"class_info must be a kddiag.inputs.ClassInfo; got {type(self.class_info).__name__}")
        self.teacher_outputs = collect_model_outputs(self.data, teacher_model, role="teacher",
                                                     batch_size=self.batch_size, feature_layer=feature_layer)
        self.n_classes = self.teacher_outputs.logits.shape[1]
        if self.data.labels.max() >= self.n_classes:
            raise KddiagError(f"data: labels must lie in [0, {self.n_classes}) for the {self.n_classes}-class "
                              f"teacher; got values up to {self.data.labels.max()}")
        for field_name in ("names", "groups"):
            values = getattr(self.class_info, field_name)
            if values is not None and len(values) != self.n_classes:
                raise KddiagError(f"class_info has {len(values)} class {field_name} but the teacher has "
                                  f"{self.n_classes} classes")
        self.baseline_outputs = None
        if baseline_model is not None:
            self.baseline_outputs = collect_model_outputs(self.data, baseline_model, role="baseline",
                                                          batch_size=self.batch_size, feature_layer=feature_layer)
            if self.baseline_outputs.logits.shape[1] != self.n_classes:
                raise KddiagError(f"baseline: gives {self.baseline_outputs.logits.shape[1]} classes but the "
                                  f"teacher gives {self.n_classes}; both must be (n_samples, n_classes)")
        self._history: list[MonitorRecord] = []
        self._reuse: dict = {}  # the teacher-only measurements, computed on the first call (measure's reuse)
        self._calls = 0  # step() calls so far: the step number when none is given
        self.last_diagnosis: Diagnosis | None = None
        self.last_measurements = None  # kddiag.results.Measurements of the last call

    # ------------------------------------------------------------------ calls

    def step(self, student: Any, *, step: int | None = None) -> MonitorRecord | None:
        """Count one training step and measure ``student`` when the step is a multiple of ``every``.

        ``step``: the training step (e.g. Lightning's ``global_step``); None counts the calls of
        ``step()`` from 0. Returns the new record, or None when this step is not measured.
        """
        if step is None:
            step, self._calls = self._calls, self._calls + 1
        else:
            step = _step_number(step)
        if step % self.every:
            return None
        return self.check(student, step=step)

    def check(self, student: Any, *, step: int | None = None) -> MonitorRecord:
        """Measure ``student`` now, whatever the step, and return the record.

        ``step``: the training step to record (None: the last step :meth:`step` counted, 0 before any).
        A second call at a step already recorded replaces that record.
        """
        import torch

        started = time.perf_counter()
        step = max(self._calls - 1, 0) if step is None else _step_number(step)
        if not isinstance(student, torch.nn.Module):
            raise KddiagError(f"student: expected an nn.Module; got {type(student).__name__}")
        student_outputs = collect_model_outputs(self.data, LoadedModel("<in-memory>", "module", student),
                                                role="student", batch_size=self.batch_size,
                                                feature_layer=self.feature_layer)
        record = self._measure(step, student_outputs, started)
        self._history = [r for r in self._history if r.step != step] + [record]
        self._history.sort(key=lambda r: r.step)
        if self.log_to:
            from kddiag.live import emit, live_metrics

            emit(self.log_to, live_metrics(step, self.last_measurements, self.last_diagnosis))
        return record

    def _measure(self, step: int, student_outputs: ModelOutputs, started: float) -> MonitorRecord:
        from kddiag.accumulate import summarize
        from kddiag.diagnosis import diagnose
        from kddiag.measure import measure

        outputs = SetOutputs(EVAL, self.data.labels, self.teacher_outputs, student_outputs,
                             baseline=self.baseline_outputs, source=self.data.name)
        summary = summarize(outputs, temperature=self.settings.temperature.value, alpha=self.settings.alpha.value)
        measurements = measure([summary], settings=self.settings, class_info=self.class_info, reuse=self._reuse)
        diagnosis = diagnose(measurements, settings=self.settings, n_classes=self.n_classes)
        self.last_measurements, self.last_diagnosis = measurements, diagnosis
        return MonitorRecord.of(step, measurements, diagnosis, seconds=time.perf_counter() - started)

    # ------------------------------------------------------------------ results

    @property
    def history(self) -> tuple[MonitorRecord, ...]:
        """Every record so far, in step order."""
        return tuple(self._history)

    @property
    def spans(self) -> tuple[FindingSpan, ...]:
        """The findings timeline: when each finding first fired and when it stopped firing."""
        return finding_spans(self._history)

    def to_dict(self) -> dict:
        """``monitor.json``'s content (:func:`kddiag.report.training.monitor_to_dict`)."""
        from kddiag.report.training import monitor_to_dict

        return monitor_to_dict(self)

    def write_report(self, out_dir: str | os.PathLike) -> dict[str, Path]:
        """Render ``monitor.json`` and ``monitor.html`` in memory, then write both into ``out_dir``, together or
        not at all (:func:`kddiag.report.json.write_report_files`); returns their paths. A monitor that has
        measured nothing yet has no report to write, and says so (KddiagError)."""
        from kddiag.report.json import MONITOR_FILES, check_writable, write_report_files
        from kddiag.report.training import render_training_html, render_training_json

        if not self._history:
            raise KddiagError("write_report: the monitor has measured nothing yet (no step was a multiple of "
                              f"every={self.every}, and check() was never called); call step(student) or "
                              f"check(student) first")
        out_dir = check_writable(out_dir)
        rendered = {"json": ("monitor.json", render_training_json(self)),
                    "html": ("monitor.html", render_training_html(self))}
        try:
            written = write_report_files(out_dir, dict(rendered.values()), replaces=MONITOR_FILES)
        except OSError as error:
            raise KddiagError(f"out_dir '{out_dir}': cannot write the monitor report "
                              f"({error.strerror or error})") from None
        return dict(zip(rendered, written))


# ---------------------------------------------------------------------- running one model

def collect_model_outputs(dataset: Dataset, model: LoadedModel, *, role: str, batch_size: int,
                          feature_layer: str | None = None) -> ModelOutputs:
    """One model's logits, penultimate features (for the rows the measurements read) and logit-layer
    weight on ``dataset``, run batch by batch in ``eval()`` under ``torch.inference_mode()`` on the
    device its parameters are on. Every submodule's training mode is restored afterwards, and nothing
    is moved to another device."""
    from kddiag.collect import outputs_in_memory

    if model.module is None:
        raise KddiagError(f"{role} '{model.source}': a monitor needs a model to run, not stored logits")
    return outputs_in_memory(dataset, {role: model}, set_name=EVAL, batch_size=batch_size,
                             device=str(_device_of(model.module)), feature_layer=feature_layer)[role]


def _device_of(module: Any) -> Any:
    """The device of the module's first parameter (or buffer); CPU when it has none."""
    import torch

    for tensor in (*module.parameters(), *module.buffers()) if isinstance(module, torch.nn.Module) else ():
        return tensor.device
    return torch.device("cpu")


# ---------------------------------------------------------------------- checking the inputs

def as_monitor_data(data: Any) -> Dataset:
    """The held-out set as a :class:`~kddiag.inputs.Dataset` with tensor inputs: from a ``DataLoader`` of
    ``(x, y)`` batches (read once), a ``TensorDataset`` of ``(x, y)``, an ``(x, y)`` pair of tensors or
    arrays, or a ``Dataset`` (which must hold inputs)."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    if isinstance(data, Dataset):
        if data.x is None:
            raise KddiagError(f"data: the Dataset '{data.name}' has labels only; a monitor runs the models "
                              f"and needs inputs 'x'")
        x = data.x if isinstance(data.x, (torch.Tensor, TokenInputs)) else _tensor(data.x, "data: x")
        return Dataset(data.name, x, data.labels, data.class_info, data.format, data.preprocessing)
    if isinstance(data, DataLoader):
        x, y = _from_loader(data)
    elif isinstance(data, TensorDataset):
        if len(data.tensors) != 2:
            raise KddiagError(f"data: a TensorDataset must hold two tensors (x, y); got {len(data.tensors)}")
        x, y = data.tensors
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = data
    else:
        kind = f"a {type(data).__name__} of {len(data)}" if isinstance(data, (tuple, list)) else type(data).__name__
        raise KddiagError(f"data: expected a DataLoader of (x, y) batches, a TensorDataset, an (x, y) pair of "
                          f"tensors or arrays, or a kddiag Dataset; got {kind}")
    x, labels = _tensor(x, "data: x"), _labels(y)
    if x.ndim == 0 or x.shape[0] != labels.size:
        raise KddiagError(f"data: x has shape {tuple(x.shape)} but there are {labels.size} labels; "
                          f"x must be (n_samples, ...) with one row per label")
    return Dataset(MONITOR_DATA, x, labels)


def _from_loader(loader: Any) -> tuple[Any, Any]:
    """Every batch of ``loader`` concatenated: x and y."""
    import torch

    xs, ys = [], []
    for number, batch in enumerate(loader):
        if isinstance(batch, dict):
            raise KddiagError(f"data: the DataLoader yields dicts (keys {sorted(map(str, batch))}); it must yield "
                              f"(x, y) pairs — pass (x, y) tensors instead")
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            what = f"{len(batch)} items" if isinstance(batch, (tuple, list)) else type(batch).__name__
            raise KddiagError(f"data: the DataLoader must yield (x, y) pairs; batch {number} is {what}")
        xs.append(_tensor(batch[0], f"data: x of batch {number}"))
        ys.append(torch.as_tensor(np.asarray(batch[1])) if not isinstance(batch[1], torch.Tensor) else batch[1])
    if not xs:
        raise KddiagError("data: the DataLoader yields no batches")
    return torch.cat(xs), torch.cat([y.reshape(-1) if y.ndim == 0 else y for y in ys])


def _tensor(x: Any, name: str) -> Any:
    import torch

    if isinstance(x, torch.Tensor):
        return x.detach()
    try:
        array = np.asarray(x)
    except (TypeError, ValueError) as error:
        raise KddiagError(f"{name}: expected a tensor or an array; got {type(x).__name__} ({error})") from None
    if array.dtype.kind not in "biuf":
        raise KddiagError(f"{name}: expected numbers; got dtype {array.dtype}")
    return torch.as_tensor(array)


def _labels(y: Any) -> np.ndarray:
    """Labels as a 1-D int64 array of class ids >= 0 (a tensor or an array)."""
    labels = check_class_ids(y, "data: labels y")
    if labels.size == 0:
        raise KddiagError("data: the held-out set is empty (0 labels)")
    return labels


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise KddiagError(f"{name} must be a positive integer; got {value!r}")
    return int(value)


def _step_number(step: Any) -> int:
    if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0:
        raise KddiagError(f"step must be an integer >= 0; got {step!r}")
    return int(step)


def _as_model(source: Any, role: str, arch: str | None) -> LoadedModel:
    """A model to run: an ``nn.Module``, a ``LoadedModel`` or a checkpoint path (loaded safely)."""
    from kddiag.pipeline import as_model

    model = as_model(source, role, arch, InspectOptions())
    if arch is not None and model.format != "state_dict":
        raise KddiagError(f"{role}_arch builds the model a state dict belongs to, but the {role} is "
                          f"{'an nn.Module' if model.format == 'module' else 'a ' + model.format}, which brings its "
                          f"own architecture: leave {role}_arch out")
    return model


def _settings(temperature: float | None, alpha: float | None, teacher: LoadedModel) -> Settings:
    """Each setting as given, else the teacher checkpoint's, else guessed."""
    from kddiag.pipeline import settings_of

    return settings_of(InspectOptions(), teacher, temperature=temperature, alpha=alpha)
