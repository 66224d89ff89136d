"""Masked voxel-wise dose losses (DeepDoseNet, Soomro et al.).

Both losses are restricted to the possible-dose mask ``M_d`` and normalised by
its voxel count,

.. math::

    \\mathrm{MSE} = \\frac{\\sum_{v} (D^{pred}_v - D^{ref}_v)^2\\, M_d(v)}{\\sum_v M_d(v)}, \\qquad
    \\mathrm{MAE} = \\frac{\\sum_{v} |D^{pred}_v - D^{ref}_v|\\, M_d(v)}{\\sum_v M_d(v)},

the MSE and MAE equations of Soomro et al. (DeepDoseNet). Here the ratio is
computed **per batch element** (one patient = one volume) and then averaged over
the elements whose mask is not empty, as OpenKBP's dose score averages per
patient (``batch_reduction="sample"``, the default); ``batch_reduction="voxel"``
pools every mask voxel of the batch instead.

Sums and voxel counts are accumulated in float32 (float64 for float64 input),
whatever the input dtype, so float16/bfloat16 predictions (mixed precision) give
the same loss as float32 ones. ``target`` is a reference dose: NaN, infinite or
negative values raise ``ValueError``; ``pred`` may be negative.
"""
from __future__ import annotations

import torch
from torch import nn

from ._checks import (
    accumulation_dtype,
    check_choice,
    check_finite,
    check_reference_dose,
    check_same_shape,
    check_tensor,
    voxel_mask,
    zero_loss,
)

__all__ = ["masked_mse", "masked_mae", "MaskedMSELoss", "MaskedMAELoss"]


def _masked_mean(err: torch.Tensor, mask, batch_reduction: str) -> torch.Tensor:
    check_choice(batch_reduction, "batch_reduction", {"sample", "voxel"})
    if mask is None:
        if batch_reduction == "voxel":
            return err.mean()
        return err.reshape(err.shape[0], -1).mean(1).mean()
    m = voxel_mask(mask, err.shape, "mask")
    zero = torch.zeros((), dtype=err.dtype, device=err.device)
    e = torch.where(m, err, zero).reshape(err.shape[0], -1)
    counts = m.reshape(m.shape[0], -1).sum(1)
    if batch_reduction == "voxel":
        n = int(counts.sum())
        return e.sum() / n if n > 0 else zero_loss(err)
    keep = counts > 0
    if not bool(keep.any()):
        return zero_loss(err)
    per_sample = e.sum(1)[keep] / counts[keep].to(err.dtype)
    return per_sample.mean()


def _check(pred, target):
    check_tensor(pred, "pred")
    check_tensor(target, "target")
    check_same_shape(pred, target, "pred", "target")
    if pred.dim() < 2:
        raise ValueError(f"pred must have a batch axis (shape B x ...), got shape {tuple(pred.shape)}")
    check_finite(pred, "pred")
    check_reference_dose(target, "target")
    dtype = accumulation_dtype(pred, target)
    return pred.to(dtype), target.to(dtype)


def masked_mse(pred, target, mask=None, batch_reduction: str = "sample"):
    """Mean squared dose error over the possible-dose mask (Soomro et al., DeepDoseNet, MSE equation).

    .. math:: \\mathrm{MSE} = \\sum_v (D^{pred}_v - D^{ref}_v)^2 M_d(v) \\,/\\, \\sum_v M_d(v)

    Parameters
    ----------
    pred, target : torch.Tensor
        Doses (Gy), shape ``B x ...`` (e.g. ``B x 1 x Z x Y x X``).
    mask : torch.Tensor of bool, optional
        Possible-dose mask ``M_d``, same shape as ``pred`` (or without the channel
        axis when it has size 1). ``None``: every voxel.
    batch_reduction : {"sample", "voxel"}
        ``"sample"`` (default): the ratio per batch element, then the mean over
        elements with a non-empty mask. ``"voxel"``: one ratio over the whole batch.

    Returns
    -------
    torch.Tensor
        Scalar loss (Gy^2), float32 (float64 for float64 input). If every mask is empty the loss is 0 (still connected to the graph).
    """
    pred, target = _check(pred, target)
    return _masked_mean((pred - target) ** 2, mask, batch_reduction)


def masked_mae(pred, target, mask=None, batch_reduction: str = "sample"):
    """Mean absolute dose error over the possible-dose mask (Soomro et al., DeepDoseNet, MAE equation).

    .. math:: \\mathrm{MAE} = \\sum_v |D^{pred}_v - D^{ref}_v| M_d(v) \\,/\\, \\sum_v M_d(v)

    Parameters
    ----------
    pred, target, mask, batch_reduction
        As in :func:`masked_mse`.

    Returns
    -------
    torch.Tensor
        Scalar loss (Gy).
    """
    pred, target = _check(pred, target)
    return _masked_mean((pred - target).abs(), mask, batch_reduction)


class MaskedMSELoss(nn.Module):
    """Module form of :func:`masked_mse`; ``forward(pred, target, mask=None)``."""

    def __init__(self, batch_reduction: str = "sample"):
        super().__init__()
        self.batch_reduction = check_choice(batch_reduction, "batch_reduction", {"sample", "voxel"})

    def forward(self, pred, target, mask=None):
        return masked_mse(pred, target, mask, self.batch_reduction)

    def extra_repr(self) -> str:
        return f"batch_reduction={self.batch_reduction!r}"


class MaskedMAELoss(nn.Module):
    """Module form of :func:`masked_mae`; ``forward(pred, target, mask=None)``."""

    def __init__(self, batch_reduction: str = "sample"):
        super().__init__()
        self.batch_reduction = check_choice(batch_reduction, "batch_reduction", {"sample", "voxel"})

    def forward(self, pred, target, mask=None):
        return masked_mae(pred, target, mask, self.batch_reduction)

    def extra_repr(self) -> str:
        return f"batch_reduction={self.batch_reduction!r}"
