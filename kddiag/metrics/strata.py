"""Measurements per stratum of the examples: token positions by how frequent their target token is and by
where in the sequence they are (token-level distillation).

A language model's per-token averages hide where distillation fails: the student may follow the
teacher on frequent tokens and not on rare ones, or early in a sequence and not late. The buckets:

- frequency: the rank of the target token by its count in the reference labels (the transfer set's,
  else the set's own): ranks 1–10, 11–100, 101–1,000, …, and tokens the reference never has;
- position: the target's index t in its sequence (0 = the first token predicted), in powers of two:
  0, 1, 2–3, 4–7, …, the last bucket open-ended.

Each bucket's count and the sums of a few per-example values come from the streaming statistics
(exact, additive); :func:`breakdown_of` turns them into means.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FREQUENCY, POSITION = "frequency", "position"
FREQUENCY_BUCKETS = 7  # ranks 1-10, 11-100, …, 100,001-1,000,000, and unseen
POSITION_BUCKETS = 12  # 0, 1, 2-3, …, 512-1023, ≥ 1024
N_BUCKETS = {FREQUENCY: FREQUENCY_BUCKETS, POSITION: POSITION_BUCKETS}


@dataclass(frozen=True)
class Breakdown:
    """Means of a few per-example values per bucket of one stratification (NaN where a bucket is empty
    or a value was not measured, e.g. without a student); buckets with no example are left out."""

    by: str  # FREQUENCY or POSITION
    buckets: tuple[str, ...]  # bucket names: 'rank 1-10', …; '0', '1', '2-3', …
    count: np.ndarray  # (n_buckets,) examples per bucket
    means: dict[str, np.ndarray]  # meaning ('teacher_accuracy', …) -> (n_buckets,)

    def to_dict(self) -> dict:
        return {"by": self.by, "buckets": list(self.buckets), "count": self.count, **self.means}

    @classmethod
    def from_dict(cls, value: dict) -> "Breakdown":
        means = {name: np.array([np.nan if v is None else v for v in means], dtype=float)
                 for name, means in value.items() if name not in ("by", "buckets", "count")}
        return cls(value["by"], tuple(value["buckets"]), np.asarray(value["count"], dtype=np.int64), means)


def frequency_buckets(labels: np.ndarray, reference_counts: np.ndarray) -> np.ndarray:
    """The frequency bucket of each label: ranks 1–10 → 0, 11–100 → 1, 101–1,000 → 2, … (floor(log10(rank − 1))),
    with rank the place of the label's class by descending count in ``reference_counts`` (ties: lower
    class id first); a class counted 0 times is 'unseen' (the last bucket)."""
    order = np.lexsort((np.arange(reference_counts.size), -reference_counts))
    rank = np.empty(reference_counts.size, dtype=np.int64)
    rank[order] = np.arange(1, reference_counts.size + 1)
    bucket = np.minimum(np.floor(np.log10(np.maximum(rank - 1, 1))).astype(np.int64), FREQUENCY_BUCKETS - 2)
    bucket[reference_counts == 0] = FREQUENCY_BUCKETS - 1
    return bucket[labels]


def position_buckets(positions: np.ndarray) -> np.ndarray:
    """The position bucket of each target index t: 0 → 0, 1 → 1, 2–3 → 2, 4–7 → 3, …, the last open-ended."""
    positions = np.asarray(positions, dtype=np.int64)
    bucket = np.zeros(positions.size, dtype=np.int64)
    positive = positions > 0
    bucket[positive] = np.floor(np.log2(positions[positive])).astype(np.int64) + 1
    return np.minimum(bucket, POSITION_BUCKETS - 1)


def bucket_names(by: str) -> tuple[str, ...]:
    """The names of a stratification's buckets, in bucket order."""
    if by == FREQUENCY:
        names = ["rank 1-10"] + [f"rank {10 ** k + 1:,}-{10 ** (k + 1):,}" for k in range(1, FREQUENCY_BUCKETS - 1)]
        return tuple(names[:FREQUENCY_BUCKETS - 1]) + ("unseen",)
    names = ["0", "1"] + [f"{2 ** (k - 1)}-{2 ** k - 1}" for k in range(2, POSITION_BUCKETS - 1)]
    return tuple(names) + (f"≥ {2 ** (POSITION_BUCKETS - 2)}",)


def breakdown_of(by: str, count: np.ndarray, sums: dict[str, np.ndarray | None]) -> Breakdown:
    """The per-bucket means from per-bucket counts and sums (meaning -> (n_buckets,), or None where not
    measured: NaN), empty buckets left out."""
    keep = np.flatnonzero(count > 0)
    names = bucket_names(by)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = {meaning: np.full(keep.size, np.nan) if total is None else total[keep] / count[keep]
                 for meaning, total in sums.items()}
    return Breakdown(by, tuple(names[k] for k in keep), count[keep].astype(np.int64), means)
