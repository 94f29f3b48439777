"""The MNIST-1D family: 1-D CNN teachers distilled into MLP students (Greydanus 2020, arXiv 2011.14439).

MNIST-1D's generator (``pip install mnist1d``; its ``make_dataset`` builds the signals locally, nothing
is downloaded) turns ten 1-D digit templates into 40-sample sequences by padding, shear, translation and
correlated noise. Convolutions handle the translations; an MLP does far worse, so a CNN teacher holds
knowledge a small MLP student can take from it. A family none of kddiag's rules or probe designs were set
on: ``case_studies.probe_validation`` holds its probe designs out on it.
"""
from __future__ import annotations

import importlib.util

import numpy as np
import torch
from torch import nn

from case_studies._cnn import CNNRecipe

N_SAMPLES = 10_000  # signals generated (MNIST-1D's own generator seed, 42): split afresh for each study seed
N_TRANSFER, N_EVAL = 2_000, 2_000  # the student's transfer set and the held-out eval set; the rest is extra
TEACHER_RECIPE = CNNRecipe(epochs=30, lr=2e-3)  # on transfer + extra (6,000 signals)
WEAK_TEACHER, N_WEAK = CNNRecipe(epochs=3, lr=1e-3), 500  # a few steps on 500 signals
NOISY_TEACHER, NOISE_RATE = CNNRecipe(epochs=30, lr=2e-3), 0.4  # fits labels 40 % of which are redrawn
STUDENT_RECIPE = CNNRecipe(epochs=30, lr=2e-3)
STUDENT_HIDDEN, TINY_HIDDEN = (128,), (8,)


def missing_extra() -> str | None:
    return None if importlib.util.find_spec("mnist1d") else "needs mnist1d: pip install mnist1d"


def mnist1d_task(seed: int):
    """MNIST-1D signals, shuffled with ``seed``: ``train`` the transfer set, ``test`` the eval set, ``extra``
    the rest; inputs (n, 40) float32."""
    from mnist1d.data import get_dataset_args, make_dataset

    from case_studies._harness import Task
    from kddiag.inputs import ClassInfo, Dataset

    args = get_dataset_args()
    args.num_samples = N_SAMPLES
    data = make_dataset(args)
    x = torch.as_tensor(np.concatenate([data["x"], data["x_test"]]), dtype=torch.float32)
    labels = np.concatenate([data["y"], data["y_test"]]).astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(labels))
    parts = {"test": order[:N_EVAL], "train": order[N_EVAL:N_EVAL + N_TRANSFER], "extra": order[N_EVAL + N_TRANSFER:]}
    info = ClassInfo(names=tuple(str(k) for k in range(10)))
    sets = {part: Dataset(f"mnist1d:{part}(seed={seed})", x[idx], labels[idx], info) for part, idx in parts.items()}
    return Task(train=sets["train"], test=sets["test"], extra=sets["extra"])


class Conv1dNet(nn.Module):
    """Three 1-D convolutions and a linear head over the flattened features (MNIST-1D's CNN baseline shape)."""

    def __init__(self, channels: int = 32, n_classes: int = 10, length: int = 40):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(1, channels, 5, padding=2), nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Linear(channels * (length // 4), n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x.reshape(len(x), 1, -1)).flatten(1))


def fit_teacher(x: torch.Tensor, labels: np.ndarray, recipe: CNNRecipe, *, seed: int) -> Conv1dNet:
    from case_studies._cnn import train_cnn

    torch.manual_seed(seed)
    return train_cnn(Conv1dNet(), x, labels, recipe=recipe, seed=seed)


def noisy_labels(labels: np.ndarray, *, rate: float, seed: int) -> np.ndarray:
    """``labels`` with a ``rate`` share redrawn uniformly from the ten classes (seeded)."""
    rng = np.random.default_rng(seed + 7)
    out = labels.copy()
    flip = rng.random(len(labels)) < rate
    out[flip] = rng.integers(0, 10, size=int(flip.sum()))
    return out
