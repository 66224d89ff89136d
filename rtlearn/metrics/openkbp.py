"""The OpenKBP challenge scores: dose score and DVH score (Babier et al. 2021).

These reproduce the challenge's own evaluation code (``EvaluateDose`` in
ababier/open-kbp) number for number; all doses in Gy.

Dose score
    Per patient :math:`p`, with reference dose :math:`d`, prediction :math:`\\hat d`
    and possible-dose mask :math:`M_p`,

    .. math:: e_p = \\frac{\\sum_{i \\in \\text{all voxels}} |d_i - \\hat d_i|}{|M_p|},

    i.e. the numerator runs over *every* voxel of the grid, not only those in the
    mask (multiply a prediction by the mask before scoring, as the challenge's
    baseline did). The dose score is the mean of :math:`e_p` over patients.

DVH score
    For every contoured ROI of every patient, with :math:`P_q` the NumPy
    percentile (linear interpolation) of the ROI's voxel doses:

    * organs at risk: :math:`D_{0.1cc} = P_{100 - 100 n/|R|}` with
      :math:`n = \\max(1, \\operatorname{round}(100\\,\\text{mm}^3 / v))`, :math:`v`
      the voxel volume in mm³ and :math:`|R|` the ROI's voxel count; and the mean dose;
    * targets (PTV56, PTV63, PTV70): :math:`D_{99} = P_1`, :math:`D_{95} = P_5`,
      :math:`D_1 = P_{99}`.

    The DVH score is the mean of :math:`|m - \\hat m|` over every
    (patient, ROI, metric) present.

The one deviation: for an organ smaller than :math:`n` voxels the challenge
code asks NumPy for a negative percentile and fails; here the percentile is
clipped at 0 (the minimum dose). No OpenKBP patient has such an organ.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from .._validate import as_numpy, check_dose, check_mask, check_spacing
from ..rois import OARS, ROI_NAMES, TARGETS

OAR_METRICS = ("D_0.1_cc", "mean")
TARGET_METRICS = ("D_99", "D_95", "D_1")
_TARGET_PERCENTILE = {"D_99": 1.0, "D_95": 5.0, "D_1": 99.0}

__all__ = ["dose_error", "dose_score", "dvh_metrics_openkbp", "dvh_errors", "dvh_score",
           "OAR_METRICS", "TARGET_METRICS"]


def _check_pred(pred, ref_shape, name: str) -> np.ndarray:
    arr = as_numpy(pred, name)
    if tuple(arr.shape) != tuple(ref_shape):
        raise ValueError(f"{name} has shape {tuple(arr.shape)} but the reference dose has shape "
                         f"{tuple(ref_shape)}; predict on the reference grid (OpenKBP: (128, 128, 128)) "
                         "and squeeze batch/channel axes")
    if not np.issubdtype(arr.dtype, np.number) or arr.dtype == bool:
        raise TypeError(f"{name} must be a numeric dose array in Gy, got dtype {arr.dtype}")
    if not np.all(np.isfinite(arr)):
        n = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        raise ValueError(f"{name} contains {n} NaN or infinite value(s); fix the model output "
                         "(e.g. torch.nan_to_num) before scoring")
    return arr.astype(np.float64, copy=False)


def dose_error(pred, ref, possible_dose_mask, name: str = "prediction") -> float:
    """OpenKBP dose error of one patient (Gy).

    .. math:: e = \\sum_{\\text{all voxels}} |d - \\hat d| \\,/\\, |M|

    Parameters
    ----------
    pred, ref : array-like
        Predicted and reference dose in Gy, same shape.
    possible_dose_mask : array-like of bool
        The possible-dose mask :math:`M` (only its voxel count is used).
    """
    ref = check_dose(ref, "reference dose")
    pred = _check_pred(pred, ref.shape, name)
    mask = check_mask(possible_dose_mask, ref.shape, "possible_dose_mask")
    return float(np.abs(ref - pred).sum() / np.count_nonzero(mask))


def _as_list(x) -> list:
    """One patient's array -> ``[array]``; a list/tuple of patients -> list."""
    return list(x) if isinstance(x, (list, tuple)) else [x]


def dose_score(pred, ref, possible_dose_mask) -> float:
    """OpenKBP dose score: mean over patients of :func:`dose_error` (Gy).

    Parameters
    ----------
    pred, ref, possible_dose_mask
        One patient's arrays, or equally long lists of them (one per patient).

    Examples
    --------
    >>> import numpy as np
    >>> ref = np.zeros((4, 4, 4)); mask = np.zeros((4, 4, 4), bool); mask[1:3, 1:3, 1:3] = True
    >>> dose_score(ref + mask, ref, mask)
    1.0
    """
    preds, refs, masks = _as_list(pred), _as_list(ref), _as_list(possible_dose_mask)
    if not (len(preds) == len(refs) == len(masks)) or not preds:
        raise ValueError(f"got {len(preds)} predictions, {len(refs)} reference doses and {len(masks)} "
                         "masks; pass one of each per patient")
    errors = [dose_error(p, r, m, name=f"prediction[{i}]" if len(preds) > 1 else "prediction")
              for i, (p, r, m) in enumerate(zip(preds, refs, masks))]
    return float(np.mean(errors))


def dvh_metrics_openkbp(dose, rois: Mapping[str, object], voxel_dims, name: str = "dose") -> dict:
    """The challenge's DVH metrics of one dose distribution.

    Parameters
    ----------
    dose : array-like
        Dose in Gy.
    rois : mapping str -> bool array
        OpenKBP ROI name -> mask on the dose grid. ``None`` or empty masks are
        skipped (not contoured), as in the challenge.
    voxel_dims : sequence of 3 floats
        Voxel size in mm (any axis order; only the volume is used).

    Returns
    -------
    dict
        ``{roi: {metric: value}}``: organs at risk get ``"D_0.1_cc"`` and
        ``"mean"``, targets ``"D_99"``, ``"D_95"``, ``"D_1"`` (Gy). See the module
        docstring for the definitions.
    """
    arr = as_numpy(dose, name)
    if not np.issubdtype(arr.dtype, np.number) or arr.dtype == bool:
        raise TypeError(f"{name} must be a numeric dose array in Gy, got dtype {arr.dtype}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values; fix it (e.g. np.nan_to_num) before scoring")
    arr = arr.astype(np.float64, copy=False)
    vd = check_spacing(voxel_dims, 3, "voxel_dims")
    n_tenth_cc = max(1.0, float(np.round(100.0 / float(np.prod(vd)))))
    out = {}
    for roi, mask in rois.items():
        if roi not in ROI_NAMES:
            raise ValueError(f"unknown ROI {roi!r}; OpenKBP ROIs are {ROI_NAMES}")
        if mask is None:
            continue
        mask = check_mask(mask, arr.shape, f"rois[{roi!r}]", allow_empty=True)
        roi_dose = arr[mask]
        if roi_dose.size == 0:
            continue
        if roi in OARS:
            q = max(0.0, 100.0 - n_tenth_cc / roi_dose.size * 100.0)
            out[roi] = {"D_0.1_cc": float(np.percentile(roi_dose, q)), "mean": float(roi_dose.mean())}
        else:
            qs = np.percentile(roi_dose, [_TARGET_PERCENTILE[m] for m in TARGET_METRICS])
            out[roi] = {m: float(v) for m, v in zip(TARGET_METRICS, qs)}
    return out


def dvh_errors(pred, ref, rois, voxel_dims, name: str = "prediction") -> dict:
    """Absolute DVH-metric differences of one patient: ``{(roi, metric): |m_ref - m_pred|}``."""
    ref_arr = check_dose(ref, "reference dose")
    pred_arr = _check_pred(pred, ref_arr.shape, name)
    m_ref = dvh_metrics_openkbp(ref_arr, rois, voxel_dims, name="reference dose")
    m_pred = dvh_metrics_openkbp(pred_arr, rois, voxel_dims, name=name)
    return {(roi, k): abs(m_ref[roi][k] - m_pred[roi][k]) for roi in m_ref for k in m_ref[roi]}


def dvh_score(pred, ref, rois, voxel_dims) -> float:
    """OpenKBP DVH score (Gy): mean |Δ| over every (patient, ROI, metric) present.

    Parameters
    ----------
    pred, ref : array-like or list of array-like
        Predicted and reference doses (Gy), one patient or a list of patients.
    rois : mapping or list of mappings
        ROI name -> mask, per patient.
    voxel_dims : sequence of 3 floats, or one per patient
        Voxel size (mm): one triple, used for every patient, or one triple per
        patient as a list of triples or an ``(N, 3)`` array.
    """
    preds, refs, roi_list = _as_list(pred), _as_list(ref), _as_list(rois)
    if not isinstance(voxel_dims, (list, tuple)):
        voxel_dims = as_numpy(voxel_dims, "voxel_dims")
    if isinstance(voxel_dims, np.ndarray) and voxel_dims.ndim == 2:
        vds = list(voxel_dims)
    elif isinstance(voxel_dims, (list, tuple)) and len(voxel_dims) and np.ndim(voxel_dims[0]) == 1:
        vds = list(voxel_dims)
    else:
        vds = [voxel_dims] * len(preds)
    if not (len(preds) == len(refs) == len(roi_list) == len(vds)) or not preds:
        raise ValueError(f"got {len(preds)} predictions, {len(refs)} reference doses, {len(roi_list)} ROI "
                         f"dicts and {len(vds)} voxel sizes; pass one of each per patient")
    diffs = []
    for i, (p, r, rr, vd) in enumerate(zip(preds, refs, roi_list, vds)):
        diffs.extend(dvh_errors(p, r, rr, vd, name=f"prediction[{i}]" if len(preds) > 1 else "prediction").values())
    if not diffs:
        raise ValueError("no contoured OpenKBP ROI was given; the DVH score needs at least one ROI mask")
    return float(np.mean(diffs))
