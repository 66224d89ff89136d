"""Dose mimicking: a deliverable plan closest to a desired (e.g. predicted) dose."""
import numpy as np
import pytest
import torch

from rtlearn.phantom import DoseEngine, make_patient, mimic_plan, optimise_plan
from rtlearn.phantom.optimise import _MimicObjective

GRID = dict(dims=2, shape=(48, 48), spacing=8.0)


@pytest.fixture(scope="module")
def case():
    p = make_patient("prostate", 0, **GRID)
    assert {"PTV", "Rectum", "Bladder"} <= set(p.masks)
    eng = DoseEngine.for_patient(p)
    plan = optimise_plan(p, eng, max_iter=50, normalise=False)
    rx = p.prescriptions["PTV"]
    binary = np.where(p.masks["PTV"], rx, 0.0)       # Rx in the PTV, exactly 0 outside: not deliverable
    return p, eng, plan, rx, binary


def _rms(a, b, mask):
    return float(np.sqrt(np.mean((np.asarray(a, float)[mask] - np.asarray(b, float)[mask]) ** 2)))


def test_deliverable_dose_is_recovered(case):
    """The dose of an optimised plan is deliverable: mimicking it gives it back."""
    p, eng, plan, rx, _ = case
    m = mimic_plan(p, plan.dose, eng, normalise=False)
    assert m.info["rms_gy"] < 0.01 * rx
    assert _rms(m.dose, plan.dose, p.body) < 0.01 * rx
    assert np.abs(m.dose - plan.dose).max() < 0.03 * rx
    assert m.info["method"] == "mimic" and m.info["scale"] == 1.0 and m.weights.min() >= 0


def test_closed_form_gradient_equals_autograd(case):
    p, _, _, rx, binary = case
    eng = DoseEngine.for_patient(p, dtype=torch.float64)
    sw = {"PTV": 3.0, "Rectum": 7.0, "body": 0.5}
    obj = _MimicObjective(p, binary, sw)
    w = torch.rand(eng.n_beamlets, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2.0
    w.requires_grad_(True)
    dose = eng.dose(w)
    # the objective built independently from the masks
    ptv = p.masks["PTV"]
    structs = {"PTV": ptv}
    for o in p.oars:
        structs[o] = p.masks[o] & ~ptv
    structs["body"] = p.body & ~np.any([p.masks[k] for k in ["PTV"] + p.oars], axis=0)
    P = torch.as_tensor(binary)
    loss = 0.0
    for name, m in structs.items():
        if m.any():
            mt = torch.as_tensor(m)
            loss = loss + sw.get(name, 1.0) / m.sum() * ((dose[mt] - P[mt]) ** 2).sum() / rx ** 2
    loss.backward()
    val, g = obj.value_and_grad(dose.detach())
    assert float(val) == pytest.approx(float(loss.detach()), rel=1e-12)
    assert float(obj.value(dose.detach())) == pytest.approx(float(val), rel=1e-12)
    np.testing.assert_allclose(eng.adjoint(g).numpy(), w.grad.numpy(), rtol=1e-9, atol=1e-12 * w.grad.abs().max())


def test_non_deliverable_dose(case):
    p, eng, plan, rx, binary = case
    ptv = p.masks["PTV"]
    a = mimic_plan(p, binary, eng)
    b = mimic_plan(p, binary, eng)
    np.testing.assert_array_equal(a.dose, b.dose)                 # deterministic
    assert a.info["rms_gy"] > 0.1 * rx                            # far from achievable
    assert np.percentile(a.dose[ptv], 5) == pytest.approx(rx, rel=1e-3)
    assert a.dose.dtype == np.float32 and a.dose.min() >= 0 and a.oar_weights == {}
    assert {"iterations", "evaluations", "objective", "scale", "seconds", "rms_gy"} <= set(a.info)
    # the solution is at least as good as the optimiser's plan (best scaled) under the mimic objective
    obj = _MimicObjective(p, binary)
    d_opt = torch.as_tensor(plan.dose.astype(np.float64))
    best = min(float(obj.value(s * d_opt)) for s in np.linspace(0.5, 1.5, 41))
    assert a.info["objective"] <= best + 1e-9
    # with the target weighted up the normalised PTV dose is homogeneous around Rx
    h = mimic_plan(p, binary, eng, structure_weights={"PTV": 100.0})
    assert h.dose[ptv].mean() == pytest.approx(rx, rel=0.03)
    assert np.percentile(h.dose[ptv], 98) < 1.06 * rx


def test_structure_weight_lowers_its_mismatch(case):
    p, eng, _, rx, binary = case
    rect = p.masks["Rectum"] & ~p.masks["PTV"]
    lo = mimic_plan(p, binary, eng, structure_weights={"Rectum": 1.0}, normalise=False)
    hi = mimic_plan(p, binary, eng, structure_weights={"Rectum": 100.0}, normalise=False)
    assert _rms(hi.dose, binary, rect) < 0.7 * _rms(lo.dose, binary, rect)
    assert hi.info["structure_weights"]["Rectum"] == 100.0


def test_bad_inputs_and_low_precision(case):
    p, eng, plan, rx, binary = case
    with pytest.raises(ValueError, match="shape"):
        mimic_plan(p, np.zeros((10, 10)), eng)
    bad = binary.copy()
    bad[20, 20] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        mimic_plan(p, bad, eng)
    bad[20, 20] = np.inf
    with pytest.raises(ValueError, match="infinite"):
        mimic_plan(p, bad, eng)
    with pytest.raises(ValueError, match="negative"):
        mimic_plan(p, binary - 1.0, eng)
    with pytest.raises(ValueError, match="valid names.*body"):
        mimic_plan(p, binary, eng, structure_weights={"Heart": 1.0})
    with pytest.raises(ValueError, match="Rectum.*>= 0"):
        mimic_plan(p, binary, eng, structure_weights={"Rectum": -1.0})
    with pytest.raises(ValueError, match="weight 0"):
        mimic_plan(p, binary, eng, structure_weights={n: 0.0 for n in ["PTV", "body"] + p.oars})
    with pytest.raises(TypeError, match="Patient"):
        mimic_plan({"site": "prostate"}, binary)
    with pytest.raises(ValueError, match="max_iter"):
        mimic_plan(p, binary, eng, max_iter=0)
    d32 = torch.as_tensor(plan.dose)
    a = mimic_plan(p, d32, eng, normalise=False)
    b = mimic_plan(p, d32.to(torch.bfloat16), eng, normalise=False)
    c = mimic_plan(p, d32.to(torch.float16).numpy(), eng, normalise=False)
    np.testing.assert_allclose(b.dose, a.dose, atol=0.01 * rx)
    np.testing.assert_allclose(c.dose, a.dose, atol=0.01 * rx)
