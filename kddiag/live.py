"""Live metrics: each monitor call's key numbers and findings, sent to the loggers a training run already has.

:func:`live_metrics` is the one home of the names: it turns one call's measurements into
``{'kddiag/<level>/<metric>/<set>': value}`` (the level and metric as ``report.json`` names them, e.g.
``kddiag/universe/teacher_ece/eval``) and its findings into a few lines of Markdown. Every sink reads
that and nothing else:

- a TensorBoard ``SummaryWriter`` (``torch.utils.tensorboard`` or tensorboardX): ``add_scalar`` per
  number, ``add_text`` for the findings, then ``flush``;
- a Lightning logger (``TensorBoardLogger``, ``CSVLogger``, ``WandbLogger``, …): ``log_metrics``; the
  findings go to its ``log_text`` (W&B) or to its SummaryWriter (TensorBoard), and nowhere for loggers
  of numbers only (CSV);
- a Weights & Biases run, or ``'wandb'`` for the active one (``wandb.run``): ``run.log`` against its
  own x-axis ``kddiag/step`` (``define_metric``), so the training's own step counter is left alone;
- any callable, called with the :class:`LiveMetrics`.

Sinks are checked once (:func:`sinks_of`, which raises :class:`~kddiag.errors.KddiagError` naming
``log_to``); a sink that fails while training becomes a one-line warning (:func:`emit`), never an error.
Nothing here imports torch, tensorboard or wandb at import time.
"""
from __future__ import annotations

from dataclasses import dataclass, field
import html
from typing import Any, Callable
import warnings

from kddiag.history import KEY_MEASUREMENTS
from kddiag.results import Measurements
from kddiag.diagnosis.findings import Diagnosis

__all__ = ["FINDINGS_TAG", "LiveMetrics", "emit", "live_metrics", "sinks_of"]

PREFIX = "kddiag"
FINDINGS_TAG = f"{PREFIX}/findings"  # the findings' text
STEP_TAG = f"{PREFIX}/step"  # W&B's x-axis for kddiag's numbers


@dataclass(frozen=True)
class LiveMetrics:
    """One monitor call as the loggers receive it: the training step, the key numbers by name
    (``kddiag/<level>/<metric>/<set>``, numbers that could not be measured left out) and the findings
    as Markdown."""

    step: int
    scalars: dict[str, float] = field(default_factory=dict)
    text: str = ""


def live_metrics(step: int, measurements: Measurements, diagnosis: Diagnosis) -> LiveMetrics:
    """The key measurements of one monitor call (those a :class:`~kddiag.history.MonitorRecord` keeps) named
    ``kddiag/<level>/<metric>/<set>``, and its findings as text: the verdict, then one line per finding.

    >>> live_metrics(40, monitor.last_measurements, monitor.last_diagnosis).scalars
    {'kddiag/outcome/student_accuracy/eval': 0.91, ..., 'kddiag/universe/teacher_ece/eval': 0.03}  # doctest: +SKIP
    """
    scalars = {}
    for _, where in KEY_MEASUREMENTS.values():
        value = where(measurements)
        if value.ok and isinstance(value.value, (int, float)):
            level, metric = value.name.split(".", 1)
            scalars[f"{PREFIX}/{level}/{metric}/{value.dataset}"] = float(value.value)
    lines = [f"step {step}: verdict {diagnosis.verdict}"]
    lines += [f"- {finding.title} (`{finding.id}`, severity {finding.severity:.2f}; {', '.join(finding.levels)})"
              for finding in diagnosis.findings]
    return LiveMetrics(int(step), scalars, "\n".join(lines))


# ---------------------------------------------------------------------- sinks


class _Sink:
    """One place the live metrics go; ``name`` is shown in warnings."""

    name = "a logger"

    def emit(self, metrics: LiveMetrics) -> None:
        raise NotImplementedError


class _SummaryWriter(_Sink):
    def __init__(self, writer: Any):
        self.writer, self.name = writer, f"the {type(writer).__name__}"

    def emit(self, metrics: LiveMetrics) -> None:
        for name, value in metrics.scalars.items():
            self.writer.add_scalar(name, value, metrics.step)
        self.writer.add_text(FINDINGS_TAG, metrics.text, metrics.step)
        self.writer.flush()


class _LightningLogger(_Sink):
    def __init__(self, logger: Any):
        self.logger, self.name = logger, f"the {type(logger).__name__}"

    def emit(self, metrics: LiveMetrics) -> None:
        self.logger.log_metrics(dict(metrics.scalars), step=metrics.step)
        if callable(getattr(self.logger, "log_text", None)):  # WandbLogger: a table of (step, findings)
            self.logger.log_text(FINDINGS_TAG, columns=["step", "findings"], data=[[metrics.step, metrics.text]],
                                 step=metrics.step)
            return
        experiment = getattr(self.logger, "experiment", None)  # TensorBoardLogger: its SummaryWriter
        if callable(getattr(experiment, "add_text", None)):
            experiment.add_text(FINDINGS_TAG, metrics.text, metrics.step)


class _WandbRun(_Sink):
    name = "the W&B run"

    def __init__(self, run: Any):
        self.run = run
        run.define_metric(STEP_TAG)
        run.define_metric(f"{PREFIX}/*", step_metric=STEP_TAG)

    def emit(self, metrics: LiveMetrics) -> None:
        import wandb

        text = wandb.Html(f"<pre>{html.escape(metrics.text)}</pre>")
        self.run.log({STEP_TAG: metrics.step, **metrics.scalars, FINDINGS_TAG: text})


class _Function(_Sink):
    def __init__(self, function: Callable[[LiveMetrics], Any]):
        self.function, self.name = function, getattr(function, "__name__", "the function")

    def emit(self, metrics: LiveMetrics) -> None:
        self.function(metrics)


def sinks_of(log_to: Any) -> tuple[_Sink, ...]:
    """The sinks of ``log_to``: None, one target or a list of them (see the module docstring for what a
    target may be). Raises :class:`~kddiag.errors.KddiagError` naming ``log_to`` for anything else."""
    from kddiag.errors import KddiagError

    if log_to is None:
        return ()
    targets = list(log_to) if isinstance(log_to, (list, tuple)) else [log_to]
    sinks = []
    for target in targets:
        if isinstance(target, str):
            if target != "wandb":
                raise KddiagError(f"log_to: the only name it takes is 'wandb' (the active W&B run); got {target!r}")
            sinks.append(_WandbRun(_active_wandb_run()))
        elif callable(getattr(target, "add_scalar", None)) and callable(getattr(target, "add_text", None)):
            sinks.append(_SummaryWriter(target))
        elif callable(getattr(target, "log_metrics", None)):
            sinks.append(_LightningLogger(target))
        elif type(target).__module__.split(".")[0] == "wandb" and callable(getattr(target, "log", None)):
            sinks.append(_WandbRun(target))
        elif callable(target):
            sinks.append(_Function(target))
        else:
            raise KddiagError(f"log_to: expected a TensorBoard SummaryWriter, a Lightning logger, a W&B run or "
                              f"'wandb', or a function of the LiveMetrics (or a list of them); got "
                              f"{type(target).__name__}")
    return tuple(sinks)


def _active_wandb_run() -> Any:
    from kddiag.errors import KddiagError

    try:
        import wandb
    except ImportError:
        raise KddiagError("log_to='wandb' needs the wandb package (pip install wandb) and a run started with "
                          "wandb.init()") from None
    if wandb.run is None:
        raise KddiagError("log_to='wandb': no W&B run is active; call wandb.init() before building the monitor, "
                          "or pass the run itself")
    return wandb.run


def emit(sinks: tuple[_Sink, ...], metrics: LiveMetrics) -> None:
    """Send ``metrics`` to every sink; a sink that fails becomes a one-line warning and the others still
    receive them."""
    for sink in sinks:
        try:
            sink.emit(metrics)
        except Exception as error:  # never fail the training over its logging
            message = " ".join(str(error).split())[:240]
            warnings.warn(f"kddiag: logging step {metrics.step} to {sink.name} failed: {type(error).__name__}: "
                          f"{message}", RuntimeWarning, stacklevel=2)
