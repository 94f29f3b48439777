"""Usage errors (an unknown command or option, a missing argument, a value click or a callback refuses): one
line on stderr, ``kddiag: error: ...`` naming the option, exit code 2, no traceback, nothing written."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
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


@pytest.mark.parametrize("kind, text, said", [
    ("classes", '{"names": ["a"], "groups": [' + "9" * 5001 + "]}", "not a readable JSON file (Exceeds the limit"),
    ("data", '{"path": "x.npz", "resize": [' + "9" * 5001 + ", 2]}", "not a JSON data spec (Exceeds the limit"),
    ("data", '{"path": "x.npz", "normalize": {"mean": [1e999], "std": [1]}}', "the means must be finite numbers"),
    ("data", '{"path": "x.npz", "normalize": {"mean": [' + "9" * 400 + '], "std": [1]}}',
     "the means must be finite numbers; got [99999"),
])
def test_json_numbers_beyond_what_python_converts_get_one_line(tmp_path, kind, text, said):
    """Red-team pass 2: integers of 5,001 digits (Python refuses to parse them: a ValueError, not a
    JSONDecodeError) or beyond float's range (an OverflowError in isfinite) in the classes file or a data spec."""
    from click.testing import CliRunner

    from kddiag.cli import DEMO_STUDENT, DEMO_TEACHER, main

    import numpy as np

    np.savez(tmp_path / "x.npz", x=np.zeros((4, 1, 8, 8), dtype=np.float32), y=np.arange(4))
    path = tmp_path / f"{kind}.json"
    path.write_text(text)
    args = ["inspect", str(DEMO_TEACHER), str(DEMO_STUDENT)]
    args += ["--data", "digits:test", "--classes", str(path)] if kind == "classes" else ["--data", str(path)]
    result = CliRunner().invoke(main, args)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and said in lines[0], result.stderr[-2000:]
    assert len(lines[0]) < 400


def test_terminal_escapes_in_file_names_never_reach_the_terminal(tmp_path):
    """Red-team pass 2: a teacher file named with an OSC title sequence and a screen clear was echoed raw
    in the terminal summary's inputs; now escaped as Python writes it."""
    import shutil

    from click.testing import CliRunner

    from kddiag.cli import DEMO_STUDENT, DEMO_TEACHER, main

    teacher = tmp_path / "t\x1b]0;OWNED\x07\x1b[2Jeacher.pt"
    shutil.copy(DEMO_TEACHER, teacher)
    result = CliRunner().invoke(main, ["inspect", str(teacher), str(DEMO_STUDENT), "--data", "digits:test",
                                       "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output and "\x07" not in result.output
    assert "t\\x1b]0;OWNED\\x07\\x1b[2Jeacher.pt" in result.output


def test_logits_of_more_classes_than_any_vocabulary_and_running_out_of_memory_get_one_line(tmp_path, monkeypatch):
    """Red-team pass 2: a sparse .npy of (540, 2²¹) float16 logits costs nothing on disk and gigabytes in
    the row sample; refused by its class count. Any MemoryError left is one line, not a traceback."""
    from click.testing import CliRunner

    from kddiag.cli import DEMO_STUDENT, DEMO_TEACHER, main

    path = tmp_path / "wide.npy"
    header = np.lib.format.header_data_from_array_1_0(np.zeros((1, 1), dtype=np.float16))
    header["shape"] = (540, 1 << 21)
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, header)
        handle.truncate(handle.tell() + 540 * (1 << 21) * 2)  # sparse: no blocks written
    np.savez(tmp_path / "labels.npz", y=np.zeros(540, dtype=np.int64))
    result = CliRunner().invoke(main, ["inspect", str(path), str(path), "--data", str(tmp_path / "labels.npz"),
                                       "--out", str(tmp_path / "a")])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and "2,097,152 classes, over kddiag's limit of 524,288" in lines[0]

    def exhausted(*args, **kwargs):
        raise MemoryError("Unable to allocate 2.11 GiB for an array with shape (540, 2097152) and data type float16")

    monkeypatch.setattr("kddiag.measure.measure", exhausted)
    result = CliRunner().invoke(main, ["inspect", str(DEMO_TEACHER), str(DEMO_STUDENT), "--data", "digits:test",
                                       "--out", str(tmp_path / "b")])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("kddiag: error: out of memory (Unable")
    assert not (tmp_path / "b").exists()
