"""``python -m case_studies NAME``: run one case study (or ``--list`` them) from a source checkout.

The case studies live beside the ``kddiag`` package, never inside it: the installed package does not
import them. ``python -m case_studies demo-pair`` rebuilds the demo checkpoints of ``kddiag demo``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

PROG = "python -m case_studies"


def _summary(module) -> str:
    """The first line of a module's docstring."""
    doc = (module.__doc__ or "").strip()
    return doc.splitlines()[0] if doc else ""


def _seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers; got '{text}'") from None
    if not seeds:
        raise argparse.ArgumentTypeError(f"expected at least one seed; got '{text}'")
    return seeds


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Run a case study reproducing a published knowledge-distillation finding "
                               "(see case_studies/README.md).")
    parser.add_argument("name", nargs="?", help="The study (or program) to run; --list shows them.")
    parser.add_argument("--list", action="store_true", help="List the case studies and other programs.")
    parser.add_argument("--seeds", type=_seeds, default=(0, 1, 2),
                        help="Comma-separated seeds (default: 0,1,2).")
    parser.add_argument("--quick", action="store_true", help="One seed, fewer epochs: a smoke test.")
    parser.add_argument("--out", type=Path,
                        help="Directory for tables and reports (default: case_studies/results, or "
                             "results/quick with --quick); for demo-pair, for the checkpoints "
                             "(default: kddiag/demo).")
    return parser


def _error(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv``, run the named study or program; return the exit code."""
    from case_studies import PROGRAMS, STUDIES

    args = build_parser().parse_args(argv)
    if args.list or args.name is None:
        for name, module in STUDIES.items():
            print(f"{name:24s} {_summary(module)}")
        for name, module in PROGRAMS.items():
            print(f"{name:24s} (not a study) {_summary(module)}")
        return 0
    if args.name in PROGRAMS:
        if args.quick or args.seeds != (0, 1, 2):
            return _error(f"{args.name} takes only --out; got --seeds or --quick")
        PROGRAMS[args.name].main(out_dir=args.out)
        return 0
    if args.name not in STUDIES:
        return _error(f"unknown case study '{args.name}'; available: {', '.join([*STUDIES, *PROGRAMS])}")
    STUDIES[args.name].main(seeds=args.seeds, quick=args.quick, out_dir=args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
