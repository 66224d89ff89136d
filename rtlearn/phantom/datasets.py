"""torch Datasets of phantom patients for dose prediction and segmentation.

Cases are generated once (anatomy + optimised plan(s)), stored as one ``.npz``
archive in ``rtlearn.config.data_root()/phantom`` (written atomically with
:func:`rtlearn.io.save_npz`) and loaded from there afterwards. Case ``i`` of a
dataset with seed ``s`` is the patient :func:`case_seed` ``(s, i)``, so a
dataset is identical for the same seed, size and grid on any machine.

Items are dicts of float32 tensors (2D: ``C x H x W``; 3D: ``C x Z x H x W``).
"""
from __future__ import annotations

import hashlib
import json

import numpy as np
import torch

from ..config import data_root
from ..io import load_npz, save_npz
from .anatomy import DEFAULT_SHAPE, EXTRA_ROIS, ROI_NAMES, SITES, _check_mimics, make_patient
from .optimise import PARETO_PAIRS, optimise_plan, pareto_sweep

#: bump when anatomy, dose engine or objectives change (invalidates caches)
DATA_VERSION = 2

INPUTS = ("roi_map", "structures", "ct")


def case_seed(seed: int, index: int) -> int:
    """Seed of case ``index`` of a dataset with seed ``seed`` (distinct for every pair)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0] & 0x7FFFFFFF)


def _one_case(args):
    site, cseed, dims, shape, spacing, plans_per_case, with_plan, mimics, *roi_names = args
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # identical numbers whatever the caller's threads
    try:
        p = make_patient(site, cseed, dims=dims, shape=shape, spacing=spacing, mimics=mimics)
        out = {
            "ct": p.ct_hu,
            "body": p.body,
            "rois": p.structure_stack(roi_names[0] if roi_names and roi_names[0] is not None else None),
            "roi_map": p.roi_map(),
            "rx": np.float32(max(p.prescriptions.values())),
            "spacing": np.asarray(p.spacing, np.float32),
        }
        if p.mr is not None:
            out["mr"] = np.stack([p.mr[k] for k in ("T1", "T1c", "T2", "FLAIR")])
        if with_plan:
            if plans_per_case > 1:
                plans = pareto_sweep(p, plans_per_case)
                x = np.linspace(0.02, 0.98, plans_per_case)
                out["pareto_x"] = x.astype(np.float32)
            else:
                plans = [optimise_plan(p)]
            out["dose"] = np.stack([pl.dose for pl in plans]).astype(np.float32)
        return out
    finally:
        torch.set_num_threads(n_threads)


def generate_cases(site: str, n: int, seed: int = 0, dims: int = 2, shape=None, spacing=None,
                   plans_per_case: int = 1, with_plan: bool = True, progress: bool = True,
                   n_jobs: int = 1, mimics=None, roi_names=None) -> dict:
    """Make ``n`` cases; returns a dict of stacked arrays (first axis: case).

    Keys: ``ct`` (HU), ``body``, ``rois`` (bool, in the order of ``roi_names``,
    default ``ROI_NAMES[site]``; a structure absent from a case is all False),
    ``roi_map``, ``rx``, ``spacing``, ``seeds``; ``dose`` (Gy,
    ``n x plans_per_case x ...``) when ``with_plan``; ``mr`` (brain);
    ``pareto_x`` when ``plans_per_case > 1`` (the share of the pair weight on
    the first OAR of :data:`~rtlearn.phantom.optimise.PARETO_PAIRS`).
    ``n_jobs > 1`` uses worker processes; results are identical. ``mimics``
    (brain): enhancing non-tumour spots per patient, see
    :func:`~rtlearn.phantom.make_patient`.
    """
    if site not in SITES:
        raise ValueError(f"unknown site {site!r}; choose one of {SITES}")
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n (number of cases) must be a positive int, got {n!r}")
    if not isinstance(plans_per_case, (int, np.integer)) or plans_per_case < 1:
        raise ValueError(f"plans_per_case must be a positive int, got {plans_per_case!r}")
    seeds = [case_seed(seed, i) for i in range(n)]
    mimics = _check_mimics(mimics, site)
    if roi_names is not None:
        roi_names = tuple(roi_names)
        known = ROI_NAMES[site] + EXTRA_ROIS[site]
        bad = [r for r in roi_names if r not in known]
        if bad or not roi_names:
            raise ValueError(f"roi_names {bad or roi_names} not among the structures of {site!r}: {known}")
    jobs = [(site, s, dims, shape, spacing, plans_per_case, with_plan, mimics, roi_names) for s in seeds]
    from tqdm.auto import tqdm

    bar = dict(total=n, desc=f"phantom {site} {dims}D", disable=not progress)
    if n_jobs > 1 and n > 1:
        import multiprocessing as mp

        with mp.get_context("fork").Pool(n_jobs) as pool:
            cases = list(tqdm(pool.imap(_one_case, jobs, chunksize=max(1, n // (8 * n_jobs))), **bar))
    else:
        cases = [_one_case(j) for j in tqdm(jobs, **bar)]
    out = {k: np.stack([c[k] for c in cases]) for k in cases[0] if k != "pareto_x"}
    if "pareto_x" in cases[0]:
        out["pareto_x"] = cases[0]["pareto_x"]
    out["seeds"] = np.asarray(seeds, np.int64)
    return out


def _cached(kind, site, n, seed, dims, shape, spacing, plans_per_case, with_plan, root, cache, progress, n_jobs,
            mimics=None, roi_names=None):
    shape = tuple(DEFAULT_SHAPE[dims] if shape is None else shape)
    mimics = _check_mimics(mimics, site)
    key = json.dumps([DATA_VERSION, site, n, seed, dims, shape, spacing, plans_per_case, with_plan]
                     + ([] if mimics is None else [{"mimics": mimics}])
                     + ([] if roi_names is None else [{"rois": list(roi_names)}]))
    h = hashlib.sha1(key.encode()).hexdigest()[:10]
    path = data_root(root) / "phantom" / f"{kind}_{site}_{dims}d_n{n}_s{seed}_{h}.npz"
    if cache and path.is_file():
        try:
            return load_npz(path), path
        except ValueError:
            path.unlink()  # corrupt: regenerate
    data = generate_cases(site, n, seed, dims, shape, spacing, plans_per_case, with_plan, progress, n_jobs,
                          mimics, roi_names)
    if cache:
        save_npz(path, **data)
    return data, path


class PhantomDoseDataset(torch.utils.data.Dataset):
    """Dose prediction on phantom patients.

    Parameters
    ----------
    site : str
        See :data:`~rtlearn.phantom.anatomy.SITES`.
    n : int
        Number of patients.
    seed : int
        Dataset seed (case ``i`` is patient ``case_seed(seed, i)``).
    dims : {2, 3}
    shape, spacing : optional grid (see :func:`~rtlearn.phantom.make_patient`).
    inputs : str or tuple of str
        Input channels, concatenated in order: ``"roi_map"`` (1 channel, Bai et
        al. 2021's single ROI-valued map), ``"structures"`` (one binary channel per
        ROI in ``ROI_NAMES[site]`` plus the body), ``"ct"`` (HU / 1000).
    plans_per_case : int
        ``> 1`` gives a Pareto sweep per patient (:func:`pareto_sweep`); the
        dataset then has ``n * plans_per_case`` items.
    target_scale : float, optional
        Divide the target dose by this (default: keep Gy).
    root : path, optional
        Cache directory (default :func:`rtlearn.config.data_root`).
    cache : bool
        Load/save the generated cases from/to disk.
    progress : bool
        tqdm progress bar while generating.
    n_jobs : int
        Worker processes for generation.

    Items
    -----
    ``{"input": C x H x W, "target": 1 x H x W (dose), "mask": 1 x H x W (body),
    "rois": K x H x W, "rx": (), "index": (), "pareto_x": () (sweeps only)}``.
    """

    def __init__(self, site: str = "breast", n: int = 32, seed: int = 0, dims: int = 2, shape=None, spacing=None,
                 inputs="roi_map", plans_per_case: int = 1, target_scale: float | None = None, root=None,
                 cache: bool = True, progress: bool = True, n_jobs: int = 1):
        inputs = (inputs,) if isinstance(inputs, str) else tuple(inputs)
        bad = [i for i in inputs if i not in INPUTS]
        if bad or not inputs:
            raise ValueError(f"inputs {bad or inputs} not understood; choose from {INPUTS}")
        if target_scale is not None and (not np.isfinite(target_scale) or target_scale <= 0):
            raise ValueError(f"target_scale must be a positive number, got {target_scale!r}")
        self.site, self.n, self.seed, self.dims, self.inputs = site, n, seed, dims, inputs
        self.plans_per_case = plans_per_case
        self.target_scale = target_scale
        self.roi_names = ROI_NAMES.get(site, ())
        self.data, self.path = _cached("dose", site, n, seed, dims, shape, spacing, plans_per_case, True, root, cache,
                                       progress, n_jobs)
        self.case_seeds = self.data["seeds"].tolist()
        self.pareto_pair = PARETO_PAIRS[site] if plans_per_case > 1 else None
        self.in_channels = sum({"roi_map": 1, "structures": len(self.roi_names) + 1, "ct": 1}[i] for i in inputs)

    def __len__(self):
        return self.n * self.plans_per_case

    def __getitem__(self, i):
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} items")
        i = i % len(self)
        c, k = divmod(i, self.plans_per_case)
        d = self.data
        body = d["body"][c]
        chans = []
        for name in self.inputs:
            if name == "roi_map":
                chans.append(d["roi_map"][c][None])
            elif name == "structures":
                chans.append(np.concatenate([d["rois"][c], body[None]]).astype(np.float32))
            else:
                chans.append((d["ct"][c] / 1000.0)[None])
        dose = d["dose"][c, k]
        if self.target_scale:
            dose = dose / self.target_scale
        item = {
            "input": torch.from_numpy(np.concatenate(chans).astype(np.float32)),
            "target": torch.from_numpy(dose[None].astype(np.float32)),
            "mask": torch.from_numpy(body[None].astype(np.float32)),
            "rois": torch.from_numpy(d["rois"][c].astype(np.float32)),
            "rx": torch.tensor(float(d["rx"][c]), dtype=torch.float32),
            "index": torch.tensor(c),
        }
        if self.plans_per_case > 1:
            item["pareto_x"] = torch.tensor(float(d["pareto_x"][k]), dtype=torch.float32)
        return item


class PhantomSegmentationDataset(torch.utils.data.Dataset):
    """Segmentation on phantom patients.

    Inputs are the MR-like channels ``T1, T1c, T2, FLAIR`` for ``brain`` (and
    CT / 1000 as a fifth channel with ``ct=True``), the CT (HU / 1000) for the
    other sites. Targets are binary channels, one per name in ``targets``
    (default ``("GTV",)`` for brain, the primary target otherwise).
    ``with_dose=True`` adds the clinical plan's dose (Gy) as ``"dose"``, so that
    a segmentation's dosimetric effect can be studied (DOSELO). ``mimics``
    (brain only; an int count or a float Poisson rate per patient, see
    :func:`~rtlearn.phantom.make_patient`) adds enhancing spots that are not
    tumour, far from the GTV, which provoke distant false positives.

    Items: ``{"input": C x H x W, "target": K x H x W, "mask": 1 x H x W (body),
    "rois": R x H x W, "index": (), "dose": 1 x H x W (optional)}``. The ``R``
    structures, :attr:`roi_names`, are ``ROI_NAMES[site]`` followed by
    ``EXTRA_ROIS[site]`` (for ``head_neck``: OpenKBP's ROIs, then the optic
    chiasm, optic nerves and submandibular glands of PDDCA); ``targets`` may be
    any of them.
    """

    def __init__(self, site: str = "brain", n: int = 32, seed: int = 0, dims: int = 2, shape=None, spacing=None,
                 targets=None, ct: bool = False, with_dose: bool = False, root=None, cache: bool = True,
                 progress: bool = True, n_jobs: int = 1, mimics=None):
        if site not in SITES:
            raise ValueError(f"unknown site {site!r}; choose one of {SITES}")
        self.mimics = _check_mimics(mimics, site)
        names = ROI_NAMES[site] + EXTRA_ROIS[site]
        targets = (("GTV",) if site == "brain" else (names[0],)) if targets is None else tuple(targets)
        bad = [t for t in targets if t not in names]
        if bad or not targets:
            raise ValueError(f"targets {bad or targets} not in the ROIs of {site!r}: {names}")
        self.site, self.n, self.seed, self.dims, self.targets, self.ct = site, n, seed, dims, targets, ct
        self.roi_names = names
        self.with_dose = with_dose
        self.data, self.path = _cached("seg", site, n, seed, dims, shape, spacing, 1, with_dose, root, cache,
                                       progress, n_jobs, self.mimics, names if EXTRA_ROIS[site] else None)
        self.case_seeds = self.data["seeds"].tolist()
        self.in_channels = (4 + int(ct)) if site == "brain" else 1

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} items")
        i = i % len(self)
        d = self.data
        ct = (d["ct"][i] / 1000.0)[None]
        if self.site == "brain":
            x = np.concatenate([d["mr"][i], ct]) if self.ct else d["mr"][i]
        else:
            x = ct
        sel = [self.roi_names.index(t) for t in self.targets]
        item = {
            "input": torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
            "target": torch.from_numpy(d["rois"][i][sel].astype(np.float32)),
            "mask": torch.from_numpy(d["body"][i][None].astype(np.float32)),
            "rois": torch.from_numpy(d["rois"][i].astype(np.float32)),
            "index": torch.tensor(i),
        }
        if self.with_dose:
            item["dose"] = torch.from_numpy(d["dose"][i, :1].astype(np.float32))
        return item
