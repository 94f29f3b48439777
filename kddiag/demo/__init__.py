"""The demo pair shipped with kddiag: a digits teacher, its KD student and a baseline student.

Built by ``python -m kddiag.demo.build`` (see that module for how); ``kddiag demo`` inspects it.
"""
from __future__ import annotations

from pathlib import Path

DEMO_DIR = Path(__file__).resolve().parent
TEACHER, STUDENT, BASELINE = (DEMO_DIR / f"{name}.pt" for name in ("teacher", "student", "baseline"))
EVAL_DATA, TRANSFER_DATA = "digits:test", "digits:train"


def demo_report():
    """Inspect the shipped demo pair on the digits eval and transfer sets."""
    from kddiag.pipeline import inspect

    return inspect(str(TEACHER), str(STUDENT), data=EVAL_DATA, transfer_data=TRANSFER_DATA,
                   baseline=str(BASELINE))
