"""Options that would do nothing are refused, degenerate data gets "not enough data" and no verdict, the report
pair changes together even when the process is killed at any step, reports name files relative to the
working directory, a failing torchrun rank prints one line, and the Python API names a wrong argument."""
import builtins
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import kddiag
from kddiag.cli import DEMO_BASELINE, DEMO_STUDENT, DEMO_TEACHER, main
from kddiag.errors import KddiagError
from kddiag.report.json import check_writable, write_atomic, write_report_files
from kddiag.options import InspectOptions

ROOT = Path(__file__).parents[1]
TEACHER, STUDENT, BASELINE = str(DEMO_TEACHER), str(DEMO_STUDENT), str(DEMO_BASELINE)
DIGITS = ["--data", "digits:test"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(result, *fragments):
    """The result is exit code 1 with one 'kddiag: error:' line holding every fragment; returns the line."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kddiag: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def programs(tmp_path_factory):
    """The demo teacher and baseline as torch.export programs, and the teacher's logits as integers."""
    from kddiag.readers.arrays import load_dataset
    from kddiag.loading import load_model

    root = tmp_path_factory.mktemp("programs")
    example = (load_dataset("digits:test").x[:4],)
    for role, path in (("teacher", TEACHER), ("baseline", BASELINE)):
        module = load_model(path, role=role).module
        program = torch.export.export(module, example, dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
        torch.export.save(program, root / f"{role}.pt2")
    return root


# --- options that do nothing --------------------------------------------------------------------------

def _image_folder(root: Path) -> Path:
    from PIL import Image

    for name in ("a/1.png", "b/2.png"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / name)
    return root


def test_layout_for_an_image_folder_is_refused_from_the_option_and_from_a_spec(tmp_path):
    from kddiag.readers.arrays import load_dataset
    from kddiag.options import ImageOptions

    folder = _image_folder(tmp_path / "images")
    with pytest.raises(KddiagError, match=r"^--data '.*images': --layout is the axis order of 4-D image arrays.*"
                                          r"Pillow.*leave --layout out"):
        load_dataset(str(folder), images=ImageOptions(layout="NHWC"))
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"path": "images", "layout": "NCHW"}))
    with pytest.raises(KddiagError, match=r"^--data '.*spec.json': 'layout' is the axis order .* 'images' is an image "
                                          r"folder"):
        load_dataset(str(spec))
    np.savez(tmp_path / "gray.npz", x=np.zeros((4, 8, 8), np.uint8), y=np.arange(4) % 2)  # (n, H, W): no channel axis
    with pytest.raises(KddiagError, match=r"gray.npz': the layout \(NHWC\) .* \(n, H, W\), one channel"):
        load_dataset(str(tmp_path / "gray.npz"), images=ImageOptions(layout="NHWC"))
    assert load_dataset(str(folder)).x.shape == (2, 3, 8, 8)  # without the option: read as before


def test_layout_for_an_image_folder_on_the_command_line(tmp_path):
    folder = _image_folder(tmp_path / "images")
    one_line_error(run("inspect", TEACHER, STUDENT, "--data", folder, "--layout", "NHWC", "--out", tmp_path / "out"),
                   "--data", "images", "--layout")
    assert not (tmp_path / "out").exists()


def test_max_length_without_a_hugging_face_teacher_is_refused(tmp_path):
    one_line_error(run("inspect", TEACHER, STUDENT, *DIGITS, "--max-length", "32", "--out", tmp_path / "out"),
                   "--max-length", "teacher", "leave the option out")
    assert not (tmp_path / "out").exists()


def test_an_architecture_for_a_model_that_brings_its_own_is_refused(programs, tmp_path):
    one_line_error(run("inspect", programs / "teacher.pt2", STUDENT, *DIGITS, "--teacher-arch", "mlp:64-256-256-10"),
                   "--teacher-arch", "teacher.pt2", "a torch.export program")
    one_line_error(run("inspect", TEACHER, programs / "teacher.pt2", *DIGITS, "--student-arch", "mlp:64-8-10"),
                   "--student-arch", "a torch.export program")
    one_line_error(run("inspect", TEACHER, STUDENT, *DIGITS, "--baseline", programs / "baseline.pt2",
                       "--baseline-arch", "mlp:64-8-10"), "--baseline-arch", "baseline.pt2")
    logits = tmp_path / "logits.npy"
    np.save(logits, np.random.default_rng(0).normal(size=(540, 10)))
    one_line_error(run("inspect", logits, STUDENT, *DIGITS, "--teacher-arch", "mlp:64-10"),
                   "--teacher-arch", "precomputed logits")
    with pytest.raises(KddiagError, match="teacher_arch builds the model a state dict belongs to"):
        kddiag.Monitor(torch.nn.Linear(4, 3), data=(torch.zeros(6, 4), torch.arange(6) % 3), teacher_arch="mlp:4-3")


def test_the_student_architecture_a_baseline_program_inherits_is_not_an_error(programs):
    """--baseline-arch defaults to --student-arch: a default the baseline does not need is fine."""
    report = kddiag.inspect(TEACHER, STUDENT, baseline=str(programs / "baseline.pt2"), data="digits:test",
                            options=InspectOptions(student_arch="mlp:64-8-10"))
    assert {info.role: info.format for info in report.inputs}["baseline"] == "torch.export"


def test_baseline_options_without_a_baseline_are_refused():
    for options, option in ((InspectOptions(ema=("baseline",)), "--ema baseline"),
                            (InspectOptions(baseline_arch="mlp:64-8-10"), "--baseline-arch")):
        with pytest.raises(KddiagError, match=f"^{option} was given but no baseline"):
            kddiag.inspect(TEACHER, STUDENT, data="digits:test", options=options)
        with pytest.raises(KddiagError, match=f"^{option} was given but no baseline"):
            kddiag.compare(TEACHER, [STUDENT, TEACHER], data="digits:test", options=options)
    one_line_error(run("inspect", TEACHER, STUDENT, *DIGITS, "--ema", "baseline"), "--ema baseline", "--baseline")


def test_the_same_student_twice_is_refused(tmp_path):
    link = tmp_path / "again.pt"
    link.symlink_to(STUDENT)
    one_line_error(run("compare", TEACHER, STUDENT, BASELINE, STUDENT, *DIGITS),
                   "students 1 and 3 are the same file", "give each student once")
    one_line_error(run("compare", TEACHER, STUDENT, link, *DIGITS), "students 1 and 2 are the same file", "again.pt")
    module = torch.nn.Linear(64, 10)
    with pytest.raises(KddiagError, match=r"students 1 and 2 are the same model \(one object given twice\)"):
        kddiag.compare(TEACHER, {"a": module, "b": module}, data="digits:test")


def test_integer_logits_are_refused(tmp_path):
    for name, dtype in (("ints.npy", np.int64), ("flags.npy", bool)):
        np.save(tmp_path / name, np.eye(540, 10, dtype=dtype))
        one_line_error(run("inspect", TEACHER, tmp_path / name, *DIGITS), name, "whole numbers", "floating point")
    np.savez(tmp_path / "sets.npz", eval=np.zeros((540, 10), np.int32))
    one_line_error(run("inspect", TEACHER, tmp_path / "sets.npz", *DIGITS), "sets.npz",
                   "eval logits are whole numbers (int32)")


# --- text labels against the model's id2label, unknown words ---------------------------------------------

@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    pytest.importorskip("transformers")
    from test_hf_inspect import save_tokenizer

    directory = tmp_path_factory.mktemp("tokenizer")
    save_tokenizer(directory)
    return directory


def _jsonl(path: Path, records) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return path


def test_label_names_map_to_the_ids_of_the_models_id2label(tmp_path, tokenizer_dir):
    from kddiag.readers.text import load_text_dataset

    path = _jsonl(tmp_path / "val.jsonl", [{"text": "the cat sat", "label": name}
                                           for name in ("pos", "neg", "mid", "pos")])
    model = {0: "neg", 1: "pos", 2: "mid"}  # sorted order would give mid 0, neg 1, pos 2
    dataset = load_text_dataset(path, role="data", task="sequence-classification", tokenizer_dir=tokenizer_dir,
                                id2label=model)
    assert dataset.labels.tolist() == [1, 0, 2, 1]
    assert dataset.class_info.names == ("neg", "pos", "mid")
    assert "mapped to the model's ids by its config's id2label" in dataset.preprocessing
    shouting = load_text_dataset(path, role="data", task="sequence-classification", tokenizer_dir=tokenizer_dir,
                                 id2label={0: "NEG", 1: "POS", 2: "MID"})
    assert shouting.labels.tolist() == [1, 0, 2, 1]
    with pytest.raises(KddiagError, match=r"val.jsonl': label 'mid' is not one of the model's classes \(its config's "
                                          r"id2label: 0=neg, 1=pos\)"):
        load_text_dataset(path, role="data", task="sequence-classification", tokenizer_dir=tokenizer_dir,
                          id2label={0: "neg", 1: "pos"})
    unnamed = load_text_dataset(path, role="data", task="sequence-classification", tokenizer_dir=tokenizer_dir,
                                id2label={0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"})
    assert unnamed.labels.tolist() == [2, 1, 0, 2]  # sorted order, and the report says why
    assert "sorted order" in unnamed.preprocessing and "names no classes" in unnamed.preprocessing


def test_a_classifier_with_named_classes_reads_jsonl_names_by_its_id2label(tmp_path, tokenizer_dir):
    from transformers import BertConfig, BertForSequenceClassification

    from test_hf_inspect import save_tokenizer

    names = {0: "neg", 1: "pos", 2: "mid"}
    for role, width in (("teacher", 16), ("student", 8)):
        save_tokenizer(tmp_path / role)
        torch.manual_seed(width)
        config = BertConfig(vocab_size=17, hidden_size=width, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=2 * width, max_position_embeddings=32, num_labels=3, id2label=names,
                            label2id={v: k for k, v in names.items()})
        BertForSequenceClassification(config).save_pretrained(tmp_path / role)
    rng = np.random.default_rng(0)
    words = "the cat dog sat ran on a mat".split()
    data = _jsonl(tmp_path / "val.jsonl", [{"text": " ".join(rng.choice(words, 4)), "label": names[k % 3]}
                                           for k in range(30)])
    report = kddiag.inspect(str(tmp_path / "teacher"), str(tmp_path / "student"), data=str(data))
    assert report.class_info.names == ("neg", "pos", "mid")
    preprocessing = {info.role: info.preprocessing for info in report.inputs}["eval"]
    assert "by its config's id2label (0=neg, 1=pos, 2=mid)" in preprocessing


def test_text_with_no_known_word_is_not_enough_data(tmp_path, tokenizer_dir):
    from kddiag.readers.text import load_text_dataset

    unknown = _jsonl(tmp_path / "alien.jsonl", [{"text": "zorp blix quab"}, {"text": "frell"}])
    with pytest.raises(KddiagError, match=r"alien.jsonl': not enough data: every word is out of the tokenizer's "
                                          r"vocabulary \(all 4 tokens are its unknown token '\[UNK\]'\)"):
        load_text_dataset(unknown, role="data", task="causal-lm", tokenizer_dir=tokenizer_dir)
    some = _jsonl(tmp_path / "some.jsonl", [{"text": "the cat zorp"}, {"text": "a dog sat"}])
    dataset = load_text_dataset(some, role="data", task="causal-lm", tokenizer_dir=tokenizer_dir)
    assert "1 of 6 tokens (16.7%) are the unknown token '[UNK]'" in dataset.preprocessing


# --- degenerate data --------------------------------------------------------------------------------------

def test_one_class_is_not_enough_data_and_gives_no_verdict(tmp_path):
    from kddiag.readers.arrays import load_dataset

    digits = load_dataset("digits:test")
    np.savez(tmp_path / "threes.npz", x=digits.x.numpy(), y=np.full(len(digits.labels), 3))
    line = one_line_error(run("inspect", TEACHER, STUDENT, "--data", tmp_path / "threes.npz", "--out",
                              tmp_path / "out", "--json"), "threes.npz", "not enough data", "every label is class 3")
    assert "540 of 540 examples" in line
    assert not (tmp_path / "out").exists()
    one_line_error(run("inspect", TEACHER, STUDENT, "--data", "digits:test", "--transfer-data",
                       tmp_path / "threes.npz"), "--transfer-data", "not enough data")
    with pytest.raises(KddiagError, match=r"^data '<monitor data>': not enough data: every label is class 0"):
        kddiag.Monitor(torch.nn.Linear(4, 3), data=(torch.zeros(6, 4), torch.zeros(6, dtype=torch.long)))


# --- the report pair, together or not at all -----------------------------------------------------------------

OLD = {"report.json": "old json", "report.html": "old html", "report-arrays.npz": b"old arrays",
       "monitor.json": "monitor json"}
NEW = {"report.json": "new json", "report.html": "new html"}
_WATCHED = [(os, name) for name in ("rename", "replace", "link", "chmod", "unlink", "rmdir", "mkdir", "listdir",
                                    "open")] + [(builtins, "open")]


def _state(out: Path) -> str:
    """'old' or 'new' when the report pair is whole and of one run, 'none' when out is gone; else a failure."""
    if not out.exists():
        return "none"
    files = {p.name: p.read_bytes() for p in out.iterdir()}
    assert files.get("monitor.json") == b"monitor json", files  # kddiag's other report is kept throughout
    kinds = {name: files[name].split()[0].decode() for name in NEW if name in files}
    assert len(kinds) == 2 and len(set(kinds.values())) == 1, f"a mixed or partial pair: {files}"
    state = next(iter(kinds.values()))
    assert ("report-arrays.npz" in files) == (state == "old"), files  # an earlier run's arrays go with its pair
    return state


def _killed_at(step: int, out: Path) -> bool:
    """Run write_report_files in a child that dies (os._exit) just before its ``step``-th file-system call;
    whether it died (False: the write finished first)."""
    child = os.fork()
    if child == 0:
        calls = [0]

        def counted(real):
            def call(*args, **kwargs):
                calls[0] += 1
                if calls[0] == step:
                    os._exit(9)
                return real(*args, **kwargs)
            return call

        try:
            for module, name in _WATCHED:
                setattr(module, name, counted(getattr(module, name)))
            write_report_files(out, NEW, replaces=("report.json", "report.html", "report-arrays.npz"))
        finally:
            os._exit(0)
    _, status = os.waitpid(child, 0)
    return os.waitstatus_to_exitcode(status) == 9


@pytest.mark.skipif(not hasattr(os, "fork"), reason="kills a forked writer")
def test_the_report_pair_changes_together_when_killed_at_any_step(tmp_path):
    out = tmp_path / "runs" / "report"
    seen = set()
    for step in range(1, 200):
        shutil.rmtree(tmp_path / "runs", ignore_errors=True)
        write_atomic({out / name: content for name, content in OLD.items()})
        killed = _killed_at(step, out)
        seen.add(_state(out))
        if not killed:
            break
        write_report_files(out, NEW, replaces=("report.json", "report.html", "report-arrays.npz"))  # the next run
        assert _state(out) == "new"
        assert os.listdir(out.parent) == ["report"], os.listdir(out.parent)  # nothing the killed run left
    else:
        pytest.fail("the write never finished")
    assert step > 10 and seen == {"old", "none", "new"}, (step, seen)


def test_a_failed_write_keeps_the_earlier_report_and_leaves_nothing(tmp_path, monkeypatch):
    out = tmp_path / "report"
    write_report_files(out, {"report.json": "old json", "report.html": "old html"}, replaces=("report.json",))
    real, failed = os.rename, []

    def full_disk(source, destination):  # the new folder's rename into place fails, once
        if Path(destination) == out and not failed:
            failed.append(source)
            raise OSError(28, "No space left on device")
        return real(source, destination)

    monkeypatch.setattr(os, "rename", full_disk)
    with pytest.raises(OSError):
        write_report_files(out, NEW, replaces=("report.json", "report.html"))
    assert os.listdir(tmp_path) == ["report"] and (out / "report.json").read_text() == "old json"


def test_the_report_folder_must_be_kddiags_own(tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "notes.txt").write_text("mine")
    one_line_error(run("inspect", TEACHER, STUDENT, *DIGITS, "--out", shared), "--out", "notes.txt",
                   "replaced as a whole")
    assert os.listdir(shared) == ["notes.txt"]
    monkeypatch.chdir(shared)
    with pytest.raises(KddiagError, match=r"^--out '\.': the working directory"):
        check_writable(".")
    with pytest.raises(KddiagError, match="the working directory"):
        check_writable("..")
    ours = tmp_path / "ours"
    write_report_files(ours, {"monitor.json": "{}", "monitor.html": ""}, replaces=("monitor.json", "monitor.html"))
    assert check_writable(ours) == ours  # a folder kddiag wrote: fine


def test_a_killed_writes_temporary_files_are_removed_by_the_next_write(tmp_path):
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(done.stdout)
    (tmp_path / f".result.json.{dead}-abc123.tmp").write_text("half")
    (tmp_path / f".report.kddiag-{dead}-xyz").mkdir()
    (tmp_path / f".report.kddiag-{dead}-xyz" / "report.json").write_text("half")
    (tmp_path / f".result.json.{os.getpid()}-live.tmp").write_text("a write under way")  # a live writer's
    write_atomic({tmp_path / "result.json": "{}"})
    write_report_files(tmp_path / "report", NEW, replaces=("report.json", "report.html"))
    assert sorted(os.listdir(tmp_path)) == sorted([f".result.json.{os.getpid()}-live.tmp", "report", "result.json"])


# --- paths in reports -----------------------------------------------------------------------------------------

def test_reports_name_files_relative_to_the_working_directory_unless_full_paths(tmp_path, monkeypatch):
    models = tmp_path / "models"
    models.mkdir()
    for path in (TEACHER, STUDENT):
        shutil.copy(path, models)
    monkeypatch.chdir(tmp_path)
    teacher, student = str(models / "teacher.pt"), str(models / "student.pt")  # given as absolute paths
    result = run("inspect", teacher, student, *DIGITS, "--out", "out", "--json")
    assert result.exit_code == 0, result.output
    files = {f["role"]: f["path"] for f in json.loads(result.stdout)["inputs"]["files"]}
    assert files["teacher"] == os.path.join("models", "teacher.pt") and files["student"] == "models/student.pt"
    for name in ("report.json", "report.html"):
        assert str(tmp_path) not in (tmp_path / "out" / name).read_text()
    result = run("inspect", "models/teacher.pt", "models/student.pt", *DIGITS, "--out", "full", "--json",
                 "--full-paths")
    files = {f["role"]: f["path"] for f in json.loads(result.stdout)["inputs"]["files"]}
    assert files["teacher"] == str(models / "teacher.pt")
    assert str(models / "student.pt") in (tmp_path / "full" / "report.html").read_text()


def test_students_of_one_file_name_are_told_apart_by_relative_folders(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        np.save(tmp_path / folder / "student.npy", rng.normal(size=(540, 10)))
    monkeypatch.chdir(tmp_path)
    students = [str(tmp_path / folder / "student.npy") for folder in ("a", "b")]
    assert kddiag.compare(TEACHER, students, data="digits:test").names == ("a/student", "b/student")
    full = kddiag.compare(TEACHER, students, data="digits:test", options=InspectOptions(full_paths=True))
    assert full.names == tuple(str(Path(s).with_suffix("")) for s in students)


def test_the_committed_demo_report_names_no_machine_path():
    html = (ROOT / "docs" / "demo-report.html").read_text()
    assert "kddiag/demo/teacher.pt" in html and str(ROOT) + "/" not in html
    assert "teacher: /" not in html


# --- torchrun: one failing rank -------------------------------------------------------------------------------

def test_a_failing_rank_prints_one_line_and_no_traceback(tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if torchrun is None:
        pytest.skip("torchrun is not installed beside this Python")
    rng = np.random.default_rng(0)
    n = 9000  # rank 0 gets the first 8,192 examples (one statistics chunk), rank 1 the rest
    np.savez(tmp_path / "eval.npz", x=rng.normal(size=(n, 4)).astype(np.float32), y=rng.integers(0, 5, n))
    teacher = rng.normal(size=(n, 5))
    teacher[8500, 2] = np.nan  # only rank 1 reads it
    np.save(tmp_path / "t.npy", teacher)
    np.save(tmp_path / "s.npy", rng.normal(size=(n, 5)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([torchrun, "--standalone", "--nproc-per-node", "2", "-m", "kddiag", "inspect",
                           str(tmp_path / "t.npy"), str(tmp_path / "s.npy"), "--data", str(tmp_path / "eval.npz"),
                           "--batch-size", "64", "--out", str(tmp_path / "out")],
                          env=env, capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("kddiag: error: ")]
    assert any(line.startswith("kddiag: error: rank 1 of 2: ") and "t.npy" in line and "NaN" in line
               for line in errors), done.stderr
    assert len(errors) <= 2 and all(line.startswith("kddiag: error: rank ") for line in errors), errors
    assert not any(line.startswith("[rank") for line in done.stderr.splitlines()), done.stderr  # no rank traceback
    assert "FAILED" in done.stderr  # torchrun's own summary
    assert not (tmp_path / "out").exists()


# --- the Python API -------------------------------------------------------------------------------------------

def test_wrong_argument_types_name_the_parameter():
    with pytest.raises(KddiagError, match=r"^options: expected a kddiag.options.InspectOptions: build one from it, "
                                          r"InspectOptions\(\*\*options\); got dict"):
        kddiag.inspect(TEACHER, STUDENT, data="digits:test", options={"temperature": 4.0})
    with pytest.raises(KddiagError, match=r"^options: expected a kddiag.options.InspectOptions; got str"):
        kddiag.compare(TEACHER, [STUDENT, BASELINE], data="digits:test", options="fast")
    with pytest.raises(KddiagError, match=r"^temperatures: expected a list of numbers, one per student; got float"):
        kddiag.compare(TEACHER, [STUDENT, BASELINE], data="digits:test", temperatures=4.0)
    with pytest.raises(KddiagError, match=r"^InspectOptions.trust_pickle must be True or False; got 'yes'"):
        InspectOptions(trust_pickle="yes")
    with pytest.raises(KddiagError, match=r"^InspectOptions.classes must be a string or None; got int"):
        InspectOptions(classes=3)


def test_an_empty_monitor_says_it_has_no_report(tmp_path):
    monitor = kddiag.Monitor(torch.nn.Linear(4, 3), data=(torch.randn(6, 4), torch.arange(6) % 3), every=10)
    monitor.step(torch.nn.Linear(4, 3))  # step 0 is measured: a record
    fresh = kddiag.Monitor(torch.nn.Linear(4, 3), data=(torch.randn(6, 4), torch.arange(6) % 3), every=10)
    with pytest.raises(KddiagError, match=r"^write_report: the monitor has measured nothing yet .*every=10.* call "
                                          r"step\(student\) or check\(student\) first"):
        fresh.write_report(tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert sorted(monitor.write_report(tmp_path / "out")) == ["html", "json"]
