"""The BatchNorm mismatch on hand-made statistics."""
import numpy as np
import pytest

from kddiag.errors import KddiagError
from kddiag.metrics.inputs import batchnorm_mismatch


def test_matching_statistics_give_no_shift_and_a_unit_ratio():
    mean, var = np.array([0.5, -1.0, 2.0]), np.array([1.0, 4.0, 0.25])
    assert batchnorm_mismatch(mean, var, mean, var, 1e-5) == pytest.approx((0.0, 1.0))


def test_inputs_scaled_by_s_scale_the_variance_by_s_squared_and_the_median_ignores_a_dead_channel():
    running_mean, running_var = np.zeros(5), np.full(5, 4.0)
    observed_var = running_var * 0.3 ** 2
    observed_var[0] = 0.0  # a dead channel
    shift, ratio = batchnorm_mismatch(np.full(5, 1.0), observed_var, running_mean, running_var, 0.0)
    assert ratio == pytest.approx(0.09) and shift == pytest.approx(0.5)


@pytest.mark.parametrize("bad", [dict(observed_var=np.array([-1.0, 1.0])), dict(running_mean=np.array([0.0])),
                                 dict(observed_mean=np.array([np.nan, 0.0]))])
def test_bad_statistics_are_refused(bad):
    args = dict(observed_mean=np.zeros(2), observed_var=np.ones(2), running_mean=np.zeros(2), running_var=np.ones(2))
    with pytest.raises(KddiagError, match="batchnorm_mismatch"):
        batchnorm_mismatch(**{**args, **bad}, eps=1e-5)
