"""rtlearn.experiments.openkbp: the OpenKBP chapter's U-Net baseline, end to end on the phantom stand-in."""
from __future__ import annotations

import numpy as np
import pytest

from rtlearn.experiments.openkbp import baseline_config, train_baseline
from rtlearn.rois import ROI_NAMES


def test_baseline_runs_end_to_end_and_is_deterministic(phantom_openkbp):
    cfg = baseline_config(dims=2, downsample=4, n_train=2, n_val=1, n_test=1, epochs=1, width=4, depth=2,
                          batch_size=8, slice_step=2, num_workers=0)
    a = train_baseline(cfg, root=phantom_openkbp, device="cpu", progress=False)
    b = train_baseline(cfg, root=phantom_openkbp, device="cpu", progress=False)
    for split in ("validation", "test"):
        assert np.isfinite(a["scores"][split]["dose_score"]) and a["scores"][split]["n_patients"] == 1
        assert a["scores"][split]["dose_score"] == b["scores"][split]["dose_score"]
    assert a["datasets"]["train"].n_channels == len(ROI_NAMES) + 2
    with pytest.raises(ValueError, match="unknown baseline settings"):
        baseline_config(widht=3)
