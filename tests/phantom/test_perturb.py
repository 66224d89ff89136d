"""Segmentation-perturbation augmentation (rtlearn.phantom.perturb) for DOSELO's dose predictor."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from rtlearn.phantom.perturb import (
    KINDS,
    add_blobs,
    dilate_target,
    erode_target,
    perturb_target,
    perturbed_targets,
    shift_target,
)


def _square(shape=(48, 48), lo=18, hi=30):
    t = np.zeros(shape, bool)
    t[(slice(lo, hi),) * len(shape)] = True
    return t


def _disc(shape=(48, 48), centre=(24, 24), r=6.0):
    yy, xx = np.indices(shape)
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= r**2


def _body(shape):
    b = np.zeros(shape, bool)
    b[(slice(2, -2),) * len(shape)] = True
    return b


def _centroid_mm(mask, spacing):
    return np.array(ndimage.center_of_mass(mask)) * np.asarray(spacing)


# ---------------------------------------------------------------------------------------------------------------
# each kind does what it says
# ---------------------------------------------------------------------------------------------------------------
def test_dilate_matches_brute_force_distance():
    t = _disc()
    sp = (2.0, 1.0)
    out = dilate_target(t, 3.0, sp)
    # brute force: a voxel is in the dilation iff some target voxel lies within 3 mm
    pts = np.argwhere(t) * sp
    grid = np.indices(t.shape).reshape(2, -1).T * sp
    d = np.sqrt(((grid[:, None, :] - pts[None, :, :]) ** 2).sum(-1)).min(1).reshape(t.shape)
    assert np.array_equal(out, d <= 3.0)
    assert out.sum() > t.sum() and np.all(out[t])
    assert np.array_equal(dilate_target(t, 0.0, sp), t)


def test_erode_shrinks_and_never_empties():
    t = _disc(r=8)
    out = erode_target(t, 2.0, 1.0)
    assert 0 < out.sum() < t.sum() and not np.any(out & ~t)
    # the disc of radius 8 eroded by 2 mm is (close to) the disc of radius 6
    assert abs(int(out.sum()) - int(_disc(r=6).sum())) <= 0.1 * _disc(r=6).sum()
    deep = erode_target(t, 100.0, 1.0)  # more than the target's depth: the deepest voxel(s) remain
    assert 0 < deep.sum() <= 5 and deep[24, 24]
    # dilation then erosion by the same margin contains the (convex) target again
    assert np.all(erode_target(dilate_target(t, 3.0, 1.0), 3.0, 1.0)[t])


@pytest.mark.parametrize("shape,sp,shift", [((48, 48), (2.0, 1.0), (4.0, -3.0)),
                                            ((24, 32, 32), (3.0, 1.5, 1.5), (-3.0, 4.5, 6.0))])
def test_shift_moves_centroid_by_requested_mm(shape, sp, shift):
    t = _square(shape, 8, 16)
    out = shift_target(t, shift, sp)
    assert out.sum() == t.sum()
    assert np.allclose(_centroid_mm(out, sp) - _centroid_mm(t, sp), shift)


def test_shift_rounds_to_voxels_and_clips_to_body():
    t = _square()
    out = shift_target(t, (0.0, 1.4), (1.0, 1.0))  # rounds to 1 voxel
    assert np.allclose(_centroid_mm(out, 1) - _centroid_mm(t, 1), (0, 1))
    body = _body(t.shape)
    near_edge = shift_target(t, (0.0, 20.0), 1.0, body)  # partly pushed out of the body: clipped
    assert 0 < near_edge.sum() < t.sum() and not np.any(near_edge & ~body)
    with pytest.raises(ValueError, match="outside"):
        shift_target(t, (0.0, 30.0), 1.0, body)


def test_blobs_inside_body_and_away_from_target():
    t = _disc(shape=(64, 64), centre=(32, 32), r=5)
    body = _disc(shape=(64, 64), centre=(32, 32), r=30)
    out, params = add_blobs(t, 1.0, body, n_blobs=3, radius_mm=(2.0, 3.0), distance_mm=8.0, seed=0,
                            return_params=True)
    blobs = out & ~t
    assert np.all(out[t]) and blobs.any() and not np.any(out & ~body)
    # every blob voxel is more than 8 mm from the target (so blobs and target are disjoint)
    gap = ndimage.distance_transform_edt(~t)
    assert gap[blobs].min() > 8.0
    labels, n = ndimage.label(blobs)
    assert 1 <= n <= 3 and params["n_blobs"] == 3 and len(params["centres"]) == 3
    for c, r in zip(params["centres"], params["radius_mm"]):
        assert blobs[c] and 2.0 <= r <= 3.0
    # target unchanged by the blobs
    assert np.array_equal(out & ~blobs, t)


def test_blobs_no_room():
    t = _disc(r=20)
    with pytest.raises(ValueError, match="no room"):
        add_blobs(t, 1.0, None, distance_mm=30.0, seed=0)


# ---------------------------------------------------------------------------------------------------------------
# random perturbations: never empty, inside the body, deterministic
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dims", [2, 3])
def test_random_perturbations_valid(dims):
    shape = (64, 64) if dims == 2 else (24, 40, 40)
    sp = (1.5, 1.5) if dims == 2 else (3.0, 2.0, 2.0)
    t = _square(shape, 10, 18) if dims == 3 else _square(shape, 26, 38)
    body = _body(shape)
    out = perturbed_targets(t, sp, 12, seed=3, body=body, blob_distance_mm=5.0)
    assert [p.kind for p in out] == list(KINDS) * 3
    for p in out:
        assert p.mask.shape == t.shape and p.mask.dtype == bool
        assert p.mask.any() and not np.any(p.mask & ~body)
        if p.kind == "dilate":
            assert p.mask.sum() >= t.sum()
        elif p.kind == "erode":
            assert p.mask.sum() <= t.sum() and not np.any(p.mask & ~t)
        elif p.kind == "shift":
            assert not np.array_equal(p.mask, t)
            if p.mask.sum() == t.sum():
                assert np.allclose(_centroid_mm(p.mask, sp) - _centroid_mm(t, sp), p.params["shift_mm"])
        else:
            assert p.mask.sum() > t.sum() and np.all(p.mask[t])


def test_determinism():
    t, body = _square(), _body((48, 48))
    a = perturbed_targets(t, (1.0, 1.2), 8, seed=7, body=body, blob_distance_mm=4.0)
    b = perturbed_targets(t, (1.0, 1.2), 8, seed=7, body=body, blob_distance_mm=4.0)
    c = perturbed_targets(t, (1.0, 1.2), 8, seed=8, body=body, blob_distance_mm=4.0)
    assert all(np.array_equal(x.mask, y.mask) and x.params == y.params for x, y in zip(a, b))
    assert any(not np.array_equal(x.mask, y.mask) for x, y in zip(a, c))
    rng1, rng2 = np.random.default_rng(1), np.random.default_rng(1)
    k1 = [perturb_target(t, 1.0, "random", rng1, body, blob_distance_mm=4.0) for _ in range(6)]
    k2 = [perturb_target(t, 1.0, "random", rng2, body, blob_distance_mm=4.0) for _ in range(6)]
    assert [p.kind for p in k1] == [p.kind for p in k2]
    assert all(np.array_equal(x.mask, y.mask) for x, y in zip(k1, k2))


def test_bad_inputs():
    t = _square()
    with pytest.raises(ValueError, match="empty"):
        dilate_target(np.zeros((8, 8), bool), 1.0, 1.0)
    with pytest.raises(ValueError, match="outside the body"):
        dilate_target(t, 1.0, 1.0, body=np.zeros_like(t) | _disc(r=3))
    with pytest.raises(ValueError, match="spacing"):
        dilate_target(t, 1.0, (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="margin_mm"):
        erode_target(t, -1.0, 1.0)
    with pytest.raises(ValueError, match="2D"):
        dilate_target(np.ones(5, bool), 1.0, 1.0)
    with pytest.raises(ValueError, match="shape"):
        dilate_target(t, 1.0, 1.0, body=np.ones((8, 8), bool))
    with pytest.raises(ValueError, match="shift_mm"):
        shift_target(t, (1.0,), 1.0)
    with pytest.raises(ValueError, match="kind"):
        perturb_target(t, 1.0, "rotate", seed=0)
    with pytest.raises(ValueError, match="low <= high"):
        perturb_target(t, 1.0, "dilate", seed=0, margin_mm=(5.0, 1.0))
    with pytest.raises(ValueError, match="n_blobs"):
        add_blobs(t, 1.0, n_blobs=0, seed=0)
    with pytest.raises(TypeError, match="seed"):
        perturb_target(t, 1.0, "dilate", seed="a")
    with pytest.raises(ValueError, match="n must be"):
        perturbed_targets(t, 1.0, 0)
    with pytest.raises(ValueError, match="kinds"):
        perturbed_targets(t, 1.0, 2, kinds=("warp",))
    with pytest.raises(ValueError, match="boolean"):
        dilate_target(t * 2, 1.0, 1.0)
