"""Usage errors (an unknown command or option, a missing argument, a value click or a callback refuses): one
line on stderr, ``kddiag: error: ...`` naming the option, exit code 2, no traceback, nothing written."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from kddiag.cli import DEMO_STUDENT, DEMO_TEACHER, main

TEACHER, STUDENT = str(DEMO_TEACHER), str(DEMO_STUDENT)
PAIR = [TEACHER, STUDENT, "--data", "digits:test"]
CASES = {  # name: (arguments, fragments the one line must hold)
    "unknown command": (["inspekt", TEACHER], ["No such command 'inspekt'", "'main --help'"]),
    "unknown group option": (["--verbose", "inspect"], ["--verbose"]),
    "unknown option": (["inspect", *PAIR, "--temprature", "4"], ["--temprature", "'main inspect --help'"]),
    "missing teacher": (["inspect"], ["Missing argument 'TEACHER'"]),
    "missing students": (["compare", TEACHER], ["Missing argument 'STUDENTS...'"]),
    "extra argument": (["inspect", TEACHER, STUDENT, "third.pt", "--data", "digits:test"], ["third.pt"]),
    "option without its value": (["inspect", TEACHER, STUDENT, "--data"], ["--data", "requires an argument"]),
    "temperature text": (["inspect", *PAIR, "--temperature", "hot"], ["--temperature", "hot"]),
    "alpha text": (["inspect", *PAIR, "--alpha", "most"], ["--alpha", "most"]),
    "batch size text": (["inspect", *PAIR, "--batch-size", "big"], ["--batch-size", "big"]),
    "max length text": (["inspect", *PAIR, "--max-length", "long"], ["--max-length"]),
    "probe steps text": (["inspect", *PAIR, "--probe-steps", "many"], ["--probe-steps"]),
    "probe seeds text": (["inspect", *PAIR, "--probe-seeds", "2.5"], ["--probe-seeds"]),
    "probe lr text": (["inspect", *PAIR, "--probe-lr", "fast"], ["--probe-lr"]),
    "probe batch size text": (["inspect", *PAIR, "--probe-batch-size", "x"], ["--probe-batch-size"]),
    "layout unknown": (["inspect", *PAIR, "--layout", "HWC"], ["--layout", "HWC"]),
    "ema unknown role": (["inspect", *PAIR, "--ema", "teachr"], ["--ema", "teachr"]),
    "fail-on nonsense": (["inspect", *PAIR, "--fail-on", "nonsense"], ["--fail-on", "nonsense"]),
    "fail-on above 1": (["inspect", *PAIR, "--fail-on", "2"], ["--fail-on", "[0, 1]"]),
    "normalize text": (["inspect", *PAIR, "--normalize", "a,b"], ["--normalize", "a,b"]),
    "normalize odd count": (["inspect", *PAIR, "--normalize", "0.5,0.25,0.1"], ["--normalize", "3 numbers"]),
    "normalize std 0": (["inspect", *PAIR, "--normalize", "0.5,0"], ["--normalize", "std"]),
    "resize one number": (["inspect", *PAIR, "--resize", "8"], ["--resize", "HEIGHT,WIDTH"]),
    "resize text": (["inspect", *PAIR, "--resize", "big"], ["--resize", "big"]),
    "compare temperatures text": (["compare", TEACHER, STUDENT, TEACHER, "--data", "digits:test",
                                   "--temperature", "1,x"], ["--temperature", "1,x"]),
    "compare alphas text": (["compare", TEACHER, STUDENT, TEACHER, "--data", "digits:test", "--alpha", "a"],
                            ["--alpha"]),
    "compare unknown option": (["compare", TEACHER, STUDENT, TEACHER, "--arrays"], ["--arrays"]),
    "demo unknown option": (["demo", "--teacher", TEACHER], ["--teacher"]),
    "demo fail-on nonsense": (["demo", "--fail-on", "nonsense"], ["--fail-on"]),
    "demo out without value": (["demo", "--out"], ["--out", "requires an argument"]),
    "version with an argument": (["--version", "now"], None),  # --version exits at once, 0: not a usage error
}


def test_the_corpus_covers_the_measured_cases():
    assert len(CASES) >= 29


@pytest.mark.parametrize("name", list(CASES))
def test_a_usage_error_is_one_line_with_exit_code_2(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # 'demo' would write kddiag-report here
    args, fragments = CASES[name]
    result = CliRunner().invoke(main, args)
    if fragments is None:
        assert result.exit_code == 0 and "kddiag" in result.stdout
        return
    assert result.exit_code == 2, (name, result.output)
    assert "Traceback" not in result.output and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kddiag: error: "), (name, result.stderr)
    assert "Usage:" not in result.stderr and "Try '" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (name, lines[0])
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_a_bare_kddiag_still_prints_the_help():
    result = CliRunner().invoke(main, [])
    assert "Commands:" in result.output and "inspect" in result.output
    assert "kddiag: error" not in result.output


def test_the_installed_command_names_itself_in_the_one_line():
    """As a user sees it: python -m kddiag, the hint names 'kddiag inspect --help'."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, "-m", "kddiag", "inspect", TEACHER, "--zzz"], capture_output=True,
                          text=True, timeout=120, env=env, cwd=Path(__file__).parents[1])
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "kddiag: error: No such option '--zzz'; see 'kddiag inspect --help'"], done.stderr
    assert done.stdout == ""
