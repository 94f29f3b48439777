"""The benchmarks' timing method (benchmarks/_rounds.py): ratios are taken within a round, the order
alternates, the first round is dropped."""
import importlib.util
from pathlib import Path

import pytest

ROUNDS = Path(__file__).resolve().parents[1] / "benchmarks" / "_rounds.py"


@pytest.fixture(scope="module")
def rounds():
    spec = importlib.util.spec_from_file_location("bench_rounds", ROUNDS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_order_flips_every_round_and_the_first_round_is_dropped(rounds):
    calls, seen = [], []
    times = rounds.alternating({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 3,
                               after_round=lambda k, seconds: seen.append((k, list(seconds))))
    assert calls == ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert seen == [(0, ["a", "b"]), (1, ["b", "a"]), (2, ["a", "b"]), (3, ["b", "a"])]
    assert [len(values) for values in times.values()] == [3, 3]


def test_ratios_pair_the_contenders_round_by_round(rounds, capsys):
    times = {"kddiag": [2.0, 3.0, 9.0], "floor": [1.0, 2.0, 3.0]}
    assert rounds.ratios(times, "kddiag", "floor") == [2.0, 1.5, 3.0]
    rounds.report(times, [("kddiag", "floor")], targets={("kddiag", "floor"): "≤ 1.5×"})
    line = capsys.readouterr().out.splitlines()[-1]
    assert line == "  kddiag ÷ floor: median  2.00×, range  1.50– 3.00× (target ≤ 1.5×); rounds: 2.00 1.50 3.00"
