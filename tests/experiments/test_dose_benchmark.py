"""Tests of the closing benchmark (rtlearn.experiments.dose_benchmark) and the arms it adds to dvh_loss."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch

from rtlearn.experiments import dose_benchmark as bm
from rtlearn.experiments import dvh_loss as ex
from rtlearn.losses.dvh import dvh_loss
from rtlearn.losses.sharp import sharp_loss
from rtlearn.metrics.openkbp import dose_error
from rtlearn.metrics.stats import judge
from rtlearn.study import from_runs

SMALL = dict(n_train=4, n_val=2, n_test=3, shape=(32, 32), spacing=(8.0, 8.0), epochs=2, early_stopping=1, depth=2,
             width=4, batch_size=2)


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    arms = bm.ARMS + (ex.sweep_arm(ex.DVH_SWEEP[0]),)
    cfg = bm.default_config("quick", **SMALL, arms=arms, root=str(tmp_path_factory.mktemp("bench")))
    data = ex.load_data(cfg, progress=False)
    rec = {s: ex.run(cfg, seed=s, data=data, progress=False) for s in (0, 1)}
    return cfg, rec, from_runs("dvh_loss", "quick", cfg, rec)


def test_quick_config_holds_every_benchmark_arm_and_the_study_every_arm():
    assert bm.default_config("quick").arms == bm.ARMS
    assert set(bm.ARMS) <= set(bm.default_config("study").arms) == set(ex.STUDY_ARMS)
    assert bm.default_config("quick", arms=("MSE", "MAE")).arms == ("MSE", "MAE")
    assert bm.STUDY_CHAPTER == "dvh_loss"


def test_claims_name_benchmark_arms_and_both_scores():
    assert len(bm.CLAIMS) == 8
    for c in bm.CLAIMS:
        assert c.a in bm.ARMS and c.b in bm.ARMS and c.metric in ("dose_error", "dvh_error")
    assert {c.metric for c in bm.CLAIMS[::2]} == {"dose_error"}


def test_sharp_plus_dvh_is_the_sharp_loss_in_gy2_plus_the_weighted_dvh_loss():
    g = torch.Generator().manual_seed(0)
    target = 70 * torch.rand(2, 1, 12, 12, generator=g, dtype=torch.float64)
    pred = target + 3 * torch.randn(2, 1, 12, 12, generator=g, dtype=torch.float64)
    mask = torch.rand(2, 1, 12, 12, generator=g) > 0.2
    st = torch.rand(2, 3, 12, 12, generator=g) > 0.5
    loss = ex.SharpPlusDVHLoss(gamma=100.0, norm=70.0, weight=80.0, bins=16, dose_range=(0.0, 80.0))
    ref = 70.0 ** 2 * sharp_loss(pred / 70, target / 70, 100.0, mask=mask) + \
        80.0 * dvh_loss(pred, target, st, bins=16, dose_range=(0.0, 80.0))
    assert float(loss(pred, target, mask, st)) == pytest.approx(float(ref), rel=1e-12)
    # weight 0: the sharp loss alone, structures not needed; weight > 0 without structures: a clear error
    alone = ex.SharpPlusDVHLoss(weight=0.0)
    assert float(alone(pred, target, mask)) == pytest.approx(70.0 ** 2 * float(sharp_loss(pred, target, mask=mask,
                                                                                         norm=70.0)))
    with pytest.raises(ValueError, match="structures"):
        loss(pred, target, mask)
    # under bfloat16 autocast (a bf16 network output) the value matches float32 to bf16 input rounding
    conv = torch.nn.Conv2d(1, 1, 1)
    with torch.no_grad():
        conv.weight.fill_(1.0)
        conv.bias.zero_()
    x = pred.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = conv(x)
        half = loss(out, target.float(), mask, st)
    full = loss(out.float(), target.float(), mask, st)
    assert out.dtype == torch.bfloat16 and half.dtype == torch.float32
    assert float(half.detach()) == pytest.approx(float(full.detach()), rel=1e-5)


def test_arm_names_and_registry():
    assert ex.sharp_arm(100.0) == "SL γ=100" and ex.sharp_arm(50.0, True) == "SL γ=50+DVH"
    assert ex.sweep_arm(20.0) == "MAE+DVH w=20"
    for name in ex.STUDY_ARMS:
        assert name in ex.ARMS
    assert ex.ARMS[ex.sweep_arm(20.0)].loss(ex.default_config("quick")).weight == 20.0
    assert ex.ARMS["MAE+DVH"].loss(ex.default_config("quick", dvh_weight=5.0)).weight == 5.0
    with pytest.raises(ValueError, match="arms"):
        ex.default_config("quick", arms=("MSE", "SL γ=7"))


def test_best_gamma_is_what_the_recorded_openkbp_sharp_study_selects():
    from rtlearn.experiments import sharp
    from rtlearn.study import load_study

    try:
        study = load_study("sharp_openkbp", "study")
    except FileNotFoundError:
        pytest.skip("no recorded sharp_openkbp study")
    assert sharp.select_best(study) == ex.sharp_arm(ex.SHARP_BEST_GAMMA)


def test_prescription_dose_and_baseline():
    rois = {"PTV70": np.zeros((4, 4), bool), "PTV56": np.zeros((4, 4), bool), "Brainstem": np.ones((4, 4), bool)}
    rois["PTV70"][0, :2] = True
    rois["PTV56"][0, 1:3] = True
    d = ex.prescription_dose(rois, (4, 4))
    assert d[0].tolist() == [70.0, 70.0, 56.0, 0.0] and d[1:].sum() == 0
    with pytest.raises(ValueError, match="shape"):
        ex.prescription_dose(rois, (4, 5))


def test_baseline_is_recorded_and_scored(live):
    cfg, rec, study = live
    base = rec[0]["extras"]["baseline"]
    assert base == rec[1]["extras"]["baseline"]          # no seed in it
    b = ex.baseline_scores(study)
    assert b["n"] == 3 and b["dose_score"] == pytest.approx(np.mean(base["dose_error"]))
    table = str(ex.table1(study))
    assert "prescription in each PTV" in table


def test_sweep_and_dose_error_parts(live):
    _, _, study = live
    w = ex.sweep_weights(study)
    assert w == {ex.DVH_SWEEP[0]: ex.sweep_arm(ex.DVH_SWEEP[0]), 80.0: "MAE+DVH"}
    assert ex.chosen_weight(study) in w and "lowest on validation" in str(ex.sweep_table(study))
    with pytest.raises(ValueError, match="score"):
        ex.chosen_weight(study, "dice")
    parts = ex.dose_error_parts(study, "MAE", "MAE+DVH", n_boot=200)
    # the two parts add up to the whole, patient by patient, so their means do too
    assert parts["whole"]["a_mean"] == pytest.approx(parts["in ROIs"]["a_mean"] + parts["elsewhere"]["a_mean"])
    assert parts["whole"]["b_mean"] == pytest.approx(parts["in ROIs"]["b_mean"] + parts["elsewhere"]["b_mean"])
    assert "elsewhere" in str(ex.dose_error_parts_table(study))
    with pytest.raises(ValueError, match="no arm"):
        ex.dose_error_parts(study, "MAE", "Dice")


def test_benchmark_rows_agree_with_the_per_patient_metrics(live):
    _, rec, study = live
    training = {"rows": [{"arm": "MSE", "time_s": 0.05, "peak_mb": 10.0}]}
    rows = bm.benchmark_rows(study, training)
    assert [r["arm"] for r in rows] == list(bm.ARMS)           # the sweep arm is not a benchmark row
    mse = rows[0]
    per_seed = [np.mean(rec[s]["metrics"]["MSE"]["dose_error"]) for s in (0, 1)]
    assert mse["dose_score"] == pytest.approx(np.mean(per_seed))
    assert mse["step_ms"] == pytest.approx(50.0) and mse["peak_mb"] == 10.0 and np.isnan(rows[1]["step_ms"])
    assert mse["epochs"] == pytest.approx(np.mean([len(rec[s]["history"]["MSE"]) for s in (0, 1)]))
    # the kept test prediction reproduces the recorded dose error of its patient
    s = rec[0]["live"]["samples"]["MSE"]
    assert rec[0]["metrics"]["MSE"]["dose_error"][0] == pytest.approx(
        dose_error(s["prediction"], s["reference"], s["possible_dose_mask"]))
    text = str(bm.tables(study, training))
    assert "Every loss on one benchmark" in text and "LSL AnHui" in text
    rows_j = judge(bm.view(study), bm.CLAIMS)
    assert len(rows_j) == 8 and all(r["verdict"] in ("supported", "contradicted", "unresolved") for r in rows_j)


def test_view_needs_two_benchmark_arms(live):
    _, _, study = live
    with pytest.raises(ValueError, match="fewer than two"):
        bm.view(study.select(["MSE", ex.sweep_arm(ex.DVH_SWEEP[0])]))


def test_plot_scores(live):
    import matplotlib.pyplot as plt

    _, _, study = live
    ax = bm.plot_scores(study)
    assert len(ax.lines) + len(ax.containers) >= len(bm.ARMS)
    assert "Gy" in ax.get_xlabel() and "Gy" in ax.get_ylabel()
    plt.close("all")
