"""Do the inputs match what the teacher was trained on? Its first BatchNorm layer keeps the answer.

A BatchNorm layer's running mean and variance are the per-channel statistics of the activations it saw
in training. Before the first one only linear layers act on the inputs (a convolution, maybe a bias), so
inputs scaled by ``s`` scale that layer's input variance by ``s²``: a missing normalization (images in
[0, 1] where the teacher learned ``(x − m)/σ`` with σ ≈ 0.2-0.35) shows as about σ² ≈ 0.04-0.12 of the
running variance, a doubled one as 1/σ², raw 0-255 pixels as thousands.
"""
from __future__ import annotations

import numpy as np

from kddiag.errors import KddiagError


def batchnorm_mismatch(observed_mean: np.ndarray, observed_var: np.ndarray, running_mean: np.ndarray,
                       running_var: np.ndarray, eps: float) -> tuple[float, float]:
    """How far the activations observed at a BatchNorm layer are from its running statistics, per channel,
    summarized by the median over channels (robust to dead channels): the mean shift in running standard
    deviations ``|μ_obs − μ_run| / √(σ²_run + ε)``, and the variance ratio ``(σ²_obs + ε)/(σ²_run + ε)``
    (its geometric median: the exponential of the median log ratio)."""
    arrays = [np.asarray(a, dtype=np.float64) for a in (observed_mean, observed_var, running_mean, running_var)]
    if len({a.shape for a in arrays}) != 1 or arrays[0].ndim != 1 or arrays[0].size == 0:
        raise KddiagError("batchnorm_mismatch: the four statistics must be 1-D arrays of one length per channel, "
                          f"got shapes {[a.shape for a in arrays]}")
    if not all(np.isfinite(a).all() for a in arrays) or (arrays[1] < 0).any() or (arrays[3] < 0).any():
        raise KddiagError("batchnorm_mismatch: statistics must be finite and variances non-negative")
    mean, var, run_mean, run_var = arrays
    scale = np.sqrt(run_var + eps)
    shift = float(np.median(np.abs(mean - run_mean) / scale))
    with np.errstate(divide="ignore"):  # a dead channel with ε = 0: log 0 = −∞, which the median passes over
        ratio = float(np.exp(np.median(np.log((var + eps) / (run_var + eps)))))
    return shift, ratio
