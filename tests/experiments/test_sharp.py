"""Tests of the sharp-loss experiment driver (rtlearn.experiments.sharp)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn.functional as F

from rtlearn.experiments import sharp
from rtlearn.losses.sharp import sharp_loss

TINY = dict(n_train=4, n_val=2, n_test=3, shape=(32, 32), spacing=(12.0, 12.0), gammas=(25.0, 100.0), epochs=2,
            depth=2, width=4, n_jobs=1)


@pytest.fixture(scope="module")
def tiny_results(tmp_path_factory):
    cfg = sharp.SharpConfig(root=str(tmp_path_factory.mktemp("sharp")), **TINY)
    data = sharp.load_data(cfg, progress=False)
    return cfg, data, sharp.run_experiment(cfg, progress=False, data=data)


# ---- configuration and bad input ---------------------------------------------------------------------------
@pytest.mark.parametrize("kw", [dict(dims=4), dict(gammas=(-1.0,)), dict(gammas=()), dict(gammas=(1.0, 1.0)),
                                dict(n_test=1), dict(epochs=0), dict(n_train=2.5), dict(lr=0.0),
                                dict(gammas=(float("nan"),))])
def test_config_rejects_bad_values(kw):
    with pytest.raises(ValueError):
        sharp.SharpConfig(**kw)


def test_profiles(monkeypatch):
    monkeypatch.setenv("RTLEARN_PROFILE", "quick")
    q = sharp.default_config()
    assert q.dims == 2 and 100.0 in q.gammas and q.batch_size == 2 and q.lr == 1e-3
    monkeypatch.setenv("RTLEARN_PROFILE", "full")
    f = sharp.default_config()
    assert f.dims == 3 and f.n_train + f.n_val == 100 and f.n_test == 10 and f.gammas == sharp.PAPER_GAMMAS
    assert f.plateau_factor == 0.1 and f.plateau_patience == 5 and f.batch_size == 2
    assert sharp.default_config(epochs=3).epochs == 3


def test_make_loss_matches_definitions():
    g = torch.Generator().manual_seed(0)
    target = torch.rand(2, 1, 8, 8, generator=g)
    pred = torch.rand(2, 1, 8, 8, generator=g)
    batch = {"target": target}
    assert torch.equal(sharp.make_loss(None)(pred, batch), F.mse_loss(pred, target))
    assert torch.allclose(sharp.make_loss(100)(pred, batch), sharp_loss(pred, target, 100.0))
    w = torch.sigmoid((target - 0.03) * 25.0)  # independent: Eq. (4) written out
    assert torch.allclose(sharp.make_loss(25)(pred, batch), (w * (pred - target) ** 2).mean())
    assert torch.allclose(sharp.make_loss(0)(pred, batch), 0.5 * F.mse_loss(pred, target))
    with pytest.raises(ValueError):
        sharp.make_loss(-1.0)
    assert sharp.loss_label(None) == "MSE" and sharp.loss_label(100) == "SL γ=100"


def test_dose_imbalance_brute_force():
    rng = np.random.default_rng(1)
    dose = rng.uniform(0, 60, (20, 30))
    body = np.zeros((20, 30), bool)
    body[5:15, 5:25] = True
    out = sharp.dose_imbalance(dose, body, 5.0)
    n_out = sum(1 for v in body.ravel() if not v)
    n_low = sum(1 for d, b in zip(dose.ravel(), body.ravel()) if b and d < 5.0)
    assert out["outside_body_pct"] == pytest.approx(100 * n_out / 600)
    assert out["body_below_pct"] == pytest.approx(100 * n_low / 200)
    with pytest.raises(ValueError):
        sharp.dose_imbalance(dose, body, -1.0)
    with pytest.raises(ValueError):
        sharp.dose_imbalance(dose, body[:5])
    with pytest.raises(ValueError):
        sharp.dose_imbalance(np.full((20, 30), np.nan), body)


def test_paper_constants_consistent():
    assert set(sharp.PAPER_TABLE1) == set(sharp.TABLE1_ROWS)
    assert set(sharp.PAPER_TABLE4) == set(sharp.TABLE4_ROWS)
    assert all(len(v) == 1 + len(sharp.PAPER_GAMMAS) for v in sharp.PAPER_TABLE1.values())
    assert set(sharp.PAPER_TABLE2) == set(sharp.PAPER_TABLE3) == set(sharp.ROI_LABELS.values())
    assert sharp.PAPER_TABLE2["Contralateral lung"][0] == sharp.PAPER_TABLE3["Contralateral lung"][0]


# ---- tables against independent computations on a hand-made result ------------------------------------------
def _fake_results():
    rng = np.random.default_rng(3)
    n, h, w = 6, 12, 14
    ref = np.zeros((n, h, w))
    body = np.zeros((n, h, w), bool)
    body[:, 2:10, 2:12] = True
    ref[body] = rng.uniform(0, 60, body.sum())
    rois = np.zeros((n, 5, h, w), bool)
    rois[:, 0, 4:7, 4:8] = True            # PTV
    ref[:, 4:7, 4:8] = rng.uniform(49, 53, (n, 3, 4))
    rois[:, 1, 2:4, 2:6] = True            # Lung_L
    rois[:, 2, 7:9, 4:8] = True            # Heart
    rois[:, 3, 2:4, 8:12] = True           # Lung_R
    rois[:-1, 4, 9, 6] = True              # SpinalCord: absent in the last case
    preds = {"MSE": ref + rng.normal(0, 3, ref.shape), "SL γ=100": ref + rng.normal(0, 1, ref.shape),
             "SL γ=500": ref + rng.normal(0, 2, ref.shape)}
    cfg = sharp.SharpConfig(n_test=n, gammas=(100.0, 500.0))
    return sharp.SharpResults(cfg, list(preds), {"MSE": None, "SL γ=100": 100.0, "SL γ=500": 500.0}, ref, body,
                              rois, ("PTV", "Lung_L", "Heart", "Lung_R", "SpinalCord"), (3.0, 3.0), 50.0, preds,
                              {}, {"MSE": 9.0, "SL γ=100": 5.0, "SL γ=500": 4.0})


def test_table1_brute_force():
    r = _fake_results()
    t = sharp.table1(r)
    ref, p, body = r.reference * 100, r.predictions["SL γ=100"] * 100, r.body
    err = np.abs(p - ref)
    assert t["rows"]["Whole region"]["SL γ=100"] == pytest.approx(err.mean())
    assert t["rows"]["Outside the body"]["SL γ=100"] == pytest.approx(err[~body].mean())
    assert t["rows"]["Inside the body"]["SL γ=100"] == pytest.approx(err[body].mean())
    sel = body & (ref >= 2000) & (ref < 3000)
    assert t["rows"]["2000-3000 cGy"]["SL γ=100"] == pytest.approx(err[sel].mean())
    sel = body & (ref >= 5000)
    assert t["rows"]["> 5000 cGy"]["SL γ=100"] == pytest.approx(err[sel].mean())
    assert t["rows"]["Std"]["SL γ=100"] == pytest.approx(np.std((p - ref)[body]))
    # gradient: pooled over cases, central differences with 3 mm spacing
    g = np.stack([np.hypot(*np.gradient(ref[c], 3.0, 3.0)) for c in range(ref.shape[0])])
    sel = body & (ref >= 1000) & (ref < 2000)
    assert t["gradient"]["1000-2000 cGy"] == pytest.approx(g[sel].mean())
    assert t["n"]["Inside the body"] == body.sum()


def test_tables_2_3_and_selection():
    r = _fake_results()
    assert r.best_label == "SL γ=500"          # lowest validation MAD, not the lowest test error
    per = sharp.per_roi_mad(r)
    ptv = r.rois[:, 0]
    direct = [np.abs(r.predictions["MSE"][c] - r.reference[c])[ptv[c]].mean() * 100 for c in range(6)]
    np.testing.assert_allclose(per["MSE"]["PTV"], direct)
    assert np.isnan(per["MSE"]["Spinal cord"][-1])
    t2 = sharp.table2(r)
    assert t2["PTV"]["MSE"] == pytest.approx(np.mean(direct))
    t3 = sharp.table3(r, "SL γ=100")
    p_ref = scipy.stats.wilcoxon(per["MSE"]["Heart"], per["SL γ=100"]["Heart"]).pvalue
    assert t3["Heart"]["p"] == pytest.approx(p_ref)
    assert t3["Spinal cord"]["n"] == 5
    with pytest.raises(ValueError):
        sharp.table3(r, "SL γ=7")


def test_table4_direct():
    r = _fake_results()
    t = sharp.table4(r, labels=["MSE"])
    d95 = [np.percentile(r.reference[c][r.rois[c, 0]], 5) * 100 for c in range(6)]
    assert t["PTV D95 (cGy)"]["Ground truth"][0] == pytest.approx(np.mean(d95))
    assert t["PTV D95 (cGy)"]["Ground truth"][1] == pytest.approx(np.std(d95, ddof=1))
    lungs = r.rois[:, 1] | r.rois[:, 3]
    v20 = [100 * np.mean(np.clip(r.predictions["MSE"][c], 0, None)[lungs[c]] >= 20) for c in range(6)]
    assert t["Whole lung V20 (%)"]["MSE"][0] == pytest.approx(np.mean(v20))
    heart = [r.reference[c][r.rois[c, 2]].mean() * 100 for c in range(6)]
    assert t["Heart mean (cGy)"]["Ground truth"][0] == pytest.approx(np.mean(heart))


# ---- end to end ----------------------------------------------------------------------------------------------
def test_run_experiment_2d(tiny_results):
    cfg, data, res = tiny_results
    assert res.labels == ["MSE", "SL γ=25", "SL γ=100"]
    assert res.reference.shape == res.predictions["MSE"].shape == (3, 32, 32)
    assert res.rx_gy == 50.0
    # targets are dose / 60 Gy, the paper's dose / 6000 cGy
    item = data.dataset[data.test[0]]
    np.testing.assert_allclose(item["target"][0].numpy() * 60.0, res.reference[0], rtol=1e-5, atol=1e-4)
    # single-channel ROI-value input of Bai et al.: values in {0, 1/6, ..., 1}
    vals = np.unique(np.round(item["input"].numpy() * 6, 4))
    assert item["input"].shape[0] == 1 and set(vals) <= {0, 1, 2, 3, 4, 5, 6}
    assert set(data.train).isdisjoint(data.test) and set(data.val).isdisjoint(data.test)
    for lab in res.labels:
        assert len(res.histories[lab]) == cfg.epochs
        assert np.isfinite(res.histories[lab]["val_mad_body_cgy"]).all()
    assert res.best_label in ("SL γ=25", "SL γ=100")
    t1 = sharp.table1(res)
    assert set(t1["rows"]) == set(sharp.TABLE1_ROWS)


def test_training_is_deterministic(tiny_results):
    cfg, data, res = tiny_results
    model, hist, _ = sharp.train_model(100.0, data, cfg, progress=False)
    again = sharp.predict(model, data, data.test)
    np.testing.assert_array_equal(again, res.predictions["SL γ=100"])
    assert hist["train_loss"] == res.histories["SL γ=100"]["train_loss"]


def test_figures(tiny_results):
    import matplotlib.pyplot as plt

    from rtlearn import plotting

    _, _, res = tiny_results
    plotting.set_style()  # the book's style (constrained layout) must work with every figure
    axes = sharp.plot_training_curves(res)
    assert len(axes[0].lines) == len(res.labels)
    ax = sharp.plot_roi_boxplots(res)
    assert ax.get_ylabel().endswith("(cGy)")
    fig = sharp.plot_sample(res, 0)
    assert len(fig.axes) >= 4
    with pytest.raises(ValueError):
        sharp.plot_sample(res, 99)
    plt.close("all")


def test_3d_path_smoke(tmp_path):
    """The full profile's code path (3D volumes) on a tiny grid."""
    import matplotlib.pyplot as plt

    cfg = sharp.SharpConfig(dims=3, n_train=2, n_val=1, n_test=2, shape=(8, 32, 32), spacing=(16.0, 12.0, 12.0),
                            gammas=(100.0,), epochs=1, depth=2, width=2, root=str(tmp_path))
    res = sharp.run_experiment(cfg, progress=False)
    assert res.predictions["SL γ=100"].shape == (2, 8, 32, 32)
    assert len(res.spacing) == 3
    t1 = sharp.table1(res)
    assert np.isfinite(t1["rows"]["Inside the body"]["MSE"])
    sharp.table4(res)
    sharp.plot_sample(res, 1)
    plt.close("all")


# ---- OpenKBP (head and neck) --------------------------------------------------------------------------------
def test_openkbp_config_rules():
    with pytest.raises(ValueError, match="dims=3"):
        sharp.SharpConfig(source="openkbp", dims=2)
    with pytest.raises(ValueError, match="source"):
        sharp.SharpConfig(source="prostate")
    with pytest.raises(ValueError, match="downsample"):
        sharp.SharpConfig(dims=3, source="openkbp", downsample=3)
    assert sharp.default_config(source="openkbp").dims == 3
    # targets above organs at risk above the rest of the body above outside
    v = sharp.OPENKBP_ROI_VALUES
    assert v["PTV70"] > v["PTV63"] > v["PTV56"] > max(v[k] for k in v if not k.startswith("PTV"))
    assert min(v.values()) > sharp.OPENKBP_BODY_VALUE > 0


def _block_mean(a, f):
    z, y, x = a.shape
    return a.reshape(z // f, f, y // f, f, x // f, f).mean(axis=(1, 3, 5))


def test_openkbp_end_to_end(shared_data):
    """The OpenKBP path on 3 tiny splits (32³ grid), checked against the raw archives."""
    import matplotlib.pyplot as plt

    from rtlearn.data.openkbp import load_patient, to_zyx
    from rtlearn.rois import ROI_NAMES

    root = shared_data / "openkbp"
    cfg = sharp.SharpConfig(dims=3, source="openkbp", n_train=2, n_val=2, n_test=3, downsample=4,
                            gammas=(100.0,), epochs=2, depth=2, width=4, root=str(root))
    data = sharp.load_data(cfg, progress=False)
    assert isinstance(data, sharp.OpenKBPSharpData)
    assert data.patients(data.train) == ["pt_1", "pt_2"] and data.patients(data.val) == ["pt_201", "pt_202"]
    assert data.patients(data.test) == ["pt_241", "pt_242", "pt_243"]
    res = sharp.run_experiment(cfg, progress=False, data=data)
    assert res.predictions["SL γ=100"].shape == res.reference.shape == (3, 32, 32, 32)
    assert res.roi_names == ROI_NAMES and res.rx_gy == 70.0 and res.patients == data.patients(data.test)

    # reference dose, body and input against the raw archive of the first test patient
    raw = load_patient("pt_241", "test", root)
    dose = to_zyx(raw["dose_cgy"]).astype(np.float64) / 100.0
    np.testing.assert_allclose(res.reference[0], _block_mean(dose, 4), rtol=1e-5, atol=1e-4)
    pdm = to_zyx(raw["possible_dose_mask"])
    np.testing.assert_array_equal(res.body[0], _block_mean(pdm.astype(float), 4) > 0.5)
    vd = raw["voxel_dimensions"]
    assert res.case_spacing[0] == pytest.approx((4 * vd[2], 4 * vd[0], 4 * vd[1]))
    roi_map = np.where(pdm, sharp.OPENKBP_BODY_VALUE, 0.0)
    for name, value in sorted(sharp.OPENKBP_ROI_VALUES.items(), key=lambda kv: kv[1]):  # highest value painted last
        if name in raw:
            roi_map[to_zyx(raw[name])] = value
    item = data.dataset[data.test[0]]
    np.testing.assert_allclose(item["input"][0].numpy(), _block_mean(roi_map, 4), atol=1e-6)
    np.testing.assert_allclose(item["target"][0].numpy() * 60.0, res.reference[0], rtol=1e-5, atol=1e-4)

    # tables use OpenKBP's names; the breast Table 4 refuses; the challenge scores are finite
    t2 = sharp.table2(res)
    assert list(t2) == list(ROI_NAMES)
    assert np.isfinite(t2["PTV70"]["MSE"])
    t3 = sharp.table3(res, "SL γ=100")
    assert "PTV70" in t3 and all(s["n"] >= 2 for s in t3.values())
    assert np.isfinite(sharp.table1(res)["rows"]["Inside the body"]["SL γ=100"])
    with pytest.raises(ValueError, match="openkbp_scores"):
        sharp.table4(res)
    sc = sharp.openkbp_scores(res)
    pred = np.clip(res.predictions["MSE"][0], 0, None) * res.body[0]
    e0 = np.abs(pred - res.reference[0]).sum() / res.body[0].sum()
    assert sc["MSE"]["dose_score"] >= 0 and np.isfinite(sc["MSE"]["dvh_score"])
    per_case = [np.abs(np.clip(res.predictions["MSE"][c], 0, None) * res.body[c] - res.reference[c]).sum()
                / res.body[c].sum() for c in range(3)]
    assert per_case[0] == pytest.approx(e0) and sc["MSE"]["dose_score"] == pytest.approx(np.mean(per_case))
    with pytest.raises(ValueError):
        sharp.openkbp_scores(_fake_results())
    sharp.plot_sample(res, 0)
    plt.close("all")
