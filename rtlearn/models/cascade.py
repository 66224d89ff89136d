r"""A cascade of two U-Nets for dose prediction, the dose predictor :math:`M_D` of DOSELO.

Rüfenacht et al. (2023, ``ruefenacht2023doselo``, Sec. 2.1) predict the dose from the target mask, the
organ-at-risk masks and the CT with the cascaded U-Net of Liu et al. (2021):
the second U-Net receives the output of the first concatenated with the
network input, and both outputs are supervised (deep supervision),

.. math::

    \hat D^{(1)} = U_1(x), \qquad \hat D^{(2)} = U_2\big([\hat D^{(1)}, x]\big), \qquad
    x = [S_T, S_{OR}, I_{CT}],

    \mathcal L_{DS} = a\,\mathrm{MSE}_M(\hat D^{(1)}, D) + b\,\mathrm{MSE}_M(\hat D^{(2)}, D),

where :math:`\mathrm{MSE}_M` is the mean squared error over the voxels of the
possible-dose (body) mask :math:`M`. The authors' public code uses
:math:`a = 0.5`, :math:`b = 1` and keeps only :math:`\hat D^{(2)}` as the
prediction; these are our defaults. The loss :math:`\mathcal L_{DS}` is
:func:`rtlearn.losses.cascade.cascade_loss`.

Design choice: the stage-1 *dose* (``out_channels`` channels) is what is passed
to stage 2, as the DOSELO paper describes the cascade. Liu et al.'s C3D (and the
DOSELO code's 2D port) pass the first network's last feature maps instead; the
difference is a few channels at the junction.
"""
from __future__ import annotations

import numbers

import torch
from torch import nn

from .unet import UNet

__all__ = ["CascadeUNet", "final_output"]


def final_output(out):
    """The last stage of a model output: ``out[-1]`` for a tuple/list (cascades), else ``out`` itself."""
    if isinstance(out, (tuple, list)):
        if len(out) == 0:
            raise ValueError("model returned an empty sequence of outputs")
        return out[-1]
    return out


class CascadeUNet(nn.Module):
    r"""Two U-Nets in series; the second sees the first's output and the input.

    Parameters
    ----------
    in_channels : int
        Input channels (for DOSELO: target + OAR channels + CT).
    out_channels : int
        Output channels (1 for a dose map).
    dims : {2, 3}
        2D slices or 3D volumes.
    depth, width : int or (int, int)
        U-Net depth and first-level width; a pair gives different values to
        stage 1 and stage 2 (Liu et al. make the second network wider).
    norm, dropout
        Passed to both :class:`~rtlearn.models.UNet` stages.
    final_activation : {None, "relu", "sigmoid"}
        Applied to *each* stage's output (``"relu"`` keeps doses non-negative);
        the reference code uses none.
    return_stages : bool
        If true (default) :meth:`forward` returns ``(stage1, stage2)`` for the
        deep-supervision loss; if false only the final ``stage2``. Can be
        overridden per call.

    Notes
    -----
    The cascaded dose predictor of Rüfenacht et al. 2023 (Sec. 2.1), after
    Liu et al. 2021 (C3D).

    Examples
    --------
    >>> net = CascadeUNet(3, 1, dims=2, depth=2, width=4)
    >>> d1, d2 = net(torch.zeros(1, 3, 16, 16))
    >>> d2.shape
    torch.Size([1, 1, 16, 16])
    """

    def __init__(self, in_channels: int, out_channels: int = 1, dims: int = 2, depth=4, width=16, norm="batch",
                 dropout=0.0, final_activation=None, return_stages: bool = True):
        super().__init__()
        d1, d2 = _pair(depth, "depth")
        w1, w2 = _pair(width, "width")
        if final_activation == "softmax":
            raise ValueError("final_activation 'softmax' makes no sense for a dose map; use None, 'relu' or 'sigmoid'")
        self.in_channels, self.out_channels, self.dims = int(in_channels), int(out_channels), dims
        self.return_stages = bool(return_stages)
        self.stage1 = UNet(in_channels, out_channels, dims=dims, depth=d1, width=w1, norm=norm, dropout=dropout,
                           final_activation=final_activation)
        self.stage2 = UNet(in_channels + out_channels, out_channels, dims=dims, depth=d2, width=w2, norm=norm,
                           dropout=dropout, final_activation=final_activation)

    def forward(self, x: torch.Tensor, return_stages: bool | None = None):
        """Return ``(stage1, stage2)``, or ``stage2`` alone when ``return_stages`` is false."""
        if x.dim() != self.dims + 2 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"CascadeUNet expects input of shape (B, {self.in_channels}, "
                f"{'H, W' if self.dims == 2 else 'D, H, W'}), got {tuple(x.shape)}")
        y1 = self.stage1(x)
        y2 = self.stage2(torch.cat([y1, x], dim=1))
        stages = self.return_stages if return_stages is None else bool(return_stages)
        return (y1, y2) if stages else y2

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Final-stage prediction without gradient (the mode is left unchanged)."""
        return self.forward(x, return_stages=False)


def _pair(value, name):
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value), int(value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, numbers.Integral) for v in value):
        return int(value[0]), int(value[1])
    raise ValueError(f"{name} must be an int or a pair of ints (stage 1, stage 2), got {value!r}")
