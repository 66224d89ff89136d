"""Paired statistics for comparing two models case by case.

The book's verdicts ("the paper's claim is supported / contradicted /
unresolved on our data") are decided here. The recipe, for one per-case metric
and two arms A and B trained with several seeds each:

1. average each test case over seeds (:func:`paired_comparison`), so that the
   unit of the paired test is the *case*;
2. take the paired differences ``B - A``, test them with the two-sided
   Wilcoxon signed-rank test and put a percentile bootstrap confidence interval
   (:func:`bootstrap_ci`) on their median (or mean);
3. Holm-adjust all p-values of a results table together (:func:`holm`);
4. call a claim *supported* only when the adjusted p-value is below ``alpha``
   and the whole interval lies on the side of zero the paper claims
   (:func:`verdict`); :func:`compare_arms` runs the whole recipe and
   :func:`format_comparison` prints it as a Markdown table.
"""
from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import dataclass

import numpy as np

from .._validate import check_int
from ..tables import Markdown, markdown_table

__all__ = [
    "wilcoxon_summary", "seed_summary", "bootstrap_ci", "holm", "paired_comparison",
    "verdict", "compare_arms", "format_comparison", "Claim", "judge", "format_verdicts", "bound_check",
]

_STATISTICS = ("median", "mean")
_DIRECTIONS = ("lower", "higher")
_VERDICTS = ("supported", "contradicted", "unresolved")
_BOUND_VERDICTS = ("within", "beyond", "unresolved")
# Largest bootstrap index matrix drawn at once (elements); bigger ones are drawn in row chunks.
_MAX_INDEX_ELEMENTS = 1 << 22


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


# --------------------------------------------------------------------------- validation helpers


def _as_float_array(x, name: str) -> np.ndarray:
    """``x`` as a float array; rejects booleans, non-numeric and complex input."""
    arr = np.asarray(x)
    if arr.dtype == bool:
        raise ValueError(f"{name} must be numeric, got a boolean array")
    if arr.dtype.kind not in "iuf":
        raise ValueError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    return arr.astype(float, copy=False)


def _check_real(x, name: str) -> float:
    """A real scalar (not bool) as float."""
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {x!r}")
    return float(x)


def _check_seed(seed):
    """``None`` or a non-negative integer (not bool)."""
    if seed is None:
        return None
    return check_int(seed, "seed", 0)


def _check_choice(x, name: str, choices) -> str:
    if not isinstance(x, str) or x not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {x!r}")
    return x


def _check_probability(x, name: str) -> float:
    """A number strictly between 0 and 1."""
    v = _check_real(x, name)
    if not 0.0 < v < 1.0:
        raise ValueError(f"{name} must lie strictly between 0 and 1, got {x!r}")
    return v


def _stat_fn(statistic: str):
    """The NumPy reduction for ``statistic`` (``axis`` keyword supported)."""
    return np.median if statistic == "median" else np.mean


# --------------------------------------------------------------------------- public API


def seed_summary(per_seed_means) -> dict:
    r"""Mean and spread of a model's test score over training seeds.

    Parameters
    ----------
    per_seed_means : array_like, shape ``(n_seeds,)``
        One number per seed, typically the mean of a per-case metric over the
        test cases. NaN entries (a failed seed) are ignored and not counted.

    Returns
    -------
    dict
        ``mean``, ``sd`` (sample standard deviation, ``ddof=1``; NaN when only
        one seed) and ``n`` (number of finite seeds).

    Raises
    ------
    ValueError
        If the input is not one-dimensional, is boolean or non-numeric, is
        empty or contains no finite value.

    Examples
    --------
    >>> seed_summary([1.0, 2.0, 3.0])
    {'mean': 2.0, 'sd': 1.0, 'n': 3}
    """
    x = _as_float_array(per_seed_means, "per_seed_means")
    if x.ndim != 1:
        raise ValueError(f"per_seed_means must be one-dimensional (one value per seed), got shape {x.shape}")
    x = x[np.isfinite(x)]
    if x.size == 0:
        raise ValueError("per_seed_means has no finite value (empty or all NaN)")
    sd = float(x.std(ddof=1)) if x.size > 1 else float("nan")
    return {"mean": float(x.mean()), "sd": sd, "n": int(x.size)}


def bootstrap_ci(diff, statistic: str = "median", n_boot: int = 10000, level: float = 0.95,
                 seed: int | None = 0) -> tuple[float, float]:
    r"""Percentile bootstrap confidence interval of the median (or mean) paired difference.

    The ``n`` cases are resampled with replacement ``n_boot`` times; replicate
    ``b`` uses the indices in row ``b`` of
    ``np.random.default_rng(seed).integers(0, n, size=(n_boot, n))`` (drawn
    in row chunks when ``n_boot * n`` is large, which gives the same indices
    and keeps memory bounded). The interval is given by the
    ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the replicate
    statistics (:func:`numpy.quantile`, linear interpolation).

    Parameters
    ----------
    diff : array_like, shape ``(n,)``
        Paired differences, one per case. NaN entries are dropped.
    statistic : {"median", "mean"}
        Statistic whose interval is wanted.
    n_boot : int
        Number of bootstrap replicates (>= 1).
    level : float
        Confidence level, strictly between 0 and 1.
    seed : int or None
        Seed for :func:`numpy.random.default_rng`; the same seed gives the
        same interval. ``None`` draws fresh entropy (not reproducible).

    Returns
    -------
    (lo, hi) : tuple of float

    Raises
    ------
    ValueError
        For a non-1-D, boolean or non-numeric ``diff``, fewer than 2 finite
        differences, an unknown ``statistic``, a non-positive or non-integer
        ``n_boot``, ``level`` outside (0, 1) or a bad ``seed``.
    """
    x = _as_float_array(diff, "diff")
    if x.ndim != 1:
        raise ValueError(f"diff must be one-dimensional (one paired difference per case), got shape {x.shape}")
    x = x[np.isfinite(x)]
    if x.size < 2:
        raise ValueError(f"need at least 2 finite paired differences for a bootstrap, got {x.size}")
    statistic = _check_choice(statistic, "statistic", _STATISTICS)
    n_boot = check_int(n_boot, "n_boot", 1)
    level = _check_probability(level, "level")
    seed = _check_seed(seed)

    reduce = _stat_fn(statistic)
    n = x.size
    rng = np.random.default_rng(seed)
    rows = max(1, _MAX_INDEX_ELEMENTS // n)
    stats = np.empty(n_boot)
    for start in range(0, n_boot, rows):
        k = min(rows, n_boot - start)
        idx = rng.integers(0, n, size=(k, n))
        stats[start:start + k] = reduce(x[idx], axis=1)
    lo, hi = np.quantile(stats, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return float(lo), float(hi)


def holm(pvalues) -> np.ndarray:
    r"""Holm step-down adjusted p-values.

    With the ``m`` finite p-values sorted, :math:`p_{(1)} \le \dots \le p_{(m)}`,
    the adjusted values are
    :math:`\tilde p_{(i)} = \min\bigl(1, \max_{j \le i} (m - j + 1)\, p_{(j)}\bigr)`,
    which controls the family-wise error rate. They are returned in the order
    of the input; NaN entries stay NaN and do not count in ``m``.

    Parameters
    ----------
    pvalues : array_like, shape ``(m,)``
        Raw p-values in [0, 1] (NaN allowed).

    Returns
    -------
    numpy.ndarray
        Adjusted p-values, same shape and order as ``pvalues``.

    Raises
    ------
    ValueError
        If the input is not one-dimensional, is boolean or non-numeric, or has
        a finite value outside [0, 1] or an infinite value.

    Examples
    --------
    >>> holm([0.01, 0.04, 0.03]).round(2).tolist()
    [0.03, 0.06, 0.06]
    """
    p = _as_float_array(pvalues, "pvalues")
    if p.ndim != 1:
        raise ValueError(f"pvalues must be one-dimensional, got shape {p.shape}")
    if np.isinf(p).any():
        raise ValueError("pvalues must be in [0, 1] or NaN, got an infinite value")
    ok = ~np.isnan(p)
    if ((p[ok] < 0) | (p[ok] > 1)).any():
        raise ValueError(f"pvalues must be in [0, 1] or NaN, got {p[ok][(p[ok] < 0) | (p[ok] > 1)].tolist()}")
    out = np.full(p.shape, np.nan)
    q = p[ok]
    m = q.size
    if m == 0:
        return out
    order = np.argsort(q, kind="stable")
    adj = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * q[order]))
    res = np.empty(m)
    res[order] = adj
    out[ok] = res
    return out


def _seed_average(a, b):
    """Validate two arms' ``(n_seeds, n_cases)`` arrays; return them 2-D plus seed-averaged cases."""
    x = _as_float_array(a, "a")
    y = _as_float_array(b, "b")
    for arr, name in ((x, "a"), (y, "b")):
        if arr.ndim not in (1, 2):
            raise ValueError(f"{name} must have shape (n_seeds, n_cases) or (n_cases,), got {arr.shape}")
    x, y = np.atleast_2d(x), np.atleast_2d(y)
    if x.shape != y.shape:
        raise ValueError(f"arms must have the same shape (n_seeds, n_cases), got {x.shape} and {y.shape}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"arms must have at least one seed and one case, got shape {x.shape}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN case -> NaN, dropped below
        xm, ym = np.nanmean(x, axis=0), np.nanmean(y, axis=0)
    keep = np.isfinite(xm) & np.isfinite(ym)
    if keep.sum() < 2:
        raise ValueError(f"need at least 2 cases with finite values in both arms, got {int(keep.sum())} "
                         f"of {keep.size}")
    return x, y, xm, ym, keep


def paired_comparison(a, b, *, statistic: str = "median", n_boot: int = 10000, seed: int | None = 0) -> dict:
    r"""Compare arm B with arm A case by case: Wilcoxon p, effect size and bootstrap CI.

    Each case is first averaged over seeds (:func:`numpy.nanmean`), so the
    unit of the test is the case, not the (case, seed) pair. Cases that are
    NaN in either arm after averaging are dropped. Then ``diff = B - A`` per
    case is tested with the two-sided Wilcoxon signed-rank test
    (:func:`scipy.stats.wilcoxon`, default method; ``p = 1`` when all
    differences are zero) and its median (or mean) gets a percentile bootstrap
    95 % interval (:func:`bootstrap_ci`).

    Parameters
    ----------
    a, b : array_like, shape ``(n_seeds, n_cases)`` or ``(n_cases,)``
        Per-case metric of arm A and arm B; case ``j`` must be the same
        patient in both. A 1-D array is one seed.
    statistic : {"median", "mean"}
        Effect-size statistic of the paired differences.
    n_boot : int
        Bootstrap replicates.
    seed : int or None
        Bootstrap seed.

    Returns
    -------
    dict
        ``a_mean``, ``b_mean`` (mean over the kept cases of the seed-averaged
        values), ``diff`` (the statistic of ``B - A``), ``ci_lo``, ``ci_hi``,
        ``p``, ``n_cases`` (kept cases), ``n_dropped`` (cases dropped for
        NaN), ``n_seeds`` and ``statistic``.

    Raises
    ------
    ValueError
        On shape mismatch, more than 2 dimensions, boolean or non-numeric
        input, fewer than 2 complete cases, or a bad ``statistic``/``n_boot``/
        ``seed``.
    """
    from scipy.stats import wilcoxon

    statistic = _check_choice(statistic, "statistic", _STATISTICS)
    n_boot = check_int(n_boot, "n_boot", 1)
    seed = _check_seed(seed)
    x, _, xm, ym, keep = _seed_average(a, b)
    xa, yb = xm[keep], ym[keep]
    d = yb - xa
    p = 1.0 if np.all(d == 0) else float(wilcoxon(d).pvalue)
    lo, hi = bootstrap_ci(d, statistic=statistic, n_boot=n_boot, seed=seed)
    return {
        "a_mean": float(xa.mean()), "b_mean": float(yb.mean()), "diff": float(_stat_fn(statistic)(d)),
        "ci_lo": lo, "ci_hi": hi, "p": p, "n_cases": int(d.size), "n_dropped": int((~keep).sum()),
        "n_seeds": int(x.shape[0]), "statistic": statistic,
    }


def verdict(p_adj, ci, direction: str, alpha: float = 0.05) -> str:
    r"""Turn an adjusted p-value and a CI of ``B - A`` into a verdict on the paper's claim.

    Parameters
    ----------
    p_adj : float
        Multiplicity-adjusted p-value (e.g. from :func:`holm`).
    ci : (lo, hi)
        Confidence interval of the paired difference ``B - A``.
    direction : {"lower", "higher"}
        The sign the paper claims for ``B - A``: ``"lower"`` if it claims B
        has the lower value (e.g. lower dose error), ``"higher"`` otherwise
        (e.g. higher Dice).
    alpha : float
        Significance level, strictly between 0 and 1.

    Returns
    -------
    str
        ``"supported"`` when ``p_adj < alpha`` and the whole interval lies
        strictly on the claimed side of 0; ``"contradicted"`` when
        ``p_adj < alpha`` and it lies strictly on the opposite side;
        ``"unresolved"`` otherwise, including when any input is NaN.

    Raises
    ------
    ValueError
        For a bad ``direction``, ``alpha`` outside (0, 1), a boolean or
        non-numeric ``p_adj``, ``p_adj`` outside [0, 1], or a ``ci`` that is
        not two numbers with ``lo <= hi``.

    Examples
    --------
    >>> verdict(0.01, (-0.5, -0.1), "lower")
    'supported'
    >>> verdict(0.01, (-0.5, 0.1), "lower")
    'unresolved'
    """
    direction = _check_choice(direction, "direction", _DIRECTIONS)
    alpha = _check_probability(alpha, "alpha")
    p = _check_real(p_adj, "p_adj")
    if not math.isnan(p) and not 0.0 <= p <= 1.0:
        raise ValueError(f"p_adj must be in [0, 1] or NaN, got {p_adj!r}")
    try:
        lo, hi = ci
    except (TypeError, ValueError):
        raise ValueError(f"ci must be a pair (lo, hi), got {ci!r}") from None
    lo, hi = _check_real(lo, "ci[0]"), _check_real(hi, "ci[1]")
    if math.isnan(p) or math.isnan(lo) or math.isnan(hi):
        return "unresolved"
    if lo > hi:
        raise ValueError(f"ci must satisfy lo <= hi, got ({lo}, {hi})")
    if p >= alpha:
        return "unresolved"
    below, above = hi < 0.0, lo > 0.0
    claimed, opposite = (below, above) if direction == "lower" else (above, below)
    if claimed:
        return "supported"
    if opposite:
        return "contradicted"
    return "unresolved"


def compare_arms(metrics, comparisons, *, statistic: str = "median", alpha: float = 0.05,
                 n_boot: int = 10000, seed: int | None = 0, paper=None) -> list[dict]:
    r"""Run a table of paired comparisons with one Holm correction and a verdict per row.

    Parameters
    ----------
    metrics : mapping
        Arm name -> array ``(n_seeds, n_cases)`` (or ``(n_cases,)``) of one
        per-case metric; all arms compared together share the case order.
    comparisons : list of (arm_a, arm_b, direction)
        Each row compares ``B - A``; ``direction`` is the sign the paper
        claims (see :func:`verdict`).
    statistic : {"median", "mean"}
        Effect-size statistic of the paired differences.
    alpha : float
        Family-wise significance level for the verdicts.
    n_boot, seed :
        Bootstrap settings, passed to :func:`paired_comparison` (every row
        uses the same ``seed``).
    paper : mapping, optional
        ``(arm_a, arm_b) -> value`` the paper reports for the comparison;
        shown in the table and stored as ``row["paper"]`` (None if absent).

    Returns
    -------
    list of dict
        One row per comparison, in order: the keys of
        :func:`paired_comparison` plus ``a``, ``b``, ``direction``, ``p_adj``
        (Holm over all rows of the table together), ``verdict``,
        ``a_seed_mean``, ``a_seed_sd``, ``b_seed_mean``, ``b_seed_sd``
        (:func:`seed_summary` of each seed's mean over the compared cases) and
        ``paper``.

    Raises
    ------
    ValueError
        For an empty or malformed ``comparisons``, an unknown arm name, arms
        of different shapes, a bad ``direction``/``statistic``/``alpha``, or
        any error of :func:`paired_comparison`.
    """
    alpha = _check_probability(alpha, "alpha")
    statistic = _check_choice(statistic, "statistic", _STATISTICS)
    comparisons = list(comparisons)
    if not comparisons:
        raise ValueError("comparisons is empty: give a list of (arm_a, arm_b, direction)")
    rows = []
    for i, comp in enumerate(comparisons):
        if isinstance(comp, str) or not hasattr(comp, "__len__") or len(comp) != 3:
            raise ValueError(f"comparison {i} must be a triple (arm_a, arm_b, direction), got {comp!r}")
        arm_a, arm_b, direction = comp
        for arm in (arm_a, arm_b):
            if arm not in metrics:
                raise ValueError(f"comparison {i}: unknown arm {arm!r}; known arms: "
                                 f"{', '.join(map(repr, metrics))}")
        direction = _check_choice(direction, f"comparison {i} direction", _DIRECTIONS)
        try:
            res = paired_comparison(metrics[arm_a], metrics[arm_b], statistic=statistic, n_boot=n_boot, seed=seed)
        except ValueError as err:
            raise ValueError(f"comparison {i} ({arm_a!r} -> {arm_b!r}): {err}") from None
        x, y, _, _, keep = _seed_average(metrics[arm_a], metrics[arm_b])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a seed with only NaN cases -> NaN, skipped
            sa = seed_summary(np.nanmean(x[:, keep], axis=1))
            sb = seed_summary(np.nanmean(y[:, keep], axis=1))
        row = {"a": arm_a, "b": arm_b, "direction": direction, **res,
               "a_seed_mean": sa["mean"], "a_seed_sd": sa["sd"],
               "b_seed_mean": sb["mean"], "b_seed_sd": sb["sd"],
               "paper": None if paper is None else paper.get((arm_a, arm_b))}
        rows.append(row)
    p_adj = holm([r["p"] for r in rows])
    for r, pa in zip(rows, p_adj):
        r["p_adj"] = float(pa)
        r["verdict"] = verdict(r["p_adj"], (r["ci_lo"], r["ci_hi"]), r["direction"], alpha=alpha)
    return rows


@dataclass(frozen=True)
class Claim:
    r"""A paper's claim, stated in a chapter module before any number is seen.

    ``B`` differs from ``A`` in ``metric`` in the claimed ``direction``
    (``"lower"``: B's values are lower, e.g. a smaller dose error; ``"higher"``:
    e.g. a larger Dice). ``statement`` is the claim in words, ``paper`` the
    paper's own value for the comparison (quoted as the paper's, optional).

    ``margin`` :math:`m \ge 0` turns the claim into one of non-inferiority: B is
    not worse than A by more than :math:`m`, i.e. :math:`B - A > -m` for
    ``"higher"`` and :math:`B - A < m` for ``"lower"`` ("Dice within 0.02").
    :func:`judge` tests the shifted differences :math:`B - A \pm m` against 0.
    """

    metric: str
    a: str
    b: str
    direction: str
    statement: str
    paper: float | None = None
    margin: float = 0.0

    def __post_init__(self):
        for name in ("metric", "a", "b", "statement"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"Claim.{name} must be a non-empty string, got {getattr(self, name)!r}")
        _check_choice(self.direction, "Claim.direction", _DIRECTIONS)
        if self.a == self.b:
            raise ValueError(f"a claim compares two different arms, got {self.a!r} twice")
        m = self.margin
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not math.isfinite(m) or m < 0:
            raise ValueError(f"Claim.margin must be a finite number >= 0, got {m!r}")

    @property
    def shift(self) -> float:
        """The constant added to B's values so that the claim becomes ``B' - A`` in ``direction`` of 0."""
        return float(self.margin) if self.direction == "higher" else -float(self.margin)


def judge(study, claims, *, statistic: str = "median", alpha: float = 0.05, n_boot: int = 10000,
          seed: int | None = 0) -> list[dict]:
    """Test every claim on a study's per-case metrics, with one Holm correction over all of them.

    Parameters
    ----------
    study :
        Anything with ``metric(name, arm) -> array (n_seeds, n_cases)``: a
        recorded :class:`rtlearn.study.Study` or a live one
        (:func:`rtlearn.study.from_runs`).
    claims : sequence of Claim
        The chapter's claims (its ``CLAIMS``).

    Returns
    -------
    list of dict
        The rows of :func:`compare_arms` (``p_adj`` and ``verdict`` over all
        claims together) plus ``metric``, ``statement`` and ``margin``. For a
        claim with a margin the p-value and the verdict are those of the
        shifted differences (:attr:`Claim.shift`), while ``diff``, ``ci_lo``,
        ``ci_hi`` and B's means are reported unshifted.
    """
    claims = list(claims)
    if not claims or not all(isinstance(c, Claim) for c in claims):
        raise ValueError("claims must be a non-empty sequence of Claim")
    rows = []
    for c in claims:
        b = np.asarray(study.metric(c.metric, c.b), float) + c.shift
        (row,) = compare_arms({c.a: study.metric(c.metric, c.a), c.b: b},
                              [(c.a, c.b, c.direction)], statistic=statistic, alpha=alpha, n_boot=n_boot,
                              seed=seed, paper={(c.a, c.b): c.paper})
        for k in ("diff", "ci_lo", "ci_hi", "b_mean", "b_seed_mean"):   # report B - A itself
            row[k] = float(row[k]) - c.shift
        rows.append({**row, "metric": c.metric, "statement": c.statement, "margin": float(c.margin),
                     "_shift": c.shift})
    for r, pa in zip(rows, holm([r["p"] for r in rows])):
        r["p_adj"] = float(pa)
        s = r.pop("_shift")
        r["verdict"] = verdict(r["p_adj"], (r["ci_lo"] + s, r["ci_hi"] + s), r["direction"], alpha=alpha)
    return rows


def format_verdicts(rows, digits: int = 2) -> str:
    """One Markdown bullet per judged claim: the claim, the verdict, the difference with its CI and the Holm p.

    Returns a :class:`rtlearn.tables.Markdown`: the last expression of a notebook cell renders as a list.
    """
    lines = []
    for r in rows:
        lines.append(f"- {r['statement']} ({r['metric']}, {r['b']} vs {r['a']}): **{r['verdict']}**; "
                     f"{r['statistic']} difference {_fmt_num(r['diff'], digits)} "
                     f"[{_fmt_num(r['ci_lo'], digits)}, {_fmt_num(r['ci_hi'], digits)}], "
                     f"p (Holm) {_fmt_p(r['p_adj'])}, {r['n_cases']} cases x {r['n_seeds']} seed(s).")
    return Markdown("\n".join(lines))


# --------------------------------------------------------------------------- Markdown table


def _fmt_num(x, digits: int) -> str:
    if x is None:
        return "–"
    if isinstance(x, numbers.Real) and not isinstance(x, (bool, np.bool_)):
        return "–" if math.isnan(x) else f"{float(x):.{digits}f}"
    return str(x)


def _fmt_p(p) -> str:
    if p is None or math.isnan(p):
        return "–"
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def _md_cell(s) -> str:
    return str(s).replace("|", r"\|").replace("\n", " ")


def format_comparison(rows, digits: int = 2) -> str:
    r"""Markdown table of :func:`compare_arms` rows.

    Columns: Comparison (A → B), Paper, A and B as mean ± sd over seeds,
    Difference (B − A) [95 % CI], p (Holm) and Verdict. Numbers are rounded to
    ``digits`` decimals; p-values get 3 decimals (scientific below 0.001); a
    missing value (NaN or None) prints as "–" and an sd over a single seed is
    left out.

    Parameters
    ----------
    rows : list of dict
        Output of :func:`compare_arms`.
    digits : int
        Decimals for the metric values.

    Returns
    -------
    str
        The table, one line per row, without a trailing newline.

    Raises
    ------
    ValueError
        For a bad ``digits`` or a row missing a key of :func:`compare_arms`.
    """
    digits = check_int(digits, "digits", 0)
    need = ("a", "b", "a_seed_mean", "a_seed_sd", "b_seed_mean", "b_seed_sd", "diff", "ci_lo", "ci_hi",
            "p_adj", "verdict")
    header = ["Comparison (A → B)", "Paper", "A (mean ± sd over seeds)", "B (mean ± sd)",
              "Difference [95 % CI]", "p (Holm)", "Verdict"]
    body = []
    for i, r in enumerate(rows):
        missing = [k for k in need if k not in r]
        if missing:
            raise ValueError(f"row {i} lacks {missing}; pass the output of compare_arms")

        def mean_sd(m, s):
            if s is None or (isinstance(s, float) and math.isnan(s)):
                return _fmt_num(m, digits)
            return f"{_fmt_num(m, digits)} ± {_fmt_num(s, digits)}"

        body.append([
            f"{r['a']} → {r['b']}", _fmt_num(r.get("paper"), digits),
            mean_sd(r["a_seed_mean"], r["a_seed_sd"]), mean_sd(r["b_seed_mean"], r["b_seed_sd"]),
            f"{_fmt_num(r['diff'], digits)} [{_fmt_num(r['ci_lo'], digits)}, {_fmt_num(r['ci_hi'], digits)}]",
            _fmt_p(r["p_adj"]), r["verdict"],
        ])
    return markdown_table([_md_cell(h) for h in header], [[_md_cell(c) for c in row] for row in body])


def bound_check(cases, bound: float, statistic, *, level: float = 0.95, n_boot: int = 10000,
                seed: int | None = 0) -> dict:
    r"""Is a study-level statistic within a bound stated before the run? A cluster bootstrap over cases.

    Some claims are not "B beats A" but "our error is about the paper's": for
    example, a rule stated before the run that the largest average error
    over structures is reproduced if it is at most 1.5 times the paper's.
    The statistic is a function of all test cases together (a maximum of
    means), so it is bootstrapped by resampling whole cases:

    1. average every case over seeds (NaN seeds ignored; a case with no finite
       value is dropped);
    2. :math:`\hat\theta` = ``statistic(cases)``; replicate :math:`b` applies
       ``statistic`` to the cases in row :math:`b` of
       ``np.random.default_rng(seed).integers(0, n, size=(n_boot, n))``;
    3. the interval is the ``(1 - level) / 2`` and ``(1 + level) / 2``
       quantiles of the replicates, and the verdict is ``"within"`` when its
       upper end is at most ``bound``, ``"beyond"`` when its lower end exceeds
       ``bound``, ``"unresolved"`` otherwise.

    Several bound checks of one chapter form a family: give each
    ``level = 1 - alpha / m`` (Bonferroni) for a family-wise error ``alpha``.

    Parameters
    ----------
    cases : array_like, shape ``(n_seeds, n_cases, ...)``
        Per-case values of every seed (for example signed errors per
        structure, ``(n_seeds, n_cases, k)``); one seed is ``(1, n_cases, ...)``.
    bound : float
        The bound, finite.
    statistic : callable
        Maps an array ``(n_cases, ...)`` of seed-averaged cases to a float.
    level, n_boot, seed :
        Interval level in (0, 1), bootstrap replicates and seed, as in :func:`bootstrap_ci`.

    Returns
    -------
    dict
        ``estimate``, ``ci_lo``, ``ci_hi``, ``bound``, ``verdict``,
        ``n_cases``, ``n_seeds``, ``level``.

    Raises
    ------
    ValueError
        For non-numeric or boolean ``cases``, fewer than 2 dimensions or 2 cases, a
        non-finite ``bound``, a ``statistic`` that is not callable or does not
        return a finite number, or bad ``level``/``n_boot``/``seed``.

    Examples
    --------
    >>> import numpy as np
    >>> errors = np.array([[[1.0, 0.2], [1.2, -0.1], [0.8, 0.1], [1.1, 0.0]]])   # 1 seed, 4 cases, 2 structures
    >>> r = bound_check(errors, 2.0, lambda c: float(np.abs(c.mean(0)).max()))
    >>> r["estimate"], r["verdict"]
    (1.025, 'within')
    """
    x = _as_float_array(cases, "cases")
    if x.ndim < 2:
        raise ValueError(f"cases must have shape (n_seeds, n_cases, ...), got {x.shape}; one seed is (1, n_cases)")
    if not callable(statistic):
        raise ValueError(f"statistic must be a callable of the cases, got {statistic!r}")
    bound = _check_real(bound, "bound")
    if not math.isfinite(bound):
        raise ValueError(f"bound must be a finite number, got {bound!r}")
    level = _check_probability(level, "level")
    n_boot = check_int(n_boot, "n_boot", 1)
    seed = _check_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN case -> NaN, dropped below
        avg = np.nanmean(x, axis=0)
    flat = avg.reshape(avg.shape[0], -1)
    keep = np.all(np.isfinite(flat), axis=1)
    avg = avg[keep]
    n = avg.shape[0]
    if n < 2:
        raise ValueError(f"need at least 2 cases with finite values, got {n}")

    def stat(c):
        v = statistic(c)
        try:
            v = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"statistic must return a number, got {v!r}") from None
        if not math.isfinite(v):
            raise ValueError(f"statistic returned a non-finite value {v!r}")
        return v

    estimate = stat(avg)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    reps = np.array([stat(avg[row]) for row in idx])
    lo, hi = (float(q) for q in np.quantile(reps, [(1.0 - level) / 2.0, (1.0 + level) / 2.0]))
    result = "within" if hi <= bound else "beyond" if lo > bound else "unresolved"
    return {"estimate": estimate, "ci_lo": lo, "ci_hi": hi, "bound": bound, "verdict": result, "n_cases": int(n),
            "n_seeds": int(x.shape[0]), "level": level}
