"""Descriptive statistics of OpenKBP patients: mask sizes and how voxels split over dose bands.

The dose-band histogram is the class imbalance behind the sharp loss (Bai et al.
2021): inside the possible-dose mask most voxels receive low dose, and only a
small fraction lies in the high-dose bands where the targets are.
"""
from __future__ import annotations

import numpy as np

from ..._validate import check_dose, check_mask

DOSE_BAND_EDGES_GY = tuple(float(e) for e in range(0, 80, 5)) + (np.inf,)
"""Band edges 0, 5, ..., 75 Gy and +inf: bands [0, 5), [5, 10), ..., [75, inf)."""


def dose_band_counts(dose, mask=None, edges=DOSE_BAND_EDGES_GY) -> np.ndarray:
    """Number of voxels (inside ``mask``) whose dose falls in each band ``[edges[k], edges[k+1])``.

    Parameters
    ----------
    dose : array-like
        Dose in Gy.
    mask : array-like of bool, optional
        Count only these voxels (e.g. the possible-dose mask).
    edges : sequence of float
        Increasing band edges in Gy (the last may be ``inf``).
    """
    d = check_dose(dose, "dose")
    edges = np.asarray(edges, dtype=np.float64)
    if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError(f"edges must be an increasing sequence of at least 2 doses, got {edges.tolist()}")
    if mask is not None:
        d = d[check_mask(mask, d.shape, "mask", allow_empty=True)]
    idx = np.searchsorted(edges, d.ravel(), side="right") - 1
    ok = (idx >= 0) & (idx < edges.size - 1)
    return np.bincount(idx[ok], minlength=edges.size - 1)


def patient_statistics(dose, possible_dose_mask, voxel_dimensions, edges=DOSE_BAND_EDGES_GY) -> dict:
    """Mask size and dose-band counts of one patient.

    Returns
    -------
    dict
        ``pdm_voxels``, ``pdm_cc`` (volume in cm³), ``pdm_fraction`` (of the grid),
        ``band_counts`` (voxels of the mask per dose band), ``max_dose`` (Gy).
    """
    d = check_dose(dose, "dose")
    m = check_mask(possible_dose_mask, d.shape, "possible_dose_mask")
    vv = float(np.prod(np.asarray(voxel_dimensions, dtype=np.float64)))
    n = int(m.sum())
    return {"pdm_voxels": n, "pdm_cc": n * vv / 1000.0, "pdm_fraction": n / m.size,
            "band_counts": dose_band_counts(d, m, edges), "max_dose": float(d.max())}
