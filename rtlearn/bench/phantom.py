"""Speed benchmark of the phantom clinic: ``python -m rtlearn.bench.phantom``.

Prints the time of one 2D case (anatomy + optimised plan) on one CPU thread per
site, of 200 2D cases with all cores, and of one 3D case on the CPU.
"""
from __future__ import annotations

import argparse
import os
import time


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--site", default="breast")
    ap.add_argument("--n", type=int, default=200, help="cases in the batch test")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--no-3d", action="store_true")
    args = ap.parse_args(argv)
    if os.environ.get("OPENBLAS_NUM_THREADS") != "1" or os.environ.get("OMP_NUM_THREADS") != "1":
        # "one CPU core": BLAS and OpenMP pools are sized when numpy/torch load, so restart with 1 thread
        import sys

        env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        cmd = [sys.executable, "-m", "rtlearn.bench.phantom"] + (sys.argv[1:] if argv is None else list(argv))
        os.execve(sys.executable, cmd, env)

    # imported only now (with 1 thread set): numpy and torch size their thread pools when first imported
    import numpy as np
    import torch

    from ..phantom.anatomy import SITES, make_patient
    from ..phantom.datasets import generate_cases
    from ..phantom.optimise import optimise_plan

    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, {os.cpu_count()} CPU(s)")
    print("one 2D case (anatomy + optimised plan), 1 thread, median of 5 seeds [budget 0.5 s]:")
    for site in SITES:
        ts = []
        for seed in range(5):
            t = time.perf_counter()
            optimise_plan(make_patient(site, seed, dims=2))
            ts.append(time.perf_counter() - t)
        print(f"  {site:10s} {np.median(ts):6.3f} s (max {max(ts):.3f} s)")
    t = time.perf_counter()
    generate_cases(args.site, args.n, seed=123, dims=2, progress=False, n_jobs=args.jobs)
    dt = time.perf_counter() - t
    print(f"{args.n} 2D {args.site} cases with {args.jobs} process(es): {dt:.1f} s [budget 120 s]")
    if not args.no_3d:
        print("one 3D case (64 x 128 x 128), CPU, 1 thread [budget 10 s]:")
        for site in SITES:
            t = time.perf_counter()
            p = make_patient(site, 0, dims=3)
            t1 = time.perf_counter()
            optimise_plan(p)
            t2 = time.perf_counter()
            print(f"  {site:10s} {t2 - t:6.2f} s (anatomy {t1 - t:.2f} s, plan {t2 - t1:.2f} s)")


if __name__ == "__main__":
    main()
