"""Cost of one training step per dose loss, with the model and data of a chapter's profile.

Run ``python -m rtlearn.bench.training`` (options: ``--profile study``, ``--repeats 10``,
``--threads 1``, ``--out PATH``). For every arm of
:data:`rtlearn.experiments.dvh_loss.BENCHMARK_ARMS` (or ``--arms``) it times one
training step of the profile's DeepDoseNet on one batch of that profile's
training data (``batch_size`` slices or volumes): forward, loss, backward and
the Adam update. Times are the best and the median of ``repeats`` rounds run
round-robin over the arms (so that other load on the machine affects them
alike), the peak extra memory is measured as :func:`rtlearn.bench.losses.peak_memory_mb`
does (CUDA: allocator peak; Linux CPU: peak resident set with glibc's mmap
threshold pinned to 1 MiB). Ratios are to the MSE arm of the same run; only
ratios within one run compare fairly. ``--out`` writes the rows and their
provenance as JSON, atomically; :func:`load_recorded` reads them back.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from ..io import atomic_path
from .losses import _load_average, _pin_malloc_mmap_threshold, peak_memory_mb, round_robin_times, run_provenance

__all__ = ["training_step", "step_costs", "RECORDED_STUDY", "load_recorded", "main"]

#: The recorded study-profile run shown in the closing benchmark chapter (under :func:`rtlearn.study.results_root`).
RECORDED_STUDY = Path("bench") / "training-dvh_loss-study.json"


def training_step(model, loss, batch, targets, optimizer):
    """A callable running one training step: forward, ``loss(pred, *batch[targets])``, backward, ``optimizer.step()``."""
    def step():
        optimizer.zero_grad(set_to_none=True)
        out = loss(model(batch["input"]), *[batch[k] for k in targets])
        out.backward()
        optimizer.step()
        return float(out.detach())

    return step


def step_costs(cfg, arms=None, repeats: int = 10, device="cpu", pin_malloc: bool = True, progress: bool = False):
    """Time and peak extra memory of one training step per arm (``cfg`` a dvh_loss ``Config``).

    The batch is the first ``cfg.batch_size`` items of the training split of ``cfg``'s source (the
    first few patients are loaded). Returns a list of rows ``{"arm", "time_s" (best), "time_median_s",
    "peak_mb", "time_ratio", "mem_ratio"}`` (ratios to the first arm, the MSE by default) and a
    dict of facts (batch shape, parameters).
    """
    from dataclasses import replace

    from ..experiments import dvh_loss
    from ..train import seeded

    arms = tuple(dvh_loss.BENCHMARK_ARMS if arms is None else arms)
    bad = [a for a in arms if a not in dvh_loss.ARMS]
    if not arms or bad:
        raise ValueError(f"arms must be names of dvh_loss.ARMS, got {bad or arms}")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an int >= 1, got {repeats!r}")
    device = torch.device(device)
    small = replace(cfg, n_train=2 if cfg.source == "openkbp" else max(cfg.batch_size, 2), n_val=1, n_test=2,
                    device=str(device))
    data = dvh_loss.load_data(small, progress=progress)
    n = min(cfg.batch_size, len(data.train))
    items = [data.train[i] for i in range(n)]
    batch = {k: torch.stack([it[k] for it in items]).to(device) for k in ("input", "target", "mask", "structures")}
    steps = []
    for arm in arms:
        with seeded(0):
            model = dvh_loss.make_model(cfg, data.in_channels).to(device).train()
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
        steps.append(training_step(model, dvh_loss.ARMS[arm].loss(cfg), batch, dvh_loss.ARMS[arm].targets, opt))
    times = round_robin_times(steps, repeats, device)
    rows = [{"arm": a, "time_s": min(ts), "time_median_s": statistics.median(ts)} for a, ts in zip(arms, times)]
    if device.type == "cpu" and pin_malloc:
        _pin_malloc_mmap_threshold()
    for row, step in zip(rows, steps):
        row["peak_mb"] = peak_memory_mb(step, device)
    ref = rows[0]
    for r in rows:
        r["time_ratio"] = r["time_s"] / ref["time_s"]
        r["mem_ratio"] = (None if r["peak_mb"] is None or not ref["peak_mb"] else r["peak_mb"] / ref["peak_mb"])
    facts = {"batch_shape": list(batch["input"].shape), "structures": int(batch["structures"].shape[1]),
             "n_parameters": int(sum(p.numel() for p in model.parameters())), "source": cfg.source}
    return rows, facts


def load_recorded(path=None) -> dict:
    """Read a run written with ``--out`` (default :data:`RECORDED_STUDY` under :func:`rtlearn.study.results_root`).

    Returns ``{"config", "provenance", "facts", "rows"}``. Raises ``FileNotFoundError`` when absent and
    ``ValueError`` when the file is not such a record.
    """
    from ..study import results_root

    path = results_root() / RECORDED_STUDY if path is None else Path(path)
    data = json.loads(path.read_text())
    missing = [k for k in ("config", "provenance", "facts", "rows") if k not in data]
    if missing:
        raise ValueError(f"{path} is not a training-step benchmark recorded with --out (missing {missing})")
    return data


def main(argv=None) -> dict:
    from ..experiments import dvh_loss

    ap = argparse.ArgumentParser(prog="python -m rtlearn.bench.training", description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default=None, help="the dvh_loss profile whose model and data are used")
    ap.add_argument("--arms", default=None, help="comma-separated arm names (default: the benchmark's)")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None, help="write the rows and their provenance to this JSON file")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = dvh_loss.default_config(args.profile)
    arms = None if args.arms is None else tuple(a.strip() for a in args.arms.split(","))
    argv_list = sys.argv[1:] if argv is None else list(argv)
    prov = run_provenance(argv_list, args.device) if args.out else None
    t0 = time.perf_counter()
    rows, facts = step_costs(cfg, arms, args.repeats, args.device)
    total = time.perf_counter() - t0
    print(f"one training step, batch {facts['batch_shape']}, {facts['n_parameters']} parameters "
          f"({args.threads} thread(s), {args.device})")
    for r in rows:
        mem = "n/a" if r["peak_mb"] is None else f"{r['peak_mb']:.0f} MiB"
        print(f"{r['arm']:16s} best {r['time_s'] * 1000:8.1f} ms  x{r['time_ratio']:.2f}   peak {mem}")
    result = {"config": {**vars(args), "dvh_loss_config": {k: v for k, v in vars(cfg).items()
                                                          if isinstance(v, (int, float, str, tuple, type(None)))}},
              "facts": facts, "rows": rows, "total_s": total}
    if args.out:
        prov.update(load_average_end=_load_average(), wall_seconds=total,
                    command="python -m rtlearn.bench.training " + " ".join(argv_list))
        result["provenance"] = prov
        with atomic_path(args.out) as tmp:
            tmp.write_text(json.dumps(result, indent=2, default=str, ensure_ascii=False))
    return result


if __name__ == "__main__":  # pragma: no cover
    sys.exit(0 if main() else 1)
