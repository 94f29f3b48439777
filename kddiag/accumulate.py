"""Streaming, mergeable statistics of one data set: what the measure stage reads, batch after batch.

A :class:`SetAccumulator` takes the models' outputs one :class:`~kddiag.outputs.Batch` at a time
(``update``), merges with the accumulator of another shard of the same set (``merge``) and hands the
measure stage a :class:`~kddiag.summary.SetSummary` (``summary``). No (n_samples, n_classes) array of the whole set is
ever held. What it keeps:

- exact, additive statistics: per-example quantities' count, sum and sum of squares
  (:class:`~kddiag.summary.Moments`), calibration bins, the target-confidence histogram, class sums
  (:class:`~kddiag.metrics._common.ClassSums`), the prediction confusion matrix, and the hardest
  examples (the lowest teacher p¹_y, a top-k);
- a fixed-seed :class:`~kddiag.reservoir.Reservoir` of per-example values (``EXAMPLE_SAMPLES``
  examples) for what needs the examples themselves: bootstrap intervals, the adaptive ECE, medians,
  Spearman correlations, the AUROC, the per-example plots and the relabelling's chance level;
- a smaller one of logit and feature rows (``ROW_SAMPLES`` examples, fewer when C is large) for the
  fitted temperature T*, the temperature what-if, k-NN difficulty and linear CKA.

Statistics are computed per chunk of ``chunk_rows`` consecutive examples starting at a multiple of it,
and the chunks' sums are combined with compensated (moments, bins) or fixed-point (class sums) addition;
the reservoirs keep the examples of smallest hash. So the summary is the same, to the last bit, whatever
the batches and whatever number of shards of whole chunks were merged.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from kddiag.levels import COLUMNS, Block
from kddiag.metrics import instance, strata, universe
from kddiag.metrics._common import ClassSums, CompensatedSum, SoftmaxStats, fused_softmax_stats
from kddiag.outputs import Batch, SetOutputs, is_device_array
from kddiag.reservoir import Reservoir, kept_indices
from kddiag.summary import Moments, SetSummary
from kddiag.types import ROLES

EXAMPLE_SAMPLES = 32_768  # per-example values of at most this many examples (fixed-seed reservoir)
ROW_SAMPLES = 5_000  # logit and feature rows of at most this many examples …
ROW_ELEMENTS = 1 << 23  # … and at most this many logits per model (at least MIN_ROW_SAMPLES rows)
MIN_ROW_SAMPLES = 256
CHUNK_ROWS = 8_192  # statistics are updated per chunk of at most this many examples (a power of two) …
CHUNK_ELEMENTS = 1 << 23  # … and about this many logits per model; shards are whole CHUNK_ROWS
DENSE_CLASSES = 2_048  # class-by-class sums over every class up to this many classes …
TOP_CLASSES = 1_024  # … beyond it over the TOP_CLASSES most frequent labels (ties: lower id)


MEAN_COLUMNS = tuple(name for name, column in COLUMNS.items() if column.mean)
SAMPLED_COLUMNS = tuple(name for name, column in COLUMNS.items() if column.sample)
STRATUM_COLUMNS = tuple(name for name, column in COLUMNS.items() if column.stratum)
STRATUM_MEANINGS = tuple(COLUMNS[name].stratum for name in STRATUM_COLUMNS)


def kept_classes(label_count: np.ndarray, *, dense: int | None = None, top: int | None = None) -> np.ndarray | None:
    """The classes class-by-class statistics keep: all (None) up to ``dense`` (DENSE_CLASSES) classes,
    else the ``top`` (TOP_CLASSES) most frequent labels (ties: lower class id), sorted."""
    dense = DENSE_CLASSES if dense is None else dense
    top = TOP_CLASSES if top is None else top
    if label_count.size <= dense:
        return None
    order = np.lexsort((np.arange(label_count.size), -label_count))
    return np.sort(order[:top])


def chunk_rows(n_classes: int) -> int:
    """Examples per statistics update: a power of two, at most CHUNK_ROWS, about CHUNK_ELEMENTS logits."""
    rows = max(1, min(CHUNK_ROWS, CHUNK_ELEMENTS // n_classes))
    return 1 << (rows.bit_length() - 1)


def row_samples(n_classes: int) -> int:
    """Rows the row reservoir keeps for C classes."""
    return max(MIN_ROW_SAMPLES, min(ROW_SAMPLES, ROW_ELEMENTS // n_classes))


def row_sample(n_samples: int, n_classes: int) -> np.ndarray:
    """The sorted indices of the examples the row reservoir keeps of a set of ``n_samples``."""
    return kept_indices(n_samples, min(row_samples(n_classes), EXAMPLE_SAMPLES))


class SetAccumulator:
    """Streaming statistics of one data set (see the module docstring).

    ``kept`` are the classes of class-by-class statistics (:func:`kept_classes` of the whole set's
    labels, the same on every shard). ``example_samples``/``row_samples_`` bound the reservoirs;
    ``n_total``, the whole set's size when known, lets them copy only the rows they will keep.
    """

    def __init__(self, name: str, *, n_classes: int, roles: tuple[str, ...], temperature: float, alpha: float,
                 kept: np.ndarray | None = None, example_samples: int = EXAMPLE_SAMPLES,
                 row_samples_: int | None = None, n_total: int | None = None) -> None:
        self.name, self.n_classes, self.roles = name, n_classes, tuple(r for r in ROLES if r in roles)
        self.temperature, self.alpha = temperature, alpha
        self.kept = kept
        size = n_classes if kept is None else kept.size
        self._position = None if kept is None else _positions(kept, n_classes)
        self.n_samples = 0
        self.label_count = np.zeros(n_classes, dtype=np.int64)
        self.moments: Moments | None = None
        self.calibration = {role: CompensatedSum((3, universe.N_BINS)) for role in self.roles}
        self.target_histogram = np.zeros(universe.HISTOGRAM_BINS, dtype=np.int64)
        self.class_sums = {role: ClassSums(n_classes, n_bins=universe.N_BINS, kept=kept) for role in self.roles}
        self.confusion = np.zeros((size, size), dtype=np.int64)
        self.hardest: dict[str, np.ndarray] = {}
        rows = row_samples(n_classes) if row_samples_ is None else row_samples_
        self.examples = Reservoir(example_samples, n_total=n_total)
        self.rows = Reservoir(min(rows, example_samples), n_total=n_total)  # a subset of the example reservoir
        self.feature_roles: set[str] = set()
        self.weights: dict[str, np.ndarray] = {}  # role -> logit-layer weight, where found (set by collection)
        self.chunk_rows = chunk_rows(n_classes)
        self._pending: list[_Rows] = []  # consecutive rows not yet in a whole chunk
        self._join_space: dict[str, np.ndarray] = {}  # role -> the chunk-sized array joined rows are copied into
        self.strata: dict[str, tuple[np.ndarray, dict[str, CompensatedSum]]] = {}  # name -> (count, sums by
        # stratum meaning)

    def update(self, batch: Batch) -> None:
        """Add one batch of outputs (every role of this set, examples ``batch.start``, ``batch.start + 1``, …).

        Rows go to the row reservoir at once; the statistics are computed per chunk of ``chunk_rows``
        examples starting at a multiple of it, whatever the batches, so that sums are taken over the
        same rows in any run. Consecutive batches fill a chunk; a gap flushes what is pending.
        """
        index = batch.start + np.arange(batch.labels.size)
        rows = {"labels": batch.labels, **{f"{role}.logits": value for role, value in batch.logits.items()}}
        for role, features in batch.features.items():
            self.feature_roles.add(role)
            rows[f"{role}.features"] = features
        self.rows.add(index, rows)
        if self._pending and self._pending_end() != batch.start:
            self.flush()
        self._pending.append(_Rows(batch.start, batch.labels, dict(batch.logits), dict(batch.strata)))
        end = self._pending_end()
        start = self._pending[0].start
        for boundary in range(start - start % self.chunk_rows + self.chunk_rows, end + 1, self.chunk_rows):
            self._flush_until(boundary)  # one chunk at a time

    def __getstate__(self) -> dict:
        """What a rank sends (``torch.distributed.gather_object``): not the scratch arrays of joined rows."""
        return {**self.__dict__, "_join_space": {}}

    def flush(self) -> None:
        """Compute the statistics of the pending rows (an incomplete chunk at the end of the data), and let
        the scratch array of joined rows go (a set's end or a gap: the next rows start a new chunk)."""
        if self._pending:
            self._flush_until(self._pending_end())
        self._join_space.clear()

    def _pending_end(self) -> int:
        return self._pending[-1].end

    def _flush_until(self, stop: int) -> None:
        """The statistics of the pending rows before ``stop``; the rest stays pending. Only rows of a chunk
        that straddles two batches are copied (joined); every other chunk is read in place."""
        head = [part.head(stop) for part in self._pending if part.start < stop]
        self._pending = [part.tail(stop) for part in self._pending if part.end > stop]
        self._update_statistics(head[0] if len(head) == 1 else _Rows.joined(head, self._join_space))

    def _update_statistics(self, rows: "_Rows") -> None:
        start, y = rows.start, rows.labels
        one, teacher_t, student_t = self._softmax(y, rows.logits)
        block = Block(COLUMNS, y, rows.logits, one, teacher_t, student_t, alpha=self.alpha)
        for name, bucket in rows.strata.items():
            self._add_stratum(name, np.asarray(bucket, dtype=np.int64), block)
        moments = Moments(block.columns(MEAN_COLUMNS))
        if self.moments is None:
            self.moments = moments
        else:
            self.moments.merge(moments)
        self.n_samples += y.size
        self.label_count += np.bincount(y, minlength=self.n_classes)
        for role, stats in one.items():
            self.calibration[role].add(universe.calibration_bins(stats, y))
        self.target_histogram += universe.target_confidence_histogram_of(teacher_t).counts
        if "student" in one:
            self._add_confusion(one["teacher"].prediction, one["student"].prediction)
        index = start + np.arange(y.size)
        self._add_hardest(one["teacher"].target_log_prob, y, one["teacher"].prediction, index)
        self.examples.add(index, block.columns(SAMPLED_COLUMNS))

    def _add_stratum(self, name: str, bucket: np.ndarray, block: Block) -> None:
        """Count the examples per bucket of stratum ``name`` and sum each stratum column's values per bucket."""
        n = strata.N_BUCKETS[name]
        count, sums = self.strata.setdefault(name, (np.zeros(n, dtype=np.int64), {}))
        count += np.bincount(bucket, minlength=n)
        for column, values in block.columns(STRATUM_COLUMNS).items():
            sums.setdefault(COLUMNS[column].stratum, CompensatedSum(n)).add(np.bincount(bucket, weights=values,
                                                                                        minlength=n))

    def merge(self, other: "SetAccumulator") -> None:
        """Add the statistics of another shard of the same set (same classes, roles and settings)."""
        if (other.name, other.n_classes, other.roles) != (self.name, self.n_classes, self.roles):
            raise ValueError("cannot merge accumulators of different sets, classes or roles")
        self.flush()
        other.flush()
        if other.moments is not None:
            if self.moments is None:
                self.moments = other.moments
            else:
                self.moments.merge(other.moments)
        self.n_samples += other.n_samples
        self.label_count += other.label_count
        for role in self.roles:
            self.calibration[role].merge(other.calibration[role])
            self.class_sums[role].merge(other.class_sums[role])
        self.target_histogram += other.target_histogram
        self.confusion += other.confusion
        if other.hardest:
            self._add_hardest(*(other.hardest[key] for key in ("score", "label", "prediction", "index")))
        for name, (count, sums) in other.strata.items():
            mine_count, mine_sums = self.strata.setdefault(name, (np.zeros_like(count), {}))
            mine_count += count
            for column, total in sums.items():
                if column in mine_sums:
                    mine_sums[column].merge(total)
                else:
                    mine_sums[column] = total
        self.examples.merge(other.examples)
        self.rows.merge(other.rows)
        self.feature_roles |= other.feature_roles
        self.weights = {**other.weights, **self.weights}

    def summary(self) -> SetSummary:
        """The statistics as the measure stage reads them."""
        self.flush()
        index, examples = self.examples.sorted()
        row_index, rows = self.rows.sorted()
        hardest = instance.hardest_examples_of(self.hardest["score"], self.hardest["label"],
                                               self.hardest["prediction"], index=self.hardest["index"])
        return SetSummary(
            name=self.name, n_samples=self.n_samples, n_classes=self.n_classes, roles=self.roles,
            temperature=self.temperature, alpha=self.alpha, label_count=self.label_count, moments=self.moments,
            calibration={role: bins.value() for role, bins in self.calibration.items()}, target_histogram=self.target_histogram, class_sums=self.class_sums,
            kept_classes=self.kept, confusion=self.confusion, hardest=hardest,
            examples={"index": index, **examples}, rows={"index": row_index, **rows},
            weights=dict(self.weights), feature_roles=frozenset(self.feature_roles),
            strata={name: (count.copy(), {meaning: sums[meaning].value() if meaning in sums else None
                                          for meaning in STRATUM_MEANINGS})
                    for name, (count, sums) in self.strata.items()},
        )

    def _softmax(self, y: np.ndarray, logits: dict
                 ) -> tuple[dict[str, SoftmaxStats], SoftmaxStats, SoftmaxStats | None]:
        """Each model at τ = 1 (class sums added), teacher and student at τ, the teacher with cross terms
        against the student (no student: the teacher's alone, student at τ None), in one fused pass: where
        the logits are (torch, on their device) when a model's logits came as a tensor, else numpy. Stored
        logits beside a tensor go to its device (and stay there in ``logits``, for the columns)."""
        device = next((value.device for value in logits.values() if is_device_array(value)), None)
        if device is None:
            return fused_softmax_stats(logits, y, temperature=self.temperature, class_sums=self.class_sums)
        import torch

        from kddiag.metrics.fused import fused_softmax_stats_torch

        for role, value in logits.items():
            if not is_device_array(value):
                logits[role] = torch.as_tensor(np.ascontiguousarray(value), device=device)
        return fused_softmax_stats_torch(logits, y, temperature=self.temperature, class_sums=self.class_sums)

    def _add_confusion(self, teacher_pred: np.ndarray, student_pred: np.ndarray) -> None:
        if self._position is not None:
            teacher_pred, student_pred = self._position[teacher_pred], self._position[student_pred]
            both = (teacher_pred >= 0) & (student_pred >= 0)
            teacher_pred, student_pred = teacher_pred[both], student_pred[both]
        np.add.at(self.confusion, (teacher_pred, student_pred), 1)

    def _add_hardest(self, score, label, prediction, index) -> None:
        """Keep the N_HARDEST lowest teacher log p¹_y (ties by index) among those seen and these."""
        if self.hardest:
            score, label, prediction, index = (np.concatenate((self.hardest[key], new)) for key, new in
                                               zip(("score", "label", "prediction", "index"),
                                                   (score, label, prediction, index)))
        k = min(instance.N_HARDEST, score.size)
        order = np.lexsort((index, score))[:k]
        self.hardest = {"score": score[order], "label": label[order], "prediction": prediction[order],
                        "index": index[order]}


def summarize(data: SetOutputs, *, temperature: float, alpha: float) -> SetSummary:
    """The :class:`SetSummary` of outputs held in memory, in one pass (features kept for a subset of rows
    are NaN elsewhere)."""
    roles = tuple(role for role in ROLES if getattr(data, role) is not None)
    outputs = {role: getattr(data, role) for role in roles}
    accumulator = SetAccumulator(data.dataset, n_classes=data.n_classes, roles=roles, temperature=temperature,
                                 alpha=alpha, kept=kept_classes(np.bincount(data.labels, minlength=data.n_classes)),
                                 n_total=data.labels.size)
    features = {}
    for role, out in outputs.items():
        if out.features is not None and out.feature_rows is not None:
            full = np.full((data.labels.size, out.features.shape[1]), np.nan, dtype=out.features.dtype)
            full[out.feature_rows] = out.features
            features[role] = full
        elif out.features is not None:
            features[role] = out.features
    accumulator.update(Batch(0, data.labels, {role: out.logits for role, out in outputs.items()}, features,
                             {role: out.source for role, out in outputs.items()}))
    accumulator.weights = {role: out.weight for role, out in outputs.items() if out.weight is not None}
    return accumulator.summary()


def _positions(kept: np.ndarray, n_classes: int) -> np.ndarray:
    position = np.full(n_classes, -1, dtype=np.int64)
    position[kept] = np.arange(kept.size)
    return position


@dataclass(frozen=True)
class _Rows:
    """Consecutive examples ``start``, ``start + 1``, … of a set: labels, logits by role, token-position
    buckets by stratum name."""

    start: int
    labels: np.ndarray
    logits: dict[str, np.ndarray]
    strata: dict[str, np.ndarray]

    @property
    def end(self) -> int:
        return self.start + self.labels.size

    def head(self, stop: int) -> "_Rows":
        """The rows before example ``stop`` (views, not copies)."""
        return self._sliced(slice(0, max(0, stop - self.start)), self.start)

    def tail(self, stop: int) -> "_Rows":
        """The rows from example ``stop`` on (views)."""
        cut = max(0, stop - self.start)
        return self._sliced(slice(cut, None), self.start + cut)

    def _sliced(self, rows: slice, start: int) -> "_Rows":
        return _Rows(start, self.labels[rows], {k: v[rows] for k, v in self.logits.items()},
                     {k: v[rows] for k, v in self.strata.items()})

    @staticmethod
    def joined(parts: list["_Rows"], space: dict[str, np.ndarray]) -> "_Rows":
        """Consecutive parts as one (copied; numpy logits into ``space``'s arrays, reused chunk after chunk:
        fresh chunk-sized arrays cost page faults on every chunk)."""
        first = parts[0]
        return _Rows(first.start, np.concatenate([part.labels for part in parts]),
                     {k: _concatenated([part.logits[k] for part in parts], space, k) for k in first.logits},
                     {k: np.concatenate([part.strata[k] for part in parts]) for k in first.strata})


def _concatenated(parts: list, space: dict[str, np.ndarray], name: str) -> Any:
    """Consecutive rows as one array: numpy arrays with numpy, in ``space[name]`` (grown when too small),
    tensors with torch (on their device)."""
    if is_device_array(parts[0]):
        import torch

        return torch.cat(parts)
    n_rows = sum(len(part) for part in parts)
    shape, dtype = (n_rows, *parts[0].shape[1:]), np.result_type(*parts)
    buffer = space.get(name)
    if buffer is None or buffer.shape[0] < n_rows or buffer.shape[1:] != shape[1:] or buffer.dtype != dtype:
        buffer = space[name] = np.empty((max(n_rows, 0 if buffer is None else buffer.shape[0]), *shape[1:]), dtype)
    return np.concatenate(parts, out=buffer[:n_rows])
