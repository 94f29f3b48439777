"""Shared pieces of the metric modules: input checks and the one softmax pass every metric reuses.

Public metric functions check their inputs once (``check_*``) and then work on
:class:`SoftmaxStats`: per-example summaries of ``p = softmax(logits / temperature)`` split at the
label into the target probability ``p_y`` and the non-target distribution
``r = p_{k≠y} / (1 − p_y)``. Everything is computed in log-space from logits (logsumexp), so
probabilities that underflow never turn into ``log(0)``; ``log(1 − p_y)`` comes from the
logsumexp over the non-target logits, never from ``1 − p_y``.

The pass runs over blocks of rows in a few threads (numpy releases the GIL), so a
50,000 × 1,000 matrix is never copied whole; per-block results are combined in block order,
so results do not depend on the number of threads.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from kddiag.errors import KddiagError, as_float, shown_value

_BLOCK_ELEMENTS = 1 << 19  # rows per block ≈ this / n_classes (2 MB of float32 per array): measured on 2 cores,
# 0.6-0.65× the time of 1 << 17 (cache-sized blocks) at 1,000-4,096 classes, the same at 100 and 32,000: fewer
# blocks mean fewer of the pass's small numpy calls, which cost more than the cache misses
_TINY_NONTARGET = {np.dtype(np.float64): 1e-280, np.dtype(np.float32): 1e-30}  # below this the non-target
# sum is recomputed with its own shift
MIN_BLOCK_ROWS = 32  # measured: 32,000 classes 2.2×, 150,000 classes 6× faster than 1-4 rows per block
MAX_TEMPERATURE = 1e4  # far beyond any distillation τ (1-20 in practice); larger values only overflow
# far below any distillation τ (DINO's sharpest teacher uses 0.04); smaller ones (a denormal such as 5e-324
# passes > 0) only overflow logits / τ to inf and NaN
MIN_TEMPERATURE = 1e-3
FLOAT32_MIN_CLASSES = 100  # from this many classes the softmax pass runs in float32 (see work_dtype)
N_THREADS = max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)))


# ---------------------------------------------------------------- input checks (public edge)

def check_logits(logits, *, name: str = "logits") -> np.ndarray:
    """``logits`` as a finite float32/float64 array of shape (n_samples, n_classes), n_classes ≥ 2."""
    arr = np.asarray(logits)
    if arr.ndim != 2:
        raise KddiagError(f"{name} must be (n_samples, n_classes); got an array of shape {arr.shape}")
    if arr.shape[0] < 1 or arr.shape[1] < 2:
        raise KddiagError(f"{name} must have at least 1 sample and 2 classes; got shape {arr.shape}")
    if arr.dtype not in (np.float32, np.float64):
        if not (np.issubdtype(arr.dtype, np.number) and not np.issubdtype(arr.dtype, np.complexfloating)):
            raise KddiagError(f"{name} must be real numbers; got dtype {arr.dtype}")
        arr = arr.astype(np.float64)
    check_finite(arr, name=name)
    return arr


def non_finite_rows(arr: np.ndarray) -> np.ndarray:
    """The indices of the rows (entries along the first axis) holding NaN or Inf: the one finiteness
    detector. A finite float64 sum proves there is none; only a non-finite one needs the full check."""
    arr = np.asarray(arr)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(np.einsum("ijklmnop"[:arr.ndim] + "->", arr, dtype=np.float64)):
            return np.empty(0, dtype=np.int64)
    return np.flatnonzero(~np.isfinite(arr).reshape(len(arr), -1).all(axis=1))  # none: the sum overflowed


def check_finite(arr: np.ndarray, *, name: str) -> None:
    """Raise unless every entry is finite, naming the first one that is not and its index."""
    bad = non_finite_rows(arr)
    if bad.size:
        within = np.argwhere(~np.isfinite(np.asarray(arr[bad[0]])))
        where = (int(bad[0]), *(int(i) for i in (within[0] if within.size else ())))
        raise KddiagError(f"{name} must be finite; got {arr[where]} at index {where}")


def check_labels(labels, *, n_samples: int, n_classes: int | None, name: str = "labels") -> np.ndarray:
    """``labels`` as int64 of shape (n_samples,), each in [0, n_classes) (n_classes None: any id ≥ 0)."""
    arr = np.asarray(labels)
    if arr.ndim != 1 or arr.shape[0] != n_samples:
        raise KddiagError(f"{name} must be (n_samples,) = ({n_samples},) to match the logits; got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.issubdtype(arr.dtype, np.floating) or not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise KddiagError(f"{name} must be integer class ids; got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    upper = np.iinfo(np.int64).max if n_classes is None else n_classes
    if arr.size and (arr.min() < 0 or arr.max() >= upper):
        bad = arr[(arr < 0) | (arr >= upper)][0]
        raise KddiagError(f"{name} must be class ids in [0, {upper}); got {bad}")
    return arr


def check_pair(teacher_logits, student_logits, *, names: tuple[str, str] = ("teacher logits", "student logits")
               ) -> tuple[np.ndarray, np.ndarray]:
    """Two logit matrices over the same samples and the same classes."""
    first, second = check_logits(teacher_logits, name=names[0]), check_logits(student_logits, name=names[1])
    if first.shape[1] != second.shape[1]:
        raise KddiagError(f"{names[0]} have {first.shape[1]} classes but {names[1]} have {second.shape[1]}; "
                          "both must be (n_samples, n_classes)")
    if first.shape[0] != second.shape[0]:
        raise KddiagError(f"{names[0]} have {first.shape[0]} samples but {names[1]} have {second.shape[0]}; "
                          "both must be (n_samples, n_classes) on the same examples")
    return first, second


def check_temperature(temperature: Any, name: str = "temperature") -> float:
    """``temperature`` as a float within kddiag's one rule for τ (every entry point uses it): a real number,
    finite, in [MIN_TEMPERATURE, MAX_TEMPERATURE]. ``name`` says where it came from in the error."""
    value = as_float(temperature)
    shown = shown_value(temperature if value is None else value)
    if value is None or not np.isfinite(value) or value <= 0 or value > MAX_TEMPERATURE:
        raise KddiagError(f"{name} must be a finite number > 0 and at most {MAX_TEMPERATURE:g}; got {shown}")
    if value < MIN_TEMPERATURE:
        raise KddiagError(f"{name} must be at least {MIN_TEMPERATURE:g} (kddiag's floor: smaller temperatures "
                          f"only overflow the scaled logits); got {shown}")
    return value


def check_alpha(alpha) -> float:
    """The weight of the soft term, in [0, 1]."""
    value = float(alpha)
    if not 0.0 <= value <= 1.0:
        raise KddiagError(f"alpha (the weight of the soft KD term) must be in [0, 1]; got {alpha}")
    return value


def check_n_bins(n_bins) -> int:
    """A bin count ≥ 1."""
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise KddiagError(f"n_bins must be an integer ≥ 1; got {n_bins!r}")
    return int(n_bins)


def check_values(values, *, name: str, n_samples: int | None = None) -> np.ndarray:
    """A finite 1-D float64 array (per-example values), optionally of a given length."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise KddiagError(f"{name} must be a non-empty 1-D array; got shape {arr.shape}")
    if n_samples is not None and arr.shape[0] != n_samples:
        raise KddiagError(f"{name} must have {n_samples} values, one per example; got {arr.shape[0]}")
    check_finite(arr, name=name)
    return arr


# ---------------------------------------------------------------- block map

class Workspace:
    """Scratch arrays of one worker thread, reused block after block.

    Allocating block-sized temporaries costs page faults every time; every large intermediate of a
    block kernel goes into one of these instead (``out=``).
    """

    def __init__(self, rows: int, cols: int) -> None:
        self.shape = (rows, cols)
        self._arrays: dict[tuple[str, np.dtype], np.ndarray] = {}

    def array(self, name: str, n_rows: int, dtype=np.float64) -> np.ndarray:
        """The first ``n_rows`` rows of the scratch array ``name``."""
        key = (name, np.dtype(dtype))
        if key not in self._arrays:
            self._arrays[key] = np.empty(self.shape, dtype=dtype)
        return self._arrays[key][:n_rows]


def block_rows(n_classes: int) -> int:
    """Rows per block, about _BLOCK_ELEMENTS logits, but at least MIN_BLOCK_ROWS: past 4,096 classes a
    block's per-class arrays ((C,) sums, bincounts) cost more than a smaller block saves."""
    return max(MIN_BLOCK_ROWS, _BLOCK_ELEMENTS // max(1, n_classes))


def map_blocks(fn: Callable[[int, int, Workspace], dict], n_samples: int, n_classes: int, *,
               rows: int | None = None) -> list[dict]:
    """``[fn(start, stop, workspace) for each block of rows]`` in block order, in up to ``N_THREADS`` threads.

    Each thread takes every N-th block and owns one :class:`Workspace`; results do not depend on the
    number of threads. The threads are one pool shared by every call. ``rows``: rows per block, for a
    caller whose results depend on where blocks start (default :func:`block_rows`).
    """
    step = block_rows(n_classes) if rows is None else rows
    bounds = [(start, min(start + step, n_samples)) for start in range(0, n_samples, step)]
    n_workers = min(N_THREADS, len(bounds))

    def work(k: int) -> list[dict]:
        return _blocks_in_thread(fn, bounds[k::n_workers], step, n_classes)

    if n_workers == 1 or getattr(_IN_WORKER, "active", False):  # a nested call runs in its caller's thread
        per_worker = [work(k) for k in range(n_workers)]
    else:
        per_worker = list(_pool().map(_as_worker(work), range(n_workers)))
    results: list = [None] * len(bounds)
    for k, part in enumerate(per_worker):
        results[k::n_workers] = part
    return results


_IN_WORKER = threading.local()  # set in the shared pool's threads: a nested map_blocks runs serially there
_SPACES = threading.local()  # each thread's last Workspace, reused while the block shape stays the same


def _blocks_in_thread(fn: Callable[[int, int, Workspace], dict], bounds: list[tuple[int, int]],
                      rows: int, cols: int) -> list[dict]:
    """``fn`` on each block, with this thread's kept :class:`Workspace` (fresh scratch memory costs page
    faults on every call), or a new one when the kept one is in use by an outer call."""
    space = getattr(_SPACES, "space", None)
    busy = getattr(_SPACES, "busy", False)
    if busy or space is None or space.shape != (rows, cols):
        space = Workspace(rows, cols)
        if not busy:
            _SPACES.space = space
    _SPACES.busy = True
    try:
        return [fn(start, stop, space) for start, stop in bounds]
    finally:
        _SPACES.busy = busy
_POOL: list[ThreadPoolExecutor] = []


def _pool() -> ThreadPoolExecutor:
    """One pool of N_THREADS threads for the process: starting threads on every call costs more than small blocks."""
    if not _POOL:
        _POOL.append(ThreadPoolExecutor(max_workers=N_THREADS, thread_name_prefix="kddiag"))
    return _POOL[0]


def map_tasks(tasks: Mapping[Any, Callable[[], Any]]) -> dict[Any, Any]:
    """``{key: task()}``, the tasks run in the shared pool's threads with BLAS on one thread
    (``single_thread_blas``), so results do not depend on which thread runs what. A task's own
    :func:`map_blocks` runs in its thread; called from a pool thread, the tasks run there in turn."""
    with single_thread_blas:
        if getattr(_IN_WORKER, "active", False) or N_THREADS == 1:
            return {key: task() for key, task in tasks.items()}
        futures = {key: _pool().submit(_as_worker(lambda _, task=task: task()), 0) for key, task in tasks.items()}
        wait(futures.values())  # all done before a failure is raised and the BLAS limit lifted
        return {key: future.result() for key, future in futures.items()}


class _SingleThreadBlas:
    """BLAS on one thread inside ``with single_thread_blas:``: the sums inside one matrix product then do
    not depend on the thread count (a single process and torchrun ranks give the same bits). The limit
    is the process's: the first of nested or concurrent users sets it, the last one out restores it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._controller: Any = None  # threadpoolctl's, made once: finding the libraries costs milliseconds
        self._limit: Any = None

    def __enter__(self) -> None:
        with self._lock:
            if self._users == 0:
                if self._controller is None:
                    from threadpoolctl import ThreadpoolController

                    self._controller = ThreadpoolController()
                self._limit = self._controller.limit(limits=1, user_api="blas")
            self._users += 1

    def __exit__(self, *exc) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0:
                self._limit.restore_original_limits()


single_thread_blas = _SingleThreadBlas()


def _as_worker(work: Callable[[int], list]) -> Callable[[int], list]:
    def run(k: int) -> list:
        _IN_WORKER.active = True
        try:
            return work(k)
        finally:
            _IN_WORKER.active = False
    return run


def work_dtype(n_classes: int) -> np.dtype:
    """The float type of the softmax pass: float64, float32 from FLOAT32_MIN_CLASSES classes on (row sums
    accumulated in float64, row products in float32; the fused pass at 1,000 classes then takes 0.6-0.75× the
    time of float64, measured; per-example values agree with float64 to about 1e-5 relative, 1e-4
    where the target dominates by hundreds of nats; tested at 100, 1,000 and 6,000 classes)."""
    return np.dtype(np.float32 if n_classes >= FLOAT32_MIN_CLASSES else np.float64)


def load_rows(source: np.ndarray, start: int, stop: int, space: Workspace, name: str,
              order: np.ndarray | None = None, dtype=np.float64) -> np.ndarray:
    """Rows ``start:stop`` of ``source`` (of ``source[order]`` when given) as ``dtype``, copied only when needed."""
    n_rows, dtype = stop - start, np.dtype(dtype)
    if order is None:
        block = source[start:stop]
        if block.dtype == dtype:
            return block
        return _copy_into(space.array(name, n_rows, dtype), block)
    index = order[start:stop]
    native = np.take(source, index, axis=0, out=space.array(name, n_rows, source.dtype), mode="clip")
    return native if source.dtype == dtype else _copy_into(space.array(name, n_rows, dtype), native)


def _copy_into(out: np.ndarray, block: np.ndarray) -> np.ndarray:
    np.copyto(out, block)
    return out


def _concat(parts: list[dict], key: str, unsort: np.ndarray | None = None) -> np.ndarray:
    """Per-block arrays joined; with ``unsort``, the block-order entry i goes to position unsort[i]."""
    joined = np.concatenate([part[key] for part in parts])
    if unsort is None:
        return joined
    out = np.empty_like(joined)
    out[unsort] = joined
    return out


# ---------------------------------------------------------------- the softmax pass

class CompensatedSum:
    """Float64 sums kept as value + error term (Knuth's TwoSum), so the total hardly depends on the order
    in which parts are added: batches and shards merged in any grouping give the same rounded value
    (to about n·ε² of the sum). ``value()`` is the sum."""

    def __init__(self, shape) -> None:
        self.high = np.zeros(shape)
        self.low = np.zeros(shape)

    def add(self, values) -> None:
        """Add ``values`` (an array of the sums' shape)."""
        total = self.high + values
        back = total - self.high
        self.low += (self.high - (total - back)) + (values - back)
        self.high = total

    def merge(self, other: "CompensatedSum") -> None:
        self.add(other.high)
        self.low += other.low

    def value(self) -> np.ndarray:
        return self.high + self.low


class FixedPointSum:
    """Sums of non-negative float64 parts kept as int64 multiples of 2⁻³² (each part rounded to the
    nearest): integer addition is exact, so any grouping of the parts gives the same total, at the cost
    of 2.3·10⁻¹⁰ absolute per part. Totals must stay below 2³¹ (e.g. sums of probabilities over fewer
    than 2³¹ examples)."""

    SCALE = float(1 << 32)

    def __init__(self, shape) -> None:
        self.units = np.zeros(shape, dtype=np.int64)

    def add(self, values, index=None) -> None:
        """Add ``values`` at ``index`` (a basic or unique fancy index; None: everywhere)."""
        units = np.rint(np.multiply(values, self.SCALE)).astype(np.int64)
        if index is None:
            self.units += units
        else:
            self.units[index] += units

    def merge(self, other: "FixedPointSum") -> None:
        self.units += other.units

    def value(self) -> np.ndarray:
        return self.units / self.SCALE


class ClassSums:
    """Class-level sums of p¹ and r over examples, added to batch after batch (see :func:`softmax_stats`).

    Feeds the output similarity S_out (``nontarget_sum``) and the class-wise ECE (``binned``). The
    (K, K) ``nontarget_sum`` covers the classes ``kept`` (sorted ids; None: all C classes), so its
    memory is bounded when C is large; everything else is (C,) or (C, n_bins). Only entries p_ik above
    the first bin edge are binned one by one: bin 0 of class k is its total minus the other bins.
    Sums are fixed point (:class:`FixedPointSum`): the same in any grouping of blocks, batches and shards.
    """

    def __init__(self, n_classes: int, *, n_bins: int, kept: np.ndarray | None = None) -> None:
        self.n_classes, self.n_bins = n_classes, n_bins
        self.kept = None if kept is None else np.asarray(kept, dtype=np.int64)
        self._position = None
        if self.kept is not None:
            self._position = np.full(n_classes, -1, dtype=np.int64)
            self._position[self.kept] = np.arange(self.kept.size)
        size = n_classes if self.kept is None else self.kept.size
        self.label_count = np.zeros(n_classes, dtype=np.int64)
        self._prob_sum = FixedPointSum(n_classes)  # Σ_i p_ik
        self._nontarget_sum = FixedPointSum((size, size))  # row c = Σ_{i: y_i = c} r_i (r_iy = 0), kept classes
        self._binned_prob = FixedPointSum(n_classes * n_bins)  # Σ p_ik per class and bin (bins ≥ 1)
        self._binned_hit = np.zeros(n_classes * n_bins, dtype=np.int64)  # Σ 1{y_i = k} per class and bin (≥ 1)

    def positions(self, classes: np.ndarray) -> np.ndarray:
        """Each class's row in ``nontarget_sum``: its index among the kept classes, -1 when not kept."""
        return np.asarray(classes) if self._position is None else self._position[classes]

    @property
    def threshold(self) -> float:
        """The first bin edge: entries above it are binned one by one."""
        return 1.0 / self.n_bins

    @property
    def prob_sum(self) -> np.ndarray:
        """(C,) Σ_i p_ik."""
        return self._prob_sum.value()

    @property
    def nontarget_sum(self) -> np.ndarray:
        """(K, K) Σ_{i: y_i = c} r_i over the kept classes."""
        return self._nontarget_sum.value()

    @property
    def binned_prob(self) -> np.ndarray:
        """(C, n_bins) Σ p_ik per class and bin, bins ≥ 1 (bin 0 is zero here; see :meth:`binned`)."""
        return self._binned_prob.value().reshape(self.n_classes, self.n_bins)

    @property
    def binned_hit(self) -> np.ndarray:
        """(C, n_bins) Σ 1{y_i = k} per class and bin, bins ≥ 1."""
        return self._binned_hit.reshape(self.n_classes, self.n_bins).astype(np.float64)

    def add_block(self, part: dict) -> None:
        """One block's sums (from :func:`softmax_stats`)."""
        self.label_count += part["label_count"]
        self._prob_sum.add(part["prob_sum"])
        rows, classes = part["nontarget_sum"], part["classes"]  # distinct within a block; kept ones only
        self._nontarget_sum.add(rows, classes if self._position is None else self._position[classes])
        cells, inverse = np.unique(part["cells"], return_inverse=True)
        self._binned_prob.add(np.bincount(inverse, weights=part["high_prob"], minlength=cells.size), cells)
        np.add.at(self._binned_hit, part["cells"], part["hits"])

    def merge(self, other: "ClassSums") -> None:
        """Add ``other``'s sums (same classes, bins and kept classes)."""
        self.label_count += other.label_count
        self._binned_hit += other._binned_hit
        for name in ("_prob_sum", "_nontarget_sum", "_binned_prob"):
            getattr(self, name).merge(getattr(other, name))

    def binned(self) -> tuple[np.ndarray, np.ndarray]:
        """(C, n_bins) sums of p_ik and of 1{y_i = k} per class and bin of p_ik, bin 0 included."""
        prob, hit = self.binned_prob, self.binned_hit
        prob[:, 0] = self.prob_sum - prob[:, 1:].sum(axis=1)
        hit[:, 0] = self.label_count - hit[:, 1:].sum(axis=1)
        return prob, hit


@dataclass(frozen=True)
class SoftmaxStats:
    """Per-example summaries of p = softmax(logits / τ) split at the label y; every array is (n_samples,).

    r = p_{k≠y} / (1 − p_y) is the non-target distribution. Optional cross terms compare with a
    second model's q = softmax(other / τ) (same τ): ``cross_entropy`` H(p, q) = −Σ p log q and
    ``nontarget_cross_entropy`` H(r, r^q).
    """

    temperature: float
    n_classes: int
    prediction: np.ndarray  # argmax_k logits (does not depend on τ)
    log_norm: np.ndarray  # logsumexp_k z_k/τ
    nontarget_log_norm: np.ndarray  # logsumexp_{k≠y} z_k/τ
    target_log_prob: np.ndarray  # log p_y
    nontarget_log_mass: np.ndarray  # log(1 − p_y)
    max_log_prob: np.ndarray  # log max_k p_k
    entropy: np.ndarray  # H(p), nats
    nontarget_entropy: np.ndarray  # H(r), nats
    nontarget_sum_sq: np.ndarray  # Σ_{k≠y} p_k²
    cross_entropy: np.ndarray | None = None
    nontarget_cross_entropy: np.ndarray | None = None
    logit_spread: np.ndarray | None = None  # std_{k≠y} z_k / (z_y − mean_{k≠y} z_k); NaN where that margin ≤ 0
    other_mean: np.ndarray | None = None  # E_p[b/τ] for the second model's logits b (with ``versus``)

    def kl_divergence_to(self, other: "SoftmaxStats") -> np.ndarray:
        """KL(p ‖ o) per example, o the ``versus`` model's distribution (its stats at the same τ and rows):
        H(p, o) − H(p), with H(p, o) = log Σ_k exp(b_k/τ) − E_p[b/τ]."""
        return np.maximum(other.log_norm - self.other_mean - self.entropy, 0.0)

    @property
    def target_prob(self) -> np.ndarray:
        """p_y."""
        return np.exp(self.target_log_prob)

    @property
    def nontarget_mass(self) -> np.ndarray:
        """1 − p_y, exact even where p_y rounds to 1."""
        return np.exp(self.nontarget_log_mass)

    def kl_divergence(self) -> np.ndarray:
        """KL(p ‖ q) = H(p, q) − H(p) per example (needs the cross terms)."""
        return np.maximum(self.cross_entropy - self.entropy, 0.0)

    def nontarget_kl_divergence(self) -> np.ndarray:
        """KL(r ‖ r^q) = H(r, r^q) − H(r) per example (needs the cross terms)."""
        return np.maximum(self.nontarget_cross_entropy - self.nontarget_entropy, 0.0)


_PER_EXAMPLE = ("prediction", "log_norm", "nontarget_log_norm", "target_log_prob", "nontarget_log_mass",
                "max_log_prob", "entropy", "nontarget_entropy", "nontarget_sum_sq")


def softmax_stats(logits: np.ndarray, labels: np.ndarray, *, temperature: float = 1.0,
                  rows: np.ndarray | None = None, versus: tuple[np.ndarray, SoftmaxStats] | None = None,
                  class_sums: ClassSums | None = None, logit_spread: bool = False) -> SoftmaxStats:
    """One pass over ``logits`` (n_samples, n_classes): the :class:`SoftmaxStats` at ``temperature``.

    ``rows`` restricts it to those examples (a subsample), read in place without copying the logits.
    ``versus=(other_logits, other_stats)`` (other_stats at the same τ and rows) adds the cross terms;
    ``versus=(other_logits, None)`` only E_p[other/τ] (``other_mean``, for :meth:`SoftmaxStats.kl_divergence_to`);
    ``logit_spread`` adds the non-target logit spread (free of τ: a ratio of logit differences);
    ``class_sums`` (a :class:`ClassSums`) gets these rows' class sums added, block after block in order.
    With class sums the blocks run over the examples sorted by label, so each block's class sums
    are sums over runs of rows. Inputs must be valid (``check_*``): this is the private workhorse
    behind the public metric functions; :func:`fused_softmax_stats` gives several models' at once.

    Log-space throughout: t = (z − max z)/τ, e = exp(t); the non-target sum Σ_{k≠y} e_k is taken with
    the target zeroed (no cancellation), and recomputed with its own maximum as shift where it
    underflows, so log(1 − p_y) and r stay exact when the target dominates.
    """
    n_classes = logits.shape[1]
    inv_t = 1.0 / temperature
    work = work_dtype(n_classes)
    other, other_stats = versus if versus is not None else (None, None)
    out_labels = labels if rows is None else labels[rows]
    # block order: ``unsort`` maps it to output positions, ``order`` to rows of ``logits``
    unsort = np.argsort(out_labels, kind="stable") if class_sums is not None else None
    order = unsort if rows is None else (rows if unsort is None else rows[unsort])
    ordered = (lambda a: a) if unsort is None else (lambda a: a[unsort])
    block_labels = ordered(out_labels)
    norms = None if other_stats is None else (ordered(other_stats.log_norm), ordered(other_stats.nontarget_log_norm))

    def block(start: int, stop: int, space: Workspace) -> dict:
        pred, shift, t = _shifted(load_rows(logits, start, stop, space, "z", order, work), inv_t, space, "t")
        b = None if other is None else load_rows(other, start, stop, space, "z", order, work)  # z is used up
        return _softmax_block(t, block_labels[start:stop], pred, shift, inv_t, space, other=b,
                              other_norms=None if norms is None else (norms[0][start:stop], norms[1][start:stop]),
                              logit_spread=logit_spread, class_sums=class_sums)

    parts = map_blocks(block, out_labels.size, n_classes)
    if class_sums is not None:
        for part in parts:
            class_sums.add_block(part)
    return _joined_stats(parts, unsort, temperature, n_classes)


def fused_softmax_stats(logits: Mapping[str, np.ndarray], labels: np.ndarray, *, temperature: float,
                        class_sums: Mapping[str, ClassSums]
                        ) -> tuple[dict[str, SoftmaxStats], SoftmaxStats, SoftmaxStats | None]:
    """The softmax statistics of a set's models in one pass: each model's logits (teacher, and student and
    baseline where given) read once per block of label-sorted rows, argmax and max shared between τ = 1 and τ.

    Returns (each model's stats at τ = 1, with ``logit_spread`` and its ``class_sums`` added; the teacher's at
    τ; the student's at τ or None without a student). With a student, the student's carry E_q[z_teacher/τ]
    (reverse KL) and the teacher's the cross terms against the student, at both temperatures. The same values,
    to the last bit, as the separate :func:`softmax_stats` calls; inputs must be valid numpy arrays (logits
    left as tensors on a device go to :func:`kddiag.metrics.fused.fused_softmax_stats_torch`: the
    streaming statistics choose, :meth:`kddiag.accumulate.SetAccumulator._softmax`).
    """
    n_classes = logits["teacher"].shape[1]
    inv_t = 1.0 / temperature
    work = work_dtype(n_classes)
    roles = tuple(logits)
    student = "student" in logits
    unsort = np.argsort(labels, kind="stable")
    block_labels = labels[unsort]

    def block(start: int, stop: int, space: Workspace) -> dict:
        y = block_labels[start:stop]
        z = {role: load_rows(logits[role], start, stop, space, role, unsort, work) for role in roles}
        top = {role: _shifted(values, 1.0, space, "t:" + role) for role, values in z.items()}
        out = {role: _softmax_block(top[role][2], y, *top[role][:2], 1.0, space,
                                    other=z["teacher"] if role == "student" else None,
                                    logit_spread=True, class_sums=class_sums[role])
               for role in roles if role != "teacher"}
        out["teacher"] = _softmax_block(top["teacher"][2], y, *top["teacher"][:2], 1.0, space,
                                        other=z["student"] if student else None,
                                        other_norms=_norms(out["student"]) if student else None,
                                        logit_spread=True, class_sums=class_sums["teacher"])
        if temperature != 1.0:  # t/τ = (z − max z)·(1/τ): the max and argmax of τ = 1, the same bits
            def at_temperature(role: str) -> tuple:
                return (np.multiply(top[role][2], work.type(inv_t), out=space.array("t", y.size, work)), y,
                        *top[role][:2], inv_t, space)

            if student:
                out["student_t"] = _softmax_block(*at_temperature("student"), other=z["teacher"])
            out["teacher_t"] = _softmax_block(*at_temperature("teacher"), other=z["student"] if student else None,
                                              other_norms=_norms(out["student_t"]) if student else None)
        return out

    parts = map_blocks(block, labels.size, n_classes)
    one = {}
    for role in roles:
        for part in parts:
            class_sums[role].add_block(part[role])
        one[role] = _joined_stats([part[role] for part in parts], unsort, 1.0, n_classes)
    if temperature == 1.0:
        return one, one["teacher"], one.get("student")
    joined = {key: _joined_stats([part[key] for part in parts], unsort, temperature, n_classes)
              for key in ("teacher_t", "student_t") if key in parts[0]}
    return one, joined["teacher_t"], joined.get("student_t")


def _norms(block: dict) -> tuple[np.ndarray, np.ndarray]:
    return block["log_norm"], block["nontarget_log_norm"]


def _joined_stats(parts: list[dict], unsort: np.ndarray | None, temperature: float, n_classes: int) -> SoftmaxStats:
    """The :class:`SoftmaxStats` of per-block results (block order; ``unsort`` as in :func:`_concat`)."""
    optional = ("other_mean", "cross_entropy", "nontarget_cross_entropy", "logit_spread")
    fields = {key: _concat(parts, key, unsort) for key in _PER_EXAMPLE + optional if key in parts[0]}
    return SoftmaxStats(temperature=temperature, n_classes=n_classes, **fields)


def _shifted(z: np.ndarray, inv_t: float, space: Workspace, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(argmax, max, t = (z − max z)·inv_t in the scratch array ``name``) of a block of logits ``z``."""
    pred = z.argmax(axis=1)
    shift = z[np.arange(z.shape[0]), pred]
    t = np.subtract(z, shift[:, None], out=space.array(name, z.shape[0], z.dtype))
    if inv_t != 1.0:
        t *= z.dtype.type(inv_t)
    return pred, shift, t


def _softmax_block(t: np.ndarray, y: np.ndarray, pred: np.ndarray, shift: np.ndarray, inv_t: float,
                   space: Workspace, *, other: np.ndarray | None = None,
                   other_norms: tuple[np.ndarray, np.ndarray] | None = None, logit_spread: bool = False,
                   class_sums: ClassSums | None = None) -> dict:
    """The :class:`SoftmaxStats` fields of one block (see :func:`softmax_stats`): ``t`` = (z − max z)·inv_t
    in the work dtype (:func:`_shifted`; not changed), ``y`` its labels, ``pred`` and ``shift`` the argmax
    and max of z; ``other`` the second model's logits on the same rows (``other_mean``), ``other_norms`` its
    (log_norm, nontarget_log_norm) at the same τ (cross terms); with ``class_sums`` the rows are label-sorted
    and the block's class sums are added to the result. Scratch arrays "e", "d" (and the class sums') of
    ``space`` are overwritten."""
    sums, e = _row_sums(t, y, space, other=other, logit_spread=logit_spread)
    out = softmax_fields(sums, pred, shift, inv_t, t.shape[1], other_norms=other_norms)
    if class_sums is not None:
        out.update(_class_sums_block(e, sums["s_nt"], *probability_scales(sums), y, class_sums))
    return out


def _row_sums(t: np.ndarray, y: np.ndarray, space: Workspace, *, other: np.ndarray | None = None,
              logit_spread: bool = False) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The part of a block that reads every logit: (the per-row float64 sums :func:`softmax_fields` turns into
    fields, the non-target exponentials e in scratch "e"). ``t``, ``y``, ``other`` as in :func:`_softmax_block`.

    e_k = exp(t_k − nt_off) for k ≠ y and 0 at the label, where nt_off is 0, or the non-target maximum in rows
    whose non-target sum would underflow; s_nt = Σ_k e_k, t_y and e_y = exp(t_y), and Σ_k e_k·t_k (``e_t``),
    Σ_k e_k² (``e_e``); with ``other`` its value at the label (``b_y``, unscaled) and Σ_k e_k·b_k (``e_b``);
    with ``logit_spread`` Σ_k t_k (``t_sum``) and Σ_{k≠y} (t_k − mean_{k≠y} t)² (``d_d``)."""
    n_rows, n_classes = t.shape
    work = t.dtype
    row = np.arange(n_rows)
    t_y = t[row, y].astype(np.float64)
    e = np.exp(t, out=space.array("e", n_rows, work))
    e_y = e[row, y].astype(np.float64)
    e[row, y] = 0.0
    s_nt = e.sum(axis=1, dtype=np.float64)
    nt_off = np.zeros(n_rows)
    bad = np.flatnonzero(s_nt < _TINY_NONTARGET[work])
    if bad.size:  # the target dominates: shift the non-target part by its own maximum
        tb = t[bad]
        tb[np.arange(bad.size), y[bad]] = -np.inf
        nt_off[bad] = tb.max(axis=1)
        e[bad] = np.exp(tb - nt_off[bad, None].astype(work))
        s_nt[bad] = e[bad].sum(axis=1, dtype=np.float64)
    sums = {"t_y": t_y, "e_y": e_y, "s_nt": s_nt, "nt_off": nt_off, "e_t": _row_dot(e, t), "e_e": _row_dot(e, e)}
    if logit_spread:
        sums["t_sum"] = t.sum(axis=1, dtype=np.float64)
        mean = (sums["t_sum"] - t_y) / (n_classes - 1)
        d = np.subtract(t, mean[:, None].astype(work), out=space.array("d", n_rows, work))
        d[row, y] = 0.0
        sums["d_d"] = _row_dot(d, d)
    if other is not None:
        sums["b_y"] = other[row, y].astype(np.float64)
        sums["e_b"] = _row_dot(e, other)
    return sums, e


def probability_scales(sums: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(p_k / e_k for k ≠ y, p_y) per row, from :func:`_row_sums`' sums: p_k = e_k·exp(nt_off) / s, where
    s = e_y + s_nt·exp(nt_off) is the full sum of exp(t)."""
    nt_scale = np.exp(sums["nt_off"])
    s_full = sums["e_y"] + sums["s_nt"] * nt_scale
    return nt_scale / s_full, sums["e_y"] / s_full


def softmax_fields(sums: Mapping[str, np.ndarray], pred: np.ndarray, shift: np.ndarray, inv_t: float,
                   n_classes: int, *, other_norms: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """The :class:`SoftmaxStats` fields of rows from their sums (:func:`_row_sums`, or the same sums computed
    where the logits are: :mod:`kddiag.metrics.fused`), their argmax ``pred`` and max ``shift``."""
    t_y, e_y, s_nt, nt_off = sums["t_y"], sums["e_y"], sums["s_nt"], sums["nt_off"]
    nt_scale = np.exp(nt_off)  # e_k · nt_scale = exp(t_k) for k ≠ y
    s_full = e_y + s_nt * nt_scale
    log_s, log_s_nt = np.log(s_full), np.log(s_nt)
    r_mean_t = sums["e_t"] / s_nt  # E_r[t]
    p_mean_t = (s_nt * nt_scale * r_mean_t + e_y * t_y) / s_full  # E_p[t]
    shift = shift.astype(np.float64)
    out = {
        "prediction": pred,
        "log_norm": shift * inv_t + log_s,
        "nontarget_log_norm": shift * inv_t + nt_off + log_s_nt,
        "target_log_prob": t_y - log_s,
        "nontarget_log_mass": nt_off + log_s_nt - log_s,
        "max_log_prob": -log_s,
        "entropy": log_s - p_mean_t,
        "nontarget_entropy": nt_off + log_s_nt - r_mean_t,
        "nontarget_sum_sq": sums["e_e"] * (nt_scale / s_full) ** 2,
    }
    if "d_d" in sums:  # std and margin are ratios of differences of t = (z − max z)/τ: same as on z
        mean = (sums["t_sum"] - t_y) / (n_classes - 1)
        margin = t_y - mean
        std = np.sqrt(sums["d_d"] / (n_classes - 1))
        with np.errstate(divide="ignore", invalid="ignore"):
            out["logit_spread"] = np.where(margin > 0, std / margin, np.nan)
    if "e_b" in sums:
        b_y = sums["b_y"] * inv_t
        r_mean_b = sums["e_b"] * inv_t / s_nt
        p_mean_b = (s_nt * nt_scale * r_mean_b + e_y * b_y) / s_full
        out["other_mean"] = p_mean_b
        if other_norms is not None:
            out["cross_entropy"] = other_norms[0] - p_mean_b
            out["nontarget_cross_entropy"] = other_norms[1] - r_mean_b
    return out


def _row_dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Σ_j a_ij·b_ij per row, as float64."""
    return np.einsum("ij,ij->i", a, b).astype(np.float64, copy=False)


def _class_sums_block(e, s_nt, nontarget_scale, target_prob, y, sums: ClassSums) -> dict:
    """Class sums of one block of label-sorted rows; ``e`` holds the non-target exponentials (target zeroed).

    p_ik = e_ik·nontarget_scale_i (k ≠ y_i) and r_ik = e_ik/s_nt_i: the class sums of r are weighted sums
    over runs of rows (:func:`_run_sums`), those of p a vector-matrix product; p and r are never formed. Entries
    above the first bin edge are listed by (class, bin) cell with their p and whether k is the label.
    """
    n_rows, n_classes = e.shape
    new_run = np.concatenate(([True], y[1:] != y[:-1]))
    run_start = np.flatnonzero(new_run)
    classes = y[run_start]
    # r_i = e_i / s_nt_i summed over each run of equal labels (of the kept classes, in the kept columns:
    # never runs × C when C is large), and p_ik = e_ik·nontarget_scale_i over all rows
    inverse = (1.0 / s_nt).astype(e.dtype)
    if sums.kept is None:
        nontarget_rows = _run_sums(e, inverse, run_start)
    else:
        lengths = np.diff(np.append(run_start, n_rows))
        kept_runs = sums.positions(classes) >= 0
        rows = np.flatnonzero(np.repeat(kept_runs, lengths))
        classes, lengths = classes[kept_runs], lengths[kept_runs]
        nontarget_rows = (_run_sums(e[np.ix_(rows, sums.kept)], inverse[rows], np.cumsum(lengths) - lengths)
                          if classes.size else np.zeros((0, sums.kept.size), dtype=e.dtype))
    nontarget_rows = nontarget_rows.astype(np.float64, copy=False)
    # einsum: no BLAS threads inside worker threads
    nontarget_total = np.einsum("i,ij->j", nontarget_scale.astype(e.dtype), e).astype(np.float64, copy=False)
    prob_sum = nontarget_total + np.bincount(y, weights=target_prob, minlength=n_classes)
    with np.errstate(divide="ignore", over="ignore"):  # scale 0: those p underflowed, none is listed
        # a hair below the threshold: over-listed entries are binned by their own p afterwards
        bound = sums.threshold * (1.0 - 1e-9) / nontarget_scale
    candidates = np.flatnonzero(e.max(axis=1) > bound)  # the rows with an entry above the bound
    rows = e if candidates.size == n_rows else e[candidates]
    flat = np.flatnonzero(rows > bound[candidates, None])
    high_row, high_col = candidates[flat // n_classes], flat % n_classes
    high_prob = rows.ravel()[flat] * nontarget_scale[high_row]
    target_high = np.flatnonzero(target_prob > sums.threshold)
    row_of = np.concatenate((high_row, target_high))
    col_of = np.concatenate((high_col, y[target_high]))
    high_prob = np.concatenate((high_prob, target_prob[target_high]))
    bins = bin_index(high_prob, sums.n_bins)
    keep = bins > 0  # bin 0 is what is left of each class total
    return {"classes": classes, "nontarget_sum": nontarget_rows, "prob_sum": prob_sum,
            "label_count": np.bincount(y, minlength=n_classes),
            "cells": col_of[keep] * sums.n_bins + bins[keep], "high_prob": high_prob[keep],
            "hits": (col_of[keep] == y[row_of[keep]]).astype(np.int64)}


def _run_sums(rows: np.ndarray, weights: np.ndarray, run_start: np.ndarray) -> np.ndarray:
    """Σ weights_i·rows_i over each run of ``rows`` starting at ``run_start``: one weighted column sum per
    run for long runs or few of them; for many short ones (many classes, few rows each) a few row additions."""
    length = np.diff(np.append(run_start, rows.shape[0]))
    if length.max() > 8 or run_start.size <= 16:  # einsum: no BLAS threads inside worker threads
        return np.stack([np.einsum("i,ij->j", weights[a:a + n], rows[a:a + n]) for a, n in zip(run_start, length)])
    sums = rows[run_start] * weights[run_start, None]
    for step in range(1, int(length.max())):
        longer = np.flatnonzero(length > step)
        at = run_start[longer] + step
        sums[longer] += rows[at] * weights[at, None]
    return sums


def bin_edges(n_bins: int) -> np.ndarray:
    """Edges of n_bins equal-width bins on [0, 1]."""
    return np.linspace(0.0, 1.0, n_bins + 1)


def bin_index(values: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin of each value in [0, 1]: bin m holds (m/M, (m+1)/M]; 0 falls in bin 0."""
    return np.searchsorted(bin_edges(n_bins)[1:-1], values, side="left")


def subsample_indices(n_samples: int, max_samples: int, *, seed: int = 0) -> np.ndarray:
    """All indices when n_samples ≤ max_samples, else a sorted fixed-seed sample of max_samples."""
    if n_samples <= max_samples:
        return np.arange(n_samples)
    return np.sort(np.random.default_rng(seed).choice(n_samples, size=max_samples, replace=False))


def spearman(first: np.ndarray, second: np.ndarray) -> float | None:
    """Spearman rank correlation: Pearson correlation of average ranks (as scipy's ``spearmanr``).

    None when a side is constant.
    """
    a, b = average_ranks(first), average_ranks(second)
    a -= a.mean()
    b -= b.mean()
    norm = np.sqrt(np.dot(a, a) * np.dot(b, b))
    return float(np.clip(np.dot(a, b) / norm, -1.0, 1.0)) if norm > 0 else None


def auroc(positive: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve of ``score`` for the boolean ``positive`` (both classes present): the
    Mann–Whitney statistic from average ranks, ties counting one half (as scikit-learn's ``roc_auc_score``)."""
    n_positive = int(np.count_nonzero(positive))
    n_negative = positive.size - n_positive
    rank_sum = float(average_ranks(score)[positive].sum())
    return (rank_sum - n_positive * (n_positive + 1) / 2.0) / (n_positive * n_negative)


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their average rank (``scipy.stats.rankdata(method="average")``)."""
    order = np.argsort(values)
    ordered = values[order]
    new = np.empty(values.size, dtype=bool)
    new[:1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=new[1:])
    starts = np.flatnonzero(new)
    ends = np.append(starts[1:], values.size)
    ranks = np.empty(values.size)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks
