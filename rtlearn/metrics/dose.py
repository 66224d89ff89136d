r"""Dose-prediction errors: mean absolute difference (MAD) overall, by dose band and per ROI.

These are the error measures of Bai et al. 2021 (Tables 1-3): for a
predicted dose :math:`\hat D` and the reference :math:`D` over a region
:math:`R`,

.. math:: \mathrm{MAD}_R = \frac{1}{|R|}\sum_{i\in R} |\hat D_i - D_i|.
"""
from __future__ import annotations

import numpy as np

from .._validate import check_dose, check_mask, check_same_shape, check_spacing

__all__ = ["DOSE_BANDS_CGY", "mad", "mad_by_dose_band", "mad_per_roi", "mean_gradient_by_band"]

#: Dose bands of Bai et al. 2021, Table 1 (cGy): 0-500, 500-1000, ..., > 5000.
DOSE_BANDS_CGY = (0, 500, 1000, 2000, 3000, 4000, 5000, np.inf)


def _pair(pred, ref):
    p = check_dose(pred, "prediction", allow_negative=True)
    r = check_dose(ref, "reference")
    check_same_shape(p, r)
    return p, r


def mad(pred, ref, mask=None) -> float:
    r"""Mean absolute difference :math:`\frac{1}{|R|}\sum_{i\in R}|\hat D_i - D_i|` over ``mask`` (all voxels if None).

    Units are those of the doses. Raises if the shapes differ, a dose is NaN
    or the reference is negative (the prediction may be negative), or the mask is empty.

    Examples
    --------
    >>> mad([1., 2., 3.], [1., 1., 1.])
    1.0
    """
    p, r = _pair(pred, ref)
    if mask is None:
        return float(np.mean(np.abs(p - r)))
    m = check_mask(mask, r.shape)
    return float(np.mean(np.abs(p[m] - r[m])))


def _band_masks(ref, edges):
    edges = np.asarray(edges, dtype=float)
    if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError("edges must be an increasing sequence of at least two doses")
    return [(lo, hi, (ref >= lo) & (ref < hi)) for lo, hi in zip(edges[:-1], edges[1:])]


def mad_by_dose_band(pred, ref, edges=DOSE_BANDS_CGY, mask=None) -> dict:
    """MAD within bands of the **reference** dose, ``edges[k] <= D < edges[k+1]``.

    Returns ``{(lo, hi): {"mad": float, "n": int}}``; a band with no voxel
    gets ``mad = nan`` and ``n = 0`` (reported, not hidden). ``edges`` must be
    in the units of the doses (the default is Bai et al.'s bands in cGy).
    """
    p, r = _pair(pred, ref)
    region = np.ones(r.shape, bool) if mask is None else check_mask(mask, r.shape)
    out = {}
    for lo, hi, band in _band_masks(r, edges):
        sel = band & region
        n = int(np.count_nonzero(sel))
        out[(float(lo), float(hi))] = {"mad": float(np.mean(np.abs(p[sel] - r[sel]))) if n else float("nan"), "n": n}
    return out


def mad_per_roi(pred, ref, masks: dict) -> dict:
    """MAD inside each structure: ``{name: mad}``; empty structures are skipped with ``nan``."""
    p, r = _pair(pred, ref)
    out = {}
    for name, m in masks.items():
        m = check_mask(m, r.shape, name=f"mask {name!r}", allow_empty=True)
        out[name] = float(np.mean(np.abs(p[m] - r[m]))) if m.any() else float("nan")
    return out


def mean_gradient_by_band(ref, spacing, edges=DOSE_BANDS_CGY, mask=None) -> dict:
    r"""Mean dose-gradient magnitude :math:`|\nabla D|` (dose per mm) inside each band of the reference dose.

    The gradient is computed with central differences (:func:`numpy.gradient`)
    using the voxel ``spacing`` in mm, as in the last row of Table 1 of Bai et
    al. 2021 (cGy/mm when the dose is in cGy). Every axis needs at least two
    voxels (a 2D slice is passed as a 2D array, not as ``1 x H x W``).
    """
    r = check_dose(ref, "reference")
    if min(r.shape) < 2:
        raise ValueError(f"reference has shape {r.shape}; the dose gradient needs at least 2 voxels along every "
                         "axis (squeeze axes of length 1 and pass the matching spacing)")
    sp = check_spacing(spacing, r.ndim)
    grads = np.gradient(r, *sp)
    mag = np.sqrt(sum(g**2 for g in (grads if r.ndim > 1 else [grads])))
    region = np.ones(r.shape, bool) if mask is None else check_mask(mask, r.shape)
    out = {}
    for lo, hi, band in _band_masks(r, edges):
        sel = band & region
        out[(float(lo), float(hi))] = float(mag[sel].mean()) if sel.any() else float("nan")
    return out
