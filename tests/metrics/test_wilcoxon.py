"""rtlearn.metrics.stats.wilcoxon_summary against scipy (the package-level name, rtlearn.metrics.wilcoxon_summary)."""
import numpy as np
import pytest

from rtlearn import metrics


def test_wilcoxon_vs_scipy():
    from scipy.stats import wilcoxon

    rng = np.random.default_rng(3)
    a = rng.normal(10, 2, 15)
    b = a - rng.normal(0.8, 0.5, 15)
    out = metrics.wilcoxon_summary(a, b, names=("mse", "sharp"))
    assert out["p"] == pytest.approx(wilcoxon(a, b).pvalue)
    assert out["mse_mean"] == pytest.approx(a.mean()) and out["sharp_sd"] == pytest.approx(b.std(ddof=1))
    assert out["n"] == 15
    out = metrics.wilcoxon_summary([1.0, np.nan, 3.0], [1.5, 2.0, 2.0])
    assert out["n"] == 2 and out["n_dropped"] == 1
    with pytest.raises(ValueError, match="same length"):
        metrics.wilcoxon_summary([1, 2, 3], [1, 2])
    assert metrics.wilcoxon_summary([1, 2], [1, 2])["p"] == 1.0
