"""Enhancing non-tumour spots ("mimics") in the brain phantom: count, placement, contrast, switch-off."""
import numpy as np
import pytest
from scipy import ndimage

from rtlearn.phantom import make_patient
from rtlearn.phantom.anatomy import MAX_MIMICS, MIMIC_EDEMA_DISTANCE_MM, MIMIC_GTV_DISTANCE_MM
from rtlearn.phantom.datasets import PhantomSegmentationDataset
from rtlearn.phantom.mr import BRAIN_TISSUES

T = {n: i for i, n in enumerate(BRAIN_TISSUES)}
DOSELO_GRID = dict(shape=(64, 64), spacing=3.6)


def _components(mask):
    """Number of connected pieces (8-connected in 2D, 26 in 3D)."""
    return ndimage.label(mask, np.ones((3,) * mask.ndim, bool))[1]


def _distance_to(mask, spacing):
    return ndimage.distance_transform_edt(~mask, sampling=spacing)


def test_mimic_label_appended_last():
    # the older tissue labels keep their values
    assert BRAIN_TISSUES[:10] == ("air", "scalp", "skull", "csf", "gm", "wm", "edema", "enhancing", "necrosis", "eye")
    assert BRAIN_TISSUES[-1] == "mimic"


def test_off_is_the_patient_without_the_option():
    """``mimics`` None, 0 and 0.0 give the same arrays, and those of the phantom before mimics existed."""
    ref = make_patient("brain", 5)
    for off in (0, 0.0):
        p = make_patient("brain", 5, mimics=off)
        np.testing.assert_array_equal(p.labels, ref.labels)
        for k in ref.mr:
            np.testing.assert_array_equal(p.mr[k], ref.mr[k])
        assert p.masks.keys() == ref.masks.keys()
    # fingerprint of brain seed 5 (128 x 128) recorded before the mimic option was added
    assert np.bincount(ref.labels.ravel(), minlength=len(BRAIN_TISSUES)).tolist() == \
        [9348, 687, 772, 399, 291, 4070, 315, 202, 51, 249, 0]
    assert (int(ref.masks["GTV"].sum()), int(ref.masks["PTV"].sum())) == (253, 389)
    sums = {"T1": 4326.964427256826, "T1c": 4456.138321985374, "T2": 4215.191809181648, "FLAIR": 3308.542435425159}
    pixels = {"T1": (0.7269843220710754, 0.7483985424041748, 0.6347535848617554),
              "T1c": (0.7369797229766846, 0.6050907969474792, 0.7679386734962463),
              "T2": (0.5125969052314758, 0.641509473323822, 0.4259444773197174),
              "FLAIR": (0.4356519877910614, 0.445058137178421, 0.35295626521110535)}
    for k, s in sums.items():
        assert float(ref.mr[k].astype(np.float64).sum()) == pytest.approx(s, rel=1e-6)
        got = [float(ref.mr[k][y, x]) for y, x in ((64, 64), (40, 80), (90, 50))]
        np.testing.assert_allclose(got, pixels[k], rtol=1e-5)


@pytest.mark.parametrize("grid", [DOSELO_GRID, {}], ids=["64x64", "128x128"])
def test_count_placement_and_labels(grid):
    for seed in range(8):
        off = make_patient("brain", seed, **grid)
        p = make_patient("brain", seed, mimics=3, **grid)
        mim = p.labels == T["mimic"]
        assert _components(mim) == 3, seed
        # far from the GTV, clear of its oedema, in the brain, not in a target or an organ at risk
        assert _distance_to(p.masks["GTV"], p.spacing)[mim].min() >= MIMIC_GTV_DISTANCE_MM
        edema = p.labels == T["edema"]
        if edema.any():
            assert _distance_to(edema, p.spacing)[mim].min() >= MIMIC_EDEMA_DISTANCE_MM
        assert set(np.unique(off.labels[mim])) <= {T["csf"], T["gm"], T["wm"]}
        for name, m in p.masks.items():
            assert not (m & mim).any(), name
            np.testing.assert_array_equal(m, off.masks[name])       # no structure changes
        # only the mimic voxels change label
        np.testing.assert_array_equal(p.labels[~mim], off.labels[~mim])
        np.testing.assert_array_equal(p.body, off.body)


def test_rate_draws_a_poisson_count():
    counts = []
    for seed in range(40):
        p = make_patient("brain", seed, mimics=1.5, **DOSELO_GRID)
        n = _components(p.labels == T["mimic"])
        assert n == np.random.default_rng([seed, 17]).poisson(1.5)   # the documented stream
        counts.append(n)
    assert 0.9 < np.mean(counts) < 2.1 and min(counts) == 0 and max(counts) >= 3


def test_mimics_enhance_without_oedema():
    """Bright on T1c like the tumour rim; darker than oedema on T2 and FLAIR, no oedema around them."""
    t1c_ratio, flair_gap, ring_flair = [], [], []
    for seed in range(6):
        off = make_patient("brain", seed)
        p = make_patient("brain", seed, mimics=4)
        mim = p.labels == T["mimic"]
        wm, edema, rim = (p.labels == T[k] for k in ("wm", "edema", "enhancing"))
        t1c_ratio.append(p.mr["T1c"][mim].mean() / p.mr["T1c"][wm].mean())
        assert p.mr["T1c"][mim].mean() > 0.8 * p.mr["T1c"][rim].mean()
        # the oedema of the tumour is brighter on FLAIR and T2 than the mimics
        flair_gap.append(p.mr["FLAIR"][edema].mean() - p.mr["FLAIR"][mim].mean())
        assert p.mr["T2"][edema].mean() > p.mr["T2"][mim].mean() + 0.03
        # a 2-voxel ring around the mimics is normal tissue: the same labels and FLAIR as without mimics
        ring = ndimage.binary_dilation(mim, iterations=3) & ~ndimage.binary_dilation(mim) & p.body
        assert not (ring & edema).any()
        ring_flair.append(abs(p.mr["FLAIR"][ring].mean() - off.mr["FLAIR"][ring].mean()))
        # the MR changes only next to the mimics (partial-volume blur of 0.8 mm)
        far = ~ndimage.binary_dilation(mim, np.ones((3, 3), bool), iterations=2)
        for k in p.mr:
            np.testing.assert_allclose(p.mr[k][far], off.mr[k][far], rtol=0, atol=1e-5)
            assert np.abs(p.mr[k] - off.mr[k]).max() > 0.05
    assert min(t1c_ratio) > 1.25
    assert min(flair_gap) > 0.03 and np.mean(flair_gap) > 0.15   # the bias field varies across the brain
    assert max(ring_flair) < 0.02


def test_3d_mimics_cut_the_central_slice():
    p = make_patient("brain", 1, dims=3, shape=(24, 96, 96), spacing=(2.5, 2.2, 2.2), mimics=2)
    mim = p.labels == T["mimic"]
    assert _components(mim) == 2
    assert _distance_to(p.masks["GTV"], p.spacing)[mim].min() >= MIMIC_GTV_DISTANCE_MM
    # every mimic reaches the middle of the volume in z (the plane a 2D patient shows)
    lab, n = ndimage.label(mim, np.ones((3, 3, 3), bool))
    zc = (p.shape[0] - 1) / 2
    for k in range(1, n + 1):
        z = np.nonzero(lab == k)[0]
        assert z.min() <= zc + 1 and z.max() >= zc - 1


@pytest.mark.parametrize("kw, msg", [
    (dict(site="brain", mimics=-1), "count"),
    (dict(site="brain", mimics=MAX_MIMICS + 1), "count"),
    (dict(site="brain", mimics=-0.5), "rate"),
    (dict(site="brain", mimics=float("nan")), "rate"),
    (dict(site="brain", mimics=float("inf")), "rate"),
    (dict(site="brain", mimics=True), "mimics must be"),
    (dict(site="brain", mimics="2"), "mimics must be"),
    (dict(site="breast", mimics=2), "only for site 'brain'"),
    (dict(site="head_neck", mimics=0.5), "only for site 'brain'"),
])
def test_bad_mimics(kw, msg):
    with pytest.raises(ValueError, match=msg):
        make_patient(**kw)


def test_segmentation_dataset_option(tmp_path):
    kw = dict(site="brain", n=2, seed=1, shape=(48, 48), spacing=4.8, root=tmp_path, progress=False)
    off = PhantomSegmentationDataset(**kw)
    zero = PhantomSegmentationDataset(**kw, mimics=0)
    on = PhantomSegmentationDataset(**kw, mimics=2)
    assert zero.path == off.path and on.path != off.path           # the option is in the cache key
    assert PhantomSegmentationDataset(**kw, mimics=2.0).path != on.path   # a rate is not a count
    np.testing.assert_array_equal(on.data["rois"], off.data["rois"])      # the GTV is the same
    assert not np.array_equal(on.data["mr"], off.data["mr"])
    p = make_patient("brain", on.case_seeds[0], shape=(48, 48), spacing=4.8, mimics=2)
    np.testing.assert_array_equal(on.data["mr"][0, 1], p.mr["T1c"])
    with pytest.raises(ValueError, match="only for site 'brain'"):
        PhantomSegmentationDataset(site="prostate", n=1, root=tmp_path, mimics=1)
    with pytest.raises(ValueError, match="count"):
        PhantomSegmentationDataset(**kw, mimics=-2)


def test_doselo_config_and_cases():
    from rtlearn.experiments import doselo as X

    assert X.default_config("quick").mimics == X.default_config("study").mimics == 1.0
    cfg = X.default_config("quick", mimics=2)
    assert cfg.mimics == 2
    cases = X.brain_cases(2, seed=cfg.seg_case_seed, shape=cfg.shape, spacing=cfg.spacing, mimics=cfg.mimics)
    assert all(_components(p.labels == T["mimic"]) == 2 for p in cases)
    with pytest.raises(ValueError, match="count"):
        X.default_config("quick", mimics=-1)
