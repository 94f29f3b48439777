"""Level 0 — outcome: accuracy, fidelity to the teacher (agreement, KL) and the KD gain over the baseline.

The per-example columns it asks of the softmax pass, the record it fills per data set
(:class:`OutcomeOnSet`), how it fills it (:func:`measure_set`), and its headline rows.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from kddiag.levels._columns import Block, Column, classes_above, per_model
from kddiag.levels._common import NO_BASELINE, NO_STUDENT, absent, mean_ci
from kddiag.levels._record import Headline, Level, Measured, OnSet, measured, missing, unavailable
from kddiag.metrics import fidelity, strata
from kddiag.metrics.strata import Breakdown
from kddiag.summary import SetSummary
from kddiag.types import OUTCOME, ROLES

NAME = OUTCOME  # the level's name in report.json and the reports
NOT_TOKENS = "language models only (examples are token positions)"
MIN_EXAMPLES_PER_CLASS_RELABELLING = 10  # the relabelling search needs this many examples per class on average
TOP_K = 5  # top-k agreement: the student's prediction among the teacher's TOP_K highest logits
FEW_CLASSES_FOR_TOP_K_AGREEMENT = (f"needs more than {TOP_K} classes (with fewer every prediction is in the "
                                   f"teacher's top {TOP_K})")

TEACHER_STUDENT = frozenset({"teacher", "student"})


# ---------------------------------------------------------------- per-example columns

def _correct(block: Block, role: str) -> np.ndarray:
    return (block.one[role].prediction == block.labels).astype(np.float64)


def _agree(block: Block, other: str) -> np.ndarray:
    return (block.one["teacher"].prediction == block.one[other].prediction).astype(np.float64)


def _in_teacher_top_k(block: Block) -> np.ndarray | None:
    """1.0 where fewer than TOP_K classes have a teacher logit above the one of the student's prediction
    (ties count for the student); None with TOP_K classes or fewer."""
    z = block.logits["teacher"]
    if z.shape[1] <= TOP_K:
        return None
    return (classes_above(z, block.one["student"].prediction) < TOP_K).astype(np.float64)


COLUMNS = (
    *per_model("correct", _correct, mean=True, sample=True,
               strata={"teacher": "teacher_accuracy", "student": "student_accuracy"}),
    *per_model("prediction", lambda block, role: block.one[role].prediction, sample=True,
               roles=("teacher", "student")),
    Column("agree", lambda block: _agree(block, "student"), TEACHER_STUDENT, mean=True, sample=True,
           stratum="agreement"),
    Column("top_k_agree", _in_teacher_top_k, TEACHER_STUDENT, mean=True, sample=True),
    Column("agree_where_teacher_correct", lambda block: block["agree"] * block["teacher.correct"], TEACHER_STUDENT,
           mean=True),
    Column("baseline_agree", lambda block: _agree(block, "baseline"), frozenset({"teacher", "baseline"}), mean=True),
    Column("kl", lambda block: block.one["teacher"].kl_divergence(), TEACHER_STUDENT, mean=True, sample=True,
           stratum="kl_teacher_student"),
    Column("kl_t", lambda block: block.teacher_t.kl_divergence(), TEACHER_STUDENT, mean=True,
           stratum="kl_teacher_student_at_temperature"),
    Column("kl_reverse", lambda block: block.one["student"].kl_divergence_to(block.one["teacher"]), TEACHER_STUDENT,
           mean=True, sample=True),
    Column("kl_reverse_t", lambda block: block.student_t.kl_divergence_to(block.teacher_t), TEACHER_STUDENT,
           mean=True),
    Column("gain", lambda block: block["student.correct"] - block["baseline.correct"],
           frozenset({"student", "baseline"}), mean=True, sample=True),
)


# ---------------------------------------------------------------- the record

@dataclass(frozen=True)
class OutcomeOnSet(OnSet):
    """Accuracy, fidelity (agreement, KL) and the KD gain on one data set."""

    LEVEL: ClassVar[str] = OUTCOME
    dataset: str
    teacher_accuracy: Measured[float] = field(default_factory=missing)
    student_accuracy: Measured[float] = field(default_factory=missing)
    baseline_accuracy: Measured[float] = field(default_factory=missing)
    agreement: Measured[float] = field(default_factory=missing)
    top_k_agreement: Measured[float] = field(default_factory=missing)  # student's top-1 in the teacher's top TOP_K
    agreement_where_teacher_correct: Measured[float] = field(default_factory=missing)
    baseline_agreement: Measured[float] = field(default_factory=missing)
    kl_teacher_student: Measured[float] = field(default_factory=missing)
    kl_teacher_student_at_temperature: Measured[float] = field(default_factory=missing)
    kl_student_teacher: Measured[float] = field(default_factory=missing)  # reverse KL(q¹ ‖ p¹)
    kl_student_teacher_at_temperature: Measured[float] = field(default_factory=missing)
    kd_gain: Measured[float] = field(default_factory=missing)
    permuted_agreement: Measured[float] = field(default_factory=missing)
    permuted_agreement_chance: Measured[float] = field(default_factory=missing)  # the same search on unpaired rows
    class_permutation: Measured[np.ndarray] = field(default_factory=missing)  # student k ↔ teacher π[k]
    by_token_frequency: Measured[Breakdown] = field(default_factory=missing)  # token positions only
    by_position: Measured[Breakdown] = field(default_factory=missing)


@dataclass(frozen=True)
class OutcomeResult(Level):
    """Level 0 — outcome."""

    LEVEL: ClassVar[str] = OUTCOME
    eval: OutcomeOnSet | None = None
    transfer: OutcomeOnSet | None = None


ON_SET = OutcomeOnSet  # the record measure_set fills


# ---------------------------------------------------------------- measuring

def measure_set(data: SetSummary) -> OutcomeOnSet:
    """The outcome of one data set from its summary."""
    accuracy = {role: mean_ci(data, f"{role}.correct") if role in data.roles else unavailable(absent(role))
                for role in ROLES}
    baseline_agreement = (measured(data.mean("baseline_agree")) if "baseline" in data.roles
                          else unavailable(NO_BASELINE))
    shared = dict(teacher_accuracy=accuracy["teacher"], student_accuracy=accuracy["student"],
                  baseline_accuracy=accuracy["baseline"], baseline_agreement=baseline_agreement,
                  **{field_name: (measured(strata.breakdown_of(name, *data.strata[name])) if name in data.strata
                                  else unavailable(NOT_TOKENS))
                     for field_name, name in (("by_token_frequency", strata.FREQUENCY),
                                              ("by_position", strata.POSITION))})
    if "student" not in data.roles:
        return OutcomeOnSet.unmeasured(NO_STUDENT, dataset=data.name, **shared)
    teacher_right = data.moments.sum("teacher.correct")
    permuted, chance, permutation = _relabelling(data)
    return OutcomeOnSet(
        data.name, **shared,
        agreement=mean_ci(data, "agree"),
        top_k_agreement=(mean_ci(data, "top_k_agree") if "top_k_agree" in data.moments.names
                         else unavailable(FEW_CLASSES_FOR_TOP_K_AGREEMENT)),
        agreement_where_teacher_correct=(
            measured(data.moments.sum("agree_where_teacher_correct") / teacher_right) if teacher_right > 0
            else unavailable("the teacher is right on no example")),
        kl_teacher_student=mean_ci(data, "kl"),
        kl_teacher_student_at_temperature=measured(data.mean("kl_t")),
        kl_student_teacher=mean_ci(data, "kl_reverse"),
        kl_student_teacher_at_temperature=measured(data.mean("kl_reverse_t")),
        kd_gain=mean_ci(data, "gain") if "baseline" in data.roles else unavailable(NO_BASELINE),
        permuted_agreement=permuted, permuted_agreement_chance=chance, class_permutation=permutation,
    )


def _relabelling(data: SetSummary) -> tuple[Measured, ...]:
    """Agreement after the best relabelling of the student's classes, the same on unpaired rows (what the
    search finds by chance: the reservoir's student predictions shuffled with a fixed seed), and the
    relabelling. Needs MIN_EXAMPLES_PER_CLASS_RELABELLING examples per class: with fewer, any
    relabelling fits. Beyond DENSE_CLASSES classes the search covers the kept classes; the others keep
    their labels."""
    n_samples, n_classes = data.n_samples, data.n_classes
    if n_samples < MIN_EXAMPLES_PER_CLASS_RELABELLING * n_classes:
        why = (f"not enough data for the relabelling search: {n_samples} examples for {n_classes} classes "
               f"(at least {MIN_EXAMPLES_PER_CLASS_RELABELLING} per class)")
        return unavailable(why), unavailable(why), unavailable(why)
    kept = data.kept_classes
    agreed_outside = data.moments.sum("agree") - np.trace(data.confusion)  # pairs outside the kept classes
    permuted, permutation = _relabelled(data.confusion, agreed_outside, n_samples, kept, n_classes)
    teacher_pred, student_pred = data.examples["teacher.prediction"], data.examples["student.prediction"]
    unpaired = np.random.default_rng(0).permutation(student_pred)
    if kept is None:
        confusion, outside = fidelity.confusion_of(teacher_pred, unpaired, n_classes), 0
    else:
        position = np.full(n_classes, -1, dtype=np.int64)
        position[kept] = np.arange(kept.size)
        t, s = position[teacher_pred], position[unpaired]
        inside = (t >= 0) & (s >= 0)
        confusion = fidelity.confusion_of(t[inside], s[inside], kept.size)
        outside = int(np.sum((teacher_pred == unpaired) & ~inside))
    chance, _ = _relabelled(confusion, outside, teacher_pred.size, kept, n_classes)
    return measured(permuted), measured(chance), measured(permutation)


def _relabelled(confusion: np.ndarray, agreed_outside: float, n_samples: int, kept: np.ndarray | None,
                n_classes: int) -> tuple[float, np.ndarray]:
    """Agreement after the best relabelling of the classes ``confusion`` covers (all, or ``kept``), and the
    relabelling over all C classes (identity outside ``kept``)."""
    within = fidelity.permutation_from(confusion)
    agreed = confusion[within, np.arange(within.size)].sum() + agreed_outside
    if kept is None:
        return float(agreed / n_samples), within
    permutation = np.arange(n_classes)
    permutation[kept] = kept[within]
    return float(agreed / n_samples), permutation


# ---------------------------------------------------------------- headline rows

HEADLINES = (
    Headline("accuracy", lambda r: {"teacher": r.teacher_accuracy, "student": r.student_accuracy,
                                    "baseline": r.baseline_accuracy}),
    Headline("top-1 agreement with teacher", lambda r: {"student": r.agreement, "baseline": r.baseline_agreement}),
    Headline(f"student top-1 in teacher top {TOP_K}", lambda r: {"student": r.top_k_agreement}),
    Headline("agreement after relabelling", lambda r: {"student": r.permuted_agreement}),
    Headline("KL(teacher‖model), τ=1, nats", lambda r: {"student": r.kl_teacher_student}),
    Headline("KL(teacher‖model) at τ, nats", lambda r: {"student": r.kl_teacher_student_at_temperature}),
    Headline("KL(model‖teacher), τ=1, nats", lambda r: {"student": r.kl_student_teacher}),
    Headline("KD gain over baseline", lambda r: {"student": r.kd_gain}),
)
