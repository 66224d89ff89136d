r"""The DOSELO experiment (Rüfenacht et al., MICCAI 2023, ``ruefenacht2023doselo``) on phantom brains.

Pipeline of the chapter "Dose-guided segmentation":

1. **Dose predictor** :math:`M_D(S_T, S_{OR}, I_{CT})`: a :class:`~rtlearn.models.CascadeUNet`
   trained with deep supervision on phantom brain cases whose doses are
   re-optimised plans (:func:`rtlearn.phantom.plan_for_target`) on the true GTV and
   on perturbed GTVs (:mod:`rtlearn.phantom.perturb`), so that it responds to imperfect
   masks (:func:`dose_predictor_data`, :func:`train_dose_predictor`).
2. **Segmentation** :math:`M_S(I_{MR}) \to \hat S_T`: a U-Net on the four
   MR-like channels, trained with BCE + SoftDice (the paper's baseline), BCE +
   :math:`\lambda L_{DSL}` through the frozen predictor (DOSELO, soft
   probabilities, autograd on), the reference code's hard/no-grad variant
   (which is BCE alone), and -- beyond the paper -- a straight-through variant
   (binary mask forward, soft gradient back;
   :class:`~rtlearn.losses.dose_guided.StraightThroughDoseGuidedLoss`) and BCE +
   :math:`\lambda` times the squared dose difference through a differentiable
   *beam surrogate* of the dose engine (:class:`~rtlearn.phantom.surrogate.BeamSurrogate`,
   :func:`~rtlearn.losses.dose_guided.surrogate_guided_loss`) (:func:`train_segmenter`).
3. **Evaluation**: every predicted GTV is planned with the phantom clinic's
   optimiser (GTV + 5 mm = PTV, 60 Gy), as is the true GTV; the two *true*
   doses are compared with the RMAE of Eq. (5) (floored denominator,
   :func:`rtlearn.metrics.rmae`), plus Dice, HD and HD95 in mm
   (:func:`rtlearn.metrics.hausdorff`; :func:`evaluate_segmentations`, :func:`summarise`).

Every function is seeded; the same arguments give the same numbers.
"""
from __future__ import annotations

import numbers
import time

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from .._validate import check_int
from ..losses.cascade import CascadeLoss
from ..losses.dose_guided import (BCESoftDiceLoss, DoseGuidedLoss, StraightThroughDoseGuidedLoss,
                                  binary_cross_entropy, freeze, surrogate_guided_loss, true_target_dose)
from ..metrics.dosimetric import RMAE_FLOOR_FRACTION, rmae
from ..metrics.segmentation import dice, hausdorff
from ..metrics.stats import wilcoxon_summary
from ..models.cascade import CascadeUNet
from ..models.scaled import ScaledDose
from ..models.unet import UNet
from ..phantom import make_patient, plan_for_target
from ..phantom.datasets import case_seed
from ..phantom.perturb import KINDS, perturbed_targets, shift_target
from ..phantom.surrogate import BeamSurrogate
from ..train import Trainer, on_keys

__all__ = [
    "OAR_NAMES", "MR_NAMES", "PTV_MARGIN_MM", "RX_GY", "PAPER", "LOSSES",
    "brain_cases", "cv_splits", "plan_dose", "predictor_input", "dose_predictor_data", "ArrayDataset",
    "train_dose_predictor", "predictor_accuracy", "segmentation_data", "train_segmenter", "predict_masks",
    "evaluate_segmentations", "far_false_positives", "summarise", "blob_demo",
]

#: organs at risk given to the dose predictor, one channel each (``S_OR``)
OAR_NAMES = ("Brainstem", "OpticChiasm", "Eye_L", "Eye_R")
#: MR-like channels of the segmentation input (``I_MR``)
MR_NAMES = ("T1", "T1c", "T2", "FLAIR")
#: GTV-to-PTV margin used for every plan (mm)
PTV_MARGIN_MM = 5.0
#: prescription (Gy): 30 x 2 Gy as in the paper
RX_GY = 60.0
#: the paper's results (Sec. 3.3, five-fold CV, 10 test cases, lambda = 1): mean, sd
PAPER = {
    "RMAE": {"bce_dice": (0.449, 0.545), "doselo": (0.258, 0.201)},
    "HD_mm": {"bce_dice": (64.06, 29.84), "doselo": (28.68, 22.25)},
    "Dice": {"bce_dice": (0.713, 0.203), "doselo": (0.697, 0.216)},
}
#: segmentation losses understood by :func:`train_segmenter`
LOSSES = ("bce_dice", "bce", "doselo", "doselo_hard", "doselo_st", "engine")


# ---------------------------------------------------------------------------------------------------------------
# cases and plans
# ---------------------------------------------------------------------------------------------------------------
def brain_cases(n: int, seed: int = 0, shape=(64, 64), spacing=3.6) -> list:
    """``n`` seeded 2D phantom brains (:func:`rtlearn.phantom.make_patient`).

    Case ``i`` has seed ``case_seed(seed, i)``.

    The default 64 x 64 grid at 3.6 mm covers the same 230 mm field of view as
    the phantom's default 128 x 128 at 1.8 mm.
    """
    check_int(n, "n")
    return [make_patient("brain", case_seed(seed, i), dims=2, shape=tuple(shape), spacing=spacing)
            for i in range(n)]


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
    from tqdm.auto import tqdm

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


def _loader(data, keys, batch_size, shuffle):
    ds = ArrayDataset(**{k: data[k] for k in keys if k in data})
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=shuffle)


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


# ---------------------------------------------------------------------------------------------------------------
# the dose predictor
# ---------------------------------------------------------------------------------------------------------------
def train_dose_predictor(data: dict, epochs: int = 30, width=8, depth: int = 3, lr: float = 2e-3,
                         batch_size: int = 16, seed: int = 0, device=None, progress: bool = False):
    r"""Train the cascade :math:`M_D` with deep supervision.

    .. math:: 0.5\,\mathrm{MSE}_M(\hat D^{(1)}, D) + \mathrm{MSE}_M(\hat D^{(2)}, D)

    The cascade predicts dose / 60 Gy and is wrapped in :class:`~rtlearn.models.scaled.ScaledDose`
    (outputs in Gy). Losses in Gy^2 over the body voxels (:class:`rtlearn.losses.cascade.CascadeLoss`);
    Adam, a cosine learning-rate decay. Returns ``(frozen_model, history)``.
    """
    check_int(epochs, "epochs")
    torch.manual_seed(seed)
    model = ScaledDose(CascadeUNet(data["input"].shape[1], 1, dims=2, depth=depth, width=width, norm="batch"), RX_GY)
    loader = _loader(data, ("input", "target", "mask"), batch_size, True)
    sched = lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)  # noqa: E731
    trainer = Trainer(model, on_keys(CascadeLoss(), "target", mask="mask"), lr=lr, scheduler=sched, seed=seed,
                      device=device, progress=progress, restore_best=False)
    history = trainer.fit(loader, epochs)
    trainer.model.zero_grad(set_to_none=True)  # drop the last step's gradients: a frozen M_D holds none
    return freeze(trainer.model.cpu().float()), history


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


# ---------------------------------------------------------------------------------------------------------------
# segmentation
# ---------------------------------------------------------------------------------------------------------------
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


def train_segmenter(data: dict, loss: str = "bce_dice", lam: float = 1.0, predictor: nn.Module | None = None,
                    surrogate: BeamSurrogate | None = None, epochs: int = 40, width: int = 16, depth: int = 3,
                    lr: float = 2e-3, batch_size: int = 8, seed: int = 0, device=None, progress: bool = False,
                    warmup_epochs: int = 0):
    r"""Train :math:`M_S(I_{MR}) \to \hat S_T` (a U-Net, logits) with one of :data:`LOSSES`.

    * ``"bce_dice"`` -- BCE + SoftDice, the paper's baseline;
    * ``"bce"`` -- BCE alone;
    * ``"doselo"`` -- BCE + :math:`\lambda L_{DSL}` through the frozen ``predictor``,
      soft probabilities with autograd (the paper's Eq. 4 as intended);
    * ``"doselo_hard"`` -- the reference code's variant (thresholded mask under
      ``no_grad``): its dose term has no gradient, so it trains exactly as ``"bce"``;
    * ``"doselo_st"`` -- (not in the paper) as ``"doselo"`` but with a
      straight-through mask: the predictor sees the *thresholded* mask (binary,
      like its training data) in the forward pass while the gradient flows to
      the probabilities as if the mask were soft
      (:class:`~rtlearn.losses.dose_guided.StraightThroughDoseGuidedLoss`);
    * ``"engine"`` -- BCE + :math:`\lambda` times the squared dose difference
      through the :class:`~rtlearn.phantom.surrogate.BeamSurrogate`
      (:func:`~rtlearn.losses.dose_guided.surrogate_guided_loss`; beyond the paper).

    ``warmup_epochs`` (not in the paper) trains the first epochs with
    :math:`\lambda = 0` (BCE alone) before the dose term is switched on.

    The same ``seed`` gives the same initial weights and batch order for every
    loss, so differences come from the loss alone. Returns ``(model, history)``
    (the final weights; ``model`` on the CPU, eval mode).
    """
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if isinstance(lam, bool) or not isinstance(lam, numbers.Real) or not np.isfinite(lam) or lam < 0:
        raise ValueError(f"lam (lambda) must be a finite number >= 0, got {lam!r}")
    check_int(epochs, "epochs")
    frozen = []
    if loss == "bce_dice":
        loss_fn = on_keys(BCESoftDiceLoss(), "target")
    elif loss == "bce":
        loss_fn = lambda pred, b: binary_cross_entropy(pred, b["target"])  # noqa: E731
    elif loss == "doselo_st":
        if predictor is None:
            raise ValueError(f"loss {loss!r} needs the trained dose predictor")
        loss_fn = StraightThroughDoseGuidedLoss(predictor, lam)
        frozen = [predictor]
    elif loss in ("doselo", "doselo_hard"):
        if predictor is None:
            raise ValueError(f"loss {loss!r} needs the trained dose predictor")
        loss_fn = DoseGuidedLoss(predictor, lam=lam, hard=(loss == "doselo_hard"))
        frozen = [predictor]
    else:
        if surrogate is None:
            raise ValueError("loss 'engine' needs a BeamSurrogate built on the training patients")
        loss_fn = lambda pred, b: surrogate_guided_loss(pred, b, surrogate, lam)  # noqa: E731
    keys = ("input", "target", "oars", "ct", "dose_mask", "case")
    keys += ("true_dose",) if loss.startswith("doselo") else ()
    if loss.startswith("doselo") and "true_dose" not in data:
        raise ValueError("data has no 'true_dose'; build it with segmentation_data(patients, predictor=...)")
    check_int(warmup_epochs, "warmup_epochs", 0)
    torch.manual_seed(seed)
    model = UNet(data["input"].shape[1], 1, dims=2, depth=depth, width=width, norm="batch")
    loader = _loader(data, keys, batch_size, True)
    if warmup_epochs and loss in ("doselo", "doselo_st", "engine"):
        loss_fn = _WarmUp(loss_fn, warmup_epochs * len(loader), lam)
    trainer = Trainer(model, loss_fn, lr=lr, scheduler=None, seed=seed, device=device, frozen=frozen,
                      progress=progress, restore_best=False)
    if surrogate is not None and loss == "engine":
        surrogate.to(trainer.device)
    history = trainer.fit(loader, epochs)
    if surrogate is not None:
        surrogate.cpu()
    for net in frozen:
        net.cpu()
    return trainer.model.cpu().eval(), history


class _WarmUp:
    """Call ``inner`` with lambda = 0 for the first ``n_steps`` calls in training mode, then with ``lam``."""

    def __init__(self, inner, n_steps, lam):
        self.inner, self.n_steps, self.lam, self.calls = inner, int(n_steps), float(lam), 0

    def __call__(self, pred, batch):
        if torch.is_grad_enabled():
            self.calls += 1
        on = self.calls > self.n_steps
        if isinstance(self.inner, (DoseGuidedLoss, StraightThroughDoseGuidedLoss)):
            self.inner.lam = self.lam if on else 0.0
            return self.inner(pred, batch)
        return self.inner(pred, batch) if on else binary_cross_entropy(pred, batch["target"])


@torch.no_grad()
def predict_masks(model: nn.Module, data: dict, threshold: float = 0.5) -> np.ndarray:
    """Binary GTV predictions ``N x H x W`` (sigmoid of the logits >= ``threshold``)."""
    model.eval()
    dev = next(model.parameters()).device
    prob = torch.sigmoid(model(torch.as_tensor(data["input"]).to(dev))).cpu().numpy()[:, 0]
    return prob >= threshold


# ---------------------------------------------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------------------------------------------
def far_false_positives(pred, gt, spacing, distance_mm: float = 10.0) -> int:
    """Number of predicted voxels more than ``distance_mm`` from the true GTV (distant outliers)."""
    d = ndimage.distance_transform_edt(~np.asarray(gt, bool), sampling=spacing)
    return int(np.count_nonzero(np.asarray(pred, bool) & (d > distance_mm)))


def evaluate_segmentations(patients, masks, ref_doses=None, floor_fraction: float = RMAE_FLOOR_FRACTION,
                           max_iter: int = 100, keep_doses: bool = False) -> list:
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
        ``empty``; with ``keep_doses`` also ``dose`` and ``ref_dose``.
    """
    masks = np.asarray(masks, bool)
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
               "far_fp": far_false_positives(m, gt, p.spacing), "empty": not bool(m.any())}
        if keep_doses:
            row["dose"], row["ref_dose"] = dose, ref
        out.append(row)
    return out


def summarise(results: dict, baseline: str = "bce_dice", metrics=("rmae", "hd_mm", "hd95_mm", "dice")) -> list:
    """One row per (model, metric): mean, sd, median and the paired Wilcoxon p-value against ``baseline``.

    ``results`` maps a model name to the list returned by :func:`evaluate_segmentations`.
    NaN values (empty predictions) are dropped pairwise and counted.
    """
    if baseline not in results:
        raise ValueError(f"baseline {baseline!r} not among the models {sorted(results)}")
    rows = []
    for name, res in results.items():
        for met in metrics:
            v = np.array([r[met] for r in res], float)
            ok = v[np.isfinite(v)]
            row = {"model": name, "metric": met, "mean": float(ok.mean()) if ok.size else float("nan"),
                   "sd": float(ok.std(ddof=1)) if ok.size > 1 else float("nan"),
                   "median": float(np.median(ok)) if ok.size else float("nan"), "n_nan": int(v.size - ok.size),
                   "p": float("nan")}
            if name != baseline:
                b = np.array([r[met] for r in results[baseline]], float)
                try:
                    row["p"] = wilcoxon_summary(v, b)["p"]
                except ValueError:
                    pass
            rows.append(row)
    return rows


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
