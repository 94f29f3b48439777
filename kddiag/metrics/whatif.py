"""What the teacher's targets would look like at other temperatures: the τ range where they are informative.

Too low a τ leaves near one-hot targets (no smoothing, flat rescaling); too high a τ makes them
near uniform (no class structure). The grid reuses the level-1, 2 and 3 formulas unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass
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
RANGE = "informative_range"  # the name of the range in report.json and in evidence


@dataclass(frozen=True)
class InformativeBand:
    """Where a teacher's targets are informative: min_smoothing ≤ ε_eff ≤ max_smoothing, saturation ≤ max_saturation."""

    min_smoothing: float
    max_smoothing: float
    max_saturation: float

    @classmethod
    def for_classes(cls, n_classes: int) -> "InformativeBand":
        """The band for C classes: 0.05 ≤ ε_eff ≤ 0.9·(C − 1)/C, at most half of the targets saturated."""
        return cls(MIN_SMOOTHING, MAX_SMOOTHING_OF_UNIFORM * (n_classes - 1) / n_classes, MAX_SATURATION)

    def holds(self, smoothing: float, saturation: float) -> bool:
        return self.min_smoothing <= smoothing <= self.max_smoothing and saturation <= self.max_saturation

    def to_dict(self) -> dict:
        return {"min_smoothing": self.min_smoothing, "max_smoothing": self.max_smoothing,
                "max_saturation": self.max_saturation}


@dataclass(frozen=True)
class WhatIf:
    """The teacher's targets over a τ grid: one value per grid τ in each array, and the band they were judged by."""

    temperatures: np.ndarray
    effective_smoothing: np.ndarray  # ε_eff = mean(1 − p_y)
    saturation_share: np.ndarray  # share with p_y > 0.99
    dark_knowledge_content: np.ndarray  # NaN where undefined
    rescaling_weight_cv: np.ndarray  # of the untrained-student weight; NaN where undefined
    informative_range: tuple[float, float] | None  # [min, max] of the grid τ inside the band
    band: InformativeBand
    n_samples: int  # examples read

    def at(self, temperature: float) -> int | None:
        """The grid index of ``temperature``, None when it is not on the grid."""
        hits = np.flatnonzero(self.temperatures == temperature)
        return int(hits[0]) if hits.size else None

    def to_dict(self) -> dict:
        return {"temperatures": self.temperatures, "effective_smoothing": self.effective_smoothing,
                "saturation_share": self.saturation_share, "dark_knowledge_content": self.dark_knowledge_content,
                "rescaling_weight_cv": self.rescaling_weight_cv,
                RANGE: None if self.informative_range is None else list(self.informative_range),
                "informative_band": self.band.to_dict(), "n_samples": self.n_samples}

    @classmethod
    def from_dict(cls, value: dict) -> "WhatIf":
        def floats(key):
            return np.array([np.nan if v is None else v for v in value[key]], dtype=np.float64)

        band = value["informative_band"]
        informative = value.get(RANGE)
        return cls(floats("temperatures"), floats("effective_smoothing"), floats("saturation_share"),
                   floats("dark_knowledge_content"), floats("rescaling_weight_cv"),
                   None if informative is None else (float(informative[0]), float(informative[1])),
                   InformativeBand(band["min_smoothing"], band["max_smoothing"], band["max_saturation"]),
                   int(value.get("n_samples", 0)))


def temperature_whatif(teacher_logits, labels, *, temperatures: Sequence[float] = TEMPERATURES,
                       alpha: float) -> WhatIf:
    """The teacher's targets over a τ grid (:class:`WhatIf`).

    Per τ: ε_eff = mean(1 − p_y), the share with p_y > 0.99, the dark-knowledge content at τ and the
    coefficient of variation of the untrained-student rescaling weight. ``informative_range`` is
    [min, max] of the grid τ inside :meth:`InformativeBand.for_classes` (0.05 ≤ ε_eff ≤ 0.9·(C − 1)/C,
    saturation_share ≤ 0.5), or None when no τ qualifies.
    Sets larger than 2²¹ logits or 5,000 examples use a fixed-seed subsample (``n_samples`` examples).
    """
    teacher_logits = check_logits(teacher_logits, name="teacher logits")
    labels = check_labels(labels, n_samples=teacher_logits.shape[0], n_classes=teacher_logits.shape[1])
    temperatures = [check_temperature(t) for t in temperatures]
    if not temperatures:
        raise KddiagError("temperatures must hold at least one temperature")
    return temperature_whatif_of(teacher_logits, labels, temperatures=temperatures, alpha=check_alpha(alpha))


def whatif_rows(n_samples: int, n_classes: int) -> int:
    """How many of ``n_samples`` rows of C classes the what-if reads (a fixed-seed subsample beyond)."""
    return min(n_samples, max(2, min(MAX_SAMPLES, MAX_ELEMENTS // n_classes)))


def temperature_whatif_of(teacher_logits: np.ndarray, labels: np.ndarray, *,
                          temperatures: Sequence[float] = TEMPERATURES, alpha: float) -> WhatIf:
    """See :func:`temperature_whatif` (valid input)."""
    n_samples, n_classes = teacher_logits.shape
    rows = subsample_indices(n_samples, whatif_rows(n_samples, n_classes))
    subsample = rows if rows.size < n_samples else None
    stats = [softmax_stats(teacher_logits, labels, temperature=t, rows=subsample) for t in temperatures]
    smoothing = np.array([effective_smoothing_of(s) for s in stats])
    saturation = np.array([saturation_share_of(s) for s in stats])
    band = InformativeBand.for_classes(n_classes)
    informative = [s.temperature for s, eps, sat in zip(stats, smoothing, saturation) if band.holds(eps, sat)]
    return WhatIf(
        temperatures=np.array([s.temperature for s in stats]),
        effective_smoothing=smoothing,
        saturation_share=saturation,
        dark_knowledge_content=_floats(dark_knowledge_content_of(s) for s in stats),
        rescaling_weight_cv=_floats(coefficient_of_variation_of(untrained_rescaling_weights_of(s, alpha=alpha))
                                    for s in stats),
        informative_range=(min(informative), max(informative)) if informative else None,
        band=band,
        n_samples=int(rows.size),
    )


def _floats(values) -> np.ndarray:
    """Floats, None as NaN."""
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)
