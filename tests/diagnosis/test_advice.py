"""Advice from evidence: remedies kept only when their probe beat the control, else marked untested."""
import dataclasses
import json
from pathlib import Path

from kddiag.diagnosis import ids
from kddiag.diagnosis.advice import settle_advice
from kddiag.diagnosis.track_record import IN_FAMILY, TRACK_RECORD, track_record_sentence
from kddiag.probe import Arm, Candidate, ProbeDesign, ProbeResult
from kddiag.diagnosis.findings import Diagnosis, Finding, Remedy
from kddiag.options import Setting, Settings
from kddiag.types import OUTCOME, UNIVERSE

SETTINGS = Settings(Setting(4.0, "cli"), Setting(0.9, "cli"))
DESIGN = ProbeDesign("initialization", 200, 64, 2, 1e-3, "short check", 1000, 500, 12.8, 3.0, "cpu")


def _overconfident(remedy=Remedy(temperature=16.0)):
    return Finding(ids.TEACHER_OVERCONFIDENT, (UNIVERSE,), 0.8, "over-confident", (), "why", "Raise τ.", remedy)


def _arm(label, tau, alpha, change, ci, seeds, origin="grid"):
    return Arm(Candidate(label, tau, alpha, origin=origin), 0.9 + change, (0.9 + change,) * 2, change, ci, seeds)


def _probe(*arms):
    control = Arm(Candidate("control (τ 4, α 0.9)", 4.0, 0.9, origin="control"), 0.9, (0.9, 0.9))
    return ProbeResult(arms=(control, *arms), design=DESIGN)


def test_without_probes_a_remedy_is_marked_untested_with_its_track_record():
    settled = settle_advice(Diagnosis((_overconfident(),)), None, SETTINGS)
    finding = settled.findings[0]
    assert finding.remedy.temperature == 16.0 and not finding.remedy.tested
    assert "not tested on this pair" in finding.advice and "--probe" in finding.advice
    assert "mlp 8/9, cnn 6/6 in the case studies" in finding.advice and "0/10 on real teachers" in finding.advice
    assert finding.remedy.to_dict()["tested_on_this_pair"] is False
    teacher_only = settle_advice(Diagnosis((_overconfident(),)), None, SETTINGS, teacher_only=True).findings[0]
    assert "--student-arch ARCH --probe trains fresh students" in teacher_only.advice  # no student to probe


def test_a_probed_remedy_that_beat_the_control_is_kept_with_its_evidence():
    probe = _probe(_arm("τ 16", 16.0, 0.9, 0.02, (0.01, 0.03), (0.02, 0.02), origin=ids.TEACHER_OVERCONFIDENT))
    settled = settle_advice(Diagnosis((_overconfident(),)), probe, SETTINGS)
    finding, better = settled.findings
    assert finding.remedy.tested and finding.remedy.probe_change == 0.02
    assert "beat the current setting by +2.0 pt [1.0, 3.0]" in finding.advice
    assert better.id == ids.BETTER_SETTING and better.remedy.temperature == 16.0 and better.remedy.alpha is None


def test_a_probed_remedy_that_did_not_beat_the_control_is_withdrawn_and_says_so():
    probe = _probe(_arm("τ 16", 16.0, 0.9, -0.016, (-0.03, -0.005), (-0.02, -0.012)),
                   _arm("α 0.45", 4.0, 0.45, 0.004, (-0.002, 0.01), (0.006, 0.002)))
    settled = settle_advice(Diagnosis((_overconfident(),)), probe, SETTINGS)
    finding, verdict = settled.findings
    assert finding.remedy is None and "lost to the current setting (-1.6 pt" in finding.advice
    assert verdict.id == ids.SETTINGS_NOT_THE_LIMIT and verdict.remedy is None
    assert "None of the 2 settings probed" in verdict.title and "the limit is the student" in verdict.advice


def test_a_setting_that_helped_on_only_one_seed_is_not_advised():
    probe = _probe(_arm("α 0.45", 4.0, 0.45, 0.01, (0.002, 0.02), (0.025, -0.005)))
    settled = settle_advice(Diagnosis((Finding(ids.KD_NO_GAIN, (OUTCOME,), 0.5, "t", (), "e", "a"),)), probe, SETTINGS)
    assert [f.id for f in settled.findings] == [ids.KD_NO_GAIN, ids.SETTINGS_NOT_THE_LIMIT]


def test_the_best_of_several_helping_settings_is_advised_and_the_others_named():
    probe = _probe(_arm("α 0.45", 4.0, 0.45, 0.01, (0.002, 0.02), (0.01, 0.01)),
                   _arm("labels only (α 0)", 4.0, 0.0, 0.02, (0.01, 0.03), (0.02, 0.02)))
    better = settle_advice(Diagnosis((Finding(ids.KD_NO_GAIN, (OUTCOME,), 0.5, "t", (), "e", "a"),)), probe,
                           SETTINGS).findings[-1]
    assert better.remedy.alpha == 0.0 and "Retrain with α = 0" in better.advice and "α 0.45" in better.advice


def test_the_track_record_matches_the_published_benchmark():
    benchmark = json.loads((Path(__file__).parents[2] / "case_studies/results/benchmark.json").read_text())
    for rule, trials in benchmark["advice"].items():
        published = {(family, sum(c > 0 for c in changes), len(changes))
                     for family, changes in trials["families"].items()}
        assert published == {(f, h, n) for where, f, h, n in TRACK_RECORD[rule] if where == IN_FAMILY}
    assert track_record_sentence("healthy") == ""


def test_probes_whose_control_was_still_learning_rank_nothing_and_say_so():
    arm = Arm(Candidate("τ 16", 16.0, 0.9), 0.95, (0.95, 0.95), 0.05, (0.03, 0.07), (0.05, 0.05), ranked=False)
    control = Arm(Candidate("control (τ 4, α 0.9)", 4.0, 0.9, origin="control"), 0.9, (0.9, 0.9))
    probe = ProbeResult(arms=(control, arm), design=DESIGN, control_late_gain=0.04)
    assert probe.still_learning and not arm.helped and arm.verdict == "not ranked (too short)"
    finding, short = settle_advice(Diagnosis((_overconfident(),)), probe, SETTINGS).findings
    assert finding.remedy is None and "too briefly to tell" in finding.advice
    assert short.id == ids.PROBES_TOO_SHORT and short.evidence[0].value == 0.04 and "--probe-steps" in short.advice


def test_the_advised_remedy_is_the_probes_best_else_the_first_in_rank_order():
    from kddiag.diagnosis.advice import advised_remedy

    probe = _probe(_arm("τ 16", 16.0, 0.9, 0.02, (0.01, 0.03), (0.02, 0.02), origin=ids.TEACHER_OVERCONFIDENT),
                   _arm("labels only (α 0)", 4.0, 0.0, 0.03, (0.02, 0.04), (0.03, 0.03)))
    settled = settle_advice(Diagnosis((_overconfident(),)), probe, SETTINGS)
    assert advised_remedy(settled).alpha == 0.0
    assert advised_remedy(settle_advice(Diagnosis((_overconfident(),)), None, SETTINGS)).temperature == 16.0
    assert advised_remedy(Diagnosis((Finding(ids.KD_NO_GAIN, (OUTCOME,), 0.5, "t", (), "e", "a"),))) is None


def test_capacity_gap_is_confirmed_or_withdrawn_by_the_probes_control():
    """A fresh student of the same size trained to a plateau at the same settings: about as accurate as the
    user's student confirms the size limits it; clearly more accurate says the training does."""
    from kddiag.diagnosis.findings import Evidence

    def capacity(student_accuracy):
        evidence = (Evidence("outcome.agreement_where_teacher_correct", 0.7, 0.85, "transfer", "<"),
                    Evidence("outcome.student_accuracy", student_accuracy, 0.9, "eval", "<="))
        return Finding(ids.CAPACITY_GAP, (OUTCOME,), 0.7, "too small", evidence, "It cannot follow.", "Use a larger one.")

    probe = _probe(_arm("α 0.45", 4.0, 0.45, 0.0, (-0.01, 0.01), (0.0, 0.0)))  # control reached 0.90
    confirmed = settle_advice(Diagnosis((capacity(0.89),)), probe, SETTINGS).findings[0]
    assert confirmed.id == ids.CAPACITY_GAP and confirmed.severity == 0.7
    assert "reached 90.0%" in confirmed.explanation and "its size, not its training, limits it" in confirmed.explanation
    trained_short = settle_advice(Diagnosis((capacity(0.80),)), probe, SETTINGS).findings[0]
    assert trained_short.severity < 0.7 and "Train the student longer" in trained_short.advice
    assert trained_short.evidence[-1].metric == "probe.control_accuracy" and trained_short.evidence[-1].value == 0.9
    as_trained = ProbeResult(arms=probe.arms, design=dataclasses.replace(DESIGN, length_source="checkpoint"))
    rerun = settle_advice(Diagnosis((capacity(0.80),)), as_trained, SETTINGS).findings[0]
    assert "trained by the probes as this student was trained" in rerun.explanation  # not "until it levelled off"
    assert "Retrain the student (another initialization" in rerun.advice and "longer" not in rerun.title
    still = ProbeResult(arms=probe.arms, design=DESIGN, control_late_gain=0.05)
    assert still.still_learning  # a control still learning says nothing about the size
    assert settle_advice(Diagnosis((capacity(0.80),)), still, SETTINGS).findings[0].advice == "Use a larger one."
