"""What the teacher's targets would look like at other temperatures: the τ range where they are informative.

Too low a τ leaves near one-hot targets (no smoothing, flat rescaling); too high a τ makes them
near uniform (no class structure). The grid reuses the level-1, 2 and 3 formulas unchanged.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from kddiag.errors import KddiagError
from kddiag.metrics._common import (check_alpha, check_labels, check_logits, check_temperature, softmax_stats,
                                    subsample_indices)
from kddiag.metrics.domain import dark_knowledge_content_of
from kddiag.metrics.instance import coefficient_of_variation_of, untrained_rescaling_weights_of
from kddiag.metrics.universe import effective_smoothing_of, saturation_share_of

TEMPERATURES = (0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0)
MIN_SMOOTHING = 0.05  # informative targets put at least this much mass on wrong classes …
MAX_SMOOTHING_OF_UNIFORM = 0.9  # … at most this share of the uniform distribution's (C − 1)/C …
MAX_SATURATION = 0.5  # … and at most half of them are near one-hot
MAX_ELEMENTS = 1 << 21  # larger sets are read on a fixed-seed subsample of this many logits …
MAX_SAMPLES = 5_000  # … and of at most this many examples (the curves are means over examples)


def temperature_whatif(teacher_logits, labels, *, temperatures: Sequence[float] = TEMPERATURES,
                       alpha: float) -> dict:
    """The teacher's targets over a τ grid.

    Returns ``{"temperatures", "effective_smoothing", "saturation_share", "dark_knowledge_content",
    "rescaling_weight_cv", "informative_range", "n_samples"}``: per τ, ε_eff = mean(1 − p_y), the
    share with p_y > 0.99, the dark-knowledge content at τ and the coefficient of variation of the
    untrained-student rescaling weight. ``informative_range`` is [min, max] of the grid τ where
    0.05 ≤ ε_eff ≤ 0.9·(C − 1)/C and saturation_share ≤ 0.5, or None when no τ qualifies.
    Sets larger than 2²¹ logits or 5,000 examples use a fixed-seed subsample (``n_samples`` examples).
    """
    teacher_logits = check_logits(teacher_logits, name="teacher logits")
    labels = check_labels(labels, n_samples=teacher_logits.shape[0], n_classes=teacher_logits.shape[1])
    temperatures = [check_temperature(t) for t in temperatures]
    if not temperatures:
        raise KddiagError("temperatures must hold at least one temperature")
    return temperature_whatif_of(teacher_logits, labels, temperatures=temperatures, alpha=check_alpha(alpha))


def temperature_whatif_of(teacher_logits: np.ndarray, labels: np.ndarray, *,
                          temperatures: Sequence[float] = TEMPERATURES, alpha: float) -> dict:
    """See :func:`temperature_whatif` (valid input)."""
    n_samples, n_classes = teacher_logits.shape
    rows = subsample_indices(n_samples, max(2, min(MAX_SAMPLES, MAX_ELEMENTS // n_classes)))
    subsample = rows if rows.size < n_samples else None
    stats = [softmax_stats(teacher_logits, labels, temperature=t, rows=subsample) for t in temperatures]
    smoothing = [effective_smoothing_of(s) for s in stats]
    saturation = [saturation_share_of(s) for s in stats]
    informative = [s.temperature for s, eps, sat in zip(stats, smoothing, saturation)
                   if MIN_SMOOTHING <= eps <= MAX_SMOOTHING_OF_UNIFORM * (n_classes - 1) / n_classes
                   and sat <= MAX_SATURATION]
    return {
        "temperatures": [s.temperature for s in stats],
        "effective_smoothing": smoothing,
        "saturation_share": saturation,
        "dark_knowledge_content": [dark_knowledge_content_of(s) for s in stats],
        "rescaling_weight_cv": [coefficient_of_variation_of(untrained_rescaling_weights_of(s, alpha=alpha))
                                for s in stats],
        "informative_range": [min(informative), max(informative)] if informative else None,
        "n_samples": int(rows.size),
    }
