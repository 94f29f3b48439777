"""Diagnosis: turn measurements into ranked findings, each with evidence and advice (DESIGN.md §4)."""
from kddiag.diagnosis.rules import diagnose

__all__ = ["diagnose"]
