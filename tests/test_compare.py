"""kddiag compare: several students of one teacher in one pass, ranked, each diagnosed as inspect would."""
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from kddiag.cli import DEMO_BASELINE, DEMO_STUDENT, DEMO_TEACHER, main
from kddiag.comparison import KEY_ROWS, rank
from kddiag.diagnosis.wording import gain_points
from kddiag.errors import KddiagError
from kddiag.loading import load_model
from kddiag.pipeline import compare, inspect
from kddiag.report.comparison import comparison_to_dict, render_comparison_html, render_comparison_text
from kddiag.report.json import report_to_dict
from kddiag.levels._common import NO_BASELINE
from kddiag.results import measured, unavailable
from kddiag.options import InspectOptions

DATA = dict(data="digits:test", transfer_data="digits:train")
DIGITS = ["--data", "digits:test", "--transfer-data", "digits:train"]


@pytest.fixture(scope="module")
def students(tmp_path_factory):
    """Three students of the demo teacher: the KD student (τ = 1 in its checkpoint), the baseline saved as a
    student at τ = 4, and a copy of the KD student with its last layer perturbed, at τ = 8."""
    root = tmp_path_factory.mktemp("students")
    kd = load_model(DEMO_STUDENT, role="student")
    plain = load_model(DEMO_BASELINE, role="baseline")
    noisy = {k: v.clone() for k, v in kd.module.state_dict().items()}
    last = [k for k in noisy if k.endswith("weight")][-1]
    noisy[last] += 0.5 * torch.randn(noisy[last].shape, generator=torch.Generator().manual_seed(0))
    paths = {"kd": DEMO_STUDENT, "plain": root / "plain.pt", "noisy": root / "noisy.pt"}
    arch = torch.load(DEMO_STUDENT, weights_only=True)["arch"]
    torch.save({"state_dict": plain.module.state_dict(), "arch": arch, "temperature": 4.0, "alpha": 0.5},
               paths["plain"])
    torch.save({"state_dict": noisy, "arch": arch, "temperature": 8.0, "alpha": 0.9}, paths["noisy"])
    return paths


@pytest.fixture(scope="module")
def comparison(students):
    return compare(str(DEMO_TEACHER), {name: str(path) for name, path in students.items()},
                   baseline=str(DEMO_BASELINE), **DATA)


def test_each_student_is_measured_and_diagnosed_as_inspect_would(comparison, students):
    for name, report in zip(comparison.names, comparison.reports):
        alone = inspect(str(DEMO_TEACHER), str(students[name]), baseline=str(DEMO_BASELINE), **DATA)
        assert report_to_dict(report) == report_to_dict(alone), name


def test_settings_come_from_each_students_checkpoint(comparison):
    assert [r.settings.temperature.value for r in comparison.reports] == [1.0, 4.0, 8.0]
    assert [r.settings.alpha.value for r in comparison.reports] == [0.9, 0.5, 0.9]


def test_the_teacher_and_baseline_run_once_per_batch(students):
    teacher = load_model(DEMO_TEACHER, role="teacher").module
    baseline = load_model(DEMO_BASELINE, role="baseline").module
    calls = {"teacher": 0, "baseline": 0}
    for role, module in (("teacher", teacher), ("baseline", baseline)):
        module.register_forward_hook(lambda *_, role=role: calls.__setitem__(role, calls[role] + 1))
    compare(teacher, [str(p) for p in students.values()], baseline=baseline, data="digits:test",
            options=InspectOptions(batch_size=100))
    n_batches = -(-540 // 100) + 1  # the probe that wires the feature capture, then the batches
    assert calls == {"teacher": n_batches, "baseline": n_batches}


def test_the_best_student_is_the_most_accurate_with_a_paired_margin(comparison):
    ranking = comparison.ranking
    accuracy = [r.measurements.outcome.eval.student_accuracy.value for r in comparison.reports]
    assert ranking.dataset == "eval"
    assert accuracy[ranking.best] == max(accuracy)
    assert [accuracy[k] for k in ranking.order] == sorted(accuracy, reverse=True)
    runner_up = ranking.order[1]
    assert ranking.margin.value == pytest.approx(accuracy[ranking.best] - accuracy[runner_up])
    lo, hi = ranking.margin.ci
    assert lo <= ranking.margin.value <= hi
    assert ranking.clear == (lo > 0)
    assert ranking.reasons[0].startswith(comparison.names[ranking.best])


def test_ties_of_accuracy_are_broken_by_nll(comparison):
    def with_nll(report, nll):
        universe = report.measurements.universe
        student = replace(universe.eval.student, nll=replace(universe.eval.student.nll, value=nll))
        universe = replace(universe, eval=replace(universe.eval, student=student))
        return replace(report, measurements=replace(report.measurements, universe=universe))

    same = comparison.reports[0]
    ranking = rank(["a", "b"], [with_nll(same, 0.5), with_nll(same, 0.3)], [[SummaryStub()], [SummaryStub()]])
    assert ranking.order == (1, 0)
    assert ranking.margin.value == 0 and not ranking.clear
    assert "equally accurate" in ranking.reasons[0] and "b ranks first on NLL (0.3 vs 0.5 nats)" in ranking.reasons[0]


class SummaryStub:
    """The part of a SetSummary the paired margin reads: the eval set, four examples."""

    name, n_samples = "eval", 4
    examples = {"index": np.arange(4), "student.correct": np.array([1.0, 1.0, 0.0, 0.0])}

    def mean(self, name):
        return float(np.mean(self.examples[name]))


def test_says_plainly_when_no_student_beats_the_baseline(comparison):
    names, ranking = comparison.names, comparison.ranking
    assert ranking.beat_baseline == ()  # the KD student gains nothing, one student is the baseline itself
    best = ranking.best
    sentence = f"No student beats the baseline: the best, '{names[best]}', gains {gain_points(ranking.gain[best])}."
    assert ranking.reasons[1] == sentence
    text = render_comparison_text(comparison)
    assert sentence in " ".join(text.split())
    rows = text[text.index("Ranking on the eval set"):text.index("Key measurements")].splitlines()[1:]
    for place, k in enumerate(ranking.order, start=1):  # each student's gain with its interval, best first
        assert rows[place - 1].startswith(f"  {place}. {names[k]}") and rows[place - 1].endswith(
            gain_points(ranking.gain[k]))
        assert " [" in rows[place - 1]
    assert comparison_to_dict(comparison)["best"]["beat_baseline"] == []


def _with_gain(report, gain):
    outcome = report.measurements.outcome
    eval_set = replace(outcome.eval, kd_gain=gain)
    return replace(report, measurements=replace(report.measurements, outcome=replace(outcome, eval=eval_set)))


def test_names_the_students_that_beat_the_baseline(comparison):
    same = comparison.reports[0]
    gains = (measured(0.016, ci=(0.004, 0.028), dataset="eval"), measured(0.01, ci=(-0.01, 0.03), dataset="eval"))
    ranking = rank(["a", "b"], [_with_gain(same, gain) for gain in gains], [[SummaryStub()], [SummaryStub()]])
    assert ranking.beat_baseline == (0,)
    assert "1 of 2 students beat the baseline beyond the noise: 'a' by +1.6 pt [0.4, 2.8]." in ranking.reasons
    alone = _with_gain(same, unavailable(NO_BASELINE))
    without = rank(["a", "b"], [alone, alone], [[SummaryStub()], [SummaryStub()]])
    assert without.beat_baseline is None and not any("beat" in reason for reason in without.reasons)


def test_the_key_table_has_a_value_per_student_for_every_row_shown(comparison):
    table = comparison.table()
    assert [row["label"] for row in table][:2] == [KEY_ROWS[0].label, KEY_ROWS[1].label]
    for row in table:
        assert list(row["values"]) == list(comparison.names)
        assert any(v["value"] is not None for v in row["values"].values())
    assert json.loads(json.dumps(table, allow_nan=False)) == comparison_to_dict(comparison)["table"]  # plain data
    first = table[0]["values"][comparison.names[0]]  # accuracy (eval): a number, its interval and its set
    assert isinstance(first["value"], float) and len(first["ci95"]) == 2 and first["dataset"] == "eval"
    assert table[0]["level"] == "outcome" and table[0]["higher_is_better"] == 1


def test_renderings(comparison):
    text = render_comparison_text(comparison)
    assert text.startswith("Comparison of 3 students of one teacher")
    assert all(name in text for name in comparison.names)
    data = comparison_to_dict(comparison)
    assert data["kind"] == "comparison" and set(data["reports"]) == set(comparison.names)
    assert data["best"]["student"] == comparison.names[comparison.ranking.best]
    json.dumps(data, allow_nan=False)
    html = render_comparison_html(comparison)
    assert html.count('class="student-card') == 3 and "http://" not in html and "https://" not in html
    assert html.count("data:image/png;base64,") == 3  # accuracy, reliability, accuracy against τ


def test_cli_compare_writes_one_report_and_gates_on_any_student(tmp_path, students):
    paths = [str(p) for p in students.values()]
    result = CliRunner().invoke(main, ["compare", str(DEMO_TEACHER), *paths, *DIGITS, "--out", str(tmp_path),
                                       "--fail-on", "teacher-overconfident"])
    assert result.exit_code == 3, result.output  # the τ = 1 student's teacher is over-confident
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["students"] == ["student", "plain", "noisy"]
    assert (tmp_path / "report.html").exists()


def test_cli_compare_temperatures_one_per_student_or_one_for_all(students):
    paths = [str(p) for p in students.values()]
    result = CliRunner().invoke(main, ["compare", str(DEMO_TEACHER), *paths, "--data", "digits:test",
                                       "--temperature", "2,3,5", "--json"])
    assert result.exit_code == 0, result.output
    reports = json.loads(result.stdout)["reports"]
    assert [r["inputs"]["settings"]["temperature"]["value"] for r in reports.values()] == [2.0, 3.0, 5.0]
    result = CliRunner().invoke(main, ["compare", str(DEMO_TEACHER), *paths, "--data", "digits:test",
                                       "--temperature", "2,3"])
    assert result.exit_code == 1 and "2 values for 3 students" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize("args, fragment", [
    (["compare", str(DEMO_TEACHER), str(DEMO_STUDENT), "--data", "digits:test"], "at least 2 students"),
    (["compare", str(DEMO_TEACHER), str(DEMO_STUDENT), "missing.pt", "--data", "digits:test"], "missing.pt"),
    (["compare", str(DEMO_TEACHER), str(DEMO_STUDENT), str(DEMO_STUDENT)], "no data"),
])
def test_cli_compare_bad_input_one_line(args, fragment):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0] and "Traceback" not in result.output


def test_same_file_names_get_distinct_names(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "student.pt").write_bytes(DEMO_STUDENT.read_bytes())
    result = compare(str(DEMO_TEACHER), [str(tmp_path / "a" / "student.pt"), str(tmp_path / "b" / "student.pt")],
                     data="digits:test")
    assert len(set(result.names)) == 2 and all(name.endswith("student") for name in result.names)


def test_api_refuses_a_single_path_as_students():
    with pytest.raises(KddiagError, match="list of students"):
        compare(str(DEMO_TEACHER), str(DEMO_STUDENT), data="digits:test")


def test_compare_probe_tests_each_students_advice_on_its_own_settings(students, tmp_path):
    args = ["compare", str(DEMO_TEACHER), str(students["kd"]), str(students["plain"]), *DIGITS, "--baseline",
            str(DEMO_BASELINE), "--probe", "--probe-steps", "10", "--probe-seeds", "1", "--probe-lr", "0.003",
            "--out", str(tmp_path)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    reports = json.loads((tmp_path / "report.json").read_text())["reports"]
    controls = [r["probe"]["arms"][0]["label"] for r in reports.values()]
    assert controls == ["control (τ 1, α 0.9)", "control (τ 4, α 0.5)"]
    assert result.output.count("Probes of this pair") == 2  # each student's probe table in the terminal
    assert "    Probes of this pair" in result.output and "control (τ 4, α 0.5)" in result.output
    assert all(f["remedy"]["tested_on_this_pair"] for r in reports.values() for f in r["findings"] if "remedy" in f)
