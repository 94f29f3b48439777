"""Diagnosis: turn measurements into ranked findings, each with evidence and advice.

``reading`` (what rules read and return) → ``rules`` (one pure decision per failure case) →
``wording`` (what each finding says) → ``engine`` (run, rank, verdict); ids in ``ids``, cut-offs in
``thresholds``.
"""


def diagnose(*args, **kwargs):
    """Run every rule and rank the findings; see :func:`kddiag.diagnosis.engine.diagnose`."""
    from kddiag.diagnosis.engine import diagnose as _diagnose

    return _diagnose(*args, **kwargs)


__all__ = ["diagnose"]
