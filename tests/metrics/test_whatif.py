"""The temperature what-if (kddiag/metrics/whatif.py): the level 1–3 formulas over a τ grid."""
import numpy as np
import pytest

from kddiag.errors import KddiagError
from kddiag.metrics import domain, instance, universe, whatif

from ._helpers import logits_and_labels


def test_each_grid_point_equals_the_single_metrics():
    teacher, _, y = logits_and_labels(n=200, n_classes=6, seed=50, scale=4.0)
    grid = (0.5, 1.0, 4.0, 32.0)
    table = whatif.temperature_whatif(teacher, y, temperatures=grid, alpha=0.9)
    assert table.temperatures.tolist() == list(grid) and table.n_samples == 200
    for i, t in enumerate(grid):
        assert table.effective_smoothing[i] == pytest.approx(universe.effective_smoothing(teacher, y, temperature=t))
        assert table.saturation_share[i] == pytest.approx(universe.saturation_share(teacher, y, temperature=t))
        assert table.dark_knowledge_content[i] == pytest.approx(
            domain.dark_knowledge_content(teacher, y, temperature=t))
        w = instance.untrained_rescaling_weights(teacher, y, temperature=t, alpha=0.9)
        assert table.rescaling_weight_cv[i] == pytest.approx(instance.coefficient_of_variation(w))


def test_informative_range_follows_its_definition():
    teacher, _, y = logits_and_labels(n=300, n_classes=10, seed=51, scale=8.0)
    table = whatif.temperature_whatif(teacher, y, alpha=0.9)
    smoothing = table.effective_smoothing
    assert np.all(np.diff(smoothing) > 0)  # hotter targets are softer
    ok = [t for t, eps, sat in zip(table.temperatures, smoothing, table.saturation_share)
          if 0.05 <= eps <= 0.9 * 9 / 10 and sat <= 0.5]
    assert ok, "a sharp teacher has an informative range on this grid"
    assert table.informative_range == (min(ok), max(ok))
    assert table.band == whatif.InformativeBand(0.05, 0.9 * 9 / 10, 0.5)
    assert table.informative_range[0] > 0.5  # τ = 0.5 leaves near one-hot targets


def test_no_informative_temperature_gives_none():
    y = np.arange(20) % 4
    uniform = np.zeros((20, 4))  # ε_eff = 3/4 at every τ: always above 0.9·3/4
    assert whatif.temperature_whatif(uniform, y, alpha=0.5).informative_range is None


def test_large_sets_use_a_fixed_subsample(monkeypatch):
    teacher, _, y = logits_and_labels(n=2000, n_classes=5, seed=52)
    monkeypatch.setattr(whatif, "MAX_ELEMENTS", 5 * 500)
    table = whatif.temperature_whatif(teacher, y, alpha=0.9)
    assert table.n_samples == 500
    again = whatif.temperature_whatif(teacher, y, alpha=0.9)
    np.testing.assert_array_equal(again.effective_smoothing, table.effective_smoothing)
    full = universe.effective_smoothing(teacher, y, temperature=4.0)
    assert table.effective_smoothing[table.at(4.0)] == pytest.approx(full, abs=0.03)


def test_errors():
    with pytest.raises(KddiagError, match="temperature must be a finite number > 0 and at most 10000; got -1"):
        whatif.temperature_whatif(np.zeros((2, 3)), np.array([0, 1]), temperatures=(1.0, -1), alpha=0.5)
    with pytest.raises(KddiagError, match="temperatures must hold at least one"):
        whatif.temperature_whatif(np.zeros((2, 3)), np.array([0, 1]), temperatures=(), alpha=0.5)
