"""Tests of the differentiable DVH and the DVH loss (rtlearn.losses.dvh; DeepDoseNet, Nguyen et al. 2020)."""
import numpy as np
import pytest
import torch

from rtlearn.losses import DVHLoss, MAEPlusDVHLoss, dvh_loss, dvh_thresholds, masked_mae, soft_dvh
from rtlearn.losses.dvh import mae_plus_dvh_loss


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _exact_dvh(dose, mask, t):
    """Brute-force cumulative DVH: fraction of structure voxels with dose >= t."""
    v = dose[mask].double()
    return (v[:, None] >= t.double()[None, :]).double().mean(0)


def test_soft_dvh_converges_to_exact_dvh():
    g = _gen(1)
    dose = torch.rand(10, 12, 14, generator=g, dtype=torch.float64) * 70
    mask = torch.rand(10, 12, 14, generator=g) > 0.4
    t, _ = dvh_thresholds(40, (0.5, 79.5), dtype=torch.float64)
    exact = _exact_dvh(dose, mask, t)
    errors = [(soft_dvh(dose, mask, t, steepness=m)[1] - exact).abs().max().item() for m in (1, 10, 100, 1000)]
    assert all(a > b for a, b in zip(errors, errors[1:]))  # monotone convergence
    assert errors[0] > 0.01 and errors[-1] < 5e-3


def test_soft_dvh_matches_lead_cumulative_dvh_when_available():
    dvh_mod = pytest.importorskip("rtlearn.dvh")
    g = _gen(2)
    dose = torch.rand(8, 9, 10, generator=g, dtype=torch.float64) * 60
    mask = torch.rand(8, 9, 10, generator=g) > 0.5
    axis, frac = dvh_mod.cumulative_dvh(dose.numpy(), mask.numpy(), bins=np.linspace(0.25, 59.75, 25))
    _, soft = soft_dvh(dose, mask, torch.as_tensor(np.asarray(axis, dtype=float)), steepness=2000, bin_width=2.5)
    assert np.allclose(soft.numpy(), np.asarray(frac, dtype=float), atol=0.01)


def test_soft_dvh_several_structures_and_gradcheck():
    g = _gen(3)
    dose = torch.rand(4, 5, 6, generator=g, dtype=torch.float64) * 10
    masks = torch.rand(3, 4, 5, 6, generator=g) > 0.5
    t, many = soft_dvh(dose, masks, bins=12, dose_range=(0, 10))
    for s in range(3):
        assert torch.allclose(many[s], soft_dvh(dose, masks[s], bins=12, dose_range=(0, 10))[1])
    # relaxed DVH by the formula, dense (tiny case)
    ref = torch.sigmoid((dose[masks[1]][:, None] - t[None]) / (10 / 11)).mean(0)
    assert torch.allclose(many[1], ref, atol=1e-12)
    x = dose.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda d: soft_dvh(d, masks, bins=7, dose_range=(0, 10), chunk_size=13)[1], (x,))


def _case(seed, B=2, S=3, shape=(6, 7, 8)):
    g = _gen(seed)
    target = torch.rand((B, 1) + shape, generator=g, dtype=torch.float64) * 70
    pred = target + 3 * torch.randn(target.shape, generator=g, dtype=torch.float64)
    structures = torch.rand((B, S) + shape, generator=g) > 0.6
    return pred, target, structures


def test_dvh_loss_zero_for_identical_doses_and_positive_otherwise():
    pred, target, structures = _case(4)
    assert dvh_loss(target, target, structures).item() == 0.0
    assert dvh_loss(pred, target, structures).item() > 0


def test_dvh_loss_matches_dense_reference_and_gradcheck():
    pred, target, structures = _case(5)
    available = torch.tensor([[True, False, True], [True, True, True]])
    structures[1, 2] = False  # empty structure: skipped
    t, b = dvh_thresholds(16, (0, 80), dtype=torch.float64)
    per_patient = []
    for bb in range(2):
        vals = []
        for s in range(3):
            m = structures[bb, s]
            if not available[bb, s] or not m.any():
                continue
            dp = torch.sigmoid((pred[bb, 0][m][:, None] - t) / b).mean(0)
            dt = torch.sigmoid((target[bb, 0][m][:, None] - t) / b).mean(0)
            vals.append((dt - dp).abs().mean())
        per_patient.append(torch.stack(vals).mean())
    ref = torch.stack(per_patient).mean()
    got = dvh_loss(pred, target, structures, available, bins=16)
    assert got.item() == pytest.approx(ref.item(), rel=1e-12)
    # pred without the channel axis works the same
    assert dvh_loss(pred[:, 0], target[:, 0], structures, available, bins=16).item() == pytest.approx(ref.item())
    x = pred.clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda p: dvh_loss(p, target, structures, available, bins=6, steepness=3.0, chunk_size=17), (x,))


def test_dvh_loss_edge_cases_never_nan():
    pred, target, structures = _case(6)
    x = pred.clone().requires_grad_()
    # no structure present at all -> 0, differentiable
    loss = dvh_loss(x, target, torch.zeros_like(structures))
    loss.backward()
    assert loss.item() == 0.0 and not torch.isnan(x.grad).any()
    loss = dvh_loss(pred, target, structures, available=torch.zeros(2, 3, dtype=torch.bool))
    assert loss.item() == 0.0
    # bins entirely outside the dose range: both DVHs ~0 (or ~1) -> tiny loss, finite
    for rng in ((500.0, 600.0), (-600.0, -500.0)):
        loss = dvh_loss(pred, target, structures, dose_range=rng)
        assert torch.isfinite(loss) and loss.item() < 1e-6
    # NaN prediction -> clear error
    bad = pred.clone()
    bad[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        dvh_loss(bad, target, structures)
    with pytest.raises(ValueError, match="structures"):
        dvh_loss(pred, target, structures[:, :, :5])
    with pytest.raises(ValueError, match="available"):
        dvh_loss(pred, target, structures, available=torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="empty"):
        soft_dvh(target[0, 0], torch.zeros_like(structures[0, 0]))
    with pytest.raises(ValueError, match="increasing"):
        soft_dvh(target[0, 0], structures[0, 0], bins=[3.0, 2.0, 1.0])
    with pytest.raises(ValueError, match="bin_width"):
        soft_dvh(target[0, 0], structures[0, 0], bins=[3.0])
    with pytest.raises(ValueError, match="steepness"):
        dvh_loss(pred, target, structures, steepness=0.0)


def test_dvh_modules_and_mae_plus_dvh():
    pred, target, structures = _case(7)
    dose_mask = torch.ones(pred.shape, dtype=torch.bool)
    loss_fn = MAEPlusDVHLoss(weight=2.0, bins=20)
    expected = masked_mae(pred, target, dose_mask) + 2.0 * dvh_loss(pred, target, structures, bins=20)
    assert loss_fn(pred, target, dose_mask, structures).item() == pytest.approx(expected.item())
    assert DVHLoss(bins=20)(pred, target, structures).item() == dvh_loss(pred, target, structures, bins=20).item()
    with pytest.raises(ValueError):
        MAEPlusDVHLoss(weight=-1.0)
    with pytest.raises(ValueError):
        DVHLoss(bins=0)


def test_dvh_loss_is_deterministic_and_chunk_independent():
    pred, target, structures = _case(8)
    a = dvh_loss(pred, target, structures, chunk_size=7)
    b = dvh_loss(pred, target, structures)
    assert a.item() == pytest.approx(b.item(), rel=1e-12)
    assert dvh_loss(pred, target, structures).item() == b.item()


def test_mae_plus_dvh_functional_matches_a_dense_reference_and_the_module():
    """MAE over the mask + w * DVH loss, both computed by hand (per patient, then averaged)."""
    pred, target, structures = _case(9)
    g = _gen(10)
    dose_mask = torch.rand(pred.shape, generator=g) > 0.3
    t, b = dvh_thresholds(12, (0, 80), dtype=torch.float64)
    mae, dvh = [], []
    for bb in range(pred.shape[0]):
        m = dose_mask[bb, 0]
        mae.append((pred[bb, 0][m] - target[bb, 0][m]).abs().mean())
        per_s = []
        for s_ in range(structures.shape[1]):
            sm = structures[bb, s_]
            dp = torch.sigmoid((pred[bb, 0][sm][:, None] - t) / b).mean(0)
            dt = torch.sigmoid((target[bb, 0][sm][:, None] - t) / b).mean(0)
            per_s.append((dt - dp).abs().mean())
        dvh.append(torch.stack(per_s).mean())
    ref = torch.stack(mae).mean() + 80.0 * torch.stack(dvh).mean()
    got = mae_plus_dvh_loss(pred, target, dose_mask, structures, weight=80.0, bins=12)
    assert got.item() == pytest.approx(ref.item(), rel=1e-12)
    module = MAEPlusDVHLoss(weight=80.0, bins=12)
    assert module(pred, target, dose_mask, structures).item() == got.item()
    assert mae_plus_dvh_loss(pred, target, dose_mask, structures, weight=0.0).item() == pytest.approx(
        torch.stack(mae).mean().item(), rel=1e-12)
    x = pred.clone().requires_grad_()
    mae_plus_dvh_loss(x, target, dose_mask, structures, weight=80.0, bins=12).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for bad in (-1.0, float("nan"), True, "1"):
        with pytest.raises(ValueError, match="weight"):
            mae_plus_dvh_loss(pred, target, dose_mask, structures, weight=bad)


def test_loss_objects_print_their_settings():
    text = repr(MAEPlusDVHLoss(weight=80.0, bins=64, steepness=1.0, dose_range=(0.0, 80.0)))
    assert "weight=80" in text and "bins=64" in text and "dose_range=(0.0, 80.0)" in text
    assert "bins=<3 thresholds>" in repr(DVHLoss(bins=[1.0, 2.0, 3.0]))
