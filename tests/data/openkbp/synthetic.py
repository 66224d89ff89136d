"""A synthetic OpenKBP patient in the packed format, shared by the data tests."""
from __future__ import annotations

import numpy as np

from rtlearn.data.openkbp.format import SHAPE


def synthetic_patient(seed, ct=True, dose=True):
    """Packed arrays of a synthetic patient: a box-shaped possible-dose mask, four ROIs, a mandible partly outside."""
    rng = np.random.default_rng(seed)
    pdm = np.zeros(SHAPE, bool)
    pdm[40:90, 30:100, 20:110] = True
    arrays = {"possible_dose_mask": pdm, "voxel_dimensions": np.array([3.906, 3.906, 2.5], np.float32)}
    for i, name in enumerate(("Brainstem", "SpinalCord", "PTV70", "PTV56")):
        m = np.zeros(SHAPE, bool)
        a = 45 + 8 * i
        m[a:a + 6, 50:60 + seed, 30 + 5 * i:60 + 5 * i] = True
        arrays[name] = m
    arrays["Mandible"] = np.zeros(SHAPE, bool)
    arrays["Mandible"][35:42, 60:70, 25:35] = True     # partly outside the possible-dose mask
    if dose:
        arrays["dose_cgy"] = np.where(pdm, rng.integers(0, 7500, SHAPE), 0).astype(np.uint16)
    if ct:
        arrays["ct"] = rng.integers(0, 4096, SHAPE).astype(np.int16)
    return arrays
