"""The measure stage: every metric of the catalog (docs/metrics.md) on every data set given.

``measure`` turns the collected outputs (:class:`SetOutputs`, one per data set) into
:class:`Measurements`. It runs the softmax pass once per model and temperature and hands the
summaries to the metric modules, one per knowledge level. A metric that cannot be computed is still
emitted, with value None and the reason (no baseline, no weights in logits mode, …): never a made-up value.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from kddiag.errors import KddiagError
from kddiag.metrics import domain, fidelity, instance, universe, whatif
from kddiag.metrics._common import (SoftmaxStats, check_alpha, check_finite, check_labels, check_logits,
                                    check_temperature, softmax_stats, subsample_indices)
from kddiag.types import EVAL, TRANSFER, ClassInfo, Measurements, Metric, ModelOutputs, SetOutputs, Settings

WEIGHTS = "weights"  # the dataset tag of metrics computed from parameters alone
ROLES = ("teacher", "student", "baseline")

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

KNN_MAX_SAMPLES = 5000  # k-NN difficulty on at most this many examples (fixed-seed subsample) …
KNN_MAX_WORK = 1e9  # … and at most this many distance multiply-adds (n_sub² · n_features)
CKA_MAX_SAMPLES = 2048  # linear CKA on at most this many examples (fixed-seed subsample)


@dataclass(frozen=True)
class _Set:
    """One validated data set."""

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


class _Recorder:
    """Collects metrics (plain Python values) and per-example arrays."""

    def __init__(self) -> None:
        self.metrics: list[Metric] = []
        self.arrays: dict[str, np.ndarray] = {}

    def add(self, section: str, name: str, dataset: str, value: Any, *, ci: tuple[float, float] | None = None,
            why_none: str = "undefined on this data") -> None:
        value = _plain(value)
        if value is None:
            self.metrics.append(Metric(section, name, dataset, None, unavailable=why_none))
        else:
            self.metrics.append(Metric(section, name, dataset, value, ci=ci))

    def missing(self, section: str, name: str, dataset: str, why: str) -> None:
        self.metrics.append(Metric(section, name, dataset, None, unavailable=why))


def measure(sets: Sequence[SetOutputs], *, settings: Settings, class_info: ClassInfo) -> Measurements:
    """All catalog metrics on every data set in ``sets`` (eval and/or transfer), plus per-example arrays.

    Weight-based metrics are computed once (dataset "weights"); ``softness_gap`` needs both sets;
    ``temperature_whatif`` is measured on the transfer set, else on eval. Arrays are keyed
    ``"<dataset>/<name>"``: teacher_target_confidence, rescaling_weight, untrained_rescaling_weight, difficulty.
    """
    checked = _check_sets(sets)
    n_classes = next(iter(checked[0].logits.values())).shape[1]
    groups = _check_groups(class_info, n_classes)
    temperature = check_temperature(settings.temperature.value)
    alpha = check_alpha(settings.alpha.value)
    record = _Recorder()
    views: dict[str, _Views] = {}
    for data in checked:
        views[data.name] = view = _views(data, temperature)
        _outcome(record, data, view)
        _universe(record, data, view)
        _domain(record, data, view, groups)
        _instance(record, data, view, alpha)
    _across_sets(record, checked, views, alpha)
    _weights(record, checked, groups)
    return Measurements(metrics=tuple(record.metrics), arrays=record.arrays)


# ---------------------------------------------------------------- validation

def _check_sets(sets: Sequence[SetOutputs]) -> list[_Set]:
    if not sets:
        raise KddiagError("measure needs at least one data set (eval or transfer); got none")
    checked: list[_Set] = []
    n_classes = None
    for data in sets:
        if data.dataset not in (EVAL, TRANSFER):
            raise KddiagError(f"data set name must be '{EVAL}' or '{TRANSFER}'; got {data.dataset!r}")
        if any(c.name == data.dataset for c in checked):
            raise KddiagError(f"the {data.dataset} set was given twice")
        outputs = {role: getattr(data, role) for role in ROLES if getattr(data, role) is not None}
        logits = {role: check_logits(out.logits, name=f"{role} logits ({data.dataset} set)")
                  for role, out in outputs.items()}
        reference = logits["teacher"]
        for role, arr in logits.items():
            if arr.shape[1] != reference.shape[1]:
                raise KddiagError(f"teacher logits ({data.dataset} set) have {reference.shape[1]} classes but {role} "
                                  f"logits have {arr.shape[1]}; both must be (n_samples, n_classes)")
            if arr.shape[0] != reference.shape[0]:
                raise KddiagError(f"teacher logits ({data.dataset} set) have {reference.shape[0]} samples but {role} "
                                  f"logits have {arr.shape[0]}; both must be (n_samples, n_classes)")
        if n_classes is not None and reference.shape[1] != n_classes:
            raise KddiagError(f"the {data.dataset} set has {reference.shape[1]} classes but the "
                              f"{checked[0].name} set has {n_classes}; all sets must share the classes")
        n_samples, n_classes = reference.shape
        labels = check_labels(data.labels, n_samples=n_samples, n_classes=n_classes,
                              name=f"labels ({data.dataset} set)")
        for role, out in outputs.items():
            _check_extras(out, role, data.dataset, n_samples, n_classes)
        checked.append(_Set(data.dataset, labels, logits, outputs))
    return checked


def _check_extras(out: ModelOutputs, role: str, dataset: str, n_samples: int, n_classes: int) -> None:
    if out.features is not None:
        shape = np.shape(out.features)
        rows = _feature_rows(out, n_samples)
        if len(shape) != 2 or shape[0] != rows.size:
            raise KddiagError(f"{role} features ({dataset} set) must be (n_rows, n_features) = ({rows.size}, …), "
                              f"one row per example or per feature_rows entry; got shape {shape}")
        if out.feature_rows is not None and (rows.ndim != 1 or np.any(np.diff(rows) <= 0)
                                             or rows[0] < 0 or rows[-1] >= n_samples):
            raise KddiagError(f"{role} feature_rows ({dataset} set) must be increasing example indices "
                              f"in [0, {n_samples})")
        check_finite(np.asarray(out.features), name=f"{role} features ({dataset} set)")
    if out.weight is not None:
        shape = np.shape(out.weight)
        if len(shape) != 2 or shape[0] != n_classes:
            raise KddiagError(f"{role} logit-layer weight must be (n_classes, n_features) = ({n_classes}, …); "
                              f"got shape {shape}")
        check_finite(np.asarray(out.weight), name=f"{role} logit-layer weight")


def _check_groups(class_info: ClassInfo, n_classes: int) -> np.ndarray | None:
    if class_info.groups is None:
        return None
    groups = np.asarray(class_info.groups)
    if groups.shape != (n_classes,):
        raise KddiagError(f"class groups must give one group id per class ({n_classes}); got {groups.size}")
    return groups


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

def _outcome(record: _Recorder, data: _Set, view: _Views) -> None:
    d, y, one = data.name, data.labels, view.one
    correct = {role: (stats.prediction == y).astype(np.float64) for role, stats in one.items()}
    for role in ROLES:
        if role in correct:
            record.add("outcome", f"{role}_accuracy", d, np.mean(correct[role]),
                       ci=fidelity.bootstrap_ci(correct[role]))
        else:
            record.missing("outcome", f"{role}_accuracy", d, NO_BASELINE)
    agree = (one["teacher"].prediction == one["student"].prediction).astype(np.float64)
    record.add("outcome", "agreement", d, np.mean(agree), ci=fidelity.bootstrap_ci(agree))
    teacher_right = correct["teacher"] > 0
    if teacher_right.any():  # where the student following the label and the teacher is the same thing
        record.add("outcome", "agreement_where_teacher_correct", d, np.mean(agree[teacher_right]))
    else:
        record.missing("outcome", "agreement_where_teacher_correct", d, "the teacher is right on no example")
    kl = one["teacher"].kl_divergence()
    record.add("outcome", "kl_teacher_student", d, np.mean(kl), ci=fidelity.bootstrap_ci(kl))
    record.add("outcome", "kl_teacher_student_at_temperature", d, np.mean(view.teacher_t.kl_divergence()))
    if "baseline" in one:
        record.add("outcome", "baseline_agreement", d,
                   fidelity.agreement_of(one["teacher"].prediction, one["baseline"].prediction))
        gain = correct["student"] - correct["baseline"]
        record.add("outcome", "kd_gain", d, np.mean(gain), ci=fidelity.bootstrap_ci(gain))
    else:
        record.missing("outcome", "baseline_agreement", d, NO_BASELINE)
        record.missing("outcome", "kd_gain", d, NO_BASELINE)
    teacher_pred, student_pred = one["teacher"].prediction, one["student"].prediction
    permutation = fidelity.permutation_of(teacher_pred, student_pred, one["teacher"].n_classes)
    record.add("outcome", "permuted_agreement", d, fidelity.agreement_of(teacher_pred, permutation[student_pred]))
    record.add("outcome", "class_permutation", d, permutation)


# ---------------------------------------------------------------- level 1

def _universe(record: _Recorder, data: _Set, view: _Views) -> None:
    d, y = data.name, data.labels
    for role in ROLES:
        stats = view.one.get(role)
        metrics = {
            "ece": lambda s: universe.ece_of(s, y),
            "adaptive_ece": lambda s: universe.adaptive_ece_of(s, y),
            "mce": lambda s: universe.mce_of(s, y),
            "classwise_ece": lambda s: universe.classwise_ece_of(s.class_sums, y),
            "nll": universe.nll_of,
            "brier": universe.brier_of,
            "fitted_temperature": lambda s: universe.fitted_temperature_of(data.logits[role], y),
        }
        for name, compute in metrics.items():
            if stats is None:
                record.missing("universe", f"{role}_{name}", d, NO_BASELINE)
            else:
                record.add("universe", f"{role}_{name}", d, compute(stats))
        if role != "baseline":
            record.add("universe", f"{role}_reliability", d, universe.reliability_of(stats, y))
    teacher = view.teacher_t
    record.add("universe", "effective_smoothing", d, universe.effective_smoothing_of(teacher))
    record.add("universe", "equivalent_smoothing", d, universe.equivalent_smoothing_of(teacher))
    record.add("universe", "saturation_share", d, universe.saturation_share_of(teacher))
    record.add("universe", "target_entropy", d, universe.target_entropy_of(teacher))
    record.add("universe", "target_confidence_histogram", d, universe.target_confidence_histogram_of(teacher))


# ---------------------------------------------------------------- level 2

def _domain(record: _Recorder, data: _Set, view: _Views, groups: np.ndarray | None) -> None:
    d, y = data.name, data.labels
    similarity = {}
    for role in ROLES:
        stats = view.one.get(role)
        if stats is None:
            for name in ("dark_knowledge_content", "nontarget_logit_spread", "output_similarity", "group_recovery"):
                record.missing("domain", f"{role}_{name}", d, NO_BASELINE)
            continue
        record.add("domain", f"{role}_dark_knowledge_content", d, domain.dark_knowledge_content_of(stats),
                   why_none=NEEDS_THREE_CLASSES)
        record.add("domain", f"{role}_nontarget_logit_spread", d, domain.nontarget_logit_spread_of(stats),
                   why_none=NO_POSITIVE_MARGIN)
        similarity[role] = domain.output_similarity_of(stats, y)
        record.add("domain", f"{role}_output_similarity", d, similarity[role])
        _group_recovery(record, f"{role}_group_recovery", d, similarity[role], groups)
    record.add("domain", "dark_knowledge_content_at_temperature", d, domain.dark_knowledge_content_of(view.teacher_t),
               why_none=NEEDS_THREE_CLASSES)
    _transfer_scores(record, "output_similarity_transfer_score", d, similarity, NO_BASELINE)
    features = {role: out for role, out in data.outputs.items() if out.features is not None}
    for name, other in (("feature_cka", "student"), ("baseline_feature_cka", "baseline")):
        if other not in data.outputs:
            record.missing("domain", name, d, NO_BASELINE)
        elif "teacher" not in features or other not in features:
            record.missing("domain", name, d, NO_FEATURES)
        else:
            record.add("domain", name, d, _feature_cka(features["teacher"], features[other], data.labels.size),
                       why_none=NO_FEATURE_VARIANCE)


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


def _group_recovery(record: _Recorder, name: str, dataset: str, similarity: np.ndarray, groups) -> None:
    if groups is None:
        record.missing("domain", name, dataset, NO_GROUPS)
    else:
        record.add("domain", name, dataset, domain.group_recovery_of(similarity, groups), why_none=GROUPS_ONE_SIDED)


def _transfer_scores(record: _Recorder, name: str, dataset: str, similarity: dict[str, np.ndarray],
                     why_missing: str | dict[str, str]) -> None:
    """``name`` (teacher vs student) and ``baseline_<name>`` (teacher vs baseline)."""
    for metric, other in ((name, "student"), (f"baseline_{name}", "baseline")):
        missing = [role for role in ("teacher", other) if role not in similarity]
        if missing:
            why = why_missing if isinstance(why_missing, str) else why_missing[missing[0]]
            record.missing("domain", metric, dataset, why)
        else:
            record.add("domain", metric, dataset,
                       domain.similarity_transfer_score_of(similarity["teacher"], similarity[other]),
                       why_none=CONSTANT_SIMILARITY)


def _weights(record: _Recorder, checked: list[_Set], groups: np.ndarray | None) -> None:
    """Weight-based class similarity, once (dataset "weights")."""
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
    similarity = {}
    for role in ROLES:
        if role not in weight:
            record.missing("domain", f"{role}_weight_similarity", WEIGHTS, why[role])
            record.missing("domain", f"{role}_weight_group_recovery", WEIGHTS, why[role])
            continue
        similarity[role] = domain.weight_similarity_of(weight[role])
        record.add("domain", f"{role}_weight_similarity", WEIGHTS, similarity[role])
        _group_recovery(record, f"{role}_weight_group_recovery", WEIGHTS, similarity[role], groups)
    _transfer_scores(record, "weight_similarity_transfer_score", WEIGHTS, similarity, why)


# ---------------------------------------------------------------- level 3

def _instance(record: _Recorder, data: _Set, view: _Views, alpha: float) -> None:
    d, y, one = data.name, data.labels, view.one
    w = instance.rescaling_weights_of(view.teacher_t, view.student_t, one["student"], alpha=alpha)
    finite = bool(np.all(np.isfinite(w)))
    record.add("instance", "rescaling_weight_mean", d, np.mean(w) if finite else None, why_none=W_OVERFLOW)
    record.add("instance", "rescaling_weight_cv", d, instance.coefficient_of_variation_of(w),
               why_none=W_OVERFLOW if not finite else W_ZERO_MEAN)
    record.add("instance", "rescaling_weight_low_share", d, np.mean(w < instance.LOW_WEIGHT))
    untrained = instance.untrained_rescaling_weights_of(view.teacher_t, alpha=alpha)
    record.add("instance", "untrained_rescaling_weight_cv", d, instance.coefficient_of_variation_of(untrained),
               why_none=W_ZERO_MEAN)
    record.add("instance", "untrained_rescaling_weight_low_share", d, np.mean(untrained < instance.LOW_WEIGHT))
    difficulty, source = _difficulty(data, one)
    record.add("instance", "rescaling_difficulty_correlation", d,
               instance.rescaling_difficulty_correlation_of(untrained, difficulty), why_none=CONSTANT_DIFFICULTY)
    record.add("instance", "difficulty_source", d, source)
    student_wrong = one["student"].prediction != y
    record.add("instance", "confidence_error_auroc", d,
               instance.confidence_error_auroc_of(one["teacher"], one["student"].prediction, y),
               why_none=STUDENT_ALWAYS_WRONG if student_wrong.all() else STUDENT_NEVER_WRONG)
    decoupled = instance.decoupled_kd_of(view.teacher_t, view.student_t)
    record.add("instance", "tckd", d, np.mean(decoupled.tckd))
    record.add("instance", "nckd", d, np.mean(decoupled.nckd))
    record.add("instance", "nckd_weight", d, np.mean(decoupled.nckd_weight))
    record.add("instance", "teacher_error_rate", d, np.mean(one["teacher"].prediction != y))
    record.add("instance", "hardest_examples", d, instance.hardest_examples_of(one["teacher"], y))
    record.arrays[f"{d}/teacher_target_confidence"] = view.teacher_t.target_prob
    record.arrays[f"{d}/rescaling_weight"] = w
    record.arrays[f"{d}/untrained_rescaling_weight"] = untrained
    record.arrays[f"{d}/difficulty"] = difficulty


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

def _across_sets(record: _Recorder, checked: list[_Set], views: dict[str, _Views], alpha: float) -> None:
    if EVAL in views and TRANSFER in views:
        gap = (universe.effective_smoothing_of(views[EVAL].teacher_t)
               - universe.effective_smoothing_of(views[TRANSFER].teacher_t))
        record.add("universe", "softness_gap", TRANSFER, gap)
    else:
        record.missing("universe", "softness_gap", TRANSFER, NEEDS_BOTH_SETS)
    data = next(c for c in checked if c.name == (TRANSFER if TRANSFER in views else EVAL))
    record.add("universe", "temperature_whatif", data.name,
               whatif.temperature_whatif_of(data.logits["teacher"], data.labels, alpha=alpha))


# ---------------------------------------------------------------- plain values

def _plain(value: Any) -> Any:
    """Numpy scalars and arrays as Python floats/ints/lists; a non-finite scalar becomes None."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    value = float(value)
    return value if np.isfinite(value) else None
