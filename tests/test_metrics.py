"""rtlearn.metrics against brute force, MONAI's surface metrics and scipy."""
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


def _blob(shape, center, radius):
    grid = np.indices(shape).astype(float)
    return sum((g - c) ** 2 for g, c in zip(grid, center)) <= radius**2


def test_overlap_hand_values():
    p = np.array([1, 1, 1, 0, 0], bool)
    g = np.array([0, 1, 1, 1, 0], bool)
    assert metrics.dice(p, g) == pytest.approx(2 * 2 / 6)
    assert metrics.recall(p, g) == pytest.approx(2 / 3)
    assert metrics.precision(p, g) == pytest.approx(2 / 3)
    assert metrics.precision(np.zeros(5, bool), g) == 0.0


def test_overlap_vs_monai():
    from monai.metrics import compute_dice

    p = _blob((24, 24, 24), (12, 12, 12), 6)
    g = _blob((24, 24, 24), (13, 11, 12), 7)
    ref = compute_dice(torch.from_numpy(p)[None, None].float(), torch.from_numpy(g)[None, None].float())
    assert metrics.dice(p, g) == pytest.approx(float(ref), abs=1e-6)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (2.5, 1.2, 0.8)])
def test_surface_distances_vs_monai(spacing):
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

    p = _blob((30, 32, 28), (15, 16, 14), 7) | _blob((30, 32, 28), (4, 4, 4), 2)  # with a distant blob
    g = _blob((30, 32, 28), (14, 17, 14), 8)
    tp, tg = torch.from_numpy(p)[None, None], torch.from_numpy(g)[None, None]
    hd = compute_hausdorff_distance(tp, tg, percentile=95, spacing=list(spacing))
    asd = compute_average_surface_distance(tp, tg, symmetric=True, spacing=list(spacing))
    assert metrics.hausdorff95(p, g, spacing) == pytest.approx(float(hd), rel=1e-5)
    assert metrics.average_surface_distance(p, g, spacing) == pytest.approx(float(asd), rel=1e-5)


def test_surface_distance_hand_value():
    # two 1-voxel-wide squares 3 voxels apart along x with 2 mm spacing: all distances are 6 mm
    p = np.zeros((5, 10), bool)
    g = np.zeros((5, 10), bool)
    p[:, 2] = True
    g[:, 5] = True
    assert metrics.hausdorff95(p, g, (1.0, 2.0)) == pytest.approx(6.0)
    assert metrics.average_surface_distance(p, g, (1.0, 2.0)) == pytest.approx(6.0)


def test_segmentation_bad_inputs():
    g = np.ones((4, 4), bool)
    with pytest.raises(ValueError, match="ground truth mask is empty"):
        metrics.dice(g, np.zeros((4, 4), bool))
    with pytest.raises(ValueError, match="prediction mask is empty"):
        metrics.hausdorff95(np.zeros((4, 4), bool), g, (1, 1))
    with pytest.raises(ValueError, match="spacing"):
        metrics.hausdorff95(g, g, None)
    with pytest.raises(ValueError, match="shape"):
        metrics.dice(np.ones((3, 4), bool), g)
    with pytest.raises(ValueError, match="boolean"):
        metrics.dice(np.full((4, 4), 2), g)


def test_wilcoxon_vs_scipy():
    from scipy.stats import wilcoxon

    rng = np.random.default_rng(3)
    a = rng.normal(10, 2, 15)
    b = a - rng.normal(0.8, 0.5, 15)
    out = metrics.wilcoxon_summary(a, b, names=("mse", "sharp"))
    assert out["p"] == pytest.approx(wilcoxon(a, b).pvalue)
    assert out["mse_mean"] == pytest.approx(a.mean()) and out["sharp_sd"] == pytest.approx(b.std(ddof=1))
    assert out["n"] == 15
    out = metrics.wilcoxon_summary([1.0, np.nan, 3.0], [1.5, 2.0, 2.0])
    assert out["n"] == 2 and out["n_dropped"] == 1
    with pytest.raises(ValueError, match="same length"):
        metrics.wilcoxon_summary([1, 2, 3], [1, 2])
    assert metrics.wilcoxon_summary([1, 2], [1, 2])["p"] == 1.0
