"""A pencil-beam dose engine for teaching (not for clinical use).

Model
-----
Beams are coplanar (they rotate about the patient's z axis) and parallel (no
divergence). Each beam is split into rectangular beamlets of ``beamlet_mm``
(lateral) x ``beamlet_mm`` (along z, 3D only). The dose per unit fluence that
beamlet :math:`j` of a beam gives voxel :math:`v` is

.. math::

    A_{vj} = f(d_v)\\, \\Big(\\frac{\\mathrm{SAD}}{\\mathrm{SAD} + s_v}\\Big)^2\\,
             p\\big(t_v - t_j\\big)\\, p\\big(z_v - z_j\\big),

where :math:`s_v` and :math:`t_v` are the voxel's coordinates along and across
the beam (mm, origin at the isocentre), :math:`d_v` its radiological
(water-equivalent) depth and

.. math::

    f(d) = \\big(s_0 + (1 - s_0)(1 - e^{-d/b})\\big)\\, e^{-\\mu d}, \\qquad
    p(u) = \\tfrac12\\Big[\\operatorname{erf}\\frac{u + w/2}{\\sqrt2\\,\\sigma}
           - \\operatorname{erf}\\frac{u - w/2}{\\sqrt2\\,\\sigma}\\Big]

the depth dose (build-up from surface dose :math:`s_0`, then exponential
attenuation) and the beamlet's lateral profile :math:`p`: a width-:math:`w`
rectangle convolved with a mixture of a narrow Gaussian (the primary beam's
penumbra) and a broad Laplace kernel of weight :math:`a` and length
:math:`\\lambda` (scatter in the patient and from the machine head, which
gives the low-dose "bath" outside the field),

.. math::

    p(u) = (1 - a)\\, p_G(u) + a\\, \\big[F_\\lambda(u + w/2) - F_\\lambda(u - w/2)\\big],
    \\qquad F_\\lambda(x) = \\tfrac12 + \\tfrac12 \\operatorname{sign}(x)\\,(1 - e^{-|x|/\\lambda}),

with :math:`F_\\lambda` the Laplace distribution function. The defaults
:math:`s_0 = 0.4`, :math:`b = 4.6` mm, :math:`\\mu = 0.0031` mm^-1, SAD 1000 mm,
:math:`\\sigma = 4` mm, :math:`a = 0.1`, :math:`\\lambda = 40` mm give a 6 MV-like
beam: maximum at 15 mm, 67 % at 100 mm depth (SSD 100 cm), 80-20 % penumbra
about 7 mm, and outside a 10 x 10 cm field at 10 cm depth about 3 % of the
central-axis dose 2 cm from the field edge, 1.4 % at 5 cm and 0.4 % at 10 cm
(the size of the measured out-of-field dose of 6 MV beams, e.g. AAPM TG-158,
Kry et al. 2017).

The radiological depth is the line integral of the relative electron density
from the beam's entry: the density is resampled with
:func:`torch.nn.functional.grid_sample` on a grid aligned with the beam, summed
cumulatively along the beam and sampled back at the voxel centres.

Limits (honest list): the scatter kernel is laterally invariant and shares the
primary's depth dose (so the depth dose does not change with field size and
the bath does not grow with depth), no lateral
electron disequilibrium in lung (the lung only lowers the radiological depth),
no divergence, no leaf transmission or machine constraints, no dose outside the
body. It is a smooth, fast, differentiable stand-in for a treatment planning
system that gives plans with the right qualitative features.

Dose is linear in the beamlet weights, :math:`D = A w`; the engine never
forms the full matrix in 3D: the profile factorises into a lateral factor
``P`` (per in-plane voxel) and an axial factor ``Q`` (per slice), so for beam
:math:`b`, :math:`D_b = G_b \\odot (Q_b W_b P_b^\\top)` with :math:`G_b` the
depth-dose times inverse-square map and :math:`W_b` the beamlet weights as a
(rows along z) x (columns across the beam) matrix.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .._validate import check_mask, check_spacing


@dataclass(frozen=True)
class BeamModel:
    """Parameters of the 6 MV-like pencil beam (lengths in mm)."""

    surface_dose: float = 0.4
    buildup_mm: float = 4.6
    mu_per_mm: float = 0.0031
    sigma_mm: float = 4.0
    sad_mm: float = 1000.0
    inverse_square: bool = True
    scatter_fraction: float = 0.1
    scatter_length_mm: float = 40.0

    def __post_init__(self):
        for name in ("buildup_mm", "sigma_mm", "sad_mm", "scatter_length_mm"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"BeamModel.{name} must be a positive number (mm), got {v!r}")
        for name in ("surface_dose", "scatter_fraction"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not 0.0 <= v < 1.0:
                raise ValueError(f"BeamModel.{name} must be in [0, 1), got {v!r}")
        if not isinstance(self.mu_per_mm, (int, float)) or not math.isfinite(self.mu_per_mm) or self.mu_per_mm < 0:
            raise ValueError(f"BeamModel.mu_per_mm must be >= 0 (per mm), got {self.mu_per_mm!r}")

    def depth_dose(self, depth_mm):
        """Unnormalised depth dose :math:`f(d)` (works on numpy arrays and torch tensors)."""
        lib = torch if isinstance(depth_mm, torch.Tensor) else np
        d = depth_mm
        s0, b = self.surface_dose, self.buildup_mm
        return (s0 + (1.0 - s0) * (1.0 - lib.exp(-d / b))) * lib.exp(-self.mu_per_mm * d)

    def profile(self, u, width_mm):
        """Beamlet profile :math:`p(u)` for a beamlet of width ``width_mm``, torch: primary plus scatter."""
        c = 1.0 / (math.sqrt(2.0) * self.sigma_mm)
        a = self.scatter_fraction
        prim = 0.5 * (torch.erf((u + width_mm / 2) * c) - torch.erf((u - width_mm / 2) * c))
        if a == 0:
            return prim
        lam = self.scatter_length_mm

        def cdf(x):  # Laplace distribution function
            return 0.5 + 0.5 * torch.sign(x) * (1.0 - torch.exp(-x.abs() / lam))

        return (1.0 - a) * prim + a * (cdf(u + width_mm / 2) - cdf(u - width_mm / 2))


def default_angles(site: str | None = None, n_beams: int | None = None) -> np.ndarray:
    """Gantry angles in degrees.

    ``n_beams`` equispaced beams over 360 degrees (default 9; 7 for prostate);
    for the left breast the two tangential partial arcs of :func:`breast_arc_angles`
    (default 6 beams) at the typical medial tangent of 305 degrees (lateral tangent
    125 degrees); :meth:`DoseEngine.for_patient` fits the tangents to each patient.
    Angle convention: 0 = beam from anterior, 90 = from the patient's left.
    """
    if site == "breast":
        return breast_arc_angles(BREAST_TANGENT_DEG, n_beams)
    n = (7 if site == "prostate" else 9) if n_beams is None else n_beams
    if n < 1:
        raise ValueError(f"n_beams must be >= 1, got {n}")
    return np.arange(n) * 360.0 / n


#: medial tangent (gantry angle, degrees) of the default left-breast arcs
BREAST_TANGENT_DEG = 305.0


def breast_arc_angles(tangent_deg: float = BREAST_TANGENT_DEG, n_beams: int | None = None,
                      arc_deg: float = 30.0) -> np.ndarray:
    """Left-breast VMAT: two partial arcs that start and stop at the tangents, as static beams.

    As in Bai et al. (2021) the gantry starts and stops tangent to the breast: a
    medial arc turns from the medial tangent ``tangent_deg`` (the beam enters at
    the medial edge of the breast and grazes the chest wall) ``arc_deg`` towards
    the anterior, and a lateral arc turns from ``arc_deg`` inside the opposed
    lateral tangent ``tangent_deg - 180`` out to it. The beams inside the arcs
    cross the breast obliquely and reach the lung and heart behind it, which gives
    the low-dose bath of VMAT; no beam enters from the contralateral or posterior
    side.

    Parameters
    ----------
    tangent_deg : float
        Medial tangent gantry angle (degrees); see :func:`tangent_angle`.
    n_beams : int, optional
        Beams in all (default 6); the medial arc gets the odd one.
    arc_deg : float
        Angular length of each partial arc (degrees, 0 to 90).

    Returns
    -------
    ndarray
        Medial arc first (from its tangent inwards), then the lateral arc (ending
        at its tangent), wrapped to [0, 360).
    """
    n = 6 if n_beams is None else n_beams
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n_beams must be >= 1, got {n!r}")
    if not np.isfinite(tangent_deg):
        raise ValueError(f"tangent_deg must be a finite angle in degrees, got {tangent_deg!r}")
    if not (np.isfinite(arc_deg) and 0.0 <= arc_deg <= 90.0):
        raise ValueError(f"arc_deg must be in [0, 90] degrees, got {arc_deg!r}")
    n_med = (int(n) + 1) // 2
    medial = float(tangent_deg) + np.linspace(0.0, arc_deg, n_med)
    lateral = float(tangent_deg) - 180.0 - np.linspace(0.0, arc_deg, int(n) - n_med)[::-1]
    return np.mod(np.concatenate([medial, lateral]), 360.0)


def tangent_angle(target, avoid, spacing, search_deg=(280.0, 340.0), step_deg: float = 1.0) -> float:
    """Tangent gantry angle: the parallel field fitted to the target that covers the least of ``avoid``.

    For each gantry angle in ``search_deg`` the field is the strip of the
    target's projection across the beam (as the beamlets of :class:`DoseEngine`
    place it); the angle whose strip contains the fewest ``avoid`` voxels (e.g.
    lungs and heart) wins, the middle one of a tie. The opposed angle gives the
    same strip, so one search finds both tangents of a breast. A 3D mask is
    projected along z first.

    Parameters
    ----------
    target, avoid : bool array (H, W) or (Z, H, W)
        Target, and the organs the tangent should spare (same shape).
    spacing : tuple of float
        Voxel size (mm) per axis.
    search_deg : (float, float)
        Range of gantry angles searched (degrees; default: medial tangents of a left breast).
    step_deg : float
        Angular step (degrees).
    """
    tgt = np.asarray(target, bool)
    if tgt.ndim not in (2, 3):
        raise ValueError(f"target must be 2D (H, W) or 3D (Z, H, W), got shape {tgt.shape}")
    av = check_mask(avoid, tgt.shape, name="avoid", allow_empty=True)
    sp = check_spacing(spacing, tgt.ndim)
    if not tgt.any():
        raise ValueError("target is empty; a tangent needs a target with at least one voxel")
    if tgt.ndim == 3:
        tgt, av, sp = tgt.any(0), av.any(0), sp[1:]
    lo, hi = (float(a) for a in search_deg)
    if not (np.isfinite(lo) and np.isfinite(hi) and hi >= lo) or not step_deg > 0:
        raise ValueError(f"search_deg must be (low, high) with high >= low and step_deg > 0, got "
                         f"{search_deg!r}, {step_deg!r}")
    yc, xc = (_axis_coords(n, s) for n, s in zip(tgt.shape, sp))
    ty, tx = np.nonzero(tgt)
    ay, ax = np.nonzero(av)
    th = np.deg2rad(np.arange(lo, hi + 1e-9, step_deg))[:, None]
    s, c = np.sin(th), np.cos(th)
    t_tgt = yc[ty][None] * s + xc[tx][None] * c          # across-beam coordinate, as in DoseEngine
    t_av = yc[ay][None] * s + xc[ax][None] * c
    inside = (t_av >= t_tgt.min(1, keepdims=True)) & (t_av <= t_tgt.max(1, keepdims=True))
    cnt = inside.sum(1)
    best = np.rad2deg(th[cnt == cnt.min(), 0])
    return float(best[len(best) // 2])


def arc_angles(start_deg: float, stop_deg: float, n_beams: int) -> np.ndarray:
    """An arc modelled as ``n_beams`` static beams from ``start_deg`` to ``stop_deg`` (clockwise, degrees).

    ``arc_angles(181, 179, 36)`` is a full arc; angles are wrapped to [0, 360).
    """
    if not isinstance(n_beams, (int, np.integer)) or n_beams < 1:
        raise ValueError(f"n_beams must be a positive int, got {n_beams!r}")
    span = (float(stop_deg) - float(start_deg)) % 360.0 or 360.0
    return np.mod(float(start_deg) + np.linspace(0.0, span, n_beams), 360.0)


def _axis_coords(n, s):
    return (np.arange(n) - (n - 1) / 2.0) * s


class DoseEngine:
    """Dose-influence operator of a set of coplanar beams on one patient grid.

    Parameters
    ----------
    density : array (H, W) or (Z, H, W)
        Relative electron density (water = 1).
    body : bool array, same shape
        Dose is computed inside the body only.
    spacing : tuple of float
        Voxel size (mm) per axis.
    angles : sequence of float
        Gantry angles (degrees), see :func:`default_angles`.
    target : bool array, optional
        Beamlets are placed to cover the target's projection plus ``margin_mm``.
        Give either ``target`` or ``field_mm``.
    field_mm : float or (float, float), optional
        Open field: beamlets cover ``[-field/2, field/2]`` across the beam (and along z in 3D).
    isocentre : tuple of float, optional
        In mm, grid-centred coordinates (z, y, x) or (y, x); default: target centroid (or grid centre).
    beamlet_mm : float
        Beamlet width (mm).
    margin_mm : float
        Extra beamlet coverage around the target projection.
    model : BeamModel
    device, dtype : torch device and dtype of the operator.
    """

    def __init__(self, density, body, spacing, angles, target=None, field_mm=None, isocentre=None,
                 beamlet_mm: float = 5.0, margin_mm: float = 5.0, model: BeamModel | None = None,
                 device=None, dtype=torch.float32):
        density = np.asarray(density, dtype=np.float32)
        if density.ndim not in (2, 3):
            raise ValueError(f"density must be 2D (H, W) or 3D (Z, H, W), got shape {density.shape}")
        if not np.all(np.isfinite(density)) or density.min() < 0:
            raise ValueError("density must be finite and >= 0 (relative electron density, water = 1)")
        self.dims = density.ndim
        body = check_mask(body, density.shape, name="body")
        sp = check_spacing(spacing, self.dims)
        if self.dims == 2:
            density, body = density[None], body[None]
            sp = np.concatenate([[1.0], sp])
            if target is not None:
                target = np.asarray(target)[None]
        self.shape = density.shape[1:] if self.dims == 2 else density.shape
        self.grid_shape = density.shape
        self.spacing = tuple(float(s) for s in sp)
        angles = np.atleast_1d(np.asarray(angles, dtype=np.float64))
        if angles.size == 0 or not np.all(np.isfinite(angles)):
            raise ValueError("angles must be a non-empty sequence of finite gantry angles in degrees")
        self.angles = angles
        if beamlet_mm <= 0 or not np.isfinite(beamlet_mm):
            raise ValueError(f"beamlet_mm must be > 0, got {beamlet_mm!r}")
        self.beamlet_mm = float(beamlet_mm)
        self.model = model or BeamModel()
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.dtype = dtype
        Z, H, W = density.shape
        zc, yc, xc = (_axis_coords(n, s) for n, s in zip((Z, H, W), sp))
        if Z == 1:
            zc = np.zeros(1)
        if target is None and field_mm is None:
            raise ValueError("give a target mask (beamlets cover its projection) or field_mm (an open field)")
        if target is not None:
            target = check_mask(target, density.shape, name="target", allow_empty=True)
            if not target.any():
                raise ValueError("target is empty; beamlets need a target with at least one voxel")
            if not (target & body).any():
                raise ValueError("target lies outside the body; it must overlap the body mask")
        if isocentre is None:
            if target is not None:
                idx = np.nonzero(target)
                iso = np.array([zc[idx[0]].mean(), yc[idx[1]].mean(), xc[idx[2]].mean()])
            else:
                iso = np.zeros(3)
        else:
            iso = np.asarray(isocentre, dtype=np.float64)
            if iso.size == 2:
                iso = np.concatenate([[0.0], iso])
            if iso.size != 3:
                raise ValueError(f"isocentre must have {self.dims} coordinates (mm), got {iso.size}")
        self.isocentre = iso
        dev, dt = self.device, dtype
        rho = torch.as_tensor(density, device=dev, dtype=dt)
        yy = torch.as_tensor(yc, device=dev, dtype=dt)[:, None] - float(iso[1])
        xx = torch.as_tensor(xc, device=dev, dtype=dt)[None, :] - float(iso[2])
        zz = torch.as_tensor(zc, device=dev, dtype=dt) - float(iso[0])
        half = [(n - 1) / 2.0 * s for n, s in zip((H, W), sp[1:])]
        centre = [float(yc.mean()), float(xc.mean())]
        radius = math.hypot(*[h + s for h, s in zip(half, sp[1:])]) + math.hypot(*(iso[1:] - centre))
        step = float(min(sp[1:])) / 2.0
        n_s = int(math.ceil(2 * radius / step)) + 1
        s_axis = torch.linspace(-radius, radius, n_s, device=dev, dtype=dt)
        body_t = torch.as_tensor(body, device=dev)
        if target is not None:
            tgt_idx = torch.as_tensor(np.array(np.nonzero(target.reshape(Z, -1))), device=dev)
        self.G, self.P, self.Q, self.n_cols, self.n_rows = [], [], [], [], []
        self.t_centres, self.z_centres = [], []
        w = self.beamlet_mm
        for ang in angles:
            a = math.radians(float(ang))
            d = (math.cos(a), -math.sin(a))          # beam direction (y, x)
            lat = (math.sin(a), math.cos(a))         # across-beam axis (y, x)
            s_v = d[0] * yy + d[1] * xx               # (H, W)
            t_v = lat[0] * yy + lat[1] * xx
            # radiological depth on a beam-aligned grid (s along, t across)
            S, T = torch.meshgrid(s_axis, s_axis, indexing="ij")
            py = float(iso[1]) + d[0] * S + lat[0] * T
            px = float(iso[2]) + d[1] * S + lat[1] * T
            gx = (px - float(xc[0])) / max(float(xc[-1] - xc[0]), 1e-9) * 2 - 1
            gy = (py - float(yc[0])) / max(float(yc[-1] - yc[0]), 1e-9) * 2 - 1
            grid = torch.stack([gx, gy], -1)[None]
            rho_bev = F.grid_sample(rho[None], grid, mode="bilinear", padding_mode="zeros",
                                    align_corners=True)[0]                     # (Z, n_s, n_t)
            depth_bev = (torch.cumsum(rho_bev, dim=1) - 0.5 * rho_bev) * step
            # back to the voxels: normalised coords of (s_v, t_v) in the beam grid
            gs = (s_v + radius) / (2 * radius) * 2 - 1
            gt = (t_v + radius) / (2 * radius) * 2 - 1
            back = torch.stack([gt, gs], -1)[None]                                # x = t, y = s
            depth = F.grid_sample(depth_bev[None], back, mode="bilinear", padding_mode="border",
                                  align_corners=True)[0]                         # (Z, H, W)
            g = self.model.depth_dose(depth)
            if self.model.inverse_square:
                g = g * (self.model.sad_mm / (self.model.sad_mm + s_v)) ** 2
            g = torch.where(body_t, g, torch.zeros((), device=dev, dtype=dt))
            # beamlet positions across the beam (and along z)
            if target is not None:
                tt = t_v.reshape(-1)[tgt_idx[1]]
                t_lo, t_hi = float(tt.min()) - margin_mm, float(tt.max()) + margin_mm
                zt = zz[tgt_idx[0]]
                z_lo, z_hi = float(zt.min()) - margin_mm, float(zt.max()) + margin_mm
            else:
                fw = np.broadcast_to(np.asarray(field_mm, dtype=float), (2,))
                if np.any(fw <= 0):
                    raise ValueError(f"field_mm must be > 0, got {field_mm!r}")
                t_lo, t_hi = -fw[0] / 2, fw[0] / 2
                z_lo, z_hi = -fw[1] / 2, fw[1] / 2
            n_t = max(1, int(round((t_hi - t_lo) / w)))
            tj = (t_lo + t_hi) / 2 + (torch.arange(n_t, device=dev, dtype=dt) - (n_t - 1) / 2) * w
            P = self.model.profile(t_v.reshape(-1, 1) - tj[None, :], w)         # (H*W, n_t)
            if Z == 1:
                Q = torch.ones(1, 1, device=dev, dtype=dt)
                zk = torch.zeros(1, device=dev, dtype=dt)
            else:
                n_z = max(1, int(round((z_hi - z_lo) / w)))
                zk = (z_lo + z_hi) / 2 + (torch.arange(n_z, device=dev, dtype=dt) - (n_z - 1) / 2) * w
                Q = self.model.profile(zz[:, None] - zk[None, :], w)             # (Z, n_z)
            self.G.append(g.reshape(Z, -1))
            self.P.append(P)
            self.Q.append(Q)
            self.n_cols.append(n_t)
            self.n_rows.append(Q.shape[1])
            self.t_centres.append(tj)
            self.z_centres.append(zk)
        sizes = [r * c for r, c in zip(self.n_rows, self.n_cols)]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
        self.n_beamlets = int(self.offsets[-1])
        # dose() and adjoint() work on the in-plane pixels that are inside the body in some slice
        # (elsewhere G = 0): the same numbers at a fraction of the cost
        self._cols = torch.nonzero(body_t.reshape(Z, -1).any(dim=0)).reshape(-1)
        self._Gc = [g[:, self._cols].contiguous() for g in self.G]
        self._Pc = [p[self._cols].contiguous() for p in self.P]

    # ----------------------------------------------------------------- operator
    def beam_slices(self):
        """``[slice]`` of the weight vector belonging to each beam."""
        return [slice(int(a), int(b)) for a, b in zip(self.offsets[:-1], self.offsets[1:])]

    def _check_w(self, weights):
        w = torch.as_tensor(weights, device=self.device)
        if w.ndim != 1 or w.numel() != self.n_beamlets:
            raise ValueError(f"weights must be a vector of {self.n_beamlets} beamlet weights, got shape {tuple(w.shape)}")
        if not w.is_floating_point():
            w = w.to(self.dtype)
        return w

    def dose(self, weights, beams=None) -> torch.Tensor:
        """Dose :math:`D = A w` on the patient grid, differentiable w.r.t. ``weights``.

        Parameters
        ----------
        weights : tensor (n_beamlets,)
            Beamlet fluence weights (any float dtype; the operator is cast to it).
        beams : sequence of int, optional
            Only these beams (e.g. ``[0]`` for one beam's dose).
        """
        w = self._check_w(weights)
        out = None
        for b, sl in enumerate(self.beam_slices()):
            if beams is not None and b not in beams:
                continue
            Wb = w[sl].reshape(self.n_rows[b], self.n_cols[b])
            G, P, Q = (t.to(w.dtype) for t in (self._Gc[b], self._Pc[b], self.Q[b]))
            db = G * ((Q @ Wb) @ P.T)
            out = db if out is None else out + db
        if out is None:
            raise ValueError(f"beams {beams} selects none of the {len(self.angles)} beams")
        full = torch.zeros((self.grid_shape[0], int(np.prod(self.grid_shape[1:]))), device=out.device, dtype=out.dtype)
        full[:, self._cols] = out
        return full.reshape(self.shape if self.dims == 2 else self.grid_shape)

    def adjoint(self, v) -> torch.Tensor:
        """:math:`A^\\top v` for a dose-shaped ``v`` (the gradient of :math:`v \\cdot D` w.r.t. ``w``)."""
        v = torch.as_tensor(v, device=self.device).reshape(self.grid_shape[0], -1)[:, self._cols]
        parts = []
        for b in range(len(self.angles)):
            G, P, Q = (t.to(v.dtype) for t in (self._Gc[b], self._Pc[b], self.Q[b]))
            parts.append((Q.T @ (G * v) @ P).reshape(-1))
        return torch.cat(parts)

    def matrix(self, max_entries: int = 60_000_000) -> torch.Tensor:
        """The dense influence matrix ``A`` (voxels x beamlets), voxels in C order."""
        n_vox = int(np.prod(self.grid_shape))
        if n_vox * self.n_beamlets > max_entries:
            raise ValueError(f"the dense matrix would have {n_vox * self.n_beamlets:,} entries "
                             f"(> max_entries={max_entries:,}); use dose()/adjoint() instead")
        cols = []
        for b in range(len(self.angles)):
            # A[(z, hw), (k, j)] = G[z, hw] Q[z, k] P[hw, j]
            a = self.G[b][:, :, None, None] * self.Q[b][:, None, :, None] * self.P[b][None, :, None, :]
            cols.append(a.reshape(n_vox, -1))
        return torch.cat(cols, dim=1)

    @classmethod
    def for_patient(cls, patient, angles=None, target=None, n_beams=None, **kw):
        """Engine for a :class:`~rtlearn.phantom.anatomy.Patient`; beamlets cover all its targets.

        Without ``angles`` the site's :func:`default_angles`; for the breast the
        two partial arcs of :func:`breast_arc_angles` start at this patient's
        tangents (:func:`tangent_angle` of the target, sparing lungs and heart).
        """
        if target is None:
            target = np.zeros(patient.shape, bool)
            for t in patient.prescriptions:
                target |= patient.masks[t]
        if angles is None:
            angles = default_angles(patient.site, n_beams)
            avoid = np.zeros(patient.shape, bool)
            for name in ("Lung_L", "Lung_R", "Heart"):
                if patient.site == "breast" and name in patient.masks:
                    avoid |= patient.masks[name]
            if avoid.any():  # left breast: the arcs start at this patient's tangents
                angles = breast_arc_angles(tangent_angle(target, avoid, patient.spacing), n_beams)
        return cls(patient.density, patient.body, patient.spacing, angles, target=target, **kw)


def water_phantom(shape=(200, 200), spacing=1.0, dims=2):
    """A water box filling the grid but for 20 mm of air on each side: (density, body)."""
    shape = tuple(shape)
    sp = np.broadcast_to(np.asarray(spacing, float), (len(shape),))
    body = np.zeros(shape, bool)
    sl = tuple(slice(int(round(20 / s)), n - int(round(20 / s))) for n, s in zip(shape, sp))
    if len(shape) == 3:
        sl = (slice(None),) + sl[1:]
    body[sl] = True
    return body.astype(np.float32), body


def central_axis_pdd(model: BeamModel | None = None, field_mm: float = 100.0, depth_max_mm: float = 250.0,
                     step_mm: float = 1.0):
    """Percent depth dose on the central axis in water (SSD = SAD), from the engine.

    Returns ``(depth_mm, pdd)`` with ``pdd`` normalised to 1 at its maximum.
    """
    n = int(round((depth_max_mm + 60) / step_mm))
    w = int(round((field_mm + 120) / step_mm))
    dens, body = water_phantom((n, w), step_mm)
    ys = _axis_coords(n, step_mm)
    surface = ys[body[:, w // 2]][0] - step_mm / 2
    eng = DoseEngine(dens, body, (step_mm, step_mm), [0.0], field_mm=field_mm,
                     isocentre=(surface, 0.0), beamlet_mm=field_mm / max(1, round(field_mm / 5)), model=model,
                     dtype=torch.float64)
    dose = eng.dose(torch.ones(eng.n_beamlets, dtype=torch.float64)).numpy()
    col = dose[:, w // 2]
    inside = body[:, w // 2]
    depth = ys[inside] - surface
    prof = col[inside]
    return depth, prof / prof.max()


def lateral_profile(model: BeamModel | None = None, field_mm: float = 100.0, depth_mm: float = 100.0,
                    step_mm: float = 0.5, beyond_edge_mm: float = 40.0):
    """Cross-beam dose profile at ``depth_mm`` in water: ``(x_mm, dose / central dose)``.

    The water extends ``beyond_edge_mm`` past each field edge (use 120 mm or more to
    see the out-of-field dose far from the field).
    """
    if not beyond_edge_mm > 0:
        raise ValueError(f"beyond_edge_mm must be > 0, got {beyond_edge_mm!r}")
    n = int(round((depth_mm + 80) / step_mm))
    w = int(round((field_mm + 2 * beyond_edge_mm + 40) / step_mm))
    dens, body = water_phantom((n, w), step_mm)
    ys, xs = _axis_coords(n, step_mm), _axis_coords(w, step_mm)
    surface = ys[body[:, w // 2]][0] - step_mm / 2
    eng = DoseEngine(dens, body, (step_mm, step_mm), [0.0], field_mm=field_mm, isocentre=(surface, 0.0),
                     beamlet_mm=field_mm / max(1, round(field_mm / 5)), model=model, dtype=torch.float64)
    dose = eng.dose(torch.ones(eng.n_beamlets, dtype=torch.float64)).numpy()
    row = dose[int(np.argmin(np.abs(ys - surface - depth_mm)))]
    return xs, row / row[w // 2]


def penumbra_80_20(x, profile) -> float:
    """Width (mm) between the 80 % and 20 % levels on the right-hand field edge."""
    x = np.asarray(x)
    p = np.asarray(profile)
    right = x >= 0
    xr, pr = x[right], p[right]
    # pr decreases: interpolate on the reversed arrays
    x80 = np.interp(0.8, pr[::-1], xr[::-1])
    x20 = np.interp(0.2, pr[::-1], xr[::-1])
    return float(x20 - x80)
