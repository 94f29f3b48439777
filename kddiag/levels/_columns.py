"""Per-example columns: what each level asks the softmax pass for, and how the summary keeps it.

A level declares its per-example quantities as :class:`Column` s: a name, how to compute the values
of one block of examples from that block's softmax pass (:class:`Block`), which models it needs, and
whether the summary keeps its exact mean over every example (``mean``), its values on the example
reservoir (``sample``) and its mean per token-position bucket (``stratum``). The streaming statistics
(:mod:`kddiag.accumulate`) compute, per block, every column whose models are present; a column may
read other columns (``block["teacher.correct"]``), each computed once per block.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from kddiag.metrics._common import SoftmaxStats
from kddiag.outputs import is_device_array, to_host
from kddiag.types import ROLES


@dataclass(frozen=True)
class Column:
    """One per-example quantity and how the summary keeps it.

    ``compute`` returns the block's values ((n,) array), or None where the quantity is undefined for
    every example alike (dark knowledge with fewer than 3 classes): the column is then absent.
    """

    name: str
    compute: Callable[["Block"], np.ndarray | None]
    needs: frozenset[str] = frozenset({"teacher"})  # the models it reads
    mean: bool = False  # exact count, sum and sum of squares over every example
    sample: bool = False  # its values on the example reservoir
    stratum: str | None = None  # its mean per token-position bucket, under this name (token positions only)


def per_model(name: str, compute: Callable[["Block", str], np.ndarray | None], *,
              mean: bool | tuple[str, ...] = False, sample: bool | tuple[str, ...] = False,
              strata: Mapping[str, str] | None = None, roles: tuple[str, ...] = ROLES) -> tuple[Column, ...]:
    """One column ``<role>.<name>`` per model of ``roles``, each needing that model alone. ``mean`` and
    ``sample`` are True, False or the models whose column is kept so; ``strata`` role -> the name of its
    mean per token-position bucket."""
    strata = strata or {}

    def kept(flag: bool | tuple[str, ...], role: str) -> bool:
        return flag if isinstance(flag, bool) else role in flag

    return tuple(Column(f"{role}.{name}", lambda block, role=role: compute(block, role), frozenset({role}),
                        mean=kept(mean, role), sample=kept(sample, role), stratum=strata.get(role))
                 for role in roles)


class Block:
    """One block of examples' softmax pass, as the columns read it: each column computed on first use.

    ``logits``: each model's (n, C) logits (numpy, or tensors on their device); ``one``: each model at
    τ = 1; ``teacher_t``/``student_t``: at the distillation temperature (the teacher's with cross terms
    against the student; ``student_t`` None without a student). Every per-example value is numpy.
    """

    def __init__(self, catalogue: Mapping[str, Column], labels: np.ndarray, logits: Mapping[str, np.ndarray],
                 one: Mapping[str, SoftmaxStats], teacher_t: SoftmaxStats, student_t: SoftmaxStats | None, *,
                 alpha: float) -> None:
        self.labels, self.logits, self.alpha = labels, logits, alpha
        self.one, self.teacher_t, self.student_t = one, teacher_t, student_t
        self._catalogue = catalogue
        self._values: dict[str, np.ndarray | None] = {}
        self._shared: dict[str, object] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._values:
            self._values[name] = self._catalogue[name].compute(self)
        return self._values[name]  # type: ignore[return-value]

    def shared(self, key: str, compute: Callable[[], object]) -> object:
        """An intermediate several columns read (e.g. the decoupled KD terms), computed once."""
        if key not in self._shared:
            self._shared[key] = compute()
        return self._shared[key]

    def columns(self, names: Iterable[str]) -> dict[str, np.ndarray]:
        """The values of ``names`` whose models are present, leaving out those undefined on this block."""
        present = set(self.one)
        values = {name: self[name] for name in names if self._catalogue[name].needs <= present}
        return {name: value for name, value in values.items() if value is not None}


def classes_above(logits: Any, classes: np.ndarray) -> np.ndarray:
    """Per row of ``logits`` (numpy, or a tensor where it is), how many classes score strictly above class
    ``classes[i]``: one comparison pass, done on the logits' device; the counts come back as numpy."""
    if is_device_array(logits):
        import torch

        picked = logits.gather(1, torch.as_tensor(classes, device=logits.device)[:, None])
        return to_host((logits > picked).sum(dim=1))
    picked = logits[np.arange(logits.shape[0]), classes]
    return np.count_nonzero(logits > picked[:, None], axis=1)
