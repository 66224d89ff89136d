"""Global overlap losses for multi-class segmentation (Chen et al., TPAMI 2023, and the losses it compares).

Inputs (all functions): ``pred`` = ``B x C x spatial`` probabilities (softmax
already applied) or logits with ``softmax=True``; ``target`` = one-hot
``B x C x spatial`` or integer labels ``B x spatial``. 2D and 3D alike.
Probabilities outside [0, 1], labels outside ``0..C-1``, NaN/inf or mismatched
shapes raise ``ValueError``. Losses are computed per (batch element, class) and
then reduced with ``reduction`` = ``"mean"`` (default, as MONAI) | ``"sum"`` |
``"none"`` (a ``B x C`` tensor).

Note on Eq. (9) of Chen et al.: it sums the Dice loss over classes (use
``reduction="sum"`` with batch size 1 for that) and writes the cross-entropy as
a sum over voxels; we average the cross-entropy over voxels (the usual
convention), so that ``lam`` does not scale with the volume size.

Every sum is taken in float32 (float64 for float64 input): float16/bfloat16
probabilities or logits (mixed precision) are cast up first, so that voxel
counts above 65,504 and class weights :math:`1/(\\sum g)^2` stay exact enough.
The returned losses are float32 (float64 for float64 input).
"""
from __future__ import annotations

import numbers

import torch
from torch import nn

from ._checks import check_choice, check_nonnegative_number, check_positive_number
from ._seg import REDUCTIONS, check_eps, dice_terms, prepare, reduce_losses, region_sum, tversky_counts, tversky_from_counts

__all__ = [
    "dice_loss", "cross_entropy_loss", "dice_ce_loss", "tversky_loss", "focal_tversky_loss",
    "generalized_dice_loss", "sensitivity_specificity_loss",
    "DiceLoss", "CrossEntropyLoss", "DiceCELoss", "TverskyLoss", "FocalTverskyLoss",
    "GeneralizedDiceLoss", "SensitivitySpecificityLoss",
]


def _ones(nd):
    return (1,) * nd


def dice_loss(pred, target, *, softmax: bool = False, include_background: bool = True, eps: float = 1e-7,
              reduction: str = "mean", skip_absent: bool = False, validate: bool = True):
    """Soft Dice loss with a squared-sum denominator, Eq. (2) of Chen et al. 2023.

    .. math:: L_{Dice} = 1 - \\frac{2\\sum_i p_i g_i + \\varepsilon}{\\sum_i p_i^2 + \\sum_i g_i^2 + \\varepsilon}

    per batch element and class, over the whole volume.

    Parameters
    ----------
    pred : torch.Tensor
        ``B x C x spatial`` probabilities, or logits with ``softmax=True``.
    target : torch.Tensor
        One-hot ``B x C x spatial`` or integer labels ``B x spatial``.
    softmax : bool
        Apply a softmax over the class axis first.
    include_background : bool
        Keep channel 0 (default True, the paper's C includes the background).
    eps : float
        ``epsilon`` (1e-7 in the paper), > 0.
    reduction : {"mean", "sum", "none"}
        Over the (batch, class) pairs.
    skip_absent : bool
        Skip classes absent from an element's ground truth (default False: every
        class counts; an absent class then has loss ~1 if predicted, 0 if not).
    validate : bool
        Check the inputs (ranges, labels, NaN); turn off only for speed.

    Returns
    -------
    torch.Tensor
        Scalar (or ``B x C`` with ``reduction="none"``). Equals MONAI's
        ``DiceLoss(squared_pred=True, smooth_nr=eps, smooth_dr=eps)``.
    """
    eps = check_eps(eps)
    p, g = prepare(pred, target, softmax, include_background, validate=validate)
    L, present = dice_terms(p, g, _ones(p.dim() - 2), eps)
    return reduce_losses(L, present if skip_absent else None, "sum", reduction)


def _ce_from(pred, g, softmax, eps, reduction):
    pred = pred.to(g.dtype)  # the accumulation dtype chosen by prepare
    if softmax:
        logp = torch.log_softmax(pred, dim=1)
    else:
        logp = torch.log(pred.clamp_min(eps))
    ce = -(g * logp).sum(1)
    per = ce.reshape(ce.shape[0], -1).mean(1)
    check_choice(reduction, "reduction", REDUCTIONS)
    if reduction == "none":
        return per
    return per.mean() if reduction == "mean" else per.sum()


def cross_entropy_loss(pred, target, *, softmax: bool = False, eps: float = 1e-7, reduction: str = "mean",
                       validate: bool = True):
    """Cross-entropy, the CE term of Eq. (9) of Chen et al. 2023, averaged over voxels.

    .. math:: L_{CE} = -\\frac{1}{|V|}\\sum_{i\\in V}\\sum_{j\\in C} g_{ij}\\log p_{ij}

    Parameters
    ----------
    pred, target, softmax
        As in :func:`dice_loss`. Probabilities must also sum to 1 over classes.
        With ``softmax=True`` a log-softmax is used (stable).
    eps : float
        Probabilities are clamped to ``>= eps`` before the log (finite loss at p = 0).
    reduction : {"mean", "sum", "none"}
        Over the batch (``"none"``: one value per element).
    """
    eps = check_eps(eps)
    _, g = prepare(pred, target, softmax, True, require_simplex=True, validate=validate)
    return _ce_from(pred, g, softmax, eps, reduction)


def _as_one_volume(p: torch.Tensor) -> torch.Tensor:
    """``B x C x spatial`` -> ``1 x C x (B * voxels)``: the batch's elements as one volume."""
    return p.transpose(0, 1).reshape(1, p.shape[1], -1)


def dice_ce_loss(pred, target, lam: float = 1.0, *, softmax: bool = False, include_background: bool = True,
                 eps: float = 1e-7, reduction: str = "mean", batch: bool = False, validate: bool = True):
    """Baseline loss of Chen et al. 2023, Eq. (9): Dice + lambda * cross-entropy.

    .. math:: L_{Baseline} = L_{Dice} + \\lambda L_{CE}

    ``reduction`` applies to the Dice term over (batch, class) and to the CE term
    over the batch; ``reduction="sum"`` sums the Dice losses over classes as Eq. (9)
    writes. ``include_background`` only affects the Dice term.

    ``batch=True`` takes the Dice sums over the whole batch, as if its elements were
    one volume, and skips the classes absent from the whole batch: the 2D form of the
    paper's whole-volume Dice for a batch of slices. Per slice (the default), an organ
    absent from a slice has a Dice loss of ~1 unless its predicted probability is
    exactly 0 there, which on slices that mostly miss the organs rewards predicting
    nothing.
    """
    eps = check_eps(eps)
    lam = check_nonnegative_number(lam, "lam")
    if reduction == "none":
        raise ValueError('dice_ce_loss supports reduction "mean" or "sum"')
    if not isinstance(batch, bool):
        raise ValueError(f"batch must be True or False, got {batch!r}")
    p, g = prepare(pred, target, softmax, True, require_simplex=True, validate=validate)
    pd, gd = (p, g) if include_background else (p[:, 1:], g[:, 1:])
    if batch:
        pd, gd = _as_one_volume(pd), _as_one_volume(gd)
    L, present = dice_terms(pd, gd, _ones(pd.dim() - 2), eps)
    d = reduce_losses(L, present if batch else None, "sum", reduction)
    return d + lam * _ce_from(pred, g, softmax, eps, reduction)


def tversky_loss(pred, target, alpha: float = 0.5, beta: float = 0.5, *, softmax: bool = False,
                 include_background: bool = True, eps: float = 1e-7, reduction: str = "mean",
                 skip_absent: bool = False, validate: bool = True):
    """Tversky loss, Eq. (5) of Chen et al. 2023 (Salehi et al. 2017).

    .. math:: L_{T} = 1 - \\frac{\\sum p g + \\varepsilon}{\\sum p g + \\alpha\\sum p(1-g) + \\beta\\sum(1-p)g + \\varepsilon}

    ``alpha`` weights false positives, ``beta`` false negatives (as MONAI's
    ``TverskyLoss``); ``alpha = beta = 0.5`` gives the (linear) Dice loss.
    Other parameters as in :func:`dice_loss`.
    """
    eps = check_eps(eps)
    alpha = check_nonnegative_number(alpha, "alpha")
    beta = check_nonnegative_number(beta, "beta")
    p, g = prepare(pred, target, softmax, include_background, validate=validate)
    tp, fp, fn = tversky_counts(p, g, _ones(p.dim() - 2))
    L = tversky_from_counts(tp, fp, fn, alpha, beta, eps)
    return reduce_losses(L, (tp + fn).detach() > 0 if skip_absent else None, "sum", reduction)


def focal_tversky_loss(pred, target, alpha: float = 0.3, beta: float = 0.7, gamma: float = 0.75, *,
                       softmax: bool = False, include_background: bool = True, eps: float = 1e-7,
                       reduction: str = "mean", validate: bool = True):
    """Focal Tversky loss (Abraham & Khan 2019), compared in Table 5 of Chen et al. 2023.

    .. math:: L_{FT} = (1 - TI)^{\\gamma}, \\quad TI = \\frac{TP + \\varepsilon}{TP + \\alpha FP + \\beta FN + \\varepsilon}

    with ``alpha`` on false positives and ``beta`` on false negatives (our
    convention, as Eq. (5); Abraham & Khan name them the other way round) and
    ``gamma = 0.75`` (their 1/(4/3)). ``1 - TI`` is clamped at ``eps`` so the
    gradient stays finite when ``gamma < 1``.
    """
    eps = check_eps(eps)
    alpha = check_nonnegative_number(alpha, "alpha")
    beta = check_nonnegative_number(beta, "beta")
    gamma = check_positive_number(gamma, "gamma")
    p, g = prepare(pred, target, softmax, include_background, validate=validate)
    tp, fp, fn = tversky_counts(p, g, _ones(p.dim() - 2))
    L = tversky_from_counts(tp, fp, fn, alpha, beta, eps).clamp_min(eps) ** gamma
    return reduce_losses(L, None, "sum", reduction)


def generalized_dice_loss(pred, target, *, softmax: bool = False, include_background: bool = True,
                          eps: float = 1e-5, reduction: str = "mean", validate: bool = True):
    """Generalised Dice loss (Sudre et al. 2017), compared in Table 5 of Chen et al. 2023.

    .. math::

        L_{GD} = 1 - \\frac{2\\sum_c w_c \\sum_i p_{ic} g_{ic} + \\varepsilon}{\\sum_c w_c \\sum_i (p_{ic} + g_{ic}) + \\varepsilon},
        \\quad w_c = 1 / (\\sum_i g_{ic})^2

    per batch element. A class absent from an element's ground truth (infinite
    weight) gets the largest finite weight of that element, as MONAI's
    ``GeneralizedDiceLoss`` does (and ``eps`` defaults to MONAI's 1e-5).
    ``reduction`` is over the batch; ``"none"`` gives ``B`` values.
    """
    eps = check_eps(eps)
    check_choice(reduction, "reduction", REDUCTIONS)
    p, g = prepare(pred, target, softmax, include_background, validate=validate)
    ones = _ones(p.dim() - 2)
    inter = region_sum(p * g, ones).flatten(1)
    psum = region_sum(p, ones).flatten(1)
    gsum = region_sum(g, ones).flatten(1)
    with torch.no_grad():
        w = 1.0 / (gsum * gsum)
        inf = torch.isinf(w)
        w = torch.where(inf, torch.zeros_like(w), w)
        w = w + inf * w.max(dim=1, keepdim=True).values
    per = 1.0 - (2.0 * (w * inter).sum(1) + eps) / ((w * (psum + gsum)).sum(1) + eps)
    if reduction == "none":
        return per
    return per.mean() if reduction == "mean" else per.sum()


def sensitivity_specificity_loss(pred, target, r: float = 0.05, *, softmax: bool = False,
                                 include_background: bool = True, eps: float = 1e-7, reduction: str = "mean",
                                 validate: bool = True):
    """Sensitivity-specificity loss (Brosch et al. 2015), compared in Table 5 of Chen et al. 2023.

    .. math::

        L_{SS} = r\\,\\frac{\\sum_i (g_i - p_i)^2 g_i}{\\sum_i g_i + \\varepsilon}
        + (1 - r)\\,\\frac{\\sum_i (g_i - p_i)^2 (1 - g_i)}{\\sum_i (1 - g_i) + \\varepsilon}

    per batch element and class; ``r = 0.05`` as Brosch et al. Other parameters as :func:`dice_loss`.
    """
    eps = check_eps(eps)
    if not isinstance(r, numbers.Real) or not (0.0 <= r <= 1.0):
        raise ValueError(f"r must lie in [0, 1], got {r!r}")
    p, g = prepare(pred, target, softmax, include_background, validate=validate)
    ones = _ones(p.dim() - 2)
    d2 = (g - p) ** 2
    d2g = d2 * g
    sens_num = region_sum(d2g, ones)
    spec_num = region_sum(d2 - d2g, ones)
    gsum = region_sum(g, ones)
    n = float(g[0, 0].numel())
    L = r * sens_num / (gsum + eps) + (1.0 - r) * spec_num / ((n - gsum) + eps)
    return reduce_losses(L, None, "sum", reduction)


class _Base(nn.Module):
    _fn = None
    _positional = ()

    def __init__(self, *args, **kwargs):
        super().__init__()
        names = self._positional
        if len(args) > len(names):
            raise TypeError(f"{type(self).__name__} takes at most {len(names)} positional arguments")
        self.kwargs = dict(zip(names, args))
        self.kwargs.update(kwargs)
        # validate the options once on a tiny input
        self._check_options()

    def _check_options(self):
        grid = self.kwargs.get("grid", 1)
        spatial = (max(2, grid),) * 2 if isinstance(grid, numbers.Integral) else tuple(max(2, int(k)) for k in grid)
        probe = torch.full((1, 2) + spatial, 0.5)
        labels = torch.zeros((1,) + spatial, dtype=torch.long)
        labels.view(-1)[0] = 1
        type(self)._fn(probe, labels, **{k: v for k, v in self.kwargs.items() if k not in ("softmax",)})

    def forward(self, pred, target):
        return type(self)._fn(pred, target, **self.kwargs)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())


class DiceLoss(_Base):
    """Module form of :func:`dice_loss` (Eq. (2) of Chen et al. 2023); keyword options as the function."""

    _fn = staticmethod(dice_loss)


class CrossEntropyLoss(_Base):
    """Module form of :func:`cross_entropy_loss` (CE term of Eq. (9) of Chen et al. 2023)."""

    _fn = staticmethod(cross_entropy_loss)


class DiceCELoss(_Base):
    """Module form of :func:`dice_ce_loss` (baseline, Eq. (9) of Chen et al. 2023); ``DiceCELoss(lam=1.0, ...)``."""

    _fn = staticmethod(dice_ce_loss)
    _positional = ("lam",)


class TverskyLoss(_Base):
    """Module form of :func:`tversky_loss` (Eq. (5) of Chen et al. 2023); ``TverskyLoss(alpha, beta, ...)``."""

    _fn = staticmethod(tversky_loss)
    _positional = ("alpha", "beta")


class FocalTverskyLoss(_Base):
    """Module form of :func:`focal_tversky_loss`; ``FocalTverskyLoss(alpha, beta, gamma, ...)``."""

    _fn = staticmethod(focal_tversky_loss)
    _positional = ("alpha", "beta", "gamma")


class GeneralizedDiceLoss(_Base):
    """Module form of :func:`generalized_dice_loss`."""

    _fn = staticmethod(generalized_dice_loss)


class SensitivitySpecificityLoss(_Base):
    """Module form of :func:`sensitivity_specificity_loss`; ``SensitivitySpecificityLoss(r, ...)``."""

    _fn = staticmethod(sensitivity_specificity_loss)
    _positional = ("r",)
