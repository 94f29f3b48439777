"""How often each rule's remedy helped when it was followed (the student retrained with it), per model
family: what kddiag can say about a remedy it has not tested on the user's own pair.

In family: the case studies' advice trials (``case_studies/results/benchmark.json``, seeds 0-2; a test
checks these counts against that file). Out of family: real published teachers kddiag was never tuned
on (two MNIST CNN teachers and a 1-D CNN teacher with MLP students, issue 19), where the rule's remedy
was followed 10 times and helped none.
"""
from __future__ import annotations

from kddiag.diagnosis import ids

IN_FAMILY = "case studies"
OUT_OF_FAMILY = "real teachers kddiag was not tuned on"

#: rule id -> ((where, family, times it helped, times it was followed), ...)
TRACK_RECORD: dict[str, tuple[tuple[str, str, int, int], ...]] = {
    ids.TEACHER_OVERCONFIDENT: ((IN_FAMILY, "mlp", 8, 9), (IN_FAMILY, "cnn", 6, 6),
                                (OUT_OF_FAMILY, "cnn / 1-D cnn → mlp", 0, 10)),
    ids.TEACHER_WRONG_ON_TRANSFER: ((IN_FAMILY, "mlp", 6, 6), (IN_FAMILY, "cnn", 6, 6)),
    ids.TEMPERATURE_MISMATCH: ((IN_FAMILY, "mlp", 6, 6), (IN_FAMILY, "cnn", 5, 6), (IN_FAMILY, "token-lm", 1, 3)),
}


def track_record_sentence(rule: str) -> str:
    """'helped mlp 8/9, cnn 6/6 in the case studies; 0/10 on real teachers kddiag was not tuned on', or ''."""
    record = TRACK_RECORD.get(rule, ())
    parts = []
    for where in (IN_FAMILY, OUT_OF_FAMILY):
        counts = [f"{family} {helped}/{followed}" for place, family, helped, followed in record if place == where]
        if counts:
            parts.append(f"{', '.join(counts)} in the {where}" if where == IN_FAMILY else f"{', '.join(counts)} on {where}")
    return f"followed elsewhere, it helped {'; '.join(parts)}" if parts else ""
