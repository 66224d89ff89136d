r"""The DOSELO experiment (Rüfenacht et al., MICCAI 2023, ``ruefenacht2023doselo``) on phantom brains.

Pipeline of the chapter "Dose-guided segmentation":

1. **Data** (:func:`load_data`): phantom brains for the dose predictor and, separately, for
   segmentation (:func:`brain_cases`); plans on the true GTV and on perturbed GTVs
   (:func:`dose_predictor_data`, :mod:`rtlearn.phantom.perturb`), each re-optimised by the phantom
   clinic (:func:`plan_dose`); and the **dose predictor** :math:`M_D(S_T, S_{OR}, I_{CT})`, a
   :class:`~rtlearn.models.CascadeUNet` trained with deep supervision
   (:class:`~rtlearn.losses.cascade.CascadeLoss`) by :func:`rtlearn.train.fit` with the fixed seed
   ``Config.predictor_seed``. The predictor is part of the data: it is trained once in
   :func:`load_data`, and every segmentation seed of a study shares it.
2. **The exploit** (:func:`amplitude_response`, :func:`exploit_figure`): the frozen predictor answers a
   *dimmed* true GTV (amplitude 0.3) with nearly the true dose, so the paper's soft dose term can be
   lowered by dimming the segmentation instead of correcting it; a straight-through mask closes this.
3. **Segmentation** (:func:`run`): a U-Net :math:`M_S(I_{MR}) \to \hat S_T` on the four MR-like
   channels, one per *arm* (:func:`arms`: a name and a loss object), all from the same initial
   weights and batch order, each :func:`train_segmenter` (``cfg.seg_updates`` updates, Adam with a
   cosine decay): BCE + SoftDice (the paper's baseline); BCE with ``pos_weight = 2`` (the authors'
   public code, whose dose term has no gradient); DOSELO-ST, BCE + SoftDice + :math:`\lambda L_{DSL}`
   with a straight-through mask and the dose term in units of Rx² (:func:`dose_term`), its
   :math:`\lambda` chosen per fold on the validation cases' RMAE; and the paper's Eq. (4) as written
   (BCE + :math:`\lambda L_{DSL}`, soft probabilities), the cautionary arm.
4. **Evaluation** (:func:`evaluate_segmentations`): every predicted GTV is planned with the
   phantom clinic's optimiser (GTV + 5 mm = PTV, 60 Gy), as is the true GTV; the two *true*
   doses are compared with the RMAE of Eq. (5) (floored denominator, :func:`rtlearn.metrics.rmae`),
   plus Dice, HD and HD95 in mm (:func:`rtlearn.metrics.hausdorff`), the number of far
   false-positive voxels and the mean probability inside the true GTV, case by case.

The chapter shape: :class:`Config` / :func:`default_config` (the only place a profile is read),
:func:`load_data`, :func:`run` (one seed, every arm), :data:`CLAIMS` and :data:`EQ4_CLAIMS` (judged
with :func:`rtlearn.metrics.stats.judge`), :data:`TINY`, :func:`tables`, :func:`study_summary` (the numbers the
chapter cites) and the figure functions
(:func:`figures`). The same configuration and seed give the same numbers.
"""
from __future__ import annotations

import functools
import math
import numbers
import time
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from torch import nn
from tqdm.auto import tqdm

from .. import config as _config
from .._validate import check_int
from ..losses.cascade import CascadeLoss
from ..losses.dose_guided import (BCELoss, BCESoftDiceLoss, DoseGuidedLoss, StraightThroughDoseGuidedLoss, freeze,
                                  true_target_dose)
from ..metrics.dosimetric import RMAE_FLOOR_FRACTION, rmae
from ..metrics.segmentation import dice, hausdorff
from ..metrics.stats import Claim, format_comparison, format_verdicts, judge, paired_comparison
from ..models.cascade import CascadeUNet
from ..models.scaled import ScaledDose
from ..models.unet import UNet
from ..phantom import make_patient, plan_for_target
from ..phantom.anatomy import _check_mimics
from ..phantom.datasets import case_seed
from ..phantom.mr import BRAIN_TISSUES
from ..phantom.perturb import KINDS, perturbed_targets, shift_target
from ..plotting import dose_slice, draw_contour, image_extent
from ..tables import Markdown, markdown_table
from ..train import FitResult, fit, seeded

__all__ = [
    "OAR_NAMES", "MR_NAMES", "PTV_MARGIN_MM", "RX_GY", "PAPER", "BASELINE", "CODE_ARM", "PAPER_ARM", "SOFT_ARM",
    "ARMS", "PAPER_UPDATES", "CODE_UPDATES", "METRICS", "STUDY_SEEDS", "DICE_MARGIN", "Config", "default_config",
    "TINY", "CLAIMS", "EQ4_CLAIMS", "describe", "seg_epochs", "update_count",
    "brain_cases", "mimic_counts", "cv_splits", "plan_dose", "predictor_input", "dose_predictor_data",
    "ArrayDataset", "dose_predictor", "segmenter", "shuffled", "predictor_accuracy", "segmentation_data",
    "arm_names", "dose_term", "arms", "predict_probs", "predict_masks", "train_segmenter", "far_false_positives",
    "evaluate_segmentations", "load_data", "run", "judged", "verdicts", "tables", "lambda_table", "study_summary",
    "amplitude_response", "blob_demo", "blob_figure", "pipeline_figure", "perturbation_figure", "predictor_figure",
    "exploit_figure", "probability_figure", "rmae_figure", "worst_cases_figure", "figures",
]

#: organs at risk given to the dose predictor, one channel each (``S_OR``)
OAR_NAMES = ("Brainstem", "OpticChiasm", "Eye_L", "Eye_R")
#: MR-like channels of the segmentation input (``I_MR``)
MR_NAMES = ("T1", "T1c", "T2", "FLAIR")
#: GTV-to-PTV margin used for every plan (mm)
PTV_MARGIN_MM = 5.0
#: prescription (Gy): 30 x 2 Gy as in the paper
RX_GY = 60.0
#: the paper's results (Sec. 3.3, five-fold CV on 50 patients, lambda = 1): mean, sd over the patients
PAPER = {
    "RMAE": {"bce_dice": (0.449, 0.545), "doselo": (0.258, 0.201)},
    "HD_mm": {"bce_dice": (64.06, 29.84), "doselo": (28.68, 22.25)},
    "Dice": {"bce_dice": (0.713, 0.203), "doselo": (0.697, 0.216)},
}
#: the arms, in table order: the paper's baseline, the authors' code's baseline, the dose-guided loss with a
#: straight-through mask and the paper's Eq. (4) as written (soft probabilities, BCE), the cautionary arm
BASELINE = "BCE+SoftDice"
CODE_ARM = "BCE pos_weight=2"
PAPER_ARM = "DOSELO-ST"
SOFT_ARM = "DOSELO Eq. 4 (soft)"
ARMS = (BASELINE, CODE_ARM, PAPER_ARM, SOFT_ARM)
#: the update budgets of the paper (Sec. 3.2: 2 x 10^4 iterations) and of the authors' public code (its default)
PAPER_UPDATES = 20_000
CODE_UPDATES = 200_000
#: per-case metrics of a run record (``empty``: 1.0 for an empty prediction; ``p_gtv``: the mean predicted
#: probability inside the true GTV, which shows a dimmed segmentation)
METRICS = ("rmae", "mae_gy", "hd_mm", "hd95_mm", "dice", "far_fp", "empty", "p_gtv")
#: seeds of the recorded study
STUDY_SEEDS = "0-2"
#: "at a similar Dice": the Dice loss that the paper's comparison allows (its own difference is -0.016)
DICE_MARGIN = 0.02

#: the paper's claims (Sec. 3.3), stated before any of our numbers: B - A in the claimed direction, one Holm
#: family. ``paper`` is the paper's difference of the means (DOSELO - baseline). The Dice claim is one of
#: non-inferiority: DOSELO's Dice is not lower than the baseline's by more than :data:`DICE_MARGIN`.
CLAIMS = (
    Claim("rmae", BASELINE, PAPER_ARM, "lower",
          "The dose term lowers the dosimetric impact (RMAE) of segmentation errors compared with BCE + SoftDice",
          paper=round(PAPER["RMAE"]["doselo"][0] - PAPER["RMAE"]["bce_dice"][0], 3)),
    Claim("hd_mm", BASELINE, PAPER_ARM, "lower",
          "The dose term lowers the Hausdorff distance compared with BCE + SoftDice",
          paper=round(PAPER["HD_mm"]["doselo"][0] - PAPER["HD_mm"]["bce_dice"][0], 2)),
    Claim("dice", BASELINE, PAPER_ARM, "higher",
          f"The dose term keeps the Dice within {DICE_MARGIN} of BCE + SoftDice's",
          paper=round(PAPER["Dice"]["doselo"][0] - PAPER["Dice"]["bce_dice"][0], 3), margin=DICE_MARGIN),
    Claim("far_fp", BASELINE, PAPER_ARM, "lower",
          "The dose term removes distant false positives (voxels more than 10 mm from the GTV)"),
    Claim("rmae", CODE_ARM, PAPER_ARM, "lower",
          "The dose term lowers the RMAE compared with the authors' code's baseline (BCE, pos_weight 2)"),
)
#: the same claims for the paper's loss as written (Eq. 4: BCE + lambda L_DSL with soft probabilities), judged as
#: a family of their own
EQ4_CLAIMS = tuple(Claim(c.metric, c.a, SOFT_ARM, c.direction, c.statement.replace("The dose term",
                                                                                   "The paper's loss (Eq. 4)"),
                         paper=c.paper, margin=c.margin) for c in CLAIMS[:3])


# ---------------------------------------------------------------------------------------------------------------
# the configuration
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Config:
    """Every size of the DOSELO experiment (build it with :func:`default_config`).

    Profiles (:func:`default_config`):

    ``quick``
        the book's live demonstration: 24 predictor patients x (1 + 3) plans, the predictor 30 epochs
        (width 8); 32 segmentation patients in one 24/8 split, a 64 x 64 grid at 3.6 mm; every
        segmenter 600 updates (width 8, batch 4); one lambda, so no validation set; the paper's Eq. (4)
        at lambda = 30 Rx^2 (ten times the study's), where it collapses within these updates. A few
        minutes on a CPU.
    ``study``
        the recorded multi-seed study (``python -m rtlearn.study doselo --profile study --seeds 0-2``):
        48 predictor patients x (1 + 4) plans, the predictor 80 epochs, trained once per study in
        :func:`load_data`; 64 segmentation patients in 4-fold cross-validation (48 training cases per
        fold, 8 of them for validation, and 16 test cases: 64 test cases in all); every segmenter
        2,000 updates; lambda of the dose term chosen per fold from ``lambdas`` on the validation
        cases' RMAE.
    ``full``
        the paper's scale on a GPU: 128 x 128 at 1.8 mm, 200 predictor patients x (1 + 8) plans, 50
        segmentation patients in five-fold CV, larger networks, the paper's 2 x 10^4 updates.
    """

    # phantom cases and plans
    n_dose_cases: int = 24          #: patients for the dose predictor
    n_perturb: int = 3              #: perturbed targets per predictor patient, each re-planned
    n_seg_cases: int = 32           #: separate patients for segmentation (as in the paper)
    n_folds: int = 1                #: 1: one hold-out split (``test_fraction``); >= 2: cross-validation
    test_fraction: float = 0.25     #: test share of the single split
    n_val: int = 0                  #: validation cases taken from each fold's training cases (lambda selection)
    shape: tuple = (64, 64)         #: grid (64 x 64 at 3.6 mm: the same 230 mm field of view as 128 x 128 at 1.8)
    spacing: float = 3.6            #: voxel size (mm)
    dose_case_seed: int = 100       #: seed of the predictor patients
    seg_case_seed: int = 200        #: seed of the segmentation patients
    mimics: int | float | None = 1.0   #: enhancing non-tumour spots per segmentation patient (int: count,
    #: float: Poisson rate; None: none), far from the GTV, see :func:`~rtlearn.phantom.make_patient`. They
    #: provoke the distant false positives that cost dose (:func:`mimic_counts` counts them).
    perturb_seed: int = 0           #: seed of the predictor's perturbed targets
    held_out_perturb: int = 1       #: perturbed targets per segmentation patient (the predictor's held-out test)
    held_out_seed: int = 1          #: seed of those perturbations
    split_seed: int = 0             #: seed of the case split (fixed: test cases pair across seeds)
    plan_iter: int = 100            #: iterations of the plan optimiser
    # the dose predictor M_D (trained once, in load_data)
    predictor_epochs: int = 30
    predictor_width: int = 8
    predictor_depth: int = 3
    predictor_lr: float = 2e-3
    predictor_batch: int = 16
    predictor_seed: int = 0         #: fixed: every segmentation seed shares the predictor
    # the segmentation network M_S (one per arm and seed)
    seg_updates: int = 600          #: optimiser updates per segmenter (whole epochs, at least this many)
    seg_width: int = 8
    seg_depth: int = 3
    seg_lr: float = 2e-3            #: Adam's initial learning rate, cosine decay to 0 over the updates
    seg_batch: int = 4
    # the arms
    lambdas: tuple = (3.0,)         #: candidate lambdas of DOSELO-ST (dose term in units of Rx^2); > 1: chosen
    #: per fold on the validation cases' RMAE (needs ``n_val`` >= 1)
    soft_lambda: float = 3.0        #: lambda of the paper's Eq. (4) arm (Rx^2 units; 3 Rx^2 = 8.3e-4 Gy^-2)
    pos_weight: float = 2.0         #: BCE foreground weight of the authors' code's baseline

    def __post_init__(self):
        for name in ("n_dose_cases", "n_seg_cases", "n_folds", "predictor_epochs", "predictor_width",
                     "predictor_depth", "predictor_batch", "seg_updates", "seg_width", "seg_depth", "seg_batch",
                     "plan_iter"):
            check_int(getattr(self, name), name)
        for name in ("n_perturb", "held_out_perturb", "n_val", "dose_case_seed", "seg_case_seed", "perturb_seed",
                     "held_out_seed", "split_seed", "predictor_seed"):
            check_int(getattr(self, name), name, 0)
        _check_mimics(self.mimics, "brain")
        if self.n_seg_cases < 2:
            raise ValueError(f"n_seg_cases must be >= 2 (training and test cases), got {self.n_seg_cases}")
        if self.n_folds > self.n_seg_cases:
            raise ValueError(f"n_folds ({self.n_folds}) cannot exceed n_seg_cases ({self.n_seg_cases})")
        if not (isinstance(self.test_fraction, numbers.Real) and 0 < self.test_fraction < 1):
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction!r}")
        if (not isinstance(self.shape, tuple) or len(self.shape) != 2
                or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 16 for s in self.shape)):
            raise ValueError(f"shape must be a tuple of two ints >= 16, got {self.shape!r}")
        for name in ("spacing", "predictor_lr", "seg_lr", "pos_weight"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"{name} must be a positive number, got {v!r}")
        v = self.lambdas
        if (not isinstance(v, tuple) or not v or not all(_is_lambda(x) for x in v) or len(set(v)) != len(v)):
            raise ValueError(f"lambdas must be a non-empty tuple of distinct finite numbers >= 0, got {v!r}")
        if len(v) > 1 and self.n_val < 1:
            raise ValueError(f"choosing lambda among {len(v)} candidates needs validation cases: set n_val >= 1")
        if not _is_lambda(self.soft_lambda):
            raise ValueError(f"soft_lambda must be a finite number >= 0, got {self.soft_lambda!r}")


def _is_lambda(x) -> bool:
    return not isinstance(x, bool) and isinstance(x, numbers.Real) and math.isfinite(x) and x >= 0


_FULL = dict(n_dose_cases=200, n_perturb=8, n_seg_cases=50, n_folds=5, n_val=5, shape=(128, 128), spacing=1.8,
             predictor_epochs=150, predictor_width=16, predictor_depth=4, seg_updates=PAPER_UPDATES, seg_width=32,
             seg_depth=4, seg_batch=16, lambdas=(1.0, 3.0, 10.0))
#: the demonstration trains the paper's Eq. (4) at ten times the study's lambda: within its 600 updates that
#: shows the collapse which the study's longer training only begins at lambda = 3 Rx^2
_QUICK = dict(soft_lambda=30.0)
_STUDY = dict(n_dose_cases=48, n_perturb=4, n_seg_cases=64, n_folds=4, n_val=8, predictor_epochs=80,
              seg_updates=2000, lambdas=(1.0, 3.0, 10.0))
#: overrides that shrink the study config to a few seconds (the study runner's own test)
TINY = dict(n_dose_cases=2, n_perturb=1, n_seg_cases=6, n_folds=2, n_val=1, shape=(48, 48), spacing=4.8,
            plan_iter=10, predictor_epochs=1, predictor_width=4, predictor_depth=2, seg_updates=2, seg_width=4,
            seg_depth=2, seg_batch=2, lambdas=(1.0, 10.0))


def default_config(profile: str | None = None, **overrides) -> Config:
    """The :class:`Config` of a profile (``quick``, ``study`` or ``full``; default :func:`rtlearn.config.profile`).

    ``overrides`` replace single fields (``default_config("study", **TINY)``).

    Raises
    ------
    ValueError
        For an unknown profile or an override that is not a field of :class:`Config`.
    """
    name = _config.profile() if profile is None else _config.check_profile(profile)
    _config.check_overrides(Config, overrides, "DOSELO config field(s)")
    sizes = {"quick": _QUICK, "study": _STUDY, "full": _FULL}[name]
    return Config(**{**sizes, **overrides})


def describe(cfg: Config) -> str:
    """The sizes of ``cfg`` in one paragraph (printed where a study is not recorded yet)."""
    split = (f"one split with {round(cfg.test_fraction * 100)} % test cases" if cfg.n_folds == 1
             else f"{cfg.n_folds}-fold cross-validation")
    lam = (f"lambda of the dose term {cfg.lambdas[0]:g} Rx^2" if len(cfg.lambdas) == 1 else
           f"lambda of the dose term chosen per fold from {', '.join(f'{x:g}' for x in cfg.lambdas)} (Rx^2) on "
           f"{cfg.n_val} validation cases")
    return (f"{cfg.n_dose_cases} predictor patients x (1 + {cfg.n_perturb}) plans, predictor "
            f"{cfg.predictor_epochs} epochs (width {cfg.predictor_width}, depth {cfg.predictor_depth}); "
            f"{cfg.n_seg_cases} segmentation patients, {split}; grid {cfg.shape[0]} x {cfg.shape[1]} at "
            f"{cfg.spacing} mm; {len(ARMS)} arms, each U-Net (width {cfg.seg_width}, depth {cfg.seg_depth}, "
            f"batch {cfg.seg_batch}) trained for {seg_epochs(cfg)} epochs = {update_count(cfg)} "
            f"updates (the paper: {PAPER_UPDATES:,}); {lam}.")


def _n_fit(cfg: Config) -> int:
    """Training cases per fold (the smallest fold's), validation cases excluded."""
    n = cfg.n_seg_cases
    n_test = (min(n - 1, max(1, int(round(cfg.test_fraction * n)))) if cfg.n_folds == 1
              else -(-n // cfg.n_folds))
    return max(1, n - n_test - cfg.n_val)


def _batches(cfg: Config) -> int:
    return -(-_n_fit(cfg) // cfg.seg_batch)


def seg_epochs(cfg: Config) -> int:
    """Epochs of every segmenter: the fewest whole epochs with at least ``cfg.seg_updates`` updates."""
    return max(1, -(-cfg.seg_updates // _batches(cfg)))


def update_count(cfg: Config) -> int:
    """Optimiser updates of every segmenter: :func:`seg_epochs` x batches per epoch (the smallest fold's)."""
    return seg_epochs(cfg) * _batches(cfg)


# ---------------------------------------------------------------------------------------------------------------
# cases and plans
# ---------------------------------------------------------------------------------------------------------------
def brain_cases(n: int, seed: int = 0, shape=(64, 64), spacing=3.6, mimics=None) -> list:
    """``n`` seeded 2D phantom brains (:func:`rtlearn.phantom.make_patient`).

    Case ``i`` has seed ``case_seed(seed, i)``. ``mimics`` (an int count or a float
    Poisson rate per patient) adds enhancing spots that are not tumour, far from
    the GTV (see :func:`~rtlearn.phantom.make_patient`); the patients are
    otherwise the same.

    The default 64 x 64 grid at 3.6 mm covers the same 230 mm field of view as
    the phantom's default 128 x 128 at 1.8 mm.
    """
    check_int(n, "n")
    return [make_patient("brain", case_seed(seed, i), dims=2, shape=tuple(shape), spacing=spacing, mimics=mimics)
            for i in range(n)]


def mimic_counts(patients) -> np.ndarray:
    """Number of separate mimics (tissue ``"mimic"``, 8-connected regions) in each 2D phantom brain."""
    k = BRAIN_TISSUES.index("mimic")
    out = []
    for p in patients:
        if p.labels is None:
            raise ValueError("a patient without tissue labels; mimics are counted on phantom brains")
        out.append(ndimage.label(np.asarray(p.labels) == k, structure=np.ones((3,) * np.ndim(p.labels)))[1])
    return np.asarray(out, int)


def plan_dose(patient, target, margin_mm: float = PTV_MARGIN_MM, max_iter: int = 100) -> np.ndarray:
    """True dose (Gy) of a plan optimised on ``target`` grown by ``margin_mm`` (GTV to PTV), Rx 60 Gy.

    This is the phantom clinic's stand-in for the paper's clinical re-planning
    (Sec. 3.2). An empty target gets no plan: the dose is zero everywhere
    (nothing would be treated).
    """
    t = np.asarray(target, bool)
    if t.shape != patient.shape:
        raise ValueError(f"target has shape {t.shape}; expected the patient grid {patient.shape}")
    if not (t & patient.body).any():
        return np.zeros(patient.shape, np.float32)
    return plan_for_target(patient, t, prescription=RX_GY, margin_mm=margin_mm, max_iter=max_iter).dose


def _oars(patient):
    return np.stack([patient.masks.get(n, np.zeros(patient.shape, bool)) for n in OAR_NAMES]).astype(np.float32)


def predictor_input(patient, target) -> np.ndarray:
    """Input of :math:`M_D`: channels ``[S_T, S_OR (4 OARs), I_CT (HU/1000)]``, float32 ``6 x H x W``."""
    t = np.asarray(target, np.float32)[None]
    return np.concatenate([t, _oars(patient), (patient.ct_hu / 1000.0)[None].astype(np.float32)])


def dose_predictor_data(patients, n_perturb: int = 3, seed: int = 0, max_iter: int = 100,
                        progress: bool = False, **perturb_kw) -> dict:
    r"""Training samples for :math:`M_D`: per patient the plan on its GTV and on ``n_perturb`` perturbed GTVs.

    Perturbations (dilated, eroded, shifted, spurious blobs; kinds cycling, the
    cycle starting one kind later for each patient) come
    from :func:`rtlearn.phantom.perturb.perturbed_targets` with seed ``[seed, i]`` for
    patient ``i`` and stay inside the body; each has its own re-optimised dose.

    Margins and shift lengths default to ranges in whole voxels (margin
    :math:`[s, \max(6, 2.5 s)]` mm, shift :math:`[1.5 s, \max(10, 3 s)]` mm with
    :math:`s` the largest voxel size), so that no perturbation rounds to the
    unperturbed target on a coarse grid; ``perturb_kw`` overrides them (see
    :func:`rtlearn.phantom.perturb.perturb_target`).

    Returns
    -------
    dict of arrays
        ``input`` (N x 6 x H x W), ``target`` (dose, N x 1 x H x W, Gy),
        ``mask`` (body, N x 1 x H x W), ``case`` (patient index), ``kind``
        (``"reference"`` or the perturbation), ``seconds`` (planning time).
    """
    check_int(n_perturb, "n_perturb", 0)
    if not patients:
        raise ValueError("give at least one patient")
    xs, ds, ms, case, kind = [], [], [], [], []
    t0 = time.perf_counter()
    for i, p in enumerate(tqdm(patients, desc="planning", disable=not progress)):
        gtv = p.masks["GTV"]
        targets = [(gtv, "reference")]
        if n_perturb:
            vox = float(max(p.spacing))
            kw = {"margin_mm": (vox, max(6.0, 2.5 * vox)), "shift_mm": (1.5 * vox, max(10.0, 3.0 * vox)),
                  **perturb_kw}
            rng = np.random.default_rng([int(seed), i])
            kinds = KINDS[i % len(KINDS):] + KINDS[:i % len(KINDS)]  # rotate, so that every kind occurs
            targets += [(q.mask, q.kind) for q in perturbed_targets(gtv, p.spacing, n_perturb, seed=rng, body=p.body,
                                                                     kinds=kinds, **kw)]
        for t, k in targets:
            xs.append(predictor_input(p, t))
            ds.append(plan_dose(p, t, max_iter=max_iter)[None])
            ms.append(p.body[None].astype(np.float32))
            case.append(i)
            kind.append(k)
    return {"input": np.stack(xs), "target": np.stack(ds).astype(np.float32), "mask": np.stack(ms),
            "case": np.asarray(case), "kind": np.asarray(kind), "seconds": time.perf_counter() - t0}


class ArrayDataset(torch.utils.data.Dataset):
    """Items ``{key: tensor[i]}`` from equal-length arrays (numeric keys only; strings are skipped)."""

    def __init__(self, **arrays):
        self.arrays = {k: torch.as_tensor(np.asarray(v)) for k, v in arrays.items()
                       if np.asarray(v).dtype.kind in "biuf" and np.ndim(v) >= 1}
        lengths = {len(v) for v in self.arrays.values()}
        if len(lengths) != 1:
            raise ValueError(f"arrays must have the same first dimension, got lengths {sorted(lengths)}")
        self.n = lengths.pop()

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {k: v[i] for k, v in self.arrays.items()}


def shuffled(dataset, batch_size: int) -> torch.utils.data.DataLoader:
    """A shuffling loader that draws its order from torch's global generator.

    :func:`rtlearn.train.fit` reseeds that generator with ``seed + epoch`` at
    every epoch, so the batch order depends on the seed alone (this is the
    loader the chapter has always used; a :class:`~torch.utils.data.Dataset`
    given to ``fit`` instead gets a loader with its own seeded generator, which
    orders the batches differently).
    """
    check_int(batch_size, "batch_size")
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True)


def cv_splits(n: int, n_folds: int = 5, seed: int = 0, test_fraction: float = 0.25) -> list:
    """``[(train_idx, test_idx), ...]``: ``n_folds``-fold cross-validation over a seeded permutation of ``n`` cases.

    ``n_folds=1`` gives a single hold-out split with ``round(test_fraction * n)``
    test cases (the quick profile); ``n_folds >= 2`` partitions the cases into
    folds whose sizes differ by at most one, each the test set once (the paper's
    five-fold CV).
    """
    check_int(n, "n", 2)
    check_int(n_folds, "n_folds")
    if n_folds > n:
        raise ValueError(f"n_folds ({n_folds}) cannot exceed the number of cases ({n})")
    perm = np.random.default_rng(seed).permutation(n)
    if n_folds == 1:
        if not 0 < test_fraction < 1:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
        k = min(n - 1, max(1, int(round(test_fraction * n))))
        return [(np.sort(perm[k:]), np.sort(perm[:k]))]
    parts = np.array_split(perm, n_folds)
    return [(np.sort(np.concatenate(parts[:i] + parts[i + 1:])), np.sort(parts[i])) for i in range(n_folds)]


def _validation_split(train_idx, n_val: int, seed: int, fold: int):
    """``(train, val)``: ``n_val`` cases of a fold's training cases held out for early stopping (fixed by the seeds)."""
    train_idx = np.asarray(train_idx)
    if n_val == 0:
        return train_idx, train_idx[:0]
    if n_val >= len(train_idx):
        raise ValueError(f"n_val ({n_val}) leaves no training case of the {len(train_idx)} in fold {fold}")
    val = np.random.default_rng([seed, fold]).choice(train_idx, n_val, replace=False)
    return np.setdiff1d(train_idx, val), np.sort(val)


# ---------------------------------------------------------------------------------------------------------------
# the networks
# ---------------------------------------------------------------------------------------------------------------
def dose_predictor(cfg: Config) -> nn.Module:
    """:math:`M_D`: a cascade of two U-Nets on ``[S_T, S_OR, I_CT]`` predicting dose / 60 Gy, output in Gy."""
    return ScaledDose(CascadeUNet(1 + len(OAR_NAMES) + 1, 1, dims=2, depth=cfg.predictor_depth,
                                  width=cfg.predictor_width, norm="batch"), RX_GY)


def segmenter(cfg: Config) -> nn.Module:
    """:math:`M_S`: a U-Net on the four MR channels, one logit channel."""
    return UNet(len(MR_NAMES), 1, dims=2, depth=cfg.seg_depth, width=cfg.seg_width, norm="batch")


@torch.no_grad()
def predictor_accuracy(model: nn.Module, data: dict, batch_size: int = 32) -> dict:
    """Mean absolute error of :math:`M_D` against the planned doses over body voxels: Gy and % of Rx.

    Returns ``{"mae_gy", "mae_pct_rx", "per_sample_gy", "by_kind": {kind: mae_gy}}``.
    """
    model.eval()
    x = torch.as_tensor(data["input"])
    dev = next(model.parameters()).device
    pred = torch.cat([model(x[i:i + batch_size].to(dev), return_stages=False).cpu()
                      for i in range(0, len(x), batch_size)]).numpy()
    m = np.asarray(data["mask"], bool)
    err = np.abs(pred - data["target"])
    per = np.array([e[k].mean() for e, k in zip(err, m)])
    kinds = np.asarray(data.get("kind", np.array(["all"] * len(per))))
    return {"mae_gy": float(per.mean()), "mae_pct_rx": float(100 * per.mean() / RX_GY), "per_sample_gy": per,
            "by_kind": {str(k): float(per[kinds == k].mean()) for k in dict.fromkeys(kinds.tolist())}}


def segmentation_data(patients, predictor: nn.Module | None = None) -> dict:
    """Arrays for training :math:`M_S`: ``input`` (MR, N x 4 x H x W), ``target`` (GTV), ``oars``, ``ct``,
    ``dose_mask`` (body), ``case``; ``true_dose`` = :math:`M_D(S_T, \\dots)` if a (frozen) predictor is given."""
    mr = np.stack([np.stack([p.mr[k] for k in MR_NAMES]) for p in patients]).astype(np.float32)
    out = {
        "input": mr,
        "target": np.stack([p.masks["GTV"][None] for p in patients]).astype(np.float32),
        "oars": np.stack([_oars(p) for p in patients]),
        "ct": np.stack([(p.ct_hu / 1000.0)[None] for p in patients]).astype(np.float32),
        "dose_mask": np.stack([p.body[None] for p in patients]).astype(np.float32),
        "case": np.arange(len(patients)),
    }
    if predictor is not None:
        t = lambda k: torch.as_tensor(out[k])  # noqa: E731
        freeze(predictor)
        dev = next(predictor.parameters()).device
        out["true_dose"] = true_target_dose(predictor, t("target").to(dev), t("oars").to(dev), t("ct").to(dev),
                                            t("dose_mask").to(dev)).cpu().numpy()
    return out


# ---------------------------------------------------------------------------------------------------------------
# the arms: a name and a loss object each
# ---------------------------------------------------------------------------------------------------------------
def arm_names(cfg: Config | None = None) -> list:
    """The arms in table order (the baseline first); the same for every config."""
    return list(ARMS)


def dose_term(predictor: nn.Module, lam: float, *, straight: bool = True) -> DoseGuidedLoss:
    r"""BCE + SoftDice + :math:`\lambda L_{DSL}`, the dose term in units of Rx² (doses divided by 60 Gy).

    ``straight=True``: the predictor sees the thresholded mask, the gradient reaches the probabilities
    (:class:`~rtlearn.losses.dose_guided.StraightThroughDoseGuidedLoss`); ``False``: the paper's soft
    probabilities go through the predictor (the arm that can be gamed by dimming).
    """
    if straight:
        return StraightThroughDoseGuidedLoss(predictor, lam, dice=True, dose_scale=RX_GY)
    return DoseGuidedLoss(predictor, lam, dice=True, dose_scale=RX_GY)


def arms(cfg: Config, predictor: nn.Module, lam: float | None = None) -> dict:
    r"""``{arm name: loss object}``; every loss is called as ``loss(logits, batch)`` (``fit(..., targets=None)``).

    * ``BCE+SoftDice`` -- :class:`~rtlearn.losses.dose_guided.BCESoftDiceLoss`, the paper's baseline;
    * ``BCE pos_weight=2`` -- the authors' public code's training: BCE with foreground weight 2. Its dose term
      runs under ``no_grad`` on a thresholded mask, so it adds nothing to the gradient
      (``DoseGuidedLoss(hard=True)`` trains exactly as this arm);
    * ``DOSELO-ST`` -- BCE + SoftDice + :math:`\lambda L_{DSL}` with a straight-through mask
      (:func:`dose_term`); ``lam`` (default ``cfg.lambdas[0]``) in units of Rx²;
    * ``DOSELO Eq. 4 (soft)`` -- the paper's loss as written, BCE + :math:`\lambda L_{DSL}` with the soft
      probabilities through the predictor, at ``cfg.soft_lambda`` (Rx²): the arm that can be gamed by dimming.
    """
    lam = cfg.lambdas[0] if lam is None else lam
    out = {BASELINE: BCESoftDiceLoss(), CODE_ARM: BCELoss(pos_weight=cfg.pos_weight),
           PAPER_ARM: dose_term(predictor, lam), SOFT_ARM: DoseGuidedLoss(predictor, cfg.soft_lambda, dose_scale=RX_GY)}
    assert list(out) == arm_names(cfg)
    return out


def _auxiliary(loss: nn.Module, *nets) -> list:
    """The networks among ``nets`` that ``loss`` holds (they go to ``fit(..., frozen=...)``)."""
    return [net for net in nets if any(m is net for m in loss.modules())]


@torch.no_grad()
def predict_probs(model: nn.Module, data: dict, batch_size: int = 32) -> np.ndarray:
    """GTV probabilities ``N x H x W`` (sigmoid of the logits) of ``data["input"]``."""
    model.eval()
    dev = next(model.parameters()).device
    x = torch.as_tensor(data["input"])
    return torch.cat([torch.sigmoid(model(x[i:i + batch_size].to(dev)).float()).cpu()
                      for i in range(0, len(x), batch_size)]).numpy()[:, 0]


def predict_masks(model: nn.Module, data: dict, threshold: float = 0.5) -> np.ndarray:
    """Binary GTV predictions ``N x H x W`` (sigmoid of the logits >= ``threshold``)."""
    return predict_probs(model, data) >= threshold


def train_segmenter(cfg: Config, loss: nn.Module, train_set, seed: int, frozen=()) -> FitResult:
    """One segmenter as every arm is trained: the U-Net built from ``seed``, Adam at ``cfg.seg_lr`` with a cosine
    decay to 0 over :func:`seg_epochs` epochs (at least ``cfg.seg_updates`` updates) in the batch order of
    ``seed``, the last weights kept. Returns the :func:`rtlearn.train.fit` result."""
    epochs = seg_epochs(cfg)
    with seeded(seed):
        model = segmenter(cfg)
    cosine = functools.partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=epochs)
    return fit(model, loss, shuffled(train_set, cfg.seg_batch), epochs=epochs, seed=seed, targets=None,
               lr=cfg.seg_lr, scheduler=cosine, frozen=list(frozen), restore_best=False, progress=False)


# ---------------------------------------------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------------------------------------------
def far_false_positives(pred, gt, spacing, distance_mm: float = 10.0) -> int:
    """Number of predicted voxels more than ``distance_mm`` from the true GTV (distant outliers)."""
    d = ndimage.distance_transform_edt(~np.asarray(gt, bool), sampling=spacing)
    return int(np.count_nonzero(np.asarray(pred, bool) & (d > distance_mm)))


def evaluate_segmentations(patients, masks, ref_doses=None, floor_fraction: float = RMAE_FLOOR_FRACTION,
                           max_iter: int = 100, keep_doses: bool = False, probs=None) -> list:
    r"""Per-case dosimetric and geometric evaluation of predicted GTVs.

    For case :math:`k`, :math:`D_{S_T}` is the plan on the true GTV (``ref_doses[k]``,
    planned here if not given) and :math:`D_{\hat S_T}` the plan on the
    predicted GTV (:func:`plan_dose`); both are *true* doses of the phantom
    clinic, not predictions.

    Returns
    -------
    list of dict
        ``case, rmae`` (Eq. 5 over the body, denominator floored at
        ``floor_fraction`` x 60 Gy), ``mae_gy`` (body), ``dice, hd_mm, hd95_mm``
        (NaN for an empty prediction), ``far_fp`` (:func:`far_false_positives`),
        ``empty``, ``p_gtv`` (the mean of ``probs`` inside the true GTV; NaN
        without ``probs``); with ``keep_doses`` also ``dose`` and ``ref_dose``.
    """
    masks = np.asarray(masks, bool)
    if probs is not None and np.shape(probs) != masks.shape:
        raise ValueError(f"probs must have the shape of masks {masks.shape}, got {np.shape(probs)}")
    if masks.shape != (len(patients),) + tuple(patients[0].shape):
        raise ValueError(f"masks must be N x H x W = {(len(patients),) + tuple(patients[0].shape)}, "
                         f"got {masks.shape}")
    out = []
    for k, (p, m) in enumerate(zip(patients, masks)):
        gt = p.masks["GTV"]
        ref = plan_dose(p, gt, max_iter=max_iter) if ref_doses is None else np.asarray(ref_doses[k])
        dose = plan_dose(p, m, max_iter=max_iter)
        row = {"case": k, "rmae": rmae(dose, ref, mask=p.body, rx=RX_GY, floor_fraction=floor_fraction),
               "mae_gy": float(np.abs(dose - ref)[p.body].mean()), "dice": dice(m, gt),
               "hd_mm": hausdorff(m, gt, p.spacing), "hd95_mm": hausdorff(m, gt, p.spacing, 95),
               "far_fp": far_false_positives(m, gt, p.spacing), "empty": not bool(m.any()),
               "p_gtv": float(np.asarray(probs[k])[gt].mean()) if probs is not None and gt.any() else math.nan}
        if keep_doses:
            row["dose"], row["ref_dose"] = dose, ref
        out.append(row)
    return out


# ---------------------------------------------------------------------------------------------------------------
# data, one run, the tables
# ---------------------------------------------------------------------------------------------------------------
def load_data(cfg: Config, *, progress: bool = False) -> dict:
    """Patients, plans and the trained dose predictor for ``cfg`` (the same for every segmentation seed).

    Plans every predictor patient on its GTV and ``cfg.n_perturb`` perturbed GTVs,
    and every segmentation patient on its GTV (the reference doses :math:`D_{S_T}`
    of the evaluation) and ``cfg.held_out_perturb`` perturbed GTVs (the
    predictor's held-out test: these patients are never seen by :math:`M_D`).
    Then trains :math:`M_D` with :func:`rtlearn.train.fit`: deep supervision
    :math:`0.5\\,\\mathrm{MSE}_M(\\hat D^{(1)}, D) + \\mathrm{MSE}_M(\\hat D^{(2)}, D)` over the
    body in Gy² (:class:`~rtlearn.losses.cascade.CascadeLoss`), Adam with a cosine
    learning-rate decay, seed ``cfg.predictor_seed``; the predictor is returned frozen.

    Returns
    -------
    dict
        ``dose_cases``, ``seg_cases`` (patients), ``train_md`` and ``held_out``
        (:func:`dose_predictor_data`), ``ref_doses`` (``n_seg_cases x H x W``, Gy),
        ``splits`` (:func:`cv_splits`), ``predictor`` (frozen, on the CPU),
        ``predictor_history`` (per-epoch records), ``predictor_seconds`` and
        ``predictor_accuracy`` (:func:`predictor_accuracy` on ``held_out``).
    """
    if not isinstance(cfg, Config):
        raise TypeError(f"cfg must be a doselo.Config (see default_config), got {type(cfg).__name__}")
    dose_cases = brain_cases(cfg.n_dose_cases, seed=cfg.dose_case_seed, shape=cfg.shape, spacing=cfg.spacing)
    seg_cases = brain_cases(cfg.n_seg_cases, seed=cfg.seg_case_seed, shape=cfg.shape, spacing=cfg.spacing,
                            mimics=cfg.mimics)
    train_md = dose_predictor_data(dose_cases, n_perturb=cfg.n_perturb, seed=cfg.perturb_seed,
                                   max_iter=cfg.plan_iter, progress=progress)
    held_out = dose_predictor_data(seg_cases, n_perturb=cfg.held_out_perturb, seed=cfg.held_out_seed,
                                   max_iter=cfg.plan_iter, progress=progress)
    ref_doses = held_out["target"][held_out["kind"] == "reference"][:, 0]

    with seeded(cfg.predictor_seed):
        model = dose_predictor(cfg)
    cosine = functools.partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=cfg.predictor_epochs)
    result = fit(model, CascadeLoss(), shuffled(ArrayDataset(**{k: train_md[k] for k in ("input", "target", "mask")}),
                                                cfg.predictor_batch),
                 epochs=cfg.predictor_epochs, seed=cfg.predictor_seed, targets=("target", "mask"),
                 lr=cfg.predictor_lr, scheduler=cosine, restore_best=False, progress=progress)
    predictor = freeze(result.model.cpu().float())
    return {"cfg": cfg, "dose_cases": dose_cases, "seg_cases": seg_cases, "train_md": train_md,
            "held_out": held_out, "ref_doses": ref_doses,
            "splits": cv_splits(cfg.n_seg_cases, cfg.n_folds, seed=cfg.split_seed, test_fraction=cfg.test_fraction),
            "predictor": predictor, "predictor_history": result.history.records,
            "predictor_seconds": result.seconds, "predictor_accuracy": predictor_accuracy(predictor, held_out)}


def _fold_data(cfg: Config, data: dict, fold: int):
    """``(fit_idx, val_idx, test_idx, train_set, val_seg, test_seg)`` of one fold (the true doses precomputed)."""
    tr, te = data["splits"][fold]
    fit_idx, val_idx = _validation_split(tr, cfg.n_val, cfg.split_seed, fold)
    seg_cases = data["seg_cases"]
    train_set = ArrayDataset(**segmentation_data([seg_cases[i] for i in fit_idx], data["predictor"]))
    val_seg = segmentation_data([seg_cases[i] for i in val_idx]) if len(val_idx) else None
    test_seg = segmentation_data([seg_cases[i] for i in te])
    return fit_idx, val_idx, te, train_set, val_seg, test_seg


def run(cfg: Config, seed: int = 0, *, data: dict | None = None, progress: bool = True) -> dict:
    r"""Train every arm of ``cfg`` for ``seed`` and evaluate it on the test cases (a run record).

    For every fold, each arm's U-Net is trained by :func:`train_segmenter` (the same initial weights and batch
    order for every loss; the predictor frozen). ``DOSELO-ST`` is trained once per candidate
    :math:`\lambda` in ``cfg.lambdas``; with more than one, each candidate's predicted GTVs of the fold's
    *validation* cases are re-planned and the :math:`\lambda` with the lowest mean validation RMAE is kept
    (the test cases play no part in the choice). The predicted GTVs of the test cases are then re-planned and
    scored (:func:`evaluate_segmentations`). The split, the patients and the predictor do not depend on
    ``seed``, so test cases pair across seeds.

    Returns
    -------
    dict
        ``cases`` (test-case indices into ``data["seg_cases"]``), ``metrics`` ``{arm: {metric: [per case]}}``
        (:data:`METRICS`; NaN distances for an empty prediction), ``history`` ``{arm: per-epoch records}``
        (with their ``fold``), ``seconds`` ``{arm: training and evaluation time}`` (DOSELO-ST: all its
        candidates), ``extras`` (``lambda``: the chosen :math:`\lambda` per fold, ``val_rmae``: per fold the
        validation RMAE of every candidate, ``updates`` per model, the predictor's held-out error and
        training curve) and ``live`` (``masks``, ``probs`` and ``doses`` ``{arm: N x H x W}`` in case order,
        the trained ``models`` ``{arm: [one per fold]}``).
    """
    check_int(seed, "seed", 0)
    if data is None:
        data = load_data(cfg, progress=progress)
    elif data.get("cfg") is not None and data["cfg"] != cfg:
        raise ValueError("data was loaded for another config; call load_data(cfg) with this one")
    predictor, seg_cases = data["predictor"], data["seg_cases"]
    names = arm_names(cfg)
    n = cfg.n_seg_cases
    rows = {a: [None] * n for a in names}
    masks = {a: np.zeros((n,) + tuple(cfg.shape), bool) for a in names}
    probs = {a: np.zeros((n,) + tuple(cfg.shape), np.float32) for a in names}
    doses = {a: np.zeros((n,) + tuple(cfg.shape), np.float32) for a in names}
    history = {a: [] for a in names}
    seconds = dict.fromkeys(names, 0.0)
    models = {a: [] for a in names}
    chosen, val_rmae = {}, {}
    n_models = len(data["splits"]) * (len(names) - 1 + len(cfg.lambdas))
    bar = tqdm(total=n_models, desc=f"seed {seed}: models", disable=not progress)
    for fold in range(len(data["splits"])):
        fit_idx, val_idx, te, train_set, val_seg, test_seg = _fold_data(cfg, data, fold)
        test_p = [seg_cases[i] for i in te]
        for name in names:
            t0 = time.perf_counter()
            cands = cfg.lambdas if name == PAPER_ARM else (None,)
            trained = {}
            for lam in cands:
                loss = arms(cfg, predictor, lam)[name]
                trained[lam] = train_segmenter(cfg, loss, train_set, seed, frozen=_auxiliary(loss, predictor))
                predictor.cpu()
                bar.update()
            best = cands[0]
            if len(cands) > 1:
                val_p = [seg_cases[i] for i in val_idx]
                scores = {}
                for lam, result in trained.items():
                    vm = predict_masks(result.model.cpu(), val_seg)
                    res = evaluate_segmentations(val_p, vm, data["ref_doses"][val_idx], max_iter=cfg.plan_iter)
                    scores[lam] = float(np.mean([r["rmae"] for r in res]))
                best = min(cands, key=lambda lam: (scores[lam], lam))   # ties: the smaller lambda
                val_rmae[fold] = {f"{lam:g}": scores[lam] for lam in cands}
            if name == PAPER_ARM:
                chosen[fold] = float(best)
            result = trained[best]
            model = result.model.cpu().eval()
            pr = predict_probs(model, test_seg)
            pred = pr >= 0.5
            res = evaluate_segmentations(test_p, pred, data["ref_doses"][te], max_iter=cfg.plan_iter,
                                         keep_doses=True, probs=pr)
            for i, r, m, q in zip(te, res, pred, pr):
                rows[name][i], masks[name][i], probs[name][i], doses[name][i] = r, m, q, r["dose"]
            history[name] += [{**rec, "fold": fold} for rec in result.history.records]
            models[name].append(model)
            seconds[name] += time.perf_counter() - t0
    bar.close()
    tested = sorted(int(i) for _, te in data["splits"] for i in te)
    metrics = {a: {k: [float(rows[a][i][k]) for i in tested] for k in METRICS} for a in names}
    acc = data["predictor_accuracy"]
    extras = {"lambda": {str(f): v for f, v in chosen.items()},
              "val_rmae": {str(f): v for f, v in val_rmae.items()},
              "updates": update_count(cfg),
              "predictor": {"mae_gy": acc["mae_gy"], "mae_pct_rx": acc["mae_pct_rx"], "by_kind": acc["by_kind"],
                            "train_loss": [r["train_loss"] for r in data["predictor_history"]],
                            "seconds": data["predictor_seconds"]},
              "mimics": mimic_counts(seg_cases).tolist()}
    return {"cases": tested, "metrics": metrics, "history": history, "seconds": seconds, "extras": extras,
            "live": {"masks": {a: masks[a][tested] for a in names}, "probs": {a: probs[a][tested] for a in names},
                     "doses": {a: doses[a][tested] for a in names}, "models": models}}


def _case_means(study, metric: str, arm: str) -> np.ndarray:
    """Per-case values of ``metric`` for ``arm``, averaged over seeds (NaN where every seed is NaN)."""
    v = study.metric(metric, arm)
    out = np.full(v.shape[1], np.nan)
    ok = np.isfinite(v).any(0)
    out[ok] = np.nanmean(v[:, ok], axis=0)
    return out


def _mean_sd(v, digits: int) -> str:
    v = np.asarray(v, float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return "–"
    sd = f" ± {v.std(ddof=1):.{digits}f}" if v.size > 1 else ""
    return f"{v.mean():.{digits}f}{sd}"


_METRIC_NAMES = {"rmae": "RMAE", "hd_mm": "HD (mm)", "hd95_mm": "HD95 (mm)", "dice": "Dice", "mae_gy": "MAE (Gy)",
                 "far_fp": "far FP voxels", "empty": "empty masks", "p_gtv": "p inside GTV"}


def _untestable(study, claim) -> str | None:
    """Why ``claim`` cannot be tested on ``study`` (fewer than 2 cases with values in both arms), else None."""
    ok = np.isfinite(_case_means(study, claim.metric, claim.a)) & np.isfinite(_case_means(study, claim.metric, claim.b))
    if ok.sum() >= 2:
        return None
    return (f"{claim.statement} ({claim.metric}, {claim.b} vs {claim.a}): **not testable**; only {int(ok.sum())} "
            f"test case(s) have a value in both arms (distances are undefined for an empty prediction).")


def judged(study, claims=CLAIMS) -> tuple:
    """``(rows, notes)``: :func:`rtlearn.metrics.stats.judge` of ``claims`` (default :data:`CLAIMS`; or
    :data:`EQ4_CLAIMS`) on ``study`` (one Holm correction), and a note for each claim that cannot be tested
    (an arm without defined values, e.g. HD when every prediction is empty), which is left out of the test."""
    missing = sorted({a for c in claims for a in (c.a, c.b)} - set(study.arms))
    if missing:
        raise ValueError(f"the study has no arm(s) {missing}; it has {study.arms}")
    notes = {c: _untestable(study, c) for c in claims}
    testable = [c for c in claims if notes[c] is None]
    return (judge(study, testable) if testable else []), [n for n in notes.values() if n]


def verdicts(study, claims=CLAIMS) -> str:
    """The verdict lines of the chapter: ``format_verdicts(judge(study, claims))`` (:func:`judged`), plus a line
    for each claim that cannot be tested."""
    rows, notes = judged(study, claims)
    return "\n".join(([format_verdicts(rows)] if rows else []) + [f"- {n}" for n in notes])


def _claims_table(study, claims) -> str:
    rows_judged, notes = judged(study, claims)
    named = [{**r, "a": f"{_METRIC_NAMES.get(r['metric'], r['metric'])}: {r['a']}"} for r in rows_judged]
    return "\n".join(([format_comparison(named, digits=3)] if named else []) + [f"\n{n}" for n in notes])


def tables(study) -> Markdown:
    """The chapter's tables from a :class:`rtlearn.study.Study` (live or recorded), as Markdown.

    1. Every arm: RMAE, HD, HD95 and Dice as mean ± sd over the test cases (each case averaged over seeds
       first; the paper's convention, its rows below), the paired Dice difference to the baseline (median,
       bootstrap 95 % interval), far false-positive voxels and the test cases that have any (sums over the
       cases, mean over seeds), empty predictions, and the mean probability inside the true GTV.
       HD and HD95 skip empty predictions.
    2. The paper's claims (:data:`CLAIMS`) judged by :func:`rtlearn.metrics.stats.judge` (:func:`judged`):
       the paper's difference, ours as mean ± sd over seeds, the median paired difference with its
       bootstrap 95 % interval, the Holm-adjusted p-value and the verdict; a note for a claim that
       cannot be tested.
    3. The same for :data:`EQ4_CLAIMS` (the paper's loss as written), Holm-adjusted on its own.
    """
    missing = sorted(set(ARMS) - set(study.arms))
    if missing:
        raise ValueError(f"the study has no arm(s) {missing}; it has {study.arms}")
    base_dice = study.metric("dice", BASELINE)
    rows = []
    for arm in study.arms:
        cells = [arm] + [_mean_sd(_case_means(study, m, arm), d)
                         for m, d in (("rmae", 3), ("hd_mm", 1), ("hd95_mm", 1), ("dice", 3))]
        if arm == BASELINE:
            cells.append("")
        else:
            c = paired_comparison(base_dice, study.metric("dice", arm))
            cells.append(f"{c['diff']:+.3f} [{c['ci_lo']:+.3f}, {c['ci_hi']:+.3f}]")
        ffp = study.metric("far_fp", arm)
        cells.append(f"{np.nanmean(np.nansum(ffp, axis=1)):.0f}")
        cells.append(f"{np.nanmean(np.sum(ffp > 0, axis=1)):.1f}")
        cells.append(f"{np.nanmean(np.nansum(study.metric('empty', arm), axis=1)):.1f}")
        cells.append(_mean_sd(_case_means(study, "p_gtv", arm), 2))
        rows.append(cells)
    for key, label in (("bce_dice", "the paper: BCE+SoftDice"), ("doselo", "the paper: DOSELO λ=1")):
        rows.append([label, "{:.3f} ± {:.3f}".format(*PAPER["RMAE"][key]),
                     "{:.1f} ± {:.1f}".format(*PAPER["HD_mm"][key]), "–",
                     "{:.3f} ± {:.3f}".format(*PAPER["Dice"][key]), "", "–", "–", "–", "–"])
    n, s = len(study.cases), len(study.seeds)
    summary = markdown_table(["Model", "RMAE", "HD (mm)", "HD95 (mm)", "Dice", "Dice − baseline [95 % CI]",
                              "far FP voxels", "cases with far FP", "empty masks", "p inside GTV"], rows)
    return Markdown(f"**All arms** ({n} test cases, {s} seed(s); mean ± sd over the cases; far FP, cases and "
                    f"empty masks: totals over the cases, mean over seeds):\n\n{summary}\n\n"
                    f"**The paper's claims for the dose term** (ours: mean ± sd over seeds; difference: median over "
                    f"the cases of B − A; the Dice claim is tested against a margin of {DICE_MARGIN}):\n\n"
                    f"{_claims_table(study, CLAIMS)}\n\n"
                    f"**The same claims for the paper's loss as written** (Eq. 4, soft probabilities; a Holm "
                    f"family of its own):\n\n{_claims_table(study, EQ4_CLAIMS)}")


def lambda_table(study) -> Markdown:
    """The lambda of the dose term chosen in every seed and fold, with the mean validation RMAE of every
    candidate over seeds and folds (from the records' ``extras``)."""
    seeds = study.seeds
    ext = {s: study.extras(s) for s in seeds}
    folds = sorted({f for e in ext.values() for f in e.get("lambda", {})}, key=int)
    if not folds:
        return Markdown("No lambda was chosen (one candidate).")
    rows = [[str(s)] + [f"{ext[s]['lambda'].get(f, math.nan):g}" for f in folds] for s in seeds]
    head = ["seed"] + [f"fold {int(f) + 1}" for f in folds]
    cands = sorted({c for e in ext.values() for v in e.get("val_rmae", {}).values() for c in v}, key=float)
    if cands:
        means = {c: np.mean([e["val_rmae"][f][c] for e in ext.values() for f in e.get("val_rmae", {})
                             if c in e["val_rmae"][f]]) for c in cands}
        note = "; ".join(f"λ = {c}: {means[c]:.3f}" for c in cands)
        note = f"\n\nMean validation RMAE of each candidate (over seeds and folds): {note}."
    else:
        note = ""
    return Markdown(f"**λ chosen on the validation cases** (units of Rx²):\n\n{markdown_table(head, rows)}{note}")


def _mean_over_cases(study, metric: str, arm: str) -> float:
    """Mean over the test cases of the seed-averaged values of ``metric`` (:func:`_case_means`); NaN if none."""
    v = _case_means(study, metric, arm)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else math.nan


def study_summary(study) -> dict:
    r"""The numbers the chapter cites from a :class:`rtlearn.study.Study` (recorded or live), in one dict.

    Every per-case value is first averaged over the seeds (:func:`_case_means`), as in :func:`tables`.

    Returns
    -------
    dict
        ``n_cases``, ``n_seeds``;
        ``arms``: ``{arm: {...}}`` with ``rmae``, ``hd_mm``, ``dice``, ``p_gtv`` (mean over the test cases;
        HD skips empty predictions), ``far_cases`` (test cases with a distant false positive, mean over
        seeds), ``empty`` (empty predicted masks over the test cases, mean over seeds) and ``dim_cases``
        (test cases whose mean probability inside the true GTV is below 0.5);
        ``rmae_change``: ``{arm: mean RMAE / the baseline's mean RMAE - 1}``;
        ``claims``: ``{"dose_term": rows, "eq4": rows}``, the rows of :func:`judged` for :data:`CLAIMS` and
        :data:`EQ4_CLAIMS` (testable claims only, in their order);
        ``lambda``: ``{"mode", "mode_count", "n"}``, the most often chosen :math:`\lambda` of DOSELO-ST over
        seeds and folds (ties: the smallest), how often, and of how many choices; None if none was recorded;
        ``mimics``: ``{"mean", "patients", "n"}``, mimics per segmentation patient (first seed's record),
        patients with at least one, patients; None if not recorded;
        ``softdice_vs_code``: :func:`rtlearn.metrics.stats.paired_comparison` of the RMAE of
        BCE + SoftDice against BCE with ``pos_weight = 2`` (a description, not one of the claims).

    Raises
    ------
    ValueError
        If the study lacks one of the four arms (:data:`ARMS`).
    """
    missing = sorted(set(ARMS) - set(study.arms))
    if missing:
        raise ValueError(f"the study has no arm(s) {missing}; it has {study.arms}")
    arms_out = {}
    for arm in study.arms:
        row = {m: _mean_over_cases(study, m, arm) for m in ("rmae", "hd_mm", "dice", "p_gtv")}
        row["far_cases"] = float(np.mean(np.sum(study.metric("far_fp", arm) > 0, axis=1)))
        row["empty"] = float(np.mean(np.sum(study.metric("empty", arm), axis=1)))
        row["dim_cases"] = int(np.sum(_case_means(study, "p_gtv", arm) < 0.5))
        arms_out[arm] = row
    base = arms_out[BASELINE]["rmae"]
    lams = [float(v) for s in study.seeds for v in study.extras(s).get("lambda", {}).values()]
    if lams:
        vals, counts = np.unique(lams, return_counts=True)
        lam = {"mode": float(vals[np.argmax(counts)]), "mode_count": int(counts.max()), "n": len(lams)}
    else:
        lam = None
    mim = study.extras(study.seeds[0]).get("mimics")
    if mim is not None:
        mim = np.asarray(mim)
        mim = {"mean": float(mim.mean()), "patients": int(np.sum(mim > 0)), "n": int(mim.size)}
    return {"n_cases": len(study.cases), "n_seeds": len(study.seeds), "arms": arms_out,
            "rmae_change": {arm: row["rmae"] / base - 1 for arm, row in arms_out.items()},
            "claims": {"dose_term": judged(study, CLAIMS)[0], "eq4": judged(study, EQ4_CLAIMS)[0]},
            "lambda": lam, "mimics": mim,
            "softdice_vs_code": paired_comparison(study.metric("rmae", CODE_ARM), study.metric("rmae", BASELINE))}


# ---------------------------------------------------------------------------------------------------------------
# the motivating demonstration
# ---------------------------------------------------------------------------------------------------------------
def blob_demo(seed: int = 3, shape=(64, 64), spacing=3.6, blob_radius_mm: float = 5.0, shift_mm: float = 3.6,
              max_iter: int = 100) -> dict:
    r"""A distant false positive costs little Dice but moves the dose; a boundary error the opposite.

    On one fixed phantom brain, two imperfect GTVs are planned and compared with
    the plan on the true GTV: (a) the true GTV plus one ball of
    ``blob_radius_mm`` placed as far from it as possible inside the brain's
    body; (b) the true GTV shifted by ``shift_mm`` (one voxel) along x.

    Returns ``{"patient", "ref", name: {"mask", "dose", "dice", "hd_mm", "rmae", "mae_gy"}}``.
    """
    p = make_patient("brain", seed, dims=2, shape=tuple(shape), spacing=spacing)
    gt = p.masks["GTV"]
    inner = ndimage.distance_transform_edt(p.body, sampling=p.spacing) > 15.0  # inside the skull
    far = ndimage.distance_transform_edt(~gt, sampling=p.spacing) * inner
    c = np.unravel_index(np.argmax(far), gt.shape)
    yy, xx = np.indices(gt.shape)
    ball = np.hypot((yy - c[0]) * p.spacing[0], (xx - c[1]) * p.spacing[1]) <= blob_radius_mm
    variants = {"blob": gt | (ball & p.body), "shift": shift_target(gt, (0.0, shift_mm), p.spacing, p.body)}
    ref = plan_dose(p, gt, max_iter=max_iter)
    out = {"patient": p, "ref": ref}
    for name, m in variants.items():
        d = plan_dose(p, m, max_iter=max_iter)
        out[name] = {"mask": m, "dose": d, "dice": dice(m, gt), "hd_mm": hausdorff(m, gt, p.spacing),
                     "rmae": rmae(d, ref, mask=p.body, rx=RX_GY), "mae_gy": float(np.abs(d - ref)[p.body].mean())}
    return out


# ---------------------------------------------------------------------------------------------------------------
# the exploit: a learned surrogate that reads mask amplitude
# ---------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def amplitude_response(data: dict, amplitudes=None, cases=None) -> dict:
    r"""How the frozen predictor answers a *dimmed* true GTV: the mask :math:`a \cdot S_T` for amplitudes :math:`a`.

    For every segmentation patient in ``cases`` (default all) and amplitude :math:`a` the predictor sees
    :math:`a S_T` with the patient's OARs and CT. Returned (arrays ``len(amplitudes) x len(cases)``):
    ``gtv_dose`` (mean predicted dose inside the GTV, Gy), ``soft`` (the dose term of the soft loss,
    :math:`\frac1N\sum_i ((D_P^i - \hat D_P^i)/60\,\mathrm{Gy})^2`, Rx²: what a dimmed segmentation
    costs in the paper's loss) and ``straight`` (the same with the straight-through mask
    :math:`\mathbb 1[a \ge 0.5]\, S_T`); plus ``amplitudes``, ``cases`` and ``true_gtv_dose`` (the
    predictor's mean GTV dose for the true mask, per case).
    """
    amps = np.linspace(0.0, 1.0, 21) if amplitudes is None else np.asarray(amplitudes, float)
    if amps.ndim != 1 or amps.size == 0 or not np.all(np.isfinite(amps)) or amps.min() < 0 or amps.max() > 1:
        raise ValueError(f"amplitudes must be a non-empty 1-D array in [0, 1], got {amplitudes!r}")
    seg_cases = data["seg_cases"]
    cases = list(range(len(seg_cases))) if cases is None else [int(c) for c in cases]
    predictor = data["predictor"]
    seg = segmentation_data([seg_cases[c] for c in cases], predictor)
    t = {k: torch.as_tensor(seg[k]) for k in ("target", "oars", "ct", "dose_mask", "true_dose")}
    gtv = seg["target"][:, 0] > 0
    out = {k: np.zeros((amps.size, len(cases))) for k in ("gtv_dose", "soft", "straight")}
    for j, a in enumerate(amps):
        for key, mask in (("soft", t["target"] * a), ("straight", t["target"] * float(a >= 0.5))):
            x = torch.cat([mask, t["oars"], t["ct"]], 1)
            d = predictor(x, return_stages=False) * t["dose_mask"]
            out[key][j] = (((d - t["true_dose"]) / RX_GY) ** 2).mean(dim=(1, 2, 3)).numpy()
            if key == "soft":
                out["gtv_dose"][j] = [float(di[0][g].mean()) for di, g in zip(d.numpy(), gtv)]
    true = [float(di[0][g].mean()) for di, g in zip(seg["true_dose"], gtv)]
    return {"amplitudes": amps, "cases": cases, "true_gtv_dose": np.asarray(true), **out}


def exploit_figure(response: dict, study=None):
    r"""The exploit of the soft dose term, in two or three panels.

    (a) the predictor's mean dose inside the GTV against the amplitude of the true mask (median and
    inter-quartile range over patients); (b) the dose term of the soft and the straight-through loss
    against the amplitude (median over patients); (c) with a study (live or recorded): the mean predicted
    probability inside the true GTV of every test case for every arm, with the threshold 0.5.
    """
    import matplotlib.pyplot as plt

    a = response["amplitudes"]
    k = 3 if study is not None else 2
    fig, axes = plt.subplots(1, k, figsize=(min(11.0, 4.2 * k), 3.6), dpi=80)
    q = np.percentile(response["gtv_dose"], [25, 50, 75], axis=1)
    ax = axes[0]
    ax.fill_between(a, q[0], q[2], color="C0", alpha=0.25, lw=0)
    ax.plot(a, q[1], "C0-o", ms=3, label="mask $a \\cdot S_T$")
    ax.axhline(float(np.median(response["true_gtv_dose"])), color="k", ls="--", lw=1, label="true mask ($a$ = 1)")
    ax.axhline(RX_GY, color="C3", ls=":", lw=1, label=f"prescription {RX_GY:g} Gy")
    ax.set_xlabel("mask amplitude $a$")
    ax.set_ylabel("predicted mean GTV dose (Gy)")
    ax.set_title("(a) the predictor reads amplitude", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    ax = axes[1]
    for key, label, style in (("soft", "soft (the paper's form)", "C0-o"),
                              ("straight", "straight-through", "C1-s")):
        ax.plot(a, np.median(response[key], axis=1), style, ms=3, label=label)
    ax.axvline(0.5, color="gray", lw=0.8, ls=":")
    ax.set_xlabel("mask amplitude $a$")
    ax.set_ylabel("dose term $L_{DSL}$ (Rx$^2$)")
    ax.set_title("(b) what a dimmed GTV costs", fontsize=10)
    ax.legend(fontsize=8)
    if study is not None:
        probability_figure(study, ax=axes[2])
    return fig


def probability_figure(study, ax=None):
    """The mean predicted probability inside the true GTV of every test case (seed means), one column per arm,
    with the median (black bar) and the threshold 0.5: a dimmed segmentation lies below it."""
    import matplotlib.pyplot as plt

    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=80)
    for j, arm in enumerate(study.arms):
        v = _case_means(study, "p_gtv", arm)
        v = v[np.isfinite(v)]
        x = j + np.random.default_rng(j).uniform(-0.2, 0.2, v.size)
        ax.plot(x, v, "o", ms=3, alpha=0.6, color=f"C{j}")
        if v.size:
            ax.plot([j - 0.3, j + 0.3], [np.median(v)] * 2, "k-", lw=2)
    ax.axhline(0.5, color="gray", lw=0.8, ls=":")
    ax.set_xticks(range(len(study.arms)), study.arms, rotation=20, fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("mean probability inside the true GTV")
    ax.set_title("(c) what the segmenters learned" if fig is None else "what the segmenters learned", fontsize=10)
    return ax.figure


# ---------------------------------------------------------------------------------------------------------------
# figures
# ---------------------------------------------------------------------------------------------------------------
def blob_figure(demo: dict):
    """The plan on the true GTV and the dose differences (Gy) of the blob and the shifted GTV (:func:`blob_demo`)."""
    import matplotlib.pyplot as plt

    p = demo["patient"]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.6), dpi=80)
    dose_slice(axes[0], demo["ref"], {"GTV": p.masks["GTV"]}, spacing=p.spacing, title="Plan on the true GTV")
    ext = image_extent(p.shape, p.spacing)
    for ax, name, title in ((axes[1], "blob", "GTV + distant blob"), (axes[2], "shift", "GTV shifted 1 voxel")):
        im = ax.imshow(demo[name]["dose"] - demo["ref"], cmap="RdBu_r", vmin=-40, vmax=40, extent=ext)
        draw_contour(ax, demo[name]["mask"], p.spacing, color="k", linewidth=1)
        ax.set_title(f"{title}: dose difference\nDice {demo[name]['dice']:.2f}, RMAE {demo[name]['rmae']:.2f}")
        ax.set_xlabel("x (mm)")
        ax.set_ylabel("y (mm)")
        fig.colorbar(im, ax=ax, label="Δ dose (Gy)")
    return fig


def pipeline_figure():
    """The DOSELO pipeline as a block diagram (after Fig. 1 of Rüfenacht et al. 2023)."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch

    fig, ax = plt.subplots(figsize=(10, 3.6), dpi=80)
    ax.set_xlim(0, 10)
    ax.set_ylim(0, 4)
    ax.axis("off")
    w, h = 1.6, 0.9                                            # box size
    top, mid, bottom = 2.6, 1.55, 0.5                          # rows of boxes (lower edges)
    boxes = {"MR": (0.1, top, "MR: T1, T1c,\nT2, FLAIR", "#f2f2f2"),
             "MS": (1.9, top, "$M_S$\n(U-Net, trained)", "#cfe8cf"),
             "Shat": (3.8, top, r"$\hat S_T$ (soft)", "#f2f2f2"),
             "aux": (3.8, mid, "$S_{OR}$, $I_{CT}$", "#f2f2f2"),
             "ST": (3.8, bottom, "$S_T$ (true GTV)", "#f2f2f2"),
             "MD1": (5.7, top, "$M_D$ (frozen\ncascade U-Net)", "#dde3f0"),
             "MD2": (5.7, bottom, "$M_D$ (frozen\ncascade U-Net)", "#dde3f0"),
             "L": (7.9, mid, "$L_{BCE} + \\lambda L_{DSL}$", "#f6dcc8")}
    for x, y, text, color in boxes.values():
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.05", fc=color, ec="k"))
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=9)

    def right(key, dy=0.0):
        x, y = boxes[key][:2]
        return x + w, y + h / 2 + dy

    def left(key, dy=0.0):
        x, y = boxes[key][:2]
        return x, y + h / 2 + dy

    links = [(right("MR"), left("MS")), (right("MS"), left("Shat")), (right("Shat"), left("MD1")),
             (right("ST"), left("MD2")), (right("aux"), left("MD1", -0.25)), (right("aux"), left("MD2", 0.25)),
             (right("MD1"), left("L", 0.3)), (right("MD2"), left("L", -0.3))]
    for start, end in links:
        ax.annotate("", end, start, arrowprops=dict(arrowstyle="->", lw=1.2))
    ax.annotate("", (8.9, 1.5), (4.6, 0.45), arrowprops=dict(arrowstyle="->", lw=1, connectionstyle="arc3,rad=0.25"))
    ax.text(7.6, 0.1, "$S_T$ (for $L_{BCE}$)", fontsize=8)
    ax.text(7.6, 3.25, r"$\hat D_P$", fontsize=10)
    ax.text(7.6, 0.6, "$D_P$", fontsize=10)
    ax.annotate("", (2.7, 2.55), (8.7, 1.5), arrowprops=dict(arrowstyle="->", lw=1, ls="--", color="C3",
                                                             connectionstyle="arc3,rad=-0.25"))
    ax.text(2.7, 1.9, "gradient (through $M_D$,\nnot into it)", color="C3", fontsize=8, ha="center")
    ax.set_title("DOSELO (after Fig. 1 of Rüfenacht et al. 2023)")
    return fig


def perturbation_figure(data: dict, case: int = 1):
    """The plans (Gy) of one predictor patient: on its GTV and on each perturbed GTV (contour: the target)."""
    import matplotlib.pyplot as plt

    md = data["train_md"]
    sel = np.flatnonzero(md["case"] == case)
    if sel.size == 0:
        raise ValueError(f"no predictor patient {case}; there are {len(data['dose_cases'])}")
    fig, axes = plt.subplots(1, len(sel), figsize=(min(11.0, 3.3 * len(sel)), 3.2), dpi=80, squeeze=False)
    for ax, j in zip(axes[0], sel):
        dose_slice(ax, md["target"][j, 0], {"target": md["input"][j, 0] > 0}, spacing=data["dose_cases"][case].spacing,
                   title=str(md["kind"][j]), colorbar=(j == sel[-1]))
    return fig


def predictor_figure(data: dict, kind: str = "blobs"):
    """Planned dose, :math:`M_D`'s prediction (both Gy) and their difference on the first held-out ``kind`` sample."""
    import matplotlib.pyplot as plt

    held = data["held_out"]
    js = np.flatnonzero(held["kind"] == kind)
    if js.size == 0:
        raise ValueError(f"no held-out sample of kind {kind!r}; kinds: {sorted(set(held['kind'].tolist()))}")
    j = int(js[0])
    with torch.no_grad():
        pred = data["predictor"](torch.as_tensor(held["input"][j:j + 1]), return_stages=False)[0, 0].numpy()
    pred = np.clip(pred * held["mask"][j, 0], 0, None)   # inside the body (the loss only sees the body)
    sp = data["seg_cases"][int(held["case"][j])].spacing
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4), dpi=80)
    m = {"target": held["input"][j, 0] > 0}
    dose_slice(axes[0], held["target"][j, 0], m, spacing=sp, title=f"planned ({kind} target)")
    dose_slice(axes[1], pred, m, spacing=sp, title="$M_D$ prediction")
    im = axes[2].imshow(pred - held["target"][j, 0], cmap="RdBu_r", vmin=-15, vmax=15,
                        extent=image_extent(pred.shape, sp))
    axes[2].set_title("prediction − plan")
    axes[2].set_xlabel("x (mm)")
    axes[2].set_ylabel("y (mm)")
    fig.colorbar(im, ax=axes[2], label="Δ dose (Gy)")
    return fig


def rmae_figure(study, arms_shown=None):
    """Per-case RMAE of every arm (seed means), cases sorted by the baseline's RMAE (after the paper's Fig. 2)."""
    import matplotlib.pyplot as plt

    names = list(arms_shown or study.arms)
    base = _case_means(study, "rmae", BASELINE)
    order = np.argsort(-base, kind="stable")
    fig, ax = plt.subplots(figsize=(11, 3.8), dpi=80)
    width = 0.8 / len(names)
    for k, name in enumerate(names):
        v = _case_means(study, "rmae", name)[order]
        ax.bar(np.arange(len(order)) + (k - len(names) / 2 + 0.5) * width, v, width, label=name)
    ax.set_xticks(np.arange(len(order)), [str(study.cases[i]) for i in order])
    ax.set_xlabel("test case (sorted by the baseline's RMAE)")
    ax.set_ylabel("RMAE (planned on prediction vs truth)")
    ax.set_ylim(0, 1.05)
    ax.legend(ncol=4, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2))
    return fig


def worst_cases_figure(record: dict, data: dict, arms_shown=None, n: int = 3):
    """The baseline's ``n`` worst test cases: T1c with the true GTV, the reference dose and the dose differences
    :math:`D_{S_T} - D_{\\hat S_T}` (Gy) of ``arms_shown`` with their predicted GTVs (white), from a live run."""
    import matplotlib.pyplot as plt

    if "live" not in record:
        raise ValueError("the worst-case figure needs a live run record (run(...)), with its masks and doses")
    names = list(arms_shown or [a for a in record["metrics"]][:4])
    cases = record["cases"]
    rm = {a: np.asarray(record["metrics"][a]["rmae"]) for a in names}
    dc = {a: np.asarray(record["metrics"][a]["dice"]) for a in names}
    base = np.asarray(record["metrics"][BASELINE]["rmae"])
    worst = np.argsort(-base, kind="stable")[:n]
    fig, axes = plt.subplots(len(worst), 2 + len(names), figsize=(min(11.0, 2.6 * (2 + len(names))), 2.6 * len(worst)),
                             dpi=80, squeeze=False)
    im0 = im = None
    for row, i in enumerate(worst):
        case = cases[i]
        p = data["seg_cases"][case]
        ref = data["ref_doses"][case]
        ext = image_extent(ref.shape, p.spacing)           # every panel in mm, row 0 at the top
        axes[row, 0].imshow(p.mr["T1c"], cmap="gray", extent=ext)
        draw_contour(axes[row, 0], p.masks["GTV"], p.spacing, color="k", linewidth=1)
        axes[row, 0].set_title(f"case {case}: T1c", fontsize=9)
        im0 = axes[row, 1].imshow(ref, cmap="jet", vmin=0, vmax=66, extent=ext)
        axes[row, 1].set_title("reference dose", fontsize=9)
        for col, name in enumerate(names, start=2):
            mask = record["live"]["masks"][name][i]
            im = axes[row, col].imshow(ref - record["live"]["doses"][name][i], cmap="RdBu_r", vmin=-40, vmax=40,
                                       extent=ext)
            draw_contour(axes[row, col], mask, p.spacing, color="w", linewidth=0.8)   # nothing if empty
            axes[row, col].set_title(f"Ref − {name}\nRMAE {rm[name][i]:.2f}, Dice {dc[name][i]:.2f}", fontsize=8)
    for ax in axes.ravel():
        ax.axis("off")
    fig.colorbar(im0, ax=axes[:, 1], label="dose (Gy)", shrink=0.6)
    fig.colorbar(im, ax=axes[:, 2:], label="dose difference (Gy)", shrink=0.6)
    return fig


def figures(study, *, record: dict | None = None, data: dict | None = None, arms_shown=None) -> dict:
    """The results figures: ``rmae`` (:func:`rmae_figure`, from any study) and, for a live run with its
    data, ``worst_cases`` (:func:`worst_cases_figure`)."""
    out = {"rmae": rmae_figure(study)}
    if record is not None and data is not None and "live" in record:
        out["worst_cases"] = worst_cases_figure(record, data, arms_shown)
    return out
