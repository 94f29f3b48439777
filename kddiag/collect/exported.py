"""``torch.export`` programs (and fx graphs of aten operations): features by graph surgery.

The graph is copied with the input of the last ``aten.linear`` node whose weight has one row per
class (or of the module named by ``feature_layer``) added as an extra output. Programs exported for a
fixed batch size get batches of exactly that size (the last one padded, the padding dropped).
"""
from __future__ import annotations

from typing import Any

import torch
from torch.utils import _pytree

from kddiag.collect._runner import Runner, weight_array
from kddiag.errors import KddiagError


class GraphRunner(Runner):
    """Runs an exported program; best effort: when no logit layer is found, features (maybe weight) are None."""

    sets_eval_mode = False  # exported programs are already in inference form and refuse eval()

    def _wire(self, probe_x: Any, feature_layer: str | None) -> None:
        """Copy the graph with the final linear layer's input as an extra output."""
        self._fixed_batch = _static_batch_size(self.module)
        n_classes = self._probe(probe_x).shape[1]
        self.has_features = False
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
            self.weight = weight_array(weight)
        try:
            self._forward, self.has_features = _graph_with_output(self.module, node), True
            if self._call(probe_x)[1] is None:
                raise ValueError("the extra output is not (n_samples, n_features)")
        except Exception:
            self._forward, self.has_features = self._plain, False


def _graph_feature_node(module: Any, n_classes: int, feature_layer: str | None):
    """The graph node whose value is the penultimate feature, and the logit-layer weight (or None)."""
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
    if not isinstance(node, torch.fx.Node) or node.op != "get_attr":
        return None
    value = module
    for part in str(node.target).split("."):
        value = getattr(value, part, None)
    return value if isinstance(value, torch.Tensor) else None


def _graph_with_output(module: Any, feature_node: Any):
    """A copy of the graph module that also returns ``feature_node``'s value; its outputs re-nested."""
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
