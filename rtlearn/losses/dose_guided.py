r"""DOSELO, the dose-guided segmentation loss (Rüfenacht et al., MICCAI 2023; ``ruefenacht2023doselo``).

A frozen dose predictor :math:`M_D` maps a target mask, the organ-at-risk (OAR)
masks and the CT to a dose. The segmentation network :math:`M_S` is trained so
that the dose predicted for its segmentation :math:`\hat S_T` matches the dose
predicted for the true target :math:`S_T` (Eqs. 1-4 of Rüfenacht et al. 2023):

.. math::

    D_P = M_D(S_T, S_{OR}, I_{CT}), \qquad \hat D_P = M_D(\hat S_T, S_{OR}, I_{CT}),

    L_{DSL} = \frac{1}{N}\sum_{i=1}^{N} \big(D_P^i - \hat D_P^i\big)^2, \qquad
    L_{total} = L_{BCE} + \lambda\, L_{DSL}, \quad \lambda \ge 0 .

**Gradient.** Here :math:`\hat S_T` is the segmentation's *soft* probability
map and it goes through :math:`M_D` with autograd on, so
:math:`\partial L_{DSL}/\partial \hat S_T` reaches :math:`M_S`. The predictor is
*frozen* (eval mode, ``requires_grad=False`` on its parameters; see
:func:`freeze`), which is not the same as ``torch.no_grad()``: the gradient
flows through it to its input but never into its weights. The authors' public
code instead runs both predictions under ``no_grad`` on a thresholded mask
(:math:`\hat S_T \ge 0.5`), so its dose term carries no gradient and training
is effectively BCE alone; ``hard=True`` reproduces that behaviour for
comparison. :math:`D_P` is a constant target, computed without gradient, and
may be precomputed (:func:`true_target_dose`) or cached per batch
(:class:`DoseGuidedLoss`).

**Beyond the paper.** :class:`StraightThroughDoseGuidedLoss` (or
``straight_through=True``) feeds :math:`M_D` the *thresholded* mask in the
forward pass (binary, like its training data) while the gradient flows to the
probabilities as if the mask were soft (:func:`straight_through`). A predictor
trained on binary masks may answer a dimmed mask (probabilities below 0.5)
with nearly the right dose; the soft term then rewards dimming, the
straight-through term charges a dimmed mask what an empty one costs.
:func:`surrogate_guided_loss` (module form :class:`SurrogateGuidedLoss`) replaces the learned :math:`M_D` by a
differentiable physical dose of the target
(:class:`rtlearn.phantom.surrogate.BeamSurrogate`).

**Units and the segmentation term.** ``dose_scale`` divides both doses before
squaring (the prescription: :math:`L_{DSL}` in units of Rx², so that
:math:`\lambda` is comparable with the BCE); ``dice=True`` adds the soft Dice
loss to the BCE, so that a dose-guided loss differs from the BCE + SoftDice
baseline in its dose term alone.

**Masking.** With a possible-dose (body) mask :math:`M`, both doses are
multiplied by it (as the reference code does) and ``average="image"`` keeps
Eq. (1)'s mean over all :math:`N` voxels; ``average="mask"`` divides by the
number of mask voxels instead.

**Baseline.** :func:`bce_soft_dice_loss` is the BCE + SoftDice combination the
paper compares against (nnU-Net's soft Dice, :math:`1 - (2\sum pg + s)/(\sum p
+ \sum g + s)`, computed over the whole batch as in the reference code).

**Precision.** The probabilities are cast to the dtype of the predictor's
parameters before they enter it (so a float16/bfloat16 segmentation can drive a
float32 predictor, and the reverse), and every loss here squares, sums and
averages in float32 (float64 when an input is float64). Both doses of the dose
term are outputs of the same network, so they are predictions: they must be
finite but may be negative.

Input channels of the predictor are assembled as ``[target, OARs..., CT]`` by
default (``order`` changes it; the reference code uses ``("ct", "oars",
"target")``). Shapes: segmentation ``B x 1 x spatial`` (2D or 3D), OARs ``B x K
x spatial`` (masks or a label map), CT ``B x 1 x spatial``.
"""
from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import accumulation_dtype, as_bool_mask, check_choice, check_finite, check_tensor

__all__ = [
    "DEFAULT_ORDER", "freeze", "expected_in_channels", "assemble_dose_input", "predict_dose", "true_target_dose",
    "dose_segmentation_loss", "dose_guided_loss", "DoseGuidedLoss",
    "binary_cross_entropy", "BCELoss", "soft_dice_loss", "bce_soft_dice_loss", "BCESoftDiceLoss",
    "straight_through", "StraightThroughDoseGuidedLoss", "surrogate_guided_loss", "SurrogateGuidedLoss",
]

#: Default channel order of the dose predictor's input.
DEFAULT_ORDER = ("target", "oars", "ct")
_AVERAGES = {"image", "mask"}


# ---------------------------------------------------------------------------------------------------------------
# the frozen predictor
# ---------------------------------------------------------------------------------------------------------------
def freeze(module: nn.Module) -> nn.Module:
    """Freeze a network in place: eval mode and ``requires_grad=False`` on every parameter; returns it.

    Gradients still flow *through* a frozen network to its input (this is not
    ``torch.no_grad()``); its weights get no ``.grad`` and BatchNorm uses its
    running statistics. ``rtlearn.train.Trainer(frozen=[module])`` does the same.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(module).__name__}")
    module.eval()
    module.requires_grad_(False)
    for p in module.parameters():
        p.grad = None  # drop gradients left over from its own training
    return module


def expected_in_channels(predictor: nn.Module):
    """Input channels a predictor expects: its ``in_channels`` attribute, else its first convolution's; or None."""
    n = getattr(predictor, "in_channels", None)
    if isinstance(n, numbers.Integral) and not isinstance(n, bool):
        return int(n)
    for m in predictor.modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            return int(m.in_channels)
    return None


def _check_frozen(predictor: nn.Module) -> None:
    if not isinstance(predictor, nn.Module):
        raise TypeError(f"predictor must be a torch.nn.Module, got {type(predictor).__name__}")
    if predictor.training:
        raise ValueError("the dose predictor is in training mode; DOSELO needs a frozen predictor "
                         "(call rtlearn.losses.dose_guided.freeze(predictor) or pass Trainer(frozen=[predictor]))")
    if any(p.requires_grad for p in predictor.parameters()):
        raise ValueError("the dose predictor has parameters with requires_grad=True; the DOSELO gradient must not "
                         "reach it (call rtlearn.losses.dose_guided.freeze(predictor) or Trainer(frozen=[predictor]))")


def _up(x: torch.Tensor) -> torch.Tensor:
    """``x`` in the accumulation dtype (float32, or float64 for float64 input)."""
    return x.to(accumulation_dtype(x)) if isinstance(x, torch.Tensor) and torch.is_floating_point(x) else x


def _predictor_dtype(predictor: nn.Module, default: torch.dtype) -> torch.dtype:
    """Floating dtype of the predictor's first floating parameter (or buffer); ``default`` if it has none."""
    for t in list(predictor.parameters()) + list(predictor.buffers()):
        if torch.is_floating_point(t):
            return t.dtype
    return default


def _final(out):
    if isinstance(out, (tuple, list)):  # a cascade returns (stage1, stage2): keep the last stage
        if not out:
            raise ValueError("dose predictor returned an empty sequence")
        out = out[-1]
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"dose predictor must return a tensor (or a tuple of stage tensors), got {type(out).__name__}")
    return out


# ---------------------------------------------------------------------------------------------------------------
# shapes
# ---------------------------------------------------------------------------------------------------------------
def _with_channel(x, B, spatial, name):
    """Return ``x`` as ``B x 1 x spatial`` (accepts ``B x spatial``)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if tuple(x.shape) == (B,) + tuple(spatial):
        x = x.unsqueeze(1)
    if tuple(x.shape) != (B, 1) + tuple(spatial):
        raise ValueError(f"{name} has shape {tuple(x.shape)}; expected {(B, 1) + tuple(spatial)} "
                         f"(or {(B,) + tuple(spatial)}) to match the segmentation")
    return x


def _seg(pred, name="segmentation"):
    check_tensor(pred, name)
    if pred.dim() < 3 or pred.shape[1] != 1:
        raise ValueError(f"{name} must be B x 1 x spatial (one foreground channel, 2D or 3D), got shape "
                         f"{tuple(pred.shape)}")
    check_finite(pred, name)
    return pred


def _check_prob(prob, name="probabilities"):
    mn, mx = torch.aminmax(prob.detach())
    if float(mn) < -1e-6 or float(mx) > 1 + 1e-6:
        raise ValueError(f"{name} must lie in [0, 1], found range [{float(mn):.4g}, {float(mx):.4g}]; "
                         "pass logits=True for raw network outputs")


def _target(target, like, name="target"):
    t = _with_channel(target, like.shape[0], like.shape[2:], name)
    return as_bool_mask(t, like.shape, name)


def _dose_mask(mask, like):
    if mask is None:
        return None
    m = _with_channel(mask, like.shape[0], like.shape[2:], "dose_mask")
    return as_bool_mask(m, like.shape, "dose_mask")


def _check_order(order):
    order = tuple(order)
    if sorted(order) != sorted(DEFAULT_ORDER):
        raise ValueError(f"order must be a permutation of {DEFAULT_ORDER}, got {order}")
    return order


def assemble_dose_input(target, oars=None, ct=None, order=DEFAULT_ORDER) -> torch.Tensor:
    """Concatenate the dose predictor's input ``[S_T, S_OR, I_CT]`` along the channel axis.

    Parameters
    ----------
    target : tensor ``B x 1 x spatial``
        Target mask, hard (0/1) or soft (probabilities); its dtype is used for all channels.
    oars : tensor ``B x K x spatial`` or ``B x spatial``, optional
        OAR masks (one channel each) or a label map; ``None`` for none.
    ct : tensor ``B x 1 x spatial`` or ``B x spatial``, optional
        Normalised CT; ``None`` for none.
    order : permutation of ``("target", "oars", "ct")``
        Channel order; missing parts are skipped.

    Returns
    -------
    tensor ``B x (1 + K + 1) x spatial``
    """
    order = _check_order(order)
    if not isinstance(target, torch.Tensor) or target.dim() < 3 or target.shape[1] != 1:
        raise ValueError(f"target must be a B x 1 x spatial tensor, got "
                         f"{tuple(target.shape) if isinstance(target, torch.Tensor) else type(target).__name__}")
    B, spatial = target.shape[0], tuple(target.shape[2:])
    parts = {"target": target}
    if oars is not None:
        if not isinstance(oars, torch.Tensor):
            raise TypeError(f"oars must be a torch.Tensor, got {type(oars).__name__}")
        if tuple(oars.shape) == (B,) + spatial:
            oars = oars.unsqueeze(1)
        if oars.dim() != target.dim() or oars.shape[0] != B or tuple(oars.shape[2:]) != spatial:
            raise ValueError(f"oars has shape {tuple(oars.shape)}; expected (B, K) + spatial = "
                             f"({B}, K) + {spatial} to match the target")
        parts["oars"] = oars.to(target.dtype)
    if ct is not None:
        parts["ct"] = _with_channel(ct, B, spatial, "ct").to(target.dtype)
    for k, v in parts.items():
        if k != "target":
            check_finite(v, k)
    return torch.cat([parts[k] for k in order if k in parts], dim=1)


def _check_channels(predictor, x, oars, ct):
    n = expected_in_channels(predictor)
    if n is not None and n != x.shape[1]:
        k = 0 if oars is None else x.shape[1] - 1 - (ct is not None)
        raise ValueError(
            f"the dose predictor expects {n} input channels but the assembled input has {x.shape[1]} "
            f"(1 target + {k} OAR channel(s) + {int(ct is not None)} CT); give OARs/CT to match how it was trained")


def predict_dose(predictor: nn.Module, x: torch.Tensor, dose_mask=None) -> torch.Tensor:
    """Final dose of ``predictor`` on input ``x`` (last stage of a cascade), times ``dose_mask`` if given."""
    d = _final(predictor(x))
    if d.dim() != x.dim() or d.shape[0] != x.shape[0] or d.shape[2:] != x.shape[2:]:
        raise ValueError(f"dose predictor output has shape {tuple(d.shape)}; expected "
                         f"{(x.shape[0], 1) + tuple(x.shape[2:])} (same batch and grid as its input)")
    if dose_mask is not None:
        d = d * dose_mask.to(d.dtype)
    return d


def true_target_dose(predictor: nn.Module, target, oars=None, ct=None, dose_mask=None,
                     order=DEFAULT_ORDER) -> torch.Tensor:
    r"""The constant target of DOSELO, :math:`D_P = M_D(S_T, S_{OR}, I_{CT})` (Eq. 2), computed without gradient.

    Precompute it once per sample to save one predictor pass per step and pass
    it as ``true_dose`` (the predictor is frozen, so it never changes).
    """
    _check_frozen(predictor)
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    tgt = target if target.dim() >= 3 and target.shape[1] == 1 else target.unsqueeze(1)
    dtype = _predictor_dtype(predictor, torch.float32)
    like = torch.empty(tgt.shape, dtype=dtype, device=tgt.device)
    t = _target(tgt, like).to(dtype)
    m = _dose_mask(dose_mask, like)
    with torch.no_grad():
        x = assemble_dose_input(t, oars, ct, order)
        _check_channels(predictor, x, oars, ct)
        return predict_dose(predictor, x, m).detach()


# ---------------------------------------------------------------------------------------------------------------
# the dose term and the total loss
# ---------------------------------------------------------------------------------------------------------------
def _check_threshold(threshold):
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not 0 < threshold < 1:
        raise ValueError(f"threshold must be a number in (0, 1), got {threshold!r}")
    return float(threshold)


def dose_segmentation_loss(prob, target, predictor: nn.Module, oars=None, ct=None, dose_mask=None, *,
                           hard: bool = False, straight_through: bool = False, threshold: float = 0.5,
                           true_dose=None, average: str = "image", order=DEFAULT_ORDER,
                           dose_scale: float = 1.0) -> torch.Tensor:
    r"""The dose-segmentation loss :math:`L_{DSL}`, Eqs. (1)-(3) of Rüfenacht et al. 2023.

    .. math:: L_{DSL} = \frac{1}{N}\sum_i \Big(\frac{M_D(S_T,\dots)_i - M_D(\hat S_T,\dots)_i}{s}\Big)^2

    with :math:`s` = ``dose_scale`` (1: Gy², as the paper; the prescription: units of Rx², so that
    :math:`\lambda` is comparable with the BCE and Dice terms).

    Parameters
    ----------
    prob : tensor ``B x 1 x spatial``
        Segmentation probabilities :math:`\hat S_T` in [0, 1] (sigmoid applied).
    target : tensor ``B x 1 x spatial`` or ``B x spatial``
        True target :math:`S_T` (bool or 0/1).
    predictor : nn.Module
        Frozen dose predictor :math:`M_D` (see :func:`freeze`); a tuple output
        (cascade) is reduced to its last stage.
    oars, ct : tensors, optional
        :math:`S_{OR}` (``B x K x spatial``) and :math:`I_{CT}` (``B x 1 x spatial``).
    dose_mask : tensor, optional
        Possible-dose mask; both doses are multiplied by it.
    hard : bool
        ``False`` (default): the soft probabilities go through the predictor
        and the loss has a gradient w.r.t. ``prob``. ``True``: the reference
        code's behaviour, ``prob >= threshold`` under ``no_grad``; the returned
        loss then has **no gradient** (``requires_grad`` is False).
    straight_through : bool
        ``True``: the predictor sees the thresholded mask ``prob >= threshold``
        (binary, like its training data) and the gradient reaches ``prob`` as if
        the mask were soft (:func:`straight_through`). Dimming the probabilities
        below the threshold then empties the mask instead of fooling the
        predictor. Not with ``hard``.
    threshold : float
        Threshold of the hard and straight-through modes.
    true_dose : tensor, optional
        Precomputed :math:`D_P` (:func:`true_target_dose`); treated as a constant.
    average : {"image", "mask"}
        Mean over all voxels (Eq. 1) or over the ``dose_mask`` voxels.
    order : permutation of ``("target", "oars", "ct")``
        Channel order of the predictor's input.
    dose_scale : float
        Positive unit :math:`s` of the dose difference (e.g. the prescription in Gy).

    Returns
    -------
    torch.Tensor
        Scalar, in (predictor's dose units / ``dose_scale``)^2 (Gy^2 by default).
    """
    prob = _seg(prob, "prob")
    if hard and straight_through:
        raise ValueError("choose one of hard=True (no gradient) and straight_through=True, not both")
    dose_scale = _check_scale(dose_scale)
    _check_prob(prob, "prob")
    check_choice(average, "average", _AVERAGES)
    threshold = _check_threshold(threshold)
    t = _target(target, prob)
    m = _dose_mask(dose_mask, prob)
    _check_frozen(predictor)
    pdtype = _predictor_dtype(predictor, prob.dtype)
    if true_dose is None:
        x = assemble_dose_input(t.to(pdtype), oars, ct, order)
        _check_channels(predictor, x, oars, ct)
        with torch.no_grad():
            d_true = predict_dose(predictor, x, m)
    else:
        check_tensor(true_dose, "true_dose")
        check_finite(true_dose, "true_dose")
        d_true = true_dose.detach()
    if hard:
        with torch.no_grad():
            x_hat = assemble_dose_input((prob >= threshold).to(pdtype), oars, ct, order)
            _check_channels(predictor, x_hat, oars, ct)
            d_hat = predict_dose(predictor, x_hat, m)
    else:
        s_hat = _straight_through(prob, threshold) if straight_through else prob
        x_hat = assemble_dose_input(s_hat.to(pdtype), oars, ct, order)
        _check_channels(predictor, x_hat, oars, ct)
        d_hat = predict_dose(predictor, x_hat, m)
    if tuple(d_true.shape) != tuple(d_hat.shape):
        raise ValueError(f"true_dose has shape {tuple(d_true.shape)} but the predicted dose has shape "
                         f"{tuple(d_hat.shape)}")
    if not torch.is_floating_point(d_hat):
        raise TypeError(f"the dose predictor must return a floating-point dose, got dtype {d_hat.dtype}")
    dtype = accumulation_dtype(d_true, d_hat)
    sq = ((d_true.to(dtype) - d_hat.to(dtype)) / dose_scale) ** 2
    if average == "mask" and m is not None:
        n = int(m.sum()) * sq.shape[1]
        return sq.sum() / max(n, 1)
    return sq.mean()


def _check_scale(scale) -> float:
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"dose_scale must be a finite number > 0 (e.g. the prescription in Gy), got {scale!r}")
    return float(scale)


def _check_lam(lam):
    if isinstance(lam, bool) or not isinstance(lam, numbers.Real) or lam != lam or lam == float("inf"):
        raise ValueError(f"lam (lambda) must be a finite number >= 0, got {lam!r}")
    if lam < 0:
        raise ValueError(f"lam (lambda) must be >= 0 (a negative weight would reward dose differences), got {lam!r}")
    return float(lam)


def binary_cross_entropy(pred, target, *, logits: bool = True, pos_weight=None) -> torch.Tensor:
    r"""Voxel-mean binary cross-entropy :math:`-\frac1N\sum_i [w\,g_i\log p_i + (1-g_i)\log(1-p_i)]`.

    ``pred``: logits (``logits=True``, numerically stable) or probabilities.
    ``pos_weight`` :math:`w` weights the foreground term (the DOSELO code uses 2).
    """
    pred = _seg(pred, "pred")
    pred = pred.to(accumulation_dtype(pred))
    g = _target(target, pred).to(pred.dtype)
    if pos_weight is not None:
        if isinstance(pos_weight, bool) or not isinstance(pos_weight, numbers.Real) or not pos_weight > 0:
            raise ValueError(f"pos_weight must be a positive number or None, got {pos_weight!r}")
    if logits:
        pw = None if pos_weight is None else torch.tensor(float(pos_weight), dtype=pred.dtype, device=pred.device)
        return F.binary_cross_entropy_with_logits(pred, g, pos_weight=pw)
    _check_prob(pred, "pred")
    w = 1.0 if pos_weight is None else float(pos_weight)
    # log clamped at -100 as torch.nn.functional.binary_cross_entropy does; at p = 0 or 1 exactly (a rounded
    # probability) the clamped term is a constant, so its gradient is 0, not 0 * inf = NaN
    lp = torch.where(pred > 0, torch.log(torch.where(pred > 0, pred, 1.0)).clamp_min(-100.0), -100.0)
    lq = torch.where(pred < 1, torch.log1p(-torch.where(pred < 1, pred, 0.0)).clamp_min(-100.0), -100.0)
    return -(w * g * lp + (1 - g) * lq).mean()


def soft_dice_loss(prob, target, *, batch_dice: bool = True, smooth: float = 1e-5) -> torch.Tensor:
    r"""Binary soft Dice loss :math:`1 - \frac{2\sum_i p_i g_i + s}{\sum_i p_i + \sum_i g_i + s}` (nnU-Net form).

    ``batch_dice=True`` sums over the whole batch (as the DOSELO baseline);
    otherwise per sample, then the mean. The reference code uses ``s = 0``; our
    default ``s = 1e-5`` keeps an empty target and empty prediction at loss 0.
    """
    prob = _seg(prob, "prob")
    _check_prob(prob, "prob")
    if isinstance(smooth, bool) or not isinstance(smooth, numbers.Real) or not smooth >= 0:
        raise ValueError(f"smooth must be a number >= 0, got {smooth!r}")
    prob = prob.to(accumulation_dtype(prob))
    g = _target(target, prob).to(prob.dtype)
    dims = tuple(range(prob.dim())) if batch_dice else tuple(range(1, prob.dim()))
    tp = (prob * g).sum(dims)
    den = prob.sum(dims) + g.sum(dims)
    dc = (2 * tp + smooth) / (den + smooth).clamp_min(1e-8)
    return 1 - dc.mean()


def bce_soft_dice_loss(pred, target, *, logits: bool = True, pos_weight=None, batch_dice: bool = True,
                       smooth: float = 1e-5) -> torch.Tensor:
    """The baseline of Rüfenacht et al. 2023: :math:`L_{BCE} + L_{SoftDice}` (nnU-Net's combination)."""
    bce = binary_cross_entropy(pred, target, logits=logits, pos_weight=pos_weight)
    prob = torch.sigmoid(_up(pred)) if logits else pred
    return bce + soft_dice_loss(prob, target, batch_dice=batch_dice, smooth=smooth)


def dose_guided_loss(pred, target, predictor: nn.Module, oars=None, ct=None, dose_mask=None, *, lam: float = 1.0,
                     logits: bool = True, pos_weight=None, dice: bool = False, hard: bool = False,
                     straight_through: bool = False, threshold: float = 0.5, true_dose=None, average: str = "image",
                     order=DEFAULT_ORDER, dose_scale: float = 1.0, return_terms: bool = False):
    r"""DOSELO's total loss, Eq. (4) of Rüfenacht et al. 2023: :math:`L_{total} = L_{BCE} + \lambda L_{DSL}`.

    With ``dice=True`` the segmentation term is BCE + SoftDice (the paper's
    baseline), so that a comparison with :func:`bce_soft_dice_loss` differs in
    the dose term alone: :math:`L = L_{BCE} + L_{SoftDice} + \lambda L_{DSL}`.

    Parameters
    ----------
    pred : tensor ``B x 1 x spatial``
        Segmentation output: logits (``logits=True``, default) or probabilities.
    target, predictor, oars, ct, dose_mask, hard, straight_through, threshold, true_dose, average, order, dose_scale
        As in :func:`dose_segmentation_loss`.
    lam : float
        :math:`\lambda \ge 0` (the paper uses 1); 0 gives BCE alone and skips the predictor.
    pos_weight : float, optional
        Foreground weight of the BCE (the reference code uses 2).
    dice : bool
        Add the batch soft Dice loss (:func:`soft_dice_loss`) to the BCE.
    return_terms : bool
        Also return ``{"bce": tensor, "dice": tensor, "dsl": tensor}`` (``dice`` is 0 without ``dice=True``).

    Raises
    ------
    ValueError
        ``lam < 0``; ``hard`` and ``straight_through`` together; a predictor not frozen or whose input channels differ from
        ``1 + K + (CT)``; masks whose shape differs from ``pred``.
    """
    lam = _check_lam(lam)
    pred = _seg(pred, "pred")
    if hard and straight_through:
        raise ValueError("choose one of hard=True (no gradient) and straight_through=True, not both")
    _check_scale(dose_scale)
    bce = binary_cross_entropy(pred, target, logits=logits, pos_weight=pos_weight)
    prob = torch.sigmoid(_up(pred)) if logits else pred
    sd = soft_dice_loss(prob, target) if dice else torch.zeros((), dtype=bce.dtype, device=pred.device)
    if lam == 0:
        dsl = torch.zeros((), dtype=bce.dtype, device=pred.device)
    else:
        dsl = dose_segmentation_loss(prob, target, predictor, oars, ct, dose_mask, hard=hard,
                                     straight_through=straight_through, threshold=threshold, true_dose=true_dose,
                                     average=average, order=order, dose_scale=dose_scale)
    total = bce + sd + lam * dsl
    return (total, {"bce": bce, "dice": sd, "dsl": dsl}) if return_terms else total


# ---------------------------------------------------------------------------------------------------------------
# modules
# ---------------------------------------------------------------------------------------------------------------
def _same(a, b):
    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and torch.equal(a, b)


class DoseGuidedLoss(nn.Module):
    r"""Module form of :func:`dose_guided_loss` for :class:`rtlearn.train.Trainer` (``loss_fn(pred, batch)``).

    Parameters
    ----------
    predictor : nn.Module
        The dose predictor :math:`M_D`; frozen here (``freeze_predictor=True``)
        and kept in eval mode even when this module is put in training mode.
    lam, logits, pos_weight, dice, hard, straight_through, threshold, average, order, dose_scale
        As in :func:`dose_guided_loss`.
    keys : dict, optional
        Batch keys for ``target``, ``oars``, ``ct``, ``dose_mask`` and
        ``true_dose`` (defaults: the same names). Missing optional entries are
        treated as absent; a precomputed ``true_dose`` in the batch is used as is.
    cache_size : int
        Number of recent batches whose :math:`D_P` is remembered. A cached dose
        is reused only if target, OARs, CT and mask are *exactly equal* to
        those it was computed from (compared with ``torch.equal``), so a stale
        dose is never used. 0 disables the cache.

    Call as ``loss(pred, batch)`` with a dict batch, or ``loss(pred, target,
    oars=..., ct=..., dose_mask=...)``. After each call ``last_terms`` holds the
    float values of ``bce``, ``dsl`` and ``total``.
    """

    def __init__(self, predictor: nn.Module, lam: float = 1.0, *, logits: bool = True, pos_weight=None,
                 dice: bool = False, hard: bool = False, straight_through: bool = False, threshold: float = 0.5,
                 average: str = "image", order=DEFAULT_ORDER, dose_scale: float = 1.0, keys: dict | None = None,
                 cache_size: int = 1, freeze_predictor: bool = True):
        super().__init__()
        self.lam = _check_lam(lam)
        self.threshold = _check_threshold(threshold)
        if hard and straight_through:
            raise ValueError("choose one of hard=True (no gradient) and straight_through=True, not both")
        self.dice, self.straight_through = bool(dice), bool(straight_through)
        self.dose_scale = _check_scale(dose_scale)
        check_choice(average, "average", _AVERAGES)
        self.order = _check_order(order)
        if isinstance(cache_size, bool) or not isinstance(cache_size, numbers.Integral) or cache_size < 0:
            raise ValueError(f"cache_size must be an int >= 0, got {cache_size!r}")
        self.predictor = freeze(predictor) if freeze_predictor else predictor
        self.logits, self.pos_weight, self.hard, self.average = logits, pos_weight, hard, average
        default = {k: k for k in ("target", "oars", "ct", "dose_mask", "true_dose")}
        unknown = set(keys or {}) - set(default)
        if unknown:
            raise ValueError(f"unknown key names {sorted(unknown)}; allowed: {sorted(default)}")
        self.keys = {**default, **(keys or {})}
        self.cache_size = int(cache_size)
        self._cache: list = []
        self.cache_hits = 0
        self.last_terms: dict = {}

    def extra_repr(self) -> str:
        mode = "hard" if self.hard else "straight-through" if self.straight_through else "soft"
        return (f"lam={self.lam:g}, mode={mode!r}, dice={self.dice}, dose_scale={self.dose_scale:g}, "
                f"average={self.average!r}")

    def train(self, mode: bool = True):
        super().train(mode)
        self.predictor.eval()  # the predictor stays frozen
        return self

    def _true_dose(self, target, oars, ct, dose_mask):
        for entry in self._cache:
            if all(_same(a, b) for a, b in zip(entry[0], (target, oars, ct, dose_mask))):
                self.cache_hits += 1
                return entry[1]
        dose = true_target_dose(self.predictor, target, oars, ct, dose_mask, self.order)
        if self.cache_size:
            snap = tuple(None if v is None else v.detach().clone() for v in (target, oars, ct, dose_mask))
            self._cache.append((snap, dose))
            del self._cache[:-self.cache_size]
        return dose

    def forward(self, pred, batch, oars=None, ct=None, dose_mask=None, true_dose=None):
        if isinstance(batch, dict):
            k = self.keys
            if k["target"] not in batch:
                raise KeyError(f"batch has no {k['target']!r} entry; it has {sorted(batch)}")
            target = batch[k["target"]]
            oars, ct = batch.get(k["oars"]), batch.get(k["ct"])
            dose_mask, true_dose = batch.get(k["dose_mask"]), batch.get(k["true_dose"])
        else:
            target = batch
        if true_dose is None and self.lam > 0:
            _seg(pred, "pred")
            true_dose = self._true_dose(_target(target, pred), oars, ct, dose_mask)
        total, terms = dose_guided_loss(pred, target, self.predictor, oars, ct, dose_mask, lam=self.lam,
                                        logits=self.logits, pos_weight=self.pos_weight, dice=self.dice,
                                        hard=self.hard, straight_through=self.straight_through,
                                        threshold=self.threshold, true_dose=true_dose, average=self.average,
                                        order=self.order, dose_scale=self.dose_scale, return_terms=True)
        self.last_terms = {**{k: float(v.detach()) for k, v in terms.items()}, "total": float(total.detach())}
        return total


class BCELoss(nn.Module):
    r"""Module form of :func:`binary_cross_entropy`: :math:`-\frac1N\sum_i [w\,g_i\log p_i + (1-g_i)\log(1-p_i)]`.

    Call as ``loss(pred, target)`` or ``loss(pred, batch)`` with a dict batch
    holding ``target``. ``pred`` holds logits (``logits=True``) or probabilities.
    """

    def __init__(self, *, logits: bool = True, pos_weight=None):
        super().__init__()
        if pos_weight is not None and (isinstance(pos_weight, bool) or not isinstance(pos_weight, numbers.Real)
                                       or not pos_weight > 0):
            raise ValueError(f"pos_weight must be a positive number or None, got {pos_weight!r}")
        self.logits, self.pos_weight = logits, pos_weight

    def extra_repr(self) -> str:
        return f"logits={self.logits}, pos_weight={self.pos_weight}"

    def forward(self, pred, target):
        if isinstance(target, dict):
            target = target["target"]
        return binary_cross_entropy(pred, target, logits=self.logits, pos_weight=self.pos_weight)


class BCESoftDiceLoss(nn.Module):
    """Module form of :func:`bce_soft_dice_loss` (the DOSELO paper's baseline); ``loss(pred, target)``."""

    def __init__(self, *, logits: bool = True, pos_weight=None, batch_dice: bool = True, smooth: float = 1e-5):
        super().__init__()
        self.logits, self.pos_weight, self.batch_dice, self.smooth = logits, pos_weight, batch_dice, smooth

    def forward(self, pred, target):
        if isinstance(target, dict):
            target = target["target"]
        return bce_soft_dice_loss(pred, target, logits=self.logits, pos_weight=self.pos_weight,
                                  batch_dice=self.batch_dice, smooth=self.smooth)


# ---------------------------------------------------------------------------------------------------------------
# beyond the paper: a straight-through mask, and a physical dose surrogate instead of M_D
# ---------------------------------------------------------------------------------------------------------------
def _straight_through(prob: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    hard = (prob >= threshold).to(prob.dtype)
    return hard + prob - prob.detach()


def straight_through(prob: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    r"""Binary mask in the forward pass, identity gradient in the backward pass.

    :math:`\tilde S = \mathbb 1[p \ge t] + p - \mathrm{sg}(p)` (sg: stop-gradient), so
    :math:`\tilde S` equals the thresholded mask while :math:`\partial \tilde S/\partial p = 1`
    (the straight-through estimator of Bengio et al. 2013).
    """
    check_tensor(prob, "prob")
    return _straight_through(prob, _check_threshold(threshold))


class StraightThroughDoseGuidedLoss(DoseGuidedLoss):
    r"""DOSELO with a straight-through mask (not in the paper): :class:`DoseGuidedLoss` with ``straight_through=True``.

    .. math:: L = L_{BCE}\,[+\,L_{SoftDice}] + \lambda\,\frac1N\sum_i
              \Big(\frac{M_D(S_T)_i - M_D(\mathbb 1[\hat S_T \ge t])_i}{s}\Big)^2,

    with the gradient of the indicator replaced by 1 (:func:`straight_through`).
    The frozen predictor sees the thresholded mask, binary like its training
    data, so a segmentation cannot lower the dose term by dimming its
    probabilities (a dimmed map thresholds to an empty mask, which gets no dose).
    Call as ``loss(logits, batch)`` with a dict batch holding ``target``,
    ``oars``, ``ct``, ``dose_mask`` and optionally a precomputed ``true_dose``.
    With ``lam == 0`` it is the segmentation term alone.

    Parameters
    ----------
    predictor : nn.Module
        The dose predictor :math:`M_D`; frozen here and kept in eval mode.
    lam : float
        Weight :math:`\lambda \ge 0` of the dose term.
    threshold : float
        Threshold :math:`t` of the forward-pass mask.
    **kw
        ``dice``, ``dose_scale``, ``pos_weight`` and the other options of :class:`DoseGuidedLoss`.
    """

    def __init__(self, predictor: nn.Module, lam: float = 1.0, threshold: float = 0.5, **kw):
        if kw.get("hard"):
            raise ValueError("StraightThroughDoseGuidedLoss has no hard mode; use DoseGuidedLoss(hard=True)")
        kw.pop("hard", None)
        kw.pop("straight_through", None)
        super().__init__(predictor, lam, threshold=threshold, straight_through=True, **kw)


def surrogate_guided_loss(logits, batch: dict, surrogate: nn.Module, lam: float = 1.0) -> torch.Tensor:
    r""":math:`L_{BCE} + \lambda\,\frac1N\sum_i (D(S_T)_i - D(\hat S_T)_i)^2` with :math:`D` a dose surrogate.

    ``surrogate`` is a :class:`rtlearn.phantom.surrogate.BeamSurrogate` (or any
    module with its ``scale_for(target, case)`` and ``forward(target, case,
    scale=...)``). ``batch`` needs ``target`` (true GTV) and ``case`` (index into
    the surrogate's patients); :math:`D(\hat S) = c\,A A^\top \hat S` uses the
    factor :math:`c` of the true target (``surrogate.scale_for``).
    """
    if isinstance(lam, bool) or not isinstance(lam, numbers.Real) or not math.isfinite(lam) or lam < 0:
        raise ValueError(f"lam (lambda) must be a finite number >= 0, got {lam!r}")
    bce = binary_cross_entropy(logits, batch["target"])
    if lam == 0:
        return bce
    case = batch["case"]
    t = batch["target"].float()
    scale = surrogate.scale_for(t, case)
    with torch.no_grad():
        ref = surrogate(t, case, scale=scale)
    d_hat = surrogate(torch.sigmoid(_up(logits)), case, scale=scale)
    dtype = accumulation_dtype(d_hat, ref)
    return bce + float(lam) * ((d_hat.to(dtype) - ref.to(dtype)) ** 2).mean()


class SurrogateGuidedLoss(nn.Module):
    r"""Module form of :func:`surrogate_guided_loss` (not in the paper): BCE plus a physical dose term.

    .. math:: L = L_{BCE} + \lambda\,\frac1N\sum_i \big(D(S_T)_i - D(\hat S_T)_i\big)^2,
              \qquad D(S) = c\,A A^\top S,

    with :math:`D` the beam surrogate of the dose engine
    (:class:`rtlearn.phantom.surrogate.BeamSurrogate`) in place of DOSELO's
    learned :math:`M_D` (Eqs. 1 and 4 of Rüfenacht et al. 2023 otherwise), and
    :math:`c` fixed by the true target. Call as ``loss(logits, batch)`` with a
    dict batch holding ``target`` and ``case`` (indices into the surrogate's
    patients). With ``lam == 0`` it is the BCE alone.

    Parameters
    ----------
    surrogate : nn.Module
        The dose surrogate (its ``scale_for`` and ``forward(target, case, scale=...)``).
    lam : float
        Weight :math:`\lambda \ge 0` of the dose term (Gy^-2).
    """

    def __init__(self, surrogate: nn.Module, lam: float = 1.0):
        super().__init__()
        if not isinstance(surrogate, nn.Module):
            raise TypeError(f"surrogate must be a torch.nn.Module, got {type(surrogate).__name__}")
        self.surrogate = surrogate
        self.lam = _check_lam(lam)

    def extra_repr(self) -> str:
        return f"lam={self.lam:g}"

    def forward(self, logits, batch):
        if not isinstance(batch, dict):
            raise TypeError(f"SurrogateGuidedLoss needs a dict batch with 'target' and 'case', got "
                            f"{type(batch).__name__}")
        return surrogate_guided_loss(logits, batch, self.surrogate, self.lam)
