"""The records every level's results are made of: :class:`Measured` values in frozen, typed records.

Every value a report shows is a :class:`Measured`: a float, an array or a typed value (e.g.
:class:`~kddiag.metrics.whatif.WhatIf`), with a 95 % bootstrap interval where one was computed, or
None and the reason it could not be computed. A level's values are grouped per data set
(:class:`OnSet`); per-model values sit in sub-records named after the model
(``universe.eval.teacher.ece``).

The name of a value in ``report.json`` and in a finding's evidence is its level and its attribute
path joined by '_' (``universe.eval.teacher.ece`` → ``universe.teacher_ece`` on the eval set). Each
record stamps those names onto its values when it is built, so no reader ever spells a metric name:
readers use attributes, and this module is the one home of the naming.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
import typing
from typing import Any, Callable, ClassVar, Generic, Iterator, TypeVar

import numpy as np

from kddiag.types import EVAL, TRANSFER, WEIGHTS

UNDEFINED = "undefined on this data"
NOT_MEASURED = "not measured"

T = TypeVar("T")


@dataclass(frozen=True)
class Measured(Generic[T]):
    """One measured value on one data set, or why there is none (``value`` None exactly then)."""

    value: T | None
    ci: tuple[float, float] | None = None  # 95 % bootstrap interval
    unavailable: str | None = None
    name: str = ""  # 'level.metric' as in report.json; stamped by the record that holds it
    dataset: str = ""  # EVAL, TRANSFER or WEIGHTS

    @property
    def ok(self) -> bool:
        return self.value is not None

    def to_dict(self) -> dict:
        value = self.value.to_dict() if hasattr(self.value, "to_dict") else self.value
        if isinstance(value, tuple):
            value = [item.to_dict() if hasattr(item, "to_dict") else item for item in value]
        out: dict = {"value": value}
        if self.ci is not None:
            out["ci95"] = list(self.ci)
        if self.unavailable is not None:
            out["unavailable"] = self.unavailable
        return out


def measured(value: Any, *, ci: tuple[float, float] | None = None, why_none: str = UNDEFINED,
             dataset: str = "") -> Measured:
    """A measured value; None or a non-finite number becomes unavailable with ``why_none``."""
    if isinstance(value, (float, np.floating, int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        value = float(value) if isinstance(value, (float, np.floating)) else int(value)
        if isinstance(value, float) and not np.isfinite(value):
            value = None
    if value is None:
        return Measured(None, unavailable=why_none, dataset=dataset)
    return Measured(value, ci=None if ci is None else (float(ci[0]), float(ci[1])), dataset=dataset)


def unavailable(reason: str, *, dataset: str = "") -> Measured:
    """A value that could not be measured, and why."""
    return Measured(None, unavailable=reason, dataset=dataset)


def missing() -> Measured:
    return unavailable(NOT_MEASURED)


def measured_from_dict(leaf: dict, kind: Any, dataset: str) -> Measured:
    """One ``{"value", "ci95", "unavailable"}`` leaf of report.json as a Measured of type ``kind``."""
    value = leaf.get("value")
    if value is None:
        return unavailable(leaf.get("unavailable") or UNDEFINED, dataset=dataset)
    if kind is np.ndarray and isinstance(value, dict):  # a matrix report.json summarized
        shape = value.get("summary", {}).get("shape")
        return unavailable(f"summarized in report.json ({shape} matrix; the whole matrix is in report-arrays.npz "
                           "when written with --arrays)", dataset=dataset)
    if kind is np.ndarray:
        value = np.array([np.nan if v is None else v for v in np.ravel(np.array(value, dtype=object))]
                         ).reshape(np.shape(np.array(value, dtype=object)))
    elif typing.get_origin(kind) is tuple:
        item = typing.get_args(kind)[0]
        value = tuple(item(**entry) for entry in value)
    elif hasattr(kind, "from_dict"):
        value = kind.from_dict(value)
    ci = leaf.get("ci95")
    return measured(value, ci=None if ci is None else tuple(ci), dataset=dataset)


# ---------------------------------------------------------------- records

class Record:
    """A frozen record of :class:`Measured` values (and sub-records); stamps their names and data set."""

    LEVEL: ClassVar[str] = ""

    def _stamp(self, level: str, prefix: str, dataset: str | None) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, Measured):
                stamped = replace(value, name=f"{level}.{prefix}{item.name}",
                                  dataset=value.dataset or dataset or "")
                object.__setattr__(self, item.name, stamped)
            elif isinstance(value, Record) and not isinstance(value, OnSet):  # a set stamps itself
                value._stamp(level, f"{prefix}{item.name}_", dataset)

    @classmethod
    def _from_dict(cls, metrics: dict, level: str, prefix: str, dataset: str, given: dict | None = None):
        """The record of ``dataset`` read back from ``report.json``'s ``metrics[level]``; absent values keep
        their defaults (not measured)."""
        hints, given = typing.get_type_hints(cls), dict(given or {})
        for item in fields(cls):
            kind = hints[item.name]
            origin = typing.get_origin(kind) or kind
            if origin is Measured:
                leaf = metrics.get(f"{prefix}{item.name}", {}).get(dataset)
                if leaf is not None:
                    given[item.name] = measured_from_dict(leaf, typing.get_args(kind)[0], dataset)
            elif isinstance(origin, type) and issubclass(origin, Record) and not issubclass(origin, OnSet):
                given[item.name] = origin._from_dict(metrics, level, f"{prefix}{item.name}_", dataset)
        return cls(**given)

    @classmethod
    def unmeasured(cls, reason: str, **given: Any):
        """The record with every value (sub-records included) unavailable for ``reason``."""
        hints = typing.get_type_hints(cls)
        for item in fields(cls):
            if item.name in given:
                continue
            kind = typing.get_origin(hints[item.name]) or hints[item.name]
            if kind is Measured:
                given[item.name] = unavailable(reason)
            elif isinstance(kind, type) and issubclass(kind, Record):
                given[item.name] = kind.unmeasured(reason)
        return cls(**given)

    def values(self) -> Iterator[Measured]:
        """Every value in the record, sub-records included, in field order."""
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, Measured):
                yield value
            elif isinstance(value, Record):
                yield from value.values()


class OnSet(Record):
    """The values of one level on one data set; ``dataset`` names it."""

    def __post_init__(self) -> None:
        self._stamp(self.LEVEL, "", self.dataset)  # type: ignore[attr-defined]


class Level(Record):
    """One knowledge level: a record per data set given (``eval``, ``transfer``), plus level-wide values."""

    def __post_init__(self) -> None:
        self._stamp(self.LEVEL, "", None)

    @classmethod
    def from_dict(cls, metrics: dict) -> "Level":
        """This level read back from ``report.json``'s ``metrics[level]``."""
        hints, given = typing.get_type_hints(cls), {}
        level_wide = {item.name for item in fields(cls) if typing.get_origin(hints[item.name]) is Measured}
        present = {dataset for name, leaves in metrics.items() if name not in level_wide for dataset in leaves}
        for item in fields(cls):
            kind = hints[item.name]
            record = next((k for k in typing.get_args(kind) or (kind,) if isinstance(k, type) and issubclass(k, OnSet)),
                          None)
            if record is not None and (item.name in present or item.name == WEIGHTS):
                given[item.name] = record._from_dict(metrics, cls.LEVEL, "", item.name, {"dataset": item.name})
            elif typing.get_origin(kind) is Measured and item.name in metrics:
                (dataset, leaf), = metrics[item.name].items()
                given[item.name] = measured_from_dict(leaf, typing.get_args(kind)[0], dataset)
        return cls(**given)

    def on(self, dataset: str) -> Any:
        """The record of ``dataset``, or None when that set was not given."""
        return getattr(self, dataset, None) if dataset in (EVAL, TRANSFER, WEIGHTS) else None

    def sets(self) -> tuple:
        """The per-set records given, transfer first."""
        return tuple(record for record in (self.on(TRANSFER), self.on(EVAL)) if record is not None)


# ---------------------------------------------------------------- headline rows

Cells = dict[str, Measured]  # column (teacher, student, baseline) -> its value


@dataclass(frozen=True)
class Headline:
    """One row of a level's headline table: a label, the records of the level it reads, its cells in each.

    A column holds the value that is that model's own property, or (for comparisons) the one about
    that model relative to the teacher. ``records`` picks the level's per-set records, its weights
    record or the level itself (for values measured across sets); the row repeats for each record.
    """

    label: str
    cells: Callable[[Any], Cells]
    records: Callable[[Any], tuple] = lambda level: level.sets()
    clip: float | None = None  # values beyond ±clip are shown as '>clip' / '<−clip' (heavy-tailed statistics)


def each_model(value: Callable[[Any], Measured]) -> Callable[[Any], Cells]:
    """Cells of a value every model has: ``value`` of the record's teacher, student and baseline."""
    return lambda record: {"teacher": value(record.teacher), "student": value(record.student),
                           "baseline": value(record.baseline)}


def level_wide(level: Level) -> tuple:
    """The records of a headline measured across sets: the level itself."""
    return (level,)
