"""rtlearn.metrics.dosimetric: the RMAE of DOSELO, Eq. (5) with a floored denominator."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from rtlearn.metrics.dosimetric import relative_dose_error, rmae


def test_rmae_by_hand():
    ref = np.array([60.0, 30.0, 3.0, 0.0])
    dose = np.array([54.0, 33.0, 9.0, 2.0])
    # floor 0.1 * 60 = 6 Gy: denominators 60, 30, 6, 6
    expected = (6 / 60 + 3 / 30 + 6 / 6 + 2 / 6) / 4
    assert rmae(dose, ref, rx=60.0) == pytest.approx(expected)
    assert rmae(dose, ref) == pytest.approx(expected)  # rx defaults to the reference maximum
    assert rmae(dose, ref, rx=60.0, floor_fraction=0.2) == pytest.approx((6 / 60 + 3 / 30 + 6 / 12 + 2 / 12) / 4)
    # without floor, Eq. (5) literally, on the voxels where the reference is positive
    m = ref > 0
    assert rmae(dose, ref, mask=m, rx=60.0, floor_fraction=0.0) == pytest.approx((6 / 60 + 3 / 30 + 6 / 3) / 3)
    assert relative_dose_error(dose, ref, rx=60.0)[2] == pytest.approx(1.0)
    assert rmae(ref, ref, rx=60.0) == 0.0
    assert rmae(torch.tensor(dose), torch.tensor(ref), rx=60.0) == pytest.approx(expected)


def test_rmae_bad_inputs():
    ref = np.array([60.0, 0.0])
    with pytest.raises(ValueError, match="undefined"):
        rmae(ref, ref, rx=60.0, floor_fraction=0.0)
    with pytest.raises(ValueError, match="rx"):
        rmae(ref, ref, rx=-1.0)
    with pytest.raises(ValueError, match="floor_fraction"):
        rmae(ref, ref, rx=60.0, floor_fraction=1.5)
    with pytest.raises(ValueError, match="shape"):
        rmae(ref, np.ones(3))
    with pytest.raises(ValueError, match="NaN"):
        rmae(np.array([np.nan, 1.0]), ref)
    with pytest.raises(ValueError, match="empty"):
        rmae(ref, ref, mask=np.zeros(2, bool))
    with pytest.raises(ValueError, match="zero everywhere"):
        relative_dose_error(ref, np.zeros(2))
