"""The one error base kddiag raises for bad input; the CLI shows it as one line and exits 1."""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import unicodedata
from typing import Iterator


class KddiagError(ValueError):
    """Bad user input: a file, an argument or data that cannot be used, with what was expected."""


class UnsafeLoadError(KddiagError):
    """A checkpoint needs unpickling (arbitrary code execution) and the user did not trust it."""


def printable(text: str) -> str:
    """``text`` with control and format characters (line breaks, terminal escapes, bidirectional overrides)
    escaped as Python writes them (``\\n``, ``\\x1b``, ``\\u202e``), so a file name or a value read from a
    file can neither break kddiag's one-line messages nor drive the terminal."""
    if text.isprintable():
        return text
    return "".join(ch if ch == " " or unicodedata.category(ch)[0] not in "CZ" or ch.isprintable()
                   else ascii(ch)[1:-1] for ch in text)


def as_float(value: object) -> float | None:
    """A number read from a file as a float: ints beyond float's range as ±inf (never an OverflowError),
    NaN and inf as they are; None for anything not a number (bools, strings, containers)."""
    import numbers

    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    try:
        return float(value)
    except OverflowError:
        return float("inf") if value > 0 else float("-inf")


def shown_value(value: object, limit: int = 60) -> str:
    """A value read from a file, shown for an error message: its repr cut to ``limit`` characters, built
    without expanding more than a few items of each container (a YAML alias bomb shares one list a
    billion times over; ``repr`` would expand all of it)."""
    import reprlib

    shower = reprlib.Repr()
    shower.maxlevel, shower.maxlist, shower.maxdict, shower.maxtuple = 3, 4, 4, 4
    shower.maxstring = shower.maxother = shower.maxlong = limit
    text = printable(shower.repr(value))
    return text if len(text) <= limit else text[:limit - 3] + "..."


def is_rust_panic(error: BaseException) -> bool:
    """Whether ``error`` is a Rust panic turned into Python by PyO3 (``pyo3_runtime.PanicException``, a
    BaseException that ``except Exception`` lets through), as the tokenizers library raises."""
    return type(error).__name__ == "PanicException"


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Send what native code writes to file descriptor 2 (a Rust panic's message and backtrace) to a
    scratch file while the block runs, so kddiag's one-line error is all the user sees. Python's own
    ``sys.stderr`` is flushed first; nothing is changed when descriptor 2 cannot be duplicated."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield
        return
    try:
        with tempfile.TemporaryFile() as scratch:
            os.dup2(scratch.fileno(), 2)
            try:
                yield
            finally:
                try:
                    sys.stderr.flush()
                except (OSError, ValueError):
                    pass
                os.dup2(saved, 2)
    finally:
        os.close(saved)
