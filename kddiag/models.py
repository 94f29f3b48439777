"""Built-in architectures, addressable by name from the CLI (``--teacher-arch mlp:64-256-256-10``).

A name ``mlp:IN-H1-...-OUT`` builds a ReLU multi-layer perceptron with those layer widths; its last
layer is the logit layer (``nn.Linear``), so penultimate features are found automatically.
"""
from __future__ import annotations

from typing import Callable

from torch import nn

from kddiag.errors import KddiagError


class MLP(nn.Module):
    """Flatten, then Linear+ReLU blocks, then a final linear logit layer."""

    def __init__(self, widths: tuple[int, ...], *, dropout: float = 0.0):
        super().__init__()
        if len(widths) < 2 or any(w < 1 for w in widths):
            raise KddiagError(f"MLP widths must be at least two positive ints (in, ..., out); got {widths}")
        blocks: list[nn.Module] = [nn.Flatten()]
        for fan_in, fan_out in zip(widths[:-2], widths[1:-1]):
            blocks += [nn.Linear(fan_in, fan_out), nn.ReLU()]
            if dropout:
                blocks.append(nn.Dropout(dropout))
        self.body = nn.Sequential(*blocks)
        self.head = nn.Linear(widths[-2], widths[-1])
        self.widths = tuple(widths)

    def forward(self, x):
        return self.head(self.body(x))


def mlp_name(widths: tuple[int, ...]) -> str:
    """The built-in name of an MLP with these widths, e.g. ``mlp:64-128-10``."""
    return "mlp:" + "-".join(str(w) for w in widths)


def builtin_arch(name: str) -> Callable[[], nn.Module] | None:
    """A zero-argument factory for a built-in architecture name, or None if ``name`` is not one."""
    kind, _, spec = name.partition(":")
    if kind != "mlp" or not spec:
        return None
    try:
        widths = tuple(int(w) for w in spec.split("-"))
    except ValueError:
        raise KddiagError(f"built-in arch '{name}': expected mlp:IN-H1-...-OUT with integer widths") from None
    return lambda: MLP(widths)


BUILTIN_ARCH_HELP = "mlp:IN-H1-...-OUT (ReLU MLP with these widths)"
