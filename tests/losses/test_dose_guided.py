"""rtlearn.losses.dose_guided: DOSELO's dose-guided loss (Rüfenacht et al. 2023) and its baseline BCE + SoftDice."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rtlearn.losses.dose_guided import (
    BCELoss,
    BCESoftDiceLoss,
    DoseGuidedLoss,
    StraightThroughDoseGuidedLoss,
    SurrogateGuidedLoss,
    assemble_dose_input,
    bce_soft_dice_loss,
    binary_cross_entropy,
    dose_guided_loss,
    dose_segmentation_loss,
    expected_in_channels,
    freeze,
    soft_dice_loss,
    surrogate_guided_loss,
    true_target_dose,
)
from rtlearn.models import UNet
from rtlearn.models.cascade import CascadeUNet

torch.set_num_threads(1)
H = W = 16


# ---------------------------------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------------------------------
def _batch(B=2, seed=0, dims=2):
    g = torch.Generator().manual_seed(seed)
    sp = (H, W) if dims == 2 else (8, 8, 8)
    target = torch.zeros((B, 1) + sp, dtype=torch.bool)
    target[(slice(None), 0) + tuple(slice(s // 4, s // 2) for s in sp)] = True
    oars = (torch.rand((B, 1) + sp, generator=g) > 0.8).float()
    ct = torch.rand((B, 1) + sp, generator=g)
    mask = torch.ones((B, 1) + sp, dtype=torch.bool)
    mask[(slice(None), 0, 0)] = False
    image = torch.rand((B, 2) + sp, generator=g)
    return {"input": image, "target": target, "oars": oars, "ct": ct, "dose_mask": mask}


def _predictor(seed=0, dims=2):
    torch.manual_seed(seed)
    return freeze(CascadeUNet(3, 1, dims=dims, depth=2, width=4, norm="batch"))


def _linear_predictor(wt=2.0, wo=0.5, wc=-1.0, b=0.3):
    """M_D(x) = wt*S_T + wo*S_OR + wc*CT + b: a 1x1 convolution whose DSL is known in closed form."""
    conv = nn.Conv2d(3, 1, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([wt, wo, wc]).view(1, 3, 1, 1))
        conv.bias.fill_(b)
    return freeze(conv)


# ---------------------------------------------------------------------------------------------------------------
# L_DSL against closed forms
# ---------------------------------------------------------------------------------------------------------------
def test_dsl_linear_predictor_value_and_gradient():
    """With M_D linear, D_P - D̂_P = w_t (S_T - p): L_DSL = w_t² mean((S_T - p)²), dL/dp = -2 w_t² (S_T - p)/N."""
    b = _batch()
    wt = 2.0
    pred = _linear_predictor(wt=wt)
    p = torch.rand(b["target"].shape, generator=torch.Generator().manual_seed(3), requires_grad=True)
    s = b["target"].float()
    loss = dose_segmentation_loss(p, b["target"], pred, b["oars"], b["ct"])
    assert torch.allclose(loss, wt**2 * ((s - p) ** 2).mean())
    loss.backward()
    assert torch.allclose(p.grad, -2 * wt**2 * (s - p.detach()) / s.numel(), atol=1e-7)
    # masked: both doses are multiplied by the mask; "image" divides by N, "mask" by the mask count
    m = b["dose_mask"]
    num = (wt**2 * m * (s - p.detach()) ** 2).sum()
    img = dose_segmentation_loss(p.detach(), b["target"], pred, b["oars"], b["ct"], m)
    msk = dose_segmentation_loss(p.detach(), b["target"], pred, b["oars"], b["ct"], m, average="mask")
    assert torch.allclose(img, num / s.numel())
    assert torch.allclose(msk, num / m.sum())


def test_channel_order():
    b = _batch()
    pred = _linear_predictor()
    x = assemble_dose_input(b["target"].float(), b["oars"], b["ct"], order=("ct", "oars", "target"))
    assert torch.equal(x[:, 0], b["ct"][:, 0]) and torch.equal(x[:, 2], b["target"].float()[:, 0])
    p = torch.rand(b["target"].shape)
    a = dose_segmentation_loss(p, b["target"], pred, b["oars"], b["ct"])
    c = dose_segmentation_loss(p, b["target"], pred, b["oars"], b["ct"], order=("ct", "oars", "target"))
    assert not torch.allclose(a, c)  # the order matters: the weights see different channels


@pytest.mark.parametrize("dims", [2, 3])
def test_dsl_zero_for_identical_masks(dims):
    b = _batch(dims=dims)
    pred = _predictor(dims=dims)
    loss = dose_segmentation_loss(b["target"].float(), b["target"], pred, b["oars"], b["ct"], b["dose_mask"])
    assert float(loss) == 0.0
    total = dose_guided_loss(b["target"].float(), b["target"], pred, b["oars"], b["ct"], logits=False)
    assert float(total) == pytest.approx(0.0, abs=1e-6)  # BCE of a perfect hard prediction is 0 too
    wrong = dose_segmentation_loss(1 - b["target"].float(), b["target"], pred, b["oars"], b["ct"])
    assert float(wrong) > 0


# ---------------------------------------------------------------------------------------------------------------
# where the gradient goes
# ---------------------------------------------------------------------------------------------------------------
def _seg_net():
    torch.manual_seed(5)
    return UNet(2, 1, dims=2, depth=2, width=4, norm="batch")


def test_gradient_reaches_segmentation_not_predictor():
    b = _batch()
    seg, pred = _seg_net(), _predictor()
    before = {k: v.clone() for k, v in pred.state_dict().items()}  # weights and BatchNorm running stats
    seg_before = [p.detach().clone() for p in seg.parameters()]
    # even an optimizer that (wrongly) holds the predictor's parameters must leave them unchanged
    opt = torch.optim.Adam(list(seg.parameters()) + list(pred.parameters()), lr=1e-2)
    logits = seg(b["input"])
    dsl = dose_segmentation_loss(torch.sigmoid(logits), b["target"], pred, b["oars"], b["ct"], b["dose_mask"])
    assert dsl.requires_grad
    dsl.backward()  # the dose term alone (no BCE) must give the segmentation network a gradient
    grads = [p.grad for p in seg.parameters()]
    assert all(g is not None for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    assert all(p.grad is None for p in pred.parameters())
    opt.step()
    assert all(torch.equal(v, pred.state_dict()[k]) for k, v in before.items())
    assert any(not torch.equal(a, p) for a, p in zip(seg_before, seg.parameters()))
    assert not pred.training


def test_hard_mode_has_no_dose_gradient():
    b = _batch()
    seg, pred = _seg_net(), _predictor()
    logits = seg(b["input"])
    prob = torch.sigmoid(logits)
    hard = dose_segmentation_loss(prob, b["target"], pred, b["oars"], b["ct"], hard=True)
    assert not hard.requires_grad
    # its value is the soft loss evaluated on the thresholded mask
    ref = dose_segmentation_loss((prob.detach() >= 0.5).float(), b["target"], pred, b["oars"], b["ct"])
    assert torch.allclose(hard, ref)
    # total loss with hard=True: the gradient is exactly that of the BCE term
    total = dose_guided_loss(logits, b["target"], pred, b["oars"], b["ct"], lam=10.0, hard=True)
    g_total = torch.autograd.grad(total, list(seg.parameters()), retain_graph=True)
    g_bce = torch.autograd.grad(binary_cross_entropy(logits, b["target"]), list(seg.parameters()), retain_graph=True)
    assert all(torch.allclose(a, c) for a, c in zip(g_total, g_bce))
    soft = dose_guided_loss(logits, b["target"], pred, b["oars"], b["ct"], lam=10.0)
    g_soft = torch.autograd.grad(soft, list(seg.parameters()))
    assert any(not torch.allclose(a, c) for a, c in zip(g_soft, g_bce))


def test_total_is_bce_plus_lambda_dsl():
    b = _batch()
    pred = _predictor()
    logits = torch.randn(b["target"].shape, generator=torch.Generator().manual_seed(2))
    total, terms = dose_guided_loss(logits, b["target"], pred, b["oars"], b["ct"], lam=0.7, pos_weight=2.0,
                                    return_terms=True)
    bce = F.binary_cross_entropy_with_logits(logits, b["target"].float(), pos_weight=torch.tensor(2.0))
    dsl = dose_segmentation_loss(torch.sigmoid(logits), b["target"], pred, b["oars"], b["ct"])
    assert torch.allclose(terms["bce"], bce) and torch.allclose(terms["dsl"], dsl)
    assert torch.allclose(total, bce + 0.7 * dsl)
    assert torch.allclose(dose_guided_loss(logits, b["target"], pred, lam=0.0), F.binary_cross_entropy_with_logits(
        logits, b["target"].float()))  # lam = 0: BCE alone, predictor never called (channels not even checked)


# ---------------------------------------------------------------------------------------------------------------
# bad inputs
# ---------------------------------------------------------------------------------------------------------------
def test_bad_inputs():
    b = _batch()
    pred = _predictor()
    logits = torch.zeros(b["target"].shape)
    with pytest.raises(ValueError, match=">= 0"):
        dose_guided_loss(logits, b["target"], pred, b["oars"], b["ct"], lam=-0.1)
    with pytest.raises(ValueError, match="expects 3 input channels"):
        dose_guided_loss(logits, b["target"], pred, b["oars"])  # CT missing
    with pytest.raises(ValueError, match="expects 3 input channels"):
        dose_guided_loss(logits, b["target"], pred, torch.cat([b["oars"]] * 2, 1), b["ct"])
    with pytest.raises(ValueError, match="target has shape"):
        dose_guided_loss(logits, b["target"][:, :, :8], pred, b["oars"], b["ct"])
    with pytest.raises(ValueError, match="dose_mask has shape"):
        dose_guided_loss(logits, b["target"], pred, b["oars"], b["ct"], b["dose_mask"][:1])
    with pytest.raises(ValueError, match="oars has shape"):
        dose_guided_loss(logits, b["target"], pred, b["oars"][:, :, :8], b["ct"])
    with pytest.raises(ValueError, match="B x 1 x spatial"):
        dose_guided_loss(torch.zeros(2, 2, H, W), b["target"], pred, b["oars"], b["ct"])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        dose_segmentation_loss(logits - 1, b["target"], pred, b["oars"], b["ct"])
    with pytest.raises(ValueError, match="boolean"):
        dose_guided_loss(logits, b["target"].float() * 0.5, pred, b["oars"], b["ct"])
    with pytest.raises(ValueError, match="threshold"):
        dose_guided_loss(logits, b["target"], pred, b["oars"], b["ct"], hard=True, threshold=1.0)
    with pytest.raises(ValueError, match="average"):
        dose_guided_loss(logits, b["target"], pred, b["oars"], b["ct"], average="voxel")
    unfrozen = CascadeUNet(3, 1, depth=2, width=4).eval()
    with pytest.raises(ValueError, match="requires_grad"):
        dose_guided_loss(logits, b["target"], unfrozen, b["oars"], b["ct"])
    training = freeze(CascadeUNet(3, 1, depth=2, width=4)).train()
    with pytest.raises(ValueError, match="training mode"):
        dose_guided_loss(logits, b["target"], training, b["oars"], b["ct"])
    with pytest.raises(ValueError, match=">= 0"):
        DoseGuidedLoss(pred, lam=-1)
    with pytest.raises(ValueError, match="shape"):
        dose_segmentation_loss(torch.sigmoid(logits), b["target"], pred, b["oars"], b["ct"],
                               true_dose=torch.zeros(2, 1, 8, 8))
    assert expected_in_channels(pred) == 3 and expected_in_channels(_linear_predictor()) == 3


# ---------------------------------------------------------------------------------------------------------------
# module form, caching, trainer
# ---------------------------------------------------------------------------------------------------------------
def test_module_matches_functional_and_caches():
    b = _batch()
    pred = _predictor()
    loss = DoseGuidedLoss(pred, lam=1.0, pos_weight=2.0)
    logits = torch.randn(b["target"].shape, generator=torch.Generator().manual_seed(4))
    ref = dose_guided_loss(logits, b["target"], pred, b["oars"], b["ct"], b["dose_mask"], pos_weight=2.0)
    assert torch.allclose(loss(logits, b), ref)
    assert loss.cache_hits == 0
    assert torch.allclose(loss(logits, b), ref) and loss.cache_hits == 1
    dsl_first = loss.last_terms["dsl"]
    other = dict(b, ct=b["ct"] + 1)  # different CT: must not reuse the cached dose
    loss(logits, other)
    _, terms = dose_guided_loss(logits, b["target"], pred, b["oars"], other["ct"], b["dose_mask"], return_terms=True)
    assert loss.cache_hits == 1
    assert loss.last_terms["dsl"] == pytest.approx(float(terms["dsl"]), rel=1e-5)
    assert loss.last_terms["dsl"] != pytest.approx(dsl_first, rel=1e-2)
    assert set(loss.last_terms) == {"bce", "dice", "dsl", "total"}
    # a precomputed true dose in the batch gives the same value
    d = true_target_dose(pred, b["target"], b["oars"], b["ct"], b["dose_mask"])
    assert torch.allclose(DoseGuidedLoss(pred, pos_weight=2.0, cache_size=0)(logits, dict(b, true_dose=d)), ref)
    loss.train()
    assert not pred.training  # the predictor stays frozen
    # positional form
    assert torch.allclose(loss(logits, b["target"], b["oars"], b["ct"], b["dose_mask"]), ref)


def test_trainer_with_frozen_predictor():
    from rtlearn.train import Trainer

    b = _batch(B=4)
    seg, pred = _seg_net(), _predictor()
    before = {k: v.clone() for k, v in pred.state_dict().items()}
    seg_before = [p.detach().clone() for p in seg.parameters()]
    loss = DoseGuidedLoss(pred, lam=1.0)
    trainer = Trainer(seg, loss, frozen=[pred], lr=1e-2, device="cpu", progress=False, scheduler=None,
                      restore_best=False)
    hist = trainer.fit([b, b], epochs=2)
    assert len(hist) == 2 and all(np.isfinite(hist["train_loss"]))
    assert all(torch.equal(v, pred.state_dict()[k]) for k, v in before.items())
    assert any(not torch.equal(a, p) for a, p in zip(seg_before, seg.parameters()))
    assert loss.cache_hits >= 3  # the same batch: D_P computed once


# ---------------------------------------------------------------------------------------------------------------
# baseline BCE + SoftDice
# ---------------------------------------------------------------------------------------------------------------
def test_bce_and_soft_dice_by_hand():
    p = torch.tensor([[[[0.9, 0.2], [0.6, 0.1]]]])
    g = torch.tensor([[[[1, 0], [1, 0]]]], dtype=torch.bool)
    # Dice = 2 * (0.9 + 0.6) / ((0.9 + 0.2 + 0.6 + 0.1) + 2) = 3 / 3.8
    assert float(soft_dice_loss(p, g, smooth=0.0)) == pytest.approx(1 - 3 / 3.8, rel=1e-6)
    assert torch.allclose(binary_cross_entropy(p, g, logits=False), F.binary_cross_entropy(p, g.float()))
    logit = torch.logit(p)
    assert torch.allclose(binary_cross_entropy(p, g, logits=False, pos_weight=2.0),
                          F.binary_cross_entropy_with_logits(logit, g.float(), pos_weight=torch.tensor(2.0)))
    assert torch.allclose(bce_soft_dice_loss(logit, g), binary_cross_entropy(logit, g) + soft_dice_loss(p, g),
                          atol=1e-6)
    assert torch.allclose(BCESoftDiceLoss()(logit, {"target": g}), bce_soft_dice_loss(logit, g))
    # per-sample Dice vs batch Dice differ when samples differ
    p2 = torch.cat([p, 1 - p])
    g2 = torch.cat([g, g])
    assert not torch.allclose(soft_dice_loss(p2, g2), soft_dice_loss(p2, g2, batch_dice=False))
    assert float(soft_dice_loss(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2, dtype=torch.bool))) == 0.0
    with pytest.raises(ValueError, match="pos_weight"):
        binary_cross_entropy(logit, g, pos_weight=-1.0)


def test_bce_module_against_torch():
    g = torch.Generator().manual_seed(1)
    logit = torch.randn(2, 1, 4, 4, generator=g)
    t = torch.rand(2, 1, 4, 4, generator=g) > 0.5
    ref = F.binary_cross_entropy_with_logits(logit, t.float())
    assert torch.allclose(BCELoss()(logit, t), ref)
    assert torch.allclose(BCELoss()(logit, {"target": t}), ref)
    assert torch.allclose(BCELoss(pos_weight=2.0)(logit, t),
                          F.binary_cross_entropy_with_logits(logit, t.float(), pos_weight=torch.tensor(2.0)))
    assert torch.allclose(BCELoss(logits=False)(torch.sigmoid(logit), t), ref, atol=1e-6)
    with pytest.raises(ValueError, match="pos_weight"):
        BCELoss(pos_weight=0)


# ---------------------------------------------------------------------------------------------------------------
# beyond the paper: straight-through mask, beam surrogate
# ---------------------------------------------------------------------------------------------------------------
def test_straight_through_loss_linear_predictor_value_and_gradient():
    """With M_D linear (weight w_t on the target) and both doses masked by M: forward sees H = 1[p >= 0.5], so
    L = BCE + lam w_t² mean(M (S_T - H)²) and dL/dz = dBCE/dz - 2 lam w_t² M (S_T - H) p(1-p) / N (z: logits)."""
    b = _batch()
    wt, lam = 2.0, 0.3
    pred = _linear_predictor(wt=wt)
    z = torch.randn(b["target"].shape, generator=torch.Generator().manual_seed(4), requires_grad=True)
    loss = StraightThroughDoseGuidedLoss(pred, lam)(z, b)
    p = torch.sigmoid(z.detach())
    s, hard, m = b["target"].float(), (p >= 0.5).float(), b["dose_mask"].float()
    bce = F.binary_cross_entropy_with_logits(z.detach(), s)
    assert torch.allclose(loss, bce + lam * wt**2 * (m * (s - hard) ** 2).mean())
    loss.backward()
    n = s.numel()
    expected = (p - s) / n - 2 * lam * wt**2 * m * (s - hard) * p * (1 - p) / n
    assert torch.allclose(z.grad, expected, atol=1e-7)
    assert all(q.grad is None for q in pred.parameters())
    assert torch.equal(StraightThroughDoseGuidedLoss(pred, 0.0)(z.detach(), b), bce)
    with pytest.raises(ValueError, match="lam"):
        StraightThroughDoseGuidedLoss(pred, -1.0)


class _SaturatingPredictor(nn.Module):
    """A learned-surrogate caricature that reads mask amplitude: dose = 60 Gy * min(1, S_T / 0.3) (+ 0 * rest).

    Any amplitude >= 0.3 inside the GTV gives the full dose: a mask dimmed to 0.3 is, for this predictor, as
    good as the true mask, the exploit a soft dose term offers to a segmentation network."""

    in_channels = 3

    def forward(self, x):
        return 60.0 * torch.clamp(x[:, :1] / 0.3, max=1.0) + 0.0 * x[:, 1:].sum(1, keepdim=True)


def test_straight_through_term_ranks_true_mask_below_dimmed_and_empty():
    b = _batch()
    pred = freeze(_SaturatingPredictor())
    s = b["target"].float()
    masks = {"true": s, "dimmed 0.3": 0.3 * s, "dimmed 0.45": 0.45 * s, "empty": torch.zeros_like(s)}

    def dsl(prob, **kw):
        return float(dose_segmentation_loss(prob, b["target"], pred, b["oars"], b["ct"], b["dose_mask"],
                                            dose_scale=60.0, **kw))

    soft = {k: dsl(m) for k, m in masks.items()}
    st = {k: dsl(m, straight_through=True) for k, m in masks.items()}
    # the soft term cannot tell the true mask from one dimmed to 0.3: the exploit
    assert soft["true"] == 0.0 and soft["dimmed 0.3"] == pytest.approx(0.0, abs=1e-12)
    # the straight-through term gives the true mask the lowest loss; a dimmed mask costs what an empty one does
    assert st["true"] == 0.0
    for k in ("dimmed 0.3", "dimmed 0.45", "empty"):
        assert st[k] > st["true"] and st[k] == pytest.approx(st["empty"])
    # in Rx^2: an empty mask misses 60 Gy = 1 Rx on the GTV's share of the body voxels
    share = float((s * b["dose_mask"]).sum() / s.numel())
    assert st["empty"] == pytest.approx(share, rel=1e-6)
    # the module forms agree, with and without the SoftDice term
    logit = torch.logit(masks["dimmed 0.3"].clamp(1e-4, 1 - 1e-4))
    m = StraightThroughDoseGuidedLoss(pred, 2.0, dice=True, dose_scale=60.0)
    total = m(logit, b)
    assert m.last_terms["dsl"] == pytest.approx(st["dimmed 0.3"], rel=1e-6)
    ref = bce_soft_dice_loss(logit, b["target"]) + 2.0 * st["dimmed 0.3"]
    assert float(total) == pytest.approx(float(ref), rel=1e-6)
    assert float(dose_guided_loss(logit, b["target"], pred, b["oars"], b["ct"], b["dose_mask"], lam=2.0, dice=True,
                                  straight_through=True, dose_scale=60.0)) == pytest.approx(float(ref), rel=1e-6)


def test_dose_scale_and_mode_errors():
    b = _batch()
    pred = _linear_predictor()
    p = torch.full(b["target"].shape, 0.3)
    gy = dose_segmentation_loss(p, b["target"], pred, b["oars"], b["ct"])
    rx = dose_segmentation_loss(p, b["target"], pred, b["oars"], b["ct"], dose_scale=60.0)
    assert float(gy) == pytest.approx(float(rx) * 3600, rel=1e-6)
    for bad in (0.0, -1.0, float("nan"), float("inf"), True, "60"):
        with pytest.raises(ValueError, match="dose_scale"):
            dose_segmentation_loss(p, b["target"], pred, b["oars"], b["ct"], dose_scale=bad)
        with pytest.raises(ValueError, match="dose_scale"):
            DoseGuidedLoss(pred, dose_scale=bad)
    with pytest.raises(ValueError, match="not both"):
        dose_segmentation_loss(p, b["target"], pred, b["oars"], b["ct"], hard=True, straight_through=True)
    with pytest.raises(ValueError, match="not both"):
        DoseGuidedLoss(pred, hard=True, straight_through=True)
    with pytest.raises(ValueError, match="no hard mode"):
        StraightThroughDoseGuidedLoss(pred, 1.0, hard=True)
    z = torch.zeros(b["target"].shape)
    total, terms = dose_guided_loss(z, b["target"], pred, b["oars"], b["ct"], lam=0.5, dice=True, return_terms=True)
    assert float(terms["dice"]) == pytest.approx(float(soft_dice_loss(torch.sigmoid(z), b["target"])))
    assert float(total) == pytest.approx(float(terms["bce"] + terms["dice"] + 0.5 * terms["dsl"]))


class _LinearSurrogate(nn.Module):
    """D(S) = c * K S with K a fixed per-case matrix and c the factor of the true target (mean dose 60 Gy)."""

    def __init__(self, n_cases, hw, seed=0):
        super().__init__()
        self.register_buffer("K", torch.rand(n_cases, hw, hw, generator=torch.Generator().manual_seed(seed)))

    def _apply(self, target, case):
        B = target.shape[0]
        return torch.einsum("bij,bj->bi", self.K[case], target.reshape(B, -1)).reshape(target.shape)

    def scale_for(self, target, case):
        d = self._apply(target, case)
        return (60.0 * target.sum((1, 2, 3), keepdim=True) / (target * d).sum((1, 2, 3), keepdim=True)).detach()

    def forward(self, target, case, scale=None):
        return (self.scale_for(target, case) if scale is None else scale) * self._apply(target, case)


def test_surrogate_guided_module_against_hand_computation():
    b = _batch()
    b["case"] = torch.tensor([1, 0])
    sur = _LinearSurrogate(2, H * W)
    z = torch.randn(b["target"].shape, generator=torch.Generator().manual_seed(6), requires_grad=True)
    lam = 1e-3
    loss = SurrogateGuidedLoss(sur, lam)(z, b)
    # by hand: the dose of the true and of the predicted (soft) target, both with the true target's factor
    s = b["target"].float()
    K = sur.K[b["case"]]
    ds = torch.einsum("bij,bj->bi", K, s.reshape(2, -1))
    c = 60.0 * s.reshape(2, -1).sum(1) / (s.reshape(2, -1) * ds).sum(1)
    dp = torch.einsum("bij,bj->bi", K, torch.sigmoid(z).reshape(2, -1))
    expected = F.binary_cross_entropy_with_logits(z, s) + lam * ((c[:, None] * (dp - ds)) ** 2).mean()
    assert torch.allclose(loss, expected, rtol=1e-5)
    assert torch.equal(loss, surrogate_guided_loss(z, b, sur, lam))
    loss.backward()
    assert z.grad is not None and float(z.grad.abs().sum()) > 0
    assert torch.equal(SurrogateGuidedLoss(sur, 0.0)(z.detach(), b), F.binary_cross_entropy_with_logits(z.detach(), s))
    with pytest.raises(ValueError, match="lam"):
        SurrogateGuidedLoss(sur, -1.0)
    with pytest.raises(TypeError, match="dict batch"):
        SurrogateGuidedLoss(sur, 1.0)(z, b["target"])
    with pytest.raises(TypeError, match="nn.Module"):
        SurrogateGuidedLoss(lambda t, c: t, 1.0)

