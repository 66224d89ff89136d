"""Region-specific and adaptive region-specific losses (Chen et al., TPAMI 2023).

The volume is split into a grid of ``K`` blocks per axis (the division
coefficient DC; ``K = 16`` in the paper, i.e. 16 x 16 x 16 sub-regions in 3D;
``K = 1`` is the global loss). One loss per sub-region and class is computed and
the sub-region losses are **summed** by default, as Eq. (4) writes (so the scale
grows with the number of sub-regions); ``region_reduction="mean"`` averages them
instead. Batch elements and classes are then reduced with ``reduction``
(default ``"mean"`` over the (element, class) pairs that have at least one
counted sub-region).

Choices (all arguments):

* classes absent from a sub-region's ground truth are **skipped** there
  (``skip_absent=True``), as the paper states it does;
* sizes not divisible by ``K`` use **uneven blocks** (index ``i`` of an axis of
  length ``n`` goes to block ``floor(i K / n)``; sizes differ by at most one voxel,
  no padding); ``K`` larger than an axis raises ``ValueError``;
* the sums are done by reshaping into blocks (or ``index_add`` for uneven
  blocks), never by a Python loop over sub-regions;
* in the adaptive loss, ``alpha`` and ``beta`` are **detached** by default
  (``detach_weights=True``): the paper describes them as penalty weights set from
  the current prediction, not as terms to optimise; letting gradient flow through
  them would also reward the network for shifting the FP/FN balance itself.

The paper trains with the region terms *added* to its baseline (Dice + CE,
Eq. (9)): ``B + RS`` and ``B + ARS`` of its Sec. 4. :class:`SumOfLosses` is that
sum as one module, e.g. ``SumOfLosses(DiceCELoss(), RegionSpecificLoss(16))``.
"""
from __future__ import annotations

import math
import numbers

import torch
from torch import nn

from ._checks import check_nonnegative_number, check_tensor
from ._seg import check_eps, dice_terms, parse_grid, prepare, reduce_losses, tversky_counts, tversky_from_counts
from ._seg import region_sum as _region_sum
from .overlap import _Base

__all__ = [
    "region_sum", "region_specific_loss", "adaptive_tversky_weights", "adaptive_region_specific_loss",
    "RegionSpecificLoss", "AdaptiveRegionSpecificLoss", "sum_of_losses", "SumOfLosses",
]


def region_sum(x: torch.Tensor, grid=16) -> torch.Tensor:
    """Sum a tensor over the sub-regions of a grid: the block sums behind the region losses.

    The spatial axes of ``x`` (``B x C x spatial``, 2D or 3D) are cut into ``grid``
    blocks per axis (the division coefficient DC of Chen et al. 2023) and every block
    is summed, giving ``B x C x K1 x K2 (x K3)``. The region losses are ratios of such
    sums: :func:`region_specific_loss` uses the block sums of ``p g``, ``p^2`` and
    ``g^2``; :func:`adaptive_region_specific_loss` those of TP, FP and FN.

    Parameters
    ----------
    x : torch.Tensor
        ``B x C x spatial`` (at least one spatial axis).
    grid : int or sequence of int
        Blocks per spatial axis (default 16); ``1`` sums the whole volume.
        When an axis of length ``n`` is not divisible by its ``K``, voxel ``i``
        goes to block ``floor(i K / n)``: blocks differ by at most one voxel and
        none is empty. A ``K`` larger than its axis raises ``ValueError``.

    Returns
    -------
    torch.Tensor
        ``B x C x K1 x K2 (x K3)``, differentiable. Divisible axes are summed
        through a reshape, others with ``index_add``; there is no loop over blocks.

    Examples
    --------
    >>> x = torch.arange(16.).reshape(1, 1, 4, 4)
    >>> region_sum(x, 2)[0, 0]
    tensor([[10., 18.],
            [42., 50.]])
    """
    check_tensor(x, "x")
    if x.dim() < 3:
        raise ValueError(f"x must be B x C x spatial (>= 3 axes), got shape {tuple(x.shape)}")
    return _region_sum(x, parse_grid(grid, x.shape[2:]))


def region_specific_loss(pred, target, grid=16, *, softmax: bool = False, include_background: bool = True,
                         eps: float = 1e-7, region_reduction: str = "sum", reduction: str = "mean",
                         skip_absent: bool = True, validate: bool = True):
    """Region-specific Dice loss, Eq. (4) of Chen et al. 2023.

    .. math::

        L_{RS} = \\sum_k \\Big(1 - \\frac{2\\sum_{i\\in V_k} p_i g_i + \\varepsilon}
        {\\sum_{i\\in V_k} p_i^2 + \\sum_{i\\in V_k} g_i^2 + \\varepsilon}\\Big)

    per batch element and class, over the sub-regions ``V_k`` of a ``grid``.

    Parameters
    ----------
    pred, target, softmax, include_background, eps, validate
        As in :func:`rtlearn.losses.overlap.dice_loss`.
    grid : int or sequence of int
        Blocks per spatial axis (DC; default 16). ``1`` gives the global Dice loss.
    region_reduction : {"sum", "mean", "none"}
        Over sub-regions (default "sum", Eq. (4)). ``"none"`` (with
        ``reduction="none"``) returns the ``B x C x K1 x K2 (x K3)`` map.
    reduction : {"mean", "sum", "none"}
        Over (batch, class) pairs.
    skip_absent : bool
        Skip (class, sub-region) pairs with no ground-truth voxel (default True, as the paper).

    Returns
    -------
    torch.Tensor
        Scalar, ``B x C`` or the per-region map; skipped terms count as 0. Never NaN.
    """
    eps = check_eps(eps)
    p, g = prepare(pred, target, softmax, include_background, validate=validate)
    ks = parse_grid(grid, p.shape[2:])
    L, present = dice_terms(p, g, ks, eps)
    return reduce_losses(L, present if skip_absent else None, region_reduction, reduction)


def _adaptive(tp, fp, fn, A, B, eps):
    denom = fp + fn + eps
    return A + B * (fp + eps) / denom, A + B * (fn + eps) / denom


def adaptive_tversky_weights(pred, target, grid=16, A: float = 0.3, B: float = 0.4, *, softmax: bool = False,
                             include_background: bool = True, eps: float = 1e-7, validate: bool = True):
    """Adaptive Tversky weights per sub-region and class, Eqs. (7)-(8) of Chen et al. 2023.

    .. math::

        \\alpha_k = A + B\\,\\frac{FP_k + \\varepsilon}{FP_k + FN_k + \\varepsilon}, \\qquad
        \\beta_k = A + B\\,\\frac{FN_k + \\varepsilon}{FP_k + FN_k + \\varepsilon}

    with soft ``FP_k = sum p (1 - g)`` and ``FN_k = sum (1 - p) g`` over sub-region
    ``V_k``. Both lie in ``[A, A + B]`` (0.3 and 0.4 in the paper). When
    ``FP = FN >> eps`` both are ``A + B/2`` (Dice-like); in a perfectly predicted
    sub-region (``FP = FN = 0``) the formula gives ``A + B`` for both (the
    Tversky loss there is ~0 anyway).

    Returns
    -------
    (torch.Tensor, torch.Tensor)
        ``alpha``, ``beta``: ``B x C x K1 x K2 (x K3)``, detached (for figures).
    """
    eps = check_eps(eps)
    A = check_nonnegative_number(A, "A")
    B = check_nonnegative_number(B, "B")
    with torch.no_grad():
        p, g = prepare(pred, target, softmax, include_background, validate=validate)
        ks = parse_grid(grid, p.shape[2:])
        tp, fp, fn = tversky_counts(p, g, ks)
        return _adaptive(tp, fp, fn, A, B, eps)


def adaptive_region_specific_loss(pred, target, grid=16, A: float = 0.3, B: float = 0.4, *,
                                  detach_weights: bool = True, softmax: bool = False,
                                  include_background: bool = True, eps: float = 1e-7,
                                  region_reduction: str = "sum", reduction: str = "mean",
                                  skip_absent: bool = True, validate: bool = True):
    """Adaptive region-specific loss, Eqs. (6)-(8) of Chen et al. 2023.

    .. math::

        L_{ARS} = \\sum_k \\Big(1 - \\frac{TP_k + \\varepsilon}
        {TP_k + \\alpha_k FP_k + \\beta_k FN_k + \\varepsilon}\\Big)

    with ``alpha_k``, ``beta_k`` from :func:`adaptive_tversky_weights`.

    Parameters
    ----------
    grid, region_reduction, reduction, skip_absent
        As in :func:`region_specific_loss`.
    A, B : float
        Range ``[A, A + B]`` of the weights (0.3, 0.4 in the paper).
    detach_weights : bool
        Treat ``alpha``/``beta`` as constants (default True; see the module notes).
    """
    eps = check_eps(eps)
    A = check_nonnegative_number(A, "A")
    B = check_nonnegative_number(B, "B")
    p, g = prepare(pred, target, softmax, include_background, validate=validate)
    ks = parse_grid(grid, p.shape[2:])
    tp, fp, fn = tversky_counts(p, g, ks)
    if detach_weights:
        alpha, beta = _adaptive(tp.detach(), fp.detach(), fn.detach(), A, B, eps)
    else:
        alpha, beta = _adaptive(tp, fp, fn, A, B, eps)
    L = tversky_from_counts(tp, fp, fn, alpha, beta, eps)
    return reduce_losses(L, (tp + fn).detach() > 0 if skip_absent else None, region_reduction, reduction)


class RegionSpecificLoss(_Base):
    """Module form of :func:`region_specific_loss` (Eq. (4) of Chen et al. 2023); ``RegionSpecificLoss(grid=16, ...)``."""

    _fn = staticmethod(region_specific_loss)
    _positional = ("grid",)


class AdaptiveRegionSpecificLoss(_Base):
    """Module form of :func:`adaptive_region_specific_loss` (Eqs. (6)-(8) of Chen et al. 2023).

    ``AdaptiveRegionSpecificLoss(grid=16, A=0.3, B=0.4, detach_weights=True, ...)``.
    """

    _fn = staticmethod(adaptive_region_specific_loss)
    _positional = ("grid", "A", "B")



def _check_terms(losses, weights):
    losses = tuple(losses)
    if not losses:
        raise ValueError("give at least one loss to sum")
    for i, f in enumerate(losses):
        if not callable(f):
            raise TypeError(f"loss {i} must be callable (a loss object), got {type(f).__name__}")
    if weights is None:
        return losses, (1.0,) * len(losses)
    weights = tuple(weights)
    if len(weights) != len(losses):
        raise ValueError(f"{len(weights)} weights for {len(losses)} losses; give one weight per loss")
    out = []
    for i, w in enumerate(weights):
        if isinstance(w, bool) or not isinstance(w, numbers.Real) or not math.isfinite(w) or w < 0:
            raise ValueError(f"weight {i} must be a finite number >= 0, got {w!r}")
        out.append(float(w))
    return losses, tuple(out)


def sum_of_losses(pred, target, losses, weights=None):
    """Weighted sum of losses on the same prediction: the paper's ``B + RS`` and ``B + ARS``.

    .. math:: L = \\sum_j w_j L_j(p, g)

    e.g. ``L_{Baseline} + L_{RS}`` (Eqs. (9) and (4) of Chen et al. 2023) with
    ``losses = (DiceCELoss(), RegionSpecificLoss(16))`` and unit weights.

    Parameters
    ----------
    pred, target
        Passed unchanged to every loss.
    losses : sequence of callable
        ``f(pred, target) -> scalar tensor``.
    weights : sequence of float, optional
        One finite weight ``>= 0`` per loss (default: all 1).
    """
    losses, weights = _check_terms(losses, weights)
    total = None
    for f, w in zip(losses, weights):
        term = f(pred, target)
        term = term if w == 1.0 else w * term
        total = term if total is None else total + term
    return total


class SumOfLosses(nn.Module):
    """Module form of :func:`sum_of_losses`: ``SumOfLosses(DiceCELoss(), RegionSpecificLoss(16), weights=(1, 1))``.

    The terms are sub-modules, so ``print`` shows the whole composition.
    """

    def __init__(self, *losses, weights=None):
        super().__init__()
        losses, self.weights = _check_terms(losses, weights)
        self.terms = nn.ModuleList([f if isinstance(f, nn.Module) else _Callable(f) for f in losses])

    def forward(self, pred, target):
        return sum_of_losses(pred, target, self.terms, self.weights)

    def extra_repr(self) -> str:
        return f"weights={self.weights}"


class _Callable(nn.Module):
    """A plain function as a module (so that :class:`SumOfLosses` can hold it)."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, pred, target):
        return self.fn(pred, target)

    def extra_repr(self) -> str:
        return getattr(self.fn, "__name__", repr(self.fn))
