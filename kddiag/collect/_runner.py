"""What every forward-pass strategy shares: device and mode handling, batching, logits and feature rows."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from kddiag.errors import KddiagError
from kddiag.loading import logits_of
from kddiag.inputs import LoadedModel, TokenInputs, n_examples_of


class Runner:
    """Runs one model batch by batch, giving its logits and, when found, its penultimate features.

    A strategy (one subclass per kind of model) finds the features and the logit-layer weight in
    :meth:`_wire`, called once on a one-row probe, and may replace ``_forward``.
    """

    sets_eval_mode = True  # switch the module to eval() and back

    def __init__(self, role: str, model: LoadedModel):
        self.role, self.module = role, model.module
        self.source = None if model.format == "module" else model.source  # named in errors
        self.reads_tokens = model.format.startswith("hf-")  # a Hugging Face model takes TokenInputs
        self._who = role if self.source is None else f"{role} '{self.source}'"
        self.n_classes: int | None = None  # from the first batch: every batch must give as many
        self.has_features = True  # False: this model gives no features
        self.weight: np.ndarray | None = None
        self._forward = self._plain  # what _call() runs: returns (output, features or None)
        self._modes: list[tuple[Any, bool]] = []  # every submodule's training flag, put back by finish()
        self._fixed_batch: int | None = None  # programs exported for one batch size get exactly that
        self.device: Any = None
        self.float_dtype: Any = None

    def start(self, probe_x: Any, *, device: str, feature_layer: str | None) -> None:
        """Move to ``device``, switch to eval mode, then wire the feature capture on a one-row probe."""
        self.device = torch.device(device)
        try:
            self.module.to(self.device)
        except Exception as error:
            raise KddiagError(f"{self.role}: cannot move the model to {device} ({one_line(error)})") from None
        if self.sets_eval_mode:
            self._modes = [(m, m.training) for m in self.module.modules()]
            self.module.eval()
        params = [p for p in self.module.parameters() if p.is_floating_point()]
        self.float_dtype = params[0].dtype if params else torch.float32
        self._wire(probe_x, feature_layer)

    def _wire(self, probe_x: Any, feature_layer: str | None) -> None:
        raise NotImplementedError

    def _plain(self, x: Any) -> tuple[Any, Any]:
        return self.module(x), None

    def _probe(self, x: Any):
        output, _ = self._call(x)
        return output

    def run(self, batch: Any, *, on_device: bool = False) -> tuple[Any, np.ndarray | None]:
        """One batch's logits (float32, or float64/float16 as the model computes them) and features
        (float32, None once the model gave none), as numpy arrays on the CPU; ``on_device``: the logits
        as a tensor left where the model computed them (the statistics run there)."""
        logits, features = self._call(batch)
        dtype = logits.dtype if logits.dtype in (torch.float16, torch.float64) else torch.float32
        logits = logits.detach().to(dtype=dtype) if on_device else logits.detach().to("cpu", dtype=dtype).numpy()
        if features is None or not self.has_features:
            self.has_features = False
            return logits, None
        return logits, features.detach().to("cpu", dtype=torch.float32).numpy()

    def _call(self, batch: Any) -> tuple[Any, Any]:
        """Logits (n, C) and features (n, D) or None for one batch, padding to a fixed batch size."""
        x = batch.to(self.device, dtype=self.float_dtype) if batch.is_floating_point() else batch.to(self.device)
        n = n_examples_of(x)  # rows of logits expected: inputs, or a causal LM's target positions
        pieces = [x] if self._fixed_batch is None else _fixed_chunks(x, self._fixed_batch)
        logits, features = [], []
        for piece in pieces:
            try:
                output, feats = self._forward(piece)
                out = logits_of(output)
            except KddiagError as error:
                raise KddiagError(f"{self._who}: {error}") from None
            except Exception as error:
                if isinstance(piece, TokenInputs) and not self.reads_tokens:
                    raise KddiagError(f"{self._who} is not a Hugging Face model, but the data is tokenized text "
                                      f"(input_ids) read for one; give every model as a Hugging Face directory "
                                      f"(save_pretrained) or as logits") from None
                raise KddiagError(f"{self._who} failed on inputs of shape {tuple(piece.shape)} ({piece.dtype}): "
                                  f"{type(error).__name__}: {one_line(error)}") from None
            rows = n_examples_of(piece)
            if out.ndim != 2 or out.shape[0] != rows:
                raise KddiagError(f"{self._who} returned outputs of shape {tuple(out.shape)} for {rows} "
                                  f"inputs; expected logits of shape (n_samples, n_classes) = ({rows}, C)")
            logits.append(out)
            usable = isinstance(feats, torch.Tensor) and feats.ndim >= 2 and feats.shape[0] == rows
            features.append(feats.flatten(1) if usable else None)
        out = (torch.cat(logits) if len(logits) > 1 else logits[0])[:n]  # [:n] drops the padding
        if self.n_classes is not None and out.shape[1] != self.n_classes:
            raise KddiagError(f"{self.role} returned {out.shape[1]} classes on one batch and "
                              f"{self.n_classes} on another")
        self.n_classes = out.shape[1]
        if any(f is None for f in features):
            return out, None
        return out, (torch.cat(features) if len(features) > 1 else features[0])[:n]

    def finish(self) -> None:
        """Put back every submodule's training flag (a train-mode model may hold frozen eval-mode parts)."""
        for module, training in self._modes:
            module.training = training


def weight_array(weight: Any) -> np.ndarray:
    """A logit-layer weight as a float64 numpy copy."""
    return weight.detach().to("cpu", torch.float64).numpy().copy()


def _fixed_chunks(x: Any, size: int) -> list:
    """``x`` cut into chunks of exactly ``size`` rows, the last padded by repeating its final row."""
    chunks = list(torch.split(x, size))
    last = chunks[-1]
    if len(last) < size:
        chunks[-1] = torch.cat([last, last[-1:].expand(size - len(last), *last.shape[1:])])
    return chunks


def one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return (text[:240] + "…") if len(text) > 240 else text or type(error).__name__
