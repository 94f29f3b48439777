"""The measure stage: every metric of the catalog (docs/metrics.md) on every data set given.

``measure`` turns each data set's streaming statistics (:class:`~kddiag.accumulate.SetSummary`) into
typed :class:`~kddiag.levels.Measurements`, one result per knowledge level, each level filled by its
own module (:mod:`kddiag.levels`). Outputs held in memory (:class:`~kddiag.outputs.Collected`) are
summarized first, in one pass. Exact statistics (means, bins, class sums) cover every example; what
needs the examples themselves reads the fixed-seed reservoirs (see :mod:`kddiag.accumulate`). A metric
that cannot be computed is still emitted, with value None and the reason (no baseline, no weights in
logits mode, …): never a made-up value.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from kddiag.accumulate import summarize
from kddiag.errors import KddiagError
from kddiag.levels import Measurements, domain, instance, outcome, universe
from kddiag.levels._common import Reuse, enough, not_enough
from kddiag.metrics import universe as universe_metrics, whatif
from kddiag.metrics._common import map_tasks
from kddiag.summary import SetSummary
from kddiag.inputs import ClassInfo
from kddiag.options import Settings
from kddiag.outputs import Collected, SetOutputs
from kddiag.results import Coverage


def measure(outputs: Collected | Sequence[SetOutputs] | Sequence[SetSummary], *, settings: Settings,
            class_info: ClassInfo, reuse: dict | None = None) -> Measurements:
    """Every catalog metric on every data set given (eval and/or transfer), one result per level.

    ``outputs``: the sets' summaries (:class:`~kddiag.accumulate.SetSummary`, from streaming
    collection; each must have been computed with ``settings``' temperature and alpha, else
    KddiagError) or their outputs in memory (:class:`~kddiag.outputs.Collected`, or a sequence of
    :class:`~kddiag.outputs.SetOutputs`, checked as one). Weight-based metrics are computed once (data
    set "weights"); ``softness_gap`` needs both sets; the temperature what-if is measured on the
    transfer set, else on eval. ``class_info`` must match the class count.

    ``reuse``: a dict kept across calls that share the teacher, the data and the settings (a
    :class:`~kddiag.monitor.Monitor`'s calls, where only the student changes): the measurements that
    read the teacher alone and cost the most (k-NN difficulty, the temperature what-if, the teacher's
    T*) are computed on the first call and read from it afterwards.
    """
    cached = Reuse(reuse)
    if not outputs or not all(isinstance(item, SetSummary) for item in outputs):
        outputs = outputs if isinstance(outputs, Collected) else Collected(tuple(outputs))
        outputs = [summarize(data, temperature=settings.temperature.value, alpha=settings.alpha.value)
                   for data in outputs]
    sets = list(outputs)
    _check_settings(sets, settings)
    groups = None if class_info.groups is None else np.asarray(class_info.groups)
    per_set = {outcome: outcome.measure_set, universe: lambda s: universe.measure_set(s, cached),
               domain: lambda s: domain.measure_set(s, groups), instance: lambda s: instance.measure_set(s, cached)}
    tasks = {(level, s.name): (lambda fill=fill, s=s: fill(s)) for level, fill in per_set.items()
             for s in sets if enough(s)}
    tasks.update(whatif=lambda: cached("whatif", lambda: universe.temperature_whatif(sets)),
                 weights=lambda: domain.measure_weights(sets, groups))
    done = map_tasks(tasks)  # independent: run side by side
    records = {level: {s.name: done[level, s.name] if enough(s) else level.ON_SET.unmeasured(not_enough(s),
                                                                                               dataset=s.name)
                       for s in sets}
               for level in per_set}
    return Measurements(
        outcome=outcome.OutcomeResult(**records[outcome]),
        universe=universe.UniverseResult(**records[universe], softness_gap=universe.softness_gap(sets),
                                         temperature_whatif=done["whatif"]),
        domain=domain.DomainResult(**records[domain], weights=done["weights"]),
        instance=instance.InstanceResult(**records[instance]),
    )


def _check_settings(sets: list[SetSummary], settings: Settings) -> None:
    """Raise unless every summary was computed under ``settings``' temperature and alpha."""
    for data in sets:
        for name, setting, used in (("temperature", settings.temperature, data.temperature),
                                    ("alpha", settings.alpha, data.alpha)):
            if float(setting.value) != float(used):
                raise KddiagError(f"the {data.name} set's statistics were computed with {name} {float(used):g} but "
                                  f"{setting.origin(name)} is {float(setting.value):g}; measure them under the "
                                  f"settings they were computed with")


def coverage_of(data: SetSummary) -> Coverage:
    """What this set's measurements read, each measurement that reads rows of the reservoir with its own
    count (T*, the what-if, k-NN difficulty, CKA), computed with the very bounds those measurements use."""
    n_rows = int(data.rows["index"].size)
    read = [("T*", universe_metrics.fit_rows(n_rows, data.n_classes)),
            ("the temperature what-if", whatif.whatif_rows(n_rows, data.n_classes))]
    if "baseline" not in data.roles and not data.strata:
        space = instance.knn_space(data)[1]
        read.append(("k-NN difficulty", instance.knn_rows(int(np.isfinite(space[:, 0]).sum()), space.shape[1])))
    for other in ("student", "baseline"):
        if other in data.roles and {"teacher", other} <= data.feature_roles:
            both = np.isfinite(data.rows["teacher.features"][:, 0]) & np.isfinite(data.rows[f"{other}.features"][:, 0])
            read.append((f"CKA ({other})", min(int(both.sum()), domain.CKA_MAX_SAMPLES)))
    kept = data.n_classes if data.kept_classes is None else data.kept_classes.size
    return Coverage(data.name, data.n_samples, int(data.examples["index"].size), n_rows, data.n_classes, kept,
                    rows_read=tuple(read))
