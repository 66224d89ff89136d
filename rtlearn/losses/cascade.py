r"""Deep-supervision loss of a cascade of dose networks (:class:`rtlearn.models.CascadeUNet`, DOSELO's :math:`M_D`).

Rüfenacht et al. (2023, ``ruefenacht2023doselo``) supervise both stages of the
cascade,

.. math:: \mathcal L_{DS} = a\,\mathrm{MSE}_M(\hat D^{(1)}, D) + b\,\mathrm{MSE}_M(\hat D^{(2)}, D),

with :math:`\mathrm{MSE}_M` the mean squared error over the possible-dose (body)
mask :math:`M` (:func:`rtlearn.losses.dose.masked_mse`, voxels of the batch
pooled) and :math:`a = 0.5`, :math:`b = 1` in the authors' public code
(:data:`DEEP_SUPERVISION_WEIGHTS`).
"""
from __future__ import annotations

import numbers
from typing import Sequence

import torch
from torch import nn

from .dose import masked_mse

__all__ = ["cascade_loss", "CascadeLoss", "DEEP_SUPERVISION_WEIGHTS"]

#: Deep-supervision weights (stage 1, stage 2) of the DOSELO reference code.
DEEP_SUPERVISION_WEIGHTS = (0.5, 1.0)


def cascade_loss(outputs: Sequence[torch.Tensor], target: torch.Tensor, mask=None,
                 weights: Sequence[float] = DEEP_SUPERVISION_WEIGHTS) -> torch.Tensor:
    r"""Deep-supervision loss of the cascade: :math:`\sum_k w_k\,\mathrm{MSE}_M(\hat D^{(k)}, D)`.

    .. math:: \mathcal L_{DS} = 0.5\,\mathrm{MSE}_M(\hat D^{(1)}, D) + \mathrm{MSE}_M(\hat D^{(2)}, D)

    with the default weights of the DOSELO reference code (Rüfenacht et al.
    2023; the paper itself says only "a linear combination of L2-losses").
    :math:`\mathrm{MSE}_M` averages over all mask voxels of the batch (voxels
    pooled, as the reference code does); without a mask, over all voxels.

    Parameters
    ----------
    outputs : sequence of tensors
        Stage outputs ``(stage1, stage2, ...)``, each shaped like ``target``.
    target : tensor
        Reference dose ``B x 1 x spatial``.
    mask : tensor, optional
        Possible-dose mask ``B x 1 x spatial`` or ``B x spatial`` (bool or 0/1).
    weights : sequence of float
        One non-negative weight per stage.
    """
    if isinstance(outputs, torch.Tensor) or not isinstance(outputs, (tuple, list)):
        raise TypeError("outputs must be the tuple of stage outputs returned by CascadeUNet(return_stages=True)")
    if len(weights) != len(outputs):
        raise ValueError(f"got {len(outputs)} stage outputs but {len(weights)} weights; give one weight per stage")
    for w in weights:
        if isinstance(w, bool) or not isinstance(w, numbers.Real) or not w >= 0 or w == float("inf"):
            raise ValueError(f"deep-supervision weights must be finite numbers >= 0, got {list(weights)}")
    total = 0.0
    for w, out in zip(weights, outputs):
        total = total + float(w) * masked_mse(out, target, mask, batch_reduction="voxel")
    return total


class CascadeLoss(nn.Module):
    """Module form of :func:`cascade_loss`; use ``rtlearn.train.on_keys(CascadeLoss(), "target", mask="mask")``."""

    def __init__(self, weights: Sequence[float] = DEEP_SUPERVISION_WEIGHTS):
        super().__init__()
        self.weights = tuple(weights)

    def forward(self, outputs, target, mask=None):
        return cascade_loss(outputs, target, mask, self.weights)
