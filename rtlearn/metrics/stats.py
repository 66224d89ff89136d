"""Paired statistics for comparing two models case by case."""
from __future__ import annotations

import numpy as np

__all__ = ["wilcoxon_summary"]


def wilcoxon_summary(a, b, names=("A", "B")) -> dict:
    r"""Paired Wilcoxon signed-rank test of per-case values ``a`` vs ``b``.

    Returns the mean ± standard deviation (``ddof=1``) and median of each,
    the median paired difference ``a - b``, the two-sided p-value of
    :func:`scipy.stats.wilcoxon` (exact for small samples without ties, as
    scipy chooses) and ``n``. Pairs where either value is NaN are dropped and
    counted in ``n_dropped``.

    Raises
    ------
    ValueError
        If the lengths differ or fewer than 2 complete pairs remain.
    """
    from scipy.stats import wilcoxon

    x = np.asarray(a, dtype=float).ravel()
    y = np.asarray(b, dtype=float).ravel()
    if x.shape != y.shape:
        raise ValueError(f"paired samples must have the same length, got {x.size} and {y.size}")
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if x.size < 2:
        raise ValueError(f"need at least 2 complete pairs for a Wilcoxon test, got {x.size}")
    diff = x - y
    p = 1.0 if np.all(diff == 0) else float(wilcoxon(x, y).pvalue)
    na, nb = names
    return {
        f"{na}_mean": float(x.mean()), f"{na}_sd": float(x.std(ddof=1)), f"{na}_median": float(np.median(x)),
        f"{nb}_mean": float(y.mean()), f"{nb}_sd": float(y.std(ddof=1)), f"{nb}_median": float(np.median(y)),
        "median_diff": float(np.median(diff)), "p": p, "n": int(x.size), "n_dropped": int((~keep).sum()),
    }
