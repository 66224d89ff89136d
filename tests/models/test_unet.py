"""rtlearn.models.UNet: shapes, configurations, bad inputs."""
import pytest
import torch

from rtlearn.models import UNet, count_parameters


@pytest.mark.parametrize("dims,shape", [(2, (2, 3, 32, 48)), (3, (1, 3, 16, 16, 8))])
@pytest.mark.parametrize("norm", ["batch", "instance", "group", None])
def test_shapes(dims, shape, norm):
    net = UNet(3, 2, dims=dims, depth=3, width=4, norm=norm, dropout=0.1)
    assert net(torch.randn(*shape)).shape == (shape[0], 2, *shape[2:])


def test_final_activations():
    x = torch.randn(2, 1, 16, 16)
    assert (UNet(1, 1, depth=2, width=4, final_activation="relu")(x) >= 0).all()
    p = UNet(1, 3, depth=2, width=4, final_activation="softmax")(x)
    torch.testing.assert_close(p.sum(1), torch.ones(2, 16, 16))


def test_parameter_count_grows_with_width_and_depth():
    n1 = count_parameters(UNet(1, 1, depth=3, width=8))
    assert count_parameters(UNet(1, 1, depth=3, width=16)) > 3 * n1
    assert count_parameters(UNet(1, 1, depth=4, width=8)) > n1


def test_bad_inputs():
    net = UNet(2, 1, depth=3, width=4)
    with pytest.raises(ValueError, match="divisible"):
        net(torch.zeros(1, 2, 30, 32))
    with pytest.raises(ValueError, match="expects input"):
        net(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="dims"):
        UNet(1, 1, dims=4)
    with pytest.raises(ValueError, match="norm"):
        UNet(1, 1, norm="layer")
    with pytest.raises(ValueError, match="dropout"):
        UNet(1, 1, depth=3, dropout=[0.1, 0.2])
