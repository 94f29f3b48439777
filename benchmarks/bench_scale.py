"""Benchmark: kddiag on inputs that do not fit in memory, many classes, and sharded runs.

Run: ``python benchmarks/bench_scale.py [--parts memory classes torchrun measure] [--quick]``. Each run of
``kddiag inspect`` is a child process; its wall time and peak resident memory (``wait4``) are printed.

- ``memory``: logits mode, C = 1,000, memory-mapped float16 ``.npy`` teacher and student logits for
  N = 100k, 1M and 5M examples (written first, about 4 GB per million examples for both models):
  peak memory should be flat in N and time linear.
- ``classes``: C = 32,000 and 150,000 at N = 100,000 positions, full logits computed on the fly by two
  small models (nothing of N × C exists anywhere): completes, peak memory printed (bound: 4 GB).
- ``torchrun``: the same ``inspect`` with ``torchrun --nproc-per-node 2`` and in one process, on 1M × 100
  logits; wall-time ratio and whether the two report.json files are byte-identical.
- ``measure``: the whole measurement step on 50,000 × 1,000 logits (teacher, student) vs torchmetrics'
  ``multiclass_calibration_error`` alone on the teacher's logits, timed in alternating rounds
  (needs ``pip install torchmetrics``).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


# Peak memory is the child's own VmHWM, printed as it exits: ru_maxrss would carry over the high-water
# mark of the forked parent across exec (Linux keeps it), i.e. this script's own memory.
PEAK_PROBE = ("import atexit, re, sys; atexit.register(lambda: print('VmHWM', re.search(r'VmHWM:\\s+(\\d+)', "
              "open('/proc/self/status').read()).group(1), file=sys.stderr)); import runpy; "
              "sys.argv = ['kddiag', *sys.argv[1:]]; runpy.run_module('kddiag', run_name='__main__')")


def run_child(command: list[str], env: dict | None = None) -> tuple[float, float]:
    """Wall seconds and peak resident memory (MiB, the largest of its processes) of ``kddiag`` run with
    ``command`` as arguments (or of a torchrun launch: then every rank's peak, the largest printed)."""
    start = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                          env={**os.environ, **(env or {})})
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{done.stderr[-2000:]}")
    peaks = [int(kib) for kib in re.findall(r"VmHWM (\d+)", done.stderr)]
    return wall, max(peaks, default=0) / 1024


def write_logits(path: Path, n: int, c: int, base_seed: int, noise: float, chunk: int = 100_000) -> None:
    """(n, c) float16 logits, written chunk by chunk: a shared signal (seed 0) plus model noise."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, c))
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        signal = np.random.default_rng([0, start]).normal(0, 3, (stop - start, c)).astype(np.float32)
        out[start:stop] = signal + noise * np.random.default_rng([base_seed, start]).normal(
            0, 1, (stop - start, c)).astype(np.float32)
    out.flush()
    del out


def labels_for(n: int, c: int) -> np.ndarray:
    """Labels that follow the shared signal's argmax most of the time (so accuracies are not chance)."""
    y = np.empty(n, dtype=np.int64)
    for start in range(0, n, 100_000):
        stop = min(start + 100_000, n)
        signal = np.random.default_rng([0, start]).normal(0, 3, (stop - start, c)).astype(np.float32)
        y[start:stop] = signal.argmax(axis=1)
        flip = np.random.default_rng([9, start]).random(stop - start) < 0.2
        y[start:stop][flip] = np.random.default_rng([8, start]).integers(0, c, int(flip.sum()))
    return y


def kddiag(*args: str) -> list[str]:
    return [sys.executable, "-c", PEAK_PROBE, "inspect", *args]


def part_memory(folder: Path, sizes: list[int]) -> None:
    c = 1_000
    print(f"memory: logits mode, C = {c:,}, memory-mapped float16 .npy (teacher and student)")
    for n in sizes:
        t, s, y = folder / f"t{n}.npy", folder / f"s{n}.npy", folder / f"y{n}.npz"
        start = time.perf_counter()
        write_logits(t, n, c, 1, 1.0)
        write_logits(s, n, c, 2, 2.5)
        np.savez(y, y=labels_for(n, c))
        written = time.perf_counter() - start
        wall, peak = run_child(kddiag(str(t), str(s), "--data", str(y), "--out", str(folder / f"r{n}"),
                                      "--temperature", "4", "--alpha", "0.9"))
        print(f"  N = {n:>9,}: inspect {wall:7.1f} s ({wall / n * 1e6:5.1f} µs per example), peak memory "
              f"{peak:7,.0f} MiB  (files written in {written:.0f} s, {2 * t.stat().st_size / 2**30:.1f} GiB)")
        for path in (t, s):
            path.unlink()


MODELS = '''
import torch
from torch import nn


class Logits(nn.Module):
    """Logits over many classes from a small input: a fixed random projection of it, scaled."""

    def __init__(self, n_in: int, n_classes: int, seed: int, scale: float = 3.0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.head = nn.Linear(n_in, n_classes)
        with torch.no_grad():
            self.head.weight.copy_(torch.randn(n_classes, n_in, generator=generator) * scale / n_in ** 0.5)
            self.head.bias.zero_()

    def forward(self, x):
        return self.head(x)
'''


def part_classes(folder: Path, class_counts: list[int], n: int) -> None:
    import torch

    print(f"classes: N = {n:,} positions, full logits computed batch by batch by two models (no N × C array)")
    (folder / "scale_models.py").write_text(MODELS)
    sys.path.insert(0, str(folder))
    from scale_models import Logits  # noqa: E402  (written just above)

    for c in class_counts:
        teacher, student = Logits(32, c, seed=1), Logits(32, c, seed=1)
        with torch.no_grad():  # the student: the teacher's projection plus noise
            student.head.weight.add_(0.5 * torch.randn(student.head.weight.shape,
                                                       generator=torch.Generator().manual_seed(2)))
        torch.save(teacher.state_dict(), folder / f"teacher{c}.pt")
        torch.save(student.state_dict(), folder / f"student{c}.pt")
        x = torch.randn(n, 32, generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            y = np.concatenate([teacher(x[i:i + 1000]).argmax(1).numpy() for i in range(0, n, 1000)])
        np.savez(folder / f"x{c}.npz", x=x.numpy(), y=y)
        arch = f"{folder / 'scale_models.py'}:Logits(32, {c}, 0)"
        wall, peak = run_child(kddiag(str(folder / f"teacher{c}.pt"), str(folder / f"student{c}.pt"),
                                      "--teacher-arch", arch, "--student-arch", arch, "--data", str(folder / f"x{c}.npz"),
                                      "--batch-size", "64", "--temperature", "2", "--alpha", "0.5",
                                      "--out", str(folder / f"rc{c}")))
        print(f"  C = {c:>7,}: inspect {wall:7.1f} s, peak memory {peak:7,.0f} MiB  (bound 4,096 MiB)")


def part_torchrun(folder: Path, n: int) -> None:
    c = 100
    t, s, y = folder / "tr_t.npy", folder / "tr_s.npy", folder / "tr_y.npz"
    write_logits(t, n, c, 1, 1.0)
    write_logits(s, n, c, 2, 2.5)
    np.savez(y, y=labels_for(n, c))
    args = [str(t), str(s), "--data", str(y), "--temperature", "4", "--alpha", "0.9"]
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    one, _ = run_child(kddiag(*args, "--out", str(folder / "tr1")))
    two, _ = run_child([torchrun, "--standalone", "--nproc-per-node", "2", "-m", "kddiag", "inspect", *args,
                        "--out", str(folder / "tr2")], env={"OMP_NUM_THREADS": "1"})
    same = (folder / "tr1" / "report.json").read_bytes() == (folder / "tr2" / "report.json").read_bytes()
    print(f"torchrun: N = {n:,} × C = {c} logits: 1 process {one:6.1f} s, 2 ranks {two:6.1f} s, "
          f"ratio {two / one:4.2f}x; report.json byte-identical: {same}")


def part_measure(repeats: int) -> None:
    import torch

    from kddiag.accumulate import summarize
    from kddiag.measure import measure
    from kddiag.inputs import ClassInfo
    from kddiag.options import Settings
    from kddiag.outputs import ModelOutputs, SetOutputs

    try:
        from torchmetrics.functional.classification import multiclass_calibration_error
    except ImportError:
        print("measure: skipped (pip install torchmetrics to compare)")
        return
    n, c = 50_000, 1_000
    rng = np.random.default_rng(0)
    t_logits, s_logits, y = rng.normal(0, 3, (n, c)), rng.normal(0, 3, (n, c)), rng.integers(0, c, n)
    outputs = [SetOutputs("eval", y, ModelOutputs(t_logits), ModelOutputs(s_logits))]
    t_tensor, y_tensor = torch.from_numpy(t_logits), torch.from_numpy(y)
    ours = lambda: measure(outputs, settings=Settings(), class_info=ClassInfo())  # noqa: E731
    theirs = lambda: multiclass_calibration_error(t_tensor, y_tensor, num_classes=c, n_bins=15)  # noqa: E731
    ours(), theirs()
    rounds = []
    for _ in range(repeats):
        a = time.perf_counter(); theirs(); b = time.perf_counter(); ours(); d = time.perf_counter()  # noqa: E702
        rounds.append((b - a, d - b))
    tm, km = statistics.median(r[0] for r in rounds), statistics.median(r[1] for r in rounds)
    summaries = [summarize(outputs[0], temperature=4.0, alpha=0.9)]
    summary_time = statistics.median(timed(lambda: summarize(outputs[0], temperature=4.0, alpha=0.9))
                                     for _ in range(repeats))
    compute_time = statistics.median(timed(lambda: measure(summaries, settings=Settings(), class_info=ClassInfo()))
                                     for _ in range(repeats))
    print(f"measure: {n:,} × {c:,} logits (float64): every kddiag measurement {km:.2f} s, torchmetrics "
          f"multiclass_calibration_error alone {tm:.2f} s: ratio {statistics.median(r[1] / r[0] for r in rounds):.1f}x "
          f"(target <= 1.0x); of which streaming statistics {summary_time:.2f} s (one fused softmax pass and class "
          f"sums), measurements from them {compute_time:.2f} s")


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", default=["memory", "classes", "torchrun", "measure"],
                        choices=["memory", "classes", "torchrun", "measure"])
    parser.add_argument("--quick", action="store_true", help="small sizes, to try the script")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="kddiag-bench-"))
    try:
        if "memory" in args.parts:
            part_memory(folder, [20_000, 40_000] if args.quick else [100_000, 1_000_000, 5_000_000])
        if "classes" in args.parts:
            part_classes(folder, [2_000, 5_000] if args.quick else [32_000, 150_000], 2_000 if args.quick else 100_000)
        if "torchrun" in args.parts:
            part_torchrun(folder, 20_000 if args.quick else 1_000_000)
        if "measure" in args.parts:
            part_measure(args.repeats)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
