"""A fixed-seed sample of examples that does not depend on batch order or on how the data is sharded.

Every example gets a priority, a fixed 64-bit hash of its global index (splitmix64, a bijection);
a :class:`Reservoir` of capacity R keeps the R examples with the smallest priorities. The kept set is
a function of the set of indices alone: feeding the examples in any batches, in any order, or on any
number of shards merged afterwards gives the same sample, and :meth:`Reservoir.sorted` returns it
ordered by index. With at most R examples it keeps them all.
"""
from __future__ import annotations

import numpy as np

from kddiag.outputs import to_host

_SEED = np.uint64(0x5EED_0000_0000_0001)


def priority(index: np.ndarray) -> np.ndarray:
    """splitmix64 of ``index`` (int64 global indices) as uint64: a fixed pseudo-random order of examples."""
    with np.errstate(over="ignore"):
        z = np.asarray(index, dtype=np.int64).astype(np.uint64) ^ _SEED
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def kept_indices(n_total: int, capacity: int) -> np.ndarray:
    """The sorted indices a reservoir of ``capacity`` keeps of the examples 0 … n_total − 1: known before
    any example is seen when the set's size is, so that only those rows need be read or copied."""
    if n_total <= capacity:
        return np.arange(n_total)
    return np.sort(np.argpartition(priority(np.arange(n_total)), capacity - 1)[:capacity])


class Reservoir:
    """The ``capacity`` examples of smallest :func:`priority`, each with its named per-example arrays.

    ``add`` takes global indices and arrays whose first axis runs over those examples (1-D values or
    2-D rows such as logits); only the rows that rank among the ``capacity`` smallest priorities seen so
    far are copied, and they are kept as a list of chunks, so adding costs what those rows cost, not
    what the reservoir holds. Memory stays below about twice the capacity (once the capacity when the
    set's size is known).
    """

    def __init__(self, capacity: int, *, n_total: int | None = None) -> None:
        """``n_total``: the number of examples of the whole set, when known: ``add`` then writes only the
        rows of :func:`kept_indices` (the same sample, found without ranking) straight into their place."""
        self.capacity = int(capacity)
        self._known = None if n_total is None else kept_indices(n_total, self.capacity)
        self._placed: dict[str, np.ndarray] = {}  # with a known sample: its arrays, row i for _known[i]
        self._filled = np.zeros(0 if self._known is None else self._known.size, dtype=bool)
        self._chunks: list[tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]] = []  # (index, priority, arrays)
        self._priority = np.zeros(0, dtype=np.uint64)  # of every row held, for the cut
        self._cut: np.uint64 | None = None  # once full: rows above this priority can never be kept

    def add(self, index: np.ndarray, arrays: dict[str, np.ndarray]) -> None:
        """Offer the examples ``index`` with their ``arrays`` (first axis = examples; a tensor's kept rows
        are copied to the host)."""
        index = np.asarray(index, dtype=np.int64)
        if self._known is not None:
            self._place(index, arrays)
            return
        rank = priority(index)
        if self._cut is not None:
            keep = rank <= self._cut
        else:
            keep = np.ones(rank.size, dtype=bool)
        if self._priority.size + int(keep.sum()) > self.capacity:
            pool = np.concatenate((self._priority, rank[keep]))
            self._cut = np.partition(pool, self.capacity - 1)[self.capacity - 1]
            keep &= rank <= self._cut
        chosen = np.flatnonzero(keep)
        if not chosen.size:
            return
        self._chunks.append((index[chosen], rank[chosen], {name: to_host(value[chosen])
                                                           for name, value in arrays.items()}))
        self._priority = np.concatenate((self._priority, rank[chosen]))
        if self._priority.size > 2 * self.capacity:
            self._compact()

    def _place(self, index: np.ndarray, arrays: dict[str, np.ndarray]) -> None:
        """Write the rows of the known sample among ``index`` into their places."""
        at = np.minimum(np.searchsorted(self._known, index), self._known.size - 1)
        chosen = np.flatnonzero(self._known[at] == index)
        if not chosen.size:
            return
        if not self._placed:
            self._placed = {name: np.empty((self._known.size, *tuple(value.shape)[1:]), dtype=to_host(value[:0]).dtype)
                            for name, value in arrays.items()}
        for name, value in arrays.items():
            self._placed[name][at[chosen]] = to_host(value[chosen])
        self._filled[at[chosen]] = True

    def merge(self, other: "Reservoir") -> None:
        """Add every example ``other`` kept."""
        index, arrays = other.sorted()
        if index.size:
            self.add(index, arrays)

    def sorted(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The kept examples' indices and arrays, ordered by index."""
        if self._known is not None:
            if self._filled.all():
                return self._known, self._placed
            return self._known[self._filled], {name: value[self._filled] for name, value in self._placed.items()}
        self._compact()
        if not self._chunks:
            return np.zeros(0, dtype=np.int64), {}
        index, _, arrays = self._chunks[0]
        if np.all(index[1:] > index[:-1]):  # added in order: nothing to move
            return index, arrays
        order = np.argsort(index, kind="stable")
        return index[order], {name: value[order] for name, value in arrays.items()}

    def _compact(self) -> None:
        """One chunk holding the rows still at or below the cut."""
        if not self._chunks:
            return
        if len(self._chunks) == 1 and (self._cut is None or self._priority.max() <= self._cut):
            return
        index = np.concatenate([chunk[0] for chunk in self._chunks])
        rank = np.concatenate([chunk[1] for chunk in self._chunks])
        keep = slice(None) if self._cut is None else np.flatnonzero(rank <= self._cut)
        arrays = {name: np.concatenate([chunk[2][name] for chunk in self._chunks])[keep]
                  for name in self._chunks[0][2]}
        self._chunks = [(index[keep], rank[keep], arrays)]
        self._priority = rank[keep]
