"""The OpenKBP chapter's experiment: a plain U-Net baseline (structures + CT + possible-dose mask -> dose).

The same code runs in both profiles (:func:`rtlearn.config.pick`):

* ``quick`` -- 2D axial slices of a few patients, a small U-Net, a few epochs on CPU;
* ``full``  -- 3D volumes of every training patient, a wider and deeper U-Net, on a GPU.

The loss is the mean absolute error over the possible-dose mask
(:func:`rtlearn.losses.masked_mae`), the challenge's dose-score error restricted to
the mask; the model is :class:`rtlearn.models.UNet` with a ReLU output (doses >= 0)
times 70 Gy (:class:`rtlearn.models.ScaledDose`), trained with :class:`rtlearn.train.Trainer`
(Adam, ReduceLROnPlateau, best validation epoch restored).
"""
from __future__ import annotations

import time

import torch

from ..config import pick
from ..data.openkbp.dataset import OpenKBPDataset
from ..data.openkbp.eval import evaluate_openkbp
from ..losses.dose import masked_mae
from ..models.scaled import ScaledDose
from ..models.unet import UNet
from ..train import Trainer

__all__ = ["RX_SCALE_GY", "baseline_config", "train_baseline"]

#: the network's output is multiplied by this dose (Gy): OpenKBP's highest prescription, PTV70
RX_SCALE_GY = 70.0


def baseline_config(**overrides) -> dict:
    """Sizes of the baseline for the active profile; keyword arguments override entries."""
    cfg = pick(
        quick=dict(dims=2, downsample=2, n_train=10, n_val=3, n_test=4, epochs=15, width=16, depth=4, norm="group",
                   batch_size=16, slice_step=2, lr=3e-3, num_workers=0,
                   inputs=("rois", "ct", "possible_dose_mask")),
        full=dict(dims=3, downsample=1, n_train=None, n_val=None, n_test=None, epochs=100, width=32, depth=5,
                  norm="group", batch_size=2, slice_step=1, lr=1e-3, num_workers=6,
                  inputs=("rois", "ct", "possible_dose_mask")),
    )
    unknown = set(overrides) - set(cfg)
    if unknown:
        raise ValueError(f"unknown baseline settings {sorted(unknown)}; known: {sorted(cfg)}")
    cfg.update(overrides)
    return cfg


def train_baseline(config: dict | None = None, root=None, seed: int = 0, device=None, checkpoint=None,
                   progress: bool = True, evaluate_test: bool = True) -> dict:
    """Train the baseline and score it on validation (and test) patients.

    Returns
    -------
    dict
        ``model``, ``trainer``, ``history``, ``config``, ``datasets`` (train/validation/test),
        ``scores`` (``{"validation": {...}, "test": {...}}`` from
        :func:`~rtlearn.data.openkbp.eval.evaluate_openkbp`) and ``seconds`` (training time).
    """
    cfg = dict(config or baseline_config())
    kw = dict(root=root, dims=cfg["dims"], inputs=cfg["inputs"], downsample=cfg["downsample"], progress=progress)
    train = OpenKBPDataset("train", patients=cfg["n_train"], slice_step=cfg["slice_step"], **kw)
    val = OpenKBPDataset("validation", patients=cfg["n_val"], **kw)
    gen = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(train, batch_size=cfg["batch_size"], shuffle=True, generator=gen,
                                         num_workers=cfg["num_workers"], drop_last=len(train) > cfg["batch_size"],
                                         persistent_workers=cfg["num_workers"] > 0)
    val_loader = torch.utils.data.DataLoader(val, batch_size=cfg["batch_size"], num_workers=cfg["num_workers"])
    torch.manual_seed(seed)
    model = ScaledDose(UNet(train.n_channels, 1, dims=cfg["dims"], depth=cfg["depth"], width=cfg["width"],
                            norm=cfg["norm"], final_activation="relu"), scale=RX_SCALE_GY)

    def loss_fn(pred, batch):
        return masked_mae(pred, batch["target"], mask=batch["mask"] > 0)

    trainer = Trainer(model, loss_fn, lr=cfg["lr"], device=device, seed=seed, checkpoint=checkpoint,
                      progress=progress, plateau_patience=max(2, cfg["epochs"] // 10))
    t0 = time.perf_counter()
    history = trainer.fit(loader, cfg["epochs"], val_loader)
    seconds = time.perf_counter() - t0
    scores = {"validation": evaluate_openkbp(trainer.model, val, device=trainer.device, progress=progress)}
    datasets = {"train": train, "validation": val}
    if evaluate_test:
        test = OpenKBPDataset("test", patients=cfg["n_test"], **kw)
        datasets["test"] = test
        scores["test"] = evaluate_openkbp(trainer.model, test, device=trainer.device, progress=progress)
    return {"model": trainer.model, "trainer": trainer, "history": history, "config": cfg, "datasets": datasets,
            "scores": scores, "seconds": seconds}
