"""Data sets: files, built-in sets, the synthetic class-hierarchy generator."""
import numpy as np
import pytest
import torch

from kddiag.readers.arrays import BUILTIN_DATASETS, load_dataset, make_class_hierarchy
from kddiag.errors import KddiagError


# --- the class-hierarchy generator ------------------------------------------------------------

def test_hierarchy_shapes_and_groups():
    x, y, groups = make_class_hierarchy(n_groups=3, classes_per_group=4, n_features=10, n_per_class=7)
    assert x.shape == (84, 10) and x.dtype == np.float32
    assert y.shape == (84,) and y.dtype == np.int64
    assert np.bincount(y).tolist() == [7] * 12
    assert groups.tolist() == [0] * 4 + [1] * 4 + [2] * 4 and groups.dtype == np.int64


def test_hierarchy_is_deterministic_per_seed():
    first, again, other = (make_class_hierarchy(n_per_class=5, seed=s) for s in (3, 3, 4))
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(first[0], other[0])


def test_hierarchy_follows_its_recipe():
    """Without noise, inputs are the prototypes; prototypes of one group sit around one centre."""
    x, y, groups = make_class_hierarchy(n_per_class=3, noise=0.0, prototype_spread=0.1)
    prototypes = np.stack([x[y == k][0] for k in range(len(groups))])
    for k in range(len(groups)):
        np.testing.assert_allclose(x[y == k], np.repeat(prototypes[k:k + 1], 3, axis=0))
    distance = np.linalg.norm(prototypes[:, None] - prototypes[None], axis=-1)
    same = groups[:, None] == groups[None]
    off_diagonal = ~np.eye(len(groups), dtype=bool)
    # within-group ≈ 0.1·√(2·32) = 0.8; across groups ≈ 2·√(2·32) = 16
    assert distance[same & off_diagonal].max() < 2.0 < 8.0 < distance[~same].min()


def test_hierarchy_default_is_hard_within_groups_and_easy_across():
    """A nearest-class-mean classifier fit on the train part: well below 100%, errors within groups."""
    train, test = load_dataset("hierarchy:train"), load_dataset("hierarchy:test")
    groups = np.array(train.class_info.groups)
    means = np.stack([train.x.numpy()[train.labels == k].mean(0) for k in range(20)])
    predicted = np.linalg.norm(test.x.numpy()[:, None] - means[None], axis=-1).argmin(1)
    accuracy = (predicted == test.labels).mean()
    assert 0.7 < accuracy < 0.95
    wrong = predicted != test.labels
    assert (groups[predicted[wrong]] == groups[test.labels[wrong]]).mean() > 0.95


@pytest.mark.parametrize("option", ["n_groups", "n_per_class"])
def test_hierarchy_rejects_bad_sizes(option):
    with pytest.raises(KddiagError, match=f"'{option}' must be a positive integer; got 0"):
        make_class_hierarchy(**{option: 0})


# --- built-in sets ----------------------------------------------------------------------------

def test_builtin_digits_split():
    train, test, default = (load_dataset(name) for name in ("digits:train", "digits:test", "digits"))
    assert (train.name, test.name, default.name) == ("digits:train", "digits:test", "digits:test")
    assert train.x.shape == (1257, 64) and test.x.shape == (540, 64)
    assert train.x.dtype == torch.float32 and 0 <= float(test.x.min()) and float(test.x.max()) <= 1
    assert torch.equal(default.x, test.x) and np.array_equal(default.labels, test.labels)
    np.testing.assert_allclose(np.bincount(train.labels) / 1257, np.bincount(test.labels) / 540, atol=0.01)
    assert test.class_info.names == tuple("0123456789") and test.class_info.groups is None
    # the pixels are scikit-learn's, scaled by 1/16
    from sklearn.datasets import load_digits

    pixels = {tuple(row) for row in (load_digits().data / 16).astype(np.float32)}
    assert all(tuple(row) in pixels for row in test.x[:20].numpy())


def test_builtin_hierarchy_carries_its_groups():
    train, test = load_dataset("hierarchy:train"), load_dataset("hierarchy")
    assert train.x.shape == (1680, 32) and test.x.shape == (720, 32) and test.name == "hierarchy:test"
    assert test.class_info.groups == tuple(k // 5 for k in range(20))
    assert test.class_info.names[:6] == ("g0/c0", "g0/c1", "g0/c2", "g0/c3", "g0/c4", "g1/c5")
    x, _, _ = make_class_hierarchy()
    rows = {tuple(row) for row in x}
    assert all(tuple(row) in rows for row in train.x[:20].numpy())
    assert np.array_equal(load_dataset("hierarchy:train").labels, train.labels)


def test_unknown_names_list_the_builtin_sets():
    with pytest.raises(KddiagError, match=r"--data 'cifar': not a file and not a built-in data set; "
                                          r"built-in sets are digits, digits:train, .*hierarchy:test"):
        load_dataset("cifar")
    assert len(BUILTIN_DATASETS) == 6


# --- files ------------------------------------------------------------------------------------

def test_pt_and_npz_files(tmp_path):
    x, y = np.random.default_rng(0).normal(size=(6, 2, 3)), np.array([0, 1, 2, 0, 1, 2])
    torch.save({"x": torch.from_numpy(x), "y": torch.from_numpy(y), "class_names": ["a", "b", "c"]}, tmp_path / "d.pt")
    from_pt = load_dataset(str(tmp_path / "d.pt"))
    assert from_pt.x.dtype == torch.float32 and from_pt.x.shape == (6, 2, 3)
    assert from_pt.labels.dtype == np.int64 and from_pt.labels.tolist() == y.tolist()
    assert from_pt.class_info.names == ("a", "b", "c") and from_pt.name == str(tmp_path / "d.pt")
    np.savez(tmp_path / "d.npz", x=x, y=y.astype(np.int32), class_names=np.array(["a", "b", "c"]))
    from_npz = load_dataset(str(tmp_path / "d.npz"))
    assert torch.equal(from_npz.x, from_pt.x) and from_npz.class_info.names == ("a", "b", "c")


def test_token_inputs_stay_integer_and_labels_only_files(tmp_path):
    np.savez(tmp_path / "tokens.npz", x=np.arange(12, dtype=np.int32).reshape(4, 3), y=np.array([0, 1, 1, 0]))
    assert load_dataset(str(tmp_path / "tokens.npz")).x.dtype == torch.int64
    torch.save({"y": torch.tensor([1, 0, 2])}, tmp_path / "labels.pt")
    only_labels = load_dataset(str(tmp_path / "labels.pt"), role="transfer-data")
    assert only_labels.x is None and only_labels.labels.tolist() == [1, 0, 2]


@pytest.mark.parametrize("content, message", [
    ({"x": np.zeros((3, 2))}, r"no labels 'y' \(found keys: x\)"),
    ({"x": np.zeros((3, 2)), "y": np.zeros((3, 1), int)}, r"labels must be 1-D class ids \(n_samples,\); got shape \(3, 1\) \(one-hot"),
    ({"x": np.zeros((3, 2)), "y": np.zeros(3)}, r"labels must be integer class ids; got dtype float64"),
    ({"x": np.zeros((3, 2)), "y": np.array([0, -1, 2])}, r"labels must be class ids >= 0; got -1"),
    ({"x": np.zeros((0, 2)), "y": np.zeros(0, int)}, r"the data set is empty"),
    ({"x": np.zeros((4, 2)), "y": np.zeros(3, int)}, r"inputs 'x' have shape \(4, 2\) but there are 3 labels"),
    ({"x": np.array(["a", "b"]), "y": np.zeros(2, int)}, r"inputs 'x' must be numeric"),
    ({"y": np.zeros(2, int), "class_names": np.zeros(2)}, r"'class_names' must be a 1-D list of strings"),
])
def test_bad_data_files(tmp_path, content, message):
    np.savez(tmp_path / "bad.npz", **content)
    with pytest.raises(KddiagError, match=r"data '.*bad\.npz': " + message):  # --transfer-data '...' or data '...'
        load_dataset(str(tmp_path / "bad.npz"), role="transfer-data")


def test_missing_corrupt_and_unknown_data_files(tmp_path):
    with pytest.raises(KddiagError, match=r"--data '.*gone\.pt': no such file"):
        load_dataset(str(tmp_path / "gone.pt"))
    (tmp_path / "bad.pt").write_bytes(b"not torch")
    with pytest.raises(KddiagError, match=r"--data '.*bad\.pt': not a readable tensor file"):
        load_dataset(str(tmp_path / "bad.pt"))
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(KddiagError, match=r"expected a dict with tensors 'x' and 'y'; got list"):
        load_dataset(str(tmp_path / "list.pt"))
    (tmp_path / "data.csv").write_text("1,2\n")
    with pytest.raises(KddiagError, match=r"unknown data format '\.csv'"):
        load_dataset(str(tmp_path / "data.csv"))
    (tmp_path / "empty.npz").write_bytes(b"")
    with pytest.raises(KddiagError, match=r"the file is empty"):
        load_dataset(str(tmp_path / "empty.npz"))
