"""Live metrics (kddiag.live): one naming of a monitor call's numbers and findings, sent to TensorBoard, the
Lightning loggers, W&B and functions; every sink read back from what it wrote."""
import csv
import re
import sys
import types
import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from kddiag.errors import KddiagError
from kddiag.history import KEY_MEASUREMENTS
from kddiag.live import FINDINGS_TAG, LiveMetrics, live_metrics

from small_models import distillation_module, fit, make_mlp, monitor_of, data, teacher  # noqa: F401 (data, teacher: fixtures)
NAME = re.compile(r"^kddiag/(outcome|universe|domain|instance)/[a-z_]+/eval$")


def read_events(log_dir):
    """Scalars ({tag: [(step, value)]}) and texts ({tag: [(step, text)]}) from TensorBoard event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    tags = events.Tags()
    scalars = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in tags["scalars"]}
    texts = {tag: [(e.step, e.tensor_proto.string_val[0].decode()) for e in events.Tensors(tag)]
             for tag in tags["tensors"]}
    return scalars, texts


def expected_scalars(record):
    """A record's key numbers, as the live names must carry them (the record is the oracle of the values)."""
    return {name: getattr(record, name) for name in KEY_MEASUREMENTS if getattr(record, name) is not None}


# ---------------------------------------------------------------- the naming


def test_live_metrics_names_each_key_number_by_level_and_set(teacher, data):
    baseline = fit(make_mlp(8, 2), *data, steps=30)
    monitor = monitor_of(teacher, data, baseline=baseline)
    record = monitor.check(fit(make_mlp(8, 1), *data, steps=20), step=7)
    metrics = live_metrics(7, monitor.last_measurements, monitor.last_diagnosis)
    assert isinstance(metrics, LiveMetrics) and metrics.step == 7
    assert all(NAME.match(name) for name in metrics.scalars), sorted(metrics.scalars)
    # every number the record keeps, under its report.json level and name, and nothing else
    assert sorted(metrics.scalars.values()) == sorted(expected_scalars(record).values())
    assert metrics.scalars["kddiag/universe/teacher_ece/eval"] == record.teacher_ece
    assert metrics.scalars["kddiag/outcome/student_accuracy/eval"] == record.student_accuracy
    assert metrics.scalars["kddiag/domain/feature_cka/eval"] == record.feature_cka
    assert metrics.scalars["kddiag/instance/nckd/eval"] == record.nckd
    assert metrics.scalars["kddiag/outcome/kd_gain/eval"] == record.kd_gain
    assert metrics.text.splitlines()[0] == f"step 7: verdict {record.verdict}"
    assert all(f"`{mark.id}`" in metrics.text for mark in record.findings)
    assert len(metrics.text.splitlines()) == 1 + len(record.findings)


def test_numbers_that_were_not_measured_are_left_out(teacher, data):
    monitor = monitor_of(teacher, data)  # no baseline: no KD gain, no baseline lines
    record = monitor.check(make_mlp(8, 1))
    names = live_metrics(0, monitor.last_measurements, monitor.last_diagnosis).scalars
    assert record.kd_gain is None and not any("baseline" in name or "kd_gain" in name for name in names)
    assert len(names) == len(expected_scalars(record))


# ---------------------------------------------------------------- TensorBoard


def test_monitor_writes_scalars_and_findings_to_tensorboard(teacher, data, tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path / "runs"))
    monitor = monitor_of(teacher, data, every=2, log_to=writer)
    student = make_mlp(8, 1)
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-2)
    for _ in range(5):
        nn.functional.cross_entropy(student(data[0]), data[1]).backward()
        optimizer.step()
        optimizer.zero_grad()
        monitor.step(student)
    writer.close()
    scalars, texts = read_events(tmp_path / "runs")
    assert set(scalars) == set(live_metrics(4, monitor.last_measurements, monitor.last_diagnosis).scalars)
    assert len(scalars) == len(expected_scalars(monitor.history[-1]))
    for tag, points in scalars.items():
        assert [step for step, _ in points] == [0, 2, 4], tag
    accuracy = [value for _, value in scalars["kddiag/outcome/student_accuracy/eval"]]
    assert accuracy == pytest.approx([r.student_accuracy for r in monitor.history], abs=1e-6)
    (tag, findings), = texts.items()
    assert tag == f"{FINDINGS_TAG}/text_summary"
    assert [step for step, _ in findings] == [0, 2, 4]
    assert findings[-1][1].startswith(f"step 4: verdict {monitor.history[-1].verdict}")


# ---------------------------------------------------------------- functions, lists and failures


def test_log_to_takes_a_function_and_a_list_and_a_failing_sink_only_warns(teacher, data):
    received = []

    def broken(metrics):
        raise OSError("disk full")

    monitor = monitor_of(teacher, data, every=1, log_to=[received.append, broken])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            monitor.step(make_mlp(8, 1))
    assert [m.step for m in received] == [0, 1] and len(monitor.history) == 2
    messages = [str(w.message) for w in caught if "kddiag: logging step" in str(w.message)]
    assert messages == [f"kddiag: logging step {s} to broken failed: OSError: disk full" for s in (0, 1)]
    assert received[-1] == live_metrics(1, monitor.last_measurements, monitor.last_diagnosis)


@pytest.mark.parametrize("log_to, message", [
    (42, "log_to: expected a TensorBoard SummaryWriter, .* got int"),
    (["wandb", object()], "log_to: expected .* got object"),
    ("mlflow", "log_to: the only name it takes is 'wandb' .* got 'mlflow'"),
])
def test_bad_log_to_is_named_when_the_monitor_is_built(teacher, data, log_to, message, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", fake_wandb())  # 'wandb' itself is not what fails here
    sys.modules["wandb"].run = FakeRun()
    with pytest.raises(KddiagError, match=message):
        monitor_of(teacher, data, log_to=log_to)


def test_log_to_wandb_without_the_package_or_a_run_is_named(teacher, data, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb fails, installed or not
    with pytest.raises(KddiagError, match=r"log_to='wandb' needs the wandb package \(pip install wandb\)"):
        monitor_of(teacher, data, log_to="wandb")
    monkeypatch.setitem(sys.modules, "wandb", fake_wandb())
    with pytest.raises(KddiagError, match="log_to='wandb': no W&B run is active; call wandb.init()"):
        monitor_of(teacher, data, log_to="wandb")


# ---------------------------------------------------------------- W&B


class FakeRun:
    """What kddiag calls on a W&B run, recorded (the class claims wandb's module, as a real run's does)."""

    __module__ = "wandb.sdk.wandb_run"

    def __init__(self):
        self.defined, self.logged = [], []

    def define_metric(self, name, step_metric=None):
        self.defined.append((name, step_metric))

    def log(self, values):
        self.logged.append(values)


def fake_wandb():
    module = types.ModuleType("wandb")
    module.Html = type("Html", (), {"__init__": lambda self, html: setattr(self, "html", html)})
    module.run = None
    return module


def test_wandb_run_gets_the_numbers_on_its_own_step_axis(teacher, data, monkeypatch):
    module = fake_wandb()
    module.run = FakeRun()
    monkeypatch.setitem(sys.modules, "wandb", module)
    monitor = monitor_of(teacher, data, every=1, log_to="wandb")
    monitor.step(make_mlp(8, 1))
    monitor.step(make_mlp(8, 1))
    run = module.run
    assert run.defined == [("kddiag/step", None), ("kddiag/*", "kddiag/step")]
    assert [values["kddiag/step"] for values in run.logged] == [0, 1]
    last = live_metrics(1, monitor.last_measurements, monitor.last_diagnosis)
    assert {k: v for k, v in run.logged[-1].items() if k not in ("kddiag/step", FINDINGS_TAG)} == last.scalars
    assert run.logged[-1][FINDINGS_TAG].html.startswith("<pre>step 1: verdict")


def test_a_real_wandb_run_accepts_the_numbers(teacher, data, tmp_path):
    wandb = pytest.importorskip("wandb")  # optional: not installed by kddiag's extras
    run = wandb.init(mode="offline", dir=str(tmp_path), project="kddiag-test")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # a failed log would be a kddiag warning
            monitor = monitor_of(teacher, data, every=1, log_to=run)
            monitor.step(make_mlp(8, 1))
    finally:
        run.finish()


# ---------------------------------------------------------------- Lightning


@pytest.mark.filterwarnings("ignore:Found .* module.* in eval mode")  # the frozen teacher: Lightning's note
@pytest.mark.filterwarnings("ignore:.*LeafSpec.* is deprecated")  # Lightning 2.6 on torch 2.13, not kddiag
@pytest.mark.filterwarnings("ignore:The '.*dataloader' does not have many workers")
@pytest.mark.filterwarnings("ignore:The number of training batches")
def test_lightning_callback_logs_to_the_trainers_csv_and_tensorboard_loggers(teacher, data, tmp_path):
    import lightning
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from kddiag.lightning import KddiagCallback

    callback = KddiagCallback(teacher, data=data, every_n_steps=4, temperature=4.0, alpha=0.9)
    csv_logger = CSVLogger(str(tmp_path), name="csv")
    tb_logger = TensorBoardLogger(str(tmp_path), name="tb")
    trainer = lightning.Trainer(max_steps=10, accelerator="cpu", logger=[csv_logger, tb_logger], log_every_n_steps=5,
                                enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                                callbacks=[callback])
    trainer.fit(distillation_module(make_mlp(8, 3), teacher),
                DataLoader(TensorDataset(*data), batch_size=32, shuffle=True))
    history = callback.monitor.history
    assert [r.step for r in history] == [4, 8, 10]
    names = set(live_metrics(10, callback.monitor.last_measurements, callback.monitor.last_diagnosis).scalars)

    with open(csv_logger.log_dir + "/metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert "train_loss" in rows[0] and names <= set(rows[0])  # the module's own metrics are still there
    measured = [row for row in rows if row["kddiag/outcome/student_accuracy/eval"]]
    assert [int(row["step"]) for row in measured] == [4, 8, 10]
    assert [float(row["kddiag/outcome/student_accuracy/eval"]) for row in measured] == pytest.approx(
        [r.student_accuracy for r in history])
    assert [float(row["kddiag/instance/tckd/eval"]) for row in measured] == pytest.approx([r.tckd for r in history])

    scalars, texts = read_events(tb_logger.log_dir)
    assert names <= set(scalars) and "train_loss" in scalars
    assert [step for step, _ in scalars["kddiag/universe/student_ece/eval"]] == [4, 8, 10]
    assert [v for _, v in scalars["kddiag/universe/student_ece/eval"]] == pytest.approx(
        [r.student_ece for r in history], abs=1e-6)
    assert [step for step, _ in texts[f"{FINDINGS_TAG}/text_summary"]] == [4, 8, 10]
    assert texts[f"{FINDINGS_TAG}/text_summary"][0][1].startswith(f"step 4: verdict {history[0].verdict}")


# ---------------------------------------------------------------- the documented example (docs/monitor.md)


def doc_block(page: str, heading: str, index: int = 0) -> str:
    """The ``index``-th python block under the heading line ``heading`` of ``page`` (a path from the repository
    root), up to the next heading."""
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / page).read_text(encoding="utf-8")
    assert f"\n{heading}\n" in text, f"{page} has no heading {heading!r}"
    section = text.split(f"\n{heading}\n", 1)[1]
    section = re.split(r"\n#{2,4} ", section, maxsplit=1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)[index]


def test_the_documented_example_runs_and_its_numbers_reach_tensorboard(teacher, data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    x_val, y_val = data
    student = make_mlp(8, 1)
    loader = DataLoader(TensorDataset(*data), batch_size=100)
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-2)

    def train_step(student, x, y):
        nn.functional.cross_entropy(student(x), y).backward()
        optimizer.step()
        optimizer.zero_grad()

    namespace = {"teacher": teacher, "student": student, "x_val": x_val, "y_val": y_val, "loader": loader,
                 "train_step": train_step}
    exec(doc_block("docs/monitor.md", "## Live metrics"), namespace)
    scalars, texts = read_events(tmp_path / "runs")
    assert "kddiag/universe/teacher_ece/eval" in scalars and f"{FINDINGS_TAG}/text_summary" in texts
