"""The knowledge levels, one module each: what each asks of the softmax pass, what it measures, what it shows.

- :mod:`~kddiag.levels.outcome` (level 0): accuracy, fidelity to the teacher, the KD gain;
- :mod:`~kddiag.levels.universe` (level 1): calibration and the softness of the teacher's targets at τ;
- :mod:`~kddiag.levels.domain` (level 2): class relationships in outputs and weights;
- :mod:`~kddiag.levels.instance` (level 3): per-example gradient rescaling against difficulty.

Each level module holds its per-example :class:`~kddiag.levels._columns.Column` s (``COLUMNS``), its
frozen records, the functions that fill them from a data set's summary, and its headline rows
(``HEADLINES``). A new per-example metric is a column, a record field and a line of ``measure_set`` in
one of them. :data:`COLUMNS` is the catalogue the streaming statistics compute; :class:`Measurements`
holds one result per level.
"""
from __future__ import annotations

import typing
from dataclasses import dataclass, field, fields
from typing import Iterator

from kddiag.levels import domain, instance, outcome, universe
from kddiag.levels._columns import Block, Column
from kddiag.levels._record import Headline, Level, Measured
from kddiag.levels.domain import DomainResult
from kddiag.levels.instance import InstanceResult
from kddiag.levels.outcome import OutcomeResult
from kddiag.levels.universe import UniverseResult

__all__ = ["COLUMNS", "LEVELS", "Block", "Column", "Headline", "Measurements", "headlines"]

LEVELS = (outcome, universe, domain, instance)  # levels 0-3, in report order

LABELS = Column("labels", lambda block: block.labels, sample=True)
COLUMNS: dict[str, Column] = {column.name: column for column in
                              (LABELS, *(column for level in LEVELS for column in level.COLUMNS))}


def headlines(section: str) -> tuple[tuple[Headline, ...], tuple[str, ...]]:
    """The headline rows of level ``section`` ('outcome', …) and the notes under its table."""
    module = next(level for level in LEVELS if level.NAME == section)
    return module.HEADLINES, getattr(module, "HEADLINE_NOTES", ())


@dataclass(frozen=True)
class Measurements:
    """Every measurement of one inspection, one result per knowledge level."""

    outcome: OutcomeResult = field(default_factory=OutcomeResult)
    universe: UniverseResult = field(default_factory=UniverseResult)
    domain: DomainResult = field(default_factory=DomainResult)
    instance: InstanceResult = field(default_factory=InstanceResult)

    def levels(self) -> tuple[Level, ...]:
        return (self.outcome, self.universe, self.domain, self.instance)

    def values(self) -> Iterator[Measured]:
        """Every value of every level."""
        for level in self.levels():
            yield from level.values()

    @classmethod
    def from_dict(cls, metrics: dict) -> "Measurements":
        """Measurements read back from ``report.json``'s ``metrics`` (per-example arrays are not in JSON)."""
        return cls(**{item.name: typing.get_type_hints(cls)[item.name].from_dict(metrics.get(item.name, {}))
                      for item in fields(cls)})

    def to_dict(self) -> dict:
        """``{level: {name: {dataset: {'value': ..., 'ci95': [...], 'unavailable': ...}}}}`` (docs/metrics.md)."""
        out: dict = {level.LEVEL: {} for level in self.levels()}
        for value in self.values():
            level, name = value.name.split(".", 1)
            out[level].setdefault(name, {})[value.dataset] = value.to_dict()
        return out
