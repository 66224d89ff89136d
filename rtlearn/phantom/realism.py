"""How close the phantom clinic is to real plans: our organ doses beside clinical references.

Every site of the clinic gets numbers that can be compared with something
measured on patients:

* **Breast** (left-sided, 50 Gy): Bai et al. 2021, Table 4, the ground-truth
  VMAT plans of their 10 test patients (mean +/- SD), kept in
  :data:`BAI2021_BREAST`, and their class-imbalance shares (74.52 % of voxels
  outside the body, 77.30 % of body voxels below 5 Gy), :data:`BAI2021_IMBALANCE`.
* **Head and neck** (70/63/56 Gy): OpenKBP's 200 training plans, the mean
  dose of each organ at risk as % of 70 Gy, quartiles over the patients that
  contour the organ, :data:`OPENKBP_OAR_MEAN_DOSE`. The numbers were computed
  with :func:`rtlearn.data.openkbp.stats.oar_mean_dose_quartiles` on the
  training split (mean over the whole organ mask, numpy percentiles 25/50/75);
  a test recomputes them whenever the data are present.
* **Prostate** and **brain**: neither paper reports organ doses, so these sites
  are checked against common planning constraints (QUANTEC, Marks et al. 2010),
  :data:`CONSTRAINTS`, which clinical plans are made to meet.

:func:`measure` plans ``n`` seeded 2D phantoms of a site (the dataset seeds
``case_seed(seed, i)``) and returns one row of metrics per case;
:func:`realism_table` prints our medians beside the references.
"""
from __future__ import annotations

import numpy as np

from ..dvh import dose_at_volume, volume_at_dose
from ..tables import Markdown, markdown_table

__all__ = ["BAI2021_BREAST", "BAI2021_IMBALANCE", "BREAST_RANGES", "OPENKBP_OAR_MEAN_DOSE", "CONSTRAINTS",
           "head_neck_ranges", "case_metrics", "measure", "summarise", "realism_table"]

#: Bai et al. 2021, Table 4, ground truth (mean, SD) of the 10 test plans; doses converted from cGy to Gy
BAI2021_BREAST = {
    "Heart mean (Gy)": (6.2542, 1.2520),
    "Heart V30 (%)": (4.73, 1.94),
    "Lung_L mean (Gy)": (10.6504, 0.4628),
    "Lung_L V5 (%)": (42.63, 2.73),
    "Lung_L V20 (%)": (19.21, 1.18),
    "Lung_L V30 (%)": (13.34, 1.28),
    "Whole lung mean (Gy)": (5.9711, 0.6789),
    "Whole lung V5 (%)": (24.31, 5.90),
    "Whole lung V20 (%)": (9.02, 1.04),
}
#: Bai et al. 2021, Discussion: shares of voxels (%) of their 10 test cases
BAI2021_IMBALANCE = {"Outside the body (% of voxels)": 74.52, "Body voxels < 5 Gy (%)": 77.30}
#: ranges the breast phantom's median over cases must reach (clinical VMAT breast plans vary widely)
BREAST_RANGES = {"Heart mean (Gy)": (2.0, 12.0), "Lung_L mean (Gy)": (5.0, 16.0),
                 "Lung_L V5 (%)": (25.0, 60.0), "Lung_L V20 (%)": (10.0, 30.0)}

#: OpenKBP training split (200 patients): OAR mean dose as % of 70 Gy, ``(n_patients, q25, median, q75)``
OPENKBP_OAR_MEAN_DOSE = {
    "Brainstem": (179, 6.01, 10.16, 16.84),
    "SpinalCord": (187, 15.54, 24.51, 31.35),
    "RightParotid": (189, 37.06, 48.83, 58.76),
    "LeftParotid": (190, 29.29, 43.27, 56.64),
    "Esophagus": (78, 24.53, 37.77, 50.88),
    "Larynx": (97, 57.05, 64.95, 78.54),
    "Mandible": (134, 48.73, 55.88, 64.78),
}

#: planning constraints (QUANTEC, Marks et al. 2010): metric -> (kind, limit); "max" = must stay below
CONSTRAINTS = {
    "prostate": {"Rectum V70 (%)": ("max", 20.0), "Rectum V50 (%)": ("max", 50.0),
                 "Bladder V65 (%)": ("max", 50.0), "FemoralHead_L Dmax (Gy)": ("max", 52.0)},
    "brain": {"Brainstem Dmax (Gy)": ("max", 54.0), "OpticChiasm Dmax (Gy)": ("max", 55.0)},
}


def head_neck_ranges(widen: float = 10.0) -> dict:
    """OpenKBP's inter-quartile range of each OAR's mean dose widened by ``widen`` points of Rx: ``{oar: (lo, hi)}``."""
    if not np.isfinite(widen) or widen < 0:
        raise ValueError(f"widen must be >= 0 (% of Rx), got {widen!r}")
    return {o: (max(0.0, q25 - widen), q75 + widen) for o, (_, q25, _, q75) in OPENKBP_OAR_MEAN_DOSE.items()}


def _vx(dose, mask, gy):
    return 100.0 * volume_at_dose(dose, mask, gy)


def case_metrics(patient, plan) -> dict:
    """The site's realism metrics of one planned phantom (doses in Gy, volumes in %)."""
    d = np.asarray(plan.dose, dtype=np.float64)
    m = patient.masks
    t = patient.primary_target
    rx = patient.prescriptions[t]
    out = {"PTV D95 (% of Rx)": 100 * float(dose_at_volume(d, m[t], 95)) / rx,
           "PTV D2 (% of Rx)": 100 * float(dose_at_volume(d, m[t], 2)) / rx}
    if patient.site == "breast":
        lungs = m["Lung_L"] | m["Lung_R"]
        out.update({
            "Heart mean (Gy)": float(d[m["Heart"]].mean()), "Heart V30 (%)": _vx(d, m["Heart"], 30),
            "Lung_L mean (Gy)": float(d[m["Lung_L"]].mean()), "Lung_L V5 (%)": _vx(d, m["Lung_L"], 5),
            "Lung_L V20 (%)": _vx(d, m["Lung_L"], 20), "Lung_L V30 (%)": _vx(d, m["Lung_L"], 30),
            "Lung_R mean (Gy)": float(d[m["Lung_R"]].mean()),
            "Whole lung mean (Gy)": float(d[lungs].mean()), "Whole lung V5 (%)": _vx(d, lungs, 5),
            "Whole lung V20 (%)": _vx(d, lungs, 20),
            "Outside the body (% of voxels)": 100 * float((~patient.body).mean()),
            "Body voxels < 5 Gy (%)": 100 * float((d[patient.body] < 5.0).mean()),
        })
    elif patient.site == "head_neck":
        for o in OPENKBP_OAR_MEAN_DOSE:
            out[f"{o} mean (% of 70 Gy)"] = 100 * float(d[m[o]].mean()) / 70.0 if o in m else float("nan")
    elif patient.site == "prostate":
        out.update({"Rectum V70 (%)": _vx(d, m["Rectum"], 70), "Rectum V50 (%)": _vx(d, m["Rectum"], 50),
                    "Bladder V65 (%)": _vx(d, m["Bladder"], 65),
                    "FemoralHead_L Dmax (Gy)": float(d[m["FemoralHead_L"]].max())})
    elif patient.site == "brain":
        for o in ("Brainstem", "OpticChiasm"):
            out[f"{o} Dmax (Gy)"] = float(d[m[o]].max()) if o in m else float("nan")
    return out


def measure(site: str, n: int = 8, seed: int = 0, progress: bool = True) -> list:
    """Realism metrics of ``n`` planned 2D phantoms of ``site`` (patients ``case_seed(seed, i)``, default plans)."""
    from tqdm.auto import tqdm

    from .anatomy import SITES
    from .datasets import case_seed
    from .optimise import make_plan

    if site not in SITES:
        raise ValueError(f"unknown site {site!r}; choose one of {SITES}")
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    rows = []
    for i in tqdm(range(n), desc=f"realism {site}", disable=not progress):
        rows.append(case_metrics(*make_plan(site, case_seed(seed, i), dims=2)))
    return rows


def summarise(rows) -> dict:
    """``{metric: (median, min, max)}`` over cases (NaN-aware; a metric absent in every case is NaN)."""
    if not rows:
        raise ValueError("no cases to summarise")
    keys = list(dict.fromkeys(k for r in rows for k in r))
    out = {}
    for k in keys:
        v = np.array([r.get(k, np.nan) for r in rows], dtype=float)
        ok = v[np.isfinite(v)]
        out[k] = (float(np.median(ok)), float(ok.min()), float(ok.max())) if ok.size else (np.nan,) * 3
    return out


def _ours(s):
    return f"{s[0]:.1f} [{s[1]:.1f}, {s[2]:.1f}]"


def realism_table(cases: dict) -> Markdown:
    """Our median [min, max] beside the clinical reference, one row per metric.

    Parameters
    ----------
    cases : dict
        ``{site: rows}`` with rows from :func:`measure`.
    """
    rows = []
    for site, site_rows in cases.items():
        s = summarise(site_rows)
        if site == "breast":
            for k, (mu, sd) in BAI2021_BREAST.items():
                lo, hi = BREAST_RANGES.get(k, (None, None))
                ok = "" if lo is None else ("yes" if lo <= s[k][0] <= hi else "no")
                rows.append([site, k, _ours(s[k]), f"{mu:.1f} ± {sd:.1f}", "Bai et al. 2021, Table 4", ok])
            for k, v in BAI2021_IMBALANCE.items():
                rows.append([site, k, _ours(s[k]), f"{v:.1f}", "Bai et al. 2021, Discussion", ""])
            n_ok = sum(r["Lung_L mean (Gy)"] > r["Lung_R mean (Gy)"] for r in site_rows)
            rows.append([site, "Lung_L mean > Lung_R mean (cases)", f"{n_ok} of {len(site_rows)}", "all",
                         "left-sided breast", "yes" if n_ok == len(site_rows) else "no"])
        elif site == "head_neck":
            ranges = head_neck_ranges()
            for o, (n, q25, q50, q75) in OPENKBP_OAR_MEAN_DOSE.items():
                k = f"{o} mean (% of 70 Gy)"
                lo, hi = ranges[o]
                ok = "yes" if np.isfinite(s[k][0]) and lo <= s[k][0] <= hi else "no"
                rows.append([site, k, _ours(s[k]), f"{q50:.1f} (IQR {q25:.1f}–{q75:.1f})",
                             f"OpenKBP train, {n} patients", ok])
        else:
            for k, (kind, lim) in CONSTRAINTS[site].items():
                v = np.array([r.get(k, np.nan) for r in site_rows], dtype=float)
                met = int(np.sum(v[np.isfinite(v)] <= lim))
                rows.append([site, k, _ours(s[k]), f"< {lim:g}", "QUANTEC constraint",
                             f"{met} of {int(np.isfinite(v).sum())} cases"])
        for k in ("PTV D95 (% of Rx)", "PTV D2 (% of Rx)"):
            rows.append([site, k, _ours(s[k]), "100" if "D95" in k else "≤ 107", "normalisation / ICRU 83", ""])
    header = ["site", "metric", "ours: median [min, max]", "clinical reference", "source", "in target range"]
    return Markdown(markdown_table(header, rows))
