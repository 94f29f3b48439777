"""kddiag.Monitor (diagnosis while distilling) and its Lightning callback, on small MLPs built here."""
import json
from dataclasses import replace
import os
import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from kddiag.errors import KddiagError
from kddiag.history import FindingMark, MonitorRecord, finding_spans
from kddiag.inputs import Dataset

from small_models import distillation_module, C, D, N, fit, make_mlp, monitor_of, data, teacher  # noqa: F401 (data, teacher: fixtures)


# ---------------------------------------------------------------- data forms


def test_every_data_form_gives_the_same_history(teacher, data):
    x, y = data
    student = make_mlp(8, 1)
    forms = {
        "tensors": (x, y),
        "arrays": (x.numpy(), y.numpy()),
        "tensor dataset": TensorDataset(x, y),
        "data loader": DataLoader(TensorDataset(x, y), batch_size=64, shuffle=False),
        "kddiag dataset": Dataset("held-out", x, y.numpy()),
    }
    histories = {}
    for name, form in forms.items():
        monitor = monitor_of(teacher, form, every=1)
        monitor.check(student, step=0)
        histories[name] = monitor.history
    first = histories["tensors"]
    assert first[0].student_accuracy is not None
    for name, history in histories.items():
        assert history == first, name


@pytest.mark.parametrize("bad, message", [
    ("not data", "data: expected a DataLoader"),
    ((1, 2, 3), "data: expected a DataLoader of .* got a tuple of 3"),
    (lambda x, y: (x, y.float()), "data: labels y must be integer class ids; got dtype float32"),
    (lambda x, y: (x, nn.functional.one_hot(y)), r"data: labels y must be 1-D class ids .*one-hot"),
    (lambda x, y: (x[:10], y), r"data: x has shape \(10, 8\) but there are 300 labels"),
    (lambda x, y: DataLoader([{"x": a, "y": b} for a, b in zip(x, y)], batch_size=50),
     r"data: the DataLoader yields dicts \(keys \['x', 'y'\]\)"),
    (lambda x, y: DataLoader(TensorDataset(x, y, y), batch_size=50), "data: the DataLoader must yield .* 3 items"),
    (lambda x, y: TensorDataset(x), "data: a TensorDataset must hold two tensors"),
    (lambda x, y: (x, y + 5), r"data: labels must lie in \[0, 3\) .* got values up to 7"),
    (lambda x, y: (x[:, :5], y), "teacher failed on inputs of shape"),
])
def test_bad_data_names_the_argument(teacher, data, bad, message):
    with pytest.raises(KddiagError, match=message):
        monitor_of(teacher, bad(*data) if callable(bad) else bad)


@pytest.mark.parametrize("options, message", [
    ({"every": 0}, "every must be a positive integer; got 0"),
    ({"every": 2.5}, "every must be a positive integer; got 2.5"),
    ({"batch_size": -1}, "batch_size must be a positive integer"),
    ({"temperature": 0.0}, "temperature must be a finite number > 0"),
    ({"alpha": 1.5}, r"alpha must be a number in \[0, 1\]"),
])
def test_bad_options_name_the_argument(teacher, data, options, message):
    from kddiag import Monitor

    settings = {"temperature": 4.0, "alpha": 0.9, **options}
    with pytest.raises(KddiagError, match=message):
        Monitor(teacher, data=data, **{k: v for k, v in settings.items() if k not in ("temperature", "alpha")},
                temperature=settings["temperature"], alpha=settings["alpha"])


def test_bad_teacher_and_student_are_named(teacher, data):
    from kddiag import Monitor

    with pytest.raises(KddiagError, match="teacher: expected a checkpoint path, an nn.Module or a LoadedModel"):
        Monitor(42, data=data)
    with pytest.raises(KddiagError, match="teacher checkpoint '.*missing.pt': no such file"):
        Monitor("missing.pt", data=data)
    monitor = monitor_of(teacher, data)
    with pytest.raises(KddiagError, match="student: expected an nn.Module; got str"):
        monitor.check("student.pt")
    with pytest.raises(KddiagError, match="step must be an integer >= 0; got -1"):
        monitor.step(make_mlp(8, 1), step=-1)
    wrong_classes = nn.Sequential(nn.Linear(D, 4), nn.ReLU(), nn.Linear(4, C + 2))
    with pytest.raises(KddiagError, match="have 3 classes but student logits .* have 5"):
        monitor.check(wrong_classes)


# ---------------------------------------------------------------- what runs, and what is left as it was


def test_teacher_and_baseline_run_once_across_many_calls(teacher, data):
    calls = {"teacher": 0, "baseline": 0, "student": 0}
    baseline, student = fit(make_mlp(8, 2), *data, steps=30), make_mlp(8, 1)
    hooks = [model.register_forward_hook(lambda *_, role=role: calls.__setitem__(role, calls[role] + 1))
             for role, model in (("teacher", teacher), ("baseline", baseline), ("student", student))]
    try:
        monitor = monitor_of(teacher, data, baseline=baseline, every=2, batch_size=128)
        after_setup = dict(calls)
        for _ in range(10):
            monitor.step(student)
    finally:
        for hook in hooks:
            hook.remove()
    assert after_setup["teacher"] > 0 and after_setup["baseline"] > 0
    assert calls["teacher"] == after_setup["teacher"] and calls["baseline"] == after_setup["baseline"]
    per_call = 1 + -(-N // 128)  # the probe that finds the logit layer, then the batches
    assert calls["student"] == 5 * per_call
    assert [r.step for r in monitor.history] == [0, 2, 4, 6, 8]
    assert all(r.kd_gain is not None and r.baseline_accuracy is not None for r in monitor.history)


def test_every_is_respected_and_check_forces_a_call(teacher, data):
    monitor = monitor_of(teacher, data, every=3)
    student = make_mlp(8, 1)
    returned = [monitor.step(student) for _ in range(7)]
    assert [r is not None for r in returned] == [True, False, False, True, False, False, True]
    assert [r.step for r in monitor.history] == [0, 3, 6]
    monitor.check(student, step=7)
    monitor.step(student, step=9)  # an explicit step (e.g. Lightning's global_step)
    monitor.step(student, step=10)
    assert [r.step for r in monitor.history] == [0, 3, 6, 7, 9]
    monitor.check(student, step=3)  # the same step again replaces its record
    assert [r.step for r in monitor.history] == [0, 3, 6, 7, 9]


def test_student_mode_grads_and_device_are_restored(teacher, data):
    student = nn.Sequential(nn.Linear(D, 16), nn.BatchNorm1d(16), nn.Dropout(0.5), nn.ReLU(), nn.Linear(16, C))
    student.train()
    student[1].eval()  # a frozen batch norm inside a training model must stay frozen
    student[0].weight.requires_grad_(False)
    student(data[0]).sum().backward()
    grads = {name: p.grad.clone() for name, p in student.named_parameters() if p.grad is not None}
    modes = [m.training for m in student.modules()]
    running = student[1].running_mean.clone()
    monitor = monitor_of(teacher, data, every=1)
    monitor.check(student)
    assert [m.training for m in student.modules()] == modes
    assert [p.requires_grad for p in student.parameters()] == [False, True, True, True, True, True]
    assert all(torch.equal(p.grad, grads[name]) for name, p in student.named_parameters() if p.grad is not None)
    assert torch.equal(student[1].running_mean, running)  # run in eval(): no batch-norm update
    assert all(p.device.type == "cpu" for p in student.parameters())
    student.eval()
    monitor.check(student)
    assert not any(m.training for m in student.modules())


# ---------------------------------------------------------------- findings timeline


def test_findings_timeline_on_a_student_that_learns_the_teacher(teacher, data):
    """A random student first (the student differs from the teacher: capacity-gap fires), then the
    teacher's own copy (no failure case): the finding's span starts at 0 and stops at the copy's step."""
    import copy

    monitor = monitor_of(teacher, data, every=10)
    random_student = make_mlp(32, 7)
    copy_student = copy.deepcopy(teacher)
    monitor.check(random_student, step=0)
    monitor.check(random_student, step=10)
    monitor.check(copy_student, step=20)
    first, second, third = monitor.history
    assert "capacity-gap" in first.finding_ids and replace(second, step=0) == first
    assert third.agreement == 1.0 and third.kl_teacher_student == pytest.approx(0.0, abs=1e-9)
    assert third.finding_ids == ("healthy",) and third.verdict == "gain-not-checked"
    spans = {span.id: span for span in monitor.spans}
    gap = spans["capacity-gap"]
    assert (gap.first_step, gap.last_step, gap.stopped_step, gap.n_calls) == (0, 10, 20, 2)
    assert (spans["healthy"].first_step, spans["healthy"].stopped_step) == (20, None)
    from kddiag.report.training import render_training_html

    html = render_training_html(monitor)
    assert "no failure found (no baseline)" in html and "gain-not-checked</strong>" not in html  # words, not ids
    assert "could not be drawn" not in html  # the timeline draws the findings without 'healthy
    assert '<tr data-finding-id="healthy">' not in html and '<tr data-finding-id="capacity-gap">' in html  # a verdict


def test_finding_spans_split_when_a_finding_stops_and_fires_again():
    def record(step, *ids):
        return MonitorRecord(step, findings=tuple(FindingMark(i, 0.1 * step) for i in ids))

    spans = finding_spans([record(0, "a"), record(1, "a", "b"), record(2, "b"), record(3, "a")])
    assert [(s.id, s.first_step, s.last_step, s.stopped_step, s.n_calls) for s in spans] == [
        ("a", 0, 1, 2, 2), ("b", 1, 2, 3, 2), ("a", 3, 3, None, 1)]
    assert spans[0].peak_severity == pytest.approx(0.1)
    assert finding_spans([]) == ()


# ---------------------------------------------------------------- the report


def test_write_report_writes_both_files(teacher, data, tmp_path):
    monitor = monitor_of(teacher, data, every=1, baseline=fit(make_mlp(8, 2), *data, steps=30))
    for step in range(3):
        monitor.step(make_mlp(8, step))
    written = monitor.write_report(tmp_path / "out")
    assert sorted(p.name for p in written.values()) == ["monitor.html", "monitor.json"]
    content = json.loads(written["json"].read_text())
    assert [r["step"] for r in content["history"]] == [0, 1, 2]
    assert content["history"][0]["student_accuracy"] == monitor.history[0].student_accuracy
    assert {s["id"] for s in content["findings_timeline"]} == {i for r in monitor.history for i in r.finding_ids}
    html = written["html"].read_text()
    assert html.count("data:image/png;base64,") == 6 and "http://" not in html and "https://" not in html
    assert sorted(os.listdir(tmp_path / "out")) == ["monitor.html", "monitor.json"]  # no temporary file left


def test_write_report_is_all_or_nothing(teacher, data, tmp_path, monkeypatch):
    import kddiag.report.training as training

    monitor = monitor_of(teacher, data, every=1)
    monitor.check(make_mlp(8, 1))
    out = tmp_path / "out"
    out.mkdir()
    (out / "monitor.json").write_text("earlier")

    def broken(_):
        raise KeyError("a template value is missing")

    monkeypatch.setattr(training, "render_training_html", broken)
    with pytest.raises(KeyError):
        monitor.write_report(out)
    assert sorted(os.listdir(out)) == ["monitor.json"] and (out / "monitor.json").read_text() == "earlier"
    (tmp_path / "file").write_text("")
    with pytest.raises(KddiagError, match="exists and is not a directory"):
        monitor.write_report(tmp_path / "file")


def test_report_with_no_call_renders(teacher, data):
    from kddiag.report.training import render_training_html, render_training_json

    monitor = monitor_of(teacher, data)
    assert "No call yet" in render_training_html(monitor)
    assert json.loads(render_training_json(monitor))["history"] == []


def test_core_modules_do_not_import_lightning(teacher, data, tmp_path):
    import subprocess
    import sys

    code = ("import sys, torch, kddiag; from kddiag import Monitor; import kddiag.monitor, kddiag.history, "
            "kddiag.report.training, kddiag.plots.training; print('lightning' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


# ---------------------------------------------------------------- Lightning


def _trainer(max_steps: int, callback):
    import lightning

    return lightning.Trainer(max_steps=max_steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, callbacks=[callback])


@pytest.mark.filterwarnings("ignore:Found .* module.* in eval mode")  # the frozen teacher: Lightning's note
@pytest.mark.filterwarnings("ignore:.*LeafSpec.* is deprecated")  # Lightning 2.6 on torch 2.13, not kddiag
def test_lightning_callback_records_history_and_writes_the_report(teacher, data, tmp_path):
    from kddiag.lightning import KddiagCallback

    student = make_mlp(8, 3)
    module = distillation_module(student, teacher)
    callback = KddiagCallback(teacher, data=data, every_n_steps=4, temperature=4.0, alpha=0.9, out=tmp_path)
    loader = DataLoader(TensorDataset(*data), batch_size=32, shuffle=True)
    _trainer(10, callback).fit(module, loader)
    history = callback.monitor.history
    assert [r.step for r in history] == [4, 8, 10]  # every 4 optimizer steps, and at the end
    assert history[-1].student_accuracy > history[0].student_accuracy - 0.2
    assert callback.student_of(module) is student
    assert sorted(p.name for p in tmp_path.iterdir()) == ["monitor.html", "monitor.json"]


@pytest.mark.filterwarnings("ignore:Found .* module.* in eval mode")  # the frozen teacher: Lightning's note
@pytest.mark.filterwarnings("ignore:.*LeafSpec.* is deprecated")  # Lightning 2.6 on torch 2.13, not kddiag
def test_lightning_callback_measures_the_module_itself_and_never_breaks_training(teacher, data):
    import lightning

    from kddiag.lightning import KddiagCallback

    class Plain(lightning.LightningModule):
        def __init__(self, n_out):
            super().__init__()
            self.net = make_mlp(8, 4) if n_out == C else nn.Sequential(nn.Linear(D, 8), nn.ReLU(), nn.Linear(8, n_out))

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            return nn.functional.cross_entropy(self(batch[0]), batch[1] % self.net[-1].out_features)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    loader = DataLoader(TensorDataset(*data), batch_size=50)
    good = KddiagCallback(teacher, data=data, every_n_steps=3)
    plain = Plain(C)
    _trainer(6, good).fit(plain, loader)
    assert good.student_of(plain) is plain and [r.step for r in good.monitor.history] == [3, 6]
    assert plain.training  # Lightning's own mode handling is not disturbed

    broken = KddiagCallback(teacher, data=data, every_n_steps=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _trainer(3, broken).fit(Plain(C + 1), loader)  # 4 classes against a 3-class teacher: every call fails
    assert broken.monitor.history == ()
    skipped = [w for w in caught if "kddiag: the monitor skipped step" in str(w.message)]
    assert len(skipped) == 1 and "skipped step 3: KddiagError" in str(skipped[0].message)


def test_lightning_callback_rejects_bad_arguments_at_once(teacher, data, tmp_path):
    from kddiag.lightning import KddiagCallback

    with pytest.raises(KddiagError, match="every_n_steps must be a positive integer; got 0"):
        KddiagCallback(teacher, data=data, every_n_steps=0)
    with pytest.raises(KddiagError, match="student_attr must be an attribute name"):
        KddiagCallback(teacher, data=data, student_attr="not an attr")
    (tmp_path / "file").write_text("")
    with pytest.raises(KddiagError, match="exists and is not a directory"):
        KddiagCallback(teacher, data=data, out=tmp_path / "file")
    callback = KddiagCallback(teacher, data=data, student_attr="pupil")
    with pytest.raises(KddiagError, match="student_attr 'pupil': the Sequential has no nn.Module attribute"):
        callback.student_of(make_mlp(8, 1))
