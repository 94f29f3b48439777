"""Hand-built Measurements (read back from report.json-shaped values) for the diagnosis tests: a healthy KD run, and edits of it.

Names, sections and data sets follow docs/metrics.md. The healthy run is a 10-class problem
distilled at τ = 4, α = 0.9: an accurate plain teacher with soft, structured targets, a student that
follows it and beats its baseline.
"""
from __future__ import annotations

from typing import Any

from kddiag.results import Measurements
from kddiag.options import Setting, Settings
from kddiag.types import EVAL, TRANSFER

N_CLASSES = 10
WEIGHTS = "weights"
SETTINGS = Settings(temperature=Setting(4.0, "cli"), alpha=Setting(0.9, "cli"))

Key = tuple[str, str, str]  # (section, name, dataset)


def settings(temperature: float = 4.0, alpha: float = 0.9, source: str = "cli") -> Settings:
    return Settings(temperature=Setting(temperature, source), alpha=Setting(alpha, source))


def whatif(informative_range: list[float] | None = (2.0, 8.0), **columns: list[float]) -> dict:
    """A temperature_whatif value on the grid 1..32 (the healthy teacher's columns unless given)."""
    value = {
        "temperatures": [1.0, 2.0, 4.0, 8.0, 16.0, 32.0],
        "effective_smoothing": [0.02, 0.08, 0.25, 0.45, 0.7, 0.85],
        "saturation_share": [0.8, 0.4, 0.05, 0.0, 0.0, 0.0],
        "dark_knowledge_content": [0.7, 0.5, 0.3, 0.1, 0.03, 0.01],
        "rescaling_weight_cv": [0.1, 0.3, 0.35, 0.3, 0.2, 0.1],
        "informative_range": None if informative_range is None else list(informative_range),
        "informative_band": {"min_smoothing": 0.05, "max_smoothing": 0.9 * (N_CLASSES - 1) / N_CLASSES,
                             "max_saturation": 0.5},
        "n_samples": 1000,
    }
    value.update(columns)
    return value


HEALTHY: dict[Key, Any] = {
    ("outcome", "teacher_accuracy", EVAL): 0.92,
    ("outcome", "student_accuracy", EVAL): 0.88,
    ("outcome", "baseline_accuracy", EVAL): 0.85,
    ("outcome", "kd_gain", EVAL): 0.03,
    ("outcome", "agreement", EVAL): 0.9,
    ("outcome", "teacher_accuracy", TRANSFER): 0.97,
    ("outcome", "student_accuracy", TRANSFER): 0.93,
    ("outcome", "baseline_accuracy", TRANSFER): 0.9,
    ("outcome", "kd_gain", TRANSFER): 0.03,
    ("outcome", "agreement", TRANSFER): 0.94,
    ("outcome", "permuted_agreement", TRANSFER): 0.94,
    ("outcome", "class_permutation", TRANSFER): list(range(N_CLASSES)),
    ("outcome", "kl_teacher_student_at_temperature", TRANSFER): 0.02,
    ("universe", "teacher_fitted_temperature", EVAL): 1.1,
    ("universe", "effective_smoothing", EVAL): 0.28,
    ("universe", "effective_smoothing", TRANSFER): 0.25,
    ("universe", "equivalent_smoothing", TRANSFER): 0.2778,
    ("universe", "saturation_share", EVAL): 0.03,
    ("universe", "saturation_share", TRANSFER): 0.05,
    ("universe", "softness_gap", TRANSFER): 0.03,
    ("universe", "temperature_whatif", TRANSFER): whatif(),
    ("domain", "teacher_dark_knowledge_content", EVAL): 0.68,
    ("domain", "teacher_dark_knowledge_content", TRANSFER): 0.7,
    ("domain", "teacher_nontarget_logit_spread", EVAL): 0.31,
    ("domain", "teacher_nontarget_logit_spread", TRANSFER): 0.32,
    ("domain", "dark_knowledge_content_at_temperature", TRANSFER): 0.3,
    ("domain", "output_similarity_transfer_score", TRANSFER): 0.7,
    ("domain", "baseline_output_similarity_transfer_score", TRANSFER): 0.45,
    ("domain", "weight_similarity_transfer_score", WEIGHTS): 0.6,
    ("domain", "baseline_weight_similarity_transfer_score", WEIGHTS): 0.3,
    ("instance", "untrained_rescaling_weight_cv", TRANSFER): 0.35,
    ("instance", "teacher_error_rate", TRANSFER): 0.03,
}


def build(changes: dict[Key, Any] | None = None, *, drop: tuple = (),
          unavailable: dict[Key, str] | None = None) -> Measurements:
    """The healthy run with ``changes`` applied.

    ``drop`` removes metrics: a full key, a ``(section, name)`` pair (on every set), or a data set name
    (every metric on that set). ``unavailable`` turns keys into value-None metrics with that reason.
    """
    values = {**HEALTHY, **(changes or {})}
    for item in drop:
        values = {key: v for key, v in values.items() if not _matches(key, item)}
    metrics: dict = {}
    for (section, name, dataset), value in values.items():  # a {"value", "ci95"} dict is taken as the leaf
        leaf = value if isinstance(value, dict) and "value" in value else {"value": value}
        metrics.setdefault(section, {}).setdefault(name, {})[dataset] = leaf
    for (section, name, dataset), reason in (unavailable or {}).items():
        metrics.setdefault(section, {}).setdefault(name, {})[dataset] = {"value": None, "unavailable": reason}
    return Measurements.from_dict(metrics)  # as report.json would hold them


def _matches(key: Key, item) -> bool:
    if isinstance(item, str):
        return key[2] == item
    return key[:len(item)] == tuple(item)


def numbers_in(measurements: Measurements) -> set[float]:
    """Every number held in the measurements' values (nested lists and dicts included)."""
    found: set[float] = set()

    def walk(value):
        if isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            found.add(float(value))

    for value in measurements.values():
        walk(value.value.tolist() if hasattr(value.value, "tolist") else value.value)
    return found
