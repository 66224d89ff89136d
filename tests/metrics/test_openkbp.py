"""OpenKBP challenge scores (dose score, DVH score) against hand-checked and brute-force references."""
from __future__ import annotations

import numpy as np
import pytest

from rtlearn.metrics import openkbp as ok


def _patient(seed=0, shape=(24, 20, 16)):
    rng = np.random.default_rng(seed)
    pdm = np.zeros(shape, bool)
    pdm[2:-2, 3:-3, 2:-2] = True
    dose = np.where(pdm, rng.uniform(0, 70, shape), 0.0)
    rois = {"PTV70": np.zeros(shape, bool), "Brainstem": np.zeros(shape, bool), "SpinalCord": np.zeros(shape, bool)}
    rois["PTV70"][8:14, 8:12, 5:10] = True
    rois["Brainstem"][4:7, 5:9, 3:12] = True
    rois["SpinalCord"][15:18, 9:11, 2:14] = True
    return dose, pdm, rois


def _brute_percentile(values, q):
    """Linear-interpolation percentile written out (independent of np.percentile)."""
    v = np.sort(np.asarray(values, float))
    pos = (v.size - 1) * q / 100.0
    lo = int(np.floor(pos))
    hi = min(lo + 1, v.size - 1)
    return v[lo] + (pos - lo) * (v[hi] - v[lo])


def test_reference_against_itself_scores_zero():
    dose, pdm, rois = _patient()
    assert ok.dose_score(dose, dose, pdm) == 0.0
    assert ok.dvh_score(dose, dose, rois, (3.906, 3.906, 2.5)) == 0.0


def test_uniform_shift_inside_mask_gives_dose_score_one():
    dose, pdm, rois = _patient()
    pred = dose + pdm                        # +1 Gy in every voxel of the possible-dose mask
    assert ok.dose_score(pred, dose, pdm) == 1.0
    # every DVH metric moves by exactly 1 Gy too (ROIs lie in the mask)
    assert ok.dvh_score(pred, dose, rois, (3.906, 3.906, 2.5)) == pytest.approx(1.0, abs=1e-12)


def test_dose_error_numerator_is_not_masked():
    dose, pdm, _ = _patient()
    pred = dose.copy()
    pred[0, 0, 0] = 5.0                      # outside the mask: still counted (challenge definition)
    assert ok.dose_error(pred, dose, pdm) == pytest.approx(5.0 / pdm.sum())


def test_dose_score_averages_patients():
    a, ma, _ = _patient(0)
    b, mb, _ = _patient(1, shape=(20, 20, 20))
    score = ok.dose_score([a + 2 * ma, b + mb], [a, b], [ma, mb])
    assert score == pytest.approx(1.5)


@pytest.mark.parametrize("voxel_dims,expected_q", [
    ((1.0, 1.0, 1.0), 90.0),                 # n = 100 voxels of 1 mm³ -> 100 - 100*100/1000
    ((2.0, 2.0, 2.5), 99.0),                 # 10 mm³ -> n = 10
    ((3.906, 3.906, 2.5), 99.7),             # 38.1 mm³ -> n = round(2.62) = 3
    ((5.0, 5.0, 5.0), 99.9),                 # 125 mm³ -> n = max(1, round(0.8)) = 1
])
def test_d01cc_hand_checked(voxel_dims, expected_q):
    dose = np.arange(1000, dtype=float).reshape(10, 10, 10)
    roi = np.ones_like(dose, bool)
    m = ok.dvh_metrics_openkbp(dose, {"Mandible": roi}, voxel_dims)["Mandible"]
    # sorted doses are 0..999, so the percentile q sits at position 999 q / 100
    assert m["D_0.1_cc"] == pytest.approx(999 * expected_q / 100, abs=1e-9)
    assert m["mean"] == pytest.approx(499.5)


def test_d01cc_value_for_1mm_voxels():
    dose = np.arange(1000, dtype=float).reshape(10, 10, 10)
    m = ok.dvh_metrics_openkbp(dose, {"Larynx": np.ones_like(dose, bool)}, (1, 1, 1))
    assert m["Larynx"]["D_0.1_cc"] == pytest.approx(899.1)


def test_target_metrics_against_brute_force():
    dose, _, rois = _patient(3)
    m = ok.dvh_metrics_openkbp(dose, rois, (3.906, 3.906, 2.5))
    v = dose[rois["PTV70"]]
    assert set(m["PTV70"]) == {"D_99", "D_95", "D_1"} and set(m["Brainstem"]) == {"D_0.1_cc", "mean"}
    assert m["PTV70"]["D_99"] == pytest.approx(_brute_percentile(v, 1))
    assert m["PTV70"]["D_95"] == pytest.approx(_brute_percentile(v, 5))
    assert m["PTV70"]["D_1"] == pytest.approx(_brute_percentile(v, 99))


def test_agrees_with_rtlearn_dvh():
    dvh = pytest.importorskip("rtlearn.dvh")
    dose, _, rois = _patient(4)
    vd = (3.906, 3.906, 2.5)
    m = ok.dvh_metrics_openkbp(dose, rois, vd)
    assert m["SpinalCord"]["D_0.1_cc"] == pytest.approx(dvh.d_cc(dose, rois["SpinalCord"], 0.1, float(np.prod(vd))))
    for metric, x in (("D_99", 99), ("D_95", 95), ("D_1", 1)):
        assert m["PTV70"][metric] == pytest.approx(dvh.dose_at_volume(dose, rois["PTV70"], x))


def test_dvh_score_is_mean_over_patient_roi_metric_cells():
    dose, _, rois = _patient(5)
    pred = dose * 1.1
    vd = (3.0, 3.0, 3.0)
    e = ok.dvh_errors(pred, dose, rois, vd)
    assert len(e) == 2 + 2 + 3                                  # 2 OARs x 2 metrics + 1 PTV x 3 metrics
    # a missing / empty ROI is not scored
    rois2 = {**rois, "Larynx": np.zeros_like(rois["PTV70"]), "Esophagus": None}
    assert ok.dvh_score(pred, dose, rois2, vd) == pytest.approx(np.mean(list(e.values())))
    # two patients: cells are pooled, not patient means averaged
    d2, _, r2 = _patient(6)
    r2 = {"PTV70": r2["PTV70"]}
    e2 = ok.dvh_errors(d2 * 0.9, d2, r2, vd)
    pooled = np.mean(list(e.values()) + list(e2.values()))
    assert ok.dvh_score([pred, d2 * 0.9], [dose, d2], [rois, r2], [vd, vd]) == pytest.approx(pooled)


def test_bad_inputs_name_the_array():
    dose, pdm, rois = _patient()
    with pytest.raises(ValueError, match=r"prediction has shape \(24, 20\).*reference grid"):
        ok.dose_score(dose[..., 0], dose, pdm)
    bad = dose.copy()
    bad[3, 4, 5] = np.nan
    with pytest.raises(ValueError, match="prediction contains 1 NaN.*nan_to_num"):
        ok.dose_score(bad, dose, pdm)
    with pytest.raises(ValueError, match=r"prediction\[1\] contains"):
        ok.dose_score([dose, bad], [dose, dose], [pdm, pdm])
    with pytest.raises(ValueError, match="NaN"):
        ok.dvh_score(bad, dose, rois, (3, 3, 3))
    with pytest.raises(ValueError, match="reference dose"):
        ok.dose_score(dose, bad, pdm)
    with pytest.raises(ValueError, match="possible_dose_mask is empty"):
        ok.dose_score(dose, dose, np.zeros_like(pdm))
    with pytest.raises(ValueError, match="possible_dose_mask has shape"):
        ok.dose_score(dose, dose, pdm[:-1])
    with pytest.raises(ValueError, match="unknown ROI 'Parotid_L'"):
        ok.dvh_metrics_openkbp(dose, {"Parotid_L": rois["PTV70"]}, (3, 3, 3))
    with pytest.raises(ValueError, match="voxel_dims"):
        ok.dvh_score(dose, dose, rois, (3, 3))
    with pytest.raises(ValueError, match="one of each per patient"):
        ok.dose_score([dose, dose], [dose], [pdm])
    with pytest.raises(ValueError, match="no contoured"):
        ok.dvh_score(dose, dose, {"Larynx": None}, (3, 3, 3))
    with pytest.raises(TypeError, match="numeric"):
        ok.dose_score(dose > 1, dose, pdm)


def test_torch_inputs_accepted():
    torch = pytest.importorskip("torch")
    dose, pdm, rois = _patient()
    assert ok.dose_score(torch.tensor(dose + pdm), torch.tensor(dose), torch.tensor(pdm)) == 1.0


def test_real_patient_self_and_masked_mean(shared_data):
    from rtlearn.data.openkbp import load_patient
    from rtlearn.rois import ROI_NAMES

    if not (shared_data / "openkbp" / "validation" / "pt_201.npz").is_file():
        pytest.skip("packed OpenKBP copy absent")
    p = load_patient("pt_201", root=shared_data / "openkbp")
    ref = p["dose_cgy"] / 100.0
    pdm = p["possible_dose_mask"]
    rois = {n: p[n] for n in ROI_NAMES if n in p}
    vd = p["voxel_dimensions"]
    assert ok.dose_score(ref, ref, pdm) == 0.0 and ok.dvh_score(ref, ref, rois, vd) == 0.0
    # a flat prediction (mean dose inside the mask): its dose error is the mean |d - mean| over the mask
    pred = np.where(pdm, ref[pdm].mean(), 0.0)
    assert ok.dose_score(pred, ref, pdm) == pytest.approx(np.abs(ref[pdm] - ref[pdm].mean()).mean())
    m = ok.dvh_metrics_openkbp(ref, rois, vd)
    assert m["PTV70"]["D_95"] == pytest.approx(np.percentile(ref[rois["PTV70"]], 5))
    assert 60 < m["PTV70"]["D_95"] < 72          # a 70 Gy target is covered at roughly its prescription
