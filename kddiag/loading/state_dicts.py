"""State dicts and the layouts training frameworks save them in, loaded into an architecture.

Layouts unwrapped: ``{'model': sd}``, ``{'state_dict': sd}``, ``module.``/``model.`` prefixes,
``{'student': sd, 'teacher': sd}``, epochs and optimizer states beside the weights. The architecture
is ``package.module:callable`` (called with no arguments) or a built-in name (:mod:`kddiag.models`).
"""
from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kddiag.errors import KddiagError
from kddiag.loading._text import first, one_line
from kddiag.loading.metadata import header_settings
from kddiag.types import LoadedModel

# where training frameworks keep the weights, and which prefixes they add to names
WEIGHT_KEYS = ("state_dict", "model_state_dict", "model", "student", "teacher", "net", "network",
                "module", "weights", "params", "model_ema", "ema")
_PREFIXES = ("module.", "model.", "student.", "teacher.", "_orig_mod.", "net.")


def state_dict_model(path: Path, content: Mapping, arch: str | None, role: str, where: str,
                      metadata: dict) -> LoadedModel:
    """``arch`` (or a built-in name stored beside the weights) built and loaded with the best-matching weights."""
    candidates = _weight_candidates(content)
    if not candidates:
        raise KddiagError(f"{where}: no weights found (keys: {first(map(str, content))}); expected a "
                          f"state dict, a model, or logits")
    if arch is None:
        arch = _stored_builtin_arch(content)
    if arch is None:
        raise KddiagError(f"{where}: holds a state dict (weights only); pass --{role}-arch "
                          f"package.module:callable or a built-in name to build the model")
    model = _build_arch(arch, role)
    expected = model.state_dict()
    weights = _best_match(candidates, set(expected), role)
    _check_fit(weights, expected, where, arch)
    try:
        model.load_state_dict(weights, strict=True)
    except Exception as error:
        raise KddiagError(f"{where}: does not fit --{role}-arch {arch} ({one_line(error)})") from None
    return LoadedModel(source=str(path), format="state_dict", module=model, metadata=metadata)


def read_safetensors(path: Path, where: str) -> tuple[dict, dict]:
    """The tensors of a ``.safetensors`` file and the settings in its header."""
    try:
        from safetensors import safe_open
        from safetensors.torch import load_file

        weights = load_file(str(path), device="cpu")
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
    except Exception as error:
        raise KddiagError(f"{where}: not a readable safetensors file ({one_line(error)})") from None
    return weights, header_settings(header, where)


def _stored_builtin_arch(content: Mapping) -> str | None:
    """A built-in architecture name saved beside the weights (``'arch': 'mlp:64-12-10'``).

    Only built-in names are honoured: importing a module named inside an untrusted file would run its code.
    """
    stored = content.get("arch")
    if isinstance(stored, str) and _builtin_factory(stored, "stored 'arch'") is not None:
        return stored
    return None


def _weight_candidates(content: Mapping) -> list[tuple[tuple[str, ...], dict]]:
    """Every dict of named tensors in the file (top level and nested up to two deep), with its key path."""
    import torch

    found = []

    def visit(node: Mapping, trail: tuple[str, ...]) -> None:
        tensors = {k: v for k, v in node.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
        if tensors:
            found.append((trail, tensors))
        if len(trail) < 2:
            for key, value in node.items():
                if isinstance(value, Mapping):
                    visit(value, (*trail, str(key)))

    visit(content, ())
    return found


def _best_match(candidates: list[tuple[tuple[str, ...], dict]], expected: set[str], role: str) -> dict:
    """The candidate (after stripping wrapper prefixes) whose names best match the architecture's."""
    options = []
    for trail, weights in candidates:
        for prefixes, variant in _prefix_variants(weights, depth=2):
            names = set(variant)
            known = sum(name in WEIGHT_KEYS for name in trail)
            options.append(((len(names & expected), -len(names - expected),
                             role in trail or f"{role}." in prefixes, known, -len(prefixes)), variant))
    return max(options, key=lambda option: option[0])[1]


def _prefix_variants(weights: dict, *, depth: int):
    """``weights`` itself and the sub-dicts under known wrapper prefixes, those prefixes removed."""
    yield "", weights
    if depth == 0:
        return
    for prefix in _PREFIXES:
        inner = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
        if inner:
            for more, variant in _prefix_variants(inner, depth=depth - 1):
                yield prefix + more, variant


def _check_fit(weights: dict, expected: dict, where: str, arch: str) -> None:
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    mismatched = [f"{k} {tuple(weights[k].shape)} in file vs {tuple(v.shape)} in model"
                  for k, v in expected.items() if k in weights and weights[k].shape != v.shape]
    problems = [f"{label}: {first(keys)}" for label, keys in
                (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatch", mismatched)) if keys]
    if problems:
        raise KddiagError(f"{where}: does not fit architecture '{arch}'; " + "; ".join(problems))


def _build_arch(arch: str, role: str):
    """Instantiate ``package.module:callable`` (no arguments) or a built-in architecture name."""
    import torch

    option = f"--{role}-arch '{arch}'"
    factory = _builtin_factory(arch, option)
    if factory is None:
        if ":" not in arch:
            raise KddiagError(f"{option}: not a built-in architecture ({_builtin_help()}) and not "
                              f"of the form package.module:callable")
        factory = _import_callable(arch, option)
    if not callable(factory):
        raise KddiagError(f"{option}: '{arch}' is a {type(factory).__name__}, not callable")
    try:
        model = factory()
    except KddiagError:
        raise
    except Exception as error:
        raise KddiagError(f"{option}: calling it with no arguments failed ({one_line(error)})") from None
    if not isinstance(model, torch.nn.Module):
        raise KddiagError(f"{option}: calling it returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def _import_callable(arch: str, option: str) -> Any:
    """The object named by ``package.module:attribute``; the current directory is importable."""
    module_name, _, attribute = arch.partition(":")
    added = os.getcwd() not in sys.path
    if added:  # `kddiag` run from a project directory should find its modules
        sys.path.insert(0, os.getcwd())
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as error:
        raise KddiagError(f"{option}: cannot import module '{module_name}' ({one_line(error)})") from None
    finally:
        if added and os.getcwd() in sys.path:
            sys.path.remove(os.getcwd())
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise KddiagError(f"{option}: module '{module_name}' has no attribute '{attribute}'")
        target = getattr(target, part)
    return target


def _builtin_factory(name: str, option: str):
    """The zero-argument factory of a built-in architecture name (kddiag.models), or None."""
    try:
        models = importlib.import_module("kddiag.models")
    except ImportError:
        return None
    if hasattr(models, "builtin_arch"):
        try:
            return models.builtin_arch(name)
        except KddiagError as error:
            raise KddiagError(f"{option}: {error}") from None
    return getattr(models, "BUILTIN_ARCHS", {}).get(name)


def _builtin_help() -> str:
    try:
        models = importlib.import_module("kddiag.models")
    except ImportError:
        return "none available"
    return getattr(models, "BUILTIN_ARCH_HELP", None) or ", ".join(getattr(models, "BUILTIN_ARCHS", {})) or "none"
