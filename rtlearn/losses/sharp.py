"""Sharp loss for dose prediction (Bai et al. 2021).

The sharp loss is a voxel-weighted mean squared error in which each voxel's
squared error is multiplied by a logistic weight of its *true* normalised dose,

.. math::

    SL = \\frac{1}{n}\\sum_{i=1}^{n} \\sigma\\big(\\gamma (D_i - s)\\big)\\,(Dp_i - D_i)^2,
    \\qquad \\sigma(x) = \\frac{1}{1 + e^{-x}},

Eq. (4) of Bai et al. 2021 (with the sigmoid of their Eq. (3)); ``D`` is the true
dose divided by the normalisation dose (6000 cGy in the paper), ``Dp`` the
predicted dose on the same scale, ``s = 0.03`` the shift and ``gamma >= 0`` the
sharpness (100 was best in the paper). Low-dose voxels receive small weights, so
the many voxels outside the body no longer dominate the loss.

The weight is a function of the ground truth only: it is treated as a constant
(no gradient flows through it, and the target needs none).

The loss is computed and reduced in float32 (float64 for float64 input) whatever
the input dtype (float16, bfloat16 or autocast outputs). The true dose is a
reference dose: NaN, infinite or negative values raise ``ValueError``; the
prediction may be negative. ``shift`` must be a finite number.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ._checks import (
    accumulation_dtype,
    check_finite,
    check_nonnegative_number,
    check_positive_number,
    check_real_number,
    check_reference_dose,
    check_same_shape,
    check_tensor,
    voxel_mask,
    zero_loss,
)

#: Largest true normalised dose accepted before the input is considered un-normalised.
MAX_NORMALISED_DOSE = 3.0

__all__ = ["sharp_weight", "demarcation_dose", "sharp_loss", "sharp_loss_grad", "SharpLoss"]


def sharp_weight(dose, gamma: float = 100.0, shift: float = 0.03):
    """Voxel weight of the sharp loss, ``sigma(gamma * (D - shift))``.

    Eq. (4) of Bai et al. 2021 (the modulating factor built from the sigmoid of
    their Eq. (3)).

    Parameters
    ----------
    dose : torch.Tensor or float or numpy.ndarray
        True dose, normalised (dose / 6000 cGy in the paper).
    gamma : float
        Sharpness, ``gamma >= 0``. ``gamma = 0`` gives the constant weight 0.5.
    shift : float
        Shift of the sigmoid along the normalised-dose axis (0.03 in the paper).

    Returns
    -------
    Same type as ``dose``: the weight in (0, 1) (a tensor keeps its floating
    dtype; an integer tensor gives float32; NumPy input gives float64).

    Raises
    ------
    TypeError
        ``dose`` is boolean or not numeric.
    ValueError
        ``dose`` holds NaN, infinite or negative values; ``gamma`` or ``shift`` is invalid.
    """
    gamma = check_nonnegative_number(gamma, "gamma")
    shift = check_real_number(shift, "shift")
    if isinstance(dose, torch.Tensor):
        if dose.dtype == torch.bool or dose.is_complex():
            raise TypeError(f"dose must be a real numeric tensor of normalised doses, got dtype {dose.dtype}")
        if not torch.is_floating_point(dose):
            dose = dose.to(torch.float32)
        if dose.numel():
            check_reference_dose(dose, "dose")
        return torch.sigmoid((dose - shift) * gamma)
    import numpy as np

    from scipy.special import expit

    from .._validate import as_numpy

    arr = as_numpy(dose, "dose")
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise TypeError(f"dose must be a real number or numeric array of normalised doses, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError("dose contains NaN or infinite value(s); expected finite normalised doses")
    if arr.size and arr.min() < 0:
        raise ValueError(f"dose has negative values (min {arr.min():.4g}); a reference dose must be >= 0")
    return expit((arr - shift) * gamma)


def demarcation_dose(gamma: float = 100.0, level: float = 0.99, shift: float = 0.03, norm_cgy: float = 6000.0) -> float:
    """Dose ``D0`` (cGy) above which the sharp loss is at least ``level`` times the MSE.

    Bai et al. 2021 (Discussion, their Eq. (1) defines ``D0`` by
    ``SL(D0) = 0.99 MSE(D0)``). Solving ``sigma(gamma (D0/norm - shift)) = level``:

    .. math:: D_0 = \\Big(s + \\frac{1}{\\gamma}\\ln\\frac{L}{1 - L}\\Big)\\,N,

    with ``L`` the level and ``N`` the normalisation dose. For ``gamma = 100``,
    ``D0 = 455.71`` cGy, as the paper states.

    Parameters
    ----------
    gamma : float
        Sharpness, must be > 0 (with ``gamma = 0`` the weight never reaches ``level``).
    level : float
        Weight level in (0.5, 1).
    shift : float
        Sigmoid shift in normalised-dose units.
    norm_cgy : float
        Normalisation dose in cGy (6000 in the paper).

    Returns
    -------
    float
        ``D0`` in cGy.
    """
    gamma = check_positive_number(gamma, "gamma")
    norm_cgy = check_positive_number(norm_cgy, "norm_cgy")
    shift = check_real_number(shift, "shift")
    if isinstance(level, bool) or not (0.5 < level < 1.0):
        raise ValueError(f"level must lie in (0.5, 1), got {level!r}")
    return (shift + math.log(level / (1.0 - level)) / gamma) * norm_cgy


def _prepare(pred, target, gamma, mask, shift, norm):
    check_tensor(pred, "pred")
    check_tensor(target, "target")
    check_same_shape(pred, target, "pred", "target")
    gamma = check_nonnegative_number(gamma, "gamma")
    shift = check_real_number(shift, "shift")
    check_finite(pred, "pred")
    check_reference_dose(target, "target")
    dtype = accumulation_dtype(pred, target)
    pred, target = pred.to(dtype), target.detach().to(dtype)
    if norm is not None:
        norm = check_positive_number(norm, "norm")
        pred = pred / norm
        target = target / norm
    else:
        tmax = float(target.max())
        if tmax > MAX_NORMALISED_DOSE:
            raise ValueError(
                f"target has maximum {tmax:.4g}, far above 1: the sharp loss expects doses normalised by the "
                f"normalisation dose (dose / 6000 cGy in Bai et al. 2021). Divide your doses first or pass "
                f"norm=60.0 for doses in Gy (norm=6000.0 for cGy)."
            )
    m = None if mask is None else voxel_mask(mask, pred.shape, "mask")
    return pred, target, gamma, m, shift


def sharp_loss(pred, target, gamma: float = 100.0, mask=None, shift: float = 0.03, norm: float | None = None):
    """Sharp loss, Eq. (4) of Bai et al. 2021.

    .. math:: SL = \\frac{1}{n}\\sum_i \\sigma(\\gamma (D_i - s))\\,(Dp_i - D_i)^2

    Parameters
    ----------
    pred, target : torch.Tensor
        Predicted and true dose, same shape (any, e.g. ``B x 1 x Z x Y x X``).
        By default they must already be normalised (dose / 6000 cGy as in the
        paper); a target with maximum > 3 raises ``ValueError`` (probably Gy or cGy).
    gamma : float
        Sharpness ``>= 0`` (default 100, the paper's best). ``gamma = 0`` gives
        exactly half the MSE; ``gamma -> inf`` gives the MSE summed over voxels
        with ``D > shift`` divided by ``n``.
    mask : torch.Tensor of bool, optional
        Voxels to include (same shape as ``pred``, or ``B x ...`` without the
        channel axis when it has size 1). ``n`` is then the number of mask voxels
        over the whole batch; an empty mask gives a loss of 0.
    shift : float
        Sigmoid shift in normalised-dose units (0.03 in the paper).
    norm : float, optional
        If given, ``pred`` and ``target`` are in absolute units and are divided
        by ``norm`` first (e.g. ``norm=60.0`` for Gy, the paper's 6000 cGy).

    Returns
    -------
    torch.Tensor
        Scalar loss, float32 (float64 for float64 input). The weight is computed
        from ``target`` and carries no gradient.
    """
    pred, target, gamma, m, shift = _prepare(pred, target, gamma, mask, shift, norm)
    w = torch.sigmoid((target - shift) * gamma)
    sq = w * (pred - target) ** 2
    if m is None:
        return sq.mean()
    n = int(m.sum())
    if n == 0:
        return zero_loss(pred)
    return torch.where(m, sq, torch.zeros((), dtype=sq.dtype, device=sq.device)).sum() / n


def sharp_loss_grad(pred, target, gamma: float = 100.0, mask=None, shift: float = 0.03, norm: float | None = None):
    """Analytic gradient of :func:`sharp_loss` with respect to ``pred``.

    Differentiating Eq. (4) of Bai et al. 2021 with the weight held fixed:

    .. math:: \\frac{\\partial SL}{\\partial Dp_i} = \\frac{2}{n}\\, \\sigma(\\gamma(D_i - s))\\,(Dp_i - D_i)

    (zero outside the mask; with ``norm`` the chain rule adds a factor ``1/norm``).

    Parameters
    ----------
    pred, target, gamma, mask, shift, norm
        As in :func:`sharp_loss`.

    Returns
    -------
    torch.Tensor
        Gradient, same shape and dtype as ``pred`` (no graph attached), computed in float32
        (float64 for float64 input).
    """
    check_tensor(pred, "pred")
    out_dtype = pred.dtype
    pred = pred.detach()
    scale = 1.0 if norm is None else 1.0 / check_positive_number(norm, "norm")
    p, t, gamma, m, shift = _prepare(pred, target, gamma, mask, shift, norm)
    w = torch.sigmoid((t - shift) * gamma)
    g = 2.0 * w * (p - t) * scale
    if m is None:
        return (g / p.numel()).to(out_dtype)
    n = int(m.sum())
    if n == 0:
        return torch.zeros_like(pred)
    return (torch.where(m, g, torch.zeros((), dtype=g.dtype, device=g.device)) / n).to(out_dtype)


class SharpLoss(nn.Module):
    """Sharp loss module, Eq. (4) of Bai et al. 2021.

    Parameters
    ----------
    gamma : float
        Sharpness ``>= 0`` (default 100).
    shift : float
        Sigmoid shift, normalised-dose units (default 0.03).
    norm : float, optional
        Normalisation dose in the input's units (``None``: inputs already normalised).

    ``forward(pred, target, mask=None)`` returns :func:`sharp_loss`.
    """

    def __init__(self, gamma: float = 100.0, shift: float = 0.03, norm: float | None = None):
        super().__init__()
        self.gamma = check_nonnegative_number(gamma, "gamma")
        self.shift = check_real_number(shift, "shift")
        self.norm = None if norm is None else check_positive_number(norm, "norm")

    def forward(self, pred, target, mask=None):
        return sharp_loss(pred, target, self.gamma, mask=mask, shift=self.shift, norm=self.norm)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, shift={self.shift}, norm={self.norm}"
