r"""Dosimetric impact of a segmentation: the relative mean absolute dose error (RMAE).

Rüfenacht et al. (2023, ``ruefenacht2023doselo``, Eq. 5) plan a dose on the predicted target,
:math:`D_{\hat S_T}`, and on the true target, :math:`D_{S_T}`, and compare them
voxel by voxel relative to the reference,

.. math:: \mathrm{RMAE} = \frac{1}{N}\sum_{i=1}^{N} \frac{|D_{S_T,i} - D_{\hat S_T,i}|}{D_{S_T,i}} .

Taken literally this divides by zero outside the patient and explodes where the
reference dose is small (a 1 Gy difference at 0.1 Gy counts 10). The paper does
not say how it avoided that, so we state our choice: the denominator is floored
at a fraction of the prescription,

.. math::

    \mathrm{RMAE} = \frac{1}{|R|}\sum_{i\in R} \frac{|D_{S_T,i} - D_{\hat S_T,i}|}{\max(D_{S_T,i},\ f\,D_{Rx})},

with :math:`f = 0.1` by default (voxels below 10 % of the prescription count
absolute differences relative to 10 % of the prescription) and :math:`R` the
evaluation region (the body or possible-dose mask; all voxels if none is
given). With :math:`f = 0` and a strictly positive reference this is Eq. (5)
exactly. Our RMAE values are therefore comparable with each other, not with the
paper's 0.449 / 0.258.
"""
from __future__ import annotations

import numbers

import numpy as np

from .._validate import check_dose, check_mask, check_same_shape

__all__ = ["rmae", "relative_dose_error", "RMAE_FLOOR_FRACTION"]

#: Default floor of the RMAE denominator, as a fraction of the prescription.
RMAE_FLOOR_FRACTION = 0.1


def _denominator(ref, rx, floor_fraction):
    if isinstance(floor_fraction, bool) or not isinstance(floor_fraction, numbers.Real) \
            or not np.isfinite(floor_fraction) or not 0 <= floor_fraction <= 1:
        raise ValueError(f"floor_fraction must be a number in [0, 1] (fraction of the prescription), got "
                         f"{floor_fraction!r}")
    if rx is None:
        rx = float(ref.max())
        if rx <= 0:
            raise ValueError("the reference dose is zero everywhere; give rx (prescription, Gy) explicitly")
    elif isinstance(rx, bool) or not isinstance(rx, numbers.Real) or not np.isfinite(rx) or rx <= 0:
        raise ValueError(f"rx (prescription dose, Gy) must be a positive number, got {rx!r}")
    den = np.maximum(ref, floor_fraction * float(rx))
    if np.any(den <= 0):
        raise ValueError("the reference dose is 0 in some voxels and floor_fraction is 0: the ratio is undefined; "
                         "use floor_fraction > 0 or restrict the region with mask")
    return den


def relative_dose_error(dose, ref, rx=None, floor_fraction: float = RMAE_FLOOR_FRACTION) -> np.ndarray:
    r"""Voxel map :math:`|D_{S_T} - D_{\hat S_T}| / \max(D_{S_T}, f D_{Rx})` (the summand of the RMAE).

    Parameters
    ----------
    dose : array
        Dose planned on the predicted segmentation, :math:`D_{\hat S_T}` (Gy).
    ref : array
        Reference dose planned on the true target, :math:`D_{S_T}` (Gy), same shape.
    rx : float, optional
        Prescription (Gy); default: the maximum of ``ref``.
    floor_fraction : float in [0, 1]
        :math:`f`, the floor of the denominator as a fraction of ``rx``.
    """
    d = check_dose(dose, "dose")
    r = check_dose(ref, "ref")
    check_same_shape(d, r, "dose", "ref")
    return np.abs(r - d) / _denominator(r, rx, floor_fraction)


def rmae(dose, ref, mask=None, rx=None, floor_fraction: float = RMAE_FLOOR_FRACTION) -> float:
    r"""Relative mean absolute dose error, Eq. (5) of Rüfenacht et al. 2023 with a floored denominator.

    .. math::

        \mathrm{RMAE} = \frac{1}{|R|}\sum_{i\in R}
        \frac{|D_{S_T,i} - D_{\hat S_T,i}|}{\max(D_{S_T,i},\ f\,D_{Rx})}

    Parameters
    ----------
    dose, ref, rx, floor_fraction
        As in :func:`relative_dose_error`.
    mask : array of bool, optional
        Evaluation region :math:`R` (body / possible-dose mask); all voxels if None.

    Returns
    -------
    float
        Dimensionless; 0 for identical doses.

    Examples
    --------
    >>> rmae([50., 1.], [60., 2.], rx=60.)   # (10/60 + 1/6) / 2
    0.16666666666666666
    """
    d = check_dose(dose, "dose")
    r = check_dose(ref, "ref")
    check_same_shape(d, r, "dose", "ref")
    if rx is None:
        rx = float(r.max()) if r.max() > 0 else None  # prescription default: the reference maximum
    if mask is not None:
        m = check_mask(mask, r.shape)
        d, r = d[m], r[m]
    return float(relative_dose_error(d, r, rx, floor_fraction).mean())
