"""``nn.Module`` models: a forward pre-hook on the final linear layer captures the penultimate features.

The final layer is the last ``nn.Linear`` (in call order, from a one-row probe) whose ``out_features``
equals the number of classes; ``feature_layer`` names another module whose (flattened) input to take.
"""
from __future__ import annotations

from typing import Any

import torch

from kddiag.collect._runner import Runner, weight_array
from kddiag.errors import KddiagError
from kddiag.inputs import LoadedModel, n_examples_of


class HookRunner(Runner):
    """Runs an ``nn.Module`` with a pre-hook on the final linear layer (or on ``feature_layer``)."""

    def __init__(self, role: str, model: LoadedModel):
        super().__init__(role, model)
        self._captured: Any = None
        self._hooks: list = []

    def _wire(self, probe_x: Any, feature_layer: str | None) -> None:
        """Find the final linear layer from the probe's call order and hook its input."""
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
                      and x.ndim == 2 and x.shape[0] == n_examples_of(probe_x)), None)
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
            self.weight = weight_array(final.weight)
        if target is None:
            self.has_features = False
            return
        self._hooks.append(target.register_forward_pre_hook(self._capture))

    def _capture(self, module: Any, args: tuple) -> None:
        self._captured = args[0] if args else None

    def _plain(self, x: Any) -> tuple[Any, Any]:
        self._captured = None
        output = self.module(x)
        return output, self._captured

    def finish(self) -> None:
        """Remove the hook and restore the module's training mode."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        super().finish()
