"""rtlearn.metrics.dose: mean absolute dose difference by mask, dose band and ROI; dose gradients."""
import numpy as np
import pytest
import torch

from rtlearn import metrics


def test_mad_hand_and_mask():
    assert metrics.mad([1.0, 2.0, 3.0], [1.0, 1.0, 1.0]) == 1.0
    assert metrics.mad([1.0, 2.0, 3.0], [1.0, 1.0, 1.0], mask=[False, False, True]) == 2.0
    assert metrics.mad(torch.ones(4), torch.zeros(4)) == 1.0


def test_mad_by_band_brute_force():
    rng = np.random.default_rng(1)
    ref = rng.uniform(0, 6500, size=(40, 40))
    pred = ref + rng.normal(0, 50, size=ref.shape)
    out = metrics.mad_by_dose_band(pred, ref)
    assert len(out) == 7
    for (lo, hi), row in out.items():
        sel = (ref >= lo) & (ref < hi)
        assert row["n"] == sel.sum()
        assert row["mad"] == pytest.approx(np.abs(pred - ref)[sel].mean())
    # an empty band is reported as nan, not dropped
    out = metrics.mad_by_dose_band(np.zeros(3), np.zeros(3), edges=(0, 1, 2))
    assert out[(1.0, 2.0)]["n"] == 0 and np.isnan(out[(1.0, 2.0)]["mad"])


def test_mad_per_roi_and_gradient():
    ref = np.tile(np.arange(10.0) * 100, (5, 1))  # 100 cGy per voxel along x, spacing 2 mm -> 50 cGy/mm
    pred = ref + 10
    rois = {"a": ref > 500, "none": np.zeros_like(ref, bool)}
    out = metrics.mad_per_roi(pred, ref, rois)
    assert out["a"] == pytest.approx(10.0) and np.isnan(out["none"])
    g = metrics.mean_gradient_by_band(ref, spacing=(2.0, 2.0), edges=(0, 2000))
    assert g[(0.0, 2000.0)] == pytest.approx(50.0)


def test_mad_bad_inputs():
    with pytest.raises(ValueError, match="shape"):
        metrics.mad(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="NaN"):
        metrics.mad(np.array([np.nan]), np.zeros(1))
    with pytest.raises(ValueError, match="empty"):
        metrics.mad(np.zeros(3), np.zeros(3), mask=np.zeros(3, bool))
    with pytest.raises(ValueError, match="spacing"):
        metrics.mean_gradient_by_band(np.zeros((3, 3)), spacing=None)
