r"""Experiment driver of the chapter "Dose prediction conditioned on a desired DVH".

The method is that of :cite:p:`ma2021pareto`; the tested pieces live in
:mod:`rtlearn.pareto` (DVH vectors, the Eq. (4) projection, on-the-fly pairs,
the Eq. (6) learning-rate decay) and
:class:`rtlearn.models.conditional_unet.ConditionalUNet`. This module is the
chapter's one driver, with the shape every chapter module has:

* the paper's numbers (:data:`PAPER_TABLE1` and the training settings);
* :class:`Config` and :func:`default_config` (the only place a profile is
  read), :func:`load_data` (:func:`make_cohort` split into training,
  validation and test patients) and :func:`run`, which trains the two arms of
  :data:`ARMS` with :func:`rtlearn.train.fit` (the conditional network and the
  same network without the DVH input) and evaluates them per test patient;
* :data:`CLAIMS`, :func:`tables` and the figures (:func:`figures` for a
  recorded study; ``plot_*`` for the live models);
* :data:`TINY`, overrides that make one seed of the study config run in seconds.

The evaluation follows the paper's Table 1: :func:`evaluate_pairs` draws
desired DVHs, projects them onto each test patient's Pareto set and compares
the mean and maximum dose of every structure, true minus predicted, in % of
the prescription; :func:`summary_table` averages them and
:func:`case_metrics` turns them into one value per test patient.
:func:`tradeoff_dvh` blends a patient's Pareto DVH vectors along the front
(the chapter's interactive trade-off control).
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import plotting
from .._validate import check_int
from ..config import check_overrides, check_profile, data_root, get_device
from ..config import profile as active_profile
from ..dvh import dose_at_volume
from ..io import load_npz, save_npz
from ..metrics.stats import Claim, bound_check, format_comparison, judge, seed_summary
from ..models.conditional_unet import ConditionalUNet
from ..pareto import (DEFAULT_MAX_RELATIVE_DOSE, PAPER_N_BINS, ParetoPairs, check_dvh_vector, dvh_dose_points,
                      dvh_vector, inverse_time_lr, normalise_to_mean, project_to_pareto)
from ..phantom import DoseEngine, make_patient, pareto_sweep
from ..tables import Markdown, markdown_table
from ..train import fit, seeded

__all__ = ["STRUCTURES", "ERROR_STRUCTURES", "PAPER_TABLE1", "PAPER_N_FIT", "PAPER_N_TEST", "PAPER_N_PLANS",
           "PAPER_EPOCHS", "PAPER_LR", "PAPER_DECAY", "PAPER_DROPOUT", "PAPER_BATCH_SIZE", "ARMS", "METRICS",
           "CLAIMS", "TINY", "Config", "default_config", "ParetoCohort", "ParetoData", "make_cohort", "load_data",
           "build_model", "run", "predict", "evaluate_pairs", "case_metrics", "summary_table", "format_table",
           "tradeoff_dvh", "tradeoff_front", "largest_errors", "tables", "figures", "plot_pareto_fronts",
           "plot_projection", "plot_histories", "plot_errors", "plot_case_errors", "plot_tradeoffs",
           "plot_anatomy_only_errors", "plot_tradeoff", "plot_front", "plot_slider_sweep", "TABLE_METRICS",
           "REPLAN_X", "REPLAN_PTV_WEIGHT", "REPRODUCTION_FACTOR", "REPRODUCTION_ALPHA", "front_gap", "replan_front",
           "replan_metrics", "replan_summary", "replan_table", "reproduction", "format_reproduction", "plot_replan",
           "offset_diagnostics", "offset_table"]

#: structures of the anatomy channels and of the DVH vector, in the paper's order (phantom names)
STRUCTURES = ("PTV", "Rectum", "Bladder", "body")
#: structures whose mean- and maximum-dose errors are the per-patient metrics of :func:`run`
ERROR_STRUCTURES = ("PTV", "Rectum", "Bladder")

# ---- the paper's numbers (Ma et al. 2021) --------------------------------------------------------------------
#: Table 1 of :cite:p:`ma2021pareto` (3D prostate, 77 training and validation / 20 test patients): true minus
#: predicted dose in % of the prescription over the test samples,
#: ``{structure: (mean-dose average, its sd, max-dose average, its sd)}``.
PAPER_TABLE1 = {"PTV": (0.52, 0.23, 1.83, 1.09), "Rectum": (0.54, 4.83, 0.64, 1.46),
                "Bladder": (1.63, 4.48, 0.02, 1.17), "body": (0.33, 0.73, 1.21, 1.90)}
#: the paper's data: training and validation patients, test patients, Pareto plans per patient
PAPER_N_FIT, PAPER_N_TEST, PAPER_N_PLANS = 77, 20, 10
#: the paper's training: epochs, initial learning rate and decay of Eq. (6), dropout r_0 of Eq. (7), batch size
PAPER_EPOCHS, PAPER_LR, PAPER_DECAY, PAPER_DROPOUT, PAPER_BATCH_SIZE = 300, 1e-3, 0.002, 0.2, 3

# ---- arms, metrics, claims -----------------------------------------------------------------------------------
#: the compared arms: name -> arguments of :class:`~rtlearn.models.conditional_unet.ConditionalUNet` (the same
#: network, loss, pairs and initial weights). The anatomy-only arm never sees the DVH vector. Every dose of the
#: data is normalised to its PTV mean, and so is every prediction of the first two arms (``normalise_channel=0``,
#: the PTV mask); "conditional, unnormalised" is the network without that output normalisation, whose PTV level
#: is free to drift (the chapter measures how far).
ARMS = {"conditional": {"conditional": True, "normalise_channel": 0},
        "anatomy only": {"conditional": False, "normalise_channel": 0},
        "conditional, unnormalised": {"conditional": True, "normalise_channel": None}}

#: per-test-patient metrics of :func:`run` (% of the prescription; each patient averaged over its desired DVHs)
METRICS = {
    "mean_error": "absolute mean-dose error, averaged over PTV, rectum and bladder",
    "max_error": "absolute max-dose error, averaged over PTV, rectum and bladder",
    **{f"mean_error_{s.lower()}": f"absolute {s} mean-dose error" for s in ERROR_STRUCTURES},
    **{f"max_error_{s.lower()}": f"absolute {s} max-dose error" for s in ERROR_STRUCTURES},
    "body_mae": "mean absolute dose error over the body",
    "replan_gap": "absolute difference of re-planned and predicted rectum and bladder mean dose along the slider",
    "front_gap_predicted": "predicted bladder dose minus the true front's at the same rectum dose",
    "front_gap_replanned": "re-planned bladder dose minus the true front's at the same rectum dose",
    **{f"bias_{kind}_{s.lower()}": f"signed (true - predicted) {s} {kind}-dose error" for kind in ("mean", "max")
       for s in STRUCTURES},
}
#: the metrics of the per-patient table (the signed ``bias_*`` ones feed :func:`reproduction`)
TABLE_METRICS = tuple(k for k in METRICS if not k.startswith("bias_"))

#: The paper's premise, stated before any number is seen: a network given the desired DVH predicts the chosen
#: Pareto plan better than the same network given the anatomy alone (which can only learn a blend of the plans).
#: The paper reports no anatomy-only numbers; its own errors are in :data:`PAPER_TABLE1`. The third claim is ours
#: (stated before the study ran): normalising the prediction to its PTV mean, as the data are, removes the PTV
#: mean-dose error that the unnormalised network leaves.
CLAIMS = (
    Claim("mean_error", "anatomy only", "conditional", "lower",
          "Conditioning on the desired DVH lowers the mean-dose error of PTV, rectum and bladder"),
    Claim("max_error", "anatomy only", "conditional", "lower",
          "Conditioning on the desired DVH lowers the maximum-dose error of PTV, rectum and bladder"),
    Claim("mean_error_ptv", "conditional, unnormalised", "conditional", "lower",
          "Normalising the prediction to its PTV mean, as the data are, lowers the PTV mean-dose error"),
)

#: The reproduction rule, stated before the study ran: the paper's headline errors (its largest average
#: mean-dose and max-dose error over the four structures of Table 1, :data:`PAPER_TABLE1`) count as reproduced
#: when the upper end of our bootstrap interval (:func:`rtlearn.metrics.stats.bound_check`, test patients
#: resampled) is at most ``REPRODUCTION_FACTOR`` times the paper's; not reproduced when its lower end is above;
#: unresolved otherwise. The two checks share a family-wise error of ``REPRODUCTION_ALPHA`` (Bonferroni: each
#: interval at level 1 - alpha / 2).
REPRODUCTION_FACTOR, REPRODUCTION_ALPHA = 1.5, 0.05


# ---- configuration -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Config:
    r"""Every size of the chapter's experiment (see :func:`default_config` for the three profiles).

    Data: ``n_train``, ``n_val`` and ``n_test`` prostate phantoms (patient
    seeds from ``patient_seed`` on, in that order, so the test patients are
    the same for every training seed), ``n_plans`` Pareto plans each planned
    with ``max_iter`` optimiser iterations on a ``dims``-D grid ``shape`` of
    ``spacing`` mm; DVH vectors of ``n_bins`` bins per structure up to
    ``max_dose`` x the PTV mean. ``plan_on_device`` plans on the training
    device, ``cache`` keeps the planned cohort in :func:`rtlearn.config.data_root`.

    Model and training: :class:`~rtlearn.models.conditional_unet.ConditionalUNet`
    with ``depth`` levels of ``width`` doubling to ``max_channels`` channels and
    dropout :math:`r_0` = ``dropout`` (Eq. 7); ``loss`` is the loss class (a
    ``torch.nn`` module called without arguments: ``nn.L1Loss`` or
    ``nn.MSELoss``, the paper's Eq. 5); Adam with learning rate
    ``lr`` / (1 + ``decay`` t), Eq. (6); ``epochs`` (the most; early stopping
    after ``early_stopping`` epochs without a lower validation loss, ``None``:
    never) of ``samples_per_epoch`` pairs (``None``: the paper's
    :math:`K = 10M`) in batches of ``batch_size``; the best validation epoch is
    restored. Evaluation: ``eval_samples`` desired DVHs per test patient,
    drawn with ``eval_seed``. ``arms``: names in :data:`ARMS`.
    ``dropout_grid``: when given, :func:`run` trains the conditional arm once
    per rate :math:`r_0` in it, keeps the one with the lowest validation loss
    and trains every other arm with that rate (``dropout`` is then unused).

    Profiles (:func:`default_config`):

    ``quick``
        16/3/6 patients, 48 x 48 slices at 8.54 mm, width 16, depth 4, MAE,
        lr 2e-3, dropout 0.1, 30 epochs of 160 pairs: a few minutes for both
        arms on a CPU (a demonstration, no early stopping).
    ``study``
        64 training, 13 validation (the paper's 77 together) and 20 test
        patients (the paper's 20), the quick grid, network and optimiser, at
        most 100 epochs of :math:`K = 10M = 640` pairs, early stopping after 10
        epochs without a lower validation loss; all three :data:`ARMS`, and
        the dropout rate chosen on the validation patients from
        :math:`r_0 \in \{0, 0.2\}` (none, the paper's). Cost on one thread of
        this 2-core machine: an epoch of one network takes about 9 s of CPU
        time, so a seed (four networks: two for the dropout choice, then the
        anatomy-only and the unnormalised arm) costs at most 4 x 100 x 9 s =
        60 min, less when early stopping ends a run; planning the 97 patients
        takes about 2 min per process. Seeds: 3, one process each
        (``python -m rtlearn.study dvh_conditioned --profile study --seeds 0
        --threads 1``, and seeds 1 and 2).
    ``full``
        the paper's data sizes in 3D (67/10/20 patients, 64 x 128 x 128 at
        3 x 3.2 x 3.2 mm), depth 6, the squared error, lr 1e-3, dropout 0.2,
        batches of 3 and 150 epochs (half the paper's 300), planned and
        trained on a GPU.
    """

    n_train: int
    n_val: int
    n_test: int
    n_plans: int
    dims: int
    shape: tuple
    spacing: float | tuple
    width: int
    depth: int
    dropout: float
    loss: type
    lr: float
    epochs: int
    batch_size: int
    early_stopping: int | None
    samples_per_epoch: int | None = None
    decay: float = PAPER_DECAY
    max_channels: int = 128
    max_iter: int = 150
    n_bins: int = PAPER_N_BINS
    max_dose: float = DEFAULT_MAX_RELATIVE_DOSE
    patient_seed: int = 0
    eval_samples: int = 10
    eval_seed: int = 123
    plan_on_device: bool = False
    cache: bool = False
    arms: tuple = ("conditional", "anatomy only")
    dropout_grid: tuple = ()

    def __post_init__(self):
        for name in ("n_train", "n_val", "n_test", "width", "depth", "epochs", "batch_size", "max_channels",
                     "max_iter", "eval_samples"):
            check_int(getattr(self, name), name, 1)
        check_int(self.n_plans, "n_plans", 2)
        check_int(self.n_bins, "n_bins", 2)
        check_int(self.patient_seed, "patient_seed", 0)
        check_int(self.eval_seed, "eval_seed", 0)
        for name in ("samples_per_epoch", "early_stopping"):
            if getattr(self, name) is not None:
                check_int(getattr(self, name), name, 1)
        if self.dims not in (2, 3) or isinstance(self.dims, bool):
            raise ValueError(f"dims must be 2 or 3, got {self.dims!r}")
        shape = tuple(self.shape) if isinstance(self.shape, (tuple, list)) else None
        if shape is None or len(shape) != self.dims or not all(isinstance(n, int) and n > 0 for n in shape):
            raise ValueError(f"shape must be {self.dims} positive ints (dims={self.dims}), got {self.shape!r}")
        object.__setattr__(self, "shape", shape)
        f = 2 ** (self.depth - 1)
        if any(n % f for n in shape):
            raise ValueError(f"shape {shape} must be divisible by 2**(depth-1) = {f} for depth={self.depth}")
        sp = np.atleast_1d(np.asarray(self.spacing, dtype=float)) if not isinstance(self.spacing, bool) else None
        if sp is None or sp.size not in (1, self.dims) or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
            raise ValueError(f"spacing must be a positive number or {self.dims} of them (mm), got {self.spacing!r}")
        if isinstance(self.spacing, list):
            object.__setattr__(self, "spacing", tuple(self.spacing))
        for name, rng in (("dropout", "[0, 1)"), ("lr", "(0, inf)"), ("decay", "[0, inf)"), ("max_dose", "(0, inf)")):
            v = getattr(self, name)
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) and v >= 0
            if not ok or (rng == "[0, 1)" and v >= 1) or (rng == "(0, inf)" and v <= 0):
                raise ValueError(f"{name} must be a number in {rng}, got {v!r}")
        if not (isinstance(self.loss, type) and issubclass(self.loss, nn.Module)):
            raise ValueError(f"loss must be a torch.nn.Module class (e.g. torch.nn.L1Loss), got {self.loss!r}")
        arms = tuple(self.arms) if isinstance(self.arms, (tuple, list)) else ()
        if not arms or any(a not in ARMS for a in arms) or len(set(arms)) != len(arms):
            raise ValueError(f"arms must be distinct names from {tuple(ARMS)}, got {self.arms!r}")
        object.__setattr__(self, "arms", arms)
        grid = tuple(self.dropout_grid) if isinstance(self.dropout_grid, (tuple, list)) else None
        if grid is None or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1
                               for v in grid) or len(set(grid)) != len(grid):
            raise ValueError(f"dropout_grid must be distinct rates in [0, 1) (empty: use dropout), "
                             f"got {self.dropout_grid!r}")
        if grid and "conditional" not in arms:
            raise ValueError("dropout_grid chooses the conditional arm's dropout: include 'conditional' in arms")
        object.__setattr__(self, "dropout_grid", tuple(float(v) for v in grid))
        for name in ("plan_on_device", "cache"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")


#: one explicit set of sizes per profile (see :class:`Config`)
_PROFILES = {
    "quick": dict(n_train=16, n_val=3, n_test=6, n_plans=10, dims=2, shape=(48, 48), spacing=8.54, width=16,
                  depth=4, dropout=0.1, loss=nn.L1Loss, lr=2e-3, epochs=30, batch_size=8, early_stopping=None),
    "study": dict(n_train=64, n_val=13, n_test=20, n_plans=10, dims=2, shape=(48, 48), spacing=8.54, width=16,
                  depth=4, dropout=0.1, loss=nn.L1Loss, lr=2e-3, epochs=100, batch_size=8, early_stopping=10,
                  arms=tuple(ARMS), dropout_grid=(0.0, PAPER_DROPOUT)),
    "full": dict(n_train=67, n_val=10, n_test=20, n_plans=10, dims=3, shape=(64, 128, 128),
                 spacing=(3.0, 3.2, 3.2), width=16, depth=6, dropout=PAPER_DROPOUT, loss=nn.MSELoss, lr=PAPER_LR,
                 epochs=150, batch_size=PAPER_BATCH_SIZE, early_stopping=None, plan_on_device=True, cache=True),
}

#: overrides that make ``default_config("study", **TINY)`` run one seed in a few seconds
TINY = dict(n_train=3, n_val=1, n_test=2, n_plans=3, shape=(32, 32), spacing=12.8, max_iter=20, n_bins=8, width=4,
            depth=3, epochs=2, batch_size=2, samples_per_epoch=4, eval_samples=2, early_stopping=1,
            dropout_grid=(0.0, 0.1))


def default_config(profile: str | None = None, **overrides) -> Config:
    """The chapter's :class:`Config` for ``profile`` (default: :func:`rtlearn.config.profile`), with ``overrides``.

    Raises
    ------
    ValueError
        For an unknown profile, an unknown override name or an invalid value.
    """
    name = active_profile() if profile is None else check_profile(profile)
    check_overrides(Config, overrides)
    return Config(**{**_PROFILES[name], **overrides})


def _check_config(cfg) -> Config:
    if not isinstance(cfg, Config):
        raise TypeError(f"cfg must be a dvh_conditioned.Config (see default_config), got {type(cfg).__name__}")
    return cfg


# ---- data ----------------------------------------------------------------------------------------------------
@dataclass
class ParetoCohort:
    """Pareto sets of a group of phantom prostate patients.

    Attributes
    ----------
    anatomy : Tensor ``(M, 4, *spatial)`` float32
        Masks of :data:`STRUCTURES` (the network input).
    doses : Tensor ``(M, N, *spatial)`` float32
        Pareto plans normalised to their PTV mean dose (1 = PTV mean).
    dvhs : Tensor ``(M, N, 4 * n_bins)`` float32
        Their DVH vectors (:func:`rtlearn.pareto.dvh_vector`).
    ptv_mean_gy : ndarray ``(M, N)``
        Each plan's PTV mean dose in Gy before normalisation (to express
        differences in Gy or % of the prescription).
    oar_mean_gy : ndarray ``(M, N, 2)``
        Rectum and bladder mean dose in Gy of each plan (the Pareto front).
    seeds : list of int
        Phantom seeds (``make_patient("prostate", seed)``).
    spacing : tuple, prescription : float (Gy), n_bins, max_dose
    """

    anatomy: torch.Tensor
    doses: torch.Tensor
    dvhs: torch.Tensor
    ptv_mean_gy: np.ndarray
    oar_mean_gy: np.ndarray
    seeds: list
    spacing: tuple
    prescription: float
    n_bins: int = PAPER_N_BINS
    max_dose: float = DEFAULT_MAX_RELATIVE_DOSE
    structures: tuple = field(default=STRUCTURES)

    def __len__(self) -> int:
        return int(self.anatomy.shape[0])

    @property
    def n_plans(self) -> int:
        return int(self.doses.shape[1])

    @property
    def dims(self) -> int:
        return int(self.anatomy.dim() - 2)

    def masks(self, i: int) -> dict:
        """Boolean masks of patient ``i`` as a dict (NumPy)."""
        return {n: self.anatomy[i, k].numpy() > 0.5 for k, n in enumerate(self.structures)}

    def subset(self, idx) -> "ParetoCohort":
        """The patients ``idx`` (a slice or a list of indices) as a new cohort."""
        idx = list(range(len(self)))[idx] if isinstance(idx, slice) else [int(i) for i in idx]
        return ParetoCohort(self.anatomy[idx], self.doses[idx], self.dvhs[idx], self.ptv_mean_gy[idx],
                            self.oar_mean_gy[idx], [self.seeds[i] for i in idx], self.spacing, self.prescription,
                            self.n_bins, self.max_dose, self.structures)

    def pairs(self, samples_per_epoch: int | None = None, seed: int | None = None, **kw) -> ParetoPairs:
        """On-the-fly pairs (:class:`rtlearn.pareto.ParetoPairs`) over this cohort."""
        return ParetoPairs(self.anatomy, self.doses, self.dvhs, samples_per_epoch, seed=seed,
                           n_bins=self.n_bins, **kw)


def make_cohort(n_patients: int, n_plans: int = 10, *, dims: int = 2, shape=(64, 64), spacing=6.4, seed: int = 0,
                n_bins: int = PAPER_N_BINS, max_dose: float = DEFAULT_MAX_RELATIVE_DOSE, device=None,
                max_iter: int = 150, cache_dir=None, progress: bool = True) -> ParetoCohort:
    r"""Plan ``n_plans`` Pareto-optimal plans for each of ``n_patients`` prostate phantoms.

    Patient seeds start at ``seed``; a seed whose anatomy lacks a PTV, rectum
    or bladder on the grid (possible in 2D) is skipped. Plan :math:`j` of
    :func:`rtlearn.phantom.pareto_sweep` weights the rectum and bladder mean
    doses by :math:`\Lambda x_j` and :math:`\Lambda(1-x_j)`, so the first
    plan spares the bladder most and the last the rectum. Each plan is
    normalised to its PTV mean dose, :math:`\tilde D = D/\bar D_{PTV}`, as in
    :cite:p:`ma2021pareto`, and its DVH vector (4 structures x ``n_bins``)
    is computed on :math:`[0, \text{max\_dose}]`.

    ``device`` runs the dose engine and optimiser there (e.g. ``"cuda"`` for
    the 3D full profile). With ``cache_dir`` (e.g.
    :func:`rtlearn.config.data_root`) the cohort is saved there atomically
    under a name made of all the arguments and loaded on the next call.
    """
    n_patients = check_int(n_patients, "n_patients", 1)
    n_plans = check_int(n_plans, "n_plans", 2)
    seed = check_int(seed, "seed", 0)
    cache = None
    if cache_dir is not None:
        shp = "x".join(str(int(n)) for n in np.atleast_1d(shape)) if shape is not None else "default"
        sp = "x".join(f"{float(v):g}" for v in np.atleast_1d(spacing)) if spacing is not None else "default"
        cache = Path(cache_dir) / "pareto" / (f"prostate_{dims}d_{shp}_{sp}_m{n_patients}_n{n_plans}_s{seed}_"
                                              f"b{n_bins}_d{float(max_dose):g}_it{max_iter}.npz")
        if cache.is_file():
            z = load_npz(cache)
            return ParetoCohort(torch.from_numpy(z["anatomy"]), torch.from_numpy(z["doses"]),
                                torch.from_numpy(z["dvhs"]), z["ptv_mean_gy"], z["oar_mean_gy"],
                                [int(v) for v in z["seeds"]], tuple(float(v) for v in z["spacing"]),
                                float(z["prescription"]), n_bins, float(max_dose))
    anat, doses, dvhs, ptv_gy, oar_gy, seeds = [], [], [], [], [], []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_patients, desc="Pareto sweeps")
    s = seed
    while len(anat) < n_patients:
        if s - seed > 10 * n_patients + 20:
            raise RuntimeError(f"could not find {n_patients} phantoms with PTV, rectum and bladder on this grid")
        p = make_patient("prostate", seed=s, dims=dims, shape=shape, spacing=spacing)
        s += 1
        if not all(n in p.masks for n in STRUCTURES[:3]):
            continue
        masks = {n: (p.body if n == "body" else p.masks[n]) for n in STRUCTURES}
        engine = DoseEngine.for_patient(p, device=device)
        plans = pareto_sweep(p, n_plans=n_plans, engine=engine, max_iter=max_iter)
        d = np.stack([pl.dose for pl in plans]).astype(np.float64)
        ptv = masks["PTV"]
        ptv_gy.append(d[:, ptv].mean(1))
        oar_gy.append(np.stack([d[:, masks["Rectum"]].mean(1), d[:, masks["Bladder"]].mean(1)], 1))
        d = normalise_to_mean(d, ptv)
        anat.append(np.stack([masks[n] for n in STRUCTURES]).astype(np.float32))
        doses.append(d.astype(np.float32))
        dvhs.append(dvh_vector(d, masks, n_bins=n_bins, max_dose=max_dose, structures=STRUCTURES))
        seeds.append(s - 1)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    out = ParetoCohort(torch.from_numpy(np.stack(anat)), torch.from_numpy(np.stack(doses)),
                       torch.from_numpy(np.stack(dvhs)).float(), np.stack(ptv_gy), np.stack(oar_gy), seeds,
                       tuple(p.spacing), float(p.prescriptions["PTV"]), n_bins, float(max_dose))
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        save_npz(cache, anatomy=out.anatomy.numpy(), doses=out.doses.numpy(), dvhs=out.dvhs.numpy(),
                 ptv_mean_gy=out.ptv_mean_gy, oar_mean_gy=out.oar_mean_gy, seeds=np.asarray(out.seeds),
                 spacing=np.asarray(out.spacing), prescription=np.asarray(out.prescription))
    return out


@dataclass
class ParetoData:
    """The chapter's data (:func:`load_data`): training, validation and test cohorts of one planned cohort."""

    train: ParetoCohort
    val: ParetoCohort
    test: ParetoCohort

    @property
    def cases(self) -> list:
        """Test-case ids: ``"prostate-<phantom seed>"``, the same for every training seed."""
        return [f"prostate-{s}" for s in self.test.seeds]


def load_data(cfg: Config, *, progress: bool = True) -> ParetoData:
    """Plan the cohort of ``cfg`` and split it into training, validation and test patients (in that order).

    The split depends on ``cfg`` alone (phantom seeds from ``cfg.patient_seed``), so
    the test patients pair across training seeds.
    """
    cfg = _check_config(cfg)
    n_fit = cfg.n_train + cfg.n_val
    cohort = make_cohort(n_fit + cfg.n_test, cfg.n_plans, dims=cfg.dims, shape=cfg.shape, spacing=cfg.spacing,
                         seed=cfg.patient_seed, n_bins=cfg.n_bins, max_dose=cfg.max_dose,
                         device=get_device() if cfg.plan_on_device else None, max_iter=cfg.max_iter,
                         cache_dir=data_root() if cfg.cache else None, progress=progress)
    return ParetoData(cohort.subset(slice(0, cfg.n_train)), cohort.subset(slice(cfg.n_train, n_fit)),
                      cohort.subset(slice(n_fit, len(cohort))))


# ---- model, training, evaluation -----------------------------------------------------------------------------
def build_model(cfg: Config, arm: str, dvh_length: int | None = None, dropout: float | None = None) -> ConditionalUNet:
    """The network of ``arm`` (a name in :data:`ARMS`) for ``cfg``; build it inside :func:`rtlearn.train.seeded`.

    ``dvh_length`` defaults to ``4 * cfg.n_bins`` (the four :data:`STRUCTURES`),
    ``dropout`` (:math:`r_0`) to ``cfg.dropout``.
    """
    cfg = _check_config(cfg)
    if arm not in ARMS:
        raise ValueError(f"unknown arm {arm!r}; the arms are {tuple(ARMS)}")
    dvh_length = len(STRUCTURES) * cfg.n_bins if dvh_length is None else check_int(dvh_length, "dvh_length", 1)
    dropout = cfg.dropout if dropout is None else dropout
    return ConditionalUNet(len(STRUCTURES), 1, dvh_length, dims=cfg.dims, depth=cfg.depth, width=cfg.width,
                           max_channels=cfg.max_channels, dropout=dropout, **ARMS[arm])


def _fit_arm(cfg, arm, seed, data, dropout, progress):
    """Train one arm (seeded initial weights, the chapter's loss, pairs and schedule): a FitResult."""
    with seeded(seed):
        model = build_model(cfg, arm, data.train.dvhs.shape[-1], dropout=dropout)
    return fit(model, cfg.loss(), data.train.pairs(cfg.samples_per_epoch), val=data.val.pairs(seed=seed + 1),
               epochs=cfg.epochs, batch_size=cfg.batch_size, val_batch_size=max(cfg.batch_size, 16), seed=seed,
               lr=cfg.lr, scheduler=inverse_time_lr(cfg.decay), scheduler_interval="step",
               input_keys=("input", "dvh"), early_stopping=cfg.early_stopping, progress=progress)


def run(cfg: Config, seed: int, *, data: ParetoData | None = None, progress: bool = True) -> dict:
    r"""Train every arm of ``cfg`` for one ``seed`` and evaluate it on the test patients: a run record.

    Each arm is the same :func:`build_model` network, built in
    :func:`rtlearn.train.seeded` (``seed``: the same initial weights for every
    arm), trained by :func:`rtlearn.train.fit` with the loss object
    ``cfg.loss()`` on on-the-fly pairs (:class:`rtlearn.pareto.ParetoPairs`,
    Eq. 5 of :cite:p:`ma2021pareto`), Adam and the learning-rate decay of
    Eq. (6), stepped every update; the validation pairs are fixed (drawn with
    ``seed + 1``) and the best validation epoch is restored. With
    ``cfg.dropout_grid`` the conditional arm is trained once per rate and the
    rate with the lowest validation loss is kept for every arm. The test pairs
    (``cfg.eval_samples`` desired DVHs per test patient, drawn with
    ``cfg.eval_seed``) are the same for every seed and arm. Every test
    patient's slider predictions are re-planned (:func:`replan_front`).

    Returns
    -------
    dict
        ``cases`` (test-patient ids), ``metrics`` ``{arm: {metric: [per
        patient]}}`` (:data:`METRICS`, :func:`case_metrics`,
        :func:`replan_metrics`), ``history`` ``{arm: per-epoch records}``,
        ``seconds`` ``{arm: training and evaluation}``, ``extras``
        (``table1``: :func:`summary_table` per arm; ``table1_train``: the
        same on the training patients; ``offset``: :func:`offset_diagnostics`
        of the unnormalised arm; ``front``:
        :func:`tradeoff_front` of the first test patient; ``replan``: ``{arm:
        [replan_front per test patient]}``; ``dropout``: the grid, each rate's
        best validation loss and the chosen rate) and ``live`` (``models``,
        ``results`` of :func:`evaluate_pairs` per arm).
    """
    cfg = _check_config(cfg)
    seed = check_int(seed, "seed", 0)
    data = load_data(cfg, progress=progress) if data is None else data
    if not isinstance(data, ParetoData):
        raise TypeError(f"data must be a ParetoData (see load_data), got {type(data).__name__}")
    test = data.test
    record = {"cases": data.cases, "metrics": {}, "history": {}, "seconds": {},
              "extras": {"table1": {}, "front": {"case": data.cases[0], "x": None,
                                                 "pareto": test.oar_mean_gy[0].tolist(), "predicted": {}},
                         "table1_train": {}, "replan": {}, "offset": {},
                         "dropout": {"grid": list(cfg.dropout_grid), "val_loss": [],
                                                   "chosen": cfg.dropout}},
              "live": {"models": {}, "results": {}}}
    dropout, chosen = cfg.dropout, None
    if cfg.dropout_grid:
        t0 = time.perf_counter()
        fits = [_fit_arm(cfg, "conditional", seed, data, r, progress) for r in cfg.dropout_grid]
        losses = [float(min(f.history["val_loss"])) for f in fits]
        k = int(np.argmin(losses))
        dropout, chosen = cfg.dropout_grid[k], (fits[k], time.perf_counter() - t0)
        record["extras"]["dropout"].update(val_loss=losses, chosen=dropout)
    for arm in cfg.arms:
        t0 = time.perf_counter()
        if arm == "conditional" and chosen is not None:
            result, t0 = chosen[0], t0 - chosen[1]
        else:
            result = _fit_arm(cfg, arm, seed, data, dropout, progress)
        model = result.model.eval().cpu()
        res = evaluate_pairs(model, test, cfg.eval_samples, seed=cfg.eval_seed)
        front = tradeoff_front(model, test, 0)
        fronts = [replan_front(model, test, i, cfg) for i in range(len(test))]
        record["seconds"][arm] = time.perf_counter() - t0
        metrics = case_metrics(res, len(test))
        per_front = [replan_metrics(f) for f in fronts]
        for name in per_front[0]:
            metrics[name] = np.array([m[name] for m in per_front])
        record["metrics"][arm] = {k: np.asarray(metrics[k]).tolist() for k in METRICS}
        record["history"][arm] = [dict(r) for r in result.history.records]
        record["extras"]["table1"][arm] = {k: list(v) for k, v in summary_table(res).items()}
        record["extras"]["table1_train"][arm] = {k: list(v) for k, v in summary_table(
            evaluate_pairs(model, data.train, cfg.eval_samples, seed=cfg.eval_seed)).items()}
        record["extras"]["front"]["x"] = front["x"]
        record["extras"]["front"]["predicted"][arm] = front["predicted"]
        record["extras"]["replan"][arm] = fronts
        if ARMS[arm].get("normalise_channel") is None:
            record["extras"]["offset"][arm] = offset_diagnostics(model, data.train, cfg.eval_samples, cfg.eval_seed)
        record["live"]["models"][arm] = model
        record["live"]["results"][arm] = res
    return record


@torch.no_grad()
def predict(model, anatomy, dvh, batch_size: int = 16, n_bins: int = PAPER_N_BINS) -> torch.Tensor:
    r"""Predicted normalised doses :math:`\phi_w(X, \mathcal{D})` ``(B, *spatial)`` on the CPU.

    ``anatomy`` is ``(C, *sp)`` (one patient, broadcast over the DVH vectors)
    or ``(B, C, *sp)``; ``dvh`` is ``(L,)`` or ``(B, L)`` and is validated as a
    DVH vector (:func:`rtlearn.pareto.check_dvh_vector`).
    """
    dvh = torch.as_tensor(np.asarray(dvh) if not torch.is_tensor(dvh) else dvh, dtype=torch.float32)
    check_dvh_vector(dvh.numpy(), None, n_bins, name="desired DVH vector")
    anatomy = torch.as_tensor(anatomy, dtype=torch.float32)
    single = dvh.dim() == 1
    dvh = dvh[None] if single else dvh
    if anatomy.dim() == model.dims + 1:
        anatomy = anatomy[None].expand(dvh.shape[0], *anatomy.shape)
    if anatomy.shape[0] != dvh.shape[0]:
        raise ValueError(f"anatomy batch {anatomy.shape[0]} differs from the number of DVH vectors {dvh.shape[0]}")
    model.eval()
    dev = next(model.parameters()).device
    out = [model(anatomy[k:k + batch_size].to(dev), dvh[k:k + batch_size].to(dev))[:, 0].cpu()
           for k in range(0, dvh.shape[0], batch_size)]
    out = torch.cat(out)
    return out[0] if single else out


def _masked_mean_max(dose, masks):
    """Mean and max of ``dose`` (B, V) over boolean ``masks`` (B, S, V): two (B, S) tensors."""
    m = masks.float()
    mean = torch.einsum("bv,bsv->bs", dose, m) / m.sum(-1)
    mx = torch.where(masks, dose[:, None, :], torch.full_like(m, -torch.inf)).amax(-1)
    return mean, mx


@torch.no_grad()
def evaluate_pairs(model, cohort: ParetoCohort, samples_per_patient: int = 10, seed: int = 123,
                   batch_size: int = 16, device=None) -> dict:
    r"""Table 1 quantities of :cite:p:`ma2021pareto` on desired DVHs drawn from ``cohort``.

    As in the paper's test set, :math:`K' = ` ``samples_per_patient`` :math:`\times M`
    desired DVHs are drawn by picking a random patient and plan of the cohort;
    each is projected (Eq. 4) onto the current patient's Pareto set, whose
    selected dose :math:`Y` is the truth. For every structure :math:`s`,

    .. math::

        \Delta^{mean}_s = 100\,\frac{\bar Y_s - \bar{\hat Y}_s}{R_x}, \qquad
        \Delta^{max}_s = 100\,\frac{\max_s Y - \max_s \hat Y}{R_x}

    in % of the prescription :math:`R_x` (true minus predicted, the paper's
    sign), with the normalised doses converted to Gy by the true plan's PTV
    mean dose.

    Returns
    -------
    dict
        ``"mean"``, ``"max"``: arrays ``(K', 4)`` (columns :data:`STRUCTURES`);
        ``"patient"``, ``"plan"``, ``"source_patient"``, ``"source_plan"``:
        ``(K',)`` int arrays; ``"mae"``: mean absolute error over the body per
        sample (% of :math:`R_x`).
    """
    samples_per_patient = check_int(samples_per_patient, "samples_per_patient", 1)
    ds = cohort.pairs(samples_per_patient * len(cohort), seed=seed)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size)
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    model = model.to(dev).eval()
    out = {k: [] for k in ("mean", "max", "mae", "patient", "plan", "source_patient", "source_plan")}
    for batch in loader:
        pred = model(batch["input"].to(dev), batch["dvh"].to(dev))[:, 0].float().cpu()
        true = batch["target"][:, 0]
        B = true.shape[0]
        scale = torch.as_tensor(cohort.ptv_mean_gy[batch["patient"].numpy(), batch["plan"].numpy()],
                                dtype=torch.float32) * 100.0 / cohort.prescription
        masks = batch["input"].reshape(B, len(cohort.structures), -1) > 0.5
        tm, tx = _masked_mean_max(true.reshape(B, -1), masks)
        pm, px = _masked_mean_max(pred.reshape(B, -1), masks)
        out["mean"].append((tm - pm) * scale[:, None])
        out["max"].append((tx - px) * scale[:, None])
        body = masks[:, cohort.structures.index("body")].float()
        mae = ((true - pred).abs().reshape(B, -1) * body).sum(-1) / body.sum(-1)
        out["mae"].append(mae * scale)
        for k in ("patient", "plan", "source_patient", "source_plan"):
            out[k].append(batch[k])
    return {k: torch.cat(v).numpy() for k, v in out.items()}


class _DropoutAverage(nn.Module):
    """``n`` forward passes with dropout on (batch norm in eval mode), averaged: Monte-Carlo dropout."""

    def __init__(self, model, n: int, seed: int):
        super().__init__()
        self.model, self.n, self.seed = model, n, seed

    def forward(self, anatomy, dvh):
        drops = [m for m in self.model.modules() if isinstance(m, nn.Dropout)]
        gen = torch.random.fork_rng(devices=[])
        with gen:
            torch.manual_seed(self.seed)
            for m in drops:
                m.train()
            try:
                return torch.stack([self.model(anatomy, dvh) for _ in range(self.n)]).mean(0)
            finally:
                for m in drops:
                    m.eval()


@torch.no_grad()
def offset_diagnostics(model, train: ParetoCohort, samples_per_patient: int = 10, seed: int = 123,
                       n_dropout: int = 16) -> dict:
    r"""Where a PTV mean-dose offset comes from: the average PTV error on training pairs under three evaluations.

    ``eval``: the deterministic network (dropout off, batch-norm running
    statistics), as at test time. ``dropout_mean``: dropout left on and
    ``n_dropout`` passes averaged (what training saw, in expectation).
    ``bn_recalibrated``: the running statistics recomputed on the training
    pairs with dropout off (removes a train/test variance shift of batch
    norm after dropout). An offset that a train/test mismatch causes shrinks
    under the last two; one the network learned does not. ``dropout_mean``
    is None for a network without dropout. Values: true −
    predicted PTV mean dose, % of Rx, averaged over the pairs of
    :func:`evaluate_pairs`.
    """
    import copy

    model = model.eval().cpu()

    def ptv(m):
        return float(evaluate_pairs(m, train, samples_per_patient, seed=seed)["mean"][:, 0].mean())

    has_dropout = any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules())
    out = {"eval": ptv(model),
           "dropout_mean": ptv(_DropoutAverage(model, n_dropout, seed).eval()) if has_dropout else None}
    recal = copy.deepcopy(model)
    norms = [m for m in recal.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None                                 # a cumulative average over the pass below
        m.train()
    for batch in torch.utils.data.DataLoader(train.pairs(samples_per_patient * len(train), seed=seed), batch_size=16):
        recal(batch["input"], batch["dvh"])
    out["bn_recalibrated"] = ptv(recal.eval())
    return out


def case_metrics(results: dict, n_patients: int, structures=STRUCTURES) -> dict:
    r"""Per-patient metrics of :data:`METRICS` from :func:`evaluate_pairs`: ``{name: array (n_patients,)}``.

    For patient :math:`i` with desired DVHs :math:`k = 1..K_i`, e.g.
    ``mean_error_rectum`` is :math:`\frac{1}{K_i}\sum_k |\Delta^{mean}_{rectum,k}|`
    and ``bias_mean_rectum`` is :math:`\frac{1}{K_i}\sum_k \Delta^{mean}_{rectum,k}`
    (% of :math:`R_x`); ``mean_error`` and ``max_error`` average the three
    :data:`ERROR_STRUCTURES`; ``body_mae`` is the mean of the body's mean
    absolute error. A patient without samples gets NaN. (The re-planning
    metrics come from :func:`replan_metrics`.)
    """
    n_patients = check_int(n_patients, "n_patients", 1)
    patient = np.asarray(results["patient"])
    cols = [list(structures).index(s) for s in ERROR_STRUCTURES]
    out = {}
    per = {}
    for kind in ("mean", "max"):
        err = np.abs(np.asarray(results[kind], dtype=np.float64)[:, cols])
        per[kind] = np.stack([err[patient == i].mean(0) if np.any(patient == i) else np.full(len(cols), np.nan)
                              for i in range(n_patients)])
        out[f"{kind}_error"] = per[kind].mean(1)
    for kind in ("mean", "max"):
        for k, s in enumerate(ERROR_STRUCTURES):
            out[f"{kind}_error_{s.lower()}"] = per[kind][:, k]
    mae = np.asarray(results["mae"], dtype=np.float64)
    out["body_mae"] = np.array([mae[patient == i].mean() if np.any(patient == i) else np.nan
                                for i in range(n_patients)])
    for kind in ("mean", "max"):
        signed = np.asarray(results[kind], dtype=np.float64)
        for k, s in enumerate(structures):
            out[f"bias_{kind}_{s.lower()}"] = np.array([signed[patient == i, k].mean() if np.any(patient == i)
                                                        else np.nan for i in range(n_patients)])
    return {k: out[k] for k in METRICS if k in out}


def summary_table(results: dict, structures=STRUCTURES) -> dict:
    """``{structure: (mean_avg, mean_sd, max_avg, max_sd)}`` from :func:`evaluate_pairs` (sample sd, ddof=1)."""
    table = {}
    for k, name in enumerate(structures):
        mean, mx = results["mean"][:, k], results["max"][:, k]
        table[name] = (float(mean.mean()), float(mean.std(ddof=1)), float(mx.mean()), float(mx.std(ddof=1)))
    return table


def format_table(tables: dict, digits: int = 2) -> str:
    """Several :func:`summary_table` results side by side, as a Markdown table (:func:`rtlearn.tables.markdown_table`).

    ``tables`` maps a column label (e.g. ``"conditional"``) to a summary table;
    each gets a "mean diff (%)" and a "max diff (%)" column of ``mean ± sd`` cells.
    """
    labels = list(tables)
    names = list(next(iter(tables.values())))
    header = ["structure"] + [f"{lab}: {kind} diff (%)" for lab in labels for kind in ("mean", "max")]
    rows = [[n] + [pair for lab in labels for pair in (tuple(tables[lab][n][:2]), tuple(tables[lab][n][2:4]))]
            for n in names]
    return markdown_table(header, rows, f"{{:.{digits}f}}", rule=" --- ")


def tradeoff_dvh(pareto_dvhs, x: float):
    r"""A desired DVH vector part-way along a patient's Pareto front.

    With the :math:`N` Pareto DVH vectors ordered along the front and
    :math:`t = x (N - 1)`, :math:`j = \lfloor t \rfloor`,

    .. math:: \mathcal{D}(x) = (1 - (t - j))\, D^{j} + (t - j)\, D^{j+1},

    a convex combination of two cumulative DVHs, hence itself a valid DVH
    vector (values in [0, 1], non-increasing per structure). ``x = 0`` is the
    first plan (for :func:`make_cohort`: most bladder sparing), ``x = 1`` the
    last (most rectum sparing).
    """
    d = torch.as_tensor(pareto_dvhs).double()
    if d.dim() != 2 or d.shape[0] < 1:
        raise ValueError(f"pareto_dvhs must be (N, L) with N >= 1, got shape {tuple(d.shape)}")
    if not isinstance(x, (int, float, np.floating, np.integer)) or isinstance(x, bool) or not 0 <= x <= 1:
        raise ValueError(f"x must be a number in [0, 1], got {x!r}")
    t = float(x) * (d.shape[0] - 1)
    j = min(int(np.floor(t)), d.shape[0] - 1)
    w = t - j
    if j + 1 < d.shape[0]:
        out = (1 - w) * d[j] + w * d[j + 1]
    else:
        out = d[j].clone()
    return out.float()


def tradeoff_front(model, cohort: ParetoCohort, patient: int = 0, n: int = 11) -> dict:
    r"""Predicted rectum and bladder mean doses (Gy) along patient ``patient``'s front: the slider swept.

    The desired DVH is :func:`tradeoff_dvh` at ``n`` equally spaced
    :math:`x \in [0, 1]`; the predicted normalised dose is converted to Gy
    with the patient's average PTV mean dose over its plans.

    Returns
    -------
    dict
        ``x`` (list of n), ``predicted`` (n x [rectum, bladder] Gy), ``pareto``
        (the patient's plans, N x [rectum, bladder] Gy) and ``doses`` (the
        predicted doses in Gy, ``(n, *spatial)`` ndarray).
    """
    patient = check_int(patient, "patient", 0)
    n = check_int(n, "n", 2)
    if patient >= len(cohort):
        raise ValueError(f"patient must be below {len(cohort)}, got {patient}")
    xs = np.linspace(0, 1, n)
    des = torch.stack([tradeoff_dvh(cohort.dvhs[patient], float(x)) for x in xs])
    pred = predict(model, cohort.anatomy[patient], des, n_bins=cohort.n_bins).numpy()
    masks = cohort.masks(patient)
    to_gy = cohort.ptv_mean_gy[patient].mean()
    pr = [[float(p[masks[s]].mean() * to_gy) for s in ("Rectum", "Bladder")] for p in pred]
    return {"x": xs.tolist(), "predicted": pr, "pareto": cohort.oar_mean_gy[patient].tolist(), "doses": pred * to_gy}


#: slider positions (:func:`tradeoff_dvh`) whose predicted doses :func:`replan_front` turns into deliverable plans
REPLAN_X = (0.0, 0.25, 0.5, 0.75, 1.0)
#: dose-mimicking weight of the PTV (:func:`rtlearn.phantom.mimic_plan`; rectum, bladder and the rest of the body: 1)
REPLAN_PTV_WEIGHT = 10.0


def front_gap(points, pareto) -> np.ndarray:
    r"""Signed distance (same unit as the inputs) of (rectum, bladder) points below (−) or above (+) a Pareto front.

    The front is the polyline through the patient's plans sorted by rectum
    dose; for a point :math:`(r, b)` the gap is :math:`b - f(r)`, with
    :math:`f` the front's bladder dose interpolated linearly at :math:`r`
    (held constant beyond its ends). A negative gap lies *below* the front:
    lower bladder dose than the plans achieve at that rectum dose. The
    polyline is the front sampled at its plans; where the true front is
    convex it lies below the straight segment between two plans, so a point
    just below the polyline may still be achievable.
    """
    pts = np.asarray(points, dtype=float).reshape(-1, 2)
    front = np.asarray(pareto, dtype=float)
    if front.ndim != 2 or front.shape[1] != 2 or front.shape[0] < 2:
        raise ValueError(f"pareto must be (N >= 2, 2) rectum and bladder doses, got shape {front.shape}")
    if not (np.all(np.isfinite(pts)) and np.all(np.isfinite(front))):
        raise ValueError("points and pareto must be finite")
    order = np.argsort(front[:, 0], kind="stable")
    return pts[:, 1] - np.interp(pts[:, 0], front[order, 0], front[order, 1])


def replan_front(model, cohort: ParetoCohort, patient: int, cfg: Config, xs=REPLAN_X) -> dict:
    r"""How much of the predicted trade-off can be delivered: dose mimicking of the slider's predictions.

    For each slider position :math:`x` the network predicts the dose of the
    desired DVH :func:`tradeoff_dvh` (converted to Gy with the patient's
    average PTV mean dose, as :func:`tradeoff_front` does). The phantom
    planner then finds the deliverable plan closest to it
    (:func:`rtlearn.phantom.mimic_plan`, PTV weight
    :data:`REPLAN_PTV_WEIGHT`) and normalises it as every plan of the
    Pareto set is normalised (PTV :math:`D_{95} = R_x`), so the re-planned
    point can be compared with the true front. The patient is rebuilt
    from its phantom seed with the grid of ``cfg``; its masks must equal the
    cohort's.

    Returns
    -------
    dict
        ``x``; ``predicted`` and ``replanned``: ``(len(xs), 2)`` lists of the
        rectum and bladder mean doses (Gy); ``pareto``: the patient's plans
        (N x 2, Gy); ``rms_gy``: RMS difference over the body between each
        prediction and its mimicked plan before the normalisation;
        ``predicted_d95``: the prediction's PTV :math:`D_{95}` (% of
        :math:`R_x`); ``replanned_scale``: the factor that brought the
        mimicked plan's :math:`D_{95}` to :math:`R_x` (0: the plan has no
        target dose and is left unscaled); ``to_rx``: the factor
        from Gy to % of the prescription.
    """
    from ..phantom import mimic_plan

    cfg = _check_config(cfg)
    patient = check_int(patient, "patient", 0)
    if patient >= len(cohort):
        raise ValueError(f"patient must be below {len(cohort)}, got {patient}")
    xs = [float(x) for x in xs]
    p = make_patient("prostate", seed=cohort.seeds[patient], dims=cfg.dims, shape=cfg.shape, spacing=cfg.spacing)
    masks = cohort.masks(patient)
    rebuilt = {n: (p.body if n == "body" else p.masks[n]) for n in cohort.structures}
    if any(not np.array_equal(rebuilt[n], masks[n]) for n in cohort.structures):
        raise ValueError(f"phantom seed {cohort.seeds[patient]} rebuilt with cfg's grid differs from the cohort's "
                         f"patient {patient}: pass the Config the cohort was planned with")
    engine = DoseEngine.for_patient(p)
    des = torch.stack([tradeoff_dvh(cohort.dvhs[patient], x) for x in xs])
    to_gy = float(cohort.ptv_mean_gy[patient].mean())
    pred = predict(model, cohort.anatomy[patient], des, n_bins=cohort.n_bins).numpy().astype(np.float64) * to_gy
    pred = np.clip(pred, 0.0, None)
    ptv, organs = masks["PTV"], ("Rectum", "Bladder")
    out = {"x": xs, "predicted": [], "replanned": [], "pareto": cohort.oar_mean_gy[patient].tolist(), "rms_gy": [],
           "to_rx": 100.0 / cohort.prescription, "predicted_d95": [], "replanned_scale": []}
    for d in pred:
        plan = mimic_plan(p, d, engine, structure_weights={"PTV": REPLAN_PTV_WEIGHT}, normalise=False)
        got = plan.dose.astype(np.float64)
        d95 = float(dose_at_volume(got, ptv, 95))
        scale = cohort.prescription / d95 if d95 > 0 else 0.0     # 0: a plan without target dose, not scaled
        got *= scale if scale > 0 else 1.0
        out["predicted"].append([float(d[masks[o]].mean()) for o in organs])
        out["replanned"].append([float(got[masks[o]].mean()) for o in organs])
        out["rms_gy"].append(float(plan.info["rms_gy"]))
        out["predicted_d95"].append(float(dose_at_volume(d, ptv, 95)) * out["to_rx"])
        out["replanned_scale"].append(float(scale))
    return out


def replan_metrics(front: dict) -> dict:
    r"""Per-patient deliverability numbers (% of Rx) from :func:`replan_front`.

    ``replan_gap``: mean over slider positions and the two OARs of
    \|re-planned − predicted\| mean dose; ``front_gap_predicted`` and
    ``front_gap_replanned``: mean :func:`front_gap` of the predicted and the
    re-planned points (negative: below the true front, i.e. better than any
    plan).
    """
    pr, rp = np.asarray(front["predicted"], float), np.asarray(front["replanned"], float)
    k = float(front["to_rx"])
    return {"replan_gap": float(np.abs(rp - pr).mean() * k),
            "front_gap_predicted": float(front_gap(pr, front["pareto"]).mean() * k),
            "front_gap_replanned": float(front_gap(rp, front["pareto"]).mean() * k)}


# ---- tables --------------------------------------------------------------------------------------------------
def largest_errors(table1: dict) -> dict:
    """The structure with the largest average mean-dose and max-dose error of a :func:`summary_table`.

    Returns ``{"mean": (structure, signed value), "max": (structure, signed value)}`` (% of Rx).
    """
    out = {}
    for kind, col in (("mean", 0), ("max", 2)):
        worst = max(table1, key=lambda n: abs(table1[n][col]))
        out[kind] = (worst, float(table1[worst][col]))
    return out


def _table1_per_seed(study, arm) -> list:
    extras = [study.extras(s) for s in study.seeds]
    missing = [s for s, e in zip(study.seeds, extras) if arm not in e.get("table1", {})]
    if missing:
        raise ValueError(f"seeds {missing} have no Table 1 summary of arm {arm!r} in their extras")
    return [{k: tuple(v) for k, v in e["table1"][arm].items()} for e in extras]


def _table1_seed_spread(tables: list, digits: int) -> str:
    """Per structure: one arm's average mean- and max-dose errors (mean ± sd over seeds), the paper's, and the ratio."""
    rows = []
    for s in STRUCTURES:
        row = [s]
        for c in (0, 2):
            ref = PAPER_TABLE1[s][c]
            ours = [t[s][c] for t in tables]
            ratio = "–" if abs(ref) < 0.1 else f"{abs(float(np.mean(ours))) / abs(ref):.{digits}f}"
            row += [_over_seeds(ours, digits, signed=True), f"{ref:+.{digits}f}", ratio]
        rows.append(row)
    return markdown_table(["structure", "mean diff (%): ours", "paper's", "ratio",
                           "max diff (%): ours", "paper's", "ratio"], rows)


def _over_seeds(values, digits: int, signed: bool = False) -> str:
    s = seed_summary(np.asarray(values, dtype=float))
    fmt = f"{{:{'+' if signed else ''}.{digits}f}}"
    text = fmt.format(s["mean"])
    return text if s["n"] < 2 else f"{text} ± {s['sd']:.{digits}f}"


def tables(study, *, digits: int = 2) -> Markdown:
    r"""The chapter's tables from a :class:`rtlearn.study.Study` (recorded, or live: :func:`rtlearn.study.from_runs`).

    1. The paper's Table 1 and ours: true minus predicted mean and maximum dose
       per structure (% of Rx), average ± sd over the test samples, each number
       averaged over the seeds.
    2. The headline numbers next to the paper's: the largest average mean-dose
       and max-dose error and the spread (sd) of the rectum and bladder
       mean-dose errors, mean ± sd over seeds.
    3. The per-patient metrics (:data:`METRICS`): mean ± sd over seeds of the
       mean over test patients.
    4. :data:`CLAIMS` judged by :func:`rtlearn.metrics.stats.judge` (paired over
       test patients, seed-averaged, one Holm correction):
       :func:`rtlearn.metrics.stats.format_comparison`.
    """
    digits = check_int(digits, "digits", 0)
    arms = study.arms
    n = len(study.seeds)
    over = f"each number averaged over {n} seeds" if n > 1 else "one seed"
    per_seed = {arm: _table1_per_seed(study, arm) for arm in arms}
    t1 = {arm: {s: tuple(float(np.mean([t[s][c] for t in per_seed[arm]])) for c in range(4))
                for s in per_seed[arm][0]} for arm in arms}
    paper_label = f"paper (3D, {PAPER_N_FIT}/{PAPER_N_TEST} patients)"
    parts = [f"**Table 1: true − predicted dose (% of Rx), average ± sd over the test samples ({over}); "
             f"the last columns are the paper's.**",
             format_table({**t1, paper_label: PAPER_TABLE1}, digits)]

    if n > 1 and "conditional" in arms:
        parts += [f"**The conditional network's Table 1 averages, mean ± sd over the {n} seeds, next to the "
                  f"paper's; ratio: ours / the paper's in absolute value (– where the paper's is below 0.1 %).**",
                  _table1_seed_spread(per_seed["conditional"], digits)]

    paper_worst = largest_errors(PAPER_TABLE1)
    rows = []
    for kind, label in (("mean", "largest average mean-dose error"), ("max", "largest average max-dose error")):
        row = [label, f"{paper_worst[kind][1]:.{digits}f} ({paper_worst[kind][0]})"]
        for arm in arms:
            worst = [largest_errors(t)[kind] for t in per_seed[arm]]
            names = Counter(w[0] for w in worst)
            where = ", ".join(k if n == 1 else f"{k} {v}/{n}" for k, v in names.most_common())
            row.append(f"{_over_seeds([w[1] for w in worst], digits, signed=True)} ({where})")
        rows.append(row)
    for s in ("Rectum", "Bladder"):
        rows.append([f"sd of the {s.lower()} mean-dose error", f"{PAPER_TABLE1[s][1]:.{digits}f}"] +
                    [_over_seeds([t[s][1] for t in per_seed[arm]], digits) for arm in arms])
    parts += [f"**Headline numbers (% of Rx): the paper's and ours (mean ± sd over seeds).**",
              markdown_table(["quantity", paper_label] + list(arms), rows)]

    rows = [[f"{name}: {METRICS[name]}"] + [_over_seeds(np.nanmean(study.metric(name, arm), axis=1), digits)
                                            for arm in arms] for name in TABLE_METRICS]
    parts += [f"**Per test patient ({len(study.cases)} patients), averaged over its desired DVHs (% of Rx): mean "
              f"over patients{', mean ± sd over seeds' if n > 1 else ''}.**",
              markdown_table(["metric"] + list(arms), rows)]

    present = [c for c in CLAIMS if c.a in arms and c.b in arms]
    if present:
        rows = [{**r, "a": f"{r['metric']}: {r['a']}"} for r in judge(study, present)]
        parts += ["**The claims, paired over test patients (seed-averaged), Holm-adjusted together.**",
                  format_comparison(rows, digits)]
    if "conditional" in arms:
        parts += [f"**Reproduction rule (stated before the study): our largest average error is at most "
                  f"{REPRODUCTION_FACTOR:g} x the paper's; {100 * (1 - REPRODUCTION_ALPHA / 2):g} % bootstrap "
                  f"intervals over test patients (seed-averaged).**", format_reproduction(reproduction(study), digits)]
    return Markdown("\n\n".join(parts))


def replan_summary(fronts) -> dict:
    r"""Deliverability of one model on a list of :func:`replan_front` records (% of Rx unless stated).

    ``gap_rectum``, ``gap_bladder``: mean \|re-planned − predicted\| mean dose;
    ``below_predicted``, ``below_replanned``: fraction of slider points below
    the true front (:func:`front_gap` < 0); ``range_kept``: the re-planned plans' range of rectum mean dose
    along the slider divided by the predicted range (1: the whole predicted
    trade-off is deliverable; patients with a predicted range below 0.5 % of
    Rx are skipped), median over patients; ``rms``: RMS difference over the
    body between prediction and mimicked plan; ``predicted_d95``: the
    predictions' mean PTV :math:`D_{95}` (% of Rx; the plans have 100).
    """
    fronts = list(fronts)
    if not fronts:
        raise ValueError("fronts is empty: give the replan_front records of the test patients")
    k = np.array([f["to_rx"] for f in fronts], float)
    pr = np.stack([np.asarray(f["predicted"], float) for f in fronts])          # (P, X, 2) Gy
    rp = np.stack([np.asarray(f["replanned"], float) for f in fronts])
    gap = np.abs(rp - pr) * k[:, None, None]
    below_p = np.concatenate([front_gap(f["predicted"], f["pareto"]) < 0 for f in fronts])
    below_r = np.concatenate([front_gap(f["replanned"], f["pareto"]) < 0 for f in fronts])
    span_p = np.ptp(pr[..., 0], axis=1) * k
    span_r = np.ptp(rp[..., 0], axis=1) * k
    keep = span_p > 0.5
    return {"gap_rectum": float(gap[..., 0].mean()), "gap_bladder": float(gap[..., 1].mean()),
            "below_predicted": float(below_p.mean()), "below_replanned": float(below_r.mean()),
            "range_kept": float(np.median(span_r[keep] / span_p[keep])) if keep.any() else float("nan"),
            "rms": float(np.mean([np.mean(f["rms_gy"]) for f in fronts]) * k.mean()),
            "predicted_d95": float(np.mean([np.mean(f["predicted_d95"]) for f in fronts]))}


def replan_table(study, digits: int = 2) -> Markdown:
    """:func:`replan_summary` of every arm, mean ± sd over seeds, as a Markdown table."""
    labels = {"gap_rectum": "rectum mean dose, re-planned vs predicted: absolute difference (% Rx)",
              "gap_bladder": "bladder mean dose, re-planned vs predicted: absolute difference (% Rx)",
              "below_predicted": "predicted points below the true front (fraction)",
              "below_replanned": "re-planned points below the true front (fraction)",
              "range_kept": "re-planned / predicted rectum-dose range along the slider (median)",
              "rms": "RMS difference prediction - mimicked plan over the body (% Rx)",
              "predicted_d95": "PTV D95 of the predictions (% Rx; every plan has 100)"}
    per = {arm: [replan_summary(study.extras(s)["replan"][arm]) for s in study.seeds] for arm in study.arms}
    def cell(values):
        return "–" if not np.any(np.isfinite(values)) else _over_seeds(values, digits)

    rows = [[label] + [cell([r[key] for r in per[arm]]) for arm in study.arms] for key, label in labels.items()]
    return Markdown(markdown_table(["deliverability"] + list(study.arms), rows))


def offset_table(study, digits: int = 2) -> Markdown:
    """The PTV mean-dose offset on the training patients, before and after the output normalisation.

    Rows: every arm's true − predicted PTV mean dose on the training pairs
    (``table1_train``) and, for an unnormalised arm, :func:`offset_diagnostics`;
    mean ± sd over seeds and the per-seed values (% of Rx).
    """
    rows = []
    for arm in study.arms:
        vals = [study.extras(s)["table1_train"][arm]["PTV"][0] for s in study.seeds]
        rows.append([f"{arm}: network as evaluated", _over_seeds(vals, digits, signed=True),
                     ", ".join(f"{v:+.{digits}f}" for v in vals)])
        for key, label in (("dropout_mean", "dropout left on, 16 passes averaged"),
                           ("bn_recalibrated", "batch-norm statistics recomputed without dropout")):
            vals = [study.extras(s).get("offset", {}).get(arm, {}).get(key) for s in study.seeds]
            if all(v is not None for v in vals):
                rows.append([f"{arm}: {label}", _over_seeds(vals, digits, signed=True),
                             ", ".join(f"{v:+.{digits}f}" for v in vals)])
    return Markdown(markdown_table(["PTV mean dose on the training patients, true − predicted (% Rx)",
                                    "mean ± sd over seeds", "per seed"], rows))


def _largest_abs_mean(cases) -> float:
    """Largest |average| over the last axis's structures of seed-averaged cases ``(n_cases, n_structures)``."""
    return float(np.abs(cases.mean(0)).max())


def reproduction(study, arm: str = "conditional", *, n_boot: int = 10000, seed: int = 0) -> list:
    r"""The reproduction rule (:data:`REPRODUCTION_FACTOR`) applied to ``arm``: one row per kind (mean, max dose).

    The statistic is Table 1's headline: over the four :data:`STRUCTURES`,
    the largest absolute average of the signed errors ``bias_<kind>_<s>``
    (true − predicted, % of Rx), each test patient averaged over seeds. Its
    interval comes from :func:`rtlearn.metrics.stats.bound_check` (test
    patients resampled) at level :math:`1 - lpha/2`, and the bound is
    :data:`REPRODUCTION_FACTOR` times the paper's value.

    Returns
    -------
    list of dict
        :func:`~rtlearn.metrics.stats.bound_check` rows plus ``kind``,
        ``paper`` (the paper's value and its structure), ``ratio`` (ours /
        paper's) and ``structure`` (ours: where the largest average error is).
    """
    paper = largest_errors(PAPER_TABLE1)
    rows = []
    for kind in ("mean", "max"):
        cases = np.stack([np.asarray(study.metric(f"bias_{kind}_{s.lower()}", arm), dtype=float)
                          for s in STRUCTURES], axis=-1)
        ref = abs(paper[kind][1])
        r = bound_check(cases, REPRODUCTION_FACTOR * ref, _largest_abs_mean, level=1 - REPRODUCTION_ALPHA / 2,
                        n_boot=n_boot, seed=seed)
        with np.errstate(all="ignore"):
            avg = np.nanmean(np.nanmean(cases, axis=0), axis=0)
        rows.append({**r, "kind": kind, "paper": paper[kind], "ratio": r["estimate"] / ref,
                     "structure": STRUCTURES[int(np.nanargmax(np.abs(avg)))]})
    return rows


def format_reproduction(rows, digits: int = 2) -> Markdown:
    """The rows of :func:`reproduction` as a Markdown table."""
    names = {"mean": "largest average mean-dose error", "max": "largest average max-dose error"}
    out = [[names[r["kind"]], f"{abs(r['paper'][1]):.{digits}f} ({r['paper'][0]})", f"{r['bound']:.{digits}f}",
            f"{r['estimate']:.{digits}f} ({r['structure']}) [{r['ci_lo']:.{digits}f}, {r['ci_hi']:.{digits}f}]",
            f"{r['ratio']:.{digits}f}", r["verdict"]] for r in rows]
    return Markdown(markdown_table(["quantity (% of Rx)", "paper's", "bound", "ours [interval]", "ours / paper's",
                                    "verdict"], out))


# ---- figures -------------------------------------------------------------------------------------------------
def _mid(cohort: ParetoCohort) -> tuple:
    """Index of the slice shown: the middle axial slice in 3D, everything in 2D."""
    return (cohort.doses.shape[2] // 2,) if cohort.dims == 3 else ()


def _loss_label(study) -> str:
    text = str(study.config.get("loss", ""))
    return "MAE" if "L1Loss" in text else "MSE" if "MSELoss" in text else "loss"


def plot_pareto_fronts(data: ParetoData, patient: int = 0):
    """Every patient's Pareto front (rectum vs bladder mean dose); training patient ``patient``'s extreme plans."""
    import matplotlib.pyplot as plt

    fig, axs = plt.subplots(1, 3, figsize=(11, 3.6))
    for group, color in (((data.train, data.val), "C0"), ((data.test,), "C3")):
        for cohort in group:
            for i in range(len(cohort)):
                r, b = cohort.oar_mean_gy[i, :, 0], cohort.oar_mean_gy[i, :, 1]
                axs[0].plot(r, b, "-o", ms=2.5, lw=0.8, color=color, alpha=0.6)
    axs[0].plot([], [], "-o", color="C0", label="training and validation patients")
    axs[0].plot([], [], "-o", color="C3", label="test patients")
    n_plans = data.train.n_plans
    axs[0].set(xlabel="rectum mean dose (Gy)", ylabel="bladder mean dose (Gy)",
               title=f"Pareto fronts ({n_plans} plans each)")
    axs[0].legend()
    tr, sl = data.train, _mid(data.train)
    show = {k: v[sl] for k, v in tr.masks(patient).items() if k != "body"}
    for ax, j, name in ((axs[1], 0, "bladder-sparing plan"), (axs[2], n_plans - 1, "rectum-sparing plan")):
        dose_gy = tr.doses[patient, j][sl].numpy() * tr.ptv_mean_gy[patient, j]
        plotting.dose_slice(ax, dose_gy, show, spacing=tr.spacing[-2:], vmax=1.1 * tr.prescription,
                            title=f"patient {patient}, {name}")
    return fig


def plot_projection(cohort: ParetoCohort, patient: int, desired, selected: int):
    """Rectum and bladder DVHs of a patient's Pareto plans, a desired DVH and its projection (plan ``selected``)."""
    import matplotlib.pyplot as plt

    nb = cohort.n_bins
    pts = dvh_dose_points(nb, cohort.max_dose) * 100
    desired = torch.as_tensor(desired)
    fig, axs = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, name in zip(axs, ("Rectum", "Bladder")):
        k = cohort.structures.index(name)
        for j in range(cohort.n_plans):
            ax.plot(pts, 100 * cohort.dvhs[patient, j, k * nb:(k + 1) * nb], color="0.75", lw=1,
                    label="Pareto plans of the patient" if j == 0 else None)
        ax.plot(pts, 100 * desired[k * nb:(k + 1) * nb], "k:", lw=2, label="desired (another patient)")
        ax.plot(pts, 100 * cohort.dvhs[patient, selected, k * nb:(k + 1) * nb], "C3", lw=2,
                label=f"projection: plan {selected}")
        ax.set(xlabel="dose (% of PTV mean)", ylabel="volume (%)", title=name)
    axs[0].legend()
    return fig


def plot_histories(study):
    """Training (dashed) and validation (solid) loss per epoch: one colour per arm, one line per seed; o = best epoch."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for k, arm in enumerate(study.arms):
        color = f"C{k}"
        for records in study.histories(arm):
            epochs = [r["epoch"] for r in records]
            val = [r.get("val_loss", np.nan) for r in records]
            ax.plot(epochs, [r["train_loss"] for r in records], color=color, lw=0.9, ls="--", alpha=0.7)
            ax.plot(epochs, val, color=color, lw=1.2)
            if np.any(np.isfinite(val)):
                best = int(np.nanargmin(val))
                ax.plot(epochs[best], val[best], "o", color=color, ms=4)
        ax.plot([], [], color=color, lw=1.5, label=arm)
    ax.plot([], [], color="0.4", ls="--", lw=0.9, label="training loss")
    ax.plot([], [], color="0.4", lw=1.2, label="validation loss")
    ax.set(yscale="log", xlabel="epoch", ylabel=f"{_loss_label(study)} (normalised dose)",
           title=f"{len(study.seeds)} seed(s) per arm" if len(study.seeds) > 1 else None)
    ax.legend(fontsize=7)
    return fig


def plot_errors(results: dict):
    """Violin plots of true − predicted mean and max dose per structure (% of Rx), one colour per arm.

    ``results`` maps an arm to its :func:`evaluate_pairs` output (every test sample).
    """
    import matplotlib.pyplot as plt

    names = list(STRUCTURES)
    fig, axs = plt.subplots(1, 2, figsize=(11, 3.6))
    width = 0.72 / max(len(results), 1)
    offsets = (np.arange(len(results)) - (len(results) - 1) / 2) * width
    for ax, key, title in ((axs[0], "mean", "(a) mean dose"), (axs[1], "max", "(b) maximum dose")):
        for k, (off, (name, res)) in enumerate(zip(offsets, results.items())):
            color = f"C{k}"
            parts = ax.violinplot([res[key][:, i] for i in range(len(names))], positions=np.arange(len(names)) + off,
                                  widths=0.9 * width, showmeans=True)
            for b in parts["bodies"]:
                b.set_facecolor(color)
                b.set_alpha(0.5)
            for part in ("cmeans", "cmins", "cmaxes", "cbars"):
                parts[part].set_color(color)
            ax.plot([], [], color=color, lw=6, alpha=0.5, label=name)
        ax.axhline(0, color="k", lw=0.7)
        ax.set_xticks(range(len(names)), names)
        ax.set(ylabel="true - predicted (% of Rx)", title=f"{title} difference, test patients")
    axs[0].legend()
    return fig


def plot_case_errors(study):
    """Per test patient (seed-averaged) mean- and max-dose |error| per structure (% of Rx), one colour per arm."""
    import matplotlib.pyplot as plt

    fig, axs = plt.subplots(1, 2, figsize=(11, 3.6))
    arms = study.arms
    width = 0.72 / max(len(arms), 1)
    offsets = (np.arange(len(arms)) - (len(arms) - 1) / 2) * width
    rng = np.random.default_rng(0)
    for ax, kind, title in ((axs[0], "mean", "mean dose"), (axs[1], "max", "maximum dose")):
        for k, (off, arm) in enumerate(zip(offsets, arms)):
            for i, s in enumerate(ERROR_STRUCTURES):
                v = np.nanmean(study.metric(f"{kind}_error_{s.lower()}", arm), axis=0)
                x = i + off + rng.uniform(-0.25, 0.25, v.size) * width
                ax.plot(x, v, "o", ms=3.5, color=f"C{k}", alpha=0.7, label=arm if i == 0 else None)
                ax.plot([i + off - 0.4 * width, i + off + 0.4 * width], [np.median(v)] * 2, color=f"C{k}", lw=2)
        ax.set_xticks(range(len(ERROR_STRUCTURES)), ERROR_STRUCTURES)
        ax.set(ylabel="|true - predicted| (% of Rx)", ylim=(0, None),
               title=f"{title}: one point per test patient, bar = median")
    axs[0].legend()
    return fig


def plot_tradeoffs(model, cohort: ParetoCohort, patient: int = 0, source: int = 1, plans=None):
    """One patient, several trade-offs (the paper's Fig. 5): a row per desired DVH from patient ``source``'s ``plans``.

    Columns: contours, the true (projected) plan, the prediction, their
    difference and the DVHs (true solid, predicted dashed, desired dotted);
    doses in % of the prescription. ``plans`` defaults to the source's most
    bladder-sparing, middle and most rectum-sparing plans.
    """
    import matplotlib.pyplot as plt

    plans = [0, cohort.n_plans // 2, cohort.n_plans - 1] if plans is None else list(plans)
    nb, rx, sl = cohort.n_bins, cohort.prescription, _mid(cohort)
    spacing = cohort.spacing[-2:]
    full = cohort.masks(patient)
    m = {k: v[sl] for k, v in full.items()}
    colors = plotting.structure_colors(list(STRUCTURES))
    x = dvh_dose_points(nb, cohort.max_dose) * 100
    fig, axs = plt.subplots(len(plans), 5, figsize=(11, 2.7 * len(plans)), squeeze=False)
    for r, q in enumerate(plans):
        desired = cohort.dvhs[source, q]
        j, _ = project_to_pareto(desired, cohort.dvhs[patient])
        to_rx = 100 * cohort.ptv_mean_gy[patient, j] / rx
        true = cohort.doses[patient, j].numpy() * to_rx
        pred = predict(model, cohort.anatomy[patient], desired, n_bins=nb).numpy() * to_rx
        ax = axs[r, 0]
        left, right, bottom, top = plotting.image_extent(true[sl].shape, spacing)
        for n, mk in m.items():
            plotting.draw_contour(ax, mk, spacing, color=colors[n], linewidth=1.3, label=n)
        ax.set(xlim=(left, right), ylim=(bottom, top), aspect="equal", xlabel="x (mm)", ylabel="y (mm)",
               title=f"contours; desired: patient {source} plan {q}")
        ax.legend(fontsize=7, loc="lower right")
        plotting.dose_slice(axs[r, 1], true[sl], {}, spacing=spacing, vmax=110, unit="% Rx", title=f"true (plan {j})")
        plotting.dose_slice(axs[r, 2], pred[sl], {}, spacing=spacing, vmax=110, unit="% Rx", title="predicted")
        _difference(axs[r, 3], (true - pred)[sl], spacing, "true - predicted (% Rx)", "difference")
        ax = axs[r, 4]
        v_true = dvh_vector(true / 100, full, nb, cohort.max_dose)
        v_pred = dvh_vector(np.clip(pred, 0, None) / 100, full, nb, cohort.max_dose)
        for k, n in enumerate(STRUCTURES):
            c = colors[n]
            ax.plot(x, 100 * v_true[k * nb:(k + 1) * nb], color=c, lw=1.5, label=n)
            ax.plot(x, 100 * v_pred[k * nb:(k + 1) * nb], color=c, lw=1.5, ls="--")
            ax.plot(x, 100 * desired[k * nb:(k + 1) * nb], color=c, lw=1.2, ls=":")
        ax.set(xlabel="dose (% Rx)", ylabel="volume (%)", title="DVH: true - / predicted -- / desired ..")
        if r == 0:
            ax.legend(fontsize=7)
    return fig


def _difference(ax, diff, spacing, label, title):
    """A signed difference map (blue-red, symmetric limits) with its colour bar."""
    lim = max(float(np.abs(diff).max()), 1e-6)
    im = ax.imshow(diff, cmap="RdBu_r", vmin=-lim, vmax=lim,
                   extent=(0, diff.shape[1] * spacing[1], diff.shape[0] * spacing[0], 0))
    ax.figure.colorbar(im, ax=ax, label=label, fraction=0.046, pad=0.04)
    ax.set(title=title, xlabel="x (mm)", ylabel="y (mm)")
    ax.grid(False)


def plot_anatomy_only_errors(model, cohort: ParetoCohort, patient: int = 0, source: int = 1, plans=None):
    """The anatomy-only network's one dose against the true plans of the trade-offs of :func:`plot_tradeoffs`."""
    import matplotlib.pyplot as plt

    plans = [0, cohort.n_plans // 2, cohort.n_plans - 1] if plans is None else list(plans)
    sl, spacing = _mid(cohort), cohort.spacing[-2:]
    base = predict(model, cohort.anatomy[patient], cohort.dvhs[source, plans[0]], n_bins=cohort.n_bins).numpy()
    fig, axs = plt.subplots(1, len(plans), figsize=(min(11.0, 4.4 * len(plans)), 3.4), squeeze=False)
    for ax, q in zip(axs[0], plans):
        j, _ = project_to_pareto(cohort.dvhs[source, q], cohort.dvhs[patient])
        to_rx = 100 * cohort.ptv_mean_gy[patient, j] / cohort.prescription
        diff = (cohort.doses[patient, j].numpy() - base)[sl] * to_rx
        _difference(ax, diff, spacing, "true - anatomy only (% Rx)", f"anatomy only vs plan {j}")
    return fig


def plot_tradeoff(model, cohort: ParetoCohort, x: float = 0.5, patient: int = 0):
    """The trade-off slider's figure: the dose predicted for :func:`tradeoff_dvh` at ``x`` and its DVHs.

    Returns ``(fig, {"plan": nearest Pareto plan, "distance": its l1 distance})``.
    """
    import matplotlib.pyplot as plt

    nb, sl = cohort.n_bins, _mid(cohort)
    desired = tradeoff_dvh(cohort.dvhs[patient], x)
    j, dist = project_to_pareto(desired, cohort.dvhs[patient])
    to_rx = 100 * cohort.ptv_mean_gy[patient].mean() / cohort.prescription
    pred = predict(model, cohort.anatomy[patient], desired, n_bins=nb).numpy() * to_rx
    full = cohort.masks(patient)
    colors = plotting.structure_colors(list(STRUCTURES))
    fig, axs = plt.subplots(1, 2, figsize=(11, 3.8))
    plotting.dose_slice(axs[0], pred[sl], {k: v[sl] for k, v in full.items() if k != "body"},
                        spacing=cohort.spacing[-2:], vmax=110, unit="% Rx",
                        title=f"predicted dose, trade-off x = {x:.2f}")
    v_pred = dvh_vector(np.clip(pred, 0, None) / 100, full, nb, cohort.max_dose)
    xs = dvh_dose_points(nb, cohort.max_dose) * 100
    for k, n in enumerate(STRUCTURES):
        c = colors[n]
        axs[1].plot(xs, 100 * cohort.dvhs[patient, j, k * nb:(k + 1) * nb], color=c, lw=1.2, label=n)
        axs[1].plot(xs, 100 * v_pred[k * nb:(k + 1) * nb], color=c, lw=1.5, ls="--")
        axs[1].plot(xs, 100 * desired[k * nb:(k + 1) * nb], color=c, lw=1.5, ls=":")
    axs[1].set(xlabel="dose (% Rx)", ylabel="volume (%)", title=f"desired ..  predicted --  nearest Pareto plan {j} -")
    axs[1].legend(fontsize=7)
    return fig, {"plan": int(j), "distance": float(dist)}


def plot_front(front: dict, ax=None):
    """The slider swept (:func:`tradeoff_front`, or a recorded study's ``extras["front"]``) over the true front.

    ``front["predicted"]`` is one list of [rectum, bladder] (Gy) or ``{arm: list}``.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(4.6, 3.6))
    pareto = np.asarray(front["pareto"], dtype=float)
    ax.plot(pareto[:, 0], pareto[:, 1], "-o", color="0.6", label="Pareto plans (truth)")
    predicted = front["predicted"] if isinstance(front["predicted"], dict) else {"predicted": front["predicted"]}
    for k, (name, pr) in enumerate(predicted.items()):
        pr = np.asarray(pr, dtype=float)
        ax.plot(pr[:, 0], pr[:, 1], "-s", color=f"C{k}", ms=4, label=f"{name}, x = 0 ... 1")
    ax.set(xlabel="rectum mean dose (Gy)", ylabel="bladder mean dose (Gy)",
           title=f"slider sweep, test {front.get('case', 'patient')}")
    ax.legend()
    return ax


def plot_replan(fronts, cases=None, n: int = 3):
    """Predicted, re-planned and true fronts (rectum vs bladder mean dose, Gy) of the first ``n`` test patients.

    ``fronts`` is a list of :func:`replan_front` records (one per patient), or
    ``{arm: list}`` to draw several arms (the anatomy-only network gives one point).
    """
    import matplotlib.pyplot as plt

    by_arm = fronts if isinstance(fronts, dict) else {"predicted": fronts}
    n = min(check_int(n, "n", 1), min(len(v) for v in by_arm.values()))
    fig, axs = plt.subplots(1, n, figsize=(min(11.0, 4.4 * n), 3.8), squeeze=False)
    for i, ax in enumerate(axs[0]):
        first = next(iter(by_arm.values()))[i]
        pareto = np.asarray(first["pareto"], float)
        ax.plot(pareto[:, 0], pareto[:, 1], "-o", color="0.6", ms=4, label="Pareto plans (truth)")
        for k, (arm, fr) in enumerate(by_arm.items()):
            pr, rp = np.asarray(fr[i]["predicted"], float), np.asarray(fr[i]["replanned"], float)
            ax.plot(pr[:, 0], pr[:, 1], "-s", color=f"C{k}", ms=4, label=f"{arm}: predicted")
            ax.plot(rp[:, 0], rp[:, 1], "--^", color=f"C{k}", ms=5, mfc="white", label=f"{arm}: re-planned")
            for a, b in zip(pr, rp):
                ax.annotate("", b, a, arrowprops=dict(arrowstyle="->", color=f"C{k}", lw=0.7, alpha=0.6))
        name = cases[i] if cases is not None else f"test patient {i}"
        ax.set(xlabel="rectum mean dose (Gy)", ylabel="bladder mean dose (Gy)", title=name)
    axs[0, 0].legend(fontsize=7)
    return fig


def plot_slider_sweep(model, cohort: ParetoCohort, patient: int = 0, case: str | None = None):
    """The slider swept from 0 to 1: predicted rectum vs bladder mean dose over the front; doses at x = 0, 0.5, 1."""
    import matplotlib.pyplot as plt

    front = tradeoff_front(model, cohort, patient, n=11)
    front["case"] = case or f"patient {patient}"
    sl, full = _mid(cohort), cohort.masks(patient)
    fig, axs = plt.subplots(1, 4, figsize=(11, 2.9))
    plot_front(front, axs[0])
    for ax, x in zip(axs[1:], (0.0, 0.5, 1.0)):
        k = int(round(x * 10))
        plotting.dose_slice(ax, front["doses"][k][sl], {n: v[sl] for n, v in full.items() if n != "body"},
                            spacing=cohort.spacing[-2:], vmax=1.1 * cohort.prescription, title=f"x = {x:.1f}")
    return fig


def figures(study) -> dict:
    """The recorded study's figures: ``{"histories", "case_errors", "replan", "front"}`` (Matplotlib figures).

    ``front`` draws seed ``study.seeds[0]``'s slider sweep of the first test
    patient for every arm (:func:`plot_front`).
    """
    import matplotlib.pyplot as plt

    out = {"histories": plot_histories(study), "case_errors": plot_case_errors(study)}
    replan = study.extras(study.seeds[0]).get("replan")
    if replan:
        out["replan"] = plot_replan({a: replan[a] for a in study.arms if a in replan},
                                    [f"{c}, seed {study.seeds[0]}" for c in study.cases])
    front = study.extras(study.seeds[0]).get("front")
    if front and front.get("x") is not None:
        fig, ax = plt.subplots(figsize=(5.2, 3.8))
        plot_front(front, ax)
        ax.set_title(f"{ax.get_title()} (seed {study.seeds[0]})")
        out["front"] = fig
    return out
