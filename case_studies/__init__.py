"""Case studies: programs that reproduce published knowledge-distillation findings on CPU in minutes.

Run them from a source checkout with ``python -m case_studies NAME`` (``--list`` lists them).
Each study module has a docstring with its claim and source and a ``main(*, seeds, quick, out_dir)``;
``STUDIES`` maps the study names to the modules (imported on first use, so that
``python -m case_studies.MODULE`` runs a module that the package has not imported yet).
``benchmark`` runs them all and scores kddiag's verdicts against each scenario's known cause.
``PROGRAMS`` holds the other programs run the same way, which check no claim: ``demo-pair`` rebuilds
the demo checkpoints shipped in ``kddiag/demo/``.
"""
from __future__ import annotations

import importlib

_MODULES = {
    "label-smoothing": "label_smoothing",
    "capacity-gap": "capacity_gap",
    "partial-teachers": "partial_teachers",
    "temperature-sweep": "temperature_sweep",
    "class-order": "class_order",
    "noisy-teacher": "noisy_teacher",
    "weak-teacher": "weak_teacher",
    "healthy-pairs": "healthy_pairs",
    "token-lm": "token_lm",
    "cnn-digits": "cnn_digits",
    "real-teachers": "real_teachers",
    "probe-validation": "probe_validation",
    "benchmark": "benchmark",
}
_PROGRAMS = {"demo-pair": "demo_pair", "demo-students": "demo_students"}

__all__ = ["STUDIES", "PROGRAMS"]


def __getattr__(name: str):
    registry = {"STUDIES": _MODULES, "PROGRAMS": _PROGRAMS}.get(name)
    if registry is None:
        raise AttributeError(f"module 'case_studies' has no attribute '{name}'")
    return {key: importlib.import_module(f"case_studies.{module}") for key, module in registry.items()}
