"""Shared fixtures: a tiny importable architecture module for ``--*-arch package.module:callable``."""
import importlib
import sys
import textwrap

import pytest

ARCH_SOURCE = textwrap.dedent('''
    from torch import nn

    N_FEATURES, N_CLASSES = 8, 3

    def mlp():
        return nn.Sequential(nn.Linear(N_FEATURES, 16), nn.ReLU(), nn.Linear(16, N_CLASSES))

    def wide():
        return nn.Sequential(nn.Linear(N_FEATURES, 32), nn.ReLU(), nn.Linear(32, N_CLASSES))

    class Sized(nn.Sequential):
        """An MLP whose width is a required argument."""

        def __init__(self, hidden, *, n_classes=N_CLASSES):
            super().__init__(nn.Linear(N_FEATURES, hidden), nn.ReLU(), nn.Linear(hidden, n_classes))

    not_callable = 42

    def returns_list():
        return [1, 2]
''')


@pytest.fixture
def archs(tmp_path, monkeypatch):
    """The module ``kd_test_archs`` (written to tmp_path, importable); its ``mlp`` maps 8 features to 3 classes."""
    (tmp_path / "kd_test_archs.py").write_text(ARCH_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "kd_test_archs", raising=False)
    module = importlib.import_module("kd_test_archs")
    yield module
    sys.modules.pop("kd_test_archs", None)


@pytest.fixture(scope="session")
def full():
    """A report measured on synthetic outputs with everything given (tests/report/_fixtures.py)."""
    from report._fixtures import build_report

    return build_report()


@pytest.fixture(scope="session")
def logits_only():
    """A logits-mode report: eval set only, no baseline, no features."""
    from report._fixtures import build_logits_only_report

    return build_logits_only_report()
