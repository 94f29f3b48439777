"""Hugging Face model directories written by ``save_pretrained``: sequence classifiers and causal LMs.

A directory holds ``config.json`` and its weights (``model.safetensors``, possibly sharded). The kind
comes from ``config.architectures``: names ending in ``ForSequenceClassification`` (classes = the
labels) or ``ForCausalLM``/``LMHeadModel`` (classes = the vocabulary, one example per target token).
Nothing is downloaded (``local_files_only``); pickled weights (``pytorch_model.bin``) load only with
``trust_pickle``, code shipped with the model (``auto_map``) only with ``trust_remote_code``.

The model is wrapped in an adapter taking :class:`~kddiag.types.TokenInputs`, so that kddiag's
feature hook (:mod:`kddiag.collect.modules`: the last ``nn.Linear`` called whose ``out_features`` is
the class count) finds the classification head or the LM head, called on one row per example.
``transformers`` is imported here, lazily: it is an optional extra (``pip install 'kddiag[transformers]'``).
"""
from __future__ import annotations

import contextlib
import inspect
import json
import re
import warnings
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from kddiag.errors import KddiagError, UnsafeLoadError
from kddiag.loading._text import first, one_line
from kddiag.types import IGNORE_INDEX, LoadedModel, TokenInputs

__all__ = ["load_hf_model", "SequenceClassifierAdapter", "CausalLMAdapter", "CAUSAL_LM", "SEQUENCE_CLASSIFIER"]

CAUSAL_LM, SEQUENCE_CLASSIFIER = "hf-causal-lm", "hf-sequence-classifier"  # LoadedModel.format
_KINDS = {CAUSAL_LM: ("ForCausalLM", "LMHeadModel"), SEQUENCE_CLASSIFIER: ("ForSequenceClassification",)}
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt", "merges.txt",
                    "tokenizer.model", "spiece.model", "sentencepiece.bpe.model")
_PROBE_TOLERANCE = 1e-4  # relative to the largest logit: float32 round-off of one matrix product, with margin


def load_hf_model(path: str | Path, *, role: str, trust_remote_code: bool = False,
                  trust_pickle: bool = False) -> LoadedModel:
    """Load a local ``save_pretrained`` directory as a :class:`~kddiag.types.LoadedModel`, float32 on the CPU.

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
                              f"pip install 'kddiag[transformers]'") from None
    config = _read_config(path, where)
    kind, architecture = _kind(config, where)
    if config.get("auto_map") and not trust_remote_code:
        raise UnsafeLoadError(f"{where}: config.json names code shipped with the model (auto_map), which runs on "
                              f"load; pass --trust-remote-code only for models you trust")
    use_safetensors = _weights_format(path, where, trust_pickle)
    auto = (transformers.AutoModelForCausalLM if kind == CAUSAL_LM
            else transformers.AutoModelForSequenceClassification)
    # transformers >= 4.56 names it dtype (and 5 defaults to the stored one); older ones load float32
    dtype = {"dtype": torch.float32} if _version(transformers.__version__) >= (4, 56) else {}
    with _quiet():
        try:
            model, info = auto.from_pretrained(
                str(path), local_files_only=True, use_safetensors=use_safetensors,
                trust_remote_code=trust_remote_code, output_loading_info=True, **dtype)
        except Exception as error:
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
    """A ``*ForSequenceClassification`` model on :class:`~kddiag.types.TokenInputs`: logits (n_sequences, n_labels).

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
    """A ``*ForCausalLM`` model on :class:`~kddiag.types.TokenInputs`: logits (n_targets, vocab_size) at the
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

def _read_config(path: Path, where: str) -> dict:
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise KddiagError(f"{where}: config.json is not readable JSON ({one_line(error)})") from None
    if not isinstance(config, dict):
        raise KddiagError(f"{where}: config.json holds a {type(config).__name__}; expected a JSON object")
    return config


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
    """Silence Python warnings and, once transformers is imported, its logging and progress bars; restore after."""
    import sys

    utils = sys.modules.get("transformers.utils.logging")
    with warnings.catch_warnings():
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
