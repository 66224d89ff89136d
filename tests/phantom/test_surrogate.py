"""rtlearn.phantom.surrogate: the differentiable beam surrogate of the dose engine, and the loss built on it."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from rtlearn.losses.dose_guided import surrogate_guided_loss
from rtlearn.phantom import DoseEngine, case_seed, default_angles, make_patient
from rtlearn.phantom.surrogate import BeamSurrogate

torch.set_num_threads(1)
SHAPE, SP = (48, 48), 4.8


@pytest.fixture(scope="module")
def patients():
    # the first two phantom brains of the DOSELO tests (rtlearn.experiments.doselo.brain_cases(4, seed=5, ...))
    return [make_patient("brain", case_seed(5, i), dims=2, shape=SHAPE, spacing=SP) for i in range(2)]


def test_beam_surrogate_is_engine_back_projection(patients):
    sur = BeamSurrogate(patients[:2], n_beams=5, beamlet_mm=9.6)
    p = patients[1]
    t = torch.as_tensor(p.masks["GTV"], dtype=torch.float32)
    d = sur(t[None, None], torch.tensor([1]))[0, 0]
    fov = float(np.hypot(*(np.asarray(SHAPE) * SP)))
    eng = DoseEngine(p.density, p.body, p.spacing, default_angles(None, 5), field_mm=fov, isocentre=(0.0, 0.0),
                     beamlet_mm=9.6)
    ref = eng.dose(eng.adjoint(t))                                   # A A^T S from the engine itself
    ref = 60.0 * ref / ref[p.masks["GTV"]].mean()
    assert torch.allclose(d, ref, rtol=1e-4, atol=1e-3)
    assert float(d[torch.as_tensor(p.masks["GTV"])].mean()) == pytest.approx(60.0, rel=1e-5)
    assert float(d[torch.as_tensor(~p.body)].abs().max()) == 0.0   # no dose outside the body


def test_beam_surrogate_gradient_and_loss(patients):
    sur = BeamSurrogate(patients[:2], n_beams=5, beamlet_mm=9.6).double()
    t = torch.as_tensor(np.stack([p.masks["GTV"] for p in patients[:2]])[:, None], dtype=torch.float64)
    s = (0.3 + 0.4 * torch.rand(t.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    s = s[..., 10:22, 10:22].contiguous().requires_grad_(True)

    case = torch.tensor([0, 1])
    scale = sur.scale_for(t, case)                    # monitor units fixed by the true target: D linear in S

    def f(small):
        full = torch.nn.functional.pad(small, (10, 26, 10, 26))
        return sur(full, case, scale=scale).pow(2).mean()

    assert torch.autograd.gradcheck(f, (s,), eps=1e-6, atol=1e-5, rtol=1e-4)
    logits = torch.zeros(t.shape, dtype=torch.float32, requires_grad=True)
    batch = {"target": t.float(), "case": torch.tensor([0, 1])}
    sur32 = sur.float()
    loss = surrogate_guided_loss(logits, batch, sur32, lam=1.0)
    loss.backward()
    assert logits.grad.abs().sum() > 0
    exact = surrogate_guided_loss(t.float() * 40 - 20, batch, sur32, lam=1.0)   # ~ the truth
    bce_only = surrogate_guided_loss(t.float() * 40 - 20, batch, sur32, lam=0.0)
    assert float(exact) == pytest.approx(float(bce_only), abs=1e-6)
    with pytest.raises(ValueError, match="lam"):
        surrogate_guided_loss(logits, batch, sur32, lam=-0.5)
    with pytest.raises(ValueError, match="target must be"):
        sur32(torch.zeros(1, 1, 8, 8), torch.tensor([0]))
