"""A Hugging Face ``Trainer`` callback that runs a :class:`~kddiag.monitor.Monitor` during ``trainer.train()``.

Needs the optional ``transformers`` package (``pip install -e '.[transformers]' in the kddiag checkout``) and, as the Trainer
itself does, ``accelerate``; nothing else in kddiag imports this module.

The student is the Trainer's model (``model`` in the callback events: TRL's distillation trainers
pass their student there too), run through kddiag's adapters (:mod:`kddiag.loading.hf`): a sequence
classifier gives one example per sequence, a causal language model one per target token. Which of the
two the data decides: ``labels`` of one class id per sequence make a classification set, ``labels``
aligned with ``input_ids`` (or none) a language-model set.

Its numbers reach the Trainer's own loggers (``report_to``: TensorBoard, W&B, …, and
``trainer.state.log_history``) when the callback is given the trainer (``trainer=``): a callback event
does not carry it. They are logged with ``transformers.Trainer.log`` itself, so that a subclass's
``log`` (TRL's, which flushes its own averaged metrics) is left to its own schedule. The Trainer files
training-time logs under ``train/``: ``kddiag/universe/teacher_ece/eval`` appears in TensorBoard as
``train/kddiag/universe/teacher_ece/eval``.

The callback never stops the training: bad constructor arguments raise
:class:`~kddiag.errors.KddiagError` at once, but any error during ``train()`` (a student that fails on
the held-out inputs, a logger that refuses a value, a report that cannot be written) becomes a one-line
warning and that call is skipped. Only the main process (``state.is_world_process_zero``) measures.
"""
from __future__ import annotations

from collections.abc import Mapping
import os
from pathlib import Path
from typing import Any
import warnings

import numpy as np

from kddiag.errors import KddiagError
from kddiag.live import FINDINGS_TAG, live_metrics
from kddiag.monitor import MONITOR_DATA, Monitor, _positive_int
from kddiag.inputs import Dataset, LoadedModel, TokenInputs

try:
    import transformers
    from transformers import TrainerCallback
except ImportError:  # pragma: no cover - the optional extra is missing
    raise ImportError("kddiag.hf needs transformers: pip install -e '.[transformers]' in the kddiag checkout "
                      "(or pip install transformers)") from None

__all__ = ["KddiagTrainerCallback", "as_token_data"]

TOKEN_COLUMNS = ("input_ids", "attention_mask", "labels", "label")
REPORT_FOLDER = "kddiag"  # under args.output_dir: the report's folder holds only kddiag's files


class KddiagTrainerCallback(TrainerCallback):
    """Measure the Trainer's model (the student) every ``every_n_steps`` optimizer steps
    (``state.global_step``) and at the last step; log each call's key numbers and findings through the
    Trainer's loggers when ``trainer`` is given; write ``monitor.json`` and ``monitor.html`` when training
    ends, into ``out`` (default: ``args.output_dir``/kddiag).

    ``teacher``: a ``transformers`` model (``…ForSequenceClassification`` or ``…ForCausalLM``), a
    ``save_pretrained`` folder (read as ``kddiag inspect`` reads it: safetensors only, no remote code), or
    a module already taking :class:`~kddiag.inputs.TokenInputs`; it runs over ``data`` here, once.
    ``data``: the held-out set (:func:`as_token_data`). ``trainer``: the ``transformers.Trainer`` this
    callback is added to. The other keyword arguments are :class:`~kddiag.monitor.Monitor`'s
    (``temperature``, ``alpha``, ``baseline``, ``batch_size``, ``log_to``, …). The records are in
    ``callback.monitor.history``.

    >>> trainer = Trainer(model=student, args=args, train_dataset=train)  # doctest: +SKIP
    >>> trainer.add_callback(KddiagTrainerCallback(teacher, data=held_out, every_n_steps=200, trainer=trainer))
    """

    def __init__(self, teacher: Any, *, data: Any, every_n_steps: int = 100, trainer: Any = None,
                 out: str | os.PathLike | None = None, **monitor_options: Any) -> None:
        super().__init__()
        if trainer is not None and not isinstance(trainer, transformers.Trainer):
            raise KddiagError(f"trainer must be the transformers.Trainer the callback is added to; got "
                              f"{type(trainer).__name__}")
        if out is not None:
            from kddiag.report.json import check_writable

            out = check_writable(out)
        self.every_n_steps = _positive_int(every_n_steps, "every_n_steps")
        self.trainer, self.out = trainer, out
        dataset = as_token_data(data)
        self.causal_lm = dataset.x.per_position
        self.monitor = Monitor(_teacher(teacher, self.causal_lm), data=dataset, every=self.every_n_steps,
                               **monitor_options)
        self._student: Any = None  # the adapter around the last model measured
        self._last_tried: int | None = None  # the last step measured, or tried and skipped
        self._told_no_trainer = False

    # ------------------------------------------------------------------ Trainer events

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.trainer is None and state.is_world_process_zero and not self._told_no_trainer:
            self._told_no_trainer = True
            _warn("KddiagTrainerCallback has no trainer=, so its numbers go to monitor.json and its log_to only, "
                  "not to the Trainer's loggers (report_to); pass trainer=trainer to send them there")

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        step = state.global_step
        last = bool(state.max_steps) and step >= state.max_steps
        if not state.is_world_process_zero or step == self._last_tried or (step % self.every_n_steps and not last):
            return  # also skips a second call at one step
        self._check(model, step, control)

    def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        if state.global_step != self._last_tried:  # stopped before max_steps
            self._check(model, state.global_step, control)
        out = self.out if self.out is not None else Path(args.output_dir) / REPORT_FOLDER
        try:
            self.monitor.write_report(out)
        except Exception as error:  # never fail the run over its report
            _warn(f"the monitor report could not be written to '{out}': {type(error).__name__}: {error}")

    # ------------------------------------------------------------------ one call

    def student_of(self, model: Any) -> Any:
        """The module measured as the student: ``model`` behind kddiag's adapter for the data's task (kept
        while the Trainer's model stays the same object); a module that already takes TokenInputs as is."""
        import torch

        if not isinstance(model, torch.nn.Module):
            raise KddiagError(f"the Trainer's model: expected an nn.Module; got {type(model).__name__}")
        if self._student is not None and getattr(self._student, "model", None) is model:
            return self._student
        self._student = _adapted(model, self.causal_lm, "the Trainer's model (the student)")
        return self._student

    def _check(self, model: Any, step: int, control: Any) -> None:
        self._last_tried = step
        try:
            self.monitor.check(self.student_of(model), step=step)
        except Exception as error:  # never fail the training over a measurement
            _warn(f"the monitor skipped step {step}: {type(error).__name__}: {error}")
            return
        if self.trainer is None:
            return
        metrics = live_metrics(step, self.monitor.last_measurements, self.monitor.last_diagnosis)
        should_log = control.should_log  # on_log clears it: the Trainer's own logs of this step must still come
        try:  # the base class's log: report_to's callbacks and log_history, not a subclass's extras
            transformers.Trainer.log(self.trainer, {**metrics.scalars, FINDINGS_TAG: metrics.text})
        except Exception as error:
            _warn(f"step {step} could not be logged through the Trainer: {type(error).__name__}: {error}")
        finally:
            control.should_log = self.trainer.control.should_log = should_log


# ---------------------------------------------------------------------- the held-out set

def as_token_data(data: Any) -> Dataset:
    """The held-out set as a :class:`~kddiag.inputs.Dataset` of :class:`~kddiag.inputs.TokenInputs`.

    ``data``: a ``Dataset`` read by :func:`kddiag.readers.text.load_text_dataset`; or tokenized columns
    ``input_ids`` (n_sequences, length), optional ``attention_mask`` and ``labels`` (``label`` also read)
    as a dict or ``BatchEncoding``, a Hugging Face ``datasets.Dataset`` or a list of tokenized examples
    (dicts). Rows of different lengths are right-padded. ``labels`` of one class id per sequence make a
    sequence-classification set; ``labels`` aligned with ``input_ids`` (-100 ignored; the model shifts
    them), or none, a causal-LM set whose examples are the target tokens.
    """
    from kddiag.readers.text import CAUSAL_LM_TASK, SEQUENCE_CLASSIFICATION_TASK, _from_columns

    if isinstance(data, Dataset):
        if not isinstance(data.x, TokenInputs):
            raise KddiagError(f"data: the Dataset '{data.name}' holds no token inputs (input_ids); read text with "
                              f"kddiag.readers.text.load_text_dataset, or give tokenized columns")
        return data
    columns = _columns(data)
    labels = columns.pop("label", None)
    if "labels" not in columns and labels is not None:
        columns["labels"] = labels
    per_token = "labels" not in columns or _per_token(columns["labels"])
    return _from_columns(columns, name=MONITOR_DATA, where="data", task=CAUSAL_LM_TASK if per_token else
                         SEQUENCE_CLASSIFICATION_TASK, tokenizer_dir=None, max_length=None, format="tokens",
                         trust_remote_code=False, ragged_ok=True)


def _columns(data: Any) -> dict:
    """The token columns of a mapping, a ``datasets.Dataset`` or a list of examples."""
    if isinstance(data, Mapping):
        return {key: data[key] for key in TOKEN_COLUMNS if key in data}
    names = getattr(data, "column_names", None)
    if isinstance(names, (list, tuple)):  # a Hugging Face datasets.Dataset
        return {key: list(data[key]) for key in TOKEN_COLUMNS if key in names}
    if isinstance(data, (list, tuple)) and data and all(isinstance(row, Mapping) for row in data):
        keys = [key for key in TOKEN_COLUMNS if key in data[0]]
        missing = next(((i, key) for i, row in enumerate(data) for key in keys if key not in row), None)
        if missing is not None:
            raise KddiagError(f"data: example {missing[0]} has no '{missing[1]}', which example 0 has; every "
                              f"example needs the same keys")
        return {key: [row[key] for row in data] for key in keys}
    kind = f"an empty {type(data).__name__}" if isinstance(data, (list, tuple)) and not data else type(data).__name__
    raise KddiagError(f"data: expected tokenized text: a dict or BatchEncoding of 'input_ids' (and 'attention_mask', "
                      f"'labels'), a datasets.Dataset, a list of tokenized examples, or a kddiag Dataset of "
                      f"TokenInputs; got {kind}")


def _per_token(labels: Any) -> bool:
    """Whether ``labels`` hold one value per token (rows), not one class id per sequence."""
    if not isinstance(labels, (list, tuple)):  # one tensor or array of every row
        return (labels.ndim if hasattr(labels, "ndim") else np.ndim(labels)) >= 2
    first = labels[0] if labels else 0
    return (first.ndim if hasattr(first, "ndim") else np.ndim(first)) >= 1


# ---------------------------------------------------------------------- the models

def _teacher(teacher: Any, causal_lm: bool) -> Any:
    """The teacher as the Monitor runs it: a folder loaded safely, a transformers model behind its adapter."""
    import torch

    from kddiag.loading.hf import CAUSAL_LM, load_hf_model

    if isinstance(teacher, (str, os.PathLike)):
        loaded = load_hf_model(teacher, role="teacher")
        if (loaded.format == CAUSAL_LM) != causal_lm:
            kind = "a causal language model" if loaded.format == CAUSAL_LM else "a sequence classifier"
            data = ("a language-model set (labels per token)" if causal_lm
                    else "a classification set (one label per sequence)")
            raise KddiagError(f"teacher checkpoint '{teacher}' is {kind} but the data is {data}")
        return loaded
    if isinstance(teacher, LoadedModel):
        return teacher
    if not isinstance(teacher, torch.nn.Module):
        raise KddiagError(f"teacher: expected a transformers model, a save_pretrained folder or an nn.Module; got "
                          f"{type(teacher).__name__}")
    return _adapted(teacher, causal_lm, "teacher")


def _adapted(model: Any, causal_lm: bool, who: str) -> Any:
    """A ``transformers`` model behind kddiag's adapter for the task (a causal LM checked on a probe first);
    any other module as it is."""
    from kddiag.loading.hf import CausalLMAdapter, SequenceClassifierAdapter, _check_causal_lm

    if not isinstance(model, transformers.PreTrainedModel):
        return model
    if not causal_lm:
        return SequenceClassifierAdapter(model)
    try:
        adapter = CausalLMAdapter(model)
    except KddiagError as error:
        raise KddiagError(f"{who}: {error}") from None
    # the probe compares the adapter with the model's own forward: without dropout, and with the class's
    # forward rather than a mixed-precision wrapper set on the instance (accelerate's autocast under bf16)
    modes = [(module, module.training) for module in model.modules()]
    wrapper = model.__dict__.pop("forward", None)
    model.eval()
    try:
        _check_causal_lm(adapter, who)
    finally:
        for module, training in modes:
            module.training = training
        if wrapper is not None:
            model.forward = wrapper
    return adapter


def _warn(message: str) -> None:
    """One line, whatever the error said."""
    warnings.warn(f"kddiag: {' '.join(message.split())}", RuntimeWarning, stacklevel=3)
