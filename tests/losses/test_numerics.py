"""Mixed precision: every loss (the DVH loss has its own tests) reduces in float32 or float64.

Each loss is evaluated

* on float16 and bfloat16 inputs with more than 70,000 voxels per sample, class
  and structure (beyond float16's largest finite number 65,504, and far beyond
  the 256 integers that bfloat16 counts exactly), and
* under ``torch.autocast("cpu", dtype=torch.bfloat16)`` with a bfloat16 network
  output and float32 batch tensors (as the trainer feeds them),

and compared with the same loss computed in float64 on the *same* input values
(the low-precision values widened exactly). Tolerance: relative ``RTOL = 1e-4``.
A float32 accumulation over 10^5 voxels errs by about 1e-6; a sum or a voxel
count kept in float16/bfloat16 errs by more than 1e-3 (or overflows), so the
tests fail if any reduction stays in half precision. Losses whose frozen dose
predictor is a convolution run that convolution in bfloat16 under autocast (by
design of autocast), so they are held to ``RTOL_CONV = 3e-2`` there.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rtlearn import losses as L
from rtlearn.losses import dose_guided as dg

RTOL = 1e-4
RTOL_CONV = 3e-2
SPATIAL = (48, 48, 32)  # 73,728 voxels > 65,504
N = SPATIAL[0] * SPATIAL[1] * SPATIAL[2]
HALF = (torch.float16, torch.bfloat16)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _dose_inputs(seed=0, scale=60.0):
    g = _gen(seed)
    target = torch.rand((2, 1) + SPATIAL, generator=g, dtype=torch.float64) * scale
    pred = target + torch.randn(target.shape, generator=g, dtype=torch.float64) * 0.1 * scale
    mask = torch.ones(target.shape, dtype=torch.bool)
    mask[1, :, :4] = False  # one sample with 67,584 voxels, one with all 73,728
    return pred, target, mask


def _cascade_inputs():
    pred, target, mask = _dose_inputs()
    return pred, target, mask, 0.5 * (pred + target)


def _seg_inputs(seed=0, C=2, probs=True):
    g = _gen(seed)
    logits = torch.randn((1, C) + SPATIAL, generator=g, dtype=torch.float64) * 2
    labels = torch.randint(0, C, (1,) + SPATIAL, generator=g)
    labels[:, :2] = 0
    labels[:, 2:4] = 1  # both classes hold > 256 voxels; class 0 can exceed 65,504 only in sum
    if not probs:
        return logits, labels
    # probabilities on a 1/256 grid: exact in float16 and bfloat16, so they still sum to 1 there
    p0 = (torch.softmax(logits, 1)[:, :1] * 256).round().clamp(1, 255) / 256
    return torch.cat([p0, 1 - p0], 1), labels


class _Predictor(nn.Module):
    """A tiny frozen dose predictor: a 3x3x3 convolution of [target, CT] and a softplus."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(2, 1, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.rand(self.conv.weight.shape, generator=_gen(7)) * 2)
            self.conv.bias.fill_(0.5)
        L.freeze(self)

    def forward(self, x):
        return F.softplus(self.conv(x)) * 10


class _Surrogate(nn.Module):
    """Stand-in for :class:`rtlearn.phantom.surrogate.BeamSurrogate`: a box blur scaled by a per-case factor."""

    def scale_for(self, target, case):
        return torch.ones(target.shape[0], 1, 1, 1, 1, dtype=torch.float32)

    def forward(self, target, case, scale=None):
        d = F.avg_pool3d(target.float(), 3, stride=1, padding=1) * 60
        return d * (1 if scale is None else scale)


_PRED32 = _Predictor()
_PRED64 = copy.deepcopy(_PRED32).double()


def _doselo_probs(seed=3):
    """As :func:`_doselo_inputs` with probabilities (the sigmoid in float64) instead of logits."""
    z, t, ct = _doselo_inputs(seed)
    return torch.sigmoid(z), t, ct


def _doselo_inputs(seed=3):
    g = _gen(seed)
    target = torch.zeros((1, 1) + SPATIAL, dtype=torch.bool)
    target[..., 10:30, 10:30, 8:24] = True
    logits = torch.randn(target.shape, generator=g, dtype=torch.float64) * 3
    ct = torch.rand(target.shape, generator=g)  # float32: a batch tensor
    return logits, target, ct


def _cases():
    """name -> (builder returning the float64 inputs, loss(inputs, ref) ; ref=True uses a float64 predictor)."""
    c = {}
    c["masked_mse sample"] = (_dose_inputs, lambda p, t, m, ref: L.masked_mse(p, t, m))
    c["masked_mse voxel"] = (_dose_inputs, lambda p, t, m, ref: L.masked_mse(p, t, m, batch_reduction="voxel"))
    c["masked_mae sample"] = (_dose_inputs, lambda p, t, m, ref: L.masked_mae(p, t, m))
    c["masked_mae no mask"] = (_dose_inputs, lambda p, t, m, ref: L.MaskedMAELoss()(p, t))
    c["cascade_loss"] = (_cascade_inputs, lambda p, t, m, p1, ref: L.cascade_loss((p1, p), t, m))
    c["sharp_loss"] = (lambda: _dose_inputs(scale=1.0), lambda p, t, m, ref: L.sharp_loss(p, t, 100.0, mask=m))
    c["SharpLoss norm"] = (_dose_inputs, lambda p, t, m, ref: L.SharpLoss(gamma=10.0, norm=60.0)(p, t))
    seg = lambda fn: (_seg_inputs, lambda p, y, ref: fn(p, y))  # noqa: E731
    c["dice_loss"] = seg(lambda p, y: L.dice_loss(p, y))
    c["dice_loss softmax"] = ((lambda: _seg_inputs(probs=False)), lambda p, y, ref: L.dice_loss(p, y, softmax=True))
    c["cross_entropy_loss"] = seg(lambda p, y: L.cross_entropy_loss(p, y))
    c["dice_ce_loss"] = seg(lambda p, y: L.DiceCELoss(1.0)(p, y))
    c["tversky_loss"] = seg(lambda p, y: L.tversky_loss(p, y, 0.3, 0.7))
    c["focal_tversky_loss"] = seg(lambda p, y: L.focal_tversky_loss(p, y))
    c["generalized_dice_loss"] = seg(lambda p, y: L.generalized_dice_loss(p, y))
    c["sensitivity_specificity_loss"] = seg(lambda p, y: L.sensitivity_specificity_loss(p, y))
    c["region_specific_loss"] = seg(lambda p, y: L.region_specific_loss(p, y, 4))
    c["region_specific_loss uneven"] = seg(lambda p, y: L.region_specific_loss(p, y, (5, 3, 3)))
    c["adaptive_region_specific_loss"] = seg(lambda p, y: L.adaptive_region_specific_loss(p, y, 4))
    c["adaptive uneven"] = seg(lambda p, y: L.AdaptiveRegionSpecificLoss((5, 3, 3))(p, y))
    c["sum_of_losses"] = seg(lambda p, y: L.sum_of_losses(p, y, (L.DiceCELoss(), L.RegionSpecificLoss(4))))
    pred = lambda ref: _PRED64 if ref else _PRED32  # noqa: E731
    c["binary_cross_entropy"] = (_doselo_inputs, lambda z, t, ct, ref: L.binary_cross_entropy(z, t, pos_weight=2.0))
    c["binary_cross_entropy probs"] = (_doselo_probs, lambda p, t, ct, ref: L.BCELoss(logits=False)(p, t))
    c["soft_dice_loss"] = (_doselo_probs, lambda p, t, ct, ref: L.soft_dice_loss(p, t))
    c["bce_soft_dice_loss"] = (_doselo_inputs, lambda z, t, ct, ref: L.BCESoftDiceLoss(batch_dice=False)(z, t))
    c["dose_segmentation_loss"] = (_doselo_probs, lambda p, t, ct, ref: L.dose_segmentation_loss(
        p, t, pred(ref), ct=ct))
    c["dose_segmentation_loss mask"] = (_doselo_probs, lambda p, t, ct, ref: L.dose_segmentation_loss(
        p, t, pred(ref), ct=ct, dose_mask=ct > 0.2, average="mask"))
    c["dose_guided_loss"] = (_doselo_inputs, lambda z, t, ct, ref: L.dose_guided_loss(z, t, pred(ref), ct=ct))
    c["straight_through"] = (_doselo_inputs, lambda z, t, ct, ref: L.StraightThroughDoseGuidedLoss(
        pred(ref))(z, {"target": t, "oars": None, "ct": ct, "dose_mask": None}))
    c["surrogate_guided_loss"] = (_doselo_inputs, lambda z, t, ct, ref: L.surrogate_guided_loss(
        z, {"target": t, "case": torch.zeros(1, dtype=torch.long)}, _Surrogate()))
    return c


CASES = _cases()
CONV = {"dose_segmentation_loss", "dose_segmentation_loss mask", "dose_guided_loss", "straight_through"}


def _run(name, cast_first, cast_rest, autocast=False):
    """Loss on inputs cast with ``cast_first`` (the network output) / ``cast_rest``, and its float64 reference."""
    build, fn = CASES[name]
    args = build()
    low = [cast_first(a) if i == 0 else cast_rest(a) for i, a in enumerate(args)]
    low = [a.requires_grad_() if i == 0 else a for i, a in enumerate(low)]
    ref_args = [a.double() if torch.is_floating_point(a) else a for a in low]
    ref_args = [a.detach() for a in ref_args]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = fn(*low, ref=False)
    ref = fn(*ref_args, ref=True)
    return out, ref, low[0]


def _keep(a):
    return a


@pytest.mark.parametrize("dtype", HALF, ids=["float16", "bfloat16"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_half_precision_inputs_above_65504_voxels_match_float64(name, dtype):
    cast = lambda a: a.to(dtype) if torch.is_floating_point(a) else a  # noqa: E731
    out, ref, x = _run(name, cast, cast)
    assert out.dtype == torch.float32, f"{name}: reduced in {out.dtype}"
    assert torch.isfinite(out)
    assert float(out.detach()) == pytest.approx(float(ref), rel=RTOL), name
    if out.requires_grad:
        out.backward()
        assert x.grad is not None and x.grad.dtype == dtype and bool(torch.isfinite(x.grad).all())


@pytest.mark.parametrize("name", sorted(CASES))
def test_autocast_bfloat16_matches_float64(name):
    # the network output is bfloat16 (as autocast makes it); batch tensors stay float32
    first = lambda a: a.to(torch.bfloat16)  # noqa: E731
    rest = lambda a: a.float() if torch.is_floating_point(a) else a  # noqa: E731
    out, ref, _ = _run(name, first, rest, autocast=True)
    assert out.dtype == torch.float32, f"{name}: reduced in {out.dtype}"
    rtol = RTOL_CONV if name in CONV else RTOL
    assert float(out.detach()) == pytest.approx(float(ref), rel=rtol), name


def test_float16_voxel_count_regression():
    # the historical failure: a float16 count of 73,728 voxels is inf, so the loss was 0
    pred, target, mask = _dose_inputs()
    out = L.masked_mse(pred.half(), target.half(), mask)
    assert float(out) > 1.0


def test_generalized_dice_float16_above_256_voxels():
    p, y = _seg_inputs()
    p = p[..., :8, :8, :8]
    y = y[..., :8, :8, :8]  # 512 voxels: 1/(sum g)^2 underflowed in float16
    assert float(L.generalized_dice_loss(p.half(), y)) == pytest.approx(
        float(L.generalized_dice_loss(p.half().double(), y)), rel=RTOL)


@pytest.mark.parametrize("pdtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("xdtype", [torch.float16, torch.float32, torch.float64])
def test_doselo_probabilities_and_predictor_of_different_dtypes(pdtype, xdtype):
    z, t, ct = _doselo_inputs()
    z, t, ct = z[..., :12, :12, :8], t[..., :12, :12, :8], ct[..., :12, :12, :8]
    predictor = copy.deepcopy(_PRED32).to(pdtype)
    prob = torch.sigmoid(z).to(xdtype).requires_grad_()
    out = L.dose_segmentation_loss(prob, t, predictor, ct=ct)
    out.backward()
    assert prob.grad.dtype == xdtype
    ref = L.dose_segmentation_loss(prob.detach().to(pdtype).double(), t, copy.deepcopy(predictor).double(), ct=ct)
    rtol = 3e-2 if torch.bfloat16 in (pdtype,) else 1e-4
    assert float(out.detach()) == pytest.approx(float(ref), rel=rtol)
    # a precomputed true dose of another dtype is accepted too
    td = L.true_target_dose(predictor, t, ct=ct).double()
    assert float(L.dose_segmentation_loss(prob.detach(), t, predictor, ct=ct, true_dose=td)) == pytest.approx(
        float(out.detach()), rel=1e-6 if pdtype != torch.bfloat16 else 1e-2)


def test_mixed_dtype_dose_losses_accumulate_in_the_wider_dtype():
    pred, target, mask = _dose_inputs()
    out = L.masked_mse(pred.float(), target, mask)
    assert out.dtype == torch.float64
    assert float(out) == pytest.approx(float(L.masked_mse(pred.float().double(), target, mask)), rel=1e-12)
    out = L.sharp_loss(pred.half() / 60, target.float() / 60)
    assert out.dtype == torch.float32
    g = L.sharp_loss_grad(pred.half() / 60, target.float() / 60)
    assert g.dtype == torch.float16


@pytest.mark.parametrize("dtype", HALF, ids=["float16", "bfloat16"])
def test_sharp_loss_grad_half_precision(dtype):
    pred, target, mask = _dose_inputs(scale=1.0)
    pred, target = pred.to(dtype), target.to(dtype)
    g = L.sharp_loss_grad(pred, target, 100.0, mask=mask)
    assert g.dtype == dtype  # as autograd would give
    ref = L.sharp_loss_grad(pred.double(), target.double(), 100.0, mask=mask)
    # each entry is rounded once to the half dtype, nothing more: 2^-10 (float16) or 2^-7 (bfloat16) relative
    tol = torch.finfo(dtype).eps * ref.abs() + torch.finfo(dtype).tiny * 8
    assert bool(((g.double() - ref).abs() <= tol).all())
    x = pred.clone().requires_grad_()
    L.sharp_loss(x, target, 100.0, mask=mask).backward()
    assert bool(((x.grad.double() - ref).abs() <= 2 * tol).all())
