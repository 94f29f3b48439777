"""Run teacher, student (and baseline) over one data set and keep what the metrics need.

One batched pass, each model in ``eval()`` under ``torch.inference_mode()``. Per model it keeps the
logits, the penultimate features (the input of the final linear layer) and that layer's weight:

- ``nn.Module``: a forward pre-hook on the last ``nn.Linear`` (in call order) whose ``out_features``
  equals the number of classes, or on the module named by ``feature_layer`` (its input, flattened).
  A one-row probe run first finds the class count and the call order.
- ``torch.export`` programs: the graph is copied with the input of the last ``aten.linear`` node whose
  weight has one row per class added as an extra output; programs exported for a fixed batch size
  get batches of exactly that size (the last one padded, the padding dropped).
- TorchScript: the weight is the last 2-D parameter with one row per class; no features.
- logits mode: the stored logits; no features, no weight.
"""
from __future__ import annotations

import sys
from typing import Any

import numpy as np

from kddiag.errors import KddiagError
from kddiag.loading import logits_of
from kddiag.metrics._common import subsample_indices
from kddiag.types import EVAL, Dataset, LoadedModel, ModelOutputs, SetOutputs

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
    runners: dict[str, _Runner] = {}
    for role, model in models.items():
        if model.format == "logits":
            outputs[role] = _stored_outputs(role, model, set_name, labels, dataset.name)
        elif model.module is None:
            raise KddiagError(f"{role} '{model.source}': has neither a module nor logits")
        else:
            runners[role] = _Runner(role, model, exported=model.format == "torch.export")
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


def _stored_outputs(role: str, model: LoadedModel, set_name: str, labels: np.ndarray, data_name: str) -> ModelOutputs:
    """The logits a logits-mode model holds for ``set_name``; labels stored beside them must match the data's."""
    where = f"{role} logits '{model.source}'"
    logits = (model.logits or {}).get(set_name)
    if logits is None:
        held = ", ".join(model.logits or {}) or "none"
        raise KddiagError(f"{where}: no {set_name} logits (holds: {held}); save them under "
                          f"'{'logits' if set_name == EVAL else 'transfer'}'")
    stored = (model.labels or {}).get(set_name)
    if stored is not None and len(stored) == len(labels) and not np.array_equal(stored, labels):
        raise KddiagError(f"{where}: its {set_name} labels disagree with data '{data_name}' on "
                          f"{int((stored != labels).sum())} of {len(labels)} rows; rows must follow the data's order")
    return ModelOutputs(logits=logits, role=role, source=model.source)  # checks shape and finiteness


class _Runner:
    """Runs one module batch by batch, keeping logits and (when found) penultimate features."""

    def __init__(self, role: str, model: LoadedModel, *, exported: bool):
        import torch

        module = model.module
        self.role, self.module = role, module
        self.source = None if model.format == "module" else model.source  # named in errors
        # a torch.export program, or an fx graph of aten operations (no nn.Linear left to hook)
        self.exported = exported or (isinstance(module, torch.fx.GraphModule)
                                     and not any(isinstance(m, torch.nn.Linear) for m in module.modules()))
        self.scripted = isinstance(module, torch.jit.ScriptModule)
        self.logits: list = []
        self.features: list | None = []
        self.weight: np.ndarray | None = None
        self._forward = self._plain  # what _call() runs: returns (output, features or None)
        self._captured: Any = None
        self._hooks: list = []
        self._was_training: bool | None = None
        self._fixed_batch: int | None = None
        self.device: Any = None
        self.float_dtype: Any = None

    # --- setup --------------------------------------------------------------------------------
    def start(self, probe_x: Any, *, device: str, feature_layer: str | None) -> None:
        """Move to ``device``, switch to eval mode, probe one row and wire the feature capture."""
        import torch

        self.device = torch.device(device)
        try:
            self.module.to(self.device)
        except Exception as error:
            raise KddiagError(f"{self.role}: cannot move the model to {device} ({_one_line(error)})") from None
        if not self.exported:
            self._was_training = self.module.training
            self.module.eval()
        params = [p for p in self.module.parameters() if p.is_floating_point()]
        self.float_dtype = params[0].dtype if params else torch.float32
        if self.exported:
            self._fixed_batch = _static_batch_size(self.module)
        if self.scripted:
            n_classes = self._probe(probe_x).shape[1]
            self.weight = _last_matrix(self.module, n_classes)
            self.features = None
        elif self.exported:
            n_classes = self._probe(probe_x).shape[1]
            self._wire_graph(probe_x, n_classes, feature_layer)
        else:
            self._wire_hooks(probe_x, feature_layer)

    def _wire_hooks(self, probe_x: Any, feature_layer: str | None) -> None:
        """Find the final linear layer from the probe's call order and hook its input."""
        import torch

        calls: list[tuple[str, Any, Any]] = []
        linears = [(name, m) for name, m in self.module.named_modules() if isinstance(m, torch.nn.Linear)]
        hooks = [m.register_forward_pre_hook(
            lambda mod, args, name=name: calls.append((name, mod, args[0] if args else None)))
            for name, m in linears]
        try:
            n_classes = self._probe(probe_x).shape[1]
        finally:
            for hook in hooks:
                hook.remove()
        final = next((mod for name, mod, x in reversed(calls)
                      if mod.out_features == n_classes and isinstance(x, torch.Tensor)
                      and x.ndim == 2 and x.shape[0] == len(probe_x)), None)
        target = final
        if feature_layer is not None:
            named = dict(self.module.named_modules())
            if feature_layer not in named:
                shown = ", ".join(name for name, _ in linears[-4:]) or "none"
                raise KddiagError(f"--feature-layer '{feature_layer}': the {self.role} has no module of that "
                                  f"name (its last linear layers: {shown})")
            target = named[feature_layer]
            if isinstance(target, torch.nn.Linear) and target.out_features == n_classes:
                final = target
        if final is not None:
            self.weight = final.weight.detach().to("cpu", torch.float64).numpy().copy()
        if target is None:
            self.features = None
            return
        self._hooks.append(target.register_forward_pre_hook(self._capture))

    def _capture(self, module: Any, args: tuple) -> None:
        self._captured = args[0] if args else None

    def _wire_graph(self, probe_x: Any, n_classes: int, feature_layer: str | None) -> None:
        """torch.export program: copy the graph with the final linear layer's input as an extra output.

        Best effort: when no such layer is found or the copy fails, features (and maybe weight) are None.
        """
        self.features = None
        try:
            found = _graph_feature_node(self.module, n_classes, feature_layer)
        except KddiagError:
            raise
        except Exception:
            found = None
        if found is None:
            return
        node, weight = found
        if weight is not None:
            self.weight = weight.detach().to("cpu", _torch().float64).numpy().copy()
        try:
            self._forward, self.features = _graph_with_output(self.module, node), []
            if self._call(probe_x)[1] is None:
                raise ValueError("the extra output is not (n_samples, n_features)")
        except Exception:
            self._forward, self.features = self._plain, None

    def _plain(self, x: Any) -> tuple[Any, Any]:
        self._captured = None
        output = self.module(x)
        return output, self._captured

    def _probe(self, x: Any):
        output, _ = self._call(x)
        return output

    # --- running ------------------------------------------------------------------------------
    def run(self, batch: Any, kept: np.ndarray) -> None:
        """One batch; keeps the features of the rows ``kept`` (indices into the batch)."""
        logits, features = self._call(batch)
        self.logits.append(logits.to("cpu", dtype=_torch().float64))
        if self.features is not None:
            if features is None:
                self.features = None
            else:
                self.features.append(features[_torch().as_tensor(kept, device=features.device)]
                                     .to("cpu", dtype=_torch().float32))

    def _call(self, batch: Any) -> tuple[Any, Any]:
        """Logits (n, C) and features (n, D) or None for one batch, padding to a fixed batch size."""
        torch = _torch()
        x = batch.to(self.device, dtype=self.float_dtype) if batch.is_floating_point() else batch.to(self.device)
        n = len(x)
        pieces = [x] if self._fixed_batch is None else _fixed_chunks(x, self._fixed_batch)
        logits, features = [], []
        for piece in pieces:
            try:
                output, feats = self._forward(piece)
                out = logits_of(output)
            except KddiagError as error:
                raise KddiagError(f"{self.role}: {error}") from None
            except Exception as error:
                raise KddiagError(f"{self.role} failed on inputs of shape {tuple(piece.shape)} ({piece.dtype}): "
                                  f"{type(error).__name__}: {_one_line(error)}") from None
            if out.ndim != 2 or out.shape[0] != len(piece):
                raise KddiagError(f"{self.role} returned outputs of shape {tuple(out.shape)} for {len(piece)} "
                                  f"inputs; expected logits of shape (n_samples, n_classes) = ({len(piece)}, C)")
            logits.append(out)
            usable = isinstance(feats, torch.Tensor) and feats.ndim >= 2 and feats.shape[0] == len(piece)
            features.append(feats.flatten(1) if usable else None)
        out = (torch.cat(logits) if len(logits) > 1 else logits[0])[:n]  # [:n] drops the padding
        if self.logits and out.shape[1] != self.logits[0].shape[1]:
            raise KddiagError(f"{self.role} returned {out.shape[1]} classes on one batch and "
                              f"{self.logits[0].shape[1]} on another")
        if any(f is None for f in features):
            return out, None
        return out, (torch.cat(features) if len(features) > 1 else features[0])[:n]

    def outputs(self, feature_rows: np.ndarray) -> ModelOutputs:
        torch = _torch()
        logits = torch.cat(self.logits).numpy()
        if not self.features:
            return ModelOutputs(logits=logits, weight=self.weight, role=self.role, source=self.source)
        return ModelOutputs(logits=logits, features=torch.cat(self.features).numpy(), weight=self.weight,
                            feature_rows=None if len(feature_rows) == len(logits) else feature_rows,
                            role=self.role, source=self.source)

    def finish(self) -> None:
        """Remove hooks and restore the module's training mode."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        if self._was_training:
            self.module.train()


def _graph_feature_node(module: Any, n_classes: int, feature_layer: str | None):
    """The graph node whose value is the penultimate feature, and the logit-layer weight (or None)."""
    torch = _torch()
    linear = torch.ops.aten.linear.default
    if feature_layer is not None:
        for node in module.graph.nodes:
            stack = node.meta.get("nn_module_stack") or {}
            if node.op == "call_function" and any(path == feature_layer for path, _ in stack.values()):
                source = next((a for a in node.args if isinstance(a, torch.fx.Node) and a.op != "get_attr"), None)
                if source is None:
                    break
                weight = _graph_attr(module, node.args[1]) if node.target is linear else None
                fits = weight is not None and weight.ndim == 2 and weight.shape[0] == n_classes
                return source, (weight if fits else None)
        raise KddiagError(f"--feature-layer '{feature_layer}': no operation of that module in the exported program")
    found = None
    for node in module.graph.nodes:
        if node.op == "call_function" and node.target is linear and len(node.args) >= 2:
            weight = _graph_attr(module, node.args[1])
            if weight is not None and weight.ndim == 2 and weight.shape[0] == n_classes:
                found = (node.args[0], weight)
    return found


def _graph_attr(module: Any, node: Any):
    """The tensor behind a ``get_attr`` node, or None."""
    torch = _torch()
    if not isinstance(node, torch.fx.Node) or node.op != "get_attr":
        return None
    value = module
    for part in str(node.target).split("."):
        value = getattr(value, part, None)
    return value if isinstance(value, torch.Tensor) else None


def _graph_with_output(module: Any, feature_node: Any):
    """A copy of the graph module that also returns ``feature_node``'s value; its outputs re-nested."""
    torch = _torch()
    from torch.utils import _pytree

    graph = torch.fx.Graph()
    mapping: dict = {}
    flat_out = graph.graph_copy(module.graph, mapping)
    graph.output((flat_out, mapping[feature_node]))
    copy = torch.fx.GraphModule(module, graph)
    codegen = module.graph._codegen
    out_spec = getattr(getattr(codegen, "pytree_info", None), "out_spec", None)

    def forward(x: Any) -> tuple[Any, Any]:
        flat, features = copy(x)
        if out_spec is not None:
            return _pytree.tree_unflatten(list(flat) if isinstance(flat, (tuple, list)) else [flat], out_spec), features
        return flat, features

    return forward


def _static_batch_size(module: Any) -> int | None:
    """The batch size an exported program was traced for, when it is fixed; None when dynamic."""
    for node in module.graph.nodes:
        if node.op == "placeholder":
            value = node.meta.get("val")
            shape = getattr(value, "shape", None)
            if shape is not None and len(shape) > 0 and type(shape[0]) is int:
                return shape[0]
            return None
    return None


def _fixed_chunks(x: Any, size: int) -> list:
    """``x`` cut into chunks of exactly ``size`` rows, the last padded by repeating its final row."""
    torch = _torch()
    chunks = list(torch.split(x, size))
    last = chunks[-1]
    if len(last) < size:
        chunks[-1] = torch.cat([last, last[-1:].expand(size - len(last), *last.shape[1:])])
    return chunks


def _last_matrix(module: Any, n_classes: int) -> np.ndarray | None:
    """The last 2-D parameter with one row per class (the logit layer of a TorchScript model)."""
    torch = _torch()
    for _, parameter in reversed(list(module.named_parameters())):
        if parameter.ndim == 2 and parameter.shape[0] == n_classes:
            return parameter.detach().to("cpu", torch.float64).numpy().copy()
    return None


def _torch():
    import torch

    return torch


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return (text[:240] + "…") if len(text) > 240 else text or type(error).__name__
