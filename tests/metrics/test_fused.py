"""The fused softmax pass (kddiag.metrics._common.fused_softmax_stats) against separate softmax_stats calls."""
from dataclasses import fields

import numpy as np
import pytest

from kddiag.metrics._common import ClassSums, fused_softmax_stats, softmax_stats


def separate(logits, labels, *, temperature, class_sums):
    """What the fused pass replaces: one softmax_stats call per model and temperature."""
    one = {role: softmax_stats(logits[role], labels, class_sums=class_sums[role], logit_spread=True,
                               versus=(logits["teacher"], None) if role == "student" else None)
           for role in ("student", "baseline") if role in logits}
    versus = (logits["student"], one["student"]) if "student" in logits else None
    one["teacher"] = softmax_stats(logits["teacher"], labels, versus=versus, class_sums=class_sums["teacher"],
                                   logit_spread=True)
    if temperature == 1.0:
        return one, one["teacher"], one.get("student")
    if versus is None:
        return one, softmax_stats(logits["teacher"], labels, temperature=temperature), None
    student_t = softmax_stats(logits["student"], labels, temperature=temperature, versus=(logits["teacher"], None))
    teacher_t = softmax_stats(logits["teacher"], labels, temperature=temperature,
                              versus=(logits["student"], student_t))
    return one, teacher_t, student_t


def assert_identical(a, b):
    for f in fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            np.testing.assert_array_equal(x, y, err_msg=f.name)
        else:
            assert x == y, f.name


def _case(n_classes: int, dtype, roles: tuple[str, ...], *, seed: int, n: int, dominated: int):
    """Labels, logits of ``roles`` (the teacher's first ``dominated`` rows with a target that dominates by
    800 nats: the non-target sum underflows) and two empty sets of class sums per role."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, n)
    logits = {role: (rng.normal(size=(n, n_classes)) * scale).astype(dtype)
              for role, scale in zip(roles, (3.0, 5.0, 1.0))}
    logits["teacher"][np.arange(dominated), labels[:dominated]] += 800.0
    kept = None if n_classes < 5_000 else np.arange(0, n_classes, 7)
    sums = [{role: ClassSums(n_classes, n_bins=15, kept=kept) for role in roles} for _ in range(2)]
    return labels, logits, sums


@pytest.mark.parametrize("n_classes, dtype", [(6, np.float64), (1_000, np.float64), (1_000, np.float32),
                                              (5_000, np.float32)])
@pytest.mark.parametrize("roles", [("teacher",), ("teacher", "student"), ("teacher", "student", "baseline")])
@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_fused_pass_gives_the_bits_of_separate_passes(n_classes, dtype, roles, temperature):
    labels, logits, sums = _case(n_classes, dtype, roles, seed=n_classes, n=700 if n_classes < 5_000 else 150,
                                 dominated=20)
    fused = fused_softmax_stats(logits, labels, temperature=temperature, class_sums=sums[0])
    apart = separate(logits, labels, temperature=temperature, class_sums=sums[1])
    for role in roles:
        assert_identical(fused[0][role], apart[0][role])
        for name in ("label_count", "prob_sum", "nontarget_sum", "binned_prob", "binned_hit"):
            np.testing.assert_array_equal(getattr(sums[0][role], name), getattr(sums[1][role], name), err_msg=name)
    assert_identical(fused[1], apart[1])
    assert (fused[2] is None) == (apart[2] is None)
    if fused[2] is not None:
        assert_identical(fused[2], apart[2])


@pytest.mark.parametrize("n_classes", [100, 1_000])
def test_the_float32_fused_pass_matches_float64_at_hundreds_of_classes(monkeypatch, n_classes):
    """From FLOAT32_MIN_CLASSES classes the pass runs in float32: every statistic of every model at τ = 1 and
    τ stays within 1e-4 of the float64 pass, saturated rows (the target ahead by hundreds of nats) included."""
    from kddiag.metrics import _common

    rng = np.random.default_rng(n_classes)
    n = 400
    y = rng.integers(0, n_classes, n)
    logits = {role: (rng.normal(size=(n, n_classes)) * scale).astype(np.float32)
              for role, scale in (("teacher", 3.0), ("student", 2.0), ("baseline", 8.0))}
    logits["teacher"][:5, :] -= 300.0
    logits["teacher"][np.arange(5), y[:5]] += 300.0  # the target dominates: the non-target sum underflows

    def run():
        sums = {role: ClassSums(n_classes, n_bins=15) for role in logits}
        return fused_softmax_stats(logits, y, temperature=3.0, class_sums=sums), sums

    assert _common.work_dtype(n_classes) == np.float32
    (fast_one, *fast_t), fast_sums = run()
    monkeypatch.setattr(_common, "FLOAT32_MIN_CLASSES", 10**9)
    (exact_one, *exact_t), exact_sums = run()
    for fast, exact in [*zip(fast_one.values(), exact_one.values()), *zip(fast_t, exact_t)]:
        for f in fields(fast):
            value = getattr(fast, f.name)
            if isinstance(value, np.ndarray) and f.name != "prediction":
                assert value.dtype == np.float64, f.name
                np.testing.assert_allclose(value, getattr(exact, f.name), rtol=1e-4, atol=1e-4, err_msg=f.name)
        np.testing.assert_array_equal(fast.prediction, exact.prediction)
    for role in logits:
        for name in ("nontarget_sum", "prob_sum"):
            np.testing.assert_allclose(getattr(fast_sums[role], name), getattr(exact_sums[role], name),
                                       rtol=1e-5, atol=1e-9, err_msg=name)
        np.testing.assert_array_equal(fast_sums[role].binned_hit, exact_sums[role].binned_hit)


@pytest.mark.parametrize("n_classes, dtype, rtol", [(6, np.float64, 1e-10), (300, np.float32, 1e-4),
                                                    (5_000, np.float32, 1e-4)])
@pytest.mark.parametrize("roles", [("teacher",), ("teacher", "student", "baseline")])
@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_the_torch_pass_gives_the_numpy_pass(n_classes, dtype, rtol, roles, device):
    """On the models' device (tested here on CPU tensors) the torch pass gives the numpy pass's statistics
    within the work dtype's rounding, and the same predictions, label counts and binned hits."""
    torch = pytest.importorskip("torch")
    from kddiag.metrics.fused import fused_softmax_stats_torch

    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no GPU")
    labels, logits, sums = _case(n_classes, dtype, roles, seed=n_classes + len(roles),
                                 n=300 if n_classes < 5_000 else 60, dominated=10)
    ours = fused_softmax_stats(logits, labels, temperature=2.5, class_sums=sums[0])
    theirs = fused_softmax_stats_torch({role: torch.from_numpy(v).to(device) for role, v in logits.items()},
                                       torch.from_numpy(labels).to(device), temperature=2.5, class_sums=sums[1])
    pairs = [*((ours[0][role], theirs[0][role]) for role in roles), (ours[1], theirs[1])]
    assert (ours[2] is None) == (theirs[2] is None)
    for a, b in pairs + ([(ours[2], theirs[2])] if ours[2] is not None else []):
        for f in fields(a):
            x, y = getattr(a, f.name), getattr(b, f.name)
            if isinstance(x, np.ndarray) and f.name != "prediction":
                assert y.dtype == np.float64, f.name
                np.testing.assert_allclose(y, x, rtol=rtol, atol=rtol, equal_nan=True, err_msg=f.name)
            else:
                np.testing.assert_array_equal(y, x, err_msg=f.name)
    for role in roles:
        for name in ("nontarget_sum", "prob_sum", "binned_prob"):
            np.testing.assert_allclose(getattr(sums[1][role], name), getattr(sums[0][role], name),
                                       rtol=rtol, atol=1e-9 if dtype == np.float64 else 1e-6, err_msg=name)
        np.testing.assert_array_equal(sums[1][role].binned_hit, sums[0][role].binned_hit)
        np.testing.assert_array_equal(sums[1][role].label_count, sums[0][role].label_count)


def test_the_torch_pass_waits_for_the_device_once_per_model():
    """On an accelerator every operation whose result size depends on the data (``nonzero``, ``unique``,
    ``item``) makes the host wait for the device: the pass has one per model (the listing of probabilities
    above the first bin edge), also with targets that dominate, whose rows once took a second pass."""
    torch = pytest.importorskip("torch")
    from torch.profiler import ProfilerActivity, profile

    from kddiag.metrics.fused import fused_softmax_stats_torch

    labels, logits, sums = _case(300, np.float32, ("teacher", "student"), seed=1, n=64, dominated=10)
    tensors = {role: torch.from_numpy(v) for role, v in logits.items()}
    with profile(activities=[ProfilerActivity.CPU]) as run:
        fused_softmax_stats_torch(tensors, labels, temperature=2.5, class_sums=sums[0])
    waits = [event.name for event in run.events()
             if event.name in ("aten::nonzero", "aten::_unique2", "aten::unique_dim", "aten::item",
                               "aten::_local_scalar_dense")]
    assert waits == ["aten::nonzero", "aten::nonzero"]
