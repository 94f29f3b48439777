"""Top-k logits files: per example the k most likely class ids and their log-probabilities.

LLM distillation pipelines log a teacher's targets this way (a 150,000-token vocabulary times millions of
positions does not fit on disk). A ``.npz`` holds, per set, ``topk_ids`` (n, k) integers and
``topk_logprobs`` (n, k) log-probabilities under the full softmax at τ = 1, for the eval set, and
``transfer_topk_ids``/``transfer_topk_logprobs`` for the transfer set, plus ``n_classes`` (the vocabulary
size, a scalar). An optional ``logsumexp`` / ``transfer_logsumexp`` (n,) is accepted and not needed.

:class:`TopKLogits` stands for the (n, C) logits: a slice of rows is completed batch by batch, the top-k
entries as stored and every other class at log(m / (C − k)), where m = 1 − Σ top-k p is the mass the
file leaves over (spread evenly: the assumption that fills in what was not logged). What that makes
exact and what approximate is in ``docs/metrics.md`` ("Top-k logits").
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from kddiag.errors import KddiagError
from kddiag.types import EVAL, MAX_CLASSES, TRANSFER

KEYS = {EVAL: ("topk_ids", "topk_logprobs", "logsumexp"),
        TRANSFER: ("transfer_topk_ids", "transfer_topk_logprobs", "transfer_logsumexp")}
_MASS_SLACK = 1e-3  # Σ top-k p may exceed 1 by this much (rounding of stored log-probabilities)
# Each batch of rows is completed to n_classes float32 values per row (and copied to float64 by the
# metrics): a batch of 512 rows of 2^19 classes (kddiag.types.MAX_CLASSES) peaks near 2.4 GB; an n_classes
# above it is refused before anything is allocated.
MAX_TOPK_CLASSES = MAX_CLASSES


class TopKLogits:
    """(n, C) logits completed from the top-k of each row; ``rows[a:b]`` gives a dense float32 array."""

    def __init__(self, ids: np.ndarray, logprobs: np.ndarray, n_classes: int) -> None:
        self.ids, self.logprobs, self.n_classes = ids, logprobs, n_classes
        self.k = ids.shape[1]

    @property
    def shape(self) -> tuple[int, int]:
        return self.ids.shape[0], self.n_classes

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.float32)

    def __len__(self) -> int:
        return self.ids.shape[0]

    def __getitem__(self, rows: slice) -> np.ndarray:
        if not isinstance(rows, slice):
            raise TypeError("top-k logits are read by slices of rows")
        ids, logprobs = self.ids[rows], self.logprobs[rows].astype(np.float64)
        rest = -np.expm1(np.logaddexp.reduce(logprobs, axis=1))  # m = 1 − Σ top-k p
        tail = np.log(np.maximum(rest, np.finfo(np.float64).tiny) / (self.n_classes - self.k))
        out = np.repeat(tail.astype(np.float32)[:, None], self.n_classes, axis=1)
        np.put_along_axis(out, ids, logprobs.astype(np.float32), axis=1)
        return out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        dense = self[0:len(self)]
        return dense if dtype is None else dense.astype(dtype)


def topk_sets(content: Mapping, where: str) -> dict[str, TopKLogits]:
    """The top-k logits of each set a file holds, checked: ids in [0, C), distinct in a row, log-probabilities
    finite, ≤ 0, and summing to at most 1 per row."""
    if "n_classes" not in content:
        raise KddiagError(f"{where}: top-k logits need 'n_classes' (the number of classes or vocabulary size)")
    n_classes = np.asarray(content["n_classes"])
    if n_classes.shape != () or n_classes.dtype.kind not in "iu" or int(n_classes) < 2:
        got = repr(n_classes.item()) if n_classes.shape == () else f"{n_classes.dtype} of shape {n_classes.shape}"
        raise KddiagError(f"{where}: 'n_classes' must be one integer ≥ 2; got {got}")
    n_classes = int(n_classes)
    if n_classes > MAX_TOPK_CLASSES:
        raise KddiagError(f"{where}: 'n_classes' = {n_classes:,} is over kddiag's limit of {MAX_TOPK_CLASSES:,} "
                          f"classes (kddiag.loading.topk.MAX_TOPK_CLASSES): each row is completed to n_classes "
                          f"values; the largest vocabularies in use have 262,144")
    sets = {}
    for set_name, (id_key, logprob_key, _) in KEYS.items():
        if id_key not in content and logprob_key not in content:
            continue
        if id_key not in content or logprob_key not in content:
            raise KddiagError(f"{where}: '{id_key}' and '{logprob_key}' go together; the file has only one of them")
        ids, logprobs = np.asarray(content[id_key]), np.asarray(content[logprob_key])
        if ids.ndim != 2 or ids.dtype.kind not in "iu" or logprobs.shape != ids.shape:
            raise KddiagError(f"{where}: '{id_key}' must be (n, k) integers and '{logprob_key}' (n, k) numbers of "
                              f"the same shape; got {ids.dtype} {ids.shape} and {logprobs.dtype} {logprobs.shape}")
        if not 1 <= ids.shape[1] < n_classes:
            raise KddiagError(f"{where}: k = {ids.shape[1]} top classes per row must be at least 1 and fewer than "
                              f"n_classes = {n_classes}")
        if ids.size and (ids.min() < 0 or ids.max() >= n_classes):
            raise KddiagError(f"{where}: '{id_key}' must be class ids in [0, {n_classes}); got values from "
                              f"{ids.min()} to {ids.max()}")
        ordered = np.sort(ids, axis=1)
        if ids.shape[1] > 1 and np.any(ordered[:, 1:] == ordered[:, :-1]):
            row = int(np.flatnonzero(np.any(ordered[:, 1:] == ordered[:, :-1], axis=1))[0])
            raise KddiagError(f"{where}: '{id_key}' repeats a class id in row {row}; each row lists k distinct classes")
        if logprobs.dtype.kind != "f" or not np.all(np.isfinite(logprobs)) or np.any(logprobs > 0):
            raise KddiagError(f"{where}: '{logprob_key}' must be finite log-probabilities (≤ 0)")
        mass = np.exp(np.logaddexp.reduce(logprobs.astype(np.float64), axis=1))
        if np.any(mass > 1 + _MASS_SLACK):
            row = int(np.argmax(mass))
            raise KddiagError(f"{where}: '{logprob_key}' sum to {mass[row]:.4f} > 1 in row {row}: they must be "
                              f"log-probabilities under the full softmax (log_softmax, then top-k)")
        sets[set_name] = TopKLogits(ids.astype(np.int64), logprobs, n_classes)
    return sets
