"""The measure stage: every metric of the catalog (docs/metrics.md) on every data set given.

``measure`` turns the collected outputs (:class:`~kddiag.types.Collected`) into typed
:class:`~kddiag.results.Measurements`, one result per knowledge level. It runs the softmax pass once
per model and temperature and hands the summaries to the metric modules, one per knowledge level. A metric that cannot be computed is still
emitted, with value None and the reason (no baseline, no weights in logits mode, …): never a made-up value.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Sequence

import numpy as np

from kddiag.metrics import domain, fidelity, instance, universe, whatif
from kddiag.metrics._common import SoftmaxStats, softmax_stats, subsample_indices
from kddiag.results import (Calibration, ClassStructure, DomainOnSet, DomainOnWeights, DomainResult, InstanceOnSet,
                            InstanceResult, Measured, Measurements, OutcomeOnSet, OutcomeResult, PerExample,
                            ReliabilityCalibration, UniverseOnSet, UniverseResult, WeightStructure, measured,
                            unavailable)
from kddiag.types import EVAL, ROLES, TRANSFER, ClassInfo, Collected, ModelOutputs, SetOutputs, Settings


NO_BASELINE = "no baseline given"
NO_WEIGHTS_LOGITS_MODE = "logits mode: no logit-layer weights"
NO_WEIGHTS = "no logit-layer weights found"
NO_FEATURES = "no penultimate features found"
NEEDS_BOTH_SETS = "needs both eval and transfer sets"
NO_GROUPS = "no class groups given"
NEEDS_THREE_CLASSES = "needs at least 3 classes (with 2 the non-target distribution is a single class)"
NO_POSITIVE_MARGIN = "no example has a positive margin z_y − mean_{k≠y} z_k"
CONSTANT_SIMILARITY = "a similarity matrix is constant off the diagonal (or has fewer than 3 finite pairs)"
GROUPS_ONE_SIDED = "the class groups put every class pair on the same side (all same group or all different)"
NO_FEATURE_VARIANCE = "a model's features do not vary across examples"
W_OVERFLOW = ("w overflows: the student is saturated on some examples, where its cross-entropy gradient "
              "1 − q¹_y underflows")
W_ZERO_MEAN = "mean rescaling weight is 0"
STUDENT_NEVER_WRONG = "the student makes no error on this set (AUROC needs errors and non-errors)"
STUDENT_ALWAYS_WRONG = "the student is wrong on every example of this set (AUROC needs errors and non-errors)"
CONSTANT_DIFFICULTY = "rescaling weight or difficulty is constant over the examples"

MIN_EXAMPLES = 30  # a set with fewer examples (or fewer than one per class) gives no measurement: "not enough data"
MIN_EXAMPLES_PER_CLASS_RELABELLING = 10  # the relabelling search needs this many examples per class on average
KNN_MAX_SAMPLES = 5000  # k-NN difficulty on at most this many examples (fixed-seed subsample) …
KNN_MAX_WORK = 1e9  # … and at most this many distance multiply-adds (n_sub² · n_features)
CKA_MAX_SAMPLES = 2048  # linear CKA on at most this many examples (fixed-seed subsample)


@dataclass(frozen=True)
class _Set:
    """One data set's outputs, by role."""

    name: str  # EVAL or TRANSFER
    labels: np.ndarray
    logits: dict[str, np.ndarray]  # role -> (n_samples, n_classes)
    outputs: dict[str, ModelOutputs]  # role -> outputs (features, weight)


@dataclass(frozen=True)
class _Views:
    """The softmax summaries of one set: τ = 1 (with class sums) and the distillation τ."""

    one: dict[str, SoftmaxStats]  # role -> stats at τ = 1; teacher's with cross terms against the student
    teacher_t: SoftmaxStats  # at τ, with cross terms against the student
    student_t: SoftmaxStats


def measure(outputs: Collected | Sequence[SetOutputs], *, settings: Settings, class_info: ClassInfo) -> Measurements:
    """Every catalog metric on every data set collected (eval and/or transfer), one result per level.

    Weight-based metrics are computed once (data set "weights"); ``softness_gap`` needs both sets;
    the temperature what-if is measured on the transfer set, else on eval. The inputs are valid by
    construction (:class:`~kddiag.types.Collected`, :class:`~kddiag.types.Settings`); ``class_info``
    must match the class count. A plain sequence of sets is checked as a ``Collected``.
    """
    outputs = outputs if isinstance(outputs, Collected) else Collected(tuple(outputs))
    checked = [_as_set(data) for data in outputs]
    enough = [data for data in checked if _enough(data)]
    groups = None if class_info.groups is None else np.asarray(class_info.groups)
    temperature, alpha = settings.temperature.value, settings.alpha.value
    views = {data.name: _views(data, temperature) for data in enough}
    makers = {OutcomeResult: (OutcomeOnSet, _outcome), UniverseResult: (UniverseOnSet, _universe),
              DomainResult: (DomainOnSet, lambda d, v: _domain(d, v, groups)),
              InstanceResult: (InstanceOnSet, lambda d, v: _instance(d, v, alpha))}
    per_set = {level: {data.name: make(data, views[data.name]) if data.name in views
                       else record.unmeasured(_not_enough(data), dataset=data.name) for data in checked}
               for level, (record, make) in makers.items()}
    return Measurements(
        outcome=OutcomeResult(**per_set[OutcomeResult]),
        universe=UniverseResult(**per_set[UniverseResult], softness_gap=_softness_gap(views, checked),
                                temperature_whatif=_whatif(checked, alpha)),
        domain=DomainResult(**per_set[DomainResult], weights=_weights(checked, groups)),
        instance=InstanceResult(**per_set[InstanceResult]),
    )


def _enough(data: _Set) -> bool:
    """At least MIN_EXAMPLES examples and one per class on average: below that, rates and class-by-class
    statistics are noise."""
    n_classes = next(iter(data.logits.values())).shape[1]
    return data.labels.size >= max(MIN_EXAMPLES, n_classes)


def _not_enough(data: _Set) -> str:
    n_classes = next(iter(data.logits.values())).shape[1]
    return (f"not enough data: {data.labels.size} examples on the {data.name} set for {n_classes} classes "
            f"(measurements need at least {MIN_EXAMPLES} and one per class)")


def _as_set(data: SetOutputs) -> _Set:
    outputs = {role: getattr(data, role) for role in ROLES if getattr(data, role) is not None}
    return _Set(data.dataset, data.labels, {role: out.logits for role, out in outputs.items()}, outputs)


# ---------------------------------------------------------------- the softmax pass, once per model and τ

def _views(data: _Set, temperature: float) -> _Views:
    y, logits = data.labels, data.logits
    threshold = universe.bin_edges(universe.N_BINS)[1]  # class-wise ECE lists the entries above the first bin
    one = {"student": softmax_stats(logits["student"], y, class_sums_threshold=threshold, logit_spread=True)}
    one["teacher"] = softmax_stats(logits["teacher"], y, versus=(logits["student"], one["student"]),
                                   class_sums_threshold=threshold, logit_spread=True)
    if "baseline" in logits:
        one["baseline"] = softmax_stats(logits["baseline"], y, class_sums_threshold=threshold, logit_spread=True)
    if temperature == 1.0:
        return _Views(one, one["teacher"], one["student"])
    student_t = softmax_stats(logits["student"], y, temperature=temperature)
    teacher_t = softmax_stats(logits["teacher"], y, temperature=temperature, versus=(logits["student"], student_t))
    return _Views(one, teacher_t, student_t)


# ---------------------------------------------------------------- level 0

def _outcome(data: _Set, view: _Views) -> OutcomeOnSet:
    y, one = data.labels, view.one
    correct = {role: (stats.prediction == y).astype(np.float64) for role, stats in one.items()}
    accuracy = {role: measured(np.mean(correct[role]), ci=fidelity.bootstrap_ci(correct[role])) if role in correct
                else unavailable(NO_BASELINE) for role in ROLES}
    agree = (one["teacher"].prediction == one["student"].prediction).astype(np.float64)
    teacher_right = correct["teacher"] > 0  # where following the label and the teacher is the same thing
    kl = one["teacher"].kl_divergence()
    if "baseline" in one:
        gain = correct["student"] - correct["baseline"]
        baseline_agreement = measured(fidelity.agreement_of(one["teacher"].prediction, one["baseline"].prediction))
        kd_gain = measured(np.mean(gain), ci=fidelity.bootstrap_ci(gain))
    else:
        baseline_agreement = kd_gain = unavailable(NO_BASELINE)
    permuted, chance, permutation = _relabelling(one["teacher"].prediction, one["student"].prediction,
                                                 one["teacher"].n_classes)
    return OutcomeOnSet(
        data.name,
        teacher_accuracy=accuracy["teacher"], student_accuracy=accuracy["student"],
        baseline_accuracy=accuracy["baseline"],
        agreement=measured(np.mean(agree), ci=fidelity.bootstrap_ci(agree)),
        agreement_where_teacher_correct=(measured(np.mean(agree[teacher_right])) if teacher_right.any()
                                         else unavailable("the teacher is right on no example")),
        baseline_agreement=baseline_agreement,
        kl_teacher_student=measured(np.mean(kl), ci=fidelity.bootstrap_ci(kl)),
        kl_teacher_student_at_temperature=measured(np.mean(view.teacher_t.kl_divergence())),
        kd_gain=kd_gain,
        permuted_agreement=permuted, permuted_agreement_chance=chance, class_permutation=permutation,
    )


def _relabelling(teacher_pred: np.ndarray, student_pred: np.ndarray, n_classes: int) -> tuple[Measured, ...]:
    """Agreement after the best relabelling of the student's classes, the same on unpaired rows (what the
    search finds by chance: the student's predictions shuffled with a fixed seed), and the relabelling.
    Needs MIN_EXAMPLES_PER_CLASS_RELABELLING examples per class: with fewer, any relabelling fits."""
    n_samples = teacher_pred.size
    if n_samples < MIN_EXAMPLES_PER_CLASS_RELABELLING * n_classes:
        why = (f"not enough data for the relabelling search: {n_samples} examples for {n_classes} classes "
               f"(at least {MIN_EXAMPLES_PER_CLASS_RELABELLING} per class)")
        return unavailable(why), unavailable(why), unavailable(why)
    permutation = fidelity.permutation_of(teacher_pred, student_pred, n_classes)
    unpaired = np.random.default_rng(0).permutation(student_pred)
    chance = fidelity.agreement_of(teacher_pred, fidelity.permutation_of(teacher_pred, unpaired, n_classes)[unpaired])
    return (measured(fidelity.agreement_of(teacher_pred, permutation[student_pred])), measured(chance),
            measured(permutation))


# ---------------------------------------------------------------- level 1

def _universe(data: _Set, view: _Views) -> UniverseOnSet:
    teacher = view.teacher_t
    return UniverseOnSet(
        data.name,
        teacher=_calibration(data, view, "teacher", ReliabilityCalibration),
        student=_calibration(data, view, "student", ReliabilityCalibration),
        baseline=_calibration(data, view, "baseline", Calibration),
        effective_smoothing=measured(universe.effective_smoothing_of(teacher)),
        equivalent_smoothing=measured(universe.equivalent_smoothing_of(teacher)),
        saturation_share=measured(universe.saturation_share_of(teacher)),
        target_entropy=measured(universe.target_entropy_of(teacher)),
        target_confidence_histogram=measured(universe.target_confidence_histogram_of(teacher)),
    )


def _calibration(data: _Set, view: _Views, role: str, kind: type[Calibration]) -> Calibration:
    stats, y = view.one.get(role), data.labels
    if stats is None:
        return kind(**{item.name: unavailable(NO_BASELINE) for item in fields(kind)})
    extra = {"reliability": measured(universe.reliability_of(stats, y))} if kind is ReliabilityCalibration else {}
    return kind(
        ece=measured(universe.ece_of(stats, y)),
        adaptive_ece=measured(universe.adaptive_ece_of(stats, y)),
        mce=measured(universe.mce_of(stats, y)),
        classwise_ece=measured(universe.classwise_ece_of(stats.class_sums, y)),
        nll=measured(universe.nll_of(stats)),
        brier=measured(universe.brier_of(stats)),
        fitted_temperature=measured(universe.fitted_temperature_of(data.logits[role], y)),
        **extra,
    )


# ---------------------------------------------------------------- level 2

def _domain(data: _Set, view: _Views, groups: np.ndarray | None) -> DomainOnSet:
    y = data.labels
    similarity = {role: domain.output_similarity_of(stats, y) for role, stats in view.one.items()}
    structure = {}
    for role in ROLES:
        stats = view.one.get(role)
        if stats is None:
            structure[role] = ClassStructure(**{item.name: unavailable(NO_BASELINE) for item in fields(ClassStructure)})
            continue
        structure[role] = ClassStructure(
            dark_knowledge_content=measured(domain.dark_knowledge_content_of(stats), why_none=NEEDS_THREE_CLASSES),
            nontarget_logit_spread=measured(domain.nontarget_logit_spread_of(stats), why_none=NO_POSITIVE_MARGIN),
            output_similarity=measured(similarity[role]),
            group_recovery=_group_recovery(similarity[role], groups),
        )
    score, baseline_score = _transfer_scores(similarity, NO_BASELINE)
    cka = {}
    for other in ("student", "baseline"):
        if other not in data.outputs:
            cka[other] = unavailable(NO_BASELINE)
        elif data.outputs["teacher"].features is None or data.outputs[other].features is None:
            cka[other] = unavailable(NO_FEATURES)
        else:
            cka[other] = measured(_feature_cka(data.outputs["teacher"], data.outputs[other], y.size),
                                  why_none=NO_FEATURE_VARIANCE)
    return DomainOnSet(
        data.name, **structure,
        dark_knowledge_content_at_temperature=measured(domain.dark_knowledge_content_of(view.teacher_t),
                                                       why_none=NEEDS_THREE_CLASSES),
        output_similarity_transfer_score=score, baseline_output_similarity_transfer_score=baseline_score,
        feature_cka=cka["student"], baseline_feature_cka=cka["baseline"],
    )


def _feature_cka(teacher: ModelOutputs, other: ModelOutputs, n_samples: int) -> float | None:
    """Linear CKA on the examples both models kept features for, at most CKA_MAX_SAMPLES of them
    (fixed-seed subsample), products in float32. O(n·d²) or O(n²·d): bounded, not the full set."""
    teacher_rows, other_rows = _feature_rows(teacher, n_samples), _feature_rows(other, n_samples)
    _, in_teacher, in_other = np.intersect1d(teacher_rows, other_rows, assume_unique=True, return_indices=True)
    pick = subsample_indices(in_teacher.size, CKA_MAX_SAMPLES)
    if pick.size < 2:
        return None
    return domain.linear_cka_of(np.asarray(teacher.features[in_teacher[pick]], dtype=np.float32),
                                np.asarray(other.features[in_other[pick]], dtype=np.float32))


def _feature_rows(outputs: ModelOutputs, n_samples: int) -> np.ndarray:
    """The example index of each feature row."""
    return np.arange(n_samples) if outputs.feature_rows is None else np.asarray(outputs.feature_rows)


def _group_recovery(similarity: np.ndarray, groups: np.ndarray | None) -> Measured:
    if groups is None:
        return unavailable(NO_GROUPS)
    return measured(domain.group_recovery_of(similarity, groups), why_none=GROUPS_ONE_SIDED)


def _transfer_scores(similarity: dict[str, np.ndarray], why_missing: str | dict[str, str]) -> tuple[Measured, Measured]:
    """Spearman of the teacher's similarity matrix with the student's, and with the baseline's."""
    scores = []
    for other in ("student", "baseline"):
        missing = [role for role in ("teacher", other) if role not in similarity]
        if missing:
            scores.append(unavailable(why_missing if isinstance(why_missing, str) else why_missing[missing[0]]))
        else:
            scores.append(measured(domain.similarity_transfer_score_of(similarity["teacher"], similarity[other]),
                                   why_none=CONSTANT_SIMILARITY))
    return scores[0], scores[1]


def _weights(checked: list[_Set], groups: np.ndarray | None) -> DomainOnWeights:
    """Weight-based class similarity, once (data set 'weights')."""
    weight, why = {}, {}
    for role in ROLES:
        outputs = [data.outputs[role] for data in checked if role in data.outputs]
        found = [out.weight for out in outputs if out.weight is not None]
        if not outputs:
            why[role] = NO_BASELINE
        elif not found:
            logits_mode = all(out.features is None for out in outputs)
            why[role] = NO_WEIGHTS_LOGITS_MODE if logits_mode else NO_WEIGHTS
        else:
            weight[role] = np.asarray(found[0], dtype=np.float64)
    similarity = {role: domain.weight_similarity_of(w) for role, w in weight.items()}
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


# ---------------------------------------------------------------- level 3

def _instance(data: _Set, view: _Views, alpha: float) -> InstanceOnSet:
    y, one = data.labels, view.one
    w = instance.rescaling_weights_of(view.teacher_t, view.student_t, one["student"], alpha=alpha)
    finite = bool(np.all(np.isfinite(w)))
    untrained = instance.untrained_rescaling_weights_of(view.teacher_t, alpha=alpha)
    difficulty, source = _difficulty(data, one)
    student_wrong = one["student"].prediction != y
    decoupled = instance.decoupled_kd_of(view.teacher_t, view.student_t)
    return InstanceOnSet(
        data.name,
        rescaling_weight_mean=measured(np.mean(w) if finite else None, why_none=W_OVERFLOW),
        rescaling_weight_cv=measured(instance.coefficient_of_variation_of(w),
                                     why_none=W_OVERFLOW if not finite else W_ZERO_MEAN),
        rescaling_weight_low_share=measured(np.mean(w < instance.LOW_WEIGHT)),
        untrained_rescaling_weight_cv=measured(instance.coefficient_of_variation_of(untrained), why_none=W_ZERO_MEAN),
        untrained_rescaling_weight_low_share=measured(np.mean(untrained < instance.LOW_WEIGHT)),
        rescaling_difficulty_correlation=measured(instance.rescaling_difficulty_correlation_of(untrained, difficulty),
                                                  why_none=CONSTANT_DIFFICULTY),
        difficulty_source=measured(source),
        confidence_error_auroc=measured(
            instance.confidence_error_auroc_of(one["teacher"], one["student"].prediction, y),
            why_none=STUDENT_ALWAYS_WRONG if student_wrong.all() else STUDENT_NEVER_WRONG),
        tckd=measured(np.mean(decoupled.tckd)),
        nckd=measured(np.mean(decoupled.nckd)),
        nckd_weight=measured(np.mean(decoupled.nckd_weight)),
        teacher_error_rate=measured(np.mean(one["teacher"].prediction != y)),
        hardest_examples=measured(instance.hardest_examples_of(one["teacher"], y)),
        examples=PerExample(teacher_target_confidence=view.teacher_t.target_prob, rescaling_weight=w,
                            untrained_rescaling_weight=untrained, difficulty=difficulty),
    )


def _difficulty(data: _Set, one: dict[str, SoftmaxStats]) -> tuple[np.ndarray, str]:
    """Per-example difficulty: the baseline's cross-entropy, else k-NN label disagreement (NaN off the subsample).

    k-NN runs in the teacher's feature space (its logits when no features) on a fixed-seed
    subsample of at most KNN_MAX_SAMPLES examples and KNN_MAX_WORK distance multiply-adds.
    """
    if "baseline" in one:
        return -one["baseline"].target_log_prob, "baseline_loss"
    teacher = data.outputs["teacher"]
    n_samples = data.labels.size
    if teacher.features is not None:
        source, space, space_rows = ("knn_disagreement_features", np.asarray(teacher.features),
                                     _feature_rows(teacher, n_samples))
    else:
        source, space, space_rows = "knn_disagreement_logits", data.logits["teacher"], np.arange(n_samples)
    if space.dtype not in (np.float32, np.float64):
        space = space.astype(np.float64)
    limit = int(min(KNN_MAX_SAMPLES, np.sqrt(KNN_MAX_WORK / max(1, space.shape[1]))))
    pick = subsample_indices(space_rows.size, max(limit, instance.N_NEIGHBORS + 1))
    rows = space_rows[pick]
    difficulty = np.full(n_samples, np.nan)
    if rows.size >= 2:
        difficulty[rows] = instance.knn_label_disagreement_of(space[pick], data.labels[rows])
    return difficulty, source


# ---------------------------------------------------------------- across sets

def _softness_gap(views: dict[str, _Views], checked: list[_Set]) -> Measured:
    if {data.name for data in checked} != {EVAL, TRANSFER}:
        return unavailable(NEEDS_BOTH_SETS, dataset=TRANSFER)
    if set(views) != {EVAL, TRANSFER}:
        small = next(data for data in checked if data.name not in views)
        return unavailable(_not_enough(small), dataset=TRANSFER)
    gap = (universe.effective_smoothing_of(views[EVAL].teacher_t)
           - universe.effective_smoothing_of(views[TRANSFER].teacher_t))
    return measured(gap, dataset=TRANSFER)


def _whatif(checked: list[_Set], alpha: float) -> Measured:
    """The temperature what-if on the transfer set, else on eval."""
    data = next((c for c in checked if c.name == TRANSFER), checked[0])
    if not _enough(data):
        return unavailable(_not_enough(data), dataset=data.name)
    return measured(whatif.temperature_whatif_of(data.logits["teacher"], data.labels, alpha=alpha),
                    dataset=data.name)
