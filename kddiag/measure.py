"""The measure stage: every metric of the catalog (docs/metrics.md) on every data set given.

``measure`` turns each data set's streaming statistics (:class:`~kddiag.accumulate.SetSummary`) into
typed :class:`~kddiag.results.Measurements`, one result per knowledge level. Outputs held in memory
(:class:`~kddiag.types.Collected`) are summarized first, in one pass. Exact statistics (means, bins,
class sums) cover every example; what needs the examples themselves reads the fixed-seed reservoirs
(see :mod:`kddiag.accumulate`). A metric that cannot be computed is still emitted, with value None
and the reason (no baseline, no weights in logits mode, …): never a made-up value.
"""
from __future__ import annotations

from dataclasses import fields
from typing import Sequence

import numpy as np

from kddiag.accumulate import SetSummary, summarize
from kddiag.errors import KddiagError
from kddiag.metrics import domain, fidelity, instance, strata, universe, whatif
from kddiag.metrics._common import map_tasks, subsample_indices
from kddiag.results import (Calibration, ClassStructure, DomainOnSet, DomainOnWeights, DomainResult, InstanceOnSet,
                            InstanceResult, Measured, Measurements, OutcomeOnSet, OutcomeResult, PerExample,
                            ReliabilityCalibration, UniverseOnSet, UniverseResult, WeightStructure, measured,
                            unavailable)
from kddiag.types import EVAL, ROLES, TRANSFER, ClassInfo, Collected, Coverage, SetOutputs, Settings


NO_BASELINE = "no baseline given"
NO_STUDENT = "no student given (a teacher-only check)"
NOT_TOKENS = "language models only (examples are token positions)"
NO_WEIGHTS_LOGITS_MODE = "logits mode: no logit-layer weights"
NO_WEIGHTS = "no logit-layer weights found"
NO_FEATURES = "no penultimate features found"
NEEDS_BOTH_SETS = "needs both eval and transfer sets"
NO_GROUPS = "no class groups given"
NEEDS_THREE_CLASSES = "needs at least 3 classes (with 2 the non-target distribution is a single class)"
FEW_CLASSES_FOR_TOP_K = (f"needs more than {domain.TOP_K_ALTERNATIVES + 1} classes (with fewer the top "
                         f"{domain.TOP_K_ALTERNATIVES} wrong classes hold all the non-target mass)")
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
CKA_MAX_SAMPLES = 1024  # linear CKA on at most this many examples (fixed-seed subsample; no rule reads it)


def measure(outputs: Collected | Sequence[SetOutputs] | Sequence[SetSummary], *, settings: Settings,
            class_info: ClassInfo, reuse: dict | None = None) -> Measurements:
    """Every catalog metric on every data set given (eval and/or transfer), one result per level.

    ``outputs``: the sets' summaries (:class:`~kddiag.accumulate.SetSummary`, from streaming
    collection; each must have been computed with ``settings``' temperature and alpha, else
    KddiagError) or their outputs in memory (:class:`~kddiag.types.Collected`, or a sequence of
    :class:`~kddiag.types.SetOutputs`, checked as one). Weight-based metrics are computed once (data
    set "weights"); ``softness_gap`` needs both sets; the temperature what-if is measured on the
    transfer set, else on eval. ``class_info`` must match the class count.

    ``reuse``: a dict kept across calls that share the teacher, the data and the settings (a
    :class:`~kddiag.monitor.Monitor`'s calls, where only the student changes): the measurements that
    read the teacher alone and cost the most (k-NN difficulty, the temperature what-if, the teacher's
    T*) are computed on the first call and read from it afterwards.
    """
    cached = _Reuse(reuse)
    if not outputs or not all(isinstance(item, SetSummary) for item in outputs):
        outputs = outputs if isinstance(outputs, Collected) else Collected(tuple(outputs))
        outputs = [summarize(data, temperature=settings.temperature.value, alpha=settings.alpha.value)
                   for data in outputs]
    sets = list(outputs)
    _check_settings(sets, settings)
    enough = {s.name for s in sets if _enough(s)}
    groups = None if class_info.groups is None else np.asarray(class_info.groups)
    alpha = settings.alpha.value
    makers = {OutcomeResult: (OutcomeOnSet, _outcome), UniverseResult: (UniverseOnSet, lambda s: _universe(s, cached)),
              DomainResult: (DomainOnSet, lambda s: _domain(s, groups)),
              InstanceResult: (InstanceOnSet, lambda s: _instance(s, cached))}
    tasks = {(level, s.name): (lambda make=make, s=s: make(s)) for level, (_, make) in makers.items()
             for s in sets if s.name in enough}
    tasks.update(whatif=lambda: cached("whatif", lambda: _whatif(sets, alpha)), weights=lambda: _weights(sets, groups))
    done = map_tasks(tasks)  # independent: run side by side
    per_set = {level: {s.name: done[level, s.name] if s.name in enough
                       else record.unmeasured(_not_enough(s), dataset=s.name) for s in sets}
               for level, (record, _) in makers.items()}
    return Measurements(
        outcome=OutcomeResult(**per_set[OutcomeResult]),
        universe=UniverseResult(**per_set[UniverseResult], softness_gap=_softness_gap(sets, enough),
                                temperature_whatif=done["whatif"]),
        domain=DomainResult(**per_set[DomainResult], weights=done["weights"]),
        instance=InstanceResult(**per_set[InstanceResult]),
    )


def _check_settings(sets: list[SetSummary], settings: Settings) -> None:
    """Raise unless every summary was computed under ``settings``' temperature and alpha."""
    for data in sets:
        for name, setting, used in (("temperature", settings.temperature, data.temperature),
                                    ("alpha", settings.alpha, data.alpha)):
            if float(setting.value) != float(used):
                raise KddiagError(f"the {data.name} set's statistics were computed with {name} {float(used):g} but "
                                  f"{setting.origin(name)} is {float(setting.value):g}; measure them under the "
                                  f"settings they were computed with")


class _Reuse:
    """Teacher-only results by name: computed once into ``store`` when one is given, else every time."""

    def __init__(self, store: dict | None) -> None:
        self.store = store

    def __call__(self, key: str, compute):
        if self.store is None:
            return compute()
        if key not in self.store:
            self.store[key] = compute()
        return self.store[key]


def _enough(data: SetSummary) -> bool:
    """At least MIN_EXAMPLES examples and one per class on average: below that, rates and class-by-class
    statistics are noise."""
    return data.n_samples >= max(MIN_EXAMPLES, data.n_classes)


def _not_enough(data: SetSummary) -> str:
    return (f"not enough data: {data.n_samples} examples on the {data.name} set for {data.n_classes} classes "
            f"(measurements need at least {MIN_EXAMPLES} and one per class)")


def _absent(role: str) -> str:
    """Why a model's values are missing: it was not given."""
    return NO_STUDENT if role == "student" else NO_BASELINE


def _mean_ci(data: SetSummary, name: str) -> Measured:
    """The exact mean of a per-example quantity with its bootstrap interval (from the reservoir)."""
    mean = data.mean(name)
    return measured(mean, ci=fidelity.sample_bootstrap_ci(data.examples[name], mean=mean, n_total=data.n_samples))


# ---------------------------------------------------------------- level 0

def _outcome(data: SetSummary) -> OutcomeOnSet:
    accuracy = {role: _mean_ci(data, f"{role}.correct") if role in data.roles else unavailable(_absent(role))
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
        agreement=_mean_ci(data, "agree"),
        agreement_where_teacher_correct=(
            measured(data.moments.sum("agree_where_teacher_correct") / teacher_right) if teacher_right > 0
            else unavailable("the teacher is right on no example")),
        kl_teacher_student=_mean_ci(data, "kl"),
        kl_teacher_student_at_temperature=measured(data.mean("kl_t")),
        kl_student_teacher=_mean_ci(data, "kl_reverse"),
        kl_student_teacher_at_temperature=measured(data.mean("kl_reverse_t")),
        kd_gain=_mean_ci(data, "gain") if "baseline" in data.roles else unavailable(NO_BASELINE),
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


# ---------------------------------------------------------------- level 1

def _universe(data: SetSummary, cached: _Reuse) -> UniverseOnSet:
    effective = data.mean("smoothing_t")
    return UniverseOnSet(
        data.name,
        teacher=_calibration(data, "teacher", ReliabilityCalibration, cached),
        student=_calibration(data, "student", ReliabilityCalibration),
        baseline=_calibration(data, "baseline", Calibration),
        effective_smoothing=measured(effective),
        equivalent_smoothing=measured(universe.equivalent_smoothing_from(effective, data.n_classes)),
        saturation_share=measured(data.mean("saturated_t")),
        target_entropy=measured(data.mean("entropy_t")),
        target_confidence_histogram=measured(universe.Histogram(np.linspace(0.0, 1.0, data.target_histogram.size + 1),
                                                                data.target_histogram.copy())),
    )


def _calibration(data: SetSummary, role: str, kind: type[Calibration], cached: _Reuse = _Reuse(None)) -> Calibration:
    if role not in data.roles:
        return kind(**{item.name: unavailable(_absent(role)) for item in fields(kind)})
    bins, examples, rows = data.calibration[role], data.examples, data.rows
    extra = {"reliability": measured(universe.reliability_of(bins))} if kind is ReliabilityCalibration else {}
    return kind(
        ece=measured(universe.ece_of(bins)),
        adaptive_ece=measured(universe.adaptive_ece_of(examples[f"{role}.confidence"], examples[f"{role}.correct"])),
        mce=measured(universe.mce_of(bins)),
        classwise_ece=measured(universe.classwise_ece_of(data.class_sums[role])),
        nll=measured(data.mean(f"{role}.nll")),
        brier=measured(data.mean(f"{role}.brier")),
        fitted_temperature=measured(cached(f"{data.name}.{role}.fitted_temperature", lambda: (
            universe.fitted_temperature_of(rows[f"{role}.logits"], rows["labels"])))),
        **extra,
    )


# ---------------------------------------------------------------- level 2

def _domain(data: SetSummary, groups: np.ndarray | None) -> DomainOnSet:
    kept_groups = groups if groups is None or data.kept_classes is None else groups[data.kept_classes]
    similarity = {role: domain.output_similarity_of(data.class_sums[role]) for role in data.roles}
    structure = {}
    for role in ROLES:
        if role not in data.roles:
            structure[role] = ClassStructure(**{item.name: unavailable(_absent(role))
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
    score, baseline_score = _transfer_scores(similarity, {role: _absent(role) for role in ROLES})
    cka = {}
    for other in ("student", "baseline"):
        if other not in data.roles:
            cka[other] = unavailable(_absent(other))
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
    shares = domain.top_k_nontarget_share_per_example(logits[keep], data.rows["labels"][keep],
                                                      temperature=data.temperature)
    return None if shares is None else float(np.mean(shares))


def _feature_cka(teacher: np.ndarray, other: np.ndarray) -> float | None:
    """Linear CKA on the reservoir rows both models kept features for, at most CKA_MAX_SAMPLES of them
    (fixed-seed subsample), products in float32. O(n·d²) or O(n²·d): bounded, not the full set."""
    both = np.flatnonzero(np.isfinite(teacher[:, 0]) & np.isfinite(other[:, 0]))
    pick = both[subsample_indices(both.size, CKA_MAX_SAMPLES)]
    if pick.size < 2:
        return None
    return domain.linear_cka_of(np.asarray(teacher[pick], dtype=np.float32),
                                np.asarray(other[pick], dtype=np.float32))

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


def _weights(sets: list[SetSummary], groups: np.ndarray | None) -> DomainOnWeights:
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
            why[role] = _absent(role)
        elif not found:
            logits_mode = all(role not in s.feature_roles for s in holding)
            why[role] = NO_WEIGHTS_LOGITS_MODE if logits_mode else NO_WEIGHTS
        else:
            weight[role] = np.asarray(found[0] if kept is None else found[0][kept], dtype=np.float64)
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

def _instance(data: SetSummary, cached: _Reuse) -> InstanceOnSet:
    examples = data.examples
    mean_untrained, std_untrained = data.mean("w_untrained"), data.moments.std("w_untrained")
    difficulty, source = cached(f"{data.name}.difficulty", lambda: _difficulty(data))
    teacher_side = dict(
        untrained_rescaling_weight_cv=measured(_cv(mean_untrained, std_untrained), why_none=W_ZERO_MEAN),
        untrained_rescaling_weight_low_share=measured(data.mean("w_untrained_low")),
        rescaling_difficulty_correlation=measured(
            instance.rescaling_difficulty_correlation_of(examples["w_untrained"], difficulty),
            why_none=CONSTANT_DIFFICULTY),
        difficulty_source=measured(source),
        nckd_weight=measured(data.mean("nckd_weight")),
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
            instance.confidence_error_auroc_of(examples["teacher.nontarget_log_mass"], student_wrong),
            why_none=STUDENT_ALWAYS_WRONG if data.mean("student.correct") == 0 else STUDENT_NEVER_WRONG),
        tckd=measured(data.mean("tckd")),
        nckd=measured(data.mean("nckd")),
    )


def _cv(mean: float | None, std: float | None) -> float | None:
    """std / |mean|; None when undefined (as :func:`~kddiag.metrics.instance.coefficient_of_variation_of`)."""
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
        return instance.token_surprisal_of(examples["labels"], data.label_count), "token_frequency"
    source, space = _knn_space(data)
    usable = np.flatnonzero(np.isfinite(space[:, 0]))
    pick = usable[subsample_indices(usable.size, _knn_rows(usable.size, space.shape[1]))]
    difficulty = np.full(examples["index"].size, np.nan)
    if pick.size >= 2:
        where = np.searchsorted(examples["index"], rows["index"][pick])  # the row reservoir is in the example one
        space = space[pick] if space.dtype in (np.float32, np.float64) else space[pick].astype(np.float64)
        difficulty[where] = instance.knn_label_disagreement_of(space, rows["labels"][pick])
    return difficulty, source


def _knn_space(data: SetSummary) -> tuple[str, np.ndarray]:
    """Where k-NN difficulty runs: the teacher's features, else its logits (the row reservoir's)."""
    if "teacher" in data.feature_roles:
        return "knn_disagreement_features", data.rows["teacher.features"]
    return "knn_disagreement_logits", data.rows["teacher.logits"]


def _knn_rows(n_usable: int, n_features: int) -> int:
    """How many of ``n_usable`` reservoir rows k-NN difficulty reads: KNN_MAX_SAMPLES, and KNN_MAX_WORK."""
    limit = int(min(KNN_MAX_SAMPLES, np.sqrt(KNN_MAX_WORK / max(1, n_features))))
    return min(n_usable, max(limit, instance.N_NEIGHBORS + 1))


def coverage_of(data: SetSummary) -> Coverage:
    """What this set's measurements read, each measurement that reads rows of the reservoir with its own
    count (T*, the what-if, k-NN difficulty, CKA), computed with the very bounds those measurements use."""
    n_rows = int(data.rows["index"].size)
    read = [("T*", universe.fit_rows(n_rows, data.n_classes)),
            ("the temperature what-if", whatif.whatif_rows(n_rows, data.n_classes))]
    if "baseline" not in data.roles and not data.strata:
        space = _knn_space(data)[1]
        read.append(("k-NN difficulty", _knn_rows(int(np.isfinite(space[:, 0]).sum()), space.shape[1])))
    for other in ("student", "baseline"):
        if other in data.roles and {"teacher", other} <= data.feature_roles:
            both = np.isfinite(data.rows["teacher.features"][:, 0]) & np.isfinite(data.rows[f"{other}.features"][:, 0])
            read.append((f"CKA ({other})", min(int(both.sum()), CKA_MAX_SAMPLES)))
    kept = data.n_classes if data.kept_classes is None else data.kept_classes.size
    return Coverage(data.name, data.n_samples, int(data.examples["index"].size), n_rows, data.n_classes, kept,
                    rows_read=tuple(read))


# ---------------------------------------------------------------- across sets

def _softness_gap(sets: list[SetSummary], enough: set[str]) -> Measured:
    named = {s.name: s for s in sets}
    if set(named) != {EVAL, TRANSFER}:
        return unavailable(NEEDS_BOTH_SETS, dataset=TRANSFER)
    if enough != {EVAL, TRANSFER}:
        small = next(s for s in sets if s.name not in enough)
        return unavailable(_not_enough(small), dataset=TRANSFER)
    return measured(named[EVAL].mean("smoothing_t") - named[TRANSFER].mean("smoothing_t"), dataset=TRANSFER)


def _whatif(sets: list[SetSummary], alpha: float) -> Measured:
    """The temperature what-if on the transfer set, else on eval (the row reservoir's teacher logits)."""
    data = next((s for s in sets if s.name == TRANSFER), sets[0])
    if not _enough(data):
        return unavailable(_not_enough(data), dataset=data.name)
    return measured(whatif.temperature_whatif_of(data.rows["teacher.logits"], data.rows["labels"], alpha=alpha),
                    dataset=data.name)
