"""Tests of the MSE / MAE / MAE+DVH chapter module (rtlearn.experiments.dvh_loss)."""
from __future__ import annotations

import dataclasses
import json

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch

from rtlearn.experiments import dvh_loss as ex
from rtlearn.losses import MAEPlusDVHLoss, MaskedMAELoss, MaskedMSELoss
from rtlearn.metrics.openkbp import dose_error, dvh_errors
from rtlearn.metrics.stats import format_verdicts, judge
from rtlearn.study import from_runs, validate_record


#: Phantom slices small enough for seconds (the study profile itself reads OpenKBP).
SMALL = dict(n_train=4, n_val=2, n_test=3, shape=(32, 32), spacing=(8.0, 8.0), epochs=2, early_stopping=1, depth=2,
             width=4, batch_size=2)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    cfg = ex.default_config("quick", **SMALL, root=str(tmp_path_factory.mktemp("dvhloss")))
    data = ex.load_data(cfg, progress=False)
    return cfg, data, ex.run(cfg, seed=0, data=data, progress=False)


def _comparable(record):
    """The record without wall times and the in-memory part."""
    hist = {a: [{k: v for k, v in r.items() if k != "seconds"} for r in h] for a, h in record["history"].items()}
    return json.dumps({"cases": record["cases"], "metrics": record["metrics"], "history": hist,
                       "extras": record["extras"]})


# ---- configuration and bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kw", [dict(source="dicom"), dict(dims=4), dict(n_test=1), dict(epochs=0),
                                dict(arms=("L2",)), dict(arms=()), dict(arms=("MAE", "MAE")), dict(lr=0.0),
                                dict(dvh_weight=-1.0), dict(n_train=None), dict(steepness=0.0),
                                dict(early_stopping=0), dict(width=2.5), dict(batch_size=True)])
def test_config_rejects_bad_values(kw):
    with pytest.raises(ValueError):
        ex.Config(**kw)


def test_quick_profile_keeps_todays_sizes(monkeypatch):
    monkeypatch.setenv("RTLEARN_PROFILE", "quick")
    q = ex.default_config()
    assert q == ex.default_config("quick")
    assert (q.source, q.dims, q.n_train, q.n_val, q.n_test, q.shape, q.spacing) == \
        ("phantom", 2, 24, 6, 10, (64, 64), (4.0, 4.0))
    assert (q.epochs, q.early_stopping, q.depth, q.width, q.batch_size, q.lr, q.weight_decay, q.plateau_patience) == \
        (20, None, 3, 12, 4, 2e-3, 1e-4, 4)
    assert (q.dvh_weight, q.dvh_bins, q.steepness, q.dose_range, q.data_seed) == (80.0, 64, 1.0, (0.0, 80.0), 0)
    assert (q.n_seeds, q.bench_size) == (1, 64)
    assert q.arms == ex.ARM_NAMES == ("MSE", "MAE", "MAE+DVH")


def test_study_and_full_profiles():
    s = ex.default_config("study")
    q = ex.default_config("quick")
    # OpenKBP slices at 64² (all patients with a CT), every arm of the closing benchmark and the DVH-weight sweep
    assert s.source == "openkbp" and s.dims == 2 and s.downsample == 2 and s.n_train is None and s.n_test is None
    assert s.arms == ex.STUDY_ARMS and set(ex.ARM_NAMES) <= set(s.arms) and set(ex.BENCHMARK_ARMS) <= set(s.arms)
    assert [ex.sweep_arm(w) in s.arms for w in ex.DVH_SWEEP] == [True] * len(ex.DVH_SWEEP)
    assert s.early_stopping is not None and s.epochs >= 4 * s.early_stopping
    assert s.n_seeds >= 3 and s.width >= q.width and s.plateau_patience < s.early_stopping
    assert s.lr == 1e-3 and s.betas == (0.9, 0.99) == q.betas and s.weight_decay == 1e-4   # the paper's Adam
    assert s.inputs == ("rois", "ct", "possible_dose_mask")
    assert "min per seed" in ex.Config.__doc__
    f = ex.default_config("full")
    assert f.source == "openkbp" and f.dims == 3 and f.n_train is None and f.epochs == 200 and f.batch_size == 2
    assert f.lr == 1e-3 and f.width == 32 and f.bench_size == 128
    assert ex.default_config("quick", epochs=3).epochs == 3


def test_bad_profile_and_override_names_fail_clearly():
    with pytest.raises(ValueError, match="not a profile"):
        ex.default_config("huge")
    with pytest.raises(ValueError, match="unknown dvh_loss setting"):
        ex.default_config("quick", epoch=3)
    with pytest.raises(ValueError, match="unknown dvh_loss setting"):
        ex.default_config("quick", losses=("MSE",))


def test_claims_reference_arms_and_record_metrics(tiny):
    _, _, record = tiny
    assert len(ex.CLAIMS) == 6
    for c in ex.CLAIMS:
        assert c.a in ex.ARMS and c.b in ex.ARMS and c.direction == "lower"
        assert c.metric in record["metrics"][c.b]
    # the paper's differences come from its Table 1 (B - A of the test scores)
    c = next(c for c in ex.CLAIMS if (c.metric, c.a, c.b) == ("dose_error", "MAE", "MAE+DVH"))
    assert c.paper == pytest.approx(2.0 - 3.5)
    c = next(c for c in ex.CLAIMS if (c.metric, c.a, c.b) == ("dvh_error", "MSE", "MAE+DVH"))
    assert c.paper == pytest.approx(1.6 - 3.0)
    assert ex.paper_score("MAE", "validation", "dvh_score") == 2.4
    with pytest.raises(ValueError):
        ex.paper_score("MAE", "train", "dvh_score")


def test_no_leaderboard_row_is_attributed_to_the_paper(tiny):
    assert not hasattr(ex, "DEEPDOSENET_BLINDED")
    assert not any("DeepDoseNet" in team for _, team, _, _ in ex.LEADERBOARD)
    cfg, _, record = tiny
    text = ex.leaderboard_table(from_runs("dvh_loss", "study", cfg, {0: record}))
    for line in text.splitlines():
        if "DeepDoseNet" in line and "ours" not in line:
            assert "the paper's Table 1 (not a leaderboard entry)" in line
    assert "probab" not in text.lower()


# ---- losses by hand ------------------------------------------------------------------------------------------------
def _batch():
    target = torch.tensor([[[[0.0, 10.0], [20.0, 30.0]]]])
    pred = torch.tensor([[[[1.0, 13.0], [20.0, 100.0]]]])
    mask = torch.tensor([[[[True, True], [True, False]]]])
    st = torch.zeros(1, 10, 2, 2, dtype=torch.bool)
    st[0, 0, 0, :] = True
    return pred, {"target": target, "mask": mask, "structures": st}


def _arm_loss(name, cfg, pred, batch):
    arm = ex.ARMS[name]
    return arm.loss(cfg)(pred, *[batch[k] for k in arm.targets])


def test_arms_are_loss_objects_and_match_by_hand_values():
    cfg = ex.default_config("quick")
    assert isinstance(ex.ARMS["MSE"].loss(cfg), MaskedMSELoss)
    assert isinstance(ex.ARMS["MAE"].loss(cfg), MaskedMAELoss)
    hybrid = ex.ARMS["MAE+DVH"].loss(cfg)
    assert isinstance(hybrid, MAEPlusDVHLoss) and hybrid.weight == cfg.dvh_weight
    assert hybrid.dvh.kwargs["bins"] == cfg.dvh_bins and hybrid.dvh.kwargs["steepness"] == cfg.steepness
    pred, b = _batch()
    # mask keeps errors 1, 3, 0 (the 70 Gy error is outside the mask)
    assert float(_arm_loss("MSE", cfg, pred, b)) == pytest.approx((1 + 9 + 0) / 3)
    assert float(_arm_loss("MAE", cfg, pred, b)) == pytest.approx((1 + 3 + 0) / 3)
    assert float(_arm_loss("MAE+DVH", dataclasses.replace(cfg, dvh_weight=0.0), pred, b)) == pytest.approx(4 / 3)
    assert float(_arm_loss("MAE+DVH", cfg, pred, b)) > 4 / 3 + 1e-3
    # identical doses: every term vanishes, and the DVH term is differentiable
    same = b["target"].clone().requires_grad_()
    loss = _arm_loss("MAE+DVH", cfg, same, b)
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


# ---- one tiny seed ---------------------------------------------------------------------------------------------------
def test_run_returns_a_valid_record_with_every_arm_and_metric(tiny):
    cfg, data, record = tiny
    validate_record(record)
    assert list(record["metrics"]) == list(ex.ARM_NAMES) == list(record["history"]) == list(record["seconds"])
    assert record["cases"] == [f"phantom_{i}" for i in range(6, 9)]
    names = {"dose_error", "dvh_error", "dose_error_in_structures"} | \
        {ex.structure_metric(r, m) for r, m in ex.metric_names()}
    for arm in ex.ARM_NAMES:
        assert set(record["metrics"][arm]) == names
        assert all(len(v) == 3 for v in record["metrics"][arm].values())
        assert np.isfinite(record["metrics"][arm]["dose_error"]).all()
        assert 1 <= len(record["history"][arm]) <= cfg.epochs and "val_mae_gy" in record["history"][arm][0]
        assert record["seconds"][arm] > 0
        val = record["extras"]["validation"]
        assert len(val["dose_error"][arm]) == 2 and np.isfinite(val["dvh_score"][arm])
    # the per-patient errors agree with the challenge's metrics called directly on the kept prediction
    sample = record["live"]["samples"]["MAE"]
    assert sample["patient"] == record["cases"][0]
    assert record["metrics"]["MAE"]["dose_error"][0] == pytest.approx(
        dose_error(sample["prediction"], sample["reference"], sample["possible_dose_mask"]))
    errs = dvh_errors(sample["prediction"], sample["reference"], sample["rois"], (3.0, 8.0, 8.0))
    assert record["metrics"]["MAE"]["dvh_error"][0] == pytest.approx(np.mean(list(errs.values())))
    for (roi, metric), v in errs.items():
        assert record["metrics"]["MAE"][ex.structure_metric(roi, metric)][0] == pytest.approx(v)
    # the part of the dose error inside the ROIs, by brute force over voxels; never more than the whole
    pred, ref, pdm = sample["prediction"], sample["reference"], sample["possible_dose_mask"].astype(bool)
    brute = sum(abs(pred[idx] - ref[idx]) for idx in np.ndindex(ref.shape)
                if pdm[idx] and any(m[idx] for m in sample["rois"].values())) / pdm.sum()
    assert record["metrics"]["MAE"]["dose_error_in_structures"][0] == pytest.approx(brute)
    for arm in ex.ARM_NAMES:
        inside, whole = (np.array(record["metrics"][arm][k]) for k in ("dose_error_in_structures", "dose_error"))
        assert np.all(inside >= 0) and np.all(inside <= whole + 1e-12)
    base = record["extras"]["baseline"]
    assert set(base) == names and len(base["dose_error"]) == 3
    with pytest.raises(ValueError):
        ex.structure_metric("Brainstem", "D_99")


def test_run_is_deterministic_per_seed(tiny):
    cfg, data, record = tiny
    again = ex.run(cfg, seed=0, data=data, progress=False)
    assert _comparable(again) == _comparable(record)
    other = ex.run(dataclasses.replace(cfg, arms=("MAE",)), seed=1, data=data, progress=False)
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert strip(other["history"]["MAE"]) != strip(record["history"]["MAE"])
    assert other["cases"] == record["cases"]          # the split does not depend on the seed
    with pytest.raises(ValueError, match="seed"):
        ex.run(cfg, seed=-1, data=data, progress=False)


def test_tables_and_verdicts_from_a_live_run(tiny):
    cfg, _, record = tiny
    live = from_runs("dvh_loss", "study", cfg, {0: record})
    s = ex.scores(live, "MAE", "test")
    assert s["dose_score"][0] == pytest.approx(np.mean(record["metrics"]["MAE"]["dose_error"]))
    assert ex.scores(live, "MAE", "validation")["dvh_score"][0] == record["extras"]["validation"]["dvh_score"]["MAE"]
    t1 = ex.table1(live)
    assert "| MAE+DVH | test |" in t1 and "| 1.60 | 2.00 | 100 |" in t1
    rows = judge(live, ex.CLAIMS)
    assert len(rows) == 6 and all(r["verdict"] in ("supported", "contradicted", "unresolved") for r in rows)
    assert "Dose score" in ex.claims_table(live, rows) and "DVH score" in ex.claims_table(live, rows)
    assert format_verdicts(rows).count("\n") == 5
    st = ex.structure_table(live)
    assert "PTV70 | D_95" in st and "p MSE vs MAE (Holm)" in st
    whole = ex.tables(live, rows)
    assert t1 in whole and ex.leaderboard_table(live) in whole
    assert ex.best_arm(live) in ex.ARM_NAMES
    with pytest.raises(ValueError):
        ex.scores(live, "MAE", "train")


def test_plots(tiny):
    import matplotlib.pyplot as plt

    cfg, _, record = tiny
    live = from_runs("dvh_loss", "study", cfg, {0: record, 1: record})
    ex.plot_learning_curves(live)
    ex.plot_structure_errors(live)
    fig = ex.plot_sample(record, "MAE+DVH")
    assert len(fig.axes) >= 5
    ex.plot_sample(record)
    with pytest.raises(ValueError, match="live run"):
        ex.plot_sample({k: v for k, v in record.items() if k != "live"})
    plt.close("all")


# ---- the full-profile path on real data (2 training patients, skipped without the shared data) -----------------------
def test_openkbp_path_constructs(shared_data):
    root = shared_data / "openkbp"
    cfg = ex.default_config("full", n_train=2, n_val=2, n_test=2, inputs=("rois", "possible_dose_mask"),
                            downsample=4, epochs=1, depth=3, width=4, batch_size=1, num_workers=0, root=str(root),
                            device="cpu", arms=("MAE+DVH",))
    data = ex.load_data(cfg, progress=False)
    item = data.train[0]
    assert item["input"].shape == (11, 32, 32, 32) and item["structures"].shape == (10, 32, 32, 32)
    assert item["structures"].dtype == torch.bool and item["mask"].dtype == torch.bool
    record = ex.run(cfg, seed=0, data=data, progress=False)
    validate_record(record)
    assert len(record["cases"]) == 2 and np.isfinite(record["metrics"]["MAE+DVH"]["dose_error"]).all()
    assert record["live"]["samples"]["MAE+DVH"]["prediction"].shape == (128, 128, 128)
