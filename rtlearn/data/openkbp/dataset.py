"""Find, load and serve the OpenKBP dataset (Babier et al., Med Phys 2021).

The prepared dataset is a folder with ``train/``, ``validation/``, ``test/``
(one ``pt_N.npz`` per patient, see :mod:`rtlearn.data.openkbp.format`) and a
``manifest.json``. :func:`find_openkbp` looks for it in this order:

1. the ``path`` argument,
2. ``$RTLEARN_DATA/openkbp``,
3. the user cache ``~/.cache/rtlearn/openkbp`` (where ``data_scripts/download_openkbp.py`` puts it),
4. ``$RTLEARN_SHARED_DATA/openkbp`` and ``<repo>/../shared/data/openkbp``.

:class:`OpenKBPDataset` serves 3D volumes or 2D axial slices in rtlearn's
``(Z, Y, X)`` order, with inputs chosen among the ten ROI masks, CT and the
possible-dose mask. Patients are decompressed once (in a thread pool) into
compact in-memory records (:mod:`rtlearn.data.openkbp.cache`), so later epochs read
from memory.
"""
from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ...config import data_root
from ...io import load_npz
from .cache import (PDM_BIT, compact_patient, ct_values, expand_patient, load_cache, record_nbytes,
                    save_cache, unpack_masks)
from .format import ROI_NAMES, SPLITS, check_patient_arrays, spacing_zyx, split_of, to_zyx

DOWNLOAD_HINT = ("Download and prepare it with `python data_scripts/download_openkbp.py` "
                 "(roughly 2 GB of CSVs from github.com/ababier/open-kbp, deleted after conversion), or point "
                 "RTLEARN_DATA at a folder holding an 'openkbp/' subfolder.")
INPUTS = ("rois", "ct", "possible_dose_mask")


def _is_dataset_root(path: Path) -> bool:
    return path.is_dir() and ((path / "manifest.json").is_file() or any((path / s).is_dir() for s in SPLITS))


def candidate_roots(path=None) -> list[Path]:
    """The folders :func:`find_openkbp` tries, in order."""
    cands = []
    if path is not None:
        cands.append(Path(path).expanduser())
    if os.environ.get("RTLEARN_DATA"):
        cands.append(Path(os.environ["RTLEARN_DATA"]).expanduser() / "openkbp")
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    cands.append(Path(cache) / "rtlearn" / "openkbp")
    if os.environ.get("RTLEARN_SHARED_DATA"):
        cands.append(Path(os.environ["RTLEARN_SHARED_DATA"]).expanduser() / "openkbp")
    cands.append(Path(__file__).resolve().parents[3].parent / "shared" / "data" / "openkbp")
    return cands


def find_openkbp(path=None) -> Path:
    """Return the root of the prepared OpenKBP dataset.

    Raises
    ------
    FileNotFoundError
        If ``path`` is given and is not a prepared dataset, or if no candidate
        folder holds one; the message lists where it looked and how to download.
    """
    if path is not None:
        p = Path(path).expanduser()
        if _is_dataset_root(p):
            return p
        if _is_dataset_root(p / "openkbp"):
            return p / "openkbp"
        raise FileNotFoundError(f"{p} is not a prepared OpenKBP dataset (no manifest.json or "
                                f"train/validation/test folders). {DOWNLOAD_HINT}")
    tried = candidate_roots()
    for cand in tried:
        if _is_dataset_root(cand):
            return cand
    raise FileNotFoundError("OpenKBP data not found; looked in " + ", ".join(map(str, tried))
                            + ". " + DOWNLOAD_HINT)


def available(path=None) -> bool:
    """True if :func:`find_openkbp` would succeed."""
    try:
        find_openkbp(path)
    except FileNotFoundError:
        return False
    return True


def list_patients(split: str, root=None) -> list[str]:
    """Patient ids of ``split`` present on disk, in numeric order."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    folder = find_openkbp(root) / split
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} does not exist: the {split} split is missing. {DOWNLOAD_HINT}")
    return sorted((p.stem for p in folder.glob("pt_*.npz")), key=lambda s: int(s[3:]))


def load_patient(patient: str, split: str | None = None, root=None) -> dict:
    """Load one prepared patient as the packed arrays (OpenKBP ``(Y, X, Z)`` order).

    Raises ``FileNotFoundError``/``ValueError`` naming the archive when it is
    missing, corrupt or not in the packed format.
    """
    split = split or split_of(patient)
    path = find_openkbp(root) / split / f"{patient}.npz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist. {DOWNLOAD_HINT}")
    arrays = load_npz(path)
    try:
        check_patient_arrays(arrays, name=str(path))
    except ValueError as exc:
        raise ValueError(f"{exc}; delete {path} and prepare it again "
                         "(python data_scripts/prepare_openkbp.py)") from exc
    return arrays


def load_records(split: str, patients=None, root=None, margin: int = 8, ct_dtype: str = "int16",
                 workers: int | None = None, progress: bool = True) -> dict:
    """Load patients of a split as compact records (:func:`rtlearn.data.openkbp.cache.compact_patient`).

    Decompression runs in a thread pool of ``workers`` threads (default: CPU count, at most 8).
    """
    from tqdm.auto import tqdm

    if patients is None:
        patients = list_patients(split, root)
    root = find_openkbp(root)
    workers = workers or min(8, os.cpu_count() or 1)

    def one(pid):
        return pid, compact_patient(load_patient(pid, split, root), margin=margin, ct_dtype=ct_dtype)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        it = pool.map(one, patients)
        records = dict(tqdm(it, total=len(patients), desc=f"OpenKBP {split}", disable=not progress))
    return records


def cache_path(split: str, margin: int = 8, ct_dtype: str = "int16", root=None) -> Path:
    """Default location of a split's training cache (under :func:`rtlearn.config.data_root`)."""
    return data_root(root) / "openkbp-cache" / f"{split}-m{margin}-{ct_dtype}-v1.npz"


def build_cache(split: str, path=None, root=None, margin: int = 8, ct_dtype: str = "int16",
                workers: int | None = None, progress: bool = True, overwrite: bool = False) -> Path:
    """Write the compact cache of every patient in ``split`` (skipped if it exists) and return its path."""
    path = Path(path) if path is not None else cache_path(split, margin, ct_dtype)
    if path.is_file() and not overwrite:
        return path
    records = load_records(split, root=root, margin=margin, ct_dtype=ct_dtype, workers=workers,
                           progress=progress)
    return save_cache(path, records, meta={"split": split, "margin": margin, "ct_dtype": ct_dtype,
                                          "source": str(find_openkbp(root))})


def _block_mean(a: np.ndarray, f: int) -> np.ndarray:
    """Mean over blocks of ``f`` voxels along every axis but the first (channels)."""
    shape = [a.shape[0]]
    for n in a.shape[1:]:
        shape += [n // f, f]
    return np.ascontiguousarray(a.reshape(shape).mean(axis=tuple(range(2, len(shape), 2)), dtype=np.float32))


class OpenKBPDataset(Dataset):
    """OpenKBP as a torch ``Dataset`` of dicts, 3D volumes or 2D axial slices.

    Parameters
    ----------
    split : {"train", "validation", "test"}
    root : path-like, optional
        Dataset root (see :func:`find_openkbp`).
    dims : {2, 3}
        ``3``: one item per patient, arrays ``(C, 128, 128, 128)`` in ``(Z, Y, X)``
        order. ``2``: one item per axial slice, ``(C, 128, 128)`` = ``(C, Y, X)``.
    inputs : sequence of {"rois", "ct", "possible_dose_mask"}
        Input channels, in this order: the ten ROI masks (:data:`ROI_NAMES`; a
        missing ROI is a zero channel and ``roi_available`` is false), CT scaled to
        ``(ct - 1024) / 1000`` (HU / 1000), the possible-dose mask.
    patients : list of str or int, optional
        Patient ids, or the number of first patients of the split (default: all).
    strict : bool
        Raise instead of skipping patients that lack what is needed (dose and
        possible-dose mask always; CT when ``"ct"`` is an input).
    slices : {"mask", "all"}
        2D only: keep only slices that meet the possible-dose mask (default) or all 128.
    slice_step : int
        2D only: keep every ``slice_step``-th of those slices (fewer, less redundant
        training slices; use 1 for evaluation).
    downsample : int
        Average blocks of ``downsample`` voxels per spatial axis (1: full 128 grid;
        2: 64 x 64 slices, for quick CPU runs). ``input`` and ``target`` are block
        means; ``mask`` is the fraction of the block inside the possible-dose mask.
        :func:`rtlearn.data.openkbp.eval.predict_patient` upsamples predictions back.
    cache : bool or path-like
        ``True``: read the split's default compact cache (:func:`build_cache`,
        :func:`cache_path`) when it exists and was built from this root with these
        settings; a path: read that file, building it first if absent;
        ``False`` (default): decompress the archives.
    margin, ct_dtype, workers, progress
        Passed to :func:`load_records`.

    Items
    -----
    ``{"input": float32 (C, ...), "target": float32 (1, ...) dose in Gy,
    "mask": float32 (1, ...) possible-dose mask (0/1), "roi_available": bool (10,),
    "patient": str}`` (+ ``"slice": int`` in 2D).
    """

    def __init__(self, split: str = "train", root=None, dims: int = 2, inputs=INPUTS, patients=None,
                 strict: bool = False, slices: str = "mask", slice_step: int = 1, downsample: int = 1,
                 cache=False, margin: int = 8,
                 ct_dtype: str = "int16", workers: int | None = None, progress: bool = True,
                 verbose: bool = True):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if dims not in (2, 3):
            raise ValueError(f"dims must be 2 or 3, got {dims!r}")
        inputs = tuple(inputs)
        bad = [i for i in inputs if i not in INPUTS]
        if bad or not inputs:
            raise ValueError(f"inputs must be a non-empty subset of {INPUTS}, got {inputs}")
        if slices not in ("mask", "all"):
            raise ValueError(f"slices must be 'mask' or 'all', got {slices!r}")
        if downsample not in (1, 2, 4, 8):
            raise ValueError(f"downsample must be 1, 2, 4 or 8 (a divisor of 128), got {downsample!r}")
        self.downsample = downsample
        if not isinstance(slice_step, int) or slice_step < 1:
            raise ValueError(f"slice_step must be a positive int, got {slice_step!r}")
        self.split, self.dims, self.inputs, self.slices = split, dims, inputs, slices
        self.root = find_openkbp(root)
        all_ids = list_patients(split, self.root)
        if isinstance(patients, int):
            patients = all_ids[:patients]
        elif patients is not None:
            patients = [str(p) for p in patients]
            missing = sorted(set(patients) - set(all_ids))
            if missing:
                raise FileNotFoundError(f"patients {missing} are not in {self.root / split}. {DOWNLOAD_HINT}")
        else:
            patients = all_ids

        t0 = time.perf_counter()
        records = None
        if cache is not False:
            path = cache_path(split, margin, ct_dtype) if cache is True else Path(cache)
            if not path.is_file() and cache is not True:
                build_cache(split, path, self.root, margin, ct_dtype, workers, progress)
            if path.is_file():
                cached, meta = load_cache(path)
                same = (meta.get("source") == str(self.root) and meta.get("split") == split
                        and meta.get("margin") == margin and meta.get("ct_dtype") == ct_dtype)
                if not same and cache is not True:
                    raise ValueError(f"{path} was built from another dataset or with other settings "
                                     f"({ {k: meta.get(k) for k in ('source', 'split', 'margin', 'ct_dtype')} }); "
                                     "delete it or pass another cache path")
                if same and set(patients) <= set(cached):
                    records = {p: cached[p] for p in patients}
        if records is None:
            records = load_records(split, patients, self.root, margin, ct_dtype, workers, progress)
        self.load_seconds = time.perf_counter() - t0

        self.skipped = {}
        for pid, rec in records.items():
            reasons = [what for what, ok in (("dose", "dose_cgy" in rec),
                                             ("possible-dose mask", bool(rec["has_pdm"])),
                                             ("CT", "ct" in rec or "ct" not in inputs)) if not ok]
            if reasons:
                self.skipped[pid] = "no " + " and no ".join(reasons)
        if self.skipped:
            msg = (f"OpenKBP {split}: {len(self.skipped)} of {len(records)} patients lack what this "
                   f"dataset needs: " + ", ".join(f"{p} ({r})" for p, r in self.skipped.items()))
            if strict:
                raise ValueError(msg + ". Download the full release (python data_scripts/download_openkbp.py) "
                                 "or use strict=False to skip them.")
            if verbose:
                print(msg + "; skipped.")
        self.records = {p: r for p, r in records.items() if p not in self.skipped}
        self.patients = list(self.records)
        if not self.patients:
            raise ValueError(f"OpenKBP {split}: no usable patient among {len(records)} requested")

        self.channel_names = ((list(ROI_NAMES) if "rois" in inputs else []) + (["CT"] if "ct" in inputs else [])
                              + (["possible_dose_mask"] if "possible_dose_mask" in inputs else []))
        if dims == 3:
            self.index = [(p, -1) for p in self.patients]
        else:
            self.index = []
            for p in self.patients:
                rec = self.records[p]
                z0, z1 = (int(v) for v in rec["bbox"][2])
                if slices == "all":
                    zs = range(128)
                else:
                    pdm_z = ((rec["bits"] >> np.uint16(PDM_BIT)) & 1).any(axis=(0, 1))
                    zs = (z0 + np.flatnonzero(pdm_z)).tolist()
                zs = list(zs)[::slice_step]
                self.index.extend((p, int(z)) for z in zs)
        self._by_patient = {}
        for i, (p, _) in enumerate(self.index):
            self._by_patient.setdefault(p, []).append(i)

    @property
    def n_channels(self) -> int:
        return len(self.channel_names)

    def nbytes(self) -> int:
        """Memory held by the compact records (bytes)."""
        return sum(record_nbytes(r) for r in self.records.values())

    def __len__(self) -> int:
        return len(self.index)

    def _arrays(self, rec, z):
        """Channels/target/mask in OpenKBP order, cropped to the box (3D) or one slice (2D)."""
        bits, dose = rec["bits"], rec["dose_cgy"]
        ct = rec.get("ct")
        if z >= 0:
            zl = z - int(rec["bbox"][2, 0])
            inside = 0 <= zl < bits.shape[2]
            zl = min(max(zl, 0), bits.shape[2] - 1)
            bits, dose = bits[:, :, zl], dose[:, :, zl]
            ct = None if ct is None else ct[:, :, zl]
            if not inside:
                bits, dose = np.zeros_like(bits), np.zeros_like(dose)
                ct = None if ct is None else np.zeros_like(ct)
        chans = []
        if "rois" in self.inputs:
            chans.append(unpack_masks(bits, ROI_NAMES).astype(np.float32))
        if "ct" in self.inputs:
            chans.append(((ct_values(ct) - 1024.0) / 1000.0)[None])
        pdm = ((bits >> np.uint16(PDM_BIT)) & 1).astype(np.float32)[None]
        if "possible_dose_mask" in self.inputs:
            chans.append(pdm)
        return np.concatenate(chans, axis=0), dose.astype(np.float32)[None] / 100.0, pdm

    def __getitem__(self, i):
        pid, z = self.index[i]
        rec = self.records[pid]
        x, y, m = self._arrays(rec, z)
        box = rec["bbox"].astype(np.int64)
        if z >= 0:   # 2D: paste the (Y, X) crop into a full 128 x 128 slice
            shape, sl = (128, 128), (slice(None), slice(*box[0]), slice(*box[1]))
        else:        # 3D: (Y, X, Z) -> (Z, Y, X) on the crop, then paste into the full grid
            x, y, m = (np.transpose(a, (0, 3, 1, 2)) for a in (x, y, m))
            shape, sl = (128, 128, 128), (slice(None), slice(*box[2]), slice(*box[0]), slice(*box[1]))
        full = [np.zeros((a.shape[0],) + shape, np.float32) for a in (x, y, m)]
        if "ct" in self.inputs:   # air outside the crop, not water
            full[0][self.channel_names.index("CT")] = -1.024
        for f, a in zip(full, (x, y, m)):
            f[sl] = a
        if self.downsample > 1:
            full = [_block_mean(a, self.downsample) for a in full]
        item = {"input": torch.from_numpy(full[0]), "target": torch.from_numpy(full[1]),
                "mask": torch.from_numpy(full[2]),
                "roi_available": torch.from_numpy(rec["roi_available"].copy()), "patient": pid}
        if z >= 0:
            item["slice"] = z
        return item

    def patient_arrays(self, patient: str) -> dict:
        """Full-grid arrays of one patient in OpenKBP order (for scoring): ``dose`` (Gy),
        ``possible_dose_mask``, ``rois`` {name: mask}, ``voxel_dimensions``, ``spacing_zyx``."""
        full = expand_patient(self.records[patient])
        return {"dose": full["dose_cgy"].astype(np.float64) / 100.0,
                "possible_dose_mask": full["possible_dose_mask"],
                "rois": {n: full[n] for n in ROI_NAMES if n in full},
                "ct": full.get("ct"),
                "voxel_dimensions": full["voxel_dimensions"],
                "spacing_zyx": spacing_zyx(full["voxel_dimensions"])}

    def slices_of(self, patient: str) -> list[int]:
        """Dataset indices of one patient's items (2D: its slices, 3D: one index)."""
        if patient not in self._by_patient:
            raise KeyError(f"{patient!r} is not in this dataset (patients: {self.patients[:5]}...)")
        return list(self._by_patient[patient])


__all__ = ["find_openkbp", "available", "candidate_roots", "list_patients", "load_patient", "load_records",
           "build_cache", "cache_path", "OpenKBPDataset", "to_zyx", "DOWNLOAD_HINT"]
