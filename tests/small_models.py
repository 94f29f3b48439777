"""Small MLPs on separable Gaussian classes, shared by the monitor and live-metric tests, a deadline
that turns a hang into a failure and a one-line error check (the file-kind and Hugging Face attack tests)."""
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


def distillation_module(student: nn.Module, teacher: nn.Module):
    """A Lightning module distilling ``teacher`` into ``student`` at τ = 4, α = 0.9 (kddiag's one KD loss),
    logging its loss as ``train_loss``."""
    import lightning

    from kddiag.distill import distillation_loss

    class Distill(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.student, self.teacher = student, teacher.requires_grad_(False)

        def training_step(self, batch, batch_idx):
            x, y = batch
            with torch.no_grad():
                soft = torch.softmax(self.teacher(x) / 4.0, dim=1)
            loss = distillation_loss(self.student(x), y, soft, temperature=4.0, alpha=0.9)
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.Adam(self.student.parameters(), lr=1e-2)

    return Distill()


def one_line(error_info, *words):
    """The error ``pytest.raises`` caught is one line holding every one of ``words``."""
    message = str(error_info.value)
    assert "\n" not in message, message
    for word in words:
        assert word in message, message
