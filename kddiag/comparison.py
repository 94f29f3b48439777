"""Several students of one teacher side by side: which is best on held-out data, and why in knowledge-level terms.

:func:`rank` orders the students by accuracy on the eval set (else the transfer set), gives the margin of
the best over the runner-up with a paired bootstrap interval (the students' per-example correctness on the
same fixed-seed sample of examples), says which students beat the baseline beyond the noise (plainly when
none does), and where the best one differs from the others at each level: the findings it avoided, and
the key measurements (:data:`KEY_ROWS`) on which it leads.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from kddiag.diagnosis.ids import HEALTHY
from kddiag.diagnosis.reading import EVAL_FIRST, TRANSFER_FIRST, beats_baseline, first
from kddiag.diagnosis.wording import gain_points
from kddiag.metrics.fidelity import sample_bootstrap_ci
from kddiag.results import EVAL, TRANSFER, Measured, Report, measured, unavailable
from kddiag.types import DOMAIN, INSTANCE, LEVEL_TITLES, OUTCOME, UNIVERSE

NO_ACCURACY = "no student accuracy was measured on the eval or transfer set"


@dataclass(frozen=True)
class KeyRow:
    """One row of the side-by-side table: a measurement of each student, read on the first set of
    ``datasets`` that has it; ``better``: +1 when higher is better, −1 when lower is, 0 neither."""

    label: str
    level: str
    pick: Callable[[Report], Measured]
    better: int
    phrase: str = ""  # how a reason names a lead on this row: '… its class similarity matches the teacher's'


def _on(level: str, value: Callable, datasets: tuple[str, ...]) -> Callable[[Report], Measured]:
    return lambda report: first(getattr(report.measurements, level), value, datasets)


def _setting(name: str) -> Callable[[Report], Measured]:
    return lambda report: measured(float(getattr(report.settings, name).value))


KEY_ROWS: tuple[KeyRow, ...] = (
    KeyRow("accuracy (eval)", OUTCOME, _on("outcome", lambda o: o.student_accuracy, EVAL_FIRST), +1),
    KeyRow("KD gain over baseline (eval)", OUTCOME, _on("outcome", lambda o: o.kd_gain, EVAL_FIRST), +1),
    KeyRow("top-1 agreement with teacher (eval)", OUTCOME, _on("outcome", lambda o: o.agreement, EVAL_FIRST), +1,
           "it follows the teacher most closely on held-out data"),
    KeyRow("KL(teacher‖student), τ = 1 (eval)", OUTCOME,
           _on("outcome", lambda o: o.kl_teacher_student, EVAL_FIRST), -1,
           "its predictive distribution is closest to the teacher's"),
    KeyRow("temperature τ", UNIVERSE, _setting("temperature"), 0),
    KeyRow("alpha α", UNIVERSE, _setting("alpha"), 0),
    KeyRow("teacher ε_eff at τ (transfer)", UNIVERSE,
           _on("universe", lambda u: u.effective_smoothing, TRANSFER_FIRST), 0),
    KeyRow("teacher targets saturated at τ (transfer)", UNIVERSE,
           _on("universe", lambda u: u.saturation_share, TRANSFER_FIRST), -1,
           "the teacher's targets at its τ are the least saturated (the most label smoothing passed on)"),
    KeyRow("student ECE (eval)", UNIVERSE, _on("universe", lambda u: u.student.ece, EVAL_FIRST), -1,
           "it is the best calibrated"),
    KeyRow("output-similarity match (transfer)", DOMAIN,
           _on("domain", lambda d: d.output_similarity_transfer_score, TRANSFER_FIRST), +1,
           "its class similarities match the teacher's most closely"),
    KeyRow("weight-similarity match", DOMAIN,
           lambda report: report.measurements.domain.weights.weight_similarity_transfer_score, +1,
           "its logit-layer geometry matches the teacher's most closely"),
    KeyRow("feature CKA with teacher (eval)", DOMAIN, _on("domain", lambda d: d.feature_cka, EVAL_FIRST), +1,
           "its features are the most similar to the teacher's"),
    KeyRow("rescaling weight CV at τ (transfer)", INSTANCE,
           _on("instance", lambda i: i.untrained_rescaling_weight_cv, TRANSFER_FIRST), +1,
           "the teacher's per-example gradient rescaling at its τ varies the most"),
    KeyRow("Spearman(w, −difficulty) at τ (transfer)", INSTANCE,
           _on("instance", lambda i: i.rescaling_difficulty_correlation, TRANSFER_FIRST), +1,
           "the teacher's rescaling at its τ tracks example difficulty the most closely"),
)


@dataclass(frozen=True)
class Ranking:
    """The students best first by accuracy on ``dataset``, the best one's margin over the runner-up, each
    one's gain over the baseline, and why."""

    dataset: str | None  # EVAL, else TRANSFER; None when no student accuracy was measured
    order: tuple[int, ...]  # student indices, best first (students without an accuracy last)
    margin: Measured  # accuracy of the best − the runner-up's, with a paired 95 % bootstrap interval
    reasons: tuple[str, ...]  # why the best one is best, one sentence per knowledge level
    accuracy: tuple[Measured, ...] = ()  # each student's accuracy on ``dataset``, in the students' order
    gain: tuple[Measured, ...] = ()  # each student's KD gain over the baseline on ``dataset``, with its interval

    @property
    def best(self) -> int | None:
        return self.order[0] if self.dataset is not None else None

    @property
    def clear(self) -> bool:
        """Whether the best one is better than the runner-up beyond the noise (its interval above 0)."""
        return self.margin.ok and self.margin.ci is not None and self.margin.ci[0] > 0

    @property
    def beat_baseline(self) -> tuple[int, ...] | None:
        """The students whose gain over the baseline is beyond the noise (interval above 0), best first;
        None when no gain was measured (no baseline)."""
        if not any(gain.ok for gain in self.gain):
            return None
        return tuple(k for k in self.order if beats_baseline(self.gain[k]))


@dataclass(frozen=True)
class Comparison:
    """Students of one teacher, each with its full report, and their ranking."""

    names: tuple[str, ...]
    reports: tuple[Report, ...]
    ranking: Ranking

    def table(self) -> list[dict]:
        """The key measurements side by side as plain rows to print or write (``json.dump`` takes them), one
        per :data:`KEY_ROWS` entry some student has: ``{"label", "level", "higher_is_better"`` (1, −1 or None),
        ``"values": {student name: {"value", "ci95"`` (the 95 % interval, when there is one), ``"unavailable"``
        (why there is no value), ``"dataset"}}}``, the students in their given order.

        >>> for row in comparison.table():
        ...     print(row["label"], *(v["value"] for v in row["values"].values()))
        accuracy (eval) 0.961 0.967 0.967
        """
        return [{"label": row.label, "level": row.level, "higher_is_better": row.better or None,
                 "values": {name: {**value.to_dict(), "dataset": value.dataset or None}
                            for name, value in zip(self.names, values)}}
                for row, values in key_measurements(self)]


def key_measurements(comparison: Comparison) -> list[tuple[KeyRow, tuple[Measured, ...]]]:
    """Each :data:`KEY_ROWS` entry some student has, with every student's measurement (the renderers' form of
    :meth:`Comparison.table`)."""
    rows = [(row, tuple(row.pick(report) for report in comparison.reports)) for row in KEY_ROWS]
    return [(row, values) for row, values in rows if any(v.ok for v in values)]


def rank(names: Sequence[str], reports: Sequence[Report], summaries: Sequence[Sequence]) -> Ranking:
    """Order the students by accuracy on the eval set (else transfer) and say why the best is best.

    ``summaries``: each student's per-set :class:`~kddiag.accumulate.SetSummary` list, whose example
    reservoirs (the same examples for every student of one run) give the paired interval of the margin.
    """
    dataset = next((d for d in (EVAL, TRANSFER)
                    if any(_accuracy(r, d).ok for r in reports)), None)
    if dataset is None:
        return Ranking(None, tuple(range(len(reports))), unavailable(NO_ACCURACY), ())
    accuracy = tuple(_accuracy(r, dataset) for r in reports)
    gain = tuple(first(r.measurements.outcome, lambda o: o.kd_gain, (dataset,)) for r in reports)
    nll = [_nll(r, dataset) for r in reports]  # breaks ties of accuracy: the better probabilities first
    order = tuple(sorted(range(len(reports)), key=lambda k: (not accuracy[k].ok, -(accuracy[k].value or 0.0),
                                                             nll[k].value if nll[k].ok else np.inf, k)))
    best, runner_up = order[0], order[1]
    margin = unavailable(NO_ACCURACY)
    if accuracy[runner_up].ok:
        margin = _paired_difference(_summary(summaries[best], dataset), _summary(summaries[runner_up], dataset))
    return Ranking(dataset, order, margin, _reasons(names, reports, order, margin, dataset, gain), accuracy, gain)


def _accuracy(report: Report, dataset: str) -> Measured:
    record = report.measurements.outcome.on(dataset)
    return record.student_accuracy if record is not None else unavailable(NO_ACCURACY)


def _nll(report: Report, dataset: str) -> Measured:
    record = report.measurements.universe.on(dataset)
    return record.student.nll if record is not None else unavailable(NO_ACCURACY)


def _summary(summaries: Sequence, dataset: str):
    return next(s for s in summaries if s.name == dataset)


def _paired_difference(a, b) -> Measured:
    """Accuracy of ``a`` − ``b`` on one set: exact over every example, its interval from the per-example
    differences on the shared reservoir (paired: the same examples for both)."""
    mean = a.mean("student.correct") - b.mean("student.correct")
    if not np.array_equal(a.examples["index"], b.examples["index"]):
        return measured(mean, dataset=a.name)  # not the same examples: no paired interval
    difference = a.examples["student.correct"] - b.examples["student.correct"]
    return measured(mean, ci=sample_bootstrap_ci(difference, mean=mean, n_total=a.n_samples), dataset=a.name)


def _reasons(names: Sequence[str], reports: Sequence[Report], order: tuple[int, ...], margin: Measured,
             dataset: str, gain: tuple[Measured, ...]) -> tuple[str, ...]:
    """Sentences on why the best student is best: the outcome, then each level where it differs."""
    best, runner_up = order[0], order[1]
    accuracy = _accuracy(reports[best], dataset)
    bounds = "" if margin.ci is None else f" (95 % paired interval {100 * margin.ci[0]:+.1f} to {100 * margin.ci[1]:+.1f})"
    lead = (f"{names[best]} is the most accurate on the {dataset} set ({accuracy.value:.1%}), "
            f"{100 * margin.value:+.1f} points over {names[runner_up]}{bounds}" if margin.ok
            else f"{names[best]} is the most accurate on the {dataset} set ({accuracy.value:.1%})")
    if margin.ok and margin.value == 0:
        nll = [_nll(reports[k], dataset) for k in (best, runner_up)]
        lead = (f"{names[best]} and {names[runner_up]} are equally accurate on the {dataset} set "
                f"({accuracy.value:.1%}{bounds.replace(' (', '; ', 1).rstrip(')')} for the difference)")
        if all(v.ok for v in nll):
            lead += f"; {names[best]} ranks first on NLL ({nll[0].value:.3g} vs {nll[1].value:.3g} nats)"
    elif margin.ok and margin.ci is not None and margin.ci[0] <= 0:
        lead += ": a difference within the noise of this eval set, so the ranking of these two is not settled"
    sentences = [lead + ".", *_against_baseline(names, order, gain)]
    if dataset == TRANSFER:
        sentences.append("No eval set was given: this ranks the students on the data they were distilled on, "
                         "which says little about how they generalize.")
    problems = {k: {f.id: f for f in reports[k].diagnosis.findings if f.id != HEALTHY} for k in order}
    for level in (OUTCOME, UNIVERSE, DOMAIN, INSTANCE):
        parts = []
        avoided = {}
        for k in order[1:]:
            for finding_id, finding in problems[k].items():  # named at the first level of the finding
                if finding_id not in problems[best] and finding.levels[:1] == (level,):
                    avoided.setdefault(finding_id, (finding, []))[1].append(names[k])
        for finding_id, (finding, others) in avoided.items():
            parts.append(f"{' and '.join(others)} had {finding_id} ({finding.title.rstrip('.').lower()}), "
                         f"{names[best]} did not")
        parts += _leads(names, reports, best, level)
        if parts:
            sentences.append(f"{LEVEL_TITLES[level]}: " + "; ".join(parts) + ".")
    remaining = [f.id for f in reports[best].diagnosis.findings if f.id != HEALTHY]
    if remaining:
        sentences.append(f"{names[best]} still has findings of its own: {', '.join(remaining)} (see its diagnosis).")
    return tuple(sentences)


def _against_baseline(names: Sequence[str], order: tuple[int, ...], gain: tuple[Measured, ...]) -> list[str]:
    """One sentence on which students beat the baseline beyond the noise (none without a baseline)."""
    best = order[0]
    if not gain[best].ok:
        return []
    winners = [k for k in order if beats_baseline(gain[k])]
    if not winners:
        return [f"No student beats the baseline: the best, '{names[best]}', gains {gain_points(gain[best])}."]
    listed = ", ".join(f"'{names[k]}' by {gain_points(gain[k])}" for k in winners)
    return [f"{len(winners)} of {len(names)} students beat the baseline beyond the noise: {listed}."]


def _leads(names: Sequence[str], reports: Sequence[Report], best: int, level: str) -> list[str]:
    """The key rows of ``level`` on which the best student strictly leads every other student measured."""
    leads = []
    for row in KEY_ROWS:
        if row.level != level or not row.better or not row.phrase:
            continue
        values = [row.pick(report) for report in reports]
        mine, others = values[best], [(names[k], v) for k, v in enumerate(values) if k != best and v.ok]
        if not mine.ok or not others:
            continue
        if all(row.better * (mine.value - v.value) > 0 for _, v in others):
            listed = ", ".join(f"{name} {_number(v.value)}" for name, v in others)
            leads.append(f"{row.phrase} ({row.label}: {_number(mine.value)}; {listed})")
    return leads


def _number(value: float) -> str:
    return f"{value:.3g}"
