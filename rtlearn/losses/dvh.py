"""Differentiable dose-volume histogram and the DVH loss of DeepDoseNet.

Differentiable DVH (Nguyen et al., Med Phys 2020)
--------------------------------------------------
The exact cumulative DVH of structure ``s`` at threshold ``d_t`` is the fraction
of its voxels with dose ``>= d_t``, a step function of the dose. It is relaxed to

.. math::

    \\widetilde{DVH}_s(D, d_t) = \\frac{1}{|s|}\\sum_{i \\in s} \\sigma\\Big(\\frac{(D_i - d_t)\\,m}{b}\\Big),

with ``sigma`` the logistic function, ``b`` the bin width (spacing of the
thresholds) and ``m`` a steepness factor. **Our choice:** ``m = 1`` by default
(the sigmoid rises from 0.12 to 0.88 within ``+-2 b`` of the threshold), 64
thresholds evenly spaced over 0-80 Gy (``b = 1.27`` Gy, covering OpenKBP doses);
all three are arguments. As ``m`` grows the relaxation converges to the exact DVH
(at thresholds not equal to a voxel dose).

DVH loss (Soomro et al., DeepDoseNet)
-------------------------------------
.. math::

    L_{DVH} = \\frac{1}{n_s}\\frac{1}{n_t}\\sum_s\\sum_t
    \\big|\\widetilde{DVH}_s(D^{true}, d_t) - \\widetilde{DVH}_s(D^{pred}, d_t)\\big|,

over the ``n_s`` structures present for each patient and the ``n_t`` thresholds,
averaged over patients (the DVH-loss equation of Soomro et al.; L1 as in that paper).

Memory
------
Only each structure's voxels are evaluated: the voxels of every (patient,
structure) pair are gathered into one flat vector, and the sigmoid over
``(voxels x thresholds)`` is evaluated in chunks of voxels by a custom autograd
function that recomputes it in the backward pass, so the extra memory is
``O(chunk x n_bins)`` plus the gathered voxels -- never a dense
``S x n_bins x Z x Y x X`` tensor.
"""
from __future__ import annotations

import numbers

import numpy as np
import torch
from torch import nn

from ._checks import check_finite, check_positive_number, check_tensor, zero_loss
from .dose import masked_mae

__all__ = ["dvh_thresholds", "soft_dvh", "dvh_loss", "DVHLoss", "mae_plus_dvh_loss", "MAEPlusDVHLoss"]

DEFAULT_BINS = 64
DEFAULT_RANGE = (0.0, 80.0)
#: Number of (voxel x threshold) sigmoid values evaluated at once.
DEFAULT_CHUNK_ELEMENTS = 2 ** 22


def dvh_thresholds(bins=DEFAULT_BINS, dose_range=DEFAULT_RANGE, bin_width=None, dtype=torch.float32, device=None):
    """Dose thresholds ``d_t`` and bin width ``b`` of the relaxed DVH.

    Parameters
    ----------
    bins : int or array-like
        Number of thresholds evenly spaced over ``dose_range`` (inclusive), or the
        thresholds themselves (Gy; 1-D, finite, strictly increasing).
    dose_range : (float, float)
        ``(low, high)`` in Gy, used when ``bins`` is an int.
    bin_width : float, optional
        ``b`` in Gy; default the mean spacing of the thresholds (required when
        there is a single threshold).

    Returns
    -------
    (torch.Tensor, float)
        Thresholds (1-D) and bin width.
    """
    if isinstance(bins, numbers.Integral) and not isinstance(bins, bool):
        if bins < 1:
            raise ValueError(f"bins must be >= 1, got {bins}")
        lo, hi = (float(v) for v in dose_range)
        if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
            raise ValueError(f"dose_range must be finite (low, high) with high > low, got {dose_range!r}")
        t = torch.linspace(lo, hi, int(bins), dtype=dtype, device=device)
    else:
        arr = bins.detach().cpu().numpy() if isinstance(bins, torch.Tensor) else np.asarray(bins, dtype=float)
        arr = np.asarray(arr, dtype=float)
        if arr.ndim != 1 or arr.size == 0:
            raise ValueError(f"bins must be an int or a non-empty 1-D array of thresholds, got shape {arr.shape}")
        if not np.all(np.isfinite(arr)):
            raise ValueError("bins (thresholds) must be finite")
        if arr.size > 1 and np.any(np.diff(arr) <= 0):
            raise ValueError("bins (thresholds) must be strictly increasing")
        t = torch.as_tensor(arr, dtype=dtype, device=device)
    if bin_width is None:
        if t.numel() < 2:
            raise ValueError("with a single threshold, bin_width must be given")
        bin_width = float(t[-1] - t[0]) / (t.numel() - 1)
    return t, check_positive_number(bin_width, "bin_width")


class _SegmentSigmoidSum(torch.autograd.Function):
    """``out[k, t] = sum_{i: seg_i = k} sigmoid((v_i - t_t) * scale)``, chunked over voxels.

    The backward pass recomputes the sigmoid chunk by chunk, so nothing of size
    ``voxels x thresholds`` is stored.
    """

    @staticmethod
    def forward(ctx, values, seg, n_seg, thresholds, scale, chunk):
        out = values.new_zeros(n_seg, thresholds.numel())
        for start in range(0, values.numel(), chunk):
            v = values[start:start + chunk]
            s = torch.sigmoid((v[:, None] - thresholds[None, :]) * scale)
            out.index_add_(0, seg[start:start + chunk], s)
        ctx.save_for_backward(values, seg, thresholds)
        ctx.scale, ctx.chunk = scale, chunk
        return out

    @staticmethod
    def backward(ctx, grad_out):
        values, seg, thresholds = ctx.saved_tensors
        grad_v = None
        if ctx.needs_input_grad[0]:
            grad_v = torch.empty_like(values)
            for start in range(0, values.numel(), ctx.chunk):
                v = values[start:start + ctx.chunk]
                s = torch.sigmoid((v[:, None] - thresholds[None, :]) * ctx.scale)
                g = grad_out[seg[start:start + ctx.chunk]]
                grad_v[start:start + ctx.chunk] = (s * (1.0 - s) * g).sum(1) * ctx.scale
        return grad_v, None, None, None, None, None


def _chunk(chunk_size, n_bins):
    if chunk_size is None:
        return max(1024, DEFAULT_CHUNK_ELEMENTS // max(1, n_bins))
    if not isinstance(chunk_size, numbers.Integral) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int (voxels per chunk), got {chunk_size!r}")
    return int(chunk_size)


def _segment_dvh(values, seg, n_seg, t, scale, chunk):
    counts = torch.bincount(seg, minlength=n_seg).to(values.dtype)
    sums = _SegmentSigmoidSum.apply(values, seg, n_seg, t, scale, chunk)
    return sums / counts.clamp_min(1.0)[:, None], counts


def soft_dvh(dose, mask, bins=DEFAULT_BINS, steepness: float = 1.0, dose_range=DEFAULT_RANGE,
             bin_width=None, chunk_size=None):
    """Differentiable cumulative DVH of Nguyen et al. (Med Phys 2020).

    .. math:: \\widetilde{DVH}_s(d_t) = \\frac{1}{|s|}\\sum_{i\\in s}\\sigma\\big((D_i - d_t)\\,m / b\\big)

    Parameters
    ----------
    dose : torch.Tensor
        Dose (Gy), any shape (e.g. ``Z x Y x X``).
    mask : torch.Tensor of bool
        Structure mask of ``dose.shape``, or ``S x dose.shape`` for ``S`` structures.
    bins, dose_range, bin_width
        Thresholds, see :func:`dvh_thresholds` (default 64 over 0-80 Gy).
    steepness : float
        ``m`` (default 1). Larger values approach the exact step-function DVH.
    chunk_size : int, optional
        Voxels per chunk (memory ``chunk_size x n_bins``).

    Returns
    -------
    (torch.Tensor, torch.Tensor)
        Thresholds ``(n_bins,)`` and volume fractions ``(n_bins,)`` or ``(S, n_bins)``,
        differentiable with respect to ``dose``. An empty structure raises ``ValueError``.
    """
    check_tensor(dose, "dose")
    check_finite(dose, "dose")
    m = check_positive_number(steepness, "steepness")
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
    single = tuple(mask.shape) == tuple(dose.shape)
    if not single and tuple(mask.shape[1:]) != tuple(dose.shape):
        raise ValueError(f"mask has shape {tuple(mask.shape)}; expected {tuple(dose.shape)} or (S, *{tuple(dose.shape)})")
    mk = mask.reshape(1, -1) if single else mask.reshape(mask.shape[0], -1)
    if mk.dtype != torch.bool:
        if not bool(((mk == 0) | (mk == 1)).all()):
            raise ValueError("mask must be boolean (0/1)")
        mk = mk.bool()
    counts = mk.sum(1)
    if bool((counts == 0).any()):
        raise ValueError(f"structure(s) {torch.nonzero(counts == 0).flatten().tolist()} are empty; a DVH needs >= 1 voxel")
    t, b = dvh_thresholds(bins, dose_range, bin_width, dose.dtype, dose.device)
    idx = mk.nonzero()
    values = dose.reshape(-1)[idx[:, 1]]
    dvh, _ = _segment_dvh(values, idx[:, 0], mk.shape[0], t, m / b, _chunk(chunk_size, t.numel()))
    return t, (dvh[0] if single else dvh)


def _spatial_layout(pred, structures):
    B = pred.shape[0]
    if structures.dim() >= 3 and structures.shape[0] == B:
        if tuple(structures.shape[2:]) == tuple(pred.shape[1:]):
            return pred.reshape(B, -1)
        if pred.dim() >= 2 and pred.shape[1] == 1 and tuple(structures.shape[2:]) == tuple(pred.shape[2:]):
            return pred.reshape(B, -1)
    raise ValueError(
        f"structures has shape {tuple(structures.shape)}; expected (B, S, *spatial) matching pred "
        f"{tuple(pred.shape)} (pred given as B x spatial or B x 1 x spatial)"
    )


def dvh_loss(pred, target, structures, available=None, bins=DEFAULT_BINS, steepness: float = 1.0,
             dose_range=DEFAULT_RANGE, bin_width=None, chunk_size=None):
    """DVH loss of Soomro et al. (DeepDoseNet) on the relaxed DVH of Nguyen et al. 2020.

    .. math::

        L_{DVH} = \\frac{1}{n_s}\\frac{1}{n_t}\\sum_s\\sum_t
        \\big|\\widetilde{DVH}_s(D^{true}, d_t) - \\widetilde{DVH}_s(D^{pred}, d_t)\\big|

    Parameters
    ----------
    pred, target : torch.Tensor
        Predicted and true doses (Gy), ``B x spatial`` or ``B x 1 x spatial``.
        ``target`` gets no gradient. NaN/inf values raise ``ValueError``.
    structures : torch.Tensor of bool
        ``B x S x spatial`` structure masks.
    available : torch.Tensor of bool, optional
        ``B x S`` flags; structures flagged False are skipped (as are empty masks).
    bins, steepness, dose_range, bin_width, chunk_size
        See :func:`soft_dvh`.

    Returns
    -------
    torch.Tensor
        Scalar: per patient the mean over present structures and thresholds, then
        the mean over patients with at least one present structure; 0 (connected to
        the graph) when no structure is present anywhere. Never NaN.
    """
    check_tensor(pred, "pred")
    check_tensor(target, "target")
    if tuple(pred.shape) != tuple(target.shape):
        raise ValueError(f"pred has shape {tuple(pred.shape)} but target has shape {tuple(target.shape)}")
    check_finite(pred, "pred")
    check_finite(target, "target")
    m = check_positive_number(steepness, "steepness")
    if not isinstance(structures, torch.Tensor):
        raise TypeError(f"structures must be a torch.Tensor, got {type(structures).__name__}")
    P = _spatial_layout(pred, structures)
    T = target.detach().reshape(P.shape)
    B, S = structures.shape[:2]
    M = structures.reshape(B, S, -1)
    if M.dtype != torch.bool:
        if not bool(((M == 0) | (M == 1)).all()):
            raise ValueError("structures must be boolean (0/1)")
        M = M.bool()
    idx = M.nonzero()
    if available is not None:
        if not isinstance(available, torch.Tensor) or tuple(available.shape) != (B, S):
            raise ValueError(f"available must be a bool tensor of shape {(B, S)}")
        idx = idx[available.bool().to(idx.device)[idx[:, 0], idx[:, 1]]]
    if idx.shape[0] == 0:
        return zero_loss(pred)
    t, b = dvh_thresholds(bins, dose_range, bin_width, pred.dtype, pred.device)
    chunk = _chunk(chunk_size, t.numel())
    seg = idx[:, 0] * S + idx[:, 1]
    dvh_pred, counts = _segment_dvh(P[idx[:, 0], idx[:, 2]], seg, B * S, t, m / b, chunk)
    with torch.no_grad():
        dvh_true, _ = _segment_dvh(T[idx[:, 0], idx[:, 2]], seg, B * S, t, m / b, chunk)
    present = (counts > 0).reshape(B, S)
    per_struct = (dvh_true - dvh_pred).abs().mean(1).reshape(B, S)
    per_struct = torch.where(present, per_struct, torch.zeros((), dtype=per_struct.dtype, device=per_struct.device))
    n_s = present.sum(1)
    has = n_s > 0
    per_patient = per_struct.sum(1)[has] / n_s[has].to(per_struct.dtype)
    return per_patient.mean()


class DVHLoss(nn.Module):
    """Module form of :func:`dvh_loss`; ``forward(pred, target, structures, available=None)``."""

    def __init__(self, bins=DEFAULT_BINS, steepness: float = 1.0, dose_range=DEFAULT_RANGE, bin_width=None,
                 chunk_size=None):
        super().__init__()
        dvh_thresholds(bins, dose_range, bin_width)  # validate early
        self.kwargs = dict(bins=bins, steepness=check_positive_number(steepness, "steepness"),
                           dose_range=dose_range, bin_width=bin_width, chunk_size=chunk_size)

    def forward(self, pred, target, structures, available=None):
        return dvh_loss(pred, target, structures, available, **self.kwargs)

    def extra_repr(self) -> str:
        kw = self.kwargs
        bins = kw["bins"] if isinstance(kw["bins"], numbers.Integral) else f"<{len(kw['bins'])} thresholds>"
        out = f"bins={bins}, steepness={kw['steepness']:g}, dose_range={tuple(kw['dose_range'])}"
        return out + (f", bin_width={kw['bin_width']:g}" if kw["bin_width"] is not None else "")


def _check_weight(weight) -> float:
    if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not np.isfinite(weight) or weight < 0:
        raise ValueError(f"weight must be a finite number >= 0, got {weight!r}")
    return float(weight)


def mae_plus_dvh_loss(pred, target, dose_mask, structures, available=None, weight: float = 1.0,
                      batch_reduction: str = "sample", **dvh_kwargs):
    """The hybrid loss of Soomro et al. (DeepDoseNet): masked MAE plus ``weight`` times the DVH loss.

    .. math:: L = \\mathrm{MAE}_{M_d}(D^{pred}, D^{true}) + w\\, L_{DVH}

    with the MAE over the possible-dose mask :math:`M_d`
    (:func:`~rtlearn.losses.dose.masked_mae`) and :math:`L_{DVH}` of :func:`dvh_loss`.

    Parameters
    ----------
    pred, target : torch.Tensor
        Predicted and true doses (Gy), ``B x 1 x spatial`` (or ``B x spatial``).
    dose_mask : torch.Tensor of bool
        Possible-dose mask :math:`M_d` (see :func:`~rtlearn.losses.dose.masked_mae`).
    structures, available
        Structure masks ``B x S x spatial`` and optional ``B x S`` flags (see :func:`dvh_loss`).
    weight : float
        ``w >= 0`` (the paper's text gives no value). ``0`` gives the MAE alone
        (the DVH term is then not evaluated).
    batch_reduction : str
        For the MAE term, see :func:`~rtlearn.losses.dose.masked_mae`.
    **dvh_kwargs
        Passed to :func:`dvh_loss` (bins, steepness, dose_range, bin_width, chunk_size).

    Returns
    -------
    torch.Tensor
        Scalar loss (Gy when the DVH term is weighted in Gy, e.g. ``w = 80`` for 0-80 Gy).
    """
    weight = _check_weight(weight)
    mae = masked_mae(pred, target, dose_mask, batch_reduction)
    if weight == 0:
        return mae
    return mae + weight * dvh_loss(pred, target, structures, available, **dvh_kwargs)


class MAEPlusDVHLoss(nn.Module):
    """Module form of :func:`mae_plus_dvh_loss`, the hybrid loss of Soomro et al. (DeepDoseNet).

    .. math:: L = \\mathrm{MAE}_{M_d}(D^{pred}, D^{true}) + w\\, L_{DVH}

    Parameters
    ----------
    weight : float
        ``w >= 0`` (default 1; the paper's text gives no value).
    batch_reduction : str
        For the MAE term, see :func:`~rtlearn.losses.dose.masked_mae`.
    **dvh_kwargs
        Passed to :func:`dvh_loss` (bins, steepness, dose_range, bin_width, chunk_size).

    ``forward(pred, target, dose_mask, structures, available=None)``.
    """

    def __init__(self, weight: float = 1.0, batch_reduction: str = "sample", **dvh_kwargs):
        super().__init__()
        self.weight = _check_weight(weight)
        self.batch_reduction = batch_reduction
        self.dvh = DVHLoss(**dvh_kwargs)

    def forward(self, pred, target, dose_mask, structures, available=None):
        return mae_plus_dvh_loss(pred, target, dose_mask, structures, available, weight=self.weight,
                                 batch_reduction=self.batch_reduction, **self.dvh.kwargs)

    def extra_repr(self) -> str:
        return f"weight={self.weight:g}, batch_reduction={self.batch_reduction!r}"
