"""How every benchmark here times its contenders: alternating rounds, ratios per round.

On a shared machine two runs of the same thing seconds apart can differ several-fold, so a ratio is
only taken between contenders timed in the same round. The order of the contenders flips every round
(what runs first in one round runs last in the next), the first round is dropped (imports, caches,
first reads of files), and every round's ratio is printed beside the median and the range, with the
load average before and after.
"""
from __future__ import annotations

import os
import statistics
import time
from typing import Callable, Mapping

MIN_ROUNDS = 15  # rounds kept by default (the first, dropped, comes on top)


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def alternating(contenders: Mapping[str, Callable[[], object]], n_rounds: int = MIN_ROUNDS, *,
                after_round: Callable[[int, dict[str, float]], None] | None = None) -> dict[str, list[float]]:
    """Seconds of each contender in each of ``n_rounds`` kept rounds (``n_rounds + 1`` run, the first dropped),
    the order reversed every other round. ``after_round(k, seconds)`` sees every round, the dropped one
    (k = 0) included."""
    names = list(contenders)
    times: dict[str, list[float]] = {name: [] for name in names}
    for k in range(n_rounds + 1):
        seconds = {}
        for name in (names if k % 2 == 0 else names[::-1]):
            start = time.perf_counter()
            contenders[name]()
            seconds[name] = time.perf_counter() - start
        if after_round is not None:
            after_round(k, seconds)
        if k:
            for name, value in seconds.items():
                times[name].append(value)
    return times


def ratios(times: Mapping[str, list[float]], a: str, b: str) -> list[float]:
    """``a`` ÷ ``b``, round by round."""
    return [x / y for x, y in zip(times[a], times[b])]


def report(times: Mapping[str, list[float]], pairs: list[tuple[str, str]], *, targets: Mapping[tuple[str, str], str] = {}
           ) -> None:
    """Each contender's median and range, then each pair's ratio: median, range and every round."""
    for name, values in times.items():
        print(f"  {name:>10}: median {statistics.median(values):7.3f} s, range {min(values):7.3f}–{max(values):7.3f} s")
    for a, b in pairs:
        values = ratios(times, a, b)
        target = f" (target {targets[a, b]})" if (a, b) in targets else ""
        print(f"  {a} ÷ {b}: median {statistics.median(values):5.2f}×, range {min(values):5.2f}–{max(values):5.2f}×"
              f"{target}; rounds: {' '.join(f'{r:.2f}' for r in values)}")
