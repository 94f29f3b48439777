"""State dicts and the layouts training frameworks save them in, loaded into an architecture.

Layouts unwrapped (each checked against the framework's own saving code):

- ``{'model': sd, ...}``: RepDistiller (``epoch``, ``best_acc``/``accuracy``, ``optimizer``, ``opt``),
  mdistiller (``epoch``, ``optimizer``, ``best_acc``; a full distiller checkpoint holds
  ``module.student.*`` and ``module.teacher.*`` names), torchdistill (``optimizer``, ``best_value``,
  ``lr_scheduler``, ``args``).
- ``{'state_dict': sd, 'state_dict_ema': sd, ...}``: timm's CheckpointSaver (``epoch``, ``arch``,
  ``optimizer``, ``version``, ``args``, ``metric``); older timm and DeiT use ``model_ema``.
- PyTorch Lightning ``.ckpt``: ``state_dict`` with the LightningModule's attribute names as prefixes
  (``model.``, ``student.``, ``teacher.``), beside ``hyper_parameters``, ``loops``, ``callbacks``, ...
- ``module.``/``_orig_mod.`` wrapper prefixes, ``{'student': sd, 'teacher': sd}``.

Which weights are used, when a file holds several sets: those whose names fit the architecture best;
among equally good fits, the role's own (a teacher file's ``teacher.`` weights, never the other
role's when the role's own are there), and raw weights before EMA weights. EMA weights are used
when asked for (``ema=True``, ``--ema ROLE``) or when no other weights fit. Every such choice is said
in ``LoadedModel.notes``.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from kddiag.errors import KddiagError
from kddiag.loading._text import first, one_line
from kddiag.loading.archs import build_arch, clip_spec, stored_arch_source, stored_builtin_arch
from kddiag.loading.metadata import header_settings
from kddiag.inputs import LoadedModel

# where training frameworks keep the weights, and which prefixes they add to names
WEIGHT_KEYS = ("state_dict", "model_state_dict", "model", "student", "teacher", "net", "network",
                "module", "weights", "params", "state_dict_ema", "model_ema", "ema", "ema_state_dict")
_PREFIXES = ("module.", "model.", "student.", "teacher.", "_orig_mod.", "net.", "model_ema.", "ema_model.", "ema.")
_ROLE_TAGS = ("teacher", "student")  # key or prefix names that say whose weights they are


@dataclass(frozen=True)
class _Candidate:
    """One set of weights in a file: the keys leading to it and the wrapper prefix removed from its names."""

    trail: tuple[str, ...]
    prefix: str
    weights: dict

    @property
    def parts(self) -> tuple[str, ...]:
        return (*self.trail, *self.prefix.split(".")[:-1])

    @property
    def is_ema(self) -> bool:
        return any("ema" in part.lower().split("_") for part in self.parts)

    @property
    def roles(self) -> set[str]:
        return set(self.parts) & set(_ROLE_TAGS)

    def describe(self) -> str:
        where = "/".join(self.trail) if self.trail else "the top level"
        where = f"'{where}'" if self.trail else where
        return where + (f" (names prefixed '{self.prefix}')" if self.prefix else "")


def state_dict_model(path: Path, content: Mapping, arch: str | None, role: str, where: str, metadata: dict,
                      *, ema: bool = False, notes: tuple[str, ...] = ()) -> LoadedModel:
    """``arch`` (or a built-in name stored beside the weights) built and loaded with the best-matching weights.

    ``ema`` asks for the EMA weights; ``notes`` (what the loader could not read) are passed on.
    """
    candidates = _candidates(content)
    if not candidates:
        raise KddiagError(f"{where}: no weights found (keys: {first(map(str, content))}); expected a "
                          f"state dict, a model, or logits")
    if ema:
        candidates = [c for c in candidates if c.is_ema]
        if not candidates:
            raise KddiagError(f"{where}: --ema {role} asks for EMA weights but the file holds none (keys: "
                              f"{first(map(str, content))}); expected e.g. 'state_dict_ema' or 'model_ema'")
    source = None  # the option names the architecture; or the checkpoint's own 'arch' entry does
    if arch is None:
        arch = stored_builtin_arch(content.get("arch"), where)
        source = None if arch is None else stored_arch_source(arch, where)
    if arch is None:
        raise KddiagError(f"{where}: holds a state dict (weights only); pass --{role}-arch "
                          f"package.module:Class, package.module:Class(28, hidden=64), path/to/models.py:Class "
                          f"or a built-in name to build the model")
    model = build_arch(arch, role, source=source)
    named = (f"architecture '{clip_spec(arch)}'" if source is None
             else f"the architecture stored in its 'arch' entry ('{clip_spec(arch)}')")
    expected = model.state_dict()
    chosen, choice_notes = _choose(candidates, expected, role, ema)
    _check_fit(chosen.weights, expected, where, named)
    try:
        model.load_state_dict(chosen.weights, strict=True)
    except Exception as error:
        raise KddiagError(f"{where}: does not fit {named} ({one_line(error)})") from None
    return LoadedModel(source=str(path), format="state_dict", module=model, metadata=metadata,
                       notes=(*choice_notes, *notes))


def holds_weights(content: Mapping) -> bool:
    """Whether ``content`` holds a dict of named tensors, at the top level or nested up to two deep."""
    return bool(_candidates(content))


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


def _candidates(content: Mapping) -> list[_Candidate]:
    """Every dict of named tensors in the file (top level and nested up to two deep), also under each
    known wrapper prefix with that prefix removed."""
    import torch

    found = []

    def visit(node: Mapping, trail: tuple[str, ...]) -> None:
        tensors = {k: v for k, v in node.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
        if tensors:
            found.extend(_Candidate(trail, prefix, variant) for prefix, variant in _prefix_variants(tensors, depth=2))
        if len(trail) < 2:
            for key, value in node.items():
                if isinstance(value, Mapping):
                    visit(value, (*trail, str(key)))

    visit(content, ())
    return found


def _choose(candidates: list[_Candidate], expected: dict, role: str, ema: bool) -> tuple[_Candidate, list[str]]:
    """The candidate whose names and shapes best fit ``expected`` (the model's state dict), and notes
    saying how it was chosen among others."""
    tag = "teacher" if role == "teacher" else "student"  # a baseline is a student trained without KD

    def fit(c: _Candidate) -> tuple[int, int, int]:  # names of the right shape, names known, names unknown
        known = [k for k in c.weights if k in expected]
        return (sum(c.weights[k].shape == expected[k].shape for k in known), len(known),
                len(known) - len(c.weights))

    def score(c: _Candidate) -> tuple:
        known = sum(part in WEIGHT_KEYS for part in c.trail)
        return (*fit(c), not c.roles - {tag}, not c.is_ema, known, -len(c.prefix))

    own = [c for c in candidates if tag in c.roles]
    allowed = [c for c in candidates if not c.roles - {tag}] if own else candidates  # never the other role's
    chosen = max(allowed, key=score)
    others = [c for c in candidates if c.weights is not chosen.weights]
    notes = []
    if chosen.is_ema:
        why = f"asked for with --ema {role}" if ema else "no other weights in the file fit the architecture"
        notes.append(f"weights: EMA weights from {chosen.describe()} ({why})")
    elif any(c.is_ema and fit(c)[0] for c in others):
        ema_source = next(c for c in others if c.is_ema and fit(c)[0]).describe()
        notes.append(f"weights: raw weights from {chosen.describe()}; the file also holds EMA weights in "
                     f"{ema_source} (pass --ema {role} to use them)")
    other_tags = sorted({r for c in others for r in c.roles} - {tag})
    if tag in chosen.roles and other_tags:
        notes.append(f"weights: the {tag} weights from {chosen.describe()}, chosen by role ({role}); the file "
                     f"also holds {' and '.join(other_tags)} weights")
    elif chosen.roles - {tag}:
        notes.append(f"weights: the file's {' and '.join(sorted(chosen.roles))} weights from {chosen.describe()}, "
                     f"used as the {role}: no other weights in it fit the architecture")
    return chosen, notes


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


def _check_fit(weights: dict, expected: dict, where: str, named: str) -> None:
    """``named``: the architecture as errors name it ("architecture 'mlp:64-8-10'")."""
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    mismatched = [f"{k} {tuple(weights[k].shape)} in file vs {tuple(v.shape)} in model"
                  for k, v in expected.items() if k in weights and weights[k].shape != v.shape]
    problems = [f"{label}: {first(keys)}" for label, keys in
                (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatch", mismatched)) if keys]
    if problems:
        raise KddiagError(f"{where}: does not fit {named}; " + "; ".join(problems))
