"""The fused softmax pass in torch, on the device that holds the logits.

:func:`fused_softmax_stats_torch` gives what :func:`kddiag.metrics._common.fused_softmax_stats` gives, from
torch tensors, computed where they are (a GPU when the models run on one): every logit is read once, the
per-example quantities of every model at τ = 1 and τ come back to the host as float64 numpy arrays, the
class sums as one block's sums for :meth:`~kddiag.metrics._common.ClassSums.add_block`. Nothing of size
(n_samples, n_classes) leaves the device. The same formulas as the numpy block kernel
(``_common._softmax_block`` and ``_class_sums_block``), in the same work dtype
(:func:`~kddiag.metrics._common.work_dtype`); results agree with it within that dtype's rounding (tested on
CPU tensors). Sums over rows are reductions or matrix products, never atomic adds (whose order, and so
whose bits, change from run to run on a GPU). Not yet measured on a GPU.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

from kddiag.metrics._common import _TINY_NONTARGET, ClassSums, SoftmaxStats, bin_index, work_dtype

_F64 = torch.float64
_TINY = {torch.float32: _TINY_NONTARGET[np.dtype(np.float32)], _F64: _TINY_NONTARGET[np.dtype(np.float64)]}


def fused_softmax_stats_torch(logits: Mapping[str, torch.Tensor], labels, *, temperature: float,
                              class_sums: Mapping[str, ClassSums]
                              ) -> tuple[dict[str, SoftmaxStats], SoftmaxStats, SoftmaxStats | None]:
    """See :func:`~kddiag.metrics._common.fused_softmax_stats`: ``logits`` role -> (n, C) tensors on one
    device, ``labels`` (n,) class ids (numpy or torch); the class sums are added once for all n rows."""
    teacher = logits["teacher"]
    n_classes = teacher.shape[1]
    work = torch.float32 if work_dtype(n_classes) == np.float32 else _F64
    inv_t = 1.0 / temperature
    y = torch.as_tensor(labels, device=teacher.device, dtype=torch.int64)
    z = {role: value.to(work) for role, value in logits.items()}
    student = "student" in z
    top = {}
    for role, values in z.items():
        pred = values.argmax(dim=1)  # the first maximum, as numpy's
        shift = values.gather(1, pred[:, None])[:, 0]
        top[role] = (values - shift[:, None], pred, shift)
    out = {role: _stats(*top[role], y, 1.0, other=z["teacher"] if role == "student" else None,
                        logit_spread=True, class_sums=class_sums[role])
           for role in z if role != "teacher"}
    out["teacher"] = _stats(*top["teacher"], y, 1.0, other=z["student"] if student else None,
                            other_norms=_norms(out["student"]) if student else None,
                            logit_spread=True, class_sums=class_sums["teacher"])
    if temperature != 1.0:
        def at_temperature(role: str) -> tuple:
            t, pred, shift = top[role]
            return t * inv_t, pred, shift, y, inv_t

        if student:
            out["student_t"] = _stats(*at_temperature("student"), other=z["teacher"])
        out["teacher_t"] = _stats(*at_temperature("teacher"), other=z["student"] if student else None,
                                  other_norms=_norms(out["student_t"]) if student else None)
    for role in z:
        class_sums[role].add_block(out[role].pop("class_sums"))
    stats = {key: SoftmaxStats(temperature=1.0 if key in z else temperature, n_classes=n_classes,
                               **{name: value.cpu().numpy() for name, value in fields.items()})
             for key, fields in out.items()}
    one = {role: stats[role] for role in z}
    if temperature == 1.0:
        return one, one["teacher"], one.get("student")
    return one, stats["teacher_t"], stats.get("student_t")


def _norms(fields: dict) -> tuple[torch.Tensor, torch.Tensor]:
    return fields["log_norm"], fields["nontarget_log_norm"]


def _row_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Σ_j a_ij·b_ij per row, accumulated in float64."""
    return (a * b).sum(dim=1, dtype=_F64)


def _stats(t: torch.Tensor, pred: torch.Tensor, shift: torch.Tensor, y: torch.Tensor, inv_t: float, *,
           other: torch.Tensor | None = None, other_norms: tuple[torch.Tensor, torch.Tensor] | None = None,
           logit_spread: bool = False, class_sums: ClassSums | None = None) -> dict:
    """The :class:`SoftmaxStats` fields (float64 tensors; ``prediction`` int64) of rows with t = (z − max z)·inv_t
    (not changed), argmax ``pred``, max ``shift`` and labels ``y``; ``other``/``other_norms`` as in
    ``_common._softmax_block``; with ``class_sums`` their block of sums under "class_sums" (numpy)."""
    n_rows, n_classes = t.shape
    row = torch.arange(n_rows, device=t.device)
    t_y = t[row, y].to(_F64)
    e = t.exp()
    e_y = e[row, y].to(_F64)
    e[row, y] = 0.0
    s_nt = e.sum(dim=1, dtype=_F64)
    nt_off = torch.zeros(n_rows, dtype=_F64, device=t.device)
    bad = torch.nonzero(s_nt < _TINY[t.dtype])[:, 0]
    if bad.numel():  # the target dominates: shift the non-target part by its own maximum
        tb = t[bad]
        tb[torch.arange(bad.numel(), device=t.device), y[bad]] = -torch.inf
        nt_off[bad] = tb.max(dim=1).values.to(_F64)
        e[bad] = (tb - nt_off[bad, None].to(t.dtype)).exp()
        s_nt[bad] = e[bad].sum(dim=1, dtype=_F64)
    nt_scale = nt_off.exp()  # e_k · nt_scale = exp(t_k) for k ≠ y
    s_full = e_y + s_nt * nt_scale
    log_s, log_s_nt = s_full.log(), s_nt.log()
    r_mean_t = _row_dot(e, t) / s_nt  # E_r[t]
    p_mean_t = (s_nt * nt_scale * r_mean_t + e_y * t_y) / s_full  # E_p[t]
    shift = shift.to(_F64)
    out = {
        "prediction": pred,
        "log_norm": shift * inv_t + log_s,
        "nontarget_log_norm": shift * inv_t + nt_off + log_s_nt,
        "target_log_prob": t_y - log_s,
        "nontarget_log_mass": nt_off + log_s_nt - log_s,
        "max_log_prob": -log_s,
        "entropy": log_s - p_mean_t,
        "nontarget_entropy": nt_off + log_s_nt - r_mean_t,
        "nontarget_sum_sq": _row_dot(e, e) * (nt_scale / s_full) ** 2,
    }
    if logit_spread:  # std and margin are ratios of differences of t = (z − max z)/τ: same as on z
        mean = (t.sum(dim=1, dtype=_F64) - t_y) / (n_classes - 1)
        d = t - mean[:, None].to(t.dtype)
        d[row, y] = 0.0
        margin = t_y - mean
        std = (_row_dot(d, d) / (n_classes - 1)).sqrt()
        out["logit_spread"] = torch.where(margin > 0, std / margin, torch.nan)
    if other is not None:
        b_y = other[row, y].to(_F64) * inv_t
        r_mean_b = _row_dot(e, other) * inv_t / s_nt
        p_mean_b = (s_nt * nt_scale * r_mean_b + e_y * b_y) / s_full
        out["other_mean"] = p_mean_b
        if other_norms is not None:
            out["cross_entropy"] = other_norms[0] - p_mean_b
            out["nontarget_cross_entropy"] = other_norms[1] - r_mean_b
    if class_sums is not None:
        out["class_sums"] = _class_sums(e, s_nt, nt_scale / s_full, e_y / s_full, y, class_sums)
    return out


def _class_sums(e: torch.Tensor, s_nt: torch.Tensor, nontarget_scale: torch.Tensor, target_prob: torch.Tensor,
                y: torch.Tensor, sums: ClassSums) -> dict:
    """The class sums of these rows as ``_common._class_sums_block`` gives them (numpy, on the host): the sums
    by label are products with the (classes × rows) indicator matrix, so no atomic adds (order-free bits)."""
    n_classes = e.shape[1]
    classes, where, count = torch.unique(y, return_inverse=True, return_counts=True)  # sorted
    indicator = torch.zeros(classes.numel(), y.numel(), dtype=_F64, device=e.device)
    indicator[where, torch.arange(y.numel(), device=e.device)] = 1.0
    # Σ_{i: y_i = c} r_i = Σ e_i/s_nt_i over the kept classes, in the kept columns; Σ_i p_ik
    kept = torch.arange(classes.numel(), device=e.device)
    columns = e
    if sums.kept is not None:
        position = torch.as_tensor(sums.positions(classes.cpu().numpy()), device=e.device)
        kept = torch.nonzero(position >= 0)[:, 0]
        columns = e[:, torch.as_tensor(sums.kept, device=e.device)]
    weights = (indicator[kept] / s_nt).to(e.dtype)
    nontarget_rows = (weights @ columns).to(_F64)
    prob_sum = (nontarget_scale.to(e.dtype) @ e).to(_F64)
    prob_sum[classes] += indicator @ target_prob
    label_count = torch.zeros(n_classes, dtype=torch.int64, device=e.device)
    label_count[classes] = count
    # a hair below the threshold (in e's dtype): over-listed entries are binned by their own p afterwards;
    # scale 0: those p underflowed, the bound is infinite and none is listed
    bound = (sums.threshold * (1.0 - 1e-6) / nontarget_scale).to(e.dtype)
    high_row, high_col = torch.nonzero(e > bound[:, None], as_tuple=True)
    high_prob = e[high_row, high_col].to(_F64) * nontarget_scale[high_row]
    target_high = torch.nonzero(target_prob > sums.threshold)[:, 0]
    row_of = torch.cat((high_row, target_high)).cpu().numpy()
    col_of = torch.cat((high_col, y[target_high])).cpu().numpy()
    high_prob = torch.cat((high_prob, target_prob[target_high])).cpu().numpy()
    bins = bin_index(high_prob, sums.n_bins)
    keep = bins > 0  # bin 0 is what is left of each class total
    y_host = y.cpu().numpy()
    return {"classes": classes[kept].cpu().numpy(), "nontarget_sum": nontarget_rows.cpu().numpy(),
            "prob_sum": prob_sum.cpu().numpy(), "label_count": label_count.cpu().numpy(),
            "cells": col_of[keep] * sums.n_bins + bins[keep], "high_prob": high_prob[keep],
            "hits": (col_of[keep] == y_host[row_of[keep]]).astype(np.int64)}
