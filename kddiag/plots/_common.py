"""What every figure shares: the models' colours, legends under the axes, new axes, and the panel that
says why there is nothing to draw. matplotlib is imported when a figure is drawn."""
from __future__ import annotations

import textwrap
from typing import Any

import numpy as np

from kddiag.types import EVAL, TRANSFER

MODEL_COLORS = {"teacher": "#0072B2", "student": "#D55E00", "baseline": "#7F7F7F"}
SET_COLORS = {TRANSFER: "#009E73", EVAL: "#CC79A7"}
SECOND_COLOR = "#009E73"  # a second student curve on the same axes
MIN_BIN_COUNT = 5  # reliability bins with fewer examples are marked, not joined by the line


def legend_below(ax, handles=None, labels=None, *, ncol: int = 2, fontsize: float = 7.5, **options):
    """The axes' legend under the axes and their x label, never over the data: anchored below the axes by
    the height their tick labels and x label take (in points, so a later tight layout keeps it clear);
    the figure's layout makes room for it."""
    fig = ax.figure
    from matplotlib.transforms import ScaledTranslation

    below = ax.bbox.y0 - ax.get_tightbbox().y0  # pixels the labels take under the axes
    anchor = ax.transAxes + ScaledTranslation(0, -(below + 2) / fig.dpi, fig.dpi_scale_trans)
    args = () if handles is None else (handles, labels)
    return ax.legend(*args, loc="upper center", bbox_to_anchor=(0.5, 0.0), bbox_transform=anchor, ncol=ncol,
                     fontsize=fontsize, frameon=False, **options)


def new_axes(ax, *, figsize=(5.6, 3.4)):
    """``ax``, or new axes of ``figsize``."""
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    _, ax = plt.subplots(figsize=figsize)
    return ax


def new_figure(fig, *, figsize):
    """``fig``, or a new figure of ``figsize``."""
    if fig is not None:
        return fig
    import matplotlib.pyplot as plt

    return plt.figure(figsize=figsize)


def not_available(ax, reason: str):
    """Turn ``ax`` into a panel that says why there is nothing to draw."""
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_color("#cccccc")
    ax.text(0.5, 0.5, textwrap.fill(f"not available: {reason}", 36), ha="center", va="center",
            transform=ax.transAxes, fontsize=9, color="#555555")
    return ax


def floats(value: Any) -> np.ndarray:
    """A measured array as floats (NaN where undefined)."""
    return np.asarray(value, dtype=float)


def log_scale(ax, axis: str = "x", base: float = 10) -> None:
    """A log axis whose ticks read as plain text ("1e-08", "0.5", "16"): figures are drawn with mathtext
    off (names from the inputs may hold '$'), where matplotlib's own log labels would show their markup."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    target = ax.xaxis if axis == "x" else ax.yaxis
    (ax.set_xscale if axis == "x" else ax.set_yscale)("log", base=base)
    target.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    target.set_minor_formatter(NullFormatter())
