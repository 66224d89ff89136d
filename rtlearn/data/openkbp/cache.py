"""A compact OpenKBP training cache: cropped volumes, bit-packed masks, one file per split.

A packed OpenKBP patient is ~30 MB once decompressed (thirteen 128³ volumes).
For training only the region around the patient matters, so
:func:`compact_patient` keeps

* the bounding box of the possible-dose mask and every ROI, plus ``margin`` voxels,
* ``dose_cgy`` as ``uint16`` (cGy, lossless w.r.t. the release's 0.01 Gy precision),
* ``ct`` as ``int16`` (lossless) or ``uint8`` (``(ct - ct_low) / ct_step``, lossy),
* the ten ROI masks and the possible-dose mask as bits of one ``uint16`` per voxel
  (bit ``i`` = :data:`~rtlearn.data.openkbp.format.ROI_NAMES` ``[i]``, bit 10 = possible-dose mask).

Because the dose is zero outside the possible-dose mask and the box contains
every ROI, dose, masks and DVH metrics are reproduced exactly by
:func:`expand_patient`; only CT outside the box is dropped. :func:`save_cache`
writes all patients of a split to one compressed ``.npz`` (atomically).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ...io import load_npz, save_npz
from .format import ROI_NAMES, SHAPE

PDM_BIT = len(ROI_NAMES)
CACHE_VERSION = 1
CT_UINT8 = {"low": 0, "step": 16}
"""uint8 CT quantisation: ``ct ~= low + step * code`` (0..4080 on the release's 0..4095 scale)."""

def bounding_box(mask: np.ndarray, margin: int = 0) -> np.ndarray:
    """``(ndim, 2)`` array of ``[start, stop)`` per axis of the non-zero voxels, grown by ``margin``.

    An empty mask gives the whole grid.
    """
    mask = np.asarray(mask, dtype=bool)
    box = np.zeros((mask.ndim, 2), dtype=np.int64)
    for axis in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        lo, hi = (hit[0], hit[-1] + 1) if hit.size else (0, mask.shape[axis])
        box[axis] = (max(0, lo - margin), min(mask.shape[axis], hi + margin))
    return box


def _crop(arr, box):
    return arr[tuple(slice(int(a), int(b)) for a, b in box)]


def pack_masks(masks: dict, shape) -> np.ndarray:
    """Pack ROI masks and ``possible_dose_mask`` into one ``uint16`` per voxel (bit per mask)."""
    bits = np.zeros(shape, dtype=np.uint16)
    for i, name in enumerate(ROI_NAMES + ("possible_dose_mask",)):
        m = masks.get(name)
        if m is not None:
            bits |= np.asarray(m, dtype=np.uint16) << np.uint16(i)
    return bits


def unpack_masks(bits: np.ndarray, names=ROI_NAMES + ("possible_dose_mask",)) -> np.ndarray:
    """Inverse of :func:`pack_masks`: a ``(len(names), *bits.shape)`` bool array."""
    order = [PDM_BIT if n == "possible_dose_mask" else ROI_NAMES.index(n) for n in names]
    shifts = np.asarray(order, dtype=np.uint16).reshape((-1,) + (1,) * bits.ndim)
    return ((bits[None] >> shifts) & 1).astype(bool)


def compact_patient(arrays: dict, margin: int = 8, ct_dtype: str = "int16") -> dict:
    """Crop and pack one prepared patient (see the module docstring).

    Parameters
    ----------
    arrays : dict
        A prepared patient (the packed format, OpenKBP axis order).
    margin : int
        Voxels added around the bounding box of the possible-dose mask and all ROIs.
    ct_dtype : {"int16", "uint8"}
        ``uint8`` quantises CT with :data:`CT_UINT8` (4x smaller, lossy).

    Returns
    -------
    dict
        ``bbox`` (3, 2) int16 ``[start, stop)`` in the full grid; ``bits`` uint16;
        ``dose_cgy`` uint16 and ``ct`` (only if present); ``roi_available`` bool (10,);
        ``voxel_dimensions`` float32 (3,).
    """
    if int(margin) < 0:
        raise ValueError(f"margin must be >= 0 voxels, got {margin}")
    if ct_dtype not in ("int16", "uint8"):
        raise ValueError(f"ct_dtype must be 'int16' or 'uint8', got {ct_dtype!r}")
    union = np.zeros(SHAPE, dtype=bool)
    for name in ROI_NAMES + ("possible_dose_mask",):
        if name in arrays:
            union |= arrays[name]
    if "dose_cgy" in arrays:
        union |= arrays["dose_cgy"] > 0
    box = bounding_box(union, int(margin))
    rec = {
        "bbox": box.astype(np.int16),
        "bits": _crop(pack_masks(arrays, SHAPE), box),
        "roi_available": np.array([n in arrays and bool(arrays[n].any()) for n in ROI_NAMES]),
        "voxel_dimensions": np.asarray(arrays["voxel_dimensions"], dtype=np.float32),
    }
    if "dose_cgy" in arrays:
        rec["dose_cgy"] = np.ascontiguousarray(_crop(arrays["dose_cgy"], box))
    if "ct" in arrays:
        ct = _crop(arrays["ct"], box)
        if ct_dtype == "uint8":
            code = np.clip(np.round((ct.astype(np.float32) - CT_UINT8["low"]) / CT_UINT8["step"]), 0, 255)
            ct = code.astype(np.uint8)
        rec["ct"] = np.ascontiguousarray(ct)
    rec["has_pdm"] = np.array("possible_dose_mask" in arrays)
    return rec


def ct_values(ct: np.ndarray) -> np.ndarray:
    """CT on the release's 0..4095 scale (float32) from a cached ``int16`` or ``uint8`` array."""
    if ct.dtype == np.uint8:
        return ct.astype(np.float32) * CT_UINT8["step"] + CT_UINT8["low"]
    return ct.astype(np.float32)


def expand_patient(rec: dict) -> dict:
    """Full-grid arrays (packed format, OpenKBP order) from a compact record."""
    box = rec["bbox"].astype(np.int64)
    sl = tuple(slice(int(a), int(b)) for a, b in box)
    out = {"voxel_dimensions": rec["voxel_dimensions"]}
    masks = unpack_masks(rec["bits"])
    names = ROI_NAMES + ("possible_dose_mask",)
    for i, name in enumerate(names):
        present = bool(rec["has_pdm"]) if name == "possible_dose_mask" else bool(rec["roi_available"][i])
        if present:
            full = np.zeros(SHAPE, dtype=bool)
            full[sl] = masks[i]
            out[name] = full
    if "dose_cgy" in rec:
        full = np.zeros(SHAPE, dtype=np.uint16)
        full[sl] = rec["dose_cgy"]
        out["dose_cgy"] = full
    if "ct" in rec:
        full = np.zeros(SHAPE, dtype=np.int16)
        full[sl] = np.round(ct_values(rec["ct"])).astype(np.int16)
        out["ct"] = full
    return out


def save_cache(path: str | os.PathLike, records: dict, meta: dict | None = None) -> Path:
    """Write compact records ``{patient: record}`` to one compressed ``.npz`` (atomic)."""
    arrays = {}
    for pid, rec in records.items():
        for key, value in rec.items():
            arrays[f"{pid}/{key}"] = value
    info = {"version": CACHE_VERSION, "patients": list(records), **(meta or {})}
    arrays["__meta__"] = np.array(json.dumps(info))
    return save_npz(path, **arrays)


def load_cache(path: str | os.PathLike) -> tuple[dict, dict]:
    """Read a cache written by :func:`save_cache`: ``(records, meta)``.

    Raises ``ValueError`` naming the file if it is corrupt or of another version.
    """
    flat = load_npz(path)
    try:
        meta = json.loads(str(flat.pop("__meta__")))
    except (KeyError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not an rtlearn OpenKBP cache; delete it to rebuild it") from exc
    if meta.get("version") != CACHE_VERSION:
        raise ValueError(f"{path} has cache version {meta.get('version')}, expected {CACHE_VERSION}; "
                         "delete it to rebuild it")
    records = {pid: {} for pid in meta["patients"]}
    for key, value in flat.items():
        pid, field = key.split("/", 1)
        records[pid][field] = value
    return records, meta


def record_nbytes(rec: dict) -> int:
    """In-memory size of a compact record in bytes."""
    return int(sum(np.asarray(v).nbytes for v in rec.values()))
