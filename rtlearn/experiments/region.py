"""Experiment behind the region-specific losses chapter (Chen et al., TPAMI 2023).

Multi-organ segmentation with a U-Net (batch norm, dropout, softmax output)
trained with one loss at a time, evaluated per case and per organ:

* :func:`phantom_data` / :func:`openkbp_data` make the data once (CT windowed to
  ``[-1, 1]``, integer label maps: 0 = background, ``k`` = organ ``k``), split
  into ``train`` / ``val`` / ``test``;
* :func:`make_loss` builds the losses compared in the paper (CE, Dice, Baseline =
  Dice + CE, Baseline + RS, Baseline + ARS, and focal Tversky, generalised Dice,
  sensitivity-specificity for its Table 5) from :mod:`rtlearn.losses`;
* :func:`train_one` trains one model with :class:`rtlearn.train.Trainer` and
  returns the validation DSC per epoch and the test-set metrics of
  :func:`case_metrics` (DSC, recall, precision, HD95, ASD; Eqs. (10)-(12) of
  Chen et al. 2023, computed with :mod:`rtlearn.metrics`);
* :func:`summary_rows` and :func:`wilcoxon_rows` tabulate results like the
  paper's Tables 1-5 (rows for :func:`rtlearn.tables.markdown_table`).

Choices (arguments, documented here):

* The region term is added to the baseline with ``region_reduction="mean"``
  (mean over the counted sub-regions) rather than the sum that Eq. (4) writes:
  with a sum the term's weight relative to the baseline grows with the number of
  sub-regions (``DC**dims``), so a DC ablation would mix the effect of the
  partition with that of the loss scale. ``region_reduction="sum"`` is available.
* Every loss includes the background class (the paper's ``C`` counts it).
* Organs that overlap get the label of the first organ in ``organs``.
* Metrics of an organ absent from a case's ground truth are NaN (not counted);
  an organ present but not predicted has DSC = recall = precision = 0 and NaN
  surface distances (undefined; the empty-mask convention of
  :func:`rtlearn.metrics.hausdorff`), counted in ``"missed"``.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from .. import metrics as M
from ..data.openkbp import dataset as okbp
from ..data.openkbp.format import spacing_zyx, to_zyx
from ..losses import overlap as _overlap
from ..losses import region as _region
from ..metrics import wilcoxon_summary
from ..models.unet import UNet
from ..phantom import PhantomSegmentationDataset
from ..train import Trainer

__all__ = [
    "ORGANS_PHANTOM", "ORGANS_OPENKBP", "LOSSES", "PAPER", "labels_from_masks", "window_ct", "phantom_data",
    "openkbp_data", "make_loss", "hard_dice", "train_one", "predict_labels", "case_metrics", "organ_mean",
    "summary_rows", "wilcoxon_rows", "gradient_map",
]

#: organs of the 2D head-and-neck phantom slice used in the quick profile (the phantom's z = 0 slice has
#: no brainstem, and its oesophagus is only a few pixels wide there)
ORGANS_PHANTOM = ("Mandible", "RightParotid", "LeftParotid", "Larynx", "SpinalCord")
#: OpenKBP's seven organs at risk (full profile)
ORGANS_OPENKBP = ("Brainstem", "SpinalCord", "RightParotid", "LeftParotid", "Esophagus", "Larynx", "Mandible")

#: loss names understood by :func:`make_loss`
LOSSES = ("ce", "dice", "baseline", "baseline+rs", "baseline+ars", "rs", "ars", "focal_tversky",
          "generalised_dice", "sensitivity_specificity")

#: Numbers stated in the text of Chen et al. 2023 (Sec. 4.3); the per-organ tables are images in our copy.
PAPER = {
    "PDDCA mean DSC": {"Baseline": 0.751, "Baseline+RS": 0.764, "Baseline+ARS": 0.772},
    "in-house mean DSC": {"Baseline": 0.657, "Baseline+RS": 0.669, "Baseline+ARS": 0.685},
    "abdominal mean DSC": {"Baseline": 0.687, "Baseline+RS": 0.710, "Baseline+ARS": 0.725},
    "PDDCA mandible DSC gain over Baseline": {"Baseline+RS": 0.030, "Baseline+ARS": 0.033},
    # the text gives these two pairs for "the introduction of adaptive error penalty" without naming the
    # run they start from
    "PDDCA recall without -> with the adaptive penalty": (0.778, 0.801),
    "PDDCA precision without -> with the adaptive penalty": (0.778, 0.766),
}


# --------------------------------------------------------------------------- data
def labels_from_masks(masks, organs=None) -> np.ndarray:
    """Integer label map from a stack of binary masks ``(K, *spatial)``: 0 background, ``k`` = mask ``k-1``.

    Where masks overlap the first one wins (priority = order of the stack).
    """
    m = np.asarray(masks)
    if m.ndim < 2:
        raise ValueError(f"masks must be a stack (K, *spatial), got shape {m.shape}")
    if m.dtype != bool:
        if not np.isin(np.unique(m), (0, 1)).all():
            raise ValueError("masks must be boolean (0/1)")
        m = m.astype(bool)
    if organs is not None and len(organs) != m.shape[0]:
        raise ValueError(f"{len(organs)} organ names for {m.shape[0]} masks")
    if m.shape[0] > 254:
        raise ValueError("at most 254 organs")
    lab = np.zeros(m.shape[1:], np.uint8)
    for k in range(m.shape[0] - 1, -1, -1):  # a handful of organs; painted lowest priority first
        lab[m[k]] = k + 1
    return lab


def window_ct(hu, window=(-200.0, 1200.0)) -> np.ndarray:
    """Clip CT numbers (HU) to ``window`` and rescale linearly to ``[-1, 1]`` (as Chen et al. 2023, Sec. 4.1).

    The paper uses ``[-200, 400]`` HU for PDDCA; our default upper bound of 1200 HU
    keeps the phantom's mandible (1000 HU) apart from the vertebrae (650 HU).
    """
    lo, hi = (float(w) for w in window)
    if not hi > lo:
        raise ValueError(f"window must be (low, high) with high > low, got {window!r}")
    h = np.asarray(hu, dtype=np.float32)
    return (2.0 * (np.clip(h, lo, hi) - lo) / (hi - lo) - 1.0).astype(np.float32)


def _split(images, labels, spacing, n_train, n_val, n_test, organs):
    n = n_train + n_val + n_test
    if images.shape[0] < n:
        raise ValueError(f"need {n} cases, got {images.shape[0]}")
    cut = {"train": (0, n_train), "val": (n_train, n_train + n_val), "test": (n_train + n_val, n)}
    out = {"organs": tuple(organs), "dims": labels.ndim - 1}
    for k, (a, b) in cut.items():
        out[k] = {"image": torch.from_numpy(np.ascontiguousarray(images[a:b, None])),
                  "label": torch.from_numpy(np.ascontiguousarray(labels[a:b])),
                  "spacing": np.asarray(spacing[a:b], np.float64)}
    return out


def _check_counts(n_train, n_val, n_test):
    for name, v in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")


def phantom_data(n_train: int = 48, n_val: int = 8, n_test: int = 16, *, site: str = "head_neck", organs=None,
                 dims: int = 2, shape=(64, 64), spacing=3.2, seed: int = 0, window=(-200.0, 1200.0),
                 noise_hu: float = 0.0, cache: bool = True, root=None, progress: bool = False) -> dict:
    """Phantom CT images and organ label maps, split into train / val / test (one generation for every run).

    Uses :class:`rtlearn.phantom.PhantomSegmentationDataset` (``n_train + n_val +
    n_test`` seeded cases). Returns ``{"train"|"val"|"test": {"image": N x 1 x
    spatial float32 in [-1, 1], "label": N x spatial uint8, "spacing": N x dims
    (mm)}, "organs": names, "dims": dims}``.

    ``noise_hu`` adds seeded Gaussian noise (standard deviation in HU) to the
    CT before windowing, on top of the phantom's own 8 HU, for a harder
    (noisier, lower-dose-like) task with less clear organ boundaries.
    """
    _check_counts(n_train, n_val, n_test)
    organs = tuple(ORGANS_PHANTOM if organs is None else organs)
    if not organs:
        raise ValueError("organs must name at least one structure")
    n = n_train + n_val + n_test
    ds = PhantomSegmentationDataset(site, n=n, seed=seed, dims=dims, shape=shape, spacing=spacing,
                                    targets=organs, cache=cache, root=root, progress=progress)
    names = list(ds.roi_names)
    sel = [names.index(o) for o in organs]
    rois = ds.data["rois"][:, sel]
    labels = np.stack([labels_from_masks(r) for r in rois])
    hu = ds.data["ct"]
    if noise_hu:
        if not np.isfinite(noise_hu) or noise_hu < 0:
            raise ValueError(f"noise_hu must be a finite standard deviation >= 0 (HU), got {noise_hu!r}")
        hu = hu + np.random.default_rng([int(seed), 17]).normal(0.0, float(noise_hu), hu.shape)
    images = window_ct(hu, window)
    return _split(images, labels, ds.data["spacing"], n_train, n_val, n_test, organs)


def openkbp_data(n_train=None, n_val=None, n_test=None, *, organs=ORGANS_OPENKBP,
                 window=(-200.0, 400.0), root=None, progress: bool = True) -> dict:
    """OpenKBP CT volumes with its organs at risk as classes (full profile; 3D, ``Z x Y x X``).

    Patients are taken in order from OpenKBP's own train / validation / test
    splits, skipping patients without a CT (listed in ``"skipped_no_ct"``); the
    CT (stored as HU + 1024) is windowed to ``[-200, 400]`` HU as the paper does
    for PDDCA; an organ not contoured for a patient is empty.
    ``None`` (the default) takes every patient of a split that has a CT.
    Requires the prepared dataset (:func:`rtlearn.data.openkbp.find_openkbp`).
    """
    from tqdm.auto import tqdm

    _check_counts(*(1 if v is None else v for v in (n_train, n_val, n_test)))
    organs = tuple(organs)
    out = {"organs": organs, "dims": 3, "skipped_no_ct": []}
    for key, split, n in (("train", "train", n_train), ("val", "validation", n_val), ("test", "test", n_test)):
        imgs, labs, sps, ids = [], [], [], []
        for pid in tqdm(okbp.list_patients(split, root), desc=f"OpenKBP {split}", disable=not progress):
            if n is not None and len(ids) == n:
                break
            a = okbp.load_patient(pid, split, root)
            if "ct" not in a:  # some copies lack the CT of a few patients: nothing to segment, skipped
                out["skipped_no_ct"].append(pid)
                continue
            ct = to_zyx(a["ct"])
            masks = np.stack([to_zyx(a[o]) if o in a else np.zeros(ct.shape, bool) for o in organs])
            imgs.append(window_ct(ct.astype(np.float32) - 1024.0, window))  # stored as HU + 1024
            labs.append(labels_from_masks(masks))
            sps.append(spacing_zyx(a["voxel_dimensions"]))
            ids.append(pid)
        if not ids or (n is not None and len(ids) < n):
            raise ValueError(f"only {len(ids)} {split} patients with a CT, {n} requested")
        out[key] = {"image": torch.from_numpy(np.stack(imgs)[:, None]), "label": torch.from_numpy(np.stack(labs)),
                    "spacing": np.asarray(sps, np.float64), "patients": ids}
    return out


class _Pairs(torch.utils.data.Dataset):
    def __init__(self, part):
        self.x, self.y = part["image"], part["label"]

    def __len__(self):
        return self.x.shape[0]

    def __getitem__(self, i):
        return {"input": self.x[i], "target": self.y[i].long()}


# --------------------------------------------------------------------------- losses
def make_loss(name: str, *, grid=16, A: float = 0.3, B: float = 0.4, lam: float = 1.0,
              region_reduction: str = "mean", region_weight: float = 1.0):
    """Loss ``f(probabilities, labels) -> scalar`` for one of :data:`LOSSES`.

    ``probabilities``: ``N x C x spatial`` softmax output; ``labels``: ``N x spatial``
    integers. ``"baseline"`` is Eq. (9) of Chen et al. 2023 (Dice + ``lam`` CE);
    ``"baseline+rs"`` adds ``region_weight`` x the region-specific loss (Eq. (4),
    ``grid`` = DC), ``"baseline+ars"`` the adaptive one (Eqs. (6)-(8), weights in
    ``[A, A + B]``). ``"rs"``/``"ars"`` are the region terms alone.
    """
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {LOSSES}")
    rs_kw = dict(region_reduction=region_reduction)

    def rs(p, y):
        return _region.region_specific_loss(p, y, grid, **rs_kw)

    def ars(p, y):
        return _region.adaptive_region_specific_loss(p, y, grid, A, B, **rs_kw)

    table = {
        "ce": lambda p, y: _overlap.cross_entropy_loss(p, y),
        "dice": lambda p, y: _overlap.dice_loss(p, y),
        "baseline": lambda p, y: _overlap.dice_ce_loss(p, y, lam),
        "baseline+rs": lambda p, y: _overlap.dice_ce_loss(p, y, lam) + region_weight * rs(p, y),
        "baseline+ars": lambda p, y: _overlap.dice_ce_loss(p, y, lam) + region_weight * ars(p, y),
        "rs": rs,
        "ars": ars,
        "focal_tversky": lambda p, y: _overlap.focal_tversky_loss(p, y),
        "generalised_dice": lambda p, y: _overlap.generalized_dice_loss(p, y),
        "sensitivity_specificity": lambda p, y: _overlap.sensitivity_specificity_loss(p, y),
    }
    fn = table[name]
    fn.__name__ = name
    return fn


# --------------------------------------------------------------------------- metrics
def hard_dice(pred, labels, n_classes: int) -> float:
    """Mean Dice of the argmax prediction over organs (classes ``1..C-1``) present in each element (torch)."""
    lab = pred.argmax(1) if pred.dim() == labels.dim() + 1 else pred
    cls = torch.arange(1, n_classes, device=labels.device).view(1, -1, *([1] * (labels.dim() - 1)))
    p = (lab.unsqueeze(1) == cls).flatten(2)
    g = (labels.unsqueeze(1) == cls).flatten(2)
    inter = (p & g).sum(-1).float()
    tot = (p.sum(-1) + g.sum(-1)).float()
    present = g.any(-1)
    d = 2 * inter / tot.clamp_min(1)
    return float(d[present].mean()) if bool(present.any()) else float("nan")


def case_metrics(pred_labels, labels, organs, spacing) -> dict:
    """Per-case, per-organ DSC, recall, precision, HD95 (mm) and ASD (mm), Eqs. (10)-(12) of Chen et al. 2023.

    Parameters
    ----------
    pred_labels, labels : array_like, ``N x spatial`` integers
    organs : sequence of str
        Names of labels ``1..K``.
    spacing : array_like, ``N x dims`` or ``dims``
        Voxel size in mm.

    Returns
    -------
    dict
        ``{"dsc"|"recall"|"precision"|"hd95"|"asd": N x K float arrays, "missed": N x K bool, "organs": organs}``.
    """
    p = np.asarray(pred_labels.cpu() if torch.is_tensor(pred_labels) else pred_labels)
    g = np.asarray(labels.cpu() if torch.is_tensor(labels) else labels)
    if p.shape != g.shape:
        raise ValueError(f"prediction {p.shape} and ground truth {g.shape} must have the same shape")
    n, K = g.shape[0], len(organs)
    sp = np.broadcast_to(np.asarray(spacing, float), (n, g.ndim - 1))
    out = {k: np.full((n, K), np.nan) for k in ("dsc", "recall", "precision", "hd95", "asd")}
    out["missed"] = np.zeros((n, K), bool)
    for i in range(n):  # cases x organs: surface distances need scipy per mask
        for k in range(K):
            gm, pm = g[i] == k + 1, p[i] == k + 1
            if not gm.any():
                continue
            out["dsc"][i, k] = M.dice(pm, gm)
            out["recall"][i, k] = M.recall(pm, gm)
            out["precision"][i, k] = M.precision(pm, gm)
            out["hd95"][i, k] = M.hausdorff(pm, gm, sp[i], percentile=95)  # NaN for a missed organ
            if pm.any():
                out["asd"][i, k] = M.average_surface_distance(pm, gm, sp[i])
            else:
                out["missed"][i, k] = True
    out["organs"] = tuple(organs)
    return out


def organ_mean(metric: np.ndarray) -> np.ndarray:
    """Organ-averaged value per case (NaN entries ignored)."""
    m = np.asarray(metric, float)
    with np.errstate(invalid="ignore"):
        cnt = np.isfinite(m).sum(1)
        return np.where(cnt > 0, np.nansum(m, 1) / np.maximum(cnt, 1), np.nan)


# --------------------------------------------------------------------------- training
@torch.no_grad()
def predict_labels(model, images, batch_size: int = 8, device=None) -> torch.Tensor:
    """Argmax labels ``N x spatial`` (uint8, CPU) of a model on ``N x 1 x spatial`` images."""
    device = device or next(model.parameters()).device
    model.eval()
    outs = [model(images[i:i + batch_size].to(device)).argmax(1).to(torch.uint8).cpu()
            for i in range(0, images.shape[0], batch_size)]
    return torch.cat(outs)


def train_one(loss, data: dict, *, epochs: int = 20, width: int = 8, depth: int = 3, dropout: float = 0.1,
              lr: float = 3e-3, batch_size: int = 8, seed: int = 0, device=None, progress: bool = False,
              label: str | None = None, **loss_kw) -> dict:
    """Train a U-Net (batch norm, dropout, softmax output) with one loss and evaluate it on the test cases.

    Parameters
    ----------
    loss : str or callable
        A name of :data:`LOSSES` (built by :func:`make_loss` with ``loss_kw``) or ``f(probs, labels)``.
    data : dict
        From :func:`phantom_data` or :func:`openkbp_data`.
    epochs, width, depth, dropout, lr, batch_size, seed
        Training set-up (Adam, learning rate divided by 10 after 5 epochs without
        validation improvement; the weights with the lowest validation loss are kept).

    Returns
    -------
    dict
        ``label``, ``history`` (per-epoch records with ``val_dsc``), ``metrics``
        (:func:`case_metrics` on the test split), ``pred`` (test labels) and ``seconds``.
    """
    fn = make_loss(loss, **loss_kw) if isinstance(loss, str) else loss
    if not callable(fn):
        raise TypeError(f"loss must be a loss name or a callable, got {type(loss).__name__}")
    organs = data["organs"]
    C = len(organs) + 1
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # the model's initial weights
    model = UNet(1, C, dims=data["dims"], depth=depth, width=width, norm="batch", dropout=dropout,
                 final_activation="softmax")
    train = torch.utils.data.DataLoader(_Pairs(data["train"]), batch_size=batch_size, shuffle=True, generator=gen)
    val = torch.utils.data.DataLoader(_Pairs(data["val"]), batch_size=batch_size)
    t0 = time.perf_counter()
    trainer = Trainer(model, lambda p, b: fn(p, b["target"]), lr=lr, seed=seed, device=device, progress=progress,
                      metrics={"val_dsc": lambda p, b: hard_dice(p, b["target"], C)})
    history = trainer.fit(train, epochs, val)
    pred = predict_labels(trainer.model, data["test"]["image"], batch_size, trainer.device)
    seconds = time.perf_counter() - t0
    mets = case_metrics(pred, data["test"]["label"], organs, data["test"]["spacing"])
    return {"label": label or (loss if isinstance(loss, str) else getattr(fn, "__name__", "loss")),
            "history": history.records, "metrics": mets, "pred": pred.numpy(), "seconds": seconds}


# --------------------------------------------------------------------------- tables
def summary_rows(results, metric_names=("dsc", "recall", "precision", "hd95", "asd")) -> list:
    """One row per run: mean +- SD over test cases of each organ-averaged metric, per-organ mean DSC."""
    rows = []
    for r in results:
        m = r["metrics"]
        row = {"loss": r["label"]}
        for k in metric_names:
            v = organ_mean(m[k])
            row[k] = (float(np.nanmean(v)), float(np.nanstd(v, ddof=1)) if np.isfinite(v).sum() > 1 else 0.0)
        for j, o in enumerate(m["organs"]):
            row[o] = float(np.nanmean(m["dsc"][:, j]))
        row["missed"] = int(m["missed"].sum())
        rows.append(row)
    return rows


def wilcoxon_rows(results, reference: str, metric: str = "dsc") -> list:
    """Paired Wilcoxon tests of the organ-averaged ``metric`` per test case, every run vs ``reference``."""
    by = {r["label"]: r for r in results}
    if reference not in by:
        raise ValueError(f"reference {reference!r} not among the runs {list(by)}")
    ref = organ_mean(by[reference]["metrics"][metric])
    rows = []
    for r in results:
        if r["label"] == reference:
            continue
        s = wilcoxon_summary(organ_mean(r["metrics"][metric]), ref, names=("run", "ref"))
        rows.append({"loss": r["label"], "vs": reference, "mean": s["run_mean"], "ref mean": s["ref_mean"],
                     "median diff": s["median_diff"], "p": s["p"], "n": s["n"]})
    return rows


# --------------------------------------------------------------------------- figures
def gradient_map(loss_fn, probs, target) -> np.ndarray:
    """Gradient of ``loss_fn(probs, target)`` with respect to the probabilities (autograd), as NumPy."""
    p = probs.detach().clone().requires_grad_(True)
    loss_fn(p, target).backward()
    return p.grad.detach().cpu().numpy()
