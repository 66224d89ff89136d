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


def oar_mean_doses(split: str = "train", root=None, oars=None, rx_gy: float = 70.0, progress: bool = False) -> dict:
    """Mean dose of every contoured organ at risk, per patient, as % of ``rx_gy``.

    For each patient of ``split`` with a reference dose, and each OAR it contours,
    the mean of the dose over the whole OAR mask (overlap with targets included)
    divided by the 70 Gy prescription of OpenKBP's PTV70.

    Returns
    -------
    dict of str to ndarray
        ``{oar: values}`` (one value per patient that contours the organ).
    """
    from tqdm.auto import tqdm

    from .dataset import list_patients, load_patient
    from .format import OARS

    if not np.isfinite(rx_gy) or rx_gy <= 0:
        raise ValueError(f"rx_gy must be a positive dose in Gy, got {rx_gy!r}")
    oars = tuple(OARS if oars is None else oars)
    unknown = [o for o in oars if o not in OARS]
    if unknown:
        raise ValueError(f"unknown OARs {unknown}; OpenKBP's are {OARS}")
    out = {o: [] for o in oars}
    for pt in tqdm(list_patients(split, root), desc=f"OpenKBP {split} OAR doses", disable=not progress):
        arr = load_patient(pt, split, root)
        if "dose_cgy" not in arr:
            continue
        dose = arr["dose_cgy"].astype(np.float64) / 100.0
        for o in oars:
            if o in arr and arr[o].any():
                out[o].append(100.0 * dose[arr[o].astype(bool)].mean() / rx_gy)
    return {o: np.asarray(v) for o, v in out.items()}


def oar_mean_dose_quartiles(split: str = "train", root=None, **kw) -> dict:
    """``{oar: (n_patients, q25, median, q75)}`` of :func:`oar_mean_doses` (% of 70 Gy, numpy percentiles)."""
    vals = oar_mean_doses(split, root, **kw)
    return {o: (int(v.size), *(float(q) for q in np.percentile(v, [25, 50, 75]))) for o, v in vals.items() if v.size}
