"""Level 2 — domain knowledge: the class relationships in each model's outputs and logit-layer weights, and
how well the student's match the teacher's.

The per-example columns it asks of the softmax pass, its records (:class:`DomainOnSet` per data set,
:class:`DomainOnWeights` once), how it fills them (:func:`measure_set`, :func:`measure_weights`), and its
headline rows.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import ClassVar

import numpy as np

from kddiag.levels._columns import Column, per_model
from kddiag.levels._common import absent
from kddiag.levels._record import (Headline, Level, Measured, OnSet, Record, each_model, measured, missing,
                                   unavailable)
from kddiag.metrics import domain as metric
from kddiag.metrics._common import subsample_indices
from kddiag.summary import SetSummary
from kddiag.types import DOMAIN, ROLES, TRANSFER, WEIGHTS

NAME = DOMAIN  # the level's name in report.json and the reports
NO_WEIGHTS_LOGITS_MODE = "logits mode: no logit-layer weights"
NO_WEIGHTS = "no logit-layer weights found"
NO_FEATURES = "no penultimate features found"
NO_GROUPS = "no class groups given"
NEEDS_THREE_CLASSES = "needs at least 3 classes (with 2 the non-target distribution is a single class)"
FEW_CLASSES_FOR_TOP_K = (f"needs more than {metric.TOP_K_ALTERNATIVES + 1} classes (with fewer the top "
                         f"{metric.TOP_K_ALTERNATIVES} wrong classes hold all the non-target mass)")
NO_POSITIVE_MARGIN = "no example has a positive margin z_y − mean_{k≠y} z_k"
CONSTANT_SIMILARITY = "a similarity matrix is constant off the diagonal (or has fewer than 3 finite pairs)"
GROUPS_ONE_SIDED = "the class groups put every class pair on the same side (all same group or all different)"
NO_FEATURE_VARIANCE = "a model's features do not vary across examples"

CKA_MAX_SAMPLES = 1024  # linear CKA on at most this many examples (fixed-seed subsample; no rule reads it)


# ---------------------------------------------------------------- per-example columns

COLUMNS = (
    *per_model("dark_knowledge", lambda block, role: metric.dark_knowledge_per_example(block.one[role]), mean=True),
    Column("dark_knowledge_t", lambda block: metric.dark_knowledge_per_example(block.teacher_t), mean=True),
    Column("alternatives_t", lambda block: metric.dark_knowledge_alternatives_per_example(block.teacher_t), mean=True),
    *per_model("logit_spread", lambda block, role: block.one[role].logit_spread, sample=True),
)


# ---------------------------------------------------------------- the records

@dataclass(frozen=True)
class ClassStructure(Record):
    """One model's class structure from its outputs at τ = 1."""

    dark_knowledge_content: Measured[float] = field(default_factory=missing)
    nontarget_logit_spread: Measured[float] = field(default_factory=missing)
    output_similarity: Measured[np.ndarray] = field(default_factory=missing)  # (C, C), NaN rows: class absent
    group_recovery: Measured[float] = field(default_factory=missing)


@dataclass(frozen=True)
class DomainOnSet(OnSet):
    """Class structure of every model and how well the student's matches the teacher's, on one data set."""

    LEVEL: ClassVar[str] = DOMAIN
    dataset: str
    teacher: ClassStructure = field(default_factory=ClassStructure)
    student: ClassStructure = field(default_factory=ClassStructure)
    baseline: ClassStructure = field(default_factory=ClassStructure)
    dark_knowledge_content_at_temperature: Measured[float] = field(default_factory=missing)
    dark_knowledge_alternatives_at_temperature: Measured[float] = field(default_factory=missing)
    top_k_nontarget_share_at_temperature: Measured[float] = field(default_factory=missing)
    output_similarity_transfer_score: Measured[float] = field(default_factory=missing)
    baseline_output_similarity_transfer_score: Measured[float] = field(default_factory=missing)
    feature_cka: Measured[float] = field(default_factory=missing)
    baseline_feature_cka: Measured[float] = field(default_factory=missing)


@dataclass(frozen=True)
class WeightStructure(Record):
    """One model's class structure from its logit-layer weights."""

    weight_similarity: Measured[np.ndarray] = field(default_factory=missing)  # (C, C)
    weight_group_recovery: Measured[float] = field(default_factory=missing)


@dataclass(frozen=True)
class DomainOnWeights(OnSet):
    """Class structure read from the logit-layer weights (data set 'weights')."""

    LEVEL: ClassVar[str] = DOMAIN
    dataset: str = WEIGHTS
    teacher: WeightStructure = field(default_factory=WeightStructure)
    student: WeightStructure = field(default_factory=WeightStructure)
    baseline: WeightStructure = field(default_factory=WeightStructure)
    weight_similarity_transfer_score: Measured[float] = field(default_factory=missing)
    baseline_weight_similarity_transfer_score: Measured[float] = field(default_factory=missing)


@dataclass(frozen=True)
class DomainResult(Level):
    """Level 2 — domain knowledge."""

    LEVEL: ClassVar[str] = DOMAIN
    eval: DomainOnSet | None = None
    transfer: DomainOnSet | None = None
    weights: DomainOnWeights = field(default_factory=DomainOnWeights)


ON_SET = DomainOnSet  # the record measure_set fills


# ---------------------------------------------------------------- measuring

def measure_set(data: SetSummary, groups: np.ndarray | None) -> DomainOnSet:
    """Every model's class structure and how the student's matches the teacher's on one data set."""
    kept_groups = groups if groups is None or data.kept_classes is None else groups[data.kept_classes]
    similarity = {role: metric.output_similarity_of(data.class_sums[role]) for role in data.roles}
    structure = {}
    for role in ROLES:
        if role not in data.roles:
            structure[role] = ClassStructure(**{item.name: unavailable(absent(role))
                                                for item in fields(ClassStructure)})
            continue
        spread = data.examples[f"{role}.logit_spread"]
        spread = spread[np.isfinite(spread)]
        structure[role] = ClassStructure(
            dark_knowledge_content=measured(data.mean(f"{role}.dark_knowledge") if data.n_classes >= 3 else None,
                                            why_none=NEEDS_THREE_CLASSES),
            nontarget_logit_spread=measured(float(np.median(spread)) if spread.size else None,
                                            why_none=NO_POSITIVE_MARGIN),
            output_similarity=measured(similarity[role]),
            group_recovery=_group_recovery(similarity[role], kept_groups),
        )
    score, baseline_score = _transfer_scores(similarity, {role: absent(role) for role in ROLES})
    cka = {}
    for other in ("student", "baseline"):
        if other not in data.roles:
            cka[other] = unavailable(absent(other))
        elif not {"teacher", other} <= data.feature_roles:
            cka[other] = unavailable(NO_FEATURES)
        else:
            cka[other] = measured(_feature_cka(data.rows["teacher.features"], data.rows[f"{other}.features"]),
                                  why_none=NO_FEATURE_VARIANCE)
    return DomainOnSet(
        data.name, **structure,
        dark_knowledge_content_at_temperature=measured(data.mean("dark_knowledge_t") if data.n_classes >= 3
                                                       else None, why_none=NEEDS_THREE_CLASSES),
        dark_knowledge_alternatives_at_temperature=measured(data.mean("alternatives_t")),
        top_k_nontarget_share_at_temperature=measured(_top_k_share(data), why_none=FEW_CLASSES_FOR_TOP_K),
        output_similarity_transfer_score=score, baseline_output_similarity_transfer_score=baseline_score,
        feature_cka=cka["student"], baseline_feature_cka=cka["baseline"],
    )


def _top_k_share(data: SetSummary) -> float | None:
    """The teacher's top-k non-target share at τ, on the row sample (exact per row; a sample of rows)."""
    logits = data.rows["teacher.logits"]
    keep = np.flatnonzero(np.isfinite(logits[:, 0]))
    if keep.size == 0:
        return None
    shares = metric.top_k_nontarget_share_per_example(logits[keep], data.rows["labels"][keep],
                                                      temperature=data.temperature)
    return None if shares is None else float(np.mean(shares))


def _feature_cka(teacher: np.ndarray, other: np.ndarray) -> float | None:
    """Linear CKA on the reservoir rows both models kept features for, at most CKA_MAX_SAMPLES of them
    (fixed-seed subsample), products in float32. O(n·d²) or O(n²·d): bounded, not the full set."""
    both = np.flatnonzero(np.isfinite(teacher[:, 0]) & np.isfinite(other[:, 0]))
    pick = both[subsample_indices(both.size, CKA_MAX_SAMPLES)]
    if pick.size < 2:
        return None
    return metric.linear_cka_of(np.asarray(teacher[pick], dtype=np.float32),
                                np.asarray(other[pick], dtype=np.float32))


def _group_recovery(similarity: np.ndarray, groups: np.ndarray | None) -> Measured:
    if groups is None:
        return unavailable(NO_GROUPS)
    return measured(metric.group_recovery_of(similarity, groups), why_none=GROUPS_ONE_SIDED)


def _transfer_scores(similarity: dict[str, np.ndarray], why_missing: str | dict[str, str]) -> tuple[Measured, Measured]:
    """Spearman of the teacher's similarity matrix with the student's, and with the baseline's."""
    scores = []
    for other in ("student", "baseline"):
        missing = [role for role in ("teacher", other) if role not in similarity]
        if missing:
            scores.append(unavailable(why_missing if isinstance(why_missing, str) else why_missing[missing[0]]))
        else:
            scores.append(measured(metric.similarity_transfer_score_of(similarity["teacher"], similarity[other]),
                                   why_none=CONSTANT_SIMILARITY))
    return scores[0], scores[1]


def measure_weights(sets: list[SetSummary], groups: np.ndarray | None) -> DomainOnWeights:
    """Weight-based class similarity, once (data set 'weights'), over the classes the transfer set's
    class-by-class statistics keep (else the eval set's): all of them up to DENSE_CLASSES."""
    kept = next((s for s in sets if s.name == TRANSFER), sets[0]).kept_classes
    if kept is not None and groups is not None:
        groups = groups[kept]
    weight, why = {}, {}
    for role in ROLES:
        holding = [s for s in sets if role in s.roles]
        found = [s.weights[role] for s in holding if role in s.weights]
        if not holding:
            why[role] = absent(role)
        elif not found:
            logits_mode = all(role not in s.feature_roles for s in holding)
            why[role] = NO_WEIGHTS_LOGITS_MODE if logits_mode else NO_WEIGHTS
        else:
            weight[role] = np.asarray(found[0] if kept is None else found[0][kept], dtype=np.float64)
    similarity = {role: metric.weight_similarity_of(w) for role, w in weight.items()}
    structure = {
        role: (WeightStructure(weight_similarity=measured(similarity[role]),
                               weight_group_recovery=_group_recovery(similarity[role], groups))
               if role in similarity else
               WeightStructure(weight_similarity=unavailable(why[role]), weight_group_recovery=unavailable(why[role])))
        for role in ROLES
    }
    score, baseline_score = _transfer_scores(similarity, why)
    return DomainOnWeights(**structure, weight_similarity_transfer_score=score,
                           baseline_weight_similarity_transfer_score=baseline_score)


# ---------------------------------------------------------------- headline rows

def _weights_record(level: DomainResult) -> tuple:
    return (level.weights,)


HEADLINES = (
    Headline("dark-knowledge content, τ=1", each_model(lambda m: m.dark_knowledge_content)),
    Headline("dark-knowledge content at τ", lambda r: {"teacher": r.dark_knowledge_content_at_temperature}),
    Headline("wrong classes it spreads over, at τ",
             lambda r: {"teacher": r.dark_knowledge_alternatives_at_temperature}),
    Headline("top-10 share of wrong-class mass, τ", lambda r: {"teacher": r.top_k_nontarget_share_at_temperature}),
    Headline("non-target logit spread", each_model(lambda m: m.nontarget_logit_spread)),
    Headline("output-sim. match (Spearman)", lambda r: {"student": r.output_similarity_transfer_score,
                                                       "baseline": r.baseline_output_similarity_transfer_score}),
    Headline("weight-sim. match (Spearman)", lambda r: {"student": r.weight_similarity_transfer_score,
                                                       "baseline": r.baseline_weight_similarity_transfer_score},
             _weights_record),
    Headline("group recovery AUROC (output)", each_model(lambda m: m.group_recovery)),
    Headline("group recovery AUROC (weights)", each_model(lambda m: m.weight_group_recovery), _weights_record),
    Headline("feature CKA with teacher", lambda r: {"student": r.feature_cka, "baseline": r.baseline_feature_cka}),
)
