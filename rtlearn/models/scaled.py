r"""A network whose output is multiplied by a fixed dose scale (Gy).

The wrapped network works on :math:`O(1)` numbers (dose in units of the
prescription, easy for a freshly initialised network) while its output, and so
the loss, are in Gy: :math:`\hat d = f_\theta(x)\, s`. Used by the OpenKBP
baseline (:math:`s` = 70 Gy), the DVH-loss chapter's DeepDoseNet and DOSELO's
dose predictor (:math:`s` = 60 Gy, whose loss is then in Gy² as in the paper).
"""
from __future__ import annotations

from torch import nn

__all__ = ["ScaledDose"]


class ScaledDose(nn.Module):
    """Multiply a dose network's output by a fixed ``scale`` (Gy).

    Parameters
    ----------
    net : nn.Module
        The network; keyword arguments of :meth:`forward` are passed on to it
        (e.g. ``return_stages`` of :class:`~rtlearn.models.CascadeUNet`).
    scale : float
        Dose (Gy) of an output of 1.

    A tuple or list of outputs (the stages of a cascade) is scaled stage by stage
    and returned as a tuple. ``in_channels`` is the wrapped network's (``None``
    if it has none), for the channel check of :mod:`rtlearn.losses.dose_guided`.
    The state dict holds the network's parameters under ``net.``.
    """

    def __init__(self, net: nn.Module, scale: float):
        super().__init__()
        self.net = net
        self.scale = float(scale)
        self.in_channels = getattr(net, "in_channels", None)

    def forward(self, x, **kw):
        out = self.net(x, **kw)
        if isinstance(out, (tuple, list)):
            return tuple(o * self.scale for o in out)
        return out * self.scale
