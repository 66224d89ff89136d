"""The DOSELO chapter module (rtlearn.experiments.doselo) on tiny phantom brains."""
from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
import pytest
import torch

from rtlearn.experiments import doselo as X
from rtlearn.losses.cascade import CascadeLoss
from rtlearn.losses.dose_guided import (BCELoss, BCESoftDiceLoss, DoseGuidedLoss, StraightThroughDoseGuidedLoss,
                                        dose_segmentation_loss, freeze, straight_through)
from rtlearn.metrics.dosimetric import rmae
from rtlearn.metrics.stats import format_verdicts, judge
from rtlearn.models.cascade import CascadeUNet
from rtlearn.models.scaled import ScaledDose
from rtlearn.models.unet import UNet
from rtlearn.phantom.perturb import KINDS
from rtlearn.study import from_runs, parse_seeds, validate_record
from rtlearn.train import fit, seeded

torch.set_num_threads(1)
SHAPE, SP = (48, 48), 4.8


@pytest.fixture(scope="module")
def patients():
    return X.brain_cases(4, seed=5, shape=SHAPE, spacing=SP)


@pytest.fixture(scope="module")
def dose_data(patients):
    return X.dose_predictor_data(patients[:2], n_perturb=2, seed=0, max_iter=30)


@pytest.fixture(scope="module")
def tiny():
    cfg = X.default_config("study", **X.TINY)
    return cfg, X.load_data(cfg)


@pytest.fixture(scope="module")
def tiny_record(tiny):
    cfg, data = tiny
    return X.run(cfg, 0, data=data, progress=False)


def _predictor(seed=0):
    torch.manual_seed(seed)
    return freeze(ScaledDose(CascadeUNet(6, 1, depth=2, width=4), X.RX_GY))


def _train(loss, data, seed, epochs=2, frozen=()):
    """One segmenter trained as run() trains an arm (tiny sizes)."""
    with seeded(seed):
        model = UNet(4, 1, depth=2, width=4)
    return fit(model, loss, X.shuffled(X.ArrayDataset(**data), 2), epochs=epochs, seed=seed, targets=None,
               lr=2e-3, scheduler=None, frozen=list(frozen), restore_best=False, progress=False).model


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa)


# ------------------------------------------------------------------------------------------------ configuration
def test_default_config_profiles():
    q = X.default_config("quick")
    assert (q.n_dose_cases, q.n_perturb, q.n_seg_cases, q.n_folds, q.n_val, q.shape, q.spacing) == \
        (24, 3, 32, 1, 0, (64, 64), 3.6)
    assert (q.predictor_epochs, q.predictor_width, q.predictor_depth, q.predictor_batch, q.predictor_lr) == \
        (30, 8, 3, 16, 2e-3)
    assert (q.seg_updates, q.seg_width, q.seg_depth, q.seg_batch, q.seg_lr) == (600, 8, 3, 4, 2e-3)
    assert (q.lambdas, q.soft_lambda, q.pos_weight) == ((3.0,), 30.0, 2.0)
    assert X.arm_names(q) == ["BCE+SoftDice", "BCE pos_weight=2", "DOSELO-ST", "DOSELO Eq. 4 (soft)"]
    # 24 training cases in batches of 4: 6 updates per epoch, 100 epochs for 600 updates
    assert X.seg_epochs(q) == 100 and X.update_count(q) == 600
    s = X.default_config("study")
    assert s.soft_lambda == 3.0
    assert s.n_folds == 4 and s.n_val >= 1 and len(s.lambdas) >= 3                # the paper's CV, lambda chosen
    # at least 2,000 updates per model: 64 cases, 16 test and 8 validation per fold -> 40 in batches of 4
    assert s.seg_updates >= 2000 and X.seg_epochs(s) * 10 >= 2000
    assert s.n_seg_cases > q.n_seg_cases and s.n_dose_cases > q.n_dose_cases
    assert len(parse_seeds(X.STUDY_SEEDS)) >= 3
    assert X.arm_names(s) == X.arm_names(q)                                           # the same science
    f = X.default_config("full")
    assert (f.shape, f.n_dose_cases, f.n_perturb, f.n_seg_cases, f.n_folds) == ((128, 128), 200, 8, 50, 5)
    assert f.seg_updates == X.PAPER_UPDATES == 20_000 and (f.seg_width, f.seg_batch) == (32, 16)
    assert X.default_config("study", seg_updates=3).seg_updates == 3
    assert f"{s.n_seg_cases} segmentation patients" in X.describe(s) and "2000 updates" in X.describe(s)
    with pytest.raises(ValueError, match="not a profile"):
        X.default_config("huge")
    with pytest.raises(ValueError, match="unknown DOSELO config field"):
        X.default_config("quick", n_epochs=3)
    with pytest.raises(ValueError, match="validation cases"):
        X.default_config("quick", lambdas=(1.0, 3.0))           # a choice of lambda without a validation set
    with pytest.raises(ValueError, match="lambdas"):
        X.default_config("quick", lambdas=(-1.0,))
    with pytest.raises(ValueError, match="lambdas"):
        X.default_config("quick", lambdas=())
    with pytest.raises(ValueError, match="pos_weight"):
        X.default_config("quick", pos_weight=0.0)
    with pytest.raises(ValueError, match="seg_updates"):
        X.default_config("quick", seg_updates=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        q.seg_updates = 1


def test_default_config_reads_the_profile(monkeypatch):
    monkeypatch.setenv("RTLEARN_PROFILE", "study")
    assert X.default_config() == X.default_config("study")
    monkeypatch.delenv("RTLEARN_PROFILE")
    assert X.default_config() == X.default_config("quick")


def test_claims_reference_arms_and_metrics():
    for cfg in (X.default_config(p) for p in ("quick", "study", "full")):
        for c in X.CLAIMS:
            assert c.a in X.arm_names(cfg) and c.b in X.arm_names(cfg) and c.metric in X.METRICS
    assert [(c.metric, c.a, c.b, c.direction, c.margin) for c in X.CLAIMS] == [
        ("rmae", X.BASELINE, X.PAPER_ARM, "lower", 0.0), ("hd_mm", X.BASELINE, X.PAPER_ARM, "lower", 0.0),
        ("dice", X.BASELINE, X.PAPER_ARM, "higher", 0.02), ("far_fp", X.BASELINE, X.PAPER_ARM, "lower", 0.0),
        ("rmae", X.CODE_ARM, X.PAPER_ARM, "lower", 0.0)]
    assert X.CLAIMS[0].paper == pytest.approx(0.258 - 0.449) and X.CLAIMS[1].paper == pytest.approx(28.68 - 64.06)
    assert X.CLAIMS[2].paper == pytest.approx(0.697 - 0.713)


# ------------------------------------------------------------------------------------------- data and planning
def test_brain_cases_deterministic_and_distinct(patients):
    again = X.brain_cases(4, seed=5, shape=SHAPE, spacing=SP)
    for a, b in zip(patients, again):
        assert np.array_equal(a.masks["GTV"], b.masks["GTV"]) and np.array_equal(a.mr["T1c"], b.mr["T1c"])
    assert not np.array_equal(patients[0].masks["GTV"], patients[1].masks["GTV"])


def test_mimic_counts():
    plain = X.brain_cases(3, seed=5, shape=SHAPE, spacing=SP)
    two = X.brain_cases(3, seed=5, shape=SHAPE, spacing=SP, mimics=2)
    assert X.mimic_counts(plain).tolist() == [0, 0, 0]
    counts = X.mimic_counts(two)
    assert counts.max() <= 2 and counts.sum() >= 4          # a mimic finds no place only rarely
    # a hand count: connected regions of the mimic tissue
    from scipy import ndimage
    k = X.BRAIN_TISSUES.index("mimic")
    assert counts[0] == ndimage.label(two[0].labels == k, structure=np.ones((3, 3)))[1]


def test_plan_dose_reaches_prescription_and_empty_target(patients):
    p = patients[0]
    d = X.plan_dose(p, p.masks["GTV"], max_iter=30)
    ptv = X.ndimage.distance_transform_edt(~p.masks["GTV"], sampling=p.spacing) <= X.PTV_MARGIN_MM
    assert np.percentile(d[ptv & p.body], 5) == pytest.approx(X.RX_GY, rel=1e-3)   # D95 = Rx
    assert not np.any(X.plan_dose(p, np.zeros(p.shape, bool)))                      # nothing to treat
    with pytest.raises(ValueError, match="patient grid"):
        X.plan_dose(p, np.zeros((3, 3), bool))


def test_predictor_input_channels(patients):
    p = patients[0]
    x = X.predictor_input(p, p.masks["GTV"])
    assert x.shape == (6,) + SHAPE and x.dtype == np.float32
    assert np.array_equal(x[0] > 0, p.masks["GTV"])
    assert np.array_equal(x[1] > 0, p.masks["Brainstem"])
    assert np.allclose(x[5], p.ct_hu / 1000.0)


def test_dose_predictor_data_perturbations(patients, dose_data):
    d = dose_data
    assert d["input"].shape == (6, 6) + SHAPE and d["target"].shape == (6, 1) + SHAPE
    assert list(d["case"]) == [0, 0, 0, 1, 1, 1]
    # reference first, then the kinds cycle, starting one kind later for the next patient
    assert list(d["kind"]) == ["reference", KINDS[0], KINDS[1], "reference", KINDS[1], KINDS[2]]
    for x, c, k in zip(d["input"], d["case"], d["kind"]):
        t = x[0] > 0
        p = patients[c]
        assert t.any() and not (t & ~p.body).any()                 # never empty, inside the body
        assert np.array_equal(t, p.masks["GTV"]) == (k == "reference")
    # each perturbed target has its own re-optimised dose
    assert np.abs(d["target"][1] - d["target"][0]).max() > 1.0
    again = X.dose_predictor_data(patients[:2], n_perturb=2, seed=0, max_iter=30)
    assert np.array_equal(again["input"], d["input"]) and np.array_equal(again["target"], d["target"])
    other = X.dose_predictor_data(patients[:2], n_perturb=2, seed=1, max_iter=30)
    assert not np.array_equal(other["input"], d["input"])


def test_array_dataset_rejects_ragged():
    with pytest.raises(ValueError, match="same first dimension"):
        X.ArrayDataset(a=np.zeros((3, 2)), b=np.zeros((4, 2)))
    ds = X.ArrayDataset(a=np.zeros((3, 2)), kind=np.array(["x", "y", "z"]))
    assert len(ds) == 3 and set(ds[0]) == {"a"}


def test_cv_splits():
    folds = X.cv_splits(11, 5, seed=0)
    tests = np.concatenate([te for _, te in folds])
    assert sorted(tests) == list(range(11)) and len(folds) == 5
    for tr, te in folds:
        assert not set(tr) & set(te) and len(tr) + len(te) == 11 and len(te) in (2, 3)
    (tr, te), = X.cv_splits(32, 1, seed=0)
    assert len(te) == 8 and len(tr) == 24 and not set(tr) & set(te)
    assert [t.tolist() for t in X.cv_splits(32, 1, seed=0)[0]] == [tr.tolist(), te.tolist()]
    with pytest.raises(ValueError, match="n_folds"):
        X.cv_splits(3, 4)


# ----------------------------------------------------------------------------------------------- the predictor
def test_dose_predictor_learns_with_fit_and_accuracy(dose_data):
    cfg = X.default_config("study", **X.TINY)
    with seeded(0):
        model = X.dose_predictor(cfg)
    cosine = functools.partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=6)
    ds = X.ArrayDataset(**{k: dose_data[k] for k in ("input", "target", "mask")})
    res = fit(model, CascadeLoss(), X.shuffled(ds, 3), epochs=6, targets=("target", "mask"), lr=5e-3,
              scheduler=cosine, restore_best=False, progress=False)
    assert res.history["train_loss"][-1] < res.history["train_loss"][0]
    model = freeze(res.model)
    acc = X.predictor_accuracy(model, dose_data)
    per = acc["per_sample_gy"]
    # independent check of the reported MAE on sample 0
    with torch.no_grad():
        pred = model(torch.as_tensor(dose_data["input"][:1]), return_stages=False).numpy()[0, 0]
    m = dose_data["mask"][0, 0] > 0
    assert per[0] == pytest.approx(np.abs(pred - dose_data["target"][0, 0])[m].mean(), rel=1e-5)
    assert acc["mae_pct_rx"] == pytest.approx(100 * acc["mae_gy"] / 60.0)
    assert set(acc["by_kind"]) == set(dose_data["kind"])


def test_load_data_shares_a_frozen_predictor(tiny):
    cfg, data = tiny
    p = data["predictor"]
    assert not p.training and not any(q.requires_grad for q in p.parameters())
    assert len(data["predictor_history"]) == cfg.predictor_epochs
    assert data["ref_doses"].shape == (cfg.n_seg_cases,) + cfg.shape
    # the reference doses are the plans on the true GTVs
    p0 = data["seg_cases"][0]
    assert np.array_equal(data["ref_doses"][0], X.plan_dose(p0, p0.masks["GTV"], max_iter=cfg.plan_iter))
    assert data["predictor_accuracy"]["mae_gy"] > 0
    with pytest.raises(TypeError, match="Config"):
        X.load_data({"n_seg_cases": 3})


# ------------------------------------------------------------------------------------------------ the DOSELO loss
def test_doselo_loss_zero_for_truth_and_gradient_reaches_only_segmenter(patients):
    data = X.segmentation_data(patients[:2], predictor=_predictor())
    pred = _predictor()
    b = {k: torch.as_tensor(v) for k, v in data.items()}
    # identical masks -> zero dose term
    assert float(dose_segmentation_loss(b["target"], b["target"], pred, b["oars"], b["ct"], b["dose_mask"])) == 0.0
    seg = UNet(4, 1, depth=2, width=4)
    loss = DoseGuidedLoss(pred, lam=1.0)
    # the dose term alone (BCE removed) still moves the segmenter: the gradient goes through the predictor
    out = seg(b["input"])
    dsl = dose_segmentation_loss(torch.sigmoid(out), b["target"], pred, b["oars"], b["ct"], b["dose_mask"],
                                 true_dose=b["true_dose"])
    dsl.backward()
    grads = [p.grad for p in seg.parameters()]
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0
    assert all(p.grad is None for p in pred.parameters())
    # the precomputed true dose is what the loss would compute itself
    total = loss(seg(b["input"]), b)
    no_cache = DoseGuidedLoss(pred, lam=1.0)(seg(b["input"]), {k: v for k, v in b.items() if k != "true_dose"})
    assert float(total.detach()) == pytest.approx(float(no_cache.detach()), rel=1e-5)


def test_hard_variant_trains_exactly_like_bce(patients):
    data = X.segmentation_data(patients[:2], predictor=_predictor())
    pred = _predictor()
    a = _train(DoseGuidedLoss(pred, lam=1.0, hard=True, pos_weight=2.0), data, 3, frozen=[pred])
    b = _train(BCELoss(pos_weight=2.0), data, 3)
    c = _train(DoseGuidedLoss(pred, lam=1.0), data, 3, frozen=[pred])
    assert _same_weights(a, b)                  # no gradient from the hard dose term: the code arm is BCE alone
    assert not _same_weights(a, c)              # the soft one changes training


def test_straight_through_term_cannot_be_gamed_by_dimming(tiny):
    """With the study's trained predictor: the straight-through dose term gives the true mask a lower loss than
    a dimmed or an empty one, at every amplitude below the threshold."""
    cfg, data = tiny
    seg = X.segmentation_data(data["seg_cases"][:3], data["predictor"])
    b = {k: torch.as_tensor(v) for k, v in seg.items()}
    logit = lambda m: torch.logit(m.clamp(1e-4, 1 - 1e-4))           # noqa: E731
    st = X.dose_term(data["predictor"], 1.0)
    soft = X.dose_term(data["predictor"], 1.0, straight=False)
    for loss in (st, soft):
        loss(logit(b["target"]), b)
        assert loss.last_terms["dsl"] < 1e-6                          # the true mask: (almost) no dose term
    truth = st(logit(b["target"]), b).item()
    assert st.last_terms["dsl"] == 0.0            # thresholded, the true mask is the true mask: the same dose
    for a in (0.0, 0.1, 0.3, 0.45):
        dim = st(logit(b["target"] * a + (1 - b["target"]) * 1e-4), b).item()
        assert dim > truth and st.last_terms["dsl"] > 0.0
    # the dose term is in units of Rx^2: the same loss in Gy^2 is 60^2 times larger
    gy = DoseGuidedLoss(data["predictor"], 1.0, straight_through=True)
    gy(logit(b["target"] * 0.3), b)
    st(logit(b["target"] * 0.3), b)
    assert gy.last_terms["dsl"] == pytest.approx(st.last_terms["dsl"] * X.RX_GY ** 2, rel=1e-4)


def test_segmenter_training_deterministic_and_bad_input(patients):
    data = X.segmentation_data(patients[:2])
    a = _train(BCESoftDiceLoss(), data, 1, epochs=1)
    b = _train(BCESoftDiceLoss(), data, 1, epochs=1)
    assert _same_weights(a, b)
    masks = X.predict_masks(a, data)
    assert masks.shape == (2,) + SHAPE and masks.dtype == bool
    with pytest.raises(ValueError, match="lam"):
        DoseGuidedLoss(_predictor(), lam=-1.0)
    # a predictor whose input channels do not match S_T + 4 OARs + CT
    wrong = freeze(ScaledDose(CascadeUNet(3, 1, depth=2, width=4), X.RX_GY))
    with pytest.raises(ValueError, match="input channels"):
        X.segmentation_data(patients[:2], predictor=wrong)


def test_arms_are_loss_objects(patients):
    cfg = X.default_config("quick")
    pred = _predictor()
    arms = X.arms(cfg, pred)
    assert list(arms) == X.arm_names(cfg)
    assert all(isinstance(loss, torch.nn.Module) for loss in arms.values())
    assert isinstance(arms[X.BASELINE], BCESoftDiceLoss)
    assert isinstance(arms[X.CODE_ARM], BCELoss) and arms[X.CODE_ARM].pos_weight == 2.0
    st, soft = arms[X.PAPER_ARM], arms[X.SOFT_ARM]
    assert isinstance(st, StraightThroughDoseGuidedLoss) and st.straight_through and st.dice
    assert not soft.straight_through and not soft.hard and not soft.dice     # the paper's Eq. 4: BCE + lambda L_DSL
    assert st.lam == cfg.lambdas[0] and soft.lam == cfg.soft_lambda and st.dose_scale == soft.dose_scale == 60.0
    assert X.arms(cfg, pred, 7.0)[X.PAPER_ARM].lam == 7.0
    assert X._auxiliary(st, pred) == [pred] and X._auxiliary(arms[X.BASELINE], pred) == []
    # the dose arms differ from the baseline only by the dose term: at lambda 0 they are BCE + SoftDice
    data = X.segmentation_data(patients[:2], predictor=pred)
    b = {k: torch.as_tensor(v) for k, v in data.items()}
    z = torch.randn(2, 1, *SHAPE, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(X.dose_term(pred, 0.0)(z, b), BCESoftDiceLoss()(z, b))


def test_straight_through_mask_and_loss(patients):
    p = torch.tensor([[0.2, 0.5, 0.7]], requires_grad=True)
    st = straight_through(p)
    assert torch.equal(st.detach(), torch.tensor([[0.0, 1.0, 1.0]]))
    (st * torch.tensor([[1.0, 2.0, 3.0]])).sum().backward()
    assert torch.equal(p.grad, torch.tensor([[1.0, 2.0, 3.0]]))    # identity gradient
    data = X.segmentation_data(patients[:2], predictor=_predictor())
    pred = _predictor()
    st_model = _train(StraightThroughDoseGuidedLoss(pred, 1.0), data, 4, epochs=1, frozen=[pred])
    bce = _train(BCELoss(), data, 4, epochs=1)
    assert not _same_weights(st_model, bce)


# ------------------------------------------------------------------------------------------------- evaluation
def test_evaluate_perfect_and_blob(patients):
    pats = patients[:2]
    gts = np.stack([p.masks["GTV"] for p in pats])
    refs = [X.plan_dose(p, p.masks["GTV"], max_iter=30) for p in pats]
    res = X.evaluate_segmentations(pats, gts, refs, max_iter=30)
    for r in res:
        assert r["rmae"] == 0.0 and r["dice"] == 1.0 and r["hd_mm"] == 0.0 and r["hd95_mm"] == 0.0
        assert r["far_fp"] == 0 and not r["empty"]
    bad = gts.copy()
    bad[0] = False                                     # an empty prediction: no plan, NaN distances
    bad[1, 5:8, 20:23] |= pats[1].body[5:8, 20:23]     # a distant false positive
    res2 = X.evaluate_segmentations(pats, bad, refs, max_iter=30, keep_doses=True)
    assert res2[0]["empty"] and np.isnan(res2[0]["hd_mm"]) and res2[0]["dice"] == 0.0
    assert res2[0]["rmae"] == pytest.approx(rmae(np.zeros_like(refs[0]), refs[0], mask=pats[0].body, rx=60.0))
    assert res2[1]["far_fp"] > 0 and res2[1]["rmae"] > 0 and res2[1]["hd_mm"] > 30
    assert res2[1]["hd_mm"] >= res2[1]["hd95_mm"]
    with pytest.raises(ValueError, match="N x H x W"):
        X.evaluate_segmentations(pats, gts[:1], refs)


def test_blob_demo_distant_blob_costs_dice_little_but_moves_dose():
    demo = X.blob_demo(seed=3, max_iter=60)
    blob, shift = demo["blob"], demo["shift"]
    assert blob["dice"] > shift["dice"]                # the blob looks better geometrically ...
    assert blob["rmae"] > 2 * shift["rmae"]            # ... but moves the dose much more
    assert blob["hd_mm"] > 50


# ------------------------------------------------------------------------------------------------ run and tables
def _strip_times(record):
    """The record without wall times (which differ between identical runs) and without live objects."""
    ext = dict(record["extras"])
    ext["predictor"] = {k: v for k, v in ext["predictor"].items() if k != "seconds"}
    return {"cases": record["cases"], "metrics": record["metrics"],
            "history": {a: [{k: v for k, v in r.items() if k != "seconds"} for r in h]
                        for a, h in record["history"].items()}, "extras": ext}


def test_run_tiny_record(tiny, tiny_record):
    cfg, data = tiny
    rec = validate_record(tiny_record)
    assert list(rec["metrics"]) == X.arm_names(cfg)
    assert all(set(m) == set(X.METRICS) for m in rec["metrics"].values())
    assert rec["cases"] == sorted(int(i) for _, te in data["splits"] for i in te) == list(range(cfg.n_seg_cases))
    for c in X.CLAIMS:
        assert c.a in rec["metrics"] and c.b in rec["metrics"] and c.metric in rec["metrics"][c.a]
    for arm, hist in rec["history"].items():
        assert len(hist) == X.seg_epochs(cfg) * cfg.n_folds and {r["fold"] for r in hist} == {0, 1}
    ext = rec["extras"]
    assert ext["predictor"]["mae_gy"] == pytest.approx(data["predictor_accuracy"]["mae_gy"])
    assert set(ext["lambda"]) == {"0", "1"} and all(v in cfg.lambdas for v in ext["lambda"].values())
    for f, scores in ext["val_rmae"].items():                      # the chosen lambda has the lowest val RMAE
        assert set(scores) == {f"{lam:g}" for lam in cfg.lambdas}
        assert scores[f"{ext['lambda'][f]:g}"] == min(scores.values())
    assert ext["mimics"] == X.mimic_counts(data["seg_cases"]).tolist()
    live = rec["live"]
    assert live["masks"][X.BASELINE].shape == (len(rec["cases"]),) + cfg.shape
    # the recorded metrics are those of the live masks and probabilities
    i = rec["cases"][0]
    p = data["seg_cases"][i]
    m, q = live["masks"][X.BASELINE][0], live["probs"][X.BASELINE][0]
    assert np.array_equal(m, q >= 0.5)
    assert rec["metrics"][X.BASELINE]["dice"][0] == pytest.approx(X.dice(m, p.masks["GTV"]))
    assert rec["metrics"][X.BASELINE]["empty"][0] == float(not m.any())
    assert rec["metrics"][X.BASELINE]["p_gtv"][0] == pytest.approx(float(q[p.masks["GTV"]].mean()))
    with pytest.raises(ValueError, match="another config"):
        X.run(X.default_config("study", **{**X.TINY, "seg_updates": 3}), 0, data=data, progress=False)


def test_run_same_seed_same_record_other_seed_differs(tiny, tiny_record):
    cfg, data = tiny
    again = X.run(cfg, 0, data=data, progress=False)
    assert _strip_times(again) == _strip_times(tiny_record)
    other = X.run(cfg, 1, data=data, progress=False)
    assert other["cases"] == tiny_record["cases"]                    # the split does not depend on the seed
    assert _strip_times(other)["history"] != _strip_times(tiny_record)["history"]


def _synthetic_study(cfg, n_cases=8, seeds=(0, 1), empty_arm=X.SOFT_ARM):
    rng = np.random.default_rng(0)
    names = X.arm_names(cfg)
    records = {}
    for s in seeds:
        metrics = {}
        for k, a in enumerate(names):
            v = {m: (rng.random(n_cases) + 0.1 * k).tolist() for m in X.METRICS}
            v["empty"] = [0.0] * n_cases
            if a == empty_arm:
                v["hd_mm"] = [math.nan] * n_cases                  # empty predictions: undefined distances
            metrics[a] = v
        records[s] = {"cases": list(range(n_cases)), "metrics": metrics,
                      "history": {a: [{"epoch": 1, "train_loss": 1.0}] for a in names},
                      "seconds": dict.fromkeys(names, 1.0)}
    return from_runs("doselo", "quick", cfg, records)


def test_tables_and_verdicts():
    cfg = X.default_config("quick")
    study = _synthetic_study(cfg)
    md = X.tables(study)
    text = str(md)
    assert "| BCE+SoftDice |" in text and "| the paper: DOSELO λ=1 | 0.258 ± 0.201 | 28.7 ± 22.2 |" in text
    assert "RMAE: BCE+SoftDice → DOSELO-ST" in text and "HD (mm): BCE+SoftDice" in text
    assert "RMAE: BCE pos_weight=2 → DOSELO-ST" in text
    assert "-0.191" in text and "-35.380" in text and "-0.016" in text         # the paper's differences
    # mean ± sd over cases of the seed-averaged values
    v = np.mean([study.metric("rmae", X.BASELINE)], axis=1)[0]
    assert f"| BCE+SoftDice | {v.mean():.3f} ± {v.std(ddof=1):.3f} |" in text
    assert "| DOSELO Eq. 4 (soft) |" in text and text.count("–") >= 2
    assert "RMAE: BCE+SoftDice → DOSELO Eq. 4 (soft)" in text
    assert [r["b"] for r in X.judged(study, X.EQ4_CLAIMS)[0]] == [X.SOFT_ARM] * 2   # its HD is undefined
    rows = judge(study, X.CLAIMS)
    assert [r["metric"] for r in rows] == ["rmae", "hd_mm", "dice", "far_fp", "rmae"]
    assert all(r["verdict"] in ("supported", "contradicted", "unresolved") for r in rows)
    assert "BCE+SoftDice" in format_verdicts(rows)
    assert X.verdicts(study) == format_verdicts(rows)                          # every claim testable
    # the paper's arm predicted nothing: its HD is undefined, the HD claim cannot be tested
    empty = _synthetic_study(cfg, empty_arm=X.PAPER_ARM)
    assert len(X.judged(empty, X.EQ4_CLAIMS)[0]) == 3
    rows, notes = X.judged(empty)
    assert [r["metric"] for r in rows] == ["rmae", "dice", "far_fp", "rmae"] and len(notes) == 1
    assert "not testable" in notes[0]
    assert "not testable" in X.verdicts(empty) and "not testable" in str(X.tables(empty))
    only_baseline = {"cases": [0, 1], "metrics": {X.BASELINE: {"rmae": [0.1, 0.2]}},
                     "history": {X.BASELINE: []}, "seconds": {X.BASELINE: 1.0}}
    with pytest.raises(ValueError, match="no arm"):
        X.tables(from_runs("doselo", "quick", cfg, {0: only_baseline}))


def test_dice_claim_is_non_inferiority_with_margin():
    """Dice 0.01 lower in every case: within the 0.02 margin (supported); 0.05 lower: contradicted."""
    cfg = X.default_config("quick")
    rng = np.random.default_rng(1)
    base = rng.uniform(0.6, 0.9, 20)
    for drop, expected in ((0.01, "supported"), (0.05, "contradicted")):
        records = {}
        for s in (0, 1, 2):
            metrics = {a: {m: base.tolist() for m in X.METRICS} for a in X.arm_names(cfg)}
            metrics[X.PAPER_ARM] = {m: base.tolist() for m in X.METRICS}
            metrics[X.PAPER_ARM]["dice"] = (base - drop + rng.normal(0, 1e-3, 20)).tolist()
            records[s] = {"cases": list(range(20)), "metrics": metrics, "history": {a: [] for a in metrics},
                          "seconds": dict.fromkeys(metrics, 1.0)}
        study = from_runs("doselo", "quick", cfg, records)
        (row,) = judge(study, [X.CLAIMS[2]])
        assert row["verdict"] == expected and row["diff"] == pytest.approx(-drop, abs=2e-3)
        assert row["ci_lo"] < -drop < row["ci_hi"] + 2e-3 and row["margin"] == 0.02


def test_figures(tiny, tiny_record):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg, data = tiny
    study = from_runs("doselo", "study", cfg, {0: tiny_record})
    figs = X.figures(study, record=tiny_record, data=data)
    assert set(figs) == {"rmae", "worst_cases"}
    resp = X.amplitude_response(data, [0.0, 0.3, 1.0], cases=[0, 1])
    assert resp["gtv_dose"].shape == resp["soft"].shape == resp["straight"].shape == (3, 2)
    assert np.allclose(resp["soft"][-1], 0, atol=1e-8) and np.allclose(resp["straight"][-1], 0, atol=1e-8)
    assert np.allclose(resp["straight"][0], resp["straight"][1])      # 0 and 0.3 both threshold to empty
    assert np.allclose(resp["gtv_dose"][-1], resp["true_gtv_dose"], atol=1e-4)
    with pytest.raises(ValueError, match="amplitudes"):
        X.amplitude_response(data, [1.5])
    figs["exploit"] = X.exploit_figure(resp, study)
    assert len(figs["exploit"].axes) == 3
    figs["probability"] = X.probability_figure(study)
    assert len(figs["probability"].axes) == 1
    demo = {"patient": data["seg_cases"][0], "ref": data["ref_doses"][0]}
    for name in ("blob", "shift"):
        demo[name] = {"mask": data["seg_cases"][0].masks["GTV"], "dose": data["ref_doses"][0], "dice": 1.0,
                      "rmae": 0.0}
    for fig in (X.pipeline_figure(), X.perturbation_figure(data, case=1), X.predictor_figure(data, "reference"),
                X.blob_figure(demo), *figs.values()):
        assert fig.axes
        plt.close(fig)
    with pytest.raises(ValueError, match="live run"):
        X.worst_cases_figure({k: v for k, v in tiny_record.items() if k != "live"}, data)


def test_study_summary_matches_a_direct_computation():
    """study_summary on a small synthetic study with NaNs, far FPs, empty masks and recorded extras."""
    cfg = X.default_config("quick")
    rng = np.random.default_rng(7)
    names, n, seeds = X.arm_names(cfg), 6, (0, 1, 2)
    raw = {s: {a: {m: rng.random(n) + 0.2 * k for m in X.METRICS} for k, a in enumerate(names)} for s in seeds}
    for s in seeds:
        for a in names:
            raw[s][a]["far_fp"] = rng.integers(0, 3, n).astype(float) * (rng.random(n) < 0.5)
            raw[s][a]["empty"] = (rng.random(n) < 0.2).astype(float)
    raw[0][X.SOFT_ARM]["hd_mm"][:] = np.nan               # an empty prediction: no distance in seed 0
    raw[1][X.SOFT_ARM]["hd_mm"][2] = raw[2][X.SOFT_ARM]["hd_mm"][2] = np.nan   # case 2: no HD in any seed
    raw[1][X.SOFT_ARM]["p_gtv"][:3] = 0.1                # dimmed cases
    lams = {0: {"0": 1.0, "1": 3.0}, 1: {"0": 3.0, "1": 3.0}, 2: {"0": 1.0, "1": 3.0}}
    mimics = [0, 2, 1, 0, 0, 3, 1, 0]
    records = {s: {"cases": list(range(n)), "metrics": {a: {m: v.tolist() for m, v in raw[s][a].items()}
                                                       for a in names},
                   "history": {a: [] for a in names}, "seconds": dict.fromkeys(names, 1.0),
                   "extras": {"lambda": lams[s], "mimics": mimics}} for s in seeds}
    summary = X.study_summary(from_runs("doselo", "quick", cfg, records))
    assert summary["n_cases"] == n and summary["n_seeds"] == 3
    for a in names:
        stack = {m: np.stack([raw[s][a][m] for s in seeds]) for m in X.METRICS}
        for m in ("rmae", "hd_mm", "dice", "p_gtv"):
            per_case = [np.mean(c[np.isfinite(c)]) for c in stack[m].T if np.isfinite(c).any()]
            assert summary["arms"][a][m] == pytest.approx(np.mean(per_case), rel=1e-12)
        assert summary["arms"][a]["far_cases"] == pytest.approx(np.mean([(stack["far_fp"][i] > 0).sum()
                                                                         for i in range(3)]))
        assert summary["arms"][a]["empty"] == pytest.approx(stack["empty"].sum() / 3)
        assert summary["arms"][a]["dim_cases"] == int((stack["p_gtv"].mean(0) < 0.5).sum())
        assert summary["rmae_change"][a] == pytest.approx(summary["arms"][a]["rmae"]
                                                          / summary["arms"][X.BASELINE]["rmae"] - 1)
    soft_hd = np.stack([raw[s][X.SOFT_ARM]["hd_mm"] for s in seeds])
    assert summary["arms"][X.SOFT_ARM]["hd_mm"] == pytest.approx(np.mean(
        [np.mean(soft_hd[1:, i]) for i in range(n) if i != 2]))             # case 2 skipped, seed 0 ignored
    assert summary["arms"][X.SOFT_ARM]["dim_cases"] >= 1 and summary["rmae_change"][X.BASELINE] == 0
    assert summary["lambda"] == {"mode": 3.0, "mode_count": 4, "n": 6}
    assert summary["mimics"] == {"mean": pytest.approx(7 / 8), "patients": 4, "n": 8}
    study = from_runs("doselo", "quick", cfg, records)
    for key, claims in (("dose_term", X.CLAIMS), ("eq4", X.EQ4_CLAIMS)):
        assert [r["verdict"] for r in summary["claims"][key]] == [r["verdict"] for r in X.judged(study, claims)[0]]
    code = np.stack([raw[s][X.CODE_ARM]["rmae"] for s in seeds]).mean(0)
    base = np.stack([raw[s][X.BASELINE]["rmae"] for s in seeds]).mean(0)
    assert summary["softdice_vs_code"]["diff"] == pytest.approx(np.median(base - code))
    # without extras (a live run of one candidate lambda) the choices are None; a missing arm is an error
    bare = X.study_summary(_synthetic_study(cfg))
    assert bare["lambda"] is None and bare["mimics"] is None
    with pytest.raises(ValueError, match="no arm"):
        X.study_summary(from_runs("doselo", "quick", cfg, {0: {"cases": [0, 1], "metrics": {X.BASELINE: {
            "rmae": [0.1, 0.2]}}, "history": {X.BASELINE: []}, "seconds": {X.BASELINE: 1.0}}}))
