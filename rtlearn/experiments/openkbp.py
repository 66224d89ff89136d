"""The OpenKBP chapter's experiment: a plain U-Net baseline (structures + CT + possible-dose mask -> dose).

The chapter shape of every experiment module: :class:`Config` holds every size,
:func:`default_config` is the one place a profile is read, :func:`load_data`
builds the datasets and :func:`run` trains and scores.

* ``quick`` -- 2D axial slices of a few patients, a small U-Net, a few epochs on CPU (a demonstration);
* ``study`` -- 2D slices of more patients, longer training with early stopping, on CPU;
* ``full``  -- 3D volumes of every training patient, a wider and deeper U-Net, on a GPU.

The loss is the mean absolute error over the possible-dose mask
(:class:`rtlearn.losses.MaskedMAELoss`), the challenge's dose-score error restricted to
the mask; the model is :class:`rtlearn.models.UNet` with a ReLU output (doses >= 0)
times 70 Gy (:class:`rtlearn.models.ScaledDose`), trained with :func:`rtlearn.train.fit`
(Adam, ReduceLROnPlateau, best validation epoch restored).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from ..config import check_overrides, pick
from ..data.openkbp.dataset import OpenKBPDataset
from ..data.openkbp.eval import evaluate_openkbp
from ..losses.dose import masked_mae
from ..models.scaled import ScaledDose
from ..models.unet import UNet
from ..train import fit, seeded

__all__ = ["RX_SCALE_GY", "LEADERBOARD_TOP5", "Config", "default_config", "load_data", "make_model", "run"]

#: the network's output is multiplied by this dose (Gy): OpenKBP's highest prescription, PTV70
RX_SCALE_GY = 70.0
#: The final blinded test phase of OpenKBP as published by the organisers (Babier et al. 2021):
#: (rank, team, dose score Gy, DVH score Gy). The published numbers, not ours.
LEADERBOARD_TOP5 = (
    (1, "LSL AnHui University (cascade 3D U-Net, C3D)", 2.4294, 1.4776),
    (2, "SuperPod", 2.5635, 1.7045),
    (3, "team_overfitting", 2.6146, 1.5818),
    (4, "Prediction Team Vienna", 2.6497, 1.5393),
    (5, "DanNguyen", 2.6795, 1.5728),
)


@dataclass(frozen=True)
class Config:
    """Every size of the chapter's computations.

    ``n_train``/``n_val``/``n_test`` patients (``None``: all with the needed arrays),
    2D slices (``dims=2``, every ``slice_step``-th slice, in-plane ``downsample``) or 3D
    volumes, the U-Net (``width``, ``depth``, ``norm``), Adam (``lr``) with the plateau
    schedule (patience ``max(2, epochs // 10)``) and ``early_stopping`` epochs without a
    better validation loss. ``n_stats`` training patients feed the data statistics and
    ``n_val_scored`` validation patients the trivial-prediction scores.
    """

    dims: int = 2
    downsample: int = 2
    n_train: int | None = 10
    n_val: int | None = 3
    n_test: int | None = 4
    epochs: int = 15
    early_stopping: int | None = None
    width: int = 16
    depth: int = 4
    norm: str = "group"
    batch_size: int = 16
    slice_step: int = 2
    lr: float = 3e-3
    num_workers: int = 0
    inputs: tuple = ("rois", "ct", "possible_dose_mask")
    n_stats: int | None = 20
    n_val_scored: int | None = 5


_PROFILES = {
    "quick": {},
    "study": dict(n_train=60, n_val=10, n_test=20, epochs=60, early_stopping=10, n_stats=200, n_val_scored=40),
    "full": dict(dims=3, downsample=1, n_train=None, n_val=None, n_test=None, epochs=100, width=32, depth=5,
                 batch_size=2, slice_step=1, lr=1e-3, num_workers=6, n_stats=200, n_val_scored=40),
}


def default_config(profile: str | None = None, **overrides) -> Config:
    """The sizes for ``profile`` (default: the active profile, ``RTLEARN_PROFILE``); keywords override fields."""
    cfg = replace(Config(), **pick(_PROFILES["quick"], _PROFILES["full"], study=_PROFILES["study"],
                                   profile_name=profile))
    check_overrides(Config, overrides, "baseline settings")
    return replace(cfg, **overrides)


def load_data(cfg: Config, root=None, progress: bool = True, evaluate_test: bool = True) -> dict:
    """The ``train``, ``validation`` (and ``test``) datasets of ``cfg``."""
    kw = dict(root=root, dims=cfg.dims, inputs=cfg.inputs, downsample=cfg.downsample, progress=progress)
    data = {"train": OpenKBPDataset("train", patients=cfg.n_train, slice_step=cfg.slice_step, **kw),
            "validation": OpenKBPDataset("validation", patients=cfg.n_val, **kw)}
    if evaluate_test:
        data["test"] = OpenKBPDataset("test", patients=cfg.n_test, **kw)
    return data


def make_model(cfg: Config, in_channels: int) -> ScaledDose:
    """The baseline U-Net (ReLU output) times :data:`RX_SCALE_GY`."""
    return ScaledDose(UNet(in_channels, 1, dims=cfg.dims, depth=cfg.depth, width=cfg.width, norm=cfg.norm,
                           final_activation="relu"), scale=RX_SCALE_GY)


def _masked_mae(pred, target, mask):
    return masked_mae(pred, target, mask=mask > 0)


def run(cfg: Config | None = None, seed: int = 0, *, data: dict | None = None, root=None, device=None,
        checkpoint=None, progress: bool = True, evaluate_test: bool = True) -> dict:
    """Train the baseline and score it on validation (and test) patients.

    Returns
    -------
    dict
        ``model``, ``trainer``, ``history``, ``config``, ``datasets`` (train/validation/test),
        ``scores`` (``{"validation": {...}, "test": {...}}`` from
        :func:`~rtlearn.data.openkbp.eval.evaluate_openkbp`) and ``seconds`` (training time).
    """
    cfg = cfg or default_config()
    data = data or load_data(cfg, root=root, progress=progress, evaluate_test=evaluate_test)
    train, val = data["train"], data["validation"]
    with seeded(seed):
        model = make_model(cfg, train.n_channels)
    res = fit(model, _masked_mae, train, val=val, epochs=cfg.epochs, batch_size=cfg.batch_size, seed=seed,
              targets=("target", "mask"), drop_last=len(train) > cfg.batch_size, num_workers=cfg.num_workers,
              lr=cfg.lr, device=device, checkpoint=checkpoint, progress=progress,
              plateau_patience=max(2, cfg.epochs // 10), early_stopping=cfg.early_stopping)
    scores = {"validation": evaluate_openkbp(res.model, val, device=res.trainer.device, progress=progress)}
    if evaluate_test and "test" in data:
        scores["test"] = evaluate_openkbp(res.model, data["test"], device=res.trainer.device, progress=progress)
    return {"model": res.model, "trainer": res.trainer, "history": res.history, "config": cfg, "datasets": data,
            "scores": scores, "seconds": res.seconds}
