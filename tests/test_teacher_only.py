"""A teacher-only check (no student): the teacher's own measurements equal a pair run's, comparisons with a
student are said to need one, and the verdict, tables and CLI follow."""
import json
from dataclasses import replace

import numpy as np
import pytest
from click.testing import CliRunner

import kddiag
from kddiag.accumulate import summarize
from kddiag.cli import DEMO_BASELINE, DEMO_STUDENT, DEMO_TEACHER, main
from kddiag.diagnosis import diagnose
from kddiag.diagnosis.engine import NEEDS_STUDENT, RULES
from kddiag.diagnosis.ids import HEALTHY, TEACHER_OVERCONFIDENT, TEACHER_READY
from kddiag.levels._common import NO_STUDENT
from kddiag.measure import measure
from kddiag.report.text import headline_table, render_text
from kddiag.inputs import ClassInfo
from kddiag.options import Setting, Settings

from test_accumulate import make_set

SETTINGS = Settings(temperature=Setting(3.0, "cli"), alpha=Setting(0.8, "cli"))
DIGITS = ["--data", "digits:test", "--transfer-data", "digits:train"]
TEACHER_COLUMNS = ("teacher.correct", "teacher.nll", "teacher.brier", "smoothing_t", "saturated_t", "entropy_t",
                   "teacher.dark_knowledge", "dark_knowledge_t", "w_untrained")


@pytest.fixture(scope="module")
def sets():
    pair = [make_set("transfer", 900, 1, baseline=False), make_set("eval", 400, 2, baseline=False)]
    alone = [replace(s, student=None) for s in pair]
    return pair, alone


def test_teacher_statistics_equal_those_of_a_pair_run(sets):
    pair, alone = sets
    for with_student, without in zip(pair, alone):
        a, b = (summarize(s, temperature=3.0, alpha=0.8) for s in (with_student, without))
        assert b.roles == ("teacher",)
        for name in TEACHER_COLUMNS:
            assert a.mean(name) == b.mean(name), name
        np.testing.assert_array_equal(a.calibration["teacher"], b.calibration["teacher"])
        np.testing.assert_array_equal(a.target_histogram, b.target_histogram)
        assert a.hardest == b.hardest
        np.testing.assert_array_equal(a.examples["w_untrained"], b.examples["w_untrained"])
        assert "agree" not in b.moments.names and "w" not in b.examples


def test_student_values_are_unavailable_and_teacher_values_unchanged(sets):
    pair, alone = sets
    m_pair, m_alone = (measure(s, settings=SETTINGS, class_info=ClassInfo()) for s in (pair, alone))
    for dataset in ("transfer", "eval"):
        for level in ("outcome", "universe", "domain", "instance"):
            got = {v.name: v for v in getattr(m_alone, level).on(dataset).values()}
            for value in getattr(m_pair, level).on(dataset).values():
                alone_value = got[value.name]
                if "student" in value.name or value.name.split(".")[1] in (
                        "agreement", "top_k_agreement", "agreement_where_teacher_correct", "kl_teacher_student",
                        "kl_teacher_student_at_temperature", "permuted_agreement", "permuted_agreement_chance",
                        "class_permutation", "output_similarity_transfer_score", "feature_cka",
                        "rescaling_weight_mean", "rescaling_weight_cv", "rescaling_weight_low_share",
                        "confidence_error_auroc", "tckd", "nckd"):
                    assert alone_value.unavailable == NO_STUDENT, value.name
                elif value.ok and isinstance(value.value, float):
                    assert alone_value.value == value.value, value.name
    assert m_alone.universe.temperature_whatif.ok
    got, expected = (m.universe.temperature_whatif.value for m in (m_alone, m_pair))
    np.testing.assert_array_equal(got.effective_smoothing, expected.effective_smoothing)
    assert got.informative_range == expected.informative_range


def test_rules_comparing_with_a_student_are_not_checked_and_the_verdict_says_teacher_ready(sets):
    _, alone = sets
    measurements = measure(alone, settings=SETTINGS, class_info=ClassInfo())
    diagnosis = diagnose(measurements, settings=SETTINGS, n_classes=6, teacher_only=True)
    needs = {rule.id for rule in RULES if rule.needs_student}
    assert needs and {(rule, NEEDS_STUDENT) for rule in needs} <= set(diagnosis.not_checked)
    if diagnosis.verdict == TEACHER_READY:
        (finding,) = diagnosis.findings
        assert finding.id == HEALTHY and "teacher-only" in finding.title
        band = measurements.universe.temperature_whatif.value.informative_range
        assert f"{band[0]:g}–{band[1]:g}" in finding.advice
    else:
        assert diagnosis.verdict == "problems"


def test_text_tables_show_teacher_and_baseline_columns_and_rows_with_values(sets):
    _, alone = sets
    measurements = measure(alone, settings=SETTINGS, class_info=ClassInfo())
    table = headline_table(measurements, "outcome", ("teacher", "baseline"))
    assert table.columns == ("teacher", "baseline")
    assert [row[0] for row in table.rows] == ["accuracy", "accuracy"]
    assert all(len(row) == 4 for row in table.rows)


def test_cli_teacher_alone_over_confident_at_tau_1(tmp_path):
    result = CliRunner().invoke(main, ["inspect", str(DEMO_TEACHER), *DIGITS, "--temperature", "1",
                                       "--out", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["verdict"] == "problems"
    assert report["findings"][0]["id"] == TEACHER_OVERCONFIDENT
    assert report["inputs"]["models"] == ["teacher"]
    assert {item["id"] for item in report["not_checked"]} >= {"capacity-gap", "class-order-mismatch"}
    html = (tmp_path / "report.html").read_text()
    assert "Teacher check before distilling" in html and 'href="#fidelity"' not in html


def test_cli_teacher_alone_at_an_informative_tau_is_ready_and_names_the_range():
    result = CliRunner().invoke(main, ["inspect", str(DEMO_TEACHER), *DIGITS, "--temperature", "4"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Verdict: No known problem with this teacher found")
    assert "student" not in result.stdout.split("Level 0")[1].split("\n")[1]  # the table header
    assert "needs a student: this is a teacher-only check" in result.stdout


def test_teacher_with_baseline_checks_whether_it_is_worth_distilling():
    report = kddiag.inspect(str(DEMO_TEACHER), data="digits:test", transfer_data="digits:train",
                            baseline=str(DEMO_BASELINE))
    assert report.teacher_only and report.columns == ("teacher", "baseline")
    outcome = report.measurements.outcome.eval
    assert outcome.baseline_accuracy.ok and outcome.student_accuracy.unavailable == NO_STUDENT
    assert "teacher-weak" not in {rule for rule, _ in report.diagnosis.not_checked}
    assert "baseline" in render_text(report).split("Level 0")[1].split("\n")[1]  # the table header


def test_settings_come_from_the_teacher_checkpoint_when_no_student_gives_them():
    paired = kddiag.inspect(str(DEMO_TEACHER), str(DEMO_STUDENT), data="digits:test")
    alone = kddiag.inspect(str(DEMO_TEACHER), data="digits:test")
    assert paired.settings.temperature.source == "checkpoint"
    assert alone.settings.temperature.source in ("checkpoint", "guessed")


def test_student_options_without_a_student_are_refused():
    result = CliRunner().invoke(main, ["inspect", str(DEMO_TEACHER), *DIGITS, "--student-arch", "mlp:64-8-10"])
    assert result.exit_code == 1 and "--student-arch was given but no student" in result.stderr


def test_a_teacher_only_check_with_student_arch_and_probe_tests_the_planned_settings(tmp_path):
    args = ["inspect", str(DEMO_TEACHER), *DIGITS, "--student-arch", "mlp:64-8-10", "--temperature", "1",
            "--alpha", "0.9", "--probe", "--probe-steps", "10", "--probe-seeds", "1", "--probe-lr", "0.003",
            "--out", str(tmp_path)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["inputs"]["models"] == ["teacher"] and report["probe"]["probed"]
    assert report["probe"]["arms"][0]["label"] == "control (τ 1, α 0.9)"
    assert all(f["remedy"]["tested_on_this_pair"] for f in report["findings"] if "remedy" in f)
