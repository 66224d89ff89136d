"""Realism report of the phantom clinic: reference numbers, metrics of a plan, the table."""
import numpy as np
import pytest

from rtlearn.phantom import make_plan, realism


def test_head_neck_ranges_widen_the_iqr():
    r = realism.head_neck_ranges(10.0)
    for o, (_, q25, _, q75) in realism.OPENKBP_OAR_MEAN_DOSE.items():
        assert r[o] == (max(0.0, q25 - 10.0), q75 + 10.0)
    assert realism.head_neck_ranges(0.0)["Larynx"] == (57.05, 78.54)
    with pytest.raises(ValueError, match="widen"):
        realism.head_neck_ranges(-1.0)


def test_case_metrics_against_direct_numpy():
    p, plan = make_plan("breast", 3)
    m = realism.case_metrics(p, plan)
    d, lung = plan.dose.astype(float), p.masks["Lung_L"]
    assert m["Lung_L mean (Gy)"] == pytest.approx(d[lung].mean())
    assert m["Lung_L V20 (%)"] == pytest.approx(100 * np.count_nonzero(d[lung] >= 20) / lung.sum())
    both = lung | p.masks["Lung_R"]
    assert m["Whole lung V5 (%)"] == pytest.approx(100 * np.count_nonzero(d[both] >= 5) / both.sum())
    assert m["Outside the body (% of voxels)"] == pytest.approx(100 * (1 - p.body.mean()))
    assert m["PTV D95 (% of Rx)"] == pytest.approx(100.0, abs=0.5)


def test_summary_and_table():
    rows = [{"a": 1.0, "b": np.nan}, {"a": 3.0, "b": 2.0}, {"a": 2.0}]
    s = realism.summarise(rows)
    assert s["a"] == (2.0, 1.0, 3.0) and s["b"] == (2.0, 2.0, 2.0)
    with pytest.raises(ValueError):
        realism.summarise([])
    cases = {site: realism.measure(site, 2, progress=False) for site in ("head_neck", "prostate")}
    table = realism.realism_table(cases)
    assert "OpenKBP train, 179 patients" in table and "Rectum V70 (%)" in table
    assert table.count("\n") + 1 == 2 + 7 + 2 + 4 + 2
    with pytest.raises(ValueError, match="unknown site"):
        realism.measure("liver", 2)
