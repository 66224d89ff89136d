r"""The sharp-loss experiment of Bai et al. 2021 on phantom breast patients.

A U-Net maps the single-channel ROI-value map of a left-sided breast patient
(PTV 1.000, ipsilateral lung 0.833, heart 0.667, contralateral lung 0.500,
spinal cord 0.333, other tissue 0.167, outside the body 0) to the dose divided
by 60 Gy (the paper's 6000 cGy). One model is trained with the MSE,

.. math:: \mathrm{MSE} = \frac{1}{n}\sum_i (Dp_i - D_i)^2 \quad \text{(Eq. 2 of Bai et al. 2021)},

and one with the sharp loss for each :math:`\gamma` (Eq. 4, :func:`rtlearn.losses.sharp.sharp_loss`),
all with the same data split, seed, Adam (lr :math:`10^{-3}`), batch 2 and a
plateau decay of the learning rate (x0.1 after 5 epochs without improvement of
the validation loss). The test predictions are then scored as in the paper's
Tables 1-4 (MAD by region, dose band and ROI; Wilcoxon tests; clinical DVH
metrics).

Typical use (the chapter "The sharp loss")::

    from rtlearn.experiments import sharp
    cfg = sharp.default_config()          # quick (2D, CPU) or full (3D, paper scale) profile
    res = sharp.run_experiment(cfg)
    rows = sharp.table1(res)

The paper's own numbers are kept in ``PAPER_TABLE1`` ... ``PAPER_TABLE4`` so that
the chapter can print them beside ours, labelled as the paper's.

The same sweep runs on the OpenKBP head-and-neck data (``source="openkbp"``,
:func:`load_openkbp`): a different site from the paper's breast patients. The
single-channel input is our adaptation of the paper's ROI map to head and neck
(:data:`OPENKBP_ROI_VALUES`: PTV70 1.0, PTV63 0.9, PTV56 0.8, then the organs
at risk at decreasing values, the rest of the possible-dose mask 0.1, outside
0), the target is still dose / 60 Gy (the paper's 6000 cGy, chosen for a 50 Gy
breast prescription; with 70 Gy H&N plans the normalised PTV70 dose is about
1.17 and the sharp-loss demarcation dose :math:`D_0` sits lower relative to the
prescription), the official train / validation / test split is kept, and
patients without a reference dose are skipped. "Inside the body" then means
inside OpenKBP's possible-dose mask.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from .. import dvh, plotting
from .._validate import check_dose, check_mask
from ..config import pick
from ..data.openkbp.dataset import OpenKBPDataset, find_openkbp, list_patients
from ..data.openkbp.format import spacing_zyx
from ..losses.sharp import sharp_loss
from ..metrics import DOSE_BANDS_CGY, mad, mad_by_dose_band, mad_per_roi, mean_gradient_by_band, wilcoxon_summary
from ..metrics.openkbp import dose_score, dvh_score
from ..models.unet import UNet
from ..phantom import PhantomDoseDataset
from ..rois import ROI_NAMES as OPENKBP_ROI_NAMES
from ..train import Trainer

__all__ = [
    "NORM_GY", "PAPER_GAMMAS", "ROI_LABELS", "PAPER_IMBALANCE", "PAPER_TABLE1", "PAPER_GRADIENT", "PAPER_TABLE2",
    "PAPER_TABLE3", "PAPER_TABLE4", "TABLE1_ROWS", "TABLE4_ROWS", "SharpConfig", "SharpData", "SharpResults",
    "default_config", "load_data", "loss_label", "make_loss", "train_model", "predict", "dose_imbalance",
    "run_experiment", "table1", "per_roi_mad", "table2", "table3", "table4", "select_best",
    "plot_training_curves", "plot_roi_boxplots", "plot_sample",
    "SOURCES", "OPENKBP_ROI_VALUES", "OPENKBP_BODY_VALUE", "OPENKBP_RX_GY", "OpenKBPRoiMapDataset", "OpenKBPSharpData",
    "load_openkbp", "openkbp_scores",
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


# ---- configuration ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SharpConfig:
    """Everything that defines one run of the experiment.

    ``n_train + n_val + n_test`` phantom breast patients of dataset seed ``seed``
    are split in this order (cases ``0 .. n_train-1`` train, and so on), so all
    losses see the same split. ``gammas`` are the sharp-loss sharpness values
    (an MSE model is always trained too). ``train_seed`` seeds weights and
    shuffling, identical for every loss.

    ``source="openkbp"`` uses OpenKBP instead (3D only): the first ``n_train``,
    ``n_val`` and ``n_test`` patients with a reference dose of the official
    train, validation and test splits (all of them if fewer), on the 128³ grid
    averaged over blocks of ``downsample`` voxels per axis; ``root`` is then the
    OpenKBP dataset folder (:func:`rtlearn.data.openkbp.find_openkbp`) and
    ``shape``, ``spacing``, ``seed`` and ``n_jobs`` are unused.
    """

    dims: int = 2
    n_train: int = 20
    n_val: int = 4
    n_test: int = 8
    shape: tuple | None = None
    spacing: tuple | None = None
    gammas: tuple = (25.0, 100.0, 500.0)
    epochs: int = 15
    depth: int = 4
    width: int = 16
    batch_size: int = 2
    lr: float = 1e-3
    plateau_factor: float = 0.1
    plateau_patience: int = 5
    seed: int = 0
    train_seed: int = 0
    n_jobs: int = 1
    root: str | None = None
    device: str | None = None
    source: str = "phantom"
    downsample: int = 1

    def __post_init__(self):
        if self.dims not in (2, 3):
            raise ValueError(f"dims must be 2 or 3, got {self.dims!r}")
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {self.source!r}")
        if self.source == "openkbp" and self.dims != 3:
            raise ValueError(f"source='openkbp' runs on 3D volumes: use dims=3, got dims={self.dims}")
        if self.downsample not in (1, 2, 4, 8) or isinstance(self.downsample, bool):
            raise ValueError(f"downsample must be 1, 2, 4 or 8 (a divisor of OpenKBP's 128 grid), "
                             f"got {self.downsample!r}")
        for name in ("n_train", "n_val", "n_test", "epochs", "depth", "width", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if self.n_test < 2:
            raise ValueError(f"n_test must be >= 2 for the paired Wilcoxon test, got {self.n_test}")
        g = tuple(float(x) for x in self.gammas)
        if not g or any(not np.isfinite(x) or x < 0 for x in g) or len(set(g)) != len(g):
            raise ValueError(f"gammas must be distinct finite numbers >= 0, got {self.gammas!r}")
        object.__setattr__(self, "gammas", g)
        if not (self.lr > 0):
            raise ValueError(f"lr must be > 0, got {self.lr!r}")

    @property
    def n_cases(self) -> int:
        return self.n_train + self.n_val + self.n_test


def default_config(**overrides) -> SharpConfig:
    """The configuration of the active profile (:func:`rtlearn.config.pick`).

    * quick: 2D breast slices (128 x 128 pixels of 3 mm), 32 train / 8 validation /
      10 test patients, gamma in {25, 100, 500}, 30 epochs, a small U-Net (4 levels,
      16 channels): about two minutes on a 2-core CPU.
    * full: 3D breast volumes (64 x 128 x 128 at 4 x 3 x 3 mm), the paper's scale
      of 100 training patients (90 to fit, 10 for the validation loss that drives
      the learning-rate decay) and 10 test patients, all six gammas of the
      paper, 60 epochs, a 5-level U-Net with 32 channels (as the paper's five
      down-sampling levels); needs a GPU.

    With ``source="openkbp"`` (head and neck, 3D only):

    * full: every OpenKBP patient with a dose of the official split (up to 200
      train / 40 validation / 100 test) on the full 128³ grid, all six gammas,
      40 epochs, the same 5-level U-Net with 32 channels; needs a GPU.
    * quick: a CPU-sized stand-in (20 / 5 / 10 patients, grid averaged over 4³
      blocks to 32³, gamma in {25, 100, 500}, 10 epochs, a 3-level U-Net with
      8 channels), only a smoke test of the pipeline, not a result.

    Keyword arguments override single fields.
    """
    if overrides.get("source", "phantom") == "openkbp":
        quick = SharpConfig(dims=3, source="openkbp", n_train=20, n_val=5, n_test=10, downsample=4, epochs=10,
                            depth=3, width=8)
        full = SharpConfig(dims=3, source="openkbp", n_train=200, n_val=40, n_test=100, gammas=PAPER_GAMMAS,
                           epochs=40, depth=5, width=32)
    else:
        quick = SharpConfig(n_train=32, n_val=8, n_test=10, epochs=30, n_jobs=2)
        full = SharpConfig(dims=3, n_train=90, n_val=10, n_test=10, gammas=PAPER_GAMMAS, epochs=60, depth=5,
                           width=32, n_jobs=8)
    return replace(pick(quick=quick, full=full), **overrides)


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

    def case_spacing(self, indices) -> list:
        """Voxel spacing (mm, array-axis order) of each case of ``indices`` (all equal for phantoms)."""
        return [self.spacing for _ in indices]

    def arrays(self, indices):
        """Reference dose (Gy), body masks and ROI masks (bool) of the cases ``indices``."""
        d = self.dataset.data
        idx = np.asarray(indices, dtype=int)
        return d["dose"][idx, 0].astype(np.float64), d["body"][idx].astype(bool), d["rois"][idx].astype(bool)


def load_data(config: SharpConfig, progress: bool = True) -> SharpData:
    """Make (or load from the cache) the breast phantoms of ``config`` and split them.

    With ``config.source == "openkbp"`` this returns :func:`load_openkbp` instead.

    The input is the single-channel ROI-value map of Bai et al. 2021
    (``inputs="roi_map"`` of :class:`~rtlearn.phantom.PhantomDoseDataset`); the
    target is the dose divided by 60 Gy (= the paper's dose / 6000 cGy).
    """
    if config.source == "openkbp":
        return load_openkbp(config, progress)
    ds = PhantomDoseDataset("breast", n=config.n_cases, seed=config.seed, dims=config.dims, shape=config.shape,
                            spacing=config.spacing, inputs="roi_map", target_scale=NORM_GY, root=config.root,
                            progress=progress, n_jobs=config.n_jobs)
    a, b = config.n_train, config.n_train + config.n_val
    idx = list(range(config.n_cases))
    return SharpData(ds, idx[:a], idx[a:b], idx[b:])


class OpenKBPRoiMapDataset(torch.utils.data.Dataset):
    r"""OpenKBP patients as the sharp-loss experiment's items: ROI-value map in, dose / 60 Gy out.

    Wraps 3D :class:`rtlearn.data.openkbp.OpenKBPDataset` objects (inputs: the ten
    ROI masks and the possible-dose mask, full 128³ grid) and serves
    ``{"input": (1, Z, Y, X), "target": (1, Z, Y, X), "mask": (1, Z, Y, X)}``:

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
        return a if f == 1 else F.avg_pool3d(a[None], f)[0]

    def __getitem__(self, k):
        if self._cache is not None and k in self._cache:
            return self._cache[k]
        ds, i = self.index[k]
        item = ds[i]
        x = item["input"]                      # (10 ROIs + possible-dose mask, Z, Y, X)
        rois, pdm = x[:10], x[10:11]
        roi_map = torch.maximum((self.values[:, None, None, None] * rois).amax(0, keepdim=True),
                                OPENKBP_BODY_VALUE * pdm)
        out = {"input": self._pool(roi_map), "target": self._pool(item["target"] / NORM_GY),
               "mask": self._pool(pdm), "patient": item["patient"]}
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

    Reference arrays are on the served grid (averaged over ``downsample``-blocks;
    the body and ROI masks are the blocks more than half inside).
    """

    @property
    def roi_names(self) -> tuple:
        return tuple(self.dataset.roi_names)

    @property
    def spacing(self) -> tuple:
        return self.case_spacing(self.test[:1])[0]

    @property
    def rx_gy(self) -> float:
        return OPENKBP_RX_GY

    def patients(self, indices) -> list:
        """OpenKBP patient ids of the cases ``indices``."""
        return [self.dataset.patient(i)[1] for i in indices]

    def case_spacing(self, indices) -> list:
        f = self.dataset.downsample
        out = []
        for i in indices:
            ds, pid = self.dataset.patient(i)
            vd = ds.records[pid]["voxel_dimensions"]
            out.append(tuple(f * s for s in spacing_zyx(vd)))
        return out

    def arrays(self, indices):
        doses, bodies, rois = [], [], []
        for i in indices:
            ds, pid = self.dataset.patient(i)
            item = ds[ds.slices_of(pid)[0]]
            x = item["input"][None]
            f = self.dataset.downsample
            pooled = x if f == 1 else F.avg_pool3d(x, f)
            rois.append(pooled[0, :10].numpy() > 0.5)
            bodies.append(pooled[0, 10].numpy() > 0.5)
            t = item["target"][None]
            doses.append((t if f == 1 else F.avg_pool3d(t, f))[0, 0].numpy().astype(np.float64))
        return np.stack(doses), np.stack(bodies), np.stack(rois)


def load_openkbp(config: SharpConfig, progress: bool = True) -> OpenKBPSharpData:
    """OpenKBP's official train / validation / test patients for the experiment (``config.source == "openkbp"``).

    Takes the first ``config.n_train`` / ``n_val`` / ``n_test`` patients that have
    a reference dose and a possible-dose mask in each official split (all if fewer;
    the others are skipped and named). Raises ``FileNotFoundError`` with download
    instructions (``python data_scripts/download_openkbp.py``) when the data are absent.
    """
    root = find_openkbp(config.root)
    usable = None
    manifest = root / "manifest.json"
    if manifest.is_file():
        usable = {k for k, v in json.loads(manifest.read_text()).items()
                  if "dose_cgy" in v and "possible_dose_mask" in v}
    parts = []
    for split, n in (("train", config.n_train), ("validation", config.n_val), ("test", config.n_test)):
        ids = list_patients(split, root)
        if usable is not None:
            missing = [p for p in ids if f"{split}/{p}" not in usable]
            ids = [p for p in ids if f"{split}/{p}" in usable]
            if missing and progress:
                print(f"OpenKBP {split}: skipping {len(missing)} patient(s) without a dose: {', '.join(missing)}")
        parts.append(OpenKBPDataset(split, root, dims=3, inputs=("rois", "possible_dose_mask"), patients=ids[:n],
                                    progress=progress, verbose=progress))
    if len(parts[2]) < 2:
        raise ValueError(f"need at least 2 OpenKBP test patients with a dose, got {len(parts[2])}")
    ds = OpenKBPRoiMapDataset(parts, downsample=config.downsample, cache=config.device not in (None, "cpu")
                              or torch.cuda.is_available())
    a, b = len(parts[0]), len(parts[0]) + len(parts[1])
    idx = list(range(len(ds)))
    return OpenKBPSharpData(ds, idx[:a], idx[a:b], idx[b:])


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


# ---- training --------------------------------------------------------------------------------------------
def loss_label(gamma) -> str:
    """``"MSE"`` for ``None``, else ``"SL γ=100"`` style labels."""
    return "MSE" if gamma is None else f"SL γ={float(gamma):g}"


def make_loss(gamma=None):
    """Trainer loss ``f(pred, batch)`` on normalised doses over the whole grid (as the paper).

    ``gamma=None`` gives the MSE (Eq. 2 of Bai et al. 2021), a number the sharp
    loss (Eq. 4) with that sharpness.
    """
    if gamma is None:
        def mse(pred, batch):
            return F.mse_loss(pred, batch["target"])
        return mse
    gamma = float(gamma)
    if not np.isfinite(gamma) or gamma < 0:
        raise ValueError(f"gamma must be a finite number >= 0, got {gamma!r}")

    def sharp(pred, batch):
        return sharp_loss(pred, batch["target"], gamma)
    sharp.__name__ = f"sharp_{gamma:g}"
    return sharp


def _mad_body_cgy(pred, batch):
    """Validation metric comparable across losses: MAD inside the body in cGy."""
    m = batch["mask"] > 0.5
    return float((pred - batch["target"]).abs()[m].mean()) * NORM_GY * 100.0


def train_model(gamma, data: SharpData, config: SharpConfig, progress: bool = True):
    """Train one U-Net with the MSE (``gamma=None``) or the sharp loss; return ``(model, history, seconds)``.

    Same initial weights and batch order for every loss (``config.train_seed``);
    the weights of the epoch with the lowest validation loss are kept.
    """
    with torch.random.fork_rng(devices=[]):  # identical initial weights for every loss, global RNG untouched
        torch.manual_seed(config.train_seed)
        model = UNet(1, 1, dims=config.dims, depth=config.depth, width=config.width, norm="batch")
    gen = torch.Generator().manual_seed(config.train_seed)
    train_loader = DataLoader(Subset(data.dataset, data.train), batch_size=config.batch_size, shuffle=True,
                              generator=gen, drop_last=len(data.train) >= 2 * config.batch_size)
    val_loader = DataLoader(Subset(data.dataset, data.val), batch_size=config.batch_size)
    trainer = Trainer(model, make_loss(gamma), lr=config.lr, scheduler="plateau",
                      plateau_factor=config.plateau_factor, plateau_patience=config.plateau_patience,
                      metrics={"val_mad_body_cgy": _mad_body_cgy}, seed=config.train_seed, progress=progress,
                      device=config.device)
    t0 = time.perf_counter()
    history = trainer.fit(train_loader, config.epochs, val_loader)
    return trainer.model, history, time.perf_counter() - t0


@torch.no_grad()
def predict(model, data: SharpData, indices, batch_size: int = 2) -> np.ndarray:
    """Predicted dose in Gy (model output x 60 Gy) for the cases ``indices``, shape ``(N, *grid)``."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for batch in DataLoader(Subset(data.dataset, list(indices)), batch_size=batch_size):
        out.append(model(batch["input"].to(device)).float().cpu().numpy()[:, 0])
    return np.concatenate(out).astype(np.float64) * NORM_GY


# ---- the whole experiment --------------------------------------------------------------------------------
@dataclass
class SharpResults:
    """Test-set predictions and training records of every loss (doses in Gy)."""

    config: SharpConfig
    labels: list
    gammas: dict
    reference: np.ndarray
    body: np.ndarray
    rois: np.ndarray
    roi_names: tuple
    spacing: tuple
    rx_gy: float
    predictions: dict
    histories: dict
    val_mad_cgy: dict
    seconds: dict = field(default_factory=dict)
    case_spacing: list | None = None
    patients: list | None = None

    @property
    def best_label(self) -> str:
        """The sharp-loss model with the lowest validation MAD inside the body (chosen without the test set)."""
        return select_best(self)

    def roi_masks(self, case: int) -> dict:
        """``{phantom ROI name: mask}`` of test case ``case``."""
        return {n: self.rois[case, k] for k, n in enumerate(self.roi_names)}


def run_experiment(config: SharpConfig | None = None, progress: bool = True, data: SharpData | None = None):
    """Train the MSE model and one sharp-loss model per gamma; predict the test cases.

    Returns a :class:`SharpResults`. The best gamma is selected on the
    validation cases (MAD inside the body, cGy), never on the test cases.
    """
    config = default_config() if config is None else config
    data = load_data(config, progress) if data is None else data
    ref, body, rois = data.arrays(data.test)
    vref, vbody, _ = data.arrays(data.val)
    rx = data.rx_gy
    labels, gammas, preds, hists, vals, secs = [], {}, {}, {}, {}, {}
    for gamma in (None,) + tuple(config.gammas):
        label = loss_label(gamma)
        model, hist, sec = train_model(gamma, data, config, progress)
        labels.append(label)
        gammas[label] = gamma
        preds[label] = predict(model, data, data.test, config.batch_size)
        vp = predict(model, data, data.val, config.batch_size)
        vals[label] = mad(vp, vref, vbody) * 100.0
        hists[label] = hist
        secs[label] = sec
    pats = data.patients(data.test) if hasattr(data, "patients") else None
    return SharpResults(config, labels, gammas, ref, body, rois, data.roi_names, data.spacing, rx, preds, hists,
                        vals, secs, data.case_spacing(data.test), pats)


def select_best(results: SharpResults) -> str:
    """Label of the sharp-loss model with the lowest validation MAD inside the body."""
    sharp = [lab for lab in results.labels if results.gammas[lab] is not None]
    if not sharp:
        raise ValueError("no sharp-loss model in the results")
    return min(sharp, key=lambda lab: results.val_mad_cgy[lab])


# ---- tables ----------------------------------------------------------------------------------------------
def _band_name(lo, hi):
    return f"> {lo:g} cGy" if not np.isfinite(hi) else f"{lo:g}-{hi:g} cGy"


def table1(results: SharpResults) -> dict:
    """Table 1 of Bai et al. 2021 on our test cases; MAD in cGy, voxels pooled over all test cases.

    Returns ``{"rows": {row: {label: value}}, "gradient": {band row: cGy/mm}, "n": {row: voxels}}``.
    Dose bands are taken inside the body on the reference dose; "Std" is the
    standard deviation of the signed error (prediction - reference) inside the
    body; the gradient column is the mean :math:`|\\nabla D|` of the reference in
    each band (in-plane only for 2D slices).
    """
    ref = results.reference * 100.0
    body = results.body
    rows = {r: {} for r in TABLE1_ROWS}
    counts = {"Whole region": ref.size, "Outside the body": int((~body).sum()), "Inside the body": int(body.sum())}
    for lab in results.labels:
        p = results.predictions[lab] * 100.0
        rows["Whole region"][lab] = mad(p, ref)
        rows["Outside the body"][lab] = mad(p, ref, ~body)
        rows["Inside the body"][lab] = mad(p, ref, body)
        for (lo, hi), v in mad_by_dose_band(p, ref, DOSE_BANDS_CGY, mask=body).items():
            rows[_band_name(lo, hi)][lab] = v["mad"]
            counts[_band_name(lo, hi)] = v["n"]
        rows["Std"][lab] = float(np.std((p - ref)[body]))
    # mean gradient per band: per case (the gradient needs the grid), pooled by voxel counts
    grad_sum, grad_n = {}, {}
    for c in range(ref.shape[0]):
        sp = results.case_spacing[c] if results.case_spacing else results.spacing
        g = mean_gradient_by_band(ref[c], sp, DOSE_BANDS_CGY, mask=body[c])
        n = mad_by_dose_band(ref[c], ref[c], DOSE_BANDS_CGY, mask=body[c])
        for key, val in g.items():
            name = _band_name(*key)
            if n[key]["n"]:
                grad_sum[name] = grad_sum.get(name, 0.0) + val * n[key]["n"]
                grad_n[name] = grad_n.get(name, 0) + n[key]["n"]
    gradient = {name: grad_sum[name] / grad_n[name] if grad_n.get(name) else float("nan")
                for name in (_band_name(lo, hi) for lo, hi in zip(DOSE_BANDS_CGY[:-1], DOSE_BANDS_CGY[1:]))}
    return {"rows": rows, "gradient": gradient, "n": counts}


def per_roi_mad(results: SharpResults) -> dict:
    """``{label: {ROI name: array of per-test-case MAD (cGy)}}`` (NaN where a case lacks the ROI).

    Phantom ROIs get the paper's names (:data:`ROI_LABELS`); OpenKBP ROIs keep OpenKBP's names.
    """
    names = ROI_LABELS if results.config.source == "phantom" else {}
    out = {}
    for lab in results.labels:
        per = {names.get(n, n): [] for n in results.roi_names}
        for c in range(results.reference.shape[0]):
            vals = mad_per_roi(results.predictions[lab][c] * 100.0, results.reference[c] * 100.0,
                               results.roi_masks(c))
            for n, v in vals.items():
                per[names.get(n, n)].append(v)
        out[lab] = {k: np.asarray(v) for k, v in per.items()}
    return out


def table2(results: SharpResults) -> dict:
    """Table 2 of Bai et al. 2021: ``{ROI: {label: mean MAD over test cases (cGy)}}``."""
    per = per_roi_mad(results)
    rois = list(next(iter(per.values())))
    return {r: {lab: float(np.nanmean(per[lab][r])) if np.isfinite(per[lab][r]).any() else float("nan")
                for lab in results.labels} for r in rois}


def table3(results: SharpResults, label: str | None = None) -> dict:
    """Table 3 of Bai et al. 2021: MSE vs one sharp-loss model (default: the best on validation).

    ``{ROI: wilcoxon_summary(...)}`` with keys ``MSE_mean, MSE_sd, SL_mean, SL_sd, p, n`` and more
    (MAD in cGy, two-sided Wilcoxon signed-rank test over the test cases). ROIs contoured
    in fewer than two test cases (possible with OpenKBP) are left out.
    """
    label = results.best_label if label is None else label
    if label not in results.predictions:
        raise ValueError(f"no model {label!r}; have {results.labels}")
    per = per_roi_mad(results)
    return {r: wilcoxon_summary(per["MSE"][r], per[label][r], names=("MSE", "SL")) for r in per["MSE"]
            if np.count_nonzero(np.isfinite(per["MSE"][r]) & np.isfinite(per[label][r])) >= 2}


def _clinical(dose_gy, masks: dict, rx_gy: float) -> dict:
    """The metrics of Table 4 of Bai et al. 2021 for one case (doses in cGy, volumes in %)."""
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


def table4(results: SharpResults, labels=None) -> dict:
    """Table 4 of Bai et al. 2021: ``{metric: {"Ground truth"|label: (mean, sd)}}`` over test cases.

    HI = (D1 - D99) / Rx and CI = V(PTV and Rx)^2 / (V_PTV V_Rx) with Rx the
    phantom's 50 Gy (the paper's 5000 cGy); negative predicted doses are set
    to 0 before the DVH metrics.
    """
    if results.config.source != "phantom":
        raise ValueError("table4 holds the breast metrics of Bai et al.'s Table 4; for OpenKBP (head and neck) "
                         "use openkbp_scores(results)")
    labels = ["MSE", results.best_label] if labels is None else list(labels)
    cols = {"Ground truth": results.reference, **{lab: results.predictions[lab] for lab in labels}}
    out = {k: {} for k in TABLE4_ROWS}
    for col, doses in cols.items():
        vals = np.array([[_clinical(doses[c], results.roi_masks(c), results.rx_gy)[k] for k in TABLE4_ROWS]
                         for c in range(doses.shape[0])])
        for j, k in enumerate(TABLE4_ROWS):
            v = vals[:, j][np.isfinite(vals[:, j])]
            out[k][col] = (float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else float("nan")) if v.size else \
                (float("nan"), float("nan"))
    return out


def openkbp_scores(results: SharpResults, labels=None) -> dict:
    """OpenKBP's dose score and DVH score (Gy) of each model on the test patients (Babier et al. 2021).

    Returns ``{label: {"dose_score": Gy, "dvh_score": Gy}}`` computed with
    :mod:`rtlearn.metrics.openkbp` (predictions multiplied by the possible-dose
    mask and clipped at 0, as the challenge's baseline). With ``downsample > 1``
    they are computed on the coarse grid and are not comparable with the
    challenge's leaderboard.
    """
    if results.config.source != "openkbp":
        raise ValueError(f"openkbp_scores needs results of source='openkbp', got {results.config.source!r}")
    labels = results.labels if labels is None else list(labels)
    n = results.reference.shape[0]
    rois = [{name: results.rois[c, k] for k, name in enumerate(results.roi_names) if results.rois[c, k].any()}
            for c in range(n)]
    out = {}
    for lab in labels:
        preds = [np.clip(results.predictions[lab][c], 0.0, None) * results.body[c] for c in range(n)]
        refs = list(results.reference)
        out[lab] = {"dose_score": dose_score(preds, refs, list(results.body)),
                    "dvh_score": dvh_score(preds, refs, rois, list(results.case_spacing))}
    return out


# ---- figures ---------------------------------------------------------------------------------------------
def plot_training_curves(results: SharpResults, axes=None):
    """Training and validation loss per loss function (their Fig. 1), plus the validation MAD inside the body.

    Loss values of different losses are not on the same scale (the sharp loss
    down-weights voxels), so the third panel shows a common yardstick.
    """
    import matplotlib.pyplot as plt

    if axes is None:
        _, axes = plt.subplots(1, 3, figsize=(13, 3.6), layout="constrained")
    for lab in results.labels:
        h = results.histories[lab]
        ep = h["epoch"]
        line, = axes[0].plot(ep, h["train_loss"], label=lab)
        axes[1].plot(ep, h["val_loss"], color=line.get_color(), label=lab)
        axes[2].plot(ep, h["val_mad_body_cgy"], color=line.get_color(), label=lab)
    for ax, t in zip(axes, ("training loss", "validation loss", "validation MAD inside the body")):
        ax.set_xlabel("epoch")
        ax.set_title(t)
    axes[0].set_ylabel("loss (normalised dose²)")
    axes[1].set_ylabel("loss (normalised dose²)")
    axes[0].set_yscale("log")
    axes[1].set_yscale("log")
    axes[2].set_ylabel("MAD (cGy)")
    axes[2].legend(fontsize=8)
    return axes


def plot_roi_boxplots(results: SharpResults, ax=None):
    """Box plots of the per-case MAD of each ROI for every loss (their Fig. 2)."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(10, 3.8))
    per = per_roi_mad(results)
    rois = list(next(iter(per.values())))
    k = len(results.labels)
    w = 0.8 / k
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for j, lab in enumerate(results.labels):
        data = [per[lab][r][np.isfinite(per[lab][r])] for r in rois]
        pos = np.arange(len(rois)) - 0.4 + w * (j + 0.5)
        bp = ax.boxplot(data, positions=pos, widths=w * 0.9, patch_artist=True, showfliers=True,
                        medianprops=dict(color="k"), flierprops=dict(markersize=3))
        for b in bp["boxes"]:
            b.set_facecolor(colors[j % len(colors)])
            b.set_alpha(0.75)
        ax.plot([], [], "s", color=colors[j % len(colors)], label=lab)
    ax.set_xticks(np.arange(len(rois)))
    ax.set_xticklabels(rois)
    ax.set_ylabel("MAD per test case (cGy)")
    ax.legend(fontsize=8, ncol=min(k, 4))
    return ax


def plot_sample(results: SharpResults, case: int = 0, labels=None, slice_index=None):
    """Reference and predicted doses of one test case with their DVHs (their Fig. 4). Returns the figure."""
    import matplotlib.pyplot as plt

    labels = ["MSE", results.best_label] if labels is None else list(labels)
    if not 0 <= case < results.reference.shape[0]:
        raise ValueError(f"case must be in [0, {results.reference.shape[0]}), got {case}")
    names = ROI_LABELS if results.config.source == "phantom" else {}
    masks = {names.get(n, n): m for n, m in results.roi_masks(case).items() if m.any()}
    ref = results.reference[case]
    preds = {lab: np.clip(results.predictions[lab][case], 0.0, None) for lab in labels}
    if ref.ndim == 3:  # 3D: show the slice through the (highest) PTV's centre unless told
        ptvs = [k for k, n in enumerate(results.roi_names) if n.startswith("PTV") and results.rois[case, k].any()]
        centre = results.rois[case, max(ptvs, key=lambda k: OPENKBP_ROI_VALUES.get(results.roi_names[k], 1.0))] \
            if ptvs else results.body[case]
        z = int(np.argwhere(centre).mean(axis=0)[0]) if slice_index is None else slice_index
        sl = lambda a: a[z]  # noqa: E731
        sp2 = results.spacing[1:]
    else:
        sl = lambda a: a  # noqa: E731
        sp2 = results.spacing
    vmax = max(float(ref.max()), *(float(p.max()) for p in preds.values()))
    fig, axes = plt.subplots(1, 2 + len(labels), figsize=(4.2 * (2 + len(labels)), 3.8))
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
