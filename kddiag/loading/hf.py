"""Hugging Face model directories written by ``save_pretrained``: sequence classifiers and causal LMs.

A directory holds ``config.json`` and its weights (``model.safetensors``, possibly sharded). The kind
comes from ``config.architectures``: names ending in ``ForSequenceClassification`` (classes = the
labels) or ``ForCausalLM``/``LMHeadModel`` (classes = the vocabulary, one example per target token).
Nothing is downloaded (``local_files_only``); pickled weights (``pytorch_model.bin``) load only with
``trust_pickle``, code shipped with the model only with ``trust_remote_code`` (:func:`vet_hf_directory`:
``auto_map`` or a class transformers does not have, in any file that chooses classes, tokenizer files
included; transformers is always called with ``trust_remote_code`` given, so it never prompts). Only
regular files are read, sizes in ``config.json`` are checked against the tensors in the safetensors
headers (:func:`check_config_sizes`) and the model's bytes, built on the meta device, against the weights'
bytes (:func:`check_model_bytes`) before the model is built, and regular expressions in tokenizer files are
checked before the tokenizers library compiles them (:func:`vet_tokenizer_files`).

The model is wrapped in an adapter taking :class:`~kddiag.inputs.TokenInputs`, so that kddiag's
feature hook (:mod:`kddiag.collect.modules`: the last ``nn.Linear`` called whose ``out_features`` is
the class count) finds the classification head or the LM head, called on one row per example.
``transformers`` is imported here, lazily: it is an optional extra (``pip install -e '.[transformers]' in the kddiag checkout``).
"""
from __future__ import annotations

import contextlib
import inspect
import io
import json
import math
import os
import re
import warnings
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from kddiag.errors import KddiagError, UnsafeLoadError, as_float, shown_value
from kddiag.files import check_entries, open_regular, read_json
from kddiag.loading._text import first, one_line
from kddiag.inputs import IGNORE_INDEX, LoadedModel, TokenInputs
from kddiag.types import MAX_CLASSES

__all__ = ["load_hf_model", "vet_hf_directory", "check_config_sizes", "SequenceClassifierAdapter",
           "CausalLMAdapter", "CAUSAL_LM", "SEQUENCE_CLASSIFIER"]

CAUSAL_LM, SEQUENCE_CLASSIFIER = "hf-causal-lm", "hf-sequence-classifier"  # LoadedModel.format
_KINDS = {CAUSAL_LM: ("ForCausalLM", "LMHeadModel"), SEQUENCE_CLASSIFIER: ("ForSequenceClassification",)}
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt", "merges.txt",
                    "tokenizer.model", "spiece.model", "sentencepiece.bpe.model")
_PROBE_TOLERANCE = 1e-4  # relative to the largest logit: float32 round-off of one matrix product, with margin

# Files transformers reads to choose which classes to build, and the keys in them that name a class
# (checked against transformers' own lookups; the module in transformers.models.auto and its function).
CODE_CHOOSING_FILES = ("config.json", "tokenizer_config.json", "preprocessor_config.json", "processor_config.json",
                       "video_preprocessor_config.json", "audio_tokenizer_config.json", "generation_config.json")
CLASS_NAME_KEYS = {"tokenizer_class": ("tokenization_auto", "tokenizer_class_from_name"),
                   "processor_class": ("processing_auto", "processor_class_from_name"),
                   "image_processor_type": ("image_processing_auto", "get_image_processor_class_from_name"),
                   "feature_extractor_type": ("feature_extraction_auto", "feature_extractor_class_from_name"),
                   "video_processor_type": ("video_processing_auto", "video_processor_class_from_name")}
# Sizes in config.json, bounded by the weights before the model is built (check_config_sizes).
LAYER_KEYS = frozenset({"n_layer", "n_layers", "num_layers", "num_hidden_layers", "encoder_layers", "decoder_layers",
                        "num_encoder_layers", "num_decoder_layers"})
WIDTH_KEYS = frozenset({"hidden_size", "n_embd", "d_model", "embed_dim", "embedding_size", "intermediate_size",
                        "n_inner", "ffn_dim", "encoder_ffn_dim", "decoder_ffn_dim", "moe_intermediate_size",
                        "vocab_size", "n_positions", "n_ctx", "type_vocab_size", "num_attention_heads", "n_head",
                        "num_heads", "num_key_value_heads", "head_dim", "num_labels", "num_experts",
                        "num_local_experts", "n_routed_experts"})
MAX_LAYERS = 1024  # 8× the deepest published Hugging Face LMs (Llama 3.1 405B: 126 layers)
LAYER_SHARING = 64  # layers per indexed layer allowed where layers are shared: ALBERT runs one stored layer 12-24 times
_LAYER_SHARING_TYPES = frozenset({"albert"})  # model types whose layers share weights (ALBERT: num_hidden_groups)
# an encoder's layer count, which a decoder-only *ForCausalLM built from an encoder-decoder config (BART, Marian,
# …) never builds: bounded as shared layers are
_ENCODER_LAYER_KEYS = frozenset({"encoder_layers", "num_encoder_layers"})
MAX_POSITIONS = 1 << 24  # rotary models store no position table; Llama 4 Scout states 10,485,760 positions
MAX_CONFIG_BYTES = 16 << 20  # an ImageNet-21k id2label is about 1 MB
MAX_SAFETENSORS_HEADER = 100_000_000  # the safetensors library's own limit
MAX_TOKENIZER_BYTES = 64 << 20  # about twice the largest published tokenizer.json (Gemma 3's, 33 MB)
# Tokens a tokenizer adds beside its model's vocabulary (special, reserved, user-defined): Gemma 3 lists about
# 6,400, Llama 3 256; transformers adds them one by one, so 3 million made loading take minutes
MAX_ADDED_TOKENS = 1 << 16
MAX_MERGES = 1 << 20  # BPE merges in a tokenizer.json: about one per vocabulary entry (GPT-2: 50,000)
# (file, key) where tokenizer files list added tokens; None: the file's own object is the list
ADDED_TOKEN_LISTS = (("tokenizer_config.json", "added_tokens_decoder"),
                     ("tokenizer_config.json", "additional_special_tokens"),
                     ("tokenizer_config.json", "extra_special_tokens"),
                     ("special_tokens_map.json", "additional_special_tokens"), ("added_tokens.json", None))
# Memory the model may take once built (parameters and buffers, float32) against the weights' bytes on disk.
# Real models' buffers are small next to their weights: on the meta device, (parameters + buffers) / stored
# tensors in float32 is 1.000 for Llama (7B), Mistral, Qwen2, BERT-base, GPT-J and CodeGen (0.5 MiB of
# buffers on 23 GB), 0.76 for GPT-2 and OPT (tied heads), 0.95 for GPT-Neo 1.3B (96 MiB of causal-mask
# buffers on 5 GB). Weights stored in 16 bits double in float32 and 8-bit floats quadruple: hence 4×. A tiny
# model's buffers can outweigh its weights (GPT-Neo with 2048 positions and 4 layers of width 16: 16 MiB on
# 0.2 MiB), hence a floor; a config that asks for more ("max_position_embeddings": 32768 with 64 layers of
# GPT-Neo: 64 GiB of masks from a 266 KB folder) is refused before transformers builds anything.
MODEL_BYTES_PER_WEIGHT_BYTE = 4
MIN_MODEL_BYTES = 256 << 20
_MAX_CONFIG_DEPTH = 8  # nesting levels of a config searched (text_config, rope_scaling, …)
# transformers' own attention implementations; any other name (a Hub repository such as
# 'kernels-community/flash-attn2') makes transformers fetch and run a kernel from the Hub
BUILT_IN_ATTENTION = frozenset({"eager", "sdpa", "flash_attention_2", "flash_attention_3", "flash_attention_4",
                                "flex_attention"})
ATTENTION_KEYS = ("attn_implementation", "_attn_implementation", "_attn_implementation_internal")
# config keys of rotary (or otherwise table-free) position encodings; without any, positions are a stored table
_ROTARY_KEYS = frozenset({"rope_theta", "rope_scaling", "rope_parameters", "rotary_dim", "rotary_pct",
                          "rotary_emb_base", "rotary_emb_fraction", "partial_rotary_factor", "rope_type",
                          "rotary_embedding_base", "use_rotary_position_embeddings", "rope_ratio", "rope_base",
                          "alibi", "use_alibi"})
_ROTARY_TYPES = frozenset({"rotary", "rope", "alibi"})  # values of position_embedding_type / pos_emb / …


def load_hf_model(path: str | Path, *, role: str, trust_remote_code: bool = False,
                  trust_pickle: bool = False) -> LoadedModel:
    """Load a local ``save_pretrained`` directory as a :class:`~kddiag.inputs.LoadedModel`, float32 on the CPU.

    ``format`` is ``'hf-causal-lm'`` or ``'hf-sequence-classifier'``; ``module`` is a
    :class:`CausalLMAdapter` or :class:`SequenceClassifierAdapter`, in eval mode. ``metadata`` holds
    ``model_type``, ``architecture``, ``vocab_size`` (causal LMs: the class count), ``id2label``
    (classifiers) and ``tokenizer_dir`` when tokenizer files lie beside the weights. ``role`` names the
    directory in errors.

    >>> load_hf_model("runs/student", role="student").format
    'hf-causal-lm'
    """
    path = Path(path)
    where = f"{role} checkpoint '{path}'"
    with _quiet():
        try:
            import transformers
        except ImportError:
            raise KddiagError(f"{where}: loading a Hugging Face model directory needs the transformers package: "
                              f"pip install -e '.[transformers]' in the kddiag checkout") from None
    vet_hf_directory(path, where, trust_remote_code=trust_remote_code)
    config = _read_json(path / "config.json", where)
    kind, architecture = _kind(config, where)
    check_attention(config, where)
    use_safetensors = _weights_format(path, where, trust_pickle)
    check_config_sizes(config, _tensor_shapes(path, where) if use_safetensors else None, where)
    auto = (transformers.AutoModelForCausalLM if kind == CAUSAL_LM
            else transformers.AutoModelForSequenceClassification)
    check_model_bytes(path, auto, where, weights=_weight_files(path, where, use_safetensors),
                      trust_remote_code=trust_remote_code)
    # transformers >= 4.56 names it dtype (and 5 defaults to the stored one); older ones load float32
    dtype = {"dtype": torch.float32} if _version(transformers.__version__) >= (4, 56) else {}
    with _quiet():
        try:
            model, info = auto.from_pretrained(
                str(path), local_files_only=True, use_safetensors=use_safetensors,
                trust_remote_code=bool(trust_remote_code), output_loading_info=True, **dtype)
        except Exception as error:
            if "ignore_mismatched_sizes" in str(error):  # its own advice points at a report in its logs
                raise KddiagError(f"{where}: tensors in the weights have other shapes than config.json gives "
                                  f"{architecture}; the config does not belong to these weights") from None
            raise KddiagError(f"{where}: transformers could not load it as {architecture} "
                              f"({type(error).__name__}: {one_line(error)})") from None
    missing = sorted({*info.get("missing_keys", ()), *(k[0] if isinstance(k, tuple) else k
                                                       for k in info.get("mismatched_keys", ()))})
    if missing:
        raise KddiagError(f"{where}: the weights lack or mis-shape {len(missing)} of {type(model).__name__}'s "
                          f"tensors ({first(missing, 3)}), which would be random; save the model with "
                          f"save_pretrained from the class it was trained as")
    model = model.to(device="cpu", dtype=torch.float32).eval()
    metadata: dict[str, Any] = {"model_type": config.get("model_type"), "architecture": type(model).__name__}
    if kind == CAUSAL_LM:
        module = CausalLMAdapter(model).eval()
        _check_causal_lm(module, where)
        metadata["vocab_size"] = module.lm_head.out_features
    else:
        _check_classifier(model.config, where)
        module = SequenceClassifierAdapter(model).eval()
        metadata["id2label"] = {int(k): str(v) for k, v in model.config.id2label.items()}
    if any((path / name).is_file() for name in _TOKENIZER_FILES):
        metadata["tokenizer_dir"] = str(path)
    metadata.update(trainer_recipe(path))
    positions = next((config[k] for k in ("n_positions", "max_position_embeddings", "n_ctx")
                      if isinstance(config.get(k), int) and not isinstance(config.get(k), bool) and config[k] > 0), None)
    if positions is not None and not _rotary(config):  # a position table: a longer sequence indexes past it
        metadata["max_positions"] = positions
    n_parameters = sum(p.numel() for p in model.parameters())
    stored = config.get("dtype") or config.get("torch_dtype") or "an unstated dtype"
    notes = [f"Hugging Face {type(model).__name__} ({config.get('model_type')}), {n_parameters:,} parameters, "
             f"{'safetensors' if use_safetensors else 'pickled'} weights stored as {stored}, run in float32"]
    unused = list(info.get("unexpected_keys", ()))
    if unused:
        notes.append(f"not used: {first(sorted(unused))}: tensors in the weights that {type(model).__name__} has no "
                     f"place for")
    return LoadedModel(source=str(path), format=kind, module=module, metadata=metadata, notes=tuple(notes))


class SequenceClassifierAdapter(nn.Module):
    """A ``*ForSequenceClassification`` model on :class:`~kddiag.inputs.TokenInputs`: logits (n_sequences, n_labels).

    The classification head (BERT's ``classifier``) is the last ``nn.Linear`` called, on (n, hidden),
    so its input is what kddiag captures as features. Decoder classifiers (GPT-2's or Llama's ``score``)
    apply their head to every position before pooling: they give logits, but no features.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, inputs: TokenInputs) -> torch.Tensor:
        _check_inputs(inputs, need_targets=False)
        return self.model(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask).logits


class CausalLMAdapter(nn.Module):
    """A ``*ForCausalLM`` model on :class:`~kddiag.inputs.TokenInputs`: logits (n_targets, vocab_size) at the
    target positions (``targets != -100``), sequence by sequence, position by position.

    Computed as ``lm_head(hidden[targets != -100])``, ``hidden`` being the backbone's last hidden state
    (after its final norm): the LM head is then the last ``nn.Linear`` called, on (n_targets, hidden), so
    kddiag's feature hook captures one feature row per example and the head's weight, and only the
    target rows pay for the vocabulary-sized product. Running the whole model and selecting rows of its
    ``.logits`` would be exact for every model but gives the hook a (n, length, hidden) input, hence no
    features. What a model does to its logits after the head is redone here: Gemma-style soft-capping
    (``final_logit_softcapping``: ``c·tanh(z/c)``), Cohere's ``logit_scale`` (``z·s``) and Granite's
    ``logits_scaling`` (``z/s``); features and weight are those of the head, before it. The loader checks
    this against the model's own forward on a probe and refuses a model that computes its logits in
    any other way.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        head = model.get_output_embeddings()
        if not isinstance(head, nn.Linear):
            raise KddiagError(f"{type(model).__name__}'s output embeddings are a {type(head).__name__}, "
                              f"not a linear layer; kddiag cannot take its features")
        # plain attributes, not submodules: the module tree (and --feature-layer names) stays the model's
        self.__dict__["lm_head"] = head
        backbone = model.base_model
        if backbone is model:
            raise KddiagError(f"{type(model).__name__} names no backbone (base_model_prefix); kddiag cannot take "
                              f"its last hidden state")
        self.__dict__["backbone"] = backbone
        parameters = inspect.signature(backbone.forward).parameters
        self._no_cache = ({"use_cache": False} if "use_cache" in parameters
                          or any(p.kind is p.VAR_KEYWORD for p in parameters.values()) else {})
        config = model.config
        self.softcap = getattr(config, "final_logit_softcapping", None)
        scale = getattr(config, "logit_scale", None)
        scaling = getattr(config, "logits_scaling", None)
        self.scale = ((float(scale) if isinstance(scale, (int, float)) else 1.0)
                      / (float(scaling) if isinstance(scaling, (int, float)) and scaling else 1.0))

    def forward(self, inputs: TokenInputs) -> torch.Tensor:
        _check_inputs(inputs, need_targets=True)
        hidden = self.backbone(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask,
                               **self._no_cache).last_hidden_state
        logits = self.lm_head(hidden[inputs.targets != IGNORE_INDEX])
        if self.scale != 1.0:
            logits = logits * self.scale
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


# --- checks -----------------------------------------------------------------------------------------

def vet_hf_directory(path: str | Path, where: str, *, trust_remote_code: bool = False) -> None:
    """Refuse a Hugging Face directory that holds anything but regular files and folders, or (without
    ``trust_remote_code``) that names code to run: ``auto_map`` in any file transformers reads to choose
    classes (:data:`CODE_CHOOSING_FILES`), or a class name transformers does not have (``tokenizer_class``,
    ``processor_class``, …: :data:`CLASS_NAME_KEYS`), or a regular expression in a tokenizer file that can
    backtrack without end (:func:`vet_tokenizer_files`). One line naming the file and the key."""
    path = Path(path)
    check_entries(path, where)
    vet_tokenizer_files(path, where, trust_remote_code=trust_remote_code)
    if trust_remote_code:
        return
    for name in CODE_CHOOSING_FILES:
        if not (path / name).is_file():
            continue
        content = _read_json(path / name, where)
        refusal = _shipped_code(content)
        if refusal:
            raise UnsafeLoadError(f"{where}: {name} {refusal}, which transformers would import and run; pass "
                                  f"--trust-remote-code only for models you trust")


def vet_tokenizer_files(path: str | Path, where: str, *, trust_remote_code: bool = False) -> None:
    """Refuse the tokenizer files transformers would compile, before it does: ``tokenizer.json``, the
    versioned ``tokenizer.<version>.json`` that ``tokenizer_config.json``'s ``fast_tokenizer_files`` may
    choose (which must name plain files beside it) and Mistral's ``tekken.json``. Each must be a regular file
    of at most :data:`MAX_TOKENIZER_BYTES`; without ``trust_remote_code``, every regular expression in it
    (``{"Regex": ...}`` in a normalizer, pre-tokenizer or decoder, ``Sequence`` entries included; tekken's
    ``config.pattern``) must pass :func:`kddiag.loading.regex_safety.backtracking_hazard`: the tokenizers
    library runs them on every text with a backtracking engine whose limit counts one match attempt, so
    ``(a+)+[bd]`` makes a 29 KB text take minutes. One line naming the file and the pattern."""
    from kddiag.loading.regex_safety import backtracking_hazard, shown_pattern, tokenizer_patterns

    path = Path(path)
    check_added_tokens(path, where)
    names = {"tokenizer.json"} | {p.name for p in path.glob("tokenizer.*.json")}
    names |= {p.name for p in path.glob("*tekken*.json")}
    if (path / "tokenizer_config.json").is_file():
        listed = _read_json(path / "tokenizer_config.json", where).get("fast_tokenizer_files")
        for name in listed if isinstance(listed, list) else ([] if listed is None else [listed]):
            if not isinstance(name, str) or Path(name).name != name or name.startswith(".") or "\\" in name:
                raise KddiagError(f"{where}: tokenizer_config.json's fast_tokenizer_files names "
                                  f"{json.dumps(name)[:80]}, not a file beside it")
            names.add(name)
    for name in sorted(names):
        file = path / name
        if not os.path.lexists(file):
            continue
        shown = f"{where}: {name}"
        content = _read_tokenizer_json(file, shown, trust_remote_code)
        if not isinstance(content, dict):
            continue  # the tokenizers library cannot read it either, and says so when transformers loads it
        _check_tokenizer_sizes(content, shown)
        if trust_remote_code:
            continue
        found = list(tokenizer_patterns(content))
        if "tekken" in name and isinstance(content.get("config"), dict):
            pattern = content["config"].get("pattern")
            if isinstance(pattern, str):
                found.append(("pre_tokenizer", pattern))
        for part, pattern in found:
            hazard = backtracking_hazard(pattern)
            if hazard:
                raise UnsafeLoadError(f"{shown}: its {part.replace('_', '-')} pattern {shown_pattern(pattern)} "
                                      f"{hazard}; refused — pass --trust-remote-code to use it anyway")


def _read_tokenizer_json(file: Path, shown: str, trusted: bool) -> Any:
    """A tokenizer file's JSON (None when it is not JSON), from a regular file of at most MAX_TOKENIZER_BYTES;
    a key given twice in one object is refused unless ``trusted`` (which of the two the tokenizers library
    keeps is its own affair)."""
    with open_regular(file, shown) as handle:
        size = os.fstat(handle.fileno()).st_size
        if size > MAX_TOKENIZER_BYTES:
            raise KddiagError(f"{shown} is larger than {MAX_TOKENIZER_BYTES >> 20} MiB ({size:,} bytes); "
                              f"published tokenizers take at most about half that")
        data = handle.read(MAX_TOKENIZER_BYTES + 1)
    try:
        return json.loads(data.decode("utf-8"), object_pairs_hook=None if trusted else _unique_keys)
    except (ValueError, RecursionError):
        return None
    except _DuplicateKey as key:
        raise UnsafeLoadError(f"{shown} has the key {str(key)[:80]!r} twice in one object; refused — pass "
                              f"--trust-remote-code to use it anyway") from None


def _check_tokenizer_sizes(content: dict, shown: str) -> None:
    """Refuse a tokenizer.json listing more vocabulary entries than any model kddiag reads has classes, more
    merges than MAX_MERGES or more added tokens than MAX_ADDED_TOKENS: bounds on the time loading takes."""
    model = content.get("model") if isinstance(content.get("model"), dict) else {}
    for what, listed, most in (("vocab entries", model.get("vocab"), MAX_CLASSES),
                               ("merges", model.get("merges"), MAX_MERGES),
                               ("added tokens", content.get("added_tokens"), MAX_ADDED_TOKENS)):
        if isinstance(listed, (list, dict)) and len(listed) > most:
            raise KddiagError(f"{shown} lists {len(listed):,} {what}; kddiag reads tokenizers of at most {most:,}")


def check_added_tokens(path: Path, where: str) -> None:
    """Refuse tokenizer files that list more than MAX_ADDED_TOKENS added or special tokens (ADDED_TOKEN_LISTS),
    trusted or not: a bound on the time loading takes, not on what it may run."""
    read: dict[str, Any] = {}
    for name, key in ADDED_TOKEN_LISTS:
        file = path / name
        if name not in read:
            read[name] = read_json(file, f"{where}: {name}", MAX_TOKENIZER_BYTES) if file.is_file() else None
        listed = read[name] if key is None else read[name].get(key) if isinstance(read[name], dict) else None
        if isinstance(listed, (list, dict)) and len(listed) > MAX_ADDED_TOKENS:
            raise KddiagError(f"{where}: {name}{'' if key is None else f' lists in {key}'} {len(listed):,} added "
                              f"tokens; kddiag reads tokenizers of at most {MAX_ADDED_TOKENS:,}")


class _DuplicateKey(Exception):
    """A key given twice in one JSON object (its name as the message)."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    """A JSON object's pairs as a dict; a key given twice raises _DuplicateKey (json.loads keeps the last,
    another parser may keep the first)."""
    content = dict(pairs)
    if len(content) != len(pairs):
        seen: set[str] = set()
        raise _DuplicateKey(next(k for k, _ in pairs if k in seen or seen.add(k)))
    return content


def _shipped_code(content: dict) -> str | None:
    """What in one JSON config names code outside transformers ('names code shipped with the model
    (auto_map)', …), or None; nested objects (a text_config) are searched too."""
    stack, depth = [content], 0
    while stack and depth < _MAX_CONFIG_DEPTH:
        nested = []
        for item in stack:
            for key, value in item.items():
                if key == "auto_map" and value:
                    return "names code shipped with the model (auto_map)"
                if key in CLASS_NAME_KEYS and value is not None and not _built_in(key, value):
                    shown = value if isinstance(value, str) else json.dumps(value)[:80]
                    return f"names {key} '{shown}', a class transformers does not have (custom code)"
                if isinstance(value, dict):
                    nested.append(value)
        stack, depth = nested, depth + 1
    return None


def _built_in(key: str, name: Any) -> bool:
    """Whether class ``name`` under ``key`` is one of transformers' own (not one registered by shipped code)."""
    if not isinstance(name, str) or not name.isidentifier():
        return False
    import importlib

    import transformers

    module_name, function = CLASS_NAME_KEYS[key]
    found = None
    with _quiet():
        try:
            found = getattr(importlib.import_module(f"transformers.models.auto.{module_name}"), function)(name)
        except Exception:  # an older transformers without this lookup, or a lookup that fails
            found = None
        if found is None:
            try:
                found = getattr(transformers, name, None)
            except Exception:  # a lazy attribute whose optional dependency is missing
                found = None
    return isinstance(found, type) and found.__module__.startswith("transformers.")


def _read_json(file: Path, where: str) -> dict:
    """A JSON object from a regular file of at most MAX_CONFIG_BYTES."""
    content = read_json(file, f"{where}: {file.name}", MAX_CONFIG_BYTES, "a configuration, a small JSON object")
    if not isinstance(content, dict):
        raise KddiagError(f"{where}: {file.name} holds a {type(content).__name__}; expected a JSON object")
    return content


def _tensor_shapes(path: Path, where: str) -> dict[str, tuple[int, ...]]:
    """Name → shape of every tensor in the weights transformers would read (the shards
    ``model.safetensors.index.json`` names, else ``model.safetensors``, else every ``.safetensors`` file),
    read from their headers (8 bytes of header length, then a JSON object), without loading any tensor.
    A shard named outside the directory is refused."""
    shapes: dict[str, tuple[int, ...]] = {}
    for file in _safetensors_files(path, where):
        shown = f"{where}: {file.name}"
        with open_regular(file, shown) as handle:
            size = os.fstat(handle.fileno()).st_size
            length = int.from_bytes(handle.read(8), "little")
            if size < 8 or not 2 <= length <= min(size - 8, MAX_SAFETENSORS_HEADER):
                raise KddiagError(f"{shown}: not a safetensors file (its header claims {length:,} bytes in a "
                                  f"file of {size:,}): corrupt or truncated")
            header = handle.read(length)
        try:
            entries = json.loads(header.decode("utf-8"))
        except (ValueError, RecursionError) as error:
            raise KddiagError(f"{shown}: not a safetensors file (header: {one_line(error)})") from None
        for name, entry in entries.items() if isinstance(entries, dict) else ():
            shape = entry.get("shape") if isinstance(entry, dict) and name != "__metadata__" else None
            if isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
                shapes[name] = tuple(shape)
    return shapes


def _safetensors_files(path: Path, where: str) -> list[Path]:
    """The safetensors files transformers reads: the shards ``model.safetensors.index.json`` names (plain
    files beside it), else ``model.safetensors``, else every ``.safetensors`` file."""
    if (path / "model.safetensors.index.json").is_file():
        weight_map = _read_json(path / "model.safetensors.index.json", where).get("weight_map")
        names = list(weight_map.values()) if isinstance(weight_map, dict) else []
        outside = next((n for n in names if not isinstance(n, str) or Path(n).name != n or n.startswith(".")), None)
        if outside is not None or not names:
            raise KddiagError(f"{where}: model.safetensors.index.json " + (
                f"names the shard {outside!r}, not a file beside it" if names else "has no weight_map of shards"))
        return [path / name for name in sorted(set(names))]
    if (path / "model.safetensors").is_file():
        return [path / "model.safetensors"]
    return sorted(path.glob("*.safetensors"))


def _weight_files(path: Path, where: str, use_safetensors: bool) -> list[Path]:
    """The files holding the weights: the safetensors files transformers reads, or the pickled ones."""
    return _safetensors_files(path, where) if use_safetensors else sorted(path.glob("pytorch_model*.bin"))


def check_model_bytes(path: str | Path, auto: Any, where: str, *, weights: list[Path],
                      trust_remote_code: bool = False) -> None:
    """Refuse a model whose parameters and buffers, in float32, would take more than
    max(:data:`MIN_MODEL_BYTES`, :data:`MODEL_BYTES_PER_WEIGHT_BYTE` × the bytes of ``weights`` on disk), before
    transformers builds it: the model is built from its config on the meta device, where nothing is
    allocated (buffers made in ``__init__``, such as GPT-Neo's ``tril(ones(P, P))`` causal mask per layer, land
    there too), and its tensors' sizes are summed. ``auto``: the transformers Auto class that will load it.
    One line naming the largest tensor."""
    import transformers

    stored = sum(os.stat(file).st_size for file in weights)
    limit = max(MIN_MODEL_BYTES, MODEL_BYTES_PER_WEIGHT_BYTE * stored)
    with _quiet():
        try:
            config = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True,
                                                             trust_remote_code=bool(trust_remote_code))
            with torch.device("meta"):
                model = auto.from_config(config, trust_remote_code=bool(trust_remote_code))
        except Exception as error:
            raise KddiagError(f"{where}: transformers could not build a model from its config.json "
                              f"({type(error).__name__}: {one_line(error)})") from None
    tensors: dict[int, tuple[str, int]] = {}
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        size = tensor.numel() * (4 if tensor.is_floating_point() else tensor.element_size())
        tensors.setdefault(id(tensor), (name, size))
    needed = sum(size for _, size in tensors.values())
    if needed > limit:
        name, size = max(tensors.values(), key=lambda item: item[1])
        raise KddiagError(f"{where}: config.json asks for a model of {_bytes(needed)} (parameters and buffers, "
                          f"float32; the largest, '{name}', {_bytes(size)}) from {_bytes(stored)} of weights; "
                          f"kddiag builds at most {MODEL_BYTES_PER_WEIGHT_BYTE}× the weights' bytes or "
                          f"{MIN_MODEL_BYTES >> 20} MiB: sizes in config.json that the weights do not back")


def _bytes(n: int) -> str:
    """'2.0 GiB', '266 KiB', '12 bytes'."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):,.1f} {unit}"
    return f"{n:,} bytes"


def check_config_sizes(config: dict, shapes: dict[str, tuple[int, ...]] | None, where: str) -> None:
    """Refuse sizes in ``config.json`` that the weights cannot back, before transformers builds the model.

    Layer counts (:data:`LAYER_KEYS`) may be at most :data:`MAX_LAYERS` and at most the layers the tensor
    names index (``h.0.``, ``h.1.``, … count 2), or :data:`LAYER_SHARING` times that for a model whose layers
    share weights (ALBERT) and for an encoder's count in a causal LM's config (which builds no encoder);
    widths, vocabulary sizes, head and label counts (:data:`WIDTH_KEYS`) at most the largest tensor
    dimension (zero-element tensors count for nothing); ``max_position_embeddings`` at most that, or, for
    a config that states rotary (or ALiBi) positions, which store no table, at most :data:`MAX_POSITIONS`. Without ``shapes`` (pickled weights) only the layer ceiling applies. Building a
    model costs time per layer and memory per width (a config with ``n_layer: 1000000`` never returns).
    """
    # a zero-element tensor ([10**8, 0]: no bytes on disk) backs no size
    shapes = None if shapes is None else {name: shape for name, shape in shapes.items() if 0 not in shape}
    largest = max((d for shape in (shapes or {}).values() for d in shape), default=0)
    indexed = _indexed_layers(shapes or {})
    rotary = _rotary(config)
    sharing = config.get("model_type") in _LAYER_SHARING_TYPES or "num_hidden_groups" in config
    architectures = config.get("architectures")
    causal_lm = isinstance(architectures, list) and any(
        isinstance(a, str) and a.endswith(_KINDS[CAUSAL_LM]) for a in architectures)
    for key, value in _sizes(config):
        number = as_float(value)
        shown = f"{where}: config.json's {key} " + (f"{int(value):,}" if number is not None and number.is_integer()
                                                     and abs(number) < 1e30 else shown_value(value))
        if key in LAYER_KEYS:
            if not value <= MAX_LAYERS:
                raise KddiagError(f"{shown} is above kddiag's ceiling of {MAX_LAYERS:,} layers")
            shared = sharing or (causal_lm and key in _ENCODER_LAYER_KEYS)
            if shapes is not None and value > (LAYER_SHARING if shared else 1) * max(indexed, 1):
                raise KddiagError(f"{shown} does not match the weights, whose tensor names index {indexed:,} "
                                  f"layer(s)")
        elif shapes is not None and key == "max_position_embeddings":
            if not rotary and not value <= largest:  # BERT, GPT-2, OPT: a stored table of this many rows
                raise KddiagError(f"{shown} does not match the weights, whose largest tensor dimension is "
                                  f"{largest:,} (the model stores a table of its positions)")
            if not value <= max(largest, MAX_POSITIONS):
                raise KddiagError(f"{shown} is above kddiag's ceiling of {MAX_POSITIONS:,} positions and larger "
                                  f"than any tensor dimension in the weights ({largest:,})")
        elif shapes is not None and not value <= largest:
            raise KddiagError(f"{shown} does not match the weights, whose largest tensor dimension is {largest:,}")


def _rotary(config: dict) -> bool:
    """Whether the config, or the defaults of its ``model_type`` in transformers (a saved config may leave
    them out), states position encodings that store no table (rotary, ALiBi): only then may
    ``max_position_embeddings`` exceed what the weights hold."""
    if _states_rotary(config):
        return True
    model_type = config.get("model_type")
    if not isinstance(model_type, str):
        return False
    try:
        with _quiet():
            from transformers import CONFIG_MAPPING

            defaults = CONFIG_MAPPING[model_type]().to_dict()
    except Exception:  # unknown to this transformers, or a config class that needs arguments
        return False
    return _states_rotary(defaults)


def _states_rotary(config: dict) -> bool:
    stack, depth = [config], 0
    while stack and depth < _MAX_CONFIG_DEPTH:
        nested = []
        for item in stack:
            for key, value in item.items():
                if key in _ROTARY_KEYS and value not in (None, False):
                    return True
                if isinstance(value, str) and value.lower() in _ROTARY_TYPES and "pos" in key:
                    return True
                if isinstance(value, dict):
                    nested.append(value)
        stack, depth = nested, depth + 1
    return False


def check_attention(config: dict, where: str) -> None:
    """Refuse an ``attn_implementation`` in the config (or a nested one) that is not one of transformers'
    own (:data:`BUILT_IN_ATTENTION`, or ``paged|`` one of them): any other name makes transformers fetch
    a kernel from the Hugging Face Hub (the kernels package) and run it."""
    stack, depth = [config], 0
    while stack and depth < _MAX_CONFIG_DEPTH:
        nested = []
        for item in stack:
            for key, value in item.items():
                if key in ATTENTION_KEYS and value is not None:
                    for name in (value.values() if isinstance(value, dict) else (value,)):
                        if name is not None and not _built_in_attention(name):
                            shown = name if isinstance(name, str) else json.dumps(name)
                            raise KddiagError(f"{where}: config.json's {key} {shown[:80]!r} is not one of "
                                              f"transformers' built-in attention implementations "
                                              f"({', '.join(sorted(BUILT_IN_ATTENTION))}); other names load "
                                              f"kernels from the Hugging Face Hub, which kddiag never does")
                elif isinstance(value, dict):
                    nested.append(value)
        stack, depth = nested, depth + 1


def _built_in_attention(name: Any) -> bool:
    return isinstance(name, str) and name.removeprefix("paged|") in BUILT_IN_ATTENTION


def _sizes(config: dict) -> Iterator[tuple[str, float]]:
    """(key, value) of every number under a size key, in the config and its nested objects."""
    stack, depth = [config], 0
    while stack and depth < _MAX_CONFIG_DEPTH:
        nested = []
        for item in stack:
            for key, value in item.items():
                if isinstance(value, dict):
                    nested.append(value)
                elif (key in LAYER_KEYS or key in WIDTH_KEYS or key == "max_position_embeddings") and isinstance(
                        value, (int, float)) and not isinstance(value, bool):
                    yield key, value
        stack, depth = nested, depth + 1


def _indexed_layers(shapes: dict[str, tuple[int, ...]]) -> int:
    """The most distinct indices at one place in the tensor names: 'h.0.w', 'h.1.w', 'h.1.b' → 2."""
    indices: dict[str, set[str]] = {}
    for name in shapes:
        parts = name.split(".")
        for i, part in enumerate(parts):
            if part.isdigit():
                indices.setdefault(".".join("#" if p.isdigit() else p for p in parts[:i]), set()).add(part)
    return max((len(found) for found in indices.values()), default=0)


def _kind(config: dict, where: str) -> tuple[str, str]:
    """The format ('hf-causal-lm' or 'hf-sequence-classifier') and the architecture named in the config."""
    names = config.get("architectures") or []
    for name in names if isinstance(names, list) else []:
        for kind, endings in _KINDS.items():
            if isinstance(name, str) and name.endswith(endings):
                return kind, name
    raise KddiagError(f"{where}: config.json names architectures {names!r}; kddiag supports sequence classifiers "
                      f"(*ForSequenceClassification) and causal language models (*ForCausalLM, *LMHeadModel)")


def _weights_format(path: Path, where: str, trust_pickle: bool) -> bool:
    """True for safetensors weights; False for pickled ones, allowed by ``trust_pickle``."""
    if any(path.glob("*.safetensors")):
        return True
    if any(path.glob("pytorch_model*.bin")):
        if not trust_pickle:
            raise UnsafeLoadError(f"{where}: the weights are pickled (pytorch_model.bin), and unpickling can run "
                                  f"arbitrary code; pass --trust-pickle only for files you trust, or re-save the "
                                  f"model with save_pretrained (safetensors)")
        return False
    files = sorted(p.name for p in path.iterdir())
    raise KddiagError(f"{where}: no weights beside config.json (found {first(files)}); expected model.safetensors "
                      f"as written by save_pretrained")


def _check_classifier(config: Any, where: str) -> None:
    problem = getattr(config, "problem_type", None)
    if problem in ("regression", "multi_label_classification") or config.num_labels < 2:
        raise KddiagError(f"{where}: a {problem or 'one-output'} model ({config.num_labels} labels); kddiag "
                          f"measures single-label classifiers with at least 2 classes (softmax over the labels)")


def _check_causal_lm(adapter: CausalLMAdapter, where: str) -> None:
    """Refuse a model whose own forward gives other logits than the adapter, on a small random probe."""
    model = adapter.model
    n_ids = min(adapter.lm_head.out_features, model.get_input_embeddings().num_embeddings)
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, n_ids, (2, 6), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 4:] = 0  # right padding, as kddiag batches
    targets = torch.where(attention_mask.bool(), input_ids, IGNORE_INDEX)
    with torch.inference_mode(), _quiet():
        try:
            want = model(input_ids=input_ids, attention_mask=attention_mask).logits[targets != IGNORE_INDEX]
            got = adapter(TokenInputs(input_ids, attention_mask, targets))
        except Exception as error:
            raise KddiagError(f"{where}: {type(model).__name__} failed on a probe of 2 sequences of 6 tokens "
                              f"({type(error).__name__}: {one_line(error)})") from None
    difference = float((got - want).abs().max()) if got.shape == want.shape else float("inf")
    if not difference <= _PROBE_TOLERANCE * max(1.0, float(want.abs().max())):
        raise KddiagError(f"{where}: {type(model).__name__} computes its logits otherwise than its LM head on the "
                          f"last hidden state (difference {difference:.3g} on a probe); kddiag supports causal LMs "
                          f"whose logits are that, soft-capped or scaled")


def _check_inputs(inputs: Any, *, need_targets: bool) -> None:
    if not isinstance(inputs, TokenInputs):
        raise KddiagError(f"a Hugging Face model takes tokenized text (TokenInputs); got {type(inputs).__name__}")
    if need_targets and inputs.targets is None:
        raise KddiagError("a causal language model needs token inputs with targets (the token to predict at "
                          "each position, -100 where none)")


def _version(text: str) -> tuple[int, ...]:
    """'4.56.0.dev0' -> (4, 56)."""
    return tuple(int(part) for part in re.findall(r"\d+", text)[:2])


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence Python warnings, anything printed on stdout (which carries --json) and, once transformers is
    imported, its logging and progress bars; restore after."""
    import sys

    utils = sys.modules.get("transformers.utils.logging")
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        if utils is None:
            yield
            return
        verbosity, progress = utils.get_verbosity(), utils.is_progress_bar_enabled()
        utils.set_verbosity_error()
        utils.disable_progress_bar()
        try:
            yield
        finally:
            utils.set_verbosity(verbosity)
            if progress:
                utils.enable_progress_bar()


TRAINER_STATE = "trainer_state.json"  # the Trainer's own record in a checkpoint-N folder (save_state too)
MAX_TRAINER_STATE_BYTES = 64 << 20  # its log history grows with the run: a long one is a few MB


def trainer_recipe(path: Path) -> dict:
    """The epochs a Hugging Face Trainer ran, its batch size and the peak learning rate it logged, from
    ``trainer_state.json`` in the model's folder (for remedy probes to train as it did); {} when there is
    none or it holds no plain numbers. (``training_args.bin`` is a pickle: never read.)"""
    file = path / TRAINER_STATE
    if not file.is_file():
        return {}
    try:
        state = read_json(file, f"'{file}'", MAX_TRAINER_STATE_BYTES)
    except (KddiagError, OSError):
        return {}  # a record kddiag may use, not an input it was given: skipped, never fatal
    if not isinstance(state, dict):
        return {}
    logged = state.get("log_history") if isinstance(state.get("log_history"), list) else []
    rates = [as_float(entry.get("learning_rate")) for entry in logged if isinstance(entry, dict)]
    rates = [rate for rate in rates if rate is not None and math.isfinite(rate) and rate > 0]
    found = {"epochs": as_float(state.get("epoch")), "batch_size": as_float(state.get("train_batch_size")),
             "learning_rate": max(rates) if rates else None}  # the peak of its schedule, as logged
    return {name: value for name, value in found.items() if value is not None}
