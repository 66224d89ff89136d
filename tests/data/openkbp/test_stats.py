"""rtlearn.data.openkbp.stats: dose-band counts and per-patient statistics."""
from __future__ import annotations

import numpy as np
import pytest

from rtlearn.data.openkbp import stats as st


def test_dose_band_counts_against_loop():
    rng = np.random.default_rng(0)
    dose = rng.uniform(0, 80, (6, 7, 8))
    mask = rng.random(dose.shape) < 0.5
    counts = st.dose_band_counts(dose, mask)
    edges = st.DOSE_BAND_EDGES_GY
    ref = [sum(1 for v in dose[mask] if edges[k] <= v < edges[k + 1]) for k in range(len(edges) - 1)]
    assert counts.tolist() == ref and counts.sum() == mask.sum()
    s = st.patient_statistics(dose, mask, (2.0, 2.0, 2.5))
    assert s["pdm_voxels"] == mask.sum() and s["pdm_cc"] == pytest.approx(mask.sum() * 10 / 1000)
    with pytest.raises(ValueError, match="increasing"):
        st.dose_band_counts(dose, mask, edges=(5, 0))
