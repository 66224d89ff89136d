r"""Dose-volume histograms and the dose metrics read from them.

A dose distribution :math:`D` (Gy) on a voxel grid and a structure :math:`S`
(a boolean mask of the same shape) define the **cumulative DVH**

.. math::

    \mathrm{DVH}_S(d) = \frac{1}{|S|} \sum_{i \in S} \mathbb{1}[D_i \ge d],

the fraction of the structure that receives at least the dose :math:`d`. It
starts at 1 for :math:`d \le \min_S D` and falls to 0 above :math:`\max_S D`.
Clinical metrics are points of this curve:

* :math:`D_{x\%}`, the dose that the hottest :math:`x\,\%` of the structure
  receives at least (D95 for target coverage, D1 and D99 for hot and cold
  spots), computed as NumPy's linearly interpolated percentile
  :math:`P_{100-x}` of the structure's doses, exactly as the OpenKBP challenge
  did (Babier et al. 2021);
* :math:`D_{0.1cc}`, the near-maximum dose of the hottest 0.1 cm³;
* :math:`V_{d}`, the fraction of the volume receiving at least :math:`d`;
* the homogeneity index :math:`HI = (D_1 - D_{99}) / R_x` and the
  conformation index :math:`CI = (V_{PTV \cap R_x})^2 / (V_{PTV} V_{R_x})`,
  as defined in Bai et al. 2021.

All functions accept NumPy arrays or torch tensors (converted to NumPy: the
exact DVH is not differentiable; see :mod:`rtlearn.losses` for the sigmoid
relaxation) and validate their inputs: doses must be finite and non-negative
(a negative dose raises ``ValueError``, as it does in the torch losses'
reference doses), and a bool is never taken for a number.
"""
from __future__ import annotations

import numpy as np

from ._validate import as_numpy, check_dose, check_mask, check_positive, check_real, check_spacing

__all__ = [
    "cumulative_dvh",
    "mean_dose",
    "max_dose",
    "dose_at_volume",
    "d_cc",
    "volume_at_dose",
    "homogeneity_index",
    "conformation_index",
    "voxel_volume_mm3",
    "dvh_metrics",
]


def _structure_doses(dose, mask) -> np.ndarray:
    d = check_dose(dose)
    m = check_mask(mask, d.shape)
    return d[m]


def cumulative_dvh(dose, mask, bins=None, max_dose=None):
    r"""Exact cumulative DVH of one structure.

    .. math:: \mathrm{DVH}_S(d_k) = \frac{1}{|S|}\sum_{i\in S}\mathbb{1}[D_i \ge d_k]

    Parameters
    ----------
    dose : array_like
        Dose (Gy), any shape; finite and non-negative.
    mask : array_like of bool
        Structure mask, same shape as ``dose``; must not be empty.
    bins : None, int or array_like, optional
        Dose axis. ``None``: 0 to ``max_dose`` in steps of 0.1 Gy (at most
        2001 points); an int ``n``: ``n`` equally spaced points from 0 to
        ``max_dose``; an array: those doses (ascending).
    max_dose : float, optional
        Upper end of the axis; defaults to the structure's maximum dose.

    Returns
    -------
    dose_axis : ndarray
        The doses :math:`d_k` (Gy).
    volume_fraction : ndarray
        :math:`\mathrm{DVH}_S(d_k)` in [0, 1], non-increasing.

    Examples
    --------
    >>> cumulative_dvh([0., 1., 2., 3.], [True] * 4, bins=[0, 1.5, 3, 4])[1]
    array([1.  , 0.5 , 0.25, 0.  ])
    """
    values = np.sort(_structure_doses(dose, mask))
    top = float(values[-1]) if max_dose is None else check_positive(max_dose, "max_dose")
    if bins is None:
        n = int(min(2001, max(2, np.floor(top / 0.1) + 2)))
        axis = np.linspace(0.0, max(top, 1e-12), n)
    elif np.isscalar(bins):
        if isinstance(bins, (bool, np.bool_)) or int(bins) < 2:
            raise ValueError(f"bins must be >= 2 points, got {bins}")
        axis = np.linspace(0.0, max(top, 1e-12), int(bins))
    else:
        axis = np.asarray(as_numpy(bins, "bins"), dtype=np.float64).ravel()
        if axis.size == 0 or not np.all(np.isfinite(axis)) or np.any(np.diff(axis) < 0):
            raise ValueError("bins must be a non-empty, finite, ascending sequence of doses")
    # number of voxels with dose >= d is n - (number strictly below d)
    below = np.searchsorted(values, axis, side="left")
    return axis, (values.size - below) / values.size


def mean_dose(dose, mask) -> float:
    """Mean dose over a structure, :math:`D_{mean} = \\frac{1}{|S|}\\sum_{i\\in S} D_i` (Gy)."""
    return float(np.mean(_structure_doses(dose, mask)))


def max_dose(dose, mask) -> float:
    """Maximum voxel dose in a structure (Gy)."""
    return float(np.max(_structure_doses(dose, mask)))


def dose_at_volume(dose, mask, percent) -> float:
    r""":math:`D_{x\%}`: the dose received by at least ``percent`` % of the structure.

    .. math:: D_{x\%} = P_{100 - x}\left(\{D_i\}_{i\in S}\right)

    with :math:`P_q` NumPy's percentile with linear interpolation, the
    definition used by the OpenKBP evaluation (so D95 is the 5th percentile,
    D1 the 99th).

    Examples
    --------
    >>> dose_at_volume(np.arange(101.), np.ones(101, bool), 95)
    5.0
    """
    percent = check_real(percent, "percent", 0.0, 100.0)
    return float(np.percentile(_structure_doses(dose, mask), 100.0 - percent))


def voxel_volume_mm3(spacing) -> float:
    """Volume of one voxel (mm³): the product of its three edge lengths (mm).

    For a 2D slice pass the in-plane spacing and the slice thickness.
    """
    sp = check_spacing(spacing, 3)
    return float(np.prod(sp))


def d_cc(dose, mask, cc=0.1, voxel_volume=None) -> float:
    r""":math:`D_{cc}`: near-maximum dose of the hottest ``cc`` cm³ of a structure.

    As in the OpenKBP evaluation: with :math:`n = \max(1, \mathrm{round}(1000\,cc / v))`
    voxels of volume :math:`v` mm³,

    .. math:: D_{0.1cc} = P_{100 - 100 n / |S|}\left(\{D_i\}_{i\in S}\right).

    A structure smaller than ``cc`` lies wholly inside its own hottest
    ``cc``, so the percentile is clamped at 0 (its minimum dose); OpenKBP's
    structures are all larger than 0.1 cm³, where the clamp never acts.

    Parameters
    ----------
    cc : float
        Volume in cm³ (default 0.1).
    voxel_volume : float
        Volume of one voxel in mm³ (e.g. ``voxel_volume_mm3(spacing)``); required.
    """
    if voxel_volume is None:
        raise ValueError("d_cc needs voxel_volume (mm³), e.g. voxel_volume_mm3(spacing)")
    v = check_positive(voxel_volume, "voxel_volume")
    cc = check_positive(cc, "cc")
    values = _structure_doses(dose, mask)
    n = max(1, int(np.round(1000.0 * cc / v)))
    q = max(0.0, 100.0 - 100.0 * n / values.size)
    return float(np.percentile(values, q))


def volume_at_dose(dose, mask, threshold) -> float:
    r""":math:`V_d`: fraction of the structure receiving at least ``threshold`` Gy.

    .. math:: V_d = \frac{1}{|S|}\sum_{i\in S}\mathbb{1}[D_i \ge d]

    Multiply by 100 for the percentage usually quoted (V20 = 30 % ...).
    """
    threshold = check_real(threshold, "threshold (dose, Gy)")
    values = _structure_doses(dose, mask)
    return float(np.count_nonzero(values >= threshold) / values.size)


def homogeneity_index(dose, ptv, rx) -> float:
    r"""Homogeneity index :math:`HI = (D_{1\%} - D_{99\%}) / R_x` (Bai et al. 2021); 0 is ideal."""
    rx = check_positive(rx, "rx (prescription dose, Gy)")
    return (dose_at_volume(dose, ptv, 1) - dose_at_volume(dose, ptv, 99)) / rx


def conformation_index(dose, ptv, rx) -> float:
    r"""Conformation index :math:`CI = V_{PTV\cap R_x}^2 / (V_{PTV}\,V_{R_x})` (Bai et al. 2021).

    :math:`V_{R_x}` is the volume (anywhere on the grid) receiving at least the
    prescription, :math:`V_{PTV\cap R_x}` the part of it inside the PTV. 1 is
    ideal; 0 if no voxel reaches the prescription.
    """
    rx = check_positive(rx, "rx (prescription dose, Gy)")
    d = check_dose(dose)
    p = check_mask(ptv, d.shape, name="ptv")
    covered = d >= rx
    v_rx = np.count_nonzero(covered)
    if v_rx == 0:
        return 0.0
    v_both = np.count_nonzero(covered & p)
    return float(v_both**2 / (np.count_nonzero(p) * v_rx))


def dvh_metrics(dose, masks: dict, spacing, targets=(), rx=None) -> dict:
    """A table of the usual metrics for every structure.

    Parameters
    ----------
    dose : array_like
        Dose (Gy).
    masks : dict[str, array_like]
        Structure name -> boolean mask. Empty structures are skipped (listed
        under the key ``"_skipped"``).
    spacing : sequence of float
        Voxel size (mm) per axis (3 values for a 3D grid; for a 2D slice pass
        3 values too, the third being the slice thickness).
    targets : iterable of str
        Names of target structures (get D99, D95, D1; the rest get Dmean and D0.1cc).
        Defaults to the names starting with ``PTV``/``GTV``/``CTV``.
    rx : float, optional
        Prescription (Gy); adds HI and CI for targets.

    Returns
    -------
    dict[str, dict[str, float]]
    """
    d = check_dose(dose)
    sp = np.asarray(spacing, dtype=float).ravel()
    if sp.size < d.ndim:
        raise ValueError(f"spacing needs at least {d.ndim} values for a {d.ndim}D dose, got {sp.size}")
    check_spacing(sp, sp.size)
    vox = float(np.prod(sp))
    targets = set(targets) or {k for k in masks if k.upper().startswith(("PTV", "GTV", "CTV"))}
    out, skipped = {}, []
    for name, m in masks.items():
        m = check_mask(m, d.shape, name=f"mask {name!r}", allow_empty=True)
        if not m.any():
            skipped.append(name)
            continue
        row = {"Dmean": mean_dose(d, m), "Dmax": max_dose(d, m)}
        if name in targets:
            row.update(D99=dose_at_volume(d, m, 99), D95=dose_at_volume(d, m, 95), D1=dose_at_volume(d, m, 1))
            if rx is not None:
                row.update(HI=homogeneity_index(d, m, rx), CI=conformation_index(d, m, rx))
        else:
            row["D0.1cc"] = d_cc(d, m, 0.1, vox)
        out[name] = row
    if skipped:
        out["_skipped"] = skipped
    return out
