"""Benchmark: ``kddiag inspect`` from files, as a user runs it, against the bare forward passes of its models.

Run: ``python benchmarks/bench_files.py [--n-samples 100000] [--rounds 8] [--dir DIR]``.

Builds a teacher ``mlp:784-2048-2048-100`` and a student ``mlp:784-256-100`` (untrained: the cost does not
depend on the weights), exports both with ``torch.export`` (``.pt2``, dynamic batch) and as state dicts,
and writes N random float32 inputs and labels as an ``.npz``. Then, in alternating rounds
(``_rounds.alternating``: the order flips every round; the first round is dropped), it times:

- ``floor``: the bare forward passes of both loaded ``.pt2`` programs over the same data in memory, in
  batches of 512 (kddiag's default), under ``torch.inference_mode()``;
- ``eager``: the same with the eager ``nn.Module`` s (printed for reference; not in the ratios);
- ``cli``: ``kddiag inspect teacher.pt2 student.pt2 --data data.npz --temperature 4 --alpha 0.9 --out DIR``
  in a child process (Python start, imports, loading, report writing included);
- ``bare-cli``: a child process that imports torch, loads both ``.pt2`` programs and the ``.npz`` and runs
  the bare forward passes (the CLI's own floor: start-up and loading included);
- ``cli-other`` (with ``--other-tree DIR``): the same command with ``PYTHONPATH=DIR``, another version of
  kddiag (e.g. ``git archive HEAD kddiag | tar -x -C DIR``) timed in the same rounds;
- ``api``: ``kddiag.inspect`` in this process on the two file paths and the data file (loading included,
  no report files) followed by ``write_outputs``.

Every round's ratios are printed, then the median and range of each, and the load average before and
after the run.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from _rounds import alternating

from kddiag.models import MLP

TEACHER, STUDENT = (784, 2048, 2048, 100), (784, 256, 100)
BATCH = 512

BARE_CLI = """
import sys, time, io, numpy as np, torch
t0 = time.perf_counter()
models = [torch.export.load(p).module() for p in sys.argv[1:3]]
with np.load(sys.argv[3]) as f:
    x = torch.from_numpy(np.ascontiguousarray(f["x"]))
with torch.inference_mode():
    for m in models:
        for s in range(0, len(x), {batch}):
            m(x[s:s + {batch}]).numpy()
"""


def build(folder: Path, n: int) -> dict[str, Path]:
    """The two models (.pt2 and state dicts) and the data (.npz) in ``folder``; reused when present."""
    paths = {"teacher": folder / "teacher.pt2", "student": folder / "student.pt2",
             "teacher_sd": folder / "teacher.pt", "student_sd": folder / "student.pt", "data": folder / f"data_{n}.npz"}
    if not all(p.exists() for p in paths.values()):
        torch.manual_seed(0)
        batch = torch.export.Dim("batch", min=1, max=1 << 20)
        for role, widths in (("teacher", TEACHER), ("student", STUDENT)):
            model = MLP(widths).eval()
            program = torch.export.export(model, (torch.randn(4, widths[0]),), dynamic_shapes=({0: batch},))
            torch.export.save(program, paths[role])
            torch.save(model.state_dict(), paths[f"{role}_sd"])
        rng = np.random.default_rng(0)
        np.savez(paths["data"], x=rng.standard_normal((n, TEACHER[0]), dtype=np.float32),
                 y=rng.integers(0, TEACHER[-1], n))
    return paths


def bare_forward(models, x: torch.Tensor) -> None:
    with torch.inference_mode():
        for model in models:
            for start in range(0, len(x), BATCH):
                model(x[start:start + BATCH]).numpy()


def run_cli(args: list[str]) -> None:
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-samples", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=8, help="rounds kept (one more runs first, dropped)")
    parser.add_argument("--dir", default=None, help="where the models and data are kept (default: a temp dir)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["cli", "bare-cli", "api", "eager"])
    parser.add_argument("--other-tree", default=None,
                        help="a folder holding another version's kddiag package: its CLI is timed in the same "
                             "rounds as 'cli-other' (PYTHONPATH), e.g. the version before a change")
    args = parser.parse_args(argv)
    folder = Path(args.dir or tempfile.mkdtemp(prefix="kddiag_bench_files_"))
    folder.mkdir(parents=True, exist_ok=True)
    paths = build(folder, args.n_samples)
    out = folder / "out"
    load_before = os.getloadavg()
    print(f"N = {args.n_samples:,}, batch {BATCH}, torch threads {torch.get_num_threads()}, "
          f"load average {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}", flush=True)

    import kddiag
    from kddiag.pipeline import write_outputs
    from kddiag.options import InspectOptions

    programs = [torch.export.load(str(paths[r])).module() for r in ("teacher", "student")]
    eager = [MLP(w).eval() for w in (TEACHER, STUDENT)]
    with np.load(paths["data"]) as f:
        x = torch.from_numpy(np.ascontiguousarray(f["x"]))
    options = InspectOptions(batch_size=BATCH, temperature=4.0, alpha=0.9, progress="none")
    kddiag_bin = str(Path(sys.executable).with_name("kddiag"))
    cli = [kddiag_bin, "inspect", str(paths["teacher"]), str(paths["student"]), "--data", str(paths["data"]),
           "--temperature", "4", "--alpha", "0.9", "--out", str(out), "--progress", "none"]
    bare_cli = [sys.executable, "-c", BARE_CLI.format(batch=BATCH), str(paths["teacher"]), str(paths["student"]),
                str(paths["data"])]

    def api() -> None:
        report = kddiag.inspect(str(paths["teacher"]), str(paths["student"]), data=str(paths["data"]), options=options)
        write_outputs(report, out)

    jobs = {"floor": lambda: bare_forward(programs, x), "eager": lambda: bare_forward(eager, x),
            "cli": lambda: run_cli(cli), "bare-cli": lambda: run_cli(bare_cli), "api": api}
    if args.other_tree:
        other_env = {**os.environ, "PYTHONPATH": os.path.abspath(args.other_tree)}
        jobs["cli-other"] = lambda: subprocess.run(cli, check=True, stdout=subprocess.DEVNULL, env=other_env)
    for name in args.skip:
        jobs.pop(name)
    def round_ratios(seconds: dict[str, float]) -> dict[str, float]:
        ratios = {f"{name}/floor": seconds[name] / seconds["floor"] for name in seconds if name not in ("floor", "eager")}
        for other in ("bare-cli", "cli-other"):
            if "cli" in seconds and other in seconds:
                ratios[f"cli/{other}"] = seconds["cli"] / seconds[other]
        return ratios

    def show(k: int, seconds: dict[str, float]) -> None:
        shown = "  ".join(f"{n} {t:6.2f}s" for n, t in seconds.items())
        shown_r = "  ".join(f"{n} {r:4.2f}x" for n, r in round_ratios(seconds).items())
        print(f"round {k}{' (dropped)' if k == 0 else ''} load {os.getloadavg()[0]:.2f}: {shown} | {shown_r}",
              flush=True)

    times = alternating(jobs, max(args.rounds, 1), after_round=show)
    print(f"\nmedian (range) over the {max(args.rounds, 1)} rounds kept:")
    for name, ts in times.items():
        print(f"  {name:9s} {statistics.median(ts):7.2f} s  ({min(ts):.2f}-{max(ts):.2f})")
    kept = [dict(zip(times, values)) for values in zip(*times.values())]
    series = {name: [round_ratios(seconds)[name] for seconds in kept] for name in round_ratios(kept[0])}
    for name, values in series.items():
        print(f"  ratio {name:13s} median {statistics.median(values):4.2f}x  range {min(values):4.2f}-"
              f"{max(values):4.2f}x  (target <= 1.10x)")
    load_after = os.getloadavg()
    print(f"load average before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}, "
          f"after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")


if __name__ == "__main__":
    main()
