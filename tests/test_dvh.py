"""rtlearn.dvh against brute force, hand-checkable values and bad inputs."""
import numpy as np
import pytest
import torch

from rtlearn import dvh


@pytest.fixture()
def case():
    rng = np.random.default_rng(0)
    dose = rng.gamma(4.0, 10.0, size=(20, 30, 30))
    mask = np.zeros(dose.shape, bool)
    mask[5:15, 10:22, 8:20] = True
    return dose, mask


def test_cumulative_dvh_matches_brute_force(case):
    dose, mask = case
    axis, vol = dvh.cumulative_dvh(dose, mask, bins=257)
    brute = np.array([(dose[mask] >= d).mean() for d in axis])
    np.testing.assert_allclose(vol, brute)
    assert vol[0] == 1.0 and np.all(np.diff(vol) <= 0)


def test_cumulative_dvh_hand_values():
    axis, vol = dvh.cumulative_dvh([0.0, 1.0, 2.0, 3.0], [True] * 4, bins=[0, 1, 1.5, 3, 3.01])
    np.testing.assert_allclose(vol, [1.0, 0.75, 0.5, 0.25, 0.0])
    axis, vol = dvh.cumulative_dvh(np.full(10, 2.0), np.ones(10, bool))  # default 0.1 Gy axis
    assert axis[0] == 0 and np.isclose(axis[-1], 2.0) and vol[-1] == 1.0


def test_torch_input_equals_numpy(case):
    dose, mask = case
    assert dvh.mean_dose(torch.from_numpy(dose), torch.from_numpy(mask)) == pytest.approx(dvh.mean_dose(dose, mask))


def test_point_metrics_brute_force(case):
    dose, mask = case
    v = np.sort(dose[mask])
    assert dvh.mean_dose(dose, mask) == pytest.approx(v.mean())
    assert dvh.max_dose(dose, mask) == v[-1]
    for x in (1, 50, 95, 99):
        # D_x% : dose at least x % of the volume receives -> about x % of voxels are >= it
        d = dvh.dose_at_volume(dose, mask, x)
        frac = (v >= d).mean()
        assert abs(frac - x / 100) <= 1.0 / v.size + 1e-12
    assert dvh.volume_at_dose(dose, mask, 40.0) == pytest.approx((v >= 40.0).mean())


def test_hand_checkable_percentiles():
    dose = np.arange(101.0)
    m = np.ones(101, bool)
    assert dvh.dose_at_volume(dose, m, 95) == 5.0
    assert dvh.dose_at_volume(dose, m, 1) == 99.0
    assert dvh.dose_at_volume(dose, m, 99) == 1.0
    assert dvh.volume_at_dose(dose, m, 50) == pytest.approx(51 / 101)


def test_d_cc_hand_case():
    # 1000 voxels of 2x2x2.5 = 10 mm3: 0.1 cc = 100 mm3 = 10 voxels -> percentile 100 - 100*10/1000 = 99
    dose = np.arange(1000.0)
    m = np.ones(1000, bool)
    vox = dvh.voxel_volume_mm3((2.0, 2.0, 2.5))
    assert vox == 10.0
    assert dvh.d_cc(dose, m, 0.1, vox) == pytest.approx(np.percentile(dose, 99))
    # a structure smaller than 0.1 cc lies wholly in its 'hottest 0.1 cc': D0.1cc is its minimum
    assert dvh.d_cc(dose[3:8], m[:5], 0.1, vox) == 3.0


def test_hi_ci_hand_values():
    dose = np.zeros((10, 10))
    ptv = np.zeros((10, 10), bool)
    ptv[2:6, 2:6] = True  # 16 voxels
    dose[2:6, 2:6] = 50.0
    dose[6, 2:6] = 50.0  # 4 voxels outside the PTV receive Rx
    dose[2, 2] = 40.0  # one PTV voxel under-dosed
    # V_Rx = 19, V_PTV∩Rx = 15, V_PTV = 16
    assert dvh.conformation_index(dose, ptv, 50.0) == pytest.approx(15**2 / (16 * 19))
    hi = dvh.homogeneity_index(dose, ptv, 50.0)
    d1, d99 = np.percentile(dose[ptv], 99), np.percentile(dose[ptv], 1)
    assert hi == pytest.approx((d1 - d99) / 50.0)
    assert dvh.conformation_index(np.zeros((10, 10)), ptv, 50.0) == 0.0


def test_dvh_metrics_table():
    dose = np.linspace(0, 60, 4 * 8 * 8).reshape(4, 8, 8)
    ptv = dose > 40
    oar = dose < 20
    empty = np.zeros_like(ptv)
    out = dvh.dvh_metrics(dose, {"PTV": ptv, "Rectum": oar, "Missing": empty}, spacing=(3, 2, 2), rx=50)
    assert set(out["PTV"]) == {"Dmean", "Dmax", "D99", "D95", "D1", "HI", "CI"}
    assert set(out["Rectum"]) == {"Dmean", "Dmax", "D0.1cc"}
    assert out["_skipped"] == ["Missing"]


@pytest.mark.parametrize("bad,err", [
    (dict(dose=np.array([1.0, np.nan])), "NaN"),
    (dict(dose=np.array([1.0, -2.0])), "negative"),
    (dict(mask=np.zeros(2, bool)), "empty"),
    (dict(mask=np.ones(3, bool)), "shape"),
])
def test_bad_inputs(bad, err):
    args = dict(dose=np.array([1.0, 2.0]), mask=np.ones(2, bool))
    args.update(bad)
    with pytest.raises(ValueError, match=err):
        dvh.mean_dose(args["dose"], args["mask"])


def test_bad_parameters():
    d, m = np.arange(5.0), np.ones(5, bool)
    with pytest.raises(ValueError, match="percent"):
        dvh.dose_at_volume(d, m, 120)
    with pytest.raises(ValueError, match="voxel_volume"):
        dvh.d_cc(d, m, 0.1)
    with pytest.raises(ValueError, match="rx"):
        dvh.homogeneity_index(d, m, 0)
    with pytest.raises(ValueError, match="spacing"):
        dvh.voxel_volume_mm3((1.0, -1.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        dvh.voxel_volume_mm3((1.0, 1.0))
    with pytest.raises(TypeError):
        dvh.mean_dose(np.array(["a", "b"]), np.ones(2, bool))
