"""A configurable U-Net for 2D and 3D dose prediction and segmentation.

The encoder-decoder with skip connections of Ronneberger et al. (2015), the
backbone of the sharp-loss paper (Bai et al. 2021) and of most dose
predictors: ``depth`` resolution levels, each two (conv, norm, ReLU) blocks;
max-pooling down, transposed convolution up; channels double at every level
from ``width``.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["UNet", "count_parameters", "conv_block"]

_ACTIVATIONS = {None: nn.Identity, "relu": nn.ReLU, "sigmoid": nn.Sigmoid, "softmax": lambda: nn.Softmax(dim=1)}


def _layers(dims: int):
    if dims == 2:
        return nn.Conv2d, nn.ConvTranspose2d, nn.MaxPool2d, nn.BatchNorm2d, nn.InstanceNorm2d, nn.Dropout2d
    if dims == 3:
        return nn.Conv3d, nn.ConvTranspose3d, nn.MaxPool3d, nn.BatchNorm3d, nn.InstanceNorm3d, nn.Dropout3d
    raise ValueError(f"dims must be 2 or 3, got {dims!r}")


def _norm(kind, channels, dims):
    _, _, _, bn, inorm, _ = _layers(dims)
    if kind is None or kind == "none":
        return nn.Identity()
    if kind == "batch":
        return bn(channels)
    if kind == "instance":
        return inorm(channels, affine=True)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    raise ValueError(f"norm must be 'batch', 'instance', 'group' or None, got {kind!r}")


def conv_block(cin: int, cout: int, dims: int = 2, norm="batch", dropout: float = 0.0) -> nn.Sequential:
    """Two 3x3(x3) convolutions, each followed by normalisation and ReLU; optional dropout."""
    conv, *_, drop = _layers(dims)
    bias = norm in (None, "none")
    layers = [conv(cin, cout, 3, padding=1, bias=bias), _norm(norm, cout, dims), nn.ReLU(inplace=True),
              conv(cout, cout, 3, padding=1, bias=bias), _norm(norm, cout, dims), nn.ReLU(inplace=True)]
    if dropout > 0:
        layers.append(drop(dropout))
    return nn.Sequential(*layers)


class UNet(nn.Module):
    """U-Net with configurable dimension, depth, width, normalisation and dropout.

    Parameters
    ----------
    in_channels, out_channels : int
        Input channels (structures, CT, ...) and output channels (1 for dose,
        the number of classes for segmentation).
    dims : {2, 3}
        2D slices or 3D volumes.
    depth : int
        Number of resolution levels (>= 1); spatial sizes must be divisible by
        ``2 ** (depth - 1)``.
    width : int
        Channels at the first level; level ``k`` has ``width * 2**k``.
    norm : {"batch", "instance", "group", None}
        Normalisation after each convolution.
    dropout : float or sequence of float
        Dropout probability per level (a single value is used at every level
        below the first); the bottleneck uses the last value.
    final_activation : {None, "relu", "sigmoid", "softmax"}
        Applied to the output: ``relu`` keeps doses non-negative.

    Examples
    --------
    >>> net = UNet(1, 1, dims=2, depth=3, width=8)
    >>> net(torch.zeros(2, 1, 32, 32)).shape
    torch.Size([2, 1, 32, 32])
    """

    def __init__(self, in_channels: int, out_channels: int, dims: int = 2, depth: int = 4, width: int = 32,
                 norm="batch", dropout=0.0, final_activation=None):
        super().__init__()
        conv, up, pool, *_ = _layers(dims)
        if depth < 1 or width < 1 or in_channels < 1 or out_channels < 1:
            raise ValueError("depth, width, in_channels and out_channels must all be >= 1")
        if final_activation not in _ACTIVATIONS:
            raise ValueError(f"final_activation must be one of {list(_ACTIVATIONS)}, got {final_activation!r}")
        drops = list(dropout) if isinstance(dropout, (list, tuple)) else [0.0] + [float(dropout)] * (depth - 1)
        if len(drops) != depth:
            raise ValueError(f"dropout needs {depth} values (one per level), got {len(drops)}")
        self.dims, self.depth, self.in_channels = dims, depth, in_channels
        chans = [width * 2**k for k in range(depth)]
        self.down = nn.ModuleList()
        cin = in_channels
        for k, c in enumerate(chans):
            self.down.append(conv_block(cin, c, dims, norm, drops[k]))
            cin = c
        self.pool = pool(2)
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for k in reversed(range(depth - 1)):
            self.up.append(up(chans[k + 1], chans[k], 2, stride=2))
            self.dec.append(conv_block(2 * chans[k], chans[k], dims, norm, drops[k]))
        self.head = conv(chans[0], out_channels, 1)
        self.final = _ACTIVATIONS[final_activation]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != self.dims + 2 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"UNet expects input of shape (B, {self.in_channels}, {'H, W' if self.dims == 2 else 'D, H, W'}), "
                f"got {tuple(x.shape)}")
        f = 2 ** (self.depth - 1)
        if any(s % f for s in x.shape[2:]):
            raise ValueError(f"spatial size {tuple(x.shape[2:])} must be divisible by 2**(depth-1) = {f}; pad or crop")
        skips = []
        for k, block in enumerate(self.down):
            x = block(x)
            if k < self.depth - 1:
                skips.append(x)
                x = self.pool(x)
        for up, dec in zip(self.up, self.dec):
            x = dec(torch.cat([up(x), skips.pop()], dim=1))
        return self.final(self.head(x))


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters of a model."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
