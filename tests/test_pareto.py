"""rtlearn.pareto: DVH vectors, Eq. (4) projection, on-the-fly pairs, Eq. (6) schedule."""
import numpy as np
import pytest
import torch

from rtlearn.dvh import cumulative_dvh
from rtlearn.pareto import (ParetoPairs, check_dvh_vector, dvh_dose_points, dvh_vector, inverse_time_lr,
                            normalise_to_mean, project_to_pareto)


def _plans(seed=0, n=5, shape=(6, 7, 5), n_struct=3):
    rng = np.random.default_rng(seed)
    dose = rng.gamma(4.0, 10.0, size=(n, *shape))
    masks = rng.random((n_struct, *shape)) < 0.4
    masks.reshape(n_struct, -1)[:, 0] = True
    return dose, masks


def _reference(dose, masks, n_bins, max_dose):
    return np.stack([np.concatenate([cumulative_dvh(d, m, bins=n_bins, max_dose=max_dose)[1] for m in masks])
                     for d in dose])


# -- dvh_vector ------------------------------------------------------------------------------------------------
def test_dose_points_match_cumulative_dvh_axis():
    pts = dvh_dose_points(32, 1.2)
    axis, _ = cumulative_dvh(np.ones(3), np.ones(3, bool), bins=32, max_dose=1.2)
    np.testing.assert_array_equal(pts, axis)
    assert pts[0] == 0 and pts[-1] == 1.2


def test_dvh_vector_matches_exact_dvh_batch_and_single():
    dose, masks = _plans()
    ref = _reference(dose, masks, 32, 80.0)
    out = dvh_vector(dose, masks, n_bins=32, max_dose=80.0)
    assert out.shape == (5, 3 * 32)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(dvh_vector(dose[2], masks, n_bins=32, max_dose=80.0), ref[2], atol=1e-12)


def test_dvh_vector_dose_on_bin_edges_counts_as_reached():
    # doses exactly equal to dose points: DVH(d) counts D >= d
    dose = np.array([0.0, 0.5, 1.0, 1.0])
    v = dvh_vector(dose, {"s": np.ones(4, bool)}, n_bins=3, max_dose=1.0)
    np.testing.assert_array_equal(v, [1.0, 0.75, 0.5])
    np.testing.assert_array_equal(v, cumulative_dvh(dose, np.ones(4, bool), bins=3, max_dose=1.0)[1])


def test_dvh_vector_dict_order_and_per_plan_masks():
    dose, masks = _plans(1, n=3, shape=(5, 5), n_struct=2)
    named = {"PTV": masks[0], "rectum": masks[1]}
    a = dvh_vector(dose, named, n_bins=8, max_dose=90.0, structures=["rectum", "PTV"])
    np.testing.assert_allclose(a[:, :8], _reference(dose, masks[1:], 8, 90.0))
    np.testing.assert_allclose(a[:, 8:], _reference(dose, masks[:1], 8, 90.0))
    # per-plan masks (B, S, *sp) need dims; each plan uses its own masks
    per_plan = np.stack([masks, masks[::-1], masks])
    b = dvh_vector(dose, per_plan, n_bins=8, max_dose=90.0, dims=2)
    np.testing.assert_allclose(b[1], _reference(dose[1:2], masks[::-1], 8, 90.0)[0])
    np.testing.assert_allclose(b[0], _reference(dose[:1], masks, 8, 90.0)[0])
    # normalised per plan with per-plan masks = each plan on its own
    c = dvh_vector(dose, per_plan, n_bins=8, normalise_to=0, dims=2)
    for k in range(3):
        np.testing.assert_allclose(c[k], dvh_vector(dose[k], per_plan[k], n_bins=8, normalise_to=0), atol=1e-12)


def test_dvh_vector_torch_matches_numpy_and_keeps_dtype():
    dose, masks = _plans(2)
    ref = dvh_vector(dose, masks, n_bins=16, max_dose=70.0)
    out = dvh_vector(torch.tensor(dose), torch.tensor(masks), n_bins=16, max_dose=70.0)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float64
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-12)


def test_dvh_vector_normalised_to_ptv_mean():
    dose, masks = _plans(3)
    named = {"PTV": masks[0], "OAR": masks[1]}
    v = dvh_vector(dose, named, normalise_to="PTV")                     # default 32 bins up to 1.2
    assert v.shape == (5, 64)
    rel = normalise_to_mean(dose, masks[0])
    np.testing.assert_allclose(rel[:, masks[0]].mean(1), 1.0)
    np.testing.assert_allclose(v, _reference(rel, masks[:2], 32, 1.2), atol=1e-12)
    # scale invariance: doubling the dose does not change the normalised vector
    np.testing.assert_allclose(dvh_vector(2 * dose, named, normalise_to="PTV"), v, atol=1e-12)


def test_normalise_to_mean_torch_per_plan_and_bad_inputs():
    dose, masks = _plans(6)
    per_plan = np.stack([masks[0], masks[1], masks[2], masks[0], masks[1]])
    out = normalise_to_mean(torch.tensor(dose, dtype=torch.float32), torch.tensor(per_plan), 2.0, dims=3)
    assert out.dtype == torch.float32
    for b in range(5):
        assert float(out[b][torch.tensor(per_plan[b])].mean()) == pytest.approx(2.0, rel=1e-5)
    np.testing.assert_allclose(normalise_to_mean(dose[0], masks[0])[masks[0]].mean(), 1.0)
    with pytest.raises(ValueError, match="empty"):
        normalise_to_mean(dose, np.zeros_like(masks[0]))
    with pytest.raises(ValueError, match="does not fit"):
        normalise_to_mean(dose, masks[0, :-1])
    with pytest.raises(ValueError, match="finite"):
        normalise_to_mean(np.full_like(dose, np.nan), masks[0])
    with pytest.raises(TypeError, match="numeric"):
        normalise_to_mean(dose, np.full(masks[0].shape, "x"))


def test_dvh_vector_is_a_valid_dvh_vector():
    dose, masks = _plans(4)
    v = dvh_vector(dose, masks, n_bins=32, max_dose=60.0)
    assert check_dvh_vector(v, 3, 32) is v


def test_dvh_vector_bad_inputs():
    dose, masks = _plans()
    with pytest.raises(ValueError, match="max_dose is required"):
        dvh_vector(dose, masks)
    with pytest.raises(ValueError, match="empty"):
        m = masks.copy()
        m[1] = False
        dvh_vector(dose, m, max_dose=1.0)
    with pytest.raises(ValueError, match="spatial shape"):
        dvh_vector(dose[:, :-1], masks, max_dose=1.0)
    with pytest.raises(ValueError, match="negative"):
        dvh_vector(-dose, masks, max_dose=1.0)
    with pytest.raises(ValueError, match="no structure"):
        dvh_vector(dose, {"PTV": masks[0]}, max_dose=1.0, structures=["PTV", "bladder"])
    with pytest.raises(ValueError, match="normalise_to"):
        dvh_vector(dose, {"a": masks[0]}, normalise_to="PTV")
    with pytest.raises(ValueError, match="n_bins"):
        dvh_vector(dose, masks, n_bins=1, max_dose=1.0)
    with pytest.raises(ValueError, match="boolean"):
        dvh_vector(dose, masks * 2, max_dose=1.0)


# -- validation -------------------------------------------------------------------------------------------------
def test_check_dvh_vector_rejects_bad_vectors():
    good = np.tile(np.linspace(1, 0, 4), 2)
    check_dvh_vector(good, 2, 4)
    with pytest.raises(ValueError, match="length 8, expected 12"):
        check_dvh_vector(good, 3, 4)
    with pytest.raises(ValueError, match="multiple"):
        check_dvh_vector(good[:-1], None, 4)
    rising = good.copy()
    rising[6] = 0.9                       # structure 1: bins (1, 2/3, 0.9, 0) rise from bin 1 to bin 2
    with pytest.raises(ValueError, match="structure 1"):
        check_dvh_vector(rising, 2, 4)
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        check_dvh_vector(good * 1.5, 2, 4)
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        check_dvh_vector(good - 0.5, 2, 4)
    with pytest.raises(ValueError, match="NaN"):
        check_dvh_vector(np.full(8, np.nan), 2, 4)


# -- projection (Eq. 4) -----------------------------------------------------------------------------------------
PARETO = np.array([[1.0, 1.0, 0.0, 0.0],
                   [1.0, 0.5, 1.0, 0.5],
                   [1.0, 0.0, 1.0, 1.0]])


def test_projection_hand_example():
    # distances to [1, .75, 1, .25]: plan0 .25+1+.25 = 1.5; plan1 .25+0+.25 = .5; plan2 .75+0+.75 = 1.5
    j, dist = project_to_pareto([1.0, 0.75, 1.0, 0.25], PARETO, n_bins=2)
    assert j == 1 and dist == pytest.approx(0.5)
    # ties go to the lowest index
    assert project_to_pareto([1.0, 0.5], [[1.0, 1.0], [1.0, 0.0]]) == (0, 0.5)
    desired = np.array([[1.0, 0.75, 1.0, 0.25], [1.0, 1.0, 0.0, 0.0], [1.0, 0.0, 1.0, 0.9]])
    idx, d = project_to_pareto(desired, PARETO)
    np.testing.assert_array_equal(idx, [1, 0, 2])
    np.testing.assert_allclose(d, [0.5, 0.0, 0.1])


def test_projection_matches_brute_force_and_torch():
    rng = np.random.default_rng(5)
    pareto = np.sort(rng.random((10, 3, 8)), axis=-1)[..., ::-1].reshape(10, 24)
    desired = np.sort(rng.random((7, 3, 8)), axis=-1)[..., ::-1].reshape(7, 24)
    idx, dist = project_to_pareto(desired, pareto, n_bins=8)
    for q in range(7):
        brute = [np.abs(desired[q] - p).sum() for p in pareto]
        assert idx[q] == int(np.argmin(brute)) and dist[q] == pytest.approx(min(brute))
    ti, td = project_to_pareto(torch.tensor(desired), torch.tensor(pareto))
    assert isinstance(ti, torch.Tensor)
    np.testing.assert_array_equal(ti.numpy(), idx)
    np.testing.assert_allclose(td.numpy(), dist)


def test_projection_bad_inputs():
    with pytest.raises(ValueError, match="length 3 but"):
        project_to_pareto([1.0, 0.5, 0.0], PARETO)
    with pytest.raises(ValueError, match="N >= 1"):
        project_to_pareto([1.0, 0.5], np.zeros((0, 2)))
    with pytest.raises(ValueError, match="non-increasing"):
        project_to_pareto([0.5, 1.0, 1.0, 0.0], PARETO, n_bins=2)


# -- on-the-fly pairs -------------------------------------------------------------------------------------------
def _pareto_set(n_patients=3, n_plans=4, shape=(8, 8), seed=0):
    rng = np.random.default_rng(seed)
    anatomy, doses, dvhs = [], [], []
    for _ in range(n_patients):
        masks = rng.random((2, *shape)) < 0.5
        masks[:, 0, 0] = True
        d = rng.gamma(3.0, 1.0, size=(n_plans, *shape))
        anatomy.append(torch.tensor(masks, dtype=torch.float32))
        doses.append(torch.tensor(d, dtype=torch.float32))
        dvhs.append(dvh_vector(d, masks, n_bins=8, normalise_to=0))
    return anatomy, doses, dvhs


def test_pairs_follow_the_projection_and_feed_the_desired_dvh():
    anatomy, doses, dvhs = _pareto_set()
    ds = ParetoPairs(anatomy, doses, dvhs, seed=3, n_bins=8)
    assert len(ds) == 30                                               # K = 10 x patients
    for t in range(12):
        item = ds[t]
        i, j = int(item["patient"]), int(item["plan"])
        p, q = int(item["source_patient"]), int(item["source_plan"])
        assert i == t % 3
        desired = torch.tensor(dvhs[p][q], dtype=torch.float32)
        torch.testing.assert_close(item["dvh"], desired)
        brute = np.abs(dvhs[i] - dvhs[p][q]).sum(1)
        assert j == int(np.argmin(brute))
        torch.testing.assert_close(item["target"], doses[i][j][None])
        torch.testing.assert_close(item["input"], anatomy[i])
    proj = ParetoPairs(anatomy, doses, dvhs, seed=3, n_bins=8, feed="projected")[4]
    torch.testing.assert_close(proj["dvh"], torch.tensor(dvhs[1][int(proj["plan"])], dtype=torch.float32))


def test_pairs_are_deterministic_and_vary_by_epoch():
    anatomy, doses, dvhs = _pareto_set()
    a = ParetoPairs(anatomy, doses, dvhs, seed=7, n_bins=8)
    b = ParetoPairs(anatomy, doses, dvhs, seed=7, n_bins=8)
    src = lambda ds: [(int(ds[t]["source_patient"]), int(ds[t]["source_plan"])) for t in range(len(ds))]
    first = src(a)
    assert first == src(b) == src(a)
    a.set_epoch(1)
    assert src(a) != first
    # seed=None draws from torch's global generator: reproducible under torch.manual_seed (the Trainer's reseeding)
    g = ParetoPairs(anatomy, doses, dvhs, n_bins=8)
    torch.manual_seed(11)
    x = src(g)
    torch.manual_seed(11)
    assert src(g) == x


def test_pairs_exclude_self_and_batch_through_a_loader():
    anatomy, doses, dvhs = _pareto_set()
    ds = ParetoPairs(anatomy, doses, dvhs, samples_per_epoch=9, seed=0, exclude_self=True, n_bins=8)
    assert all(int(ds[t]["source_patient"]) != t % 3 for t in range(9))
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch["input"].shape == (4, 2, 8, 8) and batch["dvh"].shape == (4, 16)
    assert batch["target"].shape == (4, 1, 8, 8)


def test_pairs_bad_inputs():
    anatomy, doses, dvhs = _pareto_set()
    with pytest.raises(ValueError, match="fewer than n_plans=5"):
        ParetoPairs(anatomy, doses, dvhs, n_plans=5, n_bins=8)
    with pytest.raises(ValueError, match="same patients"):
        ParetoPairs(anatomy, doses[:2], dvhs, n_bins=8)
    with pytest.raises(ValueError, match="3 doses but 4"):
        ParetoPairs(anatomy, [d[:3] for d in doses], dvhs, n_bins=8)
    with pytest.raises(ValueError, match="non-increasing"):
        ParetoPairs(anatomy, doses, [v[:, ::-1].copy() for v in dvhs], n_bins=8)
    with pytest.raises(ValueError, match="feed"):
        ParetoPairs(anatomy, doses, dvhs, feed="target", n_bins=8)
    with pytest.raises(IndexError):
        ParetoPairs(anatomy, doses, dvhs, n_bins=8)[30]
    ds = ParetoPairs(anatomy, doses, dvhs, n_plans=2, n_bins=8)
    assert all(int(ds[t]["plan"]) < 2 for t in range(30))


# -- Eq. (6) ----------------------------------------------------------------------------------------------------
def test_inverse_time_lr_follows_eq6_per_step():
    w = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([w], lr=1e-3)
    sched = inverse_time_lr(0.002)(opt)
    lrs = []
    for _ in range(501):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(1e-3)
    assert lrs[500] == pytest.approx(1e-3 / 2)                       # 1 + 0.002 * 500 = 2
    assert lrs[123] == pytest.approx(1e-3 / (1 + 0.002 * 123))
    with pytest.raises(ValueError, match="decay"):
        inverse_time_lr(-1.0)


def test_inverse_time_lr_with_trainer():
    from rtlearn.train import Trainer

    model = torch.nn.Linear(2, 1)
    loader = [{"input": torch.randn(4, 2), "target": torch.randn(4, 1)} for _ in range(5)]
    tr = Trainer(model, lambda p, b: ((p - b["target"]) ** 2).mean(), lr=1e-2, scheduler=inverse_time_lr(0.5),
                 scheduler_interval="step", progress=False, device="cpu")
    tr.fit(loader, epochs=1)
    assert tr.optimizer.param_groups[0]["lr"] == pytest.approx(1e-2 / (1 + 0.5 * 5))
