"""kddiag's vocabulary: the knowledge levels, the data sets, the models' roles and the bounds every reader
shares.

The objects handed from one stage to the next live by what they hold: the user's options in
:mod:`kddiag.options`, the inputs in :mod:`kddiag.inputs`, the models' outputs in
:mod:`kddiag.outputs`, findings in :mod:`kddiag.diagnosis.findings`, the measurements in
:mod:`kddiag.levels` and the report in :mod:`kddiag.results`.
"""
from __future__ import annotations

from typing import Any

OUTCOME, UNIVERSE, DOMAIN, INSTANCE = SECTIONS = ("outcome", "universe", "domain", "instance")  # levels 0-3
LEVEL_TITLES = {
    OUTCOME: "Level 0 — outcome",
    UNIVERSE: "Level 1 — knowledge of the universe",
    DOMAIN: "Level 2 — domain knowledge",
    INSTANCE: "Level 3 — instance-specific knowledge",
}
EVAL, TRANSFER, WEIGHTS = "eval", "transfer", "weights"  # WEIGHTS: measured on parameters alone
ROLES = ("teacher", "student", "baseline")  # the models of one inspection, in report order
MAX_CLASSES = 1 << 19  # the most classes kddiag reads from logits files: the largest vocabularies have 262,144
MAX_CLASS_NAME_CHARS = 256  # a class name is a label for tables and plots, not a payload

# Where the hand-off objects that once lived here are at home now: still importable from here.
MOVED = {
    "check_class_ids": "kddiag.checks",
    "DEFAULT_TEMPERATURE": "kddiag.options",
    "DEFAULT_ALPHA": "kddiag.options",
    "SETTING_SOURCES": "kddiag.options",
    "MAX_PROBE_SEEDS": "kddiag.options",
    "MAX_PROBE_EPOCHS": "kddiag.options",
    "Setting": "kddiag.options",
    "Settings": "kddiag.options",
    "RunConfig": "kddiag.options",
    "IMAGE_LAYOUTS": "kddiag.options",
    "ImageOptions": "kddiag.options",
    "ProbeOptions": "kddiag.options",
    "InspectOptions": "kddiag.options",
    "check_normalize": "kddiag.options",
    "check_resize": "kddiag.options",
    "check_layout": "kddiag.options",
    "ClassInfo": "kddiag.inputs",
    "IGNORE_INDEX": "kddiag.inputs",
    "TokenInputs": "kddiag.inputs",
    "n_examples_of": "kddiag.inputs",
    "Dataset": "kddiag.inputs",
    "LoadedModel": "kddiag.inputs",
    "InputInfo": "kddiag.inputs",
    "BatchNormFit": "kddiag.inputs",
    "NormalizationFit": "kddiag.inputs",
    "ModelOutputs": "kddiag.outputs",
    "SetOutputs": "kddiag.outputs",
    "Batch": "kddiag.outputs",
    "Collected": "kddiag.outputs",
    "Evidence": "kddiag.diagnosis.findings",
    "Remedy": "kddiag.diagnosis.findings",
    "Finding": "kddiag.diagnosis.findings",
    "Diagnosis": "kddiag.diagnosis.findings",
    "Coverage": "kddiag.results",
    "Report": "kddiag.results",
}


def __getattr__(name: str) -> Any:
    """The objects that moved to their own modules (:data:`MOVED`), still importable from here."""
    if name in MOVED:
        import importlib

        return getattr(importlib.import_module(MOVED[name]), name)
    raise AttributeError(f"module 'kddiag.types' has no attribute {name!r}")
