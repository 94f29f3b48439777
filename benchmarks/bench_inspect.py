"""Benchmark: what does ``kddiag inspect`` cost beyond the forward passes it cannot avoid?

Run: ``python benchmarks/bench_inspect.py [--n-samples 20000 50000] [--rounds 15]``. Prints, measured side by
side in one run:
1. the bare forward passes of teacher and student over a data set (batched, inference mode) vs
   ``kddiag.inspect`` on the same data (one pass with feature hooks + every measurement + diagnosis),
   and their ratio (target ≤ 1.10×);
2. the measurement step alone on 50,000 × 1,000 random logits (compared with torchmetrics in
   ``bench_scale.py --parts measure``).
The forward passes and ``inspect`` are timed in alternating rounds (``_rounds.alternating``: the order
flips every round, the first round is dropped, every round's ratio is printed with the median and range).
Peak resident memory of the process is printed at the end.
"""
from __future__ import annotations

import argparse
import resource
import statistics
import time

import numpy as np
import torch
from _rounds import MIN_ROUNDS, alternating, load_average, report

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


def bare_forward(models, x, batch_size):
    for model in models:
        model.eval()
        with torch.inference_mode():
            for start in range(0, len(x), batch_size):
                model(x[start:start + batch_size])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-samples", type=int, nargs="+", default=[20_000, 50_000])
    parser.add_argument("--rounds", type=int, default=MIN_ROUNDS, help="rounds kept (one more runs first, dropped)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    n_features, n_classes, batch = 784, 100, 512
    teacher, student = MLP((n_features, 2048, 2048, n_classes)), MLP((n_features, 256, n_classes))
    options = InspectOptions(batch_size=batch, temperature=4.0, alpha=0.9)
    print(f"torch threads: {torch.get_num_threads()}; teacher mlp:784-2048-2048-100, student mlp:784-256-100; "
          f"load average before {load_average()}")
    for n in args.n_samples:
        x = torch.randn(n, n_features)
        data = Dataset("random", x, rng.integers(0, n_classes, n))
        times = alternating({"forward": lambda: bare_forward((teacher, student), x, batch),
                             "inspect": lambda: inspect(teacher, student, data=data, options=options)}, args.rounds)
        print(f"{n:,} examples, {args.rounds} rounds kept; load average after {load_average()}")
        report(times, [("inspect", "forward")], targets={("inspect", "forward"): "≤ 1.10×"})

    n, c = 50_000, 1_000
    t_logits, s_logits = rng.normal(0, 3, (n, c)), rng.normal(0, 3, (n, c))
    big_labels = rng.integers(0, c, n)
    outputs = [SetOutputs("eval", big_labels, ModelOutputs(t_logits), ModelOutputs(s_logits))]
    settings = Settings()
    measure_time = median_time(lambda: measure(outputs, settings=settings, class_info=ClassInfo()), 3)
    print(f"measurements on {n} x {c} logits:       {measure_time:7.3f} s")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(f"peak resident memory of this process: {peak:,.0f} MiB "
          f"(the 50,000 x 1,000 float64 logits alone are {2 * t_logits.nbytes / 2**20:,.0f} MiB)")


if __name__ == "__main__":
    main()
