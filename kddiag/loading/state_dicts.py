"""State dicts and the layouts training frameworks save them in, loaded into an architecture.

Layouts unwrapped: ``{'model': sd}``, ``{'state_dict': sd}``, ``module.``/``model.`` prefixes,
``{'student': sd, 'teacher': sd}``, epochs and optimizer states beside the weights. The architecture
is built from an ``--*-arch`` spec (:mod:`.archs`).
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from kddiag.errors import KddiagError
from kddiag.loading._text import first, one_line
from kddiag.loading.archs import build_arch, stored_builtin_arch
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
        arch = stored_builtin_arch(content.get("arch"))
    if arch is None:
        raise KddiagError(f"{where}: holds a state dict (weights only); pass --{role}-arch "
                          f"package.module:Class, package.module:Class(28, hidden=64), path/to/models.py:Class "
                          f"or a built-in name to build the model")
    model = build_arch(arch, role)
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
