"""Benchmark: what does ``kddiag.Monitor`` add to a distillation run?

Run: ``python benchmarks/bench_monitor.py``. Prints, for two set-ups, measured side by side in one run:

1. ``case-study``: the case studies' pair (teacher ``mlp:64-256-256-10``, student ``mlp:64-32-10``) on
   digits (1,257 training, 540 held-out examples), trained as the case studies train
   (``case_studies/_training.py``: full-batch Adam, so one step is one epoch);
2. ``mnist-like``: teacher ``mlp:784-256-256-10``, student ``mlp:784-32-10`` on 60,000 training and
   10,000 held-out examples of 10 Gaussian classes in 784 dimensions (MNIST's sizes), mini-batches of
   64 (938 steps per epoch).

For each: the time of an epoch without the monitor and with it (every ``--every`` steps), in
alternating rounds (``_rounds.alternating``: the order flips every round, the first round is dropped,
every round's ratio printed), the overhead as a share of an epoch, the median time of one
monitor call and its breakdown (student forward pass, summary, measurements, diagnosis), and within
the measurements the parts that depend on the teacher alone (k-NN difficulty, the temperature
what-if, the teacher's T* and class similarity) and the bootstrap intervals, timed by calling the same
metric functions on the same summary; the monitor reuses the teacher-only parts after its first call
(``measure(..., reuse=)``). Peak resident memory of the process is printed at the end.
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from _rounds import MIN_ROUNDS, alternating, ratios

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # case_studies, when run from anywhere

from case_studies._training import Recipe, distillation_loss, teacher_targets, train_ce  # noqa: E402
from kddiag.readers.arrays import load_dataset  # noqa: E402
from kddiag.models import MLP  # noqa: E402
from kddiag.monitor import Monitor, collect_model_outputs  # noqa: E402
from kddiag.inputs import LoadedModel
from kddiag.outputs import SetOutputs
from kddiag.types import EVAL

TEMPERATURE, ALPHA = 4.0, 0.9


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class Run:
    """A student distilled from a fixed teacher, one epoch at a time, optionally monitored."""

    def __init__(self, teacher, student, x, y, *, batch_size: int | None, lr: float):
        self.student, self.x, self.y = student, x, torch.as_tensor(y)
        with torch.inference_mode():
            logits = teacher(x).double().numpy()
        self.rho = torch.as_tensor(teacher_targets(logits, temperature=TEMPERATURE), dtype=torch.float32)
        self.batch_size = batch_size or len(x)
        self.optimizer = torch.optim.Adam(student.parameters(), lr=lr)
        self.step_count = 0

    def epoch(self, monitor: Monitor | None = None) -> None:
        self.student.train()
        order = torch.randperm(len(self.x)) if self.batch_size < len(self.x) else torch.arange(len(self.x))
        for start in range(0, len(self.x), self.batch_size):
            rows = order[start:start + self.batch_size]
            loss = distillation_loss(self.student(self.x[rows]), self.y[rows], self.rho[rows],
                                     temperature=TEMPERATURE, alpha=ALPHA)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            if monitor is not None:
                monitor.step(self.student, step=self.step_count)
            self.step_count += 1


def breakdown(monitor: Monitor, student, repeats: int) -> dict[str, float]:
    """Median seconds of each part of one monitor call, the teacher-only parts of the measurements and
    the bootstrap intervals timed by calling the same functions on the same summary."""
    from kddiag.accumulate import summarize
    from kddiag.diagnosis import diagnose
    from kddiag.levels.instance import KNN_MAX_SAMPLES, KNN_MAX_WORK
    from kddiag.measure import measure
    from kddiag.metrics import domain, fidelity, instance, universe, whatif
    from kddiag.metrics._common import subsample_indices

    parts: dict[str, list[float]] = {}

    def clock(name, fn):
        start = time.perf_counter()
        result = fn()
        parts.setdefault(name, []).append(time.perf_counter() - start)
        return result

    for _ in range(repeats):
        outputs = clock("student forward pass", lambda: collect_model_outputs(
            monitor.data, LoadedModel("<in-memory>", "module", student), role="student",
            batch_size=monitor.batch_size))
        data = SetOutputs(EVAL, monitor.data.labels, monitor.teacher_outputs, outputs)
        summary = clock("summary (softmax statistics)", lambda: summarize(data, temperature=TEMPERATURE, alpha=ALPHA))
        clock("measurements, first call (all)", lambda: measure([summary], settings=monitor.settings,
                                                                class_info=monitor.class_info, reuse={}))
        measurements = clock("measurements, later calls (teacher-only parts reused)", lambda: measure(
            [summary], settings=monitor.settings, class_info=monitor.class_info, reuse=monitor._reuse))
        clock("diagnosis", lambda: diagnose(measurements, settings=monitor.settings, n_classes=monitor.n_classes))
        rows, examples = summary.rows, summary.examples
        space = rows["teacher.features"] if "teacher" in summary.feature_roles else rows["teacher.logits"]
        usable = np.flatnonzero(np.isfinite(space[:, 0]))  # the subsample measure's k-NN difficulty reads
        limit = int(min(KNN_MAX_SAMPLES, np.sqrt(KNN_MAX_WORK / max(1, space.shape[1]))))
        pick = usable[subsample_indices(usable.size, max(limit, instance.N_NEIGHBORS + 1))]
        clock("  of which teacher-only: k-NN difficulty",
              lambda: instance.knn_label_disagreement_of(space[pick], rows["labels"][pick]))
        clock("  of which teacher-only: temperature what-if",
              lambda: whatif.temperature_whatif_of(rows["teacher.logits"], rows["labels"], alpha=ALPHA))
        clock("  of which teacher-only: teacher T*",
              lambda: universe.fitted_temperature_of(rows["teacher.logits"], rows["labels"]))
        clock("  of which teacher-only: teacher class similarity",
              lambda: domain.output_similarity_of(summary.class_sums["teacher"]))
        clock("  of which: 4 bootstrap intervals", lambda: [
            fidelity.sample_bootstrap_ci(examples[name], mean=summary.mean(name), n_total=summary.n_samples)
            for name in ("teacher.correct", "student.correct", "agree", "kl")])
    return {name: statistics.median(times) for name, times in parts.items()}


def setup_case_study(seed: int):
    train, test = load_dataset("digits:train"), load_dataset("digits:test")
    torch.manual_seed(seed)
    teacher = MLP((64, 256, 256, 10))
    train_ce(teacher, train.x, train.labels, recipe=Recipe(epochs=50, lr=1e-3))
    torch.manual_seed(seed + 1)
    student = MLP((64, 32, 10))
    return teacher.eval(), student, train.x, train.labels, (test.x, test.labels), None, 3e-3


def setup_mnist_like(seed: int):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 1, (10, 784)).astype(np.float32)

    def draw(n):
        y = rng.integers(0, 10, n)
        return torch.as_tensor(centers[y] + rng.normal(0, 3, (n, 784)).astype(np.float32)), y

    (x, y), held_out = draw(60_000), draw(10_000)
    torch.manual_seed(seed)
    teacher = MLP((784, 256, 256, 10))
    train_ce(teacher, x, y, recipe=Recipe(epochs=30, lr=1e-3))
    torch.manual_seed(seed + 1)
    student = MLP((784, 32, 10))
    return teacher.eval(), student, x, y, held_out, 64, 1e-3


def bench(name: str, setup, *, every: int | None, rounds: int, seed: int) -> None:
    teacher, student, x, y, held_out, batch_size, lr = setup(seed)
    steps_per_epoch = 1 if batch_size is None else -(-len(x) // batch_size)
    every = every or steps_per_epoch
    start = time.perf_counter()
    monitor = Monitor(teacher, data=held_out, every=every, temperature=TEMPERATURE, alpha=ALPHA)
    built = time.perf_counter() - start
    run = Run(teacher, student, x, y, batch_size=batch_size, lr=lr)
    for _ in range(2):  # warm up both paths
        run.epoch()
        run.epoch(monitor)
    epochs_per_round = max(1, every // steps_per_epoch)  # so that each monitored round holds one call
    times = alternating({"plain": lambda: [run.epoch() for _ in range(epochs_per_round)],
                         "monitored": lambda: [run.epoch(monitor) for _ in range(epochs_per_round)]}, rounds)
    plain, monitored = ([t / epochs_per_round for t in times[name]] for name in ("plain", "monitored"))
    calls = [r.seconds for r in monitor.history]
    per_round = ratios(times, "monitored", "plain")
    ratio = statistics.median(per_round)
    print(f"\n== {name}: {len(held_out[1]):,} held-out examples, {steps_per_epoch} step(s) per epoch, "
          f"monitor every {every} steps ==")
    print(f"monitor built (teacher run once): {built:7.3f} s")
    print(f"epoch without monitor:            {statistics.median(plain):7.4f} s")
    print(f"epoch with monitor:               {statistics.median(monitored):7.4f} s  "
          f"(overhead {100 * (ratio - 1):+.1f}% of an epoch; target < 5%)")
    print(f"with ÷ without, every round ({rounds} kept, alternating, one before them dropped): "
          f"{' '.join(f'{r:.3f}' for r in per_round)}")
    one_call = statistics.median(calls)
    print(f"one monitor call (median of {len(calls)}): {one_call:7.4f} s = {one_call / statistics.median(plain):.2f} "
          f"epochs; every >= {int(np.ceil(one_call / (0.05 * statistics.median(plain) / steps_per_epoch)))} steps "
          f"keeps the overhead under 5%")
    print("breakdown of one call (median):")
    for part, seconds in breakdown(monitor, student, repeats=5).items():
        print(f"  {part:<52} {seconds * 1000:8.1f} ms")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setups", nargs="+", default=["case-study", "mnist-like"],
                        choices=["case-study", "mnist-like"])
    parser.add_argument("--every", type=int, default=None,
                        help="monitor every this many steps (default: case-study 100, mnist-like one epoch)")
    parser.add_argument("--rounds", type=int, default=MIN_ROUNDS, help="rounds kept (one more runs first, dropped)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (the case studies use 2)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch threads: {torch.get_num_threads()}; KD at tau = {TEMPERATURE}, alpha = {ALPHA}")
    setups = {"case-study": (setup_case_study, 100), "mnist-like": (setup_mnist_like, None)}
    for name in args.setups:
        setup, default_every = setups[name]
        bench(name, setup, every=args.every or default_every, rounds=args.rounds, seed=args.seed)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(f"\npeak resident memory of this process: {peak:,.0f} MiB")


if __name__ == "__main__":
    main()
