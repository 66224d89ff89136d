"""The input contract of the losses and metrics: each bad input gives our ValueError/TypeError.

One test per defect a fuzz of the public API found: unchecked finiteness, a
``shift`` that was never validated, bools taken for numbers, mask values other
than 0/1, one policy for negative doses in torch and NumPy, and NumPy's own
errors leaking out.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from rtlearn import dvh, pareto
from rtlearn import losses as L
from rtlearn._validate import check_positive, check_spacing
from rtlearn.metrics import dose as mdose
from rtlearn.metrics import dosimetric, openkbp


def _frozen_predictor():
    net = nn.Conv2d(2, 1, 3, padding=1)
    return L.freeze(net)


# --------------------------------------------------------------------------- DOSELO: true_dose finiteness
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_doselo_rejects_non_finite_true_dose(bad):
    net = _frozen_predictor()
    target = torch.zeros(1, 1, 6, 6, dtype=torch.bool)
    target[..., 2:4, 2:4] = True
    ct = torch.rand(1, 1, 6, 6)
    td = L.true_target_dose(net, target, ct=ct)
    td[0, 0, 1, 1] = bad
    prob = torch.full((1, 1, 6, 6), 0.5)
    with pytest.raises(ValueError, match="true_dose contains 1 NaN or infinite"):
        L.dose_segmentation_loss(prob, target, net, ct=ct, true_dose=td)
    with pytest.raises(ValueError, match="true_dose"):
        L.dose_guided_loss(torch.zeros(1, 1, 6, 6), target, net, ct=ct, true_dose=td)
    with pytest.raises(ValueError, match="true_dose"):
        L.DoseGuidedLoss(net)(torch.zeros(1, 1, 6, 6), {"target": target, "ct": ct, "true_dose": td})


# --------------------------------------------------------------------------- sharp loss: shift
BAD_SHIFTS = [float("nan"), float("inf"), -float("inf"), True, "0.03", None]


@pytest.mark.parametrize("shift", BAD_SHIFTS, ids=repr)
def test_sharp_loss_rejects_bad_shift(shift):
    t = torch.rand(2, 1, 4, 4)
    p = t + 0.1
    for call in (lambda: L.sharp_loss(p, t, shift=shift), lambda: L.SharpLoss(shift=shift),
                 lambda: L.sharp_weight(t, shift=shift), lambda: L.sharp_weight(0.1, shift=shift),
                 lambda: L.sharp_loss_grad(p, t, shift=shift), lambda: L.demarcation_dose(100.0, shift=shift)):
        with pytest.raises(ValueError, match="shift must be a finite number"):
            call()


def test_sharp_loss_shift_zero_and_negative_are_valid():
    t = torch.rand(2, 1, 4, 4)
    assert float(L.sharp_loss(t + 0.1, t, 0.0, shift=-0.5)) == pytest.approx(0.5 * 0.01, rel=1e-5)
    assert L.demarcation_dose(100.0, shift=0.0) == pytest.approx(math.log(99) / 100 * 6000)


def test_sharp_loss_rejects_bad_norm_at_construction():
    with pytest.raises(ValueError, match="norm"):
        L.SharpLoss(norm=0.0)
    with pytest.raises(ValueError, match="norm"):
        L.SharpLoss(norm=True)


# --------------------------------------------------------------------------- sharp_weight: NaN and bool
@pytest.mark.parametrize("dose", [torch.tensor([0.1, float("nan")]), np.array([0.1, np.nan]), float("nan"),
                                  torch.tensor([float("inf")])], ids=["tensor", "numpy", "float", "inf"])
def test_sharp_weight_rejects_nan(dose):
    with pytest.raises(ValueError, match="NaN or infinite"):
        L.sharp_weight(dose)


@pytest.mark.parametrize("dose", [torch.tensor([True, False]), np.array([True, False]), True, "0.1"],
                         ids=["bool tensor", "bool array", "bool", "str"])
def test_sharp_weight_rejects_bool_and_non_numbers(dose):
    with pytest.raises(TypeError, match="dose must be a real"):
        L.sharp_weight(dose)


def test_sharp_weight_integer_tensor_is_float():
    w = L.sharp_weight(torch.tensor([0, 1]), gamma=1.0, shift=0.0)
    assert w.dtype == torch.float32
    assert torch.allclose(w, torch.sigmoid(torch.tensor([0.0, 1.0])))


# --------------------------------------------------------------------------- pareto.normalise_to_mean: mask values
@pytest.mark.parametrize("bad", [float("nan"), 2.0, -1.0])
def test_normalise_to_mean_rejects_non_binary_mask(bad):
    dose = np.arange(1.0, 10.0).reshape(3, 3)
    mask = np.ones((3, 3))
    mask[0, 0] = bad
    with pytest.raises(ValueError, match="mask must be boolean"):
        pareto.normalise_to_mean(dose, mask)
    with pytest.raises(ValueError, match="mask must be boolean"):
        pareto.normalise_to_mean(torch.from_numpy(dose), torch.from_numpy(mask))


def test_normalise_to_mean_accepts_01_masks_and_rejects_bool_dose():
    dose = np.arange(1.0, 10.0).reshape(3, 3)
    out = pareto.normalise_to_mean(dose, (dose > 4).astype(float))
    assert out[dose > 4].mean() == pytest.approx(1.0)
    with pytest.raises(TypeError, match="boolean"):
        pareto.normalise_to_mean(dose > 4, dose > 4)


# --------------------------------------------------------------------------- bools are not numbers
def test_check_positive_rejects_bool():
    with pytest.raises(ValueError, match="positive number"):
        check_positive(True, "rx")
    with pytest.raises(ValueError, match="positive number"):
        check_positive(np.bool_(True), "rx")
    assert check_positive(np.float32(2.5), "rx") == 2.5


def test_numpy_metrics_reject_bool_numbers():
    d = np.linspace(0, 60, 27).reshape(3, 3, 3)
    m = d > 10
    with pytest.raises(ValueError, match="rx"):
        dvh.homogeneity_index(d, m, rx=True)
    with pytest.raises(ValueError, match="rx"):
        dvh.conformation_index(d, m, rx=True)
    with pytest.raises(ValueError, match="voxel_volume"):
        dvh.d_cc(d, m, voxel_volume=True)
    with pytest.raises(ValueError, match="percent"):
        dvh.dose_at_volume(d, m, True)
    with pytest.raises(ValueError, match="threshold"):
        dvh.volume_at_dose(d, m, True)
    with pytest.raises(ValueError, match="bins"):
        dvh.cumulative_dvh(d, m, bins=True)
    with pytest.raises(ValueError, match="spacing"):
        check_spacing(True, 3)
    with pytest.raises(ValueError, match="spacing"):
        check_spacing(np.array([True, True, True]), 3)
    with pytest.raises(ValueError, match="rx"):
        dosimetric.rmae(d, d, rx=True)


# --------------------------------------------------------------------------- one negative-dose policy
def test_negative_reference_dose_is_rejected_in_torch_and_numpy_alike():
    ref = np.linspace(0, 60, 16).reshape(1, 1, 4, 4)
    ref[0, 0, 0, 0] = -1.0
    pred = np.abs(ref)
    t_ref, t_pred = torch.from_numpy(ref), torch.from_numpy(pred)
    torch_calls = [lambda: L.masked_mse(t_pred, t_ref), lambda: L.masked_mae(t_pred, t_ref),
                   lambda: L.cascade_loss((t_pred, t_pred), t_ref),
                   lambda: L.sharp_loss(t_pred, t_ref, norm=60.0), lambda: L.sharp_weight(t_ref / 60)]
    numpy_calls = [lambda: mdose.mad(pred, ref), lambda: mdose.mad_by_dose_band(pred, ref),
                   lambda: dosimetric.rmae(pred, ref), lambda: openkbp.dose_error(pred, ref, ref > -5),
                   lambda: dvh.mean_dose(ref, ref > -5)]
    for call in torch_calls + numpy_calls:
        with pytest.raises(ValueError, match="negative"):
            call()


def test_negative_predicted_dose_is_an_ordinary_error_in_torch_and_numpy_alike():
    ref = np.linspace(0, 60, 16).reshape(1, 1, 4, 4)
    pred = ref - 5.0  # a network may predict negative doses
    assert float(L.masked_mae(torch.from_numpy(pred), torch.from_numpy(ref))) == pytest.approx(5.0)
    assert mdose.mad(pred, ref) == pytest.approx(5.0)
    assert openkbp.dose_error(pred, ref, ref >= 0) == pytest.approx(5.0)
    assert float(L.sharp_loss(torch.from_numpy(pred), torch.from_numpy(ref), 0.0, norm=60.0)) == pytest.approx(
        0.5 * (5 / 60) ** 2)


# --------------------------------------------------------------------------- NumPy errors leaking out
@pytest.mark.parametrize("shape", [(1, 8, 8), (8, 1), (1,)])
def test_mean_gradient_by_band_axis_of_length_one(shape):
    ref = np.ones(shape)
    with pytest.raises(ValueError, match="at least 2 voxels along every axis"):
        mdose.mean_gradient_by_band(ref, [1.0] * len(shape))


def test_dvh_score_accepts_voxel_dims_as_an_array():
    rng = np.random.default_rng(0)
    refs = [rng.uniform(0, 70, (6, 6, 6)) for _ in range(2)]
    preds = [r + rng.normal(0, 2, r.shape) for r in refs]
    rois = [{"PTV70": r > 40, "Brainstem": r < 20} for r in refs]
    dims = [[3.0, 3.0, 2.5], [2.0, 2.0, 2.0]]
    expected = openkbp.dvh_score(preds, refs, rois, dims)
    assert openkbp.dvh_score(preds, refs, rois, np.array(dims)) == expected
    assert openkbp.dvh_score(preds, refs, rois, torch.tensor(dims)) == expected
    assert openkbp.dvh_score(preds, refs, rois, tuple(np.array(dims))) == expected
    with pytest.raises(ValueError, match="2 voxel sizes"):
        openkbp.dvh_score(preds[:1], refs[:1], rois[:1], np.array(dims))


def test_numpy_metrics_accept_bfloat16_tensors():
    ref = torch.linspace(0, 60, 64).reshape(4, 4, 4)
    pred = (ref + 1).bfloat16()
    assert mdose.mad(pred, ref) == pytest.approx(mdose.mad(pred.float(), ref))
    assert dvh.mean_dose(ref.bfloat16(), ref > 30) == pytest.approx(dvh.mean_dose(ref.bfloat16().float(), ref > 30))


def test_binary_cross_entropy_probabilities_of_exactly_0_and_1_have_finite_gradients():
    p = torch.tensor([[[[0.0, 1.0, 0.5, 1.0]]]], requires_grad=True)
    g = torch.tensor([[[[0, 1, 1, 0]]]], dtype=torch.bool)
    loss = L.binary_cross_entropy(p, g, logits=False)
    expected = torch.nn.functional.binary_cross_entropy(p.detach(), g.float())
    assert float(loss.detach()) == pytest.approx(float(expected))
    loss.backward()
    assert bool(torch.isfinite(p.grad).all())
