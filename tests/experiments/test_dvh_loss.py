"""Tests of the MSE / MAE / MAE+DVH experiment driver (rtlearn.experiments.dvh_loss)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch

from rtlearn.experiments import dvh_loss as ex
from rtlearn.metrics.openkbp import dose_score, dvh_score

TINY = dict(n_train=4, n_val=2, n_test=3, shape=(32, 32), spacing=(8.0, 8.0), epochs=2, depth=2, width=4,
            batch_size=2, n_jobs=1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    cfg = ex.DVHLossConfig(root=str(tmp_path_factory.mktemp("dvhloss")), **TINY)
    data = ex.load_data(cfg, progress=False)
    return cfg, data, ex.run_experiment(cfg, progress=False, data=data, keep=3)


# ---- configuration and bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kw", [dict(source="dicom"), dict(dims=4), dict(n_test=1), dict(epochs=0),
                                dict(losses=("L2",)), dict(losses=()), dict(lr=0.0), dict(dvh_weight=-1.0),
                                dict(n_train=None), dict(steepness=0.0)])
def test_config_rejects_bad_values(kw):
    with pytest.raises(ValueError):
        ex.DVHLossConfig(**kw)


def test_profiles(monkeypatch):
    monkeypatch.setenv("RTLEARN_PROFILE", "quick")
    q = ex.default_config()
    assert q.source == "phantom" and q.dims == 2 and q.losses == ex.LOSSES
    monkeypatch.setenv("RTLEARN_PROFILE", "full")
    f = ex.default_config()
    assert f.source == "openkbp" and f.dims == 3 and f.n_train is None and f.epochs == 200 and f.batch_size == 2
    assert ex.default_config(epochs=3).epochs == 3


def test_unknown_loss():
    with pytest.raises(ValueError, match="unknown loss"):
        ex.make_loss("Huber")


# ---- losses by hand ------------------------------------------------------------------------------------------------
def _batch():
    target = torch.tensor([[[[0.0, 10.0], [20.0, 30.0]]]])
    pred = torch.tensor([[[[1.0, 13.0], [20.0, 100.0]]]])
    mask = torch.tensor([[[[1.0, 1.0], [1.0, 0.0]]]])
    st = torch.zeros(1, 10, 2, 2, dtype=torch.bool)
    st[0, 0, 0, :] = True
    return pred, {"target": target, "mask": mask, "structures": st}


def test_losses_by_hand():
    pred, b = _batch()
    # mask keeps errors 1, 3, 0 (the 70 Gy error is outside the mask)
    assert float(ex.make_loss("MSE")(pred, b)) == pytest.approx((1 + 9 + 0) / 3)
    assert float(ex.make_loss("MAE")(pred, b)) == pytest.approx((1 + 3 + 0) / 3)
    cfg = ex.DVHLossConfig(dvh_weight=0.0)
    assert float(ex.make_loss("MAE+DVH", cfg)(pred, b)) == pytest.approx(4 / 3)
    hybrid = float(ex.make_loss("MAE+DVH", ex.DVHLossConfig(dvh_weight=80.0))(pred, b))
    assert hybrid > 4 / 3 + 1e-3
    # identical doses: every term vanishes, and the DVH term is differentiable
    same = b["target"].clone().requires_grad_()
    loss = ex.make_loss("MAE+DVH")(same, b)
    assert loss.item() == pytest.approx(0.0, abs=1e-7)
    loss.backward()
    assert same.grad is not None and torch.isfinite(same.grad).all()


# ---- the 1D gradient example ---------------------------------------------------------------------------------------
def test_fit_profile_l2_is_least_squares_and_l1_is_robust():
    x = np.linspace(0, 10, 41)
    y = 2.0 + 0.5 * x
    y_out = y.copy()
    y_out[[5, 20, 33]] += [40.0, -25.0, 30.0]   # three outliers
    l1 = ex.fit_profile(x, y_out, 1, "l1")
    l2 = ex.fit_profile(x, y_out, 1, "l2")
    np.testing.assert_allclose(l1, y, atol=1e-6)                      # L1 ignores the outliers
    np.testing.assert_allclose(l2, np.polyval(np.polyfit(x, y_out, 1), x), atol=1e-8)
    assert np.abs(l2 - y).max() > 1.0
    # each fit is optimal for its own criterion
    step = np.where(x < 5, 70.0, 10.0)
    f1, f2 = ex.fit_profile(x, step, 5, "l1"), ex.fit_profile(x, step, 5, "l2")
    assert np.abs(step - f1).sum() <= np.abs(step - f2).sum() + 1e-6
    assert ((step - f2) ** 2).sum() <= ((step - f1) ** 2).sum() + 1e-6


@pytest.mark.parametrize("args", [(np.zeros(3), np.zeros(3), 5, "l2"), (np.zeros(10), np.zeros(10), 2, "l2"),
                                  (np.arange(10.0), np.arange(10.0), 2, "huber"),
                                  (np.arange(10.0), np.r_[np.arange(9.0), np.nan], 2, "l1")])
def test_fit_profile_bad_input(args):
    with pytest.raises(ValueError):
        ex.fit_profile(*args)


# ---- relaxed DVH and gradient ---------------------------------------------------------------------------------------
def test_relaxed_dvh_converges_to_exact():
    rng = np.random.default_rng(0)
    dose = rng.uniform(0, 70, (12, 12))
    mask = np.zeros((12, 12), bool)
    mask[2:10, 3:11] = True
    out = ex.relaxed_vs_exact(dose, mask, (1, 4, 16, 256), bins=33)
    errs = [out["max_error"][m] for m in (1, 4, 16, 256)]
    assert errs == sorted(errs, reverse=True) and errs[-1] < 0.02
    assert out["exact"][0] == pytest.approx(1.0) and out["thresholds"].shape == (33,)


def test_dvh_loss_gradient_matches_finite_differences():
    rng = np.random.default_rng(1)
    ref = rng.uniform(0, 70, (6, 6))
    pred = ref + rng.normal(0, 5, (6, 6))
    rois = {"PTV70": np.zeros((6, 6), bool), "Larynx": np.zeros((6, 6), bool)}
    rois["PTV70"][1:4, 1:4] = True
    rois["Larynx"][3:6, 2:6] = True
    loss, grad = ex.dvh_loss_gradient(ref, pred, rois, bins=16)
    outside = ~(rois["PTV70"] | rois["Larynx"])
    assert loss > 0 and np.all(grad[outside] == 0)
    for idx in [(2, 2), (4, 4), (3, 3)]:
        h = 1e-5
        p1, p2 = pred.copy(), pred.copy()
        p1[idx] += h
        p2[idx] -= h
        fd = (ex.dvh_loss_gradient(ref, p1, rois, bins=16)[0] - ex.dvh_loss_gradient(ref, p2, rois, bins=16)[0]) / (2 * h)
        assert grad[idx] == pytest.approx(fd, rel=1e-4, abs=1e-9)


def test_example_case_phantom():
    case = ex.example_case(prefer_openkbp=False)
    assert case["source"] == "phantom" and case["dose"].ndim == 2 and "PTV70" in case["rois"]


# ---- the experiment on tiny phantoms ---------------------------------------------------------------------------------
def test_run_experiment_scores_and_tables(tiny):
    cfg, data, res = tiny
    assert res.labels == list(ex.LOSSES)
    for lab in res.labels:
        for split, n in (("validation", 2), ("test", 3)):
            s = res.scores[lab][split]
            assert s["n"] == n and np.isfinite(s["dose_score"]) and np.isfinite(s["dvh_score"])
            assert s["dose_score"] == pytest.approx(float(np.mean(s["dose_error"])))
        assert len(res.histories[lab]["epoch"]) == 2
    # our scores agree with the challenge-definition metrics called directly on the kept predictions
    kept = res.scores["MAE"]["test"]["predictions"]
    cases = ex._phantom_cases(data, "test")
    assert dose_score([k["prediction"] for k in kept], [c["dose"] for c in cases],
                      [c["possible_dose_mask"] for c in cases]) == pytest.approx(res.scores["MAE"]["test"]["dose_score"])
    assert dvh_score([k["prediction"] for k in kept], [c["dose"] for c in cases], [c["rois"] for c in cases],
                     [c["voxel_dimensions"] for c in cases]) == pytest.approx(res.scores["MAE"]["test"]["dvh_score"])
    rows = ex.table1_rows(res)
    assert len(rows) == 6 and rows[-1][-3:] == (1.6, 2.0, 100)
    assert len(ex.score_tests(res)) == 6
    st = ex.structure_table(res)
    assert st and all(0 <= p <= 1 or np.isnan(p) for r in st for p in r[4].values())
    lb = ex.leaderboard_rows(res)
    assert lb[0][1] == 2.4294 and lb[-1][0] == "ours: DeepDoseNet MAE+DVH"
    order = ex.ordering(res)
    assert set(order) == {"dose_score", "dvh_score"}
    assert res.best("validation") in ex.LOSSES


def test_run_experiment_is_deterministic(tiny):
    cfg, data, res = tiny
    again = ex.run_experiment(ex.DVHLossConfig(**{**cfg.__dict__, "losses": ("MAE+DVH",)}), progress=False, data=data)
    assert again.scores["MAE+DVH"]["test"]["dose_score"] == res.scores["MAE+DVH"]["test"]["dose_score"]
    np.testing.assert_array_equal(again.histories["MAE+DVH"]["train_loss"], res.histories["MAE+DVH"]["train_loss"])


def test_plots(tiny):
    import matplotlib.pyplot as plt

    _, _, res = tiny
    ex.plot_learning_curves(res)
    ex.plot_structure_errors(res)
    fig = ex.plot_sample(res, "MAE+DVH")
    assert len(fig.axes) >= 5
    plt.close("all")


# ---- the full-profile path on real data (2 training patients, skipped without the shared data) -----------------------
def test_openkbp_path_constructs(shared_data):
    root = shared_data / "openkbp"
    cfg = ex.DVHLossConfig(source="openkbp", dims=3, n_train=2, n_val=2, n_test=2, shape=None, spacing=None,
                           inputs=("rois", "possible_dose_mask"), downsample=4, epochs=1, depth=3, width=4,
                           batch_size=1, root=str(root), device="cpu")
    data = ex.load_data(cfg, progress=False)
    item = data.train[0]
    assert item["input"].shape == (11, 32, 32, 32) and item["structures"].shape == (10, 32, 32, 32)
    assert item["structures"].dtype == torch.bool
    res = ex.run_experiment(cfg, progress=False, data=data)
    for lab in ex.LOSSES:
        s = res.scores[lab]["test"]
        assert s["n"] == 2 and np.isfinite(s["dose_score"]) and np.isfinite(s["dvh_score"])
        assert s["predictions"][0]["prediction"].shape == (128, 128, 128)
