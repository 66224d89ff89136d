"""Seeded phantom anatomies: breast, prostate, head and neck, brain.

Every anatomy is built from simple solids (ellipsoids, elliptic cylinders,
shells and lobulated blobs) placed in millimetres, so the same seed gives the
same patient at any voxel size. A 2D patient is the 3D anatomy of the same
seed evaluated on the single axial plane ``z = 0`` (its CT noise differs).

Sizes, positions and the distances between targets and organs at risk are drawn
from ``numpy.random.default_rng(seed)``, so that learning dose or segmentation
from many phantoms is not trivial; nothing here uses global random state.

Coordinates: arrays are ``(Z, Y, X)`` (3D) or ``(Y, X)`` (2D); ``y`` grows
posteriorly and ``x`` towards the patient's left (the usual radiological
display seen from the feet). The origin is the centre of the grid.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .._validate import check_mask, check_spacing
from .mr import BRAIN_TISSUES, mr_channels

SITES = ("breast", "prostate", "head_neck", "brain")

#: default 2D / 3D grid shapes and voxel spacings (mm) per site
DEFAULT_SHAPE = {2: (128, 128), 3: (64, 128, 128)}
DEFAULT_SPACING = {
    "breast": (4.0, 3.0, 3.0),
    "prostate": (3.0, 3.2, 3.2),
    "head_neck": (3.0, 2.0, 2.0),
    "brain": (2.5, 1.8, 1.8),
}

#: prescriptions in Gy (breast: 50 Gy as in Bai et al. 2021; brain: 30 x 2 Gy as
#: in DOSELO; head and neck: OpenKBP's three dose levels; prostate: our choice)
PRESCRIPTIONS = {
    "breast": {"PTV": 50.0},
    "prostate": {"PTV": 78.0},
    "head_neck": {"PTV70": 70.0, "PTV63": 63.0, "PTV56": 56.0},
    "brain": {"PTV": 60.0},
}

#: ROI names per site in priority order (targets first); used by
#: :meth:`Patient.roi_map` and by the datasets to order channels.
ROI_NAMES = {
    "breast": ("PTV", "Lung_L", "Heart", "Lung_R", "SpinalCord"),
    "prostate": ("PTV", "Rectum", "Bladder", "FemoralHead_L", "FemoralHead_R"),
    "head_neck": ("PTV70", "PTV63", "PTV56", "SpinalCord", "Brainstem", "RightParotid",
                  "LeftParotid", "Larynx", "Esophagus", "Mandible"),
    "brain": ("PTV", "GTV", "Brainstem", "OpticChiasm", "Eye_L", "Eye_R"),
}

#: Further structures per site for segmentation only (not planned on and not in
#: :data:`ROI_NAMES`, whose head-and-neck list is OpenKBP's): the small, weakly
#: contrasted organs of the PDDCA head-and-neck segmentation set.
EXTRA_ROIS = {
    "breast": (),
    "prostate": (),
    "head_neck": ("OpticChiasm", "OpticNerve_L", "OpticNerve_R", "Submandibular_L", "Submandibular_R"),
    "brain": (),
}

#: CT numbers (HU) of the tissue classes
HU = {
    "air": -1000.0, "lung": -780.0, "fat": -90.0, "breast": -55.0, "soft": 35.0,
    "muscle": 45.0, "heart": 40.0, "bone": 650.0, "dense_bone": 1000.0, "urine": 10.0,
    "gas": -900.0, "csf": 8.0, "gm": 40.0, "wm": 28.0, "tumour": 45.0, "edema": 22.0,
    "eye": 12.0, "cartilage": 120.0,
}


def hu_to_density(hu) -> np.ndarray:
    """Relative electron density (water = 1) from CT numbers.

    A bilinear calibration curve (the usual shape of a CT-to-density table):

    .. math:: \\rho = 1 + \\mathrm{HU}/1000 \\ (\\mathrm{HU} \\le 0), \\qquad
              \\rho = 1 + 0.6\\,\\mathrm{HU}/1000 \\ (\\mathrm{HU} > 0),

    clipped at 0 (air).
    """
    hu = np.asarray(hu, dtype=np.float64)
    rho = np.where(hu <= 0, 1.0 + hu / 1000.0, 1.0 + 0.6 * hu / 1000.0)
    return np.clip(rho, 0.0, None).astype(np.float32)


@dataclass
class Patient:
    """A phantom patient.

    Attributes
    ----------
    site : str
        ``"breast"``, ``"prostate"``, ``"head_neck"`` or ``"brain"``.
    seed : int
        The seed that made it (same seed, same patient).
    ct_hu : ndarray, float32
        CT-like image in Hounsfield units, shape ``(H, W)`` or ``(Z, H, W)``.
    density : ndarray, float32
        Relative electron density from :func:`hu_to_density` (water = 1).
    masks : dict of str to bool ndarray
        Structures: those of :data:`ROI_NAMES` and of :data:`EXTRA_ROIS`
        (segmentation only). In 2D a structure absent from the slice is left out.
    body : bool ndarray
        External contour.
    spacing : tuple of float
        Voxel size in mm, one value per array axis.
    prescriptions : dict of str to float
        Target name to prescribed dose (Gy).
    mr : dict of str to ndarray or None
        MR-like channels ``T1, T1c, T2, FLAIR`` (brain only), float32 in [0, ~1.2].
    """

    site: str
    seed: int
    ct_hu: np.ndarray
    density: np.ndarray
    masks: dict
    body: np.ndarray
    spacing: tuple
    prescriptions: dict
    mr: dict | None = None
    labels: np.ndarray | None = field(default=None, repr=False)

    @property
    def shape(self) -> tuple:
        return tuple(self.ct_hu.shape)

    @property
    def dims(self) -> int:
        return self.ct_hu.ndim

    @property
    def voxel_volume_mm3(self) -> float:
        return float(np.prod(self.spacing))

    @property
    def targets(self) -> list:
        """Target names, highest prescription first."""
        return sorted(self.prescriptions, key=lambda k: -self.prescriptions[k])

    @property
    def primary_target(self) -> str:
        return self.targets[0]

    @property
    def oars(self) -> list:
        """Organs at risk present in this patient, in :data:`ROI_NAMES` order."""
        skip = set(self.prescriptions) | {"GTV"}
        return [n for n in ROI_NAMES[self.site] if n in self.masks and n not in skip]

    def roi_map(self) -> np.ndarray:
        """One-channel map of the structures (Bai et al. 2021, Sec. 2.1).

        With the ``n`` ROIs of :data:`ROI_NAMES` in priority order, ROI ``k``
        (0-based) gets the value :math:`(n + 1 - k)/(n + 1)`, other body tissue
        :math:`1/(n+1)` and outside the body 0. For the breast site this is
        exactly Bai et al.'s map: PTV 1.000, ipsilateral lung 0.833, heart 0.667,
        contralateral lung 0.500, spinal cord 0.333, other tissue 0.167.
        Higher-priority ROIs are painted over lower ones where they overlap.
        """
        names = [n for n in ROI_NAMES[self.site] if n != "GTV" or self.site != "brain"]
        n = len(names)
        out = np.zeros(self.shape, np.float32)
        out[self.body] = 1.0 / (n + 1)
        for k in range(n - 1, -1, -1):
            m = self.masks.get(names[k])
            if m is not None:
                out[m] = (n + 1 - k) / (n + 1)
        return out

    def structure_stack(self, names=None) -> np.ndarray:
        """Boolean stack ``(len(names), *shape)``; absent structures are all False."""
        names = ROI_NAMES[self.site] if names is None else names
        out = np.zeros((len(names),) + self.shape, bool)
        for i, n in enumerate(names):
            if n in self.masks:
                out[i] = self.masks[n]
        return out

    def with_target(self, target, name: str | None = None, prescription: float | None = None):
        """A copy whose (primary) target mask is replaced by ``target``.

        Used to plan on a predicted segmentation (DOSELO): the anatomy stays, the
        target changes. Other targets are removed.
        """
        name = name or self.primary_target
        rx = self.prescriptions[self.primary_target] if prescription is None else prescription
        _check_rx(rx, name)
        tgt = check_mask(target, self.shape, name=f"target {name!r}", allow_empty=True)
        if not tgt.any():
            raise ValueError(f"target {name!r} is empty; a target must contain at least one voxel")
        if not (tgt & self.body).any():
            raise ValueError(f"target {name!r} lies entirely outside the body; it must overlap the body mask")
        masks = {k: v for k, v in self.masks.items() if k not in self.prescriptions}
        masks[name] = tgt & self.body
        return Patient(self.site, self.seed, self.ct_hu, self.density, masks, self.body,
                       self.spacing, {name: float(rx)}, self.mr, self.labels)


def _check_rx(rx, name):
    if not isinstance(rx, numbers.Real) or not np.isfinite(rx) or rx <= 0:
        raise ValueError(f"prescription for {name!r} must be a positive dose in Gy, got {rx!r}")


# --------------------------------------------------------------------------- solids
class _Grid:
    """Voxel-centre coordinates (mm) of a ``(Z, Y, X)`` grid centred on 0."""

    def __init__(self, shape3, spacing3):
        self.shape = shape3
        self.spacing = spacing3
        ax = [(np.arange(n) - (n - 1) / 2.0) * s for n, s in zip(shape3, spacing3)]
        if shape3[0] == 1:
            ax[0] = np.zeros(1)
        self.z = ax[0][:, None, None]
        self.y = ax[1][None, :, None]
        self.x = ax[2][None, None, :]

    def ellipsoid(self, c, r, angle_deg=0.0):
        """Points inside the ellipsoid with centre ``c`` and semi-axes ``r`` (z, y, x);
        ``r[0] = None`` gives an infinite elliptic cylinder; ``angle_deg`` rotates in-plane."""
        a = np.deg2rad(angle_deg)
        dy, dx = self.y - c[1], self.x - c[2]
        u = np.cos(a) * dy - np.sin(a) * dx
        v = np.sin(a) * dy + np.cos(a) * dx
        q = (u / r[1]) ** 2 + (v / r[2]) ** 2
        if r[0] is not None:
            q = q + ((self.z - c[0]) / r[0]) ** 2
        return np.broadcast_to(q <= 1.0, self.shape).copy()

    def blob(self, rng, c, r, n_lobes=4, spread=0.45):
        """A lobulated solid: union of ``n_lobes`` ellipsoids scattered around ``c``."""
        out = self.ellipsoid(c, r)
        for _ in range(n_lobes - 1):
            off = rng.normal(0.0, spread, 3) * np.asarray(r)
            rr = np.asarray(r) * rng.uniform(0.5, 0.85, 3)
            out |= self.ellipsoid(np.asarray(c) + off, rr, rng.uniform(0, 180))
        return out


def _distance_inside(mask, spacing):
    """Distance (mm) from each voxel inside ``mask`` to the nearest voxel outside."""
    return ndimage.distance_transform_edt(mask, sampling=spacing)


def _dilate(mask, mm, spacing):
    """Isotropic dilation by ``mm`` using the Euclidean distance transform."""
    if not mask.any():
        return mask.copy()
    return ndimage.distance_transform_edt(~mask, sampling=spacing) <= mm


# --------------------------------------------------------------------------- sites
def _breast(g, rng):
    """Left-sided breast at the level of the nipple (Bai et al. 2021).

    A slim thorax (subcutaneous fat, a thin chest wall of muscle and ribs
    6-10 mm thick anteriorly, a sternum), lungs that fill the pleural cavity
    up to the chest wall, a mediastinum with the heart shifted to the left and
    anterior (its gap to the chest wall under the left breast varies with the
    seed), the descending aorta and the spine. The breasts lie on the chest
    wall; the PTV is the left breast cropped 5 mm from the skin, down to the
    chest wall, so the ipsilateral lung lies about one chest wall thickness
    behind it, as in the clinic.
    """
    U = rng.uniform
    ry, rx = U(94, 106), U(130, 148)                    # torso semi-axes (AP, lateral)
    y0 = U(12, 24)                                     # torso centre (posterior of the grid centre)
    body = g.ellipsoid((0, y0, 0), (650, ry, rx))
    fat, wall, back, lat = U(6, 14), U(6, 10), U(8, 14), U(2, 8)
    a_out, b_out = ry - fat, rx - fat                  # outer surface of the chest wall
    thorax_out = g.ellipsoid((0, y0, 0), (650, a_out, b_out))
    cy = y0 - back                                     # cavity centre: thicker wall at the back
    a_in, b_in = a_out - wall - back, b_out - wall - lat
    thorax_in = g.ellipsoid((0, cy, 0), (None, a_in, b_in))
    y_ant = cy - a_in                                  # anterior edge of the cavity (midline)

    def on_wall(psi, side):
        """Point of the chest-wall surface at parametric angle ``psi`` and its outward normal."""
        py, px = y0 - a_out * np.cos(psi), side * b_out * np.sin(psi)
        n = np.array([(py - y0) / a_out ** 2, px / b_out ** 2])
        return py, px, n / np.hypot(*n)

    def breast(side, scale):
        psi = np.deg2rad(U(40, 52))
        py, px, n = on_wall(psi, side)
        off, h = U(-4, 6), U(36, 56) * scale
        base, rz = U(70, 85) * scale, U(70, 90) * scale
        ang = np.rad2deg(np.arctan2(-n[1], n[0]))
        return g.ellipsoid((U(-8, 8), py + off * n[0], px + off * n[1]), (rz, h, base), ang)

    breast_l = breast(1.0, 1.0)
    breast_r = breast(-1.0, U(0.85, 1.05))
    body = body | breast_l | breast_r
    # sternum and ribs in the chest wall
    bone = g.ellipsoid((0, y_ant - wall / 2, U(-3, 3)), (None, wall * 0.4, U(12, 16)))
    phis = np.deg2rad(np.arange(U(18, 26), 162, U(15, 19)))
    for side in (1.0, -1.0):
        for phi in phis + np.deg2rad(U(-3, 3, phis.size)):
            ry_w, rx_w = a_out - wall / 2, b_out - wall / 2
            py, px = y0 - ry_w * np.cos(phi), side * rx_w * np.sin(phi)
            t_ang = np.rad2deg(np.arctan2(-(px / rx_w ** 2), (py - y0) / ry_w ** 2))
            bone |= g.ellipsoid((0, py, px), (None, wall * 0.35, U(7, 12)), t_ang)
    bone &= thorax_out & ~thorax_in
    # spine: the vertebral body bulges into the back of the cavity, the cord behind it
    vb_r, cord_r = U(14, 18), U(5, 7)
    y_post = cy + a_in
    vb_cy = y_post - vb_r + U(4, 8)
    cord_cy = vb_cy + vb_r + 3 + cord_r
    vb = g.ellipsoid((0, vb_cy, 0), (None, vb_r, vb_r * 1.2))
    arch = g.ellipsoid((0, cord_cy + 2, 0), (None, cord_r + 7, cord_r + 8))
    cord = g.ellipsoid((0, cord_cy, U(-2, 2)), (None, cord_r, cord_r))
    spine = (vb | arch) & ~cord
    # heart: left and anterior, 0-18 mm behind the anterior chest wall
    hz, hrz = U(-30, -10), U(50, 65)
    k = np.sqrt(max(1.0 - (hz / hrz) ** 2, 0.25))
    h_ry, h_rx, h_ang = U(38, 48), U(46, 58), U(-35, -12)
    a = np.deg2rad(h_ang)
    ext_y = k * np.hypot(h_ry * np.cos(a), h_rx * np.sin(a))
    hx = U(12, 30)
    heart = g.ellipsoid((hz, y_ant + U(3, 20) + ext_y, hx), (hrz, h_ry, h_rx), h_ang) & thorax_in
    aorta = g.ellipsoid((0, vb_cy - vb_r * U(0.2, 0.6), U(16, 24)), (None, U(10, 13), U(10, 13)))
    xm = U(-6, 4)
    mediastinum = g.ellipsoid((0, cy, xm), (None, a_in, U(15, 22))) | heart | aorta | vb
    # lungs fill the cavity in the slice z = 0 and end at the apex (above) and the base (below)
    lz, lrz = U(10, 40), U(120, 150)
    kl = np.sqrt(1.0 - (lz / lrz) ** 2)
    lungs = g.ellipsoid((lz, cy, 0), (lrz, a_in / kl, b_in / kl)) & thorax_in & ~mediastinum
    lung_l = lungs & (g.x > xm)
    lung_r = lungs & (g.x <= xm)
    breast_tissue = breast_l & body & ~thorax_out
    ptv = breast_tissue & (_distance_inside(body, g.spacing) > 5.0)
    hu = np.full(g.shape, HU["air"])
    hu[body] = HU["fat"]
    hu[(breast_l | breast_r) & body & ~thorax_out] = HU["breast"]
    hu[thorax_out & ~thorax_in] = HU["muscle"]
    hu[thorax_in] = HU["soft"]
    hu[bone] = HU["bone"]
    hu[lung_l | lung_r] = HU["lung"]
    hu[heart | aorta] = HU["heart"]
    hu[spine] = HU["bone"]
    hu[cord] = HU["soft"]
    masks = {"PTV": ptv, "Lung_L": lung_l, "Lung_R": lung_r, "Heart": heart, "SpinalCord": cord}
    return hu, body, masks, None


def _prostate(g, rng):
    U = rng.uniform
    ry, rx = U(105, 125), U(165, 190)
    body = g.ellipsoid((0, 0, 0), (650, ry, rx))
    c = np.array([U(-5, 5), U(0, 20), U(-5, 5)])
    ctv_r = np.array([U(18, 25), U(17, 24), U(22, 30)])
    margin = U(5, 8)
    ptv = g.ellipsoid(c, ctv_r + margin)
    # rectum posterior: overlap with the PTV from -3 mm (a gap) to 10 mm
    r_rect = U(12, 18)
    rect_c = (c[0] - U(0, 15), c[1] + ctv_r[1] + margin + r_rect - U(-3, 10), c[2] + U(-5, 5))
    rectum = g.ellipsoid(rect_c, (U(50, 70), r_rect, r_rect * U(1.0, 1.3)))
    gas = g.ellipsoid(rect_c, (8, r_rect * 0.4, r_rect * 0.5)) if U(0, 1) < 0.3 else np.zeros(g.shape, bool)
    # bladder anterior and superior
    b_r = (U(30, 45), U(25, 40), U(35, 55))
    bl_c = (c[0] + U(5, 20), c[1] - ctv_r[1] - margin - b_r[1] + U(-2, 12), c[2] + U(-8, 8))
    bladder = g.ellipsoid(bl_c, b_r)
    fh_r = U(21, 25)
    fh_y, fh_x = U(0, 15), U(85, 100)
    fh_l = g.ellipsoid((U(-5, 5), fh_y, fh_x), (fh_r, fh_r, fh_r))
    fh_r_ = g.ellipsoid((U(-5, 5), fh_y, -fh_x), (fh_r, fh_r, fh_r))
    sacrum = g.ellipsoid((0, ry - U(25, 35), 0), (80, U(12, 18), U(25, 35)))
    hu = np.full(g.shape, HU["air"])
    hu[body] = HU["fat"]
    hu[g.ellipsoid((0, 0, 0), (650, ry - U(15, 25), rx - U(20, 35)))] = HU["muscle"]
    hu[ptv] = HU["soft"]
    hu[rectum] = HU["soft"]
    hu[gas & rectum] = HU["gas"]
    hu[bladder] = HU["urine"]
    hu[fh_l | fh_r_ | sacrum] = HU["bone"]
    masks = {"PTV": ptv, "Rectum": rectum, "Bladder": bladder,
             "FemoralHead_L": fh_l, "FemoralHead_R": fh_r_}
    return hu, body, masks, None


def _head_neck(g, rng):
    """An oropharynx case with OpenKBP's three dose levels and seven organs at risk.

    The slice ``z = 0`` (the 2D patient) compresses the head and neck into one
    axial plane, so that every OpenKBP organ at risk is in it: anterior to
    posterior, the mandible (a U open to the back) with the larynx inside its arc
    (in the body the larynx lies caudal to the mandible), the primary target
    (PTV70: oropharynx or base of tongue, around the front of the pharyngeal
    airway), the pharyngeal airway, the oesophagus (posterior to the airway and
    larynx, anterior to the vertebral body, never in the PTV70), the vertebra
    with the spinal cord in its canal and, behind the vertebral arch, the
    brainstem (in the body it lies cranial to the cord, at the skull base; here
    it is drawn behind the canal, leaving 25 mm behind the arch, where the neck
    is deep enough, for the other skull-base organs). The parotids lie laterally behind the mandibular rami;
    the elective nodal targets (PTV63 on one side, PTV56 on the other) lie
    between them and the pharynx. In 3D the larynx and oesophagus extend
    caudally, the parotids and brainstem cranially. The default plan then gives
    mean organ doses near the medians of OpenKBP's reference plans.
    """
    U = rng.uniform
    ry, rx = U(80, 95), U(65, 80)
    body = g.ellipsoid((0, 0, 0), (500, ry, rx))
    vb_c, vb_r = U(4, 14), U(12, 15)
    cord_r = U(4.5, 6)
    cord_cy = vb_c + vb_r + cord_r + 2
    vert = g.ellipsoid((0, vb_c, 0), (None, vb_r, vb_r * 1.15)) | g.ellipsoid((0, cord_cy, 0), (None, cord_r + 4, cord_r + 5))
    cord = g.ellipsoid((0, cord_cy, 0), (None, cord_r, cord_r))
    vert &= ~cord
    # brainstem (medulla-sized on the slice) 25 mm or more behind the arch, 6 mm or more inside the skin
    bs_ry = U(6, 8)
    bs_cy = min(cord_cy + cord_r + 4 + U(25, 30) + bs_ry, ry - 6 - bs_ry)
    brainstem = g.ellipsoid((U(10, 20), bs_cy, 0), (U(30, 36), bs_ry, U(9, 12)))
    m_c = (U(0, 10), U(-31, -21), 0)
    m_ry, m_rx = U(35, 43), U(38, 46)
    m_c = (m_c[0], max(m_c[1], -ry + 8 + m_ry), 0)  # 8 mm or more of soft tissue in front of the chin
    m_out = g.ellipsoid(m_c, (U(22, 30), m_ry, m_rx))
    th = U(6, 9)
    m_in = g.ellipsoid(m_c, (300, m_ry - th, m_rx - th))
    mandible = m_out & ~m_in & (g.y < m_c[1] + U(0, 10)) & body
    side = 1.0 if U(0, 1) < 0.5 else -1.0
    par = {}
    for name, sx in (("RightParotid", -1.0), ("LeftParotid", 1.0)):
        par[name] = g.ellipsoid((U(5, 15), U(4, 18), sx * U(40, 50)), (U(18, 25), U(12, 18), U(9, 14))) & body
    # larynx inside the mandible's arc (cut by its inner face; at least a third of it behind that face)
    l_z, l_cy, l_rz, l_ry, l_rx = U(-20, -10), U(-64, -50), U(22, 30), U(10, 14), U(12, 16)
    l_cy = max(l_cy, m_c[1] - (m_ry - th) + l_ry / 3)
    larynx = g.ellipsoid((l_z, l_cy, 0), (l_rz, l_ry, l_rx)) & m_in & body
    # oesophagus 1-3 mm in front of the vertebral body, airway 1-4 mm in front of the oesophagus
    e_ry, e_x, e_r = U(5, 7), U(-3, 3), U(5, 7)
    e_cy = vb_c - vb_r - U(1, 3) - e_ry
    eso = g.ellipsoid((-60, e_cy, e_x), (100, e_ry, e_r))
    a_ry, a_rx = U(4, 7), U(6, 9)
    airway = g.ellipsoid((0, e_cy - e_ry - U(1, 4) - a_ry, 0), (None, a_ry, a_rx))
    prim_c = (U(-5, 5), U(-40, -28), U(-12, 12))
    ptv70 = g.blob(rng, prim_c, (U(14, 22), U(10, 15), U(12, 18))) & body & ~cord & ~_dilate(eso, 2.0, g.spacing)
    ptv63 = g.blob(rng, (U(-15, 5), U(-14, 1), side * U(28, 40)), (U(25, 35), U(12, 18), U(10, 15)), 3) & body & ~cord
    ptv56 = g.blob(rng, (U(-15, 5), U(-14, 1), -side * U(28, 40)), (U(25, 35), U(12, 18), U(10, 15)), 3) & body & ~cord
    hu = np.full(g.shape, HU["air"])
    hu[body] = HU["soft"]
    hu[body & (_distance_inside(body, g.spacing) < U(4, 8))] = HU["fat"]
    for m, v in ((larynx, HU["cartilage"]), (eso, HU["muscle"]), (par["RightParotid"], -20.0),
                 (par["LeftParotid"], -20.0), (ptv70, HU["muscle"]), (airway, HU["gas"]),
                 (vert, HU["bone"]), (cord, HU["soft"]), (mandible, HU["dense_bone"])):
        hu[m] = v
    masks = {"PTV70": ptv70, "PTV63": ptv63, "PTV56": ptv56, **par, "SpinalCord": cord,
             "Brainstem": brainstem, "Mandible": mandible, "Larynx": larynx, "Esophagus": eso & body}
    masks.update(_pddca_organs(g, rng, hu, body, masks))
    return hu, body, masks, None


def _capsule(g, a, b, r):
    """Points within ``r`` mm of the segment from ``a`` to ``b`` ((z, y, x) in mm): a rounded tube."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    d = b - a
    pz, py, px = g.z - a[0], g.y - a[1], g.x - a[2]
    t = np.clip((pz * d[0] + py * d[1] + px * d[2]) / float(d @ d), 0.0, 1.0)
    dist2 = (pz - t * d[0]) ** 2 + (py - t * d[1]) ** 2 + (px - t * d[2]) ** 2
    return np.broadcast_to(dist2 <= r * r, g.shape).copy()


def _pddca_organs(g, rng, hu, body, masks):
    """Small, weakly contrasted head-and-neck organs of the PDDCA set; paints ``hu`` in place.

    The phantom compresses the anatomy of the head into the plane ``z = 0`` (the
    2D patient): the optic chiasm and optic nerves, which lie at the skull base,
    are drawn in this plane behind the cervical spine, next to the organs of the
    neck, so that one axial slice holds all of PDDCA's organs. Each crosses
    ``z = 0`` in 3D as well.

    * ``OpticChiasm``: a flat ellipsoid 12-18 mm wide, 6-9 mm deep and 4-6 mm
      thick (about 0.2-0.5 cm³), 6-12 mm behind the vertebral arch.
    * ``OpticNerve_L`` / ``OpticNerve_R``: tubes of 3.6-5.2 mm diameter and
      22-32 mm length, leaving the chiasm laterally and running 20-50 degrees
      anteriorly. Chiasm and nerves (30-40 HU, like white matter) lie in a 1.5-3 mm
      sheath of cerebrospinal fluid (2-14 HU) in soft tissue (35 HU): a contrast of
      a few tens of HU.
    * ``Submandibular_L`` / ``Submandibular_R``: lobulated glands (three
      ellipsoids, semi-axes 9-13 x 7-11 x 5.5-8.5 mm) just medial to the posterior
      part of the mandible, 12-25 HU denser than the soft tissue around them.
    * Teeth: 6 to 14 dense blobs (5-9 mm across, 1400-2200 HU, not part of
      ``Mandible``) along the inner face of the mandible (the dental arch), so
      that bone intensity alone does not delineate it.

    Positions follow the spinal cord and the mandible of the slice ``z = 0``;
    the new organs never overlap the other organs at risk, bone or air.
    """
    U = rng.uniform
    sp = g.spacing
    iz = int(np.argmin(np.abs(g.z[:, 0, 0])))
    ys, xs = g.y[0, :, 0], g.x[0, 0, :]
    occupied = (hu <= -500.0) | (hu >= 300.0) | ~body
    for name, m in masks.items():
        if not name.startswith("PTV"):
            occupied |= m
    cord = masks["SpinalCord"][iz]
    if cord.any():
        yy, xx = np.nonzero(cord)
        cy, cx, rc = ys[yy].mean(), xs[xx].mean(), np.sqrt(cord.sum() * sp[1] * sp[2] / np.pi)
    else:  # a grid too coarse for the cord
        cy, cx, rc = 0.4 * ys[np.nonzero(body[iz])[0]].max(), 0.0, 5.0
    # optic chiasm and nerves in a CSF sheath
    zc = U(-0.5, 0.5)
    chi_r = (U(2.0, 3.0), U(3.0, 4.5), U(6.0, 9.0))
    col = body[iz][:, int(np.argmin(np.abs(xs - cx)))]
    y_back = ys[np.nonzero(col)[0]].max() if col.any() else ys.max()
    yc = min(cy + rc + 4.0 + U(6.0, 12.0) + chi_r[1], y_back - 12.0 - chi_r[1])
    xc = cx + U(-4.0, 4.0)
    chiasm = g.ellipsoid((zc, yc, xc), chi_r, U(-15.0, 15.0))
    optic = {"OpticChiasm": chiasm}
    for name, s in (("OpticNerve_L", 1.0), ("OpticNerve_R", -1.0)):
        r, length, ang = U(1.8, 2.6), U(22.0, 32.0), np.deg2rad(U(20.0, 50.0))
        a = (zc, yc + U(-1.0, 1.0), xc + s * 0.7 * chi_r[2])
        b = (zc + U(-0.5, 0.5), a[1] - length * np.sin(ang), a[2] + s * length * np.cos(ang))
        optic[name] = _capsule(g, a, b, r) & ~chiasm
    optic = {k: v & ~occupied for k, v in optic.items()}
    nerve_all = optic["OpticChiasm"] | optic["OpticNerve_L"] | optic["OpticNerve_R"]
    sheath = _dilate(nerve_all, U(1.5, 3.0), sp) & ~nerve_all & ~occupied
    hu[sheath] = U(2.0, 14.0)
    hu[nerve_all] = U(30.0, 40.0)
    occupied |= nerve_all | sheath
    # submandibular glands medial to the posterior part of the mandible
    mand = masks["Mandible"][iz]
    glands = {}
    for name, s in (("Submandibular_L", 1.0), ("Submandibular_R", -1.0)):
        side = mand & (s * xs[None, :] > 0)
        if side.any():
            yy, xx = np.nonzero(side)
            y_end = ys[yy].max()
            x_in = np.abs(xs[xx[ys[yy] > y_end - 15.0]]).min()
        else:  # a grid too coarse for the mandible
            y_end, x_in = -15.0, 35.0
        r = (U(9.0, 13.0), U(7.0, 11.0), U(5.5, 8.5))
        c = (U(-3.0, 3.0), y_end - U(4.0, 16.0), s * (x_in - r[2] - U(0.5, 4.0)))
        glands[name] = g.blob(rng, c, r, n_lobes=3, spread=0.3) & ~occupied
        hu[glands[name]] = HU["soft"] + U(12.0, 25.0)
        occupied |= glands[name]
    # teeth along the inner face of the mandible (dense bone, not mandible)
    inside = (np.maximum.accumulate(mand, axis=0) & np.maximum.accumulate(mand, axis=1)
              & np.maximum.accumulate(mand[:, ::-1], axis=1)[:, ::-1] & ~mand)
    near = inside & (ndimage.distance_transform_edt(~mand, sampling=sp[1:]) <= 4.0) if mand.any() else inside
    cand = np.flatnonzero(near)
    teeth = np.zeros(g.shape, bool)
    for _ in range(int(rng.integers(6, 15))):
        u, rr, rz, zt, v = U(0, 1), U(2.5, 4.5), U(3.0, 6.0), U(-2.0, 2.0), U(1400.0, 2200.0)
        if cand.size:
            iy, ix = np.unravel_index(cand[int(u * cand.size)], mand.shape)
            tooth = g.ellipsoid((zt, ys[iy], xs[ix]), (rz, rr, rr)) & ~teeth & body & ~(occupied & (hu < 300.0))
            tooth &= ~masks["Mandible"]
            hu[tooth] = v
            teeth |= tooth
    return {**optic, **glands}


#: most mimics per brain (:func:`make_patient`'s ``mimics``)
MAX_MIMICS = 10
#: least distance (mm) from a mimic to the GTV, and to the tumour's oedema
MIMIC_GTV_DISTANCE_MM = 20.0
MIMIC_EDEMA_DISTANCE_MM = 4.0


def _check_mimics(mimics, site):
    """``None`` for no mimics, else an ``int`` count or a ``float`` Poisson mean (see :func:`make_patient`)."""
    if mimics is None:
        return None
    if isinstance(mimics, (bool, np.bool_)) or not isinstance(mimics, numbers.Real):
        raise ValueError(f"mimics must be None, an int count or a float rate, got {mimics!r}")
    if isinstance(mimics, (int, np.integer)):
        if not 0 <= mimics <= MAX_MIMICS:
            raise ValueError(f"mimics (a count) must be in 0..{MAX_MIMICS}, got {mimics!r}")
        value = int(mimics)
    else:
        if not np.isfinite(mimics) or not 0.0 <= mimics <= MAX_MIMICS:
            raise ValueError(f"mimics (a Poisson rate) must be a finite number in [0, {MAX_MIMICS}], got {mimics!r}")
        value = float(mimics)
    if value == 0:
        return None
    if site != "brain":
        raise ValueError(f"mimics exist only for site 'brain', not {site!r}")
    return value


def _place_mimics(g, rng, mimics, semi_axes, brain, gtv, edema, oar):
    """Enhancing non-tumour spots ("mimics") in the brain, far from the GTV.

    Each mimic is an ellipsoid with semi-axes of 3 to 7.5 mm in-plane (6 to 15 mm
    across; elongated up to 2:1 like a vessel, or round like a small meningioma or
    a choroid-plexus tuft), centred within 0.4 of its z semi-axis of the plane
    ``z = 0`` (so every mimic cuts the 2D slice), lying wholly in the brain, at least
    :data:`MIMIC_GTV_DISTANCE_MM` from the GTV, :data:`MIMIC_EDEMA_DISTANCE_MM` from
    the oedema, outside the organs at risk and at least 6 mm from the other mimics;
    on the grid it is one connected piece (26-connected, 8 in 2D).
    Positions and sizes are drawn in mm from ``rng`` (a fixed number of draws per
    try); a try whose solid breaks a rule on this grid is redrawn, up to 300 tries
    per mimic (a mimic that finds no place is left out). ``mimics``: an int is the
    count, a float the mean of a Poisson count (at most :data:`MAX_MIMICS`).
    """
    n = mimics if isinstance(mimics, int) else min(int(rng.poisson(mimics)), MAX_MIMICS)
    sp = g.spacing
    d_gtv = ndimage.distance_transform_edt(~gtv, sampling=sp)
    d_ed = ndimage.distance_transform_edt(~edema, sampling=sp) if edema.any() else np.full(g.shape, np.inf)
    allowed = brain & ~oar & (d_gtv >= MIMIC_GTV_DISTANCE_MM) & (d_ed >= MIMIC_EDEMA_DISTANCE_MM)
    out = np.zeros(g.shape, bool)
    near = np.zeros(g.shape, bool)
    for _ in range(n):
        for _try in range(300):
            a = rng.uniform(3.0, 7.5)
            r = (a * rng.uniform(0.6, 1.0), a, a * rng.uniform(0.5, 1.0))
            rho, phi = 0.9 * np.sqrt(rng.uniform()), rng.uniform(0.0, 2.0 * np.pi)
            c = (rng.uniform(-0.4, 0.4) * r[0], rho * semi_axes[1] * np.cos(phi), rho * semi_axes[2] * np.sin(phi))
            m = g.ellipsoid(c, r, rng.uniform(0.0, 180.0))
            if (m.any() and not (m & ~allowed).any() and not (m & near).any()
                    and ndimage.label(m, np.ones((3, 3, 3)))[1] == 1):
                out |= m
                near = _dilate(out, 6.0, sp)
                break
    return out


def _brain(g, rng, mimics=None, mimic_rng=None):
    U = rng.uniform
    T = {n: i for i, n in enumerate(BRAIN_TISSUES)}
    ry, rx, rz = U(85, 98), U(68, 78), U(85, 100)
    body = g.ellipsoid((0, 0, 0), (rz, ry, rx))
    s1, s2 = U(4, 6), U(10, 13)
    skull_out = g.ellipsoid((0, 0, 0), (rz - s1, ry - s1, rx - s1))
    brain = g.ellipsoid((0, 0, 0), (rz - s2, ry - s2, rx - s2))
    d_in = _distance_inside(brain, g.spacing)
    vents = (g.ellipsoid((0, U(-15, 5), U(6, 10)), (U(10, 15), U(15, 25), U(4, 7)), U(-10, 10))
             | g.ellipsoid((0, U(-15, 5), -U(6, 10)), (U(10, 15), U(15, 25), U(4, 7)), U(-10, 10)))
    eyes = {}
    for name, sx in (("Eye_L", 1.0), ("Eye_R", -1.0)):
        r = U(11, 12.5)
        eyes[name] = g.ellipsoid((U(-6, 2), -ry + U(20, 25), sx * U(28, 34)), (r, r, r)) & body
    brainstem = g.ellipsoid((U(-25, -10), U(5, 20), U(-3, 3)), (U(28, 35), U(11, 14), U(11, 14))) & brain
    chiasm = g.ellipsoid((U(-2, 2), U(-25, -15), U(-3, 3)), (U(3, 4), U(3.5, 5), U(7, 10))) & brain
    oar = brainstem | chiasm | eyes["Eye_L"] | eyes["Eye_R"]
    # tumour somewhere in the brain, in the central slice
    for _ in range(100):
        cy, cx = U(-0.6, 0.6) * (ry - s2), U(-0.6, 0.6) * (rx - s2)
        if (cy / (ry - s2)) ** 2 + (cx / (rx - s2)) ** 2 < 0.36:
            break
    r0 = U(8, 22)
    gtv = g.blob(rng, (U(-4, 4), cy, cx), (r0 * U(0.8, 1.2), r0 * U(0.8, 1.2), r0 * U(0.8, 1.2))) & brain & ~oar
    if not gtv.any():  # pragma: no cover - the blob always reaches the slice by construction
        gtv = g.ellipsoid((0, cy, cx), (r0, r0, r0)) & brain & ~oar
    necrosis = gtv & (_distance_inside(gtv, g.spacing) > U(0.35, 0.6) * r0) if U(0, 1) < 0.7 else np.zeros(g.shape, bool)
    edema = _dilate(gtv, U(5, 20), g.spacing) & brain & ~gtv & ~vents
    ptv = _dilate(gtv, 5.0, g.spacing) & brain
    lab = np.zeros(g.shape, np.int8)
    lab[body] = T["scalp"]
    lab[skull_out] = T["skull"]
    lab[brain] = T["csf"]
    lab[brain & (d_in > 2.0)] = T["gm"]
    lab[brain & (d_in > 5.0)] = T["wm"]
    lab[vents & brain] = T["csf"]
    lab[brainstem | chiasm] = T["wm"]
    lab[edema] = T["edema"]
    lab[gtv] = T["enhancing"]
    lab[necrosis] = T["necrosis"]
    if mimics:  # own generator: a brain without mimics keeps every array of its seed
        lab[_place_mimics(g, mimic_rng, mimics, (rz - s2, ry - s2, rx - s2), brain, gtv, edema, oar)] = T["mimic"]
    lab[eyes["Eye_L"] | eyes["Eye_R"]] = T["eye"]
    hu_of = np.array([HU["air"], HU["fat"], HU["dense_bone"], HU["csf"], HU["gm"], HU["wm"],
                      HU["edema"], HU["tumour"], HU["tumour"] - 15, HU["eye"], HU["tumour"] + 10])
    hu = hu_of[lab]
    masks = {"GTV": gtv, "PTV": ptv, "Brainstem": brainstem, "OpticChiasm": chiasm, **eyes}
    return hu, body, masks, lab


_BUILDERS = {"breast": _breast, "prostate": _prostate, "head_neck": _head_neck, "brain": _brain}


def _partial_volume(hu, body, spacing, dims, blur_mm):
    """Blur ``hu`` inside ``body`` with a Gaussian of ``blur_mm`` (default: one in-plane voxel); air stays outside."""
    if blur_mm is None:
        blur_mm = float(np.mean(spacing[-2:]))
    if isinstance(blur_mm, bool) or not isinstance(blur_mm, numbers.Real) or not np.isfinite(blur_mm) or blur_mm < 0:
        raise ValueError(f"ct_blur_mm must be a finite standard deviation >= 0 (mm), got {blur_mm!r}")
    if blur_mm == 0:
        return hu
    sigma = [blur_mm / s for s in spacing]
    if dims == 2:
        sigma[0] = 0.0
    return np.where(body, ndimage.gaussian_filter(hu, sigma, mode="nearest"), hu)


def _check_site(site):
    if not isinstance(site, str) or site not in SITES:
        raise ValueError(f"unknown site {site!r}; choose one of {SITES}")


def make_patient(site: str, seed: int = 0, dims: int = 2, shape=None, spacing=None,
                 ct_noise_hu: float = 15.0, mr: bool | None = None, mimics=None,
                 ct_blur_mm=None) -> Patient:
    """Make a seeded phantom patient.

    Parameters
    ----------
    site : {"breast", "prostate", "head_neck", "brain"}
        Anatomy. ``breast`` is a left-sided breast (Bai et al. 2021), ``prostate``
        as in the Pareto dose-prediction paper, ``head_neck`` uses OpenKBP's ROI
        names, ``brain`` has a GTV and MR-like channels (DOSELO).
    seed : int
        Non-negative seed; the same seed gives identical arrays.
    dims : {2, 3}
        2 gives the axial slice ``z = 0`` (default 128 x 128), 3 a volume
        (default 64 x 128 x 128).
    shape : tuple of int, optional
        Grid shape (``(H, W)`` or ``(Z, H, W)``); each side at least 16 (Z at least 4).
    spacing : float or tuple of float, optional
        Voxel size in mm (per axis); defaults per site in :data:`DEFAULT_SPACING`.
        The field of view (``shape * spacing``) must contain the whole body.
    ct_noise_hu : float
        Standard deviation of the Gaussian noise added to the CT (HU) inside the
        body; the default 15 HU is that of a clinical planning CT in soft tissue.
        The noise is added after the partial-volume blur (see ``ct_blur_mm``).
    ct_blur_mm : float, optional
        Standard deviation (mm) of the Gaussian blur of the noise-free CT inside
        the body: the scanner's point-spread function and the partial-volume
        averaging of a voxel, which soften every edge (a small organ loses part of
        its contrast). Default: one in-plane voxel (the mean in-plane spacing);
        applied in-plane in 2D, on every axis in 3D. 0 turns it off.
    mr : bool, optional
        Make MR-like channels (default: only for ``brain``).
    mimics : int or float, optional
        ``brain`` only: enhancing spots that are not tumour (vessel-, meningioma- or
        choroid-plexus-like; tissue ``"mimic"`` of ``BRAIN_TISSUES`` in ``labels``,
        not in any mask), 6 to 15 mm across, at least 20 mm from the GTV and clear of
        its oedema and of the organs at risk. An ``int`` (0 to :data:`MAX_MIMICS`)
        is their number, a ``float`` (0 to :data:`MAX_MIMICS`) the mean of a Poisson
        number. ``None`` or 0 (default): none, and every array is that of the same
        seed without this option. They come from their own random stream, so
        the rest of the patient does not depend on ``mimics``.

    Returns
    -------
    Patient
    """
    _check_site(site)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if dims not in (2, 3):
        raise ValueError(f"dims must be 2 or 3, got {dims!r}")
    shape = DEFAULT_SHAPE[dims] if shape is None else tuple(shape)
    if len(shape) != dims or not all(isinstance(n, (int, np.integer)) for n in shape):
        raise ValueError(f"shape must be {dims} integers for dims={dims}, got {shape!r}")
    mins = (16, 16) if dims == 2 else (4, 16, 16)
    if any(n < m for n, m in zip(shape, mins)):
        raise ValueError(f"shape {shape} too small: each in-plane side must be >= 16 voxels"
                         + (" and Z >= 4" if dims == 3 else ""))
    if any(n > 1024 for n in shape):
        raise ValueError(f"shape {shape} too large: sides must be <= 1024 voxels")
    if spacing is None:
        sp = DEFAULT_SPACING[site][-dims:]
    else:
        sp = tuple(float(s) for s in check_spacing(spacing, dims))
    if dims == 2:
        g = _Grid((1,) + shape, (1.0,) + tuple(sp))
    else:
        g = _Grid(shape, tuple(sp))
    rng = np.random.default_rng(int(seed))
    mimics = _check_mimics(mimics, site)
    extra = {} if mimics is None else {"mimics": mimics, "mimic_rng": np.random.default_rng([int(seed), 17])}
    hu, body, masks, labels = _BUILDERS[site](g, rng, **extra)
    # the body must not be cut by the field of view (in-plane)
    edge = np.zeros(body.shape[1:], bool)
    edge[[0, -1], :] = True
    edge[:, [0, -1]] = True
    if body[:, edge].any():
        fov = [round(n * s, 1) for n, s in zip(shape[-2:], sp[-2:])]
        raise ValueError(f"field of view {fov} mm is too small for site {site!r}: the body is cut at the "
                         f"image border; use a larger shape or spacing (default spacing {DEFAULT_SPACING[site][-2:]} mm)")
    hu = _partial_volume(hu, body, g.spacing, dims, ct_blur_mm)
    noise_rng = np.random.default_rng([int(seed), 7])
    hu = hu + noise_rng.normal(0.0, ct_noise_hu, hu.shape) * body
    if dims == 2:
        hu, body, labels = hu[0], body[0], None if labels is None else labels[0]
        masks = {k: v[0] for k, v in masks.items()}
    masks = {k: np.ascontiguousarray(v & body) for k, v in masks.items() if (v & body).any()}
    rx = dict(PRESCRIPTIONS[site])
    missing = [t for t in rx if t not in masks]
    if site != "head_neck" and missing:  # pragma: no cover - construction keeps targets in the slice
        raise RuntimeError(f"phantom {site} seed {seed} has no voxels in {missing}")
    rx = {k: v for k, v in rx.items() if k in masks}
    if not rx:
        raise ValueError(f"phantom {site} seed {seed}: no target in this grid; use a larger shape or spacing")
    ct = np.clip(hu, -1024, 3071).astype(np.float32)
    patient = Patient(site, int(seed), ct, hu_to_density(ct), masks, np.ascontiguousarray(body),
                      tuple(float(s) for s in sp), rx, None, labels)
    if mr or (mr is None and site == "brain"):
        if site != "brain":
            raise ValueError("MR-like channels exist only for site 'brain'")
        patient.mr = mr_channels(labels, patient.spacing, seed)
    return patient
