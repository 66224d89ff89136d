"""Experiment driver of the region-specific losses chapter: config, data, arms, run record, claims, tables."""
import numpy as np
import pytest
import torch

from rtlearn import metrics as M
from rtlearn.experiments import region as R
from rtlearn.losses import overlap as D
from rtlearn.losses import region as RS

TINY_DATA = dict(shape=(32, 32), spacing=8.0, cache=False)


@pytest.fixture(scope="module")
def tiny_data():
    return R.phantom_data(4, 2, 3, **TINY_DATA)


def test_labels_from_masks_priority_and_errors():
    m = np.zeros((3, 4, 4), bool)
    m[0, :2, :2] = True
    m[1, 1:3, 1:3] = True  # overlaps organ 0 at (1, 1)
    m[2, 3, 3] = True
    lab = R.labels_from_masks(m)
    assert lab.dtype == np.uint8
    assert lab[1, 1] == 1 and lab[2, 2] == 2 and lab[3, 3] == 3 and lab[0, 3] == 0
    assert (lab == 2).sum() == 3
    with pytest.raises(ValueError, match="boolean"):
        R.labels_from_masks(np.full((1, 2, 2), 2))
    with pytest.raises(ValueError, match="organ names"):
        R.labels_from_masks(m, organs=("a", "b"))
    with pytest.raises(ValueError, match="stack"):
        R.labels_from_masks(np.zeros(3, bool))


def test_window_ct():
    out = R.window_ct(np.array([-1000.0, -200.0, 500.0, 1200.0, 3000.0]))
    np.testing.assert_allclose(out, [-1, -1, 0, 1, 1], atol=1e-6)
    with pytest.raises(ValueError, match="high > low"):
        R.window_ct(np.zeros(3), window=(400, -200))


def test_phantom_data_split_and_determinism(tiny_data):
    d = tiny_data
    assert d["organs"] == R.ORGANS_PHANTOM and d["dims"] == 2
    for k, n in (("train", 4), ("val", 2), ("test", 3)):
        assert d[k]["image"].shape == (n, 1, 32, 32) and d[k]["label"].shape == (n, 32, 32)
        assert d[k]["spacing"].shape == (n, 2)
        assert float(d[k]["image"].min()) >= -1 and float(d[k]["image"].max()) <= 1
        assert int(d[k]["label"].max()) <= len(R.ORGANS_PHANTOM)
    again = R.phantom_data(4, 2, 3, **TINY_DATA)
    assert torch.equal(again["test"]["label"], d["test"]["label"])
    assert torch.equal(again["train"]["image"], d["train"]["image"])
    # every organ of the phantom slice appears in the training labels
    assert set(np.unique(d["train"]["label"].numpy())) == set(range(len(R.ORGANS_PHANTOM) + 1))
    with pytest.raises(ValueError, match="n_val"):
        R.phantom_data(4, 0, 3, **TINY_DATA)


def test_phantom_data_noise(tiny_data):
    a = R.phantom_data(4, 2, 3, noise_hu=50.0, **TINY_DATA)
    b = R.phantom_data(4, 2, 3, noise_hu=50.0, **TINY_DATA)
    assert torch.equal(a["train"]["image"], b["train"]["image"])          # seeded
    assert torch.equal(a["train"]["label"], tiny_data["train"]["label"])  # labels untouched
    diff = (a["train"]["image"] - tiny_data["train"]["image"]) * 1400 / 2  # back to HU (window width 1400)
    inside = (tiny_data["train"]["image"] > -0.99) & (tiny_data["train"]["image"] < 0.99)
    assert 40 < float(diff[inside].std()) < 60
    with pytest.raises(ValueError, match="noise_hu"):
        R.phantom_data(4, 2, 3, noise_hu=-1.0, **TINY_DATA)


def _probs(shape=(2, 4, 16, 16), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g).softmax(1), torch.randint(0, shape[1], (shape[0],) + shape[2:], generator=g)


def test_arm_losses_are_the_papers_definitions():
    p, y = _probs()
    cfg = R.default_config("quick")
    base = D.dice_ce_loss(p, y)
    assert torch.allclose(R.arm_loss("Baseline", cfg)(p, y), base)
    assert torch.allclose(R.arm_loss("CE", cfg)(p, y), D.cross_entropy_loss(p, y))
    assert torch.allclose(R.arm_loss("Dice", cfg)(p, y), D.dice_loss(p, y))
    # DC = 1: the region term is the global Dice over the classes present
    rs1 = R.arm_loss("Baseline+RS", R.default_config("quick", grid=1))(p, y)
    assert torch.allclose(rs1, base + D.dice_loss(p, y, skip_absent=True), atol=1e-6)
    # a larger grid changes the loss; the weight scales the region term
    rs4 = R.arm_loss("Baseline+RS", R.default_config("quick", grid=4))(p, y)
    rs4w = R.arm_loss("Baseline+RS", R.default_config("quick", grid=4, region_weight=2.0))(p, y)
    assert torch.allclose(rs4w - base, 2 * (rs4 - base), atol=1e-6)
    assert not torch.allclose(rs4, rs1)
    ars = R.arm_loss("Baseline+ARS", R.default_config("quick", grid=4, A=0.2, B=0.6))(p, y)
    ref = base + RS.adaptive_region_specific_loss(p, y, 4, 0.2, 0.6, region_reduction="mean")
    assert torch.allclose(ars, ref, atol=1e-6)
    for name in R.ARMS:
        loss = R.arm_loss(name, R.default_config("quick", grid=4))
        assert isinstance(loss, torch.nn.Module), name
        v = loss(p, y)
        assert v.dim() == 0 and torch.isfinite(v), name
    with pytest.raises(ValueError, match="unknown arm"):
        R.arm_loss("hinge", cfg)


def test_hard_dice_matches_metrics_dice():
    p, y = _probs((3, 4, 12, 12), seed=3)
    lab = p.argmax(1)
    ref = [M.dice(lab[b] == c, y[b] == c) for b in range(3) for c in range(1, 4) if (y[b] == c).any()]
    assert R.hard_dice(p, y, 4) == pytest.approx(np.mean(ref), abs=1e-6)
    assert R.hard_dice(lab, y, 4) == pytest.approx(np.mean(ref), abs=1e-6)


def test_case_metrics_against_rtlearn_metrics():
    gt = np.zeros((2, 20, 20), np.uint8)
    gt[:, 3:9, 3:9] = 1
    gt[0, 12:17, 12:17] = 2  # organ 2 absent from case 1
    pred = np.zeros_like(gt)
    pred[:, 4:10, 3:9] = 1
    pred[0, 12:16, 12:17] = 2
    sp = (2.0, 1.5)
    out = R.case_metrics(pred, gt, ("a", "b"), sp)
    for i in range(2):
        assert out["dsc"][i, 0] == pytest.approx(M.dice(pred[i] == 1, gt[i] == 1))
        assert out["hd95"][i, 0] == pytest.approx(M.hausdorff95(pred[i] == 1, gt[i] == 1, sp))
        assert out["asd"][i, 0] == pytest.approx(M.average_surface_distance(pred[i] == 1, gt[i] == 1, sp))
    assert out["recall"][0, 1] == pytest.approx(0.8) and out["precision"][0, 1] == pytest.approx(1.0)
    assert np.isnan(out["dsc"][1, 1]) and not out["missed"].any()
    # an organ present but not predicted: DSC 0, surface distances NaN, flagged
    miss = R.case_metrics(np.zeros_like(gt), gt, ("a", "b"), sp)
    assert miss["dsc"][0, 0] == 0 and np.isnan(miss["hd95"][0, 0]) and miss["missed"][0, 0]
    np.testing.assert_allclose(R.organ_mean(out["dsc"]), [np.mean(out["dsc"][0]), out["dsc"][1, 0]])
    with pytest.raises(ValueError, match="same shape"):
        R.case_metrics(pred[:, :10], gt, ("a", "b"), sp)


def test_gradient_map_is_eq3_of_chen():
    # Eq. (3): dL/dp_i = -[2 g_i (S + eps) - 2 p_i (2 I + eps)] / (S + eps)^2, divided by the B*C pairs averaged
    p, y = _probs((1, 3, 8, 8), seed=5)
    g = torch.nn.functional.one_hot(y, 3).permute(0, 3, 1, 2).double()
    p = p.double()
    eps = 1e-7
    inter = (p * g).sum((2, 3), keepdim=True)
    S = (p * p).sum((2, 3), keepdim=True) + (g * g).sum((2, 3), keepdim=True)
    ref = -(2 * g * (S + eps) - 2 * p * (2 * inter + eps)) / (S + eps) ** 2 / 3
    got = R.gradient_map(lambda a, b: D.dice_loss(a, b), p, y)
    np.testing.assert_allclose(got, ref.numpy(), rtol=1e-9, atol=1e-12)


# --------------------------------------------------------------------------- the chapter shape
def test_default_config_profiles_and_errors():
    q = R.default_config("quick")
    assert (q.n_train, q.n_val, q.n_test, q.shape, q.spacing, q.noise_hu) == (48, 8, 24, (64, 64), 3.2, 0.0)
    assert q.organs == R.ORGANS_PHANTOM and len(q.organs) == 9 and q.window == (-200.0, 400.0)
    assert (q.epochs, q.width, q.depth, q.batch_size, q.lr, q.early_stopping) == (40, 8, 3, 4, 3e-3, None)
    assert q.arms == R.MAIN_ARMS and q.grid == 16 and (q.A, q.B) == (0.3, 0.4)
    s = R.default_config("study")
    assert s.arms == ("Baseline", "Baseline+RS", "Baseline+ARS", *R.SUM_ARMS)
    assert s.n_train > q.n_train and s.n_test >= 24 and s.epochs > q.epochs
    assert s.early_stopping is not None and 8 <= s.early_stopping <= 10 and s.early_epoch < s.epochs
    f = R.default_config("full")
    assert f.source == "openkbp" and f.dims == 3 and f.organs == R.ORGANS_OPENKBP and f.n_train is None
    fp = R.default_config("full", source="phantom")
    assert fp.dims == 3 and fp.n_train == 160 and fp.shape == (64, 128, 128)
    assert R.default_config("quick", epochs=3, early_epoch=2).epochs == 3
    with pytest.raises(ValueError, match="not a profile"):
        R.default_config("huge")
    with pytest.raises(ValueError, match="unknown Config field"):
        R.default_config("quick", epoch=3)
    with pytest.raises(ValueError, match="arms"):
        R.default_config("quick", arms=("Baseline", "hinge"))
    with pytest.raises(ValueError, match="early_epoch"):
        R.default_config("quick", epochs=5, early_epoch=6)
    with pytest.raises(ValueError, match="n_test"):
        R.default_config("quick", n_test=1)
    with pytest.raises(ValueError, match="lr"):
        R.default_config("quick", lr=0.0)


def test_default_config_reads_the_profile(monkeypatch):
    monkeypatch.setenv("RTLEARN_PROFILE", "study")
    assert R.default_config() == R.default_config("study")
    monkeypatch.delenv("RTLEARN_PROFILE")
    assert R.default_config() == R.default_config("quick")


def test_claims_name_existing_arms_and_metrics():
    study_arms = R.default_config("study").arms
    for c in R.CLAIMS:
        assert c.a in study_arms and c.b in study_arms and c.direction == "higher"
        assert c.metric in ("dsc", "dsc_early", "dsc_auc")
    assert R.CLAIMS[0].paper == pytest.approx(0.013) and R.CLAIMS[1].paper == pytest.approx(0.021)


@pytest.fixture(scope="module")
def tiny_cfg():
    return R.default_config("study", **R.TINY)


@pytest.fixture(scope="module")
def tiny_record(tiny_cfg):
    return R.run(tiny_cfg, 0, progress=False)


def test_run_record_is_valid_and_tabulates(tiny_cfg, tiny_record):
    from rtlearn.study import from_runs, validate_record

    rec = tiny_record
    validate_record(rec)
    assert set(rec["metrics"]) == set(tiny_cfg.arms) and len(rec["cases"]) == tiny_cfg.n_test
    names = {"dsc", "recall", "precision", "hd95", "asd", "missed", "dsc_early", "dsc_auc"} | {
        f"{m}_{o}" for o in tiny_cfg.organs for m in ("dsc", "hd95")}
    for arm in tiny_cfg.arms:
        assert set(rec["metrics"][arm]) == names
        assert len(rec["history"][arm]) == tiny_cfg.epochs and "val_dsc" in rec["history"][arm][0]
        assert rec["live"]["pred"][arm].shape == (tiny_cfg.n_test, 32, 32)
    live = from_runs("region", "study", tiny_cfg, {0: rec})
    md = R.tables(live)
    assert "Baseline+ARS" in md and "p (Holm)" in md and "paper PDDCA" in md
    assert md.count("\n| Baseline") >= 6
    with pytest.raises(ValueError, match="unknown table"):
        R.tables(live, "dvh")
    with pytest.raises(ValueError, match="not in the study"):
        R.tables(live, arms=["CE"])


def test_early_snapshot_is_the_weights_after_early_epoch(tiny_cfg):
    # the early snapshot of a 2-epoch run equals the final weights of a 1-epoch run without restoring the best
    data = R.load_data(tiny_cfg)
    cfg2 = R.default_config("study", **{**R.TINY, "arms": ("Baseline",)})
    rec = R.run(cfg2, 1, data=data, progress=False)
    one = R.run(R.default_config("study", **{**R.TINY, "arms": ("Baseline",), "epochs": 1}), 1, data=data,
                progress=False)
    np.testing.assert_array_equal(rec["live"]["pred_early"]["Baseline"], one["live"]["pred_early"]["Baseline"])
    np.testing.assert_array_equal(one["live"]["pred_early"]["Baseline"], one["live"]["pred"]["Baseline"])
    first = [{k: v for k, v in r["history"]["Baseline"][0].items() if k != "seconds"} for r in (rec, one)]
    assert first[0] == first[1]
    assert rec["metrics"]["Baseline"]["dsc_early"] == one["metrics"]["Baseline"]["dsc"]


def _without_times(history):
    return {arm: [{k: v for k, v in r.items() if k != "seconds"} for r in rs] for arm, rs in history.items()}


def test_run_is_deterministic(tiny_cfg, tiny_record):
    again = R.run(tiny_cfg, 0, progress=False)
    assert again["cases"] == tiny_record["cases"]
    np.testing.assert_equal(again["metrics"], tiny_record["metrics"])   # NaN == NaN here
    assert _without_times(again["history"]) == _without_times(tiny_record["history"])
    other = R.run(tiny_cfg, 1, progress=False)
    assert [r["train_loss"] for r in other["history"]["Baseline"]] != \
        [r["train_loss"] for r in tiny_record["history"]["Baseline"]]
    with pytest.raises(ValueError, match="seed"):
        R.run(tiny_cfg, -1)


def test_merge_records(tiny_record):
    keys = ("metrics", "history", "seconds")
    part = {k: {"Baseline": tiny_record[k]["Baseline"]} for k in keys}
    rest = {k: {a: v for a, v in tiny_record[k].items() if a != "Baseline"} for k in keys}
    merged = R.merge_records({"cases": tiny_record["cases"], **part}, {"cases": tiny_record["cases"], **rest})
    assert set(merged["metrics"]) == set(tiny_record["metrics"])
    with pytest.raises(ValueError, match="more than one"):
        R.merge_records(merged, merged)


def test_openkbp_data_on_real_patients(shared_data):
    from rtlearn.data import openkbp as ok
    from rtlearn.data.openkbp.format import to_zyx

    root = shared_data / "openkbp"
    if not all((root / s).is_dir() for s in ("train", "validation", "test")):
        pytest.skip("packed OpenKBP copy absent")
    d = R.openkbp_data(1, 1, 1, root=root, progress=False)
    assert d["organs"] == R.ORGANS_OPENKBP and d["dims"] == 3
    part = d["val"]
    assert part["image"].shape == (1, 1, 128, 128, 128) and part["spacing"].shape == (1, 3)
    src = ok.load_patient(part["patients"][0], "validation", root)
    lab = part["label"][0].numpy()
    np.testing.assert_allclose(part["image"][0, 0].numpy(), R.window_ct(to_zyx(src["ct"]) - 1024.0, (-200, 400)))
    assert all(p not in d["test"]["patients"] for p in d["skipped_no_ct"])
    for k, organ in enumerate(R.ORGANS_OPENKBP):
        if organ in src:  # a voxel labelled k+1 lies in organ k; the organ's voxels are labelled k+1 or an earlier organ
            m = to_zyx(src[organ])
            assert m[lab == k + 1].all()
            assert np.all((lab[m] >= 1) & (lab[m] <= k + 1))


# --------------------------------------------------------------------------- augmentation (Sec. 4.1)
def test_mirror_classes_swap_left_and_right_organs():
    assert R.mirror_classes(R.ORGANS_OPENKBP_2D) == [0, 1, 2, 4, 3, 5]          # parotids swap
    lab = R.mirror_classes(R.ORGANS_PHANTOM)
    names = ("background", *R.ORGANS_PHANTOM)
    assert [names[k] for k in lab] == ["background", "Brainstem", "OpticChiasm", "Mandible", "OpticNerve_R",
                                       "OpticNerve_L", "RightParotid", "LeftParotid", "Submandibular_R",
                                       "Submandibular_L"]
    assert R.mirror_classes(("Brainstem",)) == [0, 1]


def _ramp_case():
    img = torch.linspace(-1, 1, 32 * 48).reshape(1, 32, 48)
    lab = torch.zeros(32, 48, dtype=torch.long)
    lab[4:10, 3:9] = 3                      # "RightParotid" on the image's left
    lab[20:26, 30:40] = 5
    return img, lab


def test_augment_identity_flip_and_shift_by_hand():
    perm = R.mirror_classes(R.ORGANS_OPENKBP_2D)
    img, lab = _ramp_case()
    i0, l0 = R.augment(img, lab, False, 1.0, (0.0, 0.0), perm)
    torch.testing.assert_close(i0, img, atol=1e-5, rtol=0)
    assert torch.equal(l0, lab)
    i1, l1 = R.augment(img, lab, True, 1.0, (0.0, 0.0), perm)
    torch.testing.assert_close(i1, img.flip(-1), atol=1e-5, rtol=0)
    assert torch.equal(l1, torch.tensor(perm)[lab.flip(-1)])          # the right parotid becomes the left one
    assert set(l1.unique().tolist()) == {0, 4, 5}
    # a shift of 1/8 of the width moves everything by 6 pixels to the right; air (-1) and background come in
    i2, l2 = R.augment(img, lab, False, 1.0, (6 / 48, 0.0), perm)
    assert torch.equal(l2[:, 6:], lab[:, :-6]) and not l2[:, :6].any()
    torch.testing.assert_close(i2[0, :, 6:], img[0, :, :-6], atol=1e-5, rtol=0)
    torch.testing.assert_close(i2[0, :, :6], torch.full((32, 6), -1.0), atol=1e-5, rtol=0)
    # a zoom by 1.2 enlarges the organs about the image centre
    _, l3 = R.augment(img, lab, False, 1.2, (0.0, 0.0), perm)
    assert (l3 == 5).sum() > (lab == 5).sum()


def test_augmented_pairs_are_seeded_and_the_same_for_every_arm():
    img, lab = _ramp_case()
    part = {"image": img[None].repeat(3, 1, 1, 1), "label": lab[None].repeat(3, 1, 1).to(torch.uint8)}
    a, b, c = (R._Augmented(part, R.ORGANS_OPENKBP_2D, s) for s in (0, 0, 1))
    ia, ib, ic = ([d[i]["target"] for i in range(3) for _ in range(4)] for d in (a, b, c))
    assert all(torch.equal(x, y) for x, y in zip(ia, ib))
    assert not all(torch.equal(x, y) for x, y in zip(ia, ic))
    assert a[0]["input"].shape == (1, 32, 48) and a[0]["target"].dtype == torch.long


# --------------------------------------------------------------------------- the OpenKBP study's path
def test_sum_and_dc_arms_are_eq4_summed_and_fixed_grids():
    p, y = _probs()
    cfg = R.default_config("quick", grid=4)
    base = D.dice_ce_loss(p, y)
    for arm, fn in (("Baseline+RS (sum)", RS.region_specific_loss), ("Baseline+ARS (sum)", RS.adaptive_region_specific_loss)):
        ref = base + fn(p, y, 4, region_reduction="sum")
        assert torch.allclose(R.arm_loss(arm, cfg)(p, y), ref, atol=1e-6), arm
        mean = R.arm_loss(arm.replace(" (sum)", ""), cfg)(p, y) - base
        assert (R.arm_loss(arm, cfg)(p, y) - base) > 1.5 * mean        # the sum over the 16 blocks is larger
    for dc in (1, 2):                                                  # the arm's DC, whatever cfg.grid says
        got = R.arm_loss(f"Baseline+RS (DC {dc})", cfg)(p, y)
        assert torch.allclose(got, R.arm_loss("Baseline+RS", R.default_config("quick", grid=dc))(p, y), atol=1e-7)


def test_grouped_test_metrics_score_each_patient_volume():
    rng = np.random.default_rng(0)
    lab = rng.integers(0, 3, (7, 12, 12)).astype(np.uint8)
    pred = lab.copy()
    pred[5:] = 0                                                   # the second patient's last two slices missed
    test = {"label": torch.from_numpy(lab), "groups": [(0, 3), (3, 7)],
            "volume_spacing": np.array([[2.5, 3.9, 3.9], [3.0, 4.7, 4.7]])}
    got = R._test_metrics(pred, test, ("a", "b"))
    for i, (a, b) in enumerate(test["groups"]):
        one = R.case_metrics(pred[None, a:b], lab[None, a:b], ("a", "b"), test["volume_spacing"][i])
        for k in ("dsc", "hd95", "recall"):
            np.testing.assert_array_equal(got[k][i], one[k][0])
    assert got["dsc"].shape == (2, 2) and np.all(got["dsc"][0] == 1) and np.all(got["dsc"][1] < 1)


def test_openkbp_slices_on_real_patients(shared_data):
    from rtlearn.data import openkbp as ok
    from rtlearn.data.openkbp.format import to_zyx

    root = shared_data / "openkbp"
    if not all((root / s).is_dir() for s in ("train", "validation", "test")):
        pytest.skip("packed OpenKBP copy absent")
    d = R.openkbp_slices(2, 1, 2, root=root, crop=48, slice_step=3, z_margin=1, progress=False)
    assert d["organs"] == R.ORGANS_OPENKBP_2D and d["dims"] == 2
    tr, te = d["train"], d["test"]
    assert tr["image"].shape[1:] == (1, 48, 48) and tr["label"].dtype == torch.uint8
    assert len(tr["patients"]) == 2 and len(set(tr["cases"])) == 2 and tr["spacing"].shape == (len(tr["cases"]), 2)
    assert te["cases"] == te["patients"] and len(te["groups"]) == 2 and te["groups"][-1][1] == te["image"].shape[0]
    assert all(p not in tr["patients"] for p in d["skipped_incomplete"] + d["skipped_no_ct"])
    # a training patient has every organ contoured; its slices are every 3rd of the organs' span +- 1 slice,
    # cropped around the body; a test patient keeps every slice of that span
    for part, split, step in ((tr, "train", 3), (te, "test", 1)):
        pid = part["patients"][0]
        src = ok.load_patient(pid, split, root)
        masks = np.stack([to_zyx(src[o]) if o in src else np.zeros((128,) * 3, bool) for o in R.ORGANS_OPENKBP_2D])
        z = np.flatnonzero(masks.any((0, 2, 3)))
        zs = np.arange(max(z[0] - 1, 0), min(z[-1] + 2, 128), step)
        n = len(zs)
        lab = part["label"][:n].numpy()
        ct = R.window_ct(to_zyx(src["ct"]).astype(np.float32) - 1024.0, (-200, 400))[zs]
        # find the crop by matching the first slice's CT
        img = part["image"][:n, 0].numpy()
        hits = [(y, x) for y in range(0, 81) for x in range(0, 81) if np.array_equal(ct[:, y:y + 48, x:x + 48], img)]
        assert len(hits) >= 1
        y0, x0 = hits[0]
        np.testing.assert_array_equal(lab, R.labels_from_masks(masks[:, zs, y0:y0 + 48, x0:x0 + 48]))
        if split == "train":
            assert all(o in src for o in R.ORGANS_OPENKBP_2D)
    assert 0.8 < d["crop_kept"]["train"] <= 1.0                      # 48² here; the study keeps 99.5 % at 64²
    with pytest.raises(ValueError, match="crop"):
        R.openkbp_slices(1, 1, 1, root=root, crop=129, progress=False)


def test_region_openkbp_config_and_claims():
    from rtlearn.experiments import region_openkbp as RO

    s = RO.default_config("study")
    assert (s.source, s.dims, s.organs, s.crop, s.augment) == ("openkbp", 2, R.ORGANS_OPENKBP_2D, 64, True)
    assert s.arms[:3] == ("Baseline", "Baseline+RS", "Baseline+ARS") and set(R.DC_ARMS) <= set(s.arms)
    assert s.n_train is None and s.slice_step > 1 and s.early_stopping is not None
    assert RO.default_config("full").width > s.width
    with pytest.raises(ValueError, match="OpenKBP"):
        RO.default_config("study", source="phantom")
    for c in RO.CLAIMS + RO.DC_CLAIMS:
        assert c.a in s.arms and c.b in s.arms
    phantom = R.default_config("study").arms
    for c in R.SUM_CLAIMS:
        assert c.a in phantom and c.b in phantom and c.metric in ("dsc", "dsc_auc")


def _fake_region_study(arms, seeds=(0, 1), n=6, grid=16):
    from rtlearn.study import from_runs

    cfg = R.default_config("study", **{**R.TINY, "arms": tuple(arms), "grid": grid})
    runs = {}
    for s in seeds:
        rng = np.random.default_rng(s)
        metrics = {a: {k: list(rng.uniform(0.3, 0.9, n)) for k in
                       ["dsc", "recall", "precision", "hd95", "asd", "missed", "dsc_early", "dsc_auc",
                        *(f"{m}_{o}" for o in cfg.organs for m in ("dsc", "hd95"))]} for a in arms}
        history = {a: [{"epoch": e + 1, "val_dsc": float(rng.uniform(0, 1)), "val_loss": 1.0, "train_loss": 1.0}
                       for e in range(3 + s)] for a in arms}
        runs[s] = {"cases": list(range(n)), "metrics": metrics, "history": history,
                   "seconds": {a: 1.0 for a in arms}}
    return from_runs("region", "study", cfg, runs)


def test_dc_ablation_and_learning_curves_from_a_study():
    st = _fake_region_study(["Baseline", "Baseline+RS", *R.DC_ARMS], grid=16)
    dcs, arms, dsc = R.dc_ablation(st)
    assert dcs == [1, 2, 4, 8, 16] and arms[-1] == "Baseline+RS" and arms[0] == "Baseline+RS (DC 1)"
    np.testing.assert_allclose(dsc[0], st.metric("dsc", "Baseline+RS (DC 1)").mean(0))
    curves = R.learning_curves(st, "Baseline")
    assert curves.shape == (2, 4) and np.isnan(curves[0, 3]) and np.isfinite(curves[1]).all()
    assert curves[1, 0] == st.histories("Baseline")[1][0]["val_dsc"]
    with pytest.raises(ValueError, match="division"):
        R.dc_ablation(_fake_region_study(["Baseline"]))
    md = R.tables(st, "hd95", "metrics")
    assert "HD95 (mm) per organ" in md and "mean DSC over epochs 1-" in md


def test_figures_draw_contours_on_the_organs():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = R.phantom_data(2, 1, 2, shape=(32, 32), spacing=8.0, progress=False)
    fig = R.plot_case(data, 0)
    ax = fig.axes[0]
    lab = data["test"]["label"][0].numpy()
    xs = np.concatenate([seg[:, 0] for c in ax.collections for segs in getattr(c, "allsegs", []) for seg in segs])
    ys = np.concatenate([seg[:, 1] for c in ax.collections for segs in getattr(c, "allsegs", []) for seg in segs])
    rows, cols = np.nonzero(lab > 0)
    # the outlines lie inside the organs' bounding box in mm (y down, row 0 at the top): not mirrored
    assert ys.min() >= rows.min() * 8.0 - 1e-6 and ys.max() <= (rows.max() + 1) * 8.0 + 1e-6
    assert xs.min() >= cols.min() * 8.0 - 1e-6 and xs.max() <= (cols.max() + 1) * 8.0 + 1e-6
    assert ax.get_ylim()[0] > ax.get_ylim()[1]                       # y axis pointing down, like the image
    plt.close("all")
    st = _fake_region_study(["Baseline", "Baseline+RS"])
    R.plot_learning_curves(st)
    plt.close("all")
