"""Small helpers for the loaders' error messages."""
from __future__ import annotations


def first(items, n: int = 4) -> str:
    items = list(items)
    shown = ", ".join(str(item) for item in items[:n])
    return shown + (f" (+{len(items) - n} more)" if len(items) > n else "") if items else "none"


def one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return (text[:240] + "…") if len(text) > 240 else text or type(error).__name__
