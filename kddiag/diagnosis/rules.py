"""One small pure decision per failure case of knowledge distillation.

Each rule reads the typed measurements and returns :class:`~kddiag.diagnosis.reading.Fired` (evidence,
severity, the facts its wording needs), ``Clear`` or ``NotChecked``; the words live in
:mod:`kddiag.diagnosis.wording`, the ranking in :mod:`kddiag.diagnosis.engine`. Every cut-off is a
named constant in :mod:`kddiag.diagnosis.thresholds`. Severity grows with how far each number is past
its threshold (:func:`~kddiag.diagnosis.reading.grade`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

from kddiag.diagnosis import thresholds as th
from kddiag.diagnosis.reading import (EVAL_FIRST, Clear, Context, Decision, Fired, NotChecked,
                                      evidence, fallback_notes, first, grade, missing, rounded, severity)
from kddiag.metrics.whatif import RANGE, WhatIf
from kddiag.results import EVAL, TRANSFER, WEIGHTS, Measured, Measurements
from kddiag.diagnosis.findings import Evidence
from kddiag.inputs import InputInfo


# ---------------------------------------------------------------- shared readings

@dataclass(frozen=True)
class Sharpness:
    """Near one-hot (or equally confident) teacher targets at τ, and whether the teacher is to blame.

    Sharp: saturation_share ≥ OVERCONFIDENT_SATURATION_MIN or ε_eff ≤ OVERCONFIDENT_SMOOTHING_MAX; short
    of that, flat rescaling weights with a softness gap (memorization). τ = 1 is the teacher's own
    calibration: sharp at τ ≥ 1, on the what-if grid at τ = 1, or with T* ≥ FITTED_TEMPERATURE_MIN is the
    teacher's property; sharp only because τ < 1 is the setting's.
    """

    evidence: tuple[Evidence, ...]
    grade: float
    saturation: Measured
    smoothing: Measured
    teacher_at_fault: bool
    fitted: Measured | None  # T* when past FITTED_TEMPERATURE_MIN
    one_hot: bool


def sharpness(m: Measurements, context: Context) -> Sharpness | NotChecked | None:
    """How sharp the teacher's targets are on the transfer set (else eval); None when they are not."""
    saturation = first(m.universe, lambda u: u.saturation_share)
    if lack := missing(saturation):
        return lack
    dataset = saturation.dataset
    smoothing = first(m.universe, lambda u: u.effective_smoothing, (dataset,))
    found, grades = [], []
    if saturation.value >= th.OVERCONFIDENT_SATURATION_MIN:
        found.append(evidence(saturation, th.OVERCONFIDENT_SATURATION_MIN, ">="))
        grades.append(grade(saturation.value, th.OVERCONFIDENT_SATURATION_MIN, th.SHARP_SATURATION_FULL))
    if smoothing.ok and smoothing.value <= th.OVERCONFIDENT_SMOOTHING_MAX:
        found.append(evidence(smoothing, th.OVERCONFIDENT_SMOOTHING_MAX, "<="))
        grades.append(grade(smoothing.value, th.OVERCONFIDENT_SMOOTHING_MAX, th.SHARP_SMOOTHING_FULL))
    one_hot = bool(found)
    flat = first(m.instance, lambda i: i.untrained_rescaling_weight_cv, (dataset,))
    gap = m.universe.softness_gap
    if (not one_hot and dataset == TRANSFER and flat.ok and gap.ok
            and flat.value <= th.FLAT_RESCALING_CV_MAX and gap.value >= th.SOFTNESS_GAP_MIN):
        found += [evidence(flat, th.FLAT_RESCALING_CV_MAX, "<="), evidence(gap, th.SOFTNESS_GAP_MIN, ">=")]
        grades.append(grade(flat.value, th.FLAT_RESCALING_CV_MAX, th.FLAT_RESCALING_CV_FULL))
    if not found:
        return None
    fitted = first(m.universe, lambda u: u.teacher.fitted_temperature, (EVAL,))
    fitted = fitted if fitted.ok and fitted.value >= th.FITTED_TEMPERATURE_MIN else None
    whatif = whatif_on(m, dataset)
    # below τ = 1 a calibrated teacher sharp already at τ = 1 is confident because the task is easy for it,
    # not over-confident: only a τ ≥ 1 can soften it, so the setting is at fault unless the teacher is
    # miscalibrated (T*) or memorized its transfer set (the softness gap)
    memorized = dataset == TRANSFER and gap.ok and gap.value >= th.SOFTNESS_GAP_MIN
    sharp_at_one = whatif is not None and _sharp_at(whatif, 1.0) and (memorized or not fitted_ok(m))
    at_fault = context.temperature >= 1.0 or sharp_at_one or fitted is not None
    return Sharpness(tuple(found), max(grades), saturation, smoothing, at_fault, fitted, one_hot)


def fitted_ok(m: Measurements) -> bool:
    """Whether the teacher's held-out T* was measured (its calibration is known)."""
    return first(m.universe, lambda u: u.teacher.fitted_temperature, (EVAL,)).ok


def whatif_on(m: Measurements, dataset: str) -> WhatIf | None:
    """The temperature what-if when it was measured on ``dataset``."""
    whatif = m.universe.temperature_whatif
    return whatif.value if whatif.ok and whatif.dataset == dataset else None


def _sharp_at(whatif: WhatIf, temperature: float) -> bool:
    """Whether the what-if's targets at ``temperature`` are sharp (False when it is not on the grid)."""
    i = whatif.at(temperature)
    return i is not None and (whatif.saturation_share[i] >= th.OVERCONFIDENT_SATURATION_MIN
                              or whatif.effective_smoothing[i] <= th.OVERCONFIDENT_SMOOTHING_MAX)


def nearest_informative(whatif: WhatIf, temperature: float, *, above: bool = False) -> float:
    """The grid τ inside the informative range closest (in ratio) to ``temperature``; with ``above``, the
    closest one above it (a τ to raise to; the range must reach above ``temperature``)."""
    lo, hi = whatif.informative_range
    inside = [float(t) for t in whatif.temperatures if lo <= t <= hi] or [lo, hi]
    if above:
        inside = [t for t in inside if t > temperature] or [hi]
    return min(inside, key=lambda t: abs(math.log(t / temperature)))


@dataclass(frozen=True)
class Underfit:
    """Transfer-set accuracies of a KD student that fits the labels clearly worse than a baseline of its size."""

    shortfall: Measured  # the KD gain on the transfer set: student − baseline accuracy, below 0
    student: Measured
    baseline: Measured
    teacher: Measured


def underfit(m: Measurements) -> Underfit | NotChecked | None:
    """The KD student fits the transfer labels UNDERFIT_SHORTFALL_MIN worse than its baseline (the gain's
    95 % interval below 0) and than its teacher, while the baseline fits them about as well as the teacher
    (within CAPACITY_ACCURACY_GAP_MIN): a student of its size can fit them, this one did not. None otherwise."""
    shortfall = first(m.outcome, lambda o: o.kd_gain, (TRANSFER,))
    student, baseline, teacher = (first(m.outcome, pick, (TRANSFER,)) for pick in (
        lambda o: o.student_accuracy, lambda o: o.baseline_accuracy, lambda o: o.teacher_accuracy))
    if lack := missing(shortfall, student, baseline, teacher):
        return lack
    beyond_noise = shortfall.ci is None or shortfall.ci[1] < 0
    if (-shortfall.value >= th.UNDERFIT_SHORTFALL_MIN and beyond_noise
            and teacher.value - student.value >= th.UNDERFIT_SHORTFALL_MIN
            and baseline.value >= teacher.value - th.CAPACITY_ACCURACY_GAP_MIN):
        return Underfit(shortfall, student, baseline, teacher)
    return None


def range_evidence(m: Measurements, value: float, threshold: float, comparison: str) -> Evidence:
    """Evidence on an end of the what-if's informative range."""
    whatif = m.universe.temperature_whatif
    return Evidence(f"{whatif.name}.{RANGE}", value, threshold, whatif.dataset, comparison)


# ---------------------------------------------------------------- the rules

@dataclass(frozen=True)
class ClassOrderFacts:
    agreement: Measured
    permuted: Measured
    moves: tuple[tuple[int, int], ...] | None  # (student class, teacher class) pairs that differ
    permutation: Measured


def class_order_mismatch(m: Measurements, context: Context) -> Decision:
    """Agreement is low but a relabelling of the student's classes restores it."""
    agreement = first(m.outcome, lambda o: o.agreement)
    permuted = first(m.outcome, lambda o: o.permuted_agreement, (agreement.dataset,))
    if lack := missing(agreement, permuted):
        return lack
    permutation = first(m.outcome, lambda o: o.class_permutation, (agreement.dataset,))
    chance = first(m.outcome, lambda o: o.permuted_agreement_chance, (agreement.dataset,))
    moves = None if not permutation.ok else tuple((k, int(t)) for k, t in enumerate(permutation.value) if int(t) != k)
    # the relabelling must explain the disagreement: beat both the pairing as it is and what the same
    # search finds on unpaired rows (by chance)
    gain = permuted.value - max(agreement.value, chance.value if chance.ok else 0.0)
    notes = fallback_notes((agreement,), TRANSFER)
    if gain < th.CLASS_ORDER_GAIN_MIN or permuted.value < th.CLASS_ORDER_PERMUTED_AGREEMENT_MIN or moves == ():
        return Clear(notes)
    return Fired(
        (evidence(agreement, rounded(permuted.value - th.CLASS_ORDER_GAIN_MIN), "<="),
         evidence(permuted, rounded(max(th.CLASS_ORDER_PERMUTED_AGREEMENT_MIN,
                                        agreement.value + th.CLASS_ORDER_GAIN_MIN)), ">=")),
        th.CLASS_ORDER_SEVERITY_MIN + (1 - th.CLASS_ORDER_SEVERITY_MIN) * grade(
            gain, th.CLASS_ORDER_GAIN_MIN, th.CLASS_ORDER_GAIN_FULL),
        ClassOrderFacts(agreement, permuted, moves, permutation), notes)


@dataclass(frozen=True)
class DataPipelineFacts:
    teacher_eval: Measured
    teacher_transfer: Measured
    near_chance: bool  # on the eval set
    works_on_transfer: bool  # far more accurate on the transfer set: it works where it was trained
    student: tuple[Measured, Measured] | None  # its student's (transfer, eval) accuracy, when it keeps most of it
    fitted: tuple[Measured, Measured] | None  # the teacher's (eval, transfer) T*, when far flatter on eval
    inputs: tuple[InputInfo, InputInfo] | None  # the (eval, transfer) inputs, when on different scales
    batchnorm: tuple[InputInfo, ...] = ()  # the sets the teacher's first BatchNorm layer sees far off its training
    normalization: tuple[InputInfo, ...] = ()  # the sets far off the normalization the teacher stores


def data_pipeline_suspect(m: Measurements, context: Context) -> Decision:
    """The eval inputs fail a teacher that works on the transfer set: it is far more accurate there while its
    student is not (or while it is near chance on eval), or it is clearly less accurate on eval while its
    outputs there are far flatter (T*) or the two sets' recorded inputs are on different scales. Near chance
    on both sets, with no such evidence, is teacher-weak's case: nothing points at the inputs."""
    teacher_eval = first(m.outcome, lambda o: o.teacher_accuracy, (EVAL,))
    teacher_transfer = first(m.outcome, lambda o: o.teacher_accuracy, (TRANSFER,))
    fits = {field: input_mismatches(context, field) for field in INPUT_FITS}
    if lack := missing(teacher_eval, teacher_transfer):  # the input fits need no second set
        return _inputs_only(teacher_eval, teacher_transfer, fits, context) if teacher_eval.ok and any(
            fits.values()) else lack
    student_eval = first(m.outcome, lambda o: o.student_accuracy, (EVAL,))
    student_transfer = first(m.outcome, lambda o: o.student_accuracy, (TRANSFER,))
    gap = teacher_transfer.value - teacher_eval.value
    near_chance = context.normalized(teacher_eval.value) < th.NEAR_CHANCE_NORMALIZED_ACCURACY
    with_student = student_eval.ok and student_transfer.ok
    # the student keeps most of its accuracy and ends well above the teacher: the inputs fail the teacher only
    keeps = with_student and student_transfer.value - student_eval.value <= th.DATA_GAP_STUDENT_SHARE_MAX * gap
    above = with_student and student_eval.value - teacher_eval.value >= th.DATA_GAP_BELOW_STUDENT_MIN
    works = gap >= th.DATA_GAP_MIN and (keeps or not with_student) and (above or near_chance)
    dropped = gap >= th.DATA_SHIFT_ACCURACY_DROP_MIN
    fitted = (first(m.universe, lambda u: u.teacher.fitted_temperature, (EVAL,)),
              first(m.universe, lambda u: u.teacher.fitted_temperature, (TRANSFER,)))
    flatter = (dropped and fitted[0].ok and fitted[1].ok
               and fitted[1].value >= th.DATA_FITTED_TEMPERATURE_RATIO_MIN * fitted[0].value)
    shift = input_shift(context) if dropped else None
    if not (works or flatter or shift or any(fits.values())):
        return Clear()
    found, grades = [], []
    for field, infos in fits.items():
        found += [input_fit_evidence(info, field) for info in infos]
        grades += [input_fit_grade(info, field) for info in infos]
    if near_chance:
        found.append(evidence(teacher_eval, rounded(context.accuracy_at(th.NEAR_CHANCE_NORMALIZED_ACCURACY)), "<"))
        grades.append(grade(context.normalized(teacher_eval.value), th.NEAR_CHANCE_NORMALIZED_ACCURACY,
                            th.NEAR_CHANCE_NORMALIZED_ACCURACY_FULL))
    drop = th.DATA_GAP_MIN if works else th.DATA_SHIFT_ACCURACY_DROP_MIN
    if works or dropped:
        found.append(evidence(teacher_eval, rounded(teacher_transfer.value - drop), "<="))
        grades.append(grade(gap, drop, th.DATA_GAP_FULL))
    if works and with_student:
        limit = student_transfer.value - th.DATA_GAP_STUDENT_SHARE_MAX * gap
        limit = max(limit, teacher_eval.value + th.DATA_GAP_BELOW_STUDENT_MIN) if above else limit
        found.append(evidence(student_eval, rounded(limit), ">="))
    if flatter:
        found.append(evidence(fitted[0], rounded(fitted[1].value / th.DATA_FITTED_TEMPERATURE_RATIO_MIN), "<="))
    if shift:
        found.append(shift[2])
    return Fired(tuple(found), severity(max(grades)),
                 DataPipelineFacts(teacher_eval, teacher_transfer, near_chance, works,
                                   (student_transfer, student_eval) if works and with_student else None,
                                   fitted if flatter else None, shift[:2] if shift else None,
                                   fits["teacher_batchnorm"], fits["teacher_normalization"]))


def _inputs_only(teacher_eval: Measured, teacher_transfer: Measured, fits: dict, context: Context) -> Fired:
    """Without a transfer set, the inputs far from what the teacher was trained on, on that evidence alone."""
    found = [input_fit_evidence(info, field) for field, infos in fits.items() for info in infos]
    grades = [input_fit_grade(info, field) for field, infos in fits.items() for info in infos]
    near_chance = context.normalized(teacher_eval.value) < th.NEAR_CHANCE_NORMALIZED_ACCURACY
    return Fired(tuple(found), severity(max(grades)),
                 DataPipelineFacts(teacher_eval, teacher_transfer, near_chance, False, None, None, None,
                                   fits["teacher_batchnorm"], fits["teacher_normalization"]))


INPUT_FITS = ("teacher_batchnorm", "teacher_normalization")  # InputInfo fields comparing a set's inputs
# with what the teacher learned from: its first BatchNorm layer's running statistics; its stored normalization


def input_mismatches(context: Context, field: str) -> tuple[InputInfo, ...]:
    """The data sets whose ``field`` fit (one of INPUT_FITS) is far off: the variance
    DATA_BATCHNORM_VARIANCE_RATIO_MIN-fold off either way, or the mean DATA_BATCHNORM_MEAN_SHIFT_MIN
    standard deviations away."""
    def off(fit) -> bool:
        ratio = fit.variance_ratio
        return (max(ratio, 1 / ratio) >= th.DATA_BATCHNORM_VARIANCE_RATIO_MIN
                or fit.mean_shift >= th.DATA_BATCHNORM_MEAN_SHIFT_MIN)
    return tuple(i for i in context.inputs
                 if i.role in (EVAL, TRANSFER) and getattr(i, field) is not None and off(getattr(i, field)))


def input_fit_evidence(info: InputInfo, field: str) -> Evidence:
    """The variance ratio, when it is what is off, else the mean shift, as evidence on ``info``'s set."""
    fit = getattr(info, field)
    ratio = fit.variance_ratio
    if ratio >= th.DATA_BATCHNORM_VARIANCE_RATIO_MIN:
        return Evidence(f"inputs.{field}.variance_ratio", ratio, th.DATA_BATCHNORM_VARIANCE_RATIO_MIN,
                        info.role, ">=")
    if 1 / ratio >= th.DATA_BATCHNORM_VARIANCE_RATIO_MIN:
        return Evidence(f"inputs.{field}.variance_ratio", ratio,
                        rounded(1 / th.DATA_BATCHNORM_VARIANCE_RATIO_MIN), info.role, "<=")
    return Evidence(f"inputs.{field}.mean_shift", fit.mean_shift, th.DATA_BATCHNORM_MEAN_SHIFT_MIN,
                    info.role, ">=")


def input_fit_grade(info: InputInfo, field: str) -> float:
    """0 at the thresholds, 1 at a DATA_BATCHNORM_VARIANCE_RATIO_FULL-fold variance (or as far off in mean)."""
    fit = getattr(info, field)
    log_ratio = abs(math.log(fit.variance_ratio))
    by_variance = grade(log_ratio, math.log(th.DATA_BATCHNORM_VARIANCE_RATIO_MIN),
                        math.log(th.DATA_BATCHNORM_VARIANCE_RATIO_FULL))
    full_shift = th.DATA_BATCHNORM_MEAN_SHIFT_MIN * math.sqrt(th.DATA_BATCHNORM_VARIANCE_RATIO_FULL
                                                              / th.DATA_BATCHNORM_VARIANCE_RATIO_MIN)
    return max(by_variance, grade(fit.mean_shift, th.DATA_BATCHNORM_MEAN_SHIFT_MIN, full_shift))


def input_shift(context: Context) -> tuple[InputInfo, InputInfo, Evidence] | None:
    """The eval and transfer inputs, and the evidence, when their recorded ranges differ in width
    DATA_INPUT_SCALE_RATIO_MIN-fold or their means by DATA_INPUT_SHIFT_MIN of the wider range; None when
    they do not or were not recorded."""
    recorded = {i.role: i for i in context.inputs if i.input_range is not None and i.input_mean is not None}
    if EVAL not in recorded or TRANSFER not in recorded:
        return None
    pair = recorded[EVAL], recorded[TRANSFER]
    narrow, wide = sorted(hi - lo for lo, hi in (i.input_range for i in pair))
    if narrow > 0 and wide / narrow >= th.DATA_INPUT_SCALE_RATIO_MIN:
        return (*pair, Evidence("inputs.input_range_width_ratio", wide / narrow, th.DATA_INPUT_SCALE_RATIO_MIN,
                                "inputs", ">="))
    shift = abs(pair[0].input_mean - pair[1].input_mean) / wide if wide > 0 else 0.0
    if shift >= th.DATA_INPUT_SHIFT_MIN:
        return (*pair, Evidence("inputs.input_mean_shift", shift, th.DATA_INPUT_SHIFT_MIN, "inputs", ">="))
    return None


@dataclass(frozen=True)
class TeacherWeakFacts:
    teacher: Measured
    compared: Measured | None  # the baseline, else the student, when the teacher is not clearly better
    against_baseline: bool  # whether ``compared`` is the baseline
    near_chance: bool
    smoothing: Measured  # equivalent smoothing of the targets, for the advice


def teacher_weak(m: Measurements, context: Context) -> Decision:
    """The teacher is not clearly more accurate than the baseline (else its own student), or near chance."""
    teacher = first(m.outcome, lambda o: o.teacher_accuracy, EVAL_FIRST)
    if lack := missing(teacher):
        return lack
    baseline = first(m.outcome, lambda o: o.baseline_accuracy, (teacher.dataset,))
    student = first(m.outcome, lambda o: o.student_accuracy, (teacher.dataset,))
    found, grades, compared, notes = [], [], None, fallback_notes((teacher,), EVAL)
    if baseline.ok:  # near the ceiling, removing TEACHER_WEAK_ERROR_SHARE of the errors is enough
        margin = min(th.TEACHER_WEAK_MARGIN, th.TEACHER_WEAK_ERROR_SHARE * (1 - baseline.value))
        if teacher.value < baseline.value + margin:
            compared = baseline
            found += [evidence(teacher, rounded(baseline.value + margin), "<"),
                      evidence(baseline, rounded(teacher.value - margin), ">")]
            grades.append(grade(teacher.value - baseline.value, margin, th.TEACHER_WEAK_MARGIN_FULL))
    elif student.ok:  # a student matching its teacher is success: only one clearly better flags it
        notes += ("no baseline student: a teacher no better than the student trained alone cannot be told "
                 "from a student that learned it well; only a student clearly better than its teacher is flagged",)
        margin = min(th.TEACHER_WEAK_MARGIN, th.TEACHER_WEAK_ERROR_SHARE * (1 - teacher.value))
        if student.value > teacher.value + margin:
            compared = student
            found += [evidence(teacher, rounded(student.value - margin), "<"),
                      evidence(student, rounded(teacher.value + margin), ">")]
            grades.append(grade(teacher.value - student.value, -margin, th.TEACHER_WEAK_MARGIN_FULL))
    normalized = context.normalized(teacher.value)
    near_chance = normalized < th.NEAR_CHANCE_NORMALIZED_ACCURACY
    if near_chance:
        found.append(evidence(teacher, rounded(context.accuracy_at(th.NEAR_CHANCE_NORMALIZED_ACCURACY)), "<"))
        grades.append(grade(normalized, th.NEAR_CHANCE_NORMALIZED_ACCURACY, th.NEAR_CHANCE_NORMALIZED_ACCURACY_FULL))
    if not found:
        return Clear(notes)
    smoothing = first(m.universe, lambda u: u.equivalent_smoothing)
    return Fired(tuple(found), severity(max(grades)), TeacherWeakFacts(teacher, compared, compared is baseline, near_chance, smoothing),
                 notes)


@dataclass(frozen=True)
class LabelSmoothedFacts:
    spread: Measured
    content: Measured
    accuracy: Measured


def teacher_label_smoothed(m: Measurements, context: Context) -> Decision:
    """An accurate teacher whose wrong-class logits and probabilities are flat free of τ."""
    spread = first(m.domain, lambda d: d.teacher.nontarget_logit_spread)
    content = first(m.domain, lambda d: d.teacher.dark_knowledge_content, (spread.dataset,))
    accuracy = first(m.outcome, lambda o: o.teacher_accuracy, EVAL_FIRST)
    if lack := missing(spread, content, accuracy):
        return lack
    notes = fallback_notes((spread,), TRANSFER) + fallback_notes((accuracy,), EVAL)
    if spread.value >= th.LS_SPREAD_MAX or content.value >= th.LS_CONTENT_MAX:
        return Clear(notes)
    if context.normalized(accuracy.value) < th.LS_TEACHER_MIN_NORMALIZED_ACCURACY:
        return Clear(notes)  # flat because it knows little: teacher-weak's case, not label smoothing
    flatness = (grade(content.value, th.LS_CONTENT_MAX, th.LS_CONTENT_FULL)
                + grade(spread.value, th.LS_SPREAD_MAX, th.LS_SPREAD_FULL)) / 2
    return Fired(
        (evidence(content, th.LS_CONTENT_MAX, "<"), evidence(spread, th.LS_SPREAD_MAX, "<"),
         evidence(accuracy, rounded(context.accuracy_at(th.LS_TEACHER_MIN_NORMALIZED_ACCURACY)), ">=")),
        severity(flatness, (grade(context.temperature, 1.0, th.LS_TEMPERATURE_FULL),)),
        LabelSmoothedFacts(spread, content, accuracy), notes)


@dataclass(frozen=True)
class OverconfidentFacts:
    sharp: Sharpness
    memorized: Measured | None  # the softness gap, when past SOFTNESS_GAP_MIN
    flat: Measured | None  # untrained-student rescaling CV, when flat
    whatif: WhatIf | None
    higher_helps: bool  # the informative range reaches above the current τ
    saturation_cut: float  # what counts as saturated


def teacher_overconfident(m: Measurements, context: Context) -> Decision:
    """Near one-hot targets on the transfer set that come from the teacher, not from a τ below 1."""
    sharp = sharpness(m, context)
    if isinstance(sharp, NotChecked):
        return sharp
    saturation = first(m.universe, lambda u: u.saturation_share)
    notes = fallback_notes((saturation,), TRANSFER)
    dataset = saturation.dataset
    if dataset != TRANSFER and sharp is not None:
        notes += ("no transfer set: memorization (transfer vs eval softness) not checked",)
    if sharp is None or not sharp.teacher_at_fault:
        return Clear(notes)  # not sharp, or only a τ < 1 made it so: temperature-mismatch's case
    gap, whatif = m.universe.softness_gap, whatif_on(m, dataset)
    memorized = gap if dataset == TRANSFER and gap.ok and gap.value >= th.SOFTNESS_GAP_MIN else None
    flat = first(m.instance, lambda i: i.untrained_rescaling_weight_cv, (dataset,))
    flat = flat if flat.ok and flat.value <= th.FLAT_RESCALING_CV_MAX else None
    band = None if whatif is None else whatif.informative_range
    shown = {e.metric for e in sharp.evidence}
    found, support = list(sharp.evidence), [0.0, 0.0, 0.0]
    if memorized is not None and memorized.name not in shown:
        found.append(evidence(memorized, th.SOFTNESS_GAP_MIN, ">="))
        support[0] = grade(memorized.value, th.SOFTNESS_GAP_MIN, th.SOFTNESS_GAP_FULL)
    if sharp.fitted is not None:
        found.append(evidence(sharp.fitted, th.FITTED_TEMPERATURE_MIN, ">="))
        support[1] = grade(sharp.fitted.value, th.FITTED_TEMPERATURE_MIN, th.FITTED_TEMPERATURE_FULL)
    if flat is not None and flat.name not in shown:
        found.append(evidence(flat, th.FLAT_RESCALING_CV_MAX, "<="))
        support[2] = grade(flat.value, th.FLAT_RESCALING_CV_MAX, th.FLAT_RESCALING_CV_FULL)
    higher_helps = band is not None and band[1] > context.temperature
    if band is not None and not higher_helps:
        found.append(range_evidence(m, band[1], context.temperature, "<="))
    return Fired(tuple(found), severity(sharp.grade, tuple(support)),
                 OverconfidentFacts(sharp, memorized, flat, whatif, higher_helps,
                                    m.universe.on(dataset).saturation_cut), notes)


@dataclass(frozen=True)
class TemperatureFacts:
    direction: str  # 'high' or 'low'
    smoothing: Measured
    saturation: Measured
    whatif: WhatIf
    flattened: tuple[Measured, Measured] | None  # content at τ and at τ = 1, when τ flattened real structure


def temperature_mismatch(m: Measurements, context: Context) -> Decision:
    """τ lies outside the range where this teacher's targets are informative."""
    whatif = m.universe.temperature_whatif
    if lack := missing(whatif):
        return lack
    notes = fallback_notes((whatif,), TRANSFER)
    if whatif.value.informative_range is None:
        return Clear(notes)  # no τ gives informative targets: the teacher is at fault, not τ
    dataset, (lo, hi), temperature = whatif.dataset, whatif.value.informative_range, context.temperature
    smoothing = first(m.universe, lambda u: u.effective_smoothing, (dataset,))
    if lack := missing(smoothing):
        return lack
    saturation = first(m.universe, lambda u: u.saturation_share, (dataset,))
    uniform = (context.n_classes - 1) / context.n_classes
    if smoothing.value > whatif.value.band.max_smoothing and lo < temperature:
        return replace(_too_high(m, context, whatif.value, smoothing, saturation, uniform), notes=notes)
    sharp = sharpness(m, context)
    if isinstance(sharp, Sharpness) and not sharp.teacher_at_fault and hi > temperature:
        flat = first(m.instance, lambda i: i.untrained_rescaling_weight_cv, (dataset,))
        found = [*sharp.evidence, range_evidence(m, lo if lo > temperature else hi, temperature, ">")]
        support = 0.0
        if flat.ok and flat.value <= th.FLAT_RESCALING_CV_MAX:
            found.append(evidence(flat, th.FLAT_RESCALING_CV_MAX, "<="))
            support = grade(flat.value, th.FLAT_RESCALING_CV_MAX, th.FLAT_RESCALING_CV_FULL)
        return Fired(tuple(found), severity(sharp.grade, (support,)),
                     TemperatureFacts("low", smoothing, saturation, whatif.value, None), notes)
    return Clear(notes)


def _too_high(m: Measurements, context: Context, whatif: WhatIf, smoothing: Measured, saturation: Measured,
              uniform: float) -> Fired:
    """Near-uniform targets at a τ above the informative range."""
    lo, hi = whatif.informative_range
    temperature, soft_limit = context.temperature, whatif.band.max_smoothing
    found = [evidence(smoothing, rounded(soft_limit), ">"),
             range_evidence(m, hi if hi < temperature else lo, temperature, "<")]
    at_t = first(m.domain, lambda d: d.dark_knowledge_content_at_temperature, (smoothing.dataset,))
    at_one = first(m.domain, lambda d: d.teacher.dark_knowledge_content, (smoothing.dataset,))
    flattened = (at_t.ok and at_one.ok and at_t.value <= th.FLAT_CONTENT_AT_TEMPERATURE_MAX
                 and at_one.value >= th.LS_CONTENT_MAX)
    support = 0.0
    if flattened:
        found += [evidence(at_t, th.FLAT_CONTENT_AT_TEMPERATURE_MAX, "<="), evidence(at_one, th.LS_CONTENT_MAX, ">=")]
        support = grade(at_t.value, th.FLAT_CONTENT_AT_TEMPERATURE_MAX, th.FLAT_CONTENT_AT_TEMPERATURE_FULL)
    primary = grade(smoothing.value, soft_limit, th.SOFT_FULL_FRACTION * uniform)
    return Fired(tuple(found), severity(primary, (support,)),
                 TemperatureFacts("high", smoothing, saturation, whatif, (at_t, at_one) if flattened else None))


@dataclass(frozen=True)
class WrongOnTransferFacts:
    error: Measured
    held_out: Measured | None  # teacher accuracy on held-out data, when labels look suspect


def teacher_wrong_on_transfer(m: Measurements, context: Context) -> Decision:
    """The teacher's top class contradicts the label on many transfer examples, and (with an eval set) on
    more of them than it errs on held-out data: errors it makes as often on fresh data are the task's own
    uncertainty (a language model's next token), which the student meets anyway, not wrong targets."""
    error = first(m.instance, lambda i: i.teacher_error_rate, (TRANSFER,))
    if lack := missing(error):
        return lack
    if error.value < th.TEACHER_TRANSFER_ERROR_MAX:
        return Clear()
    held_out = first(m.outcome, lambda o: o.teacher_accuracy, (EVAL,))
    notes = () if held_out.ok else (
        "no eval set: the teacher's transfer-set errors were not compared with its held-out errors",)
    excess = error.value - (1 - held_out.value) if held_out.ok else None
    suspect = excess is not None and excess >= th.TRANSFER_ERROR_EXCESS_MIN
    if held_out.ok and not suspect:
        return Clear()
    found = [evidence(error, th.TEACHER_TRANSFER_ERROR_MAX, ">=")]
    support = 0.0
    if suspect:
        found.append(evidence(held_out, rounded(1 - error.value + th.TRANSFER_ERROR_EXCESS_MIN), ">="))
        support = grade(excess, th.TRANSFER_ERROR_EXCESS_MIN, th.TRANSFER_ERROR_EXCESS_FULL)
    primary = grade(error.value, th.TEACHER_TRANSFER_ERROR_MAX, th.TEACHER_TRANSFER_ERROR_FULL)
    return Fired(tuple(found), severity(primary, (support,)),
                 WrongOnTransferFacts(error, held_out if suspect else None), notes)


@dataclass(frozen=True)
class CapacityFacts:
    agreement: Measured
    where_teacher_correct: bool
    teacher: Measured
    student: Measured
    kl: Measured | None  # when past CAPACITY_KL_MIN
    kd_gain: Measured | None  # when KD did not beat the baseline


def capacity_gap(m: Measurements, context: Context) -> Decision:
    """A clearly better teacher whose student does not follow it on the transfer set, and not for want of
    training: when a baseline of the student's size fits the transfer labels about as well as the teacher
    while the KD student fits them clearly worse (:func:`underfit`), the size is not what stops it from
    following (student-underfit's case); a student too small leaves its baseline short of the teacher too."""
    # Where the teacher contradicts the label, a student following the label is right to disagree: only
    # agreement on the examples the teacher gets right measures whether the student can follow.
    where_correct = first(m.outcome, lambda o: o.agreement_where_teacher_correct)
    agreement = where_correct if where_correct.ok else first(m.outcome, lambda o: o.agreement)
    teacher = first(m.outcome, lambda o: o.teacher_accuracy, EVAL_FIRST)
    student = first(m.outcome, lambda o: o.student_accuracy, (teacher.dataset,))
    if lack := missing(agreement, teacher, student):
        return lack
    gap = teacher.value - student.value
    notes = fallback_notes((agreement,), TRANSFER) + fallback_notes((teacher,), EVAL)
    if (agreement.value >= th.CAPACITY_AGREEMENT_MAX or gap < th.CAPACITY_ACCURACY_GAP_MIN
            or isinstance(underfit(m), Underfit)):
        return Clear(notes)
    kl = first(m.outcome, lambda o: o.kl_teacher_student_at_temperature, (agreement.dataset,))
    kl = kl if kl.ok and kl.value >= th.CAPACITY_KL_MIN else None
    kd_gain = first(m.outcome, lambda o: o.kd_gain, (teacher.dataset,))
    kd_gain = kd_gain if kd_gain.ok and kd_gain.value <= th.KD_GAIN_MIN else None
    found = [evidence(agreement, th.CAPACITY_AGREEMENT_MAX, "<"),
             evidence(teacher, rounded(student.value + th.CAPACITY_ACCURACY_GAP_MIN), ">="),
             evidence(student, rounded(teacher.value - th.CAPACITY_ACCURACY_GAP_MIN), "<=")]
    found += [evidence(kl, th.CAPACITY_KL_MIN, ">=")] if kl else []
    found += [evidence(kd_gain, th.KD_GAIN_MIN, "<=")] if kd_gain else []
    support = (grade(kl.value, th.CAPACITY_KL_MIN, th.CAPACITY_KL_FULL) if kl else 0.0, 1.0 if kd_gain else 0.0)
    primary = (grade(agreement.value, th.CAPACITY_AGREEMENT_MAX, th.CAPACITY_AGREEMENT_FULL)
               + grade(gap, th.CAPACITY_ACCURACY_GAP_MIN, th.CAPACITY_ACCURACY_GAP_FULL)) / 2
    return Fired(tuple(found), severity(primary, support),
                 CapacityFacts(agreement, agreement is where_correct, teacher, student, kl, kd_gain), notes)


@dataclass(frozen=True)
class UnderfitFacts:
    underfit: Underfit
    agreement: Measured  # with the teacher on the transfer set
    where_teacher_correct: bool  # whether ``agreement`` counts only the examples the teacher gets right


def student_underfit(m: Measurements, context: Context) -> Decision:
    """The KD student fits the transfer labels clearly worse than its baseline and its teacher although its
    size can fit them (:func:`underfit`), and KD did not help on the eval set: it underfits the distillation
    objective. Without the loss on eval the same shortfall is KD's regularization at work."""
    found = underfit(m)
    if isinstance(found, NotChecked):
        return found
    gain = first(m.outcome, lambda o: o.kd_gain, (EVAL,))
    if lack := missing(gain):
        return lack
    if found is None or gain.value > th.KD_GAIN_MIN:
        return Clear()
    where_correct = first(m.outcome, lambda o: o.agreement_where_teacher_correct, (TRANSFER,))
    agreement = where_correct if where_correct.ok else first(m.outcome, lambda o: o.agreement, (TRANSFER,))
    return Fired(
        (evidence(found.shortfall, -th.UNDERFIT_SHORTFALL_MIN, "<="),
         evidence(found.student, rounded(found.teacher.value - th.UNDERFIT_SHORTFALL_MIN), "<="),
         evidence(found.baseline, rounded(found.teacher.value - th.CAPACITY_ACCURACY_GAP_MIN), ">="),
         evidence(gain, th.KD_GAIN_MIN, "<=")),
        severity(grade(-found.shortfall.value, th.UNDERFIT_SHORTFALL_MIN, th.UNDERFIT_SHORTFALL_FULL),
                 (grade(-gain.value, -th.KD_GAIN_MIN, th.KD_LOSS_FULL),)),
        UnderfitFacts(found, agreement, agreement is where_correct))


@dataclass(frozen=True)
class StructureFacts:
    content: Measured
    checks: tuple[tuple[Measured, Measured | None, bool], ...]  # (student's score, baseline's or None, on outputs)
    band: tuple[float, float] | None


def structure_not_transferred(m: Measurements, context: Context) -> Decision:
    """The teacher has class structure, but the student matches it no better than the baseline."""
    content = first(m.domain, lambda d: d.teacher.dark_knowledge_content)
    if lack := missing(content):
        return lack
    if content.value < th.LS_CONTENT_MAX:
        return Clear(fallback_notes((content,), TRANSFER))  # nothing to transfer: teacher-label-smoothed or teacher-weak speak to it
    scores = (first(m.domain, lambda d: d.output_similarity_transfer_score),
              first(m.domain, lambda d: d.weight_similarity_transfer_score, (WEIGHTS,)))
    baselines = (first(m.domain, lambda d: d.baseline_output_similarity_transfer_score, (scores[0].dataset,)),
                 m.domain.weights.baseline_weight_similarity_transfer_score)
    checks = tuple((score, baseline if baseline.ok else None, on_outputs)
                   for score, baseline, on_outputs in zip(scores, baselines, (True, False)) if score.ok)
    if not checks:
        return NotChecked("; ".join(score.unavailable for score in scores))
    notes = fallback_notes((content,), TRANSFER) + tuple(dict.fromkeys(
        f"no baseline student: the class-similarity transfer score was compared with an absolute threshold "
        f"({th.STRUCTURE_SCORE_MIN:g}), not with a student trained without KD" for _, b, _ in checks if b is None))
    notes += tuple(f"{score.unavailable}: checked with the other similarity only" for score in scores if not score.ok)
    limits = [th.STRUCTURE_SCORE_MIN if b is None else rounded(b.value + th.STRUCTURE_GAIN_MIN) for _, b, _ in checks]
    if any(score.value >= limit for (score, _, _), limit in zip(checks, limits)):
        return Clear(notes)  # the structure reached the student's outputs or its logit layer
    found, grades = [], []
    for (score, baseline, _), limit in zip(checks, limits):
        found.append(evidence(score, limit, "<"))
        if baseline is None:
            grades.append(grade(score.value, th.STRUCTURE_SCORE_MIN, th.STRUCTURE_SCORE_FULL))
        else:
            found.append(evidence(baseline, rounded(score.value - th.STRUCTURE_GAIN_MIN), ">"))
            grades.append(grade(score.value - baseline.value, th.STRUCTURE_GAIN_MIN, th.STRUCTURE_GAIN_FULL))
    whatif = m.universe.temperature_whatif
    band = whatif.value.informative_range if whatif.ok else None
    return Fired((*found, evidence(content, th.LS_CONTENT_MAX, ">=")), severity(sum(grades) / len(grades)),
                 StructureFacts(content, checks, band), notes)
