"""τ and α from a training run's own config file (``--config FILE``), instead of guessed.

Three kinds of YAML are read, told apart by their keys:

- **torchdistill** (a top-level ``train`` section with a criterion): the ``KDLoss`` under ``train`` (``train.criterion``,
  or a stage's criterion; its ``kwargs``, ``params`` in torchdistill < 1.0). torchdistill's KDLoss is
  ``alpha · CE + beta · τ² KL`` with ``beta = 1 − alpha`` unless given, and the KL term alone when
  ``alpha`` is 0 or missing; so τ = ``temperature`` and α = beta / (alpha + beta) (1 with the KL alone). A
  term's ``weight``/``factor`` scales CE and KL together and leaves α as it is.
- **mdistiller** (yacs sections ``DISTILLER``, ``KD``): ``DISTILLER.TYPE: KD`` is ``CE_WEIGHT · CE +
  KD_WEIGHT · τ² KL``: τ = ``KD.TEMPERATURE``, α = KD_WEIGHT / (KD_WEIGHT + CE_WEIGHT), each from
  mdistiller's defaults (τ 4, CE_WEIGHT 0.1, KD_WEIGHT 0.9) where the file leaves it out. ``DKD`` gives
  τ = ``DKD.T`` only: its ALPHA and BETA weigh its own two terms, not kddiag's α.
- **Lightning** ``hparams.yaml`` (anything else): ``temperature``/``tau``/``T`` (also ``kd_temperature``,
  ``kd_T``) and ``alpha`` (``kd_alpha``), at the top level or in a section such as ``kd``, ``distillation``
  or ``hparams``.

Files are hostile until bounded: a regular file only (:func:`kddiag.files.open_regular`), at most
:data:`MAX_CONFIG_BYTES`, parsed by PyYAML's safe loader, which builds only plain data; a tag it does not
know (torchdistill's ``!import_call``, yacs' ``!!python/tuple``) is read as the plain mapping, list or
string under it, and nothing is imported or called. Errors are one line naming the file and the key.

>>> load_config("configs/kd/resnet18_from_resnet34.yaml").temperature
1.0
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

from kddiag.errors import KddiagError, as_float, shown_value
from kddiag.files import open_regular
from kddiag.metrics._common import check_temperature
from kddiag.options import RunConfig

__all__ = ["MAX_CONFIG_BYTES", "load_config"]

MAX_CONFIG_BYTES = 1 << 20  # 1 MiB: training configs are a few kB

# mdistiller's defaults (mdistiller/engine/cfg.py), for the keys a KD config leaves out
MDISTILLER_KD = {"TEMPERATURE": 4.0, "CE_WEIGHT": 0.1, "KD_WEIGHT": 0.9}
MDISTILLER_DKD_T = 4.0
# a Lightning hparams.yaml: the names of each setting, and the sections (besides the top level) searched
LIGHTNING_NAMES = {"temperature": ("temperature", "tau", "T", "kd_temperature", "kd_T", "distill_temperature"),
                   "alpha": ("alpha", "kd_alpha", "distill_alpha", "distillation_alpha")}
LIGHTNING_SECTIONS = ("kd", "distill", "distillation", "distiller", "hparams", "hyper_parameters", "config",
                      "args", "cfg", "loss", "criterion", "train", "training")
# torchdistill: the loss that carries τ and α, and the wrappers that only sum or route other terms
TORCHDISTILL_KD = "KDLoss"
TORCHDISTILL_WRAPPERS = ("WeightedSumLoss", "GeneralizedCustomLoss", "SimpleLossWrapper", "DictLossWrapper")


def load_config(path: str | os.PathLike) -> RunConfig:
    """The distillation settings of the training run whose config is ``path`` (torchdistill or mdistiller
    YAML, or a Lightning ``hparams.yaml``); a :class:`~kddiag.errors.KddiagError` naming the file and the key
    when it is not one of these, holds no τ or α, or holds one out of range."""
    if not isinstance(path, (str, os.PathLike)):
        raise KddiagError(f"--config: expected the path of a YAML file; got {type(path).__name__}")
    where = f"--config '{os.fspath(path)}'"
    content = _parse(_read(path, where), where)
    if not isinstance(content, Mapping):
        kind = "empty" if content is None else f"a YAML {type(content).__name__}"
        raise KddiagError(f"{where}: expected a YAML mapping of settings (key: value lines); the file is {kind}")
    if _is_torchdistill(content):
        return _torchdistill(content, os.fspath(path), where)
    if isinstance(content.get("DISTILLER"), Mapping) or isinstance(content.get("KD"), Mapping):
        return _mdistiller(content, os.fspath(path), where)
    return _lightning(content, os.fspath(path), where)


# ---------------------------------------------------------------- reading

def _read(path: str | os.PathLike, where: str) -> str:
    """The file's text: a regular file of at most MAX_CONFIG_BYTES, UTF-8."""
    with open_regular(path, where) as file:
        data = file.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise KddiagError(f"{where}: larger than {MAX_CONFIG_BYTES >> 20} MiB; a training config is a few kB "
                          f"(is this the right file?)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise KddiagError(f"{where}: not UTF-8 text (byte {error.start}): expected a YAML file") from None


def _parse(text: str, where: str) -> Any:
    """The YAML document as plain data, unknown tags read as the data under them."""
    import yaml

    class Loader(yaml.SafeLoader):
        """PyYAML's safe loader; a tag it has no constructor for gives the plain node under it."""

    def plain(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
        if isinstance(node, yaml.MappingNode):
            return loader.construct_mapping(node, deep=True)
        if isinstance(node, yaml.SequenceNode):
            return loader.construct_sequence(node, deep=True)
        return loader.construct_scalar(node)

    Loader.add_constructor(None, plain)
    try:
        documents = list(yaml.load_all(text, Loader=Loader))  # a SafeLoader: plain data only
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise KddiagError(f"{where}: not valid YAML{at} ({problem})") from None
    except RecursionError:
        raise KddiagError(f"{where}: nested too deeply to be a training config") from None
    except ValueError as error:  # an integer of more digits than Python converts
        raise KddiagError(f"{where}: not a usable YAML document ({' '.join(str(error).split())[:200]})") from None
    if len(documents) > 1:
        raise KddiagError(f"{where}: holds {len(documents)} YAML documents; a training config is one")
    return documents[0] if documents else None


# ---------------------------------------------------------------- torchdistill

def _is_torchdistill(content: Mapping) -> bool:
    """A ``train`` section with a criterion (its own or a stage's), or beside torchdistill's ``models``."""
    train = content.get("train")
    if not isinstance(train, Mapping):
        return False
    return ("criterion" in train or "models" in content
            or any(isinstance(stage, Mapping) and "criterion" in stage for stage in train.values()))


def _torchdistill(content: Mapping, path: str, where: str) -> RunConfig:
    """τ and α of the KDLoss under ``train`` (every stage's; they must agree)."""
    found, others = [], []
    for key, node in _mappings(content["train"], "train"):
        name = node.get("key", node.get("type"))
        if not isinstance(name, str):
            continue
        if name.rsplit(".", 1)[-1] == TORCHDISTILL_KD:
            found.append((key, node))
        elif name.endswith("Loss") and name not in TORCHDISTILL_WRAPPERS:
            others.append(name)
    if not found:
        criterion = content["train"].get("criterion")
        named = criterion.get("key", criterion.get("type")) if isinstance(criterion, Mapping) else None
        what = f"its criterion is {named!r}" if isinstance(named, str) else "no train.criterion names a loss"
        raise KddiagError(f"{where}: a torchdistill config, but no {TORCHDISTILL_KD} under train ({what}): "
                          f"kddiag reads τ and α of {TORCHDISTILL_KD}; pass --temperature and --alpha")
    read = [_kd_loss(key, node, where) for key, node in found]
    if len({(t, a) for t, a, *_ in read}) > 1:
        listed = "; ".join(f"{key}: τ {t:g}, α {a:g}" for (key, _), (t, a, *_) in zip(found, read))
        raise KddiagError(f"{where}: {len(found)} {TORCHDISTILL_KD} terms under train with different settings "
                          f"({listed}): pass --temperature and --alpha for the student inspected")
    temperature, alpha, keys, how = read[0]
    notes = [f"settings: from torchdistill's {TORCHDISTILL_KD} at {found[0][0]}: {how}"]
    if others:
        notes.append(f"settings: the criterion also has {', '.join(sorted(set(others)))}; α is {TORCHDISTILL_KD}'s "
                     f"own balance of its CE and KL terms")
    return RunConfig(path, "torchdistill", temperature, alpha, keys, tuple(notes))


def _kd_loss(key: str, node: Mapping, where: str) -> tuple[float, float, dict, str]:
    """(τ, α, keys, how α was derived) of one KDLoss entry."""
    section = "kwargs" if "kwargs" in node else "params"
    params = node.get(section)
    if not isinstance(params, Mapping):
        raise KddiagError(f"{where}: {key}.{section} must hold the {TORCHDISTILL_KD} settings (temperature, alpha); "
                          f"got {_shown(params)}")
    prefix = f"{key}.{section}"
    if params.get("temperature") is None:
        raise KddiagError(f"{where}: {prefix} has no temperature ({TORCHDISTILL_KD} requires one)")
    temperature = _temperature(params["temperature"], f"{prefix}.temperature", where)
    alpha, beta = params.get("alpha"), params.get("beta")
    keys = {"temperature": f"{prefix}.temperature"}
    if alpha is None or (_number(alpha, f"{prefix}.alpha", where) == 0):
        keys["alpha"] = f"{prefix}.alpha"
        return temperature, 1.0, keys, f"τ = temperature; α = 1 (alpha {_shown(alpha)}: the KL term alone)"
    alpha = _number(alpha, f"{prefix}.alpha", where)
    beta = 1 - alpha if beta is None else _number(beta, f"{prefix}.beta", where)
    keys["alpha"] = f"{prefix}.alpha"
    soft = _balance(beta, alpha, f"{prefix}.alpha/beta (the CE and KL weights)", where)
    return temperature, soft, keys, (f"τ = temperature; α = beta / (alpha + beta) = {beta:g} / ({alpha:g} + {beta:g}) "
                                     f"({TORCHDISTILL_KD} weighs CE by alpha, τ²·KL by beta)")


def _mappings(root: Any, key: str):
    """Every mapping under ``root`` with its dotted key, each object once (aliases are shared, not copied)."""
    seen, stack = set(), [(key, root)]
    while stack:
        key, node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, Mapping):
            yield key, node
            stack += [(f"{key}.{k}", v) for k, v in reversed(list(node.items())) if isinstance(v, (Mapping, list))]
        elif isinstance(node, list):
            stack += [(f"{key}[{i}]", v) for i, v in reversed(list(enumerate(node))) if isinstance(v, (Mapping, list))]


# ---------------------------------------------------------------- mdistiller

def _mdistiller(content: Mapping, path: str, where: str) -> RunConfig:
    """τ and α of mdistiller's KD distiller (τ alone for DKD), its defaults where the file has none."""
    distiller = content.get("DISTILLER") if isinstance(content.get("DISTILLER"), Mapping) else {}
    kind = distiller.get("TYPE", "KD" if isinstance(content.get("KD"), Mapping) else "NONE")
    if kind == "NONE":
        raise KddiagError(f"{where}: DISTILLER.TYPE is 'NONE', mdistiller's training on labels alone (no KD): "
                          f"a student trained so is a baseline (--baseline); give the KD run's config")
    if kind == "DKD":
        section = content.get("DKD") if isinstance(content.get("DKD"), Mapping) else {}
        given = section.get("T")
        temperature = MDISTILLER_DKD_T if given is None else _temperature(given, "DKD.T", where)
        note = ("settings: from mdistiller's DKD: τ = DKD.T" + ("" if given is not None else " (its default, 4)")
                + "; its ALPHA and BETA weigh DKD's own two terms, not kddiag's α, which is left to --alpha, the "
                  "checkpoint or the default")
        return RunConfig(path, "mdistiller", temperature, None, {"temperature": "DKD.T"}, (note,))
    if kind != "KD":
        raise KddiagError(f"{where}: DISTILLER.TYPE is {kind!r}: kddiag reads τ and α of mdistiller's KD (and τ of "
                          f"DKD); pass --temperature and --alpha for this distiller")
    section = content.get("KD") if isinstance(content.get("KD"), Mapping) else {}
    loss = section.get("LOSS") if isinstance(section.get("LOSS"), Mapping) else {}
    values, defaulted = {}, []
    for name, key, node in (("TEMPERATURE", "KD.TEMPERATURE", section), ("CE_WEIGHT", "KD.LOSS.CE_WEIGHT", loss),
                            ("KD_WEIGHT", "KD.LOSS.KD_WEIGHT", loss)):
        if node.get(name) is None:
            values[name] = MDISTILLER_KD[name]
            defaulted.append(f"{key} {MDISTILLER_KD[name]:g}")
        else:
            values[name] = _number(node[name], key, where)
    temperature = _temperature(values["TEMPERATURE"], "KD.TEMPERATURE", where)
    ce, kd = values["CE_WEIGHT"], values["KD_WEIGHT"]
    alpha = _balance(kd, ce, "KD.LOSS.KD_WEIGHT/CE_WEIGHT", where)
    note = (f"settings: from mdistiller's KD: τ = KD.TEMPERATURE; α = KD_WEIGHT / (KD_WEIGHT + CE_WEIGHT) = "
            f"{kd:g} / ({kd:g} + {ce:g})" + (f"; mdistiller's defaults for {', '.join(defaulted)}" if defaulted else ""))
    return RunConfig(path, "mdistiller", temperature, alpha,
                     {"temperature": "KD.TEMPERATURE", "alpha": "KD.LOSS.KD_WEIGHT/CE_WEIGHT"}, (note,))


# ---------------------------------------------------------------- Lightning hparams.yaml

def _lightning(content: Mapping, path: str, where: str) -> RunConfig:
    """temperature/tau/T and alpha at the top level, else in one of LIGHTNING_SECTIONS (the shallowest wins;
    two different values at one depth are an error)."""
    levels = [[("", content)], [(f"{k}.", v) for k, v in content.items()
                                 if k in LIGHTNING_SECTIONS and isinstance(v, Mapping)]]
    values, keys = {}, {}
    for setting, names in LIGHTNING_NAMES.items():
        for level in levels:
            hits = [(prefix + name, node[name]) for prefix, node in level for name in names
                    if name in node and node[name] is not None]
            if not hits:
                continue
            read = [(key, _number(value, key, where)) for key, value in hits]
            if len({value for _, value in read}) > 1:
                listed = ", ".join(f"{key} {value:g}" for key, value in read)
                raise KddiagError(f"{where}: more than one {setting} ({listed}): pass --{setting}")
            keys[setting], values[setting] = read[0]
            break
    if not values:
        raise KddiagError(f"{where}: no distillation temperature or alpha found: kddiag reads torchdistill configs "
                          f"(a KDLoss under train), mdistiller configs (KD.TEMPERATURE, KD.LOSS.KD_WEIGHT) and "
                          f"Lightning hparams.yaml (temperature/tau/T, alpha); pass --temperature and --alpha")
    temperature = values.get("temperature")
    if temperature is not None:
        temperature = _temperature(temperature, keys["temperature"], where)
    alpha = values.get("alpha")
    if alpha is not None and not 0 <= alpha <= 1:
        raise KddiagError(f"{where}: {keys['alpha']} must be the soft term's weight, in [0, 1]; got {alpha:g}")
    said = "; ".join(f"{symbol} = {keys[name]}" for name, symbol in (("temperature", "τ"), ("alpha", "α"))
                     if name in keys)
    return RunConfig(path, "lightning", temperature, alpha, keys, (f"settings: from hparams: {said}",))


# ---------------------------------------------------------------- values

def _number(value: Any, key: str, where: str) -> float:
    """A real number (a YAML int or float, or a string such as '1e-3' that YAML 1.1 leaves a string)."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    number = as_float(value)
    if number is None or not math.isfinite(number):
        raise KddiagError(f"{where}: {key} must be a finite number; got {_shown(value)}")
    return number


def _temperature(value: Any, key: str, where: str) -> float:
    """A number within kddiag's one temperature rule (:class:`~kddiag.options.Settings`)."""
    value = _number(value, key, where)
    check_temperature(value, f"{where}: {key}")
    return value


def _balance(soft: float, hard: float, key: str, where: str) -> float:
    """α = soft / (soft + hard): both weights >= 0, not both 0."""
    if soft < 0 or hard < 0 or soft + hard <= 0:
        raise KddiagError(f"{where}: {key} must be >= 0 and not both 0; got {soft:g} (soft) and {hard:g} (hard)")
    return soft / (soft + hard)


def _shown(value: Any) -> str:
    return shown_value(value)
