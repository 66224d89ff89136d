"""Tests of the sharp loss (Bai et al. 2021), rtlearn.losses.sharp."""
import math

import numpy as np
import pytest
import torch

from rtlearn.losses import SharpLoss, demarcation_dose, sharp_loss, sharp_loss_grad, sharp_weight


def _doses(seed=0, shape=(2, 1, 4, 5, 6), dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(shape, generator=g, dtype=dtype)
    pred = (target + 0.1 * torch.randn(shape, generator=g, dtype=dtype)).clamp_min(0)
    return pred, target


def test_value_matches_hand_computation():
    pred = torch.tensor([0.0, 0.5, 1.0, 0.2])
    target = torch.tensor([0.0, 0.4, 0.9, 0.03])
    gamma = 100.0
    expected = 0.0
    for p, d in zip(pred.tolist(), target.tolist()):
        expected += 1.0 / (1.0 + math.exp(-(d - 0.03) * gamma)) * (p - d) ** 2
    expected /= 4
    assert sharp_loss(pred, target, gamma).item() == pytest.approx(expected, rel=1e-6)
    # the voxel at the shift has weight exactly 1/2
    assert sharp_weight(torch.tensor(0.03), gamma).item() == pytest.approx(0.5)


def test_gradient_matches_autograd_and_weight_has_no_gradient():
    pred, target = _doses(1)
    mask = torch.rand(pred.shape, generator=torch.Generator().manual_seed(2)) > 0.3
    for m in (None, mask):
        p = pred.clone().requires_grad_()
        t = target.clone().requires_grad_()
        sharp_loss(p, t, 50.0, mask=m).backward()
        assert torch.allclose(p.grad, sharp_loss_grad(pred, target, 50.0, mask=m), atol=1e-12)
        assert t.grad is None or torch.count_nonzero(t.grad) == 0  # the target never receives gradient
    assert torch.autograd.gradcheck(lambda x: sharp_loss(x, target, 100.0, mask=mask), (pred.clone().requires_grad_(),))


def test_gradient_with_norm_includes_chain_rule():
    pred, target = _doses(3)
    p = (pred * 60).requires_grad_()
    sharp_loss(p, target * 60, 100.0, norm=60.0).backward()
    assert torch.allclose(p.grad, sharp_loss_grad(pred * 60, target * 60, 100.0, norm=60.0), atol=1e-12)
    assert sharp_loss(pred * 60, target * 60, norm=60.0).item() == pytest.approx(sharp_loss(pred, target).item())


def test_gamma_zero_is_exactly_half_the_mse():
    pred, target = _doses(4)
    assert sharp_loss(pred, target, 0.0).item() == 0.5 * torch.mean((pred - target) ** 2).item()


def test_large_gamma_approaches_mse_above_the_shift():
    pred, target = _doses(5)
    target = torch.where((target - 0.03).abs() < 0.01, target + 0.02, target)  # keep voxels away from the shift
    above = target > 0.03
    ref = (((pred - target) ** 2) * above).sum() / pred.numel()
    assert sharp_loss(pred, target, 1e5).item() == pytest.approx(ref.item(), rel=1e-9)


def test_mask_restricts_and_normalises_by_mask_count():
    pred, target = _doses(6)
    mask = torch.zeros(pred.shape, dtype=torch.bool)
    mask[:, :, 1:3] = True
    w = sharp_weight(target, 100.0)
    ref = (w * (pred - target) ** 2)[mask].mean()
    assert sharp_loss(pred, target, mask=mask).item() == pytest.approx(ref.item(), rel=1e-12)
    # a mask without the channel axis is accepted when the channel has size 1
    assert sharp_loss(pred, target, mask=mask[:, 0]).item() == pytest.approx(ref.item(), rel=1e-12)
    # changing voxels outside the mask does not change the loss
    pred2 = torch.where(mask, pred, pred + 5)
    assert sharp_loss(pred2, target, mask=mask).item() == pytest.approx(ref.item(), rel=1e-12)
    # empty mask: zero loss, differentiable
    p = pred.clone().requires_grad_()
    loss = sharp_loss(p, target, mask=torch.zeros_like(mask))
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(p.grad) == 0


def test_module_matches_function():
    pred, target = _doses(7)
    assert SharpLoss(gamma=25)(pred, target).item() == sharp_loss(pred, target, 25).item()


def test_demarcation_dose_and_zero_dose_weight_match_the_paper():
    assert demarcation_dose(100) == pytest.approx(455.71, abs=0.005)
    assert float(sharp_weight(0.0, 100)) == pytest.approx(0.047, abs=5e-4)
    # D0 decreases as gamma grows (the paper: gamma < 100 gives D0 > 455.71 cGy)
    assert demarcation_dose(50) > demarcation_dose(100) > demarcation_dose(250)
    # at D0 the weight is exactly the level
    d0 = demarcation_dose(100, level=0.99)
    assert float(sharp_weight(np.array(d0 / 6000), 100)) == pytest.approx(0.99)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(gamma=-1.0), "gamma"),
        (dict(gamma=float("nan")), "gamma"),
        (dict(mask=torch.ones(2, 1, 4, 5, dtype=torch.bool)), "mask"),
    ],
)
def test_bad_arguments(kwargs, match):
    pred, target = _doses(8)
    with pytest.raises(ValueError, match=match):
        sharp_loss(pred, target, **kwargs)


def test_bad_doses():
    pred, target = _doses(9)
    bad = pred.clone()
    bad[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        sharp_loss(bad, target)
    with pytest.raises(ValueError, match="NaN"):
        sharp_loss(pred, torch.where(bad.isnan(), bad, target))
    with pytest.raises(ValueError, match="normalised"):
        sharp_loss(pred * 60, target * 60)  # doses in Gy, not normalised
    with pytest.raises(ValueError, match="shape"):
        sharp_loss(pred, target[:1])
    with pytest.raises(TypeError):
        sharp_loss(pred.numpy(), target)
    with pytest.raises(ValueError):
        demarcation_dose(0.0)
    with pytest.raises(ValueError):
        demarcation_dose(100, level=1.0)
