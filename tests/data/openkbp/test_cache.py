"""rtlearn.data.openkbp.cache: the compact cropped / bit-packed training cache (lossless round trips)."""
from __future__ import annotations

import numpy as np
import pytest

from rtlearn.data.openkbp import cache as kcache
from rtlearn.data.openkbp.format import ROI_NAMES

from .synthetic import synthetic_patient


def test_compact_expand_roundtrip_and_packing():
    arrays = synthetic_patient(0)
    rec = kcache.compact_patient(arrays, margin=4)
    back = kcache.expand_patient(rec)
    box = rec["bbox"].astype(int)
    for key in arrays:
        if key == "ct":    # CT is kept inside the box only
            sl = tuple(slice(a, b) for a, b in box)
            np.testing.assert_array_equal(back["ct"][sl], arrays["ct"][sl])
        else:
            np.testing.assert_array_equal(back[key], arrays[key], err_msg=key)
    assert rec["bits"].dtype == np.uint16 and rec["dose_cgy"].dtype == np.uint16
    # the box holds the mask, every ROI and the margin
    assert box[0].tolist() == [35 - 4, 90 + 4] and box[2].tolist() == [20 - 4, 110 + 4]
    np.testing.assert_array_equal(rec["roi_available"], [n in arrays for n in ROI_NAMES])
    # uint8 CT: quantisation error at most half a step
    rec8 = kcache.compact_patient(arrays, ct_dtype="uint8")
    sl = tuple(slice(a, b) for a, b in rec8["bbox"].astype(int))
    err = np.abs(kcache.ct_values(rec8["ct"]) - arrays["ct"][sl])
    assert rec8["ct"].dtype == np.uint8 and err[arrays["ct"][sl] <= 4080].max() <= kcache.CT_UINT8["step"] / 2
    with pytest.raises(ValueError, match="margin"):
        kcache.compact_patient(arrays, margin=-1)


def test_pack_unpack_masks_against_loop():
    rng = np.random.default_rng(1)
    masks = {n: rng.random((5, 6, 7)) < 0.3 for n in ROI_NAMES[::2] + ("possible_dose_mask",)}
    bits = kcache.pack_masks(masks, (5, 6, 7))
    un = kcache.unpack_masks(bits)
    for i, n in enumerate(ROI_NAMES + ("possible_dose_mask",)):
        np.testing.assert_array_equal(un[i], masks.get(n, np.zeros((5, 6, 7), bool)), err_msg=n)


def test_cache_file_roundtrip_and_corruption(tmp_path):
    recs = {"pt_1": kcache.compact_patient(synthetic_patient(0)),
            "pt_2": kcache.compact_patient(synthetic_patient(1, ct=False))}
    path = kcache.save_cache(tmp_path / "c.npz", recs, meta={"split": "train"})
    loaded, meta = kcache.load_cache(path)
    assert meta["split"] == "train" and list(loaded) == ["pt_1", "pt_2"]
    for pid in recs:
        assert set(loaded[pid]) == set(recs[pid])
        for k in recs[pid]:
            np.testing.assert_array_equal(loaded[pid][k], recs[pid][k])
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match="c.npz"):
        kcache.load_cache(path)
