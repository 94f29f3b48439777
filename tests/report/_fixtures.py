"""Realistic :class:`kddiag.results.Report` objects for the rendering tests, measured by the real thing.

The logits come from a small synthetic model of grouped classes (class prototypes near their group's
centre, examples = prototype + noise, linear logit layers), so matrices, histograms and per-example
arrays have the shapes and the structure a real inspection produces. The measurements are made by
:func:`kddiag.measure.measure` on those outputs, so the fixtures cannot drift from what the renderers
get in a real run; only the findings are written by hand (the renderers must show whatever they say).
The teacher memorized the transfer set (saturated targets there), which the findings report.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from kddiag.levels._common import NO_BASELINE
from kddiag.levels.domain import NO_FEATURES, NO_WEIGHTS_LOGITS_MODE as NO_WEIGHTS
from kddiag.measure import measure
from kddiag.results import Measurements, Report, measured
from kddiag.diagnosis.findings import Diagnosis, Evidence, Finding
from kddiag.inputs import ClassInfo, InputInfo
from kddiag.options import Setting, Settings
from kddiag.outputs import ModelOutputs, SetOutputs
from kddiag.types import EVAL, TRANSFER

__all__ = ["NO_BASELINE", "NO_FEATURES", "NO_WEIGHTS", "build_report", "build_logits_only_report", "kd_helped"]

CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_GROUPS = (0, 0, 1, 1, 1, 1, 1, 1, 0, 0)  # vehicles, animals
SCALE = 0.25  # logit scale of the synthetic linear models


def build_report(*, n_classes: int = 10, n_transfer: int = 600, n_eval: int = 300, baseline: bool = True,
                 transfer: bool = True, weights: bool = True, findings: bool = True, seed: int = 0) -> Report:
    """A full inspection report; switch parts off to get logits-mode or partial reports.

    ``weights`` False is logits mode: no penultimate features and no logit-layer weights.
    """
    rng = np.random.default_rng(seed)
    tau, alpha = 4.0, 0.9
    if n_classes == 10:
        class_info = ClassInfo(CIFAR10_NAMES, CIFAR10_GROUPS)
    else:
        class_info = ClassInfo(tuple(f"class_{i:03d}" for i in range(n_classes)),
                               tuple(i // 5 for i in range(n_classes)))
    models = _synthetic_models(rng, np.asarray(class_info.groups), baseline=baseline)
    sets = {EVAL: _synthetic_outputs(rng, models, n_eval, memorized=False)}
    if transfer:
        sets[TRANSFER] = _synthetic_outputs(rng, models, n_transfer, memorized=True)
    settings = Settings(temperature=Setting(tau, "guessed"), alpha=Setting(alpha, "checkpoint", path="runs/student.pt"))
    measurements = measure([_set_outputs(name, out, models, weights=weights) for name, out in sets.items()],
                           settings=settings, class_info=class_info)

    inputs = [InputInfo("teacher", "runs/teacher.pt" if weights else "logits/teacher_logits.npz",
                        "state_dict" if weights else "logits", n_classes=n_classes),
              InputInfo("student", "runs/student_kd.pt" if weights else "logits/student_logits.npz",
                        "state_dict" if weights else "logits", n_classes=n_classes),
              InputInfo(EVAL, "data/test.pt", "pt", n_samples=n_eval)]
    if baseline:
        inputs.insert(2, InputInfo("baseline", "runs/student_ce.pt", "state_dict", n_classes=n_classes))
    if transfer:
        inputs.append(InputInfo(TRANSFER, "data/train.pt", "pt", n_samples=n_transfer))
    diagnosis = _diagnosis(measurements) if findings and transfer else Diagnosis(
        (), (("capacity-gap", "no transfer set given (--transfer-data)"),
             ("structure-not-transferred", "no baseline student given (--baseline)")))
    return Report(tuple(inputs), settings, class_info, measurements, diagnosis, n_classes)


def build_logits_only_report(*, n_classes: int = 10, seed: int = 0) -> Report:
    """Logits mode with an eval set only: no weights, features, baseline or transfer set."""
    return build_report(n_classes=n_classes, baseline=False, transfer=False, weights=False,
                        findings=False, seed=seed)


def kd_helped(report: Report, gain: float, ci: tuple[float, float]) -> Report:
    """``report`` with this KD gain on the eval set and its findings as the notes of a 'kd-helped' verdict."""
    outcome = report.measurements.outcome
    eval_set = dataclasses.replace(outcome.eval, kd_gain=measured(gain, ci=ci, dataset=EVAL))
    measurements = dataclasses.replace(report.measurements, outcome=dataclasses.replace(outcome, eval=eval_set))
    return dataclasses.replace(report, measurements=measurements,
                               diagnosis=Diagnosis(report.diagnosis.findings, verdict="kd-helped"))


# ---------------------------------------------------------------- synthetic models

def _synthetic_models(rng, groups: np.ndarray, *, baseline: bool) -> dict:
    n_classes, dim = len(groups), 24
    centres = rng.normal(size=(groups.max() + 1, dim)) * 1.2
    prototypes = centres[groups] + rng.normal(size=(n_classes, dim)) * 0.8
    models = {"prototypes": prototypes,
              "teacher": prototypes * 1.6,
              "student": prototypes + rng.normal(size=prototypes.shape) * 0.7}
    if baseline:
        models["baseline"] = prototypes + rng.normal(size=prototypes.shape) * 1.1
    return models


def _synthetic_outputs(rng, models: dict, n: int, *, memorized: bool) -> dict:
    """Labels, logits and features of every model on one set; a memorized set has sharp teacher logits."""
    prototypes = models["prototypes"]
    labels = rng.integers(0, len(prototypes), size=n)
    x = prototypes[labels] + rng.normal(size=(n, prototypes.shape[1])) * 1.3
    teacher_x = prototypes[labels] + (x - prototypes[labels]) * (0.25 if memorized else 1.0)
    out = {"labels": labels,
           "teacher": (teacher_x @ models["teacher"].T * (SCALE * 8.0 if memorized else SCALE), teacher_x),
           # the KD student follows the teacher's logits (on unmemorized inputs) plus its own errors
           "student": (x @ (0.5 * models["teacher"] + 0.5 * models["student"]).T * SCALE * 0.7
                       + rng.normal(size=(n, len(prototypes))) * 0.3, x + rng.normal(size=x.shape) * 0.5)}
    if "baseline" in models:
        out["baseline"] = (x @ models["baseline"].T * SCALE, x + rng.normal(size=x.shape) * 0.8)
    return out


def _set_outputs(name: str, out: dict, models: dict, *, weights: bool) -> SetOutputs:
    """The collected outputs of one set; in logits mode (``weights`` False) logits alone."""
    def outputs(role: str) -> ModelOutputs:
        logits, features = out[role]
        if not weights:
            return ModelOutputs(logits)
        return ModelOutputs(logits, features=features.astype(np.float32), weight=models[role] * SCALE)
    return SetOutputs(name, out["labels"], outputs("teacher"), outputs("student"),
                      outputs("baseline") if "baseline" in out else None)


# ---------------------------------------------------------------- findings (written by hand)

def _diagnosis(measurements: Measurements) -> Diagnosis:
    universe, instance = measurements.universe.transfer, measurements.instance.transfer
    findings = (
        Finding("teacher-overconfident", ("universe", "instance"), 0.82,
                "The teacher's targets are near one-hot on the transfer set",
                (Evidence("universe.saturation_share", universe.saturation_share.value, 0.5, TRANSFER, ">"),
                 Evidence("universe.effective_smoothing", universe.effective_smoothing.value, 0.02, TRANSFER, "<"),
                 Evidence("instance.untrained_rescaling_weight_cv", instance.untrained_rescaling_weight_cv.value,
                          0.1, TRANSFER, "<")),
                "On the data the student was distilled on, most teacher targets have p_y > 0.99 at τ = 4: the "
                "teacher memorized its training set. Such targets carry no label smoothing and rescale every "
                "example's gradient alike, so the student learns little beyond the hard labels.",
                "Raise τ into the informative range, use an early-stopped or less over-fit teacher, distil on "
                "augmented views the teacher did not memorize, or use cross-fitted teacher predictions."),
        Finding("teacher-wrong-on-transfer", ("instance",), 0.35,
                "The teacher contradicts the labels on some transfer examples",
                (Evidence("instance.teacher_error_rate", instance.teacher_error_rate.value, 0.05, TRANSFER, ">"),),
                "Where the teacher's top class is not the label, the soft and the hard loss pull the student "
                "in different directions; with α = 0.9 the teacher wins. Inspect the hardest examples "
                "listed in the instance section: label noise, or genuine teacher errors?",
                "Lower α, filter or relabel the examples the teacher gets wrong, check the data pipeline."),
    )
    return Diagnosis(findings, (("class-order-mismatch", "agreement is high: no relabelling to look for"),))
