"""rtlearn.models.conditional_unet: shapes, conditioning, Eq. (7) dropout, determinism, bad inputs."""
import pytest
import torch

from rtlearn.models.conditional_unet import ConditionalUNet, depth_dropout


def test_depth_dropout_is_eq7():
    assert depth_dropout(5, 0.2) == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2])
    # the paper: r0 = 0.2, layer_max = 7 -> 0.2 * l / 7
    assert depth_dropout(8, 0.2, 7) == pytest.approx([0.2 * k / 7 for k in range(8)])
    assert depth_dropout(3, 0.2, 1) == pytest.approx([0.0, 0.2, 0.2])          # capped at r0
    with pytest.raises(ValueError, match="rate_initial"):
        depth_dropout(3, 1.5)
    with pytest.raises(ValueError, match="n_levels"):
        depth_dropout(0)


def test_model_applies_growing_dropout():
    net = ConditionalUNet(2, 1, dvh_length=8, dims=2, depth=3, width=4, dropout=0.3)
    rates = [m.p for m in net.down.modules() if isinstance(m, torch.nn.Dropout)]
    assert rates == pytest.approx([0.1, 0.1, 0.2, 0.2])                      # level 0 none, then 0.3 l / 3
    assert [m.p for m in net.bottleneck if isinstance(m, torch.nn.Dropout)] == pytest.approx([0.3])


@pytest.mark.parametrize("dims,shape", [(2, (2, 4, 32, 16)), (3, (2, 4, 16, 16, 8))])
@pytest.mark.parametrize("conditional", [True, False])
def test_shapes_2d_3d(dims, shape, conditional):
    net = ConditionalUNet(4, 1, dvh_length=128, dims=dims, depth=3, width=4, conditional=conditional)
    out = net(torch.rand(*shape), torch.rand(shape[0], 128) if conditional else None)
    assert out.shape == (shape[0], 1, *shape[2:])
    assert (out >= 0).all()                                                  # ReLU output: doses


def test_output_depends_on_the_dvh_only_when_conditional():
    torch.manual_seed(0)
    x = torch.rand(2, 4, 16, 16)
    dvh_a = torch.ones(2, 128)                                              # everything receives every dose
    dvh_b = torch.linspace(1, 0, 32).pow(3).repeat(2, 4)
    net = ConditionalUNet(4, 1, 128, dims=2, depth=3, width=4, final_activation=None).eval()
    with torch.no_grad():
        a, b = net(x, dvh_a), net(x, dvh_b)
    assert (a - b).abs().max() > 1e-3 * a.abs().max()
    # the dvh enters through the bottleneck only: gradient w.r.t. it is non-zero
    d = dvh_a.clone().requires_grad_(True)
    net(x, d).sum().backward()
    assert d.grad.abs().sum() > 0
    base = ConditionalUNet(4, 1, 128, dims=2, depth=3, width=4, conditional=False, final_activation=None).eval()
    with torch.no_grad():
        torch.testing.assert_close(base(x, dvh_a), base(x, dvh_b))
        torch.testing.assert_close(base(x), base(x, dvh_a))


def test_baseline_has_fewer_bottleneck_inputs():
    cond = ConditionalUNet(4, 1, 128, dims=2, depth=3, width=4)
    base = ConditionalUNet(4, 1, 128, dims=2, depth=3, width=4, conditional=False)
    n = lambda m: sum(p.numel() for p in m.parameters())
    assert n(cond) - n(base) == 128 * cond.channels[-1]                    # only the linear layer's DVH weights


def test_channel_cap_and_paper_depth():
    net = ConditionalUNet(4, 1, 128, dims=3, depth=7, width=16, max_channels=128)
    assert net.channels == [16, 32, 64, 128, 128, 128, 128]
    # the paper's grid 128 x 128 x 64 with six 2x poolings reaches 2 x 2 x 1 before the global pooling
    net.eval()
    with torch.no_grad():
        out = net(torch.zeros(1, 4, 64, 64, 64), torch.zeros(1, 128))
    assert out.shape == (1, 1, 64, 64, 64)


def test_determinism_same_seed_same_output():
    def run():
        torch.manual_seed(3)
        net = ConditionalUNet(2, 1, 16, dims=2, depth=2, width=4).train()
        g = torch.Generator().manual_seed(1)
        x, v = torch.rand(2, 2, 8, 8, generator=g), torch.rand(2, 16, generator=g)
        torch.manual_seed(5)
        return net(x, v)

    torch.testing.assert_close(run(), run(), rtol=0, atol=0)


def test_trainer_with_two_input_keys():
    from rtlearn.train import Trainer

    torch.manual_seed(0)
    net = ConditionalUNet(2, 1, 16, dims=2, depth=2, width=4)
    batch = {"input": torch.rand(3, 2, 8, 8), "dvh": torch.rand(3, 16), "target": torch.rand(3, 1, 8, 8)}
    tr = Trainer(net, lambda p, b: ((p - b["target"]) ** 2).mean(), input_keys=("input", "dvh"),
                 scheduler=None, progress=False, device="cpu")
    hist = tr.fit([batch] * 2, epochs=2)
    assert len(hist) == 2


def test_bad_inputs():
    net = ConditionalUNet(4, 1, 128, dims=2, depth=3, width=4)
    x = torch.zeros(2, 4, 16, 16)
    with pytest.raises(ValueError, match="pass the DVH"):
        net(x)
    with pytest.raises(ValueError, match=r"dvh must be \(B, 128\)"):
        net(x, torch.zeros(2, 96))
    with pytest.raises(ValueError, match=r"dvh must be"):
        net(x, torch.zeros(3, 128))
    with pytest.raises(ValueError, match="divisible"):
        net(torch.zeros(2, 4, 18, 16), torch.zeros(2, 128))
    with pytest.raises(ValueError, match="anatomy must be"):
        net(torch.zeros(2, 3, 16, 16), torch.zeros(2, 128))
    with pytest.raises(ValueError, match="dims"):
        ConditionalUNet(4, 1, dims=4)
    with pytest.raises(ValueError, match="norm"):
        ConditionalUNet(4, 1, dims=2, norm="layer")
    with pytest.raises(ValueError, match="final_activation"):
        ConditionalUNet(4, 1, dims=2, final_activation="tanh")


# ---- output normalisation to the PTV mean ----------------------------------------------------------------------
def _anatomy(b=3, n=16):
    a = torch.zeros(b, 4, n, n)
    a[:, 0, 5:9, 6:11] = 1.0                                              # PTV
    a[:, 3, 2:14, 2:14] = 1.0                                             # body
    return a


def test_normalise_channel_gives_a_ptv_mean_of_one():
    torch.manual_seed(0)
    a, d = _anatomy(), torch.rand(3, 16)
    raw = ConditionalUNet(4, 1, 16, dims=2, depth=3, width=4, dropout=0.0, final_activation="sigmoid").eval()
    net = ConditionalUNet(4, 1, 16, dims=2, depth=3, width=4, dropout=0.0, final_activation="sigmoid",
                          normalise_channel=0).eval()
    net.load_state_dict(raw.state_dict())
    y_raw, y = raw(a, d), net(a, d)
    ptv = a[:, :1] > 0.5
    means = torch.stack([y[i][ptv[i]].mean() for i in range(3)])
    torch.testing.assert_close(means, torch.ones(3), rtol=0, atol=1e-5)
    ref = y_raw / torch.stack([y_raw[i][ptv[i]].mean() for i in range(3)]).reshape(3, 1, 1, 1)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-6)             # a pure rescaling of the raw output
    assert not torch.allclose(torch.stack([y_raw[i][ptv[i]].mean() for i in range(3)]), torch.ones(3), atol=1e-2)


def test_normalise_channel_gradient_and_bf16():
    torch.manual_seed(1)
    net = ConditionalUNet(4, 1, 16, dims=2, depth=3, width=4, dropout=0.0, final_activation="sigmoid",
                          normalise_channel=0)
    a, d = _anatomy(2), torch.rand(2, 16)
    net(a, d).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters() if p.requires_grad)
    net.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = net(a, d)
    ptv = a[:, :1] > 0.5
    assert abs(float(y[0][ptv[0]].float().mean()) - 1.0) < 2e-2


def test_normalise_channel_rejects_bad_input():
    with pytest.raises(ValueError, match="normalise_channel"):
        ConditionalUNet(4, 1, 16, dims=2, depth=3, width=4, normalise_channel=4)
    with pytest.raises(ValueError, match="normalise_channel"):
        ConditionalUNet(4, 1, 16, dims=2, depth=3, width=4, normalise_channel=True)
    net = ConditionalUNet(4, 1, 16, dims=2, depth=3, width=4, normalise_channel=0).eval()
    a = _anatomy(2)
    a[1, 0] = 0.0
    with pytest.raises(ValueError, match="empty mask"):
        net(a, torch.rand(2, 16))
