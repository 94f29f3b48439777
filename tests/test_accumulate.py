"""Streaming statistics (kddiag/accumulate.py): batches, shards and one pass give the same measurements."""
import numpy as np
import pytest

from kddiag import accumulate
from kddiag.accumulate import SetAccumulator, kept_classes, summarize
from kddiag.errors import KddiagError
from kddiag.measure import measure
from kddiag.reservoir import Reservoir, priority
from kddiag.inputs import ClassInfo
from kddiag.options import Setting, Settings
from kddiag.outputs import Batch, ModelOutputs, SetOutputs
from kddiag.types import EVAL, TRANSFER

SETTINGS = Settings(temperature=Setting(3.0, "cli"), alpha=Setting(0.8, "cli"))
GROUPS = (0, 0, 1, 1, 2, 2)


def make_set(name, n, seed, *, n_classes=6, baseline=True):
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, n_classes)) * 3
    labels = np.argmax(base + rng.gumbel(size=base.shape), axis=1)

    def model(noise):
        logits = base + noise * rng.normal(size=base.shape)
        return ModelOutputs(logits, features=np.column_stack([logits, rng.normal(size=(n, 3))]).astype(np.float32),
                            weight=rng.normal(size=(n_classes, 4)))

    return SetOutputs(name, labels, model(0.5), model(1.5), model(2.5) if baseline else None)


def accumulate_in(data: SetOutputs, bounds, **sizes) -> SetAccumulator:
    """``data`` fed as the batches [bounds[k], bounds[k + 1])."""
    roles = tuple(r for r in ("teacher", "student", "baseline") if getattr(data, r) is not None)
    acc = SetAccumulator(data.dataset, n_classes=data.n_classes, roles=roles, temperature=3.0, alpha=0.8, **sizes)
    for start, stop in zip(bounds[:-1], bounds[1:]):
        outputs = {role: getattr(data, role) for role in roles}
        acc.update(Batch(start, data.labels[start:stop], {r: o.logits[start:stop] for r, o in outputs.items()},
                         {r: o.features[start:stop] for r, o in outputs.items()}))
    acc.weights = {role: getattr(data, role).weight for role in roles}
    return acc


def sharded(data: SetOutputs, shard_bounds, batch, **sizes) -> SetAccumulator:
    """Each shard [a, b) fed in batches of ``batch``, then merged in shard order."""
    parts = [accumulate_in(data, sorted({*range(a, b, batch), b}), **sizes)
             for a, b in zip(shard_bounds[:-1], shard_bounds[1:])]
    for part in parts[1:]:
        parts[0].merge(part)
    return parts[0]


def measured(summaries):
    return measure(summaries, settings=SETTINGS, class_info=ClassInfo(groups=GROUPS)).to_dict()


def assert_same(a, b, *, rtol, path="metrics"):
    """Equal structures; floats within ``rtol`` (0: exactly)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            assert_same(a[key], b[key], rtol=rtol, path=f"{path}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for k, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, rtol=rtol, path=f"{path}[{k}]")
    elif isinstance(a, np.ndarray) and a.dtype.kind == "f" or isinstance(a, float):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * 1e-3, equal_nan=True, err_msg=path)
    elif hasattr(a, "to_dict"):
        assert_same(a.to_dict(), b.to_dict(), rtol=rtol, path=path)
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b, err_msg=path)
    else:
        assert a == b, path


@pytest.fixture(scope="module")
def sets():
    return [make_set(TRANSFER, 400, 1), make_set(EVAL, 257, 2)]


def test_uneven_batches_give_the_one_pass_measurements(sets):
    one_pass = measured([summarize(s, temperature=3.0, alpha=0.8) for s in sets])
    uneven = [accumulate_in(s, [0, 1, 8, 9, 100, 101, len(s.labels)]).summary() for s in sets]
    assert_same(measured(uneven), one_pass, rtol=0)  # statistics are taken per fixed chunk: exactly equal


def test_the_float32_pass_gives_the_same_bits_whatever_the_batches_and_shards(monkeypatch):
    """From FLOAT32_MIN_CLASSES classes (here 150) the fused pass runs in float32: still exactly the same
    summary for uneven batches and for shards of whole chunks."""
    from kddiag.metrics import _common

    monkeypatch.setattr(accumulate, "CHUNK_ROWS", 64)
    data = make_set(EVAL, 300, 3, n_classes=150)
    assert _common.work_dtype(150) == np.float32
    def measured_(summary):
        return measure([summary], settings=SETTINGS, class_info=ClassInfo()).to_dict()

    one_pass = measured_(summarize(data, temperature=3.0, alpha=0.8))
    assert_same(measured_(accumulate_in(data, [0, 1, 8, 9, 100, 101, 300]).summary()), one_pass, rtol=0)
    assert_same(measured_(sharded(data, [0, 64, 192, 300], 17).summary()), one_pass, rtol=0)


def test_merged_shards_give_the_one_pass_measurements(sets):
    one_pass = measured([summarize(s, temperature=3.0, alpha=0.8) for s in sets])
    merged = [sharded(s, [0, 33, 34, 250, len(s.labels)], 17).summary() for s in sets]
    assert_same(measured(merged), one_pass, rtol=1e-9)  # shards that split a chunk: equal to rounding


def test_shards_of_whole_chunks_give_exactly_the_one_pass_measurements(monkeypatch, sets):
    monkeypatch.setattr(accumulate, "CHUNK_ROWS", 64)
    one_pass = measured([summarize(s, temperature=3.0, alpha=0.8) for s in sets])
    merged = [sharded(s, [0, 64, 192, len(s.labels)], 17).summary() for s in sets]
    assert_same(measured(merged), one_pass, rtol=0)


def test_a_pickled_shard_leaves_its_scratch_rows_behind_and_merges_to_the_same_bits(monkeypatch, sets):
    """Ranks send their accumulators (``gather_object``): the chunk-sized array that joined rows are copied
    into is scratch, not sent, and the shards still merge to exactly the one-pass measurements."""
    import pickle

    monkeypatch.setattr(accumulate, "CHUNK_ROWS", 64)
    data = sets[0]
    one_pass = measured([summarize(data, temperature=3.0, alpha=0.8)])
    parts = [accumulate_in(data, sorted({*range(a, b, 17), b})) for a, b in ((0, 192), (192, len(data.labels)))]
    assert parts[0]._join_space  # batches of 17 straddle the chunks: their rows were joined
    sent = [pickle.loads(pickle.dumps(part)) for part in parts]
    assert all(not part._join_space for part in sent)
    sent[0].merge(sent[1])
    assert_same(measured([sent[0].summary()]), one_pass, rtol=0)
    parts[0].flush()  # the set's end
    assert not parts[0]._join_space


def test_measurements_side_by_side_equal_those_taken_in_turn(monkeypatch, sets):
    """The measurement step's parts run in the shared threads: the same bits as one after another."""
    from kddiag.metrics import _common

    summaries = [summarize(s, temperature=3.0, alpha=0.8) for s in sets]
    side_by_side = measured(summaries)
    monkeypatch.setattr(_common, "N_THREADS", 1)
    assert_same(measured(summaries), side_by_side, rtol=0)


def test_reservoirs_are_the_same_whatever_the_batches_and_shards(sets):
    """With reservoirs smaller than the set, the sample (and all it feeds) is exactly the same."""
    sizes = dict(example_samples=90, row_samples_=40)
    runs = [sharded(s, [0, len(s.labels)], 512, **sizes).summary() for s in sets]
    for shards, batch in (([0, 1, 200, 390, 400], 7), ([0, 128, 256, 400], 64)):
        other = [sharded(s, [b for b in shards if b <= len(s.labels)] + [len(s.labels)] * (shards[-1] > len(s.labels)),
                         batch, **sizes).summary() for s in sets]
        for first, second in zip(runs, other):
            for name in ("examples", "rows"):
                assert getattr(first, name).keys() == getattr(second, name).keys()
                for key, value in getattr(first, name).items():
                    np.testing.assert_array_equal(value, getattr(second, name)[key], err_msg=f"{name}.{key}")
        assert_same(measured(other), measured(runs), rtol=1e-9)
    assert runs[0].examples["index"].size == 90 and runs[0].rows["index"].size == 40
    assert np.isin(runs[0].rows["index"], runs[0].examples["index"]).all()  # rows ⊂ examples


def test_bounded_reservoirs_keep_exact_means_and_move_the_interval():
    data = make_set(EVAL, 2000, 5)
    full = measured([summarize(data, temperature=3.0, alpha=0.8)])["outcome"]
    small = measured([accumulate_in(data, [0, 700, 2000], example_samples=200).summary()])["outcome"]
    exact, sampled = full["student_accuracy"]["eval"], small["student_accuracy"]["eval"]
    assert sampled["value"] == pytest.approx(exact["value"], rel=1e-12)  # means cover every example
    width = sampled["ci95"][1] - sampled["ci95"][0]
    assert sampled["ci95"][0] < exact["value"] < sampled["ci95"][1]
    assert 0.5 < width / (exact["ci95"][1] - exact["ci95"][0]) < 2.0  # narrowed to the full set's size


def test_reservoir_keeps_the_smallest_priorities_in_any_order():
    index = np.arange(1000)
    expected = np.sort(index[np.argsort(priority(index))[:50]])
    for order in (index, index[::-1], np.random.default_rng(0).permutation(index)):
        reservoir = Reservoir(50)
        for chunk in np.array_split(order, 37):
            reservoir.add(chunk, {"value": chunk * 2.0})
        kept, arrays = reservoir.sorted()
        np.testing.assert_array_equal(kept, expected)
        np.testing.assert_array_equal(arrays["value"], expected * 2.0)
    assert len(set(priority(np.arange(100_000)).tolist())) == 100_000  # a bijection: no ties


def test_a_reservoir_told_the_set_size_keeps_the_same_sample():
    index = np.arange(5000)
    told, untold = Reservoir(300, n_total=5000), Reservoir(300)
    for chunk in np.array_split(index, 41):
        told.add(chunk, {"value": chunk * 3})
        untold.add(chunk, {"value": chunk * 3})
    (first, a), (second, b) = told.sorted(), untold.sorted()
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(a["value"], b["value"])
    assert first.size == 300


def test_kept_classes_are_the_most_frequent_beyond_the_dense_limit():
    counts = np.array([5, 9, 9, 1, 7, 0])
    assert kept_classes(counts, dense=6, top=3) is None
    np.testing.assert_array_equal(kept_classes(counts, dense=5, top=3), [1, 2, 4])
    np.testing.assert_array_equal(kept_classes(counts, dense=5, top=4), [0, 1, 2, 4])


def test_class_structure_over_kept_classes_is_the_dense_one_restricted(monkeypatch):
    data = make_set(EVAL, 600, 6, n_classes=8)
    dense = summarize(data, temperature=3.0, alpha=0.8)
    monkeypatch.setattr(accumulate, "DENSE_CLASSES", 5)
    monkeypatch.setattr(accumulate, "TOP_CLASSES", 4)
    restricted = summarize(data, temperature=3.0, alpha=0.8)
    kept = restricted.kept_classes
    assert kept.size == 4
    np.testing.assert_array_equal(kept, kept_classes(np.bincount(data.labels, minlength=8), dense=5, top=4))
    for role in ("teacher", "student"):
        np.testing.assert_allclose(restricted.class_sums[role].nontarget_sum,
                                   dense.class_sums[role].nontarget_sum[np.ix_(kept, kept)], rtol=1e-12)
    np.testing.assert_array_equal(restricted.confusion, dense.confusion[np.ix_(kept, kept)])
    settings = dict(settings=SETTINGS, class_info=ClassInfo())
    similarity = measure([restricted], **settings).domain.eval.teacher.output_similarity.value
    assert similarity.shape == (4, 4)
    full = measure([dense], **settings)
    np.testing.assert_allclose(similarity, full.domain.eval.teacher.output_similarity.value[np.ix_(kept, kept)])
    weights = measure([restricted], **settings).domain.weights.teacher.weight_similarity.value
    np.testing.assert_allclose(weights, full.domain.weights.teacher.weight_similarity.value[np.ix_(kept, kept)])


def test_accumulators_of_other_sets_do_not_merge(sets):
    first, second = accumulate_in(sets[0], [0, 400]), accumulate_in(sets[1], [0, 257])
    with pytest.raises(ValueError, match="different sets"):
        first.merge(second)


def test_a_batch_names_the_first_bad_example():
    logits = np.zeros((4, 3))
    logits[2, 1] = np.nan
    with pytest.raises(KddiagError, match=r"^student logits \(eval set, 's\.npy'\): NaN or Inf in example 12 "
                                          r"\(1 of the 4 examples from 10\)"):
        Batch(10, np.zeros(4, int), {"teacher": np.zeros((4, 3)), "student": logits}, sources={"student": "s.npy"},
              dataset=EVAL)
