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
        Structures. In 2D a structure absent from the slice is left out.
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
    U = rng.uniform
    ry, rx = U(95, 115), U(150, 172)
    body = g.ellipsoid((0, 0, 0), (650, ry, rx))
    bl_c = (U(-8, 8), -ry + U(8, 22), U(55, 85))
    bl_r = (U(55, 75), U(38, 55), U(55, 75))
    breast_l = g.ellipsoid(bl_c, bl_r, U(-25, 5))
    br_c = (U(-8, 8), -ry + U(8, 22), -U(55, 85))
    breast_r = g.ellipsoid(br_c, tuple(np.asarray(bl_r) * U(0.75, 0.95)), U(-5, 25))
    body = body | breast_l | breast_r
    # thorax: rib cage interior and its wall
    tcy = U(-8, 2)
    t_r = (300, ry - U(24, 32), rx - U(28, 42))
    thorax_in = g.ellipsoid((0, tcy, 0), t_r)
    wall = U(12, 20)
    thorax_out = g.ellipsoid((0, tcy, 0), (300, t_r[1] + wall, t_r[2] + wall))
    # spine
    cord_cy = ry - U(30, 40)
    cord_r = U(5, 7)
    vb_r = U(14, 18)
    vb = g.ellipsoid((0, cord_cy - cord_r - 4 - vb_r, 0), (None, vb_r, vb_r * 1.2))
    arch = g.ellipsoid((0, cord_cy, 0), (None, cord_r + 6, cord_r + 7))
    cord = g.ellipsoid((0, cord_cy, U(-2, 2)), (None, cord_r, cord_r))
    spine = (vb | arch) & ~cord
    # heart and lungs (heart shifted to the left and anterior; its distance to the
    # chest wall under the left breast varies with the seed)
    heart = g.ellipsoid((U(-35, -5), tcy + U(-35, -12), U(12, 42)),
                        (U(45, 60), U(38, 52), U(38, 52)), U(-30, 10)) & thorax_in
    lung_l = g.ellipsoid((U(-10, 10), tcy + U(-5, 10), U(50, 72)),
                         (U(90, 120), U(60, 78), U(42, 58))) & thorax_in & ~heart & ~spine
    lung_r = g.ellipsoid((U(-10, 10), tcy + U(-5, 10), -U(50, 72)),
                         (U(90, 120), U(60, 78), U(45, 60))) & thorax_in & ~spine
    breast_tissue = breast_l & body & ~thorax_out
    ptv = breast_tissue & (_distance_inside(body, g.spacing) > 5.0)
    hu = np.full(g.shape, HU["air"])
    hu[body] = HU["fat"]
    hu[(thorax_out & ~thorax_in) & body] = HU["muscle"]
    hu[thorax_in] = HU["soft"]
    hu[(breast_l | breast_r) & body & ~thorax_out] = HU["breast"]
    hu[lung_l | lung_r] = HU["lung"]
    hu[heart] = HU["heart"]
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
    U = rng.uniform
    ry, rx = U(80, 95), U(65, 80)
    body = g.ellipsoid((0, 0, 0), (500, ry, rx))
    vb_c, vb_r = U(12, 22), U(12, 15)
    cord_r = U(4.5, 6)
    cord_cy = vb_c + vb_r + cord_r + 2
    vert = g.ellipsoid((0, vb_c, 0), (None, vb_r, vb_r * 1.15)) | g.ellipsoid((0, cord_cy, 0), (None, cord_r + 4, cord_r + 5))
    cord = g.ellipsoid((0, cord_cy, 0), (None, cord_r, cord_r))
    vert &= ~cord
    brainstem = g.ellipsoid((U(60, 75), cord_cy - 3, 0), (U(20, 25), U(10, 13), U(11, 14)))
    m_c = (U(0, 10), U(-25, -15), 0)
    m_out = g.ellipsoid(m_c, (U(22, 30), U(50, 60), U(45, 55)))
    th = U(6, 9)
    m_in = g.ellipsoid(m_c, (300, U(50, 60) - th - 10, U(45, 55) - th - 10))
    mandible = m_out & ~m_in & (g.y < m_c[1] + U(0, 10)) & body
    side = 1.0 if U(0, 1) < 0.5 else -1.0
    par = {}
    for name, sx in (("RightParotid", -1.0), ("LeftParotid", 1.0)):
        par[name] = g.ellipsoid((U(5, 15), U(5, 20), sx * U(40, 55)), (U(18, 25), U(12, 18), U(9, 14))) & body
    larynx = g.ellipsoid((U(-20, -10), U(-48, -32), 0), (U(22, 30), U(10, 14), U(12, 16))) & body
    eso = g.ellipsoid((-60, vb_c - vb_r - U(6, 9), U(-3, 3)), (70, U(5, 7), U(5, 7)))
    airway = g.ellipsoid((0, U(-22, -12), 0), (None, U(4, 7), U(6, 9)))
    prim_c = (U(-5, 5), U(-15, 5), U(-18, 18))
    ptv70 = g.blob(rng, prim_c, (U(14, 22), U(12, 20), U(12, 20))) & body & ~cord
    ptv63 = g.blob(rng, (U(-15, 5), U(-5, 15), side * U(30, 45)), (U(25, 35), U(12, 18), U(10, 15)), 3) & body & ~cord
    ptv56 = g.blob(rng, (U(-15, 5), U(-5, 15), -side * U(30, 45)), (U(25, 35), U(12, 18), U(10, 15)), 3) & body & ~cord
    hu = np.full(g.shape, HU["air"])
    hu[body] = HU["soft"]
    hu[body & (_distance_inside(body, g.spacing) < U(4, 8))] = HU["fat"]
    for m, v in ((larynx, HU["cartilage"]), (eso, HU["muscle"]), (par["RightParotid"], -20.0),
                 (par["LeftParotid"], -20.0), (ptv70, HU["muscle"]), (airway, HU["gas"]),
                 (vert, HU["bone"]), (cord, HU["soft"]), (mandible, HU["dense_bone"])):
        hu[m] = v
    masks = {"PTV70": ptv70, "PTV63": ptv63, "PTV56": ptv56, **par, "SpinalCord": cord,
             "Brainstem": brainstem, "Mandible": mandible, "Larynx": larynx, "Esophagus": eso & body}
    return hu, body, masks, None


def _brain(g, rng):
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
    lab[eyes["Eye_L"] | eyes["Eye_R"]] = T["eye"]
    hu_of = np.array([HU["air"], HU["fat"], HU["dense_bone"], HU["csf"], HU["gm"], HU["wm"],
                      HU["edema"], HU["tumour"], HU["tumour"] - 15, HU["eye"]])
    hu = hu_of[lab]
    masks = {"GTV": gtv, "PTV": ptv, "Brainstem": brainstem, "OpticChiasm": chiasm, **eyes}
    return hu, body, masks, lab


_BUILDERS = {"breast": _breast, "prostate": _prostate, "head_neck": _head_neck, "brain": _brain}


def _check_site(site):
    if not isinstance(site, str) or site not in SITES:
        raise ValueError(f"unknown site {site!r}; choose one of {SITES}")


def make_patient(site: str, seed: int = 0, dims: int = 2, shape=None, spacing=None,
                 ct_noise_hu: float = 8.0, mr: bool | None = None) -> Patient:
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
        Standard deviation of the Gaussian noise added to the CT (HU).
    mr : bool, optional
        Make MR-like channels (default: only for ``brain``).

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
    hu, body, masks, labels = _BUILDERS[site](g, rng)
    # the body must not be cut by the field of view (in-plane)
    edge = np.zeros(body.shape[1:], bool)
    edge[[0, -1], :] = True
    edge[:, [0, -1]] = True
    if body[:, edge].any():
        fov = [round(n * s, 1) for n, s in zip(shape[-2:], sp[-2:])]
        raise ValueError(f"field of view {fov} mm is too small for site {site!r}: the body is cut at the "
                         f"image border; use a larger shape or spacing (default spacing {DEFAULT_SPACING[site][-2:]} mm)")
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
