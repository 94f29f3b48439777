"""Streaming, mergeable statistics of one data set: what the measure stage reads, batch after batch.

A :class:`SetAccumulator` takes the models' outputs one :class:`~kddiag.types.Batch` at a time
(``update``), merges with the accumulator of another shard of the same set (``merge``) and hands the
measure stage a :class:`SetSummary` (``summary``). No (n_samples, n_classes) array of the whole set is
ever held. What it keeps:

- exact, additive statistics: per-example quantities' count, sum and sum of squares
  (:class:`Moments`), calibration bins, the target-confidence histogram, class sums
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

from dataclasses import dataclass, field

import numpy as np

from kddiag.metrics import domain, instance, strata, universe
from kddiag.metrics._common import ClassSums, CompensatedSum, SoftmaxStats, fused_softmax_stats
from kddiag.reservoir import Reservoir, kept_indices
from kddiag.types import ROLES, Batch, SetOutputs

EXAMPLE_SAMPLES = 32_768  # per-example values of at most this many examples (fixed-seed reservoir)
ROW_SAMPLES = 5_000  # logit and feature rows of at most this many examples …
ROW_ELEMENTS = 1 << 23  # … and at most this many logits per model (at least MIN_ROW_SAMPLES rows)
MIN_ROW_SAMPLES = 256
CHUNK_ROWS = 8_192  # statistics are updated per chunk of at most this many examples (a power of two) …
CHUNK_ELEMENTS = 1 << 23  # … and about this many logits per model; shards are whole CHUNK_ROWS
STRATUM = "stratum:"  # pending per-example bucket ids travel with the logits under this prefix
DENSE_CLASSES = 2_048  # class-by-class sums over every class up to this many classes …
TOP_CLASSES = 1_024  # … beyond it over the TOP_CLASSES most frequent labels (ties: lower id)


class Moments:
    """Count, sum and sum of squares of named per-example quantities over their finite values, and how
    many values were not finite. Additive: batches and shards merge by adding (sums compensated)."""

    def __init__(self, columns: dict[str, np.ndarray]) -> None:
        """The moments of one batch's ``columns`` (name -> per-example values)."""
        self.names = tuple(sorted(columns))
        values = [np.asarray(columns[name], dtype=np.float64) for name in self.names]
        finite = [np.isfinite(v) for v in values]
        self.count = np.array([f.sum() for f in finite], dtype=np.int64)
        self.nonfinite = np.array([f.size - f.sum() for f in finite], dtype=np.int64)
        self._total, self._total_sq = CompensatedSum(len(values)), CompensatedSum(len(values))
        self._total.add(np.array([v[f].sum() for v, f in zip(values, finite)]))
        self._total_sq.add(np.array([np.dot(v[f], v[f]) for v, f in zip(values, finite)]))

    def merge(self, other: "Moments") -> None:
        if other.names != self.names:
            raise ValueError(f"cannot merge moments of {other.names} into {self.names}")
        self.count += other.count
        self.nonfinite += other.nonfinite
        self._total.merge(other._total)
        self._total_sq.merge(other._total_sq)

    def sum(self, name: str) -> float:
        """Sum of the finite values of ``name``."""
        return float(self._total.value()[self.names.index(name)])

    def mean(self, name: str) -> float | None:
        """Mean of ``name``; None when a value was not finite or there is none."""
        k = self.names.index(name)
        return self.sum(name) / self.count[k] if self.count[k] and not self.nonfinite[k] else None

    def std(self, name: str) -> float | None:
        """Population standard deviation of ``name`` (as ``np.std``); None as for :meth:`mean`."""
        mean = self.mean(name)
        if mean is None:
            return None
        k = self.names.index(name)
        return float(np.sqrt(max(self._total_sq.value()[k] / self.count[k] - mean * mean, 0.0)))


@dataclass(frozen=True)
class SetSummary:
    """Everything the measure stage reads about one data set (see the module docstring)."""

    name: str  # EVAL or TRANSFER
    n_samples: int
    n_classes: int
    roles: tuple[str, ...]
    temperature: float
    alpha: float
    label_count: np.ndarray  # (C,)
    moments: Moments
    calibration: dict[str, np.ndarray]  # role -> (3, N_BINS) bins at τ = 1
    target_histogram: np.ndarray  # counts of the teacher's p_y at τ
    class_sums: dict[str, ClassSums]  # role -> class sums at τ = 1
    kept_classes: np.ndarray | None  # the classes of class-by-class statistics; None: all
    confusion: np.ndarray  # (K, K) teacher prediction × student prediction counts over kept classes
    hardest: tuple[instance.HardExample, ...]
    examples: dict[str, np.ndarray]  # reservoir, by index ("index" included)
    rows: dict[str, np.ndarray]  # row reservoir, by index ("index", "labels", "<role>.logits", "<role>.features")
    weights: dict[str, np.ndarray]  # role -> logit-layer weight, where found
    feature_roles: frozenset[str]  # roles whose features were seen
    strata: dict = field(default_factory=dict)  # name -> (count per bucket, column -> sum per bucket)
    # (kddiag.metrics.strata; token positions only)

    def mean(self, name: str) -> float | None:
        return self.moments.mean(name)


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
        self._pending: list[tuple[int, np.ndarray, dict[str, np.ndarray]]] = []  # (start, labels, logits
        # and strata buckets under STRATUM + name)
        self.strata: dict[str, tuple[np.ndarray, dict[str, CompensatedSum]]] = {}  # name -> (count, sums)

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
        self._pending.append((batch.start, batch.labels, {**batch.logits, **{STRATUM + name: bucket for name, bucket
                                                                              in batch.strata.items()}}))
        end = self._pending_end()
        start = self._pending[0][0]
        for boundary in range(start - start % self.chunk_rows + self.chunk_rows, end + 1, self.chunk_rows):
            self._flush_until(boundary)  # one chunk at a time

    def flush(self) -> None:
        """Compute the statistics of the pending rows (an incomplete chunk at the end of the data)."""
        if self._pending:
            self._flush_until(self._pending_end())

    def _pending_end(self) -> int:
        start, labels, _ = self._pending[-1]
        return start + labels.size

    def _flush_until(self, stop: int) -> None:
        """The statistics of the pending rows before ``stop``; the rest stays pending. Only rows of a chunk
        that straddles two batches are copied (joined); every other chunk is read in place."""
        start = self._pending[0][0]
        head, rest = [], []
        for part_start, labels, values in self._pending:
            cut = min(labels.size, max(0, stop - part_start))
            if cut:
                head.append((labels[:cut], {name: value[:cut] for name, value in values.items()}))
            if cut < labels.size:
                rest.append((part_start + cut, labels[cut:], {name: value[cut:] for name, value in values.items()}))
        self._pending = rest
        if len(head) == 1:
            labels, values = head[0]
        else:
            labels = np.concatenate([part[0] for part in head])
            values = {name: np.concatenate([part[1][name] for part in head]) for name in head[0][1]}
        self._update_statistics(start, labels, values)

    def _update_statistics(self, start: int, y: np.ndarray, logits: dict[str, np.ndarray]) -> None:
        strata = {key[len(STRATUM):]: logits.pop(key) for key in list(logits) if key.startswith(STRATUM)}
        one, teacher_t, student_t = self._softmax(y, logits)
        columns = example_columns(y, one, teacher_t, student_t, alpha=self.alpha)
        for name, bucket in strata.items():
            self._add_stratum(name, np.asarray(bucket, dtype=np.int64), columns)
        moments = Moments({name: columns[name] for name in MOMENT_COLUMNS if name in columns})
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
        self.examples.add(index, {name: columns[name] for name in RESERVOIR_COLUMNS if name in columns})

    def _add_stratum(self, name: str, bucket: np.ndarray, columns: dict[str, np.ndarray]) -> None:
        """Count the examples per bucket of stratum ``name`` and sum the STRATUM_COLUMNS values per bucket."""
        n = strata.N_BUCKETS[name]
        count, sums = self.strata.setdefault(name, (np.zeros(n, dtype=np.int64), {}))
        count += np.bincount(bucket, minlength=n)
        for column in strata.STRATUM_COLUMNS:
            if column in columns:
                sums.setdefault(column, CompensatedSum(n)).add(np.bincount(bucket, weights=columns[column],
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
            strata={name: (count.copy(), {column: total.value() for column, total in sums.items()})
                    for name, (count, sums) in self.strata.items()},
        )

    def _softmax(self, y: np.ndarray, logits: dict[str, np.ndarray]
                 ) -> tuple[dict[str, SoftmaxStats], SoftmaxStats, SoftmaxStats | None]:
        """Each model at τ = 1 (class sums added), teacher and student at τ, the teacher with cross terms
        against the student (no student: the teacher's alone, student at τ None), in one fused pass."""
        return fused_softmax_stats(logits, y, temperature=self.temperature, class_sums=self.class_sums)

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


# ---------------------------------------------------------------- per-example quantities

MOMENT_COLUMNS = (
    "teacher.correct", "student.correct", "baseline.correct", "agree", "agree_where_teacher_correct",
    "baseline_agree", "kl", "kl_t", "kl_reverse", "kl_reverse_t", "gain",
    "teacher.nll", "student.nll", "baseline.nll", "teacher.brier", "student.brier", "baseline.brier",
    "smoothing_t", "saturated_t", "entropy_t",
    "teacher.dark_knowledge", "student.dark_knowledge", "baseline.dark_knowledge", "dark_knowledge_t",
    "alternatives_t", "w", "w_low", "w_untrained", "w_untrained_low", "tckd", "nckd", "nckd_weight",
)
RESERVOIR_COLUMNS = (
    "labels", "teacher.prediction", "student.prediction", "teacher.correct", "student.correct",
    "baseline.correct", "agree", "kl", "kl_reverse", "gain", "teacher.confidence", "student.confidence", "baseline.confidence",
    "teacher.logit_spread", "student.logit_spread", "baseline.logit_spread", "teacher.nontarget_log_mass",
    "target_prob_t", "w", "w_untrained", "baseline.nll",
)


def example_columns(y: np.ndarray, one: dict[str, SoftmaxStats], teacher_t: SoftmaxStats,
                    student_t: SoftmaxStats | None, *, alpha: float) -> dict[str, np.ndarray]:
    """Every per-example quantity the measurements average or sample, named as in MOMENT_COLUMNS and
    RESERVOIR_COLUMNS (a model's only with that model, comparisons with the student only with a student;
    dark knowledge only with C ≥ 3)."""
    columns: dict[str, np.ndarray] = {"labels": y}
    for role, stats in one.items():
        correct = (stats.prediction == y).astype(np.float64)
        columns.update({
            f"{role}.prediction": stats.prediction, f"{role}.correct": correct,
            f"{role}.confidence": np.exp(stats.max_log_prob), f"{role}.nll": -stats.target_log_prob,
            f"{role}.brier": stats.nontarget_mass**2 + stats.nontarget_sum_sq,
            f"{role}.logit_spread": stats.logit_spread,
        })
        dark = domain.dark_knowledge_per_example(stats)
        if dark is not None:
            columns[f"{role}.dark_knowledge"] = dark
    columns.update(smoothing_t=teacher_t.nontarget_mass,
                   saturated_t=(teacher_t.target_log_prob > np.log(universe.SATURATION)).astype(np.float64),
                   entropy_t=teacher_t.entropy, target_prob_t=teacher_t.target_prob,
                   **{"teacher.nontarget_log_mass": one["teacher"].nontarget_log_mass})
    if "baseline" in one:
        columns["baseline_agree"] = (one["teacher"].prediction == one["baseline"].prediction).astype(np.float64)
    dark_t = domain.dark_knowledge_per_example(teacher_t)
    if dark_t is not None:
        columns["dark_knowledge_t"] = dark_t
    columns["alternatives_t"] = domain.dark_knowledge_alternatives_per_example(teacher_t)
    untrained = instance.untrained_rescaling_weights_of(teacher_t, alpha=alpha)
    columns.update(w_untrained=untrained, w_untrained_low=(untrained < instance.LOW_WEIGHT).astype(np.float64),
                   nckd_weight=teacher_t.nontarget_mass)
    if student_t is None:
        return columns
    agree = (one["teacher"].prediction == one["student"].prediction).astype(np.float64)
    w = instance.rescaling_weights_of(teacher_t, student_t, one["student"], alpha=alpha)
    decoupled = instance.decoupled_kd_of(teacher_t, student_t)
    columns.update(agree=agree, agree_where_teacher_correct=agree * columns["teacher.correct"],
                   kl=one["teacher"].kl_divergence(), kl_t=teacher_t.kl_divergence(),
                   kl_reverse=one["student"].kl_divergence_to(one["teacher"]),
                   kl_reverse_t=student_t.kl_divergence_to(teacher_t),
                   w=w, w_low=(w < instance.LOW_WEIGHT).astype(np.float64), tckd=decoupled.tckd, nckd=decoupled.nckd)
    if "baseline" in one:
        columns["gain"] = columns["student.correct"] - columns["baseline.correct"]
    return columns
