r"""MSE vs MAE vs MAE + DVH loss for dose prediction (DeepDoseNet, Soomro et al.).

One DeepDoseNet (:class:`rtlearn.models.DeepDoseNet`, ReLU output, scaled by
70 Gy) is trained per *arm*, with the same data split, initial weights and
batch order; an arm is a name and a loss object (:data:`ARMS`):

* ``"MSE"``: :class:`rtlearn.losses.MaskedMSELoss` over the possible-dose mask;
* ``"MAE"``: :class:`rtlearn.losses.MaskedMAELoss` over the possible-dose mask;
* ``"MAE+DVH"``: :class:`rtlearn.losses.MAEPlusDVHLoss`,
  :math:`\mathrm{MAE} + w\,L_{DVH}` with the relaxed DVH of Nguyen et al. 2020.

Each model is trained with :func:`rtlearn.train.fit` and scored with the
OpenKBP dose and DVH scores (:mod:`rtlearn.metrics.openkbp`) on the validation
and test patients, as in Table 1 of Soomro et al. Two data sources share this
code path:

* ``"phantom"`` (quick profile): 2D head-and-neck phantom slices
  (:class:`rtlearn.phantom.PhantomDoseDataset`, OpenKBP's ROI names), CPU;
* ``"openkbp"`` (study and full profiles): the OpenKBP challenge data
  (:class:`rtlearn.data.openkbp.OpenKBPDataset`), official split; 2D slices at
  64² on a CPU (study), 3D on a GPU (full).

The study and full profiles also train the other arms of the closing benchmark
(:data:`BENCHMARK_ARMS`: the sharp loss at two γ and the sharp loss + DVH, see
:mod:`rtlearn.experiments.dose_benchmark`) and a sweep of the DVH weight
(:data:`DVH_SWEEP`), so that one recorded study serves both chapters.

The chapter's shape::

    from rtlearn.experiments import dvh_loss as ex
    from rtlearn.metrics.stats import judge, format_verdicts
    from rtlearn.study import from_runs
    cfg = ex.default_config()                   # sizes of the active profile
    record = ex.run(cfg, seed=0)                # every arm: seeded model + loss object + fit
    live = from_runs("dvh_loss", "quick", cfg, {0: record})
    ex.tables(live)                             # Table 1, the claims, per structure, leaderboard
    print(format_verdicts(judge(live, ex.CLAIMS)))

Choices the paper leaves open (ours, stated): the DVH-loss weight ``w``
(default 80, i.e. the DVH term expressed as the area between the relaxed DVH
curves over 0-80 Gy, in Gy, so that it is on the scale of the MAE); 64
thresholds over 0-80 Gy with steepness 1; "decay = 0.0001" read as Adam's
weight decay (with the paper's betas 0.9, 0.99); model selection by the lowest
validation loss of each model.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
import torch
from scipy.optimize import linprog
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from .. import dvh as exact_dvh
from .. import plotting
from ..config import check_overrides, pick
from ..data.openkbp import dataset as openkbp
from ..data.openkbp.eval import predict_patient
from ..data.openkbp.format import spacing_zyx, to_zyx
from ..losses.dose import MaskedMAELoss, MaskedMSELoss, masked_mae
from ..losses.dvh import DVHLoss, MAEPlusDVHLoss, dvh_loss, soft_dvh
from ..losses.sharp import SharpLoss
from ..metrics.openkbp import OAR_METRICS, TARGET_METRICS, dose_error, dvh_metrics_openkbp
from ..metrics.stats import (Claim, format_comparison, holm, judge, paired_comparison, seed_summary,
                             wilcoxon_summary)
from ..models.deepdosenet import DeepDoseNet
from ..models.scaled import ScaledDose
from ..phantom import PhantomDoseDataset, make_patient, optimise_plan
from ..phantom.anatomy import ROI_NAMES as PHANTOM_ROI_NAMES
from ..rois import OARS, ROI_NAMES, TARGET_DOSE_GY, TARGETS
from ..tables import Markdown, markdown_table
from ..train import fit, seeded
from .openkbp import LEADERBOARD_TOP5

__all__ = [
    "PAPER_TABLE1", "LEADERBOARD", "C3D_SINGLE_MODEL", "paper_score",
    "Arm", "ARMS", "ARM_NAMES", "CLAIMS", "Config", "default_config", "TINY",
    "ExperimentData", "load_data", "make_model", "metric_names", "structure_metric", "evaluate_model", "run",
    "scores", "best_arm", "table1", "claims_table", "structure_means", "structure_table", "leaderboard_table", "tables",
    "SHARP_BEST_GAMMA", "DVH_SWEEP", "BENCHMARK_ARMS", "STUDY_ARMS", "SharpPlusDVHLoss", "sweep_arm", "sharp_arm",
    "prescription_dose", "evaluate_baseline", "baseline_scores", "dose_error_in_structures",
    "sweep_weights", "sweep_table", "chosen_weight", "dose_error_parts", "dose_error_parts_table",
    "fit_profile", "example_case", "relaxed_vs_exact", "dvh_loss_gradient",
    "plot_learning_curves", "plot_structure_errors", "plot_sample",
]

# ---- the paper's and the challenge's published numbers, quoted (never computed here) ------------------------
#: Soomro et al. (DeepDoseNet), Table 1: (loss, phase) -> (DVH score Gy, dose score Gy, N patients).
PAPER_TABLE1 = {
    ("MSE", "validation"): (3.2, 3.7, 40), ("MSE", "test"): (3.0, 3.6, 100),
    ("MAE", "validation"): (2.4, 3.6, 40), ("MAE", "test"): (2.3, 3.5, 100),
    ("MAE+DVH", "validation"): (1.9, 2.3, 40), ("MAE+DVH", "test"): (1.6, 2.0, 100),
}
#: Final blinded OpenKBP test leaderboard, top five, as published by the organisers (Babier et al. 2021):
#: (rank, team, dose score Gy, DVH score Gy); the one copy lives in the OpenKBP chapter's module.
LEADERBOARD = LEADERBOARD_TOP5
#: C3D's authors, single model with test-time augmentation, as they published it: (dose score, DVH score).
C3D_SINGLE_MODEL = (2.46, 1.58)

_SCORES = {"dvh_score": 0, "dose_score": 1}


def paper_score(arm: str, phase: str, score: str) -> float:
    """The paper's ``score`` (``"dose_score"`` or ``"dvh_score"``, Gy) of ``arm`` on ``phase`` (its Table 1)."""
    if score not in _SCORES:
        raise ValueError(f"score must be one of {sorted(_SCORES)}, got {score!r}")
    if (arm, phase) not in PAPER_TABLE1:
        raise ValueError(f"the paper's Table 1 has no ({arm!r}, {phase!r}); it has {sorted(PAPER_TABLE1)}")
    return PAPER_TABLE1[(arm, phase)][_SCORES[score]]


# ---- the arms: a name and a loss object -------------------------------------------------------------------------
@dataclass(frozen=True)
class Arm:
    """One arm of the comparison: ``loss(cfg)`` builds the loss object, called as ``loss(pred, *batch[targets])``."""

    loss: Callable
    targets: tuple


def _mse(cfg) -> MaskedMSELoss:
    return MaskedMSELoss()


def _mae(cfg) -> MaskedMAELoss:
    return MaskedMAELoss()


def _dvh_kwargs(cfg) -> dict:
    return dict(bins=cfg.dvh_bins, steepness=cfg.steepness, dose_range=tuple(cfg.dose_range))


def _mae_dvh(weight=None):
    def build(cfg) -> MAEPlusDVHLoss:
        return MAEPlusDVHLoss(weight=cfg.dvh_weight if weight is None else weight, **_dvh_kwargs(cfg))
    return build


class SharpPlusDVHLoss(torch.nn.Module):
    r"""The sharp loss in Gy² plus ``weight`` times the DVH loss (the benchmark's "sharp + DVH" arm).

    .. math:: L = D_n^2\,SL_\gamma(D^{pred}/D_n, D^{true}/D_n) + w\,L_{DVH}

    :math:`SL_\gamma` is Eq. (4) of Bai et al. 2021 over the possible-dose mask with doses
    normalised by :math:`D_n` (``norm`` Gy); multiplying by :math:`D_n^2` puts it in Gy², the
    units of the MSE it generalises. :math:`L_{DVH}` is :func:`rtlearn.losses.dvh.dvh_loss`.
    ``weight = 0`` gives the sharp loss alone (in Gy²).

    ``forward(pred, target, dose_mask, structures=None)`` (doses in Gy; ``structures`` is needed when
    ``weight > 0``).
    """

    def __init__(self, gamma: float = 100.0, norm: float = 70.0, weight: float = 80.0, **dvh_kwargs):
        super().__init__()
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not np.isfinite(weight) or weight < 0:
            raise ValueError(f"weight must be a finite number >= 0, got {weight!r}")
        self.weight = float(weight)
        self.sharp = SharpLoss(gamma=gamma, norm=norm)
        self.dvh = DVHLoss(**dvh_kwargs)

    def forward(self, pred, target, dose_mask, structures=None):
        out = self.sharp.norm ** 2 * self.sharp(pred, target, dose_mask)
        if self.weight == 0:
            return out
        if structures is None:
            raise ValueError("structures are needed for the DVH term (weight > 0)")
        return out + self.weight * self.dvh(pred, target, structures)


def _sharp(gamma: float, with_dvh: bool = False):
    def build(cfg) -> SharpPlusDVHLoss:
        return SharpPlusDVHLoss(gamma=gamma, norm=cfg.sharp_norm, weight=cfg.dvh_weight if with_dvh else 0.0,
                                **_dvh_kwargs(cfg))
    return build


#: The three losses of Soomro et al.'s Table 1 (doses in Gy, ``mask`` the possible-dose mask,
#: ``structures`` the ten OpenKBP ROI masks), then the other arms of the closing benchmark
#: (:mod:`rtlearn.experiments.dose_benchmark`): the sharp loss at the paper's γ = 100 and at
#: :data:`SHARP_BEST_GAMMA`, the sharp loss + DVH, and the DVH-weight sweep.
ARMS = {
    "MSE": Arm(_mse, ("target", "mask")),
    "MAE": Arm(_mae, ("target", "mask")),
    "MAE+DVH": Arm(_mae_dvh(), ("target", "mask", "structures")),
}
#: The paper's three arms (chapter 5's comparison and claims).
ARM_NAMES = tuple(ARMS)
#: γ chosen by Bai et al.'s own rule (lowest error SD inside the mask, then structures won) on the
#: validation patients of the recorded OpenKBP sharp-loss study (``results/sharp_openkbp/study``,
#: :func:`rtlearn.experiments.sharp.select_best`); a test checks that the record still says so.
SHARP_BEST_GAMMA = 50.0
#: DVH weights swept on the validation patients besides ``cfg.dvh_weight`` (the arm ``"MAE+DVH"``).
DVH_SWEEP = (20.0, 320.0)


def sweep_arm(weight: float) -> str:
    """Name of the MAE + DVH arm with DVH weight ``weight``, e.g. ``"MAE+DVH w=20"``."""
    return f"MAE+DVH w={weight:g}"


def sharp_arm(gamma: float, with_dvh: bool = False) -> str:
    """Name of a sharp-loss arm, e.g. ``"SL γ=100"`` or ``"SL γ=100+DVH"``."""
    return f"SL γ={gamma:g}" + ("+DVH" if with_dvh else "")


ARMS.update({sharp_arm(100.0): Arm(_sharp(100.0), ("target", "mask")),
             sharp_arm(SHARP_BEST_GAMMA): Arm(_sharp(SHARP_BEST_GAMMA), ("target", "mask")),
             sharp_arm(100.0, True): Arm(_sharp(100.0, True), ("target", "mask", "structures"))})
ARMS.update({sweep_arm(w): Arm(_mae_dvh(w), ("target", "mask", "structures")) for w in DVH_SWEEP})
#: The arms of the closing benchmark, in the order of its table.
BENCHMARK_ARMS = ("MSE", "MAE", sharp_arm(100.0), sharp_arm(SHARP_BEST_GAMMA), "MAE+DVH", sharp_arm(100.0, True))
#: Every arm the study profile trains: the benchmark's and the DVH-weight sweep.
STUDY_ARMS = BENCHMARK_ARMS + tuple(sweep_arm(w) for w in DVH_SWEEP)


# ---- the paper's claims, stated before any number is seen ---------------------------------------------------------
def _claim(score: str, a: str, b: str, words: str) -> Claim:
    metric = {"dose_score": "dose_error", "dvh_score": "dvh_error"}[score]
    return Claim(metric, a, b, "lower", f"{b} gives a lower {words} than {a}",
                 paper=round(paper_score(b, "test", score) - paper_score(a, "test", score), 6))


#: Soomro et al., Table 1: MAE+DVH < MAE < MSE for both OpenKBP scores. Tested per test patient
#: (``dose_error``: the patient's dose-score term; ``dvh_error``: the mean |DVH-metric error| of the
#: patient); ``paper`` is the difference of the paper's test scores (B - A, Gy).
CLAIMS = (
    _claim("dose_score", "MAE", "MAE+DVH", "dose score"),
    _claim("dose_score", "MSE", "MAE+DVH", "dose score"),
    _claim("dose_score", "MSE", "MAE", "dose score"),
    _claim("dvh_score", "MAE", "MAE+DVH", "DVH score"),
    _claim("dvh_score", "MSE", "MAE+DVH", "DVH score"),
    _claim("dvh_score", "MSE", "MAE", "DVH score"),
)


# ---- configuration ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Config:
    """Every size of the experiment (see :func:`default_config` for the three profiles).

    ``source="phantom"``: ``n_train + n_val + n_test`` head-and-neck phantom patients
    (dataset seed ``data_seed``), split in this order, one 2D slice each (``shape``
    pixels of ``spacing`` mm); ``source="openkbp"``: the official split (``n_*`` = the
    first patients of each split, ``None`` = all). The split never depends on the
    training seed, so test patients pair across seeds.

    Model: DeepDoseNet of ``depth`` and first-stage ``width``. Training (per arm in
    ``arms``, names of :data:`ARMS`): at most ``epochs`` epochs of Adam
    (``lr``, ``weight_decay``, ``betas``) with batches of ``batch_size``, the learning rate x0.1
    after ``plateau_patience`` epochs without a lower validation loss, a stop after
    ``early_stopping`` such epochs (``None``: never), and the best validation epoch
    restored. DVH term: weight ``dvh_weight``, ``dvh_bins`` thresholds over
    ``dose_range`` Gy, ``steepness``. ``n_seeds``: the number of training seeds
    the profile is meant to be run with (``python -m rtlearn.study dvh_loss
    --seeds 0-<n_seeds - 1>``). ``bench_size``: the cube edge (voxels) at which
    the chapter times the losses (:mod:`rtlearn.bench.losses`).

    Cost of the ``study`` profile (OpenKBP, 169 / 33 / 83 patients with a CT, 64²
    slices, 1,700 training slices, width 12, batches of 8, at most 40 epochs,
    early stopping after 8, the 8 arms of :data:`STUDY_ARMS`), measured on the
    shared 2-core AMD EPYC build machine (torch 2.13 CPU, 2 December 2026): about
    10 s per epoch and arm on an idle thread (training and validation loss), 1-2 min
    to score the validation and test patients per arm; the recorded study ran its
    three seeds as three 1-thread processes on 2 cores in 75 min of wall time
    (about 71 min per seed process), every run but one stopping early.
    """

    source: str = "phantom"
    dims: int = 2
    n_train: int | None = 24
    n_val: int | None = 6
    n_test: int | None = 10
    shape: tuple | None = (64, 64)
    spacing: tuple | None = (4.0, 4.0)
    inputs: tuple = ("structures", "ct")
    downsample: int = 1
    slice_step: int = 1
    val_slice_step: int = 1
    arms: tuple = ARM_NAMES
    epochs: int = 20
    early_stopping: int | None = None
    depth: int = 3
    width: int = 12
    batch_size: int = 4
    lr: float = 2e-3
    weight_decay: float = 1e-4
    betas: tuple = (0.9, 0.99)
    plateau_patience: int = 4
    dvh_weight: float = 80.0
    dvh_bins: int = 64
    steepness: float = 1.0
    dose_range: tuple = (0.0, 80.0)
    sharp_norm: float = 70.0
    data_seed: int = 0
    n_seeds: int = 1
    bench_size: int = 64
    n_jobs: int = 1
    num_workers: int = 0
    root: str | None = None
    device: str | None = None

    def __post_init__(self):
        if self.source not in ("phantom", "openkbp"):
            raise ValueError(f"source must be 'phantom' or 'openkbp', got {self.source!r}")
        if self.dims not in (2, 3):
            raise ValueError(f"dims must be 2 or 3, got {self.dims!r}")
        for name in ("epochs", "depth", "width", "batch_size", "dvh_bins", "downsample", "slice_step", "val_slice_step",
                     "bench_size",
                     "n_seeds", "n_jobs"):
            _check_int(getattr(self, name), name, 1)
        for name in ("plateau_patience", "data_seed", "num_workers"):
            _check_int(getattr(self, name), name, 0)
        if self.early_stopping is not None:
            _check_int(self.early_stopping, "early_stopping", 1, " or None")
        for name in ("n_train", "n_val", "n_test"):
            v = getattr(self, name)
            if v is None and self.source == "openkbp":
                continue
            _check_int(v, name, 1, " or None" if self.source == "openkbp" else "")
        if self.n_test is not None and self.n_test < 2:
            raise ValueError(f"n_test must be >= 2 for paired tests over test patients, got {self.n_test}")
        arms = tuple(self.arms) if isinstance(self.arms, (list, tuple)) else ()
        if not arms or any(a not in ARMS for a in arms) or len(set(arms)) != len(arms):
            raise ValueError(f"arms must be distinct names from {tuple(ARMS)}, got {self.arms!r}")
        if not (self.sharp_norm > 0) or len(tuple(self.betas)) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"sharp_norm must be > 0 and betas two numbers in [0, 1), got {self.sharp_norm!r}, "
                             f"{self.betas!r}")
        if not (self.lr > 0) or not (self.weight_decay >= 0) or not (self.dvh_weight >= 0) or not (self.steepness > 0):
            raise ValueError("lr and steepness must be > 0, weight_decay and dvh_weight >= 0")


def _check_int(v, name: str, low: int, extra: str = "") -> None:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
        raise ValueError(f"{name} must be an int >= {low}{extra}, got {v!r}")


#: One explicit set of sizes per profile (fields not named keep the :class:`Config` defaults, the quick sizes).
_PROFILES = {
    "quick": {},
    "study": dict(source="openkbp", dims=2, n_train=None, n_val=None, n_test=None, shape=None, spacing=None,
                  inputs=("rois", "ct", "possible_dose_mask"), downsample=2, slice_step=8, val_slice_step=4,
                  arms=STUDY_ARMS, epochs=40, early_stopping=8, depth=3, width=12, batch_size=8, lr=1e-3,
                  plateau_patience=4, n_seeds=3),
    "full": dict(source="openkbp", dims=3, n_train=None, n_val=None, n_test=None, shape=None, spacing=None,
                 inputs=("rois", "ct", "possible_dose_mask"), epochs=200, width=32, batch_size=2, lr=1e-3,
                 plateau_patience=10, num_workers=6, bench_size=128, arms=STUDY_ARMS),
}


def default_config(profile: str | None = None, **overrides) -> Config:
    """The sizes of ``profile`` (default: the active one, ``RTLEARN_PROFILE``); keywords override single fields.

    * ``quick``: 2D head-and-neck phantom slices, 64 x 64 pixels of 4 mm (about
      OpenKBP's in-plane voxel size), 24 train / 6 validation / 10 test patients,
      a DeepDoseNet of width 12, 20 epochs at learning rate 2e-3 (so that 20
      epochs suffice), no early stopping: a demonstration on a CPU.
    * ``study``: OpenKBP on a CPU: every patient with a CT, 2D slices at 64²
      (2 x 2 block means; every 8th slice through the possible-dose mask for
      training, every 4th for the validation loss, every slice for scoring on
      128³), DeepDoseNet of depth 3 and width 12, batches of 8, the paper's Adam
      (lr 1e-3, betas 0.9 / 0.99, decay 1e-4), the learning rate x0.1 after 4
      epochs and a stop after 8 epochs without a lower validation loss (at most 40),
      every arm of :data:`STUDY_ARMS`, 3 seeds (about 71 min per seed, see :class:`Config`).
    * ``full``: OpenKBP 3D, the official 200 / 40 / 100 split (all patients with a
      dose and, since CT is an input, a CT), the paper's 200 epochs, batch 2 and
      learning rate 1e-3, DeepDoseNet of width 32; needs a GPU.

    Raises
    ------
    ValueError
        For an unknown profile or override name, or a bad value.
    """
    sizes = pick(_PROFILES["quick"], _PROFILES["full"], study=_PROFILES["study"], profile_name=profile)
    check_overrides(Config, overrides, "dvh_loss setting(s)")
    return replace(Config(), **{**sizes, **overrides})


#: Overrides that make ``default_config("study", **TINY)`` run one seed in seconds (the study runner's test;
#: the study profile reads OpenKBP, so the test needs the data).
TINY = dict(n_train=3, n_val=2, n_test=2, slice_step=32, val_slice_step=8, epochs=1, early_stopping=1, depth=2,
            width=4, batch_size=2, arms=("MSE", "MAE", "MAE+DVH", "SL γ=100+DVH"))


# ---- data ---------------------------------------------------------------------------------------------------------
class _WithStructures(Dataset):
    """Adds ``"structures"`` (bool ``S x spatial``, :data:`ROI_NAMES` order) to every item of ``base``.

    The possible-dose mask ``"mask"`` becomes boolean (``> 0.5``; a down-sampled
    OpenKBP mask is a block mean). ``cache=True`` builds every item once, up front
    (OpenKBP slices cost about 3 ms each to unpack; a 64² slice item holds about 0.3 MB).
    """

    def __init__(self, base, source: str, channels=None, cache: bool = False):
        self.base, self.source = base, source
        self.channels = channels
        self._items = [self._make(i) for i in range(len(base))] if cache else None

    def __len__(self):
        return len(self.base)

    def _make(self, i):
        item = dict(self.base[i])
        if self.source == "openkbp":
            item["structures"] = item["input"][self.channels] >= 0.5
            item.pop("patient", None)
            item.pop("slice", None)
        else:
            item["structures"] = item["rois"] >= 0.5
        item["mask"] = item["mask"] > 0.5
        return item

    def __getitem__(self, i):
        if self._items is not None:
            return self._items[i]
        return self._make(i)


@dataclass
class ExperimentData:
    """Datasets of the three splits (items with ``input``, ``target`` in Gy, ``mask``, ``structures``)."""

    source: str
    train: Dataset
    validation: Dataset
    test: Dataset
    in_channels: int
    raw: dict = field(default_factory=dict)

    def split(self, name: str) -> Dataset:
        return {"train": self.train, "validation": self.validation, "test": self.test}[name]


def _phantom_roi_order():
    order = PHANTOM_ROI_NAMES["head_neck"]
    if set(order) != set(ROI_NAMES):  # pragma: no cover - guards a change of the phantom
        raise RuntimeError(f"phantom head_neck ROIs {order} differ from OpenKBP's {ROI_NAMES}")
    return order


def load_data(cfg: Config, progress: bool = True) -> ExperimentData:
    """The datasets of the configured source (phantom cases are generated once and cached on disk)."""
    if cfg.source == "phantom":
        n = cfg.n_train + cfg.n_val + cfg.n_test
        ds = PhantomDoseDataset("head_neck", n=n, seed=cfg.data_seed, dims=cfg.dims, shape=cfg.shape,
                                spacing=cfg.spacing, inputs=cfg.inputs, root=cfg.root, progress=progress,
                                n_jobs=cfg.n_jobs)
        parts = np.split(np.arange(n), [cfg.n_train, cfg.n_train + cfg.n_val])
        wrap = lambda ii: _WithStructures(Subset(ds, ii.tolist()), "phantom")  # noqa: E731
        return ExperimentData("phantom", wrap(parts[0]), wrap(parts[1]), wrap(parts[2]), ds.in_channels,
                              {"dataset": ds, "train": parts[0], "validation": parts[1], "test": parts[2]})
    if "rois" not in cfg.inputs:
        raise ValueError("the OpenKBP source needs 'rois' among the inputs (the DVH loss reads the masks there)")
    kw = dict(root=cfg.root, dims=cfg.dims, inputs=tuple(cfg.inputs), downsample=cfg.downsample, progress=progress)
    # scoring reads every slice of a patient; training and the per-epoch validation loss every k-th
    sets = {s: openkbp.OpenKBPDataset(s, patients=n, **kw)
            for s, n in (("validation", cfg.n_val), ("test", cfg.n_test))}
    sets["train"] = openkbp.OpenKBPDataset("train", patients=cfg.n_train, slice_step=cfg.slice_step, **kw)
    val_loss_set = sets["validation"]
    if cfg.val_slice_step > 1:
        val_loss_set = openkbp.OpenKBPDataset("validation", patients=sets["validation"].patients,
                                              slice_step=cfg.val_slice_step, verbose=False, **kw)
    chans = [sets["train"].channel_names.index(n) for n in ROI_NAMES]
    cache = cfg.dims == 2
    wrapped = {"train": _WithStructures(sets["train"], "openkbp", chans, cache=cache),
               "validation": _WithStructures(val_loss_set, "openkbp", chans, cache=cache),
               "test": _WithStructures(sets["test"], "openkbp", chans)}
    return ExperimentData("openkbp", wrapped["train"], wrapped["validation"], wrapped["test"],
                          sets["train"].n_channels, sets)


# ---- model --------------------------------------------------------------------------------------------------------
def make_model(cfg: Config, in_channels: int) -> ScaledDose:
    """DeepDoseNet (ReLU output) whose output is multiplied by 70 Gy, so the losses are in Gy."""
    return ScaledDose(DeepDoseNet(in_channels, 1, dims=cfg.dims, depth=cfg.depth, width=cfg.width,
                                  norm="batch", final_activation="relu"), scale=70.0)


def _val_mae_gy(pred, batch):
    return float(masked_mae(pred, batch["target"], batch["mask"]))


# ---- evaluation -----------------------------------------------------------------------------------------------------
def _phantom_cases(data: ExperimentData, split: str):
    """Per-patient reference arrays of a phantom split, in the OpenKBP scoring layout."""
    ds = data.raw["dataset"]
    names = _phantom_roi_order()
    out = []
    for c in data.raw[split]:
        d = ds.data
        sp = tuple(float(s) for s in d["spacing"][c])
        # a 2D slice is scored as one slice of the site's 3 mm thickness (only D_0.1cc uses the voxel volume)
        vd = sp if len(sp) == 3 else (3.0,) + sp
        rois = {n: d["rois"][c, k] for k, n in enumerate(names) if d["rois"][c, k].any()}
        out.append({"patient": f"phantom_{int(c)}", "dose": d["dose"][c, 0].astype(np.float64),
                    "possible_dose_mask": d["body"][c], "rois": rois, "voxel_dimensions": vd,
                    "spacing": sp})
    return out


@torch.no_grad()
def _predict_phantom(model, data: ExperimentData, split: str, batch_size: int = 8) -> np.ndarray:
    model.eval()
    device = next(model.parameters()).device
    out = []
    for b in DataLoader(data.split(split), batch_size=batch_size):
        out.append(model(b["input"].to(device)).float().cpu().numpy()[:, 0])
    return np.concatenate(out).astype(np.float64)


def _metric_errors(pred, case) -> dict:
    m_ref = dvh_metrics_openkbp(case["dose"], case["rois"], case["voxel_dimensions"], name="reference dose")
    m_pred = dvh_metrics_openkbp(pred, case["rois"], case["voxel_dimensions"], name="prediction")
    return {(roi, k): abs(m_ref[roi][k] - m_pred[roi][k]) for roi in m_ref for k in m_ref[roi]}


def dose_error_in_structures(pred, case) -> float:
    """The part of the patient's dose error (OpenKBP's, Gy) from voxels inside any of its ROIs.

    ``sum |pred - ref|`` over the voxels of the possible-dose mask that lie in an ROI, divided by the
    size of the mask (the dose error's own denominator), so that the dose error is this part plus the
    part from the rest of the mask: the DVH loss acts only on the first.
    """
    inside = np.zeros(np.shape(case["dose"]), bool)
    for m in case["rois"].values():
        inside |= np.asarray(m, bool)
    pdm = np.asarray(case["possible_dose_mask"], bool)
    inside &= pdm
    return float(np.abs(np.asarray(pred, float)[inside] - np.asarray(case["dose"], float)[inside]).sum()
                 / np.count_nonzero(pdm))


def _openkbp_items(model, ds):
    """``(case, prediction)`` per patient of an OpenKBP dataset; each record is expanded once."""
    for pid in ds.patients:
        case = dict(ds.patient_arrays(pid), patient=pid)
        yield case, predict_patient(model, ds, pid, possible_dose_mask=case["possible_dose_mask"])


def metric_names() -> list:
    """``(roi, metric)`` pairs of the OpenKBP DVH score: OARs D_0.1_cc and mean, PTVs D_99, D_95, D_1."""
    return [(r, m) for r in OARS for m in OAR_METRICS] + [(r, m) for r in TARGETS for m in TARGET_METRICS]


def structure_metric(roi: str, metric: str) -> str:
    """Name of a per-structure DVH-metric error in a run record, e.g. ``"PTV70 D_95"`` (|error|, Gy)."""
    if (roi, metric) not in metric_names():
        raise ValueError(f"({roi!r}, {metric!r}) is not a metric of the OpenKBP DVH score")
    return f"{roi} {metric}"


def evaluate_model(model, data: ExperimentData, split: str, keep: int = 0, progress: bool = False) -> dict:
    """OpenKBP scores of ``model`` on a split.

    Predictions are clipped at 0 and multiplied by the possible-dose mask (as
    the challenge's baseline did) before scoring.

    Returns
    -------
    dict
        ``dose_score``, ``dvh_score`` (Gy), ``n``, ``patients``, ``dose_error`` and
        ``dvh_error`` (per patient, arrays; ``dvh_error`` is the mean |error| over the
        patient's DVH metrics), ``dose_error_in_structures`` (per patient,
        :func:`dose_error_in_structures`), ``metric_errors`` ``{(roi, metric): array over patients,
        NaN where the ROI is absent}`` and ``predictions`` (the first ``keep`` patients'
        predicted doses).
    """
    if data.source == "phantom":
        cases = _phantom_cases(data, split)
        preds = _predict_phantom(model, data, split)
        items = [(c, np.clip(p, 0, None) * c["possible_dose_mask"]) for c, p in zip(cases, preds)]
    else:
        items = _openkbp_items(model, data.raw[split])
    return _score(items, f"score {split}", progress, keep)


def _score(items, desc: str, progress: bool, keep: int = 0) -> dict:
    """The OpenKBP scores of ``(case, prediction)`` pairs (see :func:`evaluate_model`)."""
    names = metric_names()
    patients, dose_err, dvh_err, cells, kept, inside = [], [], [], [], [], []
    per_metric = {k: [] for k in names}
    for case, pred in tqdm(items, desc=desc, disable=not progress):
        e = _metric_errors(pred, case)
        patients.append(case["patient"])
        dose_err.append(dose_error(pred, case["dose"], case["possible_dose_mask"]))
        inside.append(dose_error_in_structures(pred, case))
        dvh_err.append(float(np.mean(list(e.values()))))
        cells.extend(e.values())
        for k in names:
            per_metric[k].append(e.get(k, np.nan))
        if len(kept) < keep:
            kept.append({"patient": case["patient"], "prediction": pred, "reference": case["dose"],
                         "rois": case["rois"], "possible_dose_mask": case["possible_dose_mask"],
                         "spacing": tuple(float(v) for v in case.get("spacing", case.get("voxel_dimensions")))})
    return {"dose_score": float(np.mean(dose_err)), "dvh_score": float(np.mean(cells)), "n": len(patients),
            "patients": patients, "dose_error": np.asarray(dose_err), "dvh_error": np.asarray(dvh_err),
            "dose_error_in_structures": np.asarray(inside),
            "metric_errors": {k: np.asarray(v, float) for k, v in per_metric.items()}, "predictions": kept}


def prescription_dose(rois: dict, shape) -> np.ndarray:
    """The trivial prediction: each PTV's prescription inside it (the highest where PTVs overlap), 0 elsewhere.

    Prescriptions: :data:`rtlearn.rois.TARGET_DOSE_GY` (PTV70: 70 Gy, PTV63: 63 Gy, PTV56: 56 Gy).
    A floor for the scores: a model that does not beat it has learnt nothing beyond the targets.
    """
    out = np.zeros(shape, dtype=np.float64)
    for name in TARGETS:
        if name in rois:
            m = np.asarray(rois[name], bool)
            if m.shape != tuple(shape):
                raise ValueError(f"{name} has shape {m.shape}, expected {tuple(shape)}")
            out[m] = np.maximum(out[m], float(TARGET_DOSE_GY[name]))
    return out


def evaluate_baseline(data: ExperimentData, split: str = "test", progress: bool = False) -> dict:
    """OpenKBP scores of :func:`prescription_dose` (times the possible-dose mask) on a split.

    Returns ``dose_score``, ``dvh_score`` (Gy), ``patients``, ``dose_error``, ``dvh_error`` and
    ``metric_errors`` as :func:`evaluate_model` does.
    """
    if data.source == "phantom":
        cases = _phantom_cases(data, split)
    else:
        ds = data.raw[split]
        cases = (dict(ds.patient_arrays(pid), patient=pid) for pid in ds.patients)
    items = ((case, prescription_dose(case["rois"], case["dose"].shape) * case["possible_dose_mask"])
             for case in cases)
    return _score(items, f"baseline {split}", progress)


# ---- one seed: every arm ------------------------------------------------------------------------------------------
def run(cfg: Config | None = None, seed: int = 0, *, data: ExperimentData | None = None,
        progress: bool = True) -> dict:
    """Train one DeepDoseNet per arm of ``cfg`` with ``seed`` and score it on the validation and test patients.

    For every arm: the model is built inside :func:`rtlearn.train.seeded` (the same
    initial weights for every arm of a seed), its loss object is ``ARMS[arm].loss(cfg)``
    and :func:`rtlearn.train.fit` trains it (batch order and per-epoch reseeding from
    ``seed``); the best validation epoch is restored and scored.

    Returns
    -------
    dict
        The run record of :mod:`rtlearn.study`: ``cases`` (test patients), ``metrics``
        ``{arm: {"dose_error", "dvh_error", "dose_error_in_structures", "<ROI> <metric>" (|DVH-metric error|, NaN
        where the ROI is absent): [one float per test patient]}}`` (Gy), ``history``
        (per-epoch records), ``seconds`` (training and scoring), ``extras`` (the
        validation patients' scores, ``{"validation": {"cases", "dose_score",
        "dvh_score", "dose_error", "dvh_error"}}`` by arm, and the parameter count)
        and ``live`` (the trained models and the first test patient's prediction
        per arm, for the figures; not recorded). ``extras["baseline"]`` holds the test
        metrics of :func:`prescription_dose` (same keys as an arm's ``metrics``).
    """
    cfg = default_config() if cfg is None else cfg
    if not isinstance(cfg, Config):
        raise TypeError(f"cfg must be a dvh_loss Config, got {type(cfg).__name__}")
    _check_int(seed, "seed", 0)
    data = load_data(cfg, progress=progress) if data is None else data
    names = metric_names()
    record = {"cases": None, "metrics": {}, "history": {}, "seconds": {},
              "extras": {"validation": {"cases": None, "dose_score": {}, "dvh_score": {}, "dose_error": {},
                                        "dvh_error": {}}},
              "live": {"models": {}, "samples": {}}}
    val_extras = record["extras"]["validation"]
    for arm in cfg.arms:
        t0 = time.perf_counter()
        with seeded(seed):
            model = make_model(cfg, data.in_channels)
        result = fit(model, ARMS[arm].loss(cfg), data.train, val=data.validation, epochs=cfg.epochs,
                     batch_size=cfg.batch_size, seed=seed, targets=ARMS[arm].targets,
                     drop_last=len(data.train) >= 2 * cfg.batch_size, num_workers=cfg.num_workers,
                     lr=cfg.lr, weight_decay=cfg.weight_decay, betas=tuple(cfg.betas),
                     plateau_patience=cfg.plateau_patience,
                     early_stopping=cfg.early_stopping, metrics={"val_mae_gy": _val_mae_gy},
                     progress=progress, device=cfg.device)
        val = evaluate_model(result.model, data, "validation", progress=progress)
        test = evaluate_model(result.model, data, "test", keep=1, progress=progress)
        record["seconds"][arm] = time.perf_counter() - t0
        record["cases"] = list(test["patients"])
        record["metrics"][arm] = {"dose_error": test["dose_error"].tolist(), "dvh_error": test["dvh_error"].tolist(),
                                  "dose_error_in_structures": test["dose_error_in_structures"].tolist(),
                                  **{structure_metric(r, m): test["metric_errors"][(r, m)].tolist()
                                     for r, m in names}}
        record["history"][arm] = [dict(r) for r in result.history.records]
        val_extras["cases"] = list(val["patients"])
        for key in ("dose_score", "dvh_score"):
            val_extras[key][arm] = val[key]
        for key in ("dose_error", "dvh_error"):
            val_extras[key][arm] = val[key].tolist()
        record["extras"]["n_parameters"] = int(sum(p.numel() for p in result.model.parameters()))
        record["live"]["models"][arm] = result.model
        record["live"]["samples"][arm] = test["predictions"][0]
    base = evaluate_baseline(data, "test", progress=progress)
    record["extras"]["baseline"] = {"dose_error": base["dose_error"].tolist(), "dvh_error": base["dvh_error"].tolist(),
                                    "dose_error_in_structures": base["dose_error_in_structures"].tolist(),
                                    **{structure_metric(r, m): base["metric_errors"][(r, m)].tolist()
                                       for r, m in names}}
    return record


# ---- tables --------------------------------------------------------------------------------------------------------
def scores(study, arm: str, phase: str = "test") -> dict:
    """The OpenKBP scores of ``arm`` per seed: ``{"dose_score": (n_seeds,), "dvh_score": (n_seeds,)}`` (Gy).

    ``phase="test"``: from the per-patient metrics (the dose score is the mean dose
    error; the DVH score the mean |error| over every (patient, ROI, metric) present);
    ``phase="validation"``: the scores stored in the run records' ``extras``.
    """
    if phase == "test":
        cells = np.concatenate([study.metric(structure_metric(r, m), arm)[:, :, None] for r, m in metric_names()],
                               axis=2)
        flat = cells.reshape(cells.shape[0], -1)
        return {"dose_score": np.nanmean(study.metric("dose_error", arm), axis=1),
                "dvh_score": np.array([row[np.isfinite(row)].mean() for row in flat])}
    if phase == "validation":
        ex = [study.extras(s)["validation"] for s in study.seeds]
        return {k: np.array([e[k][arm] for e in ex], dtype=float) for k in ("dose_score", "dvh_score")}
    raise ValueError(f"phase must be 'validation' or 'test', got {phase!r}")


def baseline_scores(study) -> dict:
    """Dose and DVH scores (Gy) of the prescription baseline (:func:`prescription_dose`) on the test patients.

    The baseline does not depend on the seed; the first recorded seed's values are used.
    """
    base = study.extras(study.seeds[0]).get("baseline")
    if base is None:
        raise ValueError("the study records no baseline (recorded before the baseline existed)")
    cells = np.array([v for r, m in metric_names() for v in base[structure_metric(r, m)]], float)
    return {"dose_score": float(np.mean(base["dose_error"])), "dvh_score": float(cells[np.isfinite(cells)].mean()),
            "n": len(base["dose_error"])}


def _mean_sd(values):
    s = seed_summary(values)
    return s["mean"] if s["n"] < 2 else (s["mean"], s["sd"])


def best_arm(study, score: str = "dose_score") -> str:
    """The arm with the lowest validation ``score`` (mean over seeds): a choice made without the test patients."""
    return min(study.arms, key=lambda a: float(np.mean(scores(study, a, "validation")[score])))


def _n_val(study) -> int:
    return len(study.extras(study.seeds[0])["validation"]["cases"])


def table1(study) -> Markdown:
    """Our dose and DVH scores (mean ± sd over seeds) on validation and test, next to the paper's Table 1."""
    rows = []
    for arm in study.arms:
        for phase in ("validation", "test"):
            ours = scores(study, arm, phase)
            n = len(study.cases) if phase == "test" else _n_val(study)
            p = PAPER_TABLE1.get((arm, phase), (np.nan, np.nan, "–"))
            rows.append((arm, phase, _mean_sd(ours["dvh_score"]), _mean_sd(ours["dose_score"]), str(n),
                         p[0], p[1], str(p[2])))
    if study.extras(study.seeds[0]).get("baseline") is not None:
        b = baseline_scores(study)
        rows.append(("prescription in each PTV (no model)", "test", b["dvh_score"], b["dose_score"], str(b["n"]),
                     np.nan, np.nan, "–"))
    sd = " (mean ± sd over seeds)" if len(study.seeds) > 1 else ""
    return Markdown(markdown_table(
        ["loss", "phase", f"ours: DVH score (Gy){sd}", "ours: dose score (Gy)", "ours: N",
         "paper: DVH score (Gy)", "paper: dose score (Gy)", "paper: N"], rows))


def sweep_weights(study) -> dict:
    """``{w: arm}`` of the MAE + DVH arms in ``study`` by DVH weight (``cfg.dvh_weight`` is the arm ``"MAE+DVH"``)."""
    out = {float(study.config["dvh_weight"]): "MAE+DVH"} if "MAE+DVH" in study.arms else {}
    out.update({w: sweep_arm(w) for w in DVH_SWEEP if sweep_arm(w) in study.arms})
    return dict(sorted(out.items()))


def sweep_table(study) -> Markdown:
    """The DVH-weight sweep: validation and test scores of MAE + DVH for each weight (mean ± sd over seeds).

    The weight is chosen on the validation patients (lowest mean validation score, one choice per
    score, marked); the test columns only show what that choice gives.
    """
    arms = sweep_weights(study)
    if len(arms) < 2:
        raise ValueError(f"the study has fewer than two DVH weights: {arms}")
    val = {w: scores(study, a, "validation") for w, a in arms.items()}
    test = {w: scores(study, a, "test") for w, a in arms.items()}
    pick = {k: chosen_weight(study, k) for k in ("dose_score", "dvh_score")}
    rows = []
    for w, a in arms.items():
        mark = " and ".join({"dose_score": "dose score", "dvh_score": "DVH score"}[k]
                            for k in ("dose_score", "dvh_score") if pick[k] == w)
        rows.append((f"{w:g}", a, _mean_sd(val[w]["dose_score"]), _mean_sd(val[w]["dvh_score"]),
                     _mean_sd(test[w]["dose_score"]), _mean_sd(test[w]["dvh_score"]), mark))
    return Markdown(markdown_table(["w", "arm", "validation dose score (Gy)", "validation DVH score (Gy)",
                                    "test dose score (Gy)", "test DVH score (Gy)", "lowest on validation"], rows))


def chosen_weight(study, score: str = "dose_score") -> float:
    """The DVH weight with the lowest mean validation ``score`` among the study's MAE + DVH arms."""
    if score not in _SCORES:
        raise ValueError(f"score must be one of {sorted(_SCORES)}, got {score!r}")
    arms = sweep_weights(study)
    if not arms:
        raise ValueError("the study has no MAE + DVH arm")
    return min(arms, key=lambda w: float(np.mean(scores(study, arms[w], "validation")[score])))


def dose_error_parts(study, a: str = "MAE", b: str = "MAE+DVH", n_boot: int = 10000) -> dict:
    """Where ``b`` changes the dose error relative to ``a``: inside the ROIs, and in the rest of the mask.

    The dose error of a patient is the sum of its part inside the ROIs
    (:func:`dose_error_in_structures`) and its part elsewhere in the possible-dose mask; the DVH
    loss acts only on the first. Returns ``{"whole" | "in ROIs" | "elsewhere": paired comparison}``
    (:func:`rtlearn.metrics.stats.paired_comparison`: seed-averaged per patient, median paired
    difference ``b - a`` with its bootstrap CI and Wilcoxon p, not adjusted: exploratory).
    """
    for arm in (a, b):
        if arm not in study.arms:
            raise ValueError(f"no arm {arm!r} in the study; it has {study.arms}")
    whole = {arm: study.metric("dose_error", arm) for arm in (a, b)}
    inside = {arm: study.metric("dose_error_in_structures", arm) for arm in (a, b)}
    parts = {"whole": whole, "in ROIs": inside, "elsewhere": {arm: whole[arm] - inside[arm] for arm in (a, b)}}
    return {k: paired_comparison(v[a], v[b], n_boot=n_boot) for k, v in parts.items()}


def dose_error_parts_table(study, pairs=(("MAE", "MAE+DVH"), ("MSE", "MAE+DVH"), ("MSE", "MAE"))) -> Markdown:
    """:func:`dose_error_parts` for several pairs: means of A and B and the median paired difference with its CI."""
    rows = []
    for a, b in pairs:
        if a not in study.arms or b not in study.arms:
            continue
        for part, r in dose_error_parts(study, a, b).items():
            rows.append((f"{b} − {a}", part, r["a_mean"], r["b_mean"], r["diff"], f"[{r['ci_lo']:.3f}, {r['ci_hi']:.3f}]",
                         _fmt_p(r["p"]), str(r["n_cases"])))
    return Markdown(markdown_table(["B − A", "part of the dose error", "A (Gy)", "B (Gy)", "median B − A (Gy)",
                                    "95% CI", "p (Wilcoxon, unadjusted)", "N"], rows, fmt="{:.3f}"))


def claims_table(study, rows=None) -> Markdown:
    """The claims of :data:`CLAIMS` on ``study``: paper, ours, the paired difference with its CI, p (Holm), verdict.

    ``rows`` are :func:`rtlearn.metrics.stats.judge` rows (computed here when omitted),
    Holm-adjusted over all the claims together; one table per score.
    """
    rows = judge(study, CLAIMS) if rows is None else rows
    parts = []
    for metric, title in (("dose_error", "Dose score"), ("dvh_error", "DVH score")):
        sub = [r for r in rows if r["metric"] == metric]
        if sub:
            parts.append(f"**{title}** (per test patient; paper: difference of its test scores, B − A; "
                         f"ours: median paired difference B − A over {sub[0]['n_cases']} patients, seed-averaged)"
                         f"\n\n{format_comparison(sub)}")
    return Markdown("\n\n".join(parts))


def structure_means(study) -> dict:
    """``{(roi, metric): {arm: mean |error| (Gy)}}`` over test patients and seeds, for the metrics present."""
    out = {}
    for roi, m in metric_names():
        vals = {arm: study.metric(structure_metric(roi, m), arm) for arm in study.arms}
        if np.isfinite(vals[study.arms[0]]).any():
            out[(roi, m)] = {arm: float(np.nanmean(v)) for arm, v in vals.items()}
    return out


def structure_table(study, pairs=(("MSE", "MAE"), ("MAE", "MAE+DVH"), ("MSE", "MAE+DVH"))) -> Markdown:
    """Mean |error| of each DVH metric per arm (mean ± sd over seeds) and paired Wilcoxon p-values (their Figs. 5-6).

    A metric is tested over the test patients that have the structure, each
    patient averaged over seeds; the p-values are Holm-adjusted over the whole
    table (every metric and pair). Exploratory: the paper states no claim per structure.
    """
    pairs = [(a, b) for a, b in pairs if a in study.arms and b in study.arms]
    body, raw = [], []
    for roi, m in structure_means(study):
        vals = {arm: study.metric(structure_metric(roi, m), arm) for arm in study.arms}
        case_mean = {arm: _nanmean(v, axis=0) for arm, v in vals.items()}
        n = int(np.isfinite(case_mean[study.arms[0]]).sum())
        means = [_mean_sd(_nanmean(vals[arm], axis=1)) for arm in study.arms]
        ps = []
        for a, b in pairs:
            try:
                ps.append(wilcoxon_summary(case_mean[a], case_mean[b])["p"])
            except ValueError:
                ps.append(np.nan)
        raw.append(ps)
        body.append([roi, m, str(n), *means])
    if raw and pairs:
        adj = holm(np.asarray(raw, float).ravel()).reshape(len(raw), -1)
        for row, p in zip(body, adj):
            row.extend(_fmt_p(v) for v in p)
    return Markdown(markdown_table(
        ["ROI", "metric", "N"] + [f"{a} (Gy)" for a in study.arms] + [f"p {a} vs {b} (Holm)" for a, b in pairs],
        body))


def _nanmean(x, axis):
    x = np.asarray(x, float)
    ok = np.isfinite(x)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ok, x, 0.0).sum(axis) / ok.sum(axis)


def _fmt_p(p) -> str:
    return "–" if not np.isfinite(p) else (f"{p:.3f}" if p >= 0.001 else f"{p:.1e}")


def leaderboard_table(study) -> Markdown:
    """The published OpenKBP leaderboard, the paper's own test scores and ours (test, mean over seeds)."""
    rows = [(f"{rank}. {team}", d, v, "published leaderboard, blinded test") for rank, team, d, v in LEADERBOARD]
    rows.append(("C3D single model + TTA", *C3D_SINGLE_MODEL, "published by C3D's authors"))
    for arm in ARM_NAMES:
        rows.append((f"DeepDoseNet {arm}", paper_score(arm, "test", "dose_score"),
                     paper_score(arm, "test", "dvh_score"), "the paper's Table 1 (not a leaderboard entry)"))
    cfg = study.config
    if cfg.get("source") == "phantom":
        src = "ours, phantom test (not comparable)"
    else:
        grid = "3D" if cfg.get("dims") == 3 else f"2D slices at {128 // int(cfg.get('downsample', 1))}²"
        src = (f"ours, OpenKBP test: {len(study.cases)} patients with a CT, {grid}, scored on 128³, "
               f"mean of {len(study.seeds)} seed(s)")
    for arm in study.arms:
        s = scores(study, arm, "test")
        rows.append((f"ours: DeepDoseNet {arm}", float(np.mean(s["dose_score"])), float(np.mean(s["dvh_score"])),
                     src))
    return Markdown(markdown_table(["entry", "dose score (Gy)", "DVH score (Gy)", "source"], rows, fmt="{:.3f}"))


def tables(study, rows=None) -> Markdown:
    """Every table of the chapter for ``study`` (a live run or a recorded study), one after another."""
    return Markdown("\n\n".join([
        "**Dose and DVH scores (the paper's Table 1)**", table1(study),
        "**The paper's claims, paired over test patients**", claims_table(study, rows),
        "**Per-structure DVH-metric errors, test patients (their Figs. 5-6)**", structure_table(study),
        "**Next to the published leaderboard**", leaderboard_table(study)]))


# ---- pieces for the chapter's derivations ---------------------------------------------------------------------------
def fit_profile(x, y, degree: int, loss: str = "l2") -> np.ndarray:
    r"""Fit a polynomial of ``degree`` to a 1D dose profile with squared (``"l2"``) or absolute (``"l1"``) error.

    A model of limited capacity facing a steep gradient, as a network facing an
    IMRT dose fall-off: ``"l2"`` minimises :math:`\sum_i (y_i - p(x_i))^2` (least
    squares); ``"l1"`` minimises :math:`\sum_i |y_i - p(x_i)|` exactly, as the
    linear programme :math:`\min \sum_i t_i` s.t. :math:`-t \le y - A c \le t`.
    Returns the fitted values at ``x``. ``x`` is rescaled to [-1, 1] (Legendre basis).
    """
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    if x.ndim != 1 or x.shape != y.shape or x.size < degree + 2:
        raise ValueError(f"x and y must be 1-D of equal length > degree + 1, got {x.shape} and {y.shape}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("x and y must be finite")
    if x.max() == x.min():
        raise ValueError("x must not be constant")
    u = 2 * (x - x.min()) / (x.max() - x.min()) - 1
    A = np.polynomial.legendre.legvander(u, degree)
    if loss == "l2":
        c, *_ = np.linalg.lstsq(A, y, rcond=None)
        return A @ c
    if loss != "l1":
        raise ValueError(f"loss must be 'l1' or 'l2', got {loss!r}")
    n, k = A.shape
    # variables [c (k, free), t (n, >= 0)]; A c - t <= y and -A c - t <= -y
    cost = np.concatenate([np.zeros(k), np.ones(n)])
    eye = np.eye(n)
    A_ub = np.block([[A, -eye], [-A, -eye]])
    b_ub = np.concatenate([y, -y])
    bounds = [(None, None)] * k + [(0, None)] * n
    res = linprog(cost, A_ub=A_ub, b_ub=b_ub, bounds=bounds, method="highs")
    if not res.success:  # pragma: no cover - the LP is always feasible and bounded
        raise RuntimeError(f"L1 fit failed: {res.message}")
    return A @ res.x[:k]


def example_case(prefer_openkbp: bool = True, patient: str = "pt_201", root=None) -> dict:
    """One head-and-neck case for the figures: a real OpenKBP patient when the data is found, else a phantom.

    Returns ``{"source", "name", "dose" (Gy, (Z, Y, X) or (H, W)), "rois" {name: mask}, "spacing" (mm),
    "axial" (index of the axial slice with the most PTV voxels, 3D only)}``.
    """
    if prefer_openkbp:
        if openkbp.available(root):
            arr = openkbp.load_patient(patient, root=root)
            if "dose_cgy" in arr:
                dose = np.ascontiguousarray(to_zyx(arr["dose_cgy"])).astype(np.float64) / 100.0
                rois = {n: np.ascontiguousarray(to_zyx(arr[n])) for n in ROI_NAMES if n in arr and arr[n].any()}
                ptv = sum(rois[n].astype(int) for n in TARGETS if n in rois)
                z = int(np.argmax(ptv.sum(axis=(1, 2)))) if np.ndim(ptv) else dose.shape[0] // 2
                return {"source": "OpenKBP", "name": patient, "dose": dose, "rois": rois,
                        "spacing": spacing_zyx(arr["voxel_dimensions"]), "axial": z}
    p = make_patient("head_neck", seed=3, dims=2, shape=(96, 96), spacing=(2.67, 2.67))
    plan = optimise_plan(p)
    return {"source": "phantom", "name": "head_neck seed 3", "dose": plan.dose.astype(np.float64),
            "rois": {n: p.masks[n] for n in ROI_NAMES if n in p.masks and p.masks[n].any()},
            "spacing": tuple(p.spacing), "axial": None}


def relaxed_vs_exact(dose, mask, steepness_values, bins: int = 64, dose_range=(0.0, 80.0)) -> dict:
    """Exact cumulative DVH and the relaxed DVH for each steepness, at the same thresholds.

    Returns ``{"thresholds": (n,), "exact": (n,), "relaxed": {m: (n,)}, "max_error": {m: float}}``;
    the exact DVH at ``d_t`` is the fraction of voxels with dose ``>= d_t`` (:func:`rtlearn.dvh.cumulative_dvh`).
    """
    d = torch.as_tensor(np.asarray(dose, float))
    m = torch.as_tensor(np.asarray(mask, bool))
    t = np.linspace(dose_range[0], dose_range[1], bins)
    _, ex = exact_dvh.cumulative_dvh(np.asarray(dose, float), np.asarray(mask, bool), bins=t)
    rel, err = {}, {}
    for s in steepness_values:
        _, v = soft_dvh(d, m, bins=bins, steepness=float(s), dose_range=dose_range)
        rel[s] = v.numpy()
        err[s] = float(np.abs(rel[s] - ex).max())
    return {"thresholds": t, "exact": np.asarray(ex), "relaxed": rel, "max_error": err}


def dvh_loss_gradient(reference, prediction, rois: dict, **dvh_kwargs) -> tuple:
    """``(loss, d loss / d prediction)`` of :func:`rtlearn.losses.dvh.dvh_loss` for one case (per voxel, 1/Gy)."""
    names = list(rois)
    pred = torch.tensor(np.asarray(prediction, float)[None], requires_grad=True)
    ref = torch.tensor(np.asarray(reference, float)[None])
    st = torch.tensor(np.stack([np.asarray(rois[n], bool) for n in names])[None])
    loss = dvh_loss(pred, ref, st, **dvh_kwargs)
    loss.backward()
    return float(loss.detach()), pred.grad[0].numpy()


# ---- figures --------------------------------------------------------------------------------------------------------
def plot_learning_curves(study, axes=None):
    """Training and validation loss per arm (their Fig. 3) and the validation MAE (Gy), one line per seed."""
    import matplotlib.pyplot as plt

    if axes is None:
        _, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for j, arm in enumerate(study.arms):
        for k, hist in enumerate(study.histories(arm)):
            ep = [r["epoch"] for r in hist]
            kw = dict(color=colors[j % len(colors)], lw=1.5 if k == 0 else 0.8, alpha=1.0 if k == 0 else 0.5,
                      label=arm if k == 0 else None)
            for ax, key in zip(axes, ("train_loss", "val_loss", "val_mae_gy")):
                ax.plot(ep, [np.nan if r.get(key) is None else r[key] for r in hist], **kw)
    for ax, t, u in zip(axes, ("training loss", "validation loss", "validation MAE in the mask"),
                        ("loss (Gy² for MSE, Gy otherwise)", "loss (Gy² for MSE, Gy otherwise)", "MAE (Gy)")):
        ax.set_xlabel("epoch")
        ax.set_title(t)
        ax.set_ylabel(u)
        ax.set_yscale("log")
    axes[2].legend(fontsize=8, title=f"{len(study.seeds)} seed(s)" if len(study.seeds) > 1 else None)
    return axes


def plot_structure_errors(study, axes=None):
    """Box plots of |DVH-metric error| per ROI over test patients (seed-averaged): OAR mean and D_0.1cc,
    PTV D99/D95/D1 (their Figs. 5-6)."""
    import matplotlib.pyplot as plt

    groups = [("OAR mean", [(r, "mean") for r in OARS]), ("OAR D$_{0.1cc}$", [(r, "D_0.1_cc") for r in OARS]),
              ("PTV D$_{99}$ / D$_{95}$ / D$_1$", [(r, m) for r in TARGETS for m in TARGET_METRICS])]
    if axes is None:
        _, axes = plt.subplots(1, 3, figsize=(11, 3.3), gridspec_kw={"width_ratios": [7, 7, 9]})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    arms = study.arms
    w = 0.8 / len(arms)
    per_case = {(arm, key): _nanmean(study.metric(structure_metric(*key), arm), axis=0)
                for arm in arms for _, keys in groups for key in keys}
    for ax, (title, keys) in zip(axes, groups):
        keys = [key for key in keys if np.isfinite(per_case[(arms[0], key)]).any()]
        for j, arm in enumerate(arms):
            vals = [per_case[(arm, key)] for key in keys]
            vals = [v[np.isfinite(v)] for v in vals]
            pos = np.arange(len(keys)) - 0.4 + w * (j + 0.5)
            bp = ax.boxplot(vals, positions=pos, widths=w * 0.9, patch_artist=True,
                            medianprops=dict(color="k"), flierprops=dict(markersize=2))
            for b in bp["boxes"]:
                b.set_facecolor(colors[j % len(colors)])
                b.set_alpha(0.75)
            ax.plot([], [], "s", color=colors[j % len(colors)], label=arm)
        ax.set_xticks(np.arange(len(keys)))
        ax.set_xticklabels([r if "PTV" not in title else f"{r} {m.replace('_', '')}" for r, m in keys],
                           rotation=45, ha="right", fontsize=7)
        ax.set_ylabel("|error| (Gy)")
        ax.set_title(title)
    axes[0].legend(fontsize=8)
    return axes


def plot_sample(record: dict, arm: str | None = None, slice_index=None):
    """Reference vs predicted dose of the first test patient, their difference and its histogram, and the DVHs
    (their Fig. 7), from a live run record (:func:`run`); ``arm`` defaults to the lowest validation dose score."""
    import matplotlib.pyplot as plt

    samples = record.get("live", {}).get("samples", {})
    if not samples:
        raise ValueError("the record holds no prediction (a recorded study keeps none): pass the record of a live run")
    if arm is None:
        val = record["extras"]["validation"]["dose_score"]
        arm = min(samples, key=lambda a: val[a])
    if arm not in samples:
        raise ValueError(f"no arm {arm!r} in the record; it has {sorted(samples)}")
    s = samples[arm]
    ref, pred, rois = s["reference"], s["prediction"], s["rois"]
    if ref.ndim == 3:   # OpenKBP (Y, X, Z): show the axial slice with the most PTV voxels
        ptv = sum(rois[n].astype(int) for n in TARGETS if n in rois)
        z = int(np.argmax(np.sum(ptv, axis=(0, 1)))) if slice_index is None else slice_index
        sl = lambda a: a[:, :, z]  # noqa: E731
        sp = s["spacing"][:2]
    else:
        sl = lambda a: a  # noqa: E731
        sp = s["spacing"][-2:]
    masks = {n: sl(m) for n, m in rois.items()}
    vmax = float(max(ref.max(), pred.max()))
    fig, axes = plt.subplots(1, 5, figsize=(11, 2.8))
    plotting.dose_slice(axes[0], sl(ref), masks, spacing=sp, vmax=vmax, title="reference", legend=False)
    plotting.dose_slice(axes[1], sl(pred), masks, spacing=sp, vmax=vmax, title=f"predicted ({arm})", legend=False)
    diff = sl(pred) - sl(ref)
    lim = float(np.abs(diff).max()) or 1.0
    im = axes[2].imshow(diff, cmap="RdBu_r", vmin=-lim, vmax=lim,
                        extent=(0, diff.shape[1] * sp[1], diff.shape[0] * sp[0], 0))
    axes[2].set_title("predicted - reference")
    axes[2].set_xlabel("x (mm)")
    axes[2].set_ylabel("y (mm)")
    fig.colorbar(im, ax=axes[2], label="Gy")
    pdm = s["possible_dose_mask"].astype(bool)
    axes[3].hist((pred - ref)[pdm], bins=60, color="0.4")
    axes[3].set_xlabel("voxel-wise difference (Gy)")
    axes[3].set_ylabel("voxels in the possible-dose mask")
    axes[3].set_yscale("log")
    plotting.plot_dvh(axes[4], ref, rois, dose_pred=pred, labels=("reference", arm))
    axes[4].legend(fontsize=6, ncol=2)
    fig.suptitle(f"{s['patient']}: dose error {dose_error(pred, ref, pdm):.2f} Gy")
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    return fig
