"""Progress on stderr: a bar on a terminal, a line every LINE_INTERVAL_S on a pipe, nothing on stdout."""
import io
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import kddiag.progress as progress_module
from kddiag.cli import DEMO_STUDENT, DEMO_TEACHER, main
from kddiag.errors import KddiagError
from kddiag.metrics.whatif import TEMPERATURES
from kddiag.models import MLP
from kddiag.probe import candidates_for, run_probes
from kddiag.progress import Progress, check_progress, resolve_progress
from kddiag.inputs import Dataset, LoadedModel
from kddiag.options import InspectOptions, ProbeOptions, Setting, Settings

EVAL_ONLY = ["inspect", str(DEMO_TEACHER), str(DEMO_STUDENT), "--data", "digits:test", "--batch-size", "100"]


class Clock:
    """A clock the test moves by hand."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_modes_and_the_older_on_off_form():
    assert [check_progress(v) for v in (True, False, "auto", "BAR", "lines", "none")] == [
        "auto", "none", "auto", "bar", "lines", "none"]
    with pytest.raises(KddiagError, match=r"--progress must be one of auto, bar, lines, none \(or True/False\); "
                                          r"got 'fast'"):
        check_progress("fast")
    assert resolve_progress("auto", Terminal()) == "bar"
    assert resolve_progress("auto", io.StringIO()) == "lines"  # a pipe: CI, nohup, 2> log
    assert resolve_progress("lines", Terminal()) == "lines" and resolve_progress(False, Terminal()) == "none"
    assert InspectOptions(progress=True).progress == "auto" and InspectOptions().progress == "none"
    assert InspectOptions(progress=np.bool_(False)).progress == "none"
    with pytest.raises(KddiagError, match="InspectOptions.progress must be one of"):
        InspectOptions(progress="verbose")


def test_lines_are_periodic_and_a_short_stage_prints_nothing():
    clock, stream = Clock(), io.StringIO()
    with Progress("eval set", 10, mode="lines", stream=stream, clock=clock) as short:
        for _ in range(10):
            clock.now += 0.5
            short.update()
    assert stream.getvalue() == ""  # 5 s: under LINE_INTERVAL_S, nothing

    clock, stream = Clock(), io.StringIO()
    with Progress("transfer set", 10, mode="lines", stream=stream, clock=clock) as long:
        for _ in range(10):
            clock.now += 4.0
            long.update()
    lines = stream.getvalue().splitlines()
    assert lines == ["kddiag: transfer set, batch 3/10 (30%), 12 s elapsed, about 28 s left",
                     "kddiag: transfer set, batch 6/10 (60%), 24 s elapsed, about 16 s left",
                     "kddiag: transfer set, batch 9/10 (90%), 36 s elapsed, about 4.0 s left",
                     "kddiag: transfer set, batch 10/10 (100%), done in 40 s"]
    assert "\r" not in stream.getvalue()  # whole lines: a log reads them as they come


def test_a_bar_redraws_one_line_and_ends_it():
    clock, stream = Clock(), Terminal()
    with Progress("eval set", 4, mode="auto", stream=stream, clock=clock) as bar:
        for _ in range(4):
            clock.now += 1.0
            bar.update()
    text = stream.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n") and text.startswith("\r")
    draws = text.rstrip("\n").split("\r")[1:]
    assert draws[0].startswith("kddiag: eval set [") and "batch 1/4 (25%)" in draws[0] and "<0:03" in draws[0]
    assert "batch 4/4 (100%)" in draws[-1] and "#" * 10 in draws[-1]
    assert all(len(later) >= len(earlier.rstrip()) for earlier, later in zip(draws, draws[1:]))  # blanked ends


def test_a_total_may_grow_and_a_closed_stream_is_ignored():
    clock, stream = Clock(), io.StringIO()
    meter = Progress("probing 5 settings, seed 1/2", 100, unit="step", mode="lines", stream=stream, clock=clock,
                     interval=1.0)
    clock.now = 2.0
    meter.update(done=100)
    clock.now = 4.0
    meter.update(done=150, total=200)  # the budget doubled
    meter.close()
    assert stream.getvalue().splitlines()[1].startswith("kddiag: probing 5 settings, seed 1/2, step 150/200 (75%)")
    stream.close()
    broken = Progress("eval set", 3, mode="bar", stream=stream, clock=clock)
    broken.update(done=3)
    broken.close()  # nothing raised: progress never stops a run


def test_probes_report_their_steps(monkeypatch, capsys):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, size=80)
    x = torch.as_tensor(rng.normal(size=(80, 4)) + y[:, None], dtype=torch.float32)
    torch.manual_seed(0)
    teacher, student = LoadedModel("<t>", "module", MLP((4, 8, 3))), LoadedModel("<s>", "module", MLP((4, 3, 3)))
    candidates = candidates_for(Settings(Setting(4.0, "cli"), Setting(0.9, "cli")), grid=TEMPERATURES)
    monkeypatch.setattr(progress_module, "LINE_INTERVAL_S", 0.0)  # a line at every step
    result = run_probes(teacher, student, transfer=Dataset("train", x[:40], y[:40]), held_out=Dataset("test", x[40:], y[40:]),
                        candidates=candidates, options=ProbeOptions(steps=4, batch_size=16, seeds=1, lr=1e-2),
                        progress="lines")
    assert result.ran
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"kddiag: probing {len(candidates)} settings, seed 1/1, step 4/4 (100%), done in" in captured.err


def test_the_cli_keeps_stdout_clean_and_shows_lines_on_a_pipe(monkeypatch):
    monkeypatch.setattr(progress_module, "LINE_INTERVAL_S", 0.0)
    result = CliRunner().invoke(main, [*EVAL_ONLY, "--json"])  # default auto; CliRunner's stderr is no terminal
    assert result.exit_code == 0, result.output
    json.loads(result.stdout)  # --json: the report alone on stdout
    assert "kddiag: eval set, batch 6/6 (100%), done in" in result.stderr and "\r" not in result.stderr
    bar = CliRunner().invoke(main, [*EVAL_ONLY, "--json", "--progress", "bar"])
    json.loads(bar.stdout)
    assert "\rkddiag: eval set [" in bar.stderr and "batch 6/6 (100%)" in bar.stderr
    quiet = CliRunner().invoke(main, [*EVAL_ONLY, "--json", "--no-progress"])
    json.loads(quiet.stdout)
    assert quiet.stderr == ""
    flag = CliRunner().invoke(main, [*EVAL_ONLY, "--progress", "--json"])  # --progress alone: auto
    assert flag.exit_code == 0 and "done in" in flag.stderr


def test_contradicting_progress_options_are_a_usage_error(tmp_path):
    result = CliRunner().invoke(main, ["demo", "--out", str(tmp_path / "out"), "--no-progress", "--progress", "bar"])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "kddiag: error: --no-progress and --progress bar contradict each other: give one; see '")
    assert not (tmp_path / "out" / "report.json").exists()
    wrong = CliRunner().invoke(main, [*EVAL_ONLY, "--progress", "loud"])
    assert wrong.exit_code == 2 and "'loud' is not one of 'auto', 'bar', 'lines', 'none'" in wrong.stderr


def test_demo_and_compare_take_progress(monkeypatch, tmp_path):
    monkeypatch.setattr(progress_module, "LINE_INTERVAL_S", 0.0)
    demo = CliRunner().invoke(main, ["demo", "--out", str(tmp_path / "demo"), "--progress", "lines", "--json"])
    assert demo.exit_code == 0, demo.output
    json.loads(demo.stdout)
    assert "kddiag: transfer set, batch 3/3 (100%), done in" in demo.stderr
    from kddiag.cli import DEMO_BASELINE

    compare = CliRunner().invoke(main, ["compare", str(DEMO_TEACHER), str(DEMO_STUDENT), str(DEMO_BASELINE),
                                        "--data", "digits:test", "--progress", "lines", "--json"])
    assert compare.exit_code == 0, compare.output
    json.loads(compare.stdout)
    assert "kddiag: eval set, batch 2/2 (100%), done in" in compare.stderr
