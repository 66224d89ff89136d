"""rtlearn.models.cascade: the two-stage U-Net of DOSELO's dose predictor (shapes, stage flag, bad inputs)."""
from __future__ import annotations

import pytest
import torch

from rtlearn.models.cascade import CascadeUNet, final_output

torch.set_num_threads(1)
H = W = 16


@pytest.mark.parametrize("dims", [2, 3])
def test_cascade_shapes_and_flag(dims):
    net = CascadeUNet(3, 1, dims=dims, depth=2, width=4)
    x = torch.randn((2, 3) + ((H, W) if dims == 2 else (8, 8, 8)))
    y1, y2 = net(x)
    assert y1.shape == y2.shape == (2, 1) + x.shape[2:]
    assert net.stage2.in_channels == 3 + 1  # the second U-Net sees the first's output and the input
    assert torch.equal(net(x, return_stages=False), y2)
    assert torch.equal(final_output(net(x)), y2)
    net.eval()
    assert torch.allclose(net.predict(x), net(x)[1])
    assert CascadeUNet(3, 1, depth=2, width=4, return_stages=False)(torch.zeros(1, 3, 8, 8)).shape == (1, 1, 8, 8)


def test_cascade_stage2_depends_on_stage1():
    net = CascadeUNet(2, 1, depth=2, width=4, norm=None).eval()
    x = torch.randn(1, 2, 8, 8)
    y2 = net(x)[1]
    with torch.no_grad():
        net.stage1.head.bias.add_(1.0)  # change only stage 1's output
    assert not torch.allclose(net(x)[1], y2)


def test_cascade_bad_inputs():
    net = CascadeUNet(3, 1, depth=2, width=4)
    with pytest.raises(ValueError, match="expects input"):
        net(torch.zeros(1, 2, 8, 8))
    with pytest.raises(ValueError, match="depth"):
        CascadeUNet(3, 1, depth=(2, 2, 2))
    with pytest.raises(ValueError, match="softmax"):
        CascadeUNet(3, 1, final_activation="softmax")
