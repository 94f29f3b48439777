"""A PyTorch Lightning callback that runs a :class:`~kddiag.monitor.Monitor` during ``trainer.fit``.

Needs the optional ``lightning`` package (``pip install -e '.[lightning]' in the kddiag checkout``); nothing else in kddiag
imports it.

Which module is the student: ``student_attr`` when given (``getattr(pl_module, student_attr)``, which
must be an ``nn.Module``); else ``pl_module.student`` when the LightningModule has an ``nn.Module``
attribute of that name (the usual distillation module that holds ``teacher`` and ``student``); else the
LightningModule itself, whose ``forward`` must then return the student's logits.

Each call's key numbers and findings also go to the trainer's loggers (``trainer.loggers``: TensorBoard,
CSV, W&B, …) at ``trainer.global_step``, named as :func:`kddiag.live.live_metrics` names them.

The callback never stops the training: bad constructor arguments raise
:class:`~kddiag.errors.KddiagError` at once, but any error during ``fit`` (a student that fails on the
held-out inputs, a report that cannot be written) becomes a warning through Lightning's
``rank_zero_warn`` and the call is skipped. Only global rank 0 measures.
"""
from __future__ import annotations

import os
from typing import Any

from kddiag.errors import KddiagError
from kddiag.live import emit, live_metrics, sinks_of
from kddiag.monitor import Monitor, _positive_int

try:
    from lightning.pytorch import Callback
    from lightning.pytorch.utilities import rank_zero_warn
except ImportError:  # pragma: no cover - the optional extra is missing
    raise ImportError("kddiag.lightning needs PyTorch Lightning: pip install -e '.[lightning]' in the kddiag checkout "
                      "(or pip install lightning)") from None

__all__ = ["KddiagCallback"]


class KddiagCallback(Callback):
    """Measure the student every ``every_n_steps`` optimizer steps (``trainer.global_step``) and once more at
    the end of training; with ``out`` write ``monitor.json`` and ``monitor.html`` there when training ends.

    ``teacher``, ``data`` and the other keyword arguments are :class:`~kddiag.monitor.Monitor`'s; the
    teacher is run over ``data`` here, once. ``student_attr``: the attribute of the LightningModule
    holding the student (see the module docstring for the default). The records are in
    ``callback.monitor.history``.
    """

    def __init__(self, teacher: Any, *, data: Any, every_n_steps: int = 100, student_attr: str | None = None,
                 out: str | os.PathLike | None = None, **monitor_options: Any) -> None:
        super().__init__()
        if student_attr is not None and (not isinstance(student_attr, str) or not student_attr.isidentifier()):
            raise KddiagError(f"student_attr must be an attribute name such as 'student'; got {student_attr!r}")
        if out is not None:
            from kddiag.report.json import check_writable

            out = check_writable(out)
        self.every_n_steps = _positive_int(every_n_steps, "every_n_steps")
        self.student_attr, self.out = student_attr, out
        self.monitor = Monitor(teacher, data=data, every=self.every_n_steps, **monitor_options)
        self._last_tried: int | None = None  # the last step measured, or tried and skipped

    def student_of(self, pl_module: Any) -> Any:
        """The module measured as the student (see the module docstring for the rule)."""
        import torch

        if self.student_attr is not None:
            student = getattr(pl_module, self.student_attr, None)
            if not isinstance(student, torch.nn.Module):
                raise KddiagError(f"student_attr '{self.student_attr}': the {type(pl_module).__name__} has no "
                                  f"nn.Module attribute of that name (got {type(student).__name__})")
            return student
        student = getattr(pl_module, "student", None)
        return student if isinstance(student, torch.nn.Module) else pl_module

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if self.student_attr is not None:
            self.student_of(pl_module)  # a wrong attribute name fails before the first step

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if not trainer.is_global_zero or step % self.every_n_steps or step == self._last_tried:
            return  # also skips the repeated calls of one step under gradient accumulation
        self._check(trainer, pl_module, step)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.is_global_zero:
            return
        if trainer.global_step != self._last_tried:
            self._check(trainer, pl_module, trainer.global_step)
        if self.out is not None:
            try:
                self.monitor.write_report(self.out)
            except Exception as error:  # never fail the run over its report
                rank_zero_warn(f"kddiag: the monitor report could not be written to '{self.out}': "
                               f"{type(error).__name__}: {error}")

    def _check(self, trainer: Any, pl_module: Any, step: int) -> None:
        self._last_tried = step
        try:
            self.monitor.check(self.student_of(pl_module), step=step)
        except Exception as error:  # never fail the training over a measurement
            rank_zero_warn(f"kddiag: the monitor skipped step {step}: {type(error).__name__}: {error}")
            return
        loggers = tuple(getattr(trainer, "loggers", None) or ())
        if not loggers:
            return
        try:
            sinks = sinks_of(loggers)
        except KddiagError as error:  # a logger of another kind: named, and the training goes on
            rank_zero_warn(f"kddiag: step {step} not sent to the trainer's loggers: {error}")
            return
        emit(sinks, live_metrics(step, self.monitor.last_measurements, self.monitor.last_diagnosis))
