"""rtlearn.data.openkbp.phantom: the phantom stand-in written in the packed OpenKBP format."""
from __future__ import annotations

import numpy as np

from rtlearn.data.openkbp.dataset import list_patients, load_patient
from rtlearn.data.openkbp.phantom import phantom_patient_arrays


def test_phantom_archives_follow_the_format(phantom_openkbp):
    assert list_patients("validation", phantom_openkbp) == ["pt_201"]
    arrays = load_patient("pt_1", root=phantom_openkbp)          # validated against the packed format
    assert {"ct", "dose_cgy", "possible_dose_mask", "PTV70"} <= set(arrays)
    assert not arrays["dose_cgy"][~arrays["possible_dose_mask"]].any()
    assert 6000 < arrays["dose_cgy"].max() < 8000
    again = phantom_patient_arrays(1)
    for k in arrays:                                          # deterministic: same seed, same patient
        np.testing.assert_array_equal(arrays[k], again[k])
