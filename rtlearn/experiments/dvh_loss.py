r"""MSE vs MAE vs MAE + DVH loss for dose prediction (DeepDoseNet, Soomro et al.).

One DeepDoseNet (:class:`rtlearn.models.DeepDoseNet`, ReLU output, scaled by
70 Gy) is trained per loss, with the same data split, weights seed and
shuffling:

* ``"MSE"``: :func:`rtlearn.losses.masked_mse` over the possible-dose mask;
* ``"MAE"``: :func:`rtlearn.losses.masked_mae` over the possible-dose mask;
* ``"MAE+DVH"``: :class:`rtlearn.losses.dvh.MAEPlusDVHLoss`,
  :math:`\mathrm{MAE} + w\,L_{DVH}` with the relaxed DVH of Nguyen et al. 2020.

Each model is then scored with the OpenKBP dose and DVH scores
(:mod:`rtlearn.metrics.openkbp`) on the validation and test patients, as in
Table 1 of Soomro et al. Two data sources share this code path:

* ``"phantom"`` (quick profile): 2D head-and-neck phantom slices
  (:class:`rtlearn.phantom.PhantomDoseDataset`, OpenKBP's ROI names), CPU;
* ``"openkbp"`` (full profile): the OpenKBP challenge data
  (:class:`rtlearn.data.openkbp.OpenKBPDataset`), official split, 3D, GPU.

Typical use::

    from rtlearn.experiments import dvh_loss as ex
    cfg = ex.default_config()
    res = ex.run_experiment(cfg)
    ex.table1_rows(res)

Choices the paper leaves open (ours, stated): the DVH-loss weight ``w``
(default 80, i.e. the DVH term expressed as the area between the relaxed DVH
curves over 0-80 Gy, in Gy, so that it is on the scale of the MAE); 64
thresholds over 0-80 Gy with steepness 1; "decay = 0.0001" read as Adam's
weight decay; model selection by the lowest validation loss of each model.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from .. import dvh as exact_dvh
from .. import plotting
from ..config import pick
from ..data.openkbp import dataset as openkbp
from ..data.openkbp.eval import predict_patient
from ..data.openkbp.format import spacing_zyx, to_zyx
from ..losses.dose import masked_mae, masked_mse
from ..losses.dvh import MAEPlusDVHLoss, dvh_loss, soft_dvh
from ..metrics import wilcoxon_summary
from ..metrics.openkbp import OAR_METRICS, TARGET_METRICS, dose_error, dvh_metrics_openkbp
from ..models.deepdosenet import DeepDoseNet
from ..models.scaled import ScaledDose
from ..phantom import PhantomDoseDataset, make_patient, optimise_plan
from ..phantom.anatomy import ROI_NAMES as PHANTOM_ROI_NAMES
from ..rois import OARS, ROI_NAMES, TARGETS
from ..train import Trainer

__all__ = [
    "LOSSES", "PAPER_TABLE1", "LEADERBOARD", "DEEPDOSENET_BLINDED", "C3D_SINGLE_MODEL", "DVHLossConfig",
    "default_config", "ExperimentData", "load_data", "make_model", "make_loss", "train_model", "evaluate_model",
    "DVHLossResults", "run_experiment", "table1_rows", "score_tests", "metric_names", "structure_table",
    "leaderboard_rows", "ordering", "fit_profile", "example_case", "relaxed_vs_exact", "dvh_loss_gradient",
    "plot_learning_curves", "plot_structure_errors", "plot_sample",
]

LOSSES = ("MSE", "MAE", "MAE+DVH")

# ---- published numbers, quoted for comparison (never computed here) ------------------------------------------
#: Soomro et al. (DeepDoseNet), Table 1: (loss, phase) -> (DVH score Gy, dose score Gy, N patients).
PAPER_TABLE1 = {
    ("MSE", "validation"): (3.2, 3.7, 40), ("MSE", "test"): (3.0, 3.6, 100),
    ("MAE", "validation"): (2.4, 3.6, 40), ("MAE", "test"): (2.3, 3.5, 100),
    ("MAE+DVH", "validation"): (1.9, 2.3, 40), ("MAE+DVH", "test"): (1.6, 2.0, 100),
}
#: Final blinded OpenKBP test leaderboard, top five (Babier et al. 2021): (rank, team, dose score, DVH score).
LEADERBOARD = (
    (1, "LSL AnHui University (cascade 3D U-Net, C3D)", 2.4294, 1.4776),
    (2, "SuperPod", 2.5635, 1.7045),
    (3, "team_overfitting", 2.6146, 1.5818),
    (4, "Prediction Team Vienna", 2.6497, 1.5393),
    (5, "DanNguyen", 2.6795, 1.5728),
)
#: The blinded test-phase entry that is probably DeepDoseNet's group: (dose score, DVH score).
DEEPDOSENET_BLINDED = (3.4980, 2.4008)
#: C3D's authors, single model with test-time augmentation: (dose score, DVH score).
C3D_SINGLE_MODEL = (2.46, 1.58)


# ---- configuration ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DVHLossConfig:
    """Everything that defines one run of the experiment (see :func:`default_config`).

    ``source="phantom"`` uses ``n_train + n_val + n_test`` phantom patients of
    dataset seed ``seed`` split in this order; ``source="openkbp"`` uses the
    official split (``n_*`` = number of first patients of each split, ``None`` = all).
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
    losses: tuple = LOSSES
    epochs: int = 20
    depth: int = 3
    width: int = 12
    batch_size: int = 4
    lr: float = 1e-3
    weight_decay: float = 1e-4
    plateau_patience: int = 4
    dvh_weight: float = 80.0
    dvh_bins: int = 64
    steepness: float = 1.0
    dose_range: tuple = (0.0, 80.0)
    seed: int = 0
    train_seed: int = 0
    n_jobs: int = 1
    num_workers: int = 0
    root: str | None = None
    device: str | None = None

    def __post_init__(self):
        if self.source not in ("phantom", "openkbp"):
            raise ValueError(f"source must be 'phantom' or 'openkbp', got {self.source!r}")
        if self.dims not in (2, 3):
            raise ValueError(f"dims must be 2 or 3, got {self.dims!r}")
        for name in ("epochs", "depth", "width", "batch_size", "dvh_bins"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        for name in ("n_train", "n_val", "n_test"):
            v = getattr(self, name)
            if v is None and self.source == "openkbp":
                continue
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be a positive int{' or None' if self.source == 'openkbp' else ''}, "
                                 f"got {v!r}")
        if self.n_test is not None and self.n_test < 2:
            raise ValueError(f"n_test must be >= 2 for paired Wilcoxon tests, got {self.n_test}")
        bad = [x for x in self.losses if x not in LOSSES]
        if bad or not self.losses:
            raise ValueError(f"losses must be a non-empty subset of {LOSSES}, got {self.losses!r}")
        if not (self.lr > 0) or not (self.dvh_weight >= 0) or not (self.steepness > 0):
            raise ValueError("lr and steepness must be > 0 and dvh_weight >= 0")


def default_config(**overrides) -> DVHLossConfig:
    """The configuration of the active profile (:func:`rtlearn.config.pick`).

    * quick: 2D head-and-neck phantom slices, 64 x 64 pixels of 4 mm (about
      OpenKBP's in-plane voxel size), 24 train / 6 validation / 10 test patients,
      a DeepDoseNet of width 12, 20 epochs at learning rate 2e-3 (so that 20 epochs
      suffice): the three models train in about two minutes on two idle CPU cores.
    * full: OpenKBP 3D, the official 200 / 40 / 100 split (all patients with a
      dose and, since CT is an input, a CT), the paper's 200 epochs, batch 2 and
      learning rate 1e-3, DeepDoseNet of width 32; needs a GPU.

    Keyword arguments override single fields.
    """
    quick = DVHLossConfig(lr=2e-3)
    full = DVHLossConfig(source="openkbp", dims=3, n_train=None, n_val=None, n_test=None, shape=None, spacing=None,
                         inputs=("rois", "ct", "possible_dose_mask"), epochs=200, width=32, batch_size=2,
                         plateau_patience=10, num_workers=6)
    cfg = pick(quick=quick, full=full)
    return replace(cfg, **overrides) if overrides else cfg


# ---- data ---------------------------------------------------------------------------------------------------------
class _WithStructures(Dataset):
    """Adds ``"structures"`` (bool ``S x spatial``, :data:`ROI_NAMES` order) to every item of ``base``."""

    def __init__(self, base, source: str, channels=None):
        self.base, self.source = base, source
        self.channels = channels

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        item = dict(self.base[i])
        if self.source == "openkbp":
            item["structures"] = item["input"][self.channels] >= 0.5
            item.pop("patient", None)
            item.pop("slice", None)
        else:
            item["structures"] = item["rois"] >= 0.5
        return item


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


def load_data(config: DVHLossConfig, progress: bool = True) -> ExperimentData:
    """Build the datasets of the configured source (phantom cases are cached on disk)."""
    if config.source == "phantom":
        n = config.n_train + config.n_val + config.n_test
        ds = PhantomDoseDataset("head_neck", n=n, seed=config.seed, dims=config.dims, shape=config.shape,
                                spacing=config.spacing, inputs=config.inputs, root=config.root,
                                progress=progress, n_jobs=config.n_jobs)
        idx = np.arange(n)
        parts = np.split(idx, [config.n_train, config.n_train + config.n_val])
        wrap = lambda ii: _WithStructures(Subset(ds, ii.tolist()), "phantom")  # noqa: E731
        return ExperimentData("phantom", wrap(parts[0]), wrap(parts[1]), wrap(parts[2]), ds.in_channels,
                              {"dataset": ds, "train": parts[0], "validation": parts[1], "test": parts[2]})
    kw = dict(root=config.root, dims=config.dims, inputs=tuple(config.inputs), downsample=config.downsample,
              progress=progress)
    sets = {s: openkbp.OpenKBPDataset(s, patients=n, slice_step=config.slice_step if s == "train" else 1, **kw)
            for s, n in (("train", config.n_train), ("validation", config.n_val), ("test", config.n_test))}
    if "rois" not in config.inputs:
        raise ValueError("the OpenKBP source needs 'rois' among the inputs (the DVH loss reads the masks there)")
    chans = [sets["train"].channel_names.index(n) for n in ROI_NAMES]
    wrapped = {s: _WithStructures(d, "openkbp", chans) for s, d in sets.items()}
    return ExperimentData("openkbp", wrapped["train"], wrapped["validation"], wrapped["test"],
                          sets["train"].n_channels, sets)


# ---- model and losses ---------------------------------------------------------------------------------------------
def make_model(config: DVHLossConfig, in_channels: int):
    """DeepDoseNet (ReLU output) whose output is multiplied by 70 Gy, so the loss is in Gy."""
    return ScaledDose(DeepDoseNet(in_channels, 1, dims=config.dims, depth=config.depth, width=config.width,
                                  norm="batch", final_activation="relu"), scale=70.0)


def make_loss(name: str, config: DVHLossConfig | None = None):
    """``loss_fn(pred, batch)`` for ``name`` in :data:`LOSSES` (doses in Gy, mask ``batch["mask"] > 0.5``)."""
    config = config or DVHLossConfig()
    if name == "MSE":
        return lambda pred, b: masked_mse(pred, b["target"], b["mask"] > 0.5)
    if name == "MAE":
        return lambda pred, b: masked_mae(pred, b["target"], b["mask"] > 0.5)
    if name == "MAE+DVH":
        hybrid = MAEPlusDVHLoss(weight=config.dvh_weight, bins=config.dvh_bins, steepness=config.steepness,
                                dose_range=config.dose_range)
        return lambda pred, b: hybrid(pred, b["target"], b["mask"] > 0.5, b["structures"])
    raise ValueError(f"unknown loss {name!r}; choose one of {LOSSES}")


def _val_mae_gy(pred, batch):
    return float(masked_mae(pred, batch["target"], batch["mask"] > 0.5))


def train_model(name: str, data: ExperimentData, config: DVHLossConfig, progress: bool = True):
    """Train one model with loss ``name``; returns ``(model, history, seconds)``.

    The weights and the shuffling are seeded with ``config.train_seed`` for every loss.
    """
    torch.manual_seed(config.train_seed)
    model = make_model(config, data.in_channels)
    gen = torch.Generator().manual_seed(config.train_seed)
    n = len(data.train)
    loader = DataLoader(data.train, batch_size=config.batch_size, shuffle=True, generator=gen,
                        drop_last=n >= 2 * config.batch_size, num_workers=config.num_workers,
                        persistent_workers=config.num_workers > 0)
    val_loader = DataLoader(data.validation, batch_size=config.batch_size, num_workers=config.num_workers)
    trainer = Trainer(model, make_loss(name, config), lr=config.lr, weight_decay=config.weight_decay,
                      plateau_patience=config.plateau_patience, metrics={"val_mae_gy": _val_mae_gy},
                      seed=config.train_seed, progress=progress, device=config.device)
    t0 = time.perf_counter()
    history = trainer.fit(loader, config.epochs, val_loader)
    return trainer.model, history, time.perf_counter() - t0


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


def metric_names() -> list:
    """``(roi, metric)`` pairs of the OpenKBP DVH score: OARs D_0.1_cc and mean, PTVs D_99, D_95, D_1."""
    return [(r, m) for r in OARS for m in OAR_METRICS] + [(r, m) for r in TARGETS for m in TARGET_METRICS]


def evaluate_model(model, data: ExperimentData, split: str, keep: int = 0, progress: bool = False) -> dict:
    """OpenKBP scores of ``model`` on a split.

    Predictions are clipped at 0 and multiplied by the possible-dose mask (as
    the challenge's baseline did) before scoring.

    Returns
    -------
    dict
        ``dose_score``, ``dvh_score`` (Gy), ``n``, ``patients``, ``dose_error`` and
        ``dvh_error`` (per patient, arrays), ``metric_errors`` ``{(roi, metric):
        array over patients, NaN where the ROI is absent}`` and ``predictions``
        (the first ``keep`` patients' predicted doses).
    """
    from tqdm.auto import tqdm

    names = metric_names()
    patients, dose_err, dvh_err, cells, kept = [], [], [], [], []
    per_metric = {k: [] for k in names}
    if data.source == "phantom":
        cases = _phantom_cases(data, split)
        preds = _predict_phantom(model, data, split)
        items = [(c, np.clip(p, 0, None) * c["possible_dose_mask"]) for c, p in zip(cases, preds)]
    else:
        ds = data.raw[split]
        items = ((dict(ds.patient_arrays(pid), patient=pid), predict_patient(model, ds, pid)) for pid in ds.patients)
    for case, pred in tqdm(items, desc=f"score {split}", disable=not progress):
        e = _metric_errors(pred, case)
        patients.append(case["patient"])
        dose_err.append(dose_error(pred, case["dose"], case["possible_dose_mask"]))
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
            "metric_errors": {k: np.asarray(v, float) for k, v in per_metric.items()}, "predictions": kept}


# ---- the whole experiment -----------------------------------------------------------------------------------------
@dataclass
class DVHLossResults:
    """Scores, per-patient errors, training histories and one sample case per loss."""

    config: DVHLossConfig
    labels: list
    scores: dict       # {label: {"validation": evaluate_model(...), "test": ...}}
    histories: dict    # {label: History}
    seconds: dict      # {label: training seconds}
    n_params: int

    def best(self, split: str = "validation", score: str = "dose_score") -> str:
        """Label with the lowest ``score`` on ``split`` (use validation to choose without the test set)."""
        return min(self.labels, key=lambda lab: self.scores[lab][split][score])


def run_experiment(config: DVHLossConfig | None = None, progress: bool = True,
                   data: ExperimentData | None = None, keep: int = 1) -> DVHLossResults:
    """Train one model per loss in ``config.losses`` and score each on validation and test."""
    config = default_config() if config is None else config
    data = load_data(config, progress) if data is None else data
    scores, hists, secs = {}, {}, {}
    n_params = 0
    for name in config.losses:
        model, hist, sec = train_model(name, data, config, progress)
        n_params = sum(p.numel() for p in model.parameters())
        scores[name] = {"validation": evaluate_model(model, data, "validation", progress=progress),
                        "test": evaluate_model(model, data, "test", keep=keep, progress=progress)}
        hists[name], secs[name] = hist, sec
    return DVHLossResults(config, list(config.losses), scores, hists, secs, n_params)


# ---- tables ---------------------------------------------------------------------------------------------------------
def table1_rows(results: DVHLossResults) -> list:
    """Rows ``(loss, phase, our DVH score, our dose score, our N, paper DVH, paper dose, paper N)`` (Gy)."""
    rows = []
    for lab in results.labels:
        for phase in ("validation", "test"):
            s = results.scores[lab][phase]
            p = PAPER_TABLE1.get((lab, phase), (np.nan, np.nan, np.nan))
            rows.append((lab, phase, s["dvh_score"], s["dose_score"], s["n"], *p))
    return rows


def _pairs(labels):
    order = [x for x in LOSSES if x in labels]
    return [(a, b) for i, a in enumerate(order) for b in order[i + 1:]]


def score_tests(results: DVHLossResults, split: str = "test") -> list:
    """Paired Wilcoxon tests of the per-patient dose and DVH errors between every pair of losses (their Fig. 4).

    Rows ``(score, loss A, loss B, mean A, mean B, p)``.
    """
    rows = []
    for key, label in (("dose_error", "dose"), ("dvh_error", "DVH")):
        for a, b in _pairs(results.labels):
            w = wilcoxon_summary(results.scores[a][split][key], results.scores[b][split][key], names=("a", "b"))
            rows.append((label, a, b, w["a_mean"], w["b_mean"], w["p"]))
    return rows


def structure_table(results: DVHLossResults, split: str = "test") -> list:
    """Per (ROI, metric): mean |error| (Gy) per loss and paired Wilcoxon p-values between losses (Figs. 5-6).

    Rows ``(roi, metric, n, {loss: mean}, {(a, b): p})``; ROI metrics absent from
    every patient are left out, and a p-value is NaN with fewer than 2 patients.
    """
    rows = []
    for roi, metric in metric_names():
        vals = {lab: results.scores[lab][split]["metric_errors"][(roi, metric)] for lab in results.labels}
        n = int(np.isfinite(next(iter(vals.values()))).sum())
        if n == 0:
            continue
        means = {lab: float(np.nanmean(v)) for lab, v in vals.items()}
        ps = {}
        for a, b in _pairs(results.labels):
            try:
                ps[(a, b)] = wilcoxon_summary(vals[a], vals[b])["p"]
            except ValueError:
                ps[(a, b)] = float("nan")
        rows.append((roi, metric, n, means, ps))
    return rows


def leaderboard_rows(results: DVHLossResults, split: str = "test") -> list:
    """Published leaderboard rows next to our models' scores: ``(name, dose score, DVH score, what)``."""
    rows = [(f"{rank}. {team}", d, v, "published, blinded test") for rank, team, d, v in LEADERBOARD]
    rows.append(("C3D single model + TTA", *C3D_SINGLE_MODEL, "published by its authors"))
    rows.append(("DeepDoseNet (probable blinded entry)", *DEEPDOSENET_BLINDED, "published, blinded test"))
    for lab in LOSSES:
        v, d, _ = PAPER_TABLE1[(lab, "test")]
        rows.append((f"DeepDoseNet {lab} (paper, Table 1)", d, v, "paper, test doses not blinded"))
    src = "ours, phantom test (not comparable)" if results.config.source == "phantom" else "ours, OpenKBP test"
    for lab in results.labels:
        s = results.scores[lab][split]
        rows.append((f"ours: DeepDoseNet {lab}", s["dose_score"], s["dvh_score"], src))
    return rows


def ordering(results: DVHLossResults, split: str = "test") -> dict:
    """Does ``MAE+DVH < MAE < MSE`` hold for each score on ``split``? ``{score: (holds, {loss: value})}``."""
    out = {}
    for score in ("dose_score", "dvh_score"):
        v = {lab: results.scores[lab][split][score] for lab in results.labels}
        holds = all(x in v for x in LOSSES) and v["MAE+DVH"] < v["MAE"] < v["MSE"]
        out[score] = (bool(holds), v)
    return out


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
    from scipy.optimize import linprog

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
            "rois": {n: m for n, m in p.masks.items() if m.any()}, "spacing": tuple(p.spacing), "axial": None}


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
    """``(loss, d loss / d prediction)`` of :func:`rtlearn.losses.dvh.dvh_loss` for one case (gradient per voxel, 1/Gy)."""
    names = list(rois)
    pred = torch.tensor(np.asarray(prediction, float)[None], requires_grad=True)
    ref = torch.tensor(np.asarray(reference, float)[None])
    st = torch.tensor(np.stack([np.asarray(rois[n], bool) for n in names])[None])
    loss = dvh_loss(pred, ref, st, **dvh_kwargs)
    loss.backward()
    return float(loss.detach()), pred.grad[0].numpy()


# ---- figures --------------------------------------------------------------------------------------------------------
def plot_learning_curves(results: DVHLossResults, axes=None):
    """Training and validation loss per model (their Fig. 3) and the validation MAE (Gy), a common yardstick."""
    import matplotlib.pyplot as plt

    if axes is None:
        _, axes = plt.subplots(1, 3, figsize=(13, 3.5))
    for lab in results.labels:
        h = results.histories[lab]
        line, = axes[0].plot(h["epoch"], h["train_loss"], label=lab)
        axes[1].plot(h["epoch"], h["val_loss"], color=line.get_color(), label=lab)
        axes[2].plot(h["epoch"], h["val_mae_gy"], color=line.get_color(), label=lab)
    for ax, t, u in zip(axes, ("training loss", "validation loss", "validation MAE in the mask"),
                        ("loss (Gy² for MSE, Gy otherwise)", "loss (Gy² for MSE, Gy otherwise)", "MAE (Gy)")):
        ax.set_xlabel("epoch")
        ax.set_title(t)
        ax.set_ylabel(u)
        ax.set_yscale("log")
    axes[2].legend(fontsize=8)
    return axes


def plot_structure_errors(results: DVHLossResults, split: str = "test", axes=None):
    """Box plots of |DVH-metric error| per ROI: OAR mean and D_0.1cc, PTV D99/D95/D1 (their Figs. 5-6)."""
    import matplotlib.pyplot as plt

    groups = [("OAR mean", [(r, "mean") for r in OARS]), ("OAR D$_{0.1cc}$", [(r, "D_0.1_cc") for r in OARS]),
              ("PTV D$_{99}$ / D$_{95}$ / D$_1$", [(r, m) for r in TARGETS for m in TARGET_METRICS])]
    if axes is None:
        _, axes = plt.subplots(1, 3, figsize=(15, 3.8), gridspec_kw={"width_ratios": [7, 7, 9]})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    k = len(results.labels)
    w = 0.8 / k
    for ax, (title, keys) in zip(axes, groups):
        keys = [key for key in keys
                if np.isfinite(results.scores[results.labels[0]][split]["metric_errors"][key]).any()]
        for j, lab in enumerate(results.labels):
            vals = [results.scores[lab][split]["metric_errors"][key] for key in keys]
            vals = [v[np.isfinite(v)] for v in vals]
            pos = np.arange(len(keys)) - 0.4 + w * (j + 0.5)
            bp = ax.boxplot(vals, positions=pos, widths=w * 0.9, patch_artist=True,
                            medianprops=dict(color="k"), flierprops=dict(markersize=2))
            for b in bp["boxes"]:
                b.set_facecolor(colors[j % len(colors)])
                b.set_alpha(0.75)
            ax.plot([], [], "s", color=colors[j % len(colors)], label=lab)
        ax.set_xticks(np.arange(len(keys)))
        ax.set_xticklabels([r if "PTV" not in title else f"{r} {m.replace('_', '')}" for r, m in keys],
                           rotation=45, ha="right", fontsize=7)
        ax.set_ylabel("|error| (Gy)")
        ax.set_title(title)
    axes[0].legend(fontsize=8)
    return axes


def plot_sample(results: DVHLossResults, label: str | None = None, slice_index=None):
    """Reference vs predicted dose, their difference and its histogram, and the DVHs (their Fig. 7)."""
    import matplotlib.pyplot as plt

    label = label or results.best("validation")
    s = results.scores[label]["test"]["predictions"]
    if not s:
        raise ValueError("no kept prediction; run the experiment with keep >= 1")
    s = s[0]
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
    fig, axes = plt.subplots(1, 5, figsize=(22, 3.9))
    plotting.dose_slice(axes[0], sl(ref), masks, spacing=sp, vmax=vmax, title="reference", legend=False)
    plotting.dose_slice(axes[1], sl(pred), masks, spacing=sp, vmax=vmax, title=f"predicted ({label})", legend=False)
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
    plotting.plot_dvh(axes[4], ref, rois, dose_pred=pred, labels=("reference", label))
    axes[4].legend(fontsize=6, ncol=2)
    fig.suptitle(f"{s['patient']}: dose error {dose_error(pred, ref, pdm):.2f} Gy")
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    return fig
