"""Pencil-beam dose engine: physics checks, linear-operator consistency, gradients, bad inputs."""
import numpy as np
import pytest
import torch

from rtlearn.phantom import (BeamModel, arc_angles, default_angles, DoseEngine, central_axis_pdd, lateral_profile, make_patient,
                             penumbra_80_20, water_phantom)


def test_pdd_6mv_like():
    depth, pdd = central_axis_pdd(field_mm=100.0)
    d_max = depth[np.argmax(pdd)]
    assert 12.0 <= d_max <= 18.0, d_max                      # build-up to ~15 mm
    assert abs(np.interp(100.0, depth, pdd) - 0.67) <= 0.05  # 67 +- 5 % at 10 cm
    assert pdd[0] < 0.7                                       # skin sparing
    assert np.all(np.diff(pdd[depth > 30]) < 0)              # monotone fall beyond d_max


def test_inverse_square_lowers_deep_dose():
    d1, p1 = central_axis_pdd()
    d2, p2 = central_axis_pdd(BeamModel(inverse_square=False))
    assert np.interp(200, d2, p2) > np.interp(200, d1, p1)


def test_penumbra_80_20():
    x, prof = lateral_profile(field_mm=100.0, depth_mm=100.0)
    w = penumbra_80_20(x, prof)
    assert 6.0 <= w <= 8.0, w
    # 50 % at the geometric field edge, flat in the middle
    assert abs(np.interp(50.0, x, prof) - 0.5) < 0.02
    assert abs(np.interp(20.0, x, prof) - 1.0) < 0.01


def test_profile_matches_analytic_erf_edge():
    """Sum of abutting beamlets = rectangle convolved with a Gaussian (independent erf reference)."""
    from scipy.special import erf

    m = BeamModel(sigma_mm=3.0, scatter_fraction=0.0)
    x, prof = lateral_profile(m, field_mm=60.0, depth_mm=50.0)
    s = np.sqrt(2) * 3.0
    ref = 0.5 * (erf((x + 30) / s) - erf((x - 30) / s))
    sel = np.abs(x) < 45
    np.testing.assert_allclose(prof[sel], ref[sel] / ref[np.argmin(np.abs(x))], atol=2e-3)


def test_profile_with_scatter_matches_gaussian_plus_laplace():
    """Open field = rectangle convolved with (1 - a) Gaussian + a Laplace (scipy's distribution functions)."""
    from scipy.stats import laplace, norm

    m = BeamModel(sigma_mm=3.0, scatter_fraction=0.2, scatter_length_mm=25.0)
    x, prof = lateral_profile(m, field_mm=60.0, depth_mm=50.0, beyond_edge_mm=100.0)

    def conv(cdf):
        return cdf(x + 30) - cdf(x - 30)

    ref = 0.8 * conv(norm(scale=3.0).cdf) + 0.2 * conv(laplace(scale=25.0).cdf)
    sel = np.abs(x) < 110
    np.testing.assert_allclose(prof[sel], ref[sel] / ref[np.argmin(np.abs(x))], atol=2e-3)


def test_out_of_field_dose_6mv_like():
    """Dose outside a 10 x 10 cm field at 10 cm depth: a few % near the edge, falling with distance.

    Measured 6 MV out-of-field dose (AAPM TG-158, Kry et al. 2017) is about 3-5 % of the
    central-axis dose 2-3 cm from the field edge, 1-2 % at 5 cm and well under 1 % at 10 cm.
    """
    x, prof = lateral_profile(field_mm=100.0, depth_mm=100.0, beyond_edge_mm=130.0)
    at = {r: 100 * np.interp(50.0 + r, x, prof) for r in (20, 30, 50, 100)}
    assert 2.0 <= at[20] <= 6.0, at
    assert 1.5 <= at[30] <= 5.0, at
    assert 0.7 <= at[50] <= 2.5, at
    assert 0.1 <= at[100] <= 1.0, at
    assert at[20] > at[30] > at[50] > at[100]
    # without scatter the dose 3 cm outside the field is nil
    x0, p0 = lateral_profile(BeamModel(scatter_fraction=0.0), field_mm=100.0, depth_mm=100.0, beyond_edge_mm=130.0)
    assert np.interp(80.0, x0, p0) < 1e-4


@pytest.mark.parametrize("kw", [dict(scatter_fraction=1.0), dict(scatter_fraction=-0.1), dict(scatter_length_mm=0.0),
                                dict(sigma_mm=float("nan")), dict(surface_dose=1.5), dict(mu_per_mm=-1.0)])
def test_beam_model_rejects_bad_parameters(kw):
    with pytest.raises(ValueError, match="BeamModel"):
        BeamModel(**kw)


def test_opposed_beams_mirror():
    dens, body = water_phantom((60, 60), 2.0)
    e0 = DoseEngine(dens, body, (2.0, 2.0), [0.0], field_mm=40.0, dtype=torch.float64)
    e1 = DoseEngine(dens, body, (2.0, 2.0), [180.0], field_mm=40.0, dtype=torch.float64)
    d0 = e0.dose(torch.ones(e0.n_beamlets, dtype=torch.float64)).numpy()
    d1 = e1.dose(torch.ones(e1.n_beamlets, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(d0, d1[::-1, ::-1], rtol=1e-5, atol=1e-8)
    e2 = DoseEngine(dens, body, (2.0, 2.0), [90.0], field_mm=40.0, dtype=torch.float64)
    d2 = e2.dose(torch.ones(e2.n_beamlets, dtype=torch.float64)).numpy()
    # a beam from the patient's left (90 deg) enters at large x
    assert d2[30, 45] > d2[30, 15]


def test_low_density_increases_dose_downstream():
    dens, body = water_phantom((100, 60), 2.0)
    lung = dens.copy()
    lung[30:60] *= 0.25  # a lung slab between 20 and 80 mm depth
    ew = DoseEngine(dens, body, (2.0, 2.0), [0.0], field_mm=40.0)
    el = DoseEngine(lung, body, (2.0, 2.0), [0.0], field_mm=40.0)
    w = torch.ones(ew.n_beamlets)
    # radiological depth shorter by 0.75 * 60 mm: the ratio is exp(mu * 45 mm) past the build-up
    ratio = float(el.dose(w)[80, 30] / ew.dose(w)[80, 30])
    assert ratio == pytest.approx(np.exp(BeamModel().mu_per_mm * 45.0), rel=5e-3)
    assert torch.allclose(el.dose(w)[15, 30], ew.dose(w)[15, 30])  # upstream unchanged


@pytest.mark.parametrize("dims", [2, 3])
def test_matrix_dose_and_adjoint_agree(dims):
    if dims == 2:
        p = make_patient("prostate", 0, shape=(48, 48), spacing=8.0)
    else:
        p = make_patient("prostate", 0, dims=3, shape=(10, 40, 40), spacing=(10.0, 10.0, 10.0))
    e = DoseEngine.for_patient(p, dtype=torch.float64)
    A = e.matrix()
    g = torch.Generator().manual_seed(0)
    w = torch.rand(e.n_beamlets, generator=g, dtype=torch.float64)
    v = torch.rand(p.shape, generator=g, dtype=torch.float64)
    np.testing.assert_allclose((A @ w).numpy(), e.dose(w).reshape(-1).numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(e.adjoint(v).numpy(), (A.T @ v.reshape(-1)).numpy(), rtol=1e-10, atol=1e-10)
    assert float(e.dose(w)[torch.as_tensor(~p.body)].abs().max()) == 0.0  # no dose outside the body
    assert e.dose(w, beams=[0]).shape == p.shape


def test_gradcheck_dose_wrt_fluence():
    dens, body = water_phantom((12, 12), 5.0)
    e = DoseEngine(dens, body, (5.0, 5.0), [0.0, 120.0, 240.0], field_mm=20.0, beamlet_mm=5.0, dtype=torch.float64)
    w = torch.rand(e.n_beamlets, dtype=torch.float64, generator=torch.Generator().manual_seed(1), requires_grad=True)
    probe = torch.rand(12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    assert torch.autograd.gradcheck(lambda x: (e.dose(x) ** 2 * probe).sum(), (w,))
    assert torch.autograd.gradcheck(lambda x: e.dose(x), (w,))


def test_bad_inputs():
    dens, body = water_phantom((20, 20), 5.0)
    with pytest.raises(ValueError, match="target is empty"):
        DoseEngine(dens, body, (5.0, 5.0), [0.0], target=np.zeros_like(body))
    outside = np.zeros_like(body)
    outside[0, 0] = True
    with pytest.raises(ValueError, match="outside the body"):
        DoseEngine(dens, body, (5.0, 5.0), [0.0], target=outside)
    with pytest.raises(ValueError, match="target mask .* or field_mm"):
        DoseEngine(dens, body, (5.0, 5.0), [0.0])
    with pytest.raises(ValueError, match=">= 0"):
        DoseEngine(-dens, body, (5.0, 5.0), [0.0], field_mm=10.0)
    with pytest.raises(ValueError, match="positive"):
        DoseEngine(dens, body, (5.0, 0.0), [0.0], field_mm=10.0)
    with pytest.raises(ValueError, match="2D"):
        DoseEngine(dens[0], body[0], (5.0,), [0.0], field_mm=10.0)
    e = DoseEngine(dens, body, (5.0, 5.0), [0.0], field_mm=10.0)
    with pytest.raises(ValueError, match="beamlet weights"):
        e.dose(torch.ones(e.n_beamlets + 1))


def test_beam_angles():
    np.testing.assert_allclose(default_angles("prostate"), np.arange(7) * 360 / 7)
    assert len(default_angles("head_neck")) == 9
    br = default_angles("breast")  # tangential partial arcs: never from the patient's right or posterior side
    assert br[0] == 305 and br[-1] == pytest.approx(125) and not np.any((br > 125) & (br < 305))
    np.testing.assert_allclose(arc_angles(350, 10, 3), [350, 0, 10])
    assert len(arc_angles(181, 179, 36)) == 36
    with pytest.raises(ValueError, match="n_beams"):
        arc_angles(0, 90, 0)
