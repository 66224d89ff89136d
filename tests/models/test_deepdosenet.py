"""rtlearn.models.deepdosenet: blocks, shapes, receptive field of the dilated block, parameter count."""
import pytest
import torch

from rtlearn.models import UNet, count_parameters
from rtlearn.models.deepdosenet import PAPER_DILATIONS, DeepDoseNet, DilatedDenseBlock, ResBlock


@pytest.mark.parametrize("dims,shape", [(2, (2, 3, 32, 48)), (3, (1, 3, 16, 16, 32))])
def test_shapes_and_relu_output(dims, shape):
    net = DeepDoseNet(3, 1, dims=dims, width=4)
    out = net(torch.randn(*shape))
    assert out.shape == (shape[0], 1, *shape[2:])
    assert (out >= 0).all()


def test_architecture_counts_match_the_paper():
    net = DeepDoseNet(12, 1, dims=3, width=8)
    assert len(net.encoder) == 3 and len(net.decoder) == 3                 # three ResNet blocks each side
    assert len(net.up) + 1 == 4                                             # four transposed convolutions
    assert net.stem[0].stride == (2, 2, 2)
    assert net.mfa.dilations == PAPER_DILATIONS == (1, 2, 5, 9)
    assert [layer[0].dilation for layer in net.mfa.layers] == [(r,) * 3 for r in (1, 2, 5, 9)]


def test_resblock_identity_shortcut_and_projection():
    block = ResBlock(4, 4, dims=2, norm=None)
    assert isinstance(block.shortcut, torch.nn.Identity)
    for p in block.body.parameters():                                      # zero residual branch -> ReLU(x)
        torch.nn.init.zeros_(p)
    x = torch.randn(1, 4, 8, 8)
    torch.testing.assert_close(block(x), torch.relu(x))
    assert isinstance(ResBlock(4, 8, dims=2).shortcut, torch.nn.Conv2d)


def test_dilated_dense_block_receptive_field():
    # a unit impulse reaches exactly as far as the sum of the (dilation) radii, 1 + 2 + 5 + 9 = 17 voxels
    block = DilatedDenseBlock(1, 1, growth=1, dims=2, norm=None)
    for m in block.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.constant_(m.weight, 0.1)
            torch.nn.init.zeros_(m.bias)
    x = torch.ones(1, 1, 41, 41, requires_grad=True)           # positive: every ReLU passes
    block(x)[0, 0, 20, 20].backward()
    reach = x.grad[0, 0].abs().sum(0).nonzero().flatten()
    assert (int(reach.min()), int(reach.max())) == (20 - 17, 20 + 17)
    # channels: cin + 4 * growth before the 1x1 fusion
    assert DilatedDenseBlock(8, 16, growth=4, dims=2).fuse[0].in_channels == 8 + 4 * 4


def test_parameter_count_sanity_vs_unet():
    ddn = count_parameters(DeepDoseNet(12, 1, dims=3, width=16))
    unet = count_parameters(UNet(12, 1, dims=3, depth=4, width=16))
    # same order of magnitude as a 4-level U-Net of the same width
    assert 0.3 * unet < ddn < 3 * unet
    assert count_parameters(DeepDoseNet(12, 1, dims=3, width=32)) > 3 * ddn


def test_deterministic_forward():
    def run():
        torch.manual_seed(0)
        net = DeepDoseNet(2, 1, dims=2, width=4).eval()
        return net(torch.rand(1, 2, 16, 16, generator=torch.Generator().manual_seed(1)))

    torch.testing.assert_close(run(), run(), rtol=0, atol=0)


def test_bad_inputs():
    net = DeepDoseNet(2, 1, dims=2, width=4)
    with pytest.raises(ValueError, match="divisible by 2\\*\\*\\(depth\\+1\\) = 16"):
        net(torch.zeros(1, 2, 24, 32))
    with pytest.raises(ValueError, match="expects"):
        net(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="dims"):
        DeepDoseNet(2, 1, dims=1)
    with pytest.raises(ValueError, match="dilations"):
        DeepDoseNet(2, 1, dims=2, dilations=())
    with pytest.raises(ValueError, match="width"):
        DeepDoseNet(2, 1, dims=2, width=0)
    with pytest.raises(ValueError, match="final_activation"):
        DeepDoseNet(2, 1, dims=2, final_activation="sigmoid")
