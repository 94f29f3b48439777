"""The verdict: run every rule, word what fired, rank it; judge the outcome whether a cause fires or not.

``RULES`` lists each rule once, with its stable id, its levels, its decision and its wording; their
order breaks severity ties (data bugs, then the teacher, the setting, the student).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

from kddiag.diagnosis import ids
from kddiag.diagnosis import rules as r
from kddiag.diagnosis import wording as w
from kddiag.diagnosis.reading import (TRANSFER_FIRST, Context, Fired, NotChecked, beats_baseline, evidence, first,
                                      grade, kd_gain, severity)
from kddiag.diagnosis.thresholds import (CAPACITY_AGREEMENT_MAX, KD_GAIN_MIN, KD_LOSS_FULL, LS_CONTENT_MAX,
                                         LS_SPREAD_MAX,
                                         OVERCONFIDENT_SATURATION_MIN, OVERCONFIDENT_SMOOTHING_MAX,
                                         STRUCTURE_SCORE_MIN, TEACHER_TRANSFER_ERROR_MAX)
from kddiag.results import TRANSFER, Measured, Measurements
from kddiag.diagnosis.findings import Diagnosis, Evidence, Finding
from kddiag.inputs import InputInfo
from kddiag.options import Settings
from kddiag.types import DOMAIN, INSTANCE, OUTCOME, UNIVERSE


@dataclass(frozen=True)
class Rule:
    id: str
    levels: tuple[str, ...]
    decide: Callable
    word: Callable
    needs_student: bool = False  # compares teacher and student: skipped in a teacher-only check


RULES: tuple[Rule, ...] = (
    Rule(ids.DATA_PIPELINE_SUSPECT, (OUTCOME,), r.data_pipeline_suspect, w.word_data_pipeline),
    Rule(ids.CLASS_ORDER_MISMATCH, (OUTCOME,), r.class_order_mismatch, w.word_class_order, needs_student=True),
    Rule(ids.TEACHER_WEAK, (OUTCOME,), r.teacher_weak, w.word_teacher_weak),
    Rule(ids.TEACHER_LABEL_SMOOTHED, (DOMAIN,), r.teacher_label_smoothed, w.word_label_smoothed),
    Rule(ids.TEACHER_OVERCONFIDENT, (UNIVERSE, INSTANCE), r.teacher_overconfident, w.word_overconfident),
    Rule(ids.TEMPERATURE_MISMATCH, (UNIVERSE, INSTANCE), r.temperature_mismatch, w.word_temperature),
    Rule(ids.TEACHER_WRONG_ON_TRANSFER, (INSTANCE,), r.teacher_wrong_on_transfer, w.word_wrong_on_transfer),
    Rule(ids.STUDENT_UNDERFIT, (OUTCOME,), r.student_underfit, w.word_student_underfit, needs_student=True),
    Rule(ids.CAPACITY_GAP, (OUTCOME, DOMAIN), r.capacity_gap, w.word_capacity_gap, needs_student=True),
    Rule(ids.STRUCTURE_NOT_TRANSFERRED, (DOMAIN,), r.structure_not_transferred, w.word_structure,
         needs_student=True),
)
NEEDS_STUDENT = "needs a student: this is a teacher-only check"

#: Findings about the inputs come before those about the models, whatever their severity: every model-level
#: reading is taken on those inputs.
RANKED_FIRST = frozenset({ids.DATA_PIPELINE_SUSPECT})

#: When the key fires, the rules it names rest on comparisons it shows to be meaningless.
SUPPRESSES: dict[str, tuple[str, ...]] = {
    ids.CLASS_ORDER_MISMATCH: (ids.CAPACITY_GAP, ids.STRUCTURE_NOT_TRANSFERRED),
}

#: Under a 'kd-helped' verdict (KD beat its baseline beyond the noise) what the rules still see is room to
#: improve, not a problem: each finding keeps its rank at this share of its severity, so none reads 'high'
#: (≥ 0.7). A choice of presentation, not a cut-off calibrated on the case studies.
ROOM_TO_IMPROVE_SEVERITY = 0.5


def diagnose(measurements: Measurements, *, settings: Settings, n_classes: int,
             teacher_only: bool = False, inputs: tuple[InputInfo, ...] = ()) -> Diagnosis:
    """Run every rule, rank what fires, and judge the outcome first.

    Findings are sorted by severity (``RANKED_FIRST`` before the rest), ties by the order of ``RULES``;
    each states the measured KD gain. The verdict is 'problems', or 'kd-helped' when the KD student beat
    its baseline beyond the noise (the gain's 95 % interval above 0): then the findings are room to improve,
    at ``ROOM_TO_IMPROVE_SEVERITY`` of their severity.
    A rule whose inputs are missing goes to ``not_checked`` with the reason, as do the parts of a check
    a rule had to skip and the rules suppressed by a finding that makes them unreliable (``SUPPRESSES``).
    When no cause fires: ``kd-no-gain`` if the KD student is no better than its baseline, else
    ``healthy`` (verdict 'healthy' with a baseline, 'gain-not-checked' without). When no rule could
    run at all there is no verdict: no findings, everything in ``not_checked``.

    ``teacher_only`` (no student was given): the rules comparing teacher and student are not checked,
    and when nothing fires the verdict is 'teacher-ready', with the τ range the what-if found informative.
    """
    context = Context(settings, int(n_classes), teacher_only, tuple(inputs))
    findings, not_checked, ran = [], [], []
    for rule in RULES:
        if teacher_only and rule.needs_student:
            not_checked.append((rule.id, NEEDS_STUDENT))
            continue
        decision = rule.decide(measurements, context)
        if isinstance(decision, NotChecked):
            not_checked.append((rule.id, decision.reason))
            continue
        ran.append(rule.id)
        not_checked += [(rule.id, note) for note in decision.notes]
        if isinstance(decision, Fired):
            words = rule.word(decision.facts, context)
            findings.append(Finding(rule.id, rule.levels, decision.severity, words.title, decision.evidence,
                                    words.explanation, words.advice, words.remedy))
    fired = {finding.id for finding in findings}
    for suppressor, suppressed in SUPPRESSES.items():
        if suppressor in fired:
            findings = [f for f in findings if f.id not in suppressed]
            not_checked += [(rule_id, f"{suppressor} fired: teacher and student classes do not line up, so "
                                      "this comparison is meaningless") for rule_id in suppressed]
    order = {rule.id: i for i, rule in enumerate(RULES)}
    findings.sort(key=lambda f: (f.id not in RANKED_FIRST, -f.severity, order[f.id]))
    gain = kd_gain(measurements)
    if findings:
        outcome = w.gain_sentence(gain)
        findings = [replace(f, explanation=f"{f.explanation} {outcome}") if outcome else f for f in findings]
        if beats_baseline(gain):
            notes = (replace(f, severity=f.severity * ROOM_TO_IMPROVE_SEVERITY) for f in findings)
            return Diagnosis(tuple(notes), tuple(not_checked), ids.KD_HELPED)
        return Diagnosis(tuple(findings), tuple(not_checked), ids.PROBLEMS)
    if not ran:
        return Diagnosis((), tuple(not_checked), ids.NO_VERDICT)
    normal = _checked_numbers(measurements)
    if teacher_only:
        whatif = measurements.universe.temperature_whatif
        band = whatif.value.informative_range if whatif.ok else None
        words = w.word_teacher_ready(len(ran), len(RULES) - len(ran), band, context)
        ready = Finding(ids.HEALTHY, (), 0.0, words.title, normal, words.explanation, words.advice)
        return Diagnosis((ready,), tuple(not_checked), ids.TEACHER_READY)
    if gain.ok and gain.value <= KD_GAIN_MIN:
        return Diagnosis((_kd_no_gain(gain, normal, ran, context, measurements),), tuple(not_checked), ids.PROBLEMS)
    verdict = ids.HEALTHY if gain.ok else ids.GAIN_NOT_CHECKED
    return Diagnosis((_healthy(gain, normal, len(ran), len(RULES) - len(ran)),), tuple(not_checked), verdict)


def vocabulary_mismatch(comparison) -> Diagnosis:
    """The diagnosis when teacher and student tokenizers differ (:mod:`kddiag.vocabulary`): one level-0
    finding, found before any forward pass; every other rule is not checked."""
    words = w.word_vocabulary_mismatch(comparison)
    evidence_ = [Evidence("inputs.vocabulary_differing_ids", float(comparison.n_differing), 0.0, "inputs", ">")]
    if comparison.teacher_size != comparison.student_size:
        evidence_.append(Evidence("inputs.student_vocabulary_size", float(comparison.student_size),
                                  float(comparison.teacher_size), "inputs", "!="))
    finding = Finding(ids.VOCABULARY_MISMATCH, (OUTCOME,), severity(1.0), words.title, tuple(evidence_),
                      words.explanation, words.advice)
    reason = f"{ids.VOCABULARY_MISMATCH}: teacher and student vocabularies differ, nothing was measured"
    return Diagnosis((finding,), tuple((rule.id, reason) for rule in RULES), ids.PROBLEMS)


def _checked_numbers(m: Measurements) -> tuple[Evidence, ...]:
    """The main numbers the rules checked, each against the cut-off it was read against."""
    shown = (
        (kd_gain(m), KD_GAIN_MIN),
        (first(m.outcome, lambda o: o.agreement, TRANSFER_FIRST), CAPACITY_AGREEMENT_MAX),
        (first(m.universe, lambda u: u.saturation_share, TRANSFER_FIRST), OVERCONFIDENT_SATURATION_MIN),
        (first(m.universe, lambda u: u.effective_smoothing, TRANSFER_FIRST), OVERCONFIDENT_SMOOTHING_MAX),
        (first(m.domain, lambda d: d.teacher.dark_knowledge_content, TRANSFER_FIRST), LS_CONTENT_MAX),
        (first(m.domain, lambda d: d.teacher.nontarget_logit_spread, TRANSFER_FIRST), LS_SPREAD_MAX),
        (first(m.domain, lambda d: d.output_similarity_transfer_score, TRANSFER_FIRST), STRUCTURE_SCORE_MIN),
        (first(m.instance, lambda i: i.teacher_error_rate, (TRANSFER,)), TEACHER_TRANSFER_ERROR_MAX),
    )
    return tuple(evidence(value, threshold, ">=" if value.value >= threshold else "<")
                 for value, threshold in shown if value.ok)


def _kd_no_gain(gain: Measured, normal: tuple[Evidence, ...], ran: list[str], context: Context,
                m: Measurements) -> Finding:
    """KD did not beat the baseline and no cause rule explains it: the loss itself is the finding."""
    significant = gain.ci is not None and gain.ci[1] < 0
    grade_ = grade(-gain.value, -KD_GAIN_MIN, KD_LOSS_FULL)
    whatif = m.universe.temperature_whatif
    band = whatif.value.informative_range if whatif.ok else None
    words = w.word_kd_no_gain(gain, significant, normal, ran, band, context)
    return Finding(ids.KD_NO_GAIN, (OUTCOME,), severity(grade_, (1.0 if significant else 0.0,)), words.title,
                   (evidence(gain, KD_GAIN_MIN, "<="),), words.explanation, words.advice)


def _healthy(gain: Measured, normal: tuple[Evidence, ...], ran: int, not_run: int) -> Finding:
    words = w.word_healthy(gain, ran, not_run)
    return Finding(id=ids.HEALTHY, levels=(), severity=0.0, title=words.title, evidence=normal,
                   explanation=words.explanation, advice=words.advice)
