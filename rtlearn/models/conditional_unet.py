r"""U-Net conditioned on a desired DVH vector at a 1x1(x1) bottleneck.

The network of :cite:p:`ma2021pareto` predicts a dose :math:`\phi_w(X, \mathcal{D})`
from the anatomy :math:`X` (one channel per structure) *and* a desired DVH
vector :math:`\mathcal{D}` (see :func:`rtlearn.pareto.dvh_vector`). Its
encoder pools the anatomy down to a single voxel, the DVH vector is joined to
those features there, and a decoder with skip connections expands the result
back to a dose. Dropout grows with depth, Eq. (7) of the paper,

.. math:: p_\ell = r_0\, \frac{\ell}{\ell_{max}}

(:math:`r_0 = 0.2`, :math:`\ell_{max} = 7` there), see :func:`depth_dropout`.

Differences from the paper, all deliberate: the paper reaches 1x1x1 with
seven max-poolings of a 128x128x64 grid and up-samples step by step; here the
encoder has ``depth`` levels (poolings by 2) followed by a *global* max-pool,
so any grid divisible by :math:`2^{depth-1}` works, and the joined vector is
mapped by a linear layer and broadcast back to the coarsest level. With
``conditional=False`` the same network ignores the DVH: the "population
average" baseline the paper compares against.
"""
from __future__ import annotations

import torch
from torch import nn

from .unet import _layers, _norm

__all__ = ["ConditionalUNet", "depth_dropout"]

_ACTIVATIONS = {None: nn.Identity, "relu": nn.ReLU, "sigmoid": nn.Sigmoid}


def depth_dropout(n_levels: int, rate_initial: float = 0.2, layer_max: int | None = None) -> list:
    r"""Dropout rate per level, growing linearly with depth (Eq. 7 of :cite:p:`ma2021pareto`).

    .. math:: p_\ell = r_0\,\frac{\ell}{\ell_{max}}, \qquad \ell = 0, \dots, n_{levels}-1

    Level 0 (full resolution) gets no dropout; level :math:`\ell_{max}`
    (default ``n_levels - 1``, the bottleneck) gets :math:`r_0`. The paper
    used :math:`r_0 = 0.2` and :math:`\ell_{max} = 7` (its seven poolings).

    Examples
    --------
    >>> depth_dropout(5, 0.2)
    [0.0, 0.05, 0.1, 0.15, 0.2]
    """
    if not isinstance(n_levels, int) or n_levels < 1:
        raise ValueError(f"n_levels must be an integer >= 1, got {n_levels!r}")
    if not 0 <= rate_initial < 1:
        raise ValueError(f"rate_initial must be in [0, 1), got {rate_initial!r}")
    layer_max = max(n_levels - 1, 1) if layer_max is None else layer_max
    if not isinstance(layer_max, int) or layer_max < 1:
        raise ValueError(f"layer_max must be an integer >= 1, got {layer_max!r}")
    rates = [round(rate_initial * min(level, layer_max) / layer_max, 12) for level in range(n_levels)]
    return rates


def _block(cin, cout, dims, norm, p):
    """(conv 3, norm, ReLU, dropout) twice: dropout after every convolution, as in the paper."""
    conv = _layers(dims)[0]
    layers = []
    for c in (cin, cout):
        layers += [conv(c, cout, 3, padding=1, bias=norm is None), _norm(norm, cout, dims), nn.ReLU(inplace=True)]
        if p > 0:
            layers.append(nn.Dropout(p))
    return nn.Sequential(*layers)


class ConditionalUNet(nn.Module):
    r"""U-Net whose 1x1(x1) bottleneck is joined with a DVH vector :cite:p:`ma2021pareto`.

    Encoder level :math:`\ell` has :math:`\min(w\,2^\ell, c_{max})` channels;
    the coarsest features :math:`h` are max-pooled globally to
    :math:`\bar h \in \mathbb{R}^{C}` and

    .. math:: z = \mathrm{ReLU}\big(W [\bar h; \mathcal{D}] + b\big) \in \mathbb{R}^{C}

    (just :math:`W\bar h + b` when ``conditional=False``) is broadcast over
    the coarsest grid, concatenated with :math:`h` and decoded with skip
    connections; a 1x1 convolution and ``final_activation`` give the dose.

    Parameters
    ----------
    in_channels, out_channels : int
        Anatomy channels (structure masks) and output channels (1 for dose).
    dvh_length : int
        Length of the DVH vector (the paper: 4 structures x 32 = 128).
    dims : {2, 3}
    depth : int
        Resolution levels before the global pooling; spatial sizes must be
        divisible by :math:`2^{depth-1}`.
    width, max_channels : int
        Channels at level 0 (doubling per level) and their cap (the paper: 128).
    norm : {"batch", "instance", "group", None}
    dropout : float
        :math:`r_0` of Eq. (7); level :math:`\ell` uses :func:`depth_dropout`.
    layer_max : int, optional
        :math:`\ell_{max}` of Eq. (7); default ``depth`` (the bottleneck).
    conditional : bool
        False: the DVH input is ignored (population-average baseline).
    final_activation : {"relu", None, "sigmoid"}
    normalise_channel : int, optional
        Divide the output by its mean over the voxels where anatomy channel
        ``normalise_channel`` is > 0.5 (the PTV mask in :cite:p:`ma2021pareto`'s
        data, whose every dose is normalised to its PTV mean):
        :math:`\hat Y = \hat Y_{raw} / (\overline{\hat Y_{raw}}_{PTV} + \epsilon)`, :math:`\epsilon = 10^{-6}`,
        so every prediction has the targets' PTV mean of 1 by construction.
        ``None`` (default): no normalisation. Every sample needs a non-empty
        mask in that channel.

    Examples
    --------
    >>> net = ConditionalUNet(4, 1, dvh_length=128, dims=2, depth=3, width=8)
    >>> net(torch.zeros(2, 4, 32, 32), torch.ones(2, 128)).shape
    torch.Size([2, 1, 32, 32])
    """

    def __init__(self, in_channels: int, out_channels: int = 1, dvh_length: int = 128, dims: int = 3,
                 depth: int = 4, width: int = 16, max_channels: int = 128, norm="batch", dropout: float = 0.2,
                 layer_max: int | None = None, conditional: bool = True, final_activation="relu",
                 normalise_channel: int | None = None):
        super().__init__()
        conv, up, pool, *_ = _layers(dims)
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels), ("depth", depth),
                        ("width", width), ("max_channels", max_channels)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if conditional and (not isinstance(dvh_length, int) or dvh_length < 1):
            raise ValueError(f"dvh_length must be an integer >= 1, got {dvh_length!r}")
        if normalise_channel is not None and (isinstance(normalise_channel, bool) or
                                              not isinstance(normalise_channel, int) or
                                              not 0 <= normalise_channel < in_channels):
            raise ValueError(f"normalise_channel must be None or an anatomy channel in [0, {in_channels}), "
                             f"got {normalise_channel!r}")
        if final_activation not in _ACTIVATIONS:
            raise ValueError(f"final_activation must be one of {list(_ACTIVATIONS)}, got {final_activation!r}")
        drops = depth_dropout(depth + 1, dropout, depth if layer_max is None else layer_max)
        self.dims, self.depth, self.in_channels = dims, depth, in_channels
        self.dvh_length, self.conditional = dvh_length, conditional
        self.normalise_channel = normalise_channel
        chans = [min(width * 2**k, max_channels) for k in range(depth)]
        self.channels = chans
        self.down = nn.ModuleList()
        cin = in_channels
        for k, c in enumerate(chans):
            self.down.append(_block(cin, c, dims, norm, drops[k]))
            cin = c
        self.pool = pool(2)
        c = chans[-1]
        extra = dvh_length if conditional else 0
        layers = [nn.Linear(c + extra, c), nn.ReLU(inplace=True)]
        if drops[depth] > 0:
            layers.append(nn.Dropout(drops[depth]))
        self.bottleneck = nn.Sequential(*layers)
        self.bottom = _block(2 * c, c, dims, norm, drops[depth - 1])
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for k in reversed(range(depth - 1)):
            self.up.append(up(chans[k + 1], chans[k], 2, stride=2))
            self.dec.append(_block(2 * chans[k], chans[k], dims, norm, drops[k]))
        self.head = conv(chans[0], out_channels, 1)
        self.final = _ACTIVATIONS[final_activation]()

    def forward(self, anatomy: torch.Tensor, dvh: torch.Tensor | None = None) -> torch.Tensor:
        """Dose from ``anatomy`` ``(B, C, *spatial)`` and ``dvh`` ``(B, dvh_length)``.

        With ``conditional=False`` ``dvh`` may be omitted; it is accepted and
        ignored so that one training loop drives both models.
        """
        x = anatomy
        if x.dim() != self.dims + 2 or x.shape[1] != self.in_channels:
            raise ValueError(f"anatomy must be (B, {self.in_channels}, {'H, W' if self.dims == 2 else 'D, H, W'}), "
                             f"got {tuple(x.shape)}")
        f = 2 ** (self.depth - 1)
        if any(s % f for s in x.shape[2:]):
            raise ValueError(f"spatial size {tuple(x.shape[2:])} must be divisible by 2**(depth-1) = {f}; pad or crop")
        if self.conditional:
            if dvh is None:
                raise ValueError("this ConditionalUNet is conditional: pass the DVH vector, model(anatomy, dvh)")
            if dvh.dim() != 2 or dvh.shape[0] != x.shape[0] or dvh.shape[1] != self.dvh_length:
                raise ValueError(f"dvh must be (B, {self.dvh_length}) with B = {x.shape[0]}, got {tuple(dvh.shape)}")
        skips = []
        for k, block in enumerate(self.down):
            x = block(x)
            if k < self.depth - 1:
                skips.append(x)
                x = self.pool(x)
        pooled = torch.amax(x, dim=tuple(range(2, x.dim())))               # (B, C): the 1x1(x1) bottleneck
        if self.conditional:
            pooled = torch.cat([pooled, dvh.to(pooled.dtype)], dim=1)
        z = self.bottleneck(pooled)
        z = z.reshape(*z.shape, *([1] * self.dims)).expand_as(x)
        x = self.bottom(torch.cat([z, x], dim=1))
        for up, dec in zip(self.up, self.dec):
            x = dec(torch.cat([up(x), skips.pop()], dim=1))
        out = self.final(self.head(x))
        if self.normalise_channel is None:
            return out
        mask = (anatomy[:, self.normalise_channel:self.normalise_channel + 1] > 0.5).float()
        n = mask.flatten(1).sum(1)
        if bool((n == 0).any()):
            raise ValueError(f"normalise_channel={self.normalise_channel}: a sample has an empty mask in that "
                             "channel, so its mean dose is undefined")
        mean = (out.float() * mask).flatten(1).sum(1) / n            # float32 sums, also under fp16/bf16 autocast
        return out / (mean + 1e-6).to(out.dtype).reshape(-1, *([1] * (out.dim() - 1)))
