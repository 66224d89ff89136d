r"""A differentiable beam surrogate of the phantom clinic's dose engine: the dose of a (soft) target mask.

:class:`BeamSurrogate` gives, for a target mask :math:`S` (binary or soft), the
unmodulated conformal plan of :class:`rtlearn.phantom.DoseEngine` in closed
form, :math:`D(S) = c\,A A^\top S`: linear in :math:`S` and differentiable,
so it can guide a segmentation network by physics instead of a learned dose
predictor (:func:`rtlearn.losses.dose_guided.surrogate_guided_loss`; beyond
the DOSELO paper).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .dose_engine import DoseEngine, default_angles

__all__ = ["BeamSurrogate", "DEFAULT_RX_GY"]

#: default prescription (Gy) of the target's mean dose: DOSELO's 30 x 2 Gy
DEFAULT_RX_GY = 60.0


class BeamSurrogate(nn.Module):
    r"""A differentiable, non-learned dose of a (soft) target: the unmodulated conformal plan of the dose engine.

    With the dose-influence matrix :math:`A` of :class:`rtlearn.phantom.DoseEngine`
    (open field over the whole field of view, isocentre at the grid centre, so
    the lateral profiles are shared by all patients and only the depth-dose map
    :math:`G` depends on the patient), the fluence of each beamlet is the
    beam's-eye-view projection of the target, :math:`w = A^\top S`, and

    .. math:: D(S) = c\,A A^\top S, \qquad c = \frac{R_x}{\mathrm{mean}_{i \in S_T} (A A^\top S_T)_i},

    i.e. the monitor units are fixed by the *true* target (its mean dose is the
    prescription) and the same factor is used for a predicted target, so
    :math:`D` is linear in :math:`S` and :math:`\|D(\hat S) - D(S_T)\|^2 =
    c^2\|A A^\top(\hat S - S_T)\|^2` is a convex quadratic form: a
    segmentation error is weighted by the dose it would draw along the beams. It
    can guide a segmentation network by exact physics instead of a learned
    predictor. It is *not* the optimised plan (no OAR sparing, no
    modulation; differentiating through the optimiser would need implicit
    differentiation of a bound-constrained problem), but like it a spurious
    blob far from the tumour draws beams and dose to itself.

    Parameters
    ----------
    patients : list of Patient
        All cases the surrogate will see (same grid and spacing).
    n_beams : int
        Equispaced coplanar beams (default 9, the phantom's brain default).
    beamlet_mm : float
        Beamlet width (mm).
    """

    def __init__(self, patients, n_beams: int = 9, beamlet_mm: float = 7.2):
        super().__init__()
        if not patients:
            raise ValueError("give at least one patient")
        shape, sp = patients[0].shape, tuple(patients[0].spacing)
        if any(p.shape != shape or tuple(p.spacing) != sp for p in patients):
            raise ValueError("all patients must share one grid shape and spacing")
        fov = float(np.hypot(*(np.asarray(shape) * np.asarray(sp))))
        engines = [DoseEngine(p.density, p.body, sp, default_angles(None, n_beams), field_mm=fov,
                              isocentre=(0.0, 0.0), beamlet_mm=beamlet_mm) for p in patients]
        self.shape = shape
        self.register_buffer("P", torch.stack(engines[0].P))                       # beams x HW x n_t
        self.register_buffer("G", torch.stack([torch.cat(e.G) for e in engines]))  # cases x beams x HW
        self.engines = engines

    def back_and_forward(self, target: torch.Tensor, case: torch.Tensor) -> torch.Tensor:
        """:math:`A A^\\top S` (unnormalised) for ``target`` ``B x 1 x H x W`` and case indices ``case``."""
        if target.dim() != 4 or target.shape[1] != 1 or tuple(target.shape[2:]) != tuple(self.shape):
            raise ValueError(f"target must be B x 1 x {self.shape}, got {tuple(target.shape)}")
        B = target.shape[0]
        s = target.reshape(B, 1, -1).to(self.P.dtype)
        g = self.G[case.long()]                                        # B x beams x HW
        w = torch.einsum("bkh,khj->bkj", g * s, self.P)                # fluence A^T S
        return (g * torch.einsum("bkj,khj->bkh", w, self.P)).sum(1, keepdim=True).reshape(B, 1, *self.shape)

    def scale_for(self, target: torch.Tensor, case: torch.Tensor, rx: float = DEFAULT_RX_GY) -> torch.Tensor:
        """Per-case factor :math:`c = R_x / \\mathrm{mean}_{S}(A A^\\top S)` (``B x 1 x 1 x 1``), without gradient."""
        with torch.no_grad():
            d = self.back_and_forward(target, case)
            t = target.to(d.dtype)
            mean = (t * d).sum((1, 2, 3), keepdim=True) / t.sum((1, 2, 3), keepdim=True).clamp_min(1e-6)
            return rx / mean.clamp_min(1e-12)

    def forward(self, target: torch.Tensor, case: torch.Tensor, scale=None, rx: float = DEFAULT_RX_GY) -> torch.Tensor:
        """Dose (Gy) :math:`c\\,A A^\\top S`; ``scale`` = :math:`c` (default: :meth:`scale_for` of ``target``)."""
        d = self.back_and_forward(target, case)
        c = self.scale_for(target, case, rx) if scale is None else scale
        return c.to(d.dtype) * d
