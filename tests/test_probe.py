"""Remedy probes: candidates, the paired comparison, determinism and bad inputs."""
import numpy as np
import pytest
import torch

from kddiag.errors import KddiagError
from kddiag.metrics.whatif import TEMPERATURES
from kddiag.models import MLP
from kddiag.probe import Candidate, candidates_for, compare_arms, fresh_state, run_probes
from kddiag.inputs import Dataset, LoadedModel
from kddiag.options import ProbeOptions, Setting, Settings


def _settings(tau=4.0, alpha=0.9):
    return Settings(Setting(tau, "cli"), Setting(alpha, "cli"))


def _pair(seed=0, n=240):
    """A teacher trained a little on separable blobs, an untrained student, and the two sets."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(4, 6)) * 3
    y = rng.integers(0, 4, size=n)
    x = torch.as_tensor(centres[y] + rng.normal(size=(n, 6)), dtype=torch.float32)
    torch.manual_seed(seed)
    teacher = MLP((6, 32, 4))
    optimizer = torch.optim.Adam(teacher.parameters(), lr=1e-2)
    for _ in range(50):
        loss = torch.nn.functional.cross_entropy(teacher(x), torch.as_tensor(y))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    student = MLP((6, 4, 4))
    half = n // 2
    return (LoadedModel("<t>", "module", teacher), LoadedModel("<s>", "module", student),
            Dataset("train", x[:half], y[:half]), Dataset("test", x[half:], y[half:]))


def test_candidates_hold_the_control_the_grid_neighbours_the_alphas_the_calibrated_teacher_and_remedies():
    found = candidates_for(_settings(4.0, 0.9), grid=TEMPERATURES, fitted_temperature=2.0,
                           remedies=(("teacher-overconfident", 16.0, None), ("temperature-mismatch", 6.0, None)))
    assert [c.label for c in found] == ["control (τ 4, α 0.9)", "τ 3", "τ 6", "α 0.45", "labels only (α 0)",
                                        "teacher ÷ T* (2.00)", "τ 16"]
    assert found[0].origin == "control" and found[-1].origin == "teacher-overconfident"
    assert found[2].origin == "grid"  # a remedy already in the fixed set keeps the fixed set's entry


def test_candidates_skip_a_calibrated_teacher_and_the_alphas_of_labels_only_training():
    found = candidates_for(_settings(0.5, 0.0), grid=TEMPERATURES, fitted_temperature=1.05)
    assert [c.label for c in found] == ["control (τ 0.5, α 0)", "τ 1"]


def test_compare_arms_pairs_examples_and_averages_seeds():
    correct = np.zeros((2, 2, 100), dtype=bool)
    correct[0, :, :50] = True
    correct[1, :, :60] = True  # the second arm gets 10 more examples right in both seeds
    correct[1, 1, 60:70] = True  # and 10 more in the second seed
    (c0, ci0, s0), (c1, ci1, s1) = compare_arms(correct)
    assert c0 == 0 and s0 == (0.0, 0.0)
    assert c1 == pytest.approx(0.15) and s1 == pytest.approx((0.10, 0.20))
    assert 0 < ci1[0] < 0.15 < ci1[1]


def test_a_probe_is_deterministic_under_its_seed_and_leaves_the_callers_random_state():
    teacher, student, train, test = _pair()
    candidates = candidates_for(_settings(4.0, 0.9), grid=TEMPERATURES)
    options = ProbeOptions(steps=30, batch_size=32, seeds=2, lr=3e-3)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = run_probes(teacher, student, transfer=train, held_out=test, candidates=candidates, options=options)
    assert torch.equal(torch.get_rng_state(), state)
    second = run_probes(teacher, student, transfer=train, held_out=test, candidates=candidates, options=options)
    strip = lambda r: {**r.to_dict(), "design": {**r.to_dict()["design"], "seconds": 0}}
    assert first.ran and strip(first) == strip(second)
    assert len(first.arms) == len(candidates) and first.control.candidate.origin == "control"
    assert all(a.change is not None and len(a.seed_changes) == 2 for a in first.candidates)
    assert first.design.steps == 30 and first.design.learning_rate_source == "given"
    other = run_probes(teacher, student, transfer=train, held_out=test, candidates=candidates,
                       options=ProbeOptions(steps=30, batch_size=32, seeds=2, lr=3e-3, seed=7))
    assert strip(other) != strip(first)


def test_the_learning_rate_comes_from_a_short_check_when_not_given():
    teacher, student, train, test = _pair()
    result = run_probes(teacher, student, transfer=train, held_out=test,
                        candidates=candidates_for(_settings(), grid=TEMPERATURES)[:2],
                        options=ProbeOptions(steps=20))
    assert result.ran and result.design.learning_rate_source == "short check" and result.design.seeds == 2


def test_fresh_state_reinitializes_every_layer_with_an_initializer():
    _, student, _, _ = _pair()
    state, untouched = fresh_state(student.module, seed=3)
    again, _ = fresh_state(student.module, seed=3)
    assert untouched == 0
    assert all(torch.equal(state[k], again[k]) for k in state)
    assert not torch.equal(state["head.weight"], student.module.state_dict()["head.weight"])


@pytest.mark.parametrize("format_, words", [("logits", "precomputed logits"), ("torchscript", "TorchScript")])
def test_a_student_without_an_initializer_is_not_probed_with_the_reason(format_, words):
    teacher, student, train, test = _pair()
    student = LoadedModel("s.pt", format_, None if format_ == "logits" else student.module)
    result = run_probes(teacher, student, transfer=train, held_out=test,
                        candidates=candidates_for(_settings(), grid=TEMPERATURES), options=ProbeOptions(steps=5))
    assert not result.ran and words in result.not_probed and "--student-arch" in result.not_probed
    assert result.to_dict() == {"probed": False, "reason": result.not_probed}


def test_probes_need_both_sets():
    teacher, student, train, _ = _pair()
    result = run_probes(teacher, student, transfer=train, held_out=None,
                        candidates=candidates_for(_settings(), grid=TEMPERATURES), options=ProbeOptions(steps=5))
    assert not result.ran and "--data" in result.not_probed


class _Exploding(torch.nn.Module):
    """A student whose outputs are not finite, whatever its weights."""

    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(6, 4)

    def forward(self, x):
        return self.head(x) * float("inf")


def test_a_diverging_control_is_one_line_naming_the_learning_rate():
    teacher, _, train, test = _pair()
    student = LoadedModel("<s>", "module", _Exploding())
    result = run_probes(teacher, student, transfer=train, held_out=test,
                        candidates=candidates_for(_settings(), grid=TEMPERATURES), options=ProbeOptions(steps=5, lr=1e-3))
    assert not result.ran and "diverged" in result.not_probed and "--probe-lr" in result.not_probed
    assert "\n" not in result.not_probed


def test_an_arm_that_diverges_is_marked_and_the_others_are_scored():
    teacher, student, train, test = _pair()
    candidates = (Candidate("control", 4.0, 0.9, origin="control"), Candidate("broken teacher", 4.0, 0.9, float("nan")))
    result = run_probes(teacher, student, transfer=train, held_out=test, candidates=candidates,
                        options=ProbeOptions(steps=5, lr=1e-3, seeds=1))
    assert result.ran and result.arms[1].failed and "step 1" in result.arms[1].failed
    assert result.arms[1].verdict == "failed" and result.arms[0].accuracy is not None


@pytest.mark.parametrize("kwargs, option", [({"steps": 0}, "--probe-steps"), ({"seeds": 0}, "--probe-seeds"),
                                            ({"batch_size": 1.5}, "--probe-batch-size"),
                                            ({"lr": float("nan")}, "--probe-lr"), ({"lr": -1}, "--probe-lr"),
                                            ({"epochs": 0}, "--probe-epochs"), ({"epochs": float("inf")}, "--probe-epochs"),
                                            ({"epochs": 2, "steps": 5}, "give one"),
                                            ({"seeds": 100_000_000}, "--probe-seeds must be at most 64")])
def test_bad_probe_options_are_one_line_naming_the_option(kwargs, option):
    with pytest.raises(KddiagError, match=option):
        ProbeOptions(**kwargs)


def _demo_args(*extra):
    from kddiag.cli import DEMO_BASELINE, DEMO_STUDENT, DEMO_TEACHER

    return ["inspect", str(DEMO_TEACHER), str(DEMO_STUDENT), "--data", "digits:test", "--transfer-data",
            "digits:train", "--baseline", str(DEMO_BASELINE), *extra]


def test_inspect_probe_writes_the_probe_table_and_settles_the_advice(tmp_path):
    import json

    from click.testing import CliRunner

    from kddiag.cli import main

    args = _demo_args("--probe", "--probe-steps", "20", "--probe-seeds", "1", "--probe-lr", "0.003")
    result = CliRunner().invoke(main, [*args, "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "Probes of this pair (1 seed(s) × 20 steps of 64" in result.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["probe"]["probed"] and report["probe"]["design"]["learning_rate_source"] == "given"
    assert report["probe"]["arms"][0]["origin"] == "control" and len(report["probe"]["arms"]) >= 5
    assert report["findings"][-1]["id"] in ("better-setting", "settings-not-the-limit")
    assert all(f["remedy"]["tested_on_this_pair"] for f in report["findings"] if "remedy" in f)


def test_inspect_without_probe_marks_remedies_untested():
    from click.testing import CliRunner

    from kddiag.cli import main

    result = CliRunner().invoke(main, _demo_args("--json"))
    import json

    report = json.loads(result.output)
    assert "probe" not in report
    remedies = [f["remedy"] for f in report["findings"] if "remedy" in f]
    assert remedies and not any(r["tested_on_this_pair"] for r in remedies)


@pytest.mark.parametrize("extra, words", [(["--probe", "--probe-steps", "0"], "--probe-steps must be an integer >= 1"),
                                          (["--probe-steps", "5"], "add --probe to run them"),
                                          (["--probe-epochs", "5"], "add --probe to run them"),
                                          (["--probe", "--probe-epochs", "nan"], "--probe-epochs must be a number")])
def test_bad_probe_command_lines_are_one_line(extra, words):
    from click.testing import CliRunner

    from kddiag.cli import main

    result = CliRunner().invoke(main, _demo_args(*extra))
    assert result.exit_code == 1 and words in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_the_learning_rate_stored_with_the_student_is_the_probes(tmp_path):
    from kddiag.loading import load_model
    from kddiag.models import mlp_name

    teacher, student, train, test = _pair()
    path = tmp_path / "student.pt"
    torch.save({"state_dict": student.module.state_dict(), "arch": mlp_name((6, 4, 4)), "hparams": {"lr": 0.002}},
               path)
    loaded = load_model(path, role="student")
    assert loaded.metadata["learning_rate"] == 0.002
    result = run_probes(teacher, loaded, transfer=train, held_out=test,
                        candidates=candidates_for(_settings(), grid=TEMPERATURES)[:2],
                        options=ProbeOptions(steps=10, seeds=1))
    assert result.design.learning_rate == 0.002 and result.design.learning_rate_source == "checkpoint"


def test_the_training_length_stored_with_the_student_is_the_probes_and_ranks_where_it_stops(tmp_path):
    from kddiag.loading import load_model
    from kddiag.models import mlp_name

    teacher, student, train, test = _pair()
    path = tmp_path / "student.pt"
    torch.save({"state_dict": student.module.state_dict(), "arch": mlp_name((6, 4, 4)),
                "hyper_parameters": {"lr": 0.003, "max_epochs": 3, "batch_size": 40}}, path)
    loaded = load_model(path, role="student")
    assert (loaded.metadata["epochs"], loaded.metadata["batch_size"]) == (3, 40)
    result = run_probes(teacher, loaded, transfer=train, held_out=test,
                        candidates=candidates_for(_settings(), grid=TEMPERATURES)[:2], options=ProbeOptions())
    d = result.design
    assert (d.steps, d.batch_size, d.length_source) == (9, 40, "checkpoint")  # 3 passes over 120 examples
    assert d.seeds == 3  # the validated design for a probe as long as the student's training
    assert d.epochs == 3 and "as its checkpoint records it" in d.length_text
    assert all(a.ranked for a in result.arms) and not result.still_learning  # short, but as long as its training


@pytest.mark.parametrize("epoch, processed", [(2, 3), (3, 3)])  # a ModelCheckpoint file; trainer.save_checkpoint
def test_a_lightning_checkpoint_gives_the_epochs_its_run_trained(tmp_path, epoch, processed):
    from kddiag.loading import load_model
    from kddiag.models import mlp_name

    _, student, _, _ = _pair()
    progress = {"ready": processed, "completed": epoch, "started": processed, "processed": processed}
    path = tmp_path / "student.ckpt"
    torch.save({"state_dict": student.module.state_dict(), "arch": mlp_name((6, 4, 4)), "epoch": epoch,
                "global_step": 12, "pytorch-lightning_version": "2.6.0",
                "loops": {"fit_loop": {"epoch_progress": {"total": progress, "current": progress}}},
                "hyper_parameters": {"lr": 1e-3, "batch_size": 16, "max_epochs": 50}}, path)  # stopped early
    metadata = load_model(path, role="student").metadata
    assert {"epochs": 3, "batch_size": 16, "learning_rate": 1e-3}.items() <= metadata.items()


@pytest.mark.parametrize("options, stored, expected", [
    (ProbeOptions(), {}, (100, 64, "default")),  # ten passes over 120 rows, at least 100 steps
    (ProbeOptions(epochs=2.5), {"epochs": 7, "batch_size": 30}, (10, 30, "given epochs")),
    (ProbeOptions(epochs=2, batch_size=60), {"epochs": 7}, (4, 60, "given epochs")),
    (ProbeOptions(steps=11), {"epochs": 7}, (11, 64, "given steps")),
    (ProbeOptions(), {"epochs": True, "batch_size": 2.5}, (100, 64, "default")),  # not plausible: ignored
    (ProbeOptions(), {"epochs": 1e9, "batch_size": 0}, (100, 64, "default")),
    (ProbeOptions(), {"epochs": 5_000}, (100, 64, "default")),  # a checkpoint may not make --probe run for days
    (ProbeOptions(epochs=5_000), {}, (9_375, 64, "given epochs")),  # the user may
    (ProbeOptions(batch_size=500), {}, (100, 120, "default")),  # a batch never exceeds the set
])
def test_probe_length_takes_the_options_then_the_checkpoints_recipe_then_the_default(options, stored, expected):
    from kddiag.probe import probe_length

    assert probe_length(options, stored, 120) == expected


class _Broken(torch.nn.Module):
    """A student whose forward fails in training mode, as user code may."""

    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(6, 4)

    def forward(self, x):
        if self.training:
            raise AttributeError("'Broken' object has no attribute 'mask'")
        return self.head(x)


def test_a_student_that_fails_to_train_is_not_probed_with_its_error_in_one_line():
    teacher, _, train, test = _pair()
    result = run_probes(teacher, LoadedModel("<s>", "module", _Broken()), transfer=train, held_out=test,
                        candidates=candidates_for(_settings(), grid=TEMPERATURES), options=ProbeOptions(steps=5))
    assert not result.ran and result.not_probed.startswith("training the student failed: AttributeError")
