"""rtlearn.data.openkbp.dataset: find, load and serve OpenKBP (synthetic archives; real data when present)."""
from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch

from rtlearn.data.openkbp import dataset as ok
from rtlearn.data.openkbp.format import ROI_NAMES, to_zyx
from rtlearn.io import save_npz

from .synthetic import synthetic_patient


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("kbp") / "openkbp"
    spec = {"pt_1": {}, "pt_2": {"ct": False}, "pt_3": {"dose": False}, "pt_4": {}}
    for i, (pid, kw) in enumerate(spec.items()):
        save_npz(root / "train" / f"{pid}.npz", **synthetic_patient(i, **kw))
    (root / "manifest.json").write_text("{}")
    return root


def test_find_openkbp_order(tmp_path, monkeypatch, synthetic_root):
    assert ok.find_openkbp(synthetic_root) == synthetic_root
    assert ok.find_openkbp(synthetic_root.parent) == synthetic_root       # parent holding openkbp/
    monkeypatch.setenv("RTLEARN_DATA", str(synthetic_root.parent))
    assert ok.candidate_roots()[0] == synthetic_root
    assert ok.find_openkbp() == synthetic_root
    with pytest.raises(FileNotFoundError, match="download_openkbp.py"):
        ok.find_openkbp(tmp_path / "empty")


def test_find_openkbp_missing_says_how_to_download(tmp_path, monkeypatch):
    monkeypatch.setenv("RTLEARN_DATA", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "b"))
    monkeypatch.setenv("RTLEARN_SHARED_DATA", str(tmp_path / "c"))
    cands = ok.candidate_roots()
    assert cands[:3] == [tmp_path / "a" / "openkbp", tmp_path / "b" / "rtlearn" / "openkbp",
                         tmp_path / "c" / "openkbp"]
    monkeypatch.setattr(ok, "candidate_roots", lambda path=None: cands[:3])
    with pytest.raises(FileNotFoundError, match=r"python data_scripts/download_openkbp.py") as info:
        ok.find_openkbp()
    assert str(tmp_path / "a" / "openkbp") in str(info.value)
    assert not ok.available()


def test_dataset_3d_items_match_archives(synthetic_root):
    ds = ok.OpenKBPDataset("train", root=synthetic_root, dims=3, progress=False, verbose=False)
    assert ds.patients == ["pt_1", "pt_4"]                     # pt_2 has no CT, pt_3 no dose
    assert ds.skipped == {"pt_2": "no CT", "pt_3": "no dose"}
    item = ds[0]
    src = synthetic_patient(0)
    assert item["input"].shape == (12, 128, 128, 128) and item["input"].dtype == torch.float32
    assert ds.channel_names[:10] == list(ROI_NAMES) and ds.channel_names[10:] == ["CT", "possible_dose_mask"]
    np.testing.assert_array_equal(item["target"][0].numpy(), to_zyx(src["dose_cgy"]).astype(np.float32) / 100)
    np.testing.assert_array_equal(item["mask"][0].numpy(), to_zyx(src["possible_dose_mask"]))
    np.testing.assert_array_equal(item["input"][ROI_NAMES.index("PTV70")].numpy(), to_zyx(src["PTV70"]))
    assert not item["input"][ROI_NAMES.index("Larynx")].any()          # missing ROI: zero channel
    assert item["roi_available"].tolist() == [n in src for n in ROI_NAMES]
    box = ds.records["pt_1"]["bbox"].astype(int)
    ct_in = item["input"][10].numpy()[box[2, 0]:box[2, 1], box[0, 0]:box[0, 1], box[1, 0]:box[1, 1]]
    ref = (to_zyx(src["ct"]).astype(np.float32)[box[2, 0]:box[2, 1], box[0, 0]:box[0, 1], box[1, 0]:box[1, 1]]
           - 1024) / 1000
    np.testing.assert_allclose(ct_in, ref, rtol=0, atol=1e-6)
    assert item["patient"] == "pt_1"


def test_dataset_2d_slices_and_skipping(synthetic_root):
    ds = ok.OpenKBPDataset("train", root=synthetic_root, dims=2, inputs=("rois",), progress=False, verbose=False)
    assert ds.patients == ["pt_1", "pt_2", "pt_4"] and ds.skipped == {"pt_3": "no dose"}   # CT not needed
    assert len(ds) == 3 * 90                                   # slices z = 20..109 meet the mask
    i = ds.index.index(("pt_2", 45))
    item = ds[i]
    src = synthetic_patient(1, ct=False)
    assert item["input"].shape == (10, 128, 128) and item["slice"] == 45
    np.testing.assert_array_equal(item["target"][0].numpy(), src["dose_cgy"][:, :, 45].astype(np.float32) / 100)
    np.testing.assert_array_equal(item["input"][ROI_NAMES.index("SpinalCord")].numpy(), src["SpinalCord"][:, :, 45])
    full = ok.OpenKBPDataset("train", root=synthetic_root, dims=2, inputs=("rois",), patients=["pt_1"],
                             slices="all", progress=False, verbose=False)
    assert len(full) == 128 and not full[0]["target"].any()
    with pytest.raises(ValueError, match="pt_2 \\(no CT\\)"):
        ok.OpenKBPDataset("train", root=synthetic_root, strict=True, progress=False)
    with pytest.raises(ValueError, match="inputs"):
        ok.OpenKBPDataset("train", root=synthetic_root, inputs=("dose",), progress=False)
    with pytest.raises(FileNotFoundError, match="pt_99"):
        ok.OpenKBPDataset("train", root=synthetic_root, patients=["pt_99"], progress=False)


def test_dataset_from_cache_equals_direct(synthetic_root, tmp_path):
    path = tmp_path / "train.npz"
    a = ok.OpenKBPDataset("train", root=synthetic_root, dims=2, cache=path, progress=False, verbose=False)
    assert path.is_file()
    b = ok.OpenKBPDataset("train", root=synthetic_root, dims=2, progress=False, verbose=False)
    assert a.index == b.index
    for i in (0, 57, len(a) - 1):
        x, y = a[i], b[i]
        for k in ("input", "target", "mask"):
            assert torch.equal(x[k], y[k])
    with pytest.raises(ValueError, match="other settings"):     # a cache built differently is not reused
        ok.OpenKBPDataset("train", root=synthetic_root, cache=path, margin=4, progress=False, verbose=False)
    # patient arrays expanded from the cache equal the archive
    arr = a.patient_arrays("pt_4")
    src = synthetic_patient(3)
    np.testing.assert_array_equal(arr["dose"], src["dose_cgy"] / 100.0)
    assert set(arr["rois"]) == {"Brainstem", "SpinalCord", "PTV70", "PTV56", "Mandible"}
    assert arr["spacing_zyx"] == pytest.approx((2.5, 3.906, 3.906))


def test_corrupt_archive_is_named(tmp_path):
    root = tmp_path / "openkbp"
    (root / "train").mkdir(parents=True)
    (root / "train" / "pt_5.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="pt_5.npz"):
        ok.load_patient("pt_5", root=root)
    save_npz(root / "train" / "pt_6.npz", dose_cgy=np.zeros((4, 4, 4), np.uint16),
             voxel_dimensions=np.ones(3, np.float32))
    with pytest.raises(ValueError, match="pt_6.npz.*shape"):
        ok.load_patient("pt_6", root=root)
    with pytest.raises(FileNotFoundError, match="pt_7.npz"):
        ok.load_patient("pt_7", root=root)


def _real_root(shared_data):
    root = shared_data / "openkbp"
    if not (root / "validation").is_dir():
        pytest.skip("packed OpenKBP copy absent")
    return root


def test_real_validation_patients(shared_data):
    root = _real_root(shared_data)
    ds = ok.OpenKBPDataset("validation", root=root, dims=2, patients=3, progress=False, verbose=False)
    assert set(ds.patients) | set(ds.skipped) == {"pt_201", "pt_202", "pt_203"} and len(ds) > 50
    pid, z = ds.index[len(ds) // 3]
    item = ds[len(ds) // 3]
    src = ok.load_patient(pid, root=root)
    np.testing.assert_array_equal(item["target"][0].numpy(), src["dose_cgy"][:, :, z].astype(np.float32) / 100)
    arr = ds.patient_arrays(pid)
    for n, m in arr["rois"].items():
        np.testing.assert_array_equal(m, src[n], err_msg=n)


@pytest.mark.skipif(not os.environ.get("RTLEARN_SLOW_TESTS"), reason="set RTLEARN_SLOW_TESTS=1 (~15 s)")
def test_real_load_all_training_patients_within_60s(shared_data):
    root = _real_root(shared_data)
    t = time.perf_counter()
    ds = ok.OpenKBPDataset("train", root=root, dims=2, inputs=("rois", "possible_dose_mask"), progress=False,
                           verbose=False)
    assert time.perf_counter() - t < 60
    assert len(ds.patients) + len(ds.skipped) == len(ok.list_patients("train", root))
