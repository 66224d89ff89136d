"""OpenKBP release CSVs -> one compressed ``.npz`` per patient (the packed format).

The public release (``provided-data/<split>-pats/pt_N/*.csv`` in ababier/open-kbp)
stores every volume as a *sparse* CSV: a header line ``,data`` and then one line
``flat_index,value`` per non-zero voxel, where ``flat_index`` is the C-order
index into the (128, 128, 128) grid. ROI and possible-dose-mask files leave
the value empty (the listed voxels are the mask); ``voxel_dimensions.csv``
holds three numbers (mm). :func:`prepare_patient` turns one patient folder into
dense arrays with the dtypes of :data:`rtlearn.data.openkbp.format.ARRAY_DTYPES`:

* ``dose_cgy`` = round(100 x dose in Gy) as ``uint16`` (so doses under 0.005 Gy become 0),
* ``ct`` as ``int16`` (the release's 0..4095 scale),
* masks as ``bool``, ``voxel_dimensions`` as ``float32``.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np

from ...io import atomic_path, save_npz
from .format import CSV_KEYS, RELEASE_SPLIT_DIRS, SHAPE, SPLITS, check_patient_arrays

_N_VOXELS = int(np.prod(SHAPE))
_FIX = "delete it and download the patient again (python data_scripts/download_openkbp.py)"


def read_sparse_csv(path: str | os.PathLike, with_values: bool):
    """Read one OpenKBP sparse CSV.

    Parameters
    ----------
    path : path-like
        The CSV file (header ``,data``; rows ``flat_index,value``).
    with_values : bool
        ``False`` for mask files (value column empty): return only the indices.

    Returns
    -------
    indices : ndarray of int64
        C-order flat indices into the (128, 128, 128) grid.
    values : ndarray of float64 or None
        The values (``None`` when ``with_values`` is false).

    Raises
    ------
    ValueError
        If the file is not a sparse OpenKBP CSV, is truncated, or indexes
        outside the grid; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    with open(path, "r", encoding="ascii", errors="replace") as fh:
        header = fh.readline().strip()
        if header.replace(" ", "") != ",data":
            raise ValueError(f"{path} is not an OpenKBP sparse CSV (first line {header[:40]!r}, "
                             f"expected ',data'); {_FIX}")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # an empty file gives a warning and no rows
                table = np.loadtxt(fh, delimiter=",", dtype=np.float64, ndmin=2,
                                   usecols=(0, 1) if with_values else (0,))
        except ValueError as exc:
            raise ValueError(f"{path} could not be parsed ({exc}); the file is corrupt or "
                             f"truncated; {_FIX}") from exc
    flat = table[:, 0]
    if flat.size and (not np.all(np.isfinite(flat)) or np.any(flat != np.round(flat))
                      or flat.min() < 0 or flat.max() >= _N_VOXELS):
        raise ValueError(f"{path} holds voxel indices outside 0..{_N_VOXELS - 1} (a {SHAPE} grid); {_FIX}")
    indices = flat.astype(np.int64)
    if np.unique(indices).size != indices.size:
        raise ValueError(f"{path} lists some voxels twice; {_FIX}")
    values = None
    if with_values:
        values = table[:, 1]
        if not np.all(np.isfinite(values)):
            raise ValueError(f"{path} has missing or non-finite values; {_FIX}")
    return indices, values


def read_voxel_dimensions(path: str | os.PathLike) -> np.ndarray:
    """Read ``voxel_dimensions.csv`` (three positive numbers, mm) as ``float32``."""
    path = Path(path)
    try:
        vd = np.loadtxt(path, dtype=np.float64).ravel()
    except (ValueError, OSError) as exc:
        raise ValueError(f"{path} could not be read as three numbers ({exc}); {_FIX}") from exc
    if vd.size != 3 or not np.all(np.isfinite(vd)) or np.any(vd <= 0):
        raise ValueError(f"{path} must hold 3 positive voxel sizes in mm, got {vd.tolist()}; {_FIX}")
    return vd.astype(np.float32)


def _dense(indices: np.ndarray, values, dtype) -> np.ndarray:
    out = np.zeros(_N_VOXELS, dtype=dtype)
    out[indices] = True if values is None else values
    return out.reshape(SHAPE)


def prepare_patient(csv_dir: str | os.PathLike) -> dict:
    """Convert one release patient folder (``pt_N/*.csv``) to dense arrays.

    Parameters
    ----------
    csv_dir : path-like
        A folder such as ``provided-data/train-pats/pt_1``.

    Returns
    -------
    dict
        Key -> array, exactly the packed format (see
        :data:`rtlearn.data.openkbp.format.ARRAY_DTYPES`): ``dose_cgy`` (uint16,
        cGy = round(100 x Gy)), ``ct`` (int16), ``possible_dose_mask`` and one
        bool mask per contoured ROI, ``voxel_dimensions`` (float32, mm). Keys of
        files absent from the folder are absent from the dict.

    Raises
    ------
    FileNotFoundError
        If the folder or its ``voxel_dimensions.csv`` is missing.
    ValueError
        If a CSV is corrupt (the message names the file).
    """
    csv_dir = Path(csv_dir)
    if not csv_dir.is_dir():
        raise FileNotFoundError(f"patient folder {csv_dir} does not exist")
    vd_path = csv_dir / "voxel_dimensions.csv"
    if not vd_path.is_file():
        raise FileNotFoundError(f"{vd_path} is missing; every OpenKBP patient has one; {_FIX}")
    arrays = {"voxel_dimensions": read_voxel_dimensions(vd_path)}
    for stem, key in CSV_KEYS.items():
        path = csv_dir / f"{stem}.csv"
        if key == "voxel_dimensions" or not path.is_file():
            continue
        if key == "dose_cgy":
            idx, gy = read_sparse_csv(path, with_values=True)
            if gy.size and gy.min() < 0:
                raise ValueError(f"{path} has negative doses (min {gy.min():.4g} Gy); {_FIX}")
            cgy = np.round(gy * 100.0)
            if cgy.size and cgy.max() > np.iinfo(np.uint16).max:
                raise ValueError(f"{path} has doses above 655 Gy; this is not an OpenKBP dose file")
            arrays[key] = _dense(idx, cgy.astype(np.uint16), np.uint16)
        elif key == "ct":
            idx, hu = read_sparse_csv(path, with_values=True)
            if hu.size and (hu.min() < -32768 or hu.max() > 32767 or np.any(hu != np.round(hu))):
                raise ValueError(f"{path} has CT values that are not int16 integers; {_FIX}")
            arrays[key] = _dense(idx, hu.astype(np.int16), np.int16)
        else:
            idx, _ = read_sparse_csv(path, with_values=False)
            arrays[key] = _dense(idx, None, bool)
    check_patient_arrays(arrays, name=str(csv_dir))
    return arrays


def manifest_keys(arrays: dict) -> list[str]:
    """Keys listed for a patient in ``manifest.json`` (sorted, without ``voxel_dimensions``)."""
    return sorted(k for k in arrays if k != "voxel_dimensions")


def update_manifest(root: str | os.PathLike, entries: dict) -> Path:
    """Merge ``{"<split>/pt_N": [keys]}`` into ``<root>/manifest.json`` (atomic write)."""
    path = Path(root) / "manifest.json"
    manifest = {}
    if path.is_file():
        try:
            manifest = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is corrupt ({exc}); delete it and run "
                             "data_scripts/prepare_openkbp.py again") from exc
    manifest.update(entries)
    manifest = {k: manifest[k] for k in sorted(manifest)}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    return path


def prepare_split(provided_data: str | os.PathLike, out_root: str | os.PathLike, split: str,
                  patients=None, overwrite: bool = False, progress: bool = True) -> list[Path]:
    """Prepare every patient of one split: ``provided-data/<split>-pats`` -> ``out_root/<split>/pt_N.npz``.

    Parameters
    ----------
    provided_data : path-like
        The release's ``provided-data`` folder.
    out_root : path-like
        Root of the prepared dataset (the folder holding ``train/``, ``manifest.json``).
    split : {"train", "validation", "test"}
    patients : list of str, optional
        Patient ids to prepare (default: every ``pt_*`` folder found).
    overwrite : bool
        Re-prepare patients whose archive already exists (default: skip them, so
        running twice does no work twice).
    progress : bool
        Show a tqdm progress bar.

    Returns
    -------
    list of Path
        The archives of the split's requested patients.
    """
    from tqdm.auto import tqdm

    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    src = Path(provided_data) / RELEASE_SPLIT_DIRS[split]
    if not src.is_dir():
        raise FileNotFoundError(f"{src} does not exist; download the release first "
                                "(python data_scripts/download_openkbp.py)")
    if patients is None:
        patients = sorted((p.name for p in src.iterdir() if p.is_dir() and p.name.startswith("pt_")),
                          key=lambda s: int(s[3:]))
    out_dir = Path(out_root) / split
    paths, entries = [], {}
    for pid in tqdm(patients, desc=f"prepare {split}", disable=not progress):
        target = out_dir / f"{pid}.npz"
        paths.append(target)
        if target.is_file() and not overwrite:
            continue
        arrays = prepare_patient(src / pid)
        save_npz(target, **arrays)
        entries[f"{split}/{pid}"] = manifest_keys(arrays)
    if entries:
        update_manifest(out_root, entries)
    return paths
