"""The cnn-digits case study's pieces: ccexam's teacher loaded by path and fed as it expects, the shuffled and
disjoint split of mlxtend's MNIST, the CNN checkpoints as kddiag builds them, and one quick scenario."""
from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("mlxtend")  # the 'cases' extra
if importlib.util.find_spec("ccexam") is None:
    pytest.skip("needs ccexam: pip install --no-deps ccexam", allow_module_level=True)

from case_studies import cnn_digits  # noqa: E402
from case_studies._cnn import SmallCNN, cnn_logits, new_cnn, save_cnn  # noqa: E402
from case_studies._harness import Context  # noqa: E402


@pytest.fixture(scope="module")
def task():
    return cnn_digits.mnist_task(0)


@pytest.fixture
def one_thread():
    """As the study trains: small CNNs are several times faster on one thread beside other jobs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_inputs_are_normalized_with_ccexams_own_mnist_statistics():
    stats = cnn_digits.ccexam_stats()["mnist"]
    assert stats["mean"] == (cnn_digits.MNIST_MEAN,) and stats["std"] == (cnn_digits.MNIST_STD,)
    assert stats["image_size"] == 28 and stats["grayscale"]


def test_ccexam_teacher_is_loaded_by_path_without_importing_its_package(task, tmp_path):
    torchvision_before = "torchvision" in sys.modules
    teacher, arch = cnn_digits.load_ccexam_teacher()
    assert "ccexam" not in sys.modules and ("torchvision" in sys.modules) == torchvision_before
    assert arch.endswith("ccexam/models.py:MNISTNet(28)")
    x, labels = task.test.x, task.test.labels
    normalized = (cnn_logits(teacher, x).argmax(1) == labels).mean()
    raw = (cnn_logits(teacher, x * cnn_digits.MNIST_STD + cnn_digits.MNIST_MEAN).argmax(1) == labels).mean()
    assert normalized > 0.99 and raw < normalized - 0.02  # fed as it was trained, not as pixels in [0, 1]

    from kddiag.loading import load_model

    path = save_cnn(teacher, tmp_path / "ccexam.pt", arch=arch)
    loaded = load_model(path, arch=arch, role="teacher").module
    np.testing.assert_allclose(cnn_logits(loaded, x[:200]), cnn_logits(teacher, x[:200]), atol=1e-5)


def test_the_split_is_shuffled_disjoint_and_covers_every_digit(task):
    sets = {"train": task.train, "test": task.test, "extra": task.extra}
    assert {k: len(s.labels) for k, s in sets.items()} == {"train": 500, "test": 2000, "extra": 2500}
    pixels = torch.cat([s.x.reshape(len(s.labels), -1) for s in sets.values()]).numpy()
    assert len(np.unique(pixels, axis=0)) == 5000  # disjoint, and no digit left out or repeated
    for s in sets.values():  # the file is sorted by label: a prefix would hold one or two classes
        assert set(s.labels.tolist()) == set(range(10)) and np.any(np.diff(s.labels) < 0)
    other = cnn_digits.mnist_task(1)
    assert not torch.equal(other.train.x, task.train.x)
    assert torch.equal(cnn_digits.mnist_task(0).train.x, task.train.x)


def test_small_cnn_checkpoints_are_built_by_kddiag_from_their_arch(tmp_path):
    from kddiag.loading import load_model

    model = new_cnn(seed=0, **cnn_digits.TINY_STUDENT)
    path = save_cnn(model, tmp_path / "tiny.pt")
    loaded = load_model(path, arch=model.arch, role="student").module
    assert isinstance(loaded, SmallCNN) and loaded.arch == model.arch
    x = torch.randn(4, 1, 28, 28)
    torch.testing.assert_close(loaded(x), model(x))


def test_permuted_classes_quick_scenario_is_named_and_kept_with_the_family(task, tmp_path, one_thread):
    ctx = Context(study="cnn-digits", seed=0, quick=True, out_dir=tmp_path, keep_html=False)
    pairs = cnn_digits.Pairs(ctx)
    teacher = pairs.teacher(task.extra.x, task.extra.labels, cnn_digits.EARLY_TEACHER)
    sigma = cnn_digits.first_appearance_order(task.train.labels, seed=0)
    student = pairs.student(teacher_logits=cnn_logits(teacher, task.train.x), labels=sigma[task.train.labels],
                            columns=sigma)
    pairs.inspect("permuted-classes", teacher=pairs.save(teacher, "teacher"),
                  student=pairs.save(student, "student", temperature=4.0, alpha=0.9), baseline=None)
    (verdict,) = ctx.verdicts
    assert verdict["family"] == "cnn" and verdict["benchmark"]
    assert verdict["verdict"] == verdict["true_cause"] == "class-order-mismatch"


def test_missing_extra_names_what_to_install(monkeypatch):
    assert cnn_digits.missing_extra() is None
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ccexam" else real(name, *a))
    message = cnn_digits.missing_extra()
    assert message.startswith("needs ccexam") and "--no-deps ccexam" in message
