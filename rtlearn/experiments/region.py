"""Experiment behind the region-specific losses chapter (Chen et al., TPAMI 2023).

Multi-organ segmentation with a U-Net (batch norm, dropout, softmax output)
trained with one loss per arm, evaluated per test case and per organ. The
chapter's shape (see :mod:`rtlearn.study`):

* :data:`PAPER` -- the numbers the paper's text states; :data:`CLAIMS` -- its
  claims, tested by :func:`rtlearn.metrics.stats.judge`;
* :class:`Config` / :func:`default_config` -- every size, per profile;
* :func:`load_data` -- phantom head-and-neck CT slices (or OpenKBP volumes),
  CT windowed to ``[-1, 1]``, integer label maps (0 = background, ``k`` = organ
  ``k``), split into ``train`` / ``val`` / ``test``;
* :data:`ARMS` -- arm name -> loss object (``torch.nn`` modules of
  :mod:`rtlearn.losses`: CE, Dice, Baseline = Dice + CE (Eq. (9)),
  Baseline + RS (Eq. (4)), Baseline + ARS (Eqs. (6)-(8)), and the focal Tversky,
  generalised Dice and sensitivity-specificity losses of the paper's Table 5);
* :func:`run` -- trains every arm of a config for one seed with
  :func:`rtlearn.train.fit` and returns per-case test metrics (DSC, recall,
  precision, HD95, ASD; Eqs. (10)-(12) of Chen et al. 2023), including the DSC
  of the same run's weights after ``early_epoch`` epochs (learning speed, the
  paper's Figs. 3-4);
* :func:`tables` and the ``plot_*`` functions -- the chapter's tables and
  figures from a :class:`rtlearn.study.Study`.

Choices (arguments, documented here):

* The region term is added to the baseline with ``region_reduction="mean"``
  (mean over the counted sub-regions) rather than the sum that Eq. (4) writes:
  with a sum the term's weight relative to the baseline grows with the number of
  sub-regions (``DC**dims``), so a DC ablation would mix the effect of the
  partition with that of the loss scale.
* Every loss includes the background class (the paper's ``C`` counts it).
* Organs that overlap get the label of the first organ in ``organs``.
* Metrics of an organ absent from a case's ground truth are NaN (not counted);
  an organ present but not predicted has DSC = recall = precision = 0 and NaN
  surface distances (undefined; the empty-mask convention of
  :func:`rtlearn.metrics.hausdorff`), counted in ``"missed"``.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import metrics as M
from ..config import check_overrides, check_profile, get_device, profile as active_profile
from ..data.openkbp import dataset as okbp
from ..data.openkbp.format import spacing_zyx, to_zyx
from ..losses import overlap as _overlap
from ..losses import region as _region
from ..metrics.stats import Claim, format_comparison, judge, seed_summary
from ..models.unet import UNet
from ..phantom import PhantomSegmentationDataset
from ..tables import Markdown, markdown_table
from ..train import fit, seeded

__all__ = [
    "ORGANS_PHANTOM", "ORGANS_OPENKBP", "ORGANS_OPENKBP_2D", "PAPER", "ARMS", "MAIN_ARMS", "OTHER_ARMS", "SUM_ARMS", "DC_ARMS", "CLAIMS", "SUM_CLAIMS", "TINY", "Config",
    "default_config", "load_data", "arm_loss", "run", "merge_records", "labels_from_masks", "window_ct",
    "phantom_data", "openkbp_data", "openkbp_slices", "AUGMENTATION", "mirror_classes", "augment", "hard_dice", "predict_labels", "case_metrics", "organ_mean", "tables",
    "plot_case", "learning_curves", "plot_learning_curves", "dc_ablation", "plot_predictions", "plot_ablation", "gradient_map",
]

#: PDDCA's nine organs (the set of Chen et al. 2023's public head-and-neck data), drawn in the 2D
#: head-and-neck phantom slice: large, bony (mandible) or weakly contrasted (parotids, brainstem) organs
#: and small ones of a few tens of HU contrast (optic chiasm and nerves, submandibular glands)
ORGANS_PHANTOM = ("Brainstem", "OpticChiasm", "Mandible", "OpticNerve_L", "OpticNerve_R", "LeftParotid",
                  "RightParotid", "Submandibular_L", "Submandibular_R")
#: OpenKBP's seven organs at risk (full profile)
ORGANS_OPENKBP = ("Brainstem", "SpinalCord", "RightParotid", "LeftParotid", "Esophagus", "Larynx", "Mandible")
#: The five of them contoured for most OpenKBP patients (the 2D study's classes): the larynx and the
#: oesophagus are contoured for fewer than half of the patients with a CT, and an organ that is present in the
#: CT but not contoured would be taught as background
ORGANS_OPENKBP_2D = ("Brainstem", "SpinalCord", "RightParotid", "LeftParotid", "Mandible")

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
_PDDCA = PAPER["PDDCA mean DSC"]


# --------------------------------------------------------------------------- arms: name -> loss object
def _baseline(cfg):
    return _overlap.DiceCELoss(cfg.lam, batch=cfg.batch_dice)


def _rs(cfg, grid=None, reduction=None):
    return _region.RegionSpecificLoss(cfg.grid if grid is None else grid,
                                      region_reduction=reduction or cfg.region_reduction)


def _ars(cfg, grid=None, reduction=None):
    return _region.AdaptiveRegionSpecificLoss(cfg.grid if grid is None else grid, cfg.A, cfg.B,
                                              region_reduction=reduction or cfg.region_reduction)


def _plus(region_term):
    return lambda cfg: _region.SumOfLosses(_baseline(cfg), region_term(cfg), weights=(1.0, cfg.region_weight))


#: Arm name -> ``factory(cfg) -> loss module`` (``loss(probabilities, labels) -> scalar``).
ARMS = {
    "CE": lambda cfg: _overlap.CrossEntropyLoss(),
    "Dice": lambda cfg: _overlap.DiceLoss(),
    "Baseline": _baseline,                                                    # Eq. (9): Dice + lam CE
    "Baseline+RS": _plus(_rs),                                                # Eq. (4), mean over blocks
    "Baseline+ARS": _plus(_ars),                                              # Eqs. (6)-(8)
    # Eq. (4) as printed: the sum over the DC**dims blocks instead of their mean
    "Baseline+RS (sum)": _plus(lambda cfg: _rs(cfg, reduction="sum")),
    "Baseline+ARS (sum)": _plus(lambda cfg: _ars(cfg, reduction="sum")),
    # the division-coefficient ablation (the paper's Fig. 7): B + RS with DC fixed by the arm
    **{f"Baseline+RS (DC {dc})": _plus(lambda cfg, dc=dc: _rs(cfg, grid=dc)) for dc in (1, 2, 4, 8)},
    "Focal Tversky": lambda cfg: _overlap.FocalTverskyLoss(),                 # Table 5 of the paper
    "Generalised Dice": lambda cfg: _overlap.GeneralizedDiceLoss(),
    "Sensitivity-specificity": lambda cfg: _overlap.SensitivitySpecificityLoss(),
}
#: The paper's main comparison (its Tables 1-4).
MAIN_ARMS = ("CE", "Dice", "Baseline", "Baseline+RS", "Baseline+ARS")
#: The other region-based losses of the paper's Table 5.
OTHER_ARMS = ("Focal Tversky", "Generalised Dice", "Sensitivity-specificity")
#: Eq. (4) summed over the blocks, as printed, against the mean we use.
SUM_ARMS = ("Baseline+RS (sum)", "Baseline+ARS (sum)")
#: B + RS at DC = 1, 2, 4, 8 (the main B + RS arm uses ``cfg.grid``).
DC_ARMS = tuple(f"Baseline+RS (DC {dc})" for dc in (1, 2, 4, 8))


def arm_loss(arm: str, cfg) -> torch.nn.Module:
    """The loss object of ``arm`` (a key of :data:`ARMS`) for the settings of ``cfg``."""
    if arm not in ARMS:
        raise ValueError(f"unknown arm {arm!r}; choose one of {tuple(ARMS)}")
    return ARMS[arm](cfg)


#: The paper's claims, stated before any of our numbers (differences B - A of per-case, organ-averaged values).
CLAIMS = (
    Claim("dsc", "Baseline", "Baseline+RS", "higher",
          "Adding the region-specific loss to the baseline raises the DSC",
          paper=round(_PDDCA["Baseline+RS"] - _PDDCA["Baseline"], 3)),
    Claim("dsc", "Baseline", "Baseline+ARS", "higher",
          "Adding the adaptive region-specific loss to the baseline raises the DSC",
          paper=round(_PDDCA["Baseline+ARS"] - _PDDCA["Baseline"], 3)),
    Claim("dsc", "Baseline+RS", "Baseline+ARS", "higher",
          "The adaptive region-specific loss beats the plain region-specific loss",
          paper=round(_PDDCA["Baseline+ARS"] - _PDDCA["Baseline+RS"], 3)),
    Claim("dsc_early", "Baseline", "Baseline+RS", "higher",
          "With the region-specific loss the network learns faster (higher DSC early in training)"),
    Claim("dsc_early", "Baseline", "Baseline+ARS", "higher",
          "With the adaptive region-specific loss the network learns faster (higher DSC early in training)"),
    Claim("dsc_auc", "Baseline", "Baseline+RS", "higher",
          "With the region-specific loss the area under the early learning curve is larger"),
    Claim("dsc_auc", "Baseline", "Baseline+ARS", "higher",
          "With the adaptive region-specific loss the area under the early learning curve is larger"),
)


#: Why the region term is averaged over the sub-regions rather than summed as Eq. (4) prints: the sum weighs the
#: term ``DC**dims`` times more against the baseline (and the background class's many blocks with it), which we
#: expect to slow learning and to cost accuracy. Judged as a family of its own on the phantom study.
SUM_CLAIMS = (
    Claim("dsc", "Baseline+RS (sum)", "Baseline+RS", "higher",
          "The mean over sub-regions gives a higher DSC than Eq. (4)'s sum (B + RS)"),
    Claim("dsc", "Baseline+ARS (sum)", "Baseline+ARS", "higher",
          "The mean over sub-regions gives a higher DSC than the sum (B + ARS)"),
    Claim("dsc_auc", "Baseline+RS (sum)", "Baseline+RS", "higher",
          "The mean over sub-regions learns faster than the sum (B + RS)"),
    Claim("dsc_auc", "Baseline+ARS (sum)", "Baseline+ARS", "higher",
          "The mean over sub-regions learns faster than the sum (B + ARS)"),
)


# --------------------------------------------------------------------------- configuration
SOURCES = ("phantom", "openkbp")


@dataclass(frozen=True)
class Config:
    """Every size of one run of the experiment (see :func:`default_config`).

    Data: ``source`` ``"phantom"`` (``n_train + n_val + n_test`` seeded phantom
    head-and-neck cases of ``data_seed``, split in this order, ``dims``-D,
    ``shape`` pixels of ``spacing`` mm, with the phantom's own CT noise of 15 HU
    and partial-volume blur, plus ``noise_hu`` of added Gaussian noise;
    ``organs``: the classes, default PDDCA's nine organs :data:`ORGANS_PHANTOM`;
    CT windowed to ``window``, default the paper's ``[-200, 400]`` HU, in which
    mandible, vertebrae and teeth all saturate)
    or ``"openkbp"`` (the first patients with a CT of OpenKBP's own splits;
    ``None`` = all; ``shape``, ``spacing``, ``noise_hu`` and ``data_seed`` are then
    unused; with ``dims=2``: every axial slice of each patient between the
    first and last slice of its organs, ``z_margin`` slices added on each side,
    cropped in-plane to ``crop`` x ``crop`` voxels around the body's centre, every
    ``slice_step``-th slice for training and validation, all of them for the
    test volumes, see :func:`openkbp_slices`; ``root``: the prepared dataset,
    default :func:`rtlearn.data.openkbp.find_openkbp`). Losses: ``arms`` (keys of :data:`ARMS`); ``lam`` weights the
    CE of the baseline; the region terms use ``grid`` (DC), ``A``, ``B``,
    ``region_reduction`` and ``region_weight``. Training: a U-Net of ``depth``
    levels and ``width`` channels, Adam with ``lr``, learning rate divided by 10
    after ``plateau_patience`` epochs without validation improvement, at most
    ``epochs`` epochs, stopped after ``early_stopping`` epochs without
    improvement (``None``: never), the weights with the lowest validation loss
    restored; ``augment``: the paper's random flips, shifts and zooms of the
    training images (:data:`AUGMENTATION`); ``batch_dice``: the baseline's Dice sums
    run over the whole batch of slices, classes absent from it skipped (the 2D
    stand-in for the paper's whole-volume Dice, see :func:`rtlearn.losses.dice_ce_loss`). ``early_epoch``: the epoch whose weights give ``dsc_early``; ``dsc_auc``
    averages the test DSC of the weights after epochs ``1 .. early_epoch``.
    """

    source: str = "phantom"
    n_train: int | None = 48
    n_val: int | None = 8
    n_test: int | None = 24
    dims: int = 2
    shape: tuple | None = (64, 64)
    spacing: float | tuple | None = 3.2
    noise_hu: float = 0.0
    window: tuple = (-200.0, 400.0)
    organs: tuple = ORGANS_PHANTOM
    data_seed: int = 0
    arms: tuple = MAIN_ARMS
    lam: float = 1.0
    grid: int = 16
    A: float = 0.3
    B: float = 0.4
    region_reduction: str = "mean"
    region_weight: float = 1.0
    width: int = 8
    depth: int = 3
    dropout: float = 0.1
    epochs: int = 40
    batch_size: int = 4
    lr: float = 3e-3
    plateau_patience: int = 5
    early_stopping: int | None = None
    early_epoch: int = 10
    crop: int = 64
    slice_step: int = 1
    z_margin: int = 2
    root: str | None = None
    augment: bool = True
    batch_dice: bool = False
    device: str | None = None

    def __post_init__(self):
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {self.source!r}")
        if self.dims not in (2, 3):
            raise ValueError(f"dims must be 2 or 3, got {self.dims!r}")
        for name in ("width", "depth", "epochs", "batch_size", "early_epoch", "plateau_patience", "grid", "crop",
                     "slice_step"):
            _positive_int(getattr(self, name), name)
        for name in ("n_train", "n_val", "n_test"):
            v = getattr(self, name)
            if v is not None or self.source == "phantom":  # None (every patient) only for OpenKBP
                _positive_int(v, name)
        if self.source == "phantom" and (self.shape is None or self.spacing is None):
            raise ValueError("phantom data need a shape and a spacing")
        if self.n_test is not None and self.n_test < 2:
            raise ValueError(f"n_test must be >= 2 for paired tests, got {self.n_test}")
        if self.early_stopping is not None:
            _positive_int(self.early_stopping, "early_stopping")
        if isinstance(self.z_margin, bool) or not isinstance(self.z_margin, (int, np.integer)) or self.z_margin < 0:
            raise ValueError(f"z_margin must be an int >= 0, got {self.z_margin!r}")
        if self.crop > 128:
            raise ValueError(f"crop must be at most OpenKBP's 128 voxels, got {self.crop}")
        if self.early_epoch > self.epochs:
            raise ValueError(f"early_epoch ({self.early_epoch}) must not exceed epochs ({self.epochs})")
        arms = tuple(self.arms)
        bad = [a for a in arms if a not in ARMS]
        if not arms or bad or len(set(arms)) != len(arms):
            raise ValueError(f"arms must be distinct names of {tuple(ARMS)}, got {self.arms!r}")
        object.__setattr__(self, "arms", arms)
        object.__setattr__(self, "organs", tuple(self.organs))
        if self.shape is not None:
            object.__setattr__(self, "shape", tuple(self.shape))
        object.__setattr__(self, "window", tuple(float(w) for w in self.window))
        if not self.organs:
            raise ValueError("organs must name at least one structure")
        for name in ("lr", "lam", "A", "B", "region_weight", "noise_hu", "dropout"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if self.region_reduction not in ("mean", "sum"):
            raise ValueError(f"region_reduction must be 'mean' or 'sum', got {self.region_reduction!r}")


def _positive_int(v, name):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{name} must be a positive int, got {v!r}")


_FULL_PHANTOM = dict(n_train=160, n_val=20, n_test=40, dims=3, shape=(64, 128, 128), spacing=(3.0, 2.0, 2.0),
                     organs=ORGANS_OPENKBP, noise_hu=40.0)


def default_config(profile: str | None = None, **overrides) -> Config:
    """The experiment's sizes for ``profile`` (default: :func:`rtlearn.config.profile`), with ``overrides``.

    * ``quick`` (a demonstration, about 2.5 min for the five main arms on one
      CPU thread): 48 / 8 / 24 phantom head-and-neck CT slices of 64 x 64 pixels
      (3.2 mm; the phantom's own 15 HU of noise and partial-volume edges, no
      added noise) with PDDCA's nine organs :data:`ORGANS_PHANTOM`, a 3-level
      U-Net of width 8, 40 epochs, batch 4, the five arms CE, Dice, Baseline,
      Baseline + RS, Baseline + ARS.
    * ``study`` (recorded by ``python -m rtlearn.study region --profile study
      --seeds 0-2``; 22-25 min per seed on one thread of a 2-core CPU shared
      with three other studies): the paper's three arms Baseline, Baseline + RS and
      Baseline + ARS, and B + RS and B + ARS with Eq. (4)'s sum over the blocks
      (:data:`SUM_ARMS`), on 160 / 24 / 40 slices of the same kind (the same nine
      organs, no added noise), at most 100
      epochs with early stopping after 10 epochs without improvement of the
      validation loss (the best weights restored), ``dsc_early`` after 5 epochs
      (200 optimisation steps, while the baseline is still learning) and
      ``dsc_auc`` over epochs 1-5. The OpenKBP study is
      :mod:`rtlearn.experiments.region_openkbp`.
    * ``full`` (GPU): OpenKBP's CT volumes with its seven organs at risk (every
      patient with a CT), a 4-level U-Net of width 16, 60 epochs, batch 2; with
      ``source="phantom"`` 160 / 20 / 40 3D phantoms of 64 x 128 x 128 voxels
      with OpenKBP's organs and 40 HU of added noise.

    Raises
    ------
    ValueError
        For an unknown profile, an unknown override name or a bad value.
    """
    name = active_profile() if profile is None else check_profile(profile)
    check_overrides(Config, overrides)
    if name == "quick":
        base = {}
    elif name == "study":
        base = dict(n_train=160, n_val=24, n_test=40, arms=("Baseline", "Baseline+RS", "Baseline+ARS", *SUM_ARMS),
                    epochs=100, early_stopping=10, early_epoch=5)
    else:
        train = dict(epochs=60, width=16, depth=4, batch_size=2, lr=1e-3)
        if overrides.get("source", "openkbp") == "openkbp":
            base = dict(source="openkbp", n_train=None, n_val=None, n_test=None, dims=3, shape=None, spacing=None,
                        noise_hu=0.0, window=(-200.0, 400.0), organs=ORGANS_OPENKBP, **train)
        else:
            base = dict(_FULL_PHANTOM, **train)
    return Config(**{**base, **overrides})


#: Overrides that make ``default_config("study", **TINY)`` run one seed in a few seconds.
TINY = dict(n_train=4, n_val=2, n_test=3, shape=(32, 32), spacing=8.0, epochs=2, early_epoch=1, width=4,
            depth=2, batch_size=2, grid=4)


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
                  "spacing": np.asarray(spacing[a:b], np.float64), "cases": list(range(a, b))}
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
    (mm), "cases": case indices}, "organs": names, "dims": dims}``.

    ``noise_hu`` adds seeded Gaussian noise (standard deviation in HU) to the
    CT before windowing, on top of the phantom's own 15 HU (a clinical CT's
    noise), for a harder (noisier, lower-dose-like) task with less clear organ
    boundaries.
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
                    "spacing": np.asarray(sps, np.float64), "patients": ids, "cases": ids}
    return out


def _crop_box(centre: float, size: int, n: int) -> tuple[int, int]:
    start = int(round(centre - size / 2))
    start = min(max(start, 0), n - size)
    return start, start + size


def openkbp_slices(n_train=None, n_val=None, n_test=None, *, organs=ORGANS_OPENKBP_2D, window=(-200.0, 400.0),
                   crop: int = 64, slice_step: int = 1, z_margin: int = 2, root=None, progress: bool = True) -> dict:
    """OpenKBP CT as 2D axial slices for multi-organ segmentation (the OpenKBP study of the chapter).

    Per patient with a CT, taken in order from OpenKBP's own splits (``None``: every such patient):

    * the axial slices from the first to the last slice that holds one of ``organs``,
      ``z_margin`` slices added on each side (clipped to the volume): the block a
      localisation step would hand to the segmentation network;
    * cropped in-plane to ``crop`` x ``crop`` voxels (the native, patient-specific
      voxel size, 2.7-5.4 mm) centred on the body (CT above -300 HU) of those slices:
      no ground truth is used to place the crop;
    * CT windowed to ``window`` (default the paper's ``[-200, 400]`` HU) and rescaled to
      ``[-1, 1]``; labels from the organ masks (:func:`labels_from_masks`).

    Training and validation patients must have every organ of ``organs`` contoured
    (an organ visible in the CT but not contoured would be taught as background);
    the others are listed in ``"skipped_incomplete"``. Training and validation
    keep every ``slice_step``-th slice; a test patient keeps every slice, so that
    its prediction is a volume, and is used whatever it has contoured (an organ
    that is not contoured is not scored: its DSC is NaN). Patients without a CT
    are listed in ``"skipped_no_ct"``.

    Returns
    -------
    dict
        ``{"train"|"val": {"image": S x 1 x crop x crop float32, "label": S x crop x crop
        uint8, "spacing": S x 2 (mm), "cases": patient of each slice}, "test": the same
        with every slice of each patient plus ``"groups"`` (the ``[start, stop)`` slices of
        each patient), ``"volume_spacing"`` (patients x 3, z/y/x mm), ``"patients"`` and
        ``"cases"`` (patient ids), "organs", "dims": 2, "crop_kept": the share of organ
        voxels inside the crop, per split}``.
    """
    _check_counts(*(1 if v is None else v for v in (n_train, n_val, n_test)))
    organs = tuple(organs)
    if not organs:
        raise ValueError("organs must name at least one structure")
    for name, v, low in (("crop", crop, 1), ("slice_step", slice_step, 1), ("z_margin", z_margin, 0)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
            raise ValueError(f"{name} must be an int >= {low}, got {v!r}")
    if crop > 128:
        raise ValueError(f"crop must be at most OpenKBP's 128 voxels, got {crop}")
    out = {"organs": organs, "dims": 2, "skipped_no_ct": [], "skipped_incomplete": [], "crop_kept": {}}
    for key, split, n in (("train", "train", n_train), ("val", "validation", n_val), ("test", "test", n_test)):
        imgs, labs, sps, case_of, groups, vol_sp, ids = [], [], [], [], [], [], []
        kept = total = 0
        start = 0
        for pid in tqdm(okbp.list_patients(split, root), desc=f"OpenKBP {split}", disable=not progress):
            if n is not None and len(ids) == n:
                break
            a = okbp.load_patient(pid, split, root)
            if "ct" not in a:
                out["skipped_no_ct"].append(pid)
                continue
            present = [o in a and bool(a[o].any()) for o in organs]
            if key != "test" and not all(present):
                out["skipped_incomplete"].append(pid)
                continue
            if not any(present):
                out["skipped_incomplete"].append(pid)
                continue
            ct = to_zyx(a["ct"]).astype(np.float32) - 1024.0  # stored as HU + 1024
            masks = np.stack([to_zyx(a[o]) if p else np.zeros(ct.shape, bool) for o, p in zip(organs, present)])
            union = masks.any(0)
            z = np.flatnonzero(union.any((1, 2)))
            z0, z1 = max(int(z[0]) - z_margin, 0), min(int(z[-1]) + 1 + z_margin, ct.shape[0])
            body = ct[z0:z1] > -300.0
            _, yy, xx = np.nonzero(body)
            (y0, y1), (x0, x1) = (_crop_box(c, crop, m) for c, m in ((yy.mean(), ct.shape[1]), (xx.mean(), ct.shape[2])))
            step = 1 if key == "test" else slice_step
            zs = np.arange(z0, z1, step)
            lab = labels_from_masks(masks[:, zs, y0:y1, x0:x1])
            kept += int(union[z0:z1, y0:y1, x0:x1].sum())
            total += int(union.sum())
            sp = spacing_zyx(a["voxel_dimensions"])
            imgs.append(window_ct(ct[zs, y0:y1, x0:x1], window))
            labs.append(lab)
            sps.append(np.tile(np.asarray(sp[1:], np.float64), (len(zs), 1)))
            case_of += [pid] * len(zs)
            groups.append((start, start + len(zs)))
            start += len(zs)
            vol_sp.append(sp)
            ids.append(pid)
        if not ids or (n is not None and len(ids) < n):
            raise ValueError(f"only {len(ids)} usable {split} patients (with a CT"
                             f"{'' if key == 'test' else ' and every organ contoured'}), {n} requested")
        part = {"image": torch.from_numpy(np.concatenate(imgs)[:, None]),
                "label": torch.from_numpy(np.concatenate(labs)), "spacing": np.concatenate(sps)}
        if key == "test":
            part.update(groups=groups, volume_spacing=np.asarray(vol_sp, np.float64), patients=ids, cases=ids)
        else:
            part.update(cases=case_of, patients=ids)
        out[key] = part
        out["crop_kept"][key] = kept / max(total, 1)
    return out


def load_data(cfg: Config, progress: bool = False) -> dict:
    """The data of ``cfg``: :func:`phantom_data` or :func:`openkbp_data` (fixed by ``cfg``, not by the seed)."""
    if cfg.source == "openkbp" and cfg.dims == 2:
        return openkbp_slices(cfg.n_train, cfg.n_val, cfg.n_test, organs=cfg.organs, window=cfg.window,
                              crop=cfg.crop, slice_step=cfg.slice_step, z_margin=cfg.z_margin, root=cfg.root,
                              progress=progress)
    if cfg.source == "openkbp":
        return openkbp_data(cfg.n_train, cfg.n_val, cfg.n_test, organs=cfg.organs, window=cfg.window,
                            root=cfg.root, progress=progress)
    return phantom_data(cfg.n_train, cfg.n_val, cfg.n_test, organs=cfg.organs, dims=cfg.dims, shape=cfg.shape,
                        spacing=cfg.spacing, seed=cfg.data_seed, window=cfg.window, noise_hu=cfg.noise_hu,
                        progress=progress)


class _Pairs(torch.utils.data.Dataset):
    def __init__(self, part):
        self.x, self.y = part["image"], part["label"]

    def __len__(self):
        return self.x.shape[0]

    def __getitem__(self, i):
        return {"input": self.x[i], "target": self.y[i].long()}


#: On-the-fly augmentation of the training images (Chen et al. 2023, Sec. 4.1: "random flipping, translation,
#: and scaling"; the paper gives no magnitudes, these are ours): a left-right flip with probability ``flip``
#: (left and right organs swap labels), a shift of up to ``translation`` of the image size per axis, a zoom by a
#: factor in ``[1 - scale, 1 + scale]``.
AUGMENTATION = {"flip": 0.5, "translation": 0.1, "scale": 0.1}


def mirror_classes(organs) -> list:
    """Label of each class after a left-right flip: 0 (background) stays, a left organ becomes its right partner.

    Partners are names that differ only in ``Left``/``Right`` or a ``_L``/``_R`` suffix; an organ without a
    partner keeps its label.
    """
    organs = list(organs)
    out = [0]
    for o in organs:
        for a, b in (("Left", "Right"), ("Right", "Left")):
            if a in o and o.replace(a, b) in organs:
                o = o.replace(a, b)
                break
        else:
            for a, b in (("_L", "_R"), ("_R", "_L")):
                if o.endswith(a) and o[:-2] + b in organs:
                    o = o[:-2] + b
                    break
        out.append(organs.index(o) + 1)
    return out


def augment(image, label, flip: bool, zoom: float, shift, perm) -> tuple:
    """One image ``1 x spatial`` and its labels ``spatial`` flipped left-right (last axis), zoomed and shifted.

    ``zoom`` > 1 enlarges the anatomy; ``shift`` (one value per axis, last axis first, as fractions of the
    image size) moves it; the image is resampled bilinearly with air (-1) outside, the labels by nearest
    neighbour with background outside; ``perm`` (:func:`mirror_classes`) relabels left and right organs of a
    flipped image.
    """
    import torch.nn.functional as F

    dims = label.dim()
    theta = torch.zeros(1, dims, dims + 1, dtype=torch.float32)
    for k in range(dims):
        theta[0, k, k] = 1.0 / zoom
        theta[0, k, dims] = -2.0 * float(shift[k]) / zoom
    if flip:
        theta[0, 0, 0] = -theta[0, 0, 0]
    size = (1, 1, *label.shape)
    grid = F.affine_grid(theta, size, align_corners=False)
    img = F.grid_sample(image[None].float() + 1.0, grid, mode="bilinear", padding_mode="zeros",
                        align_corners=False)[0] - 1.0
    lab = F.grid_sample(label[None, None].float(), grid, mode="nearest", padding_mode="zeros",
                        align_corners=False)[0, 0].round().long()
    if flip:
        lab = torch.as_tensor(perm)[lab]
    return img, lab


class _Augmented(_Pairs):
    """Training pairs with :data:`AUGMENTATION`, drawn from a generator of their own (the same for every arm)."""

    def __init__(self, part, organs, seed: int):
        super().__init__(part)
        self.perm = mirror_classes(organs)
        self.gen = torch.Generator().manual_seed(int(seed) * 7919 + 17)

    def __getitem__(self, i):
        g, a = self.gen, AUGMENTATION
        dims = self.y.dim() - 1
        flip = bool(torch.rand((), generator=g) < a["flip"])
        zoom = 1.0 + a["scale"] * (2.0 * float(torch.rand((), generator=g)) - 1.0)
        shift = (a["translation"] * (2.0 * torch.rand(dims, generator=g) - 1.0)).tolist()
        img, lab = augment(self.x[i], self.y[i].long(), flip, zoom, shift, self.perm)
        return {"input": img, "target": lab}


class _SnapshotLoader(torch.utils.data.DataLoader):
    """Validation loader that keeps a copy of ``model``'s weights as each of its first ``epoch`` passes begins.

    The trainer validates right after each training epoch, so ``states[j]`` holds
    the weights after ``j + 1`` epochs of the run (fewer copies when early stopping
    ends the run sooner). Iterating it draws what a plain loader draws.
    """

    def __init__(self, dataset, model, epoch: int, **kwargs):
        super().__init__(dataset, **kwargs)
        self.model, self.epoch, self.states = model, epoch, []

    @property
    def state(self):
        """The weights after ``epoch`` epochs (or after the last epoch run, if fewer)."""
        return self.states[-1] if self.states else None

    def __iter__(self):
        if len(self.states) < self.epoch:
            self.states.append({k: v.detach().clone() for k, v in self.model.state_dict().items()})
        return super().__iter__()


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


def case_metrics(pred_labels, labels, organs, spacing, surface: bool = True) -> dict:
    """Per-case, per-organ DSC, recall, precision, HD95 (mm) and ASD (mm), Eqs. (10)-(12) of Chen et al. 2023.

    Parameters
    ----------
    pred_labels, labels : array_like, ``N x spatial`` integers
    organs : sequence of str
        Names of labels ``1..K``.
    spacing : array_like, ``N x dims`` or ``dims``
        Voxel size in mm.
    surface : bool
        Compute HD95 and ASD (default True; False leaves them NaN, faster).

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
            if surface:
                out["hd95"][i, k] = M.hausdorff(pm, gm, sp[i], percentile=95)  # NaN for a missed organ
            if pm.any():
                if surface:
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


@torch.no_grad()
def predict_labels(model, images, batch_size: int = 8, device=None) -> torch.Tensor:
    """Argmax labels ``N x spatial`` (uint8, CPU) of a model on ``N x 1 x spatial`` images."""
    device = device or next(model.parameters()).device
    model.eval()
    outs = [model(images[i:i + batch_size].to(device)).argmax(1).to(torch.uint8).cpu()
            for i in range(0, images.shape[0], batch_size)]
    return torch.cat(outs)


# --------------------------------------------------------------------------- one seed
def _model(cfg, n_classes, dims):
    return UNet(1, n_classes, dims=dims, depth=cfg.depth, width=cfg.width, norm="batch", dropout=cfg.dropout,
                final_activation="softmax")


def _test_metrics(pred, test, organs, surface: bool = True) -> dict:
    """:func:`case_metrics` per test case: per image, or per patient volume when the test part has ``groups``."""
    if "groups" not in test:
        return case_metrics(pred, test["label"], organs, test["spacing"], surface=surface)
    lab = test["label"].numpy()
    parts = [case_metrics(pred[None, a:b], lab[None, a:b], organs, sp, surface=surface)
             for (a, b), sp in zip(test["groups"], test["volume_spacing"])]
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0] if k != "organs"}
    out["organs"] = tuple(organs)
    return out


def run(cfg: Config, seed: int, *, data=None, progress: bool = True) -> dict:
    """Train every arm of ``cfg`` for ``seed`` with :func:`rtlearn.train.fit`; evaluate on the test cases.

    Each arm starts from the same initial weights (built in :func:`rtlearn.train.seeded`
    with ``seed``) and sees the batches in the same order. A test case is an image, or a
    patient's volume of slices for the OpenKBP slices (:func:`openkbp_slices`). Per test
    case the record holds the organ-averaged ``dsc``, ``recall``, ``precision``, ``hd95``
    (mm), ``asd`` (mm), ``missed`` (number of organs present but not predicted),
    ``dsc_<organ>`` and ``hd95_<organ>`` per organ, and learning speed: ``dsc_early``, the
    organ-averaged DSC of the same run's weights after ``cfg.early_epoch`` epochs, and
    ``dsc_auc``, the mean of that DSC over the weights after epochs ``1 .. early_epoch``
    (the area under the case's early learning curve, divided by its length).

    Returns
    -------
    dict
        A run record (:func:`rtlearn.study.validate_record`) plus ``live``:
        ``{"models": {arm: model}, "pred": {arm: test labels}, "pred_early": ...}``.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    data = load_data(cfg) if data is None else data
    organs, test = data["organs"], data["test"]
    n_classes = len(organs) + 1
    device = torch.device(cfg.device) if cfg.device else get_device()
    metrics, history, seconds = {}, {}, {}
    live = {"models": {}, "pred": {}, "pred_early": {}}
    for arm in tqdm(cfg.arms, desc=f"arms (seed {seed})", disable=not progress):
        loss = arm_loss(arm, cfg)
        with seeded(seed):
            model = _model(cfg, n_classes, data["dims"])
        val = _SnapshotLoader(_Pairs(data["val"]), model, cfg.early_epoch, batch_size=cfg.batch_size)
        t0 = time.perf_counter()
        train = _Augmented(data["train"], organs, seed) if cfg.augment else _Pairs(data["train"])
        result = fit(model, loss, train, val=val, epochs=cfg.epochs, batch_size=cfg.batch_size,
                     seed=seed, lr=cfg.lr, plateau_patience=cfg.plateau_patience,
                     early_stopping=cfg.early_stopping, device=device, progress=False,
                     metrics={"val_dsc": lambda p, b: hard_dice(p, b["target"], n_classes)})
        pred = predict_labels(result.model, test["image"], cfg.batch_size, device)
        m = _test_metrics(pred.numpy(), test, organs)
        early_dsc = []
        snapshot = copy.deepcopy(result.model)
        for state in val.states:  # the learning curve of every test case over the first epochs
            snapshot.load_state_dict(state)
            pred_early = predict_labels(snapshot, test["image"], cfg.batch_size, device)
            early_dsc.append(organ_mean(_test_metrics(pred_early.numpy(), test, organs, surface=False)["dsc"]))
        seconds[arm] = time.perf_counter() - t0
        per_case = {k: organ_mean(m[k]) for k in ("dsc", "recall", "precision", "hd95", "asd")}
        per_case["missed"] = m["missed"].sum(1).astype(float)
        per_case["dsc_early"] = early_dsc[-1]
        per_case["dsc_auc"] = np.mean(early_dsc, 0)
        per_case.update({f"dsc_{o}": m["dsc"][:, j] for j, o in enumerate(organs)})
        per_case.update({f"hd95_{o}": m["hd95"][:, j] for j, o in enumerate(organs)})
        metrics[arm] = {k: [float(x) for x in v] for k, v in per_case.items()}
        history[arm] = result.history.records
        live["models"][arm], live["pred"][arm] = result.model, pred.numpy()
        live["pred_early"][arm] = pred_early.numpy()
    cases = [c if isinstance(c, str) else int(c) for c in test.get("cases", range(test["image"].shape[0]))]
    return {"cases": cases, "metrics": metrics, "history": history, "seconds": seconds, "live": live}


def merge_records(*records) -> dict:
    """One record with the arms of several records of the same seed and test cases (e.g. main + Table 5 arms)."""
    if not records:
        raise ValueError("give at least one record")
    out = {"cases": list(records[0]["cases"]), "metrics": {}, "history": {}, "seconds": {}}
    for r in records:
        if list(r["cases"]) != out["cases"]:
            raise ValueError("records to merge must have the same test cases")
        clash = set(r["metrics"]) & set(out["metrics"])
        if clash:
            raise ValueError(f"arms {sorted(clash)} appear in more than one record")
        for key in ("metrics", "history", "seconds"):
            out[key].update(r[key])
    return out


# --------------------------------------------------------------------------- tables
def _over_seeds(study, metric, arm, reduce=np.nanmean):
    """Mean over seeds of each seed's ``reduce`` over the test cases, and the sd over seeds (NaN for one seed)."""
    per_seed = np.array([reduce(row) if np.isfinite(row).any() else np.nan for row in study.metric(metric, arm)])
    if not np.isfinite(per_seed).any():
        return math.nan, math.nan
    s = seed_summary(per_seed)
    return s["mean"], s["sd"]


def _cell(mean, sd, digits=3):
    if not math.isfinite(mean):
        return "n/a"
    return f"{mean:.{digits}f}" if not math.isfinite(sd) else f"{mean:.{digits}f} ± {sd:.{digits}f}"


def tables(study, *which, arms=None, claims=CLAIMS) -> Markdown:
    """The chapter's tables from a :class:`rtlearn.study.Study` (live or recorded), as Markdown.

    ``which`` names the tables (default all):

    * ``"organs"`` -- test DSC per organ and organ-averaged (the paper's Tables 1-2),
      with the paper's organ-averaged DSC on PDDCA and its in-house set;
    * ``"metrics"`` -- organ-averaged DSC, recall, precision, HD95, ASD, missed
      organs and the early-epoch DSC (Tables 3-4);
    * ``"claims"`` -- :data:`CLAIMS` judged (:func:`rtlearn.metrics.stats.judge`:
      seed-averaged per-case Wilcoxon tests, bootstrap CI, one Holm correction).

    Every number is the mean over test cases, then the mean ± sd over seeds (one
    seed: the mean only). ``arms`` restricts the first two tables.
    """
    which = which or ("organs", "hd95", "metrics", "claims")
    bad = [w for w in which if w not in ("organs", "hd95", "metrics", "claims")]
    if bad:
        raise ValueError(f"unknown table(s) {bad}; choose among 'organs', 'hd95', 'metrics', 'claims'")
    arms = list(study.arms if arms is None else arms)
    missing = [a for a in arms if a not in study.arms]
    if missing:
        raise ValueError(f"arms {missing} are not in the study (it has {study.arms})")
    organs = list(study.config["organs"])
    n = len(study.seeds)
    spread = f"mean over {len(study.cases)} test cases" + (f", ± sd over {n} seeds" if n > 1 else ", one seed")
    parts = []
    if "organs" in which:
        rows = []
        for a in arms:
            row = [a] + [_cell(*_over_seeds(study, f"dsc_{o}", a)) for o in organs]
            row += [_cell(*_over_seeds(study, "dsc", a))]
            row += [_fmt(PAPER["PDDCA mean DSC"].get(a)), _fmt(PAPER["in-house mean DSC"].get(a))]
            rows.append(row)
        parts.append(f"**Test DSC per organ and organ-averaged ({spread}); the paper's organ-averaged DSC**\n\n"
                     + markdown_table(["loss", *organs, "mean DSC", "paper PDDCA", "paper in-house"], rows))
    if "hd95" in which:
        rows = [[a] + [_cell(*_over_seeds(study, f"hd95_{o}", a), digits=1) for o in organs]
                + [_cell(*_over_seeds(study, "hd95", a), digits=1)] for a in arms]
        parts.append(f"**Test HD95 (mm) per organ and organ-averaged ({spread}; organs present but not predicted "
                     "are left out)**\n\n" + markdown_table(["loss", *organs, "mean HD95"], rows))
    if "metrics" in which:
        early = study.config["early_epoch"]
        rows = []
        for a in arms:
            row = [a] + [_cell(*_over_seeds(study, k, a)) for k in ("dsc", "recall", "precision")]
            row += [_cell(*_over_seeds(study, k, a), digits=2) for k in ("hd95", "asd")]
            row += [_cell(*_over_seeds(study, "missed", a, np.nansum), digits=1),
                    _cell(*_over_seeds(study, "dsc_early", a))]
            if "dsc_auc" in study.metric_names:
                row += [_cell(*_over_seeds(study, "dsc_auc", a))]
            rows.append(row)
        head = ["loss", "DSC", "recall", "precision", "HD95 (mm)", "ASD (mm)", "missed", f"DSC after {early} epochs",
                f"mean DSC over epochs 1-{early}"]
        parts.append(f"**Organ-averaged test metrics ({spread}; missed: organ-cases in all)**\n\n"
                     + markdown_table(head[:len(rows[0])], rows))
    if "claims" in which:
        usable = [c for c in claims if c.a in study.arms and c.b in study.arms]
        if usable:
            rows = judge(study, usable)
            for r in rows:
                r["b"] = f"{r['b']} ({r['metric']})"
            parts.append("**The paper's claims (differences B − A per test case, seed-averaged; paper: PDDCA)**"
                         "\n\n" + format_comparison(rows, digits=3))
    return Markdown("\n\n".join(parts))


def _fmt(v):
    return "n/a" if v is None else f"{v:.3f}"


# --------------------------------------------------------------------------- figures
def _case_slice(part, index, preds=()):
    """CT, labels (ground truth, then each of ``preds``) and in-plane spacing of the slice of test case ``index``
    with most organ voxels (a 2D case is its own slice; a 3D volume or a patient's slices are searched)."""
    if "groups" in part:
        a, b = part["groups"][index]
        ct = part["image"][a:b, 0].numpy()
        labs = [part["label"][a:b].numpy()] + [np.asarray(p)[a:b] for p in preds]
        sp = np.asarray(part["spacing"][a], float)
    else:
        ct = part["image"][index, 0].numpy()
        labs = [part["label"][index].numpy()] + [np.asarray(p)[index] for p in preds]
        sp = np.asarray(part["spacing"][index], float)
    if ct.ndim == 3:
        z = int((labs[0] > 0).sum((1, 2)).argmax())
        ct, labs = ct[z], [lb[z] for lb in labs]
        sp = sp[-2:]
    return ct, labs, sp


def plot_case(data, index: int = 0, ax=None):
    """A test case: windowed CT and organ contours in mm (3D data or a patient's slices: the slice with most organ voxels)."""
    import matplotlib.pyplot as plt

    from .. import plotting

    organs = data["organs"]
    colors = plotting.structure_colors(organs)
    ct, (lab,), sp = _case_slice(data["test"], index)
    if ax is None:
        _, ax = plt.subplots(figsize=(4.8, 4.2))
    im = ax.imshow(ct, cmap="gray", extent=plotting.image_extent(ct.shape, sp), vmin=-1, vmax=1)
    for k, o in enumerate(organs):
        plotting.draw_contour(ax, lab == k + 1, sp, color=colors[o], linewidth=1.2, label=o)
    ax.legend(loc="lower right", fontsize=7, frameon=True, facecolor="white", framealpha=0.85)
    ax.set(title="A test case: windowed CT and organs", xlabel="x (mm)", ylabel="y (mm)")
    ax.grid(False)
    ax.figure.colorbar(im, ax=ax, label="windowed CT -> [-1, 1]")
    return ax.figure


def learning_curves(study, arm, key: str = "val_dsc") -> np.ndarray:
    """``seeds x epochs`` array of a history entry (default the validation DSC); NaN after a run stopped."""
    curves = [[r[key] for r in h] for h in study.histories(arm)]
    grid = np.full((len(curves), max(len(c) for c in curves)), np.nan)
    for i, c in enumerate(curves):
        grid[i, :len(c)] = c
    return grid


def plot_learning_curves(study, arms=None, ax=None, band: bool = True):
    """Validation DSC per epoch (the paper's Figs. 3-4): mean over seeds, a band from the lowest to the highest
    seed (``band``), the end of the learning-speed window (``early_epoch``) marked."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6.4, 3.6))
    for arm in arms or study.arms:
        grid = learning_curves(study, arm)
        epochs = np.arange(1, grid.shape[1] + 1)
        with np.errstate(all="ignore"):
            mean = np.nanmean(grid, 0)  # column j exists because some run reached epoch j + 1
        main = arm in ("Baseline", "Baseline+RS", "Baseline+ARS")
        (line,) = ax.plot(epochs, mean, label=arm, lw=2 if main else 1, ls="-" if main else ":")
        if band and grid.shape[0] > 1:
            ax.fill_between(epochs, np.nanmin(grid, 0), np.nanmax(grid, 0), color=line.get_color(), alpha=0.15,
                            lw=0)
    early = study.config["early_epoch"]
    ax.axvspan(0.5, early + 0.5, color="0.9", zorder=0)
    ax.text(early + 0.6, 0.03, f"epochs 1-{early}: the early DSC and its mean", color="0.4", fontsize=8)
    seeds = len(study.seeds)
    what = f" (mean over {seeds} seeds" + (", band: lowest to highest)" if band else ")") if seeds > 1 else ""
    ax.set(xlabel="epoch", ylabel="validation DSC (organ mean)", ylim=(0, 1),
           title="Validation DSC during training" + what)
    ax.legend(fontsize=8)
    return ax.figure


def dc_ablation(study, main: str = "Baseline+RS") -> tuple:
    """The division-coefficient ablation of a study with :data:`DC_ARMS`: ``(dcs, arms, per-case DSC)``.

    The per-case DSC of each arm is averaged over seeds; ``main`` is B + RS at the study's ``grid``.
    """
    arms = {int(a.split("DC ")[1].rstrip(")")): a for a in DC_ARMS if a in study.arms}
    if main in study.arms:
        arms[int(study.config["grid"])] = main
    if len(arms) < 2:
        raise ValueError(f"the study has fewer than two division coefficients (arms {study.arms})")
    dcs = sorted(arms)
    with np.errstate(all="ignore"):
        dsc = [np.nanmean(study.metric("dsc", arms[d]), 0) for d in dcs]
    return dcs, [arms[d] for d in dcs], dsc


def plot_predictions(data, study, pred, arms=("Baseline", "Baseline+RS", "Baseline+ARS"), seed=None):
    """Ground truth and the predictions of ``arms`` on the worst, median and best test case of the first arm.

    ``pred``: ``{arm: N x spatial labels}`` (the ``live["pred"]`` of :func:`run`); titles give each case's
    organ-averaged DSC (of ``seed``, default the study's first).
    """
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    from .. import plotting

    organs = data["organs"]
    colors = plotting.structure_colors(organs)
    cmap = ListedColormap([(0, 0, 0, 0)] + [colors[o] for o in organs])
    row_of = 0 if seed is None else study.seeds.index(seed)
    case_dsc = {k: study.metric("dsc", k)[row_of] for k in arms}
    order = np.argsort(case_dsc[arms[0]])
    show = order[[0, len(order) // 2, -1]]
    cols = ["ground truth", *arms]
    fig, axes = plt.subplots(len(show), len(cols), figsize=(min(11.0, 2.5 * len(cols)), 2.6 * len(show)), squeeze=False)
    for row, i in zip(axes, show):
        img, labs, sp = _case_slice(data["test"], i, [pred[k] for k in arms])
        ext = plotting.image_extent(img.shape, sp)
        for ax, name, lb in zip(row, cols, labs):
            ax.imshow(img, cmap="gray", vmin=-1, vmax=1, extent=ext)
            ax.imshow(lb, cmap=cmap, vmin=0, vmax=len(organs), alpha=0.6, interpolation="nearest", extent=ext)
            ax.set_title(name if name == "ground truth" else f"{name}: DSC {case_dsc[name][i]:.3f}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
        row[0].set_ylabel(f"test case {study.cases[i]}")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colors[o]) for o in organs]
    fig.legend(handles, organs, loc="outside lower center", ncol=len(organs), fontsize=8)
    return fig


def plot_ablation(values, per_case_dsc, *, xlabel, title, labels=None, reference=None, log=False, ax=None):
    """Test DSC (organ mean over cases ± SEM) against a setting (the paper's Figs. 7-8).

    ``per_case_dsc``: one array of per-case organ-averaged DSC per value; ``reference``:
    ``(label, per-case DSC)`` drawn as a horizontal line.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.2))
    arrays = [np.asarray(d, float) for d in per_case_dsc]
    mean = [np.nanmean(d) for d in arrays]
    sem = [np.nanstd(d, ddof=1) / np.sqrt(np.isfinite(d).sum()) for d in arrays]
    ax.errorbar(values, mean, yerr=sem, marker="o", capsize=3)
    if reference is not None:
        ax.axhline(np.nanmean(reference[1]), color="k", ls=":", label=reference[0])
        ax.legend()
    if log:
        ax.set_xscale("log")
    ax.set(xticks=values, xticklabels=labels or [str(v) for v in values], xlabel=xlabel,
           ylabel="test DSC (organ mean ± SEM)", title=title)
    return ax.figure


def gradient_map(loss_fn, probs, target) -> np.ndarray:
    """Gradient of ``loss_fn(probs, target)`` with respect to the probabilities (autograd), as NumPy."""
    p = probs.detach().clone().requires_grad_(True)
    loss_fn(p, target).backward()
    return p.grad.detach().cpu().numpy()
