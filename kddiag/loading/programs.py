"""Archives that carry their own architecture: torch.export programs and TorchScript archives.

Both are programs, so both are vetted (:mod:`.vetting`) before anything in them runs: torch.export
archives member by member (sizes, pickles, native code, and every string torch would turn into Python)
before ``torch.export.load``, TorchScript archives for load-time code, and then every operator either
calls, hooks included, unless ``trust_program`` is set.
"""
from __future__ import annotations

import contextlib
import inspect
import io
import logging
import tokenize
import warnings
import zipfile
from pathlib import Path

from kddiag.errors import KddiagError, UnsafeLoadError
from kddiag.loading import vetting
from kddiag.loading._text import one_line
from kddiag.loading.metadata import METADATA_FILE, metadata_file
from kddiag.inputs import LoadedModel


def load_export(path: Path, where: str, *, trust_program: bool = False) -> LoadedModel:
    """A ``torch.export`` program (``.pt2``), as its runnable module, with its ``kddiag.json`` settings."""
    import torch

    data = path.read_bytes()  # read once: what is vetted is what torch loads
    vetting.check_export_archive(data, where)
    extra = {METADATA_FILE: ""}
    try:
        with warnings.catch_warnings(), _quiet("torch.export", "torch._export"):
            warnings.simplefilter("ignore")
            program = torch.export.load(io.BytesIO(data), extra_files=extra)
    except Exception as error:
        raise KddiagError(f"{where}: not a readable torch.export program ({one_line(error)})") from None
    vetting.check_operators(vetting.export_operators(program), where, trust_program=trust_program)
    try:
        module = _runnable(program)
    except Exception as error:
        raise KddiagError(f"{where}: not a readable torch.export program ({one_line(error)})") from None
    return LoadedModel(source=str(path), format="torch.export", module=module,
                       metadata=metadata_file(extra[METADATA_FILE], where))


def _runnable(program):
    """The program's module, without the guard function torch would ``exec`` from the archive's guard code.

    kddiag never needs the guards: a wrong input shape still fails, in torch's own input check.
    """
    if "check_guards" in inspect.signature(program.module).parameters:  # older torch has no guards
        return program.module(check_guards=False)
    return program.module()


def load_torchscript(path: Path, where: str, *, trust_program: bool = False) -> LoadedModel:
    """A TorchScript archive, with its ``kddiag.json`` settings."""
    import torch

    data = path.read_bytes()
    if not trust_program:
        _check_load_time_code(data, where)
    extra = {METADATA_FILE: ""}
    try:
        with warnings.catch_warnings():  # torch.jit is deprecated but still loads
            warnings.simplefilter("ignore")
            module = torch.jit.load(io.BytesIO(data), map_location="cpu", _extra_files=extra)
    except Exception as error:
        raise KddiagError(f"{where}: not a readable TorchScript archive ({one_line(error)})") from None
    vetting.check_operators(vetting.torchscript_operators(module), where, trust_program=trust_program)
    vetting.check_program_bounds(module, where, trust_program=trust_program)
    text = extra[METADATA_FILE]
    return LoadedModel(source=str(path), format="torchscript", module=module,
                       metadata=metadata_file(text, where))


def _check_load_time_code(data: bytes, where: str) -> None:
    """Refuse TorchScript whose ``__setstate__`` would run while loading, before its graph can be checked.

    torch's zip reader finds members ignoring case, so names are compared case-folded (and two that fold
    to one name are refused), and every member that is not tensor data is read as torch's reader reads it
    and searched: ``.py`` members anywhere, not only under ``code/``. A member that defines or merely names
    ``__setstate__`` (in any case, whatever splits its definition across lines) is refused.
    """
    what = "TorchScript archive"
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            infos = archive.infolist()
            vetting.check_one_reading(data, archive, where)  # what is searched here is what torch loads
            vetting.check_declared_sizes(infos, len(data), where, what=what)
            relative = vetting.relative_names(infos, where)
            reader = vetting.torch_reader(data)
            for info, rel in zip(infos, relative):
                low = vetting.folded(rel)
                if low.startswith(_TENSOR_DIRS) and not low.endswith(".py"):
                    continue  # tensor storages: torch never reads them as code
                source = vetting.member_bytes(archive, info, rel, reader, where,
                                              limit=vetting.MAX_PROGRAM_TEXT_BYTES, what=what)
                problem = _setstate_problem(source)
                if problem is not None:
                    raise UnsafeLoadError(f"{where}: member '{info.filename}' {problem}, code that runs while "
                                          f"loading; refused — pass --trust-program to run it anyway")
    except (zipfile.BadZipFile, OSError) as error:
        raise KddiagError(f"{where}: not a readable TorchScript archive ({one_line(error)})") from None


_TENSOR_DIRS = ("data/", "constants/", ".data/")
_SKIPPED_TOKENS = frozenset({tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT,
                             tokenize.ENCODING})


def _setstate_problem(source: bytes) -> str | None:
    """Whether TorchScript source defines ``__setstate__`` (read as tokens, so line continuations cannot hide
    it) or names it at all; None when it does not mention it in any case."""
    if b"__setstate__" not in source.lower():
        return None
    try:
        tokens = [token.string for token in tokenize.tokenize(io.BytesIO(source).readline)
                  if token.type not in _SKIPPED_TOKENS]
    except (tokenize.TokenError, SyntaxError, UnicodeDecodeError, ValueError):
        return "names __setstate__"
    if any(first == "def" and second.lower() == "__setstate__" for first, second in zip(tokens, tokens[1:])):
        return "defines __setstate__"
    return "names __setstate__"


@contextlib.contextmanager
def _quiet(*loggers: str):
    """Keep torch's logged warnings (with tracebacks) off stderr while it reads a file; errors still raise."""
    saved = [(logging.getLogger(name), logging.getLogger(name).level) for name in loggers]
    for logger, _ in saved:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in saved:
            logger.setLevel(level)
