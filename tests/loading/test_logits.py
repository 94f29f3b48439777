"""Logits files: ``.npy``, ``.npz`` and ``.pt``; every error names the file."""
import numpy as np
import pytest
import torch

from kddiag.errors import KddiagError
from kddiag.loading import load_model
from kddiag.types import EVAL, TRANSFER


def test_npy_logits_are_the_eval_set(tmp_path):
    logits = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    path = tmp_path / "t.npy"
    np.save(path, logits)
    loaded = load_model(path)
    assert loaded.format == "logits" and loaded.module is None and loaded.labels is None
    assert set(loaded.logits) == {EVAL}
    np.testing.assert_array_equal(loaded.logits[EVAL], logits)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_npy_logits_stay_on_disk_in_their_own_dtype(tmp_path, dtype):
    logits = np.random.default_rng(0).normal(size=(50, 3)).astype(dtype)
    np.save(tmp_path / "t.npy", logits)
    loaded = load_model(tmp_path / "t.npy").logits[EVAL]
    assert isinstance(loaded, np.memmap) and loaded.dtype == dtype and not loaded.flags.writeable


def test_bfloat16_tensors_become_float32_not_float64(tmp_path):
    torch.save({"eval": torch.randn(5, 4, dtype=torch.bfloat16), "transfer": torch.randn(5, 4, dtype=torch.float16)},
               tmp_path / "t.pt")
    loaded = load_model(tmp_path / "t.pt").logits
    assert loaded[EVAL].dtype == np.float32 and loaded[TRANSFER].dtype == np.float16


def test_npz_logits_with_transfer_and_labels(tmp_path):
    rng = np.random.default_rng(0)
    content = {"logits": rng.normal(size=(4, 3)), "transfer_logits": rng.normal(size=(6, 3)),
               "y": np.array([0, 1, 2, 1]), "transfer_labels": np.arange(6) % 3}
    path = tmp_path / "t.npz"
    np.savez(path, **content)
    loaded = load_model(path)
    np.testing.assert_array_equal(loaded.logits[EVAL], content["logits"])
    np.testing.assert_array_equal(loaded.logits[TRANSFER], content["transfer_logits"])
    np.testing.assert_array_equal(loaded.labels[EVAL], content["y"])
    np.testing.assert_array_equal(loaded.labels[TRANSFER], content["transfer_labels"])


def test_pt_logits_tensor_and_dict(tmp_path):
    logits = torch.randn(5, 4)
    torch.save(logits, tmp_path / "a.pt")
    np.testing.assert_array_equal(load_model(tmp_path / "a.pt").logits[EVAL], logits.numpy())
    torch.save({"eval": logits, "transfer": torch.randn(2, 4), "labels": torch.tensor([0, 1, 2, 3, 0])},
               tmp_path / "b.pt")
    loaded = load_model(tmp_path / "b.pt")
    assert loaded.format == "logits" and loaded.logits[TRANSFER].shape == (2, 4)
    assert loaded.labels[EVAL].tolist() == [0, 1, 2, 3, 0]


@pytest.mark.parametrize("name, content, message", [
    ("c.npz", {"x": np.zeros((3, 2)), "y": np.zeros(3, int)}, r"no logits \(keys: x, y\); expected 'logits' or 'eval'"),
    ("d.npz", {"logits": np.zeros((3, 2)), "labels": np.zeros(4, int)}, r"3 rows of eval logits but 4 labels"),
    ("e.npz", {"logits": np.zeros((3, 2)), "labels": np.zeros(3)}, r"labels 'labels' must be integer class ids; got dtype float64"),
])
def test_bad_logits_files(tmp_path, name, content, message):
    path = tmp_path / name
    if name.endswith(".npy"):
        np.save(path, content)
    elif name.endswith(".npz"):
        np.savez(path, **content)
    else:
        torch.save(content, path)
    with pytest.raises(KddiagError, match=message):
        load_model(path)


def test_truncated_and_object_npy_files_say_why(tmp_path):
    np.save(tmp_path / "full.npy", np.zeros((100, 3), np.float32))
    (tmp_path / "cut.npy").write_bytes((tmp_path / "full.npy").read_bytes()[:-40])
    with pytest.raises(KddiagError, match=r"^teacher checkpoint '.*cut\.npy': not a readable \.npy file "
                                          r"\(truncated: the file is shorter than its header says\)$"):
        load_model(tmp_path / "cut.npy")
    np.save(tmp_path / "objects.npy", np.array([{}, 1], dtype=object), allow_pickle=True)
    with pytest.raises(KddiagError, match=r"holds Python objects \(object arrays\), which kddiag never unpickles"):
        load_model(tmp_path / "objects.npy")


def _topk_file(path, logits, k, **extra):
    """A top-k logits file as LLM pipelines log them: ids and log-probabilities of the k largest entries."""
    logprobs = torch.log_softmax(torch.as_tensor(logits), dim=1)
    values, ids = logprobs.topk(k, dim=1)
    np.savez(path, topk_ids=ids.numpy(), topk_logprobs=values.numpy().astype(np.float32),
             n_classes=np.int64(logits.shape[1]), **extra)


def test_topk_logits_complete_rows_with_the_remaining_mass_spread_evenly(tmp_path):
    logits = np.random.default_rng(0).normal(0, 3, size=(40, 50))
    _topk_file(tmp_path / "t.npz", logits, 5, y=np.zeros(40, np.int64))
    loaded = load_model(tmp_path / "t.npz")
    dense = loaded.logits[EVAL][0:40]
    assert dense.shape == (40, 50) and dense.dtype == np.float32
    p, q = np.exp(dense.astype(np.float64)), torch.softmax(torch.as_tensor(logits), 1).numpy()
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-5)  # a distribution over all C classes
    top = np.argsort(-logits, axis=1)[:, :5]
    np.testing.assert_allclose(np.take_along_axis(p, top, 1), np.take_along_axis(q, top, 1), rtol=1e-5)
    np.testing.assert_array_equal(p.argmax(axis=1), logits.argmax(axis=1))
    assert "top-5 logits of 50 classes" in loaded.notes[0]


@pytest.mark.parametrize("content, message", [
    ({"topk_ids": np.zeros((3, 2), int), "topk_logprobs": np.full((3, 2), -1.0)}, r"need 'n_classes'"),
    ({"topk_ids": np.array([[0, 0]]), "topk_logprobs": np.full((1, 2), -1.0), "n_classes": 5}, r"repeats a class id in row 0"),
    ({"topk_ids": np.array([[0, 7]]), "topk_logprobs": np.full((1, 2), -1.0), "n_classes": 5}, r"class ids in \[0, 5\)"),
    ({"topk_ids": np.array([[0, 1]]), "topk_logprobs": np.full((1, 2), -0.1), "n_classes": 5}, r"sum to 1\.8097 > 1"),
    ({"topk_ids": np.array([[0, 1]]), "topk_logprobs": np.array([[0.5, -3.0]]), "n_classes": 5}, r"log-probabilities \(≤ 0\)"),
    ({"topk_ids": np.array([[0, 1]]), "n_classes": 5}, r"go together"),
    ({"topk_ids": np.zeros((1, 5), int), "topk_logprobs": np.full((1, 5), -3.0), "n_classes": 5}, r"fewer than n_classes"),
    ({"topk_ids": np.array([[0, 1]]), "topk_logprobs": np.full((1, 2), -1.0), "n_classes": 5,
      "logits": np.zeros((1, 5))}, r"both full and top-k logits"),
])
def test_bad_topk_files(tmp_path, content, message):
    np.savez(tmp_path / "k.npz", **content)
    with pytest.raises(KddiagError, match=message):
        load_model(tmp_path / "k.npz")
