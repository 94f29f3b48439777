"""The activations a data set produces at the teacher's first BatchNorm layer, against its running statistics.

A short extra pass of the teacher over a fixed-seed sample of the set (at most ``MAX_EXAMPLES`` examples),
with forward pre-hooks on every BatchNorm layer; the first layer called is the one read, since only
linear layers stand between it and the inputs. Models without one (or programs, whose layers cannot be
hooked, or layers still at their initial statistics) give None.

Where the teacher stores the input normalization it was trained with (``LoadedModel.metadata
['normalization']``), the same sample's per-channel input statistics are compared with it
(:func:`stored_normalization_fit`); that needs no BatchNorm layer, and works for programs too.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from kddiag.metrics.inputs import batchnorm_mismatch
from kddiag.inputs import BatchNormFit, LoadedModel, NormalizationFit

MAX_EXAMPLES = 2048  # the channel means and variances settle long before (a few hundred examples)
SAMPLE_SEED = 0


class _Moments:
    """Per-channel count, sum and sum of squares of a layer's input, in float64."""

    def __init__(self):
        self.count, self.sum, self.squares = 0, 0.0, 0.0

    def add(self, x: torch.Tensor) -> None:
        rows = x.detach().to(torch.float64).transpose(0, 1).reshape(x.shape[1], -1)
        self.count += rows.shape[1]
        self.sum = self.sum + rows.sum(dim=1)
        self.squares = self.squares + (rows * rows).sum(dim=1)

    def mean_and_variance(self) -> tuple[np.ndarray, np.ndarray]:
        mean = self.sum / self.count
        return mean.cpu().numpy(), torch.clamp(self.squares / self.count - mean * mean, min=0).cpu().numpy()


def first_batchnorm_fit(model: LoadedModel, x: Any, *, batch_size: int = 256) -> BatchNormFit | None:
    """How far ``x`` (real-valued inputs, examples first) moves the teacher's first BatchNorm layer from its
    running statistics, run where the model's parameters are; None when the model has no such layer to
    hook or ``x`` is not real-valued."""
    module = model.module
    if not isinstance(module, torch.nn.Module) or isinstance(module, torch.jit.ScriptModule):
        return None
    layers = {name: m for name, m in module.named_modules()
              if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and _trained(m)}
    if not layers or not isinstance(x, (torch.Tensor, np.ndarray)):
        return None
    x = torch.as_tensor(x)
    if not x.is_floating_point() or x.ndim < 2 or x.shape[0] == 0:
        return None
    rows = np.random.default_rng(SAMPLE_SEED).permutation(x.shape[0])[:MAX_EXAMPLES]
    rows.sort()
    order: list[str] = []
    moments = {name: _Moments() for name in layers}

    def hook(name):
        def record(layer, args):
            if args and isinstance(args[0], torch.Tensor) and args[0].ndim >= 2:
                if name not in order:
                    order.append(name)
                moments[name].add(args[0])
        return record

    handles = [layer.register_forward_pre_hook(hook(name)) for name, layer in layers.items()]
    modes = [(m, m.training) for m in module.modules()]
    weight = next((p for p in module.parameters() if p.is_floating_point()), None)
    dtype, device = (torch.float32, "cpu") if weight is None else (weight.dtype, weight.device)
    try:
        module.eval()
        with torch.no_grad():
            for start in range(0, len(rows), batch_size):
                module(x[torch.as_tensor(rows[start:start + batch_size])].to(device=device, dtype=dtype))
    finally:
        for handle in handles:
            handle.remove()
        for m, training in modes:
            m.training = training
    if not order:
        return None
    name = order[0]
    layer = layers[name]
    mean, variance = moments[name].mean_and_variance()
    shift, ratio = batchnorm_mismatch(mean, variance, layer.running_mean.detach().double().cpu().numpy(),
                                      layer.running_var.detach().double().cpu().numpy(), layer.eps)
    return BatchNormFit(layer=name, n_examples=len(rows), mean_shift=shift, variance_ratio=ratio)


def _trained(layer: torch.nn.Module) -> bool:
    """The layer keeps running statistics, and they moved from their initial values (mean 0, variance 1)."""
    mean, variance = getattr(layer, "running_mean", None), getattr(layer, "running_var", None)
    if not isinstance(mean, torch.Tensor) or not isinstance(variance, torch.Tensor) or mean.ndim != 1:
        return False
    return bool(mean.detach().abs().max() > 0 or (variance.detach() - 1).abs().max() > 0)


def stored_normalization_fit(model: LoadedModel, x: Any) -> NormalizationFit | None:
    """``x`` (real-valued inputs, examples first, channels second) against the normalization ``model``
    stores, over the same fixed-seed sample as :func:`first_batchnorm_fit`; None when it stores none, ``x``
    is not real-valued, or its channels do not match the stored values (then there is nothing to compare)."""
    stored = model.metadata.get("normalization")
    if stored is None or not isinstance(x, (torch.Tensor, np.ndarray)):
        return None
    x = torch.as_tensor(x)
    channels = max(len(stored["mean"]), len(stored["std"]))
    if not x.is_floating_point() or x.shape[0] == 0 or (channels > 1 and (x.ndim < 3 or x.shape[1] != channels)):
        return None
    rows = np.sort(np.random.default_rng(SAMPLE_SEED).permutation(x.shape[0])[:MAX_EXAMPLES])
    sample = x[torch.as_tensor(rows)]
    moments = _Moments()
    moments.add(sample.reshape(len(rows), 1, -1) if channels == 1 else sample)
    mean, variance = moments.mean_and_variance()
    raw_mean = np.broadcast_to(np.asarray(stored["mean"], dtype=np.float64), mean.shape)
    raw_std = np.broadcast_to(np.asarray(stored["std"], dtype=np.float64), mean.shape)
    shift, ratio = batchnorm_mismatch(mean, variance, np.zeros_like(mean), np.ones_like(mean), 0.0)
    raw_shift, raw_ratio = batchnorm_mismatch(mean, variance, raw_mean, raw_std ** 2, 0.0)
    return NormalizationFit(mean=tuple(stored["mean"]), std=tuple(stored["std"]), n_examples=len(rows),
                            mean_shift=shift, variance_ratio=ratio, raw_mean_shift=raw_shift,
                            raw_variance_ratio=raw_ratio)
