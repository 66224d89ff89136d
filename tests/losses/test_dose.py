"""Tests of the masked dose losses (rtlearn.losses.dose; DeepDoseNet's MSE and MAE)."""
import numpy as np
import pytest
import torch

from rtlearn.losses import MaskedMAELoss, MaskedMSELoss, masked_mae, masked_mse


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- masked MSE / MAE
def test_masked_losses_by_hand():
    pred = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0]])
    target = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 3.0]])
    mask = torch.tensor([[True, True, False, False], [True, False, False, True]])
    # element 0: errors 0, 2 -> MAE 1, MSE 2 ; element 1: errors 1, 3 -> MAE 2, MSE 5
    assert masked_mae(pred, target, mask).item() == pytest.approx(1.5)
    assert masked_mse(pred, target, mask).item() == pytest.approx(3.5)
    # pooled over the batch: (0 + 2 + 1 + 3) / 4 and (0 + 4 + 1 + 9) / 4
    assert masked_mae(pred, target, mask, batch_reduction="voxel").item() == pytest.approx(1.5)
    assert masked_mse(pred, target, mask, batch_reduction="voxel").item() == pytest.approx(3.5)
    mask2 = torch.tensor([[True, True, True, False], [True, False, False, False]])
    # sample: (5/3 + 1)/2 ; voxel: (0+2+3+1)/4
    assert masked_mae(pred, target, mask2).item() == pytest.approx((5 / 3 + 1) / 2)
    assert masked_mae(pred, target, mask2, batch_reduction="voxel").item() == pytest.approx(1.5)
    assert masked_mae(pred, target).item() == pytest.approx(((9 / 4) + (6 / 4)) / 2)  # no mask: every voxel


def test_masked_losses_skip_empty_masks_and_modules():
    g = _gen(0)
    pred = torch.rand(3, 1, 4, 4, 4, generator=g, dtype=torch.float64)
    target = torch.rand(3, 1, 4, 4, 4, generator=g, dtype=torch.float64)
    mask = torch.rand(3, 4, 4, 4, generator=g) > 0.5  # no channel axis: accepted
    mask[1] = False
    ref = np.mean([((pred[b, 0] - target[b, 0]).abs()[mask[b]]).mean().item() for b in (0, 2)])
    assert masked_mae(pred, target, mask).item() == pytest.approx(ref)
    assert MaskedMAELoss()(pred, target, mask).item() == pytest.approx(ref)
    assert MaskedMSELoss("voxel")(pred, target, mask).item() == pytest.approx(
        ((pred - target)[:, 0][mask] ** 2).mean().item())
    p = pred.clone().requires_grad_()
    loss = masked_mse(p, target, torch.zeros_like(mask))
    loss.backward()
    assert loss.item() == 0.0 and not torch.isnan(p.grad).any()


def test_masked_losses_bad_input():
    pred = torch.rand(2, 1, 3, 3)
    with pytest.raises(ValueError, match="shape"):
        masked_mae(pred, pred, torch.ones(2, 3, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="shape"):
        masked_mse(pred, pred[:1])
    bad = pred.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        masked_mae(bad, pred)
    with pytest.raises(ValueError, match="batch_reduction"):
        masked_mae(pred, pred, batch_reduction="all")


def test_masked_loss_objects_print_their_reduction():
    assert repr(MaskedMSELoss()) == "MaskedMSELoss(batch_reduction='sample')"
    assert repr(MaskedMAELoss("voxel")) == "MaskedMAELoss(batch_reduction='voxel')"
