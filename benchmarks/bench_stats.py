"""Benchmark: kddiag's streaming statistics against their floor and against torchmetrics' ECE.

Run: ``python benchmarks/bench_stats.py [--rounds 15] [--compile] [--baseline] [--inspect]`` (needs ``pip install
torchmetrics``). On 50,000 × 1,000 teacher and student logits (normal, σ = 3, float64; ``--baseline`` adds a
third model) at τ = 4, timed in alternating rounds (``_rounds.alternating``):

- ``kddiag``: the streaming statistics, ``SetAccumulator.update`` + ``summary`` on the whole set;
- ``ece``: torchmetrics' ``multiclass_calibration_error`` of the teacher alone (float64, 15 bins);
- ``floor32``/``floor64``: the fused floor, :func:`fused_floor` in torch float32/float64 — one pass over
  blocks of rows reading each logit once and giving every per-example quantity of both models at τ = 1
  and τ: log-sum-exp, log p_y, entropy, Brier score, KL(teacher ‖ student) and KL(student ‖ teacher)
  (with ``--compile``, its block function under ``torch.compile``).

With ``--inspect`` a fifth contender, ``inspect``, is the public ``kddiag.inspect`` in logits mode on the same
pair, as a user runs it: the float32 logits saved as two ``.npy`` files (memory-mapped) and the labels as an
``.npz``, with loading, every measurement and the diagnosis.

With ``--device cuda`` the floor runs there on chunks of CHUNK_ROWS rows, and a fifth contender,
``device``, is kddiag's torch pass (``fused_softmax_stats_torch``, per-example quantities and class sums of
every model, per chunk as the streaming statistics take them) on that device; ``--device cpu`` runs the
same on CPU tensors (to try it: numpy is kddiag's CPU path).

Prints every round's ratios, their median and range, and the load average before and after.
"""
from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np
import torch
from _rounds import MIN_ROUNDS, alternating, load_average, report

N, C, TAU = 50_000, 1_000, 4.0
FLOOR_ROWS = 128  # rows per block of the floor (measured at C = 1,000: 64-256 best; 512 and more rows, 2-10× slower)
FLOOR_THREADS = 2  # as kddiag's pool on this 2-core machine
CHUNK_ROWS = 8_192  # rows per chunk on an accelerator (kddiag's chunk at C = 1,000)
_POOL = ThreadPoolExecutor(FLOOR_THREADS)


def floor_block(z: list[torch.Tensor], y: torch.Tensor, tau: float) -> list[torch.Tensor]:
    """Per-example quantities of models ``z`` (each (n, C)) at τ = 1 and ``tau``: for each τ and model
    log Σ exp(z/τ), log p_y, H(p), Σ_k p_k² − 2p_y + 1; for each τ KL(p⁰ ‖ p¹) and KL(p¹ ‖ p⁰) of the first
    two."""
    top = [m.max(dim=1) for m in z]
    target = [m.gather(1, y[:, None])[:, 0] for m in z]
    out = []
    for inv in (1.0, 1.0 / tau):
        t = [(m - top_.values[:, None]) * inv for m, top_ in zip(z, top)]
        e = [u.exp() for u in t]
        s = [v.sum(dim=1) for v in e]
        log_s = [v.log() for v in s]
        mean_t = [torch.linalg.vecdot(v, u) / w for v, u, w in zip(e, t, s)]  # E_p[t]
        for k, (m, top_) in enumerate(zip(z, top)):
            log_py = (target[k] - top_.values) * inv - log_s[k]
            out += [top_.values * inv + log_s[k], log_py, log_s[k] - mean_t[k],
                    torch.linalg.vecdot(e[k], e[k]) / s[k] ** 2 - 2 * log_py.exp() + 1]
        if len(z) > 1:  # KL(p ‖ q) = E_p[t^p] − log s_p − E_p[t^q] + log s_q, and the reverse
            cross = torch.linalg.vecdot(e[0], t[1]) / s[0]
            back = torch.linalg.vecdot(e[1], t[0]) / s[1]
            out += [mean_t[0] - log_s[0] - cross + log_s[1], mean_t[1] - log_s[1] - back + log_s[0]]
    return out


def fused_floor(z: list[torch.Tensor], y: torch.Tensor, tau: float, block=floor_block) -> list[torch.Tensor]:
    """:func:`floor_block` over blocks of rows, joined in block order as float64 per-example vectors: on the
    CPU blocks of FLOOR_ROWS rows in FLOOR_THREADS threads (torch on one thread each), elsewhere chunks of
    CHUNK_ROWS rows."""
    if y.device.type != "cpu":
        parts = [block([m[a:a + CHUNK_ROWS] for m in z], y[a:a + CHUNK_ROWS], tau)
                 for a in range(0, y.numel(), CHUNK_ROWS)]
        return [torch.cat([p[k] for p in parts]).double() for k in range(len(parts[0]))]

    def part(a: int) -> list[torch.Tensor]:
        return block([m[a:a + FLOOR_ROWS] for m in z], y[a:a + FLOOR_ROWS], tau)

    with torch_threads(1):
        parts = list(_POOL.map(part, range(0, y.numel(), FLOOR_ROWS)))
    return [torch.cat([p[k] for p in parts]).double() for k in range(len(parts[0]))]



@contextmanager
def torch_threads(n: int):
    """torch's intra-op threads set to ``n`` inside: under load, 2 OpenMP threads on 2 busy cores made the
    floor 10-200× slower (measured); one thread per worker of our own pool does not."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def main(argv=None) -> None:
    from torchmetrics.functional.classification import multiclass_calibration_error

    import kddiag as kddiag_module
    from kddiag.accumulate import SetAccumulator, kept_classes
    from kddiag.outputs import Batch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=MIN_ROUNDS, help="rounds kept (one more runs first, dropped)")
    parser.add_argument("--baseline", action="store_true", help="a third model (at τ = 1 in kddiag and the floor)")
    parser.add_argument("--compile", action="store_true", help="the floor's block function under torch.compile")
    parser.add_argument("--float32-input", action="store_true", help="kddiag reads float32 logits (as collected)")
    parser.add_argument("--inspect", action="store_true", help="also kddiag.inspect in logits mode from .npy files")
    parser.add_argument("--device", help="run the floor and kddiag's torch pass there (e.g. cuda)")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    roles = ("teacher", "student", "baseline") if args.baseline else ("teacher", "student")
    logits = {role: rng.normal(0, 3, (N, C)) for role in roles}
    y = rng.integers(0, C, N)
    ours_input = {role: v.astype(np.float32) for role, v in logits.items()} if args.float32_input else logits
    kept = kept_classes(np.bincount(y, minlength=C))
    device = torch.device(args.device or "cpu")
    z64 = [torch.from_numpy(logits[role]).to(device) for role in roles]
    z32 = [v.float() for v in z64]
    y_tensor = torch.from_numpy(y).to(device)
    block = floor_block
    if args.compile:
        start = time.perf_counter()
        block = torch.compile(floor_block, dynamic=True)
        fused_floor(z32, y_tensor, TAU, block), fused_floor(z64, y_tensor, TAU, block)
        print(f"torch.compile: first calls (both precisions) {time.perf_counter() - start:.1f} s")

    def kddiag():
        accumulator = SetAccumulator("eval", n_classes=C, roles=roles, temperature=TAU, alpha=0.9, kept=kept, n_total=N)
        accumulator.update(Batch(0, y, ours_input, {}, {}))
        accumulator.summary()

    contenders = {
        "kddiag": kddiag,
        "ece": lambda: multiclass_calibration_error(z64[0], y_tensor, num_classes=C, n_bins=15),
        "floor32": lambda: fused_floor(z32, y_tensor, TAU, block),
        "floor64": lambda: fused_floor(z64, y_tensor, TAU, block),
    }
    if args.inspect:
        contenders["inspect"] = inspect_from_files(logits, y)
    if args.device:
        from kddiag.metrics._common import ClassSums
        from kddiag.metrics.fused import fused_softmax_stats_torch

        device_input = {role: (v32 if args.float32_input else v64) for role, v32, v64 in zip(roles, z32, z64)}

        def on_device():
            sums = {role: ClassSums(C, n_bins=15, kept=kept) for role in roles}
            for a in range(0, N, CHUNK_ROWS):
                fused_softmax_stats_torch({role: v[a:a + CHUNK_ROWS] for role, v in device_input.items()},
                                          y_tensor[a:a + CHUNK_ROWS], temperature=TAU, class_sums=sums)

        contenders["device"] = on_device
    if device.type == "cuda":  # every contender's time includes its last kernel
        contenders = {name: (lambda fn=fn: (fn(), torch.cuda.synchronize(device))) for name, fn in contenders.items()}
    print(f"{N:,} × {C:,} logits, {' + '.join(roles)}, τ = {TAU}, kddiag input "
          f"{'float32' if args.float32_input else 'float64'}; torch {torch.__version__} on {torch.get_num_threads()} "
          f"threads; load average before {load_average()}; kddiag from "
          f"{os.path.dirname(kddiag_module.__file__)}")
    times = alternating(contenders, args.rounds)
    print(f"{args.rounds} rounds kept (one before them dropped, order alternating); load average after {load_average()}")
    report(times, [("kddiag", "ece"), ("kddiag", "floor64"), ("kddiag", "floor32"), ("floor64", "ece"),
                   ("floor32", "ece"), *([("inspect", "ece"), ("inspect", "kddiag")] if args.inspect else []),
                   *([("device", "floor32"), ("device", "floor64")] if args.device else [])])


def inspect_from_files(logits: dict[str, np.ndarray], y: np.ndarray):
    """A contender: ``kddiag.inspect`` on the teacher's and student's float32 logits saved as ``.npy`` files and
    the labels as an ``.npz`` (in a temporary folder removed at exit), warmed by one first call."""
    import atexit
    import shutil
    import tempfile

    import kddiag
    from kddiag.options import InspectOptions

    folder = tempfile.mkdtemp(prefix="bench_stats_")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    paths = {role: os.path.join(folder, f"{role}.npy") for role in ("teacher", "student")}
    for role, path in paths.items():
        np.save(path, logits[role].astype(np.float32))
    labels = os.path.join(folder, "labels.npz")
    np.savez(labels, y=y)
    options = InspectOptions(temperature=TAU)

    def run():
        kddiag.inspect(paths["teacher"], paths["student"], data=labels, options=options)

    run()  # imports and the first reads of the files
    return run


if __name__ == "__main__":
    main()
