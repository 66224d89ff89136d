r"""DeepDoseNet: a U-Net with ResNet blocks and a dilated DenseNet bottleneck.

The dose predictor of :cite:p:`soomro2022deepdosenet`, trained there on
OpenKBP with MSE, MAE and MAE + DVH losses:

* **encoder**: a 3x3x3 convolution with stride 2, then ``depth`` (the paper:
  3) ResNet blocks, each followed by 2x2x2 max-pooling;
* **multiscale feature aggregation (MFA)**: a dilated DenseNet block, 3x3x3
  convolutions with dilation rates 1, 2, 5, 9 (receptive fields 3, 5, 11,
  19), each fed the concatenation of the block input and all earlier
  outputs (DenseNet connectivity, Huang et al. 2017), so the receptive field grows without
  losing resolution;
* **decoder**: ``depth + 1`` (the paper: 4) transposed convolutions with
  stride 2, ``depth`` ResNet blocks fed the up-sampled features concatenated
  with the encoder's skip, and a 1x1x1 convolution followed by ReLU.

A ResNet block is

.. math:: y = \mathrm{ReLU}\big(x W_s + \mathrm{BN}(W_2 * \mathrm{ReLU}(\mathrm{BN}(W_1 * x)))\big),

:math:`W_s` a 1x1 projection when the channel count changes (identity
otherwise).

Choices the paper leaves open (stated, not taken from it): the channel
widths (``width`` at the first block, doubling per level, the MFA at
``2 * `` the last encoder width); the DenseNet growth rate; the paper's text
says the dilated block has "five" convolutions but lists four rates, so we
use the four dilated convolutions plus a fifth, 1x1x1 fusion convolution
that maps the concatenated features to the MFA's output channels; the
skip feeding the first decoder block is the last encoder block's output
before pooling (and so on upwards); the last up-sampling (back to full
resolution, undoing the stride-2 stem) has no skip.
"""
from __future__ import annotations

import torch
from torch import nn

from .unet import _layers
from .unet import _norm as _unet_norm

__all__ = ["DeepDoseNet", "ResBlock", "DilatedDenseBlock", "PAPER_DILATIONS"]

#: Dilation rates of the MFA block in :cite:p:`soomro2022deepdosenet`.
PAPER_DILATIONS = (1, 2, 5, 9)


def _norm(channels, dims, norm):
    return _unet_norm(norm, channels, dims)


class ResBlock(nn.Module):
    r"""Two 3x3(x3) convolutions with normalisation and a residual shortcut.

    .. math:: y = \mathrm{ReLU}\big(S(x) + \mathrm{N}(W_2 * \mathrm{ReLU}(\mathrm{N}(W_1 * x)))\big)

    with :math:`S` the identity, or a 1x1 convolution when ``cin != cout``.
    """

    def __init__(self, cin: int, cout: int, dims: int = 3, norm="batch"):
        super().__init__()
        conv = _layers(dims)[0]
        bias = norm is None
        self.body = nn.Sequential(conv(cin, cout, 3, padding=1, bias=bias), _norm(cout, dims, norm),
                                  nn.ReLU(inplace=True), conv(cout, cout, 3, padding=1, bias=bias),
                                  _norm(cout, dims, norm))
        self.shortcut = nn.Identity() if cin == cout else conv(cin, cout, 1)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.act(self.body(x) + self.shortcut(x))


class DilatedDenseBlock(nn.Module):
    r"""Densely connected dilated convolutions (the MFA of :cite:p:`soomro2022deepdosenet`).

    .. math::

        x_k = \mathrm{ReLU}\big(\mathrm{N}(W_k *_{r_k} [x_0; x_1; \dots; x_{k-1}])\big),
        \qquad y = \mathrm{ReLU}\big(\mathrm{N}(W_f\,[x_0; \dots; x_K])\big)

    :math:`*_{r}` a 3x3(x3) convolution with dilation :math:`r` (padding
    :math:`r` keeps the size; receptive field :math:`2r + 1`), each adding
    ``growth`` channels; :math:`W_f` a 1x1(x1) fusion to ``cout`` channels.
    """

    def __init__(self, cin: int, cout: int, growth: int, dilations=PAPER_DILATIONS, dims: int = 3, norm="batch"):
        super().__init__()
        conv = _layers(dims)[0]
        dilations = tuple(int(r) for r in dilations)
        if not dilations or min(dilations) < 1:
            raise ValueError(f"dilations must be a non-empty sequence of integers >= 1, got {dilations!r}")
        if growth < 1:
            raise ValueError(f"growth must be >= 1, got {growth!r}")
        self.dilations = dilations
        self.layers = nn.ModuleList()
        c = cin
        for r in dilations:
            self.layers.append(nn.Sequential(conv(c, growth, 3, padding=r, dilation=r, bias=norm is None),
                                             _norm(growth, dims, norm), nn.ReLU(inplace=True)))
            c += growth
        self.fuse = nn.Sequential(conv(c, cout, 1, bias=norm is None), _norm(cout, dims, norm), nn.ReLU(inplace=True))

    def forward(self, x):
        feats = [x]
        for layer in self.layers:
            feats.append(layer(torch.cat(feats, dim=1)))
        return self.fuse(torch.cat(feats, dim=1))


class DeepDoseNet(nn.Module):
    r"""DeepDoseNet dose predictor :cite:p:`soomro2022deepdosenet` (2D or 3D).

    Parameters
    ----------
    in_channels : int
        Input channels (CT and structure masks; OpenKBP: up to 12 in the paper).
    out_channels : int
        1 for dose.
    dims : {2, 3}
        3 as in the paper; 2 for quick experiments on slices.
    depth : int
        ResNet blocks in the encoder (and decoder); the paper: 3. Spatial
        sizes must be divisible by :math:`2^{depth+1}` (16 for the paper's
        128³ grid gives an 8³ MFA grid).
    width : int
        Channels of the stem and the first ResNet block (doubling per level).
        The paper does not state its widths; 32 is our default.
    growth : int, optional
        Channels each dilated convolution adds; default ``width``.
    dilations : sequence of int
        MFA dilation rates; the paper's are (1, 2, 5, 9).
    norm : {"batch", "group", None}
    final_activation : {"relu", None}
        ReLU (the paper) keeps the dose non-negative.

    Examples
    --------
    >>> net = DeepDoseNet(4, 1, dims=2, width=8)
    >>> net(torch.zeros(2, 4, 32, 32)).shape
    torch.Size([2, 1, 32, 32])
    """

    def __init__(self, in_channels: int, out_channels: int = 1, dims: int = 3, depth: int = 3, width: int = 32,
                 growth: int | None = None, dilations=PAPER_DILATIONS, norm="batch", final_activation="relu"):
        super().__init__()
        conv, up, pool, *_ = _layers(dims)
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels), ("depth", depth),
                        ("width", width)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if final_activation not in ("relu", None):
            raise ValueError(f"final_activation must be 'relu' or None, got {final_activation!r}")
        self.dims, self.depth, self.in_channels = dims, depth, in_channels
        chans = [width * 2**k for k in range(depth)]
        self.stem = nn.Sequential(conv(in_channels, width, 3, stride=2, padding=1, bias=norm is None),
                                  _norm(width, dims, norm), nn.ReLU(inplace=True))
        self.encoder = nn.ModuleList()
        c = width
        for ck in chans:
            self.encoder.append(ResBlock(c, ck, dims, norm))
            c = ck
        self.pool = pool(2)
        c_mfa = 2 * chans[-1]
        self.mfa = DilatedDenseBlock(c, c_mfa, width if growth is None else growth, dilations, dims, norm)
        self.up = nn.ModuleList()
        self.decoder = nn.ModuleList()
        c = c_mfa
        for ck in reversed(chans):
            self.up.append(up(c, ck, 2, stride=2))
            self.decoder.append(ResBlock(2 * ck, ck, dims, norm))
            c = ck
        self.up_final = up(c, width, 2, stride=2)
        self.head = conv(width, out_channels, 1)
        self.final = nn.ReLU() if final_activation == "relu" else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != self.dims + 2 or x.shape[1] != self.in_channels:
            raise ValueError(f"DeepDoseNet expects (B, {self.in_channels}, {'H, W' if self.dims == 2 else 'D, H, W'})"
                             f", got {tuple(x.shape)}")
        f = 2 ** (self.depth + 1)
        if any(s % f for s in x.shape[2:]):
            raise ValueError(f"spatial size {tuple(x.shape[2:])} must be divisible by 2**(depth+1) = {f}; pad or crop")
        x = self.stem(x)
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.mfa(x)
        for up, block in zip(self.up, self.decoder):
            x = block(torch.cat([up(x), skips.pop()], dim=1))
        return self.final(self.head(self.up_final(x)))
