"""rtlearn.experiments.dvh_conditioned: config, cohort of Pareto sets, run records, Table 1 evaluation, tables."""
import dataclasses
import zlib

import matplotlib
import numpy as np
import pytest
import torch
from torch import nn

from rtlearn import study
from rtlearn.experiments import dvh_conditioned as ex
from rtlearn.metrics.stats import judge
from rtlearn.pareto import check_dvh_vector, dvh_vector, inverse_time_lr, project_to_pareto
from rtlearn.train import fit, seeded

matplotlib.use("Agg")

SHAPE, SPACING = (32, 32), 12.8


@pytest.fixture(scope="module")
def cohort():
    torch.set_num_threads(1)
    return ex.make_cohort(3, n_plans=4, shape=SHAPE, spacing=SPACING, seed=0, n_bins=8, max_iter=40,
                          progress=False)


@pytest.fixture(scope="module")
def tiny():
    """The study config shrunk by TINY, its data and one run record (seed 0)."""
    torch.set_num_threads(1)
    cfg = ex.default_config("study", **ex.TINY)
    data = ex.load_data(cfg, progress=False)
    return cfg, data, ex.run(cfg, 0, data=data, progress=False)


class Oracle(torch.nn.Module):
    """Knows one patient's Pareto set: returns the projected plan's dose (minus an offset)."""

    def __init__(self, doses, dvhs, offset=0.0):
        super().__init__()
        self.doses, self.dvhs, self.offset = doses, dvhs, offset
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.dims = doses.dim() - 1

    def forward(self, anatomy, dvh):
        j, _ = project_to_pareto(dvh, self.dvhs)
        return (self.doses[j] - self.offset + 0 * self.w)[:, None]


# ---- config ----------------------------------------------------------------------------------------------------
def test_quick_profile_keeps_todays_sizes():
    cfg = ex.default_config("quick")
    assert (cfg.n_train, cfg.n_val, cfg.n_test, cfg.n_plans) == (16, 3, 6, 10)
    assert (cfg.dims, cfg.shape, cfg.spacing, cfg.max_iter) == (2, (48, 48), 8.54, 150)
    assert (cfg.n_bins, cfg.max_dose) == (32, 1.2)
    assert (cfg.width, cfg.depth, cfg.max_channels, cfg.dropout) == (16, 4, 128, 0.1)
    assert (cfg.lr, cfg.decay, cfg.epochs, cfg.batch_size, cfg.samples_per_epoch) == (2e-3, 0.002, 30, 8, None)
    assert cfg.loss is nn.L1Loss and cfg.early_stopping is None
    assert (cfg.eval_samples, cfg.eval_seed, cfg.patient_seed) == (10, 123, 0)
    assert cfg.arms == ("conditional", "anatomy only") and not cfg.plan_on_device and not cfg.cache
    assert ex.default_config("quick") == cfg


def test_study_and_full_profiles():
    q, s, f = (ex.default_config(p) for p in ("quick", "study", "full"))
    assert 48 <= s.n_train <= 64 and s.n_train > q.n_train and s.n_test > q.n_test and s.n_val > q.n_val
    assert s.early_stopping is not None and s.epochs > q.epochs and s.dims == 2
    assert s.n_train + s.n_val == ex.PAPER_N_FIT and s.n_test == ex.PAPER_N_TEST
    assert (f.dims, f.n_train + f.n_val, f.n_test, f.loss, f.dropout, f.lr) == (3, 77, 20, nn.MSELoss, 0.2, 1e-3)
    assert f.plan_on_device and f.cache
    json_cfg = study.config_to_json(s)                           # the loss class is stored by name, deterministically
    assert json_cfg == study.config_to_json(ex.default_config("study")) and "L1Loss" in json_cfg["loss"]


def test_default_config_reads_the_profile_and_rejects_bad_input(monkeypatch):
    monkeypatch.setenv("RTLEARN_PROFILE", "study")
    assert ex.default_config() == ex.default_config("study")
    monkeypatch.delenv("RTLEARN_PROFILE")
    assert ex.default_config() == ex.default_config("quick")
    assert ex.default_config("quick", epochs=2).epochs == 2
    with pytest.raises(ValueError, match="not a profile"):
        ex.default_config("huge")
    with pytest.raises(ValueError, match="unknown Config field"):
        ex.default_config("quick", n_epochs=3)
    for bad, match in ((dict(dropout=1.0), "dropout"), (dict(lr=0.0), "lr"), (dict(arms=("conditional", "x")), "arms"),
                       (dict(loss="mae"), "loss"), (dict(shape=(50, 48)), "divisible"), (dict(shape=(48,)), "shape"),
                       (dict(n_test=0), "n_test"), (dict(n_plans=1), "n_plans"), (dict(early_stopping=0), "early"),
                       (dict(dims=4), "dims"), (dict(spacing=-1.0), "spacing"), (dict(cache="yes"), "cache")):
        with pytest.raises(ValueError, match=match):
            ex.default_config("quick", **bad)
    with pytest.raises(TypeError, match="Config"):
        ex.load_data({"n_train": 3})
    with pytest.raises(ValueError, match="unknown arm"):
        ex.build_model(ex.default_config("quick"), "baseline")


def test_claims_reference_arms_and_metrics():
    assert ex.CLAIMS and all(c.a in ex.ARMS and c.b in ex.ARMS and c.metric in ex.METRICS for c in ex.CLAIMS)
    assert {c.metric for c in ex.CLAIMS} == {"mean_error", "max_error", "mean_error_ptv"}
    assert all(c.b == "conditional" and c.direction == "lower" for c in ex.CLAIMS)
    assert set(ex.default_config("study").arms) == set(ex.ARMS)          # the study can judge every claim
    assert set(ex.TABLE_METRICS) | {k for k in ex.METRICS if k.startswith("bias_")} == set(ex.METRICS)


# ---- cohort ----------------------------------------------------------------------------------------------------
def test_cohort_shapes_normalisation_and_dvhs(cohort):
    assert len(cohort) == 3 and cohort.n_plans == 4
    assert cohort.anatomy.shape == (3, 4, *SHAPE) and cohort.doses.shape == (3, 4, *SHAPE)
    assert cohort.dvhs.shape == (3, 4, 4 * 8)
    for i in range(3):
        m = cohort.masks(i)
        assert list(m) == list(ex.STRUCTURES) and all(v.any() for v in m.values())
        d = cohort.doses[i].double().numpy()
        np.testing.assert_allclose(d[:, m["PTV"]].mean(1), 1.0, atol=1e-5)      # normalised to the PTV mean
        ref = dvh_vector(d, m, n_bins=8, max_dose=1.2)                         # independent recomputation
        np.testing.assert_allclose(cohort.dvhs[i].numpy(), ref, atol=1e-6)
        check_dvh_vector(cohort.dvhs[i].numpy(), 4, 8)
    # the sweep goes from bladder sparing to rectum sparing: rectum mean falls, bladder mean rises
    rect, blad = cohort.oar_mean_gy[..., 0], cohort.oar_mean_gy[..., 1]
    assert np.all(rect[:, 0] > rect[:, -1]) and np.all(blad[:, 0] < blad[:, -1])
    assert np.all((cohort.ptv_mean_gy > 0.95 * cohort.prescription) & (cohort.ptv_mean_gy < 1.2 * cohort.prescription))


def test_cohort_deterministic_and_subset(cohort):
    again = ex.make_cohort(1, n_plans=4, shape=SHAPE, spacing=SPACING, seed=cohort.seeds[1], n_bins=8,
                           max_iter=40, progress=False)
    sub = cohort.subset([1])
    assert sub.seeds == again.seeds == [cohort.seeds[1]]
    torch.testing.assert_close(sub.doses, again.doses, rtol=0, atol=0)
    torch.testing.assert_close(sub.dvhs, again.dvhs, rtol=0, atol=0)


def test_cohort_cache_roundtrip(tmp_path, cohort):
    kw = dict(n_plans=4, shape=SHAPE, spacing=SPACING, seed=cohort.seeds[2], n_bins=8, max_iter=40, progress=False)
    first = ex.make_cohort(1, cache_dir=tmp_path, **kw)
    files = list((tmp_path / "pareto").glob("*.npz"))
    assert len(files) == 1
    second = ex.make_cohort(1, cache_dir=tmp_path, **kw)              # loaded, not re-planned
    torch.testing.assert_close(second.doses, first.doses, rtol=0, atol=0)
    torch.testing.assert_close(second.dvhs, cohort.subset([2]).dvhs, rtol=0, atol=0)
    assert second.seeds == first.seeds and second.spacing == first.spacing
    np.testing.assert_array_equal(second.oar_mean_gy, first.oar_mean_gy)


def test_cohort_bad_input():
    with pytest.raises(ValueError, match="n_plans"):
        ex.make_cohort(1, n_plans=1, shape=SHAPE, spacing=SPACING, progress=False)
    with pytest.raises(ValueError, match="n_patients"):
        ex.make_cohort(0, shape=SHAPE, spacing=SPACING, progress=False)


def test_pairs_reject_patient_with_too_few_plans(cohort):
    with pytest.raises(ValueError, match="fewer than n_plans"):
        cohort.pairs(n_plans=5)


def test_load_data_splits_in_order(tiny):
    cfg, data, _ = tiny
    assert (len(data.train), len(data.val), len(data.test)) == (cfg.n_train, cfg.n_val, cfg.n_test)
    seeds = data.train.seeds + data.val.seeds + data.test.seeds
    assert seeds == sorted(seeds) and len(set(seeds)) == len(seeds)
    assert data.cases == [f"prostate-{s}" for s in data.test.seeds]


# ---- evaluation ------------------------------------------------------------------------------------------------
def test_evaluate_pairs_oracle_and_offset(cohort):
    one = cohort.subset([0])
    res = ex.evaluate_pairs(Oracle(one.doses[0], one.dvhs[0]), one, samples_per_patient=6, seed=1)
    assert res["mean"].shape == (6, 4) and res["max"].shape == (6, 4)
    np.testing.assert_allclose(res["mean"], 0, atol=1e-5)
    np.testing.assert_allclose(res["max"], 0, atol=1e-5)
    # a prediction 0.01 (1 % of the PTV mean) too low everywhere: true - pred = 1 % x PTV mean (Gy) / Rx
    res = ex.evaluate_pairs(Oracle(one.doses[0], one.dvhs[0], offset=0.01), one, samples_per_patient=6, seed=1)
    expect = cohort.ptv_mean_gy[0, res["plan"]] / cohort.prescription
    np.testing.assert_allclose(res["mean"], np.repeat(expect[:, None], 4, 1), rtol=1e-4)
    np.testing.assert_allclose(res["max"], np.repeat(expect[:, None], 4, 1), rtol=1e-4)
    np.testing.assert_allclose(res["mae"], expect, rtol=1e-4)
    per = ex.case_metrics(res, 1)
    assert set(per) == {k for k in ex.METRICS if not k.startswith(("replan", "front"))}
    for name in per:                                  # every per-patient metric is the 1 % x PTV-mean offset
        assert per[name] == pytest.approx([expect.mean()], rel=1e-4)


def test_evaluate_pairs_matches_brute_force(cohort):
    torch.manual_seed(0)
    net = torch.nn.Module()
    net.conv = torch.nn.Conv2d(4, 1, 3, padding=1)
    net.dims = 2
    net.forward = lambda a, d: torch.relu(net.conv(a) + d[:, :1, None, None])
    res = ex.evaluate_pairs(net, cohort, samples_per_patient=2, seed=5, batch_size=4)
    ds = cohort.pairs(2 * len(cohort), seed=5)
    for t in range(len(ds)):
        item = ds[t]
        i, j = int(item["patient"]), int(item["plan"])
        with torch.no_grad():
            pred = net.forward(item["input"][None], item["dvh"][None])[0, 0].double().numpy()
        true = item["target"][0].double().numpy()
        s = cohort.ptv_mean_gy[i, j] * 100 / cohort.prescription
        for k, m in enumerate(cohort.masks(i).values()):
            assert res["mean"][t, k] == pytest.approx((true[m].mean() - pred[m].mean()) * s, abs=1e-4)
            assert res["max"][t, k] == pytest.approx((true[m].max() - pred[m].max()) * s, abs=1e-4)


def test_case_metrics_by_hand():
    rng = np.random.default_rng(1)
    res = {"mean": rng.normal(size=(7, 4)), "max": rng.normal(size=(7, 4)), "mae": rng.random(7),
           "patient": np.array([0, 1, 2, 0, 1, 2, 0])}
    per = ex.case_metrics(res, 4)                                  # patient 3 has no sample -> NaN
    assert list(per) == [k for k in ex.METRICS if not k.startswith(("replan", "front"))]
    assert all(v.shape == (4,) for v in per.values())
    assert per["bias_max_bladder"][1] == pytest.approx(res["max"][res["patient"] == 1, 2].mean())   # signed
    rows = res["patient"] == 0
    assert per["mean_error_rectum"][0] == pytest.approx(np.abs(res["mean"][rows, 1]).mean())
    assert per["max_error_ptv"][0] == pytest.approx(np.abs(res["max"][rows, 0]).mean())
    assert per["mean_error"][2] == pytest.approx(np.abs(res["mean"][res["patient"] == 2, :3]).mean())
    assert per["body_mae"][1] == pytest.approx(res["mae"][res["patient"] == 1].mean())
    assert all(np.isnan(v[3]) for v in per.values())


def test_summary_and_format_table():
    rng = np.random.default_rng(0)
    res = {"mean": rng.normal(size=(7, 4)), "max": rng.normal(size=(7, 4))}
    tab = ex.summary_table(res)
    assert list(tab) == list(ex.STRUCTURES)
    a, b, c, d = tab["Rectum"]
    assert a == pytest.approx(np.mean(res["mean"][:, 1])) and b == pytest.approx(np.std(res["mean"][:, 1], ddof=1))
    assert c == pytest.approx(np.mean(res["max"][:, 1])) and d == pytest.approx(np.std(res["max"][:, 1], ddof=1))
    text = ex.format_table({"ours": tab}, digits=1)
    assert text.count("\n") == 5 and f"{a:.1f} ± {b:.1f}" in text
    worst = ex.largest_errors(ex.PAPER_TABLE1)
    assert worst == {"mean": ("Bladder", 1.63), "max": ("PTV", 1.83)}


def test_tradeoff_dvh_blends_along_the_front():
    d = torch.tensor([[1.0, 0.5, 0.0], [1.0, 0.3, 0.1], [1.0, 0.1, 0.1]])
    torch.testing.assert_close(ex.tradeoff_dvh(d, 0.0), d[0])
    torch.testing.assert_close(ex.tradeoff_dvh(d, 1.0), d[2])
    torch.testing.assert_close(ex.tradeoff_dvh(d, 0.25), 0.5 * (d[0] + d[1]))
    torch.testing.assert_close(ex.tradeoff_dvh(d, 0.75), 0.5 * (d[1] + d[2]))
    check_dvh_vector(ex.tradeoff_dvh(d, 0.4).numpy(), 1, 3)
    for bad in (-0.1, 1.5, float("nan"), True, "0.5"):
        with pytest.raises(ValueError, match="x must be"):
            ex.tradeoff_dvh(d, bad)
    with pytest.raises(ValueError, match=r"\(N, L\)"):
        ex.tradeoff_dvh(d[0], 0.5)


# ---- training and the run record -------------------------------------------------------------------------------
def test_run_record_is_valid_and_conditioned(tiny):
    cfg, data, rec = tiny
    study.validate_record(rec)
    assert rec["cases"] == data.cases and list(rec["metrics"]) == list(cfg.arms) == list(ex.ARMS)
    for arm in cfg.arms:
        assert list(rec["metrics"][arm]) == list(ex.METRICS)
        assert all(len(v) == cfg.n_test and np.all(np.isfinite(v)) for v in rec["metrics"][arm].values())
        assert 1 <= len(rec["history"][arm]) <= cfg.epochs and "val_loss" in rec["history"][arm][0]
        assert list(rec["extras"]["table1"][arm]) == list(ex.STRUCTURES)
        assert len(rec["extras"]["front"]["predicted"][arm]) == len(rec["extras"]["front"]["x"]) == 11
        assert list(rec["extras"]["table1_train"][arm]) == list(ex.STRUCTURES)
        fronts = rec["extras"]["replan"][arm]
        assert len(fronts) == cfg.n_test and all(len(f["replanned"]) == len(ex.REPLAN_X) for f in fronts)
        for name in ("replan_gap", "front_gap_predicted", "front_gap_replanned"):   # the metrics are the records'
            np.testing.assert_allclose(rec["metrics"][arm][name], [ex.replan_metrics(f)[name] for f in fronts])
    drop = rec["extras"]["dropout"]
    assert drop["grid"] == list(cfg.dropout_grid) and len(drop["val_loss"]) == len(cfg.dropout_grid)
    assert drop["chosen"] == cfg.dropout_grid[int(np.argmin(drop["val_loss"]))]
    # (the normalised arms' PTV mean of 1 is tested in tests/models/test_conditional_unet.py and, trained at the
    # quick budget, in test_output_normalisation_removes_the_ptv_offset_at_the_quick_budget below)
    models = rec["live"]["models"]
    a, v = data.test.anatomy[0], data.test.dvhs[0]
    y0 = ex.predict(models["conditional"], a, v[0], n_bins=cfg.n_bins)
    assert y0.shape == tuple(cfg.shape) and y0.max() > 0
    assert not torch.allclose(y0, ex.predict(models["conditional"], a, v[-1], n_bins=cfg.n_bins), rtol=0, atol=1e-7)
    torch.testing.assert_close(ex.predict(models["anatomy only"], a, v[0], n_bins=cfg.n_bins),
                               ex.predict(models["anatomy only"], a, v[-1], n_bins=cfg.n_bins))  # ignores the DVH


def _without_times(rec):
    return {"metrics": rec["metrics"], "extras": rec["extras"], "cases": rec["cases"],
            "history": {a: [{k: v for k, v in r.items() if k != "seconds"} for r in h]
                        for a, h in rec["history"].items()}}


def test_run_is_deterministic_per_seed(tiny):
    cfg, data, rec = tiny
    again = ex.run(cfg, 0, data=data, progress=False)
    assert _without_times(again) == _without_times(rec)
    other = ex.run(cfg, 1, data=data, progress=False)
    assert other["cases"] == rec["cases"]                              # the test patients pair across seeds
    for arm in cfg.arms:
        assert [r["train_loss"] for r in other["history"][arm]] != [r["train_loss"] for r in rec["history"][arm]]


def test_run_is_model_plus_loss_plus_fit(tiny):
    """``run`` composes build_model (in ``seeded``), the loss object and ``fit``: the same by hand gives the same."""
    cfg, data, rec = tiny
    with seeded(0):
        model = ex.build_model(cfg, "conditional", dropout=rec["extras"]["dropout"]["chosen"])
    result = fit(model, cfg.loss(), data.train.pairs(cfg.samples_per_epoch), val=data.val.pairs(seed=1),
                 epochs=cfg.epochs, batch_size=cfg.batch_size, val_batch_size=16, seed=0, lr=cfg.lr,
                 scheduler=inverse_time_lr(cfg.decay), scheduler_interval="step", input_keys=("input", "dvh"),
                 early_stopping=cfg.early_stopping, progress=False)
    assert [r["train_loss"] for r in result.history.records] == [r["train_loss"] for r in rec["history"]["conditional"]]
    for p, q in zip(result.model.cpu().parameters(), rec["live"]["models"]["conditional"].parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_run_rejects_bad_input(tiny):
    cfg, data, _ = tiny
    with pytest.raises(TypeError, match="Config"):
        ex.run(dataclasses.asdict(cfg), 0, data=data)
    with pytest.raises(ValueError, match="seed"):
        ex.run(cfg, -1, data=data)
    with pytest.raises(TypeError, match="ParetoData"):
        ex.run(cfg, 0, data=data.test)


def test_predict_rejects_bad_dvh(cohort):
    cfg = ex.default_config("study", **ex.TINY)
    with seeded(0):
        net = ex.build_model(cfg, "conditional")
    a, v = cohort.anatomy[0], cohort.dvhs[0, 0].clone()
    with pytest.raises(ValueError, match="length"):
        ex.predict(net, a, v[:-1], n_bins=8)
    rising = v.clone()
    rising[3] = 1.0
    rising[2] = 0.0
    with pytest.raises(ValueError, match="non-increasing"):
        ex.predict(net, a, rising, n_bins=8)
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        ex.predict(net, a, v * 1.5, n_bins=8)


# ---- tables, figures, the recorded study ----------------------------------------------------------------------
def test_tables_figures_and_recorded_study(tiny, tmp_path):
    import matplotlib.pyplot as plt

    cfg, data, rec = tiny
    live = study.from_runs("dvh_conditioned", "study", cfg, {0: rec})
    text = ex.tables(live)
    assert "1.63 (Bladder)" in text and "1.83 (PTV)" in text and "0.54 ± 4.83" in text      # the paper's numbers
    table1 = {a: {k: tuple(v) for k, v in t.items()} for a, t in rec["extras"]["table1"].items()}
    assert ex.format_table({**table1, "paper (3D, 77/20 patients)": ex.PAPER_TABLE1}) in text
    assert text.count("| mean_error: anatomy only → conditional |") == 1 and str(text) == repr(text)
    assert [r["verdict"] for r in judge(live, ex.CLAIMS)] == ["unresolved"] * 3            # 2 test patients: no power
    assert "Reproduction rule" in text and "| largest average max-dose error | 1.83 (PTV) | 2.75 |" in text
    assert "re-planned" in ex.replan_table(live)
    # record the tiny study (the loss class must survive the JSON config) and read it back
    study.run_study("dvh_conditioned", "study", [0, 1], config=cfg, root=tmp_path, progress=False)
    recorded = study.load_study("dvh_conditioned", "study", root=tmp_path)
    assert recorded.seeds == [0, 1] and recorded.cases == rec["cases"]
    assert "± " in ex.tables(recorded)
    figs = ex.figures(recorded)
    assert set(figs) == {"histories", "case_errors", "replan", "front"}
    models, test = rec["live"]["models"], data.test
    figs = [ex.plot_pareto_fronts(data), ex.plot_projection(test, 0, test.dvhs[1, 1], 0),
            ex.plot_errors(rec["live"]["results"]), ex.plot_tradeoffs(models["conditional"], test),
            ex.plot_anatomy_only_errors(models["anatomy only"], test),
            ex.plot_slider_sweep(models["conditional"], test)]
    fig, info = ex.plot_tradeoff(models["conditional"], test, 0.5)
    assert 0 <= info["plan"] < cfg.n_plans and info["distance"] >= 0
    plt.close("all")


def test_3d_code_path_of_the_full_profile():
    cfg = ex.default_config("full", n_train=1, n_val=1, n_test=1, n_plans=2, shape=(8, 32, 32),
                            spacing=(10.0, 12.8, 12.8), n_bins=8, max_iter=20, width=4, depth=3, epochs=1,
                            batch_size=2, samples_per_epoch=2, eval_samples=2, plan_on_device=False, cache=False)
    data = ex.load_data(cfg, progress=False)
    assert data.test.doses.shape == (1, 2, 8, 32, 32) and data.train.anatomy.shape == (1, 4, 8, 32, 32)
    rec = study.validate_record(ex.run(cfg, 0, data=data, progress=False))
    assert "val_loss" in rec["history"]["conditional"][0]
    res = rec["live"]["results"]["conditional"]
    assert res["mean"].shape == (2, 4) and np.all(np.isfinite(res["max"]))
    net = rec["live"]["models"]["conditional"]
    assert ex.predict(net, data.test.anatomy[0], ex.tradeoff_dvh(data.test.dvhs[0], 0.5), n_bins=8).shape == (8, 32, 32)


# ---- deliverability and the reproduction rule -------------------------------------------------------------------
def test_front_gap_by_hand():
    front = [[10.0, 30.0], [30.0, 10.0], [20.0, 15.0]]                    # unsorted on purpose
    gaps = ex.front_gap([[20.0, 15.0], [25.0, 10.0], [15.0, 30.0], [5.0, 20.0], [40.0, 12.0]], front)
    np.testing.assert_allclose(gaps, [0.0, 10.0 - 12.5, 30.0 - 22.5, 20.0 - 30.0, 12.0 - 10.0])
    with pytest.raises(ValueError, match="pareto"):
        ex.front_gap([[1.0, 2.0]], [[1.0, 2.0]])
    with pytest.raises(ValueError, match="finite"):
        ex.front_gap([[np.nan, 2.0]], front)


def test_replan_summary_by_hand():
    rec = {"predicted": [[20.0, 10.0], [10.0, 20.0]], "replanned": [[21.0, 12.0], [12.0, 21.0]],
           "pareto": [[10.0, 30.0], [30.0, 10.0]], "rms_gy": [1.0, 3.0], "to_rx": 2.0, "predicted_d95": [98.0, 96.0]}
    s = ex.replan_summary([rec])
    assert (s["gap_rectum"], s["gap_bladder"]) == (pytest.approx(3.0), pytest.approx(3.0))   # mean 1.5 Gy x 2
    assert s["below_predicted"] == 1.0 and s["below_replanned"] == 1.0    # the straight front lies above both
    assert s["range_kept"] == pytest.approx(9.0 / 10.0) and s["rms"] == pytest.approx(4.0)
    assert s["predicted_d95"] == pytest.approx(97.0)
    m = ex.replan_metrics(rec)
    assert m["replan_gap"] == pytest.approx(3.0) and m["front_gap_predicted"] == pytest.approx(-20.0)
    with pytest.raises(ValueError, match="empty"):
        ex.replan_summary([])


def test_replan_front_mimics_and_checks_the_grid(tiny):
    cfg, data, rec = tiny
    model = rec["live"]["models"]["conditional"]
    f = ex.replan_front(model, data.test, 1, cfg, xs=(0.0, 1.0))
    full = rec["extras"]["replan"]["conditional"][1]                  # the record's five slider positions
    assert f["x"] == [0.0, 1.0] and f["pareto"] == full["pareto"] and f["to_rx"] == full["to_rx"]
    np.testing.assert_allclose(f["predicted"], np.asarray(full["predicted"])[[0, -1]], rtol=1e-6)   # batching
    for key in ("replanned", "rms_gy", "replanned_scale"):   # the optimiser amplifies those last bits a little
        np.testing.assert_allclose(f[key], np.asarray(full[key])[[0, -1]], rtol=1e-3)
    with pytest.raises(ValueError, match="differs"):
        ex.replan_front(model, data.test, 0, dataclasses.replace(cfg, spacing=14.0))
    with pytest.raises(ValueError, match="below"):
        ex.replan_front(model, data.test, 5, cfg)


class _FakeStudy:
    def __init__(self, bias):
        self.bias = bias

    def metric(self, name, arm):
        rng = np.random.default_rng(zlib.crc32(name.encode()))      # hash() of a str changes per process
        mean = self.bias if name == "bias_mean_bladder" else self.bias if name == "bias_max_ptv" else 0.0
        return mean + rng.normal(0, 0.05, size=(3, 20))


def test_reproduction_rule_can_pass_and_fail():
    ok = ex.reproduction(_FakeStudy(1.0), n_boot=500)
    assert [r["verdict"] for r in ok] == ["within", "within"]
    assert ok[0]["structure"] == "Bladder" and ok[1]["structure"] == "PTV"
    assert ok[0]["bound"] == pytest.approx(1.5 * 1.63) and ok[0]["ratio"] == pytest.approx(ok[0]["estimate"] / 1.63)
    bad = ex.reproduction(_FakeStudy(4.0), n_boot=500)
    assert [r["verdict"] for r in bad] == ["beyond", "beyond"]
    assert "beyond" in ex.format_reproduction(bad)


def test_output_normalisation_removes_the_ptv_offset_at_the_quick_budget():
    """The fix of the PTV mean-dose offset: trained at the quick budget, the bias on the training set is <= 0.5 % Rx.

    Without the normalisation the offset of this network is free: the same run unnormalised (seed 1) left
    +1.8 % Rx on the training patients, and neither test-time dropout nor recomputed batch-norm statistics
    removed it.
    """
    torch.set_num_threads(1)
    cfg = ex.default_config("quick")
    data = ex.load_data(cfg, progress=False)
    with seeded(1):
        model = ex.build_model(cfg, "conditional")
    result = fit(model, cfg.loss(), data.train.pairs(cfg.samples_per_epoch), val=data.val.pairs(seed=2),
                 epochs=cfg.epochs, batch_size=cfg.batch_size, val_batch_size=16, seed=1, lr=cfg.lr,
                 scheduler=inverse_time_lr(cfg.decay), scheduler_interval="step", input_keys=("input", "dvh"),
                 progress=False)
    res = ex.evaluate_pairs(result.model.eval().cpu(), data.train, cfg.eval_samples, seed=cfg.eval_seed)
    assert abs(float(res["mean"][:, 0].mean())) <= 0.5
