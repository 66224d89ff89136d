"""GPU smoke run of every chapter at full scale: ``python -m rtlearn.bench.gpu``.

For every chapter's ``full`` profile this builds the chapter's own network
(its ``default_config("full")`` and model builder) and its most expensive loss
(the arm that costs most per step), feeds random inputs of the full-profile
shapes and trains a few steps through :class:`rtlearn.train.Trainer`, the path
a full run takes: bf16 autocast and ``channels_last`` on CUDA, the chapter's
batch size, Adam. It prints per workload

* the time of one training step and of one validation batch (forward only),
* the throughput in samples per second,
* the peak GPU memory (``torch.cuda.max_memory_allocated``),
* an estimated full-run time: ``arms x epochs x (steps per epoch x step time +
  validation batches x validation time)`` for one seed, from the profile's
  sizes (data loading, scoring and re-planning excluded: a lower bound).

Random inputs only: nothing is downloaded and no phantom is planned, so the
numbers are the networks' and the losses' costs, not the data pipeline's.
The default settings finish in a few minutes on one H200 (``--budget`` seconds
at most: later workloads are skipped once it is spent).

``--dry-run`` (automatic when CUDA is not available) runs every workload on
the CPU with tiny networks and inputs and two steps: a check that every
chapter's full-profile path runs, not a measurement. bf16 autocast,
``channels_last`` and the peak-memory counter are CUDA-only and are skipped
there, with a message. ``--out PATH`` writes the results as JSON.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

__all__ = ["Workload", "WORKLOADS", "workloads", "measure", "run", "main"]


@dataclass
class Workload:
    """One chapter's full-profile network, loss and batch, and the sizes of its full run (one seed)."""

    chapter: str
    name: str
    model: nn.Module
    loss: Callable                          # loss_fn(pred, batch) of the trainer
    batch: Callable                         # batch(generator) -> dict of CPU tensors
    batch_size: int
    shape: tuple
    arms: int
    epochs: int
    steps_per_epoch: int
    val_batches: int
    input_keys: tuple = ("input",)
    frozen: list = field(default_factory=list)
    note: str = ""


# ---- random batches of the right shapes -----------------------------------------------------------------------
def _rand(g, *shape, low=0.0, high=1.0):
    return low + (high - low) * torch.rand(*shape, generator=g)


def _blobs(g, b, k, shape):
    """``(b, k, *shape)`` boolean masks: random boxes, about an eighth of the grid each."""
    out = torch.zeros(b, k, *shape, dtype=torch.bool)
    for i in range(b):
        for j in range(k):
            sl = []
            for n in shape:
                w = max(1, n // 2)
                lo = int(torch.randint(0, n - w + 1, (1,), generator=g))
                sl.append(slice(lo, lo + w))
            out[(i, j, *sl)] = True
    return out


# ---- the chapters ---------------------------------------------------------------------------------------------
def _sharp(dry: bool) -> Workload:
    from ..experiments import sharp
    from ..phantom.anatomy import DEFAULT_SHAPE

    cfg = sharp.default_config("full", **(dict(width=4, depth=2) if dry else {}))
    shape = (8, 16, 16) if dry else tuple(cfg.shape or DEFAULT_SHAPE[3])
    loss = sharp.arms(cfg)[sharp.arm_label(max(cfg.gammas))]
    b = cfg.batch_size

    def batch(g):
        return {"input": _rand(g, b, 1, *shape), "target": _rand(g, b, 1, *shape, high=1.2)}

    return Workload("sharp", f"U-Net + sharp loss (γ={max(cfg.gammas):g})", sharp.build_model(cfg),
                    lambda p, bt: loss(p, bt["target"]), batch, b, shape, len(sharp.arms(cfg)), cfg.epochs,
                    math.ceil(cfg.n_train / b), math.ceil(cfg.n_val / b), note="breast phantoms, 3D")


def _sharp_openkbp(dry: bool) -> Workload:
    from ..experiments import sharp, sharp_openkbp

    cfg = sharp_openkbp.default_config("full", **(dict(width=4, depth=2) if dry else {}))
    side = 16 if dry else 128 // cfg.downsample
    shape = (side,) * cfg.dims
    loss = sharp.arms(cfg)[sharp.arm_label(max(cfg.gammas))]
    b = cfg.batch_size
    per_patient = 1 if cfg.dims == 3 else math.ceil(side / cfg.slice_step)  # 2D: slices of every patient

    def batch(g):
        return {"input": _rand(g, b, 1, *shape), "target": _rand(g, b, 1, *shape, high=1.2)}

    return Workload("sharp_openkbp", f"U-Net + sharp loss (γ={max(cfg.gammas):g})", sharp.build_model(cfg),
                    lambda p, bt: loss(p, bt["target"]), batch, b, shape, len(sharp.arms(cfg)), cfg.epochs,
                    math.ceil(cfg.n_train * per_patient / b), math.ceil(cfg.n_val * per_patient / b),
                    note=f"OpenKBP {side}^{cfg.dims}, ROI-value map input")


def _openkbp_shape(dry):
    from ..data.openkbp.format import SHAPE

    return (16, 16, 16) if dry else tuple(SHAPE)


#: patients of OpenKBP's official split with a dose (``None`` in a full config means all of them)
_OPENKBP_N = {"train": 200, "validation": 40, "test": 100}


def _openkbp(dry: bool) -> Workload:
    from ..experiments import openkbp
    from ..losses.dose import masked_mae

    cfg = openkbp.default_config("full", **(dict(width=4, depth=2) if dry else {}))
    shape, b, ch = _openkbp_shape(dry), cfg.batch_size, 12  # ten structures, CT, possible-dose mask

    def batch(g):
        return {"input": _rand(g, b, ch, *shape), "target": _rand(g, b, 1, *shape, high=80.0),
                "mask": _blobs(g, b, 1, shape).float()}

    return Workload("openkbp", "U-Net + masked MAE", openkbp.make_model(cfg, ch),
                    lambda p, bt: masked_mae(p, bt["target"], mask=bt["mask"] > 0), batch, b, shape, 1,
                    cfg.epochs, math.ceil(_OPENKBP_N["train"] / b), math.ceil(_OPENKBP_N["validation"] / b),
                    note="OpenKBP 128³, chapter 3 baseline")


def _dvh_loss(dry: bool) -> Workload:
    from ..experiments import dvh_loss

    cfg = dvh_loss.default_config("full", **(dict(width=4, depth=2) if dry else {}))
    shape, b, ch, k = _openkbp_shape(dry), cfg.batch_size, 12, 10
    arm = dvh_loss.ARMS["MAE+DVH"]
    loss = arm.loss(cfg)

    def batch(g):
        return {"input": _rand(g, b, ch, *shape), "target": _rand(g, b, 1, *shape, high=80.0),
                "mask": _blobs(g, b, 1, shape), "structures": _blobs(g, b, k, shape)}

    return Workload("dvh_loss", "DeepDoseNet + MAE + DVH loss", dvh_loss.make_model(cfg, ch),
                    lambda p, bt: loss(p, *[bt[key] for key in arm.targets]), batch, b, shape, len(cfg.arms),
                    cfg.epochs, math.ceil(_OPENKBP_N["train"] / b), math.ceil(_OPENKBP_N["validation"] / b),
                    note=f"OpenKBP 128³, {cfg.dvh_bins} DVH bins, 10 structures")


def _dvh_conditioned(dry: bool) -> Workload:
    from ..experiments import dvh_conditioned as dc

    cfg = dc.default_config("full", **(dict(width=4, depth=2, max_channels=8, shape=(8, 16, 16)) if dry else {}))
    shape, b = tuple(cfg.shape), cfg.batch_size
    length = len(dc.STRUCTURES) * cfg.n_bins
    loss = cfg.loss()
    samples = cfg.samples_per_epoch or 10 * cfg.n_train  # the paper's K = 10 M pairs per epoch

    def batch(g):
        return {"input": _rand(g, b, len(dc.STRUCTURES), *shape), "dvh": _rand(g, b, length),
                "target": _rand(g, b, 1, *shape, high=1.2)}

    return Workload("dvh_conditioned", f"conditional U-Net + {type(loss).__name__}",
                    dc.build_model(cfg, "conditional", length), lambda p, bt: loss(p, bt["target"]), batch, b,
                    shape, len(cfg.arms), cfg.epochs, math.ceil(samples / b),
                    math.ceil(cfg.n_val * cfg.n_plans / max(b, 16)), input_keys=("input", "dvh"),
                    note="prostate phantoms, 3D, DVH vector of 4 structures")


def _region(dry: bool) -> Workload:
    from ..experiments import region

    cfg = region.default_config("full", **(dict(width=4, depth=2) if dry else {}))
    shape, b = _openkbp_shape(dry), cfg.batch_size
    n_classes = len(cfg.organs) + 1
    arm = cfg.arms[-1]                       # Baseline + ARS: the most expensive loss
    loss = region.arm_loss(arm, cfg)

    def batch(g):
        return {"input": _rand(g, b, 1, *shape, low=-1.0), "target": torch.randint(0, n_classes, (b, *shape),
                                                                                   generator=g)}

    return Workload("region", f"U-Net (softmax) + {arm}", region._model(cfg, n_classes, 3),
                    lambda p, bt: loss(p, bt["target"]), batch, b, shape, len(cfg.arms), cfg.epochs,
                    math.ceil(_OPENKBP_N["train"] / b), math.ceil(_OPENKBP_N["validation"] / b),
                    note=f"OpenKBP CT 128³, {n_classes} classes")


#: Usable patients of the 2D OpenKBP segmentation study (all five organs contoured, a CT) in the prepared copy,
#: and the mean number of slices over each patient's organs (measured by ``openkbp_slices``)
_SEG_OPENKBP = {"train": 99, "validation": 16, "slices_per_patient": 93}


def _region_openkbp(dry: bool) -> Workload:
    from ..experiments import region, region_openkbp

    cfg = region_openkbp.default_config("full", **(dict(width=4, depth=2, crop=16) if dry else {}))
    shape, b = (cfg.crop, cfg.crop), cfg.batch_size
    n_classes = len(cfg.organs) + 1
    arm = "Baseline+ARS"                     # the most expensive loss of the study
    loss = region.arm_loss(arm, cfg)
    per_patient = math.ceil(_SEG_OPENKBP["slices_per_patient"] / cfg.slice_step)

    def batch(g):
        return {"input": _rand(g, b, 1, *shape, low=-1.0), "target": torch.randint(0, n_classes, (b, *shape),
                                                                                   generator=g)}

    return Workload("region_openkbp", f"U-Net (softmax) + {arm}, batch Dice", region._model(cfg, n_classes, 2),
                    lambda p, bt: loss(p, bt["target"]), batch, b, shape, len(cfg.arms), cfg.epochs,
                    math.ceil(_SEG_OPENKBP["train"] * per_patient / b),
                    math.ceil(_SEG_OPENKBP["validation"] * per_patient / b),
                    note=f"OpenKBP CT slices {cfg.crop}², {n_classes} classes")


def _doselo_cfg(dry):
    from ..experiments import doselo

    return doselo.default_config("full", **(dict(shape=(32, 32), predictor_width=4, predictor_depth=2, seg_width=4,
                                                 seg_depth=2) if dry else {}))


def _doselo(dry: bool) -> Workload:
    from ..experiments import doselo

    cfg = _doselo_cfg(dry)
    shape, b = tuple(cfg.shape), cfg.seg_batch
    predictor = doselo.dose_predictor(cfg)
    lam = max(cfg.lambdas)
    loss = doselo.dose_term(predictor, lam)
    n_train = cfg.n_seg_cases - math.ceil(cfg.n_seg_cases / cfg.n_folds) - cfg.n_val
    n_oar = len(doselo.OAR_NAMES)
    n_models = (len(doselo.arm_names(cfg)) - 1 + len(cfg.lambdas)) * cfg.n_folds

    def batch(g):
        return {"input": _rand(g, b, len(doselo.MR_NAMES), *shape), "target": _blobs(g, b, 1, shape).float(),
                "oars": _blobs(g, b, n_oar, shape).float(), "ct": _rand(g, b, 1, *shape),
                "dose_mask": torch.ones(b, 1, *shape), "true_dose": _rand(g, b, 1, *shape, high=60.0)}

    return Workload("doselo", f"U-Net + DOSELO-ST (λ={lam:g} Rx², frozen predictor)", doselo.segmenter(cfg),
                    loss, batch, b, shape, n_models, doselo.seg_epochs(cfg), math.ceil(n_train / b), 0,
                    frozen=[predictor], note=f"brain phantoms, 2D, {cfg.n_folds} folds (models x folds runs)")


def _doselo_predictor(dry: bool) -> Workload:
    from ..experiments import doselo
    from ..losses.cascade import CascadeLoss

    cfg = _doselo_cfg(dry)
    shape, b = tuple(cfg.shape), cfg.predictor_batch
    loss = CascadeLoss()
    n = cfg.n_dose_cases * (1 + cfg.n_perturb)

    def batch(g):
        return {"input": _rand(g, b, 2 + len(doselo.OAR_NAMES), *shape), "target": _rand(g, b, 1, *shape, high=60.0),
                "mask": torch.ones(b, 1, *shape, dtype=torch.bool)}

    return Workload("doselo", "cascade U-Net dose predictor + cascade MSE", doselo.dose_predictor(cfg),
                    lambda p, bt: loss(p, bt["target"], bt["mask"]), batch, b, shape, 1, cfg.predictor_epochs,
                    math.ceil(n / b), 0, note="trained once per study")


#: chapter -> workload builders ``f(dry) -> Workload``
WORKLOADS = {
    "openkbp": (_openkbp,),
    "sharp": (_sharp,),
    "sharp_openkbp": (_sharp_openkbp,),
    "dvh_loss": (_dvh_loss,),
    "dvh_conditioned": (_dvh_conditioned,),
    "region": (_region,),
    "region_openkbp": (_region_openkbp,),
    "doselo": (_doselo_predictor, _doselo),
}


def workloads(chapters=None, *, dry: bool = False) -> list:
    """The :class:`Workload` builders of ``chapters`` (default all), as ``(chapter, builder)`` pairs."""
    chapters = list(WORKLOADS) if chapters is None else list(chapters)
    unknown = [c for c in chapters if c not in WORKLOADS]
    if unknown:
        raise ValueError(f"unknown chapter(s) {unknown}; choose from {list(WORKLOADS)}")
    return [(c, f) for c in chapters for f in WORKLOADS[c]]


# ---- measuring ------------------------------------------------------------------------------------------------
def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(w: Workload, device, *, steps: int = 8, warmup: int = 2, val_steps: int = 3, dry: bool = False) -> dict:
    """Train ``w`` for ``warmup + steps`` steps on ``device`` (one batch, reused) and time it; a result row."""
    from ..train import Trainer

    cuda = device.type == "cuda"
    g = torch.Generator().manual_seed(0)
    batch = w.batch(g)
    trainer = Trainer(w.model, w.loss, device=device, scheduler=None, progress=False, input_keys=w.input_keys,
                      frozen=w.frozen, amp=cuda, channels_last=cuda, restore_best=False, seed=0,
                      threads=None if cuda else 1)
    from ..train import to_device

    batch = to_device(batch, trainer.device, trainer.channels_last)
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    trainer.train_epoch([batch] * warmup)
    _sync(device)
    t0 = time.perf_counter()
    loss = trainer.train_epoch([batch] * steps)
    _sync(device)
    step_s = (time.perf_counter() - t0) / steps
    trainer.evaluate([batch])
    _sync(device)
    t0 = time.perf_counter()
    trainer.evaluate([batch] * val_steps)
    _sync(device)
    eval_s = (time.perf_counter() - t0) / val_steps
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None
    epoch_s = w.steps_per_epoch * step_s + w.val_batches * eval_s
    return {"chapter": w.chapter, "workload": w.name, "note": w.note, "batch_size": w.batch_size,
            "shape": list(w.shape), "parameters": int(sum(p.numel() for p in w.model.parameters())),
            "amp_bf16": trainer.amp, "channels_last": trainer.channels_last, "steps": steps,
            "loss": float(loss), "step_s": step_s, "eval_s": eval_s, "samples_per_s": w.batch_size / step_s,
            "peak_mem_gib": peak, "arms": w.arms, "epochs": w.epochs, "steps_per_epoch": w.steps_per_epoch,
            "val_batches": w.val_batches, "epoch_s": epoch_s,
            "full_run_h": None if dry else w.arms * w.epochs * epoch_s / 3600.0, "error": None}


def _fmt(v, spec):
    return format("-", f">{spec.split('.')[0]}") if v is None else format(v, spec)


def run(chapters=None, *, dry: bool | None = None, steps: int | None = None, budget: float = 420.0, out=None,
        echo=print) -> dict:
    """Measure every workload of ``chapters``; print a table and return (and optionally write) the results."""
    cuda = torch.cuda.is_available()
    if dry is None:
        dry = not cuda
    if not cuda and not dry:
        raise ValueError("CUDA is not available: use the dry run (--dry-run) on this machine")
    if not cuda:
        echo("CUDA is not available: dry run on the CPU with tiny networks and inputs (a check that every "
             "chapter's full-profile path runs, not a measurement). Skipped: bf16 autocast, channels_last and "
             "the peak-memory counter, which are CUDA-only.")
    device = torch.device("cuda") if (cuda and not dry) else torch.device("cpu")
    steps = (2 if dry else 8) if steps is None else steps
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    info = {"device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
            else platform.processor() or platform.machine(), "torch": torch.__version__, "dry_run": dry,
            "steps": steps, "results": []}
    echo(f"rtlearn GPU smoke run on {info['device_name']} ({device}), torch {torch.__version__}, {steps} steps "
         f"per workload{' (dry run)' if dry else ''}")
    header = (f"{'chapter':16s} {'workload':46s} {'batch':>5s} {'step s':>8s} {'samples/s':>10s} {'peak GiB':>9s} "
              f"{'full run h':>10s}")
    echo(header)
    t_start = time.perf_counter()
    for chapter, build in workloads(chapters, dry=dry):
        if time.perf_counter() - t_start > budget:
            row = {"chapter": chapter, "workload": build.__name__, "error": f"skipped: the {budget:.0f} s budget "
                   "was spent"}
            info["results"].append(row)
            echo(f"{chapter:16s} skipped (budget of {budget:.0f} s spent)")
            continue
        try:
            w = build(dry)
            row = measure(w, device, steps=steps, warmup=1 if dry else 2, val_steps=1 if dry else 3, dry=dry)
        except Exception as exc:  # one chapter's failure (e.g. out of memory) must not hide the others
            row = {"chapter": chapter, "workload": build.__name__, "error": f"{type(exc).__name__}: {exc}"}
            echo(f"{chapter:16s} FAILED: {row['error'][:200]}")
        else:
            echo(f"{chapter:16s} {row['workload'][:46]:46s} {row['batch_size']:5d} {row['step_s']:8.3f} "
                 f"{row['samples_per_s']:10.1f} {_fmt(row['peak_mem_gib'], '9.2f')} "
                 f"{_fmt(row['full_run_h'], '10.1f')}")
        info["results"].append(row)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    info["seconds"] = time.perf_counter() - t_start
    echo(f"done in {info['seconds']:.0f} s. Full-run hours: one seed, every arm, training and validation passes "
         "only (no data loading or scoring)." if not dry else f"dry run done in {info['seconds']:.1f} s")
    if out is not None:
        from pathlib import Path

        from ..io import atomic_path

        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            Path(tmp).write_text(json.dumps(info, indent=1) + "\n")
        echo(f"results written to {path}")
    return info


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rtlearn.bench.gpu", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train every chapter's full-profile network and loss for a few steps on CUDA (bf16 autocast, "
                    "channels_last) with random inputs; print step time, throughput, peak memory and an "
                    "estimated full-run time per chapter.",
        epilog="Without CUDA the dry run is automatic: tiny networks on the CPU, CUDA-only parts skipped.")
    parser.add_argument("--chapters", default=",".join(WORKLOADS),
                        help=f"comma-separated subset of {', '.join(WORKLOADS)} (default: all)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per workload (default 8; dry run 2)")
    parser.add_argument("--budget", type=float, default=420.0,
                        help="seconds after which the remaining workloads are skipped (default 420)")
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU (automatic without CUDA)")
    parser.add_argument("--out", default=None, help="write the results as JSON to this path")
    args = parser.parse_args(argv)
    chapters = [c.strip() for c in args.chapters.split(",") if c.strip()]
    try:
        info = run(chapters, dry=True if args.dry_run else None, steps=args.steps, budget=args.budget, out=args.out)
    except ValueError as exc:
        parser.error(str(exc))
    return 1 if any(r.get("error") and not r["error"].startswith("skipped") for r in info["results"]) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
