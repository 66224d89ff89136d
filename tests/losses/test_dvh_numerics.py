"""Numerics of the relaxed DVH and the DVH loss (rtlearn.losses.dvh).

* the table form (cubic Hermite interpolation of tabulated sigmoids) against the
  dense form (every voxel x threshold sigmoid): values and gradients within the
  analytic bound of the module notes, and within 1e-4 relative;
* float16 / bfloat16 inputs and autocast against a float64 reference;
* mixed input dtypes; validation of the new arguments.
"""
import pytest
import torch

from rtlearn.losses import MAEPlusDVHLoss, dvh_loss, dvh_thresholds, soft_dvh
from rtlearn.losses import dvh as dvh_mod

#: Analytic bounds of the table form (module notes): value (volume fraction) and per-voxel gradient / (k sum|c_t|).
VALUE_BOUND = 3.5e-8
GRAD_BOUND = 1.04e-6


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _case(seed, B=2, S=3, shape=(12, 14, 16), noise=3.0, dtype=torch.float64):
    g = _gen(seed)
    target = torch.rand((B, 1) + shape, generator=g, dtype=torch.float64) * 75
    pred = target + noise * torch.randn(target.shape, generator=g, dtype=torch.float64)
    structures = torch.rand((B, S) + shape, generator=g) > 0.5
    return pred.to(dtype), target.to(dtype), structures


def _dense_reference_dvh(dose, mask, t, scale):
    """Relaxed DVH by its formula, in float64 (brute force over voxels x thresholds)."""
    v = dose.double()[mask]
    return torch.sigmoid((v[:, None] - t.double()[None, :]) * scale).mean(0)


@pytest.mark.parametrize("steepness", [0.25, 1.0, 4.0, 16.0])
def test_table_form_within_the_analytic_bound_of_the_dense_form(steepness):
    g = _gen(1)
    dose = torch.rand(20, 30, 40, generator=g, dtype=torch.float64) * 110 - 15  # some doses outside the grid
    masks = torch.rand(3, 20, 30, 40, generator=g) > 0.4
    c = torch.randn(3, 64, generator=g, dtype=torch.float64)  # upstream gradient dL/dDVH
    out = {}
    for method in ("table", "dense"):
        x = dose.clone().requires_grad_()
        t, v = soft_dvh(x, masks, steepness=steepness, method=method)
        (v * c).sum().backward()
        out[method] = (v.detach(), x.grad)
    (vt, gt), (vd, gd) = out["table"], out["dense"]
    ref = torch.stack([_dense_reference_dvh(dose, masks[s], t, steepness / (80 / 63)) for s in range(3)])
    assert (vd - ref).abs().max() < 1e-12
    err = (vt - vd).abs().max().item()
    assert 0 < err <= VALUE_BOUND  # not the dense code path, and inside the bound
    # per voxel: |grad error| <= GRAD_BOUND * k * sum over its structures of sum_t |c_t| / |s|
    k = steepness / (80 / 63)
    weight = (c.abs().sum(1) / masks.reshape(3, -1).sum(1))[:, None, None, None] * masks
    bound = GRAD_BOUND * k * weight.sum(0)
    assert ((gt - gd).abs() <= bound + 1e-15).all()
    assert (gt - gd).abs().max() / gd.abs().max() < 1e-4


def test_table_and_dense_dvh_loss_agree_to_1e4_relative_in_float32_and_float64():
    """Value and gradient of the DVH loss, at a size where ``auto`` picks the table."""
    for dtype in (torch.float64, torch.float32):
        pred, target, structures = _case(2, shape=(24, 32, 32), dtype=dtype)
        res = {}
        for method in ("table", "dense", "auto"):
            x = pred.clone().requires_grad_()
            loss = dvh_loss(x, target, structures, method=method)
            loss.backward()
            res[method] = (loss.detach().double(), x.grad.double())
        (lt, gt), (ld, gd), (la, ga) = res["table"], res["dense"], res["auto"]
        assert la == lt and torch.equal(ga, gt)  # auto chose the table here
        assert abs(lt - ld) / ld < 1e-4 and (gt - gd).abs().max() / gd.abs().max() < 1e-4
        if dtype == torch.float64:  # the interpolation error alone is far smaller
            assert abs(lt - ld) / ld < 1e-6 and (gt - gd).abs().max() / gd.abs().max() < 1e-5


def test_auto_picks_dense_for_few_voxels_and_custom_thresholds_work():
    pred, target, structures = _case(3, shape=(4, 5, 6))
    dense = dvh_loss(pred, target, structures, bins=16, method="dense")
    assert dvh_loss(pred, target, structures, bins=16).item() == dense.item()
    table = dvh_loss(pred, target, structures, bins=16, method="table")
    assert table.item() == pytest.approx(dense.item(), rel=1e-6)
    thresholds = [2.0, 10.0, 11.0, 30.0, 65.5]  # uneven, with an explicit bin width
    a = dvh_loss(pred, target, structures, bins=thresholds, bin_width=2.0, method="table")
    b = dvh_loss(pred, target, structures, bins=thresholds, bin_width=2.0, method="dense")
    assert a.item() == pytest.approx(b.item(), rel=1e-6)


def test_table_form_gradient_is_exact_for_its_interpolant():
    """The backward pass is the exact derivative of the piecewise cubic the forward pass evaluates."""
    pred, target, structures = _case(4, B=2, S=2, shape=(3, 4, 5))
    x = pred.clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda p: dvh_loss(p, target, structures, bins=9, steepness=2.0, method="table"), (x,))
    d = target[0, 0].clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda v: soft_dvh(v, structures[0], bins=5, method="table")[1], (d,))


def test_table_form_is_deterministic_and_clamps_far_doses():
    pred, target, structures = _case(5, shape=(16, 16, 16))
    a = dvh_loss(pred, target, structures, method="table")
    assert dvh_loss(pred, target, structures, method="table").item() == a.item()
    far = pred.clone()
    far[0, 0, :2] = 1e6  # far above every threshold: fraction 1, zero gradient, nothing overflows
    far[1, 0, :2] = -1e6
    x = far.clone().requires_grad_()
    loss = dvh_loss(x, target, structures, method="table")
    loss.backward()
    ref = dvh_loss(far, target, structures, method="dense")
    assert torch.isfinite(loss) and loss.item() == pytest.approx(ref.item(), rel=1e-6)
    assert (x.grad[0, 0, :2] == 0).all() and (x.grad[1, 0, :2] == 0).all()


def test_true_indices_match_nonzero():
    g = _gen(6)
    for n in (5, 64, 1000, 4099, 8192):
        flat = torch.rand(n, generator=g) > 0.9
        flat[: n // 3] = False
        assert torch.equal(dvh_mod._true_indices(flat), flat.nonzero().reshape(-1))
    base = torch.rand(8 * 100 + 3, generator=g) > 0.5
    view = base[3:]  # storage offset not a multiple of 8
    assert torch.equal(dvh_mod._true_indices(view), view.nonzero().reshape(-1))
    # a non-contiguous structures tensor gives the same loss as its contiguous copy
    pred, target, structures = _case(7, shape=(10, 12, 14))
    st = structures.transpose(3, 4).contiguous().transpose(3, 4)
    assert dvh_loss(pred, target, st).item() == dvh_loss(pred, target, structures).item()


# --------------------------------------------------------------------------- precision
def _large_case(dtype):
    """One patient, two structures of 76 800 and 38 400 voxels (> 65 504, float16's largest finite value)."""
    shape = (48, 40, 40)
    g = _gen(8)
    target = torch.rand((1, 1) + shape, generator=g, dtype=torch.float64) * 70
    pred = (target + 4 * torch.randn(target.shape, generator=g, dtype=torch.float64)).clamp_min(0)
    structures = torch.zeros((1, 2) + shape, dtype=torch.bool)
    structures[0, 0] = True
    structures[0, 1, :24] = True
    return pred.to(dtype), target.to(dtype), structures


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("method", ["table", "dense"])
def test_half_precision_inputs_over_65504_voxels_match_a_float64_reference(dtype, method):
    """Tolerance: DVH within 1e-5 (volume fraction), loss within 1e-4 relative, gradient within 1e-2 of its max.

    The reference is computed in float64 from the same (rounded) half-precision doses, so only the
    accumulation is tested. The gradient is returned in the input's dtype (8 or 11 mantissa bits); it is
    about 1 / (voxels x thresholds), below float16's normal range, so the loss is scaled by 2^16 before
    the backward pass, as a gradient scaler does in mixed-precision training.
    """
    pred, target, structures = _large_case(dtype)
    _, v = soft_dvh(pred[0, 0], structures[0], method=method)
    assert v.dtype == torch.float32
    t, b = dvh_thresholds(dtype=torch.float64)
    ref_v = torch.stack([_dense_reference_dvh(pred[0, 0], structures[0, s], t, 1 / b) for s in range(2)])
    assert (v.double() - ref_v).abs().max() < 1e-5
    x = pred.clone().requires_grad_()
    loss = dvh_loss(x, target, structures, method=method)
    (loss * 2.0 ** 16).backward()
    assert loss.dtype == torch.float32 and x.grad.dtype == dtype
    x64 = pred.double().requires_grad_()
    ref = dvh_loss(x64, target.double(), structures, method="dense")
    (ref * 2.0 ** 16).backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-4)
    assert (x.grad.double() - x64.grad).abs().max() <= 1e-2 * x64.grad.abs().max()


def test_under_bfloat16_autocast_matches_float64_and_float32():
    pred, target, structures = _large_case(torch.float32)
    conv = torch.nn.Conv3d(1, 1, 1)
    with torch.no_grad():
        conv.weight.fill_(1.0)
        conv.bias.zero_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = conv(pred)  # a bfloat16 network output
        loss = dvh_loss(out, target, structures)
        hybrid = MAEPlusDVHLoss(weight=80.0)(out, target, torch.ones_like(out, dtype=torch.bool), structures)
        # float32 inputs: autocast must not lower the precision inside the loss
        same = dvh_loss(pred, target, structures)
    assert out.dtype == torch.bfloat16 and loss.dtype == torch.float32
    assert same.item() == dvh_loss(pred, target, structures).item()
    ref = dvh_loss(out.detach().double(), target.double(), structures, method="dense")
    assert loss.item() == pytest.approx(ref.item(), rel=1e-4)
    assert torch.isfinite(hybrid)
    loss.backward()
    assert conv.weight.grad is not None and torch.isfinite(conv.weight.grad).all()


def test_mixed_dtypes_are_cast_to_a_common_dtype():
    pred, target, structures = _case(9)
    for p_dtype, t_dtype, out_dtype in [(torch.float32, torch.float64, torch.float64),
                                        (torch.float64, torch.float32, torch.float64),
                                        (torch.bfloat16, torch.float32, torch.float32),
                                        (torch.float16, torch.bfloat16, torch.float32)]:
        x = pred.to(p_dtype).detach().clone().requires_grad_()
        loss = dvh_loss(x, target.to(t_dtype), structures)
        loss.backward()
        assert loss.dtype == out_dtype and x.grad.dtype == p_dtype
        ref = dvh_loss(pred.to(p_dtype).double(), target.to(t_dtype).double(), structures)
        assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    mask = torch.ones(pred.shape, dtype=torch.bool)
    hybrid = MAEPlusDVHLoss(weight=2.0)
    got = hybrid(pred.float(), target, mask, structures)
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(hybrid(pred.float().double(), target, mask, structures).item(), rel=1e-12)


def test_new_arguments_and_reference_dose_are_validated():
    pred, target, structures = _case(10, shape=(4, 4, 4))
    with pytest.raises(ValueError, match="method"):
        dvh_loss(pred, target, structures, method="fast")
    with pytest.raises(ValueError, match="method"):
        soft_dvh(target[0, 0], structures[0], method=None)
    with pytest.raises(ValueError, match="method"):
        MAEPlusDVHLoss(method="sparse")
    with pytest.raises(ValueError, match="grid"):  # a table for m = 1e6 would be enormous
        dvh_loss(pred, target, structures, steepness=1e6, method="table")
    assert torch.isfinite(dvh_loss(pred, target, structures, steepness=1e6))  # auto falls back to dense
    bad = target.clone()
    bad[0, 0, 0, 0, 0] = -1.0
    with pytest.raises(ValueError, match="negative"):
        dvh_loss(pred, bad, structures)
    bad[0, 0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or infinite"):
        dvh_loss(pred, bad, structures)
    with pytest.raises(ValueError, match="chunk_size"):
        dvh_loss(pred, target, structures, chunk_size=True)
    assert "method='dense'" in repr(MAEPlusDVHLoss(method="dense").dvh)
