"""rtlearn.data.openkbp.eval: whole-patient prediction on the full grid and the challenge's scores of a model."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from rtlearn.data.openkbp.dataset import OpenKBPDataset
from rtlearn.data.openkbp.eval import evaluate_openkbp, predict_patient
from rtlearn.data.openkbp.format import SHAPE
from rtlearn.metrics.openkbp import dose_error


class _Constant(torch.nn.Module):
    def __init__(self, value):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(()))
        self.value = value

    def forward(self, x):
        return torch.full((x.shape[0], 1) + tuple(x.shape[2:]), self.value) + 0 * self.p


@pytest.mark.parametrize("dims,downsample", [(2, 1), (2, 2), (3, 4)])
def test_predict_patient_assembles_full_grid(phantom_openkbp, dims, downsample):
    ds = OpenKBPDataset("validation", root=phantom_openkbp, dims=dims, downsample=downsample, progress=False)
    pred = predict_patient(_Constant(3.0), ds, "pt_201")
    ref = ds.patient_arrays("pt_201")
    assert pred.shape == SHAPE
    np.testing.assert_allclose(pred, 3.0 * ref["possible_dose_mask"], atol=1e-6)   # masked, upsampled, in place
    scores = evaluate_openkbp(_Constant(3.0), ds, progress=False)
    assert scores["dose_score"] == pytest.approx(dose_error(3.0 * ref["possible_dose_mask"], ref["dose"],
                                                            ref["possible_dose_mask"]))
    assert scores["n_patients"] == 1 and np.isfinite(scores["dvh_score"])
    # a mask the caller already holds gives the same prediction; a mask of the wrong shape fails clearly
    same = predict_patient(_Constant(3.0), ds, "pt_201", possible_dose_mask=ref["possible_dose_mask"])
    np.testing.assert_array_equal(same, pred)
    with pytest.raises(ValueError, match="possible_dose_mask"):
        predict_patient(_Constant(3.0), ds, "pt_201", possible_dose_mask=ref["possible_dose_mask"][:-1])
