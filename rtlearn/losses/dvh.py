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

Two ways to evaluate the relaxed DVH
------------------------------------
Only each structure's voxels are evaluated: the voxels of every (patient,
structure) pair are gathered into one flat vector of ``V`` doses, never a dense
``S x n_bins x Z x Y x X`` tensor. Write ``k = m / b`` and
``f(x) = (sigma(k (x - d_t)))_t`` for the vector of the ``n_t`` sigmoids at dose
``x``. A structure's relaxed DVH is the mean of ``f(D_i)`` over its voxels, and
``f`` depends on the voxel's dose alone.

* ``method="dense"`` evaluates the ``V x n_t`` sigmoids directly, in chunks of
  voxels, with a custom autograd function that recomputes them in the backward
  pass (time ``O(V n_t)``, extra memory ``O(chunk x n_t)``).
* ``method="table"`` tabulates ``f`` and its derivative ``f'`` on a uniform dose
  grid ``x_j = x_0 + j h`` and replaces ``f`` between two nodes by its cubic
  Hermite interpolant ``p`` (value and slope matched at both nodes). ``p(D_i)`` is
  a weighted sum of the four table rows ``f(x_j), f'(x_j), f(x_{j+1}), f'(x_{j+1})``
  with weights that depend on ``D_i`` only, so the sum over a structure's voxels
  is a histogram of those weights on the grid (``O(V)``) times the tables (a
  matrix product, ``O(grid x n_t)`` per structure). The gradient is the exact
  derivative of ``p``, obtained the same way backwards (``O(V + grid x n_t)``).
  The grid spacing ``h`` is the largest power of two ``<= 0.1 / k``, so
  ``eta = k h`` lies in (0.05, 0.1], and the nodes are multiples of ``h``: a
  dose's cell and its position in the cell are then exact in floating point.
  The grid spans ``[min_t d_t - W, max_t d_t + W]`` with ``W = 20 / k``; doses
  outside it are clamped to its ends.

Error bound of the table (per threshold, per voxel). With ``u = k (x - d_t)``,
``f`` has derivatives ``d^n f / dx^n = k^n sigma^{(n)}(u)`` and
``max |sigma^{(4)}| = 0.1277``. For cubic Hermite interpolation (Birkhoff and
Priver 1967), ``|f - p| <= h^4 max|f^{(4)}| / 384`` and
``|f' - p'| <= sqrt(3) h^3 max|f^{(4)}| / 216``, so

.. math::

    |f - p| \\le \\frac{0.1277\\,\\eta^4}{384} \\le 3.3\\times 10^{-8}, \\qquad
    |f' - p'| \\le \\frac{\\sqrt 3\\, 0.1277\\,\\eta^3}{216}\\,k \\le 1.03\\times 10^{-6}\\,k
    = 4.1\\times 10^{-6} \\max_x |f'(x)| ,

and clamping outside the grid changes ``f`` by at most
``sigma(-20) = 2.1e-9`` and ``f'`` by at most ``2.1e-9 k``. A relaxed DVH value (a
mean of ``f`` over voxels) is therefore within ``3.5e-8`` (absolute, of a volume
fraction in [0, 1]) of the dense form, and the gradient of a voxel of structure
``s`` within ``1.04e-6 k sum_t |dL/dDVH_s(d_t)| / |s|``, while the gradient itself
can reach ``(k / 4) sum_t |dL/dDVH_s(d_t)| / |s|``: far below the ``1e-4``
relative agreement the tests require, and near the float32 rounding of the doses
themselves (``6e-8`` relative).

``method="auto"`` (the default) uses the table when it is the cheaper of the two,
``(n_structures + 1) x grid <= V`` (for 64 thresholds over 0-80 Gy and
``m = 1`` the grid has about 1,000 nodes), else the dense form. At ``128^3`` with
10 structures and 64 thresholds the table form is several times faster than the
dense one (``python -m rtlearn.bench.losses --part dose``).

Precision
---------
Sums, voxel counts and means are accumulated in float32, or float64 when an
input is float64, whatever the input dtype (float16, bfloat16, autocast
outputs); the returned DVH and loss have that dtype. Inputs of different
floating dtypes are cast to it. Autocast is switched off inside, so the matrix
products run in that dtype too. The long sums over voxels are kept accurate:
the table form's histograms are accumulated in float64 (except on MPS, which has
no float64), and the dense form sums each structure's run of voxels with
``torch.sum`` (pairwise) rather than one running sum.
"""
from __future__ import annotations

import math
import numbers

import numpy as np
import torch
from torch import nn

from ._checks import (accumulation_dtype, check_finite, check_positive_number, check_reference_dose, check_tensor,
                      zero_loss)
from .dose import masked_mae

__all__ = ["dvh_thresholds", "soft_dvh", "dvh_loss", "DVHLoss", "mae_plus_dvh_loss", "MAEPlusDVHLoss"]

DEFAULT_BINS = 64
DEFAULT_RANGE = (0.0, 80.0)
#: Number of (voxel x threshold) sigmoid values evaluated at once by the dense form.
DEFAULT_CHUNK_ELEMENTS = 2 ** 22
#: Grid spacing of the table form in units of the sigmoid's width, ``eta = k h``.
TABLE_SPACING = 0.1
#: Half-width of the sigmoid's support kept by the table form, in units of ``1 / k`` (``sigma(-20) = 2.1e-9``).
TABLE_MARGIN = 20.0
METHODS = ("auto", "table", "dense")
#: Largest grid of the table form (its nodes stay exact in float32 far beyond this).
MAX_TABLE_GRID = 2 ** 20


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
        t = torch.linspace(lo, hi, int(bins), dtype=torch.float64).to(dtype=dtype).to(device=device)
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


# --------------------------------------------------------------------------- input checks
def _check_method(method) -> str:
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return method


def _true_indices(flat: torch.Tensor) -> torch.Tensor:
    """Indices of the True entries of a 1-D bool tensor, ascending (as ``flat.nonzero()``).

    Masks of structures are sparse and made of runs, so the 8-byte words that hold
    any True entry are found first (one pass over ``n / 8`` words) and only those
    are expanded: several times faster than ``nonzero`` on a large bool volume.
    """
    n = flat.numel()
    if n < 64 or n % 8 or flat.storage_offset() % 8 or not flat.is_contiguous():
        return flat.nonzero().reshape(-1)
    words = flat.view(torch.int64).nonzero().reshape(-1)
    sub = flat.view(-1, 8)[words].nonzero()
    return words[sub[:, 0]] * 8 + sub[:, 1]


def _as_bool(mask: torch.Tensor, name: str) -> torch.Tensor:
    if mask.dtype == torch.bool:
        return mask
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError(f"{name} must be boolean (0/1)")
    return mask.bool()


# --------------------------------------------------------------------------- dense form
class _SegmentSigmoidSum(torch.autograd.Function):
    """``out[k, t] = sum_{i: seg_i = k} sigmoid((v_i - t_t) * scale)``, chunked over voxels.

    The backward pass recomputes the sigmoid chunk by chunk, so nothing of size
    ``voxels x thresholds`` is stored. Voxels are expected grouped by segment
    (as the gathering functions give them): each run is summed by ``torch.sum``,
    whose pairwise summation keeps float32 sums over 10^5 voxels accurate.
    """

    @staticmethod
    def forward(ctx, values, seg, n_seg, thresholds, scale, chunk):
        with torch.autocast(values.device.type, enabled=False):
            out = values.new_zeros(n_seg, thresholds.numel())
            for start in range(0, values.numel(), chunk):
                v = values[start:start + chunk]
                s = torch.sigmoid((v[:, None] - thresholds[None, :]) * scale)
                if v.numel() <= 1024:  # a short running sum is accurate enough
                    out.index_add_(0, seg[start:start + chunk], s)
                    continue
                # one (pairwise) sum per run of equal segment ids, not a running sum over every voxel
                ids, lengths = torch.unique_consecutive(seg[start:start + chunk], return_counts=True)
                out.index_add_(0, ids, torch.stack([part.sum(0) for part in s.split(lengths.tolist())]))
        ctx.save_for_backward(values, seg, thresholds)
        ctx.scale, ctx.chunk = scale, chunk
        return out

    @staticmethod
    def backward(ctx, grad_out):
        values, seg, thresholds = ctx.saved_tensors
        grad_v = None
        if ctx.needs_input_grad[0]:
            with torch.autocast(values.device.type, enabled=False):
                grad_out = grad_out.to(values.dtype)
                grad_v = torch.empty_like(values)
                for start in range(0, values.numel(), ctx.chunk):
                    v = values[start:start + ctx.chunk]
                    s = torch.sigmoid((v[:, None] - thresholds[None, :]) * ctx.scale)
                    g = grad_out[seg[start:start + ctx.chunk]]
                    grad_v[start:start + ctx.chunk] = (s * (1.0 - s) * g).sum(1) * ctx.scale
        return grad_v, None, None, None, None, None


# --------------------------------------------------------------------------- table form
def _grid_spec(t64: torch.Tensor, scale: float):
    """Grid of the table form: first node index ``n0``, ``1 / h`` and the number of nodes.

    ``h`` is the largest power of two ``<= TABLE_SPACING / k``, and the nodes are
    the multiples ``x_j = (n0 + j) h``: the cell of a dose and its position in the
    cell are then exact in floating point (a scaling by a power of two, a floor
    and a subtraction). The nodes cover ``[min d_t - W, max d_t + W]`` plus one
    spare node, so that a dose on the last covered node still has a right neighbour.
    """
    inv_h = 2.0 ** math.ceil(math.log2(scale / TABLE_SPACING))
    margin = TABLE_MARGIN / scale
    n0 = math.floor((float(t64.min()) - margin) * inv_h)
    n1 = math.ceil((float(t64.max()) + margin) * inv_h) + 1
    return n0, inv_h, n1 - n0 + 1


def _table(t64: torch.Tensor, scale: float, dtype, device):
    """The grid (see :func:`_grid_spec`) and the tables ``f(x_j)``, ``f(x_{j+1}) - f(x_j)`` and ``h f'(x_j)``.

    Each is ``grid x n_t``, computed in float64. The differences are tabulated
    rather than formed from ``f`` in the backward pass, where the sum over
    thresholds of nearly equal values would cancel.
    """
    n0, inv_h, n_grid = _grid_spec(t64, scale)
    x = (n0 + torch.arange(n_grid, dtype=torch.float64)) / inv_h
    u = (x[:, None] - t64.cpu()[None, :]) * scale
    du = scale / inv_h  # eta = k h
    s = torch.sigmoid(u)
    diff = torch.sigmoid(u + du) - s  # in float64, so accurate to its own size once rounded to float32
    diff[-1] = 0.0  # the spare node has no right neighbour (its weight is always 0)
    hdf = s * (1.0 - s) * du  # h f' = h k sigma'
    return (n0, inv_h), *(a.to(dtype).to(device) for a in (s, diff, hdf))


def _grid_position(values, grid, n_grid):
    """Cell index ``j``, position ``w`` in [0, 1) within the cell, and whether the dose lies on the grid."""
    n0, inv_h = grid
    lo, hi = n0 / inv_h, (n0 + n_grid - 2) / inv_h
    inside = (values >= lo) & (values <= hi)
    q = values.clamp(lo, hi) * inv_h
    fl = q.floor()
    return fl.long() - n0, q - fl, inside


class _SegmentHermiteSum(torch.autograd.Function):
    """``out[k, t] = sum_{i: seg_i = k} p_t(v_i)`` with ``p`` the cubic Hermite interpolant of the sigmoids.

    ``p(v) = h00(w) f_j + h10(w) h f'_j + h01(w) f_{j+1} + h11(w) h f'_{j+1}`` on the
    cell ``j`` holding ``v`` (``w`` in [0, 1]): the four basis weights of every voxel
    are summed per (structure, node), then multiplied by the tables.
    """

    @staticmethod
    def forward(ctx, values, seg, n_seg, grid, f, df, hdf):
        n_grid = f.shape[0]
        with torch.autocast(values.device.type, enabled=False):
            j, w, _ = _grid_position(values, grid, n_grid)
            k = seg * n_grid + j
            w2 = w * w
            h01 = w2 * (3.0 - 2.0 * w)
            h11 = w2 * (w - 1.0)
            h10 = w * (1.0 - w) * (1.0 - w)
            idx = torch.cat([k, k + 1])
            # the histograms are running sums over voxels (a uniform dose puts them all in one cell): float64
            # (MPS has no float64; it keeps the input's dtype)
            acc = values.dtype if values.device.type == "mps" else torch.float64
            hist = values.new_zeros((2, n_seg * n_grid), dtype=acc)
            hist[0].index_add_(0, idx, torch.cat([1.0 - h01, h01]).to(acc))
            hist[1].index_add_(0, idx, torch.cat([h10, h11]).to(acc))
            hist = hist.to(values.dtype)
            out = hist[0].view(n_seg, n_grid) @ f + hist[1].view(n_seg, n_grid) @ hdf
        ctx.save_for_backward(values, seg, df, hdf)
        ctx.grid = grid
        return out

    @staticmethod
    def backward(ctx, grad_out):
        values, seg, df, hdf = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None, None, None
        n_grid = df.shape[0]
        with torch.autocast(values.device.type, enabled=False):
            grad_out = grad_out.to(values.dtype)
            # per (structure, node): sum_t dL/dout[k, t] (f_t(x_{j+1}) - f_t(x_j)), and the same with h f'_t(x_j)
            gdiff = (grad_out @ df.T).reshape(-1)
            gd = (grad_out @ hdf.T).reshape(-1)
            j, w, inside = _grid_position(values, ctx.grid, n_grid)
            k = seg * n_grid + j
            dh01 = 6.0 * w * (1.0 - w)  # derivatives of the basis functions in w (dh00 = -dh01)
            dh10 = (1.0 - w) * (1.0 - 3.0 * w)
            dh11 = w * (3.0 * w - 2.0)
            grad_v = dh01 * gdiff[k] + dh10 * gd[k] + dh11 * gd[k + 1]
            grad_v = grad_v * (inside.to(grad_v.dtype) * ctx.grid[1])
        return grad_v, None, None, None, None, None, None


# --------------------------------------------------------------------------- shared driver
def _chunk(chunk_size, n_bins):
    if chunk_size is None:
        return max(1024, DEFAULT_CHUNK_ELEMENTS // max(1, n_bins))
    if not isinstance(chunk_size, numbers.Integral) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int (voxels per chunk), got {chunk_size!r}")
    return int(chunk_size)


class _Relaxed:
    """The relaxed-DVH evaluator for given thresholds, steepness, method and number of voxels."""

    def __init__(self, bins, dose_range, bin_width, steepness, method, chunk_size, n_voxels, n_seg, dtype, device):
        t64, b = dvh_thresholds(bins, dose_range, bin_width, torch.float64)
        self.scale = check_positive_number(steepness, "steepness") / b
        self.chunk = _chunk(chunk_size, t64.numel())
        self.t = t64.to(dtype).to(device)
        method = _check_method(method)
        n_grid = _grid_spec(t64, self.scale)[2]
        if method == "auto":
            method = "table" if (n_seg + 1) * n_grid <= n_voxels and n_grid <= MAX_TABLE_GRID else "dense"
        elif method == "table" and n_grid > MAX_TABLE_GRID:
            raise ValueError(f"the table form would need a grid of {n_grid} doses (> {MAX_TABLE_GRID}) for this "
                             f"steepness and threshold range; use method='dense'")
        self.method = method
        if method == "table":
            self.grid, self.f, self.df, self.hdf = _table(t64, self.scale, dtype, device)

    def __call__(self, values, seg, n_seg):
        """Per-segment sums ``(n_seg x n_t)`` of the relaxed step, differentiable in ``values``."""
        if self.method == "table":
            return _SegmentHermiteSum.apply(values, seg, n_seg, self.grid, self.f, self.df, self.hdf)
        return _SegmentSigmoidSum.apply(values, seg, n_seg, self.t, self.scale, self.chunk)


def soft_dvh(dose, mask, bins=DEFAULT_BINS, steepness: float = 1.0, dose_range=DEFAULT_RANGE,
             bin_width=None, chunk_size=None, method: str = "auto"):
    """Differentiable cumulative DVH of Nguyen et al. (Med Phys 2020).

    .. math:: \\widetilde{DVH}_s(d_t) = \\frac{1}{|s|}\\sum_{i\\in s}\\sigma\\big((D_i - d_t)\\,m / b\\big)

    Parameters
    ----------
    dose : torch.Tensor
        Dose (Gy), any shape (e.g. ``Z x Y x X``), any floating dtype.
    mask : torch.Tensor of bool
        Structure mask of ``dose.shape``, or ``S x dose.shape`` for ``S`` structures.
    bins, dose_range, bin_width
        Thresholds, see :func:`dvh_thresholds` (default 64 over 0-80 Gy).
    steepness : float
        ``m`` (default 1). Larger values approach the exact step-function DVH.
    chunk_size : int, optional
        Voxels per chunk of the dense form (memory ``chunk_size x n_bins``).
    method : {"auto", "table", "dense"}
        How the sigmoids are evaluated (see the module notes): ``"table"``
        interpolates tabulated sigmoids (``O(V + grid x n_bins)``, within
        ``3.5e-8`` of the dense value), ``"dense"`` evaluates all
        ``V x n_bins`` of them, ``"auto"`` (default) picks the cheaper.

    Returns
    -------
    (torch.Tensor, torch.Tensor)
        Thresholds ``(n_bins,)`` and volume fractions ``(n_bins,)`` or ``(S, n_bins)``,
        differentiable with respect to ``dose``, in float32 (float64 for a float64
        dose). An empty structure raises ``ValueError``.
    """
    check_tensor(dose, "dose")
    check_finite(dose, "dose")
    check_positive_number(steepness, "steepness")
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
    single = tuple(mask.shape) == tuple(dose.shape)
    if not single and tuple(mask.shape[1:]) != tuple(dose.shape):
        raise ValueError(f"mask has shape {tuple(mask.shape)}; expected {tuple(dose.shape)} or (S, *{tuple(dose.shape)})")
    mk = _as_bool(mask.reshape(1, -1) if single else mask.reshape(mask.shape[0], -1), "mask")
    S, N = mk.shape
    flat = _true_indices(mk.reshape(-1))
    seg = torch.div(flat, N, rounding_mode="floor")
    counts = torch.bincount(seg, minlength=S)
    if bool((counts == 0).any()):
        raise ValueError(f"structure(s) {torch.nonzero(counts == 0).flatten().tolist()} are empty; a DVH needs >= 1 voxel")
    dtype = accumulation_dtype(dose)
    relaxed = _Relaxed(bins, dose_range, bin_width, steepness, method, chunk_size, flat.numel(), S, dtype, dose.device)
    values = dose.reshape(-1)[flat - seg * N].to(dtype)
    dvh = relaxed(values, seg, S) / counts.to(dtype)[:, None]
    return relaxed.t, (dvh[0] if single else dvh)


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
             dose_range=DEFAULT_RANGE, bin_width=None, chunk_size=None, method: str = "auto"):
    """DVH loss of Soomro et al. (DeepDoseNet) on the relaxed DVH of Nguyen et al. 2020.

    .. math::

        L_{DVH} = \\frac{1}{n_s}\\frac{1}{n_t}\\sum_s\\sum_t
        \\big|\\widetilde{DVH}_s(D^{true}, d_t) - \\widetilde{DVH}_s(D^{pred}, d_t)\\big|

    Parameters
    ----------
    pred, target : torch.Tensor
        Predicted and true doses (Gy), ``B x spatial`` or ``B x 1 x spatial``, any
        floating dtypes (cast to float32, or float64 if either is float64).
        ``target`` gets no gradient. NaN/inf values raise ``ValueError``, as do
        negative values in the reference dose ``target``.
    structures : torch.Tensor of bool
        ``B x S x spatial`` structure masks.
    available : torch.Tensor of bool, optional
        ``B x S`` flags; structures flagged False are skipped (as are empty masks).
    bins, steepness, dose_range, bin_width, chunk_size, method
        See :func:`soft_dvh`.

    Returns
    -------
    torch.Tensor
        Scalar (float32, or float64 for a float64 input): per patient the mean
        over present structures and thresholds, then the mean over patients with
        at least one present structure; 0 (connected to the graph) when no
        structure is present anywhere. Never NaN.
    """
    check_tensor(pred, "pred")
    check_tensor(target, "target")
    if tuple(pred.shape) != tuple(target.shape):
        raise ValueError(f"pred has shape {tuple(pred.shape)} but target has shape {tuple(target.shape)}")
    check_finite(pred, "pred")
    check_reference_dose(target, "target")
    check_positive_number(steepness, "steepness")
    _check_method(method)
    if not isinstance(structures, torch.Tensor):
        raise TypeError(f"structures must be a torch.Tensor, got {type(structures).__name__}")
    P = _spatial_layout(pred, structures)
    dtype = accumulation_dtype(pred, target)
    B, S = structures.shape[:2]
    M = _as_bool(structures.reshape(B, S, -1), "structures")
    N = M.shape[2]
    if available is not None:
        if not isinstance(available, torch.Tensor) or tuple(available.shape) != (B, S):
            raise ValueError(f"available must be a bool tensor of shape {(B, S)}")
        available = _as_bool(available, "available").to(M.device)
    flat = _true_indices(M.reshape(-1))
    seg = torch.div(flat, N, rounding_mode="floor")  # patient * S + structure
    if available is not None:
        keep = available.reshape(-1)[seg]
        flat, seg = flat[keep], seg[keep]
    if flat.numel() == 0:
        return zero_loss(pred).to(dtype)
    vox = torch.div(seg, S, rounding_mode="floor") * N + (flat - seg * N)  # index into P.reshape(-1)
    relaxed = _Relaxed(bins, dose_range, bin_width, steepness, method, chunk_size, flat.numel(), B * S, dtype,
                       pred.device)
    counts = torch.bincount(seg, minlength=B * S)
    denom = counts.clamp_min(1).to(dtype)[:, None]
    dvh_pred = relaxed(P.reshape(-1)[vox].to(dtype), seg, B * S) / denom
    with torch.no_grad():
        dvh_true = relaxed(target.detach().reshape(-1)[vox].to(dtype), seg, B * S) / denom
    present = (counts > 0).reshape(B, S)
    per_struct = (dvh_true - dvh_pred).abs().mean(1).reshape(B, S)
    per_struct = torch.where(present, per_struct, torch.zeros((), dtype=dtype, device=per_struct.device))
    n_s = present.sum(1)
    has = n_s > 0
    per_patient = per_struct.sum(1)[has] / n_s[has].to(dtype)
    return per_patient.mean()


class DVHLoss(nn.Module):
    """Module form of :func:`dvh_loss`; ``forward(pred, target, structures, available=None)``."""

    def __init__(self, bins=DEFAULT_BINS, steepness: float = 1.0, dose_range=DEFAULT_RANGE, bin_width=None,
                 chunk_size=None, method: str = "auto"):
        super().__init__()
        dvh_thresholds(bins, dose_range, bin_width)  # validate early
        _chunk(chunk_size, 1)
        self.kwargs = dict(bins=bins, steepness=check_positive_number(steepness, "steepness"),
                           dose_range=dose_range, bin_width=bin_width, chunk_size=chunk_size,
                           method=_check_method(method))

    def forward(self, pred, target, structures, available=None):
        return dvh_loss(pred, target, structures, available, **self.kwargs)

    def extra_repr(self) -> str:
        kw = self.kwargs
        bins = kw["bins"] if isinstance(kw["bins"], numbers.Integral) else f"<{len(kw['bins'])} thresholds>"
        out = f"bins={bins}, steepness={kw['steepness']:g}, dose_range={tuple(kw['dose_range'])}"
        out += f", bin_width={kw['bin_width']:g}" if kw["bin_width"] is not None else ""
        return out + (f", method={kw['method']!r}" if kw["method"] != "auto" else "")


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
        Passed to :func:`dvh_loss` (bins, steepness, dose_range, bin_width, chunk_size,
        method).

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
        Passed to :func:`dvh_loss` (bins, steepness, dose_range, bin_width, chunk_size,
        method).

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
