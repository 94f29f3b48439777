"""What every level's measurements share: why a value is missing, the exact mean with its interval, enough
data, and the teacher-only results kept across calls."""
from __future__ import annotations


from kddiag.levels._record import Measured, measured
from kddiag.metrics import fidelity
from kddiag.summary import SetSummary


NO_BASELINE = "no baseline given"
NO_STUDENT = "no student given (a teacher-only check)"

MIN_EXAMPLES = 30  # a set with fewer examples (or fewer than one per class) gives no measurement: "not enough data"


def absent(role: str) -> str:
    """Why a model's values are missing: it was not given."""
    return NO_STUDENT if role == "student" else NO_BASELINE


def mean_ci(data: SetSummary, name: str) -> Measured:
    """The exact mean of a per-example column with its bootstrap interval (from the reservoir)."""
    mean = data.mean(name)
    return measured(mean, ci=fidelity.sample_bootstrap_ci(data.examples[name], mean=mean, n_total=data.n_samples))


def enough(data: SetSummary) -> bool:
    """At least MIN_EXAMPLES examples and one per class on average: below that, rates and class-by-class
    statistics are noise."""
    return data.n_samples >= max(MIN_EXAMPLES, data.n_classes)


def not_enough(data: SetSummary) -> str:
    return (f"not enough data: {data.n_samples} examples on the {data.name} set for {data.n_classes} classes "
            f"(measurements need at least {MIN_EXAMPLES} and one per class)")


class Reuse:
    """Teacher-only results by name: computed once into ``store`` when one is given, else every time."""

    def __init__(self, store: dict | None = None) -> None:
        self.store = store

    def __call__(self, key: str, compute):
        if self.store is None:
            return compute()
        if key not in self.store:
            self.store[key] = compute()
        return self.store[key]
