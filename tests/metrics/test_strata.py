"""Token strata: frequency-rank and position buckets, and per-bucket means from sums."""
import numpy as np

from kddiag.metrics import strata


def test_frequency_buckets_follow_the_rank_in_the_reference_counts():
    counts = np.zeros(300, dtype=np.int64)
    counts[:250] = np.arange(250, 0, -1)  # class k has rank k + 1; classes 250.. are unseen
    got = strata.frequency_buckets(np.array([0, 9, 10, 99, 100, 249, 250]), counts)
    np.testing.assert_array_equal(got, [0, 0, 1, 1, 2, 2, strata.FREQUENCY_BUCKETS - 1])


def test_ties_in_frequency_rank_go_to_the_lower_class_id():
    counts = np.full(20, 5)
    got = strata.frequency_buckets(np.arange(20), counts)
    np.testing.assert_array_equal(got, [0] * 10 + [1] * 10)


def test_position_buckets_are_powers_of_two():
    got = strata.position_buckets(np.array([0, 1, 2, 3, 4, 7, 8, 1023, 1024, 10 ** 6]))
    np.testing.assert_array_equal(got, [0, 1, 2, 2, 3, 3, 4, 10, 11, 11])
    names = strata.bucket_names(strata.POSITION)
    assert [names[k] for k in (0, 1, 2, 4, 11)] == ["0", "1", "2-3", "8-15", "≥ 1024"]


def test_breakdown_means_leave_out_empty_buckets_and_unmeasured_columns():
    count = np.array([2, 0, 4] + [0] * (strata.POSITION_BUCKETS - 3))
    sums = {"teacher_accuracy": np.array([1.0, 0.0, 4.0] + [0.0] * (strata.POSITION_BUCKETS - 3)), "agreement": None}
    breakdown = strata.breakdown_of(strata.POSITION, count, sums)
    assert breakdown.buckets == ("0", "2-3")
    np.testing.assert_allclose(breakdown.means["teacher_accuracy"], [0.5, 1.0])
    assert np.isnan(breakdown.means["agreement"]).all()  # no student: not measured
