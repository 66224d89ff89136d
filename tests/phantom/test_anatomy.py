"""Phantom anatomies: names, shapes, determinism, variability, bad inputs."""
import numpy as np
import pytest

from rtlearn.phantom import DEFAULT_SHAPE, PRESCRIPTIONS, ROI_NAMES, SITES, hu_to_density, make_patient
from rtlearn.phantom.anatomy import EXTRA_ROIS

OPENKBP_ROIS = {"PTV70", "PTV63", "PTV56", "RightParotid", "LeftParotid", "SpinalCord", "Brainstem",
                "Mandible", "Larynx", "Esophagus"}
PDDCA_EXTRA = {"OpticChiasm", "OpticNerve_L", "OpticNerve_R", "Submandibular_L", "Submandibular_R"}


@pytest.mark.parametrize("site", SITES)
def test_same_seed_identical_different_seed_differs(site):
    a, b, c = make_patient(site, 3), make_patient(site, 3), make_patient(site, 4)
    np.testing.assert_array_equal(a.ct_hu, b.ct_hu)
    assert a.masks.keys() == b.masks.keys()
    for k in a.masks:
        np.testing.assert_array_equal(a.masks[k], b.masks[k])
    assert not np.array_equal(a.ct_hu, c.ct_hu)
    assert not np.array_equal(a.masks[a.primary_target], c.masks[c.primary_target])


@pytest.mark.parametrize("site", SITES)
def test_shapes_types_and_containment(site):
    p = make_patient(site, 0)
    assert p.shape == DEFAULT_SHAPE[2] and p.dims == 2 and len(p.spacing) == 2
    assert p.ct_hu.dtype == np.float32 and p.density.dtype == np.float32 and p.body.dtype == bool
    for name, m in p.masks.items():
        assert m.dtype == bool and m.shape == p.shape and m.any(), name
        assert not (m & ~p.body).any(), f"{name} leaves the body"
    assert p.prescriptions == {k: v for k, v in PRESCRIPTIONS[site].items() if k in p.masks}
    assert p.ct_hu[~p.body].max() < -900  # air outside


def test_roi_names_per_site():
    assert set(make_patient("breast", 0).masks) == {"PTV", "Lung_L", "Lung_R", "Heart", "SpinalCord"}
    assert set(make_patient("prostate", 0).masks) == {"PTV", "Rectum", "Bladder", "FemoralHead_L", "FemoralHead_R"}
    hn2 = make_patient("head_neck", 0)
    assert set(hn2.masks) <= OPENKBP_ROIS | PDDCA_EXTRA
    assert {"PTV70", "SpinalCord", "LeftParotid", "RightParotid"} | PDDCA_EXTRA <= set(hn2.masks)
    hn3 = make_patient("head_neck", 0, dims=3, shape=(24, 64, 64), spacing=(8.0, 4.0, 4.0))
    assert set(hn3.masks) >= OPENKBP_ROIS and set(hn3.masks) <= OPENKBP_ROIS | PDDCA_EXTRA
    # the segmentation-only structures are not planning ROIs
    assert set(ROI_NAMES["head_neck"]) == OPENKBP_ROIS and set(EXTRA_ROIS["head_neck"]) == PDDCA_EXTRA
    assert not set(hn2.oars) & PDDCA_EXTRA and all(EXTRA_ROIS[s] == () for s in SITES if s != "head_neck")
    br = make_patient("brain", 0)
    assert set(br.masks) == {"GTV", "PTV", "Brainstem", "OpticChiasm", "Eye_L", "Eye_R"}
    assert not (br.masks["GTV"] & ~br.masks["PTV"]).any()  # PTV = GTV + margin


def test_left_breast_anatomy():
    for seed in range(4):
        p = make_patient("breast", seed)
        x = np.arange(p.shape[1])
        cx = lambda m: (m * x[None, :]).sum() / m.sum()  # noqa: E731
        mid = (p.shape[1] - 1) / 2
        assert cx(p.masks["PTV"]) > mid and cx(p.masks["Lung_L"]) > mid and cx(p.masks["Lung_R"]) < mid
        assert cx(p.masks["Heart"]) > mid  # heart shifted to the left side
        y = np.arange(p.shape[0])
        cy = lambda m: (m * y[:, None]).sum() / m.sum()  # noqa: E731
        assert cy(p.masks["PTV"]) < cy(p.masks["Heart"]) < cy(p.masks["SpinalCord"])  # anterior to posterior
        assert p.density[p.masks["Lung_L"]].mean() < 0.4


def test_roi_map_is_bai_map():
    p = make_patient("breast", 1)
    r = p.roi_map()
    vals = set(np.round(np.unique(r).astype(float), 3).tolist())
    assert vals <= {0.0, 0.167, 0.333, 0.5, 0.667, 0.833, 1.0}
    assert np.allclose(r[p.masks["PTV"]], 1.0) and np.allclose(r[p.masks["Heart"]], 4 / 6)
    assert np.allclose(r[p.masks["Lung_L"]], 5 / 6) and np.allclose(r[p.masks["Lung_R"]], 3 / 6)
    assert np.all(r[~p.body] == 0)


def test_prostate_geometry_varies_with_seed():
    vols, gaps = [], []
    for seed in range(6):
        p = make_patient("prostate", seed)
        ys = np.nonzero(p.masks["PTV"])[0]
        yr = np.nonzero(p.masks["Rectum"])[0]
        yb = np.nonzero(p.masks["Bladder"])[0]
        assert yb.mean() < ys.mean() < yr.mean()  # bladder anterior, rectum posterior
        vols.append(p.masks["PTV"].sum())
        gaps.append(yr.min() - ys.max())
    assert np.std(vols) > 0.05 * np.mean(vols)
    assert len(set(gaps)) > 2


def test_brain_mr_channels_show_tumour():
    p = make_patient("brain", 2)
    assert set(p.mr) == {"T1", "T1c", "T2", "FLAIR"}
    gtv = p.masks["GTV"]
    ring = p.labels == 7  # enhancing tumour
    wm = p.labels == 5
    assert p.mr["T1c"][ring].mean() > 1.2 * p.mr["T1c"][wm].mean()
    assert p.mr["T2"][gtv].mean() > p.mr["T2"][wm].mean()
    assert p.mr["T1"][gtv].mean() < p.mr["T1"][wm].mean()
    # noise and bias: the background is not exactly zero and white matter is not constant
    assert p.mr["T1"][~p.body].std() > 0 and p.mr["T1"][wm].std() > 0.01


def test_hu_to_density():
    np.testing.assert_allclose(hu_to_density([-1000, -500, 0, 1000]), [0.0, 0.5, 1.0, 1.6], atol=1e-6)


def test_3d_patient_small_grid():
    p = make_patient("prostate", 0, dims=3, shape=(16, 64, 64), spacing=(6.0, 6.4, 6.4))
    assert p.shape == (16, 64, 64) and p.spacing == (6.0, 6.4, 6.4)
    assert p.masks["PTV"].any() and p.voxel_volume_mm3 == pytest.approx(6.0 * 6.4 * 6.4)


@pytest.mark.parametrize("kw, msg", [
    (dict(site="lung"), "unknown site"),
    (dict(site="breast", dims=4), "dims must be 2 or 3"),
    (dict(site="breast", shape=(8, 8)), "too small"),
    (dict(site="breast", shape=(64, 64, 64)), "shape must be 2"),
    (dict(site="breast", spacing=-1.0), "positive"),
    (dict(site="breast", spacing=(1.0, 1.0)), "field of view"),
    (dict(site="breast", seed=-1), "non-negative"),
])
def test_bad_inputs(kw, msg):
    with pytest.raises(ValueError, match=msg):
        make_patient(**kw)


def test_with_target_checks():
    p = make_patient("brain", 0)
    with pytest.raises(ValueError, match="empty"):
        p.with_target(np.zeros(p.shape, bool))
    out = np.zeros(p.shape, bool)
    out[0, 0] = True
    with pytest.raises(ValueError, match="outside the body"):
        p.with_target(out)
    with pytest.raises(ValueError, match="positive dose"):
        p.with_target(p.masks["PTV"], prescription=0.0)
    q = p.with_target(p.masks["GTV"], prescription=54.0)
    assert q.prescriptions == {"PTV": 54.0} and np.array_equal(q.masks["PTV"], p.masks["GTV"])
