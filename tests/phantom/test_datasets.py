"""Phantom datasets: item format, caching on disk, determinism, bad inputs."""
import numpy as np
import pytest
import torch

from rtlearn.phantom import PhantomDoseDataset, PhantomSegmentationDataset, case_seed, generate_cases, make_patient

SMALL = dict(shape=(48, 48), spacing=8.0, progress=False)


def test_dose_dataset_items_and_cache(tmp_path):
    ds = PhantomDoseDataset("breast", n=3, seed=1, root=tmp_path, **SMALL)
    assert len(ds) == 3 and ds.path.is_file() and ds.path.parent == tmp_path / "phantom"
    it = ds[0]
    assert it["input"].shape == (1, 48, 48) and it["target"].shape == (1, 48, 48) and it["mask"].shape == (1, 48, 48)
    for k in ("input", "target", "mask", "rois", "rx"):
        assert it[k].dtype == torch.float32, k
    vals = set(np.round(it["input"].unique().numpy().astype(float), 3).tolist())
    assert vals <= {0.0, 0.167, 0.333, 0.5, 0.667, 0.833, 1.0}
    assert float(it["target"][it["mask"] == 0].abs().max()) == 0.0
    assert float(it["rx"]) == 50.0
    # second construction loads the cache: identical arrays
    again = PhantomDoseDataset("breast", n=3, seed=1, root=tmp_path, **SMALL)
    torch.testing.assert_close(again[2]["target"], ds[2]["target"], rtol=0, atol=0)
    # the patient behind an item can be rebuilt from its seed
    p = make_patient("breast", ds.case_seeds[1], shape=(48, 48), spacing=8.0)
    np.testing.assert_array_equal(p.roi_map(), ds[1]["input"][0].numpy())


def test_corrupt_cache_is_regenerated(tmp_path):
    ds = PhantomDoseDataset("prostate", n=2, seed=0, root=tmp_path, **SMALL)
    ds.path.write_bytes(b"not a zip")
    ds2 = PhantomDoseDataset("prostate", n=2, seed=0, root=tmp_path, **SMALL)
    torch.testing.assert_close(ds2[1]["target"], ds[1]["target"])


def test_deterministic_across_roots_and_seeds(tmp_path):
    a = PhantomDoseDataset("prostate", n=2, seed=4, root=tmp_path / "a", inputs=("ct", "structures"), **SMALL)
    b = PhantomDoseDataset("prostate", n=2, seed=4, root=tmp_path / "b", inputs=("ct", "structures"), cache=False,
                           **SMALL)
    c = PhantomDoseDataset("prostate", n=2, seed=5, root=tmp_path / "a", inputs=("ct", "structures"), **SMALL)
    assert a.in_channels == 1 + 5 + 1 == a[0]["input"].shape[0]
    torch.testing.assert_close(a[0]["input"], b[0]["input"], rtol=0, atol=0)
    torch.testing.assert_close(a[1]["target"], b[1]["target"], rtol=0, atol=0)
    assert not torch.equal(a[0]["target"], c[0]["target"])
    assert case_seed(4, 1) != case_seed(5, 0) and case_seed(4, 1) == case_seed(4, 1)


def test_parallel_generation_identical():
    one = generate_cases("head_neck", 2, seed=2, shape=(48, 48), spacing=5.0, progress=False, n_jobs=1)
    two = generate_cases("head_neck", 2, seed=2, shape=(48, 48), spacing=5.0, progress=False, n_jobs=2)
    for k in one:
        np.testing.assert_array_equal(one[k], two[k])


def test_pareto_dataset(tmp_path):
    ds = PhantomDoseDataset("prostate", n=1, seed=0, plans_per_case=3, root=tmp_path, target_scale=78.0, **SMALL)
    assert len(ds) == 3 and ds.pareto_pair == ("Rectum", "Bladder")
    xs = [float(ds[i]["pareto_x"]) for i in range(3)]
    assert xs == sorted(xs) and xs[0] < xs[-1]
    assert float(ds[0]["target"].max()) < 1.3  # scaled by Rx
    assert not torch.equal(ds[0]["target"], ds[2]["target"])


def test_segmentation_dataset(tmp_path):
    ds = PhantomSegmentationDataset("brain", n=2, seed=0, root=tmp_path, with_dose=True, **SMALL)
    it = ds[1]
    assert it["input"].shape == (4, 48, 48) and it["target"].shape == (1, 48, 48) and it["dose"].shape == (1, 48, 48)
    assert set(it["target"].unique().tolist()) <= {0.0, 1.0} and it["target"].sum() > 0
    ct = PhantomSegmentationDataset("prostate", n=1, seed=0, root=tmp_path, targets=("PTV", "Rectum"), **SMALL)
    assert ct[0]["input"].shape == (1, 48, 48) and ct[0]["target"].shape == (2, 48, 48)


def test_dataset_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="inputs"):
        PhantomDoseDataset("breast", n=1, inputs="mri", root=tmp_path, **SMALL)
    with pytest.raises(ValueError, match="unknown site"):
        PhantomDoseDataset("liver", n=1, root=tmp_path, **SMALL)
    with pytest.raises(ValueError, match="positive int"):
        PhantomDoseDataset("breast", n=0, root=tmp_path, **SMALL)
    with pytest.raises(ValueError, match="not in the ROIs"):
        PhantomSegmentationDataset("brain", n=1, targets=("Liver",), root=tmp_path, **SMALL)
    ds = PhantomSegmentationDataset("brain", n=1, root=tmp_path, **SMALL)
    with pytest.raises(IndexError):
        ds[5]
