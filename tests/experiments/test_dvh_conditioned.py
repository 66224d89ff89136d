"""rtlearn.experiments.dvh_conditioned: cohort of Pareto sets, training driver, Table 1 evaluation, trade-off DVHs."""
import numpy as np
import pytest
import torch

from rtlearn.experiments import dvh_conditioned as ex
from rtlearn.pareto import check_dvh_vector, dvh_vector, project_to_pareto

SHAPE, SPACING = (32, 32), 12.8


@pytest.fixture(scope="module")
def cohort():
    torch.set_num_threads(1)
    return ex.make_cohort(3, n_plans=4, shape=SHAPE, spacing=SPACING, seed=0, n_bins=8, max_iter=40,
                          progress=False)


class Oracle(torch.nn.Module):
    """Knows one patient's Pareto set: returns the projected plan's dose (minus an offset)."""

    def __init__(self, doses, dvhs, offset=0.0):
        super().__init__()
        self.doses, self.dvhs, self.offset = doses, dvhs, offset
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.dims = doses.dim() - 1

    def forward(self, anatomy, dvh):
        j, _ = project_to_pareto(dvh, self.dvhs)
        return (self.doses[j] - self.offset + 0 * self.w)[:, None]


def test_cohort_shapes_normalisation_and_dvhs(cohort):
    assert len(cohort) == 3 and cohort.n_plans == 4
    assert cohort.anatomy.shape == (3, 4, *SHAPE) and cohort.doses.shape == (3, 4, *SHAPE)
    assert cohort.dvhs.shape == (3, 4, 4 * 8)
    for i in range(3):
        m = cohort.masks(i)
        assert list(m) == list(ex.STRUCTURES) and all(v.any() for v in m.values())
        d = cohort.doses[i].double().numpy()
        np.testing.assert_allclose(d[:, m["PTV"]].mean(1), 1.0, atol=1e-5)      # normalised to the PTV mean
        ref = dvh_vector(d, m, n_bins=8, max_dose=1.2)                         # independent recomputation
        np.testing.assert_allclose(cohort.dvhs[i].numpy(), ref, atol=1e-6)
        check_dvh_vector(cohort.dvhs[i].numpy(), 4, 8)
    # the sweep goes from bladder sparing to rectum sparing: rectum mean falls, bladder mean rises
    rect, blad = cohort.oar_mean_gy[..., 0], cohort.oar_mean_gy[..., 1]
    assert np.all(rect[:, 0] > rect[:, -1]) and np.all(blad[:, 0] < blad[:, -1])
    assert np.all((cohort.ptv_mean_gy > 0.95 * cohort.prescription) & (cohort.ptv_mean_gy < 1.2 * cohort.prescription))


def test_cohort_deterministic_and_subset(cohort):
    again = ex.make_cohort(1, n_plans=4, shape=SHAPE, spacing=SPACING, seed=cohort.seeds[1], n_bins=8,
                           max_iter=40, progress=False)
    sub = cohort.subset([1])
    assert sub.seeds == again.seeds == [cohort.seeds[1]]
    torch.testing.assert_close(sub.doses, again.doses, rtol=0, atol=0)
    torch.testing.assert_close(sub.dvhs, again.dvhs, rtol=0, atol=0)


def test_cohort_cache_roundtrip(tmp_path, cohort):
    kw = dict(n_plans=4, shape=SHAPE, spacing=SPACING, seed=cohort.seeds[2], n_bins=8, max_iter=40, progress=False)
    first = ex.make_cohort(1, cache_dir=tmp_path, **kw)
    files = list((tmp_path / "pareto").glob("*.npz"))
    assert len(files) == 1
    second = ex.make_cohort(1, cache_dir=tmp_path, **kw)              # loaded, not re-planned
    torch.testing.assert_close(second.doses, first.doses, rtol=0, atol=0)
    torch.testing.assert_close(second.dvhs, cohort.subset([2]).dvhs, rtol=0, atol=0)
    assert second.seeds == first.seeds and second.spacing == first.spacing
    np.testing.assert_array_equal(second.oar_mean_gy, first.oar_mean_gy)


def test_cohort_bad_input():
    with pytest.raises(ValueError, match="n_plans"):
        ex.make_cohort(1, n_plans=1, shape=SHAPE, spacing=SPACING, progress=False)
    with pytest.raises(ValueError, match="n_patients"):
        ex.make_cohort(0, shape=SHAPE, spacing=SPACING, progress=False)


def test_pairs_reject_patient_with_too_few_plans(cohort):
    with pytest.raises(ValueError, match="fewer than n_plans"):
        cohort.pairs(n_plans=5)


def test_evaluate_pairs_oracle_and_offset(cohort):
    one = cohort.subset([0])
    res = ex.evaluate_pairs(Oracle(one.doses[0], one.dvhs[0]), one, samples_per_patient=6, seed=1)
    assert res["mean"].shape == (6, 4) and res["max"].shape == (6, 4)
    np.testing.assert_allclose(res["mean"], 0, atol=1e-5)
    np.testing.assert_allclose(res["max"], 0, atol=1e-5)
    # a prediction 0.01 (1 % of the PTV mean) too low everywhere: true - pred = 1 % x PTV mean (Gy) / Rx
    res = ex.evaluate_pairs(Oracle(one.doses[0], one.dvhs[0], offset=0.01), one, samples_per_patient=6, seed=1)
    expect = cohort.ptv_mean_gy[0, res["plan"]] / cohort.prescription
    np.testing.assert_allclose(res["mean"], np.repeat(expect[:, None], 4, 1), rtol=1e-4)
    np.testing.assert_allclose(res["max"], np.repeat(expect[:, None], 4, 1), rtol=1e-4)
    np.testing.assert_allclose(res["mae"], expect, rtol=1e-4)


def test_evaluate_pairs_matches_brute_force(cohort):
    torch.manual_seed(0)
    net = torch.nn.Module()
    net.conv = torch.nn.Conv2d(4, 1, 3, padding=1)
    net.dims = 2
    net.forward = lambda a, d: torch.relu(net.conv(a) + d[:, :1, None, None])
    res = ex.evaluate_pairs(net, cohort, samples_per_patient=2, seed=5, batch_size=4)
    ds = cohort.pairs(2 * len(cohort), seed=5)
    for t in range(len(ds)):
        item = ds[t]
        i, j = int(item["patient"]), int(item["plan"])
        with torch.no_grad():
            pred = net.forward(item["input"][None], item["dvh"][None])[0, 0].double().numpy()
        true = item["target"][0].double().numpy()
        s = cohort.ptv_mean_gy[i, j] * 100 / cohort.prescription
        for k, m in enumerate(cohort.masks(i).values()):
            assert res["mean"][t, k] == pytest.approx((true[m].mean() - pred[m].mean()) * s, abs=1e-4)
            assert res["max"][t, k] == pytest.approx((true[m].max() - pred[m].max()) * s, abs=1e-4)


def test_summary_and_format_table():
    rng = np.random.default_rng(0)
    res = {"mean": rng.normal(size=(7, 4)), "max": rng.normal(size=(7, 4))}
    tab = ex.summary_table(res)
    assert list(tab) == list(ex.STRUCTURES)
    a, b, c, d = tab["Rectum"]
    assert a == pytest.approx(np.mean(res["mean"][:, 1])) and b == pytest.approx(np.std(res["mean"][:, 1], ddof=1))
    assert c == pytest.approx(np.mean(res["max"][:, 1])) and d == pytest.approx(np.std(res["max"][:, 1], ddof=1))
    text = ex.format_table({"ours": tab}, digits=1)
    assert text.count("\n") == 5 and f"{a:.1f} ± {b:.1f}" in text


def test_tradeoff_dvh_blends_along_the_front():
    d = torch.tensor([[1.0, 0.5, 0.0], [1.0, 0.3, 0.1], [1.0, 0.1, 0.1]])
    torch.testing.assert_close(ex.tradeoff_dvh(d, 0.0), d[0])
    torch.testing.assert_close(ex.tradeoff_dvh(d, 1.0), d[2])
    torch.testing.assert_close(ex.tradeoff_dvh(d, 0.25), 0.5 * (d[0] + d[1]))
    torch.testing.assert_close(ex.tradeoff_dvh(d, 0.75), 0.5 * (d[1] + d[2]))
    check_dvh_vector(ex.tradeoff_dvh(d, 0.4).numpy(), 1, 3)
    for bad in (-0.1, 1.5, float("nan"), True, "0.5"):
        with pytest.raises(ValueError, match="x must be"):
            ex.tradeoff_dvh(d, bad)
    with pytest.raises(ValueError, match=r"\(N, L\)"):
        ex.tradeoff_dvh(d[0], 0.5)


def test_train_is_deterministic_and_conditioned(cohort):
    kw = dict(epochs=3, width=8, depth=3, batch_size=4, samples_per_epoch=8, seed=3, progress=False, device="cpu",
              lr=3e-3, dropout=0.0)
    net1, h1 = ex.train_pareto_model(cohort, **kw)
    net2, h2 = ex.train_pareto_model(cohort, **kw)
    assert h1["train_loss"] == h2["train_loss"] and len(h1) == 3
    for p, q in zip(net1.parameters(), net2.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    a = cohort.anatomy[0]
    y0, y1 = ex.predict(net1, a, cohort.dvhs[0, 0], n_bins=8), ex.predict(net1, a, cohort.dvhs[0, -1], n_bins=8)
    assert y0.shape == SHAPE and y0.max() > 0
    assert not torch.allclose(y0, y1, rtol=0, atol=1e-6)              # the DVH input changes the dose
    base, _ = ex.train_pareto_model(cohort, conditional=False, **kw)
    torch.testing.assert_close(ex.predict(base, a, cohort.dvhs[0, 0], n_bins=8),
                               ex.predict(base, a, cohort.dvhs[0, -1], n_bins=8))   # the baseline ignores it
    with pytest.raises(TypeError, match="ParetoCohort"):
        ex.train_pareto_model({"x": 1})
    with pytest.raises(ValueError, match="loss"):
        ex.train_pareto_model(cohort, loss="huber")


def test_predict_rejects_bad_dvh(cohort):
    net, _ = ex.train_pareto_model(cohort, epochs=1, width=4, depth=3, samples_per_epoch=4, progress=False,
                                   device="cpu")
    a, v = cohort.anatomy[0], cohort.dvhs[0, 0].clone()
    with pytest.raises(ValueError, match="length"):
        ex.predict(net, a, v[:-1], n_bins=8)
    rising = v.clone()
    rising[3] = 1.0
    rising[2] = 0.0
    with pytest.raises(ValueError, match="non-increasing"):
        ex.predict(net, a, rising, n_bins=8)
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        ex.predict(net, a, v * 1.5, n_bins=8)


def test_3d_code_path_of_the_full_profile():
    c = ex.make_cohort(2, n_plans=2, dims=3, shape=(8, 32, 32), spacing=(10.0, 12.8, 12.8), n_bins=8, max_iter=20,
                       progress=False)
    assert c.doses.shape == (2, 2, 8, 32, 32) and c.anatomy.shape == (2, 4, 8, 32, 32)
    net, h = ex.train_pareto_model(c.subset([0]), val=c.subset([1]), epochs=1, width=4, depth=3, batch_size=2,
                                   progress=False, device="cpu")
    assert "val_loss" in h.records[0]
    res = ex.evaluate_pairs(net, c.subset([1]), samples_per_patient=2)
    assert res["mean"].shape == (2, 4) and np.all(np.isfinite(res["max"]))
    assert ex.predict(net, c.anatomy[1], ex.tradeoff_dvh(c.dvhs[1], 0.5), n_bins=8).shape == (8, 32, 32)
