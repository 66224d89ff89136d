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


# --------------------------------------------------------------------------- OAR mean doses of a split
def test_oar_mean_doses_match_a_direct_computation(phantom_openkbp):
    from rtlearn.data.openkbp.dataset import list_patients, load_patient
    from rtlearn.data.openkbp.stats import oar_mean_dose_quartiles, oar_mean_doses

    vals = oar_mean_doses("train", root=phantom_openkbp)
    for o, v in vals.items():
        ref = []
        for pt in list_patients("train", phantom_openkbp):
            a = load_patient(pt, "train", phantom_openkbp)
            if o in a and a[o].any() and "dose_cgy" in a:
                ref.append(sum(a["dose_cgy"][a[o]].astype(float)) / a[o].sum() / 100 / 70 * 100)
        np.testing.assert_allclose(v, ref, rtol=1e-9)
    q = oar_mean_dose_quartiles("train", root=phantom_openkbp)
    for o, (n, q25, q50, q75) in q.items():
        assert n == vals[o].size and q25 <= q50 <= q75
        assert q50 == pytest.approx(float(np.median(vals[o])))


def test_oar_mean_doses_rejects_bad_arguments(phantom_openkbp):
    from rtlearn.data.openkbp.stats import oar_mean_doses

    with pytest.raises(ValueError, match="unknown OARs"):
        oar_mean_doses("train", root=phantom_openkbp, oars=("Heart",))
    with pytest.raises(ValueError, match="rx_gy"):
        oar_mean_doses("train", root=phantom_openkbp, rx_gy=0.0)
    with pytest.raises(ValueError, match="split"):
        oar_mean_doses("nope", root=phantom_openkbp)
