"""Small MLPs on separable Gaussian classes, shared by the monitor and live-metric tests, and a deadline
that turns a hang into a failure (the file-kind and Hugging Face attack tests)."""
import contextlib
import signal

import numpy as np
import pytest
import torch
from torch import nn

N, D, C = 300, 8, 3


def make_data(seed: int = 0):
    """Three separable Gaussian classes: x (N, D) float32, y (N,) int64."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, C, N)
    centers = rng.normal(0, 3, (C, D))
    x = (centers[y] + rng.normal(0, 1, (N, D))).astype(np.float32)
    return torch.as_tensor(x), torch.as_tensor(y)


def make_mlp(hidden: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(D, hidden), nn.ReLU(), nn.Linear(hidden, C))


def fit(model: nn.Module, x, y, steps: int = 150) -> nn.Module:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model


@pytest.fixture(scope="module")
def data():
    return make_data()


@pytest.fixture(scope="module")
def teacher(data):
    return fit(make_mlp(32, 0), *data).eval()


def monitor_of(teacher, data, **options):
    from kddiag import Monitor

    return Monitor(teacher, data=data, temperature=4.0, alpha=0.9, **options)


@contextlib.contextmanager
def deadline(seconds=20):
    """Fail instead of hanging: SIGALRM interrupts a blocked open or read after ``seconds``."""
    def expired(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
