"""Case studies: programs that reproduce published knowledge-distillation findings on CPU in minutes.

Each study module has a docstring with its claim and source and a ``main(*, seeds, quick, out_dir)``;
``STUDIES`` maps the names used by ``kddiag case-study NAME`` to the modules (imported on first use,
so that ``python -m case_studies.NAME`` runs a module that the package has not imported yet).
``benchmark`` runs them all and scores kddiag's verdicts against each scenario's known cause.
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
    "benchmark": "benchmark",
}

__all__ = ["STUDIES"]


def __getattr__(name: str):
    if name == "STUDIES":
        return {study: importlib.import_module(f"case_studies.{module}") for study, module in _MODULES.items()}
    raise AttributeError(f"module 'case_studies' has no attribute '{name}'")
