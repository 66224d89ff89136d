"""Tests of rtlearn.metrics.stats against independent references (statsmodels, scipy, brute force)."""
from __future__ import annotations

import gc
import math

import numpy as np
import pytest
from scipy.stats import wilcoxon
from statsmodels.stats.multitest import multipletests

from rtlearn.metrics import stats
from rtlearn.metrics.stats import (bootstrap_ci, compare_arms, format_comparison, holm, paired_comparison,
                                   seed_summary, verdict, wilcoxon_summary)

NB = 1000  # bootstrap replicates in tests (keep the file fast)


def holm_reference(p):
    """statsmodels' Holm-adjusted p-values (the independent reference).

    ``multipletests(method="holm")`` calls ``gc.collect()`` on every call (~0.1 s
    under pytest); it is disabled for the call so that hundreds of checks stay fast.
    """
    collect = gc.collect
    gc.collect = lambda *args, **kwargs: 0
    try:
        return multipletests(p, method="holm")[1]
    finally:
        gc.collect = collect


# --------------------------------------------------------------------------- seed_summary

def test_seed_summary_values():
    s = seed_summary([1.0, 2.0, 3.0, 6.0])
    assert s["mean"] == pytest.approx(3.0)
    assert s["sd"] == pytest.approx(np.std([1, 2, 3, 6], ddof=1))
    assert s["n"] == 4


def test_seed_summary_single_seed_and_nan():
    s = seed_summary([2.5])
    assert s["mean"] == 2.5 and math.isnan(s["sd"]) and s["n"] == 1
    s = seed_summary([1.0, np.nan, 3.0])
    assert s == {"mean": 2.0, "sd": pytest.approx(math.sqrt(2.0)), "n": 2}


@pytest.mark.parametrize("bad, match", [
    ([], "no finite"), ([np.nan, np.nan], "no finite"), ([[1.0, 2.0]], "one-dimensional"),
    ([True, False], "boolean"), (["a", "b"], "numeric"),
])
def test_seed_summary_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        seed_summary(bad)


# --------------------------------------------------------------------------- holm

def test_holm_matches_statsmodels():
    rng = np.random.default_rng(0)
    for trial in range(300):
        m = int(rng.integers(1, 15))
        p = rng.uniform(0, 1, m) ** rng.uniform(0.5, 4)
        if trial % 3 == 0:                      # ties
            p = np.round(p, 1)
        if trial % 7 == 0:                      # exact 0 and 1
            p[0], p[-1] = 0.0, 1.0
        ref = holm_reference(p)
        np.testing.assert_allclose(holm(p), ref, rtol=0, atol=1e-12)


def test_holm_properties():
    rng = np.random.default_rng(1)
    p = rng.uniform(0, 0.2, 10)
    adj = holm(p)
    order = np.argsort(p)
    assert np.all(np.diff(adj[order]) >= 0)     # monotone in the raw order
    assert np.all(adj >= p) and np.all(adj <= 1)
    assert holm([0.5, 0.9])[1] == 1.0           # capped
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])


def test_holm_nan_excluded_from_count():
    p = np.array([0.01, np.nan, 0.04, 0.02, np.nan])
    adj = holm(p)
    assert np.isnan(adj[[1, 4]]).all()
    np.testing.assert_allclose(adj[[0, 2, 3]], holm_reference(p[[0, 2, 3]]))
    assert np.isnan(holm([np.nan, np.nan])).all()
    assert holm([]).shape == (0,)


@pytest.mark.parametrize("bad, match", [
    ([0.1, 1.2], r"\[0, 1\]"), ([-0.1], r"\[0, 1\]"), ([np.inf], "infinite"),
    ([[0.1, 0.2]], "one-dimensional"), ([True, False], "boolean"),
])
def test_holm_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        holm(bad)


# --------------------------------------------------------------------------- bootstrap_ci

def _brute_bootstrap(diff, statistic, n_boot, level, seed):
    """Reference: one replicate at a time with the same rng draws."""
    rng = np.random.default_rng(seed)
    n = len(diff)
    vals = []
    for _ in range(n_boot):
        idx = rng.integers(0, n, size=n)
        sample = [diff[i] for i in idx]
        vals.append(float(np.median(sample)) if statistic == "median" else sum(sample) / n)
    return tuple(np.quantile(vals, [(1 - level) / 2, (1 + level) / 2]))


@pytest.mark.parametrize("statistic", ["median", "mean"])
@pytest.mark.parametrize("n, level, seed", [(7, 0.95, 0), (12, 0.9, 3), (31, 0.99, 11)])
def test_bootstrap_matches_brute_force(statistic, n, level, seed):
    diff = np.random.default_rng(100 + n).normal(0.3, 1.0, n)
    got = bootstrap_ci(diff, statistic=statistic, n_boot=300, level=level, seed=seed)
    ref = _brute_bootstrap(list(diff), statistic, 300, level, seed)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)


def test_bootstrap_chunking_gives_same_interval(monkeypatch):
    diff = np.random.default_rng(5).normal(size=23)
    full = bootstrap_ci(diff, n_boot=NB, seed=4)
    monkeypatch.setattr(stats, "_MAX_INDEX_ELEMENTS", 50)   # 2 rows per chunk
    assert bootstrap_ci(diff, n_boot=NB, seed=4) == full
    monkeypatch.setattr(stats, "_MAX_INDEX_ELEMENTS", 1)    # < n: one row per chunk
    assert bootstrap_ci(diff, n_boot=NB, seed=4) == full


def test_bootstrap_deterministic_and_seed_dependent():
    diff = np.random.default_rng(2).normal(size=40)
    a = bootstrap_ci(diff, n_boot=NB, seed=7)
    assert bootstrap_ci(diff, n_boot=NB, seed=7) == a
    assert bootstrap_ci(diff, n_boot=NB, seed=8) != a


@pytest.mark.parametrize("statistic, fn", [("median", np.median), ("mean", np.mean)])
def test_bootstrap_contains_statistic(statistic, fn):
    rng = np.random.default_rng(3)
    for _ in range(5):
        diff = rng.standard_t(3, size=25)
        lo, hi = bootstrap_ci(diff, statistic=statistic, n_boot=NB, seed=0)
        assert lo <= fn(diff) <= hi and lo < hi


def test_bootstrap_ignores_nan():
    diff = np.array([0.1, 0.5, np.nan, -0.2, 0.3])
    assert bootstrap_ci(diff, n_boot=200, seed=1) == bootstrap_ci(diff[~np.isnan(diff)], n_boot=200, seed=1)


def test_bootstrap_coverage_sanity():
    """Mean CI of N(0.5, 1) samples, n=50: width ~ 2*1.96/sqrt(50), coverage near 95 %."""
    rng = np.random.default_rng(12)
    hits, widths = 0, []
    for k in range(60):
        x = rng.normal(0.5, 1.0, 50)
        lo, hi = bootstrap_ci(x, statistic="mean", n_boot=500, seed=k)
        hits += lo < 0.5 < hi
        widths.append(hi - lo)
    assert hits >= 51                                    # >= 85 % of 60
    assert np.mean(widths) == pytest.approx(2 * 1.96 / math.sqrt(50), rel=0.15)


@pytest.mark.parametrize("kwargs, match", [
    (dict(diff=[0.1]), "at least 2"), (dict(diff=[np.nan, np.nan, 1.0]), "at least 2"),
    (dict(diff=[[0.1, 0.2], [0.3, 0.4]]), "one-dimensional"), (dict(diff=[True, False, True]), "boolean"),
    (dict(statistic="mode"), "statistic"), (dict(n_boot=0), "n_boot"), (dict(n_boot=2.5), "n_boot"),
    (dict(n_boot=True), "n_boot"), (dict(level=1.0), "level"), (dict(level=0), "level"),
    (dict(level=True), "level"), (dict(seed=True), "seed"), (dict(seed=-1), "seed"),
])
def test_bootstrap_bad_input(kwargs, match):
    args = dict(diff=[0.1, 0.2, -0.3, 0.4], n_boot=10)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        bootstrap_ci(**args)


# --------------------------------------------------------------------------- paired_comparison

def test_paired_comparison_seed_average_by_hand():
    a = np.array([[1.0, 2.0, 3.0, 4.0],
                  [3.0, 4.0, 5.0, 6.0]])            # case means 2, 3, 4, 5
    b = np.array([[2.0, 2.0, 5.0, 9.0],
                  [4.0, 6.0, np.nan, 7.0]])         # case means 3, 4, 5, 8 (nanmean)
    r = paired_comparison(a, b, n_boot=200)
    assert r["a_mean"] == pytest.approx(3.5) and r["b_mean"] == pytest.approx(5.0)
    assert r["diff"] == pytest.approx(1.0)          # median of 1, 1, 1, 3
    assert r["n_cases"] == 4 and r["n_seeds"] == 2 and r["n_dropped"] == 0 and r["statistic"] == "median"
    assert r["p"] == pytest.approx(wilcoxon([3, 4, 5, 8], [2, 3, 4, 5]).pvalue)
    assert paired_comparison(a, b, statistic="mean", n_boot=200)["diff"] == pytest.approx(1.5)


def test_paired_comparison_matches_scipy():
    rng = np.random.default_rng(4)
    a = rng.normal(2.0, 1.0, (3, 30))
    b = a + rng.normal(-0.3, 0.5, (3, 30))
    r = paired_comparison(a, b, n_boot=NB, seed=2)
    am, bm = a.mean(0), b.mean(0)
    assert r["p"] == pytest.approx(wilcoxon(bm - am).pvalue, rel=1e-12)
    assert r["p"] == pytest.approx(wilcoxon(am, bm).pvalue, rel=1e-12)
    assert r["p"] == pytest.approx(wilcoxon_summary(am, bm)["p"], rel=1e-12)
    assert r["diff"] == pytest.approx(np.median(bm - am))
    assert (r["ci_lo"], r["ci_hi"]) == bootstrap_ci(bm - am, n_boot=NB, seed=2)


def test_paired_comparison_one_seed_zero_diff_and_nan_cases():
    a = np.array([1.0, 2.0, 3.0, 4.0])
    r = paired_comparison(a, a.copy(), n_boot=100)
    assert r["p"] == 1.0 and r["diff"] == 0.0 and r["n_seeds"] == 1
    a2 = np.array([[1.0, np.nan, 3.0, 4.0, 5.0], [2.0, np.nan, 3.0, 5.0, 6.0]])
    b2 = a2 + 1.0
    r = paired_comparison(a2, b2, n_boot=100)
    assert r["n_cases"] == 4 and r["n_dropped"] == 1


@pytest.mark.parametrize("a, b, match", [
    (np.zeros((2, 5)), np.zeros((3, 5)), "same shape"), (np.zeros((2, 5)), np.zeros((2, 4)), "same shape"),
    (np.zeros((2, 2, 2)), np.zeros((2, 2, 2)), "n_seeds, n_cases"),
    (np.array([1.0, np.nan, np.nan]), np.array([1.0, 2.0, 3.0]), "at least 2 cases"),
    (np.full((2, 3), np.nan), np.full((2, 3), np.nan), "at least 2 cases"),
    (np.array([True, False]), np.array([1.0, 2.0]), "boolean"),
])
def test_paired_comparison_bad_input(a, b, match):
    with pytest.raises(ValueError, match=match):
        paired_comparison(a, b, n_boot=10)


def test_paired_comparison_bad_options():
    x = np.arange(5.0)
    with pytest.raises(ValueError, match="statistic"):
        paired_comparison(x, x + 1, statistic="trimmed")
    with pytest.raises(ValueError, match="n_boot"):
        paired_comparison(x, x + 1, n_boot=False)


# --------------------------------------------------------------------------- verdict

@pytest.mark.parametrize("p, ci, direction, expected", [
    (0.01, (-0.5, -0.1), "lower", "supported"),
    (0.01, (0.1, 0.5), "higher", "supported"),
    (0.01, (0.1, 0.5), "lower", "contradicted"),
    (0.01, (-0.5, -0.1), "higher", "contradicted"),
    (0.01, (-0.5, 0.1), "lower", "unresolved"),       # right direction, CI crosses 0
    (0.01, (-0.5, 0.0), "lower", "unresolved"),       # touching 0 is not strictly below
    (0.2, (-0.5, -0.1), "lower", "unresolved"),       # not significant
    (0.05, (-0.5, -0.1), "lower", "unresolved"),      # p == alpha is not < alpha
    (np.nan, (-0.5, -0.1), "lower", "unresolved"),
    (0.01, (np.nan, -0.1), "lower", "unresolved"),
    (0.01, (-0.5, np.nan), "higher", "unresolved"),
])
def test_verdict_table(p, ci, direction, expected):
    assert verdict(p, ci, direction) == expected


def test_verdict_alpha():
    assert verdict(0.03, (-1, -0.5), "lower", alpha=0.01) == "unresolved"
    assert verdict(0.03, (-1, -0.5), "lower", alpha=0.1) == "supported"


@pytest.mark.parametrize("args, match", [
    ((0.01, (-1, -0.5), "less"), "direction"), ((0.01, (-1, -0.5), None), "direction"),
    ((True, (-1, -0.5), "lower"), "p_adj"), ((1.5, (-1, -0.5), "lower"), "p_adj"),
    ((0.01, (-0.1, -0.5), "lower"), "lo <= hi"), ((0.01, (-1,), "lower"), "pair"),
    ((0.01, 0.3, "lower"), "pair"), ((0.01, (True, 1.0), "lower"), r"ci\[0\]"),
    ((0.01, (-1, -0.5), "lower", 0.0), "alpha"), ((0.01, (-1, -0.5), "lower", True), "alpha"),
])
def test_verdict_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        verdict(*args)


def test_verdicts_are_not_true_by_construction():
    """Synthetic arms: the same data support, contradict or fail to resolve a claim."""
    rng = np.random.default_rng(6)
    base = rng.gamma(4.0, 0.5, (3, 40))
    better = base - 0.5 + rng.normal(0, 0.2, (3, 40))      # B has clearly lower error
    noise = base + rng.normal(0, 0.2, (3, 40))             # no effect
    tiny = base[:, :6] - 0.05 + rng.normal(0, 0.3, (3, 6))  # small effect, few cases: CI crosses 0
    m = {"A": base, "B": better, "N": noise}
    rows = compare_arms(m, [("A", "B", "lower"), ("A", "B", "higher"), ("A", "N", "lower")], n_boot=NB)
    assert [r["verdict"] for r in rows] == ["supported", "contradicted", "unresolved"]
    r = compare_arms({"A": base[:, :6], "T": tiny}, [("A", "T", "lower")], n_boot=NB)[0]
    assert r["ci_lo"] < 0 < r["ci_hi"] and r["verdict"] == "unresolved"


# --------------------------------------------------------------------------- compare_arms

def _arms(seed=7, n_seeds=3, n_cases=25):
    rng = np.random.default_rng(seed)
    base = rng.normal(3.0, 1.0, (n_seeds, n_cases))
    return {
        "base": base,
        "x": base - 0.2 + rng.normal(0, 0.4, (n_seeds, n_cases)),
        "y": base + 0.4 + rng.normal(0, 0.4, (n_seeds, n_cases)),
        "z": base + rng.normal(0, 0.4, (n_seeds, n_cases)),
    }


def test_compare_arms_holm_over_whole_table():
    m = _arms()
    comps = [("base", "x", "lower"), ("base", "y", "lower"), ("base", "z", "higher"), ("x", "y", "higher")]
    rows = compare_arms(m, comps, n_boot=500, seed=1)
    raw = np.array([r["p"] for r in rows])
    np.testing.assert_allclose([r["p_adj"] for r in rows], holm_reference(raw), atol=1e-12)
    for r, (a, b, d) in zip(rows, comps):
        assert (r["a"], r["b"], r["direction"]) == (a, b, d)
        single = paired_comparison(m[a], m[b], n_boot=500, seed=1)
        assert r["p"] == single["p"] and r["ci_lo"] == single["ci_lo"] and r["diff"] == single["diff"]
        assert r["verdict"] == verdict(r["p_adj"], (r["ci_lo"], r["ci_hi"]), d)
        assert r["paper"] is None
    assert any(r["p_adj"] > r["p"] for r in rows)


def test_compare_arms_seed_summaries_and_paper():
    m = _arms(n_seeds=4)
    m["x"][1, 3] = np.nan
    rows = compare_arms(m, [("base", "x", "lower")], n_boot=200, paper={("base", "x"): -0.3, ("x", "y"): 1.0})
    r = rows[0]
    a_seed = m["base"].mean(axis=1)
    b_seed = np.nanmean(m["x"], axis=1)
    assert r["a_seed_mean"] == pytest.approx(a_seed.mean()) and r["a_seed_sd"] == pytest.approx(a_seed.std(ddof=1))
    assert r["b_seed_mean"] == pytest.approx(b_seed.mean()) and r["b_seed_sd"] == pytest.approx(b_seed.std(ddof=1))
    assert r["paper"] == -0.3 and r["n_seeds"] == 4


def test_compare_arms_bad_input():
    m = _arms()
    with pytest.raises(ValueError, match="unknown arm 'nope'"):
        compare_arms(m, [("base", "nope", "lower")], n_boot=10)
    with pytest.raises(ValueError, match="unknown arm 'Base'"):
        compare_arms(m, [("Base", "x", "lower")], n_boot=10)
    m2 = dict(m, short=m["x"][:, :-1], fewer=m["x"][:2])
    with pytest.raises(ValueError, match="same shape"):
        compare_arms(m2, [("base", "short", "lower")], n_boot=10)
    with pytest.raises(ValueError, match="same shape"):
        compare_arms(m2, [("base", "fewer", "lower")], n_boot=10)
    with pytest.raises(ValueError, match="direction"):
        compare_arms(m, [("base", "x", "better")], n_boot=10)
    with pytest.raises(ValueError, match="triple"):
        compare_arms(m, [("base", "x")], n_boot=10)
    with pytest.raises(ValueError, match="empty"):
        compare_arms(m, [], n_boot=10)
    with pytest.raises(ValueError, match="alpha"):
        compare_arms(m, [("base", "x", "lower")], alpha=True, n_boot=10)


# --------------------------------------------------------------------------- format_comparison

def test_format_comparison():
    m = _arms()
    m["one|seed"] = m["x"][:1]
    m["base1"] = m["base"][:1]
    rows = compare_arms(m, [("base", "x", "lower"), ("base1", "one|seed", "lower")], n_boot=200,
                        paper={("base", "x"): -0.25})
    text = format_comparison(rows, digits=3)
    lines = text.splitlines()
    assert len(lines) == 4
    assert lines[0] == ("| Comparison (A → B) | Paper | A (mean ± sd over seeds) | B (mean ± sd) | "
                        "Difference [95 % CI] | p (Holm) | Verdict |")
    r = rows[0]
    assert f"{r['a_seed_mean']:.3f} ± {r['a_seed_sd']:.3f}" in lines[2]
    assert f"{r['diff']:.3f} [{r['ci_lo']:.3f}, {r['ci_hi']:.3f}]" in lines[2]
    assert "| -0.250 |" in lines[2] and r["verdict"] in lines[2]
    assert "one\\|seed" in lines[3] and "| – |" in lines[3]        # escaped pipe, missing paper value
    cells = lines[3].strip("|").split(" | ")
    assert "±" not in cells[2] and "±" not in cells[3]               # one seed: no sd
    assert all(line.count(" | ") == 6 for line in lines[2:])
    with pytest.raises(ValueError, match="digits"):
        format_comparison(rows, digits=-1)
    with pytest.raises(ValueError, match="lacks"):
        format_comparison([{"a": "x"}])


# ---------------------------------------------------------------------------------------------- claims
class _FakeStudy:
    def __init__(self, arrays):
        self.arrays = arrays

    def metric(self, name, arm):
        return self.arrays[(name, arm)]


def test_judge_holm_over_all_claims_and_each_outcome_reachable():
    from rtlearn.metrics.stats import Claim, format_verdicts, judge

    rng = np.random.default_rng(0)
    base = rng.normal(10, 1, size=(3, 30))
    arrays = {("mae", "A"): base, ("mae", "B"): base - 1 + rng.normal(0, 0.1, size=base.shape),  # B clearly lower
              ("dsc", "A"): base / 20, ("dsc", "B"): base / 20 + rng.normal(0, 0.01, size=base.shape)}  # no effect
    claims = [Claim("mae", "A", "B", "lower", "B lowers the error", paper=-1.2),
              Claim("mae", "A", "B", "higher", "B raises the error"),
              Claim("dsc", "A", "B", "higher", "B raises the Dice")]
    rows = judge(_FakeStudy(arrays), claims, n_boot=1000)
    assert [r["verdict"] for r in rows] == ["supported", "contradicted", "unresolved"]
    raw = [r["p"] for r in rows]
    np.testing.assert_allclose([r["p_adj"] for r in rows], holm_reference(raw))
    assert rows[0]["paper"] == -1.2 and rows[1]["paper"] is None
    text = format_verdicts(rows)
    assert text.count("\n") == 2 and "**supported**" in text and "3 seed(s)" in text
    with pytest.raises(ValueError, match="direction"):
        Claim("mae", "A", "B", "better", "x")
    with pytest.raises(ValueError, match="different arms"):
        Claim("mae", "A", "A", "lower", "x")
    with pytest.raises(ValueError, match="Claim"):
        judge(_FakeStudy(arrays), [("mae", "A", "B", "lower")])


def test_judge_non_inferiority_margin():
    """A claim with a margin is the plain claim on B shifted by the margin (scipy's Wilcoxon on the shifted
    differences), reported unshifted; each verdict is reachable."""
    from scipy.stats import wilcoxon

    from rtlearn.metrics.stats import Claim, judge

    rng = np.random.default_rng(2)
    a = rng.uniform(0.6, 0.9, size=(3, 25))
    for drop, margin, direction, expected in ((0.01, 0.02, "higher", "supported"),
                                              (0.05, 0.02, "higher", "contradicted"),
                                              (0.02, 0.02, "higher", "unresolved"),
                                              (-0.01, 0.02, "lower", "supported")):
        b = a - drop + rng.normal(0, 0.004, size=a.shape)
        study = _FakeStudy({("dsc", "A"): a, ("dsc", "B"): b})
        (row,) = judge(study, [Claim("dsc", "A", "B", direction, "within", margin=margin)], n_boot=2000)
        shift = margin if direction == "higher" else -margin
        d = (b + shift).mean(0) - a.mean(0)
        assert row["p"] == pytest.approx(wilcoxon(d).pvalue)
        assert row["diff"] == pytest.approx(np.median(d) - shift)
        assert row["b_mean"] == pytest.approx(b.mean())
        assert row["verdict"] == expected, (drop, margin, direction, row)
        assert row["margin"] == margin
    for bad in (-0.1, float("nan"), True, "0.02"):
        with pytest.raises(ValueError, match="margin"):
            Claim("dsc", "A", "B", "higher", "x", margin=bad)


# ---- bound_check ---------------------------------------------------------------------------------------------
def _largest_abs_mean(c):
    return float(np.abs(c.mean(0)).max())


def test_bound_check_matches_brute_force_bootstrap():
    rng = np.random.default_rng(3)
    cases = rng.normal(1.0, 0.5, size=(3, 12, 4))
    r = stats.bound_check(cases, 2.0, _largest_abs_mean, n_boot=500, level=0.9, seed=5)
    avg = cases.mean(0)
    idx = np.random.default_rng(5).integers(0, 12, size=(500, 12))
    reps = [_largest_abs_mean(avg[i]) for i in idx]
    lo, hi = np.quantile(reps, [0.05, 0.95])
    assert r["estimate"] == pytest.approx(_largest_abs_mean(avg))
    assert (r["ci_lo"], r["ci_hi"]) == (pytest.approx(lo), pytest.approx(hi))
    assert (r["n_cases"], r["n_seeds"], r["bound"], r["level"]) == (12, 3, 2.0, 0.9)


def test_bound_check_each_verdict_is_reachable():
    rng = np.random.default_rng(0)
    cases = rng.normal(1.0, 0.2, size=(2, 20, 3))
    assert stats.bound_check(cases, 1.5, _largest_abs_mean)["verdict"] == "within"
    assert stats.bound_check(cases, 0.5, _largest_abs_mean)["verdict"] == "beyond"
    at = _largest_abs_mean(cases.mean(0))                            # a bound at the estimate itself
    est = stats.bound_check(cases, at, _largest_abs_mean)
    assert est["ci_lo"] < at < est["ci_hi"] and est["verdict"] == "unresolved"


def test_bound_check_seed_average_nan_and_determinism():
    cases = np.array([[[1.0], [2.0], [np.nan], [4.0]],
                      [[3.0], [np.nan], [np.nan], [2.0]]])             # case 2 has no finite value: dropped
    r = stats.bound_check(cases, 10.0, lambda c: float(c.mean()), n_boot=200)
    assert r["n_cases"] == 3 and r["estimate"] == pytest.approx((2.0 + 2.0 + 3.0) / 3)
    assert r == stats.bound_check(cases, 10.0, lambda c: float(c.mean()), n_boot=200)


@pytest.mark.parametrize("args, kwargs, match", [
    (([1.0, 2.0], 1.0, _largest_abs_mean), {}, "n_seeds, n_cases"),
    (([[1.0]], 1.0, _largest_abs_mean), {}, "at least 2 cases"),
    (([[1.0, 2.0]], float("nan"), _largest_abs_mean), {}, "bound"),
    (([[1.0, 2.0]], 1.0, "max"), {}, "callable"),
    (([[1.0, 2.0]], 1.0, lambda c: float("inf")), {}, "non-finite"),
    (([[1.0, 2.0]], 1.0, lambda c: "x"), {}, "number"),
    (([[True, False]], 1.0, _largest_abs_mean), {}, "bool"),
    (([[1.0, 2.0]], 1.0, _largest_abs_mean), {"level": 1.0}, "level"),
    (([[1.0, 2.0]], 1.0, _largest_abs_mean), {"n_boot": 0}, "n_boot"),
])
def test_bound_check_bad_input(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        stats.bound_check(*args, **kwargs)
