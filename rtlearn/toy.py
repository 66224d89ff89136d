r"""An analytic toy plan for teaching the metrics before the phantom clinic is introduced.

One axial slice with an elliptic body, a circular target (PTV) and an organ at
risk (OAR) behind it. The dose is analytic: a plateau at about the
prescription inside the PTV, an error-function fall-off across its edge, and a
low-dose bath that decays with distance inside the body,

.. math::

    D(\mathbf x) = R_x\left[a\,F(\mathbf x) + b\,(1 - F(\mathbf x))\,e^{-\max(s,0)/\lambda}\right]
                   \mathbb 1_{\text{body}}(\mathbf x),\qquad
    F = \tfrac12\operatorname{erfc}\!\left(\frac{s(\mathbf x) - 1.5\sigma}{\sqrt2\,\sigma}\right),

with :math:`s` the signed distance (mm) to the PTV surface (negative inside),
:math:`\sigma` the penumbra width, :math:`\lambda` the bath decay length.
The plan is normalised so that 95 % of the PTV receives the prescription
(:math:`D_{95} = R_x`). It is *not* a dose calculation (see :mod:`rtlearn.phantom` for that); it is a
transparent example whose DVH metrics can be reasoned about.
"""
from __future__ import annotations

import numpy as np

from ._validate import check_positive, check_spacing

__all__ = ["toy_plan"]


def _signed_distance(mask, spacing):
    from scipy.ndimage import distance_transform_edt

    outside = distance_transform_edt(~mask, sampling=spacing)
    inside = distance_transform_edt(mask, sampling=spacing)
    return outside - inside


def toy_plan(shape=(96, 96), spacing=(2.5, 2.5), rx: float = 60.0, seed: int = 0, sigma: float = 4.0,
             bath: float = 0.25, decay: float = 25.0) -> dict:
    """Analytic slice plan: ``{"dose", "masks", "body", "spacing", "rx"}`` (dose in Gy).

    Parameters
    ----------
    shape : (int, int)
        Grid size (H, W); at least 32 x 32.
    spacing : (float, float)
        Pixel size (mm).
    rx : float
        Prescription dose (Gy), > 0.
    seed : int
        Moves and resizes the PTV and OAR (same seed, same plan).
    sigma, bath, decay : float
        Penumbra width (mm), relative height of the low-dose bath, and its decay length (mm).
    """
    if len(shape) != 2 or min(shape) < 32:
        raise ValueError(f"shape must be two sizes >= 32, got {shape}")
    sp = check_spacing(spacing, 2)
    rx = check_positive(rx, "rx")
    rng = np.random.default_rng(seed)
    h, w = shape
    y, x = (np.indices(shape).astype(float) + 0.5) * sp[:, None, None]
    cy, cx = h * sp[0] / 2, w * sp[1] / 2
    body = ((y - cy) / (0.36 * h * sp[0])) ** 2 + ((x - cx) / (0.46 * w * sp[1])) ** 2 <= 1
    r_ptv = rng.uniform(0.10, 0.14) * w * sp[1]
    py, px = cy + rng.uniform(-0.06, 0.02) * h * sp[0], cx + rng.uniform(-0.08, 0.08) * w * sp[1]
    ptv = (y - py) ** 2 + (x - px) ** 2 <= r_ptv**2
    r_oar = rng.uniform(0.05, 0.07) * w * sp[1]
    gap = rng.uniform(2.0, 8.0)
    oy = py + r_ptv + gap + r_oar
    oar = ((y - oy) ** 2 + (x - px) ** 2 <= r_oar**2) & body
    from scipy.special import erfc

    s = _signed_distance(ptv, sp)
    f = 0.5 * erfc((s - 1.5 * sigma) / (np.sqrt(2) * sigma))  # the fall-off starts just outside the PTV
    dose = rx * (1.03 * f + bath * (1 - f) * np.exp(-np.maximum(s, 0) / decay))
    # a gentle ripple inside the target, as a real plan has
    dose *= 1 + 0.015 * np.sin(x / 7.0 + rng.uniform(0, 6)) * np.cos(y / 9.0) * ptv
    dose = np.where(body, dose, 0.0)
    dose *= rx / np.percentile(dose[ptv], 5)  # normalise as planners do: D95 of the PTV = Rx
    return {"dose": dose, "masks": {"PTV": ptv, "OAR": oar}, "body": body, "spacing": tuple(float(v) for v in sp), "rx": rx}
