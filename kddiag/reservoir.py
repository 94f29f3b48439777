"""A fixed-seed sample of examples that does not depend on batch order or on how the data is sharded.

Every example gets a priority, a fixed 64-bit hash of its global index (splitmix64, a bijection);
a :class:`Reservoir` of capacity R keeps the R examples with the smallest priorities. The kept set is
a function of the set of indices alone: feeding the examples in any batches, in any order, or on any
number of shards merged afterwards gives the same sample, and :meth:`Reservoir.sorted` returns it
ordered by index. With at most R examples it keeps them all.
"""
from __future__ import annotations

import numpy as np

_SEED = np.uint64(0x5EED_0000_0000_0001)


def priority(index: np.ndarray) -> np.ndarray:
    """splitmix64 of ``index`` (int64 global indices) as uint64: a fixed pseudo-random order of examples."""
    with np.errstate(over="ignore"):
        z = np.asarray(index, dtype=np.int64).astype(np.uint64) ^ _SEED
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


class Reservoir:
    """The ``capacity`` examples of smallest :func:`priority`, each with its named per-example arrays.

    ``add`` takes global indices and arrays whose first axis runs over those examples (1-D values or
    2-D rows such as logits); examples that cannot enter any more are dropped before anything is copied.
    Memory stays below twice the capacity.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = int(capacity)
        self.index = np.zeros(0, dtype=np.int64)
        self._priority = np.zeros(0, dtype=np.uint64)
        self.arrays: dict[str, np.ndarray] = {}
        self._cut: np.uint64 | None = None  # once full: no example above this priority can enter

    def add(self, index: np.ndarray, arrays: dict[str, np.ndarray]) -> None:
        """Offer the examples ``index`` with their ``arrays`` (first axis = examples)."""
        index = np.asarray(index, dtype=np.int64)
        rank = priority(index)
        if self._cut is not None:
            keep = np.flatnonzero(rank < self._cut)
            if keep.size < index.size:
                index, rank = index[keep], rank[keep]
                arrays = {name: value[keep] for name, value in arrays.items()}
        if not index.size:
            return
        if not self.arrays:
            self.arrays = {name: np.asarray(value)[:0] for name, value in arrays.items()}
        self.index = np.concatenate((self.index, index))
        self._priority = np.concatenate((self._priority, rank))
        self.arrays = {name: np.concatenate((self.arrays[name], np.asarray(arrays[name]))) for name in self.arrays}
        if self.index.size > 2 * self.capacity:
            self._prune()

    def merge(self, other: "Reservoir") -> None:
        """Add every example ``other`` kept."""
        self.add(other.index, other.arrays)

    def sorted(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The kept examples' indices and arrays, ordered by index."""
        self._prune()
        order = np.argsort(self.index, kind="stable")
        return self.index[order], {name: value[order] for name, value in self.arrays.items()}

    def _prune(self) -> None:
        if self.index.size <= self.capacity:
            return
        keep = np.argpartition(self._priority, self.capacity - 1)[:self.capacity]
        self.index, self._priority = self.index[keep], self._priority[keep]
        self.arrays = {name: value[keep] for name, value in self.arrays.items()}
        self._cut = self._priority.max()
