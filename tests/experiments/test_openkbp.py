"""rtlearn.experiments.openkbp: the OpenKBP chapter's U-Net baseline, end to end on the phantom stand-in."""
from __future__ import annotations

import numpy as np
import pytest

from rtlearn.experiments.openkbp import Config, default_config, load_data, run
from rtlearn.rois import ROI_NAMES


def test_baseline_runs_end_to_end_and_is_deterministic(phantom_openkbp):
    cfg = default_config("quick", dims=2, downsample=4, n_train=2, n_val=1, n_test=1, epochs=1, width=4, depth=2,
                         batch_size=8, slice_step=2, num_workers=0)
    data = load_data(cfg, root=phantom_openkbp, progress=False)
    a = run(cfg, data=data, device="cpu", progress=False)
    b = run(cfg, root=phantom_openkbp, device="cpu", progress=False)
    for split in ("validation", "test"):
        assert np.isfinite(a["scores"][split]["dose_score"]) and a["scores"][split]["n_patients"] == 1
        assert a["scores"][split]["dose_score"] == b["scores"][split]["dose_score"]
    assert a["datasets"]["train"].n_channels == len(ROI_NAMES) + 2
    with pytest.raises(ValueError, match="unknown baseline settings"):
        default_config(widht=3)


def test_profiles_are_read_in_one_place(monkeypatch):
    monkeypatch.delenv("RTLEARN_PROFILE", raising=False)
    assert default_config() == Config() == default_config("quick")
    study, full = default_config("study"), default_config("full")
    assert study.dims == 2 and study.n_train > Config().n_train and study.early_stopping
    assert full.dims == 3 and full.n_train is None
    monkeypatch.setenv("RTLEARN_PROFILE", "full")
    assert default_config() == full
    with pytest.raises(ValueError, match="not a profile"):
        default_config("huge")
