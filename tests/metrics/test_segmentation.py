"""rtlearn.metrics.segmentation against brute force and MONAI's surface metrics; the empty-mask convention."""
import numpy as np
import pytest
import torch

from rtlearn import metrics


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


def test_hausdorff_matches_brute_force():
    a = np.zeros((20, 20), bool)
    a[5:10, 5:10] = True
    b = a.copy()
    b[16, 17] = True                                   # one outlier voxel
    pa, pb = np.argwhere(a), np.argwhere(b)
    sp = np.array([2.0, 3.0])
    dist = np.sqrt((((pa[:, None] - pb[None]) * sp) ** 2).sum(-1))
    brute = max(dist.min(0).max(), dist.min(1).max())  # on all voxels; equal on surfaces for this geometry
    assert metrics.hausdorff(b, a, sp) == pytest.approx(brute)
    assert np.isnan(metrics.hausdorff(np.zeros_like(a), a, sp))


def test_empty_mask_convention_shared_by_the_chapters():
    """Empty prediction: HD (any percentile) is NaN; empty ground truth raises; the strict metrics raise."""
    g = _blob((24, 24), (12, 12), 5)
    empty = np.zeros_like(g)
    for q in (100, 95, 50):
        assert np.isnan(metrics.hausdorff(empty, g, (1.0, 1.0), percentile=q))
    assert metrics.dice(empty, g) == metrics.recall(empty, g) == metrics.precision(empty, g) == 0.0
    with pytest.raises(ValueError, match="ground truth mask is empty"):
        metrics.hausdorff(g, empty, (1.0, 1.0))
    with pytest.raises(ValueError, match="ground truth mask is empty"):
        metrics.hausdorff(empty, empty, (1.0, 1.0))
    with pytest.raises(ValueError, match="prediction mask is empty"):
        metrics.average_surface_distance(empty, g, (1.0, 1.0))
    with pytest.raises(ValueError, match="percentile"):
        metrics.hausdorff(g, g, (1.0, 1.0), percentile=101)


def test_hausdorff_percentile_95_is_hd95_and_100_is_the_largest_distance():
    rng = np.random.default_rng(4)
    for _ in range(5):
        g = _blob((30, 32), rng.uniform(10, 20, 2), rng.uniform(3, 8))
        p = _blob((30, 32), rng.uniform(10, 20, 2), rng.uniform(3, 8))
        sp = tuple(rng.uniform(0.5, 3.0, 2))
        a, b = metrics.surface_distances(p, g, sp)
        assert metrics.hausdorff(p, g, sp, percentile=95) == metrics.hausdorff95(p, g, sp)
        assert metrics.hausdorff(p, g, sp) == max(a.max(), b.max()) == metrics.hausdorff(p, g, sp, percentile=100.0)
        assert metrics.hausdorff(p, g, sp) >= metrics.hausdorff95(p, g, sp)
