"""Logits mode: the logits stored in a file stand for the model; no features, no weight."""
from __future__ import annotations

import numpy as np

from kddiag.errors import KddiagError
from kddiag.types import EVAL, LoadedModel, ModelOutputs


def stored_outputs(role: str, model: LoadedModel, set_name: str, labels: np.ndarray, data_name: str) -> ModelOutputs:
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
