"""Sharded runs under ``torchrun``: torch.distributed splits the data, collects and merges the statistics.

Started by ``torchrun --nproc-per-node N -m kddiag inspect ...`` (or several nodes), every rank loads
the models and data, collects its contiguous shard (whole chunks of CHUNK_ROWS examples) of each set (:func:`shard`) into a
:class:`~kddiag.accumulate.SetAccumulator` on its own device, and the accumulators are gathered on
rank 0 with ``torch.distributed.gather_object`` and merged in rank order. Rank 0 measures, diagnoses
and writes the report; the other ranks write nothing. The backend is NCCL when the ranks run on CUDA,
else gloo. Outside torchrun (no ``WORLD_SIZE`` > 1 in the environment) this is one process, one shard.
A rank that fails prints its one error line and exits 1; a rank waiting for it in a collective prints one line
saying so (never the backend's traceback), and torchrun prints its summary of the failed ranks.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

from kddiag.accumulate import CHUNK_ROWS, SetAccumulator
from kddiag.errors import KddiagError, printable


@dataclass(frozen=True)
class Group:
    """This process's place among the ranks of a run."""

    rank: int = 0
    world_size: int = 1
    device: str | None = None  # the device this rank runs its models on (None: the default)

    @property
    def is_main(self) -> bool:
        """Rank 0: the rank that measures and writes."""
        return self.rank == 0

    def shard(self, n_samples: int) -> range:
        """This rank's examples of a set of ``n_samples``: see :func:`shard`."""
        return shard(n_samples, CHUNK_ROWS, self.rank, self.world_size)

    def merged(self, accumulator: SetAccumulator | None) -> SetAccumulator | None:
        """Every rank's accumulator of one set, merged in rank order, on rank 0 (None on the others)."""
        if self.world_size == 1:
            return accumulator
        import torch.distributed as dist

        gathered: list | None = [None] * self.world_size if self.is_main else None
        try:
            dist.gather_object(accumulator, gathered, dst=0)
        except RuntimeError as error:  # gloo/NCCL: a peer exited (its own error line says why) or hung up
            raise KddiagError(f"stopped: another rank failed while the statistics were gathered (its own error "
                              f"says why; {_reason(error)})") from None
        if not self.is_main:
            return None
        parts = [part for part in gathered if part is not None]
        for part in parts[1:]:
            parts[0].merge(part)
        return parts[0]


def _reason(error: BaseException) -> str:
    """The collective's failure in a few words, without the backend's source location and banter."""
    text = " ".join(str(error).split())
    text = text.split("] ", 1)[1] if text.startswith("[") and "] " in text else text  # '[.../pair.cc:553] ...'
    return text.split(". ", 1)[0][:160] or type(error).__name__


def _environ_int(name: str, default: str | None, *, low: int, high: int | None = None) -> int:
    """A torchrun environment variable as an integer in [low, high]; one line naming it otherwise."""
    text = os.environ.get(name, default)
    bounds = f"from {low}" + ("" if high is None else f" to {high}")
    if text is None:
        raise KddiagError(f"{name} is not set, but WORLD_SIZE is: start kddiag with torchrun, which sets both")
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < low or (high is not None and value > high):
        raise KddiagError(f"the environment variable {name} must be an integer {bounds}; got {printable(text)[:40]!r}")
    return value


def shard(n_samples: int, unit: int, rank: int, world_size: int) -> range:
    """Rank ``rank``'s examples: whole units (``unit`` examples from a multiple of it), contiguous, as even
    as can be (shards differ by at most one unit); every example in exactly one shard.

    With the unit a multiple of the accumulators' statistics chunks (CHUNK_ROWS), every chunk's statistics
    are computed on the same rows whatever the number of ranks, and the merged sums equal one process's.
    """
    n_units = -(-n_samples // unit)
    first, last = n_units * rank // world_size, n_units * (rank + 1) // world_size
    return range(min(first * unit, n_samples), min(last * unit, n_samples))


@contextmanager
def group(device: str | None) -> Iterator[Group]:
    """The ranks of this run: joins the process group torchrun set up (and leaves it at the end), or a
    single process when not under torchrun. ``device``: the requested device, made per-rank for CUDA."""
    world_size = _environ_int("WORLD_SIZE", "1", low=0)
    if world_size <= 1:
        yield Group(device=device)
        return
    import torch
    import torch.distributed as dist

    if not dist.is_available():
        raise KddiagError("WORLD_SIZE > 1 but this torch has no torch.distributed; run one process")
    rank, local_rank = _environ_int("RANK", None, low=0, high=world_size - 1), _environ_int("LOCAL_RANK", "0", low=0)
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(name):
            raise KddiagError(f"WORLD_SIZE is {world_size} but {name} is not set: start kddiag with torchrun, which "
                              "sets it, or unset WORLD_SIZE to run one process")
    cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    if cuda:
        device = f"cuda:{local_rank}" if device in (None, "cuda") else device
        torch.cuda.set_device(torch.device(device))
    joined = not dist.is_initialized()
    if joined:
        try:
            dist.init_process_group(backend="nccl" if cuda else "gloo", rank=rank, world_size=world_size)
        except (RuntimeError, ValueError) as error:
            raise KddiagError(f"could not join the other ranks ({_reason(error)})") from None
    try:
        yield Group(rank=dist.get_rank(), world_size=dist.get_world_size(), device=device)
    finally:
        if joined:
            dist.destroy_process_group()
