"""OpenKBP CSV reader and CSV -> packed-archive preparation."""
from __future__ import annotations

import json

import numpy as np
import pytest

from rtlearn.data.openkbp import prepare as prep
from rtlearn.data.openkbp.format import ARRAY_DTYPES, SHAPE

N = int(np.prod(SHAPE))


def _write_sparse(path, idx, values=None):
    lines = [",data"]
    if values is None:
        lines += [f"{i}," for i in idx]
    else:
        lines += [f"{i},{float(v)!r}" for i, v in zip(idx, values)]
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture()
def csv_patient(tmp_path):
    """A small synthetic patient in the release's sparse-CSV layout, plus the dense arrays it encodes."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "provided-data" / "train-pats" / "pt_7"
    folder.mkdir(parents=True)
    pdm_idx = np.sort(rng.choice(N, 3000, replace=False))
    gy = np.round(rng.uniform(0, 75, pdm_idx.size), 3)
    gy[:5] = [0.0, 0.004, 0.005, 0.006, 7.675]        # rounding edge cases
    ct_idx = np.sort(rng.choice(N, 5000, replace=False))
    ct = rng.integers(1, 4096, ct_idx.size).astype(float)
    rois = {"Brainstem": pdm_idx[:40], "PTV70": pdm_idx[100:900], "PTV56": pdm_idx[50:1200]}
    _write_sparse(folder / "dose.csv", pdm_idx, gy)
    _write_sparse(folder / "ct.csv", ct_idx, ct)
    _write_sparse(folder / "possible_dose_mask.csv", pdm_idx)
    for name, idx in rois.items():
        _write_sparse(folder / f"{name}.csv", idx)
    np.savetxt(folder / "voxel_dimensions.csv", [3.906, 3.906, 2.5])

    dense = {"voxel_dimensions": np.array([3.906, 3.906, 2.5], np.float32)}
    dose = np.zeros(N, np.uint16)
    dose[pdm_idx] = [int(round(v * 100)) for v in gy]    # Python's own rounding as the reference
    dense["dose_cgy"] = dose.reshape(SHAPE)
    c = np.zeros(N, np.int16)
    c[ct_idx] = ct
    dense["ct"] = c.reshape(SHAPE)
    for name, idx in {"possible_dose_mask": pdm_idx, **rois}.items():
        m = np.zeros(SHAPE, bool)
        m[np.unravel_index(idx, SHAPE)] = True
        dense[name] = m
    return folder, dense


def test_prepare_patient_matches_dense(csv_patient):
    folder, dense = csv_patient
    arrays = prep.prepare_patient(folder)
    assert set(arrays) == set(dense)          # no key for ROIs that are absent (Larynx, ...)
    for key, ref in dense.items():
        assert arrays[key].dtype == ARRAY_DTYPES[key], key
        np.testing.assert_array_equal(arrays[key], ref, err_msg=key)
    flat = arrays["dose_cgy"].ravel()
    assert flat.max() <= 7500 and arrays["dose_cgy"].shape == SHAPE


def test_dose_rounding_edges(csv_patient):
    folder, _ = csv_patient
    idx, gy = prep.read_sparse_csv(folder / "dose.csv", with_values=True)
    cgy = prep.prepare_patient(folder)["dose_cgy"].ravel()[idx[:5]]
    # 0.005 Gy -> 0.5 cGy -> 0 and 7.675 Gy -> 767.5 cGy -> 768: round half to even, as the packed copy
    np.testing.assert_array_equal(cgy, [0, 0, 0, 1, 768])


def test_missing_ct_gives_no_key(csv_patient):
    folder, _ = csv_patient
    (folder / "ct.csv").unlink()
    assert "ct" not in prep.prepare_patient(folder)


@pytest.mark.parametrize("content,match", [
    ("index,value\n1,2\n", "not an OpenKBP sparse CSV"),
    (",data\n12,abc\n", "could not be parsed"),
    (",data\n12,1.0\n13\n", "could not be parsed"),
    (f",data\n{N},1.0\n", "outside"),
    (",data\n-3,1.0\n", "outside"),
    (",data\n5,1.0\n5,2.0\n", "twice"),
])
def test_corrupt_csv_names_file(csv_patient, content, match):
    folder, _ = csv_patient
    (folder / "dose.csv").write_text(content)
    with pytest.raises(ValueError, match=match) as info:
        prep.prepare_patient(folder)
    assert "dose.csv" in str(info.value) and "download" in str(info.value)


def test_missing_voxel_dimensions_and_folder(csv_patient, tmp_path):
    folder, _ = csv_patient
    (folder / "voxel_dimensions.csv").unlink()
    with pytest.raises(FileNotFoundError, match="voxel_dimensions.csv"):
        prep.prepare_patient(folder)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        prep.prepare_patient(tmp_path / "nope")
    (folder / "voxel_dimensions.csv").write_text("3.9\n-1\n")
    with pytest.raises(ValueError, match="3 positive"):
        prep.prepare_patient(folder)


def test_prepare_split_writes_archives_and_manifest_once(csv_patient, tmp_path, monkeypatch):
    folder, dense = csv_patient
    out = tmp_path / "openkbp"
    paths = prep.prepare_split(folder.parent.parent, out, "train", progress=False)
    assert [p.name for p in paths] == ["pt_7.npz"]
    with np.load(paths[0]) as z:
        assert set(z.files) == set(dense)
        np.testing.assert_array_equal(z["dose_cgy"], dense["dose_cgy"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest == {"train/pt_7": sorted(k for k in dense if k != "voxel_dimensions")}
    mtime = paths[0].stat().st_mtime_ns

    def boom(*a, **k):
        raise AssertionError("prepared twice")

    monkeypatch.setattr(prep, "prepare_patient", boom)
    prep.prepare_split(folder.parent.parent, out, "train", progress=False)   # second run: no work
    assert paths[0].stat().st_mtime_ns == mtime
    assert not list(out.rglob("*.part*"))
    with pytest.raises(FileNotFoundError, match="download"):
        prep.prepare_split(folder.parent.parent, out, "test", progress=False)
    with pytest.raises(ValueError, match="split"):
        prep.prepare_split(folder.parent.parent, out, "training", progress=False)


@pytest.mark.parametrize("split_dir,split,pid", [("train-pats", "train", "pt_1"),
                                                 ("validation-pats", "validation", "pt_201"),
                                                 ("test-pats", "test", "pt_242")])
def test_real_csv_sample_equals_packed_copy(shared_data, split_dir, split, pid):
    csv_dir = shared_data / "openkbp-csv-sample" / split_dir / pid
    packed = shared_data / "openkbp" / split / f"{pid}.npz"
    if not csv_dir.is_dir() or not packed.is_file():
        pytest.skip("OpenKBP CSV sample or packed copy absent")
    arrays = prep.prepare_patient(csv_dir)
    with np.load(packed) as ref:
        assert set(arrays) == set(ref.files)
        for key in ref.files:
            assert arrays[key].dtype == ref[key].dtype, key
            np.testing.assert_array_equal(arrays[key], ref[key], err_msg=key)
    manifest = json.loads((shared_data / "openkbp" / "manifest.json").read_text())
    assert prep.manifest_keys(arrays) == manifest[f"{split}/{pid}"]
