r"""Segmentation metrics: overlap (Dice, recall, precision) and surface distances in mm.

For a predicted mask :math:`P` and ground truth :math:`G`:

.. math::

    \mathrm{DSC} = \frac{2|P\cap G|}{|P|+|G|},\qquad
    \mathrm{recall} = \frac{|P\cap G|}{|G|},\qquad
    \mathrm{precision} = \frac{|P\cap G|}{|P|}.

Surfaces are the voxels of a mask that a one-voxel erosion (face
connectivity, voxels beyond the array border counted as background) removes,
the convention of MONAI's ``get_mask_edges``. With :math:`d(a, B)` the
Euclidean distance in mm (voxel spacing applied) from a surface voxel
:math:`a` to the nearest surface voxel of :math:`B`:

* **HD95** is the larger of the two *directed* 95th percentiles,
  :math:`\max\{P_{95}(d(\partial P,\partial G)), P_{95}(d(\partial G,\partial P))\}`
  (MONAI's ``compute_hausdorff_distance(percentile=95)``; medpy pools both
  directions instead and can differ slightly);
* **ASD** (average symmetric surface distance) is the mean over the pooled
  distances of both directions (MONAI's
  ``compute_average_surface_distance(symmetric=True)``).
* **HD** (:func:`hausdorff`, ``percentile=100``) is the largest surface distance
  in either direction; ``hausdorff(..., percentile=95)`` is HD95.

Empty masks. Every metric raises ``ValueError`` for an empty ground truth (the
structure is absent from the case; the chapters skip it, NaN and not counted).
An empty *prediction* of a present structure has Dice = recall = precision = 0
and no surface, so no surface distance. :func:`hausdorff` returns NaN for it:
that is the convention of the chapters that report distances of predicted
segmentations (region-specific losses: such an organ is counted as "missed";
DOSELO: such a case is flagged "empty"); NaN values are then dropped pairwise
in means and paired tests. The lower-level :func:`surface_distances`,
:func:`hausdorff95` and :func:`average_surface_distance` raise instead, so that
a missing prediction is never averaged silently.
"""
from __future__ import annotations

import numpy as np

from .._validate import check_mask, check_spacing

__all__ = ["dice", "recall", "precision", "surface_distances", "hausdorff", "hausdorff95", "average_surface_distance"]


def _masks(pred, gt, allow_empty_pred=True):
    g = check_mask(gt, None, name="ground truth", allow_empty=True)
    p = check_mask(pred, g.shape, name="prediction", allow_empty=True)
    if not g.any():
        raise ValueError("ground truth mask is empty: the metric is undefined for an absent structure")
    if not allow_empty_pred and not p.any():
        raise ValueError("prediction mask is empty: surface distances are undefined (report it as a failure)")
    return p, g


def dice(pred, gt) -> float:
    r"""Dice similarity coefficient :math:`2|P\cap G|/(|P|+|G|)`.

    Examples
    --------
    >>> dice([1, 1, 0, 0], [1, 0, 0, 0])
    0.6666666666666666
    """
    p, g = _masks(pred, gt)
    return float(2 * np.count_nonzero(p & g) / (np.count_nonzero(p) + np.count_nonzero(g)))


def recall(pred, gt) -> float:
    r"""Recall (sensitivity) :math:`|P\cap G|/|G|`."""
    p, g = _masks(pred, gt)
    return float(np.count_nonzero(p & g) / np.count_nonzero(g))


def precision(pred, gt) -> float:
    r"""Precision :math:`|P\cap G|/|P|`; 0 for an empty prediction."""
    p, g = _masks(pred, gt)
    n = np.count_nonzero(p)
    return float(np.count_nonzero(p & g) / n) if n else 0.0


def _edges(mask):
    from scipy.ndimage import binary_erosion

    return mask & ~binary_erosion(mask, border_value=0)


def surface_distances(pred, gt, spacing):
    """Directed surface distances (mm): ``(pred -> gt, gt -> pred)`` as 1-D arrays.

    Parameters
    ----------
    pred, gt : array_like of bool
        Masks of the same shape (2D or 3D); neither may be empty.
    spacing : sequence of float
        Voxel size in mm, one value per axis.
    """
    from scipy.ndimage import distance_transform_edt

    p, g = _masks(pred, gt, allow_empty_pred=False)
    sp = check_spacing(spacing, g.ndim)
    # crop to the joint bounding box plus a one-voxel margin (speed; same result)
    idx = np.argwhere(p | g)
    lo = np.maximum(idx.min(0) - 1, 0)
    hi = np.minimum(idx.max(0) + 2, g.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    # erosion must treat the original array border as background, so erode before cropping
    ep, eg = _edges(p)[box], _edges(g)[box]
    d_to_g = distance_transform_edt(~eg, sampling=sp)
    d_to_p = distance_transform_edt(~ep, sampling=sp)
    return d_to_g[ep], d_to_p[eg]


def hausdorff(pred, gt, spacing, percentile: float = 100.0) -> float:
    """Hausdorff distance (mm); NaN for an empty prediction of a present structure.

    The larger of the two *directed* ``percentile``-th percentiles of the surface
    distances (:func:`surface_distances`): ``percentile=100`` (the default) is
    the Hausdorff distance, the largest surface distance in either direction;
    ``percentile=95`` equals :func:`hausdorff95`.

    Empty masks (the convention of the region-losses and DOSELO chapters): an
    empty ``pred`` gives NaN (no surface, so no distance: the chapters count such
    a prediction as missed / empty and drop it pairwise); an empty ``gt`` raises
    ``ValueError`` (the metric is undefined for an absent structure).

    Examples
    --------
    >>> import numpy as np
    >>> gt = np.zeros((5, 10), bool); gt[:, 5] = True
    >>> pred = np.zeros((5, 10), bool); pred[:, 2] = True
    >>> hausdorff(pred, gt, (1.0, 2.0))
    6.0
    >>> hausdorff(np.zeros_like(gt), gt, (1.0, 2.0))
    nan
    """
    if isinstance(percentile, bool) or not isinstance(percentile, (int, float, np.integer, np.floating)) \
            or not 0 <= percentile <= 100:
        raise ValueError(f"percentile must be a number in [0, 100], got {percentile!r}")
    p, _ = _masks(pred, gt)
    if not p.any():
        return float("nan")
    a, b = surface_distances(pred, gt, spacing)
    if percentile == 100:
        return float(max(a.max(), b.max()))
    return float(max(np.percentile(a, percentile), np.percentile(b, percentile)))


def hausdorff95(pred, gt, spacing) -> float:
    """95th-percentile Hausdorff distance (mm): the larger directed 95th percentile (MONAI's convention).

    Raises ``ValueError`` for an empty prediction; ``hausdorff(pred, gt, spacing, 95)``
    gives the same number and NaN for an empty prediction (see the module docstring).
    """
    a, b = surface_distances(pred, gt, spacing)
    return float(max(np.percentile(a, 95), np.percentile(b, 95)))


def average_surface_distance(pred, gt, spacing) -> float:
    """Average symmetric surface distance (mm): the mean of both directions' distances pooled."""
    a, b = surface_distances(pred, gt, spacing)
    return float(np.concatenate([a, b]).mean())
