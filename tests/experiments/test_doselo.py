"""The DOSELO experiment driver (rtlearn.experiments.doselo) on tiny phantom brains."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from rtlearn.experiments import doselo as X
from rtlearn.losses.dose_guided import DoseGuidedLoss, dose_segmentation_loss, freeze, straight_through
from rtlearn.metrics.dosimetric import rmae
from rtlearn.models.cascade import CascadeUNet
from rtlearn.models.scaled import ScaledDose
from rtlearn.models.unet import UNet
from rtlearn.phantom.perturb import KINDS
from rtlearn.phantom.surrogate import BeamSurrogate

torch.set_num_threads(1)
SHAPE, SP = (48, 48), 4.8


@pytest.fixture(scope="module")
def patients():
    return X.brain_cases(4, seed=5, shape=SHAPE, spacing=SP)


@pytest.fixture(scope="module")
def dose_data(patients):
    return X.dose_predictor_data(patients[:2], n_perturb=2, seed=0, max_iter=30)


def _predictor(seed=0):
    torch.manual_seed(seed)
    return freeze(ScaledDose(CascadeUNet(6, 1, depth=2, width=4), X.RX_GY))


# ------------------------------------------------------------------------------------------- data and planning
def test_brain_cases_deterministic_and_distinct(patients):
    again = X.brain_cases(4, seed=5, shape=SHAPE, spacing=SP)
    for a, b in zip(patients, again):
        assert np.array_equal(a.masks["GTV"], b.masks["GTV"]) and np.array_equal(a.mr["T1c"], b.mr["T1c"])
    assert not np.array_equal(patients[0].masks["GTV"], patients[1].masks["GTV"])


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


# ----------------------------------------------------------------------------------------------- the predictor
def test_train_dose_predictor_learns_and_is_frozen(dose_data):
    model, hist = X.train_dose_predictor(dose_data, epochs=6, width=4, depth=2, lr=5e-3, batch_size=3)
    assert hist["train_loss"][-1] < hist["train_loss"][0]
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    acc = X.predictor_accuracy(model, dose_data)
    per = acc["per_sample_gy"]
    # independent check of the reported MAE on sample 0
    with torch.no_grad():
        pred = model(torch.as_tensor(dose_data["input"][:1]), return_stages=False).numpy()[0, 0]
    m = dose_data["mask"][0, 0] > 0
    assert per[0] == pytest.approx(np.abs(pred - dose_data["target"][0, 0])[m].mean(), rel=1e-5)
    assert acc["mae_pct_rx"] == pytest.approx(100 * acc["mae_gy"] / 60.0)
    assert set(acc["by_kind"]) == set(dose_data["kind"])


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
    kw = dict(epochs=2, width=4, depth=2, batch_size=2, seed=3)
    a, _ = X.train_segmenter(data, "doselo_hard", lam=1.0, predictor=_predictor(), **kw)
    b, _ = X.train_segmenter(data, "bce", **kw)
    c, _ = X.train_segmenter(data, "doselo", lam=1.0, predictor=_predictor(), **kw)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)              # no gradient from the hard dose term
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)          # the soft one changes training


def test_train_segmenter_deterministic_and_bad_input(patients):
    data = X.segmentation_data(patients[:2])
    kw = dict(epochs=1, width=4, depth=2, batch_size=2, seed=1)
    a, _ = X.train_segmenter(data, "bce_dice", **kw)
    b, _ = X.train_segmenter(data, "bce_dice", **kw)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    masks = X.predict_masks(a, data)
    assert masks.shape == (2,) + SHAPE and masks.dtype == bool
    with pytest.raises(ValueError, match="lam"):
        X.train_segmenter(data, "doselo", lam=-1.0, predictor=_predictor(), **kw)
    with pytest.raises(ValueError, match="loss must be one of"):
        X.train_segmenter(data, "dice", **kw)
    with pytest.raises(ValueError, match="needs the trained dose predictor"):
        X.train_segmenter(data, "doselo", **kw)
    with pytest.raises(ValueError, match="true_dose"):
        X.train_segmenter(data, "doselo", predictor=_predictor(), **kw)
    # a predictor whose input channels do not match S_T + 4 OARs + CT
    wrong = freeze(ScaledDose(CascadeUNet(3, 1, depth=2, width=4), X.RX_GY))
    with pytest.raises(ValueError, match="input channels"):
        X.segmentation_data(patients[:2], predictor=wrong)


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


def test_summarise_wilcoxon():
    from scipy.stats import wilcoxon

    rng = np.random.default_rng(0)
    base = [{"rmae": v, "dice": 0.5} for v in rng.uniform(0.2, 0.6, 8)]
    new = [{"rmae": r["rmae"] * 0.5, "dice": 0.5} for r in base]
    rows = X.summarise({"bce_dice": base, "doselo": new}, metrics=("rmae", "dice"))
    row = next(r for r in rows if r["model"] == "doselo" and r["metric"] == "rmae")
    assert row["p"] == pytest.approx(wilcoxon([r["rmae"] for r in new], [r["rmae"] for r in base]).pvalue)
    assert row["mean"] == pytest.approx(np.mean([r["rmae"] for r in new]))
    assert next(r for r in rows if r["model"] == "doselo" and r["metric"] == "dice")["p"] == 1.0
    with pytest.raises(ValueError, match="baseline"):
        X.summarise({"doselo": new})


def test_blob_demo_distant_blob_costs_dice_little_but_moves_dose():
    demo = X.blob_demo(seed=3, max_iter=60)
    blob, shift = demo["blob"], demo["shift"]
    assert blob["dice"] > shift["dice"]                # the blob looks better geometrically ...
    assert blob["rmae"] > 2 * shift["rmae"]            # ... but moves the dose much more
    assert blob["hd_mm"] > 50


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


def test_warmup_trains_bce_first(patients):
    data = X.segmentation_data(patients[:2], predictor=_predictor())
    kw = dict(epochs=2, width=4, depth=2, batch_size=2, seed=2)
    bce, _ = X.train_segmenter(data, "bce", **kw)
    all_warm, _ = X.train_segmenter(data, "doselo", lam=1.0, predictor=_predictor(), warmup_epochs=2, **kw)
    half, _ = X.train_segmenter(data, "doselo", lam=1.0, predictor=_predictor(), warmup_epochs=1, **kw)
    sb, sw, sh = bce.state_dict(), all_warm.state_dict(), half.state_dict()
    assert all(torch.equal(sb[k], sw[k]) for k in sb)               # lambda = 0 throughout: BCE exactly
    assert not all(torch.equal(sb[k], sh[k]) for k in sb)           # the dose term switched on after epoch 1
    sur = BeamSurrogate(patients[:2], n_beams=5, beamlet_mm=9.6)
    eng, _ = X.train_segmenter(data, "engine", lam=1e-3, surrogate=sur, warmup_epochs=2, **kw)
    assert all(torch.equal(sb[k], eng.state_dict()[k]) for k in sb)
    with pytest.raises(ValueError, match="warmup_epochs"):
        X.train_segmenter(data, "bce", warmup_epochs=-1, **kw)


def test_straight_through_mask_and_loss(patients):
    p = torch.tensor([[0.2, 0.5, 0.7]], requires_grad=True)
    st = straight_through(p)
    assert torch.equal(st.detach(), torch.tensor([[0.0, 1.0, 1.0]]))
    (st * torch.tensor([[1.0, 2.0, 3.0]])).sum().backward()
    assert torch.equal(p.grad, torch.tensor([[1.0, 2.0, 3.0]]))    # identity gradient
    data = X.segmentation_data(patients[:2], predictor=_predictor())
    kw = dict(epochs=1, width=4, depth=2, batch_size=2, seed=4)
    st_model, _ = X.train_segmenter(data, "doselo_st", lam=1.0, predictor=_predictor(), **kw)
    bce, _ = X.train_segmenter(data, "bce", **kw)
    assert not all(torch.equal(v, bce.state_dict()[k]) for k, v in st_model.state_dict().items())
