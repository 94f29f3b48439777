"""The ``kddiag`` command line, end to end with click's CliRunner: every input format, every bad input."""
import importlib
import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import kddiag
from kddiag.cli import DEMO_BASELINE as BASELINE
from kddiag.cli import DEMO_DIR, main
from kddiag.cli import DEMO_STUDENT as STUDENT
from kddiag.cli import DEMO_TEACHER as TEACHER
from kddiag.readers.arrays import load_dataset
from kddiag.loading import load_model

DIGITS = ["--data", "digits:test", "--transfer-data", "digits:train"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_line_error(result, *fragments):
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kddiag: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.fixture(scope="module")
def demo_modules():
    return {role: load_model(path, role=role).module for role, path in
            (("teacher", TEACHER), ("student", STUDENT), ("baseline", BASELINE))}


@pytest.fixture(scope="module")
def formats(tmp_path_factory, demo_modules):
    """The demo pair saved in every supported format."""
    root = tmp_path_factory.mktemp("formats")
    teacher, student = demo_modules["teacher"], demo_modules["student"]
    example = (load_dataset("digits:test").x[:4],)
    dynamic = {"x": {0: torch.export.Dim("batch")}}
    paths = {}
    for role, model in (("teacher", teacher), ("student", student)):
        paths[f"{role}.pt2"] = root / f"{role}.pt2"
        torch.export.save(torch.export.export(model, example, dynamic_shapes=dynamic), paths[f"{role}.pt2"])
        paths[f"{role}_sd.pt"] = root / f"{role}_sd.pt"
        torch.save({"model": {f"module.{k}": v for k, v in model.state_dict().items()}, "epoch": 3},
                   paths[f"{role}_sd.pt"])
        data = {name: load_dataset(f"digits:{split}") for name, split in (("eval", "test"), ("transfer", "train"))}
        with torch.inference_mode():
            logits = {name: model(d.x).numpy() for name, d in data.items()}
        paths[f"{role}_logits.npz"] = root / f"{role}_logits.npz"
        np.savez(paths[f"{role}_logits.npz"], eval=logits["eval"], transfer=logits["transfer"])
    test = load_dataset("digits:test")
    paths["labels.npz"] = root / "labels.npz"
    np.savez(paths["labels.npz"], y=test.labels)
    paths["pickled.pt"] = root / "pickled.pt"
    torch.save(teacher, paths["pickled.pt"])
    return paths


def test_demo_writes_json_and_html(tmp_path):
    result = run("demo", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert set(report["metrics"]) == {"outcome", "universe", "domain", "instance"}
    assert report["findings"][0]["id"] == "teacher-overconfident", "the demo teacher was built to memorize"
    assert (tmp_path / "out" / "report.html").stat().st_size > 10_000
    assert "report.json" in result.output and report["findings"][0]["id"] in result.output


def test_inspect_demo_paths_json_output(tmp_path):
    result = run("inspect", TEACHER, STUDENT, *DIGITS, "--baseline", BASELINE, "--json", "--no-progress")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["inputs"]["settings"]["temperature"] == {"value": 1.0, "source": "checkpoint", "guessed": False}
    assert report["metrics"]["outcome"]["kd_gain"]["eval"]["value"] is not None
    assert report["metrics"]["domain"]["feature_cka"]["transfer"]["value"] is not None
    eval_file = next(f for f in report["inputs"]["files"] if f["role"] == "eval")
    assert eval_file["format"] == "builtin" and "preprocessing" not in eval_file  # inputs as stored
    assert eval_file["input_range"] == [0.0, 1.0] and 0.2 < eval_file["input_mean"] < 0.4  # pixels / 16


@pytest.mark.parametrize("pair, extra", [
    (("teacher.pt2", "student.pt2"), []),
    (("teacher_sd.pt", "student_sd.pt"), ["--teacher-arch", "mlp:64-256-256-10", "--student-arch", "mlp:64-8-10"]),
])
def test_inspect_model_formats(formats, pair, extra):
    result = run("inspect", formats[pair[0]], formats[pair[1]], *DIGITS, *extra, "--json", "--no-progress")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["inputs"]["settings"]["temperature"]["guessed"] is True
    weight_score = report["metrics"]["domain"]["weight_similarity_transfer_score"]["weights"]
    assert weight_score["value"] is not None


def test_inspect_logits_pair_marks_weight_metrics_unavailable(formats, tmp_path):
    result = run("inspect", formats["teacher_logits.npz"], formats["student_logits.npz"], *DIGITS,
                 "--temperature", "4", "--alpha", "0.9", "--json", "--out", tmp_path)
    html = (tmp_path / "report.html").read_text()
    assert "logits mode: no logit-layer weights" in html and "https://" not in html
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    files = {f["role"]: f["format"] for f in report["inputs"]["files"]}
    assert files["teacher"] == files["student"] == "logits"
    weight_score = report["metrics"]["domain"]["weight_similarity_transfer_score"]["weights"]
    assert weight_score["value"] is None and weight_score["unavailable"]
    assert report["metrics"]["outcome"]["agreement"]["eval"]["value"] > 0.8


def test_logits_pair_with_labels_only_data_file(formats):
    result = run("inspect", formats["teacher_logits.npz"], formats["student_logits.npz"],
                 "--data", formats["labels.npz"], "--json")
    assert result.exit_code == 0, result.output


def test_fail_on_severity_and_id_gate_the_exit_code(tmp_path):
    report = json.loads(run("demo", "--out", tmp_path, "--json").stdout)
    top = report["findings"][0]
    if top["id"] == "healthy":
        assert run("demo", "--out", tmp_path, "--fail-on", "0").exit_code == 0
        assert run("demo", "--out", tmp_path, "--fail-on", "capacity-gap").exit_code == 0
    else:
        assert run("demo", "--out", tmp_path, "--fail-on", top["id"]).exit_code == 3
    assert run("demo", "--out", tmp_path, "--fail-on", "nonsense").exit_code == 2


def test_fail_on_never_gates_kd_that_helped(full, monkeypatch, tmp_path):
    from report._fixtures import kd_helped

    top = full.diagnosis.findings[0].id
    for report, code in ((full, 3), (kd_helped(full, 0.016, (0.004, 0.028)), 0)):
        monkeypatch.setattr("kddiag.cli.demo_report", lambda *_, report=report, **__: report)
        for gate in ("0", top):
            assert run("demo", "--out", tmp_path, "--fail-on", gate).exit_code == code, (report.diagnosis.verdict, gate)


@pytest.mark.parametrize("make_args, fragments", [
    (lambda p: ["missing.pt", STUDENT], ["teacher", "missing.pt"]),
    (lambda p: [TEACHER, p["corrupt.pt"]], ["student", "corrupt.pt"]),
    (lambda p: [TEACHER, p["weights.xyz"]], ["student", "weights.xyz"]),
    (lambda p: [p["pickled.pt"], STUDENT], ["teacher", "--trust-pickle"]),
    (lambda p: [p["teacher_sd.pt"], STUDENT], ["teacher", "--teacher-arch"]),
    (lambda p: [TEACHER, p["three_class_logits.npy"]], ["classes"]),
    (lambda p: [TEACHER, p["nan_logits.npy"]], ["student", "NaN"]),
    (lambda p: [p["wrong_input.pt2"], STUDENT], ["teacher", "64"]),
])
def test_bad_model_inputs_give_one_line(tmp_path, formats, make_args, fragments):
    bad = dict(formats)
    (tmp_path / "corrupt.pt").write_bytes(b"\x00not a checkpoint")
    (tmp_path / "weights.xyz").write_bytes(b"something")
    np.save(tmp_path / "three_class_logits.npy", np.zeros((540, 3)))
    nan = np.zeros((540, 10))
    nan[5, 2] = np.nan
    np.save(tmp_path / "nan_logits.npy", nan)
    torch.export.save(torch.export.export(torch.nn.Linear(7, 10), (torch.zeros(2, 7),)), tmp_path / "wrong_input.pt2")
    bad.update({name: tmp_path / name for name in
                ("corrupt.pt", "weights.xyz", "three_class_logits.npy", "nan_logits.npy", "wrong_input.pt2")})
    out = tmp_path / "out"
    result = run("inspect", *make_args(bad), "--data", "digits:test", "--out", out, "--no-progress")
    assert_one_line_error(result, *fragments)
    assert not out.exists()


@pytest.mark.parametrize("write, fragments", [
    (lambda p: np.savez(p, x=np.zeros((0, 64)), y=np.zeros(0, dtype=int)), ["empty"]),
    (lambda p: np.savez(p, x=np.zeros((5, 64), dtype=np.float32), y=np.array([0, 1, 2, 3, 17])), ["label"]),
])
def test_bad_data_gives_one_line(tmp_path, write, fragments):
    path = tmp_path / "data.npz"
    write(path)
    result = run("inspect", TEACHER, STUDENT, "--data", path, "--out", tmp_path / "out", "--no-progress")
    assert_one_line_error(result, *fragments)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, fragments", [
    (["--temperature", "0"], ["--temperature"]),
    (["--alpha", "1.5"], ["--alpha"]),
    (["--data", "no-such-builtin"], ["--data"]),
])
def test_bad_options_give_one_line(args, fragments):
    data = [] if "--data" in args else ["--data", "digits:test"]
    assert_one_line_error(run("inspect", TEACHER, STUDENT, *data, *args, "--no-progress"), *fragments)


@pytest.mark.parametrize("args, fragment", [
    (["--temperature", "inf"], "--temperature must be a finite number > 0 and at most 10000; got inf"),
    (["--temperature", "nan"], "--temperature must be a finite number > 0 and at most 10000; got nan"),
    (["--temperature", "0"], "--temperature must be a finite number > 0 and at most 10000; got 0.0"),
    (["--temperature", "-1"], "--temperature must be a finite number > 0 and at most 10000; got -1.0"),
    (["--temperature", "1e308"], "--temperature must be a finite number > 0 and at most 10000; got 1e+308"),
    (["--device", "banana"], "--device must be a torch device such as cpu, cuda or cuda:1; got 'banana'"),
    (["--alpha", "2"], "--alpha must be a number in [0, 1]; got 2.0"),
    (["--batch-size", "0"], "--batch-size must be a positive integer; got 0"),
    (["--student-arch", "pkg.models:Net(28, act=torch.relu)"],
     "--student-arch 'pkg.models:Net(28, act=torch.relu)': argument act= must be a literal"),
])
def test_bad_settings_fail_before_loading_anything(tmp_path, args, fragment):
    missing = [tmp_path / "no-teacher.pt", tmp_path / "no-student.pt"]  # never opened: the option fails first
    assert_one_line_error(run("inspect", *missing, "--data", "digits:test", *args), fragment)


EXPLODING_ARCH = """
from torch import nn

FORWARD_CALLS = []


class Exploding(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        FORWARD_CALLS.append(len(x))
        raise RuntimeError("the forward pass ran")


def exploding():
    return Exploding()
"""


def test_invalid_checkpoint_temperature_fails_naming_the_file_before_any_forward_pass(tmp_path, monkeypatch):
    (tmp_path / "kd_exploding.py").write_text(EXPLODING_ARCH)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "kd_exploding", raising=False)
    exploding = importlib.import_module("kd_exploding")
    torch.save({"state_dict": exploding.exploding().state_dict()}, tmp_path / "teacher.pt")
    torch.save({"state_dict": exploding.exploding().state_dict(), "config": {"temperature": float("inf")}},
               tmp_path / "student.pt")
    arch = ["--teacher-arch", "kd_exploding:exploding", "--student-arch", "kd_exploding:exploding"]
    result = run("inspect", tmp_path / "teacher.pt", tmp_path / "student.pt", *arch, "--data", "digits:test",
                 "--no-progress")
    assert_one_line_error(result, f"the temperature stored in checkpoint '{tmp_path / 'student.pt'}' must be a "
                                  f"finite number > 0 and at most 10000; got inf")
    assert exploding.FORWARD_CALLS == []
    sys.modules.pop("kd_exploding", None)


def test_no_data_gives_one_line():
    assert_one_line_error(run("inspect", TEACHER, STUDENT), "--data")


def test_out_is_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    assert_one_line_error(run("inspect", TEACHER, STUDENT, "--data", "digits:test", "--out", tmp_path / "file",
                              "--no-progress"), "--out")


def test_failed_render_leaves_no_partial_output(tmp_path, monkeypatch):
    import kddiag.report.html as html

    def broken(report):
        raise RuntimeError("renderer broke")

    monkeypatch.setattr(html, "render_html", broken)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        CliRunner().invoke(main, ["demo", "--out", str(out)], catch_exceptions=False)
    assert not out.exists() or not any(out.iterdir())


def test_version_and_help_are_fast_imports():
    assert run("--version").exit_code == 0
    assert "inspect" in run("--help").output


def test_help_points_to_the_case_studies_outside_the_package():
    result = run("--help")
    assert "case-study" not in result.output
    assert "python -m case_studies NAME" in " ".join(result.output.split())
    assert run("case-study", "--list").exit_code == 2


def test_the_package_never_imports_case_studies():
    sources = Path(kddiag.__file__).parent.rglob("*.py")
    importing = [path.name for path in sources if re.search(r"^\s*(from|import) case_studies", path.read_text(), re.M)]
    assert importing == []


def test_demo_checkpoints_are_package_data_with_arch_and_settings():
    assert not any(DEMO_DIR.joinpath(name).is_file() for name in ("__init__.py", "build.py"))
    checkpoints = {role: torch.load(path, map_location="cpu", weights_only=True)
                   for role, path in (("teacher", TEACHER), ("student", STUDENT), ("baseline", BASELINE))}
    assert {role: c["arch"] for role, c in checkpoints.items()} == {
        "teacher": "mlp:64-256-256-10", "student": "mlp:64-8-10", "baseline": "mlp:64-8-10"}
    assert (checkpoints["student"]["temperature"], checkpoints["student"]["alpha"]) == (1.0, 0.9)


def test_classes_file_names_and_groups_reach_the_report(tmp_path):
    classes = tmp_path / "classes.json"
    classes.write_text(json.dumps({"names": [f"digit {k}" for k in range(10)], "groups": [0, 1, 1, 0, 1, 1, 0, 1, 0, 0]}))
    result = run("inspect", TEACHER, STUDENT, "--data", "digits:test", "--classes", classes, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["inputs"]["class_names"][3] == "digit 3"
    assert report["metrics"]["domain"]["teacher_group_recovery"]["eval"]["value"] is not None


@pytest.mark.parametrize("content, fragments", [
    (None, ["--classes", "no such file"]),
    ('{"names": ["a", "b"]}', ["--classes", "2 class names", "10 classes"]),
])
def test_bad_classes_file_gives_one_line(tmp_path, content, fragments):
    classes = tmp_path / "classes.json"
    if content is not None:
        classes.write_text(content)
    assert_one_line_error(run("inspect", TEACHER, STUDENT, "--data", "digits:test", "--classes", classes), *fragments)


def test_inspect_is_deterministic(tmp_path):
    first, second = (run("demo", "--out", tmp_path / name, "--json").stdout for name in ("a", "b"))
    assert json.loads(first) == json.loads(second)


def test_an_unwritable_out_is_refused_before_any_model_is_loaded(tmp_path):
    (tmp_path / "taken").write_text("a file")
    for out, fragment in ((tmp_path / "taken", "exists and is not a directory"),
                          (tmp_path / "taken" / "report", "is a file, not a directory")):
        result = run("inspect", tmp_path / "missing-teacher.pt", tmp_path / "missing-student.pt",
                     "--data", "digits:test", "--out", out)
        assert_one_line_error(result, "--out", fragment)  # not the missing model files


def test_library_warnings_never_reach_the_terminal(monkeypatch):
    import warnings

    from kddiag import pipeline
    from kddiag.errors import KddiagError

    def noisy(*args, **kwargs):
        warnings.warn("TypedStorage is deprecated", UserWarning)
        warnings.warn("overflow encountered in exp", RuntimeWarning)
        raise KddiagError("data 'x.pt': the data set is empty (0 labels)")

    monkeypatch.setattr(pipeline, "inspect", noisy)
    monkeypatch.setattr(sys, "warnoptions", [])
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        result = run("inspect", "t.pt", "s.pt", "--data", "x.pt")
    assert_one_line_error(result, "the data set is empty")
    assert shown == []  # none reached Python's warning display (the terminal, outside tests)


def test_python_dash_m_kddiag_is_the_same_command():
    import subprocess

    result = subprocess.run([sys.executable, "-m", "kddiag", "--version"], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0 and result.stdout.strip() == f"kddiag, version {kddiag.__version__}"


def test_the_program_ends_without_teardown_yet_flushes_its_output_and_keeps_its_exit_code():
    """The command ends with os._exit once done (the interpreter's teardown of torch took up to 1 s): what it
    printed still arrives whole through a pipe, exit handlers run, and usage errors keep exit code 2."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    helped = subprocess.run([sys.executable, "-m", "kddiag", "inspect", "--help"], capture_output=True, text=True,
                            cwd=root)
    assert helped.returncode == 0 and "--probe" in helped.stdout
    assert helped.stdout.rstrip().endswith("Show this message and exit.")  # the last line arrived
    marked = subprocess.run([sys.executable, "-c", "import atexit, sys; atexit.register(lambda: print('bye')); "
                             "from kddiag.cli import main; import __main__; __main__.main = main; "
                             "main(['--version'], prog_name='kddiag')"],
                            capture_output=True, text=True, cwd=root)
    assert marked.returncode == 0 and marked.stdout.split() == ["kddiag,", "version", kddiag.__version__, "bye"]
    wrong = subprocess.run([sys.executable, "-m", "kddiag", "inspect", "--nope"], capture_output=True, text=True,
                           cwd=root)
    assert wrong.returncode == 2 and "--nope" in wrong.stderr


RANDOM_BYTES = bytes(np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8))


@pytest.mark.parametrize("name, role, fragments", [
    ("random.pt", "model", ["teacher checkpoint", "random.pt", "not a readable PyTorch file", "corrupt"]),
    ("random.pth", "model", ["random.pth", "not a readable PyTorch file"]),
    ("random.npz", "model", ["random.npz", "not a .npz", "does not start like one"]),
    ("random.npy", "model", ["random.npy", "not a .npy", "does not start like one"]),
    ("random.npz", "data", ["--data", "random.npz", "not a .npz", "does not start like one"]),
    ("random.pt", "data", ["--data", "random.pt", "not a readable tensor file"]),
    ("objects.npz", "model", ["objects.npz", "Python objects", "never unpickles"]),
    ("objects.npz", "data", ["--data", "objects.npz", "Python objects"]),
])
def test_corrupt_files_are_called_corrupt_never_pointed_at_unsafe_options(tmp_path, name, role, fragments):
    path = tmp_path / name
    if name.startswith("objects"):
        with open(path, "wb") as handle:  # an object array, written the way numpy writes pickled arrays
            np.savez(handle, logits=np.array([{"a": 1}, None], dtype=object), x=np.array([[1], [2]], dtype=object))
    else:
        path.write_bytes(RANDOM_BYTES)
    args = [path, STUDENT, "--data", "digits:test"] if role == "model" else [TEACHER, STUDENT, "--data", path]
    result = run("inspect", *args, "--out", tmp_path / "out", "--no-progress")
    assert_one_line_error(result, *fragments)
    assert "--trust-pickle" not in result.stderr and "allow_pickle" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_arrays_need_an_out_directory_and_land_beside_the_report(tmp_path):
    no_out = run("inspect", TEACHER, STUDENT, "--data", "digits:test", "--arrays", "--no-progress")
    assert_one_line_error(no_out, "--arrays", "--out")
    result = run("demo", "--out", tmp_path, "--arrays")
    assert result.exit_code == 0, result.output
    with np.load(tmp_path / "report-arrays.npz") as arrays:
        assert arrays["domain.teacher_output_similarity@transfer"].shape == (10, 10)


MODELS_PY = """
from kddiag.models import MLP


class DigitsNet(MLP):
    \"\"\"The demo student's architecture, its hidden width a required argument.\"\"\"

    def __init__(self, hidden, *, n_classes=10):
        super().__init__((64, hidden, n_classes))
"""


@pytest.fixture
def bare(tmp_path, demo_modules):
    """The demo student and baseline as bare state dicts: no stored arch, so --*-arch must build them."""
    paths = {}
    for role in ("student", "baseline"):
        paths[role] = tmp_path / f"{role}.pt"
        torch.save({"state_dict": demo_modules[role].state_dict()}, paths[role])
    (tmp_path / "models.py").write_text(MODELS_PY)
    return paths


@pytest.mark.parametrize("arch", ["kddiag.models:MLP((64, 8, 10))", "{dir}/models.py:DigitsNet(8)",
                                  "{dir}/models.py:DigitsNet(hidden=8, n_classes=10)"])
def test_arch_with_arguments_and_baseline_arch_from_the_student(tmp_path, bare, arch):
    arch = arch.format(dir=tmp_path)
    result = run("inspect", TEACHER, bare["student"], "--baseline", bare["baseline"], *DIGITS,
                 "--student-arch", arch, "--json", "--no-progress")  # no --baseline-arch
    assert result.exit_code == 0, result.output
    files = {f["role"]: f for f in json.loads(result.stdout)["inputs"]["files"]}
    assert files["baseline"]["path"] == os.path.relpath(bare["baseline"])  # reports: relative to the working dir
    assert files["baseline"]["format"] == "state_dict"


def test_baseline_arch_default_through_the_python_api(tmp_path, bare, demo_modules):
    from kddiag.errors import KddiagError
    from kddiag.options import InspectOptions

    options = InspectOptions(student_arch=f"{tmp_path}/models.py:DigitsNet(8)")
    report = kddiag.inspect(str(TEACHER), str(bare["student"]), baseline=str(bare["baseline"]),
                            data="digits:test", options=options)
    assert report.measurements.outcome.eval.kd_gain.value is not None
    with pytest.raises(KddiagError, match=r"baseline checkpoint '.*baseline\.pt': holds a state dict"):
        kddiag.inspect(str(TEACHER), str(STUDENT), baseline=str(bare["baseline"]), data="digits:test")


def test_ema_weights_and_how_the_checkpoint_was_read_reach_the_report(tmp_path, demo_modules):
    """A timm-style student checkpoint: raw and EMA weights, its KD arguments in an argparse.Namespace."""
    import argparse

    student = demo_modules["student"]
    ema = {k: v + 0.01 for k, v in student.state_dict().items()}
    args = argparse.Namespace(model="mlp", kd_model_name="teacher", kd_temperature=2.0, task_loss_weight=0.1,
                              distill_loss_weight=None)
    path = tmp_path / "model_best.pth.tar"
    torch.save({"epoch": 9, "arch": "mlp:64-8-10", "version": 2, "args": args, "state_dict": student.state_dict(),
                "state_dict_ema": ema, "metric": 90.0}, path)
    reports = {}
    for extra in ([], ["--ema", "student"]):
        result = run("inspect", TEACHER, path, *DIGITS, "--json", "--no-progress", *extra)
        assert result.exit_code == 0, result.output
        reports[bool(extra)] = json.loads(result.stdout)
    settings = reports[False]["inputs"]["settings"]
    assert settings["temperature"]["value"] == 2.0 and settings["alpha"]["value"] == pytest.approx(0.9)
    notes = {ema: next(f for f in r["inputs"]["files"] if f["role"] == "student")["notes"] for ema, r in reports.items()}
    assert "pass --ema student to use them" in notes[False][0]
    assert notes[True][0] == "weights: EMA weights from 'state_dict_ema' (asked for with --ema student)"
    text = run("inspect", TEACHER, path, *DIGITS, "--no-progress").stdout
    assert "the file also holds EMA weights in 'state_dict_ema'" in " ".join(text.split())


def test_an_io_error_is_one_line_naming_the_file(monkeypatch):
    """Red-team pass 3: a weights file whose read failed with EIO ended in a 44-line traceback."""
    import errno

    from click.testing import CliRunner

    import kddiag.loading
    from kddiag.cli import DEMO_STUDENT, DEMO_TEACHER, main

    def fails(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error", "model.safetensors")

    monkeypatch.setattr(kddiag.loading, "load_model", fails)
    result = CliRunner().invoke(main, ["inspect", str(DEMO_TEACHER), str(DEMO_STUDENT), "--data", "digits:test"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.strip() == "kddiag: error: 'model.safetensors': Input/output error"


@pytest.mark.parametrize("error, said", [
    (RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you "
                  "tried to allocate 6480000000 bytes. Error code 12 (Cannot allocate memory)"),
     "out of memory (6,480,000,000 bytes asked for); nothing was written"),
    (MemoryError(), "out of memory; nothing was written")])
def test_running_out_of_memory_is_one_line(monkeypatch, error, said):
    """Red-team pass 3: torch's allocator failure was a 50-line traceback; an empty MemoryError read '()'."""
    import kddiag.loading
    from kddiag.cli import DEMO_STUDENT, DEMO_TEACHER, main

    def fails(*args, **kwargs):
        raise error

    monkeypatch.setattr(kddiag.loading, "load_model", fails)
    result = CliRunner().invoke(main, ["inspect", str(DEMO_TEACHER), str(DEMO_STUDENT), "--data", "digits:test"])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1 and said in result.output
