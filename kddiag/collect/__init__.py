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

import sys
from typing import TYPE_CHECKING

import numpy as np

from kddiag.collect.stored import stored_outputs
from kddiag.errors import KddiagError
from kddiag.metrics._common import subsample_indices
from kddiag.types import Dataset, LoadedModel, ModelOutputs, SetOutputs

if TYPE_CHECKING:
    from kddiag.collect._runner import Runner

# Penultimate features are kept for a fixed-seed subsample of at most this many examples: every
# measurement that reads them (linear CKA, k-NN difficulty) reads at most that many, and memory stays
# bounded on large transfer sets (a million examples of 2,048 features would take 8 GB).
FEATURE_MAX_ROWS = 5_000

__all__ = ["collect_outputs"]


def collect_outputs(dataset: Dataset, *, teacher: LoadedModel, student: LoadedModel,
                    baseline: LoadedModel | None = None, set_name: str, batch_size: int = 512,
                    device: str | None = None, feature_layer: str | None = None,
                    progress: bool = False) -> SetOutputs:
    """Logits, penultimate features and logit-layer weights of every model on ``dataset``.

    ``set_name`` is 'eval' or 'transfer' (it also picks the stored logits in logits mode);
    ``batch_size`` >= 1 (:class:`~kddiag.types.InspectOptions` checks it); ``device`` None means CUDA
    when available, else CPU; ``progress`` prints batches to stderr. The returned
    :class:`~kddiag.types.SetOutputs` checks the outputs' shapes, finiteness and the labels.

    >>> outputs = collect_outputs(load_dataset("digits"), teacher=t, student=s, set_name="eval")
    >>> outputs.teacher.logits.shape
    (540, 10)
    """
    import torch

    labels = dataset.labels
    models = {"teacher": teacher, "student": student}
    if baseline is not None:
        models["baseline"] = baseline
    outputs: dict[str, ModelOutputs] = {}
    runners: dict[str, Runner] = {}
    for role, model in models.items():
        if model.format == "logits":
            outputs[role] = stored_outputs(role, model, set_name, labels, dataset.name)
        elif model.module is None:
            raise KddiagError(f"{role} '{model.source}': has neither a module nor logits")
        else:
            runners[role] = _runner_for(role, model)
    if runners:
        if dataset.x is None:
            verb = "is a model and needs" if len(runners) == 1 else "are models and need"
            raise KddiagError(f"data '{dataset.name}' has labels only, but the {' and '.join(runners)} "
                              f"{verb} inputs 'x'")
        x = dataset.x if isinstance(dataset.x, torch.Tensor) else torch.as_tensor(np.asarray(dataset.x))
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            with torch.inference_mode():
                for runner in runners.values():
                    runner.start(x[:1], device=device, feature_layer=feature_layer)
                feature_rows = subsample_indices(len(labels), FEATURE_MAX_ROWS)
                n_batches = -(-len(labels) // batch_size)
                for index in range(n_batches):
                    start = index * batch_size
                    batch = x[start:start + batch_size]
                    lo, hi = np.searchsorted(feature_rows, (start, start + len(batch)))
                    kept = feature_rows[lo:hi] - start  # the batch's rows whose features are kept
                    for runner in runners.values():
                        runner.run(batch, kept)
                    if progress:
                        print(f"\rkddiag: {set_name} set, batch {index + 1}/{n_batches}", end="", file=sys.stderr)
                if progress:
                    print(file=sys.stderr)
        finally:
            for runner in runners.values():
                runner.finish()
        outputs.update({role: runner.outputs(feature_rows) for role, runner in runners.items()})
    return SetOutputs(dataset=set_name, labels=labels, teacher=outputs["teacher"], student=outputs["student"],
                      baseline=outputs.get("baseline"), source=dataset.name)


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
