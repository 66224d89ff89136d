"""Property-based tests (hypothesis) of every loss and metric.

Shapes, dtypes, scales and seeds are drawn by hypothesis; the values come from
a torch/NumPy generator seeded with the drawn seed (fast, and reproducible from
the failing example hypothesis prints). Properties:

* zero at equality (a perfect prediction costs nothing);
* non-negativity;
* invariance to the order of the voxels, where the loss or metric is a
  function of the multiset of voxel values (not for the region losses, the
  DOSELO dose term, which go through a convolution, or surface distances);
* scale laws: the sharp loss at gamma = 0 is half the (voxel-pooled) MSE, as
  Eq. (4) of Bai et al. 2021 gives with sigma(0) = 1/2; MSE scales with c^2, MAE
  and the DVH metrics (D_x, D_cc, Dmean, Dmax, OpenKBP scores) with c; relative
  quantities (RMAE, HI, CI, V_d at a scaled threshold) do not change;
* bad inputs raise our ValueError/TypeError.

The default profile ("fast", 12 derandomised examples per test) keeps the file
within a few seconds of `make test`; ``RTLEARN_HYPOTHESIS=deep`` runs 400 random
examples per test (see tests/conftest.py).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from rtlearn import dvh, pareto
from rtlearn import losses as L
from rtlearn.metrics import dose as mdose
from rtlearn.metrics import dosimetric, openkbp, segmentation

FLOATS = [torch.float32, torch.float64]
ALL_FLOATS = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
# float16/bfloat16 inputs are rounded once; losses are then exact in float32 to about this much
TOL = {torch.float16: 1e-4, torch.bfloat16: 1e-4, torch.float32: 1e-5, torch.float64: 1e-10}

seeds = st.integers(0, 2**31 - 1)


def _floats(lo, hi):
    # no subnormals: a CPU trainer in the same process may have set torch.set_flush_denormal(True), which
    # hypothesis refuses to generate subnormal floats under
    return st.floats(lo, hi, allow_subnormal=False)


spatial_shapes = st.lists(st.integers(2, 6), min_size=1, max_size=3).map(tuple)
scales = st.sampled_from([1e-3, 1.0, 70.0, 6000.0])


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _dose_pair(seed, B, spatial, dtype, scale=60.0, with_mask=True):
    g = _gen(seed)
    target = (torch.rand((B, 1) + spatial, generator=g, dtype=torch.float64) * scale)
    pred = target + torch.randn(target.shape, generator=g, dtype=torch.float64) * 0.2 * scale
    mask = torch.rand(target.shape, generator=g) > 0.3 if with_mask else None
    return pred.to(dtype), target.to(dtype), mask


def _permute_voxels(perm, *tensors):
    """Apply one permutation of the spatial voxels (same for every tensor and every batch element)."""
    out = []
    for t in tensors:
        if t is None:
            out.append(None)
            continue
        flat = t.reshape(t.shape[0], t.shape[1], -1)
        out.append(flat[..., perm].reshape(t.shape))
    return out


def _close(a, b, dtype, scale=1.0):
    a, b = float(a), float(b)
    return abs(a - b) <= TOL[dtype] * max(abs(a), abs(b), scale) + 1e-12


# =============================================================================================== dose losses
DOSE_LOSSES = {
    "masked_mse": lambda p, t, m: L.masked_mse(p, t, m),
    "masked_mse voxel": lambda p, t, m: L.masked_mse(p, t, m, batch_reduction="voxel"),
    "masked_mae": lambda p, t, m: L.masked_mae(p, t, m),
    "cascade_loss": lambda p, t, m: L.cascade_loss((p, p), t, m),
    "sharp_loss": lambda p, t, m: L.sharp_loss(p, t, 100.0, mask=m, norm=float(t.max()) + 1.0),
    "SharpLoss gamma=0": lambda p, t, m: L.SharpLoss(gamma=0.0, norm=float(t.max()) + 1.0)(p, t, m),
}


@pytest.mark.parametrize("name", sorted(DOSE_LOSSES))
@given(seed=seeds, B=st.integers(1, 2), spatial=spatial_shapes, dtype=st.sampled_from(ALL_FLOATS),
       scale=scales)
def test_dose_losses_zero_at_equality_nonnegative_and_order_invariant(name, seed, B, spatial, dtype, scale):
    fn = DOSE_LOSSES[name]
    pred, target, mask = _dose_pair(seed, B, spatial, dtype, scale)
    assert float(fn(target, target, mask)) == 0.0
    value = fn(pred, target, mask)
    assert value.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert float(value) >= 0.0
    n = int(np.prod(spatial))
    perm = torch.randperm(n, generator=_gen(seed + 1))
    assert _close(fn(*_permute_voxels(perm, pred, target, mask)), value, dtype)


@given(seed=seeds, B=st.integers(1, 2), spatial=spatial_shapes, dtype=st.sampled_from(FLOATS),
       c=_floats(0.01, 100.0), masked=st.booleans())
def test_dose_loss_scale_laws(seed, B, spatial, dtype, c, masked):
    pred, target, mask = _dose_pair(seed, B, spatial, dtype, 1.0, with_mask=masked)
    assume(mask is None or bool(mask.any()))
    mse = L.masked_mse(pred, target, mask, batch_reduction="voxel")
    # the sharp loss at gamma = 0 is half the voxel-pooled MSE (sigma(0) = 1/2 in Eq. (4) of Bai et al.)
    assert _close(L.sharp_loss(pred, target, 0.0, mask=mask), 0.5 * mse, dtype)
    assert _close(L.sharp_loss(pred * c, target * c, 0.0, mask=mask, norm=c), 0.5 * mse, dtype)
    # the sharp loss never exceeds the MSE (its weights lie in (0, 1))
    for gm in (10.0, 100.0):
        assert float(L.sharp_loss(pred, target, gm, mask=mask)) <= float(mse) * (1 + TOL[dtype])
    # MSE scales with c^2, MAE with c
    assert _close(L.masked_mse(pred * c, target * c, mask), c * c * L.masked_mse(pred, target, mask), dtype)
    assert _close(L.masked_mae(pred * c, target * c, mask), c * L.masked_mae(pred, target, mask), dtype)


BAD_DOSE_INPUTS = {
    "nan pred": (lambda p, t: (p.masked_fill(p > p.median(), float("nan")), t), ValueError),
    "inf target": (lambda p, t: (p, t.masked_fill(t > t.median(), float("inf"))), ValueError),
    "negative target": (lambda p, t: (p, t - 2 * t.max()), ValueError),
    "shape": (lambda p, t: (p, t[..., :1]), ValueError),
    "integer pred": (lambda p, t: (p.long(), t), TypeError),
    "not a tensor": (lambda p, t: (p.numpy(), t), TypeError),
}


@pytest.mark.parametrize("name", sorted(DOSE_LOSSES))
@given(seed=seeds, spatial=spatial_shapes, bad=st.sampled_from(sorted(BAD_DOSE_INPUTS)))
def test_dose_losses_bad_inputs_raise_our_errors(name, seed, spatial, bad):
    pred, target, mask = _dose_pair(seed, 1, spatial, torch.float32)
    make, err = BAD_DOSE_INPUTS[bad]
    p, t = make(pred, target)
    with pytest.raises(err):
        DOSE_LOSSES[name](p, t, None)


@given(seed=seeds, B=st.integers(1, 2), spatial=st.lists(st.integers(3, 6), min_size=1, max_size=2).map(tuple),
       S=st.integers(1, 3), dtype=st.sampled_from(FLOATS))
def test_dvh_loss_zero_at_equality_and_nonnegative(seed, B, spatial, S, dtype):
    pred, target, _ = _dose_pair(seed, B, spatial, dtype, 60.0)
    g = _gen(seed + 2)
    structures = torch.rand((B, S) + spatial, generator=g) > 0.5
    structures[..., 0] = True  # no empty structure
    assert float(L.dvh_loss(target, target, structures)) == pytest.approx(0.0, abs=1e-12)
    assert float(L.dvh_loss(pred, target, structures)) >= 0.0
    mae_dvh = L.mae_plus_dvh_loss(pred, target, None, structures)
    assert float(mae_dvh) >= 0.0
    assert float(L.mae_plus_dvh_loss(target, target, None, structures)) == pytest.approx(0.0, abs=1e-12)


# ======================================================================================= segmentation losses
SEG_GLOBAL = {
    "dice_loss": lambda p, y: L.dice_loss(p, y),
    "dice_loss skip_absent": lambda p, y: L.dice_loss(p, y, skip_absent=True),
    "cross_entropy_loss": lambda p, y: L.cross_entropy_loss(p, y),
    "dice_ce_loss": lambda p, y: L.dice_ce_loss(p, y, 0.5),
    "tversky_loss": lambda p, y: L.tversky_loss(p, y, 0.3, 0.7),
    "focal_tversky_loss": lambda p, y: L.focal_tversky_loss(p, y),
    "generalized_dice_loss": lambda p, y: L.generalized_dice_loss(p, y),
    "sensitivity_specificity_loss": lambda p, y: L.sensitivity_specificity_loss(p, y),
}
SEG_REGION = {
    "region_specific_loss": lambda p, y: L.region_specific_loss(p, y, 2),
    "adaptive_region_specific_loss": lambda p, y: L.adaptive_region_specific_loss(p, y, 2),
    "adaptive, weights with gradient": lambda p, y: L.adaptive_region_specific_loss(p, y, 2, detach_weights=False),
    "sum_of_losses": lambda p, y: L.sum_of_losses(p, y, (L.DiceCELoss(), L.RegionSpecificLoss(2))),
}
SEG_ALL = {**SEG_GLOBAL, **SEG_REGION}


def _seg_pair(seed, B, C, spatial, dtype):
    g = _gen(seed)
    logits = torch.randn((B, C) + spatial, generator=g, dtype=torch.float64) * 2
    labels = torch.randint(0, C, (B,) + spatial, generator=g)
    # probabilities on a 1/64 grid (exact in every float dtype, still summing to 1 there)
    p = torch.softmax(logits, 1)
    q = (p[:, 1:] * 64).floor() / 64
    p = torch.cat([1 - q.sum(1, keepdim=True), q], 1)
    return p.to(dtype), labels


@pytest.mark.parametrize("name", sorted(SEG_ALL))
@given(seed=seeds, B=st.integers(1, 2), C=st.integers(2, 3),
       spatial=st.lists(st.integers(2, 6), min_size=2, max_size=3).map(tuple), dtype=st.sampled_from(ALL_FLOATS))
def test_segmentation_losses_zero_at_equality_and_nonnegative(name, seed, B, C, spatial, dtype):
    fn = SEG_ALL[name]
    p, y = _seg_pair(seed, B, C, spatial, dtype)
    one_hot = torch.nn.functional.one_hot(y, C).movedim(-1, 1).to(dtype)
    assert float(fn(one_hot, y)) == pytest.approx(0.0, abs=1e-5)  # eps**0.75 ~ 6e-6 for the focal Tversky
    value = fn(p, y)
    assert value.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert float(value) >= 0.0


@pytest.mark.parametrize("name", sorted(SEG_GLOBAL))
@given(seed=seeds, B=st.integers(1, 2), C=st.integers(2, 3), spatial=st.lists(st.integers(2, 6), min_size=2,
                                                                              max_size=3).map(tuple),
       dtype=st.sampled_from(FLOATS))
def test_global_segmentation_losses_are_invariant_to_voxel_order(name, seed, B, C, spatial, dtype):
    fn = SEG_GLOBAL[name]
    p, y = _seg_pair(seed, B, C, spatial, dtype)
    perm = torch.randperm(int(np.prod(spatial)), generator=_gen(seed + 1))
    pp, = _permute_voxels(perm, p)
    yp = y.reshape(B, -1)[:, perm].reshape(y.shape)
    assert _close(fn(pp, yp), fn(p, y), dtype)


BAD_SEG_INPUTS = {
    "nan": (lambda p, y: (p.masked_fill(p > 0.5, float("nan")), y), ValueError),
    "above 1": (lambda p, y: (p * 3, y), ValueError),
    "negative": (lambda p, y: (p - 0.5, y), ValueError),
    "label out of range": (lambda p, y: (p, y + p.shape[1]), ValueError),
    "shape": (lambda p, y: (p, y[..., :1]), ValueError),
    "integer pred": (lambda p, y: (p.long(), y), TypeError),
    "target not a tensor": (lambda p, y: (p, y.numpy()), TypeError),
}


@pytest.mark.parametrize("name", sorted(SEG_ALL))
@given(seed=seeds, bad=st.sampled_from(sorted(BAD_SEG_INPUTS)))
def test_segmentation_losses_bad_inputs_raise_our_errors(name, seed, bad):
    p, y = _seg_pair(seed, 1, 2, (4, 4), torch.float32)
    make, err = BAD_SEG_INPUTS[bad]
    pb, yb = make(p, y)
    with pytest.raises(err):
        SEG_ALL[name](pb, yb)


# ============================================================================================ DOSELO losses
class _Blur(torch.nn.Module):
    """A frozen stand-in for the dose predictor: a fixed positive 3x3 convolution of [target, CT]."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 1, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.fill_(1.0)
            self.conv.bias.zero_()
        L.freeze(self)

    def forward(self, x):
        return self.conv(x) * 10


_BLUR = _Blur()


@given(seed=seeds, B=st.integers(1, 2), H=st.integers(3, 8), W=st.integers(3, 8), dtype=st.sampled_from(ALL_FLOATS))
def test_doselo_losses_zero_at_equality_nonnegative_and_order_invariant(seed, B, H, W, dtype):
    g = _gen(seed)
    target = torch.rand(B, 1, H, W, generator=g) > 0.6
    target[:, :, 0, 0] = True
    ct = torch.rand(B, 1, H, W, generator=g)
    prob = torch.rand(B, 1, H, W, generator=g, dtype=torch.float64).to(dtype)
    hard = target.to(dtype)
    assert float(L.dose_segmentation_loss(hard, target, _BLUR, ct=ct)) == 0.0
    assert float(L.dose_segmentation_loss(prob, target, _BLUR, ct=ct)) >= 0.0
    assert float(L.soft_dice_loss(hard, target)) == pytest.approx(0.0, abs=1e-7)
    for fn in (lambda p, t: L.binary_cross_entropy(p, t, logits=False), L.soft_dice_loss,
               lambda p, t: L.bce_soft_dice_loss(p, t, logits=False, batch_dice=False)):
        v = fn(prob, target)
        assert float(v) >= 0.0
        perm = torch.randperm(H * W, generator=_gen(seed + 1))
        pp, tp = _permute_voxels(perm, prob, target)
        assert _close(fn(pp, tp), v, dtype)
    # the BCE of a probability map is smallest at the target itself
    assert float(L.binary_cross_entropy(hard, target, logits=False)) <= float(
        L.binary_cross_entropy(prob, target, logits=False))
    total, terms = L.dose_guided_loss(torch.logit(prob.double().clamp(0.01, 0.99)), target, _BLUR, ct=ct,
                                      return_terms=True)
    assert float(terms["dsl"]) >= 0 and float(terms["bce"]) >= 0
    assert float(total) == pytest.approx(float(terms["bce"] + terms["dsl"]), rel=1e-6)


@given(seed=seeds, bad=st.sampled_from(["nan prob", "prob above 1", "nan true_dose", "shape", "lam", "threshold"]))
def test_doselo_bad_inputs_raise_our_errors(seed, bad):
    g = _gen(seed)
    target = torch.rand(1, 1, 5, 5, generator=g) > 0.5
    ct = torch.rand(1, 1, 5, 5, generator=g)
    prob = torch.rand(1, 1, 5, 5, generator=g)
    kw = {}
    if bad == "nan prob":
        prob[0, 0, 0, 0] = float("nan")
    elif bad == "prob above 1":
        prob = prob + 1.5
    elif bad == "nan true_dose":
        kw["true_dose"] = torch.full((1, 1, 5, 5), float("nan"))
    elif bad == "shape":
        target = target[..., :4]
    elif bad == "threshold":
        kw["threshold"] = 1.5
    with pytest.raises(ValueError):
        if bad == "lam":
            L.dose_guided_loss(prob, target, _BLUR, ct=ct, lam=-1.0)
        else:
            L.dose_segmentation_loss(prob, target, _BLUR, ct=ct, **kw)


# ================================================================================================= metrics
def _np_dose_pair(seed, shape, scale):
    rng = np.random.default_rng(seed)
    ref = rng.uniform(0, scale, shape)
    pred = np.abs(ref + rng.normal(0, 0.1 * scale, shape))
    mask = rng.random(shape) > 0.3
    mask.flat[0] = True
    return pred, ref, mask


np_shapes = st.lists(st.integers(2, 7), min_size=1, max_size=3).map(tuple)


@given(seed=seeds, shape=np_shapes, c=_floats(0.01, 100.0))
def test_dose_metrics_zero_at_equality_nonnegative_order_invariant_and_scaled(seed, shape, c):
    pred, ref, mask = _np_dose_pair(seed, shape, 60.0)
    perm = np.random.default_rng(seed + 1).permutation(ref.size)
    pp, rp, mp = (a.ravel()[perm].reshape(a.shape) for a in (pred, ref, mask))
    for fn, law in ((lambda p, r, m: mdose.mad(p, r, m), c),
                    (lambda p, r, m: dosimetric.rmae(p, r, m), 1.0),
                    (lambda p, r, m: dosimetric.rmae(p, r, m, rx=60.0 * (float(r.max()) / 60.0)), 1.0),
                    (lambda p, r, m: openkbp.dose_error(p, r, m), c)):
        assert fn(ref, ref, mask) == 0.0
        v = fn(pred, ref, mask)
        assert v >= 0.0
        assert fn(pp, rp, mp) == pytest.approx(v, rel=1e-12)
        assert fn(c * pred, c * ref, mask) == pytest.approx(law * v, rel=1e-9)
    bands = mdose.mad_by_dose_band(pred, ref, edges=(0, 20, 40, np.inf), mask=mask)
    scaled = mdose.mad_by_dose_band(c * pred, c * ref, edges=(0, 20 * c, 40 * c, np.inf), mask=mask)
    for (k, v), (_, w) in zip(bands.items(), scaled.items()):
        assert v["n"] == w["n"]
        assert (np.isnan(v["mad"]) and np.isnan(w["mad"])) or w["mad"] == pytest.approx(c * v["mad"], rel=1e-9)
        assert np.isnan(v["mad"]) or v["mad"] >= 0


@given(seed=seeds, shape=st.lists(st.integers(2, 7), min_size=1, max_size=3).map(tuple),
       c=_floats(0.1, 10.0))
def test_mean_gradient_by_band_scale_laws(seed, shape, c):
    _, ref, mask = _np_dose_pair(seed, shape, 60.0)
    sp = [1.0 + 0.5 * i for i in range(len(shape))]
    g1 = mdose.mean_gradient_by_band(ref, sp, edges=(0, 30, np.inf), mask=mask)
    gc = mdose.mean_gradient_by_band(c * ref, sp, edges=(0, 30 * c, np.inf), mask=mask)
    gs = mdose.mean_gradient_by_band(ref, [c * s for s in sp], edges=(0, 30, np.inf), mask=mask)
    for a, b, s in zip(g1.values(), gc.values(), gs.values()):
        assert np.isnan(a) or (a >= 0 and b == pytest.approx(c * a, rel=1e-9) and s == pytest.approx(a / c, rel=1e-9))


@given(seed=seeds, shape=np_shapes, c=_floats(0.01, 100.0), pct=_floats(0.0, 100.0))
def test_dvh_metrics_scale_with_dose_and_ignore_voxel_order(seed, shape, c, pct):
    _, d, m = _np_dose_pair(seed, shape, 60.0)
    perm = np.random.default_rng(seed + 1).permutation(d.size)
    dp, mp = d.ravel()[perm].reshape(shape), m.ravel()[perm].reshape(shape)
    linear = [lambda d, m: dvh.mean_dose(d, m), lambda d, m: dvh.max_dose(d, m),
              lambda d, m: dvh.dose_at_volume(d, m, pct), lambda d, m: dvh.d_cc(d, m, 0.1, voxel_volume=20.0)]
    for fn in linear:
        v = fn(d, m)
        assert v >= 0
        assert fn(c * d, m) == pytest.approx(c * v, rel=1e-9, abs=1e-12)
        assert fn(dp, mp) == pytest.approx(v, rel=1e-12)
    rx = float(d.max()) / 2
    assert dvh.volume_at_dose(c * d, m, c * rx) == dvh.volume_at_dose(d, m, rx)
    assert dvh.homogeneity_index(c * d, m, c * rx) == pytest.approx(dvh.homogeneity_index(d, m, rx), rel=1e-9)
    ci = dvh.conformation_index(d, m, rx)
    assert 0 <= ci <= 1 and dvh.conformation_index(c * d, m, c * rx) == pytest.approx(ci, rel=1e-12)
    assert dvh.conformation_index(dp, mp, rx) == pytest.approx(ci, rel=1e-12)
    axis, frac = dvh.cumulative_dvh(d, m, bins=16)
    axis_c, frac_c = dvh.cumulative_dvh(c * d, m, bins=c * axis)
    assert np.all(np.diff(frac) <= 0) and frac[0] == 1.0
    # a scaled dose on the scaled axis is the same curve (up to the rounding of c * d vs c * axis)
    assert np.mean(frac_c != frac) <= 2.0 / m.sum() + 1e-12


@given(seed=seeds, c=_floats(0.1, 10.0))
def test_openkbp_scores_zero_at_equality_and_scale_with_dose(seed, c):
    rng = np.random.default_rng(seed)
    shape = (6, 5, 4)
    ref = rng.uniform(0, 70, shape)
    pred = np.abs(ref + rng.normal(0, 3, shape))
    rois = {"PTV70": ref > 40, "Brainstem": ref < 30, "Mandible": rng.random(shape) > 0.9}
    vd = (3.0, 2.0, 2.5)
    assert openkbp.dvh_score(ref, ref, rois, vd) == 0.0
    assert openkbp.dose_score(ref, ref, ref >= 0) == 0.0
    s = openkbp.dvh_score(pred, ref, rois, vd)
    assert s >= 0
    assert openkbp.dvh_score(c * pred, c * ref, rois, vd) == pytest.approx(c * s, rel=1e-9)
    perm = rng.permutation(ref.size)
    sh = lambda a: a.ravel()[perm].reshape(shape)  # noqa: E731
    assert openkbp.dvh_score(sh(pred), sh(ref), {k: sh(v) for k, v in rois.items()}, vd) == pytest.approx(s, rel=1e-12)


@given(seed=seeds, shape=st.lists(st.integers(3, 8), min_size=2, max_size=3).map(tuple), c=_floats(0.1, 10.0))
def test_segmentation_metrics(seed, shape, c):
    rng = np.random.default_rng(seed)
    gt = rng.random(shape) > 0.5
    gt.flat[0] = True
    pred = rng.random(shape) > 0.5
    pred.flat[-1] = True
    sp = tuple(1.0 + 0.25 * i for i in range(len(shape)))
    for fn in (segmentation.dice, segmentation.recall, segmentation.precision):
        assert fn(gt, gt) == 1.0
        assert 0.0 <= fn(pred, gt) <= 1.0
    assert segmentation.dice(pred, gt) == pytest.approx(segmentation.dice(gt, pred))
    perm = rng.permutation(gt.size)
    assert segmentation.dice(pred.ravel()[perm], gt.ravel()[perm]) == pytest.approx(segmentation.dice(pred, gt))
    for fn in (segmentation.hausdorff, segmentation.hausdorff95, segmentation.average_surface_distance):
        assert fn(gt, gt, sp) == 0.0
        v = fn(pred, gt, sp)
        assert v >= 0
        # distances scale with the voxel spacing
        assert fn(pred, gt, tuple(c * s for s in sp)) == pytest.approx(c * v, rel=1e-9)
    assert segmentation.hausdorff(pred, gt, sp) == pytest.approx(segmentation.hausdorff(gt, pred, sp))


@given(seed=seeds, B=st.integers(1, 3), shape=st.lists(st.integers(2, 6), min_size=1, max_size=3).map(tuple),
       c=_floats(0.01, 100.0))
def test_pareto_dvh_vector_and_normalisation(seed, B, shape, c):
    rng = np.random.default_rng(seed)
    dose = rng.uniform(0.1, 2.0, (B,) + shape)
    masks = {"PTV": rng.random(shape) > 0.5, "OAR": rng.random(shape) > 0.5}
    for m in masks.values():
        m.flat[0] = True
    v = pareto.dvh_vector(dose, masks, n_bins=8, normalise_to="PTV")
    assert np.all((v >= 0) & (v <= 1))
    # normalised to the PTV mean dose: invariant to the dose's scale and to the voxel order
    # (a voxel exactly on a dose point may move across it when c * D / mean(c * D) rounds differently)
    assert np.allclose(pareto.dvh_vector(c * dose, masks, n_bins=8, normalise_to="PTV"), v,
                       atol=1.0 / min(int(m.sum()) for m in masks.values()) + 1e-12)
    perm = rng.permutation(int(np.prod(shape)))
    dp = dose.reshape(B, -1)[:, perm].reshape(dose.shape)
    mp = {k: m.ravel()[perm].reshape(shape) for k, m in masks.items()}
    assert np.array_equal(pareto.dvh_vector(dp, mp, n_bins=8, normalise_to="PTV"), v)
    n = pareto.normalise_to_mean(dose, masks["PTV"])
    assert np.allclose(pareto.normalise_to_mean(c * dose, masks["PTV"]), n, rtol=1e-12)
    assert np.allclose(n[:, masks["PTV"]].mean(-1), 1.0)


BAD_METRIC_INPUTS = {
    "nan": (lambda d: np.where(d > d.mean(), np.nan, d), ValueError),
    "negative": (lambda d: d - 2 * d.max(), ValueError),
    "shape": (lambda d: d[..., :1], ValueError),
    "bool": (lambda d: d > 1, TypeError),
    "strings": (lambda d: d.astype(str), TypeError),
}


@given(seed=seeds, bad=st.sampled_from(sorted(BAD_METRIC_INPUTS)),
       metric=st.sampled_from(["mad", "rmae", "dose_error", "mean_dose", "dose_at_volume", "mean_gradient"]))
def test_metrics_bad_reference_raises_our_errors(seed, bad, metric):
    pred, ref, mask = _np_dose_pair(seed, (4, 5), 60.0)
    make, err = BAD_METRIC_INPUTS[bad]
    r = make(ref)
    calls = {"mad": lambda: mdose.mad(pred, r), "rmae": lambda: dosimetric.rmae(pred, r),
             "dose_error": lambda: openkbp.dose_error(pred, r, mask),
             "mean_dose": lambda: dvh.mean_dose(r, mask), "dose_at_volume": lambda: dvh.dose_at_volume(r, mask, 95),
             "mean_gradient": lambda: mdose.mean_gradient_by_band(r, (1.0, 1.0), mask=mask)}
    if bad == "shape" and metric in ("mean_gradient",):
        err = ValueError  # an axis of length 1 has no gradient
    with pytest.raises(err):
        calls[metric]()
