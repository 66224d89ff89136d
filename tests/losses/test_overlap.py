"""Tests of the segmentation losses (rtlearn.losses.overlap / .region; Chen et al. 2023)."""
import itertools

import pytest
import torch
from monai.losses import DiceLoss as MonaiDice
from monai.losses import GeneralizedDiceLoss as MonaiGDL
from monai.losses import TverskyLoss as MonaiTversky

from rtlearn.losses import (
    AdaptiveRegionSpecificLoss,
    DiceCELoss,
    DiceLoss,
    RegionSpecificLoss,
    TverskyLoss,
    adaptive_region_specific_loss,
    adaptive_tversky_weights,
    cross_entropy_loss,
    dice_ce_loss,
    dice_loss,
    focal_tversky_loss,
    generalized_dice_loss,
    region_specific_loss,
    sensitivity_specificity_loss,
    tversky_loss,
)

EPS = 1e-7


def _case(seed, B=2, C=4, spatial=(9, 10, 11), sharp=1.0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, C, (B,) + spatial, generator=g)
    onehot = torch.nn.functional.one_hot(labels, C).movedim(-1, 1).double()
    logits = sharp * torch.randn((B, C) + spatial, generator=g, dtype=torch.float64) + 2.0 * onehot
    return logits, logits.softmax(1), labels, onehot


# --------------------------------------------------------------------------- MONAI cross-checks
@pytest.mark.parametrize("spatial", [(12, 13), (6, 7, 8)])
@pytest.mark.parametrize("include_background", [True, False])
def test_dice_and_tversky_equal_monai(spatial, include_background):
    logits, p, labels, onehot = _case(0, spatial=spatial)
    monai_dice = MonaiDice(squared_pred=True, smooth_nr=EPS, smooth_dr=EPS, include_background=include_background)
    ours = dice_loss(p, labels, include_background=include_background)
    assert ours.item() == pytest.approx(monai_dice(p, onehot).item(), abs=1e-6)
    # logits + softmax inside, and one-hot target
    assert dice_loss(logits, onehot, softmax=True, include_background=include_background).item() == pytest.approx(
        ours.item(), abs=1e-12)
    for a, b in [(0.3, 0.7), (0.7, 0.3), (0.5, 0.5)]:
        monai_tv = MonaiTversky(alpha=a, beta=b, smooth_nr=EPS, smooth_dr=EPS, include_background=include_background)
        assert tversky_loss(p, labels, a, b, include_background=include_background).item() == pytest.approx(
            monai_tv(p, onehot).item(), abs=1e-6)
    gdl = MonaiGDL(include_background=include_background)
    assert generalized_dice_loss(p, labels, include_background=include_background).item() == pytest.approx(
        gdl(p, onehot).item(), abs=1e-6)


def test_monai_cross_check_with_absent_class_and_reduction_none():
    _, p, labels, onehot = _case(1, C=5)
    labels = labels.clamp_max(3)  # class 4 absent from the ground truth
    onehot = torch.nn.functional.one_hot(labels, 5).movedim(-1, 1).double()
    ref = MonaiDice(squared_pred=True, smooth_nr=EPS, smooth_dr=EPS, reduction="none")(p, onehot)
    ours = dice_loss(p, labels, reduction="none")
    assert torch.allclose(ours, ref.reshape(ours.shape), atol=1e-6)
    assert generalized_dice_loss(p, labels).item() == pytest.approx(MonaiGDL()(p, onehot).item(), abs=1e-6)
    # skip_absent drops the absent class from the mean
    assert dice_loss(p, labels, skip_absent=True).item() == pytest.approx(ours[:, :4].mean().item(), abs=1e-12)


def test_dice_tversky_relation_and_reductions():
    _, p, labels, _ = _case(2)
    per = dice_loss(p, labels, reduction="none")
    assert per.shape == (2, 4)
    assert dice_loss(p, labels, reduction="sum").item() == pytest.approx(per.sum().item())
    # Tversky with alpha = beta = 0.5 is the linear-denominator Dice loss
    g = torch.nn.functional.one_hot(labels, 4).movedim(-1, 1).double()
    lin = 1 - (2 * (p * g).sum((2, 3, 4)) + EPS) / (p.sum((2, 3, 4)) + g.sum((2, 3, 4)) + EPS)
    assert torch.allclose(tversky_loss(p, labels, 0.5, 0.5, reduction="none"), lin, atol=1e-12)


def test_cross_entropy_and_baseline():
    logits, p, labels, onehot = _case(3)
    ref = torch.nn.functional.cross_entropy(logits, labels)
    assert cross_entropy_loss(logits, labels, softmax=True).item() == pytest.approx(ref.item(), rel=1e-10)
    assert cross_entropy_loss(p, onehot).item() == pytest.approx(ref.item(), rel=1e-8)
    lam = 0.7
    expected = dice_loss(p, labels) + lam * ref
    assert dice_ce_loss(p, labels, lam).item() == pytest.approx(expected.item(), rel=1e-8)
    assert DiceCELoss(lam)(p, labels).item() == pytest.approx(expected.item(), rel=1e-8)
    # Eq. (9): Dice summed over classes
    eq9 = dice_loss(p[:1], labels[:1], reduction="sum") + cross_entropy_loss(p[:1], labels[:1])
    assert dice_ce_loss(p[:1], labels[:1], 1.0, reduction="sum").item() == pytest.approx(eq9.item(), rel=1e-10)


def test_focal_tversky_and_sensitivity_specificity_by_formula():
    _, p, labels, g = _case(4)
    dims = (2, 3, 4)
    tp, fp, fn = (p * g).sum(dims), (p * (1 - g)).sum(dims), ((1 - p) * g).sum(dims)
    ti = (tp + EPS) / (tp + 0.3 * fp + 0.7 * fn + EPS)
    assert focal_tversky_loss(p, labels).item() == pytest.approx(((1 - ti) ** 0.75).mean().item(), rel=1e-10)
    d2 = (g - p) ** 2
    ss = 0.05 * (d2 * g).sum(dims) / (g.sum(dims) + EPS) + 0.95 * (d2 * (1 - g)).sum(dims) / ((1 - g).sum(dims) + EPS)
    assert sensitivity_specificity_loss(p, labels).item() == pytest.approx(ss.mean().item(), rel=1e-10)
    # perfect prediction: focal Tversky ~0 and finite gradient
    x = g.clone().requires_grad_()
    loss = focal_tversky_loss(x, labels)
    loss.backward()
    assert loss.item() < 1e-4 and torch.isfinite(x.grad).all()


# --------------------------------------------------------------------------- region-specific losses
def _bounds(n, k):
    """Block j covers [ceil(j n / k), ceil((j + 1) n / k)) -- the documented uneven layout."""
    return [(-(-j * n // k), -(-(j + 1) * n // k)) for j in range(k)]


def _reference_region(p, g, ks, kind, A=0.3, B=0.4, skip_absent=True, region_reduction="sum", detach=False):
    """Slow loop over (batch, class, sub-region): per-(b, c) reduced values, and validity."""
    Bn, C = p.shape[:2]
    out = torch.zeros(Bn, C, dtype=p.dtype)
    valid = torch.zeros(Bn, C, dtype=torch.bool)
    alphas = {}
    for b, c in itertools.product(range(Bn), range(C)):
        vals = []
        for blocks in itertools.product(*[_bounds(n, k) for n, k in zip(p.shape[2:], ks)]):
            sl = (b, c) + tuple(slice(lo, hi) for lo, hi in blocks)
            pi, gi = p[sl], g[sl]
            if skip_absent and gi.sum() == 0:
                continue
            if kind == "dice":
                vals.append(1 - (2 * (pi * gi).sum() + EPS) / ((pi ** 2).sum() + (gi ** 2).sum() + EPS))
            else:
                tp, fp, fn = (pi * gi).sum(), (pi * (1 - gi)).sum(), ((1 - pi) * gi).sum()
                a = A + B * (fp + EPS) / (fp + fn + EPS)
                bb = A + B * (fn + EPS) / (fp + fn + EPS)
                if detach:
                    a, bb = a.detach(), bb.detach()
                alphas[(b, c) + tuple(lo for lo, _ in blocks)] = (a.item(), bb.item())
                vals.append(1 - (tp + EPS) / (tp + a * fp + bb * fn + EPS))
        if vals:
            v = torch.stack(vals)
            out[b, c] = v.sum() if region_reduction == "sum" else v.mean()
            valid[b, c] = True
    return out, valid, alphas


@pytest.mark.parametrize("spatial, grid", [((8, 12), 4), ((9, 10, 11), 3), ((7, 9, 10), (2, 4, 3)), ((6, 6, 6), 6)])
@pytest.mark.parametrize("kind", ["dice", "adaptive"])
def test_region_losses_equal_reference_loop(spatial, grid, kind):
    _, p, labels, g = _case(5, spatial=spatial, sharp=2.0)
    ks = (grid,) * len(spatial) if isinstance(grid, int) else grid
    fn = region_specific_loss if kind == "dice" else adaptive_region_specific_loss
    for rr in ("sum", "mean"):
        ref, valid, _ = _reference_region(p, g, ks, kind, region_reduction=rr)
        got = fn(p, labels, grid, region_reduction=rr, reduction="none")
        assert torch.allclose(got, ref, atol=1e-10)
        got_mean = fn(p, labels, grid, region_reduction=rr)
        assert got_mean.item() == pytest.approx(ref[valid].mean().item(), rel=1e-10)


def test_region_map_and_skip_absent_off():
    _, p, labels, g = _case(6, spatial=(8, 9, 10))
    m = region_specific_loss(p, labels, (2, 3, 5), region_reduction="none", reduction="none")
    assert m.shape == (2, 4, 2, 3, 5)
    ref, _, _ = _reference_region(p, g, (2, 3, 5), "dice", skip_absent=False)
    got = region_specific_loss(p, labels, (2, 3, 5), skip_absent=False, reduction="none")
    assert torch.allclose(got, ref, atol=1e-10)


def test_grid_one_equals_global_losses():
    _, p, labels, _ = _case(7)
    assert region_specific_loss(p, labels, 1, skip_absent=False).item() == pytest.approx(
        dice_loss(p, labels).item(), abs=1e-12)
    # all classes are present here, so skipping changes nothing
    assert region_specific_loss(p, labels, 1).item() == pytest.approx(dice_loss(p, labels).item(), abs=1e-12)
    a, b = adaptive_tversky_weights(p, labels, 1)
    per = adaptive_region_specific_loss(p, labels, 1, reduction="none")
    for bi, ci in itertools.product(range(2), range(4)):
        ref = tversky_loss(p[bi:bi + 1], labels[bi:bi + 1], a[bi, ci].item(), b[bi, ci].item(), reduction="none")
        assert per[bi, ci].item() == pytest.approx(ref[0, ci].item(), abs=1e-12)


def test_adaptive_weights_in_range_and_match_reference():
    _, p, labels, g = _case(8, spatial=(9, 10, 11))
    for A, B in [(0.3, 0.4), (0.1, 0.8)]:
        a, b = adaptive_tversky_weights(p, labels, 3, A, B)
        assert a.shape == (2, 4, 3, 3, 3)
        for w in (a, b):
            assert float(w.min()) >= A - 1e-12 and float(w.max()) <= A + B + 1e-12
    a, b = adaptive_tversky_weights(p, labels, 3)
    _, _, alphas = _reference_region(p, g, (3, 3, 3), "adaptive", skip_absent=False)
    bounds = [lo for lo, _ in _bounds(9, 3)], [lo for lo, _ in _bounds(10, 3)], [lo for lo, _ in _bounds(11, 3)]
    for (bi, ci, z0, y0, x0), (ra, rb) in list(alphas.items())[:40]:
        iz, iy, ix = bounds[0].index(z0), bounds[1].index(y0), bounds[2].index(x0)
        assert a[bi, ci, iz, iy, ix].item() == pytest.approx(ra, abs=1e-12)
        assert b[bi, ci, iz, iy, ix].item() == pytest.approx(rb, abs=1e-12)


def test_gradcheck_all_losses():
    logits, p, labels, _ = _case(9, B=1, C=3, spatial=(4, 5, 6))
    x = logits.clone().requires_grad_()
    fns = [
        lambda z: dice_loss(z, labels, softmax=True),
        lambda z: tversky_loss(z, labels, 0.3, 0.7, softmax=True),
        lambda z: dice_ce_loss(z, labels, softmax=True),
        lambda z: focal_tversky_loss(z, labels, softmax=True),
        lambda z: generalized_dice_loss(z, labels, softmax=True),
        lambda z: sensitivity_specificity_loss(z, labels, softmax=True),
        lambda z: region_specific_loss(z, labels, (2, 3, 4), softmax=True),  # uneven blocks (index_add path)
        lambda z: region_specific_loss(z, labels, (2, 5, 3), softmax=True),  # divisible (fused path)
        lambda z: adaptive_region_specific_loss(z, labels, (2, 5, 3), softmax=True, detach_weights=False),
        lambda z: adaptive_region_specific_loss(z, labels, (2, 3, 4), softmax=True, detach_weights=False),
    ]
    for f in fns:
        assert torch.autograd.gradcheck(f, (x,))
    # detached weights: gradcheck's finite differences would move alpha/beta too, so compare the autograd
    # gradient with that of the reference loop in which alpha/beta are constants
    g = torch.nn.functional.one_hot(labels, 3).movedim(-1, 1).double()
    for rr, grid in itertools.product(("sum", "mean"), ((2, 3, 4), (2, 5, 3))):
        x1, x2 = logits.clone().requires_grad_(), logits.clone().requires_grad_()
        adaptive_region_specific_loss(x1, labels, grid, softmax=True, region_reduction=rr).backward()
        ref, valid, _ = _reference_region(x2.softmax(1), g, grid, "adaptive", region_reduction=rr, detach=True)
        ref[valid].mean().backward()
        assert torch.allclose(x1.grad, x2.grad, atol=1e-10)


def test_detach_weights_changes_gradient_not_value():
    _, p, labels, _ = _case(10, spatial=(6, 6, 6))
    x1, x2 = p.clone().requires_grad_(), p.clone().requires_grad_()
    l1 = adaptive_region_specific_loss(x1, labels, 2)
    l2 = adaptive_region_specific_loss(x2, labels, 2, detach_weights=False)
    assert l1.item() == pytest.approx(l2.item(), abs=1e-12)
    l1.backward()
    l2.backward()
    assert not torch.allclose(x1.grad, x2.grad)


def test_modules_match_functions_and_2d():
    _, p, labels, _ = _case(11, spatial=(16, 12))
    assert RegionSpecificLoss(4)(p, labels).item() == region_specific_loss(p, labels, 4).item()
    assert AdaptiveRegionSpecificLoss(grid=4, A=0.2, B=0.5)(p, labels).item() == adaptive_region_specific_loss(
        p, labels, 4, 0.2, 0.5).item()
    assert DiceLoss(include_background=False)(p, labels).item() == dice_loss(p, labels, include_background=False).item()
    assert TverskyLoss(0.3, 0.7)(p, labels).item() == tversky_loss(p, labels, 0.3, 0.7).item()
    with pytest.raises(ValueError, match="grid"):
        RegionSpecificLoss(0)


# --------------------------------------------------------------------------- bad input and edge cases
def test_bad_inputs_raise_clear_errors():
    logits, p, labels, onehot = _case(12, spatial=(6, 7, 8))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        dice_loss(logits, labels)  # logits passed as probabilities
    with pytest.raises(ValueError, match="sum to 1"):
        cross_entropy_loss(p * 0.5, labels)
    with pytest.raises(ValueError, match="label values"):
        dice_loss(p, labels + 1)
    with pytest.raises(ValueError, match="label values"):
        region_specific_loss(p, labels - 1, 2)
    with pytest.raises(ValueError, match="larger than the volume"):
        region_specific_loss(p, labels, 7)
    with pytest.raises(ValueError, match="grid"):
        region_specific_loss(p, labels, (2, 2))
    with pytest.raises(ValueError, match="shape"):
        dice_loss(p, labels[:, :5])
    with pytest.raises(ValueError, match="one-hot"):
        tversky_loss(p, onehot * 2)
    bad = p.clone()
    bad[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        adaptive_region_specific_loss(bad, labels, 2)
    with pytest.raises(ValueError, match="reduction"):
        dice_loss(p, labels, reduction="avg")
    with pytest.raises(ValueError, match="eps"):
        dice_loss(p, labels, eps=0.0)
    with pytest.raises(ValueError, match="alpha"):
        tversky_loss(p, labels, -0.1, 0.5)
    with pytest.raises(TypeError):
        dice_loss(p, labels.numpy())
    with pytest.raises(TypeError):
        dice_loss(labels, labels)  # integer pred


def test_empty_ground_truth_and_empty_prediction_never_nan():
    _, p, _, _ = _case(13, spatial=(6, 6, 6))
    labels = torch.zeros(2, 6, 6, 6, dtype=torch.long)  # only background present
    x = p.clone().requires_grad_()
    losses = [
        dice_loss(x, labels), tversky_loss(x, labels), focal_tversky_loss(x, labels),
        generalized_dice_loss(x, labels), sensitivity_specificity_loss(x, labels),
        region_specific_loss(x, labels, 3), adaptive_region_specific_loss(x, labels, 3),
        dice_loss(x, labels, include_background=False, skip_absent=True),
        region_specific_loss(x, labels, 3, include_background=False),
    ]
    total = sum(losses)
    total.backward()
    assert all(torch.isfinite(v) for v in losses) and torch.isfinite(x.grad).all()
    # no foreground in the ground truth and none predicted: Dice term 0, skipped region terms -> 0
    zero_pred = torch.zeros_like(p)
    zero_pred[:, 0] = 1.0
    assert dice_loss(zero_pred, labels).item() == pytest.approx(0.0, abs=1e-12)
    assert region_specific_loss(zero_pred, labels, 3, include_background=False).item() == 0.0
    # documented behaviour: an absent class predicted everywhere counts as loss ~1 in the global Dice
    ones = torch.full_like(p, 0.5)
    assert dice_loss(ones, labels, reduction="none")[:, 1:].min().item() == pytest.approx(1.0, abs=1e-6)


def test_deterministic():
    _, p, labels, _ = _case(14)
    a = adaptive_region_specific_loss(p, labels, 3)
    b = adaptive_region_specific_loss(p.clone(), labels.clone(), 3)
    assert a.item() == b.item()


def test_sum_of_losses_is_the_weighted_sum_of_its_terms():
    from rtlearn.losses.region import SumOfLosses, sum_of_losses

    _, p, labels, _ = _case(3, spatial=(8, 8))
    p = p.clone().requires_grad_(True)
    a, b = dice_ce_loss(p, labels), region_specific_loss(p, labels, 4, region_reduction="mean")
    loss = SumOfLosses(DiceCELoss(), RegionSpecificLoss(4, region_reduction="mean"), weights=(1.0, 2.5))
    got = loss(p, labels)
    assert got.item() == pytest.approx(a.item() + 2.5 * b.item(), abs=1e-12)
    # gradient: the weighted sum of the terms' gradients
    (ga,) = torch.autograd.grad(a, p, retain_graph=True)
    (gb,) = torch.autograd.grad(b, p, retain_graph=True)
    (gs,) = torch.autograd.grad(got, p)
    assert torch.allclose(gs, ga + 2.5 * gb, atol=1e-12)
    # default unit weights, plain functions as terms, the functional form, a readable repr
    unit = SumOfLosses(dice_ce_loss, lambda q, t: region_specific_loss(q, t, 4, region_reduction="mean"))
    assert unit(p, labels).item() == pytest.approx(a.item() + b.item(), abs=1e-12)
    assert sum_of_losses(p, labels, [dice_loss]).item() == pytest.approx(dice_loss(p, labels).item(), abs=0)
    assert "DiceCELoss" in repr(loss) and "RegionSpecificLoss" in repr(loss) and "2.5" in repr(loss)
    with pytest.raises(ValueError, match="at least one"):
        SumOfLosses()
    with pytest.raises(ValueError, match="one weight per loss"):
        SumOfLosses(DiceLoss(), weights=(1.0, 2.0))
    with pytest.raises(ValueError, match="weight 0"):
        SumOfLosses(DiceLoss(), weights=(float("nan"),))
    with pytest.raises(ValueError, match="weight 0"):
        SumOfLosses(DiceLoss(), weights=(-1.0,))
    with pytest.raises(TypeError, match="callable"):
        SumOfLosses(DiceLoss(), 3)


def test_batch_dice_ce_is_monai_batch_dice_plus_ce_and_skips_classes_absent_from_the_batch():
    gen = torch.Generator().manual_seed(3)
    p = torch.randn(3, 4, 6, 5, generator=gen, dtype=torch.float64).softmax(1).requires_grad_(True)
    y = torch.randint(0, 4, (3, 6, 5), generator=gen)
    y[:, 0, 0] = torch.tensor([0, 1, 2])
    y[0, 1, 1] = 3                                          # every class present in the batch
    ce = cross_entropy_loss(p, y)
    monai = MonaiDice(squared_pred=True, smooth_nr=EPS, smooth_dr=EPS, batch=True, to_onehot_y=True)
    ref = monai(p, y[:, None]) + ce
    torch.testing.assert_close(dice_ce_loss(p, y, batch=True), ref)
    (ga,) = torch.autograd.grad(dice_ce_loss(p, y, batch=True), p)
    (gb,) = torch.autograd.grad(ref, p)
    torch.testing.assert_close(ga, gb)
    # class 3 absent from every slice: its term is skipped, by brute force over the other classes
    y2 = torch.where(y == 3, 0, y)
    g = torch.nn.functional.one_hot(y2, 4).permute(0, 3, 1, 2).double()
    terms = [1 - (2 * (p[:, c] * g[:, c]).sum() + EPS) / ((p[:, c] ** 2).sum() + (g[:, c] ** 2).sum() + EPS)
             for c in range(3)]
    torch.testing.assert_close(dice_ce_loss(p, y2, batch=True), sum(terms) / 3 + cross_entropy_loss(p, y2))
    # per slice (the default) an absent class costs ~1 unless predicted exactly 0
    per_slice = dice_ce_loss(p, y2)
    assert per_slice > dice_ce_loss(p, y2, batch=True)
    assert DiceCELoss(1.0, batch=True)(p, y2) == dice_ce_loss(p, y2, batch=True)
    with pytest.raises(ValueError, match="batch"):
        dice_ce_loss(p, y, batch="yes")
