"""Small models and data shared by the collect tests."""
import numpy as np
import torch
from torch import nn

from kddiag.inputs import Dataset, LoadedModel

N, D, C = 50, 8, 3


def mlp(seed: int, hidden: int = 16) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(D, hidden), nn.ReLU(), nn.Linear(hidden, C))


def make_data(n: int = N, seed: int = 0) -> Dataset:
    generator = torch.Generator().manual_seed(seed)
    return Dataset(name="mem", x=torch.randn(n, D, generator=generator), labels=np.arange(n) % C)


def in_memory(module) -> LoadedModel:
    return LoadedModel(source="<in-memory>", format="module", module=module)


def manual(model: nn.Sequential, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Logits and penultimate features of a Sequential MLP, computed by hand."""
    with torch.no_grad():
        features = model[:-1](x)
        return model(x).double().numpy(), features.double().numpy()
