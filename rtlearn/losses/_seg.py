"""Shared machinery of the segmentation losses: input preparation, sub-region sums, reductions.

Conventions
-----------
* ``pred``: ``B x C x spatial`` probabilities (softmax already applied), or logits
  with ``softmax=True``. ``spatial`` has one or more axes (2D ``H x W``, 3D ``Z x Y x X``).
* ``target``: one-hot ``B x C x spatial`` (values in [0, 1]) or integer labels
  ``B x spatial`` / ``B x 1 x spatial`` with values in ``0..C-1`` (converted to one-hot).
* Sub-regions: a grid of ``K`` blocks per axis (the division coefficient DC of
  Chen et al. 2023). When the axis length ``n`` is not divisible by ``K`` the
  blocks are **uneven**: index ``i`` belongs to block ``floor(i K / n)``, so block
  sizes differ by at most one voxel and no block is empty (no zero padding).
  ``K`` larger than the axis length raises ``ValueError``.
* Precision: ``pred`` is cast to float32 (float64 when ``pred`` or a floating
  ``target`` is float64) before the softmax and every sum, so float16/bfloat16
  inputs and autocast outputs give float32-accurate losses.
"""
from __future__ import annotations

import numbers

import torch

from ._checks import accumulation_dtype, check_choice, check_tensor

REDUCTIONS = {"mean", "sum", "none"}
REGION_REDUCTIONS = {"sum", "mean", "none"}
#: Tolerance when checking that probabilities lie in [0, 1].
PROB_TOL = 1e-5
#: Tolerance when checking that probabilities sum to 1 over the class axis (where required).
SIMPLEX_TOL = 1e-3


def prepare(pred, target, softmax: bool = False, include_background: bool = True, require_simplex: bool = False,
            validate: bool = True):
    """Return ``(p, g)``: probabilities and one-hot target, both ``B x C' x spatial``.

    ``C' = C - 1`` when ``include_background`` is False (channel 0 dropped after
    the softmax and one-hot conversion).
    """
    check_tensor(pred, "pred")
    if pred.dim() < 3:
        raise ValueError(f"pred must be B x C x spatial (>= 3 axes), got shape {tuple(pred.shape)}")
    in_dtype = pred.dtype
    pred = upcast(pred, target)
    B, C = pred.shape[:2]
    spatial = tuple(pred.shape[2:])
    if validate:
        mn, mx = torch.aminmax(pred.detach())
        if not (bool(torch.isfinite(mn)) and bool(torch.isfinite(mx))):
            raise ValueError("pred contains NaN or infinite values")
    if softmax:
        if C < 2:
            raise ValueError("softmax=True needs at least 2 channels (classes)")
        p = torch.softmax(pred, dim=1)
    else:
        p = pred
        if validate:
            if float(mn) < -PROB_TOL or float(mx) > 1 + PROB_TOL:
                raise ValueError(
                    f"pred must hold probabilities in [0, 1] (softmax already applied), found range "
                    f"[{float(mn):.4g}, {float(mx):.4g}]; pass softmax=True for logits"
                )
            if require_simplex:
                s = p.detach().sum(1)
                dev = float((s - 1).abs().max())
                # half-precision probabilities are rounded: allow one rounding step per class
                if dev > max(SIMPLEX_TOL, C * torch.finfo(in_dtype).eps):
                    raise ValueError(
                        f"pred must sum to 1 over the class axis (dim 1); max deviation {dev:.3g}. "
                        f"Apply softmax first or pass softmax=True"
                    )
    g = one_hot_target(target, B, C, spatial, p.dtype, validate)
    if not include_background:
        if C < 2:
            raise ValueError("include_background=False needs at least 2 channels")
        p, g = p[:, 1:], g[:, 1:]
    return p, g


def upcast(pred: torch.Tensor, target=None) -> torch.Tensor:
    """``pred`` in the accumulation dtype: float32, or float64 if ``pred`` or a floating ``target`` is float64."""
    t = target if isinstance(target, torch.Tensor) and torch.is_floating_point(target) else None
    return pred.to(accumulation_dtype(pred, t))


def one_hot_target(target, B, C, spatial, dtype, validate: bool = True):
    """Convert ``target`` (one-hot or integer labels) to a one-hot float tensor ``B x C x spatial``."""
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    shape = tuple(target.shape)
    if shape == (B, C) + spatial and not (C == 1 and not torch.is_floating_point(target) and target.dtype != torch.bool):
        g = target.to(dtype)
        if validate:
            mn, mx = torch.aminmax(g.detach())
            if not (float(mn) >= 0 and float(mx) <= 1):
                raise ValueError(
                    f"one-hot target must hold values in [0, 1], found range [{float(mn):.4g}, {float(mx):.4g}]"
                )
        return g
    if shape == (B,) + spatial or shape == (B, 1) + spatial:
        lab = target.reshape((B,) + spatial)
        if torch.is_floating_point(lab):
            if validate and not bool((lab == lab.round()).all()):
                raise ValueError("integer label target has non-integer values")
            lab = lab.long()
        elif lab.dtype == torch.bool:
            lab = lab.long()
        else:
            lab = lab.long()
        if validate:
            mn, mx = torch.aminmax(lab)
            if int(mn) < 0 or int(mx) >= C:
                raise ValueError(
                    f"label values must lie in 0..{C - 1} (C = {C} channels in pred), found range [{int(mn)}, {int(mx)}]"
                )
        g = torch.zeros((B, C) + spatial, dtype=dtype, device=target.device)
        g.scatter_(1, lab.unsqueeze(1), 1.0)
        return g
    raise ValueError(
        f"target has shape {shape}; expected one-hot {(B, C) + spatial} or labels {(B,) + spatial}"
    )


def parse_grid(grid, spatial):
    """Return the number of blocks per spatial axis as a tuple (validated)."""
    nd = len(spatial)
    if isinstance(grid, numbers.Integral) and not isinstance(grid, bool):
        ks = (int(grid),) * nd
    else:
        try:
            ks = tuple(int(k) for k in grid)
        except TypeError:
            raise TypeError(f"grid must be an int or a sequence of ints, got {grid!r}") from None
        if len(ks) != nd:
            raise ValueError(f"grid has {len(ks)} entries but the volume has {nd} spatial axes")
    for k, n in zip(ks, spatial):
        if k < 1:
            raise ValueError(f"grid sizes must be >= 1, got {ks}")
        if k > n:
            raise ValueError(f"grid {ks} is larger than the volume {tuple(spatial)}: each block needs >= 1 voxel")
    return ks


def block_index(n: int, k: int, device=None):
    """Block of each index along an axis of length ``n`` split in ``k`` blocks: ``floor(i k / n)``."""
    return torch.div(torch.arange(n, device=device) * k, n, rounding_mode="floor")


def region_sum(x: torch.Tensor, ks) -> torch.Tensor:
    """Sum ``x`` (``B x C x spatial``) over the blocks of a ``ks`` grid -> ``B x C x K1 x K2 ...``.

    Divisible axes are reduced by a reshape; others by ``index_add`` with the
    uneven block layout of :func:`block_index`. No loop over sub-regions.
    """
    nd = x.dim() - 2
    if all(k == 1 for k in ks):
        return x.sum(dim=tuple(range(2, x.dim())), keepdim=True)
    if all(n % k == 0 for n, k in zip(x.shape[2:], ks)):
        shape = list(x.shape[:2])
        for n, k in zip(x.shape[2:], ks):
            shape += [k, n // k]
        return x.reshape(shape).sum(dim=tuple(3 + 2 * i for i in range(nd)))
    for i in reversed(range(nd)):
        dim = 2 + i
        n, k = x.shape[dim], ks[i]
        if k == n:
            continue
        if n % k == 0:
            x = x.unflatten(dim, (k, n // k)).sum(dim + 1)
        else:
            shape = list(x.shape)
            shape[dim] = k
            x = x.new_zeros(shape).index_add(dim, block_index(n, k, x.device), x)
    return x


def reduce_losses(L: torch.Tensor, valid, region_reduction: str, reduction: str):
    """Reduce per-(batch, class, region) losses ``L`` (``B x C x K...``).

    ``valid`` (same shape, bool, or None = all valid) marks the terms that count.
    Regions are reduced first (``region_reduction``: sum / mean over valid
    regions / none), then batch and classes (``reduction``: mean over (b, c)
    pairs with >= 1 valid region / sum / none). Skipped terms are 0 in "none"
    outputs. When nothing is valid the result is 0, still connected to the graph.
    """
    check_choice(region_reduction, "region_reduction", REGION_REDUCTIONS)
    check_choice(reduction, "reduction", REDUCTIONS)
    B, C = L.shape[:2]
    zero = torch.zeros((), dtype=L.dtype, device=L.device)
    if valid is not None:
        L = torch.where(valid, L, zero)
    if region_reduction == "none":
        if reduction != "none":
            raise ValueError('region_reduction="none" requires reduction="none"')
        return L
    Lf = L.reshape(B, C, -1)
    if valid is None:
        per = Lf.sum(-1) if region_reduction == "sum" else Lf.mean(-1)
        vbc = None
    else:
        vf = valid.reshape(B, C, -1)
        cnt = vf.sum(-1)
        per = Lf.sum(-1)
        if region_reduction == "mean":
            per = per / cnt.clamp_min(1).to(per.dtype)
        vbc = cnt > 0
    if reduction == "none":
        return per
    if reduction == "sum":
        return per.sum()
    if vbc is None:
        return per.mean()
    # skipped terms are exact zeros still attached to the graph, so an all-skipped input gives 0, not NaN
    return per.sum() / max(int(vbc.sum()), 1)


def _divisible(spatial, ks) -> bool:
    return all(n % k == 0 for n, k in zip(spatial, ks))


def _block_view(x: torch.Tensor, ks) -> torch.Tensor:
    """View ``B x C x n1 x n2 ...`` as ``B x C x K1 x b1 x K2 x b2 ...`` (divisible grid, no copy)."""
    shape = list(x.shape[:2])
    for n, k in zip(x.shape[2:], ks):
        shape += [k, n // k]
    return x.contiguous().view(shape)


def _block_sum(xv: torch.Tensor, nd: int) -> torch.Tensor:
    """Sum a block view over its within-block axes -> ``B x C x K1 x K2 ...``."""
    if all(xv.shape[2 + 2 * i] == 1 for i in range(nd)):  # global: one contiguous reduction
        return xv.sum(dim=tuple(3 + 2 * i for i in range(nd)))
    for i in range(nd):  # one axis at a time is faster than a strided multi-axis reduction
        xv = xv.sum(3 + i)
    return xv


def _broadcastable(t: torch.Tensor, nd: int) -> torch.Tensor:
    """``B x C x K1 x K2 ...`` -> ``B x C x K1 x 1 x K2 x 1 ...`` (broadcasts against a block view)."""
    shape = list(t.shape[:2])
    for k in t.shape[2:]:
        shape += [k, 1]
    return t.reshape(shape)


class _DiceStats(torch.autograd.Function):
    """Block sums ``(sum p g, sum p^2, sum g^2)`` with a fused backward pass.

    Backward: ``dL/dp = dpg * g + 2 dpp * p`` evaluated in the block view, so no
    expanded gradient is materialised. ``g`` receives no gradient (targets are constants).
    """

    @staticmethod
    def forward(ctx, p, g, ks):
        nd = p.dim() - 2
        pv, gv = _block_view(p, ks), _block_view(g, ks)
        pg = _block_sum(pv * gv, nd)
        pp = _block_sum(pv * pv, nd)
        gg = _block_sum(gv * gv, nd)
        ctx.save_for_backward(p, g)
        ctx.ks = ks
        ctx.mark_non_differentiable(gg)
        return pg, pp, gg

    @staticmethod
    def backward(ctx, dpg, dpp, dgg):
        p, g = ctx.saved_tensors
        nd = p.dim() - 2
        pv, gv = _block_view(p, ctx.ks), _block_view(g, ctx.ks)
        grad = torch.addcmul(pv * _broadcastable(2.0 * dpp, nd), gv, _broadcastable(dpg, nd))
        return grad.view(p.shape), None, None


class _TverskyStats(torch.autograd.Function):
    """Block sums ``TP = sum p g``, ``FP = sum p (1 - g)``, ``FN = sum (1 - p) g`` with a fused backward.

    FP and FN are summed from their non-negative voxel terms (not as ``sum p - TP``,
    whose float32 cancellation could make them slightly negative and push the
    adaptive weights out of ``[A, A + B]``). Backward:
    ``dL/dp = dFP + g (dTP - dFP - dFN)`` in one pass.
    """

    @staticmethod
    def forward(ctx, p, g, ks):
        nd = p.dim() - 2
        pv, gv = _block_view(p, ks), _block_view(g, ks)
        pg = pv * gv
        tp = _block_sum(pg, nd)
        buf = pv - pg
        fp = _block_sum(buf, nd)
        torch.sub(gv, pg, out=buf)
        fn = _block_sum(buf, nd)
        del pg, buf
        ctx.save_for_backward(g)
        ctx.ks, ctx.shape = ks, p.shape
        return tp, fp, fn

    @staticmethod
    def backward(ctx, dtp, dfp, dfn):
        (g,) = ctx.saved_tensors
        nd = g.dim() - 2
        gv = _block_view(g, ctx.ks)
        grad = torch.addcmul(_broadcastable(dfp, nd), gv, _broadcastable(dtp - dfp - dfn, nd))
        return grad.expand(gv.shape).reshape(ctx.shape), None, None


def dice_terms(p: torch.Tensor, g: torch.Tensor, ks, eps: float):
    """Per-(batch, class, region) Dice losses of Eq. (2) of Chen et al. 2023 and the GT-presence flags.

    ``L = 1 - (2 sum p g + eps) / (sum p^2 + sum g^2 + eps)`` over each block.
    Divisible grids (and the global case) use a fused autograd function; uneven
    grids use ``index_add`` sums with ordinary autograd.
    """
    if _divisible(p.shape[2:], ks):
        pg, pp, gg = _DiceStats.apply(p, g.detach(), tuple(ks))
    else:
        pg = region_sum(p * g, ks)
        pp = region_sum(p * p, ks)
        gg = region_sum(g * g, ks)
    L = 1.0 - (2.0 * pg + eps) / (pp + gg + eps)
    return L, gg.detach() > 0


def tversky_counts(p: torch.Tensor, g: torch.Tensor, ks):
    """Soft TP, FP, FN per (batch, class, region): ``sum p g``, ``sum p (1-g)``, ``sum (1-p) g``."""
    if _divisible(p.shape[2:], ks):
        return _TverskyStats.apply(p, g.detach(), tuple(ks))
    pg = p * g
    tp = region_sum(pg, ks)
    fp = region_sum(p - pg, ks)
    fn = region_sum(g - pg, ks)
    return tp, fp, fn


def tversky_from_counts(tp, fp, fn, alpha, beta, eps: float):
    """Tversky loss, Eq. (5) of Chen et al. 2023: ``1 - (TP + eps) / (TP + a FP + b FN + eps)``."""
    return 1.0 - (tp + eps) / (tp + alpha * fp + beta * fn + eps)


def check_eps(eps) -> float:
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not (eps > 0) or eps == float("inf"):
        raise ValueError(f"eps must be a finite number > 0 (it keeps empty regions from giving 0/0), got {eps!r}")
    return float(eps)
