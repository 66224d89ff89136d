"""A phantom stand-in for OpenKBP, written in the packed format, for machines without the data.

:func:`write_phantom_openkbp` plans seeded 2D head-and-neck phantoms
(:func:`rtlearn.phantom.make_plan`, ROI names as in OpenKBP) and stores each one
as an OpenKBP archive: the axial slice is repeated over ``slices`` central
slices of the (128, 128, 128) grid, CT is shifted to the release's 0..4095
scale (HU + 1024), the possible-dose mask is the body and the dose is zero
outside it. Every OpenKBP code path (dataset, cache, scores, baseline) then runs
unchanged. The numbers it gives say nothing about OpenKBP.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ...io import save_npz
from ...phantom import make_plan
from .format import ROI_NAMES, SHAPE, SPLIT_RANGES
from .prepare import manifest_keys, update_manifest

DEFAULT_COUNTS = {"train": 10, "validation": 3, "test": 4}


def phantom_patient_arrays(seed: int, slices: int = 8) -> dict:
    """One phantom patient in the packed OpenKBP format (OpenKBP ``(Y, X, Z)`` order)."""
    if not 1 <= int(slices) <= SHAPE[2]:
        raise ValueError(f"slices must be in 1..{SHAPE[2]}, got {slices}")
    patient, plan = make_plan("head_neck", seed=int(seed), dims=2)
    if patient.shape != SHAPE[:2]:
        raise ValueError(f"phantom slices must be {SHAPE[:2]}, got {patient.shape}")
    z0 = (SHAPE[2] - slices) // 2
    zs = slice(z0, z0 + slices)

    def vol(img, dtype):
        out = np.zeros(SHAPE, dtype=dtype)
        out[:, :, zs] = np.asarray(img)[:, :, None].astype(dtype)
        return out

    body = np.asarray(patient.body, bool)
    dose_cgy = np.round(np.where(body, plan.dose, 0.0) * 100.0).clip(0, 65535)
    arrays = {"ct": vol(np.clip(np.round(patient.ct_hu + 1024.0), 0, 4095), np.int16),
              "dose_cgy": vol(dose_cgy, np.uint16), "possible_dose_mask": vol(body, bool),
              "voxel_dimensions": np.array([patient.spacing[0], patient.spacing[1], 2.5], np.float32)}
    for name in ROI_NAMES:
        m = patient.masks.get(name)
        if m is not None and np.any(m):
            arrays[name] = vol(np.asarray(m, bool) & body, bool)
    return arrays


def write_phantom_openkbp(root, counts: dict | None = None, seed: int = 0, slices: int = 8,
                          progress: bool = True) -> Path:
    """Write a phantom OpenKBP-format dataset under ``root`` (skipping patients already there).

    Parameters
    ----------
    root : path-like
        The dataset root to create (holds ``train/``, ``validation/``, ``test/``, ``manifest.json``).
    counts : dict, optional
        Patients per split (default :data:`DEFAULT_COUNTS`); ids follow the official
        numbering (train pt_1.., validation pt_201.., test pt_241..).
    seed : int
        Base seed; patient ``pt_N`` uses phantom seed ``seed * 1000 + N``.
    """
    from tqdm.auto import tqdm

    root = Path(root)
    counts = dict(DEFAULT_COUNTS if counts is None else counts)
    manifest = json.loads((root / "manifest.json").read_text()) if (root / "manifest.json").is_file() else {}
    jobs = [(split, f"pt_{SPLIT_RANGES[split][0] + i}") for split, n in counts.items() for i in range(int(n))]
    entries = {}
    for split, pid in tqdm(jobs, desc="phantom OpenKBP", disable=not progress):
        path = root / split / f"{pid}.npz"
        if path.is_file() and f"{split}/{pid}" in manifest:
            continue
        arrays = phantom_patient_arrays(int(seed) * 1000 + int(pid[3:]), slices)
        save_npz(path, **arrays)
        entries[f"{split}/{pid}"] = manifest_keys(arrays)
    if entries or not (root / "manifest.json").is_file():
        update_manifest(root, entries)
    return root
