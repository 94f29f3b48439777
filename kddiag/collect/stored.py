"""Logits mode: the logits stored in a file stand for the model; no features, no weight."""
from __future__ import annotations

import mmap

import numpy as np

from kddiag.errors import KddiagError
from kddiag.inputs import LoadedModel
from kddiag.outputs import ModelOutputs
from kddiag.types import EVAL


def stored_logits(role: str, model: LoadedModel, set_name: str, labels: np.ndarray, data_name: str) -> np.ndarray:
    """The logits a logits-mode model holds for ``set_name``, as stored (a memory-mapped ``.npy`` stays
    on disk): one row per example of the data; labels stored beside them must match the data's.
    Values are checked batch by batch when read (:class:`~kddiag.outputs.Batch`)."""
    where = f"{role} logits '{model.source}'"
    logits = (model.logits or {}).get(set_name)
    if logits is None:
        held = ", ".join(model.logits or {}) or "none"
        raise KddiagError(f"{where}: no {set_name} logits (holds: {held}); save them under "
                          f"'{'logits' if set_name == EVAL else 'transfer'}'")
    shape = np.shape(logits)
    if len(shape) != 2 or shape[1] < 2:
        raise KddiagError(f"{where}: {set_name} logits must be (n_samples, n_classes) with at least 2 classes; "
                          f"got shape {shape}")
    if shape[0] != len(labels):
        raise KddiagError(f"{where}: {shape[0]} rows of {set_name} logits but data '{data_name}' has "
                          f"{len(labels)} examples; each model must give one row per example, in the data's order")
    stored = (model.labels or {}).get(set_name)
    if stored is not None and len(stored) == len(labels) and not np.array_equal(stored, labels):
        raise KddiagError(f"{where}: its {set_name} labels disagree with data '{data_name}' on "
                          f"{int((stored != labels).sum())} of {len(labels)} rows; rows must follow the data's order")
    return logits


def stored_outputs(role: str, model: LoadedModel, set_name: str, labels: np.ndarray, data_name: str) -> ModelOutputs:
    """The stored logits as :class:`~kddiag.outputs.ModelOutputs` (read whole, checked)."""
    return ModelOutputs(logits=np.asarray(stored_logits(role, model, set_name, labels, data_name)), role=role,
                        source=model.source)


def release(logits: np.ndarray, stop: int) -> None:
    """Let the kernel drop the pages of a memory-mapped ``.npy``'s rows before ``stop``: they were read
    (and would be read again from the file if touched), so resident memory stays flat over a large file."""
    handle = getattr(logits, "_mmap", None)  # numpy.memmap's mapping
    if handle is None or not hasattr(handle, "madvise") or not logits.flags.c_contiguous:
        return
    end = logits.offset % mmap.ALLOCATIONGRANULARITY + stop * logits.strides[0]
    end -= end % mmap.PAGESIZE
    if end > 0:
        handle.madvise(mmap.MADV_DONTNEED, 0, end)
