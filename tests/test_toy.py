import numpy as np
import pytest

from rtlearn.toy import toy_plan


def test_toy_plan_is_deterministic_and_sensible():
    a, b, c = toy_plan(seed=1), toy_plan(seed=1), toy_plan(seed=2)
    assert np.array_equal(a["dose"], b["dose"]) and not np.array_equal(a["dose"], c["dose"])
    d, ptv, oar = a["dose"], a["masks"]["PTV"], a["masks"]["OAR"]
    assert not (ptv & oar).any() and oar.any()
    assert np.all(d[~a["body"]] == 0) and d.min() >= 0
    assert 0.95 * 60 < np.median(d[ptv]) < 1.1 * 60
    assert d[oar].mean() < 0.6 * 60


def test_toy_plan_bad_inputs():
    with pytest.raises(ValueError):
        toy_plan(shape=(10, 10))
    with pytest.raises(ValueError):
        toy_plan(rx=0)
    with pytest.raises(ValueError):
        toy_plan(spacing=(0, 1))
