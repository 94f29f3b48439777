"""Files that are files: kddiag opens only regular files, and says what anything else is.

A FIFO blocks the reader until some other process writes; a device such as ``/dev/zero`` never ends; a
socket cannot be read as a file. :func:`kind_of` names what a path is (following links) when it is not a
regular file; :func:`open_regular` opens a regular file for reading without ever blocking on a FIFO
(``O_NONBLOCK``) and checks the opened descriptor again, so a path swapped between the check and the
open is refused too. :func:`check_entries` does the same for every entry of a folder read as a whole
(a Hugging Face model or datasets directory).
"""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any, BinaryIO

from kddiag.errors import KddiagError

__all__ = ["kind_of", "describe_mode", "open_regular", "read_regular", "check_regular", "check_entries",
           "MAX_JSON_BYTES"]

MAX_JSON_BYTES = 16 << 20  # a JSON side file (class names, data spec, kddiag.json): far below this

_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder"))


def describe_mode(mode: int) -> str | None:
    """None for a regular file, else what ``mode`` (from ``os.stat``) is: 'a FIFO (named pipe)', 'a folder', …"""
    if stat.S_ISREG(mode):
        return None
    return next((words for test, words in _KINDS if test(mode)), "not a regular file")


def kind_of(path: str | Path) -> str | None:
    """None for a regular file (links followed), else what ``path`` is: 'a FIFO (named pipe)', 'a socket',
    'a character device', 'a block device', 'a folder', 'a broken link', 'a link loop' or 'missing'."""
    try:
        return describe_mode(os.stat(path).st_mode)
    except FileNotFoundError:
        return "a broken link" if os.path.islink(path) else "missing"
    except OSError as error:
        return "a link loop" if error.errno == getattr(os, "ELOOP", 40) else f"unreadable ({error.strerror})"


def check_regular(path: str | Path, where: str) -> None:
    """Refuse ``path`` unless it is a regular file (links followed), in one line: '<where>: a FIFO …'."""
    kind = kind_of(path)
    if kind is not None:
        raise KddiagError(f"{where}: {_sentence(kind)}")


def open_regular(path: str | Path, where: str) -> BinaryIO:
    """``path`` opened for binary reading, when it is a regular file; else one line naming what it is.

    Opened with ``O_NONBLOCK`` (a FIFO would otherwise block the open until a writer comes), then checked
    with ``fstat`` on the descriptor, so nothing but a regular file is ever read.
    """
    check_regular(path, where)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0)
    try:
        descriptor = os.open(path, flags)
    except OSError as error:
        raise KddiagError(f"{where}: cannot open it ({error.strerror})") from None
    kind = describe_mode(os.fstat(descriptor).st_mode)
    if kind is not None:
        os.close(descriptor)
        raise KddiagError(f"{where}: {_sentence(kind)}")
    if getattr(os, "O_NONBLOCK", 0):
        os.set_blocking(descriptor, True)
    return os.fdopen(descriptor, "rb")


def read_regular(path: str | Path, where: str, max_bytes: int = MAX_JSON_BYTES, what: str = "a small JSON file") -> bytes:
    """The bytes of regular file ``path``, at most ``max_bytes`` of them: a FIFO, a device or a larger file
    (a sparse file of gigabytes costs nothing on disk) is refused in one line, before it is read whole."""
    with open_regular(path, where) as handle:
        try:
            data = handle.read(max_bytes + 1)
        except OSError as error:
            raise KddiagError(f"{where}: cannot read it ({error.strerror})") from None
    if len(data) > max_bytes:
        raise KddiagError(f"{where}: larger than {_size(max_bytes)}; expected {what}")
    return data


def read_json(path: str | Path, where: str, max_bytes: int = MAX_JSON_BYTES, what: str = "a small JSON file") -> Any:
    """The JSON value in regular file ``path`` (:func:`read_regular`): one line naming ``where`` when it is
    not UTF-8 JSON, nested too deeply, or holds an integer of more digits than Python converts."""
    data = read_regular(path, where, max_bytes, what)
    try:
        return json.loads(data.decode("utf-8"))
    except RecursionError:
        raise KddiagError(f"{where}: not readable JSON (nested too deeply); expected {what}") from None
    except ValueError as error:
        raise KddiagError(f"{where}: not readable JSON ({' '.join(str(error).split())[:200]}); expected {what}") from None


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 and not n % (1 << 20) else f"{n:,} bytes"


def check_entries(folder: str | Path, where: str) -> None:
    """Refuse a folder any of whose entries (links followed) is neither a regular file nor a folder:
    a library that reads the folder as a whole would open a FIFO or a device by its name."""
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        kind = kind_of(entry.path)
        if kind is not None and kind != "a folder":
            raise KddiagError(f"{where}: '{entry.name}' is {kind}, not a regular file; kddiag reads only regular "
                              f"files")


def _sentence(kind: str) -> str:
    if kind == "missing":
        return "no such file"
    if kind == "a folder":
        return "a folder, not a file"
    return f"{kind}, not a regular file; kddiag reads only regular files"
