"""The head-and-neck phantom's default plan against OpenKBP's reference plans.

Reference: the 200 training patients of OpenKBP (Babier et al., Med. Phys. 48,
2021). For each organ at risk, the mean dose of the reference plan over the
whole organ mask, as a percentage of 70 Gy, over the patients that contour the
organ and have a dose (n below); quartiles by ``numpy.percentile`` (linear
interpolation). :func:`test_openkbp_quartiles_from_training_split` recomputes
them from the data when it is at hand.
"""
from __future__ import annotations

import numpy as np
import pytest

from rtlearn.dvh import dose_at_volume
from rtlearn.phantom import make_patient, make_plan, realism

#: OpenKBP train split: (n, 25th, 50th, 75th percentile) of the organ mean dose in % of 70 Gy
OPENKBP_MEAN_DOSE_PCT = realism.OPENKBP_OAR_MEAN_DOSE
#: the phantom's median must lie in OpenKBP's interquartile range widened by this (% of Rx) each side
WIDEN_PCT = 10.0
SEEDS = range(12)


@pytest.fixture(scope="module")
def cases():
    import torch

    torch.set_num_threads(1)
    return [make_plan("head_neck", s) for s in SEEDS]


def test_every_openkbp_oar_in_every_slice(cases):
    from rtlearn.phantom import case_seed

    patients = [p for p, _ in cases] + [make_patient("head_neck", case_seed(s, i)) for s in (0, 1) for i in range(40)]
    for patient in patients:
        missing = [o for o in OPENKBP_MEAN_DOSE_PCT if o not in patient.masks]
        assert not missing, f"seed {patient.seed}: {missing} absent from the 2D slice"


def test_median_mean_doses_inside_widened_openkbp_iqr(cases):
    out = []
    for oar, (_, q25, _, q75) in OPENKBP_MEAN_DOSE_PCT.items():
        pct = [100.0 * float(plan.dose[p.masks[oar]].mean()) / 70.0 for p, plan in cases]
        med = float(np.median(pct))
        if not q25 - WIDEN_PCT <= med <= q75 + WIDEN_PCT:
            out.append(f"{oar}: median {med:.1f} % not in [{q25 - WIDEN_PCT:.1f}, {q75 + WIDEN_PCT:.1f}]")
    assert not out, "; ".join(out)


def test_targets_covered(cases):
    for p, plan in cases:
        d70 = plan.dose[p.masks["PTV70"]]
        assert float(dose_at_volume(plan.dose, p.masks["PTV70"], 95)) == pytest.approx(70.0, rel=1e-3)
        assert np.percentile(d70, 98) < 1.10 * 70.0
        for t in ("PTV63", "PTV56"):
            if t in p.masks:
                rx = p.prescriptions[t]
                assert float(dose_at_volume(plan.dose, p.masks[t], 95)) > 0.95 * rx, (p.seed, t)


@pytest.mark.parametrize("dims", [2, 3])
def test_oesophagus_placement(dims):
    """Oesophagus behind the larynx and airway, in front of the spinal cord, never in the PTV70."""
    kw = {} if dims == 2 else {"shape": (16, 96, 96), "spacing": (4.0, 2.5, 2.5)}
    for s in range(6):
        p = make_patient("head_neck", s, dims=dims, **kw)
        m = p.masks
        assert not (m["Esophagus"] & m["PTV70"]).any(), s
        if dims == 3:
            continue
        y = np.arange(p.shape[0])[:, None] * np.ones(p.shape)
        cy = {k: float(y[m[k]].mean()) for k in ("Larynx", "Esophagus", "SpinalCord", "Brainstem")}
        air = (p.ct_hu < -500) & p.body
        assert air.any(), s
        assert cy["Larynx"] < cy["Esophagus"] < cy["SpinalCord"] < cy["Brainstem"], (s, cy)
        assert float(y[air].mean()) < cy["Esophagus"], s


def test_openkbp_quartiles_from_training_split(shared_data):
    train = shared_data / "openkbp" / "train"
    if not train.is_dir():
        pytest.skip(f"OpenKBP training split not found under {shared_data}")
    vals = {o: [] for o in OPENKBP_MEAN_DOSE_PCT}
    for f in sorted(train.glob("pt_*.npz")):
        with np.load(f) as z:
            if "dose_cgy" not in z.files:
                continue
            dose = z["dose_cgy"].astype(np.float64) / 100.0
            for o in vals:
                if o in z.files:
                    m = z[o]
                    if m.any():
                        vals[o].append(100.0 * dose[m].mean() / 70.0)
    for o, (n, q25, q50, q75) in OPENKBP_MEAN_DOSE_PCT.items():
        assert len(vals[o]) == n, o
        np.testing.assert_allclose(np.percentile(vals[o], [25, 50, 75]), [q25, q50, q75], atol=0.006, err_msg=o)
