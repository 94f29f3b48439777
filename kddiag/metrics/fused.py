"""The fused softmax pass in torch, on the device that holds the logits.

:func:`fused_softmax_stats_torch` gives what :func:`kddiag.metrics._common.fused_softmax_stats` gives, from
torch tensors. Only the work that reads every logit runs where the logits are (a GPU when the models run on
one): each model's max, argmax and second largest logit, then per model and temperature the row sums of
``_common._row_sums`` (non-target sum, Σ e·t, Σ e², Σ e·b, the logit spread), and the class sums' products
over rows. Those per-row sums come to the host stacked in one copy, and the same numpy code as the CPU
pass turns them into the fields (``_common.softmax_fields``), so each formula has one home. Nothing of size
(n_samples, n_classes) leaves the device.

Unlike the numpy pass, every row's non-target exponentials are shifted by the row's non-target maximum
(the larger of the two top logits that is not the label's), so a target that dominates needs no second
pass and the pass has no branch that waits for the device. Results agree with the numpy pass within the
work dtype's rounding (:func:`~kddiag.metrics._common.work_dtype`; tested on CPU tensors). Sums over rows are
reductions or matrix products, never atomic adds (whose order, and so whose bits, change from run to run on
a GPU). Not yet measured on a GPU.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

from kddiag.metrics._common import ClassSums, SoftmaxStats, bin_index, probability_scales, softmax_fields, work_dtype

_F64 = torch.float64


def fused_softmax_stats_torch(logits: Mapping[str, torch.Tensor], labels, *, temperature: float,
                              class_sums: Mapping[str, ClassSums]
                              ) -> tuple[dict[str, SoftmaxStats], SoftmaxStats, SoftmaxStats | None]:
    """See :func:`~kddiag.metrics._common.fused_softmax_stats`: ``logits`` role -> (n, C) tensors on one
    device, ``labels`` (n,) class ids (numpy or torch); the class sums are added once for all n rows."""
    teacher = logits["teacher"]
    n_rows, n_classes = teacher.shape
    device = teacher.device
    work = torch.float32 if work_dtype(n_classes) == np.float32 else _F64
    inv_t = 1.0 / temperature
    y_host = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    y = torch.as_tensor(y_host, device=device, dtype=torch.int64)
    row = torch.arange(n_rows, device=device)
    z = {role: value.to(work) for role, value in logits.items()}
    top = {role: _top(values, y, row) for role, values in z.items()}
    versus = {"student": "teacher", "teacher": "student" if "student" in z else None}
    passes = [(role, role, 1.0) for role in z]
    if temperature != 1.0:
        passes += [(f"{role}_t", role, inv_t) for role in ("student", "teacher") if role in z]
    sums, exponentials = {}, {}
    for key, role, inv in passes:
        other = versus.get(role)
        sums[key], e = _row_sums(z[role], top[role]["nontarget_max"], y, row, inv,
                                 other=None if other is None else z[other], logit_spread=inv == 1.0)
        if key in class_sums:
            exponentials[key] = e
    host = _to_host(sums, top)
    fields = {}
    for key, role, inv in sorted(passes, key=lambda p: p[1] == "teacher"):  # the student's norms first
        other = versus.get(role)
        norms = None
        if role == "teacher" and other is not None:  # the student's at the same τ (key suffix "" or "_t")
            theirs = fields[other + key[len(role):]]
            norms = (theirs["log_norm"], theirs["nontarget_log_norm"])
        rows = _shifted_sums(host, key, role, inv, other, n_classes)
        fields[key] = softmax_fields(rows, host[role]["prediction"], host[role]["max"], inv, n_classes,
                                     other_norms=norms)
        if key in exponentials:
            class_sums[role].add_block(_class_sums(exponentials[key], sums[key]["s_nt"], probability_scales(rows),
                                                   y_host, class_sums[role]))
    stats = {key: SoftmaxStats(temperature=1.0 if key in z else temperature, n_classes=n_classes, **values)
             for key, values in fields.items()}
    one = {role: stats[role] for role in z}
    if temperature == 1.0:
        return one, one["teacher"], one.get("student")
    return one, stats["teacher_t"], stats.get("student_t")


def _top(z: torch.Tensor, y: torch.Tensor, row: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per row: the max and (first) argmax of z, z at the label and the largest z off the label, which is
    the max unless the argmax is the label, then the second largest value (the max again on a tie)."""
    largest, prediction = z.max(dim=1)  # the first maximum, as numpy's argmax
    second = z.topk(2, dim=1).values[:, 1] if z.shape[1] > 1 else largest
    return {"max": largest, "prediction": prediction, "at_label": z[row, y],
            "nontarget_max": torch.where(prediction == y, second, largest)}


def _row_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Σ_j a_ij·b_ij per row, accumulated in float64."""
    return (a * b).sum(dim=1, dtype=_F64)


def _row_sums(z: torch.Tensor, nontarget_max: torch.Tensor, y: torch.Tensor, row: torch.Tensor, inv_t: float, *,
              other: torch.Tensor | None, logit_spread: bool) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The sums of ``_common._row_sums`` (float64 tensors) on u = (z − non-target max)·inv_t instead of
    t = (z − max)·inv_t (u = t + g per row, g ≥ 0: :func:`_shifted_sums` moves them back), and the non-target
    exponentials e = exp(u), 0 at the label. Every u off the label is ≤ 0 and one of them is 0, so
    1 ≤ Σ e ≤ C: nothing underflows, nothing to recompute."""
    u = z - nontarget_max[:, None]
    if inv_t != 1.0:
        u *= inv_t
    e = u.exp()
    e[row, y] = 0.0
    sums = {"s_nt": e.sum(dim=1, dtype=_F64), "e_u": _row_dot(e, u), "e_e": _row_dot(e, e)}
    if other is not None:
        sums["e_b"] = _row_dot(e, other)
    if logit_spread:  # translation-free: on u as on t
        sums["u_sum"] = u.sum(dim=1, dtype=_F64)
        mean = (sums["u_sum"] - u[row, y].to(_F64)) / (z.shape[1] - 1)
        d = u - mean[:, None].to(u.dtype)
        d[row, y] = 0.0
        sums["d_d"] = _row_dot(d, d)
    return sums, e


def _to_host(sums: dict[str, dict[str, torch.Tensor]], top: dict[str, dict[str, torch.Tensor]]
             ) -> dict[str, dict[str, np.ndarray]]:
    """Every per-row vector in two copies to the host (float64 sums and top values; the predictions)."""
    names = [(key, name) for key, part in sums.items() for name in part]
    names += [(role, name) for role, part in top.items() for name in ("max", "at_label", "nontarget_max")]
    vectors = torch.stack([(sums[key] if key in sums and name in sums[key] else top[key])[name].to(_F64)
                           for key, name in names]).cpu().numpy()
    host: dict[str, dict[str, np.ndarray]] = {}
    for (key, name), values in zip(names, vectors):
        host.setdefault(key, {})[name] = values
    predictions = torch.stack([top[role]["prediction"] for role in top]).cpu().numpy()
    for role, values in zip(top, predictions):
        host[role]["prediction"] = values
    return host


def _shifted_sums(host: dict[str, dict[str, np.ndarray]], key: str, role: str, inv_t: float, other: str | None,
                  n_classes: int) -> dict[str, np.ndarray]:
    """The sums of ``_common._row_sums`` for pass ``key`` (model ``role`` at 1/τ = ``inv_t``) from the device's
    sums on u = t + g, g = (max − non-target max)·inv_t: the non-target shift nt_off = −g, Σ e·t = Σ e·u − g·Σ e
    (both terms ≤ 0: no cancellation), Σ t = Σ u − C·g; t_y and e_y = exp(t_y) in float64."""
    part, mine = host[key], host[role]
    g = (mine["max"] - mine["nontarget_max"]) * inv_t
    t_y = (mine["at_label"] - mine["max"]) * inv_t
    rows = {"t_y": t_y, "e_y": np.exp(t_y), "s_nt": part["s_nt"], "nt_off": -g,
            "e_t": part["e_u"] - g * part["s_nt"], "e_e": part["e_e"]}
    if "d_d" in part:
        rows["t_sum"], rows["d_d"] = part["u_sum"] - n_classes * g, part["d_d"]
    if other is not None:
        rows["b_y"], rows["e_b"] = host[other]["at_label"], part["e_b"]
    return rows


def _class_sums(e: torch.Tensor, s_nt: torch.Tensor, scales: tuple[np.ndarray, np.ndarray], y_host: np.ndarray,
                sums: ClassSums) -> dict:
    """The class sums of these rows as ``_common._class_sums_block`` gives them (numpy, on the host), from the
    non-target exponentials ``e`` and (p_k / e_k, p_y) per row (``_common.probability_scales``): the sums by
    label are products with the (classes × rows) indicator matrix, so no atomic adds (order-free bits)."""
    n_rows, n_classes = e.shape
    device = e.device
    nontarget_scale, target_prob = scales
    classes, where = np.unique(y_host, return_inverse=True)
    indicator = torch.zeros(classes.size, n_rows, dtype=_F64, device=device)
    indicator[torch.as_tensor(where, device=device), torch.arange(n_rows, device=device)] = 1.0
    # Σ_{i: y_i = c} r_i = Σ e_i/s_nt_i over the kept classes, in the kept columns; Σ_i p_ik
    kept = np.flatnonzero(sums.positions(classes) >= 0)
    columns = e if sums.kept is None else e[:, torch.as_tensor(sums.kept, device=device)]
    weights = (indicator[torch.as_tensor(kept, device=device)] / s_nt).to(e.dtype)
    scale = torch.as_tensor(np.stack((nontarget_scale, target_prob)), device=device)
    nontarget_rows = (weights @ columns).to(_F64)
    prob_sum = (scale[0].to(e.dtype) @ e).to(_F64)
    prob_sum[torch.as_tensor(classes, device=device)] += indicator @ scale[1]
    # a hair below the threshold (in e's dtype): over-listed entries are binned by their own p afterwards;
    # scale 0: those p underflowed, the bound is infinite and none is listed
    with np.errstate(divide="ignore", over="ignore"):
        bound = torch.as_tensor(sums.threshold * (1.0 - 1e-6) / nontarget_scale, device=device).to(e.dtype)
    high_row, high_col = torch.nonzero(e > bound[:, None], as_tuple=True)
    high = torch.stack((high_row.to(_F64), high_col.to(_F64), e[high_row, high_col].to(_F64))).cpu().numpy()
    high_row, high_col = high[0].astype(np.int64), high[1].astype(np.int64)
    target_high = np.flatnonzero(target_prob > sums.threshold)
    row_of = np.concatenate((high_row, target_high))
    col_of = np.concatenate((high_col, y_host[target_high]))
    high_prob = np.concatenate((high[2] * nontarget_scale[high_row], target_prob[target_high]))
    bins = bin_index(high_prob, sums.n_bins)
    keep = bins > 0  # bin 0 is what is left of each class total
    return {"classes": classes[kept], "nontarget_sum": nontarget_rows.cpu().numpy(),
            "prob_sum": prob_sum.cpu().numpy(), "label_count": np.bincount(y_host, minlength=n_classes),
            "cells": col_of[keep] * sums.n_bins + bins[keep], "high_prob": high_prob[keep],
            "hits": (col_of[keep] == y_host[row_of[keep]]).astype(np.int64)}
