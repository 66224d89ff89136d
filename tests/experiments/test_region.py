"""Experiment driver of the region-specific losses chapter: data, losses, metrics, training, tables."""
import numpy as np
import pytest
import torch

from rtlearn import metrics as M
from rtlearn.experiments import region as R
from rtlearn.losses import overlap as D
from rtlearn.tables import markdown_table

TINY = dict(shape=(32, 32), spacing=8.0, cache=False)


@pytest.fixture(scope="module")
def tiny_data():
    return R.phantom_data(4, 2, 3, **TINY)


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
    again = R.phantom_data(4, 2, 3, **TINY)
    assert torch.equal(again["test"]["label"], d["test"]["label"])
    assert torch.equal(again["train"]["image"], d["train"]["image"])
    # every organ of the phantom slice appears in the training labels
    assert set(np.unique(d["train"]["label"].numpy())) == set(range(len(R.ORGANS_PHANTOM) + 1))
    with pytest.raises(ValueError, match="n_val"):
        R.phantom_data(4, 0, 3, **TINY)


def test_phantom_data_noise(tiny_data):
    a = R.phantom_data(4, 2, 3, noise_hu=50.0, **TINY)
    b = R.phantom_data(4, 2, 3, noise_hu=50.0, **TINY)
    assert torch.equal(a["train"]["image"], b["train"]["image"])          # seeded
    assert torch.equal(a["train"]["label"], tiny_data["train"]["label"])  # labels untouched
    diff = (a["train"]["image"] - tiny_data["train"]["image"]) * 1400 / 2  # back to HU (window width 1400)
    inside = (tiny_data["train"]["image"] > -0.99) & (tiny_data["train"]["image"] < 0.99)
    assert 40 < float(diff[inside].std()) < 60
    with pytest.raises(ValueError, match="noise_hu"):
        R.phantom_data(4, 2, 3, noise_hu=-1.0, **TINY)


def _probs(shape=(2, 4, 16, 16), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g).softmax(1), torch.randint(0, shape[1], (shape[0],) + shape[2:], generator=g)


def test_make_loss_definitions():
    p, y = _probs()
    base = D.dice_ce_loss(p, y)
    assert torch.allclose(R.make_loss("baseline")(p, y), base)
    # DC = 1: the region term is the global Dice over the classes present
    rs1 = R.make_loss("baseline+rs", grid=1)(p, y)
    assert torch.allclose(rs1, base + D.dice_loss(p, y, skip_absent=True), atol=1e-6)
    # a larger grid changes the loss; the weight scales the region term
    rs4 = R.make_loss("baseline+rs", grid=4)(p, y)
    rs4w = R.make_loss("baseline+rs", grid=4, region_weight=2.0)(p, y)
    assert torch.allclose(rs4w - base, 2 * (rs4 - base), atol=1e-6)
    assert not torch.allclose(rs4, rs1)
    for name in R.LOSSES:
        v = R.make_loss(name, grid=4)(p, y)
        assert v.dim() == 0 and torch.isfinite(v), name
    with pytest.raises(ValueError, match="unknown loss"):
        R.make_loss("hinge")


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


def test_train_one_is_deterministic_and_tabulates(tiny_data):
    kw = dict(epochs=2, width=4, depth=2, batch_size=2, seed=3)
    a = R.train_one("baseline+ars", tiny_data, grid=4, **kw)
    b = R.train_one("baseline+ars", tiny_data, grid=4, **kw)
    assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]
    np.testing.assert_array_equal(a["pred"], b["pred"])
    assert len(a["history"]) == 2 and "val_dsc" in a["history"][0]
    assert a["metrics"]["dsc"].shape == (3, len(R.ORGANS_PHANTOM))
    c = R.train_one("ce", tiny_data, label="CE", **kw)
    rows = R.summary_rows([a, c])
    assert rows[1]["loss"] == "CE" and len(rows[0]["dsc"]) == 2
    md = markdown_table(["loss", "dsc"], rows, "{:.3f}", nan="n/a")
    assert md.count("\n") == 3 and "±" in md
    w = R.wilcoxon_rows([a, c], reference="CE")
    assert w[0]["loss"] == "baseline+ars" and 0 <= w[0]["p"] <= 1 and w[0]["n"] == 3
    with pytest.raises(ValueError, match="reference"):
        R.wilcoxon_rows([a, c], reference="Dice")
    with pytest.raises(TypeError, match="loss"):
        R.train_one(3, tiny_data, **kw)


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
