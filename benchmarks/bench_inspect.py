"""Benchmark: what does ``kddiag inspect`` cost beyond the forward passes it cannot avoid?

Run: ``python benchmarks/bench_inspect.py``. Prints, measured side by side in one run:
1. the bare forward passes of teacher and student over a data set (batched, inference mode) vs
   ``kddiag.inspect`` on the same data (one pass with feature hooks + every measurement + diagnosis),
   and their ratio (target ≤ 1.10×);
2. the measurement step alone on 50,000 × 1,000 random logits (compared with torchmetrics in
   ``bench_scale.py --parts measure``).
The forward passes and ``inspect`` are timed in alternating rounds (A, B, A, B, …) and the ratio is
the median of the per-round ratios, so a change in machine speed during the run does not land in it.
Peak resident memory of the process is printed at the end.
"""
from __future__ import annotations

import argparse
import resource
import statistics
import time

import numpy as np
import torch

from kddiag.measure import measure
from kddiag.models import MLP
from kddiag.pipeline import inspect
from kddiag.inputs import ClassInfo, Dataset
from kddiag.options import InspectOptions, Settings
from kddiag.outputs import ModelOutputs, SetOutputs


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median_time(fn, repeats: int) -> float:
    return statistics.median(timed(fn) for _ in range(repeats))


def interleaved(first, second, repeats: int) -> tuple[float, float, float]:
    """Median times of ``first`` and ``second`` run in alternating rounds, and the median per-round ratio."""
    rounds = [(timed(first), timed(second)) for _ in range(repeats)]
    return (statistics.median(a for a, _ in rounds), statistics.median(b for _, b in rounds),
            statistics.median(b / a for a, b in rounds))


def bare_forward(models, x, batch_size):
    for model in models:
        model.eval()
        with torch.inference_mode():
            for start in range(0, len(x), batch_size):
                model(x[start:start + batch_size])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-samples", type=int, nargs="+", default=[20_000, 50_000])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    n_features, n_classes, batch = 784, 100, 512
    teacher, student = MLP((n_features, 2048, 2048, n_classes)), MLP((n_features, 256, n_classes))
    options = InspectOptions(batch_size=batch, temperature=4.0, alpha=0.9)
    print(f"torch threads: {torch.get_num_threads()}; teacher mlp:784-2048-2048-100, student mlp:784-256-100")
    for n in args.n_samples:
        x = torch.randn(n, n_features)
        data = Dataset("random", x, rng.integers(0, n_classes, n))
        forward, full, ratio = interleaved(lambda: bare_forward((teacher, student), x, batch),
                                           lambda: inspect(teacher, student, data=data, options=options), args.repeats)
        print(f"{n} examples: bare forward passes {forward:6.3f} s, kddiag inspect {full:6.3f} s, "
              f"ratio {ratio:4.2f}x  (target <= 1.10x)")

    n, c = 50_000, 1_000
    t_logits, s_logits = rng.normal(0, 3, (n, c)), rng.normal(0, 3, (n, c))
    big_labels = rng.integers(0, c, n)
    outputs = [SetOutputs("eval", big_labels, ModelOutputs(t_logits), ModelOutputs(s_logits))]
    settings = Settings()
    measure_time = median_time(lambda: measure(outputs, settings=settings, class_info=ClassInfo()), args.repeats)
    print(f"measurements on {n} x {c} logits:       {measure_time:7.3f} s")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(f"peak resident memory of this process: {peak:,.0f} MiB "
          f"(the 50,000 x 1,000 float64 logits alone are {2 * t_logits.nbytes / 2**20:,.0f} MiB)")


if __name__ == "__main__":
    main()
