"""Tests of the sharp-loss chapter module (rtlearn.experiments.sharp)."""
from __future__ import annotations

import dataclasses
import json

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn.functional as F

from rtlearn.experiments import sharp
from rtlearn.losses.sharp import SharpLoss
from rtlearn.metrics.stats import judge
from rtlearn.study import from_runs, validate_record


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """One seed of ``default_config("study", **TINY)`` (and its data) on a temporary cache."""
    cfg = sharp.default_config("study", root=str(tmp_path_factory.mktemp("sharp")), **sharp.TINY)
    data = sharp.load_data(cfg, progress=False)
    return cfg, data, sharp.run(cfg, 0, data=data, progress=False)


def _without_times(record):
    """The parts of a run record that must repeat exactly (wall times differ from run to run), as JSON text."""
    hist = {a: [{k: v for k, v in r.items() if k != "seconds"} for r in h] for a, h in record["history"].items()}
    return json.dumps({"cases": record["cases"], "metrics": record["metrics"], "history": hist,
                       "extras": record["extras"]}, sort_keys=True)  # NaN -> "NaN": equal NaNs compare equal


# ---- configuration and bad input ---------------------------------------------------------------------------
@pytest.mark.parametrize("kw", [dict(dims=4), dict(gammas=(-1.0,)), dict(gammas=()), dict(gammas=(1.0, 1.0)),
                                dict(n_test=1), dict(epochs=0), dict(n_train=2.5), dict(lr=0.0),
                                dict(gammas=(float("nan"),)), dict(early_stopping=0), dict(data_seed=-1),
                                dict(plateau_factor=1.0), dict(gammas="abc")])
def test_config_rejects_bad_values(kw):
    with pytest.raises(ValueError):
        sharp.Config(**kw)


def test_profiles(monkeypatch):
    q = sharp.default_config("quick")   # today's quick sizes
    assert (q.dims, q.n_train, q.n_val, q.n_test, q.epochs, q.gammas) == (2, 32, 8, 10, 30, (25.0, 100.0, 500.0))
    assert (q.depth, q.width, q.batch_size, q.lr, q.early_stopping, q.data_seed) == (4, 8, 4, 1e-3, 10, 0)
    s = sharp.default_config("study")
    assert s.dims == 2 and s.early_stopping is not None and s.epochs > q.epochs
    assert s.gammas == sharp.PAPER_GAMMAS            # the paper's whole sweep
    for c in (q, s):                                 # the paper's schedule: x0.1 after 5 epochs, down to 1e-7
        assert (c.plateau_factor, c.plateau_patience, c.plateau_min_lr) == (0.1, 5, 1e-7)
    assert s.n_train > q.n_train and s.n_test >= 20 and (s.depth, s.width) == (q.depth, q.width)
    f = sharp.default_config("full")
    assert f.dims == 3 and f.n_train + f.n_val == 100 and f.n_test == 10 and f.gammas == sharp.PAPER_GAMMAS
    assert f.plateau_factor == 0.1 and f.plateau_patience == 5 and f.batch_size == 2
    monkeypatch.setenv("RTLEARN_PROFILE", "full")
    assert sharp.default_config() == f
    monkeypatch.setenv("RTLEARN_PROFILE", "quick")
    assert sharp.default_config() == q and sharp.default_config(epochs=3).epochs == 3
    with pytest.raises(ValueError, match="not a profile"):
        sharp.default_config("huge")
    with pytest.raises(ValueError, match="unknown Config field"):
        sharp.default_config(train_seed=1)
    o = sharp.default_config("study", source="openkbp")
    assert (o.dims, o.downsample, o.gammas) == (2, 2, sharp.PAPER_GAMMAS) and o.n_train == 200 and o.n_test == 100


def test_arms_are_the_papers_losses():
    cfg = sharp.default_config("quick", gammas=(0.0, 25.0, 100.0))
    arms = sharp.arms(cfg)
    assert list(arms) == ["MSE", "SL γ=0", "SL γ=25", "SL γ=100"]
    assert isinstance(arms["MSE"], torch.nn.MSELoss) and isinstance(arms["SL γ=100"], SharpLoss)
    g = torch.Generator().manual_seed(0)
    target = torch.rand(2, 1, 8, 8, generator=g)
    pred = torch.rand(2, 1, 8, 8, generator=g)
    assert torch.equal(arms["MSE"](pred, target), F.mse_loss(pred, target))          # Eq. 2
    w = torch.sigmoid((target - 0.03) * 25.0)                                         # Eq. 4 written out
    assert torch.allclose(arms["SL γ=25"](pred, target), (w * (pred - target) ** 2).mean())
    assert torch.allclose(arms["SL γ=0"](pred, target), 0.5 * F.mse_loss(pred, target))
    with pytest.raises(TypeError):
        sharp.arms({"gammas": (1.0,)})


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


def test_paper_constants_and_claims():
    assert set(sharp.PAPER_TABLE1) == set(sharp.TABLE1_ROWS)
    assert set(sharp.PAPER_TABLE4) == set(sharp.TABLE4_ROWS)
    assert all(len(v) == 1 + len(sharp.PAPER_GAMMAS) for v in sharp.PAPER_TABLE1.values())
    assert set(sharp.PAPER_TABLE2) == set(sharp.PAPER_TABLE3) == set(sharp.ROI_LABELS.values())
    assert sharp.PAPER_TABLE2["Contralateral lung"][0] == sharp.PAPER_TABLE3["Contralateral lung"][0]
    # the claims: gamma = 100 below the MSE inside the body and in each ROI, with the paper's differences
    first = sharp.CLAIMS[:6]
    assert [c.metric for c in first] == ["MAD inside the body"] + [f"MAD {r}" for r in sharp.PAPER_TABLE3]
    assert all((c.a, c.b, c.direction) == ("MSE", "SL γ=100", "lower") for c in first)
    assert sharp.CLAIMS[0].paper == pytest.approx(154.15 - 186.55)
    assert sharp.CLAIMS[1].paper == pytest.approx(144.15 - 318.87)
    # gamma = 100 best: its error SD inside the body below every other gamma's (Table 1, last row)
    best = sharp.CLAIMS[6:11]
    assert [c.a for c in best] == [sharp.arm_label(g) for g in (1, 25, 50, 250, 500)]
    assert all((c.metric, c.b, c.direction) == ("error SD inside the body", "SL γ=100", "lower") for c in best)
    assert best[0].paper == pytest.approx(228.79 - 254.86) and best[-1].paper == pytest.approx(228.79 - 555.69)
    # large gamma worse: 250 and 500 above 100 inside the body
    large = sharp.CLAIMS[11:]
    assert [(c.a, c.b, c.direction) for c in large] == [("SL γ=100", "SL γ=250", "higher"),
                                                         ("SL γ=100", "SL γ=500", "higher")]
    assert large[1].paper == pytest.approx(426.26 - 154.15)
    # in the paper's own numbers every difference has the claimed sign
    assert all((c.paper < 0) == (c.direction == "lower") for c in sharp.CLAIMS)
    assert sorted(i for g in sharp.CLAIM_GROUPS.values() for i in g) == [0, 1] + list(range(6, 13))


# ---- per-case metrics and tables against independent computations on hand-made predictions ------------------
def _fake_study(seeds=(0,)):
    """A study of hand-made predictions on a hand-made test set (6 cases, 12 x 14 pixels of 3 mm)."""
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
    names = ("PTV", "Lung_L", "Heart", "Lung_R", "SpinalCord")
    masks = [{nm: rois[c, k] for k, nm in enumerate(names)} for c in range(n)]
    spacings = [(3.0, 3.0)] * n
    records, all_preds = {}, {}
    for s in seeds:
        preds = {"MSE": ref + rng.normal(0, 3, ref.shape), "SL γ=100": ref + rng.normal(0, 1, ref.shape),
                 "SL γ=500": ref + rng.normal(0, 2, ref.shape)}
        metrics = {a: {} for a in preds}
        for a, p in preds.items():
            per = [sharp.case_metrics(p[c], ref[c], body[c], masks[c], rx_gy=50.0) for c in range(n)]
            metrics[a] = {k: [pc[k] for pc in per] for k in per[0]}
        extras = {"val_mad_body_cgy": {"MSE": 9.0, "SL γ=100": 5.0 - 2.5 * s, "SL γ=500": 4.0},
                  "val_sd_body_cgy": {"MSE": 12.0, "SL γ=100": 6.0 - 3.0 * s, "SL γ=500": 5.0},
                  "val_mad_roi_cgy": {"MSE": {"PTV": 9.0, "Heart": 9.0}, "SL γ=100": {"PTV": 3.0, "Heart": 5.0},
                                      "SL γ=500": {"PTV": 4.0, "Heart": 4.5}},
                  **sharp.reference_extras(ref, body, masks, rx_gy=50.0, spacings=spacings)}
        records[s] = {"cases": list(range(n)), "metrics": metrics, "history": {a: [] for a in preds},
                      "seconds": {a: 1.0 for a in preds}, "extras": extras}
        all_preds[s] = preds
    cfg = sharp.Config(n_test=n, gammas=(100.0, 500.0))
    return from_runs("sharp", "quick", cfg, records), ref, body, rois, all_preds


def test_case_metrics_brute_force():
    rng = np.random.default_rng(0)
    ref = rng.uniform(0, 60, (10, 12))
    body = np.zeros((10, 12), bool)
    body[2:8, 2:10] = True
    ref[~body] = 0.0
    pred = ref + rng.normal(0, 2, ref.shape)
    ptv = np.zeros_like(body)
    ptv[3:5, 3:6] = True
    m = sharp.case_metrics(pred, ref, body, {"PTV": ptv, "Heart": np.zeros_like(body)}, rx_gy=50.0)
    e = (pred - ref) * 100
    assert m["MAD whole region"] == pytest.approx(np.abs(e).mean())
    assert m["MAD outside the body"] == pytest.approx(np.abs(e[~body]).mean())
    assert m["MAD inside the body"] == pytest.approx(np.abs(e[body]).mean())
    sel = body & (ref * 100 >= 1000) & (ref * 100 < 2000)
    assert m["MAD 1000-2000 cGy"] == pytest.approx(np.abs(e[sel]).mean())
    assert m["mean error inside the body"] == pytest.approx(e[body].mean())
    assert m["error SD inside the body"] == pytest.approx(e[body].std())
    assert m["MAD PTV"] == pytest.approx(np.abs(e[ptv]).mean()) and np.isnan(m["MAD Heart"])
    assert m["PTV D95 (cGy)"] == pytest.approx(100 * np.percentile(np.clip(pred, 0, None)[ptv], 5))
    assert np.isnan(m["Heart mean (cGy)"])
    with pytest.raises(ValueError):
        sharp.case_metrics(pred, ref, body[:5], {}, rx_gy=50.0)
    with pytest.raises(ValueError):
        sharp.case_metrics(pred, ref, body, {}, rx_gy=50.0, source="prostate")


def test_table1_pools_the_test_voxels():
    st, ref, body, _, preds = _fake_study()
    t = sharp.table1(st)
    ref_c, p = ref * 100, preds[0]["SL γ=100"] * 100
    err = np.abs(p - ref_c)
    row = lambda r: float(t["rows"][r]["SL γ=100"][0])  # noqa: E731
    assert row("Whole region") == pytest.approx(err.mean())
    assert row("Outside the body") == pytest.approx(err[~body].mean())
    assert row("Inside the body") == pytest.approx(err[body].mean())
    sel = body & (ref_c >= 2000) & (ref_c < 3000)
    assert row("2000-3000 cGy") == pytest.approx(err[sel].mean())
    sel = body & (ref_c >= 5000)
    assert row("> 5000 cGy") == pytest.approx(err[sel].mean())
    assert row("Std") == pytest.approx(np.std((p - ref_c)[body]))
    # gradient: pooled over cases, central differences with 3 mm spacing
    g = np.stack([np.hypot(*np.gradient(ref_c[c], 3.0, 3.0)) for c in range(ref.shape[0])])
    sel = body & (ref_c >= 1000) & (ref_c < 2000)
    assert t["gradient"]["1000-2000 cGy"] == pytest.approx(g[sel].mean())
    assert t["n"]["Inside the body"] == body.sum()


def test_tables_2_3_and_selection():
    st, ref, _, rois, preds = _fake_study()
    assert sharp.select_best(st) == "SL γ=500"          # lowest validation MAD, not the lowest test error
    ptv = rois[:, 0]
    direct = [np.abs(preds[0]["MSE"][c] - ref[c])[ptv[c]].mean() * 100 for c in range(6)]
    np.testing.assert_allclose(st.metric("MAD PTV", "MSE")[0], direct)
    assert np.isnan(st.metric("MAD Spinal cord", "MSE")[0, -1])
    t2 = sharp.table2(st)
    assert list(t2) == list(sharp.ROI_LABELS.values())
    assert t2["PTV"]["MSE"][0] == pytest.approx(np.mean(direct))
    rows = {r["metric"]: r for r in judge(st, sharp.claims_for(st))}
    heart = [st.metric("MAD Heart", a)[0] for a in ("MSE", "SL γ=100")]
    assert rows["MAD Heart"]["p"] == pytest.approx(scipy.stats.wilcoxon(heart[1] - heart[0]).pvalue)
    assert rows["MAD Spinal cord"]["n_cases"] == 5
    tabs = sharp.tables(st)
    assert list(tabs) == ["Table 1", "Table 1 (paper)", "Table 2", "Table 2 (paper)", "Table 3", "Table 4",
                          "Selection"]
    assert "| PTV | SL γ=100 vs MSE | lower | 318.87 ± 30.23 | 144.15 ± 16.27 | 0.005 |" in tabs["Table 3"]
    assert f"| Inside the body | SL γ=100 vs MSE | lower | {sharp.PAPER_TABLE1['Inside the body'][0]:.2f} |" \
        in tabs["Table 3"]
    # the only claim of the other groups with both arms here: gamma = 500 above gamma = 100 (Table 1 of the paper)
    assert "| Inside the body | SL γ=500 vs SL γ=100 | higher | 154.15 | 426.26 | – |" in tabs["Table 3"]
    assert "**γ chosen on the validation patients**: SL γ=500 by the paper's procedure" in tabs["Selection"]
    assert "SL γ=500 by the lowest MAD" in tabs["Selection"]
    # one seed: our cells are plain numbers; two seeds: mean ± sd over seeds
    assert f"| Inside the body | {float(sharp.table1(st)['rows']['Inside the body']['MSE'][0]):.2f} |" \
        in tabs["Table 1"]
    two = sharp.tables(_fake_study(seeds=(0, 1))[0])
    assert "2 seeds" in two["Table 1"] and " ± " in two["Table 2"].splitlines()[4]
    assert "1 of 2" in two["Selection"] and "patients**: SL γ=100" in two["Selection"]


def test_table4_direct():
    st, ref, _, rois, preds = _fake_study()
    t = sharp.table4(st, ["MSE"])
    d95 = [np.percentile(ref[c][rois[c, 0]], 5) * 100 for c in range(6)]
    assert t["PTV D95 (cGy)"]["Ground truth"][0] == pytest.approx(np.mean(d95))
    assert t["PTV D95 (cGy)"]["Ground truth"][1] == pytest.approx(np.std(d95, ddof=1))
    lungs = rois[:, 1] | rois[:, 3]
    v20 = [100 * np.mean(np.clip(preds[0]["MSE"][c], 0, None)[lungs[c]] >= 20) for c in range(6)]
    assert t["Whole lung V20 (%)"]["MSE"][0] == pytest.approx(np.mean(v20))
    heart = [ref[c][rois[c, 2]].mean() * 100 for c in range(6)]
    assert t["Heart mean (cGy)"]["Ground truth"][0] == pytest.approx(np.mean(heart))
    with pytest.raises(ValueError, match="openkbp_scores"):
        sharp.openkbp_scores(st)


# ---- end to end ----------------------------------------------------------------------------------------------
def test_run_record(tiny):
    cfg, data, rec = tiny
    validate_record(rec)
    assert list(rec["metrics"]) == ["MSE"] + [sharp.arm_label(g) for g in sharp.PAPER_GAMMAS] == list(sharp.arms(cfg))
    assert rec["cases"] == data.test and len(rec["cases"]) == cfg.n_test
    for c in sharp.CLAIMS:   # the claims name arms and metrics the record has
        assert c.a in rec["metrics"] and c.b in rec["metrics"] and c.metric in rec["metrics"][c.a]
    for name in ["MAD inside the body", "MAD PTV", "MAD 0-500 cGy", *sharp.TABLE4_ROWS]:
        assert name in rec["metrics"]["MSE"]
    live = rec["live"]
    assert live["reference"].shape == live["predictions"]["MSE"].shape == (3, 48, 48) and live["rx_gy"] == 50.0
    # targets are dose / 60 Gy, the paper's dose / 6000 cGy
    item = data.dataset[data.test[0]]
    np.testing.assert_allclose(item["target"][0].numpy() * 60.0, live["reference"][0], rtol=1e-5, atol=1e-4)
    # single-channel ROI-value input of Bai et al.: values in {0, 1/6, ..., 1}
    vals = np.unique(np.round(item["input"].numpy() * 6, 4))
    assert item["input"].shape[0] == 1 and set(vals) <= {0, 1, 2, 3, 4, 5, 6}
    assert set(data.train).isdisjoint(data.test) and set(data.val).isdisjoint(data.test)
    for arm, hist in rec["history"].items():
        assert len(hist) == cfg.epochs and all(np.isfinite(r["val_mad_body_cgy"]) for r in hist)
        assert np.isfinite(rec["extras"]["val_mad_body_cgy"][arm])
        assert rec["extras"]["epochs"][arm] == len(hist)
    # the validation scores of the selection, recomputed from the kept model's validation predictions
    vref, vbody, vrois = data.arrays(data.val)
    vpred = sharp.predict(live["models"]["SL γ=100"], data, data.val)
    err = (vpred - vref)[vbody] * 100
    assert rec["extras"]["val_mad_body_cgy"]["SL γ=100"] == pytest.approx(np.abs(err).mean())
    assert rec["extras"]["val_sd_body_cgy"]["SL γ=100"] == pytest.approx(err.std())
    ptv = vrois[:, list(data.roi_names).index("PTV")]
    assert rec["extras"]["val_mad_roi_cgy"]["SL γ=100"]["PTV"] == pytest.approx(np.abs(vpred - vref)[ptv].mean() * 100)
    # the per-case MAD of the record is the MAD of the live prediction
    p, r, b = live["predictions"]["SL γ=100"][1], live["reference"][1], live["body"][1]
    assert rec["metrics"]["SL γ=100"]["MAD inside the body"][1] == pytest.approx(np.abs(p - r)[b].mean() * 100)
    st = from_runs("sharp", "study", cfg, {0: rec})
    assert set(sharp.tables(st)) >= {"Table 1", "Table 3", "Table 4"}
    with pytest.raises(TypeError):
        sharp.run(dataclasses.asdict(cfg), 0, data=data)
    with pytest.raises(ValueError, match="seed"):
        sharp.run(cfg, -1, data=data)


def test_same_seed_same_record(tiny):
    cfg, data, rec = tiny
    again = sharp.run(cfg, 0, data=data, progress=False)
    assert _without_times(again) == _without_times(rec)
    for arm in rec["live"]["predictions"]:
        np.testing.assert_array_equal(again["live"]["predictions"][arm], rec["live"]["predictions"][arm])
    other = sharp.run(cfg, 1, data=data, progress=False)
    assert other["cases"] == rec["cases"]     # the split does not depend on the training seed
    for arm in rec["history"]:
        assert [r["train_loss"] for r in other["history"][arm]] != [r["train_loss"] for r in rec["history"][arm]]


def test_figures(tiny):
    import matplotlib.pyplot as plt

    from rtlearn import plotting

    cfg, _, rec = tiny
    st = from_runs("sharp", "study", cfg, {0: rec})
    plotting.set_style()  # the book's style (constrained layout) must work with every figure
    axes = sharp.plot_training_curves(st)
    assert len(axes[0].lines) == len(st.arms)
    two = from_runs("sharp", "study", cfg, {0: rec, 1: rec})
    axes = sharp.plot_training_curves(two)              # two seeds: a band per arm
    assert len(axes[2].collections) == len(st.arms) and "2 seeds" in axes[0].get_title()
    axes = sharp.plot_mad_vs_gamma(two)
    assert axes[0].get_title() == "Inside the body" and axes[0].get_xscale() == "log"
    gam = np.array([float(a.split("=")[1]) for a in st.arms[1:]])
    line = axes[0].lines[0]                              # ours: the pooled MAD inside the body of each gamma
    np.testing.assert_allclose(line.get_xdata(), gam)
    t1 = sharp.table1(st)["rows"]["Inside the body"]
    np.testing.assert_allclose(line.get_ydata(), [t1[a][0] for a in st.arms[1:]])
    live = rec["live"]
    axes = sharp.plot_weight_map(live["reference"][0], live["body"][0], live["spacing"])
    assert len(axes) == 4 and "γ = 100" in axes[2].get_title()
    img = axes[2].images[0].get_array()
    from rtlearn.losses.sharp import sharp_weight
    np.testing.assert_allclose(img, sharp_weight(live["reference"][0] / 60.0, 100.0), rtol=1e-6)
    with pytest.raises(ValueError):
        sharp.plot_weight_map(live["reference"], live["body"], live["spacing"])   # a stack, not one slice
    with pytest.raises(ValueError, match="seed"):
        sharp.plot_training_curves(st, seed=7)
    ax = sharp.plot_roi_boxplots(st)
    assert ax.get_ylabel().endswith("(cGy)")
    fig = sharp.plot_sample(rec, 0)
    assert len(fig.axes) >= 4
    with pytest.raises(ValueError):
        sharp.plot_sample(rec, 99)
    with pytest.raises(ValueError, match="live"):
        sharp.plot_sample({k: v for k, v in rec.items() if k != "live"}, 0)
    with pytest.raises(ValueError, match="arm"):
        sharp.plot_sample(rec, 0, ["SL γ=7"])
    plt.close("all")


def test_3d_path_smoke(tmp_path):
    """The full profile's code path (3D volumes) on a tiny grid."""
    import matplotlib.pyplot as plt

    cfg = sharp.Config(dims=3, n_train=2, n_val=1, n_test=2, shape=(8, 48, 48), spacing=(16.0, 8.0, 8.0),
                       gammas=(100.0,), epochs=1, depth=2, width=2, root=str(tmp_path))
    rec = sharp.run(cfg, 0, progress=False)
    validate_record(rec)
    assert rec["live"]["predictions"]["SL γ=100"].shape == (2, 8, 48, 48)
    assert len(rec["live"]["spacing"]) == 3
    st = from_runs("sharp", "full", cfg, {0: rec})
    assert np.isfinite(sharp.table1(st)["rows"]["Inside the body"]["MSE"]).all()
    assert "Table 4" in sharp.tables(st)
    sharp.plot_sample(rec, 1)
    plt.close("all")


# ---- OpenKBP (head and neck) --------------------------------------------------------------------------------
def test_openkbp_config_rules():
    with pytest.raises(ValueError, match="slice_step"):
        sharp.Config(source="phantom", slice_step=2)
    with pytest.raises(ValueError, match="plateau_min_lr"):
        sharp.Config(plateau_min_lr=1e-2)
    with pytest.raises(ValueError, match="source"):
        sharp.Config(source="prostate")
    with pytest.raises(ValueError, match="downsample"):
        sharp.Config(dims=3, source="openkbp", downsample=3)
    assert sharp.default_config("quick", source="openkbp").dims == 2
    assert sharp.default_config("full", source="openkbp").dims == 3
    assert sharp.default_config("full", source="openkbp").gammas == sharp.PAPER_GAMMAS
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
    from rtlearn.metrics.openkbp import dvh_score
    from rtlearn.rois import ROI_NAMES

    root = shared_data / "openkbp"
    cfg = sharp.Config(dims=3, source="openkbp", n_train=2, n_val=2, n_test=3, downsample=4,
                       gammas=(100.0,), epochs=2, depth=2, width=4, root=str(root))
    data = sharp.load_data(cfg, progress=False)
    assert isinstance(data, sharp.OpenKBPSharpData)
    assert data.patients(data.train) == ["pt_1", "pt_2"] and data.patients(data.val) == ["pt_201", "pt_202"]
    assert data.patients(data.test) == ["pt_242", "pt_243", "pt_245"]   # pt_241 and pt_244 have no CT here
    rec = sharp.run(cfg, 0, data=data, progress=False)
    validate_record(rec)
    live = rec["live"]
    assert rec["cases"] == ["pt_242", "pt_243", "pt_245"]
    assert live["predictions"]["SL γ=100"].shape == live["reference"].shape == (3, 32, 32, 32)
    assert tuple(live["roi_names"]) == ROI_NAMES and live["rx_gy"] == 70.0

    # reference dose, body and input against the raw archive of the first test patient
    raw = load_patient("pt_242", "test", root)
    dose = to_zyx(raw["dose_cgy"]).astype(np.float64) / 100.0
    np.testing.assert_allclose(live["reference"][0], _block_mean(dose, 4), rtol=1e-5, atol=1e-4)
    pdm = to_zyx(raw["possible_dose_mask"])
    np.testing.assert_array_equal(live["body"][0], _block_mean(pdm.astype(float), 4) > 0.5)
    vd = raw["voxel_dimensions"]
    assert live["case_spacing"][0] == pytest.approx((4 * vd[2], 4 * vd[0], 4 * vd[1]))
    roi_map = np.where(pdm, sharp.OPENKBP_BODY_VALUE, 0.0)
    for name, value in sorted(sharp.OPENKBP_ROI_VALUES.items(), key=lambda kv: kv[1]):  # highest value painted last
        if name in raw:
            roi_map[to_zyx(raw[name])] = value
    item = data.dataset[data.test[0]]
    np.testing.assert_allclose(item["input"][0].numpy(), _block_mean(roi_map, 4), atol=1e-6)
    np.testing.assert_allclose(item["target"][0].numpy() * 60.0, live["reference"][0], rtol=1e-5, atol=1e-4)

    # tables use OpenKBP's names; the breast Table 4 refuses; the challenge scores match a direct computation
    st = from_runs("sharp", "quick", cfg, {0: rec})
    t2 = sharp.table2(st)
    assert list(t2) == list(ROI_NAMES) and np.isfinite(t2["PTV70"]["MSE"]).all()
    assert np.isfinite(sharp.table1(st)["rows"]["Inside the body"]["SL γ=100"]).all()
    with pytest.raises(ValueError, match="openkbp_scores"):
        sharp.table4(st)
    assert list(sharp.tables(st)) == ["Table 1", "Table 2", "OpenKBP scores", "Table 3", "Selection"]
    sc = sharp.openkbp_scores(st)
    preds = [np.clip(live["predictions"]["MSE"][c], 0, None) * live["body"][c] for c in range(3)]
    per_case = [np.abs(preds[c] - live["reference"][c]).sum() / live["body"][c].sum() for c in range(3)]
    assert sc["MSE"]["dose_score"][0] == pytest.approx(np.mean(per_case))
    rois = [{n: live["rois"][c, k] for k, n in enumerate(ROI_NAMES) if live["rois"][c, k].any()} for c in range(3)]
    assert sc["MSE"]["dvh_score"][0] == pytest.approx(dvh_score(preds, list(live["reference"]), rois,
                                                                list(live["case_spacing"])))
    sharp.plot_sample(rec, 0)
    plt.close("all")


# ---- selecting gamma -----------------------------------------------------------------------------------------
def test_selection_on_the_papers_own_tables():
    """On Bai et al.'s Table 1 the lowest MAD inside the body picks gamma = 50; their procedure picks 100."""
    sel = sharp.paper_selection()
    assert sel["by MAD"] == "SL γ=50" and sel["like the paper"] == "SL γ=100"
    assert sel["roi wins"]["SL γ=100"] == 4 and sel["roi wins"]["SL γ=50"] == 1   # spinal cord: 160.04 < 170.41
    # gamma = 100 ranks 4th of 6 by MAD inside the body
    names = [sharp.arm_label(g) for g in sharp.PAPER_GAMMAS]
    by_mad = sorted(names, key=lambda a: sharp.PAPER_TABLE1["Inside the body"][1 + names.index(a)])
    assert by_mad.index("SL γ=100") == 3


def test_selection_rules():
    sd = {"MSE": 1.0, "SL γ=1": 5.0, "SL γ=25": 3.0, "SL γ=100": 3.0}
    roi = {"PTV": {"SL γ=1": 9.0, "SL γ=25": 2.0, "SL γ=100": 1.0},
           "Heart": {"SL γ=1": 9.0, "SL γ=25": 2.0, "SL γ=100": 1.5}}
    assert sharp.select_like_paper(sd, roi) == "SL γ=100"          # SD tie broken by the structures won
    assert sharp.select_like_paper({**sd, "SL γ=25": 2.9}, roi) == "SL γ=25"   # the SD decides first
    assert sharp.select_by_mad({"MSE": 0.0, "SL γ=1": 2.0, "SL γ=25": 1.0}) == "SL γ=25"   # never the MSE
    assert sharp.roi_wins(roi) == {"SL γ=1": 0, "SL γ=25": 0, "SL γ=100": 2}
    for bad in ({"MSE": 1.0}, {"SL γ=1": float("nan")}):
        with pytest.raises(ValueError):
            sharp.select_by_mad(bad)
        with pytest.raises(ValueError):
            sharp.select_like_paper(bad, {})


def test_claim_verdicts_group_the_tests():
    rows = [{"metric": c.metric, "a": c.a, "b": c.b, "verdict": "supported"} for c in sharp.CLAIMS]
    out = sharp.claim_verdicts(rows)
    assert list(out) == list(sharp.CLAIM_GROUPS) and set(out.values()) == {"supported"}
    rows[7]["verdict"] = "unresolved"                   # one gamma not beaten: "gamma = 100 is best" unresolved
    rows[12]["verdict"] = "contradicted"                # gamma = 500 better than 100
    out = sharp.claim_verdicts(rows)
    assert list(out.values()) == ["supported", "unresolved", "contradicted"]
    assert list(sharp.claim_verdicts(rows[:6]).values())[1:] == ["not tested", "not tested"]


def test_plateau_schedule_stops_at_the_minimum_learning_rate():
    from rtlearn.train import Trainer

    tr = Trainer(torch.nn.Linear(2, 1), lambda p, b: p.sum(), plateau_min_lr=1e-7, plateau_patience=0,
                 progress=False, device="cpu")
    for _ in range(12):                                # never improves: x0.1 every epoch, down to 1e-7
        tr.scheduler.step(1.0)
    assert tr.optimizer.param_groups[0]["lr"] == pytest.approx(1e-7)
    with pytest.raises(ValueError, match="plateau_min_lr"):
        Trainer(torch.nn.Linear(2, 1), lambda p, b: p.sum(), plateau_min_lr=-1.0, device="cpu")


def test_openkbp_2d_slices_scored_on_the_full_grid(shared_data):
    """The OpenKBP study's path: 2D slices at 64², every test patient predicted slice by slice, scored on 128³."""
    import torch.nn.functional as F

    from rtlearn.data.openkbp import load_patient, to_zyx
    from rtlearn.experiments import sharp_openkbp
    from rtlearn.metrics.openkbp import dose_error

    root = shared_data / "openkbp"
    cfg = sharp_openkbp.default_config("study", root=str(root), **sharp_openkbp.TINY)
    assert (cfg.dims, cfg.downsample, cfg.source) == (2, 2, "openkbp")
    data = sharp.load_data(cfg, progress=False)
    assert data.test_patients == ["pt_242", "pt_243"]             # pt_241 has no CT here
    rec = sharp.run(cfg, 0, data=data, progress=False)
    validate_record(rec)
    assert rec["cases"] == ["pt_242", "pt_243"]
    live = rec["live"]
    raw = load_patient("pt_242", "test", root)
    dose = to_zyx(raw["dose_cgy"]).astype(np.float64) / 100.0
    np.testing.assert_allclose(live["reference"][0], dose)                          # the full 128³ grid
    pdm = to_zyx(raw["possible_dose_mask"])
    np.testing.assert_array_equal(live["body"][0], pdm)
    # the prediction of one slice, by hand: the model on the 64² ROI map, bilinear to 128², x 60 Gy, clipped, masked
    model = live["models"]["SL γ=100"].eval()
    k = data._test_items()["pt_242"][len(data._test_items()["pt_242"]) // 2]
    item = data.dataset[k]
    with torch.no_grad():
        p = F.interpolate(model(item["input"][None]), scale_factor=2, mode="bilinear", align_corners=False)
    p = np.clip(p[0, 0].numpy().astype(np.float64) * 60.0, 0, None) * pdm[item["slice"]]
    np.testing.assert_allclose(live["predictions"]["SL γ=100"][0][item["slice"]], p, rtol=1e-5, atol=1e-6)
    # every slice outside the possible-dose mask is 0, and the challenge's dose error is the record's
    assert not live["predictions"]["SL γ=100"][0][~pdm].any()
    assert rec["metrics"]["SL γ=100"]["dose error (Gy)"][0] == pytest.approx(
        dose_error(live["predictions"]["SL γ=100"][0], dose, pdm))
    # validation items are 64² slices; the selection's validation scores exist for every arm
    assert data.dataset[data.val[0]]["input"].shape == (1, 64, 64)
    assert set(rec["extras"]["val_sd_body_cgy"]) == set(rec["metrics"])
    st = from_runs("sharp_openkbp", "study", cfg, {0: rec})
    assert "OpenKBP scores" in sharp.tables(st) and len(sharp.claims_for(st)) == len(sharp.OPENKBP_CLAIMS)


def test_band_contributions_add_up_to_the_difference_inside_the_body():
    st = _fake_study(seeds=(0, 1))[0]
    bc = sharp.band_contributions(st, "MSE", "SL γ=500")
    t1 = sharp.table1(st)["rows"]["Inside the body"]
    assert bc["total"] == pytest.approx(float(np.mean(t1["SL γ=500"]) - np.mean(t1["MSE"])), rel=1e-9)
    assert sum(v["share"] for k, v in bc.items() if k != "total") == pytest.approx(1.0)
    with pytest.raises(ValueError, match="arm"):
        sharp.band_contributions(st, "MSE", "SL γ=7")
