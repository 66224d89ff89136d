"""The OpenKBP data format: names, shapes, dtypes and axis order (no heavy imports).

OpenKBP (Babier et al., Med Phys 48:5549, 2021) releases 340 head-and-neck
patients, split 200 / 40 / 100 (train pt_1..pt_200, validation pt_201..pt_240,
test pt_241..pt_340). Every volume lives on a (128, 128, 128) grid stored in
OpenKBP's own axis order ``(Y, X, Z)``: axis 0 runs anterior to posterior,
axis 1 from the patient's right to left, axis 2 from superior to inferior
(axial slice index). ``voxel_dimensions`` gives the voxel size in mm in that same
order. rtlearn's convention is ``(Z, Y, X)``; :func:`to_zyx` converts.

A *prepared* patient is one compressed ``.npz`` per patient with the keys of
:data:`ARRAY_DTYPES` (ROI keys only for contoured ROIs; ``ct`` or ``dose_cgy``
may be missing) plus a ``manifest.json`` per dataset root listing the keys
present (``voxel_dimensions`` excluded).
"""
from __future__ import annotations

import numpy as np

from ...rois import OARS, ROI_NAMES, TARGET_DOSE_GY, TARGETS  # noqa: F401  (re-exported)

SHAPE = (128, 128, 128)
"""Grid shape of every OpenKBP volume (OpenKBP axis order Y, X, Z)."""

SPLITS = ("train", "validation", "test")
RELEASE_SPLIT_DIRS = {"train": "train-pats", "validation": "validation-pats", "test": "test-pats"}
"""Folder of each split inside the release's ``provided-data/``."""

SPLIT_RANGES = {"train": (1, 200), "validation": (201, 240), "test": (241, 340)}

ARRAY_DTYPES = {
    "ct": np.dtype(np.int16),
    "dose_cgy": np.dtype(np.uint16),
    "possible_dose_mask": np.dtype(bool),
    **{name: np.dtype(bool) for name in ROI_NAMES},
    "voxel_dimensions": np.dtype(np.float32),
}
"""Key -> dtype of a prepared patient archive."""

CSV_KEYS = {"ct": "ct", "dose": "dose_cgy", "possible_dose_mask": "possible_dose_mask",
            **{name: name for name in ROI_NAMES}, "voxel_dimensions": "voxel_dimensions"}
"""Release CSV file stem -> archive key."""


def patient_ids(split: str) -> list[str]:
    """Official patient ids of a split, e.g. ``patient_ids("validation")[0] == "pt_201"``."""
    if split not in SPLIT_RANGES:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    lo, hi = SPLIT_RANGES[split]
    return [f"pt_{i}" for i in range(lo, hi + 1)]


def split_of(patient: str) -> str:
    """Official split of a patient id (``"pt_17"`` -> ``"train"``)."""
    try:
        number = int(str(patient).removeprefix("pt_"))
    except ValueError:
        raise ValueError(f"patient id must look like 'pt_<n>', got {patient!r}") from None
    for split, (lo, hi) in SPLIT_RANGES.items():
        if lo <= number <= hi:
            return split
    raise ValueError(f"{patient!r} is not an OpenKBP patient (pt_1 .. pt_340)")


def to_zyx(volume: np.ndarray) -> np.ndarray:
    """View an OpenKBP ``(Y, X, Z)`` volume in rtlearn's ``(Z, Y, X)`` order (no copy)."""
    if volume.ndim != 3:
        raise ValueError(f"expected a 3D OpenKBP volume, got shape {volume.shape}")
    return np.transpose(volume, (2, 0, 1))


def spacing_zyx(voxel_dimensions) -> tuple[float, float, float]:
    """Voxel size in mm ordered ``(Z, Y, X)`` from OpenKBP's ``voxel_dimensions`` ``(Y, X, Z)``."""
    vd = np.asarray(voxel_dimensions, dtype=np.float64).ravel()
    if vd.size != 3:
        raise ValueError(f"voxel_dimensions must hold 3 values, got {vd.size}")
    return (float(vd[2]), float(vd[0]), float(vd[1]))


def check_patient_arrays(arrays: dict, name: str = "patient") -> None:
    """Raise ``ValueError`` if a prepared patient does not follow the packed format."""
    unknown = set(arrays) - set(ARRAY_DTYPES)
    if unknown:
        raise ValueError(f"{name}: unknown keys {sorted(unknown)}; expected a subset of {sorted(ARRAY_DTYPES)}")
    if "voxel_dimensions" not in arrays:
        raise ValueError(f"{name}: 'voxel_dimensions' is missing")
    for key, arr in arrays.items():
        arr = np.asarray(arr)
        if arr.dtype != ARRAY_DTYPES[key]:
            raise ValueError(f"{name}: {key!r} has dtype {arr.dtype}, expected {ARRAY_DTYPES[key]}")
        want = (3,) if key == "voxel_dimensions" else SHAPE
        if arr.shape != want:
            raise ValueError(f"{name}: {key!r} has shape {arr.shape}, expected {want}")
