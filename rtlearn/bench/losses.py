"""Time and memory of the losses at full 3D scale.

Run ``python -m rtlearn.bench.losses`` (options: ``--size 128``, ``--classes 8``,
``--grid 16``, ``--structures 10``, ``--bins 64``, ``--repeats 5``, ``--threads 1``,
``--part seg|dose|all``, ``--json PATH``). Defaults take well under 2 minutes on
one CPU core.

What is measured, per loss: wall time of one forward + backward call (the best
of ``repeats`` rounds run round-robin over all losses after one warm-up each,
plus the median) and the peak extra memory during that call,
given as ratios to a reference loss measured in the same run (global Dice loss
for the segmentation losses, masked MAE for the dose losses).

* Segmentation (Chen et al. 2023): batch 1, ``classes`` channels, a ``size^3``
  volume of softmax probabilities (a leaf tensor, so the softmax is not timed)
  and a one-hot phantom of spheres; MONAI's ``DiceLoss`` and ``TverskyLoss`` are
  measured too when MONAI is installed.
* Dose (DeepDoseNet): a ``size^3`` dose, ``structures`` spherical structures,
  the DVH loss with ``bins`` thresholds, against masked MAE alone.

Memory: with CUDA, ``torch.cuda.max_memory_allocated``; on Linux CPU, the peak
resident set size (``VmHWM`` from ``/proc/self/status``, reset through
``/proc/self/clear_refs`` before each call), with glibc's mmap threshold pinned
to 1 MiB so that every tensor of 1 MiB or more is mapped on allocation and
unmapped on free (the RSS then follows torch's live CPU tensors; smaller ones are
not counted); elsewhere memory is reported as unavailable.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from ..io import atomic_path
from ..losses import dose as _dose
from ..losses import dvh as _dvh
from ..losses import overlap as _overlap
from ..losses import region as _region


# --------------------------------------------------------------------------- measurement
def _read_status_kb(field: str):
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _pin_malloc_mmap_threshold(nbytes: int = 1 << 20) -> bool:
    """Make glibc serve every allocation >= ``nbytes`` by ``mmap`` (and return it on free).

    By default glibc raises its mmap threshold after large frees, so freed
    tensors of a few MiB stay resident and later allocations do not show up in
    the peak RSS. Fixing the threshold makes the RSS follow torch's live tensors.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        M_MMAP_THRESHOLD = -3
        ok = bool(libc.mallopt(M_MMAP_THRESHOLD, int(nbytes)))
        _trim_heap()
        return ok
    except (OSError, AttributeError):
        return False


def _trim_heap() -> None:
    """Give free heap memory back to the OS (glibc ``malloc_trim``), so the next RSS baseline is clean."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_memory_mb(fn, device) -> float | None:
    """Peak extra memory (MiB) while ``fn()`` runs; ``None`` when it cannot be measured."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2 ** 20
    fn()  # warm-up: lazily created state is not counted
    import gc

    gc.collect()
    _trim_heap()
    base = _read_status_kb("VmRSS")
    if base is None or not _reset_peak_rss():
        fn()
        return None
    fn()
    peak = _read_status_kb("VmHWM")
    return None if peak is None else max(0.0, (peak - base) / 1024)


def time_call(fn, repeats: int, device) -> float:
    """Median wall time (s) of ``fn()`` over ``repeats`` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def round_robin_times(runs, repeats: int, device) -> list:
    """Wall times of each callable in ``runs``: one warm-up each, then ``repeats`` rounds over all."""
    for run in runs:
        run()
    times = [[] for _ in runs]
    for _ in range(repeats):
        for i, run in enumerate(runs):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            run()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times[i].append(time.perf_counter() - t0)
    return times


def _forward_backward(loss_fn, leaf):
    def run():
        x = leaf.detach().clone().requires_grad_()
        loss = loss_fn(x)
        loss.backward()
        return float(loss.detach())

    return run


def _measure(name, loss_fn, leaf, repeats, device):
    run = _forward_backward(loss_fn, leaf)
    t = time_call(run, repeats, device)
    mem = peak_memory_mb(run, device)
    return {"loss": name, "time_s": t, "peak_mb": mem}


def _add_ratios(rows, ref_name):
    ref = next(r for r in rows if r["loss"] == ref_name)
    for r in rows:
        r["time_ratio"] = r["time_s"] / ref["time_s"]
        r["mem_ratio"] = (r["peak_mb"] / ref["peak_mb"]) if (r["peak_mb"] is not None and ref["peak_mb"]) else None
    return rows


# --------------------------------------------------------------------------- phantoms
def _sphere_centres(n, size, gen):
    return torch.rand(n, 3, generator=gen) * (0.5 * size) + 0.25 * size


def _grid(size, device):
    ax = torch.arange(size, dtype=torch.float32, device=device)
    return torch.meshgrid(ax, ax, ax, indexing="ij")


def segmentation_inputs(size=128, classes=8, seed=0, device="cpu"):
    """Softmax probabilities ``1 x C x size^3`` and a one-hot sphere phantom."""
    gen = torch.Generator().manual_seed(seed)
    z, y, x = _grid(size, device)
    labels = torch.zeros((size,) * 3, dtype=torch.long, device=device)
    centres = _sphere_centres(classes - 1, size, gen)
    radii = (torch.rand(classes - 1, generator=gen) * 0.12 + 0.05) * size
    for c in range(classes - 1):  # a handful of structures, not a loop over voxels
        cz, cy, cx = centres[c].tolist()
        inside = (z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2 <= float(radii[c]) ** 2
        labels[inside] = c + 1
    onehot = torch.zeros((1, classes) + (size,) * 3, device=device)
    onehot.scatter_(1, labels[None, None], 1.0)
    logits = torch.randn((1, classes) + (size,) * 3, generator=gen).to(device) + 3.0 * onehot
    return logits.softmax(1), onehot


def dose_inputs(size=128, structures=10, seed=0, device="cpu"):
    """A smooth dose (Gy), a noisy prediction, a body mask and ``structures`` spheres."""
    gen = torch.Generator().manual_seed(seed)
    z, y, x = _grid(size, device)
    c = size / 2
    r2 = ((z - c) ** 2 + (y - c) ** 2 + (x - c) ** 2) / size ** 2
    target = 70.0 * torch.exp(-r2 / 0.02)
    body = r2 <= 0.45 ** 2
    target = target * body
    noise = torch.randn((size,) * 3, generator=gen).to(device)
    pred = (target + 2.0 * noise).clamp_min(0) * body
    centres = _sphere_centres(structures, size, gen)
    radii = (torch.rand(structures, generator=gen) * 0.15 + 0.04) * size
    masks = torch.stack([
        ((z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2) <= float(radii[s]) ** 2
        for s, (cz, cy, cx) in enumerate(centres.tolist())
    ])
    return pred[None, None], target[None, None], body[None, None], masks[None]


# --------------------------------------------------------------------------- benchmarks
def segmentation_losses(size=128, classes=8, grid=16, seed=0, device="cpu", include_monai=True):
    """``([(name, loss_fn(x))...], probabilities)`` for the segmentation benchmark."""
    device = torch.device(device)
    p, onehot = segmentation_inputs(size, classes, seed, device)
    losses = [
        ("dice (Eq. 2)", lambda x: _overlap.dice_loss(x, onehot)),
        ("cross-entropy", lambda x: _overlap.cross_entropy_loss(x, onehot)),
        ("dice + CE (Eq. 9)", lambda x: _overlap.dice_ce_loss(x, onehot)),
        ("tversky (Eq. 5)", lambda x: _overlap.tversky_loss(x, onehot, 0.3, 0.7)),
        ("focal tversky", lambda x: _overlap.focal_tversky_loss(x, onehot)),
        ("generalised dice", lambda x: _overlap.generalized_dice_loss(x, onehot)),
        ("sensitivity-specificity", lambda x: _overlap.sensitivity_specificity_loss(x, onehot)),
        (f"region-specific DC={grid} (Eq. 4)", lambda x: _region.region_specific_loss(x, onehot, grid)),
        (f"adaptive region-specific DC={grid} (Eqs. 6-8)",
         lambda x: _region.adaptive_region_specific_loss(x, onehot, grid)),
    ]
    if include_monai:
        try:
            from monai.losses import DiceLoss, TverskyLoss

            md = DiceLoss(squared_pred=True, smooth_nr=1e-7, smooth_dr=1e-7)
            mt = TverskyLoss(alpha=0.3, beta=0.7, smooth_nr=1e-7, smooth_dr=1e-7)
            losses += [("MONAI DiceLoss(squared_pred)", lambda x: md(x, onehot)),
                       ("MONAI TverskyLoss", lambda x: mt(x, onehot))]
        except ImportError:  # pragma: no cover - MONAI is optional here
            pass
    return losses, p


def segmentation_benchmark(size=128, classes=8, grid=16, repeats=5, seed=0, device="cpu", include_monai=True):
    """Rows of time / memory for every segmentation loss, ratios to the global Dice loss."""
    device = torch.device(device)
    losses, p = segmentation_losses(size, classes, grid, seed, device, include_monai)
    rows = [_measure(name, fn, p, repeats, device) for name, fn in losses]
    return _add_ratios(rows, "dice (Eq. 2)")


def dose_losses(size=128, structures=10, bins=64, seed=0, device="cpu"):
    """``([(name, loss_fn(x))...], prediction, info)`` for the dose benchmark."""
    device = torch.device(device)
    pred, target, body, masks = dose_inputs(size, structures, seed, device)
    hybrid = _dvh.MAEPlusDVHLoss(weight=1.0, bins=bins)
    losses = [
        ("masked MAE", lambda x: _dose.masked_mae(x, target, body)),
        ("masked MSE", lambda x: _dose.masked_mse(x, target, body)),
        (f"DVH loss ({bins} bins)", lambda x: _dvh.dvh_loss(x, target, masks, bins=bins)),
        (f"MAE + DVH ({bins} bins)", lambda x: hybrid(x, target, body, masks)),
    ]
    n_vox = int(masks.sum())
    dense_mb = structures * bins * size ** 3 * pred.element_size() / 2 ** 20
    info = {"structure_voxels": n_vox, "dense_S_x_bins_x_volume_mb": dense_mb}
    return losses, pred, info


def dose_benchmark(size=128, structures=10, bins=64, repeats=5, seed=0, device="cpu"):
    """Rows of time / memory for masked MAE, the DVH loss and MAE + DVH; ratios to masked MAE."""
    device = torch.device(device)
    losses, pred, info = dose_losses(size, structures, bins, seed, device)
    rows = [_measure(name, fn, pred, repeats, device) for name, fn in losses]
    return _add_ratios(rows, "masked MAE"), info


def _fmt(rows, title):
    out = [title, f"{'loss':48s} {'best (s)':>9s} {'x ref':>7s} {'median':>7s} {'peak MiB':>9s} {'x ref':>7s}"]
    for r in rows:
        mem = "n/a" if r["peak_mb"] is None else f"{r['peak_mb']:.0f}"
        mr = "n/a" if r["mem_ratio"] is None else f"{r['mem_ratio']:.2f}"
        med = r.get("time_median_s", r["time_s"])
        out.append(f"{r['loss']:48s} {r['time_s']:9.3f} {r['time_ratio']:7.2f} {med:7.3f} {mem:>9s} {mr:>7s}")
    return "\n".join(out)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m rtlearn.bench.losses", description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=128, help="edge of the cubic volume (default 128)")
    ap.add_argument("--classes", type=int, default=8)
    ap.add_argument("--grid", type=int, default=16, help="division coefficient DC of the region losses")
    ap.add_argument("--structures", type=int, default=10)
    ap.add_argument("--bins", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per loss (median reported)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--part", choices=["seg", "dose", "all"], default="all")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    ap.add_argument("--no-pin-malloc", action="store_true",
                    help="do not pin glibc's mmap threshold (memory figures then under-count reused heap memory)")
    args = ap.parse_args(argv)
    if args.size < args.grid or args.size < 4:
        ap.error("--size must be >= --grid and >= 4")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    result = {"config": vars(args), "torch": torch.__version__}
    t0 = time.perf_counter()
    parts = {}
    if args.part in ("seg", "all"):
        losses, leaf = segmentation_losses(args.size, args.classes, args.grid, args.seed, device)
        parts["segmentation"] = (losses, leaf, "dice (Eq. 2)")
    if args.part in ("dose", "all"):
        losses, leaf, info = dose_losses(args.size, args.structures, args.bins, args.seed, device)
        parts["dose"] = (losses, leaf, "masked MAE")
        result["dose_info"] = info
    # phase 1: timings with the default allocator, round-robin over the losses so that load from other
    # processes affects them alike; phase 2: memory with the mmap threshold pinned
    for key, (losses, leaf, _) in parts.items():
        runs = [_forward_backward(fn, leaf) for _, fn in losses]
        times = round_robin_times(runs, args.repeats, device)
        result[key] = [{"loss": name, "time_s": min(ts), "time_median_s": statistics.median(ts)}
                       for (name, _), ts in zip(losses, times)]
    if device.type == "cpu" and not args.no_pin_malloc:
        _pin_malloc_mmap_threshold()
    for key, (losses, leaf, ref) in parts.items():
        for row, (_, fn) in zip(result[key], losses):
            row["peak_mb"] = peak_memory_mb(_forward_backward(fn, leaf), device)
        _add_ratios(result[key], ref)
    if "segmentation" in result:
        print(_fmt(result["segmentation"], f"Segmentation losses, 1 x {args.classes} x {args.size}^3, forward + "
                                           f"backward (ratios to the global Dice loss)"))
        print()
    if "dose" in result:
        info = result["dose_info"]
        print(_fmt(result["dose"], f"Dose losses, 1 x 1 x {args.size}^3, {args.structures} structures "
                                   f"({info['structure_voxels']} voxels), forward + backward (ratios to masked MAE)"))
        print(f"(a dense S x bins x volume sigmoid tensor would need {info['dense_S_x_bins_x_volume_mb']:.0f} MiB)")
    result["total_s"] = time.perf_counter() - t0
    print(f"\ntotal {result['total_s']:.1f} s on {args.threads} thread(s), device {args.device}")
    if args.json:
        with atomic_path(args.json) as tmp:
            tmp.write_text(json.dumps(result, indent=2, default=str))
    return result


if __name__ == "__main__":  # pragma: no cover
    sys.exit(0 if main() else 1)
