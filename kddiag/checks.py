"""The checks the hand-off objects share, each value checked once, at the edge, with one wording: class
ids, finite rows, real numbers, alpha."""
from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from kddiag.errors import KddiagError
from kddiag.metrics._common import non_finite_rows


def check_alpha(value: Any, origin: str) -> None:
    """Raise unless ``value`` is a number in [0, 1] (the weight of the soft term); ``origin`` names it."""
    if not is_real(value) or not 0 <= value <= 1:
        raise KddiagError(f"{origin} must be a number in [0, 1]; got {shown(value)}")


def is_real(value: Any) -> bool:
    """Whether ``value`` is a real number (a bool is not)."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def shown(value: Any) -> str:
    """``value`` for an error message: a number as a float, anything else by its repr."""
    return repr(float(value)) if is_real(value) else repr(value)


def check_class_ids(labels: Any, where: str, *, n_classes: int | None = None) -> np.ndarray:
    """Labels (an array or a tensor) as an int64 array of class ids: 1-D integers ≥ 0, below ``n_classes`` when
    given. ``where`` names them in the one-line error ("data 'd.pt': labels"). The one check of labels."""
    array = labels.detach().cpu().numpy() if hasattr(labels, "detach") else np.asarray(labels)
    if array.ndim != 1:
        hint = " (one-hot or probabilities? give class ids)" if array.ndim == 2 else ""
        raise KddiagError(f"{where} must be 1-D class ids (n_samples,); got shape {array.shape}{hint}")
    if array.dtype.kind not in "iu":
        raise KddiagError(f"{where} must be integer class ids; got dtype {array.dtype}")
    if array.size and array.min() < 0:
        raise KddiagError(f"{where} must be class ids >= 0; got {array.min()}")
    if array.size and n_classes is not None and array.max() >= n_classes:
        raise KddiagError(f"{where} must lie in [0, {n_classes}) for {n_classes}-class models; got values from "
                          f"{array.min()} to {array.max()}")
    return array.astype(np.int64, copy=False)


def has_non_finite(x: Any) -> bool:
    """Whether floating inputs (a tensor or an array) hold NaN or Inf; integer inputs never do."""
    if hasattr(x, "is_floating_point"):  # NaN propagates to the min and max, Inf is one of them: one fast pass
        if not x.is_floating_point() or x.numel() == 0:  # complex tensors are not floating point
            return False
        low, high = x.aminmax()
        return not bool(low.isfinite() and high.isfinite())
    array = np.asarray(x)
    return array.dtype.kind in "fc" and array.size > 0 and non_finite_rows(array).size > 0


def real_array(value: Any, name: str) -> np.ndarray:
    """``value`` as an array of real numbers; ``name`` names it in the error."""
    array = np.asarray(value)
    if array.dtype.kind not in "iuf":
        raise KddiagError(f"{name} must be real numbers; got dtype {array.dtype}")
    return array


def check_finite_rows(array: np.ndarray, name: str) -> None:
    """Raise, counting the rows with NaN or Inf, unless every entry is finite."""
    bad = non_finite_rows(array).size
    if bad:
        raise KddiagError(f"{name}: NaN or Inf in {bad} of {len(array)} rows; every value must be finite")


def check_finite_examples(array: Any, name: str, start: int) -> None:
    """Raise naming the first example with NaN or Inf (rows are examples ``start``, ``start + 1``, …); a
    tensor is checked where it is, by one float64 sum unless that shows a non-finite value."""
    if hasattr(array, "detach"):  # a tensor
        import torch

        if bool(torch.isfinite(array.sum(dtype=torch.float64))):
            return
        bad = torch.nonzero(~torch.isfinite(array).all(dim=1))[:, 0].cpu().numpy()
    else:
        bad = non_finite_rows(array)
    if bad.size:
        raise KddiagError(f"{name}: NaN or Inf in example {start + bad[0]} ({bad.size} of the "
                          f"{len(array)} examples from {start}); every value must be finite")
