"""Small convolutional classifiers for the CNN case study, importable by kddiag from a checkpoint's arch.

A checkpoint saved by :func:`save_cnn` names its model ``case_studies._cnn:SmallCNN(channels=(8, 16), ...)``
(literal arguments only), which kddiag builds from a source checkout (the repository root on the path).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from case_studies._training import distillation_loss, fit_minibatches


class SmallCNN(nn.Module):
    """Blocks of 3×3 convolution + ReLU + max-pooling, then an optional hidden layer and a linear logit layer.

    ``channels``: output channels of each block (each block pools by ``pool``); ``hidden``: width of the
    hidden layer (0: none); inputs (n_samples, 1, input_size, input_size).
    """

    def __init__(self, channels: tuple[int, ...] = (8, 16), hidden: int = 32, n_classes: int = 10,
                 input_size: int = 28, pool: int = 2):
        super().__init__()
        blocks: list[nn.Module] = []
        size, fan_in = input_size, 1
        for width in channels:
            blocks += [nn.Conv2d(fan_in, width, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(pool)]
            size, fan_in = size // pool, width
        blocks.append(nn.Flatten())
        features = fan_in * size * size
        if hidden:
            blocks += [nn.Linear(features, hidden), nn.ReLU()]
            features = hidden
        self.body = nn.Sequential(*blocks)
        self.head = nn.Linear(features, n_classes)
        self.arch = (f"case_studies._cnn:SmallCNN(channels={tuple(channels)!r}, hidden={hidden}, "
                     f"n_classes={n_classes}, input_size={input_size}, pool={pool})")

    def forward(self, x):
        return self.head(self.body(x))


@dataclass(frozen=True)
class CNNRecipe:
    """Mini-batch Adam: epochs over the training set, learning rate, batch size."""

    epochs: int
    lr: float = 3e-3
    batch_size: int = 64


def new_cnn(*, seed: int, **shape) -> SmallCNN:
    """A freshly initialized :class:`SmallCNN`, seeded."""
    torch.manual_seed(seed)
    return SmallCNN(**shape)


def train_cnn(model: nn.Module, x: torch.Tensor, labels: np.ndarray, *, recipe: CNNRecipe, seed: int,
              soft_targets: np.ndarray | None = None, temperature: float = 1.0, alpha: float = 0.0,
              epsilon: float = 0.0) -> nn.Module:
    """Train ``model`` in place on (1 − α)·CE + α·τ²·KL(ρ ‖ q) (case_studies._training.distillation_loss).

    ``soft_targets`` ρ: (n_samples, n_classes) at τ; ``epsilon``: label smoothing instead (ρ uniform, τ = 1,
    α = ε); neither: CE. Batches are drawn with ``seed``, so two runs from one initialization are paired.
    """
    y = torch.as_tensor(labels, dtype=torch.long)
    rho = None if soft_targets is None else torch.as_tensor(soft_targets, dtype=torch.float32)
    if epsilon:
        n_classes = model.head.out_features
        rho, temperature, alpha = torch.full((len(y), n_classes), 1.0 / n_classes), 1.0, epsilon

    def batch_loss(batch: torch.Tensor) -> torch.Tensor:
        return distillation_loss(model(x[batch]), y[batch], None if rho is None else rho[batch],
                                 temperature=temperature, alpha=alpha)

    return fit_minibatches(model, len(y), batch_loss, epochs=recipe.epochs, batch_size=recipe.batch_size,
                           lr=recipe.lr, seed=seed)


def cnn_logits(model: nn.Module, x: torch.Tensor, *, batch_size: int = 1000) -> np.ndarray:
    """The model's logits (n_samples, n_classes) as float64."""
    model.eval()
    with torch.inference_mode():
        return torch.cat([model(part) for part in x.split(batch_size)]).double().numpy()


def save_cnn(model: nn.Module, path: Path, *, arch: str | None = None, temperature: float | None = None,
             alpha: float | None = None) -> Path:
    """Save ``{'state_dict', 'arch', 'temperature', 'alpha'}``; ``arch`` defaults to the model's own."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "arch": arch or model.arch, "temperature": temperature,
                "alpha": alpha}, path)
    return path
