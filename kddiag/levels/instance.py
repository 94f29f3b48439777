"""Level 3 — instance-specific knowledge: how the teacher rescales each example's gradient, and whether that
rescaling follows the example's difficulty.

The per-example columns it asks of the softmax pass, its record (:class:`InstanceOnSet`), how it fills
it (:func:`measure_set`), and its headline rows.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from kddiag.levels._columns import Block, Column
from kddiag.levels._common import NO_STUDENT, Reuse
from kddiag.levels._record import Headline, Level, Measured, OnSet, measured, missing
from kddiag.metrics import instance as metric
from kddiag.metrics._common import subsample_indices
from kddiag.metrics.instance import LOW_WEIGHT, HardExample
from kddiag.summary import SetSummary
from kddiag.types import INSTANCE

NAME = INSTANCE  # the level's name in report.json and the reports
W_OVERFLOW = ("w overflows: the student is saturated on some examples, where its cross-entropy gradient "
              "1 − q¹_y underflows")
W_ZERO_MEAN = "mean rescaling weight is 0"
STUDENT_NEVER_WRONG = "the student makes no error on this set (AUROC needs errors and non-errors)"
STUDENT_ALWAYS_WRONG = "the student is wrong on every example of this set (AUROC needs errors and non-errors)"
CONSTANT_DIFFICULTY = "rescaling weight or difficulty is constant over the examples"

KNN_MAX_SAMPLES = 5000  # k-NN difficulty on at most this many examples (fixed-seed subsample) …
KNN_MAX_WORK = 1e9  # … and at most this many distance multiply-adds (n_sub² · n_features)

TEACHER_STUDENT = frozenset({"teacher", "student"})


# ---------------------------------------------------------------- per-example columns

def _rescaling_weight(block: Block) -> np.ndarray:
    return metric.rescaling_weights_of(block.teacher_t, block.student_t, block.one["student"], alpha=block.alpha)


def _decoupled(block: Block) -> metric.DecoupledKD:
    return block.shared("decoupled", lambda: metric.decoupled_kd_of(block.teacher_t, block.student_t))


def _low(values: np.ndarray) -> np.ndarray:
    return (values < LOW_WEIGHT).astype(np.float64)


COLUMNS = (
    Column("w", _rescaling_weight, TEACHER_STUDENT, mean=True, sample=True),
    Column("w_low", lambda block: _low(block["w"]), TEACHER_STUDENT, mean=True),
    Column("w_untrained", lambda block: metric.untrained_rescaling_weights_of(block.teacher_t, alpha=block.alpha),
           mean=True, sample=True),
    Column("w_untrained_low", lambda block: _low(block["w_untrained"]), mean=True),
    Column("tckd", lambda block: _decoupled(block).tckd, TEACHER_STUDENT, mean=True),
    Column("nckd", lambda block: _decoupled(block).nckd, TEACHER_STUDENT, mean=True),
    Column("teacher.nontarget_log_mass", lambda block: block.one["teacher"].nontarget_log_mass, sample=True),
)


# ---------------------------------------------------------------- the record

@dataclass(frozen=True)
class PerExample:
    """Per-example values the plots draw (not in report.json); each (n_samples,)."""

    teacher_target_confidence: np.ndarray  # p_y at τ
    rescaling_weight: np.ndarray | None  # w of the trained student (may overflow to ±inf); None: no student
    untrained_rescaling_weight: np.ndarray  # w of an untrained student: the teacher's effect alone
    difficulty: np.ndarray  # NaN outside the k-NN subsample


@dataclass(frozen=True)
class InstanceOnSet(OnSet):
    """Gradient rescaling and how it tracks difficulty, the decoupled KD terms and teacher errors, on one set."""

    LEVEL: ClassVar[str] = INSTANCE
    dataset: str
    rescaling_weight_mean: Measured[float] = field(default_factory=missing)
    rescaling_weight_cv: Measured[float] = field(default_factory=missing)
    rescaling_weight_low_share: Measured[float] = field(default_factory=missing)
    untrained_rescaling_weight_cv: Measured[float] = field(default_factory=missing)
    untrained_rescaling_weight_low_share: Measured[float] = field(default_factory=missing)
    rescaling_difficulty_correlation: Measured[float] = field(default_factory=missing)
    difficulty_source: Measured[str] = field(default_factory=missing)
    confidence_error_auroc: Measured[float] = field(default_factory=missing)
    tckd: Measured[float] = field(default_factory=missing)
    nckd: Measured[float] = field(default_factory=missing)
    nckd_weight: Measured[float] = field(default_factory=missing)
    teacher_error_rate: Measured[float] = field(default_factory=missing)
    hardest_examples: Measured[tuple[HardExample, ...]] = field(default_factory=missing)
    examples: PerExample | None = None
    low_weight_cut: float = LOW_WEIGHT  # the *_low_share values count w below this


@dataclass(frozen=True)
class InstanceResult(Level):
    """Level 3 — instance-specific knowledge."""

    LEVEL: ClassVar[str] = INSTANCE
    eval: InstanceOnSet | None = None
    transfer: InstanceOnSet | None = None


ON_SET = InstanceOnSet  # the record measure_set fills


# ---------------------------------------------------------------- measuring

def measure_set(data: SetSummary, cached: Reuse) -> InstanceOnSet:
    """Gradient rescaling, how it tracks difficulty, the decoupled KD terms and teacher errors on one set."""
    examples = data.examples
    mean_untrained, std_untrained = data.mean("w_untrained"), data.moments.std("w_untrained")
    difficulty, source = cached(f"{data.name}.difficulty", lambda: _difficulty(data))
    teacher_side = dict(
        untrained_rescaling_weight_cv=measured(_cv(mean_untrained, std_untrained), why_none=W_ZERO_MEAN),
        untrained_rescaling_weight_low_share=measured(data.mean("w_untrained_low")),
        rescaling_difficulty_correlation=measured(
            metric.rescaling_difficulty_correlation_of(examples["w_untrained"], difficulty),
            why_none=CONSTANT_DIFFICULTY),
        difficulty_source=measured(source),
        nckd_weight=measured(data.mean("smoothing_t")),  # 1 − p_y at τ: the effective smoothing
        teacher_error_rate=measured(1.0 - data.mean("teacher.correct")),
        hardest_examples=measured(data.hardest),
        examples=PerExample(teacher_target_confidence=examples["target_prob_t"], rescaling_weight=examples.get("w"),
                            untrained_rescaling_weight=examples["w_untrained"], difficulty=difficulty),
    )
    if "student" not in data.roles:
        return InstanceOnSet.unmeasured(NO_STUDENT, dataset=data.name, **teacher_side)
    mean_w, std_w = data.mean("w"), data.moments.std("w")
    student_wrong = examples["student.correct"] == 0
    return InstanceOnSet(
        data.name, **teacher_side,
        rescaling_weight_mean=measured(mean_w, why_none=W_OVERFLOW),
        rescaling_weight_cv=measured(_cv(mean_w, std_w), why_none=W_OVERFLOW if mean_w is None else W_ZERO_MEAN),
        rescaling_weight_low_share=measured(data.mean("w_low")),
        confidence_error_auroc=measured(
            metric.confidence_error_auroc_of(examples["teacher.nontarget_log_mass"], student_wrong),
            why_none=STUDENT_ALWAYS_WRONG if data.mean("student.correct") == 0 else STUDENT_NEVER_WRONG),
        tckd=measured(data.mean("tckd")),
        nckd=measured(data.mean("nckd")),
    )


def _cv(mean: float | None, std: float | None) -> float | None:
    """std / |mean|; None when undefined (as :func:`~kddiag.metrics.metric.coefficient_of_variation_of`)."""
    return None if mean is None or std is None or mean == 0 else std / abs(mean)


def _difficulty(data: SetSummary) -> tuple[np.ndarray, str]:
    """Per-example difficulty on the reservoir: the baseline's cross-entropy; else, on token positions, the
    target token's surprisal under the set's token frequencies; else k-NN label disagreement (NaN off the
    row reservoir's k-NN subsample).

    k-NN runs in the teacher's feature space (its logits when no features) on a fixed-seed
    subsample of the row reservoir of at most KNN_MAX_SAMPLES examples and KNN_MAX_WORK distance multiply-adds.
    """
    examples, rows = data.examples, data.rows
    if "baseline" in data.roles:
        return examples["baseline.nll"], "baseline_loss"
    if data.strata:  # token positions: a rare next token is a hard one
        return metric.token_surprisal_of(examples["labels"], data.label_count), "token_frequency"
    source, space = knn_space(data)
    usable = np.flatnonzero(np.isfinite(space[:, 0]))
    pick = usable[subsample_indices(usable.size, knn_rows(usable.size, space.shape[1]))]
    difficulty = np.full(examples["index"].size, np.nan)
    if pick.size >= 2:
        where = np.searchsorted(examples["index"], rows["index"][pick])  # the row reservoir is in the example one
        space = space[pick] if space.dtype in (np.float32, np.float64) else space[pick].astype(np.float64)
        difficulty[where] = metric.knn_label_disagreement_of(space, rows["labels"][pick])
    return difficulty, source


def knn_space(data: SetSummary) -> tuple[str, np.ndarray]:
    """Where k-NN difficulty runs: the teacher's features, else its logits (the row reservoir's)."""
    if "teacher" in data.feature_roles:
        return "knn_disagreement_features", data.rows["teacher.features"]
    return "knn_disagreement_logits", data.rows["teacher.logits"]


def knn_rows(n_usable: int, n_features: int) -> int:
    """How many of ``n_usable`` reservoir rows k-NN difficulty reads: KNN_MAX_SAMPLES, and KNN_MAX_WORK."""
    limit = int(min(KNN_MAX_SAMPLES, np.sqrt(KNN_MAX_WORK / max(1, n_features))))
    return min(n_usable, max(limit, metric.N_NEIGHBORS + 1))


# ---------------------------------------------------------------- headline rows

W_SHOWN_MAX = 100.0  # the trained student's mean w and CV are shown within ±this (report.json keeps them)

HEADLINES = (
    Headline("rescaling weight w, mean", lambda r: {"student": r.rescaling_weight_mean}, clip=W_SHOWN_MAX),
    Headline("rescaling weight w, CV", lambda r: {"teacher": r.untrained_rescaling_weight_cv,
                                                  "student": r.rescaling_weight_cv}, clip=W_SHOWN_MAX),
    Headline(f"share of w < {LOW_WEIGHT:g}", lambda r: {"teacher": r.untrained_rescaling_weight_low_share,
                                                        "student": r.rescaling_weight_low_share}),
    Headline("Spearman(w, −difficulty)", lambda r: {"teacher": r.rescaling_difficulty_correlation}),
    Headline("AUROC conf. → student error", lambda r: {"student": r.confidence_error_auroc}),
    Headline("TCKD at τ", lambda r: {"student": r.tckd}),
    Headline("NCKD at τ", lambda r: {"student": r.nckd}),
    Headline("NCKD weight mean(1 − p_y)", lambda r: {"teacher": r.nckd_weight}),
    Headline("teacher error rate", lambda r: {"teacher": r.teacher_error_rate}),
)
HEADLINE_NOTES = ("teacher column of the w rows: w of an untrained student, the teacher's effect alone; "
                  "the diagnosis reads these",
                  "student column of the w rows: the trained student's w = g_y / (q¹_y − 1) is heavy-tailed "
                  "where the student is confident (q¹_y → 1), so its mean and CV are dominated by a few "
                  "examples")
