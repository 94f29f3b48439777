"""TorchScript models: no hooks to place, so no features; the weight is the last matrix with one row per class."""
from __future__ import annotations

from typing import Any

import numpy as np

from kddiag.collect._runner import Runner, weight_array


class ScriptRunner(Runner):
    """Runs a TorchScript module; keeps its logits and logit-layer weight."""

    def _wire(self, probe_x: Any, feature_layer: str | None) -> None:
        n_classes = self._probe(probe_x).shape[1]
        self.weight = _last_matrix(self.module, n_classes)
        self.has_features = False


def _last_matrix(module: Any, n_classes: int) -> np.ndarray | None:
    """The last 2-D parameter with one row per class (the logit layer of a TorchScript model)."""
    for _, parameter in reversed(list(module.named_parameters())):
        if parameter.ndim == 2 and parameter.shape[0] == n_classes:
            return weight_array(parameter)
    return None
