"""rtlearn.models.scaled: a network's output times a fixed dose scale, stage by stage for a cascade."""
from __future__ import annotations

import torch

from rtlearn.models.cascade import CascadeUNet
from rtlearn.models.scaled import ScaledDose


def test_scaled_dose_scales_every_stage():
    torch.manual_seed(0)
    net = CascadeUNet(6, 1, depth=2, width=4).eval()
    x = torch.randn(1, 6, 16, 16)
    s1, s2 = ScaledDose(net, 60.0)(x)
    r1, r2 = net(x)
    assert torch.allclose(s1, 60 * r1) and torch.allclose(s2, 60 * r2)
    assert ScaledDose(net, 60.0).in_channels == 6
