r"""Segmentation-perturbation augmentation: imperfect target masks for training a dose predictor.

DOSELO's dose predictor (Rüfenacht et al. 2023, ``ruefenacht2023doselo``, Sec. 2.1) was trained with
augmented, imperfect segmentations so that it responds to segmentation errors
(Kamath et al. 2023). This module makes such targets from a true one, in
millimetres on an anisotropic grid:

* **dilate** -- every voxel within ``margin`` mm (Euclidean) of the target:
  :math:`\{x : d(x, S) \le m\}`;
* **erode** -- every target voxel deeper than ``margin`` mm:
  :math:`\{x \in S : d(x, \bar S) > m\}`; if that is empty, the deepest voxels
  of the target are kept, so the result is never empty;
* **shift** -- a rigid translation by a vector in mm, rounded to whole voxels
  (no wrap-around);
* **blobs** -- the target plus a few small balls (spurious false positives)
  placed inside the body, at least ``distance`` mm away from the target.

Every result is restricted to the body mask and is never empty. Randomness
comes from a ``numpy.random.Generator`` (or an int seed): the same seed gives the
same perturbations. Distances use ``scipy.ndimage.distance_transform_edt`` with
the voxel spacing, so margins are physical. Arrays are ``(Y, X)`` or
``(Z, Y, X)``; spacing is in mm, one value per axis.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .._validate import check_int, check_mask, check_spacing

__all__ = ["KINDS", "Perturbation", "dilate_target", "erode_target", "shift_target", "add_blobs",
           "perturb_target", "perturbed_targets"]

#: The kinds of perturbation :func:`perturb_target` knows.
KINDS = ("dilate", "erode", "shift", "blobs")


@dataclass
class Perturbation:
    """A perturbed target: the ``mask``, its ``kind`` and the drawn ``params`` (in mm)."""

    mask: np.ndarray
    kind: str
    params: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------------
# checks
# ---------------------------------------------------------------------------------------------------------------
def _inputs(target, spacing, body):
    t = check_mask(target, name="target")
    if t.ndim not in (2, 3):
        raise ValueError(f"target must be a 2D (Y, X) or 3D (Z, Y, X) mask, got {t.ndim} dimensions")
    sp = check_spacing(spacing, t.ndim)
    if body is None:
        b = None
    else:
        b = check_mask(body, t.shape, name="body")
        outside = int(np.count_nonzero(t & ~b))
        if outside:
            raise ValueError(f"target has {outside} voxel(s) outside the body mask; a target must lie inside the body")
    return t, sp, b


def _mm(value, name, allow_zero=True):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value) \
            or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be a finite number {'>=' if allow_zero else '>'} 0 (mm), got {value!r}")
    return float(value)


def _range(value, name, integer=False, allow_zero=False):
    """A fixed value or a (low, high) range; returns (low, high)."""
    if isinstance(value, (tuple, list)) and len(value) == 2:
        lo, hi = value
    else:
        lo = hi = value
    for v in (lo, hi):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not np.isfinite(v) or v < 0 \
                or (v == 0 and not allow_zero) or (integer and int(v) != v):
            kind = "whole numbers" if integer else "finite numbers"
            raise ValueError(f"{name} must be {kind} {'>=' if allow_zero else '>'} 0, or a (low, high) pair of "
                             f"them; got {value!r}")
    if lo > hi:
        raise ValueError(f"{name} range must have low <= high, got {value!r}")
    return (int(lo), int(hi)) if integer else (float(lo), float(hi))


def _rng(seed):
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None or (isinstance(seed, numbers.Integral) and not isinstance(seed, bool)):
        return np.random.default_rng(seed)
    raise TypeError(f"seed must be an int, None or a numpy.random.Generator, got {type(seed).__name__}")


def _clip(mask, body):
    return mask if body is None else mask & body


# ---------------------------------------------------------------------------------------------------------------
# the four perturbations
# ---------------------------------------------------------------------------------------------------------------
def dilate_target(target, margin_mm: float, spacing, body=None) -> np.ndarray:
    r"""Grow the target by ``margin_mm``: :math:`\{x : d(x, S) \le m\} \cap B` (Euclidean distance in mm).

    Parameters
    ----------
    target : bool array (Y, X) or (Z, Y, X)
        The true target :math:`S` (not empty).
    margin_mm : float >= 0
        Margin :math:`m` in mm.
    spacing : float or sequence
        Voxel size in mm per axis.
    body : bool array, optional
        Body mask :math:`B`; the result never leaves it.
    """
    t, sp, b = _inputs(target, spacing, body)
    m = _mm(margin_mm, "margin_mm")
    dist = ndimage.distance_transform_edt(~t, sampling=sp)
    return _clip(dist <= m, b)


def erode_target(target, margin_mm: float, spacing, body=None) -> np.ndarray:
    r"""Shrink the target by ``margin_mm``: :math:`\{x \in S : d(x, \bar S) > m\}`, never empty.

    :math:`d(x, \bar S)` is the distance (mm) from a target voxel to the nearest
    voxel outside it (the grid border counts as outside). When the margin
    exceeds the target's depth the deepest voxels (maximum :math:`d`) are kept
    instead of returning an empty mask.
    """
    t, sp, b = _inputs(target, spacing, body)
    m = _mm(margin_mm, "margin_mm")
    depth = ndimage.distance_transform_edt(np.pad(t, 1), sampling=sp)[(slice(1, -1),) * t.ndim]
    out = depth > m
    if not out.any():
        out = t & (depth >= depth.max())
    return _clip(out, b)


def _voxel_shift(shift_mm, sp):
    s = np.asarray(shift_mm, dtype=float).ravel()
    if s.size != sp.size or not np.all(np.isfinite(s)):
        raise ValueError(f"shift_mm must be {sp.size} finite values (mm, one per axis), got {shift_mm!r}")
    return np.round(s / sp).astype(int)


def shift_target(target, shift_mm, spacing, body=None) -> np.ndarray:
    r"""Translate the target by ``shift_mm`` (one value per axis, mm), rounded to whole voxels.

    Voxels leaving the grid are lost (no wrap-around); the result is clipped to
    the body. The centroid moves by ``round(shift_mm / spacing) * spacing``
    when nothing is clipped.

    Raises
    ------
    ValueError
        If the shifted target lies entirely outside the grid or the body.
    """
    t, sp, b = _inputs(target, spacing, body)
    v = _voxel_shift(shift_mm, sp)
    out = np.zeros_like(t)
    src, dst = [], []
    for n, k in zip(t.shape, v):
        if abs(k) >= n:
            raise ValueError(f"shift of {k} voxels is larger than the grid ({n} voxels)")
        src.append(slice(max(0, -k), n - max(0, k)))
        dst.append(slice(max(0, k), n - max(0, -k)))
    out[tuple(dst)] = t[tuple(src)]
    out = _clip(out, b)
    if not out.any():
        raise ValueError(f"shifting by {list(np.asarray(shift_mm, float))} mm moves the whole target outside the "
                         "grid or the body; use a smaller shift")
    return out


def add_blobs(target, spacing, body=None, n_blobs: int = 1, radius_mm=(2.0, 5.0), distance_mm: float = 10.0,
              seed=None, return_params: bool = False):
    r"""Add ``n_blobs`` spurious balls (false positives) inside the body, away from the target.

    Centres are drawn uniformly among body voxels :math:`c` with
    :math:`d(c, S) > \delta + r_{max}` (so every blob is disjoint from the target
    and at least :math:`\delta` = ``distance_mm`` away from it) and, when
    possible, :math:`d(c, \bar B) > r_{max}` (the ball fits inside the body).
    Each blob is the set of voxels within its radius (mm) of its centre;
    radii are drawn uniformly from ``radius_mm``.

    Parameters
    ----------
    target, spacing, body
        As in :func:`dilate_target`; ``body=None`` means the whole grid.
    n_blobs : int >= 1
    radius_mm : float or (low, high)
        Blob radius in mm (> 0).
    distance_mm : float >= 0
        Minimum gap :math:`\delta` between a blob and the target (mm).
    seed : int, None or numpy.random.Generator
    return_params : bool
        Also return ``{"n_blobs", "radius_mm", "centres"}``.

    Returns
    -------
    bool array (or ``(mask, params)``)
        ``target | blobs``, inside the body.

    Raises
    ------
    ValueError
        If no body voxel is far enough from the target for a blob.
    """
    t, sp, b = _inputs(target, spacing, body)
    check_int(n_blobs, "n_blobs")
    lo, hi = _range(radius_mm, "radius_mm")
    gap = _mm(distance_mm, "distance_mm")
    rng = _rng(seed)
    body_ = np.ones_like(t) if b is None else b
    away = ndimage.distance_transform_edt(~t, sampling=sp) > gap + hi
    inside = ndimage.distance_transform_edt(np.pad(body_, 1), sampling=sp)[(slice(1, -1),) * t.ndim] > hi
    cand = np.flatnonzero(body_ & away & inside)
    if cand.size == 0:  # no room for a whole ball: allow balls clipped by the body outline
        cand = np.flatnonzero(body_ & away)
    if cand.size == 0:
        raise ValueError(f"no body voxel is more than {gap + hi:.3g} mm from the target: no room for a blob "
                         "(reduce distance_mm or radius_mm)")
    k = min(int(n_blobs), cand.size)
    centres = rng.choice(cand, size=k, replace=False)
    radii = rng.uniform(lo, hi, size=k) if hi > lo else np.full(k, lo)
    seeds = np.zeros(t.shape, bool)
    seeds.flat[centres] = True
    rad = np.zeros(t.shape)
    rad.flat[centres] = radii
    dist, idx = ndimage.distance_transform_edt(~seeds, sampling=sp, return_indices=True)
    blobs = dist <= rad[tuple(idx)]  # each voxel belongs to the ball of its nearest centre
    out = t | (blobs & body_)
    if return_params:
        params = {"n_blobs": k, "radius_mm": [float(r) for r in radii],
                  "centres": [tuple(int(i) for i in np.unravel_index(c, t.shape)) for c in centres]}
        return out, params
    return out


# ---------------------------------------------------------------------------------------------------------------
# random perturbations
# ---------------------------------------------------------------------------------------------------------------
def perturb_target(target, spacing, kind: str = "random", seed=None, body=None, *, margin_mm=(1.0, 6.0),
                   shift_mm=(2.0, 10.0), n_blobs=(1, 3), blob_radius_mm=(2.0, 6.0), blob_distance_mm: float = 10.0,
                   max_tries: int = 10) -> Perturbation:
    """One random perturbation of ``target``.

    Parameters
    ----------
    target, spacing, body
        As in :func:`dilate_target`.
    kind : {"dilate", "erode", "shift", "blobs", "random"}
        ``"random"`` picks one of :data:`KINDS` uniformly.
    seed : int, None or numpy.random.Generator
        A generator is advanced (use one generator for a stream of draws).
    margin_mm : float or (low, high)
        Dilation/erosion margin, drawn uniformly (mm).
    shift_mm : float or (low, high)
        Length of the shift vector (mm); its direction is uniform on the circle
        (2D) or sphere (3D).
    n_blobs : int or (low, high)
        Number of blobs, drawn uniformly (inclusive).
    blob_radius_mm, blob_distance_mm
        As ``radius_mm`` and ``distance_mm`` of :func:`add_blobs`.
    max_tries : int
        Shift draws that leave the body are redrawn up to this many times.

    Returns
    -------
    Perturbation
        ``mask`` (bool, never empty, inside the body), ``kind`` and ``params``.
    """
    t, sp, b = _inputs(target, spacing, body)
    rng = _rng(seed)
    if kind == "random":
        kind = KINDS[int(rng.integers(len(KINDS)))]
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS + ('random',)}, got {kind!r}")
    if kind in ("dilate", "erode"):
        lo, hi = _range(margin_mm, "margin_mm", allow_zero=True)
        m = float(rng.uniform(lo, hi)) if hi > lo else lo
        fn = dilate_target if kind == "dilate" else erode_target
        return Perturbation(fn(t, m, sp, b), kind, {"margin_mm": m})
    if kind == "shift":
        lo, hi = _range(shift_mm, "shift_mm")
        for _ in range(max(1, int(max_tries))):
            direction = rng.normal(size=t.ndim)
            direction /= np.linalg.norm(direction)
            length = float(rng.uniform(lo, hi)) if hi > lo else lo
            vox = _voxel_shift(direction * length, sp)
            try:
                mask = shift_target(t, direction * length, sp, b)
            except ValueError:
                continue
            return Perturbation(mask, kind, {"shift_mm": tuple(float(x) for x in vox * sp),
                                             "requested_mm": tuple(float(x) for x in direction * length)})
        raise ValueError(f"every one of {max_tries} random shifts moved the target out of the body; "
                         "reduce shift_mm")
    nlo, nhi = _range(n_blobs, "n_blobs", integer=True)
    n = int(rng.integers(nlo, nhi + 1))
    mask, params = add_blobs(t, sp, b, n_blobs=n, radius_mm=blob_radius_mm, distance_mm=blob_distance_mm,
                             seed=rng, return_params=True)
    return Perturbation(mask, kind, params)


def perturbed_targets(target, spacing, n: int, seed=0, body=None, kinds=KINDS, **kwargs) -> list:
    """``n`` random perturbations, kinds cycling through ``kinds`` (balanced), from one seeded generator.

    Extra keyword arguments go to :func:`perturb_target`. The same ``seed``
    gives the same list.

    Examples
    --------
    >>> t = np.zeros((32, 32), bool); t[12:20, 12:20] = True
    >>> out = perturbed_targets(t, spacing=2.0, n=4, seed=0)
    >>> [p.kind for p in out]
    ['dilate', 'erode', 'shift', 'blobs']
    """
    check_int(n, "n")
    kinds = tuple(kinds)
    if not kinds or any(k not in KINDS for k in kinds):
        raise ValueError(f"kinds must be a non-empty selection of {KINDS}, got {kinds!r}")
    rng = _rng(seed)
    return [perturb_target(target, spacing, kinds[i % len(kinds)], rng, body, **kwargs) for i in range(n)]
