"""Advice from evidence: a finding's remedy stands on a probe of the user's own pair, or says it was not tested.

With probes (:mod:`kddiag.probe`) a finding keeps its remedy only when that setting beat the control
beyond noise; the probes' outcome joins the findings (a better setting found, or none of the settings
tried helped: then the limit is the student or the teacher). Without probes each remedy is marked
untested and quotes its rule's track record (:mod:`kddiag.diagnosis.track_record`).
"""
from __future__ import annotations

from dataclasses import replace

from kddiag.diagnosis import ids
from kddiag.diagnosis.reading import grade, severity
from kddiag.diagnosis.thresholds import CAPACITY_ACCURACY_GAP_MIN
from kddiag.diagnosis.track_record import track_record_sentence
from kddiag.probe import PLATEAU_GAIN_MAX, Arm, ProbeResult
from kddiag.diagnosis.findings import Diagnosis, Evidence, Finding, Remedy
from kddiag.options import Settings
from kddiag.types import OUTCOME

FULL_CHANGE = 0.03  # a probe change of 3 points grades a better setting fully


def settle_advice(diagnosis: Diagnosis, probe: ProbeResult | None, settings: Settings, *,
                  teacher_only: bool = False) -> Diagnosis:
    """``diagnosis`` with every remedy settled by the probes (None or not run: marked untested; a teacher-only
    check says a student architecture is needed to test it). A withdrawn remedy's advice opens with what
    its probe measured, so a two-line summary still shows it."""
    if probe is None or not probe.ran:
        why = "" if probe is None else f" (probes: {probe.not_probed})"
        how = ("kddiag inspect TEACHER --student-arch ARCH --probe trains fresh students to test it" if teacher_only
               else "kddiag inspect --probe tests it")
        return replace(diagnosis, findings=tuple(_untested(f, why, how) for f in diagnosis.findings))
    findings = [_probed(f, probe) for f in diagnosis.findings]
    if not probe.still_learning:
        findings = [_capacity_probed(f, probe) if f.id == ids.CAPACITY_GAP else f for f in findings]
    findings.append(_too_short(probe) if probe.still_learning else _better_setting(probe, settings) if probe.helped
                    else _no_setting_helped(probe))
    return replace(diagnosis, findings=tuple(findings))


def advised_remedy(diagnosis: Diagnosis) -> Remedy | None:
    """The one setting change the diagnosis advises, for a program to follow: the probes' best setting
    when they found one, else the first remedy in rank order (tested or not, as it says)."""
    remedies = [f.remedy for f in diagnosis.findings if f.remedy is not None]
    best = [f.remedy for f in diagnosis.findings if f.id == ids.BETTER_SETTING]
    return (best or remedies or [None])[0]


def change_text(arm: Arm) -> str:
    """'+1.2 pt [0.4, 2.0]' (points of accuracy against the control, 95 % interval)."""
    lo, hi = arm.ci
    return f"{100 * arm.change:+.1f} pt [{100 * lo:.1f}, {100 * hi:.1f}]"


def _untested(finding: Finding, why: str, how: str) -> Finding:
    if finding.remedy is None:
        return finding
    record = track_record_sentence(finding.id)
    note = f" This remedy was not tested on this pair ({how}){why}"
    note += f"; {record}." if record else "."
    return replace(finding, advice=finding.advice + note)


def _probed(finding: Finding, probe: ProbeResult) -> Finding:
    remedy = finding.remedy
    if remedy is None:
        return finding
    arm = probe.arm_for(remedy.temperature if remedy.temperature is not None else probe.control.candidate.temperature,
                        remedy.alpha if remedy.alpha is not None else probe.control.candidate.alpha)
    if arm is None or arm.candidate.origin == "control":
        return finding
    if arm.failed:
        return replace(finding, remedy=None,
                       advice=f"Probed on this pair: {arm.candidate.label} could not be trained ({arm.failed}): "
                              f"not advised. {finding.advice}")
    if probe.still_learning:
        return replace(finding, remedy=None,
                       advice=f"Probed on this pair, but too briefly to tell ({arm.candidate.label}: {change_text(arm)} "
                              f"while the control was still learning): not advised. {finding.advice}")
    if arm in probe.helped:
        return replace(finding, remedy=replace(remedy, probe_change=arm.change, probe_ci95=arm.ci),
                       advice=f"{finding.advice} Probed on this pair: {arm.candidate.label} beat the current "
                              f"setting by {change_text(arm)}.")
    outcome = "lost to" if arm.hurt else "did not beat"
    return replace(finding, remedy=None,
                   advice=f"Probed on this pair: {arm.candidate.label} {outcome} the current setting "
                          f"({change_text(arm)}): not advised. {finding.advice}")


def _capacity_probed(finding: Finding, probe: ProbeResult) -> Finding:
    """capacity-gap read against the probes' control: a fresh student of the same size, trained at the same
    settings until it levelled off (or as the student was, when the probes know its training). Clearly more accurate than the user's student (CAPACITY_ACCURACY_GAP_MIN),
    it shows that the size is not the limit, the training is; about as accurate, it confirms the size."""
    student = next((e for e in finding.evidence if e.metric == "outcome.student_accuracy"), None)
    control = probe.control
    if student is None or control is None or control.accuracy is None:
        return finding
    recipe = probe.design.recipe_length  # the probes trained as this student was, not until they levelled off
    how = "as this student was trained" if recipe else "at the same settings until it levelled off"
    reached = (f"A fresh student of this size, trained by the probes {how} ({_design(probe)}), reached "
               f"{control.accuracy:.1%} on {probe.design.n_eval:,} held-out examples against this student's "
               f"{student.value:.1%} on the {student.dataset} set")
    if control.accuracy - student.value < CAPACITY_ACCURACY_GAP_MIN:
        return replace(finding, explanation=f"{finding.explanation} {reached}: its size, not its training, limits it.")
    evidence = Evidence("probe.control_accuracy", float(control.accuracy),
                        round(student.value + CAPACITY_ACCURACY_GAP_MIN, 6), "eval", ">=")
    if recipe:
        title = "The student does not follow its teacher, but other runs of its own training do better"
        advice = ("Retrain the student (another initialization and data order, or several) before choosing a larger "
                  "student or an intermediate teacher: this run fell short of what its training usually gives.")
    else:
        title = "The student does not follow its teacher, but a student of its size trained longer does"
        advice = ("Train the student longer or with a better-tuned schedule (the probes' learning rate was "
                  f"{probe.design.learning_rate:g}) before choosing a larger student or an intermediate teacher.")
    return replace(finding, severity=severity(0.0), evidence=(*finding.evidence, evidence), title=title,
                   explanation=f"{reached}: a student of this size can do better than this one, so the gap to the "
                               f"teacher is not (only) its size. {finding.explanation}", advice=advice)


def _better_setting(probe: ProbeResult, settings: Settings) -> Finding:
    best = probe.helped[0]
    c, design = best.candidate, probe.design
    others = [a.candidate.label for a in probe.helped[1:]]
    tau, alpha = float(settings.temperature.value), float(settings.alpha.value)
    change = [f"τ = {c.temperature:g}"] if c.temperature != tau else []
    change += [f"α = {c.alpha:g}"] if c.alpha != alpha else []
    change += [f"the teacher's logits divided by T* = {c.teacher_scale:.2f}"] if c.teacher_scale != 1 else []
    advice = (f"Retrain with {' and '.join(change)}: on this pair it beat the current setting (τ = {tau:g}, "
              f"α = {alpha:g}) by {change_text(best)} in paired probes ({_design(probe)}).")
    if others:
        advice += f" Also better than the current setting: {', '.join(others)}."
    remedy = Remedy(temperature=c.temperature if c.temperature != tau else None,
                    alpha=c.alpha if c.alpha != alpha else None, probe_change=best.change, probe_ci95=best.ci,
                    teacher_scale=c.teacher_scale if c.teacher_scale != 1 else None)
    evidence = (Evidence("probe.accuracy_change", float(best.change), 0.0, "eval", ">"),)
    title = f"A probe of this pair found a better setting: {c.label} ({change_text(best)})"
    explanation = (f"Each setting trained fresh copies of the student for the same budget ({design.steps} steps, "
                   f"{design.seeds} seed(s)); {c.label} scored higher than the current setting on the same "
                   f"{design.n_eval:,} held-out examples in every seed.")
    return Finding(ids.BETTER_SETTING, (OUTCOME,), severity(grade(best.change, 0.0, FULL_CHANGE)), title, evidence,
                   explanation, advice, remedy)


def _no_setting_helped(probe: ProbeResult) -> Finding:
    tried = [a for a in probe.candidates if not a.failed]
    listed = "; ".join(f"{a.candidate.label} {change_text(a)}" for a in tried)
    hurt = sum(a.hurt for a in tried)
    failed = [a for a in probe.candidates if a.failed]
    listed += "".join(f"; {a.candidate.label} could not be trained ({a.failed})" for a in failed)
    title = f"None of the {len(tried)} settings probed beat the current one"
    explanation = (f"Paired probes of this pair ({_design(probe)}): {listed}."
                   + (f" {hurt} of them did worse." if hurt else ""))
    advice = ("Changing τ or α is not what will help this student: the limit is the student (its capacity, its "
              "training length) or the teacher. Try training longer, a larger student or an intermediate teacher, "
              "or a teacher better than the baseline.")
    best = max(tried, key=lambda a: a.ci[0], default=None)  # the one closest to beating the control
    evidence = () if best is None else (Evidence("probe.best_change_ci95_low", float(best.ci[0]), 0.0, "eval", "<="),)
    return Finding(ids.SETTINGS_NOT_THE_LIMIT, (OUTCOME,), severity(0.0), title, evidence, explanation, advice)


def _too_short(probe: ProbeResult) -> Finding:
    control = probe.control
    title = "The probes were too short to rank the settings"
    explanation = (f"The current setting's held-out accuracy was still rising over the last half of the probes' "
                   f"budget ({_design(probe)}; it reached {control.accuracy:.3f}): short runs favour the settings "
                   f"that learn fastest, so a ranking now would mislead.")
    advice = ("Rerun with --probe-epochs set to how long your student trained (the probes then rank settings where "
              "its training stops, as validated), or with a larger --probe-steps.")
    evidence = (Evidence("probe.control_late_gain", float(probe.control_late_gain), PLATEAU_GAIN_MAX, "eval", ">"),)
    return Finding(ids.PROBES_TOO_SHORT, (OUTCOME,), severity(0.0), title, evidence, explanation, advice)


def _design(probe: ProbeResult) -> str:
    d = probe.design
    return (f"{d.seeds} seed(s) × {d.steps} steps of {d.batch_size} examples from a fresh initialization, "
            f"Adam lr {d.learning_rate:g}")
