"""Phantom stand-in, statistics, whole-patient prediction/scoring and the baseline's code path."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from rtlearn.data import openkbp_stats as st
from rtlearn.data.openkbp import OpenKBPDataset, list_patients
from rtlearn.data.openkbp_eval import evaluate_openkbp, predict_patient
from rtlearn.data.openkbp_format import ROI_NAMES, SHAPE
from rtlearn.data.openkbp_phantom import phantom_patient_arrays, write_phantom_openkbp
from rtlearn.metrics.openkbp import dose_error


@pytest.fixture(scope="module")
def phantom_root(tmp_path_factory):
    return write_phantom_openkbp(tmp_path_factory.mktemp("ph") / "openkbp",
                                 counts={"train": 2, "validation": 1, "test": 1}, progress=False)


def test_phantom_archives_follow_the_format(phantom_root):
    from rtlearn.data.openkbp import load_patient

    assert list_patients("validation", phantom_root) == ["pt_201"]
    arrays = load_patient("pt_1", root=phantom_root)          # validated against the packed format
    assert {"ct", "dose_cgy", "possible_dose_mask", "PTV70"} <= set(arrays)
    assert not arrays["dose_cgy"][~arrays["possible_dose_mask"]].any()
    assert 6000 < arrays["dose_cgy"].max() < 8000
    again = phantom_patient_arrays(1)
    for k in arrays:                                          # deterministic: same seed, same patient
        np.testing.assert_array_equal(arrays[k], again[k])


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


class _Constant(torch.nn.Module):
    def __init__(self, value):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(()))
        self.value = value

    def forward(self, x):
        return torch.full((x.shape[0], 1) + tuple(x.shape[2:]), self.value) + 0 * self.p


@pytest.mark.parametrize("dims,downsample", [(2, 1), (2, 2), (3, 4)])
def test_predict_patient_assembles_full_grid(phantom_root, dims, downsample):
    ds = OpenKBPDataset("validation", root=phantom_root, dims=dims, downsample=downsample, progress=False)
    pred = predict_patient(_Constant(3.0), ds, "pt_201")
    ref = ds.patient_arrays("pt_201")
    assert pred.shape == SHAPE
    np.testing.assert_allclose(pred, 3.0 * ref["possible_dose_mask"], atol=1e-6)   # masked, upsampled, in place
    scores = evaluate_openkbp(_Constant(3.0), ds, progress=False)
    assert scores["dose_score"] == pytest.approx(dose_error(3.0 * ref["possible_dose_mask"], ref["dose"],
                                                            ref["possible_dose_mask"]))
    assert scores["n_patients"] == 1 and np.isfinite(scores["dvh_score"])


def test_baseline_runs_end_to_end_and_is_deterministic(phantom_root):
    from rtlearn.data.openkbp_baseline import baseline_config, train_baseline

    cfg = baseline_config(dims=2, downsample=4, n_train=2, n_val=1, n_test=1, epochs=1, width=4, depth=2,
                          batch_size=8, slice_step=2, num_workers=0)
    a = train_baseline(cfg, root=phantom_root, device="cpu", progress=False)
    b = train_baseline(cfg, root=phantom_root, device="cpu", progress=False)
    for split in ("validation", "test"):
        assert np.isfinite(a["scores"][split]["dose_score"]) and a["scores"][split]["n_patients"] == 1
        assert a["scores"][split]["dose_score"] == b["scores"][split]["dose_score"]
    assert a["datasets"]["train"].n_channels == len(ROI_NAMES) + 2
    with pytest.raises(ValueError, match="unknown baseline settings"):
        baseline_config(widht=3)
