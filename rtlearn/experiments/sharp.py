r"""The sharp-loss experiment of Bai et al. 2021 on phantom breast patients.

A U-Net maps the single-channel ROI-value map of a left-sided breast patient
(PTV 1.000, ipsilateral lung 0.833, heart 0.667, contralateral lung 0.500,
spinal cord 0.333, other tissue 0.167, outside the body 0) to the dose divided
by 60 Gy (the paper's 6000 cGy). Each *arm* of the experiment is one loss
object (:func:`arms`): the MSE,

.. math:: \mathrm{MSE} = \frac{1}{n}\sum_i (Dp_i - D_i)^2 \quad \text{(Eq. 2 of Bai et al. 2021)},

as :class:`torch.nn.MSELoss`, and the sharp loss

.. math:: \mathrm{SL} = \frac{1}{n}\sum_i \sigma\big(\gamma (D_i - 0.03)\big)\,(Dp_i - D_i)^2
   \quad \text{(Eq. 4)}

as :class:`rtlearn.losses.SharpLoss` for each :math:`\gamma` of the config. Every arm is
trained by :func:`rtlearn.train.fit` from the same initial weights and batch
order (both set by the run's seed), with Adam (lr :math:`10^{-3}`), batch 2 and
a plateau decay of the learning rate (x0.1 after 5 epochs without improvement
of the validation loss). The test predictions are scored per test case as in
the paper's Tables 1-4 (MAD by region, dose band and ROI; clinical DVH metrics).

The chapter's parts (the shape shared by every chapter module):

* the paper's numbers: ``PAPER_TABLE1`` ... ``PAPER_TABLE4``, ``PAPER_IMBALANCE``, ``PAPER_GRADIENT``;
* :class:`Config` and :func:`default_config` (profiles ``quick``, ``study``, ``full``);
* :func:`load_data`, :func:`run` (one seed: every arm trained and scored), :data:`CLAIMS`;
* :func:`tables` (from a :class:`rtlearn.study.Study`), the figures ``plot_*``, and :data:`TINY`.

Typical use (the chapter "The sharp loss")::

    from rtlearn.experiments import sharp
    from rtlearn.metrics.stats import judge, format_verdicts
    from rtlearn.study import from_runs

    cfg = sharp.default_config()                       # the active profile
    record = sharp.run(cfg, seed=0)
    live = from_runs("sharp", "quick", cfg, {0: record})
    sharp.tables(live)["Table 1"]
    print(format_verdicts(judge(live, sharp.CLAIMS)))

The same arms run on the OpenKBP head-and-neck data (``source="openkbp"``,
:func:`load_openkbp`), a different site from the paper's breast patients. The
single-channel input is our adaptation of the paper's ROI map to head and neck
(:data:`OPENKBP_ROI_VALUES`: PTV70 1.0, PTV63 0.9, PTV56 0.8, then the organs
at risk at decreasing values, the rest of the possible-dose mask 0.1, outside
0), the target is still dose / 60 Gy (the paper's 6000 cGy, chosen for a 50 Gy
breast prescription; with 70 Gy H&N plans the normalised PTV70 dose is about
1.17 and the sharp-loss demarcation dose :math:`D_0` sits lower relative to the
prescription), the official train / validation / test split is kept, and
patients without a reference dose are skipped. "Inside the body" then means
inside OpenKBP's possible-dose mask, and the OpenKBP challenge's dose and DVH
errors replace the breast metrics of Table 4.
"""
from __future__ import annotations

import dataclasses
import json
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset

from .. import dvh, plotting
from .._validate import check_dose, check_mask
from ..config import check_overrides, pick
from ..data.openkbp.dataset import OpenKBPDataset, find_openkbp, list_patients
from ..data.openkbp.format import spacing_zyx
from ..losses.sharp import SharpLoss
from ..metrics import DOSE_BANDS_CGY, mad, mad_by_dose_band, mad_per_roi, mean_gradient_by_band
from ..metrics.openkbp import dose_error, dvh_errors
from ..metrics.stats import Claim, judge
from ..models.unet import UNet
from ..phantom import PhantomDoseDataset
from ..rois import ROI_NAMES as OPENKBP_ROI_NAMES
from ..tables import Markdown, markdown_table
from ..train import fit, seeded

__all__ = [
    "NORM_GY", "PAPER_GAMMAS", "ROI_LABELS", "PAPER_IMBALANCE", "PAPER_TABLE1", "PAPER_GRADIENT", "PAPER_TABLE2",
    "PAPER_TABLE3", "PAPER_TABLE4", "TABLE1_ROWS", "TABLE4_ROWS", "BAND_ROWS", "MSE_ARM", "TABLE1_METRICS",
    "Config", "default_config", "arm_label", "arms", "build_model", "SharpData", "load_data", "dose_imbalance",
    "predict", "case_metrics", "reference_extras", "run", "CLAIMS", "CLAIM_GROUPS", "OPENKBP_CLAIMS", "claims_for",
    "claim_verdicts", "TINY",
    "table1", "table2", "table4", "validation_mad", "validation_sd", "validation_roi_mad", "select_by_mad",
    "roi_wins", "select_like_paper", "paper_selection", "selection", "select_best", "epochs_trained",
    "band_contributions",
    "openkbp_scores", "tables", "plot_mad_vs_gamma", "plot_weight_map",
    "plot_training_curves", "plot_roi_boxplots", "plot_sample",
    "SOURCES", "OPENKBP_ROI_VALUES", "OPENKBP_BODY_VALUE", "OPENKBP_RX_GY", "OpenKBPRoiMapDataset", "OpenKBPSharpData",
    "load_openkbp",
]

#: Normalisation dose in Gy: Bai et al. divide the dose by 6000 cGy = 60 Gy.
NORM_GY = 60.0
#: The sharpness values tested by Bai et al. 2021.
PAPER_GAMMAS = (1.0, 25.0, 50.0, 100.0, 250.0, 500.0)
#: Phantom ROI names -> the paper's names (left-sided breast: the left lung is ipsilateral).
ROI_LABELS = {"PTV": "PTV", "Lung_L": "Ipsilateral lung", "Heart": "Heart", "Lung_R": "Contralateral lung",
              "SpinalCord": "Spinal cord"}

#: Data sources of the experiment: the phantom breast clinic (the paper's site) or OpenKBP (head and neck).
SOURCES = ("phantom", "openkbp")
#: Our adaptation of the paper's ROI-value map to OpenKBP's head-and-neck ROIs (not the paper's: the paper
#: had breast ROIs only). Targets first, then organs at risk at decreasing values; where ROIs overlap the
#: highest value wins (as the PTV does in the paper's map).
OPENKBP_ROI_VALUES = {"PTV70": 1.0, "PTV63": 0.9, "PTV56": 0.8, "Brainstem": 0.7, "SpinalCord": 0.6,
                      "RightParotid": 0.5, "LeftParotid": 0.45, "Mandible": 0.4, "Larynx": 0.3,
                      "Esophagus": 0.2}
#: Value of the rest of OpenKBP's possible-dose mask (the "other tissue" of the paper's map); outside it is 0.
OPENKBP_BODY_VALUE = 0.1
#: The highest OpenKBP prescription (PTV70), in Gy; used as the Rx of HI/CI-type metrics.
OPENKBP_RX_GY = 70.0
#: OpenKBP ``study`` profile: every k-th axial slice of each training / validation patient, and the most epochs.
OPENKBP_STUDY_SLICE_STEP = 16
OPENKBP_STUDY_EPOCHS = 30

# ---- the paper's numbers (Bai et al. 2021), quoted for comparison ------------------------------------------
#: Discussion of Bai et al. 2021: % of test voxels outside the body; % of body voxels below 500 cGy.
PAPER_IMBALANCE = {"outside_body_pct": 74.52, "body_below_500cgy_pct": 77.30}
#: Row names of Table 1 (MAD in cGy; "Std" is the std of the prediction error inside the body).
TABLE1_ROWS = ("Whole region", "Outside the body", "Inside the body", "0-500 cGy", "500-1000 cGy",
               "1000-2000 cGy", "2000-3000 cGy", "3000-4000 cGy", "4000-5000 cGy", "> 5000 cGy", "Std")
#: Bai et al. 2021, Table 1: columns MSE, then sharp loss with gamma = 1, 25, 50, 100, 250, 500.
PAPER_TABLE1 = {
    "Whole region": (56.72, 43.78, 52.45, 43.40, 84.57, 690.74, 950.98),
    "Outside the body": (32.93, 24.31, 34.31, 24.10, 71.82, 765.24, 1047.12),
    "Inside the body": (186.55, 150.02, 151.46, 148.67, 154.15, 284.10, 426.26),
    "0-500 cGy": (109.43, 87.46, 99.06, 99.68, 110.40, 265.66, 457.31),
    "500-1000 cGy": (294.03, 262.00, 228.30, 220.12, 221.34, 245.57, 224.44),
    "1000-2000 cGy": (471.94, 419.89, 383.34, 369.57, 391.04, 413.08, 374.86),
    "2000-3000 cGy": (649.82, 530.12, 504.69, 472.01, 488.17, 517.25, 485.96),
    "3000-4000 cGy": (754.65, 547.15, 521.36, 491.88, 459.56, 489.77, 474.44),
    "4000-5000 cGy": (645.23, 453.75, 407.67, 410.46, 319.72, 410.30, 379.45),
    "> 5000 cGy": (336.25, 241.70, 214.88, 193.21, 151.32, 249.87, 229.58),
    "Std": (312.57, 254.86, 245.41, 236.20, 228.79, 374.80, 555.69),
}
#: Bai et al. 2021, Table 1, last column: mean ground-truth dose gradient per band (cGy/mm).
PAPER_GRADIENT = {"0-500 cGy": 1.97, "500-1000 cGy": 78.67, "1000-2000 cGy": 151.24, "2000-3000 cGy": 267.06,
                  "3000-4000 cGy": 330.70, "4000-5000 cGy": 222.84, "> 5000 cGy": 48.69}
#: Bai et al. 2021, Table 2: MAD (cGy) per ROI; columns MSE, gamma = 1, 25, 50, 100, 250, 500.
PAPER_TABLE2 = {
    "PTV": (316.49, 229.15, 201.06, 182.38, 139.85, 239.11, 222.68),
    "Ipsilateral lung": (271.81, 232.06, 215.22, 215.47, 189.99, 263.82, 362.17),
    "Heart": (218.28, 185.42, 183.79, 175.73, 144.41, 217.63, 218.69),
    "Contralateral lung": (125.96, 116.21, 117.38, 136.70, 113.42, 172.97, 241.52),
    "Spinal cord": (195.51, 162.50, 168.47, 160.04, 170.41, 228.89, 310.26),
}
#: Bai et al. 2021, Table 3: (MSE mean, sd, sharp gamma=100 mean, sd, Wilcoxon p), MAD in cGy.
PAPER_TABLE3 = {
    "PTV": (318.87, 30.23, 144.15, 16.27, 0.005),
    "Ipsilateral lung": (278.99, 51.68, 198.75, 61.38, 0.005),
    "Heart": (216.99, 44.13, 144.86, 43.98, 0.005),
    "Contralateral lung": (125.96, 66.76, 111.86, 47.19, 0.074),
    "Spinal cord": (194.30, 14.51, 168.58, 25.97, 0.005),
}
#: Row names of Table 4 (doses in cGy, volumes in %).
TABLE4_ROWS = ("PTV D95 (cGy)", "PTV HI", "PTV CI", "Heart mean (cGy)", "Heart V30 (%)",
               "Ipsilateral lung mean (cGy)", "Ipsilateral lung V5 (%)", "Ipsilateral lung V20 (%)",
               "Ipsilateral lung V30 (%)", "Whole lung mean (cGy)", "Whole lung V5 (%)", "Whole lung V20 (%)",
               "Whole lung V30 (%)")
#: Bai et al. 2021, Table 4: (ground truth mean, sd, MSE mean, sd, sharp gamma=100 mean, sd).
PAPER_TABLE4 = {
    "PTV D95 (cGy)": (5000.0, 0.0, 4795.09, 173.60, 4963.0, 96.30),
    "PTV HI": (0.12, 0.03, 0.42, 0.04, 0.19, 0.02),
    "PTV CI": (0.83, 0.04, 0.56, 0.08, 0.77, 0.63),
    "Heart mean (cGy)": (625.42, 125.20, 538.19, 147.21, 644.46, 143.68),
    "Heart V30 (%)": (4.73, 1.94, 3.0, 1.77, 4.03, 1.77),
    "Ipsilateral lung mean (cGy)": (1065.04, 46.28, 978.22, 73.49, 1094.99, 125.57),
    "Ipsilateral lung V5 (%)": (42.63, 2.73, 44.8, 2.53, 45.57, 4.13),
    "Ipsilateral lung V20 (%)": (19.21, 1.18, 17.02, 1.99, 18.82, 3.12),
    "Ipsilateral lung V30 (%)": (13.34, 1.28, 9.76, 1.78, 12.99, 2.60),
    "Whole lung mean (cGy)": (597.11, 67.89, 545.82, 52.60, 623.70, 87.46),
    "Whole lung V5 (%)": (24.31, 5.90, 23.22, 2.31, 22.94, 3.45),
    "Whole lung V20 (%)": (9.02, 1.04, 7.99, 1.12, 8.87, 1.83),
    "Whole lung V30 (%)": (6.28, 0.86, 4.61, 0.81, 6.15, 1.48),
}


#: Row names of Table 1 that are dose bands (MAD inside the body, bands of the true dose).
BAND_ROWS = TABLE1_ROWS[3:10]
#: Name of the MSE arm (the other arms are named by :func:`arm_label`).
MSE_ARM = "MSE"
#: Table 1 row -> the per-case metric of the run record behind it (every MAD and error in cGy).
TABLE1_METRICS = {"Whole region": "MAD whole region", "Outside the body": "MAD outside the body",
                  "Inside the body": "MAD inside the body", **{b: f"MAD {b}" for b in BAND_ROWS},
                  "Std": "error SD inside the body"}


# ---- configuration ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Config:
    """Every size of one run of the experiment.

    ``n_train + n_val + n_test`` phantom breast patients of dataset seed
    ``data_seed`` are split in this order (cases ``0 .. n_train-1`` train, and so
    on), so every arm and every training seed sees the same split. ``gammas``
    are the sharp-loss sharpness values (an MSE arm is always trained too,
    :func:`arms`). Training runs for at most ``epochs`` epochs, stops after
    ``early_stopping`` epochs without a lower validation loss (``None``: never),
    and keeps the weights of the best validation epoch. The training seed
    (initial weights, batch order) is not part of the config: it is the
    ``seed`` of :func:`run`.

    ``source="openkbp"`` uses OpenKBP instead: the first ``n_train``, ``n_val``
    and ``n_test`` usable patients of the official train, validation and test
    splits (all of them if fewer), as 3D volumes or 2D axial slices (every
    ``slice_step``-th for training and validation) on the 128 grid averaged over
    blocks of ``downsample`` voxels per axis; ``root`` is then the OpenKBP
    dataset folder (:func:`rtlearn.data.openkbp.find_openkbp`) and ``shape``,
    ``spacing``, ``data_seed`` and ``n_jobs`` are unused.

    Cost of one seed of the breast ``study`` profile (:func:`default_config`: 64 /
    16 / 30 patients, 2D 128 x 128, the MSE and six gammas, a U-Net of width 8,
    at most 100 epochs, early stopping 10) on one CPU thread: about a third of
    the width-16 U-Net's 4.3 s per epoch (64 training and 16 validation slices),
    so at most about 7 arms x 100 x 1.6 s = 19 minutes per seed, less when early
    stopping ends an arm sooner. With width 16 and at most 40 epochs the
    validation error was still falling at the last epoch in every arm; width 8
    is what lets five seeds train to convergence on a CPU. The 110 phantoms are
    generated once per study, then cached. The recorded studies store their own
    wall times (``Study.provenance_line``).
    """

    dims: int = 2
    n_train: int = 20
    n_val: int = 4
    n_test: int = 8
    shape: tuple | None = None
    spacing: tuple | None = None
    gammas: tuple = (25.0, 100.0, 500.0)
    epochs: int = 15
    early_stopping: int | None = None
    depth: int = 4
    width: int = 16
    batch_size: int = 2
    lr: float = 1e-3
    plateau_factor: float = 0.1
    plateau_patience: int = 5
    plateau_min_lr: float = 1e-7
    data_seed: int = 0
    n_jobs: int = 1
    root: str | None = None
    device: str | None = None
    source: str = "phantom"
    downsample: int = 1
    slice_step: int = 1

    def __post_init__(self):
        if self.dims not in (2, 3):
            raise ValueError(f"dims must be 2 or 3, got {self.dims!r}")
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {self.source!r}")
        if self.downsample not in (1, 2, 4, 8) or isinstance(self.downsample, bool):
            raise ValueError(f"downsample must be 1, 2, 4 or 8 (a divisor of OpenKBP's 128 grid), "
                             f"got {self.downsample!r}")
        for name in ("n_train", "n_val", "n_test", "epochs", "depth", "width", "batch_size", "plateau_patience",
                     "n_jobs", "slice_step"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        es = self.early_stopping
        if es is not None and (isinstance(es, bool) or not isinstance(es, (int, np.integer)) or es < 1):
            raise ValueError(f"early_stopping must be None or a positive number of epochs, got {es!r}")
        ds = self.data_seed
        if isinstance(ds, bool) or not isinstance(ds, (int, np.integer)) or ds < 0:
            raise ValueError(f"data_seed must be a non-negative int, got {ds!r}")
        if self.n_test < 2:
            raise ValueError(f"n_test must be >= 2 for the paired Wilcoxon test, got {self.n_test}")
        try:
            g = tuple(float(x) for x in self.gammas)
        except (TypeError, ValueError):
            raise ValueError(f"gammas must be a sequence of numbers, got {self.gammas!r}") from None
        if not g or any(not np.isfinite(x) or x < 0 for x in g) or len(set(g)) != len(g):
            raise ValueError(f"gammas must be distinct finite numbers >= 0, got {self.gammas!r}")
        object.__setattr__(self, "gammas", g)
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if not (0 < self.plateau_factor < 1):
            raise ValueError(f"plateau_factor must lie in (0, 1), got {self.plateau_factor!r}")
        mlr = self.plateau_min_lr
        if isinstance(mlr, bool) or not isinstance(mlr, (int, float)) or not (np.isfinite(mlr) and 0 <= mlr < self.lr):
            raise ValueError(f"plateau_min_lr must be a learning rate in [0, lr), got {mlr!r}")
        if self.slice_step != 1 and not (self.source == "openkbp" and self.dims == 2):
            raise ValueError("slice_step applies to OpenKBP 2D slices only (source='openkbp', dims=2)")

    @property
    def n_cases(self) -> int:
        return self.n_train + self.n_val + self.n_test




def default_config(profile: str | None = None, **overrides) -> Config:
    """The sizes of ``profile`` (``None``: the active profile, :func:`rtlearn.config.profile`).

    Breast phantoms (the paper's site; ``source="phantom"``, the default):

    * ``quick``: 2D breast slices (128 x 128 pixels of 3 mm), 32 train / 8
      validation / 10 test patients, the MSE and gamma in {25, 100, 500}, at
      most 30 epochs (early stopping 10), batch 4, a small U-Net (4 levels, 8
      channels): about a minute on a 2-core CPU. A demonstration, one seed.
    * ``study``: the same 2D slices with 64 train / 16 validation / 30 test
      patients, the MSE and all six gammas of the paper, a U-Net of width 8
      trained to convergence: at most 100 epochs with early stopping after 10
      epochs without a lower validation loss, the learning rate divided by 10
      after 5 such epochs down to 1e-7 (the paper's schedule); at most about 20
      minutes per seed on one CPU thread (see :class:`Config`). Record 5 seeds
      (``python -m rtlearn.study sharp --profile study --seeds 0-4``).
    * ``full``: 3D breast volumes (64 x 128 x 128 at 4 x 3 x 3 mm), the paper's
      scale of 100 training patients (90 to fit, 10 for the validation loss that
      drives the learning-rate decay) and 10 test patients, all six gammas of
      the paper, batch 2 (the paper's), at most 60 epochs (early stopping 15),
      a 5-level U-Net with 32 channels (as the paper's five down-sampling
      levels); needs a GPU.

    Batch 4 of 2D slices instead of the paper's batch 2 of 3D volumes: a batch of
    two 128 x 128 slices gives batch normalisation too few voxels for stable
    statistics (the validation error jumped between epochs).

    OpenKBP head and neck (``source="openkbp"``; patients with a dose, a
    possible-dose mask and a CT):

    * ``quick``: a smoke test of the pipeline, not a result (20 / 5 / 5
      patients, 2D slices averaged to 64 x 64, every 8th slice, 4 epochs, a
      3-level U-Net with 8 channels).
    * ``study``: every usable patient of the official split (up to 200 train /
      40 validation / 100 test), 2D axial slices averaged over 2 x 2 blocks to
      64 x 64 (7.8 mm pixels at the typical 3.9 mm), every
      :data:`OPENKBP_STUDY_SLICE_STEP`-th slice that meets the possible-dose
      mask for training and validation, batch 8, the MSE and all six gammas,
      the U-Net of width 8, at most :data:`OPENKBP_STUDY_EPOCHS` epochs (early
      stopping 8, the paper's learning-rate schedule). Each test patient is predicted slice by slice,
      brought back to 128³ and scored there with the challenge's dose and DVH
      scores. Recorded as the chapter ``sharp_openkbp``
      (``python -m rtlearn.study sharp_openkbp --profile study --seeds 0-2``).
    * ``full``: the same patients on the full 128³ grid in 3D, all six
      gammas, 40 epochs, the 5-level U-Net with 32 channels; needs a GPU.

    Parameters
    ----------
    profile : {"quick", "study", "full"}, optional
    **overrides
        Fields of :class:`Config` to change (``source="openkbp"`` selects the
        OpenKBP sizes first).

    Raises
    ------
    ValueError
        For an unknown profile or override name, or an invalid value.
    """
    check_overrides(Config, overrides)
    source = overrides.get("source", "phantom")
    if source == "openkbp":
        quick = Config(dims=2, source="openkbp", n_train=20, n_val=5, n_test=5, downsample=2, slice_step=8,
                       epochs=4, depth=3, width=8, batch_size=8)
        study = Config(dims=2, source="openkbp", n_train=200, n_val=40, n_test=100, downsample=2,
                       slice_step=OPENKBP_STUDY_SLICE_STEP, gammas=PAPER_GAMMAS, epochs=OPENKBP_STUDY_EPOCHS,
                       early_stopping=8, batch_size=8, width=8)
        full = Config(dims=3, source="openkbp", n_train=200, n_val=40, n_test=100, gammas=PAPER_GAMMAS,
                      epochs=40, depth=5, width=32)
    else:
        quick = Config(n_train=32, n_val=8, n_test=10, epochs=30, early_stopping=10, batch_size=4, width=8, n_jobs=2)
        study = Config(n_train=64, n_val=16, n_test=30, gammas=PAPER_GAMMAS, epochs=100, early_stopping=10,
                       batch_size=4, width=8, n_jobs=2)
        full = Config(dims=3, n_train=90, n_val=10, n_test=10, gammas=PAPER_GAMMAS, epochs=60, early_stopping=15,
                      depth=5, width=32, n_jobs=8)
    base = pick(quick=quick, full=full, study=study, profile_name=profile)
    return dataclasses.replace(base, **overrides)


def arm_label(gamma) -> str:
    """Name of the sharp-loss arm with sharpness ``gamma``: ``"SL γ=100"`` style."""
    return f"SL γ={float(gamma):g}"


def arms(cfg: Config) -> dict:
    """The arms of the experiment: ``{name: loss object}``, the MSE first, then one sharp loss per gamma.

    ``"MSE"`` is :class:`torch.nn.MSELoss` (Eq. 2 of Bai et al. 2021) and
    ``"SL γ=g"`` is :class:`rtlearn.losses.SharpLoss` ``(gamma=g)`` (Eq. 4), both
    on doses normalised by 60 Gy over the whole grid, as in the paper. Each is
    called as ``loss(prediction, target)``.
    """
    if not isinstance(cfg, Config):
        raise TypeError(f"cfg must be a sharp.Config, got {type(cfg).__name__}")
    return {MSE_ARM: nn.MSELoss(), **{arm_label(g): SharpLoss(gamma=g) for g in cfg.gammas}}


def build_model(cfg: Config) -> UNet:
    """The U-Net of the experiment (single-channel ROI map in, normalised dose out, linear output).

    Build it inside :func:`rtlearn.train.seeded` so that every arm starts from the same weights.
    """
    return UNet(1, 1, dims=cfg.dims, depth=cfg.depth, width=cfg.width, norm="batch")


# ---- data ------------------------------------------------------------------------------------------------
@dataclass
class SharpData:
    """The phantom dataset (targets divided by :data:`NORM_GY`) and its fixed split."""

    dataset: object
    train: list
    val: list
    test: list

    @property
    def roi_names(self) -> tuple:
        return tuple(self.dataset.roi_names)

    @property
    def spacing(self) -> tuple:
        return tuple(float(s) for s in self.dataset.data["spacing"][0])

    @property
    def rx_gy(self) -> float:
        """Prescription dose in Gy (the phantoms' 50 Gy)."""
        return float(self.dataset.data["rx"][0])

    def case_ids(self, indices) -> list:
        """Ids of the cases ``indices`` in a run record: the dataset index of each phantom patient."""
        return [int(i) for i in indices]

    def case_spacing(self, indices) -> list:
        """Voxel spacing (mm, array-axis order) of each case of ``indices`` (all equal for phantoms)."""
        return [self.spacing for _ in indices]

    def arrays(self, indices):
        """Reference dose (Gy), body masks and ROI masks (bool) of the cases ``indices``."""
        d = self.dataset.data
        idx = np.asarray(indices, dtype=int)
        return d["dose"][idx, 0].astype(np.float64), d["body"][idx].astype(bool), d["rois"][idx].astype(bool)


def load_data(cfg: Config, progress: bool = True) -> SharpData:
    """Make (or load from the cache) the breast phantoms of ``cfg`` and split them.

    With ``cfg.source == "openkbp"`` this returns :func:`load_openkbp` instead. The split is fixed
    by ``cfg`` alone (never by the training seed), so test cases pair across seeds.

    The input is the single-channel ROI-value map of Bai et al. 2021
    (``inputs="roi_map"`` of :class:`~rtlearn.phantom.PhantomDoseDataset`); the
    target is the dose divided by 60 Gy (= the paper's dose / 6000 cGy).
    """
    if not isinstance(cfg, Config):
        raise TypeError(f"cfg must be a sharp.Config, got {type(cfg).__name__}")
    if cfg.source == "openkbp":
        return load_openkbp(cfg, progress)
    ds = PhantomDoseDataset("breast", n=cfg.n_cases, seed=cfg.data_seed, dims=cfg.dims, shape=cfg.shape,
                            spacing=cfg.spacing, inputs="roi_map", target_scale=NORM_GY, root=cfg.root,
                            progress=progress, n_jobs=cfg.n_jobs)
    a, b = cfg.n_train, cfg.n_train + cfg.n_val
    idx = list(range(cfg.n_cases))
    return SharpData(ds, idx[:a], idx[a:b], idx[b:])


class OpenKBPRoiMapDataset(torch.utils.data.Dataset):
    r"""OpenKBP patients as the sharp-loss experiment's items: ROI-value map in, dose / 60 Gy out.

    Wraps :class:`rtlearn.data.openkbp.OpenKBPDataset` objects (inputs: the ten
    ROI masks and the possible-dose mask, full 128 grid; 3D volumes or 2D axial
    slices) and serves ``{"input": (1, ...), "target": (1, ...), "mask": (1, ...)}``:

    .. math:: x = \max\big(v_{\text{body}}\,M,\ \max_k v_k R_k\big), \qquad y = \text{dose}_{\text{Gy}} / 60

    with :math:`R_k` the ROI masks, :math:`v_k` their values (:data:`OPENKBP_ROI_VALUES`),
    :math:`M` the possible-dose mask and :math:`v_{\text{body}}` = :data:`OPENKBP_BODY_VALUE`
    (our adaptation of the single-channel map of Bai et al. 2021). The map is built
    on the full grid, then input, target and mask are averaged over blocks of
    ``downsample`` voxels per axis. ``cache=True`` keeps the served items in memory
    (fast epochs on a GPU machine; about 24 MB per patient at 128³ in float32).
    """

    def __init__(self, datasets, downsample: int = 1, cache: bool = False):
        self.datasets = list(datasets)
        self.downsample = int(downsample)
        self.index = [(d, i) for d in self.datasets for i in range(len(d))]
        self.roi_names = tuple(OPENKBP_ROI_NAMES)
        self.values = torch.tensor([OPENKBP_ROI_VALUES[n] for n in OPENKBP_ROI_NAMES], dtype=torch.float32)
        self._cache = {} if cache else None

    def __len__(self):
        return len(self.index)

    def _pool(self, a):
        f = self.downsample
        if f == 1:
            return a
        return (F.avg_pool2d if a.dim() == 3 else F.avg_pool3d)(a[None], f)[0]

    def __getitem__(self, k):
        if self._cache is not None and k in self._cache:
            return self._cache[k]
        ds, i = self.index[k]
        item = ds[i]
        x = item["input"]                      # (10 ROIs + possible-dose mask, ...)
        rois, pdm = x[:10], x[10:11]
        v = self.values.view(-1, *([1] * (x.dim() - 1)))
        roi_map = torch.maximum((v * rois).amax(0, keepdim=True), OPENKBP_BODY_VALUE * pdm)
        out = {"input": self._pool(roi_map), "target": self._pool(item["target"] / NORM_GY),
               "mask": self._pool(pdm), "patient": item["patient"]}
        if "slice" in item:
            out["slice"] = item["slice"]
        if self._cache is not None:
            self._cache[k] = out
        return out

    def patient(self, k) -> tuple:
        """``(OpenKBPDataset, patient id)`` of item ``k``."""
        ds, i = self.index[k]
        return ds, ds.index[i][0]


@dataclass
class OpenKBPSharpData(SharpData):
    """OpenKBP (head and neck) in the experiment's split; ``dataset`` is an :class:`OpenKBPRoiMapDataset`.

    ``train`` and ``val`` are item indices (3D: patients; 2D: axial slices). The
    test cases are patients (:attr:`test_patients`). In 3D the reference arrays
    are on the served grid (averaged over ``downsample``-blocks; the body and ROI
    masks are the blocks more than half inside). In 2D every test patient is
    predicted slice by slice, brought back to the full 128³ grid (bilinear) and
    scored there, in ``(Z, Y, X)`` order, as the challenge scored its entries.
    """

    dims: int = 3

    @property
    def roi_names(self) -> tuple:
        return tuple(self.dataset.roi_names)

    @property
    def spacing(self) -> tuple:
        return self.case_spacing(self.test[:1])[0]

    @property
    def rx_gy(self) -> float:
        return OPENKBP_RX_GY

    @property
    def test_patients(self) -> list:
        """OpenKBP patient ids of the test cases, in order."""
        return list(self._test_items())

    def _test_items(self) -> dict:
        """``{patient id: [item indices]}`` of the test cases (computed once)."""
        if getattr(self, "_items", None) is None:
            items = {}
            for i in self.test:
                items.setdefault(self.dataset.patient(i)[1], []).append(i)
            self._items = items
        return self._items

    def patients(self, indices) -> list:
        """OpenKBP patient ids of the items ``indices``."""
        return [self.dataset.patient(i)[1] for i in indices]

    def case_ids(self, indices) -> list:
        """Ids of the test cases in a run record: the OpenKBP patient ids."""
        return self.test_patients if self.dims == 2 else self.patients(indices)

    def _test_ds(self, pid):
        return next(ds for ds in self.dataset.datasets if ds.split == "test" and pid in ds.records)

    def case_spacing(self, indices) -> list:
        if self.dims == 2:
            return [spacing_zyx(self._test_ds(p).records[p]["voxel_dimensions"]) for p in self.test_patients]
        f = self.dataset.downsample
        out = []
        for i in indices:
            ds, pid = self.dataset.patient(i)
            vd = ds.records[pid]["voxel_dimensions"]
            out.append(tuple(f * s for s in spacing_zyx(vd)))
        return out

    def arrays(self, indices):
        """Reference dose (Gy), body and ROI masks of the items ``indices`` on the served grid."""
        doses, bodies, rois = [], [], []
        f = self.dataset.downsample
        for i in indices:
            ds, j = self.dataset.index[i]
            item = ds[j]
            x, t = item["input"][None], item["target"][None]
            pool = (lambda a: a) if f == 1 else (lambda a: (F.avg_pool2d if a.dim() == 4 else F.avg_pool3d)(a, f))
            pooled = pool(x)
            rois.append(pooled[0, :10].numpy() > 0.5)
            bodies.append(pooled[0, 10].numpy() > 0.5)
            doses.append(pool(t)[0, 0].numpy().astype(np.float64))
        return np.stack(doses), np.stack(bodies), np.stack(rois)

    def test_case(self, pid) -> tuple:
        """2D: the full-grid reference of test patient ``pid`` in ``(Z, Y, X)``: dose (Gy), body, ROI masks."""
        a = self._test_ds(pid).patient_arrays(pid)
        zyx = lambda v: np.ascontiguousarray(np.transpose(v, (2, 0, 1)))  # noqa: E731  (Y, X, Z) -> (Z, Y, X)
        empty = np.zeros(a["dose"].shape, bool)
        rois = np.stack([zyx(a["rois"].get(n, empty)) for n in self.roi_names])
        return zyx(a["dose"]), zyx(a["possible_dose_mask"].astype(bool)), rois

    @torch.no_grad()
    def predict_case(self, model, pid, body=None, batch_size: int = 16) -> np.ndarray:
        """2D: predicted dose (Gy) of test patient ``pid`` on the full grid, ``(Z, Y, X)``.

        Every slice that meets the possible-dose mask is predicted, brought back to
        128 x 128 (bilinear), clipped at 0 and multiplied by the possible-dose mask,
        as :func:`rtlearn.data.openkbp.eval.predict_patient` does; other slices are 0.
        ``body``: the patient's possible-dose mask in ``(Z, Y, X)`` if already at hand.
        """
        model.eval()
        device = next(model.parameters()).device
        idx = self._test_items()[pid]
        out = np.zeros((128, 128, 128), np.float64)
        f = self.dataset.downsample
        for start in range(0, len(idx), batch_size):
            items = [self.dataset[i] for i in idx[start:start + batch_size]]
            pred = model(torch.stack([it["input"] for it in items]).to(device)).float()
            if f > 1:
                pred = F.interpolate(pred, scale_factor=f, mode="bilinear", align_corners=False)
            pred = pred.clamp_min(0).cpu().numpy()[:, 0].astype(np.float64) * NORM_GY
            for it, p in zip(items, pred):
                out[it["slice"]] = p
        if body is None:
            _, body, _ = self.test_case(pid)
        return out * body


def load_openkbp(cfg: Config, progress: bool = True) -> OpenKBPSharpData:
    """OpenKBP's official train / validation / test patients for the experiment (``cfg.source == "openkbp"``).

    Takes the first ``cfg.n_train`` / ``n_val`` / ``n_test`` patients that have
    a reference dose, a possible-dose mask and a CT in each official split (all if
    fewer; the others are skipped and named). The model reads no CT; requiring it
    keeps the same patients as the book's other OpenKBP experiments, which do. In 2D, the training and validation items are
    every ``cfg.slice_step``-th axial slice that meets the possible-dose mask; the
    test patients keep every such slice (they are scored as whole volumes).
    Raises ``FileNotFoundError`` with download instructions
    (``python data_scripts/download_openkbp.py``) when the data are absent.
    """
    root = find_openkbp(cfg.root)
    usable = None
    manifest = root / "manifest.json"
    if manifest.is_file():
        usable = {k for k, v in json.loads(manifest.read_text()).items()
                  if "dose_cgy" in v and "possible_dose_mask" in v and "ct" in v}
    parts = []
    for split, n in (("train", cfg.n_train), ("validation", cfg.n_val), ("test", cfg.n_test)):
        ids = list_patients(split, root)
        if usable is not None:
            missing = [p for p in ids if f"{split}/{p}" not in usable]
            ids = [p for p in ids if f"{split}/{p}" in usable]
            if missing and progress:
                print(f"OpenKBP {split}: skipping {len(missing)} patient(s) without a dose or a CT: "
                      f"{', '.join(missing)}")
        step = cfg.slice_step if (cfg.dims == 2 and split != "test") else 1
        parts.append(OpenKBPDataset(split, root, dims=cfg.dims, inputs=("rois", "possible_dose_mask"),
                                    patients=ids[:n], slice_step=step, progress=progress, verbose=progress))
    if len(parts[2].patients) < 2:
        raise ValueError(f"need at least 2 OpenKBP test patients with a dose, got {len(parts[2].patients)}")
    ds = OpenKBPRoiMapDataset(parts, downsample=cfg.downsample, cache=cfg.dims == 2 or cfg.device not in (None, "cpu")
                              or torch.cuda.is_available())
    a, b = len(parts[0]), len(parts[0]) + len(parts[1])
    idx = list(range(len(ds)))
    return OpenKBPSharpData(ds, idx[:a], idx[a:b], idx[b:], dims=cfg.dims)


def dose_imbalance(dose_gy, body, threshold_gy: float = 5.0) -> dict:
    """How unbalanced the dose is: the argument of Bai et al. 2021 (Discussion) measured on our data.

    Returns the percentage of all voxels outside the body, the percentage of body
    voxels with a dose below ``threshold_gy`` (5 Gy = the paper's 500 cGy), and the
    number of voxels.
    """
    d = check_dose(dose_gy)
    b = check_mask(body, d.shape, name="body")
    if not (np.isfinite(threshold_gy) and threshold_gy > 0):
        raise ValueError(f"threshold_gy must be a positive dose in Gy, got {threshold_gy!r}")
    n_body = int(b.sum())
    return {"outside_body_pct": 100.0 * (1.0 - n_body / b.size),
            "body_below_pct": 100.0 * float(np.count_nonzero(d[b] < threshold_gy)) / n_body,
            "n_voxels": int(b.size), "n_body": n_body}


# ---- per-case metrics ----------------------------------------------------------------------------------------
def _roi_label(name: str, source: str) -> str:
    """The paper's name of a phantom ROI (:data:`ROI_LABELS`); OpenKBP ROIs keep OpenKBP's names."""
    return ROI_LABELS.get(name, name) if source == "phantom" else name


def _clinical(dose_gy, masks: dict, rx_gy: float) -> dict:
    """The metrics of Table 4 of Bai et al. 2021 for one case (doses in cGy, volumes in %); NaN where undefined."""
    d = np.clip(dose_gy, 0.0, None)  # a linear output layer can give small negative doses
    out = {}
    ptv = masks.get("PTV")
    nan = float("nan")
    if ptv is not None and ptv.any():
        out["PTV D95 (cGy)"] = 100.0 * dvh.dose_at_volume(d, ptv, 95)
        out["PTV HI"] = dvh.homogeneity_index(d, ptv, rx_gy)
        out["PTV CI"] = dvh.conformation_index(d, ptv, rx_gy)
    heart = masks.get("Heart")
    if heart is not None and heart.any():
        out["Heart mean (cGy)"] = 100.0 * dvh.mean_dose(d, heart)
        out["Heart V30 (%)"] = 100.0 * dvh.volume_at_dose(d, heart, 30.0)
    lungs = {"Ipsilateral lung": masks.get("Lung_L")}
    if masks.get("Lung_L") is not None and masks.get("Lung_R") is not None:
        lungs["Whole lung"] = masks["Lung_L"] | masks["Lung_R"]
    for name, m in lungs.items():
        if m is None or not m.any():
            continue
        out[f"{name} mean (cGy)"] = 100.0 * dvh.mean_dose(d, m)
        for v in (5, 20, 30):
            out[f"{name} V{v} (%)"] = 100.0 * dvh.volume_at_dose(d, m, float(v))
    return {k: out.get(k, nan) for k in TABLE4_ROWS}


def case_metrics(pred_gy, ref_gy, body, masks: dict, *, rx_gy: float, spacing=None, source: str = "phantom") -> dict:
    r"""Every per-case metric of the run record for one test case: ``{metric: float}`` (NaN where undefined).

    MADs are :math:`\frac{1}{|R|}\sum_{i\in R}|\hat D_i - D_i|` in cGy (Tables 1-3 of
    Bai et al. 2021): ``"MAD whole region"``, ``"MAD outside the body"``, ``"MAD
    inside the body"``, ``"MAD <band>"`` for each dose band of the true dose inside
    the body (:data:`BAND_ROWS`; NaN when the case has no voxel in the band),
    ``"MAD <ROI>"`` per structure (the paper's names for phantoms, :data:`ROI_LABELS`;
    NaN when the case lacks it). ``"mean error inside the body"`` and ``"error SD
    inside the body"`` are the mean and the standard deviation (``ddof=0``) of the
    signed error :math:`\hat D - D` inside the body (cGy). Breast phantoms add the
    clinical metrics of Table 4 (:data:`TABLE4_ROWS`; predicted doses below 0 set
    to 0); OpenKBP adds the challenge's ``"dose error (Gy)"`` (the dose score of
    one patient, Babier et al. 2021) and ``"DVH error (Gy)"`` (the mean absolute
    DVH-metric error of the patient).

    Parameters
    ----------
    pred_gy, ref_gy : array_like
        Predicted and true dose of one case (Gy), same shape.
    body : array_like of bool
        Body (OpenKBP: possible-dose) mask.
    masks : dict
        ``{ROI name: bool mask}`` with the dataset's names (phantom: ``PTV``, ``Lung_L`` ...).
    rx_gy : float
        Prescription (Gy) for HI and CI.
    spacing : sequence of float, optional
        Voxel size (mm); needed for OpenKBP's DVH error.
    source : {"phantom", "openkbp"}
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    p = check_dose(pred_gy, "prediction", allow_negative=True) * 100.0
    r = check_dose(ref_gy, "reference") * 100.0
    b = check_mask(body, r.shape, name="body")
    out = {TABLE1_METRICS["Whole region"]: mad(p, r),
           TABLE1_METRICS["Outside the body"]: mad(p, r, ~b) if (~b).any() else float("nan"),
           TABLE1_METRICS["Inside the body"]: mad(p, r, b)}
    for (lo, hi), v in mad_by_dose_band(p, r, DOSE_BANDS_CGY, mask=b).items():
        out[TABLE1_METRICS[_band_name(lo, hi)]] = v["mad"]
    err = (p - r)[b]
    out["mean error inside the body"] = float(err.mean())
    out[TABLE1_METRICS["Std"]] = float(err.std())
    for name, v in mad_per_roi(p, r, masks).items():
        out[f"MAD {_roi_label(name, source)}"] = v
    if source == "phantom":
        out.update(_clinical(np.asarray(pred_gy, float), masks, rx_gy))
    else:
        pred = np.clip(np.asarray(pred_gy, float), 0.0, None) * b
        out["dose error (Gy)"] = dose_error(pred, ref_gy, b)
        present = {n: m for n, m in masks.items() if np.asarray(m).any()}
        errs = list(dvh_errors(pred, ref_gy, present, spacing).values()) if present else []
        out["DVH error (Gy)"] = float(np.mean(errs)) if errs else float("nan")
    return out


def reference_extras(reference_gy, body, masks: list, *, rx_gy: float, spacings: list,
                     source: str = "phantom") -> dict:
    """What the tables need of the test cases' true doses, whatever the arm (the run record's ``extras``).

    Parameters are per test case: ``reference_gy`` and ``body`` stacked arrays,
    ``masks`` a list of ``{ROI name: mask}`` and ``spacings`` a list of voxel sizes (mm).

    Returns ``{"voxels": {Table 1 row: [voxels per case]}, "gradient": {band row: [mean |grad D| per case
    (cGy/mm)]}}`` (the voxel counts pool the per-case MADs of Table 1 over all test voxels, as the
    paper's Table 1 does), plus for breast phantoms ``"truth"``: ``{Table 4 metric: [value of the
    true dose per case]}``, and for OpenKBP ``"dvh_metrics"``: the number of DVH metrics per case
    (pools the challenge's DVH score).
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    n = len(reference_gy)
    if not (len(body) == len(masks) == len(spacings) == n):
        raise ValueError(f"got {n} doses, {len(body)} body masks, {len(masks)} ROI dicts and {len(spacings)} "
                         "spacings; pass one of each per test case")
    voxels = {row: [] for row in TABLE1_ROWS[:-1]}
    gradient = {row: [] for row in BAND_ROWS}
    for c in range(n):
        r = check_dose(reference_gy[c], "reference") * 100.0
        b = check_mask(body[c], r.shape, name="body")
        for row, v in (("Whole region", r.size), ("Outside the body", (~b).sum()), ("Inside the body", b.sum())):
            voxels[row].append(int(v))
        for key, v in mad_by_dose_band(r, r, DOSE_BANDS_CGY, mask=b).items():
            voxels[_band_name(*key)].append(v["n"])
        for key, g in mean_gradient_by_band(r, spacings[c], DOSE_BANDS_CGY, mask=b).items():
            gradient[_band_name(*key)].append(g)
    out = {"voxels": voxels, "gradient": gradient}
    if source == "phantom":
        truth = [_clinical(reference_gy[c], masks[c], rx_gy) for c in range(n)]
        out["truth"] = {k: [t[k] for t in truth] for k in TABLE4_ROWS}
    else:
        present = [{k: m for k, m in masks[c].items() if np.asarray(m).any()} for c in range(n)]
        out["dvh_metrics"] = [len(dvh_errors(reference_gy[c], reference_gy[c], present[c], spacings[c]))
                              if present[c] else 0 for c in range(n)]
    return out


def _band_name(lo, hi) -> str:
    return f"> {lo:g} cGy" if not np.isfinite(hi) else f"{lo:g}-{hi:g} cGy"


# ---- one seed ------------------------------------------------------------------------------------------------
def _mad_body_cgy(pred, batch):
    """Validation metric comparable across losses: MAD inside the body in cGy."""
    m = batch["mask"] > 0.5
    return float((pred - batch["target"]).abs()[m].mean()) * NORM_GY * 100.0


@torch.no_grad()
def predict(model, data: SharpData, indices, batch_size: int = 2) -> np.ndarray:
    """Predicted dose in Gy (model output x 60 Gy) for the cases ``indices``, shape ``(N, *grid)``."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for batch in DataLoader(Subset(data.dataset, list(indices)), batch_size=batch_size):
        out.append(model(batch["input"].to(device)).float().cpu().numpy()[:, 0])
    return np.concatenate(out).astype(np.float64) * NORM_GY


def _test_cases(data: SharpData, cfg: Config, keep: int | None = None):
    """Yield ``(k, reference Gy, body, ROI masks (R, ...), spacing)`` per test case (2D OpenKBP: one patient)."""
    if isinstance(data, OpenKBPSharpData) and data.dims == 2:
        for k, (pid, sp) in enumerate(zip(data.test_patients, data.case_spacing(data.test))):
            yield (k, *data.test_case(pid), sp)
        return
    ref, body, rois = data.arrays(data.test)
    for k, sp in enumerate(data.case_spacing(data.test)):
        yield k, ref[k], body[k], rois[k], sp


def _validation_scores(vpred, vref, vbody, vrois, names, source) -> dict:
    """Validation MAD and signed-error SD inside the body (cGy), and MAD per structure (cGy), voxels pooled."""
    err = (vpred - vref) * 100.0
    inside = err[vbody]
    roi = {}
    for k, n in enumerate(names):
        m = vrois[:, k]
        if m.any():
            roi[_roi_label(n, source)] = float(np.abs(err[m]).mean())
    return {"mad": float(np.abs(inside).mean()), "sd": float(inside.std()), "roi": roi}


def run(cfg: Config, seed: int, *, data: SharpData | None = None, progress: bool = True) -> dict:
    """Train every arm of ``cfg`` (:func:`arms`) with training seed ``seed`` and score the test cases.

    For each arm, ``seed`` sets the initial weights (the model is built inside
    :func:`rtlearn.train.seeded`, so every arm starts from the same weights) and
    the batch order (:func:`rtlearn.train.fit`); the split is fixed by ``cfg``.
    Adam, the learning rate divided by 10 after ``plateau_patience`` epochs without
    a lower validation loss (never below ``plateau_min_lr``), at most ``epochs``
    epochs and early stopping after ``early_stopping`` epochs without a lower
    validation loss; the weights of the epoch with the lowest validation loss are kept.

    Returns
    -------
    dict
        The run record of :mod:`rtlearn.study`: ``cases`` (test-case ids),
        ``metrics`` ``{arm: {metric: [one float per case]}}`` (:func:`case_metrics`),
        ``history`` ``{arm: per-epoch records}`` (with the validation MAD inside the
        body, ``val_mad_body_cgy``), ``seconds`` ``{arm: training and scoring time}``,
        ``extras`` (small JSON: per arm the validation MAD inside the body
        ``val_mad_body_cgy``, the validation error SD inside the body
        ``val_sd_body_cgy`` and MAD per structure ``val_mad_roi_cgy`` of the kept
        weights (cGy, voxels of all validation cases pooled), the epochs trained
        ``epochs``, and :func:`reference_extras`) and ``live`` (in memory only: the
        test arrays, the predictions in Gy and the trained models, for
        :func:`plot_sample`; for 2D OpenKBP only the first two test patients' arrays).
    """
    if not isinstance(cfg, Config):
        raise TypeError(f"cfg must be a sharp.Config, got {type(cfg).__name__}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    seed = int(seed)
    data = load_data(cfg, progress) if data is None else data
    okbp2d = isinstance(data, OpenKBPSharpData) and data.dims == 2
    keep = 2 if okbp2d else None
    vref, vbody, vrois = data.arrays(data.val)
    names = data.roi_names
    train, val = Subset(data.dataset, data.train), Subset(data.dataset, data.val)
    metrics, history, seconds, preds, models = {}, {}, {}, {}, {}
    vscores, epochs = {}, {}
    for arm, loss in arms(cfg).items():
        t0 = time.perf_counter()
        with seeded(seed):
            model = build_model(cfg)
        result = fit(model, loss, train, val=val, epochs=cfg.epochs, batch_size=cfg.batch_size, seed=seed,
                     drop_last=len(data.train) >= 2 * cfg.batch_size, lr=cfg.lr, scheduler="plateau",
                     plateau_factor=cfg.plateau_factor, plateau_patience=cfg.plateau_patience,
                     plateau_min_lr=cfg.plateau_min_lr, early_stopping=cfg.early_stopping,
                     metrics={"val_mad_body_cgy": _mad_body_cgy}, device=cfg.device, progress=progress)
        vpred = predict(result.model, data, data.val, cfg.batch_size)
        vscores[arm] = _validation_scores(vpred, vref, vbody, vrois, names, cfg.source)
        epochs[arm] = len(result.history.records)
        per_case, kept = [], []
        batch_preds = None if okbp2d else iter(predict(result.model, data, data.test, cfg.batch_size))
        pids = data.test_patients if okbp2d else None
        for k, ref, body, rois, sp in _test_cases(data, cfg):
            pred = data.predict_case(result.model, pids[k], body) if okbp2d else next(batch_preds)
            masks = {n: rois[j] for j, n in enumerate(names)}
            per_case.append(case_metrics(pred, ref, body, masks, rx_gy=data.rx_gy, spacing=sp, source=cfg.source))
            if keep is None or k < keep:
                kept.append(pred)
        metrics[arm] = {key: [pc[key] for pc in per_case] for key in per_case[0]}
        history[arm] = result.history.records
        seconds[arm] = time.perf_counter() - t0
        preds[arm], models[arm] = np.stack(kept), result.model
    ref_l, body_l, rois_l, masks_l, sp_l = [], [], [], [], []
    ref_extras = None
    for k, ref, body, rois, sp in _test_cases(data, cfg):
        one = reference_extras([ref], [body], [{n: rois[j] for j, n in enumerate(names)}], rx_gy=data.rx_gy,
                               spacings=[sp], source=cfg.source)
        ref_extras = one if ref_extras is None else _merge_extras(ref_extras, one)
        if keep is None or k < keep:
            ref_l.append(ref), body_l.append(body), rois_l.append(rois), sp_l.append(sp)
    extras = {"val_mad_body_cgy": {a: v["mad"] for a, v in vscores.items()},
              "val_sd_body_cgy": {a: v["sd"] for a, v in vscores.items()},
              "val_mad_roi_cgy": {a: v["roi"] for a, v in vscores.items()},
              "epochs": epochs, **ref_extras}
    live = {"reference": np.stack(ref_l), "body": np.stack(body_l), "rois": np.stack(rois_l), "roi_names": names,
            "spacing": tuple(sp_l[0]), "case_spacing": sp_l, "rx_gy": data.rx_gy, "source": cfg.source,
            "predictions": preds, "models": models, "val_mad_body_cgy": dict(extras["val_mad_body_cgy"])}
    return {"cases": data.case_ids(data.test), "metrics": metrics, "history": history, "seconds": seconds,
            "extras": extras, "live": live}


def _merge_extras(a: dict, b: dict) -> dict:
    """Concatenate the per-case lists of two :func:`reference_extras` results."""
    out = {}
    for key, v in a.items():
        if isinstance(v, dict):
            out[key] = {k: list(v[k]) + list(b[key][k]) for k in v}
        else:
            out[key] = list(v) + list(b[key])
    return out


# ---- the paper's claims ----------------------------------------------------------------------------------------
def _paper_claims() -> tuple:
    sl, col = arm_label(100.0), 1 + PAPER_GAMMAS.index(100.0)
    inside, std = PAPER_TABLE1["Inside the body"], PAPER_TABLE1["Std"]
    claims = [Claim("MAD inside the body", MSE_ARM, sl, "lower",
                    f"Lower MAD inside the body with the sharp loss (γ = 100) than with the MSE; paper's Table 1: "
                    f"{inside[0]:.2f} → {inside[col]:.2f} cGy", paper=round(inside[col] - inside[0], 2))]
    for roi, (mse, _, slv, _, p) in PAPER_TABLE3.items():
        claims.append(Claim(f"MAD {roi}", MSE_ARM, sl, "lower",
                            f"Lower {roi if roi == 'PTV' else roi.lower()} MAD with the sharp loss (γ = 100) than "
                            f"with the MSE; paper's Table 3: {mse:.2f} → {slv:.2f} cGy, p = {p:g}",
                            paper=round(slv - mse, 2)))
    for k, g in enumerate(PAPER_GAMMAS):       # gamma = 100 is best: the lowest error SD inside the body
        if g == 100.0:
            continue
        claims.append(Claim("error SD inside the body", arm_label(g), sl, "lower",
                            f"γ = 100 has a lower error SD inside the body than γ = {g:g}; paper's Table 1: "
                            f"{std[1 + k]:.2f} → {std[col]:.2f} cGy", paper=round(std[col] - std[1 + k], 2)))
    for g in (250.0, 500.0):                   # large gamma is worse: a higher MAD inside the body than gamma = 100
        k = 1 + PAPER_GAMMAS.index(g)
        claims.append(Claim("MAD inside the body", sl, arm_label(g), "higher",
                            f"γ = {g:g} has a higher MAD inside the body than γ = 100; paper's Table 1: "
                            f"{inside[col]:.2f} → {inside[k]:.2f} cGy", paper=round(inside[k] - inside[col], 2)))
    return tuple(claims)


#: The paper's claims, tested by :func:`rtlearn.metrics.stats.judge` on the per-case metrics, in three groups
#: (:data:`CLAIM_GROUPS`): the sharp loss (gamma = 100) beats the MSE inside the body and in every structure
#: (Tables 1 and 3); gamma = 100 is the best sharpness (the lowest error SD inside the body, the paper's own
#: criterion, against each other gamma); a large gamma (250, 500) is worse than 100 (a higher MAD inside the
#: body). ``paper`` is the paper's difference (B - A, cGy) from its Tables 1 and 3.
CLAIMS = _paper_claims()
#: The three claims of the paper as groups of :data:`CLAIMS` (indices): a group is supported when every one of
#: its tests is, contradicted when any is contradicted, and unresolved otherwise (:func:`claim_verdicts`).
CLAIM_GROUPS = {
    "The sharp loss (γ = 100) beats the MSE inside the body and in the PTV": (0, 1),
    "γ = 100 is the best sharpness (lowest error SD inside the body)": tuple(range(6, 11)),
    "A large γ (250, 500) is worse than γ = 100": (11, 12),
}

#: Claims carried over to OpenKBP (head and neck; the paper has no such data, so these test whether its
#: claims transfer): the sharp loss (gamma = 100) beats the MSE inside the possible-dose mask, in the PTV70 and
#: on the challenge's dose and DVH scores; gamma = 500 is worse than 100 inside the mask.
OPENKBP_CLAIMS = (
    Claim("MAD inside the body", MSE_ARM, arm_label(100.0), "lower",
          "Lower MAD inside the possible-dose mask with the sharp loss (γ = 100) than with the MSE"),
    Claim("MAD PTV70", MSE_ARM, arm_label(100.0), "lower",
          "Lower PTV70 MAD with the sharp loss (γ = 100) than with the MSE"),
    Claim("dose error (Gy)", MSE_ARM, arm_label(100.0), "lower",
          "Lower OpenKBP dose error with the sharp loss (γ = 100) than with the MSE"),
    Claim("DVH error (Gy)", MSE_ARM, arm_label(100.0), "lower",
          "Lower OpenKBP DVH error with the sharp loss (γ = 100) than with the MSE"),
    Claim("MAD inside the body", arm_label(100.0), arm_label(500.0), "higher",
          "γ = 500 has a higher MAD inside the possible-dose mask than γ = 100"),
)


def claims_for(study, claims=None) -> tuple:
    """The claims of ``claims`` (default: the study's source's) whose two arms the study has."""
    if claims is None:
        claims = OPENKBP_CLAIMS if _source(study) == "openkbp" else CLAIMS
    arms_ = set(study.arms)
    return tuple(c for c in claims if c.a in arms_ and c.b in arms_)


def claim_verdicts(rows, groups=None) -> dict:
    """One verdict per claim of the paper from the judged tests ``rows`` (:func:`rtlearn.metrics.stats.judge`
    over all of :data:`CLAIMS`, in order): ``{claim: verdict}`` for each group of :data:`CLAIM_GROUPS`.

    A group is ``"supported"`` when all its tests are supported, ``"contradicted"`` when any test is
    contradicted, ``"unresolved"`` otherwise; a group with a test missing from ``rows`` is
    ``"not tested"`` (e.g. the quick profile lacks some gammas).
    """
    groups = CLAIM_GROUPS if groups is None else groups
    by_key = {(r["metric"], r["a"], r["b"]): r["verdict"] for r in rows}
    out = {}
    for name, idx in groups.items():
        keys = [(CLAIMS[i].metric, CLAIMS[i].a, CLAIMS[i].b) for i in idx]
        if any(k not in by_key for k in keys):
            out[name] = "not tested"
            continue
        v = [by_key[k] for k in keys]
        out[name] = "contradicted" if "contradicted" in v else "supported" if all(x == "supported" for x in v) \
            else "unresolved"
    return out


#: Overrides that make ``default_config("study", **TINY)`` run one seed in a few seconds (tests).
TINY = dict(n_train=4, n_val=2, n_test=3, shape=(48, 48), spacing=(8.0, 8.0), gammas=PAPER_GAMMAS, epochs=2,
            depth=2, width=4, n_jobs=1)


# ---- tables ------------------------------------------------------------------------------------------------------
def _floats(values) -> np.ndarray:
    """A JSON list (``None`` for NaN) as a float array."""
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def _source(study) -> str:
    return study.config.get("source", "phantom")


def _pooled(values, weights) -> np.ndarray:
    """Per seed: the mean of per-case values weighted by per-case voxel counts (NaN where nothing is left)."""
    v = np.atleast_2d(np.asarray(values, float))
    w = np.broadcast_to(np.asarray(weights, float), v.shape)
    ok = np.isfinite(v) & (w > 0)
    den = np.where(ok, w, 0.0).sum(axis=1)
    num = np.where(ok, v * w, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _seed_means(values) -> np.ndarray:
    """Per seed: the mean over the test cases where defined (NaN if none)."""
    v = np.atleast_2d(np.asarray(values, float))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(v, axis=1)


def _cell(per_seed):
    """One seed: the number; several: ``(mean, sd over seeds)`` (formatted ``mean ± sd`` by markdown_table)."""
    x = np.asarray(per_seed, float)
    if x.size == 1:
        return float(x[0])
    ok = x[np.isfinite(x)]
    if ok.size == 0:
        return float("nan")
    return (float(ok.mean()), float(ok.std(ddof=1)) if ok.size > 1 else float("nan"))


def table1(study) -> dict:
    r"""Table 1 of Bai et al. 2021 from a study: MAD (cGy) by region and dose band, per seed.

    Returns ``{"rows": {row: {arm: array over seeds}}, "gradient": {band row: cGy/mm}, "n": {row: voxels}}``.
    For each seed, the per-case MADs are pooled over the voxels of all test cases
    (weighted by each case's voxel count, as the paper pools its test set): the
    MAD of all test voxels of the region. Dose bands are taken inside the body on
    the true dose; "Std" is the standard deviation of the signed error inside the
    body over all test voxels; the gradient column is the mean :math:`|\nabla D|`
    of the true dose in each band (in-plane only for 2D slices).
    """
    ex = study.extras(study.seeds[0])
    counts = {row: _floats(ex["voxels"][row]) for row in TABLE1_ROWS[:-1]}
    rows = {r: {} for r in TABLE1_ROWS}
    n_body = counts["Inside the body"]
    for arm in study.arms:
        for r in TABLE1_ROWS[:-1]:
            rows[r][arm] = _pooled(study.metric(TABLE1_METRICS[r], arm), counts[r])
        mu = study.metric("mean error inside the body", arm)
        sd = study.metric(TABLE1_METRICS["Std"], arm)
        m1 = (mu * n_body).sum(axis=1) / n_body.sum()
        m2 = ((sd ** 2 + mu ** 2) * n_body).sum(axis=1) / n_body.sum()
        rows["Std"][arm] = np.sqrt(np.maximum(m2 - m1 ** 2, 0.0))
    gradient = {b: float(_pooled(_floats(ex["gradient"][b]), counts[b])[0]) for b in BAND_ROWS}
    return {"rows": rows, "gradient": gradient, "n": {r: int(np.nansum(c)) for r, c in counts.items()}}


def band_contributions(study, a: str = MSE_ARM, b: str | None = None) -> dict:
    r"""Where the difference of two arms' MAD inside the body comes from: its share per dose band.

    The MAD inside the body pools the voxels of every dose band (Table 1), so the
    difference between arms ``b`` and ``a`` is the sum over bands of the band's
    share of the body voxels times the difference of the band's MADs:

    .. math:: \mathrm{MAD}_b - \mathrm{MAD}_a = \sum_k \frac{n_k}{n}\,
       \big(\mathrm{MAD}_{b,k} - \mathrm{MAD}_{a,k}\big)

    Returns ``{band: {"share": fraction of body voxels, "a": MAD of a, "b": MAD of b, "contribution": cGy}}``
    with the MADs averaged over seeds (Table 1's pooled values), and ``"total"``: the sum of the
    contributions, which equals the difference of the pooled MADs inside the body.
    """
    b = arm_label(100.0) if b is None else b
    for arm in (a, b):
        if arm not in study.arms:
            raise ValueError(f"no arm {arm!r}; the study has {study.arms}")
    t1 = table1(study)
    n_body = t1["n"]["Inside the body"]
    out, total = {}, 0.0
    for band in BAND_ROWS:
        share = t1["n"][band] / n_body
        ma, mb = float(np.nanmean(t1["rows"][band][a])), float(np.nanmean(t1["rows"][band][b]))
        c = share * (mb - ma) if share > 0 else 0.0
        out[band] = {"share": share, "a": ma, "b": mb, "contribution": c}
        total += c
    out["total"] = total
    return out


def _roi_names(study) -> list:
    return [m[4:] for m in study.metric_names if m.startswith("MAD ") and m not in TABLE1_METRICS.values()]


def table2(study) -> dict:
    """Table 2 of Bai et al. 2021: ``{ROI: {arm: array over seeds of the mean MAD over test cases (cGy)}}``."""
    return {roi: {arm: _seed_means(study.metric(f"MAD {roi}", arm)) for arm in study.arms}
            for roi in _roi_names(study)}


def table4(study, arm_names=None) -> dict:
    """Table 4 of Bai et al. 2021: ``{metric: {"Ground truth"|arm: (mean, sd) over test cases}}``.

    Each test case's value is first averaged over seeds; mean and standard
    deviation (``ddof=1``) are then taken over the test cases where the metric
    is defined, as the paper's mean ± sd over its test patients. HI = (D1 - D99)
    / Rx and CI = V(PTV and Rx)^2 / (V_PTV V_Rx) with Rx the phantom's 50 Gy (the
    paper's 5000 cGy); negative predicted doses are set to 0 first.
    """
    if _source(study) != "phantom":
        raise ValueError("table4 holds the breast metrics of Bai et al.'s Table 4; for OpenKBP (head and neck) "
                         "use openkbp_scores(study)")
    cols = [MSE_ARM, select_best(study)] if arm_names is None else list(arm_names)
    truth = study.extras(study.seeds[0])["truth"]
    out = {k: {} for k in TABLE4_ROWS}
    for k in TABLE4_ROWS:
        per_col = {"Ground truth": _floats(truth[k])}
        for arm in cols:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                per_col[arm] = np.nanmean(study.metric(k, arm), axis=0)
        for col, v in per_col.items():
            v = v[np.isfinite(v)]
            out[k][col] = (float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else float("nan")) if v.size else \
                (float("nan"), float("nan"))
    return out


def validation_mad(study) -> dict:
    """``{arm: array over seeds}``: validation MAD inside the body (cGy) of the kept weights."""
    return {arm: np.array([study.extras(s)["val_mad_body_cgy"][arm] for s in study.seeds], dtype=float)
            for arm in study.arms}


def validation_sd(study) -> dict:
    """``{arm: array over seeds}``: SD of the signed validation error inside the body (cGy) of the kept weights."""
    return {arm: np.array([study.extras(s)["val_sd_body_cgy"][arm] for s in study.seeds], dtype=float)
            for arm in study.arms}


def validation_roi_mad(study) -> dict:
    """``{ROI: {arm: array over seeds}}``: validation MAD per structure (cGy) of the kept weights."""
    first = study.extras(study.seeds[0])["val_mad_roi_cgy"]
    rois = list(next(iter(first.values())))
    return {r: {arm: np.array([study.extras(s)["val_mad_roi_cgy"][arm].get(r, np.nan) for s in study.seeds],
                              dtype=float) for arm in study.arms} for r in rois}


def select_by_mad(mad_inside) -> str:
    """The arm with the lowest MAD inside the body: ``mad_inside`` is ``{arm: value}`` (MSE excluded).

    Applied to the paper's own Table 1 (:func:`paper_selection`) this picks γ = 50 (148.67 cGy), not the
    paper's γ = 100 (154.15 cGy, 4th of the six gammas).
    """
    sharp = {a: float(v) for a, v in mad_inside.items() if a != MSE_ARM}
    if not sharp:
        raise ValueError("no sharp-loss arm to choose from")
    if not all(np.isfinite(v) for v in sharp.values()):
        raise ValueError(f"the MADs must be finite, got {sharp}")
    return min(sharp, key=sharp.get)


def roi_wins(roi_mad) -> dict:
    """``{arm: number of structures where the arm has the lowest MAD}`` from ``{ROI: {arm: MAD}}`` (MSE excluded)."""
    wins = {}
    for row in roi_mad.values():
        sharp = {a: float(v) for a, v in row.items() if a != MSE_ARM and np.isfinite(v)}
        for a in sharp:
            wins.setdefault(a, 0)
        if sharp:
            best = min(sharp, key=sharp.get)
            wins[best] += 1
    return wins


def select_like_paper(sd_inside, roi_mad) -> str:
    """The arm chosen as Bai et al. chose γ: the lowest SD of the error inside the body, then the per-ROI table.

    The paper argues for γ = 100 from the standard deviation of the prediction error inside the body (the last
    row of its Table 1: every part of the body matters equally) and then from its Table 2 (γ = 100 has the
    lowest MAD in most structures). Here the SD decides; the number of structures where an arm has the lowest
    MAD (:func:`roi_wins`) breaks ties. ``sd_inside`` is ``{arm: SD}``, ``roi_mad`` ``{ROI: {arm: MAD}}``; the
    MSE arm is never chosen. On the paper's own Tables 1 and 2 this gives γ = 100 (:func:`paper_selection`).
    """
    sharp = {a: float(v) for a, v in sd_inside.items() if a != MSE_ARM}
    if not sharp:
        raise ValueError("no sharp-loss arm to choose from")
    if not all(np.isfinite(v) for v in sharp.values()):
        raise ValueError(f"the error SDs must be finite, got {sharp}")
    wins = roi_wins(roi_mad)
    return min(sharp, key=lambda a: (round(sharp[a], 9), -wins.get(a, 0)))


def paper_selection() -> dict:
    """Both selection rules applied to the paper's own numbers (Tables 1 and 2 of Bai et al. 2021).

    Returns ``{"by MAD": arm, "like the paper": arm, "roi wins": {arm: n}}``: the lowest MAD inside the body
    picks γ = 50, the paper's procedure (:func:`select_like_paper`) γ = 100.
    """
    names = [MSE_ARM] + [arm_label(g) for g in PAPER_GAMMAS]
    mad = dict(zip(names, PAPER_TABLE1["Inside the body"]))
    sd = dict(zip(names, PAPER_TABLE1["Std"]))
    roi = {r: dict(zip(names, v)) for r, v in PAPER_TABLE2.items()}
    return {"by MAD": select_by_mad(mad), "like the paper": select_like_paper(sd, roi), "roi wins": roi_wins(roi)}


def selection(study) -> dict:
    """Both selection rules on the *validation* patients of a study (values averaged over seeds).

    Returns ``{"by MAD": arm, "like the paper": arm, "roi wins": {arm: n}, "per seed": {"by MAD": [...],
    "like the paper": [...]}}``. Never uses the test patients. The chapter's verdicts do not depend on it:
    they test γ = 100, the paper's choice; the chosen arm only adds a column to Table 4.
    """
    mad, sd, roi = validation_mad(study), validation_sd(study), validation_roi_mad(study)
    mean = lambda d: {a: float(np.mean(v)) for a, v in d.items()}  # noqa: E731
    roi_mean = {r: mean(v) for r, v in roi.items()}
    per_seed = {"by MAD": [], "like the paper": []}
    for k in range(len(study.seeds)):
        pick = lambda d, k=k: {a: float(v[k]) for a, v in d.items()}  # noqa: E731
        per_seed["by MAD"].append(select_by_mad(pick(mad)))
        per_seed["like the paper"].append(select_like_paper(pick(sd), {r: pick(v) for r, v in roi.items()}))
    return {"by MAD": select_by_mad(mean(mad)), "like the paper": select_like_paper(mean(sd), roi_mean),
            "roi wins": roi_wins(roi_mean), "per seed": per_seed}


def select_best(study) -> str:
    """The sharp-loss arm chosen on the validation patients by the paper's procedure (:func:`selection`)."""
    if not [arm for arm in study.arms if arm != MSE_ARM]:
        raise ValueError("no sharp-loss arm in the study")
    return selection(study)["like the paper"]


def epochs_trained(study) -> dict:
    """``{arm: array over seeds}``: the epochs each arm trained before early stopping (or the limit)."""
    return {arm: np.array([len(h) for h in study.histories(arm)], dtype=float) for arm in study.arms}


def openkbp_scores(study) -> dict:
    """OpenKBP's dose score and DVH score (Gy) of each arm, per seed: ``{arm: {"dose_score": array, ...}}``.

    The dose score is the mean over test patients of the per-patient dose error,
    the DVH score the mean over every (patient, DVH metric) error (Babier et al.
    2021), both with predictions multiplied by the possible-dose mask and clipped
    at 0, as the challenge's baseline. With ``downsample > 1`` they are computed on
    the coarse grid and are not comparable with the challenge's leaderboard.
    """
    if _source(study) != "openkbp":
        raise ValueError(f"openkbp_scores needs a study of source='openkbp', got {_source(study)!r}")
    n_dvh = _floats(study.extras(study.seeds[0])["dvh_metrics"])
    return {arm: {"dose_score": _seed_means(study.metric("dose error (Gy)", arm)),
                  "dvh_score": _pooled(study.metric("DVH error (Gy)", arm), n_dvh)} for arm in study.arms}


def _fmt_p(p) -> str:
    if p is None or not np.isfinite(p):
        return "–"
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def _paper_pair(c: Claim) -> tuple:
    """The paper's (A mean, A sd, B mean, B sd, p) for claim ``c`` (sd and p None where the paper gives none)."""
    roi = c.metric[4:] if c.metric.startswith("MAD ") else None
    if c.a == MSE_ARM and roi in PAPER_TABLE3:
        return PAPER_TABLE3[roi]
    row = "Std" if c.metric == "error SD inside the body" else "Inside the body"
    col = lambda arm: 0 if arm == MSE_ARM else 1 + PAPER_GAMMAS.index(float(arm.split("=")[1]))  # noqa: E731
    return PAPER_TABLE1[row][col(c.a)], None, PAPER_TABLE1[row][col(c.b)], None, None


def _claims_table(study, claims=None) -> str:
    claims = claims_for(study, claims)
    rows = []
    for c, r in zip(claims, judge(study, claims)):
        ours_a = r["a_seed_mean"] if not np.isfinite(r["a_seed_sd"]) else (r["a_seed_mean"], r["a_seed_sd"])
        ours_b = r["b_seed_mean"] if not np.isfinite(r["b_seed_sd"]) else (r["b_seed_mean"], r["b_seed_sd"])
        test = [f"{r['diff']:.2f} [{r['ci_lo']:.2f}, {r['ci_hi']:.2f}]", _fmt_p(r["p_adj"]), r["verdict"]]
        metric = c.metric[4:] if c.metric.startswith("MAD ") else c.metric
        if _source(study) == "openkbp":
            rows.append([metric, f"{c.b} vs {c.a}", c.direction, ours_a, ours_b] + test)
            continue
        pa, sa, pb, sb, p = _paper_pair(c)
        rows.append([metric[0].upper() + metric[1:], f"{c.b} vs {c.a}", c.direction,
                     float(pa) if sa is None else (pa, sa), float(pb) if sb is None else (pb, sb), _fmt_p(p),
                     ours_a, ours_b] + test)
    tail = ["ours: median difference B − A [95 % CI]", "ours: p (Holm)", "verdict"]
    if _source(study) == "openkbp":
        return markdown_table(["metric", "B vs A", "claimed", "ours: A", "ours: B"] + tail, rows)
    return markdown_table(["metric (cGy)", "B vs A", "claimed", "paper: A", "paper: B", "paper: p", "ours: A",
                           "ours: B"] + tail, rows)


def tables(study) -> dict:
    """The chapter's tables from a study (live: :func:`rtlearn.study.from_runs`; recorded: ``load_study``).

    Returns ``{name: Markdown}``, in this order:

    * ``"Table 1"``: MAD (cGy) by region and dose band for every arm (:func:`table1`)
      and the true dose gradient; ``"Table 1 (paper)"``: Bai et al.'s values;
    * ``"Table 2"``: MAD per structure (:func:`table2`); ``"Table 2 (paper)"``;
    * ``"Table 3"``: the paper's claims (:data:`CLAIMS`, MSE vs the sharp loss
      with gamma = 100): the paper's means (± sd over its patients) and p, our
      means over test cases, the median paired difference over test cases with
      its bootstrap 95 % interval, the Holm-adjusted Wilcoxon p and the verdict
      of :func:`rtlearn.metrics.stats.judge` (only when the study has both arms of the claims);
    * ``"Table 4"``: clinical metrics, truth / MSE / SL gamma=100 / the arm chosen
      on validation (:func:`table4`) beside the paper's;
    * ``"Selection"``: validation and test MAD inside the body of every arm and
      the gamma chosen on validation (descriptive, not a claim);

    for OpenKBP, ``"Table 1"``, ``"Table 2"``, ``"OpenKBP scores"``, ``"Table 3"`` (the claims of
    :data:`OPENKBP_CLAIMS` whose arms the study has) and ``"Selection"``.
    Our numbers are, with one seed, that seed's; with several, mean ± sd over seeds
    (Table 4: mean ± sd over test cases of the seed-averaged values).
    """
    src = _source(study)
    out = {}
    arm_names = study.arms
    t1 = table1(study)
    rows = [[r] + [_cell(t1["rows"][r][a]) for a in arm_names] + [t1["gradient"].get(r, float("nan"))]
            for r in TABLE1_ROWS]
    seeds = f", {len(study.seeds)} seeds" if len(study.seeds) > 1 else ""
    head = f"**Ours** ({study.profile} profile{seeds})" if src == "phantom" else \
        f"**OpenKBP, Table 1** ({study.profile} profile{seeds}): MAD (cGy)"
    out["Table 1"] = Markdown(head + "\n\n" + markdown_table(["MAD (cGy)"] + arm_names + ["gradient (cGy/mm)"], rows))
    t2 = table2(study)
    rows2 = [[r] + [_cell(t2[r][a]) for a in arm_names] for r in t2]
    head2 = "**Ours**: MAD per structure (cGy)" if src == "phantom" else "**OpenKBP, Table 2**: MAD per structure (cGy)"
    if src == "phantom":
        paper = [[r] + list(PAPER_TABLE1[r]) + [PAPER_GRADIENT.get(r, float("nan"))] for r in TABLE1_ROWS]
        out["Table 1 (paper)"] = Markdown("**Bai et al. 2021, Table 1** (clinical 3D data)\n\n" + markdown_table(
            ["MAD (cGy)", "MSE"] + [arm_label(g) for g in PAPER_GAMMAS] + ["gradient (cGy/mm)"], paper))
    out["Table 2"] = Markdown(head2 + "\n\n" + markdown_table(["ROI"] + arm_names, rows2))
    best = select_best(study)
    if src == "phantom":
        out["Table 2 (paper)"] = Markdown("**Bai et al. 2021, Table 2**\n\n" + markdown_table(
            ["ROI", "MSE"] + [arm_label(g) for g in PAPER_GAMMAS], [[r] + list(v) for r, v in PAPER_TABLE2.items()]))
        if claims_for(study):
            out["Table 3"] = Markdown(_claims_table(study))
        sl = arm_label(100.0)
        cols = [MSE_ARM] + [a for a in (sl, best) if a in arm_names and a != MSE_ARM]
        cols = list(dict.fromkeys(cols))
        t4 = table4(study, cols)
        fmt = lambda m: "–" if not np.isfinite(m[0]) else f"{m[0]:.2f} ± {m[1]:.2f}"  # noqa: E731
        rows4 = [[k] + [fmt(t4[k][c]) for c in ["Ground truth"] + cols]
                 + [fmt(PAPER_TABLE4[k][0:2]), fmt(PAPER_TABLE4[k][2:4]), fmt(PAPER_TABLE4[k][4:6])]
                 for k in TABLE4_ROWS]
        out["Table 4"] = Markdown(markdown_table(
            ["metric", "ours: truth"] + [f"ours: {c}" for c in cols] + ["paper: truth", "paper: MSE",
                                                                        "paper: SL γ=100"], rows4))
    else:
        sc = openkbp_scores(study)
        out["OpenKBP scores"] = Markdown("**OpenKBP challenge scores** (Gy, lower is better)\n\n" + markdown_table(
            ["arm", "dose score", "DVH score"], [[a, _cell(sc[a]["dose_score"]), _cell(sc[a]["dvh_score"])]
                                                for a in arm_names]))
        if claims_for(study):
            out["Table 3"] = Markdown(_claims_table(study))
    val, vsd, sel, ep = validation_mad(study), validation_sd(study), selection(study), epochs_trained(study)
    n = len(study.seeds)
    rows_s = [[a, _cell(val[a]), _cell(vsd[a]), sel["roi wins"].get(a, "–") if a != MSE_ARM else "–",
               _cell(t1["rows"]["Inside the body"][a]), int(ep[a][0]) if len(ep[a]) == 1 else _cell(ep[a]),
               f"{sel['per seed']['like the paper'].count(a)} / {sel['per seed']['by MAD'].count(a)} of {n}"
               if a != MSE_ARM else "–"] for a in arm_names]
    out["Selection"] = Markdown(
        f"**γ chosen on the validation patients**: {sel['like the paper']} by the paper's procedure (lowest "
        f"error SD inside the body, then the structures won); {sel['by MAD']} by the lowest MAD inside the "
        f"body.\n\n" + markdown_table(
            ["arm", "validation MAD inside the body (cGy)", "validation error SD inside the body (cGy)",
             "structures with the lowest validation MAD", "test MAD inside the body (cGy)", "epochs trained",
             "chosen in seeds (paper's rule / MAD)"], rows_s))
    return out


# ---- figures -----------------------------------------------------------------------------------------------------
def _band(ax, x, runs, color, label, ls="-"):
    """Mean over seeds of per-epoch values (runs may differ in length) with a min-max band."""
    n = max(len(r) for r in runs)
    v = np.full((len(runs), n), np.nan)
    for k, r in enumerate(runs):
        v[k, :len(r)] = r
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean, lo, hi = np.nanmean(v, 0), np.nanmin(v, 0), np.nanmax(v, 0)
    ax.plot(x[:n], mean, color=color, ls=ls, label=label)
    if len(runs) > 1:
        ax.fill_between(x[:n], lo, hi, color=color, alpha=0.18, lw=0)


def plot_training_curves(study, seed=None, axes=None):
    """Training and validation loss per arm (their Fig. 1), plus the validation MAD inside the body.

    With several seeds each line is the mean over the seeds that reached the epoch (early stopping ends seeds
    at different epochs) and the band their range; ``seed`` draws one recorded seed only. Loss values of
    different losses are not on the same scale (the sharp loss down-weights voxels), so the third panel shows
    a common yardstick.
    """
    import matplotlib.pyplot as plt

    seeds = study.seeds
    if seed is not None and seed not in seeds:
        raise ValueError(f"seed {seed!r} is not in the study (seeds {seeds})")
    pick = range(len(seeds)) if seed is None else [seeds.index(seed)]
    if axes is None:
        _, axes = plt.subplots(1, 3, figsize=(11, 3.3), layout="constrained")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for j, arm in enumerate(study.arms):
        recs = [study.histories(arm)[k] for k in pick]
        get = lambda key: [[np.nan if r.get(key) is None else r[key] for r in rs] for rs in recs]  # noqa: E731
        x = np.arange(1, max(len(r) for r in recs) + 1)
        c = colors[j % len(colors)]
        for ax, key in zip(axes, ("train_loss", "val_loss", "val_mad_body_cgy")):
            _band(ax, x, get(key), c, arm)
    n = len(pick)
    for ax, t in zip(axes, ("training loss", "validation loss", "validation MAD inside the body")):
        ax.set_xlabel("epoch")
        ax.set_title(t + (f" ({n} seeds: mean, range)" if n > 1 else ""), fontsize=9)
    axes[0].set_ylabel("loss (normalised dose²)")
    axes[1].set_ylabel("loss (normalised dose²)")
    axes[0].set_yscale("log")
    axes[1].set_yscale("log")
    axes[2].set_ylabel("MAD (cGy)")
    axes[2].legend(fontsize=7)
    return axes


def plot_mad_vs_gamma(study, axes=None, paper: bool = True):
    """MAD (cGy) against γ inside the body, in the PTV and in each organ: mean over seeds with their range.

    Each panel draws the sharp-loss arms at their γ (log axis) and the MSE as a horizontal line; with several
    seeds a band shows the range over seeds (Table 1's pooled MAD inside the body; Table 2's mean over test
    cases per structure). ``paper=True`` adds Bai et al.'s values (their clinical patients, Tables 1 and 2)
    in grey for breast studies.
    """
    import matplotlib.pyplot as plt

    sharp = [a for a in study.arms if a != MSE_ARM]
    if not sharp:
        raise ValueError("no sharp-loss arm in the study")
    gam = np.array([float(a.split("=")[1]) for a in sharp])
    order = np.argsort(gam)
    gam, sharp = gam[order], [sharp[k] for k in order]
    t1, t2 = table1(study), table2(study)
    regions = {"Inside the body": t1["rows"]["Inside the body"], **t2}
    if axes is None:
        ncol = min(3, len(regions))
        nrow = -(-len(regions) // ncol)
        _, axes = plt.subplots(nrow, ncol, figsize=(min(11.0, 4.2 * ncol), 3.0 * nrow), layout="constrained", squeeze=False)
    axes = np.asarray(axes).ravel()
    src = _source(study)
    xs = np.where(gam > 0, gam, np.nan)
    for ax, (name, per_arm) in zip(axes, regions.items()):
        v = np.array([per_arm[a] for a in sharp])            # (arms, seeds)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            m = np.nanmean(v, 1)
        ax.plot(xs, m, "o-", color="tab:red", label="sharp loss (ours)")
        if v.shape[1] > 1:
            ax.fill_between(xs, np.nanmin(v, 1), np.nanmax(v, 1), color="tab:red", alpha=0.2, lw=0)
        if MSE_ARM in per_arm:
            mse = np.asarray(per_arm[MSE_ARM], float)
            ax.axhline(float(np.nanmean(mse)), color="k", ls="--", lw=1, label="MSE (ours)")
            if mse.size > 1:
                ax.axhspan(float(np.nanmin(mse)), float(np.nanmax(mse)), color="k", alpha=0.08, lw=0)
        if paper and src == "phantom":
            ref = PAPER_TABLE1.get(name) if name == "Inside the body" else PAPER_TABLE2.get(name)
            if ref is not None:
                ax.plot(PAPER_GAMMAS, ref[1:], "s:", color="0.55", ms=4, label="sharp loss (Bai et al.)")
                ax.axhline(ref[0], color="0.55", ls=":", lw=1, label="MSE (Bai et al.)")
        ax.set_xscale("log")
        ax.set_xlabel("γ")
        ax.set_ylabel("MAD (cGy)")
        ax.set_title(name, fontsize=10)
    for ax in axes[len(regions):]:
        ax.set_visible(False)
    axes[0].legend(fontsize=7)
    return axes


def plot_weight_map(dose_gy, body, spacing, gammas=(25.0, 100.0, 500.0), masks=None, axes=None):
    """One patient's true dose and the sharp-loss weight :math:`w_\\gamma(D)` of every voxel (Eq. 4) for each γ.

    ``dose_gy`` and ``body`` are one 2D slice (Gy, bool), ``spacing`` its pixel size (mm). The weight is
    :func:`rtlearn.losses.sharp.sharp_weight` of the dose divided by 60 Gy; the body outline is drawn on every
    panel, in the image's own coordinates (mm).
    """
    import matplotlib.pyplot as plt

    from ..losses.sharp import sharp_weight

    d = check_dose(dose_gy)
    b = check_mask(body, d.shape, name="body")
    if d.ndim != 2:
        raise ValueError(f"plot_weight_map draws one 2D slice, got shape {d.shape}")
    if axes is None:
        _, axes = plt.subplots(1, 1 + len(gammas), figsize=(min(11.0, 3.6 * (1 + len(gammas))), 3.4), layout="constrained")
    dy, dx = (float(s) for s in spacing)
    plotting.dose_slice(axes[0], d, {"body": b, **(masks or {})}, spacing=(dy, dx), title="true dose",
                        legend=False)
    extent = plotting.image_extent(d.shape, (dy, dx))
    for ax, g in zip(axes[1:], gammas):
        w = sharp_weight(d / NORM_GY, float(g))
        im = ax.imshow(w, cmap="magma", vmin=0, vmax=1, extent=extent, interpolation="nearest")
        plotting.draw_contour(ax, b, (dy, dx), color="c", linewidth=0.8)
        frac = float(np.mean(w[b] >= 0.99)) * 100
        ax.set_title(f"γ = {g:g}: weight ≥ 0.99 in {frac:.0f} % of the body", fontsize=9)
        ax.set_xlabel("x (mm)")
        ax.set_ylabel("y (mm)")
        ax.figure.colorbar(im, ax=ax, shrink=0.8, label="weight $w_\\gamma$")
    return axes


def plot_roi_boxplots(study, ax=None):
    """Box plots of the per-case MAD (cGy) of each ROI for every arm (their Fig. 2); cases averaged over seeds."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(10, 3.8))
    rois = _roi_names(study)
    k = len(study.arms)
    w = 0.8 / k
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for j, arm in enumerate(study.arms):
        data = []
        for r in rois:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                v = np.nanmean(study.metric(f"MAD {r}", arm), axis=0)
            data.append(v[np.isfinite(v)])
        pos = np.arange(len(rois)) - 0.4 + w * (j + 0.5)
        bp = ax.boxplot(data, positions=pos, widths=w * 0.9, patch_artist=True, showfliers=True,
                        medianprops=dict(color="k"), flierprops=dict(markersize=3))
        for b in bp["boxes"]:
            b.set_facecolor(colors[j % len(colors)])
            b.set_alpha(0.75)
        ax.plot([], [], "s", color=colors[j % len(colors)], label=arm)
    ax.set_xticks(np.arange(len(rois)))
    ax.set_xticklabels(rois)
    ax.set_ylabel("MAD per test case (cGy)")
    ax.legend(fontsize=8, ncol=min(k, 4))
    return ax


def plot_sample(record: dict, case: int = 0, arm_names=None, slice_index=None):
    """True and predicted doses of one test case with their DVHs (their Fig. 4). Returns the figure.

    ``record`` is what :func:`run` returned (its in-memory ``live`` part holds the
    arrays); ``arm_names`` default to the MSE and the sharp-loss arm with the lowest
    validation MAD of this run. 3D cases show the axial slice through the
    (highest) PTV's centre unless ``slice_index`` is given.
    """
    import matplotlib.pyplot as plt

    live = record.get("live") if isinstance(record, dict) else None
    if live is None:
        raise ValueError("plot_sample needs the record returned by run() in this session (its 'live' arrays); "
                         "a recorded study keeps no dose arrays")
    val = live["val_mad_body_cgy"]
    if arm_names is None:
        sharp = [a for a in live["predictions"] if a != MSE_ARM]
        arm_names = [MSE_ARM] + ([min(sharp, key=val.get)] if sharp else [])
    labels = list(arm_names)
    unknown = [a for a in labels if a not in live["predictions"]]
    if unknown:
        raise ValueError(f"no arm(s) {unknown}; the run has {list(live['predictions'])}")
    n = live["reference"].shape[0]
    if isinstance(case, bool) or not isinstance(case, (int, np.integer)) or not 0 <= case < n:
        raise ValueError(f"case must be an int in [0, {n}), got {case!r}")
    names, rois, body = live["roi_names"], live["rois"], live["body"]
    masks = {_roi_label(nm, live["source"]): rois[case, k] for k, nm in enumerate(names) if rois[case, k].any()}
    ref = live["reference"][case]
    preds = {lab: np.clip(live["predictions"][lab][case], 0.0, None) for lab in labels}
    if ref.ndim == 3:  # 3D: show the slice through the (highest) PTV's centre unless told
        ptvs = [k for k, nm in enumerate(names) if nm.startswith("PTV") and rois[case, k].any()]
        centre = rois[case, max(ptvs, key=lambda k: OPENKBP_ROI_VALUES.get(names[k], 1.0))] if ptvs else body[case]
        z = int(np.argwhere(centre).mean(axis=0)[0]) if slice_index is None else slice_index
        sl = lambda a: a[z]  # noqa: E731
        sp2 = tuple(live["case_spacing"][case])[1:]
    else:
        sl = lambda a: a  # noqa: E731
        sp2 = tuple(live["case_spacing"][case])
    vmax = max(float(ref.max()), *(float(p.max()) for p in preds.values()))
    fig, axes = plt.subplots(1, 2 + len(labels), figsize=(min(11.0, 4.2 * (2 + len(labels))), 3.8))
    smasks = {n: sl(m) for n, m in masks.items()}
    plotting.dose_slice(axes[0], sl(ref), smasks, spacing=sp2, vmax=vmax, title="ground truth", legend=False)
    for ax, lab in zip(axes[1:], labels):
        plotting.dose_slice(ax, sl(preds[lab]), smasks, spacing=sp2, vmax=vmax, title=lab, legend=lab == labels[-1])
    ax = axes[-1]
    colors = plotting.structure_colors(list(masks))
    top = vmax * 1.02
    bins = np.linspace(0, top, 300)
    styles = ["--", ":", "-."]
    for name, m in masks.items():
        x, v = dvh.cumulative_dvh(ref, m, bins=bins)
        ax.plot(x, 100 * v, color=colors[name], lw=1.5, label=name)
        for s, lab in zip(styles, labels):
            x, v = dvh.cumulative_dvh(preds[lab], m, bins=bins)
            ax.plot(x, 100 * v, color=colors[name], lw=1.2, ls=s)
    from matplotlib.lines import Line2D

    h, lbl = ax.get_legend_handles_labels()
    h += [Line2D([], [], color="k", lw=1.5)] + [Line2D([], [], color="k", ls=s) for s in styles[:len(labels)]]
    lbl += ["ground truth"] + labels
    ax.legend(h, lbl, fontsize=7)
    ax.set_xlabel("dose (Gy)")
    ax.set_ylabel("volume (%)")
    ax.set_ylim(0, 102)
    ax.set_title("DVH")
    if not fig.get_layout_engine():  # the book's style already uses constrained layout
        fig.set_layout_engine("constrained")
    return fig
