"""The terminal summary: verdict first, every finding named, one table per level, ≤ 100 columns."""
from __future__ import annotations

import dataclasses

import pytest

from kddiag.report.text import WIDTH, clip, format_number, headline_table, render_text
from kddiag.results import ClassStructure, DomainOnSet, DomainResult, Measurements, measured, unavailable
from kddiag.diagnosis.findings import Diagnosis, Evidence, Finding, Remedy
from kddiag.options import Setting, Settings
from kddiag.types import LEVEL_TITLES

from ._fixtures import NO_BASELINE, NO_FEATURES, kd_helped


def test_summary_starts_with_the_verdict_and_names_every_finding(full):
    text = render_text(full)
    lines = text.splitlines()
    assert lines[0].startswith("Verdict: ")
    assert full.diagnosis.findings[0].title in lines[0]
    for rank, finding in enumerate(full.diagnosis.findings, start=1):
        line = next(line for line in lines if line.startswith(f"  {rank}. "))
        assert finding.id in line
        assert f"{finding.severity:.2f}" in line
        assert format_number(finding.evidence[0].value) in line  # the key number


def test_findings_come_before_the_level_tables(full):
    text = render_text(full)
    first_table = min(text.index(title) for title in LEVEL_TITLES.values())
    assert all(text.index(f.id) < first_table for f in full.diagnosis.findings)


def test_every_line_fits_in_100_columns(full, logits_only):
    long_title = Finding("teacher-overconfident", ("universe", "instance"), 0.9, "x" * 300,
                         (Evidence("universe.saturation_share", 0.97, 0.5, "transfer"),), "e", "a")
    report = dataclasses.replace(full, diagnosis=Diagnosis((long_title,)))
    outcome = full.measurements.outcome
    wide_ci = dataclasses.replace(outcome.transfer, kd_gain=measured(-0.01234, ci=(-0.0234, -0.00612)))
    wide = dataclasses.replace(full, measurements=dataclasses.replace(
        full.measurements, outcome=dataclasses.replace(outcome, transfer=wide_ci)))
    for r in (full, logits_only, report, wide):
        assert max(len(line) for line in render_text(r).splitlines()) <= WIDTH


def test_one_table_per_level_with_the_measured_sets(full):
    text = render_text(full)
    for title in LEVEL_TITLES.values():
        assert title in text
    table = headline_table(full.measurements, "outcome")
    accuracy = [row for row in table.rows if row[0] == "accuracy"]
    assert [row[1] for row in accuracy] == ["transfer", "eval"]
    teacher_eval = full.measurements.outcome.eval.teacher_accuracy.value
    assert accuracy[1][2].startswith(f"{teacher_eval:.3f} [")  # value and its bootstrap interval
    assert f"{teacher_eval:.3f} [" in text


def test_the_verdict_line_follows_the_outcome(logits_only):
    assert render_text(logits_only).startswith("Verdict: none — no diagnosis rule could run")
    healthy = Finding("healthy", (), 0.0, "KD beats the baseline and no failure case was found", (), "", "")
    explicit = dataclasses.replace(logits_only, diagnosis=Diagnosis((healthy,)))
    assert render_text(explicit).startswith("Verdict: healthy — KD beats the baseline")
    unknown = dataclasses.replace(healthy, title="No known failure found; whether KD helped was not checked")
    no_baseline = dataclasses.replace(logits_only, diagnosis=Diagnosis((unknown,), verdict="gain-not-checked"))
    first = render_text(no_baseline).splitlines()[0]
    assert first == "Verdict: No known failure found; whether KD helped was not checked" and "healthy" not in first


def test_unavailable_metrics_say_why(logits_only):
    text = render_text(logits_only)
    assert f"n/a: {NO_BASELINE}" in text
    assert f"n/a: {NO_FEATURES}" in text
    for section in LEVEL_TITLES:  # nothing was measured on a transfer set: its only row says why
        rows = headline_table(logits_only.measurements, section).rows
        assert {row[1] for row in rows if set(row[2:]) - {"n/a", "—"}} <= {"eval", "weights"}
    assert "n/a: needs both eval and transfer sets (softness_gap)" in text


def test_headline_rows_read_the_records(full):
    """Each cell is the value of the record of its set; level-wide values carry their own set."""
    table = {(row[0], row[1]): row[2:] for row in headline_table(full.measurements, "universe").rows}
    universe = full.measurements.universe
    assert table[("ECE (15 bins)", "eval")][0] == format_number(universe.eval.teacher.ece.value)
    assert table[("saturated share (p_y > 0.99)", "transfer")][0] == format_number(universe.transfer.saturation_share.value)
    assert table[("softness gap (eval − transfer)", "transfer")][0] == format_number(universe.softness_gap.value)
    domain = {(row[0], row[1]) for row in headline_table(full.measurements, "domain").rows}
    assert ("weight-sim. match (Spearman)", "weights") in domain
    assert ("weight-sim. match (Spearman)", "eval") not in domain


def test_a_record_built_by_hand_shows_only_what_it_holds():
    record = DomainOnSet("eval", teacher=ClassStructure(dark_knowledge_content=measured(0.5)))
    rows = headline_table(Measurements(domain=DomainResult(eval=record)), "domain").rows
    assert rows == (("dark-knowledge content, τ=1", "eval", "0.500", "—", "—"),)
    assert headline_table(Measurements(), "outcome").rows == ()


def test_guessed_settings_and_not_checked_are_marked(full, logits_only):
    text = render_text(full)
    settings = text[text.index("Settings"):]
    assert "temperature τ = 4   GUESSED" in settings
    assert "alpha α = 0.9   from the checkpoint 'student.pt'" in settings
    sure = dataclasses.replace(full, settings=Settings(Setting(2.0, "cli"), Setting(0.5, "cli")))
    assert "GUESSED" not in render_text(sure)
    for rule, reason in logits_only.diagnosis.not_checked:
        assert f"{rule}: {reason}" in render_text(logits_only)


@pytest.mark.parametrize("value, expected", [(0.91234, "0.912"), (1234.5, "1234.5"), (2e-5, "2.00e-05"),
                                             (0.0, "0.000"), (None, "—"), (float("nan"), "nan"), (7, "7"),
                                             ("baseline_loss", "baseline_loss"), (3e5, "3.00e+05")])
def test_format_number(value, expected):
    assert format_number(value) == expected


def test_level3_footnotes_say_which_rescaling_weights_the_diagnosis_reads(full):
    table = headline_table(full.measurements, "instance")
    assert any("teacher column" in note and "the diagnosis reads these" in note for note in table.notes)
    assert any("heavy-tailed where the student is confident" in note for note in table.notes)
    text = " ".join(render_text(full).split())
    assert "its mean and CV are dominated by a few examples" in text  # wrapped, never clipped


def test_long_notes_wrap_and_long_paths_keep_their_format(full):
    reason = "no class groups given, " * 8
    domain = full.measurements.domain
    eval_set = dataclasses.replace(domain.eval, **{
        model: dataclasses.replace(structure, group_recovery=unavailable(reason))
        for model, structure in (("teacher", domain.eval.teacher), ("student", domain.eval.student),
                                 ("baseline", domain.eval.baseline))})
    long_path = "/very/long/" + "nested/" * 20 + "teacher.pt"
    inputs = (dataclasses.replace(full.inputs[0], path=long_path),) + full.inputs[1:]
    report = dataclasses.replace(full, inputs=inputs, measurements=dataclasses.replace(
        full.measurements, domain=dataclasses.replace(domain, eval=eval_set)))
    lines = render_text(report).splitlines()
    assert max(len(line) for line in lines) <= WIDTH
    assert not any(line.endswith("…") for line in lines if "no class groups" in line)
    assert any(line.startswith("  teacher   …") and line.endswith("teacher.pt (state_dict)") for line in lines)


def test_a_long_verdict_drops_its_aside_before_clipping(full):
    title = "The distillation temperature τ = 4 is far too high for this teacher model"
    findings = tuple(dataclasses.replace(f, title=title) for f in full.diagnosis.findings)
    first = render_text(dataclasses.replace(full, diagnosis=Diagnosis(findings))).splitlines()[0]
    assert first == f"Verdict: {title} ({len(findings)} problems)"


def _verdict_block(report) -> str:
    text = render_text(report)
    return text[:text.index(LEVEL_TITLES["outcome"])]


def test_kd_that_helped_says_so_first_and_lists_room_to_improve(full):
    report = kd_helped(full, 0.016, (0.004, 0.028))
    lines = render_text(report).splitlines()
    assert lines[0] == "Verdict: KD helped: +1.6 pt [0.4, 2.8] over the baseline (2 notes: room to improve)"
    assert "problem" not in _verdict_block(report)
    assert [line.split()[4] for line in lines if line.startswith(("  1. ", "  2. "))] == [
        f.id for f in full.diagnosis.findings]


def test_each_finding_prints_its_advice_in_two_lines_cut_at_a_word_and_its_remedy(full):
    advice = " ".join(["distil on augmented views the teacher did not memorize,"] * 8)
    first = dataclasses.replace(full.diagnosis.findings[0], advice=advice, remedy=Remedy(temperature=16.0))
    report = dataclasses.replace(full, diagnosis=Diagnosis((first, *full.diagnosis.findings[1:])))
    lines = render_text(report).splitlines()
    start = lines.index(next(line for line in lines if line.startswith("     advice: ")))
    shown, remedy = lines[start:start + 2], lines[start + 2]
    assert remedy == "     remedy: τ 4 → 16 (not tested on this pair: --probe)"
    assert all(len(line) <= WIDTH for line in shown) and shown[1].endswith("…")
    words = " ".join(shown).replace("advice:", "", 1).removesuffix("…").split()
    assert words == advice.split()[:len(words)]  # whole words, in order: none cut
    block = _verdict_block(report)
    assert block.count("advice: ") == len(report.diagnosis.findings)
    short = full.diagnosis.findings[1].advice
    assert short in " ".join(block.split())  # a short advice whole, with no '…'


def test_a_guessed_setting_is_stated_right_under_the_verdict(full, logits_only):
    assert render_text(full).splitlines()[1] == (
        "  τ = 4 GUESSED: pass --temperature or --config, the verdict depends on it")
    both = dataclasses.replace(logits_only, settings=Settings())
    assert render_text(both).splitlines()[1] == (
        "  τ = 4, α = 0.9 GUESSED: pass --temperature/--alpha or --config, the verdict depends on them")
    from_config = dataclasses.replace(full, settings=Settings(Setting(2.0, "config", path="runs/kd.yaml"),
                                                              Setting(0.5, "checkpoint", path="s.pt")))
    assert "GUESSED" not in _verdict_block(from_config)
    assert "temperature τ = 2   from the config 'kd.yaml'" in render_text(from_config)
    sure = dataclasses.replace(full, settings=Settings(Setting(2.0, "cli"), Setting(0.5, "cli")))
    assert "GUESSED" not in _verdict_block(sure)


def test_each_table_ends_with_a_glossary_of_the_symbols_it_uses(full):
    text = render_text(full)
    universe = text[text.index(LEVEL_TITLES["universe"]):text.index(LEVEL_TITLES["domain"])]
    glossary = universe.rstrip().splitlines()[-1]
    assert glossary == "  τ: KD temperature · T*: calibrating temperature · p_y: true-class probability"
    instance = text[text.index(LEVEL_TITLES["instance"]):text.index("Settings")]  # only the symbols it uses
    assert instance.rstrip().splitlines()[-1] == (
        "  τ: KD temperature · p_y: true-class probability · TCKD/NCKD: KD on the target / other classes")


def test_not_checked_reasons_are_wrapped_whole(full):
    reason = ("universe.saturation_share not available on the transfer set: checked on the eval set instead, "
              "where the teacher's confidence says less about what it passed on")
    report = dataclasses.replace(full, diagnosis=dataclasses.replace(full.diagnosis,
                                                                     not_checked=(("teacher-overconfident", reason),)))
    text = render_text(report)
    block = text[text.index("Not checked"):].splitlines()[1:]
    assert len(block) == 2 and all(len(line) <= WIDTH for line in block) and "…" not in text[text.index("Not checked"):]
    assert " ".join(" ".join(block).split()) == f"teacher-overconfident: {reason}"


def test_clip_cuts_at_a_word_boundary():
    line = "  " + "the teacher memorized its transfer set " * 4
    clipped = clip(line)
    assert len(clipped) <= WIDTH and clipped.endswith("…")
    kept = clipped.removesuffix("…").split()
    assert kept == line.split()[:len(kept)] and len(" ".join(kept)) > WIDTH - 40
    assert clip("x" * 150) == "x" * (WIDTH - 1) + "…"  # one word wider than the line: cut, as the only way
    assert clip("short line") == "short line"


def test_a_probed_remedy_shows_the_change_its_probe_measured():
    from kddiag.report.text import remedy_summary
    from kddiag.diagnosis.findings import Remedy
    from kddiag.options import Setting, Settings

    settings = Settings(Setting(4.0, "cli"), Setting(0.9, "cli"))
    probed = Remedy(alpha=0.45, probe_change=0.024, probe_ci95=(0.002, 0.044))
    assert remedy_summary(probed, settings) == "α 0.9 → 0.45 (probed: +2.4 pt [0.2, 4.4])"
    assert remedy_summary(Remedy(teacher_scale=1.94), settings) == ("teacher's logits ÷ 1.94 (not tested on this "
                                                                    "pair: --probe)")
    assert remedy_summary(Remedy(alpha=0.45), settings, probe_hint="--student-arch ARCH --probe").endswith(
        "(not tested on this pair: --student-arch ARCH --probe)")
