"""Time and memory of the losses at full 3D scale.

Run ``python -m rtlearn.bench.losses`` (options: ``--size 128``, ``--classes 8``,
``--grid 16``, ``--structures 10``, ``--bins 64``, ``--repeats 5``, ``--threads 1``,
``--part seg|dose|all``, ``--out PATH``). Defaults take well under 2 minutes on
one CPU core. ``--out`` writes the results as JSON (atomically), with their
provenance: versions, commit, date, threads, CPU, the load average when the run
started and ended, and the arguments. Only ratios within one run compare fairly
(other processes on the machine slow all losses of a round alike, not every run
alike); :func:`load_recorded` reads such a file back as a :class:`RecordedBenchmark`.

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
  the DVH loss with ``bins`` thresholds (its default method, and the dense form
  that evaluates every voxel x threshold sigmoid, for comparison), against
  masked MAE alone.

Memory: with CUDA, ``torch.cuda.max_memory_allocated``; on Linux CPU, the peak
resident set size (``VmHWM`` from ``/proc/self/status``, reset through
``/proc/self/clear_refs`` before each call), with glibc's mmap threshold pinned
to 1 MiB so that every tensor of 1 MiB or more is mapped on allocation and
unmapped on free (the RSS then follows torch's live CPU tensors; smaller ones are
not counted); elsewhere memory is reported as unavailable.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

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
        (f"DVH loss ({bins} bins, dense form)", lambda x: _dvh.dvh_loss(x, target, masks, bins=bins, method="dense")),
        (f"MAE + DVH ({bins} bins)", lambda x: hybrid(x, target, body, masks)),
    ]
    n_vox = int(masks.sum())
    dense_mb = structures * bins * size ** 3 * pred.element_size() / 2 ** 20
    method = _dvh._Relaxed(bins, _dvh.DEFAULT_RANGE, None, 1.0, "auto", None, n_vox, structures, pred.dtype,
                           device).method
    info = {"structure_voxels": n_vox, "dense_S_x_bins_x_volume_mb": dense_mb, "dvh_method": method}
    return losses, pred, info


def dose_benchmark(size=128, structures=10, bins=64, repeats=5, seed=0, device="cpu"):
    """Rows of time / memory for masked MAE, the DVH loss and MAE + DVH; ratios to masked MAE."""
    device = torch.device(device)
    losses, pred, info = dose_losses(size, structures, bins, seed, device)
    rows = [_measure(name, fn, pred, repeats, device) for name, fn in losses]
    return _add_ratios(rows, "masked MAE"), info


# --------------------------------------------------------------------------- records
def _cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else :func:`platform.processor` or the machine type."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _load_average():
    """1-, 5- and 15-minute load averages (``os.getloadavg``), ``None`` where unavailable."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def run_provenance(argv, device) -> dict:
    """Where a benchmark run comes from: :func:`rtlearn.study.provenance` (commit, dirty flag, date, versions,
    threads), the device actually timed, the CPU model, the logical CPU count, the load average at the start
    and the command line (``argv``)."""
    from ..study import provenance

    prov = provenance()
    device = torch.device(device)
    prov.update({
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_model(),
        "cpu_model": _cpu_model(),
        "threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "load_average_start": _load_average(),
        "argv": [str(a) for a in argv],
        "command": "python -m rtlearn.bench.losses " + " ".join(str(a) for a in argv),
    })
    return prov


#: Recorded 128^3 dose benchmark shown in the DVH-loss chapter (relative to :func:`rtlearn.study.results_root`).
RECORDED_DOSE_128 = Path("bench") / "losses-128.json"


@dataclasses.dataclass(frozen=True)
class RecordedBenchmark:
    """A benchmark run read back from the JSON file that ``--out`` wrote.

    Attributes
    ----------
    config : dict
        The run's arguments (``size``, ``structures``, ``bins``, ``part``, ``repeats``, ...).
    provenance : dict
        See :func:`run_provenance`.
    rows : dict
        ``{"dose": [...], "segmentation": [...]}``, the parts that were run; one mapping per loss with
        ``loss``, ``time_s`` (best), ``time_median_s``, ``peak_mb``, ``time_ratio``, ``mem_ratio``.
    dose_info : dict
        Structure voxels, the size of a dense ``S x bins x volume`` sigmoid tensor (MiB), the DVH loss's method.
    """

    config: dict
    provenance: dict
    rows: dict
    dose_info: dict

    def row(self, loss: str, part: str = "dose") -> dict:
        """The row of ``loss`` (its exact name) in ``part``; ``KeyError`` naming the losses present if absent."""
        for r in self.rows.get(part, []):
            if r["loss"] == loss:
                return r
        raise KeyError(f"no loss {loss!r} in part {part!r}; recorded: {[r['loss'] for r in self.rows.get(part, [])]}")

    @property
    def dvh_name(self) -> str:
        """Name of the DVH loss's row (its default method) in the dose part."""
        return f"DVH loss ({self.config['bins']} bins)"

    def ratio(self, loss: str, kind: str = "time", part: str = "dose") -> float:
        """Best time (``kind="time"``) or peak extra memory (``"memory"``) of ``loss`` over the reference's."""
        key = {"time": "time_ratio", "memory": "mem_ratio"}.get(kind)
        if key is None:
            raise ValueError(f"kind must be 'time' or 'memory', got {kind!r}")
        value = self.row(loss, part)[key]
        if value is None:
            raise ValueError(f"the {kind} of {loss!r} was not measured in this run")
        return float(value)

    def table(self, part: str = "dose"):
        """The rows of ``part`` as a Markdown table (:class:`rtlearn.tables.Markdown`)."""
        from ..tables import Markdown, format_cell, markdown_table

        if part not in self.rows:
            raise KeyError(f"part {part!r} was not run; recorded: {sorted(self.rows)}")
        ref = "masked MAE" if part == "dose" else "dice (Eq. 2)"
        size = self.config["size"]
        header = [f"loss (forward + backward, {size}³)", "best time (s)", f"× {ref}", "median time (s)",
                  "peak extra memory (MiB)", f"× {ref}"]
        cell = lambda v, fmt: "n/a" if v is None else format_cell(float(v), fmt, nan="n/a")  # noqa: E731
        rows = [[r["loss"], cell(r["time_s"], "{:.3f}"), cell(r["time_ratio"], "{:.2f}"),
                 cell(r.get("time_median_s", r["time_s"]), "{:.3f}"), cell(r["peak_mb"], "{:.0f}"),
                 cell(r["mem_ratio"], "{:.2f}")] for r in self.rows[part]]
        return Markdown(markdown_table(header, rows))

    def provenance_line(self) -> str:
        """One line: command, commit, date, CPU or GPU, threads, torch, load average at the start."""
        p = self.provenance
        commit = (p.get("commit") or "unknown")[:10] + (" +local changes" if p.get("dirty") else "")
        load = p.get("load_average_start")
        load_text = "n/a" if not load else f"{load[0]:.2f} (1 min) on {p.get('cpu_count')} logical CPUs"
        return (f"Recorded with `{p.get('command')}` on {str(p.get('date', '?'))[:10]}, commit {commit}, "
                f"{p.get('device')} ({p.get('device_name')}), {p.get('threads')} thread(s), torch {p.get('torch')}, "
                f"rtlearn {p.get('rtlearn')}; load average at the start {load_text}.")

    def _repr_markdown_(self) -> str:
        parts = [str(self.table(part)) for part in ("segmentation", "dose") if part in self.rows]
        return "\n\n".join(parts + [self.provenance_line()])


def load_recorded(path=None) -> RecordedBenchmark:
    """Read a benchmark recorded with ``--out`` (default: the chapter's 128^3 dose run, :data:`RECORDED_DOSE_128`
    under :func:`rtlearn.study.results_root`).

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If it is not such a record (a key is missing).
    """
    from ..study import results_root

    path = results_root() / RECORDED_DOSE_128 if path is None else Path(path)
    data = json.loads(path.read_text())
    missing = [k for k in ("config", "provenance") if k not in data]
    if missing or not any(k in data for k in ("dose", "segmentation")):
        raise ValueError(f"{path} is not a benchmark recorded with --out (missing {missing or 'results'})")
    rows = {k: data[k] for k in ("segmentation", "dose") if k in data}
    return RecordedBenchmark(config=data["config"], provenance=data["provenance"], rows=rows,
                             dose_info=data.get("dose_info", {}))


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
    ap.add_argument("--out", "--json", dest="out", default=None,
                    help="also write the results and their provenance to this JSON file (atomically)")
    ap.add_argument("--no-pin-malloc", action="store_true",
                    help="do not pin glibc's mmap threshold (memory figures then under-count reused heap memory)")
    args = ap.parse_args(argv)
    if args.size < args.grid or args.size < 4:
        ap.error("--size must be >= --grid and >= 4")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    result = {"config": vars(args), "torch": torch.__version__}
    if args.out:
        result["provenance"] = run_provenance(sys.argv[1:] if argv is None else argv, device)
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
        print(f"(the DVH loss used its {info['dvh_method']} form; a dense S x bins x volume sigmoid tensor would "
              f"need {info['dense_S_x_bins_x_volume_mb']:.0f} MiB)")
    result["total_s"] = time.perf_counter() - t0
    print(f"\ntotal {result['total_s']:.1f} s on {args.threads} thread(s), device {args.device}")
    if args.out:
        result["provenance"].update(load_average_end=_load_average(), wall_seconds=result["total_s"])
        with atomic_path(args.out) as tmp:
            tmp.write_text(json.dumps(result, indent=2, default=str))
    return result


if __name__ == "__main__":  # pragma: no cover
    sys.exit(0 if main() else 1)
