"""Run teacher, student (and baseline) over one data set and keep what the metrics need.

One batched pass, each model in ``eval()`` under ``torch.inference_mode()``. Per model it keeps the
logits, the penultimate features (the input of the final linear layer) and that layer's weight, with
one strategy per kind of model:

- ``nn.Module`` (:mod:`.modules`): a forward pre-hook on the last ``nn.Linear`` (in call order) whose
  ``out_features`` equals the number of classes, or on the module named by ``feature_layer``.
- ``torch.export`` programs (:mod:`.exported`): the graph copied with the final linear layer's input
  as an extra output; fixed-batch programs get batches of exactly their size.
- TorchScript (:mod:`.scripted`): the weight is the last 2-D parameter with one row per class; no features.
- logits mode (:mod:`.stored`): the stored logits; no features, no weight.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterator, NamedTuple

import numpy as np

from kddiag.accumulate import SetAccumulator, chunk_rows, kept_classes, row_sample
from kddiag.checks import check_finite_examples
from kddiag.collect.stored import release, stored_logits
from kddiag.errors import KddiagError
from kddiag.inputs import Dataset, LoadedModel, TokenInputs
from kddiag.outputs import Batch, ModelOutputs, SetOutputs, output_name
from kddiag.progress import Progress
from kddiag.types import EVAL, TRANSFER

if TYPE_CHECKING:
    from kddiag.collect._runner import Runner

LOGITS_ON_CPU_DEVICE = False  # True: CPU tensors take the accelerator's path too (tests run it end to end)

__all__ = ["collect_outputs", "collect_summary", "collect_summaries", "model_batches", "outputs_in_memory"]


def collect_summary(dataset: Dataset, *, teacher: LoadedModel, student: LoadedModel | None,
                    baseline: LoadedModel | None = None, set_name: str, temperature: float, alpha: float,
                    rows: range | None = None, batch_size: int = 512, device: str | None = None,
                    feature_layer: str | None = None, progress: bool | str = False) -> SetAccumulator | None:
    """Every model over ``dataset`` (or its examples ``rows``, one shard), batch by batch, into a
    :class:`~kddiag.accumulate.SetAccumulator`: nothing of size (n_samples, n_classes) is kept.

    The accumulator's class subset comes from the whole set's labels, so the shards of one set merge.
    An empty shard gives None. See :func:`collect_outputs` for the other arguments.
    """
    return collect_summaries(dataset, teacher=teacher, students=(student,), baseline=baseline, set_name=set_name,
                             settings=((temperature, alpha),), rows=rows, batch_size=batch_size, device=device,
                             feature_layer=feature_layer, progress=progress)[0]


def collect_summaries(dataset: Dataset, *, teacher: LoadedModel, students: tuple[LoadedModel | None, ...],
                      baseline: LoadedModel | None = None, set_name: str, settings: tuple[tuple[float, float], ...],
                      rows: range | None = None, batch_size: int = 512, device: str | None = None,
                      feature_layer: str | None = None, progress: bool | str = False,
                      strata: dict[str, np.ndarray] | None = None,
                      logits_on_device: bool | None = None) -> list[SetAccumulator | None]:
    """One accumulator per student of one teacher (as :func:`collect_summary`), over one pass in which the
    teacher and the baseline run once per batch; ``settings``: each student's (temperature, alpha). A
    student None is a teacher-only check. ``strata``: name -> every example's bucket (token data,
    :mod:`kddiag.metrics.strata`), summed per bucket. ``logits_on_device``: see :func:`model_batches`."""
    strata = strata or {}
    models = {"teacher": teacher, **{f"student:{k}": s for k, s in enumerate(students) if s is not None}}
    if baseline is not None:
        models["baseline"] = baseline
    pairs = [{role: key for role, key in (("teacher", "teacher"), ("student", f"student:{k}"), ("baseline", "baseline"))
              if key in models} for k in range(len(students))]  # per student: role -> model key
    sources = {key: None if model.format == "module" else model.source for key, model in models.items()}
    accumulators: list[SetAccumulator | None] = [None] * len(students)
    runners = {}
    for part, runners in model_batches(dataset, models, set_name=set_name, rows=rows, batch_size=batch_size,
                                       device=device, feature_layer=feature_layer, progress=progress,
                                       logits_on_device=logits_on_device):
        for k, pair in enumerate(pairs):
            batch = Batch(part.start, part.labels, {role: part.logits[key] for role, key in pair.items()},
                          {role: part.features[key] for role, key in pair.items() if key in part.features},
                          {role: sources[key] for role, key in pair.items()}, set_name, dataset.name,
                          {name: bucket[part.start:part.start + part.labels.size] for name, bucket in strata.items()})
            if accumulators[k] is None:
                temperature, alpha = settings[k]
                accumulators[k] = SetAccumulator(
                    set_name, n_classes=batch.n_classes, roles=tuple(batch.logits), temperature=temperature,
                    alpha=alpha, kept=kept_classes(np.bincount(dataset.labels, minlength=batch.n_classes)),
                    n_total=len(dataset.labels))
            accumulators[k].update(batch)
    for accumulator, pair in zip(accumulators, pairs):
        if accumulator is not None:
            accumulator.weights = {role: runners[key].weight for role, key in pair.items()
                                   if key in runners and runners[key].weight is not None}
    return accumulators


def collect_outputs(dataset: Dataset, *, teacher: LoadedModel, student: LoadedModel | None,
                    baseline: LoadedModel | None = None, set_name: str, batch_size: int = 512,
                    device: str | None = None, feature_layer: str | None = None,
                    progress: bool | str = False) -> SetOutputs:
    """Logits, penultimate features and logit-layer weights of every model on ``dataset``, in memory.

    ``set_name`` is 'eval' or 'transfer' (it also picks the stored logits in logits mode);
    ``batch_size`` >= 1 (:class:`~kddiag.options.InspectOptions` checks it); ``device`` None means CUDA
    when available, else CPU; ``progress``: how batches are shown on stderr, a mode of
    :data:`kddiag.progress.MODES` (True: 'auto', False: 'none'). Features are kept for the rows
    the measurements read (:func:`~kddiag.accumulate.row_sample`). The returned
    :class:`~kddiag.outputs.SetOutputs` checks the outputs' shapes, finiteness and the labels.

    >>> outputs = collect_outputs(load_dataset("digits"), teacher=t, student=s, set_name="eval")
    >>> outputs.teacher.logits.shape
    (540, 10)
    """
    models = {role: model for role, model in (("teacher", teacher), ("student", student), ("baseline", baseline))
              if model is not None}
    outputs = outputs_in_memory(dataset, models, set_name=set_name, batch_size=batch_size, device=device,
                                feature_layer=feature_layer, progress=progress)
    return SetOutputs(dataset=set_name, labels=dataset.labels, teacher=outputs["teacher"], student=outputs.get("student"),
                      baseline=outputs.get("baseline"), source=dataset.name)


def outputs_in_memory(dataset: Dataset, models: dict[str, LoadedModel], *, set_name: str, batch_size: int = 512,
                      device: str | None = None, feature_layer: str | None = None,
                      progress: bool | str = False) -> dict[str, ModelOutputs]:
    """Every model's outputs on the whole of ``dataset``, by key as in :func:`model_batches`: logits, the
    penultimate features of the rows the measurements read (:func:`~kddiag.accumulate.row_sample`), the
    logit-layer weight."""
    logits: dict[str, list] = {}
    features: dict[str, list] = {}
    kept, runners = None, {}
    for part, runners in model_batches(dataset, models, set_name=set_name, batch_size=batch_size, device=device,
                                       feature_layer=feature_layer, progress=progress, logits_on_device=False):
        if kept is None:
            kept = row_sample(len(dataset.labels), next(iter(part.logits.values())).shape[1])
        lo, hi = np.searchsorted(kept, (part.start, part.start + part.labels.size))
        for key, value in part.logits.items():
            source = None if models[key].format == "module" else models[key].source
            check_finite_examples(value, output_name(key.split(":")[0], "logits", set_name, source), part.start)
            logits.setdefault(key, []).append(value)
        for key, value in part.features.items():
            features.setdefault(key, []).append(value[kept[lo:hi] - part.start])
    outputs = {}
    for key, parts in logits.items():
        model, runner = models[key], runners.get(key)
        extra = {}
        if key in features and runner is not None and runner.has_features:
            extra = {"features": np.concatenate(features[key]),
                     "feature_rows": None if kept.size == len(dataset.labels) else kept}
        outputs[key] = ModelOutputs(logits=np.concatenate(parts), weight=None if runner is None else runner.weight,
                                    role=key.split(":")[0], source=None if model.format == "module" else model.source,
                                    **extra)
    return outputs


class Outputs(NamedTuple):
    """The outputs of every model on examples ``start``, ``start + 1``, … of one batch, by model key."""

    start: int
    labels: np.ndarray
    logits: dict[str, np.ndarray]
    features: dict[str, np.ndarray]


def model_batches(dataset: Dataset, models: dict[str, LoadedModel], *, set_name: str, rows: range | None = None,
                  batch_size: int = 512, device: str | None = None, feature_layer: str | None = None,
                  progress: bool | str = False,
                  logits_on_device: bool | None = None) -> Iterator[tuple[Outputs, dict[str, "Runner"]]]:
    """Every model of ``models`` (key -> model; a key's role, named in errors, is its part before ':', e.g.
    'student:2') over ``rows`` of ``dataset``, batch by batch, each model run once per batch.

    ``logits_on_device``: the models' logits stay tensors where they were computed, for the statistics
    to run there (default: on an accelerator, not on the CPU, where numpy's pass measures faster);
    else they come as numpy arrays. Stored logits are numpy arrays either way."""
    import torch

    if set_name not in (EVAL, TRANSFER):
        raise KddiagError(f"a data set must be '{EVAL}' or '{TRANSFER}'; got {set_name!r}")
    labels = dataset.labels
    rows = range(len(labels)) if rows is None else rows
    stored: dict[str, np.ndarray] = {}
    runners: dict[str, Runner] = {}
    for key, model in models.items():
        role = key.split(":")[0]
        if model.format == "logits":
            stored[key] = stored_logits(role, model, set_name, labels, dataset.name)
        elif model.module is None:
            raise KddiagError(f"{role} '{model.source}': has neither a module nor logits")
        else:
            runners[key] = _runner_for(role, model)
    x = None
    if runners:
        if dataset.x is None:
            roles = list(dict.fromkeys(key.split(":")[0] for key in runners))
            verb = "is a model and needs" if len(runners) == 1 else "are models and need"
            raise KddiagError(f"data '{dataset.name}' has labels only, but the {' and '.join(roles)} "
                              f"{verb} inputs 'x'")
        x = dataset.x
        if not isinstance(x, (torch.Tensor, TokenInputs)):
            x = torch.as_tensor(np.asarray(x))
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if logits_on_device is None:
        logits_on_device = bool(runners) and (torch.device(device).type != "cpu" or LOGITS_ON_CPU_DEVICE)
    on_device = bool(logits_on_device)
    meter = None
    try:
        with torch.inference_mode():
            for runner in runners.values():
                runner.start(_probe(x), device=device, feature_layer=feature_layer)
            spans = _batch_spans(x, rows, batch_size, runners, stored)
            meter = Progress(f"{set_name} set", len(spans), unit="batch", mode=progress)
            for start, stop, inputs, keep in spans:
                logits = {key: value[start:stop] for key, value in stored.items()}
                features = {}
                for key, runner in runners.items():
                    logits[key], found = runner.run(inputs, on_device=on_device)
                    logits[key] = logits[key][keep]
                    if found is not None:
                        features[key] = found[keep]
                yield Outputs(start, labels[start:stop], logits, features), runners
                for value in stored.values():  # rows of whole statistics chunks are done with
                    release(value, start - start % chunk_rows(value.shape[1]))
                meter.update()
    finally:
        if meter is not None:  # the bar's line ended, also when a model failed: the error starts a line
            meter.close()
        for runner in runners.values():
            runner.finish()


TOKEN_BATCH_ELEMENTS = 1 << 25  # a batch of token sequences gives at most about this many logits per model


def _spans(x, rows: range, batch_size: int, n_classes: int | None) -> list[tuple[int, int, object, slice]]:
    """The batches over the examples ``rows``: (first example, end, the inputs to run, the rows of the
    models' outputs that are these examples). Inputs of one example per row are cut in ``batch_size``
    rows; token sequences whose examples are target positions in ``batch_size`` sequences (fewer when
    their logits would pass TOKEN_BATCH_ELEMENTS), the sequences at a shard's edges run whole and the
    positions outside it dropped."""
    if not (isinstance(x, TokenInputs) and x.per_position):
        return [(start, min(start + batch_size, rows.stop), None if x is None else x[start:min(start + batch_size,
                 rows.stop)], slice(None)) for start in range(rows.start, rows.stop, batch_size)]
    offsets = x.example_offsets()
    first = int(np.searchsorted(offsets, rows.start, side="right")) - 1
    last = int(np.searchsorted(offsets, rows.stop, side="left"))  # sequences [first, last) hold the rows
    per_batch = max(1, min(batch_size, TOKEN_BATCH_ELEMENTS // max(1, x.input_ids.shape[1] * (n_classes or 1))))
    spans = []
    for a in range(max(first, 0), last, per_batch):
        b = min(a + per_batch, last)
        start, stop = max(int(offsets[a]), rows.start), min(int(offsets[b]), rows.stop)
        if stop > start:
            spans.append((start, stop, x[a:b], slice(start - int(offsets[a]), stop - int(offsets[a]))))
    return spans


def _batch_spans(x, rows: range, batch_size: int, runners: dict[str, "Runner"], stored: dict[str, np.ndarray]
                 ) -> list[tuple[int, int, object, slice]]:
    """The spans of :func:`_spans`; for stored logits alone, the streaming statistics' whole chunks, which
    they then read in place (batches that straddle a chunk are copied to be joined)."""
    if runners or not stored:
        return _spans(x, rows, batch_size, next(iter(runners.values())).n_classes if runners else None)
    return _chunk_spans(rows, chunk_rows(next(iter(stored.values())).shape[1]))


def _chunk_spans(rows: range, step: int) -> list[tuple[int, int, None, slice]]:
    """Batches of stored logits that end where the streaming statistics' chunks of ``step`` rows end."""
    ends = [*range(rows.start - rows.start % step + step, rows.stop, step), rows.stop]
    starts = [rows.start, *ends[:-1]]
    return [(start, stop, None, slice(None)) for start, stop in zip(starts, ends) if stop > start]


def _probe(x):
    """A one-example input for wiring the feature capture: a sequence with a target position, for tokens."""
    if isinstance(x, TokenInputs) and x.per_position:
        with_targets = np.flatnonzero(np.diff(x.example_offsets()) > 0)
        return x[int(with_targets[0]):int(with_targets[0]) + 1]
    return x[:1]


def _runner_for(role: str, model: LoadedModel) -> Runner:
    """The strategy that runs ``model``: TorchScript, an exported graph, or an ``nn.Module`` with hooks."""
    import torch

    from kddiag.collect.exported import GraphRunner
    from kddiag.collect.modules import HookRunner
    from kddiag.collect.scripted import ScriptRunner

    module = model.module
    if isinstance(module, torch.jit.ScriptModule):
        return ScriptRunner(role, model)
    # a torch.export program, or an fx graph of aten operations (no nn.Linear left to hook)
    if model.format == "torch.export" or (isinstance(module, torch.fx.GraphModule)
                                          and not any(isinstance(m, torch.nn.Linear) for m in module.modules())):
        return GraphRunner(role, model)
    return HookRunner(role, model)
