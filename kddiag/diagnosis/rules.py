"""The diagnosis: one small pure rule per failure case of knowledge distillation, and their ranking.

A rule reads the measurements (docs/metrics.md) and returns a :class:`~kddiag.types.Finding` when
its failure case shows, ``None`` when it does not, and raises :class:`NotChecked` when the metrics it
needs were not measured. Where a rule can only check part of its case (no baseline, no transfer
set, no weights) it checks what it can and says what it skipped with ``context.not_checked(why)``.
Rules sit in ``RULES``, whose order breaks severity ties; every cut-off is a named constant in
:mod:`kddiag.diagnosis.thresholds`. To add a rule: write the function, add it to ``RULES``, test it.

Severity grows with how far each number is past its threshold (``_grade``): from ``SEVERITY_MIN``
just past it to ``SEVERITY_MAX`` with every piece of evidence in full; class-order-mismatch sits
above all others, since it makes the comparisons the other rules rest on meaningless.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable

from kddiag.diagnosis.thresholds import (
    CAPACITY_ACCURACY_GAP_FULL, CAPACITY_ACCURACY_GAP_MIN, CAPACITY_AGREEMENT_FULL,
    CAPACITY_AGREEMENT_MAX, CAPACITY_KL_FULL, CAPACITY_KL_MIN, CLASS_ORDER_GAIN_FULL,
    CLASS_ORDER_GAIN_MIN, CLASS_ORDER_PERMUTED_AGREEMENT_MIN, CLASS_ORDER_SEVERITY_MIN,
    FITTED_TEMPERATURE_FULL, FITTED_TEMPERATURE_MIN, FLAT_CONTENT_AT_TEMPERATURE_FULL,
    FLAT_CONTENT_AT_TEMPERATURE_MAX, FLAT_RESCALING_CV_FULL, FLAT_RESCALING_CV_MAX,
    INFORMATIVE_SATURATION_MAX, INFORMATIVE_SMOOTHING_MIN, INFORMATIVE_SOFT_FRACTION, KD_GAIN_MIN,
    LS_CONTENT_FULL, LS_CONTENT_MAX, LS_SPREAD_FULL, LS_SPREAD_MAX,
    LS_TEACHER_MIN_NORMALIZED_ACCURACY, LS_TEMPERATURE_FULL, NEAR_CHANCE_NORMALIZED_ACCURACY,
    NEAR_CHANCE_NORMALIZED_ACCURACY_FULL, OVERCONFIDENT_SATURATION_MIN,
    OVERCONFIDENT_SMOOTHING_MAX, SEVERITY_MAX, SEVERITY_MIN, SHARP_SATURATION_FULL,
    SHARP_SMOOTHING_FULL, SOFT_FULL_FRACTION, SOFTNESS_GAP_FULL, SOFTNESS_GAP_MIN,
    STRUCTURE_GAIN_FULL, STRUCTURE_GAIN_MIN, STRUCTURE_SCORE_FULL, STRUCTURE_SCORE_MIN,
    SUPPORT_WEIGHT, TEACHER_TRANSFER_ERROR_FULL, TEACHER_TRANSFER_ERROR_MAX,
    TEACHER_WEAK_ERROR_SHARE, TEACHER_WEAK_MARGIN, TEACHER_WEAK_MARGIN_FULL, TRANSFER_ERROR_EXCESS_FULL,
    TRANSFER_ERROR_EXCESS_MIN,
)
from kddiag.errors import KddiagError
from kddiag.results import Measurements
from kddiag.types import EVAL, TRANSFER, Diagnosis, Evidence, Finding, Settings

HEALTHY = "healthy"
CLASS_ORDER_MISMATCH = "class-order-mismatch"
TEACHER_WEAK = "teacher-weak"
TEACHER_LABEL_SMOOTHED = "teacher-label-smoothed"
TEACHER_OVERCONFIDENT = "teacher-overconfident"
TEMPERATURE_MISMATCH = "temperature-mismatch"
TEACHER_WRONG_ON_TRANSFER = "teacher-wrong-on-transfer"
CAPACITY_GAP = "capacity-gap"
STRUCTURE_NOT_TRANSFERRED = "structure-not-transferred"

WEIGHTS = "weights"
_TRANSFER_FIRST = (TRANSFER, EVAL)
_EVAL_FIRST = (EVAL, TRANSFER)
_WHATIF_RANGE = "universe.temperature_whatif.informative_range"
_MAX_LISTED_MOVES = 20


class NotChecked(Exception):
    """A rule could not run at all; the message says which metric was missing and why."""


@dataclass
class RuleContext:
    """What a rule needs besides the measurements, and the parts of its check it had to skip."""

    settings: Settings
    n_classes: int
    skipped: list[str] = field(default_factory=list)

    @property
    def temperature(self) -> float:
        return float(self.settings.temperature.value)

    @property
    def alpha(self) -> float:
        return float(self.settings.alpha.value)

    @property
    def chance(self) -> float:
        return 1.0 / self.n_classes

    def accuracy_at(self, normalized: float) -> float:
        """The accuracy whose normalized accuracy (acc − 1/C)/(1 − 1/C) is ``normalized``."""
        return self.chance + normalized * (1.0 - self.chance)

    def normalized(self, accuracy: float) -> float:
        """(accuracy − 1/C)/(1 − 1/C): 0 at chance, 1 when perfect."""
        return (accuracy - self.chance) / (1.0 - self.chance)

    def not_checked(self, reason: str) -> None:
        """Record a part of the rule's check that could not run (the rest did)."""
        if reason not in self.skipped:
            self.skipped.append(reason)


@dataclass(frozen=True)
class Reading:
    """One metric value a rule read, with the set it was measured on."""

    metric: str  # 'section.name'
    value: Any
    dataset: str

    def evidence(self, threshold: float | None, comparison: str) -> Evidence:
        return Evidence(metric=self.metric, value=float(self.value), threshold=threshold,
                        dataset=self.dataset, comparison=comparison)


Rule = Callable[[Measurements, RuleContext], "Finding | None"]


# ---------------------------------------------------------------- reading the measurements

def _usable(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, numbers.Real):
        return math.isfinite(value)
    return True


def _read(m: Measurements, section: str, name: str, datasets: tuple[str, ...]) -> tuple[Reading | None, str]:
    """The first usable value of ``section.name`` over ``datasets``; else None and why."""
    reasons = []
    for dataset in datasets:
        metric = m.get(section, name, dataset)
        if metric is None:
            continue
        if _usable(metric.value):
            return Reading(f"{section}.{name}", metric.value, dataset), ""
        reasons.append(f"{metric.unavailable or 'not a finite number'} ({dataset})")
    why = "; ".join(reasons) if reasons else f"not measured ({' or '.join(datasets)})"
    return None, f"{section}.{name}: {why}"


def _maybe(m: Measurements, section: str, name: str, datasets: tuple[str, ...]) -> Reading | None:
    return _read(m, section, name, datasets)[0]


def _need(m: Measurements, context: RuleContext, section: str, name: str,
          datasets: tuple[str, ...] = _TRANSFER_FIRST) -> Reading:
    """Like ``_maybe`` but raises NotChecked when absent, and notes a fallback to a later set."""
    reading, why = _read(m, section, name, datasets)
    if reading is None:
        raise NotChecked(why)
    if reading.dataset != datasets[0]:
        context.not_checked(f"{section}.{name} not available on the {datasets[0]} set: "
                            f"checked on the {reading.dataset} set instead")
    return reading


@dataclass(frozen=True)
class Sharpness:
    """Near one-hot targets at the distillation τ, and whether the teacher or the setting is to blame.

    The targets are sharp when saturation_share ≥ OVERCONFIDENT_SATURATION_MIN or the mean wrong-class
    mass ε_eff ≤ OVERCONFIDENT_SMOOTHING_MAX. τ = 1 is the teacher's own calibration: sharp targets at
    τ ≥ 1, or at τ = 1 on the what-if grid, or a fitted T* ≥ FITTED_TEMPERATURE_MIN are the teacher's
    property (over-confidence, memorization); sharp targets that only a τ < 1 produced are the setting's.
    """

    evidence: tuple[Evidence, ...]
    grade: float
    saturation: Reading
    smoothing: Reading | None
    teacher_at_fault: bool
    sharp_at_one: bool
    fitted: Reading | None  # T* when past FITTED_TEMPERATURE_MIN
    one_hot: bool  # near one-hot; else equally confident everywhere (flat rescaling) after memorizing


def _sharpness(m: Measurements, context: RuleContext) -> Sharpness | None:
    """How sharp the teacher's targets are on the transfer set (else eval), or None when they are not."""
    saturation = _need(m, context, "universe", "saturation_share")
    dataset = saturation.dataset
    smoothing = _maybe(m, "universe", "effective_smoothing", (dataset,))
    evidence, grades = [], []
    if saturation.value >= OVERCONFIDENT_SATURATION_MIN:
        evidence.append(saturation.evidence(OVERCONFIDENT_SATURATION_MIN, ">="))
        grades.append(_grade(saturation.value, OVERCONFIDENT_SATURATION_MIN, SHARP_SATURATION_FULL))
    if smoothing is not None and smoothing.value <= OVERCONFIDENT_SMOOTHING_MAX:
        evidence.append(smoothing.evidence(OVERCONFIDENT_SMOOTHING_MAX, "<="))
        grades.append(_grade(smoothing.value, OVERCONFIDENT_SMOOTHING_MAX, SHARP_SMOOTHING_FULL))
    one_hot = bool(evidence)
    # Short of one-hot, a teacher that memorized the transfer set can still be equally sure of every
    # example there: flat rescaling weights (level 3) with softer targets on held-out data.
    flat = _maybe(m, "instance", "untrained_rescaling_weight_cv", (dataset,))
    gap = _maybe(m, "universe", "softness_gap", (TRANSFER,)) if dataset == TRANSFER else None
    if (not one_hot and flat is not None and gap is not None
            and flat.value <= FLAT_RESCALING_CV_MAX and gap.value >= SOFTNESS_GAP_MIN):
        evidence += [flat.evidence(FLAT_RESCALING_CV_MAX, "<="), gap.evidence(SOFTNESS_GAP_MIN, ">=")]
        grades.append(_grade(flat.value, FLAT_RESCALING_CV_MAX, FLAT_RESCALING_CV_FULL))
    if not evidence:
        return None
    whatif = _maybe(m, "universe", "temperature_whatif", (dataset,))
    sharp_at_one = whatif is not None and _sharp_at(whatif.value, 1.0)
    fitted = _maybe(m, "universe", "teacher_fitted_temperature", (EVAL,))
    fitted = fitted if fitted is not None and fitted.value >= FITTED_TEMPERATURE_MIN else None
    at_fault = context.temperature >= 1.0 or sharp_at_one or fitted is not None
    return Sharpness(tuple(evidence), max(grades), saturation, smoothing, at_fault, sharp_at_one, fitted,
                     one_hot)


def _sharp_at(whatif: dict, temperature: float) -> bool:
    """Whether the what-if grid's targets at ``temperature`` are sharp (False when it is not on the grid)."""
    grid = [float(t) for t in whatif.get("temperatures", ())]
    if temperature not in grid:
        return False
    i = grid.index(temperature)
    return (whatif["saturation_share"][i] >= OVERCONFIDENT_SATURATION_MIN
            or whatif["effective_smoothing"][i] <= OVERCONFIDENT_SMOOTHING_MAX)


def _informative_range(whatif: Reading | None) -> tuple[float, float] | None:
    band = None if whatif is None else whatif.value.get("informative_range")
    return None if band is None else (float(band[0]), float(band[1]))


def _nearest_informative(whatif: Reading, band: tuple[float, float], temperature: float) -> float:
    """The grid τ inside the informative range closest (in ratio) to the current τ."""
    lo, hi = band
    inside = [float(t) for t in whatif.value.get("temperatures", ()) if lo <= t <= hi] or [lo, hi]
    return min(inside, key=lambda t: abs(math.log(t / temperature)))


# ---------------------------------------------------------------- severity and wording

def _grade(value: float, threshold: float, full: float) -> float:
    """How far ``value`` is past ``threshold`` toward ``full``: 0 at the threshold, 1 at or past full."""
    return min(1.0, max(0.0, (value - threshold) / (full - threshold)))


def _severity(primary: float, support: tuple[float, ...] = ()) -> float:
    """SEVERITY_MIN..SEVERITY_MAX from the firing condition's grade and corroborating grades."""
    strength = primary
    if support:
        strength = (1 - SUPPORT_WEIGHT) * primary + SUPPORT_WEIGHT * sum(support) / len(support)
    return SEVERITY_MIN + (SEVERITY_MAX - SEVERITY_MIN) * strength


def _r(threshold: float) -> float:
    """A threshold derived from measured values, rounded for display."""
    return round(threshold, 6)


def _points(difference: float) -> str:
    """An accuracy difference in percentage points, signed: '+3.0 points'."""
    return f"{100 * difference:+.1f} points"


def _guessed_temperature(context: RuleContext) -> str:
    if not context.settings.temperature.guessed:
        return ""
    return (f" τ = {context.temperature:g} was guessed, not given: pass the value the student was "
            "distilled with (--temperature) before acting on this.")


def _moved_classes(permutation: list) -> list[tuple[int, int]]:
    return [(k, int(t)) for k, t in enumerate(permutation) if int(t) != k]


def _describe_moves(moves: list[tuple[int, int]]) -> str:
    listed = ", ".join(f"student {k} → teacher {t}" for k, t in moves[:_MAX_LISTED_MOVES])
    extra = len(moves) - _MAX_LISTED_MOVES
    return listed + (f", … ({extra} more)" if extra > 0 else "")


# ---------------------------------------------------------------- the rules

def class_order_mismatch(m: Measurements, context: RuleContext) -> Finding | None:
    """Agreement is low but a relabelling of the student's classes restores it."""
    agreement = _need(m, context, "outcome", "agreement")
    permuted = _need(m, context, "outcome", "permuted_agreement", (agreement.dataset,))
    permutation = _maybe(m, "outcome", "class_permutation", (agreement.dataset,))
    moves = None if permutation is None else _moved_classes(permutation.value)
    gain = permuted.value - agreement.value
    if gain < CLASS_ORDER_GAIN_MIN or permuted.value < CLASS_ORDER_PERMUTED_AGREEMENT_MIN or moves == []:
        return None
    if moves is None:
        mapping = "the permutation itself was not reported (outcome.class_permutation missing)"
    else:
        mapping = f"the relabelling that restores agreement is {_describe_moves(moves)}"
    return Finding(
        id=CLASS_ORDER_MISMATCH,
        levels=("outcome",),
        severity=CLASS_ORDER_SEVERITY_MIN + (1 - CLASS_ORDER_SEVERITY_MIN) * _grade(
            gain, CLASS_ORDER_GAIN_MIN, CLASS_ORDER_GAIN_FULL),
        title="The student's classes are a permutation of the teacher's",
        evidence=(agreement.evidence(_r(permuted.value - CLASS_ORDER_GAIN_MIN), "<="),
                  permuted.evidence(_r(max(CLASS_ORDER_PERMUTED_AGREEMENT_MIN,
                                           agreement.value + CLASS_ORDER_GAIN_MIN)), ">=")),
        explanation=(
            f"The student agrees with the teacher's top class on {agreement.value:.1%} of the "
            f"{agreement.dataset} set, but on {permuted.value:.1%} once its classes are relabelled: "
            "its outputs are in a different class order, not wrong. Every class-by-class comparison "
            "of teacher and student (agreement, KL, class structure) is meaningless until the order "
            "is fixed, so capacity-gap and structure-not-transferred are not checked."),
        advice=(f"Fix the class-index mapping between teacher and student (label maps of the data "
                f"loaders, order of the output heads): {mapping}. Then run kddiag again."),
    )


def teacher_weak(m: Measurements, context: RuleContext) -> Finding | None:
    """The teacher is not clearly more accurate than the student or the baseline, or near chance."""
    teacher = _need(m, context, "outcome", "teacher_accuracy", _EVAL_FIRST)
    student = _maybe(m, "outcome", "student_accuracy", (teacher.dataset,))
    baseline = _maybe(m, "outcome", "baseline_accuracy", (teacher.dataset,))
    evidence, grades, sentences = [], [], []
    if baseline is not None:
        # The student trained alone is the bar a teacher must clear. Near the ceiling two points are
        # most of the errors left: there removing TEACHER_WEAK_ERROR_SHARE of them is enough.
        margin = min(TEACHER_WEAK_MARGIN, TEACHER_WEAK_ERROR_SHARE * (1 - baseline.value))
        if teacher.value < baseline.value + margin:
            evidence += [teacher.evidence(_r(baseline.value + margin), "<"),
                         baseline.evidence(_r(teacher.value - margin), ">")]
            grades.append(_grade(teacher.value - baseline.value, margin, TEACHER_WEAK_MARGIN_FULL))
            sentences.append(f"The teacher ({teacher.value:.1%} on the {teacher.dataset} set) is not "
                             f"clearly more accurate than the baseline ({baseline.value:.1%}).")
    elif student is not None:
        # Without a baseline, a KD student that matches its teacher (success) looks like a weak
        # teacher; only a student clearly better than its teacher says the teacher is weak.
        context.not_checked("no baseline student: a teacher no better than the student trained alone "
                            "cannot be told from a student that learned it well; only a student clearly "
                            "better than its teacher is flagged")
        margin = min(TEACHER_WEAK_MARGIN, TEACHER_WEAK_ERROR_SHARE * (1 - teacher.value))
        if student.value > teacher.value + margin:
            evidence += [teacher.evidence(_r(student.value - margin), "<"),
                         student.evidence(_r(teacher.value + margin), ">")]
            grades.append(_grade(teacher.value - student.value, -margin, TEACHER_WEAK_MARGIN_FULL))
            sentences.append(f"The teacher ({teacher.value:.1%} on the {teacher.dataset} set) is less "
                             f"accurate than its own student ({student.value:.1%}).")
    normalized = context.normalized(teacher.value)
    if normalized < NEAR_CHANCE_NORMALIZED_ACCURACY:
        evidence.append(teacher.evidence(_r(context.accuracy_at(NEAR_CHANCE_NORMALIZED_ACCURACY)), "<"))
        grades.append(_grade(normalized, NEAR_CHANCE_NORMALIZED_ACCURACY,
                             NEAR_CHANCE_NORMALIZED_ACCURACY_FULL))
        sentences.append(f"The teacher is right on only {teacher.value:.1%} of the {teacher.dataset} "
                         f"set, near chance ({context.chance:.1%} for {context.n_classes} classes).")
    if not evidence:
        return None
    smoothing = _maybe(m, "universe", "equivalent_smoothing", _TRANSFER_FIRST)
    matched = "" if smoothing is None else (
        f" of strength ε ≈ {smoothing.value:.2f}, what this teacher's targets amount to at "
        f"τ = {context.temperature:g} (universe.equivalent_smoothing)")
    return Finding(
        id=TEACHER_WEAK,
        levels=("outcome",),
        severity=_severity(max(grades)),
        title="The teacher is too weak to teach this student",
        evidence=tuple(evidence),
        explanation=" ".join(sentences) + (
            " Its soft targets then hold little domain or instance knowledge the student lacks; "
            "what KD still gives is the label-smoothing effect of level 1 (Yuan et al. 2020)."),
        advice=(f"Use a teacher clearly more accurate than the student trained alone. Without one, "
                f"train the student with plain label smoothing{matched}: it gives the same level-1 "
                "benefit without a teacher."),
    )


def teacher_label_smoothed(m: Measurements, context: RuleContext) -> Finding | None:
    """An accurate teacher whose wrong-class logits and probabilities are flat free of τ."""
    spread = _need(m, context, "domain", "teacher_nontarget_logit_spread")
    content = _need(m, context, "domain", "teacher_dark_knowledge_content", (spread.dataset,))
    accuracy = _need(m, context, "outcome", "teacher_accuracy", _EVAL_FIRST)
    if spread.value >= LS_SPREAD_MAX or content.value >= LS_CONTENT_MAX:
        return None
    if context.normalized(accuracy.value) < LS_TEACHER_MIN_NORMALIZED_ACCURACY:
        return None  # flat because it knows little: teacher-weak's case, not label smoothing
    temperature = context.temperature
    if temperature > 1:
        advice = (f"Distil from a teacher trained without label smoothing, or distil this one at "
                  f"τ = 1 instead of τ = {temperature:g}: an LS teacher's targets lose more of what "
                  "structure is left as τ rises (Chandrasegaran et al. 2022).")
    else:
        advice = ("τ ≤ 1 is already the best setting for a label-smoothed teacher "
                  "(Chandrasegaran et al. 2022); for class relationships, distil from a teacher "
                  "trained without label smoothing.")
    return Finding(
        id=TEACHER_LABEL_SMOOTHED,
        levels=("domain",),
        severity=_severity(
            (_grade(content.value, LS_CONTENT_MAX, LS_CONTENT_FULL)
             + _grade(spread.value, LS_SPREAD_MAX, LS_SPREAD_FULL)) / 2,
            (_grade(temperature, 1.0, LS_TEMPERATURE_FULL),)),
        title="The teacher looks label-smoothed: its class relationships are erased",
        evidence=(content.evidence(LS_CONTENT_MAX, "<"), spread.evidence(LS_SPREAD_MAX, "<"),
                  accuracy.evidence(_r(context.accuracy_at(LS_TEACHER_MIN_NORMALIZED_ACCURACY)), ">=")),
        explanation=(
            f"The teacher is accurate ({accuracy.value:.1%}), yet its wrong-class logits are nearly "
            f"equal (spread {spread.value:.2f}) and its wrong-class probabilities nearly flat even at "
            f"τ = 1 (content {content.value:.2f}), as label smoothing makes them (Müller et al. 2019). "
            "The class relationships (domain knowledge, level 2) were erased in the teacher, so the "
            "student can get smoothing (level 1) but no class structure from it."),
        advice=advice,
    )


def teacher_overconfident(m: Measurements, context: RuleContext) -> Finding | None:
    """Near one-hot targets on the transfer set that come from the teacher, not from a τ below 1."""
    sharp = _sharpness(m, context)
    if sharp is None or not sharp.teacher_at_fault:
        return None  # not sharp, or only a τ < 1 made it so: temperature-mismatch's case
    dataset = sharp.saturation.dataset
    gap = _maybe(m, "universe", "softness_gap", (TRANSFER,)) if dataset == TRANSFER else None
    memorized = gap is not None and gap.value >= SOFTNESS_GAP_MIN
    flat = _maybe(m, "instance", "untrained_rescaling_weight_cv", (dataset,))
    whatif = _maybe(m, "universe", "temperature_whatif", (dataset,))
    if dataset != TRANSFER:
        context.not_checked("no transfer set: memorization (transfer vs eval softness) not checked")
    band = _informative_range(whatif)
    temperature = context.temperature
    higher_helps = band is not None and band[1] > temperature

    evidence = list(sharp.evidence)
    shown = {e.metric for e in evidence}
    mass = "" if sharp.smoothing is None else f", mean wrong-class mass {sharp.smoothing.value:.3f}"
    how = "nearly one-hot" if sharp.one_hot else "almost equally confident on every example"
    sentences = [
        f"At τ = {temperature:g} the teacher's targets on the {dataset} set are {how} "
        f"({sharp.saturation.value:.0%} of examples with p_y > 0.99{mass}): the student gets little "
        "smoothing (level 1), little wrong-class mass to learn class relations from (level 2), and "
        "nearly the same gradient weight on every example (level 3)."]
    support = [0.0, 0.0, 0.0]
    if memorized and gap.metric in shown:
        sentences.append(f"On held-out data the same teacher is softer by {gap.value:.3f} of ε_eff: it "
                         "memorized the transfer set, so its confidence there says nothing about "
                         "difficulty.")
    elif memorized:
        evidence.append(gap.evidence(SOFTNESS_GAP_MIN, ">="))
        support[0] = _grade(gap.value, SOFTNESS_GAP_MIN, SOFTNESS_GAP_FULL)
        sentences.append(f"On held-out data the same teacher is softer by {gap.value:.3f} of ε_eff: it "
                         "memorized the transfer set, so its confidence there says nothing about "
                         "difficulty.")
    if sharp.fitted is not None:
        evidence.append(sharp.fitted.evidence(FITTED_TEMPERATURE_MIN, ">="))
        support[1] = _grade(sharp.fitted.value, FITTED_TEMPERATURE_MIN, FITTED_TEMPERATURE_FULL)
        sentences.append(f"It is over-confident on held-out data too (T* = {sharp.fitted.value:.2f}).")
    if flat is not None and flat.value <= FLAT_RESCALING_CV_MAX:
        if flat.metric not in shown:
            evidence.append(flat.evidence(FLAT_RESCALING_CV_MAX, "<="))
            support[2] = _grade(flat.value, FLAT_RESCALING_CV_MAX, FLAT_RESCALING_CV_FULL)
        sentences.append(f"Its rescaling weights barely vary (CV {flat.value:.3f}): it treats easy and "
                         "hard examples alike.")
    if band is not None and not higher_helps:
        sentences.append(f"No τ above {temperature:g} makes its targets informative.")
        evidence.append(Evidence(_WHATIF_RANGE, band[1], temperature, dataset, "<="))
    elif whatif is not None and band is None:
        grid = max(whatif.value.get("temperatures", [temperature]))
        sentences.append(f"No τ on the grid (up to {grid:g}) makes its targets informative.")

    advice = []
    if higher_helps:
        nearest = _nearest_informative(whatif, band, temperature)
        caveat = ", but does not undo the memorization" if memorized else ""
        advice.append(f"Raising τ to about {nearest:g} (informative range {band[0]:g}–{band[1]:g} on "
                      f"this set) softens the targets{caveat}.")
    if sharp.fitted is not None:
        advice.append(f"Dividing the teacher's logits by T* = {sharp.fitted.value:.2f} (calibrating it) "
                      f"is the same as distilling at τ ≈ {temperature * sharp.fitted.value:.3g}.")
    advice.append("Use an early-stopped or less over-fit teacher (Cho & Hariharan 2019), stronger "
                  "augmentation with the same views for teacher and student, or cross-fitted teacher "
                  "predictions (each transfer example scored by a teacher that did not train on it).")
    return Finding(
        id=TEACHER_OVERCONFIDENT,
        levels=("universe", "instance"),
        severity=_severity(sharp.grade, tuple(support)),
        title="The teacher is over-confident on the transfer set",
        evidence=tuple(evidence),
        explanation=" ".join(sentences),
        advice=" ".join(advice) + _guessed_temperature(context),
    )


def temperature_mismatch(m: Measurements, context: RuleContext) -> Finding | None:
    """τ lies outside the range where this teacher's targets are informative."""
    whatif = _need(m, context, "universe", "temperature_whatif")
    band = _informative_range(whatif)
    if band is None:
        return None  # no τ gives informative targets: the teacher is at fault, not τ
    dataset = whatif.dataset
    smoothing = _need(m, context, "universe", "effective_smoothing", (dataset,))
    saturation = _maybe(m, "universe", "saturation_share", (dataset,))
    temperature, (lo, hi) = context.temperature, band
    uniform = (context.n_classes - 1) / context.n_classes
    soft_limit = INFORMATIVE_SOFT_FRACTION * uniform

    if smoothing.value > soft_limit and lo < temperature:
        direction = "high"
        evidence = [smoothing.evidence(_r(soft_limit), ">"),
                    Evidence(_WHATIF_RANGE, hi if hi < temperature else lo, temperature, dataset, "<")]
        primary = _grade(smoothing.value, soft_limit, SOFT_FULL_FRACTION * uniform)
        flat_at = _maybe(m, "domain", "dark_knowledge_content_at_temperature", (dataset,))
        at_one = _maybe(m, "domain", "teacher_dark_knowledge_content", (dataset,))
        flattened = (flat_at is not None and at_one is not None
                     and flat_at.value <= FLAT_CONTENT_AT_TEMPERATURE_MAX and at_one.value >= LS_CONTENT_MAX)
        support = 0.0
        detail = ""
        if flattened:
            evidence += [flat_at.evidence(FLAT_CONTENT_AT_TEMPERATURE_MAX, "<="),
                         at_one.evidence(LS_CONTENT_MAX, ">=")]
            support = _grade(flat_at.value, FLAT_CONTENT_AT_TEMPERATURE_MAX, FLAT_CONTENT_AT_TEMPERATURE_FULL)
            detail = (f", and its wrong-class mass is flat there (content {flat_at.value:.3f}) although "
                      f"at τ = 1 it is structured ({at_one.value:.2f})")
        explanation = (
            f"At τ = {temperature:g} the teacher's targets on the {dataset} set are close to uniform "
            f"(mean wrong-class mass {smoothing.value:.2f}; uniform is {uniform:.2f}){detail}. The "
            "temperature, not the teacher, erases the class relations (level 2) and the per-example "
            "confidence (level 3), leaving little beyond label smoothing (level 1).")
    elif (sharp := _sharpness(m, context)) is not None and not sharp.teacher_at_fault and hi > temperature:
        direction = "low"
        evidence = [*sharp.evidence,
                    Evidence(_WHATIF_RANGE, lo if lo > temperature else hi, temperature, dataset, ">")]
        primary = sharp.grade
        flat = _maybe(m, "instance", "untrained_rescaling_weight_cv", (dataset,))
        support = 0.0
        if flat is not None and flat.value <= FLAT_RESCALING_CV_MAX:
            evidence.append(flat.evidence(FLAT_RESCALING_CV_MAX, "<="))
            support = _grade(flat.value, FLAT_RESCALING_CV_MAX, FLAT_RESCALING_CV_FULL)
        saturated = "" if saturation is None else f"{saturation.value:.0%} saturated, "
        explanation = (
            f"At τ = {temperature:g} the teacher's targets on the {dataset} set are nearly one-hot "
            f"({saturated}mean wrong-class mass {smoothing.value:.3f}): the student sees little beyond "
            "the hard label — no smoothing, no class relations, flat gradient weights. At τ = 1 the "
            "same teacher's targets are not saturated and it is not over-confident on held-out data: "
            "the τ below 1 sharpened them, so the setting is at fault, not the teacher.")
    else:
        return None

    nearest = _nearest_informative(whatif, band, temperature)
    return Finding(
        id=TEMPERATURE_MISMATCH,
        levels=("universe", "instance"),
        severity=_severity(primary, (support,)),
        title=f"The distillation temperature τ = {temperature:g} is too {direction} for this teacher",
        evidence=tuple(evidence),
        explanation=explanation,
        advice=(f"Distil at τ between {lo:g} and {hi:g}, where this teacher's {dataset}-set targets are "
                f"informative ({INFORMATIVE_SMOOTHING_MIN:g} ≤ mean wrong-class mass ≤ {soft_limit:.2f}, "
                f"at most {INFORMATIVE_SATURATION_MAX:.0%} saturated); on the τ grid, {nearest:g} is the "
                f"closest to the current τ = {temperature:g}." + _guessed_temperature(context)),
    )


def teacher_wrong_on_transfer(m: Measurements, context: RuleContext) -> Finding | None:
    """The teacher's top class contradicts the label on many transfer examples."""
    error = _need(m, context, "instance", "teacher_error_rate", (TRANSFER,))
    if error.value < TEACHER_TRANSFER_ERROR_MAX:
        return None
    held_out = _maybe(m, "outcome", "teacher_accuracy", (EVAL,))
    if held_out is None:
        context.not_checked("no eval set: the teacher's transfer-set errors were not compared with "
                            "its held-out errors")
    evidence = [error.evidence(TEACHER_TRANSFER_ERROR_MAX, ">=")]
    excess = None if held_out is None else error.value - (1 - held_out.value)
    labels_suspect = excess is not None and excess >= TRANSFER_ERROR_EXCESS_MIN
    sentences = [
        f"The teacher's top class differs from the label on {error.value:.1%} of the transfer set. "
        f"With α = {context.alpha:g} those examples pull the student toward the teacher's class and "
        "away from the label, and their rescaling weights (level 3) reflect the disagreement rather "
        "than the example's difficulty."]
    support = 0.0
    if labels_suspect:
        evidence.append(held_out.evidence(_r(1 - error.value + TRANSFER_ERROR_EXCESS_MIN), ">="))
        support = _grade(excess, TRANSFER_ERROR_EXCESS_MIN, TRANSFER_ERROR_EXCESS_FULL)
        sentences.append(f"The same teacher is right on {held_out.value:.1%} of held-out data, more "
                         "than on the data it was distilled on: noisy transfer labels or a pipeline "
                         "mismatch are the likely cause.")
        advice = ("Check the data pipeline first: the transfer set's labels and preprocessing "
                  "against the teacher's (label map, normalization, augmentation); then filter or "
                  "relabel the examples the teacher contradicts most confidently (the report's "
                  "hardest examples). Where the teacher, not the label, is wrong, lower α "
                  f"(now {context.alpha:g}) so the labels weigh more.")
    else:
        advice = (f"Lower α (now {context.alpha:g}) so the labels weigh more where the teacher errs; "
                  "filter or relabel the examples where teacher and label disagree with high teacher "
                  "confidence (the report's hardest examples); and check the data pipeline (label "
                  "map, preprocessing) for a mismatch between the teacher and the transfer set.")
    return Finding(
        id=TEACHER_WRONG_ON_TRANSFER,
        levels=("instance",),
        severity=_severity(_grade(error.value, TEACHER_TRANSFER_ERROR_MAX, TEACHER_TRANSFER_ERROR_FULL),
                           (support,)),
        title="The teacher contradicts the labels on many transfer examples",
        evidence=tuple(evidence),
        explanation=" ".join(sentences),
        advice=advice,
    )


def capacity_gap(m: Measurements, context: RuleContext) -> Finding | None:
    """A clearly better teacher whose student does not follow it on the transfer set."""
    # Where the teacher contradicts the label, a student that follows the label is right to disagree:
    # only agreement on the examples the teacher gets right measures whether the student can follow.
    agreement = (_maybe(m, "outcome", "agreement_where_teacher_correct", _TRANSFER_FIRST)
                 or _need(m, context, "outcome", "agreement"))
    teacher = _need(m, context, "outcome", "teacher_accuracy", _EVAL_FIRST)
    student = _need(m, context, "outcome", "student_accuracy", (teacher.dataset,))
    gap = teacher.value - student.value
    if agreement.value >= CAPACITY_AGREEMENT_MAX or gap < CAPACITY_ACCURACY_GAP_MIN:
        return None
    kl = _maybe(m, "outcome", "kl_teacher_student_at_temperature", (agreement.dataset,))
    kd_gain = _maybe(m, "outcome", "kd_gain", (teacher.dataset,))
    evidence = [agreement.evidence(CAPACITY_AGREEMENT_MAX, "<"),
                teacher.evidence(_r(student.value + CAPACITY_ACCURACY_GAP_MIN), ">="),
                student.evidence(_r(teacher.value - CAPACITY_ACCURACY_GAP_MIN), "<=")]
    support = [0.0, 0.0]
    extra = ""
    if kl is not None and kl.value >= CAPACITY_KL_MIN:
        evidence.append(kl.evidence(CAPACITY_KL_MIN, ">="))
        support[0] = _grade(kl.value, CAPACITY_KL_MIN, CAPACITY_KL_FULL)
        extra += f" Their mean KL at τ = {context.temperature:g} is {kl.value:.3f} nats."
    if kd_gain is not None and kd_gain.value <= KD_GAIN_MIN:
        evidence.append(kd_gain.evidence(KD_GAIN_MIN, "<="))
        support[1] = 1.0
        extra += f" KD did not beat the baseline ({_points(kd_gain.value)})."
    primary = (_grade(agreement.value, CAPACITY_AGREEMENT_MAX, CAPACITY_AGREEMENT_FULL)
               + _grade(gap, CAPACITY_ACCURACY_GAP_MIN, CAPACITY_ACCURACY_GAP_FULL)) / 2
    return Finding(
        id=CAPACITY_GAP,
        levels=("outcome", "domain"),
        severity=_severity(primary, tuple(support)),
        title="The student cannot follow the teacher (capacity gap)",
        evidence=tuple(evidence),
        explanation=(
            f"The student agrees with the teacher's top class on only {agreement.value:.1%} of the "
            f"{agreement.dataset} set{' where the teacher is right' if 'correct' in agreement.metric else ''}, although the teacher is {100 * gap:.1f} points more accurate "
            f"({teacher.value:.1%} vs {student.value:.1%}).{extra} A student that cannot follow the "
            "teacher even on the data it was distilled on takes in neither its class structure "
            "(level 2) nor its function: the gap is too large (Cho & Hariharan 2019; Mirzadeh et al. 2020)."),
        advice=("Distil from a smaller teacher, or through an intermediate-size teacher assistant "
                "(Mirzadeh et al. 2020); an early-stopped checkpoint of this teacher is easier to follow "
                "(Cho & Hariharan 2019). Distil longer if the student's agreement is still rising."),
    )


def structure_not_transferred(m: Measurements, context: RuleContext) -> Finding | None:
    """The teacher has class structure, but the student matches it no better than the baseline."""
    content = _need(m, context, "domain", "teacher_dark_knowledge_content")
    if content.value < LS_CONTENT_MAX:
        return None  # nothing to transfer: teacher-label-smoothed or teacher-weak speak to it
    checks, missing = [], []  # (student's score, baseline's score or None, threshold)
    for name, datasets in (("output_similarity_transfer_score", _TRANSFER_FIRST),
                           ("weight_similarity_transfer_score", (WEIGHTS,))):
        score, why = _read(m, "domain", name, datasets)
        if score is None:
            missing.append(why)
            continue
        baseline = _maybe(m, "domain", f"baseline_{name}", (score.dataset,))
        if baseline is None:
            context.not_checked(f"no baseline student: the class-similarity transfer score was compared "
                                f"with an absolute threshold ({STRUCTURE_SCORE_MIN:g}), not with a "
                                "student trained without KD")
        threshold = STRUCTURE_SCORE_MIN if baseline is None else _r(baseline.value + STRUCTURE_GAIN_MIN)
        checks.append((score, baseline, threshold))
    if not checks:
        raise NotChecked("; ".join(missing))
    for why in missing:
        context.not_checked(f"{why}: checked with the other similarity only")
    if any(score.value >= threshold for score, _, threshold in checks):
        return None  # the structure reached the student's outputs or its logit layer

    evidence, grades, described = [], [], []
    for score, baseline, threshold in checks:
        kind = "output" if score.metric.startswith("domain.output") else "logit-layer weight"
        evidence.append(score.evidence(threshold, "<"))
        if baseline is None:
            grades.append(_grade(score.value, STRUCTURE_SCORE_MIN, STRUCTURE_SCORE_FULL))
            described.append(f"{kind} similarity Spearman {score.value:.2f}")
        else:
            evidence.append(baseline.evidence(_r(score.value - STRUCTURE_GAIN_MIN), ">"))
            grades.append(_grade(score.value - baseline.value, STRUCTURE_GAIN_MIN, STRUCTURE_GAIN_FULL))
            described.append(f"{kind} similarity Spearman {score.value:.2f}, baseline {baseline.value:.2f}")
    band = _informative_range(_maybe(m, "universe", "temperature_whatif", _TRANSFER_FIRST))
    higher_tau = ("a higher τ" if band is None
                  else f"a τ toward the top of the informative range {band[0]:g}–{band[1]:g}")
    compared = ("does not match it better than a student trained without KD does"
                if all(baseline is not None for _, baseline, _ in checks) else "matches it poorly")
    return Finding(
        id=STRUCTURE_NOT_TRANSFERRED,
        levels=("domain",),
        severity=_severity(sum(grades) / len(grades)),
        title="The teacher's class structure did not reach the student",
        evidence=(*evidence, content.evidence(LS_CONTENT_MAX, ">=")),
        explanation=(
            f"The teacher's wrong-class mass is structured (content {content.value:.2f} at τ = 1), but "
            f"the student's class-similarity matrix {compared} ({'; '.join(described)}). The class "
            "relationships (domain knowledge, level 2) were there to learn but did not reach the student."),
        advice=(f"Give the soft targets more weight or more time: a higher α (now {context.alpha:g}), "
                f"{higher_tau}, or longer distillation."),
    )


#: The rules in tie-breaking order: data bugs, then the teacher, the setting, the student.
RULES: tuple[tuple[str, Rule], ...] = (
    (CLASS_ORDER_MISMATCH, class_order_mismatch),
    (TEACHER_WEAK, teacher_weak),
    (TEACHER_LABEL_SMOOTHED, teacher_label_smoothed),
    (TEACHER_OVERCONFIDENT, teacher_overconfident),
    (TEMPERATURE_MISMATCH, temperature_mismatch),
    (TEACHER_WRONG_ON_TRANSFER, teacher_wrong_on_transfer),
    (CAPACITY_GAP, capacity_gap),
    (STRUCTURE_NOT_TRANSFERRED, structure_not_transferred),
)

#: When the key fires, the rules it names rest on comparisons it shows to be meaningless.
SUPPRESSES: dict[str, tuple[str, ...]] = {
    CLASS_ORDER_MISMATCH: (CAPACITY_GAP, STRUCTURE_NOT_TRANSFERRED),
}

#: The numbers a healthy verdict shows: (section, name, sets in order of preference, threshold).
_HEALTHY_EVIDENCE = (
    ("outcome", "kd_gain", _EVAL_FIRST, KD_GAIN_MIN),
    ("outcome", "agreement", _TRANSFER_FIRST, CAPACITY_AGREEMENT_MAX),
    ("universe", "saturation_share", _TRANSFER_FIRST, OVERCONFIDENT_SATURATION_MIN),
    ("universe", "effective_smoothing", _TRANSFER_FIRST, INFORMATIVE_SMOOTHING_MIN),
    ("domain", "teacher_dark_knowledge_content", _TRANSFER_FIRST, LS_CONTENT_MAX),
    ("domain", "teacher_nontarget_logit_spread", _TRANSFER_FIRST, LS_SPREAD_MAX),
    ("domain", "output_similarity_transfer_score", _TRANSFER_FIRST, STRUCTURE_SCORE_MIN),
    ("instance", "teacher_error_rate", (TRANSFER,), TEACHER_TRANSFER_ERROR_MAX),
)


# ---------------------------------------------------------------- the verdict

def diagnose(measurements: Measurements, *, settings: Settings, n_classes: int) -> Diagnosis:
    """Run every rule and rank what fires; ``healthy`` when nothing does.

    Findings are sorted by severity, ties by the order of ``RULES``. A rule whose inputs are
    missing goes to ``not_checked`` with the reason, as do the parts of a check a rule had to skip
    and the rules suppressed by a finding that makes them unreliable (``SUPPRESSES``). When no rule
    could run at all there is no verdict: no findings, everything in ``not_checked``.

    Example: ``diagnose(measure(outputs, settings=s), settings=s, n_classes=10).findings[0].id``.
    """
    _validate(measurements, settings, n_classes)
    findings, not_checked, ran = [], [], 0
    for rule_id, rule in RULES:
        context = RuleContext(settings, int(n_classes))
        try:
            finding = rule(measurements, context)
        except NotChecked as missing:
            not_checked.append((rule_id, str(missing)))
            continue
        ran += 1
        not_checked += [(rule_id, reason) for reason in context.skipped]
        if finding is not None:
            findings.append(finding)
    fired = {finding.id for finding in findings}
    for suppressor, suppressed in SUPPRESSES.items():
        if suppressor in fired:
            findings = [f for f in findings if f.id not in suppressed]
            not_checked += [(rule_id, f"{suppressor} fired: teacher and student classes do not line "
                                      "up, so this comparison is meaningless") for rule_id in suppressed]
    order = {rule_id: i for i, (rule_id, _) in enumerate(RULES)}
    findings.sort(key=lambda f: (-f.severity, order[f.id]))
    if not findings and ran:
        findings = [_healthy(measurements, ran, len(RULES) - ran)]
    return Diagnosis(findings=tuple(findings), not_checked=tuple(not_checked))


def _healthy(m: Measurements, ran: int, not_run: int) -> Finding:
    evidence = []
    for section, name, datasets, threshold in _HEALTHY_EVIDENCE:
        reading = _maybe(m, section, name, datasets)
        if reading is not None:
            evidence.append(reading.evidence(threshold, ">=" if reading.value >= threshold else "<"))
    skipped = f"; {not_run} could not run (see not checked)" if not_run else ""
    gain = _maybe(m, "outcome", "kd_gain", _EVAL_FIRST)
    if gain is not None and gain.value <= KD_GAIN_MIN:
        verdict = (f" Yet KD does not beat the baseline ({_points(gain.value)}) and no known failure "
                   "case explains it.")
        advice = ("Check that the baseline was trained as long and as well as the KD student, and try "
                  "other α and τ (within the informative range).")
    else:
        verdict = "" if gain is None else f" KD lifts the student {_points(gain.value)} over the baseline."
        advice = "Nothing to fix."
    return Finding(
        id=HEALTHY,
        levels=(),
        severity=0.0,
        title="No failure case found",
        evidence=tuple(evidence),
        explanation=(f"None of the {ran} rules that could run found a failure case{skipped}; the "
                     f"evidence lists the main numbers they checked.{verdict}"),
        advice=advice,
    )


def _validate(measurements: Measurements, settings: Settings, n_classes: int) -> None:
    if not isinstance(settings, Settings):
        raise KddiagError(f"settings must be a kddiag.types.Settings; got {type(settings).__name__}")
    if isinstance(n_classes, bool) or not isinstance(n_classes, numbers.Integral) or n_classes < 2:
        raise KddiagError(f"n_classes must be an integer of at least 2; got {n_classes!r}")
    temperature, alpha = settings.temperature.value, settings.alpha.value
    if not (isinstance(temperature, numbers.Real) and math.isfinite(temperature) and temperature > 0):
        raise KddiagError(f"settings.temperature must be a positive number; got {temperature!r}")
    if not (isinstance(alpha, numbers.Real) and 0 <= alpha <= 1):
        raise KddiagError(f"settings.alpha must be a number in [0, 1]; got {alpha!r}")
